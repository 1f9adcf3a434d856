"""Stage 2, coarse: the pose from the landmarks (weak-perspective PnP on the neutral face), then
Adam on the landmark + jaw-contour terms and the shape/expression priors. Only the few hundred
vertices that the landmarks use are evaluated, so a step costs milliseconds."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...camera import matrix_to_axis_angle, project, rotation_matrix, solve_pose_weak_perspective, to_camera
from ...lighting import ambient_coeffs
from .. import losses as L
from ..hooks import Hooks, as_floats, record
from ..params import FitParams
from .detect import Framed


@dataclass
class CoarseResult:
    params: FitParams                  # pose, shape and expression (sh still ambient)
    expr_start: torch.Tensor           # (1, 53) the detector's expression, the prior's anchor
    history: dict[str, list[tuple[int, float]]]
    # The fitted camera-to-face distance over the starting one (``fit_perspective``); the focal
    # length is to be multiplied by it too (``params.trans`` already is). 1 when not fitted.
    focal_scale: float = 1.0


def initial_params(model, framed: Framed, expr_init: dict[str, float] | None, fit_expression: bool,
                   device) -> tuple[FitParams, torch.Tensor]:
    """PnP pose, zero shape, the detector's blendshape scores as the expression."""
    t = framed.targets
    pts3 = model.vertices_neutral[t.inner_idx].cpu().numpy()
    R0, t0 = solve_pose_weak_perspective(pts3, t.det[0, L.INNER].cpu().numpy(), framed.crop.K)
    p = FitParams(
        rot=torch.tensor(matrix_to_axis_angle(R0), dtype=torch.float32, device=device)[None].requires_grad_(),
        trans=torch.tensor(t0, dtype=torch.float32, device=device)[None].requires_grad_(),
        shape=torch.zeros(1, model.n_shape, device=device, requires_grad=True),
        expr=torch.zeros(1, model.n_expr, device=device),
        sh=ambient_coeffs(1, device),
    )
    if expr_init and fit_expression:
        for name, w in expr_init.items():
            if name in model.expression_names:
                p.expr[0, model.expression_names.index(name)] = float(w)
    model.clamp_expression(p.expr)
    expr_start = p.expr.detach().clone()
    p.expr.requires_grad_(fit_expression)
    return p, expr_start


def run(model, cfg, framed: Framed, expr_init: dict[str, float] | None, hooks: Hooks, device,
        fit_perspective: bool = False) -> CoarseResult:
    """``fit_perspective``: the focal length is a guess (``CameraConfig``): also fit the distance,
    the translation and the focal length scaled together by exp(log_k), so that only the
    perspective changes, with the ``distance_prior`` on log_k."""
    t = framed.targets
    used = [t.inner_idx, t.jaw_idx]
    if t.dense is not None:
        used.append(t.tri_v.flatten())
    sub_idx = torch.unique(torch.cat(used)).to(device)
    remap = torch.full((model.n_vertices,), -1, dtype=torch.long, device=device)
    remap[sub_idx] = torch.arange(len(sub_idx), device=device)
    neutral_sub = model.vertices_neutral[sub_idx]
    basis_sub = model.basis.view(model.n_vertices, 3, -1)[sub_idx]  # (n, 3, 153)

    p, expr_start = initial_params(model, framed, expr_init, cfg.fit_expression, device)
    opt_pose = p.optimiser(cfg.coarse_rates, ("rot", "trans"))
    log_k = torch.zeros(1, device=device, requires_grad=fit_perspective)
    extra = [{"params": [log_k], "lr": cfg.camera.distance_rate}] if fit_perspective else None
    opt_shape = p.optimiser(cfg.coarse_rates, ("shape", "expr") if cfg.fit_expression else ("shape",),
                            extra=extra)
    K = framed.crop.K

    def terms() -> dict[str, torch.Tensor]:
        coeffs = torch.cat([p.shape, p.expr], 1)
        v = neutral_sub[None] + torch.einsum("bk,nck->bnc", coeffs, basis_sub)
        if fit_perspective:
            k = log_k.exp()
            p2 = project(to_camera(v, rotation_matrix(p.rot), p.trans * k), K, focal=K.fx * k)
        else:
            p2 = project(to_camera(v, rotation_matrix(p.rot), p.trans), K)
        raw = L.landmark_terms(p2, t, remap)
        raw.update(L.prior_terms(p.shape, p.expr if cfg.fit_expression else None, expr_start))
        if fit_perspective:
            raw["distance_prior"] = (log_k / cfg.camera.distance_log_sigma).pow(2).sum()
        return L.weigh(raw, cfg.weights)

    history: dict[str, list[tuple[int, float]]] = {}
    n = cfg.coarse_steps
    pose_only = max(1, n // cfg.coarse.pose_only_divisor)
    for step in range(n):
        hooks.check_cancel()
        weighted = terms()
        loss = L.total(weighted)
        opt_pose.zero_grad()
        opt_shape.zero_grad()
        loss.backward()
        opt_pose.step()
        if step >= pose_only:
            opt_shape.step()
            model.clamp_expression(p.expr)
        if step % cfg.coarse.report_every == 0 or step == n - 1:
            values = as_floats(weighted)
            record(history, step + 1, values)
            hooks.progress("coarse", step + 1, n, values)
    k = float(log_k.detach().exp())
    if fit_perspective:
        with torch.no_grad():
            p.trans.mul_(k)
    return CoarseResult(p, expr_start, history, k)
