/* bench_scheduler: one app scaled from 0 to --count jobs and back to 0
 * through the controller's API, timed from the store. bench/scheduler/run
 * starts the cluster (a store, host agents, a scheduler, a controller) and
 * runs this once per round. It prints one figure a line, "FIGURE VALUE":
 *
 *   put_ms                  the formation PUT's round trip
 *   created_first_s, created_all_s
 *                           from just before the PUT (t0) to the first, and
 *                           to the --count'th, job record the watch brought
 *   placements_per_s        jobs created after the first placement
 *                           transaction, over the time from the first to the
 *                           last creation (jobs of one transaction share a
 *                           revision, and arrive at once)
 *   placements_per_s_put    --count over created_all_s
 *   place_txns, place_batch_max
 *                           revisions that created job records, and the
 *                           most records one of them created
 *   up_first_s, up_half_s, up_all_s
 *                           t0 to the first, the half-way and the last job
 *                           whose record says "up" (all --count up at once)
 *   create_to_up_p50_ms, create_to_up_p99_ms, create_to_starting_p50_ms
 *                           per job, from its record's creation to "up",
 *                           and to "starting" (the agent picked it up)
 *   failed_up               jobs that ended while scaling up (replaced)
 *   spread_min, spread_max  fewest and most jobs on one host
 *   stop_all_s              from the PUT of 0 (t1) until every job's
 *                           record says desired_state "down" (the
 *                           scheduler's writes)
 *   down_all_s              t1 until every job has ended (down, crashed,
 *                           failed, or its record deleted)
 *   gone_all_s              t1 until no --crun-root lists a container
 *   events_up, events_down  job record changes the watch brought per phase
 *   cpu_place_NAME_s, cpu_up_NAME_s, cpu_down_NAME_s
 *                           CPU seconds (user + system) each --pid
 *                           NAME=PID used from t0 to the last creation
 *                           (place), to all up (up), and from t1 to all
 *                           gone (down), summed by NAME; "machine" is every
 *                           core's busy time (/proc/stat), "wall" the
 *                           phase's length, "driver" this program
 *   cpu_up_shims_s, cpu_up_containers_s
 *                           at the end of the scale-up: CPU the jobs'
 *                           shims used so far (with the crun runs they
 *                           waited for), and their containers' init
 *                           processes, from DIR/jobs/STAR/shim.pid and
 *                           container.pid of each --agent-data DIR
 *
 *   bench_scheduler [flags]   (bench_scheduler --help lists them) */
#include <dirent.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "lib/base64.h"
#include "lib/buf.h"
#include "lib/httpc.h"
#include "lib/store.h"

/* Where job records live (docs/host.md). */
#define JOBS_PREFIX "/pier/v1/jobs/"
#define MAX_MANY 16 /* of each repeatable flag */

struct opts {
    const char *store, *controller, *key, *crun, *type, *args, *raw;
    const char *roots[MAX_MANY], *agent_data[MAX_MANY];
    size_t n_roots, n_agent_data;
    struct {
        const char *name;
        pid_t pid;
    } pids[MAX_MANY];
    size_t n_pids;
    long count, memory_mb, timeout_s, round;
    bool scale_request, pause_agents;
};

