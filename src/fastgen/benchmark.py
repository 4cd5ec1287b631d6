"""``fastgen bench``: the product's speed, measured in one run against two yardsticks.

Everything is measured ``rounds`` times, interleaved (pipeline, each model-only configuration,
each baseline, then again), and the median of each is reported, so a slow spell of a shared
machine hits every figure alike instead of one of them.

- ``model_fps``: the generator alone on pre-built inputs, the best of several configurations
  (fastgen's sessions at batch 1 and 4, one single-thread session per core, and a session with
  ONNX Runtime's defaults) — the ceiling no pipeline can pass;
- ``pipeline_fps``: fastgen's full pipeline, audio features, 1280x720 compositing and JPEG
  encoding included;
- ``baseline_fps``: a straightforward implementation: the SyncTalk_2D reference loop ported to
  ONNX Runtime with OpenCV and NumPy (one session with ORT's defaults; per frame: decode the
  template, crop + resize, build the tensors, infer, paste back, encode the JPEG — sequentially).
  Without OpenCV the same loop on fastgen's kernels stands in (``baseline_impl`` says which);
  that loop is always reported too (``baselines["sequential_kernels"]``), so the gain of the
  orchestration alone is visible;
- ``ceiling_vs_baseline``: ``model_fps / baseline_fps``, what a pipeline that hid all of its
  pre- and post-processing would score against the baseline;
- ``first_frame_s``: from opening the avatar to the first finished frame;
- ``peak_rss_mb``: the process's peak resident memory up to the end of the first pipeline run
  (``process_peak_rss_mb`` also counts the model-only and baseline sessions).
"""
from __future__ import annotations

import resource
import statistics
import sys
import threading
import time
from typing import Callable, Optional

import numpy as np

from . import image as _image
from .engine import FEATURE_CONTEXT, Generator
from .runtime import DEFAULT_PROVIDERS, OrtModel, default_threads, load_model


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


def _ort_default_session(path):
    """A generator session exactly as ``onnxruntime.InferenceSession(path)`` gives it."""
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=list(DEFAULT_PROVIDERS))


class _ModelOnly:
    """Generator-only throughput of ``sessions`` side by side, each on its own thread."""

    def __init__(self, run_fns: list, batch: int, audio_shape: tuple):
        rng = np.random.default_rng(0)
        self.run_fns, self.batch = run_fns, batch
        self.feeds = {"input": rng.random((batch, 6, 320, 320), dtype=np.float32),
                      "audio": rng.standard_normal((batch, *audio_shape), dtype=np.float32)}
        for run in run_fns:
            run(self.feeds)                                    # warm-up

    def fps(self, frames: int) -> float:
        calls = max(1, frames // (self.batch * len(self.run_fns)))

        def loop(run):
            for _ in range(calls):
                run(self.feeds)

        workers = [threading.Thread(target=loop, args=(r,)) for r in self.run_fns]
        t = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        return calls * self.batch * len(self.run_fns) / (time.perf_counter() - t)


def _model_configs(gen: Generator) -> dict:
    path, cores, shape = gen.avatar.generator_path, default_threads(), gen.audio_shape

    def ours(threads: int, sessions: int = 1) -> list:
        return [load_model(path, "generator", threads=threads).run for _ in range(sessions)]

    configs = {f"sessions1_threads{cores}_batch1": _ModelOnly(ours(cores), 1, shape)}
    if gen.model.info.dynamic_batch:
        configs[f"sessions1_threads{cores}_batch4"] = _ModelOnly(ours(cores), 4, shape)
    if cores > 1:
        configs[f"sessions{cores}_threads1_batch1"] = _ModelOnly(ours(1, cores), 1, shape)
    ort_default = _ort_default_session(path)
    configs["ort_defaults_batch1"] = _ModelOnly(
        [lambda feeds: ort_default.run(None, feeds)[0]], 1, shape)
    return configs


def _straightforward_fps(gen: Generator, wav: np.ndarray, frames: int, session,
                         emit: Optional[Callable[[np.ndarray], None]] = None) -> float:
    """The reference loop ported plainly: OpenCV + NumPy + one ORT session with its defaults.
    ``emit`` receives each frame instead of the JPEG encoder (for the tests)."""
    import cv2

    def encode(img):
        cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])

    emit = emit or encode
    av = gen.avatar
    t = time.perf_counter()
    table = gen.features(wav, count=frames)
    order = av.order(frames)
    for j in range(frames):
        k = order[j]
        img = cv2.imdecode(np.frombuffer(av.jpeg(k), np.uint8), cv2.IMREAD_COLOR)
        x0, y0, x1, y1 = av.box(k)
        crop = img[y0:y1, x0:x1]
        h, w = crop.shape[:2]
        crop328 = cv2.resize(crop, (328, 328), interpolation=cv2.INTER_CUBIC)
        roi = crop328[4:324, 4:324].copy()
        masked = cv2.rectangle(roi.copy(), (5, 5, 310, 305), (0, 0, 0), -1)
        x = np.concatenate([roi, masked], axis=2).transpose(2, 0, 1)[None].astype(np.float32) / 255.0
        window = np.zeros((2 * FEATURE_CONTEXT, table.shape[1]), np.float32)   # SPEC 3.3
        for r in range(2 * FEATURE_CONTEXT):
            if 0 <= j - FEATURE_CONTEXT + r < len(table):
                window[r] = table[j - FEATURE_CONTEXT + r]
        pred = session.run(None, {"input": x, "audio": window.reshape(1, *gen.audio_shape)})[0][0]
        crop328[4:324, 4:324] = (pred.transpose(1, 2, 0) * 255).astype(np.uint8)
        img[y0:y1, x0:x1] = cv2.resize(crop328, (w, h), interpolation=cv2.INTER_CUBIC)
        emit(img)
    return frames / (time.perf_counter() - t)


