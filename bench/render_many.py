"""Batch benchmark: the same job list through the local loop and through Ray, at equal cores.

    flock /tmp/fastgen-bench.lock python bench/render_many.py [--jobs 8] [--frames 25]
        [--repeats 3] [--output jpeg|mp4] [--cpus N] [--json]

``--jobs`` short jobs (demo avatar, a different speech-like clip each, ``--frames`` frames) are
rendered, from scratch each time (outputs removed, generators loaded again), by:

- ``local``: ``render_many(jobs)``: one worker whose generator has every core (``--cpus``,
  default: the cores this process may use);
- ``ray_1x{N}``: ``render_many(jobs, ray_address=...)`` on a local Ray instance started with
  ``num_cpus=N``: one actor of N CPUs (the same generator configuration as ``local``);
- ``ray_{N}x1``: the same instance, N actors of one CPU each (jobs side by side).

Rounds are interleaved (local, ray, ray, local, ...) so that other load on the machine hits every
variant alike; each reports min / median wall time and frames per second over ``--repeats``.
``cpu_ms_per_frame_median`` is the CPU time the workers' processes spent inside the jobs
(generator loads included) per frame: unlike wall time, other load on a shared machine does not
inflate it, so ``ray_vs_local_cpu_per_frame`` is the steadier measure of Ray's cost per job.
Every run includes loading the generators (and, on Ray, starting the actors), since a batch
pays for both.  Ray's own start-up (``ray.init``) is reported apart, as ``ray_start_s``; so is
each run's actor start (a worker process importing fastgen, numpy, ONNX Runtime), as
``actors_start_s_median``, and ``fps_after_start_*`` are the Ray runs without it (the steady state
a long batch sees; the local loop's process has those libraries loaded already).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        return platform.processor()


def write_jobs(root: Path, jobs: int, frames: int, output: str) -> Path:
    import soundfile as sf

    from fastgen import demo

    seconds = frames / 25 + 0.5                   # a little more audio than the frames need
    lines = []
    for i in range(jobs):
        sf.write(root / f"clip{i}.wav", demo.audio(seconds, seed=100 + i), 16000)
        out = f"out/job{i}.mp4" if output == "mp4" else f"out/job{i}/"
        lines.append(json.dumps({"avatar": "demo", "audio": f"clip{i}.wav", "output": out, "frames": frames}))
    path = root / "jobs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def timed_run(root: Path, jobs: Path, **options) -> dict:
    from fastgen.batch import render_many

    shutil.rmtree(root / "out", ignore_errors=True)
    start = time.perf_counter()
    results = render_many(jobs, **options)
    seconds = time.perf_counter() - start
    bad = [r.error for r in results if r.status != "done"]
    if bad:
        raise SystemExit(f"bench jobs failed: {bad[:3]}")
    frames = sum(r.frames for r in results)
    return {"seconds": seconds, "frames": frames, "engines": sorted({r.engine for r in results}),
            "cpu_s": sum(r.cpu_seconds for r in results)}


def summarize(runs: list) -> dict:
    seconds = [r["seconds"] for r in runs]
    frames = runs[0]["frames"]
    out = {"frames": frames, "seconds_min": round(min(seconds), 3),
           "seconds_median": round(statistics.median(seconds), 3),
           "fps_best": round(frames / min(seconds), 2), "fps_median": round(frames / statistics.median(seconds), 2),
           "seconds_all": [round(s, 3) for s in seconds], "engine": runs[0]["engines"],
           # CPU per frame inside the jobs (generator loads included): what other load on the
           # machine does not inflate, unlike wall time
           "cpu_ms_per_frame_median": round(1000 * statistics.median(r["cpu_s"] for r in runs) / frames, 2)}
    if "actors_s" in runs[0]:
        # the same runs less their actors' start (process + imports), reported as start-up
        after = [r["seconds"] - r["actors_s"] for r in runs]
        out.update({"actors_start_s_median": round(statistics.median(r["actors_s"] for r in runs), 3),
                    "fps_after_start_best": round(frames / min(after), 2),
                    "fps_after_start_median": round(frames / statistics.median(after), 2)})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--frames", type=int, default=25)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--output", choices=("jpeg", "mp4"), default="jpeg")
    ap.add_argument("--cpus", type=int, help="cores for both modes (default: all this process may use)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    import ray

    import fastgen
    from fastgen.runtime import default_threads

    cpus = args.cpus or default_threads()
    fastgen.demo.avatar()                         # built once, outside every timing
    root = Path(tempfile.mkdtemp(prefix="fastgen-bench-many-"))
    load_before = os.getloadavg()
    try:
        jobs = write_jobs(root, args.jobs, args.frames, args.output)
        start = time.perf_counter()
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        ray_start_s = time.perf_counter() - start
        variants = {
            "local": dict(workers=1),
            f"ray_1x{cpus}": dict(ray_address="auto", workers=1, cpus_per_worker=cpus),
            f"ray_{cpus}x1": dict(ray_address="auto", workers=cpus, cpus_per_worker=1),
        }
        if cpus == 1:
            del variants["ray_1x1"]
        runs: dict = {name: [] for name in variants}
        first_actor: list = []
        for rnd in range(args.repeats):
            order = list(variants) if rnd % 2 == 0 else list(reversed(variants))
            for name in order:
                options = dict(variants[name])
                if name.startswith("ray"):
                    timings: dict = {}
                    options["timings"] = timings
                runs[name].append(timed_run(root, jobs, **options))
                if name.startswith("ray"):
                    first_actor.append(timings["first_actor_s"])
                    runs[name][-1]["actors_s"] = timings["first_actor_s"]
                print(f"... round {rnd + 1} {name}: {runs[name][-1]['seconds']:.2f} s", file=sys.stderr, flush=True)
        ray.shutdown()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    results = {name: summarize(r) for name, r in runs.items()}
    local = results["local"]
    report = {
        "bench": "render_many", "cpu": cpu_model(), "cpus": cpus, "python": platform.python_version(),
        "ray": ray.__version__, "fastgen": fastgen.__version__,
        "jobs": args.jobs, "frames_per_job": args.frames, "output": args.output, "repeats": args.repeats,
        "ray_start_s": round(ray_start_s, 3),
        "ray_actor_ready_s": {"min": round(min(first_actor), 3), "median": round(statistics.median(first_actor), 3)},
        "results": results,
        "ray_vs_local_fps_median": {name: round(r["fps_median"] / local["fps_median"], 3)
                                    for name, r in results.items() if name != "local"},
        "ray_vs_local_fps_best": {name: round(r["fps_best"] / local["fps_best"], 3)
                                  for name, r in results.items() if name != "local"},
        "ray_after_start_vs_local_fps_median": {
            name: round(r["fps_after_start_median"] / local["fps_median"], 3)
            for name, r in results.items() if name != "local"},
        # round by round (the variants of one round ran back to back, under the same outside
        # load): the median of local time / Ray time, the steadiest wall-clock ratio
        "ray_vs_local_paired_median": {
            name: round(statistics.median(a["seconds"] / b["seconds"] for a, b in zip(runs["local"], r)), 3)
            for name, r in runs.items() if name != "local"},
        "ray_vs_local_cpu_per_frame": {
            name: round(r["cpu_ms_per_frame_median"] / local["cpu_ms_per_frame_median"], 3)
            for name, r in results.items() if name != "local"},
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        for name, r in results.items():
            print(f"{name}: {r['fps_median']} fps median ({r['fps_best']} best), {r['engine']}")
        print(f"ray start {report['ray_start_s']} s; ray/local {report['ray_vs_local_fps_median']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
