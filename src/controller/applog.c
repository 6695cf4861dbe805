/* applog: GET /apps/:app/log, an app's log gathered from the agents of its
 * jobs (FLYNN-CLIENT-CONTRACT.md section 3.8).
 *
 * Every job of the app has its log on its host's agent (docs/host.md,
 * GET /host/jobs/:id/log?format=json gives Flynn's log messages). Without
 * follow, the controller reads the last `lines` of each job, merges them
 * by timestamp and answers the last `lines` of the merge. With follow, one
 * thread per job streams that job's log (its last `lines`, then every new
 * line) into one queue the response drains, and a watch of the job records
 * starts a stream for each job of the app that appears meanwhile; the
 * response lasts until the client leaves. A job whose agent cannot be
 * reached is left out (and logged), never fatal.
 *
 * Filters: job_id (a job's id or its uuid), process_type (the job's type),
 * stream_types (stdout, stderr, init; the agents have no init stream).
 * Jobs marked "log_hidden" (an attached one-off whose client asked for
 * disable_log, jobs.c) are left out. The answer is newline-separated JSON
 * messages, text/plain; or server-sent events (`data: {"event":"message",
 * "data":MSG}`, and `{"event":"eof"}` at the end) for a client that
 * accepts text/event-stream, as Flynn's controller does. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "controller/ctl.h"
#include "lib/cleanup.h"
#include "lib/httpc.h"
#include "lib/jsonx.h"
#include "lib/keys.h"
#include "lib/log.h"

/* Lines per job when the client does not say (Flynn's aggregator kept
 * about this many), and the most a client may ask for. */
#define DEFAULT_LINES 10000
#define MAX_LINES 1000000
/* Bytes queued for a following client before the streams wait for it. */
#define FOLLOW_QUEUE_MAX (4 << 20)
/* How often a following thread looks whether the response has ended. */
#define FOLLOW_POLL_MS 250

struct log_query {
    int lines;
    bool follow, sse;
    char *job_id, *process_type;
    bool stdout_ok, stderr_ok;
};

static const char *str_field(const json_t *j, const char *name)
{
    return json_string_value(json_object_get(j, name));
}

/* Reads the query; replies 400 and returns < 0 for a bad one. */
static int parse_query(struct httpd_req *r, struct log_query *q)
{
    const char *lines = httpd_query(r, "lines"), *follow = httpd_query(r, "follow");
    const char *types = httpd_query(r, "stream_types");
    const char *accept = httpd_header(r, "Accept");
    q->lines = DEFAULT_LINES;
    if (lines && *lines) {
        char *end = NULL;
        long n = strtol(lines, &end, 10);
        if (*end || n < 0 || n > MAX_LINES) {
            ctl_reply_invalid(r, "lines: must be a number from 0 to %d, not \"%s\"", MAX_LINES,
                              lines);
            return -1;
        }
        q->lines = (int)n;
    }
    q->follow = follow && (strcmp(follow, "true") == 0 || strcmp(follow, "1") == 0);
    q->sse = accept && strstr(accept, "text/event-stream");
    const char *job = httpd_query(r, "job_id"), *type = httpd_query(r, "process_type");
    q->job_id = job && *job ? xstrdup(job) : NULL;
    q->process_type = type && *type ? xstrdup(type) : NULL;
    q->stdout_ok = q->stderr_ok = !types || !*types;
    for (const char *p = types; p && *p;) {
        size_t len = strcspn(p, ",");
        if (len == 6 && strncmp(p, "stdout", 6) == 0)
            q->stdout_ok = true;
        else if (len == 6 && strncmp(p, "stderr", 6) == 0)
            q->stderr_ok = true;
        else if (!(len == 4 && strncmp(p, "init", 4) == 0)) {
            ctl_reply_invalid(r, "stream_types: stdout, stderr or init, not \"%.*s\"", (int)len, p);
            return -1;
        }
        p += len + (p[len] == ',');
    }
    return 0;
}

static void query_free(struct log_query *q)
{
    free(q->job_id);
    free(q->process_type);
}

