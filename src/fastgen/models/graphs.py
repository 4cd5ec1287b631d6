"""The SyncTalk_2D generator and audio encoder (docs/semantics.md §7) as ONNX graphs built with onnx.helper.

The architectures are written once, as functions of an ``ops`` backend (:func:`generator_net`,
:func:`encoder_net`). :class:`OnnxOps` turns them into ONNX nodes with BatchNorm folded into the
convolutions and checks the weights against what the architecture asks for; ``weights.py`` runs the
same functions in numpy to make synthetic weights. Parameter names are the state-dict keys of the
original PyTorch modules, so a ``torch.save(model.state_dict())`` checkpoint plugs straight in.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import InputError, ModelError

OPSET = 17
IR_VERSION = 8  # opset 17 needs IR >= 8; keeping it minimal lets older onnxruntime load our files
BN_EPS = 1e-5
MODES = ("ave", "hubert", "wenet")
AUDIO_SHAPES = {"ave": (32, 16, 16), "hubert": (32, 32, 32), "wenet": (256, 16, 32)}
ENCODER_PREFIX = "audio_encoder."
IMAGE_SHAPE, OUTPUT_SHAPE, MEL_SHAPE, EMB_SIZE = (6, 320, 320), (3, 320, 320), (1, 80, 16), 512
# Top-level modules of the generator in registration order = the order of its state-dict keys.
GENERATOR_MODULES = ("audio_model", "fuse_conv", "inc", "down1", "down2", "down3", "down4",
                     "down5", "up1", "up2", "up3", "up4", "up5", "outc")
BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


# ---- architectures (backend-agnostic) -------------------------------------------------------

def inverted_residual(ops, x, prefix: str, cout: int, stride, residual: bool, expand: int = 2):
    """IR block: 1x1 expand → BN → ReLU → 3x3 depthwise → BN → ReLU → 1x1 project → BN (+ x)."""
    hidden = ops.channels(x) * expand
    y = ops.conv_bn(x, f"{prefix}.conv.0", f"{prefix}.conv.1", hidden, 1, relu=True)
    y = ops.conv_bn(y, f"{prefix}.conv.3", f"{prefix}.conv.4", hidden, 3, stride, 1,
                    groups=hidden, relu=True)
    return ops.conv_bn(y, f"{prefix}.conv.6", f"{prefix}.conv.7", cout, 1,
                       residual=x if residual else None)


def double_conv(ops, x, prefix: str, cout: int, stride):
    x = inverted_residual(ops, x, f"{prefix}.double_conv.0", cout, stride, False)
    return inverted_residual(ops, x, f"{prefix}.double_conv.1", cout, 1, True)


def up(ops, x1, x2, prefix: str, cout: int):
    """Bilinear x2 (align_corners), zero-pad to the skip's size (diff//2 top/left), cat [x1, x2]."""
    x1 = ops.upsample2x(x1)
    (h1, w1), (h2, w2) = ops.spatial(x1), ops.spatial(x2)
    dy, dx = h2 - h1, w2 - w1
    if dy or dx:
        x1 = ops.pad(x1, dy // 2, dy - dy // 2, dx // 2, dx - dx // 2)
    return double_conv(ops, ops.concat([x1, x2]), f"{prefix}.conv", cout, 1)


def audio_model(ops, a, mode: str):
    p = "audio_model"
    if mode == "wenet":
        a = inverted_residual(ops, a, f"{p}.conv1", 256, 1, True)
        a = inverted_residual(ops, a, f"{p}.conv2", 256, 1, True)
        stride3 = (1, 2)
    else:
        a = inverted_residual(ops, a, f"{p}.conv1", 64, 1, False)
        a = inverted_residual(ops, a, f"{p}.conv2", 128, 1, False)
        stride3 = 1 if mode == "ave" else 2
    a = ops.conv_bn(a, f"{p}.conv3", f"{p}.bn3", 256, 3, stride3, 1, bias=True, relu=True)
    a = inverted_residual(ops, a, f"{p}.conv4", 256, 1, True)
    a = ops.conv_bn(a, f"{p}.conv5", f"{p}.bn5", 512, 3, 2, 3, bias=True, relu=True)
    a = inverted_residual(ops, a, f"{p}.conv6", 512, 1, True)
    return inverted_residual(ops, a, f"{p}.conv7", 512, 1, True)


def generator_net(ops, image, audio, mode: str):
    x1 = inverted_residual(ops, image, "inc.inconv.0", 32, 1, False)
    x2 = double_conv(ops, x1, "down1.maxpool_conv.0", 32, 2)
    x3 = double_conv(ops, x2, "down2.maxpool_conv.0", 64, 2)
    x4 = double_conv(ops, x3, "down3.maxpool_conv.0", 128, 2)
    x5 = double_conv(ops, x4, "down4.maxpool_conv.0", 256, 2)
    x6 = double_conv(ops, x5, "down5.maxpool_conv.0", 512, 2)
    y = ops.concat([x6, audio_model(ops, audio, mode)])
    y = double_conv(ops, y, "fuse_conv.0", 512, 1)
    y = double_conv(ops, y, "fuse_conv.1", 256, 1)
    y = up(ops, y, x5, "up1", 128)
    y = up(ops, y, x4, "up2", 64)
    y = up(ops, y, x3, "up3", 32)
    y = up(ops, y, x2, "up4", 32)
    y = up(ops, y, x1, "up5", 16)
    return ops.sigmoid(ops.conv_bn(y, "outc.conv", None, 3, 1, bias=True))


# (out channels, kernel, stride, padding, residual) of each `Conv2d(bias) → BN (+x) → ReLU` block.
ENCODER_BLOCKS = (
    (32, 3, 1, 1, False), (32, 3, 1, 1, True), (32, 3, 1, 1, True),
    (64, 3, (3, 1), 1, False), (64, 3, 1, 1, True), (64, 3, 1, 1, True),
    (128, 3, 3, 1, False), (128, 3, 1, 1, True), (128, 3, 1, 1, True),
    (256, 3, (3, 2), 1, False), (256, 3, 1, 1, True),
    (512, 3, 1, 0, False), (512, 1, 1, 0, False),
)


def encoder_net(ops, mel):
    x = mel
    for i, (cout, k, stride, pad, residual) in enumerate(ENCODER_BLOCKS):
        x = ops.conv_bn(x, f"{i}.conv_block.0", f"{i}.conv_block.1", cout, k, stride, pad,
                        bias=True, relu=True, residual=x if residual else None)
    return ops.flatten(x)


def pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def conv_out_size(size: int, k: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - k) // stride + 1


# ---- ONNX backend --------------------------------------------------------------------------

class OnnxOps:
    """Emits ONNX nodes; tensors are names with tracked static (C, H, W) shapes.

    Every parameter is fetched through :meth:`param`, which records what is missing or
    mis-shaped instead of failing at the first problem, so one error can list them all.
    """

    def __init__(self, weights: Mapping[str, np.ndarray]):
        self.weights = weights
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.used: set[str] = set()
        self.missing: list[str] = []
        self.misshaped: list[str] = []
        self._count = 0

    # tensors and weights
    def input(self, name: str, shape: tuple[int, ...]) -> str:
        self.shapes[name] = shape
        return name

    def channels(self, x: str) -> int:
        return self.shapes[x][0]

    def spatial(self, x: str) -> tuple[int, int]:
        return self.shapes[x][1], self.shapes[x][2]

    def param(self, key: str, shape: tuple[int, ...], optional: bool = False) -> np.ndarray:
        self.used.add(key)
        value = self.weights.get(key)
        if value is None:
            if not optional:
                self.missing.append(key)
            return np.zeros(shape, np.float32)
        if tuple(value.shape) != tuple(shape):
            self.misshaped.append(f"{key} {tuple(value.shape)} != {tuple(shape)}")
            return np.zeros(shape, np.float32)
        return np.asarray(value, dtype=np.float32)

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}:{self._count}"

    def _const(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def _node(self, op: str, inputs: Sequence[str], shape, hint: str, **attrs) -> str:
        out = self._name(hint)
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=out, **attrs))
        self.shapes[out] = tuple(shape)
        return out

    # layers
    def conv_bn(self, x, conv_key, bn_key, cout, k, stride=1, pad=0, groups=1, bias=False,
                relu=False, residual=None):
        cin, (h, w) = self.channels(x), self.spatial(x)
        (sy, sx) = pair(stride)
        weight = self.param(f"{conv_key}.weight", (cout, cin // groups, k, k))
        b = self.param(f"{conv_key}.bias", (cout,)) if bias else np.zeros(cout, np.float32)
        if bn_key is not None:
            gamma, beta, mean, var = (self.param(f"{bn_key}.{s}", (cout,)) for s in BN_SUFFIXES[:4])
            self.param(f"{bn_key}.num_batches_tracked", (), optional=True)
            # Fold inference-mode BN: W' = W·s, b' = (b − mean)·s + beta, s = gamma/sqrt(var+eps).
            scale = gamma / np.sqrt(var.astype(np.float64) + BN_EPS)
            weight = (weight * scale[:, None, None, None]).astype(np.float32)
            b = ((b - mean) * scale + beta).astype(np.float32)
        shape = (cout, conv_out_size(h, k, sy, pad), conv_out_size(w, k, sx, pad))
        y = self._node(
            "Conv", [x, self._const(f"{conv_key}.weight", weight), self._const(f"{conv_key}.bias", b)],
            shape, conv_key, kernel_shape=[k, k], strides=[sy, sx], pads=[pad] * 4, group=groups,
        )
        if residual is not None:
            y = self._node("Add", [y, residual], shape, f"{conv_key}.add")
        if relu:
            y = self._node("Relu", [y], shape, f"{conv_key}.relu")
        return y

    def upsample2x(self, x):
        c, (h, w) = self.channels(x), self.spatial(x)
        scales = self._const(self._name("scales"), np.array([1, 1, 2, 2], np.float32))
        return self._node("Resize", [x, "", scales], (c, 2 * h, 2 * w), "up", mode="linear",
                          coordinate_transformation_mode="align_corners")

    def pad(self, x, top, bottom, left, right):
        c, (h, w) = self.channels(x), self.spatial(x)
        pads = self._const(self._name("pads"), np.array([0, 0, top, left, 0, 0, bottom, right], np.int64))
        return self._node("Pad", [x, pads], (c, h + top + bottom, w + left + right), "pad", mode="constant")

    def concat(self, xs):
        c = sum(self.channels(x) for x in xs)
        return self._node("Concat", xs, (c, *self.spatial(xs[0])), "cat", axis=1)

    def sigmoid(self, x):
        return self._node("Sigmoid", [x], self.shapes[x], "sigmoid")

    def flatten(self, x):
        return self._node("Flatten", [x], (int(np.prod(self.shapes[x])),), "flatten", axis=1)

    def finish(self, source: str, what: str, outputs: Mapping[str, str]) -> None:
        """Rename the final tensors to the public output names, or raise on bad weights."""
        unexpected = sorted(set(self.weights) - self.used)
        if self.missing or unexpected or self.misshaped:
            parts = [f"{len(v)} {label} ({_some(v)})" for label, v in
                     (("missing", self.missing), ("unexpected", unexpected), ("mis-shaped", self.misshaped)) if v]
            raise ModelError(f"{source}: weights do not fit the {what}: " + "; ".join(parts)
                             + _hint(self.weights, what))
        for public, internal in outputs.items():
            for node in self.nodes:
                node.output[:] = [public if o == internal else o for o in node.output]


def _some(items: Sequence[str], n: int = 4) -> str:
    return ", ".join(items[:n]) + (f", … {len(items) - n} more" if len(items) > n else "")


def _hint(weights: Mapping[str, np.ndarray], what: str) -> str:
    """A guess at the usual mistakes: wrong --mode, or the other model's checkpoint."""
    if "generator" in what and "0.conv_block.0.weight" in weights:
        return " (this looks like an audio encoder checkpoint)"
    if "encoder" in what and any(k.startswith("audio_model.") for k in weights):
        return " (this looks like a generator checkpoint)"
    first = weights.get("audio_model.conv1.conv.0.weight")
    if first is not None and "generator" in what:
        looks = "wenet" if tuple(first.shape) == (512, 256, 1, 1) else "ave or hubert"
        if ("wenet" in what) != (looks == "wenet"):
            return f" (this looks like a {looks} checkpoint: check --mode)"
    return ""


def strip_module_prefix(weights: Mapping[str, np.ndarray], *prefixes: str) -> dict[str, np.ndarray]:
    """Drop the ``module.`` prefix DataParallel adds to every key, then each of ``prefixes``
    (each only if every key has it)."""
    out = dict(weights)
    for prefix in ("module.", *prefixes):
        if out and all(k.startswith(prefix) for k in out):
            out = {k[len(prefix):]: v for k, v in out.items()}
    return out


def _model(ops: OnnxOps, inputs, outputs, name: str, metadata: Mapping[str, str]) -> onnx.ModelProto:
    def info(n, shape):
        return helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", *shape])

    graph = helper.make_graph(ops.nodes, name, [info(n, s) for n, s in inputs],
                              [info(n, s) for n, s in outputs], initializer=ops.initializers)
    model = helper.make_model(graph, producer_name="fastgen", opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    helper.set_model_props(model, dict(metadata))
    return model


def _metadata(weights, kind: str, mode: str | None) -> dict[str, str]:
    from .._version import __version__

    meta = {"fastgen.kind": kind, "fastgen.version": __version__,
            "fastgen.synthetic": "true" if getattr(weights, "synthetic", False) else "false"}
    if mode:
        meta["fastgen.mode"] = mode
    label = getattr(weights, "label", None)   # known-answer weights name themselves
    if label:
        meta["fastgen.weights"] = label
    return meta


def build_generator(weights: Mapping[str, np.ndarray], mode: str = "ave",
                    source: str = "weights") -> onnx.ModelProto:
    """The generator graph: ``input`` (B,6,320,320), ``audio`` (B,*AUDIO_SHAPES[mode]) → ``output``."""
    if mode not in MODES:
        raise InputError(f"{source}: unknown generator mode {mode!r} (expected one of {', '.join(MODES)})")
    ops = OnnxOps(strip_module_prefix(weights))
    out = generator_net(ops, ops.input("input", IMAGE_SHAPE), ops.input("audio", AUDIO_SHAPES[mode]), mode)
    ops.finish(source, f"{mode} generator", {"output": out})
    return _model(ops, [("input", IMAGE_SHAPE), ("audio", AUDIO_SHAPES[mode])],
                  [("output", OUTPUT_SHAPE)], f"synctalk2d_generator_{mode}",
                  _metadata(weights, "generator", mode))


def build_audio_encoder(weights: Mapping[str, np.ndarray], source: str = "weights") -> onnx.ModelProto:
    """The audio encoder graph: ``mel`` (B,1,80,16) → ``emb`` (B,512)."""
    # AudioEncoder().state_dict() keys carry "audio_encoder."; audio_visual_encoder.pth's do not
    ops = OnnxOps(strip_module_prefix(weights, ENCODER_PREFIX))
    out = encoder_net(ops, ops.input("mel", MEL_SHAPE))
    ops.finish(source, "audio encoder", {"emb": out})
    return _model(ops, [("mel", MEL_SHAPE)], [("emb", (EMB_SIZE,))], "synctalk2d_audio_encoder",
                  _metadata(weights, "audio_encoder", None))


class _ShapeOps(OnnxOps):
    """Records the expected parameter shapes (in key order) without building anything."""

    def __init__(self):
        super().__init__({})
        self.expected: dict[str, tuple[int, ...]] = {}

    def param(self, key, shape, optional=False):
        self.expected[key] = tuple(shape)
        return np.zeros(shape, np.float32)

    def _const(self, name, array):
        return name


def expected_keys(kind: str, mode: str = "ave") -> dict[str, tuple[int, ...]]:
    """State-dict key → shape, in the original module registration order (incl. num_batches_tracked)."""
    ops = _ShapeOps()
    if kind == "generator":
        generator_net(ops, ops.input("input", IMAGE_SHAPE), ops.input("audio", AUDIO_SHAPES[mode]), mode)
        rank = {m: i for i, m in enumerate(GENERATOR_MODULES)}
        return dict(sorted(ops.expected.items(), key=lambda kv: rank[kv[0].split(".")[0]]))
    if kind == "audio_encoder":
        encoder_net(ops, ops.input("mel", MEL_SHAPE))
        return ops.expected
    raise InputError(f"unknown model kind {kind!r}")
