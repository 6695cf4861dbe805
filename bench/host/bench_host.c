/* bench_host: how long the host agent takes from a job record written to
 * the store to the job's own process running, next to plain `crun run` of
 * the same bundle (bench/host/run starts the store and the agent, then runs
 * this once per round). It prints one figure a line, "SIDE FIGURE VALUE",
 * SIDE being "agent" or "crun":
 *
 *   seq_p50_ms, seq_p99_ms, seq_min_ms
 *       --jobs jobs per side one after another, the sides taking turns job
 *       by job (each job fully ended and removed, then --gap-ms of quiet,
 *       before the next is started): from t0 to the job's process running
 *       (nearest rank: of 50, p99 is the slowest)
 *   burst_p50_ms, burst_all_ms
 *       --burst jobs at once: the median job, and the last one
 *   seq_up_p50_ms, seq_up_p99_ms, burst_up_all_ms   (agent only)
 *       from t0 to the store watch delivering the record with state "up"
 *   config_identical                                 (check, 1 or 0)
 *       the crun side's config.json equals the agent's for the same spec
 *
 * t0, agent: just before the store_put of the record (the burst: before
 * the one transaction that puts all of them). t0, crun: just before
 * spawning `crun run --detach` on a bundle written beforehand (the burst:
 * before the first of the spawns, made back to back). "Running": the job
 * is bench_host_probe, whose first act is to read CLOCK_MONOTONIC; it sends
 * that time with its job id to this program's socket, then waits for the
 * socket to close. This program closes it once the figures for that job are
 * in (for the agent: once the record says "up"), and then waits for the
 * job to end and be cleaned up (agent: the record says "down", then it is
 * deleted; crun: the container's init is reaped, then `crun delete`)
 * before the next job, or the next phase, begins.
 *
 * The crun side writes its bundles with the agent's own bundle_write
 * (src/host/bundle.c) from the same record, parsed by the agent's own
 * jobspec_parse, and runs crun with the flags the agent's shim uses, so
 * the container is the same; config_identical checks this against the
 * config.json the agent wrote for its first job.
 *
 *   bench_host [flags]   (bench_host --help lists them) */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "host/bundle.h"
#include "host/jobspec.h"
#include "lib/buf.h"
#include "lib/jsonx.h"
#include "lib/store.h"

extern char **environ;

/* Where job records live (docs/host.md). */
#define JOBS_PREFIX "/pier/v1/jobs/"
#define MAX_SLOTS 1000

struct opts {
    const char *store, *host_id, *stack, *work, *agent_data, *crun, *crun_root, *raw;
    long jobs, burst, warmup, round, timeout_ms, memory_mb, gap_ms;
    bool crun_first;
};

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

/* --- one job ---------------------------------------------------------- */

struct slot {
    char id[JOBSPEC_MAX_ID + 1];
    int64_t t0;     /* written / spawned */
    int64_t t_run;  /* the probe's own clock at its start */
    int64_t t_recv; /* its line arrived here */
    int64_t t_up;   /* agent: the watch delivered state "up" */
    int64_t t_end;  /* agent: the watch delivered a final state */
    char state[16];
    char error[256]; /* agent: host_error of a failed job */
    int conn;        /* the probe's connection, -1 before or after */
    pid_t crun_pid, cpid;
    bool crun_done, cpid_done;
    int crun_status;
};

/* The jobs of the phase running; the probe and watch threads fill them in. */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static struct slot slots[MAX_SLOTS];
static size_t n_slots;
static atomic_bool stopping;
static FILE *raw;
static struct opts o;

/* Lock held. */
static struct slot *find_slot(const char *id)
{
    for (size_t i = 0; i < n_slots; i++)
        if (strcmp(slots[i].id, id) == 0)
            return &slots[i];
    return NULL;
}

/* Makes slots [from, from + n) the jobs of side in phase, and the table
 * that long. */
static void set_slots(size_t from, size_t n, const char *side, const char *phase)
{
    pthread_mutex_lock(&mu);
    for (size_t i = 0; i < n; i++) {
        struct slot *s = &slots[from + i];
        *s = (struct slot){.conn = -1};
        /* "<host>-r<round><a|c><phase letter><index>": the same length on
         * both sides, so hostnames and cgroup paths are alike. */
        snprintf(s->id, sizeof(s->id), "%s-r%ld%c%c%03zu", o.host_id, o.round, side[0], phase[0],
                 i);
    }
    n_slots = from + n;
    pthread_mutex_unlock(&mu);
}

/* --- the probes' socket ----------------------------------------------- */

static int listen_fd = -1;
static int listen_port;

