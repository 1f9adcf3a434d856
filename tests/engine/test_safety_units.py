"""The output-folder rules of engine/io/output.py and run_cli's failure paths, in process and fast:
races forced between the check and the rename, ENOSPC injected into the writer, the kept log."""

from __future__ import annotations

import errno
import io
import json
import os
from pathlib import Path

import pytest

import engine.fit.run as run_mod
from engine.cli import build_parser
from engine.errors import OutputError
from engine.io import output
from engine.protocol import decode


def fake_result(folder: Path, extra: dict | None = None) -> Path:
    """A folder as the engine writes it (marker, result.json, the listed files)."""
    folder.mkdir(parents=True)
    files = {"obj": "face.obj", "albedo": "albedo.png", "log": "engine.log"}
    for name in files.values():
        (folder / name).write_bytes(b"data " + name.encode())
    (folder / "result.json").write_text(json.dumps({"schema": output.RESULT_SCHEMA, "files": files,
                                                    **(extra or {})}))
    output.write_marker(folder, "test")
    return folder


def new_work(parent: Path, tag: str = "new") -> Path:
    work = parent / f".work-{tag}"
    work.mkdir()
    (work / "result.json").write_text(json.dumps({"schema": output.RESULT_SCHEMA, "files": {}, "tag": tag}))
    return work


@pytest.fixture(params=["renameat2", "fallback"])
def rename_impl(request, monkeypatch):
    """Every placement test runs with renameat2(RENAME_NOREPLACE) and with the portable fallback."""
    if request.param == "fallback":
        monkeypatch.setattr(output, "_renameat2", None)
    elif output._renameat2 is None:
        pytest.skip("no renameat2 on this platform")
    return request.param


# --------------------------------------------------------------------- rename_noreplace
def test_rename_noreplace_never_replaces(tmp_path, rename_impl):
    src = new_work(tmp_path)
    for target in ("empty_dir", "full_dir", "file"):
        dst = tmp_path / target
        if target == "empty_dir":
            dst.mkdir()
        elif target == "full_dir":
            dst.mkdir()
            (dst / "x").write_text("x")
        else:
            dst.write_text("file")
        with pytest.raises(FileExistsError):
            output.rename_noreplace(src, dst)
        assert src.is_dir() and dst.exists()
    assert (tmp_path / "full_dir" / "x").read_text() == "x" and (tmp_path / "file").read_text() == "file"
    output.rename_noreplace(src, tmp_path / "fresh")
    assert json.loads((tmp_path / "fresh" / "result.json").read_text())["tag"] == "new" and not src.exists()


def test_plain_os_replace_would_clobber_an_empty_folder(tmp_path):
    """Why place() does not use os.replace: on POSIX it silently replaces an empty folder."""
    src, dst = new_work(tmp_path), tmp_path / "dst"
    dst.mkdir()
    os.replace(src, dst)
    assert (dst / "result.json").is_file()


# ----------------------------------------------------- place(): the target appears meanwhile
def test_target_that_appears_after_the_check_wins(tmp_path, rename_impl):
    out = tmp_path / "out"
    output.check_output(out, None, overwrite=False)  # the check at the start: nothing there
    fake_result(out, {"tag": "other fit"})  # another fit finished first
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    work = new_work(tmp_path)
    with pytest.raises(OutputError, match="appeared while this fit ran"):
        output.place(work, out, overwrite=False, photo=None, engine_version="test")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert work.is_dir()  # left for the caller to remove


def test_foreign_folder_that_appears_is_not_overwritten(tmp_path, rename_impl):
    out = tmp_path / "out"
    output.check_output(out, None, overwrite=True)
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="marker"):
        output.place(new_work(tmp_path), out, overwrite=True, photo=None, engine_version="test")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_empty_folder_that_appears_is_used(tmp_path, rename_impl):
    out = tmp_path / "out"
    output.check_output(out, None, overwrite=False)
    out.mkdir()
    output.place(new_work(tmp_path), out, overwrite=False, photo=None, engine_version="test")
    assert (out / output.MARKER).is_file() and (out / "result.json").is_file()


def test_overwrite_replaces_an_engine_result(tmp_path, rename_impl):
    out = fake_result(tmp_path / "out", {"tag": "old"})
    output.check_output(out, None, overwrite=True)
    output.place(new_work(tmp_path), out, overwrite=True, photo=None, engine_version="test")
    assert json.loads((out / "result.json").read_text())["tag"] == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the old one is gone, nothing aside