/* Whether the log of job record rec belongs in the answer. */
static bool job_wanted(const json_t *rec, const char *app_id, const struct log_query *q)
{
    const char *app = str_field(rec, "app"), *id = str_field(rec, "id");
    if (!app || !id || strcmp(app, app_id) != 0 || json_is_true(json_object_get(rec, "log_hidden")))
        return false;
    if (q->job_id) {
        const char *dash = strchr(id, '-');
        if (strcmp(q->job_id, id) != 0 && !(dash && strcmp(q->job_id, dash + 1) == 0))
            return false;
    }
    const char *type = str_field(rec, "type");
    return !q->process_type || (type && strcmp(q->process_type, type) == 0);
}

/* The agent's URL of a job's log, or < 0 (logged) when its host is gone. */
static int log_url(struct ctl *c, const json_t *rec, const struct log_query *q, int lines,
                   bool follow, struct buf *url)
{
    cleanup_buf struct buf addr = BUF_INIT;
    struct pier_err err = {0};
    const char *id = str_field(rec, "id");
    int rc = ctl_agent_addr(c, str_field(rec, "host_id"), &addr, &err);
    if (rc < 0) {
        log_warn("controller", "job log skipped", "job=%s err=\"%s\"", id, err.msg);
        return rc;
    }
    buf_printf(url, "http://%s/host/jobs/%s/log?format=json", addr.p, id);
    if (lines >= 0)
        buf_printf(url, "&lines=%d", lines);
    if (follow)
        buf_puts(url, "&follow=true");
    if (q->stdout_ok != q->stderr_ok)
        buf_printf(url, "&stream=%s", q->stdout_ok ? "stdout" : "stderr");
    return 0;
}

/* Appends one message line (an agent's JSON line) to out in the answer's
 * format, when its stream is wanted. */
static void emit(const struct log_query *q, const char *line, size_t len, struct buf *out)
{
    json_t *m = NULL;
    if (jsonx_parse_object(line, len, &m, NULL) < 0)
        return;
    const char *stream = str_field(m, "stream");
    bool ok = stream && ((strcmp(stream, "stdout") == 0 && q->stdout_ok) ||
                         (strcmp(stream, "stderr") == 0 && q->stderr_ok));
    json_decref(m);
    if (!ok)
        return;
    if (q->sse)
        buf_puts(out, "data: {\"event\":\"message\",\"data\":");
    buf_append(out, line, len);
    buf_puts(out, q->sse ? "}\n\n" : "\n");
}

/* ---- the last lines, merged ---- */

struct msg {
    char *ts;   /* timestamp (RFC 3339 UTC, fixed width: compares as text) */
    char *line; /* the message as the agent wrote it */
    size_t seq; /* arrival order, for a stable sort */
};

static int by_time(const void *a, const void *b)
{
    const struct msg *x = a, *y = b;
    int d = strcmp(x->ts, y->ts);
    return d ? d : (x->seq > y->seq) - (x->seq < y->seq);
}

/* Reads the last lines of one job into msgs. */
static void read_job(struct ctl *c, struct httpc *hc, const json_t *rec, const struct log_query *q,
                     struct msg **msgs, size_t *n, size_t *cap)
{
    cleanup_buf struct buf url = BUF_INIT;
    cleanup_buf struct buf auth = BUF_INIT;
    if (log_url(c, rec, q, q->lines, false, &url) < 0)
        return;
    ctl_agent_auth(c, &auth);
    const char *headers[] = {auth.p, NULL};
    const struct httpc_req req = {.url = url.p,
                                  .headers = headers,
                                  .connect_timeout_ms = 1000,
                                  .timeout_ms = 15000,
                                  .max_body = 64 << 20};
    struct httpc_resp resp = {0};
    struct pier_err err = {0};
    int rc = httpc_do(hc, &req, &resp, &err);
    if (rc < 0 || resp.status != 200) {
        /* 404: an ended job whose directory the agent has pruned. */
        if (rc < 0 || resp.status != 404)
            log_warn("controller", "job log skipped", "job=%s status=%ld err=\"%s\"",
                     str_field(rec, "id"), resp.status, err.msg);
        httpc_resp_release(&resp);
        return;
    }
    for (char *line = resp.body.p; line && *line;) {
        char *nl = strchr(line, '\n');
        size_t len = nl ? (size_t)(nl - line) : strlen(line);
        json_t *m = NULL;
        if (len && jsonx_parse_object(line, len, &m, NULL) == 0 && str_field(m, "timestamp")) {
            if (*n == *cap) {
                *cap = *cap ? *cap * 2 : 256;
                *msgs = xrealloc(*msgs, *cap * sizeof(**msgs));
            }
            (*msgs)[*n] = (struct msg){xstrdup(str_field(m, "timestamp")), strndup(line, len), *n};
            (*n)++;
        }
        json_decref(m);
        line = nl ? nl + 1 : NULL;
    }
    httpc_resp_release(&resp);
}

