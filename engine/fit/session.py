"""Load once, fit many: the models, render context and configuration of a fit, kept for a whole
batch of photos (``python -m engine batch``, its Ray actors, and anything else that fits photo
after photo in one process).

``FitSession.fit_photo`` writes one result folder exactly as ``python -m engine fit`` does: the
same pipeline, the same temporary folder and no-clobber move into place (``engine/io/output.py``),
and a failure leaves nothing half-written. It returns a record instead of raising, so that one
bad photo never stops the caller.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from .. import __version__
from ..errors import CancelledError, EngineError, MissingModelError
from ..io import output

log = logging.getLogger("engine")


@dataclass(frozen=True)
class FitOptions:
    """The ``fit`` command's settings that stay the same for every photo of a batch."""

    preset: str = "balanced"
    device: str = "auto"
    seed: int = 0
    texture_res: int | None = None
    neutral: bool = False
    recognizer: str = "dlib"
    recognizer_path: str | None = None
    texture_model: str | None = "default"
    detail: bool | None = None
    landmarks: str = "mediapipe"
    focal_35mm: float | None = None
    max_steps: int | None = None
    threads: int | None = None
    report: bool = False

    @classmethod
    def from_args(cls, args, **override) -> "FitOptions":
        """From an argparse namespace holding (some of) these names; ``override`` wins."""
        names = {f for f in cls.__dataclass_fields__}
        values = {k: getattr(args, k) for k in names if hasattr(args, k)}
        values.update(override)
        return cls(**values)

    def as_dict(self) -> dict:
        return asdict(self)

    def config(self):
        """The fit's settings (``config.FitConfig``) these options give, for ``fit`` and every
        photo of a batch alike: the preset with the seed, texture size, expression, step cap,
        detail layer and whether the identity terms are on (not with ``--recognizer none``)."""
        from dataclasses import replace

        from .config import get_config
        cfg = get_config(self.preset, seed=self.seed, texture_res=self.texture_res,
                         fit_expression=not self.neutral).capped(self.max_steps)
        if self.detail is not None:
            cfg = replace(cfg, albedo=replace(cfg.albedo, detail=self.detail))
        if self.recognizer == "none":
            cfg = replace(cfg, identity=False)
        return cfg


@dataclass
class PhotoResult:
    """What became of one photo: the manifest line's fields (docs/batch.md)."""

    status: str                      # "ok", "failed" or "cancelled"
    exit_code: int                   # what ``python -m engine fit`` would have exited with
    code: str | None = None          # the protocol error code ("no_face", ...) or None
    error: str | None = None         # one sentence for people, or None
    metrics: dict | None = None      # landmark error, identity cosine ... (result.json "metrics")
    seconds: float = 0.0             # wall time of this photo, loading excluded
    warnings: list[str] = field(default_factory=list)
    detail: str | None = None        # a traceback for an internal error

    def as_dict(self) -> dict:
        return asdict(self)


