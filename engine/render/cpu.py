"""CPU backend: nvdiffrast's rasterize / interpolate / texture / antialias on torch CPU tensors.

Design: a numba visibility pass (``_kernels.py``) decides which triangle covers each pixel
(no gradient). The differentiable values are then computed per pixel by numba forward kernels
wrapped in ``torch.autograd.Function``s whose backward kernels are the exact analytic
derivatives (checked by gradcheck in the tests): rasterize's (u, v, z/w) w.r.t. ``pos``,
interpolate w.r.t. ``attr`` and (u, v), texture w.r.t. ``tex`` and ``uv``. Antialias finds the
silhouette pixel pairs in numba and recomputes the few blended values in torch.
rast_db has a numba forward; its (rarely needed) backward re-derives it with torch autograd.
interpolate's diff_attrs output is computed in torch for the covered pixels only.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from . import _kernels


def _threads() -> int:
    return _kernels._threads()


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


def _scatter(B: int, H: int, W: int, pix: torch.Tensor, vals: torch.Tensor) -> torch.Tensor:
    """Dense (B,H,W,C) zeros with vals (N,C) at the flat pixel indices pix (differentiable)."""
    out = vals.new_zeros((B * H * W, vals.shape[-1]))
    return out.index_copy(0, pix, vals).view(B, H, W, vals.shape[-1])


def _check_pos_tri(pos: torch.Tensor, tri: torch.Tensor) -> None:
    if pos.ndim != 3 or pos.shape[-1] != 4:
        raise ValueError(f"pos must have shape (B, V, 4), got {tuple(pos.shape)}")
    if tri.ndim != 2 or tri.shape[-1] != 3:
        raise ValueError(f"tri must have shape (T, 3), got {tuple(tri.shape)}")
    if tri.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"tri must be an integer tensor (int32), got {tri.dtype}")
    if not pos.is_floating_point():
        raise TypeError(f"pos must be floating point, got {pos.dtype}")


# ---------------------------------------------------------------------------------------------
# rasterize


def rasterize(pos: torch.Tensor, tri: torch.Tensor, resolution: tuple[int, int],
              grad_db: bool = True, band: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """See ``engine.render.rasterize``."""
    _check_pos_tri(pos, tri)
    H, W = int(resolution[0]), int(resolution[1])
    if H <= 0 or W <= 0:
        raise ValueError(f"resolution must be positive, got {resolution}")
    B, V = pos.shape[0], pos.shape[1]
    pos_np = pos.detach().to(torch.float64).contiguous().numpy()
    tri_np = tri.detach().to(torch.int32).contiguous().numpy()
    ids, _, rast_np = _kernels.raster_ids(pos_np, tri_np, H, W, band,
                                          dtype=_np_dtype(pos.dtype))
    rast = _RastFn.apply(pos, pos_np, tri_np, ids, rast_np)
    if not grad_db:
        return rast, pos.new_zeros((B, H, W, 0))
    return rast, _RastDbFn.apply(pos, pos_np, tri_np, ids, tri)


def _rast_db_torch(pos: torch.Tensor, tri: torch.Tensor, ids: np.ndarray) -> torch.Tensor:
    """rast_db computed with torch ops for the covered pixels (used for its gradient)."""
    B, H, W = ids.shape
    V = pos.shape[1]
    flat = torch.from_numpy(ids.reshape(-1))
    pix = torch.nonzero(flat >= 0).squeeze(1)
    tid = flat[pix].long()
    HW = H * W
    bidx = torch.div(pix, HW, rounding_mode="floor")
    rem = pix - bidx * HW
    row = torch.div(rem, W, rounding_mode="floor")
    col = rem - row * W
    dt = pos.dtype
    px = ((2 * col + 1).to(dt) / W - 1).unsqueeze(1)  # (N,1)
    py = ((2 * row + 1).to(dt) / H - 1).unsqueeze(1)
    vi = tri.long()[tid]  # (N,3)
    P = pos.reshape(B * V, 4)[(bidx * V).unsqueeze(1) + vi]  # (N,3,4)
    x, y, _, w = P.unbind(-1)  # each (N,3)
    X = x - px * w
    Y = y - py * w
    Xj, Xk = X.roll(-1, 1), X.roll(-2, 1)
    Yj, Yk = Y.roll(-1, 1), Y.roll(-2, 1)
    e = Xj * Yk - Yj * Xk  # (N,3) unnormalised perspective-correct barycentrics
    S = e.sum(1, keepdim=True)
    # d e_i / d x = Y_j w_k - w_j Y_k ; d e_i / d y = w_j X_k - X_j w_k (clip units)
    wj, wk = w.roll(-1, 1), w.roll(-2, 1)
    dex = Yj * wk - wj * Yk
    dey = wj * Xk - Xj * wk
    dSx = dex.sum(1, keepdim=True)
    dSy = dey.sum(1, keepdim=True)
    e01 = e[:, :2]
    dbx = (dex[:, :2] * S - e01 * dSx) / (S * S) * (2.0 / W)  # per pixel of X
    dby = (dey[:, :2] * S - e01 * dSy) / (S * S) * (2.0 / H)
    db = torch.stack([dbx[:, 0], dby[:, 0], dbx[:, 1], dby[:, 1]], 1)
    return _scatter(B, H, W, pix, db)


class _RastDbFn(torch.autograd.Function):
    """rast_db: numba forward; the backward (rarely needed) re-derives it with torch autograd."""

    @staticmethod
    def forward(ctx, pos, pos_np, tri_np, ids, tri):
        B, H, W = ids.shape
        out = np.empty((B, H, W, 4), _np_dtype(pos.dtype))
        n = _threads()
        _kernels._parallel(lambda k: _kernels.rast_db_fwd(pos_np, tri_np, ids, out, k, n), n)
        ctx.save_for_backward(pos)
        ctx.stuff = (ids, tri)
        return torch.from_numpy(out)

    @staticmethod
    def backward(ctx, grad):
        (pos,) = ctx.saved_tensors
        ids, tri = ctx.stuff
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        with torch.enable_grad():
            p = pos.detach().requires_grad_(True)
            (gpos,) = torch.autograd.grad(_rast_db_torch(p, tri, ids), p, grad)
        return gpos, None, None, None, None


class _RastFn(torch.autograd.Function):
    """(u, v, z/w, id+1) per pixel from pos; backward: exact d/dpos of u, v, z/w."""

    @staticmethod
    def forward(ctx, pos, pos_np, tri_np, ids, rast_np):  # noqa: D401 - autograd signature
        ctx.stuff = (pos_np, tri_np, ids, pos.dtype)
        return torch.from_numpy(rast_np)

    @staticmethod
    def backward(ctx, grad):
        pos_np, tri_np, ids, dtype = ctx.stuff
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        g = _np(grad)
        n = _threads()
        bufs = [np.zeros(pos_np.shape, np.float64) for _ in range(n)]
        _kernels._parallel(
            lambda k: _kernels.rast_bwd(pos_np, tri_np, ids, g, bufs[k], k, n), n)
        gpos = _sum(bufs)
        return torch.from_numpy(gpos).to(dtype), None, None, None, None


def _sum(bufs: list[np.ndarray]) -> np.ndarray:
    out = bufs[0]
    for extra in bufs[1:]:
        out += extra
    return out


def _np_dtype(dt: torch.dtype):
    return np.float64 if dt == torch.float64 else np.float32


# ---------------------------------------------------------------------------------------------
# interpolate


def _rast_pixels(rast: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pix, tid, bidx) of the covered pixels of rast (no gradient)."""
    B, H, W, _ = rast.shape
    tidf = rast.detach().reshape(-1, 4)[:, 3]
    pix = torch.nonzero(tidf > 0).squeeze(1)
    tid = tidf[pix].round().long() - 1
    bidx = torch.div(pix, H * W, rounding_mode="floor")
    return pix, tid, bidx


