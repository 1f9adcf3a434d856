"""Several photos of one person: ``python -m engine fit A B -o OUT`` (and ``--photos DIR``) gives one
head with a view per photo (docs/result-format.md, "Several photos")."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shared_data import require_shared

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("GANFIT_SHARED", REPO.parent / "shared"))
LONDON = ("faces", "london-canada")
# One person, two photos; and two people whose embeddings are far apart (cosine ~0.73).
SAME = ("london_001_neutral.jpg", "london_001_smiling.jpg")
OTHERS = ("london_003_neutral.jpg", "london_008_neutral.jpg")
QUICK = ("--preset", "fast", "--max-steps", "2", "--texture-res", "256", "--threads", "2")

pytestmark = pytest.mark.needs_torch


def run_engine(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=env)


def london(name: str) -> Path:
    return require_shared(*LONDON, name)


@pytest.fixture(scope="module")
def two_photos(tmp_path_factory):
    photos = [london(n) for n in SAME]
    out = tmp_path_factory.mktemp("mv") / "head"
    p = run_engine("fit", *map(str, photos), "-o", str(out), *QUICK)
    return out, photos, p


def test_two_photos_give_one_head_with_two_views(two_photos):
    out, photos, p = two_photos
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads((out / "result.json").read_text())
    assert [v["photo"] for v in r["views"]] == [str(x) for x in photos]
    assert r["photo"] == str(photos[0])  # the top level is the primary (first) photo
    assert r["camera"] == r["views"][0]["camera"]
    assert r["views"][0]["files"] == {"render": "render.png", "overlay": "overlay.png"}
    assert r["views"][1]["files"] == {"render": "render-2.png", "overlay": "overlay-2.png"}
    for v in r["views"]:
        for name in v["files"].values():
            assert (out / name).is_file()
        assert 0 < v["metrics"]["landmark_error_iod"] < 0.2
        assert v["image"]["width"] > 0 and len(v["expression"]["weights"]) == 53
    # Every file of the folder is listed (the overwrite check relies on it).
    assert {f.name for f in out.iterdir()} - {".ganfit-result"} == set(r["files"].values()) | {"result.json"}
    mv = r["multi_view"]
    assert mv["count"] == 2
    cov = mv["coverage"]
    assert len(cov["per_view"]) == 2 and all(0 < c <= 1 for c in cov["per_view"])
    assert max(cov["per_view"]) <= cov["merged"] <= 1
    check = mv["identity_check"]
    assert check["suspect"] == [] and all(c > check["threshold"] for c in check["cosine_to_others"])
    assert not any("someone else" in w for w in r["warnings"])
    # The two views differ where they should (pose, expression), not in the shape.
    w0, w1 = (np.array(v["expression"]["weights"]) for v in r["views"])
    assert not np.allclose(w0, w1)


def test_params_hold_one_shape_and_a_pose_per_view(two_photos):
    out, _, p = two_photos
    assert p.returncode == 0, p.stderr[-3000:]
    z = np.load(out / "params.npz")
    assert z["shape"].shape == (100,)
    shapes = {"view_rotation": (2, 3, 3), "view_rotation_axis_angle": (2, 3), "view_translation_cm": (2, 3),
              "view_expression": (2, 53), "view_sh": (2, 9, 3), "view_focal_px": (2,)}
    for k, s in shapes.items():
        assert z[k].shape == s, k
    np.testing.assert_allclose(z["view_rotation"][0], z["rotation"], atol=1e-6)
    np.testing.assert_allclose(z["view_expression"][0], z["expression"], atol=1e-6)
    assert not np.allclose(z["view_translation_cm"][0], z["view_translation_cm"][1])
    r = json.loads((out / "result.json").read_text())
    np.testing.assert_allclose(r["shape"], z["shape"], atol=1e-6)


def test_overwrite_replaces_a_multi_view_result(two_photos, tmp_path):
    out, photos, p = two_photos
    assert p.returncode == 0, p.stderr[-3000:]
    again = tmp_path / "again"
    shutil.copytree(out, again)
    before = json.loads((again / "result.json").read_text())
    # Without --overwrite the folder is kept; with it, the multi-view folder is recognised and replaced.
    p2 = run_engine("fit", str(photos[0]), "-o", str(again), *QUICK)
    assert p2.returncode != 0 and "views" in json.loads((again / "result.json").read_text())
    p3 = run_engine("fit", *map(str, reversed(photos)), "-o", str(again), "--overwrite", *QUICK, "--max-steps", "1")
    assert p3.returncode == 0, p3.stderr[-3000:]
    r = json.loads((again / "result.json").read_text())
    assert [v["photo"] for v in r["views"]] == [str(x) for x in reversed(photos)]
    p3 = run_engine("fit", str(photos[0]), "-o", str(again), "--overwrite", *QUICK)
    assert p3.returncode == 0, p3.stderr[-3000:]
    r = json.loads((again / "result.json").read_text())
    assert "views" not in r and "multi_view" not in r  # a single photo: today's format
    assert not (again / "render-2.png").exists() and not (again / "overlay-2.png").exists()
    assert before["views"][1]["files"]["render"] == "render-2.png"
    z = np.load(again / "params.npz")
    assert not any(k.startswith("view_") for k in z.files)


def test_a_different_person_is_warned_about_not_refused(tmp_path):
    photos = [london(n) for n in OTHERS]
    out = tmp_path / "two-people"
    p = run_engine("fit", *map(str, photos), "-o", str(out), *QUICK, "--max-steps", "1")
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads((out / "result.json").read_text())
    check = r["multi_view"]["identity_check"]
    assert check["suspect"] == [0, 1]  # two photos: each is as far from the other
    assert all(c < check["threshold"] for c in check["cosine_to_others"])
    msgs = [w for w in r["warnings"] if "may show someone else" in w]
    assert len(msgs) == 2 and OTHERS[1] in msgs[1]
    assert "may show someone else" in (out / "engine.log").read_text()


def test_photos_folder(tmp_path):
    src = [london(n) for n in SAME]
    d = tmp_path / "photos"
    d.mkdir()
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not a photo")
    p = run_engine("fit", "--photos", str(empty), "-o", str(tmp_path / "o1"))
    assert p.returncode == 2 and "no image files" in p.stderr
    assert not (tmp_path / "o1").exists()
    p = run_engine("fit", str(src[0]), "--photos", str(d), "-o", str(tmp_path / "o2"))
    assert p.returncode == 2 and "not both" in p.stderr
    p = run_engine("fit", "-o", str(tmp_path / "o3"))
    assert p.returncode == 2 and "give a photo" in p.stderr
    # Sorted by name, only image files: b_... comes second.
    shutil.copy(src[1], d / "b_smiling.jpg")
    shutil.copy(src[0], d / "a_neutral.jpg")
    (d / "readme.txt").write_text("left out")
    out = tmp_path / "o4"
    p = run_engine("fit", "--photos", str(d), "-o", str(out), *QUICK, "--max-steps", "1")
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads((out / "result.json").read_text())
    assert [Path(v["photo"]).name for v in r["views"]] == ["a_neutral.jpg", "b_smiling.jpg"]


def test_one_photo_has_no_views(tmp_path):
    out = tmp_path / "one"
    p = run_engine("fit", str(london(SAME[0])), "-o", str(out), *QUICK, "--max-steps", "1")
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads((out / "result.json").read_text())
    assert "views" not in r and "multi_view" not in r
    assert set(r["files"]) == {"obj", "mtl", "albedo", "blendshapes", "render", "overlay", "params", "log"}


# ------------------------------------------------------------------------------ units (no fit)
def test_merge_takes_each_texel_from_the_photo_that_sees_it():
    import torch

    from engine.fit.stages.albedo import PhotoUnwrap, merge_unwraps
    T = 8
    left = torch.zeros(1, T, T)
    left[..., : T // 2] = 1.0          # photo 1 sees the left half only, photo 2 the right half
    right = left.flip(-1)
    red = torch.zeros(1, T, T, 3)
    red[..., 0] = 1
    blue = torch.zeros(1, T, T, 3)
    blue[..., 2] = 1
    trust = torch.full((1, T, T), 0.8)
    m = merge_unwraps([PhotoUnwrap(red, left, trust), PhotoUnwrap(blue, right, trust)])
    assert torch.allclose(m.delit[0, :, : T // 2], red[0, :, : T // 2])
    assert torch.allclose(m.delit[0, :, T // 2:], blue[0, :, T // 2:])
    assert torch.allclose(m.conf, torch.ones(1, T, T)) and torch.allclose(m.trust, trust)
    # Both see a texel: the weights are confidence x trust, normalised.
    both = merge_unwraps([PhotoUnwrap(red, torch.full((1, T, T), 0.75), trust),
                          PhotoUnwrap(blue, torch.full((1, T, T), 0.25), trust)])
    assert torch.allclose(both.delit[0, 0, 0], torch.tensor([0.75, 0.0, 0.25]))
    one = PhotoUnwrap(red, left, None)
    assert merge_unwraps([one]) is one


def test_merged_coverage_counts_what_any_photo_sees():
    import torch

    from engine import render
    from engine.fit import uvspace
    from engine.fit.stages.albedo import PhotoUnwrap, coverage, seen_share
    from engine.models.facemodel import load_face_model
    dev = torch.device("cpu")
    model = load_face_model(dev)
    uvr = uvspace.uv_raster(render.create_context(dev), model, 128)
    T = uvr.res
    conf_l = torch.zeros(1, T, T)
    conf_l[..., : T // 2] = 0.5
    conf_r = conf_l.flip(-1)
    s_l = seen_share(PhotoUnwrap(torch.zeros(1, T, T, 3), conf_l, None), uvr, model, 3.0)
    s_r = seen_share(PhotoUnwrap(torch.zeros(1, T, T, 3), conf_r, None), uvr, model, 3.0)
    a, b = coverage(s_l, uvr, model), coverage(s_r, uvr, model)
    merged = coverage(torch.stack([s_l, s_r]).amax(0), uvr, model)
    assert 0.2 < a < 0.8 and 0.2 < b < 0.8
    assert merged == pytest.approx(1.0) and merged > max(a, b)
    # Below the threshold nothing counts (0.1 x 3 = 0.3 < 0.5).
    assert coverage(seen_share(PhotoUnwrap(torch.zeros(1, T, T, 3), conf_l / 5, None), uvr, model, 3.0),
                    uvr, model) == 0.0


def test_cosines_to_others_single_out_the_odd_one():
    import torch

    from engine.fit.multiview import cosines_to_others
    e = [torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.96, 0.28, 0.0]), torch.tensor([0.0, 0.0, 1.0])]
    c = cosines_to_others(e)
    assert c[2] == pytest.approx(0.0, abs=1e-6)
    assert c[0] > 0.6 and c[1] > 0.6
    assert cosines_to_others(e[:2]) == pytest.approx([0.96, 0.96], abs=1e-6)


def test_merge_leaves_an_occluded_part_to_the_other_photo():
    import torch

    from engine.fit.stages.albedo import PhotoUnwrap, merge_unwraps
    T = 4
    conf, trust = torch.full((1, T, T), 0.9), torch.full((1, T, T), 0.7)
    red, blue = torch.zeros(1, T, T, 3), torch.zeros(1, T, T, 3)
    red[..., 0], blue[..., 2] = 1, 1
    hand = torch.ones(1, T, T)
    hand[0, 0, 0] = 0.0                       # photo 1 has an occluder on texel (0, 0)
    m = merge_unwraps([PhotoUnwrap(red, conf, trust, hand), PhotoUnwrap(blue, conf, trust, torch.ones(1, T, T))])
    assert torch.allclose(m.delit[0, 0, 0], torch.tensor([0.0, 0.0, 1.0]))
    assert torch.allclose(m.delit[0, 1, 1], torch.tensor([0.5, 0.0, 0.5]))
    # The occluder weight decides between the photos only: confidence and trust keep their meaning.
    assert torch.allclose(m.conf, conf) and torch.allclose(m.trust, trust)
    # Occluded in every photo: weighed as if there were no occluder weight.
    both = merge_unwraps([PhotoUnwrap(red, conf, trust, hand), PhotoUnwrap(blue, conf, trust, hand)])
    assert torch.allclose(both.delit[0, 0, 0], torch.tensor([0.5, 0.0, 0.5]))
