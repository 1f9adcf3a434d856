"""The managed engine environment: a private virtual env that runs the bundled engine.

The add-on's preferences create it with :class:`Installer` and find it with :func:`env_python`.
This module imports neither bpy nor anything outside the standard library, so it runs (and is
tested) outside Blender; it never touches bpy data from its worker thread.

Layout::

    <user_dir>/engine-env/               default_env_dir(user_dir)
        bin/python (Scripts/python.exe)  the interpreter env_python() returns
        ganfit-env.json                  the marker, written last: no marker, no environment

An install is built in a temporary sibling folder and renamed into place only when every step
succeeded, so a failed or cancelled install never leaves a folder that looks complete.

Steps (each one a subprocess whose output goes to the log file):
check the base Python (3.11-3.13 with venv + ensurepip) -> create the venv -> upgrade pip ->
``torch==2.13.0`` (CPU index by default for 'cpu') -> ``engine/requirements.txt`` ->
optional ``diffrp-nvdiffrast`` -> ``python -m engine check --json`` (smoke test) -> marker.

Which torch build arrives depends on the index, not on the variant's name: PyPI's Linux x86_64
torch is the multi-GB CUDA build. A 'cpu' install without a torch index there (``pypi``, or
pip's own configuration) is warned about, its disk check is sized for the CUDA build, and the
marker records the build that was really installed (``variant``, ``torch_build``,
``torch_cuda``), read from the installed torch, next to ``requested_variant``.

Environment variables (read when an Installer is created):

``GANFIT_TORCH_INDEX_URL``
    index for the torch step; empty or ``pypi`` means "no --index-url" (pip's own config:
    e.g. a local wheel folder). Overrides the per-variant default.
``GANFIT_PIP_ARGS``
    extra pip arguments (shell syntax), appended to every pip call, e.g.
    ``--no-index --find-links /path/to/wheels``.
"""

from __future__ import annotations

import collections
import errno
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Mapping, Sequence

TORCH_VERSION = "2.13.0"
TORCH_REQUIREMENT = f"torch=={TORCH_VERSION}"
NVDIFFRAST_REQUIREMENT = "diffrp-nvdiffrast"
PYTHON_MIN = (3, 11)
PYTHON_MAX = (3, 13)  # inclusive
VARIANTS = ("cpu", "cuda")

# The CPU build from PyTorch's own index is ~200 MB instead of the multi-GB CUDA build PyPI
# serves on Linux. None: use pip's configuration (PyPI). On Windows PyPI's torch is CPU-only, so
# a CUDA install there needs GANFIT_TORCH_INDEX_URL set to a https://download.pytorch.org/whl/cuXXX
# index that carries torch 2.13.0.
TORCH_INDEX_URLS: dict[str, str | None] = {
    "cpu": "https://download.pytorch.org/whl/cpu",
    "cuda": None,
}
ENV_TORCH_INDEX = "GANFIT_TORCH_INDEX_URL"
ENV_PIP_ARGS = "GANFIT_PIP_ARGS"

MARKER_NAME = "ganfit-env.json"
MARKER_FORMAT = 1
ENV_DIR_NAME = "engine-env"
_TMP_INFIX = ".installing-"
_OLD_INFIX = ".old-"

# Rough disk needs (venv + pip cache + wheels being unpacked), checked before anything is written,
# by the torch build that will arrive (see expected_torch_build), not by the variant's name.
MIN_FREE_BYTES = {"cpu": 2 * 1024**3, "cuda": 8 * 1024**3}


def pypi_torch_is_cuda(system: str | None = None, machine: str | None = None) -> bool:
    """Whether PyPI's torch wheel for this platform is the CUDA build (Linux x86_64: yes,
    several GB with its nvidia-* / cuda-* packages; Windows, macOS and Linux aarch64: CPU)."""
    system = sys.platform if system is None else system
    machine = (platform.machine() if machine is None else machine).lower()
    return system.startswith("linux") and machine in ("x86_64", "amd64")


def expected_torch_build(variant: str, torch_index_url: str | None,
                         extra_pip_args: Sequence[str] = (), system: str | None = None,
                         machine: str | None = None) -> str:
    """'cpu' or 'cuda': the torch build an install will most likely get. 'cpu' from no torch
    index (PyPI / pip's configuration) on a platform whose PyPI torch is the CUDA build gets
    'cuda', unless pip is limited to local files (``--no-index``)."""
    if variant == "cuda":
        return "cuda"
    if torch_index_url or "--no-index" in extra_pip_args:
        return "cpu"
    return "cuda" if pypi_torch_is_cuda(system, machine) else "cpu"


CPU_FROM_PYPI_WARNING = (
    "The CPU engine was asked for without a CPU torch index: on Linux the package index's (PyPI's) "
    "torch is the CUDA build (several GB, about 8 GB of free disk space needed). For the ~200 MB "
    "CPU build set the torch index to https://download.pytorch.org/whl/cpu "
    "(GANFIT_TORCH_INDEX_URL).")

