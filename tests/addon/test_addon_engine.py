"""The add-on with the real engine: `python -m engine fit ... --preset fast --max-steps 4`.

Skipped (with the reason) until the engine's fit command exists. Each fit takes ~30 s on 2 CPU
cores; the successful fit runs once per module and its result folder is reused.
"""

from __future__ import annotations

import importlib
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import bpy
from addon_testlib import ADDON, PHOTO, pid_gone

pytestmark = [pytest.mark.slow, pytest.mark.needs_torch,
              pytest.mark.usefixtures("real_engine", "addon")]

MAX_STEPS = 4
_CACHE: dict[str, str] = {}


def _runner():
    return importlib.import_module(f"{ADDON}.runner")


def _photo_size(path: Path) -> tuple[int, int]:
    img = bpy.data.images.load(str(path), check_existing=False)
    try:
        return tuple(img.size)
    finally:
        bpy.data.images.remove(img)


def _meshes():
    return [o for o in bpy.data.objects if o.type == "MESH"]


def _fit(**kw):
    return bpy.ops.ganfit.fit(filepath=str(kw.pop("photo", PHOTO)), preset="fast",
                              max_steps=MAX_STEPS, **kw)


def test_fit_real_engine():
    t0 = time.monotonic()
    assert _fit() == {"FINISHED"}
    ob = bpy.context.view_layer.objects.active
    assert ob is not None and ob.type == "MESH" and len(_meshes()) == 1
    assert len(ob.data.vertices) > 1000 and len(ob.data.polygons) > 1000
    keys = ob.data.shape_keys.key_blocks
    assert len(keys) == 54 and keys[0].name == "Basis"
    assert "jawOpen" in keys
    scene = bpy.context.scene
    assert (scene.render.resolution_x, scene.render.resolution_y) == _photo_size(PHOTO)
    assert scene.camera is not None and scene.camera.data.background_images[0].image is not None
    img = ob.data.materials[0].node_tree.nodes["GANFit Albedo"].image
    assert img.size[0] > 0 and img.size[0] == img.size[1]
    assert 0 < ob["ganfit_landmark_error_iod"] < 0.5 and len(ob["ganfit_shape"]) == 100
    rt = bpy.context.window_manager.ganfit
    assert not rt.running and rt.progress == 1.0 and "landmark error" in rt.last_summary
    job = _runner().jobs()[-1]
    assert job.state == "done" and pid_gone(job.pid)
    assert job.hello.get("engine") and job.preview_path  # hello and at least one preview seen
    assert bpy.data.images.get(".ganfit_preview") is not None
    _CACHE["result"] = ob["ganfit_result"]
    print(f"fit + import took {time.monotonic() - t0:.1f} s")


def _result_dir() -> Path:
    if "result" not in _CACHE:
        test_fit_real_engine()
        bpy.ops.wm.read_homefile(use_empty=True)
    return Path(_CACHE["result"])


def _keep_fitted_part(ob) -> None:
    """Replace ``ob``'s mesh by its evaluated shape (shape keys baked) without the faces outside
    the fitted vertex group: what the engine's render.png shows."""
    import bmesh
    imp = importlib.import_module(f"{ADDON}.importer")
    group = ob.vertex_groups[imp.FITTED_GROUP].index
    deps = bpy.context.evaluated_depsgraph_get()
    me = bpy.data.meshes.new_from_object(ob.evaluated_get(deps))
    bm = bmesh.new()
    bm.from_mesh(me)
    deform = bm.verts.layers.deform.active
    drop = [f for f in bm.faces if any(group not in v[deform] for v in f.verts)]
    bmesh.ops.delete(bm, geom=drop, context="FACES")
    bm.to_mesh(me)
    bm.free()
    ob.shape_key_clear()
    ob.data = me


def _alpha_iou_with(ref_png: Path, tmp_path: Path) -> float:
    """Workbench render through the scene camera (transparent film, half size) vs the alpha of
    one of the engine's renders: intersection over union of the two silhouettes."""
    from PIL import Image
    scene = bpy.context.scene
    r = scene.render
    r.engine = "BLENDER_WORKBENCH"
    r.film_transparent = True
    r.resolution_percentage = 50
    r.image_settings.file_format = "PNG"
    r.image_settings.color_mode = "RGBA"
    r.filepath = str(tmp_path / f"blender-{ref_png.stem}.png")
    bpy.ops.render.render(write_still=True)
    ours = np.asarray(Image.open(r.filepath))[..., 3] > 127
    ref = np.asarray(Image.open(ref_png).resize(ours.shape[::-1], Image.BILINEAR))[..., 3] > 127
    return float((ours & ref).sum() / max(1, (ours | ref).sum()))


