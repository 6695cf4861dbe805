/* jobs_run: the host side of the job table: starting a job (ports, memory,
 * bundle, slug, shim), stopping it, noticing its end (a pidfd per shim in
 * one epoll), re-adopting jobs after a restart, and pruning the
 * directories of ended jobs. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "host/bundle.h"
#include "host/jobs_int.h"
#include "host/shim.h"
#include "lib/cleanup.h"
#include "lib/clock.h"
#include "lib/discover.h"
#include "lib/fs.h"
#include "lib/jsonx.h"
#include "lib/log.h"

#define SLUG_MAX_BYTES (4LL << 30)

/* Removes a directory tree (nothing is followed across mounts or symlinks). */
static void rm_tree(const char *path)
{
    int rc = fs_rm_tree(path);
    if (rc < 0)
        log_warn("host", "cannot remove a directory", "path=%s error=\"%s\"", path, strerror(-rc));
}

static json_t *read_json_file(const char *path)
{
    FILE *f = fopen(path, "re");
    if (!f)
        return NULL;
    json_t *j = json_loadf(f, JSON_REJECT_DUPLICATES, NULL);
    fclose(f);
    if (j && !json_is_object(j)) {
        json_decref(j);
        return NULL;
    }
    return j;
}

static int write_json_file(const char *path, const json_t *j, struct pier_err *err)
{
    struct buf text = BUF_INIT;
    jsonx_dump(&text, j);
    int rc = fs_write_atomic(path, text.p, text.len, 0600, false, err);
    buf_free(&text);
    return rc;
}

static int pidfd_of(pid_t pid)
{
    return (int)syscall(SYS_pidfd_open, pid, 0);
}

static void monitor_add(struct jobs *t, struct job *j)
{
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = j->pidfd};
    if (epoll_ctl(t->epfd, EPOLL_CTL_ADD, j->pidfd, &ev) < 0)
        log_error("host", "cannot watch a shim", "job=%s error=\"%s\"", j->id, strerror(errno));
}

/* Gives back what a job holds on the host. Lock held. */
static void release(struct jobs *t, struct job *j)
{
    for (size_t i = 0; i < j->n_ports; i++)
        if (j->ports[i] > 0)
            ports_release(t->ports, j->ports[i]);
    free(j->ports);
    j->ports = NULL;
    j->n_ports = 0;
    t->memory_used -= j->memory;
    t->cpu_used -= j->cpu;
    j->memory = j->cpu = 0;
}

static void health_changed(void *ud, const char *job_id, bool healthy)
{
    struct jobs *t = ud;
    pthread_mutex_lock(&t->lock);
    struct job *j = t->stopping ? NULL : jobs_find(t, job_id);
    if (j && j->local == JOB_RUNNING)
        jobs_observe(t, j, json_pack("{s:b}", "healthy", healthy));
    pthread_mutex_unlock(&t->lock);
}

static json_t *ports_json(const int *ports, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(a, json_integer(ports[i]));
    return a;
}

/* Takes memory and ports for j. Lock held. Returns 0 or an error. */
static int reserve(struct jobs *t, struct job *j, struct pier_err *err)
{
    const struct jobspec *spec = j->spec;
    if (t->memory_used + spec->memory > t->cfg.memory_total)
        return err_set(err, PIER_EUNAVAIL,
                       "not enough memory: the job asks for %lld MiB and %lld MiB of this "
                       "host's %lld MiB are free",
                       (long long)(spec->memory >> 20),
                       (long long)((t->cfg.memory_total - t->memory_used) >> 20),
                       (long long)(t->cfg.memory_total >> 20));
    j->memory = spec->memory;
    j->cpu = spec->cpu;
    t->memory_used += j->memory;
    t->cpu_used += j->cpu;
    j->ports = xcalloc(spec->n_ports ? spec->n_ports : 1, sizeof(int));
    j->n_ports = spec->n_ports;
    for (size_t i = 0; i < spec->n_ports; i++) {
        int p = ports_take(t->ports, spec->ports[i].port, err);
        if (p < 0)
            return err_wrap(err, p, "ports[%zu]", i);
        j->ports[i] = p;
    }
    return 0;
}

