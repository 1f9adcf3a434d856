"""What a batch has to do: the photos of a folder, their result folders, the manifest, and the
workers' scratch folders (docs/batch.md).

The manifest (``OUT_DIR/manifest.jsonl``) gets one JSON line per finished attempt, appended under a
file lock and fsync'ed, so it stays whole when the batch is killed and when several batches
(``--shard``) share an output folder. A photo's state is its last line.
"""

from __future__ import annotations

import errno
import json
import math
import os
import platform
import shutil
import stat
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

try:
    import fcntl  # POSIX
except ImportError:  # Windows: no advisory locks; one batch per OUT_DIR, dead workers' folders stay
    fcntl = None

from ..contract import read_result_json
from ..errors import BadInputError, OutputError

PHOTO_EXT = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
MANIFEST = "manifest.jsonl"
SCRATCH = ".ganfit-batch-work"          # the workers' temporary folders live in here
SCRATCH_MARKER = ".ganfit-batch-scratch"  # in each worker folder: the batch made it
MAX_ATTEMPTS = 2                        # a failed photo is retried once by the next run
_RESERVED = {MANIFEST, SCRATCH}


@dataclass(frozen=True)
class Photo:
    id: str        # the result folder's name, unique in the batch
    name: str      # the file name in PHOTOS_DIR
    path: Path     # absolute


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/N"`` with 0 <= i < N, for argparse."""
    import argparse
    try:
        i_s, n_s = text.split("/")
        i, n = int(i_s, 10), int(n_s, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be i/N (e.g. 0/4: the first of 4 shards), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"must be i/N with N >= 1 and 0 <= i < N (shards count from 0), got {text!r}")
    return i, n


def in_shard(photo_id: str, shard: tuple[int, int] | None) -> bool:
    """Shards split by a hash of the id (not by position), so that adding photos to the folder
    never moves a photo to another shard."""
    if shard is None:
        return True
    i, n = shard
    return zlib.crc32(photo_id.encode("utf-8")) % n == i


def collect(photos_dir: str | Path) -> tuple[list[Photo], list[str]]:
    """The photos in ``photos_dir`` (not recursive; by extension, sorted by name) and the names of
    the files left out. Raises BadInputError when it is not a readable folder or holds no photo."""
    d = Path(photos_dir).expanduser().absolute()
    if not d.exists():
        raise BadInputError(f"The photo folder does not exist: {d}")
    if not d.is_dir():
        raise BadInputError(f"Not a folder: {d}. Give a folder of photos (use `fit` for one photo).")
    try:
        entries = sorted(os.listdir(d))
    except OSError as e:
        raise BadInputError(f"Cannot read the photo folder {d}: {e.strerror or e}") from e
    names, skipped = [], []
    for name in entries:
        p = d / name
        if name.startswith(".") or not p.is_file():
            continue
        (names if p.suffix.lower() in PHOTO_EXT else skipped).append(name)
    if not names:
        raise BadInputError(f"No photos in {d} (looked for {', '.join(sorted(PHOTO_EXT))}).")
    stems: dict[str, int] = {}
    for name in names:
        stems[Path(name).stem] = stems.get(Path(name).stem, 0) + 1
    photos, ids = [], set()
    for name in names:
        stem = Path(name).stem
        # a.jpg and a.png would share "a": both then use their full name (a.jpg -> a_jpg)
        pid = stem if stems[stem] == 1 else name.replace(".", "_")
        if pid in _RESERVED or pid.startswith(".") or pid in ids:
            pid = "photo-" + name.replace(".", "_")
        ids.add(pid)
        photos.append(Photo(pid, name, d / name))
    return photos, skipped


# ------------------------------------------------------------------------------ output folder
def prepare_out_dir(out: str | Path) -> tuple[Path, list[Path]]:
    """Check (and create) the batch's output folder. It may be new, empty, or a batch folder (one
    with a manifest.jsonl) to resume. Returns (the folder, the folders this call created)."""
    out = Path(out).expanduser().absolute()
    try:
        st = os.stat(out)
    except FileNotFoundError:
        st = None
    except OSError as e:
        if e.errno == errno.ENOTDIR:
            raise OutputError(f"The output path {out} goes through a file where a folder should be. Choose "
                              "another folder.") from e
        raise OutputError(f"Cannot use the output folder {out}: {e.strerror or e}") from e
    if st is not None and not stat.S_ISDIR(st.st_mode):
        raise OutputError(f"The output path exists and is not a folder: {out}. Give a folder (new, empty, or "
                          "an earlier batch's to resume it).")
    if st is not None:
        try:
            names = [n for n in os.listdir(out) if n != SCRATCH]
        except OSError as e:
            raise OutputError(f"Cannot read the output folder {out}: {e.strerror or e}") from e
        if names and MANIFEST not in names:
            raise OutputError(f"The output folder {out} is not empty and holds no {MANIFEST}, so it is not a "
                              "batch's folder. Choose a new or empty folder (or the folder of the batch to "
                              "resume).")
        if not os.access(out, os.W_OK | os.X_OK):
            raise OutputError(f"Cannot write to the output folder {out}. Choose a folder you can write to.")
        return out, []
    created: list[Path] = []
    for p in reversed([out, *[q for q in out.parents if not q.exists()]]):
        try:
            os.mkdir(p)
            created.append(p)
        except FileExistsError:
            if not p.is_dir():
                _remove_created(created)
                raise OutputError(f"The output path {out} goes through a file ({p}). Choose another folder.") from None
        except OSError as e:
            _remove_created(created)
            if e.errno == errno.ENOTDIR:
                raise OutputError(f"The output path {out} goes through a file where a folder should be. Choose "
                                  "another folder.") from e
            raise OutputError(f"Cannot create the output folder {out}: {e.strerror or e}. Choose a folder you "
                              "can write to.") from e
    return out, created


