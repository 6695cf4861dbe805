/* `pierd host`: the host agent. Parses flags and wires the modules:
 * prepare (cgroups, crun), hostrec (id, record under a lease), ports, jobs
 * (the store-driven job table, shims) and api (HTTP). */
#include "host/host.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "host/api.h"
#include "host/hostrec.h"
#include "host/joblog.h"
#include "host/jobs.h"
#include "host/ports.h"
#include "host/prepare.h"
#include "lib/daemon.h"
#include "lib/log.h"
#include "lib/store.h"

struct host_flags {
    const char *id, *ports, *tags, *ttl, *stack, *memory, *cpu, *ip, *crun, *crun_root, *uid,
        *keep_ended, *log_max_bytes, *log_max_files, *max_starting, *buildpacks;
};

/* What every job gets at /.pier (docs/build.md): pierslug from next to
 * this binary, and the shipped buildpacks. One that is missing is left out
 * of the jobs, with a warning. */
static void find_pier_binds(const char *self, const char *buildpacks, char *slug, size_t size,
                            const char **slug_out, const char **bp_out)
{
    struct stat st;
    snprintf(slug, size, "%s", self);
    char *slash = strrchr(slug, '/');
    *slug_out = NULL;
    if (slash && (size_t)(slash - slug) + sizeof("/pierslug") <= size) {
        strcpy(slash + 1, "pierslug");
        if (stat(slug, &st) == 0 && S_ISREG(st.st_mode))
            *slug_out = slug;
        else
            log_warn("host",
                     "pierslug not found: jobs get no /.pier/pierslug (slugs cannot build "
                     "or run)",
                     "path=%s", slug);
    }
    *bp_out = NULL;
    if (stat(buildpacks, &st) == 0 && S_ISDIR(st.st_mode))
        *bp_out = buildpacks;
    else
        log_warn("host", "buildpacks directory not found: jobs get no /.pier/buildpacks", "path=%s",
                 buildpacks);
    log_info("host", "what jobs get at /.pier", "pierslug=%s buildpacks=%s",
             *slug_out ? *slug_out : "none", *bp_out ? *bp_out : "none");
}

/* The buildpacks when no --buildpacks is given: those installed with pier,
 * found from this executable (PIER_BUILDPACKS_INSTALLED, relative to its
 * directory: ../share/pier/buildpacks by default), else the source tree's
 * of a build run where it was built (PIER_BUILDPACKS_DIR). */
static const char *default_buildpacks(const char *self, char *out, size_t size)
{
    const char *rel = PIER_BUILDPACKS_INSTALLED;
    char path[PATH_MAX];
    const char *slash = strrchr(self, '/');
    if (rel[0] == '/')
        snprintf(path, sizeof(path), "%s", rel);
    else
        snprintf(path, sizeof(path), "%.*s/%s", slash ? (int)(slash - self) : 1, slash ? self : ".",
                 rel);
    struct stat st;
    char real[PATH_MAX];
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode) && realpath(path, real) &&
        strlen(real) < size) {
        snprintf(out, size, "%s", real);
        return out;
    }
    return PIER_BUILDPACKS_DIR;
}

/* "k=v,k2=v2" into an object of strings. */
static int parse_tags(const char *s, json_t **out, struct pier_err *err)
{
    json_t *o = json_object();
    char *copy = xstrdup(s ? s : ""), *save = NULL;
    int rc = 0;
    for (char *kv = strtok_r(copy, ",", &save); kv; kv = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(kv, '=');
        if (!eq || eq == kv) {
            rc = err_set(err, PIER_EINVAL, "--tags: \"%s\" is not KEY=VALUE", kv);
            break;
        }
        *eq = 0;
        json_object_set_new(o, kv, json_string(eq + 1));
    }
    free(copy);
    if (rc < 0)
        json_decref(o);
    else
        *out = o;
    return rc;
}

/* A size with an optional K, M, G or T suffix (powers of 1024). */
static int parse_size(const char *flag, const char *s, long long *out, struct pier_err *err)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    int shift = 0;
    switch (*end) {
    case 'K':
    case 'k':
        shift = 10;
        end++;
        break;
    case 'M':
    case 'm':
        shift = 20;
        end++;
        break;
    case 'G':
    case 'g':
        shift = 30;
        end++;
        break;
    case 'T':
    case 't':
        shift = 40;
        end++;
        break;
    }
    if (*end == 'B' || *end == 'b')
        end++;
    if (end == s || *end || errno || v < 0 || v > (1LL << (62 - shift)))
        return err_set(err, PIER_EINVAL, "--%s: \"%s\" is not a size (e.g. 512M, 8G)", flag, s);
    *out = v << shift;
    return 0;
}

