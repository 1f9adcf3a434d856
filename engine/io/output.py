"""The result folder on disk: where a fit may write, how it gets into place, and what is kept when it
fails. Standard library only, so that every check here runs before torch is imported.

The rules (docs/result-format.md, "What the engine will never do"):

- A fit writes into a new temporary sibling ``.<name>.tmp-<random>`` and renames it into place at the
  end with a rename that cannot replace anything (``renameat2(RENAME_NOREPLACE)``, with a fallback
  that is just as safe where that call is missing).
- The output may be a new path or an empty folder. An existing non-empty folder is replaced only with
  ``--overwrite`` and only when it is a result folder this engine wrote: it holds the marker file
  ``.ganfit-result`` and a ``result.json`` of this schema, nothing but the files that result lists, and
  not the photo being fitted. It is checked before the fit and again just before it is replaced.
- A symbolic link as the output, a loop of symbolic links, or a file where a folder should be is an
  output error found before the fit starts.
- On failure the temporary folder and the empty parent folders this run created are removed; for an
  internal or output error the engine log is kept next to the output (``<name>.failed.log``).
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path

from ..contract import RESULT_SCHEMA
from ..errors import BadInputError, OutputError

MARKER = ".ganfit-result"
# Files every result folder may hold besides those its result.json lists under "files".
_ALWAYS = ("result.json", MARKER, "engine.log")
# The files of a result written before the marker existed (engine 0.1.0 before issue 11): such a
# folder is recognised only when it holds exactly this layout.
_LEGACY_FILES = {"obj": "face.obj", "mtl": "face.mtl", "albedo": "albedo.png", "blendshapes": "blendshapes.npz",
                 "render": "render.png", "overlay": "overlay.png", "params": "params.npz", "log": "engine.log",
                 "report": "report.png"}
log = logging.getLogger("engine")
_NAME_MAX = 255  # bytes in one path component on every file system the engine supports


# ------------------------------------------------------------------------------------ paths
def output_path(arg: str) -> Path:
    """The absolute output path as given (symbolic links are not followed; see check_output)."""
    out = Path(os.path.expanduser(arg)).absolute()
    if out.name in ("", ".", "..") or not arg.strip():
        raise OutputError(f"The output must name a folder, got {arg!r}. Give a new folder, e.g. "
                          "-o results/me.")
    return out


def _describe_path_error(e: OSError, path: Path) -> OutputError:
    if e.errno == errno.ELOOP:
        return OutputError(f"The output path {path} runs into a loop of symbolic links. Fix or remove "
                           "the link, or choose another folder.")
    if e.errno == errno.ENOTDIR:
        blocker = _first_file_ancestor(path)
        where = f" ({blocker} is a file)" if blocker else ""
        return OutputError(f"The output path {path} goes through a file where a folder should be{where}. "
                           "Choose another folder.")
    if e.errno == errno.ENAMETOOLONG:
        return OutputError(f"The output path is too long for the file system: {path}. Choose a shorter "
                           "name.")
    return OutputError(f"Cannot use the output folder {path}: {e.strerror or e}. Choose a folder you can "
                       "write to.")


def _first_file_ancestor(path: Path) -> Path | None:
    for p in reversed(path.parents):
        try:
            if not stat.S_ISDIR(os.stat(p).st_mode):
                return p
        except OSError:
            return None
    return None


def _same_file(st: os.stat_result, path: Path) -> bool:
    try:
        other = os.stat(path)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (other.st_dev, other.st_ino)


def _inside(child: Path, folder: Path) -> bool:
    try:
        Path(os.path.realpath(child)).relative_to(os.path.realpath(folder))
        return True
    except ValueError:
        return False


# ---------------------------------------------------------------------- result folder test
def result_folder_problem(folder: Path, photo: Path | None = None) -> str | None:
    """Why ``folder`` may not be replaced by a new result, or None when it may: it must be a real
    folder holding the marker, a result.json of this schema and only the files that result lists,
    and not the photo being fitted."""
    if photo is not None and _inside(photo, folder):
        return "it holds the photo you are fitting"
    try:
        st = os.lstat(folder)
        if not stat.S_ISDIR(st.st_mode):
            return "it is not a folder"
        names = os.listdir(folder)
    except OSError as e:
        return f"it cannot be read ({e.strerror or e})"
    no_marker = f"it has no {MARKER} marker, so it is not a result folder this engine wrote"
    try:
        meta = json.loads((folder / "result.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return no_marker if MARKER not in names else "its result.json is missing or unreadable"
    if not isinstance(meta, dict) or meta.get("schema") != RESULT_SCHEMA or not isinstance(meta.get("files"), dict):
        return no_marker if MARKER not in names else "its result.json is not a result of this engine's format"
    if MARKER not in names and not (isinstance(meta.get("engine"), str) and meta["files"]
                                    and all(_LEGACY_FILES.get(k) == v for k, v in meta["files"].items())):
        return no_marker  # not even a result of an engine from before the marker
    allowed = set(_ALWAYS) | {str(v) for v in meta["files"].values()}
    foreign = []
    for name in sorted(names):
        try:
            st = os.lstat(folder / name)
        except OSError:
            return "its files changed while it was checked"
        if name not in allowed or not stat.S_ISREG(st.st_mode):
            foreign.append(name)
        elif photo is not None and _same_file(st, photo):
            return f"it holds the photo you are fitting (as {name})"
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        return f"it holds files the engine did not write ({shown})"
    return None


# ----------------------------------------------------------------------------- before the fit
def check_output(out: Path, photo: Path | None, overwrite: bool) -> None:
    """Everything about the output that can be known before fitting. Raises OutputError; writes
    nothing."""
    try:
        st = os.lstat(out)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise _describe_path_error(e, out) from e
    if st is None:
        _check_parents(out)
        return
    if stat.S_ISLNK(st.st_mode):
        try:
            os.stat(out)
            what = f"a symbolic link (to {os.readlink(out)})"
        except OSError as e:
            what = "a loop of symbolic links" if e.errno == errno.ELOOP else "a broken symbolic link"
        raise OutputError(f"The output path {out} is {what}. Give a real folder path; the engine does "
                          "not write through or replace links.")
    if not stat.S_ISDIR(st.st_mode):
        raise OutputError(f"The output path exists and is not a folder: {out}. Choose another folder.")
    try:
        empty = not os.listdir(out)
    except OSError as e:
        raise _describe_path_error(e, out) from e
    if os.path.ismount(out):
        raise OutputError(f"The output folder {out} is a mount point, which cannot be replaced. Choose "
                          "a new folder inside it, e.g. -o " + str(out / "result") + ".")
    if empty:
        return  # an empty folder is used as the output: the result replaces it
    problem = result_folder_problem(out, photo)
    if not overwrite:
        hint = ("pass --overwrite to replace it" if problem is None else
                f"--overwrite would not replace it either: {problem}")
        raise OutputError(f"The output folder already exists: {out}. Choose another folder, or {hint}.")
    if problem is not None:
        raise OutputError(f"Will not overwrite {out}: {problem}. --overwrite only replaces a result "
                          "folder this engine wrote; choose a new or empty folder.")


def _check_parents(out: Path) -> None:
    for p in out.parents:
        try:
            st = os.stat(p)
        except FileNotFoundError:
            if os.path.islink(p):
                raise OutputError(f"The output path {out} goes through a broken symbolic link ({p}). "
                                  "Fix the link or choose another folder.") from None
            continue
        except OSError as e:
            raise _describe_path_error(e, out) from e
        if not stat.S_ISDIR(st.st_mode):
            raise OutputError(f"The output path {out} goes through a file where a folder should be ({p} "
                              "is a file). Choose another folder.")
        return


def check_photo(photo: Path) -> None:
    """The photo must be a regular file (not a pipe, device or socket); the reader says the rest."""
    try:
        st = os.stat(photo)
    except OSError:
        return  # missing or unreadable: load_photo's message names it
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise BadInputError(f"The photo is not a regular file (a pipe, device or socket): '{photo}'. Give "
                            "an image file.")


# ------------------------------------------------------------------------------ the fit's folder
def _short(name: str, room: int) -> str:
    """``name`` cut so that it takes at most ``room`` bytes in UTF-8."""
    b = name.encode("utf-8")
    if len(b) <= room:
        return name
    return b[:room].decode("utf-8", errors="ignore")


def make_folders(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents. Returns the folders this call created, top first,
    so that a failure later can remove exactly those (``remove_created``); on an OSError here the
    ones it made are removed before it is raised."""
    missing = []
    for p in (folder, *folder.parents):
        if os.path.isdir(p):
            break
        missing.append(p)
    created: list[Path] = []
    try:
        for p in reversed(missing):
            try:
                os.mkdir(p)
                created.append(p)
            except FileExistsError:
                if not os.path.isdir(p):
                    raise
    except OSError:
        remove_created(created)
        raise
    return created


