/* A whole new file in one call, for kernels that end in a file (fastgen._ext.fileio, the splice
 * of fastgen._ext.scan): created or truncated with mode 0666 & ~umask, written in full (short
 * writes and EINTR retried), closed.  Returns 0 or the errno of the first call that failed.
 * POSIX only (FIO_AVAILABLE 0 elsewhere: the Python layer then writes with os calls). */
#ifndef FASTGEN_FILEIO_CORE_H
#define FASTGEN_FILEIO_CORE_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>

#ifdef _WIN32
#define FIO_AVAILABLE 0
static int fio_write_new(const char *path, const uint8_t *data, size_t size)
{
    (void)path; (void)data; (void)size;
    return ENOSYS;
}
#else
#include <fcntl.h>
#include <unistd.h>
#define FIO_AVAILABLE 1
static int fio_write_new(const char *path, const uint8_t *data, size_t size)
{
    int err = 0, fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (fd < 0)
        return errno;
    while (size) {
        ssize_t n = write(fd, data, size);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            err = errno;
            break;
        }
        data += n;
        size -= (size_t)n;
    }
    if (close(fd) != 0 && err == 0 && errno != EINTR)
        err = errno;
    return err;
}
#endif

#endif
