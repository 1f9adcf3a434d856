"""build.py: the extension zip, its validation, and installing it into a throwaway Blender.

bpy runs in a subprocess (tests/packaging/blender_install_script.py) so each run gets a clean
Blender whose user folders point at tmp_path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from pkgtest_helpers import REPO
from shared_data import require_shared, unavailable

BUILD = REPO / "build.py"
SHARED = Path(os.environ.get("GANFIT_SHARED", REPO.parent / "shared"))
PHOTO = SHARED / "photos" / "codait_luciano.png"
SCRIPT = Path(__file__).with_name("blender_install_script.py")

MINIMAL_MANIFEST = """\
schema_version = "1.0.0"
id = "ganfit_blender"
version = "0.0.1"
name = "GANFit Test"
tagline = "Scratch build for the packaging tests"
maintainer = "tests"
type = "add-on"
blender_version_min = "4.2.0"
license = ["SPDX:GPL-3.0-or-later"]

[permissions]
files = "Read photos and write fit results"
network = "Install PyTorch and the engine packages with pip"
"""


def _has_bpy() -> bool:
    r = subprocess.run([sys.executable, "-c", "import bpy"], capture_output=True)
    return r.returncode == 0


def _run_build(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BUILD), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def _real_repo_missing() -> str | None:
    if not (REPO / "blender_manifest.toml").is_file():
        return "blender_manifest.toml not written yet"
    if not (REPO / "ganfit_blender" / "__init__.py").is_file():
        return "ganfit_blender/__init__.py not written yet"
    if not (REPO / "engine" / "__main__.py").is_file():
        return "engine/__main__.py not written yet"
    return None


def _scratch_repo(tmp: Path) -> Path:
    """A copy of the repo's engine + LICENSE with a stub add-on and a known-good manifest."""
    root = tmp / "repo"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "engine", root / "engine", ignore=ignore)
    if not (root / "engine" / "__main__.py").exists():
        (root / "engine" / "__main__.py").write_text("")
    (root / "ganfit_blender").mkdir()
    (root / "ganfit_blender" / "__init__.py").write_text("def register(): pass\n"
                                                         "def unregister(): pass\n")
    shutil.copy2(REPO / "ganfit_blender" / "environment.py", root / "ganfit_blender")
    (root / "ganfit_blender" / "__pycache__").mkdir()
    (root / "ganfit_blender" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"junk")
    (root / "engine" / "tests").mkdir(exist_ok=True)
    (root / "engine" / "tests" / "test_x.py").write_text("")
    shutil.copy2(REPO / "LICENSE", root / "LICENSE")
    (root / "THIRD_PARTY_NOTICES.md").write_text("MediaPipe face landmarker: Apache-2.0\n")
    (root / "blender_manifest.toml").write_text(MINIMAL_MANIFEST)
    return root


@pytest.fixture(scope="module", autouse=True)
def _bpy_present() -> None:
    if not _has_bpy():
        unavailable("bpy (Blender's extension tool) is not installed")  # fails under CI


def test_help_lists_commands():
    r = _run_build("--help")
    assert r.returncode == 0
    for cmd in ("build", "validate", "clean"):
        assert cmd in r.stdout


