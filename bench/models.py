"""Model-layer benchmark: synthetic build time, generator size, and ONNX Runtime throughput.

    python bench/models.py [--json] [--mode ave] [--repeats 5]

Throughput is model-only (one session.run on prepared inputs), frames/s = batch / seconds per run,
for batch 1 and 4 at 1 and 2 intra-op threads; min and median over the repeats.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import tempfile  # noqa: E402

import numpy as np  # noqa: E402

from fastgen.models import (build_audio_encoder, build_generator, generator_inputs,  # noqa: E402
                            inspect, synthetic_weights)
from fastgen.runtime import open_session  # noqa: E402

TARGETS = {"synthetic_build_s_max": 3.0, "generator_mib_approx": 46.0}


def build(mode: str) -> tuple[dict, bytes]:
    start = time.perf_counter()
    gen_weights = synthetic_weights("generator", mode)
    gen_bytes = build_generator(gen_weights, mode).SerializeToString()
    build_audio_encoder(synthetic_weights("audio_encoder")).SerializeToString()
    seconds = time.perf_counter() - start
    params = sum(v.size for k, v in gen_weights.items()
                 if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    return {"synthetic_build_s": round(seconds, 3), "generator_mib": round(len(gen_bytes) / 2**20, 2),
            "generator_params": int(params)}, gen_bytes


def throughput(info, mode: str, batch: int, threads: int, repeats: int) -> dict:
    sess = open_session(info, threads=threads)       # fastgen's inference seam, as the engine opens it
    image, audio = generator_inputs(np.random.default_rng(0), batch, mode)
    feeds = {"input": image, "audio": audio}
    sess.run(feeds)  # warm-up: allocations and kernel selection
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sess.run(feeds)
        times.append(time.perf_counter() - start)
    return {"batch": batch, "threads": threads,
            "fps_best": round(batch / min(times), 2), "fps_median": round(batch / statistics.median(times), 2),
            "ms_per_run_min": round(1e3 * min(times), 1), "ms_per_run_median": round(1e3 * statistics.median(times), 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    parser.add_argument("--mode", default="ave", choices=("ave", "hubert", "wenet"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    result, gen_bytes = build(args.mode)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "generator.onnx"
        path.write_bytes(gen_bytes)
        info = inspect(path, expect="generator")
        result.update(mode=args.mode, backend=open_session(info).describe()["backend_version"],
                      cpu_count=os.cpu_count(), machine=platform.machine(), repeats=args.repeats,
                      targets=TARGETS)
        result["meets_build_target"] = result["synthetic_build_s"] <= TARGETS["synthetic_build_s_max"]
        result["throughput"] = [throughput(info, args.mode, b, t, args.repeats)
                                for t in (1, 2) for b in (1, 4)]
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"synthetic build (generator + encoder): {result['synthetic_build_s']:.2f} s "
          f"(target ≤ {TARGETS['synthetic_build_s_max']} s)")
    print(f"generator: {result['generator_mib']} MiB, {result['generator_params'] / 1e6:.2f} M params")
    for row in result["throughput"]:
        print(f"batch {row['batch']} threads {row['threads']}: {row['fps_median']:6.2f} frames/s median, "
              f"{row['fps_best']:6.2f} best")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
