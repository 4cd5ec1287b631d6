"""fastgen.audio against librosa + scipy written exactly as docs/semantics.md §1 states it."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import librosa
import numpy as np
import pytest
import scipy.signal
import soundfile as sf

from references import MEL_BASIS as BASIS, reference_log_mel, speech_like
from fastgen import InputError, audio

MEL_TOL = 2e-4  # max abs difference on the normalised log-mel (range [-4, 4])




def signals():
    rng = np.random.default_rng(7)
    impulse = np.zeros(16000, np.float32)
    impulse[8000] = 1.0
    yield "speech", speech_like(3.0)
    yield "silence", np.zeros(16000, np.float32)
    yield "impulse", impulse
    yield "noise", (0.1 * rng.standard_normal(12345)).astype(np.float32)
    yield "loud", np.clip(3 * speech_like(1.0, seed=3), -1, 1)
    for n in (800, 801, 1199, 1200, 1201, 3199, 3200, 3201, 4000):
        yield f"len{n}", speech_like(0.3, seed=n)[:n]


@pytest.mark.parametrize("pad_mode", ["constant", "reflect"])
@pytest.mark.parametrize("name,wav", list(signals()), ids=[n for n, _ in signals()])
def test_log_mel_matches_librosa(name, wav, pad_mode):
    got = audio.log_mel(wav, pad_mode=pad_mode)
    ref = reference_log_mel(wav, pad_mode)
    assert got.dtype == np.float32 and got.shape == ref.shape == (1 + len(wav) // 200, 80)
    assert np.abs(got - ref).max() <= MEL_TOL


@pytest.mark.parametrize("n", [0, 1, 199, 200, 201])
def test_log_mel_tiny_inputs_constant(n):
    wav = speech_like(0.1, seed=n)[:n]
    got = audio.log_mel(wav)
    assert got.shape == (1 + n // 200, 80)
    if n:
        assert np.abs(got - reference_log_mel(wav)).max() <= MEL_TOL
    else:  # an empty signal is one all-zero frame: the floor everywhere
        assert np.all(got == -4.0)


def test_mel_basis_identical_to_librosa():
    assert np.array_equal(audio.mel_basis(), BASIS)


@pytest.mark.parametrize("n_fft,hop", [(800, 200), (512, 128), (882, 220), (6, 3), (2, 1)])
def test_stft_magnitude_mixed_radix(n_fft, hop, rng):
    wav = rng.standard_normal(5000).astype(np.float32)
    y = scipy.signal.lfilter([1, -0.97], [1], wav)
    ref = np.abs(librosa.stft(y=y, n_fft=n_fft, hop_length=hop, win_length=n_fft)).T
    got = audio.stft_magnitude(wav, n_fft=n_fft, hop=hop)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 1e-5 * max(1.0, ref.max())


def test_log_mel_accepts_views_and_other_dtypes():
    wav = speech_like(1.0)
    doubled = np.repeat(wav, 2)[::2]  # a strided view
    np.testing.assert_array_equal(audio.log_mel(doubled), audio.log_mel(wav))
    np.testing.assert_array_equal(audio.log_mel(wav.astype(np.float64)), audio.log_mel(wav))


def test_log_mel_threads_equal_sequential():
    wavs = [speech_like(1.0 + 0.1 * i, seed=i) for i in range(8)]
    sequential = [audio.log_mel(w) for w in wavs]
    with ThreadPoolExecutor(8) as pool:
        threaded = list(pool.map(audio.log_mel, wavs))
    for a, b in zip(sequential, threaded):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bad", [np.zeros((2, 100), np.float32), np.array(["a", "b"]),
                                 np.array([0.0, np.nan], np.float32), np.array([np.inf] * 300)])
def test_log_mel_bad_input_raises(bad):
    with pytest.raises(InputError):
        audio.log_mel(bad)


def test_log_mel_bad_pad_mode():
    with pytest.raises(ValueError, match="pad_mode"):
        audio.log_mel(np.zeros(100, np.float32), pad_mode="edge")


# ------------------------------------------------------------------ encoder windows

def reference_windows(mel: np.ndarray) -> np.ndarray:
    t = mel.shape[0]
    n = int((t - 16) / 80 * 25) + 2
    out = []
    for i in range(n):
        s = int(80 * (i / 25))
        e = s + 16
        if e > t:
            e, s = t, t - 16
        out.append(mel[s:e].T[None])
    return np.stack(out)


@pytest.mark.parametrize("t", [16, 17, 95, 96, 97, 400, 3591])
def test_mel_windows_match_spec(t, rng):
    mel = rng.standard_normal((t, 80)).astype(np.float32)
    got = audio.mel_windows(mel)
    ref = reference_windows(mel)
    assert got.shape == ref.shape and got.flags.c_contiguous
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("t", [0, 1, 15])
def test_mel_windows_too_short(t):
    with pytest.raises(InputError, match="too short"):
        audio.mel_windows(np.zeros((t, 80), np.float32))


def test_mel_windows_wrong_shape():
    with pytest.raises(InputError, match=r"\(T, 80\)"):
        audio.mel_windows(np.zeros((100, 81), np.float32))


# ------------------------------------------------------------------ loading

@pytest.mark.parametrize("rate,channels", [(44100, 2), (48000, 1), (8000, 1), (16000, 1), (16000, 2)])
def test_load_audio_matches_librosa(tmp_path, rate, channels):
    t = np.arange(int(1.3 * rate)) / rate
    data = 0.4 * np.sin(2 * np.pi * 220 * t) + 0.1 * np.sin(2 * np.pi * 3100 * t)
    if channels == 2:
        data = np.stack([data, 0.5 * np.cos(2 * np.pi * 330 * t)], axis=1)
    path = tmp_path / f"a_{rate}_{channels}.wav"
    sf.write(path, data, rate, subtype="PCM_16")
    got = audio.load_audio(path)
    ref, sr = librosa.load(path, sr=16000)
    assert sr == 16000 and got.dtype == np.float32 and got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)
    if rate == 16000 and channels == 1:  # untouched at the model's rate
        np.testing.assert_array_equal(got, sf.read(path, dtype="float32")[0])


def test_load_audio_errors(tmp_path):
    with pytest.raises(InputError, match="no such audio file"):
        audio.load_audio(tmp_path / "missing.wav")
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF\x00\x01garbage" * 10)
    with pytest.raises(InputError, match="junk.wav: cannot read audio"):
        audio.load_audio(junk)
    with pytest.raises(InputError, match="is a directory"):
        audio.load_audio(tmp_path)
