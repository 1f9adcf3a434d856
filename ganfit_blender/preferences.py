"""Add-on preferences: which Python runs the engine, device, model folders, defaults; a setup
checklist with fix buttons (Check engine, Install engine environment).

The engine Python is resolved as: the path set here, else the managed environment made by
``environment.py`` in the extension's user folder, else a clear error. ``draw`` never touches the
file system: it shows :data:`STATUS`, which the operators and :func:`refresh_status` fill in.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import bpy
from bpy.props import EnumProperty, StringProperty

from . import client, contract, paths

ADDON_ID = __package__

DEVICE_ITEMS = (
    ("auto", "Auto", "CUDA when available, else CPU"),
    ("cpu", "CPU", "Always run on the CPU"),
    ("cuda", "CUDA", "An NVIDIA GPU (needs a CUDA build of torch in the engine Python)"),
)
DEFAULT_PRESET_ITEMS = tuple((p.name, p.label, p.description) for p in contract.PRESETS)
RESULT_LOCATION_ITEMS = (
    ("AUTO", "Next to .blend", "A 'ganfit' folder next to the saved .blend, else the temp folder"),
    ("CUSTOM", "Custom Folder", "Always write results under the folder below"),
)

NO_ENGINE_MSG = ("No engine Python: install the engine environment (Preferences > Add-ons > "
                 "GANFit) or set an engine Python")

# Filled by operators / refresh_status(); read by draw() (no file system access in draw).
STATUS: dict[str, Any] = {"checked": False, "python": "", "python_error": "", "check": None,
                          "check_error": "", "install": None}
_INSTALLER: dict[str, Any] = {"installer": None}


def get_prefs(context: Any = None) -> "GANFIT_AP_preferences | None":
    context = context or bpy.context
    addon = context.preferences.addons.get(ADDON_ID)
    return addon.preferences if addon is not None else None


def _environment():
    """``environment.py`` (the managed env installer), imported lazily: it may not exist yet."""
    from . import environment  # noqa: PLC0415
    return environment


def user_dir() -> Path:
    """The extension's own user folder; a source-tree (legacy) install has none, so it uses a
    folder in Blender's user data files instead."""
    try:
        return Path(bpy.utils.extension_path_user(ADDON_ID, create=True))
    except ValueError:  # not loaded as bl_ext.<repo>.<id>
        return Path(bpy.utils.user_resource("DATAFILES", path=ADDON_ID.rpartition(".")[2],
                                            create=True))


def managed_env_dir() -> Path:
    user_dir_ = user_dir()
    try:
        return Path(_environment().default_env_dir(user_dir_))
    except ImportError:
        return user_dir_ / "engine-env"


def resolve_engine_python(prefs: Any = None) -> tuple[str | None, str]:
    """The interpreter that runs the engine, and an error message if there is none.

    Returns:
        (path, '') or (None, a sentence that says what to do).
    """
    prefs = prefs if prefs is not None else get_prefs()
    user = bpy.path.abspath(prefs.engine_python).strip() if prefs is not None else ""
    if user:
        p = Path(user)
        if not p.is_file():
            return None, f"Engine Python not found: {user}. Fix the path in the GANFit preferences"
        return str(p), ""
    try:
        env = _environment()
        py = env.env_python(managed_env_dir(), paths.find_engine_root())
    except ImportError:
        py = None
    except Exception as exc:  # a broken managed env should read as "not installed"
        return None, f"{NO_ENGINE_MSG} ({exc})"
    if py:
        return str(py), ""
    return None, NO_ENGINE_MSG


def engine_options(prefs: Any) -> tuple[list[str], dict[str, str]]:
    """Extra engine arguments and environment variables from the model folder preferences."""
    args: list[str] = []
    env: dict[str, str] = {}
    if prefs is None:
        return args, env
    insight = bpy.path.abspath(prefs.insightface_dir).strip()
    if insight:
        p = Path(insight)
        onnx = p if p.suffix == ".onnx" else p / "w600k_r50.onnx"
        args += ["--recognizer", "arcface", "--recognizer-path", str(onnx)]
    fan = bpy.path.abspath(prefs.face_alignment_dir).strip()
    if fan:
        # face-alignment looks for its weights in torch hub's cache under TORCH_HOME.
        args += ["--landmarks", "fan"]
        env["TORCH_HOME"] = fan
    ckpt = bpy.path.abspath(prefs.texture_checkpoint).strip()
    if ckpt:
        args += ["--texture-model", ckpt]
    return args, env


def refresh_status(prefs: Any = None) -> None:
    """Re-resolve the engine Python into STATUS (called outside draw)."""
    py, err = resolve_engine_python(prefs)
    STATUS["python"] = py or ""
    STATUS["python_error"] = err
    STATUS["checked"] = True


def _prefs_changed(self: Any, context: Any) -> None:
    refresh_status(self)
    STATUS["check"] = None
    STATUS["check_error"] = ""