def prepare(out: Path) -> tuple[Path, list[Path]]:
    """Create the missing parents and the temporary folder. Returns (work, the parents this call
    created, top first), so that a failure can remove exactly those."""
    created: list[Path] = []
    try:
        created = make_folders(out.parent)
        prefix = "." + _short(out.name, _NAME_MAX - 20) + ".tmp-"
        work = Path(tempfile.mkdtemp(prefix=prefix, dir=out.parent))
    except OSError as e:
        remove_created(created)
        raise OutputError(f"Cannot write the result folder {out}: {e.strerror or e}. Choose a folder you "
                          "can write to.") from e
    return work, created


def remove_created(created: list[Path]) -> None:
    """Remove the parent folders a failed run created, deepest first, while they are empty."""
    for p in reversed(created):
        try:
            os.rmdir(p)
        except OSError:
            return


def write_marker(work: Path, engine_version: str) -> None:
    (work / MARKER).write_text(json.dumps({"ganfit_result": True, "schema": RESULT_SCHEMA,
                                           "engine": engine_version}) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------- no-clobber rename
_RENAME_NOREPLACE = 1
_AT_FDCWD = -100


def _load_renameat2():
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    fn.restype = ctypes.c_int
    return fn


_renameat2 = _load_renameat2()


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``; fail with FileExistsError if ``dst`` exists (even as an empty
    folder) or appears meanwhile. Never replaces anything."""
    if _renameat2 is not None:
        r = _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE)
        if r == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            if err == errno.EEXIST or err == errno.ENOTEMPTY:
                raise FileExistsError(err, os.strerror(err), str(dst))
            raise OSError(err, os.strerror(err), str(dst))
        # this file system has no RENAME_NOREPLACE: fall through
    _rename_noreplace_fallback(src, dst)


def _rename_noreplace_fallback(src: Path, dst: Path) -> None:
    if os.name == "nt":
        os.rename(src, dst)  # Windows' rename never replaces an existing target
        return
    if os.path.isdir(src):
        # Claim the name with mkdir (atomic: fails if anything is there), then rename onto the
        # empty folder we made. If another process fills it first, rename fails with ENOTEMPTY.
        os.mkdir(dst)
        try:
            os.rename(src, dst)
        except OSError as e:
            try:
                os.rmdir(dst)  # only ours while it is empty
            except OSError:
                pass
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise FileExistsError(e.errno, e.strerror, str(dst)) from e
            raise
    else:
        os.link(src, dst)  # fails if dst exists
        os.unlink(src)


# ----------------------------------------------------------------------------------- into place
def place(work: Path, out: Path, *, overwrite: bool, photo: Path | None, engine_version: str) -> None:
    """Move the finished result ``work`` to ``out`` without ever replacing anything but an empty
    folder or (with ``overwrite``) an engine result folder. Raises OutputError; ``work`` stays where
    it is then (the caller removes it)."""
    write_marker(work, engine_version)
    try:
        rename_noreplace(work, out)
        return
    except FileExistsError:
        pass
    except OSError as e:
        raise OutputError(f"Cannot move the result into {out}: {e.strerror or e}.") from e
    # Something is at ``out`` now.
    try:
        st = os.lstat(out)
        empty = stat.S_ISDIR(st.st_mode) and not os.listdir(out)
    except OSError:
        st, empty = None, False
    if empty:
        try:
            if os.name == "nt":  # Windows' rename never replaces: remove the empty folder first
                os.rmdir(out)
                rename_noreplace(work, out)
            else:
                os.rename(work, out)  # POSIX replaces only an empty folder; fails if it filled meanwhile
            return
        except OSError:
            pass
    if not overwrite:
        raise OutputError(f"The output folder {out} appeared while this fit ran (another fit or program "
                          "wrote it); it was left as it is. Choose another folder.")
    problem = result_folder_problem(out, photo)
    if problem is not None:
        raise OutputError(f"Will not overwrite {out}: {problem}. It was left as it is.")
    old = _aside_name(out)
    try:
        rename_noreplace(out, old)
    except OSError as e:
        raise OutputError(f"Cannot move the earlier result {out} aside: {e.strerror or e}.") from e
    problem = result_folder_problem(old, photo)  # what we moved is what we checked?
    if problem is not None:
        _restore(old, out)
        raise OutputError(f"Will not overwrite {out}: it changed while being replaced ({problem}). It was "
                          "left as it is.")
    try:
        rename_noreplace(work, out)
    except OSError as e:
        if _restore(old, out):
            raise OutputError(f"Cannot move the result into {out}: {e.strerror or e}. The earlier result "
                              "was left as it is.") from e
        raise OutputError(f"Another fit wrote {out} while this one replaced it; the earlier result was "
                          f"kept at {old}.") from e
    remove_result_folder(old)


def _aside_name(out: Path) -> Path:
    return out.with_name("." + _short(out.name, _NAME_MAX - 30) + f".old-{os.getpid()}-{os.urandom(3).hex()}")


def _restore(old: Path, out: Path) -> bool:
    try:
        rename_noreplace(old, out)
        return True
    except OSError:
        return False


def remove_result_folder(folder: Path) -> None:
    """Delete a replaced result folder: only the files a result lists, then the folder if empty."""
    try:
        meta = json.loads((folder / "result.json").read_text(encoding="utf-8"))
        listed = {str(v) for v in meta.get("files", {}).values()}
    except (OSError, ValueError, AttributeError):
        listed = set()
    for name in sorted(listed - {MARKER}) + [n for n in _ALWAYS if n != MARKER] + [MARKER]:
        p = folder / name
        try:
            if os.path.basename(name) == name and os.path.isfile(p) and not os.path.islink(p):
                os.unlink(p)
        except OSError:
            pass
    try:
        os.rmdir(folder)  # only when nothing else is left in it
    except OSError:
        log.warning("the replaced result was kept at %s: it held files the engine did not write", folder)


# ------------------------------------------------------------------------------------ failure
def keep_log(work: Path | None, out: Path) -> Path | None:
    """Move ``work/engine.log`` to a kept place before ``work`` is removed: ``<name>.failed.log``
    beside the output (``.failed-2.log`` ... when taken), else the temp folder. Returns where."""
    if work is None:
        return None
    src = work / "engine.log"
    if not src.is_file():
        return None
    base = _short(out.name, _NAME_MAX - 20)
    for i in range(1, 20):
        dst = out.with_name(f"{base}.failed.log" if i == 1 else f"{base}.failed-{i}.log")
        try:
            rename_noreplace(src, dst)
            return dst
        except FileExistsError:
            continue
        except OSError:
            break
    try:
        fd, name = tempfile.mkstemp(prefix=f"ganfit-failed-{_short(out.name, 60)}-", suffix=".log")
        with os.fdopen(fd, "wb") as f, open(src, "rb") as g:
            shutil.copyfileobj(g, f)
        return Path(name)
    except OSError:
        return None


_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def os_error_to_output_error(e: OSError, out: Path | None) -> OutputError | None:
    """An environment failure while writing, as an output error; None when it is something else."""
    where = f" ({e.filename})" if e.filename else ""
    target = out.parent if out is not None else "the output folder"
    if e.errno in _NO_SPACE:
        return OutputError(f"No space left on the disk holding {target} while writing the result{where}. "
                           "Free some space or choose a folder on another disk; nothing was written.")
    if e.errno == errno.EROFS:
        return OutputError(f"The disk holding {target} is read-only{where}. Choose a folder you can write to.")
    if e.errno == errno.EIO:
        return OutputError(f"A read/write error (EIO) on the disk holding {target}{where}: the disk or "
                           "network share failed. Check it, or choose another folder.")
    if e.errno == errno.ENOENT and out is not None and e.filename \
            and str(e.filename).startswith(str(out.parent) + os.sep):
        return OutputError(f"The result's temporary folder in {out.parent} disappeared while the fit ran "
                           f"(removed by another program or a clean-up?){where}. Nothing was written; "
                           "run the fit again.")
    if e.errno in (errno.EACCES, errno.EPERM) and out is not None and e.filename \
            and _inside(Path(str(e.filename)), out.parent):
        return OutputError(f"Permission denied writing the result{where}. Choose a folder you can write to.")
    return None
