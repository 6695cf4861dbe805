// fuzz-sources: src/store/mvcc.c src/store/mvcc_db.c src/store/mvcc_kv.c
// fuzz-sources: src/store/mvcc_lease.c src/store/mvcc_parse.c src/store/mvcc_rec.c
// fuzz-sources: src/store/mvcc_watch.c src/lib/jsonx.c src/lib/buf.c src/lib/err.c
// fuzz-sources: src/lib/log.c src/lib/base64.c src/store/mvcc_upkeep.c src/lib/clock.c
// fuzz-flags: -ljansson -lsqlite3 -lpthread
/* fuzz_store_request: what a client can send to `pierd store`, fed to the
 * real engine. The first byte picks the endpoint, the rest is the request
 * body, parsed as server.c parses it.
 *
 * Beyond crashes and sanitizer reports it checks the engine's promises: a
 * request that fails changes nothing (the revision stays), a request that
 * succeeds answers a JSON object with a header, and a watch can be created
 * and read from whatever start it was given. Leases are kept from expiring
 * during a run, since expiry would move the revision under that check. The
 * engine lives for the whole
 * run in a tmpfs folder, where fsync costs nothing, so the fuzzer reaches
 * deep states (history, leases, compaction) at thousands of runs a second. */
#include <ftw.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/jsonx.h"
#include "lib/log.h"
#include "store/mvcc.h"

typedef int (*call_fn)(struct mvcc *m, const json_t *req, json_t **resp, struct pier_err *err);

static const call_fn calls[] = {
    mvcc_range,
    mvcc_put,
    mvcc_delete_range,
    mvcc_txn,
    mvcc_compact,
    mvcc_lease_grant,
    mvcc_lease_revoke,
    mvcc_lease_keepalive,
    mvcc_lease_timetolive,
};
#define N_CALLS (sizeof(calls) / sizeof(calls[0]))

static struct mvcc *engine;
static char dir[64];

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void shut_down(void)
{
    mvcc_close(engine);
    engine = NULL;
    nftw(dir, rm_one, 8, FTW_DEPTH | FTW_PHYS);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    log_set_level(LOG_ERROR);
    snprintf(dir, sizeof(dir), "%s/pier-fuzz-store-XXXXXX",
             access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
    if (!mkdtemp(dir))
        abort();
    struct mvcc_options opt = {.auto_compact_revisions = 1000};
    struct pier_err err = {0};
    if (mvcc_open(dir, &opt, &engine, &err) < 0) {
        fprintf(stderr, "fuzz_store_request: %s\n", err.msg);
        abort();
    }
    atexit(shut_down);
    return 0;
}

static void check_watch(const json_t *req)
{
    struct mvcc_watch *w = NULL;
    json_t *created = NULL;
    struct pier_err err = {0};
    if (mvcc_watch_create(engine, req, &w, &created, &err) < 0)
        return;
    if (!json_is_object(created))
        abort();
    json_decref(created);
    /* A few reads: history replay, the compacted answer, or nothing. */
    for (int i = 0; i < 3; i++) {
        json_t *resp = NULL;
        int rc = mvcc_watch_next(w, 0, &resp);
        if (resp && !json_is_object(resp))
            abort();
        json_decref(resp);
        if (rc < 0)
            break;
    }
    mvcc_watch_free(w);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    unsigned pick = data[0] % (N_CALLS + 1);
    json_t *req = NULL;
    if (jsonx_parse_object((const char *)data + 1, size - 1, &req, NULL) < 0)
        return 0;
    if (pick == N_CALLS) {
        check_watch(req);
        json_decref(req);
        return 0;
    }
    if (calls[pick] == mvcc_lease_grant) {
        /* A lease that expired in the background would change the revision
         * under the check below: keep every valid TTL past the run's end
         * (malformed ones still reach the parser). */
        int64_t ttl;
        if (jsonx_get_int64(req, "TTL", &ttl, NULL) >= 0) /* absent (the minimum) or valid */
            json_object_set_new(req, "TTL", json_string("3600"));
    }
    int64_t before = mvcc_revision(engine);
    json_t *resp = NULL;
    struct pier_err err = {0};
    int rc = calls[pick](engine, req, &resp, &err);
    if (rc < 0) {
        /* A refused request changes nothing, and says why. */
        int64_t after = mvcc_revision(engine);
        if (after != before || resp || !err.msg[0]) {
            fprintf(
                stderr,
                "refused request broke a promise: rc=%d msg=\"%s\" revision %lld -> %lld resp=%p\n",
                rc, err.msg, (long long)before, (long long)after, (void *)resp);
            abort();
        }
    } else if (!json_is_object(resp) || !json_is_object(json_object_get(resp, "header"))) {
        abort();
    }
    json_decref(resp);
    json_decref(req);
    return 0;
}
