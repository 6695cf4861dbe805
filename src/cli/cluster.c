/* pier cluster ..., pier status */
#include <ctype.h>
#include <curl/curl.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "cli/api.h"
#include "cli/cli.h"
#include "cli/config.h"
#include "cli/daemons.h"
#include "cli/git.h"
#include "cli/ui.h"
#include "lib/cleanup.h"
#include "lib/fs.h"
#include "lib/httpc.h"

/* How the cluster's https is verified: "pinned" (its own CA), "system"
 * (the system's CAs) or NULL (plain http). */
static const char *tls_how(const json_t *cl)
{
    const char *url = json_string_value(json_object_get(cl, "url"));
    if (json_object_get(cl, "ca_cert"))
        return "pinned";
    return url && strncmp(url, "https://", 8) == 0 ? "system" : NULL;
}

/* --json: what the table shows, one object a cluster; never the key nor
 * the CA's PEM. */
static int list_json(struct config *cfg)
{
    const char *def = config_default(cfg);
    cleanup_json json_t *out = json_array();
    json_t *cl;
    size_t i;
    json_array_foreach(config_clusters(cfg), i, cl)
    {
        const char *name = json_string_value(json_object_get(cl, "name"));
        const char *tls = tls_how(cl);
        json_t *git_url = json_object_get(cl, "git_url"); /* borrowed */
        json_array_append_new(out, json_pack("{s:s?, s:O?, s:O?, s:b, s:s}", "name", name, "url",
                                             json_object_get(cl, "url"), "git_url", git_url,
                                             "default", def && name && strcmp(def, name) == 0,
                                             "tls", tls ? tls : "none"));
    }
    return api_print_json(out, false);
}

static int list(struct config *cfg, bool json)
{
    json_t *cl;
    size_t i;
    const char *def = config_default(cfg);
    if (json)
        return list_json(cfg);
    if (json_array_size(config_clusters(cfg)) == 0) {
        fprintf(stderr, "no clusters yet; add one with 'pier cluster add NAME URL KEY'\n");
        return 0;
    }
    /* The GIT URL column only once some cluster has one; TLS likewise once
     * some cluster has a CA of its own ("pinned"; "system": the system's
     * CAs; "-": plain http). */
    bool git = false, tls = false;
    json_array_foreach(config_clusters(cfg), i, cl)
    {
        if (json_object_get(cl, "git_url"))
            git = true;
        if (json_object_get(cl, "ca_cert"))
            tls = true;
    }
    cleanup_buf struct buf line = BUF_INIT;
    buf_printf(&line, "%-2s%-16s %-32s", "", "NAME", "URL");
    if (git)
        buf_printf(&line, " %-32s", "GIT URL");
    if (tls)
        buf_puts(&line, " TLS");
    while (line.len > 0 && line.p[line.len - 1] == ' ')
        line.p[--line.len] = '\0';
    printf("%s\n", line.p);
    json_array_foreach(config_clusters(cfg), i, cl)
    {
        const char *name = json_string_value(json_object_get(cl, "name"));
        const char *url = json_string_value(json_object_get(cl, "url"));
        const char *git_url = json_string_value(json_object_get(cl, "git_url"));
        const char *mark = def && name && strcmp(def, name) == 0 ? "*" : "";
        buf_reset(&line);
        buf_printf(&line, "%-2s%-16s %-32s", mark, name ? name : "?", url ? url : "?");
        if (git)
            buf_printf(&line, " %-32s", git_url ? git_url : "-");
        if (tls) {
            const char *how = tls_how(cl);
            buf_printf(&line, " %s", how ? how : "-");
        }
        size_t n = line.len;
        while (n > 0 && line.p[n - 1] == ' ')
            n--;
        printf("%.*s\n", (int)n, line.p);
    }
    return 0;
}

