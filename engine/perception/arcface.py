"""ArcFace IResNet (insightface ``buffalo_l`` / ``w600k_r50.onnx``) in torch, optional.

Never bundled: insightface's pretrained models are for non-commercial research only. The user
downloads buffalo_l themselves; we read the ONNX file's initialisers into our own IResNet.

The loader walks the ONNX graph's parameterised nodes (Conv, BatchNormalization, PRelu,
Gemm/MatMul) in graph order and assigns them to the torch module's layers in forward order,
checking op type and shapes at each step. It handles both export styles: a Conv followed by
its BatchNormalization node, or (the usual eval-mode export) the batch norm folded into the
Conv's weight and bias, in which case our batch norm after that conv is set to identity. Depth
is read from the graph (stride-2 3x3 convs start a stage), so iresnet18/34/50/100 all load.

Input: (B, 3, 112, 112) RGB in [0, 1]; insightface feeds (v - 127.5) / 127.5 for 8-bit RGB v,
i.e. 2x - 1 here.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from engine.errors import BadInputError, MissingModelError

ARCFACE_FILE = "w600k_r50.onnx"
ARCFACE_DEFAULT_DIR = Path("~/.insightface/models/buffalo_l")

# insightface's 5-point ArcFace template for 112x112 chips, in OpenCV coordinates (pixel
# centres at integers); our convention puts pixel centres at +0.5, hence the shift when used.
ARCFACE_TEMPLATE_CV = (
    (38.2946, 51.6963),
    (73.5318, 51.5014),
    (56.0252, 71.7366),
    (41.5493, 92.3655),
    (70.7299, 92.2041),
)


class ArcFaceFormatError(ValueError):
    """The ONNX graph is not an IResNet this loader understands."""


class IBlock(nn.Module):
    """insightface IBasicBlock: BN, conv3x3, BN, PReLU, conv3x3(stride), BN, + shortcut."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, eps=1e-5)
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1, bias=True)
        self.bn2 = nn.BatchNorm2d(cout, eps=1e-5)
        self.prelu = nn.PReLU(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride, 1, bias=True)
        self.bn3 = nn.BatchNorm2d(cout, eps=1e-5)
        self.down: nn.Sequential | None = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=True),
                                      nn.BatchNorm2d(cout, eps=1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(self.bn1(x))
        y = self.prelu(self.bn2(y))
        y = self.bn3(self.conv2(y))
        return y + (self.down(x) if self.down is not None else x)


class IResNet(nn.Module):
    """insightface's IResNet for 112x112 input; ``layers`` e.g. (3, 4, 14, 3) = iresnet50.

    forward(x (B,3,112,112) RGB in [0,1]) -> (embedding (B, D) unnormalised, features: the
    outputs of stages 1-4, (B,64,56,56), (B,128,28,28), (B,256,14,14), (B,512,7,7)).
    """

    input_size = 112

    def __init__(self, layers: tuple[int, ...] = (3, 4, 14, 3), num_features: int = 512,
                 widths: tuple[int, ...] = (64, 128, 256, 512)):
        super().__init__()
        self.layers_spec = tuple(layers)
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=True)
        self.bn1 = nn.BatchNorm2d(widths[0], eps=1e-5)
        self.prelu = nn.PReLU(widths[0])
        stages = []
        cin = widths[0]
        for n, w in zip(layers, widths):
            blocks = [IBlock(cin, w, 2)] + [IBlock(w, w, 1) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = w
        self.stages = nn.ModuleList(stages)
        self.bn2 = nn.BatchNorm2d(cin, eps=1e-5)
        side = self.input_size // 2 ** len(layers)
        self.fc = nn.Linear(cin * side * side, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-5)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if x.dim() != 4 or x.shape[1] != 3:
            raise BadInputError(f"expected (B,3,H,W) RGB, got {tuple(x.shape)}")
        return self.forward_normalised(x * 2.0 - 1.0)

    def forward_normalised(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Same as forward, for input already mapped to insightface's [-1, 1] (the ONNX input)."""
        h = self.prelu(self.bn1(self.conv1(x)))
        feats = []
        for stage in self.stages:
            h = stage(h)
            feats.append(h)
        h = self.bn2(h).flatten(1)
        return self.features(self.fc(h)), feats

    def param_slots(self) -> list[tuple[str, nn.Module]]:
        """Parameterised layers in forward order, tagged for the ONNX loader."""
        slots: list[tuple[str, nn.Module]] = [("conv", self.conv1), ("bn_after", self.bn1),
                                               ("prelu", self.prelu)]
        for stage in self.stages:
            for b in stage:
                slots += [("bn", b.bn1), ("conv", b.conv1), ("bn_after", b.bn2),
                          ("prelu", b.prelu), ("conv", b.conv2), ("bn_after", b.bn3)]
                if b.down is not None:
                    slots += [("conv", b.down[0]), ("bn_after", b.down[1])]
        slots += [("bn", self.bn2), ("fc", self.fc), ("bn", self.features)]
        return slots


# --------------------------------------------------------------------------------------------
# ONNX loading

_PARAM_OPS = ("Conv", "BatchNormalization", "PRelu", "Gemm", "MatMul")


def _graph_nodes(model) -> tuple[list, dict[str, np.ndarray]]:
    from onnx import numpy_helper

    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    # Constant nodes can also carry weights (some exporters).
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    inits[node.output[0]] = numpy_helper.to_array(a.t)
    nodes = [n for n in model.graph.node if n.op_type in _PARAM_OPS]
    return nodes, inits


def _attr(node, name: str, default):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _infer_layers(nodes, inits) -> tuple[tuple[int, ...], int]:
    """Block counts per stage from the convs: a stride-2 3x3 conv marks a stage's first block;
    every block has two 3x3 convs; the stem has one."""
    convs3 = [n for n in nodes if n.op_type == "Conv" and inits[n.input[1]].shape[2:] == (3, 3)]
    if len(convs3) < 3 or (len(convs3) - 1) % 2:
        raise ArcFaceFormatError(f"unexpected number of 3x3 convs ({len(convs3)})")
    counts: list[int] = []
    for k in range(1, len(convs3), 2):
        stride = tuple(_attr(convs3[k + 1], "strides", [1, 1]))
        if stride == (2, 2):
            counts.append(1)
        elif counts:
            counts[-1] += 1
        else:
            raise ArcFaceFormatError("first block is not down-sampling")
    fcs = [n for n in nodes if n.op_type in ("Gemm", "MatMul")]
    if len(fcs) != 1:
        raise ArcFaceFormatError(f"expected one fully connected layer, found {len(fcs)}")
    w = inits[fcs[0].input[1]]
    transposed = fcs[0].op_type == "Gemm" and _attr(fcs[0], "transB", 0)
    num_features = w.shape[0] if transposed else w.shape[1]
    return tuple(counts), int(num_features)


def _set_bn(bn: nn.Module, node, inits) -> None:
    scale, bias, mean, var = (torch.from_numpy(inits[i].copy()).float() for i in node.input[1:5])
    if scale.numel() != bn.num_features:
        raise ArcFaceFormatError(f"BatchNormalization {node.name}: {scale.numel()} channels, "
                                 f"expected {bn.num_features}")
    bn.weight.data.copy_(scale)
    bn.bias.data.copy_(bias)
    bn.running_mean.copy_(mean)
    bn.running_var.copy_(var)
    bn.eps = float(_attr(node, "epsilon", 1e-5))


def _set_identity(bn: nn.BatchNorm2d) -> None:
    bn.weight.data.fill_(1.0)
    bn.bias.data.zero_()
    bn.running_mean.zero_()
    bn.running_var.fill_(1.0)
    bn.eps = 0.0


def load_onnx_weights(net: IResNet, model) -> None:
    """Copy an ONNX IResNet's weights into ``net`` (see module docstring)."""
    nodes, inits = _graph_nodes(model)
    i = 0
    last_conv_out: str | None = None

    def take(op: str):
        nonlocal i
        if i >= len(nodes):
            raise ArcFaceFormatError(f"graph ended, expected {op}")
        node = nodes[i]
        if node.op_type not in op.split("|"):
            raise ArcFaceFormatError(f"node {i} ({node.name}) is {node.op_type}, expected {op}")
        i += 1
        return node

    for kind, mod in net.param_slots():
        if kind == "conv":
            node = take("Conv")
            w = inits[node.input[1]]
            if tuple(w.shape) != tuple(mod.weight.shape):
                raise ArcFaceFormatError(f"Conv {node.name}: weight {w.shape}, expected "
                                         f"{tuple(mod.weight.shape)}")
            if tuple(_attr(node, "strides", [1, 1])) != tuple(mod.stride):
                raise ArcFaceFormatError(f"Conv {node.name}: strides differ")
            mod.weight.data.copy_(torch.from_numpy(w.copy()))
            if len(node.input) > 2 and node.input[2]:
                mod.bias.data.copy_(torch.from_numpy(inits[node.input[2]].copy()))
            else:
                mod.bias.data.zero_()
            last_conv_out = node.output[0]
        elif kind == "bn_after":
            # Folded into the conv unless a BatchNormalization reads the conv's output.
            if (i < len(nodes) and nodes[i].op_type == "BatchNormalization"
                    and nodes[i].input[0] == last_conv_out):
                _set_bn(mod, take("BatchNormalization"), inits)
            else:
                _set_identity(mod)
        elif kind == "bn":
            _set_bn(mod, take("BatchNormalization"), inits)
        elif kind == "prelu":
            node = take("PRelu")
            slope = inits[node.input[1]].reshape(-1)
            if slope.size != mod.weight.numel():
                raise ArcFaceFormatError(f"PRelu {node.name}: {slope.size} slopes")
            mod.weight.data.copy_(torch.from_numpy(slope.copy()))
        elif kind == "fc":
            node = take("Gemm|MatMul")
            w = inits[node.input[1]]
            if node.op_type == "Gemm":
                w = w if _attr(node, "transB", 0) else w.T
                b = inits[node.input[2]] if len(node.input) > 2 and node.input[2] else None
            else:
                w = w.T
                b = None
                add = [n for n in model.graph.node if n.op_type == "Add" and node.output[0] in n.input]
                if add:
                    other = [x for x in add[0].input if x != node.output[0]][0]
                    b = inits.get(other)
            if tuple(w.shape) != tuple(mod.weight.shape):
                raise ArcFaceFormatError(f"fc {node.name}: weight {w.shape}, expected "
                                         f"{tuple(mod.weight.shape)}")
            mod.weight.data.copy_(torch.from_numpy(np.array(w, dtype=np.float32)))
            mod.bias.data.copy_(torch.from_numpy(b.copy()) if b is not None else torch.zeros_like(mod.bias))
    if i != len(nodes):
        raise ArcFaceFormatError(f"{len(nodes) - i} parameterised nodes left unassigned")


def arcface_search_paths(path: str | os.PathLike | None = None) -> list[Path]:
    if path is not None:
        p = Path(path).expanduser()
        return [p / ARCFACE_FILE if p.is_dir() else p]
    return [(ARCFACE_DEFAULT_DIR / ARCFACE_FILE).expanduser()]


def load_arcface(path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> IResNet:
    """Load insightface's ArcFace ONNX (default ``~/.insightface/models/buffalo_l/w600k_r50.onnx``)
    into a frozen IResNet in eval mode.

    Raises:
        MissingModelError: no file there (the message says where we looked and how to get it).
        ArcFaceFormatError: the graph is not an IResNet.
    """
    candidates = arcface_search_paths(path)
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise MissingModelError(
            "ArcFace weights not found (looked for " + ", ".join(str(p) for p in candidates)
            + "). They are optional and never bundled: insightface's buffalo_l models are licensed "
            "for non-commercial research only. If that fits your use, download buffalo_l.zip from "
            "the insightface model zoo (github.com/deepinsight/insightface, python-package README), "
            "unzip it to ~/.insightface/models/buffalo_l/ and pass that folder or the "
            "w600k_r50.onnx path; otherwise use the default recogniser 'dlib'.")
    try:
        import onnx
    except ImportError as exc:
        raise MissingModelError("Loading ArcFace needs the 'onnx' package (pip install onnx).") from exc
    model = onnx.load(str(found))
    nodes, inits = _graph_nodes(model)
    layers, num_features = _infer_layers(nodes, inits)
    net = IResNet(layers, num_features)
    load_onnx_weights(net, model)
    net.eval().requires_grad_(False)
    return net.to(device)
