"""The fit as a pipeline: stage order, the one weighting function, texture-model priors, the
parameter groups, the forward model, a loud missing correspondence, a real short fit that lowers
its loss, and run-to-run determinism of the gradients."""

from __future__ import annotations

import inspect
import os

import numpy as np
import pytest
import torch

from engine.fit import losses as L
from engine.fit.config import FitConfig, Rates, Weights, get_config
from tests.shared_data import REPO, require_shared

PHOTO = ("photos", "codait_luciano.png")


def test_progress_stages_are_load_plus_the_pipeline_steps():
    from engine.fit import pipeline
    from engine.fit.run import STAGE_SPAN, STAGES
    assert STAGES == ("load", *pipeline.STEPS)
    assert pipeline.STEPS == ("detect", "coarse", "unwrap", "fine", "albedo", "write")
    spans = [STAGE_SPAN[s] for s in STAGES]
    assert spans[0][0] == 0.0 and spans[-1][1] == 1.0
    assert all(a[1] == b[0] and a[0] < a[1] for a, b in zip(spans, spans[1:]))
    # every step has its own module under fit/stages
    for step in pipeline.STEPS:
        assert (REPO / "engine" / "fit" / "stages" / f"{step}.py").is_file()


def test_weigh_applies_weights_and_drops_zero_weight_terms():
    raw = {"pixel": torch.tensor(2.0), "identity": torch.tensor(3.0), "landmark": torch.tensor(5.0)}
    w = Weights(pixel=0.5, identity=0.0, landmark=2.0)
    out = L.weigh(raw, w)
    assert list(out) == ["pixel", "landmark"]
    assert float(out["pixel"]) == 1.0 and float(out["landmark"]) == 10.0
    assert float(L.total(out)) == 11.0
    # every term a stage can produce has a weight of its own
    names = {"landmark", "contour", "shape_prior", "expr_prior", "expr_init", "pixel", "identity",
             "content", "light_prior", "light_level", "tex_prior", "tex_smooth", "tex_symmetry"}
    assert names <= set(Weights.__dataclass_fields__)
    assert "pose_prior" not in Weights.__dataclass_fields__


def test_identity_and_content_are_defined_once():
    from engine.perception import recognizer
    assert L.identity_loss is recognizer.identity_loss
    assert L.content_loss is recognizer.content_loss
    src = inspect.getsource(L)
    assert "def identity_loss" not in src and "def content_loss" not in src
    e = torch.nn.functional.normalize(torch.randn(1, 8), dim=-1)
    f = [torch.rand(1, 2, 3, 3)]
    t = L.identity_terms(e, e, f, f)
    assert set(t) == {"identity", "content"} and float(t["identity"]) < 1e-6 and float(t["content"]) == 0


def test_texture_models_own_their_priors():
    from engine.fit.texture import TexelTexture, TextureModel
    from engine.models.facemodel import load_face_model
    model = load_face_model()
    tex = TexelTexture(torch.rand(1, 64, 64, 3))
    with torch.no_grad():
        tex.levels[0].add_(0.1)
    s = tex.sample()
    pri = tex.priors(s, torch.ones(1, 64, 64), model)
    assert set(pri) == {"tex_prior", "tex_smooth", "tex_symmetry"}
    assert all(float(v.detach()) > 0 for v in pri.values())
    assert torch.equal(s.albedo, tex())

    class Flat(TextureModel):
        name = "flat"

        def __init__(self):
            super().__init__()
            self.c = torch.nn.Parameter(torch.full((1, 1, 1, 3), 0.5))

        def forward(self):
            return self.c.expand(1, 16, 16, 3)

    flat = Flat()
    assert set(flat.priors(flat.sample(), torch.ones(1, 16, 16), model)) == {"tex_prior"}
    # the fine stage's source never dispatches on the texture's kind
    from engine.fit.stages import albedo, fine
    for mod in (fine, albedo):
        src = inspect.getsource(mod)
        assert "isinstance" not in src and "TexelTexture" not in src


def test_fit_params_build_their_groups_from_the_rates():
    from engine.fit.params import FitParams
    z = lambda *s: torch.zeros(*s, requires_grad=True)  # noqa: E731
    p = FitParams(rot=z(1, 3), trans=z(1, 3), shape=z(1, 4), expr=z(1, 2), sh=z(1, 9, 3))
    r = Rates(rotation=0.1, translation=0.2, shape=0.3, expression=0.4, light=0.5)
    g = p.groups(r, ("rot", "trans", "sh"), {"rot": 0.5})
    assert [x["lr"] for x in g] == [0.05, 0.2, 0.5]
    assert g[0]["params"][0] is p.rot and g[2]["params"][0] is p.sh