/* Reads the CA file of --ca into *pem (a new string) and checks it. */
static int read_ca(const char *path, char **pem, struct buf *pin)
{
    FILE *f = fopen(path, "re");
    if (!f)
        return ui_usage("cluster", "--ca %s: %s", path, strerror(errno));
    cleanup_buf struct buf b = BUF_INIT;
    int rc = fs_read_fd(fileno(f), &b, 1 << 20);
    fclose(f);
    if (rc < 0)
        return ui_usage("cluster", "--ca %s: %s", path,
                        rc == -EFBIG ? "too big for a CA certificate" : strerror(-rc));
    cleanup_buf struct buf what = BUF_INIT;
    buf_printf(&what, "--ca %s", path);
    struct pier_err err = {0};
    if (config_pem_check(b.p, what.p, NULL, pin, &err) < 0)
        return ui_usage("cluster", "%s", err.msg);
    *pem = buf_detach(&b);
    return 0;
}

/* Connects to url once without verifying it and appends the PEM of every
 * certificate the server presents to certs. */
static int fetch_chain(const char *url, json_t *certs, struct pier_err *err)
{
    CURL *c = curl_easy_init();
    if (!c)
        abort();
    char errbuf[CURL_ERROR_SIZE] = "";
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "https");
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_CONNECT_ONLY, 1L); /* the handshake is all it takes */
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 0L);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 0L);
    curl_easy_setopt(c, CURLOPT_CERTINFO, 1L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
    CURLcode rc = curl_easy_perform(c);
    int ret = 0;
    if (rc != CURLE_OK) {
        ret =
            err_set(err, -EHOSTUNREACH, "%s: %s", url, errbuf[0] ? errbuf : curl_easy_strerror(rc));
    } else {
        struct curl_certinfo *ci = NULL;
        curl_easy_getinfo(c, CURLINFO_CERTINFO, &ci);
        for (int i = 0; ci && i < ci->num_of_certs; i++)
            for (struct curl_slist *l = ci->certinfo[i]; l; l = l->next)
                if (strncmp(l->data, "Cert:", 5) == 0)
                    json_array_append_new(certs, json_string(l->data + 5));
        if (json_array_size(certs) == 0)
            ret = err_set(err, PIER_EPROTO, "%s presented no certificate", url);
    }
    curl_easy_cleanup(c);
    return ret;
}

/* --tls-pin: the certificate of url's chain whose pin is pin, checked by
 * verifying url with it; *pem gets it (a new string). */
static int pinned_ca(const char *name, const char *url, const char *pin, char **pem)
{
    cleanup_json json_t *certs = json_array();
    struct pier_err err = {0};
    if (fetch_chain(url, certs, &err) < 0)
        return ui_fail("is the URL right and the cluster up?", "cannot read the certificates of %s",
                       err.msg);
    cleanup_buf struct buf seen = BUF_INIT;
    size_t i;
    json_t *cert;
    json_array_foreach(certs, i, cert)
    {
        const char *p = json_string_value(cert);
        cleanup_buf struct buf got = BUF_INIT;
        if (config_pem_check(p, "a certificate of the server", NULL, &got, NULL) < 0)
            continue;
        if (strcmp(got.p, pin) == 0) {
            *pem = xstrdup(p);
            break;
        }
        buf_printf(&seen, "%s%s", seen.len ? ", " : "", got.p);
    }
    if (!*pem)
        return ui_fail("check the pin: the \"tls_pin\" of the cluster in the config of 'pier "
                       "up', or: openssl x509 -in ca.crt -outform der | openssl dgst -sha256 "
                       "-binary | base64; or give the CA file with --ca FILE",
                       "no certificate %s presents has the pin %s (it presents %s)", url, pin,
                       seen.len ? seen.p : "none that parses");
    /* The pin names a certificate; the chain must also verify with it (for
     * the name in the URL, within its validity). */
    cleanup_buf struct buf full = BUF_INIT;
    buf_printf(&full, "%s/.well-known/status", url);
    struct httpc_req req = {.url = full.p, .name = url, .timeout_ms = 10000, .ca_pem = *pem};
    struct httpc *h = httpc_new();
    struct httpc_resp resp = {0};
    int rc = httpc_do(h, &req, &resp, &err);
    httpc_resp_release(&resp);
    httpc_free(h);
    if (rc < 0) {
        free(*pem);
        *pem = NULL;
        return ui_fail(rc == HTTPC_ETLS ? "the pinned certificate is in the chain but does not "
                                          "sign it for this URL: is it the cluster's CA?"
                                        : NULL,
                       "cluster \"%s\": %s", name, err.msg);
    }
    return 0;
}

