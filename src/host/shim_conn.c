/* The shim's control socket and the clients on it.
 *
 * A client sends one command line (see shim.h); "attach" turns its
 * connection into a stream of attach frames: container output and the exit
 * status go out, stdin, signals and resizes come in. Output nobody is
 * attached to waits in s->backlog (whole frames, the last BACKLOG_MAX bytes)
 * for the next attacher.
 *
 * Nothing a client does may end the shim: commands are single lines of
 * bounded length that must come within LINE_TIMEOUT_MS, frames go through
 * the decoder, clients are non-blocking, and one that falls more than
 * CLIENT_MAX_QUEUE behind is dropped. */
#include "host/shim_int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <termios.h>
#include <unistd.h>

#include "host/attach.h"
#include "host/shim.h"
#include "lib/cleanup.h"
#include "lib/log.h"

#define BACKLOG_MAX (64 << 10)     /* output kept for the next attacher */
#define CLIENT_MAX_QUEUE (1 << 20) /* an attached client this far behind is dropped */
#define STDIN_MAX_QUEUE (1 << 20)  /* past this, attached clients are not read */
#define MAX_ATTACHED 8             /* of the MAX_CONNS, attached at once */
#define LINE_MAX_LEN 128           /* a command line */
#define LINE_TIMEOUT_MS 5000       /* a command line must come this soon */
#define EXIT_FLUSH_MS 1000         /* for attached clients to take the exit status */

struct shim_conn {
    int fd;
    bool attached;
    bool read_closed; /* the client will send nothing more */
    struct buf line;  /* the command line, before attach */
    struct attach_decoder dec;
    struct buf out; /* bytes to send */
    int64_t deadline_ms;
};

/* ------------------------------------------------------------ listener */

int shim_conn_listen(struct shim *s)
{
    struct sockaddr_un sa;
    socklen_t len;
    cleanup_close int dirfd = -1;
    unlinkat(s->dirfd, "shim.sock", 0);
    int r = shim_sock_addr(s->dir, "shim.sock", &sa, &len, &dirfd);
    if (r < 0)
        return r;
    s->listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (s->listen_fd < 0)
        return -errno;
    mode_t old = umask(077);
    r = bind(s->listen_fd, (struct sockaddr *)&sa, len) < 0 ? -errno : 0;
    umask(old);
    if (r == 0 && listen(s->listen_fd, 16) < 0)
        r = -errno;
    return r;
}

void shim_conn_unlisten(struct shim *s)
{
    if (s->listen_fd < 0)
        return;
    close(s->listen_fd);
    s->listen_fd = -1;
    unlinkat(s->dirfd, "shim.sock", 0);
}

/* ------------------------------------------------------------ clients */

static void conn_free(struct shim_conn *c)
{
    close(c->fd);
    buf_free(&c->line);
    buf_free(&c->out);
    attach_decoder_free(&c->dec);
    free(c);
}

static void drop(struct shim *s, int i)
{
    conn_free(s->conns[i]);
    s->conns[i] = NULL;
}

/* Sends what it can of c->out without blocking. Returns -1 when the client
 * is gone. */