# Run in the new venv after the torch step: which build it is, without importing torch (that
# would initialise CUDA); its size on disk with the CUDA/nvidia packages pip put beside it.
_TORCH_PROBE = r"""
import importlib.metadata as md, importlib.util, json, os, runpy
spec = importlib.util.find_spec("torch")
root = os.path.dirname(spec.origin)
info = {"version": md.version("torch"), "cuda": None}
vf = os.path.join(root, "version.py")
if os.path.isfile(vf):
    info["cuda"] = runpy.run_path(vf).get("cuda")
site = os.path.dirname(root)
size = 0
for name in os.listdir(site):
    if name == "torch" or name.split("_")[0].split("-")[0] in ("nvidia", "cuda", "triton"):
        for d, _, files in os.walk(os.path.join(site, name)):
            size += sum(os.path.getsize(os.path.join(d, f)) for f in files
                        if not os.path.islink(os.path.join(d, f)))
info["bytes"] = size
print(json.dumps(info))
"""

_LOG_TAIL_LINES = 40
_CANCEL_GRACE_S = 5.0


# ---------------------------------------------------------------------------------------------
# Locating an environment


def default_env_dir(user_dir: Path) -> Path:
    """Where the add-on keeps its engine environment inside its user folder."""
    return Path(user_dir) / ENV_DIR_NAME


def venv_python_path(env_dir: Path) -> Path:
    """The interpreter of a venv at ``env_dir`` (whether or not it exists)."""
    env_dir = Path(env_dir)
    if os.name == "nt":
        return env_dir / "Scripts" / "python.exe"
    return env_dir / "bin" / "python"


