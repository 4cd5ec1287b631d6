"""fastgen: lip-sync video generation from speech audio and an avatar.

Every user-facing failure is a :class:`fastgen.FastgenError`; the CLI prints its one-line message
(naming the option or file the user gave) and exits with status 2, without a traceback.
Arguments and files are checked before the heavy libraries (numpy, ONNX Runtime, PyAV) are
imported, so a mistake is reported at once.
"""
from __future__ import annotations

import argparse
import os
import sys

from ._version import __version__
from .console import ctrl_c_checkpoint, progress_reporter
from .errors import FastgenError, InputError

DESCRIPTION = ("Lip-sync video generation: speech audio in, a talking avatar's frames out "
               "(JPEG files or a video with the sound muxed in).")


# --------------------------------------------------------------------------- checks (no heavy imports)

def _at_least(args: argparse.Namespace, option: str, low: float, *, strict: bool = False) -> None:
    value = getattr(args, option.lstrip("-").replace("-", "_"), None)
    if value is None:
        return
    if value < low or (strict and value == low):
        bound = f"> {low:g}" if strict else f">= {low:g}"
        raise InputError(f"{option} must be {bound} (got {value:g})")


def _existing(path, what: str, *, directory: bool = False) -> None:
    if path is None:
        return
    if not os.path.exists(path):
        raise InputError(f"{path}: no such {what}")
    if directory and not os.path.isdir(path):
        raise InputError(f"{path}: not a directory (an avatar is a SyncTalk_2D dataset, an exported "
                         "package or a fastgen pack directory)")
    if not directory and os.path.isdir(path):
        raise InputError(f"{path}: is a directory, not an {what}" if what[0] in "aeiou"
                         else f"{path}: is a directory, not a {what}")


def _check_engine_args(args: argparse.Namespace) -> None:
    for option in ("--sessions", "--threads", "--batch", "--workers"):
        _at_least(args, option, 1)
    _existing(args.avatar, "avatar directory", directory=True)
    _existing(args.audio, "audio file")
    from .runtime.choice import CHOICES, PRECISION_CHOICES     # light: no runtime library imported

    if args.backend not in CHOICES:
        raise InputError(f"--backend must be one of {', '.join(CHOICES)} (got {args.backend!r})")
    if args.precision not in PRECISION_CHOICES:
        raise InputError(f"--precision must be one of {', '.join(PRECISION_CHOICES)} (got {args.precision!r})")


def _model_source(path, what: str) -> None:
    if path is not None and not str(path).startswith("synthetic"):
        _existing(path, what)


# --------------------------------------------------------------------------- commands

def _cmd_export(args: argparse.Namespace) -> int:
    _model_source(args.generator, "generator checkpoint")
    _model_source(args.audio_encoder, "audio encoder checkpoint")
    from .models import export_models

    manifest = export_models(args.generator, args.output, audio_encoder=args.audio_encoder, mode=args.mode)
    if not args.quiet:
        label = " [synthetic weights]" if manifest.get("synthetic") else ""
        print(f"exported {args.output}: " + ", ".join(sorted(manifest["files"])) + label)
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    _existing(args.source, "avatar directory", directory=True)
    _model_source(args.generator, "generator model")
    _model_source(args.audio_encoder, "audio encoder model")
    import time

    from .avatar import prepare

    start = time.perf_counter()
    avatar = prepare(args.source, args.output, generator=args.generator,
                     audio_encoder=args.audio_encoder, mode=args.mode)
    if not args.quiet:
        w, h = avatar.frame_size
        print(f"prepared {args.output}: {len(avatar)} templates {w}x{h}, mode {avatar.mode}, "
              f"{time.perf_counter() - start:.1f} s")
        from .splice import splittable

        if not splittable(avatar.jpeg(0)):
            print("note: the source JPEGs (kept as they are) have no restart markers to cut them at: "
                  "spliced JPEG output encodes each template into tiles once (cached) and decodes whole templates")
    avatar.close()
    return 0


