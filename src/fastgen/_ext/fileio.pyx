"""A whole new file in one GIL-free call (POSIX): what the JPEG sink does for every frame.

``os.open``, ``os.write`` and ``os.close`` each drop and retake the GIL; with two or more workers
writing frames, each retake may wait for another thread and wake it later.  One call takes the
GIL back once.  Behind :func:`fastgen.atomic.write_file`, which validates nothing more: the path
is bytes, the data any contiguous buffer.
"""
from libc.errno cimport EINTR, errno

import os


cdef extern from "<fcntl.h>" nogil:
    int open(const char *path, int flags, int mode)
    int O_WRONLY, O_CREAT, O_TRUNC, O_CLOEXEC


cdef extern from "<unistd.h>" nogil:
    ssize_t write(int fd, const void *buf, size_t count)
    int close(int fd)


cdef int _write_new(const char *path, const unsigned char *data, size_t size) noexcept nogil:
    """0, or the errno of the first call that failed (the file is closed either way)."""
    cdef ssize_t n
    cdef int err = 0
    cdef int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o666)
    if fd < 0:
        return errno
    while size:
        n = write(fd, data, size)
        if n < 0:
            if errno == EINTR:
                continue
            err = errno
            break
        data += n
        size -= <size_t>n
    if close(fd) != 0 and err == 0 and errno != EINTR:
        err = errno
    return err


def write_new(bytes path, const unsigned char[::1] data):
    """Create (or truncate) ``path`` (bytes, as ``os.fsencode`` gives) with mode 0666 & ~umask
    and write all of ``data``; an ``OSError`` naming the path as ``os.open`` would raise it."""
    cdef const char *name = path
    cdef const unsigned char *start = &data[0] if data.shape[0] else NULL
    cdef size_t size = <size_t>data.shape[0]
    cdef int err
    if b"\0" in path:
        raise ValueError("embedded null byte")
    with nogil:
        err = _write_new(name, start, size)
    if err:
        raise OSError(err, os.strerror(err), os.fsdecode(path))
