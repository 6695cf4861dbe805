/* pier run: a one-off job of the app's current release, attached.
 *
 * The job is asked for with POST /apps/:a/jobs on a connection upgraded to
 * flynn-attach/0 (contract 3.7, lib/attachc.h); then frames go both ways:
 * stdin, signals and window sizes out, output and the exit status back.
 * When stdin and stdout are both terminals the job gets a TTY and the
 * local terminal is put in raw mode (restored on every way out), so keys
 * reach the remote shell one by one; otherwise stdin is plain bytes ending
 * in an EOF frame. pier exits with the job's exit status. Signals arrive
 * through a pipe written by the handlers, so the poll loop sees them like
 * any input. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include "cli/api.h"
#include "cli/cli.h"
#include "cli/ui.h"
#include "host/attach.h"
#include "lib/attachc.h"
#include "lib/cleanup.h"
#include "lib/clock.h"
#include "lib/jsonx.h"

/* After a forwarded SIGINT/SIGTERM, how long the job gets before SIGKILL. */
#define KILL_AFTER_MS 10000
/* The third signal makes pier itself give up (and so end the job). */
#define GIVE_UP_SIGNALS 3

static int sig_pipe[2] = {-1, -1};
static struct termios saved_tty;
static bool tty_raw;

static void on_signal(int sig)
{
    int saved = errno;
    unsigned char b = (unsigned char)sig;
    if (write(sig_pipe[1], &b, 1) < 0) { /* full: the loop already has work to do */
    }
    errno = saved;
}

static void tty_restore(void)
{
    if (tty_raw) {
        tcsetattr(STDIN_FILENO, TCSAFLUSH, &saved_tty);
        tty_raw = false;
    }
}

static int tty_make_raw(void)
{
    if (tcgetattr(STDIN_FILENO, &saved_tty) < 0)
        return -errno;
    struct termios raw = saved_tty;
    cfmakeraw(&raw);
    if (tcsetattr(STDIN_FILENO, TCSAFLUSH, &raw) < 0)
        return -errno;
    tty_raw = true;
    atexit(tty_restore);
    return 0;
}

static void window_size(unsigned short *rows, unsigned short *cols)
{
    struct winsize ws = {0};
    if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) < 0 || ws.ws_row == 0 || ws.ws_col == 0) {
        ws.ws_row = 24;
        ws.ws_col = 80;
    }
    *rows = ws.ws_row;
    *cols = ws.ws_col;
}

