/* `pierd-shim`: one job's container, from `crun run --detach` to exit.json.
 *
 * The shim is single-threaded around one poll loop. It holds the
 * container's output (pipes, or the TTY master crun hands over) and writes
 * it to the job log and to attached clients; it reaps the container's init,
 * which becomes its child when crun exits because the shim is a child
 * subreaper. When the init has exited the pid namespace is gone, so the
 * output reaches EOF soon after: the shim drains it (for a bounded time),
 * reads the memory cgroup's OOM count, has crun delete the container,
 * writes exit.json and tells attached clients the status.
 *
 * The control socket and the clients on it are shim_conn.c's; what the two
 * files share is in shim_int.h. */
#include "host/shim.h"
#include "host/jobspec.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include "host/joblog.h"
#include "host/shim_int.h"
#include "lib/cleanup.h"
#include "lib/clock.h"
#include "lib/fs.h"
#include "lib/jsonx.h"
#include "lib/log.h"

#define DRAIN_MS 2000           /* output read after the init exited */
#define TERM_GRACE_MS 10000     /* a SIGTERM to the shim stops with this grace */
#define CRUN_TIMEOUT_MS 60000   /* crun run or delete */
#define CONSOLE_TIMEOUT_MS 5000 /* the TTY master after crun exited */

static void usage(void)
{
    fprintf(stderr, "usage: pierd-shim --dir JOBDIR --id JOBID [--crun PATH] [--crun-root DIR]\n"
                    "                  [--tty COLSxROWS] [--stdin] [--log-max-bytes N]\n"
                    "                  [--log-max-files N] [--no-log] [--init]\n"
                    "Runs one job's container (started by the host agent).\n");
}

/* Fills o from argv; -1 with a message in err for a bad command line. */
static int parse_args(int argc, char **argv, struct shim_opts *o, struct pier_err *err)
{
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        bool takes = true;
        if (strcmp(a, "--stdin") == 0) {
            takes = false, o->stdin_open = true;
        } else if (strcmp(a, "--no-log") == 0) {
            takes = false, o->no_log = true;
        } else if (strcmp(a, "--init") == 0) {
            takes = false, o->init = true;
        } else if (!v) {
            return err_set(err, -1, "%s needs a value", a);
        } else if (strcmp(a, "--dir") == 0) {
            o->dir = v;
        } else if (strcmp(a, "--id") == 0) {
            o->id = v;
        } else if (strcmp(a, "--crun") == 0) {
            o->crun = v;
        } else if (strcmp(a, "--crun-root") == 0) {
            o->crun_root = v;
        } else if (strcmp(a, "--tty") == 0) {
            unsigned cols, rows;
            if (sscanf(v, "%ux%u", &cols, &rows) != 2 || !cols || !rows || cols > JOBSPEC_MAX_TTY ||
                rows > JOBSPEC_MAX_TTY) {
                return err_set(err, -1, "--tty wants COLSxROWS, not \"%s\"", v);
            }
            o->tty = true, o->cols = (unsigned short)cols, o->rows = (unsigned short)rows;
        } else if (strcmp(a, "--log-max-bytes") == 0) {
            o->log_max_bytes = strtoull(v, NULL, 10);
        } else if (strcmp(a, "--log-max-files") == 0) {
            o->log_max_files = atoi(v);
        } else {
            return err_set(err, -1, "unknown flag \"%s\"", a);
        }
        if (takes)
            i++;
    }
    if (!o->dir || !o->id || !*o->id || strchr(o->id, '/') || strlen(o->id) > 200 ||
        o->id[0] == '.') {
        return err_set(err, -1, "--dir and a valid --id are needed");
    }
    if (!o->crun)
        o->crun = "crun";
    return 0;
}

/* ------------------------------------------------------------ files */