static void crun_force_delete(struct jobs *t, const char *id);

/* Removes what an ended job leaves that may be large: its app/ (the slug's
 * files) and a build job's tmp/; the logs stay. */
static void rm_work_dirs(const char *dir)
{
    static const char *const names[] = {"app", "tmp"};
    struct buf p = BUF_INIT;
    for (size_t i = 0; i < sizeof(names) / sizeof(*names); i++) {
        buf_reset(&p);
        buf_printf(&p, "%s/%s", dir, names[i]);
        rm_tree(p.p);
    }
    buf_free(&p);
}

/* artifact.slug_sha256 of a job record: NULL when it has none; a value
 * that is not a string is refused (bundle_fetch_slug checks its form). */
static int slug_sha256(const json_t *rec, const char **out, struct pier_err *err)
{
    const json_t *v = json_object_get(json_object_get(rec, "artifact"), "slug_sha256");
    *out = json_string_value(v);
    if (v && !json_is_string(v))
        return err_set(err, PIER_EINVAL, "artifact.slug_sha256: must be a string");
    return 0;
}

/* Which /.pier binds a job on stack root gets: those the stack has mount
 * points for (bundle_stack_points; the host's own root always has them). */
static void pier_binds(struct jobs *t, const char *root, unsigned points, struct bundle_opts *bo)
{
    bo->pierslug = points & BUNDLE_HAS_PIERSLUG ? t->cfg.pierslug : NULL;
    bo->buildpacks = points & BUNDLE_HAS_BUILDPACKS ? t->cfg.buildpacks : NULL;
    if ((t->cfg.pierslug && !bo->pierslug) || (t->cfg.buildpacks && !bo->buildpacks))
        log_warn("host",
                 "the stack has no /.pier mount points (an older `pier stack build` made it): "
                 "its jobs get no /.pier/pierslug or /.pier/buildpacks, so slugs cannot build "
                 "or run on it; build a new stack with `pier stack build`, or add them with "
                 "`mkdir -p STACK/.pier/buildpacks && touch STACK/.pier/pierslug`",
                 "stack=%s", root);
}

/* A start that failed before its shim ran leaves what the shim would have:
 * an exit.json saying why (so the directory is pruned like any ended job's,
 * and a restarted agent reports it failed), and no slug files. */
static void end_failed_start(const char *dir, const char *why)
{
    struct buf p = BUF_INIT;
    buf_printf(&p, "%s/exit.json", dir);
    if (access(dir, F_OK) == 0 && access(p.p, F_OK) < 0) {
        json_t *e = json_pack("{s:i, s:s}", "status", -1, "error", why);
        write_json_file(p.p, e, NULL);
        json_decref(e);
    }
    rm_work_dirs(dir);
    buf_free(&p);
}

