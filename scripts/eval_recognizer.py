"""Evaluate the torch face recognisers.

    python scripts/eval_recognizer.py                 # London verification + port-vs-dlib + bench
    python scripts/eval_recognizer.py --calibrate     # derive the dlib 5-point template
    python scripts/eval_recognizer.py --bench-only

* London (shared/faces/london-canada): every London photo goes through OUR path (MediaPipe
  landmarks -> 68-point subset -> 5 points -> similarity warp -> embed); same-person pairs are
  neutral vs smiling of one person, different-person pairs are all photos of two different
  people. Prints cosine distributions and the equal-error rate; with dlib installed, the same
  for dlib's own chips (dlib detector + 5-point predictor + get_face_chip) as a reference.
* Photos (shared/photos): cosine between the torch port and dlib on dlib's own chips, and
  between our-alignment and dlib-alignment embeddings.
* Benchmark: forward + backward at the input size, batch 1, 2 threads, median of 10.

The shared folder is $GANFIT_SHARED, default <repo>/../shared. dlib is only a reference here.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.perception.align import align, five_points_from_68  # noqa: E402
from engine.perception.dlib_resnet import dlib_model_path  # noqa: E402
from engine.perception.recognizer import identity_loss, load_recognizer  # noqa: E402


def shared_dir() -> Path:
    return Path(os.environ.get("GANFIT_SHARED", ROOT.parent / "shared"))


def load_rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def to_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)[None].float() / 255.0


class DlibReference:
    """dlib's own pipeline: HOG detector, 5-point predictor, get_face_chip, ResNet."""

    def __init__(self) -> None:
        import dlib

        self.dlib = dlib
        models = dlib_model_path().parent
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
        self.model = dlib.face_recognition_model_v1(str(dlib_model_path()))

    def shape(self, img: np.ndarray):
        for upsample in (0, 1, 2):
            dets = self.detector(img, upsample)
            if dets:
                return self.predictor(img, max(dets, key=lambda r: r.area()))
        return None

    def chip(self, img: np.ndarray, shape, size: int = 150) -> np.ndarray:
        return self.dlib.get_face_chip(img, shape, size=size, padding=0.25)

    def descriptor(self, chip: np.ndarray) -> np.ndarray:
        return np.array(self.model.compute_face_descriptor(chip))

    def chip_transform(self, img: np.ndarray, shape, size: int = 150) -> np.ndarray:
        """(2, 3) image -> chip map in our pixel convention, measured by chipping coordinate
        ramps (bilinear sampling of a linear ramp is exact away from the chip border)."""
        h, w = img.shape[:2]
        xs = np.tile(np.arange(w, dtype=np.float64), (h, 1))
        ys = np.tile(np.arange(h, dtype=np.float64)[:, None], (1, w))
        cx = self.dlib.get_face_chip(xs, shape, size=size, padding=0.25)
        cy = self.dlib.get_face_chip(ys, shape, size=size, padding=0.25)
        r, c = np.mgrid[0:size, 0:size]
        m = (r > 2) & (r < size - 3) & (c > 2) & (c < size - 3)
        X = np.stack([c[m], r[m], np.ones(m.sum())], 1)
        sol = np.linalg.lstsq(X, np.stack([cx[m], cy[m]], 1), rcond=None)[0]  # chip -> image
        A, t = sol[:2].T, sol[2]
        Ainv = np.linalg.inv(A)
        # ours = dlib index + 0.5 on both sides.
        t_ours = Ainv @ (-t - 0.5) + 0.5
        return np.concatenate([Ainv, t_ours[:, None]], 1)


def landmarker():
    from engine.perception.landmarks import MediaPipeFaceLandmarker

    return MediaPipeFaceLandmarker(max_faces=1)


def points5(lm, img: np.ndarray) -> np.ndarray | None:
    faces = lm.detect(img)
    if not faces:
        return None
    return five_points_from_68(faces[0].landmarks68).astype(np.float32)


def london_files() -> list[tuple[str, str]]:
    folder = shared_dir() / "faces" / "london-canada"
    rows = list(csv.DictReader(open(folder / "index.csv")))
    return [(str(folder / (r["file"] + ".jpg")), r["person"]) for r in rows
            if r["file"].startswith("london_")]


def calibrate() -> None:
    ref = DlibReference()
    pts = []
    with landmarker() as lm:
        for f, _ in london_files():
            img = load_rgb(Path(f))
            shape = ref.shape(img)
            p5 = points5(lm, img)
            if shape is None or p5 is None:
                print("skip", f)
                continue
            M = ref.chip_transform(img, shape)
            pts.append(p5 @ M[:, :2].T + M[:, 2])
    P = np.array(pts)
    m, s = P.mean(0), P.std(0)
    axis = (m[0, 0] + m[1, 0] + m[3, 0] + m[4, 0]) / 4
    eye_y, mouth_y = (m[0, 1] + m[1, 1]) / 2, (m[3, 1] + m[4, 1]) / 2
    eye_h, mouth_h = (m[1, 0] - m[0, 0]) / 2, (m[4, 0] - m[3, 0]) / 2
    sym = [(axis - eye_h, eye_y), (axis + eye_h, eye_y), (axis, m[2, 1]),
           (axis - mouth_h, mouth_y), (axis + mouth_h, mouth_y)]
    print(f"{len(P)} photos; mean {np.round(m, 2).tolist()}; std {np.round(s, 2).tolist()}")
    print("symmetrised template:", [(round(x, 2), round(y, 2)) for x, y in sym])


