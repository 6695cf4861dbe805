/* records: a system app's records, made through its controller's API
 * (docs/controller.md) with the ids the plan chose, each only when the
 * controller does not have it yet, so a rerun (or a run after one that
 * stopped midway) makes exactly what is missing. */
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "bootstrap/bootstrap_int.h"
#include "lib/cleanup.h"
#include "lib/clock.h"
#include "lib/jsonx.h"

#define CALL_TIMEOUT_MS 15000

int bs_call(struct bs *b, const char *method, const char *url, const char *peer, const json_t *body,
            long timeout_ms, long *status, json_t **out, struct pier_err *err)
{
    if (out)
        *out = NULL;
    cleanup_buf struct buf text = BUF_INIT;
    if (body)
        jsonx_dump(&text, body);
    const char *headers[3] = {NULL, NULL, NULL};
    size_t nh = 0;
    if (b->auth.len)
        headers[nh++] = b->auth.p;
    if (body)
        headers[nh++] = "Content-Type: application/json";
    struct httpc_req req = {
        .method = method,
        .url = url,
        .name = peer,
        .headers = headers,
        .body = text.p,
        .body_len = text.len,
        .timeout_ms = timeout_ms > 0 ? timeout_ms : CALL_TIMEOUT_MS,
        .connect_timeout_ms = 1000,
    };
    struct httpc_resp resp = {0};
    int rc = httpc_do(b->h, &req, &resp, err);
    if (rc < 0)
        return rc;
    *status = resp.status;
    if (out && resp.body.len)
        jsonx_parse(resp.body.p, resp.body.len, out, NULL);
    httpc_resp_release(&resp);
    return 0;
}

/* A failed call as an error: the status and the message the peer gave. */
static int call_failed(struct pier_err *err, const char *what, long status, const json_t *ans)
{
    const char *msg = bs_str(ans, "message");
    return err_set(err, status == 404 ? PIER_ENOTFOUND : PIER_EINVAL, "%s: %ld%s%s", what, status,
                   msg ? " " : "", msg ? msg : "");
}

/* method path on the controller, expecting 200 (or, with ok404, 404,
 * which *found then says). *out (may be NULL) gets the answer. */
static int ctl(struct bs *b, const char *method, const char *path, const json_t *body, bool *found,
               json_t **out, struct pier_err *err)
{
    cleanup_buf struct buf url = BUF_INIT;
    buf_printf(&url, "%s%s", b->controller_url, path);
    long status = 0;
    cleanup_json json_t *ans = NULL;
    int rc = bs_call(b, method, url.p, "the controller", body, 0, &status, &ans, err);
    if (rc < 0)
        return err_wrap(err, rc, "%s %s", method, path);
    if (found)
        *found = status == 200;
    if (status == 200 || (found && status == 404)) {
        if (out)
            *out = steal_pointer(&ans);
        return 0;
    }
    char what[300];
    snprintf(what, sizeof(what), "%s %s", method, path);
    return call_failed(err, what, status, ans);
}

int records_controller_ready(struct bs *b, struct pier_err *err)
{
    cleanup_buf struct buf url = BUF_INIT;
    buf_printf(&url, "%s/.well-known/status", b->controller_url);
    int64_t deadline = clock_now_ms() + b->timeout_ms;
    for (;;) {
        long status = 0;
        int rc = bs_call(b, "GET", url.p, "the controller", NULL, 2000, &status, NULL, err);
        if (rc == 0 && status == 200)
            return 0;
        if (clock_now_ms() >= deadline) {
            if (rc == 0)
                err_set(err, PIER_ETIMEOUT, "the controller at %s answers %ld", b->controller_url,
                        status);
            return err_wrap(err, PIER_ETIMEOUT, "the controller did not answer in %lld s",
                            (long long)(b->timeout_ms / 1000));
        }
        usleep(100 * 1000);
    }
}

/* GET path; when it is 404, POST (or PUT) body to create_path. */
static int ensure_one(struct bs *b, const char *path, const char *method, const char *create_path,
                      const json_t *body, bool *created, struct pier_err *err)
{
    bool found = false;
    int rc = ctl(b, "GET", path, NULL, &found, NULL, err);
    if (rc < 0 || found)
        return rc;
    rc = ctl(b, method, create_path, body, NULL, NULL, err);
    if (rc == 0)
        *created = true;
    return rc;
}

