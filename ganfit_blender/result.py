"""Reading an engine result folder (``docs/result-format.md``) without bpy: the schema check, the
OBJ, the arrays, and the camera maths. ``importer.py`` builds Blender data from what this returns.

Conventions (the only place, with importer.py, that knows them):

* OBJ / model space is +Y up, +Z forward (metres); Blender is +Z up. A point (x, y, z) becomes
  (x, -z, y), so the face looks toward Blender's -Y (front view): :func:`obj_to_blender`.
* OBJ texture coordinates have v up, as Blender's UVs do, so they are used unchanged.
* ``result.json``'s ``camera.world_to_camera`` maps model space to an OpenGL/Blender camera frame,
  so the camera object's world matrix is ``AXIS @ inverse(world_to_camera)``.

A fit of several photos of one person writes one head and a ``views`` list, one entry per photo
(its photo, image size, camera and render/overlay files; ``views[0]`` is the primary photo, which
the top-level keys describe too). :func:`load_result` returns the views in
``ResultFolder.views``; a result without ``views`` is one view made from the top-level keys.

Every file is read and checked by :func:`load_result` before any Blender data is made, so a damaged
folder fails with a :class:`ResultImportError` and leaves nothing behind.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import contract

SENSOR_WIDTH_MM = 36.0

# (x, y, z)_obj -> (x, -z, y)_blender, as a matrix acting on column vectors.
AXIS = np.array([[1.0, 0.0, 0.0, 0.0],
                 [0.0, 0.0, -1.0, 0.0],
                 [0.0, 1.0, 0.0, 0.0],
                 [0.0, 0.0, 0.0, 1.0]])


class ResultImportError(Exception):
    """A result folder that cannot be imported; the message says what is wrong."""



def obj_to_blender(points: np.ndarray) -> np.ndarray:
    """Model/OBJ space (+Y up) to Blender (+Z up).

    Args:
        points: (N, 3) float, metres.

    Returns:
        (N, 3) float32 array (x, -z, y).
    """
    p = np.asarray(points, dtype=np.float32)
    return np.stack([p[:, 0], -p[:, 2], p[:, 1]], axis=1)


# ---------------------------------------------------------------------------------------------
# OBJ parsing (numpy; Blender's OBJ importer would re-order and split vertices)
# ---------------------------------------------------------------------------------------------
@dataclass
class ObjMesh:
    """A parsed OBJ: positions, texture coordinates and n-gons with per-corner indices (0-based).

    Attributes:
        verts: (V, 3) float32.
        uvs: (T, 2) float32 (v up).
        face_sizes: (F,) int32, corners per face (3 or 4 here; any n >= 3 works).
        face_verts: (L,) int32, vertex index per corner, faces concatenated.
        face_uvs: (L,) int32 or None, uv index per corner.
    """

    verts: np.ndarray
    uvs: np.ndarray
    face_sizes: np.ndarray
    face_verts: np.ndarray
    face_uvs: np.ndarray | None
    material: str | None = None
    mtllib: str | None = None


def _floats(rows: list[str], width: int, what: str) -> np.ndarray:
    if not rows:
        return np.zeros((0, width), dtype=np.float32)
    flat = np.array(" ".join(rows).split(), dtype=np.float64)
    # ``v`` may carry an optional w or vertex colours: only whole rows of equal length are kept.
    n = len(rows)
    if flat.size % n != 0:
        raise ResultImportError(f"face.obj: '{what}' lines have different numbers of values")
    return flat.reshape(n, -1)[:, :width].astype(np.float32)


def parse_obj(path: Path) -> ObjMesh:
    """Read ``v``, ``vt`` and ``f`` (``v``, ``v/vt``, ``v/vt/vn`` or ``v//vn`` corners) from an OBJ.

    Raises:
        ResultImportError: unreadable file, no faces, or indices out of range.
    """
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ResultImportError(f"Cannot read {path}: {exc}") from exc
    v_rows: list[str] = []
    vt_rows: list[str] = []
    f_rows: list[str] = []
    material = mtllib = None
    for line in text.splitlines():
        if line.startswith("v "):
            v_rows.append(line[2:])
        elif line.startswith("vt "):
            vt_rows.append(line[3:])
        elif line.startswith("f "):
            f_rows.append(line[2:])
        elif line.startswith("usemtl ") and material is None:
            material = line[7:].strip()
        elif line.startswith("mtllib ") and mtllib is None:
            mtllib = line[7:].strip()
    if not f_rows:
        raise ResultImportError(f"{path} has no faces")
    verts = _floats(v_rows, 3, "v")
    uvs = _floats(vt_rows, 2, "vt")

    corners_per_face = [row.split() for row in f_rows]
    sizes = np.fromiter((len(c) for c in corners_per_face), dtype=np.int32, count=len(f_rows))
    tokens = [t for c in corners_per_face for t in c]
    # Every corner in the file has the same form (the engine writes ``v/vt``); detect it once.
    first = tokens[0]
    if "//" in first:
        nums = np.array(" ".join(tokens).replace("//", " ").split(), dtype=np.int64).reshape(-1, 2)
        fv, ft = nums[:, 0], None
    elif "/" in first:
        k = first.count("/") + 1
        flat = " ".join(tokens).replace("/", " ").split()
        if len(flat) != k * len(tokens):
            raise ResultImportError(f"{path}: face corners mix different index forms")
        nums = np.array(flat, dtype=np.int64).reshape(-1, k)
        fv, ft = nums[:, 0], nums[:, 1]
    else:
        fv, ft = np.array(tokens, dtype=np.int64), None

    def to_zero_based(idx: np.ndarray, count: int, what: str) -> np.ndarray:
        # Negative OBJ indices count back from the end (valid when all elements precede faces).
        out = np.where(idx < 0, idx + count, idx - 1)
        if out.size and (out.min() < 0 or out.max() >= count):
            raise ResultImportError(f"{path}: a face refers to a {what} that does not exist")
        return out.astype(np.int32)

    face_verts = to_zero_based(fv, len(verts), "vertex")
    face_uvs = to_zero_based(ft, len(uvs), "texture coordinate") if ft is not None else None
    if sizes.min() < 3:
        raise ResultImportError(f"{path}: a face has fewer than 3 corners")
    return ObjMesh(verts, uvs, sizes, face_verts, face_uvs, material, mtllib)


# ---------------------------------------------------------------------------------------------
# Result folder
# ---------------------------------------------------------------------------------------------
@dataclass
class View:
    """One photo of a result: the photo it was fitted to and its camera.

    Attributes:
        index: 1-based position in ``views`` (1 = the primary photo).
        photo: the photo's path as the engine wrote it ("" when unknown).
        camera: result.json's camera dict of this photo (None: no camera in the result);
            :func:`camera_setup` turns it into Blender settings.
        image: ``{"width": ..., "height": ...}`` of the photo (may be empty).
        files: this view's files in the folder (``render``, ``overlay``), checked to exist.
        metrics: the view's own metrics (landmark error, ...), numbers only.
        expression: the expression fitted to this photo, shape key name -> weight (empty when
            the result has none or it is malformed).
    """

    index: int
    photo: str
    camera: dict[str, Any] | None
    image: dict[str, Any] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    expression: dict[str, float] = field(default_factory=dict)

    @property
    def photo_name(self) -> str:
        """The photo's file name (``B.jpg``), or ``view <k>`` when the result names none."""
        return Path(self.photo).name if self.photo else f"view {self.index}"


@dataclass
class ResultFolder:
    """The files of one result folder, loaded (no bpy)."""

    folder: Path
    meta: dict[str, Any]
    obj: ObjMesh
    albedo: Path | None
    neutral: np.ndarray | None = None
    deltas: np.ndarray | None = None
    names: list[str] = field(default_factory=list)
    weights: np.ndarray | None = None
    params: dict[str, np.ndarray] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    views: list[View] = field(default_factory=list)

    @property
    def has_shape_keys(self) -> bool:
        return self.neutral is not None and self.deltas is not None

    @property
    def multi_view(self) -> bool:
        """True for a fit of several photos (result.json's ``views`` has two or more)."""
        return len(self.views) > 1


def _file(folder: Path, meta: dict[str, Any], key: str, default: str) -> Path:
    name = (meta.get("files") or {}).get(key) or default
    return folder / name


def _npz_arrays(path: Path, required: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Every array of an ``.npz``, read now (np.load is lazy), or a ResultImportError that names
    the file: a truncated or damaged archive raises zipfile/zlib/EOF errors deep inside numpy."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: np.asarray(z[k]) for k in z.files}
    except Exception as exc:  # noqa: BLE001 - BadZipFile, zlib.error, EOFError, ValueError, OSError...
        raise ResultImportError(
            f"{path.name} in {path.parent} is damaged or truncated and cannot be read "
            f"({type(exc).__name__}: {exc}). Run the fit again.") from exc
    missing = [k for k in required if k not in arrays]
    if missing:
        raise ResultImportError(f"{path.name} in {path.parent} lacks {', '.join(missing)}; "
                                "it is not a GANFit result file. Run the fit again.")
    return arrays


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def check_png(path: Path) -> str | None:
    """Why ``path`` is not a whole PNG (missing, truncated, a bad chunk checksum), or None.

    Reads the chunk structure and each chunk's CRC (stdlib only), which catches a truncated or
    overwritten file; it does not decode the pixels.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return "is missing"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if not data.startswith(_PNG_SIGNATURE):
        return "is not a PNG file"
    pos, seen_ihdr = len(_PNG_SIGNATURE), False
    while pos + 12 <= len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        end = pos + 12 + length
        if end > len(data):
            break
        crc = int.from_bytes(data[end - 4:end], "big")
        if zlib.crc32(data[pos + 4:end - 4]) != crc:
            return "is damaged (a chunk checksum does not match)"
        if pos == len(_PNG_SIGNATURE) and kind != b"IHDR":
            return "is damaged (no image header)"
        seen_ihdr = True
        if kind == b"IEND":
            return None
        pos = end
    return "is truncated" if seen_ihdr else "is damaged"


def load_result(folder: str | Path) -> ResultFolder:
    """Read and check a result folder, every file it needs read now (so that a damaged file fails
    here, before any Blender data is made).

    ``warnings`` collects result.json's ``warnings`` (from the engine) and what the reader
    noticed but could import anyway: a missing or damaged albedo.png (the head is then imported
    untextured and the operator reports it).

    Raises:
        ResultImportError: missing folder/files or inconsistent contents, with a readable message.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ResultImportError(f"Result folder not found: {folder}")
    meta_path = folder / contract.RESULT_JSON
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ResultImportError(f"{folder} is not a GANFit result folder (no result.json)") from exc
    except (OSError, ValueError) as exc:
        raise ResultImportError(f"Cannot read {meta_path} (damaged or truncated?): {exc}") from exc
    if not isinstance(meta, dict):
        raise ResultImportError(f"{meta_path} is not a JSON object")
    schema = meta.get("schema", contract.RESULT_SCHEMA)
    if schema != contract.RESULT_SCHEMA:
        raise ResultImportError(f"{meta_path} has schema {schema}; this add-on reads schema "
                                f"{contract.RESULT_SCHEMA}. Update the add-on.")
    warnings = [str(w) for w in meta.get("warnings") or () if isinstance(w, str) and w.strip()] \
        if isinstance(meta.get("warnings"), list) else []
    obj_path = _file(folder, meta, "obj", "face.obj")
    if not obj_path.is_file():
        raise ResultImportError(f"Missing mesh file: {obj_path}")
    obj = parse_obj(obj_path)
    albedo: Path | None = _file(folder, meta, "albedo", "albedo.png")
    problem = check_png(albedo) if albedo.suffix.lower() == ".png" else (
        None if albedo.is_file() else "is missing")
    if problem is not None:
        warnings.append(f"{albedo.name} {problem}: the head was imported without its texture.")
        albedo = None
    res = ResultFolder(folder=folder, meta=meta, obj=obj, albedo=albedo, warnings=warnings)

    bs_path = _file(folder, meta, "blendshapes", "blendshapes.npz")
    if bs_path.is_file():
        z = _npz_arrays(bs_path, ("neutral", "deltas", "names"))
        try:
            neutral = z["neutral"].astype(np.float32)
            deltas = z["deltas"].astype(np.float32)
            names = [str(n) for n in z["names"]]
            weights = (z["weights"].astype(np.float32) if "weights" in z
                       else np.zeros(len(names), dtype=np.float32))
        except (TypeError, ValueError) as exc:
            raise ResultImportError(f"{bs_path} has arrays of the wrong kind: {exc}") from exc
        v = len(obj.verts)
        if neutral.shape != (v, 3) or deltas.ndim != 3 or deltas.shape[1:] != (v, 3) \
                or len(names) != deltas.shape[0] or len(weights) != deltas.shape[0]:
            raise ResultImportError(f"{bs_path} does not match face.obj ({v} vertices)")
        res.neutral, res.deltas, res.names, res.weights = neutral, deltas, names, weights

    params_path = _file(folder, meta, "params", "params.npz")
    if params_path.is_file():
        # Optional extras (the mesh does not depend on them), but a damaged file means a damaged
        # folder: say so rather than import half of it.
        res.params = _npz_arrays(params_path, ())
    res.views = read_views(folder, meta)
    return res


def _numbers(d: Any) -> dict[str, float]:
    if not isinstance(d, dict):
        return {}
    return {str(k): float(v) for k, v in d.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _expression(d: Any) -> dict[str, float]:
    """``{"names": [...], "weights": [...]}`` as name -> weight; {} unless well formed."""
    if not isinstance(d, dict):
        return {}
    names, weights = d.get("names"), d.get("weights")
    if not isinstance(names, list) or not isinstance(weights, list) or len(names) != len(weights):
        return {}
    if not all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights):
        return {}
    return {str(n): float(w) for n, w in zip(names, weights)}


def _view(entry: dict[str, Any], index: int) -> View:
    photo = entry.get("photo")
    cam = entry.get("camera")
    image = entry.get("image")
    return View(index=index, photo=photo if isinstance(photo, str) else "",
                camera=cam if isinstance(cam, dict) and cam else None,
                image=dict(image) if isinstance(image, dict) else {},
                metrics=_numbers(entry.get("metrics")),
                expression=_expression(entry.get("expression")))


def read_views(folder: Path, meta: dict[str, Any]) -> list[View]:
    """The photos of a result: result.json's ``views`` when it has them (a fit of several
    photos), else one view made from the top-level ``photo``, ``image`` and ``camera``.

    Each view's camera is checked (:func:`camera_setup`), and every file a view names
    (``files.render``, ``files.overlay``) must be in the folder. Keys the reader does not know
    are ignored.

    Raises:
        ResultImportError: ``views`` that is not a list of objects, a view with a bad camera, or a
            view whose render/overlay file is missing, naming the view and its photo.
    """
    raw = meta.get("views")
    if raw is None:
        # A single-photo result, read as before: its camera is checked when the camera is made,
        # and render.png/overlay.png are extras the import does not need.
        return [_view(meta, 1)]
    if not isinstance(raw, list) or not raw or not all(isinstance(v, dict) for v in raw):
        raise ResultImportError(f"{folder / contract.RESULT_JSON}: 'views' is not a list of views "
                                "(one object per photo). Run the fit again.")
    views = []
    for k, entry in enumerate(raw, start=1):
        view = _view(entry, k)
        if entry.get("camera") is not None and not isinstance(entry.get("camera"), dict):
            raise ResultImportError(f"result.json view {k} ({view.photo_name}): its camera is "
                                    "not an object. Run the fit again.")
        if view.camera is None:
            if len(raw) > 1:
                raise ResultImportError(f"result.json view {k} ({view.photo_name}) has no "
                                        "camera. Run the fit again.")
        else:
            try:  # checked now, before any Blender data is made
                camera_setup(view.camera)
            except ResultImportError as exc:
                raise ResultImportError(f"{exc} (view {k}, {view.photo_name}). Run the fit "
                                        "again.") from exc
        files = entry.get("files")
        if files is not None and not isinstance(files, dict):
            raise ResultImportError(f"result.json view {k} ({view.photo_name}): 'files' is not "
                                    "an object. Run the fit again.")
        for key, name in (files or {}).items():
            if not isinstance(name, str) or not name or Path(name).name != name:
                raise ResultImportError(f"result.json view {k} ({view.photo_name}): files.{key} "
                                        f"is not a file name in the folder: {name!r}")
            path = folder / name
            if not path.is_file():
                raise ResultImportError(
                    f"{name} of view {k} ({view.photo_name}) is missing from {folder}: the "
                    "result folder is incomplete. Run the fit again.")
            view.files[str(key)] = path
        views.append(view)
    return views


# ---------------------------------------------------------------------------------------------
# Camera maths (no bpy objects touched; unit tested)
# ---------------------------------------------------------------------------------------------
@dataclass
class CameraSetup:
    """Blender camera settings equivalent to the engine's pinhole camera."""

    matrix_world: np.ndarray  # (4, 4) camera-to-Blender-world
    lens: float  # mm, with sensor_fit HORIZONTAL and sensor_width SENSOR_WIDTH_MM
    shift_x: float
    shift_y: float
    width: int
    height: int
    pixel_aspect_x: float
    pixel_aspect_y: float
    clip_start: float
    clip_end: float


def camera_setup(cam: dict[str, Any]) -> CameraSetup:
    """Convert ``result.json``'s ``camera`` to Blender camera settings.

    With ``sensor_fit = 'HORIZONTAL'`` the sensor width spans the image width, so
    ``lens = fx * sensor_width / width``, and Blender's shift is in units of the fitted side (the
    width here; with AUTO fit it would be the larger side). A principal point right of centre
    (cx > w/2) means the frame is shifted left, hence ``shift_x = (w/2 - cx) / w``, and with
    image y pointing down ``shift_y = (cy - h/2) / w``. Non-square pixels (fy != fx) go to the render's
    pixel aspect.
    """
    try:
        w = int(cam["width"])
        h = int(cam["height"])
        fx = float(cam["fx"])
        fy = float(cam.get("fy", fx))
        cx = float(cam.get("cx", w / 2))
        cy = float(cam.get("cy", h / 2))
        w2c = np.asarray(cam["world_to_camera"], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as exc:
        raise ResultImportError(f"result.json camera is incomplete: {exc}") from exc
    if w2c.shape != (4, 4) or w <= 0 or h <= 0 or fx <= 0 or fy <= 0:
        raise ResultImportError("result.json camera has invalid values")
    try:
        c2w = np.linalg.inv(w2c)
    except np.linalg.LinAlgError as exc:
        raise ResultImportError("result.json camera.world_to_camera is singular") from exc
    side = w  # shift unit for sensor_fit HORIZONTAL
    # Blender derives fy from fx and the pixel aspect: x / y aspect = fy / fx.
    if fy >= fx:
        pax, pay = fy / fx, 1.0
    else:
        pax, pay = 1.0, fx / fy
    return CameraSetup(
        matrix_world=AXIS @ c2w,
        lens=fx * SENSOR_WIDTH_MM / w,
        shift_x=(w / 2 - cx) / side,
        shift_y=(cy - h / 2) / side,
        width=w, height=h, pixel_aspect_x=pax, pixel_aspect_y=pay,
        clip_start=float(cam.get("near", 0.01)), clip_end=float(cam.get("far", 100.0)))
