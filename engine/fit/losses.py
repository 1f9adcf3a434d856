"""Loss terms of the fit. Each is a pure function returning a scalar tensor; ``fitter.py`` weights
them (config.Weights) and reports every weighted term by name in the progress stream."""

from __future__ import annotations

import torch

# iBUG-68 groups.
JAW = list(range(0, 17))
INNER = list(range(17, 68))


def landmark_loss(pred: torch.Tensor, target: torch.Tensor, iod: float,
                  weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared distance of corresponding 2D points, in units of the inter-ocular distance.

    pred, target: (B, N, 2) pixels; weights: (N,) or None.
    """
    d2 = ((pred - target) ** 2).sum(-1) / (iod * iod)
    if weights is None:
        return d2.mean()
    return (d2 * weights).sum(-1).mean() / weights.sum().clamp_min(1e-9)


def closest_on_polyline(points: torch.Tensor, line: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Closest point on a polyline to each point, and its distance, differentiable w.r.t. both.

    points: (B, N, 2); line: (B, M, 2) ordered vertices. Returns (distances (B, N), closest
    (B, N, 2)). The closest segment is chosen without gradient, so a landmark slides along the
    contour (this is how the pose-dependent jaw landmarks are matched: the detected jaw point only
    needs to lie on the projected jawline, not on one fixed vertex).
    """
    a = line[:, :-1]  # (B, M-1, 2)
    ab = line[:, 1:] - a
    ap = points[:, :, None] - a[:, None]  # (B, N, M-1, 2)
    t = ((ap * ab[:, None]).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-9)[:, None]).clamp(0, 1)
    closest = a[:, None] + t[..., None] * ab[:, None]
    d2 = ((points[:, :, None] - closest) ** 2).sum(-1)  # (B, N, M-1)
    idx = d2.detach().argmin(-1, keepdim=True)
    best = closest.gather(2, idx[..., None].expand(-1, -1, 1, 2)).squeeze(2)
    return torch.sqrt(d2.gather(-1, idx).squeeze(-1) + 1e-9), best


def point_to_polyline(points: torch.Tensor, line: torch.Tensor) -> torch.Tensor:
    """Distance of each point to a polyline (see ``closest_on_polyline``). Returns (B, N)."""
    return closest_on_polyline(points, line)[0]


def contour_loss(jaw_pred_line: torch.Tensor, jaw_target: torch.Tensor, iod: float) -> torch.Tensor:
    """Mean squared point-to-jawline distance / iod^2 (see ``point_to_polyline``)."""
    return (point_to_polyline(jaw_target, jaw_pred_line) ** 2).mean() / (iod * iod)


def masked_l1(render: torch.Tensor, photo: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute colour difference over the mask (mask-area normalised, GANFit's pixel loss).

    render, photo: (B, H, W, 3); mask: (B, H, W) in [0, 1].
    """
    diff = (render - photo).abs().sum(-1) / 3
    return (diff * mask).sum() / mask.sum().clamp_min(1.0)


def identity_loss(emb_a: torch.Tensor, emb_b: torch.Tensor) -> torch.Tensor:
    """1 - cosine similarity of embeddings (B, D)."""
    return (1 - torch.nn.functional.cosine_similarity(emb_a, emb_b, dim=-1)).mean()


def content_loss(feats_a: list[torch.Tensor], feats_b: list[torch.Tensor]) -> torch.Tensor:
    """Mean over layers of ||a - b||^2 / (||b||^2 + eps) (0 for identical activations)."""
    terms = [((a - b) ** 2).flatten(1).sum(1) / ((b ** 2).flatten(1).sum(1) + 1e-6)
             for a, b in zip(feats_a, feats_b)]
    return torch.stack([t.mean() for t in terms]).mean() if terms else torch.zeros(())


def shape_prior(p_s: torch.Tensor) -> torch.Tensor:
    return (p_s ** 2).mean()


def expression_prior(p_e: torch.Tensor, p_e_init: torch.Tensor | None = None,
                     init_weight: float = 0.0) -> torch.Tensor:
    loss = p_e.abs().mean()
    if p_e_init is not None and init_weight > 0:
        loss = loss + init_weight * ((p_e - p_e_init) ** 2).mean()
    return loss


def light_prior(sh: torch.Tensor) -> torch.Tensor:
    """Keep higher-order SH small relative to the ambient term. sh: (B, 9, 3)."""
    return (sh[:, 1:] ** 2).mean() + ((sh[:, 0] - sh[:, 0].mean(-1, keepdim=True)) ** 2).mean()


def total_variation(img: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean absolute difference of neighbouring texels. img: (B, T, T, C)."""
    dx = (img[:, :, 1:] - img[:, :, :-1]).abs()
    dy = (img[:, 1:] - img[:, :-1]).abs()
    if mask is None:
        return dx.mean() + dy.mean()
    mx = (mask[:, :, 1:] * mask[:, :, :-1])[..., None]
    my = (mask[:, 1:] * mask[:, :-1])[..., None]
    return (dx * mx).sum() / mx.sum().clamp_min(1) / img.shape[-1] + (dy * my).sum() / my.sum().clamp_min(1) / img.shape[-1]
