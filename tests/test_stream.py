"""Streaming equals the offline path frame for frame, for any chunking and across utterances."""
from __future__ import annotations

import numpy as np
import pytest

from references import speech_like
from fastgen import Generator, InputError


@pytest.fixture(scope="module")
def gen(dataset):  # noqa: F811
    from fastgen import Avatar

    avatar = Avatar.open(dataset, generator=dataset / "generator.onnx",
                         audio_encoder=dataset / "audio_encoder.onnx")
    return Generator(avatar, blend="hard", threads=2, batch=4, workers=1)


def feed(stream, wav, chunk):
    frames = []
    for i in range(0, len(wav), chunk):
        frames += stream.push(wav[i:i + chunk])
    return frames + stream.flush()


@pytest.fixture(scope="module")
def utterances():
    return [speech_like(0.9, seed=11), speech_like(0.5, seed=12)]


@pytest.fixture(scope="module")
def offline(gen, utterances):
    return [[f.image for f in gen.frames(w)] for w in utterances]


@pytest.mark.parametrize("chunk", [1, 160, 5328, 10 ** 6])   # 1 sample, 10 ms, 333 ms, whole file
def test_chunkings_equal_offline(gen, utterances, offline, chunk):
    wav = utterances[0]
    if chunk == 1:
        wav = wav[:6000]   # one sample at a time is slow in Python: a shorter utterance
        ref = [f.image for f in gen.frames(wav)]
    else:
        ref = offline[0]
    got = feed(gen.stream(), wav, chunk)
    assert [f.position for f in got] == list(range(len(ref)))
    for f, r in zip(got, ref):
        np.testing.assert_array_equal(f.image, r)


def test_utterances_with_flushes_between(gen, utterances, offline):
    stream = gen.stream()
    got = []
    for wav in utterances:
        got.append(feed(stream, wav, 320))
    for frames, ref in zip(got, offline):
        assert len(frames) == len(ref)
        for f, r in zip(frames, ref):
            np.testing.assert_array_equal(f.image, r)
    flat = [f for fs in got for f in fs]
    assert [f.index for f in flat] == list(range(len(flat)))
    # pts follow the pushed audio: utterance 2 starts where utterance 1's audio ended
    assert flat[len(got[0])].pts == pytest.approx(len(utterances[0]) / 16000)
    assert got[0][5].pts == pytest.approx(5 / 25)


def test_frames_come_as_soon_as_computable(gen, utterances):
    """Frame j needs feature window j+6; it must come out in the push that completes it."""
    wav = utterances[0]
    stream = gen.stream()
    seen = 0
    for end in range(320, len(wav), 320):
        seen += len(stream.push(wav[end - 320:end]))
        mel_final = (end - 400) // 200 + 1
        windows = 0
        while int(80 * (windows / 25)) + 16 <= mel_final:
            windows += 1
        assert seen == max(0, windows - 6)
    stream.flush()


def test_int16_and_resampled_input(gen, utterances):
    wav = utterances[1]
    pcm16 = np.clip(wav * 32768, -32768, 32767).astype(np.int16)
    got = feed(gen.stream(), pcm16, 800)
    ref = [f.image for f in gen.frames(pcm16.astype(np.float32) / 32768)]
    for f, r in zip(got, ref):
        np.testing.assert_array_equal(f.image, r)
    # 48 kHz input is resampled on the fly; frame count matches the 16 kHz duration
    wav48 = np.interp(np.arange(len(wav) * 3) / 3, np.arange(len(wav)), wav).astype(np.float32)
    got48 = feed(gen.stream(sample_rate=48000), wav48, 4800)
    assert abs(len(got48) - len(ref)) <= 1


def test_idle_and_short_utterance(gen):
    stream = gen.stream()
    idle = stream.idle(4)
    assert [f.generated for f in idle] == [False] * 4
    order = gen.avatar.order(4)
    for f, k in zip(idle, order):
        np.testing.assert_array_equal(f.image, gen.avatar.frame(k))
    stream.push(np.zeros(500, np.float32))
    with pytest.raises(InputError, match="too short"):
        stream.flush()
    assert len(feed(stream, speech_like(0.5, seed=3), 640)) > 0   # still usable afterwards


def test_silence_gate(gen):
    quiet = np.zeros(16000, np.float32)
    loud = speech_like(0.6, seed=4)
    wav = np.concatenate([quiet, loud, quiet])
    frames = feed(gen.stream(silence_db=-50.0, crossfade=2), wav, 640)
    ref = [f.image for f in gen.frames(wav)]
    assert len(frames) == len(ref)
    gated = [f for f in frames if not f.generated]
    assert 10 < len(gated) < len(frames) - 5
    for f in gated:   # template face, no generator work
        np.testing.assert_array_equal(f.image, gen.avatar.frame(gen.avatar.order(f.position + 1)[f.position]))
    generated = [f for f in frames if f.generated]
    assert any(np.array_equal(f.image, ref[f.position]) for f in generated)


def test_bad_chunks(gen):
    stream = gen.stream()
    with pytest.raises(InputError):
        stream.push(np.zeros((2, 100), np.float32))
    with pytest.raises(InputError):
        stream.push(np.array([np.nan], np.float32))
    with pytest.raises(InputError):
        stream.push(np.array(["x"]))
