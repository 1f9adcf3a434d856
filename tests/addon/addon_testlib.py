"""Helpers for the add-on tests (headless bpy from PyPI); the fixtures are in conftest.py.

Blender's user folders point at a temporary folder *before* bpy is imported, so the tests never
touch the real user configuration. Each test starts from an empty home file with the add-on
enabled from the source tree and its engine Python set to this interpreter.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
_USER = Path(tempfile.mkdtemp(prefix="ganfit-bl-user-"))
atexit.register(shutil.rmtree, _USER, True)
os.environ["BLENDER_USER_RESOURCES"] = str(_USER)
for _kind in ("CONFIG", "DATAFILES", "SCRIPTS", "EXTENSIONS"):
    os.environ[f"BLENDER_USER_{_kind}"] = str(_USER / _kind.lower())

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import bpy  # noqa: E402,F401  (after the user folders are set; tests import it from here)
import addon_utils  # noqa: E402  (needs bpy first)

ADDON = "ganfit_blender"
SHARED = Path(os.environ.get("GANFIT_SHARED", REPO.parent / "shared"))
PHOTO = SHARED / "photos" / "codait_luciano.png"
FACE_MODEL = REPO / "engine" / "data" / "facemodel" / "ict_face.npz"


# ---------------------------------------------------------------------------------------------
# Add-on
# ---------------------------------------------------------------------------------------------
def enable_addon():
    mod = addon_utils.enable(ADDON, default_set=True, handle_error=None)
    assert mod is not None, "the add-on failed to enable"
    return mod


def disable_addon() -> None:
    addon_utils.disable(ADDON, default_set=True, handle_error=None)


# ---------------------------------------------------------------------------------------------
# Engine availability
# ---------------------------------------------------------------------------------------------
def engine_fit_unavailable_reason() -> str | None:
    """Why real-engine tests cannot run yet (None when they can)."""
    if not PHOTO.is_file():
        return f"shared test photo missing: {PHOTO} (set GANFIT_SHARED)"
    try:
        proc = subprocess.run([sys.executable, "-m", "engine", "fit", "--help"], cwd=REPO,
                              capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`python -m engine fit --help` did not run: {exc}"
    if proc.returncode != 0:
        return "`python -m engine fit --help` does not work yet (engine not written)"
    # The CLI's parser exists before the fitting code: check the module `fit` dispatches to.
    if not (REPO / "engine" / "fit" / "run.py").is_file():
        return "engine/fit/run.py (the fit itself) does not exist yet"
    return None


_ENGINE_REASON: list[str | None] = []


def engine_reason() -> str | None:
    if not _ENGINE_REASON:
        _ENGINE_REASON.append(engine_fit_unavailable_reason())
    return _ENGINE_REASON[0]


# ---------------------------------------------------------------------------------------------
# A result folder written by the test (until/besides the real engine)
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


def write_fake_result(folder: Path, photo: Path | None = None, width: int = 256,
                      height: int = 320) -> dict:
    """Write a result folder as the engine would (docs/result-format.md) from the face model
    asset: a random identity, a few expression weights, a camera 0.6 m in front of the face.

    Returns:
        result.json's dict.
    """
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
    (folder / "face.mtl").write_text("newmtl ganfit_face\nmap_Kd albedo.png\n")

    yy, xx = np.mgrid[0:64, 0:64]
    albedo = np.stack([xx * 4, yy * 4, np.full_like(xx, 128)], -1).astype(np.uint8)
    _write_png(folder / "albedo.png", albedo)
    np.savez(folder / "blendshapes.npz", neutral=neutral.astype(np.float32), deltas=deltas,
             names=np.array(names), weights=weights)
    np.savez(folder / "params.npz", shape=shape, expression=weights,
             expression_names=np.array(names), rotation=rotation_y(10.0),
             translation=np.array([0.0, -0.02, -0.6]), focal_px=np.float32(600.0))

    if photo is None:
        photo = folder.parent / f"{folder.name}_photo.png"
        gy, gx = np.mgrid[0:height, 0:width]
        _write_png(photo, np.stack([gx % 256, gy % 256, np.full_like(gx, 90)], -1).astype(np.uint8))
    w2c = np.eye(4)
    w2c[:3, :3] = rotation_y(10.0)
    w2c[:3, 3] = [0.01, -0.02, -0.6]
    cam = {"fx": 600.0, "fy": 600.0, "cx": width / 2 + 7.0, "cy": height / 2 - 11.0,
           "width": width, "height": height, "focal_source": "default",
           "world_to_camera": w2c.tolist(), "near": 0.01, "far": 100.0}
    meta = {
        "schema": 1, "engine": "0.1.0-fake", "photo": str(photo),
        "image": {"width": width, "height": height}, "camera": cam,
        "expression": {"names": names, "weights": weights.tolist()},
        "metrics": {"landmark_error_iod": 0.021, "identity_cosine": 0.7},
        "timings": {"total": 1.5}, "preset": "fast", "device": "cpu",
        "mesh": {"vertices": int(len(verts)), "polygons": int(len(m["polys"])),
                 "fitted_vertices": int(min(9409, len(verts) // 2))},
        "files": {"obj": "face.obj", "mtl": "face.mtl", "albedo": "albedo.png",
                  "blendshapes": "blendshapes.npz", "params": "params.npz"},
        "some_future_key": {"ignored": True},
    }
    (folder / "result.json").write_text(json.dumps(meta))
    return meta


def children_of_this_process() -> set[int]:
    """PIDs of live child processes (Linux /proc), for 'nothing left running' checks."""
    me = os.getpid()
    out = set()
    for d in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 2 and int(fields[1]) == me and fields[0] != "Z":
            out.add(int(d.name))
    return out


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False  # still there (an unreaped zombie counts as not gone)
