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
from ...perception.recognizer import identity_loss
from ...render.forward import face_geometry, render_face
from .. import losses as L
from .. import trust as T
from ..crop import Crop
from ..hooks import Hooks, as_floats, record
from ..optim import Adam
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
    # (1, H, W) the last robust (Geman-McClure) weights of the pixel residuals on the crop: what the
    # model could not explain (an occluder); None without a trust map.
    robust: torch.Tensor | None = None


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


@dataclass
class FineView:
    """One photo as the fine stage takes it: its coarse fit (pose, shape, expression), its unwrap
    (lighting, exposure, atlas raster), its framing (crop, landmark targets) and its trust map
    ((1, H, W) ``trust.skin_trust`` of the crop, or None)."""

    coarse: CoarseResult
    start: Unwrapped
    framed: Framed
    trust_map: torch.Tensor | None = None


class _ViewFit:
    """A view's per-run state inside ``run_views``: its parameters (the shape tensor is shared by
    every view), its recogniser targets and its robust weights."""

    def __init__(self, v: FineView, shape: torch.Tensor, rec, device, average: int = 1, jitter: float = 0.0,
                 flip: bool = False):
        c = v.coarse.params
        fresh = lambda x: x.detach().clone().requires_grad_(x.requires_grad)  # noqa: E731
        self.v = v
        self.p = FitParams(rot=fresh(c.rot), trans=fresh(c.trans), shape=shape, expr=fresh(c.expr),
                           sh=v.start.sh.detach().clone().requires_grad_())
        self.emb_photo = self.feats_photo = self.M_align = None
        self.flip = flip
        if rec is not None:
            from ...perception.align import five_points_from_68, similarity_from_points
            M = similarity_from_points(five_points_from_68(v.framed.targets.det), rec.template.to(device))
            self.M_align = jittered_alignments(M.detach(), rec.input_size, average, jitter)
            with torch.no_grad():
                self.emb_photo, feats = rec.embed(self.recognizer_input(v.framed.crop.image, rec.input_size))
            self.feats_photo = [f.detach() for f in feats]
        self.fixed_trust = v.trust_map if v.trust_map is not None else torch.ones_like(v.framed.crop.face_valid)
        self.robust = torch.ones_like(self.fixed_trust)
        self.metrics: dict[str, float] = {}

    def recognizer_input(self, image: torch.Tensor, size: int) -> torch.Tensor:
        """(1, H, W, 3) crop, the photo's or the render's alike -> the recogniser's chips of ``size``
        pixels: one per alignment of ``M_align`` (K, 3, size, size) and, with ``flip``
        (``FineConfig.identity_flip``), their mirror images after them (``with_mirrors``)."""
        from ...perception.align import warp
        chips = warp(image.permute(0, 3, 1, 2).expand(self.M_align.shape[0], -1, -1, -1), self.M_align, size)
        return with_mirrors(chips) if self.flip else chips


def with_mirrors(chips: torch.Tensor) -> torch.Tensor:
    """(K, C, S, S) chips -> (2K, C, S, S): the chips, then each mirrored left to right. Averaged
    over both, the identity terms no longer tell a face from its mirror image, photo and render
    alike."""
    return torch.cat([chips, chips.flip(-1)])


def jittered_alignments(M: torch.Tensor, size: int, count: int, jitter: float) -> torch.Tensor:
    """(count, 2, 3): the recogniser's alignment ``M`` (1, 2, 3), then copies shifted by +-``jitter``
    x the chip's side and scaled about its centre by 1 +- ``jitter`` (``detect.JITTERS``), so that
    the identity terms are averaged over small misalignments (``FineConfig.identity_average``)."""
    from .detect import JITTERS
    if count < 1 or count > len(JITTERS):
        raise ValueError(f"FineConfig.identity_average must be 1..{len(JITTERS)}, not {count}")
    c = size / 2
    out = []
    for jx, jy, js in JITTERS[:count]:
        s = 1 + js * jitter
        A = M[0, :, :2] * s
        t = (M[0, :, 2] - c) * s + c + torch.tensor([jx, jy], dtype=M.dtype, device=M.device) * jitter * size
        out.append(torch.cat([A, t[:, None]], 1))
    return torch.stack(out)


