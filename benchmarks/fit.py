"""``python benchmarks/fit.py [PHOTO] [--presets fast,balanced] [--json]``: wall time of whole
fits (process start, model loading and writing included) and peak memory, each in a fresh process.
Without PHOTO it fits the bundled demo photo resized to 1024 px on its long side."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "engine" / "data" / "demo" / "grace_hopper.jpg"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python benchmarks/fit.py")
    ap.add_argument("photo", nargs="?", type=Path)
    ap.add_argument("--presets", default="fast,balanced")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ganfit-bench-") as tmp:
        photo = a.photo
        if photo is None:
            im = Image.open(DEMO).convert("RGB")
            s = 1024 / max(im.size)
            photo = Path(tmp) / "demo_1024.png"
            im.resize((round(im.width * s), round(im.height * s)), Image.Resampling.LANCZOS).save(photo)
        out = {"photo": str(photo), "size": list(Image.open(photo).size), "cpu_count": os.cpu_count()}
        for preset in a.presets.split(","):
            res = Path(tmp) / f"out_{preset}"
            cmd = [sys.executable, "-m", "engine", "fit", str(photo), "-o", str(res), "--preset", preset]
            if a.threads:
                cmd += ["--threads", str(a.threads)]
            t0 = time.perf_counter()
            p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
            wall = time.perf_counter() - t0
            if p.returncode != 0:
                out[preset] = {"error": p.stderr[-2000:]}
                continue
            r = json.loads((res / "result.json").read_text())
            out[preset] = {"wall_s": round(wall, 2), "timings": r["timings"], "peak_rss_mb": r["peak_rss_mb"],
                           "landmark_error_iod": r["metrics"].get("landmark_error_iod"),
                           "identity_cosine": r["metrics"].get("identity_cosine"),
                           "backend": r["backend"], "threads": r["threads"]}
    if a.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:>10}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
