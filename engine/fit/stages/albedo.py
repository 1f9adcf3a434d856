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


@dataclass
class PhotoUnwrap:
    """One photo unwrapped on the final geometry (``unwrap_photo``), in the final atlas."""

    delit: torch.Tensor                   # (1, T, T, 3) linear, the photo divided by its shading
    conf: torch.Tensor                    # (1, T, T) viewing angle x visibility x narrow face
    trust: torch.Tensor | None            # (1, T, T) the photo's trust per texel, or None
    # (1, T, T) the fine stage's occluder weight per texel (its robust weights), or None: used only
    # to weigh the photos against each other (``merge_unwraps``).
    occluder: torch.Tensor | None = None


def unwrap_photo(ctx, model, cfg, p: FitParams, texture: TextureModel, photo: np.ndarray,
                 K_full: Intrinsics, crop: Crop, outline: np.ndarray | None, device, uvr: uvspace.UVRaster,
                 exposure: float = 1.0, det68: np.ndarray | None = None,
                 occluder: torch.Tensor | None = None) -> PhotoUnwrap:
    """The photo around the face at (up to) native resolution, unwrapped into ``uvr`` on the
    geometry of ``p`` and de-lit with its lighting. With ``det68`` (full-res landmarks),
    ``cfg.fine.trust`` and a texture model that takes it, the photo's trust per texel
    (``trust.skin_trust`` on the full-resolution crop, unwrapped like the photo). ``occluder``:
    (1, h, w) weights on the fit's crop (the fine stage's robust weights), unwrapped too."""
    ac = cfg.albedo
    hi_res = int(min(max(crop.side, ac.photo_res_min), ac.photo_res_max))
    center = np.array([crop.x0 + crop.side / 2, crop.y0 + crop.side / 2])
    hi = make_crop(photo, center, crop.side, hi_res, K_full, device, outline, cfg.crop.outline_shrink,
                   cfg.crop.antialias)
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
    occ_uv = None
    if occluder is not None:
        o_img = F.interpolate(occluder[:, None].float(), size=hi.image.shape[1:3], mode="bilinear",
                              align_corners=False)[:, 0].clamp(0, 1)
        o_uv, _ = uvspace.unwrap(o_img[..., None].expand(-1, -1, -1, 3).contiguous(), hi.face_valid,
                                 depth, hi.K, pos, nrm, mask)
        occ_uv = o_uv[..., 0]
    return PhotoUnwrap(delit, conf, trust_uv, occ_uv)


def fitted_atlas(ctx, model, cfg, texture: TextureModel) -> tuple[torch.Tensor, uvspace.UVRaster]:
    """The texture model's albedo at ``cfg.texture_res`` and the atlas raster of that size."""
    T = cfg.texture_res
    uvr = uvspace.uv_raster(ctx, model, T)
    fitted = texture()  # (1, t, t, 3) linear
    if fitted.shape[1] != T:
        fitted = F.interpolate(fitted.permute(0, 3, 1, 2), size=(T, T), mode="bilinear",
                               align_corners=False).permute(0, 2, 3, 1)
    return fitted, uvr


def final_albedo(ctx, model, cfg, p: FitParams, texture: TextureModel, photo: np.ndarray,
                 K_full: Intrinsics, crop: Crop, outline: np.ndarray | None, device,
                 exposure: float = 1.0, det68: np.ndarray | None = None) -> torch.Tensor:
    """(1, T, T, 3) linear completed atlas at ``cfg.texture_res`` from one photo
    (``unwrap_photo``) and the texture model (``TextureModel.final_albedo``)."""
    fitted, uvr = fitted_atlas(ctx, model, cfg, texture)
    u = unwrap_photo(ctx, model, cfg, p, texture, photo, K_full, crop, outline, device, uvr, exposure, det68)
    return texture.final_albedo(fitted, u.delit, u.conf, uvr, model, cfg.albedo.conf_gain, trust=u.trust,
                                cfg=cfg.albedo)


