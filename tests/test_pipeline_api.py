"""The public middle layer: Frame, FeatureTable, FrameStep, sinks and the inference seam.

A user must be able to plug in a sink, post-process frames, or drive the pieces themselves with
the public API alone; these tests do exactly that.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import simplejpeg

import fastgen
from references import speech_like
from fastgen import Avatar, FeatureTable, Frame, Generator, InputError, JpegDirectory
from fastgen.features import ENCODE_CHUNK, window_rows
from fastgen.frame import FrameStep, fill_input, paste_output
from fastgen.runtime import open_session


@pytest.fixture(scope="module")
def gen(dataset) -> Generator:
    avatar = Avatar.open(dataset, generator=dataset / "generator.onnx",
                         audio_encoder=dataset / "audio_encoder.onnx")
    return Generator(avatar, blend="hard", threads=2, batch=2, workers=2)


def test_frames_and_stream_yield_the_same_frame_type(gen):
    wav = speech_like(0.6, seed=3)
    offline = list(gen.frames(wav))
    assert all(type(f) is Frame for f in offline)
    assert [f.index for f in offline] == list(range(gen.frame_count(wav)))
    assert [f.pts for f in offline] == [j / 25 for j in range(len(offline))]
    stream = gen.stream()
    live = stream.push(wav) + stream.flush()
    assert all(type(f) is Frame for f in live) and len(live) == len(offline)
    for a, b in zip(live, offline):
        assert (a.index, a.pts) == (b.index, b.pts)
        assert np.array_equal(a.image, b.image)


def test_a_user_sink_and_post_processing_need_only_the_public_api(gen, tmp_path):
    wav = speech_like(0.5, seed=4)

    def mirrored(frames):                       # a user's post-processing step
        for f in frames:
            yield Frame(f.index, f.pts, np.ascontiguousarray(f.image[:, ::-1]))

    class Collect:                              # a user's own sink
        def __init__(self):
            self.frames = []

        def write(self, frames, *, total=None, progress=None):
            self.frames.extend(frames)
            return len(self.frames)

    mine = Collect()
    assert mine.write(mirrored(gen.frames(wav, count=4))) == 4
    plain = [f.image for f in gen.frames(wav, count=4)]
    for f, ref in zip(mine.frames, plain):
        assert np.array_equal(f.image, ref[:, ::-1])
    out = tmp_path / "mirrored"
    assert JpegDirectory(out, quality=100).write(mirrored(gen.frames(wav, count=3))) == 3
    names = sorted(p.name for p in out.iterdir())
    assert names == ["frame_00001.jpg", "frame_00002.jpg", "frame_00003.jpg"]
    want = simplejpeg.encode_jpeg(np.ascontiguousarray(plain[0][:, ::-1]), quality=100, colorspace="BGR",
                                  colorsubsampling="420")
    assert (out / names[0]).read_bytes() == want      # exactly the mirrored frame's encoding


def test_the_pieces_make_the_engine_frames(gen):
    """FeatureTable + FrameStep + a session, driven by hand, give Generator.frames exactly."""
    wav = speech_like(0.5, seed=5)
    want = [f.image for f in gen.frames(wav)]
    table = gen.feature_table(wav)
    session = open_session(gen.generator_info, threads=1)
    step = FrameStep(gen.avatar, "hard")
    order = gen.avatar.order(len(table))
    inp = np.empty((1, 6, 320, 320), np.float32)
    aud = np.empty((1, *gen.audio_shape), np.float32)
    for j in table.frames:
        step.fill(order[j], inp[0])
        table.window(j, aud[0])
        got = step.finish(order[j], session.run({"input": inp, "audio": aud})[0])
        assert np.array_equal(got, want[j])
        # the module functions are the same step on caller-owned arrays
        crop, frame = gen.avatar.crop(order[j]).copy(), gen.avatar.frame(order[j]).copy()
        x = np.empty((6, 320, 320), np.float32)
        fill_input(crop, x)
        assert np.array_equal(x, inp[0])
        paste_output(session.run({"input": x[None], "audio": aud})[0], crop, frame,
                     gen.avatar.box(order[j]), 0)
        assert np.array_equal(frame, want[j])


def test_feature_table_rule_and_laziness():
    """The rule of docs/semantics.md §3 on a fake encoder; only the windows a range reads run."""
    n, d = 150, 4
    windows = np.arange(n, dtype=np.float32)[:, None, None, None] * np.ones((1, 1, 80, 16), np.float32)
    calls = []

    def encode(w):
        calls.append(len(w))
        return np.repeat(w[:, 0, 0, :1], d, axis=1)       # embedding of window i = [i, i, i, i]

    full = FeatureTable.from_windows(windows, encode)
    assert len(full) == n + 2 and full.frames == range(0, n + 2)
    out = np.empty((16, d), np.float32)
    for j in (0, 1, 7, 8, 9, 10, 75, n - 8, n - 7, n - 6, n - 1, n, n + 1):   # both sides of the slice path
        full.window(j, out)
        for r in range(16):
            row = j - 8 + r
            want = min(max(row - 1, 0), n - 1) if 0 <= row < n + 2 else 0   # zero rows outside F
            assert (out[r] == want).all(), (j, r)
    table = full.table()
    assert np.array_equal(table[:, 0], np.clip(np.arange(n + 2) - 1, 0, n - 1))
    for j in (3, 75, n):                             # other shapes of the same size, strided too
        full.window(j, out)
        flat = np.empty((8, 2 * d), np.float32)
        strided = np.zeros((16, 2 * d), np.float32)[:, ::2]
        full.window(j, flat)
        full.window(j, strided)
        assert np.array_equal(flat.reshape(16, d), out) and np.array_equal(strided, out)

    calls.clear()
    part = FeatureTable.from_windows(windows, encode, start=100, count=2)
    part.window(100, out)
    assert sum(calls) <= ENCODE_CHUNK and part.frames == range(100, 102)
    assert min(calls) >= 1
    valid, index = window_rows(3, None)              # a stream that has not seen the end yet
    assert valid.tolist() == [False] * 5 + [True] * 11 and index.tolist() == [0, 0] + list(range(1, 10))
    with pytest.raises(InputError, match="count"):
        FeatureTable.from_windows(windows, encode, count=-1)


def test_each_model_file_is_inspected_once_per_generator(dataset, monkeypatch):
    import fastgen.engine
    import fastgen.models
    from fastgen.models import inspect as real

    calls = []

    def counting(path, expect=None):
        calls.append(expect)
        return real(path, expect)

    monkeypatch.setattr(fastgen.engine, "inspect", counting)
    monkeypatch.setattr(fastgen.models, "inspect", counting)     # what open_session calls
    avatar = Avatar.open(dataset, generator=dataset / "generator.onnx",
                         audio_encoder=dataset / "audio_encoder.onnx")
    g = Generator(avatar, sessions=2, threads=1)
    assert sorted(calls) == ["audio_encoder", "generator"]
    assert len(g.sessions) == 2 and g.config.sessions == 2
    assert isinstance(g.config, fastgen.EngineConfig) and g.config.reason == "explicit"


def test_choose_config_names_the_bad_value():
    from fastgen.engine import choose_config

    assert (choose_config(2, True).sessions, choose_config(2, True).threads) == (2, 1)
    assert (choose_config(1, True).sessions, choose_config(8, True).threads) == (1, 4)
    for kwargs, name in (({"sessions": 0}, "sessions"), ({"threads": -1}, "threads"),
                         ({"batch": 0}, "batch"), ({"workers": 0}, "workers")):
        with pytest.raises(InputError, match=rf"^{name} must be >= 1"):
            choose_config(2, True, **kwargs)


def test_runtime_is_the_only_seam(gen):
    s = open_session(gen.generator_info, threads=1)
    facts = s.describe()
    assert facts["backend"] == "ort" and facts["precision"] == "fp32" and facts["threads"] == 1
    assert facts["providers"] == ["CPUExecutionProvider"]
    with pytest.raises(InputError, match="unknown backend"):
        open_session(gen.generator_info, backend="nope")


def test_public_api_is_listed_and_demo_works_after_plain_import():
    names = dir(fastgen)
    for name in ("Avatar", "Generator", "Frame", "FeatureTable", "FrameStep", "Stream", "JpegDirectory",
                 "Mp4File", "EngineConfig", "open_session", "FastgenError", "demo", "sinks"):
        assert name in names
    code = ("import fastgen, pydoc; a = fastgen.demo.audio(1.0); assert a.shape == (16000,); "
            "text = pydoc.render_doc(fastgen); assert 'Generator' in text and 'Frame' in text")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_jpeg_sink_on_a_shared_pool_writes_in_order_and_leaves_nothing_on_failure(tmp_path):
    """With an executor, each frame is encoded and written by a pool task; progress stays in
    frame order, and a failing frame source leaves neither the output nor a temporary folder."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(9)]
    seen = []
    with ThreadPoolExecutor(2) as pool:
        sink = JpegDirectory(tmp_path / "ok", 90, workers=2, executor=pool)
        n = sink.write((Frame(i, i / 25, im) for i, im in enumerate(images)), total=9,
                       progress=lambda done, total: seen.append(done))
        assert n == 9 and seen == list(range(1, 10))
        for i, im in enumerate(images, 1):
            assert (tmp_path / "ok" / f"frame_{i:05d}.jpg").read_bytes() == JpegDirectory.encode_image(im, 90)

        def failing():
            for i, im in enumerate(images):
                if i == 6:
                    raise RuntimeError("the source broke at frame 6")
                yield Frame(i, i / 25, im)

        with pytest.raises(RuntimeError, match="frame 6"):
            JpegDirectory(tmp_path / "broken", 90, workers=2, executor=pool).write(failing())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok"]
