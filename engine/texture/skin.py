"""A per-photo skin colour model that needs no download: a Gaussian in YCbCr fitted, with
iterative trimming, to the pixels of the landmark-bounded cheeks and forehead.

``region_mask`` draws the sampling regions from the 68 iBUG landmarks; ``fit_skin`` fits the model
to the colours found there; ``SkinModel.probability`` scores any colours (photo pixels, or the
photo colours an atlas texel samples) in [0, 1].

Robustness: the start is the per-channel median with a MAD scale, then a full-covariance Gaussian is
refitted a few times on the colours within a chi-square bound only, so glasses frames, hair, a
fringe or a beard that reach into the regions are rejected as long as skin is the majority there.
Luma is given a wider tolerance than chroma (``luma_scale``): the regions see little of the face's
shading range, and a texel in half shadow is still skin.

What it misses (by construction, a colour model):
- skin-coloured occluders (a hand, a flesh-toned scarf, blond hair close to the skin's chroma,
  light wooden or gold-coloured frames) keep a high probability;
- strong shadows and hard specular highlights shift luma far outside the fitted range and get a
  low probability although they are skin (they are de-lit badly anyway);
- where occluders cover most of the cheeks and forehead (a full beard and a heavy fringe), the
  majority is not skin and the model fits the occluder;
- coloured light (a red or blue cast on one side) moves the chroma of that side's skin away;
- in desaturated photos (small, old or faded portraits) grey or white hair and beards have about the
  chroma of the skin and are accepted; only luma separates them;
- eyebrows, lashes and nostrils are rejected like hair (the builder exempts only the lips,
  ``lips_mask``; a moustache over the upper lip is therefore kept).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# sRGB (0-1) -> YCbCr (BT.601, full range, 0-1 luma, chroma centred on 0).
_YCC = np.array([[0.299, 0.587, 0.114],
                 [-0.168736, -0.331264, 0.5],
                 [0.5, -0.418688, -0.081312]])

# Squared Mahalanobis distances: within ``INLIER_D2`` a colour has probability 1 (chi-square, 3 dof,
# ~90%); beyond it the probability falls as exp(-(d2 - INLIER_D2) / (2 * FALLOFF)).
INLIER_D2 = 6.25
FALLOFF = 3.0
TRIM_D2 = 7.8  # chi-square 3 dof, 95%: the bound for the refits


def to_ycc(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) sRGB in [0, 1] -> (..., 3) Y, Cb, Cr."""
    return np.asarray(rgb, dtype=np.float64) @ _YCC.T


@dataclass
class SkinModel:
    mean: np.ndarray          # (3,) YCbCr
    cov: np.ndarray           # (3, 3) YCbCr covariance (luma already widened)
    inliers: int              # colours the last refit used
    samples: int              # colours it was given

    def d2(self, rgb: np.ndarray) -> np.ndarray:
        x = to_ycc(rgb) - self.mean
        inv = np.linalg.inv(self.cov)
        return np.einsum("...i,ij,...j->...", x, inv, x)

    def probability(self, rgb: np.ndarray) -> np.ndarray:
        """(..., 3) sRGB in [0, 1] -> (...) skin probability in [0, 1] (float32)."""
        d2 = self.d2(rgb)
        return np.exp(-np.maximum(d2 - INLIER_D2, 0.0) / (2 * FALLOFF)).astype(np.float32)


