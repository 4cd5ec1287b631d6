"""The ONNX Runtime backend on the CPU (the GPU providers are in :mod:`.ort_gpu`).

Sessions get explicit threads, no inter-op pool, all graph optimisations, a shared exact-growth
arena and spinning only within a run.  ``run`` releases the GIL inside ONNX Runtime.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np

from ..errors import ModelError
from ..models import ModelInfo

DEFAULT_PROVIDERS = ("CPUExecutionProvider",)
DYNAMIC_BLOCK_BASE = 4   # ORT splits parallel loops into ~4 x threads dynamic blocks


@dataclass
class OrtSession:
    """One ONNX Runtime inference session and what :func:`fastgen.models.inspect` learned."""

    info: ModelInfo
    session: object
    threads: int
    backend: str = "ort"
    precision: str = "fp32"

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        """Run one batch; returns the single output."""
        return self.session.run(None, dict(feeds))[0]

    def describe(self) -> dict:
        import onnxruntime

        return {"path": str(self.info.path), "kind": self.info.kind, "mode": self.info.mode,
                "backend": self.backend, "backend_version": f"onnxruntime {onnxruntime.__version__}",
                "providers": self.providers, "precision": self.precision,
                "threads": self.threads, "dynamic_batch": self.info.dynamic_batch,
                "weights": self.info.weights}


class SharedArena:
    """One CPU arena for every session of the process, growing only by what is requested.

    Measured on the 1280x720 demo pipeline (1 session x 2 threads): ORT's default per-session
    power-of-two arena with memory patterns peaks at 676 MB RSS, this shared exact-growth arena
    (with ``enable_mem_pattern=False``) at 549 MB at the same fps; no arena at all costs ~40 %
    of the fps (every run maps and faults its activations afresh).
    """

    def __init__(self):
        self.lock = threading.Lock()
        self.registered: Optional[bool] = None    # None: not tried yet

    def ensure(self, ort) -> bool:
        with self.lock:
            if self.registered is None:
                try:
                    info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0,
                                             ort.OrtMemType.DEFAULT)
                    # max_mem 0 (no cap), extend strategy 1 = kSameAsRequested, defaults for the rest
                    ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, 1, -1, -1))
                    self.registered = True
                except Exception:  # older ORT without env allocators: per-session arenas
                    self.registered = False
            return self.registered


ARENA = SharedArena()


def provider_name(p) -> str:
    return p if isinstance(p, str) else p[0]


def open_ort(info: ModelInfo, *, threads: int, precision: str = "fp32", providers: Optional[Sequence] = None,
             spin: bool = True, ort_defaults: bool = False) -> OrtSession:
    """An ONNX Runtime session (fp32; CUDA / TensorRT execution providers when ``providers`` name them)."""
    import onnxruntime as ort

    if precision not in ("fp32", "int8"):      # int8: a quantized (QDQ) model, see .quantize
        raise ModelError(f"{info.path}: the ort backend runs fp32 and int8 (got {precision}); "
                         "--backend openvino runs bf16")

    wanted = list(providers) if providers else list(DEFAULT_PROVIDERS)
    available = set(ort.get_available_providers())
    missing = [p for p in wanted if provider_name(p) not in available]
    if missing:
        raise ModelError(f"{info.path}: execution provider(s) {missing} not available; "
                         f"this onnxruntime has {sorted(available)}")
    opts = None
    if not ort_defaults:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        if spin:
            opts.add_session_config_entry("session.force_spinning_stop", "1")
        if threads > 1:
            opts.add_session_config_entry("session.dynamic_block_base", str(DYNAMIC_BLOCK_BASE))
        opts.log_severity_level = 3
        opts.enable_cpu_mem_arena = True
        opts.enable_mem_pattern = False
        if ARENA.ensure(ort):
            opts.add_session_config_entry("session.use_env_allocators", "1")
    try:
        session = ort.InferenceSession(str(info.path), sess_options=opts, providers=wanted)
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{info.path}: ONNX Runtime cannot load the model ({first})") from None
    got = session.get_providers()
    if provider_name(wanted[0]) not in got:
        raise ModelError(f"{info.path}: ONNX Runtime did not enable {provider_name(wanted[0])} "
                         f"(active: {got})")
    return OrtSession(info=info, session=session, threads=0 if ort_defaults else int(threads),
                      precision=precision)
