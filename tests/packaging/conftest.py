"""Fixtures for the packaging tests: tiny local wheels, a fake engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from pkgtest_helpers import load_environment_module, make_fake_engine, write_wheel


@pytest.fixture(scope="session")
def env_mod():
    return load_environment_module()


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory) -> Path:
    """A local wheel folder: a tiny package and a stand-in 'torch==2.13.0' (a few bytes)."""
    folder = tmp_path_factory.mktemp("wheels")
    write_wheel(folder, "ganfit-tiny", "1.0", {
        "ganfit_tiny/__init__.py": "VALUE = 42\n",
    })
    write_wheel(folder, "torch", "2.13.0", {
        "torch/__init__.py": "__version__ = '2.13.0'\nFAKE = True\n",
    })
    return folder


@pytest.fixture
def fake_engine(tmp_path) -> Path:
    return make_fake_engine(tmp_path / "ext")


