"""Shared fixtures.  Importing fastgen here fails the whole run loudly if the Cython extensions
were not built (there is no pure-Python fallback)."""
from __future__ import annotations

import importlib.machinery

import numpy as np
import pytest

import fastgen._ext.image
import fastgen._ext.mel

for _mod in (fastgen._ext.mel, fastgen._ext.image):
    if not _mod.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
        raise RuntimeError(f"{_mod.__name__} is not a compiled extension: {_mod.__file__}")


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


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
