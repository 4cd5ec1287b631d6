"""Which backend and precision to run: ``auto`` or what the user asked for, with fallbacks.

``auto`` picks the fastest *faithful* setting the machine has.  On a machine with an NVIDIA GPU
and a GPU backend installed: fp16 (then bf16) on the GPU — PyTorch first, then ONNX Runtime
TensorRT and CUDA — verified against fp32, else that backend's fp32.  On a CPU with native bf16
(AVX512_BF16 or AMX) and OpenVINO installed: OpenVINO bf16 if the fidelity check (:mod:`.fidelity`)
passes on the user's own model; otherwise ONNX Runtime fp32.  int8 is never picked by ``auto``
(it is not faithful on the generators measured); it runs when asked for, with a warning stating
its PSNR.  A requested backend that is missing or fails falls back to ONNX Runtime fp32 with a
one-line warning naming the reason.  Everything here is a pure function of the CPU flags, the
installed backends and whether a GPU is present, so tests fake all three.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import platform
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

from ..errors import FastgenError, InputError
from . import BACKEND_ALIASES, BACKENDS, GPU_BACKENDS, PRECISIONS, open_session

log = logging.getLogger("fastgen")

BF16_FLAGS = ("avx512_bf16", "amx_bf16")
FP16_FLAGS = ("avx512_fp16", "amx_fp16")
CHOICES = ("auto", *BACKENDS, *BACKEND_ALIASES)
PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16", "int8")
EXTRAS = {"ort": "fastgen", "openvino": "fastgen[openvino]", "torch": "fastgen[torch]",
          "cuda": "fastgen[gpu]", "tensorrt": "fastgen[gpu]"}
# auto on a GPU: reduced precisions are tried in this order (what SyncTalk_2D users have first);
# the fp32 fallback is the first of FP32_ORDER installed (quick to start: no TensorRT build)
GPU_ORDER = ("torch", "tensorrt", "cuda")
FP32_ORDER = ("torch", "cuda", "tensorrt")
ORT_GPU_PROVIDERS = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
NVIDIA_DEVICES = ("/dev/nvidiactl", "/proc/driver/nvidia/gpus")


@dataclass(frozen=True)
class Choice:
    """A backend, a precision and why (printed once by the CLI).

    ``candidates`` are faster reduced-precision settings ``auto`` wants to verify first, in order.
    """

    backend: str
    precision: str
    reason: str
    candidates: tuple = ()

    @property
    def candidate(self) -> Optional[tuple[str, str]]:
        return self.candidates[0] if self.candidates else None

    def __str__(self) -> str:
        return f"{self.backend} {self.precision} ({self.reason})"


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset:
    """The CPU's feature flags (empty where /proc/cpuinfo is missing)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bf16(flags: Iterable[str]) -> Optional[str]:
    """The flag that gives this CPU native bf16 arithmetic, or None."""
    flags = set(flags)
    return next((f for f in BF16_FLAGS if f in flags), None)


def native_fp16(flags: Iterable[str]) -> Optional[str]:
    """The flag that gives this CPU native fp16 arithmetic (OpenVINO's f16 hint), or None."""
    flags = set(flags)
    return next((f for f in FP16_FLAGS if f in flags), None)


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name, as benchmarks and caches name the machine."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_present(paths: Iterable[str] = NVIDIA_DEVICES) -> bool:
    """Whether an NVIDIA driver shows a device (without importing torch or CUDA)."""
    for path in paths:
        if os.path.isdir(path):
            if os.listdir(path):
                return True
        elif os.path.exists(path):
            return True
    return False


def installed(backend: str) -> bool:
    """Whether a backend's runtime is there (without importing torch or OpenVINO)."""
    if backend in ORT_GPU_PROVIDERS:
        if importlib.util.find_spec("onnxruntime") is None:
            return False
        import onnxruntime

        return ORT_GPU_PROVIDERS[backend] in onnxruntime.get_available_providers()
    module = {"ort": "onnxruntime", "openvino": "openvino", "torch": "torch"}[backend]
    return importlib.util.find_spec(module) is not None


