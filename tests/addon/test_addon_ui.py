"""Panel and preferences draw code, run against a recording stand-in for UILayout (headless
Blender has no UI): every prop/operator they name must exist, and draw must not fail in each
state (idle, running with a preview, error)."""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import bpy
import pytest

from addon_testlib import ADDON

pytestmark = pytest.mark.usefixtures("addon")


class _OpProps:
    """The properties of an operator button: only the operator's own can be set."""

    def __init__(self, idname: str, log: list) -> None:
        mod, _, op = idname.partition(".")
        rna = getattr(getattr(bpy.ops, mod), op).get_rna_type()
        object.__setattr__(self, "_names", set(rna.properties.keys()))
        object.__setattr__(self, "_log", log)

    def __setattr__(self, name, value):
        assert name in self._names, f"the operator has no property {name}"
        self._log.append(("set", f"{name}={value}"))


class FakeLayout:
    def __init__(self, log: list) -> None:
        self._log = log
        self.enabled = True
        self.scale_y = 1.0

    def _sub(self, *a, **k):
        return FakeLayout(self._log)

    row = column = box = split = _sub

    def prop(self, data, name, **kw):
        assert hasattr(data, name) or name in data.bl_rna.properties, f"no property {name}"
        self._log.append(("prop", name))

    def operator(self, idname, **kw):
        mod, _, op = idname.partition(".")
        assert hasattr(bpy.types, f"{mod.upper()}_OT_{op}"), f"no operator {idname}"
        self._log.append(("operator", idname))
        if kw.get("text") is not None:
            self._log.append(("button", f"{idname}: {kw['text']}"))
        return _OpProps(idname, self._log)

    def label(self, text="", icon="NONE", **kw):
        self._log.append(("label", text))

    def progress(self, factor=0.0, type="BAR", text=""):
        assert 0.0 <= factor <= 1.0
        self._log.append(("progress", text))

    def template_ID(self, data, name, **kw):
        assert name in data.bl_rna.properties
        self._log.append(("template_ID", name))

    def template_icon(self, icon_value=0, scale=1.0):
        self._log.append(("template_icon", icon_value))

    def template_list(self, listtype, list_id, data, propname, active_data, active_propname,
                      **kw):
        assert hasattr(bpy.types, listtype), f"no UIList {listtype}"
        assert propname in data.bl_rna.properties and active_propname in active_data.bl_rna.properties
        self._log.append(("template_list", propname))


def _draw_panel() -> list:
    panel_mod = importlib.import_module(f"{ADDON}.panel")
    log: list = []
    fake = SimpleNamespace(layout=FakeLayout(log))
    fake._draw_running = lambda layout, rt: panel_mod.GANFIT_PT_main._draw_running(fake, layout, rt)
    panel_mod.GANFIT_PT_main.draw(fake, bpy.context)
    return log


def test_panel_idle_and_error():
    log = _draw_panel()
    assert ("operator", "ganfit.fit") in log and ("prop", "photo_path") in log
    bpy.context.scene.ganfit.source = "IMAGE"
    assert ("template_ID", "photo_image") in _draw_panel()
    bpy.context.window_manager.ganfit.last_error = "No face found.\nsecond line"
    assert ("label", "No face found.") in _draw_panel()


def test_panel_running_with_preview(addon, tmp_path, monkeypatch, fake_result_master):
    import fake_engine_pkg
    root = fake_engine_pkg.write(tmp_path / "fake_root")
    monkeypatch.setattr(importlib.import_module(f"{ADDON}.paths"), "find_engine_root",
                        lambda *a, **k: root)
    monkeypatch.setenv("FAKE_RESULT", str(fake_result_master))
    monkeypatch.setenv("FAKE_ARGV_LOG", str(tmp_path / "argv.json"))
    monkeypatch.setenv("FAKE_MODE", "slow")
    runner = importlib.import_module(f"{ADDON}.runner")
    photo = fake_result_master.parent / "result_photo.png"
    job = runner.start_fit(str(photo), tmp_path / "out" / "r", python=sys.executable,
                           preset="fast", device="cpu")
    try:
        t0 = time.monotonic()
        while not job.preview_path and time.monotonic() - t0 < 10:
            runner.poll()
            time.sleep(0.02)
        assert job.preview_path and Path(job.preview_path).is_file()
        img = bpy.data.images[".ganfit_preview"]
        assert tuple(img.size) == (64, 64)
        log = _draw_panel()
        assert any(k == "progress" for k, _ in log)
        assert ("operator", "ganfit.cancel") in log and ("operator", "ganfit.fit") not in log
    finally:
        job.client.stop(grace=1.0)
        runner.poll()


