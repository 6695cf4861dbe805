/* ssh_relay: git relayed to and from an SSH channel (ssh_relay.h).
 *
 * One ssh_event holds the session and git's pipes; the loop runs the pumps
 * level-triggered after every poll. Flow control both ways: git's stdout
 * and stderr are read only while the client's window has room (what was
 * read is always written whole), and the client's data is read off the
 * channel only once the previous piece is in git's stdin, so libssh grows
 * our window only as fast as git consumes.
 *
 * A client that vanished without closing (its machine gone) or stopped
 * (Ctrl-Z) would hold git, and the push's lock, forever: after a quiet
 * spell the relay sends keepalives, which a live client answers; a client
 * that gives no sign of life, or keeps its window shut, for the stall
 * timeout is taken as gone. The packet counter libssh keeps tells whether
 * anything came. */
#include "git/ssh_relay.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <libssh/server.h>

#include "lib/buf.h"
#include "lib/clock.h"
#include "lib/subproc.h"

#define CHUNK 32768

/* One of git's output pipes and what was read from it but is not yet in
 * the channel (when the session could not take it all: a key re-exchange). */
struct stream {
    int fd; /* -1 once at EOF */
    short ev;
    bool is_stderr;
    char buf[CHUNK];
    size_t off, len;
};

struct child {
    const struct relay_io *io;
    pid_t pid; /* also its process group */
    int pidfd; /* -1 when the kernel has no pidfd_open */
    short ev_pid;
    int in;      /* our end of git's stdin; -1 once closed */
    short ev_in; /* what the ssh_event watches on it */
    struct stream out, err;
    bool exited;
    int status;
    char buf_in[CHUNK]; /* client data on its way to git's stdin */
    size_t in_off, in_len;
    /* the client's signs of life */
    struct ssh_counter_struct rx; /* libssh counts the packets that come */
    uint64_t rx_seen;             /* rx.in_packets when last looked at */
    int64_t rx_ms;                /* when a packet last came */
    int64_t keepalive_ms;         /* when a keepalive was last sent */
    int64_t shut_since_ms;        /* since when the window is 0, or 0 */
};

static int fd_ready(socket_t fd, int revents, void *userdata)
{
    (void)fd, (void)revents, (void)userdata;
    return 0; /* the relay loop reads the fds itself, level-triggered */
}

/* Makes the event watch fd for events (0: not at all). */
static void watch(ssh_event ev, int fd, short *cur, short want)
{
    if (fd < 0 || *cur == want)
        return;
    if (*cur)
        ssh_event_remove_fd(ev, fd);
    if (want)
        ssh_event_add_fd(ev, fd, want, fd_ready, NULL);
    *cur = want;
}

static void close_fd(ssh_event ev, int *fd, short *cur)
{
    if (*fd < 0)
        return;
    watch(ev, *fd, cur, 0);
    close(*fd);
    *fd = -1;
}

static void set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0)
        fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

/* Starts git with pipes for its stdin, stdout and stderr. */
static int child_start(struct child *ch, char *const argv[], char *const env[], const char *cwd,
                       struct pier_err *err)
{
    int p[3][2] = {{-1, -1}, {-1, -1}, {-1, -1}};
    for (int i = 0; i < 3; i++)
        if (pipe2(p[i], O_CLOEXEC) < 0) {
            int e = errno;
            for (int j = 0; j < i; j++)
                close(p[j][0]), close(p[j][1]);
            return err_set(err, -e, "pipe: %s", strerror(e));
        }
    const struct subproc sp = {
        .argv = argv,
        .env = env,
        .cwd = cwd,
        .in = p[0][0],
        .out = p[1][1],
        .err = p[2][1],
        .new_pgroup = true,
    };
    int rc = subproc_start(&sp, &ch->pid, err);
    close(p[0][0]), close(p[1][1]), close(p[2][1]);
    ch->in = p[0][1], ch->out.fd = p[1][0], ch->err.fd = p[2][0];
    ch->err.is_stderr = true;
    if (rc < 0) {
        close(ch->in), close(ch->out.fd), close(ch->err.fd);
        ch->in = ch->out.fd = ch->err.fd = -1;
        return rc;
    }
    set_nonblock(ch->in), set_nonblock(ch->out.fd), set_nonblock(ch->err.fd);
#ifdef SYS_pidfd_open
    ch->pidfd = (int)syscall(SYS_pidfd_open, ch->pid, 0);
#else
    ch->pidfd = -1;
#endif
    return 0;
}

