"""How a running fit talks to its caller: cancel checks, progress with named losses, previews and
stage changes. Stages receive a ``Hooks`` and keep no state of their own."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ..errors import CancelledError

ProgressFn = Callable[[str, int, int, dict], None]


def _nothing(*_args) -> None:
    return None


@dataclass
class Hooks:
    cancel: Callable[[], bool] = field(default=lambda: False)
    progress: ProgressFn = field(default=_nothing)
    preview: Callable[[np.ndarray, int], None] | None = None
    stage: Callable[[str], None] = field(default=_nothing)
    warn: Callable[[str], None] = field(default=_nothing)  # a sentence for result.json's warnings

    def check_cancel(self) -> None:
        if self.cancel():
            raise CancelledError("The fit was cancelled.")


def as_floats(terms: dict[str, torch.Tensor | float]) -> dict[str, float]:
    return {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in terms.items()}


def record(history: dict[str, list[tuple[int, float]]], step: int, values: dict[str, float]) -> None:
    """Append one step's values to a stage's history (term -> [(step, value)])."""
    for k, v in values.items():
        history.setdefault(k, []).append((step, v))
