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
from .train import DEFAULT_CANDIDATES


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


def fit_latent(module, dim: int, albedo: torch.Tensor, weight: torch.Tensor, steps: int = 300,
               lr: float = 0.05, noise_std: float = 0.03,
               out_range: str = "0,1") -> tuple[torch.Tensor, torch.Tensor]:
    """Any generator: the MAP latent for weighted texels by Adam (weighted squared error over a
    noise of ``noise_std`` + a z ~ N(0, I) prior), as the fitter's texture stage fits p_t.
    Returns z (N, dim) and images (N, 3, r, r)."""
    import torch.nn.functional as F
    r = albedo.shape[-1]
    z = torch.zeros(len(albedo), dim, requires_grad=True)
    # The engine's own Adam, not torch.optim's: that one imports torch._dynamo, which is slow and,
    # on Python 3.13 with bpy 5.1.2 loaded in the same process, crashed (a segfault in the suite).
    from ..fit.optim import Adam
    opt = Adam([{"params": [z], "lr": lr}])

    def render(zz):
        img = module(zz)
        if out_range == "-1,1":
            img = (img + 1) * 0.5
        if img.shape[-1] != r:
            img = F.interpolate(img, size=(r, r), mode="bilinear", align_corners=False)
        return img.clamp(0, 1)

    for _ in range(steps):
        opt.zero_grad()
        d = ((render(z) - albedo) ** 2).sum(1) * weight
        loss = d.sum() / noise_std ** 2 + (z ** 2).sum()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return z.detach(), render(z)


def generic_heldout_error(module, meta: dict, albedo, weight, holdback) -> dict[str, float]:
    w_fit = weight * (~holdback).float()
    w_test = weight * holdback.float()
    _, rec = fit_latent(module, int(meta["latent_dim"]), albedo, w_fit,
                        noise_std=float(meta.get("noise_std") or 0.03),
                        out_range=str(meta.get("output_range", "-1,1")))
    d = rec - albedo
    den = (3 * w_test.sum()).clamp_min(1e-12)
    return {"rmse": float(((w_test[:, None] * d ** 2).sum() / den).sqrt()),
            "l1": float((w_test[:, None] * d.abs()).sum() / den)}


def evaluate(data_dir: str | Path, model_paths: list[str], output: str | Path | None = None,
             samples: int = 8, seed: int = 0, log=print) -> dict:
    """Print the held-out error table of each model and (with ``output``) write its sheets.

    PPCA checkpoints are measured for every leading number of components (closed-form latent);
    any other generator by an Adam fit of its latent. The held-out persons are those recorded in
    the first checkpoint that records them (so all models are measured on the same people)."""
    from ..fit.texture import load_generator
    ds = D.TextureDataset(data_dir)
    out = Path(output) if output else None
    if out is not None:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"Could not create {out}: {e}") from e
    loaded = [(mp, *load_generator(mp)) for mp in model_paths]
    ref = next((meta for _, _, meta in loaded if meta.get("heldout_persons")), None)
    if ref is None:
        raise BadInputError("None of the checkpoints records its held-out persons (ganfit.json "
                            "'heldout_persons'); give a checkpoint written by 'texture train' too.")
    held_persons = set(ref["heldout_persons"])
    recs = [r for r in ds.records if r.person in held_persons]
    if not recs:
        raise BadInputError(f"None of the persons held out in training are in {data_dir}; evaluate "
                            "on the dataset the models were trained on.")
    hb_seed = int(ref.get("seed", 0)) + 1
    results = {}
    for mp, module, meta in loaded:
        name = Path(mp).name
        is_ppca = meta.get("model") == "ppca"
        with torch.no_grad():
            probe = module(torch.zeros(1, int(meta["latent_dim"])))
        res = int(meta.get("res") or min(ds.res, probe.shape[-1]))
        ho = ds.load(min(res, ds.res), recs)
        hb = D.holdback_mask(len(ho), ho.res, hb_seed)
        if is_ppca:
            m = P.model_from_generator(module)
            ks = sorted((set(DEFAULT_CANDIDATES) | {m.k}) & set(range(m.k + 1)))
            table = P.heldout_error(m, ho.albedo, ho.weight, hb, ks)
        else:
            table = {int(meta["latent_dim"]): generic_heldout_error(module, meta, ho.albedo, ho.weight, hb)}
        log(f"{name}: {meta.get('model', 'generator')}, latent {meta['latent_dim']} at {ho.res}px, "
            f"{len(ho)} held-out samples of {len(held_persons)} persons")
        log(f"  {'components':>10}  {'RMSE':>8}  {'L1':>8}")
        for k, e in table.items():
            log(f"  {k:>10}  {e['rmse']:8.4f}  {e['l1']:8.4f}")
        results[name] = {"model": meta.get("model", "generator"), "latent_dim": int(meta["latent_dim"]),
                         "res": ho.res, "heldout_samples": len(ho),
                         "table": {str(k): e for k, e in table.items()}}
        if out is not None:
            g = torch.Generator().manual_seed(seed)
            n = min(samples, len(ho))
            fitw = ho.weight[:n] * (~hb[:n]).float()
            with torch.no_grad():
                z = torch.randn(samples, int(meta["latent_dim"]), generator=g)
                imgs = module(z)
                if str(meta.get("output_range")) == "-1,1":
                    imgs = (imgs + 1) * 0.5
                sheet([list(imgs[i:i + 4]) for i in range(0, samples, 4)], out / f"{Path(mp).stem}-samples.png")
                if is_ppca:
                    _, rec = P.reconstruct(m, ho.albedo[:n], fitw)
            if not is_ppca:
                _, rec = fit_latent(module, int(meta["latent_dim"]), ho.albedo[:n], fitw,
                                    noise_std=float(meta.get("noise_std") or 0.03), out_range=str(meta.get("output_range", "-1,1")))
            rows = [[_masked(ho.albedo[i], ho.weight[i]), _masked(ho.albedo[i], fitw[i]), rec[i]]
                    for i in range(n)]
            sheet(rows, out / f"{Path(mp).stem}-heldout.png")
    if out is not None:
        (out / "eval.json").write_text(json.dumps(results, indent=1))
        print(f"sheets in {out}: per model -samples.png (random z ~ N(0, I)) and -heldout.png "
              "(held-out UV as seen | the part the latent was fitted to | reconstruction)", file=sys.stderr)
    return results
