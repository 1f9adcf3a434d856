"""Operators: fit a photo (or several photos of one person), cancel a fit, import a result
folder, the list of more photos, and switching between a multi-photo result's cameras."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import bpy
from bpy.props import BoolProperty, CollectionProperty, EnumProperty, IntProperty, StringProperty

from . import importer, paths, preferences, runner
from .properties import GANFIT_PG_photo, PRESET_ITEMS, TEXTURE_RES_ITEMS

_OP_PRESET_ITEMS = (("SCENE", "Scene", "Use the scene's GANFit settings"),) + PRESET_ITEMS
_OP_TEXRES_ITEMS = (("SCENE", "Scene", "Use the scene's GANFit settings"),) + TEXTURE_RES_ITEMS


class FitError(Exception):
    """A fit that cannot start or did not produce a result; the message is for the user."""


def _report_warnings(op: Any, context: Any, ob: Any, extra: Any = ()) -> list[str]:
    """Report the import's warnings (the engine's ``warnings`` and the reader's) as WARNING
    reports and keep them for the panel. Returns them."""
    warnings = list(dict.fromkeys([*importer.result_warnings(ob),
                                   *(str(w) for w in (extra or ()) if isinstance(w, str))]))
    for w in warnings:
        op.report({"WARNING"}, w)
    rt = getattr(context.window_manager, "ganfit", None)
    if rt is not None:
        rt.last_warnings = "\n".join(warnings)
    return warnings


def _photo_from_image(image: bpy.types.Image) -> str:
    """A file path for a Blender image: its own file if unchanged on disk, else a PNG copy."""
    src = bpy.path.abspath(image.filepath) if image.filepath else ""
    if src and Path(src).is_file() and not image.packed_file and not image.is_dirty:
        return src
    out = Path(tempfile.gettempdir()) / "ganfit" / "photos" / f"{bpy.path.clean_name(image.name)}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    copy = image.copy()
    try:
        copy.filepath_raw = str(out)
        copy.file_format = "PNG"
        copy.save()
    except RuntimeError as exc:
        raise FitError(f"Cannot write image '{image.name}' for the engine: {exc}") from exc
    finally:
        bpy.data.images.remove(copy)
    return str(out)


def _unique(photos: list[str]) -> list[str]:
    """The photos in order, each file once (the same file twice adds nothing to a fit)."""
    seen, out = set(), []
    for p in photos:
        try:
            key = str(Path(p).resolve())
        except (OSError, RuntimeError):
            key = p
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def _check_photo_dir(folder: str) -> str:
    if not Path(folder).is_dir():
        raise FitError(f"Photo folder not found: {folder}")
    try:
        found = paths.photos_in(Path(folder))
    except OSError as exc:
        raise FitError(f"Cannot read the photo folder {folder}: {exc}") from exc
    if not found:
        raise FitError(f"No photos in {folder} (looked for "
                       f"{', '.join(s.lstrip('.') for s in paths.PHOTO_SUFFIXES)} files)")
    return folder


def _result_base(prefs: Any) -> Path:
    if prefs is not None and prefs.result_location == "CUSTOM" and prefs.result_dir.strip():
        return Path(bpy.path.abspath(prefs.result_dir))
    return paths.results_base(bpy.data.filepath)


class GANFIT_OT_fit(bpy.types.Operator):
    """Fit a 3D face to the photo and import it with its texture, expression shape keys and camera"""

    bl_idname = "ganfit.fit"
    bl_label = "Fit Face"
    bl_options = {"REGISTER", "UNDO"}

    filepath: StringProperty(name="Photo", subtype="FILE_PATH",
                             description="Photo to fit (empty: the scene's GANFit photo)")
    extra_photos: CollectionProperty(name="More Photos", type=GANFIT_PG_photo,
                                     description="More photos of the same person (with filepath: "
                                                 "one head fitted to all of them)",
                                     options={"HIDDEN", "SKIP_SAVE"})
    photo_dir: StringProperty(name="Photo Folder", subtype="DIR_PATH",
                              description="Fit every photo in this folder, all of one person "
                                          "(instead of filepath)",
                              options={"SKIP_SAVE"})
    preset: EnumProperty(name="Preset", items=_OP_PRESET_ITEMS, default="SCENE")
    texture_resolution: EnumProperty(name="Texture", items=_OP_TEXRES_ITEMS, default="SCENE")
    fit_expression: BoolProperty(name="Fit Expression", default=True)
    create_camera: BoolProperty(name="Create Camera", default=True)
    output_dir: StringProperty(name="Result Folder", subtype="DIR_PATH",
                               description="Result folder to create (empty: automatic)")
    overwrite: BoolProperty(name="Overwrite", default=False,
                            description="Replace the Result Folder if it is a GANFit result "
                                        "(any other existing folder is never replaced)")
    max_steps: IntProperty(name="Max Steps", default=0, min=0,
                           description="Cap the steps of each stage (0: the preset's); for quick "
                                       "looks and tests", options={"HIDDEN", "SKIP_SAVE"})

    _job: runner.Job | None = None
    _timer: Any = None

    @classmethod
    def poll(cls, context: Any) -> bool:
        return runner.active_job() is None

    # -- resolving inputs ------------------------------------------------------------------
    def _opt(self, context: Any, name: str) -> Any:
        """The operator's value if set by the caller, else the scene setting."""
        settings = getattr(context.scene, "ganfit", None)
        if self.properties.is_property_set(name) or settings is None:
            return getattr(self, name)
        return getattr(settings, name)

    def _inputs(self, context: Any) -> tuple[list[str], str | None]:
        """(photos, photo folder) to fit: the operator's own (``filepath`` and
        ``extra_photos``, or ``photo_dir``) when the caller gave any, else the scene's (its
        source's photo and its More Photos, or its Photo Folder). Checked to exist."""
        settings = getattr(context.scene, "ganfit", None)
        extra = [p.path for p in self.extra_photos if p.path.strip()]
        if self.filepath or extra or self.photo_dir:
            if self.photo_dir and (self.filepath or extra):
                raise FitError("Give photos or a photo folder, not both")
            main, folder = self.filepath, self.photo_dir
        else:
            main, folder = "", ""
            if settings is not None:
                if settings.source == "FOLDER":
                    folder = settings.photo_dir
                    if not folder:
                        raise FitError("Choose a photo folder first")
                elif settings.source == "IMAGE" and settings.photo_image is not None:
                    main = _photo_from_image(settings.photo_image)
                else:  # as before: an Image source with no image falls back to the file
                    main = settings.photo_path
                if settings.source != "FOLDER":
                    extra = [p.path for p in settings.extra_photos if p.path.strip()]
        if folder:
            return [], _check_photo_dir(bpy.path.abspath(folder))
        photos = _unique([bpy.path.abspath(p) for p in [main, *extra] if p])
        if not photos:
            raise FitError("Choose a photo first")
        for photo in photos:
            if not Path(photo).is_file():
                raise FitError(f"Photo not found: {photo}")
        return photos, None

    def _start(self, context: Any) -> runner.Job:
        prefs = preferences.get_prefs(context)
        settings = getattr(context.scene, "ganfit", None)
        photos, photo_dir = self._inputs(context)
        photo = photos[0] if photos else photo_dir

        preset = self.preset
        if preset == "SCENE":
            preset = settings.preset if settings is not None else "DEFAULT"
        if preset == "DEFAULT":
            preset = prefs.default_preset if prefs is not None else "balanced"
        texres = self.texture_resolution
        if texres == "SCENE":
            texres = settings.texture_resolution if settings is not None else "PRESET"
        texture_res = int(texres) if texres.isdigit() else None

        python, err = preferences.resolve_engine_python(prefs)
        if python is None:
            raise FitError(err)
        extra_args, extra_env = preferences.engine_options(prefs)
        device = prefs.device if prefs is not None else "auto"
        try:
            if self.output_dir:
                out = Path(bpy.path.abspath(self.output_dir))
                runner.check_output_dir(out, photos or [photo_dir], self.overwrite)
            else:
                base = _result_base(prefs)
                try:
                    out = paths.new_result_dir(base, photo)
                except OSError as exc:
                    raise FitError(f"Cannot write results under {base}: {exc}") from exc
            return runner.start_fit(photos, out, python=python, photos_dir=photo_dir,
                                    preset=preset, device=device, texture_res=texture_res,
                                    neutral=not self._opt(context, "fit_expression"),
                                    max_steps=self.max_steps or None,
                                    overwrite=bool(self.output_dir) and self.overwrite,
                                    extra_args=extra_args, extra_env=extra_env)
        except runner.FitStartError as exc:
            raise FitError(str(exc)) from exc

    def _finish(self, context: Any, job: runner.Job) -> set[str]:
        wm_rt = getattr(context.window_manager, "ganfit", None)
        if job.state != "done":
            msg = job.error_message() or "The fit did not finish"
            if wm_rt is not None:
                wm_rt.last_error = msg
            self.report({"ERROR"} if job.state == "failed" else {"WARNING"}, msg)
            return {"CANCELLED"}
        folder = (job.result or {}).get("dir") or str(job.result_dir)
        try:
            ob = importer.import_result(folder, context,
                                        create_camera=self._opt(context, "create_camera"))
        except importer.ResultImportError as exc:
            if wm_rt is not None:
                wm_rt.last_error = str(exc)
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        summary = runner.format_summary((job.result or {}).get("summary") or {})
        warnings = _report_warnings(self, context, ob, (job.result or {}).get("warnings"))
        note = f"; {len(warnings)} warning(s)" if warnings else ""
        self.report({"INFO"}, f"Imported {ob.name} ({summary}{note})")
        return {"FINISHED"}

    # -- entry points ----------------------------------------------------------------------
    def execute(self, context: Any) -> set[str]:
        """Blocking run: background mode, scripts and EXEC_DEFAULT calls."""
        try:
            job = self._start(context)
        except FitError as exc:
            self._report_error(context, str(exc))
            return {"CANCELLED"}
        try:
            runner.wait(job)
        except KeyboardInterrupt:
            job.client.stop(grace=2.0)
            runner.wait(job, timeout=10)
        return self._finish(context, job)

    def invoke(self, context: Any, event: Any) -> set[str]:
        if bpy.app.background or context.window is None:
            return self.execute(context)
        try:
            self._job = self._start(context)
        except FitError as exc:
            self._report_error(context, str(exc))
            return {"CANCELLED"}
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.2, window=context.window)
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context: Any, event: Any) -> set[str]:
        job = self._job
        if job is None:
            return {"CANCELLED"}
        if event.type == "ESC" and event.value == "PRESS":
            job.cancel()
            return {"RUNNING_MODAL"}
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        runner.poll()
        if not job.finished:
            return {"PASS_THROUGH"}
        context.window_manager.event_timer_remove(self._timer)
        self._timer = None
        return self._finish(context, job)

    def cancel(self, context: Any) -> None:
        # Blender ends the modal operator (e.g. the window closes): do not leave the child running.
        if self._job is not None and not self._job.finished:
            self._job.cancel()
        if self._timer is not None:
            context.window_manager.event_timer_remove(self._timer)
            self._timer = None

    def _report_error(self, context: Any, msg: str) -> None:
        rt = getattr(context.window_manager, "ganfit", None)
        if rt is not None:
            rt.last_error = msg
            rt.running = False
        self.report({"ERROR"}, msg)


