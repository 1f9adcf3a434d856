"""The 3D morphable face model (ICT-FaceKit Light, MIT) as a batched, differentiable torch module.

Asset: ``engine/data/facemodel/ict_face.npz`` (made by ``tools/convert_ict.py``; licence beside it).

Which parts do what
-------------------
* **Fitted**: ICT region ``face`` (vertices ``[:fit_vertex_count]`` = 9,409, polygons
  ``[:fit_poly_count]``, triangles ``[:fit_tri_count]``): forehead, face, ears, under-chin. Only this
  part is rendered while fitting, and its texture comes from the photo.
* **Carried for the artist**: back of the head and neck, mouth socket, eye sockets, the sclera and
  iris of both eyes, and the teeth and the gums with the tongue (their vertices and polygons come
  after all the others'). They follow the same identity and expression modes, so the head stays
  whole and animatable (the lower teeth open with ``jawOpen``), and get their texture from priors
  (skin tone continued from the face, a generic eyeball, teeth and gums colours).
* **Dropped**: lacrimal fluid, the see-through eye blend and occlusion layers and the eyelash
  strips: they need their own materials (alpha, separate textures) that a single albedo atlas
  cannot give, and they play no part in fitting a photo.

UV atlas: one texture in [0,1]^2 (v up, OBJ convention). The face takes the box u in [0, 0.75],
v in [0.25, 1] and is mirror-symmetric in it (u <-> 0.75 - u is the subject's left <-> right); the
back of head/neck/sockets take u, v in [0.75, 1]; one eyeball texture shared by both eyes takes
u in [0.75, 1], v in [0.5, 0.75]; the teeth u in [0.75, 1], v in [0.25, 0.5]; the gums and tongue
u in [0.5, 0.75], v in [0, 0.25]. See ``atlas_boxes``.

Units and axes: centimetres, right-handed, +Y up, +Z forward (the face looks toward +Z), +X is the
subject's left. The neutral mesh is mirror-symmetric about x = 0 (``vertex_mirror``; the teeth and
gums to 0.3 mm).

Parameters: ``p_s`` (B, 100) identity coefficients ~ N(0, 1) (modes are pre-scaled by their standard
deviation); ``p_e`` (B, 53) ARKit-style expression weights in [0, 1]. ``mouthClose`` is a corrective
of ``jawOpen``: keep mouthClose <= jawOpen (``clamp_expression`` does).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from ..errors import MissingModelError

ASSET = Path(__file__).resolve().parents[1] / "data" / "facemodel" / "ict_face.npz"
N_SHAPE = 100
N_EXPR = 53


@lru_cache(maxsize=2)
def _load_npz(path: str) -> dict[str, np.ndarray]:
    p = Path(path)
    if not p.is_file():
        raise MissingModelError(
            f"The face model asset is missing: {p}. Reinstall the engine, or rebuild it with "
            "`python tools/convert_ict.py` from ICT-FaceKit.")
    with np.load(p) as z:
        return {k: z[k] for k in z.files}


class FaceModel(torch.nn.Module):
    """ICT-FaceKit morphable model: ``verts = mean + B_id @ p_s + B_expr @ p_e`` as one matmul.

    Buffers (all on the module's device):
        vertices_neutral (V, 3) float32 cm; basis (V*3, 153) float32 (identity then expression);
        tris (T, 3) int32 all carried triangles; tri_uvs (T, 3) int32 UV index per corner;
        tri_poly (T,) int32 the polygon each triangle comes from;
        fit_tris, fit_tri_uvs: the first ``fit_tri_count`` rows (the fitted face);
        uvs (U, 2) float32 atlas coordinates, v up; polys (P, 4) int32 with -1 padding for
        triangles, poly_uvs (P, 4) int32; landmarks68 (68,) int64 vertex indices;
        jawline_left_extended / jawline_right_extended (17,) int64; vertex_mirror (V,) int64.
    """

    def __init__(self, asset: Path | str = ASSET):
        super().__init__()
        d = _load_npz(str(asset))
        self.expression_names: list[str] = [str(n) for n in d["expression_names"]]
        self.region_names: list[str] = [str(n) for n in d["region_names"]]
        self.n_vertices = int(len(d["vertices"]))
        self.n_fit_vertices = int(d["fit_vertex_count"])
        self.n_narrow_vertices = int(d["narrow_face_vertex_count"])
        self.fit_tri_count = int(d["fit_tri_count"])
        self.fit_poly_count = int(d["fit_poly_count"])
        self.metres_per_unit = float(d["metres_per_unit"])
        self.n_shape = int(d["identity_deltas"].shape[0])
        self.n_expr = int(d["expression_deltas"].shape[0])

        V = self.n_vertices
        deltas = np.concatenate([d["identity_deltas"], d["expression_deltas"]]).astype(np.float32)
        basis = torch.from_numpy(deltas.reshape(len(deltas), V * 3).T.copy())  # (V*3, 153)
        self.register_buffer("basis", basis, persistent=False)
        self.register_buffer("vertices_neutral", torch.from_numpy(d["vertices"].copy()), persistent=False)
        for key in ("tris", "tri_uvs", "polys", "poly_uvs", "tri_poly"):
            self.register_buffer(key, torch.from_numpy(d[key].astype(np.int32)), persistent=False)
        self.register_buffer("uvs", torch.from_numpy(d["uvs"].copy()), persistent=False)
        for key in ("landmarks68", "jawline_left_extended", "jawline_right_extended",
                    "vertex_mirror"):
            self.register_buffer(key, torch.from_numpy(d[key].astype(np.int64)), persistent=False)
        self.register_buffer("vertex_region", torch.from_numpy(d["vertex_region"].astype(np.int64)),
                             persistent=False)
        self.register_buffer("poly_region", torch.from_numpy(d["poly_region"].astype(np.int64)),
                             persistent=False)
        self.atlas_boxes = {str(n): tuple(float(x) for x in b)
                            for n, b in zip(d["atlas_box_names"], d["atlas_boxes"])}
        self.mouth_close = self.expression_names.index("mouthClose")
        self.jaw_open = self.expression_names.index("jawOpen")

    # Views of the fitted part; cheap slices, so they follow .to(device).
    @property
    def fit_tris(self) -> torch.Tensor:
        return self.tris[: self.fit_tri_count]

    @property
    def fit_tri_uvs(self) -> torch.Tensor:
        return self.tri_uvs[: self.fit_tri_count]

    def forward(self, p_s: torch.Tensor | None = None, p_e: torch.Tensor | None = None,
                part: str = "fit") -> torch.Tensor:
        """Vertices of the model.

        Args:
            p_s: (B, 100) identity coefficients, or None for zeros.
            p_e: (B, 53) expression weights in [0, 1], or None for zeros.
            part: ``"fit"`` (the first ``n_fit_vertices``) or ``"all"`` (the whole carried mesh).
        Returns:
            (B, V, 3) float32 vertices in centimetres (model axes, see the module docstring).
        """
        ref = p_s if p_s is not None else p_e
        B = 1 if ref is None else ref.shape[0]
        dev, dt = self.basis.device, self.basis.dtype
        if p_s is None:
            p_s = torch.zeros(B, self.n_shape, device=dev, dtype=dt)
        if p_e is None:
            p_e = torch.zeros(B, self.n_expr, device=dev, dtype=dt)
        n = self.n_fit_vertices if part == "fit" else self.n_vertices
        if part not in ("fit", "all"):
            raise ValueError(f"part must be 'fit' or 'all', not {part!r}")
        coeffs = torch.cat([p_s, p_e], dim=1)  # (B, 153)
        offsets = coeffs @ self.basis[: n * 3].T  # (B, n*3): one dense matmul
        return self.vertices_neutral[:n].unsqueeze(0) + offsets.view(B, n, 3)

    def clamp_expression(self, p_e: torch.Tensor) -> torch.Tensor:
        """Project expression weights to [0, 1] with mouthClose <= jawOpen (no autograd)."""
        with torch.no_grad():
            p_e.clamp_(0.0, 1.0)
            p_e[:, self.mouth_close] = torch.minimum(p_e[:, self.mouth_close], p_e[:, self.jaw_open])
        return p_e


def load_face_model(device: torch.device | str = "cpu", asset: Path | str = ASSET) -> FaceModel:
    """Load the face model onto ``device`` (the asset is read once per process)."""
    return FaceModel(asset).to(device)


def vertex_normals(verts: torch.Tensor, tris: torch.Tensor) -> torch.Tensor:
    """Area-weighted vertex normals, differentiable.

    Args:
        verts: (B, V, 3) float; tris: (T, 3) int.
    Returns:
        (B, V, 3) unit normals (outward for ICT's counter-clockwise winding).
    """
    from ..render.detops import gather_rows, row_plan, scatter_rows
    T = tris.shape[0]
    # Corners in (corner, triangle) order; gathered and scattered deterministically (detops.py).
    plan = row_plan(tris.long().T.reshape(-1), verts.shape[1])
    v0, v1, v2 = gather_rows(verts, plan).view(verts.shape[0], 3, T, 3).unbind(1)
    fn = torch.cross(v1 - v0, v2 - v0, dim=-1)
    n = scatter_rows(fn.repeat(1, 3, 1), plan)
    return torch.nn.functional.normalize(n, dim=-1, eps=1e-12)
