"""``texture train DATA --model vae``: a small masked convolutional VAE of UV textures.

The decoder (``nets.VAEDecoder``: latent -> UV albedo as a residual over the training data's
weighted, hole-filled mean) is the exported generator; the encoder (``nets.VAEEncoder``) reads a
partial UV (albedo x weight and the weight) and is kept in the checkpoint as the TorchScript
method ``encode(albedo, weight) -> latent``, an initial latent for a partial UV.

Loss: the negative ELBO with a Gaussian likelihood over the WEIGHTED texels only (weights act as
precisions, as in the ppca model: noise variance sigma^2 / w, sigma learnt), plus the KL of the
encoder's posterior from N(0, I). The encoder's input is randomly masked (the mirror-symmetric
block hold-back that the evaluation uses, on half the samples) while the loss covers every
weighted texel, so it learns to complete a partial UV. The step with the lowest validation error
(encoder latent from a partial UV, error on the held-back texels) is kept.

The persons are split as the ppca trainer splits them (same seed): training / validation (model
selection) / test (the reported figures, and what 'texture eval' measures on).
"""

from __future__ import annotations

import copy
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import BadInputError, OutputError
from . import nets as N


@dataclass
class VaeConfig:
    data: str
    output: str
    res: int = 128
    latent: int = 32
    channel_base: int = 512
    channel_max: int = 64
    batch: int = 32
    steps: int = 3000
    lr: float = 0.002
    eval_every: int = 250
    holdout: float = 0.15
    seed: int = 0
    device: str = "auto"
    out_res: int = 0
    overwrite: bool = False
    progress: bool = True
    strict_licence: bool = False    # texture train --strict-licence (data.TextureDataset)
    exclude_persons: frozenset[str] = frozenset()  # texture train --exclude-persons


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _device(arg: str) -> torch.device:
    if arg == "cuda" and not torch.cuda.is_available():
        raise BadInputError("--device cuda was given but torch sees no CUDA GPU; use --device cpu.")
    return torch.device("cuda" if arg == "cuda" or (arg == "auto" and torch.cuda.is_available()) else "cpu")


