#include "cli/api.h"

#include <ctype.h>
#include <curl/curl.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli/ui.h"
#include "lib/cleanup.h"
#include "lib/clock.h"
#include "lib/http1.h"
#include "lib/httpc.h"
#include "lib/jsonx.h"

#define USER_AGENT "User-Agent: pier/" PIER_VERSION
#define RETRY_FOR_MS 10000
#define RETRY_EVERY_MS 100
#define CALL_TIMEOUT_MS 60000
#define RECONNECT_FOR_MS 30000
#define RECONNECT_OPEN_MS 10000 /* the controller sends the headers at once */
#define CATCH_UP_MS 5000        /* one look at the event list */
#define QUIET_MIN_MS 2000       /* the first look after that long without an event */
#define QUIET_MAX_MS 16000      /* the looks back off to this */
#define STALE_MS 45000          /* no byte, not even the 30 s keep-alive: the stream is dead */
#define SAY_EVERY_MS 10000      /* "reconnecting" at most this often */
#define ERROR_BODY_MAX (64 * 1024)
#define ATTACH_WAIT_MS 120000

int api_open(struct api *a, const char *cluster, struct pier_err *err)
{
    memset(a, 0, sizeof(*a));
    int rc = config_load(&a->cfg, err);
    if (rc < 0)
        return rc;
    rc = config_pick(&a->cfg, cluster, &a->url, &a->key, err);
    if (rc < 0)
        return rc;
    a->cluster = config_pick_name(&a->cfg, cluster);
    rc = config_ca(&a->cfg, cluster, &a->ca_pem, err);
    if (rc < 0)
        return rc;
    size_t n = strlen(a->url);
    while (n > 0 && a->url[n - 1] == '/')
        n--;
    a->base = xmalloc(n + 1);
    memcpy(a->base, a->url, n);
    a->base[n] = '\0';
    if (strncmp(a->base, "http://", 7) != 0 && strncmp(a->base, "https://", 8) != 0)
        return err_set(err, PIER_EINVAL,
                       "controller URL \"%s\" must start with http:// or https://", a->base);
    httpc_basic_auth(&a->auth, a->key);
    a->h = httpc_new();
    return 0;
}

void api_close(struct api *a)
{
    httpc_free(a->h);
    buf_free(&a->auth);
    free(a->base);
    free(a->app_owned);
    free(a->ca_pem);
    config_free(&a->cfg);
    memset(a, 0, sizeof(*a));
}

void api_tls_hint(const struct api *a, struct buf *hint)
{
    const char *url = a && a->base ? a->base : "URL";
    if (a && !a->cluster)
        buf_printf(hint,
                   "set PIER_CONTROLLER_CA to the file of the cluster's CA (STATE/ca/ca.crt "
                   "on the host that ran 'pier up')%s",
                   a->ca_pem ? "; the one set does not sign this server's certificate" : "");
    else if (a && a->ca_pem)
        buf_printf(hint,
                   "the CA stored for cluster \"%s\" does not sign the certificate of %s; if "
                   "the cluster has a new CA, add it again: 'pier cluster remove %s' and 'pier "
                   "cluster add %s %s KEY --ca FILE' (FILE: STATE/ca/ca.crt on the host that "
                   "ran 'pier up'), or --tls-pin PIN",
                   a->cluster, url, a->cluster, a->cluster, url);
    else
        buf_printf(hint,
                   "cluster \"%s\" has no CA of its own, so the system's CAs are used; give "
                   "it the cluster's CA: 'pier cluster remove %s' and 'pier cluster add %s %s "
                   "KEY --ca FILE' (FILE: STATE/ca/ca.crt on the host that ran 'pier up'), or "
                   "--tls-pin PIN",
                   a ? a->cluster : "NAME", a ? a->cluster : "NAME", a ? a->cluster : "NAME", url);
}

