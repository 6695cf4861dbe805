/* records: apps, releases, artifacts, formations and scale requests as
 * jansson objects keyed by id, with their mod revisions beside them. */
#include "scheduler/records.h"

#include <stdlib.h>
#include <string.h>

#include "lib/buf.h"
#include "lib/jsonx.h"
#include "lib/keys.h"
#include "lib/log.h"

static const char *const prefixes[RECORDS_KINDS] = {
    [RECORDS_APPS] = KEYS_APPS,
    [RECORDS_RELEASES] = KEYS_RELEASES,
    [RECORDS_ARTIFACTS] = KEYS_ARTIFACTS,
    [RECORDS_FORMATIONS] = KEYS_FORMATIONS,
    [RECORDS_SCALE_REQUESTS] = KEYS_SCALE_REQUESTS,
};

struct records {
    json_t *recs[RECORDS_KINDS]; /* id -> record */
    json_t *revs[RECORDS_KINDS]; /* id -> mod revision */
};

static int64_t rev_of(const struct records *r, enum records_kind k, const char *id)
{
    json_t *v = json_object_get(r->revs[k], id); /* borrowed */
    return v ? (int64_t)json_integer_value(v) : 0;
}

void records_put(struct records *r, enum records_kind k, const char *id, json_t *rec,
                 int64_t mod_revision)
{
    if (mod_revision < rev_of(r, k, id)) {
        json_decref(rec);
        return;
    }
    json_object_set_new(r->recs[k], id, rec);
    json_object_set_new(r->revs[k], id, json_integer((json_int_t)mod_revision));
}

static void apply_kv(struct records *r, const struct store_kv *kv, bool deleted)
{
    for (int k = 0; k < RECORDS_KINDS; k++) {
        size_t pl = strlen(prefixes[k]);
        if (strncmp(kv->key, prefixes[k], pl) != 0 || !kv->key[pl])
            continue;
        const char *id = kv->key + pl;
        if (deleted) {
            if (kv->mod_revision >= rev_of(r, k, id)) {
                json_object_del(r->recs[k], id);
                json_object_del(r->revs[k], id);
            }
            return;
        }
        json_t *rec = NULL;
        if (jsonx_parse_object(kv->value, kv->value_len, &rec, NULL) < 0) {
            log_warn("scheduler", "record is not a JSON object; ignored", "key=%s", kv->key);
            return;
        }
        records_put(r, (enum records_kind)k, id, rec, kv->mod_revision);
        return;
    }
}

void records_apply(struct records *r, const struct store_events *ev)
{
    for (size_t i = 0; i < ev->n; i++)
        apply_kv(r, &ev->ev[i].kv, ev->ev[i].type == STORE_EVENT_DELETE);
}

int records_load(struct store *s, int64_t revision, struct records **out, struct pier_err *err)
{
    struct records *r = xcalloc(1, sizeof(*r));
    for (int k = 0; k < RECORDS_KINDS; k++) {
        r->recs[k] = json_object();
        r->revs[k] = json_object();
    }
    for (int k = 0; k < RECORDS_KINDS; k++) {
        char *after = NULL;
        for (;;) {
            struct store_list_opts lo = {.limit = 500, .revision = revision, .after = after};
            struct store_range *rg = NULL;
            int rc = store_list(s, prefixes[k], &lo, &rg, err);
            if (rc < 0) {
                free(after);
                records_free(r);
                return rc;
            }
            for (size_t i = 0; i < rg->n; i++)
                apply_kv(r, &rg->kvs[i], false);
            bool more = rg->more && rg->n > 0;
            free(after);
            after = more ? xstrdup(rg->kvs[rg->n - 1].key) : NULL;
            store_range_free(rg);
            if (!more)
                break;
        }
    }
    *out = r;
    return 0;
}

void records_free(struct records *r)
{
    if (!r)
        return;
    for (int k = 0; k < RECORDS_KINDS; k++) {
        json_decref(r->recs[k]);
        json_decref(r->revs[k]);
    }
    free(r);
}

const json_t *records_get(const struct records *r, enum records_kind k, const char *id,
                          int64_t *mod_revision)
{
    const json_t *rec = json_object_get(r->recs[k], id);
    if (mod_revision)
        *mod_revision = rec ? rev_of(r, k, id) : 0;
    return rec;
}

const json_t *records_all(const struct records *r, enum records_kind k)
{
    return r->recs[k];
}
