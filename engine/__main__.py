import os

# torch's OpenMP threads spin while waiting by default; on a busy laptop (Blender running beside
# the engine) that made render steps 10-20x slower. Set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from engine.cli import main  # noqa: E402

raise SystemExit(main())
