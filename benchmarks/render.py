"""Benchmarks. ``python benchmarks/render.py [--json] [--threads N] [--repeats N]``.

``bench_render`` times forward + backward of rasterize -> interpolate (UVs) -> texture ->
antialias -> a mean-squared loss, for the fitted face mesh (about 9.4k vertices, 18.4k
triangles) covering about 40% of the image, with gradients w.r.t. the clip-space positions and
a 512x512 RGB texture.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as ``python benchmarks/render.py`` from a checkout
    sys.path.insert(0, str(ROOT))


def bench_render(sizes: tuple[int, ...] = (256, 512), repeats: int = 20,
                 threads: int | None = None, backend: str = "cpu", device: str = "cpu",
                 warmup: int = 3, tex_size: int = 512, grad_db: bool = False) -> dict:
    """Median forward+backward time of the render pipeline per image size.

    Args:
        sizes: square image sizes.
        repeats: timed iterations per size (median reported).
        threads: torch/numba CPU threads (None keeps the current setting).
        backend, device: passed to ``render.create_context``.
        grad_db: also compute rast_db (the fitting does not need it: no mipmaps).
    Returns:
        dict with ``ms_<size>`` (median wall ms), ``fwd_ms_<size>`` (forward only),
        ``min_ms_<size>``, ``cpu_ms_<size>`` (process CPU ms), ``coverage_<size>``, ``backend``,
        ``threads``, ``peak_rss_mb``, ``triangles``, ``vertices``, ``device``.
    """
    import torch  # noqa: PLC0415 - main() may set OpenMP's wait policy before torch loads

    from engine import render  # noqa: PLC0415 - keep `import engine.bench` light
    from engine.render import utils  # noqa: PLC0415

    if threads is not None:
        torch.set_num_threads(int(threads))
        try:
            import numba  # noqa: PLC0415

            numba.set_num_threads(min(int(threads), numba.config.NUMBA_NUM_THREADS))
        except Exception:  # numba may cap threads; torch's setting still applies
            pass
    dev = torch.device(device)
    ctx = render.create_context(dev, backend)
    scene = utils.face_scene(0.0, fill=0.95)
    pos0 = scene["pos"].to(dev)
    tris = scene["tris"].to(dev)
    uvs = scene["uvs"].to(dev)
    face_uvs = scene["face_uvs"].to(dev)
    gen = torch.Generator().manual_seed(0)
    tex = torch.rand((1, tex_size, tex_size, 3), generator=gen).to(dev).requires_grad_(True)
    result: dict = {"backend": ctx.backend, "device": str(dev), "threads": torch.get_num_threads(),
                    "triangles": int(tris.shape[0]), "vertices": int(pos0.shape[1]),
                    "tex_size": tex_size, "repeats": repeats,
                    "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "")}

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    for size in sizes:
        target = torch.rand((1, size, size, 3), generator=gen).to(dev)
        times, ftimes, ctimes = [], [], []
        cov = 0.0
        for it in range(warmup + repeats):
            pos = pos0.detach().clone().requires_grad_(True)
            tex.grad = None
            sync()
            c0 = time.process_time()
            t0 = time.perf_counter()
            rast, _ = render.rasterize(ctx, pos, tris, (size, size), grad_db=grad_db)
            uv, _ = render.interpolate(uvs, rast, face_uvs)
            color = render.texture(tex, uv, filter_mode="linear", boundary_mode="clamp")
            color = render.antialias(color, rast, pos, tris)
            loss = ((color - target) ** 2).mean()
            sync()
            t1 = time.perf_counter()
            loss.backward()
            sync()
            t2 = time.perf_counter()
            c2 = time.process_time()
            if it >= warmup:
                times.append(t2 - t0)
                ftimes.append(t1 - t0)
                ctimes.append(c2 - c0)
            cov = float((rast[..., 3] > 0).float().mean())
        result[f"ms_{size}"] = round(statistics.median(times) * 1000, 2)
        result[f"fwd_ms_{size}"] = round(statistics.median(ftimes) * 1000, 2)
        result[f"min_ms_{size}"] = round(min(times) * 1000, 2)
        # CPU time of the whole process per iteration (all threads): on a machine shared with
        # other jobs, wall time can be far above cpu_ms / threads
        result[f"cpu_ms_{size}"] = round(statistics.median(ctimes) * 1000, 2)
        result[f"coverage_{size}"] = round(cov, 3)
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/render.py")
    parser.description = "time the differentiable renderer (forward+backward)"
    p = parser
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    p.add_argument("--backend", default="cpu", choices=["cpu", "nvdiffrast", "auto"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--grad-db", action="store_true", help="also compute rast_db")
    args = parser.parse_args(argv)
    if "torch" not in sys.modules:
        # torch's OpenMP workers spin after each op by default; on a small machine shared with
        # other jobs that made wall times erratic (10x slower runs). Only settable before torch
        # loads; an explicit OMP_WAIT_POLICY wins.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    res = bench_render(tuple(args.sizes), repeats=args.repeats, threads=args.threads,
                       backend=args.backend, device=args.device, grad_db=args.grad_db)
    if args.json:
        print(json.dumps(res))
    else:
        width = max(len(k) for k in res)
        for k, v in res.items():
            print(f"{k:<{width}}  {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