class GANFIT_OT_cancel(bpy.types.Operator):
    """Stop the running fit"""

    bl_idname = "ganfit.cancel"
    bl_label = "Cancel Fit"
    bl_options = {"INTERNAL"}

    @classmethod
    def poll(cls, context: Any) -> bool:
        job = runner.active_job()
        return job is not None and not job.client.cancel_requested

    def execute(self, context: Any) -> set[str]:
        job = runner.active_job()
        if job is None:
            return {"CANCELLED"}
        job.cancel()
        rt = getattr(context.window_manager, "ganfit", None)
        if rt is not None:
            rt.message = "Cancelling..."
        return {"FINISHED"}


class GANFIT_OT_import_result(bpy.types.Operator):
    """Import a GANFit result folder (face mesh, texture, expression shape keys, camera)"""

    bl_idname = "ganfit.import_result"
    bl_label = "Import GANFit Result"
    bl_options = {"REGISTER", "UNDO"}

    directory: StringProperty(name="Result Folder", subtype="DIR_PATH")
    create_camera: BoolProperty(name="Create Camera", default=True)
    shape_keys: BoolProperty(name="Expression Shape Keys", default=True)
    pack_texture: BoolProperty(name="Pack Texture", default=False,
                               description="Store albedo.png inside the .blend")

    def execute(self, context: Any) -> set[str]:
        if not self.directory:
            self.report({"ERROR"}, "Choose a result folder")
            return {"CANCELLED"}
        t0 = time.monotonic()
        try:
            ob = importer.import_result(bpy.path.abspath(self.directory), context,
                                        create_camera=self.create_camera,
                                        shape_keys=self.shape_keys,
                                        pack_texture=self.pack_texture)
        except importer.ResultImportError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        warnings = _report_warnings(self, context, ob)
        note = f"; {len(warnings)} warning(s)" if warnings else ""
        self.report({"INFO"}, f"Imported {ob.name} in {time.monotonic() - t0:.1f} s{note}")
        return {"FINISHED"}

    def invoke(self, context: Any, event: Any) -> set[str]:
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}


