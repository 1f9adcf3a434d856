"""Stage 3, unwrap: the coarse face is rasterised into its own UV atlas and every texel is
projected into the photo (visibility by depth test, confidence from the viewing angle). The
lighting (2nd-order SH) comes from a robust least-squares fit of the visible texels' colours
against their normals (``lighting.solve_lighting``), and the photo divided by that shading is the
de-lit starting albedo of the texture model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ...lighting import shading, solve_lighting
from ...render.colour import srgb_to_linear
from ...render.forward import face_geometry, render_depth
from .. import uvspace
from ..crop import Crop
from ..params import FitParams
from ..texture import TextureModel


@dataclass
class Unwrapped:
    texture: TextureModel       # starts at the de-lit photo
    sh: torch.Tensor            # (1, 9, 3) the least-squares lighting
    exposure: float             # its mean irradiance over the skin (1 unless underexposed)
    uvr: uvspace.UVRaster       # the atlas raster at the fine stage's texture size
    base: torch.Tensor | None = None   # (1, T, T, 3) the de-lit, hole-filled unwrap the texture starts at
    conf: torch.Tensor | None = None   # (1, T, T) its confidence (viewing angle x visibility x trust)


def run(ctx, model, cfg, p: FitParams, crop: Crop,
        texture_factory: Callable[[torch.Tensor], TextureModel], device, exposure: float = 1.0,
        trust: torch.Tensor | None = None) -> Unwrapped:
    """``exposure``: the photo's exposure (``lighting.exposure_from_white_point``), carried by
    the light; ``trust``: (1, H, W) the crop's trust weight (``trust.py``), for the lighting fit
    and the texture model's start."""
    uc = cfg.unwrap
    uvr = uvspace.uv_raster(ctx, model, min(cfg.texture_res, uc.max_res))
    with torch.no_grad():
        geom = face_geometry(model, p.shape, p.expr, p.rot, p.trans)
        depth = render_depth(ctx, geom, crop.K, crop.res)
        pos, nrm, mask = uvspace.texel_geometry(ctx, uvr, geom.cam, geom.normals, model)
        colour, conf = uvspace.unwrap(crop.image, crop.face_valid, depth, crop.K, pos, nrm, mask)
        colour_lin = srgb_to_linear(colour)
        narrow = uvspace.narrow_texels(uvr, model)
        conf = conf * narrow
        if trust is not None:
            t_uv, _ = uvspace.unwrap(trust[..., None].expand(-1, -1, -1, 3).contiguous(), crop.face_valid,
                                     depth, crop.K, pos, nrm, mask)
            conf = conf * t_uv[..., 0]
        sh = solve_lighting(colour_lin, nrm, conf * narrow, uc.lighting)
        if exposure != 1.0:
            sh = sh * exposure
        base = (colour_lin / shading(nrm, sh).clamp_min(uc.shade_floor * exposure)).clamp(0, 1)
        base = uvspace.pull_push(base, (conf > uc.fill_min_conf).float() * conf.clamp(0, 1))
    texture = texture_factory(base.detach())
    texture.to(device)
    texture.init_from(base.detach(), conf.detach())
    return Unwrapped(texture, sh, exposure, uvr, base.detach(), conf.detach())


def merged_texture(starts: list[Unwrapped], texture_factory: Callable[[torch.Tensor], TextureModel],
                   device) -> TextureModel:
    """The texture model of several photos of one head: started at their de-lit unwraps averaged
    per texel by confidence (each photo's own lighting already divided out), so that a side only
    one photo sees starts from that photo."""
    if len(starts) == 1:
        return starts[0].texture
    c = torch.stack([s.conf for s in starts])                          # (N, 1, T, T)
    w = c + 1e-6                                                       # nobody sees it: the plain mean
    base = (w[..., None] * torch.stack([s.base for s in starts])).sum(0) / w.sum(0)[..., None]
    texture = texture_factory(base)
    texture.to(device)
    texture.init_from(base, c.amax(0))
    return texture
