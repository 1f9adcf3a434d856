"""Face recognisers: dlib port vs dlib, losses, gradients, ArcFace ONNX loading, errors.

Parts that need the shared photos skip when $GANFIT_SHARED (default <repo>/../shared) is
absent, parts comparing with dlib when dlib (dlib-bin, a test dependency) is missing; both fail
instead when CI is set (tests/shared_data.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.errors import MissingModelError
from engine.perception.dlib_resnet import DlibFormatError, dlib_model_path, parse_dlib_net
from engine.perception.recognizer import content_loss, identity_loss, load_recognizer
from shared_data import require_shared, unavailable

ROOT = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("GANFIT_SHARED", ROOT.parent / "shared"))
PHOTOS = SHARED / "photos"
LONDON = SHARED / "faces" / "london-canada"


def _dlib_weights_present() -> bool:
    try:
        return dlib_model_path().is_file()
    except MissingModelError:
        return False


@pytest.fixture(scope="module")
def dlib_weights() -> None:
    if not _dlib_weights_present():
        unavailable("face-recognition-models not installed")


needs_weights = pytest.mark.usefixtures("dlib_weights")  # skipped if missing; fails under CI


def _rgb(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def _to_tensor(imgs: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255.0


@pytest.fixture(scope="module")
def rec():
    if not _dlib_weights_present():
        unavailable("face-recognition-models not installed")
    return load_recognizer("dlib")


@pytest.fixture(scope="module")
def dlib_ref():
    try:
        import dlib
    except ImportError:
        unavailable("dlib (dlib-bin, a test dependency) is not installed")
    models = dlib_model_path().parent
    return (dlib, dlib.get_frontal_face_detector(),
            dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat")),
            dlib.face_recognition_model_v1(str(dlib_model_path())))


def _dlib_chip(ref, img: np.ndarray) -> np.ndarray:
    dlib, detector, predictor, _ = ref
    for upsample in (0, 1):
        dets = detector(img, upsample)
        if dets:
            shape = predictor(img, max(dets, key=lambda r: r.area()))
            return dlib.get_face_chip(img, shape, size=150, padding=0.25)
    raise AssertionError("dlib found no face")


@pytest.fixture(scope="module")
def photo_chips(dlib_ref):
    require_shared("photos")
    files = sorted(p for p in PHOTOS.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    assert len(files) >= 8
    return [p.name for p in files], [_dlib_chip(dlib_ref, _rgb(p)) for p in files]


# --------------------------------------------------------------------------------------------
# dlib port


def test_port_matches_dlib_on_every_photo(rec, dlib_ref, photo_chips) -> None:
    names, chips = photo_chips
    with torch.no_grad():
        emb, feats = rec.backbone(_to_tensor(chips))
    assert emb.shape == (len(chips), 128)
    assert [f.shape[1:] for f in feats] == [(32, 35, 35), (64, 17, 17), (128, 8, 8), (256, 4, 4)]
    model = dlib_ref[3]
    for name, chip, e in zip(names, chips, emb.double().numpy()):
        d = np.array(model.compute_face_descriptor(chip))
        cos = float(d @ e / np.linalg.norm(d) / np.linalg.norm(e))
        assert cos >= 0.999, f"{name}: cosine {cos}"
        assert np.abs(d - e).max() < 1e-3, name  # same scale too, not just direction


def test_identity_loss_zero_for_same_larger_for_different(rec, photo_chips) -> None:
    _, chips = photo_chips
    x = _to_tensor(chips)
    with torch.no_grad():
        emb, feats = rec.embed(x)
        emb2, feats2 = rec.embed(x.clone())
    assert torch.allclose(emb.norm(dim=1), torch.ones(len(chips)), atol=1e-5)
    assert identity_loss(emb, emb2).abs().max() < 1e-5
    assert content_loss(feats, feats2).abs().max() < 1e-8
    n = len(chips)
    i, j = torch.triu_indices(n, n, 1)
    diff = identity_loss(emb[i], emb[j])  # the 8 photos are 8 different people
    assert diff.min() > 0.03, diff
    cdiff = content_loss([f[i] for f in feats], [f[j] for f in feats])
    assert cdiff.min() > 0.05


def test_same_person_closer_than_different_people(rec, dlib_ref) -> None:
    require_shared("faces", "london-canada")
    ids = ["001", "005", "010"]
    chips = []
    for pid in ids:
        for expr in ("neutral", "smiling"):
            chips.append(_dlib_chip(dlib_ref, _rgb(LONDON / f"london_{pid}_{expr}.jpg")))
    with torch.no_grad():
        emb, _ = rec.embed(_to_tensor(chips))
    same = identity_loss(emb[0::2], emb[1::2])
    idx_a, idx_b = zip(*[(a, b) for a in range(6) for b in range(6) if a // 2 < b // 2])
    different = identity_loss(emb[list(idx_a)], emb[list(idx_b)])
    assert same.max() < different.min(), (same, different)


def test_gradients_reach_the_input_through_alignment(rec) -> None:
    torch.manual_seed(0)
    photo = torch.rand(1, 3, 300, 260, requires_grad=True)
    render = torch.rand(1, 3, 300, 260, requires_grad=True)
    # A plausible face layout in the 300x260 image: template scaled by 1.6 and shifted.
    pts = rec.template[None] * 1.6 + torch.tensor([10.0, 20.0])
    e1, f1 = rec.embed(rec.align(photo, pts))
    e2, f2 = rec.embed(rec.align(render, pts))
    loss = identity_loss(e1, e2).sum() + content_loss(f1, f2).sum()
    loss.backward()
    for img in (photo, render):
        assert img.grad is not None and torch.isfinite(img.grad).all()
        assert img.grad.abs().sum() > 0
    assert all(p.grad is None for p in rec.parameters())
    assert not any(p.requires_grad for p in rec.parameters())
    assert not rec.training and not rec.train().training


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_port_on_cuda_matches_cpu(rec) -> None:
    x = torch.rand(2, 3, 150, 150)
    with torch.no_grad():
        ref, _ = rec.embed(x)
    gpu = load_recognizer("dlib", device="cuda")
    xg = x.cuda().requires_grad_(True)
    emb, feats = gpu.embed(xg)
    assert (emb.detach().cpu() - ref).abs().max() < 1e-3
    (identity_loss(emb, ref.cuda()).sum() + sum(f.mean() for f in feats)).backward()
    assert torch.isfinite(xg.grad).all() and xg.grad.abs().sum() > 0


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(MissingModelError, match="nope.dat"):
        load_recognizer("dlib", tmp_path / "nope.dat")
    with pytest.raises(ValueError):
        load_recognizer("vgg")


@needs_weights
def test_parser_rejects_truncated_or_foreign_files() -> None:
    data = dlib_model_path().read_bytes()
    net = parse_dlib_net(data)
    assert net.input_size == (150, 150)
    assert [round(m, 3) for m in net.input_mean] == [122.782, 117.001, 104.298]
    with pytest.raises(DlibFormatError):
        parse_dlib_net(data[: len(data) // 2])
    with pytest.raises(DlibFormatError):
        parse_dlib_net(b"\x01\x01\x05hello" + data[20:200])


# --------------------------------------------------------------------------------------------
# ArcFace


def test_missing_arcface_names_where_and_how(tmp_path: Path) -> None:
    with pytest.raises(MissingModelError) as info:
        load_recognizer("arcface", tmp_path)
    msg = str(info.value)
    assert str(tmp_path / "w600k_r50.onnx") in msg
    assert "buffalo_l" in msg and "research" in msg
    assert info.value.code == "missing_model" and info.value.exit_code == 5


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the legacy exporter, on purpose
def test_arcface_onnx_conversion_matches_onnxruntime(tmp_path: Path) -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime as ort
    except ImportError as exc:
        unavailable(f"{exc.name} (a test dependency) is not installed")
    from engine.perception.arcface import IResNet

    torch.manual_seed(0)
    # Same block structure as iresnet50 (3, 4, 14, 3), fewer blocks for speed; the loader reads
    # the depth from the graph. Random batch-norm statistics so that folding them matters.
    net = IResNet((1, 2, 1, 1)).eval()
    for m in net.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
        elif isinstance(m, torch.nn.PReLU):
            m.weight.data.uniform_(0.0, 0.5)

    class Export(torch.nn.Module):  # the ONNX input is insightface's (v - 127.5) / 127.5
        def __init__(self, n: IResNet):
            super().__init__()
            self.n = n

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.n.forward_normalised(x)[0]

    path = tmp_path / "w600k_r50.onnx"
    x = torch.rand(2, 3, 112, 112)
    # insightface exported buffalo_l with the TorchScript exporter, opset 11, eval mode (which
    # folds each conv's following batch norm into the conv), as here.
    torch.onnx.export(Export(net), (x * 2 - 1,), str(path), dynamo=False, opset_version=11,
                      input_names=["input.1"], do_constant_folding=True)
    rec = load_recognizer("arcface", tmp_path)
    assert rec.backbone.layers_spec == (1, 2, 1, 1)
    assert rec.input_size == 112 and rec.template.shape == (5, 2)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {sess.get_inputs()[0].name: (x * 2 - 1).numpy()})[0]
    with torch.no_grad():
        out, feats = rec.backbone(x)
    assert np.abs(out.numpy() - ref).max() <= 1e-4
    assert [tuple(f.shape[1:]) for f in feats] == [(64, 56, 56), (128, 28, 28), (256, 14, 14), (512, 7, 7)]
    emb, _ = rec.embed(x)
    assert torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)
