"""``python -m engine texture dataset``: photos -> a UV texture dataset (format v1: data.json,
manifest.jsonl and shard-NNNNN.npz; see ``build``), one fit per photo.

For each photo: detect, the fit's coarse, unwrap and fine steps (``fit/pipeline.py``'s steps, minus
its albedo completion, which a dataset must not have), then the photo unwrapped into the atlas at
``res`` on the final geometry and de-lit by the fitted SH light (floored at ``shade_floor x
exposure`` as the fit's albedo step does). Per-texel weight:

    weight = visibility x cos(view angle) x edge fade x skin probability x (face or head/neck region)

(``uvspace.unwrap``'s confidence is cos^2 x visibility x fade; its square root is used, so the
falloff is the cosine). The skin probability is 1 inside the lips' landmark contour. The unwrap ignores the detector's face outline: forehead, ears and neck are
kept where they are seen and look like skin (``skin.py``). Eyeballs, eye and mouth sockets get 0.

Mirroring through the face box's left/right symmetry: colour = (w a + 0.5 w' a') / (w + 0.5 w'),
where a', w' are the mirrored texel's colour and weight (the texel's own sample is preferred), and
weight = max(w, w') (a texel seen only on the other side is trusted as much as that side).

Everything is appended: shards are written atomically (tmp + rename) and a manifest line is
appended (flush + fsync) after its shard is on disk, so an interrupted build resumes where it
stopped. A re-run never rewrites a finished shard; it starts a new one.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io.output import make_folders, remove_created

log = logging.getLogger("engine.texture")

FORMAT = "ganfit-texture-dataset"
VERSION = 1
SHARD_SIZE = 64
PHOTO_EXT = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
MIRROR_OWN_PREFERENCE = 0.5   # the mirrored sample's weight factor in the colour blend

LONDON_CANADA_ATTRIBUTION = (
    "Face Research Lab London Set and Canada set, CC BY 4.0: DeBruine, L., & Jones, B. (2017). Face "
    "Research Lab London Set (Version 5). figshare. https://doi.org/10.6084/m9.figshare.5047666.v5 ; "
    "DeBruine, L., & Jones, B. (2017). Young Adult White Faces with Manipulated Versions (Version 1). "
    "figshare. https://doi.org/10.6084/m9.figshare.4220517.v1")
# congress-pd/LICENSE.md: the public-domain claim is strongest for recent official portraits; its
# stricter subset is last_congress >= 110 (a proxy). Recorded per file as flags.pd_strict.
CONGRESS_STRICT_FROM = 110


class Stop(Exception):
    """Ctrl-C / SIGTERM: stop between photos."""


# ----------------------------------------------------------------------------------- sources
@dataclass
class Source:
    path: Path
    given: str          # as the user gave it (relative to a given folder: folder/name)
    id: str             # "<folder>/<stem>"
    person: str
    dataset: str
    licence: str
    attribution: str | None
    flags: dict


def _congress_meta(folder: Path) -> dict[str, dict]:
    f = folder / "metadata.csv"
    if not f.is_file():
        return {}
    with open(f, newline="", encoding="utf-8") as fh:
        return {row["file"]: row for row in csv.DictReader(fh)}


def describe(path: Path, given: str, meta_cache: dict) -> Source:
    """Dataset, person, licence and attribution of one photo, from its folder's conventions
    (../shared/faces/*/README.md and LICENSE.md); an unknown folder gets licence "unknown"."""
    folder = path.parent
    name, stem = folder.name, path.stem
    sid = f"{name}/{stem}"
    if name == "london-canada" or stem.startswith(("london_", "canada_")):
        m = re.match(r"(london|canada)_(\d+)", stem)
        person = f"{m.group(1)}_{m.group(2)}" if m else stem
        return Source(path, given, sid, person, "london-canada", "CC BY 4.0", LONDON_CANADA_ATTRIBUTION, {})
    if name == "congress-pd":
        if folder not in meta_cache:
            meta_cache[folder] = _congress_meta(folder)
        row = meta_cache[folder].get(path.name, {})
        try:
            strict = int(row.get("last_congress", "0")) >= CONGRESS_STRICT_FROM
        except ValueError:
            strict = False
        licence = row.get("licence") or "public domain (US federal government work)"
        return Source(path, given, sid, row.get("bioguide_id") or stem, "congress-pd", licence, None,
                      {"pd_strict": strict, "last_congress": row.get("last_congress")})
    return Source(path, given, sid, stem, name, "unknown", None, {})


def collect(inputs: list[str]) -> list[Source]:
    """Photos named or found (not recursively) in the folders given, in sorted order per folder."""
    out: list[Source] = []
    seen: dict[str, Path] = {}
    cache: dict = {}
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in PHOTO_EXT)
            pairs = [(f, str(Path(item) / f.name)) for f in files]
        elif p.is_file():
            pairs = [(p, item)]
        else:
            raise FileNotFoundError(f"No such photo or folder: {item}")
        for f, given in pairs:
            s = describe(f.absolute(), given, cache)
            if s.id in seen:
                if seen[s.id] != s.path:
                    print(f"warning: {given} has the same id {s.id!r} as {seen[s.id]}; skipped "
                          "(ids are <folder>/<file stem>)", file=sys.stderr)
                continue
            seen[s.id] = s.path
            out.append(s)
    return out


# ------------------------------------------------------------------------------ the manifest
def read_manifest(path: Path) -> dict[str, dict]:
    """id -> its last manifest line. A partial last line (a crash mid-write) is cut off."""
    done: dict[str, dict] = {}
    if not path.exists():
        return done
    raw = path.read_bytes()
    if raw and not raw.endswith(b"\n"):
        cut = raw.rfind(b"\n") + 1
        log.warning("manifest: dropping a partial last line (%d bytes); that photo is redone", len(raw) - cut)
        with open(path, "r+b") as fh:
            fh.truncate(cut)
        raw = raw[:cut]
    for n, line in enumerate(raw.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            log.warning("manifest line %d is not JSON; ignored", n)
            continue
        done[rec["id"]] = rec
    return done


def append_line(path: Path, rec: dict) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


class ShardWriter:
    """The open shard: rewritten atomically after every sample until it holds ``SHARD_SIZE``."""

    def __init__(self, root: Path):
        self.root = root
        nums = [int(m.group(1)) for f in root.glob("shard-*.npz")
                if (m := re.fullmatch(r"shard-(\d{5})\.npz", f.name))]
        self.num = max(nums) + 1 if nums else 0
        self.albedo: list[np.ndarray] = []
        self.weight: list[np.ndarray] = []
        self.ids: list[str] = []

    @property
    def name(self) -> str:
        return f"shard-{self.num:05d}.npz"

    def add(self, sid: str, albedo: np.ndarray, weight: np.ndarray) -> tuple[str, int]:
        if len(self.ids) >= SHARD_SIZE:
            self.num += 1
            self.albedo, self.weight, self.ids = [], [], []
        self.albedo.append(albedo.astype(np.float16))
        self.weight.append(weight.astype(np.float16))
        self.ids.append(sid)
        final = self.root / self.name
        tmp = self.root / (self.name + ".tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, albedo=np.stack(self.albedo), weight=np.stack(self.weight), ids=np.array(self.ids))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        return self.name, len(self.ids) - 1


# ------------------------------------------------------------------------------- the build
@dataclass
class Sample:
    albedo: np.ndarray        # (R, R, 3) float32 linear, row 0 = top (v = 1)
    weight: np.ndarray        # (R, R) float32
    metrics: dict
    coverage: float
    timings: dict
    skin: dict                # the skin model's YCbCr mean, sigma and inlier share (for filtering)


class Builder:
    """Loads the face model, recogniser and render context once; ``process`` one photo at a time."""

    def __init__(self, res: int = 256, preset: str = "balanced", seed: int = 0, device: str = "cpu",
                 max_steps: int | None = None, recognizer: str = "dlib", threads: int | None = None):
        import torch

        from ..fit.session import FitOptions, FitSession

        # The fit's models, loaded once (the batch command's FitSession); a dataset is always built
        # with the per-texel texture, whatever the fit command's default texture model is.
        session = FitSession(FitOptions(preset=preset, device=device, seed=seed, max_steps=max_steps,
                                        recognizer=recognizer, threads=threads, texture_model="texel"))
        self.device = session.device
        self.res = res
        # The unwrap needs the geometry the photo was fitted with; the unseen head's completion
        # (fit/unseen.py, after the fine stage) moves only what the photo does not show, so it is
        # left out, and the shipped model's data stay what they were when it was built.
        from dataclasses import replace
        self.cfg = replace(session.cfg, unseen=replace(session.cfg.unseen, enabled=False))
        self.ctx = session.ctx
        model = session.model
        rec = session.recognizer
        self.env = replace(session.env, cfg=self.cfg)
        from ..fit import uvspace
        self.uvr = uvspace.uv_raster(self.ctx, model, res)
        names = model.region_names
        keep = [i for i, n in enumerate(names) if n in ("face", "head_neck")]
        region = self.uvr.region
        self.skin_region = torch.zeros_like(region, dtype=torch.bool)
        for i in keep:
            self.skin_region |= region == i
        self.info = {"engine": None, "preset": preset, "seed": seed, "max_steps": max_steps,
                     "recognizer": rec.name if rec is not None else None, "device": str(self.device),
                     "backend": self.ctx.backend}

    def process(self, src: Source, cancel) -> Sample:
        import torch

        from ..camera import DEFAULT_FOCAL_35MM, Intrinsics, focal_px_from_35mm
        from ..fit.hooks import Hooks
        from ..fit.stages import detect
        from ..io.image import load_photo, read_exif_focal_35mm

        timings = {}
        t0 = time.perf_counter()
        photo = load_photo(src.path)
        H, W = photo.shape[:2]
        f35 = read_exif_focal_35mm(src.path) or DEFAULT_FOCAL_35MM
        K_full = Intrinsics.from_focal(focal_px_from_35mm(f35, W, H), W, H)
        face = detect.detect(photo, "mediapipe", str(self.device), 0, src.path)
        timings["detect"] = time.perf_counter() - t0
        hooks = Hooks(cancel=cancel)
        params, sh, exposure, metrics, crop, outline, ft = self._fit(photo, K_full, face, hooks)
        timings.update(ft)
        t = time.perf_counter()
        with torch.no_grad():
            albedo, weight, sk = self._unwrap(photo, K_full, face.det68, params, sh, exposure, crop)
        timings["unwrap"] = time.perf_counter() - t
        coverage = float((weight > 0.1).mean())
        skin_info = {"mean_ycc": [round(float(x), 4) for x in sk.mean],
                     "sigma_ycc": [round(float(x), 4) for x in np.sqrt(np.diag(sk.cov))],
                     "inliers": round(sk.inliers / max(sk.samples, 1), 3)}
        return Sample(albedo, weight, metrics, coverage, timings, skin_info)

    def _fit(self, photo, K_full, face, hooks):
        """``pipeline.fit``'s coarse, unwrap and fine steps (its albedo step is not wanted)."""
        import torch

        from ..fit.stages import coarse, detect, fine, unwrap
        from ..lighting import exposure_from_white_point
        env, m, cfg, dev = self.env, self.env.model, self.env.cfg, self.device
        torch.manual_seed(cfg.seed)
        tm = {}
        t = time.perf_counter()
        framed = detect.frame(photo, face.det68, face.dense, K_full, m, cfg, dev)
        rough = coarse.run(m, cfg, framed, face.expr_init, hooks, dev)
        tm["coarse"] = time.perf_counter() - t
        hooks.check_cancel()
        t = time.perf_counter()
        exposure = exposure_from_white_point(photo, full=cfg.unwrap.exposure_full, none=cfg.unwrap.exposure_none)
        start = unwrap.run(env.ctx, m, cfg, rough.params, framed.crop, env.texture_factory, dev, exposure)
        refined = fine.run(env.ctx, m, cfg, rough, start, framed, env.recognizer, hooks, dev)
        tm["fine"] = time.perf_counter() - t
        metrics = {k: round(float(v), 6) for k, v in refined.metrics.items()}
        return refined.params, refined.params.sh, start.exposure, metrics, framed.crop, framed.outline, tm

    def _unwrap(self, photo, K_full, det68, p, sh, exposure, crop):
        import torch

        from ..fit import uvspace
        from ..fit.crop import make_crop
        from ..lighting import shading
        from ..render.colour import srgb_to_linear
        from ..render.forward import face_geometry, render_depth
        from . import skin

        m, cfg = self.env.model, self.cfg
        ac = cfg.albedo
        hi_res = int(min(max(crop.side, ac.photo_res_min), ac.photo_res_max))
        center = np.array([crop.x0 + crop.side / 2, crop.y0 + crop.side / 2])
        # No face outline: the forehead, ears and neck are kept where seen (the skin model decides).
        hi = make_crop(photo, center, crop.side, hi_res, K_full, self.device, None)
        geom = face_geometry(m, p.shape, p.expr, p.rot, p.trans)
        depth = render_depth(self.ctx, geom, hi.K, min(hi_res, ac.depth_res))
        pos, nrm, mask = uvspace.texel_geometry(self.ctx, self.uvr, geom.cam, geom.normals, m)
        colour, conf = uvspace.unwrap(hi.image, hi.face_valid, depth, hi.K, pos, nrm, mask)
        vis = conf.clamp_min(0).sqrt() * self.skin_region[None]
        delit = (srgb_to_linear(colour) / shading(nrm, sh).clamp_min(ac.shade_floor * exposure)).clamp(0, 1)
        sk = skin.fit_photo(photo, det68)
        prob = torch.from_numpy(sk.probability(colour[0].cpu().numpy().clip(0, 1))).to(vis)
        # The lips are face texture, not an occluder: the skin model does not judge them.
        lips = skin.lips_mask((det68 - np.array([crop.x0, crop.y0])) * (hi_res / crop.side), hi_res, hi_res)
        lips_t = torch.from_numpy(lips.astype(np.float32)).to(vis)[None, ..., None].expand(1, -1, -1, 3)
        on_lips, _ = uvspace.unwrap(lips_t.contiguous(), hi.face_valid, depth, hi.K, pos, nrm, mask)
        prob = torch.where(on_lips[0, ..., 0] > 0.5, torch.ones_like(prob), prob)
        w = (vis * prob[None]).clamp(0, 1)
        # Mirror through the face box's symmetry.
        a_m = uvspace.mirror_face(delit, m)
        w_m = uvspace.mirror_face(w[..., None], m)[..., 0]
        lam = MIRROR_OWN_PREFERENCE
        num = delit * w[..., None] + a_m * (lam * w_m)[..., None]
        den = (w + lam * w_m)[..., None]
        albedo = torch.where(den > 1e-6, num / den.clamp_min(1e-6), delit)
        weight = torch.maximum(w, w_m)
        albedo = torch.where(weight[..., None] > 0, albedo, torch.zeros_like(albedo))
        # Renderer layout (row 0 = v 0) -> image layout (row 0 = top).
        a = albedo[0].flip(0).cpu().numpy().astype(np.float32)
        wt = weight[0].flip(0).cpu().numpy().astype(np.float32)
        return a, wt, sk


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_out(out: Path, res: int) -> None:
    repo = Path(__file__).resolve().parents[2]
    try:
        out.resolve().relative_to(repo)
        inside = (repo / ".git").exists()
    except ValueError:
        inside = False
    if inside:
        raise SystemExit(f"error: the dataset folder {out} is inside the repository {repo}; put it elsewhere.")
    if out.exists() and not out.is_dir():
        raise SystemExit(f"error: {out} exists and is not a folder.")
    meta = out / "data.json"
    if out.is_dir() and not meta.exists() and any(out.iterdir()):
        raise SystemExit(f"error: {out} is not empty and holds no data.json; give an empty or new folder.")
    if meta.exists():
        d = json.loads(meta.read_text(encoding="utf-8"))
        if d.get("format") != FORMAT or d.get("version") != VERSION:
            raise SystemExit(f"error: {meta} is not a {FORMAT} v{VERSION} dataset.")
        if d.get("res") != res:
            raise SystemExit(f"error: {out} holds a dataset at --res {d.get('res')}; this run asked for "
                             f"{res}. Use --res {d.get('res')} to resume it, or another folder.")


def strict_licence_ok(flags: dict | None) -> bool:
    """Inside its source's stricter licence subset (``--strict-licence``): every photo but those
    flagged ``pd_strict: false`` (congress-pd portraits of members who left before the 110th
    Congress)."""
    return (flags or {}).get("pd_strict", True) is not False


def build(inputs: list[str], out: str | Path, res: int = 256, preset: str = "balanced",
          limit: int | None = None, retry_failed: bool = False, seed: int = 0, device: str = "cpu",
          max_steps: int | None = None, recognizer: str = "dlib", threads: int | None = None,
          progress: bool = True, strict_licence: bool = False) -> dict:
    """Build or resume the dataset; returns counts {"ok", "failed", "skipped", "stopped"}.

    ``strict_licence``: leave out photos outside their source's stricter licence subset
    (``flags.pd_strict`` false), as ``texture train --strict-licence`` would."""
    from tqdm import tqdm

    from .. import __version__
    from ..errors import CancelledError, MissingModelError

    out = Path(out).expanduser()
    _check_out(out, res)
    sources = collect(inputs)
    if strict_licence:
        left = [s for s in sources if strict_licence_ok(s.flags)]
        if len(left) < len(sources):
            print(f"--strict-licence: {len(sources) - len(left)} photos outside their source's stricter "
                  "licence subset left out", file=sys.stderr)
        sources = left
    try:
        created = make_folders(out)
    except OSError as e:
        raise SystemExit(f"error: cannot create the dataset folder {out}: {e.strerror or e}") from None
    manifest = out / "manifest.jsonl"
    done = read_manifest(manifest)
    todo = [s for s in sources
            if not (s.id in done and (done[s.id]["status"] == "ok" or
                                      (done[s.id]["status"] == "failed" and not retry_failed)))]
    skipped = len(sources) - len(todo)
    if limit is not None:
        todo = todo[:limit]
    counts = {"ok": 0, "failed": 0, "skipped": skipped, "stopped": False}
    print(f"{len(sources)} photos: {skipped} already done, {len(todo)} to do -> {out}", file=sys.stderr)
    if not todo:
        return counts

    stop = threading.Event()
    old = {}

    def on_signal(signum, frame):  # noqa: ARG001
        if stop.is_set():  # the second one stops at once (a half-written shard stays a .tmp)
            raise KeyboardInterrupt
        stop.set()
        print("\nstopping: the photo being fitted is dropped (redone on resume); the manifest stays consistent",
              file=sys.stderr)

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            old[sig] = signal.signal(sig, on_signal)
        except ValueError:  # not the main thread
            pass
    try:
        try:
            builder = Builder(res, preset, seed, device, max_steps, recognizer, threads)
        except BaseException:
            remove_created(created)  # a setup failure leaves no empty dataset folder behind
            raise
        meta = out / "data.json"
        if not meta.exists():
            info = dict(builder.info, engine=__version__, mirror="colour (w a + 0.5 w' a')/(w + 0.5 w'), weight max(w, w')",
                        coverage="fraction of all res x res texels with weight > 0.1",
                        skin="engine/texture/skin.py: YCbCr Gaussian from cheeks + forehead, trimmed")
            d = {"format": FORMAT, "version": VERSION, "res": res, "uv_layout": "ganfit-atlas-v1",
                 "colour": "linear", "row0": "top", "builder": info}
            tmp = meta.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(d, indent=1) + "\n", encoding="utf-8")
            os.replace(tmp, meta)
        else:
            was = json.loads(meta.read_text(encoding="utf-8")).get("builder", {}).get("preset")
            if was != preset:
                print(f"warning: {out} was built with --preset {was}; this run adds photos fitted with "
                      f"--preset {preset} (each manifest line records its preset)", file=sys.stderr)
        shards = ShardWriter(out)
        bar = tqdm(todo, unit="photo", disable=not progress, file=sys.stderr, dynamic_ncols=True)
        for src in bar:
            if stop.is_set():
                counts["stopped"] = True
                break
            bar.set_postfix_str(src.id)
            t = time.perf_counter()
            rec = {"id": src.id, "source": src.given, "sha256": None, "person": src.person,
                   "dataset": src.dataset, "licence": src.licence, "attribution": src.attribution,
                   "flags": src.flags, "preset": builder.cfg.preset}
            try:
                rec["sha256"] = _sha256(src.path)
                s = builder.process(src, stop.is_set)
            except CancelledError:
                counts["stopped"] = True
                break
            except KeyboardInterrupt:
                counts["stopped"] = True
                break
            except MissingModelError:  # the environment, not the photo: every photo would fail
                raise
            except Exception as e:  # noqa: BLE001 - a bad photo is reported and skipped
                msg = getattr(e, "message", None) or f"{type(e).__name__}: {e}"
                rec.update(status="failed", error=str(msg), metrics=None, coverage=0.0, shard=None, index=None)
                append_line(manifest, rec)
                counts["failed"] += 1
                tqdm.write(f"FAILED {src.id}: {msg}", file=sys.stderr)
                continue
            shard, index = shards.add(src.id, s.albedo, s.weight)
            dt = time.perf_counter() - t
            rec.update(status="ok", error=None, metrics=s.metrics, coverage=round(s.coverage, 4),
                       shard=shard, index=index, skin=s.skin,
                       timings={k: round(v, 2) for k, v in {**s.timings, "total": dt}.items()})
            append_line(manifest, rec)
            counts["ok"] += 1
            tqdm.write(f"ok {src.id}: {dt:.1f} s, coverage {s.coverage:.2f}, landmark error "
                      f"{s.metrics.get('landmark_error_iod', float('nan')):.3f} IOD", file=sys.stderr)
        bar.close()
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
    return counts


def contact_sheet(data: str | Path, png: str | Path, count: int = 24, columns: int = 4) -> int:
    """A PNG of the first ``count`` ok samples: each the face box of the albedo (sRGB-encoded) and
    of its weight, side by side. Returns the number of samples drawn."""
    from PIL import Image

    data = Path(data)
    recs = [r for r in read_manifest(data / "manifest.jsonl").values() if r["status"] == "ok"][:count]
    if not recs:
        raise ValueError(f"{data} holds no finished samples")
    res = json.loads((data / "data.json").read_text(encoding="utf-8"))["res"]
    side = int(round(res * 0.75))  # the face box: the atlas' top-left 3/4 (image layout)
    shards: dict = {}
    tiles = []
    for r in recs:
        if r["shard"] not in shards:
            shards[r["shard"]] = np.load(data / r["shard"])
        z = shards[r["shard"]]
        a = z["albedo"][r["index"]].astype(np.float32)[:side, :side]
        w = z["weight"][r["index"]].astype(np.float32)[:side, :side]
        srgb = np.where(a <= 0.0031308, 12.92 * a, 1.055 * np.clip(a, 0.0031308, None) ** (1 / 2.4) - 0.055)
        tiles.append(np.concatenate([srgb, np.repeat(w[..., None], 3, 2)], 1))
    while len(tiles) % columns:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.concatenate(tiles[i:i + columns], 1) for i in range(0, len(tiles), columns)]
    img = (np.clip(np.concatenate(rows, 0), 0, 1) * 255 + 0.5).astype(np.uint8)
    Image.fromarray(img).save(png)
    return len(recs)
