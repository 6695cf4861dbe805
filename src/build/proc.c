/* proc: child processes for pierslug: spawn, wait, and run one with its
 * output streamed line by line under a time limit. pierslug has one
 * thread, so the child may use anything between fork and exec. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "build/slug.h"

/* A partial line is shown after this long without more output. */
#define PARTIAL_FLUSH_MS 200
/* A line longer than this is shown in pieces. */
#define LINE_MAX_BYTES 8192
/* After the child ends, how long what it left behind may still write. */
#define DRAIN_MS 500

/* The process group proc_run waits for, so that a stop signal can take it
 * along (proc_stop_running). */
static volatile sig_atomic_t running_group;

/* pierslug's helpers' private HOME (proc_set_tool_home); NULL: not set. */
static char *tool_home;
static char *tool_gitconfig;

/* As PID 1 of its pid namespace (the build job's container), pierslug can
 * end every other process of the job at once: kill(-1) reaches all of
 * them, those that left the group with setsid included, but not PID 1. */
static bool is_init(void)
{
    return getpid() == 1;
}

/* Kills group g (as PID 1: every process of the job but pierslug). */
static void kill_all(pid_t g)
{
    if (is_init())
        kill(-1, SIGKILL);
    else if (g > 0)
        kill(-g, SIGKILL);
}

void proc_stop_running(void)
{
    kill_all((pid_t)running_group);
}

int proc_set_tool_home(const char *dir, struct pier_err *err)
{
    struct stat st;
    if (mkdir(dir, 0700) < 0 && errno != EEXIST)
        return err_set(err, -errno, "%s: %s", dir, strerror(errno));
    if (lstat(dir, &st) < 0 || !S_ISDIR(st.st_mode) || st.st_uid != geteuid())
        return err_set(err, PIER_EINVAL, "%s: not a directory of this user's", dir);
    if (chmod(dir, 0700) < 0)
        return err_set(err, -errno, "%s: %s", dir, strerror(errno));
    free(tool_home);
    free(tool_gitconfig);
    tool_home = xstrdup(dir);
    tool_gitconfig = slug_path(dir, "gitconfig");
    /* git refuses a local repository another user owns ("dubious
     * ownership"), and the build job's user owns none. "-c" on the
     * command line would not reach the upload-pack of a local clone (git
     * clears GIT_CONFIG_PARAMETERS for it); the global file does. */
    static const char conf[] = "[safe]\n\tdirectory = *\n[advice]\n\tdetachedHead = false\n";
    int fd = open(tool_gitconfig, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0)
        return err_set(err, -errno, "%s: %s", tool_gitconfig, strerror(errno));
    int rc = fs_write_all(fd, conf, sizeof(conf) - 1);
    close(fd);
    if (rc < 0)
        return err_set(err, rc, "%s: %s", tool_gitconfig, strerror(-rc));
    return 0;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void __attribute__((noreturn)) child(const struct proc_opts *o)
{
    if (o->new_group)
        setpgid(0, 0);
    int null_fd = open("/dev/null", O_RDWR);
    int fds[3] = {o->in, o->out, o->err};
    for (int i = 0; i < 3; i++)
        if (dup2(fds[i] >= 0 ? fds[i] : null_fd, i) < 0)
            _exit(127);
    close_range(3, ~0U, 0);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGPIPE, SIG_DFL); /* pierslug ignores it; tar and curl need it */
    if (o->tool && tool_home) {
        setenv("HOME", tool_home, 1);
        setenv("GIT_CONFIG_GLOBAL", tool_gitconfig, 1);
        setenv("GIT_CONFIG_NOSYSTEM", "1", 1);
        static const char *const drop[] = {"CURL_HOME", "XDG_CONFIG_HOME", "TAR_OPTIONS", "GZIP"};
        for (size_t i = 0; i < sizeof(drop) / sizeof(*drop); i++)
            unsetenv(drop[i]);
    }
    if (o->cwd && chdir(o->cwd) < 0) {
        dprintf(2, "cannot enter %s: %s\n", o->cwd, strerror(errno));
        _exit(127);
    }
    execvp(o->argv[0], (char *const *)o->argv);
    dprintf(2, "cannot run %s: %s\n", o->argv[0], strerror(errno));
    _exit(127);
}

