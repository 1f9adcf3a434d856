"""Reading a texture dataset (format v1, written by ``python -m engine texture dataset``).

DATA/ holds ``data.json``, ``manifest.jsonl`` and ``shard-NNNNN.npz`` files (see the dataset
builder for the full contract). This module checks the folder, reads the ``ok`` samples at a
working resolution, and splits them into training and held-out sets by person, so that no person
is ever in both.

Albedo is linear, image layout (row 0 = the TOP of the atlas, v = 1), as a generator outputs it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import BadInputError

DATASET_FORMAT = "ganfit-texture-dataset"
DATASET_VERSION = 1
UV_LAYOUT = "ganfit-atlas-v1"
# The face box of the atlas in UV (u0, v0, side); the face is mirror-symmetric in it. Read from the
# face model asset when it is at hand (``face_box``), this is the documented fallback.
FACE_BOX_UV = (0.0, 0.25, 0.75)


@dataclass
class Record:
    """One ``ok`` sample of the manifest."""

    id: str
    person: str
    shard: str
    index: int
    info: dict = field(repr=False, default_factory=dict)


@dataclass
class TextureData:
    """Samples at a working resolution: ``albedo`` (N, 3, r, r) float32 in [0, 1] (linear, row 0 =
    top), ``weight`` (N, r, r) float32 in [0, 1], and their records in the same order."""

    albedo: torch.Tensor
    weight: torch.Tensor
    records: list[Record]

    def __len__(self) -> int:
        return len(self.records)

    @property
    def res(self) -> int:
        return int(self.albedo.shape[-1])

    def subset(self, idx) -> "TextureData":
        idx = list(idx)
        t = torch.as_tensor(idx, dtype=torch.long)
        return TextureData(self.albedo[t], self.weight[t], [self.records[i] for i in idx])


class TextureDataset:
    """A checked dataset folder: its ``data.json`` (``meta``) and its ``ok`` records."""

    def __init__(self, root: str | Path, strict_licence: bool = False,
                 exclude_persons: frozenset[str] | set[str] = frozenset()):
        """``strict_licence``: leave out the samples whose manifest flags put them outside their
        source's stricter licence subset (``pd_strict: false``: congress-pd portraits of members who
        left before the 110th Congress, see that folder's LICENSE.md); counted in ``excluded``.
        ``exclude_persons``: leave out every sample of these persons (an evaluation that must not
        have seen them); counted in ``excluded_persons``."""
        self.root = Path(root)
        self.meta = read_meta(self.root)
        self.res = int(self.meta["res"])
        self.records, self.failed = read_manifest(self.root)
        self.excluded = 0
        if strict_licence:
            from .dataset import strict_licence_ok
            kept = [r for r in self.records if strict_licence_ok(r.info.get("flags"))]
            self.excluded = len(self.records) - len(kept)
            self.records = kept
        self.excluded_persons = 0
        if exclude_persons:
            kept = [r for r in self.records if r.person not in exclude_persons]
            self.excluded_persons = len(self.records) - len(kept)
            self.records = kept
        if not self.records:
            raise BadInputError(f"The texture dataset {self.root} has no samples with status 'ok' in "
                                f"manifest.jsonl ({self.failed} failed). Build it with 'python -m engine "
                                "texture dataset PHOTOS -o DATA' and check its report of failed photos.")

    @property
    def persons(self) -> list[str]:
        return sorted({r.person for r in self.records})

    def summary(self) -> dict:
        by_ds: dict[str, int] = {}
        for r in self.records:
            key = str(r.info.get("dataset") or "unknown")
            by_ds[key] = by_ds.get(key, 0) + 1
        return {"samples": len(self.records), "persons": len(self.persons), "failed": self.failed,
                "excluded_by_licence": self.excluded,
                "excluded_by_person": self.excluded_persons, "res": self.res, "datasets": by_ds}

    def load(self, res: int | None = None, records: list[Record] | None = None,
             progress=None) -> TextureData:
        """Read samples (all ``ok`` ones, or ``records``) downsampled to ``res``.

        Albedo x weight and weight are area-averaged together, so a low-res texel's colour is the
        weighted mean of the texels it covers and its weight is their mean trust.

        Returns: TextureData with albedo (N, 3, res, res) and weight (N, res, res), float32.
        """
        res = int(res or self.res)
        if res > self.res:
            raise BadInputError(f"--res {res} is above the dataset's resolution {self.res}; use at most "
                                f"{self.res}.")
        records = list(self.records if records is None else records)
        by_shard: dict[str, list[int]] = {}
        for i, r in enumerate(records):
            by_shard.setdefault(r.shard, []).append(i)
        albedo = torch.zeros(len(records), 3, res, res)
        weight = torch.zeros(len(records), res, res)
        keep = np.zeros(len(records), bool)
        for n, (shard, rows) in enumerate(sorted(by_shard.items())):
            a, w, ids = _read_shard(self.root / shard)
            pos = {str(s): j for j, s in enumerate(ids)}
            for i in rows:
                r = records[i]
                j = r.index if 0 <= r.index < len(ids) and str(ids[r.index]) == r.id else pos.get(r.id)
                if j is None:
                    continue  # listed in the manifest, absent from its shard (an interrupted build)
                at, wt = downsample(torch.from_numpy(a[j].astype(np.float32)),
                                    torch.from_numpy(w[j].astype(np.float32)), res)
                albedo[i], weight[i] = at, wt
                keep[i] = True
            if progress is not None:
                progress(n + 1, len(by_shard))
        if not keep.any():
            raise BadInputError(f"None of the manifest's 'ok' samples were found in the shards of "
                                f"{self.root}; the dataset is incomplete. Re-run the dataset builder on it "
                                "(it resumes).")
        idx = np.flatnonzero(keep)
        return TextureData(albedo[idx], weight[idx], [records[i] for i in idx])


def read_meta(root: Path) -> dict:
    if not root.is_dir():
        raise BadInputError(f"Texture dataset folder not found: {root}. Give the folder written by "
                            "'python -m engine texture dataset ... -o DATA'.")
    p = root / "data.json"
    if not p.is_file():
        raise BadInputError(f"{root} is not a texture dataset: it has no data.json. Give the folder "
                            "written by 'python -m engine texture dataset ... -o DATA'.")
    try:
        meta = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise BadInputError(f"Could not read {p}: {e}. Rebuild the dataset.") from e
    if not isinstance(meta, dict) or meta.get("format") != DATASET_FORMAT:
        raise BadInputError(f"{p} does not describe a '{DATASET_FORMAT}' (format is "
                            f"{meta.get('format') if isinstance(meta, dict) else meta!r}).")
    if meta.get("version") != DATASET_VERSION:
        raise BadInputError(f"{p} is version {meta.get('version')}; this engine reads version "
                            f"{DATASET_VERSION}. Rebuild the dataset with this engine.")
    for key, want in (("uv_layout", UV_LAYOUT), ("colour", "linear"), ("row0", "top")):
        if meta.get(key) != want:
            raise BadInputError(f"{p}: {key} is {meta.get(key)!r}, expected {want!r}.")
    res = meta.get("res")
    if not isinstance(res, int) or res < 8:
        raise BadInputError(f"{p}: res must be a whole number of texels (at least 8), got {res!r}.")
    return meta


def read_manifest(root: Path) -> tuple[list[Record], int]:
    """The ``ok`` records (the last line of an id wins, as a resumed build appends) and the number of
    failed ones. A partial last line (a crash mid-write) is ignored, as the builder does."""
    p = root / "manifest.jsonl"
    if not p.is_file():
        raise BadInputError(f"{root} has no manifest.jsonl: the dataset builder has not finished any "
                            "photo. Run 'python -m engine texture dataset ... -o DATA'.")
    lines = p.read_text(encoding="utf-8").splitlines()
    last: dict[str, dict] = {}
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            if n == len(lines) - 1:
                continue
            raise BadInputError(f"{p}, line {n + 1} is not JSON. Remove that line (the builder redoes "
                                "its photo) or rebuild the dataset.") from None
        if not isinstance(obj, dict) or "id" not in obj or "status" not in obj:
            raise BadInputError(f"{p}, line {n + 1} has no 'id' and 'status'.")
        last[str(obj["id"])] = obj
    ok, failed = [], 0
    for sid, obj in last.items():
        if obj["status"] != "ok":
            failed += 1
            continue
        try:
            rec = Record(sid, str(obj.get("person") or sid), str(obj["shard"]), int(obj["index"]), obj)
        except (KeyError, TypeError, ValueError):
            raise BadInputError(f"{p}: the 'ok' sample {sid} has no valid 'shard' and 'index'.") from None
        ok.append(rec)
    return ok, failed


def _read_shard(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not path.is_file():
        raise BadInputError(f"The shard {path.name} named in manifest.jsonl is missing from "
                            f"{path.parent}. Re-run the dataset builder on it (it resumes).")
    try:
        with np.load(path, allow_pickle=False) as z:
            a, w, ids = z["albedo"], z["weight"], z["ids"]
    except Exception as e:  # noqa: BLE001 - any read failure is a damaged shard
        raise BadInputError(f"Could not read the shard {path}: {e}. Delete it and the manifest lines "
                            "that name it, then re-run the dataset builder.") from e
    if a.ndim != 4 or a.shape[-1] != 3 or w.shape != a.shape[:3] or len(ids) != len(a):
        raise BadInputError(f"The shard {path} has unexpected shapes: albedo {a.shape}, weight "
                            f"{w.shape}, ids {ids.shape} (want (N, R, R, 3), (N, R, R), (N,)).")
    return a, w, ids


def downsample(albedo: torch.Tensor, weight: torch.Tensor, res: int) -> tuple[torch.Tensor, torch.Tensor]:
    """albedo (R, R, 3), weight (R, R) -> (3, res, res), (res, res), weighted area averages."""
    a = albedo.permute(2, 0, 1)[None]
    w = weight[None, None].clamp(0, 1)
    if a.shape[-1] == res:
        return a[0].clamp(0, 1), w[0, 0]
    aw = F.adaptive_avg_pool2d(a * w, res)
    ws = F.adaptive_avg_pool2d(w, res)
    return (aw / ws.clamp_min(1e-6)).clamp(0, 1)[0] * (ws[0] > 1e-6), ws[0, 0]


def split_by_person(records: list[Record], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, held-out): about ``fraction`` of the persons (at least one when there are two
    or more) are held out with all their samples. Deterministic for a seed."""
    persons = sorted({r.person for r in records})
    rng = np.random.default_rng(seed)
    order = [persons[i] for i in rng.permutation(len(persons))]
    n_out = 0 if len(persons) < 2 or fraction <= 0 else min(len(persons) - 1,
                                                               max(1, int(round(fraction * len(persons)))))
    out = set(order[:n_out])
    train = [i for i, r in enumerate(records) if r.person not in out]
    held = [i for i, r in enumerate(records) if r.person in out]
    return train, held


