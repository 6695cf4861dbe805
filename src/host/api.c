#include "host/api.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "host/joblog.h"
#include "host/jobspec.h"
#include "host/shim.h"
#include "lib/cleanup.h"
#include "lib/jsonx.h"
#include "lib/log.h"

/* What every handler shares; the server owns it (httpd_set_data). */
struct host_api {
    struct jobs *jobs;
    _Atomic(struct hostrec *) hr; /* set after the start: the record needs our port */
    char *host_id;
};

/* The longest stop grace the API accepts (what a record's stop_grace may say). */
#define MAX_GRACE_MS (3600 * 1000)
/* "lines" above this reads as this (the files are bounded anyway). */
#define MAX_LOG_LINES 10000000
/* Bytes of stored lines read at a time for a log response. */
#define LOG_CHUNK (64 * 1024)
/* Bytes buffered per direction of an attach relay. */
#define RELAY_BUF (64 * 1024)

static void bad_request(struct httpd_req *r, const char *msg)
{
    httpd_reply_error(r, 400, "validation_error", 3, "%s", msg);
}

/* Replies with the job as now known, or its error. */
static void reply_job(struct httpd_req *r, struct host_api *a, const char *id)
{
    json_t *job = NULL;
    struct pier_err err = {0};
    if (jobs_get(a->jobs, id, &job, &err) < 0) {
        httpd_reply_err(r, &err);
        return;
    }
    httpd_reply_json(r, 200, job);
}

/* ---- status and jobs ---- */

static void status_get(struct httpd_req *r, void *ud)
{
    struct host_api *a = ud;
    int running = 0, starting = 0, queued = 0;
    int64_t memory = 0, cpu = 0;
    jobs_usage(a->jobs, &running, &memory, &cpu);
    jobs_starts(a->jobs, &starting, &queued);
    cleanup_json json_t *all = jobs_list(a->jobs);
    struct hostrec *hr = atomic_load(&a->hr);
    json_t *host = hr ? hostrec_json(hr) : json_null(); /* new reference, stolen below */
    json_t *j = json_pack("{s:s, s:o, s:{s:i, s:I, s:i, s:i}, s:{s:I, s:I}}", "id", a->host_id,
                          "host", host, "jobs", "running", running, "known",
                          (json_int_t)json_array_size(all), "starting", starting, "queued", queued,
                          "allocated", "memory", (json_int_t)memory, "cpu", (json_int_t)cpu);
    httpd_reply_json(r, 200, j);
}

static void jobs_get_all(struct httpd_req *r, void *ud)
{
    struct host_api *a = ud;
    httpd_reply_json(r, 200, jobs_list(a->jobs));
}

static void job_get(struct httpd_req *r, void *ud)
{
    reply_job(r, ud, httpd_param(r, "id"));
}

static void add_job(struct httpd_req *r, struct host_api *a, json_t *spec)
{
    json_t *rec = NULL;
    struct pier_err err = {0};
    if (jobs_add(a->jobs, spec, &rec, &err) < 0) {
        httpd_reply_err(r, &err);
        return;
    }
    log_info("host", "job added through the API", "job=%s",
             json_string_value(json_object_get(rec, "id")));
    httpd_reply_json(r, 200, rec);
}

static void job_post(struct httpd_req *r, void *ud)
{
    cleanup_json json_t *body = NULL;
    if (httpd_body_json(r, &body) < 0)
        return;
    add_job(r, ud, body);
}

static void job_put(struct httpd_req *r, void *ud)
{
    const char *id = httpd_param(r, "id");
    cleanup_json json_t *body = NULL;
    if (httpd_body_json(r, &body) < 0)
        return;
    json_t *given = json_object_get(body, "id"); /* borrowed */
    if (given && !json_is_null(given) && !json_is_string(given)) {
        bad_request(r, "id: must be a string");
        return;
    }
    if (json_is_string(given) && strcmp(json_string_value(given), id) != 0) {
        httpd_reply_error(r, 400, "validation_error", 3,
                          "id: the body says \"%s\" but the path says \"%s\"",
                          json_string_value(given), id);
        return;
    }
    json_object_set_new(body, "id", json_string(id));
    add_job(r, ud, body);
}

