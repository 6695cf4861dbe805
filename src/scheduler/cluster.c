/* cluster: the view the schedulers decide from, and their writes.
 *
 * The view holds three kinds of records from the store: host records (with
 * their create revision: a host that comes back under a new lease is a new
 * incarnation), the placement ledgers (only their mod revision matters)
 * and job records. Jobs and hosts are arrays of pointers with a jansson
 * object as the id index (a hash table), so finding, adding and removing
 * one is O(1) and every pass over the jobs is O(jobs).
 *
 * Placement (cluster_place) is where the safety lies; see cluster.h for
 * the compares. Within one call the memory and the spread counts of the
 * hosts are kept up to date as jobs are tentatively placed, so a batch of
 * 1000 wants is decided in one go, then committed by placecommit.h: each
 * host's jobs in a chain of transactions, the hosts' chains concurrently. */
#include "scheduler/cluster.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/buf.h"
#include "lib/cleanup.h"
#include "lib/clock.h"
#include "lib/jsonx.h"
#include "lib/keys.h"
#include "lib/log.h"
#include "lib/uuid.h"
#include "scheduler/jobbuild.h"
#include "scheduler/placecommit.h"
#include "scheduler/placement.h"

/* etcd refuses more than 128 operations (--max-txn-ops) per branch and
 * 1.5 MiB per request: stay well under both. */
#define TXN_MAX_OPS 100
#define TXN_MAX_BYTES (512 * 1024)
/* How long cluster_place_once keeps retrying a lost race. */
#define PLACE_ONCE_MS 5000

struct cluster {
    int64_t revision;
    struct cluster_host **hosts;
    size_t n_hosts, cap_hosts;
    json_t *host_index; /* id -> index in hosts */
    json_t *gone;       /* ids of hosts whose record the view saw deleted */
    json_t *ledgers;    /* host id -> mod revision of its ledger */
    struct cluster_job **jobs;
    size_t n_jobs, cap_jobs;
    json_t *job_index; /* id -> index in jobs */
};

/* ---- the arrays ---- */

static void host_free(struct cluster_host *h)
{
    if (!h)
        return;
    free((char *)h->id);
    json_decref((json_t *)h->rec);
    free(h);
}

static void job_free(struct cluster_job *j)
{
    if (!j)
        return;
    free((char *)j->id);
    free((char *)j->host_id);
    json_decref((json_t *)j->rec);
    free(j);
}

static ssize_t index_get(const json_t *index, const char *id)
{
    json_t *v = json_object_get(index, id); /* borrowed */
    return v ? (ssize_t)json_integer_value(v) : -1;
}

static void host_put(struct cluster *c, const char *id, json_t *rec, int64_t create_rev)
{
    ssize_t i = index_get(c->host_index, id);
    if (i >= 0) {
        struct cluster_host *h = c->hosts[i];
        json_decref((json_t *)h->rec);
        h->rec = rec;
        h->create_revision = create_rev;
        return;
    }
    if (c->n_hosts == c->cap_hosts) {
        c->cap_hosts = c->cap_hosts ? 2 * c->cap_hosts : 16;
        c->hosts = xrealloc(c->hosts, c->cap_hosts * sizeof(*c->hosts));
    }
    struct cluster_host *h = xcalloc(1, sizeof(*h));
    h->id = xstrdup(id);
    h->rec = rec;
    h->create_revision = create_rev;
    json_object_set_new(c->host_index, id, json_integer((json_int_t)c->n_hosts));
    c->hosts[c->n_hosts++] = h;
    json_object_del(c->gone, id);
}

static void host_remove(struct cluster *c, const char *id)
{
    ssize_t i = index_get(c->host_index, id);
    if (i < 0)
        return;
    host_free(c->hosts[i]);
    json_object_del(c->host_index, id);
    c->hosts[i] = c->hosts[--c->n_hosts];
    if ((size_t)i < c->n_hosts)
        json_object_set_new(c->host_index, c->hosts[i]->id, json_integer((json_int_t)i));
    json_object_set_new(c->gone, id, json_true());
}

