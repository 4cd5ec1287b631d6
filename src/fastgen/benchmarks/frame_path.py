"""``fastgen bench --frame-path``: everything but the models, with null models that cost nothing.

The null sessions return real generator outputs and audio-encoder embeddings computed once
beforehand, so what is measured is the per-frame path a fast backend (a GPU, which runs both
models) leaves: the mel front end and audio windows, the input tensor, the output conversion and
paste, and the encode.  The audio encoder's own CPU cost on this machine's backend is measured
separately (``audio_encoder_cpu_ms_per_frame``) for a CPU-only reading.  For ``splice`` (JPEG, only the band
around the face re-encoded), ``full`` (whole-frame JPEG) and ``mp4`` (H.264 + AAC), in
interleaved rounds (medians): fps with 1 and 2 workers (the one pool that fills inputs, pastes
and encodes, as :meth:`Generator.render` runs it) and their ratio (also as the median of each
round's ratio, ``scaling_paired``), CPU ms per frame (process CPU time over the
1-worker run, all threads) and a sequential per-stage breakdown.
"""
from __future__ import annotations

import itertools
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .. import audio as audio_io
from ..engine import Generator
from ..features import FeatureTable
from ..image import input_batch
from ..runtime.fidelity import avatar_inputs, run_all
from ..scheduler import FrameScheduler
from ..sinks import JpegDirectory, VideoFile
from ..workers import WorkerPool
from ..splice import SplicingEncoder, TileGrid, decode_region, encode, split

MODES = ("splice", "full", "mp4")


class NullSession:
    """A generator session that returns precomputed outputs at once (cycled), for benchmarks."""

    backend, precision, threads = "null", "fp32", 0

    def __init__(self, info, outputs: np.ndarray):
        self.info, self.outputs = info, outputs

    @property
    def providers(self) -> list[str]:
        return ["null"]

    def run(self, feeds) -> np.ndarray:
        n = len(feeds["input"])
        if n <= len(self.outputs):        # a view: a real session's output copy is not its cost
            self.turn = (getattr(self, "turn", -1) + 1) % (len(self.outputs) - n + 1)
            return self.outputs[self.turn:self.turn + n]
        return self.outputs[np.arange(n) % len(self.outputs)]

    def describe(self) -> dict:
        return {"backend": "null", "outputs": len(self.outputs)}


class NullEncoder:
    """An audio encoder that returns one clip's precomputed embeddings, in the order a
    :class:`~fastgen.features.FeatureTable` asks for them (consecutive chunks from its first
    window)."""

    def __init__(self, embeddings: np.ndarray, first: int = 0):
        self.embeddings, self.next = embeddings, first

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        n = len(windows)
        out = self.embeddings[self.next:self.next + n]
        self.next += n
        return out


def null_feature_table(wav: np.ndarray, embeddings: np.ndarray, frames: int) -> FeatureTable:
    """The clip's feature table with the real mel front end and a :class:`NullEncoder`."""
    windows = audio_io.mel_windows(audio_io.log_mel(wav))
    return FeatureTable.from_windows(windows, NullEncoder(embeddings), count=frames)


_RUNS = itertools.count()


