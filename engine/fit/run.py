"""``python -m engine fit``: the command around the pipeline - protocol, cancel, logging, the
temporary result folder and error codes (docs/protocol.md)."""

from __future__ import annotations

import argparse
import logging
import os
import platform
import resource
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

from .. import __version__
from ..errors import CancelledError, EngineError
from ..io import output
from ..protocol import Emitter, is_cancel

log = logging.getLogger("engine")

# The run's stages: loading, then the pipeline's six steps (fit/pipeline.py), and the share of
# the whole run each takes, for the progress bar's fraction (from balanced fits of the shared
# photos on a 2-core CPU: load 0.3 s, detect 0.5, coarse 0.3, unwrap 0.4-1.9, fine 10-18,
# albedo 0.7-2.9, write 0.4-1.7).
STAGES = ("load", "detect", "coarse", "unwrap", "fine", "albedo", "write")
STAGE_SPAN = {"load": (0.0, 0.03), "detect": (0.03, 0.07), "coarse": (0.07, 0.09),
              "unwrap": (0.09, 0.13), "fine": (0.13, 0.86), "albedo": (0.86, 0.93),
              "write": (0.93, 1.0)}


def peak_rss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(r / (1024 * 1024) if sys.platform == "darwin" else r / 1024, 1)


class Run:
    """One fit run's plumbing."""

    def __init__(self, args: argparse.Namespace, emitter: Emitter):
        self.args = args
        self.emit = emitter
        self.cancel_event = threading.Event()
        self.t_start = time.perf_counter()
        self.stage_t0 = self.t_start
        self.stage = "load"
        self.warnings: list[str] = []  # result.json "warnings" and the protocol result

    # progress ------------------------------------------------------------------------------
    def set_stage(self, name: str) -> None:
        self.stage = name
        self.stage_t0 = time.perf_counter()
        self.emit.send("stage", name=name, index=STAGES.index(name), count=len(STAGES))
        log.info("stage: %s", name)

    def progress(self, stage: str, step: int, total: int, losses: dict) -> None:
        if self.stage != stage:
            self.set_stage(stage)
        lo, hi = STAGE_SPAN[stage]
        frac = lo + (hi - lo) * step / max(total, 1)
        elapsed = time.perf_counter() - self.t_start
        stage_elapsed = time.perf_counter() - self.stage_t0
        eta = None
        if step > 0 and stage == "fine":
            eta = stage_elapsed / step * (total - step) + 0.1 * elapsed
        elif frac > 0.2:
            eta = elapsed / frac * (1 - frac)
        self.emit.send("progress", stage=stage, step=step, total=total, fraction=round(frac, 4),
                       losses={k: round(v, 6) for k, v in losses.items()}, elapsed=round(elapsed, 2),
                       eta=None if eta is None else round(eta, 1))

    def warn(self, message: str) -> None:
        """Something the user should know about this result (shown by the extension)."""
        log.warning("%s", message)
        self.warnings.append(message)

    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def check_cancel(self) -> None:
        if self.cancelled():
            raise CancelledError("The fit was cancelled.")


def _stdin_watcher(run: Run) -> None:
    try:
        for line in sys.stdin:
            if is_cancel(line):
                log.info("cancel requested on stdin")
                run.cancel_event.set()
                return
    except (OSError, ValueError):
        return


def _protocol_stream():
    """Keep the real stdout for the protocol; anything else written to fd 1 (libraries, C code)
    goes to stderr, so it can never corrupt the stream."""
    try:
        sys.stdout.flush()
        fd = os.dup(1)
        os.dup2(2, 1)
        stream = os.fdopen(fd, "w", buffering=1, encoding="utf-8")
    except (OSError, ValueError):
        stream = sys.__stdout__
    sys.stdout = sys.stderr
    return stream


def _setup_logging(verbose_stream) -> logging.Handler:
    root = logging.getLogger("engine")
    root.setLevel(logging.INFO)
    root.handlers.clear()
    h = logging.StreamHandler(verbose_stream)
    h.setFormatter(logging.Formatter("[engine] %(message)s"))
    root.addHandler(h)
    return h


