"""Several photos of one person (``python -m engine fit A.jpg B.jpg ...``, the photo list made by
``cli.resolve_photos``): the identity check that warns when a photo seems to show someone else.

The fit itself is the single-photo pipeline with lists: ``pipeline.run_views`` detects and
coarse-fits each photo on its own, ``stages/fine.run_views`` fits one shape and one texture to
all of them, ``stages/albedo.run_views`` merges their unwraps by per-texel trust, and
``results.write_views`` adds the views to the result folder (docs/result-format.md, "Several
photos").
"""

from __future__ import annotations

import numpy as np
import torch

# Below this cosine between a photo's recogniser embedding and the mean of the other photos'
# embeddings, the photo is flagged as maybe someone else. From the London set (87 people with a
# neutral and a smiling photo; dlib ResNet on the engine's own detection and alignment,
# ``photo_embedding``): one person's neutral vs smiling, cosine mean 0.987, min 0.951; two
# different people (14964 pairs), mean 0.834, 99th percentile 0.915, max 0.947. At 0.92 no
# same-person pair is flagged and 0.5% of different-person pairs pass; it sits below the
# midpoint because photos of one person at different angles and light (which London lacks)
# agree less than a frontal neutral/smiling pair.
IDENTITY_THRESHOLD = 0.92


@torch.no_grad()
def photo_embedding(rec, photo: np.ndarray, det68: np.ndarray, device) -> torch.Tensor:
    """The recogniser's unit embedding (D,) of the face in ``photo`` aligned by its 68 landmarks
    (full-resolution pixels) to the recogniser's template."""
    from ..perception.align import align, five_points_from_68
    img = torch.from_numpy(np.array(photo, np.uint8)).to(device).permute(2, 0, 1)[None].float() / 255.0
    p5 = five_points_from_68(torch.from_numpy(np.asarray(det68, np.float32))[None].to(device))
    chip, _ = align(img, p5, rec.template.to(device), rec.input_size)
    emb = rec.embed(chip)[0][0]
    return emb / emb.norm().clamp_min(1e-12)


def cosines_to_others(embs: list[torch.Tensor]) -> list[float]:
    """Per photo, the cosine of its embedding to the (normalised) mean of the others'."""
    E = torch.stack(embs)
    out = []
    for i in range(len(embs)):
        others = torch.cat([E[:i], E[i + 1:]]).mean(0)
        out.append(float(E[i] @ (others / others.norm().clamp_min(1e-12))))
    return out


def identity_check(rec, photos: list[np.ndarray], det68s: list[np.ndarray], names: list[str], device,
                   threshold: float = IDENTITY_THRESHOLD) -> tuple[dict, list[str]]:
    """result.json ``multi_view.identity_check`` and the warnings for photos whose embedding is
    far from the others' (never an error: the user decides). ``rec`` None: not checked."""
    if rec is None:
        return {"cosine_to_others": None, "suspect": [], "threshold": threshold,
                "note": "not checked: no face recogniser (--recognizer none)"}, []
    embs = [photo_embedding(rec, ph, d, device) for ph, d in zip(photos, det68s)]
    cos = cosines_to_others(embs)
    suspect = [i for i, c in enumerate(cos) if c < threshold]
    warnings = [f"Photo {names[i]} may show someone else (identity cosine {cos[i]:.2f} to the other "
                f"photos, below {threshold:.2f}); check it." for i in suspect]
    return {"cosine_to_others": [round(c, 4) for c in cos], "suspect": suspect, "threshold": threshold,
            "recognizer": getattr(rec, "name", None)}, warnings