/* Stops git's process group: SIGTERM, a grace for what runs in it (the
 * hook cancelling its build) to end, then SIGKILL. Reaps git. */
static void child_stop(struct child *ch)
{
    if (ch->exited)
        return;
    subproc_stop_group(ch->pid, ch->pid, RELAY_KILL_GRACE_MS, &ch->status);
    ch->exited = true;
}

/* Client to git: the previous piece must be in git's stdin before the next
 * is read off the channel. Returns -1 when the client is gone. */
static int pump_in(struct child *ch)
{
    const struct relay_io *io = ch->io;
    while (ch->in >= 0) {
        if (ch->in_off == ch->in_len) {
            ch->in_off = ch->in_len = 0;
            int n = ssh_channel_read_nonblocking(io->channel, ch->buf_in, sizeof ch->buf_in, 0);
            if (n == SSH_ERROR)
                return -1;
            if (n == SSH_EOF || (n == 0 && ssh_channel_is_eof(io->channel))) {
                close_fd(io->event, &ch->in, &ch->ev_in);
                return 0;
            }
            if (n == 0)
                return 0;
            ch->in_len = (size_t)n;
        }
        ssize_t w = write(ch->in, ch->buf_in + ch->in_off, ch->in_len - ch->in_off);
        if (w < 0 && (errno == EAGAIN || errno == EINTR))
            return 0;
        if (w < 0) /* git closed its stdin (EPIPE): what the client sends now is dropped */
            close_fd(io->event, &ch->in, &ch->ev_in);
        else
            ch->in_off += (size_t)w;
    }
    /* nobody reads it any more: keep the client's window open all the same */
    char sink[CHUNK];
    while (ssh_channel_read_nonblocking(io->channel, sink, sizeof sink, 0) > 0)
        ;
    return 0;
}

/* Git to client, one of stdout/stderr: reads only what the window takes.
 * Returns -1 when the session broke. */
static int pump_out(struct child *ch, struct stream *st)
{
    const struct relay_io *io = ch->io;
    for (;;) {
        uint32_t window = ssh_channel_window_size(io->channel);
        if (window == 0)
            return 0;
        if (st->off < st->len) {
            size_t n = st->len - st->off < window ? st->len - st->off : window;
            int w = st->is_stderr
                        ? ssh_channel_write_stderr(io->channel, st->buf + st->off, (uint32_t)n)
                        : ssh_channel_write(io->channel, st->buf + st->off, (uint32_t)n);
            if (w < 0)
                return -1;
            st->off += (size_t)w;
            if (w == 0)
                return 0; /* the session is busy (a key re-exchange): after the next poll */
            continue;
        }
        if (st->fd < 0)
            return 0;
        ssize_t n = read(st->fd, st->buf, window < sizeof st->buf ? window : sizeof st->buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN && !ch->exited)
            return 0;
        if (n <= 0) { /* EOF; or git is gone and the pipe is empty (a grandchild may hold it) */
            close_fd(io->event, &st->fd, &st->ev);
            return 0;
        }
        st->off = 0;
        st->len = (size_t)n;
    }
}

static bool stream_done(const struct stream *st)
{
    return st->fd < 0 && st->off == st->len;
}

static int keepalive_every_ms(const struct relay_io *io)
{
    int ms = io->stall_ms / 4;
    return ms > RELAY_KEEPALIVE_MS ? RELAY_KEEPALIVE_MS : ms < 100 ? 100 : ms;
}

