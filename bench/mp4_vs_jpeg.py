"""The whole render to an MP4 against the same render to spliced JPEG files, as JSON.

    python bench/mp4_vs_jpeg.py [--frames 250] [--rounds 3] [--backend ort] [--precision fp32]
                                [--preset veryfast] [--crf 18]

One generator (the demo avatar and clip), ``Generator.render`` into a temporary folder, the two
outputs interleaved round by round; reports each round's fps, the medians and ``mp4_vs_jpeg``
(median MP4 fps / median JPEG fps).  The README's MP4 row comes from here.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=250)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--backend", default="ort")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--preset", default="veryfast")
    p.add_argument("--crf", type=int, default=18)
    args = p.parse_args(argv)

    from fastgen import Generator, demo
    from fastgen.errors import FastgenError
    from fastgen.sinks import check_video_options

    try:
        check_video_options(args.preset, args.crf)
        gen = Generator(demo.avatar(), backend=args.backend, precision=args.precision)
    except FastgenError as exc:
        print(f"mp4_vs_jpeg: {exc}", file=sys.stderr)
        return 2
    wav = demo.audio()
    runs: dict = {"jpeg": [], "mp4": []}
    with tempfile.TemporaryDirectory(prefix="fastgen-mp4-vs-jpeg-") as tmp:
        gen.render(wav, Path(tmp) / "warm", count=25)
        for r in range(args.rounds):
            for kind in runs:
                out = Path(tmp) / (f"run{r}.mp4" if kind == "mp4" else f"run{r}")
                t = time.perf_counter()
                n = gen.render(wav, out, count=args.frames, preset=args.preset, crf=args.crf)["frames"]
                runs[kind].append(round(n / (time.perf_counter() - t), 2))
    jpeg, mp4 = statistics.median(runs["jpeg"]), statistics.median(runs["mp4"])
    print(json.dumps({"jpeg_fps": jpeg, "mp4_fps": mp4, "mp4_vs_jpeg": round(mp4 / jpeg, 3), "runs": runs,
                      "frames": args.frames, "backend": str(gen.choice), "config": gen.config.as_dict(),
                      "preset": args.preset, "crf": args.crf}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
