"""The fitted parameters: a dataclass of named leaf tensors (STYLE: not a sliced vector), which
builds its own optimiser groups from the learning rates."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import Rates
from .optim import Adam

# Which ``Rates`` field drives which parameter.
RATE_OF = {"rot": "rotation", "trans": "translation", "shape": "shape", "expr": "expression", "sh": "light"}


@dataclass
class FitParams:
    rot: torch.Tensor          # (1, 3) axis-angle
    trans: torch.Tensor        # (1, 3) cm
    shape: torch.Tensor        # (1, 100) identity coefficients ~ N(0, 1)
    expr: torch.Tensor         # (1, 53) expression weights in [0, 1]
    sh: torch.Tensor           # (1, 9, 3) SH lighting

    def groups(self, rates: Rates, names: tuple[str, ...], scale: dict[str, float] | None = None) -> list[dict]:
        """One optimiser group per named parameter, its rate from ``rates`` (x ``scale[name]``)."""
        scale = scale or {}
        out = []
        for n in names:
            lr = getattr(rates, RATE_OF[n])
            if n in scale:
                lr = lr * scale[n]
            out.append({"params": [getattr(self, n)], "lr": lr})
        return out

    def optimiser(self, rates: Rates, names: tuple[str, ...], scale: dict[str, float] | None = None,
                  extra: list[dict] | None = None) -> Adam:
        return Adam([*self.groups(rates, names, scale), *(extra or [])])
