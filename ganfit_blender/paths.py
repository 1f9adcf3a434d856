"""Where things live on disk: the bundled engine, result folders, logs. No bpy here.

The installed extension bundles the engine next to the add-on's own modules
(``<extension>/engine/__main__.py``, staged by ``build.py``); in a source checkout the engine is the
repository root's ``engine/`` one level above this package.
"""

from __future__ import annotations

import glob
import os
import re
import tempfile
import time
from pathlib import Path

ADDON_DIR = Path(__file__).resolve().parent


def _is_engine_root(folder: Path) -> bool:
    return (folder / "engine" / "__main__.py").is_file()


def find_engine_root(addon_dir: Path = ADDON_DIR) -> Path | None:
    """The folder that must be on ``PYTHONPATH`` so that ``python -m engine`` works.

    Args:
        addon_dir: this package's folder (the extension folder once installed).

    Returns:
        The first of ``addon_dir`` (bundled engine) and ``addon_dir.parent`` (source checkout) that
        holds ``engine/__main__.py``, else None.
    """
    for candidate in (addon_dir, addon_dir.parent):
        if _is_engine_root(candidate):
            return candidate
    return None


# What a folder of photos contributes (``--photos DIR``); the engine reads these image types.
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


def photos_in(folder: Path) -> list[Path]:
    """The photos directly in ``folder`` (by suffix, any case), sorted by name, as the engine's
    ``--photos`` takes them; hidden files are left out.

    Raises:
        OSError: the folder cannot be listed.
    """
    return sorted((p for p in Path(folder).iterdir()
                   if p.suffix.lower() in PHOTO_SUFFIXES and not p.name.startswith(".")
                   and p.is_file()), key=lambda p: p.name)


def _safe_stem(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(name).stem).strip("._")
    return stem[:48] or "photo"


def results_base(blend_filepath: str) -> Path:
    """The folder that collects result folders: ``<blend dir>/ganfit`` next to a saved .blend,
    else ``<temp>/ganfit`` (an unsaved file has no folder of its own)."""
    if blend_filepath:
        return Path(blend_filepath).resolve().parent / "ganfit"
    return Path(tempfile.gettempdir()) / "ganfit"


ENGINE_PREVIEW_PREFIX = "ganfit-preview-"  # the engine's temp folder of preview PNGs
JOB_TMP_PREFIX = "ganfit-job-"  # the extension's per-job temp folder (the engine's TMPDIR)


def temp_env(folder: Path) -> dict[str, str]:
    """Environment variables that make ``folder`` the child's temp folder (tempfile honours
    TMPDIR, TEMP and TMP, in that order, on every platform)."""
    return {"TMPDIR": str(folder), "TEMP": str(folder), "TMP": str(folder)}


def new_result_dir(base: Path, photo: str) -> Path:
    """A result folder path under ``base`` that no other job has (the engine creates the folder).

    The name carries the photo's stem and a timestamp so that runs sort by time. The engine
    creates the folder only at the very end, so a free name is *reserved* now by creating its
    log file (``.logs/<name>.stderr.log``) exclusively: two fits started at once, in this Blender
    or another, get distinct folders.

    Raises:
        OSError: ``base`` cannot be written.
    """
    stem = _safe_stem(photo)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    logs = base / ".logs"
    logs.mkdir(parents=True, exist_ok=True)
    for n in range(1000):
        suffix = "" if n == 0 else f"-{n}"
        candidate = base / f"{stem}-{stamp}{suffix}"
        if candidate.exists() or any(engine_tmp_siblings(candidate)):
            continue
        try:
            with open(logs / f"{candidate.name}.stderr.log", "x", encoding="utf-8"):
                pass
        except FileExistsError:
            continue  # reserved by another job
        return candidate
    raise FileExistsError(f"Could not find a free result folder name under {base}")


def engine_tmp_siblings(result_dir: Path) -> list[Path]:
    """The engine's work folders for ``result_dir`` (``.<name>.tmp-*`` next to it)."""
    parent = result_dir.parent
    if not parent.is_dir():
        return []
    return [p for p in parent.glob(f".{glob.escape(result_dir.name)}.tmp-*") if p.is_dir()]


def remove_preview_dir(folder: Path) -> bool:
    """Remove an engine's ``ganfit-preview-*`` folder if it holds only preview PNGs (the engine
    writes ``preview_<step>.png`` there); anything else in it is left alone. Returns True if it
    is gone."""
    if not folder.name.startswith(ENGINE_PREVIEW_PREFIX) or folder.is_symlink():
        return False
    try:
        entries = list(folder.iterdir())
        if any(not (e.is_file() and e.name.startswith("preview_") and e.suffix == ".png")
               for e in entries):
            return False
        for e in entries:
            e.unlink()
        folder.rmdir()
    except OSError:
        return not folder.exists()
    return True


def log_path_for(result_dir: Path) -> Path:
    """Where the client sends the engine's stderr: a hidden file next to (not inside) the result
    folder, because the engine creates the result folder itself, atomically, at the very end.
    (``new_result_dir`` has created it already, to reserve the name.)"""
    logs = result_dir.parent / ".logs"
    logs.mkdir(parents=True, exist_ok=True)
    return logs / f"{result_dir.name}.stderr.log"


def preview_copy_path(result_dir: Path) -> Path:
    """Our private copy of the engine's latest preview PNG (the engine's file is short-lived)."""
    logs = result_dir.parent / ".logs"
    logs.mkdir(parents=True, exist_ok=True)
    return logs / f"{result_dir.name}.preview.png"


def engine_env(engine_root: Path | None, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for the engine subprocess: ``engine`` importable, unbuffered output, and none of
    Blender's own Python settings (``PYTHONHOME``/``PYTHONPATH`` would point a foreign interpreter
    at Blender's standard library)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONPATH",
                                                           "PYTHONSTARTUP", "PYTHONEXECUTABLE")}
    if engine_root is not None:
        env["PYTHONPATH"] = str(engine_root)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    if extra:
        env.update(extra)
    return env
