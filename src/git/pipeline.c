/* pipeline: the pusher's lines, the controller and blobstore calls, the
 * source upload, the build job and the repository's archive; deploy.c
 * makes the release and deploys it.
 *
 * The build runs as an attached one-off job of the app, without a release
 * (the controller's extension: the host's default stack, only the job's
 * own env). It is given the app's config vars by name, so a build of an
 * app with a release sees them as Heroku's do (ENV_DIR), and never the
 * release's slug in /app, which a job of the release would get. Its output
 * is relayed line by line, except the line holding the result. Nothing is
 * written to the controller before the build succeeded. */
#include "git/pipeline.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "host/attach.h"
#include "lib/attachc.h"
#include "lib/blobsig.h"
#include "lib/cleanup.h"
#include "lib/clock.h"
#include "lib/jsonx.h"
#include "lib/subproc.h"

#define RESULT_PREFIX "pier-build-result: "
#define BUILD_MEMORY 2147483648LL
#define STACK_NAME "pier-bookworm"
/* The most a slug (the builder's own limit, docs/build.md) and a build
 * cache may be: what their signed upload URLs allow. */
#define SLUG_MAX (500LL * 1000 * 1000)
#define CACHE_MAX (1LL << 30)
/* Signed upload URLs outlive the build by this much. */
#define SIGNED_SLACK_S 600
#define CTL_TIMEOUT_MS 30000
/* The most of one line of the build's output the hook holds (the result
 * line, or a line that may become it): more is a broken build. */
#define HELD_LINE_MAX (1 << 20)
/* The most read from the build's session before it is decoded. */
#define READ_AHEAD_MAX (2 << 20)
/* The most of the build's error frames kept for the message. */
#define WHY_MAX 4096
/* How long stopping a build job keeps asking a controller that does not
 * answer. */
#define STOP_TRY_MS 20000

/* Uses a result that is of no consequence (glibc marks some
 * warn_unused_result, which a (void) cast does not silence). */
static inline void discard(ssize_t r)
{
    (void)r;
}

/* ---- output ---- */

static volatile sig_atomic_t stop_signal;
static int sig_pipe[2] = {-1, -1};

static void on_signal(int sig)
{
    int saved = errno;
    stop_signal = sig;
    if (sig_pipe[1] >= 0)
        discard(write(sig_pipe[1], "x", 1)); /* full: already woken */
    errno = saved;
}

void pipeline_signals(void)
{
    if (sig_pipe[0] < 0 && pipe2(sig_pipe, O_CLOEXEC | O_NONBLOCK) < 0)
        sig_pipe[0] = sig_pipe[1] = -1;
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    const int sigs[] = {SIGTERM, SIGINT, SIGHUP, SIGPIPE};
    for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
        sigaction(sigs[i], &sa, NULL);
}

bool pipeline_stopped(void)
{
    return stop_signal != 0;
}

/* Whether the last byte the pusher got ended a line. */
static bool mid_line;

/* One line to the pusher (git relays it as "remote: ..."). A pusher who is
 * gone (EPIPE) stops the pipeline as a signal does. */
static void vline(const char *prefix, const char *fmt, va_list ap)
{
    if (mid_line)
        fputc('\n', stdout);
    mid_line = false;
    fputs(prefix, stdout);
    vfprintf(stdout, fmt, ap);
    fputc('\n', stdout);
    if (fflush(stdout) != 0 && !stop_signal)
        stop_signal = SIGPIPE;
}

void pipe_say(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vline("-----> ", fmt, ap);
    va_end(ap);
}

void pipe_detail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vline("       ", fmt, ap);
    va_end(ap);
}

int pipe_fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vline("!      ", fmt, ap);
    va_end(ap);
    return 1;
}

/* Raw bytes of the build's output. */
static void out_raw(const char *p, size_t n)
{
    if (n == 0)
        return;
    if (fwrite(p, 1, n, stdout) != n && !stop_signal)
        stop_signal = SIGPIPE;
    mid_line = p[n - 1] != '\n';
    if (fflush(stdout) != 0 && !stop_signal)
        stop_signal = SIGPIPE;
}

