"""Where the photo can be trusted to show the face's skin: a per-pixel weight in [0, 1] for the
photometric terms, the latent's start and the detail layer of a latent texture model.

Three factors, multiplied:

* **skin**: the dataset builder's per-photo colour model (``texture/skin.py``: a trimmed YCbCr
  Gaussian fitted on the landmark-bounded cheeks and forehead) scores every pixel, so glasses
  frames, a fringe, a beard or a hat get a low weight; the lips are exempt (not skin-coloured but
  part of the albedo);
* **regions**: the eyes (the model's eyeballs are painted, not fitted) and the inner mouth (teeth
  and tongue are not in the albedo) from the landmarks are 0;
* **robust**: Geman-McClure weights of the residuals against the current fit, re-estimated as the
  fit goes (iteratively re-weighted least squares), so what the model cannot explain - frames the
  skin model accepts, highlights, hands - is treated as an outlier and filled from the model.

``skin_trust`` is fixed per image; ``geman_mcclure`` is the robust factor for any residual map.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# The eye regions are the landmark eye contours scaled up by this about their centre (the lids and
# lashes around the opening are not skin either).
EYE_GROW = 1.6
# A pixel keeps at least this much trust from the skin model alone (robust weights go lower): a
# skin model fitted to a poor majority (a full beard and a fringe) must not switch the face off.
SKIN_FLOOR = 0.05
ERODE_IOD = 0.06
HAIR_ODDS = 1.0
HAIR_BAND = (0.7, 1.1)  # x the eye distance above the brows: where a colour model of the hair is fitted


def _polygon_mask(polys: list[np.ndarray], h: int, w: int) -> np.ndarray:
    from PIL import Image, ImageDraw
    img = Image.new("L", (int(w), int(h)), 0)
    d = ImageDraw.Draw(img)
    for p in polys:
        d.polygon([(float(a), float(b)) for a, b in p], fill=255)
    return np.asarray(img) > 127


def region_masks(det68: np.ndarray, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """(eyes, inner_mouth) bool (H, W) masks from the 68 iBUG landmarks (pixels of that image)."""
    lm = np.asarray(det68, dtype=np.float64)
    eyes = []
    for sl in (slice(36, 42), slice(42, 48)):
        e = lm[sl]
        c = e.mean(0)
        eyes.append(c + (e - c) * EYE_GROW)
    return _polygon_mask(eyes, h, w), _polygon_mask([lm[60:68]], h, w)


def hair_polygon(det68: np.ndarray) -> np.ndarray:
    """The band above the skin model's forehead region (``HAIR_BAND`` x the eye distance above
    the brows, between the brows' outer ends): hair, a hat or background on most photos."""
    lm = np.asarray(det68, dtype=np.float64)
    eye_r, eye_l = lm[36:42].mean(0), lm[42:48].mean(0)
    iod = float(np.linalg.norm(eye_l - eye_r))
    across = (eye_l - eye_r) / max(iod, 1e-6)
    up = np.array([across[1], -across[0]])
    if np.dot(up, eye_r - lm[57]) < 0:
        up = -up
    lo, hi = HAIR_BAND
    a, b = lm[17], lm[26]
    return np.stack([a + lo * iod * up, b + lo * iod * up, b + hi * iod * up, a + hi * iod * up])


def _hair_share(img: np.ndarray, det68: np.ndarray, skin_model) -> np.ndarray:
    """(H, W) the skin's share of the likelihood against a colour model of what lies above the
    forehead (``hair_polygon``), when that is mostly not skin: a fringe of the hair's colour that
    the skin model alone lets through (brown or blond hair in a warm light) gets a low weight. 1
    where the band is mostly skin (a bald head, a high forehead) or too small."""
    from ..texture import skin as S
    H, W = img.shape[:2]
    band = _polygon_mask([hair_polygon(det68)], H, W)
    cols = img[band]
    if len(cols) < 50:
        return np.ones((H, W), np.float32)
    # Mostly skin: the band's colours fit the skin model about as well as the skin's own regions
    # do (blond hair can be inside the skin model's bound and still clearly further out).
    ref = float(np.median(skin_model.d2(img[S.region_mask(det68, H, W)])))
    if float(np.median(skin_model.d2(cols))) < max(3.0, 2.0 * ref):
        return np.ones((H, W), np.float32)
    hair = S.fit_skin(cols, luma_scale=1.0)
    def loglik(m):
        return -0.5 * m.d2(img) - 0.5 * np.log(np.linalg.det(m.cov))
    # Odds of HAIR_ODDS to 1 for hair where the colours alone cannot tell: a fringe's highlights
    # are near the skin's colour, and the skin elsewhere is far from the hair's.
    d = np.clip(loglik(hair) - loglik(skin_model) + np.log(HAIR_ODDS), -30, 30)
    return (1.0 / (1.0 + np.exp(d))).astype(np.float32)


