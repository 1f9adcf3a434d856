"""Numba kernels of the CPU renderer.

* Discrete passes with no gradient: the visibility pass (``raster_ids``: which triangle covers a
  pixel) and the antialias edge search (``aa_pairs``: which pixel pairs straddle a silhouette).
* Per-pixel forward kernels of the differentiable values and their hand-written backward
  kernels, the exact analytic derivatives (``cpu.py`` wraps each pair in a
  ``torch.autograd.Function``; the tests gradcheck them): rasterize (``rast_bwd``), interpolate
  (``interp_fwd``/``interp_bwd``), texture (``tex_fwd``/``tex_bwd``) and ``rast_db_fwd`` (whose
  backward is torch autograd on a re-derivation, ``cpu._rast_db_torch``).

Conventions (the same as nvdiffrast): pixel (row i, col j) samples the clip-space point
``x = (2j+1)/W - 1``, ``y = (2i+1)/H - 1``. Coverage uses homogeneous 2D rasterization: for a
pixel ray ``r = (x, y, 1)`` and the triangle's vertices ``V_k = (x_k, y_k, w_k)`` the
unnormalised perspective-correct barycentrics are ``e_i = X_j*Y_k - Y_j*X_k`` with
``X = x_k - x*w_k``, ``Y = y_k - y*w_k`` ((i, j, k) cyclic). A pixel is covered when all
``e_i`` have the sign of ``det = sum(e_i*w_i)`` (so the point lies inside the triangle *and*
in front of the camera, w > 0); the depth is ``sum(e_i*z_i)/det`` and must lie in [-1, 1].
This clips triangles that cross w = 0 or the near/far planes exactly at the pixel level, with no
polygon clipping and no back-face culling.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from numba import njit

# Coefficients stored per (batch, triangle): e_i = A_i*x + B_i*y + C_i for i in 0..2 (9), the
# depth numerator D = Dx*x + Dy*y + Dc (3), 1/|det| (1), and the row/col bbox (4, as floats).
_NCOEF = 17


@njit(cache=True, nogil=True)
def _setup(pos: np.ndarray, tri: np.ndarray, H: int, W: int, out: np.ndarray, k0: int,
           k1: int, step: int) -> None:
    T = tri.shape[0]
    V = pos.shape[1]
    for k in range(k0, k1, step):
        b = k // T
        t = k % T
        c = out[b, t]
        c[13] = 1.0  # row0 > row1 marks "skip"
        c[14] = 0.0
        i0 = tri[t, 0]
        i1 = tri[t, 1]
        i2 = tri[t, 2]
        if i0 < 0 or i1 < 0 or i2 < 0 or i0 >= V or i1 >= V or i2 >= V:
            continue
        x0 = pos[b, i0, 0]; y0 = pos[b, i0, 1]; z0 = pos[b, i0, 2]; w0 = pos[b, i0, 3]
        x1 = pos[b, i1, 0]; y1 = pos[b, i1, 1]; z1 = pos[b, i1, 2]; w1 = pos[b, i1, 3]
        x2 = pos[b, i2, 0]; y2 = pos[b, i2, 1]; z2 = pos[b, i2, 2]; w2 = pos[b, i2, 3]
        if w0 <= 0.0 and w1 <= 0.0 and w2 <= 0.0:
            continue  # wholly behind the camera
        if (z0 > w0 and z1 > w1 and z2 > w2) or (z0 < -w0 and z1 < -w1 and z2 < -w2):
            continue  # wholly beyond the far plane or before the near plane
        # e_i(x, y) = (V_j x V_k) . (x, y, 1)
        a0 = y1 * w2 - w1 * y2; b0 = w1 * x2 - x1 * w2; c0 = x1 * y2 - y1 * x2
        a1 = y2 * w0 - w2 * y0; b1 = w2 * x0 - x2 * w0; c1 = x2 * y0 - y2 * x0
        a2 = y0 * w1 - w0 * y1; b2 = w0 * x1 - x0 * w1; c2 = x0 * y1 - y0 * x1
        det = x0 * a0 + y0 * b0 + w0 * c0
        if not (abs(det) > 0.0) or not math.isfinite(det):
            continue  # zero area (or edge-on through the eye): never drawn
        s = 1.0 if det > 0.0 else -1.0
        c[0] = s * a0; c[1] = s * b0; c[2] = s * c0
        c[3] = s * a1; c[4] = s * b1; c[5] = s * c1
        c[6] = s * a2; c[7] = s * b2; c[8] = s * c2
        c[9] = s * (a0 * z0 + a1 * z1 + a2 * z2)
        c[10] = s * (b0 * z0 + b1 * z1 + b2 * z2)
        c[11] = s * (c0 * z0 + c1 * z1 + c2 * z2)
        c[12] = 1.0 / abs(det)
        if w0 > 0.0 and w1 > 0.0 and w2 > 0.0:
            # pixel j's centre is at X = j + 0.5 in pixel units, X = (x/w + 1) * W/2
            X0 = (x0 / w0 + 1.0) * 0.5 * W - 0.5
            X1 = (x1 / w1 + 1.0) * 0.5 * W - 0.5
            X2 = (x2 / w2 + 1.0) * 0.5 * W - 0.5
            Y0 = (y0 / w0 + 1.0) * 0.5 * H - 0.5
            Y1 = (y1 / w1 + 1.0) * 0.5 * H - 0.5
            Y2 = (y2 / w2 + 1.0) * 0.5 * H - 0.5
            cmin = math.ceil(min(X0, min(X1, X2)))
            cmax = math.floor(max(X0, max(X1, X2)))
            rmin = math.ceil(min(Y0, min(Y1, Y2)))
            rmax = math.floor(max(Y0, max(Y1, Y2)))
            if not (math.isfinite(cmin) and math.isfinite(cmax) and math.isfinite(rmin)
                    and math.isfinite(rmax)):
                continue
            cmin = max(cmin, 0.0); rmin = max(rmin, 0.0)
            cmax = min(cmax, W - 1.0); rmax = min(rmax, H - 1.0)
        else:
            # crosses w = 0: the projection is unbounded, scan the whole image
            cmin = 0.0; rmin = 0.0; cmax = W - 1.0; rmax = H - 1.0
        c[13] = rmin; c[14] = rmax; c[15] = cmin; c[16] = cmax


@njit(cache=True, nogil=True)
def _bin(coef: np.ndarray, H: int, band: int) -> tuple[np.ndarray, np.ndarray]:
    """Triangles per (batch, row band), in triangle order: (start (B*nb+1,), list)."""
    B = coef.shape[0]
    T = coef.shape[1]
    nb = (H + band - 1) // band
    count = np.zeros(B * nb + 1, np.int64)
    for b in range(B):
        for t in range(T):
            rmin = int(coef[b, t, 13]); rmax = int(coef[b, t, 14])
            if rmin > rmax or coef[b, t, 15] > coef[b, t, 16]:
                continue
            for k in range(rmin // band, rmax // band + 1):
                count[b * nb + k + 1] += 1
    for k in range(B * nb):
        count[k + 1] += count[k]
    fill = count[:-1].copy()
    lst = np.empty(count[-1], np.int32)
    for b in range(B):
        for t in range(T):
            rmin = int(coef[b, t, 13]); rmax = int(coef[b, t, 14])
            if rmin > rmax or coef[b, t, 15] > coef[b, t, 16]:
                continue
            for k in range(rmin // band, rmax // band + 1):
                lst[fill[b * nb + k]] = t
                fill[b * nb + k] += 1
    return count, lst


@njit(cache=True, nogil=True)
def _scan(coef: np.ndarray, start: np.ndarray, lst: np.ndarray, H: int, W: int, band: int,
          out_id: np.ndarray, out_z: np.ndarray, out_r: np.ndarray, k0: int,
          step: int) -> None:
    B = coef.shape[0]
    nb = (H + band - 1) // band
    for k in range(k0, B * nb, step):
        b = k // nb
        r0 = (k % nb) * band
        r1 = min(H, r0 + band)  # exclusive
        for i in range(r0, r1):
            for j in range(W):
                out_id[b, i, j] = -1
                out_z[b, i, j] = np.inf
                out_r[b, i, j, 0] = 0.0; out_r[b, i, j, 1] = 0.0
                out_r[b, i, j, 2] = 0.0; out_r[b, i, j, 3] = 0.0
        for m in range(start[k], start[k + 1]):
            t = lst[m]
            c = coef[b, t]
            rmin = int(c[13]); rmax = int(c[14])
            cmin = int(c[15]); cmax = int(c[16])
            ra = max(rmin, r0); rb = min(rmax, r1 - 1)
            for i in range(ra, rb + 1):
                py = (2.0 * i + 1.0) / H - 1.0
                e0r = c[1] * py + c[2]
                e1r = c[4] * py + c[5]
                e2r = c[7] * py + c[8]
                dr = c[10] * py + c[11]
                for j in range(cmin, cmax + 1):
                    px = (2.0 * j + 1.0) / W - 1.0
                    e0 = c[0] * px + e0r
                    if e0 < 0.0:
                        continue
                    e1 = c[3] * px + e1r
                    if e1 < 0.0:
                        continue
                    e2 = c[6] * px + e2r
                    if e2 < 0.0:
                        continue
                    if not (e0 + e1 + e2 > 0.0):
                        continue
                    z = (c[9] * px + dr) * c[12]
                    if z < -1.0 or z > 1.0:
                        continue
                    if z < out_z[b, i, j]:
                        out_z[b, i, j] = z
                        out_id[b, i, j] = t
                        S = e0 + e1 + e2
                        out_r[b, i, j, 0] = e0 / S
                        out_r[b, i, j, 1] = e1 / S
                        out_r[b, i, j, 2] = z
                        out_r[b, i, j, 3] = t + 1.0


def _threads() -> int:
    """Kernel threads: $GANFIT_RENDER_THREADS, else half of torch's threads (at most 8).

    Half, because torch's OpenMP workers keep spinning for a while after each torch op (the
    process then burns about 2x its wall time in CPU): on the 2-core test machine a second
    kernel thread gained nothing measurable. Larger machines get up to 8."""
    v = os.environ.get("GANFIT_RENDER_THREADS", "")
    if v.strip().isdigit():
        return max(1, int(v))
    return max(1, min(torch.get_num_threads() // 2, 8))


_POOL: ThreadPoolExecutor | None = None


def _parallel(fn, n: int) -> None:
    """Run fn(i) for i in range(n) on the calling thread plus a small pool.

    The kernels release the GIL (nogil). A plain thread pool is used instead of numba's
    parallel=True: numba's OpenMP workers spin after each parallel region and fight torch's
    own OpenMP threads for the cores, which made timings erratic on 2 cores.
    """
    global _POOL
    if n <= 1:
        fn(0)
        return
    if _POOL is None or _POOL._max_workers < n - 1:
        _POOL = ThreadPoolExecutor(max_workers=n - 1, thread_name_prefix="ganfit-raster")
    futs = [_POOL.submit(fn, i) for i in range(1, n)]
    fn(0)
    for f in futs:
        f.result()


def raster_ids(pos: np.ndarray, tri: np.ndarray, H: int, W: int, band: int = 16,
               threads: int | None = None, dtype=np.float32
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Visibility pass. pos (B,V,4) float64 clip space, tri (T,3) int32.

    Returns (ids (B,H,W) int32 with -1 where empty, depth z/w (B,H,W) float64, inf where empty,
    rast (B,H,W,4) `dtype` = (u, v, z/w, id+1), zeros where empty).
    Ties in depth keep the lower triangle index (deterministic, whatever the thread count).
    """
    B = pos.shape[0]
    T = tri.shape[0]
    n = _threads() if threads is None else max(1, int(threads))
    coef = np.empty((B, T, _NCOEF), np.float64)
    ids = np.empty((B, H, W), np.int32)
    z = np.empty((B, H, W), np.float64)
    _parallel(lambda i: _setup(pos, tri, H, W, coef, i, B * T, n), n)
    # interleaved bands balance the load (the face sits in the middle rows)
    start, lst = _bin(coef, H, band)
    rast = np.empty((B, H, W, 4), dtype)
    _parallel(lambda i: _scan(coef, start, lst, H, W, band, ids, z, rast, i, n), n)
    return ids, z, rast


