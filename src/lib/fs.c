/* fs: see fs.h. */
#include "lib/fs.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/buf.h"

int fs_write_atomic(const char *path, const void *data, size_t len, mode_t mode, bool durable,
                    struct pier_err *err)
{
    struct buf tmp = BUF_INIT;
    const char *slash = strrchr(path, '/');
    if (slash)
        buf_printf(&tmp, "%.*s/.%s.XXXXXX", (int)(slash - path), path, slash + 1);
    else
        buf_printf(&tmp, ".%s.XXXXXX", path);
    int fd = mkostemp(tmp.p, O_CLOEXEC); /* O_EXCL: never through a symlink */
    int rc = fd < 0 ? -errno : 0;
    if (rc == 0 && fchmod(fd, mode) < 0)
        rc = -errno;
    for (size_t off = 0; rc == 0 && off < len;) {
        ssize_t n = write(fd, (const char *)data + off, len - off);
        if (n < 0 && errno != EINTR)
            rc = -errno;
        else if (n > 0)
            off += (size_t)n;
    }
    if (rc == 0 && durable && fsync(fd) < 0)
        rc = -errno;
    if (fd >= 0 && close(fd) < 0 && rc == 0)
        rc = -errno;
    if (rc == 0 && rename(tmp.p, path) < 0)
        rc = -errno;
    if (rc < 0 && fd >= 0)
        unlink(tmp.p);
    buf_free(&tmp);
    return rc < 0 ? err_set(err, rc, "writing %s: %s", path, strerror(-rc)) : 0;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path) < 0 && errno != ENOENT ? -1 : 0;
}

int fs_rm_tree(const char *path)
{
    if (nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS | FTW_MOUNT) < 0 && errno != ENOENT)
        return -errno;
    return 0;
}

int fs_read_fd(int fd, struct buf *out, size_t max)
{
    char chunk[8192];
    size_t kept = 0;
    bool over = false;
    for (;;) {
        ssize_t n = read(fd, chunk, sizeof(chunk));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        if (n == 0)
            return over ? -EFBIG : 0;
        size_t take = max - kept < (size_t)n ? max - kept : (size_t)n;
        buf_append(out, chunk, take);
        kept += take;
        over = over || take < (size_t)n;
    }
}

int fs_write_all(int fd, const void *p, size_t len)
{
    const char *c = p;
    while (len > 0) {
        ssize_t n = write(fd, c, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        if (n == 0)
            return -EIO;
        c += n, len -= (size_t)n;
    }
    return 0;
}
