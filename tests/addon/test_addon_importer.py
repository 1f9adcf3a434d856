"""Importer: a result folder (written by addon_testlib from the face model asset) -> Blender data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import bpy
from addon_testlib import ADDON

pytestmark = pytest.mark.usefixtures("addon")


def _importer():
    import importlib
    return importlib.import_module(f"{ADDON}.importer")


def _check_imported(ob, folder: Path, meta: dict) -> None:
    imp = _importer()
    res = imp.load_result(folder)
    assert ob.type == "MESH"
    me = ob.data
    assert len(me.vertices) == len(res.obj.verts)
    assert len(me.polygons) == len(res.obj.face_sizes)
    assert len(me.loops) == int(res.obj.face_sizes.sum())
    sizes = np.zeros(len(me.polygons), np.int32)
    me.polygons.foreach_get("loop_total", sizes)
    assert set(np.unique(sizes)) <= {3, 4}
    assert np.array_equal(sizes, res.obj.face_sizes)
    # Per-corner UVs survive exactly (seams kept).
    assert me.uv_layers.active is not None and me.uv_layers.active.name == "UVMap"
    uv = np.zeros(len(me.loops) * 2, np.float32)
    me.uv_layers.active.data.foreach_get("uv", uv)
    assert np.allclose(uv.reshape(-1, 2), res.obj.uvs[res.obj.face_uvs], atol=1e-6)
    smooth = np.zeros(len(me.polygons), bool)
    me.polygons.foreach_get("use_smooth", smooth)
    assert smooth.all()

    # Material: Principled BSDF <- Image Texture(albedo.png), image loadable.
    mat = me.materials[0]
    nodes = mat.node_tree.nodes
    bsdf = next(n for n in nodes if n.type == "BSDF_PRINCIPLED")
    link = bsdf.inputs["Base Color"].links[0]
    tex = link.from_node
    assert tex.type == "TEX_IMAGE" and tex.image is not None
    img = tex.image
    assert Path(bpy.path.abspath(img.filepath)).resolve() == (folder / "albedo.png").resolve()
    assert tuple(img.size) == (64, 64)
    assert img.has_data or img.pixels[0] is not None

    # Shape keys: Basis = neutral, 53 ARKit-named keys = neutral + deltas[k], fitted values.
    keys = me.shape_keys.key_blocks
    assert keys[0].name == "Basis" and len(keys) == 54
    assert [k.name for k in keys[1:]] == list(res.names)
    vals = np.array([k.value for k in keys[1:]], np.float32)
    assert np.allclose(vals, res.weights, atol=1e-6)
    co = np.zeros(len(me.vertices) * 3, np.float32)
    keys[0].data.foreach_get("co", co)
    assert np.allclose(co.reshape(-1, 3), imp.obj_to_blender(res.neutral), atol=1e-6)
    k = 6
    keys[k].data.foreach_get("co", co)
    assert np.allclose(co.reshape(-1, 3), imp.obj_to_blender(res.neutral + res.deltas[k - 1]),
                       atol=1e-6)
    # The evaluated mix equals face.obj (in Blender axes).
    deps = bpy.context.evaluated_depsgraph_get()
    ev = ob.evaluated_get(deps).data
    ev.vertices.foreach_get("co", co)
    assert np.allclose(co.reshape(-1, 3), imp.obj_to_blender(res.obj.verts), atol=2e-5)

    # The fitted part as a vertex group.
    group = ob.vertex_groups["GANFit_fitted"]
    n_fit = meta["mesh"]["fitted_vertices"]
    assert group.index == 0 and len(ob.data.vertices[n_fit - 1].groups) == 1
    assert len(ob.data.vertices[n_fit].groups) == 0

    # Custom properties.
    assert Path(ob["ganfit_result"]).resolve() == folder.resolve()
    assert len(ob["ganfit_shape"]) == len(res.params["shape"])
    assert ob["ganfit_landmark_error_iod"] == pytest.approx(meta["metrics"]["landmark_error_iod"])

    # Camera: render size = photo size, photo as background, in the GANFit collection.
    scene = bpy.context.scene
    cam = scene.camera
    assert cam is not None and cam.type == "CAMERA"
    assert (scene.render.resolution_x, scene.render.resolution_y) == \
        (meta["camera"]["width"], meta["camera"]["height"])
    assert cam.data.background_images[0].image is not None
    coll = bpy.data.collections["GANFit"]
    assert ob.name in coll.objects and cam.name in coll.objects
    assert coll.name in scene.collection.children


def test_import_result_operator(fake_result):
    meta = json.loads((fake_result / "result.json").read_text())
    assert bpy.ops.ganfit.import_result(directory=str(fake_result)) == {"FINISHED"}
    ob = bpy.context.view_layer.objects.active
    _check_imported(ob, fake_result, meta)


def test_saved_and_reloaded_blend_finds_texture(fake_result, tmp_path):
    meta = json.loads((fake_result / "result.json").read_text())
    # Saved first, as usual: results live next to the .blend and are referenced relatively.
    blend = fake_result.parent / "scene.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    from importlib import import_module
    ob = import_module(f"{ADDON}.api").import_result(fake_result)
    name = ob.name
    img_path = ob.data.materials[0].node_tree.nodes["GANFit Albedo"].image.filepath
    assert img_path.startswith("//"), img_path
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    bpy.ops.wm.read_homefile(use_empty=True)
    bpy.ops.wm.open_mainfile(filepath=str(blend))
    ob = bpy.data.objects[name]
    img = ob.data.materials[0].node_tree.nodes["GANFit Albedo"].image
    img.reload()
    assert tuple(img.size) == (64, 64), "image not found after reload"
    _check_imported(ob, fake_result, meta)


def test_unsaved_import_then_save_elsewhere(fake_result, tmp_path):
    ob = _importer().import_result(fake_result)
    img = ob.data.materials[0].node_tree.nodes["GANFit Albedo"].image
    assert Path(img.filepath).is_absolute()
    blend = tmp_path / "other" / "x.blend"
    blend.parent.mkdir()
    img_name = img.name
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    bpy.ops.wm.open_mainfile(filepath=str(blend))
    img = bpy.data.images[img_name]
    img.reload()
    assert tuple(img.size) == (64, 64)


def test_camera_projection_matches_result_json(fake_result):
    """Blender's projection through the imported camera = the doc's pinhole formula."""
    imp = _importer()
    meta = json.loads((fake_result / "result.json").read_text())
    ob = imp.import_result(fake_result)
    res = imp.load_result(fake_result)
    pts = res.obj.verts[:: max(1, len(res.obj.verts) // 50)].astype(np.float64)
    cam = meta["camera"]
    w2c = np.array(cam["world_to_camera"])
    pc = pts @ w2c[:3, :3].T + w2c[:3, 3]
    u = cam["cx"] + cam["fx"] * pc[:, 0] / -pc[:, 2]
    v = cam["cy"] - cam["fy"] * pc[:, 1] / -pc[:, 2]
    got = imp.projected_points(bpy.context.scene.camera, bpy.context.scene,
                               imp.obj_to_blender(pts).astype(np.float64))
    assert np.abs(got - np.stack([u, v], 1)).max() < 1e-2
    assert ob.name in bpy.data.objects


def test_failed_import_leaves_nothing(fake_result):
    (fake_result / "blendshapes.npz").write_bytes(b"not an npz")
    before = {c: len(getattr(bpy.data, c)) for c in ("objects", "meshes", "materials", "images",
                                                   "cameras", "collections")}
    with pytest.raises(_importer().ResultImportError):
        _importer().import_result(fake_result)
    after = {c: len(getattr(bpy.data, c)) for c in before}
    assert after == before


def test_failure_after_building_cleans_up(fake_result, monkeypatch):
    imp = _importer()
    before = {c: len(getattr(bpy.data, c)) for c in ("objects", "meshes", "materials", "images",
                                                   "cameras", "collections")}

    def boom(*a, **k):
        raise RuntimeError("camera exploded")
    monkeypatch.setattr(imp, "_build_camera", boom)
    with pytest.raises(imp.ResultImportError, match="camera exploded"):
        imp.import_result(fake_result)
    assert {c: len(getattr(bpy.data, c)) for c in before} == before


def test_import_operator_reports_bad_folder(tmp_path):
    with pytest.raises(RuntimeError, match="not a GANFit result folder"):
        bpy.ops.ganfit.import_result(directory=str(tmp_path))
    assert len(bpy.data.objects) == 0


def test_parse_obj_forms(tmp_path):
    imp = _importer()
    p = tmp_path / "m.obj"
    p.write_text("v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 1 1\nvt 0 1\n"
                 "f 1/1 2/2 3/3 4/4\nf -4/-4 -2/-2 -1/-1\n")
    m = imp.parse_obj(p)
    assert m.face_sizes.tolist() == [4, 3]
    assert m.face_verts.tolist() == [0, 1, 2, 3, 0, 2, 3]
    assert m.face_uvs.tolist() == [0, 1, 2, 3, 0, 2, 3]
    p.write_text("v 0 0 0\nv 1 0 0\nv 1 1 0\nf 1//1 2//1 3//1\n")
    m = imp.parse_obj(p)
    assert m.face_uvs is None and m.face_verts.tolist() == [0, 1, 2]
    p.write_text("v 0 0 0\nf 1 2 3\n")
    with pytest.raises(imp.ResultImportError):
        imp.parse_obj(p)


def test_make_blend_script(fake_result, tmp_path):
    import subprocess
    import sys
    from addon_testlib import REPO
    out = tmp_path / "demo" / "face.blend"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "make_blend.py"),
                           str(fake_result), str(out)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert out.is_file() and "53 shape keys" in proc.stdout
    bpy.ops.wm.open_mainfile(filepath=str(out))
    obs = [o for o in bpy.data.objects if o.type == "MESH"]
    assert len(obs) == 1 and obs[0].data.materials[0].node_tree.nodes["GANFit Albedo"].image
    bpy.ops.wm.read_homefile(use_empty=True)


# ---------------------------------------------------------------------------------------------
# Several photos of one person: one head, one camera per photo
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def multi_result(tmp_path):
    from addon_testlib import write_fake_result
    folder = tmp_path / "mv" / "result"
    folder.parent.mkdir()
    write_fake_result(folder, views=3)
    return folder


def test_multi_view_import_one_head_one_camera_per_photo(multi_result):
    imp = _importer()
    meta = json.loads((multi_result / "result.json").read_text())
    assert bpy.ops.ganfit.import_result(directory=str(multi_result)) == {"FINISHED"}
    ob = bpy.context.view_layer.objects.active
    _check_imported(ob, multi_result, meta)  # the head, as from one photo
    assert len([o for o in bpy.data.objects if o.type == "MESH"]) == 1
    cams = [o for o in bpy.data.objects if o.type == "CAMERA"]
    assert len(cams) == 3
    views = meta["views"]
    names = [f"{ob.name} camera: {Path(v['photo']).name}" for v in views]
    assert sorted(c.name for c in cams) == sorted(names)
    assert list(ob["ganfit_cameras"]) == names and ob["ganfit_views"] == 3
    assert [c.name for c in imp.head_cameras(ob)] == names
    for name, view in zip(names, views):
        cam = bpy.data.objects[name]
        bg = cam.data.background_images[0].image
        assert Path(bpy.path.abspath(bg.filepath)).resolve() == Path(view["photo"]).resolve()
        assert tuple(bg.size) == (view["image"]["width"], view["image"]["height"])
        assert list(cam["ganfit_resolution"]) == [view["camera"]["width"], view["camera"]["height"]]
        s = imp.camera_setup(view["camera"])
        assert np.allclose(np.array(cam.matrix_world), s.matrix_world, atol=1e-5)
        assert cam.data.lens == pytest.approx(s.lens, rel=1e-5)
        assert name in bpy.data.collections["GANFit"].objects
    scene = bpy.context.scene
    assert scene.camera.name == names[0] and ob["ganfit_camera"] == names[0]
    assert (scene.render.resolution_x, scene.render.resolution_y) == (256, 320)


def test_use_camera_switches_the_render_frame(multi_result):
    imp = _importer()
    meta = json.loads((multi_result / "result.json").read_text())
    ob = imp.import_result(multi_result)
    second = imp.head_cameras(ob)[1]
    assert bpy.ops.ganfit.use_camera(camera=second.name) == {"FINISHED"}
    scene = bpy.context.scene
    assert scene.camera == second
    assert (scene.render.resolution_x, scene.render.resolution_y) == (300, 240)
    # Blender's projection through the second camera = the pinhole formula of view 2.
    cam = meta["views"][1]["camera"]
    res = imp.load_result(multi_result)
    pts = res.obj.verts[:: max(1, len(res.obj.verts) // 40)].astype(np.float64)
    w2c = np.array(cam["world_to_camera"])
    pc = pts @ w2c[:3, :3].T + w2c[:3, 3]
    u = cam["cx"] + cam["fx"] * pc[:, 0] / -pc[:, 2]
    v = cam["cy"] - cam["fy"] * pc[:, 1] / -pc[:, 2]
    got = imp.projected_points(second, scene, imp.obj_to_blender(pts).astype(np.float64))
    assert np.abs(got - np.stack([u, v], 1)).max() < 1e-2
    # ... with the expression fitted to that photo on the head's shape keys, and back.
    keys = ob.data.shape_keys.key_blocks
    view2 = dict(zip(meta["views"][1]["expression"]["names"], meta["views"][1]["expression"]["weights"]))
    assert all(keys[n].value == pytest.approx(w, abs=1e-6) for n, w in view2.items())
    assert keys[meta["expression"]["names"][20]].value == 0.0 != meta["expression"]["weights"][20]
    assert bpy.ops.ganfit.use_camera(camera=imp.head_cameras(ob)[0].name) == {"FINISHED"}
    assert np.allclose([k.value for k in keys[1:]], meta["expression"]["weights"], atol=1e-6)
    assert bpy.ops.ganfit.use_camera(camera=second.name, expression=False) == {"FINISHED"}
    assert np.allclose([k.value for k in keys[1:]], meta["expression"]["weights"], atol=1e-6)
    assert (scene.render.resolution_x, scene.render.resolution_y) == (300, 240)
    with pytest.raises(RuntimeError, match="not a GANFit camera"):
        bpy.ops.ganfit.use_camera(camera=ob.name)


def test_multi_view_without_cameras_and_long_names(multi_result):
    imp = _importer()
    ob = imp.import_result(multi_result, create_camera=False)
    assert [o for o in bpy.data.objects if o.type == "CAMERA"] == [] and imp.head_cameras(ob) == []
    assert ob["ganfit_views"] == 3
    view = imp.View(index=2, photo="/p/" + "ä" * 40 + ".jpg", camera=None)
    name = imp.camera_name("GANFit_" + "x" * 53, view, True)
    assert len(name.encode("utf-8")) <= 63 and name.startswith("GANFit_x") and " camera: ä" in name
    assert imp.camera_name("GANFit_me", view, False) == "GANFit_me_camera"


def test_multi_view_failed_import_leaves_nothing(multi_result):
    imp = _importer()
    before = {c: len(getattr(bpy.data, c)) for c in ("objects", "meshes", "materials", "images",
                                                   "cameras", "collections")}
    real = imp._build_camera
    calls = []

    def third_fails(name, view, created):
        calls.append(view.index)
        if view.index == 3:
            raise RuntimeError("third camera exploded")
        return real(name, view, created)
    import unittest.mock
    with unittest.mock.patch.object(imp, "_build_camera", third_fails):
        with pytest.raises(imp.ResultImportError, match="third camera exploded"):
            imp.import_result(multi_result)
    assert calls == [1, 2, 3]
    assert {c: len(getattr(bpy.data, c)) for c in before} == before