int api_fail(const struct api *a, const struct pier_err *err)
{
    const char *hint = NULL;
    switch (err->code) {
    case API_EAUTH:
        hint = "the key is wrong for this cluster: add it again with 'pier cluster remove NAME' "
               "and 'pier cluster add NAME URL KEY' (or fix PIER_CONTROLLER_KEY)";
        break;
    case -ECONNREFUSED:
    case -EHOSTUNREACH:
    case -ETIMEDOUT:
        hint = "is the cluster up? 'pier status' checks it; 'pier cluster' shows which URL "
               "is used";
        break;
    case HTTPC_ETLS: {
        cleanup_buf struct buf tls = BUF_INIT;
        api_tls_hint(a, &tls);
        return ui_fail(tls.p, "%s", err->msg);
    }
    case PIER_EUNAVAIL:
    case PIER_ETIMEOUT:
        if (a && !a->connected_ok)
            hint = "'pier status' checks that the controller answers";
        break;
    default: break;
    }
    return ui_fail(hint, "%s", err->msg);
}

/* ---- which app ---- */

int api_opt_app(int argc, char **argv, int *i, const char **app)
{
    const char *s = argv[*i];
    if (strcmp(s, "-a") == 0 || strcmp(s, "--app") == 0) {
        if (*i + 1 >= argc)
            return -1;
        *app = argv[++*i];
        return 1;
    }
    if (strncmp(s, "--app=", 6) == 0) {
        *app = s + 6;
        return 1;
    }
    if (strncmp(s, "-a", 2) == 0 && s[2]) {
        *app = s + 2;
        return 1;
    }
    return 0;
}

/* The app named by the URL of the git remote "pier": the last path
 * segment without ".git" (https://git.example.com/demo.git, or scp-like
 * git@host:demo.git). NULL when there is no such remote. */
static char *app_from_git(void)
{
    FILE *p = popen("git config --get remote.pier.url 2>/dev/null", "r");
    if (!p)
        return NULL;
    char line[1024];
    char *got = fgets(line, sizeof(line), p);
    pclose(p);
    if (!got)
        return NULL;
    size_t n = strcspn(line, "\r\n");
    while (n > 0 && line[n - 1] == '/')
        n--;
    line[n] = '\0';
    if (n > 4 && strcmp(line + n - 4, ".git") == 0)
        line[n -= 4] = '\0';
    char *seg = line;
    for (char *q = line; *q; q++)
        if (*q == '/' || *q == ':')
            seg = q + 1;
    return *seg ? xstrdup(seg) : NULL;
}

int api_app(struct api *a, const char *flag, struct pier_err *err)
{
    if (flag && *flag) {
        a->app = flag;
        return 0;
    }
    const char *env = getenv("PIER_APP");
    if (env && *env) {
        a->app = env;
        return 0;
    }
    a->app_owned = app_from_git();
    if (a->app_owned) {
        a->app = a->app_owned;
        return 0;
    }
    return err_set(err, PIER_EINVAL,
                   "no app given: use -a APP or run inside a git repo with a 'pier' remote");
}

int api_start(struct api *a, const struct cli *c, const char *app_flag, bool need_app)
{
    struct pier_err err = {0};
    if (api_open(a, c->cluster, &err) < 0)
        return ui_fail(NULL, "%s", err.msg);
    if (need_app && api_app(a, app_flag ? app_flag : c->app, &err) < 0)
        return ui_fail("'pier apps' lists the apps; 'pier create NAME' makes one", "%s", err.msg);
    return 0;
}

void api_escape(struct buf *out, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (isalnum(*p) || *p == '-' || *p == '_' || *p == '.' || *p == '~') {
            buf_putc(out, (char)*p);
        } else {
            buf_putc(out, '%');
            buf_putc(out, hex[*p >> 4]);
            buf_putc(out, hex[*p & 15]);
        }
    }
}

/* ---- errors ---- */