static void reply_merged(struct httpd_req *r, struct ctl *c, const json_t *jobs,
                         const struct log_query *q)
{
    struct msg *msgs = NULL;
    size_t n = 0, cap = 0, i;
    json_t *rec;
    struct httpc *hc = httpc_new();
    json_array_foreach(jobs, i, rec) read_job(c, hc, rec, q, &msgs, &n, &cap);
    httpc_free(hc);
    if (n)
        qsort(msgs, n, sizeof(*msgs), by_time);
    cleanup_buf struct buf out = BUF_INIT;
    size_t from = n > (size_t)q->lines ? n - (size_t)q->lines : 0;
    for (i = 0; i < n; i++) {
        if (i >= from && msgs[i].line)
            emit(q, msgs[i].line, strlen(msgs[i].line), &out);
        free(msgs[i].ts);
        free(msgs[i].line);
    }
    free(msgs);
    if (q->sse) {
        buf_puts(&out, "data: {\"event\":\"eof\"}\n\n");
        httpd_reply(r, 200, "text/event-stream; charset=utf-8", out.p ? out.p : "", out.len);
    } else {
        httpd_reply(r, 200, "text/plain", out.p ? out.p : "", out.len);
    }
}

/* ---- follow ---- */

struct feed {
    struct follow *f;
    char *url;
    char *job;
    struct buf part; /* an incomplete line */
    pthread_t thread;
    struct feed *next;
};

/* One following response: its queue, its streams and its watch. */
struct follow {
    struct ctl *c;
    struct log_query q;
    char *app_id;
    struct httpc *hc;
    char *auth;
    atomic_bool stop;
    pthread_mutex_t lock; /* guards out, feeds and seen */
    pthread_cond_t cond;  /* out changed (either way), or stop */
    struct buf out;       /* formatted messages for the client */
    struct feed *feeds;
    json_t *seen; /* job ids with a feed */
    pthread_t watcher;
    bool watching;
    int64_t rev; /* the store revision the job list was read at */
};

/* Queues the complete lines of data, waiting while the client is behind. */
static int feed_data(const char *data, size_t len, void *ud)
{
    struct feed *fd = ud;
    struct follow *f = fd->f;
    buf_append(&fd->part, data, len);
    cleanup_buf struct buf msgs = BUF_INIT;
    char *nl;
    while ((nl = memchr(fd->part.p, '\n', fd->part.len))) {
        size_t n = (size_t)(nl - fd->part.p);
        if (n)
            emit(&f->q, fd->part.p, n, &msgs);
        buf_consume(&fd->part, n + 1);
    }
    if (fd->part.len > (1 << 20))
        buf_reset(&fd->part); /* not a line the agent would write */
    if (!msgs.len)
        return 0;
    pthread_mutex_lock(&f->lock);
    while (f->out.len > FOLLOW_QUEUE_MAX && !atomic_load(&f->stop)) {
        struct timespec dl = clock_deadline_in(FOLLOW_POLL_MS);
        pthread_cond_timedwait(&f->cond, &f->lock, &dl);
    }
    buf_append(&f->out, msgs.p, msgs.len);
    pthread_cond_broadcast(&f->cond);
    pthread_mutex_unlock(&f->lock);
    return atomic_load(&f->stop) ? -1 : 0;
}

