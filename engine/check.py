"""``python -m engine check``: what this engine installation can do (used by the extension's
"Check engine" button and by the managed-environment installer as a smoke test)."""

from __future__ import annotations

import importlib.util
import os
import platform
import sys
from pathlib import Path

from . import __version__


def _has(mod: str) -> bool:
    try:
        return importlib.util.find_spec(mod) is not None
    except (ImportError, ValueError):
        return False


def run_check(device: str = "auto") -> dict:
    info: dict = {"engine": __version__, "python": platform.python_version(),
                  "executable": sys.executable, "platform": platform.platform(), "ok": True,
                  "problems": []}
    try:
        import torch
        info["torch"] = torch.__version__
        info["cuda"] = bool(torch.cuda.is_available())
        info["cuda_device"] = torch.cuda.get_device_name(0) if info["cuda"] else None
        info["threads"] = torch.get_num_threads()
    except ImportError as e:
        info["torch"] = None
        info["ok"] = False
        info["problems"].append(f"torch is not installed: {e}")
        return info
    from .render import nvdiffrast_available
    info["backends"] = {"cpu": _has("numba"), "nvdiffrast": bool(info["cuda"] and nvdiffrast_available())}
    if not info["backends"]["cpu"]:
        info["ok"] = False
        info["problems"].append("numba is missing: the CPU renderer needs it (pip install numba)")
    info["device"] = "cuda" if (device in ("auto", "cuda") and info["cuda"]) else "cpu"
    if device == "cuda" and not info["cuda"]:
        info["problems"].append("CUDA was asked for but torch sees no CUDA GPU")

    data = Path(__file__).resolve().parent / "data"
    models = {
        "face_model": (data / "facemodel" / "ict_face.npz").is_file(),
        "landmarks_mediapipe": (data / "mediapipe" / "face_landmarker.task").is_file() and _has("mediapipe"),
        "recognizer_dlib": _has("face_recognition_models"),
        "landmarks_fan": _has("face_alignment"),
    }
    arc = Path(os.environ.get("INSIGHTFACE_HOME", Path.home() / ".insightface")) / "models" / "buffalo_l" / "w600k_r50.onnx"
    models["recognizer_arcface"] = arc.is_file()
    info["models"] = models
    for key in ("face_model", "landmarks_mediapipe", "recognizer_dlib"):
        if not models[key]:
            info["ok"] = False
            info["problems"].append(f"default model missing: {key}")
    return info