@njit(cache=True, nogil=True)
def _screen(pos: np.ndarray, b: int, v: int, H: int, W: int) -> tuple[float, float, bool]:
    w = pos[b, v, 3]
    if not (w > 0.0):
        return 0.0, 0.0, False
    return (pos[b, v, 0] / w + 1.0) * 0.5 * W, (pos[b, v, 1] / w + 1.0) * 0.5 * H, True


@njit(cache=True, nogil=True)
def _facing(pos: np.ndarray, tri: np.ndarray, b: int, t: int) -> float:
    """Sign of the triangle's screen-space signed area (0 when it has a vertex behind)."""
    i0 = tri[t, 0]; i1 = tri[t, 1]; i2 = tri[t, 2]
    w0 = pos[b, i0, 3]; w1 = pos[b, i1, 3]; w2 = pos[b, i2, 3]
    if not (w0 > 0.0 and w1 > 0.0 and w2 > 0.0):
        return 0.0
    ax = pos[b, i0, 0] / w0; ay = pos[b, i0, 1] / w0
    bx = pos[b, i1, 0] / w1; by = pos[b, i1, 1] / w1
    cx = pos[b, i2, 0] / w2; cy = pos[b, i2, 1] / w2
    a = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
    if a > 0.0:
        return 1.0
    if a < 0.0:
        return -1.0
    return 0.0


