/* joblog: a job's log files, written by its shim and read by the agent.
 *
 * One line per output line, in <job dir>/log:
 *   2026-11-25T16:54:52.123456Z stdout hello world
 * (RFC 3339 UTC to the microsecond, the stream name, one space, the bytes of
 * the line without its newline). A line longer than JOBLOG_MAX_LINE is split;
 * a partial line (no newline yet) is written when JOBLOG_FLUSH_MS pass
 * without more output, or when the stream ends. Carriage returns before a
 * newline are dropped (TTY output). When log reaches max_bytes it is renamed
 * to log.1 (log.1 to log.2, ...) and a new one begun; files beyond
 * max_files are deleted. Files stay after the job ends, until the agent
 * removes the job's directory. */
#ifndef PIER_HOST_JOBLOG_H
#define PIER_HOST_JOBLOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/buf.h"
#include "lib/err.h"

#define JOBLOG_MAX_LINE 10000
#define JOBLOG_FLUSH_MS 200
#define JOBLOG_DEFAULT_MAX_BYTES (10 << 20)
#define JOBLOG_DEFAULT_MAX_FILES 3

enum joblog_stream { JOBLOG_STDOUT = 1, JOBLOG_STDERR = 2 };

/* --- writing (the shim) --- */
struct joblog_writer;
/* Opens (appending to) <dir>/log. max_bytes/max_files 0: the defaults. */
int joblog_writer_open(const char *dir, size_t max_bytes, int max_files, struct joblog_writer **out,
                       struct pier_err *err);
/* Takes n bytes of a stream's output; writes the complete lines. */
void joblog_write(struct joblog_writer *w, enum joblog_stream s, const void *data, size_t n);
/* Writes partial lines older than JOBLOG_FLUSH_MS (all of them when force). */
void joblog_flush(struct joblog_writer *w, bool force);
/* Milliseconds until a partial line is due (-1: none pending): a poll timeout. */
int joblog_flush_due_ms(const struct joblog_writer *w);
/* Flushes everything and closes. NULL allowed. */
void joblog_writer_close(struct joblog_writer *w);

/* --- reading (the agent) --- */
struct joblog_line {
    struct str ts;     /* "2026-11-25T16:54:52.123456Z" */
    struct str stream; /* "stdout" or "stderr" */
    struct str msg;    /* the line, without newline */
};
/* Splits one stored line (without its newline). -1 for a malformed one. */
int joblog_parse_line(struct str line, struct joblog_line *out);

/* Which lines a reader wants. */
struct joblog_query {
    int64_t lines; /* the last N lines (across rotated files); < 0: all */
    int streams;   /* bitmask of 1 << JOBLOG_STDOUT | 1 << JOBLOG_STDERR; 0: both */
};
/* A reader: first the last q.lines lines, then, for a follower, each line as
 * it is written, across rotations. */
struct joblog_reader;
int joblog_reader_open(const char *dir, const struct joblog_query *q, struct joblog_reader **out,
                       struct pier_err *err);
/* Appends complete stored lines (each with its newline) to out, at most
 * about max_bytes. Returns 1 when it appended something, 0 when nothing is
 * there now (call again later, or wait: joblog_reader_wait), or a negative
 * error. */
int joblog_reader_next(struct joblog_reader *r, struct buf *out, size_t max_bytes);
/* Waits up to timeout_ms for the log to grow (inotify). 0 when it may have,
 * PIER_ETIMEOUT when not. */
int joblog_reader_wait(struct joblog_reader *r, int timeout_ms);
void joblog_reader_close(struct joblog_reader *r);

#endif