static void open_listener(void)
{
    listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(sa);
    if (listen_fd < 0 || bind(listen_fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
        listen(listen_fd, 1024) < 0 || getsockname(listen_fd, (struct sockaddr *)&sa, &len) < 0)
        die("probe socket: %s", strerror(errno));
    listen_port = ntohs(sa.sin_port);
}

/* A probe's line handed in: the slot gets its times and keeps the
 * connection (the probe runs until it is closed). Returns false for a line
 * that names no job of this phase (an earlier run's probe, left to end). */
static bool probe_line(const char *line, int fd, int64_t t)
{
    char id[JOBSPEC_MAX_ID + 1];
    long long stamp = 0;
    bool ok = false;
    pthread_mutex_lock(&mu);
    struct slot *s = NULL;
    if (sscanf(line, "%64s %lld", id, &stamp) == 2)
        s = find_slot(id);
    if (s && !s->t_recv) {
        s->t_recv = t;
        /* 0: a probe without a clock of its own (the host stack's bash). */
        s->t_run = stamp > 0 ? stamp : t;
        s->conn = fd;
        ok = true;
        pthread_cond_broadcast(&cv);
    }
    pthread_mutex_unlock(&mu);
    if (!ok)
        fprintf(stderr, "bench_host: a probe said \"%.100s\", which names no job here\n", line);
    return ok;
}

#define MAX_PENDING 256

/* Accepts the probes' connections and reads each one's line, many at a
 * time (a probe may be descheduled between its connect and its write). */
static void *probe_main(void *arg)
{
    (void)arg;
    struct pollfd p[MAX_PENDING + 1];
    char line[MAX_PENDING][160];
    size_t got[MAX_PENDING];
    size_t n = 0;
    p[0] = (struct pollfd){.fd = listen_fd, .events = POLLIN};
    while (!atomic_load(&stopping)) {
        if (poll(p, n + 1, 100) <= 0)
            continue;
        int64_t t = now_ns();
        for (size_t i = 1; i <= n; i++) {
            if (!p[i].revents)
                continue;
            size_t k = i - 1;
            ssize_t r = read(p[i].fd, line[k] + got[k], sizeof(line[k]) - 1 - got[k]);
            if (r > 0)
                got[k] += (size_t)r;
            line[k][got[k]] = 0;
            bool done = memchr(line[k], '\n', got[k]) || got[k] == sizeof(line[k]) - 1;
            if (r > 0 && !done)
                continue;
            if (!done || !probe_line(line[k], p[i].fd, t))
                close(p[i].fd); /* ended without a line, or a stray */
            /* Off the list: the last one takes its place. */
            if (i != n) {
                p[i] = p[n];
                memcpy(line[k], line[n - 1], sizeof(line[k]));
                got[k] = got[n - 1];
            }
            n--;
            i--;
        }
        if ((p[0].revents & POLLIN) && n < MAX_PENDING) {
            int c = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
            if (c >= 0) {
                n++;
                p[n] = (struct pollfd){.fd = c, .events = POLLIN};
                got[n - 1] = 0;
            }
        }
    }
    for (size_t i = 1; i <= n; i++)
        close(p[i].fd);
    return NULL;
}

/* --- the store watch (agent side) ------------------------------------- */

static struct store *st;
static struct store_watch *watch;

static bool final_state(const char *s)
{
    return strcmp(s, "down") == 0 || strcmp(s, "crashed") == 0 || strcmp(s, "failed") == 0;
}

static void *watch_main(void *arg)
{
    (void)arg;
    while (!atomic_load(&stopping)) {
        struct store_events *ev = NULL;
        struct pier_err err = {0};
        int rc = store_watch_next(watch, 200, &ev, &err);
        int64_t t = now_ns();
        if (rc == PIER_ETIMEOUT)
            continue;
        if (rc < 0) {
            fprintf(stderr, "bench_host: store watch: %s\n", err.msg);
            usleep(100000);
            continue;
        }
        pthread_mutex_lock(&mu);
        for (size_t i = 0; i < ev->n; i++) {
            const struct store_event *e = &ev->ev[i];
            json_t *rec = NULL;
            if (e->type != STORE_EVENT_PUT ||
                jsonx_parse_object(e->kv.value, e->kv.value_len, &rec, NULL) < 0)
                continue;
            const char *id = json_string_value(json_object_get(rec, "id"));
            const char *state = json_string_value(json_object_get(rec, "state"));
            struct slot *s = id ? find_slot(id) : NULL;
            if (s && state) {
                if (strcmp(state, "up") == 0 && !s->t_up)
                    s->t_up = t;
                if (final_state(state) && !s->t_end) {
                    s->t_end = t;
                    snprintf(s->state, sizeof(s->state), "%s", state);
                    const char *he = json_string_value(json_object_get(rec, "host_error"));
                    snprintf(s->error, sizeof(s->error), "%s", he ? he : "");
                }
                pthread_cond_broadcast(&cv);
            }
            json_decref(rec);
        }
        pthread_mutex_unlock(&mu);
        store_events_free(ev);
    }
    return NULL;
}

/* --- failing ---------------------------------------------------------- */

static void crun_delete(const char *id);

/* Removes what this program started (bench/host/run sweeps again). */
static void cleanup_slots(void)
{
    for (size_t i = 0; i < n_slots; i++) {
        if (slots[i].conn >= 0)
            close(slots[i].conn);
        if (slots[i].crun_pid > 0)
            crun_delete(slots[i].id);
    }
}

static void die(const char *fmt, ...)
{
    static bool dying; /* a failure while cleaning up ends at once */
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "bench_host: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    atomic_store(&stopping, true);
    if (!dying) {
        dying = true;
        cleanup_slots();
    }
    exit(1);
}

/* --- records and bundles ---------------------------------------------- */

static bool host_stack(void)
{
    return strcmp(o.stack, "host") == 0;
}

/* The job record both sides start from. */
static json_t *make_record(const char *id)
{
    char port[16];
    snprintf(port, sizeof(port), "%d", listen_port);
    json_t *args;
    if (host_stack())
        /* The host's binds hold no probe: bash's /dev/tcp does its job,
         * and the time is when its line arrives. */
        args = json_pack("[s, s, s]", "/bin/bash", "-c",
                         "exec 3<>/dev/tcp/127.0.0.1/$BENCH_PORT && echo \"$PIER_JOB_ID 0\" >&3 "
                         "&& read -r -u 3 _; exit 0");
    else
        args = json_pack("[s]", "/bin/probe");
    json_t *rec =
        json_pack("{s:s, s:s, s:o, s:{s:s}, s:{s:{s:I}}, s:[], s:s}", "id", id, "host_id",
                  o.host_id, "args", args, "env", "BENCH_PORT", port, "resources", "memory",
                  "limit", (json_int_t)o.memory_mb << 20, "ports", "desired_state", "up");
    if (!host_stack())
        json_object_set_new(rec, "artifact", json_pack("{s:s}", "stack", o.stack));
    return rec;
}

static void job_dir(const char *id, struct buf *out)
{
    buf_printf(out, "%s/%s", o.work, id);
}

/* Writes the crun side's bundle for id, as the agent would. */
static void write_bundle(const char *id)
{
    json_t *rec = make_record(id);
    struct jobspec *spec = NULL;
    struct pier_err err = {0};
    if (jobspec_parse(rec, &spec, &err) < 0)
        die("job %s: %s", id, err.msg);
    json_decref(rec);
    struct buf dir = BUF_INIT, host_root = BUF_INIT;
    job_dir(id, &dir);
    buf_printf(&host_root, "%s/host-root", o.work);
    if (mkdir(dir.p, 0700) < 0 && errno != EEXIST)
        die("%s: %s", dir.p, strerror(errno));
    if (host_stack() && bundle_host_root(host_root.p, &err) < 0)
        die("%s", err.msg);
    if (!host_stack() && bundle_check_stack(spec->stack, &err) < 0)
        die("%s", err.msg);
    struct bundle_opts bo = {
        .job_dir = dir.p,
        .root = host_stack() ? NULL : spec->stack,
        .host_root = host_root.p,
        .uid = 65534,
        .gid = 65534,
        .host_id = o.host_id,
    };
    if (bundle_write(spec, &bo, &err) < 0)
        die("job %s: %s", id, err.msg);
    jobspec_free(spec);
    buf_free(&dir);
    buf_free(&host_root);
}

/* --- crun ------------------------------------------------------------- */

/* Spawns argv with stdin and stdout on /dev/null and stderr appended to
 * errlog. (The shim gives crun pipes for stdout and stderr, read by its
 * logger; here nothing reads the job's output, and the probe writes none.) */
static pid_t spawn(char *const argv[], const char *errlog)
{
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 2, errlog, O_WRONLY | O_CREAT | O_APPEND, 0600);
    pid_t pid;
    int rc = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0)
        die("cannot run %s: %s", argv[0], strerror(rc));
    return pid;
}

