"""The frame scheduler with stand-in parts: order, prepare-ahead, a shared pool, errors."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from fastgen.frame import Frame
from fastgen.scheduler import FrameScheduler, Permits
from fastgen.workers import WorkerPool

AUDIO_SHAPE = (16, 4)


class Step:
    """Records fills; a frame's image says which prediction it got."""

    def __init__(self):
        self.filled: list[int] = []
        self.lock = threading.Lock()

    def fill(self, k, out):
        out[0, 0, 0] = k
        time.sleep(0.02)          # slow enough that the session starts counting before it is done
        with self.lock:
            self.filled.append(k)

    def frame(self, j, pts, k, pred):
        return Frame(j, pts, np.full((2, 2, 3), pred[0, 0, 0], np.float32), template=k)


class Features:
    """Writes frame j's number as its audio; remembers which frames are completely filled (the
    scheduler writes the audio window after the template input)."""

    def __init__(self):
        self.done: set[int] = set()

    def window(self, j, out):
        out[...] = j
        self.done.add(j)


class SlowSession:
    """Waits, while it runs a batch, until every frame of the next batch has been filled (or
    0.5 s pass), and records whether that happened while it ran."""

    def __init__(self, features, batch, last):
        self.features, self.batch, self.last, self.saw_next_filled = features, batch, last, []

    def run(self, feeds):
        following = range(int(feeds["audio"][-1, 0, 0]) + 1, min(int(feeds["audio"][-1, 0, 0]) + 1 + self.batch,
                                                                   self.last + 1))
        deadline = time.monotonic() + 0.5
        while not self.features.done.issuperset(following) and time.monotonic() < deadline:
            time.sleep(0.001)
        self.saw_next_filled.append(self.features.done.issuperset(following) and len(following) > 0)
        return feeds["input"][:, :3].copy()


