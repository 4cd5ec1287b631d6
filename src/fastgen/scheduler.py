"""The frame scheduler: inference overlapped with post-processing, frames delivered in order.

Data flow (one direction)::

    [infer thread per session]  claim the next batches (frame numbers, in order) and hand the
                                filling of each of their frames to the pool, then session.run
                                batch k (no GIL)
    [worker pool]               fill inputs of the batches ahead, one task a frame;
                                FrameStep.patch: output -> the pasted pixels of the face box (and,
                                when the sink shares the pool, its encodes)
    [caller]                    lazy Frame objects in order, from futures keyed by frame number

One pool of ``workers`` threads does all per-frame work, so ``workers`` is the number of cores the
frame path uses; a sink given the same ``executor`` encodes on it too.  While a session runs
batch k, the pool fills the batches after it (up to ``workers`` of them, each frame its own task,
into the session's spare input buffers), so a fast backend never waits for its inputs and the
fills of one batch run on every worker at once.  (Filling one batch ahead as one task capped the
null-model frame path at one fill at a time: 1 / 0.6 ms, whatever the workers.)

At most ``depth`` frames are in flight.  Permits are taken in frame order, so the oldest frame
always holds one and the ring cannot deadlock; memory stays flat however long the audio is.  Any
stage's exception stops the run and is re-raised in the caller; closing the iterator (or Ctrl-C)
stops the threads promptly.
"""
from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Iterator, Optional, Sequence

import numpy as np

from .frame import Frame, FrameStep
from .image import ROI_SIZE
from .runtime import Session
from .timing import frame_time

_POLL_S = 0.1      # how often blocked threads look at the stop flag


