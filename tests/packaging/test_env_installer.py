"""The engine-environment installer (ganfit_blender/environment.py), with real venvs and pip.

Everything except the `slow` test installs from a local wheel folder (--no-index), so it needs
no network and takes seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pkgtest_helpers import REPO, make_fake_engine, offline_pip, write_wheel

WAIT_S = 300


def _installer(env_mod, tmp_path, engine, wheelhouse, **kw):
    args, env = offline_pip(wheelhouse)
    env.update(kw.pop("env", {}))
    return env_mod.Installer(
        tmp_path / "user" / "engine-env", kw.pop("base_python", sys.executable), "cpu", engine,
        tmp_path / "install.log", extra_pip_args=args + kw.pop("extra_pip_args", []),
        torch_index_url=None, env=env, min_free_bytes=0, **kw)


def _leftovers(env_dir: Path) -> list[str]:
    if not env_dir.parent.exists():
        return []
    return sorted(p.name for p in env_dir.parent.iterdir() if p.name.startswith("." + env_dir.name)
                  or p.name == env_dir.name)


def test_default_env_dir(env_mod, tmp_path):
    assert env_mod.default_env_dir(tmp_path) == tmp_path / "engine-env"
    assert env_mod.env_python(tmp_path / "engine-env") is None


def test_env_python_needs_marker(env_mod, tmp_path, fake_engine):
    env_dir = tmp_path / "env"
    py = env_mod.venv_python_path(env_dir)
    py.parent.mkdir(parents=True)
    py.write_text("")
    assert env_mod.env_python(env_dir) is None  # an interpreter alone is not an environment
    (env_dir / env_mod.MARKER_NAME).write_text("{not json")
    assert env_mod.env_python(env_dir) is None
    (env_dir / env_mod.MARKER_NAME).write_text(json.dumps({"requirements_hash": "x"}))
    assert env_mod.env_python(env_dir) == py
    assert env_mod.env_python(env_dir, engine_root=fake_engine) is None  # stale hash
    (env_dir / env_mod.MARKER_NAME).write_text(
        json.dumps({"requirements_hash": env_mod.requirements_hash(fake_engine)}))
    assert env_mod.env_python(env_dir, engine_root=fake_engine) == py


def test_install_offline_done(env_mod, tmp_path, fake_engine, wheelhouse):
    inst = _installer(env_mod, tmp_path, fake_engine, wheelhouse)
    assert inst.poll()["state"] == "idle"
    t0 = time.monotonic()
    inst.start()
    seen = set()
    while inst.running:
        p = inst.poll()
        assert 0.0 <= p["fraction"] <= 1.0
        seen.add(p["step_id"])
        time.sleep(0.05)
        assert time.monotonic() - t0 < WAIT_S
    p = inst.wait()
    assert p["state"] == "done", (p, inst.log_tail())
    assert p["fraction"] == 1.0
    env_dir = inst.env_dir
    py = env_mod.env_python(env_dir, engine_root=fake_engine)
    assert py is not None and py == env_mod.venv_python_path(env_dir)
    marker = env_mod.read_marker(env_dir)
    assert marker["requirements_hash"] == env_mod.requirements_hash(fake_engine)
    assert marker["torch"] == "2.13.0" and marker["variant"] == "cpu"
    assert inst.check_result["ok"] is True and inst.check_result["tiny"] == 42
    assert _leftovers(env_dir) == ["engine-env"]  # no temp sibling left
    assert {"check", "venv", "torch", "requirements", "smoke"} & seen
    # The venv is isolated from the dev env and works from its final place.
    out = subprocess.run([str(py), "-c", "import sys, ganfit_tiny, torch; "
                          "print(sys.prefix, ganfit_tiny.VALUE, torch.FAKE)"],
                         capture_output=True, text=True, check=True)
    prefix, value, fake = out.stdout.split()
    assert Path(prefix).resolve() == env_dir.resolve() and value == "42" and fake == "True"
    cfg = (env_dir / "pyvenv.cfg").read_text()
    assert "include-system-site-packages = false" in cfg
    assert ".installing-" not in cfg  # paths were moved to the final folder
    out = subprocess.run([str(py), "-c", "import pytest"], capture_output=True)
    assert out.returncode != 0  # no system/dev site-packages leak in
    log = inst.log_path.read_text()
    assert "-m venv" in log and "pip install" in log and "engine check --json" in log
    print(f"offline install took {time.monotonic() - t0:.1f}s")

    # A second install replaces the first one in place.
    inst2 = _installer(env_mod, tmp_path, fake_engine, wheelhouse, upgrade_pip=False)
    inst2.start()
    assert inst2.wait(WAIT_S)["state"] == "done", inst2.log_tail()
    assert env_mod.env_python(env_dir, engine_root=fake_engine) is not None
    assert _leftovers(env_dir) == ["engine-env"]


def test_base_python_missing(env_mod, tmp_path, fake_engine, wheelhouse):
    inst = _installer(env_mod, tmp_path, fake_engine, wheelhouse,
                      base_python=tmp_path / "nope" / "python3")
    inst.start()
    p = inst.wait(WAIT_S)
    assert p["state"] == "failed"
    assert "not found" in p["message"] and "nope" in p["message"]
    assert env_mod.env_python(inst.env_dir) is None and _leftovers(inst.env_dir) == []

    inst = _installer(env_mod, tmp_path, fake_engine, wheelhouse, base_python="")
    inst.start()
    p = inst.wait(WAIT_S)
    assert p["state"] == "failed" and "No base Python" in p["message"]


def _old_python() -> str | None:
    for cand in sorted(Path.home().glob(".pyenv/versions/3.[0-9].*/bin/python")) + \
            sorted(Path.home().glob(".pyenv/versions/3.10.*/bin/python")):
        return str(cand)
    for name in ("/usr/bin/python3.9", "/usr/bin/python3.10", "/usr/bin/python3.8"):
        if os.path.exists(name):
            return name
    return None


@pytest.mark.skipif(_old_python() is None, reason="no Python older than 3.11 on this machine")
def test_base_python_wrong_version(env_mod, tmp_path, fake_engine, wheelhouse):
    old = _old_python()
    inst = _installer(env_mod, tmp_path, fake_engine, wheelhouse, base_python=old)
    inst.start()
    p = inst.wait(WAIT_S)
    assert p["state"] == "failed"
    assert "needs Python 3.11-3.13" in p["message"], p["message"]
    assert env_mod.env_python(inst.env_dir) is None and _leftovers(inst.env_dir) == []


def test_pip_cannot_find_requirement(env_mod, tmp_path, wheelhouse):
    engine = make_fake_engine(tmp_path / "ext", "ganfit-tiny==1.0\nganfit-does-not-exist==9.9\n")
    inst = _installer(env_mod, tmp_path, engine, wheelhouse)
    inst.start()
    p = inst.wait(WAIT_S)
    assert p["state"] == "failed"
    assert "could not find ganfit-does-not-exist==9.9" in p["message"], p["message"]
    assert "--no-index" in p["message"] and str(inst.log_path) in p["message"]
    assert env_mod.env_python(inst.env_dir) is None
    assert _leftovers(inst.env_dir) == []  # the temp venv is gone


def test_pip_network_unreachable(env_mod, tmp_path, fake_engine):
    # A closed local port as the index: pip cannot connect.
    env = {k: None for k in os.environ if k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    inst = env_mod.Installer(
        tmp_path / "user" / "engine-env", sys.executable, "cpu", fake_engine, tmp_path / "i.log",
        extra_pip_args=["--retries", "0", "--timeout", "2"],
        torch_index_url="http://127.0.0.1:9/simple", upgrade_pip=False, env=env, min_free_bytes=0)
    inst.start()
    p = inst.wait(WAIT_S)
    assert p["state"] == "failed"
    assert "pip could not reach the package index" in p["message"], p["message"]
    assert "local wheel folder" in p["message"]
    assert _leftovers(inst.env_dir) == []


def test_not_enough_disk_space(env_mod, tmp_path, fake_engine, wheelhouse):
    args, env = offline_pip(wheelhouse)
    inst = env_mod.Installer(tmp_path / "e", sys.executable, "cpu", fake_engine,
                             tmp_path / "i.log", extra_pip_args=args, env=env,
                             min_free_bytes=10**18)
    inst.start()
    p = inst.wait(WAIT_S)
    assert p["state"] == "failed" and "Not enough disk space" in p["message"]


def test_explain_no_space_from_pip_output(env_mod, tmp_path):
    msg = env_mod.explain_pip_failure(
        "PyTorch", 1, ["ERROR: Could not install packages due to an OSError: "
                       "[Errno 28] No space left on device"], tmp_path / "x.log")
    assert msg.startswith("Not enough disk space while installing PyTorch")


def test_nvdiffrast_needs_cuda(env_mod, tmp_path, fake_engine, wheelhouse):
    inst = _installer(env_mod, tmp_path, fake_engine, wheelhouse, with_nvdiffrast=True)
    inst.start()
    p = inst.wait(WAIT_S)
    assert p["state"] == "failed" and "nvdiffrast needs the CUDA engine" in p["message"]


def test_nvdiffrast_needs_nvcc(env_mod, tmp_path, fake_engine, wheelhouse, monkeypatch):
    args, env = offline_pip(wheelhouse)
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    inst = env_mod.Installer(tmp_path / "e", sys.executable, "cuda", fake_engine,
                             tmp_path / "i.log", extra_pip_args=args, env=env,
                             with_nvdiffrast=True, torch_index_url=None, min_free_bytes=0)
    inst.start()
    p = inst.wait(WAIT_S)
    assert p["state"] == "failed" and "nvcc" in p["message"], p["message"]


def test_smoke_test_failure_fails_install(env_mod, tmp_path, wheelhouse):
    engine = make_fake_engine(tmp_path / "ext")
    (engine / "__main__.py").write_text("import sys\nprint('boom: no face model')\nsys.exit(5)\n")
    inst = _installer(env_mod, tmp_path, engine, wheelhouse, upgrade_pip=False)
    inst.start()
    p = inst.wait(WAIT_S)
    assert p["state"] == "failed"
    assert "engine check --json" in p["message"] and "boom: no face model" in p["message"]
    assert env_mod.env_python(inst.env_dir) is None and _leftovers(inst.env_dir) == []


def test_cancel_mid_install(env_mod, tmp_path, fake_engine, wheelhouse):
    inst = _installer(env_mod, tmp_path, fake_engine, wheelhouse, upgrade_pip=False,
                      env={"GANFIT_TEST_CHECK_SLEEP": "120"})
    inst.start()
    t0 = time.monotonic()
    while inst.poll()["step_id"] != "smoke" or "sleeping" not in inst.log_tail(3):
        assert inst.running, (inst.poll(), inst.log_tail())
        assert time.monotonic() - t0 < WAIT_S
        time.sleep(0.05)
    tmp_dirs = [p for p in inst.env_dir.parent.iterdir() if ".installing-" in p.name]
    assert len(tmp_dirs) == 1  # the venv is being built next to its final place
    t1 = time.monotonic()
    inst.cancel()
    p = inst.wait(30)
    assert p["state"] == "cancelled", p
    assert time.monotonic() - t1 < 10
    assert env_mod.env_python(inst.env_dir) is None
    assert _leftovers(inst.env_dir) == []


def test_cancel_right_away(env_mod, tmp_path, fake_engine, wheelhouse):
    inst = _installer(env_mod, tmp_path, fake_engine, wheelhouse)
    inst.start()
    time.sleep(0.3)  # usually inside 'python -m venv'
    inst.cancel()
    p = inst.wait(60)
    assert p["state"] in ("cancelled", "done")
    if p["state"] == "cancelled":
        assert _leftovers(inst.env_dir) == []


def test_offline_mode_needs_local_wheels(env_mod, tmp_path, fake_engine, wheelhouse):
    # Blender's "Allow Online Access" off: no install from the internet...
    inst = env_mod.Installer(tmp_path / "e", sys.executable, "cpu", fake_engine,
                             tmp_path / "i.log", allow_network=False, min_free_bytes=0)
    inst.start()
    p = inst.wait(WAIT_S)
    assert p["state"] == "failed" and "Online access is disabled" in p["message"]
    # ...but a local wheel folder is fine.
    inst = _installer(env_mod, tmp_path, fake_engine, wheelhouse, allow_network=False,
                      upgrade_pip=False)
    inst.start()
    assert inst.wait(WAIT_S)["state"] == "done", inst.log_tail()


def test_index_and_pip_args_configurable(env_mod, tmp_path, fake_engine, monkeypatch):
    monkeypatch.delenv("GANFIT_TORCH_INDEX_URL", raising=False)
    monkeypatch.delenv("GANFIT_PIP_ARGS", raising=False)
    mk = lambda variant="cpu", **kw: env_mod.Installer(  # noqa: E731
        tmp_path / "e", sys.executable, variant, fake_engine, tmp_path / "i.log", **kw)
    assert mk().torch_index_url == "https://download.pytorch.org/whl/cpu"
    assert mk("cuda").torch_index_url is None
    assert mk(torch_index_url="https://example.org/simple").torch_index_url == \
        "https://example.org/simple"
    monkeypatch.setenv("GANFIT_TORCH_INDEX_URL", "")
    assert mk().torch_index_url is None  # pip's own config (e.g. a local wheel folder)
    monkeypatch.setenv("GANFIT_PIP_ARGS", "--no-index --find-links '/a b'")
    assert mk(extra_pip_args=["-q"]).extra_pip_args == ["-q", "--no-index", "--find-links", "/a b"]
    with pytest.raises(ValueError):
        mk("rocm")


def test_start_twice_refused(env_mod, tmp_path, fake_engine, wheelhouse):
    inst = _installer(env_mod, tmp_path, fake_engine, wheelhouse, base_python="")
    inst.start()
    with pytest.raises(RuntimeError):
        inst.start()
    inst.wait(60)


# ---------------------------------------------------------------------------------------------
# The real thing: torch 2.13.0 from this machine's local CPU wheel + the engine requirements.


def _local_torch_wheel_dir() -> Path | None:
    """A folder holding a torch 2.13.0 CPU wheel for this Python, from pip's find-links."""
    dirs = os.environ.get("PIP_FIND_LINKS", "").split()
    try:
        out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True,
                             text=True, timeout=60).stdout
        for line in out.splitlines():
            if "find-links" in line and "=" in line:
                dirs += line.split("=", 1)[1].strip().strip("'\"").split()
    except (OSError, subprocess.TimeoutExpired):
        pass
    tag = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    for d in dirs:
        d = Path(d.removeprefix("file://"))
        if d.is_dir() and list(d.glob(f"torch-2.13.0+cpu-{tag}-*.whl")):
            return d
    return None


