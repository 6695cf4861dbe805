/* fs: file-system helpers the daemons and the CLI share. */
#ifndef PIER_FS_H
#define PIER_FS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "lib/err.h"

/* Replaces path with len bytes of data (mode bits mode) through a new
 * temporary file in the same directory and a rename, so that readers see
 * the old file or the new one, never half of one. A symlink at path is
 * replaced, never followed. durable: fsync the file before the rename (for
 * what must survive a crash of the machine). Returns 0 or -errno, with a
 * message naming path. */
int fs_write_atomic(const char *path, const void *data, size_t len, mode_t mode, bool durable,
                    struct pier_err *err);

/* Removes path and everything below it, staying on its file system and
 * never following symlinks. A missing path is no error. Returns 0 or
 * -errno (what could not be removed is left). */
int fs_rm_tree(const char *path);

struct buf;
/* Reads fd to its end (a file, or a pipe from a child), appending to out
 * at most max bytes of it; the rest is read and dropped, so a writer never
 * blocks. Returns 0, -EFBIG when more than max came (out holds the first
 * max bytes), or -errno of a failed read. */
int fs_read_fd(int fd, struct buf *out, size_t max);

/* Writes all of p to fd (again after EINTR and short writes). Returns 0 or
 * -errno (-EIO when write wrote nothing). */
int fs_write_all(int fd, const void *p, size_t len);

#endif
