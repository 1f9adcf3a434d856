"""What the suite needs in order to test everything: fails under CI, skips (with the reason)
elsewhere, so a run that silently left out the add-on tests cannot look green."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys

from shared_data import SHARED, shared_missing, unavailable

# The headless Blender of each supported Python (pyproject.toml's [test] extras).
BPY_FOR_PYTHON = {(3, 11): "5.0.1", (3, 13): "5.1.2"}


def test_bpy_installed_for_this_python() -> None:
    want = BPY_FOR_PYTHON.get(sys.version_info[:2])
    assert want, f"Python {sys.version.split()[0]} is not a Python that Blender ships"
    if importlib.util.find_spec("bpy") is None:
        unavailable(f"bpy is not installed, so tests/addon was not collected: "
                    f"pip install bpy=={want} (or bash scripts/dev.sh setup)")
    assert importlib.metadata.version("bpy") == want


def test_shared_data_present() -> None:
    for part in ("photos", "models"):
        reason = shared_missing(part)
        if reason:
            unavailable(f"{reason}; the tests that need {SHARED} did not run")