/* `crun [--root R] --log=... OP...` as the agent's shim spells it
 * (src/host/shim.c: crun_argv), stderr into the job's crun.err. */
static pid_t crun(const char *id, const char *const *op)
{
    struct buf dir = BUF_INIT, logarg = BUF_INIT, err = BUF_INIT;
    job_dir(id, &dir);
    buf_printf(&logarg, "--log=%s/crun.log", dir.p);
    buf_printf(&err, "%s/crun.err", dir.p);
    char *argv[24];
    int n = 0;
    argv[n++] = (char *)o.crun;
    argv[n++] = "--root";
    argv[n++] = (char *)o.crun_root;
    argv[n++] = logarg.p;
    argv[n++] = "--log-format=json";
    while (*op && n < 23)
        argv[n++] = (char *)*op++;
    argv[n] = NULL;
    pid_t pid = spawn(argv, err.p);
    buf_free(&dir);
    buf_free(&logarg);
    buf_free(&err);
    return pid;
}

/* `crun run --detach` of the bundle in the job's directory, with the flags
 * the shim passes for a job without a TTY. */
static pid_t crun_run(const char *id)
{
    struct buf bundle = BUF_INIT, pidfile = BUF_INIT;
    job_dir(id, &bundle);
    buf_printf(&pidfile, "%s/container.pid", bundle.p);
    buf_puts(&bundle, "/bundle");
    const char *const op[] = {"run",        "--detach", "--bundle", bundle.p,
                              "--pid-file", pidfile.p,  id,         NULL};
    pid_t pid = crun(id, op);
    buf_free(&bundle);
    buf_free(&pidfile);
    return pid;
}

