"""Texture models: ``texture(p_t) -> UV albedo``, one interface, two kinds.

Both return the albedo atlas as a (1, T, T, 3) float tensor in [0, 1] in the renderer's texture
layout: row 0 is v = 0 (the *bottom* of the OBJ atlas; PNG writers flip it).

* ``TexelTexture`` (default, offline): a per-texel albedo, optimised as a Laplacian-style pyramid
  (coarse levels move large areas quickly, fine levels add detail) on top of a fixed base image
  (the de-lit photo unwrap, see ``uvspace.py``).
* ``GeneratorTexture`` (GANFit proper): any torch generator that maps a latent to a UV texture in
  our atlas layout, loaded from a TorchScript checkpoint (format below); p_t is the latent.

Generator checkpoint format (version 1): a TorchScript file made with ``torch.jit.save`` whose
``_extra_files`` hold ``ganfit.json``::

    {"format": "ganfit-texture-generator", "version": 1, "latent_dim": 512,
     "output_range": "-1,1" or "0,1", "uv_layout": "ganfit-atlas-v1",
     "latent_mean": null or [..latent_dim..], "truncation": 1.0}

The module takes a (B, latent_dim) latent and returns (B, 3, H, W) with row 0 = the TOP of the atlas
(image convention, v = 1). ``save_generator`` writes one from any scriptable module.

The interface the fit uses (the fine stage never asks which kind it has):

* ``sample() -> TextureSample``: the albedo for this step, with whatever the priors need;
* ``priors(sample, face_mask, model) -> dict[str, Tensor]``: its own unweighted regularisers,
  named after ``config.Weights`` fields (``losses.weigh`` weights them);
* ``init_from(base, weight)``: its start from the de-lit photo unwrap (the unwrap stage);
* ``param_groups(lr)``: its optimiser groups, ``lr`` = the ``Rates`` field named by ``rate``;
* ``final_albedo(fitted, delit, conf, uvr, model, conf_gain, trust=, cfg=)``: the full-resolution
  atlas from its fitted albedo and the de-lit photo unwrap (the albedo stage).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import MissingModelError
from . import uvspace
from .losses import total_variation

GENERATOR_FORMAT = "ganfit-texture-generator"
# The shipped learned texture model (``--texture-model default``, the fit's default).
DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "data" / "texture" / "default.pt"


@dataclass
class TextureSample:
    """One evaluation of a texture model: the albedo and what its priors reuse."""

    albedo: torch.Tensor                    # (1, T, T, 3) linear, renderer layout
    residual: torch.Tensor | None = None    # texel textures: (1, 3, T, T) offset from the base


class TextureModel(torch.nn.Module):
    name = "base"
    rate = "texture"          # the ``config.Rates`` field of its learning rate
    latent_first = False      # fitted alone first (the fine stage's GANFit schedule)
    uses_trust = False        # its final albedo takes the photo's per-texel trust

    def forward(self) -> torch.Tensor:  # (1, T, T, 3) in [0, 1]
        raise NotImplementedError

    def sample(self) -> TextureSample:
        return TextureSample(self())

    def param_groups(self, lr: float) -> list[dict]:
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": lr}]

    def init_from(self, base: torch.Tensor, weight: torch.Tensor) -> None:
        """Start from the de-lit photo unwrap ``base`` (1, T, T, 3) where ``weight`` (1, T, T) trusts
        it. Default: nothing (a texel texture is built on it; a generator starts at its mean)."""

    def prior(self) -> torch.Tensor:
        """Regulariser on p_t itself (0 unless a kind defines one)."""
        return torch.zeros((), device=next(self.buffers(), torch.zeros(())).device)

    def priors(self, sample: TextureSample, face_mask: torch.Tensor, model) -> dict[str, torch.Tensor]:
        """Unweighted regularisers by ``config.Weights`` name. ``face_mask``: (1, T, T) 1 on the
        fitted face's texels."""
        return {"tex_prior": self.prior()}

    def final_albedo(self, fitted: torch.Tensor, delit: torch.Tensor, conf: torch.Tensor,
                     uvr: uvspace.UVRaster, model, conf_gain: float, trust: torch.Tensor | None = None,
                     cfg=None) -> torch.Tensor:
        """The completed full-resolution atlas. Default: the model's own albedo, completed without
        the photo (a learned model's texture is trusted as it is)."""
        face = ((uvr.tri_id >= 0) & (uvr.tri_id < model.fit_tri_count))[None].float()
        return uvspace.complete_albedo(fitted, face, uvr, model, symmetric=False)


