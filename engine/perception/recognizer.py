"""Differentiable face recognisers for GANFit's identity and content losses.

``load_recognizer('dlib')`` (default, offline, CC0 weights from the face-recognition-models
package) or ``load_recognizer('arcface', path)`` (optional, user-supplied insightface ONNX,
research-only licence). Both expose the same interface::

    rec = load_recognizer("dlib")
    chips, M = align(images, points5, rec.template, rec.input_size)   # photo and render alike
    emb, feats = rec.embed(chips)                                      # emb L2-normalised
    loss = identity_loss(emb_photo, emb_render) + content_loss(feats_photo, feats_render)

Weights are frozen (requires_grad False) and the module is in eval mode; gradients still flow
to the input images.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import BadInputError
from engine.perception.align import align

# Where our 5 points (eye centres = mean of iBUG-68 eye points, nose tip 30, mouth corners 48/54,
# as MediaPipe's 68-point subset gives them; pixel centres at +0.5) land in dlib's own 150x150
# chips (``dlib.get_face_chip(img, shape5, size=150, padding=0.25)``): mean over the 174 London
# photos (87 people, neutral + smiling), mirror-symmetrised about x = 74.40 (dlib's framing is
# not exactly centred). Per-point std was 0.6-0.8 px for the eyes, 1.2/2.3 px (x/y) for the
# nose tip and 2.6-3.7 px for the mouth corners. Calibration: scripts/eval_recognizer.py
# --calibrate.
DLIB_TEMPLATE_150 = (
    (47.18, 46.48),
    (101.61, 46.48),
    (74.40, 73.14),
    (51.15, 102.38),
    (97.65, 102.38),
)

DLIB_LICENCE = (
    "dlib_face_recognition_resnet_model_v1 by Davis King: CC0 1.0 (public domain dedication), "
    "per the LICENSE file of the face-recognition-models 0.3.0 wheel and its README ('licensed "
    "in the public domain'); the wheel's metadata says MIT for the package.")
ARCFACE_LICENCE = (
    "insightface buffalo_l (w600k_r50): non-commercial research use only; never bundled, "
    "supplied by the user.")


class Recognizer(nn.Module):
    """A frozen face recogniser with its alignment template.

    Attributes:
        name: 'dlib' or 'arcface'.
        input_size: chip side in pixels (150 / 112).
        template: (5, 2) float32 buffer, our 5 points in chip pixels (pixel centres at +0.5).
        licence: where the weights come from and under which terms.
        embedding_dim: 128 / 512.
    """

    def __init__(self, backbone: nn.Module, name: str, input_size: int,
                 template: tuple[tuple[float, float], ...], licence: str, embedding_dim: int):
        super().__init__()
        self.backbone = backbone
        self.name = name
        self.input_size = int(input_size)
        self.licence = licence
        self.embedding_dim = int(embedding_dim)
        self.register_buffer("template", torch.tensor(template, dtype=torch.float32))
        self.eval()
        self.requires_grad_(False)

    def train(self, mode: bool = True) -> Recognizer:
        # Always eval: batch norms are frozen statistics.
        return super().train(False)

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Embed aligned chips.

        Args:
            images: (B, 3, S, S) float RGB in [0, 1], S = ``input_size``, framed by ``align``
                with ``template``.
        Returns:
            (emb (B, D) float32 L2-normalised, feats: list of 4 intermediate activation maps).
        """
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[-2:] != (self.input_size,) * 2:
            raise BadInputError(f"{self.name} expects (B,3,{self.input_size},{self.input_size}) "
                                f"chips, got {tuple(images.shape)}")
        emb, feats = self.backbone(images)
        return F.normalize(emb, dim=1, eps=1e-8), feats

    forward = embed

    def align(self, images: torch.Tensor, points5: torch.Tensor) -> torch.Tensor:
        """Warp full images (B,3,H,W) with their (B,5,2) points onto this recogniser's chip."""
        return align(images, points5, self.template, self.input_size)[0]


def identity_loss(emb_a: torch.Tensor, emb_b: torch.Tensor) -> torch.Tensor:
    """1 - cosine similarity per pair.

    Args:
        emb_a, emb_b: (B, D) embeddings (normalised or not).
    Returns:
        (B,) float in [0, 2]; 0 when the embeddings point the same way.
    """
    return 1.0 - F.cosine_similarity(emb_a, emb_b, dim=1, eps=1e-8)


def content_loss(feats_a: list[torch.Tensor], feats_b: list[torch.Tensor],
                 eps: float = 1e-8) -> torch.Tensor:
    """Normalised feature distance: mean over maps of ||a - b||^2 / (||a||^2 + eps).

    Args:
        feats_a, feats_b: lists of (B, C, H, W) activation maps (same shapes pairwise); ``a``
            is the reference (the photo).
    Returns:
        (B,) float >= 0; 0 on identical inputs.
    """
    if len(feats_a) != len(feats_b) or not feats_a:
        raise BadInputError("content_loss needs two non-empty feature lists of equal length")
    terms = []
    for a, b in zip(feats_a, feats_b):
        num = (a - b).pow(2).flatten(1).sum(1)
        den = a.pow(2).flatten(1).sum(1) + eps
        terms.append(num / den)
    return torch.stack(terms, 0).mean(0)


def load_recognizer(name: str = "dlib", path: str | os.PathLike | None = None,
                    device: str | torch.device = "cpu") -> Recognizer:
    """Load a frozen recogniser.

    Args:
        name: 'dlib' (default, weights from face-recognition-models) or 'arcface'
            (insightface w600k_r50.onnx, default ``~/.insightface/models/buffalo_l/``).
        path: weights file (or for arcface its folder); None = the default location.
        device: torch device.
    Returns:
        Recognizer in eval mode, parameters frozen.
    Raises:
        MissingModelError: the weights are not there (the message says where and how to get them).
        ValueError: unknown name.
    """
    if name == "dlib":
        from engine.perception.dlib_resnet import load_dlib_resnet

        net = load_dlib_resnet(path, device)
        rec = Recognizer(net, "dlib", net.input_size, DLIB_TEMPLATE_150, DLIB_LICENCE, 128)
    elif name == "arcface":
        from engine.perception.arcface import ARCFACE_TEMPLATE_CV, load_arcface

        net = load_arcface(path, device)
        template = tuple((x + 0.5, y + 0.5) for x, y in ARCFACE_TEMPLATE_CV)
        rec = Recognizer(net, "arcface", 112, template, ARCFACE_LICENCE, net.fc.out_features)
    else:
        raise ValueError(f"Unknown recogniser {name!r} (use 'dlib' or 'arcface')")
    return rec.to(device)