/* Whether the client still shows signs of life: a packet within the stall
 * timeout (asked for with keepalives when it is quiet), and a window that
 * does not stay shut that long. */
static bool client_lives(struct child *ch)
{
    const struct relay_io *io = ch->io;
    int64_t now = clock_now_ms();
    if (ch->rx.in_packets != ch->rx_seen) {
        ch->rx_seen = ch->rx.in_packets;
        ch->rx_ms = now;
    }
    int every = keepalive_every_ms(io);
    if (now - ch->rx_ms >= every && now - ch->keepalive_ms >= every) {
        /* keepalive@openssh.com, wanting a reply: libssh sends one when
         * none is pending (else this call only collects its answer). */
        ssh_send_keepalive(io->session);
        ch->keepalive_ms = now;
    }
    if (ssh_channel_window_size(io->channel) > 0)
        ch->shut_since_ms = 0;
    else if (!ch->shut_since_ms)
        ch->shut_since_ms = now;
    return now - ch->rx_ms < io->stall_ms &&
           (!ch->shut_since_ms || now - ch->shut_since_ms < io->stall_ms);
}

/* Runs the relay until git has exited and its output is out, or the
 * client or the server goes away (git is stopped then). */
static enum relay_end relay(struct child *ch)
{
    const struct relay_io *io = ch->io;
    for (;;) {
        enum relay_end end = RELAY_EXITED;
        if (!io->go_on(io->ud))
            end = RELAY_CUT;
        else if (!ssh_is_connected(io->session) || ssh_channel_is_closed(io->channel) ||
                 pump_in(ch) < 0 || pump_out(ch, &ch->out) < 0 || pump_out(ch, &ch->err) < 0)
            end = RELAY_CLIENT_GONE;
        else if (!client_lives(ch))
            end = RELAY_STALLED;
        if (end != RELAY_EXITED) {
            child_stop(ch);
            return end;
        }
        if (!ch->exited && waitpid(ch->pid, &ch->status, WNOHANG) == ch->pid) {
            ch->exited = true;
            close_fd(io->event, &ch->pidfd, &ch->ev_pid);
            continue; /* drain the pipes */
        }
        if (ch->exited && stream_done(&ch->out) && stream_done(&ch->err))
            return RELAY_EXITED;
        bool room = ssh_channel_window_size(io->channel) > 0;
        struct stream *sts[] = {&ch->out, &ch->err};
        for (size_t i = 0; i < 2; i++)
            watch(io->event, sts[i]->fd, &sts[i]->ev,
                  room && sts[i]->off == sts[i]->len ? POLLIN : 0);
        watch(io->event, ch->in, &ch->ev_in, ch->in_off < ch->in_len ? POLLOUT : 0);
        watch(io->event, ch->pidfd, &ch->ev_pid, POLLIN);
        int wait = ch->pidfd >= 0 ? 1000 : 100;
        int every = keepalive_every_ms(io);
        ssh_event_dopoll(io->event, wait < every ? wait : every);
    }
}

int relay_git(const struct relay_io *io, char *const argv[], char *const env[], const char *cwd,
              int *status, enum relay_end *end, struct pier_err *err)
{
    struct child *ch = xcalloc(1, sizeof *ch);
    ch->io = io;
    ch->pidfd = -1;
    int rc = child_start(ch, argv, env, cwd, err);
    if (rc < 0) {
        free(ch);
        return rc;
    }
    ch->rx_ms = ch->keepalive_ms = clock_now_ms();
    ssh_set_counters(io->session, NULL, &ch->rx);
    *end = relay(ch);
    ssh_set_counters(io->session, NULL, NULL);
    close_fd(io->event, &ch->in, &ch->ev_in);
    close_fd(io->event, &ch->out.fd, &ch->out.ev);
    close_fd(io->event, &ch->err.fd, &ch->err.ev);
    close_fd(io->event, &ch->pidfd, &ch->ev_pid);
    *status = ch->status;
    free(ch);
    return 0;
}