class TexelTexture(TextureModel):
    """Per-texel albedo = clamp(base + sum_k upsample(level_k), 0, 1)."""

    name = "texel"

    def __init__(self, base: torch.Tensor, levels: int = 4):
        """``base``: (1, T, T, 3) starting albedo in [0, 1]."""
        super().__init__()
        T = base.shape[1]
        self.register_buffer("base", base.permute(0, 3, 1, 2).contiguous())
        self.levels = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.zeros(1, 3, max(8, T >> k), max(8, T >> k), device=base.device))
             for k in reversed(range(levels))])

    @property
    def resolution(self) -> int:
        return self.base.shape[-1]

    def residual(self) -> torch.Tensor:
        T = self.resolution
        r = torch.zeros_like(self.base)
        for lv in self.levels:
            r = r + (lv if lv.shape[-1] == T else F.interpolate(lv, size=(T, T), mode="bilinear",
                                                                 align_corners=False))
        return r

    def albedo_from(self, residual: torch.Tensor) -> torch.Tensor:
        """The albedo for an already computed ``residual()`` (the fit needs both each step)."""
        return (self.base + residual).clamp(0, 1).permute(0, 2, 3, 1)

    def forward(self) -> torch.Tensor:
        return self.albedo_from(self.residual())

    def sample(self) -> TextureSample:
        res = self.residual()  # one residual per step serves the render and the priors
        return TextureSample(self.albedo_from(res), res)

    def param_groups(self, lr: float) -> list[dict]:
        # Adam moves every texel of every level by about ``lr`` per step whatever its gradient,
        # and the levels add up: split the step between them.
        return [{"params": [lv], "lr": lr / len(self.levels)} for lv in self.levels]

    def priors(self, sample: TextureSample, face_mask: torch.Tensor, model) -> dict[str, torch.Tensor]:
        """``tex_prior`` (small offset from the de-lit photo), ``tex_smooth`` (total variation of
        the offset) and ``tex_symmetry`` (left/right symmetry of the face albedo)."""
        res = sample.residual.permute(0, 2, 3, 1)
        m = face_mask[..., None]
        alb = sample.albedo
        return {"tex_prior": (res ** 2 * m).mean(),
                "tex_smooth": total_variation(res, face_mask),
                "tex_symmetry": ((alb - uvspace.mirror_face(alb, model)).abs() * m).mean()}

    def final_albedo(self, fitted: torch.Tensor, delit: torch.Tensor, conf: torch.Tensor,
                     uvr: uvspace.UVRaster, model, conf_gain: float, trust: torch.Tensor | None = None,
                     cfg=None) -> torch.Tensor:
        """The de-lit photo where it is seen well (fully from confidence 1/conf_gain on), the
        fitted albedo elsewhere, completed by symmetry, neighbours and skin tone."""
        c = (conf * conf_gain).clamp(0, 1)[..., None]
        return uvspace.complete_albedo(delit * c + fitted * (1 - c), conf, uvr, model)


