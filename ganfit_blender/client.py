"""Run the engine as a subprocess and turn its JSON-lines stdout into events. No bpy here.

Protocol: ``docs/protocol.md``. One :class:`EngineClient` runs one engine command. A reader thread
parses stdout into :attr:`EngineClient.events` (a :class:`queue.Queue` of dicts); the main thread
drains it (``runner.poll``). stderr goes to a log file, never a pipe, so a chatty engine cannot
deadlock on a full pipe buffer.

Events are the engine's own objects (``hello``, ``stage``, ``progress``, ``preview``, ``result``,
``error``, and any type added later) plus two made here:

* a synthetic ``error`` (with ``"synthetic": True``) when the child ends without a ``result`` or
  ``error`` line, e.g. it crashed or was killed; its ``detail`` is the tail of the log;
* ``exit`` with ``returncode``: always the very last event.
"""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from . import contract

# Protocol exit codes (contract.EXIT_CODES) -> error codes, for a child that died without saying why.
EXIT_CODES = {row.exit: row.code for row in contract.EXIT_CODES if row.exit != contract.EXIT_OK}

CANCEL_GRACE_S = 5.0
LOG_TAIL_LINES = 20

# What a bare exit status means to the user (the engine died before it could send its ``error``).
EXIT_HINTS = {
    "internal": "The engine crashed (exit code {rc}).",
    "usage": "The engine refused its command line (exit code {rc}): the extension and its engine "
             "do not match; reinstall the extension.",
    "bad_input": "The engine could not read the photo (exit code {rc}).",
    "no_face": "The engine found no face in the photo (exit code {rc}).",
    "missing_model": "A model file the engine needs is missing (exit code {rc}): check the model "
                     "folders in the GANFit preferences.",
    "output": "The engine could not write the result folder (exit code {rc}): choose another "
              "Result Folder.",
    "cancelled": "The engine was cancelled (exit code {rc}).",
}

# The preferences' repair action (preferences.GANFIT_OT_install_environment's label).
REPAIR_HINT = ("Repair it with 'Install Engine Environment' in Preferences > Add-ons > GANFit, or "
               "install the engine's requirements.txt into that Python.")
_NO_MODULE = re.compile(r"(?:ModuleNotFoundError|ImportError): No module named '?([\w.]+)'?")


def missing_module(*texts: str | None) -> str | None:
    """The top-level package named by a ``ModuleNotFoundError`` in any of ``texts`` (an error
    message, its detail, a log tail), or None."""
    for text in texts:
        m = _NO_MODULE.search(text or "")
        if m:
            return m.group(1).split(".")[0]
    return None


def environment_error(error: dict[str, Any], python: str, log_path: Path | None = None
                      ) -> dict[str, Any] | None:
    """An ``environment`` error to show instead of ``error`` when the engine failed because its
    Python lacks a package (numpy, torch, ...): the environment is incomplete, not the engine
    broken. None when that is not the cause."""
    code = error.get("code")
    # The engine says so itself (missing_model, "environment is incomplete") when the import fails
    # inside its own error handling; older engines or an import failure before that is "internal".
    if code == "missing_model":
        if "environment is incomplete" not in str(error.get("msg") or ""):
            return None
    elif code not in ("internal", None):
        return None
    name = missing_module(str(error.get("msg") or ""), str(error.get("detail") or ""),
                          tail_text(log_path))
    if name is None:
        return None
    if name == "engine":
        msg = ("The engine is missing from the extension (Python cannot find the 'engine' "
               "package); reinstall the extension.")
    else:
        msg = (f"The engine environment is incomplete: the Python package '{name}' is missing from "
               f"{python}. {REPAIR_HINT}")
    return {"v": contract.PROTOCOL_VERSION, "type": "error", "code": "environment",
            "exit_code": error.get("exit_code"), "msg": msg, "detail": error.get("detail"),
            "synthetic": True, "missing_module": name}


