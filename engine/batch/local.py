"""The batch's worker processes on this machine: ``--workers N`` spawned processes, each loading
the models once (``FitSession``) and fitting photo after photo, with the CPU threads split
between them.

Ctrl-C and SIGTERM reach the driver (workers ignore SIGINT); the driver sets a shared event that
every worker's fit checks between steps, so a fit being run stops within a step and writes
nothing. A worker that dies (killed, out of memory) costs the photo it was fitting, not the batch:
that photo is recorded as failed and the remaining photos go to new workers.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import platform
import queue
import signal
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Iterator

from .plan import Photo, Scratch

# --------------------------------------------------------------------------- in the worker
_W: dict = {}


def _init_worker(options: dict, out: str, threads: int, cancel, started) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver decides; it tells us via ``cancel``
    signal.signal(signal.SIGTERM, lambda *_: cancel.set())  # e.g. `kill` of the process group
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    lg = logging.getLogger("engine")
    lg.setLevel(logging.INFO)  # into each result's engine.log; nothing on the batch's terminal
    lg.propagate = False
    lg.addHandler(logging.NullHandler())
    _W.update(options=dict(options, threads=threads), out=Path(out), cancel=cancel, started=started,
              session=None, scratch=None, worker=f"{platform.node()}:{os.getpid()}")


def _fit_task(photo_id: str, photo: str, result: str) -> dict:
    from ..errors import EngineError
    from ..fit.session import FitOptions, load_session

    _W["started"].put((photo_id, os.getpid()))
    stopped = {"status": "cancelled", "exit_code": 130, "code": "cancelled", "error": "stopped before the fit",
               "worker": _W["worker"]}
    if _W["cancel"].is_set():  # stopped while this task waited (or while the models loaded)
        return stopped
    if _W["session"] is None:
        try:
            _W["scratch"] = Scratch(_W["out"])
            _W["session"] = load_session(FitOptions(**_W["options"]), _W["scratch"].path)
        except EngineError as e:
            return {"status": "setup_failed", "exit_code": e.exit_code, "code": e.code, "error": e.message,
                    "worker": _W["worker"]}
        except OSError as e:
            return {"status": "setup_failed", "exit_code": 6, "code": "output",
                    "error": f"Cannot create the worker's temporary folder in {_W['out']}: {e.strerror or e}",
                    "worker": _W["worker"]}
        if _W["cancel"].is_set():
            return stopped
    res = _W["session"].fit_photo(photo, result, cancel=_W["cancel"].is_set).as_dict()
    res["worker"] = _W["worker"]
    return res


# ----------------------------------------------------------------------------- the driver
class LocalRunner:
    """Runs photos on ``workers`` processes; ``results`` yields (photo, result dict) as they end."""

    def __init__(self, options: dict, out: Path, workers: int, threads: int | None):
        self.options = options
        self.out = out
        self.workers = workers
        total = threads or os.cpu_count() or 1
        self.threads = max(1, total // workers)
        self.ctx = mp.get_context("spawn")  # fork + torch threads deadlock; spawn is also what Windows/macOS do
        self.cancel = self.ctx.Event()
        self.started = self.ctx.Queue()
        self._pool: ProcessPoolExecutor | None = None
        self._crashes: dict[str, int] = {}  # photo id -> pools that broke while it was fitted

    abort_on_stop = False  # the fits see the stop between steps

    def start(self) -> None:
        return None

    def close(self) -> None:
        return None

    def describe(self) -> str:
        return f"{self.workers} worker process{'es' if self.workers > 1 else ''} x {self.threads} threads"

    def stop(self) -> None:
        """Ask every fit to stop between steps (the driver's first Ctrl-C / SIGTERM)."""
        self.cancel.set()

    def kill(self) -> None:
        """Terminate the workers now (a second Ctrl-C). Their temporary folders are swept later."""
        pool = self._pool
        for p in list(getattr(pool, "_processes", {}).values()) if pool is not None else []:
            try:
                p.terminate()
            except (OSError, AttributeError):
                pass

    def results(self, photos: list[Photo]) -> Iterator[tuple[Photo, dict]]:
        left = list(photos)
        while left and not self.cancel.is_set():
            left = yield from self._one_pool(left)

    def _one_pool(self, photos: list[Photo]):
        """Run ``photos`` on one pool; returns those still to do when the pool broke."""
        running: dict[str, int] = {}
        self._pool = pool = ProcessPoolExecutor(
            max_workers=min(self.workers, len(photos)), mp_context=self.ctx, initializer=_init_worker,
            initargs=(self.options, str(self.out), self.threads, self.cancel, self.started))
        futures = {pool.submit(_fit_task, p.id, str(p.path), str(self.out / p.id)): p for p in photos}
        pending = set(futures)
        finished: set[str] = set()
        broken = False
        try:
            while pending:
                done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                self._drain(running)
                for f in done:
                    p = futures[f]
                    if f.cancelled():  # never started: redone on resume
                        continue
                    try:
                        res = f.result()
                    except BrokenProcessPool:
                        broken = True
                        continue
                    except Exception as e:  # noqa: BLE001 - e.g. a result that could not be pickled
                        res = {"status": "failed", "exit_code": 1, "code": "internal",
                               "error": f"Internal error in the worker: {type(e).__name__}: {e}."}
                    finished.add(p.id)
                    yield p, res
                if broken:
                    break
                if self.cancel.is_set():
                    for f in pending:
                        f.cancel()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if not broken:
            return []
        self._drain(running)
        left = []
        for f, p in futures.items():
            if p.id in finished:
                continue
            # A dead worker breaks the whole pool, so every photo then being fitted is suspect: each
            # is tried again on a new pool, and fails when a second pool breaks under it.
            if p.id in running:
                self._crashes[p.id] = self._crashes.get(p.id, 0) + 1
                if self._crashes[p.id] >= 2:
                    yield p, {"status": "failed", "exit_code": 1, "code": "internal",
                              "error": "The worker process fitting this photo died, twice (killed, or out "
                                       "of memory?)."}
                    continue
            left.append(p)
        return left

    def _drain(self, running: dict[str, int]) -> None:
        while True:
            try:
                pid_photo, pid = self.started.get_nowait()
            except (queue.Empty, OSError, ValueError):
                return
            running[pid_photo] = pid
