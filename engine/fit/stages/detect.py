"""Stage 1, detect: find the face and its landmarks, then frame it for the fit: a square crop
around the landmarks (with the face outline when the detector gives one) and the landmark targets
in crop pixels (the 68 iBUG points, and the dense points through their correspondence onto the
face model)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ...errors import MissingModelError
from ..crop import Crop, make_crop, resample_square
from ..losses import LandmarkTargets

# Below this face-box side (photo pixels) the texture has too few pixels to be more than a blur,
# and the landmarks are noisy: the result says so.
SMALL_FACE_PX = 60


@dataclass
class Detection:
    """The chosen face, in full-resolution photo pixels."""

    det68: np.ndarray                    # (68, 2) iBUG landmarks
    dense: np.ndarray | None             # the detector's dense landmarks (mediapipe478) or None
    scheme: str                          # the detector's landmark scheme
    box: list[float]                     # (x0, y0, x1, y1)
    score: float
    count: int                           # faces found in the photo
    expr_init: dict[str, float] | None   # the detector's blendshape scores as model expressions
    warnings: list[str]                  # sentences for the user (result.json "warnings")


@dataclass
class Framed:
    """The face as the coarse and fine stages see it."""

    crop: Crop
    targets: LandmarkTargets
    outline: np.ndarray | None           # the detector's face outline, full-res pixels (or None)


# The jittered canonical crops of ``DetectConfig.average``: (shift x, shift y, scale), the shifts
# in units of ``DetectConfig.jitter`` x the crop side, the scale as 1 + this x the jitter. The
# first is the canonical crop itself; the others come in opposite pairs, so that their mean is it.
JITTERS = ((0, 0, 0), (1, 1, 1), (-1, -1, -1), (1, -1, -1), (-1, 1, 1),
           (1, 0, 1), (-1, 0, -1), (0, 1, -1), (0, -1, 1))


def _canonical(img, box, cfg, find, dx: float = 0.0, dy: float = 0.0, ds: float = 0.0):
    """The face detected on the square of ``cfg.scale`` x ``box``'s side around ``box``'s centre
    (moved by ``dx``, ``dy`` x the side, grown by 1 + ``ds``), resampled to ``cfg.res`` pixels:
    the face nearest the square's centre with its points in photo pixels, or None."""
    x0, y0, x1, y1 = box
    side = cfg.scale * max(x1 - x0, y1 - y0) * (1 + ds)
    if not side > 0:
        return None
    left = (x0 + x1 - side) / 2 + dx * side
    top = (y0 + y1 - side) / 2 + dy * side
    crop = resample_square(img, left, top, side, cfg.res, fill=(0, 0, 0), antialias=cfg.antialias)
    found = find(np.asarray(crop))
    if not found:
        return None
    c = cfg.res / 2
    near = min(found, key=lambda f: (f.box[0] + f.box[2] - 2 * c) ** 2 + (f.box[1] + f.box[3] - 2 * c) ** 2)
    s = side / cfg.res
    back = lambda pts: (pts.astype(np.float64) * s + np.array([left, top])).astype(np.float32)  # noqa: E731
    b = near.box
    return replace(near, box=(b[0] * s + left, b[1] * s + top, b[2] * s + left, b[3] * s + top),
                   landmarks=back(near.landmarks), landmarks68=back(near.landmarks68),
                   landmarks_z=None if near.landmarks_z is None else near.landmarks_z * s)


def _average(faces: list):
    """One face from several detections of it: the points' and the boxes' per-coordinate mean (or
    median of three or more), the blendshapes' and scores' mean; the rest as the first's."""
    if len(faces) == 1:
        return faces[0]
    red = (lambda a: np.median(a, axis=0)) if len(faces) >= 3 else (lambda a: a.mean(axis=0))  # noqa: E731
    f0 = faces[0]
    pts = red(np.stack([f.landmarks for f in faces]).astype(np.float64)).astype(np.float32)
    p68 = red(np.stack([f.landmarks68 for f in faces]).astype(np.float64)).astype(np.float32)
    z = None
    if all(f.landmarks_z is not None for f in faces):
        z = red(np.stack([f.landmarks_z for f in faces]).astype(np.float64)).astype(np.float32)
    box = tuple(float(v) for v in red(np.array([f.box for f in faces], np.float64)))
    blend = f0.blendshapes
    if blend and all(f.blendshapes for f in faces):
        blend = {k: float(np.mean([f.blendshapes.get(k, v) for f in faces])) for k, v in blend.items()}
    return replace(f0, box=box, landmarks=pts, landmarks68=p68, landmarks_z=z, blendshapes=blend,
                   score=float(np.mean([f.score for f in faces])))


