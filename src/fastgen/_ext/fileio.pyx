"""A whole new file in one GIL-free call (fileio_core.h): what the JPEG sink does for every frame.

``os.open``, ``os.write`` and ``os.close`` each drop and retake the GIL; with two or more workers,
each retake may find the GIL taken and wait for a wake-up (tens of microseconds on a VM).  One
call retakes it once.  Behind :func:`fastgen.atomic.write_file`; ``AVAILABLE`` is False where
the C calls are not POSIX (Windows), and that layer then uses the os calls.
"""
from libc.stdint cimport uint8_t

import os


cdef extern from "fileio_core.h" nogil:
    int FIO_AVAILABLE
    int fio_write_new(const char *path, const uint8_t *data, size_t size)


AVAILABLE = bool(FIO_AVAILABLE)


def write_new(bytes path, const uint8_t[::1] data):
    """Create (or truncate) ``path`` (bytes, as ``os.fsencode`` gives) with mode 0666 & ~umask
    and write all of ``data``; an ``OSError`` naming the path as ``os.open`` would raise it."""
    cdef const char *name = path
    cdef const uint8_t *start = &data[0] if data.shape[0] else NULL
    cdef size_t size = <size_t>data.shape[0]
    cdef int err
    if b"\0" in path:
        raise ValueError("embedded null byte")
    with nogil:
        err = fio_write_new(name, start, size)
    if err:
        raise OSError(err, os.strerror(err), os.fsdecode(path))
