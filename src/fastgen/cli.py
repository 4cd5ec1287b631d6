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
    except KeyboardInterrupt:
        print("fastgen: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
