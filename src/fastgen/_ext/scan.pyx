"""Private JPEG scan kernel (public layer: fastgen.jpeg_layout.restart_segments).

One ``def`` wrapper that checks the tables and sizes, then releases the GIL for the whole parse
and rewrite (scan_core.h).
"""
from libc.stdint cimport int64_t, uint8_t

import numpy as np

cdef extern from "scan_core.h" nogil:
    ctypedef struct fs_huff:
        pass
    int fs_huff_build(fs_huff *t, const uint8_t *counts, const uint8_t *symbols)
    int fs_restart_segments(const uint8_t *scan, size_t scan_len, int mcu_rows, int mcu_cols,
                            int interval, const fs_huff **dc, const fs_huff **ac,
                            uint8_t *out, size_t cap, int64_t *offsets)

_ERRORS = {
    -1: "a Huffman table is not valid",
    -2: "the entropy-coded data does not decode with the header's tables",
    -3: "the entropy-coded data ends before its last MCU",
    -4: "the output buffer is too small",
    -5: "out of memory",
    -6: "the entropy-coded data holds a marker (restarts already present?)",
}


def restart_segments(const uint8_t[::1] scan, const uint8_t[:, ::1] tables, int mcu_rows, int mcu_cols,
                     int interval):
    """Restart segments (a list of ``bytes``, raster order) of every ``interval`` MCUs of a
    4:2:0 scan of ``mcu_rows`` x ``mcu_cols`` MCUs.

    ``tables`` is (6, 272) uint8: per row, a DHT's 16 code counts then its symbols; rows 0-2 the
    DC tables of Y, Cb, Cr, rows 3-5 their AC tables.
    """
    cdef fs_huff huff[6]
    cdef const fs_huff *dc[3]
    cdef const fs_huff *ac[3]
    cdef Py_ssize_t i, segments, cap
    cdef int status
    if tables.shape[0] != 6 or tables.shape[1] != 272:
        raise ValueError(f"tables must be (6, 272) uint8, got shape ({tables.shape[0]}, {tables.shape[1]})")
    if mcu_rows < 1 or mcu_cols < 1 or interval < 1 or mcu_cols % interval:
        raise ValueError(f"{mcu_rows} x {mcu_cols} MCUs cannot be cut every {interval} MCUs")
    cdef int codes, k
    for i in range(6):
        codes = 0
        for k in range(16):
            codes += tables[i, k]
        if codes > 256 or fs_huff_build(&huff[i], &tables[i, 0], &tables[i, 16]):
            raise ValueError(f"Huffman table {i} is not valid")
    for i in range(3):
        dc[i] = &huff[i]
        ac[i] = &huff[3 + i]
    segments = <Py_ssize_t>mcu_rows * (mcu_cols // interval)
    # stuffing can at most double a byte; each segment adds three DC codes (<= 27 bits) and a pad
    cap = 2 * scan.shape[0] + 16 * segments + 16
    out = np.empty(cap, np.uint8)
    offsets = np.empty(segments + 1, np.int64)
    cdef uint8_t[::1] out_view = out
    cdef int64_t[::1] offsets_view = offsets
    cdef const uint8_t *scan_ptr = &scan[0] if scan.shape[0] else NULL
    with nogil:
        status = fs_restart_segments(scan_ptr, <size_t>scan.shape[0], mcu_rows, mcu_cols, interval,
                                     dc, ac, &out_view[0], <size_t>cap, &offsets_view[0])
    if status:
        raise ValueError(_ERRORS.get(status, f"error {status}"))
    data = out.tobytes()
    return [data[offsets_view[i]:offsets_view[i + 1]] for i in range(segments)]
