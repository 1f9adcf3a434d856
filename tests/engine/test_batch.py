"""``python -m engine batch`` end to end with real (tiny: fast preset, 2 steps) fits: a folder of 20
shared photos with 3 bad files, reruns, a batch killed with SIGTERM that resumes, bad flags."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared_data import require_shared

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.needs_torch
FAST = ("--preset", "fast", "--max-steps", "2", "--no-progress")


def batch_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "engine", "batch", *args]


def run_batch(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(batch_cmd(*args), capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)


def read_manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]


def good_photos(n: int) -> list[Path]:
    """``n`` shared photos: ../shared/photos first, then ../shared/faces/london-canada."""
    photos = sorted(p for p in require_shared("photos").iterdir() if p.suffix.lower() in (".jpg", ".png"))
    faces = sorted(require_shared("faces", "london-canada").glob("*.jpg"))
    return (photos + faces)[:n]


def add_bad_files(folder: Path) -> dict[str, int]:
    """A truncated JPEG, a text file named .jpg and a photo without a face; name -> exit code."""
    src = good_photos(1)[0]
    (folder / "zz_corrupt.jpg").write_bytes(src.read_bytes()[:2500])
    (folder / "zz_notes.jpg").write_text("this is not a photo\n")
    rng = np.random.default_rng(0)
    sky = np.linspace([40, 90, 200], [200, 220, 255], 320)[:, None, :].repeat(400, 1)
    Image.fromarray((sky + rng.normal(0, 6, sky.shape)).clip(0, 255).astype(np.uint8)).save(folder / "zz_sky.png")
    return {"zz_corrupt.jpg": 3, "zz_notes.jpg": 3, "zz_sky.png": 4}


def result_folders(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.is_dir())


def assert_no_leftovers(out: Path) -> None:
    """Only whole result folders and the manifest: no temporary or half-written folder."""
    for p in out.iterdir():
        if p.name == "manifest.jsonl":
            continue
        assert p.is_dir() and not p.name.startswith("."), p
        assert (p / ".ganfit-result").is_file() and (p / "result.json").is_file(), p


def stamps(out: Path) -> dict[str, tuple[int, int]]:
    return {n: ((out / n / "result.json").stat().st_ino, (out / n / "result.json").stat().st_mtime_ns)
            for n in result_folders(out)}


def test_twenty_photos_three_bad_rerun_retries_once_then_does_nothing(tmp_path):
    src = tmp_path / "photos"
    src.mkdir()
    for p in good_photos(17):
        shutil.copy(p, src / p.name)
    bad = add_bad_files(src)
    (src / "README.txt").write_text("not a photo by its extension: left out\n")
    assert len(list(src.iterdir())) == 21
    out = tmp_path / "out"

    p = run_batch(str(src), "-o", str(out), "--workers", "2", *FAST)
    assert p.returncode == 1, p.stderr[-4000:]  # 1: some photos failed
    lines = read_manifest(out)
    assert len(lines) == 20 and len({r["id"] for r in lines}) == 20
    by_name = {r["photo"]: r for r in lines}
    for name, code in bad.items():
        r = by_name[name]
        assert r["status"] == "failed" and r["exit_code"] == code and r["error"], r
        assert r["result"] is None and r["attempt"] == 1
    ok = [r for r in lines if r["status"] == "ok"]
    assert len(ok) == 17
    for r in ok:
        assert r["exit_code"] == 0 and r["error"] is None and r["seconds"] > 0
        assert 0 <= r["metrics"]["landmark_error_iod"] < 0.3
        meta = json.loads((out / r["result"] / "result.json").read_text())
        assert meta["photo"] == str(src / r["photo"]) and meta["preset"] == "fast"
    assert len({r["worker"] for r in lines}) == 2  # two worker processes shared the work
    assert result_folders(out) == sorted(r["id"] for r in ok)
    assert_no_leftovers(out)
    assert "17 of 20 photos have a result, 3 failed" in p.stderr
    assert "zz_notes.jpg (exit 3, bad_input)" in p.stderr
    before = stamps(out)

    # rerun: the finished photos are skipped, each failed one is retried once
    p = run_batch(str(src), "-o", str(out), "--workers", "2", *FAST)
    assert p.returncode == 1, p.stderr[-4000:]
    lines2 = read_manifest(out)
    assert lines2[:20] == lines
    assert sorted(r["photo"] for r in lines2[20:]) == sorted(bad) and {r["attempt"] for r in lines2[20:]} == {2}
    assert stamps(out) == before
    # and once more: nothing to do
    text = (out / "manifest.jsonl").read_bytes()
    p = run_batch(str(src), "-o", str(out), *FAST)
    assert p.returncode == 1, p.stderr[-4000:]
    assert "3 failed twice (skipped; --retry-failed redoes them), 0 to fit" in p.stderr
    assert (out / "manifest.jsonl").read_bytes() == text and stamps(out) == before
    assert_no_leftovers(out)


def test_sigterm_stops_cleanly_and_the_batch_resumes(tmp_path):
    src = tmp_path / "photos"
    src.mkdir()
    for p in good_photos(5):
        shutil.copy(p, src / p.name)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(batch_cmd(str(src), "-o", str(out), "--workers", "1", *FAST), cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            m = out / "manifest.jsonl"
            if m.exists() and m.read_text().count("\n") >= 1:
                break
            time.sleep(0.1)
        assert proc.poll() is None, "the batch ended before it could be stopped: " + proc.stderr.read()[-3000:]
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=120)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "stopping" in err and "stopped: this run fitted" in err
    lines = read_manifest(out)  # every line whole
    assert 1 <= len(lines) < 5 and all(r["status"] == "ok" for r in lines)
    assert_no_leftovers(out)
    assert result_folders(out) == sorted(r["id"] for r in lines)
    before = stamps(out)

    p = run_batch(str(src), "-o", str(out), "--workers", "1", *FAST)
    assert p.returncode == 0, p.stderr[-4000:]
    assert f"{len(lines)} done before" in p.stderr
    lines2 = read_manifest(out)
    assert sorted(r["id"] for r in lines2) == sorted(Path(x.name).stem for x in src.iterdir())
    assert all(r["status"] == "ok" for r in lines2)
    assert {k: v for k, v in stamps(out).items() if k in before} == before  # not fitted again
    assert_no_leftovers(out)


def test_bad_flags_and_folders_are_clear_errors(tmp_path):
    src = tmp_path / "photos"
    src.mkdir()
    (src / "a.jpg").write_text("x")
    p = run_batch(str(src), "-o", str(tmp_path / "o"), "--workers", "0")
    assert p.returncode == 2 and "--workers: must be at least 1, got 0" in p.stderr
    p = run_batch(str(src), "-o", str(tmp_path / "o"), "--shard", "4/4")
    assert p.returncode == 2 and "0 <= i < N" in p.stderr
    f = tmp_path / "afile"
    f.write_text("mine")
    p = run_batch(str(src), "-o", str(f))
    assert p.returncode == 6 and "exists and is not a folder" in p.stderr and f.read_text() == "mine"
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    p = run_batch(str(src), "-o", str(busy))
    assert p.returncode == 6 and "holds no manifest.jsonl" in p.stderr
    assert [x.name for x in busy.iterdir()] == ["keep.txt"]
    p = run_batch(str(tmp_path / "missing"), "-o", str(tmp_path / "o"))
    assert p.returncode == 3 and "does not exist" in p.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    p = run_batch(str(empty), "-o", str(tmp_path / "o"))
    assert p.returncode == 3 and "No photos" in p.stderr
    assert not (tmp_path / "o").exists()  # nothing created for a batch that could not start