def face_box(res: int) -> tuple[int, int, int]:
    """(row0, col0, side) of the mirror-symmetric face box in image layout (row 0 = top)."""
    u0, v0, s = FACE_BOX_UV
    try:
        from ..models.facemodel import ASSET
        with np.load(ASSET, allow_pickle=False) as z:
            names = [str(n) for n in z["atlas_box_names"]]
            u0, v0, s = (float(x) for x in z["atlas_boxes"][names.index("face")])
    except Exception:  # noqa: BLE001 - the documented box is the same; the asset only confirms it
        pass
    row0 = int(round((1 - v0 - s) * res))
    return row0, int(round(u0 * res)), int(round(s * res))


def holdback_mask(n: int, res: int, seed: int, block: int | None = None) -> torch.Tensor:
    """(n, res, res) bool: texels held back from the latent fit of held-out samples, to measure the
    error on. Random blocks (about half), mirror-symmetric in the face box: the dataset's weights
    and albedo are mirrored, so a texel's mirror would otherwise give it away."""
    block = block or max(1, res // 16)
    g = torch.Generator().manual_seed(int(seed))
    nb = -(-res // block)
    cells = torch.rand(n, nb, nb, generator=g) < 0.5
    m = cells.repeat_interleave(block, 1).repeat_interleave(block, 2)[:, :res, :res].clone()
    r0, c0, s = face_box(res)
    box = m[:, r0:r0 + s, c0:c0 + s]
    half = (s + 1) // 2
    left = box[:, :, :half]
    box[:, :, s - half:] = left.flip(-1)[:, :, : half]
    m[:, r0:r0 + s, c0:c0 + s] = box
    return m