/* Prepares the job's directory and starts its shim. No lock held. */
static int launch(struct jobs *t, struct job *j, const json_t *rec, const char *dir,
                  pid_t *shim_pid, struct pier_err *err)
{
    const struct jobspec *spec = j->spec;
    cleanup_buf struct buf path = BUF_INIT;
    cleanup_buf struct buf host_root = BUF_INIT;
    int rc;

    rm_tree(dir); /* a start that never got as far as a shim */
    if (mkdir(dir, 0700) < 0)
        return err_set(err, -errno, "creating %s: %s", dir, strerror(errno));

    /* What a restarted agent needs to adopt the job. */
    json_t *keep =
        json_pack("{s:O, s:o, s:I, s:I}", "record", rec, "ports", ports_json(j->ports, j->n_ports),
                  "memory", (json_int_t)j->memory, "cpu", (json_int_t)j->cpu);
    buf_printf(&path, "%s/job.json", dir);
    rc = write_json_file(path.p, keep, err);
    json_decref(keep);
    if (rc < 0)
        return rc;

    const char *root = spec->stack ? spec->stack : t->cfg.stack;
    if (root && strcmp(root, "host") == 0)
        root = NULL;
    if (root && (rc = bundle_check_stack(root, err)) < 0)
        return err_wrap(err, rc, "unknown artifact");
    unsigned points =
        root ? bundle_stack_points(root) : BUNDLE_HAS_PIERSLUG | BUNDLE_HAS_BUILDPACKS;
    const char *sha = NULL;
    if ((rc = slug_sha256(rec, &sha, err)) < 0)
        return err_wrap(err, rc, "bad artifact");
    buf_printf(&host_root, "%s/host-root", t->cfg.data_dir);
    struct bundle_opts bo = {
        .job_dir = dir,
        .root = root,
        .host_root = host_root.p,
        .ports = j->ports,
        .uid = t->cfg.uid,
        .gid = t->cfg.gid,
        .init_path = t->cfg.init_path,
        .host_id = t->cfg.host_id,
        .host_ip = t->cfg.host_ip,
        /* The git receiver's build jobs (meta "pier.build"). */
        .build_tmp = json_is_string(json_object_get(json_object_get(rec, "meta"), "pier.build")),
        .pierd = t->cfg.pierd,
    };
    pier_binds(t, root, points, &bo);
    if ((rc = bundle_write(spec, &bo, err)) < 0)
        return err_wrap(err, rc, "preparing the container");
    if (spec->slug) {
        buf_reset(&path);
        buf_printf(&path, "%s/app", dir);
        /* A slug named by a discovery name (http://blobstore.discoverd/...,
         * what the git receiver records) is looked up now, so a blobstore
         * restarted on another port since the build is still found. When
         * there is none the job fails; the scheduler's restart tries
         * again later. */
        cleanup_free char *url = NULL;
        if ((rc = discover_resolve_url(t->store, spec->slug, &url, err)) < 0)
            return err_wrap(err, rc, "fetching the slug %s", spec->slug);
        if (strcmp(url, spec->slug) != 0)
            log_debug("host", "slug resolved", "job=%s url=%s at=%s", j->id, spec->slug, url);
        rc = bundle_fetch_slug(url, path.p, t->cfg.uid, t->cfg.gid, SLUG_MAX_BYTES, sha, err);
        if (rc < 0)
            return err_wrap(err, rc, "bad artifact");
    }
    /* An agent stopping starts nothing more; the next one will. */
    pthread_mutex_lock(&t->lock);
    bool stopping = t->stopping;
    pthread_mutex_unlock(&t->lock);
    if (stopping)
        return err_set(err, -ECANCELED, "the agent is stopping");
    struct shim_spawn_opts so = {
        .shim = t->cfg.shim,
        .job_dir = dir,
        .job_id = j->id,
        .crun = t->cfg.crun,
        .crun_root = t->cfg.crun_root,
        .tty = spec->tty,
        .tty_columns = spec->tty_columns,
        .tty_lines = spec->tty_lines,
        .stdin_open = spec->stdin_open || spec->tty,
        .no_log = spec->disable_log,
        .init = spec->init,
        .log_max_bytes = t->cfg.log_max_bytes,
        .log_max_files = t->cfg.log_max_files,
        .timeout_ms = 90000, /* over the shim's own 60 s for crun */
    };
    pid_t cpid;
    if ((rc = shim_spawn(&so, shim_pid, &cpid, err)) < 0) {
        /* The shim may have got as far as a container (it reported too
         * late, or was killed in crun): none may outlive the failure. */
        crun_force_delete(t, j->id);
        return err_wrap(err, rc, "crun");
    }
    return 0;
}

/* Ends a worker's turn: the job is free for the next step, which
 * jobs_reconcile picks from what changed meanwhile. Lock held. */
static void worker_done(struct jobs *t, struct job *j)
{
    j->busy = false;
    t->workers--;
    jobs_reconcile(t, j);
    pthread_cond_broadcast(&t->idle);
}

