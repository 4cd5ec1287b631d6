"""Spliced JPEG output (fastgen.splice) against full encodes, decoded by simplejpeg and OpenCV."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
import simplejpeg

from fastgen import InputError
from fastgen.splice import (MCU_ROWS, SplicingEncoder, assemble, band_rows, decode_rows, encode,
                            encode_with_restarts, restart_interval, row_segments, split)


def photo(rng, h: int, w: int) -> np.ndarray:
    """Smooth colour gradients with texture: compresses like a frame, not like noise."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([128 + 90 * np.sin(x / 37 + c) * np.cos(y / 23 - c) for c in range(3)], -1)
    return np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)


def decode(data: bytes) -> np.ndarray:
    return simplejpeg.decode_jpeg(data, colorspace="BGR")


@pytest.mark.parametrize("h", [1, 15, 16, 17, 31, 32, 33, 720])
def test_restart_encoding_decodes_exactly_as_a_plain_encode(rng, h):
    img = photo(rng, h, 1280 if h == 720 else 77)
    data = encode_with_restarts(img, 90)
    plain = encode(img, 90)
    assert np.array_equal(decode(data), decode(plain))
    assert np.array_equal(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), decode(plain))
    header, _ = split(data)
    assert restart_interval(header) == -(-img.shape[1] // MCU_ROWS)
    segments = row_segments(data)
    assert len(segments) == -(-h // MCU_ROWS) and assemble(header, segments) == data
    if h == 720:
        assert len(data) <= 1.01 * len(plain)          # restarts cost well under 1 %


def test_a_sliced_view_is_encoded_like_its_copy(rng):
    big = photo(rng, 100, 120)
    view = big[10:90, 7:101]
    assert np.array_equal(decode(encode_with_restarts(np.ascontiguousarray(view), 85)),
                          decode(encode(np.ascontiguousarray(view), 85)))


@pytest.fixture
def template(rng):
    img = photo(rng, 160, 200)
    data = encode_with_restarts(img, 95)
    return data, decode(data)


def splicer_for(data, pixels, quality=95, **kw):
    return SplicingEncoder(lambda k: data, lambda k: pixels, quality, **kw)


def test_only_the_band_is_reencoded_and_the_rest_is_the_template(template, rng):
    data, pixels = template
    frame = pixels.copy()
    box = (40, 50, 130, 101)                               # rows 50..100: MCU rows 3..6
    frame[50:101, 40:130] = photo(rng, 51, 90)
    sp = splicer_for(data, pixels)
    out = sp.encode(frame, 0, box)
    got = decode(out)
    header, _ = split(out)
    t_rows, o_rows = row_segments(data), row_segments(out)
    assert o_rows[:3] == t_rows[:3] and o_rows[7:] == t_rows[7:]     # bit-identical coded rows
    assert o_rows[3:7] != t_rows[3:7]
    # outside the band (and the one MCU row beside it that chroma upsampling reads) the decoded
    # frame is the template exactly: no generation loss; a full encode re-compresses it
    keep = np.ones(len(frame), bool)
    keep[2 * MCU_ROWS:8 * MCU_ROWS] = False
    assert np.array_equal(got[keep], frame[keep])
    assert not np.array_equal(decode(encode(frame, 95))[keep], frame[keep])
    # inside, it is what a full encode of the frame gives (to JPEG's own rounding at band edges)
    assert np.abs(got.astype(int) - decode(encode(frame, 95))).max() <= 12
    assert sp.counts == {"spliced": 1, "full": 0, "templates_cut": 1, "templates_encoded": 0}


def test_whole_frame_changed_equals_a_full_encode(template, rng):
    data, pixels = template
    frame = photo(rng, *pixels.shape[:2])
    out = splicer_for(data, pixels).encode(frame, 0, (0, 0, frame.shape[1], frame.shape[0]))
    assert np.array_equal(decode(out), decode(encode(frame, 95)))
    assert np.array_equal(cv2.imdecode(np.frombuffer(out, np.uint8), cv2.IMREAD_COLOR), decode(encode(frame, 95)))


def test_a_plain_template_frame_is_the_template_jpeg(template):
    data, pixels = template
    assert splicer_for(data, pixels).encode(pixels.copy(), 0, (0, 0, 0, 0)) == data


def test_templates_that_cannot_be_cut_are_encoded_once(rng):
    img = photo(rng, 64, 64)
    plain = encode(img, 80)                                 # no restarts, other tables
    pixels = decode(plain)
    sp = splicer_for(plain, pixels, quality=95)
    reencoded = decode(encode_with_restarts(pixels, 95))   # what its rows become, once
    for _ in range(3):
        out = sp.encode(pixels.copy(), 0, (0, 16, 10, 30))
        assert np.array_equal(decode(out)[48:], reencoded[48:])
    assert sp.counts["templates_encoded"] == 1 and sp.counts["templates_cut"] == 0


def test_frames_without_template_facts_get_a_full_encode(template):
    data, pixels = template
    sp = splicer_for(data, pixels)
    assert sp.encode(pixels, -1, None) == encode(pixels, 95)
    assert sp.counts["full"] == 1


def test_the_cache_is_bounded(rng):
    frames = {k: encode_with_restarts(photo(rng, 64, 64), 95) for k in range(6)}
    sp = SplicingEncoder(frames.__getitem__, lambda k: decode(frames[k]), 95, cache_mb=len(frames[0]) * 2.5 / 2 ** 20)
    for k in range(6):
        sp.encode(decode(frames[k]), k, (0, 0, 0, 0))
    assert len(sp.cache) <= 3 and sp.bytes <= sp.budget


def test_thread_pool_gives_the_same_bytes(template, rng):
    data, pixels = template
    frames = []
    for i in range(12):
        f = pixels.copy()
        f[20 + i:60 + i, 30:90] = photo(rng, 40, 60)
        frames.append((f, (30, 20 + i, 90, 60 + i)))
    serial = [splicer_for(data, pixels).encode(f, 0, b) for f, b in frames]
    shared = splicer_for(data, pixels)
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda fb: shared.encode(fb[0], 0, fb[1]), frames))
    assert parallel == serial


