"""ONNX Runtime on NVIDIA GPUs (``onnxruntime-gpu``, extra ``fastgen[gpu]``): CUDA and TensorRT.

* ``cuda``: fp32, or fp16 through a converted copy of the model (:func:`fp16_model`: weights and
  arithmetic in fp16, inputs and outputs still fp32, so the engine is unchanged).
* ``tensorrt``: fp16 (TensorRT's own fp16 flag on the fp32 model) or fp32, with a dynamic-batch
  optimisation profile (1 .. 32, optimum 8) and the engine and timing caches under the fastgen
  cache directory, so the minutes TensorRT spends building run once per machine and model.

Each session binds its inputs and output to device buffers with IOBinding
(:class:`BoundSession`): a batch is copied up once into a preallocated device tensor, the output
stays on the device until one copy down.  The same class runs on the CPU provider, which is how
the tests exercise it on machines without a GPU.
"""
from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional

import numpy as np

from ..atomic import building_file
from ..cachedir import default_cache_dir
from ..errors import InputError, ModelError
from ..models import ModelInfo, sha256_file
from . import PRECISION_KEY
from .ort import ARENA, provider_name

GPU_PROVIDERS = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
PRECISIONS = {"cuda": ("fp32", "fp16"), "tensorrt": ("fp16", "fp32")}
TRT_BATCHES = (1, 8, 32)               # min, opt, max of the optimisation profile
# Resize "scales" and Pad "pads" are shape arguments: they stay fp32 / int64 in an fp16 model
_KEEP_FLOAT32 = {("Resize", 2), ("Resize", 1)}