static void crun_delete(const char *id)
{
    const char *const op[] = {"delete", "--force", id, NULL};
    pid_t pid = crun(id, op);
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
}

static pid_t read_pidfile(const char *id)
{
    struct buf p = BUF_INIT;
    job_dir(id, &p);
    buf_puts(&p, "/container.pid");
    FILE *f = fopen(p.p, "re");
    long pid = 0;
    if (!f || fscanf(f, "%ld", &pid) != 1)
        pid = 0;
    if (f)
        fclose(f);
    buf_free(&p);
    return (pid_t)pid;
}

/* Reaps whatever has ended: crun processes and, this program being a child
 * subreaper, containers' inits once their crun has exited. Main thread only. */
static void reap(void)
{
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        pthread_mutex_lock(&mu);
        for (size_t i = 0; i < n_slots; i++) {
            if (slots[i].crun_pid == pid) {
                slots[i].crun_done = true;
                slots[i].crun_status = status;
            } else if (slots[i].cpid == pid) {
                slots[i].cpid_done = true;
            }
        }
        pthread_mutex_unlock(&mu);
    }
}

/* --- waiting ---------------------------------------------------------- */

enum wait_for { W_RUN, W_UP, W_END, W_CRUN, W_CONTAINER };

/* Lock held. Whether slot s has got as far as w; a job that failed on the
 * way is fatal. */
static bool reached(struct slot *s, enum wait_for w)
{
    if (s->t_end && strcmp(s->state, "down") != 0 && w != W_END)
        die("job %s ended %s before it ran: %s", s->id, s->state, s->error);
    if (s->crun_done && (!WIFEXITED(s->crun_status) || WEXITSTATUS(s->crun_status) != 0))
        die("crun run of %s failed (status %d); see %s/%s/crun.log and crun.err", s->id,
            s->crun_status, o.work, s->id);
    switch (w) {
    case W_RUN: return s->t_run != 0;
    case W_UP: return s->t_up != 0;
    case W_END: return s->t_end != 0;
    case W_CRUN: return s->crun_done;
    case W_CONTAINER: return s->cpid_done;
    }
    return false;
}

/* Waits until slots [from, to) have all reached w. Reaps meanwhile when
 * crun processes are involved. */
static void wait_all(size_t from, size_t to, enum wait_for w)
{
    int64_t deadline = now_ns() + o.timeout_ms * 1000000;
    for (;;) {
        reap();
        pthread_mutex_lock(&mu);
        size_t i = from;
        while (i < to && reached(&slots[i], w))
            i++;
        if (i == to) {
            pthread_mutex_unlock(&mu);
            return;
        }
        if (now_ns() > deadline) {
            static const char *const what[] = {"its process to run", "its record to say up",
                                               "its record to say it ended", "crun to exit",
                                               "its container to exit"};
            die("job %s: waited %ld ms for %s", slots[i].id, o.timeout_ms, what[w]);
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 2000000; /* 2 ms: children are reaped by polling */
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&cv, &mu, &ts);
        pthread_mutex_unlock(&mu);
    }
}

static void close_conn(struct slot *s)
{
    pthread_mutex_lock(&mu);
    if (s->conn >= 0)
        close(s->conn);
    s->conn = -1;
    pthread_mutex_unlock(&mu);
}

/* --- the two sides ---------------------------------------------------- */

