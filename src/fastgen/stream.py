"""Incremental rendering: push audio as it arrives, get every frame as soon as it is computable.

A frame j needs the feature rows F[j-8 .. j+7] (docs/semantics.md §3.3), i.e. encoder window j+6, i.e. mel
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

from typing import Callable, List, Optional

import numpy as np

from . import audio as audio_io
from .errors import InputError
from .features import window_rows
from .frame import Frame, FrameStep
from .image import input_batch
from .runtime import Session
from .timing import FEATURE_CONTEXT, FPS, HOP, SAMPLE_RATE, WINDOW_FRAMES, frame_time, window_start

SEG_LEAD = 3                # mel frames computed before the wanted ones (pre-emphasis context)
HALF_WINDOW = audio_io.N_FFT // 2          # mel frame t spans samples up to HOP t + 400
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS              # 640: encoder window i starts at sample 640 i
GATE_SAMPLES = 5 * SAMPLES_PER_FRAME                # the silence gate measures 0.2 s per window


class Stream:
    """Push-audio / pull-frames session on a generator's pieces (``Generator.stream()``).

    ``step`` makes the frames, ``session`` runs the generator, ``encode`` runs the audio
    encoder on mel windows.  ``silence_db`` (off by default) gates the generator: frames whose
    encoder window is quieter than that RMS level (dBFS) show the template face, with a
    ``crossfade``-frame blend at the edges of speech.
    """

    def __init__(self, step: FrameStep, session: Session, encode: Callable[[np.ndarray], np.ndarray],
                 audio_shape: tuple, *, batch: int = 1, sample_rate: int = SAMPLE_RATE,
                 silence_db: Optional[float] = None, crossfade: int = 3):
        if sample_rate <= 0:
            raise InputError(f"sample_rate must be positive, got {sample_rate}")
        if batch < 1:
            raise InputError(f"batch must be >= 1, got {batch}")
        self.step, self.session, self.encode = step, session, encode
        self.audio_shape, self.batch = tuple(audio_shape), int(batch)
        self.sample_rate = int(sample_rate)
        self.silence_db = silence_db
        self.crossfade = max(0, int(crossfade))
        self._index = 0            # global frame counter
        self._utterance = 0
        self._t0 = 0.0             # stream time at which the current utterance started
        self._last_pts = -1.0 / FPS
        self._resampler = None
        self._reset_utterance()

    # ------------------------------------------------------------------ state

    def _reset_utterance(self) -> None:
        self._x = np.zeros(0, np.float32)   # samples from global index self._x0
        self._x0 = 0
        self._n = 0                         # samples pushed in this utterance
        self._mel = np.zeros((0, audio_io.N_MELS), np.float32)   # final mel frames from self._m0
        self._m0 = 0
        self._feat: dict[int, np.ndarray] = {}   # window index -> embedding
        self._next_window = 0
        self._next_frame = 0
        self._gate: dict[int, bool] = {}
        if self.sample_rate != SAMPLE_RATE:
            import soxr

            self._resampler = soxr.ResampleStream(self.sample_rate, SAMPLE_RATE, 1,
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
            self._t0 += self._n / SAMPLE_RATE
            self._utterance += 1
            self._reset_utterance()
        return frames

    def idle(self, n: int) -> List[Frame]:
        """``n`` template frames continuing the ping-pong walk, for the pauses between utterances."""
        out = []
        order = self.step.avatar.order(self._index + int(n))
        for _ in range(int(n)):
            self._last_pts += 1 / FPS
            k = order[self._index]
            out.append(Frame(self._index, self._last_pts, self.step.template(k), self._utterance, -1, False,
                             template=k, changed=(0, 0, 0, 0)))
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
        return 1 + self._n // HOP if final else max(0, (self._n - HALF_WINDOW) // HOP + 1)

    def _extend_mel(self, final: bool) -> None:
        have = self._m0 + len(self._mel)
        want = self._mel_final_count(final)
        if want > have:
            end = self._n if final else HOP * (want - 1) + HALF_WINDOW
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
        return audio_io.log_mel(self._samples(a, end))[skip: skip + (t1 - t0)]

    def _windows_ready(self, final: bool) -> int:
        t = self._m0 + len(self._mel)
        if final:
            return audio_io.window_count(t) if t >= WINDOW_FRAMES else 0
        n = self._next_window
        while window_start(n) + WINDOW_FRAMES <= t:
            n += 1
        return n

    def _extend_features(self, final: bool) -> None:
        ready = self._windows_ready(final)
        if ready <= self._next_window:
            return
        t_total = self._m0 + len(self._mel)
        idx = range(self._next_window, ready)
        wins = np.empty((len(idx), 1, audio_io.N_MELS, WINDOW_FRAMES), np.float32)
        for n, i in enumerate(idx):
            s = window_start(i, t_total)
            wins[n, 0] = self._mel[s - self._m0: s - self._m0 + WINDOW_FRAMES].T
        emb = self.encode(wins)
        for n, i in enumerate(idx):
            self._feat[i] = emb[n]
            self._gate[i] = self._is_voiced(i)
        self._next_window = ready

    def _is_voiced(self, i: int) -> bool:
        if self.silence_db is None:
            return True
        a = SAMPLES_PER_FRAME * i
        seg = self._samples(max(a, self._x0), min(a + GATE_SAMPLES, self._n))
        rms = float(np.sqrt(np.mean(np.square(seg, dtype=np.float64)))) if seg.size else 0.0
        return 20 * np.log10(max(rms, 1e-10)) >= self.silence_db

    def _advance(self, final: bool) -> List[Frame]:
        self._extend_mel(final)
        if self._m0 + len(self._mel) < WINDOW_FRAMES and final:
            audio_io.check_length(self._n, "utterance")
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
        order = self.step.avatar.order(jobs[-1] + 1)
        out = []
        for b0 in range(0, len(jobs), self.batch):
            chunk = jobs[b0:b0 + self.batch]
            alphas = [self._alpha(j, n_windows) for j in chunk]
            todo = [j for j, a in zip(chunk, alphas) if a > 0]
            preds = {}
            if todo:
                inp = input_batch(len(todo))
                aud = np.empty((len(todo), *self.audio_shape), np.float32)
                for i, j in enumerate(todo):
                    self.step.fill(order[j], inp[i])
                    self._window(j, n_windows, aud[i])
                pred = self.session.run({"input": inp, "audio": aud})
                preds = {j: pred[i] for i, j in enumerate(todo)}
            for j, a in zip(chunk, alphas):
                k = order[j]
                image = self.step.finish(k, preds[j], a) if j in preds else self.step.template(k)
                self._last_pts = self._t0 + frame_time(j)
                out.append(Frame(self._index, self._last_pts, image, self._utterance, j, j in preds, template=k,
                                 changed=self.step.changed(k) if j in preds else (0, 0, 0, 0)))
                self._index += 1
        return out

    def _window(self, j: int, n_windows: Optional[int], out: np.ndarray) -> None:
        """Frame j's audio tensor from the embeddings computed so far (docs/semantics.md §3.3)."""
        valid, index = window_rows(j, n_windows)
        flat = out.reshape(2 * FEATURE_CONTEXT, -1)
        flat[~valid] = 0
        if index.size:
            flat[valid] = np.stack([self._feat[i] for i in index])

    def _trim(self) -> None:
        """Drop samples, mel frames and features no future frame can need."""
        for i in [i for i in self._feat if i < self._next_frame - FEATURE_CONTEXT - 1]:
            del self._feat[i]
            self._gate.pop(i, None)
        # the last windows may be clamped back by up to 16 mel frames at flush: keep a margin
        keep_mel = window_start(self._next_window) - 2 * WINDOW_FRAMES
        if keep_mel > self._m0:
            self._mel = self._mel[keep_mel - self._m0:]
            self._m0 = keep_mel
        # the next mel segment starts SEG_LEAD frames before the next mel frame; the silence
        # gate reads each window's samples from 640 i
        next_mel = self._m0 + len(self._mel)
        keep_x = min(HOP * (next_mel - SEG_LEAD), SAMPLES_PER_FRAME * self._next_window)
        if keep_x - self._x0 >= 1 << 15:
            self._x = self._x[keep_x - self._x0:].copy()
            self._x0 = keep_x
