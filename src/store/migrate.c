#include "store/migrate.h"

#include <inttypes.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "lib/buf.h"
#include "lib/cleanup.h"
#include "lib/store.h"

#define DEFAULT_PREFIX "/pier/"
#define PAGE_KEYS 500 /* keys per range read: pages stay far below the client's answer cap */
/* Per transaction: etcd refuses more than 128 operations (--max-txn-ops) and
 * requests over 1.5 MiB (--max-request-bytes); pierd store refuses JSON bodies
 * over 2 MiB, where base64 adds a third to keys and values. Every key is
 * counted twice (its compare and its put). A single larger value goes alone. */
#define BATCH_OPS 100
#define BATCH_BYTES (512u << 10)
#define REQUEST_TIMEOUT_MS 30000
#define PROGRESS_EVERY 1000 /* keys between progress lines (and at least one every 2 s) */
#define SHOW_KEYS 10        /* keys a report names before "... and N more" */

/* The keys under the prefix as one store had them at one revision, sorted
 * by key. Owns its kvs. */
struct snapshot {
    struct store_kv *kv;
    size_t n, cap;
    int64_t revision; /* the revision every page was read at */
    size_t bytes;     /* key and value bytes */
};

static void snapshot_release(struct snapshot *s)
{
    for (size_t i = 0; i < s->n; i++) {
        free(s->kv[i].key);
        free(s->kv[i].value);
    }
    free(s->kv);
    memset(s, 0, sizeof(*s));
}

/* Moves *kv (emptied) to the end of s. */
static void snapshot_take(struct snapshot *s, struct store_kv *kv)
{
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 1024;
        s->kv = xrealloc(s->kv, s->cap * sizeof(*s->kv));
    }
    s->bytes += kv->key_len + kv->value_len;
    s->kv[s->n++] = *kv;
    memset(kv, 0, sizeof(*kv));
}

/* Appends one page to out, checking that its keys are C strings (the client
 * writes keys as such) and come after every key already there. */
static int snapshot_add_page(struct snapshot *out, struct store_range *r, struct pier_err *err)
{
    for (size_t i = 0; i < r->n; i++) {
        struct store_kv *kv = &r->kvs[i];
        if (strlen(kv->key) != kv->key_len)
            return err_set(err, PIER_EINVAL,
                           "key \"%s...\" holds a NUL byte, which the store client cannot write",
                           kv->key);
        if (out->n > 0 && strcmp(out->kv[out->n - 1].key, kv->key) >= 0)
            return err_set(err, PIER_EPROTO, "the listing went back from \"%s\" to \"%s\"",
                           out->kv[out->n - 1].key, kv->key);
        snapshot_take(out, kv);
    }
    return 0;
}

/* Reads every key under prefix into *out, consistently: the first page fixes
 * the revision and every later page is read at that same revision, starting
 * after the last key seen, so writes made meanwhile cannot tear the copy.
 * (The revision in an answer's header is the store's current one, not the
 * one read at, so it is taken from the first page only.) On failure *out
 * holds what was read; the caller releases it either way. */
static int snapshot_read(struct store *st, const char *prefix, struct snapshot *out,
                         struct pier_err *err)
{
    memset(out, 0, sizeof(*out));
    struct store_list_opts lo = {.limit = PAGE_KEYS};
    for (;;) {
        struct store_range *r = NULL;
        int rc = store_list(st, prefix, &lo, &r, err);
        if (rc == PIER_ECOMPACTED)
            return err_wrap(err, rc,
                            "revision %" PRId64 " was compacted while it was being read (are "
                            "writers still running?)",
                            out->revision);
        if (rc < 0)
            return rc;
        if (lo.revision == 0)
            lo.revision = out->revision = r->revision;
        rc = snapshot_add_page(out, r, err);
        bool more = r->more && r->n > 0;
        store_range_free(r); /* the kvs moved out are empty */
        if (rc < 0 || !more)
            return rc;
        lo.after = out->kv[out->n - 1].key;
    }
}

