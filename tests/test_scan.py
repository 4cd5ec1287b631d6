"""The restart-segment kernel (fastgen.jpeg_layout.restart_segments, _ext/scan_core.h).

Its reference is libjpeg-turbo itself: each tile encoded on its own by simplejpeg.  A region
encoded in one call and cut by the kernel must give those very bytes, for every size an MCU grid
can have at its edges.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import simplejpeg

from fastgen import InputError
from fastgen._ext.scan import restart_segments as kernel
from fastgen.jpeg_layout import huffman_tables, restart_segments, split, with_restarts
from references import photo

MCU = 16


def encode(image: np.ndarray, quality: int = 95) -> bytes:
    return simplejpeg.encode_jpeg(image, quality=quality, colorspace="BGR", colorsubsampling="420")


def tiles_one_by_one(image: np.ndarray, interval: int, quality: int = 95) -> list[bytes]:
    """The reference: every tile (``interval`` MCUs of one MCU row) encoded alone, its scan."""
    h, w = image.shape[:2]
    step = interval * MCU
    out = []
    for y in range(0, h, MCU):
        for x in range(0, -(-w // step) * step, step):
            out.append(split(encode(np.ascontiguousarray(image[y:y + MCU, x:x + step]), quality))[1])
    return out


# heights: 1 row, one MCU less one/exactly/plus one, several; widths: MCU counts of 1, n-1, n, n+1
@pytest.mark.parametrize("h", [1, 15, 16, 17, 47, 48, 49])
@pytest.mark.parametrize("w, interval", [(16, 1), (127, 8), (128, 8), (129, 9), (112, 7), (144, 3), (1280, 8)])
def test_segments_equal_tiles_encoded_one_by_one(rng, h, w, interval):
    image = photo(rng, h, w)
    got = restart_segments(encode(image), interval)
    assert got == tiles_one_by_one(image, interval)


@pytest.mark.parametrize("quality", [1, 50, 90, 100])
def test_every_quality_and_noise(rng, quality):
    """Noise at quality 100 makes the longest codes and the largest DC differences."""
    image = rng.integers(0, 256, (48, 256, 3), np.uint8)
    assert restart_segments(encode(image, quality), 4) == tiles_one_by_one(image, 4, quality)


def test_flat_and_extreme_images(rng):
    """All-black then all-white tiles: DC differences of the largest magnitude at each restart."""
    image = np.zeros((32, 256, 3), np.uint8)
    image[:, 128:] = 255
    image[16:, :64] = 255
    assert restart_segments(encode(image), 4) == tiles_one_by_one(image, 4)


def test_a_sliced_buffer_is_read_in_place(rng):
    image = photo(rng, 32, 128)
    data = encode(image)
    header, scan = split(data)
    padded = bytearray(b"\x00" * 7 + scan + b"\x00" * 5)
    view = memoryview(padded)[7:7 + len(scan)]
    assert kernel(view, huffman_tables(header), 2, 8, 8) == tiles_one_by_one(image, 8)


def test_threads_give_the_same_segments(rng):
    images = [photo(rng, 64, 256) for _ in range(6)]
    data = [encode(image) for image in images]
    sequential = [restart_segments(d, 8) for d in data]
    with ThreadPoolExecutor(2) as pool:
        threaded = list(pool.map(lambda d: restart_segments(d, 8), data * 4))
    assert threaded == sequential * 4


def test_damaged_scans_raise_and_never_crash(rng):
    """Truncated, cut at every length, or with random bytes: an InputError, never a crash; and
    what does decode is only ever a list of segments."""
    data = encode(photo(rng, 32, 128))
    header, scan = split(data)
    with pytest.raises(InputError, match="ends before its last MCU"):
        restart_segments(header + scan[:len(scan) // 2] + b"\xff\xd9", 8)
    with pytest.raises(InputError):
        restart_segments(header + b"\xff\xd9", 8)
    for cut in range(0, len(scan), 7):
        try:
            restart_segments(header + scan[:cut] + b"\xff\xd9", 8)
        except InputError:
            pass
    for _ in range(200):
        damaged = bytearray(scan)
        for at in rng.integers(0, len(damaged), 4):
            damaged[at] = int(rng.integers(0, 255))          # never FF: a marker is its own case
        try:
            segments = restart_segments(header + bytes(damaged) + b"\xff\xd9", 8)
            assert len(segments) == 2
        except InputError:
            pass


def test_bad_layouts_are_refused(rng):
    data = encode(photo(rng, 32, 128))
    header, scan = split(data)
    with pytest.raises(InputError, match="restart markers"):
        restart_segments(with_restarts(header, 8) + scan + b"\xff\xd9", 8)
    with pytest.raises(InputError, match="cannot be cut every 3 MCUs"):
        restart_segments(data, 3)
    with pytest.raises(InputError, match="marker"):
        restart_segments(header + scan[:20] + b"\xff\xd0" + scan[20:] + b"\xff\xd9", 8)
    grey = simplejpeg.encode_jpeg(photo(rng, 32, 128)[:, :, :1].copy(), colorspace="GRAY")
    with pytest.raises(InputError, match="4:2:0"):
        restart_segments(grey, 8)
    with pytest.raises(InputError, match="4:2:0"):
        restart_segments(simplejpeg.encode_jpeg(photo(rng, 32, 128), colorspace="BGR", colorsubsampling="444"), 8)


def test_kernel_checks_its_arguments(rng):
    data = encode(photo(rng, 16, 128))
    header, scan = split(data)
    tables = huffman_tables(header)
    with pytest.raises(ValueError, match=r"\(6, 272\)"):
        kernel(scan, np.zeros((5, 272), np.uint8), 1, 8, 8)
    with pytest.raises(ValueError, match="cannot be cut"):
        kernel(scan, tables, 0, 8, 8)
    bad = tables.copy()
    bad[0, :16] = 0
    bad[0, 0] = 3                                             # three 1-bit codes: over-subscribed
    with pytest.raises(ValueError, match="table 0"):
        kernel(scan, bad, 1, 8, 8)
    bad[0, :16] = 255                                         # more than 256 symbols
    with pytest.raises(ValueError, match="table 0"):
        kernel(scan, bad, 1, 8, 8)
    with pytest.raises((ValueError, TypeError)):
        kernel(scan, tables.astype(np.int16), 1, 8, 8)


def test_splice_tiles_writes_the_file_the_segments_make(rng):
    """The C assembly equals the Python one (template segments with fresh ones in the box, RST
    markers renumbered), for boxes at the grid's corners, edges and over all of it."""
    from fastgen.jpeg_layout import assemble, restart_interval, row_segments, segment_starts, splice_tiles
    from fastgen.splice import encode_with_restarts

    h, w, interval = 64, 512, 8                       # 4 rows x 4 tiles of 128 px
    template = encode_with_restarts(photo(rng, h, w), 95, interval)
    header, scan = split(template)
    assert restart_interval(header) == interval
    tiles = row_segments(template)
    starts = segment_starts(scan)
    assert len(starts) == len(tiles) + 1 and starts[-1] == len(scan) + 2
    frame = photo(rng, h, w)
    for t0, r0, t1, r1 in [(0, 0, 1, 1), (3, 3, 4, 4), (1, 1, 3, 3), (0, 0, 4, 4), (0, 2, 4, 3), (2, 0, 3, 4)]:
        block = np.ascontiguousarray(frame[16 * r0:16 * r1, 128 * t0:128 * t1])
        fresh = encode(block)
        got = splice_tiles(header, scan, starts, 4, fresh, huffman_tables(header), interval, (t0, r0, t1, r1))
        want = list(tiles)
        cut = iter(restart_segments(fresh, interval))
        for r in range(r0, r1):
            for t in range(t0, t1):
                want[4 * r + t] = next(cut)
        assert got == assemble(header, want)
        assert simplejpeg.decode_jpeg(got, colorspace="BGR").shape == (h, w, 3)


