"""The generator batch per backend, from a short measurement cached per machine and model.

On the 2-core CPUs measured, batch 1 is as fast as any (the U-Net at 320x320 is memory-bound)
and costs the least latency and memory, so plain ONNX Runtime and OpenVINO on AVX-512 CPUs stay
at batch 1 without measuring.  GPUs, and CPUs with AMX tiles, can gain from bigger batches: there
:func:`calibrated_batch` times a few batch sizes once (about a second each), keeps the smallest
within 5 % of the best throughput, and caches the answer under the fastgen cache keyed by the
machine (CPU model, device, threads), the model's hash and the setting.  ``batch=`` overrides it.
"""
from __future__ import annotations

import hashlib
import time
from typing import Iterable, Optional, Sequence

import numpy as np

from ..cachedir import default_cache_dir, read_record, write_record
from ..models import sha256_file
from . import GPU_BACKENDS
from .choice import cpu_model

GPU_BATCHES = (1, 4, 8, 16, 32)
AMX_BATCHES = (1, 2, 4)
AMX_FLAGS = ("amx_bf16", "amx_int8")
WITHIN = 0.95          # the smallest batch within 5 % of the best throughput wins


def batches_to_try(backend: str, flags: Iterable[str], dynamic_batch: bool) -> Sequence[int]:
    """The batch sizes worth measuring for ``backend`` here (just (1,) where batching never paid)."""
    if not dynamic_batch:
        return (1,)
    if backend in GPU_BACKENDS:
        return GPU_BATCHES
    if backend in ("ort", "openvino") and any(f in set(flags) for f in AMX_FLAGS):
        return AMX_BATCHES
    return (1,)


def pick(fps: dict[int, float]) -> int:
    """The smallest batch whose throughput is within 5 % of the best."""
    best = max(fps.values())
    return min(b for b, v in fps.items() if v >= WITHIN * best)


def measure(session, inputs: np.ndarray, audio: np.ndarray, batches: Sequence[int],
            seconds: float = 1.0) -> dict[int, float]:
    """Frames per second of ``session`` at each batch size (after one warm-up run each)."""
    fps = {}
    for b in batches:
        idx = np.arange(b) % len(inputs)
        feeds = {"input": np.ascontiguousarray(inputs[idx]), "audio": np.ascontiguousarray(audio[idx])}
        session.run(feeds)
        n, t0 = 0, time.perf_counter()
        while True:
            session.run(feeds)
            n += b
            elapsed = time.perf_counter() - t0
            if elapsed >= seconds and n >= 2 * b:
                break
        fps[b] = n / elapsed
    return fps


def calibrated_batch(session, inputs: np.ndarray, audio: np.ndarray, batches: Sequence[int], *,
                     cache: bool = True) -> tuple[int, Optional[dict]]:
    """(batch, the measurement or the cached one); (1, None) when there is nothing to measure."""
    if tuple(batches) == (1,):
        return 1, None
    facts = session.describe()
    machine = f"{cpu_model()}|{facts.get('device', '')}|{session.threads}"
    key = hashlib.sha256(f"{machine}|{sha256_file(session.info.path)}|{session.backend}-{session.precision}"
                         f"|{tuple(batches)}".encode()).hexdigest()[:20]
    path = default_cache_dir() / "calibration" / f"{key}.json"
    known = read_record(path) if cache else None
    if known is not None and isinstance(known.get("batch"), int):
        return known["batch"], known
    fps = measure(session, inputs, audio, batches)
    result = {"batch": pick(fps), "fps": {str(b): round(v, 2) for b, v in fps.items()}, "machine": machine,
              "setting": f"{session.backend}-{session.precision}"}
    if cache:
        write_record(path, result, "the batch calibration")
    return result["batch"], {**result, "cached": False}


MIN_GAIN = 1.05        # a reduced precision must be this much faster than its fallback to be used


class Race:
    """Is a faithful candidate actually faster than the fp32 fallback, here?  Measured once.

    Native bf16 is not always a gain: on a 2-core Xeon with AVX512_BF16 but no AMX, OpenVINO bf16
    ran at 0.77x ORT fp32 (2026-12-02), while on a Zen 4 it ran at 1.6x.  So ``auto`` times the
    two, interleaved (one warm-up, then two rounds of about ``seconds`` each), and keeps the
    candidate only if it is at least 5 % faster.  The answer is cached per machine, model and pair
    of settings; ``cached`` answers without opening the candidate.
    """

    def __init__(self, make_inputs, seconds: float = 0.75):
        self.make_inputs = make_inputs
        self.seconds = seconds
        self._inputs = None

    @property
    def inputs(self):
        if self._inputs is None:
            self._inputs = self.make_inputs()
        return self._inputs

    def _path(self, info, fallback, setting: str):
        machine = f"{cpu_model()}|{fallback.describe().get('device', '')}|{fallback.threads}"
        key = hashlib.sha256(f"{machine}|{sha256_file(info.path)}|{fallback.backend}-{fallback.precision}"
                             f"|{setting}".encode()).hexdigest()[:20]
        return default_cache_dir() / "calibration" / f"race-{key}.json"

    def cached(self, info, setting: str, fallback) -> Optional[dict]:
        return read_record(self._path(info, fallback, setting))

    def __call__(self, fallback, candidate) -> dict:
        inputs, audio = self.inputs
        runs: dict = {"fallback": [], "candidate": []}
        measure(candidate, inputs, audio, (1,), seconds=0.0)          # warm-up (first-run costs)
        for _ in range(2):
            for name, session in (("fallback", fallback), ("candidate", candidate)):
                runs[name].append(measure(session, inputs, audio, (1,), seconds=self.seconds)[1])
        fps = {name: max(v) for name, v in runs.items()}
        speedup = fps["candidate"] / fps["fallback"]
        result = {"setting": f"{candidate.backend}-{candidate.precision}",
                  "fallback": f"{fallback.backend}-{fallback.precision}",
                  "fps": {k: round(v, 2) for k, v in fps.items()}, "speedup": round(speedup, 3),
                  "faster": speedup >= MIN_GAIN}
        # keyed on the fallback's file: the fp32 model the candidate is a setting (or copy) of
        write_record(self._path(fallback.info, fallback, result["setting"]), result, "the speed check")
        return {**result, "cached": False}
