/* cluster: GET /cluster, a pier extension beside Flynn's API
 * (docs/controller.md): what a joining host or a client needs to reach
 * the cluster: the store endpoints this controller uses, the domain and
 * the cluster CA, the last two from the record the bootstrap writes at
 * KEYS_CLUSTER. Authenticated with the cluster key like the rest. */
#include <jansson.h>

#include "controller/ctl.h"
#include "lib/keys.h"

static void cluster_get(struct httpd_req *r, void *ud)
{
    struct ctl *c = ud;
    struct pier_err err = {0};
    json_t *rec = NULL;
    int rc = ctl_get(c, KEYS_CLUSTER, &rec, NULL, &err);
    if (rc < 0 && rc != PIER_ENOTFOUND) {
        ctl_reply_err(r, rc, &err);
        return;
    }
    json_t *out = json_object();
    json_object_set_new(out, "store", json_string(c->store_url ? c->store_url : ""));
    const char *domain = json_string_value(json_object_get(rec, "domain"));
    if (!domain)
        domain = c->domain;
    if (domain)
        json_object_set_new(out, "domain", json_string(domain));
    const char *ca = json_string_value(json_object_get(rec, "ca_cert"));
    if (ca)
        json_object_set_new(out, "ca_cert", json_string(ca));
    json_decref(rec);
    httpd_reply_json(r, 200, out);
}

void ctl_cluster_routes(struct httpd *h, struct ctl *c)
{
    httpd_route(h, "GET", "/cluster", cluster_get, c, false);
}
