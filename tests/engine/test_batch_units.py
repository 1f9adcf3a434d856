"""``python -m engine batch``'s bookkeeping without fitting: photo ids, shards, the manifest, the
plan of a rerun, the output folder checks and the scratch sweep (engine/batch/plan.py)."""

from __future__ import annotations

import argparse
import fcntl
import json
import os
from pathlib import Path

import pytest

from engine.batch import plan as P
from engine.errors import BadInputError, OutputError


def _touch(d: Path, *names: str) -> None:
    for n in names:
        (d / n).write_bytes(b"x")


def test_collect_names_results_uniquely_and_skips_non_photos(tmp_path):
    _touch(tmp_path, "b.jpg", "a.png", "a.JPG", "notes.txt", ".hidden.jpg", "manifest.jsonl.png")
    (tmp_path / "sub.jpg").mkdir()  # a folder named like a photo is not one
    photos, skipped = P.collect(tmp_path)
    assert [p.name for p in photos] == ["a.JPG", "a.png", "b.jpg", "manifest.jsonl.png"]
    ids = [p.id for p in photos]
    assert ids == ["a_JPG", "a_png", "b", "photo-manifest_jsonl_png"]  # never the manifest's name
    assert skipped == ["notes.txt"]
    assert all(p.path.is_absolute() for p in photos)


def test_collect_errors(tmp_path):
    with pytest.raises(BadInputError, match="does not exist"):
        P.collect(tmp_path / "nope")
    _touch(tmp_path, "x.txt")
    with pytest.raises(BadInputError, match="No photos"):
        P.collect(tmp_path)
    with pytest.raises(BadInputError, match="Not a folder"):
        P.collect(tmp_path / "x.txt")


