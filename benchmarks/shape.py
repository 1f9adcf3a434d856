"""``python benchmarks/shape.py --work DIR [--preset fast] [--part reframe|pairs|all]``: is the
fitted shape the person's, or the photo's? (issue 14 item 4)

Shape means the identity mesh without expression (``model(shape, None, part="all")``), compared
after a similarity alignment (rotation, translation and scale, Procrustes) as the mean vertex
distance in millimetres, over two regions:

* ``face``: the model's narrow face (around the nose, what the photo shows best);
* ``head``: the whole head (face, ears, skull and neck; not the eyeballs or sockets).

(a) ``reframe``: every photo of ``../shared/photos`` is fitted as it is and in several framings (a
tight, a medium and an off-centre crop, and the whole photo at 2/3 resolution); each framing's
shape is compared with the full photo's. An off-centre crop puts the face off centre in whichever
direction the photo has room for; a framing that the photo's own framing clips back to the photo or
to an earlier framing is left out (and listed), not scored as a perfect 0. Every variant is written
as a PNG (no EXIF), so all of them get the engine's focal-length default: exactly the case where
the framing used to change the lens. Also reported: the fit's own landmark error
(``landmark_error_iod``). With ``--noise`` each photo is also fitted with 1 grey level of Gaussian
noise added, reported apart: how far the shape moves for the least change of the pixels, against
which a framing's movement can be read (a fit that moves as far for noise as for a new framing is
not reacting to the framing).

(b) ``pairs``: the London set's neutral/smiling photos (``../shared/faces/london-canada``, CC BY 4.0):
nearest-shape re-identification (each neutral shape's nearest smiling shape is the same person's,
and the other way round; the mean of both rates) and verification AUC (same-person distances
smaller than different-person ones), for both regions, and for a landmark-only baseline: the
detector's 48 non-mouth iBUG points, similarity-aligned in 2D, distance in inter-ocular units.

Fits run as ``python -m engine fit`` in fresh processes, each into its own result folder under
``DIR/fits`` (variants under ``DIR/images``); a folder with a result.json is reused, so a rerun only
fits what is missing and two work folders (before/after a change) can be compared. The command
prints a table and writes ``DIR/shape.json`` (or ``--json``).

Arguments after ``--`` go to every ``engine fit``: e.g. whether the identity terms move the shape
towards the person (issue 14 item 3) is the same run into a second work folder with
``-- --recognizer none``, or with ``-- --texture-model MODEL.pt`` for a learned texture.

    python benchmarks/shape.py --work ../shapebench-now --preset fast --part reframe
    python benchmarks/shape.py --work ../shapebench-old --engine-root ../old-tree   # another commit
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
MM_PER_CM = 10.0
# The framings of (a): (name, crop side / face-box side or None for the whole photo,
# face-centre offset in face-box sides (x, y), resolution factor). Portraits are often framed
# about this tight already, so the crops stay well inside most photos (a crop that reaches past
# the photo is clipped to it).
FRAMINGS = (
    ("tight1.5", 1.5, (0.0, 0.0), 1.0),
    ("mid2.2", 2.2, (0.0, 0.0), 1.0),
    ("off2.2", 2.2, (0.35, 0.25), 1.0),
    ("full_2of3", None, (0.0, 0.0), 2 / 3),
)
NOISE = "noise1"   # --noise: the whole photo with 1 grey level of Gaussian noise

# ------------------------------------------------------------------------------ fitting
def fit(photo: Path, out: Path, a: argparse.Namespace) -> dict | None:
    """One engine fit into ``out`` (reused when it has a result.json); its result.json or None."""
    res = out / "result.json"
    if res.is_file():
        return json.loads(res.read_text())
    if a.cached_only:
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    root = a.engine_root
    cmd = [sys.executable, "-m", "engine", "fit", str(photo), "-o", str(out), "--preset", a.preset,
           "--threads", str(a.threads), "--texture-res", "256", *a.engine_args]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=root,
                       env={**os.environ, "PYTHONPATH": str(root)})
    if p.returncode != 0:
        print(f"  fit failed ({p.returncode}): {photo.name}: {p.stderr.strip().splitlines()[-1:]}",
              file=sys.stderr)
        return None
    print(f"  fitted {out.name} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return json.loads(res.read_text())


def fit_all(jobs: list[tuple[Path, Path]], a: argparse.Namespace) -> list[dict | None]:
    with ThreadPoolExecutor(max_workers=max(1, a.jobs)) as ex:
        return list(ex.map(lambda j: fit(j[0], j[1], a), jobs))


# ------------------------------------------------------------------------------ shapes
class Shapes:
    """Identity meshes from shape coefficients, and their similarity-aligned distances."""

    def __init__(self, posthoc_sigma: float | None = None):
        sys.path.insert(0, str(ROOT))
        from engine.models.facemodel import ASSET
        self.complete = None
        if posthoc_sigma:  # the engine's completion of the unseen head, on already-fitted shapes
            from engine.fit.unseen import completion_map
            from engine.models.facemodel import load_face_model
            self.complete = completion_map(load_face_model(), posthoc_sigma).double().numpy()
        with np.load(ASSET) as z:
            names = [str(n) for n in z["region_names"]]
            region = z["vertex_region"]
            head = np.isin(region, [names.index("face"), names.index("head_neck")])
            self.regions = {"face": np.arange(int(z["narrow_face_vertex_count"])),
                            "head": np.flatnonzero(head)}
            self.mean = z["vertices"].astype(np.float64)
            self.basis = z["identity_deltas"].astype(np.float64)  # (K, V, 3) cm

    def mesh(self, shape) -> np.ndarray:
        s = np.asarray(shape, np.float64)
        if self.complete is not None:
            s = self.complete[: len(s), : len(s)] @ s
        return self.mean + np.einsum("k,kvc->vc", s, self.basis[: len(s)])

    def distance(self, a: np.ndarray, b: np.ndarray, region: str) -> float:
        """Mean vertex distance (mm) over ``region`` after aligning b onto a (similarity)."""
        idx = self.regions[region]
        return procrustes_distance(a[idx], b[idx]) * MM_PER_CM


def procrustes_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean distance between corresponding points after the similarity (rotation, translation,
    uniform scale) that best maps ``b`` onto ``a`` in the least-squares sense (Umeyama)."""
    ca, cb = a.mean(0), b.mean(0)
    A, B = a - ca, b - cb
    U, S, Vt = np.linalg.svd(B.T @ A)
    d = np.sign(np.linalg.det(U @ Vt))
    D = np.diag([1.0] * (a.shape[1] - 1) + [d])
    R = U @ D @ Vt                        # B @ R ~ A
    scale = (S * np.diag(D)).sum() / (B ** 2).sum()
    return float(np.linalg.norm(A - scale * B @ R, axis=1).mean())


