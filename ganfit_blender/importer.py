"""Build Blender data from an engine result folder (``docs/result-format.md``).

Reading and checking the folder (schema, OBJ, arrays, camera maths, the axis and UV conventions)
is ``result.py``, which has no bpy; this module only builds Blender data from it.

Texture: the Image Texture references ``albedo.png`` in the result folder; it is **not packed**.
Result folders live next to the saved .blend (``<blend dir>/ganfit/...``), and the image path is
stored relative to the .blend (``//ganfit/.../albedo.png``) when the .blend is saved, or absolute
when it is not (Blender's save with *Remap Relative*, the default, makes it relative then). A
saved and reloaded .blend therefore finds the image as long as the result folder travels with
it. Pass ``pack_texture=True`` (or use *File > External Data > Pack Resources*) for a self-contained
.blend.

Cameras: one for a one-photo result (``<name>_camera``); a fit of several photos of one person
gets one per photo (``<name> camera: B.jpg``), each with its photo as background and its render
size kept on it (``ganfit_resolution``): :func:`use_camera` makes one the scene camera together
with that size, :func:`head_cameras` lists a head's cameras in photo order.

Everything is built unlinked first and linked into the scene at the end; if anything fails, every
datablock made so far is removed, so a failed import leaves nothing behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bpy
import numpy as np
from mathutils import Matrix

# The bpy-free reading of the folder (re-exported: scripts and tests use them from here).
from .result import (AXIS, SENSOR_WIDTH_MM, CameraSetup, ObjMesh, ResultFolder,  # noqa: F401
                     ResultImportError, View, camera_setup, check_png, load_result,
                     obj_to_blender, parse_obj)

COLLECTION_NAME = "GANFit"
UV_LAYER_NAME = "UVMap"


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


def _load_albedo(name: str, res: ResultFolder, created: _Created) -> bpy.types.Image | None:
    """albedo.png as a Blender image, or None (and a warning on ``res``) if Blender cannot decode
    it: the head is then imported untextured, and the operator says so."""
    assert res.albedo is not None
    existing = {i.as_pointer() for i in bpy.data.images}
    try:
        image = bpy.data.images.load(str(res.albedo), check_existing=True)
    except RuntimeError as exc:
        res.warnings.append(f"{res.albedo.name} cannot be loaded ({exc}): the head was imported "
                            "without its texture.")
        return None
    if image.as_pointer() not in existing:
        if image.size[0] == 0 or image.size[1] == 0:  # decoding failed: pixels never arrive
            bpy.data.images.remove(image)
            res.warnings.append(f"{res.albedo.name} cannot be decoded: the head was imported "
                                "without its texture.")
            return None
        created.add(bpy.data.images, image)
    image.name = f"{name}_albedo"
    return image


WARNINGS_PROP = "ganfit_warnings"


def result_warnings(ob: Any) -> list[str]:
    """The warnings of the import that made ``ob`` (the engine's and the reader's), one a line."""
    text = ob.get(WARNINGS_PROP, "") if ob is not None else ""
    return [line for line in str(text).splitlines() if line.strip()]


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
    image = _load_albedo(name, res, created) if res.albedo is not None else None
    if image is not None:
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


CAMERA_PHOTO_PROP = "ganfit_photo"
CAMERA_VIEW_PROP = "ganfit_view"
CAMERA_RESOLUTION_PROP = "ganfit_resolution"
CAMERA_ASPECT_PROP = "ganfit_pixel_aspect"
CAMERA_EXPRESSION_PROP = "ganfit_view_expression"  # the photo's expression, shape key -> weight
CAMERA_HEAD_PROP = "ganfit_head"  # the head object the camera was made for
CAMERAS_PROP = "ganfit_cameras"  # on the head: its cameras' names, one per photo (several photos)


MAX_NAME_BYTES = 63  # Blender's datablock names


def camera_name(name: str, view: View, multi: bool) -> str:
    """``<name>_camera`` for a one-photo result (as before); with several photos one camera per
    photo, ``<name> camera: B.jpg``, the object name shortened so that the photo's name fits
    Blender's 63 bytes."""
    if not multi:
        return f"{name}_camera"
    tail = f" camera: {view.photo_name}"
    room = MAX_NAME_BYTES - len(tail.encode("utf-8"))
    if room < 8:  # a very long photo name: keep some of the object name, cut the photo's
        tail = tail.encode("utf-8")[:MAX_NAME_BYTES - 8].decode("utf-8", "ignore")
        room = MAX_NAME_BYTES - len(tail.encode("utf-8"))
    head = name.encode("utf-8")[:room].decode("utf-8", "ignore")
    return head + tail