class FrameScheduler:
    """Runs frames ``jobs`` of one clip through ``sessions`` side by side; iterate for frames.

    ``features`` is anything with ``window(j, out)`` (a :class:`fastgen.features.FeatureTable`),
    ``order`` maps frame numbers to template indices.  One iteration only.
    """

    def __init__(self, sessions: Sequence[Session], step: FrameStep, features, order: Sequence[int],
                 jobs: range, *, batch: int, workers: int, audio_shape: tuple,
                 executor: Optional[Executor] = None):
        self.sessions, self.step, self.features = list(sessions), step, features
        self.order, self.jobs = order, jobs
        self.batch, self.workers, self.audio_shape = int(batch), int(workers), tuple(audio_shape)
        # batches filled ahead of the running one, per session: enough frames to give every worker
        # a fill task, at most 4 batches of input buffers
        self.ahead = max(1, min(4, -(-self.workers // self.batch)))
        # frames in flight: per session the running batch, those ahead and one more whose frames
        # may still await the caller (so the next claim rarely finds the permits taken), plus
        # what the workers and the sink hold
        self.depth = self.batch * len(self.sessions) * (self.ahead + 2) + 2 * self.workers
        self.permits = threading.Semaphore(self.depth)
        self.claim_lock = threading.Lock()        # permits are taken in frame order under it
        self.ready = threading.Condition()        # guards futures, error, finished_threads
        self.futures: dict[int, Future] = {}
        self.next_job = jobs.start
        self.error: Optional[BaseException] = None
        self.finished_threads = 0
        self.stop = threading.Event()
        self.started = False
        self.executor = executor              # shared with the sink; else the scheduler's own

    # ---------------------------------------------------------------- infer threads

    def _acquire(self) -> bool:
        while not self.stop.is_set():
            if self.permits.acquire(timeout=_POLL_S):
                return True
        return False

    def _claim(self, wait: bool = True) -> list[int]:
        """The next batch of frame numbers, with a permit each.

        ``wait=True`` is for a session with no batch of its own waiting to run: it may block on
        permits (holding ``claim_lock``, so permits go out in frame order).  ``wait=False`` (a
        batch beyond the one the session runs next) never blocks, neither on permits nor on the
        lock: a session holding unrun frames that waited for another one blocked on permits
        those very frames hold would deadlock the render (seen with two sessions).
        """
        if wait:
            self.claim_lock.acquire()
        elif not self.claim_lock.acquire(blocking=False):
            return []
        try:
            claimed: list[int] = []
            while len(claimed) < self.batch and self.next_job < self.jobs.stop:
                if not (self._acquire() if wait else self.permits.acquire(blocking=False)):
                    break
                claimed.append(self.next_job)
                self.next_job += 1
            if not wait and len(claimed) < min(self.batch, len(claimed) + self.jobs.stop - self.next_job):
                for _ in claimed:           # not a whole batch: give it back for later
                    self.permits.release()
                self.next_job -= len(claimed)
                return []
            return claimed
        finally:
            self.claim_lock.release()

    def _fill_one(self, j: int, inputs: np.ndarray, audio: np.ndarray) -> None:
        self.step.fill(self.order[j], inputs)
        self.features.window(j, audio)

    def _finish(self, j: int, pred: np.ndarray) -> Frame:
        return self.step.frame(j, frame_time(j), self.order[j], pred)

    def _infer(self, session: Session, pool: Executor) -> None:
        try:
            # input buffers: the pool fills the spare ones while the session reads one
            spare = [(np.empty((self.batch, 6, ROI_SIZE, ROI_SIZE), np.float32),
                      np.empty((self.batch, *self.audio_shape), np.float32)) for _ in range(self.ahead + 1)]
            queued: deque = deque()        # (frames, inputs, audio, fill futures), in frame order

            def top_up(holding: bool) -> None:
                """Claim and start filling batches into the spare buffers.  Only a session that
                holds no unrun frames (``holding`` False, nothing queued) may wait for permits."""
                while spare and not self.stop.is_set():
                    claimed = self._claim(wait=not holding and not queued)
                    if not claimed:
                        return
                    inputs, audio = spare.pop()
                    fills = [pool.submit(self._fill_one, j, inputs[i], audio[i]) for i, j in enumerate(claimed)]
                    queued.append((claimed, inputs, audio, fills))

            top_up(holding=False)
            while queued and not self.stop.is_set():
                claimed, inputs, audio, fills = queued.popleft()
                for fill in fills:
                    fill.result()
                top_up(holding=True)
                n = len(claimed)
                pred = session.run({"input": inputs[:n], "audio": audio[:n]})
                spare.append((inputs, audio))
                with self.ready:
                    for i, j in enumerate(claimed):
                        self.futures[j] = pool.submit(self._finish, j, pred[i])
                    self.ready.notify_all()
                top_up(holding=False)
            for _, _, _, fills in queued:
                for fill in fills:
                    fill.result()     # raises a fill error; otherwise the claimed frames are dropped
        except BaseException as exc:  # surfaces in the caller, which re-raises it
            with self.ready:
                self.error = self.error or exc
                self.ready.notify_all()
        finally:
            with self.ready:
                self.finished_threads += 1
                self.ready.notify_all()

    # ---------------------------------------------------------------- caller

    def _next_future(self, j: int, threads: int) -> Future:
        with self.ready:
            while j not in self.futures and self.error is None:
                if self.finished_threads == threads:
                    raise RuntimeError(f"fastgen: frame {j} was never produced")
                self.ready.wait(_POLL_S)
            if self.error is not None:
                raise self.error
            return self.futures.pop(j)

    def __iter__(self) -> Iterator[Frame]:
        if self.started:
            raise RuntimeError("a FrameScheduler runs once; make a new one")
        self.started = True
        return self._frames()

    def _frames(self) -> Iterator[Frame]:
        own = self.executor is None
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="fastgen-post") if own else self.executor
        threads = [threading.Thread(target=self._infer, args=(s, pool), name=f"fastgen-infer-{i}",
                                    daemon=True) for i, s in enumerate(self.sessions)]
        for t in threads:
            t.start()
        try:
            for j in self.jobs:
                frame = self._next_future(j, len(threads)).result()
                self.permits.release()
                yield frame
        finally:
            self.stop.set()
            for t in threads:
                t.join()
            for fut in self.futures.values():
                fut.cancel()
            if own:
                pool.shutdown(wait=True, cancel_futures=True)
