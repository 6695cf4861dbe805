/* jobattach: the attach session of a one-off job (`pier run`), spoken
 * with the client in Flynn's flynn-attach/0 frames (FLYNN-CLIENT-CONTRACT.md
 * section 3.7, host/attach.h).
 *
 * After the 101 the session waits (reading, and keeping, whatever stdin the
 * client sends meanwhile) until the job's record says the agent has
 * started it, then attaches to it on the agent (POST /host/jobs/:id/attach,
 * an upgrade answered by 101 and then frames straight away: pier's agent
 * sends no attach-state byte, so there is none to hold back) and relays:
 * the client's frames go on as they are, the agent's are read as frames so
 * the session knows when the exit status has gone out.
 *
 * A short job can end before the attach reaches the agent (its shim has
 * ended and nobody holds its output). Then the output comes from the
 * job's log on the agent (jobs.c keeps an attached job's log) and the
 * exit status from its record. A job that failed to start gets an error
 * frame with the host's reason and exit status 1. A client that goes away
 * before its exit status has gone out gets its job stopped: `pier run`
 * dies with its client. */
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "controller/ctl.h"
#include "host/attach.h"
#include "lib/cleanup.h"
#include "lib/http1.h"
#include "lib/httpc.h"
#include "lib/jsonx.h"
#include "lib/keys.h"
#include "lib/log.h"

/* How long an attached job may take to start (a slug download, say). */
#define START_WAIT_MS (5 * 60 * 1000)
/* How long to wait for the record of a job whose agent connection broke. */
#define END_WAIT_MS (15 * 1000)
/* Bytes buffered per direction of a relay. */
#define RELAY_MAX (1 << 20)
/* A write to a client or agent that makes no progress for this long fails. */
#define SEND_TIMEOUT_MS 30000

static const char *str_field(const json_t *j, const char *name)
{
    return json_string_value(json_object_get(j, name));
}

static void job_key(struct buf *key, const char *id)
{
    buf_reset(key);
    buf_printf(key, "%s%s", KEYS_JOBS, id);
}

/* ---- sockets ---- */

/* Sends all of b (MSG_DONTWAIT, waiting for room), then empties it. */
static int send_all(int fd, struct buf *b)
{
    size_t off = 0;
    while (off < b->len) {
        ssize_t n = send(fd, b->p + off, b->len - off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno != EAGAIN)
            return -1;
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        if (poll(&p, 1, SEND_TIMEOUT_MS) <= 0 || (p.revents & (POLLERR | POLLHUP | POLLNVAL)))
            return -1;
    }
    buf_reset(b);
    return 0;
}

/* Connects to HOST:PORT (or [V6]:PORT) within timeout_ms; a non-blocking
 * socket. */
static int dial(const char *addr, int timeout_ms, struct pier_err *err)
{
    cleanup_free char *host = NULL;
    const char *port;
    if (addr[0] == '[' && strchr(addr, ']')) {
        const char *end = strchr(addr, ']');
        host = strndup(addr + 1, (size_t)(end - addr - 1));
        port = end[1] == ':' ? end + 2 : "";
    } else {
        const char *colon = strrchr(addr, ':');
        host = colon ? strndup(addr, (size_t)(colon - addr)) : xstrdup(addr);
        port = colon ? colon + 1 : "";
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai = NULL;
    if (!host || getaddrinfo(host, port, &hints, &ai) != 0 || !ai)
        return err_set(err, PIER_EUNAVAIL, "host agent at %s: cannot resolve the address", addr);
    int fd = -1, e = 0;
    for (struct addrinfo *p = ai; p && fd < 0; p = p->ai_next) {
        fd = socket(p->ai_family, p->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
            continue;
        if (connect(fd, p->ai_addr, p->ai_addrlen) < 0) {
            struct pollfd pf = {.fd = fd, .events = POLLOUT};
            socklen_t len = sizeof(e);
            e = errno;
            if (e == EINPROGRESS) {
                e = poll(&pf, 1, timeout_ms) == 1 ? 0 : ETIMEDOUT;
                if (!e && getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &len) < 0)
                    e = errno;
            }
            if (e) {
                close(fd);
                fd = -1;
            }
        }
    }
    freeaddrinfo(ai);
    if (fd < 0)
        return err_set(err, PIER_EUNAVAIL, "host agent at %s: %s", addr, strerror(e ? e : EIO));
    return fd;
}

/* Reads what fd has within timeout_ms into b (at most max in all). 1 for
 * bytes, 0 at EOF, -1 on an error or the time running out. */
static int read_some(int fd, struct buf *b, size_t max, int timeout_ms)
{
    if (b->len >= max)
        return -1;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, timeout_ms) <= 0)
        return -1;
    buf_grow(b, 16384);
    ssize_t n = recv(fd, b->p + b->len, 16384, MSG_DONTWAIT);
    if (n < 0)
        return errno == EAGAIN || errno == EINTR ? 1 : -1;
    b->len += (size_t)n;
    b->p[b->len] = '\0';
    return n > 0;
}

