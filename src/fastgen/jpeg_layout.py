"""The byte layout of the baseline JPEGs that :mod:`fastgen.splice` cuts and joins.

Marker segments of a header, the header/scan split, the quantization and Huffman tables that
must match for scans to be joined, the restart interval (DRI) and RST markers, and the frame size
in SOF0.  Pure byte handling: no pixels, no encoder.
"""
from __future__ import annotations

import functools
import os
import re
from typing import Optional, Sequence

import numpy as np

from ._ext import fileio, scan as _scan
from .errors import InputError

SOS, DRI, EOI = 0xDA, 0xDD, 0xD9


def segments_of(header: bytes):
    """(offset, marker, length) of each marker segment of a header, SOI excluded."""
    i = 2
    while i + 4 <= len(header) and header[i] == 0xFF:
        marker, length = header[i + 1], (header[i + 2] << 8) | header[i + 3]
        yield i, marker, length
        i += 2 + length


def split(data: bytes) -> tuple[bytes, bytes]:
    """(header up to and including the SOS segment, entropy-coded data without EOI)."""
    for i, marker, length in segments_of(data):
        if marker == SOS:
            end = len(data) - 2 if data[-2:] == b"\xff\xd9" else len(data)
            return data[:i + 2 + length], data[i + 2 + length:end]
    raise InputError("not a baseline JPEG with one scan (no SOS segment found)")


def tables(header: bytes) -> bytes:
    """The DQT and DHT segments of a header: what must match for segments to be spliced."""
    return b"".join(header[i:i + 2 + n] for i, marker, n in segments_of(header) if marker in (0xDB, 0xC4))


def restart_interval(header: bytes) -> int:
    """The header's DRI interval in MCUs (0: no restarts)."""
    for i, marker, _ in segments_of(header):
        if marker == DRI:
            return (header[i + 4] << 8) | header[i + 5]
    return 0


def with_restarts(header: bytes, interval: int) -> bytes:
    """``header`` with a DRI of ``interval`` MCUs inserted before its SOS segment."""
    at = header.rfind(b"\xff\xda")
    return header[:at] + bytes([0xFF, DRI, 0, 4, interval >> 8, interval & 0xFF]) + header[at:]


# In entropy-coded data a 0xFF byte is always stuffed as FF 00, so FF D0..D7 can only be an RST
_RST = re.compile(rb"\xff[\xd0-\xd7]")


def row_segments(data: bytes) -> list[bytes]:
    """The entropy-coded segments of a JPEG with restarts, cut at its RST markers (raster order)."""
    return _RST.split(split(data)[1])


def geometry(header: bytes) -> tuple[int, int, int, int]:
    """(height, width, MCU height, MCU width) from a header's SOF0/SOF1 segment."""
    for i, marker, _ in segments_of(header):
        if marker in (0xC0, 0xC1):
            h, w = (header[i + 5] << 8) | header[i + 6], (header[i + 7] << 8) | header[i + 8]
            factors = [header[i + 11 + 3 * c] for c in range(header[i + 9])]
            return h, w, 8 * max(f & 15 for f in factors), 8 * max(f >> 4 for f in factors)
    raise InputError("not a baseline JPEG (no SOF0 segment)")


_RST_MARKERS = [bytes([0xFF, 0xD0 + i]) for i in range(8)]


def interleaved(segments: Sequence[bytes]) -> list[bytes]:
    """``segments`` with their RST markers between them (numbered from RST0), as a list."""
    parts = [b""] * (2 * len(segments) - 1) if segments else []
    parts[0::2] = segments
    parts[1::2] = [_RST_MARKERS[i & 7] for i in range(len(segments) - 1)]
    return parts


def assemble(header: bytes, segments: Sequence[bytes]) -> bytes:
    """One JPEG from a header with DRI and its restart segments, RST markers renumbered."""
    return b"".join([header, *interleaved(segments), b"\xff\xd9"])


def with_size(header: bytes, height: int, width: Optional[int] = None) -> bytes:
    """``header`` with its SOF0 frame height (and width) set."""
    out = bytearray(header)
    for i, marker, _ in segments_of(header):
        if marker in (0xC0, 0xC1):
            out[i + 5], out[i + 6] = height >> 8, height & 0xFF
            if width is not None:
                out[i + 7], out[i + 8] = width >> 8, width & 0xFF
            return bytes(out)
    raise InputError("not a baseline JPEG (no SOF0 segment)")


