"""Job results and the batch report: one JSON line per job, written as each job ends.

``status`` is ``"done"`` (rendered now), ``"skipped"`` (its output was already complete: outputs
are renamed into place only when whole, so an existing output is a finished one) or ``"failed"``
(``error`` holds the one-line reason).  The report is appended to as results arrive, so an
interrupted batch still records what it finished.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from .jobs import Job

DONE, SKIPPED, FAILED = "done", "skipped", "failed"


@dataclass(frozen=True)
class JobResult:
    """What became of one :class:`Job`."""

    job: Job
    status: str                  # DONE, SKIPPED or FAILED
    frames: int = 0
    seconds: float = 0.0         # rendering time (not counting queueing or model loading)
    error: str = ""
    attempts: int = 1            # workers that started it (more than one after a worker died)
    worker: str = ""             # "local-0", or a Ray actor's name
    node: str = ""               # the Ray node id it ended on ("" locally)
    engine: str = ""             # backend, precision, sessions x threads of the generator used
    # CPU time of the worker's process over the job, loading its generator included (with
    # several local workers in one process, their concurrent jobs are counted in each)
    cpu_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Its output is complete (rendered now or before)."""
        return self.status in (DONE, SKIPPED)

    def as_dict(self) -> dict:
        return {"line": self.job.line, "avatar": self.job.avatar, "audio": self.job.audio,
                "output": self.job.output, "status": self.status, "frames": self.frames,
                "seconds": round(self.seconds, 3), "error": self.error, "attempts": self.attempts,
                "worker": self.worker, "node": self.node, "engine": self.engine,
                "cpu_seconds": round(self.cpu_seconds, 3)}


def one_line(exc: BaseException) -> str:
    """An exception as the report's one-line reason: fastgen's own messages as they are."""
    from ..errors import FastgenError

    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, FastgenError) else f"{type(exc).__name__}: {text}"


class Tally:
    """Counts for the progress bar and summary: jobs done, skipped, failed; frames; elapsed."""

    def __init__(self, total: int):
        self.total = total
        self.done = self.skipped = self.failed = self.frames = 0
        self.started = time.perf_counter()

    def add(self, result: JobResult) -> None:
        if result.status == DONE:
            self.done += 1
            self.frames += result.frames
        elif result.status == SKIPPED:
            self.skipped += 1
        else:
            self.failed += 1

    @property
    def finished(self) -> int:
        return self.done + self.skipped + self.failed

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started

    @property
    def fps(self) -> float:
        """Frames rendered per second of wall time, over the whole batch so far."""
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> dict:
        return {"jobs": self.total, "done": self.done, "skipped": self.skipped, "failed": self.failed,
                "frames": self.frames, "seconds": round(self.seconds, 3), "fps": round(self.fps, 2)}


class ReportWriter:
    """Appends each result to a JSON Lines report as it arrives (thread-safe); None: no file."""

    def __init__(self, path: Optional[Path]):
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("")

    def write(self, result: JobResult) -> None:
        if self.path is None:
            return
        with self._lock, self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(result.as_dict()) + "\n")


def collector(total: int, report: Optional[Path],
              on_result: Optional[Callable[[JobResult, Tally], None]]):
    """``(add, tally)``: ``add(result)`` counts it, appends it to the report and calls back."""
    tally, writer, lock = Tally(total), ReportWriter(report), threading.Lock()

    def add(result: JobResult) -> None:
        with lock:
            tally.add(result)
            writer.write(result)
            if on_result is not None:
                on_result(result, tally)

    return add, tally