class FitSession:
    """The face model, recogniser, texture model and render context, loaded once.

    Args:
        options: the fit settings shared by every photo.
        scratch: the folder for the temporary result folders. It must be on the same file system
            as the result folders (results are renamed into place); the batch command gives each
            worker its own scratch folder inside the output folder.

    Raises:
        MissingModelError: a model file, package or the CUDA device the options need is missing.
    """

    def __init__(self, options: FitOptions, scratch: Path | None = None):
        import torch

        from .. import render
        from ..models.facemodel import load_face_model
        from . import pipeline
        from .run import _texture_factory

        t = time.perf_counter()
        self.options = options
        self.scratch = scratch
        self.threads = options.threads or os.cpu_count() or 1
        torch.set_num_threads(self.threads)
        self.device = pipeline.pick_device(options.device)
        self.ctx = render.create_context(self.device)
        cfg = options.config()  # the --detail of a batch reaches its fits (it once did not)
        self.cfg = cfg
        self.model = load_face_model(self.device)
        self.recognizer = None
        if cfg.identity:
            from ..perception.recognizer import load_recognizer
            self.recognizer = load_recognizer(options.recognizer, path=options.recognizer_path,
                                              device=self.device)
        self.env = pipeline.Env(self.model, cfg, self.ctx, self.device, self.recognizer,
                                _texture_factory(options, self.device, cfg))
        self.load_seconds = time.perf_counter() - t
        log.info("session: engine %s, torch %s, device %s, backend %s, %d threads, loaded in %.1f s",
                 __version__, torch.__version__, self.device, self.ctx.backend, self.threads,
                 self.load_seconds)

    def describe(self) -> dict:
        """Where and how this session fits (for logs and the batch summary)."""
        return {"engine": __version__, "python": platform.python_version(), "device": str(self.device),
                "backend": self.ctx.backend, "threads": self.threads, "preset": self.cfg.preset,
                "load_s": round(self.load_seconds, 2), "pid": os.getpid(), "host": platform.node()}

    # ------------------------------------------------------------------------------ one photo
    def fit_photo(self, photo: str | Path, out: str | Path,
                  cancel: Callable[[], bool] = lambda: False) -> PhotoResult:
        """Fit ``photo`` and write its result folder ``out`` (which must not exist, or be an empty
        folder). Never raises for a bad photo or output: the record says what happened. A
        cancelled fit writes nothing and comes back with status "cancelled"."""
        t0 = time.perf_counter()
        photo = Path(photo).expanduser().absolute()
        out = Path(out).expanduser().absolute()
        warnings: list[str] = []
        work: Path | None = None
        created: list[Path] = []
        handler: logging.Handler | None = None
        try:
            output.check_output(out, photo, overwrite=False)
            output.check_photo(photo)
            if self.scratch is not None:
                work = Path(tempfile.mkdtemp(prefix="." + out.name[:40] + ".tmp-", dir=self.scratch))
            else:
                work, created = output.prepare(out)
            handler = logging.FileHandler(work / "engine.log", encoding="utf-8")
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            logging.getLogger("engine").addHandler(handler)
            metrics = self._fit(photo, out, work, cancel, warnings, t0)
            work = None  # it is ``out`` now
            return PhotoResult("ok", 0, metrics=metrics, seconds=round(time.perf_counter() - t0, 3),
                               warnings=warnings)
        except CancelledError:
            res = PhotoResult("cancelled", 130, "cancelled", "The fit was cancelled; nothing was written.")
        except KeyboardInterrupt:
            res = PhotoResult("cancelled", 130, "cancelled", "The fit was cancelled; nothing was written.")
        except EngineError as e:
            res = PhotoResult("failed", e.exit_code, e.code, e.message, detail=e.detail)
        except MemoryError:
            res = PhotoResult("failed", 1, "internal", "The engine ran out of memory. Use a smaller photo "
                              "or the 'fast' preset.", detail=traceback.format_exc())
        except OSError as e:
            err = output.os_error_to_output_error(e, out)
            if err is not None:
                res = PhotoResult("failed", err.exit_code, err.code, err.message)
            else:
                res = PhotoResult("failed", 1, "internal", f"Internal error: {type(e).__name__}: {e}.",
                                  detail=traceback.format_exc())
        except Exception as e:  # noqa: BLE001 - one bad photo must not stop a batch
            res = PhotoResult("failed", 1, "internal", f"Internal error: {type(e).__name__}: {e}.",
                              detail=traceback.format_exc())
        finally:
            if handler is not None:
                logging.getLogger("engine").removeHandler(handler)
                handler.close()
            if work is not None:
                shutil.rmtree(work, ignore_errors=True)
                output.remove_created(created)
        res.seconds = round(time.perf_counter() - t0, 3)
        res.warnings = warnings
        return res

    def _fit(self, photo_path: Path, out: Path, work: Path, cancel: Callable[[], bool],
             warnings: list[str], t0: float) -> dict:
        from ..io.image import load_photo
        from . import pipeline
        from .hooks import Hooks
        from .results import write_json
        from .run import peak_rss_mb, photo_camera

        def warn(message: str) -> None:
            log.warning("%s", message)
            warnings.append(message)

        opts = self.options
        if cancel():
            raise CancelledError("The fit was cancelled.")
        photo = load_photo(photo_path)
        H, W = photo.shape[:2]
        K_full, focal_source = photo_camera(photo_path, W, H, opts.focal_35mm, self.cfg, warn)
        hooks = Hooks(cancel=cancel, warn=warn)
        hooks.check_cancel()
        info = {
            "photo": str(photo_path), "focal_source": focal_source,
            "device": str(self.device), "backend": self.ctx.backend, "threads": self.threads,
            "preset": self.cfg.preset, "seed": opts.seed,
            "models": {"face_model": "ict-facekit-light", "landmarks": opts.landmarks,
                       "recognizer": self.recognizer.name if self.recognizer is not None else None},
        }
        fit, result = pipeline.run(self.env, photo, K_full, work, info, landmarks=opts.landmarks,
                                   face_index=0, photo_path=photo_path, report=opts.report, hooks=hooks)
        timings = {"load": 0.0, **fit.timings, "total": time.perf_counter() - t0}
        result["timings"] = {k: round(v, 3) for k, v in timings.items()}
        result["peak_rss_mb"] = peak_rss_mb()
        result["warnings"] = list(warnings)
        write_json(work / "result.json", result)
        hooks.check_cancel()
        output.place(work, out, overwrite=False, photo=photo_path, engine_version=__version__)
        log.info("result written to %s in %.1f s", out, timings["total"])
        return {k: (round(float(v), 6) if isinstance(v, (int, float)) else v)
                for k, v in fit.metrics.items()}


def load_session(options: FitOptions, scratch: Path | None = None) -> FitSession:
    """``FitSession(options, scratch)``, with a missing package reported as a MissingModelError
    (the environment, not a photo: every photo would fail)."""
    try:
        return FitSession(options, scratch)
    except ModuleNotFoundError as e:
        raise MissingModelError(f"The engine environment is incomplete: the package '{e.name}' is not "
                                "installed.") from e