/* A duration from a query string: "500ms", "10s", "1m" or a number of
 * seconds, with jobspec_duration_ms' rules. */
static int parse_duration(const char *s, int64_t *ms, struct pier_err *err)
{
    char *end = NULL;
    errno = 0;
    double d = strtod(s, &end);
    bool number = *s && end && !*end && errno == 0;
    cleanup_json json_t *v = number ? json_real(d) : json_string(s);
    if (!v)
        return err_set(err, PIER_EINVAL, "not a duration");
    return jobspec_duration_ms(v, ms, err);
}

static void job_delete(struct httpd_req *r, void *ud)
{
    struct host_api *a = ud;
    const char *id = httpd_param(r, "id");
    const char *g = httpd_query(r, "grace");
    int64_t grace = -1;
    struct pier_err err = {0};
    if (g) {
        if (parse_duration(g, &grace, &err) < 0) {
            httpd_reply_error(r, 400, "validation_error", 3, "grace: %s", err.msg);
            return;
        }
        if (grace < 0 || grace > MAX_GRACE_MS) {
            httpd_reply_error(r, 400, "validation_error", 3, "grace \"%s\": 0 to 1h", g);
            return;
        }
    }
    if (jobs_stop(a->jobs, id, (int)grace, &err) < 0) {
        httpd_reply_err(r, &err);
        return;
    }
    log_info("host", "job stop asked through the API", "job=%s grace_ms=%" PRId64, id, grace);
    reply_job(r, a, id);
}

/* ---- signals ---- */

static const struct {
    const char *name;
    int sig;
} SIGNALS[] = {
    {"HUP", SIGHUP},       {"INT", SIGINT},   {"QUIT", SIGQUIT},     {"ILL", SIGILL},
    {"TRAP", SIGTRAP},     {"ABRT", SIGABRT}, {"IOT", SIGIOT},       {"BUS", SIGBUS},
    {"FPE", SIGFPE},       {"KILL", SIGKILL}, {"USR1", SIGUSR1},     {"SEGV", SIGSEGV},
    {"USR2", SIGUSR2},     {"PIPE", SIGPIPE}, {"ALRM", SIGALRM},     {"TERM", SIGTERM},
    {"STKFLT", SIGSTKFLT}, {"CHLD", SIGCHLD}, {"CONT", SIGCONT},     {"STOP", SIGSTOP},
    {"TSTP", SIGTSTP},     {"TTIN", SIGTTIN}, {"TTOU", SIGTTOU},     {"URG", SIGURG},
    {"XCPU", SIGXCPU},     {"XFSZ", SIGXFSZ}, {"VTALRM", SIGVTALRM}, {"PROF", SIGPROF},
    {"WINCH", SIGWINCH},   {"IO", SIGIO},     {"POLL", SIGPOLL},     {"PWR", SIGPWR},
    {"SYS", SIGSYS},
};

/* A signal number (1-64) or name, with or without "SIG", in any case.
 * Returns the number, or 0 for something else. */
static int parse_signal(const char *s)
{
    if (*s >= '0' && *s <= '9') {
        char *end;
        long n = strtol(s, &end, 10);
        return !*end && n >= 1 && n <= 64 ? (int)n : 0;
    }
    if (strncasecmp(s, "SIG", 3) == 0)
        s += 3;
    for (size_t i = 0; i < sizeof(SIGNALS) / sizeof(SIGNALS[0]); i++)
        if (strcasecmp(s, SIGNALS[i].name) == 0)
            return SIGNALS[i].sig;
    return 0;
}

