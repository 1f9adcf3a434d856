"""Fit the same photos with two checkouts of the engine and compare the results.

    python scripts/compare_fits.py BEFORE_REPO AFTER_REPO [PHOTO_DIR] [-o OUT] [--preset balanced]
                                   [--max-steps N] [--tolerance 0.02]

Runs ``scripts/eval_fit.py`` of each checkout (with PYTHONPATH set to that checkout; this Python
serves both) on the same photos, one side after the other, then prints per photo the landmark
error and the masked L1 of both, with the relative difference, flagging any beyond the tolerance.
Exit code 0 when every photo fitted on both sides within the tolerance, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GANFIT_SHARED", REPO.parent / "shared"))
METRICS = (("lmk_iod", "landmark error / iod"), ("l1", "masked L1"))


def run_side(repo: Path, photos: Path, out: Path, preset: str, max_steps: int | None) -> dict[str, dict]:
    """eval_fit.py of ``repo`` -> {photo name: row}."""
    script = repo / "scripts" / "eval_fit.py"
    if not script.is_file():
        raise SystemExit(f"{repo} has no scripts/eval_fit.py: is it a checkout of this project?")
    cmd = [sys.executable, str(script), str(photos), "-o", str(out), "--preset", preset, "--json"]
    if max_steps:
        cmd += ["--max-steps", str(max_steps)]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    print(f"[compare] {repo}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    p = subprocess.run(cmd, cwd=repo, env=env, stdout=subprocess.PIPE, text=True)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise SystemExit(f"eval_fit.py of {repo} printed no JSON (exit {p.returncode})")
    return {r["photo"]: r for r in json.loads(lines[-1])["rows"]}


def rel(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    return (b - a) / abs(a) if a else (0.0 if b == a else float("inf"))


def table(before: dict[str, dict], after: dict[str, dict], tol: float) -> tuple[list[str], bool]:
    lines, ok = [], True
    head = f"{'photo':34s}"
    for _, label in METRICS:
        head += f" | {label + ' before':>24s} {'after':>9s} {'diff':>8s}"
    lines.append(head)
    lines.append("-" * len(head))
    for name in sorted(set(before) | set(after)):
        a, b = before.get(name, {}), after.get(name, {})
        row = f"{name:34s}"
        if a.get("exit") != 0 or b.get("exit") != 0:
            ok = False
            lines.append(f"{row} | FAILED (exit before {a.get('exit')}, after {b.get('exit')})")
            continue
        flag = ""
        for key, _ in METRICS:
            d = rel(a.get(key), b.get(key))
            if d is None or abs(d) > tol:
                flag, ok = "  <-- over tolerance", False
            ds = "-" if d is None else f"{d * 100:+.2f}%"
            row += f" | {a.get(key) or float('nan'):24.5f} {b.get(key) or float('nan'):9.5f} {ds:>8s}"
        lines.append(row + flag)
    return lines, ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before", type=Path, help="the checkout before the change")
    ap.add_argument("after", type=Path, help="the checkout after the change")
    ap.add_argument("photos", nargs="?", type=Path, default=SHARED / "photos")
    ap.add_argument("-o", "--out", type=Path, default=REPO / "out" / "compare",
                    help="folder for both sides' result folders (OUT/before, OUT/after)")
    ap.add_argument("--preset", default="balanced")
    ap.add_argument("--max-steps", type=int)
    ap.add_argument("--tolerance", type=float, default=0.02, help="relative difference allowed")
    args = ap.parse_args(argv)
    before = run_side(args.before.resolve(), args.photos, args.out / "before", args.preset, args.max_steps)
    after = run_side(args.after.resolve(), args.photos, args.out / "after", args.preset, args.max_steps)
    lines, ok = table(before, after, args.tolerance)
    print("\n".join(lines))
    print(f"{'all within' if ok else 'NOT all within'} {args.tolerance * 100:g}% "
          f"(before: {args.before}, after: {args.after}, preset {args.preset})")
    (args.out / "compare.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
