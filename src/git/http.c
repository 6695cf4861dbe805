/* http: git's smart HTTP protocol through `git http-backend` (http.h).
 *
 * Each git request runs one `git http-backend` as a CGI program:
 *  - GET /<app>.git/info/refs?service=S   the ref advertisement
 *  - POST /<app>.git/git-upload-pack      a fetch
 *  - POST /<app>.git/git-receive-pack     a push (the pre-receive hook, and
 *                                         with it the build, runs inside)
 * A POST's body is spooled to an unlinked file in DIR/tmp as it arrives
 * (a push can be far larger than memory should hold) and becomes the
 * program's stdin once it is complete. The program's header block gives
 * the status and content type; the rest of its output is streamed to the
 * client as it comes, so the hook's build log reaches the pusher line by
 * line. The program runs in a process group of its own, which is killed
 * (hook, build and all) when the client goes away.
 *
 * Auth is checked here rather than by httpd: git sends its credentials
 * only after a 401 that carries a WWW-Authenticate challenge. */
#include "git/http.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lib/buf.h"
#include "lib/cleanup.h"
#include "lib/clock.h"
#include "lib/httpd.h"
#include "lib/log.h"
#include "lib/subproc.h"

#define COMP "gitreceive"
/* The largest request body taken (a push's pack). */
#define MAX_BODY (4ULL << 30)
/* The CGI's header block: its largest size, and how long it may take (git
 * http-backend writes it before it runs the service). */
#define CGI_HEADER_MAX (64 * 1024)
#define CGI_HEADER_WAIT_MS 120000
/* At the end of a request: how long the program may take to exit once
 * its output ended, and how long its process group (the hook cancelling
 * its build) has between SIGTERM and SIGKILL, as over SSH. */
#define CGI_EXIT_WAIT_MS 10000
#define CGI_KILL_WAIT_MS 5000
#define READ_CHUNK (64 * 1024)

struct gitrecv_http {
    const struct gitrecv *g;
    struct httpd *h;
    char *addr;
};

/* ---- the request ---- */

static void reply_text(struct httpd_req *r, int status, const char *msg)
{
    cleanup_buf struct buf b = BUF_INIT;
    buf_printf(&b, "%s\n", msg);
    httpd_reply(r, status, "text/plain; charset=utf-8", b.p, b.len);
}

/* Checks the key and the app (by name or id), and makes sure its
 * repository exists. Returns the app (new), or NULL after replying. Errors
 * past the request's own go out as text/plain, which git shows the user
 * as "remote: ..." lines. */
static struct gitrecv_app *request_begin(struct gitrecv_http *s, struct httpd_req *r)
{
    if (!httpd_key_ok(r, s->g->key)) {
        httpd_add_header(r, "WWW-Authenticate", "Basic realm=\"pier\"");
        httpd_reply_error(r, 401, "unauthorized", 16,
                          "the cluster key is needed: Basic auth, any user, the key as password");
        return NULL;
    }
    const char *repo = httpd_param(r, "repo");
    size_t n = strlen(repo);
    if (n > 4 && strcmp(repo + n - 4, ".git") == 0)
        n -= 4;
    cleanup_free char *app = str_dup((struct str){repo, n});
    if (!gitrecv_app_name_ok(app)) {
        httpd_reply_error(r, 400, "validation_error", 3,
                          "\"%s\" is not an app name (lower-case letters, digits and dashes)", app);
        return NULL;
    }
    struct pier_err err = {0};
    cleanup_free char *path = NULL;
    cleanup_free struct gitrecv_app *a = xcalloc(1, sizeof(*a));
    int rc = gitrecv_repo_prepare(s->g, app, a, &path, &err);
    if (rc < 0) {
        if (rc != PIER_ENOTFOUND)
            log_warn(COMP, "cannot prepare the repository", "app=%s err=\"%s\"", app, err.msg);
        reply_text(r, rc == PIER_ENOTFOUND ? 404 : err_http_status(rc), err.msg);
        return NULL;
    }
    return steal_pointer(&a);
}