static int add(struct config *cfg, int argc, char **argv)
{
    bool make_default = false;
    const char *pos[3], *git_flag = NULL, *ca_flag = NULL, *pin_flag = NULL;
    int npos = 0;
    for (int i = 0; i < argc; i++) {
        const char *s = argv[i];
        if (strcmp(s, "-d") == 0 || strcmp(s, "--default") == 0) {
            make_default = true;
        } else if (strcmp(s, "--ca") == 0 || strcmp(s, "--tls-pin") == 0 || strcmp(s, "-p") == 0) {
            if (i + 1 >= argc)
                return ui_usage("cluster", "%s needs a %s", s, s[2] == 'c' ? "FILE" : "PIN");
            *(s[2] == 'c' ? &ca_flag : &pin_flag) = argv[++i];
        } else if (strncmp(s, "--ca=", 5) == 0) {
            ca_flag = s + 5;
        } else if (strncmp(s, "--tls-pin=", 10) == 0) {
            pin_flag = s + 10;
        } else if (strcmp(s, "--git-url") == 0) {
            if (i + 1 >= argc)
                return ui_usage("cluster", "--git-url needs a URL");
            git_flag = argv[++i];
        } else if (strncmp(s, "--git-url=", 10) == 0) {
            git_flag = s + 10;
        } else if (npos < 3) {
            pos[npos++] = s;
        } else {
            npos++;
        }
    }
    if (npos != 3)
        return ui_usage("cluster", "cluster add needs NAME URL KEY");
    cleanup_free char *git_url = NULL;
    struct pier_err gerr = {0};
    if (git_flag && git_url_check(git_flag, &git_url, &gerr) < 0)
        return ui_usage("cluster", "%s", gerr.msg);
    const char *name = pos[0], *url = pos[1], *key = pos[2];
    if (!config_name_ok(name))
        return ui_usage("cluster",
                        "cluster name \"%s\" may hold only letters, digits, '-', '_' "
                        "and '.' (at most 63)",
                        name);
    if (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0)
        return ui_usage("cluster", "URL \"%s\" must start with http:// or https://", url);
    /* "https://c.example/" and "https://c.example" are the same cluster;
     * paths are appended to it, so keep no trailing slash. */
    cleanup_free char *url_copy = xstrdup(url);
    size_t ulen = strlen(url_copy);
    while (ulen > 8 && url_copy[ulen - 1] == '/')
        url_copy[--ulen] = '\0';
    url = url_copy;
    if (config_cluster(cfg, name))
        return ui_fail("remove it first with 'pier cluster remove NAME', or pick another name",
                       "a cluster named \"%s\" already exists", name);
    if (ca_flag && pin_flag)
        return ui_usage("cluster", "give --ca FILE or --tls-pin PIN, not both");
    if (pin_flag && strncmp(url, "https://", 8) != 0)
        return ui_usage("cluster", "--tls-pin needs an https:// URL (\"%s\" is not)", url);
    cleanup_free char *ca = NULL;
    cleanup_buf struct buf pin = BUF_INIT;
    if (ca_flag) {
        int rc = read_ca(ca_flag, &ca, &pin);
        if (rc)
            return rc;
    } else if (pin_flag) {
        int rc = pinned_ca(name, url, pin_flag, &ca);
        if (rc)
            return rc;
        buf_puts(&pin, pin_flag);
    }
    json_t *cl = json_pack("{s:s,s:s,s:s}", "name", name, "url", url, "key", key);
    if (git_url)
        json_object_set_new(cl, "git_url", json_string(git_url));
    if (ca) {
        json_object_set_new(cl, "ca_cert", json_string(ca));
        json_object_set_new(cl, "tls_pin", json_string(pin.p));
    }
    json_array_append_new(config_clusters(cfg), cl);
    if (make_default || !config_default(cfg))
        json_object_set_new(cfg->root, "default", json_string(name));
    struct pier_err err = {0};
    if (config_save(cfg, &err) < 0)
        return ui_fail(NULL, "%s", err.msg);
    printf("cluster \"%s\" added%s\n", name,
           strcmp(config_default(cfg), name) == 0 ? " (default)" : "");
    if (ca)
        printf("its https server is verified with the CA of pin %s\n", pin.p);
    return 0;
}

