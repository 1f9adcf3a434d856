"""Draw detected landmarks on photos, to check the detector and the iBUG-68 mapping by eye.

Usage:
    python scripts/debug_landmarks.py PHOTO [PHOTO ...] -o DIR [--backend mediapipe|fan]

Writes DIR/<photo stem>_landmarks.png per photo: dense points in small cyan dots, the 68 points
as coloured polylines (jaw, brows, nose, eyes, lips) with their index numbers, the face box,
and the subject's right eye outer corner (68-point 36) ringed in red.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.errors import EngineError  # noqa: E402
from engine.io.image import load_photo  # noqa: E402
from engine.perception.landmarks import detect_faces  # noqa: E402

from engine.perception.draw import draw_faces  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("photos", nargs="+", type=Path)
    ap.add_argument("-o", "--out", type=Path, required=True)
    ap.add_argument("--backend", default="mediapipe", choices=["mediapipe", "fan"])
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    status = 0
    for photo in args.photos:
        try:
            image = load_photo(photo)
            t0 = time.perf_counter()
            faces = detect_faces(image, backend=args.backend)
            dt = time.perf_counter() - t0
        except EngineError as exc:
            print(f"{photo}: {exc.code}: {exc}", file=sys.stderr)
            status = 1
            continue
        dst = args.out / f"{photo.stem}_landmarks.png"
        draw_faces(image, faces).save(dst)
        print(f"{photo.name}: {image.shape[1]}x{image.shape[0]}, {len(faces)} face(s), "
              f"{dt:.2f} s -> {dst}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
