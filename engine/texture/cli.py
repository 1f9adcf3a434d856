"""``python -m engine texture ...``: the texture model's commands, one subparser each.

``dataset`` (dataset.py) builds a UV texture dataset from photos; ``train`` (the trainer's own
module) registers itself in ``add_parsers`` below when it exists.
"""

from __future__ import annotations

import argparse
import sys

from ..argtypes import whole


def _dataset_parser(sub) -> None:
    p = sub.add_parser("dataset", help="build a UV texture dataset from photos (resumable)",
                       description="Fit every photo, unwrap it into the UV atlas, de-light it and "
                       "weight each texel by visibility x cos(view) x skin probability; writes "
                       "shards and a manifest.jsonl into the output folder. Re-running resumes.",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="Time per photo on a 2-core CPU: ~12-19 s balanced, ~2-4 s fast. The whole "
                       "shared set (~1,200 photos) takes hours balanced; run it in the background and "
                       "re-run the same command to resume after a stop:\n"
                       "  nohup python -m engine texture dataset ../shared/faces/london-canada "
                       "../shared/faces/congress-pd -o ~/texdata --no-progress > texdata.log 2>&1 &\n"
                       "Ctrl-C or SIGTERM stops within a second or two: the photo being fitted is dropped and "
                       "redone on the next run; the manifest and shards stay consistent.")
    p.add_argument("inputs", nargs="+", metavar="PHOTO_OR_FOLDER",
                   help="photos, or folders whose photos are all used (not recursive)")
    p.add_argument("-o", "--output", required=True, help="dataset folder (new or one to resume; not in the repository)")
    p.add_argument("--res", type=int, choices=(256, 512), default=256, help="atlas size in texels")
    p.add_argument("--preset", choices=("fast", "balanced", "best"), default="balanced",
                   help="the fit's preset (fast: ~4x quicker, rougher geometry)")
    p.add_argument("--limit", type=whole(0), default=None, help="process at most this many new photos")
    p.add_argument("--retry-failed", action="store_true", help="redo photos that failed before")
    p.add_argument("--seed", type=whole(0, 2**32 - 1), default=0)
    p.add_argument("--max-steps", type=whole(1), default=None, help=argparse.SUPPRESS)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    p.add_argument("--threads", type=whole(1), default=None, help="torch CPU threads, at least 1")
    p.add_argument("--recognizer", choices=("dlib", "arcface", "none"), default="dlib",
                   help="identity loss of the balanced/best fit (none: skip it)")
    p.add_argument("--strict-licence", action="store_true",
                   help="leave out photos outside their source's stricter licence subset (congress-pd: "
                        "members who left before the 110th Congress, see its LICENSE.md)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    p.add_argument("--sheet", metavar="PNG", help="also write a contact sheet (albedo | weight, face box, "
                   "first 24 samples) of the dataset to this PNG")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``texture`` and its commands on the top-level parser's subparsers."""
    t = sub.add_parser("texture", help="texture model: build a dataset, train a model")
    tsub = t.add_subparsers(dest="texture_command", metavar="TEXTURE_COMMAND")
    tsub.required = True
    _dataset_parser(tsub)
    # The trainer's `train` command: engine/texture/train_cli.py defines add_parser(tsub) and
    # main(args) (keep its top-level imports light: every `python -m engine` builds this parser).
    import importlib.util
    if importlib.util.find_spec(f"{__package__}.train_cli") is None:
        return
    from . import train_cli
    train_cli.add_parser(tsub)

def main(args: argparse.Namespace) -> int:
    if args.texture_command == "dataset":
        from ..errors import EngineError
        from .dataset import build
        try:
            counts = build(args.inputs, args.output, res=args.res, preset=args.preset, limit=args.limit,
                           retry_failed=args.retry_failed, seed=args.seed, device=args.device,
                           max_steps=args.max_steps, recognizer=args.recognizer, threads=args.threads,
                           progress=not args.no_progress, strict_licence=args.strict_licence)
        except FileNotFoundError as e:
            raise SystemExit(f"error: {e}") from None
        except EngineError as e:
            print(f"error: {e.message}", file=sys.stderr)
            return e.exit_code
        if args.sheet:
            from .dataset import contact_sheet
            try:
                n = contact_sheet(args.output, args.sheet)
                print(f"contact sheet of {n} samples: {args.sheet}")
            except (ValueError, OSError) as e:
                print(f"warning: no contact sheet: {e}", file=sys.stderr)
        print(f"done: {counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} already done"
              + (" (stopped early; run again to resume)" if counts["stopped"] else ""))
        return 130 if counts["stopped"] else 0
    from . import train_cli
    return train_cli.main(args)