class GANFIT_OT_add_photos(bpy.types.Operator):
    """Add more photos of the same person: one head is fitted to all of them, with a camera per photo"""

    bl_idname = "ganfit.add_photos"
    bl_label = "Add Photos"
    bl_options = {"REGISTER", "UNDO", "INTERNAL"}

    directory: StringProperty(subtype="DIR_PATH", options={"HIDDEN", "SKIP_SAVE"})
    files: CollectionProperty(type=bpy.types.OperatorFileListElement,
                              options={"HIDDEN", "SKIP_SAVE"})
    filter_image: BoolProperty(default=True, options={"HIDDEN", "SKIP_SAVE"})
    filter_folder: BoolProperty(default=True, options={"HIDDEN", "SKIP_SAVE"})

    def execute(self, context: Any) -> set[str]:
        settings = context.scene.ganfit
        chosen = [str(Path(bpy.path.abspath(self.directory)) / f.name)
                  for f in self.files if f.name]
        if not chosen:
            self.report({"ERROR"}, "Choose one or more photos")
            return {"CANCELLED"}
        have = {bpy.path.abspath(p.path) for p in settings.extra_photos}
        have.add(bpy.path.abspath(settings.photo_path) if settings.photo_path else "")
        added = 0
        for path in chosen:
            if path in have:
                continue
            if not settings.photo_path and settings.source == "FILE":
                settings.photo_path = path  # the first photo chosen becomes the primary one
            else:
                item = settings.extra_photos.add()
                item.name, item.path = Path(path).name, path
            have.add(path)
            added += 1
        settings.extra_photos_index = max(0, len(settings.extra_photos) - 1)
        self.report({"INFO"}, f"Added {added} photo(s)")
        return {"FINISHED"}

    def invoke(self, context: Any, event: Any) -> set[str]:
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}


