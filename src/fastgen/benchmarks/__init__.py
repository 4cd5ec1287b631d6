"""``fastgen bench``: the product's speed, measured in one run against two yardsticks.

Everything is measured ``rounds`` times, interleaved (pipeline, each model-only configuration,
each baseline, then again), and the median of each is reported, so a slow spell of a shared
machine hits every figure alike instead of one of them.

- ``model_fps``: the generator alone on pre-built inputs, the best of several configurations
  (:func:`.yardsticks.model_configs`) — the ceiling no pipeline can pass;
- ``pipeline_fps``: :meth:`Generator.render` into a temporary directory (audio features,
  1280x720 compositing, spliced JPEG, files written): what ``fastgen run`` does;
- ``baseline_fps``: a straightforward implementation (:func:`.yardsticks.straightforward_fps`).
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
import time
from typing import Callable, Optional

from ..engine import Generator
from ..errors import InputError
from ..runtime import default_threads, open_session
from .yardsticks import ModelOnly, model_configs, sequential_kernels_fps, straightforward_fps, warm_up

__all__ = ["peak_rss_mb", "run_bench"]


def peak_rss_mb() -> float:
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


def _have_opencv() -> bool:
    try:
        import cv2  # noqa: F401
    except ImportError:
        return False
    return True


def render_fps(gen: Generator, wav, frames: int) -> float:
    """Frames per second of ``gen.render`` into a temporary JPEG directory: the product's own path
    (features, spliced JPEG, files written), wall time of the whole call."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory(prefix="fastgen-bench-") as tmp:
        t = time.perf_counter()
        n = gen.render(wav, Path(tmp) / "frames", count=frames)["frames"]
        return n / (time.perf_counter() - t)


def _summary(values: list) -> dict:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3), "runs": [round(v, 3) for v in values]}


def run_bench(avatar=None, audio=None, frames: int = 250, baseline_frames: Optional[int] = None,
              model_frames: int = 48, rounds: int = 3, threads=None, batch=None, workers=None,
              sessions=None, backend: str = "ort", precision: str = "fp32",
              log: Optional[Callable[[str], None]] = None) -> dict:
    """Measure everything in one process; returns the JSON-able report."""
    from .. import demo
    from ..avatar import Avatar

    if rounds < 1 or frames < 1:
        raise InputError(f"bench needs rounds >= 1 and frames >= 1 (got {rounds}, {frames})")
    say = log or (lambda msg: None)
    t_open = time.perf_counter()
    if isinstance(avatar, Avatar):
        av = avatar
    else:
        av = Avatar.open(avatar) if avatar is not None else demo.avatar()
    gen = Generator(av, threads=threads, batch=batch, workers=workers, sessions=sessions, backend=backend,
                    precision=precision)
    wav = gen.load_audio(audio) if audio is not None else demo.audio()
    total = gen.frame_count(wav)
    frames = min(int(frames), total)

    say(f"first frame ({frames} of {total} frames available)")
    it = gen.frames(wav, count=1)
    next(it)
    first_frame_s = time.perf_counter() - t_open
    it.close()

    nb = min(frames, baseline_frames or max(25, frames // 5))
    runs: dict = {"pipeline": []}
    models: dict = {}
    baselines: dict = {}
    pipeline_peak = 0.0
    for r in range(rounds):
        say(f"round {r + 1}/{rounds}: pipeline, {frames} frames, {av.frame_size[0]}x{av.frame_size[1]} JPEG")
        runs["pipeline"].append(render_fps(gen, wav, frames))
        if r == 0:
            pipeline_peak = peak_rss_mb()   # before the yardsticks open sessions of their own
            models = model_configs(gen)
            if gen.choice.backend != "ort":                   # the pipeline's own setting, alone
                key = f"{gen.choice.backend}_{gen.choice.precision}_batch1"
                models[key] = ModelOnly([open_session(gen.generator_info, backend=gen.choice.backend,
                                                      precision=gen.choice.precision,
                                                      threads=gen.config.threads).run], 1, gen.audio_shape)
            baselines["sequential_kernels"] = (
                sequential_kernels_fps, open_session(gen.generator_info, threads=default_threads()))
            if _have_opencv():
                baselines["straightforward_opencv"] = (
                    straightforward_fps, open_session(gen.generator_info, ort_defaults=True))
            for _, session in baselines.values():
                warm_up(session, gen.audio_shape)
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
        "process_peak_rss_mb": round(peak_rss_mb(), 1),
        "frames": frames, "baseline_frames": nb, "model_frames": model_frames, "rounds": rounds,
        "model_runs": model_runs, "baselines": baseline_runs, "runs": stats,
        "frame_size": [w, h], "templates": len(av), "weights": gen.weights,
        "weights_label": gen.weights_label,
        "config": gen.config.as_dict(), "backend_choice": str(gen.choice),
    }
