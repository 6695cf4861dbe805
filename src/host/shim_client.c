/* The agent's side of the shim: starting one, and talking to it on its
 * control socket. */
#include "host/shim.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "lib/buf.h"
#include "lib/cleanup.h"
#include "lib/clock.h"

extern char **environ;

#define CONTROL_TIMEOUT_MS 5000
#define DEFAULT_START_TIMEOUT_MS 30000

int shim_sock_addr(const char *job_dir, const char *name, struct sockaddr_un *sa, socklen_t *len,
                   int *dirfd)
{
    *dirfd = -1;
    memset(sa, 0, sizeof(*sa));
    sa->sun_family = AF_UNIX;
    int n = snprintf(sa->sun_path, sizeof(sa->sun_path), "%s/%s", job_dir, name);
    if (n < 0)
        return -EINVAL;
    if ((size_t)n >= sizeof(sa->sun_path)) {
        /* The directory's descriptor names it in a few bytes; the kernel
         * follows /proc/self/fd/N to it for bind and connect alike. */
        *dirfd = open(job_dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (*dirfd < 0)
            return -errno;
        n = snprintf(sa->sun_path, sizeof(sa->sun_path), "/proc/self/fd/%d/%s", *dirfd, name);
        if (n < 0 || (size_t)n >= sizeof(sa->sun_path)) {
            close(*dirfd);
            *dirfd = -1;
            return -ENAMETOOLONG;
        }
    }
    *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + (size_t)n + 1);
    return 0;
}

unsigned long long shim_proc_start(pid_t pid)
{
    char path[64], text[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    cleanup_close int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, text, sizeof(text) - 1);
    if (n <= 0)
        return 0;
    text[n] = '\0';
    /* The command name (field 2) may hold spaces and parentheses: fields
     * are counted after its last ')'. */
    char *p = strrchr(text, ')');
    if (!p || p[1] != ' ' || p[2] == 'Z' || p[2] == 'X')
        return 0;
    p += 2;
    for (int field = 3; field < 22; field++) {
        p = strchr(p, ' ');
        if (!p)
            return 0;
        p++;
    }
    return strtoull(p, NULL, 10);
}

pid_t shim_alive(const char *job_dir)
{
    cleanup_free char *path = NULL;
    if (asprintf(&path, "%s/shim.pid", job_dir) < 0)
        return 0;
    FILE *f = fopen(path, "re");
    if (!f)
        return 0;
    int pid = 0;
    unsigned long long start = 0;
    int got = fscanf(f, "%d %llu", &pid, &start);
    fclose(f);
    if (got != 2 || pid <= 0 || start == 0)
        return 0;
    return shim_proc_start(pid) == start ? pid : 0;
}

/* Reaps pid, waiting up to timeout_ms, then kills it. Returns its wait status. */
static int reap(pid_t pid, int timeout_ms)
{
    int64_t deadline = clock_now_ms() + timeout_ms;
    int status = 0;
    for (;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid || (r < 0 && errno != EINTR))
            return status;
        if (r == 0 && clock_now_ms() >= deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            return status;
        }
        struct timespec ts = {0, 5 * 1000000L};
        nanosleep(&ts, NULL);
    }
}

/* Reads the shim's one report line from fd until deadline. Returns 1 with
 * the line (without newline) in line, 0 at EOF without one, PIER_ETIMEOUT. */
static int read_report(int fd, int64_t deadline, struct buf *line)
{
    for (;;) {
        char *nl = line->len ? memchr(line->p, '\n', line->len) : NULL;
        if (nl) {
            line->len = (size_t)(nl - line->p);
            line->p[line->len] = '\0';
            return 1;
        }
        int64_t left = deadline - clock_now_ms();
        if (left <= 0)
            return PIER_ETIMEOUT;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int n = poll(&p, 1, (int)left);
        if (n < 0 && errno == EINTR)
            continue;
        if (n == 0)
            return PIER_ETIMEOUT;
        char tmp[512];
        ssize_t got = read(fd, tmp, sizeof(tmp));
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0 || line->len > 4096)
            return 0;
        buf_append(line, tmp, (size_t)got);
    }
}