class GANFIT_OT_remove_photo(bpy.types.Operator):
    """Remove a photo from the list of more photos (the file stays on disk)"""

    bl_idname = "ganfit.remove_photo"
    bl_label = "Remove Photo"
    bl_options = {"REGISTER", "UNDO", "INTERNAL"}

    index: IntProperty(name="Index", default=-1,
                       description="Which photo (-1: the active one in the list)")
    clear: BoolProperty(name="All", default=False, description="Remove every photo of the list")

    @classmethod
    def poll(cls, context: Any) -> bool:
        settings = getattr(context.scene, "ganfit", None)
        return settings is not None and len(settings.extra_photos) > 0

    def execute(self, context: Any) -> set[str]:
        settings = context.scene.ganfit
        if self.clear:
            settings.extra_photos.clear()
            settings.extra_photos_index = 0
            return {"FINISHED"}
        i = settings.extra_photos_index if self.index < 0 else self.index
        if not 0 <= i < len(settings.extra_photos):
            self.report({"ERROR"}, f"No photo {i} in the list")
            return {"CANCELLED"}
        settings.extra_photos.remove(i)
        settings.extra_photos_index = min(i, max(0, len(settings.extra_photos) - 1))
        return {"FINISHED"}


class GANFIT_OT_use_camera(bpy.types.Operator):
    """Look through this photo's camera: make it the scene camera, with the render size of its photo"""

    bl_idname = "ganfit.use_camera"
    bl_label = "Use Photo Camera"
    bl_options = {"REGISTER", "UNDO", "INTERNAL"}

    camera: StringProperty(name="Camera", description="Name of a camera a GANFit import made")
    expression: BoolProperty(name="Photo's Expression", default=True,
                             description="Also set the head's expression shape keys to the "
                                         "expression fitted to this photo")

    def execute(self, context: Any) -> set[str]:
        cam = bpy.data.objects.get(self.camera)
        if cam is None or cam.type != "CAMERA" or importer.CAMERA_RESOLUTION_PROP not in cam:
            self.report({"ERROR"}, f"'{self.camera}' is not a GANFit camera (it may have been "
                                   "deleted): import the result again")
            return {"CANCELLED"}
        importer.use_camera(context.scene, cam, expression=self.expression)
        return {"FINISHED"}


classes = (GANFIT_OT_fit, GANFIT_OT_cancel, GANFIT_OT_import_result, GANFIT_OT_add_photos,
           GANFIT_OT_remove_photo, GANFIT_OT_use_camera)