def test_result_that_gains_a_foreign_file_while_moved_aside_is_restored(tmp_path, rename_impl, monkeypatch):
    out = fake_result(tmp_path / "out")
    real = output.result_folder_problem
    calls = []

    def sneaky(folder, photo=None):
        calls.append(folder)
        if len(calls) == 2:  # after the first check, before the second: a user saves a file there
            (folder / "mine.blend").write_text("precious")
        return real(folder, photo)

    monkeypatch.setattr(output, "result_folder_problem", sneaky)
    with pytest.raises(OutputError, match="changed while being replaced"):
        output.place(new_work(tmp_path), out, overwrite=True, photo=None, engine_version="test")
    assert (out / "mine.blend").read_text() == "precious" and (out / "face.obj").is_file()


def test_remove_result_folder_keeps_what_it_does_not_know(tmp_path):
    old = fake_result(tmp_path / "old")
    (old / "late.txt").write_text("appeared")
    output.remove_result_folder(old)
    assert [p.name for p in old.iterdir()] == ["late.txt"]


# -------------------------------------------------------------------- check_output rules
def test_check_output_rules(tmp_path):
    photo = tmp_path / "in" / "me.png"
    photo.parent.mkdir()
    photo.write_bytes(b"png")
    res = fake_result(tmp_path / "res")
    output.check_output(res, photo, overwrite=True)  # ok
    with pytest.raises(OutputError, match="pass --overwrite"):
        output.check_output(res, photo, overwrite=False)
    with pytest.raises(OutputError, match="holds the photo"):
        output.check_output(photo.parent, photo, overwrite=True)
    with pytest.raises(OutputError, match="holds the photo"):
        output.check_output(res, res / "albedo.png", overwrite=True)
    link = tmp_path / "link"
    os.symlink(res, link)
    with pytest.raises(OutputError, match="symbolic link"):
        output.check_output(link, photo, overwrite=True)
    (res / "sub").mkdir()
    with pytest.raises(OutputError, match="did not write"):
        output.check_output(res, photo, overwrite=True)
    with pytest.raises(OutputError, match="must name a folder"):
        output.output_path("")
    with pytest.raises(OutputError, match="must name a folder"):
        output.output_path(str(tmp_path / ".."))


def test_results_schema_is_the_one_checked():
    from engine.fit.results import SCHEMA
    assert SCHEMA == output.RESULT_SCHEMA


def test_prepare_records_only_the_parents_it_made(tmp_path):
    (tmp_path / "a").mkdir()
    out = tmp_path / "a" / "b" / "c" / "out"
    work, created = output.prepare(out)
    assert created == [tmp_path / "a" / "b", tmp_path / "a" / "b" / "c"] and work.parent == out.parent
    os.rmdir(work)
    output.remove_created(created)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"] and list((tmp_path / "a").iterdir()) == []


def test_long_names_get_a_temporary_sibling_that_fits(tmp_path):
    out = tmp_path / ("é" * 127)  # 254 bytes in UTF-8
    work, _ = output.prepare(out)
    assert work.name.startswith(".é") and len(os.fsencode(work.name)) <= 255


# ------------------------------------------------- run_cli failure paths (fake fit, no torch)
class _Stream(io.StringIO):
    pass