/* The host part of a job: its host_id field, else what precedes the first '-'. */
static char *job_host(const char *id, const json_t *rec)
{
    const char *h = json_string_value(json_object_get(rec, "host_id"));
    if (h)
        return xstrdup(h);
    const char *dash = strchr(id, '-');
    return dash ? str_dup((struct str){id, (size_t)(dash - id)}) : xstrdup("");
}

/* Adds or replaces a job (steals rec); ignores what is older than the view's. */
static void job_put(struct cluster *c, const char *id, json_t *rec, int64_t mod_rev)
{
    ssize_t i = index_get(c->job_index, id);
    if (i >= 0) {
        struct cluster_job *j = c->jobs[i];
        if (mod_rev < j->mod_revision) {
            json_decref(rec);
            return;
        }
        json_decref((json_t *)j->rec);
        free((char *)j->host_id);
        j->rec = rec;
        j->host_id = job_host(id, rec);
        j->mod_revision = mod_rev;
        return;
    }
    if (c->n_jobs == c->cap_jobs) {
        c->cap_jobs = c->cap_jobs ? 2 * c->cap_jobs : 64;
        c->jobs = xrealloc(c->jobs, c->cap_jobs * sizeof(*c->jobs));
    }
    struct cluster_job *j = xcalloc(1, sizeof(*j));
    j->id = xstrdup(id);
    j->rec = rec;
    j->host_id = job_host(id, rec);
    j->mod_revision = mod_rev;
    json_object_set_new(c->job_index, id, json_integer((json_int_t)c->n_jobs));
    c->jobs[c->n_jobs++] = j;
}

static void job_remove(struct cluster *c, const char *id, int64_t rev)
{
    ssize_t i = index_get(c->job_index, id);
    if (i < 0 || rev < c->jobs[i]->mod_revision)
        return;
    job_free(c->jobs[i]);
    json_object_del(c->job_index, id);
    c->jobs[i] = c->jobs[--c->n_jobs];
    if ((size_t)i < c->n_jobs)
        json_object_set_new(c->job_index, c->jobs[i]->id, json_integer((json_int_t)i));
}

static int64_t ledger_rev(const struct cluster *c, const char *host)
{
    json_t *v = json_object_get(c->ledgers, host); /* borrowed */
    return v ? (int64_t)json_integer_value(v) : 0;
}

static void ledger_set(struct cluster *c, const char *host, int64_t rev)
{
    if (rev >= ledger_rev(c, host))
        json_object_set_new(c->ledgers, host, json_integer((json_int_t)rev));
}

/* ---- loading and following ---- */

/* One key of the view's prefixes, put (kv with a value) or deleted. */
static void apply_kv(struct cluster *c, const struct store_kv *kv, bool deleted)
{
    size_t hl = strlen(KEYS_HOSTS), pl = strlen(KEYS_PLACEMENTS), jl = strlen(KEYS_JOBS);
    const char *key = kv->key;
    if (strncmp(key, KEYS_HOSTS, hl) == 0 && key[hl]) {
        if (deleted) {
            host_remove(c, key + hl);
            return;
        }
        json_t *rec = NULL;
        if (jsonx_parse_object(kv->value, kv->value_len, &rec, NULL) < 0) {
            log_warn("scheduler", "host record is not JSON; ignored", "key=%s", key);
            return;
        }
        host_put(c, key + hl, rec, kv->create_revision);
    } else if (strncmp(key, KEYS_PLACEMENTS, pl) == 0 && key[pl]) {
        if (deleted) {
            if (kv->mod_revision >= ledger_rev(c, key + pl))
                json_object_del(c->ledgers, key + pl);
        } else {
            ledger_set(c, key + pl, kv->mod_revision);
        }
    } else if (strncmp(key, KEYS_JOBS, jl) == 0 && key[jl]) {
        if (deleted) {
            job_remove(c, key + jl, kv->mod_revision);
            return;
        }
        json_t *rec = NULL;
        if (jsonx_parse_object(kv->value, kv->value_len, &rec, NULL) < 0) {
            log_warn("scheduler", "job record is not JSON; ignored", "key=%s", key);
            return;
        }
        job_put(c, key + jl, rec, kv->mod_revision);
    }
}

