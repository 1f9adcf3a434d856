"""The engine's ``fit`` command line as the extension builds it. No bpy here.

The flags are the engine's own (``engine/cli.py``); ``tests/addon/test_contract.py`` parses what
:func:`fit_command` builds with the engine's argument parser, so a renamed or removed flag fails a
test instead of a user's fit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from . import contract


def fit_command(python: str, photo: str | Path, result_dir: str | Path, *,
                preset: str = contract.DEFAULT_PRESET, device: str = "auto",
                texture_res: int | None = None, neutral: bool = False,
                max_steps: int | None = None, overwrite: bool = False,
                extra_args: Sequence[str] = ()) -> list[str]:
    """``[python, -m, engine, fit, PHOTO, -o, DIR, --json-progress, ...]``.

    Args:
        overwrite: pass ``--overwrite``; the caller must have checked that ``result_dir`` is a
            result folder the engine wrote (``contract.is_result_folder``).

    Raises:
        ValueError: a preset the engine does not have.
    """
    if preset not in contract.PRESET_NAMES:
        raise ValueError(f"unknown preset {preset!r}; the engine has {', '.join(contract.PRESET_NAMES)}")
    argv = [str(python), "-m", "engine", "fit", str(photo), "-o", str(result_dir), "--json-progress",
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