static int install_signals(void)
{
    if (pipe2(sig_pipe, O_CLOEXEC | O_NONBLOCK) < 0)
        return -errno;
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    const int sigs[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGWINCH};
    for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
        sigaction(sigs[i], &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    return 0;
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN) {
            struct pollfd pf = {.fd = fd, .events = POLLOUT};
            poll(&pf, 1, 1000);
            continue;
        }
        if (w <= 0)
            return -errno;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

struct session {
    struct api *a;
    struct attachc *conn;
    struct attach_decoder dec;
    bool tty;
    bool stdin_open;
    int64_t kill_at; /* when to send SIGKILL after a forwarded signal; 0: never */
    int signals;     /* SIGINT, SIGTERM, SIGQUIT received so far */
    bool done;
    int status; /* the exit status to return */
};

static int send_frame(struct session *s, struct buf *frame)
{
    struct pier_err err = {0};
    int rc = attachc_send(s->conn, frame->p, frame->len, &err);
    buf_reset(frame);
    if (rc < 0) {
        tty_restore();
        s->done = true;
        s->status = api_fail(s->a, &err);
    }
    return rc;
}

/* Handles the frames that arrived. */
static void frames(struct session *s)
{
    struct attach_frame f;
    int r;
    while (!s->done && (r = attach_next(&s->dec, &f)) != 0) {
        if (r < 0) {
            tty_restore();
            s->status = ui_fail(NULL, "the controller sent something that is not an attach "
                                      "frame; the job's output stops here");
            s->done = true;
            return;
        }
        switch (f.type) {
        case ATTACH_DATA:
            if (f.len > 0 &&
                write_all(f.stream == ATTACH_STDOUT ? STDOUT_FILENO : STDERR_FILENO, f.data,
                          f.len) < 0 &&
                f.stream == ATTACH_STDOUT) {
                tty_restore();
                s->status = ui_fail(NULL, "cannot write the job's output: %s", strerror(errno));
                s->done = true;
            }
            break;
        case ATTACH_EXIT:
            s->status = (int)f.value;
            s->done = true;
            break;
        case ATTACH_ERROR: {
            tty_restore();
            cleanup_buf struct buf m = BUF_INIT, raw = BUF_INIT;
            buf_append(&raw, f.data, f.len);
            api_put_clean(&m, raw.p ? raw.p : "");
            s->status = ui_fail(NULL, "the job failed: %s", m.p);
            s->done = true;
            break;
        }
        default: break; /* frames a client does not expect are ignored */
        }
    }
}

/* Reads stdin once and forwards it (or its end). */
static void forward_stdin(struct session *s, struct buf *out)
{
    char tmp[16384];
    ssize_t n = read(STDIN_FILENO, tmp, sizeof(tmp));
    if (n < 0 && (errno == EINTR || errno == EAGAIN))
        return;
    if (n > 0) {
        attach_put_data(out, ATTACH_STDIN, tmp, (size_t)n);
    } else {
        attach_put_data(out, ATTACH_STDIN, "", 0); /* EOF, always sent */
        s->stdin_open = false;
    }
    send_frame(s, out);
}

static void handle_signals(struct session *s, struct buf *out)
{
    unsigned char sigs[64];
    ssize_t n = read(sig_pipe[0], sigs, sizeof(sigs));
    for (ssize_t i = 0; i < n && !s->done; i++) {
        int sig = sigs[i];
        if (sig == SIGWINCH) {
            if (!s->tty)
                continue;
            unsigned short rows, cols;
            window_size(&rows, &cols);
            attach_put_resize(out, rows, cols);
        } else if (sig == SIGHUP) {
            /* the terminal is gone: closing the connection ends the job */
            tty_restore();
            s->status = 128 + SIGHUP;
            s->done = true;
            return;
        } else if (++s->signals >= GIVE_UP_SIGNALS) {
            /* someone insists: stop waiting; the closed connection ends the job */
            tty_restore();
            s->status = ui_fail(NULL,
                                "stopped waiting for the job after %d signals; it ends "
                                "with the connection",
                                s->signals);
            s->done = true;
            return;
        } else {
            attach_put_signal(out, (uint32_t)sig);
            if (!s->kill_at)
                s->kill_at = clock_now_ms() + KILL_AFTER_MS;
        }
        send_frame(s, out);
    }
}

static void loop(struct session *s)
{
    cleanup_buf struct buf out = BUF_INIT;
    struct pier_err err = {0};
    while (!s->done) {
        /* everything the connection already holds first (curl may buffer) */
        ssize_t got;
        while ((got = attachc_recv(s->conn, &s->dec.in, &err)) > 0)
            ;
        frames(s);
        if (s->done)
            break;
        if (got == -EPIPE || got < 0) {
            tty_restore();
            s->status = got == -EPIPE ? ui_fail("'pier log' may tell what the job printed",
                                                "the connection to the job closed before it "
                                                "exited")
                                      : api_fail(s->a, &err);
            break;
        }
        if (s->kill_at && clock_now_ms() >= s->kill_at) {
            attach_put_signal(&out, SIGKILL);
            s->kill_at = 0;
            if (send_frame(s, &out) < 0)
                break;
        }
        struct pollfd pf[3] = {{.fd = attachc_fd(s->conn), .events = POLLIN},
                               {.fd = sig_pipe[0], .events = POLLIN},
                               {.fd = s->stdin_open ? STDIN_FILENO : -1, .events = POLLIN}};
        int r = poll(pf, 3, s->kill_at ? 200 : 1000);
        if (r < 0 && errno != EINTR) {
            tty_restore();
            s->status = ui_fail(NULL, "poll: %s", strerror(errno));
            break;
        }
        if (r <= 0)
            continue;
        /* The pipe is read whatever poll said: a signal that came while
         * poll was returning with stdin ready has its handler run only on
         * the way out, after revents were filled, and its resize must go
         * before the keys typed after it. */
        handle_signals(s, &out);
        if (!s->done && s->stdin_open && pf[2].revents)
            forward_stdin(s, &out);
    }
}

/* The job's body (Flynn's NewJob, as `flynn run` sends it). */
static json_t *job_body(const char *rel_id, int argc, char **argv, json_t *env, bool detach,
                        bool tty)
{
    json_t *args = json_array();
    for (int i = 0; i < argc; i++)
        json_array_append_new(args, json_string(argv[i]));
    json_t *body = json_pack("{s:s,s:o,s:b}", "release", rel_id, "args", args, "release_env", 1);
    if (!detach)
        json_object_set_new(body, "disable_log", json_true());
    if (tty) {
        unsigned short rows, cols;
        window_size(&rows, &cols);
        const char *term = getenv("TERM");
        json_object_set_new(body, "tty", json_true());
        json_object_set_new(body, "tty_columns", json_integer(cols));
        json_object_set_new(body, "tty_lines", json_integer(rows));
        char n[16];
        snprintf(n, sizeof(n), "%u", cols);
        json_object_set_new(env, "COLUMNS", json_string(n));
        snprintf(n, sizeof(n), "%u", rows);
        json_object_set_new(env, "LINES", json_string(n));
        json_object_set_new(env, "TERM", json_string(term && *term ? term : "xterm"));
    }
    if (json_object_size(env) > 0)
        json_object_set(body, "env", env);
    return body;
}

/* The attach session (lib/attachc.h) with the headers every request of
 * the CLI carries (contract 3.2). */
static int attach_open(struct api *a, const char *path, const json_t *body, struct attachc **out,
                       struct pier_err *err)
{
    cleanup_buf struct buf text = BUF_INIT;
    jsonx_dump(&text, body);
    const char *headers[] = {a->auth.p, "User-Agent: pier/" PIER_VERSION, NULL};
    struct attachc_req req = {
        .base = a->base,
        .path = path,
        .headers = headers,
        .body = text.p,
        .body_len = text.len,
        .eauth = API_EAUTH,
        .ca_pem = a->ca_pem,
    };
    return attachc_open(&req, out, err);
}

static int run(struct api *a, int argc, char **argv, json_t *env, bool detach)
{
    struct pier_err err = {0};
    cleanup_buf struct buf path = BUF_INIT;
    api_app_path(a, &path, "/release");
    cleanup_json json_t *rel = NULL;
    int rc = api_get(a, path.p, &rel, &err);
    if (rc == PIER_ENOTFOUND) {
        cleanup_json json_t *app = NULL;
        if (api_app_get(a, &app, &err) < 0)
            return api_fail(a, &err);
        return ui_fail("deploy it first: git push, or 'pier env set' makes a release",
                       "app \"%s\" has no release to run the command in", a->app);
    }
    if (rc < 0)
        return api_fail(a, &err);
    const char *rel_id = json_string_value(json_object_get(rel, "id"));
    if (!rel_id)
        return ui_fail(NULL, "the app's release has no id");
    bool tty = !detach && isatty(STDIN_FILENO) && isatty(STDOUT_FILENO);
    cleanup_json json_t *body = job_body(rel_id, argc, argv, env, detach, tty);
    buf_reset(&path);
    api_app_path(a, &path, "/jobs");
    if (detach) {
        cleanup_json json_t *job = NULL;
        if (api_send(a, "POST", path.p, body, &job, &err) < 0)
            return api_fail(a, &err);
        cleanup_buf struct buf id = BUF_INIT;
        api_put_clean(&id, json_string_value(json_object_get(job, "id")));
        if (id.len == 0)
            return ui_fail(NULL, "the controller started a job but sent no id back");
        printf("%s\n", id.p);
        return 0;
    }
    struct session s = {.a = a, .tty = tty, .stdin_open = true};
    if (attach_open(a, path.p, body, &s.conn, &err) < 0)
        return api_fail(a, &err);
    if (install_signals() < 0 || (tty && tty_make_raw() < 0)) {
        attachc_close(s.conn);
        return ui_fail(NULL, "cannot set up the terminal: %s", strerror(errno));
    }
    loop(&s);
    tty_restore();
    attachc_close(s.conn);
    attach_decoder_free(&s.dec);
    close(sig_pipe[0]);
    close(sig_pipe[1]);
    return s.status;
}

int cli_run(struct cli *c)
{
    const char *app = NULL;
    bool detach = false;
    cleanup_json json_t *env = json_object();
    int i = 0;
    for (; i < c->argc; i++) {
        const char *s = c->argv[i];
        if (strcmp(s, "--") == 0) {
            i++;
            break;
        }
        if (s[0] != '-')
            break;
        int r = api_opt_app(c->argc, c->argv, &i, &app);
        if (r < 0)
            return ui_usage("run", "-a needs an app name");
        if (r > 0)
            continue;
        if (strcmp(s, "-d") == 0 || strcmp(s, "--detached") == 0) {
            detach = true;
        } else if (strcmp(s, "-e") == 0 || strcmp(s, "--env") == 0) {
            const char *kv = i + 1 < c->argc ? c->argv[++i] : NULL;
            const char *eq = kv ? strchr(kv, '=') : NULL;
            if (!eq || eq == kv)
                return ui_usage("run", "-e needs KEY=VALUE");
            cleanup_free char *k = strndup(kv, (size_t)(eq - kv));
            json_object_set_new(env, k, json_string(eq + 1));
        } else {
            return ui_usage("run", "unknown option \"%s\" for run (put the command after --)", s);
        }
    }
    if (i >= c->argc)
        return ui_usage("run", "run needs a command, for example: pier run -- sh");
    struct api a;
    int rc = api_start(&a, c, app, true);
    if (rc == 0)
        rc = run(&a, c->argc - i, c->argv + i, env, detach);
    api_close(&a);
    return rc;
}