def test_splice_tiles_refuses_what_does_not_fit(rng):
    from fastgen.jpeg_layout import segment_starts, splice_tiles
    from fastgen.splice import encode_with_restarts

    template = encode_with_restarts(photo(rng, 32, 256), 95, 8)          # 2 rows x 2 tiles
    header, scan = split(template)
    starts = segment_starts(scan)
    tables = huffman_tables(header)
    fresh = encode(photo(rng, 16, 128))
    ok = (0, 0, 1, 1)
    assert splice_tiles(header, scan, starts, 2, fresh, tables, 8, ok)
    for box, message in [((0, 0, 2, 1), "not the 1 x 16"), ((1, 1, 3, 2), "outside"), ((1, 1, 1, 2), "outside")]:
        with pytest.raises(InputError, match=message):
            splice_tiles(header, scan, starts, 2, fresh, tables, 8, box)
    with pytest.raises(InputError, match="whole rows"):
        splice_tiles(header, scan, starts, 3, fresh, tables, 8, ok)
    bad = starts.copy()
    bad[2] = bad[1]
    with pytest.raises(InputError, match="grow by 2"):
        splice_tiles(header, scan, bad, 2, fresh, tables, 8, ok)
    with pytest.raises(InputError, match="scan's length"):
        splice_tiles(header, scan[:-3], starts, 2, fresh, tables, 8, ok)
    for junk in (b"", b"\xff\xd8\xff", fresh[:40], b"\xff\xd8" + fresh[2:60] + b"\xff\xd9"):
        with pytest.raises(InputError):
            splice_tiles(header, scan, starts, 2, junk, tables, 8, ok)
    with pytest.raises(InputError, match="restart"):
        splice_tiles(header, scan, starts, 2, template, tables, 8, (0, 0, 2, 2))


