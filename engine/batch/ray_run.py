"""``python -m engine batch --ray [ADDRESS]``: the same batch on a Ray cluster.

Ray Data's ``map_batches`` with a stateful actor class, ``--workers`` actors, each loading the
models once (``FitSession``) and fitting one photo per call; a GPU per actor when the cluster has
GPUs (and ``--device`` is not cpu). Every node must see PHOTOS_DIR and OUT_DIR at the same paths
(a shared file system) and have this engine installed in the Python the cluster runs. The driver
(this process) writes the manifest, as in the local mode. ``ray`` is an optional extra:
``pip install 'ganfit-engine[ray]'``.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Iterator

from ..errors import MissingModelError
from .plan import SCRATCH, Photo, Scratch, sweep


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401 - the [data] extra
    except ImportError as e:
        raise MissingModelError(
            f"--ray needs Ray Data, which is not installed for this Python ({e}). Install it with "
            "`pip install 'ganfit-engine[ray]'` (or `pip install 'ray[data]>=2.40'`), or leave --ray out "
            "to fit on this machine.") from e
    return ray


class _RayFitter:
    """One Ray actor: the models, loaded once; each call fits a batch of (one) photos."""

    def __init__(self, options: dict, out: str, threads: int):
        from ..errors import EngineError
        from ..fit.session import FitOptions, load_session

        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = str(threads)
        import logging
        lg = logging.getLogger("engine")
        lg.setLevel(logging.INFO)
        lg.propagate = False
        lg.addHandler(logging.NullHandler())
        self.worker = f"ray:{platform.node()}:{os.getpid()}"
        self.setup_error: dict | None = None
        self.session = None
        try:
            self.scratch = Scratch(Path(out))
            self.session = load_session(FitOptions(**dict(options, threads=threads)), self.scratch.path)
        except EngineError as e:
            self.setup_error = {"status": "setup_failed", "exit_code": e.exit_code, "code": e.code,
                                "error": e.message}
        except OSError as e:
            self.setup_error = {"status": "setup_failed", "exit_code": 6, "code": "output",
                                "error": f"Cannot create the actor's temporary folder in {out} on "
                                         f"{platform.node()}: {e.strerror or e} (is OUT_DIR on a file "
                                         "system every node shares?)"}

    def __call__(self, batch: dict) -> dict:
        import numpy as np
        records = []
        for photo, result in zip(batch["photo"], batch["result"]):
            if self.setup_error is not None:
                res = dict(self.setup_error)
            else:
                res = self.session.fit_photo(str(photo), str(result)).as_dict()
            res["worker"] = self.worker
            records.append(json.dumps(res, allow_nan=True))
        return {"id": batch["id"], "record": np.array(records, dtype=object)}


class RayRunner:
    """Runs photos as a Ray Data pipeline; ``results`` yields (photo, result dict) as they end."""

    def __init__(self, options: dict, out: Path, workers: int, threads: int | None, address: str | None):
        self.ray = _import_ray()
        self.options = options
        self.out = out
        self.workers = workers
        self.threads = threads
        self.address = address
        self._stop = False
        self.gpus = 0

    abort_on_stop = True  # a result may be a whole fit away: stop by shutting the job down

    def start(self) -> None:
        ray = self.ray
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # its INFO lines would break the bar
        self._started_here = not ray.is_initialized()
        if self._started_here:
            ray.init(address=self.address, log_to_driver=False, configure_logging=False)
        res = ray.cluster_resources()
        if self.threads is None:
            self.threads = max(1, int(res.get("CPU", os.cpu_count() or 1)) // self.workers)
        if self.options.get("device") != "cpu" and res.get("GPU", 0) >= 1:
            self.gpus = 1

    def close(self) -> None:
        if getattr(self, "_started_here", False) and self.ray.is_initialized():
            self.ray.shutdown()
        # The job's actors end shortly after the driver lets go; each holds the lock of its scratch
        # folder until then. Wait a little so that the batch leaves no temporary folder behind.
        for _ in range(20):
            sweep(self.out)
            if not (self.out / SCRATCH).exists():
                return
            time.sleep(0.5)

    def describe(self) -> str:
        where = self.address or os.environ.get("RAY_ADDRESS") or "a local Ray instance"
        gpu = ", 1 GPU each" if self.gpus else ""
        return f"Ray ({where}): {self.workers} actor{'s' if self.workers > 1 else ''} x {self.threads} threads{gpu}"

    def stop(self) -> None:
        self._stop = True

    def kill(self) -> None:
        self._stop = True

    def results(self, photos: list[Photo]) -> Iterator[tuple[Photo, dict]]:
        ray = self.ray
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        by_id = {p.id: p for p in photos}
        ds = ray.data.from_items([{"id": p.id, "photo": str(p.path), "result": str(self.out / p.id)}
                                  for p in photos], override_num_blocks=len(photos))
        ds = ds.map_batches(_RayFitter, fn_constructor_args=(self.options, str(self.out), self.threads),
                            batch_size=1, compute=ray.data.ActorPoolStrategy(size=self.workers),
                            num_cpus=self.threads, num_gpus=self.gpus, batch_format="numpy")
        for row in ds.iter_rows():
            if self._stop:
                return
            yield by_id[str(row["id"])], json.loads(row["record"])
            if self._stop:
                return
