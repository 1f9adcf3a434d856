"""UV-space work: rasterising the mesh into its atlas, unwrapping the photo into texels, texel
visibility, and completing and padding the final albedo.

Atlas memory layout is the renderer's texture layout: row i is v = (i + 0.5) / T (row 0 = v = 0,
the bottom of the OBJ atlas). The face box (see ``facemodel``) is mirror-symmetric: column j of the
face box mirrors column ``face_w - 1 - j``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import render
from ..camera import Intrinsics, project

# Plausible colours (linear-ish sRGB in [0,1]) for carried parts the photo never shows.
SCLERA = (0.80, 0.77, 0.74)
IRIS = (0.28, 0.18, 0.11)
PUPIL = (0.03, 0.03, 0.03)
MOUTH = (0.35, 0.13, 0.12)
SOCKET = (0.20, 0.10, 0.09)
# The mouth socket by distance from the lips (cm, neutral mesh): the lips' colour up to LIP_CM,
# the inner lips and gums (GUMS) up to GUM_CM, then the cavity (MOUTH, darker). The teeth, gums and
# tongue are ICT's own carried meshes (regions ``teeth`` and ``gums_tongue``, ``paint_carried``).
LIP_CM, GUM_CM = 0.1, 1.6
GUMS = (0.55, 0.25, 0.24)
TEETH = (0.72, 0.66, 0.55)
# ``seen_skin``: a texel above the brows or below the chin keeps the model's colour from how
# well the photo shows skin there (``albedo.seen_share``): none below KEEP_LO, all above KEEP_HI.
# Its zone rises over KEEP_ZONE_CM[0] from KEEP_ZONE_CM[1] above the brows (and below the chin).
KEEP_LO, KEEP_HI = 0.5, 0.9
KEEP_ZONE_CM = (1.0, 0.3)


@dataclass
class UVRaster:
    """The mesh rasterised into its own atlas (computed once per texture size)."""

    rast: torch.Tensor        # (1, T, T, 4) over ALL carried triangles
    tri_id: torch.Tensor      # (T, T) long, -1 where no triangle
    region: torch.Tensor      # (T, T) long region index of the texel's polygon, -1 empty
    res: int

    @property
    def covered(self) -> torch.Tensor:
        return self.tri_id >= 0


def uv_raster(ctx, model, res: int) -> UVRaster:
    uv = model.uvs
    pos = torch.cat([uv * 2 - 1, torch.zeros_like(uv[:, :1]), torch.ones_like(uv[:, :1])], 1)[None]
    rast, _ = render.rasterize(ctx, pos.contiguous(), model.tri_uvs, (res, res), grad_db=False)
    tri_id = rast[0, ..., 3].long() - 1
    poly = torch.where(tri_id >= 0, model.tri_poly[tri_id.clamp_min(0)].long(), torch.full_like(tri_id, -1))
    region = torch.where(poly >= 0, model.poly_region[poly.clamp_min(0)], torch.full_like(poly, -1))
    return UVRaster(rast.detach(), tri_id, region, res)


def face_box_pixels(model, res: int) -> tuple[int, int, int, int]:
    """(row0, row1, col0, col1) of the face box in atlas memory (row 0 = v 0)."""
    u0, v0, s = model.atlas_boxes["face"]
    return int(round(v0 * res)), int(round((v0 + s) * res)), int(round(u0 * res)), int(round((u0 + s) * res))


def mirror_face(img: torch.Tensor, model) -> torch.Tensor:
    """Mirror the face box left/right (img: (..., T, T, C) atlas layout); other texels unchanged."""
    T = img.shape[-2]
    r0, r1, c0, c1 = face_box_pixels(model, T)
    out = img.clone()
    out[..., r0:r1, c0:c1, :] = img[..., r0:r1, c0:c1, :].flip(-2)
    return out


def texel_geometry(ctx, uvr: UVRaster, verts_cam: torch.Tensor, normals_cam: torch.Tensor, model):
    """Camera-space position and normal of every texel of the fitted face (zeros elsewhere).

    verts_cam/normals_cam: (1, Vf, 3) of the fitted part. Returns (pos, nrm, mask) with
    pos, nrm (1, T, T, 3) and mask (T, T) bool (texels that belong to the fitted face).
    """
    nf = model.fit_tri_count
    mask = (uvr.tri_id >= 0) & (uvr.tri_id < nf)
    # Interpolate with the rast restricted to fitted triangles (ids beyond the fitted part -> 0).
    rast = uvr.rast.clone()
    rast[..., 3] = torch.where(mask, rast[..., 3], torch.zeros_like(rast[..., 3]))
    pos, _ = render.interpolate(verts_cam, rast, model.fit_tris)
    nrm, _ = render.interpolate(normals_cam, rast, model.fit_tris)
    nrm = F.normalize(nrm, dim=-1, eps=1e-9)
    return pos, nrm, mask


def unwrap(photo: torch.Tensor, valid: torch.Tensor, depth: torch.Tensor, K: Intrinsics,
           pos: torch.Tensor, nrm: torch.Tensor, mask: torch.Tensor, depth_tol: float = 0.6):
    """Sample the photo at every texel's projection and say how well each texel is seen.

    Args:
        photo: (1, H, W, 3) in [0,1]; valid: (1, H, W) 1 inside the photo; depth: (1, H, W) camera
        distance (-Z, cm) of the rendered face, 0 where empty; K: the photo crop's intrinsics;
        pos, nrm: (1, T, T, 3) texel camera-space positions and unit normals; mask: (T, T).
    Returns:
        colour (1, T, T, 3) and confidence (1, T, T) in [0, 1] (0 where hidden, off-photo,
        back-facing or not part of the fitted face; cosine^2 falloff toward grazing angles).
    """
    T = pos.shape[1]
    H, W = photo.shape[1:3]
    pix = project(pos.view(1, -1, 3), K).view(1, T, T, 2)
    grid = torch.stack([pix[..., 0] / W * 2 - 1, pix[..., 1] / H * 2 - 1], -1)
    colour = F.grid_sample(photo.permute(0, 3, 1, 2), grid, mode="bilinear", padding_mode="border",
                           align_corners=False).permute(0, 2, 3, 1)
    near = lambda img: F.grid_sample(img[:, None], grid, mode="nearest", padding_mode="zeros",  # noqa: E731
                                     align_corners=False)[:, 0]
    d_render = near(depth)
    inside = near(valid) > 0.5
    d_texel = -pos[..., 2]
    visible = (d_render > 0) & (d_texel <= d_render + depth_tol)
    view = F.normalize(-pos, dim=-1, eps=1e-9)
    cos = (nrm * view).sum(-1).clamp_min(0)
    conf = cos.pow(2) * visible * inside * mask[None]
    # Fade the last few pixels at the outline: antialiased edges mix in the background.
    conf = conf * ((cos - 0.15) / 0.25).clamp(0, 1)
    return colour, conf


def soften(x: torch.Tensor, res: int, count_pad: bool = False) -> torch.Tensor:
    """(1, T, T) -> same, box-averaged over about 1/64 of an atlas of ``res`` texels (an odd width,
    at least 3): the soft edges of the atlas's weights. ``count_pad``: the border counts as 0."""
    k = max(3, (res // 64) | 1)
    return F.avg_pool2d(x[:, None], k, stride=1, padding=k // 2, count_include_pad=count_pad)[:, 0]


def narrow_texels(uvr: UVRaster, model) -> torch.Tensor:
    """(1, T, T) 1 on texels of the narrow face (no ears, neck or scalp), for the lighting fit and
    the photo's share of the final albedo."""
    nf = model.fit_tri_count
    tid = uvr.tri_id
    ok = (tid >= 0) & (tid < nf)
    tri = model.fit_tris[tid.clamp(0, nf - 1)].long()
    narrow = ((tri < model.n_narrow_vertices).all(-1) & ok)[None].float()
    # Fade out over ~1.5% of the atlas toward the border, so that the photo's colours blend
    # into the completed texture instead of ending at a hard line.
    soft = soften(narrow, uvr.res, count_pad=True)
    return narrow * ((soft - 0.5) * 2).clamp(0, 1)


def pull_push(img: torch.Tensor, weight: torch.Tensor, levels: int = 16) -> torch.Tensor:
    """Fill texels of zero weight from weighted neighbours at ever coarser scales (Gortler et al.'s
    pull-push: a coarse cell's weight is the *sum* of its children's, capped at 1, so a hole takes
    its colour from the nearest known texels rather than from whichever region is largest).

    img: (1, T, T, C); weight: (1, T, T) >= 0. Texels with weight keep a blend toward their own
    value (weight 1 = exactly their own). Used for hole filling and seam padding.
    """
    c = img.permute(0, 3, 1, 2)
    w = weight[:, None].clamp(0, 1)
    pyr = [(c, w)]
    for _ in range(levels):
        c, w = pyr[-1]
        if max(c.shape[-2:]) <= 1:
            break
        ws = F.avg_pool2d(w, 2, ceil_mode=True) * 4
        cs = F.avg_pool2d(c * w, 2, ceil_mode=True) * 4
        pyr.append((cs / ws.clamp_min(1e-12), ws.clamp(0, 1)))
    cur = pyr[-1][0]
    for c, w in reversed(pyr[:-1]):
        up = F.interpolate(cur, size=c.shape[-2:], mode="bilinear", align_corners=False)
        cur = c * w + up * (1 - w)
    return cur.permute(0, 2, 3, 1)


def complete_albedo(albedo: torch.Tensor, conf: torch.Tensor, uvr: UVRaster, model,
                    symmetric: bool = True) -> torch.Tensor:
    """The final atlas: fitted albedo where seen, its mirror where only the other side was seen,
    neighbours' colours further out, skin tone on the carried head, generic eyes and mouth, and
    every empty texel padded from its island (no seams under mip-mapping).

    albedo: (1, T, T, 3) the fitted albedo; conf: (1, T, T) texel confidence from ``unwrap``;
    symmetric: fill poorly seen texels from their mirror image (off for a generator's texture).
    """
    T = albedo.shape[1]
    region = uvr.region
    names = model.region_names
    rid = {n: i for i, n in enumerate(names)}
    face = (region == rid["face"])[None]

    # 1. Symmetry: where this side is poorly seen and its mirror is well seen, take the mirror.
    a_m = mirror_face(albedo, model)
    c_m = mirror_face(conf[..., None], model)[..., 0]
    w_own = conf.pow(2)
    w_mir = 0.7 * c_m.pow(2) if symmetric else torch.zeros_like(c_m)
    blended = (albedo * w_own[..., None] + a_m * w_mir[..., None]) / (w_own + w_mir).clamp_min(1e-6)[..., None]
    seen = ((conf + c_m) > 1e-3) & face
    weight = torch.clamp((w_own + w_mir) * 4, 0, 1) * seen

    # 2. Skin tone from well-seen skin; unseen face texels fade toward it far from seen ones.
    good = (conf > 0.5) & face
    # The skin tone for unseen skin: a lower quantile of the well-seen texels, so that specular
    # highlights (flash on the forehead and nose) do not lighten it.
    skin = (albedo[good].quantile(0.4, dim=0) if good.sum() > 10
            else torch.tensor([0.35, 0.22, 0.16], device=albedo.device))
    filled = pull_push(blended, weight.float())
    reach = pull_push(weight[..., None].float(), (weight > 0).float())[..., 0]  # ~how close to seen
    face_img = filled * reach[..., None].clamp(0, 1).sqrt() + skin * (1 - reach[..., None].clamp(0, 1).sqrt())
    face_img = torch.where(weight[..., None] > 0, filled, face_img)

    out = torch.zeros_like(albedo)
    out = torch.where(face[..., None], face_img, out)

    # 3. Carried parts the photo never shows.
    head = (region == rid["head_neck"])[None]
    out = torch.where(head[..., None], skin * 0.97, out)
    out = paint_carried(out, uvr, model)

    # 4. Pad every island outward (fills the gaps between islands too).
    covered = (region >= 0)[None].float()
    return pull_push(out, covered).clamp(0, 1)


def paint_carried(out: torch.Tensor, uvr: UVRaster, model, mouth: torch.Tensor | None = None) -> torch.Tensor:
    """Generic colours for the carried parts that no photo shows: the mouth socket (``MOUTH``, or
    the given (1, T, T, 3) ``mouth`` image there), the eye sockets and the painted eyeballs (iris
    and pupil by the angle from each eye's axis). Other texels of ``out`` are kept."""
    region = uvr.region
    rid = {n: i for i, n in enumerate(model.region_names)}
    dev = out.device
    col = lambda c: torch.tensor(c, device=dev)  # noqa: E731
    mouth_t = (region == rid["mouth_socket"])[None]
    out = torch.where(mouth_t[..., None], col(MOUTH) if mouth is None else mouth, out)
    sockets = ((region == rid["eye_socket_left"]) | (region == rid["eye_socket_right"]))[None]
    out = torch.where(sockets[..., None], col(SOCKET), out)
    # ICT's teeth and gums (with the tongue), carried geometry that no photo shows well.
    out = torch.where((region == rid["gums_tongue"])[None, ..., None], col(GUMS), out)
    out = torch.where((region == rid["teeth"])[None, ..., None], col(TEETH), out)
    # Eyeballs: ICT's sclera is an opaque ball in front of the iris, so paint the cornea's cap of
    # the ball with the iris, by the angle of each texel's (neutral) 3D point from the eye's axis.
    eyes = [(rid["sclera_left"], rid["iris_left"]), (rid["sclera_right"], rid["iris_right"])]
    pos, _ = render.interpolate(model.vertices_neutral[None].contiguous(), uvr.rast, model.tris)
    pos = pos[0]
    for sclera_id, iris_id in eyes:
        ball = (region == sclera_id) | (region == iris_id)
        if not ball.any():
            continue
        vmask = model.vertex_region == sclera_id
        centre = model.vertices_neutral[vmask].mean(0)
        d = F.normalize(pos[ball] - centre, dim=-1)
        ang = torch.rad2deg(torch.acos(d[:, 2].clamp(-1, 1)))  # from +Z, the eye's forward axis
        c = torch.tensor(SCLERA, device=dev).expand(len(ang), 3).clone()
        iris_c = torch.tensor(IRIS, device=dev) * (0.75 + 0.5 * (ang / 30.0)).clamp(0.6, 1.3)[:, None]
        c = torch.where((ang < 30)[:, None], iris_c, c)
        c = torch.where(((ang >= 27) & (ang < 31))[:, None], torch.tensor(IRIS, device=dev) * 0.45, c)
        c = torch.where((ang < 11)[:, None], torch.tensor(PUPIL, device=dev), c)
        img = out[0].clone()
        img[ball] = c
        out = img[None]
    return out


def vertex_colours(albedo: torch.Tensor, model, tris: torch.Tensor, tri_uvs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The atlas sampled at the corners of ``tris`` and averaged per vertex: (V, C) colours and
    (V,) bool, which vertices any of the triangles touch. albedo: (1, T, T, C) atlas layout."""
    uv = model.uvs[tri_uvs.long().reshape(-1)]                       # (3n, 2)
    grid = (uv * 2 - 1)[None, None]                                  # row 0 = v 0 = grid y -1
    c = F.grid_sample(albedo.permute(0, 3, 1, 2), grid, mode="bilinear", padding_mode="border",
                      align_corners=False)[0, :, 0].t()              # (3n, C)
    idx = tris.long().reshape(-1)
    V = model.n_vertices
    acc = torch.zeros(V, c.shape[1], device=c.device).index_add_(0, idx, c)
    cnt = torch.zeros(V, device=c.device).index_add_(0, idx, torch.ones_like(idx, dtype=c.dtype))
    return acc / cnt.clamp_min(1)[:, None], cnt > 0


def continue_from_border(values: torch.Tensor, known: torch.Tensor, points: torch.Tensor,
                         tris: torch.Tensor, power: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Continue per-vertex ``values`` (V, C) from the ``known`` vertices to the others: Shepard
    interpolation (inverse distance ^ ``power`` over the 3D ``points`` (V, 3)) of the known border
    vertices (those with an edge to an unknown one). Exact at the border, smooth away from it, so
    the continued part meets the known one without a band. Returns the values (known ones
    unchanged) and each vertex's distance to the border (0 on known vertices)."""
    t = tris.long()
    e = torch.cat([t[:, [0, 1]], t[:, [1, 2]], t[:, [2, 0]]])
    cross = known[e[:, 0]] != known[e[:, 1]]
    ends = e[cross].reshape(-1)
    border = torch.zeros_like(known)
    border[ends[known[ends]]] = True
    free = ~known
    out = values.clone()
    dist = torch.zeros(len(values), device=values.device)
    if not border.any() or not free.any():
        return out, dist
    d = torch.cdist(points[free], points[border]).clamp_min(1e-4)      # (F, B)
    w = d.pow(-power)
    out[free] = (w @ values[border]) / w.sum(1, keepdim=True)
    dist[free] = d.min(1).values
    return out, dist


def _zone_of(x: torch.Tensor, y: torch.Tensor, model, margin_cm: float, sides: bool = True,
             offset_cm: float | None = None, jaw_sides: bool = False) -> torch.Tensor:
    """In [0, 1] at neutral-mesh points (x, y in cm): from ``offset_cm`` (default ``margin_cm``)
    above the brows up, below the chin and, with ``sides``, ``margin_cm`` beside the eyes, each
    rising from 0 to 1 over ``margin_cm``: where a photo's skin is often hidden (a fringe, a hat, a
    collar, the shadow under the jaw) and a linear texture model carries its training photos' hair
    and clothing. ``jaw_sides`` (without ``sides``): also below the mouth, ``offset_cm`` beyond the
    outer eye corners (the jaw's sides and the skin under the ears, seen at grazing angles)."""
    lm = model.vertices_neutral[model.landmarks68]
    off = margin_cm if offset_cm is None else offset_cm
    brow, chin = float(lm[17:27, 1].max()) + off, float(lm[8, 1])
    ramp = lambda v: (v / margin_cm).clamp(0, 1)  # noqa: E731  soft zone edges
    zone = torch.maximum(ramp(y - brow), ramp(chin - y))
    eye_x = float(lm[[36, 45], 0].abs().max())
    if sides:
        zone = torch.maximum(zone, ramp(x.abs() - eye_x - margin_cm))
    elif jaw_sides:  # the jaw's sides below the mouth and the skin under the ears
        zone = torch.maximum(zone, ramp(x.abs() - eye_x - off) * ramp(float(lm[[48, 54], 1].mean()) - y))
    return zone


def _zones(uvr: UVRaster, model, margin_cm: float, sides: bool = True,
           offset_cm: float | None = None, jaw_sides: bool = False) -> torch.Tensor:
    """(1, T, T): ``_zone_of`` on the face's texels, 0 elsewhere."""
    rid = {n: i for i, n in enumerate(model.region_names)}
    face = (uvr.region == rid["face"])[None]
    pos, _ = render.interpolate(model.vertices_neutral[None].contiguous(), uvr.rast, model.tris)
    return _zone_of(pos[..., 0], pos[..., 1], model, margin_cm, sides, offset_cm, jaw_sides) * face


def lift_unseen_dark(albedo: torch.Tensor, seen: torch.Tensor, uvr: UVRaster, model,
                     dark: float = 0.7, margin_cm: float = 1.5) -> torch.Tensor:
    """A linear texture model extrapolates the hair it saw in training onto unseen forehead texels
    (a fringe that the trust weight kept out leaves the model free there) and clothing onto the
    unseen neck. Above the brows, beside the eyes (by ``margin_cm``, soft) and below the chin
    (``_zones``), texels that the photo does not show (``seen`` (1, T, T) in [0, 1]) and that are
    darker than ``dark`` x the seen skin's median luminance are pulled toward that skin tone,
    smoothly. (1, T, T, 3) -> same."""
    rid = {n: i for i, n in enumerate(model.region_names)}
    face = (uvr.region == rid["face"])[None]
    good = (seen > 0.5) & face
    if int(good.sum()) < 50:
        return albedo
    tone = albedo[good].median(0).values                                   # (3,)
    lum = lambda x: (x * torch.tensor([0.2126, 0.7152, 0.0722], device=x.device)).sum(-1)  # noqa: E731
    t_lum = float(lum(tone))
    zone = _zones(uvr, model, margin_cm)
    u = ((dark * t_lum - lum(albedo)) / (0.25 * t_lum)).clamp(0, 1) * (1 - seen.clamp(0, 1)) * zone
    u = soften(u, uvr.res) * face
    return albedo * (1 - u[..., None]) + tone * u[..., None]


def seen_skin(seen: torch.Tensor, uvr: UVRaster, lo: float = KEEP_LO, hi: float = KEEP_HI) -> torch.Tensor:
    """(1, T, T) in [0, 1]: ``seen`` (visibility x frontal x skin trust, ``albedo.seen_share``)
    mapped from 0 at ``lo`` to 1 at ``hi`` (smoothstep), then softened over a few texels."""
    s = ((seen - lo) / (hi - lo)).clamp(0, 1)
    return soften(s * s * (3 - 2 * s), uvr.res)


def complete_head(face_albedo: torch.Tensor, uvr: UVRaster, model,
                  seen: torch.Tensor | None = None) -> torch.Tensor:
    """A whole-head atlas from an albedo that is complete on the fitted face (a latent texture
    model's output): the scalp, the back of the head and the neck continue the face's colours over
    the mesh (``continue_from_border``), so there is no band where the face's texels end; the mouth
    socket continues the lips, then gums and a dark cavity (``LIP_CM``, ``GUM_CM``);
    sockets and eyeballs as ``paint_carried``.

    ``seen`` (1, T, T): how well the photo shows skin per texel (``albedo.seen_share``). With it,
    from just above the brows up (a fringe may reach them), below the chin and on the jaw's sides
    below the mouth (``_zone_of``, ``KEEP_ZONE_CM``) the face's own texels are kept only as far as
    the photo shows skin there (``seen_skin``); the rest is continued from the kept ones like the
    scalp. There the model's colours are no evidence of anything (its training photos' hairlines
    and collars: a band across the upper forehead, a dark neck), so the skin the photo does show
    runs on into the scalp and down the neck. Returns the (1, T, T, 3) padded atlas."""
    rid = {n: i for i, n in enumerate(model.region_names)}
    region = uvr.region
    face = (region == rid["face"])[None]
    nf = model.fit_tri_count
    tris, tri_uvs = model.tris[:nf], model.tri_uvs[:nf]
    keep = None
    if seen is None:
        col, known = vertex_colours(face_albedo, model, tris, tri_uvs)
    else:
        s_img = seen_skin(seen, uvr) * face
        ramp, off = KEEP_ZONE_CM
        keep = 1 - _zones(uvr, model, ramp, sides=False, offset_cm=off, jaw_sides=True) * (1 - s_img)      # (1, T, T)
        both, known = vertex_colours(torch.cat([face_albedo, s_img[..., None]], -1), model, tris, tri_uvs)
        v = model.vertices_neutral
        keep_v = 1 - _zone_of(v[:, 0], v[:, 1], model, ramp, sides=False, offset_cm=off,
                              jaw_sides=True) * (1 - both[:, 3])
        col, known = both[:, :3], known & (keep_v > 0.5)
    cont, dist = continue_from_border(col, known, model.vertices_neutral, model.tris)
    # Channel 4: the distance to the face (cm), for the mouth socket's bands.
    interp, _ = render.interpolate(torch.cat([cont, dist[:, None]], 1)[None].contiguous(), uvr.rast, model.tris)
    head_img, dist_img = interp[..., :3], interp[..., 3:4]
    face_img = face_albedo if keep is None else keep[..., None] * face_albedo + (1 - keep[..., None]) * head_img
    out = torch.where(face[..., None], face_img, torch.zeros_like(face_albedo))
    head = (region == rid["head_neck"])[None]
    out = torch.where(head[..., None], head_img, out)
    out = paint_carried(out, uvr, model)
    # Mouth socket: from the lips inward, the inner lips and gums, then a dark, reddish cavity, by
    # the distance from the lips over the mesh (the teeth in front of it are their own mesh).
    mouth = region[None] == rid["mouth_socket"]
    if mouth.any():
        dev = out.device
        d = dist_img[mouth]                                   # (n, 1)
        ramp = lambda x: ((d - x) / 0.05 + 0.5).clamp(0, 1)  # noqa: E731  0 -> 1 across x (5 mm)
        colour = (head_img[mouth] * (1 - ramp(LIP_CM))
                  + torch.tensor(GUMS, device=dev) * (ramp(LIP_CM) - ramp(GUM_CM))
                  + torch.tensor(MOUTH, device=dev) * 0.7 * ramp(GUM_CM))
        out = out.clone()
        out[mouth] = colour
    covered = (region >= 0)[None].float()
    return pull_push(out, covered).clamp(0, 1)
