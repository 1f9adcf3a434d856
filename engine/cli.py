"""Command line of the engine: ``python -m engine <command>``.

Commands:
  fit PHOTO -o OUTDIR     fit the face model to one photo and write a result folder
  batch DIR -o OUTDIR     fit every photo of a folder (resumable; --workers, --ray; docs/batch.md)
  detect PHOTO            detect faces and landmarks (``--json`` for one JSON object)
  render-model -o PNG     render the neutral face and random identities/expressions
  check                   self-check: versions, device, backends, models

Exit codes and presets are defined once in ``contract.py`` (``--help`` prints the table;
docs/protocol.md explains it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

from . import __version__
from .argtypes import whole
from .contract import DEFAULT_PRESET, PRESET_NAMES, exit_code_summary

PRESETS = PRESET_NAMES
FOCAL_35MM_RANGE = (4.0, 2000.0)  # fisheye to super-telephoto, 35 mm equivalent
SEED_MAX = 2 ** 32 - 1


_whole = whole  # the shared type (engine/argtypes.py)


def _focal_35mm(text: str) -> float:
    lo, hi = FOCAL_35MM_RANGE
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of millimetres, got {text!r}") from None
    if not math.isfinite(v) or not lo <= v <= hi:
        raise argparse.ArgumentTypeError(f"must be between {lo:g} and {hi:g} mm (35 mm equivalent), "
                                         f"got {text}")
    return v


_json_errors = False  # set by main() when the command line asks for the protocol


class _Parser(argparse.ArgumentParser):
    """argparse that, under --json-progress, also reports a usage error as one protocol line."""

    def error(self, message: str):
        if _json_errors:
            from .protocol import encode
            text = f"{self.prog}: {message}. See '{self.prog} --help'."
            try:
                sys.stdout.write(encode("error", code="usage", exit_code=2, msg=text, detail=None) + "\n")
                sys.stdout.flush()
            except (OSError, ValueError):
                pass
        super().error(message)


def _fit_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("fit", help="fit one photo (or several of one person) and write a result folder",
                       description="Fit the ICT face model, texture, camera and lighting to one photo "
                                   "(GANFit-style) and write a result folder (docs/result-format.md). "
                                   "Several photos of ONE person (PHOTO PHOTO ... or --photos DIR) give "
                                   "one head: one shape and texture, a pose, expression, lighting and "
                                   "camera per photo, the albedo merged from all of them; the first "
                                   "photo is the primary view (docs/result-format.md, 'Several photos').")
    p.add_argument("photo", nargs="?", metavar="PHOTO",
                   help="the photo (JPEG, PNG, ...); EXIF orientation is applied")
    p.add_argument("more_photos", nargs="*", metavar="MORE",
                   help="more photos of the same person: one head fitted to all of them (the first "
                        "photo is the primary view)")
    p.add_argument("--photos", metavar="DIR", dest="photos_dir",
                   help="fit every image file in DIR (sorted by name) as photos of one person, "
                        "instead of listing them")
    p.add_argument("-o", "--output", required=True, help="result folder to create")
    p.add_argument("--preset", choices=PRESETS, default=DEFAULT_PRESET,
                   help=f"speed/quality trade-off (default: {DEFAULT_PRESET})")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto = CUDA when available (nvdiffrast if installed), else CPU")
    p.add_argument("--face-index", type=_whole(0), default=0,
                   help="which face when there are several, largest first (default 0)")
    p.add_argument("--seed", type=_whole(0, SEED_MAX), default=0,
                   help="random seed, 0..2^32-1 (the same seed and --threads give the same result)")
    p.add_argument("--texture-res", type=int, choices=(256, 512, 1024, 2048),
                   help="albedo atlas size (default: from the preset)")
    p.add_argument("--neutral", action="store_true",
                   help="fit identity only, with a neutral expression")
    p.add_argument("--recognizer", choices=("dlib", "arcface", "none"), default="dlib",
                   help="face recogniser for the identity/content losses (arcface needs insightface's "
                        "w600k_r50.onnx, research-only licence)")
    p.add_argument("--recognizer-path", help="path to the recogniser weights (arcface .onnx)")
    p.add_argument("--texture-model", default="default",
                   help="'default' (the shipped learned model, engine/data/texture/default.pt; the "
                        "per-texel texture with a warning if it is missing), 'texel' (per-texel "
                        "albedo) or a generator checkpoint (.pt)")
    p.add_argument("--detail", action=argparse.BooleanOptionalAction, default=None,
                   help="a learned model's per-texel detail layer from the photo where it is "
                        "trusted (default: off; it keeps wrinkles and freckles but did not raise "
                        "the identity measure)")
    p.add_argument("--landmarks", choices=("mediapipe", "fan"), default="mediapipe",
                   help="landmark detector (fan needs the face-alignment package and its weights)")
    p.add_argument("--focal-35mm", type=_focal_35mm,
                   help="35 mm-equivalent focal length, %g..%g (default: EXIF, else 50)" % FOCAL_35MM_RANGE)
    p.add_argument("--max-steps", type=_whole(1),
                   help="cap the optimisation steps of each stage (tests and quick looks)")
    p.add_argument("--threads", type=_whole(1), help="CPU threads, at least 1 (default: all cores)")
    p.add_argument("--json-progress", action="store_true",
                   help="write the JSON-lines progress protocol on stdout (docs/protocol.md)")
    p.add_argument("--report", action="store_true", help="also write report.png")
    p.add_argument("--overwrite", action="store_true", help="replace an existing result folder")
    p.add_argument("--preview-every", type=_whole(0), default=0,
                   help="send a preview image every N steps (0 = a few per run with --json-progress)")
    return p


def resolve_photos(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """``fit``'s photos as one list, ``args.photos`` (``args.photo`` stays the first): the listed
    ones, or the image files of ``--photos DIR`` sorted by name. A usage error (exit 2) for none,
    for both ways at once, and for a folder with no image file."""
    from pathlib import Path

    from .batch.plan import PHOTO_EXT  # the image files a folder holds, as `batch` takes them
    listed = ([args.photo] if args.photo else []) + list(args.more_photos or [])
    d = args.photos_dir
    if d is not None and listed:
        parser.error("give the photos either as arguments or with --photos DIR, not both")
    if d is not None:
        folder = Path(d).expanduser()
        if not folder.is_dir():
            parser.error(f"--photos: not a folder: {d}")
        try:
            found = sorted(p for p in folder.iterdir()
                           if not p.name.startswith(".") and p.is_file() and p.suffix.lower() in PHOTO_EXT)
        except OSError as e:
            parser.error(f"--photos: cannot read {d}: {e.strerror or e}")
        if not found:
            parser.error(f"--photos: no image files in {d} (looked for {', '.join(sorted(PHOTO_EXT))})")
        listed = [str(p) for p in found]
    if not listed:
        parser.error("give a photo (or several of one person, or --photos DIR)")
    args.photos = listed
    args.photo = listed[0]


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(
        prog="python -m engine",
        description="ganfit engine %s: GANFit-style 3D face fitting from one photo." % __version__,
        epilog=f"Exit codes: {exit_code_summary()}. See docs/protocol.md.")
    ap.add_argument("--version", action="version", version=__version__)
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    ap.fit_parser = _fit_parser(sub)
    from .batch.cli import add_parser as add_batch_parser
    add_batch_parser(sub)

    d = sub.add_parser("detect", help="detect faces and landmarks in a photo")
    d.add_argument("photo")
    d.add_argument("--json", action="store_true", help="print one JSON object")
    d.add_argument("--dense", action="store_true", help="include the dense landmarks")
    d.add_argument("--debug-image", help="write the photo with the landmarks drawn on it")

    r = sub.add_parser("render-model", help="render the face model (neutral + random faces)")
    r.add_argument("-o", "--output", required=True, help="PNG to write")
    r.add_argument("--size", type=int, default=320, help="tile size in pixels")
    r.add_argument("--seed", type=int, default=0)

    c = sub.add_parser("check", help="self-check: versions, device, backends, models")
    c.add_argument("--json", action="store_true")
    c.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")

    from .texture.cli import add_parsers as add_texture_parsers
    add_texture_parsers(sub)  # `texture dataset`, `texture train`
    return ap


def main(argv: list[str] | None = None) -> int:
    global _json_errors
    ap = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    _json_errors = "--json-progress" in argv
    args, rest = ap.parse_known_args(argv)
    if args.command == "fit" and rest and not any(r.startswith("-") for r in rest):
        args.more_photos = [*(args.more_photos or []), *rest]  # photos on both sides of the options
        rest = []
    if rest:
        ap.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "fit":
        resolve_photos(args, ap.fit_parser)
        from .fit.run import run_cli
        return run_cli(args)
    if args.command == "batch":
        from .batch.cli import main as batch_main
        return batch_main(args)
    if args.command == "detect":
        return _detect(args)
    if args.command == "texture":
        from .texture.cli import main as texture_main
        return texture_main(args)
    if args.command == "render-model":
        from .preview import render_model_sheet
        render_model_sheet(args.output, size=args.size, seed=args.seed)
        print(args.output)
        return 0
    if args.command == "check":
        from .check import run_check
        info = run_check(args.device)
        if args.json:
            print(json.dumps(info))
        else:
            for k, v in info.items():
                print(f"{k:>12}: {v}")
        return 0 if info.get("ok") else 1
    ap.error(f"unknown command {args.command}")
    return 2


def _detect(args: argparse.Namespace) -> int:
    from .errors import EngineError
    try:
        from .io.image import load_photo
        from .perception.landmarks import detect_faces, select_face
        img = load_photo(args.photo)
        faces = detect_faces(img)
        select_face(faces, 0, path=args.photo)
    except EngineError as e:
        if args.json:
            print(json.dumps({"error": {"code": e.code, "msg": e.message}}))
        print(f"error: {e.message}", file=sys.stderr)
        return e.exit_code
    out = {"photo": os.path.abspath(args.photo), "width": int(img.shape[1]), "height": int(img.shape[0]),
           "faces": []}
    for f in faces:
        item = {"box": [float(x) for x in f.box], "score": float(f.score),
                "landmarks68": f.landmarks68.round(2).tolist(), "scheme": f.scheme}
        if args.dense:
            item["landmarks_dense"] = f.landmarks.round(2).tolist()
        out["faces"].append(item)
    if args.debug_image:
        from .perception.draw import draw_faces
        draw_faces(img, faces).save(args.debug_image)
    if args.json:
        print(json.dumps(out))
    else:
        for i, f in enumerate(out["faces"]):
            print(f"face {i}: box={[round(x) for x in f['box']]} score={f['score']:.2f}")
    return 0