@njit(cache=True, nogil=True)
def _crossing(pos: np.ndarray, tri: np.ndarray, sil: np.ndarray, b: int, t: int,
              axis: int, pr: float, pc: float, d: float, H: int, W: int) -> tuple[int, float]:
    """First silhouette edge of triangle t that crosses the segment from pixel centre (pr, pc)
    one pixel along `axis` (0: columns, 1: rows) in direction d (+1/-1).

    Returns (edge index or -1, crossing parameter in [0, 1] from the first pixel)."""
    best_k = -1
    best_s = 2.0
    for k in range(3):
        if not (sil[b, t] >> k) & 1:
            continue  # interior edge between triangles facing the same way
        va = tri[t, k]
        vb = tri[t, (k + 1) % 3]
        ax, ay, oka = _screen(pos, b, va, H, W)
        bx, by, okb = _screen(pos, b, vb, H, W)
        if not (oka and okb):
            continue
        # each edge is handled along one axis only, or slanted edges would be blended twice:
        # mostly vertical edges by horizontal pixel pairs, mostly horizontal ones by vertical
        if (abs(by - ay) >= abs(bx - ax)) != (axis == 0):
            continue
        if axis == 0:
            # horizontal segment at row centre y = pr; edge param where it meets y
            den = by - ay
            if den == 0.0:
                continue
            u = (pr - ay) / den
            if u < 0.0 or u > 1.0:
                continue
            xc = ax + u * (bx - ax)
            s = (xc - pc) * d
        else:
            den = bx - ax
            if den == 0.0:
                continue
            u = (pc - ax) / den
            if u < 0.0 or u > 1.0:
                continue
            yc = ay + u * (by - ay)
            s = (yc - pr) * d
        if s >= 0.0 and s <= 1.0 and s < best_s:
            best_s = s
            best_k = k
    return best_k, best_s


