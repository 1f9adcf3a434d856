"""Completing the head the photo does not show from the seen face (engine/fit/unseen.py)."""

from __future__ import annotations

import pytest
import torch

from engine.fit.config import UnseenConfig
from engine.fit.unseen import complete_unseen, completion_map, seen_vertices
from engine.models.facemodel import load_face_model


@pytest.fixture(scope="module")
def model():
    return load_face_model()


def _mm(model, a: torch.Tensor, b: torch.Tensor, ids: torch.Tensor) -> float:
    va, vb = model(a, None, part="all"), model(b, None, part="all")
    return float((va - vb)[:, ids].norm(dim=-1).mean()) * model.metres_per_unit * 1000


def test_unseen_parts_follow_the_seen_face(model):
    torch.manual_seed(0)
    seen = seen_vertices(model)
    assert int(seen.max()) < model.n_fit_vertices and len(seen) >= model.n_narrow_vertices
    unseen = torch.arange(model.n_fit_vertices, model.n_fit_vertices + 1839)  # head_neck
    assert bool((model.vertex_region[unseen] == model.region_names.index("head_neck")).all())
    # The identity direction with the most skull and neck for the least seen face (a generalised
    # eigenvector): 3 standard deviations of it move the skull by millimetres, the face by ~0.1 mm.
    def gram(ids):
        rows = (ids[:, None] * 3 + torch.arange(3)).reshape(-1)
        B = model.basis[rows, : model.n_shape].double()
        return B.T @ B
    Li = torch.linalg.inv(torch.linalg.cholesky(gram(seen)))
    _, u = torch.linalg.eigh(Li @ gram(unseen) @ Li.T)
    hidden = (Li.T @ u[:, -1]).float()
    hidden = (hidden / hidden.norm() * 3.0)[None]
    zero = torch.zeros_like(hidden)
    assert _mm(model, hidden, zero, unseen) > 20 * _mm(model, hidden, zero, seen)
    sigma = 1.0
    p = torch.randn(4, model.n_shape) * 0.7
    q, q0 = complete_unseen(model, p + hidden, sigma), complete_unseen(model, p, sigma)
    # The same seen face with two different skulls: completed, the skulls come much closer ...
    assert _mm(model, q, q0, unseen) < 0.4 * _mm(model, p + hidden, p, unseen)
    # ... while the seen face moves far less than the skull would have (a fraction of a mm) ...
    assert _mm(model, q, p + hidden, seen) < 0.5 < _mm(model, p + hidden, p, unseen)
    # ... and a smaller sigma keeps more of the fit, a larger one less.
    assert _mm(model, complete_unseen(model, p, sigma / 4), p, seen) < _mm(model, q0, p, seen) \
        < _mm(model, complete_unseen(model, p, sigma * 4), p, seen)
    default = UnseenConfig().face_sigma_cm
    assert _mm(model, complete_unseen(model, p, default), p, seen) < 0.5
    M = completion_map(model, sigma)
    assert M is completion_map(model, sigma) and torch.allclose(M, M.T, atol=1e-4)
    with pytest.raises(ValueError, match="positive"):
        completion_map(model, 0.0)
