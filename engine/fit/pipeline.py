"""The fit, GANFit-style analysis-by-synthesis of one photo, as the six steps it is made of.

    detect -> coarse -> unwrap -> fine -> albedo -> write

Each step is a module of ``stages/`` with a ``run`` function that takes and returns dataclasses;
nothing is kept on an object between steps. Settings: ``config.py`` (one section per stage); loss
terms: ``losses.py`` and the texture model's own ``TextureModel.priors`` (``texture.py``); the
rendering: ``render/forward.py``; the lighting solve: ``lighting.py``.

Colour: photos are sRGB; shading is computed in linear light (albedo * SH irradiance) and the render
is converted back to sRGB before it is compared with the photo. The albedo PNG is sRGB-encoded.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..camera import RIGID68, Intrinsics, focal_px_from_face
from ..errors import MissingModelError
from ..lighting import exposure_from_white_point
from .config import FitConfig
from . import trust
from .hooks import Hooks
from .stages import albedo, coarse, detect, fine, unwrap, write
from .stages.albedo import FitOutput
from .stages.detect import Detection
from .texture import TexelTexture, TextureModel


# The steps in the order ``run`` takes them (``run.py`` names its progress stages after them).
STEPS = ("detect", "coarse", "unwrap", "fine", "albedo", "write")


def pick_device(name: str) -> torch.device:
    """``auto`` (CUDA when torch sees a GPU, else the CPU), ``cpu`` or ``cuda`` (a clear error when
    torch sees no GPU)."""
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise MissingModelError("CUDA was requested but this torch build sees no CUDA GPU. Use "
                                    "--device cpu, or install a CUDA build of torch.")
        return torch.device("cuda")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def prior_camera(model, det68: np.ndarray, width: int, height: int, distance_cm: float,
                 principal: str = "image") -> Intrinsics:
    """The camera of a photo with no known focal length: the focal length that shows the model's
    mean face as large as the detected one (its nose and eyes, ``camera.RIGID68``) from
    ``distance_cm`` (``config.CameraConfig``). A crop of the photo gets the same focal length in
    pixels, so the same perspective; a rescaled photo gets it rescaled. The principal point is the
    image's centre (``principal="image"``) or the centre of those landmarks (``"face"``: the face
    on the optical axis, which no crop changes either; ``CameraConfig.principal``)."""
    if principal not in ("image", "face"):
        raise ValueError(f"principal must be 'image' or 'face', not {principal!r}")
    idx = list(RIGID68)
    pts3 = model.vertices_neutral[model.landmarks68[idx]].detach().cpu().numpy()
    pts2 = np.asarray(det68, np.float64)[idx]
    f = focal_px_from_face(pts3, pts2, distance_cm / (100.0 * model.metres_per_unit))
    K = Intrinsics.from_focal(f, width, height)
    if principal == "face":
        cx, cy = (pts2.min(0) + pts2.max(0)) / 2
        K = Intrinsics(K.fx, K.fy, float(cx), float(cy), K.width, K.height)
    return K


@dataclass
class Env:
    """What every stage uses, loaded once per run."""

    model: object                        # models.facemodel.FaceModel
    cfg: FitConfig
    ctx: object                          # render.RenderContext
    device: torch.device
    recognizer: object | None = None     # perception.recognizer.Recognizer (identity terms)
    texture_factory: Callable[[torch.Tensor], TextureModel] = field(default=TexelTexture)


@dataclass
class CoarseView:
    """One photo after the coarse stage (``coarse_view``)."""

    framed: detect.Framed
    trust_map: torch.Tensor | None
    rough: coarse.CoarseResult
    K_full: Intrinsics                 # with the coarse stage's focal length


def coarse_view(env: Env, photo: np.ndarray, K_full: Intrinsics, det68: np.ndarray, dense: np.ndarray | None,
                expr_init: dict[str, float] | None, hooks: Hooks, focal_known: bool) -> CoarseView:
    """Frame the face, its trust map, and the coarse fit (pose, shape, expression; the focal
    length too when it is not known)."""
    m, cfg, dev = env.model, env.cfg, env.device
    framed = detect.frame(photo, det68, dense, K_full, m, cfg, dev)
    trust_map = None
    if cfg.fine.trust:
        trust_map = trust.skin_trust(framed.crop.image, framed.targets.det[0].cpu().numpy())
        trust.weigh_outline(framed.targets, trust_map)
    rough = coarse.run(m, cfg, framed, expr_init, hooks, dev,
                       fit_perspective=not focal_known and cfg.camera.fit_distance)
    if rough.focal_scale != 1.0:
        k = rough.focal_scale
        K_full = Intrinsics(K_full.fx * k, K_full.fy * k, K_full.cx, K_full.cy, K_full.width, K_full.height)
        Kc = framed.crop.K
        framed.crop = replace(framed.crop, K=Intrinsics(Kc.fx * k, Kc.fy * k, Kc.cx, Kc.cy, Kc.width, Kc.height))
    return CoarseView(framed, trust_map, rough, K_full)


def fit(env: Env, photo: np.ndarray, K_full: Intrinsics, det68: np.ndarray, dense: np.ndarray | None = None,
        expr_init: dict[str, float] | None = None, hooks: Hooks | None = None,
        focal_known: bool = True) -> FitOutput:
    """Steps 2-5 on a detected face: ``det68`` (68, 2) iBUG and ``dense`` (mediapipe478, or None)
    landmarks in full-resolution photo pixels. ``focal_known`` False: ``K_full``'s focal length is
    the prior's guess, and the coarse stage refines it (``CameraConfig.fit_distance``)."""
    hooks = hooks or Hooks()
    m, cfg, dev = env.model, env.cfg, env.device
    torch.manual_seed(cfg.seed)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    hooks.stage("coarse")
    cv = coarse_view(env, photo, K_full, det68, dense, expr_init, hooks, focal_known)
    framed, trust_map, rough, K_full = cv.framed, cv.trust_map, cv.rough, cv.K_full
    timings["coarse"] = time.perf_counter() - t

    t = time.perf_counter()
    hooks.check_cancel()
    hooks.stage("unwrap")
    exposure = exposure_from_white_point(photo, full=cfg.unwrap.exposure_full, none=cfg.unwrap.exposure_none)
    start = unwrap.run(env.ctx, m, cfg, rough.params, framed.crop, env.texture_factory, dev, exposure,
                       trust_map)
    timings["unwrap"] = time.perf_counter() - t

    t = time.perf_counter()
    hooks.stage("fine")
    refined = fine.run(env.ctx, m, cfg, rough, start, framed, env.recognizer, hooks, dev, trust_map)
    timings["fine"] = time.perf_counter() - t

    t = time.perf_counter()
    hooks.check_cancel()
    hooks.stage("albedo")
    out = albedo.run(env.ctx, m, cfg, refined, framed, photo, K_full, det68, dev, start.exposure)
    timings["albedo"] = time.perf_counter() - t
    out.timings = timings
    out.history = {"coarse": rough.history, "fine": refined.history}
    return out


