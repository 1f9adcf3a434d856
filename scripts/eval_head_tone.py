"""Does the albedo continue the face's tone over the head, without a band? Figures per result folder:

    python scripts/eval_head_tone.py RESULT_DIR... [--json]
    python scripts/eval_head_tone.py --compare BEFORE_ROOT AFTER_ROOT   # same-named folders in both

From ``albedo.png`` and the model's atlas (each texel's point on the neutral mesh), the median
luminance (sRGB levels, 0-255) of the front of the head (|x| < 2.5 cm) in 5 mm rows from 1 cm
below the brows to 12 cm above them gives a forehead-to-scalp profile:

* ``band``: its deepest dip below both sides (the lower of the maxima before and after a row, minus
  the row): a darker strip across the forehead, as the model's hairlines made;
* ``scalp_vs_forehead``: the scalp (7 cm above the brows and up) minus the forehead (the 2.5 cm
  above the brows);
* ``neck_vs_cheek``: the front of the neck (2 cm below the chin and down) minus the cheeks;
* ``neck_spread``: the standard deviation over the neck (blotches).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
LUMA = np.array([0.2126, 0.7152, 0.0722])


class Atlas:
    """Per texel of a T x T atlas: its region and its point on the neutral mesh (cached per T)."""

    def __init__(self):
        sys.path.insert(0, str(REPO))
        from engine import render
        from engine.models.facemodel import load_face_model
        self.render, self.model = render, load_face_model("cpu")
        self.ctx = render.create_context("cpu")
        self.cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        lm = self.model.vertices_neutral[self.model.landmarks68].numpy()
        self.brow, self.chin, self.nose = float(lm[17:27, 1].max()), float(lm[8, 1]), float(lm[30, 1])
        self.rid = {n: i for i, n in enumerate(self.model.region_names)}

    def at(self, T: int) -> tuple[np.ndarray, np.ndarray]:
        if T not in self.cache:
            from engine.fit import uvspace
            uvr = uvspace.uv_raster(self.ctx, self.model, T)
            pos, _ = self.render.interpolate(self.model.vertices_neutral[None].contiguous(), uvr.rast,
                                             self.model.tris)
            self.cache[T] = (uvr.region.numpy(), pos[0].numpy())
        return self.cache[T]


def measure(albedo: Path, atlas: Atlas) -> dict[str, float]:
    a = np.asarray(Image.open(albedo).convert("RGB"), np.float64)[::-1]  # PNG row 0 = top (v = 1)
    region, pos = atlas.at(a.shape[0])
    lum = a @ LUMA
    x, y, z = pos[..., 0], pos[..., 1], pos[..., 2]
    skin = (region == atlas.rid["face"]) | (region == atlas.rid["head_neck"])
    front = skin & (np.abs(x) < 2.5) & (z > 0)
    rows = np.arange(atlas.brow - 1.0, atlas.brow + 12.0, 0.5)
    prof = np.array([np.median(lum[m]) if (m := front & (y >= r) & (y < r + 0.5)).sum() > 5 else np.nan
                     for r in rows])
    p = prof[~np.isnan(prof)]
    band = max(min(p[:i].max(), p[i + 1:].max()) - p[i] for i in range(1, len(p) - 1))
    forehead = np.nanmedian(prof[(rows >= atlas.brow) & (rows < atlas.brow + 2.5)])
    scalp = np.nanmedian(prof[rows >= atlas.brow + 7])
    neck = skin & (y < atlas.chin - 2.0) & (z > -2) & (np.abs(x) < 4)
    cheek = ((region == atlas.rid["face"]) & (np.abs(x) > 2.5) & (np.abs(x) < 5)
             & (np.abs(y - atlas.nose) < 1.5))
    return {"band": float(band), "scalp_vs_forehead": float(scalp - forehead),
            "neck_vs_cheek": float(np.median(lum[neck]) - np.median(lum[cheek])),
            "neck_spread": float(lum[neck].std())}


KEYS = ("band", "scalp_vs_forehead", "neck_vs_cheek", "neck_spread")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="*", type=Path)
    ap.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    atlas = Atlas()
    if a.compare:
        before, after = a.compare
        names = sorted(d.name for d in before.iterdir() if (d / "albedo.png").is_file()
                       and (after / d.name / "albedo.png").is_file())
        if not names:
            ap.error("no result folder (with an albedo.png) is in both roots")
        rows = {n: {"before": measure(before / n / "albedo.png", atlas),
                    "after": measure(after / n / "albedo.png", atlas)} for n in names}
        if a.json:
            print(json.dumps(rows, indent=1))
            return 0
        print("| result | " + " | ".join(f"{k} before -> after" for k in KEYS) + " |")
        print("|---" * (len(KEYS) + 1) + "|")
        for n, r in rows.items():
            print(f"| {n} | " + " | ".join(f"{r['before'][k]:.1f} -> {r['after'][k]:.1f}" for k in KEYS) + " |")
        mean = {t: {k: float(np.mean([abs(r[t][k]) for r in rows.values()])) for k in KEYS} for t in ("before", "after")}
        print("| mean of abs | " + " | ".join(f"{mean['before'][k]:.1f} -> {mean['after'][k]:.1f}" for k in KEYS) + " |")
        return 0
    if not a.results:
        ap.error("give result folders, or --compare BEFORE AFTER")
    missing = [d for d in a.results if not (d / "albedo.png").is_file()]
    if missing:
        ap.error(f"not a result folder (no albedo.png): {missing[0]}")
    rows = {str(d): measure(d / "albedo.png", atlas) for d in a.results}
    if a.json:
        print(json.dumps(rows, indent=1))
    else:
        for d, r in rows.items():
            print(d, "  ".join(f"{k} {v:.1f}" for k, v in r.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