/* Attaches to job id on its agent. On success returns the connection (now
 * carrying frames) and leaves in *rest the frame bytes that came with the
 * 101. PIER_ECONFLICT or PIER_ENOTFOUND when the agent has no running job
 * to attach to (not started yet, or ended); PIER_EUNAVAIL when it cannot
 * be reached. */
static int agent_attach(struct ctl *c, const char *host_id, const char *id, struct buf *rest,
                        struct pier_err *err)
{
    cleanup_buf struct buf addr = BUF_INIT;
    int rc = ctl_agent_addr(c, host_id, &addr, err);
    if (rc < 0)
        return rc;
    int fd = dial(addr.p, 2000, err);
    if (fd < 0)
        return fd;
    cleanup_buf struct buf req = BUF_INIT;
    buf_printf(&req, "POST /host/jobs/%s/attach HTTP/1.1\r\nHost: %s\r\n", id, addr.p);
    ctl_agent_auth(c, &req);
    buf_puts(&req,
             "\r\nUpgrade: flynn-attach/0\r\nConnection: Upgrade\r\nContent-Length: 0\r\n\r\n");
    struct http1_response *resp = xcalloc(1, sizeof(*resp));
    int head = HTTP1_INCOMPLETE;
    if (send_all(fd, &req) == 0)
        while ((head = http1_parse_response(rest->p ? rest->p : "", rest->len, resp)) ==
                   HTTP1_INCOMPLETE &&
               read_some(fd, rest, HTTP1_MAX_HEAD, 10000) > 0)
            ;
    if (head < 0) {
        free(resp);
        close(fd);
        return err_set(err, PIER_EUNAVAIL, "host agent at %s: no answer to the attach", addr.p);
    }
    int status = resp->status;
    uint64_t body_len = resp->flags & HTTP1_F_CONTENT_LENGTH ? resp->content_length : 0;
    free(resp);
    buf_consume(rest, (size_t)head);
    if (status == 101)
        return fd;
    /* Its error: Flynn's JSON, whose message we pass on. */
    while (rest->len < body_len && body_len < 65536 && read_some(fd, rest, 65536, 5000) > 0)
        ;
    close(fd);
    cleanup_json json_t *e = NULL;
    const char *msg = NULL;
    if (jsonx_parse_object(rest->p ? rest->p : "", rest->len, &e, NULL) == 0)
        msg = str_field(e, "message");
    rc = status == 404 ? PIER_ENOTFOUND : status == 409 ? PIER_ECONFLICT : PIER_EUNAVAIL;
    err_set(err, rc, "host agent at %s: attach to %s: %d %s", addr.p, id, status, msg ? msg : "");
    buf_reset(rest);
    return rc;
}

/* ---- the session ---- */

/* An attached one-off job, from the POST to the end of its connection. */
struct run {
    struct ctl *c;
    char *id, *host_id;
    bool tty;
    bool finished; /* its exit status went out: nothing left to stop */
};

struct session {
    struct run *rn;
    int client;
    struct buf up;   /* frames from the client, for the agent */
    struct buf down; /* frames for the client */
    bool client_gone;
};

/* Takes what the client sent within timeout_ms (stdin can come before the
 * job runs); notes when it has gone. */
static void client_pump(struct session *s, int timeout_ms)
{
    if (s->client_gone)
        return;
    struct pollfd p = {.fd = s->client, .events = s->up.len < RELAY_MAX ? POLLIN : 0};
    if (poll(&p, 1, timeout_ms) <= 0)
        return;
    if (p.revents & POLLIN) {
        buf_grow(&s->up, 16384);
        ssize_t n = recv(s->client, s->up.p + s->up.len, 16384, MSG_DONTWAIT);
        if (n > 0)
            s->up.len += (size_t)n;
        else if (n == 0 || (errno != EAGAIN && errno != EINTR))
            s->client_gone = true;
    } else if (p.revents & (POLLHUP | POLLERR | POLLNVAL)) {
        s->client_gone = true;
    }
}

