"""``texture train DATA --model gan``: a masked StyleGAN2-style UV texture GAN.

The dataset's UV maps are incomplete (each photo sees part of the head; a texel's weight says how
far it is trusted). The discriminator never sees a texel the real sample did not see: it gets
(image x mask, mask) for a real sample and (fake x the SAME real sample's mask, that mask) for a
fake, so the generator is pushed to be right wherever some photo sees the head, and learns a
complete atlas from incomplete ones. The mask is the dataset's weight in [0, 1].

Training: non-saturating logistic loss, lazy R1 on the reals (every ``r1_every`` steps), optional
path length regularisation (off by default), an exponential moving average (EMA) of G, whose
export is the checkpoint (z -> image, fixed noise). No augmentation that moves texels (UV
correspondence is the point); an optional per-sample colour jitter only.

Distributed data parallel: under ``torchrun`` every process trains on its share of each batch
(torch.distributed + DistributedDataParallel + DistributedSampler; NCCL on GPUs, gloo on CPUs);
rank 0 writes the samples, the log, the resumable state and the exported generator.

Run folder (``--run-dir``, default ``<output>.run/``): ``state.pt`` (G, D, EMA, optimisers,
grad scalers, step, every rank's RNG; replaced atomically), ``samples/step-NNNNNN.png`` (sRGB
grids of the EMA generator at fixed latents), ``log.jsonl`` (losses, KID, timings).

KID (Kernel Inception Distance, torchmetrics' ``KernelInceptionDistance``) uses, instead of the
Inception network (its weights are a download), a FIXED RANDOMLY INITIALISED convolutional
feature net (seeded, so the same in every run of this engine): the figure compares runs of this
trainer with each other (lower = generated masked UVs closer in distribution to the real ones),
it is NOT comparable with published Inception KIDs.
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import BadInputError, EngineError, OutputError
from . import nets as N

STATE_VERSION = 1
ARCH_KEYS = ("res", "latent", "w_dim", "mapping_layers", "channel_base", "channel_max")


@dataclass
class GanConfig:
    data: str
    output: str
    run_dir: str = ""                # default: <output stem>.run beside the output
    res: int = 128
    latent: int = 64                 # z size (the fitter's p_t)
    w_dim: int = 256
    mapping_layers: int = 4
    channel_base: int = 4096
    channel_max: int = 256
    batch: int = 8                   # per process
    steps: int = 10000               # total G steps (a resumed run continues up to it)
    lr: float = 0.002
    r1_gamma: float = 1.0
    r1_every: int = 16
    pl_weight: float = 0.0           # path length regularisation: 0 = off (default)
    pl_every: int = 4
    ema_kimg: float = 10.0           # EMA half-life in thousands of images ...
    ema_rampup: float = 0.05         # ... at most this fraction of the images seen so far
    colour_jitter: float = 0.0       # per-sample RGB gain ~ 1 + U(-j, j): 0 = off
    truncation: float = 1.0          # w-space psi baked into the exported generator
    sample_every: int = 500
    ckpt_every: int = 500
    kid_every: int = 1000            # 0 = no KID (then torchmetrics is not needed)
    kid_samples: int = 256
    holdout: float = 0.15
    seed: int = 0
    device: str = "auto"             # auto | cpu | cuda
    amp: str = "auto"                # auto | bf16 | fp16 | off (CUDA only)
    out_res: int = 0
    resume: bool = False
    overwrite: bool = False
    progress: bool = True
    threads: int = 0
    extra: dict = field(default_factory=dict)
    strict_licence: bool = False    # texture train --strict-licence (data.TextureDataset)
    exclude_persons: frozenset[str] = frozenset()  # texture train --exclude-persons


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class _Dist:
    """This process's place in a torchrun job (world 1 without torchrun)."""

    def __init__(self, device_arg: str):
        import torch.distributed as dist
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local = int(os.environ.get("LOCAL_RANK", "0"))
        want_cuda = device_arg == "cuda" or (device_arg == "auto" and torch.cuda.is_available())
        if want_cuda and not torch.cuda.is_available():
            raise BadInputError("--device cuda was given but torch sees no CUDA GPU; use --device cpu "
                                "or install a CUDA build of torch.")
        if want_cuda:
            if self.local >= torch.cuda.device_count():
                raise BadInputError(f"LOCAL_RANK {self.local} has no GPU ({torch.cuda.device_count()} "
                                    "visible); start at most one process per GPU.")
            torch.cuda.set_device(self.local)
            self.device = torch.device("cuda", self.local)
        else:
            self.device = torch.device("cpu")
        self.backend = "nccl" if want_cuda else "gloo"
        self.enabled = self.world > 1
        if self.enabled and not dist.is_initialized():
            dist.init_process_group(self.backend)
        self.dist = dist

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            self.dist.barrier()

    def all_gather(self, obj):
        if not self.enabled:
            return [obj]
        out = [None] * self.world
        self.dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj):
        if not self.enabled:
            return obj
        box = [obj]
        self.dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.enabled and self.dist.is_initialized():
            self.dist.destroy_process_group()