def tail_text(path: Path | None, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a text file, or '' if it cannot be read."""
    if path is None:
        return ""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 16384))
            data = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


class EngineClient:
    """One engine subprocess.

    Args:
        argv: the full command, interpreter first (``[python, '-m', 'engine', 'fit', ...]``).
        cwd: working directory for the child (the engine root, so ``-m engine`` resolves).
        env: environment for the child (see ``paths.engine_env``).
        log_path: file that receives the child's stderr (created, truncated).
    """

    def __init__(self, argv: Sequence[str], cwd: str | Path | None = None,
                 env: dict[str, str] | None = None, log_path: str | Path | None = None) -> None:
        self.argv = [str(a) for a in argv]
        self.cwd = str(cwd) if cwd is not None else None
        self.env = env
        self.log_path = Path(log_path) if log_path is not None else None
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.proc: subprocess.Popen[bytes] | None = None
        self.cancel_requested = False
        self.finished = threading.Event()  # set after the ``exit`` event is queued
        self.terminal: dict[str, Any] | None = None  # the run's ``result`` or ``error``
        self._log_fh = None
        self._reader: threading.Thread | None = None
        self._stdin_lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Start the child and the reader thread.

        Raises:
            FileNotFoundError / PermissionError / OSError: the interpreter cannot be started.
        """
        if self.proc is not None:
            raise RuntimeError("EngineClient.start() called twice")
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_fh = open(self.log_path, "wb")
        kwargs: dict[str, Any] = {}
        if sys.platform == "win32":
            kwargs["creationflags"] = getattr(subprocess, "CREATE_NO_WINDOW", 0)
        try:
            self.proc = subprocess.Popen(
                self.argv, cwd=self.cwd, env=self.env,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=self._log_fh if self._log_fh is not None else subprocess.DEVNULL,
                **kwargs)
        except BaseException:
            self._close_log()
            raise
        self._reader = threading.Thread(target=self._read_loop, name="ganfit-engine-reader",
                                        daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None

    @property
    def is_alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cancel(self, grace: float = CANCEL_GRACE_S) -> None:
        """Ask the engine to stop; escalate to ``terminate()`` after ``grace`` seconds and to
        ``kill()`` after another ``grace``. Returns at once (a watchdog thread escalates)."""
        if self.proc is None or self.cancel_requested:
            return
        self.cancel_requested = True
        self._write_line({"type": "cancel"})
        threading.Thread(target=self._escalate, args=(grace,), name="ganfit-engine-cancel",
                         daemon=True).start()

    def kill(self) -> None:
        """Kill the child now (no grace)."""
        self.cancel_requested = True
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.kill()
            except OSError:
                pass

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the child has exited and every event is queued. Returns True if it has."""
        return self.finished.wait(timeout)

    def stop(self, grace: float = CANCEL_GRACE_S) -> None:
        """Cancel, then block until the child is gone (used on unregister and file quit)."""
        if self.proc is None:
            return
        self.cancel(grace)
        if not self.wait(grace):
            self.proc.terminate()
            if not self.wait(grace):
                self.kill()
                self.wait(grace)

    # -- internals -------------------------------------------------------------------------
    def _write_line(self, obj: dict[str, Any]) -> None:
        proc = self.proc
        if proc is None or proc.stdin is None:
            return
        with self._stdin_lock:
            try:
                proc.stdin.write((json.dumps(obj) + "\n").encode())
                proc.stdin.flush()
            except (BrokenPipeError, OSError, ValueError):
                pass  # the child is already gone (or closed stdin): nothing to tell it

    def _escalate(self, grace: float) -> None:
        proc = self.proc
        assert proc is not None
        for action in (proc.terminate, proc.kill):
            try:
                proc.wait(grace)
                return
            except subprocess.TimeoutExpired:
                try:
                    action()
                except OSError:
                    return

    def _read_loop(self) -> None:
        proc = self.proc
        assert proc is not None and proc.stdout is not None
        try:
            for raw in proc.stdout:
                line = raw.decode("utf-8", "replace").strip()
                if not line:
                    continue
                try:
                    msg = contract.decode(line)
                except ValueError:
                    continue  # not a protocol line (a stray print): the protocol says ignore
                if msg is None:
                    continue
                if msg["type"] in contract.FINAL_TYPES and self.terminal is None:
                    self.terminal = msg
                self.events.put(msg)
        finally:
            rc = proc.wait()
            self._close_log()
            if proc.stdin is not None:
                try:
                    proc.stdin.close()
                except OSError:
                    pass
            if self.terminal is None or (self.terminal["type"] == "result" and rc != 0):
                self.terminal = self._synthetic_error(rc)
                self.events.put(self.terminal)
            self.events.put({"type": "exit", "returncode": rc})
            self.finished.set()

    def _synthetic_error(self, rc: int) -> dict[str, Any]:
        tail = tail_text(self.log_path)
        if self.cancel_requested:
            code, msg = "cancelled", "The fit was cancelled."
        elif rc == 0:
            code, msg = "internal", "The engine exited without a result."
        elif rc < 0:
            code = "internal"
            msg = f"The engine was stopped by signal {-rc} before it finished."
        else:
            code = contract.error_code_for(rc)
            msg = EXIT_HINTS.get(code, EXIT_HINTS["internal"]).format(rc=rc)
        if tail:
            msg += " Last log lines:\n" + tail
        elif self.log_path is not None:
            msg += f" See the log: {self.log_path}"
        return {"v": 1, "type": "error", "code": code, "exit_code": rc, "msg": msg,
                "detail": tail, "synthetic": True}

    def _close_log(self) -> None:
        if self._log_fh is not None:
            try:
                self._log_fh.close()
            except OSError:
                pass
            self._log_fh = None


def run_json_command(argv: Sequence[str], cwd: str | Path | None, env: dict[str, str] | None,
                     timeout: float = 120.0) -> dict[str, Any]:
    """Run a short engine command that prints one JSON object (``engine check --json``).

    Returns:
        The parsed object (last JSON object line of stdout).

    Raises:
        RuntimeError: with a readable message if it fails, times out or prints no JSON.
    """
    try:
        proc = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
    except FileNotFoundError as exc:
        raise RuntimeError(f"Engine Python not found: {argv[0]}") from exc
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"The engine check did not finish in {timeout:.0f} s") from exc
    except OSError as exc:
        raise RuntimeError(f"Could not start the engine: {exc}") from exc
    out = proc.stdout.decode("utf-8", "replace")
    for line in reversed(out.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                return obj
    err = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-LOG_TAIL_LINES:]
    raise RuntimeError(f"The engine check failed (exit code {proc.returncode}):\n" + "\n".join(err))


def drain(q: "queue.Queue[dict[str, Any]]", limit: int = 1000) -> list[dict[str, Any]]:
    """Everything now in ``q`` (at most ``limit`` items), without blocking."""
    out: list[dict[str, Any]] = []
    while len(out) < limit:
        try:
            out.append(q.get_nowait())
        except queue.Empty:
            break
    return out


def wait_for_exit(client: EngineClient, timeout: float) -> bool:
    """Poll until the child has gone (helper for tests and blocking runs)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.finished.is_set():
            return True
        time.sleep(0.02)
    return client.finished.is_set()
