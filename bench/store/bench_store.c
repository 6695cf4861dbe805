/* bench_store: drives a store (pierd store or etcd) through pier's own
 * client (src/lib/store.h) and prints one figure a line, "name value":
 *
 *   seq_put_per_s, seq_put_p50_ms, seq_put_p99_ms     one client, puts one after another
 *   conc_put_per_s, conc_put_p50_ms, conc_put_p99_ms  --threads clients putting at once
 *   get_per_s                                         single-key gets from --readers threads
 *   list100_per_s                                     100-key prefix lists from --readers threads
 *   watch_p50_ms, watch_p99_ms                        put -> event latency over every delivery
 *   watch_deliveries, watch_missed                    how many events arrived / never did
 *
 * Every phase stops at its count or its time limit, whichever comes first,
 * so a slow server makes the run shorter in count, not longer in time. Any
 * failed request is reported on stderr and makes the exit status 1 (the
 * figures are still printed, but they are not to be trusted).
 *
 *   bench_store [flags] URL    (bench_store --help lists the flags) */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lib/buf.h"
#include "lib/store.h"

struct opts {
    long seq_puts, seq_seconds;
    long threads, conc_puts, conc_seconds;
    long readers, read_seconds;
    long watchers, watch_events, watch_rate, watch_grace;
    long value_size, timeout_ms;
    const char *prefix;
    const char *url;
};

static atomic_long n_errors;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static double seconds(int64_t ns)
{
    return (double)ns / 1e9;
}

/* Counts a failed request and says what it was; only the first few are
 * printed, so a dead server does not flood the terminal. */
static void fail(const char *what, const char *key, const struct pier_err *err)
{
    long n = atomic_fetch_add(&n_errors, 1);
    if (n < 5)
        fprintf(stderr, "bench_store: %s %s: %s\n", what, key, err->msg);
    else if (n == 5)
        fprintf(stderr, "bench_store: more errors follow (not shown)\n");
}

/* --- latency samples ------------------------------------------------- */

struct samples {
    int64_t *v; /* nanoseconds */
    size_t n, cap;
};

static void samples_add(struct samples *s, int64_t ns)
{
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 1024;
        s->v = xrealloc(s->v, s->cap * sizeof(*s->v));
    }
    s->v[s->n++] = ns;
}