void cluster_apply(struct cluster *c, const struct store_events *ev)
{
    for (size_t i = 0; i < ev->n; i++)
        apply_kv(c, &ev->ev[i].kv, ev->ev[i].type == STORE_EVENT_DELETE);
    if (ev->revision > c->revision)
        c->revision = ev->revision;
}

/* Lists prefix at *rev (0: now, then set), page by page. */
static int load_prefix(struct cluster *c, struct store *s, const char *prefix, int64_t *rev,
                       struct pier_err *err)
{
    cleanup_free char *after = NULL;
    for (;;) {
        struct store_list_opts lo = {.limit = 500, .revision = *rev, .after = after};
        struct store_range *r = NULL;
        int rc = store_list(s, prefix, &lo, &r, err);
        if (rc < 0)
            return rc;
        if (*rev == 0)
            *rev = r->revision;
        for (size_t i = 0; i < r->n; i++)
            apply_kv(c, &r->kvs[i], false);
        bool more = r->more && r->n > 0;
        if (more) {
            free(after);
            after = xstrdup(r->kvs[r->n - 1].key);
        }
        store_range_free(r);
        if (!more)
            return 0;
    }
}

static struct cluster *cluster_new(void)
{
    struct cluster *c = xcalloc(1, sizeof(*c));
    c->host_index = json_object();
    c->gone = json_object();
    c->ledgers = json_object();
    c->job_index = json_object();
    return c;
}

int cluster_load(struct store *s, struct cluster **out, struct pier_err *err)
{
    struct cluster *c = cluster_new();
    int64_t rev = 0;
    int rc = load_prefix(c, s, KEYS_HOSTS, &rev, err);
    if (rc == 0)
        rc = load_prefix(c, s, KEYS_PLACEMENTS, &rev, err);
    if (rc == 0)
        rc = load_prefix(c, s, KEYS_JOBS, &rev, err);
    if (rc < 0) {
        cluster_free(c);
        return rc;
    }
    c->revision = rev;
    *out = c;
    return 0;
}

int64_t cluster_revision(const struct cluster *c)
{
    return c->revision;
}

void cluster_free(struct cluster *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->n_hosts; i++)
        host_free(c->hosts[i]);
    for (size_t i = 0; i < c->n_jobs; i++)
        job_free(c->jobs[i]);
    free(c->hosts);
    free(c->jobs);
    json_decref(c->host_index);
    json_decref(c->gone);
    json_decref(c->ledgers);
    json_decref(c->job_index);
    free(c);
}

/* ---- reading ---- */

size_t cluster_host_count(const struct cluster *c)
{
    return c->n_hosts;
}

const struct cluster_host *cluster_host_at(const struct cluster *c, size_t i)
{
    return i < c->n_hosts ? c->hosts[i] : NULL;
}

enum cluster_host_state cluster_host_state(const struct cluster *c, const char *id)
{
    if (index_get(c->host_index, id) >= 0)
        return CLUSTER_HOST_UP;
    return json_object_get(c->gone, id) ? CLUSTER_HOST_GONE : CLUSTER_HOST_UNKNOWN;
}

size_t cluster_job_count(const struct cluster *c)
{
    return c->n_jobs;
}

const struct cluster_job *cluster_job_at(const struct cluster *c, size_t i)
{
    return i < c->n_jobs ? c->jobs[i] : NULL;
}

const struct cluster_job *cluster_job_find(const struct cluster *c, const char *id)
{
    ssize_t i = index_get(c->job_index, id);
    return i >= 0 ? c->jobs[i] : NULL;
}