def test_build_scratch_repo(tmp_path):
    """build.py's staging rules on a controlled tree (independent of the add-on's progress)."""
    root = _scratch_repo(tmp_path)
    out = tmp_path / "dist"
    r = _run_build("--root", str(root), "--out-dir", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    z = out / "ganfit_blender-0.0.1.zip"
    assert z.is_file() and "MiB" in r.stdout
    names = zipfile.ZipFile(z).namelist()
    assert "engine/__main__.py" in names and "engine/requirements.txt" in names
    assert "LICENSE" in names and "THIRD_PARTY_NOTICES.md" in names
    assert "environment.py" in names and "blender_manifest.toml" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc") or "/tests/" in n]
    data = [p.relative_to(root).as_posix() for p in (root / "engine" / "data").rglob("*")
            if p.is_file()]
    assert set(data) <= set(names)
    assert not [n for n in names if n.endswith(".whl") or n.startswith("torch/")]

    # validate alone: fine, then a tampered zip is refused with a reason.
    r = _run_build("--root", str(root), "validate", str(z))
    assert r.returncode == 0, r.stdout + r.stderr
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(z) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            if item.filename != "LICENSE":
                dst.writestr(item, src.read(item))
        dst.writestr("wheels/torch-2.13.0-cp311-cp311-linux_x86_64.whl", b"x")
    r = _run_build("--root", str(root), "validate", str(bad))
    assert r.returncode != 0
    assert "LICENSE" in r.stderr and ".whl" in r.stderr


_LICENSE_LINE = 'license = ["SPDX:GPL-3.0-or-later"]\n'
_WHEEL = "wheels/torch-2.13.0-cp311-cp311-linux_x86_64.whl"


@pytest.mark.parametrize("edit, expect", [
    (lambda m: m.replace('network = "Install PyTorch and the engine packages with pip"\n', ""),
     "lacks 'network'"),
    (lambda m: m.replace("files = ", "filez = "), "permissions"),
    (lambda m: m.replace(_LICENSE_LINE, ""), "license"),
    (lambda m: m.replace(_LICENSE_LINE, _LICENSE_LINE + f'wheels = ["./{_WHEEL}"]\n'), "wheel"),
], ids=["no-network", "bad-permission", "no-license", "bundled-wheel"])
def test_build_refuses_bad_manifest(tmp_path, edit, expect):
    root = _scratch_repo(tmp_path)
    (root / _WHEEL).parent.mkdir()
    (root / _WHEEL).write_bytes(b"x")
    (root / "blender_manifest.toml").write_text(edit(MINIMAL_MANIFEST))
    r = _run_build("--root", str(root), "--out-dir", str(tmp_path / "dist"))
    assert r.returncode != 0, r.stdout
    assert expect in (r.stdout + r.stderr), r.stdout + r.stderr
    assert not list((tmp_path / "dist").glob("*.zip"))  # no refused zip left behind


def test_clean(tmp_path):
    root = _scratch_repo(tmp_path)
    out = tmp_path / "dist"
    assert _run_build("--root", str(root), "--out-dir", str(out)).returncode == 0
    r = _run_build("clean", "--root", str(root), "--out-dir", str(out))
    assert r.returncode == 0 and not out.exists()


# ---------------------------------------------------------------------------------------------
# The real repository's extension


@pytest.fixture(scope="module")
def built_zip(tmp_path_factory) -> Path:
    reason = _real_repo_missing()
    if reason:
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("dist")
    t0 = time.monotonic()
    r = _run_build("build", "--out-dir", str(out))
    print(r.stdout, r.stderr, f"build took {time.monotonic() - t0:.1f}s")
    assert r.returncode == 0, f"python build.py failed:\n{r.stdout}\n{r.stderr}"
    zips = list(out.glob("ganfit_blender-*.zip"))
    assert len(zips) == 1
    return zips[0]


def test_build_real_repo(built_zip):
    r = _run_build("validate", str(built_zip))
    assert r.returncode == 0, r.stdout + r.stderr
    names = zipfile.ZipFile(built_zip).namelist()
    assert "engine/__main__.py" in names and "__init__.py" in names
    print(f"zip size {built_zip.stat().st_size / 1024 / 1024:.2f} MiB, {len(names)} entries")


def _fit_unavailable() -> str | None:
    require_shared("photos", PHOTO.name)  # skipped if missing; fails under CI
    r = subprocess.run([sys.executable, "-m", "engine", "fit", "--help"], cwd=REPO,
                       capture_output=True, timeout=300)
    if r.returncode != 0:
        return "`python -m engine fit --help` does not work yet"
    if not (REPO / "engine" / "fit" / "run.py").is_file():
        return "engine/fit/run.py (the fit itself) does not exist yet"
    return None


def _install(built_zip: Path, tmp_path: Path, photo: str) -> dict:
    out_json = tmp_path / "report.json"
    user = tmp_path / "blender-user"
    # cwd outside the repo: nothing may be imported from the source tree.
    r = subprocess.run([sys.executable, str(SCRIPT), str(built_zip), str(user), sys.executable,
                        photo, str(tmp_path / "results"), str(out_json)],
                       cwd=tmp_path, capture_output=True, text=True, timeout=1800)
    assert out_json.is_file(), f"no report (exit {r.returncode}):\n{r.stdout}\n{r.stderr}"
    report = json.loads(out_json.read_text())
    assert "error" not in report, report["error"] + "\n" + r.stdout[-3000:] + r.stderr[-3000:]
    return report


def test_install_zip_into_blender(built_zip, tmp_path):
    rep = _install(built_zip, tmp_path, "")
    assert rep["install_result"] == ["FINISHED"]
    assert rep["enabled"], rep
    assert rep["addon_check"] == [True, True], rep
    ext_dir = Path(rep["ext_dir"])
    assert ext_dir.is_relative_to(tmp_path / "blender-user"), ext_dir  # the installed copy
    assert rep["engine_main"] and rep["engine_requirements"] and rep["licence"]
    assert not rep["pycache_in_engine"]
    repo_data = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "engine/data").rglob("*")
                       if p.is_file() and "__pycache__" not in p.parts)
    assert rep["engine_data"] == repo_data
    if "engine_root" in rep:
        assert Path(rep["engine_root"]) == ext_dir  # the add-on runs the bundled engine
    if "engine_python" not in rep["prefs_props"]:
        pytest.skip("the add-on's preferences have no engine_python property yet")


@pytest.mark.needs_torch
def test_fit_through_installed_extension(built_zip, tmp_path):
    reason = _fit_unavailable()
    if reason:
        pytest.skip(reason)
    rep = _install(built_zip, tmp_path, str(PHOTO))
    assert rep["enabled"] and rep["ops_ganfit_fit"], rep
    assert "fitted" in rep["steps"], rep
    assert rep["fit_result"] == ["FINISHED"], rep
    assert any(t == "MESH" for _, t in rep["new_objects"]), rep
    assert max(rep["new_mesh_verts"]) > 1000, rep
    results = list((tmp_path / "results").iterdir())
    assert results, "the fit wrote no result folder under the preferences' result dir"
    print(f"fit through the installed extension took {rep['fit_s']}s")
