"""A synthetic texture dataset in format v1 (as ``texture dataset`` writes it), for the trainer's tests.

Albedo = mean + a rank-``rank`` mixture of smooth patterns + noise; each sample sees random blobs of
the atlas (the rest has weight 0) and a few texels get low weights; persons have 1-3 samples.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def smooth_patterns(rank: int, res: int, rng: np.random.Generator) -> np.ndarray:
    """(rank, res, res, 3) smooth random patterns of unit RMS."""
    yy, xx = np.mgrid[0:res, 0:res] / res
    out = []
    for _ in range(rank):
        p = np.zeros((res, res, 3))
        for _ in range(4):
            fx, fy = rng.uniform(0.5, 3.0, 2)
            ph = rng.uniform(0, 2 * np.pi, 2)
            col = rng.normal(size=3)
            p += np.sin(2 * np.pi * fx * xx + ph[0])[..., None] * np.cos(2 * np.pi * fy * yy + ph[1])[..., None] * col
        out.append(p / np.sqrt((p ** 2).mean()))
    return np.stack(out)


def make_samples(n: int, res: int = 32, rank: int = 4, noise: float = 0.01, seed: int = 0,
                 scale: float = 0.06, coverage: float = 0.6):
    rng = np.random.default_rng(seed)
    pats = smooth_patterns(rank, res, np.random.default_rng(1234))
    mean = np.stack(np.broadcast_arrays(0.45, 0.3, 0.25), -1) * np.ones((res, res, 3))
    z = rng.normal(size=(n, rank)) * scale * (1.0 / (1 + np.arange(rank)) ** 0.5)
    albedo = mean + np.einsum("nk,khwc->nhwc", z, pats) + rng.normal(size=(n, res, res, 3)) * noise
    yy, xx = np.mgrid[0:res, 0:res] / res
    weight = np.zeros((n, res, res))
    for i in range(n):
        while (weight[i] > 0).mean() < coverage:
            cy, cx, rad = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.1, 0.3)
            weight[i][(yy - cy) ** 2 + (xx - cx) ** 2 < rad ** 2] = 1.0
        weight[i] *= rng.uniform(0.5, 1.0, size=(res, res)) ** 0.3
    return np.clip(albedo, 0, 1), weight, z


def write_dataset(root: str | Path, n: int = 120, res: int = 32, rank: int = 4, noise: float = 0.01,
                  seed: int = 0, shard_size: int = 64, failed: int = 2, **kw) -> Path:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    albedo, weight, _ = make_samples(n, res, rank, noise, seed, **kw)
    (root / "data.json").write_text(json.dumps({
        "format": "ganfit-texture-dataset", "version": 1, "res": res, "uv_layout": "ganfit-atlas-v1",
        "colour": "linear", "row0": "top", "builder": {"engine": "synthetic", "seed": seed}}))
    lines = []
    person, left = 0, 0
    rng = np.random.default_rng(seed + 1)
    for s in range(0, n, shard_size):
        name = f"shard-{s // shard_size:05d}.npz"
        rows = range(s, min(n, s + shard_size))
        ids = np.array([f"synth/img{i:04d}" for i in rows])
        np.savez(root / name, albedo=albedo[s:s + len(ids)].astype(np.float16),
                 weight=weight[s:s + len(ids)].astype(np.float16), ids=ids)
        for j, i in enumerate(rows):
            if left == 0:
                person, left = person + 1, int(rng.integers(1, 4))
            left -= 1
            lines.append({"id": str(ids[j]), "source": f"synth/img{i:04d}.jpg", "sha256": "0" * 64,
                          "person": f"p{person:04d}", "dataset": "synthetic", "licence": "CC0",
                          "attribution": None, "status": "ok", "metrics": {}, "coverage": 0.6,
                          "shard": name, "index": j})
    for f in range(failed):
        lines.append({"id": f"synth/bad{f}", "source": f"synth/bad{f}.jpg", "status": "failed",
                      "error": "no face"})
    with open(root / "manifest.jsonl", "w", encoding="utf-8") as fh:
        for obj in lines:
            fh.write(json.dumps(obj) + "\n")
    return root