static int code_from_flynn(const char *code)
{
    static const struct {
        const char *name;
        int code;
    } map[] = {
        {"not_found", PIER_ENOTFOUND},
        {"object_not_found", PIER_ENOTFOUND},
        {"object_exists", PIER_EEXISTS},
        {"conflict", PIER_ECONFLICT},
        {"validation_error", PIER_EINVAL},
        {"syntax_error", PIER_EINVAL},
        {"request_body_too_big", PIER_ETOOBIG},
        {"precondition_failed", PIER_ECONFLICT},
        {"unauthorized", API_EAUTH},
        {"service_unavailable", PIER_EUNAVAIL},
        {"ratelimited", PIER_EUNAVAIL},
    };
    for (size_t i = 0; code && i < sizeof(map) / sizeof(map[0]); i++)
        if (strcmp(map[i].name, code) == 0)
            return map[i].code;
    return PIER_EINTERNAL;
}

/* Turns a non-200 answer into an error. *retry (optional) says whether the
 * server asked for the same call again. */
static int answer_error(const struct api *a, const char *method, const char *path, long status,
                        const struct buf *body, struct pier_err *err, bool *retry)
{
    if (retry)
        *retry = false;
    json_t *j = NULL;
    if (body->len > 0 && jsonx_parse_object(body->p, body->len, &j, NULL) == 0 &&
        json_is_string(json_object_get(j, "code"))) {
        const char *code = json_string_value(json_object_get(j, "code"));
        const char *msg = json_string_value(json_object_get(j, "message"));
        if (retry)
            *retry = json_is_true(json_object_get(j, "retry"));
        cleanup_buf struct buf m = BUF_INIT;
        api_put_clean(&m, msg && *msg ? msg : code);
        int rc = err_set(err, code_from_flynn(code), "%s", m.p);
        json_decref(j);
        return rc;
    }
    json_decref(j);
    if (status == 404)
        return err_set(err, PIER_ENOTFOUND, "%s %s: not found", method, path);
    if (status == 401)
        return err_set(err, API_EAUTH, "the controller at %s refused the key (401)", a->base);
    return err_set(err, PIER_EPROTO, "the controller at %s answered %s %s with status %ld", a->base,
                   method, path, status);
}

/* ---- JSON calls ---- */

static void common_headers(const struct api *a, const char **h, bool accept_json)
{
    int n = 0;
    h[n++] = a->auth.p;
    h[n++] = "Content-Type: application/json";
    h[n++] = USER_AGENT;
    if (accept_json)
        h[n++] = "Accept: application/json";
    h[n] = NULL;
}

static int call(struct api *a, const char *method, const char *path, const json_t *body,
                json_t **out, bool need_json, long timeout_ms, struct pier_err *err)
{
    if (out)
        *out = NULL;
    cleanup_buf struct buf url = BUF_INIT, text = BUF_INIT, name = BUF_INIT;
    buf_printf(&url, "%s%s", a->base, path);
    buf_printf(&name, "the controller at %s", a->base);
    if (body)
        jsonx_dump(&text, body);
    const char *headers[6];
    common_headers(a, headers, true);
    struct httpc_req req = {
        .method = method,
        .url = url.p,
        .name = name.p,
        .headers = headers,
        .body = body ? text.p : NULL,
        .body_len = text.len,
        .timeout_ms = timeout_ms,
        .ca_pem = a->ca_pem,
    };
    int64_t deadline = clock_now_ms() + RETRY_FOR_MS;
    for (;;) {
        struct httpc_resp resp = {0};
        int rc = httpc_do(a->h, &req, &resp, err);
        if (rc < 0)
            return rc;
        a->connected_ok = true;
        if (resp.status == 200) {
            json_t *j = NULL;
            if (resp.body.len > 0)
                rc = jsonx_parse(resp.body.p, resp.body.len, &j, err);
            if (rc == 0 && !j && need_json)
                rc = err_set(err, PIER_EPROTO, "%s %s: the controller sent no JSON", method, path);
            if (rc < 0 && need_json)
                err_wrap(err, rc, "%s %s", method, path);
            else
                rc = 0;
            httpc_resp_release(&resp);
            if (rc == 0 && out)
                *out = j;
            else
                json_decref(j);
            return rc;
        }
        bool retry = false;
        rc = answer_error(a, method, path, resp.status, &resp.body, err, &retry);
        httpc_resp_release(&resp);
        if (!retry || clock_now_ms() + RETRY_EVERY_MS > deadline)
            return rc;
        usleep(RETRY_EVERY_MS * 1000);
    }
}

