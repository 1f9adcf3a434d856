"""Face detection + landmarks on the shared real photos and on awkward inputs."""

from __future__ import annotations

import os
import subprocess
import sys
import types
import urllib.error
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # the repo may not be pip-installed in the test venv
    sys.path.insert(0, str(REPO))

from engine.errors import BadInputError, MissingModelError, NoFaceError  # noqa: E402
from engine.io.image import load_photo  # noqa: E402
from engine.perception.landmarks import (  # noqa: E402
    MEDIAPIPE_TO_IBUG68,
    MediaPipeFaceLandmarker,
    blendshapes_to_ict,
    detect_faces,
    select_face,
)

SHARED = Path(os.environ.get("GANFIT_SHARED", REPO.parent / "shared"))
PHOTOS = sorted(p for p in (SHARED / "photos").glob("*") if p.suffix.lower() in
                (".jpg", ".jpeg", ".png"))
REF_PHOTO = SHARED / "photos" / "pexels_638700_woman_neutral.jpg"

pytestmark = pytest.mark.needs_shared("photos")  # skipped if missing; fails under CI


@pytest.fixture(scope="module")
def landmarker():
    lm = MediaPipeFaceLandmarker(max_faces=5)
    yield lm
    lm.close()


@pytest.fixture(scope="module")
def ref(landmarker):
    """Reference photo (reduced to 400 px wide, to keep the variants cheap) and its face."""
    with Image.open(REF_PHOTO) as im:
        img = im.convert("RGB").resize((400, 464), Image.Resampling.LANCZOS)
    faces = landmarker.detect(np.asarray(img))
    assert len(faces) == 1
    return img, faces[0]


def _face_size(face) -> float:
    x0, y0, x1, y1 = face.box
    return max(x1 - x0, y1 - y0)


def _check_face(face, shape) -> None:
    h, w = shape[:2]
    assert face.scheme == "mediapipe478"
    assert face.landmarks.shape == (478, 2) and face.landmarks.dtype == np.float32
    assert face.landmarks68.shape == (68, 2) and face.landmarks68.dtype == np.float32
    np.testing.assert_array_equal(face.landmarks68, face.landmarks[list(MEDIAPIPE_TO_IBUG68)])
    x0, y0, x1, y1 = face.box
    assert 0 <= x0 < x1 <= w + 1 and 0 <= y0 < y1 <= h + 1
    p = face.landmarks68
    assert (p[:, 0] >= x0 - 1e-3).all() and (p[:, 0] <= x1 + 1e-3).all()
    assert (p[:, 1] >= y0 - 1e-3).all() and (p[:, 1] <= y1 + 1e-3).all()
    # Upright frontal photos: subject's right eye (36-41) on the image left, brows above eyes,
    # nose tip above the mouth, chin lowest, jaw runs image-left -> right.
    assert p[36:42, 0].mean() < p[42:48, 0].mean()
    assert p[36, 0] < p[39, 0] < p[42, 0] < p[45, 0]
    assert p[17:27, 1].mean() < p[36:48, 1].mean() < p[30, 1] < p[51, 1] < p[57, 1] < p[8, 1]
    assert p[0, 0] < p[8, 0] < p[16, 0] and p[48, 0] < p[54, 0]
    assert face.blendshapes is not None and len(face.blendshapes) == 52
    assert all(0.0 <= v <= 1.0 for v in face.blendshapes.values())


@pytest.mark.parametrize("photo", PHOTOS, ids=[p.name for p in PHOTOS])
def test_each_shared_photo_has_one_face(landmarker, photo: Path) -> None:
    image = load_photo(photo)
    faces = landmarker.detect(image)
    assert len(faces) == 1, f"{photo.name}: {len(faces)} faces"
    _check_face(faces[0], image.shape)
    # The iris centres lie inside their eyes (468 = subject's right = image left).
    p = faces[0].landmarks
    assert p[33, 0] < p[468, 0] < p[133, 0]
    assert p[362, 0] < p[473, 0] < p[263, 0]


def test_detect_faces_function_and_sorting() -> None:
    # Two copies of a face side by side, one half the size: largest first.
    img = Image.open(REF_PHOTO).convert("RGB").resize((300, 348))
    canvas = Image.new("RGB", (640, 400), (200, 200, 200))
    canvas.paste(img.resize((150, 174)), (20, 100))
    canvas.paste(img, (320, 20))
    faces = detect_faces(np.asarray(canvas))
    assert len(faces) == 2
    assert faces[0].area > faces[1].area and faces[0].box[0] > 300
    assert detect_faces(np.asarray(canvas), max_faces=1)[0].box[0] > 300