static void agent_put(size_t i)
{
    json_t *rec = make_record(slots[i].id);
    struct buf key = BUF_INIT, val = BUF_INIT;
    buf_printf(&key, JOBS_PREFIX "%s", slots[i].id);
    jsonx_dump(&val, rec);
    json_decref(rec);
    struct pier_err err = {0};
    pthread_mutex_lock(&mu);
    slots[i].t0 = now_ns();
    pthread_mutex_unlock(&mu);
    if (store_put(st, key.p, val.p, val.len, 0, NULL, &err) < 0)
        die("putting %s: %s", key.p, err.msg);
    buf_free(&key);
    buf_free(&val);
}

/* The jobs have ended: their records go, which the agent takes as "forget
 * them". */
static void agent_forget(size_t from, size_t to)
{
    for (size_t i = from; i < to; i++) {
        struct buf key = BUF_INIT;
        struct pier_err err = {0};
        buf_printf(&key, JOBS_PREFIX "%s", slots[i].id);
        if (store_delete(st, key.p, NULL, NULL, &err) < 0)
            die("deleting %s: %s", key.p, err.msg);
        buf_free(&key);
    }
}

/* After a job has run: close the probe, wait for the end, clean up. */
static void agent_finish(size_t from, size_t to)
{
    wait_all(from, to, W_UP);
    for (size_t i = from; i < to; i++)
        close_conn(&slots[i]);
    wait_all(from, to, W_END);
    agent_forget(from, to);
}

/* --gap-ms: a pause between sequential jobs, for the kernel's own
 * cleanup of the last container (namespaces, cgroups) to finish. */
static void gap(void)
{
    if (o.gap_ms > 0)
        usleep((useconds_t)o.gap_ms * 1000);
}

/* One job through the agent, from the record written to its end. */
static void agent_one(size_t i)
{
    gap();
    agent_put(i);
    wait_all(i, i + 1, W_RUN);
    agent_finish(i, i + 1);
}

static void agent_burst(size_t n)
{
    struct store_txn *txn = store_txn_new();
    for (size_t i = 0; i < n; i++) {
        json_t *rec = make_record(slots[i].id);
        struct buf key = BUF_INIT, val = BUF_INIT;
        buf_printf(&key, JOBS_PREFIX "%s", slots[i].id);
        jsonx_dump(&val, rec);
        store_txn_put(txn, STORE_THEN, key.p, val.p, val.len, 0);
        json_decref(rec);
        buf_free(&key);
        buf_free(&val);
    }
    struct store_txn_result *res = NULL;
    struct pier_err err = {0};
    pthread_mutex_lock(&mu);
    int64_t t0 = now_ns();
    for (size_t i = 0; i < n; i++)
        slots[i].t0 = t0;
    pthread_mutex_unlock(&mu);
    if (store_txn_commit(st, txn, &res, &err) < 0)
        die("putting %zu records in one transaction: %s", n, err.msg);
    store_txn_result_free(res);
    store_txn_free(txn);
    wait_all(0, n, W_RUN);
    agent_finish(0, n);
}

/* After containers have run: close the probes, reap crun and the inits,
 * delete the containers. */
static void crun_finish(size_t from, size_t to)
{
    wait_all(from, to, W_CRUN);
    for (size_t i = from; i < to; i++) {
        pid_t cpid = read_pidfile(slots[i].id);
        pthread_mutex_lock(&mu);
        slots[i].cpid = cpid;
        if (cpid <= 0)
            slots[i].cpid_done = true; /* nothing to wait for */
        pthread_mutex_unlock(&mu);
        close_conn(&slots[i]);
    }
    wait_all(from, to, W_CONTAINER);
    for (size_t i = from; i < to; i++) {
        crun_delete(slots[i].id);
        slots[i].crun_pid = 0;
    }
}

/* One job through plain crun, its bundle written before t0. */
static void crun_one(size_t i)
{
    write_bundle(slots[i].id);
    gap();
    pthread_mutex_lock(&mu);
    slots[i].t0 = now_ns();
    pthread_mutex_unlock(&mu);
    pid_t pid = crun_run(slots[i].id);
    pthread_mutex_lock(&mu);
    slots[i].crun_pid = pid;
    pthread_mutex_unlock(&mu);
    wait_all(i, i + 1, W_RUN);
    crun_finish(i, i + 1);
}

static void crun_burst(size_t n)
{
    for (size_t i = 0; i < n; i++)
        write_bundle(slots[i].id);
    int64_t t0 = now_ns();
    for (size_t i = 0; i < n; i++) {
        pthread_mutex_lock(&mu);
        slots[i].t0 = t0;
        pthread_mutex_unlock(&mu);
        pid_t pid = crun_run(slots[i].id);
        pthread_mutex_lock(&mu);
        slots[i].crun_pid = pid;
        pthread_mutex_unlock(&mu);
    }
    wait_all(0, n, W_RUN);
    crun_finish(0, n);
}