@dataclass
class MultiFit:
    """A fit of several photos of one head (``fit_views``)."""

    views: list[FitOutput]             # one per photo; [0] the primary (its timings and history)
    coverage: dict                     # {"per_view": [...], "merged": share} (``albedo.coverage``)


def fit_views(env: Env, photos: list[np.ndarray], Ks: list[Intrinsics], faces: list[Detection],
              focal_known: list[bool], hooks: Hooks | None = None) -> MultiFit:
    """Steps 2-5 on several detected photos of one person: each photo coarse-fitted and unwrapped
    on its own (pose, camera, expression, lighting), then ONE fine stage for all of them (one
    shape, one texture: ``fine.run_views``) and one albedo merged by per-texel trust
    (``albedo.run_views``)."""
    hooks = hooks or Hooks()
    m, cfg, dev = env.model, env.cfg, env.device
    torch.manual_seed(cfg.seed)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    hooks.stage("coarse")
    cvs = []
    for photo, K, face, known in zip(photos, Ks, faces, focal_known):
        hooks.check_cancel()
        cvs.append(coarse_view(env, photo, K, face.det68, face.dense, face.expr_init, hooks, known))
    timings["coarse"] = time.perf_counter() - t

    t = time.perf_counter()
    hooks.check_cancel()
    hooks.stage("unwrap")
    starts = []
    for photo, cv in zip(photos, cvs):
        exposure = exposure_from_white_point(photo, full=cfg.unwrap.exposure_full, none=cfg.unwrap.exposure_none)
        starts.append(unwrap.run(env.ctx, m, cfg, cv.rough.params, cv.framed.crop, env.texture_factory, dev,
                                 exposure, cv.trust_map))
        hooks.check_cancel()
    texture = unwrap.merged_texture(starts, env.texture_factory, dev)  # one texture for every photo
    timings["unwrap"] = time.perf_counter() - t

    t = time.perf_counter()
    hooks.stage("fine")
    views = [fine.FineView(cv.rough, st, cv.framed, cv.trust_map) for cv, st in zip(cvs, starts)]
    refined = fine.run_views(env.ctx, m, cfg, views, texture, env.recognizer, hooks, dev)
    timings["fine"] = time.perf_counter() - t

    t = time.perf_counter()
    hooks.check_cancel()
    hooks.stage("albedo")
    outs, cov = albedo.run_views(env.ctx, m, cfg, refined, [cv.framed for cv in cvs], photos,
                                 [cv.K_full for cv in cvs], [f.det68 for f in faces], dev,
                                 [st.exposure for st in starts])
    timings["albedo"] = time.perf_counter() - t
    outs[0].timings = timings
    outs[0].history = {"coarse": cvs[0].rough.history, "fine": refined[0].history}
    return MultiFit(outs, cov)


