"""Stage 6, write: the result folder (``results.py``; docs/result-format.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..results import view_params, write_result, write_views
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


def run_views(out_dir: Path, mf, detections: list[Detection], face_index: int, model, ctx, photos: list[np.ndarray],
              info: dict, report: bool, multi_view: dict) -> dict:
    """A multi-photo fit (``pipeline.MultiFit``): the head and the primary photo's files as one
    photo's, plus each photo's render, overlay and view (``results.write_views``). ``info["views"]``:
    per photo {"photo": path, "focal_source": ...}."""
    info = dict(info)
    per_photo = info.pop("views")
    infos = [{**v, "landmark_scheme": d.scheme,
              "face": {"index": face_index, "box": d.box, "score": d.score, "count": d.count}}
             for v, d in zip(per_photo, detections)]
    first = {**info, **infos[0], "models": {**info.get("models", {}), "texture": mf.views[0].texture.name}}
    result = write_result(out_dir, mf.views[0], model, ctx, photos[0], first, report=report,
                          extra_params=view_params(mf.views))
    return write_views(out_dir, result, mf.views, model, ctx, photos, infos, multi_view)