/* ---- routes ---- */

/* A route's path as the controller stores it: "/" by default, ending in
 * "/". */
static void route_path(const json_t *r, char *out, size_t n)
{
    const char *p = bs_str(r, "path");
    if (!p || !*p)
        p = "/";
    size_t l = strlen(p);
    snprintf(out, n, "%s%s", p, p[l - 1] == '/' ? "" : "/");
}

/* Whether routes a and b hold the same place: the same type and domain
 * and path (http) or port (tcp). */
static bool same_place(const json_t *a, const json_t *b)
{
    const char *ta = bs_str(a, "type"), *tb = bs_str(b, "type");
    if (!ta || !tb || strcmp(ta, tb) != 0)
        return false;
    if (strcmp(ta, "tcp") == 0)
        return json_integer_value(json_object_get(a, "port")) ==
               json_integer_value(json_object_get(b, "port"));
    const char *da = bs_str(a, "domain"), *db = bs_str(b, "domain");
    char pa[512], pb[512];
    route_path(a, pa, sizeof(pa));
    route_path(b, pb, sizeof(pb));
    return da && db && strcasecmp(da, db) == 0 && strcmp(pa, pb) == 0;
}

static bool same_service(const json_t *a, const json_t *b)
{
    const char *sa = bs_str(a, "service"), *sb = bs_str(b, "service");
    return sa && sb && strcmp(sa, sb) == 0;
}

/* The route the controller made with the app (`<name>.<domain>` to
 * `<name>-web`). */
static bool is_default(const json_t *r, const char *name)
{
    const char *type = bs_str(r, "type"), *svc = bs_str(r, "service"), *dom = bs_str(r, "domain");
    size_t n = strlen(name);
    char web[160];
    snprintf(web, sizeof(web), "%s-web", name);
    return type && strcmp(type, "http") == 0 && svc && strcmp(svc, web) == 0 && dom &&
           strncasecmp(dom, name, n) == 0 && dom[n] == '.';
}

static int ensure_routes(struct bs *b, const struct sysapp *a, bool *created, struct pier_err *err)
{
    const char *id = bs_str(a->app, "id");
    const json_t *want = json_object_get(a->m, "routes");
    cleanup_buf struct buf base = BUF_INIT;
    buf_printf(&base, "/apps/%s/routes", id);
    cleanup_json json_t *have = NULL;
    int rc = ctl(b, "GET", base.p, NULL, NULL, &have, err);
    if (rc < 0)
        return rc;
    size_t i, j;
    json_t *r, *w;
    bool deleted = false;
    json_array_foreach(have, i, r)
    {
        bool wanted = false;
        json_array_foreach(want, j, w)
        {
            wanted = wanted || (same_place(r, w) && same_service(r, w));
        }
        if (wanted || !is_default(r, a->name))
            continue;
        cleanup_buf struct buf path = BUF_INIT;
        buf_printf(&path, "%s/%s/%s", base.p, bs_str(r, "type"), bs_str(r, "id"));
        if ((rc = ctl(b, "DELETE", path.p, NULL, NULL, NULL, err)) < 0)
            return rc;
        *created = deleted = true;
    }
    if (deleted) {
        /* What is left after the deletes. */
        json_decref(steal_pointer(&have));
        if ((rc = ctl(b, "GET", base.p, NULL, NULL, &have, err)) < 0)
            return rc;
    }
    json_array_foreach(want, j, w)
    {
        const json_t *there = NULL;
        json_array_foreach(have, i, r)
        {
            if (!there && same_place(r, w))
                there = r;
        }
        if (there && same_service(there, w))
            continue;
        if (there) {
            /* Ours, pointing elsewhere: the service is put back. */
            cleanup_json json_t *fix = json_deep_copy(there);
            json_object_set(fix, "service", json_object_get(w, "service"));
            cleanup_buf struct buf path = BUF_INIT;
            buf_printf(&path, "%s/%s/%s", base.p, bs_str(there, "type"), bs_str(there, "id"));
            rc = ctl(b, "PUT", path.p, fix, NULL, NULL, err);
        } else {
            rc = ctl(b, "POST", base.p, w, NULL, NULL, err);
        }
        if (rc < 0)
            return rc;
        *created = true;
    }
    return 0;
}

/* ---- the records ---- */