static void job_signal(struct httpd_req *r, void *ud)
{
    struct host_api *a = ud;
    const char *id = httpd_param(r, "id");
    const char *name = httpd_param(r, "signal");
    int sig = parse_signal(name);
    if (!sig) {
        httpd_reply_error(r, 400, "validation_error", 3,
                          "signal \"%s\": not a signal (a number 1-64, or a name such as TERM, "
                          "SIGHUP, INT, KILL, USR1)",
                          name);
        return;
    }
    struct pier_err err = {0};
    if (jobs_signal(a->jobs, id, sig, &err) < 0) {
        httpd_reply_err(r, &err);
        return;
    }
    log_info("host", "job signalled through the API", "job=%s signal=%d", id, sig);
    reply_job(r, a, id);
}

/* ---- logs ---- */

struct log_stream {
    struct host_api *a;
    char *id, *dir;
    char *type; /* the job's process type, or NULL */
    struct joblog_query q;
    bool follow, json;
    struct joblog_reader *reader;
    struct buf raw;
};

static void log_stream_free(void *ud)
{
    struct log_stream *ls = ud;
    joblog_reader_close(ls->reader);
    buf_free(&ls->raw);
    free(ls->id);
    free(ls->dir);
    free(ls->type);
    free(ls);
}

/* Appends s to out with every byte sequence that is not UTF-8 replaced by
 * U+FFFD: a job's output is bytes, and JSON strings are text. */
static void put_utf8(struct buf *out, struct str s)
{
    const unsigned char *p = (const unsigned char *)s.p, *e = p + s.len;
    while (p < e) {
        size_t n = 0;
        if (*p < 0x80)
            n = 1;
        else if (*p >= 0xc2 && *p <= 0xdf)
            n = 2;
        else if (*p >= 0xe0 && *p <= 0xef)
            n = 3;
        else if (*p >= 0xf0 && *p <= 0xf4)
            n = 4;
        bool ok = n > 0 && (size_t)(e - p) >= n;
        for (size_t i = 1; ok && i < n; i++)
            ok = (p[i] & 0xc0) == 0x80;
        /* Overlong forms, surrogates and code points past U+10FFFF. */
        if (ok && n == 3)
            ok = !(p[0] == 0xe0 && p[1] < 0xa0) && !(p[0] == 0xed && p[1] >= 0xa0);
        if (ok && n == 4)
            ok = !(p[0] == 0xf0 && p[1] < 0x90) && !(p[0] == 0xf4 && p[1] >= 0x90);
        if (ok) {
            buf_append(out, p, n);
            p += n;
        } else {
            buf_puts(out, "\xef\xbf\xbd");
            p++;
        }
    }
}

/* Turns stored lines into Flynn's log messages, one JSON object a line. */
static void log_to_json(struct log_stream *ls, struct str raw, struct buf *out)
{
    const char *p = raw.p, *e = raw.p + raw.len;
    cleanup_buf struct buf text = BUF_INIT;
    while (p < e) {
        const char *nl = memchr(p, '\n', (size_t)(e - p));
        struct str line = {p, nl ? (size_t)(nl - p) : (size_t)(e - p)};
        p = nl ? nl + 1 : e;
        struct joblog_line l;
        if (joblog_parse_line(line, &l) < 0)
            continue;
        buf_reset(&text);
        put_utf8(&text, l.msg);
        json_t *m = json_object();
        json_object_set_new(m, "host_id", json_string(ls->a->host_id));
        json_object_set_new(m, "job_id", json_string(ls->id));
        json_object_set_new(m, "msg", json_stringn(text.p ? text.p : "", text.len));
        if (ls->type)
            json_object_set_new(m, "process_type", json_string(ls->type));
        json_object_set_new(m, "source", json_string("app"));
        json_object_set_new(m, "stream", json_stringn(l.stream.p, l.stream.len));
        json_object_set_new(m, "timestamp", json_stringn(l.ts.p, l.ts.len));
        jsonx_dump(out, m);
        buf_putc(out, '\n');
        json_decref(m);
    }
}

/* Whether the job can write no more: it has ended (or the agent no longer
 * knows it) and its shim, the log's writer, is gone. */