def run_cli(args: argparse.Namespace) -> int:
    stream = _protocol_stream() if args.json_progress else None
    emitter = Emitter(stream)
    _setup_logging(sys.stderr)
    run = Run(args, emitter)

    old_handlers = {}

    def on_signal(signum, frame):  # noqa: ARG001
        log.info("signal %d: cancelling", signum)
        run.cancel_event.set()

    # SIGHUP too: a closed terminal (or a parent that went away) cancels cleanly instead of leaving
    # the temporary and preview folders behind.
    for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", signal.SIGTERM)):
        try:
            old_handlers[sig] = signal.signal(sig, on_signal)
        except ValueError:  # not the main thread (e.g. called from tests)
            pass
    if args.json_progress:
        threading.Thread(target=_stdin_watcher, args=(run,), daemon=True, name="stdin-cancel").start()

    out: Path | None = None
    work: Path | None = None
    created: list[Path] = []
    preview_dir: Path | None = None
    file_handler: logging.Handler | None = None
    code = None
    detail = None
    keep = False  # keep the engine log: an internal error or a write that failed
    try:
        # Everything about the output and the photo that can be known is checked before the fit
        # (engine/io/output.py, docs/result-format.md "What the engine will never do").
        out = output.output_path(args.output)
        for name in photo_list(args):
            photo = Path(name).expanduser().absolute()
            output.check_output(out, photo, overwrite=args.overwrite)
            output.check_photo(photo)
        work, created = output.prepare(out)
        file_handler = logging.FileHandler(work / "engine.log", encoding="utf-8")
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger("engine").addHandler(file_handler)
        if args.json_progress:
            try:
                preview_dir = Path(tempfile.mkdtemp(prefix="ganfit-preview-"))
            except OSError as e:  # a full or read-only temp folder costs the previews, not the fit
                log.warning("no previews: cannot create a folder in %s (%s)", tempfile.gettempdir(), e)
        if not _fit(run, args, out, work, preview_dir):
            raise EngineError("The fit ended without a result.")
    except EngineError as e:
        code, exit_code, msg = e.code, e.exit_code, e.message
        detail = e.detail
        if isinstance(e, CancelledError):
            msg = "The fit was cancelled; nothing was written."
    except KeyboardInterrupt:
        code, exit_code, msg = "cancelled", 130, "The fit was cancelled; nothing was written."
    except MemoryError:
        code, exit_code, keep = "internal", 1, True
        msg = "The engine ran out of memory. Use a smaller photo or the 'fast' preset."
        detail = traceback.format_exc()
    except ModuleNotFoundError as e:
        code, exit_code, detail = "missing_model", 5, traceback.format_exc()
        need = "PyTorch" if (e.name or "").split(".")[0] == "torch" else f"the package '{e.name}'"
        msg = (f"The engine environment is incomplete: {need} is not installed for {sys.executable}. "
               "Set the engine up again (the extension's preferences), or install the engine's "
               f"requirements into that Python ({Path(__file__).resolve().parents[1] / 'requirements.txt'}, "
               "plus torch).")
    except OSError as e:
        err = output.os_error_to_output_error(e, out)
        keep = True
        if err is not None:
            code, exit_code, msg = err.code, err.exit_code, err.message
        else:
            code, exit_code = "internal", 1
            msg = f"Internal error: {type(e).__name__}: {e}. Please report it with the engine log."
        detail = traceback.format_exc()
    except Exception as e:  # noqa: BLE001 - every failure becomes one protocol error
        code, exit_code, keep = "internal", 1, True
        msg = f"Internal error: {type(e).__name__}: {e}. Please report it with the engine log."
        detail = traceback.format_exc()
    finally:
        if preview_dir is not None:
            shutil.rmtree(preview_dir, ignore_errors=True)
    kept_log = None
    if code is not None:
        # Failure: nothing half-written stays behind; the log is kept where the message says.
        if detail:
            log.error("%s", detail)
        log.error("error (%s): %s", code, msg)
    _close_log(file_handler)
    if code is not None and work is not None:
        if keep:
            kept_log = output.keep_log(work, out)
            if kept_log is not None:
                msg = f"{msg} The engine log is at {kept_log}."
        shutil.rmtree(work, ignore_errors=True)
        output.remove_created(created)
    for sig, h in old_handlers.items():
        signal.signal(sig, h)
    if code is None:
        return 0
    if kept_log is not None:
        log.error("the engine log is kept at %s", kept_log)
    emitter.send("error", code=code, exit_code=exit_code, msg=msg, detail=detail,
                 log=None if kept_log is None else str(kept_log))
    return exit_code