/* ---- the CGI program ---- */

struct cgi {
    struct gitrecv_app app;
    const char *service;
    const char *what;   /* "info/refs" or the service: what the request asked */
    pid_t pid;          /* also its process group */
    int out, err;       /* its stdout and stderr, -1 once they ended */
    struct buf pending; /* stdout read past the header block */
    struct buf errline; /* the unfinished last line of stderr */
    int64_t started_ms;
};

/* Replaces or adds NAME=value in a NULL-terminated, owned environment. */
static void env_put(char ***env, const char *name, const char *value)
{
    size_t nlen = strlen(name), n = 0;
    struct buf e = BUF_INIT;
    buf_printf(&e, "%s=%s", name, value);
    for (; (*env)[n]; n++) {
        if (strncmp((*env)[n], name, nlen) == 0 && (*env)[n][nlen] == '=') {
            free((*env)[n]);
            (*env)[n] = buf_detach(&e);
            return;
        }
    }
    *env = xrealloc(*env, (n + 2) * sizeof(**env));
    (*env)[n] = buf_detach(&e);
    (*env)[n + 1] = NULL;
}

/* A header value fit for an environment variable passed to git. */
static bool header_ok(const char *v)
{
    if (!v || strlen(v) > 256)
        return false;
    for (const char *p = v; *p; p++)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f)
            return false;
    return true;
}

/* The CGI environment: gitrecv_env()'s plus what RFC 3875 and git
 * http-backend read. body_len < 0: no body. The repository is the app's,
 * named by its id whatever the URL named it by. */
static char **cgi_env(struct gitrecv_http *s, struct httpd_req *r, const struct gitrecv_app *app,
                      const char *service, const char *path_tail, long long body_len)
{
    char **env = gitrecv_env(s->g, app);
    cleanup_buf struct buf root = BUF_INIT;
    cleanup_buf struct buf path = BUF_INIT;
    cleanup_buf struct buf query = BUF_INIT;
    buf_printf(&root, "%s/repos", s->g->dir);
    buf_printf(&path, "/%s.git/%s", app->id, path_tail);
    if (strcmp(path_tail, "info/refs") == 0)
        buf_printf(&query, "service=%s", service);
    env_put(&env, "GATEWAY_INTERFACE", "CGI/1.1");
    env_put(&env, "SERVER_PROTOCOL", "HTTP/1.1");
    env_put(&env, "GIT_PROJECT_ROOT", root.p);
    env_put(&env, "GIT_HTTP_EXPORT_ALL", "1");
    env_put(&env, "PATH_INFO", path.p);
    env_put(&env, "REQUEST_METHOD", httpd_method(r));
    env_put(&env, "QUERY_STRING", query.len ? query.p : "");
    env_put(&env, "REMOTE_USER", "pier");
    char addr[64];
    httpd_remote_addr(r, addr, sizeof(addr));
    env_put(&env, "REMOTE_ADDR", addr);
    const char *ctype = httpd_header(r, "Content-Type");
    env_put(&env, "CONTENT_TYPE", header_ok(ctype) ? ctype : "");
    char len[32] = "";
    if (body_len >= 0)
        snprintf(len, sizeof(len), "%lld", body_len);
    env_put(&env, "CONTENT_LENGTH", len);
    /* git gzips large fetch requests; http-backend inflates them. */
    const char *enc = httpd_header(r, "Content-Encoding");
    env_put(&env, "HTTP_CONTENT_ENCODING", header_ok(enc) ? enc : "");
    /* Protocol v2 is asked for with this header. */
    const char *proto = httpd_header(r, "Git-Protocol");
    env_put(&env, "HTTP_GIT_PROTOCOL", header_ok(proto) ? proto : "");
    return env;
}

/* Starts `git http-backend` with stdin from stdin_fd (-1: nothing) in a
 * new process group, its signals as a fresh process has them. */
