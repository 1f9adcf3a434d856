"""Scripting API: ``from ganfit_blender import api`` (or ``bl_ext.<repo>.ganfit_blender.api``).

    ob = api.fit_photo("/photos/me.jpg", preset="fast")
    ob = api.fit_photos(["/photos/front.jpg", "/photos/left.jpg"])  # one head, a camera per photo
    ob = api.fit_photos("/photos/anna/")                             # every photo of a folder
    ob = api.import_result("ganfit/me-20250101-120000")

Several photos must all show the same person: the engine fits one shape and texture to all of
them, with a pose, expression, lighting and camera per photo, and warns (``ob["ganfit_warnings"]``)
when a photo seems to show someone else. The first photo is the primary one (its camera is the
scene camera; ``importer.head_cameras(ob)`` lists the others, ``importer.use_camera`` switches).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import bpy

from . import importer, runner


class FitFailed(RuntimeError):
    """The fit did not produce an object; the message is the engine's or the add-on's."""


def fit_photo(path: str | Path | Sequence[str | Path], **options: Any) -> bpy.types.Object:
    """Fit a photo and import the result (blocks until the engine has finished).

    Args:
        path: the photo; a list of photos (or a folder) is passed on to :func:`fit_photos`.
        **options: ``ganfit.fit`` operator options: ``preset`` ('fast'|'balanced'|'best'),
            ``texture_resolution`` ('256'..'2048'), ``fit_expression``, ``create_camera``,
            ``output_dir``, ``overwrite`` (replace ``output_dir`` if it is a GANFit result folder;
            any other existing folder is refused), ``max_steps``.

    Returns:
        The new mesh object (active).

    Raises:
        FitFailed: the engine failed, was cancelled, or the import failed.
    """
    if not isinstance(path, (str, os.PathLike)) or Path(path).is_dir():
        return fit_photos(path, **options)
    return _run_fit(options, filepath=str(path))


def fit_photos(paths: str | Path | Sequence[str | Path], **options: Any) -> bpy.types.Object:
    """Fit one head to several photos of one person and import it with one camera per photo
    (blocks until the engine has finished).

    Args:
        paths: the photos (the first is the primary photo), or a folder: every photo in it,
            sorted by name. One photo works too (the same as :func:`fit_photo`).
        **options: as for :func:`fit_photo`.

    Returns:
        The new mesh object (active); its cameras are ``importer.head_cameras(ob)``.

    Raises:
        FitFailed: no photos, a photo or the folder missing, the engine failed, or the import
            failed.
    """
    if isinstance(paths, (str, os.PathLike)):
        if Path(paths).is_dir():
            return _run_fit(options, photo_dir=str(paths))
        paths = [paths]
    photos = [str(p) for p in paths]
    if not photos:
        raise FitFailed("No photos given")
    return _run_fit(options, filepath=photos[0],
                    extra_photos=[{"name": Path(p).name, "path": p} for p in photos[1:]])


def _run_fit(options: dict[str, Any], **inputs: Any) -> bpy.types.Object:
    for key in ("filepath", "extra_photos", "photo_dir"):
        if key in options:
            raise TypeError(f"pass the photos as the first argument, not as {key}=")
    before = set(bpy.data.objects)
    try:
        result = bpy.ops.ganfit.fit("EXEC_DEFAULT", **inputs, **options)
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
