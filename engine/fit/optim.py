"""A minimal Adam. torch.optim's optimisers import torch._dynamo on first use (about 2 s on a
laptop CPU), which is a large share of a 15 s fit; this one is a few lines of plain tensor maths
with the same update rule (Kingma & Ba, no weight decay, no amsgrad)."""

from __future__ import annotations

import torch


class Adam:
    def __init__(self, groups: list[dict], betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 warmup: int = 0, decay: int = 0):
        """``warmup``: every group's rate ramps up linearly over the first this many steps (step t
        uses t / warmup of it); 0: the full rate from the first step. ``decay``: the rate of every
        group marked ``"decay": True`` falls linearly over this many steps, from the full rate at
        the first to 0 at the last (step t uses 1 - (t - 1) / (decay - 1) of it); 0: constant."""
        self.groups = [{"params": list(g["params"]), "lr": float(g["lr"]), "decay": bool(g.get("decay", False))}
                       for g in groups]
        self.decay = int(decay)
        self.b1, self.b2 = betas
        self.eps = eps
        self.warmup = int(warmup)
        self.t = 0
        self.state: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def zero_grad(self) -> None:
        for g in self.groups:
            for p in g["params"]:
                p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        c1 = 1 - self.b1 ** self.t
        c2 = 1 - self.b2 ** self.t
        ramp = min(1.0, self.t / self.warmup) if self.warmup > 0 else 1.0
        fall = max(0.0, 1.0 - (self.t - 1) / max(self.decay - 1, 1)) if self.decay > 0 else 1.0
        for g in self.groups:
            lr = g["lr"] * ramp * (fall if g["decay"] else 1.0)
            for p in g["params"]:
                if p.grad is None:
                    continue
                m, v = self.state.get(id(p), (None, None))
                if m is None:
                    m, v = torch.zeros_like(p), torch.zeros_like(p)
                    self.state[id(p)] = (m, v)
                m.mul_(self.b1).add_(p.grad, alpha=1 - self.b1)
                v.mul_(self.b2).addcmul_(p.grad, p.grad, value=1 - self.b2)
                denom = (v / c2).sqrt_().add_(self.eps)
                p.addcdiv_(m, denom, value=-lr / c1)