def _close_log(handler: logging.Handler | None) -> None:
    if handler is not None:
        logging.getLogger("engine").removeHandler(handler)
        handler.close()


def _fit(run: Run, args: argparse.Namespace, out: Path, work: Path, preview_dir: Path | None) -> bool:
    import numpy as np
    import torch

    from .. import render
    from ..io.image import load_photo
    from ..models.facemodel import load_face_model
    from . import pipeline
    from .session import FitOptions
    from .hooks import Hooks
    from .results import write_json

    timings: dict[str, float] = {}
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    device = pipeline.pick_device(args.device)
    ctx = render.create_context(device)
    run.emit.send("hello", engine=__version__, python=platform.python_version(), torch=torch.__version__,
                  device=str(device), backend=ctx.backend, threads=threads, pid=os.getpid(),
                  work_dir=str(work), preview_dir=None if preview_dir is None else str(preview_dir))
    log.info("engine %s, torch %s, device %s, backend %s, %d threads", __version__, torch.__version__,
             device, ctx.backend, threads)
    run.set_stage("load")
    photo_paths = [Path(p).expanduser().absolute() for p in photo_list(args)]
    photo_path = photo_paths[0]
    t = time.perf_counter()
    photos = []
    for p in photo_paths:
        photos.append(load_photo(p))
        run.check_cancel()
    photo = photos[0]
    H, W = photo.shape[:2]
    cfg = FitOptions.from_args(args).config()  # as every photo of a batch gets it
    multi = len(photos) > 1
    cams = [photo_camera(p, ph.shape[1], ph.shape[0], args.focal_35mm, cfg,
                         (lambda w, n=p.name: run.warn(f"{n}: {w}")) if multi else run.warn)
            for p, ph in zip(photo_paths, photos)]
    K_full, focal_source = cams[0]
    model = load_face_model(device)
    recognizer = None
    if cfg.identity:
        from ..perception.recognizer import load_recognizer
        recognizer = load_recognizer(args.recognizer, path=args.recognizer_path, device=device)
    check_recognizer = recognizer
    if multi and recognizer is None and args.recognizer != "none":  # the identity check only
        from ..perception.recognizer import load_recognizer
        check_recognizer = load_recognizer(args.recognizer, path=args.recognizer_path, device=device)
    env = pipeline.Env(model, cfg, ctx, device, recognizer, _texture_factory(args, device, cfg, run.warn))
    timings["load"] = time.perf_counter() - t
    run.check_cancel()

    preview_fn = None
    if preview_dir is not None:
        from PIL import Image

        def preview_fn(img: np.ndarray, step: int) -> None:
            p = preview_dir / f"preview_{step:04d}.png"
            try:
                Image.fromarray(img).save(p)
            except OSError as e:  # a full temp folder costs this preview, not the fit
                log.warning("preview %d not written (%s): %s", step, p, e)
                p.unlink(missing_ok=True)
                return
            run.emit.send("preview", path=str(p), step=step)

    def stage(name: str) -> None:
        run.set_stage(name)
        run.progress(name, 0, 1, {})

    hooks = Hooks(cancel=run.cancelled, progress=run.progress, preview=preview_fn, stage=stage,
                  warn=run.warn)
    info = {
        "photo": str(photo_path), "focal_source": focal_source,
        "device": str(device), "backend": ctx.backend, "threads": threads, "preset": cfg.preset,
        "seed": args.seed,
        "models": {"face_model": "ict-facekit-light", "landmarks": args.landmarks,
                   "recognizer": recognizer.name if recognizer is not None else None},
    }
    if multi:
        info["views"] = [{"photo": str(p), "focal_source": fs} for p, (_, fs) in zip(photo_paths, cams)]
        mf, result = pipeline.run_views(env, photos, [K for K, _ in cams], work, info, photo_paths,
                                        landmarks=args.landmarks, face_index=args.face_index,
                                        report=args.report, hooks=hooks, check_recognizer=check_recognizer)
        fit = mf.views[0]
    else:
        fit, result = pipeline.run(env, photo, K_full, work, info, landmarks=args.landmarks,
                                   face_index=args.face_index, photo_path=photo_path, report=args.report,
                                   hooks=hooks)
    timings.update(fit.timings)
    timings["total"] = time.perf_counter() - run.t_start
    result["timings"] = {k: round(v, 3) for k, v in timings.items()}
    result["peak_rss_mb"] = peak_rss_mb()
    result["warnings"] = list(run.warnings)
    write_json(work / "result.json", result)
    run.check_cancel()

    # Into place without ever replacing anything but an empty folder or an engine result (--overwrite).
    output.place(work, out, overwrite=args.overwrite, photo=photo_path, engine_version=__version__)
    log.info("result written to %s in %.1f s (peak RSS %.0f MB)", out, timings["total"], result["peak_rss_mb"])
    summary = {"total_s": result["timings"]["total"],
               "landmark_error_iod": round(fit.metrics.get("landmark_error_iod", float("nan")), 4),
               "identity_cosine": fit.metrics.get("identity_cosine")}
    run.emit.send("result", dir=str(out), result_json=str(out / "result.json"), summary=summary,
                  warnings=list(run.warnings))
    return True


