"""Fixtures for the add-on tests; helpers and the Blender user-folder setup are in
addon_testlib.py (imported first, before bpy)."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

from shared_data import unavailable


# test_addon_*.py need bpy; the other test files (contract, result reader) are plain tests.
def _has_bpy() -> bool:
    try:
        return importlib.util.find_spec("bpy") is not None  # find_spec does not import bpy
    except (ImportError, ValueError):
        return False


if not _has_bpy():
    # CI then fails tests/test_suite_requirements.py, and pytest's header says the add-on tests
    # are left out.
    collect_ignore_glob = ["test_addon_*.py"]
else:
    # addon_testlib points Blender's user folders at a temp folder, then imports bpy.
    from addon_testlib import (ADDON, disable_addon, enable_addon, engine_reason,
                               write_fake_result)
    import bpy


@pytest.fixture
def addon(tmp_path):
    """The add-on enabled on an empty file, its engine Python = this interpreter."""
    bpy.ops.wm.read_homefile(use_empty=True)
    mod = enable_addon()
    prefs = bpy.context.preferences.addons[ADDON].preferences
    prefs.engine_python = sys.executable
    prefs.device = "cpu"
    prefs.result_location = "CUSTOM"
    prefs.result_dir = str(tmp_path / "results")
    try:
        yield mod
    finally:
        disable_addon()
        bpy.ops.wm.read_homefile(use_empty=True)


@pytest.fixture
def real_engine():
    reason = engine_reason()
    if reason:
        unavailable(reason)  # skipped; fails under CI (tests/shared_data.py)


@pytest.fixture(scope="session")
def fake_result_master(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fake") / "result"
    write_fake_result(folder)
    return folder


@pytest.fixture(scope="session")
def fake_multi_result_master(tmp_path_factory) -> Path:
    """A fake result of two photos of one person (views), its photos next to it."""
    folder = tmp_path_factory.mktemp("fake-mv") / "result"
    write_fake_result(folder, views=2)
    return folder


@pytest.fixture
def fake_result(fake_result_master, tmp_path) -> Path:
    """A private copy of a fake result folder (and its photo)."""
    dst = tmp_path / "res" / "result"
    dst.parent.mkdir()
    shutil.copytree(fake_result_master, dst)
    return dst


