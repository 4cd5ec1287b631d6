"""Inference backends behind one small interface: run a batch, say what you are.

Only ONNX Runtime today.  Sessions are created with explicit providers and thread counts, and
``run`` releases the GIL (ORT does so inside ``InferenceSession.run``), so the engine's worker
threads keep converting and encoding while the model computes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from .errors import ModelError
from .models import ModelInfo, inspect

DEFAULT_PROVIDERS = ("CPUExecutionProvider",)
DYNAMIC_BLOCK_BASE = 4   # ORT splits parallel loops into ~4 x threads dynamic blocks


def default_threads() -> int:
    """Intra-op threads for the generator: every core the process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass
class OrtModel:
    """One ONNX Runtime session and what :func:`fastgen.models.inspect` learned about its file."""

    info: ModelInfo
    session: "object"
    threads: int

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    @property
    def max_batch(self) -> Optional[int]:
        return self.info.max_batch

    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        """Run one batch; returns the single output."""
        return self.session.run(None, dict(feeds))[0]

    def describe(self) -> dict:
        return {"path": str(self.info.path), "kind": self.info.kind, "mode": self.info.mode,
                "providers": self.providers, "threads": self.threads,
                "dynamic_batch": self.info.dynamic_batch, "synthetic": self.info.synthetic}


_shared_arena = {"done": False}
_arena_lock = __import__("threading").Lock()


def _register_shared_arena(ort) -> bool:
    """One CPU arena for every session of the process, growing only by what is requested.

    Measured on the 1280x720 demo pipeline (1 session x 2 threads): ORT's default per-session
    power-of-two arena with memory patterns peaks at 676 MB RSS, this shared exact-growth arena
    (with ``enable_mem_pattern=False``) at 549 MB at the same fps; no arena at all costs ~40 %
    of the fps (every run maps and faults its activations afresh).
    """
    with _arena_lock:
        if not _shared_arena["done"]:
            try:
                info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0,
                                         ort.OrtMemType.DEFAULT)
                # max_mem 0 (no cap), extend strategy 1 = kSameAsRequested, defaults for the rest
                ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, 1, -1, -1))
                _shared_arena["done"] = True
            except Exception:  # older ORT without env allocators: per-session arenas
                _shared_arena["done"] = None
        return bool(_shared_arena["done"])


def load_model(path: str | os.PathLike, kind: str, *, threads: int = 1,
               providers: Optional[Sequence[str]] = None, spin: bool = True) -> OrtModel:
    """Open an ONNX model for inference.

    With ``spin=True`` (default) intra-op threads busy-wait between the parallel sections of a
    run but stop the moment ``run`` returns (``force_spinning_stop``), and loops are split into
    dynamic blocks (``dynamic_block_base``) so a worker preempted by post-processing does not
    hold the other at the barrier.  Measured on the 1280x720 demo (2 cores, 4 interleaved
    rounds, medians): pipeline 22.9 fps this way, 22.3 with no spinning, 22.3 with ORT's
    default spinning.  ``spin=False`` never busy-waits: 5-10 % slower alone, for hosts where
    other processes need the cores.
    """
    import onnxruntime as ort

    info = inspect(Path(path), expect=kind)
    wanted = list(providers) if providers else list(DEFAULT_PROVIDERS)
    available = set(ort.get_available_providers())
    missing = [p for p in wanted if (p if isinstance(p, str) else p[0]) not in available]
    if missing:
        raise ModelError(f"{path}: execution provider(s) {missing} not available; "
                         f"this onnxruntime has {sorted(available)}")
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
    if _register_shared_arena(ort):
        opts.add_session_config_entry("session.use_env_allocators", "1")
    try:
        session = ort.InferenceSession(str(info.path), sess_options=opts, providers=wanted)
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{path}: ONNX Runtime cannot load the model ({first})") from None
    got = session.get_providers()
    if (wanted[0] if isinstance(wanted[0], str) else wanted[0][0]) not in got:
        raise ModelError(f"{path}: ONNX Runtime did not enable {wanted[0]} (active: {got})")
    return OrtModel(info=info, session=session, threads=int(threads))
