/* artifacts: what a release runs (Flynn's /artifacts). Immutable: created
 * once, with the id the client chose or a server-made one, read many
 * times, never changed. */
#include <stdio.h>
#include <string.h>

#include "controller/check.h"
#include "controller/ctl.h"
#include "lib/buf.h"
#include "lib/cleanup.h"
#include "lib/jsonx.h"
#include "lib/keys.h"
#include "lib/uuid.h"

static const char *const artifact_fields[] = {
    "id",         "type", "uri", "meta", "manifest", "hashes", "size", "layer_url_template",
    "created_at", NULL,
};

static bool type_ok(const char *t)
{
    return strcmp(t, "file") == 0 || strcmp(t, "flynn") == 0 || strcmp(t, "docker") == 0;
}

/* A flynn artifact's uri: anything for Flynn's images (pier pulls none),
 * but in pier's own scheme only pier:host, the host's binds as the stack
 * (jobbuild.h). */
static int check_flynn_uri(const char *uri, struct pier_err *err)
{
    if (strncmp(uri, "pier:", 5) == 0 && strcmp(uri, JOBBUILD_HOST_STACK_URI) != 0)
        return err_set(err, PIER_EINVAL,
                       "uri: %.64s is not a pier stack (" JOBBUILD_HOST_STACK_URI
                       " for the host's binds, or file:///DIR for a stack directory)",
                       uri);
    return 0;
}

/* A file artifact's uri: in pier's own scheme only pier:pierd, the pierd
 * installed on the job's host (jobbuild.h). */
static int check_file_uri(const char *uri, struct pier_err *err)
{
    if (strncmp(uri, "pier:", 5) == 0 && strcmp(uri, JOBBUILD_PIERD_URI) != 0)
        return err_set(err, PIER_EINVAL,
                       "uri: %.64s is not a pier file (" JOBBUILD_PIERD_URI
                       " for the host's pierd, or a URL of a slug)",
                       uri);
    return 0;
}

/* The id: a UUID the client chose (Flynn lets it, so a bootstrap can name
 * what it creates before the controller runs), else a new one; anything
 * else in "id" is ignored, as a read-only field a client echoes back. */
static void artifact_id(const json_t *body, char id[UUID_LEN])
{
    const char *given = json_string_value(json_object_get(body, "id"));
    if (given && uuid_ok(given))
        snprintf(id, UUID_LEN, "%s", given);
    else
        uuid_new(id);
}

/* Checks a creation body and builds the record from it (a new reference in
 * *out). */
static int artifact_from(const json_t *body, json_t **out, struct pier_err *err)
{
    const char *type = NULL, *uri = NULL, *tmpl = NULL;
    int rc = jsonx_get_str(body, "type", &type, err);
    if (rc == 0 || (type && !type_ok(type)))
        return err_set(err, PIER_EINVAL, "type must be one of file, flynn, docker");
    if (rc < 0)
        return rc;
    rc = jsonx_get_str(body, "uri", &uri, err);
    if (rc < 0)
        return rc;
    if (!uri || !*uri)
        return err_set(err, PIER_EINVAL, "uri is required");
    if (strcmp(type, "flynn") == 0 && (rc = check_flynn_uri(uri, err)) < 0)
        return rc;
    if (strcmp(type, "file") == 0 && (rc = check_file_uri(uri, err)) < 0)
        return rc;
    json_t *meta = json_object_get(body, "meta");
    if ((rc = check_strmap(meta, "meta", err)) < 0)
        return rc;
    json_t *manifest = NULL, *hashes = NULL;
    if ((rc = jsonx_get_obj(body, "manifest", &manifest, err)) < 0 ||
        (rc = jsonx_get_obj(body, "hashes", &hashes, err)) < 0 ||
        (rc = jsonx_get_str(body, "layer_url_template", &tmpl, err)) < 0)
        return rc;
    json_t *size = json_object_get(body, "size");
    if (size && !json_is_null(size) && (!json_is_integer(size) || json_integer_value(size) < 0))
        return err_set(err, PIER_EINVAL, "size must be a whole number of bytes");

    char id[UUID_LEN];
    artifact_id(body, id);
    json_t *a = json_pack("{s:s,s:s,s:s}", "id", id, "type", type, "uri", uri);
    json_object_set_new(a, "meta",
                        meta && !json_is_null(meta) ? json_deep_copy(meta) : json_object());
    if (manifest)
        json_object_set_new(a, "manifest", json_deep_copy(manifest));
    if (hashes)
        json_object_set_new(a, "hashes", json_deep_copy(hashes));
    if (size && json_is_integer(size))
        json_object_set(a, "size", size);
    if (tmpl && *tmpl)
        json_object_set_new(a, "layer_url_template", json_string(tmpl));
    ctl_set_now(a, "created_at");
    *out = a;
    return 0;
}

static void artifact_create(struct httpd_req *r, void *ud)
{
    struct ctl *c = ud;
    cleanup_json json_t *body = NULL;
    if (httpd_body_json(r, &body) < 0)
        return;
    struct pier_err err = {0};
    cleanup_json json_t *a = NULL;
    int rc = artifact_from(body, &a, &err);
    if (rc < 0) {
        ctl_reply_err(r, PIER_EINVAL, &err);
        return;
    }
    cleanup_buf struct buf key = BUF_INIT;
    buf_printf(&key, "%s%s", KEYS_ARTIFACTS, json_string_value(json_object_get(a, "id")));
    rc = ctl_put(c, key.p, a, 0, &err);
    if (rc == PIER_EEXISTS)
        err_set(&err, rc, "artifact %s already exists",
                json_string_value(json_object_get(a, "id")));
    if (rc < 0) {
        ctl_reply_err(r, rc, &err);
        return;
    }
    httpd_reply_json(r, 200, json_incref(a));
}

static void artifact_list(struct httpd_req *r, void *ud)
{
    ctl_reply_list(r, ud, KEYS_ARTIFACTS, artifact_fields);
}

static void artifact_get(struct httpd_req *r, void *ud)
{
    struct ctl *c = ud;
    struct pier_err err = {0};
    const char *id = httpd_param(r, "id");
    if (!uuid_ok(id)) {
        httpd_reply_not_found(r);
        return;
    }
    cleanup_buf struct buf key = BUF_INIT;
    buf_printf(&key, "%s%s", KEYS_ARTIFACTS, id);
    json_t *a = NULL;
    int rc = ctl_get(c, key.p, &a, NULL, &err);
    if (rc < 0) {
        ctl_reply_err(r, rc, &err);
        return;
    }
    ctl_keep_fields(a, artifact_fields);
    httpd_reply_json(r, 200, a);
}

void ctl_artifacts_routes(struct httpd *h, struct ctl *c)
{
    httpd_route(h, "POST", "/artifacts", artifact_create, c, false);
    httpd_route(h, "GET", "/artifacts", artifact_list, c, false);
    httpd_route(h, "GET", "/artifacts/:id", artifact_get, c, false);
}
