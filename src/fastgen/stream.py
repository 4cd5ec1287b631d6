"""Incremental rendering: push audio as it arrives, get every frame as soon as it is computable.

A frame j needs the feature rows F[j-8 .. j+7] (SPEC 3.3), i.e. encoder window j+6, i.e. mel
frames up to int(3.2 (j+6)) + 15, i.e. samples up to ~640 j + 7240: about 0.45 s of audio after the
frame's own instant.  Everything is computed once:

- mel frames are computed as soon as their 800 samples (and the sample before, for the
  pre-emphasis) exist, by running the log-mel kernel on a short segment around them — the kernel
  treats every frame independently, so the values are bit-identical to the offline path;
- each encoder window runs once, when its 16 mel frames are final;
- each frame is generated once, when its 16 feature rows are final.

``flush()`` ends the utterance exactly as the offline path ends a file (zero padding after the
last sample, the last window clamped, the last feature row duplicated), so for any chunking the
frames equal ``Generator.frames`` on the whole utterance.  History is trimmed as it is consumed,
so memory is flat however long the stream runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from . import audio as _audio
from . import image as _image
from .errors import InputError

HOP = _audio.HOP
WIN = _audio.WINDOW_FRAMES
CTX = 8                     # feature rows each side of a frame (SPEC 3.3)
SEG_LEAD = 3                # mel frames computed before the wanted ones (pre-emphasis context)


@dataclass
class Frame:
    """One output frame: global ``index`` in the stream, ``pts`` in seconds, BGR ``image``."""

    index: int
    pts: float
    image: np.ndarray
    utterance: int = 0
    position: int = 0          # frame number within its utterance (offline frame index)
    generated: bool = True     # False: template frame (idle, or silence-gated)


def _window_start(i: int) -> int:
    return int(_audio.MEL_PER_SECOND * (i / _audio.FPS))


class Stream:
    """Push-audio / pull-frames session of a :class:`fastgen.Generator` (``gen.stream()``).

    ``silence_db`` (off by default) gates the generator: frames whose encoder window is quieter
    than that RMS level (dBFS) show the template face, with a ``crossfade``-frame blend at the
    edges of speech.
    """

    def __init__(self, gen, sample_rate: int = _audio.SAMPLE_RATE, silence_db: Optional[float] = None,
                 crossfade: int = 3):
        if gen.mode != "ave":
            raise InputError(f"streaming needs an 'ave' generator (this one is {gen.mode!r})")
        if sample_rate <= 0:
            raise InputError(f"sample_rate must be positive, got {sample_rate}")
        self.gen = gen
        self.sample_rate = int(sample_rate)
        self.silence_db = silence_db
        self.crossfade = max(0, int(crossfade))
        self._index = 0            # global frame counter
        self._utterance = 0
        self._t0 = 0.0             # stream time at which the current utterance started
        self._last_pts = -1.0 / _audio.FPS
        self._resampler = None
        self._reset_utterance()

    # ------------------------------------------------------------------ state

    def _reset_utterance(self) -> None:
        self._x = np.zeros(0, np.float32)   # samples from global index self._x0
        self._x0 = 0
        self._n = 0                         # samples pushed in this utterance
        self._mel = np.zeros((0, _audio.N_MELS), np.float32)   # final mel frames from self._m0
        self._m0 = 0
        self._feat: dict[int, np.ndarray] = {}   # window index -> embedding
        self._next_window = 0
        self._next_frame = 0
        self._gate: dict[int, bool] = {}
        if self.sample_rate != _audio.SAMPLE_RATE:
            import soxr

            self._resampler = soxr.ResampleStream(self.sample_rate, _audio.SAMPLE_RATE, 1,
                                                  dtype="float32", quality="HQ")

    # ------------------------------------------------------------------ public API

    def push(self, pcm) -> List[Frame]:
        """Add a chunk (float32 in [-1, 1] or int16, mono) and return the frames it completed."""
        x = self._as_samples(pcm)
        if self._resampler is not None:
            x = self._resampler.resample_chunk(x, last=False)
        self._append(x)
        return self._advance(final=False)

    def flush(self) -> List[Frame]:
        """End the utterance (pad like the offline path) and return its remaining frames."""
        if self._resampler is not None:
            self._append(self._resampler.resample_chunk(np.zeros(0, np.float32), last=True))
        if self._n == 0:
            self._reset_utterance()
            return []
        try:
            frames = self._advance(final=True)
        finally:  # a failed utterance (e.g. too short) is dropped; the stream stays usable
            self._t0 += self._n / _audio.SAMPLE_RATE
            self._utterance += 1
            self._reset_utterance()
        return frames

    def idle(self, n: int) -> List[Frame]:
        """``n`` template frames continuing the ping-pong walk, for the pauses between utterances."""
        out = []
        order = self.gen.avatar.order(self._index + int(n))
        for _ in range(int(n)):
            self._last_pts += 1 / _audio.FPS
            out.append(Frame(self._index, self._last_pts, self.gen.avatar.frame(order[self._index]).copy(),
                             self._utterance, -1, False))
            self._index += 1
        return out

    # ------------------------------------------------------------------ internals

    @staticmethod
    def _as_samples(pcm) -> np.ndarray:
        a = np.asarray(pcm)
        if a.ndim == 2 and 1 in a.shape:
            a = a.reshape(-1)
        if a.ndim != 1:
            raise InputError(f"push() takes mono audio (1-D), got shape {a.shape}")
        if a.dtype == np.int16:
            return a.astype(np.float32) / 32768.0
        if not np.issubdtype(a.dtype, np.floating):
            raise InputError(f"push() takes float32 or int16 samples, got {a.dtype}")
        a = a.astype(np.float32, copy=False)
        if a.size and not np.isfinite(a).all():
            raise InputError("push() got NaN or infinite samples")
        return a

    def _append(self, x: np.ndarray) -> None:
        if x.size:
            self._x = np.concatenate([self._x, x])
            self._n += x.size

    def _samples(self, a: int, b: int) -> np.ndarray:
        """Samples [a, b) of the utterance (a >= self._x0)."""
        return self._x[a - self._x0: b - self._x0]

    def _mel_final_count(self, final: bool) -> int:
        # mel frame t is final once samples up to 200 t + 400 exist (or at the end of the file)
        return 1 + self._n // HOP if final else max(0, (self._n - 400) // HOP + 1)

    def _extend_mel(self, final: bool) -> None:
        have = self._m0 + len(self._mel)
        want = self._mel_final_count(final)
        if want > have:
            end = self._n if final else HOP * (want - 1) + 400
            self._mel = np.concatenate([self._mel, self._segment_mel(have, want, end)])

    def _segment_mel(self, t0: int, t1: int, end: int) -> np.ndarray:
        """Mel frames [t0, t1) of the utterance, from the samples [a, end).

        The segment starts SEG_LEAD frames before t0 (a = 200 (t0 - SEG_LEAD)), so frame t0's
        window and the sample before it lie inside the segment and the kernel's zero padding
        only touches frames we discard; near the start the segment starts at sample 0, where
        the offline path pads too.  ``end`` is the last sample of the utterance at flush.
        """
        a = HOP * (t0 - SEG_LEAD) if t0 >= SEG_LEAD else 0
        skip = SEG_LEAD if t0 >= SEG_LEAD else t0
        return _audio.log_mel(self._samples(a, end))[skip: skip + (t1 - t0)]

    def _windows_ready(self, final: bool) -> int:
        t = self._m0 + len(self._mel)
        if final:
            return _audio.window_count(t) if t >= WIN else 0
        n = self._next_window
        while _window_start(n) + WIN <= t:
            n += 1
        return n

    def _extend_features(self, final: bool) -> None:
        ready = self._windows_ready(final)
        if ready <= self._next_window:
            return
        t_total = self._m0 + len(self._mel)
        idx = range(self._next_window, ready)
        wins = np.empty((len(idx), 1, _audio.N_MELS, WIN), np.float32)
        for n, i in enumerate(idx):
            s = min(_window_start(i), t_total - WIN)
            wins[n, 0] = self._mel[s - self._m0: s - self._m0 + WIN].T
        emb = self.gen.encode_windows(wins)
        for n, i in enumerate(idx):
            self._feat[i] = emb[n]
            self._gate[i] = self._is_voiced(i)
        self._next_window = ready

    def _is_voiced(self, i: int) -> bool:
        if self.silence_db is None:
            return True
        a = 640 * i
        seg = self._samples(max(a, self._x0), min(a + 3200, self._n))
        rms = float(np.sqrt(np.mean(np.square(seg, dtype=np.float64)))) if seg.size else 0.0
        return 20 * np.log10(max(rms, 1e-10)) >= self.silence_db

    def _row(self, r: int, n_windows: Optional[int]) -> Optional[np.ndarray]:
        """Feature row F[r] (SPEC 3.2); None for the zero rows outside [0, N + 2)."""
        if r < 0 or (n_windows is not None and r >= n_windows + 2):
            return None
        i = max(r - 1, 0)
        if n_windows is not None:
            i = min(i, n_windows - 1)
        return self._feat[i]

    def _advance(self, final: bool) -> List[Frame]:
        self._extend_mel(final)
        if self._m0 + len(self._mel) < WIN and final:
            raise InputError(f"utterance too short: {self._n} samples; at least "
                             f"{(WIN - 1) * HOP} samples (0.08 s) are needed")
        self._extend_features(final)
        n_windows = self._next_window if final else None
        # frame j needs window j + 6 (row j + 7) unless the utterance has ended
        last = (n_windows + 2) if final else max(0, self._next_window - 6)
        jobs = list(range(self._next_frame, last))
        frames = self._render(jobs, n_windows) if jobs else []
        self._next_frame = last
        self._trim()
        return frames

    def _alpha(self, j: int, n_windows: Optional[int]) -> float:
        """Generator weight of frame j under the silence gate (1 = fully generated)."""
        if self.silence_db is None:
            return 1.0
        voiced = lambda f: self._gate.get(max(0, f - 1), False)   # noqa: E731 — frame f's window
        for d in range(self.crossfade + 1):
            if voiced(j - d) or voiced(j + d):
                return 1.0 - d / (self.crossfade + 1)
        return 0.0

    def _render(self, jobs: list, n_windows: Optional[int]) -> List[Frame]:
        gen = self.gen
        order = gen.avatar.order(jobs[-1] + 1)
        d = len(next(iter(self._feat.values())))
        out = []
        batch = gen.config.batch
        for b0 in range(0, len(jobs), batch):
            chunk = jobs[b0:b0 + batch]
            alphas = [self._alpha(j, n_windows) for j in chunk]
            todo = [j for j, a in zip(chunk, alphas) if a > 0]
            preds = {}
            if todo:
                inp = np.empty((len(todo), 6, _image.ROI_SIZE, _image.ROI_SIZE), np.float32)
                aud = np.zeros((len(todo), 2 * CTX, d), np.float32)
                for i, j in enumerate(todo):
                    crop = gen.avatar.crop(order[j])
                    _image.to_generator_input(crop[4:324, 4:324], inp[i])
                    for r in range(2 * CTX):
                        row = self._row(j - CTX + r, n_windows)
                        if row is not None:
                            aud[i, r] = row
                pred = gen.model.run({"input": inp, "audio": aud.reshape(len(todo), *gen.audio_shape)})
                preds = {j: pred[i] for i, j in enumerate(todo)}
            for j, a in zip(chunk, alphas):
                k = order[j]
                if j in preds:
                    image = gen._render_frame(j, k, preds[j])
                    if a < 1.0:
                        tmpl = gen.avatar.frame(k)
                        image = (image * a + tmpl * (1.0 - a) + 0.5).astype(np.uint8)
                else:
                    image = gen.avatar.frame(k).copy()
                self._last_pts = self._t0 + j / _audio.FPS
                out.append(Frame(self._index, self._last_pts, image, self._utterance, j, j in preds))
                self._index += 1
        return out

    def _trim(self) -> None:
        """Drop samples, mel frames and features no future frame can need."""
        for i in [i for i in self._feat if i < self._next_frame - CTX - 1]:
            del self._feat[i]
            self._gate.pop(i, None)
        # the last windows may be clamped back by up to 16 mel frames at flush: keep a margin
        keep_mel = _window_start(self._next_window) - 2 * WIN
        if keep_mel > self._m0:
            self._mel = self._mel[keep_mel - self._m0:]
            self._m0 = keep_mel
        # the next mel segment starts SEG_LEAD frames before the next mel frame; the silence
        # gate reads each window's samples from 640 i
        next_mel = self._m0 + len(self._mel)
        keep_x = min(HOP * (next_mel - SEG_LEAD), 640 * self._next_window)
        if keep_x - self._x0 >= 1 << 15:
            self._x = self._x[keep_x - self._x0:].copy()
            self._x0 = keep_x