int proc_spawn(const struct proc_opts *o, pid_t *pid, struct pier_err *err)
{
    pid_t p = fork();
    if (p < 0)
        return err_set(err, -errno, "cannot start %s: %s", o->argv[0], strerror(errno));
    if (p == 0)
        child(o);
    if (o->new_group)
        setpgid(p, p); /* also here, so a kill of the group right away finds it */
    *pid = p;
    return 0;
}

int proc_wait(pid_t pid)
{
    int status = 0;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            return 0x7f00; /* as if it exited 127: it is not ours to wait for */
    return status;
}

const char *proc_status_str(int status, char *buf, size_t size)
{
    if (WIFSIGNALED(status))
        snprintf(buf, size, "killed by signal %d", WTERMSIG(status));
    else
        snprintf(buf, size, "exit %d", WEXITSTATUS(status));
    return buf;
}

int proc_memfd(const char *name, struct pier_err *err)
{
    int fd = memfd_create(name, MFD_CLOEXEC);
    if (fd < 0)
        return err_set(err, -errno, "memfd: %s", strerror(errno));
    return fd;
}

int proc_read_all(int fd, struct buf *b, size_t max)
{
    if (lseek(fd, 0, SEEK_SET) < 0)
        return -errno;
    return fs_read_fd(fd, b, max);
}

void proc_last_line(int fd, char *out, size_t size)
{
    struct buf b = BUF_INIT;
    out[0] = '\0';
    off_t end = lseek(fd, 0, SEEK_END);
    char chunk[1024];
    off_t from = end > (off_t)sizeof(chunk) ? end - (off_t)sizeof(chunk) : 0;
    ssize_t n = end > 0 ? pread(fd, chunk, sizeof(chunk), from) : 0;
    if (n > 0)
        buf_append(&b, chunk, (size_t)n);
    while (b.len > 0 && (b.p[b.len - 1] == '\n' || b.p[b.len - 1] == '\r' || b.p[b.len - 1] == ' '))
        b.p[--b.len] = '\0';
    if (b.len > 0) {
        const char *nl = strrchr(b.p, '\n');
        snprintf(out, size, "%.300s", nl ? nl + 1 : b.p);
        for (char *c = out; *c; c++)
            if ((unsigned char)*c < ' ')
                *c = ' ';
    }
    buf_free(&b);
}

/* ---- proc_run ---- */

struct stream {
    int fd;              /* -1 once at EOF */
    struct buf line;     /* a line not finished yet (streamed) */
    struct buf *capture; /* NULL: streamed */
    size_t max;
    bool too_big;
    int64_t last_ms; /* when the line last grew */
};

static void emit_lines(struct stream *s, bool all)
{
    size_t start = 0;
    for (size_t i = 0; i < s->line.len; i++)
        if (s->line.p[i] == '\n') {
            out_child(s->line.p + start, i + 1 - start);
            start = i + 1;
        }
    if (all || s->line.len - start >= LINE_MAX_BYTES) {
        out_child(s->line.p + start, s->line.len - start);
        start = s->line.len;
    }
    buf_consume(&s->line, start);
}

/* Reads what fd has; 0 at EOF. */
static int read_stream(struct stream *s)
{
    char chunk[8192];
    ssize_t n = read(s->fd, chunk, sizeof(chunk));
    if (n < 0 && (errno == EINTR || errno == EAGAIN))
        return 1;
    if (n <= 0)
        return 0;
    if (s->capture) {
        if (s->capture->len + (size_t)n > s->max)
            s->too_big = true;
        else
            buf_append(s->capture, chunk, (size_t)n);
        return 1;
    }
    buf_append(&s->line, chunk, (size_t)n);
    s->last_ms = now_ms();
    emit_lines(s, false);
    return 1;
}

static void close_stream(struct stream *s)
{
    if (s->fd >= 0)
        close(s->fd);
    s->fd = -1;
}

/* Reaps every child that has ended (orphans of the job that the kernel
 * gave to pierslug as PID 1 included); notes pid's status. */
static void reap(pid_t pid, int *status, bool *reaped)
{
    int st;
    pid_t w;
    while ((w = waitpid(-1, &st, WNOHANG)) > 0)
        if (w == pid) {
            *status = st;
            *reaped = true;
        }
}

/* After kill_all as PID 1: waits (a while at most) until no child is left,
 * so that nothing the job left stays as a zombie. */
