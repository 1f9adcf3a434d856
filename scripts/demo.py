"""The README's first command (after set-up): fit the bundled demo photo and make a .blend.

    python scripts/demo.py [PHOTO] [-o demo_out] [--preset balanced]

Writes ``demo_out/result/`` (the engine's result folder, docs/result-format.md) and
``demo_out/ganfit_demo.blend`` made by the extension's own importer (``scripts/make_blend.py``):
the textured head, its camera with the photo as background, and 53 expression shape keys.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO_PHOTO = REPO / "engine" / "data" / "demo" / "grace_hopper.jpg"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("photo", nargs="?", type=Path, default=DEMO_PHOTO,
                    help="photo to fit (default: the bundled public-domain demo photo)")
    ap.add_argument("-o", "--out", type=Path, default=REPO / "demo_out", help="output folder")
    ap.add_argument("--preset", default="balanced", choices=("fast", "balanced", "best"))
    args = ap.parse_args(argv)

    out = args.out.resolve()
    result = out / "result"
    blend = out / "ganfit_demo.blend"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    t0 = time.perf_counter()
    print(f"[demo] fitting {args.photo} ({args.preset}) -> {result}", flush=True)
    fit = subprocess.run([sys.executable, "-m", "engine", "fit", str(args.photo), "-o", str(result),
                          "--preset", args.preset, "--overwrite", "--report"], cwd=REPO, env=env)
    if fit.returncode != 0:
        print(f"[demo] the fit failed (exit {fit.returncode}); see the messages above", file=sys.stderr)
        return fit.returncode
    t1 = time.perf_counter()
    print(f"[demo] fit done in {t1 - t0:.1f} s; building {blend}", flush=True)
    mk = subprocess.run([sys.executable, str(REPO / "scripts" / "make_blend.py"), str(result), str(blend)],
                        cwd=REPO, env=env)
    if mk.returncode != 0:
        print(f"[demo] making the .blend failed (exit {mk.returncode})", file=sys.stderr)
        return mk.returncode
    print(f"[demo] done in {time.perf_counter() - t0:.1f} s:\n"
          f"  result folder: {result}\n  overlay:       {result / 'overlay.png'}\n"
          f"  report:        {result / 'report.png'}\n  blend:         {blend}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
