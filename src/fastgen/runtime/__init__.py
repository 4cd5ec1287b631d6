"""The inference seam: the only package that opens a model file and runs it.

:func:`open_session` takes a model file (or the :class:`~fastgen.models.ModelInfo` already read
from it), a backend and a precision, and returns a session with a small interface: ``run(feeds)``
runs one batch and returns the single output; ``info``, ``backend``, ``providers``, ``precision``
and ``threads`` say what it is; ``describe()`` puts that in a dict.  The engine, the stream and the
benchmarks use nothing else, so a backend plugs in here without them changing.

=============  ==========================================================  ==================
backend        what                                                        precisions
=============  ==========================================================  ==================
``ort``        ONNX Runtime, CPU (:mod:`.ort`)                             fp32, int8
``openvino``   OpenVINO, CPU (:mod:`.openvino`, ``fastgen[openvino]``)     fp32, bf16, fp16, int8
``torch``      PyTorch, CUDA or CPU (:mod:`.pytorch`, ``fastgen[torch]``)  fp32, fp16, bf16
``cuda``       ONNX Runtime CUDA (:mod:`.ort_gpu`, ``fastgen[gpu]``)       fp32, fp16
``tensorrt``   ONNX Runtime TensorRT (:mod:`.ort_gpu`, ``fastgen[gpu]``)   fp16, fp32
=============  ==========================================================  ==================

int8 runs a copy of the model quantized on the avatar's own crops (:mod:`.quantize`); the caller
passes it as ``model`` with ``precision="int8"`` (the engine does this).

:mod:`.choice` picks a backend and precision for ``auto``; :mod:`.fidelity` measures whether a
reduced precision is faithful to fp32 on the user's own model and avatar.
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Optional, Protocol, Sequence, Union

from ..errors import InputError, ModelError

if TYPE_CHECKING:
    import numpy as np

    from ..models import ModelInfo


def _open_ort(info, **options):
    from .ort import open_ort

    return open_ort(info, **options)


def _open_openvino(info, **options):
    from .openvino import open_openvino

    return open_openvino(info, **options)


def _open_torch(info, **options):
    from .pytorch import open_torch

    return open_torch(info, **options)


def _open_cuda(info, **options):
    from .ort_gpu import open_ort_gpu

    return open_ort_gpu(info, backend="cuda", **options)


def _open_tensorrt(info, **options):
    from .ort_gpu import open_ort_gpu

    return open_ort_gpu(info, backend="tensorrt", **options)


# backend name -> opener; the backend modules (and numpy, onnx, the runtimes) load on first use,
# so the CLI can check --backend in milliseconds
BACKENDS = {"ort": _open_ort, "openvino": _open_openvino, "torch": _open_torch, "cuda": _open_cuda,
            "tensorrt": _open_tensorrt}
_LAZY = {"OrtSession": "ort", "DEFAULT_PROVIDERS": "ort", "OpenVinoSession": "openvino",
         "TorchSession": "pytorch", "BoundSession": "ort_gpu"}
BACKEND_ALIASES = {"onnxruntime": "ort", "pytorch": "torch"}
PRECISIONS = {"ort": ("fp32", "int8"), "openvino": ("fp32", "bf16", "fp16", "int8"), "torch": ("fp32", "fp16", "bf16"),
              "cuda": ("fp32", "fp16"), "tensorrt": ("fp16", "fp32")}
GPU_BACKENDS = ("torch", "cuda", "tensorrt")
PRECISION_KEY = "fastgen.precision"      # metadata of the converted copies (int8, fp16)

__all__ = ["BACKENDS", "BoundSession", "DEFAULT_PROVIDERS", "GPU_BACKENDS", "OpenVinoSession", "OrtSession",
           "PRECISIONS", "Session", "TorchSession", "default_threads", "open_session"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def default_threads() -> int:
    """Intra-op threads for the generator: every core the process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class Session(Protocol):
    """What every backend's session offers."""

    info: "ModelInfo"
    backend: str
    precision: str
    threads: int

    @property
    def providers(self) -> list[str]: ...

    def run(self, feeds: Mapping[str, "np.ndarray"]) -> "np.ndarray": ...

    def describe(self) -> dict: ...


def canonical_backend(backend: str) -> str:
    name = BACKEND_ALIASES.get(backend, backend)
    if name not in BACKENDS:
        raise InputError(f"unknown backend {backend!r} (available: {', '.join(sorted(BACKENDS))})")
    return name


def open_session(model: Union[str, "os.PathLike[str]", "ModelInfo"], kind: Optional[str] = None, *,
                 threads: int = 1, backend: str = "ort", precision: str = "fp32",
                 providers: Optional[Sequence] = None, spin: bool = True,
                 ort_defaults: bool = False) -> Session:
    """Open a generator or audio-encoder model for inference.

    ``model`` is a file (checked by :func:`fastgen.models.inspect`, which must find ``kind`` if
    given) or a :class:`ModelInfo` from an earlier inspection, so a file is read once however
    many sessions open it.  ``backend`` and ``precision`` as in the table above; a precision the
    backend does not run is a :class:`ModelError`, a missing optional extra an
    :class:`InputError` that says what to install.

    ORT options: with ``spin=True`` (default) intra-op threads busy-wait between the parallel
    sections of a run but stop the moment ``run`` returns (``force_spinning_stop``), and loops are
    split into dynamic blocks so a worker preempted by post-processing does not hold the other at
    the barrier.  Measured on the 1280x720 demo (2 cores, 4 interleaved rounds, medians): pipeline
    22.9 fps this way, 22.3 with no spinning, 22.3 with ORT's default spinning.  ``spin=False``
    never busy-waits: 5-10 % slower alone, for hosts where other processes need the cores.
    ``ort_defaults=True`` opens the session exactly as ``onnxruntime.InferenceSession(path)``
    would (the benchmark's yardstick).
    """
    from ..models import ModelInfo, inspect

    name = canonical_backend(backend)
    if precision not in PRECISIONS[name]:
        raise ModelError(f"the {name} backend runs {', '.join(PRECISIONS[name])}, not {precision!r}")
    if int(threads) < 1:
        raise InputError(f"threads must be >= 1, got {threads}")
    info = model if isinstance(model, ModelInfo) else inspect(Path(model), expect=kind)
    if kind is not None and info.kind != kind:
        raise ModelError(f"{info.path}: expected a {kind.replace('_', ' ')}, got a "
                         f"{info.kind.replace('_', ' ')}")
    if precision == "int8" and info.metadata.get(PRECISION_KEY) != "int8":
        raise ModelError(f"{info.path}: int8 runs a copy of the model quantized on the avatar "
                         "(fastgen.runtime.quantize); this file is not one")
    return BACKENDS[name](info, threads=int(threads), precision=precision, providers=providers, spin=spin,
                          ort_defaults=ort_defaults)