static int parse_int(const char *flag, const char *s, long lo, long hi, long *out,
                     struct pier_err *err)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (end == s || *end || errno || v < lo || v > hi)
        return err_set(err, PIER_EINVAL, "--%s: \"%s\" must be a number from %ld to %ld", flag, s,
                       lo, hi);
    *out = v;
    return 0;
}

struct usage_ctx {
    struct jobs *jobs;
    struct ports *ports;
};

static void usage_fill(void *ud, json_t *rec)
{
    struct usage_ctx *u = ud;
    int running = 0;
    int64_t mem = 0, cpu = 0;
    if (u->jobs)
        jobs_usage(u->jobs, &running, &mem, &cpu);
    json_object_set_new(json_object_get(rec, "memory"), "allocated", json_integer(mem));
    json_object_set_new(json_object_get(rec, "cpu"), "allocated", json_integer(cpu));
    json_object_set_new(rec, "ports",
                        json_pack("{s:i, s:i, s:i}", "lo", ports_lo(u->ports), "hi",
                                  ports_hi(u->ports), "free", ports_free_count(u->ports)));
    json_object_set_new(rec, "jobs", json_integer(running));
}

/* The address jobs are reached at: --ip, else the API's host when it is a
 * specific IPv4 address, else loopback. */
static const char *job_ip(const char *ip, const char *listen, char *buf, size_t n)
{
    if (ip)
        return ip;
    const char *colon = strrchr(listen, ':');
    size_t len = colon ? (size_t)(colon - listen) : 0;
    if (len > 0 && len < n && listen[0] != '[') {
        memcpy(buf, listen, len);
        buf[len] = 0;
        if (strcmp(buf, "0.0.0.0") != 0)
            return buf;
    }
    return "127.0.0.1";
}