class GANFIT_AP_preferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_ID

    engine_python: StringProperty(
        name="Engine Python", subtype="FILE_PATH", update=_prefs_changed,
        description="Python interpreter with torch that runs the engine. Empty: the managed "
                    "engine environment installed from here")
    device: EnumProperty(name="Device", items=DEVICE_ITEMS, default="auto")
    insightface_dir: StringProperty(
        name="InsightFace Model", subtype="FILE_PATH",
        description="Optional: insightface's w600k_r50.onnx (or its folder) for the ArcFace "
                    "identity loss (research-only licence). Empty: the bundled dlib recogniser")
    face_alignment_dir: StringProperty(
        name="Face-Alignment Models", subtype="DIR_PATH",
        description="Optional: folder (TORCH_HOME) with face-alignment's weights to use the FAN "
                    "landmark detector. Empty: the bundled MediaPipe detector")
    texture_checkpoint: StringProperty(
        name="Texture Generator", subtype="FILE_PATH",
        description="Optional: a texture generator checkpoint (.pt). Empty: per-texel albedo")
    default_preset: EnumProperty(name="Default Preset", items=DEFAULT_PRESET_ITEMS,
                                 default=contract.DEFAULT_PRESET)
    result_location: EnumProperty(name="Results", items=RESULT_LOCATION_ITEMS, default="AUTO")
    result_dir: StringProperty(name="Result Folder", subtype="DIR_PATH",
                               description="Where result folders go when Results is Custom")

    def draw(self, context: Any) -> None:
        layout = self.layout
        col = layout.column()
        col.prop(self, "engine_python")
        col.prop(self, "device")
        col.prop(self, "default_preset")
        row = col.row()
        row.prop(self, "result_location")
        if self.result_location == "CUSTOM":
            col.prop(self, "result_dir")

        box = layout.box()
        box.label(text="Optional models")
        box.prop(self, "insightface_dir")
        box.prop(self, "face_alignment_dir")
        box.prop(self, "texture_checkpoint")

        box = layout.box()
        box.label(text="Setup")
        _draw_checklist(box)


def _draw_checklist(layout: Any) -> None:
    """Engine Python -> engine check -> Ready, each with its fix button."""
    if not STATUS["checked"]:
        row = layout.row()
        row.label(text="Engine not checked yet", icon="QUESTION")
        row.operator("ganfit.check_engine", text="Check Engine", icon="FILE_REFRESH")
        return
    py_ok = bool(STATUS["python"])
    row = layout.row()
    row.label(text=STATUS["python"] if py_ok else STATUS["python_error"],
              icon="CHECKMARK" if py_ok else "ERROR")
    inst = STATUS.get("install")
    if inst and inst.get("state") == "running":
        row = layout.row()
        if hasattr(row, "progress"):
            row.progress(factor=float(inst.get("fraction") or 0.0),
                         text=inst.get("message") or "Installing...")
        else:
            row.label(text=f"Installing: {inst.get('message', '')}")
        row.operator("ganfit.install_cancel", text="", icon="X")
    elif not py_ok:
        if inst and inst.get("state") in ("failed", "cancelled"):
            layout.label(text=f"Install {inst['state']}: {inst.get('message', '')}", icon="ERROR")
        layout.operator("ganfit.install_environment", icon="IMPORT")

    check = STATUS.get("check")
    if STATUS.get("check_error"):
        for i, line in enumerate(STATUS["check_error"].splitlines()[:6]):
            layout.label(text=line, icon="ERROR" if i == 0 else "BLANK1")
    elif check:
        layout.label(text=f"torch {check.get('torch', '?')}, device {check.get('device', '?')}",
                     icon="CHECKMARK")
        backends = check.get("backends")
        if backends:
            layout.label(text=f"Backends: {_fmt(backends)}", icon="BLANK1")
        models = check.get("models")
        if models:
            layout.label(text=f"Models: {_fmt(models)}", icon="BLANK1")
        for problem in (check.get("problems") or [])[:6]:
            layout.label(text=str(problem), icon="ERROR")
        ready = bool(check.get("ok", True))
        layout.label(text="Ready" if ready else "Not ready: see the engine check above",
                     icon="CHECKMARK" if ready else "ERROR")
    layout.operator("ganfit.check_engine", text="Check Engine", icon="FILE_REFRESH")