bool cluster_job_ended(const json_t *job)
{
    const char *st = json_string_value(json_object_get(job, "state"));
    return st &&
           (strcmp(st, "down") == 0 || strcmp(st, "crashed") == 0 || strcmp(st, "failed") == 0);
}

bool cluster_job_active(const json_t *job)
{
    const char *want = json_string_value(json_object_get(job, "desired_state"));
    return (!want || strcmp(want, "up") == 0) && !cluster_job_ended(job);
}

void cluster_usage(const struct cluster *c, int64_t *memory, size_t *jobs)
{
    for (size_t h = 0; h < c->n_hosts; h++) {
        memory[h] = 0;
        jobs[h] = 0;
    }
    for (size_t i = 0; i < c->n_jobs; i++) {
        const struct cluster_job *j = c->jobs[i];
        if (cluster_job_ended(j->rec))
            continue;
        ssize_t h = index_get(c->host_index, j->host_id);
        if (h < 0)
            continue;
        memory[h] += jobbuild_memory(j->rec);
        jobs[h]++;
    }
}

/* ---- placing ----
 *
 * First every want gets its host in turn (placement.h), the host's memory,
 * job count and spread counts updated at once as if the job were there, so
 * the next want sees it; the job's record and the host's ledger after it
 * are rendered then. Then placecommit.h commits them, one host's jobs in
 * a chain of transactions and different hosts' concurrently, and the view
 * takes in what committed, at each transaction's revision. */

/* The spread counts of one (app, process type) over the hosts. */
struct kind {
    int *on; /* active jobs of the kind per host index */
};

/* What one cluster_place call works with. */
struct place {
    struct cluster *c;
    struct store *s;
    struct cluster_want *wants;
    size_t n;
    struct placement_host *ph; /* per host; memory_allocated kept current */
    size_t *jobs_on;           /* not-ended jobs per host, for the ledgers */
    json_t *kind_index;        /* "app\x1ftype" -> index in kinds */
    json_t *replacing;         /* ids of the jobs replaced in this call */
    struct kind *kinds;
    size_t n_kinds;
    /* the decided placements */
    struct pc_host *hosts; /* per host */
    struct pc_job *jobs;
    size_t *job_want;  /* index in wants of each of jobs */
    json_t **old_recs; /* per job: the replaced job's new record (NULL: none) */
    size_t n_jobs;
};

/* "app\x1ftype" of a job, or NULL for a job without both. */
static char *kind_key(const json_t *job)
{
    const char *app = json_string_value(json_object_get(job, "app"));
    const char *type = json_string_value(json_object_get(job, "type"));
    if (!app || !type)
        return NULL;
    struct buf b = BUF_INIT;
    buf_printf(&b, "%s\x1f%s", app, type);
    return buf_detach(&b);
}

static ssize_t kind_of(struct place *p, const json_t *job, bool add)
{
    cleanup_free char *key = kind_key(job);
    if (!key)
        return -1;
    ssize_t k = index_get(p->kind_index, key);
    if (k >= 0 || !add)
        return k;
    p->kinds = xrealloc(p->kinds, (p->n_kinds + 1) * sizeof(*p->kinds));
    p->kinds[p->n_kinds].on = xcalloc(p->c->n_hosts ? p->c->n_hosts : 1, sizeof(int));
    json_object_set_new(p->kind_index, key, json_integer((json_int_t)p->n_kinds));
    return (ssize_t)p->n_kinds++;
}

/* Fills the per-host state: records, memory held, spread counts of the
 * kinds the wants ask for. One pass over the jobs. */