/* Moves the leased keys of s to leased (which must be empty), keeping the
 * order of both. */
static void snapshot_split_leased(struct snapshot *s, struct snapshot *leased)
{
    size_t kept = 0;
    s->bytes = 0;
    for (size_t i = 0; i < s->n; i++) {
        if (s->kv[i].lease != 0) {
            snapshot_take(leased, &s->kv[i]);
            continue;
        }
        s->bytes += s->kv[i].key_len + s->kv[i].value_len;
        s->kv[kept++] = s->kv[i];
    }
    s->n = kept;
}

/* --- comparing ------------------------------------------------------- */

enum diff_kind {
    DIFF_MISSING, /* in want, not in got */
    DIFF_VALUE,   /* in both, values differ */
    DIFF_LEASED,  /* in both, equal, but under a lease in got: it would vanish with the lease */
    DIFF_EXTRA,   /* in got without a lease, not in want */
};

struct diff_entry {
    enum diff_kind kind;
    const struct store_kv *want; /* NULL for DIFF_EXTRA */
    const struct store_kv *got;  /* NULL for DIFF_MISSING */
};

/* Where got differs from want, in key order (borrowing both snapshots). */
struct diff {
    struct diff_entry *e;
    size_t n, cap;
    size_t count[4];       /* entries of each kind */
    size_t same;           /* keys equal in both */
    size_t leased_ignored; /* leased keys of got that want does not have */
};

static void diff_add(struct diff *d, enum diff_kind kind, const struct store_kv *want,
                     const struct store_kv *got)
{
    if (d->n == d->cap) {
        d->cap = d->cap ? 2 * d->cap : 256;
        d->e = xrealloc(d->e, d->cap * sizeof(*d->e));
    }
    d->e[d->n++] = (struct diff_entry){kind, want, got};
    d->count[kind]++;
}

static void diff_release(struct diff *d)
{
    free(d->e);
    memset(d, 0, sizeof(*d));
}

/* Walks want (which holds no leased keys) and got side by side. A leased key
 * in got that want lacks is left out: it belongs to a process that
 * registered with got itself, and its lease will clean it up. */
static void diff_make(const struct snapshot *want, const struct snapshot *got, struct diff *d)
{
    memset(d, 0, sizeof(*d));
    size_t i = 0, j = 0;
    while (i < want->n || j < got->n) {
        int c = i == want->n ? 1 : j == got->n ? -1 : strcmp(want->kv[i].key, got->kv[j].key);
        if (c < 0) {
            diff_add(d, DIFF_MISSING, &want->kv[i++], NULL);
        } else if (c > 0) {
            const struct store_kv *g = &got->kv[j++];
            if (g->lease)
                d->leased_ignored++;
            else
                diff_add(d, DIFF_EXTRA, NULL, g);
        } else {
            const struct store_kv *w = &want->kv[i++], *g = &got->kv[j++];
            if (w->value_len != g->value_len || memcmp(w->value, g->value, w->value_len) != 0)
                diff_add(d, DIFF_VALUE, w, g);
            else if (g->lease)
                diff_add(d, DIFF_LEASED, w, g);
            else
                d->same++;
        }
    }
}

/* Prints the first SHOW_KEYS entries, each with its kind's label. */
static void diff_print(FILE *out, const struct diff *d, const char *const labels[4])
{
    for (size_t i = 0; i < d->n && i < SHOW_KEYS; i++) {
        const struct diff_entry *e = &d->e[i];
        const struct store_kv *kv = e->want ? e->want : e->got;
        fprintf(out, "  %s: %s", kv->key, labels[e->kind]);
        if (e->kind == DIFF_VALUE)
            fprintf(out, " (%zu bytes there, %zu in the source's snapshot)", e->got->value_len,
                    e->want->value_len);
        fputc('\n', out);
    }
    if (d->n > SHOW_KEYS)
        fprintf(out, "  ... and %zu more\n", d->n - SHOW_KEYS);
}

/* --- the migration --------------------------------------------------- */

