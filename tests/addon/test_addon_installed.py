"""The built extension zip installed the way users install it (Install from Disk): the bundled
engine is found inside the extension folder and runs; the importer works; removal is clean."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import bpy
from addon_testlib import REPO, disable_addon

PKG = "bl_ext.user_default.ganfit_blender"


@pytest.fixture(scope="module")
def built_zip(tmp_path_factory) -> Path:
    if not (REPO / "build.py").is_file():
        pytest.skip("build.py does not exist yet")
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, str(REPO / "build.py"), "build", "--out-dir", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    zips = list(out.glob("ganfit_blender-*.zip"))
    assert len(zips) == 1
    return zips[0]


def test_install_zip_finds_bundled_engine(built_zip, fake_result):
    import addon_utils
    bpy.ops.wm.read_homefile(use_empty=True)
    disable_addon()
    assert bpy.ops.extensions.package_install_files(
        repo="user_default", filepath=str(built_zip), enable_on_install=True) == {"FINISHED"}
    try:
        assert PKG in bpy.context.preferences.addons
        mod = sys.modules[PKG]
        ext_dir = Path(mod.__file__).parent
        paths = sys.modules[f"{PKG}.paths"]
        assert paths.find_engine_root() == ext_dir  # bundled engine, not the source tree
        prefs_mod = sys.modules[f"{PKG}.preferences"]
        assert prefs_mod.user_dir().is_dir()  # extension_path_user works when installed
        prefs = bpy.context.preferences.addons[PKG].preferences
        prefs.engine_python = sys.executable
        if (ext_dir / "engine" / "check.py").is_file():
            assert bpy.ops.ganfit.check_engine() == {"FINISHED"}, prefs_mod.STATUS
        assert bpy.ops.ganfit.import_result(directory=str(fake_result)) == {"FINISHED"}
        ob = bpy.context.view_layer.objects.active
        assert ob is not None and len(ob.data.shape_keys.key_blocks) == 54
    finally:
        bpy.ops.wm.read_homefile(use_empty=True)
        addon_utils.disable(PKG, default_set=True)
        bpy.ops.extensions.package_uninstall(repo_index=_repo_index("user_default"),
                                             pkg_id="ganfit_blender")
    assert PKG not in bpy.context.preferences.addons
    assert not [n for n in dir(bpy.types) if n.startswith("GANFIT_")]


def _repo_index(module: str) -> int:
    for i, repo in enumerate(bpy.context.preferences.extensions.repos):
        if repo.module == module:
            return i
    raise LookupError(module)