def eer(same: np.ndarray, diff: np.ndarray) -> tuple[float, float]:
    """Equal-error rate on cosine similarities (accept if cos >= thr); returns (eer, thr)."""
    thrs = np.unique(np.concatenate([same, diff]))
    best = (1.0, 0.0)
    gap = 2.0
    for t in thrs:
        frr = float((same < t).mean())
        far = float((diff >= t).mean())
        if abs(frr - far) < gap:
            gap, best = abs(frr - far), ((frr + far) / 2, float(t))
    return best


def report_verification(label: str, embs: np.ndarray, persons: list[str]) -> None:
    sims = embs @ embs.T
    pid = np.array(persons)
    same_mask = (pid[:, None] == pid[None, :]) & ~np.eye(len(pid), dtype=bool)
    diff_mask = pid[:, None] != pid[None, :]
    iu = np.triu_indices(len(pid), 1)
    same = sims[iu][same_mask[iu]]
    diff = sims[iu][diff_mask[iu]]
    e, thr = eer(same, diff)
    print(f"[{label}] {len(pid)} photos, {len(same)} same-person pairs, {len(diff)} different")
    print(f"  same-person cosine: mean {same.mean():.4f} std {same.std():.4f} min {same.min():.4f}")
    print(f"  diff-person cosine: mean {diff.mean():.4f} std {diff.std():.4f} max {diff.max():.4f}")
    print(f"  EER {100 * e:.2f}% at cosine {thr:.4f}")


@torch.no_grad()
def evaluate_london(rec, ref: DlibReference | None) -> None:
    ours, theirs, persons, persons_ref = [], [], [], []
    t0 = time.time()
    with landmarker() as lm:
        for f, person in london_files():
            img = load_rgb(Path(f))
            p5 = points5(lm, img)
            if p5 is None:
                print("no face (mediapipe):", f)
            else:
                chip, _ = align(to_tensor(img), torch.from_numpy(p5)[None], rec.template,
                                rec.input_size)
                ours.append(rec.embed(chip)[0][0].numpy())
                persons.append(person)
            if ref is not None:
                shape = ref.shape(img)
                if shape is None:
                    print("no face (dlib):", f)
                    continue
                chip = ref.chip(img, shape, rec.input_size)
                theirs.append(rec.embed(to_tensor(chip))[0][0].numpy())
                persons_ref.append(person)
    print(f"London: {time.time() - t0:.1f} s")
    report_verification("ours: mediapipe 5 points -> warp -> torch port", np.array(ours), persons)
    if ref is not None:
        report_verification("reference: dlib detector+predictor+get_face_chip -> torch port",
                            np.array(theirs), persons_ref)


@torch.no_grad()
def evaluate_photos(rec, ref: DlibReference) -> None:
    folder = shared_dir() / "photos"
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    print("photo                              port-vs-dlib  ours-vs-dlib-chip")
    port_min = 1.0
    with landmarker() as lm:
        for f in files:
            img = load_rgb(f)
            shape = ref.shape(img)
            if shape is None:
                print(f"{f.name:34s} dlib found no face")
                continue
            chip = ref.chip(img, shape)
            d = ref.descriptor(chip)
            e = rec.backbone(to_tensor(chip))[0][0].double().numpy()
            cos = float(d @ e / np.linalg.norm(d) / np.linalg.norm(e))
            port_min = min(port_min, cos)
            p5 = points5(lm, img)
            al = float("nan")
            if p5 is not None:
                mine, _ = align(to_tensor(img), torch.from_numpy(p5)[None], rec.template, 150)
                em = rec.embed(mine)[0][0].double().numpy()
                al = float(em @ d / np.linalg.norm(d))
            print(f"{f.name:34s} {cos:.7f}     {al:.4f}")
    print(f"port-vs-dlib cosine min over photos: {port_min:.7f}")


def bench(rec, runs: int = 10) -> None:
    torch.set_num_threads(2)
    x = torch.rand(1, 3, rec.input_size, rec.input_size, requires_grad=True)
    target = torch.nn.functional.normalize(torch.randn(1, rec.embedding_dim), dim=1)
    times = []
    for i in range(runs + 2):
        x.grad = None
        t = time.perf_counter()
        emb, feats = rec.embed(x)
        loss = identity_loss(emb, target).sum() + sum(f.pow(2).mean() for f in feats)
        loss.backward()
        if i >= 2:  # warm-up
            times.append(time.perf_counter() - t)
    print(f"[{rec.name}] forward+backward, batch 1, {rec.input_size}px, 2 threads: "
          f"median {1000 * statistics.median(times):.1f} ms over {runs}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calibrate", action="store_true")
    ap.add_argument("--bench-only", action="store_true")
    ap.add_argument("--no-dlib", action="store_true", help="skip dlib reference comparisons")
    args = ap.parse_args()
    if args.calibrate:
        calibrate()
        return
    t = time.perf_counter()
    rec = load_recognizer("dlib")
    print(f"load_recognizer('dlib'): {1000 * (time.perf_counter() - t):.0f} ms")
    if not args.bench_only:
        ref = None if args.no_dlib else DlibReference()
        if ref is not None:
            evaluate_photos(rec, ref)
        evaluate_london(rec, ref)
    bench(rec)
    # ArcFace's weights are not available offline: time the iresnet50 architecture with random
    # weights (same cost as the real one).
    from engine.perception.arcface import IResNet
    from engine.perception.recognizer import ARCFACE_LICENCE, Recognizer

    arc = Recognizer(IResNet((3, 4, 14, 3)), "arcface-r50-random-weights", 112, ((0.0, 0.0),) * 5,
                     ARCFACE_LICENCE, 512)
    bench(arc)


if __name__ == "__main__":
    main()