def test_not_a_jpeg_is_a_clear_error():
    with pytest.raises(InputError, match="no SOS segment"):
        split(b"\xff\xd8\x00\x00garbage")


def test_render_modes_agree(demo_cache, tmp_path):
    from fastgen import Generator, demo

    gen = Generator(demo.avatar(cache_dir=demo_cache), threads=2)
    for mode in ("auto", "full"):
        gen.render(demo.audio(2.0), tmp_path / mode, count=6, jpeg_mode=mode)
    for a, b in zip(sorted((tmp_path / "auto").iterdir()), sorted((tmp_path / "full").iterdir())):
        x, y = decode(a.read_bytes()), decode(b.read_bytes())
        mse = np.mean((x.astype(float) - y) ** 2)
        assert x.shape == y.shape == (720, 1280, 3) and 10 * np.log10(255 ** 2 / mse) > 45
    with pytest.raises(InputError, match="jpeg_mode must be one of"):
        gen.render(demo.audio(1.0), tmp_path / "bad", count=2, jpeg_mode="fast")


def test_frame_path_bench_reports_every_mode(demo_cache):
    from fastgen import demo
    from fastgen.benchmarks.frame_path import run_frame_path

    report = run_frame_path(demo.avatar(cache_dir=demo_cache), demo.audio(2.0), frames=8, rounds=1)
    assert set(report["frame_path"]) == {"splice", "full", "mp4"}
    for mode, v in report["frame_path"].items():
        assert v["cpu_ms_per_frame"] > 0 and v["fps_1_worker"] > 0 and v["fps_2_workers"] > 0
        assert ("jpeg_splice" in v["stages_ms"]) == (mode == "splice")
    assert report["splice_counts"]["spliced"] > 0 and report["splice_counts"]["full"] == 0


def test_jpeg_workers_keep_frames_in_order(demo_cache, tmp_path):
    from fastgen import Generator, demo

    gen = Generator(demo.avatar(cache_dir=demo_cache), threads=2, workers=3)
    gen.render(demo.audio(2.0), tmp_path / "par", count=9)
    one = Generator(demo.avatar(cache_dir=demo_cache), threads=2, workers=1)
    one.render(demo.audio(2.0), tmp_path / "seq", count=9)
    par = [p.read_bytes() for p in sorted((tmp_path / "par").iterdir())]
    seq = [p.read_bytes() for p in sorted((tmp_path / "seq").iterdir())]
    assert len(par) == 9 and par == seq