@pytest.fixture(params=["compiled", "os calls"])
def file_calls(request, monkeypatch):
    """splice_tiles(path=...) writing in the kernel, and through write_file where it cannot."""
    from fastgen._ext import fileio

    if request.param == "os calls":
        monkeypatch.setattr(fileio, "AVAILABLE", False)
    return request.param


def test_splice_tiles_into_a_file_writes_the_same_bytes(rng, tmp_path, file_calls):
    """``path=``: the file holds exactly the bytes the call returns without it (every box of a
    4 x 4 grid's corners and edges), an existing file is truncated, threads writing side by side
    get their own bytes, and a failed splice or a missing folder leaves no file."""
    from fastgen.jpeg_layout import segment_starts, splice_tiles
    from fastgen.splice import encode_with_restarts

    template = encode_with_restarts(photo(rng, 64, 512), 95, 8)
    header, scan = split(template)
    starts, tables = segment_starts(scan), huffman_tables(header)
    frame = photo(rng, 64, 512)
    boxes = [(0, 0, 1, 1), (3, 3, 4, 4), (1, 1, 3, 3), (0, 0, 4, 4), (2, 0, 3, 4)]

    def one(i):
        t0, r0, t1, r1 = boxes[i % len(boxes)]
        fresh = encode(np.ascontiguousarray(frame[16 * r0:16 * r1, 128 * t0:128 * t1]))
        want = splice_tiles(header, scan, starts, 4, fresh, tables, 8, (t0, r0, t1, r1))
        path = tmp_path / f"{i}.jpg"
        path.write_bytes(b"x" * (len(want) + 999))                 # longer: must be truncated
        assert splice_tiles(header, scan, starts, 4, fresh, tables, 8, (t0, r0, t1, r1), str(path)) is None
        return path.read_bytes() == want

    assert all(one(i) for i in range(len(boxes)))
    with ThreadPoolExecutor(2) as pool:
        assert all(pool.map(one, range(20)))
    fresh = encode(np.ascontiguousarray(frame[:16, :128]))
    with pytest.raises(InputError, match="not the"):
        splice_tiles(header, scan, starts, 4, fresh, tables, 8, (0, 0, 2, 1), str(tmp_path / "bad.jpg"))
    assert not (tmp_path / "bad.jpg").exists()
    missing = str(tmp_path / "no" / "f.jpg")
    with pytest.raises(FileNotFoundError) as err:
        splice_tiles(header, scan, starts, 4, fresh, tables, 8, (0, 0, 1, 1), missing)
    assert err.value.filename == missing
    with pytest.raises(ValueError, match="null"):
        splice_tiles(header, scan, starts, 4, fresh, tables, 8, (0, 0, 1, 1), str(tmp_path / "a\0b"))


def test_the_kernel_refuses_a_path_with_a_null_byte(rng, tmp_path):
    from fastgen._ext.scan import splice as splice_kernel
    from fastgen.jpeg_layout import segment_starts
    from fastgen.splice import encode_with_restarts

    header, scan = split(encode_with_restarts(photo(rng, 16, 128), 95, 8))
    fresh = encode(photo(rng, 16, 128))
    with pytest.raises(ValueError, match="null"):
        splice_kernel(header, scan, segment_starts(scan), 1, fresh, huffman_tables(header), 8, 0, 0, 1, 1,
                      str(tmp_path / "a\0b").encode())