int api_get(struct api *a, const char *path, json_t **out, struct pier_err *err)
{
    return call(a, "GET", path, NULL, out, true, CALL_TIMEOUT_MS, err);
}

int api_send(struct api *a, const char *method, const char *path, const json_t *body, json_t **out,
             struct pier_err *err)
{
    return call(a, method, path, body, out, false, CALL_TIMEOUT_MS, err);
}

void api_app_path(const struct api *a, struct buf *out, const char *suffix)
{
    buf_puts(out, "/apps/");
    api_escape(out, a->app);
    buf_puts(out, suffix ? suffix : "");
}

int api_app_get(struct api *a, json_t **out, struct pier_err *err)
{
    cleanup_buf struct buf path = BUF_INIT;
    api_app_path(a, &path, "");
    int rc = api_get(a, path.p, out, err);
    if (rc == PIER_ENOTFOUND) {
        cleanup_buf struct buf name = BUF_INIT;
        api_put_clean(&name, a->app);
        return err_set(err, rc, "no app named \"%s\" on this cluster ('pier apps' lists them)",
                       name.p);
    }
    return rc;
}

/* ---- streams ---- */

static int collect(const char *data, size_t len, void *ud)
{
    buf_append(ud, data, len);
    return 0;
}

/* Opens a stream into *in and checks its status; a non-200 answer is read
 * whole (up to a cap) and turned into an error. */
static int stream_open(struct api *a, const char *path, const char *accept, int64_t last_id,
                       long timeout_ms, struct buf *in, struct httpc_stream **out,
                       struct pier_err *err)
{
    cleanup_buf struct buf url = BUF_INIT, name = BUF_INIT, acc = BUF_INIT, last = BUF_INIT;
    buf_printf(&url, "%s%s", a->base, path);
    buf_printf(&name, "the controller at %s", a->base);
    const char *headers[8];
    common_headers(a, headers, false);
    int n = 3;
    if (accept) {
        buf_printf(&acc, "Accept: %s", accept);
        headers[n++] = acc.p;
        buf_printf(&last, "Last-Event-Id: %lld", (long long)last_id);
        headers[n++] = last.p;
    }
    headers[n] = NULL;
    struct httpc_req req = {.url = url.p,
                            .name = name.p,
                            .headers = headers,
                            .timeout_ms = timeout_ms,
                            .ca_pem = a->ca_pem};
    struct httpc_stream *s = NULL;
    int rc = httpc_stream_open(a->h, &req, collect, in, &s, err);
    if (rc < 0)
        return rc;
    a->connected_ok = true;
    long status = httpc_stream_status(s);
    if (status == 200) {
        *out = s;
        return 0;
    }
    int64_t deadline = clock_now_ms() + 10000;
    while (in->len < ERROR_BODY_MAX && clock_now_ms() < deadline &&
           httpc_stream_poll(s, 1000, NULL) > 0)
        ;
    httpc_stream_close(s);
    rc = answer_error(a, "GET", path, status, in, err, NULL);
    buf_reset(in);
    return rc;
}