class RandomFeatures(nn.Module):
    """The KID feature extractor: a fixed, randomly initialised conv net (seed 1234) on the masked
    UV (3 channels x mask + the mask) at 64x64 -> 128 features (channel means and stds of two
    layers), standardised by the statistics of the real set it is calibrated on (``calibrate``),
    so that the polynomial kernel sees features of unit scale. Random conv features are sensitive
    to colour and local texture statistics; they are not Inception features, so the KID it gives
    is only comparable between runs of this trainer on the same data."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(1234)
        chans = [4, 32, 64, 64]
        self.weights = nn.ParameterList([
            nn.Parameter(torch.randn(co, ci, 3, 3, generator=g) / math.sqrt(ci * 9), requires_grad=False)
            for ci, co in zip(chans[:-1], chans[1:])])
        self.register_buffer("shift", torch.zeros(2 * (chans[2] + chans[3])))
        self.register_buffer("scale", torch.ones(2 * (chans[2] + chans[3])))

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x.float(), size=(64, 64), mode="bilinear", align_corners=False, antialias=True)
        feats = []
        for i, w in enumerate(self.weights):
            x = F.leaky_relu(F.conv2d(x, w, stride=2, padding=1), 0.2)
            if i >= 1:
                feats += [x.mean([2, 3]), x.std([2, 3])]
        return torch.cat(feats, 1)

    def calibrate(self, x: torch.Tensor) -> None:
        with torch.no_grad():
            f = torch.cat([self.raw(x[s:s + 64]) for s in range(0, len(x), 64)])
            self.shift.copy_(f.mean(0))
            self.scale.copy_(f.std(0).clamp_min(1e-8) if len(f) > 1 else torch.ones_like(self.scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.raw(x) - self.shift) / self.scale


def _kid_metric(n: int):
    import warnings
    try:
        from torchmetrics.image.kid import KernelInceptionDistance
    except ImportError:
        raise BadInputError("KID needs torchmetrics, which is not installed: pip install "
                            "'ganfit-engine[train]' (or pip install torchmetrics), or pass --kid-every 0 "
                            "to train without the KID.") from None
    sub = max(2, min(100, n))
    with warnings.catch_warnings():  # "will save all extracted features": a few hundred, by design
        warnings.simplefilter("ignore", UserWarning)
        # Rank 0 alone computes it: no syncing with the other ranks (they are in DDP's all-reduce).
        return KernelInceptionDistance(feature=RandomFeatures(), subsets=50, subset_size=sub,
                                       sync_on_compute=False)


def _masked_input(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """(B, 3, r, r) image in [-1, 1], (B, r, r) mask -> the discriminator's (B, 4, r, r)."""
    m = w[:, None].to(x.dtype)
    return torch.cat([x * m, m], 1)


def _rng_state(device: torch.device) -> dict:
    st = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        st["cuda"] = torch.cuda.get_rng_state(device)
    return st


def _set_rng_state(st: dict, device: torch.device) -> None:
    torch.set_rng_state(st["cpu"])
    if device.type == "cuda" and "cuda" in st:
        torch.cuda.set_rng_state(st["cuda"], device)


def _atomic_save(obj, path: Path) -> None:
    from .train import write_atomically
    write_atomically(path, lambda tmp: torch.save(obj, tmp))


