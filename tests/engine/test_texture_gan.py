"""texture train --model gan (and vae): the masked discriminator input, training on the CPU in one
process and as two under torchrun, resuming, the exported checkpoint, and a fit with it.

The trainers run in subprocesses, as a user runs them (and because torch.optim, which they use,
must not be imported into the 3.13 suite's process with bpy loaded)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import texture_synth as S  # noqa: E402

from engine.fit.texture import GeneratorTexture, load_generator  # noqa: E402
from engine.texture import nets as N  # noqa: E402
from engine.texture.gan import _masked_input  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "engine" / "data" / "demo" / "grace_hopper.jpg"
RES = 32
# A tiny network: a few steps take seconds on a CPU.
TINY = ["--res", str(RES), "--components", "8", "--channel-base", "256", "--channel-max", "16",
        "--w-dim", "16", "--mapping-layers", "2", "--batch", "4", "--no-progress"]
HAS_TORCHMETRICS = importlib.util.find_spec("torchmetrics") is not None


def _engine(*args, timeout=600, prefix=()):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *prefix, "-m", "engine", *map(str, args)], capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    return S.write_dataset(tmp_path_factory.mktemp("gan") / "data", n=40, res=RES, rank=3, seed=1)


@pytest.fixture(scope="module")
def gan_run(synth, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("ganrun") / "gan.pt"
    kid = ["--kid-every", "2", "--kid-samples", "8"] if HAS_TORCHMETRICS else ["--kid-every", "0"]
    p = _engine("texture", "train", synth, "--model", "gan", "-o", out, *TINY, "--steps", "4",
                "--sample-every", "2", "--ckpt-every", "2", *kid)
    assert p.returncode == 0, p.stderr[-3000:]
    return out, p


def test_discriminator_never_sees_what_the_real_sample_did_not():
    """The fake goes through the real sample's mask: changing the fake where the mask is 0 changes
    neither D's input nor its output, and the G loss has no gradient there."""
    torch.manual_seed(0)
    d = N.ResidualDiscriminator(16, 4, channel_base=128, channel_max=16)
    w = torch.zeros(2, 16, 16)
    w[:, 4:12, 2:9] = 1.0
    w[1, 0, 0] = 0.5
    fake = (torch.rand(2, 3, 16, 16) * 2 - 1).requires_grad_(True)
    other = fake.detach().clone()
    other[:, :, w[0] == 0] = 5.0  # anything at all where neither sample is seen
    inp = _masked_input(fake, w)
    assert inp.shape == (2, 4, 16, 16) and torch.equal(inp[:, 3], w)
    assert torch.equal(_masked_input(other, w)[0], inp[0].detach())
    loss = torch.nn.functional.softplus(-d(inp)).mean()
    loss.backward()
    g = fake.grad.abs().sum(1)
    assert float(g[w == 0].max()) == 0.0 and float(g[w > 0].max()) > 0.0


def test_generator_shapes_and_export_is_deterministic():
    g = N.StyleGenerator(8, RES, w_dim=16, mapping_layers=2, channel_base=256, channel_max=16)
    z = torch.randn(3, 8)
    img, w = g(z)
    assert img.shape == (3, 3, RES, RES) and w.shape == (3, 16)
    assert float(g.mapping.w_avg.abs().sum()) > 0  # training moves the truncation centre
    # Training: fresh noise each call; exported: fixed noise, one image per latent.
    with torch.no_grad():
        for m in g.modules():
            if isinstance(m, N.StyledLayer):
                m.noise_strength.fill_(0.1)  # (0 at initialisation, as in StyleGAN2)
    assert not torch.equal(g(z)[0], g(z)[0])
    ex = torch.jit.script(N.ExportedGenerator(g.eval(), psi=0.7))
    a, b = ex(z), ex(z)
    assert torch.equal(a, b) and float(a.abs().max()) <= 1.0
    with pytest.raises(ValueError, match="power of two"):
        N.StyleGenerator(8, 48)


def test_gan_trains_on_cpu_and_writes_its_run_folder(gan_run):
    out, p = gan_run
    run = out.with_name("gan.run")
    assert (run / "state.pt").is_file() and not list(run.glob("*.tmp"))
    samples = sorted(x.name for x in (run / "samples").iterdir())
    assert samples == ["step-000002.png", "step-000004.png"]
    from PIL import Image
    im = np.asarray(Image.open(run / "samples" / samples[-1]))
    assert im.ndim == 3 and im.std() > 1  # an image, not a blank
    lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == 4 and np.isfinite(lines[-1]["d"]) and np.isfinite(lines[-1]["g"])
    state = torch.load(run / "state.pt", weights_only=True)
    assert state["step"] == 4 and state["cur_nimg"] == 16
    assert {"G", "D", "G_ema", "opt_G", "opt_D", "rng"} <= set(state)
    if HAS_TORCHMETRICS:
        kids = [x["kid"] for x in lines if "kid" in x]
        assert len(kids) == 2 and all(np.isfinite(kids)) and "KID" in p.stderr


