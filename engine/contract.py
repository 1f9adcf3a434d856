"""The contract between the engine and the Blender extension, defined once: protocol version and
message types, the exit-code table, the presets, and the result-folder schema marker.

Standard library only, and no imports from the rest of either package: this file exists twice,
byte for byte, as ``engine/contract.py`` (the original) and ``ganfit_blender/contract.py`` (the
copy the extension ships, because an installed extension must not import the engine). A test
(``tests/addon/test_contract.py``) fails when the two differ; edit this one and copy it over.

``docs/protocol.md`` shows the same tables for people; a test checks that they agree.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# ---------------------------------------------------------------------------------------------
# Protocol: one JSON object per line on the engine's stdout (docs/protocol.md)
# ---------------------------------------------------------------------------------------------
PROTOCOL_VERSION = 1
MESSAGE_TYPES = ("hello", "stage", "progress", "preview", "result", "error")
FINAL_TYPES = ("result", "error")  # a run ends with exactly one of these


def encode(type_: str, **fields: Any) -> str:
    """One protocol message as a single line of JSON (no newline)."""
    msg = {"v": PROTOCOL_VERSION, "type": type_}
    msg.update(fields)
    return json.dumps(msg, separators=(",", ":"), allow_nan=False, default=_json_default)


def _json_default(o: Any) -> Any:
    # numpy scalars and arrays without importing numpy here
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "__fspath__"):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def decode(line: str) -> dict | None:
    """Parse one line; None for a blank line. Raises ValueError for anything not a message."""
    line = line.strip()
    if not line:
        return None
    msg = json.loads(line)
    if not isinstance(msg, dict) or "type" not in msg:
        raise ValueError(f"not a protocol message: {line[:200]}")
    return msg


def is_cancel(line: str) -> bool:
    """A cancel request on stdin: ``{"type": "cancel"}`` or the bare word ``cancel``."""
    s = line.strip()
    if s.lower() == "cancel":
        return True
    try:
        msg = json.loads(s)
    except ValueError:
        return False
    return isinstance(msg, dict) and msg.get("type") == "cancel"


# ---------------------------------------------------------------------------------------------
# Exit codes and error codes
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExitCode:
    """One row of the exit-code table.

    Attributes:
        exit: the process exit status.
        code: the ``error`` message's ``code`` ("-" for success, which sends no error).
        short: a few words, for ``--help``.
        meaning: the sentence docs/protocol.md shows.
    """

    exit: int
    code: str
    short: str
    meaning: str


EXIT_OK = 0
EXIT_CODES: tuple[ExitCode, ...] = (
    ExitCode(0, "-", "ok", "ok"),
    ExitCode(1, "internal", "internal error",
             "a bug or an unexpected failure (the message says where the log is)"),
    ExitCode(2, "usage", "usage",
             "bad command-line arguments (also out-of-range numbers: `--threads` < 1, `--focal-35mm` "
             "outside 4..2000, `--seed` outside 0..2^32-1, negative `--face-index`/`--preview-every`, "
             "`--max-steps` < 1)"),
    ExitCode(3, "bad_input", "bad input",
             "the photo is missing, not an image, truncated, empty, a folder, or too small"),
    ExitCode(4, "no_face", "no face",
             "no face found in the photo (or `--face-index` out of range)"),
    ExitCode(5, "missing_model", "missing model",
             "a model file or optional package the options need is not there, or the engine "
             "environment itself is incomplete (no numpy or torch)"),
    ExitCode(6, "output", "output folder",
             "the output folder exists and is not empty (without `--overwrite`), is not an engine "
             "result folder (with `--overwrite`), is a link, a mount point or behind a file or a link "
             "loop, appeared while the fit ran, or cannot be written (permissions, disk full, "
             "read-only, I/O error); see result-format.md, \"What the engine will never do\""),
    ExitCode(130, "cancelled", "cancelled", "cancelled by the client, SIGINT or SIGTERM"),
)


def exit_code_for(code: str) -> int:
    """The exit status for an error code (``"no_face"`` -> 4); unknown codes are internal (1)."""
    for row in EXIT_CODES:
        if row.code == code:
            return row.exit
    return 1


def error_code_for(exit_status: int) -> str:
    """The error code for an exit status (4 -> ``"no_face"``); unknown statuses are internal."""
    for row in EXIT_CODES:
        if row.exit == exit_status and row.exit != EXIT_OK:
            return row.code
    return "internal"


def exit_code_summary() -> str:
    """``0 ok, 1 internal error, 2 usage, ...`` (the CLI's ``--help`` epilog)."""
    return ", ".join(f"{row.exit} {row.short}" for row in EXIT_CODES)


# ---------------------------------------------------------------------------------------------
# Presets (the numbers live in engine/fit/config.py; a test checks these descriptions against it)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Preset:
    name: str
    label: str
    description: str


PRESETS: tuple[Preset, ...] = (
    Preset("fast", "Fast",
           "Quick look: 80 + 20 steps at 160 px, 512 px texture, no identity loss"),
    Preset("balanced", "Balanced",
           "Good quality in a few minutes on a CPU: 150 + 80 steps at 224 px, 1024 px texture"),
    Preset("best", "Best",
           "Most steps, slow without a GPU: 200 + 200 steps at 320 px, 1024 px texture"),
)
PRESET_NAMES: tuple[str, ...] = tuple(p.name for p in PRESETS)
DEFAULT_PRESET = "balanced"


# ---------------------------------------------------------------------------------------------
# Result folders (docs/result-format.md)
# ---------------------------------------------------------------------------------------------
RESULT_SCHEMA = 1
RESULT_JSON = "result.json"
OBJ_MATERIAL = "ganfit_face"  # face.obj's ``usemtl`` and face.mtl's ``newmtl``


def read_result_json(folder: str | Path) -> dict | None:
    """``folder/result.json`` as a dict if it is one the engine wrote (a JSON object with this
    ``schema`` and an ``engine`` version), else None. Never raises for a bad folder."""
    path = Path(folder) / RESULT_JSON
    try:
        if not path.is_file():
            return None
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("schema") != RESULT_SCHEMA \
            or not isinstance(meta.get("engine"), str):
        return None
    return meta


def is_result_folder(folder: str | Path) -> bool:
    """True when ``folder`` is a folder holding a ``result.json`` the engine wrote: the only kind
    of existing folder that ``--overwrite`` may replace."""
    try:
        return Path(folder).is_dir() and not Path(folder).is_symlink() \
            and read_result_json(folder) is not None
    except OSError:
        return False
