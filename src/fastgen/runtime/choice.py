"""Which backend and precision to run: ``auto`` or what the user asked for, with fallbacks.

``auto`` picks the fastest *faithful* setting the machine has: OpenVINO bf16 on a CPU with native
bf16 (AVX512_BF16 or AMX), if OpenVINO is installed and the fidelity check (:mod:`.fidelity`)
passes on the user's own model; otherwise ONNX Runtime fp32.  A requested backend that is
missing or fails falls back to ONNX Runtime fp32 with a one-line warning naming the reason.
Everything here is a pure function of the CPU flags and what is installed, so tests fake both.
"""
from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

from ..errors import FastgenError, InputError
from . import BACKEND_ALIASES, BACKENDS, PRECISIONS, open_session

log = logging.getLogger("fastgen")

BF16_FLAGS = ("avx512_bf16", "amx_bf16")
CHOICES = ("auto", *BACKENDS, *BACKEND_ALIASES)
PRECISION_CHOICES = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class Choice:
    """A backend, a precision and why (printed once by the CLI)."""

    backend: str
    precision: str
    reason: str
    candidate: Optional[tuple[str, str]] = None   # a reduced precision auto wants to verify first

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


def installed(backend: str) -> bool:
    """Whether a backend's runtime library is importable (without importing it)."""
    module = {"ort": "onnxruntime", "openvino": "openvino"}[backend]
    return importlib.util.find_spec(module) is not None


def choose(backend: str = "auto", precision: str = "auto", *, flags: Optional[Iterable[str]] = None,
           available: Optional[Iterable[str]] = None) -> Choice:
    """The setting to open, before any fidelity check.

    ``flags`` (default: this CPU's) and ``available`` (default: the installed backends) make it a
    pure function for tests.  With ``auto`` and a bf16-capable CPU the result is ORT fp32 with
    ``candidate=("openvino", "bf16")``: the caller verifies it and switches only if faithful.
    """
    if backend not in CHOICES:
        raise InputError(f"--backend must be one of {', '.join(CHOICES)} (got {backend!r})")
    if precision not in PRECISION_CHOICES:
        raise InputError(f"--precision must be one of {', '.join(PRECISION_CHOICES)} (got {precision!r})")
    backend = BACKEND_ALIASES.get(backend, backend)
    flags = cpu_flags() if flags is None else frozenset(flags)
    available = {b for b in BACKENDS if installed(b)} if available is None else set(available)
    bf16_flag = native_bf16(flags)
    if backend == "auto":
        if precision in ("auto", "bf16") and bf16_flag and "openvino" in available:
            return Choice("ort", "fp32", f"auto: checking OpenVINO bf16 ({bf16_flag}) against fp32 first",
                          candidate=("openvino", "bf16"))
        if precision == "bf16":
            why = "OpenVINO is not installed" if "openvino" not in available else "this CPU has no native bf16"
            return Choice("ort", "fp32", f"auto: no bf16 here ({why})")
        why = ("this CPU has no native bf16 (AVX512_BF16 or AMX)" if not bf16_flag
               else "OpenVINO is not installed (pip install 'fastgen[openvino]')")
        return Choice("ort", "fp32", f"auto: {why}")
    if backend not in available:
        return Choice("ort", "fp32", f"fallback: the {backend} backend is not installed "
                                     f"(pip install 'fastgen[{backend}]')")
    if precision == "auto":
        precision = "bf16" if backend == "openvino" and bf16_flag else "fp32"
    if precision not in PRECISIONS[backend]:
        raise InputError(f"--precision {precision} is not available with --backend {backend} "
                         f"(it runs {', '.join(PRECISIONS[backend])})")
    reason = "requested"
    if precision == "bf16" and not bf16_flag:
        reason = "requested; this CPU has no native bf16, so OpenVINO emulates it (slow)"
    return Choice(backend, precision, reason)


def _figures(v: dict) -> str:
    return (f"PSNR {v['psnr_db']} dB, worst frame {v['min_frame_psnr_db']} dB, p99 "
            f"{v['p99_face_levels']} levels in the face")


def open_chosen(info, choice: Choice, *, sessions: int, threads: int, providers=None,
                check: Callable[[object, object], dict]) -> tuple[list, Choice, Optional[dict]]:
    """Open ``sessions`` sessions for ``choice``; verify a candidate or a requested reduced
    precision with ``check(reference_fp32, candidate)`` (a :func:`fidelity.verdict`).

    Returns the sessions, the final choice (its reason says what happened) and the verdict.
    """
    def open_n(backend: str, precision: str, n: int) -> list:
        return [open_session(info, backend=backend, precision=precision, threads=threads,
                             providers=providers if backend == "ort" else None) for _ in range(n)]

    try:
        opened = open_n(choice.backend, choice.precision, sessions)
    except FastgenError as exc:
        if choice.backend == "ort":
            raise
        log.warning("%s %s is not available (%s); falling back to ort fp32", choice.backend,
                    choice.precision, exc)
        return open_n("ort", "fp32", sessions), Choice("ort", "fp32", f"fallback: {exc}"), None
    verdict = None
    if choice.candidate is not None:
        backend, precision = choice.candidate
        try:
            candidate = open_n(backend, precision, 1)[0]
        except FastgenError as exc:
            return opened, Choice("ort", "fp32", f"auto: {backend} {precision} could not open ({exc})"), None
        verdict = check(opened[0], candidate)
        if not verdict["faithful"]:
            return opened, Choice("ort", "fp32", f"auto: {backend} {precision} is not faithful on this "
                                                 f"model ({_figures(verdict)})"), verdict
        opened = [candidate, *open_n(backend, precision, sessions - 1)]
        return opened, Choice(backend, precision, f"auto: faithful on this model ({_figures(verdict)})"), verdict
    if choice.precision != "fp32":
        verdict = check(open_n("ort", "fp32", 1)[0], opened[0])
        if not verdict["faithful"]:
            log.warning("%s %s is not faithful on this model (%s); it runs because it was asked for",
                        choice.backend, choice.precision, _figures(verdict))
    return opened, choice, verdict
