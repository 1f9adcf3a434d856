"""engine.render: nvdiffrast (CUDA) vs the cpu backend. Skipped without CUDA or nvdiffrast."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from engine import render

pytestmark = pytest.mark.gpu

CHECK = Path(__file__).resolve().parents[1] / "gpu" / "check_nvdiffrast.py"


def _check_module():
    spec = importlib.util.spec_from_file_location("check_nvdiffrast", CHECK)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.skipif(not render.nvdiffrast_available(), reason="needs nvdiffrast")
def test_nvdiffrast_matches_cpu_backend():
    rep = _check_module().compare(resolutions=(256,), repeats=3)
    r = rep["res_256"]
    print(rep)
    assert r["id_mismatch_frac"] < 0.02
    assert r["max_abs_u"] < 1e-2 and r["max_abs_v"] < 1e-2 and r["max_abs_zw"] < 1e-3
    assert r["max_abs_uv_interp"] < 1e-2
    assert r["mean_abs_antialias"] < 0.01
    assert r["grad_tex_cos"] > 0.95
    assert r["grad_pos_cos"] > 0.5


def test_nvdiffrast_backend_needs_cuda_and_package():
    if render.nvdiffrast_available() and torch.cuda.is_available():
        assert render.create_context("cuda").backend == "nvdiffrast"
    else:
        with pytest.raises(render.NvdiffrastUnavailable):
            render.create_context("cuda" if torch.cuda.is_available() else "cpu", "nvdiffrast")
