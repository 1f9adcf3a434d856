"""GANFit face from a photo: a sidebar panel that runs the bundled fitting engine in a subprocess
and imports the fitted, textured face with its expression shape keys and camera.

The add-on never imports torch or the engine: they meet only through the engine's command line,
its JSON-lines progress on stdout, and the result folder (docs/protocol.md, docs/result-format.md).
"""

from __future__ import annotations

try:
    import bpy
except ModuleNotFoundError:  # outside Blender: only the bpy-free modules are usable
    bpy = None  # (contract, client, paths, result: their unit tests run without bpy)

if bpy is not None:
    from bpy.props import PointerProperty

    from . import operators, panel, preferences, properties, runner

    _classes = (
        *properties.classes,
        *preferences.classes,
        *operators.classes,
        *panel.classes,
    )


def _menu_import(self, context) -> None:
    self.layout.operator("ganfit.import_result", text="GANFit Result (folder)")


def register() -> None:
    for cls in _classes:
        bpy.utils.register_class(cls)
    bpy.types.Scene.ganfit = PointerProperty(type=properties.GANFIT_PG_settings)
    bpy.types.WindowManager.ganfit = PointerProperty(type=properties.GANFIT_PG_runtime)
    bpy.types.TOPBAR_MT_file_import.append(_menu_import)
    runner.register()


def unregister() -> None:
    runner.unregister()  # kills any running engine, drops the timer and handler
    preferences.stop_installer()
    bpy.types.TOPBAR_MT_file_import.remove(_menu_import)
    del bpy.types.WindowManager.ganfit
    del bpy.types.Scene.ganfit
    for cls in reversed(_classes):
        bpy.utils.unregister_class(cls)
