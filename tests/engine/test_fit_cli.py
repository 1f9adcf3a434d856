"""The whole ``python -m engine fit`` command: outputs, schema, protocol, exit codes, cancel."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.protocol import decode
from shared_data import require_shared

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("GANFIT_SHARED", REPO.parent / "shared"))
PHOTO = SHARED / "photos" / "codait_luciano.png"

needs_photo = pytest.mark.needs_shared("photos", PHOTO.name)  # skipped if missing; fails under CI
pytestmark = pytest.mark.needs_torch  # every test here runs `python -m engine`


def engine_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "engine", *args]


def run_engine(*args: str, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(engine_cmd(*args), capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env=env, **kw)


def messages(stdout: str) -> list[dict]:
    out = []
    for line in stdout.splitlines():
        msg = decode(line)  # every line must parse: nothing else may be printed on stdout
        assert msg is not None and msg["v"] == 1
        out.append(msg)
    return out


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    require_shared("photos", PHOTO.name)
    out = tmp_path_factory.mktemp("fit") / "résultat ü"  # unicode output path
    p = run_engine("fit", str(PHOTO), "-o", str(out), "--preset", "fast", "--max-steps", "3",
                   "--json-progress", "--report", "--texture-res", "256")
    return out, p


def test_fit_writes_the_documented_result_folder(fitted):
    out, p = fitted
    assert p.returncode == 0, p.stderr[-3000:]
    for name in ("face.obj", "face.mtl", "albedo.png", "blendshapes.npz", "render.png", "overlay.png",
                 "params.npz", "result.json", "engine.log", "report.png"):
        assert (out / name).is_file(), name
    assert not [x for x in out.parent.iterdir() if x.name.startswith(".")]  # no temp folder left
    r = json.loads((out / "result.json").read_text())
    assert r["schema"] == 1
    W, H = Image.open(PHOTO).size
    assert r["image"] == {"width": W, "height": H}
    assert r["camera"]["width"] == W and np.array(r["camera"]["world_to_camera"]).shape == (4, 4)
    assert len(r["expression"]["names"]) == 53 and len(r["expression"]["weights"]) == 53
    assert len(r["landmarks"]["detected68"]) == 68 and len(r["landmarks"]["projected68"]) == 68
    for key in ("coarse", "unwrap", "fine", "albedo", "write", "total"):
        assert r["timings"][key] >= 0
    assert r["peak_rss_mb"] > 0
    assert 0 <= r["metrics"]["landmark_error_iod"] < 0.2
    render = Image.open(out / "render.png")
    assert render.mode == "RGBA" and render.size == (W, H)
    alpha = np.asarray(render)[..., 3]
    assert 0.05 < (alpha > 127).mean() < 0.8
    assert Image.open(out / "albedo.png").size == (256, 256)
    bs = np.load(out / "blendshapes.npz")
    assert bs["deltas"].shape[0] == 53 and bs["neutral"].shape == bs["deltas"].shape[1:]
    params = np.load(out / "params.npz")
    assert params["shape"].shape == (100,) and list(params["expression_names"]) == r["expression"]["names"]


def test_obj_matches_blendshapes(fitted):
    out, p = fitted
    assert p.returncode == 0
    verts = [list(map(float, l.split()[1:4])) for l in (out / "face.obj").read_text().splitlines()
             if l.startswith("v ")]
    bs = np.load(out / "blendshapes.npz")
    rebuilt = bs["neutral"] + np.tensordot(bs["weights"], bs["deltas"].astype(np.float32), 1)
    assert np.abs(np.array(verts) - rebuilt).max() < 1e-4  # metres
    assert "map_Kd albedo.png" in (out / "face.mtl").read_text()


def test_progress_stream_parses_line_by_line(fitted):
    out, p = fitted
    msgs = messages(p.stdout)
    types = [m["type"] for m in msgs]
    assert types[0] == "hello" and msgs[0]["backend"] in ("cpu", "nvdiffrast")
    assert types[-1] == "result" and types.count("result") == 1 and "error" not in types
    assert msgs[-1]["dir"] == str(out)
    stages = [m["name"] for m in msgs if m["type"] == "stage"]
    assert stages == ["load", "detect", "coarse", "unwrap", "fine", "albedo", "write"]
    prog = [m for m in msgs if m["type"] == "progress"]
    assert prog and all(0 <= m["fraction"] <= 1 for m in prog)
    assert any("landmark" in m["losses"] for m in prog)
    assert all(m2["fraction"] >= m1["fraction"] for m1, m2 in zip(prog, prog[1:]))


def _bad(tmp_path: Path, photo: Path, code: int, err: str, *extra: str) -> None:
    out = tmp_path / "out"
    p = run_engine("fit", str(photo), "-o", str(out), "--json-progress", "--preset", "fast",
                   "--max-steps", "1", *extra)
    assert p.returncode == code, p.stderr[-2000:]
    msgs = messages(p.stdout)
    assert msgs[-1]["type"] == "error" and msgs[-1]["code"] == err and msgs[-1]["exit_code"] == code
    assert msgs[-1]["msg"]
    assert not out.exists()
    assert [x.name for x in tmp_path.iterdir() if x.name.startswith(".")] == []


def test_not_an_image(tmp_path):
    f = tmp_path / "photo.jpg"
    f.write_text("hello, I am text")
    _bad(tmp_path, f, 3, "bad_input")


def test_empty_file_and_directory_and_missing(tmp_path):
    f = tmp_path / "empty.png"
    f.write_bytes(b"")
    _bad(tmp_path, f, 3, "bad_input")
    d = tmp_path / "adir.jpg"
    d.mkdir()
    _bad(tmp_path, d, 3, "bad_input")
    _bad(tmp_path, tmp_path / "missing.jpg", 3, "bad_input")


@needs_photo
def test_truncated_jpeg(tmp_path):
    data = (SHARED / "photos" / "usnavy_grace_hopper.jpg").read_bytes()
    f = tmp_path / "cut.jpg"
    f.write_bytes(data[: len(data) // 3])
    _bad(tmp_path, f, 3, "bad_input")


def test_no_face(tmp_path):
    f = tmp_path / "grey.png"
    Image.new("RGB", (320, 240), (128, 128, 128)).save(f)
    _bad(tmp_path, f, 4, "no_face")


@needs_photo
def test_face_index_out_of_range(tmp_path):
    _bad(tmp_path, PHOTO, 4, "no_face", "--face-index", "3")


@needs_photo
def test_output_not_writable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a file where a folder is needed (root ignores permission bits)
    out = blocker / "out"
    p = run_engine("fit", str(PHOTO), "-o", str(out), "--json-progress", "--max-steps", "1")
    assert p.returncode == 6
    assert messages(p.stdout)[-1]["code"] == "output"


@needs_photo
def test_existing_result_is_kept_without_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("earlier result")
    p = run_engine("fit", str(PHOTO), "-o", str(out), "--json-progress", "--max-steps", "1")
    assert p.returncode == 6 and "--overwrite" in messages(p.stdout)[-1]["msg"]
    assert (out / "keep.txt").read_text() == "earlier result"


@needs_photo
@pytest.mark.parametrize("how", ["stdin", "sigterm"])
def test_cancel_is_prompt_and_leaves_nothing(tmp_path, how):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(engine_cmd("fit", str(PHOTO), "-o", str(out), "--json-progress", "--preset",
                                       "balanced", "--recognizer", "none"),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, cwd=REPO, env=env)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            msg = decode(line)
            # the first optimisation step of the fine stage (step 0 only marks its start)
            if msg and msg["type"] == "progress" and msg["stage"] == "fine" and msg["step"] >= 1:
                break
        t0 = time.perf_counter()
        if how == "stdin":
            proc.stdin.write('{"type": "cancel"}\n')
            proc.stdin.flush()
        else:
            proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=30)
        elapsed = time.perf_counter() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    msgs = messages("".join(lines) + rest)
    assert msgs[-1]["type"] == "error" and msgs[-1]["code"] == "cancelled"
    # Behaviour, not wall-clock (the time is printed): the fit stopped in the fine stage, well
    # before its last step, instead of running to the end.
    print(f"cancel by {how}: exit after {elapsed:.2f} s")
    fine = [m for m in msgs if m["type"] == "progress" and m["stage"] == "fine"]
    assert fine and max(m["step"] for m in fine) < max(m["total"] for m in fine) // 2
    assert not [m for m in msgs if m["type"] == "result"
                or (m["type"] == "stage" and m["name"] == "albedo")]
    assert not out.exists() and not [x for x in tmp_path.iterdir() if x.name.startswith(".")]


def test_help_reads_well():
    p = run_engine("--help")
    assert p.returncode == 0 and "fit" in p.stdout and "Exit codes" in p.stdout
    p = run_engine("fit", "--help")
    assert p.returncode == 0 and "--preset" in p.stdout and "--json-progress" in p.stdout
    p = run_engine("fit")
    assert p.returncode == 2


def test_check_json():
    p = run_engine("check", "--json")
    info = json.loads(p.stdout)
    assert info["torch"] and info["backends"]["cpu"] is True and info["models"]["face_model"] is True


@needs_photo
def test_detect_json():
    p = run_engine("detect", str(PHOTO), "--json")
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads(p.stdout)
    assert len(r["faces"]) == 1 and len(r["faces"][0]["landmarks68"]) == 68


def test_render_model(tmp_path):
    out = tmp_path / "model.png"
    p = run_engine("render-model", "-o", str(out), "--size", "96")
    assert p.returncode == 0, p.stderr[-2000:]
    img = np.asarray(Image.open(out))
    assert img.shape == (192, 384, 3)
    assert img.std() > 10  # not blank


@needs_photo
def test_fit_with_a_generator_texture_model(tmp_path):
    """GANFit proper: the texture is a generator's output and p_t its latent."""
    import torch

    from engine.fit.texture import save_generator

    class Generator(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(8, 3 * 8 * 8)

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            x = self.fc(z).view(-1, 3, 8, 8)
            return torch.tanh(torch.nn.functional.interpolate(x, size=(64, 64), mode="bilinear",
                                                              align_corners=False))

    torch.manual_seed(0)
    gen = tmp_path / "gen.pt"
    save_generator(Generator(), gen, latent_dim=8)
    out = tmp_path / "out"
    p = run_engine("fit", str(PHOTO), "-o", str(out), "--preset", "fast", "--max-steps", "3",
                   "--texture-model", str(gen), "--texture-res", "256")
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads((out / "result.json").read_text())
    assert r["models"]["texture"] == "generator"
    params = np.load(out / "params.npz")
    assert params["texture_latent"].shape == (1, 8)
    p = run_engine("fit", str(PHOTO), "-o", str(tmp_path / "out2"), "--texture-model",
                   str(tmp_path / "missing.pt"), "--json-progress")
    assert p.returncode == 5 and messages(p.stdout)[-1]["code"] == "missing_model"