@njit(cache=True, nogil=True)
def aa_pairs(rast: np.ndarray, pos: np.ndarray, tri: np.ndarray,
             opp: np.ndarray) -> np.ndarray:
    """Pixel pairs whose shared boundary is crossed by a silhouette edge of the front triangle.

    rast (B,H,W,4) (u, v, z/w, id+1), pos (B,V,4) float64, opp (T,3) int32 the
    triangle across edge k = (tri[t,k], tri[t,(k+1)%3]) or -1 (boundary) / -2 (non-manifold).
    Returns (M, 6) int64 rows: batch, front pixel (flat in H*W), back pixel, triangle, edge,
    axis (0 horizontal neighbours, 1 vertical).
    """
    B, H, W, _ = rast.shape
    T = tri.shape[0]
    # silhouette edges of every triangle as a 3-bit mask: boundary / non-manifold edges, and
    # edges whose neighbour faces the other way on screen (or either has a vertex behind)
    face = np.empty((B, T), np.float64)
    for b in range(B):
        for t in range(T):
            face[b, t] = _facing(pos, tri, b, t)
    sil = np.zeros((B, T), np.uint8)
    for b in range(B):
        for t in range(T):
            ft = face[b, t]
            m = 0
            for k in range(3):
                n = opp[t, k]
                if n < 0 or ft == 0.0 or face[b, n] != ft:
                    m |= 1 << k
            sil[b, t] = m
    cap = 1024
    out = np.empty((cap, 6), np.int64)
    m = 0
    for b in range(B):
        for axis in range(2):
            for i in range(H - axis):
                for j in range(W - 1 + axis):
                    i2 = i + axis
                    j2 = j + 1 - axis
                    ta = int(rast[b, i, j, 3] + 0.5) - 1
                    tb = int(rast[b, i2, j2, 3] + 0.5) - 1
                    if ta == tb or ta >= T or tb >= T:
                        continue
                    # the front side: the covered one, or the nearer of two covered ones
                    if tb < 0 or (ta >= 0 and rast[b, i, j, 2] <= rast[b, i2, j2, 2]):
                        fi = i; fj = j; bi = i2; bj = j2; t = ta; d = 1.0
                    else:
                        fi = i2; fj = j2; bi = i; bj = j; t = tb; d = -1.0
                    if sil[b, t] == 0:
                        continue
                    k, s = _crossing(pos, tri, sil, b, t, axis, fi + 0.5, fj + 0.5, d, H, W)
                    if k < 0:
                        continue
                    if m == cap:
                        nout = np.empty((cap * 2, 6), np.int64)
                        nout[:cap] = out
                        out = nout
                        cap *= 2
                    out[m, 0] = b
                    out[m, 1] = fi * W + fj
                    out[m, 2] = bi * W + bj
                    out[m, 3] = t
                    out[m, 4] = k
                    out[m, 5] = axis
                    m += 1
    return out[:m].copy()


