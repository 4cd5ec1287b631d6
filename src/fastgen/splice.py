"""JPEG output that re-encodes only the rows that changed, and copies the rest from the template.

In every output frame only the face box differs from its template.  A baseline JPEG whose
entropy-coded data restarts at every MCU row (DRI = one row of 16x16 MCUs, RST0..7 between rows,
4:2:0) can be cut at those markers, and a 16-row strip encoded *on its own* by libjpeg-turbo
(simplejpeg) is exactly such a restart segment: it starts with zero DC predictions and ends
byte-aligned, and with the same quality and subsampling it has the same tables.  So a frame is

    header(template, with DRI) + template rows above the box + fresh strips of the box's rows
    + template rows below + EOI

with RST markers renumbered.  Decoded, it equals a full encode of the frame pixel for pixel (max
|difference| 0 in simplejpeg and OpenCV, checked by the tests), it is ~0.5 % larger, and the rows
outside the box's band are bit-identical to the template's own coded rows: no generation loss.

A template's row segments come from its own JPEG where that already restarts at every row with
this quality's tables (packs and the demo store templates so); otherwise each template is encoded
once as strips from its pixels and kept in a byte-bounded cache.
"""
from __future__ import annotations

import re
import threading
from collections import OrderedDict
from typing import Callable, Optional, Sequence

import numpy as np

from .errors import InputError

MCU_ROWS = 16                      # 4:2:0: an MCU is 16x16 pixels
SUBSAMPLING = "420"
SOS, DRI, EOI = 0xDA, 0xDD, 0xD9
DEFAULT_CACHE_MB = 256.0


def encode(image: np.ndarray, quality: int) -> bytes:
    """The JPEG the sinks write: libjpeg-turbo via simplejpeg, 4:2:0, BGR."""
    import simplejpeg

    return simplejpeg.encode_jpeg(image, quality=quality, colorspace="BGR", colorsubsampling=SUBSAMPLING)


def split(data: bytes) -> tuple[bytes, bytes]:
    """(header up to and including the SOS segment, entropy-coded data without EOI)."""
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            break
        marker, length = data[i + 1], (data[i + 2] << 8) | data[i + 3]
        if marker == SOS:
            end = len(data) - 2 if data[-2:] == b"\xff\xd9" else len(data)
            return data[:i + 2 + length], data[i + 2 + length:end]
        i += 2 + length
    raise InputError("not a baseline JPEG with one scan (no SOS segment found)")


def tables(header: bytes) -> bytes:
    """The DQT and DHT segments of a header: what must match for segments to be spliced."""
    out, i = bytearray(), 2
    while i + 4 <= len(header):
        marker, length = header[i + 1], (header[i + 2] << 8) | header[i + 3]
        if marker in (0xDB, 0xC4):
            out += header[i:i + 2 + length]
        i += 2 + length
    return bytes(out)


def restart_interval(header: bytes) -> int:
    """The header's DRI interval in MCUs (0: no restarts)."""
    i = 2
    while i + 4 <= len(header):
        marker, length = header[i + 1], (header[i + 2] << 8) | header[i + 3]
        if marker == DRI:
            return (header[i + 4] << 8) | header[i + 5]
        i += 2 + length
    return 0


def with_restarts(header: bytes, mcus_per_row: int) -> bytes:
    """``header`` with a DRI of one MCU row inserted before its SOS segment."""
    at = header.rfind(b"\xff\xda")
    return header[:at] + bytes([0xFF, DRI, 0, 4, mcus_per_row >> 8, mcus_per_row & 0xFF]) + header[at:]


# In entropy-coded data a 0xFF byte is always stuffed as FF 00, so FF D0..D7 can only be an RST
_RST = re.compile(rb"\xff[\xd0-\xd7]")


def row_segments(data: bytes) -> list[bytes]:
    """The entropy-coded segments of a JPEG with restarts, cut at its RST markers."""
    _, scan = split(data)
    segments, start = [], 0
    for m in _RST.finditer(scan):
        segments.append(scan[start:m.start()])
        start = m.end()
    segments.append(scan[start:])
    return segments


