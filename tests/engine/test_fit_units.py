"""Loss terms, texture models and UV-space completion."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import render
from engine.fit import losses as L
from engine.fit import uvspace
from engine.fit.optim import Adam
from engine.fit.texture import GeneratorTexture, TexelTexture, load_generator, save_generator
from engine.errors import MissingModelError
from engine.models.facemodel import load_face_model


def test_losses_zero_on_identical_inputs():
    x = torch.rand(2, 5, 2)
    assert L.landmark_loss(x, x, 10.0) == 0
    img = torch.rand(1, 8, 8, 3)
    assert L.masked_l1(img, img, torch.ones(1, 8, 8)) == 0
    e = torch.nn.functional.normalize(torch.randn(2, 16), dim=-1)
    assert L.identity_loss(e, e).abs().max() < 1e-6
    f = [torch.rand(1, 4, 5, 5), torch.rand(1, 8, 3, 3)]
    assert L.content_loss(f, f).max() == 0
    assert (L.content_loss(f, [a + 0.1 for a in f]) > 0).all()


def test_point_to_polyline_slides_along_the_curve():
    line = torch.tensor([[[0.0, 0.0], [10.0, 0.0], [10.0, 10.0]]], requires_grad=True)
    pts = torch.tensor([[[5.0, 3.0], [12.0, 7.0], [-2.0, 0.0]]])
    d = L.point_to_polyline(pts, line)
    assert torch.allclose(d, torch.tensor([[3.0, 2.0, 2.0]]), atol=1e-4)
    d.sum().backward()
    assert line.grad.abs().sum() > 0
    _, closest = L.closest_on_polyline(pts, line.detach())
    assert torch.allclose(closest, torch.tensor([[[5.0, 0.0], [10.0, 7.0], [0.0, 0.0]]]), atol=1e-5)


def test_adam_minimises_a_quadratic():
    x = torch.tensor([3.0, -2.0], requires_grad=True)
    opt = Adam([{"params": [x], "lr": 0.1}])
    for _ in range(300):
        opt.zero_grad()
        ((x - torch.tensor([1.0, 0.5])) ** 2).sum().backward()
        opt.step()
    assert torch.allclose(x, torch.tensor([1.0, 0.5]), atol=1e-2)


def test_adam_warmup_ramps_the_first_steps():
    """With ``warmup`` N, step t moves t / N as far as without (Adam's first step moves every
    coordinate by its rate, whatever its gradient), and from step N on the same."""
    moves = {}
    for warm in (0, 4):
        x = torch.tensor([3.0], requires_grad=True)
        opt = Adam([{"params": [x], "lr": 0.1}], warmup=warm)
        steps = []
        for _ in range(6):
            before = float(x)
            opt.zero_grad()
            (x * 2.0).sum().backward()          # a constant gradient: every plain step is lr
            opt.step()
            steps.append(before - float(x))
        moves[warm] = steps
    assert moves[0] == pytest.approx([0.1] * 6, rel=1e-4)
    assert moves[4] == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1], rel=1e-4)


def test_adam_decay_falls_to_zero_on_marked_groups_only():
    """With ``decay`` N, a group marked ``"decay"`` moves 1, (N-2)/(N-1), ..., 0 x its plain step
    over N steps and not at all after; an unmarked group keeps its full rate."""
    x = torch.tensor([3.0], requires_grad=True)
    y = torch.tensor([3.0], requires_grad=True)
    opt = Adam([{"params": [x], "lr": 0.1, "decay": True}, {"params": [y], "lr": 0.1}], decay=5)
    sx, sy = [], []
    for _ in range(6):
        bx, by = float(x), float(y)
        opt.zero_grad()
        (2.0 * x + 2.0 * y).sum().backward()   # a constant gradient: every plain step is lr
        opt.step()
        sx.append(bx - float(x))
        sy.append(by - float(y))
    assert sx == pytest.approx([0.1, 0.075, 0.05, 0.025, 0.0, 0.0], abs=1e-6)
    assert sy == pytest.approx([0.1] * 6, rel=1e-4)


def test_texel_texture_pyramid_is_trainable():
    base = torch.full((1, 64, 64, 3), 0.5)
    tex = TexelTexture(base, levels=3)
    assert torch.allclose(tex(), base)
    target = torch.rand(1, 64, 64, 3)
    opt = Adam(tex.param_groups(0.05))
    first = None
    for _ in range(40):
        opt.zero_grad()
        loss = (tex() - target).abs().mean()
        first = first if first is not None else float(loss)
        loss.backward()
        opt.step()
    assert float(loss) < 0.5 * first


class TinyGenerator(torch.nn.Module):
    def __init__(self, dim: int = 8, res: int = 32):
        super().__init__()
        self.res = res
        self.fc = torch.nn.Linear(dim, 3 * 8 * 8)
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.fc(z).view(-1, 3, 8, 8)
        x = torch.nn.functional.interpolate(x, size=(self.res, self.res), mode="bilinear", align_corners=False)
        return torch.tanh(self.conv(x))


def test_generator_checkpoint_roundtrip_and_fit(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "gen.pt"
    save_generator(TinyGenerator(), path, latent_dim=8)
    module, meta = load_generator(path)
    assert meta["latent_dim"] == 8
    tex = GeneratorTexture(module, meta, resolution=32)
    out = tex()
    assert out.shape == (1, 32, 32, 3) and out.min() >= 0 and out.max() <= 1
    # The latent is p_t: fitting it lowers the loss toward a texture the generator can make.
    with torch.no_grad():
        target = GeneratorTexture(module, meta, resolution=32)
        target.latent.normal_()
        target_img = target()
    opt = Adam([{"params": [tex.latent], "lr": 0.05}])
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = (tex() - target_img).abs().mean() + 1e-3 * tex.prior()
        losses.append(float(loss))
        loss.backward()
        opt.step()
    assert losses[-1] < 0.6 * losses[0]


def test_generator_bad_files(tmp_path):
    with pytest.raises(MissingModelError, match="not found"):
        load_generator(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(MissingModelError):
        load_generator(bad)
    plain = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.script(TinyGenerator()), str(plain))
    with pytest.raises(MissingModelError, match="ganfit"):
        load_generator(plain)


def test_pull_push_fills_holes_and_keeps_known_texels():
    img = torch.zeros(1, 32, 32, 3)
    w = torch.zeros(1, 32, 32)
    img[0, 4:8, 4:8] = torch.tensor([1.0, 0.0, 0.0])
    w[0, 4:8, 4:8] = 1
    img[0, 20:28, 20:28] = torch.tensor([0.0, 0.0, 1.0])
    w[0, 20:28, 20:28] = 1
    out = uvspace.pull_push(img, w)
    assert torch.allclose(out[0, 5, 5], torch.tensor([1.0, 0.0, 0.0]), atol=1e-5)
    assert torch.allclose(out[0, 24, 24], torch.tensor([0.0, 0.0, 1.0]), atol=1e-5)
    assert out[0, 9, 9, 0] > out[0, 9, 9, 2]  # near red, far from blue
    assert out[0, 29, 29, 2] > out[0, 29, 29, 0]
    assert (out.sum(-1) > 0.5).all()  # nothing left empty


def test_uv_raster_covers_face_box_and_mirror_is_an_involution():
    model = load_face_model()
    ctx = render.create_context("cpu")
    uvr = uvspace.uv_raster(ctx, model, 128)
    face_id = model.region_names.index("face")
    r0, r1, c0, c1 = uvspace.face_box_pixels(model, 128)
    face = uvr.region == face_id
    assert face[r0:r1, c0:c1].float().mean() > 0.4
    assert not face[:r0].any() and not face[:, c1:].any()
    img = torch.rand(1, 128, 128, 3)
    assert torch.equal(uvspace.mirror_face(uvspace.mirror_face(img, model), model), img)
    # The face islands are mirror-symmetric in the atlas.
    fm = face[r0:r1, c0:c1]
    assert (fm == fm.flip(1)).float().mean() > 0.97


def test_jittered_alignments_shift_and_scale_the_chip():
    """The identity terms' alignments: the detected one first, then copies whose chip points are
    scaled about the chip's centre and shifted by the jitter x its side (``detect.JITTERS``)."""
    from engine.fit.stages.detect import JITTERS
    from engine.fit.stages.fine import jittered_alignments
    from engine.perception.align import apply_affine

    M = torch.tensor([[[0.8, 0.1, 5.0], [-0.1, 0.8, 7.0]]])
    pts = torch.tensor([[10.0, 20.0], [60.0, 40.0]])
    Ms = jittered_alignments(M, 150, 4, 0.05)
    assert Ms.shape == (4, 2, 3)
    assert torch.allclose(Ms[0], M[0])
    base = apply_affine(M, pts[None])[0]
    for k in range(1, 4):
        jx, jy, js = JITTERS[k]
        want = (base - 75) * (1 + 0.05 * js) + 75 + torch.tensor([jx, jy]) * 0.05 * 150
        assert torch.allclose(apply_affine(Ms[k:k + 1], pts[None])[0], want, atol=1e-4)
    with pytest.raises(ValueError, match="identity_average"):
        jittered_alignments(M, 150, 0, 0.05)


def test_with_mirrors_appends_each_chip_mirrored():
    """``FineConfig.identity_flip``: the recogniser sees every chip and its mirror image, so that
    the mean of a term over them is the same for a chip pair and for the mirrored pair."""
    from engine.fit.stages.fine import with_mirrors

    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(3, 3, 8, 8, generator=g), torch.rand(3, 3, 8, 8, generator=g)
    m = with_mirrors(a)
    assert m.shape == (6, 3, 8, 8)
    assert torch.equal(m[:3], a) and torch.equal(m[3:], a.flip(-1))
    assert not torch.equal(m[3:], a)
    # A term that is not mirror-symmetric itself (weights rising left to right) ...
    w = torch.linspace(0, 1, 8)

    def term(x, y):
        return (((x - y) ** 2) * w).mean()

    assert not torch.isclose(term(a, b), term(a.flip(-1), b.flip(-1)))
    # ... is once it is averaged over the chips and their mirrors.
    assert torch.isclose(term(with_mirrors(a), with_mirrors(b)),
                         term(with_mirrors(a.flip(-1)), with_mirrors(b.flip(-1))))
