"""The face model asset and its torch module."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.models.facemodel import ASSET, load_face_model, vertex_normals

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("GANFIT_SHARED", REPO.parent / "shared"))
ICT = SHARED / "models" / "ict-facekit" / "ict_facekit.npz"


@pytest.fixture(scope="module")
def model():
    return load_face_model()


def test_asset_is_compact_and_licensed():
    assert ASSET.stat().st_size <= 20 * 1024 * 1024
    assert (ASSET.parent / "LICENSE-ICT-FaceKit.txt").read_text().startswith("MIT License")


def test_shapes_and_parts(model):
    assert model.n_shape == 100 and model.n_expr == 53
    assert len(model.expression_names) == 53 and "jawOpen" in model.expression_names
    assert model.n_fit_vertices == 9409
    assert int(model.fit_tris.max()) < model.n_fit_vertices  # the fitted part is self-contained
    assert int(model.tris.max()) < model.n_vertices
    assert model.landmarks68.shape == (68,) and int(model.landmarks68.max()) < model.n_fit_vertices
    kept = {model.region_names[int(r)] for r in torch.unique(model.poly_region)}
    assert "face" in kept and "head_neck" in kept and "iris_left" in kept
    assert {"teeth", "gums_tongue"} <= kept               # an open mouth shows teeth
    assert not kept & {"eyelashes_left", "eye_occlusion_left"}


def test_teeth_are_appended_and_open_with_the_jaw(model):
    """The teeth and gums come after every other vertex (the rest keep their indices), and the
    lower teeth move down with jawOpen while the upper ones stay with the skull."""
    reg = model.vertex_region
    names = model.region_names
    mouth = (reg == names.index("teeth")) | (reg == names.index("gums_tongue"))
    first = int(torch.nonzero(mouth)[0])
    assert bool(mouth[first:].all()) and first == 17202
    teeth = torch.nonzero(reg == names.index("teeth"))[:, 0]
    jaw = torch.zeros(1, model.n_expr)
    jaw[0, model.expression_names.index("jawOpen")] = 1.0
    moved = (model(None, jaw, part="all")[0] - model(None, None, part="all")[0])[teeth]
    assert float(moved[:, 1].min()) < -1.0                  # some drop by over a centimetre
    assert float(moved[:, 1].abs().quantile(0.2)) < 0.1      # the upper ones stay put


def test_forward_batched_differentiable(model):
    p_s = torch.randn(3, 100, requires_grad=True)
    p_e = torch.rand(3, 53, requires_grad=True)
    v = model(p_s, p_e)
    assert v.shape == (3, model.n_fit_vertices, 3)
    v_all = model(p_s, p_e, part="all")
    assert v_all.shape == (3, model.n_vertices, 3)
    assert torch.allclose(v_all[:, : model.n_fit_vertices], v, atol=1e-5)
    v.square().mean().backward()
    assert p_s.grad.abs().sum() > 0 and p_e.grad.abs().sum() > 0
    # Batch items are independent.
    v0 = model(p_s[:1], p_e[:1])
    assert torch.allclose(v0[0], v[0], atol=1e-5)


def test_neutral_is_mirror_symmetric_and_faces_forward(model):
    v = model.vertices_neutral
    mirrored = v[model.vertex_mirror] * torch.tensor([-1.0, 1.0, 1.0])
    teeth = 17202                                   # ICT's teeth are symmetric to 0.3 mm only
    assert (mirrored - v)[:teeth].abs().max() < 0.01  # cm
    assert (mirrored - v)[teeth:].abs().max() < 0.05
    n = vertex_normals(v[None], model.fit_tris)[0]
    nose = model.landmarks68[30]
    assert n[nose, 2] > 0.9  # outward normals, the face looks toward +Z
    # 36 = the subject's right outer eye corner, which is at -X.
    assert v[model.landmarks68[36], 0] < 0 < v[model.landmarks68[45], 0]


def test_uv_atlas_in_unit_square_with_disjoint_boxes(model):
    uv = model.uvs
    assert uv.min() >= 0 and uv.max() <= 1
    boxes = model.atlas_boxes
    for region, box in [("face", "face"), ("head_neck", "tile1"), ("iris_left", "eyeball"),
                        ("teeth", "teeth"), ("gums_tongue", "gums")]:
        rid = model.region_names.index(region)
        polys = model.poly_region == rid
        idx = model.poly_uvs[polys]
        pts = uv[idx[idx >= 0].long()]
        u0, v0, s = boxes[box]
        assert pts[:, 0].min() >= u0 - 1e-6 and pts[:, 0].max() <= u0 + s + 1e-6
        assert pts[:, 1].min() >= v0 - 1e-6 and pts[:, 1].max() <= v0 + s + 1e-6
    names = list(boxes)
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            a, b = boxes[names[i]], boxes[names[j]]
            overlap_u = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
            overlap_v = min(a[1] + a[2], b[1] + b[2]) - max(a[1], b[1])
            assert overlap_u <= 1e-6 or overlap_v <= 1e-6


def test_expression_clamp_keeps_mouth_close_below_jaw_open(model):
    e = torch.rand(2, 53) * 2 - 0.5
    model.clamp_expression(e)
    assert e.min() >= 0 and e.max() <= 1
    assert (e[:, model.mouth_close] <= e[:, model.jaw_open]).all()


@pytest.mark.needs_shared("models", "ict-facekit", "ict_facekit.npz")
def test_matches_source_model(model):
    src = np.load(ICT)
    n = model.n_fit_vertices
    rng = np.random.default_rng(0)
    p_s = rng.normal(size=(1, 100)).astype(np.float32)
    p_e = rng.uniform(size=(1, 53)).astype(np.float32)
    ref = (src["vertices"][:n] + np.tensordot(p_s[0], src["identity_deltas"][:, :n].astype(np.float32), 1)
           + np.tensordot(p_e[0], src["expression_deltas"][:, :n].astype(np.float32), 1))
    ours = model(torch.from_numpy(p_s), torch.from_numpy(p_e))[0].numpy()
    assert np.abs(ours - ref).max() < 1e-3
    assert list(model.expression_names) == [str(x) for x in src["expression_names"]]
    assert np.array_equal(model.landmarks68.numpy(), src["landmarks_multipie68"])
