"""The frame scheduler: inference overlapped with post-processing, frames delivered in order.

Data flow (one direction)::

    [infer thread per session]  claim the next batches (frame numbers, in order) and hand the
                                filling of each of their frames to the pool, then session.run
                                batch k (no GIL)
    [worker pool]               fill inputs of the batches ahead, one task a frame;
                                FrameStep.patch: output -> the pasted pixels of the face box (and,
                                when the sink shares the pool, its encodes)
    [caller]                    lazy Frame objects in order, from the finished frames (or,
                                after :meth:`FrameScheduler.finish_with`, each frame with what a
                                sink's function made of it in the same pool task)

One pool of ``workers`` threads does all per-frame work, so ``workers`` is the number of cores the
frame path uses; a sink given the same ``executor`` encodes on it too.  While a session runs
batch k, the pool fills the batches after it (up to ``workers`` of them, each frame its own task,
into the session's spare input buffers), so a fast backend never waits for its inputs and the
fills of one batch run on every worker at once.  (Filling one batch ahead as one task capped the
null-model frame path at one fill at a time: 1 / 0.6 ms, whatever the workers.)

On two cores a frame path with a fast backend takes ~0.6 ms a frame, and every time the caller
or an infer thread sleeps and is woken it preempts a worker (measured: ~3.7 preemptions a frame
and twice the orchestration CPU at 2 workers as at 1, which cost the 1 -> 2 worker scaling about
8 %).  So both wait for several frames at a time when there are several to wait for: the caller
for the last frame already handed to the pool (up to ``chunk`` frames ahead of the one it needs),
an infer thread whose next batch is not filled yet for a later batch's fills, leaving ``lag``
batches of fills queued so the workers do not run dry meanwhile.  Neither waits for anything
that needs more permits, and a slow backend (batches ahead always filled) never waits at all.

At most ``depth`` frames are in flight.  Permits are taken in frame order, so the oldest frame
always holds one and the ring cannot deadlock; memory stays flat however long the audio is.  Any
stage's exception stops the run and is re-raised in the caller; closing the iterator (or Ctrl-C)
stops the threads promptly.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Executor
from queue import Empty, SimpleQueue
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np

from .frame import Frame, FrameStep
from .image import input_batch
from .runtime import Session
from .timing import frame_time
from .workers import WorkerPool

_POLL_S = 0.1      # how often blocked threads look at the stop flag
_DRAIN_S = 30.0    # the longest a stopped run waits for a sink's writes in flight
_ENDED = "ended"   # an infer thread's last report to the caller


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
        # batches filled ahead of the running one, per session: two fills a worker (three
        # measured no faster), at most 8 batches of input buffers; while an infer thread waits,
        # ``lag`` of them (a fill a worker) stay queued behind the batch it waits for
        self.ahead = max(1, min(8, -(-2 * self.workers // self.batch)))
        self.lag = -(-self.workers // self.batch)
        # the caller waits for up to this many finished frames at a time
        self.chunk = 2 * self.workers
        # frames in flight: per session the running batch, those ahead and one more whose frames
        # may still await the caller (so the next claim rarely finds the permits taken), plus
        # what the workers, the sink and the caller's chunk hold
        self.depth = self.batch * len(self.sessions) * (self.ahead + 2) + 2 * self.workers + self.chunk
        self.permits = Permits(self.depth)
        self.claim_lock = threading.Lock()        # permits are taken in frame order under it
        # frame number -> the finished frame (or the frame and its ``then`` result)
        self.finished: dict[int, Any] = {}
        # wakes the caller: None when frame ``want`` is finished, an infer thread's end, or an
        # error (one C-level queue, so a hand-off costs no Python locking)
        self.done: SimpleQueue = SimpleQueue()
        self.want = -1                            # the frame whose finishing wakes the caller
        self.handed = -1                          # the last frame handed to the pool to finish
        self.pending: set[int] = set()            # frames handed to the pool and not yet reported
        self.next_job = jobs.start
        self.stop = threading.Event()
        self.started = False
        self.executor = executor              # shared with the sink; else the scheduler's own
        self.then: Optional[Callable[[int, Frame], Any]] = None   # see Frames.finish_with

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

    def _fill_one(self, j: int, inputs: np.ndarray, audio: np.ndarray, filled: SimpleQueue) -> None:
        """Frame j's inputs into ``inputs``/``audio``; reports None or the error to ``filled``."""
        try:
            if not self.stop.is_set():
                self.step.fill(self.order[j], inputs)
                self.features.window(j, audio)
            filled.put(None)
        except BaseException as exc:
            filled.put(exc)

    def _filled(self, filled: SimpleQueue, n: int) -> bool:
        """Wait for ``n`` fills reported to ``filled``; False if the run stopped first."""
        while n:
            try:
                exc = filled.get(timeout=_POLL_S)
            except Empty:
                if self.stop.is_set():
                    return False
                continue
            if exc is not None:
                raise exc
            n -= 1
        return True

    def _finish(self, j: int, pred: np.ndarray) -> None:
        """Frame j from its prediction (and the sink's ``then``), into ``finished``."""
        try:
            if not self.stop.is_set():
                frame = self.step.frame(j, frame_time(j), self.order[j], pred)
                self.finished[j] = frame if self.then is None else (frame, self.then(j - self.jobs.start, frame))
                # stored before ``want`` is read, as the caller sets ``want`` before it looks in
                # ``finished``: one of the two sees the other, so no wake-up is lost
                if j == self.want:
                    self.done.put(None)
        except BaseException as exc:
            self.done.put(exc)
        finally:
            self.pending.discard(j)

    def _infer(self, session: Session, pool: Executor) -> None:
        # a WorkerPool runs a task without a Future; any other executor's Future is not needed
        call = getattr(pool, "call", None) or pool.submit
        try:
            # input buffers: the pool fills the spare ones while the session reads one
            spare = [(input_batch(self.batch),
                      np.empty((self.batch, *self.audio_shape), np.float32)) for _ in range(self.ahead + 1)]
            queued: deque = deque()        # (frames, inputs, audio, queue of fill reports), in frame order

            def top_up(holding: bool) -> None:
                """Claim and start filling batches into the spare buffers.  Only a session that
                holds no unrun frames (``holding`` False, nothing queued) may wait for permits."""
                while spare and not self.stop.is_set():
                    claimed = self._claim(wait=not holding and not queued)
                    if not claimed:
                        return
                    inputs, audio = spare.pop()
                    filled: SimpleQueue = SimpleQueue()
                    for i, j in enumerate(claimed):
                        call(self._fill_one, j, inputs[i], audio[i], filled)
                    queued.append((claimed, inputs, audio, filled))

            top_up(holding=False)
            while queued and not self.stop.is_set():
                if not self._wait_for_several(queued):
                    break
                claimed, inputs, audio, filled = queued.popleft()
                if not self._filled(filled, len(claimed)) or self.stop.is_set():
                    break
                top_up(holding=True)
                n = len(claimed)
                pred = session.run({"input": inputs[:n], "audio": audio[:n]})
                spare.append((inputs, audio))
                for i, j in enumerate(claimed):
                    self.pending.add(j)
                    self.handed = max(self.handed, j)
                    call(self._finish, j, pred[i])
                top_up(holding=False)
            for claimed, _, _, filled in queued:
                # raises a fill error; otherwise the claimed frames are dropped
                if not self._filled(filled, len(claimed)):
                    break
            self.done.put(_ENDED)
        except BaseException as exc:  # surfaces in the caller, which re-raises it
            self.done.put(exc)

    def _wait_for_several(self, queued: deque) -> bool:
        """If the next batch is not filled yet, wait for a later one's fills instead (the pool
        fills in order, so the batches before it are then filled too and run without a wait each),
        leaving ``lag`` batches of fills queued for the workers.  False if the run stopped."""
        claimed, _, _, filled = queued[0]
        later = len(queued) - 1 - self.lag
        if later <= 0 or filled.qsize() >= len(claimed):
            return True
        claimed, _, _, filled = queued[later]
        if not self._filled(filled, len(claimed)):
            return False
        for _ in claimed:                 # _filled took the reports: put them back for the loop
            filled.put(None)
        return True

    # ---------------------------------------------------------------- caller

    def _result(self, j: int, running: list) -> object:
        """Frame j's value, waiting until it is finished (``running`` counts infer threads still
        going).  While frames after j are in the pool, waits for the last of them (up to
        ``chunk`` frames on), so one wake-up brings several frames."""
        finished = self.finished
        while j not in finished:
            want = max(j, min(j + self.chunk - 1, self.handed))
            if want in finished:                 # already there: wait for j itself
                want = j
            self.want = want
            # looked at again after ``want`` is set: a frame stored before that saw the old one
            if want in finished:
                continue
            try:
                got = self.done.get(timeout=_POLL_S)
            except Empty:
                # every infer thread is done, nothing is in the pool, and frame j never came
                if running[0] == 0 and not self.pending and j not in finished:
                    raise RuntimeError(f"fastgen: frame {j} was never produced") from None
                continue
            if got is _ENDED:
                running[0] -= 1
            elif got is not None:
                raise got
        return finished.pop(j)

    def __iter__(self) -> "Frames":
        if self.started:
            raise RuntimeError("a FrameScheduler runs once; make a new one")
        self.started = True
        return Frames(self, self._frames)

    def finish_with(self, fn: Callable[[int, Frame], Any]) -> "Frames":
        """``iter(self).finish_with(fn)``: see :meth:`Frames.finish_with`."""
        return iter(self).finish_with(fn)

    def _frames(self) -> Iterator[Frame]:
        own = self.executor is None
        pool = WorkerPool(self.workers, "fastgen-post") if own else self.executor
        threads = [threading.Thread(target=self._infer, args=(s, pool), name=f"fastgen-infer-{i}",
                                    daemon=True) for i, s in enumerate(self.sessions)]
        for t in threads:
            t.start()
        running = [len(threads)]
        try:
            for j in self.jobs:
                frame = self._result(j, running)
                self.permits.release()
                yield frame
        finally:
            self.stop.set()
            for t in threads:
                t.join()
            # the pool skips frames not begun; a sink's function may be writing a file: it ends
            # before the sink cleans up (bounded, in case a caller shut the pool down under us)
            deadline = time.monotonic() + _DRAIN_S
            while self.then is not None and self.pending and time.monotonic() < deadline:
                time.sleep(0.001)
            if own:
                pool.shutdown(wait=True, cancel_futures=True)