def fit_skin(rgb: np.ndarray, iterations: int = 6, luma_scale: float = 1.5,
             min_sigma: float = 0.008) -> SkinModel:
    """Fit the skin model to (N, 3) sRGB colours in [0, 1] that are mostly skin.

    luma_scale: the luma standard deviation is widened by this factor after the fit;
    min_sigma: a floor on every channel's standard deviation (a flat synthetic or over-exposed
    region would otherwise give a degenerate covariance)."""
    x = to_ycc(np.asarray(rgb, dtype=np.float64).reshape(-1, 3))
    if len(x) < 20:
        raise ValueError(f"too few colours ({len(x)}) to fit a skin model")
    med = np.median(x, 0)
    mad = np.median(np.abs(x - med), 0) * 1.4826
    sig = np.maximum(mad, min_sigma)
    keep = (((x - med) / sig) ** 2).sum(1) < TRIM_D2
    if keep.sum() < 10:
        keep = np.ones(len(x), bool)
    floor = np.eye(3) * min_sigma ** 2
    mean, cov = med, np.diag(sig ** 2)
    for _ in range(iterations):
        mean = x[keep].mean(0)
        cov = np.cov(x[keep].T) + floor
        d = x - mean
        d2 = np.einsum("ni,ij,nj->n", d, np.linalg.inv(cov), d)
        new = d2 < TRIM_D2
        if new.sum() < 10 or np.array_equal(new, keep):
            break
        keep = new
    # Trimming at a chi-square bound shrinks the covariance of a true Gaussian by ~1/0.97 only;
    # luma is widened for shading the regions do not show.
    s = np.array([luma_scale, 1.0, 1.0])
    cov = cov * np.outer(s, s)
    return SkinModel(mean, cov, int(keep.sum()), len(x))


def _polygon(mask_img, pts: np.ndarray, shrink: float) -> None:
    from PIL import ImageDraw
    c = pts.mean(0)
    p = c + (pts - c) * shrink
    ImageDraw.Draw(mask_img).polygon([(float(a), float(b)) for a, b in p], fill=255)


def region_polygons(det68: np.ndarray) -> list[np.ndarray]:
    """The cheek and forehead sampling polygons (photo pixels) from the 68 iBUG landmarks."""
    lm = np.asarray(det68, dtype=np.float64)
    eye_r, eye_l = lm[36:42].mean(0), lm[42:48].mean(0)
    iod = float(np.linalg.norm(eye_l - eye_r))
    across = (eye_l - eye_r) / max(iod, 1e-6)
    up = np.array([across[1], -across[0]])       # perpendicular to the eye line
    if np.dot(up, eye_r - lm[57]) < 0:           # pointing away from the mouth
        up = -up
    # Cheeks: between the jaw, the mouth corner, the nostril and (half-way down from) the eye.
    cheek_r = np.stack([lm[1], lm[4], lm[48], lm[31], (lm[40] + lm[31]) / 2 + 0.0 * up])
    cheek_l = np.stack([lm[15], lm[12], lm[54], lm[35], (lm[47] + lm[35]) / 2])
    # Forehead: a band above the brows, clear of them, between their middles.
    brow = lm[17:27]
    top_brow = brow[np.argmax(brow @ up)]
    base = float(top_brow @ up)
    a, b = lm[19], lm[24]
    lo, hi = 0.12 * iod, 0.42 * iod
    proj = lambda p, h: p - (float(p @ up) - base) * up + h * up  # noqa: E731
    forehead = np.stack([proj(a, lo), proj(b, lo), proj(b, hi), proj(a, hi)])
    return [cheek_r, cheek_l, forehead]


def region_mask(det68: np.ndarray, height: int, width: int, shrink: float = 0.85) -> np.ndarray:
    """(H, W) bool mask of the cheek and forehead regions in a photo of that size."""
    from PIL import Image
    img = Image.new("L", (int(width), int(height)), 0)
    for poly in region_polygons(det68):
        _polygon(img, poly, shrink)
    return np.asarray(img) > 127


def lips_mask(det68: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W) bool mask inside the outer lip contour (iBUG 48-59): lips are not skin-coloured but
    belong to the face texture, so the builder does not let the skin model reject them."""
    from PIL import Image
    img = Image.new("L", (int(width), int(height)), 0)
    _polygon(img, np.asarray(det68, dtype=np.float64)[48:60], 1.0)
    return np.asarray(img) > 127


def fit_photo(photo: np.ndarray, det68: np.ndarray) -> SkinModel:
    """The skin model of one photo ((H, W, 3) uint8 or float in [0, 1]) from its landmarks."""
    img = photo.astype(np.float64) / 255.0 if photo.dtype == np.uint8 else np.asarray(photo, np.float64)
    m = region_mask(det68, img.shape[0], img.shape[1])
    if m.sum() < 20:
        raise ValueError("the cheek and forehead regions hold too few pixels for a skin model")
    return fit_skin(img[m])
