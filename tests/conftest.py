"""Suite-wide test setup: the ``needs_shared`` marker, and a loud notice of what was not run.

See shared_data.py: a missing requirement skips a test on a developer's machine and fails it
when the environment variable CI is set.

torch: a test module that cannot be imported because torch is missing is a collection error,
except where ``GANFIT_TORCH_OPTIONAL=1`` (scripts/dev.sh sets it for a venv it could not give a
CPU torch, i.e. Python 3.13 here: PyPI's Linux torch 2.13.0 is the multi-GB CUDA build): then
it is reported as skipped, and the header and the summary say how many modules were left out.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

from shared_data import in_ci, require_shared, unavailable


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "needs_shared(*parts): needs ../shared/<parts> (skipped if missing; fails "
        "under CI)")
    config.addinivalue_line(
        "markers", "needs_torch: runs the real engine (torch) with this interpreter (skipped "
        "where GANFIT_TORCH_OPTIONAL=1 and torch is missing; otherwise fails under CI)")


@pytest.hookimpl(tryfirst=True)  # before skip marks: a test parametrized over the shared photos
def pytest_runtest_setup(item: pytest.Item) -> None:  # has an empty parameter set without them
    for mark in item.iter_markers("needs_shared"):
        require_shared(*mark.args)
    if item.get_closest_marker("needs_torch") and importlib.util.find_spec("torch") is None:
        reason = "runs the engine, which needs torch: not installed in this venv"
        if _torch_optional():
            _LEFT_OUT_TESTS.append(item.nodeid)
            pytest.skip(reason + " (GANFIT_TORCH_OPTIONAL=1)")
        unavailable(reason)


def pytest_report_header(config: pytest.Config) -> list[str]:
    lines = []
    if importlib.util.find_spec("bpy") is None:
        lines.append("bpy is NOT installed: the add-on tests (tests/addon) are not collected"
                     + (" and CI fails (tests/test_suite_requirements.py)" if in_ci() else ""))
    if importlib.util.find_spec("torch") is None:
        lines.append("torch is NOT installed: the engine tests that need it are not collected")
    return lines


def _torch_optional() -> bool:
    return os.environ.get("GANFIT_TORCH_OPTIONAL") == "1" and importlib.util.find_spec("torch") is None


_LEFT_OUT: list[str] = []  # test modules not collected (they import torch)
_LEFT_OUT_TESTS: list[str] = []  # tests skipped because they run the engine


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    rep = yield
    if (rep.failed and isinstance(collector, pytest.Module) and _torch_optional()
            and "No module named 'torch'" in str(rep.longrepr)):
        _LEFT_OUT.append(collector.nodeid)
        rep.outcome = "skipped"
        rep.longrepr = (str(collector.path), 0,
                        "Skipped: needs torch, not installed in this venv (GANFIT_TORCH_OPTIONAL=1)")
    return rep


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ARG001
    if _LEFT_OUT:
        terminalreporter.write_line(
            f"torch is not installed: {len(_LEFT_OUT)} test modules were left out "
            f"(GANFIT_TORCH_OPTIONAL=1): {' '.join(_LEFT_OUT)}", yellow=True, bold=True)
    if _LEFT_OUT_TESTS:
        terminalreporter.write_line(
            f"torch is not installed: {len(_LEFT_OUT_TESTS)} tests that run the engine were "
            f"skipped (GANFIT_TORCH_OPTIONAL=1)", yellow=True, bold=True)
    if importlib.util.find_spec("bpy") is None:
        terminalreporter.write_line("bpy is not installed: tests/addon was not collected",
                                    red=True, bold=True)