/* ---- the controller ---- */

static int flynn_error(const char *what, long status, const struct buf *body, struct pier_err *err)
{
    cleanup_json json_t *j = NULL;
    const char *msg = NULL;
    if (body->len > 0 && jsonx_parse_object(body->p, body->len, &j, NULL) == 0)
        msg = json_string_value(json_object_get(j, "message"));
    if (status == 404 && !msg)
        return err_set(err, PIER_ENOTFOUND, "%s: not found", what);
    int code = status == 400 || status == 409 ? PIER_EINVAL
               : status == 503                ? PIER_EUNAVAIL
                                              : PIER_EPROTO;
    return err_set(err, code, "%s answered %ld%s%s", what, status, msg ? ": " : "", msg ? msg : "");
}

int pipe_ctl_status(struct pipeline *p, const char *method, const char *path, const json_t *body,
                    json_t **out, long *status, struct pier_err *err)
{
    if (out)
        *out = NULL;
    if (status)
        *status = 0;
    cleanup_buf struct buf url = BUF_INIT, name = BUF_INIT, text = BUF_INIT, what = BUF_INIT;
    buf_printf(&url, "%s%s", p->controller, path);
    buf_printf(&name, "the controller at %s", p->controller);
    buf_printf(&what, "the controller: %s %s", method, url.p);
    if (body)
        jsonx_dump(&text, body);
    const char *headers[] = {p->auth.p, "Content-Type: application/json",
                             "Accept: application/json", PIPE_USER_AGENT, NULL};
    struct httpc_req req = {
        .method = method,
        .url = url.p,
        .name = name.p,
        .headers = headers,
        .body = body ? text.p : NULL,
        .body_len = text.len,
        .timeout_ms = CTL_TIMEOUT_MS,
    };
    struct httpc_resp resp = {0};
    int rc = httpc_do(p->h, &req, &resp, err);
    if (rc < 0)
        return rc;
    if (status)
        *status = resp.status;
    if (resp.status != 200) {
        rc = flynn_error(what.p, resp.status, &resp.body, err);
    } else if (out && resp.body.len > 0 && jsonx_parse(resp.body.p, resp.body.len, out, NULL) < 0) {
        rc = err_set(err, PIER_EPROTO, "%s: the answer is not JSON", what.p);
    }
    httpc_resp_release(&resp);
    return rc;
}

int pipe_ctl(struct pipe_run *r, const char *method, const char *path, const json_t *body,
             json_t **out, struct pier_err *err)
{
    return pipe_ctl_status(r->p, method, path, body, out, NULL, err);
}

/* ---- the blobstore ---- */

/* A command whose standard output is uploaded as it comes. */
struct upload {
    int fd;
    pid_t pid;
    int exit_ok; /* the highest exit status that counts as success */
    bool failed; /* it exited otherwise: the upload was cut */
    int status;
    size_t sent;
};

/* Reaps the command (once). */
static void upload_reap(struct upload *u)
{
    if (u->pid <= 0)
        return;
    u->status = subproc_wait(u->pid);
    u->pid = 0;
    u->failed = !(WIFEXITED(u->status) && WEXITSTATUS(u->status) <= u->exit_ok);
}

static size_t upload_read(char *dst, size_t size, size_t n, void *ud)
{
    struct upload *u = ud;
    for (;;) {
        if (stop_signal)
            return CURL_READFUNC_ABORT;
        ssize_t got = read(u->fd, dst, size * n);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            return CURL_READFUNC_ABORT;
        if (got == 0) {
            /* The command closed its output: it is done, and its status
             * decides whether the body ends (the blob is stored) or is
             * cut short (nothing is). */
            upload_reap(u);
            return u->failed ? CURL_READFUNC_ABORT : 0;
        }
        u->sent += (size_t)got;
        return (size_t)got;
    }
}