static void client_send(struct session *s)
{
    if (!s->client_gone && send_all(s->client, &s->down) < 0)
        s->client_gone = true;
    buf_reset(&s->down);
}

static void put_error_frame(struct buf *out, const char *msg, size_t len)
{
    cleanup_free char *m = strndup(msg, len < ATTACH_MAX_FRAME ? len : ATTACH_MAX_FRAME);
    attach_put_error(out, m ? m : "");
}

/* The end of the session: the closing output frames and the exit status. */
static void send_exit(struct session *s, int status)
{
    attach_put_data(&s->down, ATTACH_STDOUT, "", 0);
    if (!s->rn->tty)
        attach_put_data(&s->down, ATTACH_STDERR, "", 0);
    attach_put_exit(&s->down, (uint32_t)status);
    client_send(s);
    s->rn->finished = true;
}

static int record_status(const json_t *rec)
{
    const json_t *st = json_object_get(rec, "exit_status");
    if (json_is_integer(st) && json_integer_value(st) >= 0)
        return (int)json_integer_value(st);
    const char *state = str_field(rec, "state");
    return state && strcmp(state, "down") == 0 ? 0 : 1;
}

enum job_phase { PHASE_WAIT, PHASE_UP, PHASE_ENDED, PHASE_FAILED };

static enum job_phase phase_of(const json_t *rec)
{
    const char *st = str_field(rec, "state");
    if (!st)
        return PHASE_WAIT;
    if (strcmp(st, "up") == 0)
        return PHASE_UP;
    if (strcmp(st, "down") == 0 || strcmp(st, "crashed") == 0)
        return PHASE_ENDED;
    return strcmp(st, "failed") == 0 ? PHASE_FAILED : PHASE_WAIT;
}

/* Waits (until deadline, or the client leaving) for the job to be up or to
 * have ended; *rec gets its record. PHASE_WAIT with err set when it did
 * not come to that. */
static enum job_phase wait_phase(struct session *s, int64_t deadline, json_t **rec,
                                 struct pier_err *err)
{
    cleanup_buf struct buf key = BUF_INIT;
    job_key(&key, s->rn->id);
    while (!s->client_gone) {
        json_t *j = NULL;
        int rc = ctl_get(s->rn->c, key.p, &j, NULL, err);
        if (rc == PIER_ENOTFOUND) {
            err_set(err, PIER_ENOTFOUND, "job %s was deleted", s->rn->id);
            return PHASE_WAIT;
        }
        enum job_phase ph = rc == 0 ? phase_of(j) : PHASE_WAIT;
        if (ph != PHASE_WAIT) {
            *rec = j;
            return ph;
        }
        json_decref(j);
        if (clock_now_ms() >= deadline) {
            err_set(err, PIER_ETIMEOUT, "job %s did not start in time", s->rn->id);
            return PHASE_WAIT;
        }
        client_pump(s, 50);
    }
    err_set(err, PIER_EUNAVAIL, "the client left");
    return PHASE_WAIT;
}

/* Queues for the client the frames of what came from the agent. -1 for
 * bytes that are not frames. */
static int take_frames(struct session *s, struct attach_decoder *dec, bool *saw_exit)
{
    struct attach_frame f;
    int rc;
    while ((rc = attach_next(dec, &f)) == 1) {
        if (*saw_exit)
            continue;
        if (f.type == ATTACH_DATA)
            attach_put_data(&s->down, f.stream, f.data, f.len);
        else if (f.type == ATTACH_ERROR)
            put_error_frame(&s->down, f.data, f.len);
        else if (f.type == ATTACH_EXIT) {
            attach_put_exit(&s->down, f.value);
            *saw_exit = true;
        }
    }
    return rc;
}

/* Moves bytes from fd to b, or b to fd (MSG_DONTWAIT). false at EOF or on
 * an error. */
static bool pull(int fd, struct buf *b)
{
    buf_grow(b, 16384);
    ssize_t n = recv(fd, b->p + b->len, 16384, MSG_DONTWAIT);
    if (n > 0)
        b->len += (size_t)n;
    return n > 0 || (n < 0 && (errno == EAGAIN || errno == EINTR));
}