class Permits:
    """A counting semaphore (``acquire(blocking, timeout)``, ``release()``) on a
    :class:`queue.SimpleQueue` of tokens: each call is one C call, where
    :class:`threading.Semaphore` runs Python code under a condition every time."""

    def __init__(self, n: int):
        self.tokens: SimpleQueue = SimpleQueue()
        for _ in range(n):
            self.tokens.put(None)

    def acquire(self, blocking: bool = True, timeout: Optional[float] = None) -> bool:
        try:
            self.tokens.get(blocking, timeout)
            return True
        except Empty:
            return False

    def release(self) -> None:
        self.tokens.put(None)


class Frames:
    """The frames of one :class:`FrameScheduler` run, in order: an iterator.

    The threads start at the first ``next``; closing it, or dropping it (nothing but the caller
    holds it, so that is prompt), stops them and drops what is in flight.
    """

    def __init__(self, scheduler: FrameScheduler, start: Callable[[], Iterator]):
        self.scheduler, self.start = scheduler, start
        self.running: Optional[Iterator] = None

    def __iter__(self) -> "Frames":
        return self

    def __next__(self):
        if self.running is None:
            self.running = self.start()
        return next(self.running)

    def close(self) -> None:
        if self.running is not None:
            self.running.close()

    def finish_with(self, fn: Callable[[int, Frame], Any]) -> "Frames":
        """Run ``fn(position, frame)`` on the pool task that finishes each frame, right after it,
        and yield ``(frame, fn's result)`` in order instead of frames (``position`` counts from
        0).  A sink that shares the pool encodes (and writes) each frame so, without a task and a
        hand-off of its own per frame.  Call before the first frame."""
        if self.running is not None:
            raise RuntimeError("finish_with must come before the first frame")
        self.scheduler.then = fn
        return self
