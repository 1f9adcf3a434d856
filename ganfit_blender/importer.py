"""Build Blender data from an engine result folder (``docs/result-format.md``).

This is the only module that knows the axis and UV conventions:

* OBJ / model space is +Y up, +Z forward (metres); Blender is +Z up. A point (x, y, z) becomes
  (x, -z, y), so the face looks toward Blender's -Y (front view). Done once, in
  :func:`obj_to_blender`.
* OBJ texture coordinates have v up, as Blender's UVs do, so they are used unchanged.
* ``result.json``'s ``camera.world_to_camera`` maps model space to an OpenGL/Blender camera frame,
  so the camera object's world matrix is ``AXIS @ inverse(world_to_camera)``.

Texture: the Image Texture references ``albedo.png`` in the result folder; it is **not packed**.
Result folders live next to the saved .blend (``<blend dir>/ganfit/...``), and the image path is
stored relative to the .blend (``//ganfit/.../albedo.png``) when the .blend is saved, or absolute
when it is not (Blender's save with *Remap Relative*, the default, makes it relative then). A
saved and reloaded .blend therefore finds the image as long as the result folder travels with
it. Pass ``pack_texture=True`` (or use *File > External Data > Pack Resources*) for a self-contained
.blend.

Everything is built unlinked first and linked into the scene at the end; if anything fails, every
datablock made so far is removed, so a failed import leaves nothing behind.
"""

from __future__ import annotations

import json

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bpy
import numpy as np
from mathutils import Matrix

COLLECTION_NAME = "GANFit"
UV_LAYER_NAME = "UVMap"
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

    @property
    def has_shape_keys(self) -> bool:
        return self.neutral is not None and self.deltas is not None


def _file(folder: Path, meta: dict[str, Any], key: str, default: str) -> Path:
    name = (meta.get("files") or {}).get(key) or default
    return folder / name


