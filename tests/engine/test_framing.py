"""The same face framed differently: the detect stage's canonical re-detection gives the same
landmarks whatever the crop (issue 14 item 1)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

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