def weighted_mean_image(albedo: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(N, 3, r, r), (N, r, r) -> (3, r, r): the weighted mean, unseen texels from neighbours."""
    from .ppca import fill_holes
    wsum = weight.sum(0)
    mean = (albedo * weight[:, None]).sum(0) / wsum.clamp_min(1e-6)
    return fill_holes(mean, wsum)


def _val_error(enc, dec, albedo, weight, holdback, device) -> float:
    """RMSE on the held-back texels of the decoder's image of the encoder's latent for the rest."""
    num, den = 0.0, 0.0
    with torch.no_grad():
        for s in range(0, len(albedo), 64):
            a, w = albedo[s:s + 64].to(device), weight[s:s + 64].to(device)
            hb = holdback[s:s + 64].to(device).float()
            mu, _ = enc(a, w * (1 - hb))
            d = (dec(mu).clamp(0, 1) - a) ** 2
            wt = w * hb
            num += float((wt[:, None] * d).sum())
            den += float(3 * wt.sum())
    return math.sqrt(num / max(den, 1e-12))


def train_vae(cfg: VaeConfig, log=_log) -> dict:
    """Train and write the checkpoint. Returns its metadata (also in ganfit.json)."""
    from tqdm import tqdm

    from . import data as D
    from .evaluate import generic_heldout_error
    from .train import write_generator
    try:
        N.check_res(cfg.res)
    except ValueError as e:
        raise BadInputError(f"--res: {e}.") from None
    if cfg.batch < 1 or cfg.steps < 1 or cfg.latent < 1:
        raise BadInputError("--batch, --steps and --components must be at least 1.")
    out = Path(cfg.output)
    if out.exists() and not cfg.overwrite:
        raise OutputError(f"{out} exists; pass --overwrite to replace it, or choose another -o.")
    if not out.parent.is_dir():
        raise OutputError(f"The folder for {out} does not exist; create it first.")
    device = _device(cfg.device)
    t0 = time.time()
    ds = D.TextureDataset(cfg.data, strict_licence=cfg.strict_licence,
                           exclude_persons=cfg.exclude_persons)
    data = ds.load(cfg.res)
    train_idx, held_idx = D.split_by_person(data.records, cfg.holdout, cfg.seed)
    tr, ho = data.subset(train_idx), data.subset(held_idx)
    vi, ti = D.split_by_person(ho.records, 0.5, cfg.seed + 2)
    va, te = (ho.subset(vi), ho.subset(ti)) if vi and ti else (ho, ho)
    if len(tr) < 2:
        raise BadInputError(f"{cfg.data} has too few samples to train on ({len(tr)}); add photos.")
    t_load = time.time() - t0
    log(f"data: {len(data)} samples at {cfg.res}px; training on {len(tr)}, validating on {len(va)}, "
        f"testing on {len(te)} ({t_load:.1f} s); {device}")

    torch.manual_seed(cfg.seed)
    mean_img = weighted_mean_image(tr.albedo, tr.weight)
    enc = N.VAEEncoder(cfg.res, cfg.latent, cfg.channel_base, cfg.channel_max).to(device)
    dec = N.VAEDecoder(cfg.res, cfg.latent, mean_img, cfg.channel_base, cfg.channel_max).to(device)
    log_sigma = torch.nn.Parameter(torch.tensor(math.log(0.05), device=device))
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters(), log_sigma], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps, eta_min=cfg.lr * 0.05)
    # A bank of the evaluation's hold-back masks (mirror-symmetric blocks) to hide from the encoder.
    bank = D.holdback_mask(256, cfg.res, cfg.seed + 100).to(device)
    hb_va = D.holdback_mask(len(va), cfg.res, cfg.seed + 1) if len(va) else None
    albedo, weight = tr.albedo.to(device), tr.weight.to(device)
    g = torch.Generator(device="cpu").manual_seed(cfg.seed)
    best = (math.inf, 0, None)
    history = []
    t1 = time.time()
    bar = tqdm(range(cfg.steps), desc="vae", unit="step", disable=not cfg.progress, file=sys.stderr,
               dynamic_ncols=True)
    for step in bar:
        idx = torch.randint(len(tr), (min(cfg.batch, len(tr)),), generator=g).to(device)
        a, w = albedo[idx], weight[idx]
        hide = bank[torch.randint(len(bank), (len(idx),), generator=g).to(device)]
        half = (torch.rand(len(idx), generator=g) < 0.5).to(device)[:, None, None]
        w_in = w * (~(hide & half)).float()
        mu, lv = enc(a, w_in)
        z = mu + torch.randn_like(mu) * (0.5 * lv).exp()
        rec = dec(z)
        sigma2 = (2 * log_sigma).exp()
        nll = 0.5 * (w[:, None] * (rec - a) ** 2).sum() / sigma2 + 3 * w.sum() * log_sigma
        kl = 0.5 * (mu ** 2 + lv.exp() - 1 - lv).sum()
        loss = (nll + kl) / len(idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            enc.eval(), dec.eval()
            err = _val_error(enc, dec, va.albedo, va.weight, hb_va, device) if len(va) else float(loss)
            enc.train(), dec.train()
            history.append({"step": step + 1, "val_rmse": err, "sigma": float(log_sigma.detach().exp())})
            bar.set_postfix(val=f"{err:.4f}", sigma=f"{float(log_sigma.detach().exp()):.4f}")
            if err < best[0]:
                best = (err, step + 1, (copy.deepcopy(enc.state_dict()), copy.deepcopy(dec.state_dict()),
                                        float(log_sigma.detach().exp())))
    bar.close()
    t_train = time.time() - t1
    enc.load_state_dict(best[2][0])
    dec.load_state_dict(best[2][1])
    sigma = best[2][2]
    log(f"trained {cfg.steps} steps in {t_train:.1f} s ({t_train / cfg.steps:.3f} s/step); kept step "
        f"{best[1]} (validation RMSE {best[0]:.4f}, noise std {sigma:.4f})")
    module = N.VAEGenerator(copy.deepcopy(enc).cpu().eval(), copy.deepcopy(dec).cpu().eval(), cfg.out_res)
    final = {}
    if len(te):
        hb_te = D.holdback_mask(len(te), cfg.res, cfg.seed + 1)
        meta_fit = {"latent_dim": cfg.latent, "noise_std": sigma, "output_range": "0,1"}
        with torch.no_grad():
            mean_only = module.decoder.mean_img.clamp(0, 1)
        d = mean_only - te.albedo
        wt = te.weight * hb_te.float()
        den = (3 * wt.sum()).clamp_min(1e-12)
        final["mean"] = {"rmse": float(((wt[:, None] * d ** 2).sum() / den).sqrt()),
                         "l1": float((wt[:, None] * d.abs()).sum() / den)}
        final["model"] = generic_heldout_error(module, meta_fit, te.albedo, te.weight, hb_te)
        final["encoder"] = {"rmse": _val_error(module.encoder, module.decoder, te.albedo, te.weight, hb_te,
                                               torch.device("cpu"))}
    meta = {"model": "vae", "components": cfg.latent, "res": cfg.res, "noise_std": sigma, "seed": cfg.seed,
            "holdout_fraction": cfg.holdout, "excluded_persons": sorted(cfg.exclude_persons), "colour": "linear",
            "arch": {"channel_base": cfg.channel_base, "channel_max": cfg.channel_max},
            "encoder": "TorchScript method encode(albedo (B,3,r,r) linear, weight (B,r,r)) -> latent (B,K)",
            "training": {"steps": cfg.steps, "batch": cfg.batch, "lr": cfg.lr, "kept_step": best[1],
                         "history": history},
            "data": {**ds.summary(), "train_samples": len(tr), "validation_samples": len(va),
                     "heldout_samples": len(te), "builder": ds.meta.get("builder")},
            "heldout_persons": sorted({r.person for r in te.records}),
            "validation_persons": sorted({r.person for r in va.records}),
            "heldout_error": final,
            "timings_s": {"load": round(t_load, 1), "train": round(t_train, 1),
                          "s_per_step": round(t_train / cfg.steps, 4)}}
    write_generator(module, out, latent_dim=cfg.latent, output_range="0,1", extra=meta)
    meta["size_bytes"] = out.stat().st_size
    log(f"wrote {out} ({meta['size_bytes'] / 1e6:.1f} MB): latent {cfg.latent} at {cfg.res}px"
        + (f"; test RMSE {final['model']['rmse']:.4f} (latent fit), {final['encoder']['rmse']:.4f} "
           f"(encoder only), mean only {final['mean']['rmse']:.4f}" if final else "")
        + f"; {time.time() - t0:.0f} s")
    return meta