/* Writes name in the job directory atomically (fs.h). */
static int write_file(struct shim *s, const char *name, const char *text, bool durable)
{
    cleanup_buf struct buf path = BUF_INIT;
    buf_printf(&path, "%s/%s", s->dir, name);
    return fs_write_atomic(path.p, text, strlen(text), 0644, durable, NULL);
}

static void write_exit(struct shim *s, json_t *j)
{
    cleanup_buf struct buf text = BUF_INIT;
    jsonx_dump(&text, j);
    buf_putc(&text, '\n');
    int r = write_file(s, "exit.json", text.p, true);
    if (r < 0)
        log_error("shim", "cannot write exit.json", "job=%s error=\"%s\"", s->o.id, strerror(-r));
    json_decref(j);
}

/* The cgroup crun puts the container in, from bundle/config.json. */
static void read_cgroup_path(struct shim *s)
{
    snprintf(s->cgroup, sizeof(s->cgroup), "/pier/%s", s->o.id);
    cleanup_free char *path = NULL;
    if (asprintf(&path, "%s/bundle/config.json", s->dir) < 0)
        abort();
    json_error_t jerr;
    cleanup_json json_t *cfg = json_load_file(path, 0, &jerr);
    const char *cg = json_string_value(
        json_object_get(json_object_get(cfg, "linux"), "cgroupsPath")); /* borrowed */
    if (cg && *cg)
        snprintf(s->cgroup, sizeof(s->cgroup), "%s%s", cg[0] == '/' ? "" : "/", cg);
}

/* Opens a file of the container's cgroup: controller "" is cgroup v2. */
static FILE *cgroup_file(struct shim *s, const char *controller, const char *file)
{
    char path[PATH_MAX + 64];
    snprintf(path, sizeof(path), "/sys/fs/cgroup%s%s%s/%s", *controller ? "/" : "", controller,
             s->cgroup, file);
    return fopen(path, "re");
}

/* Whether the memory cgroup's OOM killer fired ("oom_kill N" in v1's
 * memory.oom_control and v2's memory.events alike). */
static bool read_oom(struct shim *s)
{
    FILE *f = cgroup_file(s, "memory", "memory.oom_control");
    if (!f)
        f = cgroup_file(s, "", "memory.events");
    if (!f)
        return false;
    char line[128];
    long long kills = 0;
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "oom_kill %lld", &kills) == 1)
            break;
    fclose(f);
    return kills > 0;
}

/* Sends sig to every process of the container, as Heroku's dyno manager
 * does, each once: a daemon that takes a second SIGTERM as "stop now"
 * (lib/daemon.h) must not get two for one stop. When the init is tini
 * (--init), it alone gets any signal but SIGKILL: it passes it on to the
 * job's process group (tini -g), which a second copy from here would
 * duplicate. */
static void kill_all(struct shim *s, int sig)
{
    if (s->init > 0 && !s->exited)
        kill(s->init, sig);
    if (s->o.init && sig != SIGKILL)
        return;
    FILE *f = cgroup_file(s, "pids", "cgroup.procs");
    if (!f)
        f = cgroup_file(s, "memory", "cgroup.procs");
    if (!f)
        f = cgroup_file(s, "", "cgroup.procs");
    if (!f)
        return;
    int pid;
    while (fscanf(f, "%d", &pid) == 1)
        if (pid > 1 && pid != s->init)
            kill(pid, sig);
    fclose(f);
}

void shim_begin_stop(struct shim *s, int grace_ms)
{
    if (s->exited)
        return;
    log_info("shim", "stopping", "job=%s grace_ms=%d", s->o.id, grace_ms);
    kill_all(s, SIGTERM);
    int64_t at = clock_now_ms() + grace_ms;
    if (!s->kill_at || at < s->kill_at)
        s->kill_at = at;
}

