"""Import the extension's bpy-free modules (contract, command, client, paths, result) for plain
tests that run with or without bpy."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

ADDON = "ganfit_blender"


def addon_module(name: str):
    """``ganfit_blender.<name>``; the package imports without bpy (then only these modules work)."""
    return importlib.import_module(f"{ADDON}.{name}")