static int run(const struct daemon_flags *f, const struct host_flags *hf, struct pier_err *err)
{
    char id[HOSTREC_MAX_ID + 1], ipbuf[64], shim[4096], self[4096], data_dir[4096], pierslug[4096],
        buildpacks[PATH_MAX];
    long long memory = 0;
    long ttl = 10, uid = 65534, keep = 100, log_files = 0, cpu = 0, max_starting = -1;
    long long log_bytes = 0;
    json_t *tags = NULL;
    struct store *s = NULL;
    struct ports *ports = NULL;
    struct jobs *jobs = NULL;
    struct hostrec *hr = NULL;
    struct httpd *api = NULL;
    int rc;

    if ((hf->memory && (rc = parse_size("memory", hf->memory, &memory, err)) < 0) ||
        (hf->ttl && (rc = parse_int("ttl", hf->ttl, 1, 3600, &ttl, err)) < 0) ||
        (hf->cpu && (rc = parse_int("cpu", hf->cpu, 1, 1 << 20, &cpu, err)) < 0) ||
        (hf->uid && (rc = parse_int("uid", hf->uid, 1, 4294967294L, &uid, err)) < 0) ||
        (hf->keep_ended &&
         (rc = parse_int("keep-ended", hf->keep_ended, 0, 100000, &keep, err)) < 0) ||
        (hf->log_max_bytes &&
         (rc = parse_size("log-max-bytes", hf->log_max_bytes, &log_bytes, err)) < 0) ||
        (hf->log_max_files &&
         (rc = parse_int("log-max-files", hf->log_max_files, 1, 100, &log_files, err)) < 0) ||
        (hf->max_starting &&
         (rc = parse_int("max-starting", hf->max_starting, 0, 100000, &max_starting, err)) < 0) ||
        (rc = parse_tags(hf->tags, &tags, err)) < 0 ||
        (rc = ports_new(hf->ports ? hf->ports : "20000-20999", &ports, err)) < 0)
        goto out;
    if (mkdir(f->data_dir, 0700) < 0 && errno != EEXIST) {
        rc = err_set(err, -errno, "--data-dir %s: %s", f->data_dir, strerror(errno));
        goto out;
    }
    /* Shims and crun get absolute paths. */
    if (!realpath(f->data_dir, data_dir)) {
        rc = err_set(err, -errno, "--data-dir %s: %s", f->data_dir, strerror(errno));
        goto out;
    }
    if ((rc = hostrec_load_id(data_dir, hf->id, id, err)) < 0)
        goto out;
    log_info("host", "starting", "id=%s data_dir=%s store=%s", id, data_dir, f->store);
    const char *crun = hf->crun ? hf->crun : "crun";
    if ((rc = prepare_cgroups(err)) < 0 || (rc = prepare_crun(crun, err)) < 0)
        goto out;
    if (!memory)
        memory = prepare_memory_total();
    if (!cpu)
        cpu = sysconf(_SC_NPROCESSORS_ONLN) * 1000;
    /* A few starts per core: a burst waits its turn instead of filling
     * the run queue the store and the scheduler need too. */
    if (max_starting < 0) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        max_starting = cpus > 1 ? 2 * cpus : 2;
    }
    /* pierd-shim is installed (and built) next to pierd. */
    ssize_t n = readlink("/proc/self/exe", shim, sizeof(shim) - 16);
    if (n <= 0) {
        rc = err_set(err, PIER_EINTERNAL, "cannot find my own binary: %s", strerror(errno));
        goto out;
    }
    shim[n] = 0;
    /* This pierd, named once now: the path stays right when the file is
     * replaced by an upgrade later (/proc/self/exe would then say
     * "(deleted)"), and jobs with artifact.pierd get the new binary, which
     * is how a system app rolls out one (docs/bootstrap.md). */
    memcpy(self, shim, (size_t)n + 1);
    log_info("host", "jobs with artifact.pierd get this pierd", "path=%s", self);
    const char *slug_bind, *bp_bind;
    find_pier_binds(shim,
                    hf->buildpacks ? hf->buildpacks
                                   : default_buildpacks(shim, buildpacks, sizeof(buildpacks)),
                    pierslug, sizeof(pierslug), &slug_bind, &bp_bind);
    strcpy(strrchr(shim, '/') + 1, "pierd-shim");
    if (access(shim, X_OK) < 0) {
        rc = err_set(err, PIER_EUNAVAIL,
                     "%s: %s; it is built and installed with pierd (meson), put it back there",
                     shim, strerror(errno));
        goto out;
    }
    char crun_root[512];
    if (hf->crun_root)
        snprintf(crun_root, sizeof(crun_root), "%s", hf->crun_root);
    else
        snprintf(crun_root, sizeof(crun_root), "/run/pier/%s/crun", id);
    if (access("/usr/bin/tini-static", X_OK) < 0)
        log_warn("host", "tini-static not found: jobs asking for \"init\" will fail",
                 "hint=\"apt-get install tini\"");
    if (hf->stack)
        log_info("host", "default stack", "path=%s", hf->stack);
    else
        log_info("host",
                 "no stack configured: jobs run on read-only binds of this host's /usr, "
                 "/bin, /sbin, /lib, /lib64 and /etc (pier stack build DIR makes a stack)",
                 "stack=host");

    if ((rc = store_open(f->store, &s, err)) < 0)
        goto out;
    const struct jobs_config jc = {
        .host_id = id,
        .host_ip = job_ip(hf->ip, f->listen, ipbuf, sizeof(ipbuf)),
        .data_dir = data_dir,
        .shim = shim,
        .crun = crun,
        .crun_root = crun_root,
        .stack = hf->stack,
        .init_path = access("/usr/bin/tini-static", X_OK) == 0 ? "/usr/bin/tini-static" : NULL,
        .pierslug = slug_bind,
        .buildpacks = bp_bind,
        .pierd = self,
        .uid = (uid_t)uid,
        .gid = (gid_t)uid,
        .memory_total = memory,
        .log_max_bytes = (size_t)log_bytes,
        .log_max_files = (int)log_files,
        .keep_ended = (int)keep,
        .max_starting = (int)max_starting,
    };
    jobs = jobs_new(&jc, s, ports, NULL);
    if ((rc = jobs_start(jobs, err)) < 0)
        goto out;
    const struct host_api_opts ao = {.listen = f->listen, .key = f->key, .host_id = id};
    if ((rc = host_api_start(&ao, jobs, NULL, &api, err)) < 0)
        goto out;
    char addr[300];
    snprintf(addr, sizeof(addr), "%s:%d", jc.host_ip, httpd_port(api));
    struct usage_ctx uc = {.jobs = jobs, .ports = ports};
    const struct hostrec_info hi = {
        .id = id,
        .addr = addr,
        .ip = jc.host_ip,
        .tags = tags,
        .memory_total = memory,
        .cpu_total = cpu,
        .ttl_s = (int)ttl,
    };
    if ((rc = hostrec_start(s, &hi, usage_fill, &uc, &hr, err)) < 0)
        goto out;
    jobs_set_hostrec(jobs, hr);
    host_api_set_hostrec(api, hr);
    log_info("host", "ready", "id=%s api=%s ports=%d-%d memory_mb=%lld max_starting=%ld", id, addr,
             ports_lo(ports), ports_hi(ports), memory >> 20, max_starting);

    int sig = daemon_wait();
    log_info("host", "stopping; running jobs keep running", "signal=%d", sig);
