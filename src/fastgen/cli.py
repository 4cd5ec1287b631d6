"""Command-line interface: ``fastgen <command>``.

Every user-facing failure is a :class:`fastgen.FastgenError`; the CLI prints its one-line message
and exits non-zero, without a traceback.
"""
from __future__ import annotations

import argparse
import sys

from . import __version__
from .errors import FastgenError


def _cmd_export(args: argparse.Namespace) -> int:
    from .models import export_models

    manifest = export_models(
        args.generator, args.output, audio_encoder=args.audio_encoder, mode=args.mode
    )
    if not args.quiet:
        print(f"exported {args.output}: " + ", ".join(sorted(manifest["files"])))
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
    gen = Generator(avatar, threads=args.threads, batch=args.batch, workers=args.workers, blend=args.blend)
    update, close = _progress(args)
    try:
        summary = gen.render(audio, output, count=args.frames, jpeg_quality=args.jpeg_quality,
                             progress=update)
    finally:
        close()
    label = f" [{avatar.weights_label}]" if getattr(avatar, "weights_label", None) else (
        " [synthetic weights]" if gen.synthetic else "")
    print(f"{summary['frames']} frames in {summary['seconds']:.1f} s ({summary['fps']:.1f} fps) "
          f"-> {summary['output']}{label}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    import json

    from .benchmark import run_bench

    log = None if (args.json or args.quiet) else (lambda msg: print(f"... {msg}", file=sys.stderr, flush=True))
    report = run_bench(args.avatar, args.audio, frames=args.frames, threads=args.threads,
                       batch=args.batch, workers=args.workers, log=log)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(f"model-only {report['model_fps']:.2f} fps | pipeline {report['pipeline_fps']:.2f} fps "
              f"({report['pipeline_vs_model']:.2f}x model, {report['pipeline_vs_baseline']:.2f}x baseline "
              f"{report['baseline_fps']:.2f} fps) | first frame {report['first_frame_s']:.2f} s | "
              f"peak RSS {report['peak_rss_mb']:.0f} MB | {report['frames']} frames"
              + (" [synthetic weights]" if report["synthetic_weights"] else ""))
    return 0


def _add_engine_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--avatar", help="avatar pack, SyncTalk_2D dataset or exported package "
                                    "(default: the embedded demo)")
    p.add_argument("--audio", help="speech audio file (default: the demo clip)")
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: all cores)")
    p.add_argument("--batch", type=int, help="generator batch size (default: 4, or 1 for fixed-batch models)")
    p.add_argument("--workers", type=int, help="post-processing threads (default: cores / 2)")
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
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_bench)
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