def test_camera_render_matches_engine_render(tmp_path):
    """Workbench render through the imported camera vs the engine's render.png alpha."""
    folder = _result_dir()
    imp = importlib.import_module(f"{ADDON}.importer")
    ob = imp.import_result(folder)
    # render.png shows the fitted part only (the vertex group); drop the carried rest.
    ob2 = imp.import_result(folder, create_camera=False, shape_keys=True)
    bpy.data.objects.remove(ob)
    _keep_fitted_part(ob2)
    iou = _alpha_iou_with(folder / "render.png", tmp_path)
    print(f"IoU {iou:.4f}")
    assert iou >= 0.95, f"IoU {iou:.3f}"


def _kill_when(job_pred, action, timeout=120.0):
    """Run ``action(job)`` from a helper thread once the running job satisfies ``job_pred``."""
    state = {}

    def loop():
        t_end = time.monotonic() + timeout
        while time.monotonic() < t_end:
            job = _runner().active_job()
            if job is not None and job_pred(job):
                state["pid"] = job.pid
                state["t"] = time.monotonic()
                action(job)
                return
            time.sleep(0.05)
    th = threading.Thread(target=loop, daemon=True)
    th.start()
    return th, state


def _assert_clean_failure(result_parent: Path, pid: int | None) -> None:
    assert _meshes() == []
    assert pid is None or pid_gone(pid)
    leftovers = [p.name for p in result_parent.iterdir() if p.name != ".logs"] \
        if result_parent.is_dir() else []
    assert leftovers == [], leftovers


def test_no_face(tmp_path):
    grey = tmp_path / "grey.png"
    from PIL import Image
    Image.new("RGB", (320, 320), (128, 128, 128)).save(grey)
    out = tmp_path / "out" / "r"
    with pytest.raises(RuntimeError, match="(?i)face"):
        _fit(photo=grey, output_dir=str(out))
    job = _runner().jobs()[-1]
    assert job.error["code"] == "no_face" and job.returncode == 4
    _assert_clean_failure(out.parent, job.pid)


def test_engine_crash_killed_mid_fit(tmp_path):
    out = tmp_path / "out" / "r"
    th, st = _kill_when(lambda j: j.stage in ("coarse", "fine"),
                        lambda j: os.kill(j.pid, 9))
    with pytest.raises(RuntimeError, match="signal 9"):
        _fit(output_dir=str(out))
    th.join(5)
    assert "pid" in st
    job = _runner().jobs()[-1]
    assert job.state == "failed" and job.returncode == -9
    assert "Last log lines" in job.error_message()
    _assert_clean_failure(out.parent, st["pid"])


def test_cancel_mid_fit(tmp_path):
    out = tmp_path / "out" / "r"
    th, st = _kill_when(lambda j: j.stage in ("coarse", "fine"), lambda j: j.cancel())
    assert _fit(output_dir=str(out)) == {"CANCELLED"}
    t_done = time.monotonic()
    th.join(5)
    job = _runner().jobs()[-1]
    assert job.state == "cancelled" and job.error["code"] == "cancelled"
    assert t_done - st["t"] < 6.0, "cancel took too long"
    assert "ancel" in bpy.context.window_manager.ganfit.last_error
    _assert_clean_failure(out.parent, st["pid"])


def test_check_engine_real():
    from addon_testlib import REPO
    if not (REPO / "engine" / "check.py").is_file():
        pytest.skip("engine/check.py (`python -m engine check --json`) does not exist yet")
    assert bpy.ops.ganfit.check_engine() == {"FINISHED"}
    info = importlib.import_module(f"{ADDON}.preferences").STATUS["check"]
    assert "torch" in info


def test_obj_reader_other_than_ours_gets_the_texture():
    """Blender's own OBJ importer (a third-party reader for our files) on a real result folder:
    face.obj's ``usemtl`` names face.mtl's material, so it arrives with albedo.png."""
    folder = _result_dir()
    contract = importlib.import_module(f"{ADDON}.contract")
    before = set(bpy.data.objects)
    assert bpy.ops.wm.obj_import(filepath=str(folder / "face.obj")) == {"FINISHED"}
    new = [o for o in bpy.data.objects if o not in before and o.type == "MESH"]
    assert len(new) == 1
    mats = [m for m in new[0].data.materials if m is not None]
    assert [m.name for m in mats] == [contract.OBJ_MATERIAL]
    images = [n.image for n in mats[0].node_tree.nodes if n.type == "TEX_IMAGE" and n.image]
    assert images and Path(bpy.path.abspath(images[0].filepath)).name == "albedo.png"
    assert tuple(images[0].size) == tuple(np.asarray(
        __import__("PIL.Image", fromlist=["Image"]).open(folder / "albedo.png").size))