static int conn_flush(struct shim_conn *c)
{
    while (c->out.len) {
        ssize_t n = send(c->fd, c->out.p, c->out.len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return errno == EAGAIN ? 0 : -1;
        buf_consume(&c->out, (size_t)n);
    }
    return 0;
}

/* A one-line answer, then the connection is closed. What the client sent
 * beyond its line is read away first: closing a unix socket with unread
 * data makes the peer's next read fail, before it has read the answer. */
static void answer(struct shim *s, int i, const char *text)
{
    struct shim_conn *c = s->conns[i];
    buf_puts(&c->out, text);
    conn_flush(c);
    char scratch[4096];
    for (int k = 0; k < 16 && recv(c->fd, scratch, sizeof(scratch), MSG_DONTWAIT) > 0; k++)
        ;
    drop(s, i);
}

/* Queues a frame for an attached client; drops one that is too far behind. */
static void conn_send(struct shim *s, int i, const struct buf *frame)
{
    struct shim_conn *c = s->conns[i];
    buf_append(&c->out, frame->p, frame->len);
    if (c->out.len > CLIENT_MAX_QUEUE) {
        log_warn("shim", "dropping a slow attached client", "job=%s", s->o.id);
        drop(s, i);
    } else if (conn_flush(c) < 0) {
        drop(s, i);
    }
}

static int attached_count(struct shim *s)
{
    int n = 0;
    for (int i = 0; i < MAX_CONNS; i++)
        n += s->conns[i] && s->conns[i]->attached;
    return n;
}

/* Output goes to the log and to attached clients; with nobody attached,
 * the last BACKLOG_MAX bytes of it wait for the next one. */
void shim_conn_deliver(struct shim *s, enum joblog_stream stream, const char *data, size_t n)
{
    if (s->log)
        joblog_write(s->log, stream, data, n);
    cleanup_buf struct buf frame = BUF_INIT;
    attach_put_data(&frame, (uint8_t)stream, data, n);
    if (attached_count(s) == 0) {
        buf_append(&s->backlog, frame.p, frame.len);
        /* drop whole frames from the front: 6 bytes of head, then len */
        while (s->backlog.len > BACKLOG_MAX) {
            uint32_t len;
            memcpy(&len, s->backlog.p + 2, 4);
            buf_consume(&s->backlog, 6 + (size_t)ntohl(len));
        }
        return;
    }
    for (int i = 0; i < MAX_CONNS; i++)
        if (s->conns[i] && s->conns[i]->attached)
            conn_send(s, i, &frame);
}

/* ------------------------------------------------------------ attach frames in */

void shim_write_stdin(struct shim *s)
{
    while (s->in_fd >= 0 && s->in_q.len) {
        ssize_t n = write(s->in_fd, s->in_q.p, s->in_q.len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return;
        if (n <= 0) { /* nobody reads stdin any more */
            buf_reset(&s->in_q);
            break;
        }
        buf_consume(&s->in_q, (size_t)n);
    }
    if (s->in_eof && !s->in_q.len && s->in_fd >= 0 && s->in_fd != s->master) {
        close(s->in_fd);
        s->in_fd = -1;
    }
}

static void handle_frame(struct shim *s, const struct attach_frame *f)
{
    if (f->type == ATTACH_DATA && f->stream == ATTACH_STDIN && s->in_fd >= 0 && !s->in_eof) {
        if (f->len == 0) {
            /* A TTY has no end of input short of closing it: ignored. */
            s->in_eof = s->in_fd != s->master;
        } else {
            buf_append(&s->in_q, f->data, f->len);
        }
        shim_write_stdin(s);
    } else if (f->type == ATTACH_SIGNAL && f->value > 0 && f->value < 65 && !s->exited) {
        kill(s->init, (int)f->value);
    } else if (f->type == ATTACH_RESIZE && s->master >= 0) {
        struct winsize ws = {.ws_row = f->rows, .ws_col = f->cols};
        ioctl(s->master, TIOCSWINSZ, &ws);
    }
}

/* ------------------------------------------------------------ commands */

static void start_attach(struct shim *s, int i)
{
    struct shim_conn *c = s->conns[i];
    if (attached_count(s) >= MAX_ATTACHED) {
        attach_put_error(&c->out, "too many attached clients");
        conn_flush(c);
        drop(s, i);
        return;
    }
    c->attached = true;
    /* bytes after the line are already frames */
    buf_append(&c->dec.in, c->line.p, c->line.len);
    buf_free(&c->line);
    buf_append(&c->out, s->backlog.p, s->backlog.len);
    buf_reset(&s->backlog);
    if (conn_flush(c) < 0)
        drop(s, i);
}

static void handle_command(struct shim *s, int i, const char *cmd)
{
    int v;
    char extra;
    if (strcmp(cmd, "attach") == 0) {
        start_attach(s, i);
    } else if (sscanf(cmd, "signal %d%c", &v, &extra) == 1) {
        if (v <= 0 || v > 64)
            answer(s, i, "error bad signal number\n");
        else if (s->exited || kill(s->init, v) < 0)
            answer(s, i, "error the container is not running\n");
        else
            answer(s, i, "ok\n");
    } else if (sscanf(cmd, "stop %d%c", &v, &extra) == 1 && v >= 0) {
        shim_begin_stop(s, v);
        answer(s, i, "ok\n");
    } else {
        answer(s, i, "error unknown command\n");
    }
}

/* Reads from a client: its command line, or attach frames. */
static void conn_read(struct shim *s, int i)
{
    struct shim_conn *c = s->conns[i];
    struct buf *into = c->attached ? &c->dec.in : &c->line;
    size_t want = c->attached ? OUT_CHUNK : LINE_MAX_LEN;
    buf_grow(into, want);
    ssize_t n = recv(c->fd, into->p + into->len, want, MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        if (!c->attached || n < 0) {
            drop(s, i);
            return;
        }
        c->read_closed = true; /* output may still go to it */
        return;
    }
    into->len += (size_t)n;
    into->p[into->len] = '\0';
    if (!c->attached) {
        char *nl = memchr(c->line.p, '\n', c->line.len);
        if (!nl) {
            if (c->line.len >= LINE_MAX_LEN)
                answer(s, i, "error line too long\n");
            return;
        }
        *nl = '\0';
        cleanup_free char *cmd = xstrdup(c->line.p);
        buf_consume(&c->line, (size_t)(nl - c->line.p) + 1);
        handle_command(s, i, cmd);
        if (!s->conns[i] || !s->conns[i]->attached)
            return;
    }
    struct attach_frame f;
    int r;
    while ((r = attach_next(&c->dec, &f)) == 1)
        handle_frame(s, &f);
    if (r < 0)
        drop(s, i);
}

void shim_conn_accept(struct shim *s)
{
    for (;;) {
        int fd = accept4(s->listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0)
            return;
        int i = 0;
        while (i < MAX_CONNS && s->conns[i])
            i++;
        if (i == MAX_CONNS) {
            (void)!send(fd, "error too many connections\n", 27, MSG_NOSIGNAL | MSG_DONTWAIT);
            close(fd);
            continue;
        }
        struct shim_conn *c = xcalloc(1, sizeof(*c));
        c->fd = fd;
        c->deadline_ms = clock_now_ms() + LINE_TIMEOUT_MS;
        s->conns[i] = c;
    }
}

/* ------------------------------------------------------------ the loop's side */

int shim_conn_poll_add(struct shim *s, struct pollfd *p, int *who, int n)
{
    bool stdin_full = s->in_q.len > STDIN_MAX_QUEUE;
    for (int i = 0; i < MAX_CONNS; i++) {
        struct shim_conn *c = s->conns[i];
        if (!c)
            continue;
        short ev = (c->read_closed || (c->attached && stdin_full)) ? 0 : POLLIN;
        if (c->out.len)
            ev |= POLLOUT;
        p[n] = (struct pollfd){c->fd, ev, 0}, who[n++] = i;
    }
    return n;
}

void shim_conn_ready(struct shim *s, int i, const struct pollfd *p)
{
    if (!s->conns[i] || s->conns[i]->fd != p->fd)
        return;
    if ((p->revents & POLLOUT) && conn_flush(s->conns[i]) < 0)
        drop(s, i);
    else if (p->revents & (POLLIN | POLLHUP | POLLERR))
        conn_read(s, i);
    /* gone both ways: poll would report it again and again */
    if (s->conns[i] && s->conns[i]->read_closed && (p->revents & (POLLHUP | POLLERR)))
        drop(s, i);
}

int64_t shim_conn_expire(struct shim *s, int64_t now)
{
    int64_t next = 0;
    for (int i = 0; i < MAX_CONNS; i++) {
        struct shim_conn *c = s->conns[i];
        if (!c || c->attached)
            continue;
        if (now >= c->deadline_ms)
            drop(s, i);
        else if (!next || c->deadline_ms < next)
            next = c->deadline_ms;
    }
    return next;
}

void shim_conn_send_exit(struct shim *s, int status)
{
    for (int i = 0; i < MAX_CONNS; i++) {
        struct shim_conn *c = s->conns[i];
        if (c && c->attached) {
            attach_put_data(&c->out, ATTACH_STDOUT, "", 0);
            if (!s->o.tty)
                attach_put_data(&c->out, ATTACH_STDERR, "", 0);
            attach_put_exit(&c->out, (uint32_t)status);
        }
    }
    int64_t deadline = clock_now_ms() + EXIT_FLUSH_MS;
    for (;;) {
        struct pollfd p[MAX_CONNS];
        int n = 0;
        for (int i = 0; i < MAX_CONNS; i++) {
            struct shim_conn *c = s->conns[i];
            if (c && c->attached && c->out.len && conn_flush(c) == 0 && c->out.len)
                p[n++] = (struct pollfd){c->fd, POLLOUT, 0};
        }
        int64_t left = deadline - clock_now_ms();
        if (!n || left <= 0)
            break;
        poll(p, (nfds_t)n, (int)left);
    }
}

void shim_conn_close_all(struct shim *s)
{
    for (int i = 0; i < MAX_CONNS; i++)
        if (s->conns[i])
            drop(s, i);
}