static bool job_ended(struct log_stream *ls)
{
    json_t *job = NULL;
    bool ended = true;
    if (jobs_get(ls->a->jobs, ls->id, &job, NULL) == 0) {
        const char *st = json_string_value(json_object_get(job, "state"));
        ended = st && (strcmp(st, "down") == 0 || strcmp(st, "crashed") == 0 ||
                       strcmp(st, "failed") == 0);
        json_decref(job);
    }
    return ended && shim_alive(ls->dir) == 0;
}

/* Reads what is there into out (formatted). 1: something, 0: nothing now,
 * or a negative error. */
static int log_read(struct log_stream *ls, struct buf *out)
{
    buf_reset(&ls->raw);
    int rc = joblog_reader_next(ls->reader, &ls->raw, LOG_CHUNK);
    if (rc <= 0)
        return rc;
    if (ls->json)
        log_to_json(ls, buf_str(&ls->raw), out);
    else
        buf_append(out, ls->raw.p, ls->raw.len);
    return 1;
}

static int log_next(void *ud, struct buf *out, int timeout_ms)
{
    struct log_stream *ls = ud;
    struct pier_err err = {0};
    if (!ls->reader) {
        /* A job that has not started yet has no directory: its log is
         * empty, and a follower waits for it. */
        int rc = joblog_reader_open(ls->dir, &ls->q, &ls->reader, &err);
        if (rc == PIER_ENOTFOUND && ls->follow && !job_ended(ls)) {
            usleep((useconds_t)timeout_ms * 1000);
            return 1;
        }
        if (rc == PIER_ENOTFOUND)
            return 0;
        if (rc < 0) {
            log_warn("host", "cannot read a job's log", "job=%s error=\"%s\"", ls->id, err.msg);
            return rc;
        }
    }
    int rc = log_read(ls, out);
    if (rc != 0 || !ls->follow)
        return rc;
    /* Nothing now. Whether the job has ended is asked before the last
     * read, so that lines written just before it ended are not lost. */
    if (job_ended(ls))
        return log_read(ls, out);
    joblog_reader_wait(ls->reader, timeout_ms);
    return 1;
}

/* Reads the log query: lines, follow, stream, format. On bad input replies
 * 400 and returns false. */
static bool log_query(struct httpd_req *r, struct log_stream *ls)
{
    const char *lines = httpd_query(r, "lines"), *follow = httpd_query(r, "follow");
    const char *stream = httpd_query(r, "stream"), *format = httpd_query(r, "format");
    ls->q.lines = -1;
    if (lines) {
        char *end;
        errno = 0;
        long long n = strtoll(lines, &end, 10);
        if (!*lines || *end || n < 0 || errno == ERANGE) {
            bad_request(r, "lines: a number of lines (0 or more)");
            return false;
        }
        ls->q.lines = n > MAX_LOG_LINES ? MAX_LOG_LINES : n;
    }
    if (follow) {
        if (strcmp(follow, "true") == 0 || strcmp(follow, "1") == 0)
            ls->follow = true;
        else if (strcmp(follow, "false") != 0 && strcmp(follow, "0") != 0 && *follow) {
            bad_request(r, "follow: true or false");
            return false;
        }
    }
    if (stream && *stream) {
        /* One stream, or a comma-separated list of them. */
        cleanup_free char *copy = xstrdup(stream);
        char *save = NULL;
        for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
            if (strcmp(t, "stdout") == 0) {
                ls->q.streams |= 1 << JOBLOG_STDOUT;
            } else if (strcmp(t, "stderr") == 0) {
                ls->q.streams |= 1 << JOBLOG_STDERR;
            } else {
                bad_request(r, "stream: stdout or stderr");
                return false;
            }
        }
    }
    if (format && *format) {
        if (strcmp(format, "json") == 0) {
            ls->json = true;
        } else if (strcmp(format, "text") != 0) {
            bad_request(r, "format: json or text");
            return false;
        }
    }
    return true;
}

