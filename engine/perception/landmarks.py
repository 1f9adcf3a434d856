"""Face detection and landmarks.

One interface, :func:`detect_faces`, with two backends:

* ``'mediapipe'`` (default, offline): MediaPipe Tasks ``FaceLandmarker`` running the bundled
  ``engine/data/mediapipe/face_landmarker.task``: 478 dense points (468 face mesh + 10 iris) and
  52 ARKit blendshape scores. Works with mediapipe 0.10.21 (Python 3.11/3.12) and >= 1.2.2
  (Python 3.13), which ship no models of their own.
* ``'fan'`` (optional): face-alignment's FAN, 68 points, only if the ``face_alignment`` package
  is installed and its weights are already cached (it downloads them on first use).

This module imports neither torch nor mediapipe at import time, so the add-on side and a
torch-free Python (the 3.13 check) can import it.

Pixel convention for every coordinate returned here: x right, y down, origin at the top-left
corner of the top-left pixel, so the centre of pixel (i, j) is (j + 0.5, i + 0.5). MediaPipe's
normalised coordinates span the image as [0, 1], hence pixel = normalised * (W, H) exactly.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.errors import BadInputError, MissingModelError, NoFaceError

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
MEDIAPIPE_TASK = DATA_DIR / "mediapipe" / "face_landmarker.task"

DETECT_MAX_SIDE = 1280
"""Detection runs on a copy whose long side is at most this; points are scaled back."""

# MediaPipe 478-point index of each iBUG/Multi-PIE 68 landmark, in 68-point order. Chosen by
# hand from the mesh topology, then checked two ways: (1) with the canonical mesh aligned to the
# ICT neutral face, each index is the (or next to the) closest mediapipe vertex to ICT's own
# `landmarks_multipie68` vertex (the jaw in the frontal xy projection, on the face oval, because
# iBUG's jaw points are the visible silhouette); (2) drawn on every test photo
# (scripts/debug_landmarks.py). "Right" = the subject's right (image left in a frontal photo).
MEDIAPIPE_TO_IBUG68: tuple[int, ...] = (
    # 0-16 jaw, subject's right ear -> chin (8) -> left ear: face-oval points
    127, 234, 93, 132, 58, 136, 149, 176, 152, 400, 378, 365, 288, 361, 323, 454, 356,
    # 17-21 right brow (outer -> inner), 22-26 left brow (inner -> outer): upper brow edge
    70, 63, 105, 66, 107, 336, 296, 334, 293, 300,
    # 27-30 nose bridge -> tip, 31-35 nostril base (right -> left)
    168, 197, 195, 4, 98, 97, 2, 326, 327,
    # 36-41 right eye: outer corner, upper lid x2, inner corner, lower lid x2
    33, 160, 158, 133, 153, 144,
    # 42-47 left eye: inner corner, upper lid x2, outer corner, lower lid x2
    362, 385, 387, 263, 373, 380,
    # 48-59 outer lip: right corner, upper lip -> left corner, lower lip back
    61, 39, 37, 0, 267, 269, 291, 321, 314, 17, 84, 91,
    # 60-67 inner lip: right corner, upper, left corner, lower
    78, 81, 13, 311, 308, 402, 14, 178,
)

# MediaPipe's face oval (silhouette) as a closed loop, starting at the forehead top (10) and
# going over the subject's left side (x > 0 in the canonical mesh) first.
MEDIAPIPE_FACE_OVAL: tuple[int, ...] = (
    10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
    152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109,
)

# Iris points of the 478 scheme: 468 = centre of the subject's right iris (image left in a
# frontal photo), 469-472 its rim; 473 = centre of the left iris, 474-477 its rim.
MEDIAPIPE_IRIS_RIGHT: tuple[int, ...] = (468, 469, 470, 471, 472)
MEDIAPIPE_IRIS_LEFT: tuple[int, ...] = (473, 474, 475, 476, 477)



def _import_mediapipe_tasks():
    """mediapipe's tasks API: (a namespace with ``Image`` and ``ImageFormat``, ``vision``,
    ``BaseOptions``). The package's own ``__init__`` also imports its legacy ``solutions`` and with
    them matplotlib.pyplot, half a second or more of a fast fit; when nothing has imported mediapipe
    yet, the package is entered without running that ``__init__`` (the tasks modules import what
    they use themselves). On any failure the plain import is used instead."""
    import importlib.util
    import types
    shallow = False
    if "mediapipe" not in sys.modules:
        spec = importlib.util.find_spec("mediapipe")
        if spec is not None and spec.submodule_search_locations:
            sys.modules["mediapipe"] = importlib.util.module_from_spec(spec)
            shallow = True
    try:
        from mediapipe.python._framework_bindings.image import Image
        from mediapipe.python._framework_bindings.image_frame import ImageFormat
        from mediapipe.tasks.python import vision
        from mediapipe.tasks.python.core.base_options import BaseOptions
        return types.SimpleNamespace(Image=Image, ImageFormat=ImageFormat), vision, BaseOptions
    except Exception:  # noqa: BLE001 - another layout: forget a partial import, do it plainly
        if shallow:
            for name in [m for m in sys.modules if m == "mediapipe" or m.startswith("mediapipe.")]:
                del sys.modules[name]
    import mediapipe as mp
    from mediapipe.tasks.python import vision
    from mediapipe.tasks.python.core.base_options import BaseOptions
    return mp, vision, BaseOptions

@dataclass
class Face:
    """One detected face, all coordinates in full-resolution pixels (see module docstring).

    Attributes:
        box: (x0, y0, x1, y1) tight box around the dense landmarks.
        score: detector confidence in [0, 1]. MediaPipe's FaceLandmarker does not report one
            per face (every returned face passed its 0.5 detection and presence thresholds), so
            there it is the mean landmark presence when the runtime fills it in, else 1.0.
        landmarks: (N, 2) float32 points of ``scheme``.
        scheme: 'mediapipe478' or 'ibug68'.
        landmarks68: (68, 2) float32 iBUG-68 points (a subset of ``landmarks`` for mediapipe).
        blendshapes: ARKit blendshape name -> score in [0, 1] (MediaPipe names, e.g.
            'eyeBlinkLeft'; see :func:`blendshapes_to_ict`), or None for backends without them.
        landmarks_z: (N,) float32 relative depth from MediaPipe (same scale as x in pixels,
            smaller = nearer the camera) or None.
    """

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray
    scheme: str
    landmarks68: np.ndarray
    blendshapes: dict[str, float] | None = None
    landmarks_z: np.ndarray | None = field(default=None, repr=False)

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.box
        return max(0.0, x1 - x0) * max(0.0, y1 - y0)


def _box_of(points: np.ndarray) -> tuple[float, float, float, float]:
    lo = points.min(axis=0)
    hi = points.max(axis=0)
    return (float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1]))


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        raise BadInputError(f"Expected an (H, W, 3) RGB image array, got shape {shape}")
    if image.dtype != np.uint8:
        raise BadInputError(f"Expected a uint8 image, got {image.dtype}")
    return np.ascontiguousarray(image)


def _downscale(image: np.ndarray, max_side: int) -> tuple[np.ndarray, tuple[float, float]]:
    from engine.io.image import downscale_for_detection

    return downscale_for_detection(image, max_side)


# --------------------------------------------------------------------------------------------
# MediaPipe backend


@contextlib.contextmanager
def _native_stderr_captured():
    """Hold back what native code (mediapipe's absl/glog, TFLite) writes to fd 2: a dozen INFO and
    WARNING lines per start that look like errors to a user. Replayed if the block raises."""
    try:
        saved = os.dup(2)
    except OSError:  # no usable fd 2 (embedded interpreters): nothing to hide
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        try:
            sys.stderr.flush()
            os.dup2(tmp.fileno(), 2)
            yield
        except BaseException:
            os.dup2(saved, 2)
            tmp.seek(0)
            sys.stderr.write(tmp.read().decode("utf-8", "replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


class MediaPipeFaceLandmarker:
    """The bundled FaceLandmarker, reusable over many images. Close it (or use ``with``).

    Args:
        max_faces: most faces returned per image.
        model_path: a ``face_landmarker.task`` bundle; the bundled one by default.
        min_confidence: detection and presence thresholds.
    """

    def __init__(
        self,
        max_faces: int = 5,
        model_path: str | os.PathLike | None = None,
        min_confidence: float = 0.5,
    ) -> None:
        path = Path(model_path) if model_path is not None else MEDIAPIPE_TASK
        if not path.is_file():
            raise MissingModelError(f"MediaPipe face landmarker model not found: '{path}'")
        try:
            mp, vision, BaseOptions = _import_mediapipe_tasks()
        except ImportError as exc:
            raise MissingModelError(
                f"The 'mediapipe' package is needed for face landmarks but cannot be imported: "
                f"{exc}"
            ) from exc
        self._mp = mp
        # A buffer rather than a path: mediapipe's file loader fails on some non-ASCII paths.
        options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_buffer=path.read_bytes()),
            running_mode=vision.RunningMode.IMAGE,
            num_faces=int(max_faces),
            min_face_detection_confidence=min_confidence,
            min_face_presence_confidence=min_confidence,
            output_face_blendshapes=True,
            output_facial_transformation_matrixes=False,
        )
        with _native_stderr_captured():
            self._landmarker = vision.FaceLandmarker.create_from_options(options)

    def close(self) -> None:
        if self._landmarker is not None:
            self._landmarker.close()
            self._landmarker = None

    def __enter__(self) -> MediaPipeFaceLandmarker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def detect(self, image: np.ndarray, max_side: int = DETECT_MAX_SIDE) -> list[Face]:
        """Detect faces; see :func:`detect_faces`."""
        if self._landmarker is None:
            raise RuntimeError("MediaPipeFaceLandmarker used after close()")
        image = _check_image(image)
        small, (sx, sy) = _downscale(image, max_side)
        h, w = small.shape[:2]
        mp_image = self._mp.Image(image_format=self._mp.ImageFormat.SRGB,
                                  data=np.ascontiguousarray(small))
        with _native_stderr_captured():
            result = self._landmarker.detect(mp_image)
        faces: list[Face] = []
        blend_lists = result.face_blendshapes or []
        for k, lms in enumerate(result.face_landmarks or []):
            xyz = np.array([(p.x, p.y, p.z) for p in lms], dtype=np.float64)
            pts = (xyz[:, :2] * np.array([w * sx, h * sy])).astype(np.float32)
            # MediaPipe's z uses roughly the same scale as x (normalised by width).
            z = (xyz[:, 2] * w * sx).astype(np.float32)
            presence = [getattr(p, "presence", None) for p in lms]
            pres = [float(v) for v in presence if v is not None and v > 0]
            score = float(np.mean(pres)) if pres else 1.0
            blend = None
            if k < len(blend_lists):
                blend = {c.category_name: float(c.score) for c in blend_lists[k]}
            faces.append(
                Face(
                    box=_box_of(pts[:468]),
                    score=score,
                    landmarks=pts,
                    scheme=f"mediapipe{len(pts)}",
                    landmarks68=pts[list(MEDIAPIPE_TO_IBUG68)].copy(),
                    blendshapes=blend,
                    landmarks_z=z,
                )
            )
        faces.sort(key=lambda f: f.area, reverse=True)
        return faces


# --------------------------------------------------------------------------------------------
# face-alignment (FAN) backend, optional


def _fan_detect(image: np.ndarray, max_faces: int, max_side: int, device: str) -> list[Face]:
    try:
        import face_alignment  # noqa: PLC0415 - optional dependency
    except ImportError as exc:
        raise MissingModelError(
            "The optional 'fan' landmark backend needs the 'face_alignment' package, which is not "
            "installed; use the default 'mediapipe' backend or install face-alignment."
        ) from exc
    lt = face_alignment.LandmarksType
    two_d = getattr(lt, "TWO_D", None) or getattr(lt, "_2D")
    try:
        fa = face_alignment.FaceAlignment(two_d, device=device, flip_input=False)
    except Exception as exc:  # noqa: BLE001 - urllib/torch.hub/OSError: all mean "no weights"
        raise MissingModelError(
            "face-alignment could not load its FAN / S3FD weights. It downloads them on first "
            "use and this machine is probably offline. Run it once with internet access (the "
            f"weights are cached under ~/.cache/torch/hub), or use the 'mediapipe' backend. "
            f"Cause: {type(exc).__name__}: {exc}"
        ) from exc
    small, (sx, sy) = _downscale(_check_image(image), max_side)
    out = fa.get_landmarks_from_image(small, return_bboxes=True)
    preds, bboxes = (out[0], out[2]) if isinstance(out, tuple) else (out, None)
    faces: list[Face] = []
    for k, p in enumerate(preds or []):
        # FAN reports pixel-index coordinates (centre convention): shift by half a pixel.
        pts = ((np.asarray(p, dtype=np.float64)[:, :2] + 0.5) * (sx, sy)).astype(np.float32)
        score = 1.0
        if bboxes is not None and k < len(bboxes) and len(bboxes[k]) > 4:
            score = float(bboxes[k][4])
        faces.append(Face(box=_box_of(pts), score=score, landmarks=pts, scheme="ibug68",
                          landmarks68=pts.copy(), blendshapes=None))
    faces.sort(key=lambda f: f.area, reverse=True)
    return faces[:max_faces]


# --------------------------------------------------------------------------------------------
# public interface


def detect_faces(
    image: np.ndarray,
    max_faces: int = 5,
    backend: str = "mediapipe",
    max_side: int = DETECT_MAX_SIDE,
    device: str = "cpu",
) -> list[Face]:
    """Detect faces and their landmarks.

    Detection runs on a copy downscaled to ``max_side`` (long side), so huge photos cost little
    memory and time; all returned coordinates are full-resolution pixels.

    Args:
        image: (H, W, 3) uint8 RGB (e.g. from :func:`engine.io.image.load_photo`).
        max_faces: most faces returned.
        backend: 'mediapipe' (default, bundled model) or 'fan' (optional face-alignment).
        max_side: long-side limit of the detection copy, pixels.
        device: torch device for the 'fan' backend.

    Returns:
        Faces sorted by box area, largest first; empty when there is none.

    Raises:
        BadInputError: ``image`` is not an (H, W, 3) uint8 array.
        MissingModelError: the backend's package or weights are unavailable.
    """
    if backend == "mediapipe":
        with MediaPipeFaceLandmarker(max_faces=max_faces) as lm:
            return lm.detect(image, max_side=max_side)
    if backend == "fan":
        return _fan_detect(image, max_faces, max_side, device)
    raise ValueError(f"Unknown landmark backend {backend!r} (use 'mediapipe' or 'fan')")


def select_face(faces: list[Face], index: int = 0, path: str | os.PathLike | None = None) -> Face:
    """Pick one face of :func:`detect_faces`' result.

    Args:
        faces: detected faces, largest first.
        index: 0 = the largest face.
        path: the photo, only to name it in the error message.

    Raises:
        NoFaceError: no face, or ``index`` out of range.
    """
    where = f" in '{path}'" if path is not None else ""
    if not faces:
        raise NoFaceError(f"No face was found{where}. Use a photo with a clearly visible, "
                          "roughly frontal face.")
    if not 0 <= index < len(faces):
        raise NoFaceError(f"Face index {index} requested but only {len(faces)} face(s) were "
                          f"found{where} (indices 0..{len(faces) - 1}, largest first).")
    return faces[index]


def blendshapes_to_ict(blendshapes: dict[str, float]) -> dict[str, float]:
    """Rename MediaPipe's ARKit blendshape scores to the face model's expression names.

    'eyeBlinkLeft' -> 'eyeBlink_L' etc.; 'browInnerUp' and 'cheekPuff' (unsplit in ARKit) feed
    both the _L and _R shapes; '_neutral' and 'tongueOut' (absent from ICT) are dropped.
    Left/Right are kept as MediaPipe names them.

    Args:
        blendshapes: MediaPipe category name -> score in [0, 1].

    Returns:
        ICT expression name -> weight in [0, 1].
    """
    out: dict[str, float] = {}
    for name, score in blendshapes.items():
        if name in ("_neutral", "tongueOut"):
            continue
        if name in ("browInnerUp", "cheekPuff"):
            out[name + "_L"] = score
            out[name + "_R"] = score
        elif name in ("jawLeft", "jawRight", "mouthLeft", "mouthRight"):
            # Whole-face moves, named alike in ICT.
            out[name] = score
        elif name.endswith("Left"):
            out[name[:-4] + "_L"] = score
        elif name.endswith("Right"):
            out[name[:-5] + "_R"] = score
        else:
            out[name] = score
    return out
