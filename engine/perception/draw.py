"""Drawing detected landmarks on a photo (debug images: `python -m engine detect --debug-image`,
scripts/debug_landmarks.py)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

# (first, last, closed, colour) of each 68-point group.
_GROUPS = [
    (0, 16, False, (255, 200, 0)),
    (17, 21, False, (255, 80, 80)),
    (22, 26, False, (80, 255, 80)),
    (27, 30, False, (255, 255, 255)),
    (31, 35, False, (255, 255, 255)),
    (36, 41, True, (255, 80, 80)),
    (42, 47, True, (80, 255, 80)),
    (48, 59, True, (255, 0, 255)),
    (60, 67, True, (0, 160, 255)),
]


def draw_faces(image: np.ndarray, faces: list, max_draw_side: int = 1600) -> Image.Image:
    """Render the faces onto a (possibly downscaled) copy of ``image``."""
    h, w = image.shape[:2]
    s = min(1.0, max_draw_side / max(h, w))
    canvas = Image.fromarray(image)
    if s < 1.0:
        canvas = canvas.resize((round(w * s), round(h * s)), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(canvas)
    for rank, face in enumerate(faces):
        box = [v * s for v in face.box]
        draw.rectangle(box, outline=(255, 255, 0) if rank == 0 else (128, 128, 0), width=2)
        size = max(box[2] - box[0], box[3] - box[1])
        r = max(1.0, size / 300)
        for x, y in face.landmarks * s:
            draw.ellipse([x - r, y - r, x + r, y + r], fill=(0, 255, 255))
        p68 = face.landmarks68 * s
        for a, b, closed, col in _GROUPS:
            seq = [tuple(map(float, p)) for p in p68[a:b + 1]]
            if closed:
                seq.append(seq[0])
            draw.line(seq, fill=col, width=max(1, round(r)))
        R = 2.5 * r
        for i, (x, y) in enumerate(p68):
            draw.ellipse([x - R, y - R, x + R, y + R], fill=(255, 255, 0))
            if size > 150:
                draw.text((x + R, y - 3 * R), str(i), fill=(255, 255, 255))
        x, y = p68[36]
        draw.ellipse([x - 3 * R, y - 3 * R, x + 3 * R, y + 3 * R], outline=(255, 0, 0), width=2)
    return canvas
