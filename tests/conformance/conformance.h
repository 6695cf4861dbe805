/* conformance: what the store client's conformance tests share. The
 * program (test_store_client.c) opens the store named by PIER_STORE and
 * works under a key prefix of its own; watch_lease.c holds the tests of
 * watches, leases and compaction, client_faults.c those of the client
 * against a fake server that misbehaves. */
#ifndef PIER_CONFORMANCE_H
#define PIER_CONFORMANCE_H

#include <stddef.h>
#include <stdint.h>

#include "lib/store.h"

/* The store under test, and this run's key prefix ("/pier-conformance/.../"). */
extern struct store *st;
extern char run_prefix[128];

/* Writes "<run prefix><name>" into out and returns it. */
const char *key_of(char *out, size_t size, const char *name);
/* Declares const char *var = the run's key for name. */
#define K(var, name)                                                                               \
    char var##_buf[256];                                                                           \
    const char *var = key_of(var##_buf, sizeof(var##_buf), name)

int64_t now_ms(void);
void sleep_ms(int ms);
/* Puts a text value, failing the test on error; returns the revision. */
int64_t put(const char *key, const char *value);
/* Asserts that kv holds exactly the text value. */
void assert_value(const struct store_kv *kv, const char *value);
/* Collects up to want events (copies of key and value, prev dropped) within
 * timeout_ms; returns how many came (more than want means extras came). */
size_t collect(struct store_watch *w, struct store_event *out, size_t want, int timeout_ms);
/* Frees the copies collect made. */
void release(struct store_event *ev, size_t n);
/* Asserts that no event comes within ms. */
void assert_no_event(struct store_watch *w, int ms);

/* watch_lease.c */
void test_watch_replay(void **state);
void test_watch_key_prev_kv(void **state);
void test_watch_resume(void **state);
void test_watch_timeout(void **state);
void test_lease_expiry(void **state);
void test_lease_revoke(void **state);
void test_lease_keeper(void **state);
void test_compaction(void **state);

/* client_faults.c */
void test_client_failover_on_timeout(void **state);
void test_client_failover_no_leader(void **state);
void test_client_watch_silence(void **state);
void test_client_watch_next_deadline(void **state);
void test_client_watch_big_message(void **state);
void test_client_bad_revisions(void **state);
void test_client_keeper_loss_in_time(void **state);

#endif