void *jobs_start_worker(void *arg)
{
    struct jobs_work *w = arg;
    struct jobs *t = w->t;
    struct job *j = w->j;
    struct pier_err err = {0};
    struct buf dir = BUF_INIT;
    pid_t shim_pid = 0;
    free(w);

    pthread_mutex_lock(&t->lock);
    jobs_observe(t, j, json_pack("{s:s}", "state", "starting"));
    int rc = reserve(t, j, &err);
    jobs_job_dir(t, j->id, &dir);
    json_t *rec = json_deep_copy(j->rec); /* the watch may replace j->rec meanwhile */
    pthread_mutex_unlock(&t->lock);

    if (rc == 0)
        rc = launch(t, j, rec, dir.p, &shim_pid, &err);
    json_decref(rec);
    if (rc == -ECANCELED)
        rm_tree(dir.p); /* never started: the record stays as it is */
    else if (rc < 0)
        end_failed_start(dir.p, err.msg);

    pthread_mutex_lock(&t->lock);
    char now[CLOCK_RFC3339_LEN];
    clock_rfc3339(now);
    if (rc == 0) {
        j->shim_pid = shim_pid;
        j->own_child = true;
        j->pidfd = pidfd_of(shim_pid);
        if (j->pidfd >= 0)
            monitor_add(t, j);
        j->local = JOB_RUNNING;
        jobs_observe(t, j,
                     json_pack("{s:s, s:s, s:o}", "state", "up", "started_at", now,
                               "allocated_ports", ports_json(j->ports, j->n_ports)));
        log_info("host", "job up", "job=%s ports=%d", j->id, j->n_ports ? j->ports[0] : 0);
        j->health = health_start(t->store, t->cfg.host_ip, j->spec, j->ports, health_changed, t);
    } else if (rc == -ECANCELED) {
        release(t, j);
        j->local = JOB_ENDED;
    } else {
        release(t, j);
        log_warn("host", "job failed to start", "job=%s error=\"%s\"", j->id, err.msg);
        jobs_observe(t, j,
                     json_pack("{s:s, s:s, s:s}", "state", "failed", "host_error", err.msg,
                               "finished_at", now));
        j->local = JOB_ENDED;
    }
    t->starting--; /* up or failed: the slot goes to the next queued start */
    worker_done(t, j);
    jobs_dispatch(t);
    pthread_mutex_unlock(&t->lock);
    buf_free(&dir);
    return NULL;
}

void *jobs_stop_worker(void *arg)
{
    struct jobs_work *w = arg;
    struct jobs *t = w->t;
    struct job *j = w->j;
    struct buf dir = BUF_INIT;
    free(w);

    pthread_mutex_lock(&t->lock);
    struct health *h = j->health;
    j->health = NULL;
    int grace = j->stop_grace_ms;
    jobs_job_dir(t, j->id, &dir);
    pthread_mutex_unlock(&t->lock);

    health_stop(h); /* out of discovery before the first signal */
    struct pier_err err = {0};
    int rc = shim_stop(dir.p, grace, &err);
    if (rc < 0 && rc != PIER_ENOTFOUND) {
        /* The shim takes SIGTERM as a stop too (with its own grace). */
        log_warn("host", "cannot ask the job's shim to stop; sending it SIGTERM",
                 "job=%s error=\"%s\"", j->id, err.msg);
        pthread_mutex_lock(&t->lock);
        if (j->pidfd >= 0)
            syscall(SYS_pidfd_send_signal, j->pidfd, SIGTERM, NULL, 0);
        pthread_mutex_unlock(&t->lock);
    } else
        log_info("host", "job stopping", "job=%s grace_ms=%d", j->id, grace);

    pthread_mutex_lock(&t->lock);
    worker_done(t, j);
    pthread_mutex_unlock(&t->lock);
    buf_free(&dir);
    return NULL;
}

