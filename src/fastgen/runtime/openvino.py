"""The OpenVINO backend (optional extra ``fastgen[openvino]``): f32, bf16, fp16 and int8 on CPUs.

bf16 runs natively on CPUs with AVX512_BF16 or AMX and halves the bytes the memory-bound U-Net
moves; elsewhere OpenVINO emulates it slowly, so :mod:`.choice` only picks it where it is native.
fp16 is native with AVX512_FP16 or AMX-FP16.  int8 runs a model quantized on the avatar
(:mod:`.quantize`: QuantizeLinear/DequantizeLinear pairs, which OpenVINO turns into u8/i8
convolutions) with everything left in float at bf16 on AMX CPUs, else f32.
``run`` releases the GIL inside OpenVINO, like ONNX Runtime.
"""
from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from ..errors import InputError, ModelError
from ..models import ModelInfo
from .signal_stack import ensure_roomy

PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", "int8": None}   # int8: see hint()


def hint(precision: str) -> str:
    """OpenVINO's INFERENCE_PRECISION_HINT for ``precision`` on this CPU."""
    if precision == "int8":
        # the layers left in float: bf16 on AMX; on AVX512_BF16 alone OpenVINO's bf16 measured
        # slower than f32 (Xeon without AMX, 2026-12-02: 10.8 against 15.1 fps)
        from .choice import cpu_flags

        return "bf16" if "amx_bf16" in cpu_flags() else "f32"
    return PRECISION_HINTS[precision]


def load_openvino():
    """The ``openvino`` module, or a one-line error saying how to get it."""
    try:
        import openvino
    except ImportError as exc:
        raise InputError(f"the openvino backend needs OpenVINO ({exc}): pip install 'fastgen[openvino]'") from None
    return openvino


@dataclass
class OpenVinoSession:
    """One compiled OpenVINO model with one infer request (one run at a time, like a session)."""

    info: ModelInfo
    compiled: object
    threads: int
    precision: str
    backend: str = "openvino"
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self):
        self.request = self.compiled.create_infer_request()
        self.output = self.compiled.output(0)

    @property
    def providers(self) -> list[str]:
        return ["CPU"]

    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        """Run one batch; returns the single output (a fresh array: the request reuses its buffers)."""
        with self.lock:
            out = self.request.infer(dict(feeds))[self.output]
            return np.array(out, dtype=np.float32, copy=True)

    def runtime_precisions(self) -> dict[str, int]:
        """How many of the compiled graph's ops run in each precision (OpenVINO's own report)."""
        counts: Counter = Counter()
        for op in self.compiled.get_runtime_model().get_ops():
            info = op.get_rt_info()
            if "runtimePrecision" in info:
                counts[info["runtimePrecision"].astype(str)] += 1
        return dict(counts)

    def describe(self) -> dict:
        import openvino

        return {"path": str(self.info.path), "kind": self.info.kind, "mode": self.info.mode,
                "backend": self.backend, "backend_version": f"openvino {openvino.__version__}",
                "providers": self.providers, "precision": self.precision,
                "runtime_precision": self.runtime_precisions(), "threads": self.threads,
                "dynamic_batch": self.info.dynamic_batch, "weights": self.info.weights}


def open_openvino(info: ModelInfo, *, threads: int, precision: str = "fp32", **_ignored) -> OpenVinoSession:
    """Compile ``info``'s ONNX file for the CPU at ``precision`` (fp32, bf16, fp16, or int8 for
    a quantized model)."""
    if precision not in PRECISION_HINTS:
        raise ModelError(f"{info.path}: the openvino backend runs {', '.join(PRECISION_HINTS)} "
                         f"(got {precision})")
    ov = load_openvino()
    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": hint(precision), "INFERENCE_NUM_THREADS": int(threads),
              "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
    try:
        compiled = core.compile_model(core.read_model(str(info.path)), "CPU", config)
    except Exception as exc:  # OpenVINO raises RuntimeError with multi-line text
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{info.path}: OpenVINO cannot compile the model ({first})") from None
    ensure_roomy()        # OpenVINO left this thread a signal stack too small for AMX frames
    return OpenVinoSession(info=info, compiled=compiled, threads=int(threads), precision=precision)
