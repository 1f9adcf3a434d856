"""``python benchmarks/landmark_jitter.py --work DIR [SETTING ...]``: how much the detected landmarks
of one face move between the framings of ``benchmarks/shape.py --part reframe`` (no fits).

``DIR`` is a work folder of that benchmark (its ``images/`` and the full photos' fits, whose face
boxes place the crops). Each SETTING is ``name:key=value,key=value`` over ``DetectConfig``'s fields
(e.g. ``none:passes=0``, ``avg9:passes=2,average=9``; default: a few). For every photo and framing
the framing's 68 points, mapped back to the full photo's pixels, are compared with the full photo's
(mean distance / eye distance); printed: median, mean and worst over the framings, and the mean
detection time per image.

    python benchmarks/landmark_jitter.py --work ../shapebench-now none:passes=0 p2:passes=2 avg9:passes=2,average=9
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

DEFAULT = ("none:passes=0", "p2:passes=2,average=1", "avg9:passes=2,average=9")


def parse_setting(text: str):
    from engine.fit.config import DetectConfig
    name, _, spec = text.partition(":")
    types = {f.name: f.type for f in fields(DetectConfig)}
    kw = {}
    for item in filter(None, spec.split(",")):
        k, _, v = item.partition("=")
        if k not in types:
            raise SystemExit(f"error: DetectConfig has no field {k!r} (fields: {', '.join(types)})")
        kw[k] = (v.lower() in ("1", "true", "yes")) if types[k] in (bool, "bool") else \
            (int(v) if types[k] in (int, "int") else float(v))
    return name, replace(DetectConfig(), **kw)


def main(argv: list[str]) -> int:
    import shape as B
    from engine.fit.stages.detect import redetect
    from engine.perception.landmarks import MediaPipeFaceLandmarker, select_face
    ap = argparse.ArgumentParser(prog="python benchmarks/landmark_jitter.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="a benchmarks/shape.py work folder (reframe part run)")
    ap.add_argument("settings", nargs="*", default=list(DEFAULT), help="name:key=value,... (DetectConfig)")
    a = ap.parse_args(argv)
    settings = dict(parse_setting(s) for s in a.settings)
    refs = sorted((a.work / "fits" / "reframe").glob("*__original/result.json"))
    if not refs:
        print(f"error: no full-photo fits under {a.work}/fits/reframe (run benchmarks/shape.py --part reframe)",
              file=sys.stderr)
        return 2
    errs = {k: [] for k in settings}
    secs = {k: [] for k in settings}
    with MediaPipeFaceLandmarker() as lm:
        def det(img, cfg, name):
            t = time.perf_counter()
            f = redetect(img, select_face(lm.detect(img), 0), lm.detect, cfg)
            secs[name].append(time.perf_counter() - t)
            return f
        for res in refs:
            stem = res.parent.name.removesuffix("__original")
            x0, y0, x1, y1 = json.loads(res.read_text())["face"]["box"]
            face_side, cx, cy = max(x1 - x0, y1 - y0), (x0 + x1) / 2, (y0 + y1) / 2
            full = np.asarray(Image.open(a.work / "images" / f"{stem}__original.png").convert("RGB"))
            H, W = full.shape[:2]
            for name, cfg in settings.items():
                f0 = det(full, cfg, name)
                iod = np.linalg.norm(f0.landmarks68[36] - f0.landmarks68[45])
                for framing, k, (ox, oy), _ in B.FRAMINGS:
                    img = np.asarray(Image.open(a.work / "images" / f"{stem}__{framing}.png").convert("RGB"))
                    if k is None:
                        left = top = 0
                        width = W
                    else:  # the crop's corner as make_variants placed it
                        side = k * face_side
                        left = max(0, round(cx - side / 2 - ox * face_side))
                        top = max(0, round(cy - side / 2 - oy * face_side))
                        width = min(W, round(left + side)) - left
                    s = img.shape[1] / width
                    f1 = det(img, cfg, name)
                    back = f1.landmarks68 / s + np.array([left, top])
                    errs[name].append(float(np.linalg.norm(back - f0.landmarks68, axis=1).mean() / iod))
    print(f"{'setting':<12}{'median':>9}{'mean':>9}{'worst':>9}{'detect s':>10}   (landmark movement / eye distance)")
    for name in settings:
        e = np.array(errs[name])
        print(f"{name:<12}{np.median(e):>9.4f}{e.mean():>9.4f}{e.max():>9.4f}{np.mean(secs[name]):>10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
