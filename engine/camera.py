"""Pinhole camera: image-space conventions, written once.

Conventions (used by the renderer, the fit and result.json; see docs/result-format.md):

* Model space: the face model's centimetres, +Y up, +Z toward the viewer.
* Camera space: OpenGL/Blender camera, looking down -Z, +Y up, +X right.
  ``X_cam = R @ X_model + t``. With R = I and t = (0, 0, -D) the face looks straight into the camera.
* Image space: pixels, origin at the top-left *corner* of the top-left pixel, x right, y down; pixel
  (row i, col j) has its centre at (j + 0.5, i + 0.5). Projection:
  ``u = cx + fx * X / (-Z)``, ``v = cy - fy * Y / (-Z)``.
* Clip space (OpenGL, what the rasteriser takes): ``x_ndc = 2u/W - 1``, ``y_ndc = 2v/H - 1``, so image
  row 0 (the top) is clip y = -1, which is also row 0 of nvdiffrast's output: renders need no flip.
  The y flip mirrors the screen, so triangle winding appears reversed; the rasteriser does not cull.

Rotation is parameterised by an axis-angle vector (3,), well-conditioned around the frontal pose
that fitting starts from; ``rotation_matrix`` is Rodrigues' formula with a safe small-angle branch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

# 35 mm full frame diagonal (mm). FocalLengthIn35mmFilm is defined against it.
FULL_FRAME_DIAGONAL_MM = math.hypot(36.0, 24.0)
# A 50 mm-equivalent lens: between phone wide cameras (~26 mm, usually cropped for portraits) and
# portrait lenses (85 mm). The texture dataset builder still uses it for photos without EXIF; the fit
# itself no longer does (see ``DEFAULT_SUBJECT_DISTANCE_CM``): a lens relative to the image frame
# changes whenever the photo is cropped, and the shape absorbs the changed perspective.
DEFAULT_FOCAL_35MM = 50.0
# With neither EXIF nor a focal length from the user, the fit assumes the camera stands this far from
# the face (cm) and takes the focal length that makes the face as large as it appears in the photo
# (``focal_px_from_face``). The perspective then depends only on this distance, which cropping or
# rescaling the photo cannot change. 1 m: between a selfie at arm's length (~40 cm) and a portrait
# lens at 2-3 m, the middle of that range on a log scale; the perspective of a face changes little
# beyond it (the face's 10 cm of depth is then a few per cent of the distance).
DEFAULT_SUBJECT_DISTANCE_CM = 100.0
# iBUG-68 points that a smile, a blink or an open mouth barely move: the nose (27-35) and the eye
# corners and lids (36-47). The face's apparent size is measured on them.
RIGID68 = tuple(range(27, 48))


def focal_px_from_35mm(f35: float, width: int, height: int) -> float:
    """Focal length in pixels from a 35 mm-equivalent focal length (diagonal definition)."""
    return float(f35) * math.hypot(width, height) / FULL_FRAME_DIAGONAL_MM


def weak_perspective_scale(pts3d: np.ndarray, pts2d: np.ndarray) -> float:
    """Pixels per model unit of a face seen in scaled orthography: the least-squares 2x3 map from
    the centred 3D points (N, 3) to the centred image points (N, 2); its two rows are the scale times
    the first two rows of the rotation, so the mean of their lengths is the scale whatever the pose."""
    P = np.asarray(pts3d, np.float64)
    q = np.asarray(pts2d, np.float64)
    P = P - P.mean(0)
    q = q - q.mean(0)
    A, *_ = np.linalg.lstsq(P, q, rcond=None)  # (3, 2): q ~ P @ A
    return float((np.linalg.norm(A[:, 0]) + np.linalg.norm(A[:, 1])) / 2)


def focal_px_from_face(pts3d: np.ndarray, pts2d: np.ndarray,
                       distance: float = DEFAULT_SUBJECT_DISTANCE_CM) -> float:
    """Focal length (pixels) that shows a face of the model's size (``pts3d``, model units) as
    large as it appears in the photo (``pts2d``, pixels) from ``distance`` (model units): a
    pinhole shows a length L at distance D as f L / D pixels, so f = D x (pixels per unit).
    Cropping the photo leaves it unchanged; rescaling the photo rescales it with the photo."""
    if not (np.isfinite(distance) and distance > 0):
        raise ValueError(f"the subject distance must be a positive number, got {distance!r}")
    s = weak_perspective_scale(pts3d, pts2d)
    if not (np.isfinite(s) and s > 0):
        raise ValueError("the landmarks are degenerate (all on one point or one line): no face size")
    return float(distance * s)


@dataclass
class Intrinsics:
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    @classmethod
    def from_focal(cls, focal_px: float, width: int, height: int) -> "Intrinsics":
        return cls(focal_px, focal_px, width / 2.0, height / 2.0, int(width), int(height))

    def scaled(self, s: float) -> "Intrinsics":
        """The same camera for an image resized by ``s`` (pixel corners stay on pixel corners)."""
        return Intrinsics(self.fx * s, self.fy * s, self.cx * s, self.cy * s,
                          max(1, round(self.width * s)), max(1, round(self.height * s)))

    def cropped(self, x0: float, y0: float, width: int, height: int) -> "Intrinsics":
        """The same camera for the crop whose top-left corner is (x0, y0)."""
        return Intrinsics(self.fx, self.fy, self.cx - x0, self.cy - y0, int(width), int(height))

    def as_dict(self) -> dict:
        return {"fx": self.fx, "fy": self.fy, "cx": self.cx, "cy": self.cy,
                "width": self.width, "height": self.height}


def rotation_matrix(aa: torch.Tensor) -> torch.Tensor:
    """Rodrigues: (B, 3) axis-angle -> (B, 3, 3) rotation, differentiable everywhere."""
    theta2 = (aa * aa).sum(-1, keepdim=True)  # (B,1)
    small = theta2 < 1e-8
    theta = torch.sqrt(torch.where(small, torch.ones_like(theta2), theta2))
    # sin(t)/t and (1-cos t)/t^2 with Taylor series near 0.
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / torch.where(small, torch.ones_like(theta2), theta2))
    x, y, z = aa.unbind(-1)
    zero = torch.zeros_like(x)
    K = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).view(-1, 3, 3)
    eye = torch.eye(3, dtype=aa.dtype, device=aa.device).expand_as(K)
    return eye + a[..., None] * K + b[..., None] * (K @ K)


def matrix_to_axis_angle(R: np.ndarray) -> np.ndarray:
    """(3, 3) rotation -> (3,) axis-angle (numpy; used to initialise from PnP)."""
    cos = np.clip((np.trace(R) - 1) / 2, -1.0, 1.0)
    theta = math.acos(cos)
    if theta < 1e-6:
        return np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]]) / 2
    if math.pi - theta < 1e-4:
        # Near 180 degrees: the axis from the symmetric part.
        M = (R + np.eye(3)) / 2
        axis = np.sqrt(np.clip(np.diag(M), 0, None))
        i = int(np.argmax(axis))
        axis = M[:, i] / math.sqrt(max(M[i, i], 1e-12))
        return axis / np.linalg.norm(axis) * theta
    w = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]])
    return w / (2 * math.sin(theta)) * theta


def to_camera(verts: torch.Tensor, R: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """(B, V, 3) model-space points -> camera space with (B, 3, 3) R and (B, 3) t."""
    return verts @ R.transpose(1, 2) + t[:, None, :]


def project(verts_cam: torch.Tensor, K: Intrinsics, focal: torch.Tensor | None = None) -> torch.Tensor:
    """Camera-space points (B, V, 3) -> pixel coordinates (B, V, 2), y down.

    ``focal`` (B,) overrides fx = fy (when the focal length is being fitted).
    """
    w = (-verts_cam[..., 2]).clamp_min(1e-6)
    fx = K.fx if focal is None else focal[:, None]
    fy = K.fy if focal is None else focal[:, None]
    u = K.cx + fx * verts_cam[..., 0] / w
    v = K.cy - fy * verts_cam[..., 1] / w
    return torch.stack([u, v], -1)


def to_clip(verts_cam: torch.Tensor, K: Intrinsics, near: float = 1.0, far: float = 1000.0,
            focal: torch.Tensor | None = None) -> torch.Tensor:
    """Camera-space points (B, V, 3) (model units) -> clip space (B, V, 4) for the rasteriser."""
    X, Y, Z = verts_cam.unbind(-1)
    w = -Z
    fx = K.fx if focal is None else focal[:, None]
    fy = K.fy if focal is None else focal[:, None]
    x = (2 * K.cx / K.width - 1) * w + 2 * fx * X / K.width
    y = (2 * K.cy / K.height - 1) * w - 2 * fy * Y / K.height
    z = -(far + near) / (far - near) * Z - 2 * far * near / (far - near)
    return torch.stack([x, y, z, w], -1)


def world_to_camera_matrix(R: np.ndarray, t: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """4x4 world->camera matrix; ``scale`` converts the translation's units (cm -> m: 0.01)."""
    M = np.eye(4)
    M[:3, :3] = R
    M[:3, 3] = np.asarray(t) * scale
    return M