static int remove_cluster(struct config *cfg, int argc, char **argv)
{
    if (argc != 1)
        return ui_usage("cluster", "cluster remove needs NAME");
    json_t *arr = config_clusters(cfg);
    json_t *cl;
    size_t i;
    json_array_foreach(arr, i, cl)
    {
        const char *n = json_string_value(json_object_get(cl, "name"));
        if (n && strcmp(n, argv[0]) == 0) {
            json_array_remove(arr, i);
            const char *def = config_default(cfg);
            if (def && strcmp(def, argv[0]) == 0)
                json_object_del(cfg->root, "default");
            struct pier_err err = {0};
            if (config_save(cfg, &err) < 0)
                return ui_fail(NULL, "%s", err.msg);
            printf("cluster \"%s\" removed\n", argv[0]);
            return 0;
        }
    }
    return ui_fail("'pier cluster' lists the clusters", "no cluster named \"%s\"", argv[0]);
}

static int set_default(struct config *cfg, int argc, char **argv)
{
    if (argc == 0) {
        const char *def = config_default(cfg);
        if (!def)
            return ui_fail("set one with 'pier cluster default NAME'", "no default cluster");
        printf("%s\n", def);
        return 0;
    }
    if (argc != 1)
        return ui_usage("cluster", "cluster default takes one NAME");
    if (!config_cluster(cfg, argv[0]))
        return ui_fail("'pier cluster' lists the clusters", "no cluster named \"%s\"", argv[0]);
    json_object_set_new(cfg->root, "default", json_string(argv[0]));
    struct pier_err err = {0};
    if (config_save(cfg, &err) < 0)
        return ui_fail(NULL, "%s", err.msg);
    printf("default cluster is now \"%s\"\n", argv[0]);
    return 0;
}

/* pier cluster git-url NAME [URL | --remove] */
static int set_git_url(struct config *cfg, int argc, char **argv)
{
    if (argc < 1 || argc > 2)
        return ui_usage("cluster", "cluster git-url needs NAME, and URL to set it");
    json_t *cl = config_cluster(cfg, argv[0]);
    if (!cl)
        return ui_fail("'pier cluster' lists the clusters", "no cluster named \"%s\"", argv[0]);
    if (argc == 1) {
        const char *u = json_string_value(json_object_get(cl, "git_url"));
        if (!u)
            return ui_fail("set one with 'pier cluster git-url NAME URL'",
                           "cluster \"%s\" has no git URL", argv[0]);
        printf("%s\n", u);
        return 0;
    }
    cleanup_free char *u = NULL;
    struct pier_err err = {0};
    if (strcmp(argv[1], "--remove") == 0)
        json_object_del(cl, "git_url");
    else if (git_url_check(argv[1], &u, &err) < 0)
        return ui_usage("cluster", "%s", err.msg);
    else
        json_object_set_new(cl, "git_url", json_string(u));
    if (config_save(cfg, &err) < 0)
        return ui_fail(NULL, "%s", err.msg);
    if (u)
        printf("cluster \"%s\" git URL is now %s\n", argv[0], u);
    else
        printf("cluster \"%s\" has no git URL now\n", argv[0]);
    return 0;
}

