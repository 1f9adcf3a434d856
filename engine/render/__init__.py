"""Differentiable rasterizer with nvdiffrast's API and semantics, and two backends.

Usage mirrors ``nvdiffrast.torch``::

    ctx = render.create_context("cpu")
    rast, rast_db = render.rasterize(ctx, pos, tri, (H, W))
    uv, _ = render.interpolate(uvs, rast, face_uvs)
    color = render.texture(tex, uv, filter_mode="linear")
    color = render.antialias(color, rast, pos, tri)

Backends:

- ``cpu``: numba visibility pass + torch recomputation of everything differentiable
  (``cpu.py``). Exact autograd gradients of u, v, z/w w.r.t. ``pos``.
- ``nvdiffrast``: pass-through to ``nvdiffrast.torch`` (CUDA only, optional, NVIDIA
  non-commercial licence; imported lazily, never required).

Conventions (the same as nvdiffrast):

- ``pos`` is clip space (B,V,4); pixel (row i, col j) samples ``x = (2j+1)/W - 1``,
  ``y = (2i+1)/H - 1``: row 0 is clip y = -1 (so flip y in the projection if the image's top
  row must be the top of the head).
- ``rast[..., 0:2] = (u, v)`` perspective-correct barycentrics: u weighs the triangle's vertex 0,
  v vertex 1, 1-u-v vertex 2; ``rast[..., 2] = z/w``; ``rast[..., 3] = triangle index + 1``
  (0 = empty, as float32, exact up to 2**24 triangles).
- No back-face culling, either winding draws. Nearest z/w wins. Points with w <= 0 or z/w
  outside [-1, 1] are never drawn (clipping is exact per pixel).
- ``rast_db = (du/dX, du/dY, dv/dX, dv/dY)`` in pixel units (X = columns, Y = rows); on the cpu
  backend it is computed in torch and is differentiable w.r.t. ``pos``. Pass ``grad_db=False``
  when no mipmapping / ``diff_attrs`` is needed: it saves most of its cost.
- Winding: either winding draws (no culling). Pixel (col, row) coordinates are clip x/w, y/w
  scaled by +W/2, +H/2, so signed areas have the same sign in both. With
  ``utils.perspective(flip_y=True)`` (row 0 = top of the head) the face model's front-facing
  triangles have negative signed area in clip x/y, i.e. they look counter-clockwise in the
  image as displayed (row 0 at the top), like the mesh seen from the front. Antialias finds
  silhouettes from the screen-space facing of neighbouring triangles, so it needs a
  consistently wound mesh (the face model is) but not a particular winding.

CPU backend notes: the first call compiles numba kernels (about 10 s, cached on disk after
that, in ``__pycache__`` or numba's user cache). Kernels split images by rows over
``torch.get_num_threads()`` Python threads (they release the GIL). The texture has no mipmaps
(``filter_mode`` 'linear'/'nearest'/'auto'=linear; mipmapped modes raise NotImplementedError).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from . import cpu as _cpu
from . import nvdr as _nvdr
from .nvdr import NvdiffrastUnavailable

__all__ = ["RenderContext", "create_context", "rasterize", "interpolate", "texture",
           "antialias", "NvdiffrastUnavailable", "nvdiffrast_available"]


@dataclass
class RenderContext:
    """What `create_context` returns. ``backend`` is 'cpu' or 'nvdiffrast'."""

    backend: str
    device: torch.device
    raw: Any = field(default=None, repr=False)  # nvdiffrast's RasterizeCudaContext


def nvdiffrast_available() -> bool:
    """True when ``nvdiffrast.torch`` imports (it still needs a CUDA device to run)."""
    return _nvdr.available()


def create_context(device: torch.device | str = "cpu", backend: str = "auto") -> RenderContext:
    """Make a rasterizer context.

    Args:
        device: where the tensors live. The cpu backend also accepts CUDA tensors (it computes
            on the CPU and moves results back), which is slow but correct.
        backend: 'auto' (nvdiffrast when it imports and ``device`` is CUDA, else 'cpu'), 'cpu'
            or 'nvdiffrast' (raises `NvdiffrastUnavailable` if it cannot be used).
    Returns:
        A `RenderContext` with ``.backend`` in {'cpu', 'nvdiffrast'}.
    """
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if backend == "auto":
        backend = "nvdiffrast" if device.type == "cuda" and _nvdr.available() else "cpu"
    if backend == "cpu":
        return RenderContext("cpu", device)
    if backend == "nvdiffrast":
        return RenderContext("nvdiffrast", device, _nvdr.make_context(device))
    raise ValueError(f"backend must be 'auto', 'cpu' or 'nvdiffrast', got {backend!r}")


def _use_nvdr(t: torch.Tensor) -> bool:
    return t.is_cuda and _nvdr.available()


def rasterize(ctx: RenderContext, pos: torch.Tensor, tri: torch.Tensor,
              resolution: tuple[int, int], grad_db: bool = True
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rasterize triangles.

    Args:
        ctx: from `create_context`.
        pos: (B,V,4) float32 clip-space vertex positions (differentiable).
        tri: (T,3) int32 vertex indices.
        resolution: (H, W).
        grad_db: also return the image-space derivatives of the barycentrics.
    Returns:
        rast: (B,H,W,4) float32 (u, v, z/w, triangle index + 1); 0 where empty. Differentiable
            w.r.t. ``pos`` through u, v and z/w.
        rast_db: (B,H,W,4) (du/dX, du/dY, dv/dX, dv/dY) in pixel units, or (B,H,W,0) when
            ``grad_db`` is False.
    """
    if ctx.backend == "nvdiffrast":
        return _nvdr.rasterize(ctx.raw, pos, tri, resolution, grad_db=grad_db)
    if pos.is_cuda:
        rast, db = _cpu.rasterize(pos.cpu(), tri.cpu(), resolution, grad_db=grad_db)
        return rast.to(pos.device), db.to(pos.device)
    return _cpu.rasterize(pos, tri, resolution, grad_db=grad_db)