/* The argument vector of `pierd-shim ...`; the strings live in nums. */
static void shim_argv(const struct shim_spawn_opts *o, const char **argv, char nums[3][32])
{
    int n = 0;
    argv[n++] = o->shim;
    argv[n++] = "--dir";
    argv[n++] = o->job_dir;
    argv[n++] = "--id";
    argv[n++] = o->job_id;
    if (o->crun) {
        argv[n++] = "--crun";
        argv[n++] = o->crun;
    }
    if (o->crun_root) {
        argv[n++] = "--crun-root";
        argv[n++] = o->crun_root;
    }
    if (o->tty) {
        snprintf(nums[0], 32, "%dx%d", o->tty_columns > 0 ? o->tty_columns : 80,
                 o->tty_lines > 0 ? o->tty_lines : 24);
        argv[n++] = "--tty";
        argv[n++] = nums[0];
    }
    if (o->stdin_open)
        argv[n++] = "--stdin";
    if (o->no_log)
        argv[n++] = "--no-log";
    if (o->init)
        argv[n++] = "--init";
    if (o->log_max_bytes) {
        snprintf(nums[1], 32, "%zu", o->log_max_bytes);
        argv[n++] = "--log-max-bytes";
        argv[n++] = nums[1];
    }
    if (o->log_max_files > 0) {
        snprintf(nums[2], 32, "%d", o->log_max_files);
        argv[n++] = "--log-max-files";
        argv[n++] = nums[2];
    }
    argv[n] = NULL;
}

/* posix_spawn of the shim: its own session, default signals, fd 3 the
 * report pipe, stderr appended to shim.log. */
static int spawn(const struct shim_spawn_opts *o, int report_fd, pid_t *pid, struct pier_err *err)
{
    const char *argv[24];
    char nums[3][32];
    shim_argv(o, argv, nums);
    cleanup_free char *log_path = NULL;
    if (asprintf(&log_path, "%s/shim.log", o->job_dir) < 0)
        abort();

    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    posix_spawn_file_actions_init(&fa);
    posix_spawnattr_init(&attr);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 2, log_path, O_WRONLY | O_CREAT | O_APPEND, 0640);
    posix_spawn_file_actions_adddup2(&fa, report_fd, 3);
    /* Nothing else of the agent's (its API's sockets, a store connection
     * a library opened without CLOEXEC) may live on in a shim for as long
     * as its job runs. */
    posix_spawn_file_actions_addclosefrom_np(&fa, 4);
    sigset_t none, defaults;
    sigemptyset(&none);
    sigemptyset(&defaults);
    int sigs[] = {SIGPIPE, SIGHUP, SIGINT, SIGTERM, SIGCHLD, SIGQUIT, SIGUSR1, SIGUSR2};
    for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
        sigaddset(&defaults, sigs[i]);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &defaults);
    posix_spawnattr_setflags(&attr,
                             POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    int r = posix_spawn(pid, o->shim, &fa, &attr, (char *const *)argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    if (r != 0)
        return err_set(err, -r, "starting the shim %s for job %s: %s", o->shim, o->job_id,
                       strerror(r));
    return 0;
}

int shim_spawn(const struct shim_spawn_opts *o, pid_t *shim_pid, pid_t *container_pid,
               struct pier_err *err)
{
    *shim_pid = *container_pid = 0;
    if (!o->shim || !o->job_dir || !o->job_id)
        return err_set(err, PIER_EINVAL, "shim_spawn needs shim, job_dir and job_id");
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0)
        return err_set(err, -errno, "pipe: %s", strerror(errno));
    cleanup_close int rfd = p[0];
    /* Out of the way of 3: a dup2 onto itself would keep close-on-exec. */
    int wfd = fcntl(p[1], F_DUPFD_CLOEXEC, 10);
    close(p[1]);
    if (wfd < 0)
        return err_set(err, -errno, "dup: %s", strerror(errno));

    pid_t pid;
    int r = spawn(o, wfd, &pid, err);
    close(wfd); /* the shim has its copy */
    if (r < 0)
        return r;

    int timeout = o->timeout_ms > 0 ? o->timeout_ms : DEFAULT_START_TIMEOUT_MS;
    cleanup_buf struct buf line = BUF_INIT;
    r = read_report(rfd, clock_now_ms() + timeout, &line);
    if (r == 1 && strncmp(line.p, "started ", 8) == 0) {
        int cpid = atoi(line.p + 8);
        if (cpid > 0) {
            *shim_pid = pid;
            *container_pid = cpid;
            return 0;
        }
    }
    if (r == PIER_ETIMEOUT) {
        /* A SIGTERM lets the shim stop crun and clean up; a shim that does
         * not end in time is killed. */
        kill(pid, SIGTERM);
        reap(pid, 3000);
        return err_set(err, PIER_ETIMEOUT, "job %s: the container did not start within %d ms",
                       o->job_id, timeout);
    }
    int status = reap(pid, 10000);
    if (r == 1 && strncmp(line.p, "failed ", 7) == 0)
        return err_set(err, PIER_EINTERNAL, "%s", line.p + 7);
    if (r == 1)
        return err_set(err, PIER_EPROTO, "job %s: the shim said \"%.200s\"", o->job_id, line.p);
    return err_set(err, PIER_EINTERNAL,
                   "job %s: the shim ended (status %d) before starting the container (see "
                   "%s/shim.log)",
                   o->job_id, WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status),
                   o->job_dir);
}

