"""Which job a free worker takes next: jobs grouped by avatar, so workers reuse what they loaded.

A worker takes the next job of the avatar (engine key) it already holds; when that group is empty
it starts on a group no other worker holds (the largest first), and only then joins a group
another worker is on.  Loading an avatar's generator costs about a second, a job a few seconds or
more, so loads are what grouping saves.
"""
from __future__ import annotations

import threading
from collections import OrderedDict, deque
from dataclasses import dataclass, replace
from typing import Iterable, Optional

from .jobs import Job


@dataclass(frozen=True)
class Pending:
    """A job waiting to run: its place in the list and how many workers have started it."""

    index: int
    job: Job
    attempts: int = 0


class AvatarQueue:
    """Pending jobs grouped by :attr:`Job.engine_key`, in list order within a group (thread-safe)."""

    def __init__(self, jobs: Iterable[Job]):
        self._groups: "OrderedDict[tuple, deque]" = OrderedDict()
        self._lock = threading.Lock()
        for index, job in enumerate(jobs):
            self._groups.setdefault(job.engine_key, deque()).append(Pending(index, job))

    def __len__(self) -> int:
        with self._lock:
            return sum(len(group) for group in self._groups.values())

    def take(self, loaded: Iterable[tuple] = (), others: Iterable[tuple] = ()) -> Optional[Pending]:
        """The next job for a worker holding ``loaded`` keys (most recent last) while other
        workers hold ``others``; None when nothing is left.  Its ``attempts`` is counted up."""
        with self._lock:
            if not self._groups:
                return None
            others = set(others)
            key = next((k for k in reversed(list(loaded)) if k in self._groups), None)
            if key is None:
                free = [k for k in self._groups if k not in others]
                candidates = free or list(self._groups)
                key = max(candidates, key=lambda k: len(self._groups[k]))
            group = self._groups[key]
            item = group.popleft()
            if not group:
                del self._groups[key]
            return replace(item, attempts=item.attempts + 1)

    def put_back(self, item: Pending) -> None:
        """A job whose worker died: first in its group again (keeping its attempt count)."""
        with self._lock:
            self._groups.setdefault(item.job.engine_key, deque()).appendleft(item)
            self._groups.move_to_end(item.job.engine_key, last=False)
