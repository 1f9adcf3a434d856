"""nvdiffrast backend: a thin pass-through to ``nvdiffrast.torch`` (CUDA only).

nvdiffrast has its own non-commercial licence (NVIDIA Source Code License), so it is never a
dependency: it is imported lazily, only when a CUDA context asks for it.
"""

from __future__ import annotations

import torch


class NvdiffrastUnavailable(RuntimeError):
    """nvdiffrast.torch cannot be imported (or the device is not CUDA)."""


def import_dr():
    """Return the ``nvdiffrast.torch`` module or raise `NvdiffrastUnavailable`."""
    try:
        import nvdiffrast.torch as dr  # noqa: PLC0415 - optional, lazy by design
    except Exception as exc:  # ImportError, or a failing CUDA extension build
        raise NvdiffrastUnavailable(
            "backend 'nvdiffrast' needs the optional package nvdiffrast (CUDA only, NVIDIA "
            "non-commercial licence); install it (e.g. `pip install diffrp-nvdiffrast`) or use "
            f"backend='cpu' ({type(exc).__name__}: {exc})") from exc
    return dr


def available() -> bool:
    try:
        import_dr()
    except NvdiffrastUnavailable:
        return False
    return True


def make_context(device: torch.device):
    if device.type != "cuda":
        raise NvdiffrastUnavailable(f"backend 'nvdiffrast' needs a CUDA device, got {device}")
    dr = import_dr()
    return dr.RasterizeCudaContext(device=device)


def rasterize(raw_ctx, pos, tri, resolution, grad_db=True):
    dr = import_dr()
    return dr.rasterize(raw_ctx, pos.contiguous(), tri.to(torch.int32).contiguous(),
                        resolution=[int(resolution[0]), int(resolution[1])], grad_db=grad_db)


def interpolate(attr, rast, tri, rast_db=None, diff_attrs=None):
    dr = import_dr()
    return dr.interpolate(attr.contiguous(), rast, tri.to(torch.int32).contiguous(),
                          rast_db=rast_db, diff_attrs=diff_attrs)


def texture(tex, uv, uv_da=None, filter_mode="auto", boundary_mode="wrap"):
    dr = import_dr()
    if tex.shape[0] == 1 and uv.shape[0] > 1:  # the cpu backend broadcasts a single texture
        tex = tex.expand(uv.shape[0], -1, -1, -1)
    return dr.texture(tex.contiguous(), uv.contiguous(), uv_da=uv_da, filter_mode=filter_mode,
                      boundary_mode=boundary_mode)


def antialias(color, rast, pos, tri, topology_hash=None, pos_gradient_boost=1.0):
    dr = import_dr()
    return dr.antialias(color.contiguous(), rast, pos.contiguous(),
                        tri.to(torch.int32).contiguous(), topology_hash=topology_hash,
                        pos_gradient_boost=pos_gradient_boost)