/* --- figures ---------------------------------------------------------- */

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* The nearest-rank percentile p (0..1) of v[0..n) in ms; sorts v. */
static double pct_ms(int64_t *v, size_t n, double p)
{
    if (n == 0)
        return 0;
    qsort(v, n, sizeof(*v), cmp_i64);
    size_t rank = (size_t)(p * (double)n + 0.999999);
    if (rank < 1)
        rank = 1;
    if (rank > n)
        rank = n;
    return (double)v[rank - 1] / 1e6;
}

/* One line per job: times in ms after t0, and t0 itself on the wall clock
 * (to set against the mtimes of the files in the job's directory). */
static void write_raw(const char *side, const char *phase, size_t from, size_t to)
{
    if (!raw)
        return;
    struct timespec rt;
    clock_gettime(CLOCK_REALTIME, &rt);
    int64_t wall = (int64_t)rt.tv_sec * 1000000000 + rt.tv_nsec - now_ns();
    for (size_t i = from; i < to; i++) {
        const struct slot *s = &slots[i];
        int64_t t0 = s->t0 + wall;
        fprintf(raw,
                "%ld %s %s %s t0=%lld.%09lld t0_mono=%lld run=%.3f recv=%.3f up=%.3f end=%.3f\n",
                o.round, side, phase, s->id, (long long)(t0 / 1000000000),
                (long long)(t0 % 1000000000), (long long)s->t0, (double)(s->t_run - s->t0) / 1e6,
                (double)(s->t_recv - s->t0) / 1e6, s->t_up ? (double)(s->t_up - s->t0) / 1e6 : -1.0,
                s->t_end ? (double)(s->t_end - s->t0) / 1e6 : -1.0);
    }
    fflush(raw);
}

/* The figures of side's jobs in slots [from, to). */
static void report(const char *side, const char *phase, size_t from, size_t to)
{
    bool agent = side[0] == 'a';
    size_t n = to - from;
    int64_t *run = xcalloc(n + 1, sizeof(int64_t)), *up = xcalloc(n + 1, sizeof(int64_t));
    for (size_t i = 0; i < n; i++) {
        run[i] = slots[from + i].t_run - slots[from + i].t0;
        up[i] = slots[from + i].t_up - slots[from + i].t0;
    }
    write_raw(side, phase, from, to);
    if (strcmp(phase, "seq") == 0) {
        printf("%s seq_p50_ms %.3f\n", side, pct_ms(run, n, 0.50));
        printf("%s seq_p99_ms %.3f\n", side, pct_ms(run, n, 0.99));
        printf("%s seq_min_ms %.3f\n", side, pct_ms(run, n, 0));
        if (agent) {
            printf("%s seq_up_p50_ms %.3f\n", side, pct_ms(up, n, 0.50));
            printf("%s seq_up_p99_ms %.3f\n", side, pct_ms(up, n, 0.99));
        }
    } else {
        printf("%s burst_p50_ms %.3f\n", side, pct_ms(run, n, 0.50));
        printf("%s burst_all_ms %.3f\n", side, pct_ms(run, n, 1));
        if (agent)
            printf("%s burst_up_all_ms %.3f\n", side, pct_ms(up, n, 1));
    }
    fflush(stdout);
    free(run);
    free(up);
}

/* --- the config check ------------------------------------------------- */

/* config.json of dir, as compact sorted JSON with dir replaced by @JOB@. */
static char *normalized_config(const char *dir)
{
    char real[PATH_MAX];
    if (!realpath(dir, real))
        return NULL;
    struct buf p = BUF_INIT;
    buf_printf(&p, "%s/bundle/config.json", real);
    json_t *j = json_load_file(p.p, 0, NULL);
    buf_free(&p);
    if (!j)
        return NULL;
    /* The host stack's empty root is the agent's or this program's own. */
    json_t *root = json_object_get(j, "root");
    if (host_stack() && json_is_object(root))
        json_object_set_new(root, "path", json_string("@HOST_ROOT@"));
    char *text = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(j);
    struct buf out = BUF_INIT;
    size_t rl = strlen(real);
    for (const char *s = text; *s;) {
        const char *hit = strstr(s, real);
        if (!hit) {
            buf_puts(&out, s);
            break;
        }
        buf_append(&out, s, (size_t)(hit - s));
        buf_puts(&out, "@JOB@");
        s = hit + rl;
    }
    free(text);
    return buf_detach(&out);
}

/* Whether the bundle this program writes for the agent's job id equals
 * the one the agent wrote (its directory aside). */