int cli_cluster(struct cli *c)
{
    struct config cfg;
    struct pier_err err = {0};
    if (config_load(&cfg, &err) < 0) {
        config_free(&cfg);
        return ui_fail(NULL, "%s", err.msg);
    }
    int rc;
    int first = c->argc > 0 && strcmp(c->argv[0], "list") == 0 ? 1 : 0;
    bool listing = c->argc == first || strcmp(c->argv[first], "--json") == 0;
    if (listing && c->argc > first + 1)
        rc = ui_usage("cluster", "cluster list takes only --json, not \"%s\"", c->argv[first + 1]);
    else if (listing)
        rc = list(&cfg, c->argc > first);
    else if (first)
        rc = ui_usage("cluster", "cluster list takes only --json, not \"%s\"", c->argv[1]);
    else if (strcmp(c->argv[0], "add") == 0)
        rc = add(&cfg, c->argc - 1, c->argv + 1);
    else if (strcmp(c->argv[0], "remove") == 0)
        rc = remove_cluster(&cfg, c->argc - 1, c->argv + 1);
    else if (strcmp(c->argv[0], "default") == 0)
        rc = set_default(&cfg, c->argc - 1, c->argv + 1);
    else if (strcmp(c->argv[0], "git-url") == 0)
        rc = set_git_url(&cfg, c->argc - 1, c->argv + 1);
    else
        rc = ui_usage("cluster", "unknown cluster subcommand \"%s\"", c->argv[0]);
    config_free(&cfg);
    return rc;
}

/* ---- pier status ---- */

/* The controller URL `pier up` gives the cluster of cs (up.c's rule). */
static void state_url(const struct cluster_state *cs, struct buf *out)
{
    buf_printf(out, "http://controller.%s", cs->domain);
    if (cs->http != 80)
        buf_printf(out, ":%d", cs->http);
}

/* Whether the state dir holds the cluster a talks to; *cs gets its
 * cluster.json when it does. */
static bool state_holds(const struct api *a, const char *state, struct cluster_state *cs)
{
    if (cluster_state_load(state, cs, NULL) < 0)
        return false;
    cleanup_buf struct buf url = BUF_INIT, https = BUF_INIT;
    state_url(cs, &url);
    if (strcmp(url.p, a->base) == 0 || (cs->joined && strcmp(cs->joined, a->base) == 0))
        return true;
    if (cs->https > 0) { /* `pier up` with TLS gives the https URL */
        buf_printf(&https, "https://controller.%s", cs->domain);
        if (cs->https != 443)
            buf_printf(&https, ":%d", cs->https);
        if (strcmp(https.p, a->base) == 0)
            return true;
    }
    cluster_state_free(cs);
    return false;
}

/* The state dir of a running `pierd store|host --data-dir STATE/NAME`
 * (pid's command line), or NULL; a new string. */
static char *proc_state_dir(const char *pid)
{
    char path[300];
    snprintf(path, sizeof(path), "/proc/%s/cmdline", pid);
    FILE *f = fopen(path, "re");
    if (!f)
        return NULL;
    char b[8192];
    size_t n = fread(b, 1, sizeof(b) - 1, f);
    fclose(f);
    b[n] = '\0';
    const char *args[64];
    size_t na = 0;
    for (size_t off = 0; off < n && na < 64; off += strlen(b + off) + 1)
        args[na++] = b + off;
    if (na < 4)
        return NULL;
    const char *base = strrchr(args[0], '/');
    base = base ? base + 1 : args[0];
    if (strcmp(base, "pierd") != 0 || (strcmp(args[1], "store") && strcmp(args[1], "host")))
        return NULL;
    for (size_t i = 2; i + 1 < na; i++) {
        if (strcmp(args[i], "--data-dir") != 0)
            continue;
        const char *dir = args[i + 1], *slash = strrchr(dir, '/');
        if (!slash || slash == dir || strcmp(slash + 1, args[1]) != 0)
            return NULL;
        char *state = xstrdup(dir);
        state[slash - dir] = '\0';
        return state;
    }
    return NULL;
}