def load_result(folder: str | Path) -> ResultFolder:
    """Read and check a result folder.

    Raises:
        ResultImportError: missing folder/files or inconsistent contents, with a readable message.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ResultImportError(f"Result folder not found: {folder}")
    meta_path = folder / "result.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ResultImportError(f"{folder} is not a GANFit result folder (no result.json)") from exc
    except (OSError, ValueError) as exc:
        raise ResultImportError(f"Cannot read {meta_path}: {exc}") from exc
    if not isinstance(meta, dict):
        raise ResultImportError(f"{meta_path} is not a JSON object")
    schema = meta.get("schema", 1)
    if schema != 1:
        raise ResultImportError(f"{meta_path} has schema {schema}; this add-on reads schema 1. "
                           "Update the add-on.")
    obj_path = _file(folder, meta, "obj", "face.obj")
    if not obj_path.is_file():
        raise ResultImportError(f"Missing mesh file: {obj_path}")
    obj = parse_obj(obj_path)
    albedo = _file(folder, meta, "albedo", "albedo.png")
    res = ResultFolder(folder=folder, meta=meta, obj=obj, albedo=albedo if albedo.is_file() else None)

    bs_path = _file(folder, meta, "blendshapes", "blendshapes.npz")
    if bs_path.is_file():
        try:
            with np.load(bs_path, allow_pickle=False) as z:
                neutral = np.asarray(z["neutral"], dtype=np.float32)
                deltas = np.asarray(z["deltas"], dtype=np.float32)
                names = [str(n) for n in z["names"]]
                weights = (np.asarray(z["weights"], dtype=np.float32) if "weights" in z.files
                           else np.zeros(len(names), dtype=np.float32))
        except (OSError, KeyError, ValueError) as exc:
            raise ResultImportError(f"Cannot read {bs_path}: {exc}") from exc
        v = len(obj.verts)
        if neutral.shape != (v, 3) or deltas.ndim != 3 or deltas.shape[1:] != (v, 3) \
                or len(names) != deltas.shape[0] or len(weights) != deltas.shape[0]:
            raise ResultImportError(f"{bs_path} does not match face.obj ({v} vertices)")
        res.neutral, res.deltas, res.names, res.weights = neutral, deltas, names, weights

    params_path = _file(folder, meta, "params", "params.npz")
    if params_path.is_file():
        try:
            with np.load(params_path, allow_pickle=False) as z:
                res.params = {k: np.asarray(z[k]) for k in z.files}
        except (OSError, ValueError):
            res.params = {}  # optional extras; the mesh does not depend on them
    return res


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


# ---------------------------------------------------------------------------------------------
# Building Blender data
# ---------------------------------------------------------------------------------------------
class _Created:
    """Every datablock this import made, for clean-up on failure."""

    def __init__(self) -> None:
        self.items: list[tuple[Any, Any]] = []  # (collection in bpy.data, datablock)

    def add(self, coll: Any, block: Any) -> Any:
        self.items.append((coll, block))
        return block

    def remove_all(self) -> None:
        for coll, block in reversed(self.items):
            try:
                coll.remove(block)
            except (ReferenceError, RuntimeError):
                pass  # already gone with its owner
        self.items.clear()


def _build_mesh(name: str, res: ResultFolder, created: _Created) -> bpy.types.Mesh:
    obj = res.obj
    # The Basis is the neutral (identity only) so that the expression shape keys at the fitted
    # values reproduce face.obj; without blendshapes the OBJ's vertices are the only shape.
    base = res.neutral if res.has_shape_keys else obj.verts
    co = obj_to_blender(base)
    mesh = created.add(bpy.data.meshes, bpy.data.meshes.new(name))
    n_loops = int(obj.face_sizes.sum())
    loop_start = np.zeros(len(obj.face_sizes), dtype=np.int32)
    np.cumsum(obj.face_sizes[:-1], out=loop_start[1:])

    mesh.vertices.add(len(co))
    mesh.vertices.foreach_set("co", co.ravel())
    mesh.loops.add(n_loops)
    mesh.loops.foreach_set("vertex_index", obj.face_verts)
    mesh.polygons.add(len(obj.face_sizes))
    mesh.polygons.foreach_set("loop_start", loop_start)
    if obj.face_uvs is not None and len(obj.uvs):
        uv_layer = mesh.uv_layers.new(name=UV_LAYER_NAME)
        uv_layer.data.foreach_set("uv", obj.uvs[obj.face_uvs].ravel())
    mesh.update(calc_edges=True)
    # validate() returns True when it had to fix something: a malformed OBJ, not fatal.
    mesh.validate(verbose=False)
    if hasattr(mesh, "shade_smooth"):
        mesh.shade_smooth()
    else:  # Blender < 4.1
        mesh.polygons.foreach_set("use_smooth", np.ones(len(mesh.polygons), dtype=bool))
    mesh.update()
    return mesh


def _build_material(name: str, res: ResultFolder, created: _Created, pack: bool
                    ) -> tuple[bpy.types.Material, bpy.types.Image | None]:
    mat = created.add(bpy.data.materials, bpy.data.materials.new(name))
    if bpy.app.version < (5, 0, 0):
        mat.use_nodes = True  # deprecated (always on) in 5.0
    nt = mat.node_tree
    nodes = nt.nodes
    bsdf = next((n for n in nodes if n.type == "BSDF_PRINCIPLED"), None)
    out = next((n for n in nodes if n.type == "OUTPUT_MATERIAL"), None)
    if bsdf is None:
        bsdf = nodes.new("ShaderNodeBsdfPrincipled")
    if out is None:
        out = nodes.new("ShaderNodeOutputMaterial")
    if not bsdf.outputs["BSDF"].links:
        nt.links.new(bsdf.outputs["BSDF"], out.inputs["Surface"])
    bsdf.location = (0, 300)
    out.location = (300, 300)
    if "Roughness" in bsdf.inputs:
        bsdf.inputs["Roughness"].default_value = 0.6
    image = None
    if res.albedo is not None:
        existing = {id(i) for i in bpy.data.images}
        image = bpy.data.images.load(str(res.albedo), check_existing=True)
        if id(image) not in existing:
            created.add(bpy.data.images, image)
        image.name = f"{name}_albedo"
        if bpy.data.filepath:
            try:
                image.filepath = bpy.path.relpath(str(res.albedo))
            except ValueError:
                pass  # another drive on Windows: keep the absolute path
        if pack:
            image.pack()
        tex = nodes.new("ShaderNodeTexImage")
        tex.name = tex.label = "GANFit Albedo"
        tex.image = image
        tex.location = (-400, 300)
        nt.links.new(tex.outputs["Color"], bsdf.inputs["Base Color"])
    return mat, image


def _add_shape_keys(ob: bpy.types.Object, res: ResultFolder) -> None:
    assert res.neutral is not None and res.deltas is not None and res.weights is not None
    basis = ob.shape_key_add(name="Basis", from_mix=False)
    basis.interpolation = "KEY_LINEAR"
    neutral = res.neutral
    for k, key_name in enumerate(res.names):
        key = ob.shape_key_add(name=key_name, from_mix=False)
        key.data.foreach_set("co", obj_to_blender(neutral + res.deltas[k]).ravel())
        key.slider_min = 0.0
        key.slider_max = 1.0
        key.value = float(np.clip(res.weights[k], 0.0, 1.0))
    ob.data.shape_keys.use_relative = True
    ob.active_shape_key_index = 0


def _set_custom_props(ob: bpy.types.Object, res: ResultFolder) -> None:
    meta = res.meta
    ob["ganfit_result"] = str(res.folder.resolve())
    ob["ganfit_engine"] = str(meta.get("engine", ""))
    ob["ganfit_photo"] = str(meta.get("photo", ""))
    ob["ganfit_preset"] = str(meta.get("preset", ""))
    metrics = meta.get("metrics") or {}
    for key in ("landmark_error_iod", "identity_cosine"):
        if isinstance(metrics.get(key), (int, float)):
            ob[f"ganfit_{key}"] = float(metrics[key])
    timings = meta.get("timings") or {}
    if isinstance(timings.get("total"), (int, float)):
        ob["ganfit_time_s"] = float(timings["total"])
    p = res.params
    if "shape" in p:
        ob["ganfit_shape"] = [float(x) for x in np.asarray(p["shape"], dtype=np.float64).ravel()]
    if "expression" in p:
        ob["ganfit_expression"] = [float(x) for x in np.asarray(p["expression"]).ravel()]
    elif res.weights is not None:
        ob["ganfit_expression"] = [float(x) for x in res.weights]
    if "focal_px" in p:
        ob["ganfit_focal_px"] = float(np.asarray(p["focal_px"]).ravel()[0])


FITTED_GROUP = "GANFit_fitted"


def _add_fitted_group(ob: bpy.types.Object, res: ResultFolder) -> None:
    """Vertex group of the part fitted to the photo (the first ``mesh.fitted_vertices``
    vertices, docs/result-format.md); the rest of the head is carried along by the model."""
    n = (res.meta.get("mesh") or {}).get("fitted_vertices")
    if not isinstance(n, int) or not 0 < n <= len(ob.data.vertices):
        return
    group = ob.vertex_groups.new(name=FITTED_GROUP)
    group.add(range(n), 1.0, "REPLACE")


def _build_camera(name: str, res: ResultFolder, scene: bpy.types.Scene, created: _Created
                  ) -> tuple[bpy.types.Object, CameraSetup] | None:
    cam_meta = res.meta.get("camera")
    if not cam_meta:
        return None
    setup = camera_setup(cam_meta)
    cam = created.add(bpy.data.cameras, bpy.data.cameras.new(name))
    cam.sensor_fit = "HORIZONTAL"
    cam.sensor_width = SENSOR_WIDTH_MM
    cam.lens = setup.lens
    cam.shift_x = setup.shift_x
    cam.shift_y = setup.shift_y
    cam.clip_start = setup.clip_start
    cam.clip_end = setup.clip_end
    photo = res.meta.get("photo")
    if photo and Path(photo).is_file():
        existing = {id(i) for i in bpy.data.images}
        img = bpy.data.images.load(str(photo), check_existing=True)
        if id(img) not in existing:
            created.add(bpy.data.images, img)
        bg = cam.background_images.new()
        bg.image = img
        bg.frame_method = "STRETCH"  # the photo is exactly the render frame
        bg.alpha = 1.0
        bg.display_depth = "BACK"
        cam.show_background_images = True
    ob = created.add(bpy.data.objects, bpy.data.objects.new(name, cam))
    ob.matrix_world = Matrix(setup.matrix_world.tolist())
    return ob, setup


def import_result(folder: str | Path, context: Any = None, *, create_camera: bool = True,
                  shape_keys: bool = True, pack_texture: bool = False,
                  name: str | None = None) -> bpy.types.Object:
    """Import a result folder into the current scene as one undoable step.

    Args:
        folder: the result folder (``docs/result-format.md``).
        context: a bpy context (default ``bpy.context``).
        create_camera: add a camera with the fitted intrinsics/extrinsics, the photo as its
            background, make it the scene camera and set the render resolution to the photo size.
        shape_keys: add the 53 expression shape keys (Basis = neutral) with the fitted values.
        pack_texture: pack albedo.png into the .blend instead of referencing it.
        name: object name (default ``GANFit_<photo stem>``).

    Returns:
        The new mesh object, selected and active, in the "GANFit" collection.

    Raises:
        ResultImportError: the folder cannot be imported (nothing is left in the file).
    """
    context = context or bpy.context
    scene = context.scene
    res = load_result(folder)
    photo = res.meta.get("photo") or res.folder.name
    name = name or f"GANFit_{Path(str(photo)).stem}"[:60]
    created = _Created()
    try:
        mesh = _build_mesh(name, res, created)
        mat, _image = _build_material(name, res, created, pack_texture)
        mesh.materials.append(mat)
        ob = created.add(bpy.data.objects, bpy.data.objects.new(name, mesh))
        if shape_keys and res.has_shape_keys:
            _add_shape_keys(ob, res)
        _set_custom_props(ob, res)
        _add_fitted_group(ob, res)
        cam_result = _build_camera(f"{name}_camera", res, scene, created) if create_camera else None

        # Link last: everything above succeeded.
        coll = bpy.data.collections.get(COLLECTION_NAME)
        if coll is None:
            coll = created.add(bpy.data.collections, bpy.data.collections.new(COLLECTION_NAME))
        if scene.collection.children.find(coll.name) < 0 and coll.name not in \
                {c.name for c in scene.collection.children_recursive}:
            scene.collection.children.link(coll)
        coll.objects.link(ob)
        if cam_result is not None:
            cam_ob, setup = cam_result
            coll.objects.link(cam_ob)
            scene.camera = cam_ob
            render = scene.render
            render.resolution_x = setup.width
            render.resolution_y = setup.height
            render.resolution_percentage = 100
            render.pixel_aspect_x = setup.pixel_aspect_x
            render.pixel_aspect_y = setup.pixel_aspect_y
            ob["ganfit_camera"] = cam_ob.name
    except ResultImportError:
        created.remove_all()
        raise
    except Exception as exc:
        created.remove_all()
        raise ResultImportError(f"Import of {folder} failed: {exc}") from exc

    view_layer = context.view_layer
    view_layer.update()  # resync the view layer's bases with the newly linked collection
    for other in view_layer.objects:
        if other.select_get():
            other.select_set(False)
    if ob.name in view_layer.objects:
        ob.select_set(True)
        view_layer.objects.active = ob
    return ob


def projected_points(ob_camera: bpy.types.Object, scene: bpy.types.Scene,
                     points_world: np.ndarray) -> np.ndarray:
    """Pixel coordinates (x right, y down, top-left origin) of Blender world points seen by a
    camera object, using Blender's own projection (for tests and checks).

    Args:
        points_world: (N, 3) Blender world coordinates.

    Returns:
        (N, 2) float64 pixel coordinates in the render frame.
    """
    from bpy_extras.object_utils import world_to_camera_view
    from mathutils import Vector

    r = scene.render
    w = r.resolution_x * r.resolution_percentage / 100.0
    h = r.resolution_y * r.resolution_percentage / 100.0
    out = np.empty((len(points_world), 2))
    for i, p in enumerate(points_world):  # a handful of test points, not a mesh
        ndc = world_to_camera_view(scene, ob_camera, Vector(p.tolist()))
        out[i] = (ndc.x * w, (1.0 - ndc.y) * h)
    return out


__all__ = ["import_result", "load_result", "parse_obj", "camera_setup", "obj_to_blender",
           "ResultImportError", "ResultImportError", "COLLECTION_NAME"]
