"""Helpers for the packaging tests (a unique module name: no clash with other conftest.py)."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import os
import sys
import textwrap
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def load_environment_module():
    """ganfit_blender/environment.py without importing the add-on package (which needs bpy)."""
    name = "ganfit_env_under_test"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "ganfit_blender" / "environment.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def write_wheel(folder: Path, dist: str, version: str, files: dict[str, str]) -> Path:
    """Write a minimal pure-Python wheel (PEP 427) with a correct RECORD."""
    norm = dist.replace("-", "_")
    dist_info = f"{norm}-{version}.dist-info"
    entries = dict(files)
    entries[f"{dist_info}/METADATA"] = (f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n"
                                        f"Summary: test package\n")
    entries[f"{dist_info}/WHEEL"] = ("Wheel-Version: 1.0\nGenerator: ganfit-tests\n"
                                     "Root-Is-Purelib: true\nTag: py3-none-any\n")
    record = []
    for path, text in entries.items():
        data = text.encode()
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist_info}/RECORD,,")
    entries[f"{dist_info}/RECORD"] = "\n".join(record) + "\n"
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{norm}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(out, "w") as zf:
        for path, text in entries.items():
            zf.writestr(path, text)
    return out


FAKE_ENGINE_MAIN = textwrap.dedent('''
    import json, os, sys, time
    if sys.argv[1:] == ["check", "--json"]:
        if os.environ.get("GANFIT_TEST_CHECK_SLEEP"):
            print("sleeping", flush=True)
            time.sleep(float(os.environ["GANFIT_TEST_CHECK_SLEEP"]))
        import torch, ganfit_tiny
        print(json.dumps({"ok": True, "torch": torch.__version__, "tiny": ganfit_tiny.VALUE,
                          "prefix": sys.prefix}))
        sys.exit(0)
    sys.exit(2)
''')


def make_fake_engine(root: Path, requirements: str = "ganfit-tiny==1.0\n") -> Path:
    """``root/engine`` with a requirements.txt and a ``check --json`` that imports them."""
    eng = root / "engine"
    eng.mkdir(parents=True)
    (eng / "__init__.py").write_text("")
    (eng / "__main__.py").write_text(FAKE_ENGINE_MAIN)
    (eng / "requirements.txt").write_text(requirements)
    return eng


def offline_pip(wheelhouse: Path) -> tuple[list[str], dict[str, str | None]]:
    """pip arguments + environment overrides: only the given folder, no config, no index."""
    args = ["--no-index", "--find-links", str(wheelhouse)]
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    return args, env