json_t *jobs_exit_observed(struct jobs *t, struct job *j, const json_t *exit)
{
    (void)t;
    json_int_t status = exit ? json_integer_value(json_object_get(exit, "status")) : -1;
    json_int_t sig = exit ? json_integer_value(json_object_get(exit, "signal")) : 0;
    bool oom = exit && json_is_true(json_object_get(exit, "oom"));
    const char *error = exit ? json_string_value(json_object_get(exit, "error")) : NULL;
    const char *fin = exit ? json_string_value(json_object_get(exit, "finished_at")) : NULL;
    char now[CLOCK_RFC3339_LEN];
    clock_rfc3339(now);
    const char *desired =
        j->rec ? json_string_value(json_object_get(j->rec, "desired_state")) : NULL;
    bool asked = j->local == JOB_STOPPING || !j->rec || j->deleted ||
                 (desired && strcmp(desired, "down") == 0);

    json_t *o = json_pack("{s:s}", "finished_at", fin ? fin : now);
    if (!exit || !json_object_get(exit, "status")) {
        json_object_set_new(o, "state", json_string("crashed"));
        json_object_set_new(o, "host_error",
                            json_string("lost: the job's shim ended without recording how the "
                                        "job ended (was the host restarted?)"));
        return o;
    }
    json_object_set_new(o, "exit_status", json_integer(status));
    if (sig)
        json_object_set_new(o, "signal", json_integer(sig));
    if (oom) {
        struct buf why = BUF_INIT;
        buf_printf(&why, "out of memory: killed at its memory limit");
        if (j->spec)
            buf_printf(&why, " of %lld MiB", (long long)(j->spec->memory >> 20));
        json_object_set_new(o, "oom", json_true());
        json_object_set_new(o, "host_error", json_string(why.p));
        buf_free(&why);
    } else if (error) {
        json_object_set_new(o, "host_error", json_string(error));
    }
    bool clean = !oom && !error && (status == 0 || asked);
    /* status -1: the container never started (the shim said why). */
    json_object_set_new(o, "state",
                        json_string(status < 0 && error ? "failed"
                                    : clean             ? "down"
                                                        : "crashed"));
    return o;
}

/* --- ended jobs' directories ------------------------------------------- */

struct ended {
    char *name;
    struct timespec when;
};

static int cmp_ended(const void *a, const void *b)
{
    const struct ended *x = a, *y = b;
    if (x->when.tv_sec != y->when.tv_sec)
        return x->when.tv_sec < y->when.tv_sec ? -1 : 1;
    return x->when.tv_nsec < y->when.tv_nsec ? -1 : x->when.tv_nsec > y->when.tv_nsec;
}

/* Keeps the newest cfg.keep_ended directories of ended jobs. No lock held. */
static void prune(struct jobs *t)
{
    struct buf base = BUF_INIT;
    buf_printf(&base, "%s/jobs", t->cfg.data_dir);
    DIR *d = opendir(base.p);
    struct ended *v = NULL;
    size_t n = 0, cap = 0;
    struct dirent *de;
    while (d && (de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        struct buf p = BUF_INIT;
        struct stat st;
        buf_printf(&p, "%s/%s/exit.json", base.p, de->d_name);
        if (stat(p.p, &st) == 0) {
            if (n == cap) {
                cap = cap ? cap * 2 : 32;
                v = xrealloc(v, cap * sizeof(*v));
            }
            v[n].name = xstrdup(de->d_name);
            v[n].when = st.st_mtim;
            n++;
        }
        buf_free(&p);
    }
    if (d)
        closedir(d);
    if (n)
        qsort(v, n, sizeof(*v), cmp_ended);
    for (size_t i = 0; i < n; i++) {
        if (n - i > (size_t)t->cfg.keep_ended) {
            pthread_mutex_lock(&t->lock);
            struct job *j = jobs_find(t, v[i].name);
            bool active = j && j->local != JOB_ENDED;
            pthread_mutex_unlock(&t->lock);
            if (!active) {
                struct buf p = BUF_INIT;
                buf_printf(&p, "%s/%s", base.p, v[i].name);
                rm_tree(p.p);
                buf_free(&p);
            }
        }
        free(v[i].name);
    }
    free(v);
    buf_free(&base);
}

/* --- noticing ends ------------------------------------------------------ */

int jobs_monitor_init(struct jobs *t, struct pier_err *err)
{
    t->epfd = epoll_create1(EPOLL_CLOEXEC);
    t->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (t->epfd < 0 || t->wakefd < 0)
        return err_set(err, -errno, "epoll: %s", strerror(errno));
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = t->wakefd};
    epoll_ctl(t->epfd, EPOLL_CTL_ADD, t->wakefd, &ev);
    return 0;
}