static json_t *app_body(const json_t *app)
{
    json_t *body = json_object();
    static const char *const fields[] = {"id", "name", "meta", "protected"};
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++)
        json_object_set(body, fields[i], json_object_get(app, fields[i]));
    return body;
}

static json_t *release_body(const json_t *rel)
{
    json_t *body = json_object();
    static const char *const fields[] = {"id", "app_id", "artifacts", "env", "meta", "processes"};
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++)
        if (json_object_get(rel, fields[i]))
            json_object_set(body, fields[i], json_object_get(rel, fields[i]));
    return body;
}

static int ensure_app_release(struct bs *b, const struct sysapp *a, bool *created,
                              struct pier_err *err)
{
    const char *id = bs_str(a->app, "id"), *rid = bs_str(a->release, "id");
    cleanup_buf struct buf path = BUF_INIT;
    buf_printf(&path, "/apps/%s/release", id);
    bool found = false;
    int rc = ctl(b, "GET", path.p, NULL, &found, NULL, err);
    if (rc < 0 || found)
        return rc;
    cleanup_json json_t *body = json_pack("{s:s}", "id", rid);
    rc = ctl(b, "PUT", path.p, body, NULL, NULL, err);
    if (rc == 0)
        *created = true;
    return rc;
}

int records_tags(struct bs *b, const struct sysapp *a, bool *updated, struct pier_err *err)
{
    *updated = false;
    const json_t *want = json_object_get(a->m, "tags");
    if (!want)
        return 0; /* not the manifest's to say */
    cleanup_buf struct buf path = BUF_INIT;
    buf_printf(&path, "/apps/%s/formations/%s", bs_str(a->app, "id"), bs_str(a->release, "id"));
    bool found = false;
    cleanup_json json_t *f = NULL;
    int rc = ctl(b, "GET", path.p, NULL, &found, &f, err);
    if (rc < 0 || !found)
        return rc;
    const json_t *have = json_object_get(f, "tags");
    cleanup_json json_t *none = json_object();
    if (json_equal(json_is_object(have) ? have : none, want))
        return 0;
    /* The counts as they are: a user may have scaled it. */
    cleanup_json json_t *body =
        json_pack("{s:O,s:O}", "processes", json_object_get(f, "processes"), "tags", want);
    if ((rc = ctl(b, "PUT", path.p, body, NULL, NULL, err)) < 0)
        return rc;
    *updated = true;
    return 0;
}

int records_ensure(struct bs *b, struct sysapp *a, bool *created, struct pier_err *err)
{
    *created = false;
    const char *id = bs_str(a->app, "id"), *rid = bs_str(a->release, "id");
    cleanup_buf struct buf path = BUF_INIT;
    buf_printf(&path, "/apps/%s", id);
    cleanup_json json_t *body = app_body(a->app);
    int rc = ensure_one(b, path.p, "POST", "/apps", body, created, err);
    size_t i;
    json_t *art;
    json_array_foreach(a->artifacts, i, art)
    {
        if (rc < 0)
            break;
        buf_reset(&path);
        buf_printf(&path, "/artifacts/%s", bs_str(art, "id"));
        cleanup_json json_t *ab = json_deep_copy(art);
        json_object_del(ab, "created_at");
        rc = ensure_one(b, path.p, "POST", "/artifacts", ab, created, err);
    }
    if (rc == 0) {
        buf_reset(&path);
        buf_printf(&path, "/releases/%s", rid);
        cleanup_json json_t *rb = release_body(a->release);
        rc = ensure_one(b, path.p, "POST", "/releases", rb, created, err);
    }
    if (rc == 0)
        rc = ensure_app_release(b, a, created, err);
    if (rc == 0) {
        buf_reset(&path);
        buf_printf(&path, "/apps/%s/formations/%s", id, rid);
        cleanup_json json_t *fb = json_pack("{s:O}", "processes", a->processes);
        if (json_object_get(a->m, "tags"))
            json_object_set(fb, "tags", json_object_get(a->m, "tags"));
        rc = ensure_one(b, path.p, "PUT", path.p, fb, created, err);
    }
    bool retagged = false;
    if (rc == 0)
        rc = records_tags(b, a, &retagged, err);
    *created = *created || retagged;
    if (rc == 0)
        rc = ensure_routes(b, a, created, err);
    if (rc < 0)
        return err_wrap(err, rc, "its records in the controller");
    return 0;
}
