"""``fastgen stream``: feed audio in small chunks as a live source would; measure the stream.

Chunk -> frame latency (compute), audio -> frame latency and late frames when paced in real
time, throughput and resident memory every 250 frames.
"""
from __future__ import annotations

import os
import statistics
import time
from typing import Callable, Optional

import numpy as np

from ..timing import FPS, SAMPLE_RATE


def rss_mb() -> float:
    """The process's current resident set."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _percentile(xs: list, q: int) -> Optional[float]:
    if len(xs) >= 2:
        return round(statistics.quantiles(xs, n=100)[q - 1], 4)
    return round(xs[0], 4) if xs else None


def loop_to(wav: np.ndarray, seconds: float) -> np.ndarray:
    """The clip repeated to ``seconds`` (a memory soak)."""
    reps = int(np.ceil(seconds * SAMPLE_RATE / len(wav)))
    return np.tile(wav, reps)[: int(seconds * SAMPLE_RATE)]


def feed(gen, wav: np.ndarray, *, chunk_ms: float, realtime: bool, delay: float,
         silence_db: Optional[float] = None, on_frames: Optional[Callable[[int], None]] = None) -> dict:
    """Push ``wav`` through ``gen.stream()`` in ``chunk_ms`` chunks; returns the report."""
    stream = gen.stream(silence_db=silence_db)
    chunk = max(1, int(SAMPLE_RATE * chunk_ms / 1000))
    compute_lat, e2e_lat, rss = [], [], []
    frames = late = 0
    t_start = time.perf_counter()
    for i in range(0, len(wav), chunk):
        arrival = t_start + (i + chunk) / SAMPLE_RATE if realtime else time.perf_counter()
        if realtime:
            time.sleep(max(0.0, arrival - time.perf_counter()))
        out = stream.push(wav[i:i + chunk])
        ready = time.perf_counter()
        for f in out:
            compute_lat.append(ready - arrival)
            if realtime:
                e2e_lat.append(ready - (t_start + f.pts))
                late += ready > t_start + f.pts + delay
        frames += len(out)
        if frames and (frames // 250) != ((frames - len(out)) // 250):
            rss.append(round(rss_mb(), 1))
        if out and on_frames:
            on_frames(frames)
    frames += len(stream.flush())
    wall = time.perf_counter() - t_start
    return {
        "frames": frames, "audio_s": round(len(wav) / SAMPLE_RATE, 2), "wall_s": round(wall, 2),
        "fps": round(frames / wall, 2), "real_time_factor": round(frames / wall / FPS, 3),
        "chunk_ms": chunk_ms, "realtime": bool(realtime),
        "latency_chunk_to_frame_s": {"median": _percentile(compute_lat, 50), "p95": _percentile(compute_lat, 95)},
        "latency_audio_to_frame_s": ({"median": _percentile(e2e_lat, 50), "p95": _percentile(e2e_lat, 95)}
                                     if realtime else None),
        "late_frames": late if realtime else None, "playout_delay_s": delay,
        "dropped_frames": 0, "rss_mb_every_250_frames": rss,
        "weights": gen.weights, "weights_label": gen.weights_label, "config": gen.config.as_dict(),
        "backend_choice": str(gen.choice),
    }
