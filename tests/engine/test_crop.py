"""The fit's square crop: where the photo's points land on it (``Crop.to_crop``), with or without
the antialiased resampling (``CropConfig.antialias``), and how little the antialiased one depends
on the photo's pixel grid (issue 14)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engine.camera import Intrinsics
from engine.fit.crop import make_crop, resample_square


def _blob(h, w, at, sigma):
    yy, xx = np.mgrid[0:h, 0:w] + 0.5                        # pixel centres, corner convention
    g = np.exp(-((xx - at[0]) ** 2 + (yy - at[1]) ** 2) / (2 * sigma ** 2))
    return np.repeat((g * 255).round().astype(np.uint8)[..., None], 3, axis=2)


def _centroid(img: np.ndarray) -> np.ndarray:
    g = img[..., 0].astype(np.float64)
    yy, xx = np.mgrid[0:g.shape[0], 0:g.shape[1]] + 0.5
    return np.array([(g * xx).sum(), (g * yy).sum()]) / g.sum()


@pytest.mark.parametrize("antialias", [False, True])
@pytest.mark.parametrize("side,res", [(900.0, 160), (500.3, 160), (301.7, 224), (140.0, 224)])
def test_a_photo_point_lands_where_to_crop_puts_it(antialias, side, res):
    """Shrinking 5.6x to enlarging 1.6x, the square partly off the photo: a blob's centre on the
    crop is where ``to_crop`` maps it, to a few hundredths of a crop pixel; off the photo the crop
    is black and not valid."""
    at = np.array([431.3, 287.6])
    photo = _blob(600, 800, at, sigma=0.03 * side)
    center = at + np.array([0.21, -0.17]) * side             # the blob off the crop's centre
    K = Intrinsics.from_focal(1000.0, 800, 600)
    c = make_crop(photo, center, side, res, K, "cpu", antialias=antialias)
    img = (c.image[0].numpy() * 255).round()
    want = c.to_crop(at[None])[0]
    assert np.abs(_centroid(img) - want).max() < 0.05 * max(1.0, res / side * 2), (_centroid(img), want)
    valid = c.face_valid[0].numpy()
    if center[0] + side / 2 > 800 or center[1] - side / 2 < 0:
        assert valid.min() == 0 and img[valid == 0].max() == 0
    assert valid.max() == 1


def test_the_antialiased_crop_hardly_depends_on_the_pixel_grid():
    """The same scene sampled on two pixel grids (a photo and the same photo at 2/3 resolution,
    as a rescaled copy would be) gives nearly the same crop with the antialiased resampling, and
    a clearly different one with the integer box filter + bicubic (which aliases fine detail)."""
    rng = np.random.default_rng(0)
    big = (rng.random((720, 720, 3)) * 255).astype(np.uint8)          # fine, high-frequency detail
    small = np.asarray(Image.fromarray(big).resize((480, 480), Image.Resampling.LANCZOS))
    diff = {}
    for aa in (False, True):
        a = np.asarray(resample_square(Image.fromarray(big), 30.5, 41.25, 600.0, 160, antialias=aa), np.float64)
        b = np.asarray(resample_square(Image.fromarray(small), 30.5 * 2 / 3, 41.25 * 2 / 3, 400.0, 160,
                                       antialias=aa), np.float64)
        diff[aa] = np.abs(a - b).mean()
    assert diff[True] < 0.4 * diff[False], diff
