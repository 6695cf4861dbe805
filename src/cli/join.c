/* join: `pier up --join URL --key KEY`, one more host for a running
 * cluster. The controller at URL says where the cluster's store is
 * (GET /cluster); this state dir then runs only `pierd host` against that
 * store: no store of its own, no bootstrap (the scheduler places jobs on
 * the new host as on any other). STATE/cluster.json records the URL joined
 * and the store, STATE/key the cluster key, so `pier up` again (with or
 * without --join) finds the host agent running or starts it, and
 * `pier down` stops it and its jobs. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/daemons.h"
#include "cli/ui.h"
#include "cli/up.h"
#include "lib/buf.h"
#include "lib/cleanup.h"
#include "lib/fs.h"
#include "lib/httpc.h"
#include "lib/jsonx.h"

#define CA_HINT "give the cluster's CA with --ca FILE (STATE/ca/ca.crt on its first host)"

/* GET URL/cluster with the key (verified against the CA file ca when
 * given, else the system's CAs): {"store","domain","ca_cert"?} in *out. */
static int fetch_cluster(const char *url, const char *key, const char *ca, json_t **out)
{
    cleanup_buf struct buf full = BUF_INIT, auth = BUF_INIT, pem = BUF_INIT;
    if (ca) {
        cleanup_close int fd = open(ca, O_RDONLY | O_CLOEXEC);
        int rc = fd < 0 ? -errno : fs_read_fd(fd, &pem, 1 << 20);
        if (rc < 0)
            return ui_fail(NULL, "--ca %s: %s", ca, strerror(-rc));
        buf_putc(&pem, '\0');
    }
    buf_printf(&full, "%s/cluster", url);
    httpc_basic_auth(&auth, key);
    const char *headers[] = {auth.p, "Accept: application/json", NULL};
    struct httpc_req req = {.url = full.p,
                            .name = url,
                            .headers = headers,
                            .connect_timeout_ms = 5000,
                            .timeout_ms = 15000,
                            .max_body = 1 << 20,
                            .ca_pem = ca ? pem.p : NULL};
    struct httpc *h = httpc_new();
    struct httpc_resp resp = {0};
    struct pier_err err = {0};
    int rc = httpc_do(h, &req, &resp, &err);
    httpc_free(h);
    long status = resp.status;
    cleanup_buf struct buf body = resp.body;
    resp.body = (struct buf)BUF_INIT;
    httpc_resp_release(&resp);
    buf_putc(&body, '\0');
    body.len--;
    if (rc < 0)
        return ui_fail(rc == HTTPC_ETLS ? CA_HINT
                                        : "is the URL the cluster's controller (https://"
                                          "controller.DOMAIN[:PORT]), and does this machine "
                                          "reach it?",
                       "cannot reach the controller at %s: %s", url, err.msg);
    if (status == 401)
        return ui_fail("the key is the cluster key: STATE/key on the cluster's first host",
                       "the controller at %s refused the key (401): the key is wrong", url);
    if (status == 404)
        return ui_fail("join a cluster whose controller is of this pier's version",
                       "%s answered 404: not a pier controller that knows GET /cluster", full.p);
    if (status != 200)
        return ui_fail(NULL, "%s answered %ld: %.300s", full.p, status, body.p);
    if (jsonx_parse_object(body.p, body.len, out, &err) < 0)
        return ui_fail(NULL, "%s: %s", full.p, err.msg);
    const char *store = json_string_value(json_object_get(*out, "store"));
    const char *domain = json_string_value(json_object_get(*out, "domain"));
    if (!store || !*store || !domain || !*domain)
        return ui_fail(NULL, "%s answered no store or domain: %.300s", full.p, body.p);
    return 0;
}

/* Writes the key to STATE/key (0600). */
static int save_key(const struct up *u, const char *key)
{
    cleanup_buf struct buf path = BUF_INIT, text = BUF_INIT;
    buf_printf(&path, "%s/key", u->state);
    buf_printf(&text, "%s\n", key);
    struct pier_err err = {0};
    if (fs_write_atomic(path.p, text.p, text.len, 0600, true, &err) < 0)
        return ui_fail(NULL, "%s", err.msg);
    return 0;
}