static bool push(int fd, struct buf *b)
{
    ssize_t n = send(fd, b->p, b->len, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0)
        buf_consume(b, (size_t)n);
    return n >= 0 || errno == EAGAIN || errno == EINTR;
}

enum relay_end { RELAY_EXIT, RELAY_CLIENT_GONE, RELAY_AGENT_GONE };

/* Relays between the client and the agent's attach until the exit status
 * has gone out, either side goes, or the agent breaks the frames. The
 * client's bytes go on as they are (the shim reads them as frames); the
 * agent's are read as frames, to know when the exit status has passed. */
static enum relay_end relay(struct session *s, int agent, struct buf *first)
{
    struct attach_decoder dec = {.in = BUF_INIT};
    buf_append(&dec.in, first->p, first->len);
    bool saw_exit = false, agent_eof = take_frames(s, &dec, &saw_exit) < 0;
    enum relay_end end = RELAY_AGENT_GONE;
    while (!s->client_gone) {
        if (saw_exit || (agent_eof && !s->down.len)) {
            client_send(s);
            end = saw_exit ? RELAY_EXIT : RELAY_AGENT_GONE;
            break;
        }
        struct pollfd p[2] = {
            {.fd = s->client,
             .events = (short)((s->up.len < RELAY_MAX ? POLLIN : 0) | (s->down.len ? POLLOUT : 0))},
            {.fd = agent_eof ? -1 : agent,
             .events = (short)((s->down.len < RELAY_MAX ? POLLIN : 0) | (s->up.len ? POLLOUT : 0))},
        };
        if (poll(p, 2, -1) < 0) {
            if (errno != EINTR)
                s->client_gone = true;
            continue;
        }
        if ((p[0].revents & POLLIN && !pull(s->client, &s->up)) ||
            (p[0].revents & (POLLERR | POLLNVAL)) ||
            (p[0].revents & POLLOUT && !push(s->client, &s->down)) ||
            (p[0].revents & POLLHUP && !(p[0].revents & POLLIN))) {
            s->client_gone = true;
            break;
        }
        if (p[1].revents & (POLLIN | POLLHUP | POLLERR)) {
            if (!pull(agent, &dec.in) || take_frames(s, &dec, &saw_exit) < 0)
                agent_eof = true;
        }
        if (!agent_eof && p[1].revents & POLLOUT && !push(agent, &s->up))
            agent_eof = true;
    }
    attach_decoder_free(&dec);
    return s->client_gone ? RELAY_CLIENT_GONE : end;
}

/* The job ended before the attach reached it: its output is in its log on
 * the agent, its exit status in its record. */
static void finish_from_log(struct session *s, const json_t *rec)
{
    struct run *rn = s->rn;
    cleanup_buf struct buf addr = BUF_INIT;
    cleanup_buf struct buf url = BUF_INIT;
    cleanup_buf struct buf auth = BUF_INIT;
    struct pier_err err = {0};
    if (ctl_agent_addr(rn->c, rn->host_id, &addr, &err) == 0) {
        buf_printf(&url, "http://%s/host/jobs/%s/log?format=json", addr.p, rn->id);
        ctl_agent_auth(rn->c, &auth);
        const char *headers[] = {auth.p, NULL};
        const struct httpc_req req = {
            .url = url.p, .headers = headers, .timeout_ms = 10000, .max_body = 32 << 20};
        struct httpc_resp resp = {0};
        struct httpc *hc = httpc_new();
        int rc = httpc_do(hc, &req, &resp, &err);
        for (char *line = resp.body.p; rc == 0 && resp.status == 200 && line && *line;) {
            char *nl = strchr(line, '\n');
            size_t len = nl ? (size_t)(nl - line) : strlen(line);
            json_t *m = NULL;
            if (jsonx_parse_object(line, len, &m, NULL) == 0 && str_field(m, "msg")) {
                const char *stream = str_field(m, "stream");
                cleanup_buf struct buf out = BUF_INIT;
                buf_printf(&out, "%s\n", str_field(m, "msg"));
                attach_put_data(&s->down,
                                stream && strcmp(stream, "stderr") == 0 ? ATTACH_STDERR
                                                                        : ATTACH_STDOUT,
                                out.p, out.len);
            }
            json_decref(m);
            line = nl ? nl + 1 : NULL;
            if (s->down.len > 65536)
                client_send(s);
        }
        if (rc < 0 || resp.status != 200)
            log_warn("controller", "cannot read the log of an ended attached job",
                     "job=%s err=\"%s\" status=%ld", rn->id, err.msg, resp.status);
        httpc_resp_release(&resp);
        httpc_free(hc);
    }
    send_exit(s, record_status(rec));
}