static void place_init(struct place *p)
{
    struct cluster *c = p->c;
    size_t nh = c->n_hosts ? c->n_hosts : 1;
    p->ph = xcalloc(nh, sizeof(*p->ph));
    p->jobs_on = xcalloc(nh, sizeof(*p->jobs_on));
    p->hosts = xcalloc(nh, sizeof(*p->hosts));
    p->jobs = xcalloc(p->n ? p->n : 1, sizeof(*p->jobs));
    p->job_want = xcalloc(p->n ? p->n : 1, sizeof(*p->job_want));
    p->old_recs = xcalloc(p->n ? p->n : 1, sizeof(*p->old_recs));
    p->kind_index = json_object();
    p->replacing = json_object();
    int64_t *mem = xcalloc(nh, sizeof(*mem));
    cluster_usage(c, mem, p->jobs_on);
    for (size_t h = 0; h < c->n_hosts; h++) {
        struct pier_err err = {0};
        if (placement_host_from_record(c->hosts[h]->rec, &p->ph[h], &err) < 0) {
            log_warn("scheduler", "host record unusable; not placing on it",
                     "host=%s reason=\"%s\"", c->hosts[h]->id, err.msg);
            p->ph[h] = (struct placement_host){.id = c->hosts[h]->id, .up = false};
        }
        p->ph[h].memory_allocated = mem[h];
        p->hosts[h] = (struct pc_host){c->hosts[h]->id, c->hosts[h]->create_revision,
                                       ledger_rev(c, c->hosts[h]->id)};
    }
    free(mem);
    for (size_t i = 0; i < p->n; i++)
        if (!p->wants[i].placed)
            kind_of(p, p->wants[i].job, true);
    for (size_t i = 0; i < c->n_jobs; i++) {
        const struct cluster_job *j = c->jobs[i];
        if (!cluster_job_active(j->rec))
            continue;
        ssize_t k = kind_of(p, j->rec, false);
        ssize_t h = k >= 0 ? index_get(c->host_index, j->host_id) : -1;
        if (h >= 0)
            p->kinds[k].on[h]++;
    }
}

static void place_fini(struct place *p)
{
    for (size_t k = 0; k < p->n_kinds; k++)
        free(p->kinds[k].on);
    free(p->kinds);
    json_decref(p->kind_index);
    json_decref(p->replacing);
    free(p->ph);
    free(p->jobs_on);
    for (size_t i = 0; i < p->n_jobs; i++) {
        free((char *)p->jobs[i].text);
        free((char *)p->jobs[i].old_text);
        json_decref(p->old_recs[i]);
    }
    free(p->hosts);
    free(p->jobs);
    free(p->job_want);
    free(p->old_recs);
}

static void job_key(struct buf *b, const char *id)
{
    buf_reset(b);
    buf_printf(b, "%s%s", KEYS_JOBS, id);
}

/* Gives want wi its id on host h (whose counts include it already) and
 * renders its record, the host's ledger after it and the replaced job. */
static void place_assign(struct place *p, size_t wi, size_t h)
{
    struct cluster_want *w = &p->wants[wi];
    const char *host_id = p->c->hosts[h]->id;
    char uuid[UUID_LEN];
    uuid_new(uuid);
    snprintf(w->id, sizeof(w->id), "%s-%s", host_id, uuid);
    json_object_set_new(w->job, "id", json_string(w->id));
    json_object_set_new(w->job, "host_id", json_string(host_id));
    json_object_set_new(w->job, "uuid", json_string(uuid));
    json_t *env = json_object_get(w->job, "env"); /* borrowed */
    if (!json_is_object(env)) {
        env = json_object();
        json_object_set_new(w->job, "env", env);
    }
    json_object_set_new(env, "FLYNN_JOB_ID", json_string(w->id));
    char *text = json_dumps(w->job, JSON_COMPACT);
    struct pc_job *j = &p->jobs[p->n_jobs];
    *j = (struct pc_job){
        .host = h,
        .id = w->id,
        .text = text,
        .len = strlen(text),
        .memory = p->ph[h].memory_allocated,
        .jobs = p->jobs_on[h],
    };
    if (w->replaces) {
        const struct cluster_job *old = cluster_job_find(p->c, w->replaces);
        json_t *rec = json_deep_copy(old->rec);
        json_object_set_new(rec, "replaced_by", json_string(w->id));
        j->replaces = w->replaces;
        j->old_text = json_dumps(rec, JSON_COMPACT);
        j->old_rev = old->mod_revision;
        p->old_recs[p->n_jobs] = rec;
    }
    p->job_want[p->n_jobs++] = wi;
}

