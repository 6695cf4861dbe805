#include "blobstore/blobfs.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <linux/openat2.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include "lib/cleanup.h"
#include "lib/hex.h"
#include "lib/log.h"
#include "lib/uuid.h"

#define TMP_PREFIX "#tmp."
#define PROBE_PREFIX "#probe."

struct blobfs {
    char *dir;
    char *blobs; /* DIR/blobs */
    int blobs_fd;
    int dir_fd;
    /* names guards the name space under blobs/: making parent directories
     * together with a writer's temporary file, renames, unlinks and the
     * pruning of empty directories. So a directory is never removed between
     * a writer's mkdir and its temporary file (which then keeps it), and a
     * corrupt blob is checked to still be the one a reader opened and moved
     * in one step. File contents are written and read outside it. */
    pthread_mutex_t names;
};

struct blobfs_writer {
    struct blobfs *fs;
    char *path;
    char *name; /* the last segment, in path */
    int dir_fd; /* the blob's directory */
    int fd;     /* the temporary file, -1 once closed */
    char tmp[sizeof(TMP_PREFIX) + UUID_LEN];
    EVP_MD_CTX *md;
    uint64_t n;
    bool no_replace; /* BLOBFS_NO_REPLACE */
    bool spent;      /* committed or failed: no more writes */
    bool committed;  /* renamed into place: nothing to remove */
};

struct blobfs_reader {
    char *path;
    int fd;
    uint64_t size, pos;
    dev_t dev;
    ino_t ino;
    bool has_sha, checked;
    char sha[BLOBFS_SHA_HEX + 1];
    EVP_MD_CTX *md;
};

static void hex_digest(EVP_MD_CTX *md, char out[BLOBFS_SHA_HEX + 1])
{
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    EVP_DigestFinal_ex(md, d, &n);
    hex_encode(d, BLOBFS_SHA_HEX / 2, out);
}

static EVP_MD_CTX *sha_new(void)
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (!md || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1)
        abort();
    return md;
}

bool blobfs_sha_ok(const char *s)
{
    return hex_ok(s, BLOBFS_SHA_HEX);
}

int blobfs_check_path(const char *path, struct pier_err *err)
{
    size_t n = strlen(path);
    if (n == 0)
        return err_set(err, PIER_EINVAL, "blob path is empty");
    if (n > BLOBFS_MAX_PATH)
        return err_set(err, PIER_EINVAL, "blob path is longer than %d characters", BLOBFS_MAX_PATH);
    const char *seg = path;
    for (const char *p = path;; p++) {
        if (*p == '/' || *p == '\0') {
            size_t len = (size_t)(p - seg);
            if (len == 0)
                return err_set(err, PIER_EINVAL,
                               "blob path \"%s\" has an empty segment (a leading, trailing or "
                               "double '/')",
                               path);
            if (len > BLOBFS_MAX_SEGMENT)
                return err_set(err, PIER_EINVAL,
                               "blob path \"%.64s...\" has a segment longer than %d characters",
                               path, BLOBFS_MAX_SEGMENT);
            if ((len == 1 && seg[0] == '.') || (len == 2 && seg[0] == '.' && seg[1] == '.'))
                return err_set(err, PIER_EINVAL, "blob path \"%s\" has a \".\" or \"..\" segment",
                               path);
            if (!*p)
                return 0;
            seg = p + 1;
            continue;
        }
        char c = *p;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return err_set(err, PIER_EINVAL,
                           "blob path \"%s\" may hold only letters, digits, '.', '_', '-' and '/'",
                           path);
    }
}

/* ---- opening ---- */

