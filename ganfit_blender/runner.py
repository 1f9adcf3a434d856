"""Connects engine jobs (``client.EngineClient``, no bpy) to Blender.

Only the main thread touches bpy: :func:`poll` (an app timer, persistent so that it survives file
loads) drains every job's event queue into ``window_manager.ganfit`` and tags redraws. Operators
call :func:`poll` themselves too, because app timers do not fire in every host (PyPI bpy, blocking
runs).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import bpy
from bpy.app.handlers import persistent

from . import client as client_mod
from . import command, contract, paths

POLL_INTERVAL_S = 0.1
PREVIEW_IMAGE = ".ganfit_preview"


class FitStartError(Exception):
    """The engine could not be started; the message says what to do."""


@dataclass
class Job:
    """One fit: its subprocess and what it has told us so far."""

    client: client_mod.EngineClient
    photo: str  # the (first) photo, or the folder of photos
    result_dir: Path
    argv: list[str]
    state: str = "running"  # running | done | failed | cancelled
    stage: str = ""
    progress: float = 0.0
    eta: float | None = None
    message: str = ""
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    hello: dict[str, Any] = field(default_factory=dict)
    preview_path: str = ""
    started: float = field(default_factory=time.monotonic)
    returncode: int | None = None
    python: str = ""
    # What this job's engine creates outside the result folder, for clean-up after a crash:
    # the temp folders it named (hello's work_dir/preview_dir, the folder of its previews), and
    # the ``.<name>.tmp-*`` siblings that existed before it started (never ours to remove).
    engine_dirs: set[str] = field(default_factory=set)
    tmp_before: frozenset[str] = frozenset()
    temp_dir: Path | None = None  # the engine's TMPDIR, made for this job, removed at its end
    photos: list[str] = field(default_factory=list)  # every photo given (several: one head)
    photos_dir: str = ""  # or the folder of photos (``--photos``)

    @property
    def finished(self) -> bool:
        return self.state != "running"

    @property
    def pid(self) -> int | None:
        return self.client.pid

    def cancel(self) -> None:
        self.client.cancel()

    def error_message(self) -> str:
        if self.error is None:
            return ""
        msg = str(self.error.get("msg") or "The engine failed.")
        code = self.error.get("code")
        if code == "output" and not self.error.get("synthetic"):
            msg = f"{msg} In Blender: choose another Result Folder (fit options or preferences)."
        if code and code not in ("cancelled",) and not self.error.get("synthetic"):
            msg = f"{msg} [{code}]"
        return msg


_jobs: list[Job] = []


def build_command(python: str, photo: command.PhotoArg, result_dir: Path, *, preset: str,
                  device: str, photos_dir: str | Path | None = None,
                  texture_res: int | None = None, neutral: bool = False,
                  max_steps: int | None = None, overwrite: bool = False,
                  extra_args: Sequence[str] = ()) -> list[str]:
    """The engine's ``fit`` command line (``command.fit_command``)."""
    return command.fit_command(python, photo, result_dir, photos_dir=photos_dir, preset=preset,
                               device=device, texture_res=texture_res, neutral=neutral,
                               max_steps=max_steps, overwrite=overwrite, extra_args=extra_args)


