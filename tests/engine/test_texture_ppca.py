"""Masked PPCA texture model: the dataset reader, EM on incomplete data, component selection, the
checkpoint and its use by the fitter's GeneratorTexture."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import texture_synth as S  # noqa: E402

from engine.errors import BadInputError, OutputError  # noqa: E402
from engine.fit.optim import Adam  # noqa: E402
from engine.fit.texture import GeneratorTexture, load_generator  # noqa: E402
from engine.texture import data as D  # noqa: E402
from engine.texture import ppca as P  # noqa: E402
from engine.texture.train import train_ppca  # noqa: E402

RES, RANK, NOISE = 24, 4, 0.01


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    return S.write_dataset(tmp_path_factory.mktemp("tex") / "data", n=160, res=RES, rank=RANK, noise=NOISE,
                           seed=0)


@pytest.fixture(scope="module")
def trained(synth, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("model") / "ppca.pt"
    meta = train_ppca(synth, out, "auto", res=RES, seed=0, max_components=10, iters=25, log=lambda *_: None)
    return out, meta


def test_reader_split_by_person_is_disjoint_and_seeded(synth):
    ds = D.TextureDataset(synth)
    assert len(ds.records) == 160 and ds.failed == 2
    data = ds.load(12)
    assert data.albedo.shape == (160, 3, 12, 12) and data.weight.shape == (160, 12, 12)
    assert 0 <= float(data.albedo.min()) and float(data.albedo.max()) <= 1
    tr, ho = D.split_by_person(data.records, 0.2, seed=5)
    assert set(tr).isdisjoint(ho) and len(tr) + len(ho) == 160
    assert {data.records[i].person for i in tr}.isdisjoint({data.records[i].person for i in ho})
    assert D.split_by_person(data.records, 0.2, seed=5) == (tr, ho)
    assert D.split_by_person(data.records, 0.2, seed=6) != (tr, ho)


def test_downsample_weights_colour_by_trust():
    a = torch.zeros(4, 4, 3)
    a[:, :2] = 1.0   # left half white, right half black
    w = torch.zeros(4, 4)
    w[:2, :2] = 1.0  # top-left block fully seen
    w[2, 0] = 1.0    # one texel of the bottom-left block seen
    w[0, 3] = 0.5    # one black texel of the top-right block, half trusted
    at, wt = D.downsample(a, w, 2)
    assert torch.allclose(wt, torch.tensor([[1.0, 0.125], [0.25, 0.0]]))
    # A low-res texel's colour is that of the texels seen in it, not diluted by unseen ones.
    assert torch.allclose(at[:, 0, 0], torch.ones(3)) and torch.allclose(at[:, 1, 0], torch.ones(3))
    assert float(at[:, 0, 1].abs().max()) == 0 and float(at[:, 1, 1].abs().max()) == 0


def test_holdback_is_mirror_symmetric_in_the_face_box():
    m = D.holdback_mask(3, 64, seed=1)
    r0, c0, s = D.face_box(64)
    box = m[:, r0:r0 + s, c0:c0 + s]
    assert torch.equal(box, box.flip(-1))
    assert 0.3 < float(m.float().mean()) < 0.7
    assert torch.equal(m, D.holdback_mask(3, 64, seed=1)) and not torch.equal(m, D.holdback_mask(3, 64, seed=2))


def test_ppca_recovers_the_subspace_from_masked_data():
    a, w, _ = S.make_samples(200, res=RES, rank=RANK, noise=NOISE, seed=3)
    alb = torch.from_numpy(a).float().permute(0, 3, 1, 2)
    wt = torch.from_numpy(w).float()
    tr, ho = slice(0, 160), slice(160, 200)
    m = P.fit_ppca(alb[tr], wt[tr], RANK, iters=30)
    hb = D.holdback_mask(40, RES, seed=0)
    err = P.heldout_error(m, alb[ho], wt[ho], hb, [0, RANK])
    assert err[RANK]["rmse"] < 1.5 * NOISE            # near the noise level ...
    assert err[0]["rmse"] > 4 * err[RANK]["rmse"]      # ... far below the mean-only model
    assert abs(m.sigma2 ** 0.5 - NOISE) < 0.5 * NOISE
    # The latent has a unit Gaussian prior on the training set, components ordered by variance.
    z, _ = P.reconstruct(m, alb[tr], wt[tr])
    var = z.var(0)
    assert torch.all(var[:-1] >= var[1:] - 0.05) and 0.5 < float(var.mean()) < 1.2


def test_component_count_selection_picks_about_the_true_rank(trained):
    _, meta = trained
    assert RANK - 1 <= meta["components"] <= RANK + 2
    table = meta["heldout_error_by_components"]
    assert table["0"]["rmse"] > 3 * table[str(meta["components"])]["rmse"]
    assert meta["heldout_error"]["model"]["rmse"] < 2 * NOISE
    d = meta["data"]
    assert d["train_samples"] + d["validation_samples"] + d["heldout_samples"] == 160
    # Chosen on validation persons, reported on others: three disjoint groups of people.
    assert set(meta["validation_persons"]).isdisjoint(meta["heldout_persons"])
    assert not meta["selection"]["same_persons"]


def test_training_is_deterministic_under_a_seed(synth, tmp_path):
    kw = dict(res=12, iters=8, log=lambda *_: None)
    a = train_ppca(synth, tmp_path / "a.pt", 3, seed=4, **kw)
    b = train_ppca(synth, tmp_path / "b.pt", 3, seed=4, **kw)
    c = train_ppca(synth, tmp_path / "c.pt", 3, seed=5, **kw)
    assert a["heldout_persons"] == b["heldout_persons"] != c["heldout_persons"]
    ma, _ = load_generator(tmp_path / "a.pt")
    mb, _ = load_generator(tmp_path / "b.pt")
    assert torch.equal(ma.basis, mb.basis) and torch.equal(ma.mean, mb.mean)


def test_checkpoint_loads_and_fits_with_generator_texture(trained):
    path, meta = trained
    module, gmeta = load_generator(path)
    assert gmeta["model"] == "ppca" and gmeta["latent_dim"] == meta["components"]
    assert gmeta["output_range"] == "0,1" and gmeta["uv_layout"] == "ganfit-atlas-v1"
    assert path.stat().st_size < 1_000_000 and module.basis.dtype == torch.float16
    out = module(torch.zeros(2, gmeta["latent_dim"]))
    assert out.shape == (2, 3, RES, RES) and out.dtype == torch.float32
    tex = GeneratorTexture(module, gmeta, resolution=48)
    img = tex()
    assert img.shape == (1, 48, 48, 3) and 0 <= float(img.min()) and float(img.max()) <= 1
    # As the fine stage does: fit p_t to a target texture the model can make; the loss drops.
    with torch.no_grad():
        target = GeneratorTexture(module, gmeta, resolution=48)
        target.latent.normal_(generator=torch.Generator().manual_seed(0))
        target_img = target()
    opt = Adam([{"params": [tex.latent], "lr": 0.1}])
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = (tex() - target_img).abs().mean() + 1e-3 * tex.prior()
        losses.append(float(loss))
        loss.backward()
        opt.step()
    assert losses[-1] < 0.5 * losses[0]


def test_eval_prints_table_and_writes_sheets(synth, trained, tmp_path):
    from engine.texture.evaluate import evaluate
    path, meta = trained
    lines: list[str] = []
    res = evaluate(synth, [str(path)], tmp_path / "ev", samples=4, log=lines.append)
    table = res[path.name]["table"]
    assert table["0"]["rmse"] > 3 * table[str(meta["components"])]["rmse"]
    assert any("RMSE" in ln for ln in lines)
    for name in ("ppca-samples.png", "ppca-heldout.png", "eval.json"):
        assert (tmp_path / "ev" / name).stat().st_size > 100


def test_cli_train_refuses_to_overwrite(synth, trained):
    from engine.cli import main
    path, _ = trained
    before = path.read_bytes()
    assert main(["texture", "train", str(synth), "-o", str(path), "--res", "12"]) != 0
    assert path.read_bytes() == before
    with pytest.raises(OutputError, match="--overwrite"):
        train_ppca(synth, path, 2, res=12)


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_clear_errors_on_bad_data_folders(synth, tmp_path):
    with pytest.raises(BadInputError, match="not found"):
        D.TextureDataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInputError, match="data.json"):
        D.TextureDataset(tmp_path / "empty")
    d = _copy(synth, tmp_path / "wrongfmt")
    (d / "data.json").write_text(json.dumps({"format": "something-else", "version": 1}))
    with pytest.raises(BadInputError, match="ganfit-texture-dataset"):
        D.TextureDataset(d)
    d = _copy(synth, tmp_path / "v2")
    meta = json.loads((d / "data.json").read_text())
    (d / "data.json").write_text(json.dumps({**meta, "version": 2}))
    with pytest.raises(BadInputError, match="version"):
        D.TextureDataset(d)
    d = _copy(synth, tmp_path / "nomanifest")
    (d / "manifest.jsonl").unlink()
    with pytest.raises(BadInputError, match="manifest"):
        D.TextureDataset(d)
    d = _copy(synth, tmp_path / "noshard")
    (d / "shard-00001.npz").unlink()
    with pytest.raises(BadInputError, match="shard-00001.npz.*missing"):
        D.TextureDataset(d).load(12)
    d = _copy(synth, tmp_path / "badshard")
    (d / "shard-00000.npz").write_bytes(b"garbage")
    with pytest.raises(BadInputError, match="Could not read the shard"):
        D.TextureDataset(d).load(12)
    d = _copy(synth, tmp_path / "allfailed")
    lines = [json.loads(x) for x in (d / "manifest.jsonl").read_text().splitlines()]
    (d / "manifest.jsonl").write_text("".join(json.dumps({**x, "status": "failed"}) + "\n" for x in lines))
    with pytest.raises(BadInputError, match="no samples with status 'ok'"):
        D.TextureDataset(d)
    with pytest.raises(BadInputError, match="above the dataset's resolution"):
        D.TextureDataset(synth).load(RES * 2)


def test_manifest_partial_last_line_and_later_lines_win(synth, tmp_path):
    d = _copy(synth, tmp_path / "resumed")
    text = (d / "manifest.jsonl").read_text()
    first = json.loads(text.splitlines()[0])
    redo = {**first, "status": "failed", "error": "retry"}
    (d / "manifest.jsonl").write_text(text + json.dumps(redo) + "\n" + '{"id": "synth/cut", "sta')
    ds = D.TextureDataset(d)
    assert first["id"] not in {r.id for r in ds.records} and ds.failed == 3
    assert len(ds.records) == 159
    # A sample whose row moved in its shard is still found by its id.
    lines = [json.loads(x) for x in text.splitlines()]
    lines[1]["index"] = 0
    (d / "manifest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    data = D.TextureDataset(d).load(RES)
    ref = D.TextureDataset(synth).load(RES)
    assert torch.equal(data.albedo[1], ref.albedo[1])
    assert np.isfinite(data.albedo.numpy()).all()


class _Linear(torch.nn.Module):
    """A non-PPCA generator (output in -1..1) for the generic evaluation path."""

    def __init__(self, mean: torch.Tensor, basis: torch.Tensor, res: int):
        super().__init__()
        self.register_buffer("mean", mean * 2 - 1)
        self.register_buffer("basis", basis * 2)
        self.res = res

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return (self.mean + z @ self.basis).view(z.shape[0], 3, self.res, self.res)


def test_eval_measures_any_generator_by_fitting_its_latent(synth, trained, tmp_path):
    from engine.fit.texture import save_generator
    from engine.texture.evaluate import evaluate
    path, meta = trained
    module, _ = load_generator(path)
    m = P.model_from_generator(module)
    other = tmp_path / "other.pt"
    save_generator(_Linear(m.mean, m.basis, m.res), other, latent_dim=m.k, output_range="-1,1")
    res = evaluate(synth, [str(path), str(other)], None, log=lambda *_: None)
    ppca_err = res[path.name]["table"][str(m.k)]["rmse"]
    gen_err = res["other.pt"]["table"][str(m.k)]["rmse"]
    # The same linear model behind a generic generator: its Adam-fitted latent does about as well.
    assert gen_err < 1.5 * ppca_err
    assert gen_err < 0.5 * res[path.name]["table"]["0"]["rmse"]


def test_cli_train_eval_and_fit_with_the_checkpoint(synth, tmp_path):
    """The commands as a user runs them: texture train, texture eval, then fit with the model."""
    import os
    import subprocess

    from shared_data import require_shared
    photo = require_shared("photos", "codait_luciano.png")
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo)}

    def run(*args):
        return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True,
                              cwd=repo, env=env, timeout=300)

    model = tmp_path / "m.pt"
    p = run("texture", "train", str(synth), "--model", "ppca", "-o", str(model), "--res", "16",
            "--max-components", "8", "--iters", "10", "--seed", "1", "--out-res", "64")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "test RMSE" in p.stderr
    p = run("texture", "eval", str(synth), str(model), "-o", str(tmp_path / "ev"))
    assert p.returncode == 0, p.stderr[-2000:]
    assert "RMSE" in p.stdout and (tmp_path / "ev" / "m-heldout.png").is_file()
    p = run("texture", "train", str(tmp_path / "nowhere"), "-o", str(tmp_path / "x.pt"))
    assert p.returncode != 0 and "not found" in p.stderr and not (tmp_path / "x.pt").exists()
    out = tmp_path / "fit"
    p = run("fit", str(photo), "-o", str(out), "--preset", "fast", "--max-steps", "3",
            "--texture-model", str(model), "--texture-res", "256")
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads((out / "result.json").read_text())
    assert r["models"]["texture"] == "generator"
    _, meta = load_generator(model)
    assert np.load(out / "params.npz")["texture_latent"].shape == (1, meta["latent_dim"])


def test_robust_reweighting_ignores_trusted_outliers():
    """Glasses-like dark patches at full weight in half the training maps: the Cauchy-reweighted
    fit stays near the noise level on clean held-out maps, the plain one does not."""
    a, w, _ = S.make_samples(200, res=RES, rank=RANK, noise=NOISE, seed=3)
    alb = torch.from_numpy(a).float().permute(0, 3, 1, 2)
    wt = torch.from_numpy(w).float()
    rng = np.random.default_rng(0)
    bad = alb.clone()
    for i in range(0, 160, 2):
        y, x = rng.integers(0, RES - 6, 2)
        bad[i, :, y:y + 6, x:x + 6] = 0.05
    hb = D.holdback_mask(40, RES, seed=0)
    plain = P.heldout_error(P.fit_ppca(bad[:160], wt[:160], RANK, iters=30), alb[160:], wt[160:], hb, [RANK])
    robust = P.heldout_error(P.fit_ppca(bad[:160], wt[:160], RANK, iters=30, robust=3.0), alb[160:], wt[160:],
                             hb, [RANK])
    assert robust[RANK]["rmse"] < 1.5 * NOISE < plain[RANK]["rmse"]


def test_strict_licence_leaves_out_flagged_samples(synth, tmp_path):
    """--strict-licence drops exactly the samples flagged outside their source's stricter subset."""
    import shutil
    d = tmp_path / "d"
    shutil.copytree(synth, d)
    lines = (d / "manifest.jsonl").read_text().splitlines()
    out = []
    for n, line in enumerate(lines):
        obj = json.loads(line)
        if obj["status"] == "ok" and n % 4 == 0:
            obj["flags"] = {"pd_strict": False}
        elif obj["status"] == "ok" and n % 4 == 1:
            obj["flags"] = {"pd_strict": True}
        out.append(json.dumps(obj))
    (d / "manifest.jsonl").write_text("\n".join(out) + "\n")
    flagged = sum(1 for n, line in enumerate(lines) if json.loads(line)["status"] == "ok" and n % 4 == 0)
    assert len(D.TextureDataset(d).records) == 160
    strict = D.TextureDataset(d, strict_licence=True)
    assert len(strict.records) == 160 - flagged and strict.excluded == flagged > 0
    assert all((r.info.get("flags") or {}).get("pd_strict") is not False for r in strict.records)
    meta = train_ppca(d, tmp_path / "m.pt", 3, res=RES, iters=5, strict_licence=True, log=lambda *_: None)
    assert meta["strict_licence"] and meta["data"]["excluded_by_licence"] == flagged
    assert meta["data"]["samples"] == 160 - flagged


