"""``fastgen bench --backends``: every available backend x precision, speed and fidelity, one run.

For each setting: model-only ``fps`` (median of interleaved rounds, batch 1, all cores),
``speedup_vs_ort_fp32``, fidelity against ORT fp32 on the avatar's real crops with real speech
features (``psnr_db``, ``min_frame_psnr_db``, ``p99_face_levels``, ``max_levels``) and
``auto_eligible`` (faithful, and native on this CPU).  ``auto`` is the key ``--backend auto``
would pick.  The full pipeline (1280x720 + JPEG) is measured with ORT fp32 and with the fastest
eligible setting.  Fidelity figures of synthetic or known-answer weights say nothing about a
trained model; the report says so.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Optional

from ..engine import Generator
from ..errors import FastgenError
from ..runtime import BACKENDS, GPU_BACKENDS, PRECISIONS, default_threads, open_session
from ..runtime.calibration import MIN_GAIN
from ..runtime.choice import choose, cpu_flags, cpu_model, gpu_present, installed, native_bf16, native_fp16
from ..runtime.fidelity import BAR, avatar_inputs, compare, faithful, run_all
from . import render_fps


def session_fps(session, inputs, audio, frames: int) -> float:
    """Batch-1 frames per second of one session, cycling over prepared inputs."""
    t = time.perf_counter()
    for i in range(frames):
        k = i % len(inputs)
        session.run({"input": inputs[k:k + 1], "audio": audio[k:k + 1]})
    return frames / (time.perf_counter() - t)




def _auto(report: dict, choice) -> tuple[str, str]:
    """The key ``auto`` picks given the measured report, and why."""
    base = f"{choice.backend}-{choice.precision}"
    why = []
    for backend, precision in choice.candidates:
        key = f"{backend}-{precision}"
        entry = report.get(key, {})
        if not entry.get("auto_eligible"):
            why.append(f"{key} not faithful" if "fps" in entry else f"{key} not measured")
        elif base in report and entry["fps"] < MIN_GAIN * report[base]["fps"]:
            why.append(f"{key} faithful but not faster ({entry['fps'] / report[base]['fps']:.2f}x {base})")
        else:
            return key, f"{key}: faithful on this model, native and faster here"
    if not choice.candidates:
        return base, choice.reason
    return base, f"{'; '.join(why)}: auto stays on {base}"


def _native(backend: str, precision: str, flags, gpu: bool) -> bool:
    if backend in GPU_BACKENDS:
        return gpu or precision in ("fp32", "bf16") and backend == "torch"
    if precision == "bf16":
        return native_bf16(flags) is not None
    if precision == "fp16":
        return native_fp16(flags) is not None
    return True


def _int8_model(gen: Generator):
    from ..runtime.quantize import quantized_generator

    return quantized_generator(gen.generator_info, gen.avatar, gen.step, gen.feature_table)


def run_backends(avatar, wav, *, rounds: int = 3, model_frames: int = 24, pipeline_frames: int = 100,
                 log: Optional[Callable[[str], None]] = None) -> dict:
    say = log or (lambda msg: None)
    threads = default_threads()
    gen = Generator(avatar, threads=threads)                    # ORT fp32: the reference
    table = gen.feature_table(wav)
    inputs, audio = avatar_inputs(gen.step, table, avatar.order(len(table)), gen.audio_shape, count=16)
    flags = cpu_flags()
    bf16_flag = native_bf16(flags)
    gpu = gpu_present()
    settings = {f"{b}-{p}": (b, p) for b in BACKENDS if installed(b) and (gpu or b not in ("cuda", "tensorrt"))
                for p in PRECISIONS[b]}
    sessions, errors = {}, {}
    for key, (b, p) in settings.items():
        if b in GPU_BACKENDS and not gpu:
            # measured once (Xeon, 2 cores): torch on the CPU runs at ~0.2x ORT; it is there for
            # parity tests, and timing it would take longer than everything else here
            errors[key] = "skipped: no GPU here (the torch backend on a CPU is for parity tests)"
            continue
        say(f"opening {key}")
        try:
            model = _int8_model(gen) if p == "int8" else gen.generator_info
            sessions[key] = open_session(model, backend=b, precision=p, threads=threads)
            session_fps(sessions[key], inputs, audio, 2)                 # warm-up
        except FastgenError as exc:
            errors[key] = str(exc)
            sessions.pop(key, None)
    outputs = {key: run_all(s.run, inputs, audio) for key, s in sessions.items()}
    runs: dict = {key: [] for key in sessions}
    for r in range(rounds):
        say(f"round {r + 1}/{rounds}: model-only, {len(sessions)} settings")
        for key, s in sessions.items():
            runs[key].append(session_fps(s, inputs, audio, model_frames))
    base = statistics.median(runs["ort-fp32"])
    report: dict = {}
    for key, (b, p) in settings.items():
        if key in errors:
            report[key] = {"error": errors[key], "auto_eligible": False}
            continue
        figures = compare(outputs["ort-fp32"], outputs[key])
        native = _native(b, p, flags, gpu)
        fps = statistics.median(runs[key])
        facts = sessions[key].describe()
        report[key] = {"fps": round(fps, 2), "fps_runs": [round(v, 2) for v in runs[key]],
                       "speedup_vs_ort_fp32": round(fps / base, 3), **figures,
                       "faithful": faithful(figures), "native": native,
                       "auto_eligible": faithful(figures) and native and p != "int8",
                       "runtime": facts.get("runtime_precision") or facts.get("device")}
    auto_choice = choose("auto", "auto", flags=flags, gpu=gpu)
    auto, auto_reason = _auto(report, auto_choice)
    eligible = [k for k, v in report.items() if v["auto_eligible"]]
    best = max(eligible, key=lambda k: report[k]["fps"]) if eligible else "ort-fp32"
    del sessions, outputs
    pipeline = {}
    for key in dict.fromkeys(["ort-fp32", best, auto]):
        b, p = settings[key]
        say(f"pipeline with {key}, {pipeline_frames} frames")
        g = gen if key == "ort-fp32" else Generator(avatar, threads=threads, backend=b, precision=p)
        pipeline[key] = round(statistics.median(render_fps(g, wav, pipeline_frames) for _ in range(rounds)), 2)
    weights = gen.generator_info.weights                    # fidelity is the generator's
    return {
        "backends": report, "auto": auto, "fastest_faithful": best,
        "auto_reason": auto_reason,
        "pipeline_fps": pipeline,
        "pipeline_speedup": round(pipeline[best] / pipeline["ort-fp32"], 3),
        "cpu": {"model": cpu_model(), "native_bf16": bf16_flag, "native_fp16": native_fp16(flags),
                "amx": sorted(f for f in flags if f.startswith("amx")),
                "threads": threads},
        "gpu": gpu,
        "generator_weights": weights,
        "fidelity_note": (None if weights == "user" else
                          f"{weights} weights: fidelity figures say nothing about a trained model"),
        "bar": BAR, "auto_needs_speedup": MIN_GAIN, "rounds": rounds, "model_frames": model_frames, "pipeline_frames": pipeline_frames,
        "generator": str(gen.generator_info.path),
    }
