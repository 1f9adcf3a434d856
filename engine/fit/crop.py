"""A square crop of the photo around the face, with its camera and where it may be compared."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..camera import Intrinsics


@dataclass(frozen=True)
class Crop:
    """A square crop of the photo around the face, resampled to ``res`` pixels."""

    x0: float
    y0: float
    side: float
    res: int
    image: torch.Tensor   # (1, res, res, 3) sRGB in [0, 1]
    valid: torch.Tensor   # (1, res, res) 1 where the crop lies inside the photo
    K: Intrinsics
    skin: torch.Tensor | None = None  # (1, res, res) 1 inside the detected face outline

    def to_crop(self, pts: np.ndarray) -> np.ndarray:
        return to_crop(pts, self.x0, self.y0, self.side, self.res)

    @property
    def face_valid(self) -> torch.Tensor:
        """Where the photo may be compared with the face: inside the photo and, when the detector
        gave a face outline, inside it (no background or hair past the outline)."""
        return self.valid if self.skin is None else self.valid * self.skin


def to_crop(pts: np.ndarray, x0: float, y0: float, side: float, res: int) -> np.ndarray:
    return (pts - np.array([x0, y0])) * (res / side)


def outline_mask(outline: np.ndarray, x0: float, y0: float, side: float, res: int, shrink: float,
                 device) -> torch.Tensor:
    """Rasterise the detector's face outline (full-res pixels), shrunk by ``shrink`` toward its
    centre so that the outline's own error does not let background in. Returns (1, res, res)."""
    pts = to_crop(outline, x0, y0, side, res)
    c = pts.mean(0)
    pts = c + (pts - c) * shrink
    m = Image.new("L", (res, res), 0)
    ImageDraw.Draw(m).polygon([tuple(map(float, p)) for p in pts], fill=255)
    return torch.from_numpy(np.asarray(m, dtype=np.float32) / 255.0)[None].to(device)


def resample_square(img: Image.Image, x0: float, y0: float, side: float, res: int,
                    resample=Image.Resampling.BICUBIC, fill=0, antialias: bool = True) -> Image.Image:
    """The square of ``side`` pixels whose top-left corner is (``x0``, ``y0``) (pixel-corner
    coordinates, may reach past the image: ``fill`` there), resampled to ``res`` x ``res``.
    ``antialias``: a filter as wide as the shrink (PIL's resize), so the result hardly depends on
    where the photo's pixel grid falls; else a box filter by an integer factor and then a fixed
    width filter (the original way, which aliases when it shrinks by up to 2x)."""
    if not antialias:
        k = max(1, int(side / (2 * res)))
        src = img.reduce(k) if k > 1 else img
        return src.transform((res, res), Image.Transform.EXTENT,
                             (x0 / k, y0 / k, (x0 + side) / k, (y0 + side) / k),
                             resample=resample, fillcolor=fill)
    # The square with a margin for the filter's support, cut out (past the image: ``fill``),
    # then resized with the exact (fractional) box. Shrinking a lot: first by an integer factor
    # (``reducing_gap``), which keeps the result close to the exact one at a fraction of the cost.
    margin = int(np.ceil(3 * max(1.0, side / res))) + 2
    ix0, iy0 = int(np.floor(x0)) - margin, int(np.floor(y0)) - margin
    ix1, iy1 = int(np.ceil(x0 + side)) + margin, int(np.ceil(y0 + side)) + margin
    W, H = img.size
    if ix0 >= 0 and iy0 >= 0 and ix1 <= W and iy1 <= H:
        region = img.crop((ix0, iy0, ix1, iy1))
    else:  # Image.crop fills past the image with 0: paste onto the fill colour instead
        region = Image.new(img.mode, (ix1 - ix0, iy1 - iy0), fill)
        region.paste(img.crop((max(0, ix0), max(0, iy0), min(W, ix1), min(H, iy1))),
                     (max(0, ix0) - ix0, max(0, iy0) - iy0))
    return region.resize((res, res), resample=resample,
                         box=(x0 - ix0, y0 - iy0, x0 - ix0 + side, y0 - iy0 + side),
                         reducing_gap=3.0)


def make_crop(photo: np.ndarray, center: np.ndarray, side: float, res: int, K_full: Intrinsics,
              device, outline: np.ndarray | None = None, outline_shrink: float = 0.97,
              antialias: bool = False) -> Crop:
    """Crop ``side`` pixels around ``center`` of the full photo and resample to ``res``
    (``resample_square``); with the detector's face ``outline`` (full-res pixels) the crop also
    knows where the skin is."""
    x0, y0 = float(center[0] - side / 2), float(center[1] - side / 2)
    img = Image.fromarray(photo)
    ones = Image.new("L", img.size, 255)
    crop = resample_square(img, x0, y0, side, res, Image.Resampling.BICUBIC, (0, 0, 0), antialias)
    valid = resample_square(ones, x0, y0, side, res, Image.Resampling.BILINEAR, 0, antialias)
    t = torch.from_numpy(np.asarray(crop, dtype=np.float32) / 255.0)[None].to(device)
    v = torch.from_numpy((np.asarray(valid, dtype=np.float32) / 255.0 > 0.99).astype(np.float32))[None].to(device)
    K = K_full.cropped(x0, y0, round(side), round(side)).scaled(res / side)
    K = Intrinsics(K.fx, K.fy, K.cx, K.cy, res, res)
    skin = None if outline is None else outline_mask(outline, x0, y0, side, res, outline_shrink, device)
    return Crop(x0, y0, side, res, t, v, K, skin)