def _auto_gpu(precision: str, available: set) -> Optional[Choice]:
    backends = [b for b in GPU_ORDER if b in available]
    if not backends:
        return None
    base = next(b for b in FP32_ORDER if b in available)
    wanted = {"auto": ("fp16", "bf16"), "fp16": ("fp16",), "bf16": ("bf16",)}.get(precision, ())
    candidates = tuple((b, p) for p in wanted for b in backends if p in PRECISIONS[b])
    if not candidates:
        return Choice(base, "fp32", f"auto: GPU, {base} fp32")
    first = " ".join(candidates[0])
    return Choice(base, "fp32", f"auto: GPU; checking {first} against fp32 first", candidates=candidates)


def choose(backend: str = "auto", precision: str = "auto", *, flags: Optional[Iterable[str]] = None,
           available: Optional[Iterable[str]] = None, gpu: Optional[bool] = None) -> Choice:
    """The setting to open, before any fidelity check.

    ``flags`` (default: this CPU's), ``available`` (default: the installed backends) and ``gpu``
    (default: whether an NVIDIA device is present) make it a pure function for tests.  With
    ``auto`` the result is the fp32 setting to fall back on, with ``candidates`` to verify: the
    caller switches to the first faithful one.
    """
    if backend not in CHOICES:
        raise InputError(f"--backend must be one of {', '.join(CHOICES)} (got {backend!r})")
    if precision not in PRECISION_CHOICES:
        raise InputError(f"--precision must be one of {', '.join(PRECISION_CHOICES)} (got {precision!r})")
    backend = BACKEND_ALIASES.get(backend, backend)
    flags = cpu_flags() if flags is None else frozenset(flags)
    gpu = gpu_present() if gpu is None else bool(gpu)
    if available is None:
        available = {b for b in BACKENDS if (gpu or b not in ORT_GPU_PROVIDERS) and installed(b)}
    available = set(available)
    bf16_flag = native_bf16(flags)
    if backend == "auto":
        if gpu and precision != "int8":
            picked = _auto_gpu(precision, available)
            if picked is not None:
                return picked
        if precision == "int8":
            b = "openvino" if "openvino" in available else "ort"
            return Choice(b, "int8", "requested int8 (auto never picks it: not faithful on the "
                                     "generators measured)")
        native = [(p, flag) for p, flag in (("bf16", bf16_flag), ("fp16", native_fp16(flags)))
                  if flag and precision in ("auto", p) and "openvino" in available]
        if native:
            names = " then ".join(f"OpenVINO {p} ({flag})" for p, flag in native)
            return Choice("ort", "fp32", f"auto: checking {names} against fp32 first",
                          candidates=tuple(("openvino", p) for p, _ in native))
        gpu_note = "; an NVIDIA GPU is present but no GPU backend is installed " \
                   "(pip install 'fastgen[torch]' or 'fastgen[gpu]')" if gpu else ""
        if precision in ("bf16", "fp16"):
            why = ("OpenVINO is not installed" if "openvino" not in available and precision == "bf16"
                   else f"this CPU has no native {precision} path")
            return Choice("ort", "fp32", f"auto: no {precision} here ({why}{gpu_note})")
        why = ("this CPU has no native bf16 (AVX512_BF16 or AMX)" if not bf16_flag
               else "OpenVINO is not installed (pip install 'fastgen[openvino]')")
        return Choice("ort", "fp32", f"auto: {why}{gpu_note}")
    if backend not in available:
        return Choice("ort", "fp32", f"fallback: the {backend} backend is not installed "
                                     f"(pip install '{EXTRAS[backend]}')")
    if precision == "auto":
        if backend == "openvino":
            precision = "bf16" if bf16_flag else "fp32"
        elif backend in GPU_BACKENDS and (gpu or backend != "torch"):
            precision = "fp16"           # what the GPU backends are for; checked against fp32
        else:
            precision = "fp32"
    if precision not in PRECISIONS[backend]:
        raise InputError(f"--precision {precision} is not available with --backend {backend} "
                         f"(it runs {', '.join(PRECISIONS[backend])})")
    reason = "requested"
    if backend == "openvino" and precision == "bf16" and not bf16_flag:
        reason = "requested; this CPU has no native bf16, so OpenVINO emulates it (slow)"
    return Choice(backend, precision, reason)


