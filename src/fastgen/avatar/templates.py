"""Templates: the ping-pong order, decoding, the 328x328 crop, and the shared LRU cache.

Templates are decoded on demand into a byte-bounded LRU cache shared by the engine's threads;
returned arrays are read-only views of cached data (copy before writing).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Optional, Sequence

import numpy as np
import simplejpeg

from ..errors import AvatarError, InputError
from ..image import CROP_SIZE, resize_bicubic

# 128 MB holds ~40 decoded 1280x720 templates with their crops: enough for the engine's
# in-flight frames, and it keeps a full walk of a long avatar far below the 400 MB budget.
# The ping-pong walk revisits a template only after up to 2 x (templates - 1) frames, so a big
# LRU barely raises the hit rate: 32 MB and 128 MB gave the same pipeline fps, 100 MB apart in RSS.
DEFAULT_CACHE_MB = 32
# Crops and the decoded tiles around each face box (~0.5 MB a template at 1280x720) have their
# own LRU: small enough to hold every template of a typical avatar (~250 at 1280x720), so a long
# render or a server decodes each template's face region once instead of once a visit.  Measured
# (fastgen bench --frame-path, demo, 2-core Xeon, 2026-12-07): a region decode costs 0.36 ms, a
# hit 2 us.  Only what is used is held: the demo's 125 templates take ~63 MB.
PATCH_CACHE_MB = 128


def template_order(templates: int, n: int) -> list[int]:
    """Template index of each of ``n`` output frames (docs/semantics.md §4.4, ping-pong).

    The first output frame uses template 1; for 6 templates: 1 2 3 4 5 4 3 2 1 0 1 2 ...  A single
    template (where the reference loop would index past the end) is used for every frame.
    """
    if templates < 1:
        raise InputError(f"an avatar needs at least one template, got {templates}")
    if n < 0:
        raise InputError(f"n must be >= 0, got {n}")
    if templates == 1:
        return [0] * n
    period = 2 * (templates - 1)
    pos = (np.arange(1, n + 1) % period)
    return np.where(pos < templates, pos, period - pos).tolist()


def compute_crop(frame: np.ndarray, box: Sequence[int]) -> np.ndarray:
    """The 328x328 bicubic (OpenCV INTER_CUBIC) resize of ``frame[y0:y1, x0:x1]``.

    The exact resize (IPP emulation), not the fast path: the crop feeds the model, which turns a
    one-level difference into several (see fastgen.image.resize_bicubic).
    """
    x0, y0, x1, y1 = box
    return resize_bicubic(frame[y0:y1, x0:x1], CROP_SIZE, CROP_SIZE, exact=True)


def decode_frame(data: bytes, where: str, out: Optional[np.ndarray] = None) -> np.ndarray:
    """A template JPEG as BGR pixels; decoded straight into ``out`` (C-contiguous uint8 of the
    frame's exact size) when given."""
    try:
        if out is not None:
            h, w, _, _ = simplejpeg.decode_jpeg_header(data)
            if out.shape != (h, w, 3) or not out.flags.c_contiguous:
                raise AvatarError(f"{where}: the frame is {w}x{h}; cannot decode it into an array "
                                  f"of shape {out.shape}")
            return simplejpeg.decode_jpeg(data, colorspace="BGR", buffer=out)
        return simplejpeg.decode_jpeg(data, colorspace="BGR")
    except ValueError as exc:
        raise AvatarError(f"{where}: not a readable JPEG ({str(exc).strip() or 'decode failed'})") from None


def jpeg_size(data: bytes, where: str) -> tuple[int, int]:
    try:
        h, w, _, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError as exc:
        raise AvatarError(f"{where}: not a readable JPEG ({str(exc).strip() or 'bad header'})") from None
    return int(w), int(h)


# --------------------------------------------------------------------------- template cache

class TemplateCache:
    """Byte-bounded LRU of decoded frames and crops; safe to share between threads.

    Loads run outside the lock, so two threads missing the same key may both decode it; the first
    stored copy wins.  Stored arrays are made read-only because every caller shares them.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max(0, int(max_bytes))
        self._items: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def peek(self, key: tuple) -> Optional[np.ndarray]:
        """The stored array for ``key``, or None; never loads."""
        with self._lock:
            arr = self._items.get(key)
            if arr is not None:
                self._items.move_to_end(key)
            return arr

    def get(self, key: tuple, load: Callable[[], np.ndarray]) -> np.ndarray:
        with self._lock:
            arr = self._items.get(key)
            if arr is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return arr
            self.misses += 1
        arr = load()
        arr.flags.writeable = False
        if arr.nbytes > self.max_bytes:
            return arr
        with self._lock:
            existing = self._items.get(key)
            if existing is not None:
                return existing
            self._items[key] = arr
            self._bytes += arr.nbytes
            while self._bytes > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self._bytes -= old.nbytes
        return arr

    @property
    def nbytes(self) -> int:
        return self._bytes

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0