def test_get_config_keeps_its_interface():
    cfg = get_config("balanced")
    assert isinstance(cfg, FitConfig) and cfg.preset == "balanced"
    for key in ("texture_res", "render_res", "coarse_steps", "fine_steps", "identity"):
        assert hasattr(cfg, key)
    assert cfg.unwrap.lighting.rounds >= 1 and 0 < cfg.crop.outline_shrink <= 1


def _scene():
    from engine import render
    from engine.camera import Intrinsics
    from engine.models.facemodel import load_face_model
    from engine.render.forward import face_geometry
    model = load_face_model()
    z = lambda n: torch.zeros(1, n)  # noqa: E731
    geom = face_geometry(model, z(model.n_shape), z(model.n_expr), torch.tensor([[0.0, 0.3, 0.0]]),
                         torch.tensor([[0.0, 0.0, -60.0]]))
    return render.create_context("cpu"), model, geom, Intrinsics.from_focal(200.0, 96, 96)


def test_render_full_is_the_forward_model_in_tiles():
    from engine.fit.params import FitParams
    from engine.lighting import ambient_coeffs
    from engine.render.forward import render_face, render_full
    ctx, model, geom, K = _scene()
    albedo = torch.rand(1, 32, 32, 3)
    sh = ambient_coeffs(1)
    out = render_face(ctx, geom, K, (96, 96), sh, albedo=albedo, alpha=True, grad_db=False)
    z = lambda n: torch.zeros(1, n)  # noqa: E731
    st = FitParams(torch.tensor([[0.0, 0.3, 0.0]]), torch.tensor([[0.0, 0.0, -60.0]]), z(model.n_shape),
                   z(model.n_expr), sh)
    full = render_full(ctx, model, st, albedo, K, tile=40)  # 3x3 tiles, uneven at the border
    a = out["rgba"][0, ..., 3].clamp(0, 1).numpy()
    assert full.shape == (96, 96, 4) and 0.05 < (full[..., 3] > 127).mean() < 0.9
    assert np.abs(full[..., 3] / 255.0 - a).max() < 0.01
    cov = a > 0.99
    rgb = (out["rgba"][0, ..., :3].numpy() / a.clip(1e-4)[..., None]).clip(0, 1)[cov] * 255
    assert np.abs(full[..., :3][cov] - rgb).max() <= 1.0


def test_missing_correspondence_is_loud(monkeypatch):
    from engine.errors import MissingModelError
    from engine.fit.stages import detect
    from engine.perception import correspondence

    def broken(*a, **k):
        raise ValueError("truncated file")

    monkeypatch.setattr(correspondence, "load_correspondence", broken)
    with pytest.raises(MissingModelError, match="mediapipe478_ict.npz"):
        detect.load_dense_correspondence("mediapipe478")


def test_vertex_normals_gradient_is_deterministic_with_threads():
    from engine.models.facemodel import load_face_model, vertex_normals
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        model = load_face_model()
        v = model(torch.randn(1, model.n_shape) * 0.5, None).detach().requires_grad_()
        w = torch.randn(1, v.shape[1], 3)
        grads = []
        for _ in range(4):
            v.grad = None
            (vertex_normals(v, model.fit_tris) * w).sum().backward()
            grads.append(v.grad.clone())
        assert all(torch.equal(g, grads[0]) for g in grads)
        # and it is the area-weighted normal
        t = model.fit_tris.long()
        vv = v.detach()
        fn = torch.cross(vv[:, t[:, 1]] - vv[:, t[:, 0]], vv[:, t[:, 2]] - vv[:, t[:, 0]], dim=-1)
        ref = torch.zeros_like(vv)
        for k in range(3):
            ref = ref.index_add(1, t[:, k], fn)
        ref = torch.nn.functional.normalize(ref, dim=-1, eps=1e-12)
        assert (vertex_normals(vv, model.fit_tris) - ref).abs().max() < 1e-5
    finally:
        torch.set_num_threads(old)


def test_recogniser_zero_fill_hands_on_a_contiguous_gradient():
    from engine.perception.dlib_resnet import _add_zero_fill
    a = torch.rand(1, 8, 1, 1, requires_grad=True)
    b = torch.rand(1, 4, 2, 2, requires_grad=True)
    seen = []
    a.register_hook(lambda g: seen.append(g.is_contiguous()))
    (_add_zero_fill(a, b) * torch.rand(1, 8, 2, 2)).sum().backward()
    assert seen == [True] and a.grad.shape == a.shape and b.grad.shape == b.shape
    ref = torch.nn.functional.pad(a.detach(), (0, 1, 0, 1)) + torch.nn.functional.pad(b.detach(), (0, 0, 0, 0, 0, 4))
    assert torch.equal(_add_zero_fill(a, b).detach(), ref)


