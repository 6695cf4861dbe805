#include "host/joblog.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "lib/cleanup.h"
#include "lib/clock.h"
#include "lib/log.h"

#define TS_LEN 27                 /* 2026-11-25T16:54:52.123456Z */
#define READ_CHUNK (64 << 10)     /* what a reader reads at once */
#define MAX_STORED_LINE (1 << 20) /* longer without a newline: not our file, skipped */
#define MAX_SCAN 100              /* highest rotated file index a reader looks for */

static const char *stream_name(enum joblog_stream s)
{
    return s == JOBLOG_STDERR ? "stderr" : "stdout";
}

/* "log" for index 0, "log.N" otherwise. */
static void file_name(int index, char *name, size_t size)
{
    if (index == 0)
        snprintf(name, size, "log");
    else
        snprintf(name, size, "log.%d", index);
}

/* ---------------------------------------------------------------- writer */

struct partial {
    struct buf b;    /* bytes of a line not ended yet */
    int64_t last_ms; /* when output last arrived for it */
};

struct joblog_writer {
    int dirfd;
    int fd;
    size_t size; /* bytes in the current log file */
    size_t max_bytes;
    int max_files;
    struct buf out;         /* formatted lines not written yet */
    struct partial part[3]; /* by stream (index 0 unused) */
    bool failed;            /* a write failed: warned once */
};