def _sequential_kernels_fps(gen: Generator, wav: np.ndarray, frames: int, model,
                            emit: Optional[Callable[[np.ndarray], None]] = None) -> float:
    """The same sequential loop on fastgen's kernels and feature rows: per frame, decode the
    template JPEG, crop + resize to 328, infer (one session, all cores, batch 1), paste back,
    encode the JPEG — no caches, no overlap."""
    import simplejpeg

    def encode(frame):
        simplejpeg.encode_jpeg(frame, quality=95, colorspace="BGR", colorsubsampling="420")

    emit = emit or encode
    av = gen.avatar
    inp = np.empty((1, 6, 320, 320), np.float32)
    aud = np.empty((1, *gen.audio_shape), np.float32)
    t = time.perf_counter()
    rows = gen._feature_rows(wav, 0, frames)
    order = av.order(frames)
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
        emit(frame)
    return frames / (time.perf_counter() - t)


def _warm_up(session, audio_shape: tuple) -> None:
    """One untimed run: a session's first run sizes its memory arena."""
    feeds = {"input": np.zeros((1, 6, 320, 320), np.float32),
             "audio": np.zeros((1, *audio_shape), np.float32)}
    if isinstance(session, OrtModel):
        session.run(feeds)
    else:
        session.run(None, feeds)


def _have_opencv() -> bool:
    try:
        import cv2  # noqa: F401
    except ImportError:
        return False
    return True


def _summary(values: list) -> dict:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3), "runs": [round(v, 3) for v in values]}


def run_bench(avatar=None, audio=None, frames: int = 250, baseline_frames: Optional[int] = None,
              model_frames: int = 48, rounds: int = 3, threads=None, batch=None, workers=None,
              sessions=None, log: Optional[Callable[[str], None]] = None) -> dict:
    """Measure everything in one process; returns the JSON-able report."""
    import simplejpeg

    from . import demo
    from .avatar import Avatar
    from .errors import InputError

    if rounds < 1 or frames < 1:
        raise InputError(f"bench needs rounds >= 1 and frames >= 1 (got {rounds}, {frames})")
    say = log or (lambda msg: None)
    t_open = time.perf_counter()
    if isinstance(avatar, Avatar):
        av = avatar
    else:
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

    def encode(j, frame):
        return simplejpeg.encode_jpeg(frame, quality=95, colorspace="BGR", colorsubsampling="420")

    nb = min(frames, baseline_frames or max(25, frames // 5))
    runs: dict = {"pipeline": []}
    models: dict = {}
    baselines: dict = {}
    pipeline_peak = 0.0
    for r in range(rounds):
        say(f"round {r + 1}/{rounds}: pipeline, {frames} frames, {av.frame_size[0]}x{av.frame_size[1]} JPEG")
        t = time.perf_counter()
        n = sum(1 for _ in gen._run(wav, start=0, count=frames, post=encode))
        runs["pipeline"].append(n / (time.perf_counter() - t))
        if r == 0:
            pipeline_peak = _peak_rss_mb()   # before the yardsticks open sessions of their own
            models = _model_configs(gen)
            baselines["sequential_kernels"] = (
                _sequential_kernels_fps, load_model(av.generator_path, "generator",
                                                    threads=default_threads()))
            if _have_opencv():
                baselines["straightforward_opencv"] = (_straightforward_fps,
                                                       _ort_default_session(av.generator_path))
            for _, session in baselines.values():
                _warm_up(session, gen.audio_shape)
        say(f"round {r + 1}/{rounds}: model-only, {len(models)} configurations")
        for name, m in models.items():
            runs.setdefault(f"model:{name}", []).append(m.fps(model_frames))
        say(f"round {r + 1}/{rounds}: baselines, {nb} frames")
        for name, (fn, session) in baselines.items():
            runs.setdefault(f"baseline:{name}", []).append(fn(gen, wav, nb, session))

    stats = {k: _summary(v) for k, v in runs.items()}
    model_runs = {k.split(":", 1)[1]: s["median"] for k, s in stats.items() if k.startswith("model:")}
    baseline_runs = {k.split(":", 1)[1]: s["median"] for k, s in stats.items() if k.startswith("baseline:")}
    baseline_impl = "straightforward_opencv" if "straightforward_opencv" in baseline_runs else "sequential_kernels"
    model_fps = max(model_runs.values())
    pipeline_fps = stats["pipeline"]["median"]
    baseline_fps = baseline_runs[baseline_impl]
    w, h = av.frame_size
    return {
        "model_fps": model_fps, "pipeline_fps": pipeline_fps, "baseline_fps": baseline_fps,
        "pipeline_vs_model": round(pipeline_fps / model_fps, 3),
        "pipeline_vs_baseline": round(pipeline_fps / baseline_fps, 3),
        "ceiling_vs_baseline": round(model_fps / baseline_fps, 3),
        "baseline_impl": baseline_impl,
        "first_frame_s": round(first_frame_s, 3), "peak_rss_mb": round(pipeline_peak, 1),
        "process_peak_rss_mb": round(_peak_rss_mb(), 1),
        "frames": frames, "baseline_frames": nb, "model_frames": model_frames, "rounds": rounds,
        "model_runs": model_runs, "baselines": baseline_runs, "runs": stats,
        "frame_size": [w, h], "templates": len(av), "synthetic_weights": gen.synthetic,
        "config": gen.config.as_dict(),
    }