/* Waiting on an event stream must survive the path to the controller
 * going away under it: the router that carried it stopped (a scale of the
 * router itself), the controller job replaced, a proxy that holds the
 * connection open but no longer forwards anything. So:
 *
 * - Every event handed out moves last_id on; an event at or below it is
 *   never handed out twice. A stream without past=true starts last_id at
 *   the newest matching event when it opened (one GET of the list), so a
 *   resume from it loses nothing even before the first event came.
 * - When the stream ends, breaks, or sends not a byte for STALE_MS (the
 *   controller's keep-alive comes every 30 s), it is opened again with
 *   Last-Event-Id = last_id, retrying with a backoff for RECONNECT_FOR_MS,
 *   and "reconnecting to the controller..." goes to stderr.
 * - After a reconnect, and whenever no event came for a while (2 s, then
 *   doubling up to 16 s), the events after last_id are read with a plain
 *   GET of the same filter (since_id) and queued: the state as it is now,
 *   whatever the stream is doing. A failed look is only tried again later.
 * The caller sees the same events in the same order either way. */
struct api_events {
    struct api *a;
    char *path;
    struct httpc_stream *s; /* NULL while reconnecting */
    struct buf in;          /* received, not yet parsed */
    struct buf data;        /* the data lines of the block being read */
    bool has_data, is_error;
    bool ended;          /* the stream ended, broke or went stale: resume once in is parsed */
    json_t *queue;       /* events read by a look at the list, oldest first, not handed out */
    int64_t last_id;     /* the newest event handed out (or the newest when it opened) */
    int64_t rx_ms;       /* when bytes last arrived */
    int64_t look_at_ms;  /* when to look at the list if no event comes before */
    int64_t look_every;  /* the current quiet interval */
    int64_t down_since;  /* when the stream went away; 0 while it is open */
    int64_t retry_at_ms; /* the next reconnect attempt */
    int64_t retry_wait;
    int64_t said_ms; /* when "reconnecting" was last printed */
};

/* Appends the stream's filter with one more query parameter. */
static void list_path(const struct api_events *e, struct buf *out, const char *param,
                      long long value)
{
    buf_printf(out, "%s%c%s=%lld", e->path, strchr(e->path, '?') ? '&' : '?', param, value);
}

/* The newest matching event's id (0: none, or the list could not be read). */
static int64_t newest_id(struct api_events *e)
{
    cleanup_buf struct buf path = BUF_INIT;
    list_path(e, &path, "count", 1);
    cleanup_json json_t *list = NULL;
    struct pier_err perr = {0};
    if (call(e->a, "GET", path.p, NULL, &list, true, CATCH_UP_MS, &perr) < 0)
        return 0;
    return json_integer_value(json_object_get(json_array_get(list, 0), "id"));
}

static void quiet_reset(struct api_events *e)
{
    e->look_every = QUIET_MIN_MS;
    e->look_at_ms = clock_now_ms() + QUIET_MIN_MS;
}

/* Looks at the events after last_id with a plain GET and queues those not
 * queued yet. */
static void look(struct api_events *e)
{
    e->look_at_ms = clock_now_ms() + e->look_every;
    e->look_every = e->look_every * 2 > QUIET_MAX_MS ? QUIET_MAX_MS : e->look_every * 2;
    int64_t after = e->last_id;
    size_t nq = json_array_size(e->queue);
    if (nq > 0)
        after = json_integer_value(json_object_get(json_array_get(e->queue, nq - 1), "id"));
    cleanup_buf struct buf path = BUF_INIT;
    list_path(e, &path, "since_id", (long long)after);
    cleanup_json json_t *list = NULL;
    struct pier_err perr = {0};
    if (call(e->a, "GET", path.p, NULL, &list, true, CATCH_UP_MS, &perr) < 0)
        return;
    for (size_t i = json_array_size(list); i-- > 0;) { /* the list is newest first */
        json_t *ev = json_array_get(list, i);
        int64_t id = json_integer_value(json_object_get(ev, "id"));
        if (!json_is_object(ev) || id <= after)
            continue;
        json_array_append(e->queue, ev);
        after = id;
    }
    if (json_array_size(e->queue) > nq)
        quiet_reset(e);
}