def test_exported_gan_loads_and_is_the_ema_generator(gan_run):
    out, _ = gan_run
    module, meta = load_generator(out)
    assert meta["model"] == "gan" and meta["latent_dim"] == 8 and meta["output_range"] == "-1,1"
    assert meta["heldout_persons"] and meta["world_size"] == 1 and meta["steps"] == 4
    z = torch.randn(2, 8)
    img = module(z)
    assert img.shape == (2, 3, RES, RES) and torch.equal(img, module(z))
    state = torch.load(out.with_name("gan.run") / "state.pt", weights_only=True)
    g = N.StyleGenerator(8, RES, w_dim=16, mapping_layers=2, channel_base=256, channel_max=16)
    g.load_state_dict(state["G_ema"])
    assert torch.allclose(N.ExportedGenerator(g.eval())(z), img, atol=1e-5)
    tex = GeneratorTexture(module, meta, resolution=64)
    alb = tex()
    assert alb.shape == (1, 64, 64, 3) and 0 <= float(alb.min()) and float(alb.max()) <= 1


def test_gan_resume_continues_the_step_count(synth, gan_run, tmp_path):
    out, _ = gan_run
    run = out.with_name("gan.run")
    copy_run = tmp_path / "gan.run"
    copy_run.mkdir()
    for f in ("state.pt", "log.jsonl"):
        (copy_run / f).write_bytes((run / f).read_bytes())
    target = tmp_path / "gan.pt"
    # Without --resume, an existing state is refused and nothing is written.
    p = _engine("texture", "train", synth, "--model", "gan", "-o", target, *TINY, "--steps", "6",
                "--kid-every", "0")
    assert p.returncode != 0 and "--resume" in p.stderr and not target.exists()
    p = _engine("texture", "train", synth, "--model", "gan", "-o", target, *TINY, "--steps", "6",
                "--kid-every", "0", "--sample-every", "0", "--resume")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "resumed" in p.stderr and "at step 4" in p.stderr and "trained 2 steps" in p.stderr
    state = torch.load(copy_run / "state.pt", weights_only=True)
    assert state["step"] == 6 and state["cur_nimg"] == 24
    assert load_generator(target)[1]["steps"] == 6
    steps = [json.loads(x)["step"] for x in (copy_run / "log.jsonl").read_text().splitlines()]
    assert steps[-1] == 6 and steps == sorted(steps)
    # --resume with nothing to resume is a clear error.
    p = _engine("texture", "train", synth, "--model", "gan", "-o", tmp_path / "x.pt", *TINY,
                "--kid-every", "0", "--resume", "--run-dir", tmp_path / "nothing")
    assert p.returncode != 0 and "no " in p.stderr and "state.pt" in p.stderr


def test_gan_trains_as_two_processes_under_torchrun(synth, tmp_path):
    if not torch.distributed.is_available():
        pytest.skip("this torch build has no torch.distributed (torchrun)")
    out = tmp_path / "ddp.pt"
    # torch.distributed.run is torchrun; --standalone picks a free port (tests may run side by side).
    p = _engine("texture", "train", synth, "--model", "gan", "-o", out, *TINY, "--steps", "3",
                "--kid-every", "0", "--sample-every", "3",
                prefix=("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"))
    assert p.returncode == 0, p.stderr[-4000:]
    assert "2 process(es) on cpu (gloo)" in p.stderr
    _, meta = load_generator(out)
    assert meta["world_size"] == 2 and meta["images_seen"] == 3 * 4 * 2
    assert (tmp_path / "ddp.run" / "samples" / "step-000003.png").is_file()


def test_gan_clear_errors(synth, tmp_path):
    p = _engine("texture", "train", synth, "--model", "gan", "-o", tmp_path / "a.pt", *TINY, "--res", "48")
    assert p.returncode != 0 and "power of two" in p.stderr
    p = _engine("texture", "train", synth, "--model", "gan", "-o", tmp_path / "a.pt", *TINY, "--amp", "fp16",
                "--device", "cpu", "--kid-every", "0")
    assert p.returncode != 0 and "CUDA" in p.stderr
    # KID without torchmetrics: told how to install it or to turn the KID off, nothing written.
    code = ("import sys; sys.modules['torchmetrics'] = None; from engine.cli import main; "
            f"sys.exit(main(sys.argv[1:]))")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.run([sys.executable, "-c", code, "texture", "train", str(synth), "--model", "gan", "-o",
                        str(tmp_path / "b.pt"), *TINY, "--kid-every", "5"], capture_output=True, text=True,
                       cwd=REPO, env=env, timeout=300)
    assert p.returncode != 0 and "torchmetrics" in p.stderr and "--kid-every 0" in p.stderr
    assert not (tmp_path / "b.pt").exists() and not (tmp_path / "b.run").exists()


