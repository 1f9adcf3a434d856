"""The JSON-lines progress protocol (docs/protocol.md). Standard library only, so that the Blender
extension and its tests can use it without torch."""

from __future__ import annotations

import json
import sys
import threading
from typing import IO, Any

VERSION = 1
TYPES = ("hello", "stage", "progress", "preview", "result", "error")


def encode(type_: str, **fields: Any) -> str:
    """One protocol message as a single line of JSON (no newline)."""
    msg = {"v": VERSION, "type": type_}
    msg.update(fields)
    return json.dumps(msg, separators=(",", ":"), allow_nan=False, default=_default)


def _default(o: Any) -> Any:
    # numpy scalars and arrays without importing numpy here
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "__fspath__"):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def decode(line: str) -> dict | None:
    """Parse one line; None for a blank line. Raises ValueError for anything not a v1 message."""
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


class Emitter:
    """Writes protocol messages to a stream (the real stdout), one flushed line each, thread-safe.

    When disabled (no ``--json-progress``) every call is a no-op.
    """

    def __init__(self, stream: IO[str] | None):
        self._stream = stream
        self._lock = threading.Lock()
        self.final_sent = False

    @property
    def enabled(self) -> bool:
        return self._stream is not None

    def send(self, type_: str, **fields: Any) -> None:
        if self._stream is None:
            return
        line = encode(type_, **fields)
        with self._lock:
            if self.final_sent:
                return  # exactly one result or error, and nothing after it
            if type_ in ("result", "error"):
                self.final_sent = True
            self._stream.write(line + "\n")
            self._stream.flush()


def real_stdout() -> IO[str]:
    return sys.__stdout__ if sys.__stdout__ is not None else sys.stdout