static void check_config(const char *agent_id)
{
    struct buf adir = BUF_INIT, cdir = BUF_INIT;
    buf_printf(&adir, "%s/jobs/%s", o.agent_data, agent_id);
    /* The same id: the hostname, PIER_JOB_ID and the cgroup path follow it. */
    struct opts saved = o;
    struct buf check = BUF_INIT;
    buf_printf(&check, "%s/check", o.work);
    mkdir(check.p, 0700);
    o.work = check.p;
    write_bundle(agent_id);
    job_dir(agent_id, &cdir);
    o = saved;
    buf_free(&check);
    char *a = normalized_config(adir.p), *c = normalized_config(cdir.p);
    bool same = a && c && strcmp(a, c) == 0;
    if (!same) {
        fprintf(stderr, "bench_host: the crun side's config.json differs from the agent's:\n");
        fprintf(stderr, "agent (%s): %s\ncrun  (%s): %s\n", adir.p, a ? a : "(unreadable)", cdir.p,
                c ? c : "(unreadable)");
    }
    printf("check config_identical %d\n", same);
    free(a);
    free(c);
    buf_free(&adir);
    buf_free(&cdir);
}

/* --- flags ------------------------------------------------------------ */

static void usage(FILE *f)
{
    fprintf(f, "usage: bench_host --store URL --host-id ID --stack DIR|host --work DIR\n"
               "                  --agent-data DIR --crun-root DIR [flags]\n"
               "Times jobs through the host agent (records written to the store) against\n"
               "plain crun runs of the same bundle. bench/host/run sets everything up.\n\n"
               "  --store URL        the store the agent watches\n"
               "  --host-id ID       the agent's host id (jobs are ID-...)\n"
               "  --stack DIR        stack root holding bin/probe (or \"host\": the host's binds)\n"
               "  --work DIR         where the crun side's job directories go\n"
               "  --agent-data DIR   the agent's --data-dir (for the config check)\n"
               "  --crun-root DIR    crun --root of the crun side\n"
               "  --crun PATH        crun binary (default crun)\n"
               "  --jobs N           sequential jobs per side (default 50)\n"
               "  --burst N          jobs started at once per side (default 50; 0: none)\n"
               "  --warmup N         unmeasured jobs per side first (default 3)\n"
               "  --round N          round number, part of the job ids (default 1)\n"
               "  --crun-first       the crun side first: in the first pair of sequential\n"
               "                     jobs, and in the bursts (default: the agent)\n"
               "  --memory-mb N      each job's memory limit (default 64)\n"
               "  --timeout-ms N     longest wait for any one step (default 30000)\n"
               "  --gap-ms N         pause before each sequential job (default 0)\n"
               "  --raw FILE         append each job's times to FILE\n");
}

/* The numeric flags: name, where the value goes, its largest value (a
 * sequential phase holds both sides' jobs in the slots). */
static const struct {
    const char *name;
    long *v;
    long max;
} nums[] = {
    {"jobs", &o.jobs, MAX_SLOTS / 2},     {"burst", &o.burst, MAX_SLOTS},
    {"warmup", &o.warmup, MAX_SLOTS / 2}, {"round", &o.round, 9999},
    {"memory-mb", &o.memory_mb, 1 << 20}, {"timeout-ms", &o.timeout_ms, 3600000},
    {"gap-ms", &o.gap_ms, 60000},
};
#define N_NUMS (sizeof(nums) / sizeof(nums[0]))

static void parse_flags(int argc, char **argv)
{
    enum { F_STORE = 1000, F_HOST, F_STACK, F_WORK, F_AGENT, F_CRUN, F_ROOT, F_RAW, F_FIRST };
    static const struct option named[] = {
        {"store", required_argument, NULL, F_STORE},
        {"host-id", required_argument, NULL, F_HOST},
        {"stack", required_argument, NULL, F_STACK},
        {"work", required_argument, NULL, F_WORK},
        {"agent-data", required_argument, NULL, F_AGENT},
        {"crun", required_argument, NULL, F_CRUN},
        {"crun-root", required_argument, NULL, F_ROOT},
        {"raw", required_argument, NULL, F_RAW},
        {"crun-first", no_argument, NULL, F_FIRST},
        {"help", no_argument, NULL, 'h'},
    };
    const size_t n_named = sizeof(named) / sizeof(named[0]);
    struct option lo[sizeof(named) / sizeof(named[0]) + N_NUMS + 1];
    memcpy(lo, named, sizeof(named));
    for (size_t i = 0; i < N_NUMS; i++)
        lo[n_named + i] = (struct option){nums[i].name, required_argument, NULL, 2000 + (int)i};
    lo[n_named + N_NUMS] = (struct option){NULL, 0, NULL, 0};
    o = (struct opts){.crun = "crun",
                      .jobs = 50,
                      .burst = 50,
                      .warmup = 3,
                      .round = 1,
                      .timeout_ms = 30000,
                      .memory_mb = 64};
    int c;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case F_STORE: o.store = optarg; break;
        case F_HOST: o.host_id = optarg; break;
        case F_STACK: o.stack = optarg; break;
        case F_WORK: o.work = optarg; break;
        case F_AGENT: o.agent_data = optarg; break;
        case F_CRUN: o.crun = optarg; break;
        case F_ROOT: o.crun_root = optarg; break;
        case F_RAW: o.raw = optarg; break;
        case F_FIRST: o.crun_first = true; break;
        case 'h': usage(stdout); exit(0);
        default:
            if (c >= 2000 && (size_t)(c - 2000) < N_NUMS) {
                size_t i = (size_t)(c - 2000);
                char *end;
                long v = strtol(optarg, &end, 10);
                if (*end || end == optarg || v < 0 || v > nums[i].max) {
                    fprintf(stderr, "bench_host: --%s needs a number from 0 to %ld, not \"%s\"\n",
                            nums[i].name, nums[i].max, optarg);
                    exit(2);
                }
                *nums[i].v = v;
                break;
            }
            usage(stderr);
            exit(2);
        }
    }
    if (optind != argc || !o.store || !o.host_id || !o.stack || !o.work || !o.agent_data ||
        !o.crun_root) {
        usage(stderr);
        exit(2);
    }
    if (o.jobs < 1 || o.memory_mb < 4) {
        fprintf(stderr, "bench_host: --jobs must be at least 1 and --memory-mb at least 4\n");
        exit(2);
    }
}

