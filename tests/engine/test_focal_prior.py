"""The coarse stage's camera-to-face distance when the focal length is only the prior's guess
(CameraConfig.fit_distance): on synthetic landmarks of a near and a far face."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from engine.camera import Intrinsics, project, rotation_matrix, to_camera
from engine.fit.config import get_config
from engine.fit.hooks import Hooks
from engine.fit.pipeline import prior_camera
from engine.fit.stages import coarse, detect
from engine.models.facemodel import load_face_model


@pytest.fixture(scope="module")
def model():
    return load_face_model()


def _landmarks(model, distance: float, K: Intrinsics) -> np.ndarray:
    """The mean face's 68 landmarks seen from ``distance`` cm, turned a little."""
    torch.manual_seed(0)
    shape = torch.randn(1, model.n_shape) * 0.5
    v = model(shape, None)[:, model.landmarks68]
    R = rotation_matrix(torch.tensor([[0.05, 0.25, 0.0]]))
    return project(to_camera(v, R, torch.tensor([[0.0, 0.0, -distance]])), K)[0].numpy().astype(np.float64)


@pytest.mark.parametrize("distance", [35.0, 100.0])
def test_coarse_fits_the_distance_where_the_perspective_shows(model, distance):
    cfg = replace(get_config("fast"), coarse_steps=150)
    K_true = Intrinsics.from_focal(1000.0 * distance / 50.0, 900, 900)
    det68 = _landmarks(model, distance, K_true)
    K_guess = prior_camera(model, det68, 900, 900, cfg.camera.subject_distance_cm)  # 1 m
    photo = np.zeros((900, 900, 3), np.uint8)
    framed = detect.frame(photo, det68, None, K_guess, model, cfg, "cpu")
    fitted = coarse.run(model, cfg, framed, None, Hooks(), "cpu", fit_perspective=True)
    fixed = coarse.run(model, cfg, framed, None, Hooks(), "cpu", fit_perspective=False)
    assert fixed.focal_scale == 1.0
    distance_fitted = cfg.camera.subject_distance_cm * fitted.focal_scale
    if distance < 50:
        # A near face: the fit moves the camera much closer than the assumed 1 m, and the landmarks
        # are matched better than with the guess.
        assert distance_fitted < 0.8 * cfg.camera.subject_distance_cm
        last = lambda r: sum(v[-1][1] for k, v in r.history.items() if k in ("landmark", "contour"))  # noqa: E731
        assert last(fitted) < last(fixed)
    else:
        # The guess was right: the prior and the landmarks agree, the distance stays near it.
        assert distance_fitted == pytest.approx(distance, rel=0.15)
    # The returned translation is already scaled: with the focal length scaled too, the fitted face
    # lies on the detected landmarks.
    Kc, k, p = framed.crop.K, fitted.focal_scale, fitted.params
    K = Intrinsics(Kc.fx * k, Kc.fy * k, Kc.cx, Kc.cy, Kc.width, Kc.height)
    with torch.no_grad():
        v = model(p.shape, p.expr)[:, model.landmarks68[17:]]
        uv = project(to_camera(v, rotation_matrix(p.rot), p.trans), K)[0]
    err = (uv - framed.targets.det[0, 17:]).norm(dim=-1).mean() / framed.targets.iod
    assert float(err) < 0.02
