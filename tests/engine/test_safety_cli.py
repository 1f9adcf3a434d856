"""Bad input, faults and races against ``python -m engine fit`` (issue 11): each case asserts the
documented exit code, the message, and that nothing partial or foreign was touched (a snapshot of the
folder tree with file hashes before and after). test_fit_cli.py covers the plain bad photos."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from PIL import Image

from engine.protocol import decode

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("GANFIT_SHARED", REPO.parent / "shared"))
PHOTO = SHARED / "photos" / "codait_luciano.png"
needs_photo = pytest.mark.skipif(not PHOTO.is_file(), reason=f"shared photo missing: {PHOTO} (set GANFIT_SHARED)")
QUICK = ("--preset", "fast", "--max-steps", "1", "--texture-res", "256", "--recognizer", "none")
MARKER = ".ganfit-result"


# --------------------------------------------------------------------------------- helpers
def engine_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "engine", *args]


def _env(tmpdir: Path | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if tmpdir is not None:
        env["TMPDIR"] = str(tmpdir)  # to see what the engine leaves in the temp folder
    return env


def run_engine(*args: str, tmpdir: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(engine_cmd(*args), capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env=_env(tmpdir), stdin=subprocess.DEVNULL)


def messages(stdout: str) -> list[dict]:
    out = []
    for line in stdout.splitlines():
        msg = decode(line)  # every line must parse
        assert msg is not None and msg["v"] == 1
        out.append(msg)
    return out


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under root (not following links): folders, links and file hashes."""
    snap = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                snap[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                snap[rel] = "dir"
            elif p.is_file():
                snap[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                snap[rel] = "special"
    return snap


def fit(photo: Path, out: Path, *extra: str, tmpdir: Path | None = None) -> tuple[subprocess.CompletedProcess, list[dict]]:
    p = run_engine("fit", str(photo), "-o", str(out), "--json-progress", *QUICK, *extra, tmpdir=tmpdir)
    return p, messages(p.stdout)


def fit_with_action(args: list[str], when, action, env: dict, stdin=subprocess.DEVNULL,
                    timeout: float = 300) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """Run ``engine fit ARGS`` and call ``action(proc)`` on the first protocol message for which
    ``when(msg)`` is true (a signal, a file removed mid-fit); then wait for the end. stderr goes
    to an anonymous temporary file, so a chatty engine can never block on a full pipe."""
    with tempfile.TemporaryFile("w+", encoding="utf-8") as err:
        proc = subprocess.Popen(engine_cmd("fit", *args), stdout=subprocess.PIPE, stderr=err, stdin=stdin,
                                text=True, cwd=REPO, env=env)
        lines = []
        try:
            for line in proc.stdout:
                lines.append(line)
                m = decode(line)
                if m and when(m):
                    action(proc)
                    break
            rest, _ = proc.communicate(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
        err.seek(0)
        out = "".join(lines) + rest
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err.read()), messages(out)


def stage_is(name: str):
    return lambda m: m["type"] == "stage" and m["name"] == name


def assert_error(p, msgs, exit_code: int, code: str, *words: str) -> dict:
    assert p.returncode == exit_code, (p.returncode, p.stderr[-3000:])
    last = msgs[-1]
    assert last["type"] == "error" and last["code"] == code and last["exit_code"] == exit_code, last
    for w in words:
        assert w.lower() in last["msg"].lower(), (w, last["msg"])
    return last


def assert_before_fit(msgs) -> None:
    """An output error found before fitting: no stage ever started."""
    assert not [m for m in msgs if m["type"] in ("stage", "progress")], [m["type"] for m in msgs]


def assert_whole_result(out: Path) -> dict:
    r = json.loads((out / "result.json").read_text())
    for name in r["files"].values():
        assert (out / name).is_file(), name
    assert (out / MARKER).is_file()
    return r


@pytest.fixture(scope="module")
def result_folder(tmp_path_factory) -> Path:
    """One real result folder (fitted once per module); tests copy it."""
    if not PHOTO.is_file():
        pytest.skip(f"shared photo missing: {PHOTO}")
    out = tmp_path_factory.mktemp("base") / "result"
    p, msgs = fit(PHOTO, out)
    assert p.returncode == 0, p.stderr[-3000:]
    return out


def make_photo_dir(tmp_path: Path) -> tuple[Path, Path]:
    d = tmp_path / "photos"
    d.mkdir()
    photo = d / "me.png"
    shutil.copyfile(PHOTO, photo)
    (d / "notes.txt").write_text("my notes\n")
    return d, photo


# ---------------------------------------------------------------------- usage (exit 2)
@pytest.mark.parametrize("flags, words", [
    (("--threads", "-1"), ("--threads", "at least 1")),
    (("--threads", "0"), ("--threads", "at least 1")),
    (("--focal-35mm", "-50"), ("--focal-35mm", "between")),
    (("--focal-35mm", "0"), ("--focal-35mm", "between")),
    (("--focal-35mm", "nan"), ("--focal-35mm", "between")),
    (("--focal-35mm", "1e6"), ("--focal-35mm", "between")),
    (("--max-steps", "-1"), ("--max-steps", "at least 1")),
    (("--max-steps", "0"), ("--max-steps", "at least 1")),
    (("--face-index", "-1"), ("--face-index", "at least 0")),
    (("--seed", "-1"), ("--seed", "between 0 and 4294967295")),
    (("--seed", str(2 ** 32)), ("--seed", "between 0 and 4294967295")),
    (("--preview-every", "-5"), ("--preview-every", "at least 0")),
    (("--threads", "two"), ("--threads", "whole number")),
])
def test_bad_numbers_are_usage_errors(tmp_path, flags, words):
    photo = tmp_path / "photo.png"
    Image.new("RGB", (200, 200), (120, 120, 120)).save(photo)
    before = snapshot(tmp_path)
    p = run_engine("fit", str(photo), "-o", str(tmp_path / "out"), "--json-progress", *flags)
    msgs = messages(p.stdout)
    assert p.returncode == 2, p.stderr[-2000:]
    assert len(msgs) == 1  # one protocol error line and nothing else
    assert_error(p, msgs, 2, "usage", *words)
    assert "usage:" in p.stderr  # the human usage text still goes to stderr
    assert snapshot(tmp_path) == before


def test_argparse_errors_speak_the_protocol(tmp_path):
    p = run_engine("fit", "--json-progress", str(tmp_path / "x.png"))  # -o missing
    assert_error(p, messages(p.stdout), 2, "usage", "-o/--output")
    p = run_engine("fit", str(tmp_path / "x.png"), "-o", str(tmp_path / "o"), "--json-progress", "--bogus")
    assert_error(p, messages(p.stdout), 2, "usage", "--bogus")
    p = run_engine("fit", str(tmp_path / "x.png"), "-o", str(tmp_path / "o"), "--bogus")
    assert p.returncode == 2 and p.stdout == ""  # without --json-progress: no protocol line
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------- --overwrite (item 1, exit 6)
@needs_photo
def test_overwrite_refuses_the_folder_holding_the_photo(tmp_path):
    d, photo = make_photo_dir(tmp_path)
    before = snapshot(tmp_path)
    p, msgs = fit(photo, d, "--overwrite")
    assert_error(p, msgs, 6, "output", "photo", str(d))
    assert_before_fit(msgs)
    assert snapshot(tmp_path) == before


@needs_photo
def test_overwrite_refuses_an_ordinary_folder(tmp_path):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "notes.txt").write_text("keep me")
    (d / "sub").mkdir()
    (d / "sub" / "deep.bin").write_bytes(os.urandom(100))
    before = snapshot(tmp_path)
    p, msgs = fit(PHOTO, d, "--overwrite")
    assert_error(p, msgs, 6, "output", "marker")
    assert_before_fit(msgs)
    assert snapshot(tmp_path) == before


def test_overwrite_refuses_another_programs_result_json(tmp_path):
    d = tmp_path / "other"
    d.mkdir()
    (d / "result.json").write_text(json.dumps({"schema": 1, "engine": "other", "files": {"notes": "notes.txt"}}))
    (d / "notes.txt").write_text("not a face")
    before = snapshot(tmp_path)
    p, msgs = fit(tmp_path / "any.png", d, "--overwrite")
    assert_error(p, msgs, 6, "output", "marker")
    assert_before_fit(msgs)
    assert snapshot(tmp_path) == before


@needs_photo
def test_overwrite_replaces_a_result_from_before_the_marker(tmp_path, result_folder):
    """Results written before the marker existed (demo_out/, out/eval/) can still be refitted."""
    d = tmp_path / "old"
    shutil.copytree(result_folder, d)
    (d / MARKER).unlink()
    p, msgs = fit(PHOTO, d, "--overwrite", "--seed", "3")
    assert p.returncode == 0, p.stderr[-3000:]
    assert assert_whole_result(d)["seed"] == 3 and sorted(x.name for x in tmp_path.iterdir()) == ["old"]


@needs_photo
def test_overwrite_refuses_a_result_with_foreign_files(tmp_path, result_folder):
    d = tmp_path / "res"
    shutil.copytree(result_folder, d)
    (d / "my_render.blend").write_bytes(b"BLENDER-v500 precious")
    before = snapshot(tmp_path)
    p, msgs = fit(PHOTO, d, "--overwrite")
    assert_error(p, msgs, 6, "output", "my_render.blend")
    assert snapshot(tmp_path) == before


@needs_photo
def test_overwrite_refuses_a_result_holding_the_input(tmp_path, result_folder):
    d = tmp_path / "res"
    shutil.copytree(result_folder, d)
    before = snapshot(tmp_path)
    p, msgs = fit(d / "overlay.png", d, "--overwrite")  # re-fit a result's own overlay into it
    assert_error(p, msgs, 6, "output", "photo")
    assert snapshot(tmp_path) == before


@needs_photo
def test_overwrite_refuses_a_result_with_a_wrong_schema(tmp_path, result_folder):
    d = tmp_path / "res"
    shutil.copytree(result_folder, d)
    r = json.loads((d / "result.json").read_text())
    r["schema"] = 99
    (d / "result.json").write_text(json.dumps(r))
    before = snapshot(tmp_path)
    p, msgs = fit(PHOTO, d, "--overwrite")
    assert_error(p, msgs, 6, "output", "format")
    assert snapshot(tmp_path) == before


@needs_photo
def test_overwrite_replaces_an_engine_result_and_nothing_else(tmp_path, result_folder):
    d = tmp_path / "res"
    shutil.copytree(result_folder, d)
    (tmp_path / "beside.txt").write_text("neighbour")
    old = json.loads((d / "result.json").read_text())
    p, msgs = fit(PHOTO, d, "--overwrite", "--seed", "7")
    assert p.returncode == 0, p.stderr[-3000:]
    assert assert_whole_result(d)["seed"] == 7 and old["seed"] == 0
    assert sorted(x.name for x in tmp_path.iterdir()) == ["beside.txt", "res"]  # no .old-/.tmp- left
    assert (tmp_path / "beside.txt").read_text() == "neighbour"


@needs_photo
def test_empty_folder_is_used_as_the_output(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    p, msgs = fit(PHOTO, d)
    assert p.returncode == 0, p.stderr[-3000:]
    assert_whole_result(d)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["empty"]


@needs_photo
def test_output_is_the_photo_folder_without_overwrite(tmp_path):
    d, photo = make_photo_dir(tmp_path)
    before = snapshot(tmp_path)
    p, msgs = fit(photo, d)
    assert_error(p, msgs, 6, "output", "already exists")
    assert_before_fit(msgs)
    assert snapshot(tmp_path) == before


@needs_photo
def test_output_inside_the_photo_folder_with_a_long_name(tmp_path):
    """A new folder beside the photo (with --overwrite, which has nothing to replace), named with a
    250-byte name: the temporary sibling's name must still fit the file system."""
    d, photo = make_photo_dir(tmp_path)
    before = snapshot(tmp_path)
    out = d / ("r" * 250)
    p, msgs = fit(photo, out, "--overwrite")
    assert p.returncode == 0, p.stderr[-3000:]
    r = assert_whole_result(out)
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith(f"photos/{out.name}")} == before
    assert sorted(x.name for x in d.iterdir()) == sorted(["me.png", "notes.txt", out.name])
    # item 7b: the fit's warnings are in result.json and in the protocol result
    assert isinstance(r["warnings"], list) and msgs[-1]["warnings"] == r["warnings"]
    assert any("focal" in w for w in r["warnings"])  # a PNG has no EXIF focal length


# --------------------------------------------------------- paths found before fitting (item 3)
@needs_photo
def test_looping_symlink_output_fails_before_fitting(tmp_path):
    loop = tmp_path / "loop"
    os.symlink(loop, loop)
    before = snapshot(tmp_path)
    p, msgs = fit(PHOTO, loop)
    assert_error(p, msgs, 6, "output", "symbolic link")
    assert_before_fit(msgs)
    assert snapshot(tmp_path) == before


@needs_photo
def test_output_under_a_looping_symlink_fails_before_fitting(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    os.symlink(b, a)
    os.symlink(a, b)
    before = snapshot(tmp_path)
    p, msgs = fit(PHOTO, a / "out")
    assert_error(p, msgs, 6, "output", "loop")
    assert_before_fit(msgs)
    assert snapshot(tmp_path) == before


@needs_photo
def test_dangling_symlink_output_is_not_replaced(tmp_path):
    link = tmp_path / "link"
    os.symlink(tmp_path / "nowhere", link)
    before = snapshot(tmp_path)
    p, msgs = fit(PHOTO, link)
    assert_error(p, msgs, 6, "output", "symbolic link")
    assert_before_fit(msgs)
    assert snapshot(tmp_path) == before


@needs_photo
def test_output_that_is_a_file_with_overwrite(tmp_path):
    f = tmp_path / "out"
    f.write_text("a file, not a folder")
    before = snapshot(tmp_path)
    p, msgs = fit(PHOTO, f, "--overwrite")
    assert_error(p, msgs, 6, "output", "not a folder")
    assert snapshot(tmp_path) == before


@needs_photo
def test_a_file_deeper_in_the_path_is_named(tmp_path):
    (tmp_path / "plain").write_text("x")
    before = snapshot(tmp_path)
    p, msgs = fit(PHOTO, tmp_path / "plain" / "a" / "b")
    assert_error(p, msgs, 6, "output", "file where a folder should be", str(tmp_path / "plain"))
    assert snapshot(tmp_path) == before


def test_photo_that_is_a_pipe(tmp_path):
    fifo = tmp_path / "photo.png"
    os.mkfifo(fifo)
    p, msgs = fit(fifo, tmp_path / "out")
    assert_error(p, msgs, 3, "bad_input")
    assert sorted(x.name for x in tmp_path.iterdir()) == ["photo.png"]


# -------------------------------------------------- leftovers of a failed fit (item 6)
def test_failed_fit_removes_exactly_the_parents_it_created(tmp_path):
    grey = tmp_path / "grey.png"
    Image.new("RGB", (320, 240), (128, 128, 128)).save(grey)  # no face: fails after the parents exist
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "mine.txt").write_text("x")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    before = snapshot(tmp_path)
    p, msgs = fit(grey, tmp_path / "new" / "a" / "b" / "c", tmpdir=tmp)
    assert_error(p, msgs, 4, "no_face")
    assert snapshot(tmp_path) == before  # new/ stays (it was there), a/b/ are gone, no preview dirs


# ------------------------------------------------------------------ races (item 2)
@needs_photo
def test_two_fits_into_one_folder(tmp_path):
    out = tmp_path / "same"
    procs = [subprocess.Popen(engine_cmd("fit", str(PHOTO), "-o", str(out), "--json-progress", *QUICK,
                                         "--seed", str(seed)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                              text=True, cwd=REPO, env=_env())
             for seed in (1, 2)]
    results = [p.communicate(timeout=600) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 6], [r[1][-2000:] for r in results]
    winner = [i for i, p in enumerate(procs) if p.returncode == 0][0]
    loser = 1 - winner
    last = messages(results[loser][0])[-1]
    assert last["code"] == "output" and str(out) in last["msg"] and "appeared while this fit ran" in last["msg"]
    assert [m for m in messages(results[loser][0]) if m["type"] == "stage" and m["name"] == "write"]  # it fitted
    r = assert_whole_result(out)
    assert r["seed"] == (1, 2)[winner]  # the winner's result, untouched by the loser
    assert sorted(x.name for x in tmp_path.iterdir()) == ["same"]


# ------------------------------------------------------------------- faults (item 3)
def _mount_tmpfs(path: Path, size: str, *opts: str) -> bool:
    path.mkdir()
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("mount"):
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join((f"size={size}", *opts)), "tmpfs", str(path)],
                       capture_output=True)
    return r.returncode == 0