/* Removes a container whose shim is gone without recording its end (the
 * shim was killed): its init was re-parented away and may still run,
 * holding its port. crun kills and deletes it; nothing there is fine. */
static void crun_force_delete(struct jobs *t, const char *id)
{
    const char *argv[] = {t->cfg.crun, "--root", t->cfg.crun_root, "delete", "--force", id, NULL};
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    sigset_t none, defaults;
    pid_t pid;
    int status = -1;

    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addclosefrom_np(&fa, 3);
    posix_spawnattr_init(&attr);
    sigemptyset(&none);
    sigfillset(&defaults);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &defaults);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    if (posix_spawnp(&pid, t->cfg.crun, &fa, &attr, (char *const *)argv, environ) == 0) {
        /* Bounded: a hung crun must not hold up the monitor for good. */
        for (int waited = 0; waitpid(pid, &status, WNOHANG) == 0; waited += 10) {
            if (waited == 30000) {
                kill(pid, SIGKILL);
                waitpid(pid, &status, 0);
                log_error("host", "crun delete hung; killed it", "job=%s", id);
                break;
            }
            usleep(10000);
        }
    }
    posix_spawnattr_destroy(&attr);
    posix_spawn_file_actions_destroy(&fa);
    if (status == 0)
        log_warn("host", "removed a container its shim had left running", "job=%s", id);
}

/* The shim of the job with this pidfd has exited. */
static void on_shim_exit(struct jobs *t, int pidfd)
{
    struct buf dir = BUF_INIT, path = BUF_INIT;
    struct job *j = NULL;

    pthread_mutex_lock(&t->lock);
    for (size_t i = 0; i < t->n && !j; i++)
        if (t->v[i]->pidfd == pidfd)
            j = t->v[i];
    if (!j) {
        pthread_mutex_unlock(&t->lock);
        epoll_ctl(t->epfd, EPOLL_CTL_DEL, pidfd, NULL);
        return;
    }
    /* j stays in the table while it is not ended; read its end unlocked. */
    jobs_job_dir(t, j->id, &dir);
    char *id = xstrdup(j->id);
    pthread_mutex_unlock(&t->lock);
    buf_printf(&path, "%s/exit.json", dir.p);
    json_t *exit = read_json_file(path.p);
    if (!exit)
        crun_force_delete(t, id);
    free(id);

    pthread_mutex_lock(&t->lock);
    epoll_ctl(t->epfd, EPOLL_CTL_DEL, pidfd, NULL);
    close(pidfd);
    j->pidfd = -1;
    if (j->own_child)
        waitpid(j->shim_pid, NULL, WNOHANG);
    struct health *h = j->health;
    j->health = NULL;
    json_t *obs = jobs_exit_observed(t, j, exit);
    log_info("host", "job ended", "job=%s state=%s exit_status=%lld", j->id,
             json_string_value(json_object_get(obs, "state")),
             (long long)json_integer_value(json_object_get(obs, "exit_status")));
    json_decref(exit);
    release(t, j);
    j->local = JOB_ENDED;
    jobs_observe(t, j, obs);
    jobs_reconcile(t, j);
    pthread_mutex_unlock(&t->lock);

    health_stop(h);
    rm_work_dirs(dir.p);
    prune(t);
    buf_free(&dir);
    buf_free(&path);
}

void *jobs_monitor_main(void *arg)
{
    struct jobs *t = arg;
    struct epoll_event ev[16];

    for (;;) {
        int n = epoll_wait(t->epfd, ev, 16, 1000);
        pthread_mutex_lock(&t->lock);
        bool stop = t->stopping;
        pthread_mutex_unlock(&t->lock);
        if (stop)
            break;
        for (int i = 0; i < n; i++)
            if (ev[i].data.fd != t->wakefd)
                on_shim_exit(t, ev[i].data.fd);
    }
    return NULL;
}

/* --- adoption ----------------------------------------------------------- */