# ---------------------------------------------------------------------------------------------
# Per-pixel forward/backward kernels behind the torch.autograd.Functions of cpu.py. Each runs
# over rows k0, k0+step, ... so that `_parallel` can split an image between threads; backward
# kernels that scatter into shared buffers get one buffer per thread.


@njit(cache=True, nogil=True)
def _bary(pos, tri, b, t, px, py):
    """(e0, e1, e2, S, D, Nz, X0..2, Y0..2) for pixel ray (px, py) and triangle t."""
    i0 = tri[t, 0]; i1 = tri[t, 1]; i2 = tri[t, 2]
    X0 = pos[b, i0, 0] - px * pos[b, i0, 3]; Y0 = pos[b, i0, 1] - py * pos[b, i0, 3]
    X1 = pos[b, i1, 0] - px * pos[b, i1, 3]; Y1 = pos[b, i1, 1] - py * pos[b, i1, 3]
    X2 = pos[b, i2, 0] - px * pos[b, i2, 3]; Y2 = pos[b, i2, 1] - py * pos[b, i2, 3]
    e0 = X1 * Y2 - Y1 * X2
    e1 = X2 * Y0 - Y2 * X0
    e2 = X0 * Y1 - Y0 * X1
    D = e0 * pos[b, i0, 3] + e1 * pos[b, i1, 3] + e2 * pos[b, i2, 3]
    Nz = e0 * pos[b, i0, 2] + e1 * pos[b, i1, 2] + e2 * pos[b, i2, 2]
    return e0, e1, e2, e0 + e1 + e2, D, Nz, X0, X1, X2, Y0, Y1, Y2