class GeneratorTexture(TextureModel):
    """A latent-space texture model around a generator (``p_t`` = the latent).

    The fit: the latent starts at the MAP estimate from the de-lit unwrap when the generator is
    linear (a PPCA checkpoint: closed form, ``init_from``), else at the mean; the fine stage
    optimises it (alone first, then with the geometry); the albedo stage adds the detail layer
    (``final_albedo``) and continues the face over the whole head (``uvspace.complete_head``)."""

    name = "generator"
    rate = "latent"
    latent_first = True
    uses_trust = True

    def __init__(self, generator: torch.nn.Module, meta: dict, resolution: int | None = None):
        super().__init__()
        self.generator = generator.eval()
        for p in self.generator.parameters():
            p.requires_grad_(False)
        self.meta = meta
        dim = int(meta["latent_dim"])
        mean = meta.get("latent_mean")
        self.register_buffer("latent_mean", torch.tensor(mean, dtype=torch.float32)[None] if mean
                             else torch.zeros(1, dim))
        self.truncation = float(meta.get("truncation", 1.0))
        self.out_range = str(meta.get("output_range", "-1,1"))
        self.resolution_out = resolution
        self.latent = torch.nn.Parameter(torch.zeros(1, dim))  # start at the mean face
        self.linear = _linear_model(generator, dim)

    def forward(self) -> torch.Tensor:
        z = self.latent_mean + self.truncation * self.latent
        img = self.generator(z)  # (1, 3, H, W), row 0 = top of the atlas
        if self.out_range == "-1,1":
            img = (img + 1) * 0.5
        if self.resolution_out and img.shape[-1] != self.resolution_out:
            img = F.interpolate(img, size=(self.resolution_out,) * 2, mode="bilinear", align_corners=False)
        return img.flip(-2).clamp(0, 1).permute(0, 2, 3, 1)  # row 0 = v = 0

    def prior(self) -> torch.Tensor:
        return (self.latent ** 2).mean()

    def priors(self, sample: TextureSample, face_mask: torch.Tensor, model) -> dict[str, torch.Tensor]:
        """``latent_prior``: the latent's unit Gaussian prior (mean z^2)."""
        return {"latent_prior": self.prior()}

    @torch.no_grad()
    def init_from(self, base: torch.Tensor, weight: torch.Tensor) -> None:
        """The MAP latent of a linear (PPCA) model given the trusted texels of ``base``: the
        posterior mean under the unit Gaussian prior with a noise of ``LATENT_NOISE`` per texel
        (the de-lit photo's error, far above the model's training noise)."""
        if self.linear is None or float(weight.sum()) < 1:
            return
        from ..texture import ppca as P
        m = self.linear
        img = base.permute(0, 3, 1, 2).flip(-2)  # row 0 = top, as the model
        w = weight[:, None].flip(-2)
        if img.shape[-1] != m.res:
            img = F.interpolate(img, size=(m.res, m.res), mode="area")
            w = F.interpolate(w, size=(m.res, m.res), mode="area")
        x, wf = P._flat(img.float().cpu(), w[:, 0].float().cpu())
        Wt = P._tex(m.basis).permute(1, 2, 0).contiguous()
        z, _ = P.posterior(Wt, P._tex(m.mean), max(m.sigma2, LATENT_NOISE ** 2), x, wf)
        z = (z.to(self.latent.device) - self.latent_mean) / max(self.truncation, 1e-6)
        self.latent.copy_(z)

    def final_albedo(self, fitted: torch.Tensor, delit: torch.Tensor, conf: torch.Tensor,
                     uvr: uvspace.UVRaster, model, conf_gain: float, trust: torch.Tensor | None = None,
                     cfg=None) -> torch.Tensor:
        """The model's albedo plus the detail layer (``detail_layer``) on the face, continued over
        the whole head (``uvspace.complete_head``)."""
        face = fitted
        seen = (conf * conf_gain).clamp(0, 1) * (1 if trust is None else trust)
        if cfg is not None and cfg.detail:
            d, a = detail_layer(fitted, delit, conf, trust, conf_gain, cfg)
            face = fitted + d
            seen = a
        face = uvspace.lift_unseen_dark(face.clamp(0, 1), seen, uvr, model)
        skin = seen if cfg is None or cfg.continue_skin else None
        return uvspace.complete_head(face, uvr, model, seen=skin)


# A de-lit photo texel's error (linear albedo units) when the latent is estimated from it: shading
# and de-lighting errors, far above a PPCA model's training noise.
LATENT_NOISE = 0.05