def solve_pose_weak_perspective(pts3d: np.ndarray, pts2d: np.ndarray, K: Intrinsics,
                                weights: np.ndarray | None = None, iterations: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Initial pose from 2D-3D correspondences (a PnP start): scaled orthography refined by
    POSIT-style iterations (each point's image position is rescaled by its depth relative to the
    centroid's, which turns the perspective problem back into a weak-perspective one).

    Args:
        pts3d: (N, 3) model-space points (cm); pts2d: (N, 2) pixels (y down); K: intrinsics.
    Returns:
        R (3, 3), t (3,) in model units such that projecting R @ X + t with K approximates pts2d.
    """
    w = np.ones(len(pts3d)) if weights is None else np.asarray(weights, float)
    w = w / w.sum()
    # Image points in a y-up frame centred on the principal point, in focal units.
    q0 = np.stack([(pts2d[:, 0] - K.cx) / K.fx, -(pts2d[:, 1] - K.cy) / K.fy], 1)
    centroid3 = (w[:, None] * pts3d).sum(0)
    P = pts3d - centroid3
    Wd = np.sqrt(w)[:, None]
    ratio = np.ones(len(pts3d))
    R, t = np.eye(3), np.array([0.0, 0.0, -1.0])
    for _ in range(max(1, iterations)):
        q = q0 * ratio[:, None]
        qm = (w[:, None] * q).sum(0)
        A, *_ = np.linalg.lstsq(P * Wd, (q - qm) * Wd, rcond=None)
        A = A.T  # (2, 3): q - qm ~ A @ P
        s = (np.linalg.norm(A[0]) + np.linalg.norm(A[1])) / 2
        r1, r2 = A[0] / np.linalg.norm(A[0]), A[1] / np.linalg.norm(A[1])
        r3 = np.cross(r1, r2)
        U, _, Vt = np.linalg.svd(np.stack([r1, r2, r3 / max(np.linalg.norm(r3), 1e-9)]))
        R = U @ Vt
        if np.linalg.det(R) < 0:
            R = U @ np.diag([1, 1, -1]) @ Vt
        depth = 1.0 / s  # scale = 1 / depth in focal units
        # The centroid sits at (qm * depth, -depth) in camera space (the camera looks down -Z).
        t = np.array([qm[0] * depth, qm[1] * depth, -depth]) - R @ centroid3
        # Each point's distance from the camera relative to the centroid's.
        ratio = (depth - (P @ R.T)[:, 2]) / depth
    return R, t
