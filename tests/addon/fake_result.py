"""A result folder written by the tests as the engine would (docs/result-format.md), without bpy
or torch, and the checks that keep it honest: :func:`check_documented_schema` compares a result
folder with what docs/result-format.md documents, for the fake and for a real engine result."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
FACE_MODEL = REPO / "engine" / "data" / "facemodel" / "ict_face.npz"


# ---------------------------------------------------------------------------------------------
def _write_png(path: Path, rgb: np.ndarray) -> None:
    from PIL import Image
    Image.fromarray(np.ascontiguousarray(rgb)).save(path)


def _synthetic_model() -> dict[str, np.ndarray]:
    """A small head-sized box with quads and triangles, UV seams, 53 blendshapes (metres)."""
    verts = np.array([[x, y, z] for x in (-.08, .08) for y in (-.1, .1) for z in (-.05, .1)],
                     dtype=np.float32)
    polys = np.array([[0, 1, 3, 2], [4, 6, 7, 5], [0, 4, 5, 1], [2, 3, 7, 6],
                      [0, 2, 6, -1], [0, 6, 4, -1], [1, 5, 7, -1], [1, 7, 3, -1]], dtype=np.int32)
    n_corners = int((polys >= 0).sum())
    uvs = np.random.default_rng(0).uniform(0.05, 0.95, (n_corners, 2)).astype(np.float32)
    poly_uvs = np.full_like(polys, -1)
    poly_uvs[polys >= 0] = np.arange(n_corners)
    deltas = np.random.default_rng(1).normal(0, 0.003, (53, len(verts), 3)).astype(np.float16)
    names = np.array([f"shape{k:02d}" for k in range(53)])
    return {"vertices": verts, "polys": polys, "poly_uvs": poly_uvs, "uvs": uvs,
            "expression_deltas": deltas, "expression_names": names, "metres_per_unit": 0.01,
            "identity_deltas": np.zeros((1, len(verts), 3), np.float16), "_metres": True}


def load_model_arrays() -> dict[str, np.ndarray]:
    if FACE_MODEL.is_file():
        with np.load(FACE_MODEL) as z:
            return {k: z[k] for k in ("vertices", "polys", "poly_uvs", "uvs", "expression_deltas",
                                      "expression_names", "metres_per_unit", "identity_deltas")}
    return _synthetic_model()


def rotation_y(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])


def _fake_photo(path: Path, width: int, height: int, tint: int) -> Path:
    gy, gx = np.mgrid[0:height, 0:width]
    _write_png(path, np.stack([gx % 256, gy % 256, np.full_like(gx, tint)], -1).astype(np.uint8))
    return path


def _fake_camera(width: int, height: int, yaw_deg: float) -> dict:
    w2c = np.eye(4)
    w2c[:3, :3] = rotation_y(yaw_deg)
    w2c[:3, 3] = [0.01, -0.02, -0.6]
    return {"fx": 600.0, "fy": 600.0, "cx": width / 2 + 7.0, "cy": height / 2 - 11.0,
            "width": width, "height": height, "focal_source": "default",
            "world_to_camera": w2c.tolist(), "near": 0.01, "far": 100.0}


def _fake_render(folder: Path, suffix: str, width: int, height: int) -> None:
    from PIL import Image
    rgba = np.zeros((height, width, 4), np.uint8)
    rgba[height // 4:3 * height // 4, width // 4:3 * width // 4] = (200, 150, 120, 255)
    Image.fromarray(rgba, "RGBA").save(folder / f"render{suffix}.png")
    _write_png(folder / f"overlay{suffix}.png", rgba[..., :3])


# The extra photos of a multi-view fake: (yaw of its camera in degrees, width, height).
EXTRA_VIEWS = ((-35.0, 300, 240), (40.0, 200, 260))


def write_fake_result(folder: Path, photo: Path | None = None, width: int = 256,
                      height: int = 320, views: int = 1) -> dict:
    """Write a result folder as the engine would (docs/result-format.md) from the face model
    asset: a random identity, a few expression weights, a camera 0.6 m in front of the face.

    With ``views`` >= 2, a fit of several photos of one person (the multi-photo format): the
    top-level keys describe the first photo, ``views`` has one entry per photo (its own photo
    file next to the folder, camera at another angle and size from :data:`EXTRA_VIEWS`,
    render-k.png/overlay-k.png), ``multi_view`` and the ``view_*`` arrays of params.npz.

    Returns:
        result.json's dict.
    """
    if not 1 <= views <= 1 + len(EXTRA_VIEWS):
        raise ValueError(f"views must be 1..{1 + len(EXTRA_VIEWS)}")
    folder.mkdir(parents=True)
    m = load_model_arrays()
    scale = 1.0 if m.get("_metres") else float(m["metres_per_unit"])
    rng = np.random.default_rng(7)
    shape = rng.normal(0, 1, len(m["identity_deltas"])).astype(np.float32)
    neutral = (m["vertices"] + np.tensordot(shape, m["identity_deltas"].astype(np.float32), 1)) * scale
    deltas = (m["expression_deltas"].astype(np.float32) * scale).astype(np.float16)
    names = [str(n) for n in m["expression_names"]]
    weights = np.zeros(len(names), np.float32)
    weights[[0, 5, 20]] = [0.25, 0.5, 0.75]
    verts = neutral + np.tensordot(weights, deltas.astype(np.float32), 1)

    lines = ["# fake GANFit result", "mtllib face.mtl", "o face"]
    lines += ["v " + " ".join(f"{c:.6f}" for c in v) for v in verts]
    lines += ["vt " + " ".join(f"{c:.6f}" for c in t) for t in m["uvs"]]
    lines.append("usemtl ganfit_face")
    for pv, pt in zip(m["polys"], m["poly_uvs"]):
        k = 4 if pv[3] >= 0 else 3
        lines.append("f " + " ".join(f"{pv[i] + 1}/{pt[i] + 1}" for i in range(k)))
    (folder / "face.obj").write_text("\n".join(lines) + "\n")
    (folder / "face.mtl").write_text("newmtl ganfit_face\nKd 1 1 1\nmap_Kd albedo.png\n")

    yy, xx = np.mgrid[0:64, 0:64]
    albedo = np.stack([xx * 4, yy * 4, np.full_like(xx, 128)], -1).astype(np.uint8)
    _write_png(folder / "albedo.png", albedo)
    np.savez(folder / "blendshapes.npz", neutral=neutral.astype(np.float32), deltas=deltas,
             names=np.array(names), weights=weights)
    np.savez(folder / "params.npz", shape=shape, expression=weights,
             expression_names=np.array(names), rotation=rotation_y(10.0),
             rotation_axis_angle=np.array([0.0, np.radians(10.0), 0.0], np.float32),
             translation_cm=np.array([0.0, -2.0, -60.0]), focal_px=np.float32(600.0),
             sh=np.zeros((9, 3), np.float32), texture_model=np.array("texel"))

    if photo is None:
        photo = _fake_photo(folder.parent / f"{folder.name}_photo.png", width, height, 90)
    cam = _fake_camera(width, height, 10.0)
    _fake_render(folder, "", width, height)
    (folder / "engine.log").write_text("fake engine log\n")
    # The engine's own marker writer (stdlib only): --overwrite recognises the folder as a result.
    import sys
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from engine.io.output import write_marker
    write_marker(folder, "0.1.0-fake")
    lm = [[width / 2 + 10 * math.cos(k), height / 2 + 10 * math.sin(k)] for k in range(68)]
    meta = {
        "schema": 1, "engine": "0.1.0-fake", "photo": str(photo),
        "image": {"width": width, "height": height}, "camera": cam,
        "lighting": {"model": "sh2", "coefficients": [[0.8, 0.7, 0.6]] + [[0.0] * 3] * 8},
        "expression": {"names": names, "weights": weights.tolist()},
        "shape": shape.tolist(),
        "landmarks": {"scheme": "mediapipe478", "detected68": lm, "projected68": lm},
        "face": {"index": 0, "box": [60.0, 80.0, 196.0, 240.0], "score": 0.98},
        "losses": {"landmark": 0.01},
        "metrics": {"landmark_error_iod": 0.021, "identity_cosine": 0.7},
        "warnings": [],
        "timings": {"total": 1.5}, "peak_rss_mb": 100.0, "preset": "fast", "seed": 0,
        "device": "cpu", "backend": "cpu", "threads": 1,
        "models": {"face_model": "ict-facekit", "texture": "texel"},
        "mesh": {"vertices": int(len(verts)), "polygons": int(len(m["polys"])),
                 "fitted_vertices": int(min(9409, len(verts) // 2)),
                 "fitted_polygons": int(len(m["polys"]) // 2)},
        "files": {"obj": "face.obj", "mtl": "face.mtl", "albedo": "albedo.png",
                  "blendshapes": "blendshapes.npz", "render": "render.png",
                  "overlay": "overlay.png", "params": "params.npz", "log": "engine.log"},
        "some_future_key": {"ignored": True},
    }
    if views > 1:
        _add_views(folder, meta, views)
    (folder / "result.json").write_text(json.dumps(meta))
    return meta


def _add_views(folder: Path, meta: dict, n: int) -> None:
    """Turn a one-photo fake into a fit of ``n`` photos (the multi-photo result format)."""
    per_view = ("photo", "image", "camera", "lighting", "expression", "landmarks", "face")
    entries = [{**{k: meta[k] for k in per_view},
                "metrics": {"landmark_error_iod": meta["metrics"]["landmark_error_iod"]},
                "files": {"render": "render.png", "overlay": "overlay.png"},
                "future_view_key": 1}]
    for k, (yaw, w, h) in enumerate(EXTRA_VIEWS[:n - 1], start=2):
        photo = _fake_photo(folder.parent / f"{folder.name}_photo-{k}.png", w, h, 40 * k)
        _fake_render(folder, f"-{k}", w, h)
        weights = np.zeros(len(meta["expression"]["names"]))
        weights[[1, 9 + k]] = [0.3, 0.1 * k]  # each photo its own expression
        entries.append({**{key: meta[key] for key in ("lighting", "landmarks")},
                        "expression": {"names": meta["expression"]["names"],
                                       "weights": weights.tolist()},
                        "photo": str(photo), "image": {"width": w, "height": h},
                        "camera": _fake_camera(w, h, yaw),
                        "face": {"index": 0, "box": [10.0, 20.0, 120.0, 160.0], "score": 0.9},
                        "metrics": {"landmark_error_iod": 0.02 + 0.01 * k},
                        "files": {"render": f"render-{k}.png", "overlay": f"overlay-{k}.png"}})
        meta["files"][f"render-{k}"] = f"render-{k}.png"
        meta["files"][f"overlay-{k}"] = f"overlay-{k}.png"
    meta["views"] = entries
    meta["multi_view"] = {"count": n, "coverage": {"per_view": [0.6] * n, "merged": 0.8},
                          "identity_check": {"cosine_to_others": [0.93] * n, "suspect": []}}
    with np.load(folder / "params.npz") as z:
        params = dict(z)
    rot = np.stack([rotation_y(10.0)] + [rotation_y(y) for y, _, _ in EXTRA_VIEWS[:n - 1]])
    params.update(view_rotation=rot, view_rotation_axis_angle=np.zeros((n, 3), np.float32),
                  view_translation_cm=np.tile(params["translation_cm"], (n, 1)),
                  view_expression=np.array([v["expression"]["weights"] for v in entries],
                                           np.float32),
                  view_sh=np.zeros((n, 9, 3), np.float32),
                  view_focal_px=np.full(n, 600.0, np.float32))
    np.savez(folder / "params.npz", **params)




# ---------------------------------------------------------------------------------------------
# What docs/result-format.md documents, checked against a folder (the fake's or the engine's)
# ---------------------------------------------------------------------------------------------
DOC = REPO / "docs" / "result-format.md"


def _doc_json_block() -> list[str]:
    text = DOC.read_text(encoding="utf-8")
    block = text.split("## result.json", 1)[1].split("```json", 1)[1].split("```", 1)[0]
    return block.splitlines()


def documented_keys() -> tuple[set[str], set[str]]:
    """(top-level result.json keys, camera keys) from the example in docs/result-format.md."""
    top, camera, in_camera = set(), set(), False
    for line in _doc_json_block():
        if line.startswith('  "'):
            flat = line
            while re.search(r"\{[^{}]*\}", flat):  # drop nested objects, closed on this line
                flat = re.sub(r"\{[^{}]*\}", "()", flat)
            flat = re.split(r"[\[{]", flat, maxsplit=1)[0]  # and the rest of an open one
            keys = re.findall(r'"(\w+)":', flat)
            top.update(keys)
            in_camera = keys[:1] == ["camera"]
        elif in_camera and line.startswith('    "'):
            camera.update(re.findall(r'"(\w+)":', line))
        elif line.startswith("  }"):
            in_camera = False
    return top, camera


def documented_files() -> dict[str, str]:
    """file name -> its table row text, from docs/result-format.md's file table."""
    out = {}
    for line in DOC.read_text(encoding="utf-8").splitlines():
        m = re.match(r"\| (`[^|]+`) \| (.*) \|$", line)
        if m and m.group(1) != "`file`":
            for name in re.findall(r"`([^`]+)`", m.group(1)):
                out[name] = m.group(2)
    return out