def default_run_dir(output: str | Path) -> Path:
    out = Path(output)
    return out.with_name(out.stem + ".run")


def _check_config(cfg: GanConfig) -> None:
    try:
        N.check_res(cfg.res)
    except ValueError as e:
        raise BadInputError(f"--res: {e} (the GAN doubles its size per block).") from None
    for name in ("batch", "steps", "latent", "w_dim", "r1_every", "pl_every"):
        if getattr(cfg, name) < 1:
            raise BadInputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(cfg, name)}")
    for name in ("sample_every", "ckpt_every", "kid_every"):
        if getattr(cfg, name) < 0:
            raise BadInputError(f"--{name.replace('_', '-')} must be 0 (off) or more")
    if cfg.amp not in ("auto", "bf16", "fp16", "off"):
        raise BadInputError(f"--amp must be auto, bf16, fp16 or off, got {cfg.amp!r}")
    if not 0 <= cfg.colour_jitter < 1:
        raise BadInputError("--colour-jitter must be in [0, 1)")


def _amp_dtype(cfg: GanConfig, device: torch.device):
    if device.type != "cuda":
        if cfg.amp in ("bf16", "fp16"):
            raise BadInputError(f"--amp {cfg.amp} is for CUDA GPUs only; on the CPU use --amp off (or auto).")
        return None
    if cfg.amp == "off":
        return None
    if cfg.amp == "bf16" or (cfg.amp == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def build_nets(arch: dict) -> tuple[N.StyleGenerator, N.ResidualDiscriminator]:
    g = N.StyleGenerator(arch["latent"], arch["res"], w_dim=arch["w_dim"],
                         mapping_layers=arch["mapping_layers"], channel_base=arch["channel_base"],
                         channel_max=arch["channel_max"])
    d = N.ResidualDiscriminator(arch["res"], 4, channel_base=arch["channel_base"],
                                channel_max=arch["channel_max"])
    return g, d


def _grid(g_ema: N.StyleGenerator, z: torch.Tensor, path: Path) -> None:
    from .evaluate import sheet
    with torch.no_grad():
        imgs = ((g_ema(z)[0].float().clamp(-1, 1) + 1) * 0.5).cpu()
    cols = int(math.ceil(math.sqrt(len(imgs))))
    sheet([list(imgs[i:i + cols]) for i in range(0, len(imgs), cols)], path, tile=min(128, imgs.shape[-1] * 2))


def _kid(g_ema, real: torch.Tensor, weight: torch.Tensor, z: torch.Tensor, device) -> float:
    """KID between masked reals and EMA fakes seen through the same masks (images in [0, 1])."""
    metric = _kid_metric(len(real)).to(device)
    with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)  # KID's subset draws: the same each time, and the training RNG untouched
        reals = _masked_input(real.to(device), weight.to(device))
        metric.inception.calibrate(reals)
        for s in range(0, len(real), 32):
            w = weight[s:s + 32].to(device)
            fake = (g_ema(z[s:s + 32].to(device))[0].float().clamp(-1, 1) + 1) * 0.5
            metric.update(reals[s:s + 32], real=True)
            metric.update(_masked_input(fake, w), real=False)
        mean, _ = metric.compute()
    return float(mean)


def train_gan(cfg: GanConfig, log=_log) -> dict | None:
    """Train (or resume) and write the exported EMA generator to ``cfg.output``. Returns the
    checkpoint metadata on rank 0, None on other ranks."""
    _check_config(cfg)
    if cfg.kid_every:
        _kid_metric(2)  # fail now, before any file is written, when torchmetrics is missing
    dd = _Dist(cfg.device)
    try:
        return _train(cfg, dd, log)
    finally:
        dd.close()


