"""Photo loading: modes, EXIF orientation, bad input, EXIF focal length."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # the repo may not be pip-installed in the test venv
    sys.path.insert(0, str(REPO))

from engine.errors import BadInputError  # noqa: E402
from engine.io.image import downscale_for_detection, load_photo, read_exif_focal_35mm  # noqa: E402
from shared_data import require_shared  # noqa: E402

SHARED = Path(os.environ.get("GANFIT_SHARED", REPO.parent / "shared"))
PHOTO = SHARED / "photos" / "pexels_638700_woman_neutral.jpg"


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    require_shared("photos", PHOTO.name)
    with Image.open(PHOTO) as im:
        return im.convert("RGB").resize((300, 348))


def _gradient(w: int = 96, h: int = 80) -> Image.Image:
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([x * 255 // w, y * 255 // h, (x + y) % 256], axis=2).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


# ------------------------------------------------------------------ bad input


def _assert_bad(path: Path, fragment: str) -> None:
    with pytest.raises(BadInputError) as err:
        load_photo(path)
    msg = str(err.value)
    assert str(path) in msg, msg
    assert fragment in msg.lower(), msg
    assert err.value.code == "bad_input" and err.value.exit_code == 3


def test_missing_file(tmp_path: Path) -> None:
    _assert_bad(tmp_path / "nope.jpg", "not found")


def test_directory(tmp_path: Path) -> None:
    _assert_bad(tmp_path, "directory")


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    _assert_bad(p, "empty")


def test_text_named_jpg(tmp_path: Path) -> None:
    p = tmp_path / "notes.jpg"
    p.write_text("this is not a picture\n" * 20)
    _assert_bad(p, "not an image")


def test_truncated_jpeg(tmp_path: Path) -> None:
    full = tmp_path / "full.jpg"
    _gradient(400, 300).save(full, quality=95)
    data = full.read_bytes()
    p = tmp_path / "cut.jpg"
    p.write_bytes(data[: len(data) // 2])
    _assert_bad(p, "truncated")


def test_tiny_image(tmp_path: Path) -> None:
    p = tmp_path / "tiny.png"
    _gradient(20, 20).save(p)
    _assert_bad(p, "too small")


# ------------------------------------------------------------------ modes


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "I", "1"])
def test_modes_become_rgb(tmp_path: Path, mode: str) -> None:
    base = _gradient()
    if mode == "I;16":
        grey = np.asarray(base.convert("L"), dtype=np.uint16) * 257
        img = Image.fromarray(grey)  # mode I;16
        assert img.mode == "I;16"
    elif mode == "I":
        img = Image.fromarray(np.asarray(base.convert("L"), dtype=np.int32) * 257)
    else:
        img = base.convert(mode)
    ext = ".jpg" if mode == "CMYK" else (".tif" if mode == "I" else ".png")
    p = tmp_path / f"img{ext}"
    img.save(p)
    arr = load_photo(p)
    assert arr.shape == (80, 96, 3) and arr.dtype == np.uint8
    if mode in ("L", "LA", "I;16", "I"):
        ref = np.asarray(base.convert("L"), dtype=np.int16)
        assert np.abs(arr[..., 0].astype(np.int16) - ref).max() <= 1
        assert (arr[..., 0] == arr[..., 1]).all()


def test_rgba_composited_over_white(tmp_path: Path) -> None:
    arr = np.zeros((70, 70, 4), np.uint8)
    arr[..., 0] = 255  # red, but fully transparent on the left half
    arr[:, 35:, 3] = 255
    p = tmp_path / "a.png"
    Image.fromarray(arr, "RGBA").save(p)
    out = load_photo(p)
    assert (out[:, :35] == 255).all()
    assert (out[:, 35:] == [255, 0, 0]).all()


@pytest.mark.parametrize("orientation,stored", [
    (6, Image.Transpose.ROTATE_90),   # camera held rotated: viewer must rotate 90 deg CW
    (8, Image.Transpose.ROTATE_270),
    (3, Image.Transpose.ROTATE_180),
    (2, Image.Transpose.FLIP_LEFT_RIGHT),
])
def test_exif_orientation_applied(tmp_path: Path, photo: Image.Image, orientation: int,
                                  stored: Image.Transpose) -> None:
    p = tmp_path / "rot.jpg"
    exif = Image.Exif()
    exif[0x0112] = orientation
    photo.transpose(stored).save(p, quality=95, exif=exif)
    arr = load_photo(p)
    ref = np.asarray(photo, dtype=np.int16)
    assert arr.shape == ref.shape
    assert np.abs(arr.astype(np.int16) - ref).mean() < 4.0


# ------------------------------------------------------------------ EXIF focal, downscale


def test_exif_focal_35mm(tmp_path: Path) -> None:
    p = tmp_path / "f.jpg"
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0xA405] = 52
    _gradient().save(p, exif=exif)
    assert read_exif_focal_35mm(p) == 52.0
    q = tmp_path / "nofocal.jpg"
    _gradient().save(q)
    assert read_exif_focal_35mm(q) is None
    assert read_exif_focal_35mm(tmp_path / "missing.jpg") is None


def test_downscale_for_detection() -> None:
    big = np.zeros((4000, 6000, 3), np.uint8)
    small, (sx, sy) = downscale_for_detection(big, 1280)
    assert small.shape == (853, 1280, 3)
    assert sx == pytest.approx(6000 / 1280) and sy == pytest.approx(4000 / 853)
    same, s = downscale_for_detection(small, 1280)
    assert same is small and s == (1.0, 1.0)
