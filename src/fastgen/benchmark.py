"""``fastgen bench``: the product's speed, measured in one run against two yardsticks.

- ``model_fps``: the generator alone on pre-built inputs (best batch/threads tried) — the ceiling;
- ``pipeline_fps``: fastgen's full pipeline, 1280x720 compositing and JPEG encoding included;
- ``baseline_fps``: a straightforward implementation — one session, batch 1, and per frame
  template fetch -> tensor -> infer -> paste -> JPEG encode, sequentially, using the same fast
  kernels (so the ratio shows the orchestration, not the kernels);
- ``first_frame_s``: from opening the avatar to the first finished frame;
- ``peak_rss_mb``: the process's peak resident memory up to the end of the pipeline run
  (``process_peak_rss_mb`` also counts the extra sessions of the model-only runs).
"""
from __future__ import annotations

import resource
import sys
import time
from typing import Optional

import numpy as np

from . import image as _image
from .engine import Generator
from .runtime import default_threads, load_model


def _peak_rss_mb() -> float:
    """The process's peak resident set so far (VmHWM; ru_maxrss where /proc is missing)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return peak / 1024.0 if sys.platform == "darwin" else peak


def _model_fps(path, batch: int, threads: int, frames: int, sessions: int = 1) -> float:
    """Generator-only frames/s: ``sessions`` sessions side by side, each on its own thread."""
    import threading

    models = [load_model(path, "generator", threads=threads) for _ in range(sessions)]
    rng = np.random.default_rng(0)
    inp = rng.random((batch, 6, 320, 320), dtype=np.float32)
    aud = rng.standard_normal((batch, *models[0].info.inputs["audio"]), dtype=np.float32)
    for m in models:
        m.run({"input": inp, "audio": aud})          # warm-up
    calls = max(1, frames // (batch * sessions))

    def loop(m):
        for _ in range(calls):
            m.run({"input": inp, "audio": aud})

    workers = [threading.Thread(target=loop, args=(m,)) for m in models]
    t = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return calls * batch * sessions / (time.perf_counter() - t)


def _baseline_fps(gen: Generator, wav: np.ndarray, frames: int) -> float:
    """The straightforward port of the reference loop, with fastgen's fast kernels: per frame,
    decode the template JPEG, crop + resize to 328, infer (one session, all cores, batch 1),
    paste back, encode the JPEG — sequentially, no caches, no overlap."""
    import simplejpeg

    av = gen.avatar
    model = load_model(av.generator_path, "generator", threads=default_threads(), spin=True)
    rows = gen._feature_rows(wav, 0, frames)
    order = av.order(frames)
    inp = np.empty((1, 6, 320, 320), np.float32)
    aud = np.empty((1, *gen.audio_shape), np.float32)
    t = time.perf_counter()
    for j in range(frames):
        k = order[j]
        frame = simplejpeg.decode_jpeg(av.jpeg(k), colorspace="BGR")
        x0, y0, x1, y1 = av.box(k)
        crop = _image.resize_bicubic(frame[y0:y1, x0:x1], 328, 328)
        _image.to_generator_input(crop[4:324, 4:324], inp[0])
        rows.window(j, aud[0])
        pred = model.run({"input": inp, "audio": aud})
        _image.from_generator_output(pred[0], crop[4:324, 4:324])
        _image.composite_patch(frame, crop, (x0, y0, x1, y1), feather=gen.feather)
        simplejpeg.encode_jpeg(frame, quality=95, colorspace="BGR", colorsubsampling="420")
    return frames / (time.perf_counter() - t)


def run_bench(avatar=None, audio=None, frames: int = 250, baseline_frames: Optional[int] = None,
              model_frames: int = 48, threads=None, batch=None, workers=None, sessions=None,
              log=None) -> dict:
    """Measure everything in one process; returns the JSON-able report."""
    from . import demo
    from .avatar import Avatar

    say = log or (lambda msg: None)
    t_open = time.perf_counter()
    av = Avatar.open(avatar) if avatar is not None else demo.avatar()
    gen = Generator(av, threads=threads, batch=batch, workers=workers, sessions=sessions)
    wav = gen._wav(audio) if audio is not None else demo.audio()
    total = gen.frame_count(wav)
    frames = min(int(frames), total)

    say(f"first frame ({frames} of {total} frames available)")
    it = gen.frames(wav, count=1)
    next(it)
    first_frame_s = time.perf_counter() - t_open
    it.close()

    say(f"pipeline: {frames} frames, {av.frame_size[0]}x{av.frame_size[1]} JPEG")
    import simplejpeg

    def encode(j, frame):
        return simplejpeg.encode_jpeg(frame, quality=95, colorspace="BGR", colorsubsampling="420")

    t = time.perf_counter()
    n = sum(1 for _ in gen._run(wav, start=0, count=frames, post=encode))
    pipeline_fps = n / (time.perf_counter() - t)
    pipeline_peak = _peak_rss_mb()   # before the model-only runs add sessions of their own

    cores = default_threads()
    say("model-only throughput")
    model = {}
    batches = [1, 4] if gen.model.info.dynamic_batch else [1]
    for b in batches:
        model[f"sessions1_threads{cores}_batch{b}"] = round(
            _model_fps(av.generator_path, b, cores, model_frames), 3)
    if cores > 1:
        model[f"sessions{cores}_threads1_batch1"] = round(
            _model_fps(av.generator_path, 1, 1, model_frames, sessions=cores), 3)
    model_fps = max(model.values())

    nb = min(frames, baseline_frames or max(25, frames // 5))
    say(f"baseline: {nb} frames")
    baseline_fps = _baseline_fps(gen, wav, nb)

    w, h = av.frame_size
    return {
        "model_fps": round(model_fps, 3), "pipeline_fps": round(pipeline_fps, 3),
        "baseline_fps": round(baseline_fps, 3),
        "pipeline_vs_model": round(pipeline_fps / model_fps, 3),
        "pipeline_vs_baseline": round(pipeline_fps / baseline_fps, 3),
        "first_frame_s": round(first_frame_s, 3), "peak_rss_mb": round(pipeline_peak, 1),
        "process_peak_rss_mb": round(_peak_rss_mb(), 1),
        "frames": n, "baseline_frames": nb, "model_runs": model,
        "frame_size": [w, h], "templates": len(av), "synthetic_weights": gen.synthetic,
        "config": gen.config.as_dict(),
    }
