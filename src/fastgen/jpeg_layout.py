"""The byte layout of the baseline JPEGs that :mod:`fastgen.splice` cuts and joins.

Marker segments of a header, the header/scan split, the quantization and Huffman tables that
must match for scans to be joined, the restart interval (DRI) and RST markers, and the frame size
in SOF0.  Pure byte handling: no pixels, no encoder.
"""
from __future__ import annotations

import re
from typing import Optional, Sequence

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


def scan_of(data: bytes) -> bytes:
    """The entropy-coded data of one JPEG simplejpeg wrote (:func:`split`, with the header's
    length remembered: every tile of one size and quality has the same header)."""
    n = len(data)
    for start in _SCAN_STARTS:
        # the SOS segment of a 3-component scan is 14 bytes: FF DA 00 0C ...
        if start < n and data[start - 14:start - 10] == b"\xff\xda\x00\x0c":
            return data[start:n - 2] if data[n - 2:] == b"\xff\xd9" else data[start:]
    header, scan = split(data)
    _SCAN_STARTS.append(len(header))
    return scan


_SCAN_STARTS: list[int] = []


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