int api_events_open(struct api *a, const char *path, struct api_events **out, struct pier_err *err)
{
    struct api_events *e = xcalloc(1, sizeof(*e));
    e->a = a;
    e->path = xstrdup(path);
    e->queue = json_array();
    int rc = stream_open(a, path, "text/event-stream", 0, CALL_TIMEOUT_MS, &e->in, &e->s, err);
    if (rc < 0) {
        api_events_close(e);
        return rc;
    }
    /* After the subscription: whatever comes after this id is the stream's. */
    if (!strstr(path, "past=true"))
        e->last_id = newest_id(e);
    e->rx_ms = clock_now_ms();
    quiet_reset(e);
    *out = e;
    return 0;
}

void api_events_close(struct api_events *e)
{
    if (!e)
        return;
    httpc_stream_close(e->s);
    buf_free(&e->in);
    buf_free(&e->data);
    json_decref(e->queue);
    free(e->path);
    free(e);
}

/* Takes ev as the next event unless it was handed out already: 1 (with
 * *out, a new reference), or 0. */
static int hand_out(struct api_events *e, json_t *ev, json_t **out)
{
    json_t *id = json_object_get(ev, "id");
    if (json_is_integer(id)) {
        if (json_integer_value(id) <= e->last_id)
            return 0;
        e->last_id = json_integer_value(id);
    }
    *out = json_incref(ev);
    quiet_reset(e);
    return 1;
}

/* Ends the current block: 1 with *ev when it held a new event, 0 when it
 * was empty or held one handed out already, negative for an error event
 * or data that is not JSON. */
static int dispatch(struct api_events *e, json_t **ev, struct pier_err *err)
{
    if (!e->has_data)
        return 0;
    bool is_error = e->is_error;
    e->has_data = e->is_error = false;
    cleanup_json json_t *j = NULL;
    int rc = jsonx_parse(e->data.p ? e->data.p : "", e->data.len, &j, NULL);
    if (is_error) {
        cleanup_buf struct buf m = BUF_INIT;
        const char *msg = json_is_string(j)   ? json_string_value(j)
                          : json_is_object(j) ? json_string_value(json_object_get(j, "message"))
                                              : NULL;
        api_put_clean(&m, msg ? msg : (e->data.p ? e->data.p : "?"));
        buf_reset(&e->data);
        return err_set(err, PIER_EUNAVAIL, "the controller's event stream failed: %s", m.p);
    }
    buf_reset(&e->data);
    if (rc < 0 || !json_is_object(j))
        return err_set(err, PIER_EPROTO, "the controller sent an event that is not a JSON object");
    return hand_out(e, j, ev);
}

/* Parses complete lines in e->in until one event is complete. */
static int parse_events(struct api_events *e, json_t **ev, struct pier_err *err)
{
    size_t off = 0;
    int rc = 0;
    while (rc == 0 && off < e->in.len) {
        char *line = e->in.p + off;
        char *nl = memchr(line, '\n', e->in.len - off);
        if (!nl)
            break;
        size_t n = (size_t)(nl - line);
        off += n + 1;
        if (n > 0 && line[n - 1] == '\r')
            n--;
        if (n == 0) {
            rc = dispatch(e, ev, err);
        } else if (n >= 5 && memcmp(line, "data:", 5) == 0) {
            size_t skip = n > 5 && line[5] == ' ' ? 6 : 5;
            if (e->has_data)
                buf_putc(&e->data, '\n');
            buf_append(&e->data, line + skip, n - skip);
            e->has_data = true;
        } else if (n >= 6 && memcmp(line, "event:", 6) == 0) {
            const char *v = line + 6;
            size_t vl = n - 6;
            if (vl > 0 && *v == ' ')
                v++, vl--;
            e->is_error = vl == 5 && memcmp(v, "error", 5) == 0;
        } /* comments (":..."), id: and retry: lines are skipped */
    }
    buf_consume(&e->in, off);
    return rc;
}

