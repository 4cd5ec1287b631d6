"""The PyTorch backend (optional extra ``fastgen[torch]``): the generator as a ``torch.nn.Module``.

This is what GPU users of SyncTalk_2D already have installed.  The module is built from the same
weights as the ONNX file — its BatchNorm-folded initializers, which fastgen's builder names after
the convolutions' state-dict keys — by running the one architecture definition
(:func:`fastgen.models.graphs.generator_net`) with torch operations, so there is no second copy of
the network to keep in step.  On CUDA it runs channels_last in fp16 or bf16 (fp32 with TF32 off,
so fp32 means fp32), replays a CUDA graph per batch size, and moves data through pinned host
buffers on a stream of its own: with two sessions (the engine's default on a GPU) the upload of
one batch overlaps the compute of the other.  Sessions of one model share one copy of the weights
on the device.  On a CPU it runs too (fp32 or bf16), which is how the tests check it against ONNX
Runtime; nothing imports torch unless this backend is asked for.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Mapping, Optional

import numpy as np

from ..errors import InputError, ModelError
from ..models import ModelInfo

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
_SHARED: dict = {}              # (path, mtime, device, precision) -> module: one weight copy per device
_SHARED_LOCK = threading.Lock()


def load_torch():
    """The ``torch`` module, or a one-line error saying how to get it."""
    try:
        import torch
    except ImportError as exc:
        raise InputError(f"the torch backend needs PyTorch ({exc}): pip install 'fastgen[torch]'") from None
    return torch


class FoldedOps:
    """The architecture's operations in torch, on BN-folded weights (``{conv_key}.weight/.bias``).

    ``lookup(name)`` returns a parameter tensor; the architecture functions call only these
    methods, the same ones :class:`fastgen.models.graphs.OnnxOps` implements.
    """

    def __init__(self, torch, lookup):
        self.torch, self.F, self.lookup = torch, torch.nn.functional, lookup

    def channels(self, x) -> int:
        return int(x.shape[1])

    def spatial(self, x) -> tuple[int, int]:
        return int(x.shape[2]), int(x.shape[3])

    def conv_bn(self, x, conv_key, bn_key, cout, k, stride=1, pad=0, groups=1, bias=False,
                relu=False, residual=None):
        y = self.F.conv2d(x, self.lookup(f"{conv_key}.weight"), self.lookup(f"{conv_key}.bias"),
                          stride=stride, padding=pad, groups=groups)
        if residual is not None:
            y = y + residual
        return self.F.relu(y) if relu else y

    def upsample2x(self, x):
        return self.F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)

    def pad(self, x, top, bottom, left, right):
        return self.F.pad(x, [left, right, top, bottom])

    def concat(self, xs):
        return self.torch.cat(xs, dim=1)

    def sigmoid(self, x):
        return self.torch.sigmoid(x)

    def flatten(self, x):
        return self.torch.flatten(x, 1)


def folded_weights(info: ModelInfo) -> dict[str, np.ndarray]:
    """The model file's float initializers by name (the folded convolution weights)."""
    import onnx
    from onnx import numpy_helper

    try:
        graph = onnx.load(str(info.path)).graph
    except Exception as exc:
        raise ModelError(f"{info.path}: cannot read the ONNX file ({exc})") from None
    return {t.name: numpy_helper.to_array(t) for t in graph.initializer}


def build_module(info: ModelInfo, torch=None):
    """A ``torch.nn.Module`` (fp32, CPU, eval) computing exactly what ``info``'s ONNX file computes."""
    from ..models.graphs import encoder_net, generator_net

    torch = torch or load_torch()
    arrays = folded_weights(info)

    class FastgenNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.names: dict[str, str] = {}
            self.params = torch.nn.ParameterDict()
            for i, (name, array) in enumerate(arrays.items()):
                if array.dtype == np.float32 and name.endswith((".weight", ".bias")):
                    key = f"p{i}"          # ParameterDict keys may not contain dots
                    self.names[name] = key
                    self.params[key] = torch.nn.Parameter(torch.from_numpy(array.copy()), requires_grad=False)

        def lookup(self, name: str):
            key = self.names.get(name)
            if key is None:
                raise ModelError(f"{info.path}: no initializer {name!r}; the torch backend runs the "
                                 "generators fastgen builds (fastgen export / prepare)")
            return self.params[key]

        def forward(self, *xs):
            ops = FoldedOps(torch, self.lookup)
            if info.kind == "generator":
                return generator_net(ops, xs[0], xs[1], info.mode)
            return encoder_net(ops, xs[0])

    net = FastgenNet().eval()
    # one dry pass on the CPU names any missing initializer now, not on the GPU mid-render
    with torch.inference_mode():
        shapes = [(1, *info.inputs[name]) for name in info.inputs]
        net(*(torch.zeros(s) for s in shapes))
    return net


def _module_for(info: ModelInfo, device: str, precision: str, torch):
    """The shared module for (model file, device, precision), built once."""
    key = (str(info.path), info.path.stat().st_mtime_ns, device, precision)
    with _SHARED_LOCK:
        net = _SHARED.get(key)
        if net is None:
            net = build_module(info, torch).to(device=device, dtype=getattr(torch, DTYPES[precision]))
            if device.startswith("cuda"):
                net = net.to(memory_format=torch.channels_last)
            _SHARED[key] = net
        return net


@dataclass
class _Bound:
    """A batch size's static device inputs/outputs, pinned host buffers and its CUDA graph."""

    inputs: list
    host_in: list
    host_out: object
    output: object = None
    graph: object = None


