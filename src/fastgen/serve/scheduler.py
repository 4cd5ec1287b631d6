"""One inference scheduler for every live session: one model copy, fair turns, bounded lateness.

Each live session owns a :class:`Lane`, which a :class:`fastgen.stream.Stream` uses as its
generator session (``run(feeds)``).  A lane does not run the model itself: it queues the request
on the shared :class:`InferenceScheduler`, whose threads run every session's requests on the one
generator session.  A lane has at most one request outstanding (its speech thread waits for the
answer), so serving the queue in arrival order is round-robin over the speaking sessions: no
session can take two turns while another waits.

Overload: a lane knows when each frame of the utterance it is making will be shown
(``deadline``).  A frame whose answer cannot arrive before that instant is not generated: the lane
returns the previous generated mouth instead (a *held* frame), so the generator always works on
frames that can still be shown and the delay stays bounded however far behind it is.  At most
``MAX_HELD_RUN`` frames in a row are held, so the mouth never lags the sound by more than that plus
one generator turn.  Audio is never touched by this.
"""
from __future__ import annotations

import collections
import threading
import time
from typing import Callable, Optional

import numpy as np

from ..frame import FrameStep

FPS_WINDOW_S = 5.0          # generated fps is measured over the last few seconds
MAX_HELD_RUN = 12           # consecutive held frames before one is generated anyway (~0.5 s): the
                            # turnaround estimate is only refreshed by generating, and a stale one
                            # (after a stall) must not hold every frame from then on


class _Request:
    __slots__ = ("lane", "feeds", "done", "result", "error", "queued_at")

    def __init__(self, lane: "Lane", feeds: dict):
        self.lane, self.feeds = lane, feeds
        self.done = threading.Event()
        self.result: Optional[np.ndarray] = None
        self.error: Optional[BaseException] = None
        self.queued_at = time.monotonic()


class InferenceScheduler:
    """Threads that run every lane's generator requests, in arrival order (round-robin)."""

    def __init__(self, threads: int = 1):
        self.threads = max(1, int(threads))
        self._queue: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._finished: collections.deque = collections.deque()   # completion times, for fps
        self.runs = 0
        self.busy_s = 0.0
        self._workers = [threading.Thread(target=self._work, name=f"fastgen-serve-infer-{i}", daemon=True)
                         for i in range(self.threads)]
        for worker in self._workers:
            worker.start()

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a turn (not counting those running)."""
        return len(self._queue)

    def generated_fps(self) -> float:
        """Frames generated per second over the last few seconds, all sessions together."""
        now = time.monotonic()
        with self._cond:
            while self._finished and self._finished[0] < now - FPS_WINDOW_S:
                self._finished.popleft()
            return len(self._finished) / FPS_WINDOW_S

    def run(self, lane: "Lane", feeds: dict) -> np.ndarray:
        """Run ``feeds`` on ``lane``'s model when its turn comes; blocks the caller until then."""
        request = _Request(lane, feeds)
        with self._cond:
            if self._closed:
                raise RuntimeError("the inference scheduler is closed")
            self._queue.append(request)
            self._cond.notify()
        request.done.wait()
        if request.error is not None:
            raise request.error
        return request.result

    def close(self) -> None:
        with self._cond:
            self._closed = True
            pending = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for request in pending:
            request.error = RuntimeError("the inference scheduler is closed")
            request.done.set()
        for worker in self._workers:
            worker.join(timeout=10)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                request = self._queue.popleft()
            t0 = time.monotonic()
            try:
                request.result = request.lane.model.run(request.feeds)
            except BaseException as exc:  # surfaces in the session's speech thread
                request.error = exc
            t1 = time.monotonic()
            with self._cond:
                self.runs += 1
                self.busy_s += t1 - t0
                self._finished.append(t1)
            request.done.set()
            del request          # else the last request keeps its session (and its feeds) alive while idle


class Lane:
    """One live session's seat at the shared generator; a session object for a Stream.

    ``begin(deadline)`` starts an utterance: ``deadline(j)`` is the time left (s, on the session's
    clock) until frame ``j`` is shown, or None while that is not known (before the first frame exists).
    """

    def __init__(self, scheduler: InferenceScheduler, model):
        self.scheduler, self.model = scheduler, model
        self.generated = 0          # frames the generator made for this session
        self.held = 0               # frames that repeated the previous mouth (no generator run)
        self.turnaround_s = 0.0     # recent time from request to answer, queueing included
        self._deadline: Optional[Callable[[int], Optional[float]]] = None
        self._position = 0
        self._previous: Optional[np.ndarray] = None
        self._previous_position = -1
        self._held_run = 0
        self.held_output: Optional[np.ndarray] = None
        self._content: dict = {}
        self._finished: collections.deque = collections.deque(maxlen=512)   # generation times, for fps

    def generated_fps(self) -> float:
        """Frames generated for this session per second over the last few seconds."""
        now = time.monotonic()
        return sum(1 for t in self._finished if t >= now - FPS_WINDOW_S) / FPS_WINDOW_S

    def begin(self, deadline: Callable[[int], Optional[float]]) -> None:
        self._deadline = deadline
        self._position = 0
        self._previous = None
        self._previous_position = -1
        self._held_run = 0
        self.held_output = None
        self._content = {}

    def content_of(self, j: int) -> int:
        """The frame whose generated mouth frame ``j`` shows (``j`` itself unless held)."""
        return self._content.pop(j, j)

    def run(self, feeds: dict) -> np.ndarray:
        """The generator's output for the next frame(s) of the utterance, or the held mouth."""
        j = self._position
        count = len(feeds["input"])
        self._position += count
        left = self._deadline(j) if self._deadline is not None else None
        if self._previous is not None and left is not None and self.turnaround_s > left \
                and len(self._previous) == count and self._held_run < MAX_HELD_RUN:
            self.held += count
            self._held_run += count
            for i in range(count):
                self._content[j + i] = self._previous_position
            if self.held_output is None:        # a distinct array, so HoldingStep can tell held from new
                self.held_output = self._previous.copy()
            return self.held_output
        t0 = time.monotonic()
        out = self.scheduler.run(self, feeds)
        took = time.monotonic() - t0
        self.turnaround_s = took if self.generated == 0 else 0.7 * self.turnaround_s + 0.3 * took
        self.generated += count
        self._held_run = 0
        self._finished.extend([time.monotonic()] * count)
        self._previous, self._previous_position = out, j + count - 1
        self.held_output = None
        return out


class HoldingStep(FrameStep):
    """The frame step of a session's stream: a held frame is the previous image, shown again.

    Pasting the previous mouth onto the next template would cost as much as a new frame (a full
    frame copy and a resize); under overload that time is what the session lacks.
    """

    def __init__(self, step: FrameStep, lane: Lane):
        super().__init__(step.avatar, step.blend)
        self.lane = lane
        self.last_image: Optional[np.ndarray] = None

    def finish(self, k: int, pred: np.ndarray, alpha: float = 1.0) -> np.ndarray:
        held = self.lane.held_output
        if held is not None and self.last_image is not None and (pred is held or pred.base is held):
            return self.last_image
        self.last_image = super().finish(k, pred, alpha)
        return self.last_image
