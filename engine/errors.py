"""Typed engine errors. Each carries the protocol error code and the process exit code.

The CLI turns any `EngineError` into one `error` protocol message and exits with its code (the
table is ``contract.EXIT_CODES``; docs/protocol.md shows it). Messages are one human sentence that
says what to do.
"""

from __future__ import annotations

from .contract import exit_code_for


class EngineError(Exception):
    code = "internal"
    exit_code = exit_code_for("internal")

    def __init__(self, message: str, detail: str | None = None):
        super().__init__(message)
        self.message = message
        self.detail = detail


class BadInputError(EngineError):
    code = "bad_input"
    exit_code = exit_code_for("bad_input")


class NoFaceError(EngineError):
    code = "no_face"
    exit_code = exit_code_for("no_face")


class MissingModelError(EngineError):
    code = "missing_model"
    exit_code = exit_code_for("missing_model")


class OutputError(EngineError):
    code = "output"
    exit_code = exit_code_for("output")


class CancelledError(EngineError):
    code = "cancelled"
    exit_code = exit_code_for("cancelled")
