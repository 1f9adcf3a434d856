"""``python -m engine batch PHOTOS_DIR -o OUT_DIR``: the command line and the driver loop shared
by the local workers and Ray (docs/batch.md).

The driver is the only writer of the manifest: a photo's line is appended (and fsync'ed) as soon
as its result folder is in place, so a batch stopped at any moment resumes where it stopped.

Exit status: 0 every photo has a result; 1 some photos failed (the manifest says why); 2 usage;
3 PHOTOS_DIR missing, not a folder or without photos; 5 a model or package every fit needs is
missing (ray, for ``--ray``); 6 OUT_DIR unusable; 130 stopped by Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path

from ..argtypes import whole
from ..contract import DEFAULT_PRESET, PRESET_NAMES
from .plan import parse_shard

EXIT_SOME_FAILED = 1
EXIT_STOPPED = 130


def add_parser(sub: argparse._SubParsersAction) -> None:
    fit = sub.choices.get("fit")  # the fit options' defaults follow the fit command's

    def default(name: str, fallback):
        return fallback if fit is None or fit.get_default(name) is None else fit.get_default(name)

    p = sub.add_parser(
        "batch", help="fit every photo of a folder (one result folder each; resumable; Ray)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Fit every photo in PHOTOS_DIR (not recursive) and write OUT_DIR/<photo name>/, one "
                    "result folder per photo as `fit` writes it, and OUT_DIR/manifest.jsonl (one line per "
                    "finished photo: status, exit code, error, metrics, seconds). The models are loaded "
                    "once per worker. Running the same command again resumes: finished photos are "
                    "skipped, failed ones are retried once. See docs/batch.md.",
        epilog="Exit status: 0 all photos fitted, 1 some failed (see the manifest), 2 usage, 3 no photos, "
               "5 missing model or package, 6 output folder unusable, 130 stopped (Ctrl-C/SIGTERM; "
               "finished results stay, the photos being fitted are redone on the next run).")
    p.add_argument("photos_dir", metavar="PHOTOS_DIR", help="folder of photos (jpg, png, webp, bmp, tif)")
    p.add_argument("-o", "--output", required=True, metavar="OUT_DIR",
                   help="batch folder: new, empty, or an earlier batch's to resume")
    p.add_argument("--workers", type=whole(1), default=1,
                   help="worker processes (or Ray actors), each with its own copy of the models "
                        "(default 1; the CPU threads are split between them)")
    p.add_argument("--preset", choices=PRESET_NAMES, default=default("preset", DEFAULT_PRESET),
                   help=f"speed/quality trade-off (default: {DEFAULT_PRESET})")
    p.add_argument("--shard", type=parse_shard, metavar="i/N",
                   help="fit only shard i of N (0 <= i < N; by a hash of the photo name), e.g. one machine "
                        "each on a shared OUT_DIR")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run on a Ray cluster: ADDRESS as ray.init takes it ('auto', 'HOST:6379', "
                        "'ray://HOST:10001'); without one, the cluster of RAY_ADDRESS or a new local one. "
                        "Needs `pip install ganfit-engine[ray]`")
    p.add_argument("--retry-failed", action="store_true",
                   help="also retry photos that already failed twice")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=default("device", "auto"),
                   help="auto = CUDA when available, else CPU (with --ray: each actor gets a GPU when the "
                        "cluster has them)")
    p.add_argument("--seed", type=whole(0, 2 ** 32 - 1), default=0, help="random seed of every fit")
    p.add_argument("--texture-res", type=int, choices=(256, 512, 1024, 2048),
                   help="albedo atlas size (default: from the preset)")
    p.add_argument("--neutral", action="store_true", help="fit identity only, with a neutral expression")
    p.add_argument("--recognizer", choices=("dlib", "arcface", "none"), default=default("recognizer", "dlib"),
                   help="face recogniser for the identity losses")
    p.add_argument("--recognizer-path", help="path to the recogniser weights (arcface .onnx)")
    p.add_argument("--texture-model", default=default("texture_model", "default"),
                   help="as fit's --texture-model (default: the same as fit's)")
    p.add_argument("--detail", action=argparse.BooleanOptionalAction, default=default("detail", None),
                   help="a learned texture model's per-texel detail layer (as fit --detail)")
    p.add_argument("--landmarks", choices=("mediapipe", "fan"), default=default("landmarks", "mediapipe"))
    from ..cli import _focal_35mm  # the fit command's type: same range, same message
    p.add_argument("--focal-35mm", type=_focal_35mm,
                   help="35 mm-equivalent focal length of every photo (default: each photo's EXIF, else 50)")
    p.add_argument("--max-steps", type=whole(1), help="cap the optimisation steps of each stage (tests)")
    p.add_argument("--threads", type=whole(1),
                   help="CPU threads in all (local) or per actor (--ray); default: all cores")
    p.add_argument("--report", action="store_true", help="also write report.png in each result")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (one line per photo)")


def _options(args: argparse.Namespace) -> dict:
    from ..fit.session import FitOptions
    return FitOptions.from_args(args).as_dict()


def main(args: argparse.Namespace) -> int:
    from ..errors import EngineError
    try:
        return _run(args)
    except EngineError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return e.exit_code


def _run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .. import __version__
    from ..errors import BadInputError
    from . import plan as P

    photos, skipped_files = P.collect(args.photos_dir)
    out_abs = Path(args.output).expanduser().absolute()
    if out_abs == Path(args.photos_dir).expanduser().absolute():
        raise BadInputError("OUT_DIR is PHOTOS_DIR; give the results a folder of their own.")
    all_count = len(photos)
    photos = [p for p in photos if P.in_shard(p.id, args.shard)]
    runner = _make_runner(args)  # before anything is written: --ray without ray fails here
    out, created = P.prepare_out_dir(args.output)
    manifest = P.Manifest(out)
    swept = P.sweep(out)
    todo = P.plan(photos, out, manifest.read(), retry_failed=args.retry_failed)
    log = lambda msg: tqdm.write(msg, file=sys.stderr)  # noqa: E731
    shard = f" (shard {args.shard[0]}/{args.shard[1]} of {all_count})" if args.shard else ""
    print(f"{len(photos)} photos{shard}: {todo.done} done before, {len(todo.given_up)} failed twice (skipped; "
          f"--retry-failed redoes them), {len(todo.run)} to fit -> {out}", file=sys.stderr)
    if skipped_files:
        print(f"not photos (by extension), left out: {', '.join(skipped_files[:5])}"
              f"{' ...' if len(skipped_files) > 5 else ''}", file=sys.stderr)
    if swept:
        print(f"removed {swept} temporary folder(s) of an earlier batch that was killed", file=sys.stderr)
    engine_tag = f"{__version__}"
    for p in todo.recovered:  # its result was moved into place just before an earlier batch stopped
        manifest.append(P.record(p, {"status": "ok", "exit_code": 0, "error": None, "metrics": _metrics_of(out / p.id),
                                     "seconds": None, "warnings": []}, 1, args.preset, "recovered", engine_tag))
    if not todo.run:
        P.remove_if_unused(out, created)
        counts = {"ok": 0, "failed": 0}
        _summary(out, manifest, photos, counts, 0.0, stopped=False)
        return _exit_status(manifest, photos)

    stop = threading.Event()
    old: dict = {}

    def on_signal(signum, frame):  # noqa: ARG001
        if stop.is_set():
            print("\nstopping now: the workers are terminated (the photos being fitted are redone on resume)",
                  file=sys.stderr)
            runner.kill()
            return
        stop.set()
        runner.stop()
        print("\nstopping: the photos being fitted are dropped (redone on resume); finished results and "
              "the manifest stay whole. Press Ctrl-C again to stop at once.", file=sys.stderr)
        if runner.abort_on_stop:  # Ray: waiting for the next result could take a whole fit
            raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", signal.SIGTERM)):
        try:
            old[sig] = signal.signal(sig, on_signal)
        except ValueError:  # not the main thread
            pass
    counts = {"ok": 0, "failed": 0}
    t0 = time.perf_counter()
    bar = tqdm(total=len(todo.run), unit="photo", disable=args.no_progress, file=sys.stderr,
               dynamic_ncols=True, desc="batch")
    setup_error = None
    try:
        runner.start()
        log(f"fitting with {runner.describe()}, preset {args.preset}")
        for photo, res in runner.results(todo.run):
            status = res.get("status")
            if status == "cancelled":
                continue  # not recorded: redone on resume
            if status == "setup_failed":
                setup_error = res
                stop.set()
                runner.stop()
                continue
            rec = P.record(photo, res, todo.attempts[photo.id], args.preset, res.get("worker", "?"), engine_tag)
            manifest.append(rec)
            counts["ok" if status == "ok" else "failed"] += 1
            bar.update(1)
            if status == "ok":
                m = res.get("metrics") or {}
                lm = m.get("landmark_error_iod")
                log(f"ok {photo.name}: {res.get('seconds', 0):.1f} s"
                    + (f", landmark error {lm:.3f} IOD" if isinstance(lm, (int, float)) else ""))
            else:
                log(f"FAILED {photo.name} (exit {res.get('exit_code')}, {res.get('code')}): {res.get('error')}")
            bar.set_postfix(ok=counts["ok"], failed=counts["failed"], refresh=False)
    except KeyboardInterrupt:
        stop.set()
    finally:
        runner.close()
        bar.close()
        for sig, h in old.items():
            signal.signal(sig, h)
        P.sweep(out)
    if setup_error is not None:
        print(f"error: {setup_error.get('error')}", file=sys.stderr)
        P.remove_if_unused(out, created)
        return int(setup_error.get("exit_code") or 5)
    _summary(out, manifest, photos, counts, time.perf_counter() - t0, stopped=stop.is_set())
    if stop.is_set():
        return EXIT_STOPPED
    return _exit_status(manifest, photos)


def _make_runner(args: argparse.Namespace):
    out = Path(args.output).expanduser().absolute()
    if args.ray is not None:
        from .ray_run import RayRunner
        return RayRunner(_options(args), out, args.workers, args.threads, address=args.ray or None)
    from .local import LocalRunner
    return LocalRunner(_options(args), out, args.workers, args.threads)


def _metrics_of(folder: Path) -> dict | None:
    from ..contract import read_result_json
    meta = read_result_json(folder) or {}
    return meta.get("metrics")


def _exit_status(manifest, photos) -> int:
    state = manifest.read()
    bad = [p for p in photos if state.get(p.id, {}).get("last", {}).get("status") != "ok"]
    return EXIT_SOME_FAILED if bad else 0


def _summary(out: Path, manifest, photos, counts: dict, seconds: float, stopped: bool) -> None:
    state = manifest.read()
    ok = [p for p in photos if state.get(p.id, {}).get("last", {}).get("status") == "ok"]
    failed = [p for p in photos if state.get(p.id, {}).get("last", {}).get("status") == "failed"]
    rate = f", {counts['ok'] / seconds * 3600:.0f} photos/hour" if seconds > 0 and counts["ok"] else ""
    print(f"{'stopped' if stopped else 'done'}: this run fitted {counts['ok']} and failed {counts['failed']} in "
          f"{seconds:.0f} s{rate}. In all: {len(ok)} of {len(photos)} photos have a result, {len(failed)} "
          f"failed, {len(photos) - len(ok) - len(failed)} not done yet.", file=sys.stderr)
    for p in failed[:20]:
        last = state[p.id]["last"]
        print(f"  failed: {p.name} (exit {last.get('exit_code')}, {last.get('code')}): {last.get('error')}",
              file=sys.stderr)
    if len(failed) > 20:
        print(f"  ... and {len(failed) - 20} more: see {out / 'manifest.jsonl'}", file=sys.stderr)
    print(f"manifest: {out / 'manifest.jsonl'}", file=sys.stderr)