/* The state dir on this machine that holds the cluster a talks to, as a
 * new string with its cluster.json in *cs, or NULL. With --state-dir only
 * that one; else $PIER_HOME or the default (as `pier up`), else the state
 * dir of a running store or host agent of this cluster (one started with
 * `pier up --state-dir DIR`). */
static char *local_state(const struct api *a, const char *flag, struct cluster_state *cs)
{
    if (flag && *flag)
        return state_holds(a, flag, cs) ? xstrdup(flag) : NULL;
    char *state = state_dir_resolve(NULL);
    if (state_holds(a, state, cs))
        return state;
    free(state);
    DIR *d = opendir("/proc");
    if (!d)
        return NULL;
    state = NULL;
    struct dirent *de;
    while (!state && (de = readdir(d))) {
        if (!isdigit((unsigned char)de->d_name[0]))
            continue;
        state = proc_state_dir(de->d_name);
        if (state && !state_holds(a, state, cs)) {
            free(state);
            state = NULL;
        }
    }
    closedir(d);
    return state;
}

/* The daemons of the local state dir (cs read from it): adds them to out
 * and says whether both run and answer. */
static bool local_daemons(const char *state, const struct cluster_state *cs, json_t *out)
{
    cleanup_buf struct buf store_dir = BUF_INIT, host_dir = BUF_INIT;
    buf_printf(&store_dir, "%s/store", state);
    buf_printf(&host_dir, "%s/host", state);
    const char *names[] = {"store", "host"}, *dirs[] = {store_dir.p, host_dir.p};
    int ports[] = {cs->store, cs->host};
    bool ok = true;
    for (int i = cs->store_urls ? 1 : 0; i < 2; i++) { /* an external store: not ours */
        char u[128];
        snprintf(u, sizeof(u), "http://%s:%d", cs->listen_ip, ports[i]);
        struct pierd_daemon d = {.name = names[i], .state = state, .data_dir = dirs[i], .url = u};
        pid_t pid = pierd_daemon_running(&d);
        bool up = pid && status_answers(u, 2000);
        ok = ok && up;
        json_array_append_new(out, json_pack("{s:s,s:s,s:i,s:b,s:b,s:s}", "name", names[i], "url",
                                             u, "pid", (int)pid, "running", pid != 0, "healthy", up,
                                             "state_dir", state));
    }
    return ok;
}

/* Each system app (meta flynn-system-app "true") and its live jobs; an
 * app with no job up is unhealthy. Adds them to out. */
static int system_apps(struct api *a, json_t *out, struct pier_err *err)
{
    cleanup_json json_t *apps = NULL;
    int rc = api_get(a, "/apps", &apps, err);
    if (rc < 0)
        return rc == PIER_ENOTFOUND ? 0 : rc; /* not a controller: nothing more to show */
    size_t i;
    json_t *app;
    json_array_foreach(apps, i, app)
    {
        json_t *meta = json_object_get(app, "meta");
        const char *sys = json_string_value(json_object_get(meta, "flynn-system-app"));
        const char *id = json_string_value(json_object_get(app, "id"));
        const char *name = json_string_value(json_object_get(app, "name"));
        if (!sys || strcmp(sys, "true") != 0 || !id || !name)
            continue;
        cleanup_buf struct buf path = BUF_INIT;
        buf_puts(&path, "/apps/");
        api_escape(&path, id);
        buf_puts(&path, "/jobs");
        cleanup_json json_t *jobs = NULL;
        if ((rc = api_get(a, path.p, &jobs, err)) < 0)
            return rc;
        json_t *live = json_array(), *job;
        bool any_up = false;
        size_t k;
        json_array_foreach(jobs, k, job)
        {
            const char *st = json_string_value(json_object_get(job, "state"));
            if (!st || !(strcmp(st, "up") == 0 || strcmp(st, "starting") == 0 ||
                         strcmp(st, "pending") == 0))
                continue;
            any_up = any_up || strcmp(st, "up") == 0;
            json_array_append_new(live,
                                  json_pack("{s:O?,s:O?,s:s}", "id", json_object_get(job, "id"),
                                            "type", json_object_get(job, "type"), "state", st));
        }
        json_array_append_new(out, json_pack("{s:s,s:s,s:b,s:o}", "name", name, "id", id, "healthy",
                                             any_up, "jobs", live));
    }
    return 0;
}

