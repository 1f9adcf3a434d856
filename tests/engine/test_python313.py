"""The default detector on Python 3.13 (what Blender 5.1+ ships): mediapipe >= 1.2.2 there has no
legacy solutions and no bundled models, so the engine's Tasks-API path with its own
face_landmarker.task must work. Builds (once) a small venv with mediapipe, numpy and pillow in
.venv313 (scripts/dev.sh's 3.13 venv, if it is there) and runs the detector on the shared photos
in it. Skipped where no Python 3.13 exists (fails under CI)."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shared_data import require_shared, unavailable

REPO = Path(__file__).resolve().parents[2]
VENV = REPO / ".venv313"


def _python313() -> str | None:
    # as scripts/dev.sh looks: $PYTHON313, python3.13 on PATH, pyenv's 3.13
    cands = [os.environ.get("PYTHON313"), shutil.which("python3.13"),
             *sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.13*/bin/python")))]
    for c in cands:
        if c and os.access(c, os.X_OK):
            ok = subprocess.run([c, "-c", "import sys, venv; assert sys.version_info[:2] == (3, 13)"],
                                capture_output=True)
            if ok.returncode == 0:  # a pyenv shim without that version active fails here
                return c
    return None


SCRIPT = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from engine.io.image import load_photo
from engine.perception.landmarks import detect_faces
assert "torch" not in sys.modules
out = {}
for p in sys.argv[2:]:
    faces = detect_faces(load_photo(p))
    out[p] = [len(faces), faces[0].landmarks.shape[0] if faces else 0, len(faces[0].blendshapes or {}) if faces else 0]
print(json.dumps({"python": sys.version.split()[0], "faces": out}))
"""


@pytest.mark.slow
def test_detector_runs_on_python313():
    py = _python313()
    if py is None:  # scripts/dev.sh's 3.13 run needs one too; under CI this fails
        unavailable("no Python 3.13 on this machine (set PYTHON313 or install one, e.g. pyenv)")
    photos = sorted(str(p) for p in require_shared("photos").glob("*")
                    if p.suffix.lower() in (".jpg", ".png"))
    vpy = VENV / "bin" / "python"
    if not vpy.exists():
        subprocess.run([py, "-m", "venv", str(VENV)], check=True, timeout=300)
        r = subprocess.run([str(vpy), "-m", "pip", "install", "-q", "mediapipe>=1.2.2", "numpy", "pillow"],
                           capture_output=True, text=True, timeout=900)
        if r.returncode != 0:
            shutil.rmtree(VENV, ignore_errors=True)
            pytest.fail(f"could not install mediapipe for Python 3.13:\n{r.stderr[-2000:]}")
    r = subprocess.run([str(vpy), "-c", SCRIPT, str(REPO), *photos], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert info["python"].startswith("3.13")
    for photo, (n, points, shapes) in info["faces"].items():
        assert n == 1 and points == 478 and shapes == 52, photo