/* Connects to the shim's socket with timeouts on every later read and write.
 * PIER_ENOTFOUND when nothing listens there. */
static int shim_connect(const char *job_dir, struct pier_err *err)
{
    struct sockaddr_un sa;
    socklen_t len = 0;
    cleanup_close int dirfd = -1;
    int r = shim_sock_addr(job_dir, "shim.sock", &sa, &len, &dirfd);
    if (r == -ENOENT)
        return err_set(err, PIER_ENOTFOUND, "job directory %s not found", job_dir);
    if (r < 0)
        return err_set(err, r, "shim socket in %s: %s", job_dir, strerror(-r));
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return err_set(err, -errno, "socket: %s", strerror(errno));
    /* The send timeout also bounds connect when the shim's backlog is full. */
    struct timeval tv = {CONTROL_TIMEOUT_MS / 1000, (CONTROL_TIMEOUT_MS % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    if (connect(fd, (struct sockaddr *)&sa, len) < 0) {
        int e = errno;
        close(fd);
        if (e == ENOENT || e == ECONNREFUSED)
            return err_set(err, PIER_ENOTFOUND, "no shim runs in %s (the job has ended)", job_dir);
        if (e == EAGAIN || e == EINPROGRESS)
            return err_set(err, PIER_ETIMEOUT, "the shim in %s does not answer", job_dir);
        return err_set(err, -e, "connecting to the shim in %s: %s", job_dir, strerror(e));
    }
    return fd;
}

static int send_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -errno;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Sends one command line and reads the one-line answer. */
static int command(const char *job_dir, const char *cmd, struct pier_err *err)
{
    cleanup_close int fd = shim_connect(job_dir, err);
    if (fd < 0)
        return fd;
    int r = send_all(fd, cmd, strlen(cmd));
    if (r == -EPIPE || r == -ECONNRESET)
        return err_set(err, PIER_ENOTFOUND, "the shim in %s has ended", job_dir);
    if (r < 0)
        return err_set(err, r == -EAGAIN ? PIER_ETIMEOUT : r, "writing to the shim in %s: %s",
                       job_dir, strerror(-r));
    char reply[600];
    size_t got = 0;
    while (got < sizeof(reply) - 1 && !memchr(reply, '\n', got)) {
        ssize_t n = recv(fd, reply + got, sizeof(reply) - 1 - got, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return err_set(err, PIER_ETIMEOUT, "the shim in %s does not answer", job_dir);
        if (n <= 0) {
            /* The shim closes its socket once the container has ended. */
            return err_set(err, PIER_ENOTFOUND, "the shim in %s has ended", job_dir);
        }
        got += (size_t)n;
    }
    reply[got] = '\0';
    reply[strcspn(reply, "\n")] = '\0';
    if (strcmp(reply, "ok") == 0)
        return 0;
    if (strncmp(reply, "error ", 6) == 0)
        return err_set(err, PIER_EINVAL, "%s", reply + 6);
    return err_set(err, PIER_EPROTO, "the shim in %s answered \"%.200s\"", job_dir, reply);
}

int shim_signal(const char *job_dir, int sig, struct pier_err *err)
{
    char cmd[32];
    snprintf(cmd, sizeof(cmd), "signal %d\n", sig);
    return command(job_dir, cmd, err);
}

int shim_stop(const char *job_dir, int grace_ms, struct pier_err *err)
{
    char cmd[32];
    snprintf(cmd, sizeof(cmd), "stop %d\n", grace_ms < 0 ? 0 : grace_ms);
    return command(job_dir, cmd, err);
}

int shim_attach(const char *job_dir, struct pier_err *err)
{
    int fd = shim_connect(job_dir, err);
    if (fd < 0)
        return fd;
    int r = send_all(fd, "attach\n", 7);
    if (r < 0) {
        close(fd);
        return err_set(err, PIER_ENOTFOUND, "the shim in %s has ended", job_dir);
    }
    /* The caller relays a stream: no timeouts on it. */
    struct timeval none = {0, 0};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &none, sizeof(none));
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &none, sizeof(none));
    return fd;
}
