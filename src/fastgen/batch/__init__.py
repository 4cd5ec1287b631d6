"""Batch rendering: many (avatar, audio) jobs, on this machine or on a Ray cluster.

::

    from fastgen.batch import render_many
    results = render_many("jobs.jsonl")                       # local loop
    results = render_many("jobs.jsonl", ray_address="auto")   # the Ray cluster this node is in
    assert all(r.ok for r in results)

Job lists are described in :mod:`fastgen.batch.jobs`; results and the report in
:mod:`fastgen.batch.report`.  Ray is imported only when ``ray_address`` is given (the
``fastgen[ray]`` extra), so ``import fastgen.batch`` stays light.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Union

from ..errors import InputError
from .jobs import Job, JobListError, as_jobs, read_jobs
from .report import DONE, FAILED, SKIPPED, JobResult, Tally, collector

__all__ = ["DONE", "FAILED", "SKIPPED", "Job", "JobListError", "JobResult", "Tally", "read_jobs",
           "render_many", "load_ray_backend"]

RAY_MISSING = 'Ray is not installed; batches on Ray need it: pip install "fastgen[ray]"'


def load_ray_backend():
    """:mod:`fastgen.batch.ray_backend`, or an :class:`InputError` saying how to install Ray."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise InputError(RAY_MISSING) from None
    from . import ray_backend

    return ray_backend


def render_many(jobs: Union[str, "Path", list], *, ray_address: Optional[str] = None,
                workers: Optional[int] = None, retries: int = 2,
                report: Optional[Union[str, Path]] = None,
                on_result: Optional[Callable[[JobResult, Tally], None]] = None,
                cpus_per_worker: float = 2, timings: Optional[dict] = None) -> list:
    """Render every job; one :class:`JobResult` per job, in the jobs' order.

    ``jobs``: a job list file (``.jsonl`` / ``.csv``), or :class:`Job` objects or dicts.
    Without ``ray_address`` the jobs run here on ``workers`` threads (default 1, which gives its
    generator every core).  With one (``"auto"``, ``"local"``, ``"ray://host:10001"``, or any
    address :func:`ray.init` takes; a process already in a Ray session uses that session), they
    run on ``workers`` Ray actors (default: as many as the cluster's CPUs hold) of
    ``cpus_per_worker`` CPUs each, and a job whose actor dies is retried on another up to
    ``retries`` times.  A job whose output is already complete is skipped, so a rerun resumes.
    A bad job fails alone: its result says why, and the others go on.

    ``report``: a JSON Lines file, one line per job, written as they end.  ``on_result(result,
    tally)`` is called as each job ends (in this thread), e.g. for a progress bar.  ``timings``
    (Ray only), when given, receives Ray's start-up times.
    """
    job_list = as_jobs(jobs)
    if workers is not None and int(workers) < 1:
        raise InputError(f"workers must be >= 1 (got {workers})")
    if int(retries) < 0:
        raise InputError(f"retries must be >= 0 (got {retries})")
    if not cpus_per_worker > 0:
        raise InputError(f"cpus_per_worker must be > 0 (got {cpus_per_worker})")
    backend = load_ray_backend() if ray_address else None
    add, _ = collector(len(job_list), Path(report) if report is not None else None, on_result)
    if backend is None:
        from .local import run_local

        return run_local(job_list, workers=int(workers or 1), add=add)
    return backend.run_on_ray(job_list, address=ray_address, workers=workers,
                              cpus_per_worker=cpus_per_worker, retries=int(retries), add=add,
                              timings=timings)