out:
    httpd_free(api);
    if (jobs)
        jobs_set_hostrec(jobs, NULL);
    hostrec_stop(hr, false);
    jobs_free(jobs);
    store_close(s);
    ports_free(ports);
    json_decref(tags);
    return rc;
}

int host_main(int argc, char **argv)
{
    struct host_flags hf = {0};
    const struct daemon_opt opts[] = {
        {"id", "ID", "host id (1-24 of a-z, 0-9); default: made once, kept in the data dir",
         &hf.id},
        {"ports", "LO-HI", "host ports handed to jobs (default 20000-20999)", &hf.ports},
        {"tags", "K=V,...", "tags the scheduler matches against formations", &hf.tags},
        {"ttl", "SECONDS", "lease of the host record (default 10)", &hf.ttl},
        {"stack", "DIR", "default stack root (pier stack build); default: the host's binds",
         &hf.stack},
        {"memory", "SIZE", "memory jobs may use in all (default: all of MemTotal)", &hf.memory},
        {"cpu", "MILLICPUS", "CPU jobs may use in all (default: 1000 per core)", &hf.cpu},
        {"ip", "IP", "address jobs are reached at (default: the --listen host, or 127.0.0.1)",
         &hf.ip},
        {"crun", "PATH", "the crun binary (default: crun on PATH)", &hf.crun},
        {"crun-root", "DIR", "crun's state directory (default /run/pier/<id>/crun)", &hf.crun_root},
        {"uid", "UID", "user (and group) jobs run as (default 65534)", &hf.uid},
        {"keep-ended", "N", "directories (logs) of ended jobs kept (default 100)", &hf.keep_ended},
        {"log-max-bytes", "SIZE", "rotate a job's log at this size (default 10M)",
         &hf.log_max_bytes},
        {"log-max-files", "N", "log files kept per job (default 3)", &hf.log_max_files},
        {"max-starting", "N",
         "job starts in progress at once; the rest wait in order (default 2 per CPU, "
         "at least 2; 0: no bound)",
         &hf.max_starting},
        {"buildpacks", "DIR",
         "the buildpacks bound at /.pier/buildpacks in every job (default: the ones installed "
         "with pier, DATADIR/pier/buildpacks, else the source tree's)",
         &hf.buildpacks},
        {NULL, NULL, NULL, NULL},
    };
    const struct daemon_spec spec = {
        .sub = "host",
        .summary = "The host agent: runs the jobs the store assigns to this host in crun "
                   "containers.",
        .default_listen = "127.0.0.1:1113",
        .opts = opts,
        .uses = DAEMON_USES_LISTEN | DAEMON_USES_STORE | DAEMON_USES_DATA_DIR | DAEMON_USES_KEY,
    };
    struct daemon_flags f;
    struct pier_err err = {0};
    int rc = daemon_parse(&spec, argc, argv, &f, &err);
    if (rc != 0) {
        if (rc < 0)
            fprintf(stderr, "pierd host: %s\n", err.msg);
        return rc < 0 ? 2 : 0;
    }
    if (!f.store || !f.data_dir) {
        fprintf(stderr, "pierd host: needs --store URL (or PIER_STORE) and --data-dir DIR (or "
                        "PIER_DATA_DIR)\n");
        return 2;
    }
    if (run(&f, &hf, &err) < 0) {
        fprintf(stderr, "pierd host: %s\n", err.msg);
        log_error("host", "cannot run", "error=\"%s\"", err.msg);
        return 1;
    }
    return 0;
}
