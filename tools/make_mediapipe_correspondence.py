"""Build engine/data/correspondence/mediapipe478_ict.npz: MediaPipe face mesh -> ICT face surface.

Usage:
    python tools/make_mediapipe_correspondence.py [--ict PATH/ict_facekit.npz] [--task PATH]
                                                   [--out PATH] [--report]

Steps (all in the ICT frame, centimetres, +X = subject's left, +Y up, +Z forward; MediaPipe's
canonical mesh uses the same axes and units, which the eye corners confirm):
1. Read the 468-vertex canonical mesh from the .task bundle's
   ``geometry_pipeline_metadata_landmarks.binarypb`` (mediapipe's proto classes if importable,
   else the small protobuf reader below).
2. Similarity transform (Umeyama) canonical -> ICT from the 51 inner iBUG-68 points (17-67):
   mediapipe index per iBUG point (``MEDIAPIPE_TO_IBUG68``) against ICT's
   ``landmarks_multipie68`` vertices. The jaw (0-16) is left out: iBUG's jaw is a silhouette,
   ICT's are fixed vertices.
3. Non-rigid refinement: regularised Gaussian-RBF warp that moves the 51 landmarks (nearly)
   onto ICT's, then a few
   rounds of closest-point-on-surface with the displacement smoothed over the canonical mesh
   edges (landmarks stay pinned), so that the warped mesh hugs the ICT surface without folding.
4. Project each warped vertex to the closest point of the ICT fit triangles -> (triangle index
   into ``fit_tris``, barycentrics); ties (a point on a shared edge) go to the lowest index.

Besides the 468 rows it stores which of them are the pose-dependent lower face oval
(``contour_point_index``, weight 0: the fit matches the jaw with its point-to-jawline contour
term instead) and the ICT iris-centre vertices for MediaPipe's iris points 468/473.

Deterministic: a point on an edge or vertex shared by several triangles gets the lowest triangle
index (``canonical_argmin``), so the asset does not depend on the BLAS kernel or thread count.
``--check`` rebuilds and compares with the existing asset instead of writing it.
"""

from __future__ import annotations

import argparse
import io
import struct
import sys
import zipfile
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from engine.perception.landmarks import (  # noqa: E402
    MEDIAPIPE_FACE_OVAL,
    MEDIAPIPE_TO_IBUG68,
)

DEFAULT_ICT = REPO.parent / "shared" / "models" / "ict-facekit" / "ict_facekit.npz"
DEFAULT_TASK = REPO / "engine" / "data" / "mediapipe" / "face_landmarker.task"
DEFAULT_OUT = REPO / "engine" / "data" / "correspondence" / "mediapipe478_ict.npz"
GEOMETRY_ENTRY = "geometry_pipeline_metadata_landmarks.binarypb"

TIE_TOL_CM = 1e-6
"""Two candidate triangles whose closest points (and distances) agree to 10 nm (1e-6 cm) hold
the same surface point: a point on their shared edge or vertex. The noise this absorbs is
~1e-13 cm (float64 rounding of a warp computed by BLAS, which differs between kernels and
thread counts); 1e-6 cm is far below anything that matters at the 0.1 mm scale of this map."""

UPPER_OVAL_WEIGHT = 0.25
"""Weight of the forehead/temple part of the face oval: surface points, but the hairline makes
MediaPipe place them loosely."""


# ------------------------------------------------------------------ canonical mesh


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        out |= (b & 0x7F) << shift
        if b < 0x80:
            return out, pos
        shift += 7


