"""`python -m engine texture dataset`: the skin model (synthetic and on a real photo with glasses)
and a real, small build of shared photos (files, manifest, shapes, weights, resume, failures)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from engine.texture import skin
from tests.shared_data import REPO, shared_path

HOPPER = shared_path("photos", "usnavy_grace_hopper.jpg")
CANADA = shared_path("faces", "london-canada", "canada_003f.jpg")
CONGRESS = shared_path("faces", "congress-pd", "A000014.jpg")


# ------------------------------------------------------------------------------ skin model
def test_skin_model_rejects_outliers_synthetic():
    rng = np.random.default_rng(0)
    skin_rgb = np.clip(np.array([0.78, 0.56, 0.45]) + rng.normal(0, 0.02, (2000, 3)), 0, 1)
    # 30% contamination: dark frames and brown hair inside the sampling regions.
    frames = np.clip(np.array([0.08, 0.07, 0.07]) + rng.normal(0, 0.02, (500, 3)), 0, 1)
    hair = np.clip(np.array([0.35, 0.24, 0.12]) + rng.normal(0, 0.02, (350, 3)), 0, 1)
    m = skin.fit_skin(np.concatenate([skin_rgb, frames, hair]))
    assert m.inliers <= 2000 * 1.02 and m.inliers >= 1700
    assert np.allclose(m.mean, skin.to_ycc(np.array([0.78, 0.56, 0.45])), atol=0.01)
    assert np.median(m.probability(skin_rgb)) > 0.95
    assert m.probability(frames).max() < 0.05
    assert np.median(m.probability(hair)) < 0.05
    # Blue, grey and white (background, collar) are not skin.
    assert m.probability(np.array([[0.3, 0.5, 0.9], [0.5, 0.5, 0.5], [0.95, 0.95, 0.95]])).max() < 0.05
    with pytest.raises(ValueError, match="too few"):
        skin.fit_skin(skin_rgb[:5])


def test_skin_regions_follow_the_landmarks():
    # A synthetic, upright 68-point layout: cheeks below the eyes, the forehead above the brows.
    lm = np.zeros((68, 2))
    lm[0:17] = np.stack([np.linspace(20, 180, 17), 100 + 80 * np.sin(np.linspace(0, np.pi, 17))], 1)
    lm[17:22] = np.stack([np.linspace(40, 90, 5), np.full(5, 70)], 1)
    lm[22:27] = np.stack([np.linspace(110, 160, 5), np.full(5, 70)], 1)
    lm[27:31] = np.stack([np.full(4, 100), np.linspace(80, 125, 4)], 1)
    lm[31:36] = np.stack([np.linspace(85, 115, 5), np.full(5, 130)], 1)
    lm[36:42] = np.stack([np.linspace(50, 80, 6), np.full(6, 90)], 1)
    lm[42:48] = np.stack([np.linspace(120, 150, 6), np.full(6, 90)], 1)
    lm[48:68] = np.stack([np.linspace(75, 125, 20), np.full(20, 155)], 1)
    lm[48], lm[54] = (75, 155), (125, 155)
    m = skin.region_mask(lm, 240, 200)
    ys, xs = np.nonzero(m)
    assert m.sum() > 500
    assert not m[85:95, 50:80].any() and not m[85:95, 120:150].any()  # not on the eyes
    assert not m[150:160, 75:125].any()                                # not on the mouth
    assert (ys < 65).any() and (ys > 95).any()                         # forehead and cheeks
    assert m[:, :100].sum() > 0 and m[:, 100:].sum() > 0


@pytest.mark.needs_shared("photos", "usnavy_grace_hopper.jpg")
def test_skin_model_on_a_photo_with_glasses():
    from engine.fit.stages.detect import detect
    from engine.io.image import load_photo
    photo = load_photo(HOPPER)
    face = detect(photo, "mediapipe", "cpu", 0, HOPPER)
    prob = skin.fit_photo(photo, face.det68).probability(photo / 255.0)
    lm = face.det68
    iod = np.linalg.norm(lm[36:42].mean(0) - lm[42:48].mean(0))

    def at(p):
        x, y = np.round(p).astype(int)
        return float(prob[y - 2:y + 3, x - 2:x + 3].mean())

    # The dark upper rims of her glasses sit just above the brows' middle; her cheeks are skin.
    cheeks = [at((lm[2] + lm[31] + lm[41]) / 3), at((lm[14] + lm[35] + lm[46]) / 3)]
    assert min(cheeks) > 0.7, cheeks
    # Frame pixels: the darkest pixels of the band around each eye (where the rims run).
    for eye in (lm[36:42], lm[42:48]):
        c = eye.mean(0)
        x0, x1 = int(c[0] - 0.45 * iod), int(c[0] + 0.45 * iod)
        y0, y1 = int(c[1] - 0.45 * iod), int(c[1] + 0.4 * iod)
        band = photo[y0:y1, x0:x1].astype(float).mean(-1)
        dark = band < np.percentile(band, 5)
        assert prob[y0:y1, x0:x1][dark].mean() < 0.2
    # The hat, the white collar and the blue background are not skin.
    top = lm[19] - 1.0 * iod * np.array([0, 1])
    assert at(top) < 0.2
    assert prob[:60, -60:].mean() < 0.05


# ------------------------------------------------------------------------------ the builder
def _run(*args, timeout=240):
    return subprocess.run([sys.executable, "-m", "engine", "texture", "dataset", *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.mark.needs_shared("faces", "london-canada", "canada_003f.jpg")
@pytest.mark.needs_shared("faces", "congress-pd", "A000014.jpg")
def test_build_small_dataset(tmp_path):
    bad = tmp_path / "noface.png"
    from PIL import Image
    Image.fromarray((np.random.default_rng(0).random((160, 160, 3)) * 255).astype(np.uint8)).save(bad)
    out = tmp_path / "data"
    common = ["-o", out, "--preset", "fast", "--max-steps", "5", "--no-progress"]
    r = _run(CANADA, bad, CONGRESS, *common)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "FAILED" in r.stderr and "No face" in r.stderr
    assert "2 ok, 1 failed" in r.stdout

    meta = json.loads((out / "data.json").read_text())
    assert meta["format"] == "ganfit-texture-dataset" and meta["version"] == 1 and meta["res"] == 256
    assert meta["colour"] == "linear" and meta["row0"] == "top"
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert [x["status"] for x in lines] == ["ok", "failed", "ok"]
    ok = {x["id"]: x for x in lines if x["status"] == "ok"}
    can, con = ok["london-canada/canada_003f"], ok["congress-pd/A000014"]
    assert can["person"] == "canada_003" and can["licence"] == "CC BY 4.0"
    assert "DeBruine" in can["attribution"]
    assert con["person"] == "A000014" and con["attribution"] is None
    assert con["licence"].startswith("public domain") and con["flags"]["pd_strict"] is True
    failed = lines[1]
    assert failed["id"] == f"{tmp_path.name}/noface" and "No face" in failed["error"]
    for x in ok.values():
        assert len(x["sha256"]) == 64 and x["shard"] == "shard-00000.npz"
        assert 0 <= x["metrics"]["landmark_error_iod"] < 0.1
        assert 0.1 < x["coverage"] < 0.8

    z = np.load(out / "shard-00000.npz")
    A, Wt = z["albedo"], z["weight"]
    assert A.shape == (2, 256, 256, 3) and A.dtype == np.float16
    assert Wt.shape == (2, 256, 256) and Wt.dtype == np.float16
    assert list(z["ids"]) == ["london-canada/canada_003f", "congress-pd/A000014"]
    assert [can["index"], con["index"]] == [0, 1]
    assert A.min() >= 0 and A.max() <= 1 and Wt.min() >= 0 and Wt.max() <= 1
    w = Wt[0].astype(np.float32)
    # Texels outside every UV island (the atlas' background) have no weight, and neither do the
    # eyes (the sclera/iris and socket regions): the atlas is in image layout (row 0 = top).
    from engine.models.facemodel import load_face_model
    from engine import render
    from engine.fit import uvspace
    m = load_face_model("cpu")
    uvr = uvspace.uv_raster(render.create_context("cpu"), m, 256)
    region = uvr.region.flip(0).numpy()
    names = m.region_names
    assert w[region < 0].max() == 0
    eyes = np.isin(region, [i for i, n in enumerate(names) if n.startswith(("sclera", "iris", "eye_socket"))])
    assert eyes.any() and w[eyes].max() == 0
    # The face box (image layout: rows 256 - r1 .. 256 - r0): its middle is well seen and skin.
    r0, r1, c0, c1 = uvspace.face_box_pixels(m, 256)
    for k in range(2):
        box = Wt[k].astype(np.float32)[256 - r1:256 - r0, c0:c1]
        h, wd = box.shape
        assert box[h // 3:2 * h // 3, wd // 3:2 * wd // 3].mean() > 0.45
        # Row 0 = top: the forehead is the top quarter of the box and is seen.
        assert box[:h // 4, wd // 3:2 * wd // 3].mean() > 0.45
    # The mirror: weights are symmetric in the face box (max of a texel and its mirror).
    box = Wt[0].astype(np.float32)[256 - r1:256 - r0, c0:c1]
    assert np.allclose(box, box[:, ::-1], atol=1e-3)

    # Resume: nothing to do, nothing rewritten; the contact sheet shows both samples.
    before = (out / "manifest.jsonl").read_bytes()
    sheet = tmp_path / "sheet.png"
    r = _run(CANADA, bad, CONGRESS, *common, "--sheet", sheet)
    assert r.returncode == 0 and "0 to do" in r.stderr and "0 ok, 0 failed, 3 already done" in r.stdout
    assert (out / "manifest.jsonl").read_bytes() == before
    img = np.asarray(Image.open(sheet))
    assert img.shape == (192, 4 * 2 * 192, 3)
    assert img[:, :2 * 192 * 2].mean() > 20 and img[:, 2 * 192 * 2:].max() == 0  # 2 samples, 2 empty
    # --retry-failed redoes (and again reports) only the failed photo, in a new shard if any.
    r = _run(CANADA, bad, CONGRESS, *common, "--retry-failed")
    assert "1 to do" in r.stderr and "0 ok, 1 failed" in r.stdout
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 4
    assert not (out / "shard-00001.npz").exists()


def test_partial_manifest_line_is_redone(tmp_path):
    from engine.texture.dataset import append_line, read_manifest
    f = tmp_path / "manifest.jsonl"
    append_line(f, {"id": "a/x", "status": "ok"})
    with open(f, "a") as fh:
        fh.write('{"id": "a/y", "sta')
    done = read_manifest(f)
    assert list(done) == ["a/x"]
    assert f.read_text().endswith("}\n")
    append_line(f, {"id": "a/y", "status": "ok"})
    assert list(read_manifest(f)) == ["a/x", "a/y"]


def test_bad_output_and_inputs(tmp_path):
    (tmp_path / "stuff.txt").write_text("x")
    r = _run(tmp_path / "nope.jpg", "-o", tmp_path / "d")
    assert r.returncode != 0 and "No such photo or folder" in r.stderr
    r = _run(tmp_path / "stuff.txt", "-o", tmp_path)
    assert r.returncode != 0 and "not empty" in r.stderr
    r = _run(tmp_path / "stuff.txt", "-o", REPO / "texdata")
    assert r.returncode != 0 and "inside the repository" in r.stderr
    assert not (REPO / "texdata").exists()


@pytest.mark.needs_shared("faces", "london-canada")
def test_sigterm_stops_cleanly_and_resumes(tmp_path):
    import signal
    import time
    folder = shared_path("faces", "london-canada")
    photos = [folder / f"canada_{n}.jpg" for n in ("003f", "008f", "010f", "019f", "020f")]
    out = tmp_path / "data"
    args = [sys.executable, "-m", "engine", "texture", "dataset", *map(str, photos), "-o", str(out),
            "--preset", "fast", "--max-steps", "3", "--no-progress", "--recognizer", "none"]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    manifest = out / "manifest.jsonl"
    t0 = time.time()
    while time.time() - t0 < 120 and proc.poll() is None:
        if manifest.exists() and manifest.read_text().count("\n") >= 1:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert "stopped early" in stdout
    lines = [json.loads(x) for x in manifest.read_text().splitlines()]  # every line complete
    assert 1 <= len(lines) < len(photos)
    z = np.load(out / lines[-1]["shard"])
    assert list(z["ids"]) == [x["id"] for x in lines]
    assert not list(out.glob("*.tmp"))
    r = _run(*photos, "-o", out, "--preset", "fast", "--max-steps", "3", "--no-progress", "--recognizer", "none")
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [json.loads(x) for x in manifest.read_text().splitlines()]
    assert sorted(x["id"] for x in lines) == sorted(f"london-canada/{p.stem}" for p in photos)
    assert all(x["status"] == "ok" for x in lines)
    # The resumed photos went to a new shard; the first one was left as it was.
    assert {x["shard"] for x in lines} == {"shard-00000.npz", "shard-00001.npz"}


@pytest.mark.parametrize("flag,value,says", [("--limit", "-1", "at least 0"), ("--threads", "0", "at least 1"),
                                             ("--seed", "x", "whole number"), ("--max-steps", "0", "at least 1")])
def test_numeric_flags_are_checked(tmp_path, flag, value, says):
    (tmp_path / "p.jpg").write_bytes(b"")
    r = _run(tmp_path / "p.jpg", "-o", tmp_path / "d", flag, value)
    assert r.returncode == 2 and flag in r.stderr and says in r.stderr
    assert not (tmp_path / "d").exists()


@pytest.mark.needs_shared("faces", "congress-pd")
def test_setup_failure_leaves_no_folder(tmp_path):
    """The builder's setup fails before any photo (no CUDA here): the folders it made are gone,
    a folder that was there before stays."""
    import torch
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    r = _run(CONGRESS, "-o", tmp_path / "new" / "deeper" / "d", "--device", "cuda")
    assert r.returncode != 0 and "CUDA" in r.stderr
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "kept").mkdir()
    r = _run(CONGRESS, "-o", tmp_path / "kept", "--device", "cuda")
    assert r.returncode != 0 and (tmp_path / "kept").is_dir() and list((tmp_path / "kept").iterdir()) == []


@pytest.mark.needs_shared("faces", "congress-pd")
def test_strict_licence_leaves_out_older_congress_portraits(tmp_path):
    """A000121 and A000212 left before the 110th Congress (metadata.csv), A000014 after."""
    from engine.texture.dataset import collect
    folder = CONGRESS.parent
    flags = {s.id: s.flags for s in collect([str(folder / n) for n in ("A000121.jpg", "A000212.jpg", "A000014.jpg")])}
    assert [f["pd_strict"] for f in flags.values()] == [False, False, True]
    r = _run(folder / "A000121.jpg", folder / "A000212.jpg", folder / "A000014.jpg", "-o", tmp_path / "d",
             "--strict-licence", "--limit", "0")
    assert r.returncode == 0, r.stderr
    assert "2 photos outside their source's stricter licence subset left out" in r.stderr
    assert "1 photos: 0 already done, 0 to do" in r.stderr
