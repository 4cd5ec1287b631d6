"""What a live session speaks: utterances of 48 kHz audio, decoded from uploads, PCM or a microphone.

Speech is kept at 48 kHz, the rate Opus plays: the same samples go to the stream (which resamples
them to the model's 16 kHz itself) and to the audio track, so what is heard is what was lip-synced.
"""
from __future__ import annotations

import io
import threading
import time
from typing import Optional

import numpy as np

from ..errors import InputError
from ..timing import MIN_SAMPLES, SAMPLE_RATE

PLAY_RATE = 48000                                   # Opus, and the session's one clock
MIN_PLAY_SAMPLES = MIN_SAMPLES * PLAY_RATE // SAMPLE_RATE
MIC_THRESHOLD = 10 ** (-40 / 20)                    # RMS (-40 dBFS) that opens a microphone utterance
MIC_HANGOVER_S = 0.6                                # silence that ends it
MIC_PREROLL_S = 0.1                                 # audio kept from just before the voice started


def to_play_rate(samples: np.ndarray, rate: int) -> np.ndarray:
    """(n,) or (n, channels) float samples at ``rate`` -> float32 mono at 48 kHz."""
    import soxr

    x = np.asarray(samples, np.float32)
    if x.ndim == 2:
        x = x.mean(axis=1, dtype=np.float32)
    if rate != PLAY_RATE and x.size:
        x = soxr.resample(x, rate, PLAY_RATE, quality="HQ").astype(np.float32, copy=False)
    return np.clip(x, -1.0, 1.0)


def decode_audio_file(data: bytes, max_seconds: float) -> np.ndarray:
    """An uploaded audio file (any format soundfile reads) as float32 mono 48 kHz, or InputError."""
    import soundfile as sf

    if not data:
        raise InputError("the upload is empty: send an audio file (WAV, FLAC, OGG, MP3) as the body")
    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises LibsndfileError/RuntimeError/TypeError
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"cannot read the upload as audio ({reason})") from None
    if samples.shape[1] < 1 or rate <= 0:
        raise InputError("the upload has no audio channels")
    seconds = samples.shape[0] / rate
    if seconds > max_seconds:
        raise InputError(f"the audio is {seconds:.1f} s long; the limit is {max_seconds:g} s")
    if not np.isfinite(samples).all():
        raise InputError("the audio has NaN or infinite samples")
    wav = to_play_rate(samples, int(rate))
    if len(wav) < MIN_PLAY_SAMPLES:
        raise InputError(f"the audio is {seconds:.2f} s long; at least {MIN_SAMPLES / SAMPLE_RATE:.2f} s is needed")
    return wav


def decode_pcm(data: bytes, rate: int) -> np.ndarray:
    """Raw signed 16-bit little-endian mono PCM (a TTS stream's chunk) as float32 samples."""
    if len(data) % 2:
        raise InputError(f"raw PCM must be 16-bit samples: {len(data)} bytes is an odd count")
    if not 8000 <= rate <= 192000:
        raise InputError(f"rate must be 8000-192000 Hz (got {rate})")
    return np.frombuffer(data, "<i2").astype(np.float32) / 32768.0


class SampleBuffer:
    """Samples addressed from the start of an utterance; the consumed head is dropped (amortised),
    so a long stream keeps only what is still to be fed or played."""

    def __init__(self):
        self._x = np.zeros(0, np.float32)
        self._base = 0              # utterance sample index of self._x[0]
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._base + len(self._x)

    def append(self, x: np.ndarray) -> None:
        with self._lock:
            self._x = np.concatenate([self._x, x])

    def read(self, a: int, n: int) -> np.ndarray:
        """Samples [a, a + n) that exist (fewer at the end); a must not have been dropped."""
        with self._lock:
            a = max(a, self._base)
            return self._x[a - self._base: a - self._base + n].copy()

    def drop_before(self, a: int) -> None:
        with self._lock:
            cut = a - self._base
            if cut >= max(PLAY_RATE, len(self._x) // 2):
                self._x = self._x[cut:].copy()
                self._base = a


class Utterance:
    """One thing said: its 48 kHz audio (growing while it streams in), and the frames made of it.

    ``start`` is the session sample at which its audio and its frame 0 play (None until the first
    frame exists).  ``frames`` maps frame j to (image, content), where content is the frame whose
    mouth it shows (j, or an earlier one when the generator could not keep up).
    """

    def __init__(self, uid: int, kind: str, *, echo: bool = True, rate: int = PLAY_RATE):
        self.uid, self.kind, self.echo = uid, kind, echo
        self.audio = SampleBuffer()
        self.fed = 0                    # samples given to the stream
        self.played = 0                 # samples given to the audio track
        self.complete = False           # no more audio will come
        self.start: Optional[int] = None
        self.frames: dict = {}
        self.total_frames: Optional[int] = None
        self.made = 0                   # frames made so far (next frame position)
        self.arrivals: list = []        # (first 48 kHz sample of a chunk, monotonic arrival time)
        self.error: Optional[str] = None
        self._resampler = None
        if rate != PLAY_RATE:
            import soxr

            self._resampler = soxr.ResampleStream(rate, PLAY_RATE, 1, dtype="float32", quality="HQ")

    @property
    def seconds(self) -> float:
        return len(self.audio) / PLAY_RATE

    def consumed(self) -> None:
        """Drop the audio both the stream and the audio track are past."""
        self.audio.drop_before(min(self.fed, self.played))

    def append(self, samples: np.ndarray, *, last: bool = False) -> None:
        """Add audio (at the utterance's input rate); ``last`` ends it."""
        x = np.asarray(samples, np.float32)
        if self._resampler is not None:
            x = self._resampler.resample_chunk(x, last=last)
        if x.size:
            self.arrivals.append((len(self.audio), time.monotonic()))
            self.audio.append(np.clip(x, -1.0, 1.0))
        if last:
            self.complete = True


class MicGate:
    """Cuts a microphone's endless audio into utterances: voice opens one, 0.6 s of silence ends it."""

    def __init__(self):
        self.open = False
        self._silent = 0
        self._preroll = np.zeros(0, np.float32)
        self.lock = threading.Lock()

    def feed(self, samples: np.ndarray) -> tuple[str, np.ndarray]:
        """("start" | "continue" | "end" | "quiet", the samples to append)."""
        rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) if samples.size else 0.0
        voiced = rms >= MIC_THRESHOLD
        if not self.open:
            if not voiced:
                keep = int(MIC_PREROLL_S * PLAY_RATE)
                self._preroll = np.concatenate([self._preroll, samples])[-keep:]
                return "quiet", samples
            self.open, self._silent = True, 0
            out = np.concatenate([self._preroll, samples])
            self._preroll = np.zeros(0, np.float32)
            return "start", out
        self._silent = 0 if voiced else self._silent + len(samples)
        if self._silent >= MIC_HANGOVER_S * PLAY_RATE:
            self.open = False
            return "end", samples
        return "continue", samples
