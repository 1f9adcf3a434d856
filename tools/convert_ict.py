#!/usr/bin/env python3
"""Convert the ICT-FaceKit npz (shared/models/ict-facekit/ict_facekit.npz) into the engine's
compact face model asset, engine/data/facemodel/ict_face.npz.

Usage:
    python tools/convert_ict.py [SRC.npz] [-o engine/data/facemodel/ict_face.npz]

What is kept (see engine/models/facemodel.py for the reasons):
    fitted   : region 0 `face` (vertices [:9409], polygons [:9230]) - shape, expression, texture
    carried  : head_neck, mouth_socket, eye sockets, sclera + iris of both eyes, and (appended
               after them, so the others keep their indices) gums/tongue and teeth - deformed by
               the same identity/expression modes and textured from the atlas, never fitted
    dropped  : lacrimal fluid, eye blend, eye occlusion, eyelashes
UVs are re-laid into one atlas in [0,1]^2 (ATLAS below); deltas stay float16.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SRC = REPO.parent / "shared" / "models" / "ict-facekit" / "ict_facekit.npz"
DEFAULT_DST = REPO / "engine" / "data" / "facemodel" / "ict_face.npz"

CARRIED = ["face", "head_neck", "mouth_socket", "eye_socket_left", "eye_socket_right",
           "sclera_left", "iris_left", "sclera_right", "iris_right"]
# Carried too, but their vertices and polygons come after all of CARRIED's (added later: the
# vertex and polygon indices of the others, which the correspondence files and results use, stay).
APPENDED = ["gums_tongue", "teeth"]
# Atlas boxes (u0, v0, scale) in [0,1]^2, v up as in OBJ. The source tile of a region is floor(u).
# The face gets the top-left 0.75 x 0.75 (768 px of a 1024 atlas); the back of the head, neck,
# mouth and eye sockets (ICT tile 1) the top-right quarter box; one eyeball texture shared by both
# eyes (ICT gives both eyes the same [0,1] layout) the box below it.
ATLAS = {
    "face": (0.0, 0.25, 0.75),
    "tile1": (0.75, 0.75, 0.25),
    "eyeball": (0.75, 0.5, 0.25),
    "gums": (0.5, 0.0, 0.25),
    "teeth": (0.75, 0.25, 0.25),
}
REGION_BOX = {"face": "face", "head_neck": "tile1", "mouth_socket": "tile1",
              "eye_socket_left": "tile1", "eye_socket_right": "tile1",
              "sclera_left": "eyeball", "iris_left": "eyeball",
              "sclera_right": "eyeball", "iris_right": "eyeball",
              "gums_tongue": "gums", "teeth": "teeth"}


def convert(src: Path, dst: Path) -> dict:
    d = np.load(src)
    names = [str(n) for n in d["region_names"]]
    poly_region = d["poly_region"].astype(np.int64)
    first = np.flatnonzero(np.isin(np.array(names)[poly_region], CARRIED))
    later = np.flatnonzero(np.isin(np.array(names)[poly_region], APPENDED))
    poly_keep = np.concatenate([first, later])          # polygon order: CARRIED's, then APPENDED's
    polys_old = d["poly_vertex_indices"][poly_keep]
    puv_old = d["poly_uv_indices"][poly_keep]
    preg = poly_region[poly_keep]

    pv_first = d["poly_vertex_indices"][first]
    used_first = np.unique(pv_first[pv_first >= 0])
    pv_later = d["poly_vertex_indices"][later]
    used = np.concatenate([used_first, np.setdiff1d(pv_later[pv_later >= 0], used_first)])
    n_face = int(d["face_area_vertex_count"])
    assert np.array_equal(used[:n_face], np.arange(n_face)), "face prefix must be kept in order"
    remap = -np.ones(len(d["vertices"]), np.int64)
    remap[used] = np.arange(len(used))
    polys = np.where(polys_old >= 0, remap[np.maximum(polys_old, 0)], -1).astype(np.int32)

    # New UV list: one entry per (atlas box, source uv index) pair actually used.
    uvs_src = d["uvs"].astype(np.float64)
    box_of_poly = np.array([list(ATLAS).index(REGION_BOX[names[r]]) for r in preg])
    keys = box_of_poly[:, None] * len(uvs_src) + np.maximum(puv_old, 0)
    flat = keys[puv_old >= 0]
    uniq, inv = np.unique(flat, return_inverse=True)
    poly_uvs = -np.ones_like(puv_old)
    poly_uvs[puv_old >= 0] = inv
    box_idx, src_idx = np.divmod(uniq, len(uvs_src))
    uv = uvs_src[src_idx]
    tile = np.floor(uv[:, 0])
    tile = np.where(uv[:, 0] - tile < 1e-6, tile - (tile > 0), tile)  # u exactly on a tile border
    boxes = np.array([ATLAS[k] for k in ATLAS])[box_idx]
    new_uv = np.stack([boxes[:, 0] + boxes[:, 2] * (uv[:, 0] - tile),
                       boxes[:, 1] + boxes[:, 2] * uv[:, 1]], 1).astype(np.float32)
    assert new_uv.min() >= 0 and new_uv.max() <= 1

    # Triangulate (quad -> 0-1-2, 0-2-3, as ICT does), keeping polygon order: face triangles first.
    sizes = np.where(polys[:, 3] >= 0, 4, 3)
    t_a = polys[:, [0, 1, 2]]
    t_b = polys[sizes == 4][:, [0, 2, 3]]
    u_a = poly_uvs[:, [0, 1, 2]]
    u_b = poly_uvs[sizes == 4][:, [0, 2, 3]]
    pid_a = np.arange(len(polys))
    pid_b = pid_a[sizes == 4]
    order = np.argsort(np.concatenate([pid_a * 2, pid_b * 2 + 1]), kind="stable")
    tris = np.concatenate([t_a, t_b])[order].astype(np.int32)
    tri_uvs = np.concatenate([u_a, u_b])[order].astype(np.int32)
    tri_poly = np.concatenate([pid_a, pid_b])[order].astype(np.int32)

    n_face_polys = int(d["face_area_poly_count"])
    assert (preg[:n_face_polys] == 0).all() and (preg[n_face_polys:] != 0).all()
    n_fit_tris = int((tri_poly < n_face_polys).sum())
    assert tris[:n_fit_tris].max() < n_face

    # The fit triangles equal the source's face-area triangles in the same order.
    src_fit = d["tri_vertex_indices"][d["tri_poly_index"] < n_face_polys]
    assert np.array_equal(src_fit, tris[:n_fit_tris])

    verts = d["vertices"][used].astype(np.float32)
    ident = d["identity_deltas"][:, used].astype(np.float16)
    expr = d["expression_deltas"][:, used].astype(np.float16)

    # Mirror map (the neutral mesh is symmetric about x = 0): nearest vertex to (-x, y, z).
    from scipy.spatial import cKDTree
    mirrored = verts * np.array([-1, 1, 1], np.float32)
    dist, mirror = cKDTree(verts).query(mirrored)
    mirror = mirror.astype(np.int32)

    region_of_vertex = d["vertex_region"][used].astype(np.int8)
    out = dict(
        vertices=verts,
        identity_deltas=ident,
        expression_deltas=expr,
        expression_names=d["expression_names"],
        polys=polys,
        poly_uvs=poly_uvs.astype(np.int32),
        poly_region=preg.astype(np.int8),
        region_names=np.array(names),
        vertex_region=region_of_vertex,
        uvs=new_uv,
        tris=tris,
        tri_uvs=tri_uvs,
        tri_poly=tri_poly,
        fit_vertex_count=np.int32(n_face),
        fit_poly_count=np.int32(n_face_polys),
        fit_tri_count=np.int32(n_fit_tris),
        narrow_face_vertex_count=np.int32(d["narrow_face_vertex_count"]),
        landmarks68=remap[d["landmarks_multipie68"]].astype(np.int32),
        jawline_left_extended=remap[d["jawline_left_extended"]].astype(np.int32),
        jawline_right_extended=remap[d["jawline_right_extended"]].astype(np.int32),
        fitting_vertex_indices=remap[d["fitting_vertex_indices"]].astype(np.int32),
        vertex_mirror=mirror,
        atlas_boxes=np.array([ATLAS[k] for k in ATLAS], np.float32),
        atlas_box_names=np.array(list(ATLAS)),
        metres_per_unit=np.float32(0.01),
        source=np.array(str(d["source"])),
    )
    dst.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(dst, **out)
    return {"vertices": len(verts), "polys": len(polys), "tris": len(tris), "fit_tris": n_fit_tris,
            "uvs": len(new_uv), "mirror_max_cm": float(dist.max()), "bytes": dst.stat().st_size}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", nargs="?", type=Path, default=DEFAULT_SRC)
    ap.add_argument("-o", "--output", type=Path, default=DEFAULT_DST)
    a = ap.parse_args()
    print(convert(a.src, a.output))


if __name__ == "__main__":
    main()
