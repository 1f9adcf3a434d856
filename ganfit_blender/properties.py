"""Scene inputs (saved with the .blend) and WindowManager job state (never saved)."""

from __future__ import annotations

import bpy
from bpy.props import (BoolProperty, CollectionProperty, EnumProperty, FloatProperty, IntProperty,
                       PointerProperty, StringProperty)

from . import contract

# The engine's presets and their descriptions come from the contract (engine/contract.py).
ENGINE_PRESET_ITEMS = tuple((p.name, p.label, p.description) for p in contract.PRESETS)
PRESET_ITEMS = (
    ("DEFAULT", "Default", "The default preset set in the add-on preferences"),
) + ENGINE_PRESET_ITEMS

TEXTURE_RES_ITEMS = (
    ("PRESET", "From Preset", "Use the preset's texture size"),
    ("256", "256", "256 x 256 albedo atlas"),
    ("512", "512", "512 x 512 albedo atlas"),
    ("1024", "1024", "1024 x 1024 albedo atlas"),
    ("2048", "2048", "2048 x 2048 albedo atlas"),
)

SOURCE_ITEMS = (
    ("FILE", "File", "A photo file on disk (add more photos of the same person below)"),
    ("IMAGE", "Image", "An image already loaded in Blender"),
    ("FOLDER", "Folder", "Every photo in a folder, all of one person: one head, one camera per "
                         "photo"),
)


class GANFIT_PG_photo(bpy.types.PropertyGroup):
    """One more photo of the same person (``scene.ganfit.extra_photos``)."""

    path: StringProperty(name="Photo", subtype="FILE_PATH",
                         description="Another photo of the same person")


class GANFIT_PG_settings(bpy.types.PropertyGroup):
    """Fit inputs, per scene (``scene.ganfit``)."""

    source: EnumProperty(name="Source", items=SOURCE_ITEMS, default="FILE",
                         description="Where the photo comes from")
    photo_path: StringProperty(name="Photo", subtype="FILE_PATH",
                               description="Photo of one face (JPEG, PNG, ...)")
    photo_image: PointerProperty(name="Image", type=bpy.types.Image,
                                 description="An image already loaded in Blender")
    extra_photos: CollectionProperty(name="More Photos", type=GANFIT_PG_photo,
                                     description="More photos of the same person: one head is "
                                                 "fitted to all of them, with a camera per photo")
    extra_photos_index: IntProperty(name="Active Photo", default=0, min=0)
    photo_dir: StringProperty(name="Photo Folder", subtype="DIR_PATH",
                              description="A folder of photos of one person (every JPEG, PNG, "
                                          "... in it, sorted by name; the first is the primary "
                                          "photo)")
    preset: EnumProperty(name="Preset", items=PRESET_ITEMS, default="DEFAULT",
                         description="Speed/quality trade-off of the fit")
    texture_resolution: EnumProperty(name="Texture", items=TEXTURE_RES_ITEMS, default="PRESET",
                                     description="Size of the fitted albedo texture")
    fit_expression: BoolProperty(name="Fit Expression", default=True,
                                 description="Fit the expression in the photo (off: neutral face)")
    create_camera: BoolProperty(name="Create Camera", default=True,
                                description="Add a camera that matches the photo, with the photo as "
                                            "its background")


class GANFIT_PG_runtime(bpy.types.PropertyGroup):
    """State of the running or last job (``window_manager.ganfit``; not saved in files)."""

    running: BoolProperty(name="Running", default=False)
    progress: FloatProperty(name="Progress", default=0.0, min=0.0, max=1.0, subtype="FACTOR")
    stage: StringProperty(name="Stage")
    eta: FloatProperty(name="ETA", default=-1.0, unit="TIME_ABSOLUTE",
                       description="Estimated seconds left (-1 when unknown)")
    message: StringProperty(name="Message")
    last_summary: StringProperty(name="Last Summary")
    last_error: StringProperty(name="Last Error")
    last_warnings: StringProperty(name="Last Warnings",
                                  description="Warnings of the last import, one a line")
    last_result: StringProperty(name="Last Result", subtype="DIR_PATH")
    preview_image: StringProperty(name="Preview Image",
                                  description="Name of the image that shows the latest overlay")
    pid: IntProperty(name="Engine PID", default=0)


classes = (GANFIT_PG_photo, GANFIT_PG_settings, GANFIT_PG_runtime)
