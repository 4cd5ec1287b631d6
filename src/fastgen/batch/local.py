"""The local loop: N worker threads on this machine, each with its own loaded generators.

Threads suffice: inference and the kernels release the GIL.  One worker (the default) gives its
generator every core, as ``fastgen run`` does; N workers split the cores between them, so N jobs
render side by side (useful for many short jobs, where a job's start-up is not overlapped).
"""
from __future__ import annotations

import threading
from typing import Callable, Optional

from ..runtime import default_threads
from .dispatch import AvatarQueue
from .report import JobResult
from .worker import JobRunner


def cores_per_worker(workers: int, cores: Optional[int] = None) -> Optional[int]:
    """Each local worker's share of the cores (None: one worker, every core)."""
    if workers <= 1:
        return cores
    return max(1, (cores or default_threads()) // workers)


def run_local(jobs: list, *, workers: int = 1, add: Callable[[JobResult], None],
              cores: Optional[int] = None) -> list:
    """Run ``jobs`` on ``workers`` threads; ``add(result)`` as each ends; results in list order."""
    queue = AvatarQueue(jobs)
    results: list = [None] * len(jobs)
    workers = max(1, min(workers, len(jobs)))
    runners = [JobRunner(f"local-{i}", cores=cores_per_worker(workers, cores)) for i in range(workers)]
    lock = threading.Lock()
    working_on: dict = {}                 # runner name -> engine key of its latest job
    failure: list = []

    def work(runner: JobRunner) -> None:
        try:
            while True:
                with lock:
                    others = [k for name, k in working_on.items() if name != runner.name]
                item = queue.take(runner.loaded, others)
                if item is None:
                    return
                with lock:
                    working_on[runner.name] = item.job.engine_key
                result = runner.run(item.job, item.attempts)
                results[item.index] = result
                add(result)
        except BaseException as exc:      # Ctrl-C, or a bug outside a job: stop the batch
            failure.append(exc)

    if workers == 1:
        work(runners[0])                  # in this thread, so Ctrl-C stops it at once
    else:
        threads = [threading.Thread(target=work, args=(r,), name=f"fastgen-batch-{i}", daemon=True)
                   for i, r in enumerate(runners)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if failure:
        raise failure[0]
    return results
