"""``python -m engine texture train DATA --model ppca|vae|gan -o MODEL.pt``: train a UV texture model.

ppca is here; vae (``vae.py``) and gan (``gan.py``, torchrun-able) have their own modules.

The checkpoint is the fitter's ``ganfit-texture-generator`` format (``engine/fit/texture.py``), so
``python -m engine fit PHOTO --texture-model MODEL.pt`` loads it. Its ``ganfit.json`` also records
the model type, the training data summary, the held-out persons and the held-out error table.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from ..errors import BadInputError, EngineError, OutputError

# This module's top level is stdlib only: engine/cli.py builds its parser without torch.

DEFAULT_CANDIDATES = (0, 1, 2, 4, 8, 12, 16, 20, 24, 32, 40, 48, 64)  # the counts a table shows
DEFAULT_MAX_COMPONENTS = 48


def _components(text: str) -> int | str:
    if text == "auto":
        return "auto"
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number or 'auto', got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


MODEL_HELP = """models:
  ppca  masked PPCA (linear, EM over the weighted texels; components chosen by held-out error).
        The shipped way: trains in minutes on a CPU, and it is what the held-out table favours on
        the data sets of ~1,000 photos this project has.
  vae   a small masked convolutional VAE: the decoder is the generator (a residual over the data's
        weighted mean), its encoder (in the checkpoint as the TorchScript method 'encode') gives an
        initial latent from a partial UV. It does NOT beat ppca on our data: held-out RMSE 0.064 vs
        ppca's 0.049 at the same latent size 36 (395 photos, 64px; README). Compare the two at the
        same --components with 'texture eval' before using it.
  gan   a masked StyleGAN2-style generator/discriminator (plain PyTorch): the discriminator sees
        fakes through the real samples' visibility masks, so incomplete UVs train a complete
        generator. Needs GPUs and thousands of licence-checked photos to be worth it; runs on a
        CPU only as a smoke test. Distributed with torch's own DistributedDataParallel:
          torchrun --nproc_per_node 8 -m engine texture train DATA --model gan -o gan.pt --res 256
        (NCCL on GPUs, gloo on CPUs). Resumable (--resume), sample grids, KID (needs the optional
        torchmetrics: pip install 'ganfit-engine[train]'), mixed precision on CUDA (--amp).

