"""Held-out evaluation of texture models: the error table and PNG sheets.

The held-out persons are the ones the checkpoint's ganfit.json records (never seen in training).
For each held-out UV map the latent is fitted to its visible texels except a mirror-symmetric
random half of blocks, and the weighted error is measured on those held back (the operation the
fitter performs: a latent from a partial UV).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from ..errors import BadInputError, OutputError
from . import data as D
from . import ppca as P


def _srgb(x: torch.Tensor) -> np.ndarray:
    """(3, H, W) linear [0, 1] -> (H, W, 3) uint8 sRGB."""
    x = x.clamp(0, 1)
    s = torch.where(x <= 0.0031308, 12.92 * x, 1.055 * x.clamp_min(1e-8) ** (1 / 2.4) - 0.055)
    return (s.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


def _masked(albedo: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Albedo where seen (fading with weight), a checkerboard where not."""
    r = albedo.shape[-1]
    yy, xx = torch.meshgrid(torch.arange(r), torch.arange(r), indexing="ij")
    check = (((yy // max(1, r // 16)) + (xx // max(1, r // 16))) % 2).float() * 0.15 + 0.1
    w = weight.clamp(0, 1)
    return albedo * w + check * (1 - w)


def sheet(rows: list[list[torch.Tensor]], path: Path, tile: int = 128) -> None:
    """Write a grid of (3, r, r) linear images as one sRGB PNG (tiles resized to ``tile``)."""
    from PIL import Image
    cols = max(len(r) for r in rows)
    canvas = Image.new("RGB", (cols * (tile + 2), len(rows) * (tile + 2)), (255, 255, 255))
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            im = Image.fromarray(_srgb(img)).resize((tile, tile), Image.BILINEAR)
            canvas.paste(im, (j * (tile + 2), i * (tile + 2)))
    canvas.save(path)


def evaluate(data_dir: str | Path, model_paths: list[str], output: str | Path | None = None,
             samples: int = 8, seed: int = 0, log=print) -> dict:
    """Print the held-out error table of each model and (with ``output``) write its sheets."""
    from ..fit.texture import load_generator
    ds = D.TextureDataset(data_dir)
    out = Path(output) if output else None
    if out is not None:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"Could not create {out}: {e}") from e
    results = {}
    for mp in model_paths:
        module, meta = load_generator(mp)
        if meta.get("model") != "ppca":
            raise BadInputError(f"{mp}: eval measures PPCA checkpoints (ganfit.json model 'ppca'); this "
                                f"one is {meta.get('model')!r}.")
        m = P.model_from_generator(module)
        held_persons = set(meta.get("heldout_persons") or [])
        recs = [r for r in ds.records if r.person in held_persons]
        if not recs:
            raise BadInputError(f"None of the persons held out when {mp} was trained are in {data_dir}; "
                                "evaluate on the dataset it was trained on.")
        ho = ds.load(m.res, recs)
        hb = D.holdback_mask(len(ho), m.res, int(meta.get("seed", 0)) + 1)
        ks = sorted({0, 1, 2, 4, 8, 12, 16, 24, 32, 40, 48, 64, m.k} & set(range(m.k + 1)))
        table = P.heldout_error(m, ho.albedo, ho.weight, hb, ks)
        name = Path(mp).name
        log(f"{name}: ppca, {m.k} components at {m.res}px, {len(ho)} held-out samples of "
            f"{len(held_persons)} persons")
        log(f"  {'components':>10}  {'RMSE':>8}  {'L1':>8}")
        for k, e in table.items():
            log(f"  {k:>10}  {e['rmse']:8.4f}  {e['l1']:8.4f}")
        results[name] = {"components": m.k, "res": m.res, "heldout_samples": len(ho),
                         "table": {str(k): e for k, e in table.items()}}
        if out is not None:
            g = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                z = torch.randn(samples, m.k, generator=g)
                imgs = module(z)
                sheet([list(imgs[i:i + 4]) for i in range(0, samples, 4)], out / f"{Path(mp).stem}-samples.png")
                n = min(samples, len(ho))
                fitw = ho.weight[:n] * (~hb[:n]).float()
                _, rec = P.reconstruct(m, ho.albedo[:n], fitw)
                rows = [[_masked(ho.albedo[i], ho.weight[i]), _masked(ho.albedo[i], fitw[i]), rec[i]]
                        for i in range(n)]
                sheet(rows, out / f"{Path(mp).stem}-heldout.png")
    if out is not None:
        (out / "eval.json").write_text(json.dumps(results, indent=1))
        print(f"sheets in {out}: per model -samples.png (random z ~ N(0, I)) and -heldout.png "
              "(held-out UV as seen | the part the latent was fitted to | reconstruction)", file=sys.stderr)
    return results