@functools.lru_cache(maxsize=64)     # a frame's regions come in a few sizes, each one header
def huffman_tables(header: bytes) -> np.ndarray:
    """The Huffman tables of a 3-component 4:2:0 header's scan, as :func:`restart_segments`
    takes them: (6, 272) uint8, per row 16 code counts then the symbols; DC of Y, Cb, Cr, then
    their AC tables."""
    found: dict[tuple[int, int], bytes] = {}
    sampling, scan_tables = [], []
    for i, marker, length in segments_of(header):
        body = header[i + 4:i + 2 + length]
        if marker == 0xC4:
            at = 0
            while at + 17 <= len(body):
                count = sum(body[at + 1:at + 17])
                found[(body[at] >> 4, body[at] & 15)] = body[at + 1:at + 17 + count]
                at += 17 + count
        elif marker in (0xC0, 0xC1):
            sampling = [body[6 + 3 * c + 1] for c in range(body[5])]
        elif marker == SOS:
            scan_tables = [(body[2 + 2 * c] >> 4, body[2 + 2 * c] & 15) for c in range(body[0])]
    if sampling != [0x22, 0x11, 0x11] or len(scan_tables) != 3:
        raise InputError("not a 3-component 4:2:0 JPEG with one interleaved scan")
    out = np.zeros((6, 272), np.uint8)
    for row, key in enumerate([(0, d) for d, _ in scan_tables] + [(1, a) for _, a in scan_tables]):
        table = found.get(key)
        if table is None:
            raise InputError(f"the JPEG header has no Huffman table {key}")
        out[row, :len(table)] = np.frombuffer(table, np.uint8)
    out.flags.writeable = False
    return out


def restart_segments(data: bytes, interval: int) -> list[bytes]:
    """The restart segments, every ``interval`` MCUs of each MCU row, of a 4:2:0 JPEG written
    without restarts (one libjpeg-turbo encode of a region): byte for byte the scans of its
    tiles encoded one by one, at the cost of one parse of its scan (``_ext/scan_core.h``)."""
    header, scan = split(data)
    h, w, mh, mw = geometry(header)
    if restart_interval(header):
        raise InputError("the JPEG already has restart markers")
    try:
        return _scan.restart_segments(scan, huffman_tables(header), -(-h // mh), -(-w // mw), interval)
    except ValueError as e:
        raise InputError(f"cannot cut the JPEG's scan into restart segments: {e}") from None


def segment_starts(scan: bytes) -> np.ndarray:
    """Where each restart segment of ``scan`` (entropy-coded data with RST markers) starts, and
    ``len(scan) + 2`` after the last: what :func:`splice_tiles` takes for a template."""
    starts = [0, *(m.end() for m in _RST.finditer(scan)), len(scan) + 2]
    return np.asarray(starts, np.int64)


def splice_tiles(header: bytes, template_scan: bytes, starts: np.ndarray, tiles: int, fresh: bytes,
                 tables: np.ndarray, interval: int, box: tuple[int, int, int, int],
                 path: Optional[str] = None) -> Optional[bytes]:
    """A whole JPEG: ``header`` (with DRI), the template's scan with the tiles of ``box``
    (t0, r0, t1, r1) replaced by those of ``fresh`` (one libjpeg-turbo encode of exactly those
    tiles, no restarts; cut as :func:`restart_segments` does), RST markers numbered, and EOI.
    One call that holds the GIL only to allocate the result (``_ext/scan_core.h``).  With
    ``path``, the file is written there (created or truncated) in that same GIL-free call, and
    None returned: with several workers every retake of the GIL may wait for a wake-up."""
    t0, r0, t1, r1 = box
    if path is not None and "\0" in path:
        raise ValueError("embedded null byte")          # as os.open says it, not as a bad splice
    if path is not None and not fileio.AVAILABLE:            # no POSIX file calls: os calls
        data = splice_tiles(header, template_scan, starts, tiles, fresh, tables, interval, box)
        from .atomic import write_file

        write_file(path, data)
        return None
    try:
        return _scan.splice(header, template_scan, starts, tiles, fresh, tables, interval, t0, r0, t1, r1,
                      None if path is None else os.fsencode(path))
    except ValueError as e:
        raise InputError(f"cannot splice the frame's tiles into its template: {e}") from None