@pytest.fixture(scope="module")
def vae_model(synth, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("vae") / "vae.pt"
    p = _engine("texture", "train", synth, "--model", "vae", "-o", out, "--res", "16", "--components", "4",
                "--steps", "30", "--batch", "8", "--channel-base", "128", "--channel-max", "16",
                "--no-progress")
    assert p.returncode == 0, p.stderr[-3000:]
    return out, p


def test_vae_trains_exports_decoder_and_encoder(synth, vae_model):
    from engine.texture import data as D
    out, p = vae_model
    assert "test RMSE" in p.stderr
    module, meta = load_generator(out)
    assert meta["model"] == "vae" and meta["latent_dim"] == 4 and meta["output_range"] == "0,1"
    assert 0 < meta["noise_std"] < 1 and meta["heldout_error"]["model"]["rmse"] > 0
    img = module(torch.randn(3, 4))
    assert img.shape == (3, 3, 16, 16) and 0 <= float(img.min()) and float(img.max()) <= 1
    data = D.TextureDataset(synth).load(16)
    z = module.encode(data.albedo[:5], data.weight[:5])
    assert z.shape == (5, 4) and torch.isfinite(z).all()
    # The encoder resizes a partial UV at another resolution itself.
    assert module.encode(D.TextureDataset(synth).load(32).albedo[:2],
                         D.TextureDataset(synth).load(32).weight[:2]).shape == (2, 4)


def test_vae_and_ppca_hold_out_the_same_persons(synth, vae_model, tmp_path):
    from engine.texture.evaluate import evaluate
    from engine.texture.train import train_ppca
    out, _ = vae_model
    pp = tmp_path / "ppca.pt"
    meta = train_ppca(synth, pp, 4, res=16, iters=5, log=lambda *_: None)
    assert load_generator(out)[1]["heldout_persons"] == meta["heldout_persons"]
    res = evaluate(synth, [str(pp), str(out)], None, log=lambda *_: None)
    assert set(res["vae.pt"]["table"]) == {"4"} and res["vae.pt"]["table"]["4"]["rmse"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gan", "vae"])
def test_fit_with_a_trained_checkpoint(kind, gan_run, vae_model, tmp_path):
    model = (gan_run if kind == "gan" else vae_model)[0]
    out = tmp_path / "fit"
    p = _engine("fit", DEMO, "-o", out, "--preset", "fast", "--max-steps", "2", "--texture-model", model)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads((out / "result.json").read_text())
    assert r["models"]["texture"] == "generator"
    latent = np.load(out / "params.npz")["texture_latent"]
    assert latent.shape == (1, load_generator(model)[1]["latent_dim"]) and np.isfinite(latent).all()


@pytest.mark.skipif(not HAS_TORCHMETRICS, reason="torchmetrics (the [train] extra) is not installed")
def test_kid_is_near_zero_for_the_same_distribution_and_large_for_another():
    from engine.texture.gan import _kid

    class Replay(torch.nn.Module):  # a "generator" that returns given images in [-1, 1]
        def __init__(self, imgs):
            super().__init__()
            self.imgs, self.i = imgs, 0

        def forward(self, z):
            out = self.imgs[self.i:self.i + len(z)] * 2 - 1
            self.i += len(z)
            return out, z

    g = torch.Generator().manual_seed(0)
    real = torch.rand(48, 3, 32, 32, generator=g) * 0.5 + 0.25
    w = (torch.rand(48, 32, 32, generator=g) > 0.3).float()
    z = torch.zeros(48, 4)
    same = _kid(Replay(torch.rand(48, 3, 32, 32, generator=g) * 0.5 + 0.25), real, w, z, torch.device("cpu"))
    other = _kid(Replay(torch.rand(48, 3, 32, 32, generator=g) * 0.2), real, w, z, torch.device("cpu"))
    assert abs(same) < 1.0 < other
    # Deterministic, and the caller's RNG is left as it was.
    state = torch.get_rng_state()
    again = _kid(Replay(torch.rand(48, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.2),
                 real, w, z, torch.device("cpu"))
    assert torch.equal(state, torch.get_rng_state()) and np.isfinite(again)