def _fields(buf: bytes):
    """Yield (field number, wire type, value) of one protobuf message (no groups)."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        num, wt = key >> 3, key & 7
        if wt == 0:
            val, pos = _varint(buf, pos)
        elif wt == 1:
            val, pos = buf[pos:pos + 8], pos + 8
        elif wt == 2:
            n, pos = _varint(buf, pos)
            val, pos = buf[pos:pos + n], pos + n
        elif wt == 5:
            val, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wt}")
        yield num, wt, val


def parse_canonical_mesh_raw(blob: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Hand-written reader of GeometryPipelineMetadata.canonical_mesh (field 1, a Mesh3d:
    vertex_buffer = field 3, repeated float; index_buffer = field 4, repeated uint32; packed or
    not). Returns (vertex_buffer (V, 5) float32 = x, y, z, u, v; triangles (T, 3) int64)."""
    mesh = next(val for num, wt, val in _fields(blob) if num == 1 and wt == 2)
    vb: list[float] = []
    ib: list[int] = []
    for num, wt, val in _fields(mesh):
        if num == 3:
            if wt == 2:
                vb.extend(struct.unpack(f"<{len(val) // 4}f", val))
            else:
                vb.append(struct.unpack("<f", val)[0])
        elif num == 4:
            if wt == 2:
                p = 0
                while p < len(val):
                    x, p = _varint(val, p)
                    ib.append(x)
            else:
                ib.append(val)
    return (np.asarray(vb, np.float32).reshape(-1, 5), np.asarray(ib, np.int64).reshape(-1, 3))


def load_canonical_mesh(task: Path) -> tuple[np.ndarray, np.ndarray, str]:
    """Canonical (468, 3) vertices (cm) and (T, 3) triangles from the .task bundle."""
    with zipfile.ZipFile(task) as z:
        blob = z.read(GEOMETRY_ENTRY)
    verts_raw, tris_raw = parse_canonical_mesh_raw(blob)
    try:
        from mediapipe.modules.face_geometry.protos import geometry_pipeline_metadata_pb2 as g
    except ImportError:
        return verts_raw[:, :3].astype(np.float64), tris_raw, "raw protobuf reader"
    meta = g.GeometryPipelineMetadata()
    meta.ParseFromString(blob)
    verts = np.asarray(meta.canonical_mesh.vertex_buffer, np.float32).reshape(-1, 5)
    tris = np.asarray(meta.canonical_mesh.index_buffer, np.int64).reshape(-1, 3)
    # Both parsers must agree; this keeps the fallback reader honest.
    if not (np.array_equal(verts, verts_raw) and np.array_equal(tris, tris_raw)):
        raise RuntimeError("hand-written protobuf reader disagrees with mediapipe's classes")
    return verts[:, :3].astype(np.float64), tris, "mediapipe proto classes (raw reader agrees)"


# ------------------------------------------------------------------ geometry helpers


