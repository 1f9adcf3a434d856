"""How long the add-on keeps Blender's UI thread busy during a real fit: every ``runner.poll()``
(the timer callback that drains the engine's messages, loads previews and updates the panel state)
and every draw of the sidebar panel, timed while the engine runs. Target: each under 50 ms.

    python scripts/bench_ui.py [PHOTO] [--preset balanced]

Runs under a Python with ``bpy`` (the repo's .venv); the engine runs with the same interpreter.
Headless bpy has no event loop, so the script calls the timer callback itself every 20 ms (what
Blender's timer would do) and draws the panel into a stand-in layout that records the calls.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]


class _Layout:
    """Stands in for bpy.types.UILayout: accepts every call the panel makes."""

    enabled = True
    scale_y = 1.0

    def __getattr__(self, name):
        return lambda *a, **k: _Layout()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("photo", nargs="?", type=Path,
                    default=REPO / "engine" / "data" / "demo" / "grace_hopper.jpg")
    ap.add_argument("--preset", default="balanced")
    a = ap.parse_args(argv)
    os.environ.setdefault("BLENDER_USER_RESOURCES", tempfile.mkdtemp(prefix="ganfit-bl-"))
    sys.path.insert(0, str(REPO))
    import bpy
    import addon_utils

    bpy.ops.wm.read_homefile(use_empty=True)
    addon_utils.enable("ganfit_blender", default_set=True)
    from ganfit_blender import panel, runner

    out = Path(tempfile.mkdtemp(prefix="ganfit-ui-")) / "result"
    job = runner.start_fit(str(a.photo), out, python=sys.executable, preset=a.preset)
    polls, draws = [], []
    fake = SimpleNamespace(layout=_Layout())
    fake._draw_running = lambda layout, rt: panel.GANFIT_PT_main._draw_running(fake, layout, rt)
    t_start = time.perf_counter()
    while not job.finished:
        t = time.perf_counter()
        runner.poll()
        polls.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        panel.GANFIT_PT_main.draw(fake, bpy.context)
        draws.append((time.perf_counter() - t) * 1000)
        time.sleep(0.02)
    runner.poll()
    wall = time.perf_counter() - t_start
    for name, xs in (("timer poll", polls), ("panel draw", draws)):
        xs = sorted(xs)
        print(f"{name}: {len(xs)} calls, median {statistics.median(xs):.2f} ms, "
              f"p99 {xs[int(0.99 * (len(xs) - 1))]:.2f} ms, max {xs[-1]:.2f} ms")
    print(f"fit ({a.preset}) finished in {wall:.1f} s: {job.error_message() or 'ok'}")
    return 0 if max(polls + draws) <= 50 else 1


if __name__ == "__main__":
    raise SystemExit(main())
