/* slug: pierslug's own pieces (docs/build.md), shared by its files and
 * nothing else. pierslug runs inside job containers, links libc and jansson
 * only, and talks to the network through the stack's curl and tar, run as
 * child processes with their output streamed, never held. */
#ifndef PIER_BUILD_SLUG_H
#define PIER_BUILD_SLUG_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "lib/buf.h"
#include "lib/err.h"
#include "lib/fs.h"

/* The line that carries the build's result to the git receiver (spec6). */
#define SLUG_RESULT_MARKER "pier-build-result: "

/* Entry points: `pierslug build` and `pierslug run ARG...`. They return the
 * process's exit status (run returns only when it could not exec). */
int slugbuilder_main(int argc, char **argv);
int slugrunner_main(int argc, char **argv);

/* ---- output (out.c): everything pierslug prints goes to fd 1 unbuffered,
 * so the pusher sees each line as it is made. A line a buildpack leaves
 * unfinished is ended before pierslug's next message. ---- */

/* "-----> " + message, a headline. */
void out_head(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* "       " + message, a detail. */
void out_detail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* " !     " + message, an error or a warning. */
void out_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Bytes of a child's output as they are; a line starting with
 * SLUG_RESULT_MARKER gets a space first, so only pierslug can say it. The
 * start of a line that may still become the marker is held back until the
 * line shows which it is. */
void out_child(const char *data, size_t len);
/* The result line: SLUG_RESULT_MARKER, json (any length) and a newline. */
void out_result(const char *json);

/* ---- small helpers (util.c) ---- */

/* "dir/name", a new string. */
char *slug_path(const char *dir, const char *name);
/* Appends s in single quotes for bash. */
void slug_shell_quote(struct buf *b, const char *s);
/* Whether s[0..len) is an environment variable name: [A-Za-z_][A-Za-z0-9_]*. */
bool slug_valid_env_name(const char *s, size_t len);
/* Deletes everything in dir, leaving dir. */
int slug_empty_dir(const char *dir, struct pier_err *err);

/* ---- child processes (proc.c) ---- */

struct proc_opts {
    const char *const *argv; /* argv[0] is looked up on PATH */
    const char *cwd;         /* NULL: pierslug's own */
    int in, out, err;        /* its fds 0, 1, 2; -1: /dev/null */
    bool new_group;          /* its own process group (to kill all it starts) */
    bool tool; /* pierslug's own helper (curl, tar, git, cp): see proc_set_tool_home */
};

/* The private HOME of pierslug's own helpers (curl, tar, git, cp, rm):
 * they run with HOME=dir and GIT_CONFIG_GLOBAL=dir/gitconfig (which this
 * writes: safe.directory=*, so a local git repository owned by another
 * user can be cloned), GIT_CONFIG_NOSYSTEM=1, and without the variables
 * that would configure them from the job's environment (CURL_HOME,
 * XDG_CONFIG_HOME, TAR_OPTIONS, GZIP), so that an app's .curlrc or
 * .gitconfig in /app does not apply to them. dir is made 0700. */
int proc_set_tool_home(const char *dir, struct pier_err *err);

/* Forks and execs; *pid is the child. A child that cannot exec exits 127
 * after saying why on its fd 2. */
int proc_spawn(const struct proc_opts *o, pid_t *pid, struct pier_err *err);

/* Waits for pid; returns its wait status. */
int proc_wait(pid_t pid);

/* "exit 3", "killed by signal 9" for a wait status. */
const char *proc_status_str(int status, char *buf, size_t size);

/* An anonymous file (memfd) for a child's output that is read afterwards. */
int proc_memfd(const char *name, struct pier_err *err);

/* The last non-empty line of what fd (a memfd) holds, up to 300 bytes, for
 * a message; "" when empty. */
void proc_last_line(int fd, char *out, size_t size);

/* Reads all of a memfd into b, at most max bytes; -EFBIG past that. */
int proc_read_all(int fd, struct buf *b, size_t max);

/* One program run by proc_run: what to run, and (filled in) how it ended. */
struct proc_run {
    const char *const *argv;
    const char *cwd;     /* NULL: pierslug's own */
    int timeout_s;       /* 0: none */
    struct buf *capture; /* NULL: stdout streamed too */
    size_t capture_max;
    bool tool;      /* as in struct proc_opts */
    int status;     /* out: its wait status */
    bool timed_out; /* out: it was killed at the time limit */
};

/* Runs r->argv (in its own process group) streaming its stdout and stderr
 * to out_child line by line, or, with capture, its stdout into capture (at
 * most capture_max bytes; more: -EFBIG) and only its stderr streamed.
 * After timeout_s seconds the whole group is killed. When the child has
 * ended, whatever it left running is killed too: as the container's PID 1
 * (the build job), every other process of the job, so that one that left
 * the group (setsid) goes as well; children orphaned while it runs are
 * reaped. Returns 0, or a negative errno when it could not be started or
 * read. */
int proc_run(struct proc_run *r, struct pier_err *err);

/* Kills what proc_run is running (as PID 1: every other process of the
 * job). Async-signal-safe. */
void proc_stop_running(void);

/* ---- the network, through curl and tar ---- */

/* url as messages show it: without its query (signatures) or user info. */
const char *slug_url_shown(const char *url, char *buf, size_t size);

/* curl GET url | tar -x[z] -C dir. PIER_ENOTFOUND (quietly) when the
 * server answers 404; PIER_EUNAVAIL naming the URL when it cannot be
 * fetched; PIER_EINVAL when tar cannot unpack it. */
int slug_fetch_tar(const char *url, const char *dir, bool gzip, struct pier_err *err);

struct slug_upload {
    int64_t size;        /* bytes sent */
    char sha256[64 + 1]; /* their SHA-256, hex */
};

/* tar -czf - -C dir . | (hash, count) | curl PUT url. More than max bytes
 * (0: no limit) stops it with PIER_ETOOBIG before the upload completes.
 * When the server answers JSON with a "sha256" that differs from ours, that
 * is PIER_EPROTO. */
int slug_upload_dir(const char *dir, const char *url, int64_t max, struct slug_upload *res,
                    struct pier_err *err);

/* ---- buildpacks (buildpack.c) ---- */

struct buildpack {
    char *url;  /* as given (URL, path), or the shipped one's name */
    char *dir;  /* where it is on disk */
    char *name; /* what bin/detect said (or url) */
};

struct build_ctx {
    const char *app_dir;     /* /app */
    const char *cache_dir;   /* /tmp/cache */
    const char *env_dir;     /* /tmp/env */
    const char *work_dir;    /* /tmp/buildpacks: fetched buildpacks */
    const char *shipped_dir; /* /.pier/buildpacks */
    int compile_timeout;     /* seconds */
};

/* Fetches the buildpack at url into ctx->work_dir/<n> (or uses a writable
 * local directory in place). url is an absolute path (a buildpack
 * directory, or a git repository, with an optional #ref), an
 * http/https/file URL ending in .tgz or .tar.gz, an http/https/git/ssh/
 * file git URL with an optional #ref, or the name of a shipped buildpack
 * (ctx->shipped_dir/NAME); anything else is refused (PIER_EINVAL) with a
 * message listing those forms and the shipped names. Prints what it
 * does. */
int buildpack_fetch(const struct build_ctx *ctx, const char *url, int n, struct buildpack *bp,
                    struct pier_err *err);

/* Runs bin/detect BUILD_DIR. 1: it applies (bp->name set from its output),
 * 0: it does not, < 0: it could not be run. */
int buildpack_detect(const struct build_ctx *ctx, struct buildpack *bp, struct pier_err *err);

/* Runs bin/compile BUILD_DIR CACHE_DIR ENV_DIR with cwd BUILD_DIR, under
 * the export files of the buildpacks before it (exports, n_exports), its
 * output streamed. PIER_EINVAL "compile failed (exit N)" or PIER_ETIMEOUT. */
int buildpack_compile(const struct build_ctx *ctx, const struct buildpack *bp,
                      const char *const *exports, size_t n_exports, struct pier_err *err);

/* Runs bin/release BUILD_DIR and parses its YAML (relyaml.h) into *out (a
 * new object; {} when it has no bin/release). */
int buildpack_release(const struct build_ctx *ctx, const struct buildpack *bp, json_t **out,
                      struct pier_err *err);

void buildpack_clear(struct buildpack *bp);

/* The shipped buildpacks' names, in the order ctx->shipped_dir/order lists
 * them (one a line, '#' comments; names with '/' skipped). Sets names[]
 * (at most max) to strings in text, which the caller frees; returns how
 * many. */
size_t buildpack_shipped_names(const struct build_ctx *ctx, struct buf *text, char **names,
                               size_t max);

#endif