static struct opts o;

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("bench_scheduler: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static double secs(int64_t ns)
{
    return (double)ns / 1e9;
}

/* --- the jobs the watch has seen -------------------------------------- */

/* Times are now_ns() when the watch delivered the change; 0: not yet. */
struct job {
    char *id;
    char host[32];
    int64_t created, starting, up, stop, ended;
    bool is_up; /* the last record seen said "up" */
};

static struct job *jobs;
static size_t n_jobs, cap_jobs;
static struct job **table; /* open addressing over jobs, cap_table slots */
static size_t cap_table;
static const char *app_id;

/* Counters the waits look at, and the phase's figures. */
static size_t n_up_now, n_live, n_stopped, n_failed, n_events;
static int64_t last_create_rev;
static size_t place_txns, place_batch, place_batch_max, first_batch;
static char first_failure[300];
static bool scaling_up;
/* --pause-agents: the agents are stopped (SIGSTOP) until every job of the
 * scale-up is created, so the placements have the machine to themselves. */
static bool paused;
/* CPU when the last job of the scale-up was created (cpu_place_*). */
struct cpu;
static void cpu_snap(struct cpu *c);
static struct cpu *place_cpu;
static bool place_cpu_taken;

static void agents_signal(int sig)
{
    for (size_t i = 0; i < o.n_pids; i++)
        if (strcmp(o.pids[i].name, "agents") == 0)
            kill(o.pids[i].pid, sig);
}

static void resume_agents(void)
{
    if (paused)
        agents_signal(SIGCONT);
    paused = false;
}

static size_t slot_of(const char *id)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (const char *p = id; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    return (size_t)h & (cap_table - 1);
}

static struct job *find_job(const char *id)
{
    for (size_t i = slot_of(id);; i = (i + 1) & (cap_table - 1)) {
        if (!table[i] || strcmp(table[i]->id, id) == 0)
            return table[i];
    }
}

static struct job *add_job(const char *id)
{
    if (n_jobs == cap_jobs)
        die("more than %zu job records for one app: replacements out of hand?", cap_jobs);
    struct job *j = &jobs[n_jobs++];
    *j = (struct job){.id = xstrdup(id)};
    size_t i = slot_of(id);
    while (table[i])
        i = (i + 1) & (cap_table - 1);
    table[i] = j;
    return j;
}

static bool ended_state(const char *s)
{
    return s && (strcmp(s, "down") == 0 || strcmp(s, "crashed") == 0 || strcmp(s, "failed") == 0);
}

static void set_ended(struct job *j, int64_t t, const json_t *rec)
{
    if (j->ended)
        return;
    j->ended = t;
    n_live--;
    if (j->is_up)
        n_up_now--;
    j->is_up = false;
    if (scaling_up) {
        n_failed++;
        /* rec is NULL for a deleted record */
        const char *state = json_string_value(json_object_get(rec, "state"));
        const char *why = json_string_value(json_object_get(rec, "host_error"));
        if (!first_failure[0])
            snprintf(first_failure, sizeof(first_failure), "%s: %s %s", j->id,
                     state ? state : "deleted", why ? why : "");
    }
}

/* A new job record: counts the placement transactions (their records share
 * the revision, and the watch delivers revisions in order). */
static void created(struct job *j, const struct store_kv *kv, const json_t *rec, int64_t t)
{
    j->created = t;
    n_live++;
    const char *host = json_string_value(json_object_get(rec, "host_id"));
    snprintf(j->host, sizeof(j->host), "%s", host ? host : "?");
    if (kv->create_revision != last_create_rev) {
        last_create_rev = kv->create_revision;
        place_txns++;
        place_batch = 0;
    }
    place_batch++;
    if (place_txns == 1)
        first_batch = place_batch;
    if (place_batch > place_batch_max)
        place_batch_max = place_batch;
}

static void on_event(const struct store_event *e, int64_t t)
{
    size_t plen = strlen(JOBS_PREFIX);
    if (strncmp(e->kv.key, JOBS_PREFIX, plen) != 0)
        return;
    const char *id = e->kv.key + plen;
    struct job *j = find_job(id);
    if (e->type == STORE_EVENT_DELETE) {
        if (j)
            set_ended(j, t, NULL);
        return;
    }
    json_t *rec = json_loadb(e->kv.value, e->kv.value_len, 0, NULL);
    const char *app = json_string_value(json_object_get(rec, "app"));
    if (!app || strcmp(app, app_id) != 0) {
        json_decref(rec);
        return;
    }
    n_events++;
    if (!j) {
        j = add_job(id);
        created(j, &e->kv, rec, t);
        if (scaling_up && n_jobs == (size_t)o.count && !place_cpu_taken) {
            cpu_snap(place_cpu);
            place_cpu_taken = true;
        }
        if (paused && n_jobs >= (size_t)o.count)
            resume_agents();
    }
    const char *state = json_string_value(json_object_get(rec, "state"));
    const char *desired = json_string_value(json_object_get(rec, "desired_state"));
    if (desired && strcmp(desired, "down") == 0 && !j->stop) {
        j->stop = t;
        n_stopped++;
    }
    if (!j->ended && state && strcmp(state, "starting") == 0 && !j->starting)
        j->starting = t;
    bool up = !j->ended && state && strcmp(state, "up") == 0;
    if (up && !j->up)
        j->up = t;
    if (up != j->is_up) {
        j->is_up = up;
        up ? n_up_now++ : n_up_now--;
    }
    if (ended_state(state))
        set_ended(j, t, rec);
    json_decref(rec);
}

/* --- waiting on the watch --------------------------------------------- */

static struct store *st;
static struct store_watch *watch;

static bool all_up(void)
{
    return n_up_now >= (size_t)o.count;
}

static bool all_ended(void)
{
    return n_live == 0;
}

static void progress(FILE *f)
{
    fprintf(f, "%zu created, %zu up, %zu stopped, %zu still live, %zu ended early", n_jobs,
            n_up_now, n_stopped, n_live, n_failed);
}

static void wait_until(bool (*done)(void), int64_t deadline, const char *what)
{
    while (!done()) {
        if (now_ns() >= deadline) {
            fprintf(stderr, "bench_scheduler: timed out after %ld s waiting for %s (", o.timeout_s,
                    what);
            progress(stderr);
            fprintf(stderr, ")%s%s\n", first_failure[0] ? "; first failure: " : "", first_failure);
            exit(1);
        }
        struct store_events *ev = NULL;
        struct pier_err err = {0};
        int rc = store_watch_next(watch, 200, &ev, &err);
        if (rc == PIER_ETIMEOUT)
            continue;
        if (rc == PIER_ECOMPACTED)
            die("the watch of %s was compacted: %s", JOBS_PREFIX, err.msg);
        if (rc < 0) {
            fprintf(stderr, "bench_scheduler: watch: %s (retrying)\n", err.msg);
            continue;
        }
        int64_t t = now_ns();
        for (size_t i = 0; i < ev->n; i++)
            on_event(&ev->ev[i], t);
        store_events_free(ev);
    }
}

/* --- the controller --------------------------------------------------- */

static struct httpc *http;
static char auth[300];

/* METHOD path with body; dies unless the answer is 200 with a JSON object.
 * Returns it (new reference). */
static json_t *call(const char *method, const char *path, json_t *body)
{
    struct buf url = BUF_INIT;
    buf_printf(&url, "%s%s", o.controller, path);
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    const char *headers[] = {auth, "Content-Type: application/json", "Accept: application/json",
                             NULL};
    const struct httpc_req req = {.method = method,
                                  .url = url.p,
                                  .name = "controller",
                                  .headers = headers,
                                  .body = text,
                                  .body_len = strlen(text),
                                  .timeout_ms = 60000};
    struct httpc_resp resp = {0};
    struct pier_err err = {0};
    if (httpc_do(http, &req, &resp, &err) < 0)
        die("%s %s: %s", method, path, err.msg);
    json_t *out = resp.body.len ? json_loadb(resp.body.p, resp.body.len, 0, NULL) : NULL;
    if (resp.status != 200 || !json_is_object(out))
        die("%s %s answered %ld: %.300s", method, path, resp.status,
            resp.body.len ? resp.body.p : "");
    httpc_resp_release(&resp);
    free(text);
    buf_free(&url);
    return out;
}

static const char *str_of(const json_t *obj, const char *field, const char *what)
{
    const char *s = json_string_value(json_object_get(obj, field));
    if (!s)
        die("%s has no \"%s\"", what, field);
    return s;
}

static char *release_id;

/* An app with one release whose process type runs o.args with a memory
 * limit of o.memory_mb and no ports, set as the app's release. */
static void make_app(void)
{
    char name[64];
    snprintf(name, sizeof(name), "bench-r%ld-%x", o.round, (unsigned)(now_ns() & 0xffffff));
    json_t *app = call("POST", "/apps", json_pack("{s:s}", "name", name));
    app_id = xstrdup(str_of(app, "id", "the app"));
    json_decref(app);
    json_error_t jerr;
    json_t *args = json_loads(o.args, 0, &jerr);
    if (!json_is_array(args) || json_array_size(args) == 0)
        die("--args must be a JSON array of strings: %s", o.args);
    json_t *proc = json_pack("{s:o,s:{s:{s:I}},s:[]}", "args", args, "resources", "memory", "limit",
                             (json_int_t)o.memory_mb << 20, "ports");
    json_t *rel = call("POST", "/releases",
                       json_pack("{s:s,s:{s:o}}", "app_id", app_id, "processes", o.type, proc));
    release_id = xstrdup(str_of(rel, "id", "the release"));
    json_decref(rel);
    struct buf path = BUF_INIT;
    buf_printf(&path, "/apps/%s/release", app_id);
    json_decref(call("PUT", path.p, json_pack("{s:s}", "id", release_id)));
    buf_free(&path);
}

/* Asks for n jobs of the type: a formation PUT, or Flynn's scale request. */
static void scale(long n)
{
    struct buf path = BUF_INIT;
    json_t *body;
    if (o.scale_request) {
        buf_printf(&path, "/apps/%s/scale/%s", app_id, release_id);
        body = json_pack("{s:{s:I}}", "new_processes", o.type, (json_int_t)n);
    } else {
        buf_printf(&path, "/apps/%s/formations/%s", app_id, release_id);
        body = json_pack("{s:s,s:s,s:{s:I}}", "app", app_id, "release", release_id, "processes",
                         o.type, (json_int_t)n);
    }
    json_decref(call("PUT", path.p, body));
    buf_free(&path);
}

/* --- CPU time --------------------------------------------------------- */

/* utime + stime (+ cutime + cstime with children) of pid in seconds; -1
 * when it is gone. start (optional) gets its start time in ticks. */
static double proc_cpu(pid_t pid, bool children, unsigned long long *start)
{
    char path[64], text[2048];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "re");
    if (!f)
        return -1;
    size_t n = fread(text, 1, sizeof(text) - 1, f);
    fclose(f);
    text[n] = '\0';
    const char *p = strrchr(text, ')');
    unsigned long ut, stm;
    long cut, cst;
    unsigned long long st0;
    /* after the name: state ppid pgrp session tty tpgid flags minflt cminflt
     * majflt cmajflt utime stime cutime cstime priority nice threads
     * itrealvalue starttime */
    if (!p || sscanf(p + 2,
                     "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu %ld %ld %*d %*d "
                     "%*d %*d %llu",
                     &ut, &stm, &cut, &cst, &st0) != 5)
        return -1;
    if (start)
        *start = st0;
    double ticks = (double)(ut + stm) + (children ? (double)(cut + cst) : 0);
    return ticks / (double)sysconf(_SC_CLK_TCK);
}