def _open_avatar(args: argparse.Namespace):
    """The avatar of ``--avatar`` (default: the demo), with ``--generator`` / ``--audio-encoder``
    honoured either way."""
    from . import demo
    from .avatar import Avatar

    generator, encoder = getattr(args, "generator", None), getattr(args, "audio_encoder", None)
    if args.avatar:
        return Avatar.open(args.avatar, generator=generator, audio_encoder=encoder)
    if generator or encoder:
        return Avatar.open(demo.avatar().path, generator=generator, audio_encoder=encoder)
    return demo.avatar()


def _engine(args: argparse.Namespace, avatar):
    from .engine import Generator

    gen = Generator(avatar, threads=args.threads, batch=args.batch, workers=args.workers,
                    blend=getattr(args, "blend", "feather"), sessions=args.sessions,
                    backend=args.backend, precision=args.precision)
    return gen


def _say_backend(args: argparse.Namespace, gen) -> None:
    """The backend choice, once, when the first frame exists (so an early error stays one line)."""
    if not args.quiet and not getattr(args, "json", False):
        print(f"fastgen: backend {gen.choice}", file=sys.stderr)


def _load(path):
    from .audio import load_audio

    return load_audio(path)


def _label(gen) -> str:
    return f" [{gen.weights_label}]" if gen.weights_label else ""


