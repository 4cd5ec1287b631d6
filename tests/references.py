"""Plain reference implementations the tests compare fastgen against (docs/semantics.md).

librosa + scipy for the mel front end, the reference template-order loop, a speech-like test
signal and a photo-like test image.  Shared by several test modules; fixtures live in ``conftest.py``.
"""
from __future__ import annotations

import librosa
import numpy as np
import scipy.signal

MEL_BASIS = librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600)


def speech_like(seconds: float, sr: int = 16000, seed: int = 0) -> np.ndarray:
    """Voiced formant-ish signal with syllable rhythm, pauses and a little breath noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 120 + 25 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    voice = sum(np.sin(k * phase) / k * np.exp(-((k * f0 - fm) / 300.0) ** 2)
                for k in range(1, 40) for fm in (500.0, 1500.0, 2500.0))
    envelope = np.clip(np.sin(2 * np.pi * 3.0 * t), 0, None) ** 0.5 * (np.sin(2 * np.pi * 0.3 * t) > -0.6)
    sig = 0.3 * voice * envelope + 0.003 * rng.standard_normal(t.size)
    return sig.astype(np.float32)


def reference_log_mel(wav: np.ndarray, pad_mode: str = "constant") -> np.ndarray:
    y = scipy.signal.lfilter([1, -0.97], [1], wav)
    d = librosa.stft(y=y, n_fft=800, hop_length=200, win_length=800, pad_mode=pad_mode)
    s = 20 * np.log10(np.maximum(1e-5, np.dot(MEL_BASIS, np.abs(d)))) - 20
    return np.clip(8 * (s + 100) / 100 - 4, -4, 4).T


def reference_order(templates: int, n: int) -> list[int]:
    """The reference's ping-pong loop (docs/semantics.md §4.4), verbatim; it would index past
    the end for one template."""
    out, idx, step, last = [], 0, 0, templates - 1
    for _ in range(n):
        if idx > last - 1:
            step = -1
        if idx < 1:
            step = 1
        idx += step
        out.append(idx)
    return out


def photo(rng, h: int, w: int) -> np.ndarray:
    """Smooth colour gradients with texture: compresses like a frame, not like noise."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([128 + 90 * np.sin(x / 37 + c) * np.cos(y / 23 - c) for c in range(3)], -1)
    return np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
