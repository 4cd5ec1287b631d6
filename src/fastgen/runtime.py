"""The inference seam: the only module that opens a model file and runs it.

:func:`open_session` takes a model file (or the :class:`~fastgen.models.ModelInfo` already read
from it) and returns a session with a small interface: ``run(feeds)`` runs one batch and returns
the single output; ``info``, ``backend``, ``providers``, ``precision`` and ``threads`` say what it
is; ``describe()`` puts that in a dict.  Only ONNX Runtime today; other backends plug in here
(``BACKENDS``) without the engine, the stream or the benchmarks changing.

ONNX Runtime releases the GIL inside ``run``, so the engine's other threads keep converting and
encoding while the model computes.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Protocol, Sequence, Union

import numpy as np

from .errors import InputError, ModelError
from .models import ModelInfo, inspect

DEFAULT_PROVIDERS = ("CPUExecutionProvider",)
DYNAMIC_BLOCK_BASE = 4   # ORT splits parallel loops into ~4 x threads dynamic blocks


def default_threads() -> int:
    """Intra-op threads for the generator: every core the process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class Session(Protocol):
    """What every backend's session offers."""

    info: ModelInfo
    backend: str
    precision: str
    threads: int

    @property
    def providers(self) -> list[str]: ...

    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray: ...

    def describe(self) -> dict: ...


@dataclass
class OrtSession:
    """One ONNX Runtime inference session and what :func:`fastgen.models.inspect` learned."""

    info: ModelInfo
    session: object
    threads: int
    backend: str = "onnxruntime"
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


class _SharedArena:
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


_ARENA = _SharedArena()


def _provider_name(p) -> str:
    return p if isinstance(p, str) else p[0]


def _open_ort(info: ModelInfo, *, threads: int, providers: Optional[Sequence], spin: bool,
              ort_defaults: bool) -> OrtSession:
    import onnxruntime as ort

    wanted = list(providers) if providers else list(DEFAULT_PROVIDERS)
    available = set(ort.get_available_providers())
    missing = [p for p in wanted if _provider_name(p) not in available]
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
        if _ARENA.ensure(ort):
            opts.add_session_config_entry("session.use_env_allocators", "1")
    try:
        session = ort.InferenceSession(str(info.path), sess_options=opts, providers=wanted)
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{info.path}: ONNX Runtime cannot load the model ({first})") from None
    got = session.get_providers()
    if _provider_name(wanted[0]) not in got:
        raise ModelError(f"{info.path}: ONNX Runtime did not enable {_provider_name(wanted[0])} "
                         f"(active: {got})")
    return OrtSession(info=info, session=session, threads=0 if ort_defaults else int(threads))


BACKENDS = {"onnxruntime": _open_ort}


def open_session(model: Union[str, "os.PathLike[str]", ModelInfo], kind: Optional[str] = None, *,
                 threads: int = 1, providers: Optional[Sequence] = None, spin: bool = True,
                 backend: str = "onnxruntime", ort_defaults: bool = False) -> Session:
    """Open a generator or audio-encoder model for inference.

    ``model`` is a file (checked by :func:`fastgen.models.inspect`, which must find ``kind`` if
    given) or a :class:`ModelInfo` from an earlier inspection, so a file is read once however
    many sessions open it.

    With ``spin=True`` (default) intra-op threads busy-wait between the parallel sections of a
    run but stop the moment ``run`` returns (``force_spinning_stop``), and loops are split into
    dynamic blocks (``dynamic_block_base``) so a worker preempted by post-processing does not
    hold the other at the barrier.  Measured on the 1280x720 demo (2 cores, 4 interleaved
    rounds, medians): pipeline 22.9 fps this way, 22.3 with no spinning, 22.3 with ORT's
    default spinning.  ``spin=False`` never busy-waits: 5-10 % slower alone, for hosts where
    other processes need the cores.  ``ort_defaults=True`` opens the session exactly as
    ``onnxruntime.InferenceSession(path)`` would (the benchmark's yardstick).
    """
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r} (available: {', '.join(sorted(BACKENDS))})")
    if int(threads) < 1:
        raise InputError(f"threads must be >= 1, got {threads}")
    info = model if isinstance(model, ModelInfo) else inspect(Path(model), expect=kind)
    if kind is not None and info.kind != kind:
        raise ModelError(f"{info.path}: expected a {kind.replace('_', ' ')}, got a "
                         f"{info.kind.replace('_', ' ')}")
    return BACKENDS[backend](info, threads=int(threads), providers=providers, spin=spin,
                             ort_defaults=ort_defaults)