def test_preferences_draw_states():
    prefs_mod = importlib.import_module(f"{ADDON}.preferences")
    prefs = bpy.context.preferences.addons[ADDON].preferences
    for status in ({"checked": False},
                   {"checked": True, "python": "", "python_error": "No engine Python",
                    "install": {"state": "running", "fraction": 0.3, "message": "torch"}},
                   {"checked": True, "python": sys.executable, "python_error": "",
                    "check": {"torch": "2", "device": "cpu", "backends": {"cpu": True},
                              "models": ["a"], "ok": True}, "check_error": ""},
                   {"checked": True, "python": sys.executable, "check": None,
                    "check_error": "The engine check failed\nline 2"}):
        saved = dict(prefs_mod.STATUS)
        prefs_mod.STATUS.update(status)
        try:
            log: list = []
            prefs_mod.GANFIT_AP_preferences.draw(SimpleNamespace(
                layout=FakeLayout(log), **{k: getattr(prefs, k) for k in (
                    "engine_python", "device", "default_preset", "result_location",
                    "result_dir", "insightface_dir", "face_alignment_dir",
                    "texture_checkpoint")}), bpy.context)
        finally:
            prefs_mod.STATUS.clear()
            prefs_mod.STATUS.update(saved)
        assert ("operator", "ganfit.check_engine") in log


def test_panel_shows_the_last_imports_warnings():
    rt = bpy.context.window_manager.ganfit
    rt.last_summary = "2.0 s"
    rt.last_warnings = "The face is small.\nalbedo.png is missing: imported without its texture."
    log = _draw_panel()
    assert ("label", "The face is small.") in log
    assert ("label", "albedo.png is missing: imported without its texture.") in log
    rt.last_warnings = ""
    assert not any(t == "label" and "small" in s for t, s in _draw_panel())


def test_preset_menus_show_the_contracts_descriptions():
    contract = importlib.import_module(f"{ADDON}.contract")
    want = [(p.name, p.label, p.description) for p in contract.PRESETS]
    scene_items = bpy.types.Scene.bl_rna.properties["ganfit"].fixed_type.bl_rna \
        .properties["preset"].enum_items
    got = [(i.identifier, i.name, i.description) for i in scene_items if i.identifier != "DEFAULT"]
    assert got == want
    prefs = bpy.context.preferences.addons[ADDON].preferences
    pref_items = prefs.bl_rna.properties["default_preset"].enum_items
    assert [(i.identifier, i.name, i.description) for i in pref_items] == want
    assert prefs.default_preset == contract.DEFAULT_PRESET


def test_panel_several_photos_and_a_folder(tmp_path):
    settings = bpy.context.scene.ganfit
    log = _draw_panel()
    assert ("button", "ganfit.add_photos: Add More Photos of This Person") in log
    assert not any(e[0] == "template_list" for e in log)
    photos = []
    for k in range(2):
        photos.append(tmp_path / f"p{k}.png")
        photos[-1].write_bytes(b"x")
    assert bpy.ops.ganfit.add_photos(directory=str(tmp_path),
                                     files=[{"name": p.name} for p in photos]) == {"FINISHED"}
    # The first photo chosen with no photo set becomes the photo, the next ones "more photos".
    assert settings.photo_path == str(photos[0])
    assert [p.path for p in settings.extra_photos] == [str(photos[1])]
    bpy.ops.ganfit.add_photos(directory=str(tmp_path), files=[{"name": "p1.png"}])  # no doubles
    assert len(settings.extra_photos) == 1
    log = _draw_panel()
    assert ("template_list", "extra_photos") in log and ("label", "More photos of this person: 1") in log
    assert ("set", "clear=True") in log
    assert bpy.ops.ganfit.remove_photo() == {"FINISHED"} and len(settings.extra_photos) == 0
    assert not bpy.ops.ganfit.remove_photo.poll()
    settings.source = "FOLDER"
    log = _draw_panel()
    assert ("prop", "photo_dir") in log and ("prop", "photo_path") not in log
    assert ("operator", "ganfit.add_photos") not in log


def test_panel_lists_the_cameras_of_a_multi_photo_head(tmp_path):
    from addon_testlib import write_fake_result
    imp = importlib.import_module(f"{ADDON}.importer")
    folder = tmp_path / "mv" / "result"
    folder.parent.mkdir()
    meta = write_fake_result(folder, views=2)
    ob = imp.import_result(folder)
    log = _draw_panel()
    buttons = [t for k, t in log if k == "button" and t.startswith("ganfit.use_camera: ")]
    assert buttons == [f"ganfit.use_camera: {Path(v['photo']).name}" for v in meta["views"]]
    assert ("set", f"camera={imp.head_cameras(ob)[1].name}") in log
    bpy.context.view_layer.objects.active = imp.head_cameras(ob)[1]  # a photo camera: its head's
    assert [t for k, t in _draw_panel() if k == "button" and "use_camera" in t] == buttons
    bpy.context.view_layer.objects.active = None
    assert ("operator", "ganfit.use_camera") not in _draw_panel()