struct migration {
    const struct store_migrate_opts *o;
    const char *prefix;
    FILE *out;
    struct store *src, *dst;
    struct snapshot source; /* the source's keys without a lease: what is copied */
    struct snapshot leased; /* the source's leased keys: skipped */
    struct snapshot dest;   /* the destination before writing */
    struct diff plan;       /* dest against source: what to write */
    size_t copied, deleted; /* progress of the writes */
    size_t printed;         /* copied when the last progress line was printed */
    int64_t start_ms, last_progress_ms;
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* "1.2 MiB, 1258291 bytes", for people and scripts. */
static const char *human_bytes(size_t n, char *out, size_t size)
{
    static const char *const units[] = {"bytes", "KiB", "MiB", "GiB", "TiB"};
    double v = (double)n;
    size_t u = 0;
    while (v >= 1024 && u + 1 < sizeof(units) / sizeof(units[0])) {
        v /= 1024;
        u++;
    }
    if (u == 0)
        snprintf(out, size, "%zu bytes", n);
    else
        snprintf(out, size, "%.1f %s, %zu bytes", v, units[u], n);
    return out;
}

/* The endpoint at *p in a comma-separated list, trimmed of spaces and
 * trailing slashes; advances *p past it. */
static struct str next_endpoint(const char **p)
{
    const char *s = *p + strspn(*p, ", ");
    size_t len = strcspn(s, ",");
    *p = s + len;
    while (len > 0 && (s[len - 1] == ' ' || s[len - 1] == '/'))
        len--;
    return (struct str){s, len};
}

/* Whether the lists a and b name a common endpoint; *same gets it. */
static bool share_endpoint(const char *a, const char *b, struct str *same)
{
    for (const char *pa = a; *pa;) {
        struct str ea = next_endpoint(&pa);
        for (const char *pb = b; ea.len && *pb;) {
            struct str eb = next_endpoint(&pb);
            if (ea.len == eb.len && strncasecmp(ea.p, eb.p, ea.len) == 0) {
                *same = ea;
                return true;
            }
        }
    }
    return false;
}

static int check_endpoints(const char *flag, const char *list, struct pier_err *err)
{
    if (!list || !*list)
        return err_set(err, PIER_EINVAL,
                       "%s is missing: give the store's client URL, e.g. %s http://127.0.0.1:%s",
                       flag, flag, strcmp(flag, "--from") == 0 ? "7001" : "2379");
    struct store *s = NULL;
    if (store_open(list, &s, err) < 0) {
        if (!err)
            return PIER_EINVAL;
        char cause[sizeof(err->msg)];
        snprintf(cause, sizeof(cause), "%s", err->msg);
        return err_set(err, PIER_EINVAL, "%s: %s (give the store's client URLs, e.g. %s %s)", flag,
                       cause, flag, "http://10.0.0.1:2379,http://10.0.0.2:2379");
    }
    store_close(s);
    return 0;
}

int store_migrate_check(const struct store_migrate_opts *o, struct pier_err *err)
{
    if (check_endpoints("--from", o->from, err) < 0 || check_endpoints("--to", o->to, err) < 0)
        return PIER_EINVAL;
    struct str same;
    if (share_endpoint(o->from, o->to, &same))
        return err_set(err, PIER_EINVAL,
                       "--from and --to both name %.*s: the source and the destination must be "
                       "different stores",
                       (int)same.len, same.p);
    if (o->prefix && !*o->prefix)
        return err_set(err, PIER_EINVAL,
                       "--prefix is empty: give the keys to move, e.g. --prefix " DEFAULT_PREFIX);
    return 0;
}

/* Fills err for a failed read of a whole store, before anything was
 * written; a store that did not answer gets a hint on what to check. */
static int read_failed(const char *role, const char *flag, const char *url, int rc,
                       struct pier_err *err)
{
    if (!err)
        return rc;
    char cause[sizeof(err->msg)];
    snprintf(cause, sizeof(cause), "%s", err->msg);
    bool unreachable = rc > PIER_EINVAL || rc == PIER_EUNAVAIL || rc == PIER_ETIMEOUT;
    return err_set(err, rc, "%s the %s (%s %s): %s.%s Nothing was written",
                   unreachable ? "cannot reach" : "reading", role, flag, url, cause,
                   unreachable ? " Is the store running, and is that its client URL?" : "");
}

/* Reads the destination, then the source, and sets the leased keys apart.
 * Nothing has been written when this fails. */
static int read_both(struct migration *m, struct pier_err *err)
{
    int rc = snapshot_read(m->dst, m->prefix, &m->dest, err);
    if (rc < 0)
        return read_failed("destination", "--to", m->o->to, rc, err);
    rc = snapshot_read(m->src, m->prefix, &m->source, err);
    if (rc < 0)
        return read_failed("source", "--from", m->o->from, rc, err);
    snapshot_split_leased(&m->source, &m->leased);
    return 0;
}

static void print_source(struct migration *m)
{
    char b[64];
    fprintf(m->out, "source %s: %zu keys under %s (%s) at revision %" PRId64 "\n", m->o->from,
            m->source.n + m->leased.n, m->prefix, human_bytes(m->source.bytes, b, sizeof(b)),
            m->source.revision);
    if (m->leased.n == 0)
        return;
    fprintf(m->out,
            "skipping %zu leased keys: they belong to live processes (discovery instances, "
            "hosts), which register again against the new store\n",
            m->leased.n);
    for (size_t i = 0; i < m->leased.n && i < SHOW_KEYS; i++)
        fprintf(m->out, "  %s (lease %" PRId64 ")\n", m->leased.kv[i].key, m->leased.kv[i].lease);
    if (m->leased.n > SHOW_KEYS)
        fprintf(m->out, "  ... and %zu more\n", m->leased.n - SHOW_KEYS);
}

/* Prints the plan; refuses a destination with keys under the prefix unless
 * forced. */
static int print_plan(struct migration *m, struct pier_err *err)
{
    static const char *const labels[4] = {"new", "overwrite (value differs)",
                                          "overwrite (under a lease there)",
                                          "delete (not in the source)"};
    const struct diff *d = &m->plan;
    size_t overwrite = d->count[DIFF_VALUE] + d->count[DIFF_LEASED];
    if (m->dest.n == 0) {
        fprintf(m->out, "destination %s: no keys under %s\n", m->o->to, m->prefix);
        return 0;
    }
    if (!m->o->force)
        return err_set(err, PIER_EEXISTS,
                       "the destination (--to %s) already has %zu keys under %s, e.g. \"%s\": "
                       "refusing to write over them. Point --to at an empty store, or add "
                       "--force to make them a copy of the source's (%zu would be overwritten, "
                       "%zu deleted; --dry-run --force lists them)",
                       m->o->to, m->dest.n, m->prefix, m->dest.kv[0].key, overwrite,
                       d->count[DIFF_EXTRA]);
    fprintf(m->out,
            "destination %s: %zu keys under %s already; --force: %zu will be overwritten, %zu "
            "deleted (not in the source), %zu are already equal, %zu leased ones are left to "
            "their owners\n",
            m->o->to, m->dest.n, m->prefix, overwrite, d->count[DIFF_EXTRA], d->same,
            d->leased_ignored);
    struct diff changes = *d; /* the same entries, without the new keys */
    changes.e = xcalloc(d->n ? d->n : 1, sizeof(*changes.e));
    changes.n = 0;
    for (size_t i = 0; i < d->n; i++)
        if (d->e[i].kind != DIFF_MISSING)
            changes.e[changes.n++] = d->e[i];
    diff_print(m->out, &changes, labels);
    free(changes.e);
    return 0;
}

static void print_progress(struct migration *m, bool last)
{
    size_t total = m->plan.n - m->plan.count[DIFF_EXTRA];
    int64_t t = now_ms();
    if (m->plan.n == 0)
        return;
    bool step = m->copied / PROGRESS_EVERY != m->printed / PROGRESS_EVERY;
    if (!last && !step && t - m->last_progress_ms < 2000)
        return;
    m->last_progress_ms = t;
    m->printed = m->copied;
    fprintf(m->out, "copied %zu/%zu keys", m->copied, total);
    if (m->plan.count[DIFF_EXTRA])
        fprintf(m->out, ", deleted %zu/%zu", m->deleted, m->plan.count[DIFF_EXTRA]);
    fputc('\n', m->out);
    fflush(m->out);
}

/* Adds one change to t, guarded by a compare on the key's mod revision as
 * the destination snapshot had it (0: absent), so a writer on the
 * destination makes the transaction fail instead of being overwritten
 * unseen. Returns the bytes it adds to the request. */
static size_t txn_add(struct store_txn *t, const struct diff_entry *e)
{
    const struct store_kv *key = e->want ? e->want : e->got;
    store_txn_cmp(t, key->key, STORE_CMP_MOD, STORE_EQ, e->got ? e->got->mod_revision : 0);
    if (e->kind == DIFF_EXTRA) {
        store_txn_delete(t, STORE_THEN, key->key, false);
        return 2 * key->key_len;
    }
    store_txn_put(t, STORE_THEN, key->key, e->want->value, e->want->value_len, 0);
    return 2 * key->key_len + e->want->value_len;
}

/* Fills err for a write that failed at entry `at` (the first of its batch):
 * batches are atomic and go in key order, so everything before it is in
 * place. */
static int write_failed(struct migration *m, size_t at, int rc, struct pier_err *err)
{
    if (!err)
        return rc;
    char cause[sizeof(err->msg)];
    snprintf(cause, sizeof(cause), "%s", err->msg);
    const struct diff_entry *e = &m->plan.e[at];
    const char *key = (e->want ? e->want : e->got)->key;
    return err_set(err, rc,
                   "writing to the destination (--to %s) stopped after %zu of %zu keys, at "
                   "\"%.160s\" (every key before it is in place): %s. Nothing was changed in the "
                   "source. Once the cause is fixed, run again with --force to finish: it writes "
                   "only what is still missing or different",
                   m->o->to, m->copied, m->plan.n - m->plan.count[DIFF_EXTRA], key, cause);
}

/* Applies the plan in transactions of at most BATCH_OPS changes and about
 * BATCH_BYTES bytes (one bigger value goes alone). */
static int write_plan(struct migration *m, struct pier_err *err)
{
    m->last_progress_ms = now_ms();
    for (size_t i = 0; i < m->plan.n;) {
        size_t start = i, bytes = 0, puts = 0, dels = 0;
        struct store_txn *t = store_txn_new();
        for (; i < m->plan.n && i - start < BATCH_OPS; i++) {
            const struct diff_entry *e = &m->plan.e[i];
            const struct store_kv *kv = e->want ? e->want : e->got;
            if (i > start &&
                bytes + 2 * kv->key_len + (e->want ? e->want->value_len : 0) > BATCH_BYTES)
                break;
            bytes += txn_add(t, e);
            *(e->kind == DIFF_EXTRA ? &dels : &puts) += 1;
        }
        struct store_txn_result *res = NULL;
        int rc = store_txn_commit(m->dst, t, &res, err);
        store_txn_free(t);
        if (rc == 0 && !res->succeeded)
            rc = err_set(err, PIER_ECONFLICT,
                         "a key in this batch changed in the destination after it was read: is "
                         "something already writing to it? Stop it first");
        store_txn_result_free(res);
        if (rc < 0) {
            print_progress(m, true);
            return write_failed(m, start, rc, err);
        }
        m->copied += puts;
        m->deleted += dels;
        if (puts)
            print_progress(m, false);
    }
    print_progress(m, true);
    return 0;
}

/* Re-reads the store st (the destination or, when source, the source) and
 * compares it with the snapshot taken. */
static int verify(struct migration *m, struct store *st, bool source, struct pier_err *err)
{
    static const char *const labels[4] = {"missing", "value differs", "under a lease",
                                          "not in the source"};
    static const char *const source_labels[4] = {"deleted", "changed", "now under a lease",
                                                 "written"};
    struct snapshot now = {0}, leased = {0};
    int rc = snapshot_read(st, m->prefix, &now, err);
    if (rc < 0) {
        snapshot_release(&now);
        return err_wrap(err, rc, "verifying the %s (%s %s)", source ? "source" : "destination",
                        source ? "--from" : "--to", source ? m->o->from : m->o->to);
    }
    if (source)
        snapshot_split_leased(&now, &leased);
    struct diff d;
    diff_make(&m->source, &now, &d);
    if (d.n > 0) {
        fprintf(m->out, "%s: %zu keys differ from the snapshot:\n",
                source ? "the source changed during the migration" : "verification failed", d.n);
        diff_print(m->out, &d, source ? source_labels : labels);
        rc = source ? err_set(err, PIER_ECONFLICT,
                              "the source (--from %s) changed during the migration (%zu keys "
                              "after revision %" PRId64 "): writers are still running. Stop "
                              "every pier component and run again with --force",
                              m->o->from, d.n, m->source.revision)
                    : err_set(err, PIER_ECONFLICT,
                              "verification failed: %zu of %zu keys in the destination (--to "
                              "%s) differ from the source's snapshot; run again with --force",
                              d.n, m->source.n, m->o->to);
    }
    diff_release(&d);
    snapshot_release(&now);
    snapshot_release(&leased);
    return rc;
}

static int open_stores(struct migration *m, struct pier_err *err)
{
    if (store_open(m->o->from, &m->src, err) < 0)
        return err_wrap(err, PIER_EINVAL, "--from");
    if (store_open(m->o->to, &m->dst, err) < 0)
        return err_wrap(err, PIER_EINVAL, "--to");
    store_set_timeout(m->src, REQUEST_TIMEOUT_MS);
    store_set_timeout(m->dst, REQUEST_TIMEOUT_MS);
    return 0;
}

static void print_summary(struct migration *m)
{
    char b[64];
    int64_t rev = 0;
    /* The revision is only news here: a failure to read it is not the migration's. */
    bool have_rev = store_revision(m->dst, &rev, NULL) == 0;
    fprintf(m->out,
            "done in %.1f s: %s now holds the %zu keys under %s (%s), verified; %zu written, %zu "
            "already equal, %zu deleted; %zu leased keys skipped\n",
            (double)(now_ms() - m->start_ms) / 1000, m->o->to, m->source.n, m->prefix,
            human_bytes(m->source.bytes, b, sizeof(b)), m->copied, m->plan.same, m->deleted,
            m->leased.n);
    if (have_rev)
        fprintf(m->out,
                "the destination counts its own revisions: it is at %" PRId64
                ", the source was at %" PRId64 ". ",
                rev, m->source.revision);
    fprintf(m->out,
            "Components list again when they start. Next: point PIER_STORE at %s and "
            "start them\n",
            m->o->to);
}

static int migrate(struct migration *m, struct pier_err *err)
{
    int rc = open_stores(m, err);
    if (rc == 0)
        rc = read_both(m, err);
    if (rc < 0)
        return rc;
    print_source(m);
    diff_make(&m->source, &m->dest, &m->plan);
    if ((rc = print_plan(m, err)) < 0)
        return rc;
    if (m->o->dry_run) {
        char b[64];
        size_t bytes = 0;
        for (size_t i = 0; i < m->plan.n; i++)
            if (m->plan.e[i].want)
                bytes += m->plan.e[i].want->key_len + m->plan.e[i].want->value_len;
        fprintf(m->out,
                "dry run: would copy %zu keys (%s), delete %zu, leave %zu already equal; "
                "nothing written\n",
                m->plan.n - m->plan.count[DIFF_EXTRA], human_bytes(bytes, b, sizeof(b)),
                m->plan.count[DIFF_EXTRA], m->plan.same);
        return 0;
    }
    if ((rc = write_plan(m, err)) < 0 || (rc = verify(m, m->dst, false, err)) < 0 ||
        (rc = verify(m, m->src, true, err)) < 0)
        return rc;
    print_summary(m);
    return 0;
}

int store_migrate_run(const struct store_migrate_opts *o, struct pier_err *err)
{
    int rc = store_migrate_check(o, err);
    if (rc < 0)
        return rc;
    struct migration m = {
        .o = o,
        .prefix = o->prefix ? o->prefix : DEFAULT_PREFIX,
        .out = o->out ? o->out : stdout,
        .start_ms = now_ms(),
    };
    rc = migrate(&m, err);
    fflush(m.out);
    diff_release(&m.plan);
    snapshot_release(&m.source);
    snapshot_release(&m.leased);
    snapshot_release(&m.dest);
    store_close(m.src);
    store_close(m.dst);
    return rc;
}

/* --- the subcommand -------------------------------------------------- */

static const char usage_text[] =
    "usage: pierd store-migrate --from URL[,URL...] --to URL[,URL...] [--prefix PREFIX]\n"
    "                           [--dry-run] [--force]\n"
    "\n"
    "Copies every key under PREFIX from one store to another: from the embedded pierd store\n"
    "to etcd, or back. Stop every pier component first; afterwards point PIER_STORE at the\n"
    "destination and start them again. Leased keys (discovery instances, hosts) are not\n"
    "copied: their owners register again. The copy is verified before it reports success.\n"
    "\n"
    "flags:\n"
    "  --from URL[,URL]   the store to copy from (its client URLs)\n"
    "  --to URL[,URL]     the store to copy to; it must have no keys under PREFIX\n"
    "  --prefix PREFIX    the keys to copy (default " DEFAULT_PREFIX ")\n"
    "  --dry-run          read both stores and print what would be copied; write nothing\n"
    "  --force            write into a destination that has keys under PREFIX, making them\n"
    "                     a copy of the source's (overwrite, delete the extra ones); also\n"
    "                     finishes a migration that stopped midway\n"
    "\n"
    "exit status: 0 copied and verified, 1 failed, 2 bad usage\n";

/* Parses argv into o. Returns 0, 1 when --help was printed, or PIER_EINVAL. */
static int parse_flags(int argc, char **argv, struct store_migrate_opts *o, struct pier_err *err)
{
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            fputs(usage_text, stdout);
            return 1;
        }
        if (strcmp(a, "--dry-run") == 0 || strcmp(a, "--force") == 0) {
            *(a[2] == 'd' ? &o->dry_run : &o->force) = true;
            continue;
        }
        const char **slot = NULL;
        size_t klen = strcspn(a, "=");
        if (klen == 6 && strncmp(a, "--from", klen) == 0)
            slot = &o->from;
        else if (klen == 4 && strncmp(a, "--to", klen) == 0)
            slot = &o->to;
        else if (klen == 8 && strncmp(a, "--prefix", klen) == 0)
            slot = &o->prefix;
        if (!slot)
            return err_set(err, PIER_EINVAL, "%s \"%s\" (see pierd store-migrate --help)",
                           strncmp(a, "--", 2) == 0 ? "unknown flag" : "unexpected argument", a);
        if (a[klen] == '=')
            *slot = a + klen + 1;
        else if (i + 1 < argc)
            *slot = argv[++i];
        else
            return err_set(err, PIER_EINVAL, "flag \"%s\" needs a value", a);
    }
    return 0;
}

int store_migrate_main(int argc, char **argv)
{
    struct store_migrate_opts o = {0};
    struct pier_err err = {0};
    signal(SIGPIPE, SIG_IGN); /* a store closing its end is an error to report, not a death */
    int rc = parse_flags(argc, argv, &o, &err);
    if (rc == 0)
        rc = store_migrate_check(&o, &err);
    if (rc != 0) {
        if (rc < 0)
            fprintf(stderr, "pierd store-migrate: %s\n", err.msg);
        return rc < 0 ? 2 : 0;
    }
    if (store_migrate_run(&o, &err) < 0) {
        fflush(stdout);
        fprintf(stderr, "pierd store-migrate: %s\n", err.msg);
        return 1;
    }
    return 0;
}