static size_t collect(char *p, size_t size, size_t n, void *ud)
{
    struct buf *b = ud;
    if (b->len < 64 * 1024)
        buf_append(b, p, size * n);
    return size * n;
}

/* PUTs what u->fd gives to url, as it comes (chunked), with the key. */
static int put_stream(struct pipeline *p, const char *url, struct upload *u, struct pier_err *err)
{
    cleanup_buf struct buf answer = BUF_INIT;
    struct curl_slist *hs = NULL;
    hs = curl_slist_append(hs, p->auth.p);
    hs = curl_slist_append(hs, "Content-Type: application/x-tar");
    hs = curl_slist_append(hs, "Expect:");
    CURL *c = curl_easy_init();
    if (!c)
        abort();
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(c, CURLOPT_READFUNCTION, upload_read);
    curl_easy_setopt(c, CURLOPT_READDATA, u);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &answer);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hs);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
    /* a stalled upload (either side) ends rather than hang the push */
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, 60L);
    CURLcode cc = curl_easy_perform(c);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(c);
    curl_slist_free_all(hs);
    if (u->failed)
        return 0; /* the caller names the command that failed */
    if (cc != CURLE_OK)
        return err_set(err, cc == CURLE_COULDNT_CONNECT ? -ECONNREFUSED : PIER_EUNAVAIL,
                       "the blobstore: PUT %s: %s", url,
                       stop_signal ? "the push was cancelled" : curl_easy_strerror(cc));
    if (status != 200) {
        cleanup_buf struct buf what = BUF_INIT;
        buf_printf(&what, "the blobstore: PUT %s", url);
        return flynn_error(what.p, status, &answer, err);
    }
    return 0;
}

/* Runs argv (in the current directory) with its standard output streamed
 * to BLOBSTORE<path>; an exit status above exit_ok cuts the upload short,
 * so nothing is stored. *size gets the bytes sent. */
static int put_command(struct pipeline *p, char *const argv[], int exit_ok, const char *path,
                       size_t *size, struct pier_err *err)
{
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) < 0)
        return err_set(err, -errno, "pipe: %s", strerror(errno));
    /* its errors go to the pusher */
    const struct subproc sp = {
        .argv = argv, .in = SUBPROC_DEVNULL, .out = fds[1], .err = SUBPROC_INHERIT};
    struct upload u = {.fd = fds[0], .exit_ok = exit_ok};
    int src = subproc_start(&sp, &u.pid, err);
    close(fds[1]);
    if (src < 0) {
        close(fds[0]);
        return src;
    }
    cleanup_buf struct buf url = BUF_INIT;
    buf_printf(&url, "%s%s", p->blobstore, path);
    int rc = put_stream(p, url.p, &u, err);
    close(fds[0]); /* the command gets EPIPE if the upload stopped early */
    upload_reap(&u);
    *size = u.sent;
    if (rc == 0 && u.failed)
        rc = err_set(err, PIER_EINTERNAL, "%s %s failed (status %d): nothing was stored", argv[0],
                     argv[1], u.status);
    return rc;
}

/* Streams `git archive --format=tar REV` to the blobstore. */
static int upload_source(struct pipe_run *r, size_t *size, struct pier_err *err)
{
    char *argv[] = {"git", "archive", "--format=tar", (char *)r->rev, NULL};
    cleanup_buf struct buf path = BUF_INIT;
    buf_printf(&path, "/sources/%s/%s.tar", r->p->app_id, r->build_id);
    return put_command(r->p, argv, 0, path.p, size, err);
}

int pipeline_archive_repo(struct pipeline *p, size_t *size, struct pier_err *err)
{
    /* Quarantine directories hold the objects of pushes under way, not yet
     * part of the repository. Status 1 is GNU tar's "a file changed as we
     * read it": a reflog another push appended to, whose own post-receive
     * sends the repository again afterwards. */
    char *argv[] = {"tar",
                    "-c",
                    "-f",
                    "-",
                    "--warning=no-file-changed",
                    "--exclude=./objects/incoming-*",
                    "--exclude=./objects/tmp_objdir-*",
                    ".",
                    NULL};
    cleanup_buf struct buf path = BUF_INIT;
    buf_printf(&path, "/repos/%s.tar", p->app_id);
    return put_command(p, argv, 1, path.p, size, err);
}

