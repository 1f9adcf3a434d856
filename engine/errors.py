"""Typed engine errors. Each carries the protocol error code and the process exit code.

The CLI turns any `EngineError` into one `error` protocol message and exits with its code
(see docs/protocol.md). Messages are one human sentence that says what to do.
"""

from __future__ import annotations


class EngineError(Exception):
    code = "internal"
    exit_code = 1

    def __init__(self, message: str, detail: str | None = None):
        super().__init__(message)
        self.message = message
        self.detail = detail


class BadInputError(EngineError):
    code = "bad_input"
    exit_code = 3


class NoFaceError(EngineError):
    code = "no_face"
    exit_code = 4


class MissingModelError(EngineError):
    code = "missing_model"
    exit_code = 5


class OutputError(EngineError):
    code = "output"
    exit_code = 6


class CancelledError(EngineError):
    code = "cancelled"
    exit_code = 130
