"""Render a .blend made by the extension (e.g. demo_out/ganfit_demo.blend) to PNG images with
Cycles on the CPU: the imported head from the fitted photo camera and from a three-quarter view.

    python scripts/render_blend.py demo_out/ganfit_demo.blend -o demo_out/blender [--size 512]

Runs under a Python with the ``bpy`` module (the repo's .venv). Used for the README picture and to
check by eye that the import (mesh, UVs, material, camera) is right.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("blend", type=Path)
    ap.add_argument("-o", "--out", type=Path, required=True)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--no-denoise", action="store_true", help="raw Cycles samples (noisy shadows)")
    a = ap.parse_args(argv)
    os.environ.setdefault("BLENDER_USER_RESOURCES", tempfile.mkdtemp(prefix="ganfit-bl-"))
    import bpy
    from mathutils import Vector

    bpy.ops.wm.open_mainfile(filepath=str(a.blend.resolve()))
    scene = bpy.context.scene
    head = next(o for o in scene.objects if o.type == "MESH")
    photo_cam = next((o for o in scene.objects if o.type == "CAMERA"), None)
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = a.samples
    # Denoised (OpenImageDenoise, in the bpy wheel): at a few samples the parts lit only by the
    # world (the neck in the head's shadow) are otherwise speckled, which reads as a noisy albedo.
    import _cycles
    scene.cycles.use_denoising = bool(getattr(_cycles, "with_openimagedenoise", False)) and not a.no_denoise
    if scene.cycles.use_denoising:
        scene.cycles.denoiser = "OPENIMAGEDENOISE"
    scene.render.film_transparent = False
    world = scene.world or bpy.data.worlds.new("World")
    scene.world = world
    world.color = (0.35, 0.36, 0.4)
    light_data = bpy.data.lights.new("key", "SUN")
    light_data.energy = 3.0
    light = bpy.data.objects.new("key", light_data)
    light.rotation_euler = (math.radians(50), 0, math.radians(-30))
    scene.collection.objects.link(light)
    a.out.mkdir(parents=True, exist_ok=True)
    written = []
    if photo_cam is not None:
        scene.camera = photo_cam
        s = a.size / max(scene.render.resolution_x, scene.render.resolution_y)
        scene.render.resolution_percentage = max(1, min(100, round(100 * s)))
        photo_cam.data.show_background_images = False
        scene.render.filepath = str(a.out / "photo_camera.png")
        bpy.ops.render.render(write_still=True)
        written.append(scene.render.filepath)
    # Three-quarter view around the head's bounding-box centre.
    corners = [head.matrix_world @ Vector(c) for c in head.bound_box]
    centre = sum(corners, Vector()) / 8
    radius = max((c - centre).length for c in corners)
    cam_data = bpy.data.cameras.new("three_quarter")
    cam_data.lens = 85
    cam = bpy.data.objects.new("three_quarter", cam_data)
    scene.collection.objects.link(cam)
    direction = Vector((math.sin(math.radians(35)), -math.cos(math.radians(35)), 0.12)).normalized()
    cam.location = centre + direction * radius * 4.2
    cam.rotation_euler = (centre - cam.location).to_track_quat("-Z", "Y").to_euler()
    scene.camera = cam
    scene.render.resolution_x = scene.render.resolution_y = a.size
    scene.render.resolution_percentage = 100
    scene.render.filepath = str(a.out / "three_quarter.png")
    bpy.ops.render.render(write_still=True)
    written.append(scene.render.filepath)
    print("\n".join(written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