def read_marker(env_dir: Path) -> dict[str, Any] | None:
    """The marker of a completed install, or None when there is none or it is unreadable."""
    try:
        data = json.loads((Path(env_dir) / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("requirements_hash"), str):
        return None
    return data


def env_python(env_dir: Path, engine_root: Path | None = None) -> Path | None:
    """The interpreter of a complete engine environment, else None.

    Complete means: the marker written at the very end of a successful install is there and
    the interpreter exists. With ``engine_root`` the marker's requirement hash must also match
    that engine's requirements (an add-on update that changed them needs a reinstall).
    """
    marker = read_marker(env_dir)
    if marker is None:
        return None
    python = venv_python_path(env_dir)
    if not python.is_file():
        return None
    if engine_root is not None:
        try:
            if marker["requirements_hash"] != requirements_hash(engine_root):
                return None
        except OSError:
            return None
    return python


def _engine_package_dir(engine_root: Path) -> Path:
    """Accept the engine package folder itself or a folder that contains ``engine/``."""
    engine_root = Path(engine_root)
    if (engine_root / "requirements.txt").is_file() or (engine_root / "__main__.py").is_file():
        return engine_root
    if (engine_root / "engine" / "requirements.txt").is_file():
        return engine_root / "engine"
    return engine_root


def requirements_file(engine_root: Path) -> Path:
    return _engine_package_dir(engine_root) / "requirements.txt"


def read_requirements(path: Path) -> list[str]:
    """Requirement lines of a requirements file: comments, blanks and options dropped."""
    lines = []
    for raw in Path(path).read_text(encoding="utf-8").splitlines():
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if line and not line.startswith("-"):
            lines.append(line)
    return lines


def requirements_hash(engine_root: Path) -> str:
    """A hash of what an environment for this engine must contain (requirements + torch pin)."""
    reqs = read_requirements(requirements_file(engine_root))
    text = "\n".join([TORCH_REQUIREMENT, *sorted(reqs)])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Errors and messages


class InstallError(Exception):
    """A step failed; ``str(err)`` is the message the user sees."""


class _Cancelled(Exception):
    pass


_NETWORK_PATTERNS = (
    "failed to establish a new connection",
    "newconnectionerror",
    "temporary failure in name resolution",
    "name or service not known",
    "nodename nor servname",
    "getaddrinfo failed",
    "max retries exceeded",
    "connecttimeouterror",
    "connection refused",
    "network is unreachable",
    "proxyerror",
    "could not fetch url",
    "read timed out",
)
_NO_SPACE_PATTERNS = ("no space left on device", "[errno 28]", "not enough space on the disk")
_PERMISSION_PATTERNS = ("permission denied", "[errno 13]", "access is denied")


def _find_after(text: str, needle: str) -> str | None:
    low = text.lower()
    i = low.rfind(needle)
    if i < 0:
        return None
    rest = text[i + len(needle):].strip().splitlines()
    return rest[0].strip().rstrip(")").strip() if rest else None


def explain_pip_failure(what: str, returncode: int, tail: Sequence[str], log_path: Path,
                        no_index: bool = False) -> str:
    """A human, actionable message for a failed pip run, from its exit code and last lines."""
    text = "\n".join(tail)
    low = text.lower()
    last = "\n".join(tail[-8:])
    if any(p in low for p in _NO_SPACE_PATTERNS):
        return (f"Not enough disk space while installing {what}: free some space (or pick an "
                f"engine folder on another drive) and install again. Log: {log_path}")
    if any(p in low for p in _NETWORK_PATTERNS):
        return (f"pip could not reach the package index while installing {what}: connect to the "
                f"internet (check a proxy or firewall), or set a local wheel folder "
                f"(extra pip arguments: --no-index --find-links <folder>). Log: {log_path}")
    missing = (_find_after(text, "no matching distribution found for")
               or _find_after(text, "could not find a version that satisfies the requirement"))
    if missing:
        where = ("the local wheel folder (--no-index)" if no_index
                 else "the package index")
        return (f"pip could not find {missing} in {where} while installing {what}: check the "
                f"wheel folder / index URL in the preferences, or your internet connection. "
                f"Log: {log_path}")
    if any(p in low for p in _PERMISSION_PATTERNS):
        return (f"pip was not allowed to write files while installing {what}: choose an engine "
                f"folder you can write to. Log: {log_path}\n{last}")
    return (f"pip failed (exit code {returncode}) while installing {what}. Last lines of the log "
            f"({log_path}):\n{last}")


# ---------------------------------------------------------------------------------------------
# The installer

_CHECK_CODE = r"""
import sys, json
info = {"version": list(sys.version_info[:3]), "executable": sys.executable,
        "implementation": sys.implementation.name if hasattr(sys, "implementation") else "?"}
try:
    import importlib.util as u
    info["venv"] = u.find_spec("venv") is not None
    info["ensurepip"] = u.find_spec("ensurepip") is not None
except Exception:
    info["venv"] = info["ensurepip"] = False
sys.stdout.write(json.dumps(info) + "\n")
"""

# (id, label, weight of the overall progress bar)
_STEPS: tuple[tuple[str, str, float], ...] = (
    ("check", "Checking the base Python", 0.02),
    ("venv", "Creating the virtual environment", 0.06),
    ("pip", "Upgrading pip", 0.04),
    ("torch", f"Installing PyTorch {TORCH_VERSION}", 0.50),
    ("requirements", "Installing the engine requirements", 0.28),
    ("nvdiffrast", "Installing nvdiffrast (compiles CUDA code)", 0.05),
    ("smoke", "Testing the engine (python -m engine check)", 0.04),
    ("finish", "Finishing", 0.01),
)

_DEFAULT = object()


class Installer:
    """Builds the engine environment in a background thread.

    Args:
        env_dir: final location of the venv (see :func:`default_env_dir`).
        base_python: interpreter the venv is made from (3.11-3.13 with venv and ensurepip);
            a path, or a command name looked up on PATH.
        variant: ``'cpu'`` or ``'cuda'``: which torch build.
        engine_root: the bundled engine package folder (``<ext>/engine``, holding
            ``requirements.txt`` and ``__main__.py``); its parent folder is accepted too.
        log_path: the whole log of every step (overwritten).
        extra_pip_args: appended to every pip call (plus ``$GANFIT_PIP_ARGS``), e.g.
            ``["--no-index", "--find-links", "/wheels"]``.
        with_nvdiffrast: also install ``diffrp-nvdiffrast`` (needs variant 'cuda' and nvcc).
        torch_index_url: index for the torch step; default: ``$GANFIT_TORCH_INDEX_URL`` if set,
            else :data:`TORCH_INDEX_URLS` [variant]. None or "" means pip's own configuration.
        upgrade_pip: run ``pip install --upgrade pip`` first.
        smoke_test: run ``python -m engine check --json`` before declaring success.
        env: environment overrides for the subprocesses (a None value removes a variable).
        min_free_bytes: disk space required before starting (default by variant; 0 disables).
        allow_network: False (pass ``bpy.app.online_access``) refuses to start unless the pip
            arguments use only local files (``--no-index`` with ``--find-links``).
    """

    def __init__(
        self,
        env_dir: Path,
        base_python: Path | str | None,
        variant: str = "cpu",
        engine_root: Path | None = None,
        log_path: Path | None = None,
        extra_pip_args: Sequence[str] = (),
        with_nvdiffrast: bool = False,
        *,
        torch_index_url: Any = _DEFAULT,
        upgrade_pip: bool = True,
        smoke_test: bool = True,
        env: Mapping[str, str | None] | None = None,
        min_free_bytes: int | None = None,
        allow_network: bool = True,
    ) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, not {variant!r}")
        if engine_root is None:
            raise ValueError("engine_root is required (the bundled engine folder)")
        self.env_dir = Path(env_dir).absolute()
        self.base_python = base_python
        self.variant = variant
        self.engine_dir = _engine_package_dir(Path(engine_root))
        self.log_path = Path(log_path) if log_path else self.env_dir.parent / "engine-install.log"
        self.extra_pip_args = list(extra_pip_args) + shlex.split(os.environ.get(ENV_PIP_ARGS, ""))
        self.with_nvdiffrast = with_nvdiffrast
        if torch_index_url is _DEFAULT:
            if ENV_TORCH_INDEX in os.environ:
                torch_index_url = os.environ[ENV_TORCH_INDEX]
            else:
                torch_index_url = TORCH_INDEX_URLS[variant]
        if torch_index_url in ("", "pypi", "none"):
            torch_index_url = None
        self.torch_index_url: str | None = torch_index_url
        self.upgrade_pip = upgrade_pip
        self.smoke_test = smoke_test
        self.env_overrides = dict(env or {})
        self.expected_build = expected_torch_build(variant, torch_index_url, self.extra_pip_args)
        self.min_free_bytes = (MIN_FREE_BYTES[self.expected_build] if min_free_bytes is None
                               else min_free_bytes)
        self.allow_network = allow_network
        # What the user should know though nothing failed (poll()['warnings'], the log).
        self.warnings: list[str] = []
        if variant == "cpu" and self.expected_build == "cuda":
            self.warnings.append(CPU_FROM_PYPI_WARNING)
        self.torch_info: dict[str, Any] | None = None  # the installed build (after the torch step)

        self._lock = threading.Lock()
        self._state = "idle"
        self._fraction = 0.0
        self._step = ""
        self._step_id = ""
        self._message = ""
        self._cancel = threading.Event()
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=_LOG_TAIL_LINES)
        self._log = None
        self._tmp_dir: Path | None = None
        self.check_result: dict[str, Any] | None = None  # parsed `engine check --json`
        self._base_exe: Path | None = None
        self._step_base = 0.0
        self._step_weight = 0.0

    # -- public API ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start installing in a background thread (once per Installer)."""
        with self._lock:
            if self._state != "idle":
                raise RuntimeError("this Installer was already started")
            self._state = "running"
            self._message = "Starting"
        self._thread = threading.Thread(target=self._run, name="ganfit-env-install", daemon=True)
        self._thread.start()

    def poll(self) -> dict[str, Any]:
        """``{'state', 'fraction', 'step', 'message'}`` (plus ``'step_id'``, ``'warnings'``);
        cheap, any thread.

        state: 'idle' | 'running' | 'done' | 'failed' | 'cancelled'; fraction in 0..1;
        step: the current step's label; message: what is happening, or why it failed;
        warnings: what the user should know though nothing failed (e.g. a CUDA torch arrived
        for the 'cpu' variant).
        """
        with self._lock:
            return {
                "state": self._state,
                "fraction": round(self._fraction, 4),
                "step": self._step,
                "message": self._message,
                "step_id": self._step_id,
                "warnings": list(self.warnings),
            }

    def cancel(self) -> None:
        """Stop the current step's subprocess; the worker then removes the partial env."""
        self._cancel.set()
        proc = self._proc
        if proc is not None:
            _terminate(proc)

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        """Block until the worker ends (or the timeout passes); returns :meth:`poll`."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.poll()

    @property
    def running(self) -> bool:
        return self.poll()["state"] == "running"

    def log_tail(self, n: int = 20) -> list[str]:
        with self._lock:
            return list(self._tail)[-n:]

    # -- worker --------------------------------------------------------------------------------

    def _set(self, **kw: Any) -> None:
        with self._lock:
            for key, value in kw.items():
                setattr(self, "_" + key, value)

    def _log_line(self, line: str) -> None:
        line = line.rstrip("\r\n")
        with self._lock:
            self._tail.append(line)
        if self._log is not None:
            self._log.write(line + "\n")
            self._log.flush()

    def _run(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._log = open(self.log_path, "w", encoding="utf-8", errors="replace")
        except OSError as ex:
            self._set(state="failed", message=f"Cannot write the install log {self.log_path}: {ex}")
            return
        self._log_line(f"# ganfit engine environment install, {time.strftime('%Y-%m-%d %H:%M:%S')}")
        self._log_line(f"# env_dir={self.env_dir} variant={self.variant} engine={self.engine_dir}")
        for w in self.warnings:
            self._log_line(f"# WARNING: {w}")
        try:
            python = self._install()
        except _Cancelled:
            self._cleanup_tmp()
            self._log_line("# cancelled")
            self._set(state="cancelled", message="Installation cancelled; nothing was kept.")
        except InstallError as ex:
            self._cleanup_tmp()
            self._log_line(f"# failed: {ex}")
            self._set(state="failed", message=str(ex))
        except OSError as ex:
            self._cleanup_tmp()
            if ex.errno == errno.ENOSPC:
                msg = (f"Not enough disk space in {self.env_dir.parent}: free some space or pick "
                       f"another engine folder. Log: {self.log_path}")
            else:
                msg = f"{self._step} failed: {ex}. Log: {self.log_path}"
            self._log_line(f"# failed: {ex!r}")
            self._set(state="failed", message=msg)
        except Exception as ex:  # a bug: still never leave a half env behind
            self._cleanup_tmp()
            import traceback
            for line in traceback.format_exc().splitlines():
                self._log_line(line)
            self._set(state="failed", message=f"Internal error during '{self._step}': {ex!r}. "
                                              f"Log: {self.log_path}")
        else:
            note = f" ({' '.join(self.warnings)})" if self.warnings else ""
            self._set(state="done", fraction=1.0,
                      message=f"The engine environment is ready: {python}{note}")
        finally:
            self._proc = None
            if self._log is not None:
                self._log.close()
                self._log = None

    def _steps(self) -> list[tuple[str, str, float]]:
        steps = []
        for sid, label, weight in _STEPS:
            if sid == "pip" and not self.upgrade_pip:
                continue
            if sid == "nvdiffrast" and not self.with_nvdiffrast:
                continue
            if sid == "smoke" and not self.smoke_test:
                continue
            if sid == "torch":
                label = f"{label} ({self.variant.upper()})"
            steps.append((sid, label, weight))
        total = sum(w for _, _, w in steps)
        return [(sid, label, w / total) for sid, label, w in steps]

    def _install(self) -> Path:
        steps = self._steps()
        done = 0.0
        result: Path | None = None
        for sid, label, weight in steps:
            if self._cancel.is_set():
                raise _Cancelled()
            self._set(step=label, step_id=sid, message=label, fraction=done)
            self._log_line(f"## {label}")
            self._step_base, self._step_weight = done, weight
            result = getattr(self, "_step_" + sid)() or result
            done += weight
            self._set(fraction=min(done, 1.0))
        assert result is not None
        return result

    # -- steps ---------------------------------------------------------------------------------

    def _step_check(self) -> None:
        exe = self._resolve_base_python()
        self._base_exe = exe
        try:
            out = subprocess.run([str(exe), "-E", "-s", "-c", _CHECK_CODE], capture_output=True,
                                 text=True, timeout=120, env=self._child_env(),
                                 stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as ex:
            raise InstallError(f"Could not run the base Python {exe}: {ex}. Choose a working "
                               f"Python {_pyrange()} in the preferences.") from None
        info: dict[str, Any] | None = None
        for line in reversed(out.stdout.splitlines()):
            try:
                info = json.loads(line)
                break
            except ValueError:
                continue
        if out.returncode != 0 or not isinstance(info, dict):
            self._log_line(out.stdout + out.stderr)
            raise InstallError(f"The base Python {exe} did not start (exit code {out.returncode}): "
                               f"{(out.stderr or out.stdout).strip()[-300:]}. Choose a working "
                               f"Python {_pyrange()} in the preferences.")
        self._log_line(f"base python: {json.dumps(info)}")
        version = tuple(info.get("version", ())[:2])
        vtext = ".".join(str(v) for v in info.get("version", ()))
        if not (PYTHON_MIN <= version <= PYTHON_MAX):
            raise InstallError(f"The base Python {exe} is version {vtext}; the engine needs Python "
                               f"{_pyrange()}. Install one (python.org, or your package manager) "
                               f"and select it in the preferences.")
        if not info.get("venv") or not info.get("ensurepip"):
            missing = " and ".join(m for m in ("venv", "ensurepip") if not info.get(m))
            raise InstallError(f"The base Python {exe} ({vtext}) has no {missing} module, so it "
                               f"cannot create a virtual environment. On Debian/Ubuntu install "
                               f"'python{version[0]}.{version[1]}-venv', or use a python.org "
                               f"Python.")
        if self.with_nvdiffrast:
            if self.variant != "cuda":
                raise InstallError("nvdiffrast needs the CUDA engine: choose the CUDA variant or "
                                   "turn nvdiffrast off.")
            if _find_nvcc() is None:
                raise InstallError("nvdiffrast compiles CUDA code and needs the CUDA toolkit "
                                   "(nvcc), which was not found on PATH or in CUDA_HOME/CUDA_PATH: "
                                   "install the CUDA toolkit or turn nvdiffrast off (the engine "
                                   "then uses its slower PyTorch rasteriser).")
        if not self.allow_network and "--no-index" not in self.extra_pip_args:
            raise InstallError("Online access is disabled in Blender (Preferences > System > "
                               "Network > Allow Online Access), and installing the engine "
                               "downloads PyTorch and its packages: allow online access, or "
                               "set a local wheel folder (pip arguments --no-index "
                               "--find-links <folder>).")
        req = requirements_file(self.engine_dir)
        if not req.is_file():
            raise InstallError(f"The engine's requirements file is missing: {req}. Reinstall the "
                               f"add-on.")
        self.env_dir.parent.mkdir(parents=True, exist_ok=True)
        if self.min_free_bytes:
            free = shutil.disk_usage(self.env_dir.parent).free
            if free < self.min_free_bytes:
                raise InstallError(
                    f"Not enough disk space in {self.env_dir.parent}: "
                    f"{free / 1024**3:.1f} GB free, "
                    f"the {self.variant.upper()} engine needs about "
                    f"{self.min_free_bytes / 1024**3:.0f} GB"
                    + (" (the package index's torch for this platform is the CUDA build)"
                       if self.expected_build != self.variant else "")
                    + ". Free some space or pick another engine folder.")
        self._remove_stale_tmp()

    def _step_venv(self) -> None:
        name = f".{self.env_dir.name}{_TMP_INFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp = self.env_dir.parent / name
        self._tmp_dir = tmp
        rc = self._run_cmd([str(self._base_exe), "-m", "venv", str(tmp)])
        if rc != 0:
            tail = "\n".join(self.log_tail(8))
            if any(p in tail.lower() for p in _NO_SPACE_PATTERNS):
                raise InstallError(f"Not enough disk space in {self.env_dir.parent} to create the "
                                   f"engine environment: free some space or pick another folder. "
                                   f"Log: {self.log_path}")
            if "ensurepip" in tail.lower():
                raise InstallError(f"The base Python {self._base_exe} could not set up pip in a "
                                   f"new virtual environment (ensurepip failed). On Debian/Ubuntu "
                                   f"install the pythonX.Y-venv package. Log: {self.log_path}")
            raise InstallError(f"'python -m venv' failed (exit code {rc}) with the base Python "
                               f"{self._base_exe}. Last lines of the log ({self.log_path}):\n"
                               f"{tail}")
        if not venv_python_path(tmp).is_file():
            raise InstallError(f"'python -m venv' made no interpreter in {tmp}. "
                               f"Log: {self.log_path}")

    def _pip(self, what: str, args: Sequence[str]) -> None:
        cmd = [str(venv_python_path(self._tmp_dir)), "-m", "pip", "install", "--progress-bar",
               "off", *args, *self.extra_pip_args]
        rc = self._run_cmd(cmd, progress=True)
        if rc != 0:
            tail = self.log_tail()
            no_index = "--no-index" in cmd
            if not no_index and not any(p in "\n".join(tail).lower() for p in _NETWORK_PATTERNS):
                # pip reports an unreachable index as "no matching distribution" when it does
                # not retry: ask the index ourselves before blaming the requirement.
                for url in _index_urls(cmd, self._child_env()):
                    reason = _unreachable(url)
                    if reason:
                        self._log_line(f"# index {url} unreachable: {reason}")
                        tail = [*tail, f"could not fetch url {url}: {reason}"]
                        break
            raise InstallError(explain_pip_failure(what, rc, tail, self.log_path,
                                                   no_index=no_index))

    def _step_pip(self) -> None:
        self._pip("pip", ["--upgrade", "pip"])

    def _step_torch(self) -> None:
        args = [TORCH_REQUIREMENT]
        if self.torch_index_url:
            args += ["--index-url", self.torch_index_url]
        self._pip(f"PyTorch {TORCH_VERSION} ({self.variant.upper()})", args)
        self._probe_torch()

    def _probe_torch(self) -> None:
        """Read the installed torch's build (version string, CUDA version, size on disk)."""
        py = venv_python_path(self._tmp_dir)
        out_lines: list[str] = []
        rc = self._run_cmd([str(py), "-c", _TORCH_PROBE], collect=out_lines)
        info = None
        for line in reversed(out_lines):
            try:
                info = json.loads(line)
                break
            except ValueError:
                continue
        if rc != 0 or not isinstance(info, dict):
            raise InstallError(f"PyTorch was installed but its build could not be read (exit code "
                               f"{rc}). Log: {self.log_path}")
        cuda = info.get("cuda")
        info["build"] = "cuda" if cuda or "+cu" in str(info.get("version")) else "cpu"
        self.torch_info = info
        gb = info.get("bytes", 0) / 1024**3
        self._log_line(f"# torch installed: {info['version']} ({info['build']}"
                       f"{', CUDA ' + str(cuda) if cuda else ''}), {gb:.1f} GB")
        if self.variant == "cpu" and info["build"] == "cuda":
            w = (f"The 'cpu' choice installed PyTorch's CUDA build {info['version']} "
                 f"(CUDA {cuda}, {gb:.1f} GB) from the package index; it runs on the CPU too. "
                 f"For the ~200 MB CPU build set the torch index to "
                 f"https://download.pytorch.org/whl/cpu (GANFIT_TORCH_INDEX_URL) and reinstall.")
            with self._lock:
                self.warnings[:] = [x for x in self.warnings if x != CPU_FROM_PYPI_WARNING] + [w]
            self._log_line(f"# WARNING: {w}")

    def _step_requirements(self) -> None:
        req = requirements_file(self.engine_dir)
        # The torch pin as a constraint: a requirement can never swap in another torch build.
        constraints = self._tmp_dir / "ganfit-constraints.txt"
        constraints.write_text(TORCH_REQUIREMENT + "\n", encoding="utf-8")
        self._pip("the engine requirements", ["-r", str(req), "-c", str(constraints)])

    def _step_nvdiffrast(self) -> None:
        self._pip("nvdiffrast build tools", ["setuptools", "wheel", "ninja"])
        self._pip("nvdiffrast", ["--no-build-isolation", NVDIFFRAST_REQUIREMENT])

    def _step_smoke(self) -> None:
        py = venv_python_path(self._tmp_dir)
        out_lines: list[str] = []
        rc = self._run_cmd([str(py), "-m", "engine", "check", "--json"],
                           cwd=self.engine_dir.parent, collect=out_lines)
        for line in reversed(out_lines):
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if isinstance(data, dict):
                self.check_result = data
                break
        if rc != 0:
            tail = "\n".join(self.log_tail(12))
            raise InstallError(f"The engine's self-test 'python -m engine check --json' failed "
                               f"(exit code {rc}). Last lines of the log "
                               f"({self.log_path}):\n{tail}")

    def _step_finish(self) -> Path:
        tmp = self._tmp_dir
        assert tmp is not None
        old: Path | None = None
        if self.env_dir.exists() or self.env_dir.is_symlink():
            old = self.env_dir.parent / f".{self.env_dir.name}{_OLD_INFIX}{uuid.uuid4().hex[:8]}"
            # First invalidate, then move: an interrupted swap never looks complete.
            try:
                (self.env_dir / MARKER_NAME).unlink()
            except FileNotFoundError:
                pass
            os.replace(self.env_dir, old)
        os.replace(tmp, self.env_dir)
        self._tmp_dir = None
        _relocate_scripts(self.env_dir, tmp)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        marker = {
            "format": MARKER_FORMAT,
            "requirements_hash": requirements_hash(self.engine_dir),
            "torch": TORCH_VERSION,
            # The build that is really there (read from the installed torch), and what was asked.
            "variant": (self.torch_info or {}).get("build", self.variant),
            "requested_variant": self.variant,
            "torch_build": (self.torch_info or {}).get("version"),
            "torch_cuda": (self.torch_info or {}).get("cuda"),
            "torch_bytes": (self.torch_info or {}).get("bytes"),
            "warnings": list(self.warnings),
            "nvdiffrast": self.with_nvdiffrast,
            "base_python": str(self._base_exe),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "engine_check": self.check_result,
        }
        tmp_marker = self.env_dir / (MARKER_NAME + ".tmp")
        tmp_marker.write_text(json.dumps(marker, indent=1), encoding="utf-8")
        os.replace(tmp_marker, self.env_dir / MARKER_NAME)
        self._log_line(f"# done: {venv_python_path(self.env_dir)}")
        return venv_python_path(self.env_dir)

    # -- helpers -------------------------------------------------------------------------------

    def _resolve_base_python(self) -> Path:
        base = self.base_python
        if base is None or str(base).strip() == "":
            raise InstallError(f"No base Python is set: choose a Python {_pyrange()} interpreter "
                               f"in the preferences.")
        path = Path(str(base)).expanduser()
        if path.is_file():
            return path
        if path.is_dir():
            raise InstallError(f"The base Python {path} is a folder: choose the python executable "
                               f"itself (Python {_pyrange()}).")
        if os.sep not in str(base) and "/" not in str(base):
            found = shutil.which(str(base))
            if found:
                return Path(found)
        raise InstallError(f"The base Python was not found: {base}. Choose an existing Python "
                           f"{_pyrange()} interpreter in the preferences.")

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        # Blender (or the user's shell) may point Python at other libraries; a venv must not see
        # them, and user site-packages must not shadow the environment's own packages.
        for key in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONEXECUTABLE",
                    "VIRTUAL_ENV", "PYTHONUSERBASE", "__PYVENV_LAUNCHER__"):
            env.pop(key, None)
        env.update({"PYTHONNOUSERSITE": "1", "PYTHONUNBUFFERED": "1", "PIP_NO_INPUT": "1",
                    "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONIOENCODING": "utf-8"})
        for key, value in self.env_overrides.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        return env

    def _run_cmd(self, cmd: list[str], *, cwd: Path | None = None, progress: bool = False,
                 collect: list[str] | None = None) -> int:
        if self._cancel.is_set():
            raise _Cancelled()
        self._log_line("$ " + " ".join(shlex.quote(c) for c in cmd))
        kwargs: dict[str, Any] = {}
        if os.name == "nt":
            kwargs["creationflags"] = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0) | \
                getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            kwargs["start_new_session"] = True  # cancel reaches pip's own children too
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=str(cwd) if cwd else None,
                                env=self._child_env(), text=True, encoding="utf-8",
                                errors="replace", bufsize=1, **kwargs)
        self._proc = proc
        if self._cancel.is_set():  # cancel() may have run between the check and Popen
            _terminate(proc)
        n = 0
        assert proc.stdout is not None
        for line in proc.stdout:
            self._log_line(line)
            if collect is not None:
                collect.append(line.strip())
            n += 1
            if progress:
                self._note_progress(line, n)
        rc = proc.wait()
        self._proc = None
        self._log_line(f"# exit code {rc}")
        if self._cancel.is_set():
            raise _Cancelled()
        return rc

    def _note_progress(self, line: str, n: int) -> None:
        # pip gives no total; creep towards the end of the step so the bar moves.
        sub = 1.0 - 0.93 ** n
        frac = self._step_base + self._step_weight * 0.95 * sub
        text = line.strip()
        msg = None
        for head in ("Collecting", "Downloading", "Installing collected packages", "Building",
                     "Successfully installed", "Processing", "Using cached"):
            if text.startswith(head):
                msg = text if len(text) < 110 else text[:107] + "..."
                break
        with self._lock:
            self._fraction = max(self._fraction, frac)
            if msg:
                self._message = msg

    def _cleanup_tmp(self) -> None:
        tmp, self._tmp_dir = self._tmp_dir, None
        if tmp is not None:
            _rmtree_retry(tmp)

    def _remove_stale_tmp(self) -> None:
        """Remove temp folders of installs whose process is gone (a crash, a killed Blender)."""
        prefix = f".{self.env_dir.name}{_TMP_INFIX}"
        for p in self.env_dir.parent.glob(f".{self.env_dir.name}.*"):
            name = p.name
            if name.startswith(f".{self.env_dir.name}{_OLD_INFIX}"):
                _rmtree_retry(p)
            elif name.startswith(prefix):
                pid = name[len(prefix):].split("-", 1)[0]
                if pid.isdigit() and not _pid_alive(int(pid)):
                    _rmtree_retry(p)


