"""Stage 6, write: the result folder (``results.py``; docs/result-format.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..results import write_result
from .albedo import FitOutput
from .detect import Detection


def run(out_dir: Path, fit: FitOutput, detection: Detection, face_index: int, model, ctx, photo: np.ndarray,
        info: dict, report: bool = False) -> dict:
    """Write every result file into ``out_dir``; returns the result.json dict (not yet written)."""
    info = {**info, "landmark_scheme": detection.scheme,
            "face": {"index": face_index, "box": detection.box, "score": detection.score,
                     "count": detection.count},
            "models": {**info.get("models", {}), "texture": fit.texture.name}}
    return write_result(out_dir, fit, model, ctx, photo, info, report=report)