def run(ctx, model, cfg, coarse: CoarseResult, start: Unwrapped, framed: Framed, recognizer,
        hooks: Hooks, device, trust_map: torch.Tensor | None = None) -> FineResult:
    """One photo: ``run_views`` with one view."""
    return run_views(ctx, model, cfg, [FineView(coarse, start, framed, trust_map)], start.texture,
                     recognizer, hooks, device)[0]


def run_views(ctx, model, cfg, views: list[FineView], texture: TextureModel, recognizer, hooks: Hooks,
              device) -> list[FineResult]:
    """The fine stage on one or more photos of one person: ONE shape (the mean of the views' coarse
    shapes to start) and ONE ``texture``, a pose, expression and lighting per view. The loss is the
    sum over the views of their photo terms (identity, content, pixel, landmarks) and their own
    expression and lighting priors, plus the shape and texture priors once.

    Per view, the pixel term's weight is its ``trust_map`` x the Geman-McClure weights of its
    residuals (re-estimated every ``cfg.fine.robust_every`` steps). A latent texture model is
    first fitted alone with the lighting (``cfg.fine.latent_first`` of the steps), then with the
    geometry (GANFit's schedule). Returns one result per view (the texture is the same object)."""
    W, fc = cfg.weights, cfg.fine
    rec = recognizer if cfg.identity else None
    # The shared shape starts at the mean of the photos' own coarse shapes (one photo: its own).
    c0 = views[0].coarse.params.shape
    start = c0 if len(views) == 1 else torch.stack([v.coarse.params.shape for v in views]).mean(0)
    shape = start.detach().clone().requires_grad_(c0.requires_grad)
    fits = [_ViewFit(v, shape, rec, device, fc.identity_average, fc.identity_jitter, fc.identity_flip)
            for v in views]

    narrow_v = _narrow_vertices(model, device)
    rate_scale = {"rot": fc.pose_rate_scale, "trans": fc.pose_rate_scale,
                  "shape": fc.identity_shape_rate if rec is not None else 1.0}
    names = ("rot", "trans", "shape", "sh", "expr") if cfg.fit_expression else ("rot", "trans", "shape", "sh")
    tex_groups = texture.param_groups(getattr(cfg.rates, texture.rate))
    geometry = [x for x in names if x != "sh"]

    # FineConfig.identity_geometry_decay: with the recogniser, the geometry's rates fall to 0
    decay = rec is not None and fc.identity_geometry_decay

    def optimiser(group_names, steps: int):
        groups = []
        for i, f in enumerate(fits):
            # The shared shape is in the first view's groups only (one Adam state for it).
            view_names = tuple(x for x in group_names if i == 0 or x != "shape")
            groups += [{**g, "decay": decay and name in geometry}
                       for name, g in zip(view_names, f.p.groups(cfg.rates, view_names, rate_scale))]
        return Adam([*groups, *tex_groups], warmup=fc.warmup_steps, decay=steps)

    def set_geometry_grad(flag: bool) -> None:
        for f in fits:
            for name in geometry:
                getattr(f.p, name).requires_grad_(flag)

    first = int(round(cfg.fine_steps * fc.latent_first)) if texture.latent_first else 0
    if first > 0:  # the latent and the light alone; the geometry's gradients are not even computed
        set_geometry_grad(False)
        opt = optimiser(("sh",), first)
    else:
        opt = optimiser(names, cfg.fine_steps)
    face_tex = ((views[0].start.uvr.tri_id >= 0) & (views[0].start.uvr.tri_id < model.fit_tri_count))[None].float()
    held = None  # expression channels kept at the coarse fit (FineConfig.hold_eyes)
    if fc.hold_eyes and cfg.fit_expression:
        held = torch.tensor([i for i, name in enumerate(model.expression_names) if name.startswith("eye")],
                            dtype=torch.long, device=device)
    n = cfg.fine_steps
    preview_at = set()
    if hooks.preview is not None and cfg.preview_count > 0 and n > 0:
        preview_at = {int(round(x)) for x in np.linspace(0, n - 1, cfg.preview_count)}

    history: dict[str, list[tuple[int, float]]] = {}
    weighted: dict[str, torch.Tensor] = {}
    for step in range(max(n, 1)):
        hooks.check_cancel()
        if step == first and first > 0:
            set_geometry_grad(True)
            opt = optimiser(names, n - first)
        sample = texture.sample()
        weighted = {}
        preview_img = None
        for i, f in enumerate(fits):
            p, crop, t = f.p, f.v.framed.crop, f.v.framed.targets
            out = render_crop(ctx, model, cfg, p, sample.albedo, crop, narrow_v)
            img = out["image"]
            if i == 0:
                preview_img = img
            face_w = out["weight"] * (out["mask"] * crop.face_valid)
            if f.v.trust_map is not None and fc.robust_scale > 0 and step % fc.robust_every == 0:
                resid = (out["colour_srgb"].detach() - crop.image).abs().mean(-1)
                f.robust = T.geman_mcclure(resid, face_w.detach() * f.fixed_trust, fc.robust_scale)
            raw = L.photo_terms(out["colour_srgb"], crop.image, face_w * f.fixed_trust * f.robust)
            raw.update(L.landmark_terms(out["proj"], t))
            if rec is not None:
                emb, feats = rec.embed(f.recognizer_input(img, rec.input_size))
                raw.update(L.identity_terms(emb, f.emb_photo, feats, f.feats_photo))
                # The metric is the detected alignment's (the first), whatever the averaging.
                cos = 1 - float(identity_loss(f.emb_photo[:1], emb[:1].detach()))
                if step == 0:
                    f.metrics["identity_cosine_init"] = cos
                f.metrics["identity_cosine"] = cos
            # The shape prior once (with the first view), each view's own expression and light.
            raw.update(L.prior_terms(p.shape, p.expr if cfg.fit_expression else None, f.v.coarse.expr_start))
            if i > 0:
                del raw["shape_prior"]
            raw.update(L.light_terms(p.sh, out["irr_mean"], f.v.start.exposure))
            if i == 0:
                raw.update(texture.priors(sample, face_tex, model))
            for k, v in L.weigh(raw, W).items():
                weighted[k] = weighted[k] + v if k in weighted else v
        if n == 0:
            break
        loss = L.total(weighted)
        opt.zero_grad()
        loss.backward()
        opt.step()
        for f in fits:
            model.clamp_expression(f.p.expr)
            if held is not None:
                with torch.no_grad():
                    f.p.expr[:, held] = f.v.coarse.params.expr.detach()[:, held]
        if step % fc.report_every == 0 or step == n - 1:
            values = as_floats(weighted)
            record(history, step + 1, values)
            hooks.progress("fine", step + 1, n, values)
        if step in preview_at:
            hooks.preview((preview_img[0].detach().cpu().numpy() * 255).astype(np.uint8), step)

    results = []
    with torch.no_grad():
        if cfg.unseen.enabled:  # the skull, ears and neck from the seen face (fit/unseen.py)
            shape.copy_(complete_unseen(model, shape, cfg.unseen.face_sigma_cm))
        albedo = texture()
        final_w = as_floats(weighted)
        for f in fits:
            p, crop, t = f.p, f.v.framed.crop, f.v.framed.targets
            out = render_crop(ctx, model, cfg, p, albedo, crop, narrow_v)
            final = dict(final_w)
            final["pixel_l1"] = float(L.masked_l1(out["colour_srgb"], crop.image,
                                                  out["weight"] * out["mask"] * crop.face_valid))
            if f.v.trust_map is not None:
                final["pixel_l1_trusted"] = float(L.masked_l1(
                    out["colour_srgb"], crop.image, out["weight"] * out["mask"] * crop.face_valid * f.fixed_trust))
            proj68 = projected68(model, out["proj"][0], t.det[0], t.jaw_idx)
            err = np.linalg.norm(proj68 - t.det[0].cpu().numpy(), axis=1).mean() / t.iod
            metrics = dict(f.metrics)
            metrics["landmark_error_iod"] = float(err)
            metrics["masked_l1"] = final["pixel_l1"]
            results.append(FineResult(p, texture, final, metrics, proj68, history,
                                      f.robust if f.v.trust_map is not None else None))
    return results