/* Picks a host for want i and counts the job on it. */
static void place_decide(struct place *p, size_t i)
{
    struct cluster *c = p->c;
    struct cluster_want *w = &p->wants[i];
    err_clear(&w->why);
    if (w->replaces &&
        (!cluster_job_find(c, w->replaces) || json_object_get(p->replacing, w->replaces))) {
        err_set(&w->why, PIER_ECONFLICT, "job %s is gone or already being replaced", w->replaces);
        return;
    }
    struct placement_job pj = {
        .app = json_string_value(json_object_get(w->job, "app")),
        .type = json_string_value(json_object_get(w->job, "type")),
        .memory = jobbuild_memory(w->job),
        .tags = w->tags && json_object_size(w->tags) ? w->tags : NULL,
    };
    ssize_t k = kind_of(p, w->job, false);
    for (size_t h = 0; h < c->n_hosts; h++)
        p->ph[h].same_kind = k >= 0 ? p->kinds[k].on[h] : 0;
    int h = placement_pick(p->ph, c->n_hosts, &pj, &w->why);
    if (h < 0)
        return;
    if (w->replaces)
        json_object_set_new(p->replacing, w->replaces, json_true());
    p->ph[h].memory_allocated += pj.memory;
    p->jobs_on[h]++;
    if (k >= 0)
        p->kinds[k].on[h]++;
    place_assign(p, i, (size_t)h);
}

/* Takes what committed into the view, at its transaction's revision. */
static size_t place_apply(struct place *p)
{
    struct cluster *c = p->c;
    size_t count = 0;
    for (size_t h = 0; h < c->n_hosts; h++)
        ledger_set(c, c->hosts[h]->id, p->hosts[h].ledger_rev);
    for (size_t i = 0; i < p->n_jobs; i++) {
        int64_t rev = p->jobs[i].revision;
        struct cluster_want *w = &p->wants[p->job_want[i]];
        if (rev == 0)
            continue;
        if (p->old_recs[i])
            job_put(c, w->replaces, json_incref(p->old_recs[i]), rev);
        job_put(c, w->id, json_deep_copy(w->job), rev);
        w->placed = true;
        count++;
    }
    return count;
}

int cluster_place(struct cluster *c, struct store *s, struct cluster_want *wants, size_t n,
                  size_t *committed, struct pier_err *err)
{
    struct place p = {.c = c, .s = s, .wants = wants, .n = n};
    place_init(&p);
    for (size_t i = 0; i < n; i++)
        if (!wants[i].placed)
            place_decide(&p, i);
    int rc = placecommit_run(s, p.hosts, c->n_hosts, p.jobs, p.n_jobs, err);
    size_t count = place_apply(&p);
    if (committed)
        *committed = count;
    place_fini(&p);
    return rc;
}

int cluster_place_once(struct store *s, json_t *job, const json_t *tags, struct pier_err *err)
{
    int64_t deadline = clock_now_ms() + PLACE_ONCE_MS;
    for (int attempt = 0;; attempt++) {
        struct cluster *c = NULL;
        int rc = cluster_load(s, &c, err);
        if (rc < 0)
            return rc;
        struct cluster_want w = {.job = job, .tags = tags};
        rc = cluster_place(c, s, &w, 1, NULL, err);
        cluster_free(c);
        if (rc == 0 && w.placed)
            return 0;
        if (rc == 0)
            return err_set(err, PIER_EUNAVAIL, "%s", w.why.msg);
        if (rc != PIER_ECONFLICT || clock_now_ms() >= deadline)
            return rc;
        json_object_del(job, "id");
        json_object_del(job, "host_id");
        json_object_del(job, "uuid");
        usleep((useconds_t)(10000 + 10000 * (attempt % 5)));
    }
}

/* ---- changing jobs ---- */