def _train(cfg: GanConfig, dd: _Dist, log) -> dict | None:
    from torch.nn.parallel import DistributedDataParallel as DDP
    from torch.utils.data import DataLoader, TensorDataset
    from torch.utils.data.distributed import DistributedSampler

    from . import data as D
    device = dd.device
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    elif dd.enabled and device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", dd.world))))
    out = Path(cfg.output)
    run = Path(cfg.run_dir) if cfg.run_dir else default_run_dir(out)
    state_path = run / "state.pt"
    # Every rank checks the same things, so that all stop together on bad arguments.
    if out.exists() and not cfg.overwrite:
        raise OutputError(f"{out} exists; pass --overwrite to replace it, or choose another -o.")
    if not out.parent.is_dir():
        raise OutputError(f"The folder for {out} does not exist; create it first.")
    if cfg.resume and not state_path.is_file():
        raise BadInputError(f"--resume: no {state_path} to resume from (give the --run-dir of an earlier run).")
    if not cfg.resume and state_path.exists():
        raise OutputError(f"{run} already holds a training state; pass --resume to continue it, or give "
                          "another --run-dir.")
    amp = _amp_dtype(cfg, device)
    dd.barrier()
    if dd.main:
        try:
            (run / "samples").mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"Could not create the run folder {run}: {e}") from e

    state = torch.load(state_path, map_location="cpu", weights_only=True) if cfg.resume else None
    if state is not None and state.get("version") != STATE_VERSION:
        raise BadInputError(f"{state_path} is a training state of version {state.get('version')}; this "
                            f"engine resumes version {STATE_VERSION}.")
    arch = dict(state["arch"]) if state is not None else {k: int(getattr(cfg, k)) for k in ARCH_KEYS}
    if state is not None:
        changed = [k for k in ARCH_KEYS if int(getattr(cfg, k)) != arch[k]]
        if changed and dd.main:
            log(f"resuming: the network of the saved run is kept ({', '.join(f'{k}={arch[k]}' for k in changed)})")

    t0 = time.time()
    ds = D.TextureDataset(cfg.data, strict_licence=cfg.strict_licence,
                           exclude_persons=cfg.exclude_persons)
    data = ds.load(arch["res"])
    train_idx, held_idx = D.split_by_person(data.records, cfg.holdout, cfg.seed)
    tr, ho = data.subset(train_idx), data.subset(held_idx)
    # The same three groups of persons as the ppca trainer (same seed): comparable held-out figures.
    vi, ti = D.split_by_person(ho.records, 0.5, cfg.seed + 2)
    va, te = (ho.subset(vi), ho.subset(ti)) if vi and ti else (ho, ho)
    if len(tr) < cfg.batch * dd.world:
        raise BadInputError(f"{cfg.data} has {len(tr)} training samples, fewer than one batch of "
                            f"{cfg.batch} x {dd.world} processes; use a smaller --batch or more photos.")
    t_load = time.time() - t0
    if dd.main:
        log(f"data: {len(data)} samples of {len({r.person for r in data.records})} persons at {arch['res']}px; "
            f"training on {len(tr)} ({time.time() - t0:.1f} s); {dd.world} process(es) on {device} "
            f"({dd.backend if dd.enabled else 'single'}), batch {cfg.batch} each"
            + (f", mixed precision {str(amp).replace('torch.', '')}" if amp else ""))

    torch.manual_seed(cfg.seed)  # the same initial networks on every rank (DDP also broadcasts them)
    G, Dn = build_nets(arch)
    G_ema = copy.deepcopy(G).eval()
    G, Dn, G_ema = G.to(device), Dn.to(device), G_ema.to(device)
    betas = (0.0, 0.99)
    # Lazy regularisation: the optimiser's lr and betas compensate for the penalty every k steps.
    d_ratio = cfg.r1_every / (cfg.r1_every + 1)
    g_ratio = cfg.pl_every / (cfg.pl_every + 1) if cfg.pl_weight > 0 else 1.0
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr * g_ratio, betas=tuple(b ** g_ratio for b in betas))
    opt_d = torch.optim.Adam(Dn.parameters(), lr=cfg.lr * d_ratio, betas=tuple(b ** d_ratio for b in betas))
    use_scaler = amp == torch.float16
    scaler_g = torch.amp.GradScaler("cuda", enabled=use_scaler)
    scaler_d = torch.amp.GradScaler("cuda", enabled=use_scaler)
    step, cur_nimg, epoch, pl_mean = 0, 0, 0, 0.0
    g_fixed = torch.Generator().manual_seed(cfg.seed + 7)
    fixed_z = torch.randn(16, arch["latent"], generator=g_fixed)
    if state is not None:
        G.load_state_dict(state["G"])
        Dn.load_state_dict(state["D"])
        G_ema.load_state_dict(state["G_ema"])
        opt_g.load_state_dict(state["opt_G"])
        opt_d.load_state_dict(state["opt_D"])
        scaler_g.load_state_dict(state["scaler_G"])
        scaler_d.load_state_dict(state["scaler_D"])
        step, cur_nimg, epoch = int(state["step"]), int(state["cur_nimg"]), int(state["epoch"]) + 1
        pl_mean = float(state.get("pl_mean", 0.0))
        fixed_z = state["fixed_z"]
        rngs = state.get("rng") or []
        if len(rngs) == dd.world:
            _set_rng_state(rngs[dd.rank], device)
        else:
            torch.manual_seed(cfg.seed * 1000 + dd.rank + step)
        if dd.main:
            log(f"resumed {state_path} at step {step} ({cur_nimg} images seen)")
    else:
        torch.manual_seed(cfg.seed * 1000 + dd.rank + 1)  # different z and noise on each rank
    if dd.enabled:
        import warnings
        # (1, n) weights: DDP notes their grads' strides differ from its bucket's; harmless.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        g_ddp = DDP(G, device_ids=[device.index] if device.type == "cuda" else None)
        d_ddp = DDP(Dn, device_ids=[device.index] if device.type == "cuda" else None)
    else:
        g_ddp, d_ddp = G, Dn

    loader_ds = TensorDataset(tr.albedo, tr.weight)
    sampler = DistributedSampler(loader_ds, num_replicas=dd.world, rank=dd.rank, shuffle=True,
                                 seed=cfg.seed, drop_last=True)
    loader = DataLoader(loader_ds, batch_size=cfg.batch, sampler=sampler, drop_last=True,
                        pin_memory=device.type == "cuda")

    def batches():
        nonlocal epoch
        while True:
            sampler.set_epoch(epoch)
            for b in loader:
                yield b
            epoch += 1

    kid_n = min(cfg.kid_samples, len(tr))
    g_kid = torch.Generator().manual_seed(cfg.seed + 11)
    kid_idx = torch.randperm(len(tr), generator=g_kid)[:kid_n]
    kid_z = torch.randn(kid_n, arch["latent"], generator=g_kid)
    kids: list[dict] = list(state.get("kid", [])) if state is not None else []
    batch_total = cfg.batch * dd.world

    def autocast():
        return torch.autocast(device_type="cuda", dtype=amp) if amp is not None else torch.autocast(
            device_type=device.type, enabled=False)

    def save_state():
        rngs = dd.all_gather(_rng_state(device))
        if not dd.main:
            return
        _atomic_save({"version": STATE_VERSION, "arch": arch, "step": step, "cur_nimg": cur_nimg,
                      "epoch": epoch, "pl_mean": pl_mean, "G": G.state_dict(), "D": Dn.state_dict(),
                      "G_ema": G_ema.state_dict(), "opt_G": opt_g.state_dict(), "opt_D": opt_d.state_dict(),
                      "scaler_G": scaler_g.state_dict(), "scaler_D": scaler_d.state_dict(),
                      "fixed_z": fixed_z, "rng": rngs, "kid": kids, "config": _plain(asdict(cfg))},
                     state_path)

    def log_line(obj: dict) -> None:
        with open(run / "log.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(obj) + "\n")

    from tqdm import tqdm
    bar = tqdm(total=cfg.steps, initial=min(step, cfg.steps), disable=not (dd.main and cfg.progress),
               desc="gan", unit="step", file=sys.stderr, dynamic_ncols=True)
    it = batches()
    t_train = time.time()
    start_step = step
    losses = {}
    step_times: list[float] = []  # per training step (the periodic sampling/KID/saving excluded)
    while step < cfg.steps:
        t_step = time.time()
        real, weight = next(it)
        real = real.to(device, non_blocking=True)
        weight = weight.to(device, non_blocking=True)
        if cfg.colour_jitter > 0:
            gain = 1 + (torch.rand(real.shape[0], 3, 1, 1, device=device) * 2 - 1) * cfg.colour_jitter
            real = (real * gain).clamp(0, 1)
        x = real * 2 - 1
        B = x.shape[0]

        # --- discriminator: logistic loss, lazy R1 on the reals' visible texels --------------
        do_r1 = cfg.r1_gamma > 0 and step % cfg.r1_every == 0
        with torch.no_grad(), autocast():
            fake = G(torch.randn(B, arch["latent"], device=device))[0]
        real_in = _masked_input(x, weight).detach().requires_grad_(do_r1)
        fake_in = _masked_input(fake.float(), weight)
        with autocast():
            logits = d_ddp(torch.cat([real_in, fake_in])).float()
        lr_, lf = logits[:B], logits[B:]
        loss_d = F.softplus(lf).mean() + F.softplus(-lr_).mean()
        if do_r1:
            scale = scaler_d.get_scale() if use_scaler else 1.0
            g, = torch.autograd.grad(lr_.sum() * scale, real_in, create_graph=True)
            r1 = (g[:, :3].float() / scale).square().sum([1, 2, 3]).mean()
            loss_d = loss_d + r1 * (cfg.r1_gamma / 2) * cfg.r1_every
            losses["r1"] = float(r1.detach())
        opt_d.zero_grad(set_to_none=True)
        scaler_d.scale(loss_d).backward()
        scaler_d.step(opt_d)
        scaler_d.update()

        # --- generator: non-saturating loss through the reals' masks (+ path length) --------
        for p in Dn.parameters():
            p.requires_grad_(False)
        do_pl = cfg.pl_weight > 0 and step % cfg.pl_every == 0
        with autocast():
            fake, ws = g_ddp(torch.randn(B, arch["latent"], device=device))
            # Dn itself, not its DDP wrapper: no D gradients here, so D's reducer stays idle.
            lg = Dn(_masked_input(fake, weight)).float()
        loss_g = F.softplus(-lg).mean()
        if do_pl:
            noise = torch.randn_like(fake, dtype=torch.float32) / math.sqrt(fake.shape[2] * fake.shape[3])
            pg, = torch.autograd.grad((fake.float() * noise).sum(), ws, create_graph=True)
            plen = pg.float().square().sum(1).sqrt()
            pl_mean = pl_mean + 0.01 * (float(plen.detach().mean()) - pl_mean)
            pl_pen = (plen - pl_mean).square().mean()
            loss_g = loss_g + pl_pen * cfg.pl_weight * cfg.pl_every
            losses["pl"] = float(pl_pen.detach())
        opt_g.zero_grad(set_to_none=True)
        scaler_g.scale(loss_g).backward()
        scaler_g.step(opt_g)
        scaler_g.update()
        for p in Dn.parameters():
            p.requires_grad_(True)

        # --- EMA of G -------------------------------------------------------------------------
        cur_nimg += batch_total
        step += 1
        ema_nimg = cfg.ema_kimg * 1000
        if cfg.ema_rampup > 0:
            ema_nimg = min(ema_nimg, cur_nimg * cfg.ema_rampup)
        beta = 0.5 ** (batch_total / max(ema_nimg, 1e-8))
        with torch.no_grad():
            for pe, p in zip(G_ema.parameters(), G.parameters()):
                pe.copy_(p.detach().lerp(pe, beta))
            for be, b in zip(G_ema.buffers(), G.buffers()):
                be.copy_(b)

        losses.update(d=float(loss_d.detach()), g=float(loss_g.detach()))  # (also syncs the GPU)
        step_times.append(time.time() - t_step)
        bar.update(1)
        if step % 10 == 0 or step == cfg.steps:
            bar.set_postfix(d=f"{losses['d']:.3f}", g=f"{losses['g']:.3f}")
        last = step == cfg.steps
        if dd.main and cfg.sample_every and (step % cfg.sample_every == 0 or last):
            _grid(G_ema, fixed_z.to(device), run / "samples" / f"step-{step:06d}.png")
        kid = None
        if dd.main and cfg.kid_every and (step % cfg.kid_every == 0 or last):
            kid = _kid(G_ema, tr.albedo[kid_idx], tr.weight[kid_idx], kid_z, device)
            kids.append({"step": step, "kid": kid})
            bar.write(f"step {step}: KID {kid:.5f} ({kid_n} masked reals vs EMA fakes)", file=sys.stderr)
        if dd.main and (step % 10 == 0 or last or kid is not None):
            log_line({"step": step, "nimg": cur_nimg, "time_s": round(time.time() - t_train, 2),
                      **{k: round(v, 5) for k, v in losses.items()}, **({"kid": kid} if kid is not None else {})})
        if (cfg.ckpt_every and step % cfg.ckpt_every == 0) or last:
            save_state()
    bar.close()
    dt = time.time() - t_train
    done = step - start_step
    if not dd.main:
        return None
    s_per_step = dt / max(done, 1)
    # Steady state: the median step after a warm-up (the first steps allocate and tune kernels).
    warm = sorted(step_times[min(3, len(step_times) // 2):]) or [s_per_step]
    med = warm[len(warm) // 2]
    timing = {"load": round(t_load, 1), "train": round(dt, 1), "steps": done,
              "s_per_step": round(s_per_step, 4), "images_per_s": round(done * batch_total / max(dt, 1e-9), 2),
              "median_s_per_step": round(med, 4), "median_images_per_s": round(batch_total / max(med, 1e-9), 2)}
    if device.type == "cuda":
        timing["peak_gpu_mem_gb"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2)
    if done:
        log(f"trained {done} steps in {dt:.1f} s: {s_per_step:.3f} s/step, "
            f"{timing['images_per_s']:.1f} images/s overall, median step {med:.3f} s = "
            f"{timing['median_images_per_s']:.1f} images/s ({dd.world} x batch {cfg.batch})")
    from .train import write_generator
    meta = {"model": "gan", "res": arch["res"], "arch": arch, "steps": step, "images_seen": cur_nimg,
            "seed": cfg.seed, "holdout_fraction": cfg.holdout, "excluded_persons": sorted(cfg.exclude_persons), "colour": "linear",
            "w_truncation": cfg.truncation, "noise_std": 0.03,
            "losses": {"r1_gamma": cfg.r1_gamma, "pl_weight": cfg.pl_weight, "ema_kimg": cfg.ema_kimg,
                       "colour_jitter": cfg.colour_jitter},
            "kid": {"feature": "fixed random conv net (seed 1234), masked UVs at 64px, standardised on the "
                               "real set; comparable only between runs of this trainer on the same data",
                    "history": kids},
            "data": {**ds.summary(), "train_samples": len(tr), "validation_samples": len(va),
                     "heldout_samples": len(te), "builder": ds.meta.get("builder")},
            "heldout_persons": sorted({r.person for r in te.records}),
            "validation_persons": sorted({r.person for r in va.records}),
            "timings_s": timing, "world_size": dd.world, "device": str(device.type),
            "amp": str(amp).replace("torch.", "") if amp else "off", "run_dir": str(run)}
    g_out = copy.deepcopy(G_ema).cpu().float().eval()
    module = N.ExportedGenerator(g_out, cfg.truncation)
    if cfg.out_res and cfg.out_res != arch["res"]:
        module = _Resized(module, cfg.out_res)
    write_generator(module, out, latent_dim=arch["latent"], output_range="-1,1", extra=meta)
    meta["size_bytes"] = out.stat().st_size
    log(f"wrote {out} ({meta['size_bytes'] / 1e6:.1f} MB): EMA generator, latent {arch['latent']} at "
        f"{arch['res']}px" + (f"; last KID {kids[-1]['kid']:.5f}" if kids else "") + f"; run folder {run}")
    return meta


class _Resized(nn.Module):
    def __init__(self, inner: nn.Module, res: int):
        super().__init__()
        self.inner = inner
        self.res = int(res)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.inner(z), size=[self.res, self.res], mode="bilinear", align_corners=False)


def _plain(d: dict) -> dict:
    return {k: v for k, v in d.items() if isinstance(v, (int, float, str, bool, type(None)))}


def run(cfg: GanConfig) -> int:
    try:
        train_gan(cfg)
    except EngineError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return e.exit_code
    return 0