def detail_layer(fitted: torch.Tensor, delit: torch.Tensor, conf: torch.Tensor, trust: torch.Tensor | None,
                 conf_gain: float, cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """The detail layer d on the model's albedo: ``fitted + d`` is the final face albedo.

    Per texel, d minimises  w (fitted + d - delit)^2 + prior d^2 , i.e. d = a x residual with
    a = w / (w + prior), w = seen x frontal (``conf``) x skin and regions (``trust``) x the
    Geman-McClure weight of the residual itself (what the model cannot explain is an occluder).
    Split in two, so that no seam is left where the photo's coverage ends: the residual's low
    frequencies (tone: the light/albedo balance the model could not reach) are filled in from the
    trusted texels and applied over the whole face, smoothly; its high frequencies (wrinkles,
    moles, brows) only by ``a``. Returns (d (1, T, T, 3), a (1, T, T))."""
    w = (conf * conf_gain).clamp(0, 1)
    if trust is not None:
        w = w * trust
    from .trust import geman_mcclure
    res = delit - fitted
    T = res.shape[1]
    k = max(3, (T // 128) | 1)
    smooth = lambda x: F.avg_pool2d(x[:, None], k, stride=1, padding=k // 2, count_include_pad=False)[:, 0]  # noqa: E731

    def low_pass(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        # Weighted means over cells of 1/LOW_FREQ_DIV of the atlas (only well-trusted texels set
        # the tone), holes filled from the nearest cells (pull-push), back to full size smoothly.
        lo_res = max(4, T // LOW_FREQ_DIV)
        wt = (weight * (weight > 0.5))[:, None]
        num = F.adaptive_avg_pool2d(x.permute(0, 3, 1, 2) * wt, lo_res)
        den = F.adaptive_avg_pool2d(wt, lo_res)
        cells = (num / den.clamp_min(1e-6)).permute(0, 2, 3, 1)
        filled = uvspace.pull_push(cells, (den[:, 0] * 4).clamp(0, 1))
        return F.interpolate(filled.permute(0, 3, 1, 2), size=(T, T), mode="bicubic",
                             align_corners=False).permute(0, 2, 3, 1)

    low = low_pass(res, smooth(w))
    # Robust weights of the high frequencies: a frame's edge or a strand of hair is a large local
    # residual even where the model's tone is far from the photo's.
    w = w * geman_mcclure((res - low).abs().mean(-1), w, cfg.detail_robust_scale)
    # Eroded, then smoothed: soft edges that never reach back into a rejected texel's neighbourhood.
    a = smooth(-F.max_pool2d(-w[:, None], k, stride=1, padding=k // 2)[:, 0])
    a = a / (a + cfg.detail_prior)
    low = low_pass(res, a)
    return low + a[..., None] * (res - low), a


# The detail layer's tone part varies over 1/LOW_FREQ_DIV of the atlas (about 1/3 of the face box).
LOW_FREQ_DIV = 16


def _linear_model(generator: torch.nn.Module, dim: int):
    """The PPCA model inside a PPCA checkpoint (for the closed-form start), else None."""
    if not (hasattr(generator, "basis") and hasattr(generator, "mean") and hasattr(generator, "sigma2")):
        return None
    try:
        from ..texture.ppca import model_from_generator
        m = model_from_generator(generator)
    except Exception:  # noqa: BLE001 - not a PPCA module after all: fit from the mean
        return None
    return m if m.k == dim else None


def save_generator(module: torch.nn.Module, path: str | Path, latent_dim: int,
                   output_range: str = "-1,1", latent_mean=None, truncation: float = 1.0,
                   extra: dict | None = None) -> None:
    """Write a generator checkpoint in the documented format (TorchScript + ganfit.json).
    ``extra``: more ganfit.json entries (a trainer's metadata); the format's own keys win."""
    scripted = torch.jit.script(module)
    meta = {"format": GENERATOR_FORMAT, "version": 1, "latent_dim": int(latent_dim),
            "output_range": output_range, "uv_layout": "ganfit-atlas-v1",
            "latent_mean": latent_mean, "truncation": truncation}
    meta.update({k: v for k, v in (extra or {}).items() if k not in meta})
    torch.jit.save(scripted, str(path), _extra_files={"ganfit.json": json.dumps(meta)})


def load_generator(path: str | Path, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict]:
    p = Path(path)
    if not p.is_file():
        raise MissingModelError(f"Texture generator checkpoint not found: {p}. Give the path of a "
                                "TorchScript file in the ganfit-texture-generator format, or use "
                                "--texture-model texel.")
    extra = {"ganfit.json": ""}
    try:
        module = torch.jit.load(str(p), map_location=device, _extra_files=extra)
        meta = json.loads(extra["ganfit.json"] or "{}")
    except Exception as e:  # noqa: BLE001 - any load failure is a bad model file
        raise MissingModelError(f"Could not load the texture generator {p}: {e}") from e
    if meta.get("format") != GENERATOR_FORMAT or "latent_dim" not in meta:
        raise MissingModelError(f"{p} is not a ganfit texture generator checkpoint (no ganfit.json "
                                "with format 'ganfit-texture-generator').")
    return module, meta