static int cgi_spawn(struct cgi *c, char **env, int stdin_fd, struct pier_err *err)
{
    int out[2], errp[2];
    if (pipe2(out, O_CLOEXEC) < 0)
        return err_set(err, -errno, "pipe: %s", strerror(errno));
    if (pipe2(errp, O_CLOEXEC) < 0) {
        int e = errno;
        close(out[0]);
        close(out[1]);
        return err_set(err, -e, "pipe: %s", strerror(e));
    }
    char *argv[] = {"git", "http-backend", NULL};
    const struct subproc sp = {
        .argv = argv,
        .env = env,
        .in = stdin_fd >= 0 ? stdin_fd : SUBPROC_DEVNULL,
        .out = out[1],
        .err = errp[1],
        .new_pgroup = true,
    };
    int rc = subproc_start(&sp, &c->pid, err);
    close(out[1]);
    close(errp[1]);
    if (rc < 0) {
        close(out[0]);
        close(errp[0]);
        c->pid = 0;
        return rc;
    }
    c->out = out[0];
    c->err = errp[0];
    return 0;
}

/* Logs the complete lines of the program's stderr. */
static void log_stderr(struct cgi *c, bool flush)
{
    for (;;) {
        char *nl = memchr(c->errline.p ? c->errline.p : "", '\n', c->errline.len);
        if (!nl && !(flush && c->errline.len))
            return;
        size_t n = nl ? (size_t)(nl - c->errline.p) : c->errline.len;
        for (size_t i = 0; i < n; i++)
            if (c->errline.p[i] == '"' || c->errline.p[i] == '\\')
                c->errline.p[i] = '\'';
        log_warn(COMP, "git http-backend", "app=%s line=\"%.*s\"", c->app.name, (int)n,
                 c->errline.p);
        buf_consume(&c->errline, nl ? n + 1 : n);
    }
}

/* Waits up to timeout_ms for output: stdout is appended to into, stderr
 * is logged. Returns 0, or -1 on a read error. */
static int cgi_pump(struct cgi *c, struct buf *into, int timeout_ms)
{
    struct pollfd p[2] = {{.fd = c->out, .events = POLLIN}, {.fd = c->err, .events = POLLIN}};
    if (c->out < 0 && c->err < 0)
        return 0;
    int n = poll(p, 2, timeout_ms);
    if (n < 0)
        return errno == EINTR ? 0 : -1;
    char chunk[READ_CHUNK];
    if (c->err >= 0 && p[1].revents) {
        ssize_t k = read(c->err, chunk, sizeof(chunk));
        if (k > 0) {
            buf_append(&c->errline, chunk, (size_t)k);
            log_stderr(c, c->errline.len > 4096);
        } else if (k == 0 || errno != EINTR) {
            close(c->err);
            c->err = -1;
            log_stderr(c, true);
        }
    }
    if (c->out >= 0 && p[0].revents) {
        ssize_t k = read(c->out, chunk, sizeof(chunk));
        if (k > 0) {
            buf_append(into, chunk, (size_t)k);
        } else if (k == 0) {
            close(c->out);
            c->out = -1;
        } else if (errno != EINTR) {
            return -1;
        }
    }
    return 0;
}

/* Waits for the program to exit within wait_ms, else stops its process
 * group (SIGTERM; SIGKILL for what is left after a grace). Returns its
 * wait status. */
static int cgi_reap(struct cgi *c, int wait_ms)
{
    int st = 0;
    int64_t deadline = clock_now_ms() + wait_ms;
    for (;;) {
        pid_t p = waitpid(c->pid, &st, WNOHANG);
        if (p == c->pid || (p < 0 && errno != EINTR))
            break;
        if (clock_now_ms() >= deadline) {
            subproc_stop_group(c->pid, c->pid, CGI_KILL_WAIT_MS, &st);
            break;
        }
        usleep(20 * 1000);
    }
    c->pid = 0;
    return st;
}

