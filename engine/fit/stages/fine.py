"""Stage 4, fine: everything together through the differentiable renderer (``render.forward``):
identity (1 - cosine of the recogniser's embeddings of the photo and of the render composited over
the photo, both aligned to the recogniser's template), content (its intermediate activations),
masked pixel L1 (which also drives the lighting), landmarks, and the priors on shape, expression,
lighting and texture (the texture model's own, ``TextureModel.priors``). Ends with the unseen head
completed from the seen face (``fit/unseen.py``) and an evaluation of the final parameters on the
crop (the fit's metrics)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ...camera import project
from ...render.forward import face_geometry, render_face
from .. import losses as L
from .. import trust as T
from ..crop import Crop
from ..hooks import Hooks, as_floats, record
from ..params import FitParams
from ..texture import TextureModel
from ..unseen import complete_unseen
from .coarse import CoarseResult
from .detect import Framed
from .unwrap import Unwrapped


@dataclass
class FineResult:
    params: FitParams
    texture: TextureModel
    losses: dict[str, float]           # the last step's weighted terms + ``pixel_l1``
    metrics: dict[str, float]          # landmark_error_iod, masked_l1, identity_cosine(_init)
    proj68: np.ndarray                 # (68, 2) crop pixels (jaw: closest point on the jawline)
    history: dict[str, list[tuple[int, float]]]


def render_crop(ctx, model, cfg, p: FitParams, albedo: torch.Tensor, crop: Crop,
                narrow_v: torch.Tensor) -> dict[str, torch.Tensor]:
    """The face on the crop, with what the fine stage's terms need: ``colour_srgb``, the
    antialiased composite over the photo ``image``, ``mask`` and ``weight`` (B, H, W), the
    per-channel mean irradiance over the face ``irr_mean`` (3,), the projected vertices ``proj``."""
    fc = cfg.fine
    geom = face_geometry(model, p.shape, p.expr, p.rot, p.trans)
    out = render_face(ctx, geom, crop.K, (crop.res, crop.res), p.sh, albedo=albedo, background=crop.image,
                      attrs={"narrow": narrow_v[None]}, view_cos=True)
    mask = out["mask"]
    # Down-weight grazing angles: near the silhouette a pixel mixes face and background.
    narrow = out["narrow"] * ((out["view_cos"].detach() - fc.grazing_lo) / fc.grazing_width).clamp(0, 1)
    nw = narrow * mask
    out["irr_mean"] = (out["irradiance"] * nw).sum((0, 1, 2)) / nw.sum().clamp_min(1.0)  # (3,)
    out["weight"] = narrow[..., 0] * mask[..., 0]
    out["mask"] = mask[..., 0]
    out["proj"] = project(geom.cam, crop.K)
    return out


def _narrow_vertices(model, device) -> torch.Tensor:
    v = torch.zeros(model.n_fit_vertices, 1, device=device)
    v[: model.n_narrow_vertices] = 1.0
    return v


def projected68(model, proj: torch.Tensor, det: torch.Tensor, jaw_idx: torch.Tensor) -> np.ndarray:
    """Model 68 landmarks in crop pixels; the jaw ones are the closest points on the projected
    jawline to the detected jaw points (the sliding contour used by the fit)."""
    pts = proj[model.landmarks68].clone()
    _, closest = L.closest_on_polyline(det[L.JAW][None], proj[jaw_idx][None])
    pts[L.JAW] = closest[0]
    return pts.cpu().numpy()


def run(ctx, model, cfg, coarse: CoarseResult, start: Unwrapped, framed: Framed, recognizer,
        hooks: Hooks, device, trust_map: torch.Tensor | None = None) -> FineResult:
    """``trust_map``: (1, H, W) the crop's fixed trust weight (``trust.skin_trust``) or None; the
    pixel term's weight is it x the Geman-McClure weights of the residuals (re-estimated every
    ``cfg.fine.robust_every`` steps). A latent texture model is first fitted alone with the
    lighting (``cfg.fine.latent_first`` of the steps), then with the geometry (GANFit's schedule)."""
    crop, t, W, fc = framed.crop, framed.targets, cfg.weights, cfg.fine
    c = coarse.params
    fresh = lambda x: x.detach().clone().requires_grad_(x.requires_grad)  # noqa: E731
    p = FitParams(rot=fresh(c.rot), trans=fresh(c.trans), shape=fresh(c.shape), expr=fresh(c.expr),
                  sh=start.sh.detach().clone().requires_grad_())
    texture = start.texture

    rec = recognizer if cfg.identity else None
    emb_photo = feats_photo = None
    if rec is not None:
        from ...perception.align import five_points_from_68, similarity_from_points, warp
        M_align = similarity_from_points(five_points_from_68(t.det), rec.template.to(device)).detach()
        S = rec.input_size
        with torch.no_grad():
            emb_photo, feats_photo = rec.embed(warp(crop.image.permute(0, 3, 1, 2), M_align, S))
        feats_photo = [f.detach() for f in feats_photo]

    narrow_v = _narrow_vertices(model, device)
    pose = {"rot": fc.pose_rate_scale, "trans": fc.pose_rate_scale}
    names = ("rot", "trans", "shape", "sh", "expr") if cfg.fit_expression else ("rot", "trans", "shape", "sh")
    tex_groups = texture.param_groups(getattr(cfg.rates, texture.rate))
    geometry = [x for x in names if x != "sh"]
    first = int(round(cfg.fine_steps * fc.latent_first)) if texture.latent_first else 0
    if first > 0:  # the latent and the light alone; the geometry's gradients are not even computed
        for name in geometry:
            getattr(p, name).requires_grad_(False)
        opt = p.optimiser(cfg.rates, ("sh",), pose, extra=tex_groups)
    else:
        opt = p.optimiser(cfg.rates, names, pose, extra=tex_groups)
    fixed_trust = trust_map if trust_map is not None else torch.ones_like(crop.face_valid)
    robust = torch.ones_like(fixed_trust)
    face_tex = ((start.uvr.tri_id >= 0) & (start.uvr.tri_id < model.fit_tri_count))[None].float()
    n = cfg.fine_steps
    preview_at = set()
    if hooks.preview is not None and cfg.preview_count > 0 and n > 0:
        preview_at = {int(round(x)) for x in np.linspace(0, n - 1, cfg.preview_count)}

    metrics: dict[str, float] = {}
    history: dict[str, list[tuple[int, float]]] = {}
    weighted: dict[str, torch.Tensor] = {}
    for step in range(max(n, 1)):
        hooks.check_cancel()
        if step == first and first > 0:
            for name in geometry:
                getattr(p, name).requires_grad_(True)
            opt = p.optimiser(cfg.rates, names, pose, extra=tex_groups)
        sample = texture.sample()
        out = render_crop(ctx, model, cfg, p, sample.albedo, crop, narrow_v)
        img = out["image"]
        face_w = out["weight"] * (out["mask"] * crop.face_valid)
        if trust_map is not None and fc.robust_scale > 0 and step % fc.robust_every == 0:
            resid = (out["colour_srgb"].detach() - crop.image).abs().mean(-1)
            robust = T.geman_mcclure(resid, face_w.detach() * fixed_trust, fc.robust_scale)
        raw = L.photo_terms(out["colour_srgb"], crop.image, face_w * fixed_trust * robust)
        raw.update(L.landmark_terms(out["proj"], t))
        if rec is not None:
            emb, feats = rec.embed(warp(img.permute(0, 3, 1, 2), M_align, S))
            raw.update(L.identity_terms(emb, emb_photo, feats, feats_photo))
            cos = 1 - float(raw["identity"].detach())
            if step == 0:
                metrics["identity_cosine_init"] = cos
            metrics["identity_cosine"] = cos
        raw.update(L.prior_terms(p.shape, p.expr if cfg.fit_expression else None, coarse.expr_start))
        raw.update(L.light_terms(p.sh, out["irr_mean"], start.exposure))
        raw.update(texture.priors(sample, face_tex, model))
        weighted = L.weigh(raw, W)
        if n == 0:
            break
        loss = L.total(weighted)
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.clamp_expression(p.expr)
        if step % fc.report_every == 0 or step == n - 1:
            values = as_floats(weighted)
            record(history, step + 1, values)
            hooks.progress("fine", step + 1, n, values)
        if step in preview_at:
            hooks.preview((img[0].detach().cpu().numpy() * 255).astype(np.uint8), step)

    with torch.no_grad():
        if cfg.unseen.enabled:  # the skull, ears and neck from the seen face (fit/unseen.py)
            p.shape.copy_(complete_unseen(model, p.shape, cfg.unseen.face_sigma_cm))
        out = render_crop(ctx, model, cfg, p, texture(), crop, narrow_v)
        final = as_floats(weighted)
        final["pixel_l1"] = float(L.masked_l1(out["colour_srgb"], crop.image,
                                              out["weight"] * out["mask"] * crop.face_valid))
        if trust_map is not None:
            final["pixel_l1_trusted"] = float(L.masked_l1(out["colour_srgb"], crop.image,
                                                          out["weight"] * out["mask"] * crop.face_valid * fixed_trust))
        proj68 = projected68(model, out["proj"][0], t.det[0], t.jaw_idx)
        err = np.linalg.norm(proj68 - t.det[0].cpu().numpy(), axis=1).mean() / t.iod
        metrics["landmark_error_iod"] = float(err)
        metrics["masked_l1"] = final["pixel_l1"]
    return FineResult(p, texture, final, metrics, proj68, history)