# ------------------------------------------------------------------ band decode and lazy frames

@pytest.mark.parametrize("h, w", [(160, 200), (33, 77), (720, 1280), (17, 16)])
def test_decoded_rows_equal_the_whole_decode(rng, h, w):
    data = encode_with_restarts(photo(rng, h, w), 95)
    whole = decode(data)
    spans = {(0, 1), (0, h), (h - 1, h), (0, min(h, 16)), (max(0, h - 17), h), (h // 3, h // 2 + 1),
             (min(5, h - 1), h)}
    for y0, y1 in spans:
        if y0 < y1:
            assert np.array_equal(decode_rows(data, y0, y1), whole[y0:y1]), (y0, y1)
    assert decode_rows(encode(photo(rng, h, w), 95), 0, 1) is None      # no restarts: cannot cut
    assert decode_rows(data, 0, h + 1) is None and decode_rows(data, 3, 3) is None


@pytest.mark.parametrize("y0, y1, h, band", [(0, 5, 100, (0, 16)), (17, 31, 100, (16, 32)),
                                             (90, 100, 100, (80, 100)), (0, 100, 100, (0, 100)),
                                             (5, 5, 100, (0, 0))])
def test_band_rows_cover_the_box_in_whole_mcu_rows(y0, y1, h, band):
    assert band_rows(y0, y1, h) == band


def test_lazy_frames_equal_finished_frames_and_splice_identically(demo_cache):
    from fastgen import Generator, demo

    gen = Generator(demo.avatar(cache_dir=demo_cache), threads=2)
    av = gen.avatar
    rng = np.random.default_rng(3)
    sp = SplicingEncoder(av.jpeg, av.frame, 95, template_rows=av.rows)
    for k in (0, 7, len(av) - 1):
        pred = rng.random((3, 320, 320), dtype=np.float32)
        lazy = gen.step.frame(k, 0.0, k, pred)
        x0, y0, x1, y1 = lazy.changed
        assert lazy.patch.shape == (y1 - y0, x1 - x0, 3)
        assert np.array_equal(av.rows(k, 16, 48), av.frame(k)[16:48])
        spliced = sp.encode_frame(lazy)                    # from the patch and the template's rows
        full = gen.step.finish(k, pred)
        assert np.array_equal(lazy.image, full)             # composed on first use
        assert spliced == sp.encode(full, k, lazy.changed)  # the same bytes as from the full image
    assert sp.counts["spliced"] == 6 and sp.counts["full"] == 0


def test_spliced_frames_decode_in_pil_and_pyav(demo_cache, tmp_path):
    import av
    from PIL import Image

    from fastgen import Generator, demo
    from fastgen.splice import restarts_every_row

    gen = Generator(demo.avatar(cache_dir=demo_cache), threads=2)
    assert restarts_every_row(gen.avatar.jpeg(0))
    gen.render(demo.audio(1.0), tmp_path / "f", count=3)
    for path in sorted((tmp_path / "f").iterdir()):
        ref = decode(path.read_bytes())
        pil = np.asarray(Image.open(path).convert("RGB"))[:, :, ::-1]
        assert np.array_equal(pil, ref)                      # the same libjpeg-turbo decode
        with av.open(str(path)) as container:                # FFmpeg's own JPEG decoder
            frame = next(container.decode(video=0)).to_ndarray(format="bgr24")
        mse = np.mean((frame.astype(float) - ref) ** 2)
        assert frame.shape == ref.shape and 10 * np.log10(255 ** 2 / mse) > 35


def test_a_frame_needs_an_image_or_a_patch():
    from fastgen.frame import Frame

    with pytest.raises(ValueError, match="needs its image"):
        Frame(0, 0.0)
    f = Frame(1, 0.04, np.zeros((2, 2, 3), np.uint8))
    assert f.image.shape == (2, 2, 3) and "index=1" in repr(f)
