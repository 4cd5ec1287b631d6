"""A roomy alternate signal stack for threads where a native library left a small one.

OpenVINO's CPU plugin installs an alternate signal stack of ~20 KB on the thread that compiles a
model.  On CPUs with AMX the kernel's signal frame carries the AMX tile state (8 KB more), and
once a model ran at fp16 or bf16 there, delivering any signal to that thread no longer fits: a
Ctrl-C after ``fastgen run`` (whose ``auto`` compiles OpenVINO candidates on the main thread)
killed the process with SIGSEGV instead of stopping it (seen on a 2-core Xeon with AMX,
2026-12-07; Python's handlers use SA_ONSTACK).  :func:`ensure_roomy` gives the calling thread
a 1 MB alternate stack instead, kept for the life of the process.  Linux only; elsewhere, or
where no alternate stack is set, it does nothing.
"""
from __future__ import annotations

import ctypes
import sys
import threading

ROOMY_BYTES = 1 << 20
SS_ONSTACK, SS_DISABLE = 1, 2

_lock = threading.Lock()
_stacks: dict[int, ctypes.Array] = {}      # thread id -> its stack buffer, never freed


class _StackT(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def current() -> tuple[int, int]:
    """(flags, size) of the calling thread's alternate signal stack; (SS_DISABLE, 0) off Linux."""
    if not sys.platform.startswith("linux"):
        return SS_DISABLE, 0
    old = _StackT()
    if _libc().sigaltstack(None, ctypes.byref(old)) != 0:
        return SS_DISABLE, 0
    return int(old.ss_flags), int(old.ss_size or 0)


def ensure_roomy() -> bool:
    """Replace the calling thread's alternate signal stack with a 1 MB one if it is smaller.

    Returns True when it replaced one.  A thread without an alternate stack (signals run on its
    own stack) or one running on it right now is left alone.
    """
    flags, size = current()
    if flags & (SS_DISABLE | SS_ONSTACK) or size >= ROOMY_BYTES:
        return False
    with _lock:
        buf = ctypes.create_string_buffer(ROOMY_BYTES)
        new = _StackT(ctypes.cast(buf, ctypes.c_void_p), 0, ROOMY_BYTES)
        if _libc().sigaltstack(ctypes.byref(new), None) != 0:
            return False
        _stacks[threading.get_ident()] = buf      # the old buffer belongs to its library
    return True
