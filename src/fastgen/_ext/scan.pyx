"""Private JPEG scan kernel (public layer: fastgen.jpeg_layout.restart_segments).

One ``def`` wrapper that checks the tables and sizes, then releases the GIL for the whole parse
and rewrite (scan_core.h).
"""
from cpython.object cimport PyObject
from cpython.ref cimport Py_XDECREF
from libc.stdint cimport int64_t, uint8_t
from libc.stdlib cimport free, malloc

import os

import numpy as np

cdef extern from "Python.h":
    # raw-pointer forms, so a bytes object can be cut to size in place (its one reference is ours)
    PyObject *_new_bytes "PyBytes_FromStringAndSize"(const char *data, Py_ssize_t size) except NULL
    char *_bytes_data "PyBytes_AS_STRING"(PyObject *obj)
    int _PyBytes_Resize(PyObject **obj, Py_ssize_t size) except -1


cdef extern from "fileio_core.h" nogil:
    int fio_write_new(const char *path, const uint8_t *data, size_t size)


cdef extern from "scan_core.h" nogil:
    ctypedef struct fs_huff:
        pass
    int fs_huff_build(fs_huff *t, const uint8_t *counts, const uint8_t *symbols)
    int fs_restart_segments(const uint8_t *scan, size_t scan_len, int mcu_rows, int mcu_cols,
                            int interval, const fs_huff **dc, const fs_huff **ac,
                            uint8_t *out, size_t cap, int64_t *offsets)
    int fs_find_scan(const uint8_t *d, size_t n, size_t *start, size_t *end, int *mcu_rows,
                     int *mcu_cols)
    size_t fs_assemble(const uint8_t *header, size_t header_len, const uint8_t *tmpl,
                       const int64_t *starts, int count, int tiles, int t0, int r0, int t1, int r1,
                       const uint8_t *fresh, const int64_t *fresh_offsets, uint8_t *out)

_ERRORS = {
    -1: "a Huffman table is not valid",
    -2: "the entropy-coded data does not decode with the header's tables",
    -3: "the entropy-coded data ends before its last MCU",
    -4: "the output buffer is too small",
    -5: "out of memory",
    -6: "the entropy-coded data holds a marker (restarts already present?)",
}


cdef int _build_tables(const uint8_t[:, ::1] tables, fs_huff *huff, const fs_huff **dc,
                       const fs_huff **ac) except -1:
    cdef Py_ssize_t i, k
    cdef int codes
    if tables.shape[0] != 6 or tables.shape[1] != 272:
        raise ValueError(f"tables must be (6, 272) uint8, got shape ({tables.shape[0]}, {tables.shape[1]})")
    for i in range(6):
        codes = 0
        for k in range(16):
            codes += tables[i, k]
        if codes > 256 or fs_huff_build(&huff[i], &tables[i, 0], &tables[i, 16]):
            raise ValueError(f"Huffman table {i} is not valid")
    for i in range(3):
        dc[i] = &huff[i]
        ac[i] = &huff[3 + i]
    return 0


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
    if mcu_rows < 1 or mcu_cols < 1 or interval < 1 or mcu_cols % interval:
        raise ValueError(f"{mcu_rows} x {mcu_cols} MCUs cannot be cut every {interval} MCUs")
    _build_tables(tables, huff, dc, ac)
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