static void adopt_one(struct jobs *t, const char *base, const char *id)
{
    struct buf dir = BUF_INIT, path = BUF_INIT;
    buf_printf(&dir, "%s/%s", base, id);
    buf_printf(&path, "%s/job.json", dir.p);
    json_t *keep = read_json_file(path.p);
    json_t *rec = keep ? json_object_get(keep, "record") : NULL;
    struct jobspec *spec = NULL;
    if (!rec || jobspec_parse(rec, &spec, NULL) < 0 || strcmp(spec->id, id) != 0) {
        /* Not something this agent wrote; leave it alone. */
        log_warn("host", "job directory without a readable job.json, left alone", "dir=%s", dir.p);
        goto out;
    }
    bool orphan = false;
    buf_reset(&path);
    buf_printf(&path, "%s/shim.pid", dir.p);
    bool spawned = access(path.p, F_OK) == 0;
    buf_reset(&path);
    buf_printf(&path, "%s/exit.json", dir.p);
    if (!spawned && access(path.p, F_OK) < 0) {
        /* A start cut short before any shim ran (the agent stopped or
         * died in it): nothing ran, so the store's record is started
         * afresh, as if this directory had never been made. */
        log_info("host", "removing a start that never got to run", "job=%s", id);
        rm_tree(dir.p);
        goto out;
    }
    pid_t pid = shim_alive(dir.p);
    int pidfd = pid > 0 ? pidfd_of(pid) : -1; /* fails when it ended just now */
    pthread_mutex_lock(&t->lock);
    struct job *j = jobs_find(t, id);
    if (!j) {
        j = jobs_add_entry(t, id);
        j->rec = json_incref(rec);
    }
    j->spec = spec;
    spec = NULL;
    j->stop_grace_ms = j->spec->stop_grace_ms;
    if (pidfd >= 0) {
        json_t *ports = json_object_get(keep, "ports");
        j->n_ports = json_array_size(ports);
        j->ports = xcalloc(j->n_ports ? j->n_ports : 1, sizeof(int));
        for (size_t i = 0; i < j->n_ports; i++) {
            j->ports[i] = (int)json_integer_value(json_array_get(ports, i));
            ports_claim(t->ports, j->ports[i]);
        }
        j->memory = json_integer_value(json_object_get(keep, "memory"));
        j->cpu = json_integer_value(json_object_get(keep, "cpu"));
        t->memory_used += j->memory;
        t->cpu_used += j->cpu;
        j->shim_pid = pid;
        j->own_child = false;
        j->pidfd = pidfd;
        monitor_add(t, j);
        j->local = JOB_RUNNING;
        /* Reported only if the record says otherwise (jobs_reconcile). */
        json_object_set_new(j->observed, "state", json_string("up"));
        json_object_set(j->observed, "allocated_ports", ports);
        j->health = health_start(t->store, t->cfg.host_ip, j->spec, j->ports, health_changed, t);
        log_info("host", "job re-adopted", "job=%s shim=%d", id, (int)pid);
    } else {
        buf_reset(&path);
        buf_printf(&path, "%s/exit.json", dir.p);
        j->exit = read_json_file(path.p);
        if (!j->exit) {
            j->exit = json_object(); /* no status: lost (jobs_exit_observed) */
            orphan = true;
        }
        j->local = JOB_ENDED;
        log_info("host", "job ended while the agent was away", "job=%s", id);
    }
    pthread_mutex_unlock(&t->lock);
    if (orphan)
        crun_force_delete(t, id); /* its container may run on, unowned */
out:
    jobspec_free(spec);
    json_decref(keep);
    buf_free(&dir);
    buf_free(&path);
}

int jobs_adopt(struct jobs *t, struct pier_err *err)
{
    struct buf base = BUF_INIT;
    buf_printf(&base, "%s/jobs", t->cfg.data_dir);
    if (mkdir(base.p, 0700) < 0 && errno != EEXIST) {
        int rc = err_set(err, -errno, "creating %s: %s", base.p, strerror(errno));
        buf_free(&base);
        return rc;
    }
    DIR *d = opendir(base.p);
    struct dirent *de;
    while (d && (de = readdir(d)))
        if (de->d_name[0] != '.' && jobspec_id_ok(de->d_name, t->cfg.host_id))
            adopt_one(t, base.p, de->d_name);
    if (d)
        closedir(d);
    buf_free(&base);
    prune(t);
    return 0;
}
