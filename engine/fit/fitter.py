"""GANFit-style fitting of the face model, texture, camera and lighting to one photo.

Stages (weights and step counts in ``config.py``):

1. **coarse** - pose from the landmarks (weak-perspective PnP on the neutral face), then Adam on the
   landmark + jaw-contour losses and the shape/expression priors. Only the ~300 vertices that the
   landmarks use are evaluated, so this stage costs milliseconds per step.
2. **unwrap** - the fitted face is rasterised into its own UV atlas; every texel is projected into
   the photo (visibility by depth test, confidence from the viewing angle). Lighting (2nd-order SH)
   comes from a robust least-squares fit of the visible texels' colours against their normals, and
   the photo divided by that shading is the de-lit starting albedo.
3. **fine** - everything together through the differentiable renderer: identity (1 - cosine of the
   recogniser's embeddings of the photo and of the render composited over the photo, both aligned
   to the recogniser's template), content (its intermediate activations), masked pixel L1 (which
   also drives the lighting), landmarks, and the priors on shape, expression and texture.
4. **final** - the albedo: the photo unwrapped again at full resolution on the final geometry and
   de-lit with the final lighting where it is seen well, the fitted albedo elsewhere, completed by
   symmetry, neighbours and a skin-tone prior (``uvspace.complete_albedo``).

Colour: photos are sRGB; shading is computed in linear light (albedo * SH irradiance) and the render
is converted back to sRGB before it is compared with the photo. The albedo PNG is sRGB-encoded.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .. import render
from ..camera import (Intrinsics, matrix_to_axis_angle, project, rotation_matrix,
                      solve_pose_weak_perspective, to_camera, to_clip)
from ..errors import CancelledError
from ..lighting import ambient_coeffs, sh_basis, shading
from ..models.facemodel import FaceModel, vertex_normals
from . import losses as L
from . import uvspace
from .config import FitConfig
from .optim import Adam
from .texture import TexelTexture, TextureModel

log = logging.getLogger("engine.fit")

NEAR, FAR = 5.0, 1000.0  # cm


def srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x <= 0.04045, x / 12.92, ((x.clamp_min(0) + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x: torch.Tensor) -> torch.Tensor:
    x = x.clamp(0, 1)
    return torch.where(x <= 0.0031308, x * 12.92, 1.055 * x.clamp_min(1e-8) ** (1 / 2.4) - 0.055)


@dataclass
class Crop:
    """A square crop of the photo around the face, resampled to ``res`` pixels."""

    x0: float
    y0: float
    side: float
    res: int
    image: torch.Tensor   # (1, res, res, 3) sRGB in [0, 1]
    valid: torch.Tensor   # (1, res, res) 1 where the crop lies inside the photo
    K: Intrinsics

    skin: torch.Tensor | None = None  # (1, res, res) 1 inside the detected face outline

    def to_crop(self, pts: np.ndarray) -> np.ndarray:
        return (pts - np.array([self.x0, self.y0])) * (self.res / self.side)

    @property
    def face_valid(self) -> torch.Tensor:
        """Where the photo may be compared with the face: inside the photo and, when the detector
        gave a face outline, inside it (no background or hair past the outline)."""
        return self.valid if self.skin is None else self.valid * self.skin

    def set_outline(self, outline: np.ndarray | None, shrink: float = 0.97) -> None:
        """Rasterise the detector's face outline (full-res pixels), shrunk a little toward its
        centre so that the outline's own error does not let background in."""
        if outline is None:
            self.skin = None
            return
        pts = self.to_crop(outline)
        c = pts.mean(0)
        pts = c + (pts - c) * shrink
        from PIL import ImageDraw
        m = Image.new("L", (self.res, self.res), 0)
        ImageDraw.Draw(m).polygon([tuple(map(float, p)) for p in pts], fill=255)
        self.skin = torch.from_numpy(np.asarray(m, dtype=np.float32) / 255.0)[None].to(self.image.device)