For vae and gan, --components is the latent size (auto = 32); use the same count as the ppca
model you compare against. All three write a checkpoint that 'fit --texture-model' loads."""

LATENT_AUTO = 32


def add_train_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="train a UV texture model from a texture dataset",
                       description="Train a texture model on a dataset from 'texture dataset' and write "
                                   "a generator checkpoint that 'fit --texture-model' loads.",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=MODEL_HELP)
    p.add_argument("data", help="the dataset folder (data.json, manifest.jsonl, shards)")
    p.add_argument("--model", choices=("ppca", "vae", "gan"), default="ppca", help="model type (default ppca)")
    p.add_argument("-o", "--output", required=True, help="checkpoint to write (.pt)")
    p.add_argument("--components", type=_components, default="auto",
                   help="ppca: number of components, or 'auto' = chosen by held-out error (default); "
                        f"vae/gan: the latent size ('auto' = {LATENT_AUTO})")
    p.add_argument("--max-components", type=int, default=DEFAULT_MAX_COMPONENTS,
                   help=f"ppca: largest count tried by 'auto' (default {DEFAULT_MAX_COMPONENTS})")
    p.add_argument("--res", type=int, default=128,
                   help="working resolution in texels (default 128; vae/gan: a power of two)")
    p.add_argument("--out-res", type=int, default=0,
                   help="the checkpoint's output size (default: the working resolution; the fitter "
                        "resizes it to its atlas)")
    p.add_argument("--holdout", type=float, default=0.15,
                   help="fraction of persons held out for choosing and measuring (default 0.15)")
    p.add_argument("--iters", type=int, default=40, help="ppca: EM iterations at most (default 40)")
    p.add_argument("--robust", type=float, default=0.0,
                   help="ppca: reweight outlying texels (Cauchy, this many noise stds; e.g. 3); 0 = off (default)")
    p.add_argument("--seed", type=int, default=0, help="split, hold-back and initialisation seed (default 0)")
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    p.add_argument("--strict-licence", action="store_true",
                   help="train only on samples inside their source's stricter licence subset "
                        "(congress-pd: last_congress >= 110, see its LICENSE.md); the shipped model uses it")
    p.add_argument("--exclude-persons", type=_persons, default=frozenset(), metavar="IDS",
                   help="leave out every sample of these persons: comma-separated person ids as in "
                        "manifest.jsonl (e.g. london_001,canada_003), or @FILE with one id a line; "
                        "for a model to evaluate on people it never saw (recorded in the checkpoint)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint")
    n = p.add_argument_group("vae and gan")
    n.add_argument("--steps", type=int, help="optimiser steps (default: vae 3000, gan 10000; a resumed "
                   "gan run continues up to this total)")
    n.add_argument("--batch", type=int, help="batch size (gan: per process; default: vae 32, gan 8)")
    n.add_argument("--lr", type=float, help="learning rate (default 0.002)")
    n.add_argument("--channel-base", type=int, default=None,
                   help="feature maps at resolution r = base / r (default: vae 512, gan 4096)")
    n.add_argument("--channel-max", type=int, default=None,
                   help="at most this many feature maps (default: vae 64, gan 256)")
    n.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto = a GPU when torch sees one (under torchrun: the LOCAL_RANK'th)")
    n.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("gan only")
    g.add_argument("--run-dir", help="folder for state.pt (resume), samples/ and log.jsonl "
                   "(default: OUTPUT without .pt + '.run')")
    g.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    g.add_argument("--w-dim", type=int, default=256, help="style vector size (default 256)")
    g.add_argument("--mapping-layers", type=int, default=4, help="mapping network depth (default 4)")
    g.add_argument("--r1-gamma", type=float, default=1.0, help="R1 penalty weight on the reals (default 1)")
    g.add_argument("--pl-weight", type=float, default=0.0,
                   help="path length regularisation weight (default 0 = off; StyleGAN2 used 2)")
    g.add_argument("--ema-kimg", type=float, default=10.0, help="EMA half-life, thousands of images (default 10)")
    g.add_argument("--colour-jitter", type=float, default=0.0,
                   help="per-sample RGB gain in 1 +- this (default 0 = no augmentation; nothing that moves "
                        "texels is offered)")
    g.add_argument("--truncation", type=float, default=1.0,
                   help="w-space truncation psi baked into the exported generator (default 1 = none)")
    g.add_argument("--sample-every", type=int, default=500, help="sample grid (run folder samples/) every N steps and at the end (0 = none)")
    g.add_argument("--ckpt-every", type=int, default=500, help="save the resumable state every N steps (and at the end)")
    g.add_argument("--kid-every", type=int, default=1000,
                   help="KID every N steps and at the end (0 = none; needs torchmetrics)")
    g.add_argument("--kid-samples", type=int, default=256, help="training samples the KID compares with")
    g.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), default="auto",
                   help="mixed precision on CUDA (auto: bf16 where supported, else fp16 + GradScaler); "
                        "the CPU always trains in float32")
    return p


def add_eval_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("eval", help="held-out error table and sample/reconstruction sheets",
                       description="Measure models on a dataset's held-out persons (those recorded in "
                                   "each checkpoint) and write PNG sheets.")
    p.add_argument("data", help="the dataset folder")
    p.add_argument("models", nargs="+", help="checkpoints written by 'texture train'")
    p.add_argument("-o", "--output", help="folder for the PNG sheets and eval.json (default: none)")
    p.add_argument("--samples", type=int, default=8, help="random samples and reconstructions per sheet")
    p.add_argument("--seed", type=int, default=0)
    return p


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def train_ppca(data_dir: str | Path, output: str | Path, components: int | str = "auto",
               res: int = 128, holdout: float = 0.15, seed: int = 0, iters: int = 40,
               max_components: int = DEFAULT_MAX_COMPONENTS, out_res: int = 0,
               overwrite: bool = False, rel_tol: float = 0.02, robust: float = 0.0,
               strict_licence: bool = False, exclude_persons: frozenset[str] = frozenset(),
               log=_log) -> dict:
    """Train masked PPCA and write the checkpoint. Returns its metadata (also in ganfit.json).

    ``components="auto"``: train ``max_components``, measure every leading count on the held-out
    persons, keep the smallest within ``rel_tol`` of the best held-out RMSE, and refit at it."""
    from . import data as D
    from . import ppca as P
    out = Path(output)
    if out.exists() and not overwrite:
        raise OutputError(f"{out} exists; pass --overwrite to replace it, or choose another -o.")
    if not out.parent.is_dir():
        raise OutputError(f"The folder for {out} does not exist; create it first.")
    t0 = time.time()
    ds = D.TextureDataset(data_dir, strict_licence=strict_licence, exclude_persons=exclude_persons)
    data = ds.load(res)
    t_load = time.time() - t0
    train_idx, held_idx = D.split_by_person(data.records, holdout, seed)
    tr, ho = data.subset(train_idx), data.subset(held_idx)
    # The held-out persons are halved again: the validation half chooses the component count,
    # the test half gives the reported figures (with one held-out person, it does both).
    vi, ti = D.split_by_person(ho.records, 0.5, seed + 2)
    va, te = (ho.subset(vi), ho.subset(ti)) if vi and ti else (ho, ho)
    log(f"data: {len(data)} samples of {len({r.person for r in data.records})} persons at {res}px; "
        f"training on {len(tr)}, validating on {len(va)}, testing on {len(te)} "
        f"({time.time() - t0:.1f} s)")
    if len(tr) < 2:
        raise BadInputError(f"{data_dir} has too few samples to train on ({len(tr)} after holding out "
                            f"{len(ho)}); add photos to the dataset.")
    hb_va = D.holdback_mask(len(va), res, seed + 1) if len(va) else None
    hb_te = D.holdback_mask(len(te), res, seed + 1) if len(te) else None
    errors: dict[int, dict[str, float]] = {}

    t1 = time.time()
    if components == "auto":
        kmax = int(min(max_components, len(tr) - 1))
        big = P.fit_ppca(tr.albedo, tr.weight, kmax, iters=iters, robust=robust, log=log)
        if len(va):
            # Every leading count of the big model is cheap to measure (one E-step each).
            errors = P.heldout_error(big, va.albedo, va.weight, hb_va, list(range(kmax + 1)))
            k = max(1, P.choose_k(errors, rel_tol))
        else:
            log("no persons held out (one person only): keeping all components")
            k = kmax
        shown = [kk for kk in errors if kk in DEFAULT_CANDIDATES or kk in (k, kmax)]
        log("validation RMSE by components: " + ", ".join(f"{kk}: {errors[kk]['rmse']:.4f}" for kk in shown))
        log(f"chose {k} components; refitting")
        model = P.fit_ppca(tr.albedo, tr.weight, k, iters=max(5, iters // 4), init=big, robust=robust,
                           log=log)
    else:
        k = int(min(components, len(tr) - 1))
        model = P.fit_ppca(tr.albedo, tr.weight, k, iters=iters, robust=robust, log=log)
        if len(te):
            errors = P.heldout_error(model, te.albedo, te.weight, hb_te,
                                     sorted({kk for kk in DEFAULT_CANDIDATES if kk <= k} | {k}))
    final = P.heldout_error(model, te.albedo, te.weight, hb_te, [0, model.k]) if len(te) else {}
    t_train = time.time() - t1

    summary = ds.summary()
    meta_extra = {
        "model": "ppca", "components": model.k, "res": model.res, "noise_std": model.sigma2 ** 0.5,
        "seed": seed, "holdout_fraction": holdout, "colour": "linear", "robust": robust,
        "strict_licence": strict_licence, "excluded_persons": sorted(exclude_persons),
        "data": {**summary, "train_samples": len(tr), "validation_samples": len(va),
                 "heldout_samples": len(te), "builder": ds.meta.get("builder")},
        "heldout_persons": sorted({r.person for r in te.records}),
        "validation_persons": sorted({r.person for r in va.records}),
        "selection": {"rule": f"smallest count within {rel_tol:.0%} of the best validation RMSE",
                      "table": "validation persons" if components == "auto" else "test persons",
                      "same_persons": va is te},
        "heldout_error_by_components": {str(kk): e for kk, e in errors.items()},
        "heldout_error": {("mean" if kk == 0 else "model"): e for kk, e in final.items()},
        "timings_s": {"load": round(t_load, 1), "train": round(t_train, 1)},
    }
    write_checkpoint(model, out, meta_extra, out_res=out_res)
    meta_extra["size_bytes"] = out.stat().st_size
    log(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): {model.k} components at {model.res}px; "
        + (f"test RMSE {final[model.k]['rmse']:.4f} (mean only {final[0]['rmse']:.4f}); " if final else "")
        + f"{time.time() - t0:.0f} s")
    return meta_extra


def write_checkpoint(model, path: Path, extra: dict, out_res: int = 0) -> None:
    """A PPCA model's ``ganfit-texture-generator`` checkpoint (see ``write_generator``)."""
    from . import ppca as P
    write_generator(P.PPCAGenerator(model, out_res), path, latent_dim=model.k, output_range="0,1",
                    extra=extra)