def fp16_model(info: ModelInfo, cache: Optional[Path] = None) -> Path:
    """An fp16 copy of ``info``'s model with fp32 inputs and outputs (built once, cached)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    out = (cache or default_cache_dir() / "models" / "fp16") / f"{sha256_file(info.path)[:16]}.onnx"
    if out.is_file():
        return out
    model = onnx.load(str(info.path))
    graph = model.graph
    keep = {node.input[i] for node in graph.node for (op, i) in _KEEP_FLOAT32
            if node.op_type == op and len(node.input) > i}
    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT and init.name not in keep:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name))
    casts_in = []
    for value in graph.input:
        if value.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        half = f"{value.name}:fp16"
        for node in graph.node:
            node.input[:] = [half if n == value.name else n for n in node.input]
        casts_in.append(helper.make_node("Cast", [value.name], [half], to=TensorProto.FLOAT16,
                                         name=f"{value.name}:cast"))
    casts_out = []
    for value in graph.output:
        half = f"{value.name}:fp16"
        for node in graph.node:
            node.output[:] = [half if n == value.name else n for n in node.output]
        casts_out.append(helper.make_node("Cast", [half], [value.name], to=TensorProto.FLOAT,
                                          name=f"{value.name}:cast"))
    nodes = [*casts_in, *graph.node, *casts_out]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, PRECISION_KEY: "fp16"})
    with building_file(out, None, "the fp16 model") as tmp:
        onnx.save(model, str(tmp))
    return out


@dataclass
class BoundSession:
    """An ONNX Runtime session run through IOBinding into preallocated ``device`` buffers."""

    info: ModelInfo
    session: object
    threads: int
    precision: str
    backend: str
    device: str = "cuda"               # ORT device type: "cuda" or "cpu"
    device_id: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    buffers: dict = field(default_factory=dict)

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    def _buffers(self, n: int):
        import onnxruntime as ort

        b = self.buffers.get(n)
        if b is None:
            inputs = {name: ort.OrtValue.ortvalue_from_shape_and_type([n, *shape], np.float32, self.device,
                                                                     self.device_id)
                      for name, shape in self.info.inputs.items()}
            (out_name, out_shape), = self.info.outputs.items()
            output = ort.OrtValue.ortvalue_from_shape_and_type([n, *out_shape], np.float32, self.device,
                                                               self.device_id)
            binding = self.session.io_binding()
            for name, value in inputs.items():
                binding.bind_ortvalue_input(name, value)
            binding.bind_ortvalue_output(out_name, output)
            b = self.buffers[n] = (inputs, output, binding)
        return b

    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        """Run one batch: one upload per input, one download of the output."""
        n = len(next(iter(feeds.values())))
        with self.lock:
            inputs, output, binding = self._buffers(n)
            for name, value in inputs.items():
                a = feeds[name]
                if a.shape != tuple(value.shape()) or a.dtype != np.float32:
                    raise InputError(f"{self.info.path}: input {name!r} must be float32 "
                                     f"{tuple(value.shape())}, got {a.dtype} {a.shape}")
                value.update_inplace(np.ascontiguousarray(a))
            self.session.run_with_iobinding(binding)
            return output.numpy().copy()

    def describe(self) -> dict:
        import onnxruntime

        return {"path": str(self.info.path), "kind": self.info.kind, "mode": self.info.mode,
                "backend": self.backend, "backend_version": f"onnxruntime {onnxruntime.__version__}",
                "providers": self.providers, "precision": self.precision, "io_binding": self.device,
                "batches_bound": sorted(self.buffers), "threads": self.threads,
                "dynamic_batch": self.info.dynamic_batch, "weights": self.info.weights}


def _profile(info: ModelInfo, batch: int) -> str:
    return ",".join(f"{name}:{'x'.join(map(str, (batch, *shape)))}" for name, shape in info.inputs.items())


def provider_options(backend: str, info: ModelInfo, precision: str, device_id: int = 0,
                     cache: Optional[Path] = None) -> list:
    """The provider list (with options) ONNX Runtime gets for ``backend`` at ``precision``."""
    cuda = ("CUDAExecutionProvider", {"device_id": device_id, "cudnn_conv_algo_search": "EXHAUSTIVE",
                                      "do_copy_in_default_stream": True})
    if backend == "cuda":
        return [cuda, "CPUExecutionProvider"]
    key = hashlib.sha256(f"{sha256_file(info.path)}-{precision}".encode()).hexdigest()[:16]
    where = str((cache or default_cache_dir() / "tensorrt") / key)
    trt = {"device_id": device_id, "trt_fp16_enable": precision == "fp16",
           "trt_engine_cache_enable": True, "trt_engine_cache_path": where,
           "trt_timing_cache_enable": True, "trt_timing_cache_path": where,
           "trt_builder_optimization_level": 3}
    if info.dynamic_batch:
        lo, opt, hi = TRT_BATCHES
        trt.update(trt_profile_min_shapes=_profile(info, lo), trt_profile_opt_shapes=_profile(info, opt),
                   trt_profile_max_shapes=_profile(info, hi))
    return [("TensorrtExecutionProvider", trt), cuda, "CPUExecutionProvider"]


def open_ort_gpu(info: ModelInfo, *, backend: str, threads: int, precision: str,
                 providers=None, device_id: int = 0, **_ignored) -> BoundSession:
    """A CUDA or TensorRT session bound to device buffers.

    ``providers`` overrides the provider list; the tests pass the CPU provider to run the
    IOBinding code without a GPU.
    """
    import onnxruntime as ort

    if precision not in PRECISIONS[backend]:
        raise ModelError(f"{info.path}: the {backend} backend runs {', '.join(PRECISIONS[backend])} "
                         f"(got {precision})")
    wanted = list(providers) if providers else provider_options(backend, info, precision, device_id)
    available = set(ort.get_available_providers())
    first = provider_name(wanted[0])
    if first not in available:
        raise InputError(f"the {backend} backend needs onnxruntime-gpu with {first} "
                         f"(this onnxruntime has {', '.join(sorted(available))}): pip install 'fastgen[gpu]'")
    path = info.path
    if precision == "fp16" and backend == "cuda":
        path = fp16_model(info)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if first == "CPUExecutionProvider" and ARENA.ensure(ort):
        opts.add_session_config_entry("session.use_env_allocators", "1")
    try:
        session = ort.InferenceSession(str(path), sess_options=opts, providers=wanted)
    except Exception as exc:
        line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{info.path}: ONNX Runtime cannot load the model for {backend} ({line})") from None
    if first not in session.get_providers():
        raise ModelError(f"{info.path}: ONNX Runtime did not enable {first} (active: {session.get_providers()})")
    device = "cpu" if first == "CPUExecutionProvider" else "cuda"
    return BoundSession(info=info, session=session, threads=int(threads), precision=precision,
                        backend=backend, device=device, device_id=device_id)