def test_exclude_persons_leaves_out_every_sample_of_those_persons(synth, tmp_path):
    """--exclude-persons (a list or @FILE) drops all of those persons' samples, and the checkpoint
    records who was left out, so an evaluation on them is on people the model never saw."""
    from engine.cli import main
    persons = D.TextureDataset(synth).persons
    gone = set(persons[:5])
    ds = D.TextureDataset(synth, exclude_persons=gone)
    assert not gone & set(ds.persons) and len(ds.persons) == len(persons) - 5
    assert ds.excluded_persons == sum(1 for r in D.TextureDataset(synth).records if r.person in gone) > 0
    ids = tmp_path / "ids.txt"
    ids.write_text("# held out\n" + "\n".join(sorted(gone)) + "\n\n")
    out = tmp_path / "m.pt"
    assert main(["texture", "train", str(synth), "-o", str(out), "--res", str(RES), "--components", "3",
                 "--iters", "5", "--exclude-persons", f"@{ids}"]) == 0
    from engine.fit.texture import load_generator
    _, meta = load_generator(out)
    assert set(meta["excluded_persons"]) == gone
    assert not gone & set(meta["heldout_persons"]) and meta["data"]["excluded_by_person"] == ds.excluded_persons
    with pytest.raises(SystemExit):  # an unreadable list is a usage error, before any work
        main(["texture", "train", str(synth), "-o", str(tmp_path / "n.pt"), "--exclude-persons",
              f"@{tmp_path / 'missing.txt'}"])