static void print_status(const json_t *st)
{
    size_t i, k;
    json_t *d, *app, *job;
    json_array_foreach(json_object_get(st, "daemons"), i, d)
    {
        if (i == 0)
            printf("state dir %s\n", json_string_value(json_object_get(d, "state_dir")));
        int pid = (int)json_integer_value(json_object_get(d, "pid"));
        bool up = json_is_true(json_object_get(d, "healthy"));
        printf("%-12s %s", json_string_value(json_object_get(d, "name")), up ? "up" : "DOWN");
        if (pid)
            printf(" (pid %d%s)", pid, up ? "" : ", not answering");
        else
            printf(" (not running)");
        printf(" %s\n", json_string_value(json_object_get(d, "url")));
    }
    const char *url = json_string_value(json_object_get(st, "controller"));
    if (json_is_true(json_object_get(st, "controller_healthy")))
        printf("%s: healthy\n", url);
    json_array_foreach(json_object_get(st, "apps"), i, app)
    {
        const char *name = json_string_value(json_object_get(app, "name"));
        bool ok = json_is_true(json_object_get(app, "healthy"));
        json_t *jobs = json_object_get(app, "jobs");
        printf("%-12s %s\n", name, ok ? "healthy" : "UNHEALTHY: no job up");
        json_array_foreach(jobs, k, job)
        {
            cleanup_buf struct buf line = BUF_INIT;
            buf_puts(&line, "  ");
            api_put_clean(&line, json_string_value(json_object_get(job, "type")) ?: "?");
            buf_putc(&line, ' ');
            api_put_clean(&line, json_string_value(json_object_get(job, "id")) ?: "?");
            buf_putc(&line, ' ');
            api_put_clean(&line, json_string_value(json_object_get(job, "state")));
            printf("  %s\n", line.p);
        }
    }
}

/* The controller's own status (public, but a key that is sent must be
 * right). Returns 0, or 1 with what is wrong in why and the next step in
 * hint (up_cmd: how to start this cluster, or NULL when no state dir of
 * this machine holds it). */
static int controller_status(const struct api *a, const char *up_cmd, struct buf *why,
                             struct buf *hint)
{
    const char *url = a->url;
    struct pier_err err = {0};
    cleanup_buf struct buf full = BUF_INIT, auth = BUF_INIT;
    buf_printf(&full, "%s/.well-known/status", url);
    httpc_basic_auth(&auth, a->key);
    const char *headers[] = {auth.p, NULL};
    struct httpc_req req = {
        .url = full.p, .name = url, .headers = headers, .timeout_ms = 10000, .ca_pem = a->ca_pem};
    struct httpc *h = httpc_new();
    struct httpc_resp resp = {0};
    int rc = httpc_do(h, &req, &resp, &err);
    httpc_free(h);
    int status = (int)resp.status;
    httpc_resp_release(&resp);
    if (rc == HTTPC_ETLS) {
        buf_puts(why, err.msg);
        api_tls_hint(a, hint);
    } else if (rc < 0) {
        buf_puts(why, err.msg);
        if (up_cmd)
            buf_printf(hint, "is the cluster up? '%s' starts it again", up_cmd);
        else
            buf_puts(hint, "is the cluster up? 'pier up' starts one on this machine");
    } else if (status == 401) {
        buf_printf(why, "%s refused the key (401)", url);
        buf_puts(hint, "check the key: 'pier cluster' shows which cluster is used");
    } else if (status != 200) {
        buf_printf(why, "%s answered %d", url, status);
    } else {
        return 0;
    }
    return 1;
}