/* crun's reason for a failure: the last error message in crun.log. */
static void crun_reason(struct shim *s, int status, struct buf *out)
{
    cleanup_free char *path = NULL;
    if (asprintf(&path, "%s/crun.log", s->dir) < 0)
        abort();
    FILE *f = fopen(path, "re");
    char line[2048];
    while (f && fgets(line, sizeof(line), f)) {
        json_t *j = json_loads(line, 0, NULL);
        const char *msg = json_string_value(json_object_get(j, "msg"));
        const char *level = json_string_value(json_object_get(j, "level"));
        if (msg && (!level || strcmp(level, "error") == 0)) {
            buf_reset(out);
            buf_printf(out, "crun: %.400s", msg);
        }
        json_decref(j);
    }
    if (f)
        fclose(f);
    if (!out->len)
        buf_printf(out, "crun exited with status %d", status);
    for (size_t i = 0; i < out->len; i++)
        if (out->p[i] == '\n' || out->p[i] == '\r')
            out->p[i] = ' ';
}

/* ------------------------------------------------------------ children */

/* Reaps every child that has ended, noting the init's status. */
static void reap(struct shim *s)
{
    for (;;) {
        int status;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid <= 0)
            return;
        if (pid == s->init && !s->exited) {
            s->exited = true;
            s->wstatus = status;
            clock_rfc3339(s->finished_at);
        }
    }
}

/* Reads pending signals: SIGTERM/SIGINT set s->term. */
static void read_signals(struct shim *s)
{
    struct signalfd_siginfo si;
    while (read(s->sigfd, &si, sizeof(si)) == sizeof(si))
        if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT)
            s->term = true;
}

/* Waits for the child pid up to timeout_ms (killing it then); returns its
 * wait status, or -1 when the wait was cut short by a SIGTERM and
 * stop_on_term is set. */
static int wait_child(struct shim *s, pid_t pid, int timeout_ms, bool stop_on_term)
{
    int64_t deadline = clock_now_ms() + timeout_ms;
    for (;;) {
        int status;
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            return status;
        if (r < 0 && errno != EINTR)
            return -1;
        if ((stop_on_term && s->term) || clock_now_ms() >= deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            return -1;
        }
        struct pollfd p = {.fd = s->sigfd, .events = POLLIN};
        poll(&p, 1, 20);
        read_signals(s);
    }
}

/* fork + exec of crun with the given stdio; returns its pid or -errno. */
static pid_t start_crun(const char *crun, char **argv, int in, int out, int errfd)
{
    int ep[2]; /* carries errno when exec fails */
    if (pipe2(ep, O_CLOEXEC) < 0)
        return -errno;
    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        close(ep[0]);
        close(ep[1]);
        return -e;
    }
    if (pid == 0) {
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        signal(SIGPIPE, SIG_DFL);
        signal(SIGHUP, SIG_DFL);
        if (dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(errfd, 2) < 0)
            _exit(127);
        execvp(crun, argv);
        int e = errno;
        (void)!write(ep[1], &e, sizeof(e));
        _exit(127);
    }
    close(ep[1]);
    int e = 0;
    ssize_t n;
    while ((n = read(ep[0], &e, sizeof(e))) < 0 && errno == EINTR)
        ;
    close(ep[0]);
    if (n == sizeof(e)) {
        waitpid(pid, NULL, 0);
        return -e;
    }
    return pid;
}

/* The argument vector of `crun [--root R] --log=... CMD`. */
static int crun_argv(struct shim *s, char **argv, struct buf *logarg)
{
    int n = 0;
    argv[n++] = (char *)s->o.crun;
    if (s->o.crun_root) {
        argv[n++] = "--root";
        argv[n++] = (char *)s->o.crun_root;
    }
    buf_printf(logarg, "--log=%s/crun.log", s->dir);
    argv[n++] = logarg->p;
    argv[n++] = "--log-format=json";
    return n;
}

