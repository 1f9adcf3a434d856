"""Fit every photo in a folder and print the figures the fitting issue asks for.

    python scripts/eval_fit.py [PHOTO_DIR] [-o OUT] [--preset balanced] [--json]

Per photo: landmark error after the fit (mean over the 68 iBUG points, jaw points measured to the
projected jawline, divided by the inter-ocular distance), identity cosine of photo vs render with
the engine's recogniser (initial and final), masked L1, wall time per stage, peak RSS. Also writes
OUT/overlays.jpg and OUT/albedos.jpg contact sheets. Each fit runs in its own process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GANFIT_SHARED", REPO.parent / "shared"))
EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}


def sheet(paths: list[Path], out: Path, tile: int = 320, cols: int = 4) -> None:
    rows = (len(paths) + cols - 1) // cols
    img = Image.new("RGB", (cols * tile, rows * tile), (30, 30, 30))
    for i, p in enumerate(paths):
        im = Image.open(p).convert("RGB")
        im.thumbnail((tile, tile))
        img.paste(im, ((i % cols) * tile + (tile - im.width) // 2, (i // cols) * tile + (tile - im.height) // 2))
    img.save(out, quality=88)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("photos", nargs="?", type=Path, default=SHARED / "photos")
    ap.add_argument("-o", "--out", type=Path, default=REPO / "out" / "eval")
    ap.add_argument("--preset", default="balanced")
    ap.add_argument("--max-steps", type=int)
    ap.add_argument("--json", action="store_true", help="print one JSON object at the end")
    args = ap.parse_args(argv)
    photos = sorted(p for p in args.photos.iterdir() if p.suffix.lower() in EXTS)
    args.out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    rows = []
    for photo in photos:
        res_dir = args.out / photo.stem
        cmd = [sys.executable, "-m", "engine", "fit", str(photo), "-o", str(res_dir), "--preset", args.preset,
               "--overwrite"]
        if args.max_steps:
            cmd += ["--max-steps", str(args.max_steps)]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if p.returncode != 0:
            print(f"{photo.name}: FAILED (exit {p.returncode})\n{p.stderr[-1500:]}", file=sys.stderr)
            rows.append({"photo": photo.name, "exit": p.returncode})
            continue
        r = json.loads((res_dir / "result.json").read_text())
        m, t = r["metrics"], r["timings"]
        rows.append({"photo": photo.name, "exit": 0, "size": f"{r['image']['width']}x{r['image']['height']}",
                     "lmk_iod": m.get("landmark_error_iod"), "id_cos_init": m.get("identity_cosine_init"),
                     "id_cos": m.get("identity_cosine"), "l1": m.get("masked_l1"), "timings": t,
                     "process_wall_s": round(wall, 2), "peak_rss_mb": r["peak_rss_mb"]})
        f = lambda x: "   -  " if x is None else f"{x:6.3f}"  # noqa: E731
        print(f"{photo.name:34s} lmk/iod {f(m.get('landmark_error_iod'))}  id cos {f(m.get('identity_cosine_init'))}"
              f" -> {f(m.get('identity_cosine'))}  L1 {f(m.get('masked_l1'))}  total {t['total']:5.1f} s "
              f"(load {t.get('load', 0):.1f}, detect {t.get('detect', 0):.1f}, coarse {t.get('coarse', 0):.1f}, "
              f"unwrap {t.get('unwrap', 0):.1f}, fine {t.get('fine', 0):.1f}, albedo {t.get('albedo', t.get('final_albedo', 0)):.1f}, "
              f"write {t.get('write', 0):.1f})  process {wall:5.1f} s  RSS {r['peak_rss_mb']:.0f} MB", flush=True)
    ok = [r for r in rows if r.get("exit") == 0]
    if ok:
        sheet([args.out / Path(r["photo"]).stem / "overlay.png" for r in ok], args.out / "overlays.jpg")
        sheet([args.out / Path(r["photo"]).stem / "albedo.png" for r in ok], args.out / "albedos.jpg")
        def mean(key: str) -> str:
            vals = [r[key] for r in ok if r.get(key) is not None]
            return f"{sum(vals) / len(vals):.4f}" if vals else "-"
        print(f"mean landmark error {mean('lmk_iod')} iod, identity cosine {mean('id_cos')}, "
              f"masked L1 {mean('l1')}; machine: {platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} cores; sheets in {args.out}")
    if args.json:
        print(json.dumps({"preset": args.preset, "rows": rows}))
    return 0 if len(ok) == len(rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