def photo_list(args: argparse.Namespace) -> list[str]:
    """The photos of a ``fit`` command line: ``args.photos`` (``cli.resolve_photos``), else
    ``args.photo`` and ``args.more_photos`` as parsed."""
    photos = getattr(args, "photos", None)
    if isinstance(photos, list) and photos:
        return photos
    return [args.photo, *(getattr(args, "more_photos", None) or [])]


def photo_camera(photo_path: Path, width: int, height: int, focal_35mm: float | None, cfg,
                 warn) -> tuple:
    """The camera of the photo, as ``fit`` and ``batch`` both take it: (intrinsics, focal source).
    The user's --focal-35mm, else the photo's EXIF; with neither, None: the pipeline takes the focal
    length from the face's size in the photo and an assumed camera-to-face distance
    (``pipeline.prior_camera``), which no crop of the photo changes."""
    from ..camera import Intrinsics, focal_px_from_35mm
    from ..io.image import read_exif_focal_35mm
    f35 = focal_35mm or read_exif_focal_35mm(photo_path)
    if not f35:
        warn(f"The photo records no focal length; assumed the camera was about "
             f"{cfg.camera.subject_distance_cm / 100:g} m from the face. Pass --focal-35mm if you "
             "know the lens (35 mm equivalent, for this image's frame).")
        return None, "prior"
    return Intrinsics.from_focal(focal_px_from_35mm(f35, width, height), width, height), \
        ("user" if focal_35mm else "exif")


def _texture_factory(args, device, cfg, warn=None):
    from .texture import DEFAULT_MODEL, GeneratorTexture, TexelTexture, load_generator
    choice = args.texture_model or "default"
    if choice == "default":
        if not DEFAULT_MODEL.is_file():
            if warn is not None:
                warn(f"The shipped texture model is missing ({DEFAULT_MODEL}); fitted a per-texel texture "
                     "instead (--texture-model texel). Reinstall the engine to get the learned model.")
            choice = "texel"
        else:
            choice = str(DEFAULT_MODEL)
    if choice == "texel":
        return lambda base: TexelTexture(base)
    module, meta = load_generator(choice, device)
    res = min(cfg.texture_res, cfg.unwrap.max_res)  # the size the fine stage's texture works at
    return lambda base: GeneratorTexture(module, meta, resolution=res)
