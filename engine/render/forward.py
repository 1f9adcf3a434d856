"""The forward model: the face's geometry, a camera, an albedo and SH lighting in, images out.

One pipeline, used by the fit's fine stage, the full-resolution render of the result and the
model preview::

    geometry (camera-space vertices + normals) -> clip -> rasterize -> uv -> texture (albedo)
    -> normals -> SH irradiance -> linear colour -> sRGB -> composite over a background -> antialias

Everything is a tensor; ``render_face`` returns a dict of named images, all (B, H, W, C).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import antialias, interpolate, rasterize, texture
from .colour import linear_to_srgb
from ..camera import Intrinsics, rotation_matrix, to_camera, to_clip
from ..lighting import shading
from ..models.facemodel import vertex_normals

# Clip planes in cm. A face is fitted 20-300 cm from the camera; 5..1000 keeps every plausible
# pose inside the frustum while leaving float32 depth more than enough precision for a face.
NEAR, FAR = 5.0, 1000.0


@dataclass
class Geometry:
    """A posed mesh in camera space (cm, camera looks down -z)."""

    cam: torch.Tensor                 # (B, V, 3) vertex positions
    normals: torch.Tensor             # (B, V, 3) unit vertex normals
    tris: torch.Tensor                # (F, 3) int32
    uvs: torch.Tensor | None = None   # (U, 2) atlas coordinates
    tri_uvs: torch.Tensor | None = None  # (F, 3) int32 UV index per corner


def face_geometry(model, shape: torch.Tensor, expr: torch.Tensor, rot: torch.Tensor, trans: torch.Tensor,
                  part: str = "fit") -> Geometry:
    """The face model with coefficients ``shape``/``expr`` posed by axis-angle ``rot`` and ``trans``."""
    verts = model(shape, expr, part=part)
    cam = to_camera(verts, rotation_matrix(rot), trans)
    if part == "fit":
        tris, tri_uvs = model.fit_tris, model.fit_tri_uvs
    else:
        tris, tri_uvs = model.tris, model.tri_uvs
    return Geometry(cam, vertex_normals(cam, tris), tris, model.uvs, tri_uvs)


def render_face(ctx, geom: Geometry, K: Intrinsics, size: tuple[int, int], sh: torch.Tensor, *,
                albedo: torch.Tensor | None = None, vertex_albedo: torch.Tensor | None = None,
                background: torch.Tensor | None = None, alpha: bool = False,
                attrs: dict[str, torch.Tensor] | None = None, view_cos: bool = False,
                grad_db: bool = True, skip_empty: bool = False) -> dict[str, torch.Tensor]:
    """Render the shaded face.

    Args:
        geom: the posed mesh; K: the camera for an image of ``size`` = (H, W) pixels.
        sh: (B, 9, 3) SH lighting (``lighting.py``).
        albedo: (B, T, T, 3) linear albedo atlas (renderer layout), sampled bilinearly; or
        vertex_albedo: (B, V, 3) linear albedo per vertex (the preview's flat colours).
        background: (B, H, W, 3) or (3,) sRGB; adds ``"image"``: the face composited over it and
            antialiased (differentiable in the silhouette).
        alpha: adds ``"rgba"``: antialiased premultiplied sRGB + coverage (for compositing later).
        attrs: vertex attributes (B or 1, V, C) to interpolate; each comes back under its name.
        view_cos: adds ``"view_cos"`` (B, H, W, 1): cosine between the normal and the view ray.
        skip_empty: return only ``rast``/``mask`` when no pixel is covered (tiled rendering).
    Returns:
        dict with ``rast``, ``clip``, ``mask`` (B, H, W, 1), ``normal``, ``irradiance``,
        ``colour_srgb`` (B, H, W, 3; valid where ``mask``) and the optional outputs above.
    """
    H, W = size
    clip = to_clip(geom.cam, K, NEAR, FAR).contiguous()
    rast, _ = rasterize(ctx, clip, geom.tris, (H, W), grad_db=grad_db)
    mask = (rast[..., 3:4] > 0).float()
    out: dict[str, torch.Tensor] = {"rast": rast, "clip": clip, "mask": mask}
    if skip_empty and not bool((rast[..., 3] > 0).any()):
        return out
    if albedo is not None:
        uv, _ = interpolate(geom.uvs[None], rast, geom.tri_uvs)
        alb = texture(albedo.contiguous(), uv.contiguous(), filter_mode="linear")
    elif vertex_albedo is not None:
        alb, _ = interpolate(vertex_albedo.contiguous(), rast, geom.tris)
    else:
        raise ValueError("render_face needs an albedo atlas or a per-vertex albedo")
    n_px, _ = interpolate(geom.normals, rast, geom.tris)
    n_px = F.normalize(n_px, dim=-1, eps=1e-9)
    irr = shading(n_px, sh)
    colour = linear_to_srgb(alb * irr)
    out.update(normal=n_px, irradiance=irr, colour_srgb=colour)
    for name, a in (attrs or {}).items():
        out[name], _ = interpolate(a, rast, geom.tris)
    if view_cos:
        p_px, _ = interpolate(geom.cam, rast, geom.tris)
        out["view_cos"] = (n_px * F.normalize(-p_px, dim=-1, eps=1e-9)).sum(-1, keepdim=True)
    if background is not None:
        comp = colour * mask + background * (1 - mask)
        out["image"] = antialias(comp.contiguous(), rast, clip, geom.tris)
    if alpha:
        rgba = torch.cat([colour * mask, mask], -1)
        out["rgba"] = antialias(rgba.contiguous(), rast, clip, geom.tris)
    return out


def render_depth(ctx, geom: Geometry, K: Intrinsics, size: int | tuple[int, int]) -> torch.Tensor:
    """(B, H, W) distance along the view axis (cm) of the nearest surface, 0 where empty."""
    H, W = (size, size) if isinstance(size, int) else size
    clip = to_clip(geom.cam, K, NEAR, FAR)
    rast, _ = rasterize(ctx, clip.contiguous(), geom.tris, (H, W), grad_db=False)
    d, _ = interpolate(-geom.cam[..., 2:3].contiguous(), rast, geom.tris)
    return d[..., 0] * (rast[..., 3] > 0)


def render_full(ctx, model, st, albedo_lin: torch.Tensor, K: Intrinsics, tile: int = 1024) -> np.ndarray:
    """Render the fitted face (parameters ``st``: rot, trans, shape, expr, sh) at the photo's full
    resolution with the photo's camera, in tiles of ``tile`` pixels.

    Returns (H, W, 4) uint8 sRGB + alpha (coverage, antialiased).
    """
    H, W = K.height, K.width
    out = np.zeros((H, W, 4), np.uint8)
    with torch.no_grad():
        geom = face_geometry(model, st.shape, st.expr, st.rot, st.trans)
        for y0 in range(0, H, tile):
            for x0 in range(0, W, tile):
                h, w = min(tile, H - y0), min(tile, W - x0)
                r = render_face(ctx, geom, K.cropped(x0, y0, w, h), (h, w), st.sh, albedo=albedo_lin,
                                alpha=True, grad_db=False, skip_empty=True)
                if "rgba" not in r:
                    continue
                rgba = r["rgba"][0]
                a = rgba[..., 3:4].clamp(0, 1)
                rgb = torch.where(a > 1e-4, rgba[..., :3] / a.clamp_min(1e-4), torch.zeros_like(rgba[..., :3]))
                tile_px = torch.cat([rgb, a], -1).clamp(0, 1)
                out[y0:y0 + h, x0:x0 + w] = (tile_px.cpu().numpy() * 255 + 0.5).astype(np.uint8)
    return out