def _figures(v: dict) -> str:
    return (f"PSNR {v['psnr_db']} dB, worst frame {v['min_frame_psnr_db']} dB, p99 "
            f"{v['p99_face_levels']} levels in the face")


def open_chosen(info, choice: Choice, *, sessions: int, threads: int, providers=None,
                check: Callable[[object, object], dict],
                model_for: Optional[Callable[[str], object]] = None,
                race: Optional[Callable[[object, object], dict]] = None) -> tuple[list, Choice, Optional[dict]]:
    """Open ``sessions`` sessions for ``choice``; verify its candidates (in order) or a requested
    reduced precision with ``check(reference_ort_fp32, candidate)`` (a :func:`fidelity.verdict`).
    With ``race`` (a :class:`~.calibration.Race`), a faithful candidate must also be measured
    faster than the fallback to be taken.

    ``check.cached(info, "backend-precision")`` and ``race.cached(info, setting, fallback)``, where
    they exist, return what an earlier run found, so a setting known to fail is not even
    compiled.  ``model_for(precision)``
    gives the model to open for a precision that needs its own copy (int8: quantized on the
    avatar); by default every setting opens ``info``.  Returns the sessions, the final choice (its
    reason says what happened) and the verdict.
    """
    def model(precision: str):
        return model_for(precision) if model_for is not None else info

    def open_n(backend: str, precision: str, n: int) -> list:
        target = model(precision)
        return [open_session(target, backend=backend, precision=precision, threads=threads,
                             providers=providers if backend == "ort" else None) for _ in range(n)]

    if choice.reason.startswith("fallback:"):          # choose() found the requested backend missing
        log.warning("%s; falling back to ort fp32", choice.reason[len("fallback: "):])
    try:
        opened = open_n(choice.backend, choice.precision, sessions)
    except FastgenError as exc:
        if choice.backend == "ort" and choice.precision == "fp32":
            raise
        log.warning("%s %s is not available (%s); falling back to ort fp32", choice.backend,
                    choice.precision, exc)
        return open_n("ort", "fp32", sessions), Choice("ort", "fp32", f"fallback: {exc}"), None
    reference: list = []

    def ort_fp32():
        if not reference:
            base = opened[0]
            reference.append(base if (base.backend, base.precision) == ("ort", "fp32")
                             else open_n("ort", "fp32", 1)[0])
        return reference[0]

    cached = getattr(check, "cached", None)
    verdict, failures = None, []
    for backend, precision in choice.candidates:
        setting = f"{backend}-{precision}"
        known = cached(info, setting) if cached is not None else None
        if known is not None and not known["faithful"]:
            failures.append(f"{backend} {precision} is not faithful on this model ({_figures(known)}, cached)")
            verdict = known
            continue
        speed = race.cached(info, setting, opened[0]) if race is not None and hasattr(race, "cached") else None
        if speed is not None and not speed["faster"]:
            failures.append(f"{backend} {precision} is not faster here ({speed['speedup']}x {speed['fallback']}, "
                            "cached)")
            continue
        try:
            candidate = open_n(backend, precision, 1)[0]
        except FastgenError as exc:
            failures.append(f"{backend} {precision} could not open ({exc})")
            continue
        verdict = check(ort_fp32(), candidate)
        if not verdict["faithful"]:
            failures.append(f"{backend} {precision} is not faithful on this model ({_figures(verdict)})")
            continue
        if race is not None and speed is None:
            speed = race(opened[0], candidate)
            if not speed["faster"]:
                failures.append(f"{backend} {precision} is faithful but not faster here "
                                f"({speed['speedup']}x {speed['fallback']})")
                continue
        gain = f", {speed['speedup']}x {speed['fallback']}" if speed else ""
        opened = [candidate, *open_n(backend, precision, sessions - 1)]
        return opened, Choice(backend, precision, f"auto: faithful on this model ({_figures(verdict)}{gain})"), verdict
    if choice.candidates:
        return opened, Choice(choice.backend, choice.precision, "auto: " + "; ".join(failures)), verdict
    if choice.precision != "fp32":
        verdict = check(ort_fp32(), opened[0])
        if not verdict["faithful"]:
            log.warning("%s %s is not faithful on this model (%s); it runs because it was asked for",
                        choice.backend, choice.precision, _figures(verdict))
    return opened, choice, verdict
