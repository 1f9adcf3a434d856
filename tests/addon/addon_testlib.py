"""Helpers for the add-on tests (headless bpy from PyPI); the fixtures are in conftest.py.

Blender's user folders point at a temporary folder *before* bpy is imported, so the tests never
touch the real user configuration. Each test starts from an empty home file with the add-on
enabled from the source tree and its engine Python set to this interpreter.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
_USER = Path(tempfile.mkdtemp(prefix="ganfit-bl-user-"))
atexit.register(shutil.rmtree, _USER, True)
os.environ["BLENDER_USER_RESOURCES"] = str(_USER)
for _kind in ("CONFIG", "DATAFILES", "SCRIPTS", "EXTENSIONS"):
    os.environ[f"BLENDER_USER_{_kind}"] = str(_USER / _kind.lower())

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import bpy  # noqa: E402,F401  (after the user folders are set; tests import it from here)
import addon_utils  # noqa: E402  (needs bpy first)

ADDON = "ganfit_blender"
SHARED = Path(os.environ.get("GANFIT_SHARED", REPO.parent / "shared"))
PHOTO = SHARED / "photos" / "codait_luciano.png"
FACE_MODEL = REPO / "engine" / "data" / "facemodel" / "ict_face.npz"


# ---------------------------------------------------------------------------------------------
# Add-on
# ---------------------------------------------------------------------------------------------
def enable_addon():
    mod = addon_utils.enable(ADDON, default_set=True, handle_error=None)
    assert mod is not None, "the add-on failed to enable"
    return mod


def disable_addon() -> None:
    addon_utils.disable(ADDON, default_set=True, handle_error=None)


# ---------------------------------------------------------------------------------------------
# Engine availability
# ---------------------------------------------------------------------------------------------
def engine_fit_unavailable_reason() -> str | None:
    """Why real-engine tests cannot run yet (None when they can)."""
    if not PHOTO.is_file():
        return f"shared test photo missing: {PHOTO} (set GANFIT_SHARED)"
    try:
        proc = subprocess.run([sys.executable, "-m", "engine", "fit", "--help"], cwd=REPO,
                              capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`python -m engine fit --help` did not run: {exc}"
    if proc.returncode != 0:
        return "`python -m engine fit --help` does not work yet (engine not written)"
    # The CLI's parser exists before the fitting code: check the module `fit` dispatches to.
    if not (REPO / "engine" / "fit" / "run.py").is_file():
        return "engine/fit/run.py (the fit itself) does not exist yet"
    return None


_ENGINE_REASON: list[str | None] = []


def engine_reason() -> str | None:
    if not _ENGINE_REASON:
        _ENGINE_REASON.append(engine_fit_unavailable_reason())
    return _ENGINE_REASON[0]


# A result folder written by the test: fake_result.py (no bpy, also used by the plain tests)
from fake_result import load_model_arrays, rotation_y, write_fake_result  # noqa: E402,F401


def children_of_this_process() -> set[int]:
    """PIDs of live child processes (Linux /proc), for 'nothing left running' checks."""
    me = os.getpid()
    out = set()
    for d in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 2 and int(fields[1]) == me and fields[0] != "Z":
            out.add(int(d.name))
    return out


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False  # still there (an unreaped zombie counts as not gone)
