"""The extension's half of the bad-input corpus: damaged result folders, engines that crash or
die, an incomplete engine environment, output folders that are not ours, concurrent jobs. Every
case asserts the message the user gets and that nothing partial is left in bpy.data or on disk.
(The engine's half is in tests/engine.)"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import tempfile
import time
import zipfile
from pathlib import Path

import pytest

import bpy
import fake_engine_pkg
from addon_testlib import ADDON

DATA = ("objects", "meshes", "materials", "images", "cameras", "collections")


def _mod(name):
    return importlib.import_module(f"{ADDON}.{name}")


def _counts():
    return {c: len(getattr(bpy.data, c)) for c in DATA}


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


# ---------------------------------------------------------------------------------------------
# Damaged result folders: a clear error, nothing imported
# ---------------------------------------------------------------------------------------------
def _break(folder: Path, case: str) -> None:
    if case == "truncated_blendshapes":
        _truncate(folder / "blendshapes.npz")
    elif case == "truncated_params":
        _truncate(folder / "params.npz")
    elif case == "blendshapes_not_zip":
        (folder / "blendshapes.npz").write_bytes(b"PK\x03\x04 garbage")
    elif case == "npz_missing_array":
        with zipfile.ZipFile(folder / "blendshapes.npz", "w") as z:
            z.writestr("neutral.npy", b"")
    elif case == "schema_2":
        meta = json.loads((folder / "result.json").read_text())
        meta["schema"] = 2
        (folder / "result.json").write_text(json.dumps(meta))
    elif case == "no_result_json":
        (folder / "result.json").unlink()
    elif case == "truncated_result_json":
        _truncate(folder / "result.json")
    elif case == "truncated_obj":
        _truncate(folder / "face.obj", 0.7)
    else:
        raise AssertionError(case)


BAD_FOLDERS = {
    "truncated_blendshapes": "blendshapes.npz",
    "truncated_params": "params.npz",
    "blendshapes_not_zip": "blendshapes.npz",
    "npz_missing_array": "blendshapes.npz",
    "schema_2": "schema 2",
    "no_result_json": "no result.json",
    "truncated_result_json": "result.json",
    "truncated_obj": "face.obj",
}


@pytest.mark.parametrize("case", sorted(BAD_FOLDERS))
def test_damaged_result_folder_fails_cleanly(addon, fake_result, case):
    _break(fake_result, case)
    before = _counts()
    imp = _mod("importer")
    with pytest.raises(imp.ResultImportError) as info:
        imp.import_result(fake_result)
    assert BAD_FOLDERS[case] in str(info.value)
    assert "Traceback" not in str(info.value)
    assert _counts() == before
    # The operator reports the same sentence and imports nothing either.
    with pytest.raises(RuntimeError, match=BAD_FOLDERS[case].replace(".", r"\.")):
        bpy.ops.ganfit.import_result(directory=str(fake_result))
    assert _counts() == before


@pytest.mark.parametrize("case", ["missing", "corrupt", "truncated"])
def test_missing_or_damaged_albedo_imports_with_a_visible_warning(addon, fake_result, case,
                                                                   capsys):
    albedo = fake_result / "albedo.png"
    if case == "missing":
        albedo.unlink()
    elif case == "corrupt":
        albedo.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    else:
        _truncate(albedo, 0.6)
    images_before = {i.name for i in bpy.data.images}
    assert bpy.ops.ganfit.import_result(directory=str(fake_result)) == {"FINISHED"}
    out = capsys.readouterr().out
    assert "Warning" in out and "albedo.png" in out and "without its texture" in out
    ob = bpy.context.view_layer.objects.active
    assert ob is not None and ob.type == "MESH"
    nodes = ob.data.materials[0].node_tree.nodes
    assert "GANFit Albedo" not in nodes  # untextured, and said so
    new_images = {i.name for i in bpy.data.images} - images_before
    assert not any("albedo" in n for n in new_images), new_images  # no broken image left
    assert "albedo.png" in _mod("importer").result_warnings(ob)[0]


def test_result_warnings_are_reported_after_import(addon, fake_result, capsys):
    meta = json.loads((fake_result / "result.json").read_text())
    meta["warnings"] = ["The face is small (52 px): the fit and texture will be coarse."]
    (fake_result / "result.json").write_text(json.dumps(meta))
    assert bpy.ops.ganfit.import_result(directory=str(fake_result)) == {"FINISHED"}
    assert "face is small" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# Engines that fail: every exit code, death without a message, an incomplete environment
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def fake_engine(addon, tmp_path, monkeypatch, fake_result_master):
    root = fake_engine_pkg.write(tmp_path / "fake_root")
    monkeypatch.setattr(_mod("paths"), "find_engine_root", lambda *a, **k: root)
    monkeypatch.setenv("FAKE_RESULT", str(fake_result_master))
    monkeypatch.setenv("FAKE_ARGV_LOG", str(tmp_path / "argv.json"))
    tmp = tmp_path / "systemp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))  # the engine's ganfit-preview-* folder goes here
    photo = Path(json.loads((fake_result_master / "result.json").read_text())["photo"])

    def run(mode: str, **kw):
        monkeypatch.setenv("FAKE_MODE", mode)
        return bpy.ops.ganfit.fit(filepath=str(photo), **kw)
    run.tmp = tmp
    run.results = tmp_path / "results"
    run.argv = lambda: json.loads((tmp_path / "argv.json").read_text())
    return run


def _fit_error(run, mode, **kw) -> str:
    with pytest.raises(RuntimeError) as info:
        run(mode, **kw)
    return str(info.value)


def _leftovers(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name != ".logs")


EXIT_MESSAGES = {1: "crashed", 2: "command line", 3: "photo", 4: "face", 5: "model",
                 6: "result folder", 130: "cancelled"}


@pytest.mark.parametrize("code", sorted(EXIT_MESSAGES))
def test_engine_exits_without_a_message(fake_engine, code):
    before = _counts()
    if code == 130:  # cancelled (e.g. SIGINT from elsewhere): a warning, not an error
        assert fake_engine(f"exit:{code}") == {"CANCELLED"}
        msg = _mod("runner").jobs()[-1].error_message()
    else:
        msg = _fit_error(fake_engine, f"exit:{code}")
    said = msg.split(" See the log")[0].split(" Last log lines")[0]  # not the log's path
    assert f"exit code {code}" in said and EXIT_MESSAGES[code] in said.lower(), msg
    job = _mod("runner").jobs()[-1]
    assert job.error["code"] == _mod("contract").error_code_for(code)
    assert _counts() == before and _leftovers(fake_engine.results) == []


def test_engine_killed_cleans_its_temp_folders_only(fake_engine, tmp_path):
    results = fake_engine.results
    results.mkdir(parents=True)
    # Foreign folders that look alike: another run's, and one from before this job started.
    foreign_preview = fake_engine.tmp / "ganfit-preview-someoneelse"
    foreign_preview.mkdir()
    (foreign_preview / "preview_0001.png").write_bytes(b"x")
    out = results / "mine"
    old_tmp = results / ".mine.tmp-before"
    old_tmp.mkdir()
    other_tmp = results / ".other.tmp-1234"
    other_tmp.mkdir()
    time.sleep(0.05)
    msg = _fit_error(fake_engine, "die", output_dir=str(out))
    assert "signal 9" in msg
    assert not out.exists()
    assert sorted(p.name for p in results.iterdir() if p.name != ".logs") == \
        [".mine.tmp-before", ".other.tmp-1234"]
    assert [p.name for p in fake_engine.tmp.iterdir()] == ["ganfit-preview-someoneelse"]
    assert (foreign_preview / "preview_0001.png").is_file()
    job = _mod("runner").jobs()[-1]
    preview_dirs = [Path(d) for d in job.engine_dirs if "ganfit-preview-" in d]
    assert preview_dirs and not any(d.exists() for d in preview_dirs)  # the one it named: gone
    assert job.temp_dir is not None and not job.temp_dir.exists()


def test_engine_killed_before_naming_its_preview_folder(fake_engine, tmp_path):
    msg = _fit_error(fake_engine, "die_early")
    assert "signal 9" in msg
    made = Path((tmp_path / "argv.json.tmp").read_text())
    job = _mod("runner").jobs()[-1]
    assert made.name.startswith("ganfit-preview-") and made.parent == job.temp_dir
    assert not made.exists() and not job.temp_dir.exists()
    assert _leftovers(fake_engine.results) == []


@pytest.mark.parametrize("mode", ["no_module", "no_module_msg"])
def test_engine_python_without_torch_or_numpy(fake_engine, mode):
    msg = _fit_error(fake_engine, mode)
    assert "engine environment is incomplete" in msg
    assert ("'torch'" if mode == "no_module" else "'numpy'") in msg
    assert "Install Engine Environment" in msg  # the preferences' repair button
    assert "Internal error" not in msg and "crashed" not in msg


def test_output_folder_error_is_explained(fake_engine, tmp_path):
    msg = _fit_error(fake_engine, "output", output_dir=str(tmp_path / "taken"))
    assert "already exists" in msg and "Result Folder" in msg


# ---------------------------------------------------------------------------------------------
# Output folders: never --overwrite a folder that is not a result folder; distinct folders per job
# ---------------------------------------------------------------------------------------------
def test_existing_plain_folder_is_refused_before_the_engine_runs(fake_engine, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    for overwrite in (False, True):
        if (tmp_path / "argv.json").exists():
            (tmp_path / "argv.json").unlink()
        msg = _fit_error(fake_engine, "ok", output_dir=str(folder), overwrite=overwrite)
        assert "not a GANFit result folder" in msg or "already exists" in msg, msg
        assert not (tmp_path / "argv.json").exists(), "the engine must not have been started"
    assert (folder / "notes.txt").read_text() == "keep me"


def test_overwrite_passes_only_for_a_result_folder(fake_engine, fake_result):
    msg = _fit_error(fake_engine, "ok", output_dir=str(fake_result))  # exists, no Overwrite
    assert "already exists" in msg and "Overwrite" in msg
    assert fake_engine("ok", output_dir=str(fake_result), overwrite=True) == {"FINISHED"}
    argv = fake_engine.argv()
    assert "--overwrite" in argv and argv[argv.index("-o") + 1] == str(fake_result)


def test_two_jobs_at_once_get_distinct_result_folders(fake_engine, tmp_path, monkeypatch):
    runner = _mod("runner")
    paths = _mod("paths")
    base = tmp_path / "base"
    a = paths.new_result_dir(base, "me.png")
    b = paths.new_result_dir(base, "me.png")
    assert a != b
    photo = Path(json.loads((Path(os.environ["FAKE_RESULT"]) / "result.json").read_text())["photo"])
    monkeypatch.setenv("FAKE_MODE", "slow")
    jobs = [runner.start_fit(str(photo), paths.new_result_dir(base, str(photo)),
                             python=__import__("sys").executable, preset="fast", device="cpu")
            for _ in range(2)]
    assert jobs[0].result_dir != jobs[1].result_dir
    for job in jobs:
        job.cancel()
        runner.wait(job, timeout=20)
    assert all(j.state == "cancelled" for j in jobs)


def test_fit_reports_the_engines_warnings(fake_engine, capsys):
    assert fake_engine("warn") == {"FINISHED"}
    out = capsys.readouterr().out
    assert "Warning: The face is small (52 px)" in out and "1 warning(s)" in out
    rt = bpy.context.window_manager.ganfit
    assert rt.last_warnings == "The face is small (52 px): the fit and texture will be coarse."