def interpolate(attr: torch.Tensor, rast: torch.Tensor, tri: torch.Tensor,
                rast_db: torch.Tensor | None = None,
                diff_attrs: list[int] | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """See ``engine.render.interpolate``."""
    B, H, W, _ = rast.shape
    if tri.ndim != 2 or tri.shape[-1] != 3:
        raise ValueError(f"tri must have shape (T, 3), got {tuple(tri.shape)}")
    if attr.ndim == 2:
        attr_b = None
        Va, C = attr.shape
    elif attr.ndim == 3:
        if attr.shape[0] not in (1, B):
            raise ValueError(f"attr batch {attr.shape[0]} does not match rast batch {B}")
        attr_b = attr.shape[0]
        Va, C = attr.shape[1], attr.shape[2]
    else:
        raise ValueError(f"attr must have shape (B, V, C) or (V, C), got {tuple(attr.shape)}")
    if rast.ndim != 4 or rast.shape[-1] != 4:
        raise ValueError(f"rast must have shape (B, H, W, 4), got {tuple(rast.shape)}")
    tri_np = tri.detach().to(torch.int32).contiguous().numpy()
    rast_np = _np(rast)
    if tri_np.size and (tri_np.min() < 0 or tri_np.max() >= Va):
        raise ValueError(f"tri indices must lie in [0, {Va}) for attr with {Va} rows")
    attr3 = attr.reshape(attr_b or 1, Va, C)
    out = _InterpFn.apply(attr3, rast, tri_np, rast_np)
    if diff_attrs is not None and rast_db is not None and rast_db.shape[-1] == 4:
        idx = list(range(C)) if diff_attrs == "all" else [int(i) for i in diff_attrs]
        pix, tid, bidx = _rast_pixels(rast)
        vi = tri.long()[tid]  # (N,3)
        A = attr3.reshape(-1, C)[(bidx * Va).unsqueeze(1) + vi] if attr3.shape[0] > 1 \
            else attr3[0][vi]
        a0, a1, a2 = A.unbind(1)
        d0 = a0 - a2
        d1 = a1 - a2
        db = rast_db.reshape(-1, 4)[pix]
        cols = []
        for i in idx:
            cols.append(db[:, 0] * d0[:, i] + db[:, 2] * d1[:, i])  # dA/dX
            cols.append(db[:, 1] * d0[:, i] + db[:, 3] * d1[:, i])  # dA/dY
        out_da = _scatter(B, H, W, pix, torch.stack(cols, 1))
    else:
        out_da = attr.new_zeros((B, H, W, 0))
    return out, out_da


class _InterpFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, attr3, rast, tri_np, rast_np):
        a = _np(attr3)
        B, H, W, _ = rast_np.shape
        dt = torch.promote_types(attr3.dtype, rast.dtype)
        out = np.empty((B, H, W, a.shape[2]), _np_dtype(dt))
        n = _threads()
        bad = [0] * n

        def run(k: int) -> None:
            bad[k] = _kernels.interp_fwd(a, rast_np, tri_np, out, k, n)

        _kernels._parallel(run, n)
        if sum(bad):
            raise ValueError("rast refers to triangles beyond the given tri (tri must have the "
                             "rasterized triangle count)")
        ctx.stuff = (a, rast_np, tri_np, attr3.dtype, rast.dtype)
        return torch.from_numpy(out)

    @staticmethod
    def backward(ctx, grad):
        a, rast_np, tri_np, adt, rdt = ctx.stuff
        want_a, want_r = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        n = _threads()
        gbufs = [np.zeros(a.shape, np.float64) if want_a else np.zeros((1, 1, 1))
                 for _ in range(n)]
        grast = np.zeros(rast_np.shape, rast_np.dtype) if want_r else np.zeros((1, 1, 1, 4))
        g = _np(grad)
        _kernels._parallel(lambda k: _kernels.interp_bwd(a, rast_np, tri_np, g, gbufs[k], grast,
                                                         want_a, want_r, k, n), n)
        gattr = _sum(gbufs)
        return (torch.from_numpy(gattr).to(adt) if want_a else None,
                torch.from_numpy(grast).to(rdt) if want_r else None, None, None)


