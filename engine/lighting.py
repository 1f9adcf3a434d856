"""Spherical-harmonics lighting (2nd order, 9 coefficients per RGB channel) on a Lambertian albedo.

``shading(n) = sh_basis(n) @ coeffs`` with ``coeffs`` (B, 9, 3) and ``colour = albedo * shading``.
The basis already carries the Lambertian cosine-lobe convolution (Ramamoorthi & Hanrahan 2001), so the
coefficients are radiance-like and ``coeffs[:, 0] = 1`` with the rest 0 is a plain ambient light of
irradiance 1: the render then equals the albedo. Normals are unit vectors in *camera* space.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

# Y_lm normalisation constants times the Lambertian band factors (pi, 2pi/3, pi/4), divided by
# (pi * Y_00) so that the constant term is exactly 1.
_c0 = 1.0
_c1 = (2.0 / 3.0) * math.sqrt(3.0)          # band 1
_c2 = 0.25 * math.sqrt(15.0)                 # xy, yz, xz terms of band 2
_c20 = 0.25 * 0.5 * math.sqrt(5.0)           # 3z^2 - 1 term
_c22 = 0.25 * 0.5 * math.sqrt(15.0)          # x^2 - y^2 term
N_SH = 9


def sh_basis(normals: torch.Tensor) -> torch.Tensor:
    """(..., 3) unit normals -> (..., 9) irradiance basis values."""
    x, y, z = normals.unbind(-1)
    one = torch.ones_like(x)
    return torch.stack([
        _c0 * one,
        _c1 * y, _c1 * z, _c1 * x,
        _c2 * x * y, _c2 * y * z, _c20 * (3 * z * z - 1), _c2 * x * z, _c22 * (x * x - y * y),
    ], -1)


def ambient_coeffs(batch: int = 1, device=None, dtype=torch.float32) -> torch.Tensor:
    """(B, 9, 3) coefficients of a white ambient light of irradiance 1."""
    c = torch.zeros(batch, N_SH, 3, device=device, dtype=dtype)
    c[:, 0] = 1.0
    return c


def shade(albedo: torch.Tensor, normals: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """Lambertian SH shading.

    Args:
        albedo: (B, H, W, 3) linear albedo in [0, 1]; normals: (B, H, W, 3) unit camera-space normals;
        coeffs: (B, 9, 3).
    Returns:
        (B, H, W, 3) shaded colour (not clamped).
    """
    return albedo * shading(normals, coeffs)


def shading(normals: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) normals -> (B, H, W, 3) RGB irradiance."""
    B = coeffs.shape[0]
    basis = sh_basis(normals)  # (B,H,W,9)
    return torch.einsum("b...k,bkc->b...c", basis.reshape(B, -1, N_SH), coeffs).view(*normals.shape[:-1], 3)


@dataclass(frozen=True)
class LightFit:
    """Settings of ``solve_lighting`` (robust SH least squares on the visible skin)."""

    min_weight: float = 0.1      # texels seen worse than this are left out (grazing, half-hidden)
    min_texels: int = 50         # fewer usable texels than this: no estimate, keep ambient light
    ridge: float = 0.05          # band-1 ridge (x total weight): directional terms stay small
    ridge_high: float = 0.3      # band-2 ridge: the light varies smoothly over the face
    rounds: int = 4              # IRLS rounds; the outlier weights settle after 3-4
    robust_scale: float = 3.0    # Cauchy scale = this x the median residual
    clamp: tuple[float, float] = (-2.0, 3.0)  # a sane range for any coefficient of a mean-1 light


def exposure_from_white_point(photo_srgb: np.ndarray, quantile: float = 0.999, full: float = 0.25,
                               none: float = 0.5, white: float = 0.95) -> float:
    """How much of the photo's brightness the *light* should carry: 1 for a normally exposed photo,
    less for an underexposed one, so that a dark photo gives a dim light instead of a dark albedo.

    The cue is the photo's white point, the ``quantile`` of its linear luminance: a normal photo has
    something near white in it (the shared test photos: 0.53-1.0), a photo darkened by a factor k has
    none above k. At or below ``full`` the exposure is the white point / ``white`` (fully undone);
    at or above ``none`` it is 1 (nothing changes); linear in between.
    """
    x = photo_srgb.astype(np.float32) / 255.0
    lin = np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)
    p = float(np.quantile(lin @ np.array([0.2126, 0.7152, 0.0722], np.float32), quantile))
    if p >= none:
        return 1.0
    low = max(full, 1e-3) / white          # the exposure at p == full
    if p <= full:
        return max(p, 1e-3) / white
    return low + (1.0 - low) * (p - full) / (none - full)


def solve_lighting(colour_lin: torch.Tensor, nrm: torch.Tensor, weight: torch.Tensor,
                   fit: LightFit = LightFit()) -> torch.Tensor:
    """Robust least squares for SH lighting on the visible skin (IRLS with Cauchy weights).

    colour_lin: (1, T, T, 3) linear colours; nrm: (1, T, T, 3) unit camera-space normals; weight:
    (1, T, T) >= 0 confidence of each sample. Returns (1, 9, 3) coefficients.

    Model: colour = a * (B(n) @ c) with a per-channel skin albedo ``a``. The split between
    albedo and light is ambiguous up to a scale per channel (and the constant term is nearly
    collinear with the z term for a face seen from the front), so the light is normalised to a
    mean irradiance of 1 over the skin it was fitted on, and a ridge keeps the directional
    terms small: the albedo then carries the average skin colour and the light only the
    shading's variation across the face.
    """
    sel = weight[0] > fit.min_weight
    if sel.sum() < fit.min_texels:
        return ambient_coeffs(1, colour_lin.device)
    Bm = sh_basis(nrm[0][sel])            # (N, 9)
    C = colour_lin[0][sel]                # (N, 3)
    w = weight[0][sel]
    M = torch.zeros(N_SH, 3, device=C.device)
    reg = torch.full((N_SH,), fit.ridge, device=C.device)
    reg[0] = 0.0                          # the ambient term is free
    reg[4:] = fit.ridge_high
    for _ in range(fit.rounds):
        sw = w.sqrt()[:, None]
        A = Bm * sw
        M = torch.linalg.solve(A.T @ A + torch.diag(reg) * w.sum(), A.T @ (C * sw))
        r = (Bm @ M - C).abs().mean(-1)
        scale = r.median().clamp_min(1e-4) * fit.robust_scale
        w = weight[0][sel] * (1 / (1 + (r / scale) ** 2))  # down-weight brows, eyes, hair, lips
    mean_irr = (Bm @ M * w[:, None]).sum(0) / w.sum()   # per channel = the skin albedo
    sh = M / mean_irr.clamp_min(1e-4)
    return sh.clamp(*fit.clamp)[None]