def _cmd_run(args: argparse.Namespace) -> int:
    _check_engine_args(args)
    _at_least(args, "--frames", 1)
    if not 1 <= args.jpeg_quality <= 100:
        raise InputError(f"--jpeg-quality must be 1..100 (got {args.jpeg_quality})")
    _model_source(args.generator, "generator model")
    _model_source(args.audio_encoder, "audio encoder model")
    output = args.output or ("fastgen_demo.mp4" if not (args.avatar or args.audio) else "fastgen_out.mp4")
    from .sinks import open_sink

    open_sink(output, jpeg_quality=args.jpeg_quality, preset=args.preset, crf=args.crf,   # fails before any work
              video_codec=args.video_codec)
    from . import demo

    gen = _engine(args, _open_avatar(args))
    audio = args.audio if args.audio else demo.audio()
    update, close = progress_reporter(args)
    with ctrl_c_checkpoint() as check:
        def progress(done: int, total: int) -> None:
            check()
            if done == 1:
                _say_backend(args, gen)
            if update:
                update(done, total)

        try:
            summary = gen.render(audio, output, count=args.frames, jpeg_quality=args.jpeg_quality,
                                 jpeg_mode=args.jpeg_mode, preset=args.preset, crf=args.crf,
                                 video_codec=args.video_codec, progress=progress)
        finally:
            close()
    print(f"{summary['frames']} frames in {summary['seconds']:.1f} s ({summary['fps']:.1f} fps) "
          f"-> {summary['output']}{_label(gen)}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    _check_engine_args(args)
    _at_least(args, "--frames", 1)
    _at_least(args, "--rounds", 1)
    _model_source(args.generator, "generator model")
    import json

    log = None if (args.json or args.quiet) else (lambda msg: print(f"... {msg}", file=sys.stderr, flush=True))
    if args.backends or args.frame_path:
        from . import demo

        wav = demo.audio() if not args.audio else _load(args.audio)
        if args.frame_path:
            from .benchmarks.frame_path import run_frame_path

            report = run_frame_path(_open_avatar(args), wav, frames=args.frames, rounds=args.rounds, log=log)
            print(json.dumps(report, indent=1) if args.json else "\n".join(
                f"{k}: {v['cpu_ms_per_frame']} CPU ms/frame, {v['fps_1_worker']} fps (1 worker), "
                f"{v['fps_2_workers']} fps (2)" for k, v in report["frame_path"].items()))
            return 0
        from .benchmarks.backends import run_backends

        report = run_backends(_open_avatar(args), wav, rounds=args.rounds, log=log)
        print(json.dumps(report, indent=1) if args.json else
              "\n".join(f"{k}: {v['fps']} fps ({v['speedup_vs_ort_fp32']}x), PSNR {v['psnr_db']} dB"
                        + (" [auto]" if k == report["auto"] else "") if "fps" in v else f"{k}: {v['error']}"
                        for k, v in report["backends"].items()))
        return 0
    from .benchmarks import run_bench

    avatar = _open_avatar(args) if (args.generator or not args.avatar) else args.avatar
    report = run_bench(avatar, args.audio, frames=args.frames, rounds=args.rounds,
                       threads=args.threads, batch=args.batch, workers=args.workers,
                       sessions=args.sessions, backend=args.backend, precision=args.precision, log=log)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(f"model-only {report['model_fps']:.2f} fps | pipeline {report['pipeline_fps']:.2f} fps "
              f"({report['pipeline_vs_model']:.2f}x model, {report['pipeline_vs_baseline']:.2f}x baseline "
              f"{report['baseline_fps']:.2f} fps [{report['baseline_impl']}]; a pipeline at the model "
              f"ceiling would be {report['ceiling_vs_baseline']:.2f}x) | first frame "
              f"{report['first_frame_s']:.2f} s | peak RSS {report['peak_rss_mb']:.0f} MB | "
              f"{report['frames']} frames, median of {report['rounds']} rounds"
              + (f" [{report['weights_label']}]" if report["weights_label"] else ""))
    return 0


def _cmd_stream(args: argparse.Namespace) -> int:
    """Feed a file in small chunks as a live source would, and measure latency and throughput."""
    _check_engine_args(args)
    _at_least(args, "--chunk-ms", 0, strict=True)
    _at_least(args, "--seconds", 0, strict=True)
    _at_least(args, "--delay", 0)
    import json

    from . import demo
    from .audio import load_audio
    from .benchmarks.live import feed, loop_to

    gen = _engine(args, _open_avatar(args))
    wav = load_audio(args.audio) if args.audio else demo.audio()
    if args.seconds:
        wav = loop_to(wav, args.seconds)
    show = None
    if not (args.quiet or args.json):
        def show(frames: int) -> None:
            print(f"frame {frames}", file=sys.stderr, flush=True)
    _say_backend(args, gen)
    report = feed(gen, wav, chunk_ms=args.chunk_ms, realtime=args.realtime, delay=args.delay,
                  silence_db=args.silence_db, on_frames=show)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        lat = report["latency_chunk_to_frame_s"]
        print(f"{report['frames']} frames, {report['fps']:.2f} fps (real-time factor "
              f"{report['real_time_factor']:.2f}), chunk->frame latency median {lat['median']} s p95 "
              f"{lat['p95']} s" + (f", late {report['late_frames']}" if args.realtime else "") + _label(gen))
    return 0


# --------------------------------------------------------------------------- parser

def _add_engine_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--avatar", help="avatar pack, SyncTalk_2D dataset or exported package "
                                    "(default: the built-in demo avatar)")
    p.add_argument("--audio", help="speech audio file, any format soundfile reads (default: the demo clip)")
    p.add_argument("--sessions", type=int, help="generator sessions side by side (default: 1)")
    p.add_argument("--threads", type=int, help="ONNX Runtime threads per session (default: cores / sessions)")
    p.add_argument("--batch", type=int, help="generator batch size (default: 1 on CPUs; measured once "
                   "and cached on GPUs and AMX CPUs)")
    p.add_argument("--workers", type=int, help="post-processing threads (default: one per session)")
    p.add_argument("--blend", choices=("feather", "hard"), default="feather",
                   help="paste the mouth with a feathered edge (default) or hard, exactly like the reference")
    p.add_argument("--backend", default="auto", help="auto (default), ort, openvino, torch, cuda or tensorrt: "
                   "auto picks GPU fp16 where a GPU backend is installed, OpenVINO bf16 where the CPU has "
                   "native bf16, each only if faithful on this model; else ort fp32")
    p.add_argument("--precision", default="auto", help="auto (default), fp32, bf16, fp16 or int8 "
                   "(int8: quantized on the avatar, never picked by auto)")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def _add_model_options(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--generator", help=f"generator model (.onnx or .pth) {what}")
    p.add_argument("--audio-encoder", help=f"audio encoder (.onnx or audio_visual_encoder.pth) {what}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastgen", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"fastgen {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modes = ("ave", "hubert", "wenet")

    p = sub.add_parser("export", help="convert SyncTalk_2D .pth checkpoints to ONNX")
    p.add_argument("--generator", required=True, help="generator checkpoint (.pth), or synthetic[:SEED]")
    p.add_argument("--audio-encoder", help="audio_visual_encoder.pth, or synthetic[:SEED]")
    p.add_argument("--mode", default="ave", choices=modes,
                   help="the generator's audio features: ave (SyncTalk_2D's own encoder, default), "
                        "hubert or wenet")
    p.add_argument("-o", "--output", required=True, help="output directory")
    p.add_argument("--quiet", action="store_true", help="print nothing on success")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("prepare", help="compile an avatar (SyncTalk_2D dataset, exported package or "
                                       "pack) into a fast fastgen avatar pack")
    p.add_argument("source", help="avatar directory")
    p.add_argument("-o", "--output", required=True, help="pack directory to write")
    _add_model_options(p, "(default: the one in SOURCE)")
    p.add_argument("--mode", choices=modes, help="audio mode of a .pth generator (default: ave)")
    p.add_argument("--quiet", action="store_true", help="print nothing on success")
    p.set_defaults(func=_cmd_prepare)

    p = sub.add_parser("run", help="render an avatar speaking an audio file (default: the demo)")
    _add_engine_options(p)
    p.add_argument("-o", "--output", help="a video (.mp4, .mov, .mkv) or a directory for JPEG frames (a "
                                          "name ending in / or without an extension); default: "
                                          "fastgen_demo.mp4, or fastgen_out.mp4 with --avatar/--audio")
    p.add_argument("--frames", type=int, help="render only the first N frames (default: all)")
    p.add_argument("--jpeg-quality", type=int, default=95, help="JPEG quality of frame files, 1-100 (default: 95)")
    p.add_argument("--preset", default="veryfast", help="libx264 preset of videos (default: veryfast; "
                   "ultrafast/superfast use less CPU for much bigger files)")
    p.add_argument("--crf", type=int, default=18, help="libx264 CRF of videos, 0-51 (default: 18)")
    p.add_argument("--video-codec", default="libx264", help="libx264 (default) or a hardware H.264 encoder "
                   "this machine has: h264_nvenc, h264_qsv, h264_amf (their presets/quality follow --preset/--crf)")
    p.add_argument("--jpeg-mode", choices=("auto", "splice", "full"), default="auto",
                   help="auto/splice (default): re-encode only the rows around the face and copy the rest "
                   "from the template's JPEG; full: encode every frame whole")
    _add_model_options(p, "overriding the avatar's")
    p.add_argument("--progress", action="store_true", help="print progress lines even when not on a terminal")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("bench", help="measure model-only, pipeline and baseline FPS in one run")
    _add_engine_options(p)
    p.add_argument("--frame-path", action="store_true",
                   help="everything but the model (a null model): fps at 1 and 2 workers, CPU ms per frame and "
                        "stages, for spliced JPEG, full JPEG and MP4")
    p.add_argument("--backends", action="store_true",
                   help="measure every installed backend x precision: fps and fidelity against ort fp32")
    p.add_argument("--generator", help="generator model (.onnx or .pth) overriding the avatar's")
    p.add_argument("--frames", type=int, default=250, help="frames per pipeline run (default: 250)")
    p.add_argument("--rounds", type=int, default=3,
                   help="interleaved repeats of every measurement; medians are reported (default: 3)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("stream", help="feed audio in small chunks like a live source; report latency")
    _add_engine_options(p)
    p.add_argument("--realtime", action="store_true", help="pace the chunks in real time")
    p.add_argument("--chunk-ms", type=float, default=20.0, help="chunk length in ms (default: 20)")
    p.add_argument("--delay", type=float, default=0.6,
                   help="playout delay for counting late frames, s (default: 0.6)")
    p.add_argument("--seconds", type=float, help="loop the audio to this length (memory soak)")
    p.add_argument("--silence-db", type=float,
                   help="show the template face below this RMS level, dBFS (default: off)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_stream)

    from .batch.command import add_parser as add_render_many     # light: imports nothing heavy
    add_render_many(sub)
    from .serve.command import add_parser as add_serve_parser   # light: aiohttp loads only when run
    add_serve_parser(sub)
    return parser


def _show_warnings() -> None:
    """fastgen's warnings (backend fallbacks, unfaithful precisions) as one stderr line each."""
    import logging

    logger = logging.getLogger("fastgen")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("fastgen: warning: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    _show_warnings()
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
