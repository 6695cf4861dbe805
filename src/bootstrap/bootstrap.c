/* bootstrap: `pierd bootstrap`, the steps in order (docs/bootstrap.md).
 *
 * Everything that can be refused without touching the cluster is refused
 * first: the flags, the manifest and its placeholders, each app's release
 * (checked as the controller will check it), and what the store already
 * has under the system apps' names. Only then is the plan written and the
 * first job started. Each app is then brought up in the manifest's order,
 * and its records made as soon as the controller answers; the scheduler,
 * last in the manifest, starts when every system formation is met. */
#include "bootstrap/bootstrap.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "bootstrap/bootstrap_int.h"
#include "bootstrap/ca.h"
#include "bootstrap/manifest.h"
#include "lib/cleanup.h"
#include "lib/clock.h"
#include "lib/discover.h"
#include "lib/keys.h"
#include "lib/log.h"

#define DEFAULT_TIMEOUT_S 120
#define MAX_TIMEOUT_S 3600
/* The app whose jobs answer the API the other apps' records are made with. */
#define CONTROLLER_APP "controller"

static void usage(FILE *out)
{
    fprintf(
        out,
        "usage: pierd bootstrap --manifest FILE --store URL --host-url URL --data-dir STATE\n"
        "                       [--domain DOMAIN] [--var NAME=VALUE ...] [--timeout SECONDS]\n\n"
        "Starts the system apps of the manifest as jobs of the local host agent and records\n"
        "them as protected apps in their own controller; run again, it finds them.\n"
        "The cluster key comes from PIER_KEY (or --key).\n\n"
        "flags:\n"
        "  --manifest FILE        the bootstrap manifest (bootstrap/manifest.json)\n"
        "  --store URL[,URL]      the cluster store (env PIER_STORE)\n"
        "  --host-url URL         the local host agent's API (http://127.0.0.1:1113)\n"
        "  --data-dir STATE       the state directory: the plan, the system artifact, the\n"
        "                         mounted directories (env PIER_DATA_DIR)\n"
        "  --domain DOMAIN        the cluster domain: the router's certificate is for DOMAIN\n"
        "                         and *.DOMAIN (default: the value of --var DOMAIN=...)\n"
        "  --var NAME=VALUE       fills {{NAME}} in the manifest (again for each)\n"
        "  --timeout SECONDS      the longest any one wait lasts (default %d)\n"
        "  --key KEY              the cluster key (env PIER_KEY)\n",
        DEFAULT_TIMEOUT_S);
}

static bool var_name_ok(const char *s, size_t n)
{
    if (n == 0 || n > 64)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '_'))
            return false;
    }
    return true;
}

