"""Issue 13's two tables from one set of fits of the London neutral photos (../shared/faces/london-canada):

    python scripts/eval_latent.py [-n 8] [--every K] [--model PT] [--preset balanced] [-o out/eval_latent] [--json]

Each person's neutral photo is fitted once per texture configuration (``texel``; the learned
model with and without the detail layer), by ``engine batch`` (resumable: rerun to finish).

1. **Landmarks vs human annotations.** The set's ``.pts189.txt`` (the FRL/WebMorph 189-point
   template) holds manually placed points. Which template point is which iBUG-68 point is found on
   ``--calibrate`` photos not used for the table: for each of ``POINTS`` the template index whose
   position is nearest, on average, to the detector's mapped point (a discrete choice; the points
   are well separated, so it does not favour the detector by more than the choice). The table:
   mean error of the detector's mapped 68 points and of the fit's projected model points at those
   points, in units of the annotated outer-eye-corner distance (also with each source's mean offset
   per point removed: the template's and iBUG's definitions of a point can differ by a constant,
   e.g. the brow's outer end and the nose tip). The chin (8) is the fit's sliding
   jaw point (closest point of the jawline to the detector's), so it is partly the detector's.
2. **Identity.** The fit's render (``render.png``) over mid grey, embedded with the engine's dlib
   recogniser (the one the fit's identity loss uses, so it flatters the fit), against the same
   person's smiling photo (never seen by the fit) and against the other people's smiling photos.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GANFIT_SHARED", REPO.parent / "shared"))
FACES = SHARED / "faces" / "london-canada"

# Well-defined iBUG-68 points: outer/inner eye corners, brow ends, nose tip, nostril wings,
# mouth corners, upper/lower lip middles, chin.
POINTS = {36: "R eye outer", 39: "R eye inner", 42: "L eye inner", 45: "L eye outer", 17: "R brow outer",
          26: "L brow outer", 30: "nose tip", 31: "R nostril", 35: "L nostril", 48: "R mouth corner",
          54: "L mouth corner", 51: "upper lip top", 57: "lower lip bottom", 8: "chin (sliding)"}
CONFIGS = {"texel": ["--texture-model", "texel"],
           "learned+detail": ["--texture-model", "default", "--detail"],
           "learned": ["--texture-model", "default", "--no-detail"]}


def fit_all(photos: list[Path], out: Path, preset: str, extra: list[str]) -> dict[str, dict]:
    """Fit ``photos`` with ``engine batch`` (models loaded once; resumable: a rerun fits only what
    is missing) into ``out``/<photo stem>/; their result.json by stem (missing: the fit failed)."""
    src = out / "photos"
    src.mkdir(parents=True, exist_ok=True)
    for p in photos:
        link = src / p.name
        if not link.exists():
            link.symlink_to(p.resolve())
    cmd = [sys.executable, "-m", "engine", "batch", str(src), "-o", str(out / "fits"), "--preset", preset,
           "--no-progress", *extra]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    if p.returncode not in (0, 1):
        raise SystemExit(f"batch failed ({p.returncode}): {p.stderr.strip()[-2000:]}")
    done = {}
    for photo in photos:
        r = out / "fits" / photo.stem / "result.json"
        if r.is_file():
            done[photo.stem] = json.loads(r.read_text())
        else:
            print(f"  {photo.name}: fit failed (see {out / 'fits' / 'manifest.jsonl'})", file=sys.stderr)
    return done


def heldout_persons(model: Path | None = None) -> set[str]:
    """The persons a texture model was not trained on (its checkpoint's held-out and excluded
    persons; the validation persons chose only its component count). Default: the shipped one."""
    from engine.fit.texture import DEFAULT_MODEL, load_generator
    _, meta = load_generator(model or DEFAULT_MODEL)
    return set(meta.get("heldout_persons") or []) | set(meta.get("excluded_persons") or [])


def human(photo: Path) -> np.ndarray:
    return np.loadtxt(photo.with_suffix("").as_posix() + ".pts189.txt")


def calibrate(photos: list[Path]) -> dict[int, int]:
    """iBUG index -> template index, from the detector on these photos."""
    from engine.fit.stages.detect import detect
    from engine.io.image import load_photo
    d = []
    for p in photos:
        face = detect(load_photo(p), "mediapipe", "cpu", 0, p)
        h = human(p)
        iod = np.linalg.norm(face.det68[36] - face.det68[45])
        d.append(np.linalg.norm(face.det68[list(POINTS)][:, None] - h[None], axis=-1) / iod)  # (P, 189)
    mean = np.mean(d, 0)
    return {i: int(mean[k].argmin()) for k, i in enumerate(POINTS)}


def embed_images(rec, images: list[np.ndarray]) -> np.ndarray:
    """dlib embeddings of RGB uint8 images, aligned by their detected landmarks."""
    import torch

    from engine.perception.align import align, five_points_from_68
    from engine.perception.landmarks import detect_faces
    out = []
    for img in images:
        faces = detect_faces(img, backend="mediapipe", device="cpu")
        if not faces:
            out.append(None)
            continue
        p5 = torch.from_numpy(np.asarray(five_points_from_68(faces[0].landmarks68), np.float32))[None]
        t = torch.from_numpy(img.astype(np.float32) / 255).permute(2, 0, 1)[None]
        with torch.no_grad():
            chip = align(t, p5, rec.template, rec.input_size)[0]
            e, _ = rec.embed(chip)
        out.append(torch.nn.functional.normalize(e, dim=-1)[0].numpy())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=8, help="people (London neutral/smiling pairs)")
    ap.add_argument("--all-people", action="store_true",
                    help="the first n people; default: people the texture model never saw (its "
                         "checkpoint's heldout_persons and excluded_persons), so its own training data "
                         "does not flatter it")
    ap.add_argument("--model", type=Path, help="texture model for the learned configurations (default: "
                    "the shipped one), e.g. one trained with 'texture train --exclude-persons'")
    ap.add_argument("--every", type=int, default=1, help="take every k-th eligible person (a spread sample)")
    ap.add_argument("--calibrate", type=int, default=4, help="photos for the template correspondence")
    ap.add_argument("--preset", default="balanced")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("-o", "--out", type=Path, default=REPO / "out" / "eval_latent")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    neutral = sorted(FACES.glob("london_*_neutral.jpg"))
    neutral = [p for p in neutral if Path(str(p).replace("_neutral", "_smiling")).is_file()
               and Path(p.with_suffix("").as_posix() + ".pts189.txt").is_file()]
    if a.all_people:  # every k-th of all people, none of them a calibration photo
        calib = neutral[-a.calibrate:]
        people = [p for p in neutral if p not in calib][:: a.every][: a.n]
    else:
        held = heldout_persons(a.model)
        people = [p for p in neutral if p.stem.rsplit("_", 1)[0] in held][:: a.every][: a.n]
        calib = [p for p in neutral if p not in people][-a.calibrate:]
    corr = calibrate(calib)
    print("template points:", {POINTS[i]: j for i, j in corr.items()})
    from PIL import Image

    from engine.perception.recognizer import load_recognizer
    rec = load_recognizer("dlib", device="cpu")
    smiles = embed_images(rec, [np.asarray(Image.open(str(p).replace("_neutral", "_smiling")).convert("RGB"))
                                for p in people])
    configs = a.configs.split(",")
    if a.model is not None:
        model = str(a.model.resolve())
        for c in configs:
            CONFIGS[c] = [model if x == "default" else x for x in CONFIGS[c]]
    results = {c: fit_all(people, a.out / c, a.preset, CONFIGS[c]) for c in configs}
    lmk = {"detector": []} | {c: [] for c in configs}
    ident: dict[str, dict[str, list[float]]] = {c: {"same": [], "other": []} for c in configs}
    for i, photo in enumerate(people):
        h = human(photo)
        iod = np.linalg.norm(h[corr[36]] - h[corr[45]])
        target = h[[corr[k] for k in POINTS]]
        for c in configs:
            r = results[c].get(photo.stem)
            if r is None:
                continue
            det = np.asarray(r["landmarks"]["detected68"])[list(POINTS)]
            prj = np.asarray(r["landmarks"]["projected68"])[list(POINTS)]
            if c == configs[0]:
                lmk["detector"].append((det - target) / iod)
            lmk[c].append((prj - target) / iod)
            rgba = np.asarray(Image.open(a.out / c / "fits" / photo.stem / "render.png")).astype(np.float32)
            al = rgba[..., 3:] / 255
            grey = (rgba[..., :3] * al + 128 * (1 - al)).clip(0, 255).astype(np.uint8)
            e = embed_images(rec, [grey])[0]
            if e is None or smiles[i] is None:
                continue
            for j, s in enumerate(smiles):
                if s is not None:
                    ident[c]["same" if j == i else "other"].append(float(e @ s))
        print(f"  {i + 1}/{len(people)} {photo.name}", file=sys.stderr)
    # Errors as distances; and with each source's mean offset per point removed (the template's
    # and iBUG's definitions of a point differ by a constant, e.g. the brow's outer end).
    dist = {src: np.linalg.norm(np.asarray(v), axis=-1) for src, v in lmk.items() if v}       # (people, P)
    unbiased = {src: np.linalg.norm(np.asarray(v) - np.asarray(v).mean(0), axis=-1) for src, v in lmk.items() if v}
    table = {"points": {POINTS[k]: {src: float(d[:, n].mean()) for src, d in dist.items()} for n, k in enumerate(POINTS)},
             "points_unbiased": {POINTS[k]: {src: float(d[:, n].mean()) for src, d in unbiased.items()}
                                 for n, k in enumerate(POINTS)},
             "mean": {src: float(d.mean()) for src, d in dist.items()},
             "mean_unbiased": {src: float(d.mean()) for src, d in unbiased.items()},
             "fitted": {src: int(d.shape[0]) for src, d in dist.items()},
             "identity": {c: {k: float(np.mean(v)) if v else None for k, v in d.items()} for c, d in ident.items()},
             "people": [p.stem for p in people], "preset": a.preset,
             "texture_model": str(a.model) if a.model else "shipped default", "recognizer": "dlib (the fit's own: flatters it)"}
    if a.json:
        print(json.dumps(table))
    else:
        srcs = list(table["mean"])
        print(f"{'point':<20}" + "".join(f"{s:>16}" for s in srcs))
        for name, row in table["points"].items():
            print(f"{name:<20}" + "".join(f"{row.get(s, float('nan')):16.4f}" for s in srcs))
        print(f"{'mean':<20}" + "".join(f"{table['mean'][s]:16.4f}" for s in srcs))
        print(f"{'mean, offsets out':<20}" + "".join(f"{table['mean_unbiased'][s]:16.4f}" for s in srcs))
        print("identity cosine (render over grey vs smiling photos, dlib):")
        for c, d in table["identity"].items():
            print(f"  {c:<16} same person {d['same']}, other people {d['other']}")
    (a.out / "tables.json").write_text(json.dumps(table, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