static void *feed_run(void *ud)
{
    struct feed *fd = ud;
    struct follow *f = fd->f;
    const char *headers[] = {f->auth, NULL};
    const struct httpc_req req = {
        .url = fd->url, .headers = headers, .connect_timeout_ms = 1000, .timeout_ms = 10000};
    struct httpc_stream *st = NULL;
    struct pier_err err = {0};
    int rc = httpc_stream_open(f->hc, &req, feed_data, fd, &st, &err);
    if (rc == 0 && httpc_stream_status(st) != 200)
        rc = err_set(&err, PIER_EUNAVAIL, "status %ld", httpc_stream_status(st));
    if (rc < 0) {
        /* A job seen before its agent has it (just placed, not started):
         * the next change of its record tries again. */
        pthread_mutex_lock(&f->lock);
        json_object_del(f->seen, fd->job);
        pthread_mutex_unlock(&f->lock);
    }
    /* poll: 1 while the stream lasts, 0 once the agent ended it (the job
     * ended and all its log was sent). */
    while (rc == 0 && !atomic_load(&f->stop)) {
        int more = httpc_stream_poll(st, FOLLOW_POLL_MS, &err);
        rc = more < 0 ? more : 0;
        if (more == 0)
            break;
    }
    if (rc < 0 && rc != -ECANCELED && !atomic_load(&f->stop))
        log_warn("controller", "job log stream ended", "job=%s err=\"%s\"", fd->job, err.msg);
    httpc_stream_close(st);
    return NULL;
}

/* Starts following job rec unless it has a feed already. */
static void follow_job(struct follow *f, const json_t *rec, int lines)
{
    const char *id = str_field(rec, "id");
    pthread_mutex_lock(&f->lock);
    bool seen = json_object_get(f->seen, id) != NULL;
    if (!seen)
        json_object_set_new(f->seen, id, json_true());
    pthread_mutex_unlock(&f->lock);
    cleanup_buf struct buf url = BUF_INIT;
    if (seen || log_url(f->c, rec, &f->q, lines, true, &url) < 0)
        return;
    struct feed *fd = xcalloc(1, sizeof(*fd));
    fd->f = f;
    fd->url = buf_detach(&url);
    fd->job = xstrdup(id);
    if (pthread_create(&fd->thread, NULL, feed_run, fd) != 0) {
        log_warn("controller", "cannot start a job log stream", "job=%s", id);
        free(fd->url);
        free(fd->job);
        free(fd);
        return;
    }
    pthread_mutex_lock(&f->lock);
    fd->next = f->feeds;
    f->feeds = fd;
    pthread_mutex_unlock(&f->lock);
}

/* Watches the job records for jobs of the app that appear while following. */
static void *watch_run(void *ud)
{
    struct follow *f = ud;
    const struct store_watch_opts wo = {.prefix = true, .start_revision = f->rev + 1};
    struct store_watch *w = NULL;
    struct pier_err err = {0};
    int rc = store_watch_open(f->c->s, KEYS_JOBS, &wo, &w, &err);
    while (rc == 0 && !atomic_load(&f->stop)) {
        struct store_events *ev = NULL;
        rc = store_watch_next(w, FOLLOW_POLL_MS, &ev, &err);
        if (rc == PIER_ECOMPACTED)
            break;
        for (size_t i = 0; rc == 0 && i < ev->n; i++) {
            json_t *rec = NULL;
            const struct store_kv *kv = &ev->ev[i].kv;
            if (ev->ev[i].type == STORE_EVENT_PUT &&
                jsonx_parse_object(kv->value, kv->value_len, &rec, NULL) == 0 &&
                job_wanted(rec, f->app_id, &f->q))
                follow_job(f, rec, -1);
            json_decref(rec);
        }
        store_events_free(ev);
        rc = 0;
    }
    if (rc < 0 && !atomic_load(&f->stop))
        log_warn("controller", "app log: new jobs are not followed", "app=%s err=\"%s\"", f->app_id,
                 err.msg);
    store_watch_close(w);
    return NULL;
}

