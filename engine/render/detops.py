"""Deterministic gather / scatter-add of rows, for autograd on large index sets.

On the CPU (and with atomics on CUDA), torch's backward of advanced indexing (``x[:, idx]``,
i.e. ``index_put_(accumulate=True)``) adds the contributions of repeated indices in an order that
depends on thread scheduling: with 2 or more threads the same fit differed from run to run in
the last bits of its gradients, which the optimisation amplified to about 5% in the masked L1
after 80 steps. Here the scatter is a segment sum over the indices sorted once (stable), so every
row is summed in the same order whatever the thread count; gather and scatter are each other's
backward.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RowPlan:
    """``idx`` (N,) long into ``size`` rows, with its stable sort order and counts per row."""

    idx: torch.Tensor
    order: torch.Tensor
    counts: torch.Tensor
    size: int


_PLANS: dict[tuple, RowPlan] = {}


def row_plan(idx: torch.Tensor, size: int) -> RowPlan:
    """The plan for an index vector, cached by its content (meshes reuse the same few)."""
    idx = idx.detach().long().contiguous()
    key = (hashlib.blake2b(idx.cpu().numpy().tobytes(), digest_size=16).hexdigest(), int(size), str(idx.device))
    plan = _PLANS.get(key)
    if plan is None:
        if len(_PLANS) > 64:
            _PLANS.clear()
        order = torch.argsort(idx, stable=True)
        counts = torch.bincount(idx, minlength=size)
        plan = _PLANS[key] = RowPlan(idx, order, counts, int(size))
    return plan


def _segment_sum(values: torch.Tensor, plan: RowPlan) -> torch.Tensor:
    B, N, C = values.shape
    x = values[:, plan.order].permute(1, 0, 2).reshape(N, B * C)
    s = torch.segment_reduce(x, "sum", lengths=plan.counts, axis=0)
    return s.reshape(plan.size, B, C).permute(1, 0, 2).contiguous()


class _Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, src, plan):  # noqa: D102 - see gather_rows
        ctx.plan = plan
        return src[:, plan.idx]

    @staticmethod
    def backward(ctx, grad):
        return _Scatter.apply(grad, ctx.plan), None


class _Scatter(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, plan):  # noqa: D102 - see scatter_rows
        ctx.plan = plan
        return _segment_sum(values, plan)

    @staticmethod
    def backward(ctx, grad):
        return _Gather.apply(grad.contiguous(), ctx.plan), None


def gather_rows(src: torch.Tensor, plan: RowPlan) -> torch.Tensor:
    """``src[:, plan.idx]`` for src (B, size, C), with a deterministic backward."""
    return _Gather.apply(src, plan)


def scatter_rows(values: torch.Tensor, plan: RowPlan) -> torch.Tensor:
    """(B, size, C) row sums of ``values`` (B, N, C) by ``plan.idx``, deterministic."""
    return _Scatter.apply(values.contiguous(), plan)
