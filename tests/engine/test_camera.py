"""Camera conventions, rotation parameterisation, PnP start and SH lighting."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine import render
from engine.camera import (Intrinsics, focal_px_from_35mm, matrix_to_axis_angle, project,
                           rotation_matrix, solve_pose_weak_perspective, to_camera, to_clip)
from engine.lighting import ambient_coeffs, sh_basis, shade, shading
from engine.models.facemodel import load_face_model


def test_rotation_roundtrip_and_gradcheck():
    torch.manual_seed(0)
    aa = torch.randn(6, 3, dtype=torch.float64) * 0.8
    aa[0] = 0
    R = rotation_matrix(aa)
    assert torch.allclose(R @ R.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(6, 3, 3), atol=1e-12)
    assert torch.allclose(torch.det(R), torch.ones(6, dtype=torch.float64))
    for i in range(1, 6):
        assert np.allclose(matrix_to_axis_angle(R[i].numpy()), aa[i].numpy(), atol=1e-9)
    assert torch.autograd.gradcheck(rotation_matrix, (aa.requires_grad_(),))


def test_project_matches_clip_and_pixel_centres():
    K = Intrinsics(500.0, 500.0, 64.0, 48.0, 128, 96)
    pts = torch.tensor([[[0.0, 0.0, -50.0], [3.0, -2.0, -40.0], [-5.0, 4.0, -70.0]]])
    uv = project(pts, K)
    assert torch.allclose(uv[0, 0], torch.tensor([64.0, 48.0]))
    assert uv[0, 1, 0] > 64 and uv[0, 1, 1] > 48  # +X right, +Y up -> v down
    clip = to_clip(pts, K)
    ndc = clip[..., :2] / clip[..., 3:]
    assert torch.allclose((ndc[..., 0] + 1) / 2 * K.width, uv[..., 0], atol=1e-4)
    assert torch.allclose((ndc[..., 1] + 1) / 2 * K.height, uv[..., 1], atol=1e-4)
    z = clip[..., 2] / clip[..., 3]
    assert (z > -1).all() and (z < 1).all()


def test_roundtrip_project_rasterise_recover():
    """Project the model, rasterise, and read back camera-space positions at projected vertices."""
    model = load_face_model()
    H, W = 160, 128
    K = Intrinsics(420.0, 420.0, 61.3, 83.7, W, H)
    R = rotation_matrix(torch.tensor([[0.1, -0.3, 0.05]]))
    t = torch.tensor([[1.0, 2.0, -70.0]])
    cam = to_camera(model(None, None), R, t)
    ctx = render.create_context("cpu")
    rast, _ = render.rasterize(ctx, to_clip(cam, K).contiguous(), model.fit_tris, (H, W))
    pos, _ = render.interpolate(cam.contiguous(), rast, model.fit_tris)
    uv = project(cam, K)[0]
    # Pick front-facing vertices near the nose; they are visible.
    idx = model.landmarks68[27:36]
    for i in idx.tolist():
        u, v = uv[i].tolist()
        col, row = int(u), int(v)  # the pixel whose area contains the projected point
        assert rast[0, row, col, 3] > 0
        got = pos[0, row, col]
        # The pixel centre is within half a pixel of the point: compare in pixels.
        back = project(got[None, None], K)[0, 0]
        assert abs(back[0] - (col + 0.5)) < 1e-3 and abs(back[1] - (row + 0.5)) < 1e-3
        assert torch.linalg.norm(got - cam[0, i]) < 0.5  # cm


def test_weak_perspective_pnp_recovers_pose():
    model = load_face_model()
    pts3 = model.vertices_neutral[model.landmarks68[17:]].numpy().astype(np.float64)
    K = Intrinsics.from_focal(900.0, 640, 480)
    aa = np.array([0.1, 0.35, -0.05])
    R = rotation_matrix(torch.tensor(aa)[None])[0].numpy()
    t = np.array([2.0, -3.0, -60.0])
    cam = pts3 @ R.T + t
    uv = project(torch.tensor(cam)[None], K)[0].numpy()
    R0, t0 = solve_pose_weak_perspective(pts3, uv, K)
    ang = math.degrees(math.acos(np.clip((np.trace(R0.T @ R) - 1) / 2, -1, 1)))
    assert ang < 6
    assert abs(t0[2] - t[2]) < 0.12 * abs(t[2])
    reproj = project(torch.tensor(pts3 @ R0.T + t0)[None], K)[0].numpy()
    assert np.abs(reproj - uv).mean() < 8  # pixels; the fit refines from here


def test_intrinsics_focal_crop_scale():
    assert focal_px_from_35mm(43.2666, 3000, 2000) == pytest.approx(math.hypot(3000, 2000), rel=1e-4)
    K = Intrinsics.from_focal(1000, 800, 600)
    pts = torch.tensor([[[1.0, 2.0, -50.0]]])
    uv = project(pts, K)[0, 0]
    Kc = K.cropped(100, 50, 400, 400).scaled(0.5)
    uvc = project(pts, Kc)[0, 0]
    assert torch.allclose(uvc, (uv - torch.tensor([100.0, 50.0])) * 0.5, atol=1e-4)


def test_sh_ambient_is_identity_and_lighting_least_squares():
    torch.manual_seed(0)
    n = torch.nn.functional.normalize(torch.randn(1, 8, 8, 3), dim=-1)
    a = torch.rand(1, 8, 8, 3)
    assert torch.allclose(shade(a, n, ambient_coeffs()), a)
    # A light from +x brightens normals facing +x.
    sh = ambient_coeffs()
    sh[:, 3] = 0.5
    s = shading(torch.tensor([[[[1.0, 0, 0], [-1.0, 0, 0]]]]), sh)
    assert s[0, 0, 0, 0] > 1 > s[0, 0, 1, 0]
    assert sh_basis(n).shape == (1, 8, 8, 9)


def test_solve_lighting_recovers_known_sh():
    from engine.lighting import solve_lighting
    torch.manual_seed(1)
    n = torch.nn.functional.normalize(torch.randn(1, 64, 64, 3) + torch.tensor([0, 0, 1.5]), dim=-1)
    sh = ambient_coeffs()
    sh[0, 1:4] = torch.tensor([[0.2, 0.1, 0.1], [0.3, 0.3, 0.3], [-0.2, -0.25, -0.2]])
    skin = torch.tensor([0.5, 0.35, 0.3])
    colour = skin * shading(n, sh)
    got = solve_lighting(colour, n, torch.ones(1, 64, 64))
    # Recovered up to the albedo/light scale: compare the shading's shape, normalised by its mean.
    s_true = shading(n, sh)
    s_got = shading(n, got)
    s_true = s_true / s_true.mean((1, 2), keepdim=True)
    assert (s_got.mean((1, 2)) - 1).abs().max() < 0.05  # ~unit mean irradiance (robust weights)
    assert (s_got - s_true).abs().mean() < 0.06  # the ridge biases toward smooth light
    # Shading is positive over the front hemisphere and brighter toward the light.
    assert got[0, 2].mean() > 0.1 and got[0, 3].mean() < -0.05


@pytest.mark.parametrize("distance", [40.0, 100.0, 250.0])
def test_focal_from_face_recovers_the_lens_and_ignores_the_framing(distance):
    """A face projected with a known lens from a known distance gives that lens back (to the few
    per cent that weak perspective costs), whatever the pose; a crop leaves it unchanged and a
    rescale rescales it; a wrong lens gives a different answer (the test can fail)."""
    from engine.camera import RIGID68, focal_px_from_face
    from engine.fit.pipeline import prior_camera
    model = load_face_model()
    idx = model.landmarks68[list(RIGID68)]
    pts3 = model.vertices_neutral[idx].numpy().astype(np.float64)
    f = 1500.0
    K = Intrinsics.from_focal(f, 1200, 1600)
    for aa in ([0.0, 0.0, 0.0], [0.1, 0.5, -0.1]):
        R = rotation_matrix(torch.tensor(aa)[None])[0].numpy()
        # ``distance``: from the camera to the centroid of the points (the nose and eyes).
        cam = (pts3 - pts3.mean(0)) @ R.T + np.array([3.0, -2.0, -distance])
        uv = project(torch.tensor(cam)[None], K)[0].numpy()
        got = focal_px_from_face(pts3, uv, distance)
        assert got == pytest.approx(f, rel=0.05)
        assert focal_px_from_face(pts3, uv - np.array([317.0, 91.0]), distance) == pytest.approx(got, rel=1e-9)
        assert focal_px_from_face(pts3, uv * 0.5, distance) == pytest.approx(got * 0.5, rel=1e-9)
        assert abs(focal_px_from_face(pts3, uv, distance * 1.5) / f - 1) > 0.3
    # The pipeline's camera from 68 detected points: the rigid ones only; a crop keeps fx.
    det68 = project(torch.tensor(model.vertices_neutral[model.landmarks68].numpy().astype(np.float64)
                                 - pts3.mean(0) + np.array([0.0, 0.0, -distance]))[None], K)[0].numpy()
    Kp = prior_camera(model, det68, 1200, 1600, distance)
    assert Kp.fx == pytest.approx(f, rel=0.05) and (Kp.cx, Kp.cy) == (600.0, 800.0)
    Kc = prior_camera(model, det68 - np.array([200.0, 300.0]), 500, 500, distance)
    assert Kc.fx == pytest.approx(Kp.fx, rel=1e-9)
    det68[48:] += np.random.default_rng(0).normal(0, 20, (20, 2))  # a smile moves the mouth only
    assert prior_camera(model, det68, 1200, 1600, distance).fx == pytest.approx(Kp.fx, rel=1e-9)
    with pytest.raises(ValueError, match="degenerate"):
        focal_px_from_face(pts3, np.zeros((len(pts3), 2)), distance)


def test_prior_camera_on_the_face_keeps_the_principal_point_on_the_face_whatever_the_crop():
    """``CameraConfig.principal="face"``: the optical axis through the face's nose and eyes, so a
    crop moves the principal point with the face (and the image-centre default does not); a
    rescale rescales it; anything else is an error."""
    from engine.fit.pipeline import prior_camera
    model = load_face_model()
    K = Intrinsics.from_focal(1500.0, 1200, 1600)
    pts = model.vertices_neutral[model.landmarks68].numpy().astype(np.float64)
    det68 = project(torch.tensor(pts - pts.mean(0) + np.array([8.0, -12.0, -100.0]))[None], K)[0].numpy()
    Kf = prior_camera(model, det68, 1200, 1600, 100.0, principal="face")
    rigid = det68[27:48]
    assert (Kf.cx, Kf.cy) == pytest.approx(tuple((rigid.min(0) + rigid.max(0)) / 2))
    assert abs(Kf.cx - 600) > 50 and abs(Kf.cy - 800) > 50    # an off-centre face
    Ki = prior_camera(model, det68, 1200, 1600, 100.0)
    assert Kf.fx == Ki.fx and (Ki.cx, Ki.cy) == (600.0, 800.0)
    off = np.array([317.0, 91.0])
    Kc = prior_camera(model, det68 - off, 500, 500, 100.0, principal="face")
    assert (Kc.cx, Kc.cy) == pytest.approx((Kf.cx - off[0], Kf.cy - off[1]))
    assert Kc.fx == pytest.approx(Kf.fx, rel=1e-9)
    Ks = prior_camera(model, det68 * 0.5, 600, 800, 100.0, principal="face")
    assert (Ks.cx, Ks.cy, Ks.fx) == pytest.approx((Kf.cx * 0.5, Kf.cy * 0.5, Kf.fx * 0.5))
    with pytest.raises(ValueError, match="principal"):
        prior_camera(model, det68, 1200, 1600, 100.0, principal="centre")