@njit(cache=True, nogil=True)
def rast_bwd(pos, tri, ids, grad, gpos, k0, step):
    """Accumulate d loss / d pos (B,V,4) float64 from grad (B,H,W,4) of (u, v, z/w)."""
    B, H, W = ids.shape
    for r in range(k0, B * H, step):
        b = r // H
        i = r % H
        py = (2.0 * i + 1.0) / H - 1.0
        for j in range(W):
            t = ids[b, i, j]
            if t < 0:
                continue
            gu = grad[b, i, j, 0]; gv = grad[b, i, j, 1]; gd = grad[b, i, j, 2]
            if gu == 0.0 and gv == 0.0 and gd == 0.0:
                continue
            px = (2.0 * j + 1.0) / W - 1.0
            e0, e1, e2, S, D, Nz, X0, X1, X2, Y0, Y1, Y2 = _bary(pos, tri, b, t, px, py)
            u = e0 / S; v = e1 / S; dep = Nz / D
            i0 = tri[t, 0]; i1 = tri[t, 1]; i2 = tri[t, 2]
            z0 = pos[b, i0, 2]; z1 = pos[b, i1, 2]; z2 = pos[b, i2, 2]
            w0 = pos[b, i0, 3]; w1 = pos[b, i1, 3]; w2 = pos[b, i2, 3]
            # d loss / d e_k
            gs = -(gu * u + gv * v) / S
            gdd = gd / D
            ge0 = gu / S + gs + gdd * (z0 - dep * w0)
            ge1 = gv / S + gs + gdd * (z1 - dep * w1)
            ge2 = gs + gdd * (z2 - dep * w2)
            # e0 = X1 Y2 - Y1 X2, e1 = X2 Y0 - Y2 X0, e2 = X0 Y1 - Y0 X1
            gX0 = ge1 * (-Y2) + ge2 * Y1
            gY0 = ge1 * X2 - ge2 * X1
            gX1 = ge0 * Y2 - ge2 * Y0
            gY1 = -ge0 * X2 + ge2 * X0
            gX2 = -ge0 * Y1 + ge1 * Y0
            gY2 = ge0 * X1 - ge1 * X0
            # X_k = x_k - px w_k, Y_k = y_k - py w_k; depth = Nz / D directly in z_k, w_k
            gpos[b, i0, 0] += gX0; gpos[b, i0, 1] += gY0
            gpos[b, i1, 0] += gX1; gpos[b, i1, 1] += gY1
            gpos[b, i2, 0] += gX2; gpos[b, i2, 1] += gY2
            gpos[b, i0, 2] += gdd * e0; gpos[b, i1, 2] += gdd * e1; gpos[b, i2, 2] += gdd * e2
            gpos[b, i0, 3] += -px * gX0 - py * gY0 - gdd * dep * e0
            gpos[b, i1, 3] += -px * gX1 - py * gY1 - gdd * dep * e1
            gpos[b, i2, 3] += -px * gX2 - py * gY2 - gdd * dep * e2


@njit(cache=True, nogil=True)
def interp_fwd(attr, rast, tri, out, k0, step):
    """out (B,H,W,C) from attr (Ba,V,C) (Ba = 1 broadcasts) and rast's u, v, id.

    Returns the number of pixels whose triangle id is not in tri (they are left 0)."""
    B, H, W, _ = rast.shape
    Ba = attr.shape[0]
    C = attr.shape[2]
    T = tri.shape[0]
    bad = 0
    for r in range(k0, B * H, step):
        b = r // H
        i = r % H
        ba = b if Ba > 1 else 0
        for j in range(W):
            t = int(rast[b, i, j, 3] + 0.5) - 1
            if t < 0 or t >= T:
                if t >= T:
                    bad += 1
                for c in range(C):
                    out[b, i, j, c] = 0.0
                continue
            u = rast[b, i, j, 0]; v = rast[b, i, j, 1]
            i0 = tri[t, 0]; i1 = tri[t, 1]; i2 = tri[t, 2]
            for c in range(C):
                a2 = attr[ba, i2, c]
                out[b, i, j, c] = a2 + u * (attr[ba, i0, c] - a2) + v * (attr[ba, i1, c] - a2)
    return bad


@njit(cache=True, nogil=True)
def interp_bwd(attr, rast, tri, grad, gattr, grast, want_attr, want_rast, k0, step):
    """gattr (Ba,V,C) float64 accumulates (one buffer per thread); grast (B,H,W,4) gets d/du,
    d/dv."""
    B, H, W, _ = rast.shape
    Ba = attr.shape[0]
    C = attr.shape[2]
    for r in range(k0, B * H, step):
        b = r // H
        i = r % H
        ba = b if Ba > 1 else 0
        for j in range(W):
            t = int(rast[b, i, j, 3] + 0.5) - 1
            if t < 0 or t >= tri.shape[0]:
                continue
            u = rast[b, i, j, 0]; v = rast[b, i, j, 1]
            i0 = tri[t, 0]; i1 = tri[t, 1]; i2 = tri[t, 2]
            gu = 0.0
            gv = 0.0
            for c in range(C):
                g = grad[b, i, j, c]
                if want_attr:
                    gattr[ba, i0, c] += g * u
                    gattr[ba, i1, c] += g * v
                    gattr[ba, i2, c] += g * (1.0 - u - v)
                if want_rast:
                    a2 = attr[ba, i2, c]
                    gu += g * (attr[ba, i0, c] - a2)
                    gv += g * (attr[ba, i1, c] - a2)
            if want_rast:
                grast[b, i, j, 0] = gu
                grast[b, i, j, 1] = gv


