"""Writing a fit to its result folder (docs/result-format.md). Everything here writes into the
folder it is given; ``run.py`` makes that a temporary folder and renames it into place."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from .. import __version__
from ..camera import rotation_matrix, world_to_camera_matrix
from ..contract import OBJ_MATERIAL as MATERIAL
from ..contract import RESULT_SCHEMA
from ..models.facemodel import FaceModel
from ..render.colour import linear_to_srgb
from ..render.forward import render_full

if TYPE_CHECKING:  # the file format does not depend on the stages; only the annotation names it
    from .stages.albedo import FitOutput

SCHEMA = RESULT_SCHEMA  # engine/io/output.py checks it before --overwrite replaces a folder


def write_obj(path: Path, verts: np.ndarray, uvs: np.ndarray, polys: np.ndarray, poly_uvs: np.ndarray,
              mtl_name: str | None = None) -> None:
    """OBJ with per-corner UVs; ``polys``/``poly_uvs`` (P, 4) 0-based with -1 padding for triangles.
    Each block is formatted by one ``%`` over all its numbers (a tenth of the time of a line at a
    time: this file has ~50k lines)."""
    lines = ["# ganfit engine %s: fitted face (metres, +Y up, +Z forward)" % __version__]
    if mtl_name:
        lines += [f"mtllib {mtl_name}.mtl"]
    lines += ["o face"]
    verts = np.asarray(verts, np.float64).reshape(-1, 3)
    uvs = np.asarray(uvs, np.float64).reshape(-1, 2)
    lines.append(("v %.6f %.6f %.6f\n" * len(verts) % tuple(verts.ravel().tolist()))[:-1])
    lines.append(("vt %.6f %.6f\n" * len(uvs) % tuple(uvs.ravel().tolist()))[:-1])
    if mtl_name:
        lines.append(f"usemtl {MATERIAL}")  # the material face.mtl defines, not the file's name
    lines.append("s 1")
    quad = np.asarray(polys)[:, 3] >= 0
    corners = np.stack([np.asarray(polys) + 1, np.asarray(poly_uvs) + 1], -1).reshape(len(quad), 8)  # v/t pairs
    keep = np.ones(corners.shape, bool)
    keep[~quad, 6:] = False
    fmt = np.where(quad, "f %d/%d %d/%d %d/%d %d/%d\n", "f %d/%d %d/%d %d/%d\n")
    lines.append(("".join(fmt.tolist()) % tuple(corners[keep].tolist()))[:-1])
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_mtl(path: Path, name: str, texture: str) -> None:
    path.write_text(f"# ganfit engine {__version__}\nnewmtl {name}\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\n"
                    f"d 1\nillum 1\nmap_Kd {texture}\n", encoding="utf-8")


def albedo_png(albedo_lin: torch.Tensor) -> Image.Image:
    """(1, T, T, 3) linear atlas in renderer layout (row 0 = v 0) -> sRGB PNG (row 0 = top, v 1)."""
    srgb = linear_to_srgb(albedo_lin[0]).flip(0)
    return Image.fromarray((srgb.cpu().numpy() * 255 + 0.5).astype(np.uint8))


def render_and_overlay(out_dir: Path, ctx, model, st, albedo: torch.Tensor, K, photo: np.ndarray,
                       render_name: str = "render.png", overlay_name: str = "overlay.png") -> np.ndarray:
    """Write the head rendered in the photo's camera (RGBA) and composited over the photo;
    returns the overlay."""
    rgba = render_full(ctx, model, st, albedo, K)
    Image.fromarray(rgba, "RGBA").save(out_dir / render_name, compress_level=4)
    a = rgba[..., 3:4].astype(np.float32) / 255
    overlay = (rgba[..., :3].astype(np.float32) * a + photo.astype(np.float32) * (1 - a) + 0.5).clip(0, 255).astype(np.uint8)
    Image.fromarray(overlay).save(out_dir / overlay_name, compress_level=4)
    return overlay


def photo_entries(fit: FitOutput, model: FaceModel, info: dict) -> dict:
    """The result.json keys that describe one photo's view of the head: photo, image, camera,
    lighting, expression, landmarks, face (top level: the primary photo; ``views``: each)."""
    st = fit.state
    R = rotation_matrix(st.rot.detach())[0].cpu().numpy()
    t = st.trans.detach()[0].cpu().numpy()
    K = fit.K_full
    return {
        "photo": info["photo"],
        "image": {"width": K.width, "height": K.height},
        "camera": {**K.as_dict(), "focal_source": info.get("focal_source", "default"),
                   "world_to_camera": world_to_camera_matrix(R, t, model.metres_per_unit).tolist(),
                   "near": 0.05, "far": 10.0},
        "lighting": {"model": "sh2", "coefficients": st.sh.detach()[0].cpu().numpy().tolist(),
                     "note": "irradiance = sh_basis(n_camera) @ coefficients, see engine/lighting.py"},
        "expression": {"names": model.expression_names,
                       "weights": st.expr[0].detach().cpu().numpy().astype(np.float32).tolist()},
        "landmarks": {"scheme": info.get("landmark_scheme", "ibug68"),
                      "detected68": np.round(fit.det68, 2).tolist(),
                      "projected68": np.round(fit.proj68, 2).tolist()},
        "face": info.get("face", {}),
    }


def write_result(out_dir: Path, fit: FitOutput, model: FaceModel, ctx, photo: np.ndarray, info: dict,
                 report: bool = False, extra_params: dict | None = None) -> dict:
    """Write every result file into ``out_dir`` (which exists). Returns the result.json dict.
    ``extra_params``: more params.npz arrays (a multi-photo fit's ``view_*``)."""
    st = fit.state
    m = model.metres_per_unit
    with torch.no_grad():
        verts_all = model(st.shape, st.expr, part="all")[0].cpu().numpy() * m
        neutral_all = model(st.shape, None, part="all")[0].cpu().numpy() * m
    V = model.n_vertices
    deltas = model.basis[:, model.n_shape:].T.reshape(model.n_expr, V, 3).cpu().numpy() * m

    write_obj(out_dir / "face.obj", verts_all, model.uvs.cpu().numpy(), model.polys.cpu().numpy(),
              model.poly_uvs.cpu().numpy(), mtl_name="face")
    write_mtl(out_dir / "face.mtl", MATERIAL, "albedo.png")
    albedo_img = albedo_png(fit.albedo)
    albedo_img.save(out_dir / "albedo.png", optimize=False, compress_level=4)

    weights = st.expr[0].detach().cpu().numpy().astype(np.float32)
    names = np.array(model.expression_names)
    np.savez_compressed(out_dir / "blendshapes.npz", neutral=neutral_all.astype(np.float32),
                        deltas=deltas.astype(np.float16), names=names, weights=weights)

    overlay = render_and_overlay(out_dir, ctx, model, st, fit.albedo, fit.K_full, photo)

    R = rotation_matrix(st.rot.detach())[0].cpu().numpy()
    t = st.trans.detach()[0].cpu().numpy()
    sh = st.sh.detach()[0].cpu().numpy()
    K = fit.K_full
    params = dict(shape=st.shape.detach()[0].cpu().numpy(), expression=weights, expression_names=names,
                  rotation=R, rotation_axis_angle=st.rot.detach()[0].cpu().numpy(), translation_cm=t,
                  focal_px=np.float32(K.fx), sh=sh, texture_model=np.array(fit.texture.name))
    if hasattr(fit.texture, "latent"):
        params["texture_latent"] = fit.texture.latent.detach().cpu().numpy()
    params.update(extra_params or {})
    np.savez(out_dir / "params.npz", **params)

    view = photo_entries(fit, model, info)
    result = {
        "schema": SCHEMA,
        "engine": __version__,
        **{k: view[k] for k in ("photo", "image", "camera", "lighting", "expression")},
        "shape": st.shape.detach()[0].cpu().numpy().tolist(),
        **{k: view[k] for k in ("landmarks", "face")},
        "losses": fit.losses,
        "metrics": fit.metrics,
        "timings": info.get("timings", {}),
        "peak_rss_mb": info.get("peak_rss_mb"),
        "device": info.get("device"), "backend": info.get("backend"), "threads": info.get("threads"),
        "preset": info.get("preset"), "seed": info.get("seed"),
        "models": info.get("models", {}),
        "mesh": {"vertices": int(V), "polygons": int(len(model.polys)),
                 "fitted_vertices": int(model.n_fit_vertices),
                 "fitted_polygons": int(model.fit_poly_count)},
        "files": {"obj": "face.obj", "mtl": "face.mtl", "albedo": "albedo.png",
                  "blendshapes": "blendshapes.npz", "render": "render.png", "overlay": "overlay.png",
                  "params": "params.npz", "log": "engine.log"},
    }
    if report:
        from .report import write_report
        write_report(out_dir / "report.png", photo, overlay, np.asarray(albedo_img), fit.history, fit.metrics)
        result["files"]["report"] = "report.png"
    return result


def view_params(fits: list[FitOutput]) -> dict[str, np.ndarray]:
    """params.npz's per-photo arrays of a multi-photo fit: view_rotation (N, 3, 3),
    view_rotation_axis_angle (N, 3), view_translation_cm (N, 3), view_expression (N, 53),
    view_sh (N, 9, 3), view_focal_px (N,)."""
    st = [f.state for f in fits]
    return {"view_rotation": np.stack([rotation_matrix(s.rot.detach())[0].cpu().numpy() for s in st]),
            "view_rotation_axis_angle": np.stack([s.rot.detach()[0].cpu().numpy() for s in st]),
            "view_translation_cm": np.stack([s.trans.detach()[0].cpu().numpy() for s in st]),
            "view_expression": np.stack([s.expr.detach()[0].cpu().numpy().astype(np.float32) for s in st]),
            "view_sh": np.stack([s.sh.detach()[0].cpu().numpy() for s in st]),
            "view_focal_px": np.array([f.K_full.fx for f in fits], np.float32)}


def write_views(out_dir: Path, result: dict, fits: list[FitOutput], model: FaceModel, ctx,
                photos: list[np.ndarray], infos: list[dict], multi_view: dict) -> dict:
    """A multi-photo fit's additions to a result written by ``write_result`` (for the first photo,
    with ``view_params``): render-k.png / overlay-k.png for photos k = 2.., the ``views`` list and
    ``multi_view`` (docs/result-format.md, "Several photos"). Returns ``result``, updated."""
    views = []
    for k, (fit, photo, info) in enumerate(zip(fits, photos, infos), start=1):
        files = {"render": "render.png", "overlay": "overlay.png"}
        if k > 1:
            files = {"render": f"render-{k}.png", "overlay": f"overlay-{k}.png"}
            render_and_overlay(out_dir, ctx, model, fit.state, fit.albedo, fit.K_full, photo,
                               files["render"], files["overlay"])
            result["files"][f"render-{k}"] = files["render"]
            result["files"][f"overlay-{k}"] = files["overlay"]
        views.append({**photo_entries(fit, model, info), "metrics": fit.metrics, "files": files})
    result["views"] = views
    result["multi_view"] = multi_view
    return result


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(tmp, path)