static int follow_next(void *ud, struct buf *out, int timeout_ms)
{
    struct follow *f = ud;
    pthread_mutex_lock(&f->lock);
    if (!f->out.len) {
        struct timespec dl = clock_deadline_in(timeout_ms);
        pthread_cond_timedwait(&f->cond, &f->lock, &dl);
    }
    if (f->out.len) {
        buf_append(out, f->out.p, f->out.len);
        buf_reset(&f->out);
        pthread_cond_broadcast(&f->cond);
    }
    pthread_mutex_unlock(&f->lock);
    return 1;
}

static void follow_done(void *ud)
{
    struct follow *f = ud;
    atomic_store(&f->stop, true);
    pthread_mutex_lock(&f->lock);
    pthread_cond_broadcast(&f->cond);
    pthread_mutex_unlock(&f->lock);
    /* The watcher first: it is the one that adds feeds. */
    if (f->watching)
        pthread_join(f->watcher, NULL);
    for (struct feed *fd = f->feeds, *next; fd; fd = next) {
        next = fd->next;
        pthread_join(fd->thread, NULL);
        free(fd->url);
        free(fd->job);
        buf_free(&fd->part);
        free(fd);
    }
    httpc_free(f->hc);
    query_free(&f->q);
    free(f->app_id);
    free(f->auth);
    buf_free(&f->out);
    json_decref(f->seen);
    pthread_mutex_destroy(&f->lock);
    pthread_cond_destroy(&f->cond);
    free(f);
}

static void reply_follow(struct httpd_req *r, struct ctl *c, const char *app_id, const json_t *jobs,
                         int64_t rev, struct log_query *q)
{
    struct follow *f = xcalloc(1, sizeof(*f));
    f->c = c;
    f->q = *q;
    *q = (struct log_query){0}; /* the strings are f's now */
    f->app_id = xstrdup(app_id);
    f->hc = httpc_new();
    cleanup_buf struct buf auth = BUF_INIT;
    ctl_agent_auth(c, &auth);
    f->auth = buf_detach(&auth);
    pthread_mutex_init(&f->lock, NULL);
    clock_cond_init(&f->cond);
    f->seen = json_object();
    f->rev = rev;
    size_t i;
    json_t *rec;
    json_array_foreach(jobs, i, rec) follow_job(f, rec, f->q.lines);
    f->watching = pthread_create(&f->watcher, NULL, watch_run, f) == 0;
    /* An app's log follow never ends by itself (new jobs join it): a drain
     * ends it, and the client asks again. */
    httpd_reply_stream_endless(r, 200, f->q.sse ? "text/event-stream; charset=utf-8" : "text/plain",
                               follow_next, follow_done, f);
}

/* ---- the route ---- */

static void app_log(struct httpd_req *r, void *ud)
{
    struct ctl *c = ud;
    struct pier_err err = {0};
    cleanup_json json_t *app = NULL;
    int rc = ctl_app_get(c, httpd_param(r, "app"), &app, NULL, &err);
    if (rc < 0) {
        ctl_reply_err(r, rc, &err);
        return;
    }
    struct log_query q = {0};
    if (parse_query(r, &q) < 0) {
        query_free(&q);
        return;
    }
    /* The app's jobs, by creation, and the revision they were read at (a
     * follower watches from there). */
    struct store_range *range = NULL;
    rc = store_list(c->s, KEYS_JOBS, NULL, &range, &err);
    if (rc < 0) {
        query_free(&q);
        ctl_reply_err(r, rc, &err);
        return;
    }
    cleanup_json json_t *jobs = json_array();
    for (size_t i = 0; i < range->n; i++) {
        json_t *rec = NULL;
        if (jsonx_parse_object(range->kvs[i].value, range->kvs[i].value_len, &rec, NULL) == 0 &&
            job_wanted(rec, ctl_app_id(app), &q))
            json_array_append(jobs, rec);
        json_decref(rec);
    }
    int64_t rev = range->revision;
    store_range_free(range);
    if (q.follow)
        reply_follow(r, c, ctl_app_id(app), jobs, rev, &q);
    else
        reply_merged(r, c, jobs, &q);
    query_free(&q);
}

void ctl_applog_routes(struct httpd *h, struct ctl *c)
{
    httpd_route(h, "GET", "/apps/:app/log", app_log, c, false);
}
