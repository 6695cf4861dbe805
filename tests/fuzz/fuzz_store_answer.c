// fuzz-sources: src/lib/store.c src/lib/store_watch.c src/lib/store_lease.c
// fuzz-sources: src/lib/httpc.c src/lib/clock.c src/lib/jsonx.c src/lib/buf.c
// fuzz-sources: src/lib/err.c src/lib/log.c src/lib/base64.c
// fuzz-flags: -ljansson -lcurl -lpthread
/* fuzz_store_answer: what a store server (or anything posing as one) can
 * answer the client, fed to the client's parsers. The first byte picks the
 * mode, the rest is the answer's body:
 *   even: one answer with an HTTP status picked by bits 1-3, parsed as
 *         store_call parses it, then handed to every answer decoder (range,
 *         put, delete, txn, lease grant, keepalive, time-to-live);
 *   odd:  a watch stream, fed to a watch in pieces of (byte >> 1) + 1 bytes,
 *         as a socket might cut it.
 * Both also check that the incremental JSON scan (store_json_scan, piece
 * by piece) finds the same end as the one-shot store_json_value_len.
 *
 * Beyond crashes and sanitizer reports (a revision + 1 that overflows is
 * one) it checks the client's promises: a failed decode says why and hands
 * nothing out, and a watch delivers no revision below the one it started
 * from. Nothing touches the network: the
 * store handle points at a port nobody is asked about. */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/log.h"
#include "lib/store.h"
#include "lib/store_int.h"

static struct store *store;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    log_set_level(LOG_ERROR);
    struct pier_err err = {0};
    if (store_open("http://127.0.0.1:1", &store, &err) < 0)
        abort();
    return 0;
}

static void check_failed(int r, const struct pier_err *err, const void *out)
{
    if (r < 0 && (out || !err->msg[0] || err->code != r)) {
        fprintf(stderr, "decoder failed with %d but handed out %p or no message \"%s\"\n", r, out,
                err->msg);
        abort();
    }
}

/* Scans p in pieces of step bytes and checks it ends where a one-shot scan
 * does (unless p is not JSON at all, which each hands over as it stands). */
static void check_scan(const char *p, size_t len, size_t step)
{
    size_t ws = 0;
    while (ws < len && (p[ws] == ' ' || p[ws] == '\t' || p[ws] == '\r' || p[ws] == '\n'))
        ws++;
    if (ws < len && p[ws] != '{' && p[ws] != '[')
        return;
    size_t want = store_json_value_len(p, len);
    struct store_json_scan sc = STORE_JSON_SCAN_INIT;
    size_t got = 0;
    for (size_t have = 0; have < len && got == 0;) {
        have = have + step < len ? have + step : len;
        got = store_json_scan(&sc, p, have);
    }
    if (got != want) {
        fprintf(stderr, "incremental scan ended at %zu, one-shot at %zu\n", got, want);
        abort();
    }
}

static void decode_all(const json_t *resp)
{
    struct pier_err err = {0};
    struct store_range r;
    int rc = store_range_decode(resp, &r, &err);
    check_failed(rc, &err, NULL);
    store_range_release(&r);

    int64_t rev = 0, n = 0, id = 0;
    struct store_kv *prev = NULL;
    rc = store_put_decode(resp, &rev, &prev, &err);
    check_failed(rc, &err, prev);
    if (rc == 0 && (rev < 0 || rev == INT64_MAX))
        abort();
    store_kv_free(prev);

    rc = store_delete_decode(resp, &n, &rev, &err);
    check_failed(rc, &err, NULL);

    struct store_txn_result *tr = NULL;
    rc = store_txn_decode(resp, &tr, &err);
    check_failed(rc, &err, tr);
    store_txn_result_free(tr);

    rc = store_lease_grant_decode("fuzz", resp, &id, &err);
    check_failed(rc, &err, NULL);
    rc = store_lease_keepalive_decode(resp, 7, &n, &err);
    check_failed(rc, &err, NULL);

    struct store_lease_info *li = NULL;
    rc = store_lease_info_decode("fuzz", resp, 7, &li, &err);
    check_failed(rc, &err, li);
    store_lease_info_free(li);
}

static void fuzz_answer(unsigned pick, const char *p, size_t len)
{
    static const long statuses[] = {200, 200, 200, 400, 404, 412, 503, 500};
    json_t *resp = NULL;
    struct pier_err err = {0};
    int rc = store_parse_answer("fuzz", statuses[pick & 7], p, len, &resp, &err);
    check_failed(rc, &err, resp);
    if (rc == 0)
        decode_all(resp);
    json_decref(resp);
}

static void fuzz_watch(size_t step, const char *p, size_t len)
{
    struct store_watch_opts o = {.prefix = true, .start_revision = 1 + (int64_t)(step & 3)};
    struct store_watch *w = store_watch_new(store, "/a", &o);
    struct pier_err err = {0};
    for (size_t off = 0; off < len; off += step) {
        size_t n = len - off < step ? len - off : step;
        if (store_watch_feed(w, p + off, n, &err) < 0)
            break;
    }
    /* what was queued comes out, none below where the watch started */
    int64_t from = o.start_revision;
    struct store_events *evs = NULL;
    if (store_watch_queued(w) > 0 && store_watch_next(w, 0, &evs, &err) == 0) {
        for (size_t i = 0; i < evs->n; i++)
            if (evs->ev[i].kv.mod_revision < from || evs->ev[i].kv.mod_revision == INT64_MAX)
                abort();
        store_events_free(evs);
    }
    store_watch_close(w);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const char *p = (const char *)data + 1;
    size_t len = size - 1;
    size_t step = (size_t)(data[0] >> 1) + 1;
    check_scan(p, len, step);
    if (data[0] & 1)
        fuzz_watch(step, p, len);
    else
        fuzz_answer(data[0] >> 1, p, len);
    return 0;
}