# ---------------------------------------------------------------------------------------------
# texture


def texture(tex: torch.Tensor, uv: torch.Tensor, uv_da: torch.Tensor | None = None,
            filter_mode: str = "auto", boundary_mode: str = "wrap") -> torch.Tensor:
    """See ``engine.render.texture``."""
    if tex.ndim != 4:
        raise ValueError(f"tex must have shape (B, Ht, Wt, C), got {tuple(tex.shape)}")
    if uv.ndim != 4 or uv.shape[-1] != 2:
        raise ValueError(f"uv must have shape (B, H, W, 2), got {tuple(uv.shape)}")
    if filter_mode == "auto":
        filter_mode = "linear"
    if filter_mode not in ("linear", "nearest"):
        raise NotImplementedError(
            f"filter_mode {filter_mode!r}: the CPU backend has no mipmaps; use 'linear' or "
            "'nearest' (or the nvdiffrast backend)")
    if boundary_mode not in ("wrap", "clamp", "zero"):
        raise ValueError(f"boundary_mode must be 'wrap', 'clamp' or 'zero', got {boundary_mode!r}")
    B, H, W, _ = uv.shape
    Bt = tex.shape[0]
    if Bt not in (1, B):
        raise ValueError(f"tex batch {Bt} must be 1 or match uv batch {B}")
    mode = {"wrap": 0, "clamp": 1, "zero": 2}[boundary_mode]
    return _TexFn.apply(tex, uv, mode, filter_mode == "nearest")