@dataclass
class TorchSession:
    """One PyTorch session: a shared module, its own stream, pinned buffers and CUDA graphs."""

    info: ModelInfo
    module: object
    device: str
    precision: str
    threads: int
    cuda_graphs: bool = True
    backend: str = "torch"
    lock: threading.Lock = field(default_factory=threading.Lock)
    bound: dict = field(default_factory=dict)

    def __post_init__(self):
        import torch

        self.torch = torch
        self.dtype = getattr(torch, DTYPES[self.precision])
        self.names = list(self.info.inputs)
        self.stream = torch.cuda.Stream(device=self.device) if self.on_cuda else None

    @property
    def on_cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def providers(self) -> list[str]:
        return [self.device]

    def _check(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        arrays = []
        for name in self.names:
            a = feeds.get(name)
            want = tuple(self.info.inputs[name])
            if a is None or a.ndim != len(want) + 1 or tuple(a.shape[1:]) != want or a.dtype != np.float32:
                got = "missing" if a is None else f"{a.dtype} {tuple(a.shape)}"
                raise InputError(f"{self.info.path}: input {name!r} must be float32 (batch, "
                                 f"{', '.join(map(str, want))}), got {got}")
            arrays.append(a)
        if len({len(a) for a in arrays}) != 1:
            raise InputError(f"{self.info.path}: inputs have different batch sizes "
                             f"{[len(a) for a in arrays]}")
        return arrays

    def _forward(self, xs):
        return self.module(*xs).float()

    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        """Run one batch; returns the single output as a fresh float32 array."""
        arrays = self._check(feeds)
        torch = self.torch
        with self.lock, torch.inference_mode():
            if not self.on_cuda:
                xs = [torch.from_numpy(a).to(self.dtype) for a in arrays]
                return self._forward(xs).numpy().copy()
            return self._run_cuda(arrays)

    def _bind(self, n: int) -> _Bound:
        torch = self.torch
        b = self.bound.get(n)
        if b is None:
            shapes = [(n, *self.info.inputs[name]) for name in self.names]
            out_shape = (n, *next(iter(self.info.outputs.values())))
            inputs = [torch.empty(s, device=self.device, dtype=self.dtype) for s in shapes]
            if inputs[0].ndim == 4:
                inputs[0] = inputs[0].contiguous(memory_format=torch.channels_last)
            b = _Bound(inputs=inputs, host_in=[torch.empty(s, pin_memory=True) for s in shapes],
                       host_out=torch.empty(out_shape, pin_memory=True))
            with torch.cuda.stream(self.stream):
                for _ in range(2):                       # warm-up: cuDNN picks its algorithms
                    b.output = self._forward(b.inputs)
            if self.cuda_graphs:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=self.stream):
                    b.output = self._forward(b.inputs)
                b.graph = graph
            self.stream.synchronize()
            self.bound[n] = b
        return b

    def _run_cuda(self, arrays) -> np.ndarray:
        torch = self.torch
        b = self._bind(len(arrays[0]))
        for host, a in zip(b.host_in, arrays):
            host.numpy()[...] = a
        with torch.cuda.stream(self.stream):
            for dev, host in zip(b.inputs, b.host_in):
                dev.copy_(host, non_blocking=True)     # casts to fp16/bf16 on the device
            if b.graph is not None:
                b.graph.replay()
            else:
                b.output = self._forward(b.inputs)
            b.host_out.copy_(b.output, non_blocking=True)
        self.stream.synchronize()          # waits for this stream only: other sessions go on
        return b.host_out.numpy().copy()

    def describe(self) -> dict:
        torch = self.torch
        name = torch.cuda.get_device_name(self.device) if self.on_cuda else "cpu"
        return {"path": str(self.info.path), "kind": self.info.kind, "mode": self.info.mode,
                "backend": self.backend, "backend_version": f"torch {torch.__version__}",
                "providers": self.providers, "device": name, "precision": self.precision,
                "cuda_graphs": self.on_cuda and self.cuda_graphs,
                "memory_format": "channels_last" if self.on_cuda else "contiguous",
                "batches_bound": sorted(self.bound), "threads": self.threads,
                "dynamic_batch": self.info.dynamic_batch, "weights": self.info.weights}


def cuda_available() -> bool:
    torch = load_torch()
    return bool(torch.cuda.is_available())


def open_torch(info: ModelInfo, *, threads: int, precision: str = "fp32", device: Optional[str] = None,
               cuda_graphs: bool = True, **_ignored) -> TorchSession:
    """A torch session on ``device`` (default: CUDA when available, else the CPU)."""
    if precision not in DTYPES:
        raise ModelError(f"{info.path}: the torch backend runs {', '.join(DTYPES)} (got {precision})")
    torch = load_torch()
    if device is None:
        device = "cuda:0" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ModelError(f"{info.path}: torch {torch.__version__} sees no CUDA device")
        if precision == "fp32":            # fp32 means fp32: no TF32 in convolutions
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
    elif precision == "fp16":
        raise ModelError(f"{info.path}: fp16 in the torch backend needs a CUDA device "
                         "(on a CPU use bf16 or fp32)")
    else:
        torch.set_num_threads(int(threads))
    try:
        module = _module_for(info, device, precision, torch)
    except ModelError:
        raise
    except Exception as exc:                     # torch errors are long; one line is enough
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{info.path}: PyTorch cannot build the model ({first})") from None
    return TorchSession(info=info, module=module, device=device, precision=precision,
                        threads=int(threads), cuda_graphs=cuda_graphs)
