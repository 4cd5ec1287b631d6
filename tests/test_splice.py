"""Spliced JPEG output (fastgen.splice) against full encodes, decoded by simplejpeg and OpenCV."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
import simplejpeg

from fastgen import InputError
from fastgen.splice import (MCU_ROWS, SplicingEncoder, TileGrid, assemble, band_rows, decode_region, decode_rows,
                            encode, encode_with_restarts, restart_interval, row_segments, split, splittable,
                            tile_interval)
from references import photo


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
    assert restart_interval(header) == tile_interval(img.shape[1]) == (8 if h == 720 else 5)
    grid = TileGrid.of(header)
    segments = row_segments(data)
    assert len(segments) == grid.count == -(-h // MCU_ROWS) * grid.tiles and assemble(header, segments) == data
    if h == 720:
        assert grid.tiles == 10 and len(data) <= 1.01 * len(plain)     # restarts cost under 1 %


@pytest.mark.parametrize("w, interval", [(1280, 8), (1920, 8), (1080, 4), (720, 5), (208, 13), (16, 1)])
def test_tile_interval_divides_the_row(w, interval):
    assert tile_interval(w) == interval and -(-w // 16) % interval == 0


def test_a_sliced_view_is_encoded_like_its_copy(rng):
    big = photo(rng, 100, 120)
    view = big[10:90, 7:101]
    assert np.array_equal(decode(encode_with_restarts(np.ascontiguousarray(view), 85)),
                          decode(encode(np.ascontiguousarray(view), 85)))


@pytest.fixture
def template(rng):
    img = photo(rng, 160, 240)                  # 15 MCUs a row: 3 tiles of 80 px
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
    grid = TileGrid.of(split(data)[0])
    assert (grid.tiles, grid.tile_px) == (3, 80)                      # 240 px: tiles of 5 MCUs
    t_segs, o_segs = row_segments(data), row_segments(out)
    fresh = {r * 3 + t for r in range(3, 7) for t in range(0, 2)}    # x 40..130: tiles 0, 1
    assert [o for i, o in enumerate(o_segs) if i not in fresh] == \
        [t for i, t in enumerate(t_segs) if i not in fresh]          # bit-identical coded tiles
    assert all(o_segs[i] != t_segs[i] for i in fresh)
    # outside the fresh tiles (and the one MCU beside them that chroma upsampling reads) the
    # decoded frame is the template exactly: no generation loss; a full encode re-compresses it
    keep = np.ones(frame.shape[:2], bool)
    keep[2 * MCU_ROWS:8 * MCU_ROWS, :160 + MCU_ROWS] = False     # tiles 0-1 + 1 MCU
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


def test_lazy_frames_equal_finished_frames_and_splice_identically(demo_cache, tmp_path):
    from fastgen import Generator, demo
    from fastgen.frame import Frame

    gen = Generator(demo.avatar(cache_dir=demo_cache), threads=2)
    av = gen.avatar
    rng = np.random.default_rng(3)
    sp = SplicingEncoder(av.jpeg, av.frame, 95, template_region=av.region)
    for k in (0, 7, len(av) - 1):
        pred = rng.random((3, 320, 320), dtype=np.float32)
        lazy = gen.step.frame(k, 0.0, k, pred)
        x0, y0, x1, y1 = lazy.changed
        assert lazy.patch.shape == (y1 - y0, x1 - x0, 3)
        assert np.array_equal(av.rows(k, 16, 48), av.frame(k)[16:48])
        spliced = sp.encode_frame(lazy)                    # from the patch and the template's rows
        sp.write_frame(lazy, str(tmp_path / f"{k}.jpg"))    # assembled and written in one call
        assert (tmp_path / f"{k}.jpg").read_bytes() == spliced
        full = gen.step.finish(k, pred)
        assert np.array_equal(lazy.image, full)             # composed on first use
        assert spliced == sp.encode(full, k, lazy.changed)  # the same bytes as from the full image
        whole = Frame(k, 0.0, full)                         # no template facts: a full encode, written
        sp.write_frame(whole, str(tmp_path / f"full{k}.jpg"))
        assert (tmp_path / f"full{k}.jpg").read_bytes() == sp.encode_frame(whole)
    assert sp.counts["spliced"] == 9 and sp.counts["full"] == 6


def test_spliced_frames_decode_in_pil_and_pyav(demo_cache, tmp_path):
    import av
    from PIL import Image

    from fastgen import Generator, demo
    gen = Generator(demo.avatar(cache_dir=demo_cache), threads=2)
    assert splittable(gen.avatar.jpeg(0)) and TileGrid.of(split(gen.avatar.jpeg(0))[0]).tiles == 10
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


# ------------------------------------------------------------------ tiles

@pytest.mark.parametrize("h, w, interval", [(720, 1280, None), (100, 240, None), (37, 250, None),
                                            (45, 136, None), (64, 96, 6), (33, 77, 5)])
def test_decoded_regions_equal_the_whole_decode(rng, h, w, interval):
    """Any box, decoded from its tiles and one tile around them, is the whole decode's pixels;
    ``interval`` = MCUs per row is the row-restart layout of earlier packs."""
    data = encode_with_restarts(photo(rng, h, w), 95, interval)
    whole = decode(data)
    boxes = [(0, 0, 1, 1), (0, 0, w, h), (w - 1, h - 1, w, h), (w // 3, h // 4, w // 2 + 1, h // 2 + 3),
             (0, h - 9, w, h), (w - 17, 0, w, 5), (15, 15, 17, 17), (1, 2, w - 3, h - 1)]
    for x0, y0, x1, y1 in boxes:
        assert np.array_equal(decode_region(data, x0, y0, x1, y1), whole[y0:y1, x0:x1]), (x0, y0, x1, y1)
    assert decode_region(data, 0, 0, w + 1, h) is None and decode_region(data, 3, 3, 3, 9) is None
    assert decode_region(encode(photo(rng, h, w), 95), 0, 0, 1, 1) is None


def box_cases(h, w):
    return {"top edge": (w // 4, 0, w // 2, min(h, 21)), "bottom edge": (w // 5, max(0, h - 19), w - 3, h),
            "whole height": (w // 3, 0, w // 3 + 11, h), "left edge": (0, h // 3, 9, h // 2 + 1),
            "right edge": (w - 30, h // 4, w, h // 2), "whole frame": (0, 0, w, h), "one pixel": (w - 1, h - 1, w, h)}


@pytest.mark.parametrize("h, w", [(160, 240), (100, 250), (45, 137), (720, 1280), (33, 77)])
@pytest.mark.parametrize("case", ["top edge", "bottom edge", "whole height", "left edge", "right edge",
                                  "whole frame", "one pixel"])
def test_spliced_tiles_are_a_full_encodes_and_the_rest_is_the_template(rng, h, w, case):
    """Odd sizes (not multiples of 16, or of the tile) and boxes at every edge: the fresh tiles
    are bit-identical to the same tiles of a full tiled encode of the frame, every other tile is
    the template's own coded tile, and the result decodes in simplejpeg and OpenCV."""
    data = encode_with_restarts(photo(rng, h, w), 95)
    pixels = decode(data)
    x0, y0, x1, y1 = box_cases(h, w)[case]
    frame = pixels.copy()
    frame[y0:y1, x0:x1] = photo(rng, y1 - y0, x1 - x0)
    out = splicer_for(data, pixels).encode(frame, 0, (x0, y0, x1, y1))
    grid = TileGrid.of(split(data)[0])
    t0, r0, t1, r1 = grid.span(x0, y0, x1, y1)
    fresh = {r * grid.tiles + t for r in range(r0, r1) for t in range(t0, t1)}
    full_tiled = row_segments(encode_with_restarts(frame, 95))
    for i, (o, t, f) in enumerate(zip(row_segments(out), row_segments(data), full_tiled)):
        assert o == (f if i in fresh else t), i
    got = decode(out)
    assert np.array_equal(cv2.imdecode(np.frombuffer(out, np.uint8), cv2.IMREAD_COLOR), got)
    # after decode, to JPEG's own rounding (chroma upsampling reads across the fresh tiles' edge)
    assert np.abs(got.astype(int) - decode(encode(frame, 95))).max() <= 12


def test_row_restart_templates_of_earlier_packs_are_still_cut(rng):
    img = photo(rng, 96, 160)
    data = encode_with_restarts(img, 95, interval=10)         # one segment per MCU row
    pixels = decode(data)
    frame = pixels.copy()
    frame[40:60, 30:70] = 0
    sp = splicer_for(data, pixels)
    out = sp.encode(frame, 0, (30, 40, 70, 60))
    assert restart_interval(split(out)[0]) == 10 and sp.counts["templates_cut"] == 1
    t_rows, o_rows = row_segments(data), row_segments(out)
    assert o_rows[:2] == t_rows[:2] and o_rows[4:] == t_rows[4:] and o_rows[2:4] != t_rows[2:4]
    assert np.array_equal(decode(out)[40:60, 30:70], decode(encode(frame, 95))[40:60, 30:70])


def test_an_interval_that_does_not_divide_the_row_is_refused(rng):
    with pytest.raises(InputError, match="does not divide"):
        encode_with_restarts(photo(rng, 32, 160), 95, interval=3)