/* An attach may sit idle for hours; TCP keepalives find a client that
 * vanished without closing (in about 2 minutes), so its job is stopped. */
static void keepalive(int fd)
{
    int on = 1, idle = 60, intvl = 10, cnt = 6;
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof(on));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
}

/* How many times a session attaches to its job again after the agent's
 * connection broke while the record still says it runs (an agent
 * restarting: its jobs go on). */
#define MAX_REATTACH 3

/* Runs on the client's connection once it has its 101: waits for the job,
 * attaches, relays; answers from the log and the record when the job ended
 * first. Leaves rn->finished false when the client has to be told nothing
 * more (it left, or got an error): run_done then stops the job. */
static void run_attach(void *ud, int fd, const char *extra, size_t extra_len)
{
    struct run *rn = ud;
    struct session s = {.rn = rn, .client = fd, .up = BUF_INIT, .down = BUF_INIT};
    buf_append(&s.up, extra, extra_len);
    keepalive(fd);
    struct pier_err err = {0};
    int64_t deadline = clock_now_ms() + START_WAIT_MS;
    int relays = 0, refused = 0;
    while (!s.client_gone && !rn->finished) {
        json_t *rec = NULL;
        enum job_phase ph = wait_phase(&s, deadline, &rec, &err);
        if (ph == PHASE_ENDED && relays) {
            /* Its output went out through the attach: only the status. */
            send_exit(&s, record_status(rec));
        } else if (ph == PHASE_ENDED) {
            finish_from_log(&s, rec);
        } else if (ph == PHASE_FAILED) {
            const char *why = str_field(rec, "host_error");
            attach_put_error(&s.down, why ? why : "the job failed to start");
            send_exit(&s, 1);
        }
        json_decref(rec);
        if (ph != PHASE_UP)
            break;
        cleanup_buf struct buf first = BUF_INIT;
        int afd = agent_attach(rn->c, rn->host_id, rn->id, &first, &err);
        if (afd >= 0) {
            log_info("controller", "attached", "job=%s host=%s", rn->id, rn->host_id);
            enum relay_end end = relay(&s, afd, &first);
            close(afd);
            rn->finished = end == RELAY_EXIT;
            if (end != RELAY_AGENT_GONE || ++relays > MAX_REATTACH) {
                err_set(&err, PIER_EUNAVAIL, "lost the connection to the job's host");
                break;
            }
        } else if ((afd != PIER_ECONFLICT && afd != PIER_ENOTFOUND) || ++refused > 100) {
            break;
        }
        /* The job ended meanwhile, or is not attachable yet: look again. */
        deadline = clock_now_ms() + END_WAIT_MS;
        client_pump(&s, 100);
    }
    if (!s.client_gone && !rn->finished) {
        log_warn("controller", "attach failed", "job=%s err=\"%s\"", rn->id, err.msg);
        attach_put_error(&s.down, err.msg);
        client_send(&s);
    }
    buf_free(&s.up);
    buf_free(&s.down);
}

/* Also when the client never got its 101: a job nobody is attached to any
 * more is stopped (`pier run` dies with its client). */
static void run_done(void *ud)
{
    struct run *rn = ud;
    if (!rn->finished) {
        struct pier_err err = {0};
        if (ctl_job_stop(rn->c, rn->id, &err) < 0)
            log_warn("controller", "cannot stop a detached one-off job", "job=%s err=\"%s\"",
                     rn->id, err.msg);
        else
            log_info("controller", "one-off job stopped: its client left", "job=%s", rn->id);
    }
    free(rn->id);
    free(rn->host_id);
    free(rn);
}

void ctl_job_attach(struct httpd_req *r, struct ctl *c, const char *id, const char *host_id,
                    bool tty)
{
    struct run *rn = xcalloc(1, sizeof(*rn));
    rn->c = c;
    rn->id = xstrdup(id);
    rn->host_id = xstrdup(host_id);
    rn->tty = tty;
    httpd_reply_upgrade(r, "flynn-attach/0", run_attach, run_done, rn);
}
