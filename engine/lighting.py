"""Spherical-harmonics lighting (2nd order, 9 coefficients per RGB channel) on a Lambertian albedo.

``shading(n) = sh_basis(n) @ coeffs`` with ``coeffs`` (B, 9, 3) and ``colour = albedo * shading``.
The basis already carries the Lambertian cosine-lobe convolution (Ramamoorthi & Hanrahan 2001), so the
coefficients are radiance-like and ``coeffs[:, 0] = 1`` with the rest 0 is a plain ambient light of
irradiance 1: the render then equals the albedo. Normals are unit vectors in *camera* space.
"""

from __future__ import annotations

import math

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