_NOZERO = (np.zeros((0, 1)), np.zeros((0, 1, 2)))


def _zero_sample(t: np.ndarray, mode: int, nearest: bool) -> tuple[np.ndarray, np.ndarray]:
    """The sample at uv = (0, 0) per texture batch (Bt,C) and its Jacobian w.r.t. uv (Bt,C,2)."""
    Bt, C = t.shape[0], t.shape[3]
    uv0 = np.zeros((Bt, 1, 1, 2), t.dtype)
    out = np.empty((Bt, 1, 1, C), np.float64)
    _kernels.tex_fwd(t, uv0, out, mode, nearest, _NOZERO[0], 0, 1)
    jac = np.zeros((Bt, C, 2))
    if not nearest:
        for c in range(C):
            g = np.zeros((Bt, 1, 1, C))
            g[..., c] = 1.0
            guv = np.zeros((Bt, 1, 1, 2))
            _kernels.tex_bwd(t, uv0, g, np.zeros((1, 1, 1, 1)), guv, mode, nearest, False, True,
                             *_NOZERO, 0, 1)
            jac[:, c, :] = guv[:, 0, 0, :]
    return out[:, 0, 0, :], jac


class _TexFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tex, uv, mode, nearest):
        t = _np(tex)
        u = _np(uv)
        B, H, W, _ = u.shape
        dt = torch.promote_types(tex.dtype, uv.dtype)
        out = np.empty((B, H, W, t.shape[3]), _np_dtype(dt))
        zero, jac = _zero_sample(t, mode, nearest)
        n = _threads()
        _kernels._parallel(lambda k: _kernels.tex_fwd(t, u, out, mode, nearest, zero, k, n), n)
        ctx.stuff = (t, u, mode, nearest, tex.dtype, uv.dtype, jac)
        return torch.from_numpy(out)

    @staticmethod
    def backward(ctx, grad):
        t, u, mode, nearest, tdt, udt, jac = ctx.stuff
        want_t, want_u = ctx.needs_input_grad[0], ctx.needs_input_grad[1] and not nearest
        gtex = np.zeros(t.shape, t.dtype) if want_t else np.zeros((1, 1, 1, 1))
        guv = np.zeros(u.shape, u.dtype) if want_u else np.zeros((1, 1, 1, 2))
        if want_t or want_u:
            # one gradient buffer per thread, unless the texture is much larger than the image
            # (zeroing and summing the buffers would then cost more than the threads save)
            n = _threads() if t.size <= 4 * grad.numel() else 1
            g = _np(grad)
            gz = [np.zeros((t.shape[0], t.shape[3])) for _ in range(n)]
            gt = [gtex] + [np.zeros_like(gtex) for _ in range(n - 1)]
            _kernels._parallel(lambda k: _kernels.tex_bwd(t, u, g, gt[k], guv, mode, nearest,
                                                          want_t, want_u, gz[k], jac, k, n), n)
            gtex = _sum(gt)
            gzero = _sum(gz)
            if want_t:  # the (0, 0) pixels' total, through the (0, 0) sample once
                uv0 = np.zeros((t.shape[0], 1, 1, 2), t.dtype)
                _kernels.tex_bwd(t, uv0, gzero.reshape(t.shape[0], 1, 1, -1), gtex,
                                 np.zeros((1, 1, 1, 2)), mode, nearest, True, False, *_NOZERO,
                                 0, 1)
        return (torch.from_numpy(gtex).to(tdt) if want_t else None,
                torch.from_numpy(guv).to(udt) if want_u else None, None, None)


