"""The PyTorch backend on a GPU: model-only fps, fidelity against ORT fp32 and pipeline fps, as JSON.

Prepared for a session that has a GPU machine (one run, a few minutes): for each precision
(fp16, bf16) and batch (1, 8, 32) it measures model-only fps of ``--backend torch``, the fidelity
of its output against ONNX Runtime fp32 on the CPU (the avatar's own crops with real speech
features, the bar of :mod:`fastgen.runtime.fidelity`), and the full pipeline (1280x720 frames +
JPEG encoded on every core) through ``Generator(backend="torch")``.  It also runs on a CPU
(``--device cpu --precisions fp32,bf16 --batches 1,2``), which is how it is checked without a GPU.

    python bench/gpu.py [--generator trained.onnx] [--audio speech.wav] [--frames 200] [-o out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def model_fps(session, inputs, audio, batch: int, seconds: float) -> float:
    import numpy as np

    idx = np.arange(batch) % len(inputs)
    feeds = {"input": np.ascontiguousarray(inputs[idx]), "audio": np.ascontiguousarray(audio[idx])}
    session.run(feeds)                         # binds the batch (and captures its CUDA graph)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n < 3 * batch:
        session.run(feeds)
        n += batch
    return n / (time.perf_counter() - t0)


def pipeline_fps(gen, wav, frames: int, encoders: int) -> float:
    from fastgen.sinks import JpegDirectory

    with ThreadPoolExecutor(encoders) as pool:          # simplejpeg releases the GIL
        t0 = time.perf_counter()
        n = sum(1 for _ in pool.map(lambda f: JpegDirectory.encode_image(f.image, 95),
                                    gen.frames(wav, count=frames)))
    return n / (time.perf_counter() - t0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--generator", help="generator ONNX (default: the demo avatar's)")
    p.add_argument("--audio", help="speech for the features (default: the demo clip)")
    p.add_argument("--device", default=None, help="cuda:0 (default when available) or cpu")
    p.add_argument("--precisions", default="fp16,bf16")
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--seconds", type=float, default=3.0, help="model-only time per setting")
    p.add_argument("--frames", type=int, default=200, help="pipeline frames per setting")
    p.add_argument("-o", "--output", help="also write the JSON here")
    args = p.parse_args(argv)

    import torch

    from fastgen import Avatar, Generator, demo
    from fastgen.audio import load_audio
    from fastgen.runtime import default_threads
    from fastgen.runtime.fidelity import avatar_inputs, compare, faithful, run_all
    from fastgen.runtime.pytorch import open_torch

    device = args.device or ("cuda:0" if torch.cuda.is_available() else "cpu")
    avatar = demo.avatar()
    if args.generator:
        avatar = Avatar.open(avatar.path, generator=args.generator)
    wav = load_audio(args.audio) if args.audio else demo.audio()
    cores = default_threads()
    ref_gen = Generator(avatar, threads=cores)
    table = ref_gen.feature_table(wav)
    inputs, audio = avatar_inputs(ref_gen.step, table, avatar.order(len(table)), ref_gen.audio_shape, count=32)
    reference = run_all(ref_gen.sessions[0].run, inputs, audio)
    info = ref_gen.generator_info
    report = {"device": torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu",
              "torch": torch.__version__, "cores": cores, "generator_weights": info.weights,
              "ort_fp32_cpu_fps": round(model_fps(ref_gen.sessions[0], inputs, audio, 1, args.seconds), 2),
              "settings": {}}
    batches = [int(b) for b in args.batches.split(",")]
    for precision in args.precisions.split(","):
        session = open_torch(info, threads=cores, precision=precision, device=device)
        out = run_all(session.run, inputs, audio)
        figures = compare(reference, out)
        entry = {**figures, "faithful": faithful(figures), "model_fps": {}, "pipeline_fps": {}}
        for b in batches:
            entry["model_fps"][str(b)] = round(statistics.median(
                model_fps(session, inputs, audio, b, args.seconds / 3) for _ in range(3)), 1)
        for b in batches:
            gen = Generator(avatar, backend="torch", precision=precision, batch=b, workers=cores)
            pipeline_fps(gen, wav, min(args.frames, 2 * b + 4), cores)           # warm-up
            entry["pipeline_fps"][str(b)] = round(pipeline_fps(gen, wav, args.frames, cores), 1)
            entry.setdefault("engine", gen.config.as_dict())
            del gen
        entry["describe"] = session.describe()
        report["settings"][precision] = entry
    text = json.dumps(report, indent=1)
    print(text)
    if args.output:
        Path(args.output).write_text(text)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
