"""Scripting API: ``from ganfit_blender import api`` (or ``bl_ext.<repo>.ganfit_blender.api``).

    ob = api.fit_photo("/photos/me.jpg", preset="fast")
    ob = api.import_result("ganfit/me-20250101-120000")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bpy

from . import importer, runner


class FitFailed(RuntimeError):
    """The fit did not produce an object; the message is the engine's or the add-on's."""


def fit_photo(path: str | Path, **options: Any) -> bpy.types.Object:
    """Fit a photo and import the result (blocks until the engine has finished).

    Args:
        path: the photo.
        **options: ``ganfit.fit`` operator options: ``preset`` ('fast'|'balanced'|'best'),
            ``texture_resolution`` ('256'..'2048'), ``fit_expression``, ``create_camera``,
            ``output_dir``, ``overwrite`` (replace ``output_dir`` if it is a GANFit result folder;
            any other existing folder is refused), ``max_steps``.

    Returns:
        The new mesh object (active).

    Raises:
        FitFailed: the engine failed, was cancelled, or the import failed.
    """
    before = set(bpy.data.objects)
    try:
        result = bpy.ops.ganfit.fit("EXEC_DEFAULT", filepath=str(path), **options)
    except RuntimeError as exc:  # bpy.ops raises on an ERROR report in background mode
        raise FitFailed(str(exc).removeprefix("Error: ").strip()) from exc
    if "FINISHED" not in result:
        job = runner.jobs()[-1] if runner.jobs() else None
        msg = job.error_message() if job is not None else ""
        rt = getattr(bpy.context.window_manager, "ganfit", None)
        raise FitFailed(msg or (rt.last_error if rt is not None else "") or "The fit failed")
    new = [ob for ob in bpy.data.objects if ob not in before and ob.type == "MESH"]
    return bpy.context.view_layer.objects.active if not new else new[-1]


def import_result(folder: str | Path, **options: Any) -> bpy.types.Object:
    """Import a result folder. Options: ``create_camera``, ``shape_keys``, ``pack_texture``,
    ``name``. Raises ``importer.ResultImportError``."""
    return importer.import_result(folder, bpy.context, **options)