def write_atomically(path: Path, write) -> None:
    """``write(tmp)`` a file beside ``path``, then rename it there: a failure leaves no half file
    (and no temporary one); an OSError becomes an OutputError naming ``path``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        raise OutputError(f"Could not write {path}: {e}") from e
    finally:
        if tmp.exists():
            tmp.unlink()


def write_generator(module, path: Path, latent_dim: int, output_range: str, extra: dict,
                    latent_mean=None, truncation: float = 1.0) -> None:
    """The ``ganfit-texture-generator`` checkpoint of any scriptable generator (via
    ``save_generator``) with ``extra`` in its ganfit.json, written atomically."""
    from ..fit.texture import save_generator
    write_atomically(path, lambda tmp: save_generator(module, tmp, latent_dim=latent_dim,
                                                      output_range=output_range, latent_mean=latent_mean,
                                                      truncation=truncation, extra=extra))


def _persons(text: str) -> frozenset[str]:
    """``--exclude-persons``: "a,b,c" or "@FILE" (one id a line, # comments)."""
    if text.startswith("@"):
        path = Path(text[1:]).expanduser()
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise argparse.ArgumentTypeError(f"cannot read the person list {path}: {e.strerror or e}")
        ids = [ln.split("#", 1)[0].strip() for ln in lines]
    else:
        ids = [x.strip() for x in text.split(",")]
    ids = frozenset(x for x in ids if x)
    if not ids:
        raise argparse.ArgumentTypeError(f"no person ids in {text!r}")
    return ids


def _latent(args) -> int:
    return LATENT_AUTO if args.components == "auto" else int(args.components)


def run_train(args) -> int:
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        if args.res < 8:
            raise BadInputError(f"--res must be at least 8, got {args.res}")
        if args.model == "gan":
            from .gan import GanConfig, train_gan
            cfg = GanConfig(
                data=args.data, output=args.output, run_dir=args.run_dir or "", res=args.res,
                latent=_latent(args), w_dim=args.w_dim, mapping_layers=args.mapping_layers,
                channel_base=args.channel_base or 4096, channel_max=args.channel_max or 256,
                batch=args.batch or 8, steps=args.steps or 10000, lr=args.lr or 0.002,
                r1_gamma=args.r1_gamma, pl_weight=args.pl_weight, ema_kimg=args.ema_kimg,
                colour_jitter=args.colour_jitter, truncation=args.truncation,
                sample_every=args.sample_every, ckpt_every=args.ckpt_every, kid_every=args.kid_every,
                kid_samples=args.kid_samples, holdout=args.holdout, seed=args.seed, device=args.device,
                amp=args.amp, out_res=args.out_res, resume=args.resume, overwrite=args.overwrite,
                progress=not args.no_progress, threads=args.threads or 0,
                strict_licence=args.strict_licence, exclude_persons=args.exclude_persons)
            train_gan(cfg)
        elif args.model == "vae":
            from .vae import VaeConfig, train_vae
            train_vae(VaeConfig(
                data=args.data, output=args.output, res=args.res, latent=_latent(args),
                channel_base=args.channel_base or 512, channel_max=args.channel_max or 64,
                batch=args.batch or 32, steps=args.steps or 3000, lr=args.lr or 0.002,
                holdout=args.holdout, seed=args.seed, device=args.device, out_res=args.out_res,
                overwrite=args.overwrite, progress=not args.no_progress,
                strict_licence=args.strict_licence, exclude_persons=args.exclude_persons))
        else:
            train_ppca(args.data, args.output, args.components, res=args.res, holdout=args.holdout,
                       seed=args.seed, iters=args.iters, max_components=args.max_components,
                       out_res=args.out_res, overwrite=args.overwrite, robust=args.robust,
                       strict_licence=args.strict_licence, exclude_persons=args.exclude_persons)
    except EngineError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return e.exit_code
    return 0


def run_eval(args) -> int:
    from .evaluate import evaluate
    try:
        evaluate(args.data, args.models, args.output, samples=args.samples, seed=args.seed)
    except EngineError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return e.exit_code
    return 0
