"""Loss terms of the fit.

The building blocks are pure functions returning a scalar tensor. The stages call the grouped
functions below (``landmark_terms``, ``prior_terms``, ``photo_terms``, ``light_terms``; the
texture model adds its own with ``TextureModel.priors``), each returning *unweighted* named terms
(``dict[str, Tensor]``); ``weigh`` is the one place where the weights (``config.Weights``, one
field per term name) are applied, and it drops a term whose weight is 0. The weighted dict is what
the progress stream reports (``progress.losses``) and ``total`` sums it.

The recogniser's identity and content terms are defined once, in ``perception/recognizer.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..perception.recognizer import content_loss, identity_loss

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


def contour_loss(jaw_pred_line: torch.Tensor, jaw_target: torch.Tensor, iod: float,
                 weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared point-to-jawline distance / iod^2 (see ``point_to_polyline``); ``weights``
    (N,) per jaw point (None: all 1)."""
    d2 = point_to_polyline(jaw_target, jaw_pred_line) ** 2
    if weights is None:
        return d2.mean() / (iod * iod)
    return (d2 * weights).sum(-1).mean() / weights.sum().clamp_min(1e-9) / (iod * iod)


def masked_l1(render: torch.Tensor, photo: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute colour difference over the mask (mask-area normalised, GANFit's pixel loss).

    render, photo: (B, H, W, 3); mask: (B, H, W) in [0, 1].
    """
    diff = (render - photo).abs().sum(-1) / 3
    return (diff * mask).sum() / mask.sum().clamp_min(1.0)


def shape_prior(p_s: torch.Tensor) -> torch.Tensor:
    return (p_s ** 2).mean()


def expression_prior(p_e: torch.Tensor) -> torch.Tensor:
    return p_e.abs().mean()


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


# ------------------------------------------------------------------------------------ groups
@dataclass
class LandmarkTargets:
    """The detector's landmarks as the fit uses them, in crop pixels (made by the detect stage)."""

    det: torch.Tensor                  # (1, 68, 2) iBUG landmarks
    iod: float                         # inter-ocular distance (outer eye corners), pixels
    inner_idx: torch.Tensor            # (51,) model vertices of the inner (non-jaw) landmarks
    jaw_idx: torch.Tensor              # (35,) the model's jawline polyline, right to left
    dense: torch.Tensor | None = None  # (1, N, 2) the detector's dense landmarks, or None
    tri_v: torch.Tensor | None = None  # (N, 3) model vertices of each dense point's triangle
    bary: torch.Tensor | None = None   # (N, 3) barycentric coordinates in it
    weights: torch.Tensor | None = None  # (N,) per-point weights
    jaw_weights: torch.Tensor | None = None  # (17,) per jaw point (trust: beards pull less), or None


def landmark_terms(p2: torch.Tensor, t: LandmarkTargets, remap: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """``landmark`` (dense points when the detector gave them, else the 51 inner iBUG points) and
    ``contour`` (detected jaw points to the projected jawline) from projected vertices ``p2``
    (B, n, 2). ``remap`` maps model vertex ids to rows of ``p2`` (None: p2 holds every fitted vertex)."""
    r = (lambda i: i) if remap is None else (lambda i: remap[i])
    if t.dense is not None:
        pts = (p2[:, r(t.tri_v)] * t.bary[None, :, :, None]).sum(2)
        landmark = landmark_loss(pts, t.dense, t.iod, t.weights)
    else:
        landmark = landmark_loss(p2[:, r(t.inner_idx)], t.det[:, INNER], t.iod)
    contour = contour_loss(p2[:, r(t.jaw_idx)], t.det[:, JAW], t.iod, t.jaw_weights)
    return {"landmark": landmark, "contour": contour}


def prior_terms(shape: torch.Tensor, expr: torch.Tensor | None = None,
                expr_start: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """``shape_prior`` and, when the expression is fitted (``expr`` not None), ``expr_prior``
    (sparse expressions) and ``expr_init`` (stay near the detector's blendshape scores)."""
    terms = {"shape_prior": shape_prior(shape)}
    if expr is not None:
        terms["expr_prior"] = expression_prior(expr)
        if expr_start is not None:
            terms["expr_init"] = ((expr - expr_start) ** 2).mean()
    return terms


def photo_terms(colour: torch.Tensor, photo: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """``pixel``: masked L1 of the render against the photo (both sRGB); ``mask`` carries the
    trust weight (``trust.py``) where the fit uses one."""
    return {"pixel": masked_l1(colour, photo, mask)}


def identity_terms(emb: torch.Tensor, emb_photo: torch.Tensor, feats: list[torch.Tensor],
                   feats_photo: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """``identity`` (1 - cosine of the recogniser's embeddings of render and photo) and
    ``content`` (normalised distance of its activations, relative to the photo's)."""
    return {"identity": identity_loss(emb_photo, emb).mean(),
            "content": content_loss(feats_photo, feats).mean()}


def light_terms(sh: torch.Tensor, irr_mean: torch.Tensor, level: float = 1.0) -> dict[str, torch.Tensor]:
    """``light_prior`` (SH small beyond ambient) and ``light_level`` (the mean irradiance over the
    face kept at ``level``: 1, or the exposure of an underexposed photo; see
    ``config.Weights.light_level``)."""
    return {"light_prior": light_prior(sh / level),
            "light_level": ((irr_mean - level) ** 2).mean() / (level * level)}


def weigh(terms: dict[str, torch.Tensor], weights) -> dict[str, torch.Tensor]:
    """The one place weights are applied: ``weights.<name> * term``; weight-0 terms are dropped."""
    out = {}
    for name, value in terms.items():
        w = getattr(weights, name)
        if w != 0:
            out[name] = w * value
    return out


def total(weighted: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum(weighted.values())
