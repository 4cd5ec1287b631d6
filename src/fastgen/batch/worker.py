"""One worker's side of a batch: loaded generators, reused across jobs, and one job run at a time.

The same :class:`JobRunner` runs in a local worker thread and inside a Ray actor, so both modes
render, skip and fail jobs identically.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from pathlib import Path
from typing import Optional

from ..atomic import discard_leftovers
from ..sinks import output_kind
from .jobs import DEMO, Job
from .report import DONE, FAILED, SKIPPED, JobResult, one_line

# generators kept per worker: jobs come grouped by avatar, so one is used at a time; the second
# spares a reload when a worker alternates between two avatars near the end of a batch
KEEP_GENERATORS = 2


def output_complete(output: str) -> bool:
    """An output exists only once complete (written under a temporary name, then renamed); a
    JPEG directory also needs a frame in it (a folder the user made beforehand is not output)."""
    path = Path(output)
    if output_kind(output) == "jpeg":
        return path.is_dir() and any(path.glob("frame_*.jpg"))
    return path.is_file()


class JobRunner:
    """Renders jobs with a small cache of :class:`fastgen.Generator` objects, one per avatar and
    engine options (:attr:`Job.engine_key`).

    ``cores`` is the CPU share of this worker (``Generator(cores=)``): all cores of the process by
    default; a Ray actor passes the CPUs Ray assigned it.
    """

    def __init__(self, name: str, *, cores: Optional[int] = None, node: str = ""):
        self.name = name
        self.cores = cores
        self.node = node
        self.generators: "OrderedDict[tuple, object]" = OrderedDict()

    def generator(self, job: Job):
        """The loaded generator for ``job`` (opened on first use, least recently used dropped)."""
        key = job.engine_key
        if key in self.generators:
            self.generators.move_to_end(key)
            return self.generators[key]
        from .. import demo
        from ..engine import Generator

        avatar = demo.avatar() if job.avatar == DEMO else job.avatar
        gen = Generator(avatar, blend=job.blend, backend=job.backend, precision=job.precision,
                        cores=self.cores)
        self.generators[key] = gen
        while len(self.generators) > KEEP_GENERATORS:
            self.generators.popitem(last=False)
        return gen

    @property
    def loaded(self) -> list:
        """Engine keys of the generators this worker holds, most recent last."""
        return list(self.generators)

    def run(self, job: Job, attempt: int = 1) -> JobResult:
        """Render ``job`` unless its output is already complete; never raises for a bad job."""
        facts = {"attempts": attempt, "worker": self.name, "node": self.node}
        try:
            if output_complete(job.output):
                return JobResult(job, SKIPPED, **facts)
            # what an earlier, killed attempt (or an interrupted batch) left half-written; job
            # lists never give two jobs one output, so no live writer owns these
            discard_leftovers(Path(job.output))
            Path(job.output).parent.mkdir(parents=True, exist_ok=True)
            cpu = time.process_time()
            gen = self.generator(job)
            start = time.perf_counter()
            summary = gen.render(job.audio, job.output, count=job.frames, jpeg_quality=job.jpeg_quality)
            cfg = gen.config
            return JobResult(job, DONE, frames=int(summary["frames"]), seconds=time.perf_counter() - start,
                             cpu_seconds=time.process_time() - cpu,
                             engine=f"{cfg.backend} {cfg.precision}, {cfg.sessions} session(s) x "
                                    f"{cfg.threads} thread(s)", **facts)
        except Exception as exc:     # a bad job fails alone, with its reason; the batch goes on
            return JobResult(job, FAILED, error=one_line(exc), **facts)
