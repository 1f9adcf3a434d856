"""Import a GANFit result folder with the extension's own importer and save a .blend.

    python scripts/make_blend.py RESULT_DIR OUT.blend [--pack] [--no-camera]

Runs under a Python that has ``bpy`` (the PyPI module, e.g. the repo's .venv). The add-on is
enabled from this source tree; Blender's user folders point at a temporary folder so that the
run does not touch your Blender configuration.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("result_dir", type=Path, help="a result folder written by `python -m engine fit`")
    ap.add_argument("out", type=Path, help=".blend file to write")
    ap.add_argument("--pack", action="store_true", help="pack albedo.png into the .blend")
    ap.add_argument("--no-camera", action="store_true", help="do not create the photo camera")
    args = ap.parse_args(argv)

    os.environ.setdefault("BLENDER_USER_RESOURCES", tempfile.mkdtemp(prefix="ganfit-bl-"))
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    try:
        import bpy
        import addon_utils
    except ImportError:
        print("error: this script needs the `bpy` module (pip install bpy==5.0.1)", file=sys.stderr)
        return 2

    bpy.ops.wm.read_homefile(use_empty=True)
    if addon_utils.enable("ganfit_blender", default_set=True) is None:
        print("error: could not enable the ganfit_blender add-on", file=sys.stderr)
        return 1
    from ganfit_blender import importer

    out = args.out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        ob = importer.import_result(args.result_dir.resolve(), bpy.context,
                                    create_camera=not args.no_camera, pack_texture=args.pack)
    except importer.ResultImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    # relative_remap (the default) stores the texture path relative to the .blend.
    bpy.ops.wm.save_as_mainfile(filepath=str(out), relative_remap=True)
    keys = ob.data.shape_keys.key_blocks if ob.data.shape_keys else ()
    print(f"{out}: {ob.name}, {len(ob.data.vertices)} vertices, {len(ob.data.polygons)} faces, "
          f"{max(0, len(keys) - 1)} shape keys")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