def _run(gen: Generator, null: NullSession, wav, frames: int, mode: str, workers: int, out: Path,
         splicer: SplicingEncoder, embeddings: np.ndarray) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one whole run, mel front end included.  Every run
    writes a new output (replacing the last one would time its deletion too); the caller's
    temporary directory takes them all away at the end."""
    name = f"{mode}-{workers}-{next(_RUNS)}"
    t0, c0 = time.perf_counter(), time.process_time()
    with WorkerPool(workers) as pool:
        table = null_feature_table(wav, embeddings, frames)
        sched = FrameScheduler([null], gen.step, table, gen.avatar.order(table.frames.stop), table.frames,
                               batch=1, workers=workers, audio_shape=gen.audio_shape, executor=pool)
        if mode == "mp4":
            from ..audio import SourceAudio

            sink = VideoFile(out / f"{name}.mp4", SourceAudio(wav.reshape(-1, 1), 16000), gen.avatar.frame_size,
                             executor=pool, workers=workers)
        else:
            sink = JpegDirectory(out / name, 95, splicer=splicer if mode == "splice" else None,
                                 workers=workers, executor=pool)
        n = sink.write(sched, total=frames)
    assert n == frames
    return time.perf_counter() - t0, time.process_time() - c0


def _stages(gen: Generator, null: NullSession, wav, frames: int, splicer: SplicingEncoder,
            embeddings: np.ndarray) -> dict:
    """Sequential ms per frame of each stage (one thread, caches as the runs left them), for the
    breakdown; the audio encoder's CPU ms per frame on this machine; a template region's decode."""
    t = time.perf_counter()
    table = null_feature_table(wav, embeddings, frames)
    table.ensure_all()
    times = {"mel_and_windows": (time.perf_counter() - t) / frames}
    keys = ("input_tensor", "audio_window", "template_region", "output_paste", "jpeg_splice", "full_image",
            "jpeg_full")
    times.update(dict.fromkeys(keys, 0.0))
    order = gen.avatar.order(table.frames.stop)
    inp = input_batch(1)
    aud = np.empty((1, *gen.audio_shape), np.float32)
    for j in table.frames:
        k = order[j]
        t0 = time.perf_counter()
        gen.step.fill(k, inp[0])
        t1 = time.perf_counter()
        table.window(j, aud[0])
        t2 = time.perf_counter()
        gen.avatar.region(k, *gen.step.changed(k))     # a decode on a miss; patch then hits the cache
        t3 = time.perf_counter()
        frame = gen.step.frame(j, 0.0, k, null.run({"input": inp})[0])
        t4 = time.perf_counter()
        splicer.encode_frame(frame)
        t5 = time.perf_counter()
        image = frame.image
        t6 = time.perf_counter()
        encode(image, 95)
        t7 = time.perf_counter()
        for key, dt in zip(keys, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5, t7 - t6)):
            times[key] += dt / frames
    windows = audio_io.mel_windows(audio_io.log_mel(wav))[:frames]
    c = time.process_time()
    gen.encode_windows(windows)
    encoder = (time.process_time() - c) / len(windows)
    k = order[0]
    x0, y0, x1, y1 = gen.step.changed(k)
    grid = TileGrid.of(split(gen.avatar.jpeg(k))[0])
    box = grid.aligned(x0, y0, x1, y1) if grid is not None else (x0, y0, x1, y1)
    t = time.perf_counter()
    for _ in range(20):
        decode_region(gen.avatar.jpeg(k), *box)
    miss = (time.perf_counter() - t) / 20
    return {"stages_ms": {k: round(v * 1000, 3) for k, v in times.items()},
            "audio_encoder_cpu_ms_per_frame": round(encoder * 1000, 3),
            "template_region_decode_ms": round(miss * 1000, 3)}


def run_frame_path(avatar, wav, *, frames: int = 250, rounds: int = 3,
                   log: Optional[Callable[[str], None]] = None) -> dict:
    say = log or (lambda msg: None)
    gen = Generator(avatar)
    table = gen.feature_table(wav)
    table.ensure_all()
    embeddings = table.table()[1:-1]                    # row r holds window r - 1
    inputs, audio = avatar_inputs(gen.step, table, gen.avatar.order(len(table)), gen.audio_shape, count=8)
    null = NullSession(gen.generator_info, run_all(gen.sessions[0].run, inputs, audio))
    splicer = SplicingEncoder(gen.avatar.jpeg, gen.avatar.frame, 95, template_region=gen.avatar.region)
    runs: dict = {(m, w): [] for m in MODES for w in (1, 2)}
    with tempfile.TemporaryDirectory(prefix="fastgen-frame-path-") as tmp:
        run = lambda n, mode, w: _run(gen, null, wav, n, mode, w, Path(tmp), splicer, embeddings)  # noqa: E731
        # warm-up: a whole splice run caches every template region and splice plan the rounds
        # use (else round 1's first run pays ~0.4 ms a template for them); the other modes load
        # their encoders
        for mode in MODES:
            run(frames if mode == "splice" else min(frames, 30), mode, 2)
        for r in range(rounds):
            for (mode, workers) in runs:
                say(f"round {r + 1}/{rounds}: {mode}, {workers} worker(s), {frames} frames")
                runs[(mode, workers)].append(run(frames, mode, workers))
    stages = _stages(gen, null, wav, min(frames, 100), splicer, embeddings)
    report: dict = {}
    for mode in MODES:
        one, two = runs[(mode, 1)], runs[(mode, 2)]
        fps1 = statistics.median(frames / w for w, _ in one)
        fps2 = statistics.median(frames / w for w, _ in two)
        own = {"splice": ("jpeg_splice",), "full": ("full_image", "jpeg_full"), "mp4": ("full_image",)}[mode]
        report[mode] = {
            "cpu_ms_per_frame": round(statistics.median(c for _, c in one) / frames * 1000, 3),
            "cpu_ms_per_frame_2_workers": round(statistics.median(c for _, c in two) / frames * 1000, 3),
            "fps_1_worker": round(fps1, 1), "fps_2_workers": round(fps2, 1),
            "scaling_1_to_2": round(fps2 / fps1, 3),
            # each round's 1- and 2-worker runs back to back: the median of their ratios, which a
            # machine whose speed drifts between rounds (a shared VM) moves less than the above
            "scaling_paired": round(statistics.median((w1 / w2) for (w1, _), (w2, _) in zip(one, two)), 3),
            "fps_runs": {"1": [round(frames / w, 1) for w, _ in one], "2": [round(frames / w, 1) for w, _ in two]},
            "stages_ms": {k: v for k, v in stages["stages_ms"].items()
                          if k not in ("jpeg_splice", "full_image", "jpeg_full") or k in own},
        }
    return {"frame_path": report, "frames": frames, "rounds": rounds, "splice_counts": dict(splicer.counts),
            "audio_encoder_cpu_ms_per_frame": stages["audio_encoder_cpu_ms_per_frame"],
            "template_region_decode_ms": stages["template_region_decode_ms"],
            "frame_size": list(gen.avatar.frame_size), "null_outputs": len(null.outputs),
            "note": ("null models: precomputed generator outputs and audio-encoder embeddings (the "
                     "models cost nothing here; a GPU runs both); audio_encoder_cpu_ms_per_frame is "
                     "that model's own CPU cost on this machine's backend; template regions are "
                     "decoded once a template (template_region_decode_ms) and then cached")}


__all__ = ["NullEncoder", "NullSession", "null_feature_table", "run_frame_path"]