static void cgi_free(struct cgi *c)
{
    if (c->out >= 0)
        close(c->out);
    if (c->err >= 0)
        close(c->err);
    buf_free(&c->pending);
    buf_free(&c->errline);
    free(c);
}

/* The stream's end: a program whose output ended gets time to exit, one
 * whose client left (or whose server stops) is killed at once. */
static void cgi_done(void *ud)
{
    struct cgi *c = ud;
    bool finished = c->out < 0;
    if (c->out >= 0) {
        close(c->out);
        c->out = -1;
    }
    int st = cgi_reap(c, finished ? CGI_EXIT_WAIT_MS : 0);
    /* The last of its stderr; something it left running in the background
     * may hold the pipe open, so not for long. */
    int64_t until = clock_now_ms() + 500;
    while (c->err >= 0 && clock_now_ms() < until)
        if (cgi_pump(c, &c->pending, 100) < 0)
            break;
    log_stderr(c, true);
    int code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    int64_t ms = clock_now_ms() - c->started_ms;
    if (finished)
        log_info(COMP, "request done", "app=%s app_id=%s service=%s path=%s exit=%d ms=%lld",
                 c->app.name, c->app.id, c->service, c->what, code, (long long)ms);
    else
        log_warn(COMP, "client gone, git killed", "app=%s app_id=%s service=%s path=%s ms=%lld",
                 c->app.name, c->app.id, c->service, c->what, (long long)ms);
    cgi_free(c);
}

static int cgi_next(void *ud, struct buf *out, int timeout_ms)
{
    struct cgi *c = ud;
    if (c->pending.len) {
        buf_append(out, c->pending.p, c->pending.len);
        buf_reset(&c->pending);
        return 1;
    }
    if (c->out < 0)
        return 0;
    if (cgi_pump(c, out, timeout_ms) < 0)
        return -1;
    return out->len || c->out >= 0 ? 1 : 0;
}

/* Where the header block ends in b (the offset of the body), or 0. */
static size_t header_end(const struct buf *b)
{
    for (size_t i = 0; i + 1 < b->len; i++) {
        if (b->p[i] != '\n')
            continue;
        if (b->p[i + 1] == '\n')
            return i + 2;
        if (i + 2 < b->len && b->p[i + 1] == '\r' && b->p[i + 2] == '\n')
            return i + 3;
    }
    return 0;
}

/* Reads and applies the program's header block: *status and *ctype (new)
 * are filled, other headers are added to the reply; what follows it is
 * kept in c->pending. */
static int cgi_headers(struct cgi *c, struct httpd_req *r, int *status, char **ctype,
                       struct pier_err *err)
{
    cleanup_buf struct buf b = BUF_INIT;
    int64_t deadline = clock_now_ms() + CGI_HEADER_WAIT_MS;
    size_t end;
    while (!(end = header_end(&b))) {
        if (b.len > CGI_HEADER_MAX)
            return err_set(err, PIER_EPROTO, "git http-backend: header block over %d bytes",
                           CGI_HEADER_MAX);
        if (c->out < 0)
            return err_set(err, PIER_EPROTO, "git http-backend ended without an answer");
        int64_t left = deadline - clock_now_ms();
        if (left <= 0)
            return err_set(err, PIER_ETIMEOUT, "git http-backend did not answer in %d s",
                           CGI_HEADER_WAIT_MS / 1000);
        if (cgi_pump(c, &b, (int)left) < 0)
            return err_set(err, -errno, "reading git http-backend: %s", strerror(errno));
    }
    *status = 200;
    *ctype = NULL;
    for (char *line = b.p; line < b.p + end;) {
        char *nl = memchr(line, '\n', (size_t)(b.p + end - line));
        *nl = '\0';
        if (nl > line && nl[-1] == '\r')
            nl[-1] = '\0';
        char *colon = strchr(line, ':');
        if (colon) {
            *colon = '\0';
            char *v = colon + 1 + strspn(colon + 1, " \t");
            if (strcasecmp(line, "Status") == 0) {
                int st = atoi(v);
                *status = st >= 100 && st <= 599 ? st : 500;
            } else if (strcasecmp(line, "Content-Type") == 0) {
                free(*ctype);
                *ctype = xstrdup(v);
            } else if (strcasecmp(line, "Content-Length") != 0 &&
                       strcasecmp(line, "Transfer-Encoding") != 0 &&
                       strcasecmp(line, "Connection") != 0 &&
                       strcasecmp(line, "Cache-Control") != 0) {
                /* Cache-Control: no-cache comes with every stream. */
                httpd_add_header(r, line, v);
            }
        }
        line = nl + 1;
    }
    buf_append(&c->pending, b.p + end, b.len - end);
    return 0;
}