/* Refuses flags that disagree with the host recorded in the state dir. */
static int check_flags(const struct up *u, const struct up_flags *f, const struct cluster_state *w)
{
    const struct cluster_state *c = &u->cs;
    const char *what = NULL;
    if (f->port_base &&
        (w->host != c->host || w->jobs_lo != c->jobs_lo || w->jobs_hi != c->jobs_hi))
        what = "--port-base";
    else if (f->listen_ip && strcmp(w->listen_ip, c->listen_ip) != 0)
        what = "--listen-ip";
    else if (f->stack && (!c->stack || strcmp(w->stack, c->stack) != 0))
        what = "--stack";
    if (!what)
        return 0;
    return ui_fail("drop the flag to use the host as it is, or 'pier down' and remove the state "
                   "dir to join anew",
                   "%s: the host in %s was joined otherwise (%s/cluster.json)", what, u->state,
                   u->state);
}

/* The joined host's cluster.json, made from the controller's answer or
 * updated with it. */
static int record_join(struct up *u, const struct up_flags *f, bool have, const char *url)
{
    cleanup_json json_t *cl = NULL;
    int rc = fetch_cluster(url, f->key, f->ca, &cl);
    if (rc)
        return rc;
    const char *store = json_string_value(json_object_get(cl, "store"));
    const char *domain = json_string_value(json_object_get(cl, "domain"));
    struct cluster_state want;
    if ((rc = up_cluster_from_flags(f, &want))) {
        cluster_state_free(&want);
        return rc;
    }
    if (have) {
        rc = check_flags(u, f, &want);
        cluster_state_free(&want);
        if (rc)
            return rc;
    } else {
        u->cs = want;
        u->cs.joined = xstrdup(url);
    }
    struct cluster_state *cs = &u->cs;
    free(cs->store_urls);
    cs->store_urls = xstrdup(store);
    free(cs->domain);
    cs->domain = xstrdup(domain);
    printf("joined the cluster of %s: domain %s, store %s\n", url, domain, store);
    snprintf(u->key, sizeof(u->key), "%s", f->key);
    struct pier_err err = {0};
    if ((rc = save_key(u, f->key)))
        return rc;
    if (cluster_state_save(u->state, cs, &err) < 0)
        return ui_fail(NULL, "%s", err.msg);
    return 0;
}

int up_join(struct up *u, const struct up_flags *f, bool have)
{
    struct cluster_state *cs = &u->cs;
    if (have && !cs->joined)
        return ui_fail("give the joining host a state dir of its own: --state-dir DIR",
                       "%s holds the first host of the cluster \"%s\", not a joined one", u->state,
                       cs->name);
    cleanup_free char *url = xstrdup(f->join ? f->join : cs->joined);
    for (size_t n = strlen(url); n > 0 && url[n - 1] == '/'; n--)
        url[n - 1] = '\0';
    if (have && strcmp(url, cs->joined) != 0)
        return ui_fail("'pier down' and remove the state dir to join another cluster, or use "
                       "another --state-dir",
                       "%s joined %s, not %s", u->state, cs->joined, url);
    int rc;
    if (f->join) {
        if ((rc = record_join(u, f, have, url)))
            return rc;
    } else {
        struct cluster_state want;
        rc = up_cluster_from_flags(f, &want);
        if (!rc)
            rc = check_flags(u, f, &want);
        cluster_state_free(&want);
        if (rc)
            return rc;
        cleanup_buf struct buf path = BUF_INIT;
        buf_printf(&path, "%s/key", u->state);
        if ((rc = up_read_key(u, path.p)) != 0)
            return rc < 0 ? 1
                          : ui_fail("'pier up --join URL --key KEY' writes it", "%s is missing",
                                    path.p);
    }
    buf_puts(&u->store_url, cs->store_urls);
    snprintf(u->host_url, sizeof(u->host_url), "http://%s:%d", cs->listen_ip, cs->host);
    buf_printf(&u->host_dir, "%s/host", u->state);
    cleanup_buf struct buf keyvar = BUF_INIT;
    cleanup_free char **env = up_env_with_key(u->key, &keyvar);
    bool all_running = true;
    if ((rc = up_start_host(u, env, &all_running)) || (rc = up_record_host_id(u)))
        return rc;
    if (all_running)
        printf("found the host agent running in %s\n", u->state);
    printf("\nthis machine is a host of the cluster of %s, state in %s\n", url, u->state);
    printf("  store       %s   (the cluster's; not started here)\n", cs->store_urls);
    printf("  host        %s   (host agent %s; 'pier host list' shows it)\n", u->host_url,
           cs->host_id ? cs->host_id : "?");
    printf("  jobs        ports %d-%d; stop with 'pier down --state-dir %s'\n", cs->jobs_lo,
           cs->jobs_hi, u->state);
    return 0;
}