@njit(cache=True, nogil=True)
def _wrapi(i, n, mode):
    """Texel index under the boundary mode; -1 means 'zero' (outside)."""
    if mode == 0:
        i = i % n
        return i + n if i < 0 else i
    if mode == 1:
        return 0 if i < 0 else (n - 1 if i >= n else i)
    return -1 if (i < 0 or i >= n) else i


@njit(cache=True, nogil=True)
def tex_fwd(tex, uv, out, mode, nearest, zero, k0, step):
    """out (B,H,W,C) sampled from tex (Bt,Ht,Wt,C) at uv (B,H,W,2).

    zero (Bt,C): the sample at uv = (0, 0), copied to such pixels (the empty pixels of an
    interpolated uv image, often most of the image)."""
    B, H, W, _ = uv.shape
    Bt, Ht, Wt, C = tex.shape
    for r in range(k0, B * H, step):
        b = r // H
        i = r % H
        bt = b if Bt > 1 else 0
        for j in range(W):
            if uv[b, i, j, 0] == 0.0 and uv[b, i, j, 1] == 0.0 and zero.shape[0] > 0:
                for c in range(C):
                    out[b, i, j, c] = zero[bt, c]
                continue
            x = uv[b, i, j, 0] * Wt
            y = uv[b, i, j, 1] * Ht
            if nearest:
                ix = _wrapi(int(math.floor(x)), Wt, mode)
                iy = _wrapi(int(math.floor(y)), Ht, mode)
                for c in range(C):
                    out[b, i, j, c] = tex[bt, iy, ix, c] if (ix >= 0 and iy >= 0) else 0.0
                continue
            x -= 0.5
            y -= 0.5
            fx0 = math.floor(x)
            fy0 = math.floor(y)
            fx = x - fx0
            fy = y - fy0
            x0 = _wrapi(int(fx0), Wt, mode); x1 = _wrapi(int(fx0) + 1, Wt, mode)
            y0 = _wrapi(int(fy0), Ht, mode); y1 = _wrapi(int(fy0) + 1, Ht, mode)
            w00 = (1 - fx) * (1 - fy); w10 = fx * (1 - fy); w01 = (1 - fx) * fy; w11 = fx * fy
            for c in range(C):
                s = 0.0
                if y0 >= 0:
                    if x0 >= 0:
                        s += w00 * tex[bt, y0, x0, c]
                    if x1 >= 0:
                        s += w10 * tex[bt, y0, x1, c]
                if y1 >= 0:
                    if x0 >= 0:
                        s += w01 * tex[bt, y1, x0, c]
                    if x1 >= 0:
                        s += w11 * tex[bt, y1, x1, c]
                out[b, i, j, c] = s