static int probe_xattrs(struct blobfs *fs, struct pier_err *err)
{
    char id[UUID_LEN];
    uuid_new(id);
    char name[sizeof(PROBE_PREFIX) + UUID_LEN];
    snprintf(name, sizeof(name), PROBE_PREFIX "%s", id);
    cleanup_close int fd =
        openat(fs->blobs_fd, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return err_set(err, -errno, "cannot create a file in %s: %s", fs->blobs, strerror(errno));
    int rc = fsetxattr(fd, "user.pier.probe", "1", 1, 0);
    int e = errno;
    unlinkat(fs->blobs_fd, name, 0);
    if (rc < 0 && (e == ENOTSUP || e == EOPNOTSUPP))
        return err_set(err, PIER_EINVAL,
                       "the file system of %s does not keep user extended attributes (user.*), "
                       "where the blobstore records each blob's SHA-256: use a directory on "
                       "ext4, xfs, btrfs, or tmpfs on Linux 6.6 or later",
                       fs->dir);
    if (rc < 0)
        return err_set(err, -e, "cannot set an extended attribute in %s: %s", fs->blobs,
                       strerror(e));
    return 0;
}

/* nftw has no user pointer, hence the logging from here. */
static int sweep_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    const char *base = path + ftw->base;
    if (flag == FTW_F && base[0] == '#') {
        if (unlink(path) == 0)
            log_info("blobstore", "removed a temporary file left by a crash", "file=%s", path);
    } else if (flag == FTW_DP && ftw->level > 0) {
        rmdir(path); /* only succeeds when empty */
    }
    return 0;
}

static int mkdir_p(const char *dir)
{
    cleanup_free char *p = xstrdup(dir);
    for (char *s = p + 1; *s; s++) {
        if (*s != '/')
            continue;
        *s = '\0';
        if (mkdir(p, 0755) < 0 && errno != EEXIST)
            return -errno;
        *s = '/';
    }
    if (mkdir(p, 0755) < 0 && errno != EEXIST)
        return -errno;
    return 0;
}