def start_fit(photo: command.PhotoArg, result_dir: Path, *, python: str,
              photos_dir: str | Path | None = None, preset: str = "balanced",
              device: str = "auto", texture_res: int | None = None, neutral: bool = False,
              max_steps: int | None = None, overwrite: bool = False,
              extra_args: Sequence[str] = (),
              extra_env: dict[str, str] | None = None) -> Job:
    """Start one engine fit in a subprocess and track it.

    Args:
        photo: one photo, or several photos of one person (one head with a camera per photo);
            None with ``photos_dir``.
        photos_dir: a folder of photos of one person instead (the engine's ``--photos``).
        overwrite: replace ``result_dir`` if it is a result folder the engine wrote; any other
            existing folder is refused here, before the engine runs.

    Raises:
        FitStartError: no engine, bad photo path, an output folder that is not ours to replace,
            another running job writing the same folder, or the interpreter cannot be started.
    """
    if not python:
        raise FitStartError("No engine Python set")
    if not Path(python).is_file():
        raise FitStartError(f"Engine Python not found: {python}. Fix the path in the GANFit "
                            "preferences or install the engine environment")
    photos = command.photo_list(photo)
    if photos_dir is not None:
        if photos:
            raise FitStartError("Give photos or a folder of photos, not both")
        if not Path(photos_dir).is_dir():
            raise FitStartError(f"Photo folder not found: {photos_dir}")
        inputs = [str(photos_dir)]
    else:
        if not photos:
            raise FitStartError("Choose a photo first")
        for one in photos:
            if not Path(one).is_file():
                raise FitStartError(f"Photo not found: {one}")
        inputs = photos
    root = paths.find_engine_root()
    if root is None:
        raise FitStartError("The engine is missing from the extension; reinstall it")
    result_dir = Path(result_dir)
    check_output_dir(result_dir, inputs, overwrite)
    for other in _jobs:
        if not other.finished and other.result_dir.resolve() == result_dir.resolve():
            raise FitStartError(f"Another fit is already writing {result_dir}: wait for it or "
                                "choose another Result Folder")
    try:
        result_dir.parent.mkdir(parents=True, exist_ok=True)
        log_path = paths.log_path_for(result_dir)
        tmp_before = frozenset(p.name for p in paths.engine_tmp_siblings(result_dir))
    except OSError as exc:
        raise FitStartError(f"Cannot write results under {result_dir.parent}: {exc}") from exc
    argv = build_command(python, photos, result_dir, photos_dir=photos_dir, preset=preset,
                         device=device, texture_res=texture_res, neutral=neutral, max_steps=max_steps,
                         overwrite=overwrite and result_dir.exists(), extra_args=extra_args)
    # A temp folder of this job's own: whatever the engine puts in the temp folder (its
    # ganfit-preview-* folder, library scratch files) is removed with it when the job ends, even
    # after a SIGKILL, and nothing of another job or program is touched.
    try:
        job_tmp = Path(tempfile.mkdtemp(prefix=paths.JOB_TMP_PREFIX))
    except OSError as exc:
        raise FitStartError(f"Cannot create a temporary folder: {exc}") from exc
    env = paths.engine_env(root, {**paths.temp_env(job_tmp), **(extra_env or {})})
    cl = client_mod.EngineClient(argv, cwd=root, env=env, log_path=log_path)
    try:
        cl.start()
    except OSError as exc:
        shutil.rmtree(job_tmp, ignore_errors=True)
        raise FitStartError(f"Could not start the engine with {python}: {exc}") from exc
    job = Job(client=cl, photo=inputs[0], result_dir=result_dir, argv=argv,
              message="Starting the engine", python=str(python), tmp_before=tmp_before,
              temp_dir=job_tmp, photos=photos,
              photos_dir=str(photos_dir) if photos_dir is not None else "")
    _jobs.append(job)
    _ensure_timer()
    _sync_wm(job)
    return job


def check_output_dir(result_dir: Path, photo: str | Sequence[str], overwrite: bool) -> None:
    """Refuse, before the engine runs, an output folder the fit must not write: one that exists
    and is not a result folder the engine wrote (whatever ``overwrite`` says), one that holds a
    photo (or the folder of photos), and an existing result folder without ``overwrite``.

    Args:
        photo: the photo, or every photo of the fit, or the folder of photos.

    Raises:
        FitStartError: with what to do.
    """
    if not (result_dir.exists() or result_dir.is_symlink()):
        return
    for one in command.photo_list(photo):
        try:
            holds_photo = Path(one).resolve().is_relative_to(result_dir.resolve())
        except (OSError, RuntimeError):  # a looping symlink
            holds_photo = True
        if holds_photo:
            raise FitStartError(f"{result_dir} holds the photo {Path(one).name} itself: choose "
                                "another Result Folder (a fit never writes over its own input)")
    if not contract.is_result_folder(result_dir):
        raise FitStartError(f"{result_dir} already exists and is not a GANFit result folder: "
                            "choose another Result Folder (the add-on never replaces other "
                            "folders)")
    if not overwrite:
        raise FitStartError(f"The result folder {result_dir} already exists: choose another "
                            "Result Folder or turn on Overwrite to replace that result")


def active_job() -> Job | None:
    """The newest job that is still running."""
    for job in reversed(_jobs):
        if not job.finished:
            return job
    return None


def jobs() -> list[Job]:
    return list(_jobs)


# ---------------------------------------------------------------------------------------------
# Main-thread polling
# ---------------------------------------------------------------------------------------------
def _window_manager() -> Any:
    wm = getattr(bpy.context, "window_manager", None)
    if wm is None and len(bpy.data.window_managers):
        wm = bpy.data.window_managers[0]
    return wm