/* Parses argv into b; 1 after --help, PIER_EINVAL on a bad flag. */
static int parse_flags(struct bs *b, int argc, char **argv, struct pier_err *err)
{
    const char *timeout = NULL;
    b->store_url = getenv("PIER_STORE");
    b->data_dir = getenv("PIER_DATA_DIR");
    b->key = getenv("PIER_KEY");
    b->vars = json_object();
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 1;
        }
        static const char *const names[] = {"--manifest", "--store",   "--host-url", "--data-dir",
                                            "--var",      "--timeout", "--key",      "--domain"};
        const char **slots[] = {&b->manifest_path, &b->store_url, &b->host_url, &b->data_dir, NULL,
                                &timeout,          &b->key,       &b->domain};
        size_t k = 0;
        while (k < 8 && strcmp(a, names[k]) != 0)
            k++;
        if (k == 8)
            return err_set(err, PIER_EINVAL, "unknown flag \"%s\" (see pierd bootstrap --help)", a);
        if (i + 1 >= argc)
            return err_set(err, PIER_EINVAL, "flag \"%s\" needs a value", a);
        const char *v = argv[++i];
        if (slots[k]) {
            *slots[k] = v;
            continue;
        }
        const char *eq = strchr(v, '=');
        if (!eq || !var_name_ok(v, (size_t)(eq - v)))
            return err_set(err, PIER_EINVAL, "--var \"%s\": want NAME=VALUE, NAME of A-Z a-z 0-9 _",
                           v);
        char name[72];
        snprintf(name, sizeof(name), "%.*s", (int)(eq - v), v);
        if (strcmp(name, "STATE") == 0 || strcmp(name, "KEY") == 0 || strcmp(name, "TLS_DIR") == 0)
            return err_set(err, PIER_EINVAL,
                           "--var %s: STATE is the data dir, KEY the cluster key and TLS_DIR "
                           "STATE/tls, built in",
                           name);
        json_object_set_new(b->vars, name, json_string(eq + 1));
    }
    const char *missing = !b->manifest_path     ? "--manifest FILE"
                          : !b->store_url       ? "--store URL (or PIER_STORE)"
                          : !b->host_url        ? "--host-url URL"
                          : !b->data_dir        ? "--data-dir STATE (or PIER_DATA_DIR)"
                          : !b->key || !*b->key ? "the cluster key: PIER_KEY (or --key)"
                                                : NULL;
    if (missing)
        return err_set(err, PIER_EINVAL, "needs %s (see pierd bootstrap --help)", missing);
    /* --domain and DOMAIN are one: either gives the other. */
    const char *dv = json_string_value(json_object_get(b->vars, "DOMAIN"));
    if (b->domain && dv && strcmp(b->domain, dv) != 0)
        return err_set(err, PIER_EINVAL, "--domain %s and --var DOMAIN=%s differ", b->domain, dv);
    /* CLUSTER: the cluster's name (pier up --name), "default" unless given. */
    if (!json_object_get(b->vars, "CLUSTER"))
        json_object_set_new(b->vars, "CLUSTER", json_string("default"));
    if (b->domain && !dv)
        json_object_set_new(b->vars, "DOMAIN", json_string(b->domain));
    if (!b->domain)
        b->domain = dv;
    long t = DEFAULT_TIMEOUT_S;
    if (timeout) {
        char *end = NULL;
        t = strtol(timeout, &end, 10);
        if (!*timeout || *end || t < 1 || t > MAX_TIMEOUT_S)
            return err_set(err, PIER_EINVAL, "--timeout: a number of seconds from 1 to %d",
                           MAX_TIMEOUT_S);
    }
    b->timeout_ms = (int64_t)t * 1000;
    return 0;
}

/* Makes the data dir when missing and takes its absolute path (mount
 * locations and the artifact's file:// URL are absolute). */
static int prepare_data_dir(struct bs *b, char **abs, struct pier_err *err)
{
    if (mkdir(b->data_dir, 0700) < 0 && errno != EEXIST)
        return err_set(err, -errno, "%s: %s", b->data_dir, strerror(errno));
    *abs = realpath(b->data_dir, NULL);
    if (!*abs)
        return err_set(err, -errno, "%s: %s", b->data_dir, strerror(errno));
    b->data_dir = *abs;
    json_object_set_new(b->vars, "STATE", json_string(*abs));
    json_object_set_new(b->vars, "KEY", json_string(b->key));
    struct buf tls = BUF_INIT;
    buf_printf(&tls, "%s/tls", *abs);
    json_object_set_new(b->vars, "TLS_DIR", json_string(tls.p));
    buf_free(&tls);
    return 0;
}

/* The controller's URL from its jobs (its app came first), or else the
 * instance leading discovery's service "controller". */
static int find_controller(struct bs *b, const struct sysapp *apps, size_t n, struct pier_err *err)
{
    for (size_t i = 0; i < n; i++) {
        if (strcmp(apps[i].name, CONTROLLER_APP) == 0 && apps[i].addr[0]) {
            struct buf u = BUF_INIT;
            buf_printf(&u, "http://%s", apps[i].addr);
            b->controller_url = buf_detach(&u);
            return records_controller_ready(b, err);
        }
    }
    struct discover_list *l = NULL;
    int rc = discover_list(b->s, CONTROLLER_APP, &l, err);
    if (rc == 0 && l->n > 0) {
        struct buf u = BUF_INIT;
        buf_printf(&u, "http://%s", l->v[0].addr);
        b->controller_url = buf_detach(&u);
    }
    discover_list_free(l);
    if (rc < 0)
        return rc;
    if (!b->controller_url)
        return err_set(err, PIER_EUNAVAIL,
                       "no controller: the manifest has no app %s with a port, and discovery has "
                       "no instance of service %s",
                       CONTROLLER_APP, CONTROLLER_APP);
    return records_controller_ready(b, err);
}

