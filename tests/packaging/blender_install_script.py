"""Run in a fresh interpreter (one clean Blender per run): install the built extension zip into a
throwaway Blender user folder, enable it, and optionally fit a photo through the INSTALLED copy.

    python blender_install_script.py ZIP USER_DIR ENGINE_PYTHON PHOTO|"" RESULT_DIR OUT_JSON

Writes what it saw to OUT_JSON; the pytest side makes the assertions.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

zip_path, user_dir, engine_python, photo, result_dir, out_json = sys.argv[1:7]
user = Path(user_dir)
# Blender reads these when bpy is imported: set them first so the real user config is untouched.
os.environ["BLENDER_USER_RESOURCES"] = str(user)
for kind in ("CONFIG", "DATAFILES", "SCRIPTS", "EXTENSIONS"):
    os.environ[f"BLENDER_USER_{kind}"] = str(user / kind.lower())

report: dict = {"steps": []}


def save() -> None:
    Path(out_json).write_text(json.dumps(report, indent=1, default=str))


try:
    import bpy  # noqa: I001  (bpy first: it puts addon_utils on sys.path)
    import addon_utils

    MOD = "bl_ext.user_default.ganfit_blender"
    report["extensions_dir"] = bpy.utils.user_resource("EXTENSIONS")
    report["install_result"] = sorted(bpy.ops.extensions.package_install_files(
        repo="user_default", filepath=zip_path, enable_on_install=True))
    report["steps"].append("installed")
    report["enabled"] = MOD in bpy.context.preferences.addons
    report["addon_check"] = list(addon_utils.check(MOD))
    mod = sys.modules.get(MOD)
    report["module_file"] = getattr(mod, "__file__", None)
    ext_dir = Path(mod.__file__).parent if mod is not None else None
    report["ext_dir"] = str(ext_dir) if ext_dir else None
    if ext_dir is not None:
        report["engine_main"] = (ext_dir / "engine" / "__main__.py").is_file()
        report["engine_requirements"] = (ext_dir / "engine" / "requirements.txt").is_file()
        report["engine_data"] = sorted(p.relative_to(ext_dir).as_posix()
                                       for p in (ext_dir / "engine" / "data").rglob("*")
                                       if p.is_file())
        report["pycache_in_engine"] = sorted(
            p.relative_to(ext_dir).as_posix() for p in (ext_dir / "engine").rglob("__pycache__"))
        report["licence"] = (ext_dir / "LICENSE").is_file()
        report["has_environment"] = (ext_dir / "environment.py").is_file()
        paths_mod = sys.modules.get(MOD + ".paths")
        if paths_mod is not None and hasattr(paths_mod, "find_engine_root"):
            report["engine_root"] = str(paths_mod.find_engine_root())
    report["ops_ganfit_fit"] = hasattr(bpy.ops, "ganfit") and hasattr(bpy.ops.ganfit, "fit")

    addon = bpy.context.preferences.addons.get(MOD)
    prefs = addon.preferences if addon is not None else None
    report["prefs_props"] = sorted(p.identifier for p in prefs.bl_rna.properties) if prefs else []
    if prefs is not None and hasattr(prefs, "engine_python"):
        prefs.engine_python = engine_python
        for key, value in (("device", "cpu"), ("result_location", "CUSTOM"),
                           ("result_dir", result_dir)):
            if hasattr(prefs, key):
                setattr(prefs, key, value)
        report["steps"].append("prefs set")
    save()

    if photo:
        before = {ob.name for ob in bpy.data.objects}
        t0 = time.monotonic()
        kwargs = {"filepath": photo}
        rna = bpy.ops.ganfit.fit.get_rna_type().properties
        if "preset" in rna.keys():
            kwargs["preset"] = "fast"
        if "max_steps" in rna.keys():
            kwargs["max_steps"] = 5
        report["fit_kwargs"] = kwargs
        report["fit_result"] = sorted(bpy.ops.ganfit.fit(**kwargs))
        report["fit_s"] = round(time.monotonic() - t0, 1)
        new = [ob for ob in bpy.data.objects if ob.name not in before]
        report["new_objects"] = [(ob.name, ob.type) for ob in new]
        meshes = [ob for ob in new if ob.type == "MESH"]
        report["new_mesh_verts"] = [len(ob.data.vertices) for ob in meshes]
        rt = getattr(bpy.context.window_manager, "ganfit", None)
        report["last_error"] = getattr(rt, "last_error", "")
        report["steps"].append("fitted")
except Exception:
    report["error"] = traceback.format_exc()
save()
sys.stdout.flush()
# Skip bpy's atexit teardown noise; the report is written.
os._exit(0)
