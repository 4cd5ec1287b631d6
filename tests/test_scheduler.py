"""The frame scheduler with stand-in parts: order, prepare-ahead, a shared pool, errors."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from fastgen.frame import Frame
from fastgen.scheduler import FrameScheduler

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
    def window(self, j, out):
        out[...] = j


class SlowSession:
    """Waits, while it runs a batch, until the next batch has been filled (or 0.5 s pass)."""

    def __init__(self, step, batch):
        self.step, self.batch, self.saw_next_filled = step, batch, []

    def run(self, feeds):
        done_before = len(self.step.filled)
        deadline = time.monotonic() + 0.5
        while len(self.step.filled) < done_before + self.batch and time.monotonic() < deadline:
            time.sleep(0.001)
        self.saw_next_filled.append(len(self.step.filled) > done_before)
        return feeds["input"][:, :3].copy()


@pytest.mark.parametrize("batch, workers", [(1, 1), (3, 2), (4, 1)])
def test_batch_k_plus_1_is_filled_while_batch_k_runs_and_frames_stay_in_order(batch, workers):
    step = Step()
    session = SlowSession(step, batch)
    jobs = range(0, 13)
    order = [(j * 7) % 5 for j in jobs]
    with ThreadPoolExecutor(workers) as pool:
        sched = FrameScheduler([session], step, Features(), order, jobs, batch=batch, workers=workers,
                               audio_shape=AUDIO_SHAPE, executor=pool)
        frames = list(sched)
    assert [f.index for f in frames] == list(jobs)
    assert [int(f.image[0, 0, 0]) for f in frames] == order          # each frame got its own output
    # every batch but the last ran while the pool filled the one after it
    assert all(session.saw_next_filled[:-1]) and len(session.saw_next_filled) == -(-len(jobs) // batch)


def test_a_fill_error_surfaces_in_the_caller():
    class Broken(Step):
        def fill(self, k, out):
            if k == 3:
                raise ValueError("bad template 3")
            super().fill(k, out)

    step = Broken()
    sched = FrameScheduler([SlowSession(step, 1)], step, Features(), [0, 1, 2, 3, 4], range(5), batch=1,
                           workers=1, audio_shape=AUDIO_SHAPE)
    with pytest.raises(ValueError, match="bad template 3"):
        list(sched)
