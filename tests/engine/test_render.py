"""Tests of engine.render's CPU backend against a brute-force numpy reference and gradcheck."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import render
from engine.render import cpu as rcpu

CTX = render.create_context("cpu")


# ---------------------------------------------------------------------------------------------
# brute-force reference: per triangle, solve the 3x3 system for every pixel ray


def ref_rasterize(pos: np.ndarray, tri: np.ndarray, H: int, W: int):
    """ids (B,H,W) (-1 empty), bary (B,H,W,3), depth (B,H,W). Independent of the kernels:
    barycentrics come from np.linalg.inv of [x; y; w] columns, not from edge functions."""
    pos = pos.astype(np.float64)
    B = pos.shape[0]
    jj, ii = np.meshgrid(np.arange(W), np.arange(H))
    rays = np.stack([(2 * jj + 1) / W - 1, (2 * ii + 1) / H - 1, np.ones((H, W))], -1)
    ids = np.full((B, H, W), -1)
    bary = np.zeros((B, H, W, 3))
    depth = np.full((B, H, W), np.inf)
    for b in range(B):
        for t, (i0, i1, i2) in enumerate(tri):
            P = pos[b, [i0, i1, i2]]  # (3,4)
            M = P[:, [0, 1, 3]].T  # columns are the vertices' (x, y, w)
            if abs(np.linalg.det(M)) < 1e-12:
                continue
            bp = rays @ np.linalg.inv(M).T  # (H,W,3) = M^-1 r
            s = bp.sum(-1)
            with np.errstate(divide="ignore", invalid="ignore"):
                bc = bp / s[..., None]
                wpt = 1.0 / s  # w of the 3D point seen through the pixel
                z = (bc * P[:, 2]).sum(-1) / (bc * P[:, 3]).sum(-1)
            inside = (bc >= 0).all(-1) & (wpt > 0) & (z >= -1) & (z <= 1)
            win = inside & (z < depth[b])
            depth[b][win] = z[win]
            ids[b][win] = t
            bary[b][win] = bc[win]
    return ids, bary, depth


def random_scene(seed: int, B: int = 1, T: int = 12, V: int = 20):
    g = np.random.default_rng(seed)
    w = g.uniform(0.6, 2.0, (B, V, 1))
    xy = g.uniform(-1.1, 1.1, (B, V, 2)) * w
    z = g.uniform(-0.9, 0.9, (B, V, 1)) * w
    pos = np.concatenate([xy, z, w], -1).astype(np.float32)
    tris: list[np.ndarray] = []
    seen: set[tuple[int, ...]] = set()
    while len(tris) < T:  # no two triangles on the same vertices: those tie exactly in depth
        t = g.choice(V, 3, replace=False)
        if tuple(sorted(t)) not in seen:
            seen.add(tuple(sorted(t)))
            tris.append(t)
    tri = np.stack(tris).astype(np.int32)
    return torch.from_numpy(pos), torch.from_numpy(tri)


def check_against_ref(pos: torch.Tensor, tri: torch.Tensor, H: int, W: int,
                      max_mismatch: int = 1) -> torch.Tensor:
    rast, _ = render.rasterize(CTX, pos, tri, (H, W))
    ids, bary, depth = ref_rasterize(pos.numpy(), tri.numpy(), H, W)
    got = rast[..., 3].round().long().numpy() - 1
    mism = got != ids
    assert mism.sum() <= max_mismatch, f"{mism.sum()} pixels differ"
    ok = (~mism) & (ids >= 0)
    np.testing.assert_allclose(rast[..., 0].numpy()[ok], bary[..., 0][ok], atol=2e-4)
    np.testing.assert_allclose(rast[..., 1].numpy()[ok], bary[..., 1][ok], atol=2e-4)
    np.testing.assert_allclose(rast[..., 2].numpy()[ok], depth[ok], atol=2e-4)
    assert (rast[ids < 0] == 0).all()
    return rast


@pytest.mark.parametrize("seed", range(6))
def test_rasterize_matches_reference(seed):
    pos, tri = random_scene(seed, B=2)
    rast = check_against_ref(pos, tri, 23, 31)
    assert (rast[..., 3] > 0).any()


def test_barycentric_convention_and_row_order():
    # one triangle in the top half of the image (clip y < 0 -> rows 0..H/2)
    pos = torch.tensor([[[-0.9, -0.9, 0.0, 1.0], [0.9, -0.9, 0.0, 1.0], [0.0, -0.1, 0.0, 1.0]]])
    tri = torch.tensor([[0, 1, 2]], dtype=torch.int32)
    rast, _ = render.rasterize(CTX, pos, tri, (16, 16))
    cov = rast[0, ..., 3] > 0
    assert cov[:8].any() and not cov[8:].any()
    # the covered pixel nearest each vertex has that vertex's weight largest:
    # u weighs vertex 0, v vertex 1, 1-u-v vertex 2
    jj, ii = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="xy")
    px = (2 * jj + 1) / 16 - 1
    py = (2 * ii + 1) / 16 - 1
    w3 = torch.stack([rast[0, ..., 0], rast[0, ..., 1], 1 - rast[0, ..., 0] - rast[0, ..., 1]])
    for k in range(3):
        d = (px - pos[0, k, 0]) ** 2 + (py - pos[0, k, 1]) ** 2
        d[~cov] = 1e9
        i, j = divmod(int(d.argmin()), 16)
        assert int(w3[:, i, j].argmax()) == k
    # u,v reproduce the pixel position: x = u*x0 + v*x1 + (1-u-v)*x2
    xs, _ = render.interpolate(pos[0, :, :2], rast, tri)
    assert torch.allclose(xs[0, ..., 0][cov], px[cov].float(), atol=1e-5)
    assert torch.allclose(xs[0, ..., 1][cov], py[cov].float(), atol=1e-5)


def test_perspective_correct():
    # a slanted triangle: interpolating (x, y, w) then dividing must give the pixel position
    pos = torch.tensor([[[-1.5, -1.0, 0.2, 1.0], [3.0, -2.0, 1.0, 3.0], [0.0, 2.5, 0.5, 2.0]]])
    tri = torch.tensor([[0, 1, 2]], dtype=torch.int32)
    rast, _ = render.rasterize(CTX, pos, tri, (20, 20))
    cov = rast[0, ..., 3] > 0
    a, _ = render.interpolate(pos, rast, tri)
    jj, ii = torch.meshgrid(torch.arange(20), torch.arange(20), indexing="xy")
    px = ((2 * jj + 1) / 20 - 1).float()
    assert cov.sum() > 50
    assert torch.allclose((a[0, ..., 0] / a[0, ..., 3])[cov], px[cov], atol=1e-5)
    assert torch.allclose((a[0, ..., 2] / a[0, ..., 3])[cov], rast[0, ..., 2][cov], atol=1e-5)


def test_depth_order_and_ties_deterministic():
    # two overlapping quads at different depth, drawn in both orders
    near = [[-0.5, -0.5, -0.5, 1], [0.5, -0.5, -0.5, 1], [0.0, 0.5, -0.5, 1]]
    far = [[-0.8, -0.8, 0.5, 1], [0.8, -0.8, 0.5, 1], [0.0, 0.8, 0.5, 1]]
    for order in ([near, far], [far, near]):
        pos = torch.tensor([order[0] + order[1]], dtype=torch.float32)
        tri = torch.tensor([[0, 1, 2], [3, 4, 5]], dtype=torch.int32)
        rast, _ = render.rasterize(CTX, pos, tri, (16, 16))
        centre = rast[0, 8, 8]
        assert abs(float(centre[2]) + 0.5) < 1e-5
    r1, _ = render.rasterize(CTX, pos, tri, (16, 16))
    assert torch.equal(r1, rast)


def test_threads_do_not_change_result():
    from engine.render import _kernels

    pos, tri = random_scene(3, B=2, T=40, V=50)
    p = pos.double().numpy()
    t = tri.numpy()
    a = _kernels.raster_ids(p, t, 37, 29, threads=1)
    b = _kernels.raster_ids(p, t, 37, 29, threads=3)
    assert np.array_equal(a[0], b[0])


def test_empty_scene():
    pos = torch.zeros((2, 0, 4))
    tri = torch.zeros((0, 3), dtype=torch.int32)
    rast, db = render.rasterize(CTX, pos, tri, (8, 10))
    assert rast.shape == (2, 8, 10, 4) and (rast == 0).all() and db.shape == (2, 8, 10, 4)
    out, _ = render.interpolate(torch.zeros((0, 3)), rast, tri)
    assert out.shape == (2, 8, 10, 3) and (out == 0).all()
    tex = torch.rand(1, 4, 4, 3)
    col = render.texture(tex, out[..., :2], boundary_mode="clamp")
    assert torch.allclose(col, tex[0, 0, 0].expand_as(col))
    aa = render.antialias(col, rast, pos, tri)
    assert torch.equal(aa, col)
    # triangles entirely off screen
    pos2 = torch.tensor([[[2.0, 2.0, 0.0, 1.0], [3.0, 2.0, 0.0, 1.0], [2.0, 3.0, 0.0, 1.0]]])
    rast2, _ = render.rasterize(CTX, pos2, torch.tensor([[0, 1, 2]], dtype=torch.int32), (8, 8))
    assert (rast2 == 0).all()


def test_degenerate_triangles():
    pos = torch.tensor([[[-0.5, -0.5, 0, 1], [0.5, 0.5, 0, 1], [0.0, 0.0, 0, 1],  # collinear
                         [0.2, 0.2, 0, 1], [0.2, 0.2, 0, 1], [0.2, 0.2, 0, 1],  # a point
                         [-1, -1, 0, 1], [1, -1, 0, 1], [0, 1, 0, 1]]], dtype=torch.float32)
    pos.requires_grad_(True)
    tri = torch.tensor([[0, 1, 2], [3, 4, 5], [6, 7, 8], [0, 0, 1]], dtype=torch.int32)
    rast, db = render.rasterize(CTX, pos, tri, (12, 12))
    ids = rast[..., 3].round().long() - 1
    assert set(ids.unique().tolist()) <= {-1, 2}
    assert torch.isfinite(rast).all() and torch.isfinite(db).all()
    aa = render.antialias(rast[..., :3].contiguous(), rast, pos, tri)
    aa.sum().backward()
    assert torch.isfinite(pos.grad).all()


def test_behind_camera_and_clipping():
    tri = torch.tensor([[0, 1, 2]], dtype=torch.int32)
    # all w < 0: never drawn
    pos = torch.tensor([[[-0.5, -0.5, 0.0, -1.0], [0.5, -0.5, 0.0, -1.0], [0.0, 0.5, 0.0, -1.0]]])
    rast, _ = render.rasterize(CTX, pos, tri, (10, 10))
    assert (rast == 0).all()
    # beyond the far plane (z > w) and before the near plane (z < -w)
    for zz in (1.5, -1.5):
        pos = torch.tensor([[[-0.5, -0.5, zz, 1.0], [0.5, -0.5, zz, 1.0], [0.0, 0.5, zz, 1.0]]])
        rast, _ = render.rasterize(CTX, pos, tri, (10, 10))
        assert (rast == 0).all()
    # one vertex behind the camera, and one crossing the near plane: partly drawn, as the ref
    pos = torch.tensor([[[-0.5, -0.5, 0.0, 1.0], [0.5, -0.4, 0.0, 1.0], [0.1, 0.6, 0.0, -0.5]],
                        [[-0.5, -0.5, -0.2, 1.0], [0.6, -0.5, 0.3, 1.0],
                         [0.0, 0.5, -3.0, 1.0]]])
    rast = check_against_ref(pos, tri, 24, 24)
    for b in range(2):
        n = int((rast[b, ..., 3] > 0).sum())
        assert 0 < n < 24 * 24
    z = rast[..., 2][rast[..., 3] > 0]
    assert (z >= -1).all() and (z <= 1).all()


def test_batch_different_poses():
    pos, tri = random_scene(7, B=3, T=15, V=25)
    rast, db = render.rasterize(CTX, pos, tri, (17, 19))
    for b in range(3):
        rb, dbb = render.rasterize(CTX, pos[b:b + 1], tri, (17, 19))
        assert torch.equal(rb[0], rast[b])
        assert torch.allclose(dbb[0], db[b])
    assert not torch.equal(rast[0], rast[1])
    # per-batch attributes, and gradients reaching each batch item's own attributes
    attr = torch.rand(3, 25, 2, requires_grad=True)
    out, _ = render.interpolate(attr, rast, tri)
    for b in range(3):
        ob, _ = render.interpolate(attr[b], rast[b:b + 1], tri)
        assert torch.allclose(ob[0], out[b])
    out[1].sum().backward()
    assert attr.grad[0].abs().sum() == 0 and attr.grad[2].abs().sum() == 0
    assert attr.grad[1].abs().sum() > 0


def test_rast_db_matches_finite_differences():
    pos = torch.tensor([[[-1.5, -1.0, 0.2, 1.0], [3.0, -2.0, 1.0, 3.0], [0.0, 2.5, 0.5, 2.0]]],
                       dtype=torch.float64)
    tri = torch.tensor([[0, 1, 2]], dtype=torch.int32)
    rast, db = render.rasterize(CTX, pos, tri, (32, 32))
    cov = rast[0, ..., 3] > 0
    inner = cov[1:-1, 1:-1] & cov[2:, 1:-1] & cov[:-2, 1:-1] & cov[1:-1, 2:] & cov[1:-1, :-2]
    for ch, d in ((0, 0), (1, 2)):
        r = rast[0, ..., ch]
        ddx = (r[1:-1, 2:] - r[1:-1, :-2]) / 2
        ddy = (r[2:, 1:-1] - r[:-2, 1:-1]) / 2
        assert torch.allclose(db[0, 1:-1, 1:-1, d][inner], ddx[inner], atol=2e-4)
        assert torch.allclose(db[0, 1:-1, 1:-1, d + 1][inner], ddy[inner], atol=2e-4)
    _, db0 = render.rasterize(CTX, pos, tri, (32, 32), grad_db=False)
    assert db0.shape[-1] == 0


# ---------------------------------------------------------------------------------------------
# gradients


def small_scene(dtype=torch.float64):
    pos = torch.tensor([[[-0.7, -0.6, 0.1, 1.0], [0.65, -0.5, 0.2, 1.2], [0.1, 0.7, -0.1, 0.9],
                         [0.8, 0.6, 0.3, 1.1]]], dtype=dtype)
    tri = torch.tensor([[0, 1, 2], [1, 3, 2]], dtype=torch.int32)
    return pos, tri


def test_gradcheck_rasterize():
    pos, tri = small_scene()
    pos.requires_grad_(True)

    def f(p):
        rast, db = render.rasterize(CTX, p, tri, (7, 9))
        return rast[..., :3], db

    assert torch.autograd.gradcheck(f, (pos,), eps=1e-6, atol=1e-5)


def test_gradcheck_interpolate():
    pos, tri = small_scene()
    rast, db = render.rasterize(CTX, pos, tri, (7, 9))
    uvz = rast[..., :3].detach().requires_grad_(True)  # the id channel is not differentiable
    ids = rast[..., 3:].detach()
    db = db.detach().requires_grad_(True)
    attr = torch.rand(1, 4, 3, dtype=torch.float64, requires_grad=True)

    def f(a, r, d):
        out, da = render.interpolate(a, torch.cat([r, ids], -1), tri, rast_db=d,
                                     diff_attrs=[0, 2])
        return out, da

    assert torch.autograd.gradcheck(f, (attr, uvz, db), eps=1e-6, atol=1e-5)
    f2 = lambda a, r: render.interpolate(a, torch.cat([r, ids], -1), tri)[0]  # noqa: E731
    assert torch.autograd.gradcheck(f2, (attr[0].detach().requires_grad_(True), uvz), eps=1e-6,
                                    atol=1e-5)
    # compact path (rasterize's own output) gives the same values and gradients as the dense one
    p = pos.clone().requires_grad_(True)
    r, _ = render.rasterize(CTX, p, tri, (7, 9))
    a1, _ = render.interpolate(attr, r, tri)
    a2, _ = render.interpolate(attr, r.clone(), tri)
    assert torch.equal(a1, a2)
    g1 = torch.autograd.grad(a1.square().sum(), (p, attr), retain_graph=True)
    g2 = torch.autograd.grad(a2.square().sum(), (p, attr))
    assert all(torch.allclose(x, y) for x, y in zip(g1, g2))


def test_gradcheck_full_chain_compact_path():
    pos, tri = small_scene()
    pos.requires_grad_(True)
    uvs = torch.rand(4, 2, dtype=torch.float64, requires_grad=True)
    tex = torch.rand(1, 5, 6, 2, dtype=torch.float64, requires_grad=True)

    def f(p, u, t):
        rast, _ = render.rasterize(CTX, p, tri, (6, 7))
        uv, _ = render.interpolate(u, rast, tri)
        return render.texture(t, uv, filter_mode="linear", boundary_mode="wrap")

    assert torch.autograd.gradcheck(f, (pos, uvs, tex), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("boundary", ["wrap", "clamp", "zero"])
def test_gradcheck_texture(boundary):
    g = torch.Generator().manual_seed(0)
    tex = torch.rand(2, 4, 5, 3, dtype=torch.float64, generator=g, requires_grad=True)
    uv = (torch.rand(2, 3, 4, 2, dtype=torch.float64, generator=g) * 1.6 - 0.3)
    uv.requires_grad_(True)
    with torch.no_grad():
        uv[0, 1] = 0.0  # exact (0, 0): the empty-pixel shortcut of the kernels
    f = lambda t, u: render.texture(t, u, filter_mode="linear", boundary_mode=boundary)  # noqa
    assert torch.autograd.gradcheck(f, (tex, uv), eps=1e-6, atol=1e-5)
    fn = lambda t: render.texture(t, uv, filter_mode="nearest", boundary_mode=boundary)  # noqa
    assert torch.autograd.gradcheck(fn, (tex,), eps=1e-6, atol=1e-5)


def test_texture_values_wrap_clamp_nearest():
    tex = torch.arange(12, dtype=torch.float64).reshape(1, 3, 4, 1)  # rows v, cols u
    # texel centres sample exactly; v = 0 is the first memory row
    uv = torch.tensor([[[[0.5 / 4, 0.5 / 3], [3.5 / 4, 2.5 / 3]]]], dtype=torch.float64)
    out = render.texture(tex, uv, filter_mode="linear", boundary_mode="clamp")
    assert out.flatten().tolist() == [0.0, 11.0]
    # halfway between texel 0 and 1 of row 0
    uv = torch.tensor([[[[1.0 / 4, 0.5 / 3]]]], dtype=torch.float64)
    assert float(render.texture(tex, uv, filter_mode="linear")) == pytest.approx(0.5)
    # outside: clamp holds the edge texel, wrap blends the last and first columns
    uv = torch.tensor([[[[0.0, 0.5 / 3], [1.25, 0.5 / 3]]]], dtype=torch.float64)
    c = render.texture(tex, uv, filter_mode="linear", boundary_mode="clamp").flatten()
    w = render.texture(tex, uv, filter_mode="linear", boundary_mode="wrap").flatten()
    z = render.texture(tex, uv, filter_mode="linear", boundary_mode="zero").flatten()
    assert c.tolist() == pytest.approx([0.0, 3.0])
    assert w.tolist() == pytest.approx([1.5, 0.5])  # u=0: between col 3 and col 0; 1.25 = 0.25
    assert z.tolist() == pytest.approx([0.0, 0.0])
    n = render.texture(tex, torch.tensor([[[[0.3, 0.9], [1.3, -0.1]]]], dtype=torch.float64),
                       filter_mode="nearest", boundary_mode="wrap").flatten()
    assert n.tolist() == [9.0, 9.0]
    with pytest.raises(NotImplementedError):
        render.texture(tex, uv, filter_mode="linear-mipmap-linear")


def test_texture_batch_broadcast_and_empty_pixels():
    pos, tri = small_scene(torch.float32)
    pos = pos.expand(2, -1, -1).contiguous()
    rast, _ = render.rasterize(CTX, pos, tri, (8, 8))
    uvs = torch.rand(4, 2)
    uv, _ = render.interpolate(uvs, rast, tri)
    tex = torch.rand(2, 4, 4, 3)
    a = render.texture(tex, uv, boundary_mode="clamp")
    b = render.texture(tex, uv.clone(), boundary_mode="clamp")  # dense path
    assert torch.allclose(a, b)
    empty = rast[..., 3] == 0
    assert torch.allclose(a[0][empty[0]], tex[0, 0, 0].expand(int(empty[0].sum()), 3))


def test_interpolate_separate_uv_index_buffer():
    # a quad as two triangles whose UVs are split at the diagonal (a seam)
    pos = torch.tensor([[[-0.8, -0.8, 0, 1], [0.8, -0.8, 0, 1], [0.8, 0.8, 0, 1],
                         [-0.8, 0.8, 0, 1]]], dtype=torch.float32)
    tri = torch.tensor([[0, 1, 2], [0, 2, 3]], dtype=torch.int32)
    uvs = torch.tensor([[0, 0], [1, 0], [1, 1], [5, 5], [6, 6], [7, 7]], dtype=torch.float32)
    face_uvs = torch.tensor([[0, 1, 2], [3, 4, 5]], dtype=torch.int32)
    rast, _ = render.rasterize(CTX, pos, tri, (10, 10))
    uv, _ = render.interpolate(uvs, rast, face_uvs)
    ids = rast[0, ..., 3].round().long() - 1
    assert (uv[0][ids == 0] <= 1 + 1e-6).all()
    assert (uv[0][ids == 1] >= 5 - 1e-6).all()
    # the same as expanding per-corner attributes
    corner = uvs[face_uvs.long()].reshape(-1, 2)
    seq = torch.arange(6, dtype=torch.int32).reshape(2, 3)
    uv2, _ = render.interpolate(corner, rast, seq)
    assert torch.allclose(uv, uv2)


def test_interpolate_in_place_edit_invalidates_compact_view():
    pos, tri = small_scene(torch.float32)
    rast, _ = render.rasterize(CTX, pos, tri, (8, 8))
    rast[..., 0] = 1.0  # u = 1 everywhere: every pixel takes vertex 0's attribute
    rast[..., 1] = 0.0
    attr = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    out, _ = render.interpolate(attr, rast, tri)
    cov = rast[0, ..., 3] > 0
    ids = rast[0, ..., 3].round().long() - 1
    expect = attr[tri.long()[ids[cov], 0], 0]
    assert torch.allclose(out[0, ..., 0][cov], expect)


def aa_scene(dtype=torch.float64):
    # one triangle over the background plus one that partly occludes it
    pos = torch.tensor([[[-0.6, -0.7, 0.2, 1.0], [0.55, -0.45, 0.1, 1.0], [-0.1, 0.65, 0.3, 1.0],
                         [0.05, -0.2, -0.3, 1.0], [0.9, 0.1, -0.3, 1.0], [0.2, 0.8, -0.2, 1.0]]],
                       dtype=dtype)
    tri = torch.tensor([[0, 1, 2], [3, 4, 5]], dtype=torch.int32)
    return pos, tri


def test_gradcheck_antialias():
    pos, tri = aa_scene()
    rast, _ = render.rasterize(CTX, pos, tri, (11, 13))
    rast = rast.detach()
    g = torch.Generator().manual_seed(1)
    color = torch.rand(1, 11, 13, 2, dtype=torch.float64, generator=g, requires_grad=True)
    pos.requires_grad_(True)
    out = render.antialias(color, rast, pos, tri)
    assert (out - color).abs().max() > 0.01  # some edges were found
    f = lambda c, p: render.antialias(c, rast, p, tri)  # noqa: E731
    assert torch.autograd.gradcheck(f, (color, pos), eps=1e-7, atol=1e-5)


def test_antialias_vertical_edge_is_exact_coverage():
    # big triangle whose right edge is vertical at pixel X = edge (pixel units)
    W = H = 20
    for edge in (10.3, 9.8):
        xc = 2 * edge / W - 1
        pos = torch.tensor([[[-3.0, -3.0, 0, 1], [xc, -3.0, 0, 1], [xc, 3.0, 0, 1]]],
                           dtype=torch.float64)
        tri = torch.tensor([[0, 1, 2]], dtype=torch.int32)
        rast, _ = render.rasterize(CTX, pos, tri, (H, W))
        white = (rast[..., 3:4] > 0).to(torch.float64)
        aa = render.antialias(white, rast, pos, tri)
        row = aa[0, 10, :, 0]
        # exact coverage of each 1-pixel box [j, j+1] by x < edge
        cover = torch.clamp(edge - torch.arange(W, dtype=torch.float64), 0, 1)
        assert torch.allclose(row, cover, atol=1e-9), (row, cover)


def test_silhouette_gradient_sign():
    """Translate a white triangle right. Weighting the image by the column position X, the
    weighted coverage sum grows at rate area (divergence theorem: the flux through the right
    edge minus the left). Autograd through antialias must give that sign and size, agree with
    finite differences over quarter-pixel steps, and the plain raster gives no gradient."""
    H = W = 24
    base = torch.tensor([[[-0.5, -0.6, 0, 1], [0.37, -0.5, 0, 1], [-0.05, 0.63, 0, 1]]],
                        dtype=torch.float64)
    tri = torch.tensor([[0, 1, 2]], dtype=torch.int32)
    X = torch.arange(W, dtype=torch.float64) + 0.5
    ramp = X.view(1, 1, W, 1).expand(1, H, W, 1)
    scr = (base[0, :, :2] + 1) * (W / 2)  # vertices in pixel units
    e1, e2 = scr[1] - scr[0], scr[2] - scr[0]
    area = 0.5 * abs(float(e1[0] * e2[1] - e1[1] * e2[0]))

    def weighted(dx_px: float, need_grad: bool = False):
        shift = torch.tensor(dx_px * 2 / W, dtype=torch.float64, requires_grad=need_grad)
        pos = base.clone()
        pos = torch.cat([pos[..., :1] + shift * pos[..., 3:], pos[..., 1:]], -1)
        rast, _ = render.rasterize(CTX, pos, tri, (H, W))
        white = (rast[..., 3:4] > 0).to(torch.float64)
        s = (render.antialias(white, rast, pos, tri) * ramp).sum()
        if need_grad:
            (g,) = torch.autograd.grad(s, shift)
            return float(s.detach()), float(g) * 2 / W  # per pixel of translation
        return float(s)

    _, g = weighted(0.0, True)
    steps = [0.25 * k for k in range(-4, 5)]
    vals = [weighted(d) for d in steps]
    fd = (vals[-1] - vals[0]) / (steps[-1] - steps[0])
    assert g > 0 and fd > 0
    assert abs(g - area) < 0.2 * area, (g, area)
    assert abs(fd - area) < 0.1 * area, (fd, area)
    assert all(b > a for a, b in zip(vals, vals[1:]))  # monotone, as the gradient predicts
    # the un-antialiased coverage is piecewise constant in pos: u, v carry no coverage gradient
    pos = base.clone().requires_grad_(True)
    rast, _ = render.rasterize(CTX, pos, tri, (H, W))
    assert not (rast[..., 3:4] > 0).to(torch.float64).requires_grad


def test_antialias_edge_gradient_exact():
    # vertical right edge spanning all H rows: d(image sum)/d(edge X) = H per pixel
    W = H = 20
    xc = torch.tensor(2 * 10.3 / W - 1, dtype=torch.float64, requires_grad=True)
    one = torch.ones((), dtype=torch.float64)
    pos = torch.stack([torch.stack([-3 * one, -3 * one, 0 * one, one]),
                       torch.stack([xc, -3 * one, 0 * one, one]),
                       torch.stack([xc, 3 * one, 0 * one, one])])[None]
    tri = torch.tensor([[0, 1, 2]], dtype=torch.int32)
    rast, _ = render.rasterize(CTX, pos, tri, (H, W))
    white = (rast[..., 3:4] > 0).to(torch.float64)
    (g,) = torch.autograd.grad(render.antialias(white, rast, pos, tri).sum(), xc)
    assert float(g) * 2 / W == pytest.approx(H, rel=1e-9)


def test_antialias_batch_and_pos_broadcast():
    pos, tri = aa_scene(torch.float32)
    pos2 = torch.cat([pos, pos * torch.tensor([1.1, 0.9, 1, 1])], 0)
    rast, _ = render.rasterize(CTX, pos2, tri, (16, 16))
    color = torch.rand(2, 16, 16, 3)
    aa = render.antialias(color, rast, pos2, tri)
    for b in range(2):
        aab = render.antialias(color[b:b + 1], rast[b:b + 1], pos2[b:b + 1], tri)
        assert torch.allclose(aab[0], aa[b])
    r1, _ = render.rasterize(CTX, pos.expand(2, -1, -1), tri, (16, 16))
    assert torch.allclose(render.antialias(color, r1, pos, tri),
                          render.antialias(color, r1, pos.expand(2, -1, -1).contiguous(), tri))


def test_edge_neighbours():
    tri = np.array([[0, 1, 2], [2, 1, 3], [1, 0, 4], [0, 1, 5]], np.int32)
    opp = rcpu.edge_neighbours(tri)
    assert opp[0, 0] == -2  # edge 0-1 is shared by three triangles
    assert opp[0, 1] == 1 and opp[1, 0] == 0  # edge 1-2
    assert opp[0, 2] == -1 and opp[1, 1] == -1


def test_context_backends():
    assert render.create_context().backend == "cpu"
    assert render.create_context("cpu", "auto").backend == "cpu"
    with pytest.raises(render.NvdiffrastUnavailable):
        render.create_context("cpu", "nvdiffrast")
    with pytest.raises(ValueError):
        render.create_context("cpu", "opengl")


def test_face_mesh_render_smoke():
    from engine.render import utils

    scene = utils.face_scene([0.0, 35.0], fill=0.95)
    pos = scene["pos"].clone().requires_grad_(True)
    rast, _ = render.rasterize(CTX, pos, scene["tris"], (64, 64))
    cov = (rast[..., 3] > 0).float().mean((1, 2))
    assert (cov > 0.2).all() and (cov < 0.7).all()
    # top of the head is at row 0: the first covered row is near the top, the chin lower
    rows = (rast[0, ..., 3] > 0).any(1).nonzero().flatten()
    assert int(rows[0]) < 6
    uv, _ = render.interpolate(scene["uvs"], rast, scene["face_uvs"])
    tex = torch.rand(1, 32, 32, 3, requires_grad=True)
    col = render.antialias(render.texture(tex, uv, boundary_mode="clamp"), rast, pos,
                           scene["tris"])
    col.square().mean().backward()
    assert torch.isfinite(pos.grad).all() and pos.grad.abs().sum() > 0
    assert tex.grad.abs().sum() > 0


def test_bench_render_runs():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "render.py"
    spec = importlib.util.spec_from_file_location("benchmarks_render", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    res = bench.bench_render(sizes=(32,), repeats=1, warmup=1, tex_size=16)
    for key in ("ms_32", "backend", "threads", "peak_rss_mb", "triangles", "vertices"):
        assert key in res
    assert res["backend"] == "cpu" and res["triangles"] > 18000