/* Busy time of every core since boot (/proc/stat), in seconds. */
static double machine_busy(void)
{
    FILE *f = fopen("/proc/stat", "re");
    unsigned long long v[8] = {0};
    if (!f || fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
                     &v[4], &v[5], &v[6], &v[7]) != 8)
        die("cannot read /proc/stat");
    fclose(f);
    /* user nice system idle iowait irq softirq steal: all but idle, iowait */
    return (double)(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / (double)sysconf(_SC_CLK_TCK);
}

struct cpu {
    double by_pid[MAX_MANY];
    double machine, driver;
    int64_t t;
};

static void cpu_snap(struct cpu *c)
{
    for (size_t i = 0; i < o.n_pids; i++) {
        c->by_pid[i] = proc_cpu(o.pids[i].pid, false, NULL);
    }
    c->machine = machine_busy();
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    c->driver = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
                (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
    c->t = now_ns();
}

/* The figures cpu_PHASE_NAME_s between a and b, summed by name. */
static void cpu_report(const char *phase, const struct cpu *a, const struct cpu *b)
{
    for (size_t i = 0; i < o.n_pids; i++) {
        bool first = true;
        for (size_t k = 0; k < i; k++)
            first = first && strcmp(o.pids[k].name, o.pids[i].name) != 0;
        if (!first)
            continue;
        double sum = 0;
        for (size_t k = i; k < o.n_pids; k++)
            if (strcmp(o.pids[k].name, o.pids[i].name) == 0 && a->by_pid[k] >= 0 &&
                b->by_pid[k] >= 0)
                sum += b->by_pid[k] - a->by_pid[k];
        printf("cpu_%s_%s_s %.2f\n", phase, o.pids[i].name, sum);
    }
    printf("cpu_%s_driver_s %.2f\n", phase, b->driver - a->driver);
    printf("cpu_%s_machine_s %.2f\n", phase, b->machine - a->machine);
    printf("cpu_%s_wall_s %.2f\n", phase, secs(b->t - a->t));
}

/* "<pid> ..." from a pid file, or 0. */
static pid_t read_pid(const char *path, unsigned long long *start)
{
    FILE *f = fopen(path, "re");
    long pid = 0;
    unsigned long long s = 0;
    if (f) {
        int got = fscanf(f, "%ld %llu", &pid, &s);
        if (got < 1)
            pid = 0;
        fclose(f);
    }
    if (start)
        *start = s;
    return pid > 1 ? (pid_t)pid : 0;
}

/* Shims (with the crun runs they waited for) and containers of the jobs
 * still running, over every --agent-data. */
static void job_cpu(double *shims, double *containers)
{
    *shims = *containers = 0;
    for (size_t a = 0; a < o.n_agent_data; a++) {
        struct buf dir = BUF_INIT;
        buf_printf(&dir, "%s/jobs", o.agent_data[a]);
        DIR *d = opendir(dir.p);
        struct dirent *de;
        while (d && (de = readdir(d))) {
            if (de->d_name[0] == '.')
                continue;
            struct buf p = BUF_INIT;
            unsigned long long want = 0, got = 0;
            buf_printf(&p, "%s/%s/shim.pid", dir.p, de->d_name);
            pid_t pid = read_pid(p.p, &want);
            double c = pid ? proc_cpu(pid, true, &got) : -1;
            if (c >= 0 && (want == 0 || want == got))
                *shims += c;
            buf_reset(&p);
            buf_printf(&p, "%s/%s/container.pid", dir.p, de->d_name);
            pid = read_pid(p.p, NULL);
            c = pid ? proc_cpu(pid, false, NULL) : -1;
            if (c >= 0)
                *containers += c;
            buf_free(&p);
        }
        if (d)
            closedir(d);
        buf_free(&dir);
    }
}

/* --- containers ------------------------------------------------------- */

/* How many containers the --crun-roots list. */
static size_t containers_listed(void)
{
    size_t n = 0;
    for (size_t i = 0; i < o.n_roots; i++) {
        struct buf cmd = BUF_INIT;
        buf_printf(&cmd, "'%s' --root '%s' list -q 2>/dev/null", o.crun, o.roots[i]);
        FILE *f = popen(cmd.p, "re");
        char line[256];
        while (f && fgets(line, sizeof(line), f))
            n += line[0] != '\n';
        if (f)
            pclose(f);
        buf_free(&cmd);
    }
    return n;
}

/* --- figures ---------------------------------------------------------- */

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile p (0-100) of v[0..n), sorted in place. */
static int64_t pct(int64_t *v, size_t n, double p)
{
    if (n == 0)
        return 0;
    qsort(v, n, sizeof(*v), cmp_i64);
    size_t rank = (size_t)((p / 100.0) * (double)n + 0.999999);
    return v[rank == 0 ? 0 : rank - 1];
}

/* The k-th (1-based) smallest of the times field of the jobs, relative to
 * t0, in ns; -1 when fewer than k have it. */
static int64_t kth(size_t field_off, size_t k, int64_t t0)
{
    int64_t *v = xcalloc(n_jobs + 1, sizeof(*v));
    size_t n = 0;
    for (size_t i = 0; i < n_jobs; i++) {
        int64_t t = *(const int64_t *)((const char *)&jobs[i] + field_off);
        if (t)
            v[n++] = t - t0;
    }
    qsort(v, n, sizeof(*v), cmp_i64);
    int64_t r = k >= 1 && k <= n ? v[k - 1] : -1;
    free(v);
    return r;
}

#define KTH(field, k, t0) kth(offsetof(struct job, field), (k), (t0))

static void print_s(const char *name, int64_t ns)
{
    if (ns < 0)
        printf("%s -\n", name);
    else
        printf("%s %.3f\n", name, secs(ns));
}

static void report_up(int64_t t0, int64_t put_ns)
{
    size_t n = (size_t)o.count;
    printf("count %zu\n", n);
    printf("put_ms %.1f\n", (double)put_ns / 1e6);
    int64_t first = KTH(created, 1, t0), last = KTH(created, n, t0);
    print_s("created_first_s", first);
    print_s("created_all_s", last);
    if (last > first && n > first_batch)
        printf("placements_per_s %.1f\n", (double)(n - first_batch) / secs(last - first));
    else
        printf("placements_per_s -\n");
    printf("placements_per_s_put %.1f\n", last > 0 ? (double)n / secs(last) : 0.0);
    printf("place_txns %zu\nplace_batch_max %zu\nplace_batch_first %zu\n", place_txns,
           place_batch_max, first_batch);
    print_s("up_first_s", KTH(up, 1, t0));
    print_s("up_half_s", KTH(up, (n + 1) / 2, t0));
    print_s("up_all_s", KTH(up, n, t0));
    int64_t *lat = xcalloc(n_jobs + 1, sizeof(*lat));
    int64_t *pick = xcalloc(n_jobs + 1, sizeof(*pick));
    size_t nl = 0, np = 0;
    for (size_t i = 0; i < n_jobs; i++) {
        if (jobs[i].up)
            lat[nl++] = jobs[i].up - jobs[i].created;
        if (jobs[i].starting)
            pick[np++] = jobs[i].starting - jobs[i].created;
    }
    printf("create_to_up_p50_ms %.1f\n", (double)pct(lat, nl, 50) / 1e6);
    printf("create_to_up_p99_ms %.1f\n", (double)pct(lat, nl, 99) / 1e6);
    printf("create_to_starting_p50_ms %.1f\n", (double)pct(pick, np, 50) / 1e6);
    free(lat);
    free(pick);
    printf("failed_up %zu\n", n_failed);
    if (first_failure[0])
        fprintf(stderr, "bench_scheduler: first job that ended while scaling up: %s\n",
                first_failure);
    /* jobs per host, of those up */
    size_t hosts = 0, per[64] = {0};
    char names[64][32];
    for (size_t i = 0; i < n_jobs; i++) {
        if (!jobs[i].is_up)
            continue;
        size_t h = 0;
        while (h < hosts && strcmp(names[h], jobs[i].host) != 0)
            h++;
        if (h == hosts && hosts < 64)
            snprintf(names[hosts++], sizeof(names[0]), "%s", jobs[i].host);
        if (h < hosts)
            per[h]++;
    }
    size_t lo = hosts ? per[0] : 0, hi = lo;
    for (size_t h = 0; h < hosts; h++) {
        lo = per[h] < lo ? per[h] : lo;
        hi = per[h] > hi ? per[h] : hi;
    }
    printf("hosts_used %zu\nspread_min %zu\nspread_max %zu\n", hosts, lo, hi);
}

static void write_raw(int64_t t0, int64_t t1)
{
    FILE *f = fopen(o.raw, "ae");
    if (!f)
        die("%s: cannot open", o.raw);
#define REL(t, base) ((t) ? (double)((t) - (base)) / 1e6 : -1.0)
    for (size_t i = 0; i < n_jobs; i++) {
        const struct job *j = &jobs[i];
        fprintf(f, "%ld %s %s %.1f %.1f %.1f %.1f %.1f\n", o.round, j->id, j->host,
                REL(j->created, t0), REL(j->starting, t0), REL(j->up, t0), REL(j->stop, t1),
                REL(j->ended, t1));
    }
#undef REL
    fclose(f);
}

/* --- flags ------------------------------------------------------------ */

static void usage(FILE *f)
{
    fprintf(f, "usage: bench_scheduler --store URL --controller URL --key KEY [flags]\n"
               "Scales one new app from 0 to --count jobs and back to 0 through the controller\n"
               "and times the scheduler's placements and the jobs' states from the store.\n"
               "bench/scheduler/run sets everything up.\n\n"
               "  --store URL          the cluster's store\n"
               "  --controller URL     the controller's API\n"
               "  --key KEY            the cluster key\n"
               "  --count N            jobs to scale to (default 1000)\n"
               "  --memory-mb N        each job's memory limit (default 16)\n"
               "  --type NAME          the process type (default sleeper; not web: no port)\n"
               "  --args JSON          its command (default [\"sleep\",\"3600\"])\n"
               "  --scale-request      scale with PUT /apps/:app/scale/:release (Flynn's scale\n"
               "                       request) instead of a formation PUT\n"
               "  --pause-agents       stop the --pid agents=... processes (SIGSTOP) from just\n"
               "                       before the PUT until every job is created: the\n"
               "                       placements alone, without the agents' starts (a\n"
               "                       diagnosis: the up figures then include the pause)\n"
               "  --crun PATH          crun binary (default crun)\n"
               "  --crun-root DIR      an agent's crun state directory (repeat for each agent):\n"
               "                       \"gone\" is when none lists a container\n"
               "  --agent-data DIR     an agent's data directory (repeat): shims' and\n"
               "                       containers' CPU\n"
               "  --pid NAME=PID       a daemon whose CPU time to report (repeat; summed by NAME)\n"
               "  --round N            round number (app name, raw lines; default 1)\n"
               "  --timeout-s N        longest wait for each phase (default 300)\n"
               "  --raw FILE           append each job's times to FILE\n");
}

static void add_many(const char **arr, size_t *n, const char *v, const char *flag)
{
    if (*n == MAX_MANY)
        die("--%s given more than %d times", flag, MAX_MANY);
    arr[(*n)++] = v;
}

static long number(const char *flag, const char *v, long lo, long hi)
{
    char *end;
    long n = strtol(v, &end, 10);
    if (!*v || *end || n < lo || n > hi)
        die("--%s needs a number from %ld to %ld, not \"%s\"", flag, lo, hi, v);
    return n;
}

static void parse_flags(int argc, char **argv)
{
    enum {
        F_STORE = 1000,
        F_CTL,
        F_KEY,
        F_COUNT,
        F_MEM,
        F_TYPE,
        F_ARGS,
        F_SCALE,
        F_PAUSE,
        F_CRUN,
        F_ROOT,
        F_DATA,
        F_PID,
        F_ROUND,
        F_TIMEOUT,
        F_RAW
    };
    static const struct option lo[] = {
        {"store", required_argument, NULL, F_STORE},
        {"controller", required_argument, NULL, F_CTL},
        {"key", required_argument, NULL, F_KEY},
        {"count", required_argument, NULL, F_COUNT},
        {"memory-mb", required_argument, NULL, F_MEM},
        {"type", required_argument, NULL, F_TYPE},
        {"args", required_argument, NULL, F_ARGS},
        {"scale-request", no_argument, NULL, F_SCALE},
        {"pause-agents", no_argument, NULL, F_PAUSE},
        {"crun", required_argument, NULL, F_CRUN},
        {"crun-root", required_argument, NULL, F_ROOT},
        {"agent-data", required_argument, NULL, F_DATA},
        {"pid", required_argument, NULL, F_PID},
        {"round", required_argument, NULL, F_ROUND},
        {"timeout-s", required_argument, NULL, F_TIMEOUT},
        {"raw", required_argument, NULL, F_RAW},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    o = (struct opts){.crun = "crun",
                      .type = "sleeper",
                      .args = "[\"sleep\",\"3600\"]",
                      .count = 1000,
                      .memory_mb = 16,
                      .timeout_s = 300,
                      .round = 1};
    int c;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case F_STORE: o.store = optarg; break;
        case F_CTL: o.controller = optarg; break;
        case F_KEY: o.key = optarg; break;
        case F_COUNT: o.count = number("count", optarg, 1, 100000); break;
        case F_MEM: o.memory_mb = number("memory-mb", optarg, 4, 1 << 20); break;
        case F_TYPE: o.type = optarg; break;
        case F_ARGS: o.args = optarg; break;
        case F_SCALE: o.scale_request = true; break;
        case F_PAUSE: o.pause_agents = true; break;
        case F_CRUN: o.crun = optarg; break;
        case F_ROOT: add_many(o.roots, &o.n_roots, optarg, "crun-root"); break;
        case F_DATA: add_many(o.agent_data, &o.n_agent_data, optarg, "agent-data"); break;
        case F_PID: {
            char *eq = strchr(optarg, '=');
            if (!eq || eq == optarg || o.n_pids == MAX_MANY)
                die("--pid takes NAME=PID (at most %d times), not \"%s\"", MAX_MANY, optarg);
            *eq = '\0';
            o.pids[o.n_pids].name = optarg;
            o.pids[o.n_pids++].pid = (pid_t)number("pid", eq + 1, 1, 1 << 30);
            break;
        }
        case F_ROUND: o.round = number("round", optarg, 0, 1000000); break;
        case F_TIMEOUT: o.timeout_s = number("timeout-s", optarg, 1, 86400); break;
        case F_RAW: o.raw = optarg; break;
        case 'h': usage(stdout); exit(0);
        default: usage(stderr); exit(2);
        }
    }
    if (optind != argc || !o.store || !o.controller || !o.key) {
        usage(stderr);
        exit(2);
    }
    if (strcmp(o.type, "web") == 0)
        die("--type web would get a port; pick another name");
}