# ------------------------------------------------------------------------------ (a) reframe
def crop_box(W: int, H: int, box: list[float], k: float, offset: tuple[float, float]) -> tuple[int, int, int, int]:
    """The crop of side ``k`` face-box sides with the face off its centre by ``offset`` face sides,
    clipped to the photo. An off-centre crop takes whichever of the offset's four mirror images
    (x and y signs) the photo has the most room for, so that a tightly framed portrait still gets
    an off-centre crop and not a copy of the centred one."""
    x0, y0, x1, y1 = box
    side_face = max(x1 - x0, y1 - y0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    side = k * side_face
    best = None
    for sx, sy in ((1, 1), (-1, 1), (1, -1), (-1, -1)) if offset != (0.0, 0.0) else ((1, 1),):
        ox, oy = sx * offset[0], sy * offset[1]
        # The face sits off the crop's centre by (ox, oy) face sides.
        l, t = cx - side / 2 - ox * side_face, cy - side / 2 - oy * side_face
        cut = max(0, -l) + max(0, -t) + max(0, l + side - W) + max(0, t + side - H)
        if best is None or cut < best[0] - 1e-9:
            best = (cut, l, t)
    _, l, t = best
    l, t = max(0, round(l)), max(0, round(t))
    return l, t, min(W, round(l + side)), min(H, round(t + side))


def make_variants(photo: Path, box: list[float], images: Path, noise: bool = False) -> list[tuple[str, Path | None]]:
    """The framings of one photo as PNGs (made once). A framing that would be the same image as the
    photo or as an earlier framing (a crop that the photo's own framing clips back to the same
    box) has None for its path: it is left out, not counted as a perfect 0. With ``noise`` also
    ``NOISE``: the whole photo plus Gaussian noise of 1 grey level (seeded by the photo's name)."""
    im = ImageOps.exif_transpose(Image.open(photo)).convert("RGB")
    W, H = im.size
    seen = {((0, 0, W, H), 1.0)}
    out = []
    for name, k, offset, res in FRAMINGS:
        crop = (0, 0, W, H) if k is None else crop_box(W, H, box, k, offset)
        if (crop, res) in seen:
            out.append((name, None))
            continue
        seen.add((crop, res))
        path = images / f"{photo.stem}__{name}.png"
        if not path.is_file():
            v = im if crop == (0, 0, W, H) else im.crop(crop)
            if res != 1.0:
                v = v.resize((max(1, round(v.width * res)), max(1, round(v.height * res))),
                             Image.Resampling.LANCZOS)
            path.parent.mkdir(parents=True, exist_ok=True)
            v.save(path)
        out.append((name, path))
    if noise:
        path = images / f"{photo.stem}__{NOISE}.png"
        if not path.is_file():
            rng = np.random.default_rng(zlib.crc32(photo.stem.encode()))
            x = np.asarray(im, dtype=np.float32)
            x = np.clip(np.round(x + rng.normal(0.0, 1.0, x.shape)), 0, 255).astype(np.uint8)
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x).save(path)
        out.append((NOISE, path))
    return out