/* n jobs through each side, one after another, the sides taking turns
 * job by job (so that both meet the same moments of the machine's other
 * load), the first side alternating too. */
static void run_seq(size_t n, bool measured)
{
    const char *phase = measured ? "seq" : "warmup";
    set_slots(0, n, "agent", phase);
    set_slots(n, n, "crun", phase);
    for (size_t i = 0; i < n; i++) {
        bool agent_first = (i % 2 == 0) != o.crun_first;
        for (int k = 0; k < 2; k++)
            (k == 0) == agent_first ? agent_one(i) : crun_one(n + i);
    }
    if (measured) {
        report("agent", phase, 0, n);
        report("crun", phase, n, 2 * n);
    } else {
        write_raw("agent", phase, 0, n);
        write_raw("crun", phase, n, 2 * n);
    }
}

/* n jobs at once through one side. */
static void run_burst(bool agent, size_t n)
{
    set_slots(0, n, agent ? "agent" : "crun", "burst");
    agent ? agent_burst(n) : crun_burst(n);
    report(agent ? "agent" : "crun", "burst", 0, n);
}

int main(int argc, char **argv)
{
    parse_flags(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    /* bench/host/run starts this in the background, where a shell without
     * job control ignores SIGINT: a Ctrl-C should end it all the same. */
    signal(SIGINT, SIG_DFL);
    /* Containers' inits are reparented here when their crun exits, as they
     * are to the agent's shims: reap them the same way. */
    if (prctl(PR_SET_CHILD_SUBREAPER, 1) < 0)
        die("cannot become a child subreaper: %s", strerror(errno));
    if (mkdir(o.work, 0700) < 0 && errno != EEXIST)
        die("%s: %s", o.work, strerror(errno));
    if (o.raw && !(raw = fopen(o.raw, "ae")))
        die("%s: %s", o.raw, strerror(errno));
    struct pier_err err = {0};
    if (store_open(o.store, &st, &err) < 0)
        die("%s", err.msg);
    struct buf prefix = BUF_INIT;
    buf_printf(&prefix, JOBS_PREFIX "%s-", o.host_id);
    struct store_watch_opts wo = {.prefix = true};
    if (store_watch_open(st, prefix.p, &wo, &watch, &err) < 0)
        die("watching %s: %s", prefix.p, err.msg);
    open_listener();
    pthread_t probe_thread, watch_thread;
    pthread_create(&probe_thread, NULL, probe_main, NULL);
    pthread_create(&watch_thread, NULL, watch_main, NULL);

    if (o.warmup > 0)
        run_seq((size_t)o.warmup, false);
    run_seq((size_t)o.jobs, true);
    char id[JOBSPEC_MAX_ID + 1];
    snprintf(id, sizeof(id), "%s-r%ldas000", o.host_id, o.round);
    check_config(id);
    bool agent_first = !o.crun_first;
    if (o.burst > 0) {
        run_burst(agent_first, (size_t)o.burst);
        run_burst(!agent_first, (size_t)o.burst);
    }

    atomic_store(&stopping, true);
    pthread_join(probe_thread, NULL);
    pthread_join(watch_thread, NULL);
    store_watch_close(watch);
    store_close(st);
    buf_free(&prefix);
    if (raw)
        fclose(raw);
    return 0;
}