def make_crop(photo: np.ndarray, center: np.ndarray, side: float, res: int, K_full: Intrinsics,
              device) -> Crop:
    x0, y0 = float(center[0] - side / 2), float(center[1] - side / 2)
    img = Image.fromarray(photo)
    ones = Image.new("L", img.size, 255)
    # Shrinking a lot: box-filter by an integer factor first (exact with pixel-corner coordinates),
    # then resample the (even out-of-bounds) square with an EXTENT transform.
    k = max(1, int(side / (2 * res)))
    if k > 1:
        img, ones = img.reduce(k), ones.reduce(k)
    box = (x0 / k, y0 / k, (x0 + side) / k, (y0 + side) / k)
    crop = img.transform((res, res), Image.Transform.EXTENT, box, resample=Image.Resampling.BICUBIC,
                         fillcolor=(0, 0, 0))
    valid = ones.transform((res, res), Image.Transform.EXTENT, box, resample=Image.Resampling.BILINEAR,
                           fillcolor=0)
    t = torch.from_numpy(np.asarray(crop, dtype=np.float32) / 255.0)[None].to(device)
    v = torch.from_numpy((np.asarray(valid, dtype=np.float32) / 255.0 > 0.99).astype(np.float32))[None].to(device)
    K = K_full.cropped(x0, y0, round(side), round(side)).scaled(res / side)
    K = Intrinsics(K.fx, K.fy, K.cx, K.cy, res, res)
    return Crop(x0, y0, side, res, t, v, K)


@dataclass
class FitState:
    """Leaf tensors being optimised (STYLE: a dataclass of leaves, not a sliced vector)."""

    rot: torch.Tensor          # (1, 3) axis-angle
    trans: torch.Tensor        # (1, 3) cm
    shape: torch.Tensor        # (1, 100)
    expr: torch.Tensor         # (1, 53) in [0, 1]
    sh: torch.Tensor           # (1, 9, 3)

    def leaves(self) -> list[torch.Tensor]:
        return [self.rot, self.trans, self.shape, self.expr, self.sh]


@dataclass
class FitOutput:
    state: FitState
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


ProgressFn = Callable[[str, int, int, dict], None]


