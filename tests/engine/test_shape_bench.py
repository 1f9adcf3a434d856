"""The shape benchmark's scoring (benchmarks/shape.py): similarity alignment, re-identification and
AUC, checked against brute force; and its crops, on a synthetic photo."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "shape.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("benchmarks_shape", PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_procrustes_ignores_similarity_but_not_shape(bench):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 3))
    Q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    Q *= np.sign(np.linalg.det(Q))
    assert bench.procrustes_distance(a, 1.7 * a @ Q + [3, -1, 2]) < 1e-9
    b = a + rng.normal(scale=0.05, size=a.shape)
    d = bench.procrustes_distance(a, b)
    assert 0.02 < d < bench.procrustes_distance(a, a + rng.normal(scale=0.2, size=a.shape))
    # A mirror image is a different shape, not a rotation of it.
    assert bench.procrustes_distance(a, a * [-1, 1, 1]) > 0.1


def test_auc_and_reid_match_brute_force(bench):
    rng = np.random.default_rng(1)
    g = np.round(rng.normal(1.0, 0.5, 30), 1)   # rounded: ties between the two groups
    i = np.round(rng.normal(2.0, 0.7, 300), 1)
    brute = np.mean([(x < y) + 0.5 * (x == y) for x in g for y in i])
    assert bench.auc(g, i) == pytest.approx(brute, abs=1e-12)
    assert bench.auc(np.zeros(3), np.ones(5)) == 1.0 and bench.auc(np.ones(3), np.zeros(5)) == 0.0
    D = rng.uniform(1, 2, (6, 6))
    np.fill_diagonal(D, 0.5)
    D[2, 2] = 3.0                              # person 2's pair is far in both directions
    s = bench.scores(D)
    assert s["reid"] == pytest.approx(5 / 6, abs=1e-4) and s["auc"] < 1.0


def test_framings_crop_around_the_face(bench, tmp_path):
    photo = tmp_path / "p.png"
    Image.new("RGB", (1000, 800), (90, 90, 90)).save(photo)
    box = [400.0, 300.0, 600.0, 500.0]       # a 200 px face in the middle
    out = dict(bench.make_variants(photo, box, tmp_path / "img"))
    sizes = {k: Image.open(v).size for k, v in out.items()}
    assert sizes["tight1.5"] == (300, 300) and sizes["mid2.2"] == (440, 440)
    assert sizes["off2.2"] == (440, 440) and sizes["full_2of3"] == (667, 533)
    assert len(set(out.values())) == len(bench.FRAMINGS)


def test_off_centre_crop_mirrors_and_same_images_are_left_out(bench, tmp_path):
    # A tightly framed portrait: a 2.2x crop reaches past the photo on every side.
    photo = tmp_path / "tight.png"
    Image.new("RGB", (400, 400), (90, 90, 90)).save(photo)
    out = dict(bench.make_variants(photo, [100.0, 100.0, 300.0, 300.0], tmp_path / "img"))
    assert out["mid2.2"] is None and out["off2.2"] is None    # both clip back to the whole photo
    assert out["tight1.5"] is not None and out["full_2of3"] is not None
    # Room on the left and above only: the offset is mirrored (the face right of and below the
    # crop's centre), not clipped back to the centred crop.
    W, H, box = 1000, 800, [700.0, 500.0, 900.0, 700.0]
    l, t, r, b = bench.crop_box(W, H, box, 2.2, (0.35, 0.25))
    assert (r - l, b - t) == (440, 440)
    assert (l + r) / 2 < 800 and (t + b) / 2 < 600
    assert bench.crop_box(W, H, box, 2.2, (0.35, 0.25)) != bench.crop_box(W, H, box, 2.2, (0.0, 0.0))


def test_noise_variant_is_the_photo_plus_one_grey_level(bench, tmp_path):
    photo = tmp_path / "p.png"
    Image.new("RGB", (200, 160), (90, 120, 200)).save(photo)
    box = [60.0, 40.0, 140.0, 120.0]
    out = dict(bench.make_variants(photo, box, tmp_path / "a", noise=True))
    x = np.asarray(Image.open(out[bench.NOISE]), dtype=np.int16)
    d = x - np.array([90, 120, 200])
    assert 0.8 < d.std() < 1.2 and np.abs(d).max() <= 6      # about 1 grey level, no more
    # Seeded by the photo's name: made again elsewhere, the same image.
    again = dict(bench.make_variants(photo, box, tmp_path / "b", noise=True))
    assert np.array_equal(np.asarray(Image.open(again[bench.NOISE])), x.astype(np.uint8))
    assert bench.NOISE not in dict(bench.make_variants(photo, box, tmp_path / "c"))
