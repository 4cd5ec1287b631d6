"""The terminal side of the CLI: progress output and Ctrl-C."""
from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading


def progress_reporter(args: argparse.Namespace):
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
def ctrl_c_checkpoint():
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