int blobfs_open(const char *dir, struct blobfs **out, struct pier_err *err)
{
    struct blobfs *fs = xcalloc(1, sizeof(*fs));
    fs->dir = xstrdup(dir);
    struct buf b = BUF_INIT;
    buf_printf(&b, "%s/blobs", dir);
    fs->blobs = buf_detach(&b);
    fs->blobs_fd = fs->dir_fd = -1;
    pthread_mutex_init(&fs->names, NULL);
    int rc;
    if ((rc = mkdir_p(fs->blobs)) < 0) {
        err_set(err, rc, "cannot make %s: %s", fs->blobs, strerror(-rc));
        goto fail;
    }
    fs->dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    fs->blobs_fd = open(fs->blobs, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
    if (fs->dir_fd < 0 || fs->blobs_fd < 0) {
        rc = err_set(err, -errno, "cannot open %s: %s", fs->blobs, strerror(errno));
        goto fail;
    }
    if ((rc = probe_xattrs(fs, err)) < 0)
        goto fail;
    nftw(fs->blobs, sweep_entry, 16, FTW_DEPTH | FTW_PHYS | FTW_MOUNT);
    *out = fs;
    return 0;
fail:
    blobfs_close(fs);
    return rc;
}

void blobfs_close(struct blobfs *fs)
{
    if (!fs)
        return;
    if (fs->blobs_fd >= 0)
        close(fs->blobs_fd);
    if (fs->dir_fd >= 0)
        close(fs->dir_fd);
    pthread_mutex_destroy(&fs->names);
    free(fs->blobs);
    free(fs->dir);
    free(fs);
}

/* ---- resolving paths ---- */

/* The fallback of open_beneath for kernels before 5.6: one component at a
 * time, none of them followed when it is a symlink. */
static int open_walk(struct blobfs *fs, const char *path, int flags)
{
    int dfd = fcntl(fs->blobs_fd, F_DUPFD_CLOEXEC, 0);
    if (dfd < 0)
        return -errno;
    cleanup_free char *p = xstrdup(path);
    char *seg = p, *slash;
    while ((slash = strchr(seg, '/'))) {
        *slash = '\0';
        int nfd = openat(dfd, seg, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        int e = errno;
        close(dfd);
        if (nfd < 0)
            return -e;
        dfd = nfd;
        seg = slash + 1;
    }
    int fd = openat(dfd, seg, flags | O_NOFOLLOW | O_CLOEXEC);
    int e = errno;
    close(dfd);
    return fd < 0 ? -e : fd;
}

/* Opens path (relative to blobs/) with flags, following no symlink in any
 * of its components and never leaving blobs/: a symlink planted in the
 * tree (by hand: the API makes none) is ELOOP, not a way out. Returns an fd
 * or -errno (ENOENT, ENOTDIR, ELOOP, ...). */
static int open_beneath(struct blobfs *fs, const char *path, int flags)
{
    struct open_how how = {
        .flags = (uint64_t)(flags | O_NOFOLLOW | O_CLOEXEC),
        .resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
    };
    int fd = (int)syscall(SYS_openat2, fs->blobs_fd, path, &how, sizeof(how));
    if (fd >= 0)
        return fd;
    /* ENOSYS: Linux before 5.6; EPERM: a seccomp filter that does not
     * know openat2 (older container runtimes). */
    if (errno != ENOSYS && errno != EPERM)
        return -errno;
    return open_walk(fs, path, flags);
}

/* Opens the directory holding path's last segment (blobs/ itself for a
 * path of one segment) as open_beneath does, and points *name at that
 * segment (inside path). Returns an fd or -errno. */
static int open_parent(struct blobfs *fs, const char *path, const char **name)
{
    const char *slash = strrchr(path, '/');
    *name = slash ? slash + 1 : path;
    if (!slash) {
        int fd = fcntl(fs->blobs_fd, F_DUPFD_CLOEXEC, 0);
        return fd < 0 ? -errno : fd;
    }
    cleanup_free char *dir = xstrdup(path);
    dir[slash - path] = '\0';
    return open_beneath(fs, dir, O_RDONLY | O_DIRECTORY);
}

/* After path (relative to blobs/) was removed: removes the directories
 * above it that are now empty, deepest first, and fsyncs the directory the
 * last removal happened in. Call with names held. */
static void prune_parents(struct blobfs *fs, const char *path)
{
    cleanup_free char *p = xstrdup(path);
    char *slash;
    while ((slash = strrchr(p, '/'))) {
        *slash = '\0'; /* p: the directory that held what was removed */
        const char *name;
        cleanup_close int pfd = open_parent(fs, p, &name);
        if (pfd < 0)
            return;
        if (unlinkat(pfd, name, AT_REMOVEDIR) < 0) {
            int fd = openat(pfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (fd >= 0) {
                fsync(fd);
                close(fd);
            }
            return;
        }
    }
    fsync(fs->blobs_fd);
}

/* ---- writing ---- */

/* Walks to path's directory under blobs/, making what is missing, and
 * creates the temporary file there. Call with names held. */
static int begin_locked(struct blobfs *fs, struct blobfs_writer *w, struct pier_err *err)
{
    int dfd = dup(fs->blobs_fd);
    if (dfd < 0)
        return err_set(err, -errno, "cannot open %s: %s", fs->blobs, strerror(errno));
    for (char *seg = w->path, *slash; (slash = strchr(seg, '/')); seg = slash + 1) {
        *slash = '\0';
        if (mkdirat(dfd, seg, 0755) == 0)
            fsync(dfd); /* the new entry lasts */
        int nfd = openat(dfd, seg, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        int e = errno;
        close(dfd);
        if (nfd < 0) {
            int rc = e == ENOTDIR || e == ELOOP
                         ? err_set(err, PIER_ECONFLICT,
                                   "\"%s\" is a blob, so it cannot hold other blobs", w->path)
                         : err_set(err, -e, "cannot make directory %s/%s: %s", fs->blobs, w->path,
                                   strerror(e));
            *slash = '/';
            return rc;
        }
        *slash = '/';
        dfd = nfd;
    }
    w->dir_fd = dfd;
    struct stat st;
    if (fstatat(dfd, w->name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
        if (S_ISDIR(st.st_mode))
            return err_set(err, PIER_ECONFLICT, "\"%s\" holds other blobs below it", w->path);
        if (w->no_replace)
            return err_set(err, PIER_ECONFLICT,
                           "blob \"%s\" exists and this upload may not replace it", w->path);
    }
    char id[UUID_LEN];
    uuid_new(id);
    snprintf(w->tmp, sizeof(w->tmp), TMP_PREFIX "%s", id);
    w->fd = openat(dfd, w->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (w->fd < 0)
        return err_set(err, -errno, "cannot create a temporary file for %s: %s", w->path,
                       strerror(errno));
    return 0;
}

int blobfs_write_begin(struct blobfs *fs, const char *path, unsigned flags,
                       struct blobfs_writer **out, struct pier_err *err)
{
    int rc = blobfs_check_path(path, err);
    if (rc < 0)
        return rc;
    struct blobfs_writer *w = xcalloc(1, sizeof(*w));
    w->fs = fs;
    w->no_replace = flags & BLOBFS_NO_REPLACE;
    w->path = xstrdup(path);
    const char *slash = strrchr(w->path, '/');
    w->name = slash ? (char *)slash + 1 : w->path;
    w->dir_fd = w->fd = -1;
    pthread_mutex_lock(&fs->names);
    rc = begin_locked(fs, w, err);
    if (rc < 0)
        prune_parents(fs, w->path); /* what we made for nothing */
    pthread_mutex_unlock(&fs->names);
    if (rc < 0) {
        w->tmp[0] = '\0';
        blobfs_write_abort(w);
        return rc;
    }
    w->md = sha_new();
    *out = w;
    return 0;
}

int blobfs_write(struct blobfs_writer *w, const void *p, size_t n, struct pier_err *err)
{
    if (w->spent)
        return err_set(err, PIER_EINTERNAL, "write to %s after its end", w->path);
    EVP_DigestUpdate(w->md, p, n);
    const char *c = p;
    while (n > 0) {
        ssize_t k = write(w->fd, c, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0)
            return err_set(err, -errno, "writing %s: %s", w->path, strerror(errno));
        c += k;
        n -= (size_t)k;
        w->n += (uint64_t)k;
    }
    return 0;
}

uint64_t blobfs_written(const struct blobfs_writer *w)
{
    return w->n;
}

int blobfs_write_commit(struct blobfs_writer *w, const char *expect, char sha[BLOBFS_SHA_HEX + 1],
                        struct pier_err *err)
{
    if (w->spent)
        return err_set(err, PIER_EINTERNAL, "commit of %s after its end", w->path);
    w->spent = true;
    hex_digest(w->md, sha);
    if (expect && strcasecmp(expect, sha) != 0)
        return err_set(err, PIER_EINVAL,
                       "the body's SHA-256 is %s, not %s as the request said: nothing stored", sha,
                       expect);
    if (fsetxattr(w->fd, BLOBFS_XATTR, sha, BLOBFS_SHA_HEX, 0) < 0)
        return err_set(err, -errno, "cannot set %s on %s: %s", BLOBFS_XATTR, w->path,
                       strerror(errno));
    if (fsync(w->fd) < 0)
        return err_set(err, -errno, "fsync of %s: %s", w->path, strerror(errno));
    close(w->fd);
    w->fd = -1;
    pthread_mutex_lock(&w->fs->names);
    /* No replacing: the check in begin raced with other writers, this one
     * does not. */
    int rc = renameat2(w->dir_fd, w->tmp, w->dir_fd, w->name, w->no_replace ? RENAME_NOREPLACE : 0);
    int e = errno;
    if (rc == 0)
        w->committed = true;
    struct stat st;
    bool is_dir =
        rc < 0 && fstatat(w->dir_fd, w->name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode);
    pthread_mutex_unlock(&w->fs->names);
    if (rc < 0 && e == EEXIST && w->no_replace && !is_dir)
        return err_set(err, PIER_ECONFLICT, "blob \"%s\" exists and this upload may not replace it",
                       w->path);
    if (rc < 0 && (e == EISDIR || e == ENOTEMPTY || e == EEXIST))
        return err_set(err, PIER_ECONFLICT, "\"%s\" holds other blobs below it", w->path);
    if (rc < 0)
        return err_set(err, -e, "cannot rename into %s: %s", w->path, strerror(e));
    if (fsync(w->dir_fd) < 0)
        return err_set(err, -errno, "fsync of the directory of %s: %s", w->path, strerror(errno));
    return 0;
}

void blobfs_write_abort(struct blobfs_writer *w)
{
    if (!w)
        return;
    if (w->fd >= 0)
        close(w->fd);
    if (!w->committed && w->tmp[0] && w->dir_fd >= 0) {
        pthread_mutex_lock(&w->fs->names);
        unlinkat(w->dir_fd, w->tmp, 0);
        prune_parents(w->fs, w->path);
        pthread_mutex_unlock(&w->fs->names);
    }
    if (w->dir_fd >= 0)
        close(w->dir_fd);
    EVP_MD_CTX_free(w->md);
    free(w->path);
    free(w);
}

/* ---- reading ---- */

int blobfs_read_open(struct blobfs *fs, const char *path, struct blobfs_reader **out,
                     struct pier_err *err)
{
    int rc = blobfs_check_path(path, err);
    if (rc < 0)
        return rc;
    int fd = open_beneath(fs, path, O_RDONLY);
    if (fd == -ENOENT || fd == -ENOTDIR || fd == -ELOOP || fd == -EXDEV)
        return err_set(err, PIER_ENOTFOUND, "no blob at \"%s\"", path);
    if (fd < 0)
        return err_set(err, fd, "cannot open blob %s: %s", path, strerror(-fd));
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return err_set(err, PIER_ENOTFOUND, "no blob at \"%s\"", path);
    }
    struct blobfs_reader *rd = xcalloc(1, sizeof(*rd));
    rd->path = xstrdup(path);
    rd->fd = fd;
    rd->size = (uint64_t)st.st_size;
    rd->dev = st.st_dev;
    rd->ino = st.st_ino;
    ssize_t n = fgetxattr(fd, BLOBFS_XATTR, rd->sha, BLOBFS_SHA_HEX);
    rd->sha[BLOBFS_SHA_HEX] = '\0';
    rd->has_sha = n == BLOBFS_SHA_HEX && blobfs_sha_ok(rd->sha);
    if (!rd->has_sha)
        log_warn("blobstore", "blob has no recorded SHA-256, served unchecked", "path=%s", path);
    rd->md = sha_new();
    *out = rd;
    return 0;
}

uint64_t blobfs_read_size(const struct blobfs_reader *rd)
{
    return rd->size;
}

const char *blobfs_read_path(const struct blobfs_reader *rd)
{
    return rd->path;
}

const char *blobfs_read_sha(const struct blobfs_reader *rd)
{
    return rd->has_sha ? rd->sha : NULL;
}

/* Compares the hash of everything read with the recorded one. */
static int check_sum(struct blobfs_reader *rd, struct pier_err *err)
{
    rd->checked = true;
    if (!rd->has_sha)
        return 0;
    char got[BLOBFS_SHA_HEX + 1];
    hex_digest(rd->md, got);
    if (strcasecmp(got, rd->sha) != 0)
        return err_set(err, PIER_EPROTO, "blob %s is corrupt: its SHA-256 is %s, recorded %s",
                       rd->path, got, rd->sha);
    return 0;
}

int blobfs_read_next(struct blobfs_reader *rd, struct buf *out, size_t max, struct pier_err *err)
{
    if (rd->pos == rd->size)
        return rd->checked ? 0 : check_sum(rd, err);
    uint64_t left = rd->size - rd->pos;
    size_t want = left < max ? (size_t)left : max;
    buf_grow(out, want);
    ssize_t n;
    do
        n = read(rd->fd, out->p + out->len, want);
    while (n < 0 && errno == EINTR);
    if (n < 0) {
        out->p[out->len] = '\0';
        return err_set(err, -errno, "reading blob %s: %s", rd->path, strerror(errno));
    }
    if (n == 0) {
        out->p[out->len] = '\0';
        return err_set(err, PIER_EPROTO, "blob %s is corrupt: it ends at %llu of its %llu bytes",
                       rd->path, (unsigned long long)rd->pos, (unsigned long long)rd->size);
    }
    EVP_DigestUpdate(rd->md, out->p + out->len, (size_t)n);
    rd->pos += (uint64_t)n;
    if (rd->pos == rd->size) {
        int rc = check_sum(rd, err);
        if (rc < 0) {
            out->p[out->len] = '\0'; /* the last piece is withheld */
            return rc;
        }
    }
    out->len += (size_t)n;
    out->p[out->len] = '\0';
    return (int)n;
}

int blobfs_quarantine(struct blobfs *fs, struct blobfs_reader *rd, char **moved_to,
                      struct pier_err *err)
{
    *moved_to = NULL;
    cleanup_free char *flat = xstrdup(rd->path);
    for (char *p = flat; *p; p++)
        if (*p == '/')
            *p = '%'; /* never in a path, so the name stays unambiguous */
    int rc = 0;
    pthread_mutex_lock(&fs->names);
    struct stat st;
    const char *base;
    cleanup_close int pfd = open_parent(fs, rd->path, &base);
    if (pfd < 0 || fstatat(pfd, base, &st, AT_SYMLINK_NOFOLLOW) < 0 || st.st_dev != rd->dev ||
        st.st_ino != rd->ino) {
        pthread_mutex_unlock(&fs->names);
        return 0; /* replaced or deleted since: the new one is not ours to move */
    }
    if (mkdirat(fs->dir_fd, "corrupt", 0755) < 0 && errno != EEXIST) {
        rc = err_set(err, -errno, "cannot make %s/corrupt: %s", fs->dir, strerror(errno));
        goto out;
    }
    struct buf name = BUF_INIT;
    for (int i = 0; i < 100; i++) {
        buf_reset(&name);
        buf_printf(&name, "corrupt/%s.%lld", flat, (long long)time(NULL));
        if (i > 0)
            buf_printf(&name, ".%d", i);
        rc = renameat2(pfd, base, fs->dir_fd, name.p, RENAME_NOREPLACE);
        if (rc == 0 || errno != EEXIST)
            break;
    }
    if (rc < 0) {
        rc = err_set(err, -errno, "cannot move blob %s to %s/corrupt: %s", rd->path, fs->dir,
                     strerror(errno));
        buf_free(&name);
        goto out;
    }
    prune_parents(fs, rd->path);
    struct buf full = BUF_INIT;
    buf_printf(&full, "%s/%s", fs->dir, name.p);
    buf_free(&name);
    *moved_to = buf_detach(&full);
out:
    pthread_mutex_unlock(&fs->names);
    return rc;
}

void blobfs_read_close(struct blobfs_reader *rd)
{
    if (!rd)
        return;
    close(rd->fd);
    EVP_MD_CTX_free(rd->md);
    free(rd->path);
    free(rd);
}

/* ---- deleting ---- */

int blobfs_delete(struct blobfs *fs, const char *path, struct pier_err *err)
{
    int rc = blobfs_check_path(path, err);
    if (rc < 0)
        return rc;
    pthread_mutex_lock(&fs->names);
    struct stat st;
    const char *name;
    cleanup_close int pfd = open_parent(fs, path, &name);
    if (pfd == -ENOENT || pfd == -ENOTDIR || pfd == -ELOOP || pfd == -EXDEV) {
        rc = err_set(err, PIER_ENOTFOUND, "no blob at \"%s\"", path);
    } else if (pfd < 0) {
        rc = err_set(err, pfd, "cannot look at blob %s: %s", path, strerror(-pfd));
    } else if (fstatat(pfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
        rc = errno == ENOENT || errno == ENOTDIR
                 ? err_set(err, PIER_ENOTFOUND, "no blob at \"%s\"", path)
                 : err_set(err, -errno, "cannot look at blob %s: %s", path, strerror(errno));
    } else if (!S_ISREG(st.st_mode)) {
        rc = err_set(err, PIER_ENOTFOUND, "no blob at \"%s\"", path);
    } else if (unlinkat(pfd, name, 0) < 0) {
        rc = err_set(err, -errno, "cannot remove blob %s: %s", path, strerror(errno));
    } else {
        prune_parents(fs, path);
    }
    pthread_mutex_unlock(&fs->names);
    return rc;
}