def skin_trust(image: torch.Tensor, det68: np.ndarray, max_res: int = 512) -> torch.Tensor:
    """(1, H, W) trust of each pixel of ``image`` ((1, H, W, 3) sRGB in [0, 1]) from the skin model
    and the eye/mouth regions; ``det68``: (68, 2) landmarks in that image's pixels. Where no skin
    model can be fitted (too few pixels in the regions) only the regions count. Computed at most
    ``max_res`` pixels a side (and resized back): it is a low-frequency weight."""
    H0, W0 = image.shape[1:3]
    if max(H0, W0) > max_res:
        s = max_res / max(H0, W0)
        small = F.interpolate(image.permute(0, 3, 1, 2), size=(round(H0 * s), round(W0 * s)), mode="area")
        t = skin_trust(small.permute(0, 2, 3, 1), np.asarray(det68) * s, max_res)
        return F.interpolate(t[:, None], size=(H0, W0), mode="bilinear", align_corners=False)[:, 0]
    from ..texture import skin as S
    img = image[0].detach().cpu().numpy().astype(np.float64)
    H, W = img.shape[:2]
    try:
        model = S.fit_photo(img, det68)
        prob = model.probability(img)
        prob = prob * _hair_share(img, det68, model)
    except (ValueError, np.linalg.LinAlgError):
        prob = np.ones((H, W), np.float32)
    prob = np.maximum(prob, S.lips_mask(det68, H, W).astype(np.float32))
    eyes, mouth = region_masks(det68, H, W)
    prob = np.maximum(prob, SKIN_FLOOR) * ~(eyes | mouth)
    t = torch.from_numpy(prob.astype(np.float32))[None, None].to(image.device)
    # Eroded (a min filter over ERODE_IOD x the inter-ocular distance): thin occluders - a glasses
    # frame, hair strands - are only partly rejected pixel by pixel, and their edges mix with skin.
    iod = float(np.linalg.norm(np.asarray(det68)[36] - np.asarray(det68)[45]))
    k = max(1, int(round(iod * ERODE_IOD)) | 1)
    if k > 1:
        # Single-pixel speckle of the colour model first averaged away, so erosion does not grow it.
        t = F.avg_pool2d(t, 3, stride=1, padding=1, count_include_pad=False)
        t = -F.max_pool2d(-t, k, stride=1, padding=k // 2)
    # A 3x3 box: the weight's edges are soft.
    return F.avg_pool2d(t, 3, stride=1, padding=1, count_include_pad=False)[:, 0]


def geman_mcclure(residual: torch.Tensor, mask: torch.Tensor, scale: float, min_c: float = 0.03) -> torch.Tensor:
    """IRLS weights of the Geman-McClure penalty rho(r) = r^2 / (r^2 + c^2) for a residual map
    (any shape, >= 0), normalised to 1 at r = 0: w = (c^2 / (c^2 + r^2))^2, with c = ``scale`` x
    the robust spread (1.4826 x median) of the residuals where ``mask`` > 0.5, at least ``min_c``
    (colour units: a photo's noise; a near-perfect fit must not make every residual an outlier).
    Not differentiable (a weight, re-estimated between steps)."""
    r = residual.detach()
    sel = r[mask.detach() > 0.5]
    if sel.numel() > 65536:  # the median of a regular subsample is as good and much cheaper
        sel = sel[:: sel.numel() // 65536]
    if sel.numel() < 10 or scale <= 0:
        return torch.ones_like(r)
    sigma = float(sel.median()) * 1.4826
    c2 = max(scale * sigma, min_c) ** 2
    return (c2 / (c2 + r * r)) ** 2


def landmark_trust(trust: torch.Tensor, pts: torch.Tensor, floor: float = 0.25) -> torch.Tensor:
    """Trust sampled at points (N, 2) crop pixels of a (1, H, W) trust map, as per-point weights in
    [floor, 1]: outline landmarks that a detector put on a beard or a scarf pull less."""
    H, W = trust.shape[-2:]
    g = torch.stack([pts[:, 0] / W * 2 - 1, pts[:, 1] / H * 2 - 1], -1)[None, None]
    v = F.grid_sample(trust[:, None], g, mode="bilinear", padding_mode="border", align_corners=False)
    return v[0, 0, 0].clamp(floor, 1.0)


def weigh_outline(targets, trust: torch.Tensor, inset: float = 0.12, floor: float = 0.25) -> None:
    """Per-point weights for the outline landmarks (the 17 jaw points and the detector's dense
    face-oval points) from the trust map, sampled ``inset`` x the inter-ocular distance inside
    each point (toward the face's centre): a detector that followed a beard's or a scarf's edge
    pulls the jaw less, and the shape prior and the inner landmarks hold it. Sets
    ``targets.jaw_weights`` and scales ``targets.weights`` in place."""
    det = targets.det[0]
    centre = det[27:36].mean(0)  # the nose
    def inside(p: torch.Tensor) -> torch.Tensor:
        d = centre - p
        return p + d / d.norm(dim=-1, keepdim=True).clamp_min(1e-6) * inset * targets.iod
    targets.jaw_weights = landmark_trust(trust, inside(det[:17]), floor)
    if targets.dense is not None and targets.weights is not None:
        from ..perception.landmarks import MEDIAPIPE_FACE_OVAL
        from .stages.detect import load_dense_correspondence
        idx = torch.as_tensor(load_dense_correspondence("mediapipe478").point_index, device=det.device)
        oval = torch.isin(idx, torch.as_tensor(list(MEDIAPIPE_FACE_OVAL), device=det.device))
        if oval.any():
            w = targets.weights.clone()
            w[oval] = w[oval] * landmark_trust(trust, inside(targets.dense[0][oval]), floor)
            targets.weights = w