/* Makes the records of apps[0..upto] not complete yet. */
static int make_records(struct bs *b, struct sysapp *apps, size_t upto, struct pier_err *err)
{
    for (size_t i = 0; i <= upto; i++) {
        struct sysapp *a = &apps[i];
        bool created = false;
        if (a->complete) {
            if (a->tags_checked)
                continue;
            /* A cluster of before the manifest's tags gets them. */
            a->tags_checked = true;
            int rc = records_tags(b, a, &created, err);
            if (rc < 0)
                return err_wrap(err, rc, "%s: its formation's tags", a->name);
            if (created)
                printf("%s: its formation's tags updated\n", a->name);
            continue;
        }
        int rc = records_ensure(b, a, &created, err);
        if (rc < 0)
            return rc;
        a->complete = a->tags_checked = true;
        plan_mark_complete(b, a->name);
        if ((rc = plan_save(b, err)) < 0)
            return rc;
        if (created) {
            b->apps_created++;
            printf("%s: recorded as a system app (app %s, release %s)\n", a->name,
                   bs_str(a->app, "id"), bs_str(a->release, "id"));
        } else {
            printf("%s: its records found\n", a->name);
        }
        fflush(stdout);
    }
    return 0;
}

/* The cluster CA and the router's certificate (ca.h), and the cluster
 * record (KEYS_CLUSTER) with the domain and the CA, written when it is
 * missing or differs. Without a domain there is no certificate to make. */
static int ensure_tls(struct bs *b, struct pier_err *err)
{
    if (!b->domain || !*b->domain) {
        printf("tls: no domain (--domain or --var DOMAIN): no certificate made\n");
        fflush(stdout);
        return 0;
    }
    cleanup_free char *pem = NULL;
    int rc = ca_ensure(b->data_dir, b->domain, BS_JOB_UID, &pem, err);
    if (rc < 0)
        return rc;
    cleanup_json json_t *want = json_pack("{s:s, s:s}", "domain", b->domain, "ca_cert", pem);
    cleanup_free char *text = json_dumps(want, JSON_COMPACT | JSON_SORT_KEYS);
    struct store_kv *kv = NULL;
    rc = store_get(b->s, KEYS_CLUSTER, &kv, err);
    if (rc < 0 && rc != PIER_ENOTFOUND)
        return err_wrap(err, rc, "reading %s", KEYS_CLUSTER);
    json_t *have = kv ? json_loadb(kv->value, kv->value_len, 0, NULL) : NULL;
    bool same = have && json_equal(have, want), existed = kv != NULL;
    json_decref(have);
    store_kv_free(kv);
    if (same)
        return 0;
    rc = store_put(b->s, KEYS_CLUSTER, text, strlen(text), 0, NULL, err);
    if (rc < 0)
        return err_wrap(err, rc, "writing %s", KEYS_CLUSTER);
    printf("tls: the cluster record %s %s\n", KEYS_CLUSTER, existed ? "updated" : "written");
    fflush(stdout);
    return 0;
}

/* The run itself, once the flags are read. *step names what failed. */
static int run(struct bs *b, struct sysapp *apps, size_t n, const char **step, struct pier_err *err)
{
    *step = "tls";
    int rc = ensure_tls(b, err);
    if (rc == 0) {
        *step = "the host agent";
        rc = jobs_agent_ready(b, err);
    }
    if (rc == 0) {
        *step = "the system artifact";
        rc = plan_artifacts(b, err);
    }
    for (size_t i = 0; i < n && rc == 0; i++) {
        *step = "planning";
        apps[i].m = json_array_get(json_object_get(b->manifest, "apps"), i);
        rc = plan_app(b, &apps[i], err);
    }
    if (rc == 0)
        rc = plan_save(b, err);
    for (size_t i = 0; i < n && rc == 0; i++) {
        struct sysapp *a = &apps[i];
        *step = a->name;
        rc = plan_mounts(b, a, err);
        /* With the controller up, the records come first: a scheduler
         * already running (a rerun) stops the jobs of an app with no
         * formation, and the scheduler itself would stop its own. */
        if (rc == 0 && b->controller_url)
            rc = make_records(b, apps, i, err);
        if (rc == 0)
            rc = jobs_ensure(b, a, err);
        if (rc == 0 && !b->controller_url && strcmp(a->name, CONTROLLER_APP) == 0) {
            rc = find_controller(b, apps, n, err);
            if (rc == 0)
                rc = make_records(b, apps, i, err);
        }
    }
    if (rc == 0 && n > 0 && !b->controller_url) {
        *step = "the controller";
        rc = find_controller(b, apps, n, err);
        if (rc == 0)
            rc = make_records(b, apps, n - 1, err);
    }
    return rc;
}