/* Runs the program for the request and streams its answer. */
static void cgi_run(struct gitrecv_http *s, struct httpd_req *r, const struct gitrecv_app *app,
                    const char *service, const char *path_tail, int body_fd, long long body_len)
{
    struct cgi *c = xcalloc(1, sizeof(*c));
    c->app = *app;
    c->service = service;
    c->what = path_tail;
    c->out = c->err = -1;
    c->started_ms = clock_now_ms();
    char **env = cgi_env(s, r, app, service, path_tail, body_len);
    struct pier_err err = {0};
    int rc = cgi_spawn(c, env, body_fd, &err);
    gitrecv_env_free(env);
    int status = 0;
    cleanup_free char *ctype = NULL;
    if (rc == 0)
        rc = cgi_headers(c, r, &status, &ctype, &err);
    if (rc < 0) {
        log_error(COMP, "git http-backend failed", "app=%s service=%s err=\"%s\"", app->name,
                  service, err.msg);
        if (c->pid)
            cgi_reap(c, 0);
        cgi_free(c);
        reply_text(r, 500, err.msg);
        return;
    }
    httpd_reply_stream(r, status, ctype, cgi_next, cgi_done, c);
}

/* ---- handlers ---- */

static const char *service_name(const char *s)
{
    if (s && strcmp(s, "git-upload-pack") == 0)
        return "git-upload-pack";
    if (s && strcmp(s, "git-receive-pack") == 0)
        return "git-receive-pack";
    return NULL;
}

/* GET /:repo/info/refs?service=S */
static void info_refs(struct httpd_req *r, void *ud)
{
    struct gitrecv_http *s = ud;
    const char *service = service_name(httpd_query(r, "service"));
    cleanup_free struct gitrecv_app *app = request_begin(s, r);
    if (!app)
        return;
    if (!service) {
        reply_text(r, 403,
                   "only git's smart HTTP protocol is served: service=git-upload-pack or "
                   "service=git-receive-pack");
        return;
    }
    cgi_run(s, r, app, service, "info/refs", -1, -1);
}

/* A POST's body on its way to the spool file. */
struct upload {
    struct gitrecv_http *s;
    struct gitrecv_app *app;
    const char *service;
    int fd;
    unsigned long long len;
};

static int upload_data(void *ctx, const char *p, size_t len)
{
    struct upload *u = ctx;
    if (u->len + len > MAX_BODY) {
        log_warn(COMP, "request body too large, connection closed", "app=%s limit=%llu",
                 u->app->name, (unsigned long long)MAX_BODY);
        return -1;
    }
    while (len > 0) {
        ssize_t n = write(u->fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            log_error(COMP, "cannot spool the request body", "app=%s dir=%s/tmp err=\"%s\"",
                      u->app->name, u->s->g->dir, n < 0 ? strerror(errno) : "short write");
            return -1;
        }
        p += n;
        len -= (size_t)n;
        u->len += (unsigned long long)n;
    }
    return 0;
}

static void upload_end(struct httpd_req *r, void *ctx)
{
    struct upload *u = ctx;
    if (lseek(u->fd, 0, SEEK_SET) < 0) {
        reply_text(r, 500, "cannot read the spooled request body back");
        return;
    }
    cgi_run(u->s, r, u->app, u->service, u->service, u->fd, (long long)u->len);
}

