"""The worker threads of the per-frame path: a thread pool with a fire-and-forget call.

:class:`WorkerPool` is a :class:`concurrent.futures.Executor` (``submit`` gives a Future, as
sinks and callers expect) with one more method, ``call(fn, *args)``: run ``fn`` on a worker and
return nothing.  The frame scheduler reports every frame through its own queue, so it needs no
Future; ``call`` is one put on a C-level queue where ``ThreadPoolExecutor.submit`` builds a
Future, a work item and a condition and takes two locks, all under the GIL, on every frame.
"""
from __future__ import annotations

import logging
import threading
from concurrent.futures import Executor, Future
from queue import Empty, SimpleQueue
from typing import Callable, Iterable, Iterator

log = logging.getLogger("fastgen")


class WorkerPool(Executor):
    """``workers`` threads named ``name-0`` ... taking tasks in order from one queue."""

    def __init__(self, workers: int, name: str = "fastgen-work"):
        if workers < 1:
            raise ValueError(f"a pool needs at least one worker, got {workers}")
        self.tasks: SimpleQueue = SimpleQueue()
        self.closed = False
        self.threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
                        for i in range(workers)]
        for thread in self.threads:
            thread.start()

    def _work(self) -> None:
        while True:
            task = self.tasks.get()
            if task is None:
                return
            fn, args, future = task
            if future is None:
                try:
                    fn(*args)
                except BaseException:    # a call() task reports its own errors; this is a bug
                    log.exception("fastgen: a worker task failed")
            elif future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args))
                except BaseException as exc:
                    future.set_exception(exc)

    def call(self, fn: Callable, *args) -> None:
        """Run ``fn(*args)`` on a worker; nothing to wait on (``fn`` reports its own result)."""
        if self.closed:
            raise RuntimeError("cannot schedule new work after the pool was shut down")
        self.tasks.put((fn, args, None))

    def submit(self, fn: Callable, /, *args, **kwargs) -> Future:
        if self.closed:
            raise RuntimeError("cannot schedule new work after the pool was shut down")
        future: Future = Future()
        self.tasks.put(((lambda: fn(*args, **kwargs)), (), future))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.closed = True
        if cancel_futures:
            while True:
                try:
                    task = self.tasks.get_nowait()
                except Empty:
                    break
                if task is not None and task[2] is not None:
                    task[2].cancel()
        for _ in self.threads:
            self.tasks.put(None)
        if wait:
            for thread in self.threads:
                thread.join()


def ahead(executor, fn: Callable, items: Iterable, window: int) -> Iterator:
    """``map(fn, items)`` in order, computed on ``executor`` up to ``window`` items ahead."""
    from collections import deque

    pending: deque = deque()
    try:
        for item in items:
            pending.append(executor.submit(fn, item))
            if len(pending) > window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for fut in pending:
            fut.cancel()