def _remove_created(created: list[Path]) -> None:
    for p in reversed(created):
        try:
            os.rmdir(p)
        except OSError:
            return


def remove_if_unused(out: Path, created: list[Path]) -> None:
    """After a run that wrote nothing (setup failed, nothing to do): remove the folders it made."""
    if created and not any(n != SCRATCH for n in os.listdir(out)):
        try:
            os.rmdir(out / SCRATCH)
        except OSError:
            pass
        _remove_created(created)


# ------------------------------------------------------------------------------- the manifest
def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


class Manifest:
    """``OUT_DIR/manifest.jsonl``: appended one whole line at a time, under an exclusive lock."""

    def __init__(self, out: Path):
        self.path = out / MANIFEST

    def read(self) -> dict[str, dict]:
        """id -> {"last": its last line, "attempts": failed attempts since its last success}. A
        partial last line (a crash mid-write) is ignored; so are lines that are not JSON."""
        state: dict[str, dict] = {}
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return state
        for line in raw.split(b"\n"):
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if not isinstance(rec, dict) or not isinstance(rec.get("id"), str):
                continue
            s = state.setdefault(rec["id"], {"last": rec, "attempts": 0})
            s["last"] = rec
            s["attempts"] = 0 if rec.get("status") == "ok" else s["attempts"] + 1
        return state

    def append(self, rec: dict) -> None:
        line = (json.dumps(_clean(rec), ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            # a partial line left by a killed writer: start ours on a line of its own
            size = os.fstat(fd).st_size
            if size:
                with open(self.path, "rb") as fh:
                    fh.seek(size - 1)
                    if fh.read(1) != b"\n":
                        line = b"\n" + line
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)  # releases the lock


def record(photo: Photo, result: dict, attempt: int, preset: str, worker: str, engine: str) -> dict:
    """One manifest line (docs/batch.md, "The manifest")."""
    ok = result["status"] == "ok"
    rec = {"id": photo.id, "photo": photo.name, "path": str(photo.path), "status": result["status"],
           "exit_code": result["exit_code"], "code": result.get("code"), "error": result.get("error"),
           "result": photo.id if ok else None, "metrics": result.get("metrics"),
           "seconds": result.get("seconds"), "warnings": result.get("warnings") or [],
           "attempt": attempt, "preset": preset, "worker": worker, "engine": engine,
           "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if result.get("detail"):
        rec["detail"] = result["detail"][-4000:]
    return rec


def result_is_for(folder: Path, photo: Photo) -> bool:
    """True when ``folder`` is a finished result of this engine for ``photo``."""
    meta = read_result_json(folder)
    return meta is not None and meta.get("photo") == str(photo.path)


@dataclass
class Todo:
    run: list[Photo]          # to fit now, in order
    done: int                 # finished earlier (skipped)
    given_up: list[Photo]     # failed MAX_ATTEMPTS times (skipped; --retry-failed redoes them)
    recovered: list[Photo]    # result folder there but not in the manifest (killed after the move)
    attempts: dict[str, int]  # id -> this run's attempt number


def plan(photos: list[Photo], out: Path, state: dict[str, dict], retry_failed: bool = False) -> Todo:
    todo = Todo([], 0, [], [], {})
    for p in photos:
        s = state.get(p.id)
        folder = out / p.id
        if s is not None and s["last"].get("status") == "ok" and result_is_for(folder, p):
            todo.done += 1
            continue
        if result_is_for(folder, p):  # finished, but the batch was stopped before its line
            todo.recovered.append(p)
            continue
        failed = 0 if s is None or s["last"].get("status") == "ok" else s["attempts"]
        if failed >= MAX_ATTEMPTS and not retry_failed:
            todo.given_up.append(p)
            continue
        todo.attempts[p.id] = failed + 1
        todo.run.append(p)
    return todo


# ----------------------------------------------------------------------------- scratch folders
class Scratch:
    """One worker's temporary folder, ``OUT_DIR/.ganfit-batch-work/<host>-<pid>-XXXX``, locked
    while the worker lives. A folder whose lock is free belongs to a worker that died (killed);
    ``sweep`` removes those - only folders the batch made (they hold its marker file)."""

    def __init__(self, out: Path):
        root = out / SCRATCH
        for tries in range(3):  # another batch's driver may remove the empty root meanwhile
            root.mkdir(exist_ok=True)
            try:
                self.path = Path(tempfile.mkdtemp(prefix=f"{_host()}-{os.getpid()}-", dir=root))
                break
            except FileNotFoundError:
                if tries == 2:
                    raise
        (self.path / SCRATCH_MARKER).write_text("made by python -m engine batch\n", encoding="utf-8")
        self._fd = os.open(self.path / SCRATCH_MARKER, os.O_RDONLY)
        if fcntl is not None:
            fcntl.flock(self._fd, fcntl.LOCK_EX)

    def close(self) -> None:
        if self._fd is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            os.close(self._fd)
            self._fd = None  # the driver removes the shared folder when it is empty (sweep)


def _host() -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in platform.node())[:40] or "host"


def sweep(out: Path) -> int:
    """Remove the scratch folders of dead workers of this host. Returns how many."""
    root = out / SCRATCH
    if not root.is_dir() or fcntl is None:
        return 0
    n = 0
    for d in root.iterdir():
        marker = d / SCRATCH_MARKER
        if not d.name.startswith(_host() + "-") or d.is_symlink() or not marker.is_file():
            continue
        try:
            fd = os.open(marker, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # a live worker holds it
        try:
            shutil.rmtree(d, ignore_errors=True)
            n += 1
        finally:
            os.close(fd)
    try:
        root.rmdir()
    except OSError:
        pass
    return n