def check_documented_schema(folder: Path) -> None:
    """Assert that a result folder has what docs/result-format.md documents: every top-level
    result.json key and camera key of the example, every file of the table (report.png only when
    ``files`` lists it), ``files`` naming files that exist, and the documented npz arrays."""
    meta = json.loads((folder / "result.json").read_text(encoding="utf-8"))
    top, camera = documented_keys()
    assert len(top) > 15 and {"fx", "world_to_camera"} <= camera, "could not read the doc"
    assert top <= set(meta), f"result.json lacks documented keys {sorted(top - set(meta))}"
    assert camera <= set(meta["camera"]), sorted(camera - set(meta["camera"]))
    assert meta["schema"] == 1
    files = documented_files()
    assert {"result.json", "face.obj", "albedo.png", "blendshapes.npz"} <= set(files)
    for name, row in files.items():
        optional = row.startswith("only with")
        if not optional or name in meta["files"].values():
            assert (folder / name).is_file(), f"documented file {name} is missing"
    for key, name in meta["files"].items():
        assert (folder / name).is_file(), f"files.{key} names {name}, which is missing"
    with np.load(folder / "blendshapes.npz") as z:
        assert {"neutral", "deltas", "names", "weights"} <= set(z.files)
        assert z["neutral"].dtype == np.float32 and z["deltas"].dtype == np.float16
        assert z["weights"].dtype == np.float32 and z["deltas"].shape[0] == len(z["names"]) == 53
    params_doc = set(re.findall(r"`(\w+)`", files["params.npz"]))
    with np.load(folder / "params.npz") as z:
        # texture_latent is written only for a generator texture
        missing = params_doc - set(z.files) - {"texture_latent"}
        assert not missing, f"params.npz lacks documented arrays {sorted(missing)}"
    mtl = (folder / "face.mtl").read_text(encoding="utf-8")
    used = re.findall(r"^usemtl (.+)$", (folder / "face.obj").read_text(encoding="utf-8"), re.M)
    assert used and all(f"newmtl {u.strip()}" in mtl for u in used), "usemtl names no material"
