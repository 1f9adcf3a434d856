"""MediaPipe 468 -> ICT face surface correspondence and contour sliding."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # the repo may not be pip-installed in the test venv
    sys.path.insert(0, str(REPO))

from engine.errors import MissingModelError  # noqa: E402
from engine.perception.correspondence import (  # noqa: E402
    DATA_DIR,
    load_correspondence,
    model_points,
    slide_contour,
)
from engine.perception.landmarks import MEDIAPIPE_TO_IBUG68  # noqa: E402

SHARED = Path(os.environ.get("GANFIT_SHARED", REPO.parent / "shared"))
ICT = SHARED / "models" / "ict-facekit" / "ict_facekit.npz"
ASSET = DATA_DIR / "mediapipe478_ict.npz"


@pytest.fixture(scope="module")
def ict() -> dict[str, np.ndarray]:
    if not ICT.is_file():
        pytest.skip(f"ICT face model not found at {ICT} (set GANFIT_SHARED)")
    with np.load(ICT) as d:
        keep = ("vertices", "tri_vertex_indices", "tri_poly_index", "landmarks_multipie68",
                "face_area_poly_count", "face_area_vertex_count")
        out = {k: d[k] for k in keep}
    out["fit_tris"] = out["tri_vertex_indices"][out["tri_poly_index"]
                                                < int(out["face_area_poly_count"])]
    return out


@pytest.fixture(scope="module")
def neutral(ict) -> torch.Tensor:
    return torch.from_numpy(ict["vertices"].astype(np.float32))[None]


def test_asset_shapes() -> None:
    corr = load_correspondence(include_contour=True)
    assert corr.scheme == "mediapipe478" and len(corr) == 468
    np.testing.assert_array_equal(corr.point_index, np.arange(468))
    assert corr.tri.dtype == np.int64 and corr.bary.dtype == np.float32
    assert corr.bary.shape == (468, 3) and corr.weights.shape == (468,)
    assert (corr.bary >= -1e-6).all() and np.allclose(corr.bary.sum(1), 1, atol=1e-5)
    assert (corr.tri >= 0).all() and (corr.tri < corr.fit_tri_count).all()
    assert (corr.weights[corr.contour_point_index] == 0).all()
    default = load_correspondence()
    assert len(default) == 468 - len(corr.contour_point_index)
    assert not np.isin(default.point_index, corr.contour_point_index).any()
    assert (default.weights > 0).all()
    with pytest.raises(MissingModelError):
        load_correspondence("dlib68")


def test_mapped_points_near_aligned_canonical(ict, neutral) -> None:
    corr = load_correspondence(include_contour=True)
    pts = model_points(neutral, ict["fit_tris"], corr)[0].numpy()
    with np.load(ASSET) as d:
        aligned, rigid = d["canonical_aligned"], d["canonical_rigid"]
    e = np.linalg.norm(pts - aligned, axis=1) * 10.0  # mm
    er = np.linalg.norm(pts - rigid, axis=1) * 10.0
    print(f"\nsurface vs non-rigidly aligned canonical: mean {e.mean():.2f} mm, max {e.max():.2f} mm"
          f"\nsurface vs similarity-aligned canonical: mean {er.mean():.2f} mm, max {er.max():.2f} mm")
    assert e.mean() < 0.5 and e.max() < 3.0
    assert er.mean() < 5.0 and er.max() < 15.0


def test_left_right_not_swapped(ict, neutral) -> None:
    corr = load_correspondence(include_contour=True)
    pts = model_points(neutral, ict["fit_tris"], corr)[0].numpy()
    # MediaPipe 263/362 = subject's left eye corners, 291 = left mouth corner; +X = subject's left.
    for i in (263, 362, 291, 386, 300, 454):
        assert pts[i, 0] > 0.5, i
    for i in (33, 133, 61, 159, 70, 234):
        assert pts[i, 0] < -0.5, i
    v = ict["vertices"][corr.iris_vertex]
    assert v[0, 0] < 0 < v[1, 0]  # iris 468 = right, 473 = left
    assert (corr.contour_side[pts[corr.contour_point_index, 0] > 0.3] == 1).all()


def test_ibug68_subset_near_ict_landmarks(ict, neutral) -> None:
    corr = load_correspondence(include_contour=True)
    pts = model_points(neutral, ict["fit_tris"], corr)[0].numpy()
    mp68 = np.asarray(MEDIAPIPE_TO_IBUG68)
    d = np.linalg.norm(pts[mp68] - ict["vertices"][ict["landmarks_multipie68"]], axis=1)
    print(f"\niBUG-68 via mediapipe vs ICT landmarks_multipie68: inner 17-67 mean {d[17:].mean():.3f}"
          f" cm (max {d[17:].max():.3f}); jaw 0-16 mean {d[:17].mean():.2f} cm")
    assert d[17:].mean() < 0.2 and d[17:].max() < 0.5
    # The jaw is a silhouette on the detector side, fixed vertices on ICT's: only roughly equal.
    assert d[:17].mean() < 2.0


def test_model_points_differentiable_and_batched(ict, neutral) -> None:
    corr = load_correspondence()
    verts = neutral.repeat(2, 1, 1).double().requires_grad_(True)
    pts = model_points(verts, torch.from_numpy(ict["fit_tris"]), corr)
    assert pts.shape == (2, len(corr), 3) and pts.dtype == torch.float64
    pts.sum().backward()
    assert verts.grad is not None and verts.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        model_points(verts, ict["fit_tris"][:-1], corr)


def test_matches_lead_face_model(ict) -> None:
    try:
        from engine.models.facemodel import load_face_model
        fm = load_face_model()
    except (ImportError, MissingModelError) as exc:
        pytest.skip(f"engine.models.facemodel not usable yet: {exc}")
    np.testing.assert_array_equal(fm.fit_tris.cpu().numpy(), ict["fit_tris"])
    corr = load_correspondence()
    pts = model_points(fm.vertices_neutral[None], fm.fit_tris, corr)
    assert pts.shape == (1, len(corr), 3)


def _project(verts: np.ndarray, yaw_deg: float) -> np.ndarray:
    """Orthographic view, 20 px per cm, y down (image convention)."""
    a = math.radians(yaw_deg)
    r = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    v = verts @ r.T
    return np.stack([400 + 20 * v[:, 0], 400 - 20 * v[:, 1]], 1)


@pytest.mark.parametrize("yaw", [0.0, 25.0])
def test_slide_contour(ict, neutral, yaw: float) -> None:
    corr = load_correspondence(include_contour=True)
    proj = torch.from_numpy(_project(ict["vertices"].astype(np.float64), yaw))
    # "Detected" contour = the silhouette of the jaw/cheek band: at the image height of each
    # mapped oval point, the outermost projected candidate on that point's side (the chin stays
    # as mapped). Candidates only, since ICT's face area includes the ears, which a detector's
    # face oval never follows.
    pts = model_points(neutral.double(), ict["fit_tris"], corr)[0].numpy()
    target = _project(pts[corr.contour_point_index], yaw)
    face = proj.numpy()[corr.contour_candidates]
    for k, side in enumerate(corr.contour_side):
        if side == 0:
            continue
        row = face[np.abs(face[:, 1] - target[k, 1]) < 4.0]
        target[k] = row[row[:, 0].argmin()] if side < 0 else row[row[:, 0].argmax()]
        target[k, 1] = row[(row[:, 0] == target[k, 0])][0, 1]
    idx = slide_contour(proj, torch.from_numpy(target), corr)
    assert idx.shape == (len(corr.contour_point_index),) and idx.dtype == torch.int64
    got = proj[idx].numpy()
    err = np.linalg.norm(got - target, axis=1)
    assert err.max() < 0.6 * 20  # within 6 mm of the requested image point
    side = np.sign(ict["vertices"][idx.numpy(), 0])
    assert ((side == corr.contour_side) | (corr.contour_side == 0)
            | (np.abs(ict["vertices"][idx.numpy(), 0]) < 0.3)).all()
    # batched form
    idx_b = slide_contour(proj[None].repeat(2, 1, 1), torch.from_numpy(target)[None].repeat(2, 1, 1),
                          corr)
    assert idx_b.shape == (2, len(corr.contour_point_index))
    assert torch.equal(idx_b[0], idx)
    if yaw:
        # The silhouette slides: turned, the picks differ from the frontal picks.
        front = _project(ict["vertices"].astype(np.float64), 0.0)
        idx0 = slide_contour(torch.from_numpy(front),
                             torch.from_numpy(_project(pts[corr.contour_point_index], 0.0)), corr)
        assert (idx0 != idx).sum() >= len(idx) // 3


def test_asset_is_reproducible(ict) -> None:
    sys.path.insert(0, str(REPO / "tools"))
    try:
        import make_mediapipe_correspondence as tool
    finally:
        sys.path.pop(0)
    data, _ = tool.build(ICT, tool.DEFAULT_TASK)
    with np.load(ASSET) as d:
        np.testing.assert_array_equal(d["tri"], data["tri"])
        np.testing.assert_allclose(d["bary"], data["bary"], atol=1e-6)
        np.testing.assert_array_equal(d["contour_candidates"], data["contour_candidates"])


def test_raw_protobuf_reader_matches() -> None:
    sys.path.insert(0, str(REPO / "tools"))
    try:
        import make_mediapipe_correspondence as tool
    finally:
        sys.path.pop(0)
    import zipfile
    with zipfile.ZipFile(tool.DEFAULT_TASK) as z:
        blob = z.read(tool.GEOMETRY_ENTRY)
    vb, tris = tool.parse_canonical_mesh_raw(blob)
    assert vb.shape == (468, 5) and tris.shape == (898, 3) and tris.max() == 467
    # Canonical axes as ICT's: subject's left eye outer corner (263) at +x, nose tip forward.
    assert vb[263, 0] > 4 and vb[33, 0] < -4 and vb[1, 2] > vb[33, 2]
