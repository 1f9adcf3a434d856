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


def make_crop(photo: np.ndarray, center: np.ndarray, side: float, res: int, K_full: Intrinsics,
              device, outline: np.ndarray | None = None, outline_shrink: float = 0.97) -> Crop:
    """Crop ``side`` pixels around ``center`` of the full photo and resample to ``res``; with the
    detector's face ``outline`` (full-res pixels) the crop also knows where the skin is."""
    x0, y0 = float(center[0] - side / 2), float(center[1] - side / 2)
    img = Image.fromarray(photo)
    ones = Image.new("L", img.size, 255)
    # Shrinking a lot: box-filter by an integer factor first (exact with pixel-corner coordinates),
    # then resample the (even out-of-bounds) square with an EXTENT transform.
    k = max(1, int(side / (2 * res)))
    if k > 1:
        img, ones = img.reduce(k), ones.reduce(k)
    box = (x0 / k, y0 / k, (x0 + side) / k, (y0 + side) / k)
    crop = img.transform((res, res), Image.Transform.EXTENT, box, resample=Image.Resampling.BICUBIC,
                         fillcolor=(0, 0, 0))
    valid = ones.transform((res, res), Image.Transform.EXTENT, box, resample=Image.Resampling.BILINEAR,
                           fillcolor=0)
    t = torch.from_numpy(np.asarray(crop, dtype=np.float32) / 255.0)[None].to(device)
    v = torch.from_numpy((np.asarray(valid, dtype=np.float32) / 255.0 > 0.99).astype(np.float32))[None].to(device)
    K = K_full.cropped(x0, y0, round(side), round(side)).scaled(res / side)
    K = Intrinsics(K.fx, K.fy, K.cx, K.cy, res, res)
    skin = None if outline is None else outline_mask(outline, x0, y0, side, res, outline_shrink, device)
    return Crop(x0, y0, side, res, t, v, K, skin)
