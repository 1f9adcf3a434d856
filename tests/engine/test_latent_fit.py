"""Issue 13: the fit in a linear texture latent, the trust weight, the detail layer and the whole-head
albedo (units, synthetic data; one real fit with the shipped model where it is installed)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from engine.fit import trust, uvspace
from engine.fit.config import AlbedoConfig
from engine.fit.optim import Adam
from engine.fit.texture import DEFAULT_MODEL, GeneratorTexture, TexelTexture, detail_layer, save_generator
from engine.texture.ppca import PPCAGenerator, fit_ppca
from tests.engine.texture_synth import make_samples
from tests.shared_data import REPO, shared_path

HOPPER = shared_path("photos", "usnavy_grace_hopper.jpg")


def _layout() -> np.ndarray:
    """An upright synthetic 68-point layout in a 240 x 200 image."""
    lm = np.zeros((68, 2))
    lm[0:17] = np.stack([np.linspace(20, 180, 17), 100 + 90 * np.sin(np.linspace(0, np.pi, 17))], 1)
    lm[17:22] = np.stack([np.linspace(40, 90, 5), np.full(5, 68)], 1)
    lm[22:27] = np.stack([np.linspace(110, 160, 5), np.full(5, 68)], 1)
    lm[27:31] = np.stack([np.full(4, 100), np.linspace(80, 125, 4)], 1)
    lm[31:36] = np.stack([np.linspace(85, 115, 5), np.full(5, 130)], 1)
    for i, cx in ((36, 65), (42, 135)):
        ang = np.linspace(np.pi, -np.pi, 7)[:6]
        lm[i:i + 6] = np.stack([cx + 14 * np.cos(ang), 90 + 5 * np.sin(ang)], 1)
    ang = np.linspace(np.pi, -np.pi, 13)[:12]
    lm[48:60] = np.stack([100 + 25 * np.cos(ang), 160 + 9 * np.sin(ang)], 1)
    ang = np.linspace(np.pi, -np.pi, 9)[:8]
    lm[60:68] = np.stack([100 + 15 * np.cos(ang), 160 + 3 * np.sin(ang)], 1)
    return lm


def test_occluder_pixels_get_low_trust():
    rng = np.random.default_rng(0)
    H, W = 240, 200
    img = np.clip(np.array([0.80, 0.58, 0.47]) + rng.normal(0, 0.015, (H, W, 3)), 0, 1)
    img[110:116, 20:180] = (0.08, 0.07, 0.07)     # a dark frame across the cheeks
    img[30:60, :] = (0.30, 0.20, 0.10)            # a brown fringe over the upper forehead
    lm = _layout()
    t = trust.skin_trust(torch.from_numpy(img).float()[None], lm)[0].numpy()
    assert t.shape == (H, W)
    assert t[140:150, 40:60].mean() > 0.9          # cheek skin
    assert t[112:114, 40:160].max() < 0.1          # the frame
    assert t[40:50, 20:180].max() < 0.1            # the fringe
    assert t[90, 65] == 0 and t[90, 135] == 0      # the eyes are never trusted
    # The frame's neighbours lose trust too (erosion over ~6% of the eye distance).
    assert t[117, 40:160].mean() < t[140:150, 40:60].mean()


def test_geman_mcclure_weights():
    r = torch.cat([torch.full((1000,), 0.02), torch.tensor([0.0, 0.5, 1.0])])
    w = trust.geman_mcclure(r, torch.ones_like(r), scale=2.5)
    assert w[-3] == pytest.approx(1.0)
    assert w[0] > 0.7                       # typical residuals keep most of their weight
    assert w[-2] < 0.01 and w[-1] < w[-2]   # outliers are switched off, the larger the more


def _ppca_generator(res: int = 32, k: int = 4):
    albedo, weight, _ = make_samples(80, res, rank=k, seed=0)
    m = fit_ppca(torch.from_numpy(albedo).float().permute(0, 3, 1, 2),
                 torch.from_numpy(weight).float(), k, iters=15)
    gen = PPCAGenerator(m)
    meta = {"latent_dim": m.k, "output_range": "0,1"}
    return gen, meta


def test_latent_start_and_fit_lower_the_loss():
    """The closed-form start from a partial, noisy view beats the mean face on the texels it did
    not see; gradient steps on the latent lower a masked photometric loss further."""
    gen, meta = _ppca_generator()
    tex = GeneratorTexture(gen, meta)
    albedo, weight, _ = make_samples(1, 32, rank=4, seed=7)
    target = torch.from_numpy(albedo).float().flip(1)           # renderer layout: row 0 = v 0
    w = torch.from_numpy(weight).float().flip(1)
    seen = (w > 0).float()
    with torch.no_grad():
        mean_err = float(((tex() - target).abs().mean(-1) * (1 - seen)).sum() / (1 - seen).sum())
    tex.init_from(target, w)
    with torch.no_grad():
        start_err = float(((tex() - target).abs().mean(-1) * (1 - seen)).sum() / (1 - seen).sum())
    assert start_err < 0.8 * mean_err
    # From the mean: the latent alone (Adam, its own rate) lowers the loss on the seen texels.
    tex.latent.data.zero_()
    opt = Adam(tex.param_groups(0.05))
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = ((tex() - target).abs().mean(-1) * seen).sum() / seen.sum() + 0.01 * tex.prior()
        losses.append(float(loss.detach()))
        loss.backward()
        opt.step()
    assert losses[-1] < 0.6 * losses[0]


def test_detail_layer_keeps_trusted_texels_and_drops_occluders():
    T = 64
    fitted = torch.full((1, T, T, 3), 0.4)
    delit = fitted.clone()
    torch.manual_seed(0)
    delit[:, 10:60, 10:60] += 0.04 * torch.randn(1, 50, 50, 3)  # photo detail on trusted skin
    delit[:, 50:52, 10:60] = 0.02                                # a dark frame in the photo
    conf = torch.zeros(1, T, T)
    conf[:, 10:60, 10:60] = 1.0
    tr = torch.ones(1, T, T)
    d, a = detail_layer(fitted, delit, conf, tr, 3.0, AlbedoConfig())
    out = fitted + d
    inner = slice(24, 36)
    err_inner = float((out[:, inner, inner] - delit[:, inner, inner]).abs().mean())
    assert err_inner < 0.3 * float((fitted[:, inner, inner] - delit[:, inner, inner]).abs().mean())
    # The frame stays the model's (robust weight) and nothing is added where the photo is unseen.
    assert float((out[:, 50:52, 12:58] - fitted[:, 50:52, 12:58]).abs().mean()) < 0.1
    assert float(a[:, :4].max()) < 0.05


def test_whole_head_albedo_continues_the_face(tmp_path):
    """No flat scalp: the head and neck take the face's colours where they meet it, vary with
    them, and the mouth socket darkens inward."""
    from engine import render
    from engine.models.facemodel import load_face_model
    model = load_face_model("cpu")
    ctx = render.create_context("cpu")
    uvr = uvspace.uv_raster(ctx, model, 256)
    T = 256
    v = torch.linspace(0, 1, T)[:, None].expand(T, T)
    face = torch.stack([0.3 + 0.4 * v, 0.25 + 0.1 * v, 0.2 + 0.0 * v], -1)[None]  # a vertical gradient
    out = uvspace.complete_head(face, uvr, model)
    rid = {n: i for i, n in enumerate(model.region_names)}
    head = uvr.region == rid["head_neck"]
    red = out[0, ..., 0][head]
    assert float(red.std()) > 0.02                                  # not one flat colour
    assert 0.3 - 1e-3 <= float(red.min()) and float(red.max()) <= 0.7 + 1e-3  # within the face's range
    mouth = uvr.region == rid["mouth_socket"]
    lum = out[0][mouth].mean(-1)
    assert float(lum.min()) < 0.6 * float(lum.max())               # darkens inward
    sclera = uvr.region == rid["sclera_left"]
    assert float(out[0][sclera].mean()) > 0.5                      # painted eyes are kept


def test_hairline_the_photo_does_not_show_gives_way_to_the_skin_it_does():
    """A model's dark hairline band above the brows is kept where the photo shows skin there and
    replaced by the skin below it (continued on into the scalp) where it does not: no band."""
    from engine import render
    from engine.models.facemodel import load_face_model
    model = load_face_model("cpu")
    ctx = render.create_context("cpu")
    T = 256
    uvr = uvspace.uv_raster(ctx, model, T)
    rid = {n: i for i, n in enumerate(model.region_names)}
    pos, _ = render.interpolate(model.vertices_neutral[None].contiguous(), uvr.rast, model.tris)
    y = pos[..., 1]
    brow = float(model.vertices_neutral[model.landmarks68][17:27, 1].max())
    face = (uvr.region == rid["face"])[None]
    skin = torch.tensor([0.55, 0.40, 0.32])
    band = ((y > brow + 2.0) & (y < brow + 4.0) & face)[..., None]
    albedo = torch.where(band, torch.tensor([0.15, 0.10, 0.08]), skin).expand(1, T, T, 3).contiguous()
    forehead = (y > brow + 2.2) & (y < brow + 3.8) & face & (pos[..., 0].abs() < 2)
    scalp = (y > brow + 7) & (uvr.region == rid["head_neck"])[None]
    lum = lambda a, m: float(a[m].mean())  # noqa: E731

    unseen = torch.where(y > brow + 1.0, 0.0, 1.0) * face          # the photo shows skin only below
    out = uvspace.complete_head(albedo, uvr, model, seen=unseen)
    assert abs(lum(out, forehead) - float(skin.mean())) < 0.03      # the band is gone
    assert abs(lum(out, scalp) - float(skin.mean())) < 0.03         # and the scalp is skin too

    shown = torch.ones(1, T, T) * face                              # the photo shows that band
    kept = uvspace.complete_head(albedo, uvr, model, seen=shown)
    assert lum(kept, forehead) < 0.2                                # evidence: kept as it is
    plain = uvspace.complete_head(albedo, uvr, model)                 # as without ``seen``,
    same = (kept - plain).abs().amax(-1)[face] < 1e-3                 # but at the face's edge
    assert float(same.float().mean()) > 0.97


def test_missing_default_model_falls_back_with_a_warning(monkeypatch, tmp_path):
    import argparse

    from engine.fit import run, texture
    from engine.fit.config import get_config
    monkeypatch.setattr(texture, "DEFAULT_MODEL", tmp_path / "absent.pt")
    warned = []
    f = run._texture_factory(argparse.Namespace(texture_model="default"), "cpu", get_config("fast"), warned.append)
    assert isinstance(f(torch.zeros(1, 16, 16, 3)), TexelTexture)
    assert warned and "texture model is missing" in warned[0]
    gen, meta = _ppca_generator(16, 3)
    save_generator(gen, tmp_path / "m.pt", latent_dim=3, output_range="0,1")
    monkeypatch.setattr(texture, "DEFAULT_MODEL", tmp_path / "m.pt")
    f = run._texture_factory(argparse.Namespace(texture_model="default"), "cpu", get_config("fast"), warned.append)
    tex = f(torch.zeros(1, 16, 16, 3))
    assert isinstance(tex, GeneratorTexture) and tex.linear is not None and len(warned) == 1


@pytest.mark.needs_shared("photos", "usnavy_grace_hopper.jpg")
@pytest.mark.skipif(not DEFAULT_MODEL.is_file(), reason="the shipped texture model is not installed")
def test_fit_with_the_shipped_model_fits_the_latent(tmp_path):
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, "-m", "engine", "fit", str(HOPPER), "-o", str(out), "--preset", "fast",
                        "--texture-res", "512"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads((out / "result.json").read_text())
    assert r["models"]["texture"] == "generator"
    assert r["losses"]["pixel_l1_trusted"] <= r["losses"]["pixel_l1"] + 1e-6
    params = np.load(out / "params.npz")
    assert np.abs(params["texture_latent"]).max() > 0   # moved from the mean face


def test_outline_landmarks_on_a_beard_pull_less():
    """The jaw points a detector put on a beard (low trust just inside them) get low weights; the
    ones on skin keep theirs."""
    from engine.fit.losses import LandmarkTargets
    lm = torch.from_numpy(_layout()).float()
    H, W = 240, 200
    tr = torch.ones(1, H, W)
    tr[:, 170:, :] = 0.0                                  # a beard over the lower face
    t = LandmarkTargets(det=lm[None], iod=70.0, inner_idx=torch.zeros(51, dtype=torch.long),
                        jaw_idx=torch.zeros(35, dtype=torch.long))
    trust.weigh_outline(t, tr)
    w = t.jaw_weights
    assert w.shape == (17,)
    assert float(w[8]) == pytest.approx(0.25)             # the chin, on the beard: the floor
    assert float(w[0]) == pytest.approx(1.0) and float(w[16]) == pytest.approx(1.0)
    from engine.fit.losses import contour_loss
    line = lm[None, :17] + torch.tensor([0.0, 10.0])      # a jawline 10 px below the points
    assert float(contour_loss(line, lm[None, :17], 70.0, w)) > 0


@pytest.mark.needs_shared("photos", "ccby_chris_pratt_2018.jpg")
def test_the_fine_stage_keeps_the_eyelids_of_the_landmark_fit():
    """FineConfig.hold_eyes: the eye* expression weights leave the fine stage as the coarse
    (landmark) stage set them; without it the photometric terms move them (a balanced fit closed
    Pratt's open left eye, eyeBlink_L 0.69)."""
    from dataclasses import replace

    from engine.fit import pipeline
    from engine.fit.hooks import Hooks
    from engine.fit.session import FitOptions, FitSession
    from engine.fit.stages import coarse, detect
    from engine.io.image import load_photo
    path = shared_path("photos", "ccby_chris_pratt_2018.jpg")
    s = FitSession(FitOptions(preset="fast", device="cpu", recognizer="none", max_steps=12, threads=2))
    photo = load_photo(path)
    face = detect.detect(photo, "mediapipe", "cpu", 0, path, s.cfg.detect)
    K = pipeline.prior_camera(s.model, face.det68, photo.shape[1], photo.shape[0], s.cfg.camera.subject_distance_cm)
    framed = detect.frame(photo, face.det68, face.dense, K, s.model, s.cfg, s.device)
    trust.weigh_outline(framed.targets, trust.skin_trust(framed.crop.image, framed.targets.det[0].cpu().numpy()))
    rough = coarse.run(s.model, s.cfg, framed, face.expr_init, Hooks(), s.device).params.expr[0].detach()
    eyes = [i for i, n in enumerate(s.model.expression_names) if n.startswith("eye")]
    held = pipeline.fit(s.env, photo, K, face.det68, face.dense, face.expr_init, focal_known=False)
    assert torch.allclose(held.state.expr[0, eyes], rough[eyes])
    free_env = replace(s.env, cfg=replace(s.cfg, fine=replace(s.cfg.fine, hold_eyes=False)))
    free = pipeline.fit(free_env, photo, K, face.det68, face.dense, face.expr_init, focal_known=False)
    assert (free.state.expr[0, eyes] - rough[eyes]).abs().max() > 1e-3
    others = [i for i in range(s.model.n_expr) if i not in eyes]
    assert (held.state.expr[0, others] - rough[others]).abs().max() > 1e-3  # the rest is still fitted
