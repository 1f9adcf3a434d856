"""Compare engine.render's CPU backend with nvdiffrast on CUDA (values, gradients, timings).

Run on a CUDA machine (e.g. a fresh H100 with only torch installed), from the repository root:

    pip install numpy "numba>=0.60" pillow pytest ninja && \
    pip install --no-build-isolation diffrp-nvdiffrast && \
    python tests/gpu/check_nvdiffrast.py            # add --json for one JSON object

(the second pip line builds nvdiffrast's CUDA extension with nvcc; it is done by the caller).
The pytest wrapper is ``tests/engine/test_render_gpu.py`` (marked ``gpu``; skipped without CUDA
or nvdiffrast): ``python -m pytest -q -m gpu tests/engine/test_render_gpu.py``.

For the face mesh at several poses (with a texture and antialias) it renders with both backends
(nvdiffrast on CUDA tensors, the cpu backend on CPU copies) and prints, per resolution:
- the fraction of covered pixels whose triangle id differs (edge pixels: nvdiffrast snaps
  vertices to a sub-pixel grid, so a few ids along shared edges legitimately differ),
- max abs differences of u, v, z/w, interpolated UVs and textured colour on pixels whose ids
  agree, and the mean/max abs difference of the antialiased colour over all pixels,
- gradients of a photometric loss w.r.t. pos and the texture: cosine similarity and relative
  L2 difference between backends,
- forward+backward median timings of both backends.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from engine import render  # noqa: E402
from engine.render import utils  # noqa: E402


def _pipeline(ctx, pos, tris, uvs, face_uvs, tex, res):
    rast, rast_db = render.rasterize(ctx, pos, tris, (res, res), grad_db=False)
    uv, _ = render.interpolate(uvs, rast, face_uvs)
    col = render.texture(tex, uv, filter_mode="linear", boundary_mode="clamp")
    aa = render.antialias(col, rast, pos, tris)
    return rast, uv, col, aa


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a = a.flatten().double()
    b = b.flatten().double()
    return float((a @ b) / (a.norm() * b.norm() + 1e-30))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / (b.double().norm() + 1e-30))


def compare(resolutions=(256, 512), yaws=(-40.0, 0.0, 25.0), repeats: int = 10,
            device: str = "cuda", backend: str = "nvdiffrast") -> dict:
    """Run both backends and return the difference / timing report (see module docstring).

    ``device``/``backend`` name the second backend; ("cpu", "cpu") is a dry run of this script
    on a machine without CUDA (all differences must then be 0)."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("CUDA is not available")
    if backend == "nvdiffrast" and not render.nvdiffrast_available():
        raise RuntimeError("nvdiffrast.torch does not import")
    ctx_gpu = render.create_context(dev, backend)
    ctx_cpu = render.create_context("cpu", "cpu")
    scene = utils.face_scene(list(yaws), pitch_deg=8.0, fill=0.95)
    g = torch.Generator().manual_seed(0)
    tex0 = torch.rand((1, 512, 512, 3), generator=g)
    report: dict = {"gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else str(dev),
                    "backend": ctx_gpu.backend, "torch": torch.__version__,
                    "cpu_threads": torch.get_num_threads(), "poses_yaw_deg": list(yaws),
                    "triangles": int(scene["tris"].shape[0]),
                    "vertices": int(scene["pos"].shape[1])}
    for res in resolutions:
        target = torch.rand((len(yaws), res, res, 3), generator=g)
        outs = {}
        for name, ctx, d in (("cpu", ctx_cpu, torch.device("cpu")), ("nvdr", ctx_gpu, dev)):
            pos = scene["pos"].to(d).clone().requires_grad_(True)
            tex = tex0.to(d).clone().requires_grad_(True)
            tris = scene["tris"].to(d)
            rast, uv, col, aa = _pipeline(ctx, pos, tris, scene["uvs"].to(d),
                                          scene["face_uvs"].to(d), tex, res)
            loss = ((aa - target.to(d)) ** 2).mean()
            loss.backward()
            outs[name] = {k: v.detach().cpu() for k, v in
                          (("rast", rast), ("uv", uv), ("col", col), ("aa", aa),
                           ("gpos", pos.grad), ("gtex", tex.grad))}

            def step(ctx=ctx, d=d, tris=tris):
                p = scene["pos"].to(d).clone().requires_grad_(True)
                t = tex0.to(d).clone().requires_grad_(True)
                out = _pipeline(ctx, p, tris, scene["uvs"].to(d), scene["face_uvs"].to(d), t,
                                res)[3]
                ((out - target.to(d)) ** 2).mean().backward()

            for _ in range(2):
                step()
            times = []
            for _ in range(repeats):
                if d.type == "cuda":
                    torch.cuda.synchronize(d)
                t0 = time.perf_counter()
                step()
                if d.type == "cuda":
                    torch.cuda.synchronize(d)
                times.append(time.perf_counter() - t0)
            report[f"{name}_ms_{res}"] = round(statistics.median(times) * 1000, 3)
        a, b = outs["cpu"], outs["nvdr"]
        cov_a = a["rast"][..., 3] > 0
        cov_b = b["rast"][..., 3] > 0
        covered = cov_a | cov_b
        same = (a["rast"][..., 3] == b["rast"][..., 3]) & cov_a
        r = {
            "covered_px": int(covered.sum()),
            "id_mismatch_frac": round(1 - float(same.sum()) / max(1, int(covered.sum())), 5),
            "coverage_mismatch_px": int((cov_a ^ cov_b).sum()),
            "max_abs_u": float((a["rast"][..., 0] - b["rast"][..., 0])[same].abs().max()),
            "max_abs_v": float((a["rast"][..., 1] - b["rast"][..., 1])[same].abs().max()),
            "max_abs_zw": float((a["rast"][..., 2] - b["rast"][..., 2])[same].abs().max()),
            "max_abs_uv_interp": float((a["uv"] - b["uv"])[same].abs().max()),
            "max_abs_texture": float((a["col"] - b["col"])[same].abs().max()),
            "mean_abs_antialias": float((a["aa"] - b["aa"]).abs().mean()),
            "max_abs_antialias": float((a["aa"] - b["aa"]).abs().max()),
            "grad_pos_cos": round(_cos(a["gpos"], b["gpos"]), 5),
            "grad_pos_rel_l2": round(_rel(a["gpos"], b["gpos"]), 5),
            "grad_tex_cos": round(_cos(a["gtex"], b["gtex"]), 5),
            "grad_tex_rel_l2": round(_rel(a["gtex"], b["gtex"]), 5),
        }
        report[f"res_{res}"] = r
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--dry-run", action="store_true", help="cpu vs cpu (no CUDA needed)")
    args = ap.parse_args(argv)
    rep = compare(repeats=args.repeats, **({"device": "cpu", "backend": "cpu"}
                                            if args.dry_run else {}))
    if args.json:
        print(json.dumps(rep))
    else:
        for k, v in rep.items():
            if isinstance(v, dict):
                print(f"{k}:")
                for kk, vv in v.items():
                    print(f"    {kk:<22} {vv}")
            else:
                print(f"{k:<24} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
