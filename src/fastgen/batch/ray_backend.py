"""Batch rendering on Ray: actors that keep avatars and generator sessions loaded, jobs streamed
to them grouped by avatar, and a job whose actor dies retried on another, up to ``retries`` times.

Imported only when a Ray address is given (the ``fastgen[ray]`` extra).  Each actor reserves
``cpus_per_worker`` CPUs and sizes its ONNX Runtime threads from the CPUs Ray assigned it (Ray sets
``OMP_NUM_THREADS=1`` in workers, which would otherwise say nothing useful).  Actors are spread
over the nodes.  Paths in jobs must mean the same file on every node: a shared filesystem
(docs/scale-out.md).
"""
from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Callable, Optional

import ray
from ray.exceptions import RayActorError

from ..atomic import discard_leftovers
from ..errors import InputError
from .dispatch import AvatarQueue, Pending
from .report import FAILED, JobResult, one_line
from .worker import JobRunner

# environment a worker must share with the driver (where the demo avatar is cached)
SHARED_ENV = ("FASTGEN_CACHE",)
ACTOR_PREFIX = "fastgen-render-"


@ray.remote(max_restarts=0, max_task_retries=0)
class RenderWorker:
    """A Ray actor around one :class:`JobRunner`: its generators stay loaded between jobs."""

    def __init__(self, name: str):
        from .. import engine  # noqa: F401  (numpy, ONNX Runtime, PyAV: loaded while starting up)

        context = ray.get_runtime_context()
        cpus = context.get_assigned_resources().get("CPU", 1.0)
        self.runner = JobRunner(name, cores=max(1, int(cpus)), node=context.get_node_id())

    def run(self, job, attempt: int) -> JobResult:
        return self.runner.run(job, attempt)

    def cores(self) -> int:
        return self.runner.cores


def connect(address: Optional[str]) -> tuple:
    """``(started_here, seconds)``: join the Ray instance at ``address`` ("auto": the cluster this
    node belongs to; "local": a new one on this machine) unless this process is already in one."""
    if ray.is_initialized():
        return False, 0.0
    start = time.perf_counter()
    try:
        ray.init(address=address, log_to_driver=False, include_dashboard=False)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise InputError(f"cannot join Ray at --ray-address {address} ({first.strip()})") from None
    return True, time.perf_counter() - start


def check_fits(cpus_per_worker: float) -> None:
    """An actor larger than every node would wait for its CPUs forever: say so instead."""
    largest = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=0)
    if cpus_per_worker > largest:
        raise InputError(f"cpus_per_worker={cpus_per_worker:g} is more than any node of this Ray "
                         f"cluster has ({largest:g} CPUs)")


def default_workers(cpus_per_worker: float) -> int:
    """As many actors as the cluster's CPUs hold."""
    return max(1, int(ray.cluster_resources().get("CPU", 1) // cpus_per_worker))


class ActorPool:
    """The actors of one batch, by name: spawned, fed one job at a time, replaced when they die."""

    def __init__(self, cpus_per_worker: float):
        self.batch = uuid.uuid4().hex[:8]
        self.spawned = 0
        self.actors: dict = {}          # name -> handle
        self.loaded: dict = {}          # name -> engine keys it has loaded (driver's view)
        env = {k: os.environ[k] for k in SHARED_ENV if k in os.environ}
        self.options = {"num_cpus": cpus_per_worker, "scheduling_strategy": "SPREAD"}
        if env:
            self.options["runtime_env"] = {"env_vars": env}

    def spawn(self) -> str:
        name = f"{ACTOR_PREFIX}{self.batch}-{self.spawned}"
        self.spawned += 1
        self.actors[name] = RenderWorker.options(name=name, **self.options).remote(name)
        self.loaded[name] = []
        return name

    def drop(self, name: str) -> None:
        handle = self.actors.pop(name, None)
        self.loaded.pop(name, None)
        if handle is not None:
            try:
                ray.kill(handle)        # already dead, or half-alive: never let it write again
            except Exception:
                pass

    def shutdown(self) -> None:
        for name in list(self.actors):
            self.drop(name)


def run_on_ray(jobs: list, *, address: Optional[str], workers: Optional[int], cpus_per_worker: float,
               retries: int, add: Callable[[JobResult], None], timings: Optional[dict] = None) -> list:
    """Run ``jobs`` on Ray actors; ``add(result)`` as each ends; results in list order.

    ``timings`` (a dict), when given, receives ``connect_s`` (joining or starting Ray) and
    ``first_actor_s`` (until every first actor was started, with fastgen's libraries imported;
    jobs are sent only then).
    """
    started_here, connect_s = connect(address)
    try:
        return _run(jobs, workers, cpus_per_worker, retries, add, timings, connect_s)
    finally:
        if started_here:
            ray.shutdown()


def _run(jobs, workers, cpus_per_worker, retries, add, timings, connect_s) -> list:
    check_fits(cpus_per_worker)
    queue = AvatarQueue(jobs)
    results: list = [None] * len(jobs)
    pool = ActorPool(cpus_per_worker)
    size = max(1, min(workers or default_workers(cpus_per_worker), len(jobs)))
    inflight: dict = {}                 # object ref -> (actor name, Pending)
    start = time.perf_counter()
    for _ in range(size):
        pool.spawn()
    if timings is not None:
        timings["connect_s"] = round(connect_s, 3)
        ready = [h.cores.remote() for h in pool.actors.values()]
        ray.wait(ready, num_returns=len(ready))     # an actor that failed to start: see its job
        timings["first_actor_s"] = round(time.perf_counter() - start, 3)

    def feed_idle() -> None:
        busy = {name for name, _ in inflight.values()}
        for name in [n for n in pool.actors if n not in busy]:
            others = [pool.loaded[n][-1] for n in pool.actors if n != name and pool.loaded[n]]
            item = queue.take(pool.loaded[name], others)
            if item is None:
                return
            keys = pool.loaded[name]
            if item.job.engine_key in keys:
                keys.remove(item.job.engine_key)
            keys.append(item.job.engine_key)
            ref = pool.actors[name].run.remote(item.job, item.attempts)
            inflight[ref] = (name, item)

    def finish(item: Pending, result: JobResult) -> None:
        results[item.index] = result
        add(result)

    try:
        feed_idle()
        while inflight:
            (ref,), _ = ray.wait(list(inflight), num_returns=1)
            name, item = inflight.pop(ref)
            try:
                finish(item, ray.get(ref))
            except RayActorError as exc:
                pool.drop(name)
                _worker_died(item, exc, retries, queue, finish)
                if len(queue) and len(pool.actors) < size:
                    pool.spawn()        # keep the pool its size while work remains
            except Exception as exc:    # the call itself failed (e.g. a job that cannot be sent)
                finish(item, JobResult(item.job, FAILED, error=one_line(exc), attempts=item.attempts,
                                       worker=name))
            feed_idle()
    finally:
        pool.shutdown()
    return results


def _worker_died(item: Pending, exc: Exception, retries: int, queue: AvatarQueue, finish) -> None:
    """Retry the job of a dead actor elsewhere, or fail it once it has been tried ``1 + retries``
    times.  Its half-written temporary is removed here when the driver can see it, and in any
    case by the next attempt's worker before it starts."""
    discard_leftovers(Path(item.job.output))
    if item.attempts <= retries:
        queue.put_back(item)
        return
    reason = " ".join(str(exc).split())[:200]
    finish(item, JobResult(item.job, FAILED, attempts=item.attempts,
                           error=f"its worker died {item.attempts} time(s); last: {reason}"))
