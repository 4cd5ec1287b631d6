"""Command-line interface: ``fastgen <command>``.

Every user-facing failure is a :class:`fastgen.FastgenError`; the CLI prints its one-line message
and exits non-zero, without a traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading

from ._version import __version__
from .errors import FastgenError


def _cmd_export(args: argparse.Namespace) -> int:
    from .models import export_models

    manifest = export_models(
        args.generator, args.output, audio_encoder=args.audio_encoder, mode=args.mode
    )
    if not args.quiet:
        label = " [synthetic weights]" if manifest.get("synthetic") else ""
        print(f"exported {args.output}: " + ", ".join(sorted(manifest["files"])) + label)
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    import time

    from .avatar import prepare

    start = time.perf_counter()
    avatar = prepare(args.source, args.output, generator=args.generator,
                     audio_encoder=args.audio_encoder, mode=args.mode)
    if not args.quiet:
        w, h = avatar.frame_size
        print(f"prepared {args.output}: {len(avatar)} templates {w}x{h}, mode {avatar.mode}, "
              f"{time.perf_counter() - start:.1f} s")
    avatar.close()
    return 0


def _progress(args: argparse.Namespace):
    """A tqdm bar on a terminal, plain lines with --progress, nothing with --quiet."""
    if args.quiet:
        return None, lambda: None
    if getattr(args, "progress", False):
        def line(done: int, total: int) -> None:
            print(f"frame {done}/{total}", file=sys.stderr, flush=True)

        return line, lambda: None
    if not sys.stderr.isatty():
        return None, lambda: None
    from tqdm import tqdm

    bar = tqdm(total=0, unit="frame", file=sys.stderr, dynamic_ncols=True, smoothing=0.1)

    def update(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
            bar.refresh()
        bar.update(done - bar.n)

    return update, bar.close


@contextlib.contextmanager
def _ctrl_c_checkpoint():
    """Yields ``check()``, which raises KeyboardInterrupt once Ctrl-C has been pressed.

    The usual KeyboardInterrupt still fires at once; the render loop also calls ``check()`` after
    every frame, so an interrupt that a library call caught still stops the run at the next frame.

    A process that inherited SIGINT as *ignored* (a job a non-interactive shell started with
    ``&``) keeps ignoring it, as POSIX shells and CPython intend: Python installs its
    KeyboardInterrupt handler only when SIGINT is at its default, and so do we.  That inherited
    disposition was why one test run once "lost" a Ctrl-C: the suite had been started in the
    background, so the ``fastgen run`` child ignored the signal the test sent.
    """
    pressed = threading.Event()

    def on_sigint(signum, frame):
        pressed.set()
        raise KeyboardInterrupt

    def check() -> None:
        if pressed.is_set():
            raise KeyboardInterrupt

    # signals only reach the main thread; an ignored or custom SIGINT is the caller's choice
    if threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield check
        return
    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield check
    finally:
        signal.signal(signal.SIGINT, previous)


def _cmd_run(args: argparse.Namespace) -> int:
    from . import demo
    from .avatar import Avatar
    from .engine import Generator

    if args.avatar:
        avatar = Avatar.open(args.avatar, generator=args.generator, audio_encoder=args.audio_encoder)
    else:
        avatar = demo.avatar()
    audio = args.audio if args.audio else demo.audio()
    output = args.output or ("fastgen_demo.mp4" if not (args.avatar or args.audio) else "fastgen_out.mp4")
    gen = Generator(avatar, threads=args.threads, batch=args.batch, workers=args.workers, blend=args.blend,
                    sessions=args.sessions)
    update, close = _progress(args)
    with _ctrl_c_checkpoint() as check:
        def progress(done: int, total: int) -> None:
            check()
            if update:
                update(done, total)

        try:
            summary = gen.render(audio, output, count=args.frames, jpeg_quality=args.jpeg_quality,
                                 progress=progress)
        finally:
            close()
    label = f" [{gen.weights_label}]" if gen.weights_label else ""
    print(f"{summary['frames']} frames in {summary['seconds']:.1f} s ({summary['fps']:.1f} fps) "
          f"-> {summary['output']}{label}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    import json

    from .benchmarks import run_bench

    log = None if (args.json or args.quiet) else (lambda msg: print(f"... {msg}", file=sys.stderr, flush=True))
    report = run_bench(args.avatar, args.audio, frames=args.frames, rounds=args.rounds,
                       threads=args.threads, batch=args.batch, workers=args.workers,
                       sessions=args.sessions, log=log)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(f"model-only {report['model_fps']:.2f} fps | pipeline {report['pipeline_fps']:.2f} fps "
              f"({report['pipeline_vs_model']:.2f}x model, {report['pipeline_vs_baseline']:.2f}x baseline "
              f"{report['baseline_fps']:.2f} fps [{report['baseline_impl']}]; a pipeline at the model "
              f"ceiling would be {report['ceiling_vs_baseline']:.2f}x) | first frame "
              f"{report['first_frame_s']:.2f} s | peak RSS {report['peak_rss_mb']:.0f} MB | "
              f"{report['frames']} frames, median of {report['rounds']} rounds"
              + (" [synthetic weights]" if report["synthetic_weights"] else ""))
    return 0


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _cmd_stream(args: argparse.Namespace) -> int:
    """Feed a file in small chunks as a live source would, and measure latency and throughput."""
    import json
    import statistics
    import time

    import numpy as np

    from . import demo
    from .audio import load_audio
    from .avatar import Avatar
    from .engine import Generator
    from .timing import FPS, SAMPLE_RATE

    avatar = Avatar.open(args.avatar) if args.avatar else demo.avatar()
    wav = load_audio(args.audio) if args.audio else demo.audio()
    if args.seconds:   # loop the clip to a given length (memory soak)
        reps = int(np.ceil(args.seconds * SAMPLE_RATE / len(wav)))
        wav = np.tile(wav, reps)[: int(args.seconds * SAMPLE_RATE)]
    gen = Generator(avatar, threads=args.threads, batch=args.batch, workers=args.workers, blend="hard",
                    sessions=args.sessions)
    stream = gen.stream(silence_db=args.silence_db)
    chunk = max(1, int(SAMPLE_RATE * args.chunk_ms / 1000))
    compute_lat, e2e_lat, rss = [], [], []
    frames = late = 0
    t_start = time.perf_counter()
    for i in range(0, len(wav), chunk):
        arrival = t_start + (i + chunk) / SAMPLE_RATE if args.realtime else time.perf_counter()
        if args.realtime:
            time.sleep(max(0.0, arrival - time.perf_counter()))
        out = stream.push(wav[i:i + chunk])
        ready = time.perf_counter()
        for f in out:
            compute_lat.append(ready - arrival)
            if args.realtime:
                e2e_lat.append(ready - (t_start + f.pts))
                late += ready > t_start + f.pts + args.delay
        frames += len(out)
        if frames and (frames // 250) != ((frames - len(out)) // 250):
            rss.append(round(_rss_mb(), 1))
        if not args.quiet and out and not args.json:
            print(f"frame {frames}", file=sys.stderr, flush=True)
    out = stream.flush()
    frames += len(out)
    wall = time.perf_counter() - t_start

    def pct(xs, q):
        return round(statistics.quantiles(xs, n=100)[q - 1], 4) if len(xs) >= 2 else (round(xs[0], 4) if xs else None)

    report = {
        "frames": frames, "audio_s": round(len(wav) / SAMPLE_RATE, 2), "wall_s": round(wall, 2),
        "fps": round(frames / wall, 2), "real_time_factor": round(frames / wall / FPS, 3),
        "chunk_ms": args.chunk_ms, "realtime": bool(args.realtime),
        "latency_chunk_to_frame_s": {"median": pct(compute_lat, 50), "p95": pct(compute_lat, 95)},
        "latency_audio_to_frame_s": ({"median": pct(e2e_lat, 50), "p95": pct(e2e_lat, 95)}
                                     if args.realtime else None),
        "late_frames": late if args.realtime else None, "playout_delay_s": args.delay,
        "dropped_frames": 0, "rss_mb_every_250_frames": rss,
        "synthetic_weights": gen.synthetic, "config": gen.config.as_dict(),
    }
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        lat = report["latency_chunk_to_frame_s"]
        print(f"{frames} frames, {report['fps']:.2f} fps (real-time factor {report['real_time_factor']:.2f}), "
              f"chunk->frame latency median {lat['median']} s p95 {lat['p95']} s"
              + (f", late {late}" if args.realtime else ""))
    return 0


def _add_engine_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--avatar", help="avatar pack, SyncTalk_2D dataset or exported package "
                                    "(default: the embedded demo)")
    p.add_argument("--audio", help="speech audio file (default: the demo clip)")
    p.add_argument("--sessions", type=int, help="generator sessions side by side (default: one per core)")
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads per session (default: cores / sessions)")
    p.add_argument("--batch", type=int, help="generator batch size (default: 1)")
    p.add_argument("--workers", type=int, help="post-processing threads (default: one per session)")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastgen", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"fastgen {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("export", help="convert SyncTalk_2D .pth checkpoints to ONNX")
    p.add_argument("--generator", required=True, help="generator checkpoint (.pth)")
    p.add_argument("--audio-encoder", help="audio_visual_encoder.pth")
    p.add_argument("--mode", default="ave", choices=("ave", "hubert", "wenet"))
    p.add_argument("-o", "--output", required=True, help="output directory")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("prepare", help="compile an avatar (SyncTalk_2D dataset, exported package or "
                                       "pack) into a fast fastgen avatar pack")
    p.add_argument("source", help="avatar directory")
    p.add_argument("-o", "--output", required=True, help="pack directory to write")
    p.add_argument("--generator", help="generator model (.onnx or .pth); default: the one in SOURCE")
    p.add_argument("--audio-encoder", help="audio encoder (.onnx or audio_visual_encoder.pth)")
    p.add_argument("--mode", choices=("ave", "hubert", "wenet"),
                   help="audio mode of a .pth generator (default ave)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_prepare)

    p = sub.add_parser("run", help="render an avatar speaking an audio file (default: the demo)")
    _add_engine_options(p)
    p.add_argument("-o", "--output", help="an .mp4 file or a directory for JPEG frames "
                                          "(default: fastgen_demo.mp4 / fastgen_out.mp4)")
    p.add_argument("--frames", type=int, help="render only the first N frames")
    p.add_argument("--blend", choices=("feather", "hard"), default="feather",
                   help="paste with a feathered edge (default) or hard, exactly like the reference")
    p.add_argument("--jpeg-quality", type=int, default=95)
    p.add_argument("--generator", help="generator model (.onnx/.pth) overriding the avatar's")
    p.add_argument("--audio-encoder", help="audio encoder model (.onnx/.pth) overriding the avatar's")
    p.add_argument("--progress", action="store_true", help="print progress lines even when not on a terminal")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("bench", help="measure model-only, pipeline and baseline FPS in one run")
    _add_engine_options(p)
    p.add_argument("--frames", type=int, default=250)
    p.add_argument("--rounds", type=int, default=3,
                   help="interleaved repeats of every measurement; medians are reported")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("stream", help="feed audio in small chunks like a live source; report latency")
    _add_engine_options(p)
    p.add_argument("--realtime", action="store_true", help="pace the chunks in real time")
    p.add_argument("--chunk-ms", type=float, default=20.0)
    p.add_argument("--delay", type=float, default=0.6, help="playout delay for counting late frames (s)")
    p.add_argument("--seconds", type=float, help="loop the audio to this length (memory soak)")
    p.add_argument("--silence-db", type=float, help="skip the generator below this RMS level (dBFS)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_stream)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except FastgenError as exc:
        print(f"fastgen: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, permission denied while writing ...
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"fastgen: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fastgen: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