int main(int argc, char **argv)
{
    parse_flags(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    /* bench/scheduler/run starts this in the background, where a shell
     * without job control ignores SIGINT: a Ctrl-C should end it anyway. */
    signal(SIGINT, SIG_DFL);
    cap_jobs = (size_t)o.count * 4 + 64;
    jobs = xcalloc(cap_jobs, sizeof(*jobs));
    for (cap_table = 1; cap_table < cap_jobs * 2; cap_table <<= 1)
        ;
    table = xcalloc(cap_table, sizeof(*table));
    http = httpc_new();
    struct buf cred = BUF_INIT, b64 = BUF_INIT;
    buf_printf(&cred, ":%s", o.key);
    base64_encode(&b64, cred.p, cred.len);
    snprintf(auth, sizeof(auth), "Authorization: Basic %s", b64.p);
    buf_free(&cred);
    buf_free(&b64);
    struct pier_err err = {0};
    if (store_open(o.store, &st, &err) < 0)
        die("%s", err.msg);
    make_app();

    /* The watch starts before the PUT: no record can come before it. */
    int64_t rev = 0;
    if (store_revision(st, &rev, &err) < 0)
        die("%s", err.msg);
    const struct store_watch_opts wo = {.prefix = true, .start_revision = rev + 1};
    if (store_watch_open(st, JOBS_PREFIX, &wo, &watch, &err) < 0)
        die("%s", err.msg);

    struct cpu c0, c1, c2, cp;
    place_cpu = &cp;
    fprintf(stderr, "bench_scheduler: round %ld: scaling to %ld ...\n", o.round, o.count);
    scaling_up = true;
    if (o.pause_agents) {
        atexit(resume_agents);
        paused = true;
        agents_signal(SIGSTOP);
    }
    cpu_snap(&c0);
    struct timespec wall;
    clock_gettime(CLOCK_REALTIME, &wall);
    int64_t t0 = now_ns();
    scale(o.count);
    int64_t put_ns = now_ns() - t0;
    /* for comparing with the daemons' logs */
    struct tm tm;
    char when[32];
    gmtime_r(&wall.tv_sec, &tm);
    strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
    fprintf(stderr, "bench_scheduler: t0 (the PUT) at %s.%06ldZ\n", when, wall.tv_nsec / 1000);
    wait_until(all_up, t0 + o.timeout_s * 1000000000LL, "every job up");
    cpu_snap(&c1);
    double shims = 0, containers = 0;
    job_cpu(&shims, &containers);
    size_t events_up = n_events;
    report_up(t0, put_ns);
    cpu_report("place", &c0, &cp);
    cpu_report("up", &c0, &c1);
    printf("cpu_up_shims_s %.2f\ncpu_up_containers_s %.2f\n", shims, containers);
    printf("events_up %zu\n", events_up);
    fflush(stdout);

    fprintf(stderr, "bench_scheduler: round %ld: scaling to 0 ...\n", o.round);
    scaling_up = false;
    int64_t t1 = now_ns();
    scale(0);
    int64_t deadline = t1 + o.timeout_s * 1000000000LL;
    wait_until(all_ended, deadline, "every job ended");
    int64_t t_down = now_ns();
    size_t left = containers_listed();
    while (left > 0 && now_ns() < deadline) {
        usleep(100 * 1000);
        left = containers_listed();
    }
    int64_t t_gone = now_ns();
    cpu_snap(&c2);
    if (left > 0)
        die("%zu containers still listed %ld s after scaling to 0", left, o.timeout_s);
    print_s("stop_all_s", KTH(stop, n_stopped, t1));
    print_s("down_all_s", t_down - t1);
    print_s("gone_all_s", t_gone - t1);
    cpu_report("down", &c1, &c2);
    printf("events_down %zu\n", n_events - events_up);
    if (o.raw)
        write_raw(t0, t1);
    store_watch_close(watch);
    store_close(st);
    httpc_free(http);
    for (size_t i = 0; i < n_jobs; i++)
        free(jobs[i].id);
    free(jobs);
    free(table);
    free((char *)app_id);
    free(release_id);
    return 0;
}
