/* blobfs: the blobstore's files on disk (docs/blobstore.md).
 *
 * A blob at path "a/b/c" is the file DIR/blobs/a/b/c; the SHA-256 of its
 * bytes, as lowercase hex, is in its extended attribute user.pier.sha256.
 * A write goes to a temporary file "#tmp.<uuid>" in the blob's own
 * directory ('#' is never in a blob path, so it can never be read as one),
 * is fsynced, gets its xattr, and is renamed over the blob; the directory
 * is fsynced after. Readers see the old blob or the new one, never part of
 * one, and a crash leaves at most a temporary file (removed at the next
 * start). A blob whose bytes no longer match its hash is moved to
 * DIR/corrupt/.
 *
 * Paths are resolved under DIR/blobs without following any symlink, in
 * any component: one planted there by hand is "not found", never a way
 * out of the tree.
 *
 * Directories are made for a blob's parents on the way in and removed when
 * their last blob goes, so a path is either a blob or a prefix of blobs,
 * never both: writing "a" while "a/b" exists (or the reverse) is
 * PIER_ECONFLICT.
 *
 * Errors: PIER_EINVAL for a bad path (the message says what is wrong),
 * PIER_ENOTFOUND, PIER_ECONFLICT, PIER_EPROTO for a blob that does not
 * match its hash, -errno for a failed system call (the message names the
 * file). Threads: every call may come from any thread; one writer or
 * reader belongs to one thread at a time. */
#ifndef PIER_BLOBSTORE_BLOBFS_H
#define PIER_BLOBSTORE_BLOBFS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/buf.h"
#include "lib/err.h"

#define BLOBFS_MAX_PATH 1024
#define BLOBFS_MAX_SEGMENT 255 /* a file name's limit */
#define BLOBFS_SHA_HEX 64
#define BLOBFS_XATTR "user.pier.sha256"

struct blobfs;

/* Opens (making it when missing) the store in dir: checks that dir's file
 * system keeps user xattrs (PIER_EINVAL with a message saying so when it
 * does not) and removes temporary files a crash left. *out is new. */
int blobfs_open(const char *dir, struct blobfs **out, struct pier_err *err);
void blobfs_close(struct blobfs *fs); /* NULL allowed */

/* Checks a blob path (without a leading '/'): segments of [A-Za-z0-9._-]
 * other than "." and "..", each at most BLOBFS_MAX_SEGMENT characters,
 * joined by single '/', at most BLOBFS_MAX_PATH characters. 0 or
 * PIER_EINVAL. */
int blobfs_check_path(const char *path, struct pier_err *err);

/* Whether s is BLOBFS_SHA_HEX hex digits (either case). */
bool blobfs_sha_ok(const char *s);

/* ---- writing ---- */

struct blobfs_writer;

/* Flags of blobfs_write_begin. */
#define BLOBFS_NO_REPLACE 1u /* never replace a blob that exists (PIER_ECONFLICT) */

/* Starts writing path: makes its parent directories and the temporary
 * file. PIER_ECONFLICT when a parent is a blob or path has blobs below it,
 * or with BLOBFS_NO_REPLACE when a blob is at path (checked here and again,
 * atomically, by the commit). */
int blobfs_write_begin(struct blobfs *fs, const char *path, unsigned flags,
                       struct blobfs_writer **out, struct pier_err *err);
/* Appends n bytes. */
int blobfs_write(struct blobfs_writer *w, const void *p, size_t n, struct pier_err *err);
/* Bytes written so far. */
uint64_t blobfs_written(const struct blobfs_writer *w);
/* Makes the blob: fsync, xattr, rename, fsync of the directory. expect:
 * NULL or the SHA-256 (hex, either case) the bytes must have, else
 * PIER_EINVAL and nothing is stored. On success sha gets the hash. The
 * writer is spent either way (free it with blobfs_write_abort). */
int blobfs_write_commit(struct blobfs_writer *w, const char *expect, char sha[BLOBFS_SHA_HEX + 1],
                        struct pier_err *err);
/* Frees w, removing its temporary file unless it was committed. NULL
 * allowed. */
void blobfs_write_abort(struct blobfs_writer *w);

/* ---- reading ---- */

struct blobfs_reader;

/* Opens the blob at path. PIER_ENOTFOUND when there is none (or path is a
 * prefix of blobs). */
int blobfs_read_open(struct blobfs *fs, const char *path, struct blobfs_reader **out,
                     struct pier_err *err);
/* Its size, and its recorded SHA-256 (NULL when the file has no xattr, as
 * one copied in by hand; it is then served unchecked). Borrowed. */
uint64_t blobfs_read_size(const struct blobfs_reader *rd);
const char *blobfs_read_path(const struct blobfs_reader *rd);
const char *blobfs_read_sha(const struct blobfs_reader *rd);
/* Appends up to max more bytes to out, hashing them on the way. Returns
 * the count (> 0), 0 at the end, PIER_EPROTO when the bytes do not match
 * the recorded hash (or the file is shorter than it was), or -errno. The
 * check happens before the last piece is handed out: a reader of a corrupt
 * blob never gets all of it. */
int blobfs_read_next(struct blobfs_reader *rd, struct buf *out, size_t max, struct pier_err *err);
/* Moves the blob rd reads to DIR/corrupt/ (unless the path has been
 * replaced since rd opened it). *moved_to gets the new file's path (a new
 * string) or NULL when it was left in place. */
int blobfs_quarantine(struct blobfs *fs, struct blobfs_reader *rd, char **moved_to,
                      struct pier_err *err);
void blobfs_read_close(struct blobfs_reader *rd); /* NULL allowed */

/* ---- deleting ---- */

/* Removes the blob at path (and the directories it leaves empty).
 * PIER_ENOTFOUND when there is none. */
int blobfs_delete(struct blobfs *fs, const char *path, struct pier_err *err);

#endif
