"""The same face framed differently: the detect stage's canonical re-detection gives the same
landmarks whatever the crop (issue 14 item 1)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from engine.fit.config import DetectConfig
from tests.shared_data import require_shared

PHOTO = ("photos", "nasa_eileen_collins.png")


def test_redetection_makes_the_landmarks_independent_of_the_crop():
    from engine.fit.stages.detect import detect
    from engine.io.image import load_photo
    photo = load_photo(require_shared(*PHOTO))
    on = replace(DetectConfig(), passes=2)
    full = detect(photo, "mediapipe", "cpu", cfg=on)
    x0, y0, x1, y1 = full.box
    side = 1.5 * max(x1 - x0, y1 - y0)                       # a tight crop, as a user might make
    left, top = int((x0 + x1 - side) / 2), int((y0 + y1 - side) / 2)
    crop = np.ascontiguousarray(photo[top: top + int(side), left: left + int(side)])
    tight = detect(crop, "mediapipe", "cpu", cfg=on)
    once = detect(crop, "mediapipe", "cpu", cfg=replace(DetectConfig(), passes=0))
    full0 = detect(photo, "mediapipe", "cpu", cfg=replace(DetectConfig(), passes=0))
    off = np.array([left, top])
    iod = np.linalg.norm(full.det68[36] - full.det68[45])
    err = np.linalg.norm(tight.det68 + off - full.det68, axis=1).mean() / iod
    err0 = np.linalg.norm(once.det68 + off - full0.det68, axis=1).mean() / iod
    assert err < 0.006, err                                   # without: ~0.01 on this photo
    assert err < err0
    # The mapping back to photo pixels keeps the points on the face's box.
    assert abs(tight.box[0] + left - full.box[0]) < 0.02 * (x1 - x0)
    assert tight.dense is not None and tight.dense.shape == (478, 2)


def _blob_photo(h: int = 600, w: int = 800, at=(431.3, 287.6), sigma: float = 6.0) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w] + 0.5                        # pixel centres (corner convention)
    g = np.exp(-((xx - at[0]) ** 2 + (yy - at[1]) ** 2) / (2 * sigma ** 2))
    return np.repeat((g * 255).round().astype(np.uint8)[..., None], 3, axis=2)


def _blob_finder(calls: list):
    """A stand-in detector: one 'face' whose every point is the blob's brightness centroid."""
    from engine.perception.landmarks import Face

    def find(img):
        calls.append(img.shape)
        g = img[..., 0].astype(np.float64)
        yy, xx = np.mgrid[0:g.shape[0], 0:g.shape[1]] + 0.5
        c = np.array([(g * xx).sum(), (g * yy).sum()]) / g.sum()
        pts = np.repeat(c[None].astype(np.float32), 68, axis=0)
        pts += np.linspace(-20, 20, 68, dtype=np.float32)[:, None]   # a box of some size
        return [Face(box=(float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()),
                          float(pts[:, 1].max())), score=1.0, landmarks=pts, scheme="ibug68",
                     landmarks68=pts.copy(), blendshapes={"jawOpen": float(c[0] / 1000)})]
    return find


def test_averaged_redetection_maps_every_jittered_crop_back_to_the_photo():
    """The jittered crops of DetectConfig.average are each mapped back exactly: a detector that
    finds a blob's centre gives the same centre (to a small fraction of a pixel) from every one of
    them and from the average, whatever the shift of the first box; one detection per crop."""
    from engine.fit.stages.detect import JITTERS, redetect
    from engine.perception.landmarks import Face
    at = np.array([431.3, 287.6])
    photo = _blob_photo(at=tuple(at))
    for shift in (0.0, 7.3):
        pts = (at + shift + np.linspace(-20, 20, 68)[:, None]).astype(np.float32)
        first = Face(box=(float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()),
                          float(pts[:, 1].max())), score=1.0, landmarks=pts, scheme="ibug68",
                     landmarks68=pts.copy())
        for average in (1, 5, len(JITTERS)):
            calls = []
            cfg = replace(DetectConfig(), passes=2, average=average, res=256, jitter=0.05)
            got = redetect(photo, first, _blob_finder(calls), cfg)
            assert len(calls) == 1 + average                      # one pass alone, then the average
            centre = got.landmarks68.astype(np.float64).mean(0)
            assert np.abs(centre - at).max() < 0.1, (shift, average, centre)
            assert abs((got.box[0] + got.box[2]) / 2 - at[0]) < 0.1
            assert got.blendshapes is not None and got.blendshapes["jawOpen"] > 0
    # JITTERS: the canonical crop first, the others in opposite pairs (their mean is the canonical)
    assert JITTERS[0] == (0, 0, 0)
    assert np.allclose(np.array(JITTERS[1:]).reshape(-1, 2, 3).sum(1), 0)
    with pytest.raises(ValueError, match="average"):
        redetect(photo, first, _blob_finder([]), replace(DetectConfig(), passes=1, average=0))


def test_averaged_redetection_is_steadier_across_framings():
    """The landmarker on a tight crop and on the whole photo: with the median of several jittered
    canonical crops the two agree better than with the canonical crop alone (issue 14)."""
    from engine.fit.stages.detect import detect
    from engine.io.image import load_photo
    photo = load_photo(require_shared(*PHOTO))
    one = replace(DetectConfig(), passes=2, average=1)
    avg = replace(DetectConfig(), passes=2, average=9)
    full = detect(photo, "mediapipe", "cpu", cfg=one)
    x0, y0, x1, y1 = full.box
    side = 1.5 * max(x1 - x0, y1 - y0)
    left, top = int((x0 + x1 - side) / 2), int((y0 + y1 - side) / 2)
    crop = np.ascontiguousarray(photo[top: top + int(side), left: left + int(side)])
    off = np.array([left, top])
    iod = np.linalg.norm(full.det68[36] - full.det68[45])
    err = {}
    for name, cfg in (("one", one), ("avg", avg)):
        a, b = detect(photo, "mediapipe", "cpu", cfg=cfg), detect(crop, "mediapipe", "cpu", cfg=cfg)
        err[name] = np.linalg.norm(b.det68 + off - a.det68, axis=1).mean() / iod
        assert b.dense is not None and b.dense.shape == (478, 2)
    assert err["avg"] < err["one"], err
    assert err["avg"] < 0.004, err