class Fitter:
    def __init__(self, model: FaceModel, cfg: FitConfig, ctx, device: torch.device,
                 recognizer=None, texture_factory: Callable[[torch.Tensor], TextureModel] | None = None,
                 cancel: Callable[[], bool] | None = None, progress: ProgressFn | None = None,
                 preview: Callable[[np.ndarray, int], None] | None = None):
        self.model = model
        self.cfg = cfg
        self.ctx = ctx
        self.device = device
        self.recognizer = recognizer
        self.texture_factory = texture_factory or (lambda base: TexelTexture(base))
        self._cancel = cancel or (lambda: False)
        self._progress = progress or (lambda *a: None)
        self._preview = preview
        self.history: dict[str, dict[str, list[tuple[int, float]]]] = {}  # stage -> term -> (step, value)
        jaw = torch.cat([model.jawline_right_extended, model.landmarks68[8:9], model.jawline_left_extended])
        self.jaw_line_idx = jaw
        self.lm_inner_idx = model.landmarks68[L.INNER]
        try:
            from ..perception.correspondence import load_correspondence
            self.corr = load_correspondence("mediapipe478")
        except Exception:  # noqa: BLE001 - fall back to the 68 iBUG landmarks
            self.corr = None

    # ------------------------------------------------------------------ helpers
    def check_cancel(self) -> None:
        if self._cancel():
            raise CancelledError("The fit was cancelled.")

    def _record(self, stage: str, step: int, losses: dict[str, torch.Tensor | float]) -> dict[str, float]:
        out = {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in losses.items()}
        for k, v in out.items():
            self.history.setdefault(stage, {}).setdefault(k, []).append((step, v))
        return out

    def _subset_basis(self, idx: torch.Tensor):
        V = self.model.n_vertices
        basis = self.model.basis.view(V, 3, -1)[idx]  # (n, 3, 153)
        return self.model.vertices_neutral[idx], basis

    # ------------------------------------------------------------------ stages
    def _landmark_terms(self, p2: torch.Tensor, remap: torch.Tensor | None, lm) -> dict[str, torch.Tensor]:
        """Landmark + contour terms from projected vertices ``p2`` (B, n, 2); ``remap`` maps model
        vertex ids to rows of p2 (None: p2 holds every fitted vertex)."""
        W = self.cfg.weights
        r = (lambda i: i) if remap is None else (lambda i: remap[i])
        if lm["dense"] is not None:
            pts = (p2[:, r(lm["tri_v"])] * lm["bary"][None, :, :, None]).sum(2)
            landmark = L.landmark_loss(pts, lm["dense"], lm["iod"], lm["weights"])
        else:
            landmark = L.landmark_loss(p2[:, r(self.lm_inner_idx)], lm["det"][:, L.INNER], lm["iod"])
        contour = L.contour_loss(p2[:, r(self.jaw_line_idx)], lm["det"][:, L.JAW], lm["iod"])
        return {"landmark": W.landmark * landmark, "contour": W.contour * contour}

    def fit(self, photo: np.ndarray, det68: np.ndarray, K_full: Intrinsics,
            expr_init: dict[str, float] | None = None, dense: np.ndarray | None = None) -> FitOutput:
        """Fit one face. ``det68``: (68, 2) iBUG landmarks, ``dense``: the detector's dense
        landmarks (mediapipe478) or None, both in full-resolution photo pixels."""
        cfg, model, dev = self.cfg, self.model, self.device
        torch.manual_seed(cfg.seed)
        timings: dict[str, float] = {}
        t0 = time.perf_counter()

        # Crop around the landmarks.
        lo, hi = det68.min(0), det68.max(0)
        side = float(max(hi - lo) * cfg.crop_scale)
        center = (lo + hi) / 2 - np.array([0.0, 0.05 * side])  # a little headroom for the forehead
        crop = make_crop(photo, center, side, cfg.render_res, K_full, dev)
        self._outline = None
        if dense is not None and len(dense) >= 468:
            from ..perception.landmarks import MEDIAPIPE_FACE_OVAL
            self._outline = np.asarray(dense)[list(MEDIAPIPE_FACE_OVAL)]
        crop.set_outline(self._outline)
        det = torch.from_numpy(crop.to_crop(det68)).float().to(dev)[None]  # (1, 68, 2)
        iod = float(torch.linalg.norm(det[0, 36] - det[0, 45]))

        lm = {"det": det, "iod": iod, "dense": None}
        if dense is not None and self.corr is not None and len(dense) > int(self.corr.point_index.max()):
            c = self.corr
            lm["dense"] = torch.from_numpy(crop.to_crop(dense[c.point_index])).float().to(dev)[None]
            lm["tri_v"] = model.fit_tris[torch.from_numpy(c.tri).to(dev)].long()
            lm["bary"] = torch.from_numpy(c.bary).float().to(dev)
            lm["weights"] = torch.from_numpy(c.weights).float().to(dev)

        # --- stage 1: coarse -------------------------------------------------------------
        used = [self.lm_inner_idx, self.jaw_line_idx]
        if lm["dense"] is not None:
            used.append(lm["tri_v"].flatten())
        sub_idx = torch.unique(torch.cat(used))
        remap = torch.full((model.n_vertices,), -1, dtype=torch.long, device=dev)
        remap[sub_idx] = torch.arange(len(sub_idx), device=dev)
        neutral_sub, basis_sub = self._subset_basis(sub_idx.to(dev))

        pts3 = model.vertices_neutral[self.lm_inner_idx].cpu().numpy()
        R0, t0_ = solve_pose_weak_perspective(pts3, det[0, L.INNER].cpu().numpy(), crop.K)
        st = FitState(
            rot=torch.tensor(matrix_to_axis_angle(R0), dtype=torch.float32, device=dev)[None].requires_grad_(),
            trans=torch.tensor(t0_, dtype=torch.float32, device=dev)[None].requires_grad_(),
            shape=torch.zeros(1, model.n_shape, device=dev, requires_grad=True),
            expr=torch.zeros(1, model.n_expr, device=dev),
            sh=ambient_coeffs(1, dev).requires_grad_(),
        )
        if expr_init and cfg.fit_expression:
            for name, w in expr_init.items():
                if name in model.expression_names:
                    st.expr[0, model.expression_names.index(name)] = float(w)
        model.clamp_expression(st.expr)
        expr_init_t = st.expr.detach().clone()
        st.expr.requires_grad_(cfg.fit_expression)

        W = cfg.weights
        cr = cfg.coarse_rates
        groups = [{"params": [st.rot], "lr": cr.rotation}, {"params": [st.trans], "lr": cr.translation}]
        opt_pose = Adam(groups)
        shape_groups = [{"params": [st.shape], "lr": cr.shape}]
        if cfg.fit_expression:
            shape_groups.append({"params": [st.expr], "lr": cr.expression})
        opt_shape = Adam(shape_groups)

        def coarse_losses():
            coeffs = torch.cat([st.shape, st.expr], 1)
            v = neutral_sub[None] + torch.einsum("bk,nck->bnc", coeffs, basis_sub)
            cam = to_camera(v, rotation_matrix(st.rot), st.trans)
            p2 = project(cam, crop.K)
            terms = self._landmark_terms(p2, remap, lm)
            terms["shape_prior"] = W.shape_prior * L.shape_prior(st.shape)
            if cfg.fit_expression:
                terms["expr_prior"] = W.expr_prior * L.expression_prior(st.expr, expr_init_t, W.expr_init / max(W.expr_prior, 1e-9))
            return terms

        n_coarse = cfg.coarse_steps
        pose_only = max(1, n_coarse // 4)
        for step in range(n_coarse):
            self.check_cancel()
            terms = coarse_losses()
            loss = sum(terms.values())
            opt_pose.zero_grad()
            opt_shape.zero_grad()
            loss.backward()
            opt_pose.step()
            if step >= pose_only:
                opt_shape.step()
                model.clamp_expression(st.expr)
            if step % 5 == 0 or step == n_coarse - 1:
                self._progress("coarse", step + 1, n_coarse, self._record("coarse", step + 1, terms))
        timings["coarse"] = time.perf_counter() - t0

        # --- stage 2: unwrap and lighting -------------------------------------------------
        t1 = time.perf_counter()
        self.check_cancel()
        tex_fit_res = min(cfg.texture_res, 512)
        uvr_fit = uvspace.uv_raster(self.ctx, model, tex_fit_res)
        with torch.no_grad():
            verts, cam, nrm_cam = self._geometry(st)
            depth = self._depth(cam, crop.K, crop.res)
            pos, nrm, mask = uvspace.texel_geometry(self.ctx, uvr_fit, cam, nrm_cam, model)
            colour, conf = uvspace.unwrap(crop.image, crop.face_valid, depth, crop.K, pos, nrm, mask)
            colour_lin = srgb_to_linear(colour)
            narrow = self._narrow_texels(uvr_fit)
            conf = conf * narrow
            st.sh.data = self._solve_lighting(colour_lin, nrm, conf * narrow)
            shade = shading(nrm, st.sh).clamp_min(0.3)
            base = (colour_lin / shade).clamp(0, 1)
            base = uvspace.pull_push(base, (conf > 0.02).float() * conf.clamp(0, 1))
        texture = self.texture_factory(base.detach())
        texture.to(dev)
        timings["unwrap"] = time.perf_counter() - t1

        # --- stage 3: fine -----------------------------------------------------------------
        t2 = time.perf_counter()
        rec = self.recognizer if cfg.identity else None
        target_feats = None
        if rec is not None:
            from ..perception.align import five_points_from_68, similarity_from_points, warp
            p5 = five_points_from_68(det)  # (1, 5, 2)
            M_align = similarity_from_points(p5, rec.template.to(dev)).detach()
            S = rec.input_size
            with torch.no_grad():
                photo_al = warp(crop.image.permute(0, 3, 1, 2), M_align, S)
                emb_photo, feats_photo = rec.embed(photo_al)
            target_feats = [f.detach() for f in feats_photo]

            def embed_render(img_srgb):
                return rec.embed(warp(img_srgb.permute(0, 3, 1, 2), M_align, S))
        narrow_v = torch.zeros(model.n_fit_vertices, 1, device=dev)
        narrow_v[: model.n_narrow_vertices] = 1.0

        R = cfg.rates
        opt = Adam([
            {"params": [st.rot], "lr": R.rotation * 0.3},
            {"params": [st.trans], "lr": R.translation * 0.3},
            {"params": [st.shape], "lr": R.shape},
            {"params": [st.sh], "lr": R.light},
            *([{"params": [st.expr], "lr": R.expression}] if cfg.fit_expression else []),
            *texture.param_groups(R.texture),
        ])
        fit_mask_tex = (uvr_fit.tri_id >= 0) & (uvr_fit.tri_id < model.fit_tri_count)
        face_tex_mask = fit_mask_tex[None].float()
        n_fine = cfg.fine_steps
        preview_at = set()
        if self._preview is not None and cfg.preview_count > 0 and n_fine > 0:
            preview_at = {int(round(x)) for x in np.linspace(0, n_fine - 1, cfg.preview_count)}
        metrics: dict[str, float] = {}
        terms: dict[str, torch.Tensor] = {}
        texel = isinstance(texture, TexelTexture)
        for step in range(max(n_fine, 1)):
            self.check_cancel()
            if texel:  # one residual per step serves the render and the texture priors
                res = texture.residual()
                alb = texture.albedo_from(res)
            else:
                alb = texture()
            out = self._render(st, alb, crop, narrow_v)
            img = out["composite_srgb"]
            cov = out["mask"] * crop.face_valid
            terms = {}
            terms["pixel"] = W.pixel * L.masked_l1(out["colour_srgb"], crop.image, out["narrow"] * cov)
            terms.update(self._landmark_terms(out["proj"], None, lm))
            if rec is not None:
                emb_r, feats_r = embed_render(img)
                cos = F.cosine_similarity(emb_r, emb_photo, dim=-1).mean()
                if step == 0:
                    metrics["identity_cosine_init"] = float(cos)
                metrics["identity_cosine"] = float(cos)
                if W.identity > 0:
                    terms["identity"] = W.identity * (1 - cos)
                if W.content > 0:
                    terms["content"] = W.content * L.content_loss(feats_r, target_feats)
            terms["shape_prior"] = W.shape_prior * L.shape_prior(st.shape)
            if cfg.fit_expression:
                terms["expr_prior"] = W.expr_prior * L.expression_prior(st.expr, expr_init_t, W.expr_init / max(W.expr_prior, 1e-9))
            # Albedo x light is only known up to a scale: keep the light's mean irradiance over the
            # face at 1 (as the least-squares start has it), so the albedo keeps the skin's colour.
            terms["light_prior"] = W.light_prior * L.light_prior(st.sh) + 0.1 * ((out["irr_mean"] - 1) ** 2).mean()
            if texel:
                res = res.permute(0, 2, 3, 1)
                terms["tex_prior"] = W.tex_prior * (res ** 2 * face_tex_mask[..., None]).mean()
                terms["tex_smooth"] = W.tex_smooth * L.total_variation(res, face_tex_mask)
                terms["tex_symmetry"] = W.tex_symmetry * ((alb - uvspace.mirror_face(alb, model)).abs()
                                                          * face_tex_mask[..., None]).mean()
            else:
                terms["tex_prior"] = W.tex_prior * texture.prior()
            if n_fine == 0:
                break
            loss = sum(terms.values())
            opt.zero_grad()
            loss.backward()
            opt.step()
            model.clamp_expression(st.expr)
            if step % 2 == 0 or step == n_fine - 1:
                self._progress("fine", step + 1, n_fine, self._record("fine", step + 1, terms))
            if step in preview_at:
                self._preview((img[0].detach().cpu().numpy() * 255).astype(np.uint8), step)
        timings["fine"] = time.perf_counter() - t2

        # --- stage 4: final albedo ----------------------------------------------------------
        t3 = time.perf_counter()
        self.check_cancel()
        with torch.no_grad():
            albedo, conf_hi = self._final_albedo(st, texture, photo, K_full, crop)
            out = self._render(st, texture(), crop, narrow_v)
            final = {k: float(v) for k, v in terms.items()}
            final["pixel_l1"] = float(L.masked_l1(out["colour_srgb"], crop.image,
                                                  out["narrow"] * out["mask"] * crop.face_valid))
            proj68 = self._projected68(out["proj"][0], det[0])
            err = np.linalg.norm(proj68 - det[0].cpu().numpy(), axis=1).mean() / iod
            metrics["landmark_error_iod"] = float(err)
            metrics["masked_l1"] = final["pixel_l1"]
            scale = crop.side / crop.res
            proj68_full = proj68 * scale + np.array([crop.x0, crop.y0])
        timings["final_albedo"] = time.perf_counter() - t3
        return FitOutput(st, texture, albedo, K_full, crop, det68, proj68_full, final, metrics, timings,
                         self.history)

    # ------------------------------------------------------------------ pieces
    def _geometry(self, st: FitState, part: str = "fit"):
        verts = self.model(st.shape, st.expr, part=part)
        R = rotation_matrix(st.rot)
        cam = to_camera(verts, R, st.trans)
        tris = self.model.fit_tris if part == "fit" else self.model.tris
        nrm = vertex_normals(cam, tris)
        return verts, cam, nrm

    def _depth(self, cam: torch.Tensor, K: Intrinsics, res: int | tuple[int, int]) -> torch.Tensor:
        H, W = (res, res) if isinstance(res, int) else res
        clip = to_clip(cam, K, NEAR, FAR)
        rast, _ = render.rasterize(self.ctx, clip.contiguous(), self.model.fit_tris, (H, W), grad_db=False)
        d, _ = render.interpolate(-cam[..., 2:3].contiguous(), rast, self.model.fit_tris)
        return d[..., 0] * (rast[..., 3] > 0)

    def _narrow_texels(self, uvr) -> torch.Tensor:
        """(1, T, T) 1 on texels of the narrow face (no ears, neck or scalp) - for the lighting fit."""
        nf = self.model.fit_tri_count
        tid = uvr.tri_id
        ok = (tid >= 0) & (tid < nf)
        tri = self.model.fit_tris[tid.clamp(0, nf - 1)].long()
        narrow = ((tri < self.model.n_narrow_vertices).all(-1) & ok)[None].float()
        # Fade out over ~1.5% of the atlas toward the border, so that the photo's colours blend
        # into the completed texture instead of ending at a hard line.
        k = max(3, (uvr.res // 64) | 1)
        soft = F.avg_pool2d(narrow[:, None], k, stride=1, padding=k // 2, count_include_pad=True)[:, 0]
        return narrow * ((soft - 0.5) * 2).clamp(0, 1)

    def _solve_lighting(self, colour_lin: torch.Tensor, nrm: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Robust least squares for SH lighting on the visible skin (IRLS, 4 rounds).

        Model: colour = a * (B(n) @ c) with a per-channel skin albedo ``a``. The split between
        albedo and light is ambiguous up to a scale per channel (and the constant term is nearly
        collinear with the z term for a face seen from the front), so the light is normalised to a
        mean irradiance of 1 over the skin it was fitted on, and a ridge keeps the directional
        terms small: the albedo then carries the average skin colour and the light only the
        shading's variation across the face.
        """
        sel = weight[0] > 0.1
        if sel.sum() < 50:
            return ambient_coeffs(1, colour_lin.device)
        Bm = sh_basis(nrm[0][sel])            # (N, 9)
        C = colour_lin[0][sel]                # (N, 3)
        w = weight[0][sel]
        M = torch.zeros(9, 3, device=C.device)
        reg = torch.full((9,), 0.05, device=C.device)
        reg[0] = 0.0
        reg[4:] = 0.3                         # second-order terms: smoother light
        for _ in range(4):
            sw = w.sqrt()[:, None]
            A = Bm * sw
            M = torch.linalg.solve(A.T @ A + torch.diag(reg) * w.sum(), A.T @ (C * sw))
            r = (Bm @ M - C).abs().mean(-1)
            scale = r.median().clamp_min(1e-4) * 3
            w = weight[0][sel] * (1 / (1 + (r / scale) ** 2))  # down-weight brows, eyes, hair, lips
        mean_irr = (Bm @ M * w[:, None]).sum(0) / w.sum()   # per channel = the skin albedo
        sh = M / mean_irr.clamp_min(1e-4)
        return sh.clamp(-2.0, 3.0)[None]

    def _render(self, st: FitState, albedo: torch.Tensor, crop: Crop, narrow_v: torch.Tensor) -> dict:
        model = self.model
        verts, cam, nrm = self._geometry(st)
        clip = to_clip(cam, crop.K, NEAR, FAR).contiguous()
        H = W = crop.res
        rast, rast_db = render.rasterize(self.ctx, clip, model.fit_tris, (H, W))
        uv, _ = render.interpolate(model.uvs[None], rast, model.fit_tri_uvs)
        alb = render.texture(albedo.contiguous(), uv.contiguous(), filter_mode="linear")
        n_px, _ = render.interpolate(nrm, rast, model.fit_tris)
        n_px = F.normalize(n_px, dim=-1, eps=1e-9)
        irr = shading(n_px, st.sh)
        lin = alb * irr
        mask = (rast[..., 3:4] > 0).float()
        narrow, _ = render.interpolate(narrow_v[None], rast, model.fit_tris)
        # Down-weight grazing angles: near the silhouette a pixel mixes face and background.
        p_px, _ = render.interpolate(cam, rast, model.fit_tris)
        cos = (n_px * F.normalize(-p_px, dim=-1, eps=1e-9)).sum(-1, keepdim=True)
        narrow = narrow * ((cos.detach() - 0.2) / 0.3).clamp(0, 1)
        colour_srgb = linear_to_srgb(lin)
        comp = colour_srgb * mask + crop.image * (1 - mask)
        comp = render.antialias(comp.contiguous(), rast, clip, model.fit_tris)
        proj = project(cam, crop.K)
        nw = narrow * mask
        irr_mean = (irr * nw).sum((0, 1, 2)) / nw.sum().clamp_min(1.0)  # (3,) per channel
        return {"colour_srgb": colour_srgb, "composite_srgb": comp, "mask": mask[..., 0], "irr_mean": irr_mean,
                "narrow": narrow[..., 0] * mask[..., 0], "proj": proj, "rast": rast}

    def _projected68(self, proj: torch.Tensor, det: torch.Tensor) -> np.ndarray:
        """Model 68 landmarks in crop pixels; the jaw ones are the closest points on the projected
        jawline to the detected jaw points (the sliding contour used by the fit)."""
        p = proj[self.model.landmarks68].clone()
        _, closest = L.closest_on_polyline(det[L.JAW][None], proj[self.jaw_line_idx][None])
        p[L.JAW] = closest[0]
        return p.cpu().numpy()

    def _final_albedo(self, st: FitState, texture: TextureModel, photo: np.ndarray, K_full: Intrinsics,
                      crop: Crop) -> tuple[torch.Tensor, torch.Tensor]:
        model, cfg, dev = self.model, self.cfg, self.device
        T = cfg.texture_res
        uvr = uvspace.uv_raster(self.ctx, model, T)
        fitted = texture()  # (1, t, t, 3) linear
        if fitted.shape[1] != T:
            fitted = F.interpolate(fitted.permute(0, 3, 1, 2), size=(T, T), mode="bilinear",
                                   align_corners=False).permute(0, 2, 3, 1)
        # The photo around the face at (up to) native resolution: full detail for the texture.
        hi_res = int(min(max(crop.side, 64), 2048))
        center = np.array([crop.x0 + crop.side / 2, crop.y0 + crop.side / 2])
        hi = make_crop(photo, center, crop.side, hi_res, K_full, dev)
        verts, cam, nrm_cam = self._geometry(st)
        depth = self._depth(cam, hi.K, min(hi_res, 512))
        pos, nrm, mask = uvspace.texel_geometry(self.ctx, uvr, cam, nrm_cam, model)
        hi.set_outline(self._outline)
        colour, conf = uvspace.unwrap(hi.image, hi.face_valid, depth, hi.K, pos, nrm, mask)
        conf = conf * self._narrow_texels(uvr)
        delit = (srgb_to_linear(colour) / shading(nrm, st.sh).clamp_min(0.3)).clamp(0, 1)
        if isinstance(texture, TexelTexture):
            c = (conf * 3).clamp(0, 1)[..., None]
            albedo = delit * c + fitted * (1 - c)
            out = uvspace.complete_albedo(albedo, conf, uvr, model)
        else:
            face = ((uvr.tri_id >= 0) & (uvr.tri_id < model.fit_tri_count))[None].float()
            out = uvspace.complete_albedo(fitted, face, uvr, model, symmetric=False)
        return out, conf


def render_full(ctx, model: FaceModel, st: FitState, albedo_lin: torch.Tensor, K: Intrinsics,
                tile: int = 1024) -> np.ndarray:
    """Render the fitted face at the photo's full resolution with the photo's camera, in tiles.

    Returns (H, W, 4) uint8 sRGB + alpha (coverage, antialiased).
    """
    H, W = K.height, K.width
    out = np.zeros((H, W, 4), np.uint8)
    with torch.no_grad():
        verts = model(st.shape, st.expr, part="fit")
        cam = to_camera(verts, rotation_matrix(st.rot), st.trans)
        nrm = vertex_normals(cam, model.fit_tris)
        for y0 in range(0, H, tile):
            for x0 in range(0, W, tile):
                h, w = min(tile, H - y0), min(tile, W - x0)
                Kt = K.cropped(x0, y0, w, h)
                clip = to_clip(cam, Kt, NEAR, FAR).contiguous()
                rast, _ = render.rasterize(ctx, clip, model.fit_tris, (h, w), grad_db=False)
                if not (rast[..., 3] > 0).any():
                    continue
                uv, _ = render.interpolate(model.uvs[None], rast, model.fit_tri_uvs)
                alb = render.texture(albedo_lin.contiguous(), uv.contiguous(), filter_mode="linear")
                n_px, _ = render.interpolate(nrm, rast, model.fit_tris)
                n_px = F.normalize(n_px, dim=-1, eps=1e-9)
                srgb = linear_to_srgb(alb * shading(n_px, st.sh))
                mask = (rast[..., 3:4] > 0).float()
                rgba = torch.cat([srgb * mask, mask], -1)
                rgba = render.antialias(rgba.contiguous(), rast, clip, model.fit_tris)[0]
                a = rgba[..., 3:4].clamp(0, 1)
                rgb = torch.where(a > 1e-4, rgba[..., :3] / a.clamp_min(1e-4), torch.zeros_like(rgba[..., :3]))
                tile_px = torch.cat([rgb, a], -1).clamp(0, 1)
                out[y0:y0 + h, x0:x0 + w] = (tile_px.cpu().numpy() * 255 + 0.5).astype(np.uint8)
    return out