def _runtime() -> Any:
    wm = _window_manager()
    return getattr(wm, "ganfit", None) if wm is not None else None


def _apply(job: Job, msg: dict[str, Any]) -> None:
    kind = msg.get("type")
    if kind == "hello":
        job.hello = msg
        for key in ("work_dir", "preview_dir"):
            if isinstance(msg.get(key), str) and msg[key]:
                job.engine_dirs.add(msg[key])
        job.message = f"Engine {msg.get('engine', '?')} on {msg.get('device', '?')}"
    elif kind == "stage":
        job.stage = str(msg.get("name", ""))
        idx, count = msg.get("index"), msg.get("count")
        job.message = (f"Stage {int(idx) + 1}/{count}: {job.stage}"
                       if isinstance(idx, int) and count else job.stage)
        if isinstance(idx, int) and isinstance(count, int) and count > 0:
            job.progress = max(job.progress, idx / count)
    elif kind == "progress":
        frac = msg.get("fraction")
        if isinstance(frac, (int, float)):
            job.progress = max(0.0, min(1.0, float(frac)))
        eta = msg.get("eta")
        job.eta = float(eta) if isinstance(eta, (int, float)) else None
        if msg.get("stage"):
            job.stage = str(msg["stage"])
        step, total = msg.get("step"), msg.get("total")
        if step is not None and total:
            job.message = f"{job.stage}: step {step}/{total}"
    elif kind == "preview":
        if isinstance(msg.get("path"), str) and msg["path"]:
            job.engine_dirs.add(str(Path(msg["path"]).parent))
        _load_preview(job, msg.get("path"))
    elif kind == "result":
        job.result = msg
    elif kind == "error":
        job.error = msg
    elif kind == "exit":
        job.returncode = msg.get("returncode")
        if job.temp_dir is not None:  # the child is gone: its temp files are garbage now
            shutil.rmtree(job.temp_dir, ignore_errors=True)
        terminal = job.client.terminal or {}
        if terminal.get("type") == "result" and job.returncode == 0:
            job.state, job.error = "done", None
            job.result = terminal
            job.progress = 1.0
            job.message = "Done"
        else:
            job.error = terminal if terminal.get("type") == "error" else job.error
            if job.error is None:
                job.error = {"type": "error", "code": "internal", "msg": "The engine failed."}
            env_error = client_mod.environment_error(job.error, job.python or job.argv[0],
                                                     job.client.log_path)
            if env_error is not None:
                job.error = env_error
            cancelled = job.error.get("code") == "cancelled" or job.client.cancel_requested
            job.state = "cancelled" if cancelled else "failed"
            job.message = "Cancelled" if cancelled else "Failed"
            _remove_partial_output(job)


def _remove_partial_output(job: Job) -> None:
    """After a failed run the child is gone; a killed engine could not remove what it made
    outside the result folder. Remove only what this job's engine made: the ``.<name>.tmp-*``
    siblings that were not there when the job started (the name is reserved for this job,
    ``paths.new_result_dir``) or that it named in ``hello``, and the ``ganfit-preview-*`` folder
    it named (``hello`` or its ``preview`` paths), with only the preview PNGs in it."""
    named = {Path(d) for d in job.engine_dirs}
    try:
        for tmp in paths.engine_tmp_siblings(job.result_dir):
            if tmp.name not in job.tmp_before or tmp in named:
                shutil.rmtree(tmp, ignore_errors=True)
    except OSError:
        pass  # best effort: a leftover temp folder is harmless
    for folder in named:
        if folder.name.startswith(paths.ENGINE_PREVIEW_PREFIX):
            paths.remove_preview_dir(folder)
        elif folder.name.startswith(f".{job.result_dir.name}.tmp-") \
                and folder.parent == job.result_dir.parent:
            shutil.rmtree(folder, ignore_errors=True)


def _load_preview(job: Job, src: Any) -> None:
    """Copy the engine's preview (valid only until the next one) and show it in our image."""
    if not src:
        return
    dst = paths.preview_copy_path(job.result_dir)
    try:
        shutil.copyfile(src, dst)
    except OSError:
        return  # the engine already replaced it; the next preview will do
    job.preview_path = str(dst)
    img = bpy.data.images.get(PREVIEW_IMAGE)
    try:
        if img is None:
            img = bpy.data.images.load(str(dst), check_existing=False)
            img.name = PREVIEW_IMAGE
        else:
            if img.filepath != str(dst):
                img.filepath = str(dst)
            img.reload()
        img.use_fake_user = False
        if not bpy.app.background:
            img.preview_ensure()
            img.preview.reload()
    except (RuntimeError, AttributeError):
        pass  # an unreadable preview must not stop the fit