def umeyama(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Similarity (s, R, t) minimising sum |s R src + t - dst|^2."""
    ms, md = src.mean(0), dst.mean(0)
    a, b = src - ms, dst - md
    u, sig, vt = np.linalg.svd(b.T @ a)
    d = np.ones(3)
    d[2] = np.sign(np.linalg.det(u @ vt))
    r = u @ np.diag(d) @ vt
    s = float((sig * d).sum() / (a ** 2).sum())
    return s, r, md - s * r @ ms


def closest_points_on_mesh(points: np.ndarray, verts: np.ndarray, tris: np.ndarray,
                           k: int = 48, tie_tol: float = TIE_TOL_CM
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Closest surface point of each query point among its k nearest triangles (by centroid).

    A point equally close to several triangles (on a shared edge or vertex: ties within
    ``tie_tol``) gets the lowest triangle index (see :func:`canonical_argmin`).

    Returns (tri index (N,), barycentrics (N, 3), closest points (N, 3)).
    """
    a, b, c = (verts[tris[:, i]] for i in range(3))
    tree = cKDTree((a + b + c) / 3.0)
    _, cand = tree.query(points, k=k)  # (N, k)
    p = points[:, None, :]
    A, B, C = a[cand], b[cand], c[cand]
    ab, ac, ap = B - A, C - A, p - A
    # Projection onto the triangle plane, barycentrics by least squares on (ab, ac).
    d00 = (ab * ab).sum(-1)
    d01 = (ab * ac).sum(-1)
    d11 = (ac * ac).sum(-1)
    d20 = (ap * ab).sum(-1)
    d21 = (ap * ac).sum(-1)
    den = np.maximum(d00 * d11 - d01 * d01, 1e-20)
    v = (d11 * d20 - d01 * d21) / den
    w = (d00 * d21 - d01 * d20) / den
    bary = np.stack([1 - v - w, v, w], -1)
    inside = (bary >= 0).all(-1)
    best_q = A + v[..., None] * ab + w[..., None] * ac

    # Outside: closest point on the three edges.
    def seg(p0, p1, i0, i1):
        e = p1 - p0
        t = np.clip(((p - p0) * e).sum(-1) / np.maximum((e * e).sum(-1), 1e-20), 0, 1)
        q = p0 + t[..., None] * e
        bb = np.zeros(t.shape + (3,))
        bb[..., i0] = 1 - t
        bb[..., i1] = t
        return q, bb

    edge = [seg(A, B, 0, 1), seg(B, C, 1, 2), seg(C, A, 2, 0)]
    ed = np.stack([((p - q) ** 2).sum(-1) for q, _ in edge], -1)
    j = ed.argmin(-1)
    eq = np.choose(j[..., None], [edge[0][0], edge[1][0], edge[2][0]])
    eb = np.choose(j[..., None], [edge[0][1], edge[1][1], edge[2][1]])
    q = np.where(inside[..., None], best_q, eq)
    bary = np.where(inside[..., None], bary, eb)
    dist = np.sqrt(((p - q) ** 2).sum(-1))
    m = canonical_argmin(dist, q, cand, tie_tol)
    rows = np.arange(len(points))
    return cand[rows, m], bary[rows, m], q[rows, m]


def canonical_argmin(dist: np.ndarray, closest: np.ndarray, tri_index: np.ndarray,
                     tie_tol: float) -> np.ndarray:
    """Per row, the candidate with the smallest distance, ties going to the lowest triangle.

    A point whose closest surface point lies on an edge (or vertex) shared by several triangles
    is equally close to all of them, and which one a plain ``argmin`` picks then depends on the
    last bits of the query point, i.e. on the BLAS kernel and thread count that computed the
    warp before it. Candidates tie when both their distance and their closest point are within
    ``tie_tol`` of the best candidate's: they hold the same surface point, and of those the
    lowest triangle index wins. So the choice does not depend on that noise, and the surface
    point it represents is the nearest one as before (to within ``tie_tol``).

    Args:
        dist: (N, k) distance of each point to each of its k candidate triangles.
        closest: (N, k, 3) closest point on each candidate.
        tri_index: (N, k) triangle index of each candidate.
        tie_tol: tolerance of a tie (same units as ``dist``).

    Returns:
        (N,) column index into the k candidates.
    """
    rows = np.arange(len(dist))
    best = dist.argmin(1)
    same_point = np.linalg.norm(closest - closest[rows, best][:, None], axis=-1) <= tie_tol
    tied = same_point & (dist <= dist[rows, best][:, None] + tie_tol)
    key = np.where(tied, tri_index, np.iinfo(np.int64).max)
    return key.argmin(1)


def rbf_warp(src: np.ndarray, dst: np.ndarray, pts: np.ndarray, sigma: float = 2.5,
             reg: float = 1e-2) -> np.ndarray:
    """Regularised Gaussian-RBF displacement field (src -> dst) applied to pts.

    ``reg`` matters: the eye-lid landmarks sit millimetres apart, so the exact interpolant
    (reg -> 0) is ill-conditioned and throws far-away cheek vertices centimetres off; 1e-2
    keeps every displacement under a centimetre at ~1 mm landmark residual.
    """
    def kern(x, y):
        return np.exp(-((x[:, None] - y[None]) ** 2).sum(-1) / (2 * sigma ** 2))
    w = np.linalg.solve(kern(src, src) + reg * np.eye(len(src)), dst - src)
    return pts + kern(pts, src) @ w


def edge_laplacian_smooth(disp: np.ndarray, tris: np.ndarray, iters: int, pinned: np.ndarray
                          ) -> np.ndarray:
    """Average each vertex's displacement with its mesh neighbours (pinned ones stay)."""
    n = len(disp)
    e = np.concatenate([tris[:, [0, 1]], tris[:, [1, 2]], tris[:, [2, 0]]])
    e = np.unique(np.sort(np.concatenate([e, e[:, ::-1]]), axis=1), axis=0)
    i, j = np.concatenate([e[:, 0], e[:, 1]]), np.concatenate([e[:, 1], e[:, 0]])
    deg = np.bincount(i, minlength=n).astype(np.float64)
    out = disp.copy()
    for _ in range(iters):
        acc = np.zeros_like(out)
        np.add.at(acc, i, out[j])
        avg = 0.5 * out + 0.5 * acc / np.maximum(deg, 1)[:, None]
        out = np.where(pinned[:, None], out, avg)
    return out


# ------------------------------------------------------------------ main


def build(ict_path: Path, task: Path) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    canon, canon_tris, parser = load_canonical_mesh(task)
    ict = np.load(ict_path)
    nv = int(ict["face_area_vertex_count"])
    npoly = int(ict["face_area_poly_count"])
    verts = ict["vertices"].astype(np.float64)
    fit_tris = ict["tri_vertex_indices"][ict["tri_poly_index"] < npoly].astype(np.int64)
    assert fit_tris.max() < nv
    lm68 = ict["landmarks_multipie68"].astype(np.int64)

    mp68 = np.asarray(MEDIAPIPE_TO_IBUG68, np.int64)
    inner = np.arange(17, 68)
    s, r, t = umeyama(canon[mp68[inner]], verts[lm68[inner]])
    rigid = (s * (r @ canon.T)).T + t

    # Non-rigid: RBF through the inner landmarks, then closest-point rounds with smoothing.
    src, dst = rigid[mp68[inner]], verts[lm68[inner]]
    warped = rbf_warp(src, dst, rigid)
    pinned = np.zeros(len(canon), bool)
    pinned[mp68[inner]] = True
    for _ in range(6):
        _, _, q = closest_points_on_mesh(warped, verts, fit_tris)
        disp = edge_laplacian_smooth(q - warped, canon_tris, iters=3, pinned=pinned)
        warped = warped + 0.7 * disp
    tri, bary, _ = closest_points_on_mesh(warped, verts, fit_tris)

    oval = np.asarray(MEDIAPIPE_FACE_OVAL, np.int64)
    # Contour (pose-dependent silhouette): the oval from ear level (127/356) down round the chin.
    ear_y = rigid[[127, 356], 1].mean()
    contour = oval[rigid[oval, 1] <= ear_y + 1e-6]
    upper_oval = np.setdiff1d(oval, contour)
    weights = np.ones(len(canon), np.float32)
    weights[upper_oval] = UPPER_OVAL_WEIGHT
    weights[contour] = 0.0

    # Iris centres: the most forward vertex of each ICT iris (the pupil's pole).
    names = [str(x) for x in ict["region_names"]]
    iris_vertex = []
    for region in ("iris_right", "iris_left"):  # MediaPipe 468 (right), 473 (left)
        idx = np.flatnonzero(ict["vertex_region"] == names.index(region))
        iris_vertex.append(idx[np.argmax(verts[idx, 2])])

    model_pts = (verts[fit_tris[tri]] * bary[..., None]).sum(1)
    err_warp = np.linalg.norm(model_pts - warped, axis=1) * 10.0
    err_rigid = np.linalg.norm(model_pts - rigid, axis=1) * 10.0
    err68 = np.linalg.norm(model_pts[mp68] - verts[lm68], axis=1)
    stats = {
        "scale": s,
        "proj_mean_mm": float(err_warp.mean()), "proj_max_mm": float(err_warp.max()),
        "rigid_mean_mm": float(err_rigid.mean()), "rigid_max_mm": float(err_rigid.max()),
        "ibug68_inner_mean_cm": float(err68[17:].mean()),
        "ibug68_inner_max_cm": float(err68[17:].max()),
        "ibug68_jaw_mean_cm": float(err68[:17].mean()),
        "n_contour": len(contour),
    }
    print(f"canonical mesh read with the {parser}; similarity scale {s:.4f}")
    out = {
        "scheme": np.array("mediapipe478"),
        "point_index": np.arange(len(canon), dtype=np.int64),
        "tri": tri.astype(np.int64),
        "bary": bary.astype(np.float32),
        "weights": weights,
        "contour_point_index": contour,
        "iris_point_index": np.array([468, 473], np.int64),
        "iris_vertex": np.asarray(iris_vertex, np.int64),
        "canonical_rigid": rigid.astype(np.float32),
        "canonical_aligned": warped.astype(np.float32),
        "fit_tri_count": np.array(len(fit_tris), np.int64),
        "face_vertex_count": np.array(nv, np.int64),
    }
    return out, stats


ON_EDGE_BARY = 1e-4
"""A row whose smallest barycentric is below this lies on (or within 1e-4 of) a triangle edge:
its triangle is a canonical choice among equals, so comparisons check its surface point only."""


def surface_points(data: dict[str, np.ndarray] | np.lib.npyio.NpzFile, ict_path: Path
                   ) -> np.ndarray:
    """(N, 3) ICT neutral surface point (cm) of each row of an asset."""
    with np.load(ict_path) as ict:
        npoly = int(ict["face_area_poly_count"])
        fit_tris = ict["tri_vertex_indices"][ict["tri_poly_index"] < npoly].astype(np.int64)
        verts = ict["vertices"].astype(np.float64)
    return (verts[fit_tris[data["tri"]]] * data["bary"][..., None].astype(np.float64)).sum(1)


def differences(new: dict[str, np.ndarray], old: np.lib.npyio.NpzFile, ict_path: Path,
                atol_cm: float = 1e-5) -> list[str]:
    """What differs between a rebuilt asset and an existing one, beyond float noise: surface
    points (allclose), triangle indices of rows away from edges, every other array exactly
    (float ones allclose). Empty when they agree."""
    out = []
    if set(new) != set(old.files):
        return [f"arrays differ: {sorted(set(new) ^ set(old.files))}"]
    if new["tri"].shape != old["tri"].shape:
        return [f"{len(old['tri'])} rows in the asset, {len(new['tri'])} rebuilt"]
    d = np.abs(surface_points(new, ict_path) - surface_points(old, ict_path)).max(1)
    if (d > atol_cm).any():
        out.append(f"{int((d > atol_cm).sum())} surface points moved (max {d.max():.2e} cm)")
    interior = np.minimum(new["bary"].min(1), old["bary"].min(1)) > ON_EDGE_BARY
    moved = np.flatnonzero(interior & (new["tri"] != old["tri"]))
    if len(moved):
        out.append(f"triangle of {len(moved)} rows away from edges differs: {moved[:10].tolist()}")
    for k in sorted(set(new) - {"tri", "bary"}):
        a, b = np.asarray(new[k]), old[k]
        same = (a.shape == b.shape and (np.allclose(a, b, atol=1e-6) if a.dtype.kind == "f"
                                        else np.array_equal(a, b)))
        if not same:
            out.append(f"{k} differs")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ict", type=Path, default=DEFAULT_ICT)
    ap.add_argument("--task", type=Path, default=DEFAULT_TASK)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--check", action="store_true",
                    help="rebuild and compare with --out instead of writing it (exit 1 if it differs)")
    args = ap.parse_args(argv)
    if not args.ict.is_file():
        ap.error(f"ICT face model not found: {args.ict} (pass --ict PATH/ict_facekit.npz)")
    data, stats = build(args.ict, args.task)
    for k, v in stats.items():
        print(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}")
    if args.check:
        if not args.out.is_file():
            ap.error(f"--check: no asset at {args.out} to compare with")
        with np.load(args.out) as old:
            diffs = differences(data, old, args.ict)
        for line in diffs:
            print(f"DIFFERS: {line}")
        print("asset is reproducible" if not diffs else f"{args.out} is not reproduced")
        return 1 if diffs else 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez_compressed(buf, **data)
    args.out.write_bytes(buf.getvalue())
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