/* DELETE of a blob, best effort (the source after the build, a slug no
 * release will use). */
static void blob_delete(struct pipe_run *r, const char *path)
{
    cleanup_buf struct buf url = BUF_INIT;
    buf_printf(&url, "%s%s", r->p->blobstore, path);
    const char *headers[] = {r->p->auth.p, PIPE_USER_AGENT, NULL};
    struct httpc_req req = {
        .method = "DELETE", .url = url.p, .headers = headers, .timeout_ms = 10000};
    struct httpc_resp resp = {0};
    if (httpc_do(r->p->h, &req, &resp, NULL) == 0)
        httpc_resp_release(&resp);
}

/* ---- the build job ---- */

/* The build job's own variables; a config var of one of these names is
 * left out (the build's value wins, and is no config var). */
static const char *const BUILD_VARS[] = {
    "SOURCE_URL",          "SLUG_URL", "CACHE_URL",        "CACHE_PUT_URL",
    "SOURCE_VERSION",      "STACK",    "PIER_CONFIG_VARS", "PIER_COMPILE_TIMEOUT",
    "PIER_SLUG_MAX_BYTES", NULL,
};
/* Of those, the ones a test (or an operator) may set in the receiver's
 * environment to bound the builder: passed on as they are. */
static const char *const PASSED_VARS[] = {"PIER_COMPILE_TIMEOUT", "PIER_SLUG_MAX_BYTES", NULL};

static bool build_var(const char *name)
{
    for (const char *const *b = BUILD_VARS; *b; b++)
        if (strcmp(*b, name) == 0)
            return true;
    return false;
}

/* env[name] = a URL of the blobstore for method on path, signed, valid
 * until the build's end (and some); a PUT of at most max bytes (0: the
 * blobstore's limit), once: never over a blob that exists. */
static void signed_url(struct pipe_run *r, json_t *env, const char *name, const char *method,
                       const char *path, int64_t max, bool once)
{
    int64_t now = (int64_t)time(NULL);
    int64_t ttl = (int64_t)r->p->build_timeout + SIGNED_SLACK_S;
    char *url = blobsig_url(r->p->key, r->p->blobstore, method, path, now, ttl, max, once);
    json_object_set_new(env, name, json_string(url));
    free(url);
}

static json_t *build_env(struct pipe_run *r)
{
    json_t *env = json_object();
    cleanup_buf struct buf names = BUF_INIT, path = BUF_INIT;
    const json_t *cfg = json_object_get(r->prev, "env");
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)cfg, k, v)
    {
        if (!json_is_string(v) || build_var(k))
            continue;
        json_object_set(env, k, v);
        buf_printf(&names, "%s%s", names.len ? "," : "", k);
    }
    /* The source and the cache are the app's code: only signed URLs (or
     * the key) read them (docs/blobstore.md). */
    buf_printf(&path, "/sources/%s/%s.tar", r->p->app_id, r->build_id);
    signed_url(r, env, "SOURCE_URL", "GET", path.p, 0, false);
    /* The slug is written once (the job cannot replace it under a release
     * made of it), at most as large as the builder allows. */
    buf_reset(&path);
    buf_printf(&path, "/slugs/%s/%s.tgz", r->p->app_id, r->build_id);
    const char *slug_max = getenv("PIER_SLUG_MAX_BYTES");
    long long max = slug_max && *slug_max ? atoll(slug_max) : 0;
    signed_url(r, env, "SLUG_URL", "PUT", path.p, max > 0 ? max : SLUG_MAX, true);
    buf_reset(&path);
    buf_printf(&path, "/caches/%s.tgz", r->p->app_id);
    signed_url(r, env, "CACHE_URL", "GET", path.p, 0, false);
    signed_url(r, env, "CACHE_PUT_URL", "PUT", path.p, CACHE_MAX, false);
    json_object_set_new(env, "SOURCE_VERSION", json_string(r->rev));
    json_object_set_new(env, "STACK", json_string(STACK_NAME));
    json_object_set_new(env, "PIER_CONFIG_VARS", json_string(names.p ? names.p : ""));
    for (const char *const *n = PASSED_VARS; *n; n++) {
        const char *val = getenv(*n);
        if (val && *val)
            json_object_set_new(env, *n, json_string(val));
    }
    return env;
}

/* The build's output, relayed line by line; the result line kept. */
struct build_out {
    struct buf line[4]; /* per stream: the part of a line not yet relayed */
    bool skip[4];       /* per stream: dropping the rest of a line too long to hold */
    bool too_long;      /* a line the hook had to hold passed HELD_LINE_MAX */
    struct buf result;  /* the JSON after RESULT_PREFIX */
};

/* Whether the n bytes at p are RESULT_PREFIX's start or start with it. */
static bool maybe_result(const char *p, size_t n)
{
    size_t plen = strlen(RESULT_PREFIX);
    return memcmp(p, RESULT_PREFIX, n < plen ? n : plen) == 0;
}

static void relay(struct build_out *o, uint8_t stream, const char *p, size_t n)
{
    size_t s = stream & 3, plen = strlen(RESULT_PREFIX);
    if (o->skip[s]) {
        const char *nl = memchr(p, '\n', n);
        if (!nl)
            return;
        o->skip[s] = false;
        n -= (size_t)(nl + 1 - p);
        p = nl + 1;
    }
    struct buf *l = &o->line[s];
    buf_append(l, p, n);
    char *nl;
    while (l->len > 0 && (nl = memchr(l->p, '\n', l->len)) != NULL) {
        size_t len = (size_t)(nl - l->p);
        if (stream == ATTACH_STDOUT && len >= plen && maybe_result(l->p, len)) {
            buf_reset(&o->result);
            if (len - plen > HELD_LINE_MAX)
                o->too_long = true;
            else
                buf_append(&o->result, l->p + plen, len - plen);
        } else {
            out_raw(l->p, len + 1);
        }
        buf_consume(l, len + 1);
    }
    /* A partial line goes out at once (progress dots), unless it may
     * still become the result line; such a one is held up to a limit. */
    if (l->len > 0 && (stream != ATTACH_STDOUT || !maybe_result(l->p, l->len))) {
        out_raw(l->p, l->len);
        buf_reset(l);
    } else if (l->len > HELD_LINE_MAX + plen) {
        o->too_long = true;
        o->skip[s] = true;
        buf_reset(l);
    }
}

static void build_out_free(struct build_out *o)
{
    for (int i = 0; i < 4; i++)
        buf_free(&o->line[i]);
    buf_free(&o->result);
}

/* Stops the build job: the one of this app whose meta names the build.
 * A controller that does not answer (one restarting broke the build's
 * session) is asked again for a while. */
static void stop_build(struct pipe_run *r)
{
    cleanup_buf struct buf path = BUF_INIT;
    buf_printf(&path, "/apps/%s/jobs", r->p->app);
    cleanup_json json_t *jobs = NULL;
    int64_t until = clock_now_ms() + STOP_TRY_MS;
    while (pipe_ctl(r, "GET", path.p, NULL, &jobs, NULL) < 0) {
        if (clock_now_ms() >= until)
            return;
        usleep(500 * 1000);
    }
    size_t i;
    json_t *j;
    json_array_foreach(jobs, i, j)
    {
        const char *b =
            json_string_value(json_object_get(json_object_get(j, "meta"), "pier.build"));
        const char *id = json_string_value(json_object_get(j, "id"));
        if (!b || !id || strcmp(b, r->build_id) != 0)
            continue;
        buf_reset(&path);
        buf_printf(&path, "/apps/%s/jobs/%s", r->p->app, id);
        pipe_ctl(r, "DELETE", path.p, NULL, NULL, NULL);
    }
}

enum build_end { BUILD_EXITED, BUILD_BROKE, BUILD_TIMEOUT, BUILD_CANCELLED };

/* Reads the session's frames until the exit status (*status). */
static enum build_end build_loop(struct pipe_run *r, struct attachc *conn, struct build_out *o,
                                 int *status, struct buf *why)
{
    struct attach_decoder dec = {0};
    int64_t deadline = clock_now_ms() + (int64_t)r->p->build_timeout * 1000;
    enum build_end end = BUILD_BROKE;
    for (;;) {
        struct pier_err err = {0};
        ssize_t got = 0;
        /* What arrived, to a bound: a fast build is decoded as it comes
         * rather than piled up. */
        while (dec.in.len < READ_AHEAD_MAX && (got = attachc_recv(conn, &dec.in, &err)) > 0)
            ;
        struct attach_frame f;
        int fr;
        while ((fr = attach_next(&dec, &f)) > 0) {
            if (f.type == ATTACH_DATA && f.stream != ATTACH_STDIN)
                relay(o, f.stream, f.data, f.len);
            else if (f.type == ATTACH_ERROR && why->len < WHY_MAX)
                buf_printf(why, "%.*s", (int)(f.len < WHY_MAX ? f.len : WHY_MAX), f.data);
            else if (f.type == ATTACH_EXIT) {
                *status = (int)f.value;
                end = BUILD_EXITED;
                goto out;
            }
        }
        if (fr < 0) {
            buf_puts(why, "the controller sent something that is not an attach frame");
            goto out;
        }
        if (got < 0) {
            if (!why->len)
                buf_puts(why,
                         got == -EPIPE ? "the controller closed the build's connection" : err.msg);
            goto out;
        }
        if (stop_signal) {
            end = BUILD_CANCELLED;
            goto out;
        }
        int64_t left = deadline - clock_now_ms();
        if (left <= 0) {
            end = BUILD_TIMEOUT;
            goto out;
        }
        if (got > 0)
            continue; /* more may wait in the client's buffers */
        struct pollfd pf[2] = {{.fd = attachc_fd(conn), .events = POLLIN},
                               {.fd = sig_pipe[0], .events = POLLIN}};
        poll(pf, 2, left > 1000 ? 1000 : (int)left);
    }
out:
    attach_decoder_free(&dec);
    return end;
}

/* Runs the build job attached; 0 with r->result set, or 1 (printed). */
static int build(struct pipe_run *r)
{
    cleanup_json json_t *body =
        json_pack("{s:[s,s],s:o,s:{s:s},s:{s:{s:I}}}", "args", "/.pier/pierslug", "build", "env",
                  build_env(r), "meta", "pier.build", r->build_id, "resources", "memory", "limit",
                  (json_int_t)BUILD_MEMORY);
    cleanup_buf struct buf text = BUF_INIT, path = BUF_INIT, why = BUF_INIT;
    jsonx_dump(&text, body);
    buf_printf(&path, "/apps/%s/jobs", r->p->app);
    const char *headers[] = {r->p->auth.p, PIPE_USER_AGENT, NULL};
    struct attachc_req req = {.base = r->p->controller,
                              .path = path.p,
                              .headers = headers,
                              .body = text.p,
                              .body_len = text.len,
                              .wait_ms = 60000};
    struct attachc *conn = NULL;
    struct pier_err err = {0};
    if (attachc_open(&req, &conn, &err) < 0)
        return pipe_fail("Cannot start the build job: %s", err.msg);
    struct build_out o = {0};
    int status = -1;
    enum build_end end = build_loop(r, conn, &o, &status, &why);
    /* A session that broke (the controller restarted) may leave the job
     * running: it is stopped too, as far as the controller can be asked. */
    if (end != BUILD_EXITED)
        stop_build(r);
    attachc_close(conn); /* the controller stops a job still running */
    /* What is left is the start of a line that may have been the result:
     * it is, or it goes out now. */
    struct buf *last = &o.line[ATTACH_STDOUT];
    if (last->len >= strlen(RESULT_PREFIX) && maybe_result(last->p, last->len)) {
        buf_reset(&o.result);
        buf_append(&o.result, last->p + strlen(RESULT_PREFIX), last->len - strlen(RESULT_PREFIX));
    } else {
        out_raw(last->p, last->len);
    }
    int rc = 1;
    if (end == BUILD_TIMEOUT)
        pipe_fail("Build timed out after %d s (PIER_BUILD_TIMEOUT): the build job was stopped",
                  r->p->build_timeout);
    else if (end == BUILD_CANCELLED)
        pipe_fail("The push was cancelled: the build job was stopped");
    else if (end == BUILD_BROKE)
        pipe_fail("The build job's session broke: %s (the job was stopped)",
                  why.p ? why.p : "no reason given");
    else if (why.len)
        pipe_fail("The build job failed: %s", why.p);
    else if (o.too_long)
        pipe_fail("The build printed a line starting with \"%s\" longer than %d MiB", RESULT_PREFIX,
                  HELD_LINE_MAX >> 20);
    else if (status == 0 && !o.result.len)
        pipe_fail("The build printed no result line (%s...)", RESULT_PREFIX);
    else if (status == 0 && jsonx_parse_object(o.result.p, o.result.len, &r->result, &err) < 0)
        pipe_fail("The build's result is not JSON: %s", err.msg);
    else if (status == 0)
        rc = 0;
    if (rc == 0 && !json_object_size(json_object_get(r->result, "process_types")))
        pipe_detail("No process types: add a Procfile (web: COMMAND) to run something");
    build_out_free(&o);
    if (rc != 0)
        pipe_fail("Build failed: the running release is unchanged");
    return rc;
}

/* ---- the whole ---- */

static void run_free(struct pipe_run *r)
{
    json_decref(r->prev);
    json_decref(r->result);
    json_decref(r->release);
}

/* Steps a-c: the source, the current release, the build. */
static int source_and_build(struct pipe_run *r)
{
    struct pier_err err = {0};
    size_t size = 0;
    pipe_say("Uploading source");
    if (upload_source(r, &size, &err) < 0)
        return pipe_fail("Cannot upload the source: %s", err.msg);
    pipe_detail("%zu KB", (size + 1023) / 1024);
    cleanup_buf struct buf path = BUF_INIT;
    buf_printf(&path, "/apps/%s/release", r->p->app);
    int rc = pipe_ctl(r, "GET", path.p, NULL, &r->prev, &err);
    if (rc < 0 && rc != PIER_ENOTFOUND)
        return pipe_fail("Cannot read the app's release: %s", err.msg);
    pipe_say("Building %s (build %.8s) ...", r->p->app, r->build_id);
    return build(r);
}

int pipeline_run(struct pipeline *p, const char *rev)
{
    struct pipe_run r = {.p = p, .rev = rev};
    uuid_new(r.build_id);
    pipe_say("Receiving push");
    pipe_detail("Blobstore: %s (%s)", p->blobstore, p->blobstore_from);
    if (p->found_controller)
        pipe_detail("Controller: %s (from discovery)", p->controller);
    cleanup_buf struct buf blob = BUF_INIT;
    int rc = source_and_build(&r);
    buf_printf(&blob, "/sources/%s/%s.tar", p->app_id, r.build_id);
    blob_delete(&r, blob.p);
    if (rc == 0)
        rc = pipe_release(&r);
    if (rc != 0 && !r.artifact_made) {
        buf_reset(&blob);
        buf_printf(&blob, "/slugs/%s/%s.tgz", p->app_id, r.build_id);
        blob_delete(&r, blob.p);
    }
    if (rc == 0)
        rc = pipe_deploy(&r);
    run_free(&r);
    return rc;
}