def _sync_wm(job: Job | None) -> None:
    rt = _runtime()
    if rt is None or job is None:
        return
    rt.running = not job.finished
    rt.progress = job.progress
    rt.stage = job.stage
    rt.eta = job.eta if job.eta is not None else -1.0
    rt.message = job.message
    rt.pid = job.pid or 0 if not job.finished else 0
    if job.preview_path:
        rt.preview_image = PREVIEW_IMAGE
    if job.finished:
        if job.state == "done" and job.result:
            rt.last_error = ""
            rt.last_result = str(job.result.get("dir") or job.result_dir)
            rt.last_summary = format_summary(job.result.get("summary") or {})
        elif job.state in ("failed", "cancelled"):
            rt.last_error = job.error_message()
    else:
        rt.last_error = ""
        rt.last_warnings = ""


def format_summary(summary: dict[str, Any]) -> str:
    parts = []
    if isinstance(summary.get("total_s"), (int, float)):
        parts.append(f"{summary['total_s']:.1f} s")
    if isinstance(summary.get("landmark_error_iod"), (int, float)):
        parts.append(f"landmark error {100 * summary['landmark_error_iod']:.1f}% IOD")
    if isinstance(summary.get("identity_cosine"), (int, float)):
        parts.append(f"identity {summary['identity_cosine']:.2f}")
    return ", ".join(parts) or "Done"


def _tag_redraw() -> None:
    wm = _window_manager()
    if wm is None:
        return
    for window in wm.windows:
        screen = window.screen
        if screen is None:
            continue
        for area in screen.areas:
            if area.type in ("VIEW_3D", "PREFERENCES"):
                area.tag_redraw()


def poll() -> float | None:
    """Drain all jobs' events into Blender. Returns the next timer interval, or None (which
    unregisters the timer) when no job is running."""
    changed = None
    for job in list(_jobs):
        if job.finished:
            continue
        for msg in client_mod.drain(job.client.events):
            _apply(job, msg)
        changed = job
    if changed is not None:
        _sync_wm(active_job() or changed)
        _tag_redraw()
    # Keep only running jobs and the last finished one (operators may still read it).
    while len(_jobs) > 1 and _jobs[0].finished:
        _jobs.pop(0)
    return POLL_INTERVAL_S if active_job() is not None else None


def wait(job: Job, timeout: float | None = None,
         should_cancel: Callable[[], bool] | None = None) -> Job:
    """Block (polling on this thread) until ``job`` has finished; used by background runs."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while not job.finished:
        poll()
        if job.finished:
            break
        if should_cancel is not None and should_cancel():
            job.cancel()
        if deadline is not None and time.monotonic() > deadline and not job.client.cancel_requested:
            job.cancel()
        job.client.finished.wait(0.05)
    poll()
    return job


def cancel_all() -> None:
    for job in _jobs:
        if not job.finished:
            job.cancel()


def _ensure_timer() -> None:
    if not bpy.app.timers.is_registered(poll):
        bpy.app.timers.register(poll, first_interval=POLL_INTERVAL_S, persistent=True)


@persistent
def _on_load_pre(*_args: Any) -> None:
    # A running fit belongs to the file it was started from: stop it before another is loaded.
    stop_all(unregister_timer=False)


def register() -> None:
    if _on_load_pre not in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.append(_on_load_pre)


def unregister() -> None:
    stop_all()
    while _on_load_pre in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.remove(_on_load_pre)


def stop_all(unregister_timer: bool = True) -> None:
    """Stop every engine process (cancel, then terminate/kill) and forget all jobs."""
    for job in list(_jobs):
        if job.client.proc is not None and not job.client.finished.is_set():
            job.client.stop(grace=2.0)
        if not job.finished:
            for msg in client_mod.drain(job.client.events):
                _apply(job, msg)
    _jobs.clear()
    if unregister_timer and bpy.app.timers.is_registered(poll):
        bpy.app.timers.unregister(poll)
    img = bpy.data.images.get(PREVIEW_IMAGE) if unregister_timer else None
    if img is not None and img.users == 0:
        try:
            bpy.data.images.remove(img)
        except (RuntimeError, ReferenceError):
            pass
