"""Audio front end (docs/semantics.md §1-§2): load, log-mel, and the audio-encoder windows.

The heavy part, :func:`log_mel`, is one GIL-free kernel (``fastgen._ext.mel``); this module
validates inputs, owns the constants and builds the Slaney mel basis once.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Union

import numpy as np

from ._ext import mel as _mel
from .errors import InputError
from .timing import FPS, HOP, MEL_PER_SECOND, MIN_SAMPLES, SAMPLE_RATE, WINDOW_FRAMES, window_start

N_FFT = 800
N_MELS = 80
FMIN = 55.0
FMAX = 7600.0
PREEMPHASIS = 0.97

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class SourceAudio:
    """A file's sound as it is: float32 samples (n, channels) at its own ``rate``.

    What a video carries (docs/semantics.md §9.3); :meth:`for_model` is what the model hears.
    """

    samples: np.ndarray
    rate: int
    path: str = ""

    @property
    def channels(self) -> int:
        return int(self.samples.shape[1])

    @property
    def seconds(self) -> float:
        return self.samples.shape[0] / self.rate

    def for_model(self) -> np.ndarray:
        """float32 mono at 16 kHz, exactly as :func:`load_audio` returns it."""
        return to_model_rate(self.samples, self.rate)


def check_audio_file(path: PathLike) -> str:
    """The path as a string, if it names an existing file (cheap: no audio library imported)."""
    name = os.fspath(path)
    if not os.path.exists(name):
        raise InputError(f"{name}: no such audio file")
    if os.path.isdir(name):
        raise InputError(f"{name}: is a directory, not an audio file")
    return name


def read_audio(path: PathLike) -> SourceAudio:
    """Read any file soundfile reads, keeping its rate and channels."""
    import soundfile as sf

    name = check_audio_file(path)
    try:
        data, rate = sf.read(name, dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises LibsndfileError/RuntimeError/TypeError
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{name}: cannot read audio ({reason})") from None
    if data.shape[1] < 1:
        raise InputError(f"{name}: the file has no audio channels")
    return SourceAudio(np.ascontiguousarray(data), int(rate), name)


def to_model_rate(samples: np.ndarray, rate: int) -> np.ndarray:
    """(n, channels) samples at ``rate`` -> float32 mono at 16 kHz.

    Channels are averaged; other rates are resampled with soxr "HQ" and the length fixed to
    ``ceil(n * 16000 / rate)``, as ``librosa.load(path, sr=16000)`` does.  16 kHz mono input is
    returned untouched.
    """
    import soxr

    wav = samples[:, 0] if samples.shape[1] == 1 else np.mean(samples, axis=1, dtype=np.float32)
    if rate != SAMPLE_RATE:
        n_out = int(np.ceil(wav.shape[0] * (SAMPLE_RATE / rate)))
        wav = soxr.resample(wav, rate, SAMPLE_RATE, quality="HQ")
        if wav.shape[0] >= n_out:
            wav = wav[:n_out]
        else:
            wav = np.pad(wav, (0, n_out - wav.shape[0]))
    return np.ascontiguousarray(wav, dtype=np.float32)


def load_audio(path: PathLike) -> np.ndarray:
    """Read any file soundfile reads as float32 mono at 16 kHz (see :func:`to_model_rate`)."""
    return read_audio(path).for_model()


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    # Slaney: linear below 1 kHz, logarithmic above
    f = np.asanyarray(f, dtype=np.float64)
    f_sp = 200.0 / 3
    mels = f / f_sp
    min_log_mel = 1000.0 / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(f >= 1000.0, min_log_mel + np.log(np.maximum(f, 1e-10) / 1000.0) / logstep, mels)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    f_sp = 200.0 / 3
    min_log_mel = 1000.0 / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, 1000.0 * np.exp(logstep * (m - min_log_mel)), f_sp * m)


@functools.lru_cache(maxsize=None)
def mel_basis(sr: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS,
              fmin: float = FMIN, fmax: float = FMAX) -> np.ndarray:
    """Slaney-scale, Slaney-normalised mel filterbank (n_mels, n_fft // 2 + 1), float32.

    Same arithmetic as ``librosa.filters.mel`` (its default norm and htk=False), so the values
    are identical; read-only because it is cached.
    """
    fftfreqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sr)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fftfreqs)
    weights = np.zeros((n_mels, 1 + n_fft // 2), dtype=np.float32)
    for i in range(n_mels):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels]))[:, np.newaxis]
    weights.setflags(write=False)
    return weights


@functools.lru_cache(maxsize=None)
def _sparse_basis() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The mel basis as (start bin, length, offset, weights): each filter touches few bins."""
    basis = mel_basis()
    starts, lens, offs, vals = [], [], [], []
    off = 0
    for row in basis:
        nz = np.flatnonzero(row)
        lo, hi = (int(nz[0]), int(nz[-1]) + 1) if nz.size else (0, 0)
        starts.append(lo)
        lens.append(hi - lo)
        offs.append(off)
        vals.append(row[lo:hi].astype(np.float64))
        off += hi - lo
    as_int = lambda xs: np.asarray(xs, dtype=np.int32)  # noqa: E731
    return as_int(starts), as_int(lens), as_int(offs), np.concatenate(vals)


def _as_signal(wav: np.ndarray, name: str = "wav") -> np.ndarray:
    arr = np.asarray(wav)
    if arr.ndim != 1:
        raise InputError(f"{name} must be a 1-D mono signal, got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise InputError(f"{name} must be a real-valued signal, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if arr.size and not np.isfinite(arr).all():
        raise InputError(f"{name} contains NaN or infinite samples")
    return arr


def _reflect(pad_mode: str) -> bool:
    if pad_mode not in ("constant", "reflect"):
        raise InputError(f"pad_mode must be 'constant' or 'reflect', got {pad_mode!r}")
    return pad_mode == "reflect"


def log_mel(wav: np.ndarray, pad_mode: str = "constant") -> np.ndarray:
    """Normalised log-mel spectrogram (T, 80) float32 of a 16 kHz signal (docs/semantics.md §1).

    Pre-emphasis 0.97, centred STFT (n_fft 800, hop 200, periodic Hann), magnitude, Slaney mel
    (55-7600 Hz), ``20 log10(max(1e-5, .)) - 20``, then ``clip(8 (S + 100) / 100 - 4, -4, 4)``.
    ``pad_mode="constant"`` (zeros, librosa >= 0.10) is SyncTalk_2D's; ``"reflect"`` serves
    Wav2Lip-era models.  T = 1 + len(wav) // 200.
    """
    reflect = _reflect(pad_mode)
    sig = _as_signal(wav)
    fstart, flen, foff, weights = _sparse_basis()
    out = np.empty((_mel.frame_count(sig.shape[0], HOP), N_MELS), dtype=np.float32)
    _mel.log_mel(sig, N_FFT, HOP, reflect, PREEMPHASIS, fstart, flen, foff, weights, out)
    return out


def stft_magnitude(wav: np.ndarray, n_fft: int = N_FFT, hop: int = HOP, pad_mode: str = "constant",
                   preemphasis: float = PREEMPHASIS) -> np.ndarray:
    """|STFT| (T, n_fft // 2 + 1) float32 of the pre-emphasised signal (periodic Hann, centred)."""
    reflect = _reflect(pad_mode)
    sig = _as_signal(wav)
    if n_fft < 2 or n_fft % 2:
        raise InputError(f"n_fft must be an even number >= 2, got {n_fft}")
    out = np.empty((_mel.frame_count(sig.shape[0], hop), n_fft // 2 + 1), dtype=np.float32)
    _mel.stft_magnitude(sig, n_fft, hop, reflect, preemphasis, out)
    return out


def check_length(n_samples: int, where: str = "audio") -> None:
    """Refuse audio shorter than one encoder window, naming ``where`` and the real durations."""
    if n_samples < MIN_SAMPLES:
        raise InputError(f"{where}: too short ({n_samples / SAMPLE_RATE:.3f} s, {n_samples} samples at "
                         f"16 kHz); at least {MIN_SAMPLES / SAMPLE_RATE:.2f} s ({MIN_SAMPLES} samples) "
                         "is needed")


def window_count(n_mel_frames: int) -> int:
    """Number of audio-encoder windows N for T mel frames (docs/semantics.md §2)."""
    return int((n_mel_frames - WINDOW_FRAMES) / MEL_PER_SECOND * FPS) + 2


def window_starts(n_mel_frames: int) -> np.ndarray:
    """First mel frame of each encoder window (docs/semantics.md §2), int64 (N,)."""
    return np.array([window_start(i, n_mel_frames) for i in range(window_count(n_mel_frames))],
                    dtype=np.int64)


def mel_windows(mel: np.ndarray) -> np.ndarray:
    """Audio-encoder inputs (N, 1, 80, 16) float32: window i is ``mel[s:s + 16].T``.

    Raises :class:`fastgen.InputError` when the audio is shorter than one window (16 mel
    frames, 0.08 s).
    """
    mel = np.asarray(mel)
    if mel.ndim != 2 or mel.shape[1] != N_MELS:
        raise InputError(f"mel must have shape (T, {N_MELS}), got {mel.shape}")
    t = mel.shape[0]
    if t < WINDOW_FRAMES:
        raise InputError(f"audio too short: {t} mel frames; at least {WINDOW_FRAMES} "
                         f"({MIN_SAMPLES / SAMPLE_RATE:.2f} s of audio) are needed")
    idx = window_starts(t)[:, None] + np.arange(WINDOW_FRAMES)
    return np.ascontiguousarray(mel[idx].transpose(0, 2, 1)[:, None], dtype=np.float32)