@pytest.mark.parametrize("pool_kind", [WorkerPool, ThreadPoolExecutor])
@pytest.mark.parametrize("batch, workers", [(1, 1), (3, 2), (4, 1)])
def test_batch_k_plus_1_is_filled_while_batch_k_runs_and_frames_stay_in_order(batch, workers, pool_kind):
    """On fastgen's WorkerPool (tasks without Futures) and on any Executor (submit)."""
    step, features = Step(), Features()
    jobs = range(0, 13)
    session = SlowSession(features, batch, jobs[-1])
    order = [(j * 7) % 5 for j in jobs]
    with pool_kind(workers) as pool:
        sched = FrameScheduler([session], step, features, order, jobs, batch=batch, workers=workers,
                               audio_shape=AUDIO_SHAPE, executor=pool)
        frames = list(sched)
    assert [f.index for f in frames] == list(jobs)
    assert [int(f.image[0, 0, 0]) for f in frames] == order          # each frame got its own output
    # while every batch but the last ran, the pool had filled (or was filling) the one after it
    assert all(session.saw_next_filled[:-1]) and len(session.saw_next_filled) == -(-len(jobs) // batch)


def test_a_fill_error_surfaces_in_the_caller():
    class Broken(Step):
        def fill(self, k, out):
            if k == 3:
                raise ValueError("bad template 3")
            super().fill(k, out)

    step = Broken()
    features = Features()
    sched = FrameScheduler([SlowSession(features, 1, 4)], step, features, [0, 1, 2, 3, 4], range(5), batch=1,
                           workers=1, audio_shape=AUDIO_SHAPE)
    with pytest.raises(ValueError, match="bad template 3"):
        list(sched)


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_two_sessions_and_a_slow_consumer_never_deadlock(seed):
    """Permits run out while frames wait in a session's queue: a session holding unrun frames
    must never wait for permits (those very frames may hold the ones it waits for), nor behind
    another session that waits holding the claim lock.  Timings vary run to run, so many short
    frames and several seeds; a deadlock shows as a timeout (it did, for both mistakes, in about
    one run in four each)."""
    import random

    class Jittery:
        def __init__(self, seed):
            self.rng = random.Random(seed)

        def run(self, feeds):
            time.sleep(self.rng.random() * 0.002)
            return feeds["input"][:, :3].copy()

    class QuickStep(Step):
        def fill(self, k, out):
            out[0, 0, 0] = k

    jobs = range(0, 400)
    order = [j % 7 for j in jobs]
    got: list = []
    with ThreadPoolExecutor(1) as pool:
        sched = FrameScheduler([Jittery(seed), Jittery(seed + 100)], QuickStep(), Features(), order, jobs,
                               batch=1, workers=1, audio_shape=AUDIO_SHAPE, executor=pool)
        # few permits, so they run out all the time (any number >= 1 must work: permits go out in
        # frame order, so the oldest frame always holds one)
        sched.depth, sched.permits = 3, Permits(3)

        def consume():
            rng = random.Random(seed + 200)
            for f in sched:
                if rng.random() < 0.2:
                    time.sleep(0.002)       # the caller (a sink) falls behind now and then
                got.append(f.index)

        t = threading.Thread(target=consume, daemon=True)
        t.start()
        t.join(30)
        stuck = t.is_alive()
        if stuck:
            sched.stop.set()                # let the threads go, then fail
            t.join(5)
    assert not stuck, f"deadlock after {len(got)} of {len(jobs)} frames"
    assert got == list(jobs)


class QuickSession:
    def run(self, feeds):
        return feeds["input"][:, :3].copy()


class QuickStep(Step):
    def fill(self, k, out):
        out[0, 0, 0] = k


@pytest.mark.parametrize("pool_kind", [WorkerPool, ThreadPoolExecutor])
def test_finish_with_runs_on_the_worker_that_finishes_each_frame_in_order(pool_kind):
    jobs = range(5, 45)
    calls = []
    with pool_kind(2) as pool:
        sched = FrameScheduler([QuickSession()], QuickStep(), Features(), [j % 3 for j in range(45)], jobs,
                               batch=2, workers=2, audio_shape=AUDIO_SHAPE, executor=pool)

        def then(position, frame):
            calls.append((position, frame.index, threading.current_thread() is threading.main_thread()))
            return position * 10

        got = list(iter(sched).finish_with(then))
    assert [(f.index, r) for f, r in got] == [(j, (j - 5) * 10) for j in jobs]
    assert sorted(c[:2] for c in calls) == [(j - 5, j) for j in jobs]
    assert not any(c[2] for c in calls)                  # never on the caller's thread


def test_finish_with_error_surfaces_after_every_call_in_flight_ended():
    """A sink's function that fails stops the run; by the time the error reaches the caller no
    call is still running (a sink removes its temporary folder then), and none starts later."""
    active, started = [0], [0]
    lock = threading.Lock()

    def then(position, frame):
        with lock:
            active[0] += 1
            started[0] += 1
        try:
            time.sleep(0.01)
            if position == 6:
                raise OSError("disk full at frame 6")
        finally:
            with lock:
                active[0] -= 1

    with WorkerPool(2) as pool:
        sched = FrameScheduler([QuickSession()], QuickStep(), Features(), [0] * 200, range(200), batch=1,
                               workers=2, audio_shape=AUDIO_SHAPE, executor=pool)
        with pytest.raises(OSError, match="disk full at frame 6"):
            for _ in sched.finish_with(then):
                pass
        assert active[0] == 0
        count = started[0]
        time.sleep(0.1)
        assert started[0] == count and count < 200


def test_finish_with_comes_before_the_first_frame():
    sched = FrameScheduler([QuickSession()], QuickStep(), Features(), [0] * 4, range(4), batch=1, workers=1,
                           audio_shape=AUDIO_SHAPE)
    frames = iter(sched)
    next(frames)
    with pytest.raises(RuntimeError, match="before the first frame"):
        frames.finish_with(lambda i, f: None)
    frames.close()
    with pytest.raises(RuntimeError, match="runs once"):
        iter(sched)


def test_dropping_the_frames_early_stops_the_threads():
    sched = FrameScheduler([QuickSession()], QuickStep(), Features(), [0] * 10_000, range(10_000), batch=1,
                           workers=2, audio_shape=AUDIO_SHAPE)
    frames = iter(sched)
    assert [next(frames).index for _ in range(3)] == [0, 1, 2]
    del frames                          # only the caller held it: its threads stop now
    deadline = time.monotonic() + 5
    while any(t.name.startswith("fastgen-") for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not [t.name for t in threading.enumerate() if t.name.startswith("fastgen-")]


class StoredJustAfterTheLook(dict):
    """The finished frames, where a worker stores frame ``j`` right after the caller's first look
    for it, before the caller says which frame wakes it (so the worker sees the old ``want`` and
    wakes nobody)."""

    def __init__(self, j, value):
        super().__init__()
        self.j, self.value, self.looked = j, value, False

    def __contains__(self, k):
        found = super().__contains__(k)
        if k == self.j and not self.looked:
            self.looked = True
            self[k] = self.value
        return found


class NoWakeUp:
    def put(self, value):
        pass

    def get(self, timeout=None):
        raise AssertionError("the caller went to sleep though its frame was finished")


def test_a_frame_finished_while_the_caller_picks_its_wake_up_is_not_missed():
    """Before this was mended the caller slept out the 0.1 s poll in this case."""
    sched = FrameScheduler([QuickSession()], QuickStep(), Features(), [0] * 4, range(4), batch=1, workers=2,
                           audio_shape=AUDIO_SHAPE)
    sched.finished, sched.done = StoredJustAfterTheLook(0, "frame 0"), NoWakeUp()
    assert sched._result(0, [1]) == "frame 0"


def test_worker_pool_is_an_executor():
    import logging

    with WorkerPool(2, "fastgen-test") as pool:
        assert pool.submit(pow, 2, 10).result() == 1024
        with pytest.raises(ZeroDivisionError):
            pool.submit(lambda: 1 / 0).result()
        box = []
        done = threading.Event()
        pool.call(lambda a, b: (box.append(a + b), done.set()), 2, 3)
        assert done.wait(5) and box == [5]
        assert {t.name for t in pool.threads} == {"fastgen-test-0", "fastgen-test-1"}
    with pytest.raises(RuntimeError, match="shut down"):
        pool.submit(pow, 2, 2)
    with pytest.raises(RuntimeError, match="shut down"):
        pool.call(pow, 2, 2)
    with pytest.raises(ValueError, match="at least one worker"):
        WorkerPool(0)


def test_worker_pool_cancels_queued_work_and_logs_a_failed_call(caplog):
    gate, running = threading.Event(), threading.Event()
    pool = WorkerPool(1)
    first = pool.submit(lambda: (running.set(), gate.wait(5))[1])
    assert running.wait(5)
    queued = [pool.submit(pow, 2, i) for i in range(5)]
    pool.shutdown(wait=False, cancel_futures=True)
    gate.set()
    assert first.result(5) is True
    assert all(f.cancelled() for f in queued)
    for t in pool.threads:
        t.join(5)
    pool = WorkerPool(1)
    with caplog.at_level("ERROR", logger="fastgen"):
        pool.call(lambda: 1 / 0)
        pool.shutdown(wait=True)
    assert "a worker task failed" in caplog.text