static void reap_all(pid_t pid, int *status, bool *reaped)
{
    int64_t until = now_ms() + 5000;
    for (;;) {
        int st;
        pid_t w = waitpid(-1, &st, WNOHANG);
        if (w == pid) {
            *status = st;
            *reaped = true;
        }
        if (w > 0)
            continue;
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 || now_ms() >= until)
            return;
        poll(NULL, 0, 5);
    }
}

/* Reads both streams until they end, the child has ended and DRAIN_MS
 * passed, or the time limit. */
static void pump(struct stream *ss, size_t n, pid_t pid, struct proc_run *r, int64_t deadline,
                 bool *reaped)
{
    int64_t drain_until = -1;
    for (;;) {
        struct pollfd pfd[2];
        size_t np = 0, idx[2];
        for (size_t i = 0; i < n; i++)
            if (ss[i].fd >= 0) {
                pfd[np] = (struct pollfd){.fd = ss[i].fd, .events = POLLIN};
                idx[np++] = i;
            }
        int64_t t = now_ms();
        bool was_reaped = *reaped;
        reap(pid, &r->status, reaped);
        if (*reaped && !was_reaped)
            drain_until = t + DRAIN_MS;
        if (np == 0 && *reaped)
            return;
        if (drain_until >= 0 && t >= drain_until)
            return;
        if (deadline > 0 && t >= deadline && !r->timed_out) {
            r->timed_out = true;
            kill_all(pid);
            drain_until = t + DRAIN_MS;
        }
        for (size_t i = 0; i < n; i++)
            if (!ss[i].capture && ss[i].line.len > 0 && t - ss[i].last_ms >= PARTIAL_FLUSH_MS)
                emit_lines(&ss[i], true);
        if (poll(pfd, np, np ? PARTIAL_FLUSH_MS / 2 : 20) < 0 && errno != EINTR)
            return;
        for (size_t k = 0; k < np; k++) {
            struct stream *s = &ss[idx[k]];
            if ((pfd[k].revents & (POLLIN | POLLHUP | POLLERR)) && read_stream(s) == 0)
                close_stream(s);
            if (s->too_big && drain_until < 0) {
                kill_all(pid);
                drain_until = now_ms() + DRAIN_MS;
            }
        }
    }
}

int proc_run(struct proc_run *r, struct pier_err *err)
{
    int outp[2] = {-1, -1}, errp[2] = {-1, -1};
    r->timed_out = false;
    r->status = 0;
    if (pipe2(outp, O_CLOEXEC) < 0 || (r->capture && pipe2(errp, O_CLOEXEC) < 0)) {
        int e = errno;
        for (int i = 0; i < 2; i++) {
            if (outp[i] >= 0)
                close(outp[i]);
        }
        return err_set(err, -e, "pipe: %s", strerror(e));
    }
    struct proc_opts o = {.argv = r->argv,
                          .cwd = r->cwd,
                          .in = -1,
                          .out = outp[1],
                          .err = r->capture ? errp[1] : outp[1],
                          .new_group = true,
                          .tool = r->tool};
    pid_t pid = -1;
    int rc = proc_spawn(&o, &pid, err);
    close(outp[1]);
    if (r->capture)
        close(errp[1]);
    if (rc < 0) {
        close(outp[0]);
        if (r->capture)
            close(errp[0]);
        return rc;
    }
    struct stream ss[2] = {
        {.fd = outp[0], .capture = r->capture, .max = r->capture_max},
        {.fd = r->capture ? errp[0] : -1},
    };
    size_t n = r->capture ? 2 : 1;
    for (size_t i = 0; i < n; i++)
        fcntl(ss[i].fd, F_SETFL, O_NONBLOCK);
    int64_t deadline = r->timeout_s > 0 ? now_ms() + (int64_t)r->timeout_s * 1000 : 0;
    bool reaped = false;
    running_group = pid;
    pump(ss, n, pid, r, deadline, &reaped);
    kill_all(pid); /* whatever it left running */
    if (is_init())
        reap_all(pid, &r->status, &reaped);
    running_group = 0;
    if (!reaped)
        r->status = proc_wait(pid);
    bool too_big = ss[0].too_big;
    for (size_t i = 0; i < n; i++) {
        if (ss[i].line.len)
            emit_lines(&ss[i], true);
        buf_free(&ss[i].line);
        close_stream(&ss[i]);
    }
    if (too_big)
        return err_set(err, -EFBIG, "%s wrote more than %zu bytes", r->argv[0], r->capture_max);
    return 0;
}
