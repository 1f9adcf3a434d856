"""``python benchmarks/batch.py [--photos N] [--presets fast,balanced] [--rounds R] [--no-ray]``:
throughput of fitting a folder of photos, as photos per hour, for

* ``cli``      one ``python -m engine fit`` process per photo, one after another (all threads);
* ``batch``    ``python -m engine batch`` with 1 worker (all threads) and with 2 (threads split);
* ``ray-1/2``  ``batch --ray`` with 1 and 2 actors on a local Ray cluster this script starts
               (``ray start --head`` on 127.0.0.1 with as many CPUs as the machine has);

every mode on the same photos (../shared/photos, then ../shared/faces/london-canada), and the modes
interleaved round by round (the order rotates), so that a machine shared with other work slows
them alike and the ratios stay fair. Wall times include process start and model loading: that
is what a user waits for. Ray's per-photo overhead is (ray-1 - batch-1) / photos. Prints a
markdown table (``--json`` for the numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GANFIT_SHARED") or ROOT.parent / "shared")


def _photos(n: int) -> list[Path]:
    a = sorted(p for p in (SHARED / "photos").iterdir() if p.suffix.lower() in (".jpg", ".png"))
    b = sorted((SHARED / "faces" / "london-canada").glob("*.jpg"))
    got = (a + b)[:n]
    if len(got) < n:
        raise SystemExit(f"only {len(got)} photos found under {SHARED}")
    return got


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}


def _run(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=_env())
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:5])} ... exited {p.returncode}:\n{p.stderr[-3000:]}")
    return wall


def _fit_seconds(out: Path) -> list[float]:
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    return [r["seconds"] for r in lines if r["status"] == "ok"]


def run_mode(mode: str, preset: str, src: Path, photos: list[Path], tmp: Path, extra: list[str],
             address: str | None) -> dict:
    out = tmp / f"{mode}-{preset}-{time.monotonic_ns()}"
    eng = [sys.executable, "-m", "engine"]
    common = ["--preset", preset, *extra]
    per_photo = None
    if mode == "cli":
        out.mkdir()
        wall = sum(_run(eng + ["fit", str(p), "-o", str(out / p.stem), *common]) for p in photos)
    else:
        args = eng + ["batch", str(src), "-o", str(out), "--no-progress", *common]
        if mode == "batch-1":
            args += ["--workers", "1"]
        elif mode == "batch-2":
            args += ["--workers", "2"]
        elif mode.startswith("ray-"):
            args += ["--ray", address, "--workers", mode.split("-")[1]]
        wall = _run(args)
        per_photo = _fit_seconds(out)
        if len(per_photo) != len(photos):
            raise RuntimeError(f"{mode}: {len(per_photo)} of {len(photos)} photos fitted")
    shutil.rmtree(out, ignore_errors=True)
    return {"mode": mode, "preset": preset, "photos": len(photos), "wall_s": round(wall, 2),
            "photos_per_hour": round(len(photos) / wall * 3600, 1),
            "mean_fit_s": None if per_photo is None else round(sum(per_photo) / len(per_photo), 2)}


def _start_ray(tmp: Path, niceness: int) -> tuple[str, list[str]]:
    exe = Path(sys.executable).with_name("ray")
    cli = [str(exe)] if exe.exists() else [sys.executable, "-m", "ray.scripts.scripts"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    cmd = cli + ["start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus",
                 str(os.cpu_count() or 1), "--num-gpus", "0", "--include-dashboard", "false", "--temp-dir", temp,
                 "--disable-usage-stats"]
    # Ray starts its workers at niceness 15 by default (the raylet's own work comes first); on a
    # machine shared with other work that alone would make Ray look slow, so the benchmark's cluster
    # runs them at the normal priority, as the local workers and the CLI run (--ray-niceness).
    env = {**_env(), "RAY_worker_niceness": str(niceness)}
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    return f"127.0.0.1:{port}", cli


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python benchmarks/batch.py")
    ap.add_argument("--photos", type=int, default=6, help="photos for fast (default 6)")
    ap.add_argument("--balanced-photos", type=int, default=2, help="photos for balanced (default 2)")
    ap.add_argument("--presets", default="fast,balanced")
    ap.add_argument("--balanced-modes", default="cli,batch-1",
                    help="modes for balanced (default cli,batch-1: Ray and 2 workers are measured on fast)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--ray-niceness", type=int, default=0,
                    help="the Ray workers' niceness (Ray's own default is 15; default here 0, as the others)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--table", metavar="JSON", help="print the table of an earlier --json output and exit")
    a = ap.parse_args(argv)
    if a.table:
        print_table(json.loads(Path(a.table).read_text()))
        return 0
    modes = ["cli", "batch-1", "batch-2"] + ([] if a.no_ray else ["ray-1", "ray-2"])
    rows: list[dict] = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="ganfit-batchbench-") as t:
        tmp = Path(t)
        address, ray_cli = (None, None) if a.no_ray else _start_ray(tmp, a.ray_niceness)
        try:
            for preset in a.presets.split(","):
                photos = _photos(a.photos if preset == "fast" else a.balanced_photos)
                src = tmp / f"photos-{preset}"
                src.mkdir()
                for p in photos:
                    shutil.copy(p, src / p.name)
                ms = modes if preset == "fast" else [m for m in a.balanced_modes.split(",") if m in modes]
                for r in range(a.rounds):
                    order = ms[r % len(ms):] + ms[:r % len(ms)]
                    for mode in order:
                        row = run_mode(mode, preset, src, photos, tmp, [], address)
                        row["round"] = r
                        rows.append(row)
                        print(f"  {preset:8s} {mode:8s} {row['wall_s']:7.1f} s  {row['photos_per_hour']:7.1f} "
                              "photos/h", file=sys.stderr)
        finally:
            if ray_cli is not None:
                subprocess.run(ray_cli + ["stop", "--force"], capture_output=True, env=_env())
    summary = _summarise(rows)
    info = {"cpu_count": os.cpu_count(), "ray_niceness": None if a.no_ray else a.ray_niceness, "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()], "rows": rows, "summary": summary}
    if a.json:
        print(json.dumps(info, indent=1))
        return 0
    print_table(info)
    return 0


def print_table(info: dict) -> None:
    """The markdown table of ``info`` (this script's --json output)."""
    summary = info["summary"]
    print(f"{info['cpu_count']} CPUs; load average before {info['loadavg_before'][0]}, after "
          f"{info['loadavg_after'][0]} (a shared machine: other work ran meanwhile)\n")
    print("| preset | mode | photos | wall s | photos/hour | x cli | mean fit s (in worker) |")
    print("|---|---|---|---|---|---|---|")
    for s in summary["modes"]:
        fit_s = "-" if s["mean_fit_s"] is None else f"{s['mean_fit_s']:.1f}"
        print(f"| {s['preset']} | {s['mode']} | {s['photos']} | {s['wall_s']:.1f} | {s['photos_per_hour']:.0f} | "
              f"{s['x_cli']:.2f} | {fit_s} |")
    for preset, o in summary["ray_overhead_s_per_photo"].items():
        print(f"\nRay per-photo overhead ({preset}): {o:+.2f} s/photo ((ray-1 - batch-1) / photos)")


def _summarise(rows: list[dict]) -> dict:
    out, overhead = [], {}
    for preset in dict.fromkeys(r["preset"] for r in rows):
        walls = {}
        for m in dict.fromkeys(r["mode"] for r in rows if r["preset"] == preset):
            rs = [r for r in rows if r["preset"] == preset and r["mode"] == m]
            walls[m] = sum(r["wall_s"] for r in rs) / len(rs)
            fits = [r["mean_fit_s"] for r in rs if r["mean_fit_s"] is not None]
            out.append({"preset": preset, "mode": m, "photos": rs[0]["photos"], "wall_s": walls[m],
                        "photos_per_hour": rs[0]["photos"] / walls[m] * 3600,
                        "mean_fit_s": sum(fits) / len(fits) if fits else None})
        for s in out:
            if s["preset"] == preset:
                s["x_cli"] = walls["cli"] / s["wall_s"]
        if "ray-1" in walls:
            overhead[preset] = (walls["ray-1"] - walls["batch-1"]) / out[-1]["photos"]
    return {"modes": out, "ray_overhead_s_per_photo": overhead}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