def test_shards_partition_the_photos():
    ids = [f"photo_{i}" for i in range(200)]
    parts = [[i for i in ids if P.in_shard(i, (k, 3))] for k in range(3)]
    assert sorted(sum(parts, [])) == sorted(ids)  # every photo in exactly one shard
    assert all(40 < len(p) < 90 for p in parts)
    assert P.parse_shard("2/3") == (2, 3)
    for bad in ("3/3", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(argparse.ArgumentTypeError):
            P.parse_shard(bad)


def test_manifest_survives_a_partial_line_and_counts_attempts(tmp_path):
    m = P.Manifest(tmp_path)
    m.append({"id": "a", "status": "failed", "metrics": {"x": float("nan")}})
    m.append({"id": "b", "status": "ok"})
    with open(m.path, "ab") as fh:
        fh.write(b'{"id": "a", "status": "o')  # a writer killed mid-line
    m.append({"id": "a", "status": "failed"})
    lines = m.path.read_text().splitlines()
    assert json.loads(lines[0])["metrics"] == {"x": None}  # NaN is not JSON
    assert json.loads(lines[-1]) == {"id": "a", "status": "failed"}  # on a line of its own
    state = m.read()
    assert state["a"]["attempts"] == 2 and state["b"]["attempts"] == 0
    m.append({"id": "a", "status": "ok"})
    assert m.read()["a"]["attempts"] == 0


def _result(folder: Path, photo: Path) -> None:
    folder.mkdir()
    (folder / "result.json").write_text(json.dumps({"schema": 1, "engine": "0.1.0", "photo": str(photo),
                                                    "files": {}}))


def test_plan_skips_done_retries_failed_once_and_recovers(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    _touch(src, "a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg")
    photos, _ = P.collect(src)
    out = tmp_path / "out"
    out.mkdir()
    _result(out / "a", src / "a.jpg")      # done and recorded
    _result(out / "d", src / "d.jpg")      # done, but the batch stopped before its manifest line
    state = {"a": {"last": {"status": "ok"}, "attempts": 0},
             "b": {"last": {"status": "failed"}, "attempts": 1},
             "c": {"last": {"status": "failed"}, "attempts": 2}}
    t = P.plan(photos, out, state)
    assert [p.id for p in t.run] == ["b", "e"] and t.attempts == {"b": 2, "e": 1}
    assert t.done == 1 and [p.id for p in t.given_up] == ["c"] and [p.id for p in t.recovered] == ["d"]
    assert [p.id for p in P.plan(photos, out, state, retry_failed=True).run] == ["b", "c", "e"]
    # "ok" in the manifest but its folder deleted by the user: fitted again
    (out / "a" / "result.json").unlink()
    (out / "a").rmdir()
    assert "a" in [p.id for p in P.plan(photos, out, state).run]


def test_out_dir_checks(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        P.prepare_out_dir(f)
    with pytest.raises(OutputError, match="goes through a file"):
        P.prepare_out_dir(f / "sub")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "mine.txt").write_text("keep")
    with pytest.raises(OutputError, match="holds no manifest.jsonl"):
        P.prepare_out_dir(busy)
    assert (busy / "mine.txt").read_text() == "keep"
    out, created = P.prepare_out_dir(tmp_path / "new" / "deeper")
    assert created == [tmp_path / "new", tmp_path / "new" / "deeper"] and out.is_dir()
    P.remove_if_unused(out, created)
    assert not (tmp_path / "new").exists()


def test_sweep_removes_only_dead_workers_scratch(tmp_path):
    live = P.Scratch(tmp_path)           # held by this process
    (live.path / "work").mkdir()
    dead = P.Scratch(tmp_path)
    os.close(dead._fd)                   # as if its worker was killed: the lock is free
    dead._fd = None
    foreign = tmp_path / P.SCRATCH / f"{P._host()}-someone-else"
    foreign.mkdir()                      # no marker: not the batch's
    assert P.sweep(tmp_path) == 1
    assert live.path.is_dir() and not dead.path.exists() and foreign.is_dir()
    fd = os.open(live.path / P.SCRATCH_MARKER, os.O_RDONLY)
    with pytest.raises(OSError):
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # still locked by its owner
    os.close(fd)
    live.close()
    assert not live.path.exists()


def test_batch_takes_the_fit_commands_options_and_defaults():
    from engine.cli import build_parser
    from engine.fit.session import FitOptions
    ap = build_parser()
    fit = ap.parse_args(["fit", "a.jpg", "-o", "o"])
    batch = ap.parse_args(["batch", "d", "-o", "o"])
    assert FitOptions.from_args(batch) == FitOptions.from_args(fit)  # same settings unless told
    for name in FitOptions.__dataclass_fields__:
        assert hasattr(fit, name), name  # every session option is a fit option
    b = ap.parse_args(["batch", "d", "-o", "o", "--preset", "fast", "--max-steps", "3", "--threads", "2",
                       "--workers", "2", "--shard", "1/3"])
    assert FitOptions.from_args(b).preset == "fast" and b.shard == (1, 3) and b.workers == 2


def test_fit_and_batch_build_the_same_fit_settings_from_their_options():
    """One place turns the options into the fit's settings: a batch's --detail, --neutral,
    --max-steps and --recognizer none reach every photo's fit as they reach `fit`'s (the batch
    once dropped --detail, so its fits had no detail layer)."""
    from engine.cli import build_parser
    from engine.fit.session import FitOptions
    ap = build_parser()
    extra = ["--preset", "fast", "--detail", "--neutral", "--max-steps", "3", "--recognizer", "none",
             "--seed", "4"]
    fit = FitOptions.from_args(ap.parse_args(["fit", "a.jpg", "-o", "o", *extra])).config()
    batch = FitOptions.from_args(ap.parse_args(["batch", "d", "-o", "o", *extra])).config()
    assert fit == batch
    assert batch.albedo.detail and not batch.fit_expression and not batch.identity and batch.seed == 4
    assert batch.fine_steps <= 3 and batch.preset == "fast"
    plain = FitOptions.from_args(ap.parse_args(["batch", "d", "-o", "o"])).config()
    assert not plain.albedo.detail and plain.identity and plain.fit_expression
