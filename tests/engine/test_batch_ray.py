"""``python -m engine batch --ray ADDRESS`` on a real local Ray cluster: ``ray start --head`` on the
loopback address with 2 CPUs, two actors fitting three photos (one of them bad), then ``ray stop``."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from shared_data import unavailable

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.needs_torch, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_cli() -> list[str]:
    exe = Path(sys.executable).with_name("ray")  # the venv's console script
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "ray.scripts.scripts"]


@pytest.fixture(scope="module")
def cluster():
    if importlib.util.find_spec("ray") is None:
        # in the [test] extras for every supported Python (ray has 3.11 and 3.13 wheels)
        unavailable("ray is not installed in this venv (pip install 'ganfit-engine[ray]')")
    port = _free_port()
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
    start = _ray_cli() + ["start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                          "--num-cpus", "2", "--num-gpus", "0", "--include-dashboard", "false",
                          "--temp-dir", temp, "--disable-usage-stats"]
    p = subprocess.run(start, capture_output=True, text=True, timeout=180, env=env, cwd=REPO)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    try:
        yield f"127.0.0.1:{port}", env
    finally:
        subprocess.run(_ray_cli() + ["stop", "--force"], capture_output=True, text=True, timeout=120, env=env)
        shutil.rmtree(temp, ignore_errors=True)


def test_batch_on_a_local_ray_cluster(cluster, tmp_path):
    from test_batch import add_bad_files, assert_no_leftovers, good_photos, read_manifest, result_folders
    address, env = cluster
    src = tmp_path / "photos"
    src.mkdir()
    for p in good_photos(2):
        shutil.copy(p, src / p.name)
    add_bad_files(src)
    (src / "zz_corrupt.jpg").unlink()
    (src / "zz_sky.png").unlink()  # one bad file is enough here
    out = tmp_path / "out"
    local = [sys.executable, "-m", "engine", "batch", str(src), "-o", str(out), "--preset", "fast",
             "--max-steps", "2", "--no-progress"]
    p = subprocess.run(local + ["--ray", address, "--workers", "2"], capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert p.returncode == 1, p.stderr[-4000:]  # the bad file failed
    assert f"Ray ({address}): 2 actors x 1 threads" in p.stderr
    lines = read_manifest(out)
    assert sorted(r["status"] for r in lines) == ["failed", "ok", "ok"]
    bad = next(r for r in lines if r["status"] == "failed")
    assert bad["photo"] == "zz_notes.jpg" and bad["exit_code"] == 3 and "Not an image" in bad["error"]
    assert all(r["worker"].startswith("ray:") for r in lines)
    for r in lines:
        if r["status"] == "ok":
            assert json.loads((out / r["id"] / "result.json").read_text())["photo"] == str(src / r["photo"])
    assert result_folders(out) == sorted(r["id"] for r in lines if r["status"] == "ok")
    assert_no_leftovers(out)
    # the same folder resumes in local mode: the Ray results count as done
    p = subprocess.run(local, capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert "2 done before" in p.stderr and p.returncode == 1, p.stderr[-3000:]


def test_ray_missing_is_a_clear_error(tmp_path):
    """Without ray importable (a stub that fails), --ray says what to install and writes nothing."""
    stub = tmp_path / "stub"
    (stub / "ray").mkdir(parents=True)
    (stub / "ray" / "__init__.py").write_text("raise ImportError('No module named ray (test stub)')\n")
    src = tmp_path / "photos"
    src.mkdir()
    (src / "a.jpg").write_text("x")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(stub), str(REPO)])}
    p = subprocess.run([sys.executable, "-m", "engine", "batch", str(src), "-o", str(tmp_path / "o"), "--ray"],
                       capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
    assert p.returncode == 5, p.stderr[-2000:]
    assert "pip install 'ganfit-engine[ray]'" in p.stderr
    assert not (tmp_path / "o").exists()
