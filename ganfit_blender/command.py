"""The engine's ``fit`` command line as the extension builds it. No bpy here.

The flags are the engine's own (``engine/cli.py``); ``tests/addon/test_contract.py`` parses what
:func:`fit_command` builds with the engine's argument parser, so a renamed or removed flag fails a
test instead of a user's fit.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence, Union

from . import contract

PhotoArg = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]], None]


def photo_list(photo: PhotoArg) -> list[str]:
    """One photo or a sequence of photos as a list of strings (empty for None)."""
    if photo is None:
        return []
    if isinstance(photo, (str, os.PathLike)):
        return [os.fspath(photo)]
    return [os.fspath(p) for p in photo]


def fit_command(python: str, photo: PhotoArg, result_dir: str | Path, *,
                photos_dir: str | Path | None = None,
                preset: str = contract.DEFAULT_PRESET, device: str = "auto",
                texture_res: int | None = None, neutral: bool = False,
                max_steps: int | None = None, overwrite: bool = False,
                extra_args: Sequence[str] = ()) -> list[str]:
    """``[python, -m, engine, fit, PHOTO [PHOTO ...], -o, DIR, --json-progress, ...]``, or
    ``fit --photos FOLDER -o DIR ...`` for every photo of a folder.

    Args:
        photo: one photo, or several photos of one person (one head, one camera per photo; the
            first is the primary photo); None or empty with ``photos_dir``.
        photos_dir: a folder of photos of one person, passed as ``--photos`` (the engine takes
            every photo in it, sorted by name); not together with ``photo``.
        overwrite: pass ``--overwrite``; the caller must have checked that ``result_dir`` is a
            result folder the engine wrote (``contract.is_result_folder``).

    Raises:
        ValueError: a preset the engine does not have; no photo, or both photos and a folder.
    """
    if preset not in contract.PRESET_NAMES:
        raise ValueError(f"unknown preset {preset!r}; the engine has {', '.join(contract.PRESET_NAMES)}")
    photos = photo_list(photo)
    if photos and photos_dir is not None:
        raise ValueError("give photos or a folder of photos, not both")
    if not photos and photos_dir is None:
        raise ValueError("no photo to fit")
    if any(not p for p in photos):
        raise ValueError("an empty photo path")
    inputs = photos if photos_dir is None else ["--photos", os.fspath(photos_dir)]
    argv = [str(python), "-m", "engine", "fit", *inputs, "-o", str(result_dir), "--json-progress",
            "--preset", preset, "--device", device]
    if texture_res:
        argv += ["--texture-res", str(int(texture_res))]
    if neutral:
        argv.append("--neutral")
    if max_steps:
        argv += ["--max-steps", str(int(max_steps))]
    if overwrite:
        argv.append("--overwrite")
    argv += [str(a) for a in extra_args]
    return argv