def geometry(header: bytes) -> tuple[int, int, int, int]:
    """(height, width, MCU height, MCU width) from a header's SOF0/SOF1 segment."""
    i = 2
    while i + 4 <= len(header):
        marker, length = header[i + 1], (header[i + 2] << 8) | header[i + 3]
        if marker in (0xC0, 0xC1):
            h, w = (header[i + 5] << 8) | header[i + 6], (header[i + 7] << 8) | header[i + 8]
            comps = header[i + 9]
            factors = [header[i + 11 + 3 * c] for c in range(comps)]
            return h, w, 8 * max(f & 15 for f in factors), 8 * max(f >> 4 for f in factors)
        i += 2 + length
    raise InputError("not a baseline JPEG (no SOF0 segment)")


def restarts_every_row(data: bytes) -> bool:
    """Whether a JPEG restarts at every MCU row, so its rows can be cut and decoded alone."""
    try:
        header = split(data)[0]
        return restart_interval(header) == -(-geometry(header)[1] // geometry(header)[3])
    except InputError:
        return False


def band_rows(y0: int, y1: int, height: int) -> tuple[int, int]:
    """The rows [b0, b1) of whole 4:2:0 MCU rows that cover rows y0..y1 of a frame ``height`` tall:
    what a spliced frame re-encodes when only rows y0..y1 changed."""
    if y1 <= y0:
        return 0, 0
    return y0 // MCU_ROWS * MCU_ROWS, min(height, -(-y1 // MCU_ROWS) * MCU_ROWS)


def decode_rows(data: bytes, y0: int, y1: int) -> Optional[np.ndarray]:
    """Rows y0..y1 (full width, BGR) of a JPEG that restarts at every MCU row, decoded from only
    the segments of those MCU rows and one more on each side.

    The extra row on each side gives the decoder's chroma upsampling the same neighbours as in a
    decode of the whole frame, so the rows equal that decode exactly (the tests check it); the
    cost is that of the band, not of the frame.  None when ``data`` does not restart every row.
    """
    import simplejpeg

    header, _ = split(data)
    h, w, mh, mw = geometry(header)
    rows = -(-h // mh)
    if not 0 <= y0 < y1 <= h or restart_interval(header) != -(-w // mw):
        return None
    segments = row_segments(data)
    if len(segments) != rows:
        return None
    r0, r1 = max(0, y0 // mh - 1), min(rows, -(-y1 // mh) + 1)
    top = r0 * mh
    band = assemble(_with_height(header, min(h, r1 * mh) - top), segments[r0:r1])
    return simplejpeg.decode_jpeg(band, colorspace="BGR")[y0 - top:y1 - top]


def assemble(header: bytes, segments: Sequence[bytes]) -> bytes:
    """One JPEG from a header with DRI and its row segments, RST markers renumbered."""
    parts = [header]
    for r, seg in enumerate(segments):
        if r:
            parts.append(bytes([0xFF, 0xD0 + ((r - 1) & 7)]))
        parts.append(seg)
    parts.append(b"\xff\xd9")
    return b"".join(parts)


def strip_segments(image: np.ndarray, quality: int, rows: range) -> list[bytes]:
    """Each 16-row strip of ``image`` in ``rows`` (MCU-row numbers) encoded on its own."""
    return [split(encode(image[r * MCU_ROWS:(r + 1) * MCU_ROWS], quality))[1] for r in rows]


def encode_with_restarts(image: np.ndarray, quality: int) -> bytes:
    """``image`` as a JPEG that restarts at every MCU row (decodes exactly as a plain encode)."""
    h, w = image.shape[:2]
    header = with_restarts(split(encode(image[:MCU_ROWS], quality))[0], -(-w // MCU_ROWS))
    header = _with_height(header, h)
    return assemble(header, strip_segments(image, quality, range(-(-h // MCU_ROWS))))


def _with_height(header: bytes, height: int) -> bytes:
    """``header`` with its SOF0 frame height set to ``height``."""
    out = bytearray(header)
    i = 2
    while i + 4 <= len(out):
        marker, length = out[i + 1], (out[i + 2] << 8) | out[i + 3]
        if marker in (0xC0, 0xC1):
            out[i + 5], out[i + 6] = height >> 8, height & 0xFF
            return bytes(out)
        i += 2 + length
    raise InputError("not a baseline JPEG (no SOF0 segment)")


class SplicingEncoder:
    """Encodes frames that carry ``template`` and ``changed`` by re-encoding only the changed band.

    ``template_jpeg(k)`` gives template k's stored JPEG and ``template_image(k)`` its pixels (used
    once per template when its JPEG cannot be cut).  Frames without template facts, or of another
    size, get a full encode.  Safe to share between threads.
    """

    def __init__(self, template_jpeg: Callable[[int], bytes], template_image: Callable[[int], np.ndarray],
                 quality: int, cache_mb: float = DEFAULT_CACHE_MB,
                 template_rows: Optional[Callable[[int, int, int], np.ndarray]] = None):
        self.template_jpeg, self.template_image = template_jpeg, template_image
        # template_rows(k, y0, y1): rows of template k's pixels (Avatar.rows), for lazy frames
        self.template_rows = template_rows
        self.sizes: dict[int, tuple[int, int]] = {}
        self.quality = int(quality)
        self.budget = int(cache_mb * 1024 * 1024)
        self.lock = threading.Lock()
        self.cache: OrderedDict[int, list[bytes]] = OrderedDict()
        self.bytes = 0
        self.headers: dict[tuple[int, int], bytes] = {}
        self.reference_tables: Optional[bytes] = None
        self.counts = {"spliced": 0, "full": 0, "templates_cut": 0, "templates_encoded": 0}

    def _header(self, h: int, w: int) -> bytes:
        header = self.headers.get((h, w))
        if header is None:
            strip = np.zeros((min(h, MCU_ROWS), w, 3), np.uint8)
            header = _with_height(with_restarts(split(encode(strip, self.quality))[0], -(-w // MCU_ROWS)), h)
            self.headers[(h, w)] = header
            self.reference_tables = tables(header)
        return header

    def _segments(self, k: int, h: int, w: int) -> list[bytes]:
        with self.lock:
            segs = self.cache.get(k)
            if segs is not None:
                self.cache.move_to_end(k)
                return segs
            self._header(h, w)
        rows = -(-h // MCU_ROWS)
        data = self.template_jpeg(k)
        header, _ = split(data)
        if restart_interval(header) == -(-w // MCU_ROWS) and tables(header) == self.reference_tables:
            segs = row_segments(data)
            kind = "templates_cut"
        else:
            segs = []
        if len(segs) != rows:
            segs = strip_segments(self.template_image(k), self.quality, range(rows))
            kind = "templates_encoded"
        with self.lock:
            self.counts[kind] += 1
            if k not in self.cache:
                self.cache[k] = segs
                self.bytes += sum(map(len, segs))
                while self.bytes > self.budget and len(self.cache) > 1:
                    _, old = self.cache.popitem(last=False)
                    self.bytes -= sum(map(len, old))
        return segs

    def _size(self, k: int) -> tuple[int, int]:
        size = self.sizes.get(k)
        if size is None:
            h, w, _, _ = geometry(split(self.template_jpeg(k))[0])
            size = self.sizes[k] = (h, w)
        return size

    def encode_frame(self, frame) -> bytes:
        """A :class:`~fastgen.frame.Frame` as JPEG.  A lazy frame (``patch`` + ``changed``) is
        spliced from the template's rows around the box and the patch, without its full image."""
        k, changed, patch = frame.template, frame.changed, frame.patch
        if patch is None or k < 0 or changed is None or self.template_rows is None:
            return self.encode(frame.image, k, changed)
        h, w = self._size(k)
        x0, y0, x1, y1 = changed
        if h < MCU_ROWS or x1 <= x0 or y1 <= y0:
            return self.encode(frame.image, k, changed)
        template_rows = self._segments(k, h, w)
        b0, b1 = band_rows(y0, y1, h)
        band = self.template_rows(k, b0, b1).copy()
        band[y0 - b0:y1 - b0, x0:x1] = patch
        first, last = b0 // MCU_ROWS, -(-b1 // MCU_ROWS)
        segs = template_rows[:first] + strip_segments(band, self.quality, range(last - first)) \
            + template_rows[last:]
        self.counts["spliced"] += 1
        return assemble(self._header(h, w), segs)

    def encode(self, image: np.ndarray, template: int = -1, changed: Optional[Sequence[int]] = None) -> bytes:
        """``image`` as JPEG; spliced when it is template ``template`` except inside ``changed``."""
        h, w = image.shape[:2]
        if template < 0 or changed is None or h < MCU_ROWS:
            self.counts["full"] += 1
            return encode(image, self.quality)
        template_rows = self._segments(template, h, w)
        x0, y0, x1, y1 = changed
        first, last = (y0 // MCU_ROWS, -(-y1 // MCU_ROWS)) if y1 > y0 and x1 > x0 else (0, 0)
        segs = template_rows[:first] + strip_segments(image, self.quality, range(first, last)) \
            + template_rows[last:]
        self.counts["spliced"] += 1
        return assemble(self._header(h, w), segs)
