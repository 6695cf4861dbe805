/* store_load: writes keys through the store client for crash tests.
 *
 *   store_load put PREFIX N      puts PREFIX0..PREFIX{N-1} (value "v<i>") one
 *                                after another, printing "ack <i> <rev>" after
 *                                each acknowledged write; stops at the first
 *                                failure (exit 1) or after N (exit 0)
 *   store_load check PREFIX N    exits 0 if the keys that ack lines named
 *                                (read from stdin) all exist with their values
 * The store is $PIER_STORE. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/store.h"

static int put(struct store *s, const char *prefix, long n)
{
    char key[256], val[64];
    for (long i = 0; i < n; i++) {
        snprintf(key, sizeof(key), "%s%ld", prefix, i);
        int len = snprintf(val, sizeof(val), "v%ld", i);
        int64_t rev = 0;
        struct pier_err err = {0};
        if (store_put(s, key, val, (size_t)len, 0, &rev, &err) < 0) {
            fprintf(stderr, "store_load: put %s: %s\n", key, err.msg);
            return 1;
        }
        printf("ack %ld %" PRId64 "\n", i, rev);
        fflush(stdout);
    }
    return 0;
}

static int check(struct store *s, const char *prefix)
{
    char line[128], key[256], want[64];
    long i, checked = 0;
    int64_t rev;
    while (fgets(line, sizeof(line), stdin)) {
        if (sscanf(line, "ack %ld %" SCNd64, &i, &rev) != 2)
            continue;
        snprintf(key, sizeof(key), "%s%ld", prefix, i);
        snprintf(want, sizeof(want), "v%ld", i);
        struct store_kv *kv = NULL;
        struct pier_err err = {0};
        if (store_get(s, key, &kv, &err) < 0) {
            fprintf(stderr, "store_load: acknowledged key %s is lost: %s\n", key, err.msg);
            return 1;
        }
        int bad = kv->value_len != strlen(want) || memcmp(kv->value, want, kv->value_len) != 0 ||
                  kv->mod_revision != rev;
        store_kv_free(kv);
        if (bad) {
            fprintf(stderr, "store_load: key %s has the wrong value or revision\n", key);
            return 1;
        }
        checked++;
    }
    printf("checked %ld\n", checked);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 4 || (strcmp(argv[1], "put") != 0 && strcmp(argv[1], "check") != 0)) {
        fprintf(stderr, "usage: store_load put|check PREFIX N\n");
        return 2;
    }
    struct store *s = NULL;
    struct pier_err err = {0};
    if (store_open_env(&s, &err) < 0) {
        fprintf(stderr, "store_load: %s\n", err.msg);
        return 2;
    }
    int rc = strcmp(argv[1], "put") == 0 ? put(s, argv[2], atol(argv[3])) : check(s, argv[2]);
    store_close(s);
    return rc;
}
