"""Detector landmarks -> points on the face model's surface.

The asset ``engine/data/correspondence/mediapipe478_ict.npz`` (made by
``tools/make_mediapipe_correspondence.py``) maps each of MediaPipe's 468 face-mesh points to a
(triangle of the face model's ``fit_tris``, barycentric) pair on the ICT neutral face. Identity
and expression deform the mesh, and the barycentric point moves with it, so
:func:`model_points` gives the model's version of each detected landmark for any shape.

Rows and weights of the default correspondence:
* interior face-mesh points (eyes, brows, nose, lips, cheeks): weight 1;
* the upper face oval (forehead, temples; 13 points): weight 0.25, MediaPipe places them
  loosely along the hairline;
* the lower face oval (ear level round the chin; 23 points) is a silhouette whose surface
  point changes with head pose: excluded by default (``include_contour=True`` keeps it with
  weight 0); the fit matches the jaw with its point-to-jawline contour term instead;
* the iris points (468-477) are not on the face surface: ``iris_point_index`` (468, 473 =
  right, left iris centre) pairs with ``iris_vertex``, the ICT iris-pole vertex of each eye.

numpy only at import; torch is imported inside the torch functions.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engine.errors import MissingModelError

if TYPE_CHECKING:
    import torch

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "correspondence"


@dataclass(frozen=True)
class Correspondence:
    """Landmark-to-surface correspondence (numpy arrays; see module docstring).

    Attributes:
        scheme: detector scheme, e.g. 'mediapipe478'.
        tri: (N,) int64 index into the face model's ``fit_tris``.
        bary: (N, 3) float32 barycentrics of the point in that triangle (sum 1, >= 0).
        point_index: (N,) int64 detector landmark of each row (index into ``Face.landmarks``).
        weights: (N,) float32 suggested per-point weight in [0, 1].
        contour_point_index: (K,) int64 detector landmarks of the pose-dependent contour.
        iris_point_index: (2,) int64 detector landmarks of the right and left iris centres.
        iris_vertex: (2,) int64 face-model vertex at the pole of the right and left iris.
        fit_tri_count: number of fit triangles the asset was built for.
    """

    scheme: str
    tri: np.ndarray
    bary: np.ndarray
    point_index: np.ndarray
    weights: np.ndarray
    contour_point_index: np.ndarray
    iris_point_index: np.ndarray
    iris_vertex: np.ndarray
    fit_tri_count: int

    def __len__(self) -> int:
        return len(self.tri)


def load_correspondence(scheme: str = "mediapipe478", include_contour: bool = False,
                        path: str | Path | None = None) -> Correspondence:
    """Load the bundled correspondence of a detector scheme onto the ICT face model.

    Args:
        scheme: 'mediapipe478' (the only one bundled).
        include_contour: keep the lower face-oval rows (with weight 0) instead of dropping them.
        path: an explicit .npz (tests, tools); default ``engine/data/correspondence/<scheme>_ict.npz``.

    Returns:
        The correspondence; rows sorted by detector landmark index.

    Raises:
        MissingModelError: no asset for ``scheme``.
    """
    p = Path(path) if path is not None else DATA_DIR / f"{scheme}_ict.npz"
    if not p.is_file():
        raise MissingModelError(
            f"No landmark correspondence for scheme '{scheme}' ({p} is missing); run "
            "tools/make_mediapipe_correspondence.py")
    with np.load(p) as d:
        corr = Correspondence(
            scheme=str(d["scheme"]),
            tri=d["tri"].astype(np.int64),
            bary=d["bary"].astype(np.float32),
            point_index=d["point_index"].astype(np.int64),
            weights=d["weights"].astype(np.float32),
            contour_point_index=d["contour_point_index"].astype(np.int64),
            iris_point_index=d["iris_point_index"].astype(np.int64),
            iris_vertex=d["iris_vertex"].astype(np.int64),
            fit_tri_count=int(d["fit_tri_count"]),
        )
    if corr.scheme != scheme:
        raise MissingModelError(f"{p} holds scheme '{corr.scheme}', not '{scheme}'")
    if not include_contour:
        keep = ~np.isin(corr.point_index, corr.contour_point_index)
        corr = replace(corr, tri=corr.tri[keep], bary=corr.bary[keep],
                       point_index=corr.point_index[keep], weights=corr.weights[keep])
    return corr


def model_points(verts: torch.Tensor, fit_tris: torch.Tensor | np.ndarray,
                 corr: Correspondence) -> torch.Tensor:
    """The face model's counterpart of each corresponded landmark (differentiable).

    Args:
        verts: (B, V, 3) float model vertices (any units; V >= the face-area vertex count).
        fit_tris: (T, 3) int face-region triangles, exactly the face model's ``fit_tris``
            (the raw npz's ``tri_vertex_indices[tri_poly_index < 9230]`` in that order).
        corr: from :func:`load_correspondence`.

    Returns:
        (B, N, 3) points, same dtype/device as ``verts``; row n belongs to detector landmark
        ``corr.point_index[n]``.

    Raises:
        ValueError: ``fit_tris`` is not the triangle list the asset was built for.
    """
    import torch

    if len(fit_tris) != corr.fit_tri_count:
        raise ValueError(f"fit_tris has {len(fit_tris)} triangles but the correspondence was "
                         f"built for {corr.fit_tri_count}; rebuild it with "
                         "tools/make_mediapipe_correspondence.py")
    dev = verts.device
    ft = torch.as_tensor(np.asarray(fit_tris) if not torch.is_tensor(fit_tris) else fit_tris,
                         device=dev).long()
    corners = ft[torch.as_tensor(corr.tri, device=dev)]  # (N, 3) vertex indices
    bary = torch.as_tensor(corr.bary, device=dev, dtype=verts.dtype)
    v = verts[:, corners]  # (B, N, 3 corners, 3 xyz)
    return (v * bary[None, :, :, None]).sum(dim=2)