def _run(tmp_path, monkeypatch, fake_fit, *extra):
    photo = tmp_path / "me.png"
    photo.write_bytes(b"not read by the fake fit")
    args = build_parser().parse_args(["fit", str(photo), "-o", str(tmp_path / "new" / "out"), "--json-progress",
                                      *extra])
    stream = _Stream()
    monkeypatch.setattr(run_mod, "_protocol_stream", lambda: stream)
    monkeypatch.setattr(run_mod, "_fit", fake_fit)
    monkeypatch.setattr(run_mod.tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    code = run_mod.run_cli(args)
    msgs = [decode(line) for line in stream.getvalue().splitlines()]
    return code, msgs


def test_disk_full_is_an_output_error_and_the_log_is_kept(tmp_path, monkeypatch):
    def fit_until_full(run, args, out, work, preview_dir):
        run_mod.log.info("stage: write")
        (work / "face.obj").write_text("v 0 0 0\n" * 100)
        raise OSError(errno.ENOSPC, "No space left on device", str(work / "albedo.png"))

    code, msgs = _run(tmp_path, monkeypatch, fit_until_full)
    assert code == 6
    last = msgs[-1]
    assert last["type"] == "error" and last["code"] == "output" and "No space left" in last["msg"]
    kept = Path(last["log"])
    assert str(kept) in last["msg"] and "stage: write" in kept.read_text()
    assert "ENOSPC" in kept.read_text() or "No space left" in kept.read_text()
    # nothing partial: no output, no temp folder; the new/ parent was created by this run and
    # holds the kept log, so it stays
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == [kept.name]
    assert list((tmp_path / "tmp").iterdir()) == []  # no ganfit-preview-* left


def test_internal_error_names_a_log_that_exists(tmp_path, monkeypatch):
    def buggy(run, args, out, work, preview_dir):
        run_mod.log.info("about to fail")
        raise ZeroDivisionError("a bug")

    code, msgs = _run(tmp_path, monkeypatch, buggy)
    assert code == 1 and msgs[-1]["code"] == "internal"
    kept = Path(msgs[-1]["log"])
    assert str(kept) in msgs[-1]["msg"] and "ZeroDivisionError" in kept.read_text()


def test_bad_input_keeps_no_log_and_removes_the_parents_it_made(tmp_path, monkeypatch):
    from engine.errors import NoFaceError

    def no_face(run, args, out, work, preview_dir):
        raise NoFaceError("No face found.")

    code, msgs = _run(tmp_path, monkeypatch, no_face)
    assert code == 4 and msgs[-1]["log"] is None
    assert not (tmp_path / "new").exists() and list((tmp_path / "tmp").iterdir()) == []


def test_disk_full_message_from_the_classifier():
    e = output.os_error_to_output_error(OSError(errno.ENOSPC, "No space left on device", "/x/y"), Path("/x/out"))
    assert e is not None and e.exit_code == 6 and "No space left" in e.message and "/x" in e.message
    assert output.os_error_to_output_error(OSError(errno.EROFS, "ro"), Path("/x/out")).exit_code == 6
    assert output.os_error_to_output_error(OSError(errno.ECONNRESET, "reset"), Path("/x/out")) is None


def test_network_share_io_error_is_an_output_error(tmp_path, monkeypatch):
    def fit_io_error(run, args, out, work, preview_dir):
        raise OSError(errno.EIO, "Input/output error", str(work / "blendshapes.npz"))

    code, msgs = _run(tmp_path, monkeypatch, fit_io_error)
    assert code == 6 and msgs[-1]["code"] == "output" and "EIO" in msgs[-1]["msg"]
    assert Path(msgs[-1]["log"]).is_file()


def test_a_hard_link_of_the_photo_inside_a_result_blocks_overwrite(tmp_path):
    res = fake_result(tmp_path / "res")
    photo = tmp_path / "me.png"
    os.link(res / "albedo.png", photo)  # the same file under two names
    with pytest.raises(OutputError, match="holds the photo"):
        output.check_output(res, photo, overwrite=True)


def test_legacy_result_is_recognised_only_in_its_exact_layout(tmp_path):
    res = fake_result(tmp_path / "res")
    (res / output.MARKER).unlink()
    r = json.loads((res / "result.json").read_text())
    r["engine"] = "0.1.0"
    (res / "result.json").write_text(json.dumps(r))
    assert output.result_folder_problem(res) is None  # face.obj, albedo.png, engine.log: the old names
    r["files"]["albedo"] = "mine.png"
    (res / "albedo.png").rename(res / "mine.png")
    (res / "result.json").write_text(json.dumps(r))
    assert "marker" in output.result_folder_problem(res)


def test_file_system_without_noreplace_falls_back_safely(tmp_path, monkeypatch):
    """NFS, some FUSE and SMB mounts answer renameat2(RENAME_NOREPLACE) with EINVAL."""
    import ctypes

    calls = []

    def einval(*a):
        calls.append(a)
        ctypes.set_errno(errno.EINVAL)
        return -1

    monkeypatch.setattr(output, "_renameat2", einval)
    src = new_work(tmp_path)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    with pytest.raises(FileExistsError):
        output.rename_noreplace(src, tmp_path / "taken")
    output.rename_noreplace(src, tmp_path / "free")
    assert calls and (tmp_path / "free" / "result.json").is_file() and (tmp_path / "taken" / "x").is_file()


def test_a_symlink_to_the_photo_inside_a_result_blocks_overwrite(tmp_path):
    res = fake_result(tmp_path / "res")
    link = tmp_path / "me.png"
    os.symlink(res / "albedo.png", link)
    with pytest.raises(OutputError, match="holds the photo"):
        output.check_output(res, link, overwrite=True)
