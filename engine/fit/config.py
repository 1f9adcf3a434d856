"""All weights, learning rates and schedules of the fit, in one place.

Stages (``fitter.py``):
  1. coarse: pose from landmarks (weak-perspective PnP), then landmarks + shape/expression priors.
  2. unwrap: lighting by least squares on the visible skin, then the photo unwrapped into the atlas
     and de-lit (the texture's starting point).
  3. fine: every term - identity, content, pixel (also fits lighting), landmark and the priors - on
     shape, expression, pose, lighting and texture together.
Loss weights multiply terms that are each normalised to be O(1) at the start of a typical fit.
A term with weight 0 is not computed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Weights:
    landmark: float = 1.0          # mean squared landmark distance / inter-ocular distance^2
    contour: float = 0.3           # jaw contour landmarks, point-to-curve
    identity: float = 0.5          # 1 - cosine of recogniser embeddings
    content: float = 0.1           # normalised distance of intermediate activations
    pixel: float = 1.0             # masked L1 over the face region, colours in [0,1]
    shape_prior: float = 2e-3      # ||p_s||^2 / n  (coefficients ~ N(0,1))
    expr_prior: float = 2e-3       # ||p_e||_1 / n  (sparse expressions)
    expr_init: float = 1e-2        # stay near the detector's blendshape scores
    tex_prior: float = 0.05        # albedo towards its low-pass / skin tone where the photo is weak
    tex_symmetry: float = 0.05     # left/right symmetry of the face albedo
    tex_smooth: float = 0.02       # total variation of the albedo residual
    light_prior: float = 1e-3      # higher-order SH small relative to ambient
    pose_prior: float = 0.0


@dataclass(frozen=True)
class Rates:
    rotation: float = 0.01
    translation: float = 0.3       # cm
    shape: float = 0.05
    expression: float = 0.02
    light: float = 0.01
    texture: float = 0.004       # linear albedo units per step, split over the pyramid levels


@dataclass(frozen=True)
class FitConfig:
    preset: str = "balanced"
    render_res: int = 224          # fine-stage square crop, pixels
    texture_res: int = 1024        # albedo atlas
    coarse_steps: int = 150
    fine_steps: int = 80
    crop_scale: float = 1.9        # crop side / landmark box side
    identity: bool = True          # identity + content losses (needs the recogniser)
    fit_expression: bool = True
    weights: Weights = field(default_factory=Weights)
    rates: Rates = field(default_factory=Rates)
    coarse_rates: Rates = field(default_factory=lambda: Rates(rotation=0.02, translation=0.5,
                                                                  shape=0.1, expression=0.04))
    preview_count: int = 4         # previews per run with --json-progress
    seed: int = 0

    def capped(self, max_steps: int | None) -> "FitConfig":
        if max_steps is None:
            return self
        return replace(self, coarse_steps=min(self.coarse_steps, max_steps),
                       fine_steps=min(self.fine_steps, max_steps))


PRESETS: dict[str, FitConfig] = {
    "fast": FitConfig(preset="fast", render_res=160, texture_res=512, coarse_steps=80, fine_steps=20,
                      identity=False),
    "balanced": FitConfig(preset="balanced"),
    "best": FitConfig(preset="best", render_res=320, texture_res=1024, coarse_steps=200,
                      fine_steps=200),
}


def get_config(preset: str, **overrides) -> FitConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    cfg = PRESETS[preset]
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return replace(cfg, **overrides) if overrides else cfg