# ---------------------------------------------------------------------------------------------
# antialias

_TOPO_CACHE: dict[tuple, np.ndarray] = {}


def edge_neighbours(tri_np: np.ndarray) -> np.ndarray:
    """opp (T,3) int32: the triangle across edge k = (tri[t,k], tri[t,(k+1)%3]), -1 on a
    boundary edge, -2 on a non-manifold edge (shared by more than two triangles)."""
    T = tri_np.shape[0]
    a = tri_np.astype(np.int64)
    e0 = np.stack([a[:, 0], a[:, 1], a[:, 2]], 1).reshape(-1)
    e1 = np.stack([a[:, 1], a[:, 2], a[:, 0]], 1).reshape(-1)
    lo = np.minimum(e0, e1)
    hi = np.maximum(e0, e1)
    key = lo * (int(a.max(initial=0)) + 1) + hi
    order = np.argsort(key, kind="stable")
    ks = key[order]
    opp = np.full(3 * T, -1, np.int64)
    if ks.size:
        start = np.r_[True, ks[1:] != ks[:-1]]
        starts = np.flatnonzero(start)
        counts = np.diff(np.r_[starts, ks.size])
        two = starts[counts == 2]
        opp[order[two]] = order[two + 1] // 3
        opp[order[two + 1]] = order[two] // 3
        many = np.repeat(counts > 2, counts)
        opp[order[many]] = -2
    return opp.reshape(T, 3).astype(np.int32)


def _topology(tri: torch.Tensor, topology_hash=None) -> np.ndarray:
    tri_np = tri.detach().to(torch.int32).contiguous().numpy()
    key = (tri_np.shape, hashlib.blake2b(tri_np.tobytes(), digest_size=16).digest())
    opp = _TOPO_CACHE.get(key)
    if opp is None:
        if len(_TOPO_CACHE) > 16:
            _TOPO_CACHE.clear()
        opp = edge_neighbours(tri_np)
        _TOPO_CACHE[key] = opp
    return opp