def run(env: Env, photo: np.ndarray, K_full: Intrinsics | None, out_dir: Path, info: dict, *,
        landmarks: str = "mediapipe", face_index: int = 0, photo_path: Path | None = None,
        report: bool = False, hooks: Hooks | None = None) -> tuple[FitOutput, dict]:
    """All six steps: detect the face in ``photo``, fit it and write the result files into
    ``out_dir``. ``K_full`` None: the focal length is unknown and comes from the face's size
    (``prior_camera``). Returns the fit and the result.json dict (``info`` + what the steps add)."""
    hooks = hooks or Hooks()
    t = time.perf_counter()
    hooks.stage("detect")
    face: Detection = detect.detect(photo, landmarks, str(env.device), face_index, photo_path, env.cfg.detect)
    detect_s = time.perf_counter() - t
    for w in face.warnings:
        hooks.warn(w)
    hooks.check_cancel()

    focal_known = K_full is not None
    if not focal_known:
        K_full = prior_camera(env.model, face.det68, photo.shape[1], photo.shape[0],
                              env.cfg.camera.subject_distance_cm, env.cfg.camera.principal)
    out = fit(env, photo, K_full, face.det68, face.dense, face.expr_init, hooks, focal_known)
    out.timings = {"detect": detect_s, **out.timings}
    hooks.check_cancel()

    t = time.perf_counter()
    hooks.stage("write")
    result = write.run(out_dir, out, face, face_index, env.model, env.ctx, photo, info, report)
    hooks.check_cancel()
    out.timings["write"] = time.perf_counter() - t
    return out, result


def run_views(env: Env, photos: list[np.ndarray], Ks: list[Intrinsics | None], out_dir: Path, info: dict,
              photo_paths: list[Path], *, landmarks: str = "mediapipe", face_index: int = 0, report: bool = False,
              hooks: Hooks | None = None, check_recognizer=None) -> tuple[MultiFit, dict]:
    """All six steps on several photos of one person (``fit_views``; result folder: docs/result-format.md,
    "Several photos"). ``Ks[i]`` None: that photo's focal length comes from the face's size.
    ``check_recognizer``: the recogniser for the identity check (``multiview.identity_check``;
    None: not checked). Face ``face_index`` (0 = the largest) of each photo is fitted."""
    from . import multiview
    hooks = hooks or Hooks()
    names = [p.name for p in photo_paths]
    t = time.perf_counter()
    hooks.stage("detect")
    faces: list[Detection] = []
    for photo, path in zip(photos, photo_paths):
        face = detect.detect(photo, landmarks, str(env.device), face_index, path, env.cfg.detect)
        for w in face.warnings:
            hooks.warn(f"{path.name}: {w}")
        faces.append(face)
        hooks.check_cancel()
    check, warnings = multiview.identity_check(check_recognizer, photos, [f.det68 for f in faces], names,
                                               env.device)
    for w in warnings:
        hooks.warn(w)
    detect_s = time.perf_counter() - t
    hooks.check_cancel()

    known = [K is not None for K in Ks]
    Ks = [K if K is not None else prior_camera(env.model, f.det68, ph.shape[1], ph.shape[0],
                                               env.cfg.camera.subject_distance_cm, env.cfg.camera.principal)
          for K, f, ph in zip(Ks, faces, photos)]
    mf = fit_views(env, photos, Ks, faces, known, hooks)
    mf.views[0].timings = {"detect": detect_s, **mf.views[0].timings}
    hooks.check_cancel()

    t = time.perf_counter()
    hooks.stage("write")
    result = write.run_views(out_dir, mf, faces, face_index, env.model, env.ctx, photos, info, report,
                             {"count": len(photos), "coverage": mf.coverage, "identity_check": check})
    hooks.check_cancel()
    mf.views[0].timings["write"] = time.perf_counter() - t
    return mf, result
