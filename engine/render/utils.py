"""Small helpers for the renderer: a perspective camera and a test face scene."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

# Fallback mesh source when the engine's own asset is missing (a development checkout with the
# shared data beside it; GANFIT_SHARED overrides where that is).
ICT_NPZ = Path(os.environ.get("GANFIT_SHARED", Path(__file__).resolve().parents[3] / "shared")) / "models" / "ict-facekit" / "ict_facekit.npz"


def perspective(focal: float, aspect: float = 1.0, near: float = 1.0, far: float = 1000.0,
                flip_y: bool = True, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """OpenGL-style projection (camera looks down -Z) as a (4,4) matrix.

    Args:
        focal: focal length in units of half the image height (1 / tan(fov_y / 2)).
        aspect: width / height.
        flip_y: negate clip y so that +Y (up) lands on row 0, as images are stored.
    Returns:
        (4,4) tensor P with clip = P @ [x, y, z, 1].
    """
    sy = -focal if flip_y else focal
    return torch.tensor([[focal / aspect, 0, 0, 0],
                         [0, sy, 0, 0],
                         [0, 0, (far + near) / (near - far), 2 * far * near / (near - far)],
                         [0, 0, -1, 0]], dtype=dtype)


def rotation_y(deg: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    a = math.radians(deg)
    c, s = math.cos(a), math.sin(a)
    return torch.tensor([[c, 0, s], [0, 1, 0], [-s, 0, c]], dtype=dtype)


def rotation_x(deg: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    a = math.radians(deg)
    c, s = math.cos(a), math.sin(a)
    return torch.tensor([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=dtype)


def to_clip(verts: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
    """(B,V,3) camera-space points -> (B,V,4) clip space."""
    ones = torch.ones_like(verts[..., :1])
    return torch.cat([verts, ones], -1) @ proj.to(verts).transpose(0, 1)


def face_mesh() -> dict[str, torch.Tensor]:
    """The fitted face mesh: verts (V,3) cm, tris (T,3) int32, uvs (U,2), face_uvs (T,3) int32.

    Uses ``engine.models.facemodel.load_face_model`` when it is available, else reads the ICT
    FaceKit npz directly (face area: vertices [:9409], polygons [:9230]).
    """
    try:
        from engine.models.facemodel import load_face_model  # noqa: PLC0415

        m = load_face_model()
        with torch.no_grad():
            verts = m(part="fit")[0].float()
        return {"verts": verts, "tris": m.fit_tris.to(torch.int32).contiguous(),
                "uvs": m.uvs.float(), "face_uvs": m.fit_tri_uvs.to(torch.int32).contiguous()}
    except Exception:  # the model loader is optional here: fall back to the raw asset
        d = np.load(ICT_NPZ)
        nv = int(d["face_area_vertex_count"])
        npoly = int(d["face_area_poly_count"])
        keep = d["tri_poly_index"] < npoly
        return {"verts": torch.from_numpy(d["vertices"][:nv].astype(np.float32)),
                "tris": torch.from_numpy(d["tri_vertex_indices"][keep].astype(np.int32)),
                "uvs": torch.from_numpy(d["uvs"].astype(np.float32)),
                "face_uvs": torch.from_numpy(d["tri_uv_indices"][keep].astype(np.int32))}


def face_scene(yaw_deg: float | list[float] = 0.0, pitch_deg: float = 0.0,
               distance: float = 60.0, fill: float = 0.6,
               mesh: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Face mesh in front of a perspective camera: returns mesh + ``pos`` (B,V,4) clip space.

    The mesh is centred, rotated (yaw per batch item, then pitch), placed at z = -distance cm,
    and the focal length is chosen so that the face's height fills ``fill`` of the frame.
    """
    mesh = dict(mesh or face_mesh())
    v = mesh["verts"]
    centre = (v.max(0).values + v.min(0).values) / 2
    v0 = v - centre
    height = float(v0[:, 1].max() - v0[:, 1].min())
    focal = fill * distance / (height / 2)
    proj = perspective(focal)
    yaws = yaw_deg if isinstance(yaw_deg, (list, tuple)) else [yaw_deg]
    cams = []
    for yaw in yaws:
        R = rotation_x(pitch_deg) @ rotation_y(yaw)
        cams.append(v0 @ R.T + torch.tensor([0.0, 0.0, -distance]))
    cam = torch.stack(cams)
    mesh["pos"] = to_clip(cam, proj).contiguous()
    mesh["proj"] = proj
    return mesh
