"""Where the tests find the shared data, and what a missing requirement does.

The shared, read-only data (photos/, faces/, models/) lives beside the repository in ../shared,
or wherever $GANFIT_SHARED points. A test that needs it (or another requirement the suite
declares: bpy, a Python 3.13 interpreter, a test dependency) calls :func:`require_shared` or
:func:`unavailable`, or carries ``@pytest.mark.needs_shared(...)``:

* on a developer's machine the test is skipped, and the reason says what is missing;
* when the environment variable ``CI`` is set (``.ci/run`` runs with ``CI=true``) it FAILS,
  so a CI run cannot pass by skipping what it was meant to test.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GANFIT_SHARED") or REPO.parent / "shared")


def in_ci() -> bool:
    """True when ``CI`` is set to anything but '', '0', 'false' or 'no'."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def unavailable(reason: str) -> NoReturn:
    """Skip the current test with ``reason``, or fail it under CI."""
    if in_ci():
        pytest.fail(f"{reason} (CI is set: a missing requirement fails instead of skipping)",
                    pytrace=False)
    pytest.skip(reason)


def shared_path(*parts: str) -> Path:
    """A path under the shared data folder (it need not exist)."""
    return SHARED.joinpath(*parts)


def shared_missing(*parts: str) -> str | None:
    """Why ``shared_path(*parts)`` is unusable (missing, or an empty folder), or None."""
    p = shared_path(*parts)
    if not p.exists():
        return f"shared data not found: {p} (set GANFIT_SHARED to the shared folder)"
    if p.is_dir() and not any(p.iterdir()):
        return f"shared data folder is empty: {p}"
    return None


def require_shared(*parts: str) -> Path:
    """``shared_path(*parts)``, or skip (fail under CI) when it is missing or empty."""
    reason = shared_missing(*parts)
    if reason:
        unavailable(reason)
    return shared_path(*parts)