static void job_log(struct httpd_req *r, void *ud)
{
    struct host_api *a = ud;
    const char *id = httpd_param(r, "id");
    struct log_stream *ls = xcalloc(1, sizeof(*ls));
    ls->a = a;
    if (!log_query(r, ls)) {
        log_stream_free(ls);
        return;
    }
    /* The directory of a job the agent no longer lists may still be kept,
     * with its log. */
    struct buf dir = BUF_INIT;
    struct pier_err err = {0};
    if (jobs_dir(a->jobs, id, &dir, &err) < 0) {
        buf_free(&dir);
        log_stream_free(ls);
        httpd_reply_err(r, &err);
        return;
    }
    ls->dir = buf_detach(&dir);
    ls->id = xstrdup(id);
    json_t *job = NULL;
    if (jobs_get(a->jobs, id, &job, NULL) == 0) {
        const char *type = json_string_value(json_object_get(job, "type"));
        ls->type = type && *type ? xstrdup(type) : NULL;
        json_decref(job);
    }
    /* A follow of a running job only ends when the job does: endless (a
     * drain ends it; the client asks again). */
    if (ls->follow && !job_ended(ls))
        httpd_reply_stream_endless(r, 200, "text/plain", log_next, log_stream_free, ls);
    else
        httpd_reply_stream(r, 200, "text/plain", log_next, log_stream_free, ls);
}

/* ---- attach ----
 *
 * The shim already speaks the frames (attach.h) on the socket jobs_attach
 * hands us, so the agent only relays bytes between it and the client: each
 * direction has its own buffer, and a full buffer stops reading its side
 * (backpressure, no unbounded memory). The client's EOF is passed on as a
 * half-close; the relay ends when the shim closes (after the exit frame),
 * when the client is gone both ways, or on an error on either side. */

struct relay {
    int shim;
};

struct half {
    int from, to;
    struct buf b;
    bool eof;
};

static void relay_free(void *ud)
{
    struct relay *rl = ud;
    if (rl->shim >= 0)
        close(rl->shim);
    free(rl);
}

static void set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0)
        fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

/* An attach may sit idle for hours; TCP keepalives find a client that
 * vanished without closing (about 2 minutes). */
static void keepalive(int fd)
{
    int on = 1, idle = 60, intvl = 10, cnt = 6;
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof(on));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
}

/* Reads what h->from has into h's buffer. false on an error. */
static bool half_read(struct half *h)
{
    buf_grow(&h->b, RELAY_BUF);
    ssize_t n = recv(h->from, h->b.p + h->b.len, RELAY_BUF - h->b.len, 0);
    if (n > 0) {
        h->b.len += (size_t)n;
        h->b.p[h->b.len] = '\0';
    } else if (n == 0) {
        h->eof = true;
    } else if (errno != EAGAIN && errno != EINTR) {
        return false;
    }
    return true;
}

/* Writes what h's buffer holds to h->to; passes on an EOF once it is empty.
 * false on an error. */
static bool half_write(struct half *h)
{
    if (h->b.len) {
        ssize_t n = send(h->to, h->b.p, h->b.len, MSG_NOSIGNAL);
        if (n < 0 && errno != EAGAIN && errno != EINTR)
            return false;
        if (n > 0)
            buf_consume(&h->b, (size_t)n);
    }
    return true;
}

static short half_events_from(const struct half *h)
{
    return !h->eof && h->b.len < RELAY_BUF ? POLLIN : 0;
}