/* Whether a failed reopen is worth another try: the controller (or the
 * router before it) may be on its way back. A 404, a refused key or a bad
 * request will not change. */
static bool reopen_retryable(int rc)
{
    return rc != PIER_ENOTFOUND && rc != API_EAUTH && rc != PIER_EINVAL;
}

/* One step of getting the stream back, waiting at most until deadline:
 * 1 when it is open again, 0 when not yet, or the final error. */
static int reconnect_step(struct api_events *e, int64_t deadline, struct pier_err *err)
{
    int64_t now = clock_now_ms();
    if (e->down_since == 0) {
        httpc_stream_close(e->s);
        e->s = NULL;
        buf_reset(&e->in);
        buf_reset(&e->data);
        e->has_data = e->is_error = false;
        e->down_since = now;
        e->retry_wait = 100;
        /* a server that keeps closing at once must not spin us */
        e->retry_at_ms = now + e->retry_wait;
        if (e->said_ms == 0 || now - e->said_ms >= SAY_EVERY_MS) {
            fprintf(stderr, "reconnecting to the controller...\n");
            fflush(stderr);
            e->said_ms = now;
        }
    }
    if (now < e->retry_at_ms) {
        int64_t until = e->retry_at_ms < deadline ? e->retry_at_ms : deadline;
        if (until > now)
            usleep((useconds_t)(until - now) * 1000);
        return 0;
    }
    int rc = stream_open(e->a, e->path, "text/event-stream", e->last_id, RECONNECT_OPEN_MS, &e->in,
                         &e->s, err);
    if (rc == 0) {
        e->down_since = 0;
        e->ended = false;
        e->rx_ms = clock_now_ms();
        look(e); /* also when the server cannot resume from last_id */
        return 1;
    }
    e->s = NULL;
    if (!reopen_retryable(rc) || clock_now_ms() - e->down_since >= RECONNECT_FOR_MS)
        return rc;
    e->retry_at_ms = clock_now_ms() + e->retry_wait;
    e->retry_wait = e->retry_wait * 2 > 1000 ? 1000 : e->retry_wait * 2;
    return 0;
}

int api_events_next(struct api_events *e, int timeout_ms, json_t **ev, struct pier_err *err)
{
    *ev = NULL;
    int64_t deadline = timeout_ms < 0 ? INT64_MAX : clock_now_ms() + timeout_ms;
    for (;;) {
        /* What arrived is handed out before the end of the stream is acted on. */
        while (json_array_size(e->queue) > 0) {
            cleanup_json json_t *q = json_incref(json_array_get(e->queue, 0));
            json_array_remove(e->queue, 0);
            if (hand_out(e, q, ev))
                return 1;
        }
        int rc = parse_events(e, ev, err);
        if (rc != 0)
            return rc;
        int64_t now = clock_now_ms();
        if (!e->ended && now - e->rx_ms >= STALE_MS)
            e->ended = true;
        if (e->ended) {
            rc = reconnect_step(e, deadline, err);
            if (rc < 0)
                return rc;
            if (rc == 0 && clock_now_ms() >= deadline)
                return 0;
            continue;
        }
        if (now >= e->look_at_ms) {
            look(e);
            continue;
        }
        if (now >= deadline)
            return 0;
        int64_t wait = e->look_at_ms - now;
        if (deadline - now < wait)
            wait = deadline - now;
        if (wait > 1000)
            wait = 1000;
        size_t before = e->in.len;
        struct pier_err perr = {0};
        rc = httpc_stream_poll(e->s, (int)wait, &perr);
        if (e->in.len > before)
            e->rx_ms = clock_now_ms();
        if (rc <= 0)
            e->ended = true;
    }
}

struct lines {
    api_line_fn fn;
    void *ud;
    bool stop;
};