def interpolate(attr: torch.Tensor, rast: torch.Tensor, tri: torch.Tensor,
                rast_db: torch.Tensor | None = None,
                diff_attrs: list[int] | str | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Interpolate vertex attributes with the barycentrics of ``rast``.

    Args:
        attr: (B,V,C) or (V,C) float attributes (differentiable); B may be 1 to broadcast.
        rast: (B,H,W,4) from `rasterize` (differentiable through u, v).
        tri: (T,3) int32 indices into ``attr``; may differ from the rasterized index buffer
            (e.g. per-corner UV indices) but must have the same triangle count and order.
        rast_db: rasterize's second output, needed only with ``diff_attrs``.
        diff_attrs: 'all' or a list of attribute channels whose image-space derivatives to
            return.
    Returns:
        out: (B,H,W,C), 0 where empty.
        out_da: (B,H,W,2*len(diff_attrs)) as (dA/dX, dA/dY) per channel, or (B,H,W,0).
    """
    if _use_nvdr(rast):
        return _nvdr.interpolate(attr, rast, tri, rast_db=rast_db, diff_attrs=diff_attrs)
    if rast.is_cuda:
        out, da = _cpu.interpolate(attr.cpu(), rast.cpu(), tri.cpu(),
                                   None if rast_db is None else rast_db.cpu(), diff_attrs)
        return out.to(rast.device), da.to(rast.device)
    return _cpu.interpolate(attr, rast, tri, rast_db=rast_db, diff_attrs=diff_attrs)


def texture(tex: torch.Tensor, uv: torch.Tensor, uv_da: torch.Tensor | None = None,
            filter_mode: str = "auto", boundary_mode: str = "wrap") -> torch.Tensor:
    """Sample a texture.

    Args:
        tex: (B,Ht,Wt,C) or (1,Ht,Wt,C) float (differentiable).
        uv: (B,H,W,2) float texture coordinates (differentiable): texel centres at
            ((i+0.5)/Wt, (j+0.5)/Ht); v = 0 is the first row of ``tex`` memory.
        uv_da: ignored by the cpu backend (no mipmaps); passed to nvdiffrast.
        filter_mode: 'linear' (bilinear), 'nearest', or 'auto' (= 'linear' on cpu; nvdiffrast
            picks a mipmapped filter when ``uv_da`` is given). Mipmapped modes raise
            NotImplementedError on cpu.
        boundary_mode: 'wrap', 'clamp' or 'zero'.
    Returns:
        (B,H,W,C) sampled colours.
    """
    if _use_nvdr(uv):
        return _nvdr.texture(tex, uv, uv_da=uv_da, filter_mode=filter_mode,
                             boundary_mode=boundary_mode)
    if uv.is_cuda:
        return _cpu.texture(tex.cpu(), uv.cpu(), None, filter_mode,
                            boundary_mode).to(uv.device)
    return _cpu.texture(tex, uv, uv_da, filter_mode=filter_mode, boundary_mode=boundary_mode)


def antialias(color: torch.Tensor, rast: torch.Tensor, pos: torch.Tensor, tri: torch.Tensor,
              topology_hash: Any = None, pos_gradient_boost: float = 1.0) -> torch.Tensor:
    """Analytic antialiasing of silhouette edges, differentiable w.r.t. ``color`` and ``pos``.

    For each horizontally or vertically adjacent pixel pair with different triangle ids, the
    front pixel's triangle (the covered one, or the one with the smaller z/w) is checked for a
    silhouette edge (a mesh boundary edge, a non-manifold edge, or an edge whose neighbour
    triangle faces the other way on screen) that crosses the segment between the two pixel
    centres. Mostly-vertical edges (|dY| >= |dX| on screen) are handled by horizontal pairs
    only, mostly-horizontal ones by vertical pairs only, so no edge is blended twice. With s in
    [0, 1] the crossing's distance from the front centre (computed in torch from ``pos``), each
    pixel is treated as a 1-pixel-wide box along the pair's axis: if s > 0.5 the back pixel
    gets ``(s - 0.5) * (c_front - c_back)``, else the front pixel gets
    ``(0.5 - s) * (c_back - c_front)``. Contributions of all pairs add up (colours are the
    un-antialiased inputs).

    Approximation: a 1D box coverage per pixel row/column (exact for axis-aligned edges; it
    ignores the edge's slope inside the pixel), no gradient from edges with a vertex behind the
    camera, and the rendered z/w decides which side of an occlusion boundary is in front. The
    gradient w.r.t. ``pos`` at the outline is d(area swept)/d(pos) in this model, e.g. exactly
    the edge's pixel length per pixel of sideways translation.

    Args:
        color: (B,H,W,C) float (differentiable).
        rast: (B,H,W,4) from `rasterize` with the same ``pos`` and ``tri``.
        pos: (B,V,4) clip-space positions (differentiable).
        tri: (T,3) int32.
        topology_hash: accepted for nvdiffrast compatibility; the cpu backend caches the edge
            topology by the content of ``tri``.
        pos_gradient_boost: multiplies the gradient w.r.t. ``pos``.
    Returns:
        (B,H,W,C) antialiased colours.
    """
    if _use_nvdr(color):
        return _nvdr.antialias(color, rast, pos, tri, topology_hash=topology_hash,
                               pos_gradient_boost=pos_gradient_boost)
    if color.is_cuda:
        return _cpu.antialias(color.cpu(), rast.cpu(), pos.cpu(), tri.cpu(),
                              pos_gradient_boost=pos_gradient_boost).to(color.device)
    return _cpu.antialias(color, rast, pos, tri, pos_gradient_boost=pos_gradient_boost)