def _build_camera(name: str, view: View, created: _Created
                  ) -> tuple[bpy.types.Object, CameraSetup] | None:
    """A camera object (unlinked) for one view, with its photo as the background image."""
    if not view.camera:
        return None
    setup = camera_setup(view.camera)
    cam = created.add(bpy.data.cameras, bpy.data.cameras.new(name))
    cam.sensor_fit = "HORIZONTAL"
    cam.sensor_width = SENSOR_WIDTH_MM
    cam.lens = setup.lens
    cam.shift_x = setup.shift_x
    cam.shift_y = setup.shift_y
    cam.clip_start = setup.clip_start
    cam.clip_end = setup.clip_end
    photo = view.photo
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
    # What ganfit.use_camera needs to make it the scene camera with its own photo's frame.
    ob[CAMERA_PHOTO_PROP] = str(photo or "")
    ob[CAMERA_VIEW_PROP] = view.index
    ob[CAMERA_RESOLUTION_PROP] = [setup.width, setup.height]
    ob[CAMERA_ASPECT_PROP] = [setup.pixel_aspect_x, setup.pixel_aspect_y]
    if view.expression:
        ob[CAMERA_EXPRESSION_PROP] = dict(view.expression)
    if "landmark_error_iod" in view.metrics:
        ob["ganfit_landmark_error_iod"] = view.metrics["landmark_error_iod"]
    return ob, setup


def use_camera(scene: bpy.types.Scene, cam_ob: bpy.types.Object, expression: bool = False
               ) -> None:
    """Make a GANFit camera the scene camera and set the render frame to its photo's size (one
    scene has one render size, so a photo of another size needs it changed with the camera).

    Args:
        expression: also set the head's expression shape keys to the expression fitted to this
            camera's photo (a fit of several photos has one per photo), so that the head seen
            through the camera matches its photo.
    """
    if expression:
        head = bpy.data.objects.get(str(cam_ob.get(CAMERA_HEAD_PROP, "")))
        weights = cam_ob.get(CAMERA_EXPRESSION_PROP)
        keys = head.data.shape_keys if head is not None and head.type == "MESH" else None
        if keys is not None and weights is not None:
            for name, value in weights.items():
                block = keys.key_blocks.get(name)
                if block is not None:
                    block.value = float(np.clip(value, block.slider_min, block.slider_max))
    scene.camera = cam_ob
    res = cam_ob.get(CAMERA_RESOLUTION_PROP)
    aspect = cam_ob.get(CAMERA_ASPECT_PROP)
    render = scene.render
    if res is not None and len(res) == 2:
        render.resolution_x, render.resolution_y = int(res[0]), int(res[1])
        render.resolution_percentage = 100
    if aspect is not None and len(aspect) == 2:
        render.pixel_aspect_x, render.pixel_aspect_y = float(aspect[0]), float(aspect[1])


def head_cameras(ob: Any) -> list[bpy.types.Object]:
    """The camera objects an import made for the head ``ob`` (one per photo), in view order;
    cameras deleted since are left out."""
    if ob is None:
        return []
    names = ob.get(CAMERAS_PROP)
    if names is None:
        names = [ob["ganfit_camera"]] if "ganfit_camera" in ob else []
    out = []
    for n in names:
        cam = bpy.data.objects.get(str(n))
        if cam is not None and cam.type == "CAMERA":
            out.append(cam)
    return out


def import_result(folder: str | Path, context: Any = None, *, create_camera: bool = True,
                  shape_keys: bool = True, pack_texture: bool = False,
                  name: str | None = None) -> bpy.types.Object:
    """Import a result folder into the current scene as one undoable step.

    Args:
        folder: the result folder (``docs/result-format.md``).
        context: a bpy context (default ``bpy.context``).
        create_camera: add a camera with the fitted intrinsics/extrinsics, the photo as its
            background, make it the scene camera and set the render resolution to the photo size.
            A fit of several photos gets one camera per photo (``<name> camera: B.jpg``, each
            with its own photo as background); the first photo's is the scene camera.
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
        if res.warnings:
            ob[WARNINGS_PROP] = "\n".join(dict.fromkeys(res.warnings))
        _add_fitted_group(ob, res)
        cameras = []
        if create_camera:
            for view in res.views:
                made = _build_camera(camera_name(name, view, res.multi_view), view, created)
                if made is not None:
                    cameras.append(made)
        if res.multi_view:
            ob["ganfit_views"] = len(res.views)
            ob["ganfit_photos"] = [v.photo for v in res.views]

        # Link last: everything above succeeded.
        coll = bpy.data.collections.get(COLLECTION_NAME)
        if coll is None:
            coll = created.add(bpy.data.collections, bpy.data.collections.new(COLLECTION_NAME))
        if scene.collection.children.find(coll.name) < 0 and coll.name not in \
                {c.name for c in scene.collection.children_recursive}:
            scene.collection.children.link(coll)
        coll.objects.link(ob)
        for cam_ob, _setup in cameras:
            coll.objects.link(cam_ob)
            cam_ob[CAMERA_HEAD_PROP] = ob.name
        if cameras:
            primary = cameras[0][0]
            use_camera(scene, primary)
            ob["ganfit_camera"] = primary.name
            if res.multi_view:
                ob[CAMERAS_PROP] = [c.name for c, _ in cameras]
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


__all__ = ["import_result", "result_warnings", "use_camera", "head_cameras", "load_result",
           "parse_obj", "camera_setup",
           "obj_to_blender", "ResultImportError", "COLLECTION_NAME"]
