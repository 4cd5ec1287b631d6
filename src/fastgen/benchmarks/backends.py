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
from ..runtime import BACKENDS, PRECISIONS, default_threads, open_session
from ..runtime.choice import choose, cpu_flags, installed, native_bf16
from ..runtime.fidelity import BAR, avatar_inputs, compare, faithful, run_all
from ..sinks import JpegDirectory


def _fps(session, inputs, audio, frames: int) -> float:
    t = time.perf_counter()
    for i in range(frames):
        k = i % len(inputs)
        session.run({"input": inputs[k:k + 1], "audio": audio[k:k + 1]})
    return frames / (time.perf_counter() - t)


def _pipeline_fps(gen: Generator, wav, frames: int) -> float:
    t = time.perf_counter()
    n = sum(1 for f in gen.frames(wav, count=frames) if JpegDirectory.encode_image(f.image, 95))
    return n / (time.perf_counter() - t)


def _auto_reason(auto: str, choice) -> str:
    if auto != "ort-fp32":
        return f"{auto}: faithful on this model and native on this CPU"
    if choice.candidate is None:
        return choice.reason
    return f"{'-'.join(choice.candidate)} is not faithful on this model: auto stays on ort-fp32"


def run_backends(avatar, wav, *, rounds: int = 3, model_frames: int = 24, pipeline_frames: int = 100,
                 log: Optional[Callable[[str], None]] = None) -> dict:
    say = log or (lambda msg: None)
    threads = default_threads()
    gen = Generator(avatar, threads=threads)                    # ORT fp32: the reference
    table = gen.feature_table(wav)
    inputs, audio = avatar_inputs(gen.step, table, avatar.order(len(table)), gen.audio_shape, count=16)
    flags = cpu_flags()
    bf16_flag = native_bf16(flags)
    settings = {f"{b}-{p}": (b, p) for b in BACKENDS if installed(b) for p in PRECISIONS[b]}
    sessions = {}
    for key, (b, p) in settings.items():
        say(f"opening {key}")
        sessions[key] = open_session(gen.generator_info, backend=b, precision=p, threads=threads)
        _fps(sessions[key], inputs, audio, 2)                 # warm-up
    outputs = {key: run_all(s.run, inputs, audio) for key, s in sessions.items()}
    runs: dict = {key: [] for key in settings}
    for r in range(rounds):
        say(f"round {r + 1}/{rounds}: model-only, {len(settings)} settings")
        for key, s in sessions.items():
            runs[key].append(_fps(s, inputs, audio, model_frames))
    base = statistics.median(runs["ort-fp32"])
    report: dict = {}
    for key, (b, p) in settings.items():
        figures = compare(outputs["ort-fp32"], outputs[key])
        native = p != "bf16" or bf16_flag is not None
        fps = statistics.median(runs[key])
        report[key] = {"fps": round(fps, 2), "fps_runs": [round(v, 2) for v in runs[key]],
                       "speedup_vs_ort_fp32": round(fps / base, 3), **figures,
                       "faithful": faithful(figures), "native": native,
                       "auto_eligible": faithful(figures) and native,
                       "runtime": sessions[key].describe().get("runtime_precision")}
    eligible = [k for k, v in report.items() if v["auto_eligible"]]
    best = max(eligible, key=lambda k: report[k]["fps"]) if eligible else "ort-fp32"
    auto_choice = choose("auto", "auto", flags=flags)
    auto = "ort-fp32"
    if auto_choice.candidate and "-".join(auto_choice.candidate) in report \
            and report["-".join(auto_choice.candidate)]["auto_eligible"]:
        auto = "-".join(auto_choice.candidate)
    del sessions, outputs
    pipeline = {}
    for key in dict.fromkeys(["ort-fp32", best, auto]):
        b, p = settings[key]
        say(f"pipeline with {key}, {pipeline_frames} frames")
        g = gen if key == "ort-fp32" else Generator(avatar, threads=threads, backend=b, precision=p)
        pipeline[key] = round(statistics.median(_pipeline_fps(g, wav, pipeline_frames) for _ in range(rounds)), 2)
    weights = gen.generator_info.weights                    # fidelity is the generator's
    return {
        "backends": report, "auto": auto, "fastest_faithful": best,
        "auto_reason": _auto_reason(auto, auto_choice),
        "pipeline_fps": pipeline,
        "pipeline_speedup": round(pipeline[best] / pipeline["ort-fp32"], 3),
        "cpu": {"native_bf16": bf16_flag, "threads": threads},
        "generator_weights": weights,
        "fidelity_note": (None if weights == "user" else
                          f"{weights} weights: fidelity figures say nothing about a trained model"),
        "bar": BAR, "rounds": rounds, "model_frames": model_frames, "pipeline_frames": pipeline_frames,
        "generator": str(gen.generator_info.path),
    }