# ---------------------------------------------------------------------------------------------
# Small helpers


def _pyrange() -> str:
    return f"{PYTHON_MIN[0]}.{PYTHON_MIN[1]}-{PYTHON_MAX[0]}.{PYTHON_MAX[1]}"


def _find_nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    for var in ("CUDA_HOME", "CUDA_PATH"):
        root = os.environ.get(var)
        if root:
            for name in ("nvcc", "nvcc.exe"):
                cand = Path(root) / "bin" / name
                if cand.is_file():
                    return str(cand)
    return None


def _terminate(proc: subprocess.Popen) -> None:
    """Stop a step's process (and, on POSIX, its process group); kill after a grace period."""
    if proc.poll() is not None:
        return

    def stop(kill: bool) -> None:
        try:
            if os.name != "nt":
                import signal
                os.killpg(proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
            elif kill:
                proc.kill()
            else:
                proc.terminate()
        except (ProcessLookupError, PermissionError, OSError):
            pass

    stop(False)

    def reaper() -> None:
        try:
            proc.wait(_CANCEL_GRACE_S)
        except subprocess.TimeoutExpired:
            stop(True)

    threading.Thread(target=reaper, daemon=True).start()


def _index_urls(cmd: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """The package index URLs a pip command line uses (http(s) only)."""
    urls: list[str] = []
    has_index_url = False
    for i, arg in enumerate(cmd):
        for opt in ("--index-url", "-i", "--extra-index-url"):
            if arg == opt and i + 1 < len(cmd):
                urls.append(cmd[i + 1])
            elif arg.startswith(opt + "="):
                urls.append(arg.split("=", 1)[1])
            else:
                continue
            has_index_url |= opt != "--extra-index-url"
    if not has_index_url:
        urls.insert(0, env.get("PIP_INDEX_URL") or "https://pypi.org/simple/")
    return [u for u in urls if u.startswith(("http://", "https://"))]


def _unreachable(url: str, timeout: float = 8.0) -> str | None:
    """None if the server at ``url`` answers at all (any HTTP status), else the reason."""
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None  # it answered
    except (urllib.error.URLError, OSError, ValueError) as ex:
        return str(getattr(ex, "reason", ex))


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":
        return True  # can't tell cheaply; leave it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _rmtree_retry(path: Path, attempts: int = 5) -> None:
    # Windows keeps files locked for a moment after a killed process exits.
    for i in range(attempts):
        try:
            shutil.rmtree(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.2 * (i + 1))
    shutil.rmtree(path, ignore_errors=True)


def _relocate_scripts(env_dir: Path, old_dir: Path) -> None:
    """Point script shebangs and pyvenv.cfg, written under the temp name, at the final folder."""
    old, new = str(old_dir), str(env_dir)
    candidates = [env_dir / "pyvenv.cfg"]
    bindir = venv_python_path(env_dir).parent
    if bindir.is_dir():
        candidates += [p for p in bindir.iterdir() if p.is_file() and not p.is_symlink()]
    for p in candidates:
        try:
            if p.stat().st_size > 256 * 1024:
                continue
            data = p.read_bytes()
        except OSError:
            continue
        if b"\0" in data[:4096] or old.encode() not in data:
            continue
        try:
            mode = p.stat().st_mode
            p.write_bytes(data.replace(old.encode(), new.encode()))
            os.chmod(p, mode)
        except OSError:
            pass


__all__ = [
    "TORCH_VERSION", "TORCH_REQUIREMENT", "TORCH_INDEX_URLS", "MARKER_NAME", "InstallError",
    "Installer", "default_env_dir", "env_python", "venv_python_path", "read_marker",
    "requirements_file", "read_requirements", "requirements_hash", "explain_pip_failure",
]
