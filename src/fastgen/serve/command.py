"""The ``fastgen serve`` subcommand: options checked first, heavy imports after."""
from __future__ import annotations

import argparse
import importlib.util
import os
from pathlib import Path

from ..errors import InputError

EXTRA_HINT = 'fastgen serve needs the serve extra: pip install "fastgen[serve]"'


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("serve", help="a live talking avatar in the browser over WebRTC "
                                            "(needs the serve extra)")
    p.add_argument("--avatar", action="append", default=[], metavar="PACK",
                   help="an avatar pack, dataset or exported package; repeat for several (default: the demo)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8080, help="port (default: 8080)")
    p.add_argument("--max-sessions", type=int, default=4, help="live sessions at once; more get 503 (default: 4)")
    p.add_argument("--token", help="require 'Authorization: Bearer TOKEN' on every API call "
                                   "(the page takes it once as /?token=TOKEN)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest speak upload, MB (default: 20)")
    p.add_argument("--max-seconds", type=float, default=300.0, help="longest utterance, s (default: 300)")
    p.add_argument("--backend", default="auto", help="as for fastgen run (default: auto)")
    p.add_argument("--precision", default="auto", help="as for fastgen run (default: auto)")
    p.add_argument("--quiet", action="store_true", help="no startup lines")
    p.set_defaults(func=run)


def check(args: argparse.Namespace) -> None:
    """Every option, before anything heavy is imported."""
    if not 0 <= args.port <= 65535:
        raise InputError(f"--port must be 0-65535 (got {args.port})")
    for option, value in (("--max-sessions", args.max_sessions), ("--max-upload-mb", args.max_upload_mb),
                          ("--max-seconds", args.max_seconds)):
        if value <= 0:
            raise InputError(f"{option} must be > 0 (got {value:g})")
    if args.token is not None and not args.token.strip():
        raise InputError("--token must not be empty")
    for path in args.avatar:
        if not os.path.isdir(path):
            raise InputError(f"{path}: no such avatar directory")
    from ..runtime.choice import CHOICES, PRECISION_CHOICES     # light: no runtime library imported

    if args.backend not in CHOICES:
        raise InputError(f"--backend must be one of {', '.join(CHOICES)} (got {args.backend!r})")
    if args.precision not in PRECISION_CHOICES:
        raise InputError(f"--precision must be one of {', '.join(PRECISION_CHOICES)} (got {args.precision!r})")
    if any(importlib.util.find_spec(name) is None for name in ("aiohttp", "aiortc")):
        raise InputError(EXTRA_HINT)


def open_generators(paths, backend: str = "auto", precision: str = "auto") -> dict:
    """Avatar name -> Generator, one model copy each (a single generator session)."""
    from .. import demo
    from ..avatar import Avatar
    from ..engine import Generator

    generators = {}
    for path in paths or [None]:
        avatar = demo.avatar() if path is None else Avatar.open(path)
        name = "demo" if path is None else Path(path).resolve().name
        while name in generators:
            name += "-2"
        generators[name] = Generator(avatar, sessions=1, backend=backend, precision=precision)
    return generators


def run(args: argparse.Namespace) -> int:
    check(args)
    from aiohttp import web

    from .app import ServeOptions, create_app
    from .tracks import is_loopback, keep_media_on_loopback

    generators = open_generators(args.avatar, args.backend, args.precision)
    if is_loopback(args.host):
        keep_media_on_loopback()
    options = ServeOptions(max_sessions=args.max_sessions, token=args.token,
                           max_upload_bytes=int(args.max_upload_mb * 2**20), max_seconds=args.max_seconds)
    app = create_app(generators, options)
    if not args.quiet:
        for name, gen in generators.items():
            label = f" [{gen.weights_label}]" if gen.weights_label else ""
            print(f"avatar {name}: {gen.avatar.frame_size[0]}x{gen.avatar.frame_size[1]}, {gen.choice}{label}")
        query = "?token=<token>" if args.token else ""
        print(f"fastgen serve: http://{args.host}:{args.port}/{query}  (Ctrl-C stops)", flush=True)
    web.run_app(app, host=args.host, port=args.port, print=None)
    return 0
