"""ganfit_blender/paths.py (no bpy): result folder names reserved per job, and the clean-up helpers
that may only remove what an engine run made."""

from __future__ import annotations

import subprocess
import sys

from addon_plain import REPO, addon_module

paths = addon_module("paths")


def test_result_names_are_reserved(tmp_path):
    a = paths.new_result_dir(tmp_path, "/photos/me.jpg")
    b = paths.new_result_dir(tmp_path, "/photos/me.jpg")
    assert a != b and a.parent == b.parent == tmp_path
    assert not a.exists() and not b.exists()  # the engine creates the folders
    assert paths.log_path_for(a).is_file() and paths.log_path_for(b).is_file()


def test_result_names_are_distinct_across_processes(tmp_path):
    # (bpy blocked in the children: paths.py needs none, and it keeps Blender's user folders out)
    code = ("import sys; sys.modules['bpy'] = None; sys.path.insert(0, sys.argv[1]); import importlib; "
            "p = importlib.import_module('ganfit_blender.paths'); "
            "print(p.new_result_dir(__import__('pathlib').Path(sys.argv[2]), 'me.png').name)")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(REPO), str(tmp_path)],
                              stdout=subprocess.PIPE, text=True) for _ in range(4)]
    names = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert all(names) and len(set(names)) == 4, names


def test_a_taken_name_is_skipped(tmp_path):
    first = paths.new_result_dir(tmp_path, "me.png")
    paths.log_path_for(first).unlink()
    (tmp_path / f".{first.name}.tmp-abc").mkdir()  # an engine is writing it
    assert paths.new_result_dir(tmp_path, "me.png") != first


def test_remove_preview_dir_only_removes_previews(tmp_path):
    mine = tmp_path / "ganfit-preview-x"
    mine.mkdir()
    (mine / "preview_0001.png").write_bytes(b"png")
    assert paths.remove_preview_dir(mine) and not mine.exists()
    other = tmp_path / "ganfit-preview-y"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    assert not paths.remove_preview_dir(other) and (other / "notes.txt").is_file()
    plain = tmp_path / "photos"
    plain.mkdir()
    (plain / "preview_0001.png").write_bytes(b"png")
    assert not paths.remove_preview_dir(plain) and (plain / "preview_0001.png").is_file()


def test_engine_tmp_siblings_match_only_that_name(tmp_path):
    out = tmp_path / "me[1]"
    for name in (".me[1].tmp-a", ".me1.tmp-b", ".me[1].old-3", ".me[1].tmp-file"):
        (tmp_path / name).mkdir() if "file" not in name else (tmp_path / name).write_text("")
    assert [p.name for p in paths.engine_tmp_siblings(out)] == [".me[1].tmp-a"]
