"""The timing rules every stage shares, defined once (docs/semantics.md §1-§3, §9).

Audio runs at 16 kHz with one mel frame per 200 samples (80 per second); video runs at 25 fps, so
one video frame spans 3.2 mel frames.  Encoder window ``i`` starts at mel frame
``int(80 * (i / 25))``; a frame's audio tensor holds the 16 feature rows around it.
"""
from __future__ import annotations

from typing import Optional

SAMPLE_RATE = 16000       # Hz: the model's audio rate
HOP = 200                 # samples per mel frame
MEL_PER_SECOND = SAMPLE_RATE // HOP   # 80
FPS = 25                  # output video frames per second
WINDOW_FRAMES = 16        # mel frames per audio-encoder window
FEATURE_CONTEXT = 8       # feature rows on each side of a frame's audio window (16 in all)
MIN_SAMPLES = (WINDOW_FRAMES - 1) * HOP   # 3000 (0.19 s): the shortest audio with one window


def window_start(i: int, n_mel_frames: Optional[int] = None) -> int:
    """First mel frame of encoder window ``i``; with ``n_mel_frames`` clamped so the window fits.

    Float arithmetic exactly as the reference (``int(80 * (i / 25))``), so rounding matches.
    """
    start = int(MEL_PER_SECOND * (i / FPS))
    return start if n_mel_frames is None else min(start, n_mel_frames - WINDOW_FRAMES)


def frame_time(j: int) -> float:
    """Presentation time in seconds of output frame ``j`` of a clip."""
    return j / FPS
