"""Stage 5, albedo: the photo unwrapped again, now at (up to) its native resolution on the final
geometry, de-lit with the final lighting where it is seen well; the texture model blends it with
its fitted albedo and completes the atlas (symmetry, neighbours, skin tone, eyes and mouth:
``uvspace.complete_albedo``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ...camera import Intrinsics
from ...lighting import shading
from ...render.colour import srgb_to_linear
from ...render.forward import face_geometry, render_depth
from .. import trust, uvspace
from ..crop import Crop, make_crop
from ..params import FitParams
from ..texture import TextureModel
from .detect import Framed
from .fine import FineResult


@dataclass
class FitOutput:
    """The whole fit, as the write stage (``results.py``) needs it."""

    state: FitParams
    texture: TextureModel
    albedo: torch.Tensor                  # (1, T, T, 3) linear, completed atlas (renderer layout)
    K_full: Intrinsics
    crop: Crop
    det68: np.ndarray                      # full-res pixels
    proj68: np.ndarray                     # full-res pixels (jaw: closest point on the jawline)
    losses: dict[str, float]
    metrics: dict[str, float]
    timings: dict[str, float]
    history: dict[str, dict[str, list[tuple[int, float]]]] = field(default_factory=dict)


def final_albedo(ctx, model, cfg, p: FitParams, texture: TextureModel, photo: np.ndarray,
                 K_full: Intrinsics, crop: Crop, outline: np.ndarray | None, device,
                 exposure: float = 1.0, det68: np.ndarray | None = None) -> torch.Tensor:
    """(1, T, T, 3) linear completed atlas at ``cfg.texture_res``. With ``det68`` (full-res
    landmarks) and ``cfg.fine.trust`` the texture model gets the photo's trust per texel
    (``trust.skin_trust`` on the full-resolution crop, unwrapped like the photo)."""
    ac = cfg.albedo
    T = cfg.texture_res
    uvr = uvspace.uv_raster(ctx, model, T)
    fitted = texture()  # (1, t, t, 3) linear
    if fitted.shape[1] != T:
        fitted = F.interpolate(fitted.permute(0, 3, 1, 2), size=(T, T), mode="bilinear",
                               align_corners=False).permute(0, 2, 3, 1)
    # The photo around the face at (up to) native resolution: full detail for the texture.
    hi_res = int(min(max(crop.side, ac.photo_res_min), ac.photo_res_max))
    center = np.array([crop.x0 + crop.side / 2, crop.y0 + crop.side / 2])
    hi = make_crop(photo, center, crop.side, hi_res, K_full, device, outline, cfg.crop.outline_shrink)
    geom = face_geometry(model, p.shape, p.expr, p.rot, p.trans)
    depth = render_depth(ctx, geom, hi.K, min(hi_res, ac.depth_res))
    pos, nrm, mask = uvspace.texel_geometry(ctx, uvr, geom.cam, geom.normals, model)
    colour, conf = uvspace.unwrap(hi.image, hi.face_valid, depth, hi.K, pos, nrm, mask)
    conf = conf * uvspace.narrow_texels(uvr, model)
    delit = (srgb_to_linear(colour) / shading(nrm, p.sh).clamp_min(ac.shade_floor * exposure)).clamp(0, 1)
    trust_uv = None
    if det68 is not None and cfg.fine.trust and texture.uses_trust:
        t_img = trust.skin_trust(hi.image, hi.to_crop(det68))
        t_uv, _ = uvspace.unwrap(t_img[..., None].expand(-1, -1, -1, 3).contiguous(), hi.face_valid,
                                 depth, hi.K, pos, nrm, mask)
        trust_uv = t_uv[..., 0]
    return texture.final_albedo(fitted, delit, conf, uvr, model, ac.conf_gain, trust=trust_uv, cfg=ac)


def run(ctx, model, cfg, fine: FineResult, framed: Framed, photo: np.ndarray, K_full: Intrinsics,
        det68: np.ndarray, device, exposure: float = 1.0) -> FitOutput:
    crop = framed.crop
    with torch.no_grad():
        albedo = final_albedo(ctx, model, cfg, fine.params, fine.texture, photo, K_full, crop,
                              framed.outline, device, exposure, det68)
    proj68_full = fine.proj68 * (crop.side / crop.res) + np.array([crop.x0, crop.y0])
    return FitOutput(fine.params, fine.texture, albedo, K_full, crop, det68, proj68_full, fine.losses,
                     fine.metrics, {})