static void relay_run(void *ud, int client, const char *extra, size_t extra_len)
{
    struct relay *rl = ud;
    struct half up = {.from = client, .to = rl->shim, .b = BUF_INIT};
    struct half down = {.from = rl->shim, .to = client, .b = BUF_INIT};
    buf_append(&up.b, extra, extra_len);
    set_nonblock(client);
    set_nonblock(rl->shim);
    keepalive(client);
    bool up_closed = false, shim_hup = false, ok = true;
    while (ok) {
        struct pollfd p[2] = {
            {.fd = client, .events = half_events_from(&up) | (down.b.len ? POLLOUT : 0)},
            {.fd = rl->shim, .events = half_events_from(&down) | (up.b.len ? POLLOUT : 0)},
        };
        /* A hung-up shim reports POLLHUP whatever we ask: leave it out of
         * the poll while its buffer is full, or the loop would spin. */
        if (shim_hup && !p[1].events)
            p[1].fd = -1;
        if (poll(p, 2, -1) < 0) {
            ok = errno == EINTR;
            continue;
        }
        /* Both ways shut (the client is gone, or the server stops). */
        if (p[0].revents & (POLLHUP | POLLERR | POLLNVAL) || p[1].revents & (POLLERR | POLLNVAL))
            break;
        if (p[0].revents & POLLIN)
            ok = half_read(&up);
        shim_hup = shim_hup || (p[1].revents & POLLHUP);
        if (ok && p[1].revents & (POLLIN | POLLHUP) && half_events_from(&down))
            ok = half_read(&down);
        if (ok && p[1].revents & POLLOUT)
            ok = half_write(&up);
        if (ok && p[0].revents & POLLOUT)
            ok = half_write(&down);
        if (up.eof && !up.b.len && !up_closed) {
            shutdown(rl->shim, SHUT_WR);
            up_closed = true;
        }
        /* The shim has said all (its last frame is the exit status). */
        if (down.eof && !down.b.len)
            break;
    }
    buf_free(&up.b);
    buf_free(&down.b);
}

static void job_attach(struct httpd_req *r, void *ud)
{
    struct host_api *a = ud;
    const char *id = httpd_param(r, "id");
    const char *up = httpd_header(r, "Upgrade");
    if (!up || !httpd_header_has(r, "Upgrade", "flynn-attach/0")) {
        bad_request(r, "attach needs the headers \"Upgrade: flynn-attach/0\" and \"Connection: "
                       "upgrade\" (the stream then carries attach frames)");
        return;
    }
    struct pier_err err = {0};
    int fd = jobs_attach(a->jobs, id, &err);
    if (fd < 0) {
        httpd_reply_err(r, &err);
        return;
    }
    log_info("host", "attached", "job=%s", id);
    struct relay *rl = xcalloc(1, sizeof(*rl));
    rl->shim = fd;
    httpd_reply_upgrade(r, "flynn-attach/0", relay_run, relay_free, rl);
}

/* ---- the server ---- */

static void host_api_free(void *data)
{
    struct host_api *a = data;
    if (!a)
        return;
    free(a->host_id);
    free(a);
}

void host_api_set_hostrec(struct httpd *api, struct hostrec *hr)
{
    struct host_api *a = api ? httpd_data(api) : NULL;
    if (a)
        atomic_store(&a->hr, hr);
}

int host_api_start(const struct host_api_opts *o, struct jobs *jobs, struct hostrec *hr,
                   struct httpd **out, struct pier_err *err)
{
    *out = NULL;
    struct host_api *a = xcalloc(1, sizeof(*a));
    a->jobs = jobs;
    atomic_store(&a->hr, hr);
    a->host_id = xstrdup(o->host_id ? o->host_id : "");
    const struct httpd_options ho = {
        .listen = o->listen,
        .comp = "host",
        .key = o->key,
        .errors = HTTPD_ERRORS_FLYNN,
    };
    struct httpd *h = httpd_new(&ho);
    httpd_set_data(h, a, host_api_free);
    httpd_route(h, "GET", "/host/status", status_get, a, false);
    httpd_route(h, "GET", "/host/jobs", jobs_get_all, a, false);
    httpd_route(h, "POST", "/host/jobs", job_post, a, false);
    httpd_route(h, "GET", "/host/jobs/:id", job_get, a, false);
    httpd_route(h, "PUT", "/host/jobs/:id", job_put, a, false);
    httpd_route(h, "DELETE", "/host/jobs/:id", job_delete, a, false);
    httpd_route(h, "PUT", "/host/jobs/:id/signal/:signal", job_signal, a, false);
    httpd_route(h, "GET", "/host/jobs/:id/log", job_log, a, false);
    httpd_route(h, "POST", "/host/jobs/:id/attach", job_attach, a, false);
    int rc = httpd_start(h, err);
    if (rc < 0) {
        httpd_free(h);
        return rc;
    }
    *out = h;
    return 0;
}
