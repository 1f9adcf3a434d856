"""The JSON-lines progress protocol (docs/protocol.md): the engine's writer. The message format
itself (version, types, encode/decode, cancel) is defined in ``contract.py``, which the extension
ships a copy of. Standard library only."""

from __future__ import annotations

import sys
import threading
from typing import IO, Any

from .contract import FINAL_TYPES, MESSAGE_TYPES, PROTOCOL_VERSION, decode, encode, is_cancel

VERSION = PROTOCOL_VERSION
TYPES = MESSAGE_TYPES

__all__ = ["VERSION", "TYPES", "encode", "decode", "is_cancel", "Emitter", "real_stdout"]


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
            if type_ in FINAL_TYPES:
                self.final_sent = True
            self._stream.write(line + "\n")
            self._stream.flush()


def real_stdout() -> IO[str]:
    return sys.__stdout__ if sys.__stdout__ is not None else sys.stdout