static void crun_delete(struct shim *s)
{
    char *argv[16];
    cleanup_buf struct buf logarg = BUF_INIT;
    int n = crun_argv(s, argv, &logarg);
    argv[n++] = "delete";
    argv[n++] = "--force";
    argv[n++] = (char *)s->o.id;
    argv[n] = NULL;
    cleanup_close int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    pid_t pid = start_crun(s->o.crun, argv, null, null, 2);
    if (pid < 0) {
        log_error("shim", "cannot run crun delete", "job=%s error=\"%s\"", s->o.id,
                  strerror((int)-pid));
        return;
    }
    int status = wait_child(s, pid, CRUN_TIMEOUT_MS, false);
    if (status != 0)
        log_warn("shim", "crun delete failed", "job=%s status=%d", s->o.id, status);
}

/* ------------------------------------------------------------ TTY */

/* The console socket crun connects to: a name it can reach whatever the
 * length of the job directory (through /proc/<shim pid>/fd/<dirfd>). */
static int console_listen(struct shim *s, struct buf *crun_path)
{
    struct sockaddr_un sa;
    socklen_t len;
    cleanup_close int dirfd = -1;
    unlinkat(s->dirfd, "console.sock", 0);
    int r = shim_sock_addr(s->dir, "console.sock", &sa, &len, &dirfd);
    if (r < 0)
        return r;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (bind(fd, (struct sockaddr *)&sa, len) < 0 || listen(fd, 1) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    if (dirfd >= 0)
        buf_printf(crun_path, "/proc/%d/fd/%d/console.sock", (int)getpid(), s->dirfd);
    else
        buf_printf(crun_path, "%s/console.sock", s->dir);
    return fd;
}

/* Takes the TTY master crun sends over the console socket. */
static int console_receive(struct shim *s, int lfd)
{
    struct pollfd p = {.fd = lfd, .events = POLLIN};
    if (poll(&p, 1, CONSOLE_TIMEOUT_MS) <= 0)
        return -ETIMEDOUT;
    cleanup_close int c = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (c < 0)
        return -errno;
    char data[256], control[CMSG_SPACE(sizeof(int))];
    struct iovec iov = {data, sizeof(data)};
    struct msghdr msg = {.msg_iov = &iov,
                         .msg_iovlen = 1,
                         .msg_control = control,
                         .msg_controllen = sizeof(control)};
    p = (struct pollfd){.fd = c, .events = POLLIN};
    if (poll(&p, 1, CONSOLE_TIMEOUT_MS) <= 0)
        return -ETIMEDOUT;
    if (recvmsg(c, &msg, MSG_CMSG_CLOEXEC) < 0)
        return -errno;
    struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
    if (!cm || cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
        return -EPROTO;
    int master;
    memcpy(&master, CMSG_DATA(cm), sizeof(int));
    fcntl(master, F_SETFL, fcntl(master, F_GETFL) | O_NONBLOCK);
    struct winsize ws = {.ws_row = s->o.rows, .ws_col = s->o.cols};
    ioctl(master, TIOCSWINSZ, &ws);
    return master;
}

/* ------------------------------------------------------------ start */

/* Runs `crun run --detach`; on success s->init is the container's init. */
static int run_container(struct shim *s, struct buf *reason)
{
    int outp[2], errp[2], inp[2] = {-1, -1};
    if (pipe2(outp, O_CLOEXEC) < 0 || pipe2(errp, O_CLOEXEC) < 0)
        abort(); /* out of descriptors at start: nothing sensible to do */
    if (s->o.stdin_open && !s->o.tty && pipe2(inp, O_CLOEXEC) < 0)
        abort();
    cleanup_close int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
    cleanup_close int console = -1;
    cleanup_buf struct buf console_path = BUF_INIT;
    if (s->o.tty && (console = console_listen(s, &console_path)) < 0) {
        buf_printf(reason, "console socket: %s", strerror(-console));
        return -1;
    }

    char *argv[24];
    cleanup_buf struct buf logarg = BUF_INIT;
    cleanup_buf struct buf bundle = BUF_INIT;
    cleanup_buf struct buf pidfile = BUF_INIT;
    buf_printf(&bundle, "%s/bundle", s->dir);
    buf_printf(&pidfile, "%s/container.pid", s->dir);
    int n = crun_argv(s, argv, &logarg);
    argv[n++] = "run";
    argv[n++] = "--detach";
    argv[n++] = "--bundle";
    argv[n++] = bundle.p;
    argv[n++] = "--pid-file";
    argv[n++] = pidfile.p;
    if (s->o.tty) {
        argv[n++] = "--console-socket";
        argv[n++] = console_path.p;
    }
    argv[n++] = (char *)s->o.id;
    argv[n] = NULL;

    unlinkat(s->dirfd, "container.pid", 0);
    s->crun_ran = true;
    pid_t pid = start_crun(s->o.crun, argv, inp[0] >= 0 ? inp[0] : null, outp[1], errp[1]);
    close(outp[1]);
    close(errp[1]);
    if (inp[0] >= 0)
        close(inp[0]);
    s->outs[0] = (struct shim_output){outp[0], JOBLOG_STDOUT};
    s->outs[1] = (struct shim_output){errp[0], JOBLOG_STDERR};
    s->in_fd = inp[1];
    fcntl(outp[0], F_SETFL, O_NONBLOCK);
    fcntl(errp[0], F_SETFL, O_NONBLOCK);
    if (inp[1] >= 0)
        fcntl(inp[1], F_SETFL, O_NONBLOCK);
    if (pid < 0) {
        buf_printf(reason, "cannot run %s: %s", s->o.crun, strerror((int)-pid));
        return -1;
    }
    int status = wait_child(s, pid, CRUN_TIMEOUT_MS, true);
    if (status != 0) {
        if (status == -1)
            buf_printf(reason, s->term ? "stopped while starting" : "crun run timed out");
        else
            crun_reason(s, WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status),
                        reason);
        return -1;
    }

    char text[32] = "";
    cleanup_close int fd = openat(s->dirfd, "container.pid", O_RDONLY | O_CLOEXEC);
    ssize_t got = fd >= 0 ? read(fd, text, sizeof(text) - 1) : -1;
    s->init = got > 0 ? atoi(text) : 0;
    if (s->init <= 0) {
        buf_printf(reason, "crun wrote no container.pid");
        return -1;
    }
    if (s->o.tty) {
        s->master = console_receive(s, console);
        unlinkat(s->dirfd, "console.sock", 0);
        if (s->master < 0) {
            buf_printf(reason, "no TTY from crun: %s", strerror(-s->master));
            return -1;
        }
        s->outs[2] = (struct shim_output){s->master, JOBLOG_STDOUT};
        s->in_fd = s->master;
    }
    return 0;
}

static int write_pid_file(struct shim *s)
{
    char text[64];
    snprintf(text, sizeof(text), "%d %llu\n", (int)getpid(), shim_proc_start(getpid()));
    /* Not synced: it means something only while this shim runs, which a
     * crash of the machine ends anyway. */
    return write_file(s, "shim.pid", text, false);
}

static void report(struct shim *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void report(struct shim *s, const char *fmt, ...)
{
    if (s->start_fd < 0)
        return;
    char line[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    (void)!write(s->start_fd, line, strlen(line));
    close(s->start_fd);
    s->start_fd = -1;
}

/* Everything up to a running container. On failure the reason is
 * reported, recorded in exit.json, and -1 returned. */
static int start(struct shim *s)
{
    cleanup_buf struct buf reason = BUF_INIT;
    int r = 0;
    s->dir = realpath(s->o.dir, NULL);
    if (!s->dir || (s->dirfd = open(s->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
        report(s, "failed job directory %s: %s\n", s->o.dir, strerror(errno));
        return -1;
    }
    if (chdir("/") < 0 || (r = write_pid_file(s)) < 0) {
        buf_printf(&reason, "writing shim.pid: %s", strerror(r < 0 ? -r : errno));
        goto failed;
    }
    prctl(PR_SET_CHILD_SUBREAPER, 1);
    read_cgroup_path(s);
    if (!s->o.no_log) {
        struct pier_err err;
        if (joblog_writer_open(s->dir, s->o.log_max_bytes, s->o.log_max_files, &s->log, &err) < 0) {
            buf_puts(&reason, err.msg);
            goto failed;
        }
    }
    if ((r = shim_conn_listen(s)) < 0) {
        buf_printf(&reason, "control socket: %s", strerror(-r));
        goto failed;
    }
    if (run_container(s, &reason) < 0)
        goto failed;
    log_info("shim", "container started", "job=%s pid=%d", s->o.id, (int)s->init);
    report(s, "started %d\n", (int)s->init);
    return 0;

failed:
    if (!reason.len)
        buf_puts(&reason, "unknown error");
    log_error("shim", "container did not start", "job=%s reason=\"%s\"", s->o.id, reason.p);
    report(s, "failed %s\n", reason.p);
    if (s->crun_ran) {
        crun_delete(s);
        /* crun's stderr is the container's: what it said belongs in the log */
        char data[OUT_CHUNK];
        ssize_t n;
        for (int k = 0; k < 2 * 16; k++) /* a bounded read of each */
            if (s->log && s->outs[k % 2].fd >= 0 &&
                (n = read(s->outs[k % 2].fd, data, sizeof(data))) > 0)
                joblog_write(s->log, s->outs[k % 2].stream, data, (size_t)n);
    }
    json_t *j = json_object();
    json_object_set_new(j, "status", json_integer(-1)); /* stolen */
    json_object_set_new(j, "error", json_string(reason.p));
    write_exit(s, j);
    return -1;
}

/* ------------------------------------------------------------ loop */

static void read_output(struct shim *s, struct shim_output *o)
{
    char data[OUT_CHUNK];
    ssize_t n = read(o->fd, data, sizeof(data));
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n > 0) {
        shim_conn_deliver(s, o->stream, data, (size_t)n);
        return;
    }
    /* EOF, or EIO from a TTY master whose other side is closed */
    if (o->fd == s->master) {
        s->master = s->in_fd = -1;
        buf_reset(&s->in_q);
    }
    close(o->fd);
    o->fd = -1;
}

static int timeout_until(int timeout, int64_t at, int64_t now)
{
    if (!at)
        return timeout;
    int ms = at <= now ? 0 : (int)(at - now);
    return timeout < 0 || ms < timeout ? ms : timeout;
}

/* Checks timers; returns the poll timeout until the next one. */
static int tick(struct shim *s)
{
    int64_t now = clock_now_ms();
    if (s->term && !s->exited && !s->kill_at)
        shim_begin_stop(s, TERM_GRACE_MS);
    if (s->kill_at && now >= s->kill_at && !s->exited) {
        log_info("shim", "killing after the grace period", "job=%s", s->o.id);
        kill_all(s, SIGKILL);
        s->kill_at = 0;
    }
    if (s->log)
        joblog_flush(s->log, false);
    int timeout = s->log ? joblog_flush_due_ms(s->log) : -1;
    timeout = timeout_until(timeout, s->kill_at, now);
    timeout = timeout_until(timeout, s->drain_until, now);
    timeout = timeout_until(timeout, shim_conn_expire(s, now), now);
    return timeout;
}

static void loop(struct shim *s)
{
    for (;;) {
        reap(s);
        if (s->exited && !s->drain_until) {
            s->drain_until = clock_now_ms() + DRAIN_MS;
            s->kill_at = 0;
            shim_conn_unlisten(s);
        }
        bool outputs = false;
        for (int k = 0; k < 3; k++)
            outputs |= s->outs[k].fd >= 0;
        if (s->exited && (!outputs || clock_now_ms() >= s->drain_until))
            return;
        int timeout = tick(s);

        struct pollfd p[6 + MAX_CONNS];
        int who[6 + MAX_CONNS]; /* -1 sigfd, -2 listener, -3 stdin, 100+k output, i conn */
        int n = 0;
        p[n] = (struct pollfd){s->sigfd, POLLIN, 0}, who[n++] = -1;
        if (s->listen_fd >= 0)
            p[n] = (struct pollfd){s->listen_fd, POLLIN, 0}, who[n++] = -2;
        if (s->in_fd >= 0 && s->in_q.len)
            p[n] = (struct pollfd){s->in_fd, POLLOUT, 0}, who[n++] = -3;
        for (int k = 0; k < 3; k++)
            if (s->outs[k].fd >= 0)
                p[n] = (struct pollfd){s->outs[k].fd, POLLIN, 0}, who[n++] = 100 + k;
        n = shim_conn_poll_add(s, p, who, n);
        if (poll(p, (nfds_t)n, timeout) < 0 && errno != EINTR)
            log_error("shim", "poll failed", "error=\"%s\"", strerror(errno));
        for (int k = 0; k < n; k++) {
            if (!p[k].revents)
                continue;
            int w = who[k];
            if (w == -1) {
                read_signals(s);
            } else if (w == -2) {
                shim_conn_accept(s);
            } else if (w == -3) {
                shim_write_stdin(s);
            } else if (w >= 100) {
                if (s->outs[w - 100].fd >= 0)
                    read_output(s, &s->outs[w - 100]);
            } else {
                shim_conn_ready(s, w, &p[k]);
            }
        }
    }
}

/* After the init has exited: the status is recorded and told. */
static void finish(struct shim *s)
{
    int st = s->wstatus;
    int sig = WIFSIGNALED(st) ? WTERMSIG(st) : 0;
    int status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + sig;
    joblog_writer_close(s->log);
    s->log = NULL;
    bool oom = read_oom(s);
    crun_delete(s);
    log_info("shim", "container exited", "job=%s status=%d signal=%d oom=%s", s->o.id, status, sig,
             oom ? "true" : "false");
    json_t *j = json_object();
    json_object_set_new(j, "status", json_integer(status)); /* stolen */
    json_object_set_new(j, "signal", json_integer(sig));
    json_object_set_new(j, "oom", json_boolean(oom));
    json_object_set_new(j, "finished_at", json_string(s->finished_at));
    write_exit(s, j);
    shim_conn_send_exit(s, status);
}

static void cleanup(struct shim *s)
{
    shim_conn_close_all(s);
    shim_conn_unlisten(s);
    for (int k = 0; k < 3; k++)
        if (s->outs[k].fd >= 0)
            close(s->outs[k].fd);
    if (s->in_fd >= 0 && s->in_fd != s->outs[2].fd)
        close(s->in_fd);
    joblog_writer_close(s->log);
    buf_free(&s->in_q);
    buf_free(&s->backlog);
    if (s->start_fd >= 0)
        close(s->start_fd);
    if (s->sigfd >= 0)
        close(s->sigfd);
    if (s->dirfd >= 0)
        close(s->dirfd);
    free(s->dir);
}

int shim_main(int argc, char **argv)
{
    struct shim s;
    memset(&s, 0, sizeof(s));
    s.dirfd = s.sigfd = s.start_fd = s.listen_fd = s.master = s.in_fd = -1;
    for (int k = 0; k < 3; k++)
        s.outs[k].fd = -1;
    /* fd 3 is the start pipe: checked before any descriptor is made */
    if (fcntl(3, F_SETFD, FD_CLOEXEC) == 0)
        s.start_fd = 3;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage();
            return 0;
        }
    }
    struct pier_err err;
    if (parse_args(argc, argv, &s.o, &err) < 0) {
        fprintf(stderr, "pierd-shim: %s\n", err.msg);
        usage();
        report(&s, "failed pierd-shim: %s\n", err.msg);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigprocmask(SIG_BLOCK, &set, NULL);
    s.sigfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);

    int rc = 1;
    if (start(&s) == 0) {
        loop(&s);
        finish(&s);
        rc = 0;
    }
    cleanup(&s);
    return rc;
}