@pytest.fixture(scope="module")
def short_fit():
    photo_path = require_shared(*PHOTO)
    from engine import render
    from engine.camera import DEFAULT_FOCAL_35MM, Intrinsics, focal_px_from_35mm
    from engine.fit import pipeline
    from engine.fit.stages import detect
    from engine.io.image import load_photo
    from engine.models.facemodel import load_face_model
    photo = load_photo(photo_path)
    H, W = photo.shape[:2]
    K = Intrinsics.from_focal(focal_px_from_35mm(DEFAULT_FOCAL_35MM, W, H), W, H)
    from dataclasses import replace
    cfg = replace(get_config("fast"), coarse_steps=40, fine_steps=12, texture_res=256)
    env = pipeline.Env(load_face_model(), cfg, render.create_context("cpu"), torch.device("cpu"))
    face = detect.detect(photo, "mediapipe", "cpu")

    def once():
        return pipeline.fit(env, photo, K, face.det68, face.dense, face.expr_init)

    return once


def _totals(history: dict[str, list[tuple[int, float]]]) -> dict[int, float]:
    steps: dict[int, float] = {}
    for series in history.values():
        for step, v in series:
            steps[step] = steps.get(step, 0.0) + v
    return steps


def test_short_fit_lowers_the_total_loss(short_fit):
    out = short_fit()
    for stage in ("coarse", "fine"):
        tot = _totals(out.history[stage])
        first, last = min(tot), max(tot)
        assert last > first
        assert tot[last] < tot[first], (stage, tot[first], tot[last])
    assert out.metrics["landmark_error_iod"] < 0.1


@pytest.mark.parametrize("threads", [1, 2])
def test_same_seed_same_fit(short_fit, threads):
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = short_fit(), short_fit()
    finally:
        torch.set_num_threads(old)
    for k in ("shape", "expr", "rot", "trans", "sh"):
        assert torch.equal(getattr(a.state, k), getattr(b.state, k)), k
    assert torch.equal(a.albedo, b.albedo)
    assert a.metrics == b.metrics


def test_recogniser_gradient_is_deterministic_with_threads():
    from engine.errors import MissingModelError
    from engine.fit.losses import identity_terms
    from engine.perception.recognizer import load_recognizer
    try:
        rec = load_recognizer("dlib", device="cpu")
    except MissingModelError as e:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(e))
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(0)
        x0 = torch.rand(1, 3, rec.input_size, rec.input_size)
        with torch.no_grad():
            ep, fp = rec.embed(torch.rand(1, 3, rec.input_size, rec.input_size))

        def grad():
            x = x0.clone().requires_grad_()
            e, f = rec.embed(x)
            t = identity_terms(e, ep, f, fp)
            (t["identity"] + t["content"]).backward()
            return x.grad

        first = grad()
        assert all(torch.equal(grad(), first) for _ in range(12))
    finally:
        torch.set_num_threads(old)


def _darken(photo: np.ndarray, k: float) -> np.ndarray:
    x = photo.astype(np.float32) / 255
    lin = np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4) * k
    s = np.where(lin <= 0.0031308, lin * 12.92, 1.055 * np.maximum(lin, 1e-8) ** (1 / 2.4) - 0.055)
    return (s * 255 + 0.5).clip(0, 255).astype(np.uint8)


def test_exposure_is_one_for_normal_photos_and_undoes_a_dark_one():
    from engine.io.image import load_photo
    from engine.lighting import exposure_from_white_point
    photos = sorted(p for p in require_shared("photos").iterdir() if p.suffix.lower() in (".jpg", ".png"))
    assert len(photos) >= 8
    for p in photos:
        assert exposure_from_white_point(load_photo(p)) == 1.0, p.name
    normal = load_photo(require_shared(*PHOTO))
    for k in (0.1, 0.15, 0.2):
        e = exposure_from_white_point(_darken(normal, k))
        assert 0.8 * k < e < 1.25 * k, (k, e)
    # continuous and monotonic between "undone fully" and "not at all"
    es = [exposure_from_white_point(_darken(normal, k)) for k in np.linspace(0.05, 1.0, 20)]
    assert all(b >= a for a, b in zip(es, es[1:])) and es[-1] == 1.0