def _variant_matches(landmarker, ref, arr: np.ndarray, tol: float = 0.03) -> None:
    _, face = ref
    faces = landmarker.detect(arr)
    assert len(faces) == 1
    err = np.linalg.norm(faces[0].landmarks68 - face.landmarks68, axis=1).mean()
    assert err < tol * _face_size(face), f"mean 68-point shift {err:.1f} px"


def test_grey_image(landmarker, ref, tmp_path: Path) -> None:
    p = tmp_path / "grey.jpg"
    ref[0].convert("L").save(p, quality=95)
    _variant_matches(landmarker, ref, load_photo(p))


def test_cmyk_jpeg(landmarker, ref, tmp_path: Path) -> None:
    p = tmp_path / "cmyk.jpg"
    ref[0].convert("CMYK").save(p, quality=95)
    with Image.open(p) as im:
        assert im.mode == "CMYK"
    _variant_matches(landmarker, ref, load_photo(p))


def test_16bit_png(landmarker, ref, tmp_path: Path) -> None:
    p = tmp_path / "grey16.png"
    Image.fromarray(np.asarray(ref[0].convert("L"), dtype=np.uint16) * 257).save(p)
    _variant_matches(landmarker, ref, load_photo(p))


def test_exif_rotated_jpeg(landmarker, ref, tmp_path: Path) -> None:
    # Pixels stored rotated 90 deg CCW, Orientation=6 says "rotate 90 deg CW to view".
    p = tmp_path / "rot.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    ref[0].transpose(Image.Transpose.ROTATE_90).save(p, quality=95, exif=exif)
    arr = load_photo(p)
    assert arr.shape == (464, 400, 3)
    _variant_matches(landmarker, ref, arr)


def test_huge_photo_scaled_back(landmarker, ref) -> None:
    img, face = ref
    # Pad to 3:2 with the edge colour, then upscale to 6000x4000 (~72 MB RGB).
    canvas = Image.new("RGB", (696, 464), img.getpixel((0, 0)))
    canvas.paste(img, (148, 0))
    big = np.asarray(canvas.resize((6000, 4000), Image.Resampling.BILINEAR))
    faces = landmarker.detect(big)
    assert len(faces) == 1
    s = np.array([6000 / 696, 4000 / 464], np.float32)
    expect = (face.landmarks68 + [148, 0]) * s
    err = np.linalg.norm(faces[0].landmarks68 - expect, axis=1).mean()
    assert err < 0.03 * _face_size(face) * s[0], f"{err:.1f} px at 6000x4000"
    assert faces[0].box[2] > 3000  # full-resolution pixels, not the detection copy's


def test_blank_image_no_face(landmarker) -> None:
    blank = np.full((480, 640, 3), 128, np.uint8)
    faces = landmarker.detect(blank)
    assert faces == []
    with pytest.raises(NoFaceError) as err:
        select_face(faces, 0, path="/photos/blank.png")
    assert "/photos/blank.png" in str(err.value) and err.value.exit_code == 4


def test_select_face_index(ref) -> None:
    face = ref[1]
    assert select_face([face], 0) is face
    with pytest.raises(NoFaceError, match="only 1 face"):
        select_face([face], 1, path="x.jpg")


def test_bad_array_rejected(landmarker) -> None:
    with pytest.raises(BadInputError):
        landmarker.detect(np.zeros((64, 64), np.uint8))
    with pytest.raises(BadInputError):
        landmarker.detect(np.zeros((64, 64, 3), np.float32))


def test_blendshapes_cover_ict_expressions(ref) -> None:
    mapped = blendshapes_to_ict(ref[1].blendshapes)
    npz = SHARED / "models" / "ict-facekit" / "ict_facekit.npz"
    if npz.is_file():
        names = set(np.load(npz)["expression_names"].tolist())
        assert set(mapped) == names


def test_fan_backend_absent(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "face_alignment", None)  # import fails as if absent
    with pytest.raises(MissingModelError, match="face_alignment"):
        detect_faces(np.zeros((100, 100, 3), np.uint8), backend="fan")


def test_fan_backend_offline_download(monkeypatch) -> None:
    fake = types.ModuleType("face_alignment")

    class LandmarksType:
        TWO_D = 1

    class FaceAlignment:
        def __init__(self, *a, **k):
            raise urllib.error.URLError("no network")

    fake.LandmarksType = LandmarksType
    fake.FaceAlignment = FaceAlignment
    monkeypatch.setitem(sys.modules, "face_alignment", fake)
    with pytest.raises(MissingModelError, match="offline"):
        detect_faces(np.zeros((100, 100, 3), np.uint8), backend="fan")


def test_detector_module_is_torch_free() -> None:
    code = ("import sys; sys.modules['torch'] = None\n"
            "import engine.perception.landmarks, engine.io.image, engine.perception\n"
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr
