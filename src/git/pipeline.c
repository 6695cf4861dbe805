/* pipeline: the source upload, the build job, the artifact and the release;
 * deploy.c does the rest.
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
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "host/attach.h"
#include "lib/attachc.h"
#include "lib/base64.h"
#include "lib/blobsig.h"
#include "lib/cleanup.h"
#include "lib/clock.h"
#include "lib/jsonx.h"

extern char **environ;

#define RESULT_PREFIX "pier-build-result: "
#define BUILD_MEMORY 2147483648LL
#define STACK_NAME "pier-bookworm"
/* Signed upload URLs outlive the build by this much. */
#define SIGNED_SLACK_S 600
#define CTL_TIMEOUT_MS 30000

/* ---- output ---- */

static volatile sig_atomic_t stop_signal;
static int sig_pipe[2] = {-1, -1};

static void on_signal(int sig)
{
    int saved = errno;
    stop_signal = sig;
    if (sig_pipe[1] >= 0 && write(sig_pipe[1], "x", 1) < 0) { /* full: already woken */
    }
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

int pipe_ctl(struct pipe_run *r, const char *method, const char *path, const json_t *body,
             json_t **out, struct pier_err *err)
{
    if (out)
        *out = NULL;
    cleanup_buf struct buf url = BUF_INIT, name = BUF_INIT, text = BUF_INIT, what = BUF_INIT;
    buf_printf(&url, "%s%s", r->p->controller, path);
    buf_printf(&name, "the controller at %s", r->p->controller);
    buf_printf(&what, "the controller: %s %s", method, url.p);
    if (body)
        jsonx_dump(&text, body);
    const char *headers[] = {r->auth.p, "Content-Type: application/json",
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
    int rc = httpc_do(r->h, &req, &resp, err);
    if (rc < 0)
        return rc;
    if (resp.status != 200) {
        rc = flynn_error(what.p, resp.status, &resp.body, err);
    } else if (out && resp.body.len > 0 && jsonx_parse(resp.body.p, resp.body.len, out, NULL) < 0) {
        rc = err_set(err, PIER_EPROTO, "%s: the answer is not JSON", what.p);
    }
    httpc_resp_release(&resp);
    return rc;
}

/* ---- the source ---- */

struct upload {
    int fd;
    size_t sent;
};

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

/* PUTs what fd gives to url, as it comes (chunked), with the cluster key. */
static int put_stream(struct pipe_run *r, const char *url, int fd, size_t *sent,
                      struct pier_err *err)
{
    struct upload u = {.fd = fd};
    cleanup_buf struct buf answer = BUF_INIT;
    struct curl_slist *hs = NULL;
    hs = curl_slist_append(hs, r->auth.p);
    hs = curl_slist_append(hs, "Content-Type: application/x-tar");
    hs = curl_slist_append(hs, "Expect:");
    CURL *c = curl_easy_init();
    if (!c)
        abort();
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(c, CURLOPT_READFUNCTION, upload_read);
    curl_easy_setopt(c, CURLOPT_READDATA, &u);
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
    *sent = u.sent;
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

/* Streams `git archive --format=tar REV` to the blobstore. */
static int upload_source(struct pipe_run *r, size_t *size, struct pier_err *err)
{
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) < 0)
        return err_set(err, -errno, "pipe: %s", strerror(errno));
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fds[1], STDOUT_FILENO);
    char *argv[] = {"git", "archive", "--format=tar", (char *)r->rev, NULL};
    pid_t pid;
    int src = posix_spawnp(&pid, "git", &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(fds[1]);
    if (src != 0) {
        close(fds[0]);
        return err_set(err, -src, "cannot run git archive: %s", strerror(src));
    }
    int rc = put_stream(r, r->source_url, fds[0], size, err);
    close(fds[0]); /* git gets EPIPE if the upload stopped early */
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (rc == 0 && !(WIFEXITED(status) && WEXITSTATUS(status) == 0))
        rc = err_set(err, PIER_EINTERNAL, "git archive %s failed (status %d)", r->rev, status);
    return rc;
}

/* DELETE of a blob, best effort (the source after the build, a slug no
 * release will use). */
void pipe_blob_delete(struct pipe_run *r, const char *path)
{
    cleanup_buf struct buf url = BUF_INIT;
    buf_printf(&url, "%s%s", r->p->blobstore, path);
    const char *headers[] = {r->auth.p, PIPE_USER_AGENT, NULL};
    struct httpc_req req = {
        .method = "DELETE", .url = url.p, .headers = headers, .timeout_ms = 10000};
    struct httpc_resp resp = {0};
    if (httpc_do(r->h, &req, &resp, NULL) == 0)
        httpc_resp_release(&resp);
}

/* ---- the build job ---- */

/* A JSON string of s, which is freed. */
static json_t *string_taken(char *s)
{
    json_t *j = json_string(s);
    free(s);
    return j;
}

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

static json_t *build_env(struct pipe_run *r)
{
    int64_t now = (int64_t)time(NULL);
    int64_t ttl = (int64_t)r->p->build_timeout + SIGNED_SLACK_S;
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
    json_object_set_new(env, "SOURCE_URL", json_string(r->source_url));
    buf_printf(&path, "/slugs/%s/%s.tgz", r->p->app, r->build_id);
    json_object_set_new(
        env, "SLUG_URL",
        string_taken(blobsig_url(r->p->key, r->p->blobstore, "PUT", path.p, now, ttl)));
    buf_reset(&path);
    buf_printf(&path, "/caches/%s.tgz", r->p->app);
    cleanup_buf struct buf cache = BUF_INIT;
    buf_printf(&cache, "%s%s", r->p->blobstore, path.p);
    json_object_set_new(env, "CACHE_URL", json_string(cache.p));
    json_object_set_new(
        env, "CACHE_PUT_URL",
        string_taken(blobsig_url(r->p->key, r->p->blobstore, "PUT", path.p, now, ttl)));
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
    struct buf result;  /* the JSON after RESULT_PREFIX */
};

static void relay(struct build_out *o, uint8_t stream, const char *p, size_t n)
{
    struct buf *l = &o->line[stream & 3];
    buf_append(l, p, n);
    char *nl;
    while (l->len > 0 && (nl = memchr(l->p, '\n', l->len)) != NULL) {
        size_t len = (size_t)(nl - l->p);
        if (stream == ATTACH_STDOUT && len >= strlen(RESULT_PREFIX) &&
            memcmp(l->p, RESULT_PREFIX, strlen(RESULT_PREFIX)) == 0) {
            buf_reset(&o->result);
            buf_append(&o->result, l->p + strlen(RESULT_PREFIX), len - strlen(RESULT_PREFIX));
        } else {
            out_raw(l->p, len + 1);
        }
        buf_consume(l, len + 1);
    }
    /* A partial line goes out at once (progress dots), unless it may
     * still become the result line. */
    size_t cmp = l->len < strlen(RESULT_PREFIX) ? l->len : strlen(RESULT_PREFIX);
    if (l->len > 0 && (stream != ATTACH_STDOUT || memcmp(l->p, RESULT_PREFIX, cmp) != 0)) {
        out_raw(l->p, l->len);
        buf_reset(l);
    }
}

static void build_out_free(struct build_out *o)
{
    for (int i = 0; i < 4; i++)
        buf_free(&o->line[i]);
    buf_free(&o->result);
}

/* Stops the build job: the one of this app whose meta names the build. */
static void stop_build(struct pipe_run *r)
{
    cleanup_buf struct buf path = BUF_INIT;
    buf_printf(&path, "/apps/%s/jobs", r->p->app);
    cleanup_json json_t *jobs = NULL;
    if (pipe_ctl(r, "GET", path.p, NULL, &jobs, NULL) < 0)
        return;
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
        ssize_t got;
        while ((got = attachc_recv(conn, &dec.in, &err)) > 0)
            ;
        struct attach_frame f;
        int fr;
        while ((fr = attach_next(&dec, &f)) > 0) {
            if (f.type == ATTACH_DATA && f.stream != ATTACH_STDIN)
                relay(o, f.stream, f.data, f.len);
            else if (f.type == ATTACH_ERROR)
                buf_printf(why, "%.*s", (int)f.len, f.data);
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
    const char *headers[] = {r->auth.p, PIPE_USER_AGENT, NULL};
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
    if (end == BUILD_TIMEOUT || end == BUILD_CANCELLED)
        stop_build(r);
    attachc_close(conn); /* the controller stops a job still running */
    /* What is left is the start of a line that may have been the result:
     * it is, or it goes out now. */
    struct buf *last = &o.line[ATTACH_STDOUT];
    if (last->len >= strlen(RESULT_PREFIX) &&
        memcmp(last->p, RESULT_PREFIX, strlen(RESULT_PREFIX)) == 0) {
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
        pipe_fail("The build job's session broke: %s", why.p ? why.p : "(no reason)");
    else if (why.len)
        pipe_fail("The build job failed: %s", why.p);
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

/* ---- the artifact and the release ---- */

/* The process types of the new release: each command of the build's
 * result, with the settings (resources, ports, service, check, env, ...)
 * the previous release gave a type of that name. */
static json_t *release_processes(struct pipe_run *r)
{
    json_t *procs = json_object();
    const json_t *prev = json_object_get(r->prev, "processes");
    const char *type;
    json_t *cmd;
    json_object_foreach(json_object_get(r->result, "process_types"), type, cmd)
    {
        if (!json_is_string(cmd))
            continue;
        const json_t *old = json_object_get(prev, type);
        json_t *p = json_is_object(old) ? json_deep_copy(old) : json_object();
        /* A new web type gets a TCP check, as Flynn's receiver gave it:
         * discovery (and so the router) then sees a job only once it
         * listens, and the deployer moves on as soon as it does. */
        if (!old && strcmp(type, "web") == 0)
            json_object_set_new(p, "ports",
                                json_pack("[{s:i,s:s,s:{s:{s:s,s:s,s:i}}}]", "port", 0, "proto",
                                          "tcp", "service", "check", "type", "tcp", "interval",
                                          "500ms", "threshold", 2));
        json_object_del(p, "cmd");
        json_object_del(p, "entrypoint");
        json_object_set_new(p, "args", json_pack("[O]", cmd));
        json_object_set_new(procs, type, p);
    }
    return procs;
}

/* The previous release's env plus the buildpack's config_vars for names it
 * does not set (Heroku's rule: they are defaults). */
static json_t *release_env(struct pipe_run *r)
{
    const json_t *prev = json_object_get(r->prev, "env");
    json_t *env = json_is_object(prev) ? json_deep_copy(prev) : json_object();
    const char *k;
    json_t *v;
    json_object_foreach(json_object_get(r->result, "config_vars"), k, v)
    {
        if (json_object_get(env, k))
            continue;
        if (json_is_string(v)) {
            json_object_set(env, k, v);
        } else if (json_is_number(v) || json_is_boolean(v)) {
            cleanup_buf struct buf s = BUF_INIT;
            jsonx_dump(&s, v);
            json_object_set_new(env, k, json_string(s.p));
        }
    }
    return env;
}

static int make_release(struct pipe_run *r, struct pier_err *err)
{
    const json_t *res = r->result;
    cleanup_buf struct buf uri = BUF_INIT, size = BUF_INIT;
    buf_printf(&uri, "%s/slugs/%s/%s.tgz", r->p->blobstore, r->p->app, r->build_id);
    json_t *sz = json_object_get(res, "slug_size");
    buf_printf(&size, "%lld", json_is_integer(sz) ? (long long)json_integer_value(sz) : 0LL);
    const char *sha = json_string_value(json_object_get(res, "slug_sha256"));
    cleanup_json json_t *art_body = json_pack(
        "{s:s,s:s,s:{s:s,s:s,s:s,s:s,s:s}}", "type", "file", "uri", uri.p, "meta", "blobstore",
        "true", "slugrunner", "true", "sha256", sha ? sha : "", "size", size.p, "git_rev", r->rev);
    cleanup_json json_t *art = NULL;
    int rc = pipe_ctl(r, "POST", "/artifacts", art_body, &art, err);
    const char *art_id = json_string_value(json_object_get(art, "id"));
    if (rc == 0 && !art_id)
        rc = err_set(err, PIER_EPROTO, "the controller made an artifact without an id");
    if (rc < 0)
        return rc;
    cleanup_json json_t *rel_body =
        json_pack("{s:s,s:[s],s:o,s:{s:s,s:s,s:s},s:o}", "app_id", r->p->app, "artifacts", art_id,
                  "env", release_env(r), "meta", "git", "true", "rev", r->rev, "build", r->build_id,
                  "processes", release_processes(r));
    rc = pipe_ctl(r, "POST", "/releases", rel_body, &r->release, err);
    if (rc == 0 && !json_is_string(json_object_get(r->release, "id")))
        rc = err_set(err, PIER_EPROTO, "the controller made a release without an id");
    return rc;
}

/* ---- the whole ---- */

static void run_free(struct pipe_run *r)
{
    httpc_free(r->h);
    buf_free(&r->auth);
    free(r->source_url);
    json_decref(r->prev);
    json_decref(r->result);
    json_decref(r->release);
}

static int run_init(struct pipe_run *r, const struct pipeline *p, const char *rev)
{
    memset(r, 0, sizeof(*r));
    r->p = p;
    r->rev = rev;
    r->h = httpc_new();
    uuid_new(r->build_id);
    cleanup_buf struct buf cred = BUF_INIT, url = BUF_INIT;
    buf_printf(&cred, ":%s", p->key);
    buf_puts(&r->auth, "Authorization: Basic ");
    base64_encode(&r->auth, cred.p, cred.len);
    buf_printf(&url, "%s/sources/%s/%s.tar", p->blobstore, p->app, r->build_id);
    r->source_url = buf_detach(&url);
    return 0;
}

/* Steps a-c: the source, the current release, the build. */
static int source_and_build(struct pipe_run *r)
{
    struct pier_err err = {0};
    size_t size = 0;
    if (upload_source(r, &size, &err) < 0)
        return pipe_fail("Cannot upload the source: %s", err.msg);
    pipe_say("Uploading source (%zu KB)", (size + 1023) / 1024);
    cleanup_buf struct buf path = BUF_INIT;
    buf_printf(&path, "/apps/%s/release", r->p->app);
    int rc = pipe_ctl(r, "GET", path.p, NULL, &r->prev, &err);
    if (rc < 0 && rc != PIER_ENOTFOUND)
        return pipe_fail("Cannot read the app's release: %s", err.msg);
    pipe_say("Building %s (build %.8s) ...", r->p->app, r->build_id);
    return build(r);
}

int pipeline_run(const struct pipeline *p, const char *rev)
{
    struct pipe_run r;
    run_init(&r, p, rev);
    pipe_say("Receiving push");
    cleanup_buf struct buf blob = BUF_INIT;
    int rc = source_and_build(&r);
    buf_printf(&blob, "/sources/%s/%s.tar", p->app, r.build_id);
    pipe_blob_delete(&r, blob.p);
    if (rc == 0 && !pipeline_stopped()) {
        struct pier_err err = {0};
        pipe_say("Creating release");
        if (make_release(&r, &err) < 0) {
            rc = pipe_fail("Cannot create the release: %s", err.msg);
            pipe_fail("The running release is unchanged");
        }
    } else if (rc == 0) {
        rc = pipe_fail("The push was cancelled: nothing was released");
    }
    if (rc != 0) {
        buf_reset(&blob);
        buf_printf(&blob, "/slugs/%s/%s.tgz", p->app, r.build_id);
        pipe_blob_delete(&r, blob.p);
    } else {
        rc = pipe_deploy(&r);
    }
    run_free(&r);
    return rc;
}
