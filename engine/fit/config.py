"""Every weight, learning rate, schedule and constant of the fit, in one place.

The pipeline (``pipeline.py``, one module per stage in ``stages/``):
  1. detect: the face and its landmarks; a square crop around them (``CropConfig``).
  2. coarse: pose from landmarks (weak-perspective PnP), then landmarks + shape/expression priors
     (``CoarseConfig``).
  3. unwrap: lighting by robust least squares on the visible skin, then the photo unwrapped into
     the atlas and de-lit: the texture's starting point (``UnwrapConfig``).
  4. fine: every term - identity, content, pixel (also fits lighting), landmark and the priors -
     on shape, expression, pose, lighting and texture together (``FineConfig``).
  5. albedo: the photo unwrapped again at full resolution on the final geometry, de-lit and
     completed (``AlbedoConfig``).
  6. write: the result folder (``results.py``).
Loss weights multiply terms that are each normalised to be O(1) at the start of a typical fit.
A term with weight 0 is left out (``losses.weigh``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..camera import DEFAULT_SUBJECT_DISTANCE_CM
from ..lighting import LightFit


@dataclass(frozen=True)
class Weights:
    landmark: float = 1.0          # mean squared landmark distance / inter-ocular distance^2
    contour: float = 0.3           # jaw contour landmarks, point-to-curve
    identity: float = 0.5          # 1 - cosine of recogniser embeddings
    content: float = 0.1           # normalised distance of intermediate activations
    pixel: float = 1.0             # masked L1 over the face region, colours in [0,1]
    shape_prior: float = 2e-3      # ||p_s||^2 / n  (coefficients ~ N(0,1))
    expr_prior: float = 2e-3       # ||p_e||_1 / n  (sparse expressions)
    expr_init: float = 1e-2        # stay near the detector's blendshape scores
    tex_prior: float = 0.05        # albedo towards its low-pass / skin tone where the photo is weak
    # A latent texture model's unit Gaussian prior, mean z^2: a typical face (z^2 ~ 1) costs a
    # tenth of a typical pixel term; stronger pulls every fit back to the mean face.
    latent_prior: float = 0.005
    tex_symmetry: float = 0.05     # left/right symmetry of the face albedo
    tex_smooth: float = 0.02       # total variation of the albedo residual
    light_prior: float = 1e-3      # higher-order SH small relative to ambient
    # Albedo x light is only known up to a scale: keep the light's mean irradiance over the face
    # at 1 (as the least-squares start has it), so that the albedo keeps the skin's colour. 0.1:
    # strong enough that the level drifts < 2% over a fit, weak next to the pixel term.
    light_level: float = 0.1
    # Coarse stage, focal length unknown: (log(distance / assumed distance) / distance_log_sigma)^2,
    # the prior on the camera-to-face distance (``CameraConfig``). As strong as the shape prior on
    # one coefficient (2e-3 x 1/100): the landmarks move it only where the perspective shows.
    distance_prior: float = 2e-5


@dataclass(frozen=True)
class Rates:
    rotation: float = 0.01
    translation: float = 0.3       # cm
    shape: float = 0.05
    expression: float = 0.02
    light: float = 0.01
    texture: float = 0.004       # linear albedo units per step, split over the pyramid levels
    latent: float = 0.05         # a generator's latent (unit Gaussian prior) per step


@dataclass(frozen=True)
class DetectConfig:
    """Re-detection on a canonical crop (``stages/detect.redetect``). The landmarker finds the face
    on the whole photo first and then places its landmarks inside a box of its own, so the same face
    framed differently gets slightly different landmarks (1% of the eye distance between a tight
    crop and the whole photo), and the shape follows them. Detecting again on a square around the
    first landmarks, ``scale`` x their box and resampled to ``res`` pixels, shows the landmarker the
    same picture whatever the framing; ``passes`` such rounds (2: a further 2x steadier than 1), the
    last one on ``average`` jittered copies of the square, their points' median.
    Landmark disagreement between the benchmark's framings and the whole photo (mean distance /
    eye distance, median over 32 framings of 8 photos): 0.0061 without re-detection, 0.0029 with 2
    passes, 0.0017 with 2 passes and the median of 9 crops (0.2-0.3 s of detection instead of 0.01
    s; benchmarks/landmark_jitter.py).
    Re-framing benchmark (benchmarks/shape.py --part reframe --preset fast, median / worst face
    shape movement): 0.245 / 0.632 mm without; 0.137 / 0.442 with these settings alone; 0.070 /
    0.150 (head 0.100 / 0.229) together with ``CameraConfig.principal="face"``,
    ``CropConfig.antialias`` and ``FineConfig.pose_rate_scale`` 0.1, which is what lets the fine
    stage take the re-detected landmarks without overshooting (tests/engine/test_pipeline.py
    test_short_fit_lowers_the_total_loss). On the balanced preset the recogniser's terms moved it
    further (0.42 / 0.73 mm over the 8 photos; 0.12 / 0.27 with ``--recognizer none``); with
    ``FineConfig.identity_average`` and ``identity_shape_rate`` 0.15 / 0.38, and with
    ``identity_flip`` too 0.135 / 0.266 (another machine, 30 framings: ``FineConfig``)."""

    passes: int = 2
    scale: float = 1.5             # fits inside even a tight portrait crop
    res: int = 512
    # The last pass detects on this many copies of the canonical crop, shifted by +-``jitter`` x
    # its side and scaled by 1 +- ``jitter`` (``stages/detect.JITTERS``), and takes the median of
    # their points: the landmarker's own jitter on a resampled picture averages out.
    average: int = 9
    jitter: float = 0.02
    antialias: bool = True         # the square resampled as ``CropConfig.antialias``


@dataclass(frozen=True)
class CameraConfig:
    """The camera when neither EXIF nor the user gives a focal length (``pipeline.prior_camera``)."""

    # The assumed camera-to-face distance (cm); the focal length follows from the face's size in
    # the photo, so that a crop or a rescale cannot change the perspective (camera.py
    # DEFAULT_SUBJECT_DISTANCE_CM says why this value).
    subject_distance_cm: float = DEFAULT_SUBJECT_DISTANCE_CM
    # ``fit_distance``: the coarse stage also refines the distance from the landmarks' perspective
    # (a near camera shows the nose larger than the cheeks), focal length and distance scaled
    # together so that the face keeps its size in the photo, under a log-normal prior: this many
    # e-folds is one standard deviation (0.5: 95% of distances within 0.37-2.7 x the assumed one).
    # Off by default: it finds a 35 cm selfie's distance on synthetic landmarks
    # (tests/engine/test_focal_prior.py), but on real portraits the landmarks constrain it so weakly
    # that two framings with the same landmarks ended 7% apart in focal length, which moved the
    # shape more than the fixed prior does (benchmarks/shape.py, fast preset).
    fit_distance: bool = False
    # Where the optical axis meets the photo: "image" (its centre: right for an uncropped photo)
    # or "face" (the centre of the face's nose and eye landmarks: the face on the axis, whatever
    # the framing). A photo without a known focal length may well be a crop, whose centre says
    # nothing about the lens's axis; with "image" a crop moved the axis relative to the face, the
    # shape absorbed the changed off-axis stretch, and a tight crop of a portrait whose face sits
    # high (nasa_eileen_collins, obama: a face side above the centre) moved the face shape by
    # 0.34-0.44 mm; with "face" by 0.04-0.10 mm (benchmarks/shape.py, fast, with the re-detection).
    # The price: an uncropped photo's off-centre face is seen as if on the axis, which the head's
    # rotation absorbs up to a stretch of ~1/cos(angle off the axis) (2% at a face side off the
    # centre of a portrait). A focal length from EXIF or the user keeps the image's centre.
    principal: str = "face"
    distance_log_sigma: float = 0.5
    distance_rate: float = 0.02    # Adam step on log(distance)


@dataclass(frozen=True)
class UnseenConfig:
    """The parts of the head a photo does not show (``fit/unseen.py``): after the fine stage the
    identity is replaced by the model's most likely identity given the fitted shape of the seen
    face (its Gaussian conditional mean), so the skull, ears and neck follow the model's statistics
    instead of whatever the photo terms pushed them to."""

    enabled: bool = True
    # The seen face is taken as known to this many cm per vertex coordinate, as if the errors were
    # independent: the smaller, the closer the completed face stays to the fitted one, the larger,
    # the more of the identity that the face determines only weakly returns to the mean. 0.8: a
    # monocular fit's face is good to ~1.5-2 mm per vertex, but its errors are correlated - the photo
    # gives ~900 landmark coordinates, not the ~20,000 vertex coordinates - so that independent
    # errors would overstate what is known by sqrt(20000 / 900) ~ 4.7. On the benchmark's fits
    # (benchmarks/shape.py) it moves the seen face by ~0.05 mm and the skull and neck by ~0.3 mm.
    face_sigma_cm: float = 0.8


@dataclass(frozen=True)
class CropConfig:
    """The square crop the coarse and fine stages see (detect stage)."""

    scale: float = 1.9             # crop side / landmark box side: the whole head with some margin
    headroom: float = 0.05         # crop centre moved up by this x side: the forehead has no landmarks
    outline_shrink: float = 0.97   # the detector's face outline shrunk toward its centre by this,
                                   # so that the outline's own error does not let background in
    # Resample the crop with a filter as wide as the shrink (``crop.resample_square``), so that it
    # hardly depends on where the photo's pixel grid falls; off: an integer box filter, then bicubic,
    # which aliases when the remaining shrink is up to 2x (a 2/3-resolution copy of a photo then
    # gave a visibly different crop). With the re-detection and the face-centred camera, the
    # re-framing benchmark's face movement fell from 0.100 / 0.323 mm (median / worst) to 0.076 /
    # 0.160 with it (benchmarks/shape.py, fast).
    antialias: bool = True


@dataclass(frozen=True)
class CoarseConfig:
    # The first 1/pose_only_divisor of the steps move only the pose: the PnP start can be a few
    # degrees off, and shape would otherwise absorb the pose error.
    pose_only_divisor: int = 4
    report_every: int = 5          # progress messages every this many steps (a step is ~2 ms)


@dataclass(frozen=True)
class UnwrapConfig:
    # The fine stage's texture atlas is at most this many texels a side: the fine render is
    # 224-320 px, so a larger atlas only slows the texture sampling and its priors.
    max_res: int = 512
    shade_floor: float = 0.3       # de-lighting divides by at least this (no blow-up in shadow)
    fill_min_conf: float = 0.02    # texels seen worse than this are filled from their neighbours
    lighting: LightFit = field(default_factory=LightFit)
    # Exposure from the photo's white point (``lighting.exposure_from_white_point``): the light,
    # not the albedo, absorbs an underexposed photo's darkness. Below a white point of 0.25 it is
    # undone fully, from 0.5 up (every normally exposed photo we tried: 0.53-1.0) not at all.
    exposure_full: float = 0.25
    exposure_none: float = 0.5


@dataclass(frozen=True)
class FineConfig:
    # Pose rates are this x ``Rates``: after the coarse stage the pose only needs small
    # corrections, and a large pose step makes the pixel term jump between steps: the start
    # texture is unwrapped at the coarse pose, so any pose step misaligns it with the photo. 0.1
    # (was 0.3): with 0.3 the first steps of a 12-step fit of codait_luciano raised the pixel term
    # from 0.0051 to 0.0109 and the fit ended above its start (0.0080 > 0.0077); with 0.1 it ends
    # at 0.0054 (tests/engine/test_pipeline.py test_short_fit_lowers_the_total_loss). On the
    # re-framing benchmark (fast) it left the landmark error as it was (mean 0.0235 both) and the
    # shape movement too (face 0.076 -> 0.070 mm median, 0.160 -> 0.150 worst).
    pose_rate_scale: float = 0.1
    # Every rate ramps up linearly over this many first steps of its optimiser (0: none; with a
    # latent texture model the geometry's optimiser starts after ``latent_first``): Adam's first
    # steps move every coordinate by its full rate whatever its gradient's size. Off: 4 steps also
    # stop the short fit's overshoot, but on the re-framing benchmark (fast) the face moved more
    # (0.084 / 0.173 mm against 0.076 / 0.160 without) and the landmark error rose (0.0239 against
    # 0.0235 mean).
    warmup_steps: int = 0
    # Pixels whose normal is within ``grazing_lo`` (cosine) of the silhouette mix face and
    # background: their pixel-loss weight ramps from 0 at cos = grazing_lo to 1 at lo + width.
    grazing_lo: float = 0.2
    grazing_width: float = 0.3
    report_every: int = 2          # progress messages every this many steps
    # With the recogniser's terms on (``FitConfig.identity``: balanced and best). Their gradient is
    # a rough function of the picture: two framings of one photo, whose crops differ only in how
    # the pixels were resampled, sent the face shape 0.42 mm apart (median over the re-framing
    # benchmark's 32 framings of 8 photos; 0.04 mm after the coarse stage, 0.12 mm at the end of a
    # fine stage without the recogniser), and the same noise blurred one person's neutral and
    # smiling shapes together. The three settings below, on the balanced preset
    # (benchmarks/shape.py --preset balanced, face: re-framing median / worst mm, landmark error;
    # 40 London pairs re-identification / AUC):
    #   none of them              0.415 / 0.728, 0.0262   0.838 / 0.986
    #   averaged alignments       0.337 / 0.620, 0.0260
    #   + shape rate 0.4          0.228 / 0.422, 0.0259   0.938 / 0.993
    #   + shape rate 0.2          0.149 / 0.377, 0.0257   0.887 / 0.992
    #   + the geometry's decay    0.102 / 0.259, 0.0242   0.787 / 0.987
    # (the same 40 pairs' head re-identification / AUC: 0.800 / 0.984 none, 0.912 / 0.989 at 0.4,
    # 0.875 / 0.988 at 0.2, 0.787 / 0.983 with the decay). The default is the 0.2 row, the only one
    # better than none of them on every figure; the decay meets the re-framing target but costs
    # re-identification, so it is off.
    # Tried and not kept: one Adam second moment for all shape coefficients (0.425 / 0.750),
    # averaging the geometry's last half of iterates instead of the decay (0.275 / 0.476 against
    # 0.267 / 0.428 with the decay, both at the full shape rate), and 10x the fine stage's landmark
    # weights (better landmarks, 0.0213, but 0.160 / 0.379 at shape rate 0.2).
    # - The identity and content terms are the mean over ``identity_average`` alignments of photo
    #   and render onto the recogniser's chip: the detected one, then copies shifted and scaled by
    #   +-``identity_jitter`` x the chip (``fine.jittered_alignments``; 1: the detected one only).
    identity_average: int = 4
    identity_jitter: float = 0.03
    # - The shape steps at this x ``Rates.shape``: the recogniser's terms still move it, but slowly
    #   enough that their noise does not add up over the steps.
    identity_shape_rate: float = 0.2
    # - ``identity_geometry_decay``: the geometry's rates (shape, pose, expression) fall linearly to
    #   0 over the steps that move it (``optim.Adam`` ``decay``). Off (figures above).
    identity_geometry_decay: bool = False
    # - ``identity_flip``: the recogniser also sees each chip, photo and render alike, mirrored
    #   (``fine.with_mirrors``: twice its work; a balanced fit 14.5-15.2 s -> 18.7-19.1 s).
    #   Figures from a second machine, where the rows above do not repeat exactly: the fit is
    #   that sensitive. What moves the shape between framings is the fine stage's answer to any
    #   change of the pixels, not the framing as such: +-1 grey level of noise on the photo
    #   moves the face 0.175 and 0.159 mm (median over the 8 photos, two draws of the noise,
    #   benchmarks/shape.py --noise for the second; 0.148 without the recogniser, 0.029 after
    #   the coarse stage), as much as a new framing does; with the mirrors 0.134 and 0.166 mm.
    #   Re-framing (the benchmark now leaves out crops that are the same image: 30 framings)
    #   0.159 / 0.287 mm, mean 0.162, landmarks 0.0248 -> 0.135 / 0.266, mean 0.147, 0.0252 with
    #   it; 40 pairs 0.875 / 0.993 -> 0.900 / 0.994 (face), 0.900 / 0.993 -> 0.900 / 0.994
    #   (head). Small gains, each of the size that noise moves the figures, but better or equal
    #   on every figure except the second noise draw's median.
    #   Tried on that run and not kept: the chips blurred by 1 px before the recogniser (0.153 /
    #   0.283), the fine stage moving only the first 30 or 15 shape components (0.167 / 0.341,
    #   0.159 / 0.399), the content term off (0.188 / 0.430) or at 3x (0.146 / 0.324), mirrors
    #   with 2 alignments instead of 4 (0.154 / 0.326), the mirrors on every other step only, at
    #   no extra cost (0.147 / 0.291; mean 0.165, against 0.162 without and 0.147 with them on
    #   every step: nothing gained), the geometry's decay at shape rate 0.4 or 0.6 (0.174 /
    #   0.418, 0.213 / 0.397, against 0.156 / 0.274 on the 32 framings), and a smooth
    #   (Charbonnier) pixel term instead of L1 (noise 0.190 mm).
    identity_flip: bool = True
    # GANFit's schedule for a latent texture model: the first ``latent_first`` share of the steps
    # move only the latent and the lighting (the geometry is the coarse stage's, and a wrong start
    # texture would otherwise pull it); then everything together.
    latent_first: float = 0.3
    # Trust weight of the photometric terms (``trust.py``): the per-photo skin model, the eye and
    # inner-mouth regions, and Geman-McClure weights of the pixel residuals re-estimated every
    # ``robust_every`` steps; a residual of ``robust_scale`` x its robust spread (MAD) halves the
    # weight's square root. 0 turns the robust part off.
    trust: bool = True
    robust_every: int = 5
    robust_scale: float = 2.5
    # The eyelids and the gaze (the ARKit ``eye*`` weights) stay at the coarse stage's landmark
    # fit: the photometric terms do not see the eyes (trust 0) and the recogniser's terms would
    # otherwise close a lid (a balanced fit of Pratt's open eye came out at eyeBlink_L 0.69).
    hold_eyes: bool = True


@dataclass(frozen=True)
class AlbedoConfig:
    # The photo around the face is resampled to its native size, within these bounds: native for
    # full detail, at most 2048 (memory) and at least 64 (tiny faces still give a usable atlas).
    photo_res_min: int = 64
    photo_res_max: int = 2048
    depth_res: int = 512           # visibility depth map size; finer gives no better occlusion
    shade_floor: float = 0.3       # as UnwrapConfig.shade_floor
    # Photo vs fitted albedo blend: a texel takes the de-lit photo fully from confidence 1/3 on.
    conf_gain: float = 3.0
    # A latent texture model's per-texel detail layer: the de-lit photo's difference from the
    # model's albedo, kept only where the photo is trusted (seen x frontal x skin x robust weight).
    # Its prior pulls it to 0 with this strength relative to a fully trusted texel's data term.
    # Off by default: on 29 London people the model never saw it hardly raised the identity cosine
    # to the unseen smiling photo (0.952 with, 0.950 without; scripts/eval_latent.py); it does keep
    # the photo's wrinkles, freckles and brows (``--detail``).
    detail: bool = False
    detail_prior: float = 0.1
    detail_robust_scale: float = 3.0   # Geman-McClure scale in MADs of the albedo residual
    # A latent model's forehead above the brows, neck below the chin and jaw sides where the photo
    # does not show skin (a fringe, a hat, a collar, unseen) are continued from the skin it does show
    # (``uvspace.complete_head``), not left to the model, whose colours there are its training
    # photos' hairlines and collars (the band across the upper forehead).
    continue_skin: bool = True


@dataclass(frozen=True)
class FitConfig:
    preset: str = "balanced"
    render_res: int = 224          # fine-stage square crop, pixels
    texture_res: int = 1024        # albedo atlas
    coarse_steps: int = 150
    fine_steps: int = 80
    identity: bool = True          # identity + content losses (needs the recogniser)
    fit_expression: bool = True
    weights: Weights = field(default_factory=Weights)
    rates: Rates = field(default_factory=Rates)
    coarse_rates: Rates = field(default_factory=lambda: Rates(rotation=0.02, translation=0.5,
                                                                  shape=0.1, expression=0.04))
    detect: DetectConfig = field(default_factory=DetectConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    crop: CropConfig = field(default_factory=CropConfig)
    coarse: CoarseConfig = field(default_factory=CoarseConfig)
    unwrap: UnwrapConfig = field(default_factory=UnwrapConfig)
    fine: FineConfig = field(default_factory=FineConfig)
    unseen: UnseenConfig = field(default_factory=UnseenConfig)
    albedo: AlbedoConfig = field(default_factory=AlbedoConfig)
    preview_count: int = 4         # previews per run with --json-progress
    seed: int = 0

    def capped(self, max_steps: int | None) -> "FitConfig":
        if max_steps is None:
            return self
        return replace(self, coarse_steps=min(self.coarse_steps, max_steps),
                       fine_steps=min(self.fine_steps, max_steps))


PRESETS: dict[str, FitConfig] = {
    "fast": FitConfig(preset="fast", render_res=160, texture_res=512, coarse_steps=80, fine_steps=20,
                      identity=False),
    "balanced": FitConfig(preset="balanced"),
    "best": FitConfig(preset="best", render_res=320, texture_res=1024, coarse_steps=200,
                      fine_steps=200),
}


def get_config(preset: str, **overrides) -> FitConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    cfg = PRESETS[preset]
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return replace(cfg, **overrides) if overrides else cfg