def reframe(a: argparse.Namespace, shapes: Shapes) -> dict:
    photos = sorted(p for p in (SHARED / "photos").iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if a.photos:
        photos = [p for p in photos if any(s in p.name for s in a.photos.split(","))]
    images, fits = a.work / "images", a.work / "fits" / "reframe"
    originals = []
    for p in photos:
        png = images / f"{p.stem}__original.png"
        if not png.is_file():
            png.parent.mkdir(parents=True, exist_ok=True)
            ImageOps.exif_transpose(Image.open(p)).convert("RGB").save(png)
        originals.append(png)
    refs = fit_all([(png, fits / png.stem) for png in originals], a)
    jobs, keys, skipped = [], [], []
    for p, ref in zip(photos, refs):
        if ref is None:
            continue
        for name, path in make_variants(p, ref["face"]["box"], images, a.noise):
            if path is None:
                skipped.append({"photo": p.stem, "framing": name})
                continue
            jobs.append((path, fits / path.stem))
            keys.append((p.stem, name))
    results = fit_all(jobs, a)
    rows = []
    ref_of = {p.stem: r for p, r in zip(photos, refs)}
    for (stem, name), r in zip(keys, results):
        ref = ref_of[stem]
        row = {"photo": stem, "framing": name, "ok": r is not None}
        if r is not None:
            m0, m1 = shapes.mesh(ref["shape"]), shapes.mesh(r["shape"])
            row.update({reg: round(shapes.distance(m0, m1, reg), 4) for reg in shapes.regions})
            row["landmark_error_iod"] = r["metrics"]["landmark_error_iod"]
            row["focal_px_per_face_px"] = focal_per_face(r)
        rows.append(row)
    ref_rows = [{"photo": p.stem, "landmark_error_iod": r["metrics"]["landmark_error_iod"],
                 "focal_px_per_face_px": focal_per_face(r), "distance_cm": -r["camera"]["world_to_camera"][2][3] * 100,
                 "focal_source": r["camera"]["focal_source"]}
                for p, r in zip(photos, refs) if r is not None]
    noisy = [r for r in rows if r["ok"] and r["framing"] == NOISE]
    ok = [r for r in rows if r["ok"] and r["framing"] != NOISE]

    def movement(rows: list[dict]) -> dict:
        return {reg: {"median_mm": median([r[reg] for r in rows]), "worst_mm": worst([r[reg] for r in rows]),
                      "mean_mm": mean([r[reg] for r in rows])} for reg in shapes.regions}

    summary = movement(ok)
    lm = [r["landmark_error_iod"] for r in ok] + [r["landmark_error_iod"] for r in ref_rows]
    summary["landmark_error_iod"] = {"median": median(lm), "worst": worst(lm), "mean": mean(lm)}
    if noisy:
        summary["noise"] = movement(noisy)
    summary["fits"] = {"variants": len(ok), "failed": len(rows) - len(ok) - len(noisy), "photos": len(ref_rows),
                       "same_image": len(skipped)}
    return {"summary": summary, "rows": rows, "references": ref_rows, "same_image": skipped}


def focal_per_face(r: dict) -> float:
    """Focal length in units of the face box's side: what a framing should not change."""
    x0, y0, x1, y1 = r["face"]["box"]
    return round(r["camera"]["fx"] / max(x1 - x0, y1 - y0), 4)


# ------------------------------------------------------------------------------ (b) pairs
def pairs(a: argparse.Namespace, shapes: Shapes) -> dict:
    d = SHARED / "faces" / "london-canada"
    ids = sorted(p.name.split("_")[1] for p in d.glob("london_*_neutral.jpg")
                 if (d / p.name.replace("_neutral", "_smiling")).is_file())
    if a.pairs:
        ids = ids[: a.pairs]
    fits = a.work / "fits" / "pairs"
    jobs = [(d / f"london_{i}_{e}.jpg", fits / f"london_{i}_{e}") for i in ids for e in ("neutral", "smiling")]
    res = fit_all(jobs, a)
    people = [(i, res[2 * k], res[2 * k + 1]) for k, i in enumerate(ids)
              if res[2 * k] is not None and res[2 * k + 1] is not None]
    out = {"people": len(people), "ids": [p[0] for p in people]}
    if len(people) < 2:
        return out
    for reg in shapes.regions:
        A = [shapes.mesh(n["shape"]) for _, n, _ in people]
        B = [shapes.mesh(s["shape"]) for _, _, s in people]
        D = np.array([[shapes.distance(x, y, reg) for y in B] for x in A])
        out[reg] = scores(D)
    keep = list(range(48))  # jaw, brows, nose, eyes: not the mouth, which the smile moves
    A = [lm2d(n, keep) for _, n, _ in people]
    B = [lm2d(s, keep) for _, _, s in people]
    out["landmarks2d"] = scores(np.array([[procrustes_distance(x, y) for y in B] for x in A]))
    lm = [r["metrics"]["landmark_error_iod"] for _, n, s in people for r in (n, s)]
    out["landmark_error_iod"] = {"median": median(lm), "worst": worst(lm), "mean": mean(lm)}
    return out


def lm2d(r: dict, keep: list[int]) -> np.ndarray:
    p = np.asarray(r["landmarks"]["detected68"], np.float64)
    iod = np.linalg.norm(p[36] - p[45])
    return p[keep] / iod


def scores(D: np.ndarray) -> dict:
    """Re-identification rate (both directions) and verification AUC of a distance matrix whose
    diagonal holds the same-person pairs."""
    n = len(D)
    reid = ((D.argmin(1) == np.arange(n)).mean() + (D.argmin(0) == np.arange(n)).mean()) / 2
    genuine = np.diag(D)
    impostor = D[~np.eye(n, dtype=bool)]
    return {"reid": round(float(reid), 4), "auc": round(auc(genuine, impostor), 4),
            "genuine_mm": median(genuine), "impostor_mm": median(impostor)}


def auc(genuine: np.ndarray, impostor: np.ndarray) -> float:
    """P(a same-person distance < a different-person distance), ties counting half
    (the Mann-Whitney statistic, from ranks)."""
    allv = np.concatenate([genuine, impostor])
    ordinal = np.empty(len(allv))
    ordinal[allv.argsort(kind="mergesort")] = np.arange(1, len(allv) + 1)
    _, inv = np.unique(allv, return_inverse=True)
    ranks = (np.bincount(inv, ordinal) / np.bincount(inv))[inv]  # tied values share their mean rank
    n_g, n_i = len(genuine), len(impostor)
    u = ranks[n_g:].sum() - n_i * (n_i + 1) / 2   # impostor distances ranked above genuine ones
    return float(u / (n_g * n_i))


def median(x) -> float:
    return round(float(np.median(x)), 4) if len(x) else float("nan")


def worst(x) -> float:
    return round(float(np.max(x)), 4) if len(x) else float("nan")


def mean(x) -> float:
    return round(float(np.mean(x)), 4) if len(x) else float("nan")


# ------------------------------------------------------------------------------ report
def print_table(out: dict) -> None:
    if "reframe" in out:
        s = out["reframe"]["summary"]
        print(f"(a) re-framing, {s['fits']['variants']} framings of {s['fits']['photos']} photos "
              f"({s['fits']['failed']} failed), shape movement vs the full photo (mm):")
        same = out["reframe"].get("same_image", [])
        if same:
            print("    left out, the same image as the photo or an earlier framing: "
                  + ", ".join(f"{r['photo']} {r['framing']}" for r in same))
        print(f"    {'region':<8}{'median':>9}{'worst':>9}{'mean':>9}")
        for reg in ("face", "head"):
            print(f"    {reg:<8}{s[reg]['median_mm']:>9.3f}{s[reg]['worst_mm']:>9.3f}{s[reg]['mean_mm']:>9.3f}")
        lm = s["landmark_error_iod"]
        print(f"    landmark error (iod): median {lm['median']:.4f}, worst {lm['worst']:.4f}")
        if "noise" in s:
            n = s["noise"]
            print(f"    +-1 grey level of noise instead (not in the figures above): face {n['face']['median_mm']:.3f}"
                  f" / {n['face']['worst_mm']:.3f}, head {n['head']['median_mm']:.3f} / {n['head']['worst_mm']:.3f}")
        print(f"    {'photo':<34}{'framing':<12}{'face':>7}{'head':>7}{'lm_iod':>8}{'f/face':>8}")
        for r in out["reframe"]["rows"]:
            if r["ok"]:
                print(f"    {r['photo']:<34}{r['framing']:<12}{r['face']:>7.3f}{r['head']:>7.3f}"
                      f"{r['landmark_error_iod']:>8.4f}{r['focal_px_per_face_px']:>8.2f}")
            else:
                print(f"    {r['photo']:<34}{r['framing']:<12}  failed")
    if "pairs" in out:
        p = out["pairs"]
        print(f"(b) London neutral/smiling pairs, {p['people']} people:")
        if p["people"] >= 2:
            print(f"    {'shape':<12}{'re-id':>8}{'AUC':>8}{'same':>8}{'other':>8}")
            for k in ("face", "head", "landmarks2d"):
                r = p[k]
                print(f"    {k:<12}{r['reid']:>8.3f}{r['auc']:>8.3f}{r['genuine_mm']:>8.3f}{r['impostor_mm']:>8.3f}")
            print("    (same/other: median distance, mm; landmarks2d in inter-ocular units)")
            lm = p["landmark_error_iod"]
            print(f"    landmark error (iod): median {lm['median']:.4f}, worst {lm['worst']:.4f}")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python benchmarks/shape.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True,
                    help="work folder for the variants and the fits (reused; outside the repository)")
    ap.add_argument("--part", choices=("reframe", "pairs", "all"), default="all")
    ap.add_argument("--preset", default="balanced", help="engine preset (default balanced)")
    ap.add_argument("--threads", type=int, default=1, help="threads per fit (default 1)")
    ap.add_argument("--jobs", type=int, default=1, help="fits at once (default 1)")
    ap.add_argument("--pairs", type=int, help="only the first N London people (default all)")
    ap.add_argument("--photos", help="comma-separated name fragments: only these photos of (a)")
    ap.add_argument("--noise", action="store_true",
                    help="(a) also fits each photo with 1 grey level of Gaussian noise added: how far "
                         "the shape moves for the least change of the pixels (reported apart)")
    ap.add_argument("--engine-root", type=Path, default=ROOT,
                    help="the engine source tree to fit with (default this one): e.g. an export of "
                         "the commit before a change, into its own --work")
    ap.add_argument("--cached-only", action="store_true",
                    help="fit nothing: use the fits already in WORK (the others count as failed)")
    ap.add_argument("--posthoc-sigma", type=float,
                    help="complete the unseen head of the cached shapes (engine/fit/unseen.py) with "
                         "this face sigma (cm) before comparing: tries a sigma without refitting")
    ap.add_argument("--json", type=Path, help="where to write the JSON (default WORK/shape.json)")
    ap.add_argument("engine_args", nargs="*", help="after --: more `engine fit` arguments")
    a = ap.parse_args(argv)
    a.work = a.work.expanduser().absolute()
    if not (SHARED / "photos").is_dir():
        print(f"error: the shared data is not at {SHARED} (photos/, faces/london-canada/)", file=sys.stderr)
        return 2
    shapes = Shapes(a.posthoc_sigma)
    a.engine_root = a.engine_root.expanduser().absolute()
    out = {"preset": a.preset, "engine_args": a.engine_args, "work": str(a.work),
           "engine_root": str(a.engine_root),
           "posthoc_sigma": a.posthoc_sigma}
    if a.part in ("reframe", "all"):
        out["reframe"] = reframe(a, shapes)
    if a.part in ("pairs", "all"):
        out["pairs"] = pairs(a, shapes)
    path = a.json or a.work / "shape.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print_table(out)
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