def splice(const uint8_t[::1] header, const uint8_t[::1] template_scan, const int64_t[::1] starts,
           int tiles, const uint8_t[::1] fresh, const uint8_t[:, ::1] tables, int interval,
           int t0, int r0, int t1, int r1, bytes path=None):
    """One spliced JPEG (``bytes``): ``header``, the template's scan with tiles t0..t1 of MCU rows
    r0..r1 replaced by the restart segments of ``fresh`` (a JPEG of exactly those tiles, without
    restarts), and EOI.  With ``path`` (bytes, POSIX), the file is written there instead, in the
    same GIL-free stretch (fileio_core.h), and None returned.

    ``template_scan`` holds the template's segments with their RST markers; segment i starts at
    ``starts[i]``, and ``starts[-1]`` is ``len(template_scan) + 2``.  ``tiles``: tiles a row.
    """
    cdef fs_huff huff[6]
    cdef const fs_huff *dc[3]
    cdef const fs_huff *ac[3]
    cdef Py_ssize_t i, count = starts.shape[0] - 1, cap, fresh_count
    cdef size_t scan_start = 0, scan_end = 0, size = 0
    cdef int status = 0, mcu_rows = 0, mcu_cols = 0
    cdef uint8_t *scratch = NULL
    cdef uint8_t *target = NULL
    cdef int64_t *offsets = NULL
    _build_tables(tables, huff, dc, ac)
    if interval < 1 or tiles < 1 or count < tiles or count % tiles:
        raise ValueError(f"{count} template segments are not whole rows of {tiles} tiles")
    if not (0 <= t0 < t1 <= tiles and 0 <= r0 < r1 <= count // tiles):
        raise ValueError(f"tiles {t0}..{t1} of rows {r0}..{r1} are outside the {count // tiles} x {tiles} grid")
    if starts[0] != 0 or starts[count] != template_scan.shape[0] + 2:
        raise ValueError(f"segment starts must run from 0 to the scan's length + 2 ({template_scan.shape[0] + 2}), "
                         f"got {starts[0]} .. {starts[count]}")
    for i in range(count):
        if starts[i + 1] < starts[i] + 2:
            raise ValueError(f"segment starts must grow by 2 or more (index {i}: {starts[i]} -> {starts[i + 1]})")
    if header.shape[0] < 4 or fresh.shape[0] < 4:
        raise ValueError("the header and the fresh JPEG must not be empty")
    fresh_count = <Py_ssize_t>(r1 - r0) * (t1 - t0)
    cap = 2 * fresh.shape[0] + 16 * fresh_count + 16
    # the file is at most the header, the whole template scan (the runs copied from it are
    # disjoint: the starts grow), the fresh segments (fs_restart_segments keeps them within cap)
    # with a marker after each, and EOI: allocated at that size now and cut to size after, so the
    # parse and the copy run in one GIL-free stretch
    bound = header.shape[0] + template_scan.shape[0] + cap + 2 * fresh_count + 2
    cdef PyObject *raw = NULL
    cdef const char *name = NULL
    cdef int err = 0
    if path is not None:
        if b"\0" in path:
            raise ValueError("embedded null byte")
        name = path
        target = NULL                          # assembled into scratch memory, then written
    else:
        raw = _new_bytes(NULL, bound)
        target = <uint8_t *>_bytes_data(raw)
    with nogil:
        status = fs_find_scan(&fresh[0], <size_t>fresh.shape[0], &scan_start, &scan_end, &mcu_rows, &mcu_cols)
        if status == 0 and (mcu_rows != r1 - r0 or mcu_cols != (t1 - t0) * interval):
            status = -7
        if status == 0:
            scratch = <uint8_t *>malloc(cap)
            offsets = <int64_t *>malloc((fresh_count + 1) * sizeof(int64_t))
            if name != NULL:
                target = <uint8_t *>malloc(<size_t>bound)
            if scratch == NULL or offsets == NULL or target == NULL:
                status = -5
        if status == 0:
            status = fs_restart_segments(&fresh[scan_start], scan_end - scan_start, mcu_rows, mcu_cols,
                                         interval, dc, ac, scratch, <size_t>cap, offsets)
        if status == 0:
            size = fs_assemble(&header[0], <size_t>header.shape[0], &template_scan[0], &starts[0], <int>count,
                               tiles, t0, r0, t1, r1, scratch, offsets, target)
            if name != NULL:
                err = fio_write_new(name, target, size)
        free(scratch)
        free(offsets)
        if name != NULL:
            free(target)
    if status or err:
        Py_XDECREF(raw)
        if status == -7:
            raise ValueError(f"the fresh JPEG is {mcu_rows} x {mcu_cols} MCUs, not the "
                             f"{r1 - r0} x {(t1 - t0) * interval} of tiles {t0}..{t1}, rows {r0}..{r1}")
        if status:
            raise ValueError(_ERRORS.get(status, f"error {status}"))
        raise OSError(err, os.strerror(err), os.fsdecode(path))
    if raw == NULL:
        return None
    _PyBytes_Resize(&raw, <Py_ssize_t>size)     # on failure it frees the object and raises
    out = <object>raw
    Py_XDECREF(raw)
    return out
