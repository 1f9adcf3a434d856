"""``python -m engine render-model``: a contact sheet of the face model (neutral, random
identities and expressions; front and three-quarter views) with SH shading."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from . import render
from .camera import Intrinsics
from .lighting import ambient_coeffs
from .models.facemodel import load_face_model
from .render.forward import face_geometry, render_face


def render_faces(model, shapes: torch.Tensor, exprs: torch.Tensor, yaws: list[float], size: int,
                 ctx=None) -> np.ndarray:
    """Render B faces (grey albedo, a key light from the upper left) -> (B, size, size, 3) uint8."""
    ctx = ctx or render.create_context("cpu")
    B = shapes.shape[0]
    rot = torch.tensor([[0.0, math.radians(y), 0.0] for y in yaws])
    K = Intrinsics.from_focal(size * 3.2, size, size)
    t = torch.tensor([[0.0, 1.5, -95.0]]).expand(B, 3)
    geom = face_geometry(model, shapes, exprs, rot, t, part="all")
    sh = ambient_coeffs(B) * 0.75
    sh[:, 1] = 0.25   # from above (+y)
    sh[:, 2] = 0.35   # from the front (+z)
    sh[:, 3] = -0.2   # from the image left
    # Flat colours per vertex region: skin, white eyeballs, brown irises.
    region = model.vertex_region
    albedo = torch.tensor([0.62, 0.47, 0.40]).expand(len(region), 3).clone()
    albedo[region >= 7] = torch.tensor([0.8, 0.8, 0.78])
    albedo[(region == 8) | (region == 10)] = torch.tensor([0.25, 0.16, 0.1])
    out = render_face(ctx, geom, K, (size, size), sh, vertex_albedo=albedo[None].expand(B, -1, -1),
                      background=torch.tensor([0.16, 0.17, 0.2]), grad_db=False)
    return (out["image"].clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)


def render_model_sheet(path: str, size: int = 320, seed: int = 0) -> None:
    torch.manual_seed(seed)
    model = load_face_model("cpu")
    n = 4
    shapes = torch.cat([torch.zeros(1, model.n_shape), torch.randn(n - 1, model.n_shape) * 1.5])
    exprs = torch.zeros(n, model.n_expr)
    names = model.expression_names
    for i, (k, w) in enumerate([(None, 0), ("jawOpen", 0.5), ("mouthSmile_L", 0.8), ("browInnerUp_L", 0.8)]):
        if k:
            exprs[i, names.index(k)] = w
            if k == "mouthSmile_L":
                exprs[i, names.index("mouthSmile_R")] = w
            if k == "browInnerUp_L":
                exprs[i, names.index("browInnerUp_R")] = w
    with torch.no_grad():
        front = render_faces(model, shapes, exprs, [0.0] * n, size)
        side = render_faces(model, shapes, exprs, [-35.0] * n, size)
    sheet = np.concatenate([np.concatenate(list(front), 1), np.concatenate(list(side), 1)], 0)
    Image.fromarray(sheet).save(path)