def _fmt(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    return str(value)


class GANFIT_OT_check_engine(bpy.types.Operator):
    """Run the engine's self-check (python -m engine check --json) and show the result"""

    bl_idname = "ganfit.check_engine"
    bl_label = "Check Engine"
    bl_options = {"INTERNAL"}

    def execute(self, context: Any) -> set[str]:
        prefs = get_prefs(context)
        refresh_status(prefs)
        STATUS["check"] = None
        STATUS["check_error"] = ""
        py = STATUS["python"]
        if not py:
            STATUS["check_error"] = STATUS["python_error"]
            self.report({"ERROR"}, STATUS["python_error"])
            return {"CANCELLED"}
        root = paths.find_engine_root()
        if root is None:
            STATUS["check_error"] = "The engine is missing from the extension; reinstall it"
            self.report({"ERROR"}, STATUS["check_error"])
            return {"CANCELLED"}
        device = prefs.device if prefs is not None else "auto"
        try:
            info = client.run_json_command(
                [py, "-m", "engine", "check", "--json", "--device", device],
                cwd=str(root), env=paths.engine_env(root))
        except RuntimeError as exc:
            STATUS["check_error"] = str(exc)
            self.report({"ERROR"}, str(exc).splitlines()[0])
            return {"CANCELLED"}
        STATUS["check"] = info
        self.report({"INFO"}, f"Engine OK: torch {info.get('torch', '?')}, "
                              f"device {info.get('device', '?')}")
        return {"FINISHED"}


class GANFIT_OT_install_environment(bpy.types.Operator):
    """Create the managed engine environment (a Python with torch) in the extension's user folder"""

    bl_idname = "ganfit.install_environment"
    bl_label = "Install Engine Environment"
    bl_options = {"INTERNAL"}

    variant: EnumProperty(name="Variant", items=(("cpu", "CPU", "torch for the CPU"),
                                                 ("cuda", "CUDA", "torch with CUDA (large)")),
                          default="cpu")

    _timer = None

    def execute(self, context: Any) -> set[str]:
        try:
            env = _environment()
        except ImportError:
            self.report({"ERROR"}, "The environment installer is not part of this build")
            return {"CANCELLED"}
        if _INSTALLER["installer"] is not None and STATUS.get("install", {}).get("state") == "running":
            self.report({"WARNING"}, "The engine environment is already being installed")
            return {"CANCELLED"}
        root = paths.find_engine_root()
        env_dir = managed_env_dir()
        log_path = env_dir.parent / "install.log"
        if root is None:
            self.report({"ERROR"}, "The engine is missing from the extension; reinstall it")
            return {"CANCELLED"}
        try:
            # Downloads (pip) only with Blender's "Allow Online Access" on; the installer refuses
            # otherwise unless its pip arguments point at local wheels only.
            installer = env.Installer(env_dir, sys.executable, variant=self.variant,
                                      engine_root=root, log_path=log_path,
                                      allow_network=bool(bpy.app.online_access))
            installer.start()
        except Exception as exc:
            self.report({"ERROR"}, f"Could not start the install: {exc}")
            return {"CANCELLED"}
        _INSTALLER["installer"] = installer
        STATUS["install"] = {"state": "running", "fraction": 0.0, "message": "Starting"}
        if bpy.app.background:  # no event loop: block until it is done
            state = dict(installer.wait())
            STATUS["install"] = state
            _INSTALLER["installer"] = None
            refresh_status()
            if state.get("state") != "done":
                self.report({"ERROR"}, f"Install {state.get('state')}: {state.get('message', '')}")
                return {"CANCELLED"}
            return {"FINISHED"}
        self._timer = context.window_manager.event_timer_add(0.5, window=context.window)
        context.window_manager.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context: Any, event: Any) -> set[str]:
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        done = poll_installer()
        for area in context.screen.areas if context.screen else ():
            area.tag_redraw()
        if done:
            context.window_manager.event_timer_remove(self._timer)
            refresh_status()
            state = STATUS.get("install") or {}
            if state.get("state") != "done":
                self.report({"ERROR"}, f"Install {state.get('state')}: {state.get('message', '')}")
                return {"CANCELLED"}
            return {"FINISHED"}
        return {"PASS_THROUGH"}


def poll_installer() -> bool:
    """Copy the installer's state into STATUS; True when it has finished."""
    installer = _INSTALLER["installer"]
    if installer is None:
        return True
    try:
        state = dict(installer.poll())
    except Exception as exc:
        state = {"state": "failed", "fraction": 0.0, "message": str(exc)}
    STATUS["install"] = state
    if state.get("state") != "running":
        _INSTALLER["installer"] = None
        return True
    return False


class GANFIT_OT_install_cancel(bpy.types.Operator):
    """Stop installing the engine environment"""

    bl_idname = "ganfit.install_cancel"
    bl_label = "Cancel Install"
    bl_options = {"INTERNAL"}

    @classmethod
    def poll(cls, context: Any) -> bool:
        return _INSTALLER["installer"] is not None

    def execute(self, context: Any) -> set[str]:
        stop_installer()
        return {"FINISHED"}


def stop_installer() -> None:
    installer = _INSTALLER["installer"]
    if installer is not None:
        try:
            installer.cancel()
            installer.wait(10.0)  # the installer removes its partial environment
        except Exception:
            pass  # best effort on shutdown
        _INSTALLER["installer"] = None


classes = (GANFIT_AP_preferences, GANFIT_OT_check_engine, GANFIT_OT_install_environment,
           GANFIT_OT_install_cancel)