static void summary(const struct bs *b, const struct sysapp *apps, size_t n)
{
    if (n == 0) {
        printf("bootstrap: the manifest has no apps; nothing to do\n");
        fflush(stdout);
        return;
    }
    if (b->jobs_started == 0 && b->apps_created == 0) {
        printf("bootstrap: found the %zu system app%s running (%d job%s) in %.1f s; nothing to "
               "do%s%s\n",
               n, n == 1 ? "" : "s", b->jobs_found, b->jobs_found == 1 ? "" : "s",
               (double)(clock_now_ms() - b->t0) / 1000.0,
               b->controller_url ? "; the controller is at " : "",
               b->controller_url ? b->controller_url : "");
        fflush(stdout);
        return;
    }
    printf("bootstrap: %zu system app%s running (%d job%s started, %d found, %d app%s recorded) "
           "in %.1f s%s%s\n",
           n, n == 1 ? "" : "s", b->jobs_started, b->jobs_started == 1 ? "" : "s", b->jobs_found,
           b->apps_created, b->apps_created == 1 ? "" : "s",
           (double)(clock_now_ms() - b->t0) / 1000.0,
           b->controller_url ? "; the controller is at " : "",
           b->controller_url ? b->controller_url : "");
    (void)apps;
    fflush(stdout);
}

static void bs_free(struct bs *b, struct sysapp *apps, size_t n)
{
    for (size_t i = 0; apps && i < n; i++)
        sysapp_clear(&apps[i]);
    free(apps);
    json_decref(b->vars);
    json_decref(b->manifest);
    json_decref(b->plan);
    json_decref(b->sys_file);
    json_decref(b->sys_stack);
    store_close(b->s);
    httpc_free(b->h);
    buf_free(&b->auth);
    buf_free(&b->failure);
    free(b->host_id);
    free(b->host_ip);
    free(b->controller_url);
}

int bootstrap_main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    enum log_level lvl = LOG_WARN;
    const char *ll = getenv("PIER_LOG_LEVEL");
    if (ll)
        log_parse_level(ll, &lvl);
    log_set_level(lvl);
    struct bs b = {.t0 = clock_now_ms()};
    struct pier_err err = {0};
    cleanup_free char *abs_dir = NULL;
    int rc = parse_flags(&b, argc, argv, &err);
    if (rc != 0) {
        if (rc < 0)
            fprintf(stderr, "pierd bootstrap: %s\n", err.msg);
        bs_free(&b, NULL, 0);
        return rc < 0 ? 2 : 0;
    }
    if ((rc = prepare_data_dir(&b, &abs_dir, &err)) == 0)
        rc = manifest_load(b.manifest_path, b.vars, &b.manifest, &err);
    if (rc == 0)
        rc = store_open(b.store_url, &b.s, &err);
    if (rc == 0)
        rc = plan_load(&b, &err);
    if (rc < 0) {
        fprintf(stderr, "pierd bootstrap: %s\n", err.msg);
        bs_free(&b, NULL, 0);
        return 1;
    }
    b.h = httpc_new();
    httpc_basic_auth(&b.auth, b.key);
    size_t n = json_array_size(json_object_get(b.manifest, "apps"));
    struct sysapp *apps = xcalloc(n, sizeof(*apps));
    const char *step = "";
    rc = run(&b, apps, n, &step, &err);
    if (rc < 0) {
        fprintf(stderr, "pierd bootstrap: %s: %s\n", step, err.msg);
        if (b.failure.len)
            fputs(b.failure.p, stderr);
    } else
        summary(&b, apps, n);
    bs_free(&b, apps, n);
    return rc < 0 ? 1 : 0;
}