/* One by one, after a batch failed: what changed meanwhile stays undone. */
static int update_each(struct cluster *c, struct store *s, struct cluster_update *u, size_t n,
                       size_t *written, struct pier_err *err)
{
    cleanup_buf struct buf key = BUF_INIT;
    for (size_t i = 0; i < n; i++) {
        const struct cluster_job *j = cluster_job_find(c, u[i].id);
        if (!j)
            continue;
        job_key(&key, u[i].id);
        char *text = json_dumps(u[i].rec, JSON_COMPACT);
        int64_t rev = 0;
        int rc = store_cas(s, key.p, text, strlen(text), j->mod_revision, 0, &rev, err);
        free(text);
        if (rc == PIER_ECONFLICT || rc == PIER_ENOTFOUND)
            continue;
        if (rc < 0)
            return rc;
        job_put(c, u[i].id, json_deep_copy(u[i].rec), rev);
        u[i].done = true;
        (*written)++;
    }
    return 0;
}

int cluster_update_jobs(struct cluster *c, struct store *s, struct cluster_update *u, size_t n,
                        size_t *written, struct pier_err *err)
{
    size_t count = 0;
    cleanup_buf struct buf key = BUF_INIT;
    int rc = 0;
    for (size_t start = 0; start < n && rc == 0;) {
        size_t end = start, bytes = 0;
        size_t in_txn = 0;
        struct store_txn *t = store_txn_new();
        for (; end < n && end - start < TXN_MAX_OPS && bytes < TXN_MAX_BYTES; end++) {
            const struct cluster_job *j = cluster_job_find(c, u[end].id);
            if (!j)
                continue;
            in_txn++;
            job_key(&key, u[end].id);
            char *text = json_dumps(u[end].rec, JSON_COMPACT);
            store_txn_cmp(t, key.p, STORE_CMP_MOD, STORE_EQ, j->mod_revision);
            store_txn_put(t, STORE_THEN, key.p, text, strlen(text), 0);
            bytes += strlen(text);
            free(text);
        }
        struct store_txn_result *res = NULL;
        if (in_txn > 0)
            rc = store_txn_commit(s, t, &res, err);
        store_txn_free(t);
        if (in_txn == 0) {
            start = end;
            continue;
        }
        if (rc == 0 && res->succeeded) {
            for (size_t i = start; i < end; i++) {
                if (!cluster_job_find(c, u[i].id))
                    continue;
                job_put(c, u[i].id, json_deep_copy(u[i].rec), res->revision);
                u[i].done = true;
                count++;
            }
        } else if (rc == 0) {
            rc = update_each(c, s, u + start, end - start, &count, err);
        }
        store_txn_result_free(res);
        start = end;
    }
    if (written)
        *written = count;
    return rc;
}

int cluster_delete_jobs(struct cluster *c, struct store *s, const char *const *ids, size_t n,
                        size_t *deleted, struct pier_err *err)
{
    size_t count = 0;
    cleanup_buf struct buf key = BUF_INIT;
    int rc = 0;
    for (size_t start = 0; start < n && rc == 0;) {
        size_t end = start, in_txn = 0;
        struct store_txn *t = store_txn_new();
        for (; end < n && end - start < TXN_MAX_OPS; end++) {
            const struct cluster_job *j = cluster_job_find(c, ids[end]);
            if (!j)
                continue;
            job_key(&key, ids[end]);
            store_txn_cmp(t, key.p, STORE_CMP_MOD, STORE_EQ, j->mod_revision);
            store_txn_delete(t, STORE_THEN, key.p, false);
            in_txn++;
        }
        struct store_txn_result *res = NULL;
        if (in_txn > 0)
            rc = store_txn_commit(s, t, &res, err);
        store_txn_free(t);
        if (rc == 0 && res && res->succeeded) {
            for (size_t i = start; i < end; i++) {
                if (!cluster_job_find(c, ids[i]))
                    continue;
                job_remove(c, ids[i], res->revision);
                count++;
            }
        }
        store_txn_result_free(res);
        start = end;
    }
    if (deleted)
        *deleted = count;
    return rc;
}
