"""Differentiable 5-point alignment: similarity fit, warp conventions, gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.errors import BadInputError
from engine.perception.align import (align, apply_affine, five_points_from_68, invert_affine,
                                     similarity_from_points, warp)


def _similarity(scale: float, angle: float, tx: float, ty: float) -> torch.Tensor:
    c, s = scale * math.cos(angle), scale * math.sin(angle)
    return torch.tensor([[c, -s, tx], [s, c, ty]], dtype=torch.float64)


def test_similarity_recovers_known_transform() -> None:
    g = torch.Generator().manual_seed(0)
    src = torch.rand(3, 5, 2, generator=g, dtype=torch.float64) * 200
    Ms = torch.stack([_similarity(0.7, 0.3, 10, -5), _similarity(1.9, -1.2, -40, 3),
                      _similarity(0.25, 3.0, 0, 0)])
    dst = apply_affine(Ms, src)
    for b in range(3):
        M = similarity_from_points(src[b:b + 1], dst[b])
        assert torch.allclose(M[0], Ms[b], atol=1e-9)
    # Batched src against one dst.
    M = similarity_from_points(src, dst[0])
    assert M.shape == (3, 2, 3)
    assert torch.allclose(apply_affine(M[:1], src[:1]), dst[:1], atol=1e-9)


def test_similarity_is_least_squares() -> None:
    g = torch.Generator().manual_seed(1)
    src = torch.rand(1, 5, 2, generator=g, dtype=torch.float64) * 100
    dst = apply_affine(_similarity(1.3, 0.4, 5, 7)[None], src)[0] + torch.randn(5, 2, generator=g, dtype=torch.float64)
    M = similarity_from_points(src, dst)

    def cost(M: torch.Tensor) -> float:
        return float(((apply_affine(M, src)[0] - dst) ** 2).sum())

    best = cost(M)
    # Any small perturbation within the similarity family costs more.
    for da, db, dx, dy in [(1e-3, 0, 0, 0), (-1e-3, 0, 0, 0), (0, 1e-3, 0, 0), (0, -1e-3, 0, 0),
                           (0, 0, 0.05, 0), (0, 0, 0, -0.05)]:
        P = M.clone()
        P[0, 0, 0] += da; P[0, 1, 1] += da; P[0, 1, 0] += db; P[0, 0, 1] -= db
        P[0, 0, 2] += dx; P[0, 1, 2] += dy
        assert cost(P) > best


def test_identity_warp_is_exact() -> None:
    img = torch.rand(2, 3, 20, 20)
    out = warp(img, torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]), 20)
    assert torch.allclose(out, img, atol=1e-5)
    # An integer shift moves pixels exactly (pixel centres at +0.5 on both sides).
    out = warp(img, torch.tensor([[1.0, 0, -3], [0, 1.0, -2]]), 12)
    assert torch.allclose(out, img[:, :, 2:14, 3:15], atol=1e-5)


@pytest.mark.parametrize("antialias", [False, True])
def test_half_scale_is_2x2_average(antialias: bool) -> None:
    img = torch.rand(1, 3, 16, 16)
    out = warp(img, torch.tensor([[0.5, 0, 0], [0, 0.5, 0]]), 8, antialias=antialias)
    assert torch.allclose(out, F.avg_pool2d(img, 2), atol=1e-5)


def _blobs(points: torch.Tensor, size: int, sigma: float = 2.0) -> torch.Tensor:
    """(N,2) pixel points -> (N,1,size,size) Gaussian blobs centred there (our convention)."""
    c = torch.arange(size, dtype=torch.float64) + 0.5
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    d2 = (xx[None] - points[:, 0, None, None]) ** 2 + (yy[None] - points[:, 1, None, None]) ** 2
    return torch.exp(-d2 / (2 * sigma ** 2))[:, None]


def _centroids(maps: torch.Tensor) -> torch.Tensor:
    n, _, h, w = maps.shape
    c = torch.arange(h, dtype=maps.dtype) + 0.5
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    m = maps[:, 0]
    s = m.sum((1, 2))
    return torch.stack([(m * xx).sum((1, 2)) / s, (m * yy).sum((1, 2)) / s], -1)


def test_warp_moves_points_where_M_says() -> None:
    pts = torch.tensor([[60.0, 70.0], [140.0, 65.0], [100.0, 110.0], [70.0, 150.0], [130.0, 152.0]],
                       dtype=torch.float64)
    img = _blobs(pts, 200, sigma=4.0)
    M = _similarity(0.6, 0.35, 8.0, -20.0)[None].expand(5, -1, -1)
    out = warp(img, M, 128, antialias=False)
    expected = apply_affine(M[:1], pts[None])[0]
    assert torch.allclose(_centroids(out), expected, atol=0.05)
    # Round trip: warp back with the inverse, the blobs return to where they were.
    back = warp(out, invert_affine(M), 200, antialias=False)
    assert torch.allclose(_centroids(back), pts, atol=0.1)


def test_align_puts_points_on_template() -> None:
    template = torch.tensor([[38.8, 52.2], [74.0, 52.0], [56.5, 72.2], [42.0, 92.9], [71.2, 92.7]],
                            dtype=torch.float64)
    Minv = invert_affine(_similarity(0.3, -0.2, 10.0, 15.0)[None])  # template -> photo
    pts = apply_affine(Minv, template[None])
    photo = _blobs(pts[0], 400, sigma=8.0)
    chips, M = align(photo, pts.expand(5, -1, -1), template, 112, antialias=True)
    assert torch.allclose(apply_affine(M[:1], pts), template[None], atol=1e-6)
    assert torch.allclose(_centroids(chips), template, atol=0.25)


def test_gradients_flow_to_image_and_points() -> None:
    img = torch.rand(1, 1, 12, 12, dtype=torch.float64, requires_grad=True)
    pts = torch.tensor([[[3.0, 4.0], [8.5, 4.2], [6.0, 6.5], [4.0, 9.0], [8.0, 9.0]]],
                       dtype=torch.float64, requires_grad=True)
    template = torch.tensor([[2.5, 3.0], [5.5, 3.0], [4.0, 4.5], [3.0, 6.0], [5.0, 6.0]],
                            dtype=torch.float64)

    def f(img: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
        return align(img, pts, template, 8, antialias=False)[0]

    assert torch.autograd.gradcheck(f, (img, pts), atol=1e-5)


def test_five_points_from_68() -> None:
    l68 = np.random.default_rng(0).random((68, 2)) * 100
    p = five_points_from_68(l68)
    assert p.shape == (5, 2)
    np.testing.assert_allclose(p[0], l68[36:42].mean(0))
    np.testing.assert_allclose(p[1], l68[42:48].mean(0))
    np.testing.assert_allclose(p[2:], l68[[30, 48, 54]])
    t = five_points_from_68(torch.from_numpy(l68)[None].repeat(2, 1, 1))
    assert t.shape == (2, 5, 2)
    np.testing.assert_allclose(t[1].numpy(), p)
    with pytest.raises(BadInputError):
        five_points_from_68(np.zeros((5, 2)))