static int open_log(struct joblog_writer *w)
{
    w->fd = openat(w->dirfd, "log", O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (w->fd < 0)
        return -errno;
    struct stat st;
    w->size = fstat(w->fd, &st) == 0 ? (size_t)st.st_size : 0;
    return 0;
}

int joblog_writer_open(const char *dir, size_t max_bytes, int max_files, struct joblog_writer **out,
                       struct pier_err *err)
{
    *out = NULL;
    struct joblog_writer *w = xcalloc(1, sizeof(*w));
    w->max_bytes = max_bytes ? max_bytes : JOBLOG_DEFAULT_MAX_BYTES;
    w->max_files = max_files > 0 ? max_files : JOBLOG_DEFAULT_MAX_FILES;
    w->fd = -1;
    w->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int r = w->dirfd < 0 ? -errno : open_log(w);
    if (r < 0) {
        err_set(err, r, "job log in %s: %s", dir, strerror(-r));
        joblog_writer_close(w);
        return r;
    }
    *out = w;
    return 0;
}

static void write_out(struct joblog_writer *w)
{
    size_t done = 0;
    while (done < w->out.len && w->fd >= 0) {
        ssize_t n = write(w->fd, w->out.p + done, w->out.len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            /* A full disk loses log lines, never the job. */
            if (!w->failed)
                log_warn("joblog", "cannot write the job log", "error=\"%s\"", strerror(errno));
            w->failed = true;
            break;
        }
        done += (size_t)n;
        w->size += (size_t)n;
    }
    buf_reset(&w->out);
}

/* log.(max-1) is dropped, log.N becomes log.N+1, log becomes log.1. */
static void rotate(struct joblog_writer *w)
{
    char from[32], to[32];
    if (w->max_files <= 1) {
        unlinkat(w->dirfd, "log", 0);
    } else {
        file_name(w->max_files - 1, to, sizeof(to));
        unlinkat(w->dirfd, to, 0);
        for (int i = w->max_files - 2; i >= 0; i--) {
            file_name(i, from, sizeof(from));
            file_name(i + 1, to, sizeof(to));
            renameat(w->dirfd, from, w->dirfd, to);
        }
    }
    close(w->fd);
    if (open_log(w) < 0 && !w->failed) {
        log_warn("joblog", "cannot open a new job log", "error=\"%s\"", strerror(errno));
        w->failed = true;
    }
}

static void format_ts(char ts[64])
{
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    struct tm tm;
    gmtime_r(&now.tv_sec, &tm);
    snprintf(ts, 64, "%04d-%02d-%02dT%02d:%02d:%02d.%06ldZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, now.tv_nsec / 1000);
}

static void emit(struct joblog_writer *w, enum joblog_stream s, const char *msg, size_t len)
{
    char ts[64];
    format_ts(ts);
    size_t line = TS_LEN + 8 + len + 1;
    size_t pending = w->size + w->out.len;
    if (pending > 0 && pending + line > w->max_bytes) {
        write_out(w);
        rotate(w);
    }
    buf_printf(&w->out, "%s %s ", ts, stream_name(s));
    buf_append(&w->out, msg, len);
    buf_putc(&w->out, '\n');
}

void joblog_write(struct joblog_writer *w, enum joblog_stream s, const void *data, size_t n)
{
    if (s != JOBLOG_STDOUT && s != JOBLOG_STDERR)
        return;
    struct partial *pt = &w->part[s];
    buf_append(&pt->b, data, n);
    size_t at = 0;
    for (;;) {
        const char *p = pt->b.p + at;
        size_t avail = pt->b.len - at;
        size_t window = avail > JOBLOG_MAX_LINE ? JOBLOG_MAX_LINE + 1 : avail;
        const char *nl = avail ? memchr(p, '\n', window) : NULL;
        if (nl) {
            size_t len = (size_t)(nl - p);
            while (len > 0 && p[len - 1] == '\r')
                len--;
            emit(w, s, p, len);
            at += (size_t)(nl - p) + 1;
        } else if (avail > JOBLOG_MAX_LINE) {
            emit(w, s, p, JOBLOG_MAX_LINE);
            at += JOBLOG_MAX_LINE;
        } else {
            break;
        }
    }
    buf_consume(&pt->b, at);
    if (pt->b.len)
        pt->last_ms = clock_now_ms();
    write_out(w);
}

void joblog_flush(struct joblog_writer *w, bool force)
{
    int64_t now = clock_now_ms();
    for (int s = JOBLOG_STDOUT; s <= JOBLOG_STDERR; s++) {
        struct partial *pt = &w->part[s];
        if (pt->b.len && (force || now - pt->last_ms >= JOBLOG_FLUSH_MS)) {
            emit(w, (enum joblog_stream)s, pt->b.p, pt->b.len);
            buf_reset(&pt->b);
        }
    }
    write_out(w);
}

int joblog_flush_due_ms(const struct joblog_writer *w)
{
    int64_t now = clock_now_ms();
    int due = -1;
    for (int s = JOBLOG_STDOUT; s <= JOBLOG_STDERR; s++) {
        const struct partial *pt = &w->part[s];
        if (!pt->b.len)
            continue;
        int64_t left = pt->last_ms + JOBLOG_FLUSH_MS - now;
        int ms = left < 0 ? 0 : (int)left;
        if (due < 0 || ms < due)
            due = ms;
    }
    return due;
}

void joblog_writer_close(struct joblog_writer *w)
{
    if (!w)
        return;
    if (w->fd >= 0) {
        joblog_flush(w, true);
        close(w->fd);
    }
    if (w->dirfd >= 0)
        close(w->dirfd);
    buf_free(&w->out);
    for (int s = 0; s < 3; s++)
        buf_free(&w->part[s].b);
    free(w);
}

/* ------------------------------------------------------------- lines */

/* "2026-11-25T16:54:52.123456Z": D for a digit, anything else literal. */
static bool ts_ok(const char *p)
{
    static const char shape[] = "DDDD-DD-DDTDD:DD:DD.DDDDDDZ";
    for (size_t i = 0; i < TS_LEN; i++) {
        if (shape[i] == 'D' ? (p[i] < '0' || p[i] > '9') : p[i] != shape[i])
            return false;
    }
    return true;
}

int joblog_parse_line(struct str line, struct joblog_line *out)
{
    /* ts, space, six letters of stream, space */
    if (line.len < TS_LEN + 8 || !ts_ok(line.p) || line.p[TS_LEN] != ' ' ||
        line.p[TS_LEN + 7] != ' ')
        return -1;
    struct str stream = {line.p + TS_LEN + 1, 6};
    if (!str_eq(stream, "stdout") && !str_eq(stream, "stderr"))
        return -1;
    out->ts = (struct str){line.p, TS_LEN};
    out->stream = stream;
    out->msg = (struct str){line.p + TS_LEN + 8, line.len - TS_LEN - 8};
    return 0;
}

static bool line_wanted(struct str line, int streams)
{
    struct joblog_line l;
    if (joblog_parse_line(line, &l) < 0)
        return false;
    int s = str_eq(l.stream, "stderr") ? JOBLOG_STDERR : JOBLOG_STDOUT;
    return streams == 0 || (streams & (1 << s));
}

/* ---------------------------------------------------------------- reader */

/* A reader reads one file at a time, sequentially. At the end of it, it
 * looks the file up by inode among log, log.1, ...: when it is still "log"
 * it waits; when it has become log.J, the writer has rotated it and will not
 * write to it again, so the reader finishes it and goes on to log.J-1 (or
 * log). Going by inode rather than by name keeps the reader right when it
 * falls behind by several rotations, and when a rotation happens while it
 * looks (a name it opens is checked again after the open). */
struct joblog_reader {
    int dirfd;
    int inotify; /* -1 when inotify is not available: wait polls */
    int fd;      /* the file being read, -1 before the log exists */
    dev_t dev;
    ino_t ino;
    int next_fd;        /* the file after fd, once fd is known to be finished */
    struct buf pending; /* bytes read and not yet returned */
    int streams;
};

static int stat_name(int dirfd, int index, struct stat *st)
{
    char name[32];
    file_name(index, name, sizeof(name));
    return fstatat(dirfd, name, st, 0);
}

static int open_name(int dirfd, int index)
{
    char name[32];
    file_name(index, name, sizeof(name));
    return openat(dirfd, name, O_RDONLY | O_CLOEXEC);
}

/* Where the file (dev, ino) is now: 0 for log, J for log.J, -1 when gone.
 * *oldest gets the highest index that exists (-1: none). A rotation leaves
 * at most one name missing at a time, so two missing in a row end the scan. */
static int find_file(int dirfd, dev_t dev, ino_t ino, int *oldest)
{
    int found = -1, misses = 0;
    *oldest = -1;
    for (int i = 0; i <= MAX_SCAN && misses < 2; i++) {
        struct stat st;
        if (stat_name(dirfd, i, &st) < 0) {
            misses++;
            continue;
        }
        misses = 0;
        *oldest = i;
        if (found < 0 && st.st_dev == dev && st.st_ino == ino)
            found = i;
    }
    return found;
}

static void set_current(struct joblog_reader *r, int fd)
{
    struct stat st;
    if (r->fd >= 0)
        close(r->fd);
    r->fd = fd;
    fstat(fd, &st);
    r->dev = st.st_dev;
    r->ino = st.st_ino;
    /* A line cut off at the end of a finished file is not a line. */
    buf_reset(&r->pending);
}

/* At the end of the current file: finds the file after it, if the writer
 * has moved on. Sets r->next_fd and returns 1, or returns 0. */
static int find_next(struct joblog_reader *r)
{
    for (int attempt = 0; attempt < 5; attempt++) {
        int oldest;
        int j = find_file(r->dirfd, r->dev, r->ino, &oldest);
        if (j == 0)
            return 0;
        int next = j > 0 ? j - 1 : oldest;
        if (next < 0)
            return 0;
        int fd = open_name(r->dirfd, next);
        if (fd < 0)
            continue;
        struct stat st;
        if (j > 0 &&
            (stat_name(r->dirfd, j, &st) < 0 || st.st_dev != r->dev || st.st_ino != r->ino)) {
            close(fd); /* rotated again meanwhile */
            continue;
        }
        r->next_fd = fd;
        return 1;
    }
    return 0;
}

/* The position after the last newline of fd (0 when it has none). */
static off_t last_line_end(int fd, off_t size)
{
    char block[4096];
    off_t hi = size;
    while (hi > 0) {
        size_t n = hi > (off_t)sizeof(block) ? sizeof(block) : (size_t)hi;
        ssize_t got = pread(fd, block, n, hi - (off_t)n);
        if (got != (ssize_t)n)
            return 0;
        const char *nl = memrchr(block, '\n', n);
        if (nl)
            return hi - (off_t)n + (nl - block) + 1;
        hi -= (off_t)n;
    }
    return 0;
}

/* Counts, from the end of fd backwards, up to want lines the reader
 * wants. Returns how many it found; *start is where the earliest of them
 * begins (unchanged when none). win holds the bytes [lo, end) of the file,
 * end being just after the newline of the line looked at. */
static int64_t count_back(int fd, int64_t want, int streams, off_t *start)
{
    struct stat st;
    if (fstat(fd, &st) < 0)
        return 0;
    off_t end = last_line_end(fd, st.st_size), lo = end;
    cleanup_buf struct buf win = BUF_INIT;
    int64_t found = 0;
    while (found < want && end > 0) {
        const char *nl = win.len > 1 ? memrchr(win.p, '\n', win.len - 1) : NULL;
        if (!nl && lo > 0) {
            if (win.len > MAX_STORED_LINE)
                break;
            size_t n = lo > READ_CHUNK ? READ_CHUNK : (size_t)lo;
            struct buf more = BUF_INIT;
            buf_grow(&more, n + win.len);
            if (pread(fd, more.p, n, lo - (off_t)n) != (ssize_t)n) {
                buf_free(&more);
                break;
            }
            more.len = n;
            buf_append(&more, win.p, win.len);
            buf_free(&win);
            win = more;
            lo -= (off_t)n;
            continue;
        }
        size_t ls = nl ? (size_t)(nl - win.p) + 1 : 0;
        if (line_wanted((struct str){win.p + ls, win.len - 1 - ls}, streams)) {
            found++;
            *start = lo + (off_t)ls;
        }
        win.len = ls;
        end = lo + (off_t)ls;
    }
    return found;
}

/* Opens log, log.1, ... newest first and stops at the file holding the
 * earliest of the last n lines wanted; the reader starts there. */
static void start_at_tail(struct joblog_reader *r, int64_t n)
{
    int fds[MAX_SCAN + 1];
    int count = 0, chosen = -1;
    off_t start = 0;
    int64_t found = 0;
    for (int i = 0; i <= MAX_SCAN && found < n; i++) {
        int fd = open_name(r->dirfd, i);
        if (fd < 0)
            break;
        struct stat st, other;
        fstat(fd, &st);
        bool dup = false; /* a rotation while opening shows a file twice */
        for (int k = 0; k < count; k++)
            if (fstat(fds[k], &other) == 0 && other.st_dev == st.st_dev &&
                other.st_ino == st.st_ino)
                dup = true;
        if (dup) {
            close(fd);
            continue;
        }
        fds[count++] = fd;
        off_t at = st.st_size;
        int64_t got = count_back(fd, n - found, r->streams, &at);
        found += got;
        if (got > 0 || chosen < 0) {
            chosen = count - 1;
            start = got > 0 ? at : st.st_size;
        }
    }
    /* Fewer lines than asked: all of the oldest file read. */
    if (found < n && count > 0) {
        chosen = count - 1;
        start = 0;
    }
    for (int k = 0; k < count; k++) {
        if (k == chosen) {
            set_current(r, fds[k]);
            lseek(fds[k], start, SEEK_SET);
        } else {
            close(fds[k]);
        }
    }
}

int joblog_reader_open(const char *dir, const struct joblog_query *q, struct joblog_reader **out,
                       struct pier_err *err)
{
    *out = NULL;
    struct joblog_reader *r = xcalloc(1, sizeof(*r));
    r->fd = r->next_fd = r->inotify = -1;
    r->streams = q ? q->streams : 0;
    r->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (r->dirfd < 0) {
        int e = errno;
        joblog_reader_close(r);
        if (e == ENOENT)
            return err_set(err, PIER_ENOTFOUND, "job log directory %s not found", dir);
        return err_set(err, -e, "job log directory %s: %s", dir, strerror(e));
    }
    /* Watching before reading: whatever is written after this wakes a wait. */
    r->inotify = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (r->inotify >= 0 &&
        inotify_add_watch(r->inotify, dir, IN_MODIFY | IN_CREATE | IN_MOVED_TO | IN_DELETE) < 0) {
        close(r->inotify);
        r->inotify = -1;
    }
    int64_t lines = q ? q->lines : -1;
    if (lines == 0) {
        int fd = open_name(r->dirfd, 0);
        if (fd >= 0) {
            set_current(r, fd);
            lseek(fd, 0, SEEK_END);
        }
    } else if (lines > 0) {
        start_at_tail(r, lines);
    } else {
        int oldest;
        find_file(r->dirfd, 0, 0, &oldest);
        int fd = oldest >= 0 ? open_name(r->dirfd, oldest) : -1;
        if (fd >= 0)
            set_current(r, fd);
    }
    *out = r;
    return 0;
}

/* Moves the complete lines of pending that are wanted to out, up to about
 * max_bytes of out. Returns whether it stopped because out is full. */
static bool take_lines(struct joblog_reader *r, struct buf *out, size_t start_len, size_t max_bytes)
{
    size_t at = 0;
    bool full = false;
    while (at < r->pending.len) {
        if (out->len - start_len >= max_bytes) {
            full = true;
            break;
        }
        const char *p = r->pending.p + at;
        const char *nl = memchr(p, '\n', r->pending.len - at);
        if (!nl)
            break;
        size_t len = (size_t)(nl - p);
        if (line_wanted((struct str){p, len}, r->streams))
            buf_append(out, p, len + 1);
        at += len + 1;
    }
    buf_consume(&r->pending, at);
    if (r->pending.len > MAX_STORED_LINE)
        buf_reset(&r->pending);
    return full;
}

int joblog_reader_next(struct joblog_reader *r, struct buf *out, size_t max_bytes)
{
    size_t start_len = out->len;
    for (;;) {
        if (take_lines(r, out, start_len, max_bytes))
            return 1;
        if (r->fd < 0) {
            int fd = open_name(r->dirfd, 0);
            if (fd < 0)
                return out->len > start_len;
            set_current(r, fd);
        }
        buf_grow(&r->pending, READ_CHUNK);
        ssize_t n = read(r->fd, r->pending.p + r->pending.len, READ_CHUNK);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return out->len > start_len ? 1 : -errno;
        if (n > 0) {
            r->pending.len += (size_t)n;
            r->pending.p[r->pending.len] = '\0';
            continue;
        }
        /* The end of this file. When the file after it is known, this one
         * was finished before that was found, so it has now been read whole. */
        if (r->next_fd >= 0) {
            set_current(r, r->next_fd);
            r->next_fd = -1;
            continue;
        }
        if (!find_next(r))
            return out->len > start_len;
    }
}

int joblog_reader_wait(struct joblog_reader *r, int timeout_ms)
{
    if (r->inotify < 0) {
        struct timespec ts = {0, (timeout_ms < 100 ? timeout_ms : 100) * 1000000L};
        nanosleep(&ts, NULL);
        return 0;
    }
    struct pollfd p = {.fd = r->inotify, .events = POLLIN};
    int n = poll(&p, 1, timeout_ms);
    if (n <= 0)
        return PIER_ETIMEOUT;
    char events[4096];
    while (read(r->inotify, events, sizeof(events)) > 0)
        ;
    return 0;
}

void joblog_reader_close(struct joblog_reader *r)
{
    if (!r)
        return;
    if (r->fd >= 0)
        close(r->fd);
    if (r->next_fd >= 0)
        close(r->next_fd);
    if (r->inotify >= 0)
        close(r->inotify);
    if (r->dirfd >= 0)
        close(r->dirfd);
    buf_free(&r->pending);
    free(r);
}
