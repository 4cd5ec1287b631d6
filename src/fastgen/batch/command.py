"""``fastgen render-many JOBS``: the CLI side of :func:`fastgen.batch.render_many`.

Options and the job list are checked before anything heavy is imported (Ray included); the exit
status is 0 only when every job's output is complete, 1 when some failed, 2 for a bad command or
job list (every bad line listed).
"""
from __future__ import annotations

import argparse
import sys

from ..errors import InputError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("render-many", help="render a job list (JSON Lines or CSV) here or on a "
                                                  "Ray cluster; resumes where a previous run stopped")
    p.add_argument("jobs", metavar="JOBS", help="job list: .jsonl or .csv, one job per line with avatar "
                   "(pack, dataset or 'demo'), audio and output, and optionally blend, frames, "
                   "jpeg_quality, backend, precision; relative paths are from the list's folder")
    p.add_argument("--ray-address", metavar="ADDR", help="run on Ray: 'auto' (the cluster this node is "
                   "in), HOST:6379, ray://HOST:10001, or 'local' (a new one-machine instance); "
                   "needs fastgen[ray]")
    p.add_argument("--workers", type=int, metavar="N", help="parallel workers: local threads sharing the cores "
                   "(default 1) or Ray actors (default: as many as the cluster's CPUs hold)")
    p.add_argument("--cpus-per-worker", type=float, default=2.0, metavar="C",
                   help="CPUs each Ray actor reserves; its ONNX Runtime threads follow (default: 2)")
    p.add_argument("--retries", type=int, default=2, metavar="K",
                   help="times a job is retried after its Ray worker died (default: 2)")
    p.add_argument("--report", metavar="FILE", help="write one JSON line per job (status, frames, "
                   "seconds, error, attempts, worker, node, engine, cpu_seconds)")
    p.add_argument("--quiet", action="store_true", help="no progress bar, summary only on failure")
    p.set_defaults(func=command)


def _progress_bar(total: int, quiet: bool):
    """``(on_result, close)``: a tqdm bar of jobs with done/failed and frames per second."""
    if quiet or not sys.stderr.isatty():
        return None, lambda: None
    from tqdm import tqdm

    bar = tqdm(total=total, unit="job", file=sys.stderr, dynamic_ncols=True, smoothing=0.1)

    def on_result(result, tally) -> None:
        bar.set_postfix_str(f"ok {tally.done + tally.skipped} failed {tally.failed} | "
                            f"{tally.fps:.1f} fps", refresh=False)
        bar.update(1)

    return on_result, bar.close


def command(args: argparse.Namespace) -> int:
    if args.workers is not None and args.workers < 1:
        raise InputError(f"--workers must be >= 1 (got {args.workers})")
    if args.retries < 0:
        raise InputError(f"--retries must be >= 0 (got {args.retries})")
    if not args.cpus_per_worker > 0:
        raise InputError(f"--cpus-per-worker must be > 0 (got {args.cpus_per_worker:g})")
    from . import Tally, load_ray_backend, read_jobs, render_many

    jobs = read_jobs(args.jobs)                 # every bad line reported before anything runs
    if args.ray_address:
        load_ray_backend()                      # a missing Ray: one line saying how to install it
    on_result, close = _progress_bar(len(jobs), args.quiet)
    tally_seen: list = []

    def track(result, tally: Tally) -> None:
        if not tally_seen:
            tally_seen.append(tally)
        if on_result is not None:
            on_result(result, tally)

    try:
        results = render_many(jobs, ray_address=args.ray_address, workers=args.workers,
                              retries=args.retries, report=args.report, on_result=track,
                              cpus_per_worker=args.cpus_per_worker)
    finally:
        close()
    failed = [r for r in results if not r.ok]
    for r in failed:
        print(f"fastgen: job {r.job.line} ({r.job.output}) failed: {r.error}", file=sys.stderr)
    if not args.quiet or failed:
        s = tally_seen[0].summary()
        print(f"{s['jobs']} jobs: {s['done']} done, {s['skipped']} skipped (already complete), "
              f"{s['failed']} failed; {s['frames']} frames in {s['seconds']:.1f} s ({s['fps']:.1f} fps)"
              + (f"; report {args.report}" if args.report else ""))
    return 1 if failed else 0