int cli_status(struct cli *c)
{
    bool as_json = false;
    const char *state_flag = NULL;
    for (int i = 0; i < c->argc; i++) {
        if (strcmp(c->argv[i], "--json") == 0)
            as_json = true;
        else if (strcmp(c->argv[i], "--state-dir") == 0 && i + 1 < c->argc)
            state_flag = c->argv[++i];
        else
            return ui_usage("status", "status takes no arguments but --json and --state-dir DIR");
    }
    struct api a = {0};
    struct pier_err err = {0};
    if (api_open(&a, c->cluster, &err) < 0) {
        api_close(&a);
        return ui_fail(NULL, "%s", err.msg);
    }
    cleanup_json json_t *st =
        json_pack("{s:s,s:[],s:[],s:[]}", "controller", a.url, "daemons", "apps", "problems");
    json_t *problems = json_object_get(st, "problems");
    /* How to start this cluster again: plain `pier up` finds the default
     * state dir by itself, any other needs naming. */
    struct cluster_state cs = {0};
    cleanup_free char *state = local_state(&a, state_flag, &cs);
    cleanup_free char *dflt = state_dir_resolve(NULL);
    cleanup_buf struct buf up_cmd = BUF_INIT, m = BUF_INIT;
    buf_puts(&up_cmd, "pier up");
    if (state && strcmp(state, dflt) != 0)
        buf_printf(&up_cmd, " --state-dir %s", state);
    if (state) {
        json_object_set_new(st, "state_dir", json_string(state));
        if (!local_daemons(state, &cs, json_object_get(st, "daemons"))) {
            buf_printf(&m, "a daemon of the state dir %s is down: '%s' starts it", state, up_cmd.p);
            json_array_append_new(problems, json_string(m.p));
        }
    }
    cluster_state_free(&cs);
    cleanup_buf struct buf why = BUF_INIT, hint = BUF_INIT;
    int rc = controller_status(&a, state ? up_cmd.p : NULL, &why, &hint);
    json_object_set_new(st, "controller_healthy", json_boolean(rc == 0));
    if (rc)
        json_array_insert_new(problems, 0, json_string(why.p));
    size_t printed = (size_t)-1; /* a problem already printed with its hint */
    if (!rc && system_apps(&a, json_object_get(st, "apps"), &err) < 0) {
        printed = json_array_size(problems);
        json_array_append_new(problems, json_string(err.msg));
        if (!as_json)
            api_fail(&a, &err);
    }
    size_t i;
    json_t *app;
    json_array_foreach(json_object_get(st, "apps"), i, app)
    {
        if (json_is_true(json_object_get(app, "healthy")))
            continue;
        const char *name = json_string_value(json_object_get(app, "name"));
        buf_reset(&m);
        buf_printf(&m,
                   "system app %s has no job up: '%s' starts it again; 'pier -a %s log' "
                   "says why it stopped",
                   name, up_cmd.p, name);
        json_array_append_new(problems, json_string(m.p));
    }
    bool healthy = json_array_size(problems) == 0;
    json_object_set_new(st, "healthy", json_boolean(healthy));
    if (as_json) {
        cleanup_free char *text = json_dumps(st, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        printf("%s\n", text);
    } else {
        /* The daemons first, then what the controller says, then what is
         * wrong, the controller's failure (with its hint) first. */
        print_status(st);
        fflush(stdout);
        json_t *p;
        json_array_foreach(problems, i, p)
        {
            if (i == 0 && rc)
                ui_fail(hint.len ? hint.p : NULL, "%s", json_string_value(p));
            else if (i != printed)
                ui_fail(NULL, "%s", json_string_value(p));
        }
    }
    api_close(&a);
    return healthy ? 0 : 1;
}
