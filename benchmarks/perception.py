"""``python benchmarks/perception.py [PHOTO...] [--json]``: detection + landmarks time per photo
(landmarker created once, as in a fit) and the recogniser's forward+backward time at its input size.
Without photos it uses the bundled demo photo."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as ``python benchmarks/<name>.py`` from a checkout
    sys.path.insert(0, str(ROOT))
DEMO = ROOT / "engine" / "data" / "demo" / "grace_hopper.jpg"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python benchmarks/perception.py")
    ap.add_argument("photos", nargs="*", type=Path)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    import torch

    from engine.errors import EngineError
    from engine.io.image import load_photo
    from engine.perception.landmarks import MediaPipeFaceLandmarker
    from engine.perception.recognizer import load_recognizer

    torch.set_num_threads(a.threads)
    out: dict = {"threads": a.threads, "photos": {}}
    t = time.perf_counter()
    with MediaPipeFaceLandmarker() as lm:
        out["landmarker_create_ms"] = round((time.perf_counter() - t) * 1000, 1)
        for p in a.photos or [DEMO]:
            try:
                img = load_photo(p)
            except EngineError as e:
                out["photos"][p.name] = {"error": e.message}
                continue
            times = []
            for _ in range(max(1, a.repeats // 2)):
                t = time.perf_counter()
                faces = lm.detect(img)
                times.append((time.perf_counter() - t) * 1000)
            out["photos"][p.name] = {"size": [img.shape[1], img.shape[0]], "faces": len(faces),
                                     "detect_ms": round(statistics.median(times), 1)}
    t = time.perf_counter()
    rec = load_recognizer("dlib")
    out["recognizer_load_ms"] = round((time.perf_counter() - t) * 1000, 1)
    S = rec.input_size
    x = torch.rand(1, 3, S, S, requires_grad=True)
    times = []
    for _ in range(a.repeats + 1):
        t = time.perf_counter()
        emb, feats = rec.embed(x)
        (emb.sum() + sum(f.mean() for f in feats)).backward()
        times.append((time.perf_counter() - t) * 1000)
    out["recognizer"] = {"name": rec.name, "input": S, "fwd_bwd_ms": round(statistics.median(times[1:]), 1)}
    if a.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:>20}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
