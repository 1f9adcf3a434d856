import os
import sys

# torch's OpenMP threads spin while waiting by default; on a busy laptop (Blender running beside
# the engine) that made render steps 10-20x slower. Set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from engine.cli import main  # noqa: E402

code = main()
# Every command has written and closed what it made by now. Skip the interpreter's teardown of
# torch, numba and mediapipe (about half a second), so that a cancelled fit's process is gone
# within a second of the request.
for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
    try:
        stream.flush()
    except (AttributeError, OSError, ValueError):
        pass
os._exit(code if isinstance(code, int) else 1)
