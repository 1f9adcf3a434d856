"""Manifest validation, register/unregister symmetry, and the fit operator's plumbing with a
stand-in engine (the real-engine tests are in test_addon_engine.py)."""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import bpy
import fake_engine_pkg
from addon_testlib import ADDON, REPO, disable_addon, enable_addon, pid_gone


def _blender_ext() -> Path:
    scripts = Path(bpy.utils.system_resource("SCRIPTS"))
    p = scripts / "addons_core" / "bl_pkg" / "cli" / "blender_ext.py"
    if not p.is_file():
        found = list(Path(bpy.__file__).resolve().parents[3].rglob("blender_ext.py"))
        assert found, "blender_ext.py not found in the bpy package"
        p = found[0]
    return p


def test_manifest_validates(tmp_path):
    stage = tmp_path / ADDON
    shutil.copytree(REPO / ADDON, stage, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "blender_manifest.toml", stage / "blender_manifest.toml")
    proc = subprocess.run([sys.executable, str(_blender_ext()), "validate", str(stage)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    import tomllib
    m = tomllib.loads((REPO / "blender_manifest.toml").read_text())
    assert m["id"] == ADDON and m["type"] == "add-on" and m["blender_version_min"] == "4.2.0"
    assert m["license"] == ["SPDX:GPL-3.0-or-later"]
    assert m["permissions"]["files"] == "Read photos and write fit results"
    assert "download" in m["permissions"]["network"]


def _leftovers() -> list[str]:
    left = [n for n in dir(bpy.types) if n.startswith("GANFIT_")]
    if hasattr(bpy.types.Scene, "ganfit"):
        left.append("Scene.ganfit")
    if hasattr(bpy.types.WindowManager, "ganfit"):
        left.append("WindowManager.ganfit")
    for name in dir(bpy.app.handlers):
        handlers = getattr(bpy.app.handlers, name)
        if isinstance(handlers, list):
            left += [f"handler {name}:{h.__module__}" for h in handlers
                     if getattr(h, "__module__", "").startswith(ADDON)]
    draw_funcs = bpy.types.TOPBAR_MT_file_import._dyn_ui_initialize()
    left += [f"menu {f.__module__}" for f in draw_funcs
             if getattr(f, "__module__", "").startswith(ADDON)]
    runner = sys.modules.get(f"{ADDON}.runner")
    if runner is not None and bpy.app.timers.is_registered(runner.poll):
        left.append("timer runner.poll")
    return left


def test_register_unregister_ten_times():
    bpy.ops.wm.read_homefile(use_empty=True)
    assert _leftovers() == []
    for _ in range(10):
        enable_addon()
        assert hasattr(bpy.types.Scene, "ganfit") and hasattr(bpy.types, "GANFIT_OT_fit")
        assert bpy.ops.ganfit.fit.poll()
        disable_addon()
        assert _leftovers() == []
    assert ADDON not in bpy.context.preferences.addons


@pytest.fixture
def fake_engine(addon, tmp_path, monkeypatch, fake_result_master, fake_multi_result_master):
    root = fake_engine_pkg.write(tmp_path / "fake_root")
    paths = importlib.import_module(f"{ADDON}.paths")
    monkeypatch.setattr(paths, "find_engine_root", lambda *a, **k: root)
    monkeypatch.setenv("FAKE_RESULT", str(fake_result_master))
    monkeypatch.setenv("FAKE_RESULT_MULTI", str(fake_multi_result_master))
    monkeypatch.setenv("FAKE_ARGV_LOG", str(tmp_path / "argv.json"))
    photo = Path(json.loads((fake_result_master / "result.json").read_text())["photo"])

    def set_mode(mode: str) -> Path:
        monkeypatch.setenv("FAKE_MODE", mode)
        return photo
    set_mode.argv = lambda: json.loads((tmp_path / "argv.json").read_text())
    return set_mode


def test_fit_operator_background_imports(fake_engine):
    photo = fake_engine("ok")
    scene = bpy.context.scene
    scene.ganfit.fit_expression = False
    r = bpy.ops.ganfit.fit(filepath=str(photo), preset="fast", texture_resolution="512")
    assert r == {"FINISHED"}
    ob = bpy.context.view_layer.objects.active
    assert ob is not None and ob.type == "MESH" and len(ob.data.shape_keys.key_blocks) == 54
    argv = fake_engine.argv()
    assert argv[argv.index("--preset") + 1] == "fast"
    assert argv[argv.index("--texture-res") + 1] == "512"
    assert argv[argv.index("--device") + 1] == "cpu"
    assert "--neutral" in argv and "--json-progress" in argv
    rt = bpy.context.window_manager.ganfit
    assert not rt.running and rt.progress == 1.0 and rt.last_error == ""
    assert "landmark error" in rt.last_summary
    assert bpy.data.images.get(".ganfit_preview") is not None


def test_fit_uses_scene_settings_and_default_preset(fake_engine):
    photo = fake_engine("ok")
    s = bpy.context.scene.ganfit
    s.photo_path = str(photo)
    bpy.context.preferences.addons[ADDON].preferences.default_preset = "best"
    assert bpy.ops.ganfit.fit() == {"FINISHED"}
    argv = fake_engine.argv()
    assert argv[argv.index("--preset") + 1] == "best" and "--texture-res" not in argv
    assert "--neutral" not in argv


def _assert_failed(r, match: str) -> None:
    assert r == {"CANCELLED"}
    assert [o for o in bpy.data.objects if o.type == "MESH"] == []
    assert match in bpy.context.window_manager.ganfit.last_error


def test_fit_no_face_reports(fake_engine, capsys):
    photo = fake_engine("no_face")
    with pytest.raises(RuntimeError, match="No face found"):
        bpy.ops.ganfit.fit(filepath=str(photo))
    assert [o for o in bpy.data.objects if o.type == "MESH"] == []


def test_fit_crash_reports_log_tail(fake_engine):
    photo = fake_engine("crash")
    with pytest.raises(RuntimeError, match="boom"):
        bpy.ops.ganfit.fit(filepath=str(photo))
    runner = importlib.import_module(f"{ADDON}.runner")
    assert pid_gone(runner.jobs()[-1].pid)


def test_missing_engine_python(addon, fake_result_master):
    bpy.context.preferences.addons[ADDON].preferences.engine_python = "/nonexistent/python3"
    photo = json.loads((fake_result_master / "result.json").read_text())["photo"]
    with pytest.raises(RuntimeError, match="Engine Python not found"):
        bpy.ops.ganfit.fit(filepath=photo)


def test_no_engine_python_and_no_managed_env(addon, fake_result_master):
    bpy.context.preferences.addons[ADDON].preferences.engine_python = ""
    photo = json.loads((fake_result_master / "result.json").read_text())["photo"]
    with pytest.raises(RuntimeError, match="install the engine environment"):
        bpy.ops.ganfit.fit(filepath=photo)


def test_interactive_flow_with_poll_and_cancel(fake_engine, tmp_path):
    """What the modal operator and the panel's Cancel do, driven by runner.poll() (timers do not
    fire under PyPI bpy)."""
    photo = fake_engine("slow")
    runner = importlib.import_module(f"{ADDON}.runner")
    job = runner.start_fit(str(photo), tmp_path / "int" / "r1",
                           python=sys.executable, preset="fast", device="cpu")
    rt = bpy.context.window_manager.ganfit
    t0 = time.monotonic()
    while rt.progress < 0.02 and time.monotonic() - t0 < 10:
        runner.poll()
        time.sleep(0.02)
    assert rt.running and rt.progress > 0 and rt.stage == "fine" and rt.pid == job.pid
    assert not bpy.ops.ganfit.fit.poll()  # one job at a time
    assert bpy.ops.ganfit.cancel() == {"FINISHED"}
    t0 = time.monotonic()
    while not job.finished and time.monotonic() - t0 < 5:
        runner.poll()
        time.sleep(0.02)
    # Behaviour, not wall-clock: the engine ended on the cancel (its cancelled exit code, no
    # result) well before its 400 steps were done; the time it took is printed, not asserted.
    print(f"cancel -> job finished in {time.monotonic() - t0:.2f} s")
    assert job.state == "cancelled" and job.returncode == 130 and job.result is None
    assert job.progress < 0.5, job.message
    assert not rt.running and pid_gone(job.pid)
    assert runner.poll() is None  # the timer unregisters itself when idle


def test_unregister_while_running_stops_engine(fake_engine, tmp_path):
    photo = fake_engine("slow")
    runner = importlib.import_module(f"{ADDON}.runner")
    job = runner.start_fit(str(photo), tmp_path / "int" / "r2",
                           python=sys.executable, preset="fast", device="cpu")
    assert bpy.app.timers.is_registered(runner.poll)
    time.sleep(0.3)
    assert job.client.is_alive
    disable_addon()
    assert pid_gone(job.pid)
    assert _leftovers() == []
    enable_addon()  # the fixture disables it again


def test_check_engine_operator(fake_engine):
    fake_engine("ok")
    assert bpy.ops.ganfit.check_engine() == {"FINISHED"}
    prefs_mod = importlib.import_module(f"{ADDON}.preferences")
    assert prefs_mod.STATUS["check"]["torch"] == "fake"


def test_install_environment_refuses_offline(addon, monkeypatch):
    """With online access off the managed-env installer must not start a download; the
    operator reports it and the engine Python stays unresolved."""
    if bpy.app.online_access:
        pytest.skip("online access is on: this would download torch")
    monkeypatch.delenv("GANFIT_PIP_ARGS", raising=False)
    bpy.context.preferences.addons[ADDON].preferences.engine_python = ""
    r = None
    try:
        r = bpy.ops.ganfit.install_environment()
    except RuntimeError as exc:
        assert "nstall" in str(exc) or "online" in str(exc).lower(), exc
    assert r in (None, {"CANCELLED"})
    prefs_mod = importlib.import_module(f"{ADDON}.preferences")
    assert prefs_mod._INSTALLER["installer"] is None
    py, err = prefs_mod.resolve_engine_python()
    assert py is None and "install the engine environment" in err.lower()


def test_api_fit_photo_and_failure(fake_engine, tmp_path):
    api = importlib.import_module(f"{ADDON}.api")
    photo = fake_engine("ok")
    blend = tmp_path / "proj" / "scene.blend"
    blend.parent.mkdir()
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    bpy.context.preferences.addons[ADDON].preferences.result_location = "AUTO"
    ob = api.fit_photo(photo, preset="fast")
    assert ob.type == "MESH" and ob == bpy.context.view_layer.objects.active
    # Results go next to the saved .blend; the texture path is relative to it.
    assert Path(ob["ganfit_result"]).parent == blend.parent / "ganfit"
    img = ob.data.materials[0].node_tree.nodes["GANFit Albedo"].image
    assert img.filepath.startswith("//ganfit/")
    fake_engine("no_face")
    with pytest.raises(api.FitFailed, match="^No face"):
        api.fit_photo(photo)


def test_fit_from_loaded_image(fake_engine):
    fake_engine("ok")
    img = bpy.data.images.new("generated photo", 48, 40)
    s = bpy.context.scene.ganfit
    s.source = "IMAGE"
    s.photo_image = img
    assert bpy.ops.ganfit.fit() == {"FINISHED"}
    photo = Path(fake_engine.argv()[1])
    assert photo.suffix == ".png" and photo.is_file() and photo.stat().st_size > 0
    assert img.name in bpy.data.images and len(bpy.data.images) >= 2


# ---------------------------------------------------------------------------------------------
# Several photos of one person (the fake engine copies its prepared two-photo result)
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def two_photos(fake_multi_result_master, tmp_path):
    """The fake multi-photo result's two photos, copied into a folder as a.png and b.png (sorted
    by name, as --photos takes them), with a file that is no photo beside them."""
    meta = json.loads((fake_multi_result_master / "result.json").read_text())
    folder = tmp_path / "person"
    folder.mkdir()
    out = []
    for view, name in zip(meta["views"], ("a.png", "b.png")):
        shutil.copy(view["photo"], folder / name)
        out.append(folder / name)
    (folder / "notes.txt").write_text("not a photo")
    return out


def _check_multi_head(ob, photos):
    assert ob.type == "MESH" and len([o for o in bpy.data.objects if o.type == "MESH"]) == 1
    cams = importlib.import_module(f"{ADDON}.importer").head_cameras(ob)
    assert [c.name for c in cams] == [f"{ob.name} camera: {p.name}" for p in photos]
    for cam, photo in zip(cams, photos):
        img = cam.data.background_images[0].image
        assert Path(bpy.path.abspath(img.filepath)).resolve() == photo.resolve()
    scene = bpy.context.scene
    assert scene.camera == cams[0]
    assert (scene.render.resolution_x, scene.render.resolution_y) == tuple(cams[0]["ganfit_resolution"])
    assert sorted(o.name for o in bpy.data.objects if o.type == "CAMERA") == \
        sorted(c.name for c in cams)


def test_fit_operator_several_photos(fake_engine, two_photos):
    fake_engine("ok")
    r = bpy.ops.ganfit.fit(filepath=str(two_photos[0]), preset="fast",
                           extra_photos=[{"name": "p", "path": str(two_photos[1])}, {"name": "p", "path": str(two_photos[0])}])
    assert r == {"FINISHED"}
    argv = fake_engine.argv()
    # every photo once, in order, before -o
    assert argv[:argv.index("-o")] == ["fit", str(two_photos[0]), str(two_photos[1])]
    _check_multi_head(bpy.context.view_layer.objects.active, two_photos)
    assert not bpy.context.window_manager.ganfit.last_error


def test_fit_operator_from_the_scenes_folder_and_list(fake_engine, two_photos):
    fake_engine("ok")
    s = bpy.context.scene.ganfit
    s.source = "FOLDER"
    s.photo_dir = str(two_photos[0].parent)
    assert bpy.ops.ganfit.fit() == {"FINISHED"}
    argv = fake_engine.argv()
    assert argv[:argv.index("-o")] == ["fit", "--photos", str(two_photos[0].parent)]
    _check_multi_head(bpy.context.view_layer.objects.active, two_photos)
    # The result folder is named after the photo folder.
    assert Path(bpy.context.view_layer.objects.active["ganfit_result"]).name.startswith("person-")

    bpy.ops.wm.read_homefile(use_empty=True)
    s = bpy.context.scene.ganfit
    s.source = "FILE"
    s.photo_path = str(two_photos[0])
    s.extra_photos.add().path = str(two_photos[1])
    assert bpy.ops.ganfit.fit() == {"FINISHED"}
    argv = fake_engine.argv()
    assert argv[:argv.index("-o")] == ["fit", str(two_photos[0]), str(two_photos[1])]
    _check_multi_head(bpy.context.view_layer.objects.active, two_photos)


def test_several_photos_bad_input(fake_engine, two_photos, tmp_path):
    fake_engine("ok")
    missing = tmp_path / "gone.jpg"
    with pytest.raises(RuntimeError, match="Photo not found: .*gone.jpg"):
        bpy.ops.ganfit.fit(filepath=str(two_photos[0]), extra_photos=[{"name": "p", "path": str(missing)}])
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("x")
    with pytest.raises(RuntimeError, match="No photos in .*empty"):
        bpy.ops.ganfit.fit(photo_dir=str(empty))
    with pytest.raises(RuntimeError, match="Photo folder not found"):
        bpy.ops.ganfit.fit(photo_dir=str(tmp_path / "nope"))
    with pytest.raises(RuntimeError, match="not both"):
        bpy.ops.ganfit.fit(filepath=str(two_photos[0]), photo_dir=str(empty))
    s = bpy.context.scene.ganfit
    s.source = "FOLDER"
    with pytest.raises(RuntimeError, match="Choose a photo folder first"):
        bpy.ops.ganfit.fit()
    # A result folder that holds one of the photos is refused before the engine runs.
    holder = tmp_path / "holder"
    holder.mkdir()
    shutil.copy(two_photos[1], holder / "side.png")
    with pytest.raises(RuntimeError, match="holds the photo side.png"):
        bpy.ops.ganfit.fit(filepath=str(two_photos[0]),
                           extra_photos=[{"name": "p", "path": str(holder / "side.png")}],
                           output_dir=str(holder), overwrite=True)
    assert [o for o in bpy.data.objects if o.type == "MESH"] == []


def test_api_fit_photos_list_and_folder(fake_engine, two_photos):
    api = importlib.import_module(f"{ADDON}.api")
    fake_engine("ok")
    ob = api.fit_photos(two_photos, preset="fast")
    _check_multi_head(ob, two_photos)
    assert fake_engine.argv()[1:3] == [str(p) for p in two_photos]
    bpy.ops.wm.read_homefile(use_empty=True)
    ob = api.fit_photo(two_photos[0].parent)  # a folder: every photo in it
    _check_multi_head(ob, two_photos)
    assert fake_engine.argv()[1:3] == ["--photos", str(two_photos[0].parent)]
    bpy.ops.wm.read_homefile(use_empty=True)
    ob = api.fit_photo([str(p) for p in two_photos])  # fit_photo takes a list too
    _check_multi_head(ob, two_photos)
    with pytest.raises(api.FitFailed, match="No photos"):
        api.fit_photos([])
    with pytest.raises(TypeError, match="first argument"):
        api.fit_photos(two_photos, filepath="x")
    # The fake engine fails on three photos (its result has two views): reported, nothing made.
    bpy.ops.wm.read_homefile(use_empty=True)
    extra = two_photos[0].parent / "c.png"
    shutil.copy(two_photos[0], extra)
    with pytest.raises(api.FitFailed, match="3 photos, the prepared result has 2 views"):
        api.fit_photos([*two_photos, extra])
    assert [o for o in bpy.data.objects if o.type == "MESH"] == []