@njit(cache=True, nogil=True)
def tex_bwd(tex, uv, grad, gtex, guv, mode, nearest, want_tex, want_uv, gzero, jzero, k0,
            step):
    """gtex (Bt,Ht,Wt,C) accumulates (one buffer per thread); guv (B,H,W,2) is written.

    Pixels at uv = (0, 0) (when gzero (Bt,C) is not empty) only sum their grad into gzero, which
    the caller pushes through the (0, 0) sample once, and take guv = grad . jzero, with jzero
    (Bt,C,2) the sample's Jacobian w.r.t. uv at (0, 0)."""
    B, H, W, _ = uv.shape
    Bt, Ht, Wt, C = tex.shape
    for r in range(k0, B * H, step):
        b = r // H
        i = r % H
        bt = b if Bt > 1 else 0
        for j in range(W):
            if gzero.shape[0] > 0 and uv[b, i, j, 0] == 0.0 and uv[b, i, j, 1] == 0.0:
                gx = 0.0
                gy = 0.0
                for c in range(C):
                    g = grad[b, i, j, c]
                    gzero[bt, c] += g
                    gx += g * jzero[bt, c, 0]
                    gy += g * jzero[bt, c, 1]
                if want_uv:
                    guv[b, i, j, 0] = gx
                    guv[b, i, j, 1] = gy
                continue
            x = uv[b, i, j, 0] * Wt
            y = uv[b, i, j, 1] * Ht
            if nearest:
                if want_tex:
                    ix = _wrapi(int(math.floor(x)), Wt, mode)
                    iy = _wrapi(int(math.floor(y)), Ht, mode)
                    if ix >= 0 and iy >= 0:
                        for c in range(C):
                            gtex[bt, iy, ix, c] += grad[b, i, j, c]
                continue
            x -= 0.5
            y -= 0.5
            fx0 = math.floor(x)
            fy0 = math.floor(y)
            fx = x - fx0
            fy = y - fy0
            x0 = _wrapi(int(fx0), Wt, mode); x1 = _wrapi(int(fx0) + 1, Wt, mode)
            y0 = _wrapi(int(fy0), Ht, mode); y1 = _wrapi(int(fy0) + 1, Ht, mode)
            gx = 0.0
            gy = 0.0
            for c in range(C):
                g = grad[b, i, j, c]
                t00 = tex[bt, y0, x0, c] if (y0 >= 0 and x0 >= 0) else 0.0
                t10 = tex[bt, y0, x1, c] if (y0 >= 0 and x1 >= 0) else 0.0
                t01 = tex[bt, y1, x0, c] if (y1 >= 0 and x0 >= 0) else 0.0
                t11 = tex[bt, y1, x1, c] if (y1 >= 0 and x1 >= 0) else 0.0
                if want_uv:
                    gx += g * ((t10 - t00) * (1 - fy) + (t11 - t01) * fy)
                    gy += g * ((t01 - t00) * (1 - fx) + (t11 - t10) * fx)
                if want_tex and g != 0.0:
                    if y0 >= 0:
                        if x0 >= 0:
                            gtex[bt, y0, x0, c] += g * (1 - fx) * (1 - fy)
                        if x1 >= 0:
                            gtex[bt, y0, x1, c] += g * fx * (1 - fy)
                    if y1 >= 0:
                        if x0 >= 0:
                            gtex[bt, y1, x0, c] += g * (1 - fx) * fy
                        if x1 >= 0:
                            gtex[bt, y1, x1, c] += g * fx * fy
            if want_uv:
                guv[b, i, j, 0] = gx * Wt
                guv[b, i, j, 1] = gy * Ht


@njit(cache=True, nogil=True)
def rast_db_fwd(pos, tri, ids, out, k0, step):
    """out (B,H,W,4) = (du/dX, du/dY, dv/dX, dv/dY) in pixel units; zeros where empty."""
    B, H, W = ids.shape
    for r in range(k0, B * H, step):
        b = r // H
        i = r % H
        py = (2.0 * i + 1.0) / H - 1.0
        for j in range(W):
            t = ids[b, i, j]
            if t < 0:
                out[b, i, j, 0] = 0.0; out[b, i, j, 1] = 0.0
                out[b, i, j, 2] = 0.0; out[b, i, j, 3] = 0.0
                continue
            px = (2.0 * j + 1.0) / W - 1.0
            e0, e1, e2, S, D, Nz, X0, X1, X2, Y0, Y1, Y2 = _bary(pos, tri, b, t, px, py)
            w0 = pos[b, tri[t, 0], 3]; w1 = pos[b, tri[t, 1], 3]; w2 = pos[b, tri[t, 2], 3]
            # d e_i / d x = Y_j w_k - w_j Y_k ; d e_i / d y = w_j X_k - X_j w_k (clip units)
            dx0 = Y1 * w2 - w1 * Y2; dy0 = w1 * X2 - X1 * w2
            dx1 = Y2 * w0 - w2 * Y0; dy1 = w2 * X0 - X2 * w0
            dx2 = Y0 * w1 - w0 * Y1; dy2 = w0 * X1 - X0 * w1
            dSx = dx0 + dx1 + dx2
            dSy = dy0 + dy1 + dy2
            s2 = S * S
            sx = 2.0 / W
            sy = 2.0 / H
            out[b, i, j, 0] = (dx0 * S - e0 * dSx) / s2 * sx
            out[b, i, j, 1] = (dy0 * S - e0 * dSy) / s2 * sy
            out[b, i, j, 2] = (dx1 * S - e1 * dSx) / s2 * sx
            out[b, i, j, 3] = (dy1 * S - e1 * dSy) / s2 * sy