def merge_unwraps(unwraps: list[PhotoUnwrap]) -> PhotoUnwrap:
    """Several photos' unwraps as one: per texel, each photo's weight is its confidence x trust x
    occluder weight (viewing angle x visibility x the skin model x what the fit could not explain),
    normalised over the photos, so the photo that sees a texel best gives most of its colour and a
    side one photo cannot see, or a hand covers, comes from another. The merged confidence and trust
    are the weighted means of the photos' (their product is at least the mean and at most the best
    photo's); the occluder weight only decides between the photos."""
    if len(unwraps) == 1:
        return unwraps[0]
    c = torch.stack([u.conf for u in unwraps])                          # (N, 1, T, T)
    has_trust = all(u.trust is not None for u in unwraps)
    t = torch.stack([u.trust for u in unwraps]) if has_trust else torch.ones_like(c)
    w = c * t
    if all(u.occluder is not None for u in unwraps):
        wo = w * torch.stack([u.occluder for u in unwraps])
        w_pick = torch.where(wo.sum(0, keepdim=True) > 1e-6, wo, w)  # all occluded: as if none were
    else:
        w_pick = w
    a = w_pick / w_pick.sum(0, keepdim=True).clamp_min(1e-6)
    delit = (a[..., None] * torch.stack([u.delit for u in unwraps])).sum(0)
    conf = (a * c).sum(0)
    trust_m = ((a * w).sum(0) / conf.clamp_min(1e-6)).clamp(0, 1) if has_trust else None
    # Where no photo sees a texel, the first photo's colour (its weight is 0 anyway).
    none = w.sum(0) <= 1e-6
    delit = torch.where(none[..., None], unwraps[0].delit, delit)
    return PhotoUnwrap(delit, conf, trust_m)


def seen_share(u: PhotoUnwrap, uvr: uvspace.UVRaster, model, conf_gain: float) -> torch.Tensor:
    """(1, T, T) how well each texel is seen, as the texture models use it: (conf x conf_gain)
    clipped to 1, x the trust. Above 0.5 a texel counts as seen (``coverage``)."""
    s = (u.conf * conf_gain).clamp(0, 1)
    return s if u.trust is None else s * u.trust


def coverage(seen: torch.Tensor, uvr: uvspace.UVRaster, model) -> float:
    """The share of the face atlas seen well: of the narrow face's texels (``uvspace.narrow_texels``
    above 0.5: the face without ears, neck and scalp, where a photo's colours are used), those
    whose ``seen_share`` is above 0.5 (the threshold ``uvspace.lift_unseen_dark`` uses for well-seen
    skin)."""
    face = uvspace.narrow_texels(uvr, model) > 0.5
    return float(((seen > 0.5) & face).sum()) / max(int(face.sum()), 1)


def run_views(ctx, model, cfg, fines: list[FineResult], frameds: list[Framed], photos: list[np.ndarray],
              K_fulls: list[Intrinsics], det68s: list[np.ndarray], device,
              exposures: list[float]) -> tuple[list[FitOutput], dict]:
    """Several photos of one head: each unwrapped on its final geometry, merged by per-texel trust
    (``merge_unwraps``) into ONE albedo. Returns a FitOutput per photo (the same albedo) and the
    coverage: {"per_view": [...], "merged": share}."""
    texture = fines[0].texture
    with torch.no_grad():
        fitted, uvr = fitted_atlas(ctx, model, cfg, texture)
        # Each photo's trust includes its occluder weight (the fine stage's robust weights), so a
        # hand or a strand of hair in one photo leaves that part to the others.
        unwraps = [unwrap_photo(ctx, model, cfg, f.params, texture, ph, K, fr.crop, fr.outline, device, uvr,
                                ex, d, occluder=f.robust)
                   for f, fr, ph, K, d, ex in zip(fines, frameds, photos, K_fulls, det68s, exposures)]
        merged = merge_unwraps(unwraps)
        gain = cfg.albedo.conf_gain
        albedo = texture.final_albedo(fitted, merged.delit, merged.conf, uvr, model, gain, trust=merged.trust,
                                      cfg=cfg.albedo)
        seen = [seen_share(u, uvr, model, gain) for u in unwraps]
        cov = {"per_view": [round(coverage(s, uvr, model), 4) for s in seen],
               "merged": round(coverage(torch.stack(seen).amax(0), uvr, model), 4)}
    outs = []
    for f, fr, K, d in zip(fines, frameds, K_fulls, det68s):
        crop = fr.crop
        proj68_full = f.proj68 * (crop.side / crop.res) + np.array([crop.x0, crop.y0])
        outs.append(FitOutput(f.params, f.texture, albedo, K, crop, d, proj68_full, f.losses, f.metrics, {}))
    return outs, cov


def run(ctx, model, cfg, fine: FineResult, framed: Framed, photo: np.ndarray, K_full: Intrinsics,
        det68: np.ndarray, device, exposure: float = 1.0) -> FitOutput:
    crop = framed.crop
    with torch.no_grad():
        albedo = final_albedo(ctx, model, cfg, fine.params, fine.texture, photo, K_full, crop,
                              framed.outline, device, exposure, det68)
    proj68_full = fine.proj68 * (crop.side / crop.res) + np.array([crop.x0, crop.y0])
    return FitOutput(fine.params, fine.texture, albedo, K_full, crop, det68, proj68_full, fine.losses,
                     fine.metrics, {})
