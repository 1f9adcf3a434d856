"""Texture models: ``texture(p_t) -> UV albedo``, one interface, two kinds.

Both return the albedo atlas as a (1, T, T, 3) float tensor in [0, 1] in the renderer's texture
layout: row 0 is v = 0 (the *bottom* of the OBJ atlas; PNG writers flip it).

* ``TexelTexture`` (default, offline): a per-texel albedo, optimised as a Laplacian-style pyramid
  (coarse levels move large areas quickly, fine levels add detail) on top of a fixed base image
  (the de-lit photo unwrap, see ``uvspace.py``). Its priors live in ``losses.texture_priors``.
* ``GeneratorTexture`` (GANFit proper): any torch generator that maps a latent to a UV texture in
  our atlas layout, loaded from a TorchScript checkpoint (format below); p_t is the latent.

Generator checkpoint format (version 1): a TorchScript file made with ``torch.jit.save`` whose
``_extra_files`` hold ``ganfit.json``::

    {"format": "ganfit-texture-generator", "version": 1, "latent_dim": 512,
     "output_range": "-1,1" or "0,1", "uv_layout": "ganfit-atlas-v1",
     "latent_mean": null or [..latent_dim..], "truncation": 1.0}

The module takes a (B, latent_dim) latent and returns (B, 3, H, W) with row 0 = the TOP of the atlas
(image convention, v = 1). ``save_generator`` writes one from any scriptable module.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import MissingModelError

GENERATOR_FORMAT = "ganfit-texture-generator"


class TextureModel(torch.nn.Module):
    name = "base"

    def forward(self) -> torch.Tensor:  # (1, T, T, 3) in [0, 1]
        raise NotImplementedError

    def param_groups(self, lr: float) -> list[dict]:
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": lr}]

    def prior(self) -> torch.Tensor:
        """Regulariser on p_t itself (0 for texel textures; their priors act on the albedo)."""
        return torch.zeros((), device=next(self.buffers(), torch.zeros(())).device)


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

    def param_groups(self, lr: float) -> list[dict]:
        # Adam moves every texel of every level by about ``lr`` per step whatever its gradient,
        # and the levels add up: split the step between them.
        return [{"params": [lv], "lr": lr / len(self.levels)} for lv in self.levels]


class GeneratorTexture(TextureModel):
    """A latent-space texture model around a generator (``p_t`` = the latent)."""

    name = "generator"

    def __init__(self, generator: torch.nn.Module, meta: dict, resolution: int | None = None,
                 seed: int = 0):
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


def save_generator(module: torch.nn.Module, path: str | Path, latent_dim: int,
                   output_range: str = "-1,1", latent_mean=None, truncation: float = 1.0) -> None:
    """Write a generator checkpoint in the documented format (TorchScript + ganfit.json)."""
    scripted = torch.jit.script(module)
    meta = {"format": GENERATOR_FORMAT, "version": 1, "latent_dim": int(latent_dim),
            "output_range": output_range, "uv_layout": "ganfit-atlas-v1",
            "latent_mean": latent_mean, "truncation": truncation}
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
