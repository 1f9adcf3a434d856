"""Differentiable 5-point face alignment, identical for the photo and the render.

Pixel convention (same as ``engine.perception.landmarks``): x right, y down, origin at the
top-left corner of the top-left pixel, so pixel (row i, column j) has its centre at
(j + 0.5, i + 0.5) and an image of width W spans x in [0, W]. ``F.grid_sample`` with
``align_corners=False`` uses exactly this convention once coordinates are scaled by 2/W - 1.

The 5 points, in this order everywhere: subject's right eye centre (image left in a frontal
photo), subject's left eye centre, nose tip, subject's right mouth corner, left mouth corner.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from engine.errors import BadInputError

FIVE_POINT_NAMES = ("right_eye", "left_eye", "nose_tip", "mouth_right", "mouth_left")


def five_points_from_68(l68: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """iBUG-68 landmarks -> our 5 points.

    Args:
        l68: (68, 2) or (B, 68, 2) pixel coordinates (numpy or torch).
    Returns:
        (5, 2) or (B, 5, 2), same type/dtype: eye centres = mean of points 36-41 and 42-47,
        nose tip = 30, mouth corners = 48 and 54.
    """
    if l68.shape[-2:] != (68, 2):
        raise BadInputError(f"expected (..., 68, 2) landmarks, got {tuple(l68.shape)}")
    right_eye = l68[..., 36:42, :].mean(-2)
    left_eye = l68[..., 42:48, :].mean(-2)
    parts = [right_eye, left_eye, l68[..., 30, :], l68[..., 48, :], l68[..., 54, :]]
    if isinstance(l68, torch.Tensor):
        return torch.stack(parts, dim=-2)
    return np.stack(parts, axis=-2)


def similarity_from_points(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Least-squares similarity (rotation, uniform scale, translation) taking src onto dst.

    This is Umeyama's solution restricted to proper rotations, written in the 2-D closed form
    (z = a + ib multiplies centred src onto centred dst in the least-squares sense), so its
    gradient is smooth everywhere (no SVD).

    Args:
        src: (B, N, 2) or (N, 2) float points (N >= 2), e.g. landmarks in image pixels.
        dst: (N, 2) or (B, N, 2) target points, e.g. a recogniser's template.
    Returns:
        (B, 2, 3) float matrices M with dst ~ M[:, :, :2] @ src + M[:, :, 2].
    """
    if src.dim() == 2:
        src = src.unsqueeze(0)
    if dst.dim() == 2:
        dst = dst.unsqueeze(0)
    dst = dst.to(src).expand(src.shape[0], -1, -1)
    if src.shape[-1] != 2 or src.shape[1] != dst.shape[1] or src.shape[1] < 2:
        raise BadInputError(f"point sets do not match: {tuple(src.shape)} vs {tuple(dst.shape)}")
    ms, md = src.mean(1, keepdim=True), dst.mean(1, keepdim=True)
    s, d = src - ms, dst - md
    var = (s * s).sum((1, 2)).clamp_min(1e-12)
    a = (s[..., 0] * d[..., 0] + s[..., 1] * d[..., 1]).sum(1) / var
    b = (s[..., 0] * d[..., 1] - s[..., 1] * d[..., 0]).sum(1) / var
    A = torch.stack([torch.stack([a, -b], -1), torch.stack([b, a], -1)], -2)  # (B, 2, 2)
    t = md.squeeze(1) - (A @ ms.squeeze(1).unsqueeze(-1)).squeeze(-1)
    return torch.cat([A, t.unsqueeze(-1)], -1)


def apply_affine(M: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Map (B, N, 2) points with (B, 2, 3) matrices."""
    return points @ M[:, :, :2].transpose(1, 2) + M[:, :, 2].unsqueeze(1)


def invert_affine(M: torch.Tensor) -> torch.Tensor:
    """Inverse of (B, 2, 3) affine matrices (closed-form 2x2 inverse)."""
    a, b, c, d = M[:, 0, 0], M[:, 0, 1], M[:, 1, 0], M[:, 1, 1]
    det = a * d - b * c
    inv = torch.stack([torch.stack([d, -b], -1), torch.stack([-c, a], -1)], -2) / det[:, None, None]
    t = -(inv @ M[:, :, 2:]).squeeze(-1)
    return torch.cat([inv, t.unsqueeze(-1)], -1)


def warp(images: torch.Tensor, M: torch.Tensor, out_size: int, antialias: bool = True,
         padding_mode: str = "zeros") -> torch.Tensor:
    """Resample images so that image point p lands on output point M @ [p, 1].

    Bilinear ``grid_sample`` (align_corners=False), differentiable w.r.t. images and M. With
    ``antialias`` the images are first area-averaged by the integer factor k = floor(1 / scale)
    (the smallest over the batch) when k >= 2, as dlib's chip extraction uses a pyramid; with
    our pixel convention, pooling by k maps coordinates exactly by x / k.

    Args:
        images: (B, C, H, W) float.
        M: (B, 2, 3) or (2, 3) image pixels -> output pixels.
        out_size: side of the square output.
        antialias: pre-filter when shrinking by 2x or more.
        padding_mode: grid_sample padding ('zeros' like dlib, 'border', 'reflection').
    Returns:
        (B, C, out_size, out_size) float.
    """
    if images.dim() != 4:
        raise BadInputError(f"expected (B,C,H,W) images, got {tuple(images.shape)}")
    if M.dim() == 2:
        M = M.unsqueeze(0)
    M = M.to(images.dtype).expand(images.shape[0], -1, -1)
    if antialias:
        scale = torch.sqrt(torch.abs(M[:, 0, 0] * M[:, 1, 1] - M[:, 0, 1] * M[:, 1, 0]))
        k = int(torch.floor(1.0 / scale.detach().max()).item())
        k = max(1, min(k, images.shape[-1], images.shape[-2]))
        if k >= 2:
            images = F.avg_pool2d(images, k, k, ceil_mode=True, count_include_pad=False)
            M = torch.cat([M[:, :, :2] * k, M[:, :, 2:]], -1)
    B, _, H, W = images.shape
    inv = invert_affine(M)  # output pixels -> image pixels
    c = torch.arange(out_size, device=images.device, dtype=images.dtype) + 0.5
    gy, gx = torch.meshgrid(c, c, indexing="ij")
    out_pts = torch.stack([gx, gy], -1).reshape(1, -1, 2).expand(B, -1, -1)
    src = apply_affine(inv, out_pts)
    size = torch.tensor([W, H], device=images.device, dtype=images.dtype)
    grid = (src * (2.0 / size) - 1.0).reshape(B, out_size, out_size, 2)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode=padding_mode,
                         align_corners=False)


def align(images: torch.Tensor, points5: torch.Tensor, template: torch.Tensor, out_size: int,
          antialias: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp images so their 5 points land on ``template`` (least squares).

    Args:
        images: (B, C, H, W) float.
        points5: (B, 5, 2) pixel coordinates (see module docstring for order).
        template: (5, 2) coordinates in the output's pixels.
        out_size: output side.
    Returns:
        (aligned (B, C, out_size, out_size), M (B, 2, 3)).
    """
    M = similarity_from_points(points5.to(images.dtype), template.to(images.dtype))
    return warp(images, M, out_size, antialias=antialias), M
