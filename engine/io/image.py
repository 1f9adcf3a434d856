"""Photo loading: any common still-image file -> upright (H, W, 3) uint8 RGB.

Torch-free on purpose: the detector module and the add-on side may import this without torch.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from engine.errors import BadInputError

MIN_SHORT_SIDE = 64
"""Smallest accepted short side in pixels; below it no face can be fitted usefully."""

MAX_PIXELS = 200_000_000
"""Refuse absurd images (decompression bombs) instead of exhausting memory."""

_EXIF_IFD = 0x8769
_FOCAL_35MM = 0xA405


def _check_file(path: Path) -> None:
    if not path.exists():
        raise BadInputError(f"Photo not found: '{path}'")
    if path.is_dir():
        raise BadInputError(f"Photo path is a directory, not an image file: '{path}'")
    if path.stat().st_size == 0:
        raise BadInputError(f"Photo file is empty (0 bytes): '{path}'")


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB.

    Alpha is composited over white: a transparent background then reads as a plain, bright
    backdrop for the detector rather than as black.
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        # Palette images may carry transparency in info; go through RGBA to keep it.
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16/32-bit grey. PIL's own convert('L') clips instead of scaling, so scale here.
        arr = np.asarray(img, dtype=np.float64)
        if mode == "F":
            hi = float(np.nanmax(arr)) if arr.size else 1.0
            scale = 255.0 / hi if hi > 0 else 1.0
        else:
            # 16-bit data in a 32-bit container ('I' from PNG) still spans 0..65535.
            hi = float(arr.max()) if arr.size else 0.0
            scale = 255.0 / 65535.0 if hi > 255 or mode.startswith("I;16") else 1.0
        grey = np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(grey[..., None], 3, axis=2), "RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    # L, 1, CMYK, YCbCr, LAB, HSV, I;16 variants handled above.
    return img.convert("RGB")


def load_photo(path: str | os.PathLike) -> np.ndarray:
    """Load a photo upright as RGB.

    EXIF orientation is applied first, so all pixel coordinates downstream refer to the upright
    image as a person would view it.

    Args:
        path: image file (JPEG, PNG, TIFF, WebP, BMP ... whatever Pillow reads).

    Returns:
        (H, W, 3) uint8 RGB array, C-contiguous.

    Raises:
        BadInputError: missing file, a directory, an empty, unreadable, truncated or
            too small (short side < 64 px) image. The message names the file.
    """
    p = Path(path)
    _check_file(p)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as img:
                w, h = img.size
                if w * h > MAX_PIXELS:
                    raise BadInputError(f"Photo is too large ({w}x{h} pixels): '{p}'")
                # load() decodes fully: a truncated file fails here, not later.
                img.load()
                img = ImageOps.exif_transpose(img)
                img = _to_rgb(img)
                arr = np.asarray(img, dtype=np.uint8)
    except BadInputError:
        raise
    except UnidentifiedImageError as exc:
        raise BadInputError(f"Not an image file (or an unsupported format): '{p}'") from exc
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as exc:
        # Pillow raises OSError("image file is truncated ...") for cut-off files.
        raise BadInputError(f"Cannot read the image (truncated or corrupt?): '{p}': {exc}") from exc
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise BadInputError(f"Unexpected image layout {arr.shape} after conversion: '{p}'")
    if min(arr.shape[:2]) < MIN_SHORT_SIDE:
        raise BadInputError(
            f"Photo is too small ({arr.shape[1]}x{arr.shape[0]} px; the short side must be at "
            f"least {MIN_SHORT_SIDE} px): '{p}'"
        )
    return np.ascontiguousarray(arr)


def read_exif_focal_35mm(path: str | os.PathLike) -> float | None:
    """35 mm-equivalent focal length from EXIF (FocalLengthIn35mmFilm, tag 0xA405).

    Args:
        path: image file.

    Returns:
        Focal length in mm (35 mm film equivalent), or None when the file has no such tag, the
        tag is 0 ("unknown" by the EXIF spec) or the file cannot be read.
    """
    try:
        with Image.open(Path(path)) as img:
            exif = img.getexif()
            value = exif.get_ifd(_EXIF_IFD).get(_FOCAL_35MM)
            if value is None:
                # Some writers put it in IFD0.
                value = exif.get(_FOCAL_35MM)
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError):
        return None
    if value is None:
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if f > 0 else None


def downscale_for_detection(
    image: np.ndarray, max_side: int = 1280
) -> tuple[np.ndarray, tuple[float, float]]:
    """Shrink an image so that its long side is at most ``max_side``.

    Args:
        image: (H, W, 3) uint8 RGB.
        max_side: long-side limit in pixels.

    Returns:
        (small, (sx, sy)): the (h, w, 3) uint8 copy (or ``image`` itself when already small) and
        the per-axis factors full / small, so that full-resolution pixel coordinates = small
        coordinates * (sx, sy) (exact with the corner-origin pixel convention).
    """
    h, w = image.shape[:2]
    long_side = max(h, w)
    if long_side <= max_side:
        return image, (1.0, 1.0)
    s = max_side / long_side
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    small = Image.fromarray(image).resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(small), (w / nw, h / nh)