/* Hands every complete line of in to fn; at_end: the rest too. */
static int feed_lines(struct lines *l, struct buf *in, bool at_end, struct pier_err *err)
{
    size_t off = 0;
    while (!l->stop && off < in->len) {
        char *line = in->p + off;
        char *nl = memchr(line, '\n', in->len - off);
        if (!nl && !at_end)
            break;
        size_t n = nl ? (size_t)(nl - line) : in->len - off;
        off += n + (nl ? 1 : 0);
        while (n > 0 && isspace((unsigned char)line[n - 1]))
            n--;
        if (n == 0)
            continue;
        json_t *j = NULL;
        if (jsonx_parse_object(line, n, &j, NULL) < 0) {
            buf_consume(in, off);
            return err_set(err, PIER_EPROTO, "the controller sent a log line that is not JSON");
        }
        if (l->fn(j, l->ud) != 0)
            l->stop = true;
        json_decref(j);
    }
    buf_consume(in, off);
    return 0;
}

int api_lines(struct api *a, const char *path, api_line_fn fn, void *ud, struct pier_err *err)
{
    cleanup_buf struct buf in = BUF_INIT;
    struct httpc_stream *s = NULL;
    int rc = stream_open(a, path, NULL, 0, CALL_TIMEOUT_MS, &in, &s, err);
    if (rc < 0)
        return rc;
    struct lines l = {fn, ud, false};
    for (;;) {
        rc = feed_lines(&l, &in, false, err);
        if (rc < 0 || l.stop)
            break;
        rc = httpc_stream_poll(s, -1, err);
        if (rc <= 0) {
            if (rc == 0)
                rc = feed_lines(&l, &in, true, err);
            break;
        }
    }
    httpc_stream_close(s);
    return rc < 0 ? rc : 0;
}

/* ---- small shared things ---- */

void api_put_clean(struct buf *out, const char *s)
{
    for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++)
        buf_putc(out, *p < 0x20 || *p == 0x7f ? '?' : (char)*p);
}

void api_ago(struct buf *out, const char *rfc3339)
{
    int64_t us;
    if (clock_parse_rfc3339(rfc3339, &us) < 0) {
        buf_puts(out, "-");
        return;
    }
    long long d = (long long)time(NULL) - (long long)(us / 1000000);
    if (d < 0)
        d = 0;
    if (d < 120)
        buf_printf(out, "%llds ago", d);
    else if (d < 7200)
        buf_printf(out, "%lldm ago", d / 60);
    else if (d < 172800)
        buf_printf(out, "%lldh ago", d / 3600);
    else
        buf_printf(out, "%lldd ago", d / 86400);
}

struct sort_ctx {
    const char *field;
    bool desc;
};
static _Thread_local struct sort_ctx sort_ctx;

static int cmp_field(const void *x, const void *y)
{
    const char *a = json_string_value(json_object_get(*(json_t *const *)x, sort_ctx.field));
    const char *b = json_string_value(json_object_get(*(json_t *const *)y, sort_ctx.field));
    int r = strcmp(a ? a : "", b ? b : "");
    return sort_ctx.desc ? -r : r;
}

void api_sort_by(json_t *arr, const char *field, bool desc)
{
    size_t n = json_array_size(arr);
    if (n < 2)
        return;
    json_t **v = xcalloc(n, sizeof(*v));
    for (size_t i = 0; i < n; i++)
        v[i] = json_incref(json_array_get(arr, i));
    sort_ctx = (struct sort_ctx){field, desc};
    qsort(v, n, sizeof(*v), cmp_field);
    json_array_clear(arr);
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, v[i]); /* steals the reference taken above */
    free(v);
}

int api_print_json(const json_t *v, bool one_line)
{
    size_t flags = one_line ? JSON_COMPACT : JSON_INDENT(2);
    if (json_dumpf(v, stdout, flags | JSON_ENCODE_ANY) < 0 || putchar('\n') == EOF ||
        fflush(stdout) == EOF)
        return ui_fail(NULL, "could not write the JSON to stdout");
    return 0;
}
