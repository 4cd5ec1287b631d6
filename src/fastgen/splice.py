"""JPEG output that re-encodes only the tiles that changed, and copies the rest from the template.

In every output frame only the face box differs from its template.  A baseline 4:2:0 JPEG whose
entropy-coded data restarts every few MCUs (DRI = ``interval`` 16x16 MCUs, a divisor of the MCUs
in a row, RST0..7 between segments) is a grid of *tiles*, each one restart segment 16 pixels tall
and ``16 * interval`` wide, that can be cut at its markers.  A tile encoded *on its own* by
libjpeg-turbo (simplejpeg) is exactly such a segment: it starts with zero DC predictions and ends
byte-aligned, and with the same quality and subsampling it has the same tables.  The changed tiles
are encoded as one block in one call and cut into those same segments
(:func:`~fastgen.jpeg_layout.restart_segments`).  So a frame is

    header(template, with DRI) + the template's tiles, with fresh tiles where the box is

with RST markers renumbered.  Decoded, it equals a full encode of the frame pixel for pixel (max
|difference| 0 in simplejpeg and OpenCV, checked by the tests), it is ~1 % larger, and every tile
outside the box's is bit-identical to the template's own coded tile: no generation loss.

New templates (packs, the demo) are stored with tiles of ``tile_interval(width)`` MCUs, 128 px at
1280 wide; templates that restart at every MCU row (earlier packs) are the one-tile-per-row case.
A template's JPEG that cannot be cut is encoded once as tiles from its pixels and kept in a
byte-bounded cache.  :func:`decode_region` decodes only the tiles around a box (plus one tile on
each side, so the decoder's chroma upsampling sees the neighbours it sees in a whole decode).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import simplejpeg

from .atomic import write_file
from .errors import InputError
from .jpeg_layout import (assemble, geometry, huffman_tables, interleaved, restart_interval, restart_segments,
                          row_segments, segment_starts, splice_tiles, split, tables, with_restarts, with_size)

MCU_ROWS = 16                      # 4:2:0: an MCU is 16x16 pixels
SUBSAMPLING = "420"
DEFAULT_CACHE_MB = 256.0
TILE_MCUS = 8                      # preferred restart interval: 128-pixel tiles


def encode(image: np.ndarray, quality: int) -> bytes:
    """The JPEG the sinks write: libjpeg-turbo via simplejpeg, 4:2:0, BGR."""
    return simplejpeg.encode_jpeg(image, quality=quality, colorspace="BGR", colorsubsampling=SUBSAMPLING)


def tile_interval(width: int) -> int:
    """The restart interval (MCUs) fastgen encodes a frame ``width`` wide with: the largest
    divisor of its MCUs per row from 4 to :data:`TILE_MCUS`, else a whole row."""
    mcus = -(-width // MCU_ROWS)
    return next((d for d in range(TILE_MCUS, 3, -1) if mcus % d == 0), mcus)


@dataclass(frozen=True)
class TileGrid:
    """The restart segments of a 4:2:0 JPEG ``height`` x ``width`` as tiles of ``interval`` MCUs:
    segment ``r * tiles + t`` is MCU row r, tile t."""

    height: int
    width: int
    interval: int

    @classmethod
    def of(cls, header: bytes) -> Optional["TileGrid"]:
        """The grid of a header, or None where its segments are not whole tiles of MCU rows."""
        try:
            h, w, mh, mw = geometry(header)
        except InputError:
            return None
        interval = restart_interval(header)
        if (mh, mw) != (MCU_ROWS, MCU_ROWS) or interval <= 0 or -(-w // mw) % interval or h < 1:
            return None
        return cls(h, w, interval)

    @classmethod
    def for_size(cls, height: int, width: int) -> "TileGrid":
        return cls(height, width, tile_interval(width))

    @property
    def rows(self) -> int:
        return -(-self.height // MCU_ROWS)

    @property
    def tiles(self) -> int:
        """Tiles per MCU row."""
        return -(-self.width // MCU_ROWS) // self.interval

    @property
    def tile_px(self) -> int:
        return self.interval * MCU_ROWS

    @property
    def count(self) -> int:
        return self.rows * self.tiles

    def span(self, x0: int, y0: int, x1: int, y1: int) -> tuple[int, int, int, int]:
        """(t0, r0, t1, r1): the tiles and MCU rows that cover pixels x0..x1, y0..y1."""
        return (x0 // self.tile_px, y0 // MCU_ROWS, -(-x1 // self.tile_px), -(-y1 // MCU_ROWS))

    def pixels(self, t0: int, r0: int, t1: int, r1: int) -> tuple[int, int, int, int]:
        """The pixel box (x0, y0, x1, y1) of tiles t0..t1, rows r0..r1 (cut at the frame's edges)."""
        return (t0 * self.tile_px, r0 * MCU_ROWS, min(self.width, t1 * self.tile_px),
                min(self.height, r1 * MCU_ROWS))

    def aligned(self, x0: int, y0: int, x1: int, y1: int) -> tuple[int, int, int, int]:
        """The smallest box of whole tiles that holds x0..x1, y0..y1: what a splice re-encodes."""
        return self.pixels(*self.span(x0, y0, x1, y1))


def splittable(data: bytes) -> bool:
    """Whether a JPEG's restart segments are whole tiles of MCU rows, so it can be cut."""
    try:
        return TileGrid.of(split(data)[0]) is not None
    except InputError:
        return False


def band_rows(y0: int, y1: int, height: int) -> tuple[int, int]:
    """The rows [b0, b1) of whole 4:2:0 MCU rows that cover rows y0..y1 of a frame ``height`` tall."""
    if y1 <= y0:
        return 0, 0
    return y0 // MCU_ROWS * MCU_ROWS, min(height, -(-y1 // MCU_ROWS) * MCU_ROWS)


def decode_region(data: bytes, x0: int, y0: int, x1: int, y1: int) -> Optional[np.ndarray]:
    """Pixels ``[y0:y1, x0:x1]`` (BGR) of a tiled JPEG, decoded from only the tiles that cover
    them and one more tile on each side.

    The extra tiles give the decoder's chroma upsampling the same neighbours as in a decode of
    the whole frame, so the pixels equal that decode exactly (the tests check it); the cost is
    that of the region, not of the frame.  None when ``data`` cannot be cut or the box is empty
    or outside the frame.
    """
    header, _ = split(data)
    grid = TileGrid.of(header)
    if grid is None or not (0 <= x0 < x1 <= grid.width and 0 <= y0 < y1 <= grid.height):
        return None
    segments = row_segments(data)
    if len(segments) != grid.count:
        return None
    t0, r0, t1, r1 = grid.span(x0, y0, x1, y1)
    t0, r0, t1, r1 = max(0, t0 - 1), max(0, r0 - 1), min(grid.tiles, t1 + 1), min(grid.rows, r1 + 1)
    left, top, right, bottom = grid.pixels(t0, r0, t1, r1)
    picked = [segments[r * grid.tiles + t] for r in range(r0, r1) for t in range(t0, t1)]
    region = assemble(with_size(header, bottom - top, right - left), picked)
    return simplejpeg.decode_jpeg(region, colorspace="BGR")[y0 - top:y1 - top, x0 - left:x1 - left]


def decode_rows(data: bytes, y0: int, y1: int) -> Optional[np.ndarray]:
    """Rows y0..y1, full width, of a tiled JPEG: :func:`decode_region` of those rows."""
    try:
        width = geometry(split(data)[0])[1]
    except InputError:
        return None
    return decode_region(data, 0, y0, width, y1)


def tile_block(image: np.ndarray, quality: int, grid: TileGrid, t0: int, r0: int, t1: int, r1: int,
               origin: tuple[int, int] = (0, 0)) -> list[bytes]:
    """Tiles t0..t1 of MCU rows r0..r1 of ``grid`` (raster order), encoded from ``image``, whose
    pixel (0, 0) is the frame's pixel ``origin`` (x, y).

    One libjpeg-turbo encode of the whole block, cut into restart segments by
    :func:`~fastgen.jpeg_layout.restart_segments`: byte for byte each tile encoded on its own,
    in one call that releases the GIL instead of one per tile.
    """
    ox, oy = origin
    x0, y0, x1, y1 = grid.pixels(t0, r0, t1, r1)
    block = image[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
    return restart_segments(encode(block, quality), grid.interval)


def encode_with_restarts(image: np.ndarray, quality: int, interval: Optional[int] = None) -> bytes:
    """``image`` as a tiled JPEG (restarts every ``interval`` MCUs, by default
    :func:`tile_interval`); it decodes exactly as a plain encode."""
    h, w = image.shape[:2]
    grid = TileGrid(h, w, interval or tile_interval(w))
    if -(-w // MCU_ROWS) % grid.interval:
        raise InputError(f"a restart interval of {grid.interval} MCUs does not divide a row of {w} pixels")
    header = with_size(with_restarts(split(encode(image[:MCU_ROWS, :grid.tile_px], quality))[0],
                                      grid.interval), h, w)
    return assemble(header, tile_block(image, quality, grid, 0, 0, grid.tiles, grid.rows))


class SplicingEncoder:
    """Encodes frames that carry ``template`` and ``changed`` by re-encoding only the changed tiles.

    ``template_jpeg(k)`` gives template k's stored JPEG and ``template_image(k)`` its pixels (used
    once per template when its JPEG cannot be cut).  ``template_region(k, x0, y0, x1, y1)``
    (:meth:`Avatar.region`) gives template pixels around a box, for lazy frames.  Frames without
    template facts, or of another size, get a full encode.  Safe to share between threads.
    """

    def __init__(self, template_jpeg: Callable[[int], bytes], template_image: Callable[[int], np.ndarray],
                 quality: int, cache_mb: float = DEFAULT_CACHE_MB,
                 template_region: Optional[Callable[[int, int, int, int, int], np.ndarray]] = None):
        self.template_jpeg, self.template_image = template_jpeg, template_image
        self.template_region = template_region
        self.sizes: dict[int, tuple[int, int]] = {}
        self.quality = int(quality)
        self.budget = int(cache_mb * 1024 * 1024)
        self.lock = threading.Lock()
        # template k -> (its grid, its scan with RST markers, where each segment starts)
        self.cache: OrderedDict[int, tuple[TileGrid, bytes, np.ndarray]] = OrderedDict()
        self.bytes = 0
        self.headers: dict[TileGrid, bytes] = {}
        self.reference_tables: Optional[bytes] = None
        self.huffman: Optional[np.ndarray] = None
        self.counts = {"spliced": 0, "full": 0, "templates_cut": 0, "templates_encoded": 0}

    def _header(self, grid: TileGrid) -> bytes:
        header = self.headers.get(grid)
        if header is None:
            strip = np.zeros((min(grid.height, MCU_ROWS), min(grid.width, grid.tile_px), 3), np.uint8)
            header = with_size(with_restarts(split(encode(strip, self.quality))[0], grid.interval),
                                grid.height, grid.width)
            self.headers[grid] = header
        return header

    def _tables(self) -> bytes:
        if self.reference_tables is None:
            header = split(encode(np.zeros((16, 16, 3), np.uint8), self.quality))[0]
            self.huffman = huffman_tables(header)
            self.reference_tables = tables(header)
        return self.reference_tables

    def _segments(self, k: int, h: int, w: int) -> tuple[TileGrid, bytes, np.ndarray]:
        """Template k's grid, its scan (tiles with their RST markers) and where each tile starts
        (:func:`~fastgen.jpeg_layout.segment_starts`): cut from its JPEG, or encoded once from
        its pixels."""
        with self.lock:
            hit = self.cache.get(k)
            if hit is not None:
                self.cache.move_to_end(k)
                return hit
        data = self.template_jpeg(k)
        header, scan = split(data)
        grid = TileGrid.of(header)
        starts = None
        if grid is not None and (grid.height, grid.width) == (h, w) and tables(header) == self._tables():
            starts = segment_starts(scan)
        kind = "templates_cut"
        if grid is None or starts is None or len(starts) != grid.count + 1:
            grid = TileGrid.for_size(h, w)
            scan = b"".join(interleaved(tile_block(self.template_image(k), self.quality, grid,
                                                   0, 0, grid.tiles, grid.rows)))
            starts = segment_starts(scan)
            kind = "templates_encoded"
        entry = (grid, scan, starts)
        with self.lock:
            self.counts[kind] += 1
            if k not in self.cache:
                self.cache[k] = entry
                self.bytes += len(scan) + starts.nbytes
                while self.bytes > self.budget and len(self.cache) > 1:
                    _, (_, old_scan, old_starts) = self.cache.popitem(last=False)
                    self.bytes -= len(old_scan) + old_starts.nbytes
            return self.cache.get(k) or entry

    def _size(self, k: int) -> tuple[int, int]:
        size = self.sizes.get(k)
        if size is None:
            h, w, _, _ = geometry(split(self.template_jpeg(k))[0])
            size = self.sizes[k] = (h, w)
        return size

    def _splice(self, k: int, h: int, w: int, changed: Sequence[int], pixels: Callable,
                path: Optional[str] = None) -> Optional[bytes]:
        """Template k's tiles with those under ``changed`` encoded from ``pixels(box)``, the
        frame's pixels in a box of whole tiles: one encode of that box, then one call that cuts it
        into tiles and writes the whole file (:func:`~fastgen.jpeg_layout.splice_tiles`), to
        ``path`` when given."""
        grid, scan, starts = self._segments(k, h, w)
        self._tables()
        x0, y0, x1, y1 = changed
        with self.lock:
            self.counts["spliced"] += 1
        if x1 <= x0 or y1 <= y0:
            return _written(b"".join([self._header(grid), scan, b"\xff\xd9"]), path)
        span = grid.span(x0, y0, x1, y1)
        box = grid.pixels(*span)
        return splice_tiles(self._header(grid), scan, starts, grid.tiles, encode(pixels(box), self.quality),
                            self.huffman, grid.interval, span, path)

    def encode_frame(self, frame) -> bytes:
        """A :class:`~fastgen.frame.Frame` as JPEG.  A lazy frame (``patch`` + ``changed``) is
        spliced from the template's pixels around the box and the patch, without its full image."""
        data = self._frame(frame, None)
        assert data is not None
        return data

    def write_frame(self, frame, path: str) -> None:
        """:meth:`encode_frame` written to ``path`` (created or truncated): a spliced frame's file
        is assembled and written in one GIL-free call, so a sink's worker retakes the GIL once
        for both."""
        self._frame(frame, path)

    def _frame(self, frame, path: Optional[str]) -> Optional[bytes]:
        k, changed, patch = frame.template, frame.changed, frame.patch
        if patch is None or k < 0 or changed is None or self.template_region is None:
            return _written(self.encode(frame.image, k, changed), path)
        h, w = self._size(k)
        x0, y0, x1, y1 = changed
        if h < MCU_ROWS or x1 <= x0 or y1 <= y0:
            return _written(self.encode(frame.image, k, changed), path)

        made = frame.region

        def pixels(box):
            if made is not None and tuple(made[1]) == tuple(box):
                return made[0]                   # the step's own pixels of these tiles
            bx0, by0, bx1, by1 = box
            region = self.template_region(k, bx0, by0, bx1, by1).copy()
            region[y0 - by0:y1 - by0, x0 - bx0:x1 - bx0] = patch
            return region

        return self._splice(k, h, w, changed, pixels, path)

    def encode(self, image: np.ndarray, template: int = -1, changed: Optional[Sequence[int]] = None) -> bytes:
        """``image`` as JPEG; spliced when it is template ``template`` except inside ``changed``."""
        h, w = image.shape[:2]
        if template < 0 or changed is None or h < MCU_ROWS:
            with self.lock:
                self.counts["full"] += 1
            return encode(image, self.quality)
        return self._splice(template, h, w, changed, lambda box: image[box[1]:box[3], box[0]:box[2]])


def _written(data: bytes, path: Optional[str]) -> Optional[bytes]:
    """``data``, or None once it is written to ``path`` when one is given."""
    if path is None:
        return data
    write_file(path, data)
    return None
