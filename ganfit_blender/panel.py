"""View3D > Sidebar > GANFit. Draws only from properties and runner state: no file system access."""

from __future__ import annotations

from pathlib import PurePath
from typing import Any

import bpy

from . import importer, preferences, runner


def _fmt_eta(seconds: float) -> str:
    if seconds < 0:
        return ""
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}:{s:02d} left" if m else f"{s} s left"


def _draw_more_photos(col: Any, settings: Any) -> None:
    """More photos of the same person: one head, a camera per photo."""
    n = len(settings.extra_photos)
    if n == 0:
        col.operator("ganfit.add_photos", text="Add More Photos of This Person", icon="ADD")
        return
    col.label(text=f"More photos of this person: {n}")
    row = col.row()
    row.template_list("GANFIT_UL_photos", "", settings, "extra_photos", settings,
                      "extra_photos_index", rows=3)
    side = row.column(align=True)
    side.operator("ganfit.add_photos", text="", icon="ADD")
    side.operator("ganfit.remove_photo", text="", icon="REMOVE")
    side.operator("ganfit.remove_photo", text="", icon="X").clear = True


def _draw_cameras(layout: Any, context: Any) -> None:
    """The cameras of the active head (or of the head of the active photo camera) when it was
    fitted to several photos: one button each."""
    ob = context.view_layer.objects.active
    if ob is not None and ob.type == "CAMERA" and importer.CAMERA_HEAD_PROP in ob:
        ob = bpy.data.objects.get(str(ob[importer.CAMERA_HEAD_PROP]))
    cams = importer.head_cameras(ob)
    if len(cams) < 2:
        return
    box = layout.box()
    box.label(text="Photo cameras", icon="CAMERA_DATA")
    for cam in cams:
        photo = str(cam.get(importer.CAMERA_PHOTO_PROP, "")) or cam.name
        op = box.operator("ganfit.use_camera", text=PurePath(photo).name,
                          depress=context.scene.camera == cam,
                          icon="VIEW_CAMERA")
        op.camera = cam.name


class GANFIT_UL_photos(bpy.types.UIList):
    """More photos of the same person (``scene.ganfit.extra_photos``), by file name."""

    bl_idname = "GANFIT_UL_photos"

    def draw_item(self, context: Any, layout: Any, data: Any, item: Any, icon: int,
                  active_data: Any, active_propname: str, index: int = 0, *_args: Any) -> None:
        name = PurePath(item.path).name if item.path else "(no file)"
        layout.label(text=name, icon="IMAGE_DATA")


class GANFIT_PT_main(bpy.types.Panel):
    bl_idname = "GANFIT_PT_main"
    bl_label = "GANFit Face"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "GANFit"

    def draw(self, context: Any) -> None:
        layout = self.layout
        settings = context.scene.ganfit
        rt = context.window_manager.ganfit
        job = runner.active_job()

        col = layout.column()
        col.enabled = job is None
        col.row().prop(settings, "source", expand=True)
        if settings.source == "FILE":
            col.prop(settings, "photo_path", text="")
        elif settings.source == "IMAGE":
            col.template_ID(settings, "photo_image", open="image.open")
        else:
            col.prop(settings, "photo_dir", text="")
        if settings.source != "FOLDER":
            _draw_more_photos(col, settings)
        col.prop(settings, "preset")
        col.prop(settings, "texture_resolution")
        col.prop(settings, "fit_expression")
        col.prop(settings, "create_camera")

        if job is None:
            row = layout.row()
            row.scale_y = 1.4
            row.operator("ganfit.fit", icon="USER")
            layout.operator("ganfit.import_result", icon="IMPORT")
        else:
            self._draw_running(layout, rt)

        if rt.last_error:
            box = layout.box()
            for i, line in enumerate(rt.last_error.splitlines()[:8]):
                box.label(text=line, icon="ERROR" if i == 0 else "BLANK1")
        elif rt.last_summary and job is None:
            layout.label(text=rt.last_summary, icon="CHECKMARK")
        if rt.last_warnings and job is None and not rt.last_error:
            box = layout.box()
            for line in rt.last_warnings.splitlines()[:6]:
                box.label(text=line, icon="ERROR")

        if job is None:
            _draw_cameras(layout, context)
        if job is None and not preferences.STATUS["python"] and preferences.STATUS["checked"]:
            layout.label(text=preferences.STATUS["python_error"], icon="INFO")

    def _draw_running(self, layout: Any, rt: Any) -> None:
        text = rt.message or rt.stage or "Running"
        eta = _fmt_eta(rt.eta)
        if hasattr(layout, "progress"):  # Blender 4.0+
            layout.progress(factor=rt.progress, type="BAR",
                            text=f"{text} ({rt.progress * 100:.0f}%)")
        else:
            layout.label(text=f"{text}: {rt.progress * 100:.0f}%")
        if eta:
            layout.label(text=eta, icon="TIME")
        img = bpy.data.images.get(rt.preview_image) if rt.preview_image else None
        if img is not None:
            preview = img.preview
            if preview is not None and preview.icon_id:
                layout.template_icon(icon_value=preview.icon_id, scale=8.0)
        layout.operator("ganfit.cancel", icon="CANCEL")


classes = (GANFIT_UL_photos, GANFIT_PT_main)
