"""The parts of the head that a photo does not show: the back of the skull, the ears and the neck.

The identity coefficients ``p_s`` are a standard normal prior (the model's modes are scaled by their
standard deviations), and every mode moves the whole head. A fit sees only the face, so the modes'
combinations that change the face little but the skull, ears or neck a lot are held only by the weak
shape prior and drift with whatever the photo terms do near the silhouette: from photo to photo of
one person the unseen head changes although nothing about it was observed.

``complete_unseen`` replaces the fitted identity by the model's most likely identity *given the
fitted shape of the seen face*: with ``y = B_s p`` the seen vertices (``seen_vertices``) and the
face taken as known to ``sigma`` per coordinate, the Gaussian conditional mean is

    p* = (B_s^T B_s + sigma^2 I)^-1 B_s^T B_s p,

a fixed linear map (K x K, computed once per model). Along directions the face determines
(eigenvalues of B_s^T B_s >> sigma^2) p* keeps the fit; along directions the face barely sees it
falls back to the mean. The seen face itself moves by a fraction of ``sigma``, while the unseen parts
become what the model's statistics say goes with that face.
"""

from __future__ import annotations

import weakref

import torch

# model -> {sigma: the K x K completion map}
_MAPS: "weakref.WeakKeyDictionary[object, dict[float, torch.Tensor]]" = weakref.WeakKeyDictionary()


def seen_vertices(model) -> torch.Tensor:
    """Vertex ids of the face a photo shows: the model's narrow face (brows to chin, cheek to
    cheek), with the landmark and jaw-contour vertices the fit's landmark terms use."""
    ids = torch.cat([torch.arange(model.n_narrow_vertices, device=model.basis.device),
                     model.landmarks68, model.jawline_left_extended, model.jawline_right_extended])
    return torch.unique(ids)


def completion_map(model, sigma_cm: float) -> torch.Tensor:
    """(K, K) ``M`` such that ``p_s @ M.T`` is the conditional mean identity given the seen face."""
    if not sigma_cm > 0:
        raise ValueError(f"UnseenConfig.face_sigma_cm must be positive, got {sigma_cm!r}")
    maps = _MAPS.setdefault(model, {})
    M = maps.get(float(sigma_cm))
    if M is None or M.device != model.basis.device:
        seen = seen_vertices(model)
        rows = (seen[:, None] * 3 + torch.arange(3, device=seen.device)).reshape(-1)
        sigma = sigma_cm / (100.0 * model.metres_per_unit)  # model units
        B = model.basis[rows, : model.n_shape].double()      # (3 n_seen, K)
        G = B.T @ B
        eye = torch.eye(model.n_shape, dtype=G.dtype, device=G.device)
        M = torch.linalg.solve(G + sigma * sigma * eye, G).to(model.basis.dtype)
        maps[float(sigma_cm)] = M
    return M


def complete_unseen(model, shape: torch.Tensor, sigma_cm: float) -> torch.Tensor:
    """(B, K) identity coefficients -> the conditional mean identity given their seen face."""
    return shape @ completion_map(model, sigma_cm).T
