"""Suite-wide test setup: the ``needs_shared`` marker, and a loud notice of what was not run.

See shared_data.py: a missing requirement skips a test on a developer's machine and fails it
when the environment variable CI is set.
"""

from __future__ import annotations

import importlib.util

import pytest

from shared_data import in_ci, require_shared


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "needs_shared(*parts): needs ../shared/<parts> (skipped if missing; fails "
        "under CI)")


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("needs_shared"):
        require_shared(*mark.args)


def pytest_report_header(config: pytest.Config) -> list[str]:
    lines = []
    if importlib.util.find_spec("bpy") is None:
        lines.append("bpy is NOT installed: the add-on tests (tests/addon) are not collected"
                     + (" and CI fails (tests/test_suite_requirements.py)" if in_ci() else ""))
    if importlib.util.find_spec("torch") is None:
        lines.append("torch is NOT installed: the engine tests that need it are not collected")
    return lines