def test_real_result_matches_the_documented_schema():
    """The same check the fake result folder passes (fake_result.check_documented_schema), on a
    folder the real engine wrote: the fake cannot drift from the engine without one failing."""
    from fake_result import check_documented_schema
    check_documented_schema(_result_dir())


def test_engine_python_without_numpy_or_torch(tmp_path):
    """The real engine under a bare venv (no numpy, no torch): the user is told the engine
    environment is incomplete and how to repair it, not 'internal error'."""
    import subprocess
    import sys
    venv = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    bare = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    proc = subprocess.run([str(bare), "-c", "import numpy"], capture_output=True)
    assert proc.returncode != 0, "the bare venv must lack numpy"
    prefs = bpy.context.preferences.addons[ADDON].preferences
    prefs.engine_python = str(bare)
    out = tmp_path / "out" / "r"
    with pytest.raises(RuntimeError) as info:
        _fit(output_dir=str(out))
    msg = str(info.value)
    assert "engine environment is incomplete" in msg and str(bare) in msg, msg
    assert "'numpy'" in msg or "'torch'" in msg
    assert "Install Engine Environment" in msg and "Internal error" not in msg
    _assert_clean_failure(out.parent, _runner().jobs()[-1].pid)


def _engine_takes_several_photos() -> bool:
    import subprocess
    import sys
    from addon_testlib import REPO
    proc = subprocess.run([sys.executable, "-m", "engine", "fit", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    return "--photos" in proc.stdout


def test_fit_two_photos_of_one_person_real_engine(tmp_path):
    """Two photos of one person (neutral and smiling): one head, one camera per photo, each with
    its photo as background, the first the scene camera; the cameras project the head onto their
    own photo's frame."""
    if not _engine_takes_several_photos():
        pytest.skip("this engine's fit takes one photo (no --photos): multi-photo engine not merged")
    from shared_data import require_shared
    folder = require_shared("faces", "london-canada")
    photos = [folder / "london_003_neutral.jpg", folder / "london_003_smiling.jpg"]
    api = importlib.import_module(f"{ADDON}.api")
    imp = importlib.import_module(f"{ADDON}.importer")
    ob = api.fit_photos(photos, preset="fast", max_steps=MAX_STEPS)
    assert len(_meshes()) == 1 and len(ob.data.vertices) > 1000
    cams = imp.head_cameras(ob)
    assert [c.name for c in cams] == [f"{ob.name} camera: {p.name}" for p in photos]
    scene = bpy.context.scene
    assert scene.camera == cams[0]
    for cam, photo in zip(cams, photos):
        img = cam.data.background_images[0].image
        assert Path(bpy.path.abspath(img.filepath)).resolve() == photo.resolve()
        assert tuple(cam["ganfit_resolution"]) == _photo_size(photo)
    res = imp.load_result(ob["ganfit_result"])
    assert res.multi_view and [Path(v.photo).name for v in res.views] == [p.name for p in photos]
    assert all(set(v.files) >= {"render", "overlay"} for v in res.views)
    # The fake multi-photo result the other tests use has the real one's keys (no drift).
    from fake_result import write_fake_result
    fake = write_fake_result(tmp_path / "fake" / "r", views=2)
    real = res.meta
    assert set(fake) - {"some_future_key"} <= set(real)
    assert [set(v) - {"future_view_key"} for v in fake["views"]] == [set(v) for v in real["views"]]
    assert set(fake["multi_view"]) <= set(real["multi_view"])
    assert {k: v for k, v in fake["files"].items() if "-" in k} == \
        {k: v for k, v in real["files"].items() if "-" in k}
    # Through the second photo's camera, with that photo's expression on the shape keys, Blender
    # sees the head as the engine's render-2.png shows it.
    assert bpy.ops.ganfit.use_camera(camera=cams[1].name) == {"FINISHED"}
    assert (scene.render.resolution_x, scene.render.resolution_y) == _photo_size(photos[1])
    _keep_fitted_part(ob)
    iou = _alpha_iou_with(res.views[1].files["render"], tmp_path)
    print(f"view 2 IoU {iou:.4f}")
    assert iou >= 0.95, f"view 2 IoU {iou:.3f}"
