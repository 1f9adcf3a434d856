"""View3D > Sidebar > GANFit. Draws only from properties and runner state: no file system access."""

from __future__ import annotations

from typing import Any

import bpy

from . import preferences, runner


def _fmt_eta(seconds: float) -> str:
    if seconds < 0:
        return ""
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}:{s:02d} left" if m else f"{s} s left"


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
        else:
            col.template_ID(settings, "photo_image", open="image.open")
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


classes = (GANFIT_PT_main,)