static void upload_done(void *ctx)
{
    struct upload *u = ctx;
    if (u->fd >= 0)
        close(u->fd);
    free(u->app);
    free(u);
}

static const struct httpd_body_ops upload_ops = {upload_data, upload_end, upload_done};

/* An unlinked file in DIR/tmp for a request body: nothing is left behind
 * whatever becomes of the request or of the process. */
static int spool_open(const struct gitrecv *g)
{
    cleanup_buf struct buf dir = BUF_INIT;
    buf_printf(&dir, "%s/tmp", g->dir);
    int fd = open(dir.p, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd >= 0 || (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL))
        return fd;
    buf_puts(&dir, "/body-XXXXXX");
    fd = mkostemp(dir.p, O_CLOEXEC);
    if (fd >= 0)
        unlink(dir.p);
    return fd;
}

/* POST /:repo/git-upload-pack and /:repo/git-receive-pack: runs when the
 * headers are in; the body is spooled, then upload_end runs the program. */
static void rpc(struct httpd_req *r, const char *service, struct gitrecv_http *s)
{
    cleanup_free struct gitrecv_app *app = request_begin(s, r);
    if (!app)
        return;
    int fd = spool_open(s->g);
    if (fd < 0) {
        cleanup_buf struct buf msg = BUF_INIT;
        buf_printf(&msg, "cannot keep the request body in %s/tmp: %s", s->g->dir, strerror(errno));
        log_error(COMP, "cannot spool", "app=%s err=\"%s\"", app->name, msg.p);
        reply_text(r, 503, msg.p);
        return;
    }
    struct upload *u = xcalloc(1, sizeof(*u));
    u->s = s;
    u->app = steal_pointer(&app);
    u->service = service;
    u->fd = fd;
    httpd_body_stream(r, &upload_ops, u);
}

static void upload_pack(struct httpd_req *r, void *ud)
{
    rpc(r, "git-upload-pack", ud);
}

static void receive_pack(struct httpd_req *r, void *ud)
{
    rpc(r, "git-receive-pack", ud);
}

/* GET /status: for load balancers and `pier` checks, without auth. */
static void status(struct httpd_req *r, void *ud)
{
    (void)ud;
    httpd_reply_json(r, 200, json_pack("{s:s}", "status", "ok"));
}

/* ---- the server ---- */

int gitrecv_http_start(const struct gitrecv *g, const char *addr, struct gitrecv_http **out,
                       struct pier_err *err)
{
    struct gitrecv_http *s = xcalloc(1, sizeof(*s));
    s->g = g;
    /* No key here: the handlers check it, to answer with a challenge. */
    const struct httpd_options ho = {.listen = addr, .comp = COMP, .errors = HTTPD_ERRORS_FLYNN};
    s->h = httpd_new(&ho);
    httpd_route(s->h, "GET", "/status", status, s, true);
    httpd_route(s->h, "GET", "/:repo/info/refs", info_refs, s, true);
    httpd_route_upload(s->h, "POST", "/:repo/git-upload-pack", upload_pack, s, true);
    httpd_route_upload(s->h, "POST", "/:repo/git-receive-pack", receive_pack, s, true);
    int rc = httpd_start(s->h, err);
    if (rc < 0) {
        httpd_free(s->h);
        free(s);
        return rc;
    }
    s->addr = httpd_reach_addr(s->h);
    *out = s;
    return 0;
}

const char *gitrecv_http_addr(const struct gitrecv_http *s)
{
    return s->addr;
}

bool gitrecv_http_drain(struct gitrecv_http *s, int timeout_ms)
{
    return httpd_drain(s->h, timeout_ms);
}

void gitrecv_http_stop(struct gitrecv_http *s)
{
    if (!s)
        return;
    httpd_free(s->h);
    free(s->addr);
    free(s);
}