def _engine_check_exists() -> bool:
    """Whether the engine's self-check already passes in the dev env (the lead writes it)."""
    try:
        r = subprocess.run([sys.executable, "-m", "engine", "check", "--json"], cwd=REPO,
                           capture_output=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


@pytest.mark.slow
def test_full_install_with_local_torch(env_mod, tmp_path):
    wheels = _local_torch_wheel_dir()
    if wheels is None:
        pytest.skip("no local torch 2.13.0 CPU wheel in pip's find-links (would download GBs)")
    smoke = _engine_check_exists()
    inst = env_mod.Installer(
        tmp_path / "user" / "engine-env", sys.executable, "cpu", REPO / "engine",
        tmp_path / "install.log", extra_pip_args=["--find-links", str(wheels)],
        torch_index_url=None,  # the PyTorch index is not reachable here: pip config + local wheel
        smoke_test=smoke, upgrade_pip=False)
    t0 = time.monotonic()
    inst.start()
    p = inst.wait(1800)
    took = time.monotonic() - t0
    print(f"full install took {took:.0f}s (smoke test: {smoke})")
    assert p["state"] == "done", (p["message"], inst.log_tail(30))
    py = env_mod.env_python(inst.env_dir, engine_root=REPO / "engine")
    assert py is not None
    out = subprocess.run([str(py), "-c", "import torch, numpy, PIL, mediapipe; "
                          "print(torch.__version__, torch.version.cuda)"],
                         capture_output=True, text=True, check=True)
    version, cuda = out.stdout.split()
    assert version.startswith("2.13.0") and cuda == "None"  # the CPU build, never CUDA
    if not smoke:
        pytest.xfail("installed, but 'python -m engine check' does not exist yet: no smoke test")


# ---------------------------------------------------------------------------------------------
# Which torch build arrives: 'cpu' from the plain index on Linux is PyPI's CUDA build


def test_expected_torch_build(env_mod):
    exp = env_mod.expected_torch_build
    assert exp("cpu", None, [], "linux", "x86_64") == "cuda"  # PyPI's Linux torch
    assert exp("cpu", None, ["--no-index", "--find-links", "/w"], "linux", "x86_64") == "cpu"
    assert exp("cpu", "https://download.pytorch.org/whl/cpu", [], "linux", "x86_64") == "cpu"
    assert exp("cpu", None, [], "linux", "aarch64") == "cpu"
    assert exp("cpu", None, [], "win32", "AMD64") == "cpu"
    assert exp("cpu", None, [], "darwin", "arm64") == "cpu"
    assert exp("cuda", "https://download.pytorch.org/whl/cpu", [], "win32", "AMD64") == "cuda"


def test_cpu_from_plain_index_warns_and_sizes_disk_check(env_mod, tmp_path, fake_engine,
                                                         monkeypatch):
    monkeypatch.delenv("GANFIT_TORCH_INDEX_URL", raising=False)
    monkeypatch.delenv("GANFIT_PIP_ARGS", raising=False)
    monkeypatch.setattr(env_mod, "pypi_torch_is_cuda", lambda *a, **k: True)
    plain = env_mod.Installer(tmp_path / "e", sys.executable, "cpu", fake_engine,
                              tmp_path / "i.log", torch_index_url="pypi")
    assert plain.expected_build == "cuda"
    assert plain.min_free_bytes == env_mod.MIN_FREE_BYTES["cuda"] > env_mod.MIN_FREE_BYTES["cpu"]
    (w,) = plain.poll()["warnings"]
    assert "CUDA build" in w and "download.pytorch.org/whl/cpu" in w
    cpu_index = env_mod.Installer(tmp_path / "e", sys.executable, "cpu", fake_engine,
                                  tmp_path / "i.log")  # the default: PyTorch's CPU index
    assert cpu_index.expected_build == "cpu" and cpu_index.poll()["warnings"] == []
    assert cpu_index.min_free_bytes == env_mod.MIN_FREE_BYTES["cpu"]
    # The disk check says why it wants that much.
    monkeypatch.setattr(env_mod.shutil, "disk_usage",
                        lambda p: type("U", (), {"free": 3 * 1024**3})())
    plain.start()
    p = plain.wait(WAIT_S)
    assert p["state"] == "failed" and "Not enough disk space" in p["message"]
    assert "needs about 8 GB" in p["message"] and "CUDA build" in p["message"], p["message"]


def _torch_wheelhouse(folder: Path, cuda: str | None) -> Path:
    write_wheel(folder, "ganfit-tiny", "1.0", {"ganfit_tiny/__init__.py": "VALUE = 42\n"})
    write_wheel(folder, "torch", "2.13.0", {
        "torch/__init__.py": "raise ImportError('the probe must not import torch')\n",
        "torch/version.py": f"__version__ = '2.13.0'\ncuda = {cuda!r}\n",
    })
    return folder


@pytest.mark.parametrize("cuda", [None, "13.0"])
def test_marker_records_the_installed_build(env_mod, tmp_path, cuda):
    engine = make_fake_engine(tmp_path / "ext")
    wheels = _torch_wheelhouse(tmp_path / "wheels", cuda)
    inst = _installer(env_mod, tmp_path, engine, wheels, upgrade_pip=False, smoke_test=False)
    assert inst.poll()["warnings"] == []  # --no-index: nothing to warn about beforehand
    inst.start()
    p = inst.wait(WAIT_S)
    assert p["state"] == "done", (p, inst.log_tail())
    marker = env_mod.read_marker(inst.env_dir)
    assert marker["requested_variant"] == "cpu" and marker["torch_build"] == "2.13.0"
    assert marker["torch_cuda"] == cuda and marker["torch_bytes"] > 0
    log = inst.log_path.read_text()
    if cuda is None:
        assert marker["variant"] == "cpu" and marker["warnings"] == [] == p["warnings"]
        assert "# torch installed: 2.13.0 (cpu)" in log
    else:
        assert marker["variant"] == "cuda"
        (w,) = p["warnings"]
        assert marker["warnings"] == [w] and "CUDA build" in w and "CUDA 13.0" in w
        assert w in p["message"] and f"# WARNING: {w}" in log