static void samples_merge(struct samples *into, const struct samples *from)
{
    for (size_t i = 0; i < from->n; i++)
        samples_add(into, from->v[i]);
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* The nearest-rank percentile p (0..1) in milliseconds; sorts s. 0 when empty. */
static double samples_pct_ms(struct samples *s, double p)
{
    if (s->n == 0)
        return 0;
    qsort(s->v, s->n, sizeof(*s->v), cmp_i64);
    size_t rank = (size_t)(p * (double)s->n + 0.999999);
    if (rank < 1)
        rank = 1;
    if (rank > s->n)
        rank = s->n;
    return (double)s->v[rank - 1] / 1e6;
}

static void print_figures(const char *name, struct samples *lat, long done, int64_t elapsed)
{
    printf("%s_per_s %.1f\n", name, elapsed > 0 ? (double)done / seconds(elapsed) : 0.0);
    if (lat) {
        printf("%s_p50_ms %.3f\n", name, samples_pct_ms(lat, 0.50));
        printf("%s_p99_ms %.3f\n", name, samples_pct_ms(lat, 0.99));
    }
    fflush(stdout);
}

/* A value of len bytes: a decimal number (zero-padded to 20 digits) then
 * filler, so the watch phase can carry its send time in it. */
static void fill_value(char *v, size_t len, int64_t n)
{
    char head[24];
    snprintf(head, sizeof(head), "%020" PRId64, n);
    memset(v, 'x', len);
    memcpy(v, head, len < 20 ? len : 20);
}

/* --- puts ------------------------------------------------------------ */

static void phase_seq_put(struct store *s, const struct opts *o)
{
    char key[256], *val = xmalloc((size_t)o->value_size);
    struct samples lat = {0};
    long done = 0;
    int64_t start = now_ns(), deadline = start + o->seq_seconds * 1000000000;
    for (long i = 0; i < o->seq_puts && now_ns() < deadline; i++) {
        snprintf(key, sizeof(key), "%sseq/%08ld", o->prefix, i);
        fill_value(val, (size_t)o->value_size, i);
        struct pier_err err = {0};
        int64_t t0 = now_ns();
        if (store_put(s, key, val, (size_t)o->value_size, 0, NULL, &err) < 0) {
            fail("put", key, &err);
            break;
        }
        samples_add(&lat, now_ns() - t0);
        done++;
    }
    print_figures("seq_put", &lat, done, now_ns() - start);
    free(lat.v);
    free(val);
}

struct putter {
    pthread_t tid;
    struct store *s;
    const struct opts *o;
    atomic_long *next; /* shared: the next key number to write */
    int64_t deadline;
    long done;
    struct samples lat;
};

static void *putter_run(void *arg)
{
    struct putter *p = arg;
    char key[256], *val = xmalloc((size_t)p->o->value_size);
    for (;;) {
        long i = atomic_fetch_add(p->next, 1);
        if (i >= p->o->conc_puts || now_ns() >= p->deadline)
            break;
        snprintf(key, sizeof(key), "%sconc/%08ld", p->o->prefix, i);
        fill_value(val, (size_t)p->o->value_size, i);
        struct pier_err err = {0};
        int64_t t0 = now_ns();
        if (store_put(p->s, key, val, (size_t)p->o->value_size, 0, NULL, &err) < 0) {
            fail("put", key, &err);
            break;
        }
        samples_add(&p->lat, now_ns() - t0);
        p->done++;
    }
    free(val);
    return NULL;
}

static void phase_conc_put(struct store *s, const struct opts *o)
{
    struct putter *ps = xcalloc((size_t)o->threads, sizeof(*ps));
    atomic_long next = 0;
    int64_t start = now_ns();
    long started = 0;
    for (; started < o->threads; started++) {
        ps[started] = (struct putter){.s = s, .o = o, .next = &next};
        ps[started].deadline = start + o->conc_seconds * 1000000000;
        if (pthread_create(&ps[started].tid, NULL, putter_run, &ps[started]) != 0) {
            fprintf(stderr, "bench_store: cannot start a put thread: %s\n", strerror(errno));
            atomic_fetch_add(&n_errors, 1);
            break;
        }
    }
    struct samples lat = {0};
    long done = 0;
    for (long i = 0; i < started; i++) {
        pthread_join(ps[i].tid, NULL);
        samples_merge(&lat, &ps[i].lat);
        done += ps[i].done;
        free(ps[i].lat.v);
    }
    print_figures("conc_put", &lat, done, now_ns() - start);
    free(lat.v);
    free(ps);
}

/* --- reads ----------------------------------------------------------- */

#define LIST_KEYS 100

struct reader {
    pthread_t tid;
    struct store *s;
    const struct opts *o;
    bool list; /* list the 100 keys; else get one of them */
    int64_t deadline;
    unsigned seed;
    long done;
};

static int read_once(struct reader *r, char *key, size_t key_size)
{
    struct pier_err err = {0};
    if (r->list) {
        snprintf(key, key_size, "%slist/", r->o->prefix);
        struct store_range *rg = NULL;
        if (store_list(r->s, key, NULL, &rg, &err) < 0) {
            fail("list", key, &err);
            return -1;
        }
        size_t n = rg->n;
        store_range_free(rg);
        if (n != LIST_KEYS) {
            err_set(&err, PIER_EPROTO, "%zu keys instead of %d", n, LIST_KEYS);
            fail("list", key, &err);
            return -1;
        }
        return 0;
    }
    snprintf(key, key_size, "%slist/%03d", r->o->prefix, rand_r(&r->seed) % LIST_KEYS);
    struct store_kv *kv = NULL;
    if (store_get(r->s, key, &kv, &err) < 0) {
        fail("get", key, &err);
        return -1;
    }
    size_t len = kv->value_len;
    store_kv_free(kv);
    if (len != (size_t)r->o->value_size) {
        err_set(&err, PIER_EPROTO, "a value of %zu bytes instead of %ld", len, r->o->value_size);
        fail("get", key, &err);
        return -1;
    }
    return 0;
}

static void *reader_run(void *arg)
{
    struct reader *r = arg;
    char key[256];
    while (now_ns() < r->deadline && read_once(r, key, sizeof(key)) == 0)
        r->done++;
    return NULL;
}

static void phase_read(struct store *s, const struct opts *o, bool list)
{
    struct reader *rs = xcalloc((size_t)o->readers, sizeof(*rs));
    int64_t start = now_ns();
    long started = 0, done = 0;
    for (; started < o->readers; started++) {
        rs[started] = (struct reader){.s = s, .o = o, .list = list};
        rs[started].deadline = start + o->read_seconds * 1000000000;
        rs[started].seed = (unsigned)started * 7919u + 1;
        if (pthread_create(&rs[started].tid, NULL, reader_run, &rs[started]) != 0) {
            fprintf(stderr, "bench_store: cannot start a read thread: %s\n", strerror(errno));
            atomic_fetch_add(&n_errors, 1);
            break;
        }
    }
    for (long i = 0; i < started; i++) {
        pthread_join(rs[i].tid, NULL);
        done += rs[i].done;
    }
    print_figures(list ? "list100" : "get", NULL, done, now_ns() - start);
    free(rs);
}

/* The 100 keys the read phases read, written before they start (not timed). */
static int fill_list_keys(struct store *s, const struct opts *o)
{
    char key[256], *val = xmalloc((size_t)o->value_size);
    int rc = 0;
    for (int i = 0; i < LIST_KEYS && rc == 0; i++) {
        snprintf(key, sizeof(key), "%slist/%03d", o->prefix, i);
        fill_value(val, (size_t)o->value_size, i);
        struct pier_err err = {0};
        if (store_put(s, key, val, (size_t)o->value_size, 0, NULL, &err) < 0) {
            fail("put", key, &err);
            rc = -1;
        }
    }
    free(val);
    return rc;
}

/* --- watches --------------------------------------------------------- */

/* Every watcher opens its own watch on the shared prefix, then all of them
 * and the writer meet at a barrier so no put happens before every watch is
 * accepted. The writer puts watch_events keys at watch_rate a second, each
 * value starting with the monotonic time just before the put was sent; a
 * watcher takes the difference to its own clock when the event comes out of
 * store_watch_next. So a latency is the whole path: request, commit (with
 * its fsync), fan-out to 100 streams, parsing in the client. */
struct watcher {
    pthread_t tid;
    struct store *s;
    const struct opts *o;
    pthread_barrier_t *ready;
    atomic_llong *stop_at; /* the writer sets it to its end + grace */
    int open_rc;
    long got;
    struct samples lat;
};

static void watcher_collect(struct watcher *w, const struct store_events *evs, int64_t now)
{
    for (size_t i = 0; i < evs->n; i++) {
        const struct store_event *ev = &evs->ev[i];
        if (ev->type != STORE_EVENT_PUT || ev->kv.value_len < 20)
            continue;
        int64_t sent = strtoll(ev->kv.value, NULL, 10);
        samples_add(&w->lat, now - sent);
        w->got++;
    }
}

static void *watcher_run(void *arg)
{
    struct watcher *w = arg;
    char key[256];
    snprintf(key, sizeof(key), "%swatch/", w->o->prefix);
    const struct store_watch_opts wo = {.prefix = true};
    struct store_watch *watch = NULL;
    struct pier_err err = {0};
    w->open_rc = store_watch_open(w->s, key, &wo, &watch, &err);
    if (w->open_rc < 0)
        fail("watch", key, &err);
    pthread_barrier_wait(w->ready);
    while (watch && w->got < w->o->watch_events && now_ns() < atomic_load(w->stop_at)) {
        struct store_events *evs = NULL;
        int r = store_watch_next(watch, 200, &evs, &err);
        if (r == PIER_ETIMEOUT)
            continue;
        if (r < 0) {
            fail("watch", key, &err);
            break;
        }
        watcher_collect(w, evs, now_ns());
        store_events_free(evs);
    }
    store_watch_close(watch);
    return NULL;
}

/* Puts the timestamped keys at the asked rate (sleeping to an absolute
 * schedule, so a slow put does not shift every later one). */
static void watch_write(struct store *s, const struct opts *o)
{
    char key[256], *val = xmalloc((size_t)o->value_size);
    int64_t start = now_ns(), gap = 1000000000 / o->watch_rate;
    for (long i = 0; i < o->watch_events; i++) {
        int64_t at = start + i * gap;
        struct timespec ts = {.tv_sec = at / 1000000000, .tv_nsec = at % 1000000000};
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
            ;
        snprintf(key, sizeof(key), "%swatch/%06ld", o->prefix, i);
        fill_value(val, (size_t)o->value_size, now_ns());
        struct pier_err err = {0};
        if (store_put(s, key, val, (size_t)o->value_size, 0, NULL, &err) < 0) {
            fail("put", key, &err);
            break;
        }
    }
    free(val);
}

static void phase_watch(struct store *s, const struct opts *o)
{
    struct watcher *ws = xcalloc((size_t)o->watchers, sizeof(*ws));
    pthread_barrier_t ready;
    atomic_llong stop_at = INT64_MAX;
    long started = 0;
    pthread_barrier_init(&ready, NULL, (unsigned)o->watchers + 1);
    for (; started < o->watchers; started++) {
        ws[started] = (struct watcher){.s = s, .o = o, .ready = &ready, .stop_at = &stop_at};
        if (pthread_create(&ws[started].tid, NULL, watcher_run, &ws[started]) != 0) {
            fprintf(stderr, "bench_store: cannot start a watch thread: %s\n", strerror(errno));
            abort(); /* the barrier would wait forever */
        }
    }
    pthread_barrier_wait(&ready);
    watch_write(s, o);
    atomic_store(&stop_at, now_ns() + o->watch_grace * 1000000000);

    struct samples lat = {0};
    long got = 0, opened = 0;
    for (long i = 0; i < started; i++) {
        pthread_join(ws[i].tid, NULL);
        samples_merge(&lat, &ws[i].lat);
        got += ws[i].got;
        opened += ws[i].open_rc == 0;
        free(ws[i].lat.v);
    }
    pthread_barrier_destroy(&ready);
    printf("watch_p50_ms %.3f\n", samples_pct_ms(&lat, 0.50));
    printf("watch_p99_ms %.3f\n", samples_pct_ms(&lat, 0.99));
    printf("watch_deliveries %ld\n", got);
    printf("watch_missed %ld\n", opened * o->watch_events - got);
    fflush(stdout);
    free(lat.v);
    free(ws);
}

/* --- flags ----------------------------------------------------------- */

static const struct {
    const char *name;
    size_t off;
    long def, min;
    const char *help;
} flags[] = {
#define F(field) offsetof(struct opts, field)
    {"seq-puts", F(seq_puts), 10000, 1, "sequential puts (one client)"},
    {"seq-seconds", F(seq_seconds), 4, 1, "time limit of the sequential puts"},
    {"threads", F(threads), 16, 1, "client threads of the concurrent puts"},
    {"conc-puts", F(conc_puts), 40000, 1, "concurrent puts in all"},
    {"conc-seconds", F(conc_seconds), 4, 1, "time limit of the concurrent puts"},
    {"readers", F(readers), 4, 1, "threads of the get and the list phases"},
    {"read-seconds", F(read_seconds), 3, 1, "length of the get phase and of the list phase"},
    {"watchers", F(watchers), 100, 1, "watching threads, one watch each"},
    {"watch-events", F(watch_events), 150, 1, "puts under the watched prefix"},
    {"watch-rate", F(watch_rate), 50, 1, "those puts a second"},
    {"watch-grace", F(watch_grace), 5, 0, "seconds to wait for late events after the last put"},
    {"value-size", F(value_size), 256, 20, "bytes in every value"},
    {"timeout-ms", F(timeout_ms), 5000, 1, "per-request timeout of the client"},
#undef F
};
#define N_FLAGS (sizeof(flags) / sizeof(flags[0]))

static void usage(FILE *f)
{
    fprintf(f, "usage: bench_store [flags] URL\n"
               "Benchmarks a store (pierd store or etcd) through pier's store client.\n\n");
    for (size_t i = 0; i < N_FLAGS; i++)
        fprintf(f, "  --%-14s N  %s (default %ld)\n", flags[i].name, flags[i].help, flags[i].def);
    fprintf(f, "  --%-14s P  key prefix for everything written (default \"bench/\")\n", "prefix");
}

static int parse_flags(int argc, char **argv, struct opts *o)
{
    struct option lo[N_FLAGS + 3];
    for (size_t i = 0; i < N_FLAGS; i++) {
        lo[i] = (struct option){flags[i].name, required_argument, NULL, (int)i};
        *(long *)((char *)o + flags[i].off) = flags[i].def;
    }
    lo[N_FLAGS] = (struct option){"prefix", required_argument, NULL, 'p'};
    lo[N_FLAGS + 1] = (struct option){"help", no_argument, NULL, 'h'};
    lo[N_FLAGS + 2] = (struct option){NULL, 0, NULL, 0};
    o->prefix = "bench/";
    int c;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        if (c == 'h') {
            usage(stdout);
            exit(0);
        } else if (c == 'p') {
            o->prefix = optarg;
        } else if (c >= 0 && (size_t)c < N_FLAGS) {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (*end || end == optarg || v < flags[c].min) {
                fprintf(stderr, "bench_store: --%s needs a number >= %ld, not \"%s\"\n",
                        flags[c].name, flags[c].min, optarg);
                return -1;
            }
            *(long *)((char *)o + flags[c].off) = v;
        } else {
            usage(stderr);
            return -1;
        }
    }
    if (optind != argc - 1) {
        usage(stderr);
        return -1;
    }
    o->url = argv[optind];
    return 0;
}

int main(int argc, char **argv)
{
    struct opts o;
    if (parse_flags(argc, argv, &o) < 0)
        return 2;
    struct store *s = NULL;
    struct pier_err err = {0};
    if (store_open(o.url, &s, &err) < 0) {
        fprintf(stderr, "bench_store: %s\n", err.msg);
        return 2;
    }
    store_set_timeout(s, o.timeout_ms);
    phase_seq_put(s, &o);
    phase_conc_put(s, &o);
    if (fill_list_keys(s, &o) == 0) {
        phase_read(s, &o, false);
        phase_read(s, &o, true);
    }
    phase_watch(s, &o);
    store_close(s);
    long errors = atomic_load(&n_errors);
    if (errors > 0)
        fprintf(stderr, "bench_store: %ld requests failed; the figures are not valid\n", errors);
    return errors > 0 ? 1 : 0;
}