def antialias(color: torch.Tensor, rast: torch.Tensor, pos: torch.Tensor, tri: torch.Tensor,
              topology_hash=None, pos_gradient_boost: float = 1.0) -> torch.Tensor:
    """See ``engine.render.antialias``."""
    _check_pos_tri(pos, tri)
    if color.ndim != 4 or color.shape[:3] != rast.shape[:3]:
        raise ValueError(f"color {tuple(color.shape)} must be (B, H, W, C) like rast "
                         f"{tuple(rast.shape)}")
    B, H, W, C = color.shape
    Bp, V = pos.shape[0], pos.shape[1]
    if Bp not in (1, B):
        raise ValueError(f"pos batch {Bp} must be 1 or match color batch {B}")
    opp = _topology(tri, topology_hash)
    rast_np = _np(rast)
    pos_np = pos.detach().to(torch.float64).contiguous().numpy()
    if Bp == 1 and B > 1:
        pos_np = np.broadcast_to(pos_np, (B,) + pos_np.shape[1:]).copy()
    tri_np = tri.detach().to(torch.int32).contiguous().numpy()
    pairs = _kernels.aa_pairs(rast_np, pos_np, tri_np, opp)
    if pairs.shape[0] == 0:
        return color.clone()
    pr = torch.from_numpy(pairs)
    b, fpix, bpix, t, k, axis = pr.unbind(1)
    tl = tri.long()
    va = tl[t, k]
    vb = tl[t, (k + 1) % 3]
    pb = b if Bp > 1 else torch.zeros_like(b)
    P = pos.reshape(Bp * V, 4)
    if pos_gradient_boost != 1.0:
        P = _GradScale.apply(P, float(pos_gradient_boost))
    pa = P[pb * V + va]
    pbv = P[pb * V + vb]
    # pixel coordinates (pixel j's centre at X = j + 0.5)
    ax = (pa[:, 0] / pa[:, 3] + 1) * (0.5 * W)
    ay = (pa[:, 1] / pa[:, 3] + 1) * (0.5 * H)
    bx = (pbv[:, 0] / pbv[:, 3] + 1) * (0.5 * W)
    by = (pbv[:, 1] / pbv[:, 3] + 1) * (0.5 * H)
    frow = torch.div(fpix, W, rounding_mode="floor")
    fcol = fpix - frow * W
    brow = torch.div(bpix, W, rounding_mode="floor")
    bcol = bpix - brow * W
    dt = pos.dtype
    fr = frow.to(dt) + 0.5
    fc = fcol.to(dt) + 0.5
    horiz = axis == 0
    d = torch.where(horiz, (bcol - fcol), (brow - frow)).to(dt)
    # along the pair's axis: coordinate "s" of the edge where it crosses the other axis' line
    a_par = torch.where(horiz, ax, ay)
    b_par = torch.where(horiz, bx, by)
    a_perp = torch.where(horiz, ay, ax)
    b_perp = torch.where(horiz, by, bx)
    line = torch.where(horiz, fr, fc)
    start = torch.where(horiz, fc, fr)
    u = (line - a_perp) / (b_perp - a_perp)
    cross = a_par + u * (b_par - a_par)
    s = (cross - start) * d  # front coverage extends s pixels from the front centre
    far = (s.detach() >= 0.5)
    # pixel boxes are 1 pixel wide: past the midpoint the front colour covers (s - 0.5) of the
    # back pixel; before it, the back colour shows over (0.5 - s) of the front pixel
    flat = color.reshape(B * H * W, C)
    gf = b * (H * W) + fpix
    gb = b * (H * W) + bpix
    cf = flat[gf]
    cb = flat[gb]
    wgt = torch.where(far, s - 0.5, 0.5 - s).unsqueeze(1).to(color.dtype)
    tgt = torch.where(far, gb, gf)
    delta = torch.where(far.unsqueeze(1), cf - cb, cb - cf) * wgt
    out = flat.index_add(0, tgt, delta)
    return out.view(B, H, W, C)


class _GradScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, k):
        ctx.k = k
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g * ctx.k, None
