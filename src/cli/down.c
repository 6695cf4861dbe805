/* pier down: stops what `pier up` started from a state dir, as a reboot
 * would: the host agent and the store (none when external: `pier up --store`
 * or --join), and every job of this host, without
 * changing any record in the store. The job records still say "up", so the
 * next `pier up` finds them lost (the agent marks them crashed) and the
 * bootstrap and the scheduler start them again.
 *
 * A job is its shim (DIR/host/jobs/<id>/shim.pid, checked against the
 * process's start time) and its container's processes (the cgroup
 * /pier/<id> in every mounted hierarchy, v1 or v2). Only ids starting with
 * this state dir's host id are touched, so another agent's jobs on the
 * same machine are left alone. The jobs are frozen (SIGSTOP) before the
 * agent stops, so none of them (the scheduler is one) acts on the agent's
 * going away, and killed after it has gone, so the agent records nothing. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/daemons.h"
#include "cli/ui.h"
#include "lib/buf.h"
#include "lib/cleanup.h"
#include "lib/fs.h"

#define MAX_PIDS 65536

struct pidset {
    pid_t *p;
    size_t n;
};

static void pidset_add(struct pidset *s, pid_t pid)
{
    for (size_t i = 0; i < s->n; i++)
        if (s->p[i] == pid)
            return;
    if (s->n >= MAX_PIDS)
        return;
    s->p = xrealloc(s->p, (s->n + 1) * sizeof(pid_t));
    s->p[s->n++] = pid;
}

static bool read_small(const char *path, struct buf *out)
{
    cleanup_close int fd = open(path, O_RDONLY | O_CLOEXEC);
    return fd >= 0 && fs_read_fd(fd, out, 1 << 20) == 0;
}

/* Field 22 of /proc/PID/stat: when the process started. */
static unsigned long long start_time(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    cleanup_buf struct buf b = BUF_INIT;
    if (!read_small(path, &b) || b.len == 0)
        return 0;
    buf_putc(&b, '\0');
    char *p = strrchr(b.p, ')');
    if (!p)
        return 0;
    p += 2; /* field 3 */
    for (int f = 3; f < 22 && p; f++) {
        p = strchr(p, ' ');
        if (p)
            p++;
    }
    return p ? strtoull(p, NULL, 10) : 0;
}

/* The shims of this host's running jobs. */
static void collect_shims(const char *jobs_dir, const char *prefix, struct pidset *out)
{
    DIR *d = opendir(jobs_dir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strncmp(e->d_name, prefix, strlen(prefix)) != 0)
            continue;
        cleanup_buf struct buf path = BUF_INIT, text = BUF_INIT;
        buf_printf(&path, "%s/%s/shim.pid", jobs_dir, e->d_name);
        if (!read_small(path.p, &text) || text.len == 0)
            continue;
        buf_putc(&text, '\0');
        long pid = 0;
        unsigned long long st = 0;
        if (sscanf(text.p, "%ld %llu", &pid, &st) == 2 && pid > 1 && proc_alive((pid_t)pid) &&
            start_time((pid_t)pid) == st)
            pidset_add(out, (pid_t)pid);
    }
    closedir(d);
}

/* Calls fn with every cgroup directory /pier/<prefix>* in every mounted
 * hierarchy under /sys/fs/cgroup (v2 at the top, v1 one level down). */
static void each_job_cgroup(const char *prefix, void (*fn)(const char *dir, void *ud), void *ud)
{
    const char *root = getenv("PIER_CGROUP_ROOT");
    root = root && *root ? root : "/sys/fs/cgroup";
    cleanup_buf struct buf tops = BUF_INIT;
    buf_printf(&tops, "%s%c", root, '\0');
    DIR *r = opendir(root);
    struct dirent *e;
    while (r && (e = readdir(r)))
        if (e->d_name[0] != '.' && e->d_type == DT_DIR)
            buf_printf(&tops, "%s/%s%c", root, e->d_name, '\0');
    if (r)
        closedir(r);
    for (size_t off = 0; off < tops.len; off += strlen(tops.p + off) + 1) {
        cleanup_buf struct buf pier = BUF_INIT;
        buf_printf(&pier, "%s/pier", tops.p + off);
        DIR *d = opendir(pier.p);
        if (!d)
            continue;
        while ((e = readdir(d))) {
            if (strncmp(e->d_name, prefix, strlen(prefix)) != 0)
                continue;
            cleanup_buf struct buf dir = BUF_INIT;
            buf_printf(&dir, "%s/%s", pier.p, e->d_name);
            fn(dir.p, ud);
        }
        closedir(d);
    }
}

static void add_procs(const char *dir, void *ud)
{
    cleanup_buf struct buf path = BUF_INIT, text = BUF_INIT;
    buf_printf(&path, "%s/cgroup.procs", dir);
    if (!read_small(path.p, &text) || text.len == 0)
        return;
    buf_putc(&text, '\0');
    for (char *p = text.p, *end; *p; p = end) {
        long pid = strtol(p, &end, 10);
        if (end == p)
            break;
        if (pid > 1)
            pidset_add(ud, (pid_t)pid);
    }
}

