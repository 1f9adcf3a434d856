"""``python benchmarks/gan_throughput.py [--res 256] [--batch 8] [--gpus N] [--json]``: training
throughput of ``texture train --model gan`` (images per second, seconds per step) on a synthetic
dataset, through the real command (so the figure includes D + G steps, lazy R1 and the EMA).

Device auto: CUDA when torch sees a GPU, else the CPU. ``--gpus N`` (N > 1) runs the same under
``torchrun --standalone --nproc_per_node N`` (one process per GPU; ``--batch`` is per GPU).
It prints one line per run: res, processes, batch, median s/step after warm-up, images/s, peak
GPU memory. Nothing is written outside a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def write_synthetic(root: Path, n: int, res: int, seed: int = 0) -> Path:
    """A format-v1 texture dataset of smooth random colours, half of each atlas seen."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:res, 0:res] / res
    albedo = np.empty((n, res, res, 3), np.float16)
    weight = np.empty((n, res, res), np.float16)
    for i in range(n):
        f = rng.uniform(0.5, 2.0, 3)
        base = np.array([0.45, 0.3, 0.25]) + 0.05 * rng.normal(size=3)
        albedo[i] = np.clip(base + 0.05 * np.sin(2 * np.pi * (f[0] * xx + f[1] * yy))[..., None], 0, 1)
        weight[i] = (np.abs(xx - rng.uniform(0.3, 0.7)) < 0.35).astype(np.float16)
    ids = np.array([f"bench/{i:05d}" for i in range(n)])
    np.savez(root / "shard-00000.npz", albedo=albedo, weight=weight, ids=ids)
    (root / "data.json").write_text(json.dumps({
        "format": "ganfit-texture-dataset", "version": 1, "res": res, "uv_layout": "ganfit-atlas-v1",
        "colour": "linear", "row0": "top", "builder": {"engine": "benchmark"}}))
    with open(root / "manifest.jsonl", "w", encoding="utf-8") as fh:
        for i, sid in enumerate(ids):
            fh.write(json.dumps({"id": str(sid), "person": f"p{i:05d}", "dataset": "synthetic",
                                 "status": "ok", "shard": "shard-00000.npz", "index": i}) + "\n")
    return root


def run_one(data: Path, tmp: Path, a, procs: int) -> dict:
    out = tmp / f"gan-{procs}.pt"
    args = ["texture", "train", str(data), "--model", "gan", "-o", str(out), "--res", str(a.res),
            "--components", str(a.latent), "--batch", str(a.batch), "--steps", str(a.steps),
            "--sample-every", "0", "--ckpt-every", "0", "--kid-every", "0", "--no-progress",
            "--holdout", "0", "--device", a.device, "--amp", a.amp, "--overwrite"]
    if a.channel_base:
        args += ["--channel-base", str(a.channel_base)]
    if a.channel_max:
        args += ["--channel-max", str(a.channel_max)]
    prefix = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs)] if procs > 1 else []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, *prefix, "-m", "engine", *args], capture_output=True, text=True,
                       cwd=ROOT, env=env)
    if p.returncode != 0:
        raise SystemExit(f"the trainer failed ({p.returncode}):\n{p.stderr[-4000:]}")
    import torch
    extra = {"ganfit.json": ""}
    torch.jit.load(str(out), _extra_files=extra)
    meta = json.loads(extra["ganfit.json"])
    t = meta["timings_s"]
    return {"res": a.res, "processes": procs, "batch_per_process": a.batch, "device": meta["device"],
            "amp": meta["amp"], "steps": t["steps"], "median_s_per_step": t["median_s_per_step"],
            "images_per_s": t["median_images_per_s"], "overall_images_per_s": t["images_per_s"],
            "peak_gpu_mem_gb": t.get("peak_gpu_mem_gb")}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python benchmarks/gan_throughput.py")
    ap.add_argument("--res", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8, help="per process")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--latent", type=int, default=64)
    ap.add_argument("--channel-base", type=int, default=0, help="default: the trainer's")
    ap.add_argument("--channel-max", type=int, default=0, help="default: the trainer's")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), default="auto")
    ap.add_argument("--gpus", type=int, default=1, help="also run with this many processes (torchrun)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ganfit-gan-bench-") as tmp:
        tmp = Path(tmp)
        data = write_synthetic(tmp / "data", n=max(64, 4 * a.batch * a.gpus), res=a.res)
        rows = [run_one(data, tmp, a, 1)]
        if a.gpus > 1:
            rows.append(run_one(data, tmp, a, a.gpus))
    for r in rows:
        if a.json:
            print(json.dumps(r))
        else:
            mem = f", peak GPU memory {r['peak_gpu_mem_gb']} GB" if r["peak_gpu_mem_gb"] is not None else ""
            print(f"gan {r['res']}^2 on {r['processes']} x {r['device']} (amp {r['amp']}), batch "
                  f"{r['batch_per_process']} per process: {r['median_s_per_step']:.3f} s/step, "
                  f"{r['images_per_s']:.1f} images/s{mem}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