@pytest.fixture
def tiny_disk(tmp_path):
    mnt = tmp_path / "disk"
    if not _mount_tmpfs(mnt, "600k"):
        pytest.skip("cannot mount a tmpfs here (needs root and mount permission)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


@needs_photo
def test_disk_full_while_writing(tiny_disk, tmp_path):
    (tiny_disk / "mine.txt").write_text("keep")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    p, msgs = fit(PHOTO, tiny_disk / "out", tmpdir=tmp)
    last = assert_error(p, msgs, 6, "output", "no space left")
    assert [m for m in msgs if m["type"] == "stage" and m["name"] == "write"]
    kept = Path(last["log"])
    assert str(kept) in last["msg"] and kept.is_file() and "stage: write" in kept.read_text()
    left = {x.name for x in tiny_disk.iterdir()}
    assert left <= {"mine.txt", kept.name} and "mine.txt" in left  # no partial result, no temp folder
    assert (tiny_disk / "mine.txt").read_text() == "keep"
    assert list(tmp.iterdir()) == [] or [x.name for x in tmp.iterdir()] == [kept.name]


@needs_photo
def test_read_only_disk(tmp_path):
    mnt = tmp_path / "ro"
    if not _mount_tmpfs(mnt, "1m", "ro"):
        pytest.skip("cannot mount a tmpfs here (needs root and mount permission)")
    try:
        p, msgs = fit(PHOTO, mnt / "out")
        assert_error(p, msgs, 6, "output", "read-only")
        assert_before_fit(msgs)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@needs_photo
def test_sigterm_while_writing_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    p, msgs = fit_with_action([str(PHOTO), "-o", str(out), "--json-progress", *QUICK, "--report"],
                              stage_is("write"), lambda proc: proc.send_signal(signal.SIGTERM), _env(tmp),
                              stdin=subprocess.PIPE, timeout=60)
    if p.returncode == 0:  # the write finished before the signal landed: then it is whole
        assert_whole_result(out)
    else:
        assert p.returncode == 130 and msgs[-1]["code"] == "cancelled"
        assert not out.exists()
    assert sorted(x.name for x in tmp_path.iterdir()) == sorted(["tmp"] + (["out"] if out.exists() else []))
    assert list(tmp.iterdir()) == []  # no ganfit-preview-* left


@needs_photo
def test_mount_point_as_output_fails_before_fitting(tmp_path):
    mnt = tmp_path / "mnt"
    if not _mount_tmpfs(mnt, "1m"):
        pytest.skip("cannot mount a tmpfs here (needs root and mount permission)")
    try:
        p, msgs = fit(PHOTO, mnt)  # an empty folder, but it cannot be replaced by a rename
        assert_error(p, msgs, 6, "output", "mount point")
        assert_before_fit(msgs)
        assert list(mnt.iterdir()) == [] and sorted(x.name for x in tmp_path.iterdir()) == ["mnt"]
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@needs_photo
def test_path_too_long(tmp_path):
    out = tmp_path.joinpath(*(["d" * 200] * 25))  # > PATH_MAX
    p, msgs = fit(PHOTO, out)
    assert_error(p, msgs, 6, "output", "too long")
    assert_before_fit(msgs)
    assert list(tmp_path.iterdir()) == []


@needs_photo
def test_output_folder_removed_while_fitting(tmp_path):
    """A clean-up (or the user) deletes the folder the result is being written in mid-fit."""
    parent = tmp_path / "parent"
    parent.mkdir()
    p, msgs = fit_with_action([str(PHOTO), "-o", str(parent / "out"), "--json-progress", *QUICK],
                              stage_is("coarse"), lambda proc: shutil.rmtree(parent), _env())
    assert_error(p, msgs, 6, "output", "disappeared")
    assert list(tmp_path.iterdir()) == []  # nothing re-created


def test_engine_python_without_its_packages(tmp_path):
    """`python -S` has no site-packages: no numpy, no torch (an incomplete engine environment)."""
    photo = tmp_path / "me.png"
    Image.new("RGB", (200, 200)).save(photo)
    before = snapshot(tmp_path)
    p = subprocess.run([sys.executable, "-S", "-m", "engine", "fit", str(photo), "-o", str(tmp_path / "out"),
                        "--json-progress"], capture_output=True, text=True, timeout=120, cwd=REPO,
                       env=_env(), stdin=subprocess.DEVNULL)
    assert_error(p, messages(p.stdout), 5, "missing_model", "environment is incomplete", "numpy")
    assert snapshot(tmp_path) == before


@needs_photo
def test_two_overwriting_fits_onto_one_result(tmp_path, result_folder):
    out = tmp_path / "res"
    shutil.copytree(result_folder, out)
    procs = [subprocess.Popen(engine_cmd("fit", str(PHOTO), "-o", str(out), "--json-progress", *QUICK,
                                         "--overwrite", "--seed", str(seed)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                              text=True, cwd=REPO, env=_env())
             for seed in (1, 2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode in (0, 6) for p in procs) and 0 in [p.returncode for p in procs], \
        [o[1][-2000:] for o in outs]
    r = assert_whole_result(out)
    assert r["seed"] in [(1, 2)[i] for i, p in enumerate(procs) if p.returncode == 0]
    left = sorted(x.name for x in tmp_path.iterdir())
    for i, p in enumerate(procs):  # a loser says where the earlier result went, if it moved it
        if p.returncode == 6:
            last = messages(outs[i][0])[-1]
            assert last["code"] == "output"
            if ".old-" in last["msg"]:
                kept = [x for x in left if ".old-" in x]
                assert kept and kept[0] in last["msg"] and (tmp_path / kept[0] / "result.json").is_file()
    assert not [x for x in left if ".tmp-" in x]


@needs_photo
def test_small_face_warning_reaches_the_result(tmp_path):
    im = Image.open(PHOTO).convert("RGB")
    small = im.resize((int(im.width * 0.42), int(im.height * 0.42)), Image.LANCZOS)
    canvas = Image.new("RGB", (640, 480), (110, 110, 110))
    canvas.paste(small, (200, 150))
    photo = tmp_path / "small.png"
    canvas.save(photo)
    p, msgs = fit(photo, tmp_path / "out", "--focal-35mm", "50")
    if p.returncode == 4:
        pytest.skip("the detector finds no face in the scaled-down photo on this machine")
    assert p.returncode == 0, p.stderr[-3000:]
    r = assert_whole_result(tmp_path / "out")
    assert [w for w in r["warnings"] if "small" in w] and msgs[-1]["warnings"] == r["warnings"]
    assert not [w for w in r["warnings"] if "focal" in w]  # given on the command line


@needs_photo
def test_photo_that_disappears_after_it_was_read(tmp_path):
    photo = tmp_path / "me.png"
    shutil.copyfile(PHOTO, photo)
    # e.g. a camera app or sync client moves it away
    p, _ = fit_with_action([str(photo), "-o", str(tmp_path / "out"), "--json-progress", *QUICK],
                           stage_is("detect"), lambda proc: photo.unlink(), _env())
    assert p.returncode == 0, p.stderr[-3000:]  # it was read whole at the load stage
    r = assert_whole_result(tmp_path / "out")
    assert r["photo"] == str(photo) and sorted(x.name for x in tmp_path.iterdir()) == ["out"]


@needs_photo
def test_full_temp_folder_costs_the_previews_not_the_fit(tmp_path):
    tmp = tmp_path / "tmp"
    if not _mount_tmpfs(tmp, "12k"):
        pytest.skip("cannot mount a tmpfs here (needs root and mount permission)")
    try:
        out = tmp_path / "out"
        p = run_engine("fit", str(PHOTO), "-o", str(out), "--json-progress", "--preset", "fast", "--max-steps", "30",
                       "--texture-res", "256", "--recognizer", "none", tmpdir=tmp)
        assert p.returncode == 0, p.stderr[-3000:]
        assert_whole_result(out)
        assert "not written" in (out / "engine.log").read_text()
        assert list(tmp.iterdir()) == []
    finally:
        subprocess.run(["umount", "-l", str(tmp)], check=False)


@needs_photo
def test_overwrite_home_folder(tmp_path):
    """`-o ~ --overwrite`: the one typo that must never cost a home folder."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    (home / ".config").mkdir()
    before = snapshot(tmp_path)
    env = {**_env(), "HOME": str(home)}
    p = subprocess.run(engine_cmd("fit", str(PHOTO), "-o", "~", "--overwrite", "--json-progress", *QUICK),
                       capture_output=True, text=True, timeout=300, cwd=REPO, env=env, stdin=subprocess.DEVNULL)
    msgs = messages(p.stdout)
    assert_error(p, msgs, 6, "output", str(home), "marker")
    assert_before_fit(msgs)
    assert snapshot(tmp_path) == before


@needs_photo
def test_sighup_cancels_cleanly(tmp_path):
    """The terminal that started the engine closes mid-fit."""
    out = tmp_path / "out"
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    p, msgs = fit_with_action([str(PHOTO), "-o", str(out), "--json-progress", "--preset", "fast",
                               "--recognizer", "none"],
                              lambda m: m["type"] == "progress" and m["stage"] == "fine",
                              lambda proc: proc.send_signal(signal.SIGHUP), _env(tmp),
                              stdin=subprocess.PIPE, timeout=60)
    assert p.returncode == 130
    assert msgs[-1]["code"] == "cancelled"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["tmp"] and list(tmp.iterdir()) == []