static void kill_cgroup(const char *dir, void *ud)
{
    (void)ud;
    cleanup_buf struct buf path = BUF_INIT;
    buf_printf(&path, "%s/cgroup.kill", dir);
    cleanup_close int fd = open(path.p, O_WRONLY | O_CLOEXEC);
    if (fd >= 0 && write(fd, "1", 1) < 0) {
        /* an older kernel: the processes are killed one by one below */
    }
}

static void signal_all(const struct pidset *s, int sig)
{
    for (size_t i = 0; i < s->n; i++)
        kill(s->p[i], sig);
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* Kills the host's jobs for good: the shims first (so none records an
 * exit), then the containers' processes until their cgroups are empty.
 * Returns how many processes were left after 10 s. */
static size_t kill_jobs(const char *prefix, const struct pidset *shims)
{
    signal_all(shims, SIGKILL);
    each_job_cgroup(prefix, kill_cgroup, NULL);
    size_t left = 0;
    for (int round = 0; round < 100; round++) {
        struct pidset procs = {0};
        each_job_cgroup(prefix, add_procs, &procs);
        left = 0;
        for (size_t i = 0; i < procs.n; i++)
            if (proc_alive(procs.p[i])) {
                kill(procs.p[i], SIGKILL);
                left++;
            }
        free(procs.p);
        for (size_t i = 0; i < shims->n; i++)
            if (proc_alive(shims->p[i]))
                left++;
        if (left == 0)
            break;
        sleep_ms(100);
    }
    return left;
}

static void say_stopped(const char *name, int how, pid_t pid)
{
    if (how == 1)
        printf("stopped %s (pid %d)\n", name, (int)pid);
    else if (how == 2)
        printf("killed %s (pid %d): it did not stop within 10 s of SIGTERM\n", name, (int)pid);
    fflush(stdout);
}

static char *host_id(const char *host_dir)
{
    cleanup_buf struct buf path = BUF_INIT, text = BUF_INIT;
    buf_printf(&path, "%s/host-id", host_dir);
    if (!read_small(path.p, &text) || text.len == 0)
        return NULL;
    buf_putc(&text, '\0');
    text.p[strcspn(text.p, "\r\n")] = '\0';
    return text.p[0] ? xstrdup(text.p) : NULL;
}

int cli_down(struct cli *c)
{
    const char *flag = NULL;
    for (int i = 0; i < c->argc; i++) {
        if (strcmp(c->argv[i], "--state-dir") == 0) {
            if (i + 1 >= c->argc)
                return ui_usage("down", "--state-dir needs a directory");
            flag = c->argv[++i];
        } else if (strncmp(c->argv[i], "--state-dir=", 12) == 0) {
            flag = c->argv[i] + 12;
        } else {
            return ui_usage("down", "unknown flag \"%s\"", c->argv[i]);
        }
    }
    cleanup_free char *given = state_dir_resolve(flag);
    char state[4096];
    if (!realpath(given, state))
        return ui_fail("'pier up' makes one; --state-dir DIR (or PIER_HOME) names another",
                       "no state dir at %s", given);
    cleanup_buf struct buf store_dir = BUF_INIT, host_dir = BUF_INIT, jobs_dir = BUF_INIT;
    buf_printf(&store_dir, "%s/store", state);
    buf_printf(&host_dir, "%s/host", state);
    buf_printf(&jobs_dir, "%s/jobs", host_dir.p);
    struct pierd_daemon host = {.name = "host", .state = state, .data_dir = host_dir.p};
    struct pierd_daemon store = {.name = "store", .state = state, .data_dir = store_dir.p};

    cleanup_free char *id = host_id(host_dir.p);
    cleanup_buf struct buf prefix = BUF_INIT;
    struct pidset shims = {0}, procs = {0};
    if (id) {
        buf_printf(&prefix, "%s-", id);
        collect_shims(jobs_dir.p, prefix.p, &shims);
        each_job_cgroup(prefix.p, add_procs, &procs);
        signal_all(&shims, SIGSTOP);
        signal_all(&procs, SIGSTOP);
    }
    pid_t pid;
    int how = pierd_daemon_stop(&host, 10, &pid);
    say_stopped("host", how, pid);
    int rc = 0;
    if (id) /* a job the agent started while it stopped */
        collect_shims(jobs_dir.p, prefix.p, &shims);
    if (id && (shims.n || procs.n)) {
        size_t left = kill_jobs(prefix.p, &shims);
        printf("stopped the jobs of host %s: %zu shims, %zu container processes (their records "
               "are left as they are: 'pier up' starts them again)\n",
               id, shims.n, procs.n);
        if (left)
            rc = ui_fail(NULL, "%zu processes of host %s's jobs did not die of SIGKILL", left, id);
    }
    free(shims.p);
    free(procs.p);
    how = pierd_daemon_stop(&store, 10, &pid);
    say_stopped("store", how, pid);
    struct cluster_state cs;
    if (cluster_state_load(state, &cs, NULL) == 0) {
        if (cs.store_urls)
            printf("left the store alone: %s, %s\n",
                   cs.joined ? "the joined cluster's" : "external", cs.store_urls);
        cluster_state_free(&cs);
    }
    return rc;
}
