"""Feature rows and audio windows: the one owner of the rule (docs/semantics.md §3).

A clip of N encoder windows has N + 2 output frames.  Its feature table F has N + 2 rows: row r
holds the embedding of window ``clamp(r - 1, 0, N - 1)`` (the first and last embeddings are
duplicated).  Frame j's audio tensor is F[j - 8 : j + 8], with zero rows where that range leaves
[0, N + 2).

:class:`FeatureTable` serves a frame range of one clip and runs the audio encoder lazily, in
chunks, through an ``encode`` callable (windows -> embeddings), so the first frames wait only for
the first chunk and a short range encodes only the windows it reads.  The streaming engine, which
learns N only at the end of an utterance, uses :func:`window_rows` directly.
"""
from __future__ import annotations

import threading
from typing import Callable, Optional

import numpy as np

from .errors import InputError
from .models.graphs import EMB_SIZE
from .timing import FEATURE_CONTEXT

ENCODE_CHUNK = 64     # windows encoded per lazy step: the first frames wait for ~2.5 s of audio

Encode = Callable[[np.ndarray], np.ndarray]   # (n, 1, 80, 16) mel windows -> (n, D) embeddings


def window_rows(j: int, n_windows: Optional[int]) -> tuple[np.ndarray, np.ndarray]:
    """Which window feeds each of frame j's 16 audio rows.

    Returns ``(valid, index)``: ``valid`` (16,) bool marks the rows inside [0, N + 2) (the others
    are zero); ``index`` holds the window of each valid row.  ``n_windows=None`` means N is not
    known yet (a stream mid-utterance): no upper bound and no clamp at the end.
    """
    r = np.arange(j - FEATURE_CONTEXT, j + FEATURE_CONTEXT)
    if n_windows is None:
        valid = r >= 0
        return valid, np.maximum(r[valid] - 1, 0)
    valid = (r >= 0) & (r < n_windows + 2)
    return valid, np.clip(r[valid] - 1, 0, n_windows - 1)


def _copy_holding_gil(out: np.ndarray, rows: np.ndarray) -> None:
    """``rows`` into ``out`` (same size, any shape): a 32 KB copy.  numpy drops the GIL for a copy
    that size and must then take it back, which with several workers often means waiting for a
    wake-up far longer than the copy; a memoryview copy (contiguous float32 both sides) keeps it."""
    if out.flags.c_contiguous and rows.flags.c_contiguous and out.dtype == rows.dtype and out.size == rows.size:
        memoryview(out).cast("B")[:] = memoryview(rows).cast("B")
    else:                                    # a strided ``out``: numpy writes through the view
        np.copyto(out, rows.reshape(out.shape))


def frame_range(total: int, start: int, count: Optional[int]) -> range:
    """Frames ``start .. start + count - 1`` of a clip with ``total`` frames, cut to the clip."""
    if start < 0:
        raise InputError(f"start must be >= 0, got {start}")
    if count is not None and count < 0:
        raise InputError(f"count must be >= 0, got {count}")
    lo = min(int(start), total)
    hi = total if count is None else min(total, lo + int(count))
    return range(lo, max(hi, lo))


class FeatureTable:
    """Feature rows of one clip for the frames ``frames`` (a range), filled lazily.

    Build it with :meth:`from_windows` (mel windows + an encoder) or :meth:`from_rows`
    (precomputed per-window features, e.g. hubert / wenet).  Thread-safe: generator sessions ask
    for windows concurrently.
    """

    def __init__(self, n_windows: int, frames: range, encode: Optional[Encode] = None,
                 windows: Optional[np.ndarray] = None, rows: Optional[np.ndarray] = None):
        self.n_windows = int(n_windows)
        self.total = self.n_windows + 2
        self.frames = frames
        self._encode, self._windows = encode, windows
        self._lock = threading.Lock()
        if rows is not None:
            self._emb: Optional[np.ndarray] = rows
            self._w_lo, self._w_hi, self._done = 0, self.n_windows, self.n_windows
        else:
            self._emb = None
            lo, hi = frames.start, frames.stop
            # frame j reads rows j-8 .. j+7; row r holds window clamp(r - 1, 0, N - 1)
            self._w_lo = min(max(0, lo - FEATURE_CONTEXT - 1), max(self.n_windows - 1, 0))
            self._w_hi = min(self.n_windows, hi + FEATURE_CONTEXT - 1) if hi > lo else self._w_lo
            self._done = self._w_lo

    @classmethod
    def from_windows(cls, windows: np.ndarray, encode: Encode, start: int = 0,
                     count: Optional[int] = None) -> "FeatureTable":
        """Rows from encoder windows (N, 1, 80, 16), encoded on demand by ``encode``."""
        return cls(len(windows), frame_range(len(windows) + 2, start, count), encode=encode,
                   windows=windows)

    @classmethod
    def from_rows(cls, rows: np.ndarray, start: int = 0, count: Optional[int] = None) -> "FeatureTable":
        """Rows from precomputed per-window features (N, D), N >= 1."""
        rows = np.ascontiguousarray(rows, np.float32)
        return cls(len(rows), frame_range(len(rows) + 2, start, count), rows=rows)

    def __len__(self) -> int:
        return self.total

    def _ensure(self, w_hi: int) -> None:
        """Encode windows up to ``w_hi`` (exclusive), at least a chunk at a time."""
        w_hi = min(w_hi, self._w_hi)
        if self._done >= w_hi:
            return
        with self._lock:
            while self._done < w_hi:
                hi = min(self._w_hi, max(w_hi, self._done + ENCODE_CHUNK))
                emb = self._encode(self._windows[self._done:hi])
                if self._emb is None:
                    self._emb = np.zeros((self.n_windows, emb.shape[1]), np.float32)
                self._emb[self._done:hi] = emb
                self._done = hi

    def ensure_all(self) -> None:
        """Encode every window the frame range needs now (instead of on demand)."""
        if self._windows is not None:
            self._ensure(self._w_hi)

    def window(self, j: int, out: np.ndarray) -> None:
        """Write frame j's audio tensor (16 rows, any shape of that size) into ``out``."""
        first = j - FEATURE_CONTEXT - 1         # the window of row j - 8, unclamped
        if first >= 0 and first + 2 * FEATURE_CONTEXT <= self.n_windows:
            # away from the clip's ends the rows are 16 consecutive windows: one slice copy
            if self._windows is not None:
                self._ensure(first + 2 * FEATURE_CONTEXT)
            _copy_holding_gil(out, self._emb[first:first + 2 * FEATURE_CONTEXT])
            return
        valid, need = window_rows(j, self.n_windows)
        if self._windows is not None and need.size:
            self._ensure(int(need.max()) + 1)
        flat = out.reshape(2 * FEATURE_CONTEXT, -1)
        flat[~valid] = 0
        flat[valid] = self._emb[need]

    def table(self) -> np.ndarray:
        """The (N + 2, D) table; rows whose window was not encoded are zero."""
        d = self._emb.shape[1] if self._emb is not None else EMB_SIZE
        out = np.zeros((self.total, d), np.float32)
        if self._emb is None:
            return out
        w = np.clip(np.arange(self.total) - 1, 0, self.n_windows - 1)
        ok = (w >= self._w_lo) & (w < self._done)
        out[ok] = self._emb[w[ok]]
        return out