def redetect(photo: np.ndarray, face, find, cfg=None):
    """The face detected again on canonical crops around its landmarks (``config.DetectConfig``),
    its points mapped back to photo pixels; the first detection where a pass finds nothing. The
    last pass detects on ``cfg.average`` slightly shifted and scaled copies of the canonical crop
    and takes the median of their points (test-time averaging of the landmarker's own jitter).
    ``find(image) -> list[Face]`` is the detector."""
    from PIL import Image

    from ..config import DetectConfig
    cfg = cfg or DetectConfig()
    if cfg.average < 1 or cfg.average > len(JITTERS):
        raise ValueError(f"DetectConfig.average must be 1..{len(JITTERS)}, not {cfg.average}")
    img = Image.fromarray(photo)
    for i in range(cfg.passes):
        last = i == cfg.passes - 1
        jit = JITTERS[: cfg.average] if last else JITTERS[:1]
        found = []
        for jx, jy, js in jit:
            f = _canonical(img, face.box, cfg, find, jx * cfg.jitter, jy * cfg.jitter, js * cfg.jitter)
            if f is None and not found:
                return face       # the canonical crop itself found nothing: keep what we have
            if f is not None:
                found.append(f)
        face = _average(found)
    return face


def detect(photo: np.ndarray, backend: str, device: str, face_index: int = 0,
           path: str | Path | None = None, cfg=None) -> Detection:
    """Run the landmark detector, pick face ``face_index`` (0 = the largest) and detect it again
    on canonical crops (``redetect``; ``cfg``: ``config.DetectConfig``; its ``average`` with the
    mediapipe backend only, which keeps one landmarker for every crop)."""
    from ...perception.landmarks import MediaPipeFaceLandmarker, blendshapes_to_ict, detect_faces, select_face
    if backend == "mediapipe":  # one landmarker for every pass (creating one costs more than a pass)
        with MediaPipeFaceLandmarker() as lm:
            faces = lm.detect(photo)
            face = redetect(photo, select_face(faces, face_index, path=path), lm.detect, cfg)
    else:  # other backends load their network on every call: one crop per pass, no averaging
        from ..config import DetectConfig
        faces = detect_faces(photo, backend=backend, device=device)
        face = redetect(photo, select_face(faces, face_index, path=path),
                        lambda img: detect_faces(img, backend=backend, device=device),
                        replace(cfg or DetectConfig(), average=1))
    dense = face.landmarks.astype(np.float64) if face.scheme == "mediapipe478" else None
    box = [float(x) for x in face.box]
    warnings = []
    if len(faces) > 1:
        warnings.append(f"{len(faces)} faces were found; fitted face {face_index} (largest first). Use "
                        "--face-index to choose another.")
    if min(box[2] - box[0], box[3] - box[1]) < SMALL_FACE_PX:
        warnings.append(f"The face is small ({box[2] - box[0]:.0f} px wide); the fit and texture will be "
                        "coarse. Use a larger or closer photo.")
    return Detection(det68=face.landmarks68.astype(np.float64), dense=dense, scheme=face.scheme,
                     box=box, score=float(face.score), count=len(faces),
                     expr_init=blendshapes_to_ict(face.blendshapes) if face.blendshapes else None,
                     warnings=warnings)


def load_dense_correspondence(scheme: str = "mediapipe478"):
    """The correspondence of the detector's dense landmarks onto the face model. A missing or
    unreadable asset is an error, never a silent fall-back to the 68 landmarks."""
    from ...perception import correspondence as C
    try:
        return C.load_correspondence(scheme)
    except MissingModelError:
        raise
    except Exception as e:  # noqa: BLE001 - any read failure means a broken asset
        path = C.DATA_DIR / f"{scheme}_ict.npz"
        raise MissingModelError(f"Could not read the landmark correspondence {path}: {e}. Reinstall "
                                "the engine or regenerate it with tools/make_mediapipe_correspondence.py.") from e


def frame(photo: np.ndarray, det68: np.ndarray, dense: np.ndarray | None, K_full, model, cfg,
          device) -> Framed:
    """Crop around the landmarks (``cfg.crop``) at ``cfg.render_res`` and build the targets."""
    lo, hi = det68.min(0), det68.max(0)
    side = float(max(hi - lo) * cfg.crop.scale)
    center = (lo + hi) / 2 - np.array([0.0, cfg.crop.headroom * side])  # room for the forehead
    outline = None
    if dense is not None and len(dense) >= 468:
        from ...perception.landmarks import MEDIAPIPE_FACE_OVAL
        outline = np.asarray(dense)[list(MEDIAPIPE_FACE_OVAL)]
    crop = make_crop(photo, center, side, cfg.render_res, K_full, device, outline, cfg.crop.outline_shrink,
                     cfg.crop.antialias)

    det = torch.from_numpy(crop.to_crop(det68)).float().to(device)[None]  # (1, 68, 2)
    iod = float(torch.linalg.norm(det[0, 36] - det[0, 45]))
    from ..losses import INNER
    jaw = torch.cat([model.jawline_right_extended, model.landmarks68[8:9], model.jawline_left_extended])
    targets = LandmarkTargets(det=det, iod=iod, inner_idx=model.landmarks68[INNER], jaw_idx=jaw)
    if dense is not None:
        c = load_dense_correspondence("mediapipe478")
        if len(dense) > int(c.point_index.max()):
            targets.dense = torch.from_numpy(crop.to_crop(dense[c.point_index])).float().to(device)[None]
            targets.tri_v = model.fit_tris[torch.from_numpy(c.tri).to(device)].long()
            targets.bary = torch.from_numpy(c.bary).float().to(device)
            targets.weights = torch.from_numpy(c.weights).float().to(device)
    return Framed(crop, targets, outline)
