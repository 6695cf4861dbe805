#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "lib/cleanup.h"
#include "scheduler/placement.h"

#define MIB (INT64_C(1024) * 1024)

/* An up host with total/allocated in MiB, no tags, no jobs of the kind. */
static struct placement_host host(const char *id, int64_t total_mib, int64_t alloc_mib)
{
    return (struct placement_host){
        .id = id, .memory_total = total_mib * MIB, .memory_allocated = alloc_mib * MIB, .up = true};
}

static struct placement_job job(int64_t mem_mib)
{
    return (struct placement_job){.app = "shop", .type = "web", .memory = mem_mib * MIB};
}

static void test_spread_beats_free_memory(void **state)
{
    (void)state;
    struct placement_host hs[] = {host("h1", 8192, 0), host("h2", 1024, 0), host("h3", 2048, 0)};
    hs[0].same_kind = 2;
    hs[1].same_kind = 1;
    hs[2].same_kind = 1;
    struct placement_job j = job(256);
    struct pier_err err = {0};
    /* h1 has the most room but already runs two webs: h3 (1 web, more free). */
    assert_int_equal(placement_pick(hs, 3, &j, &err), 2);
    hs[1].same_kind = 0;
    assert_int_equal(placement_pick(hs, 3, &j, &err), 1);
}

static void test_free_memory_among_equals(void **state)
{
    (void)state;
    struct placement_host hs[] = {host("h1", 4096, 3072), host("h2", 4096, 1024),
                                  host("h3", 2048, 0)};
    struct placement_job j = job(128);
    struct pier_err err = {0};
    assert_int_equal(placement_pick(hs, 3, &j, &err), 1); /* 3 GiB free */
}

static void test_tie_lowest_id(void **state)
{
    (void)state;
    struct placement_host hs[] = {host("hc", 1024, 0), host("ha", 1024, 0), host("hb", 1024, 0)};
    struct placement_job j = job(128);
    struct pier_err err = {0};
    assert_int_equal(placement_pick(hs, 3, &j, &err), 1);
    /* Order of the list does not matter. */
    struct placement_host rev[] = {hs[2], hs[1], hs[0]};
    assert_int_equal(placement_pick(rev, 3, &j, &err), 1);
}

static void test_tags(void **state)
{
    (void)state;
    cleanup_json json_t *za = json_pack("{s:s}", "zone", "a");
    cleanup_json json_t *zb_ssd = json_pack("{s:s,s:s}", "zone", "b", "disk", "ssd");
    cleanup_json json_t *want_b = json_pack("{s:s}", "zone", "b");
    cleanup_json json_t *empty = json_object();
    struct placement_host hs[] = {host("h1", 8192, 0), host("h2", 1024, 0), host("h3", 4096, 0)};
    hs[0].tags = za;
    hs[1].tags = zb_ssd; /* h3 has no tags */
    struct placement_job j = job(128);
    struct pier_err err = {0};

    /* Match: only h2 has zone=b (an extra host tag is fine). */
    j.tags = want_b;
    assert_int_equal(placement_pick(hs, 3, &j, &err), 1);
    /* Formation without tags (NULL or {}): any host, so the most free. */
    j.tags = NULL;
    assert_int_equal(placement_pick(hs, 3, &j, &err), 0);
    j.tags = empty;
    assert_int_equal(placement_pick(hs, 3, &j, &err), 0);
    /* Mismatch: nobody has zone=b; the message lists what hosts have. */
    hs[1].tags = za;
    j.tags = want_b;
    assert_int_equal(placement_pick(hs, 3, &j, &err), PIER_EUNAVAIL);
    assert_int_equal(err.code, PIER_EUNAVAIL);
    assert_string_equal(
        err.msg, "no host has tags zone=b for shop/web (hosts: h1 zone=a, h2 zone=a, h3 none)");
    /* A value that differs only in type does not match. */
    cleanup_json json_t *num = json_pack("{s:i}", "zone", 1);
    cleanup_json json_t *want_str1 = json_pack("{s:s}", "zone", "1");
    hs[0].tags = num;
    j.tags = want_str1;
    assert_int_equal(placement_pick(hs, 1, &j, &err), PIER_EUNAVAIL);
}

static void test_memory_boundary(void **state)
{
    (void)state;
    struct placement_host hs[] = {host("h1", 1024, 512)};
    struct placement_job j = job(512);
    struct pier_err err = {0};
    assert_int_equal(placement_pick(hs, 1, &j, &err), 0); /* free == needed */
    hs[0].memory_allocated += 1;                          /* one byte short */
    assert_int_equal(placement_pick(hs, 1, &j, &err), PIER_EUNAVAIL);
    assert_string_equal(
        err.msg,
        "no host has 512 MiB free for shop/web (most free: h1 with 536870911 bytes of 1024 MiB; "
        "1 host checked)");
    /* A host already over-committed takes nothing, not even a 0-byte job. */
    hs[0].memory_allocated = 2048 * MIB;
    j.memory = 0;
    assert_int_equal(placement_pick(hs, 1, &j, &err), PIER_EUNAVAIL);
}

static void test_memory_message(void **state)
{
    (void)state;
    cleanup_json json_t *zb = json_pack("{s:s}", "zone", "b");
    struct placement_host hs[] = {host("h1", 4096, 0), host("h2", 1024, 768),
                                  host("h3", 1024, 896)};
    hs[1].tags = zb;
    hs[2].tags = zb;
    struct placement_job j = job(512);
    j.tags = zb;
    struct pier_err err = {0};
    /* h1 has room but not the tag: the message talks of h2 and h3 only. */
    assert_int_equal(placement_pick(hs, 3, &j, &err), PIER_EUNAVAIL);
    assert_string_equal(err.msg, "no host with tags zone=b has 512 MiB free for shop/web (most "
                                 "free: h2 with 256 MiB of 1024 MiB; 2 hosts checked)");
}

static void test_down_hosts_skipped(void **state)
{
    (void)state;
    struct placement_host hs[] = {host("h1", 8192, 0), host("h2", 1024, 0)};
    hs[0].up = false;
    struct placement_job j = job(128);
    struct pier_err err = {0};
    assert_int_equal(placement_pick(hs, 2, &j, &err), 1);
    hs[1].up = false;
    assert_int_equal(placement_pick(hs, 2, &j, &err), PIER_EUNAVAIL);
    assert_string_equal(err.msg, "no host is up to run shop/web (2 known, all down)");
    /* Down hosts are not offered as "most free" either. */
    hs[0].up = true;
    j.memory = 16384 * MIB;
    assert_int_equal(placement_pick(hs, 2, &j, &err), PIER_EUNAVAIL);
    assert_non_null(strstr(err.msg, "most free: h1"));
    assert_non_null(strstr(err.msg, "1 host checked"));
}

static void test_empty_list(void **state)
{
    (void)state;
    struct placement_job j = job(128);
    struct pier_err err = {0};
    assert_int_equal(placement_pick(NULL, 0, &j, &err), PIER_EUNAVAIL);
    assert_non_null(strstr(err.msg, "no host is registered"));
    assert_int_equal(placement_pick(NULL, 0, &j, NULL), PIER_EUNAVAIL);
}

static void test_bad_job(void **state)
{
    (void)state;
    struct placement_host hs[] = {host("h1", 1024, 0)};
    struct placement_job j = job(128);
    struct pier_err err = {0};
    j.memory = -1;
    assert_int_equal(placement_pick(hs, 1, &j, &err), PIER_EINVAL);
    cleanup_json json_t *arr = json_array();
    j.memory = 0;
    j.tags = arr;
    assert_int_equal(placement_pick(hs, 1, &j, &err), PIER_EINVAL);
}

/* Many hosts with long tags: the message stays bounded and says how many
 * were left out. */
static void test_message_bounded(void **state)
{
    (void)state;
    enum { N = 500 };
    static struct placement_host hs[N];
    static char ids[N][16];
    cleanup_json json_t *tags = json_object();
    char longv[200];
    memset(longv, 'x', sizeof(longv) - 1);
    longv[sizeof(longv) - 1] = '\0';
    json_object_set_new(tags, "zone", json_string(longv)); /* stolen */
    for (int i = 0; i < N; i++) {
        snprintf(ids[i], sizeof(ids[i]), "h%d", i);
        hs[i] = host(ids[i], 1024, 0);
        hs[i].tags = tags;
    }
    cleanup_json json_t *want = json_pack("{s:s}", "zone", "b");
    struct placement_job j = job(128);
    j.tags = want;
    struct pier_err err = {0};
    assert_int_equal(placement_pick(hs, N, &j, &err), PIER_EUNAVAIL);
    assert_true(strlen(err.msg) < sizeof(err.msg));
    assert_non_null(strstr(err.msg, "no host has tags zone=b"));
    assert_non_null(strstr(err.msg, "h0 zone=xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx..., h1"));
    assert_non_null(strstr(err.msg, ", and 494 more)"));

    /* Short tags: the same shape. */
    cleanup_json json_t *za = json_pack("{s:s}", "zone", "a");
    for (int i = 0; i < N; i++)
        hs[i].tags = za;
    assert_int_equal(placement_pick(hs, N, &j, &err), PIER_EUNAVAIL);
    assert_non_null(strstr(err.msg, ", and 494 more)"));
}

static void test_from_record(void **state)
{
    (void)state;
    struct pier_err err = {0};
    struct placement_host h;
    cleanup_json json_t *rec = json_loads(
        "{\"id\":\"h1\",\"addr\":\"127.0.0.1:1113\",\"ip\":\"10.0.0.1\",\"tags\":{\"zone\":\"a\"},"
        "\"memory\":{\"total\":1073741824,\"allocated\":268435456},\"cpu\":{\"total\":2000},"
        "\"jobs\":3}",
        0, NULL);
    assert_non_null(rec);
    assert_int_equal(placement_host_from_record(rec, &h, &err), 0);
    assert_string_equal(h.id, "h1");
    assert_true(h.up);
    assert_int_equal(h.same_kind, 0);
    assert_int_equal(h.memory_total, 1024 * MIB);
    assert_int_equal(h.memory_allocated, 256 * MIB);
    assert_string_equal(json_string_value(json_object_get(h.tags, "zone")), "a");

    /* No tags is a host without tags; memory as decimal strings is read. */
    cleanup_json json_t *untagged = json_loads(
        "{\"id\":\"h2\",\"memory\":{\"total\":\"1048576\",\"allocated\":\"0\"}}", 0, NULL);
    assert_int_equal(placement_host_from_record(untagged, &h, &err), 0);
    assert_null(h.tags);
    assert_int_equal(h.memory_total, MIB);

    struct {
        const char *json, *want;
    } bad[] = {
        {"[]", "not an object"},
        {"{\"memory\":{\"total\":1,\"allocated\":0}}", "'id'"},
        {"{\"id\":\"\",\"memory\":{\"total\":1,\"allocated\":0}}", "'id'"},
        {"{\"id\":7,\"memory\":{\"total\":1,\"allocated\":0}}", "'id'"},
        {"{\"id\":\"h1\"}", "'memory'"},
        {"{\"id\":\"h1\",\"memory\":5}", "'memory'"},
        {"{\"id\":\"h1\",\"memory\":{\"allocated\":0}}", "memory.total"},
        {"{\"id\":\"h1\",\"memory\":{\"total\":-1,\"allocated\":0}}", "memory.total"},
        {"{\"id\":\"h1\",\"memory\":{\"total\":1}}", "memory.allocated"},
        {"{\"id\":\"h1\",\"memory\":{\"total\":1,\"allocated\":\"x\"}}", "memory.allocated"},
        {"{\"id\":\"h1\",\"memory\":{\"total\":1,\"allocated\":0},\"tags\":[]}", "tags"},
        {"{\"id\":\"h1\",\"memory\":{\"total\":1,\"allocated\":0},\"tags\":{\"z\":1}}", "tag 'z'"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        cleanup_json json_t *b = json_loads(bad[i].json, JSON_DECODE_ANY, NULL);
        assert_non_null(b);
        err.msg[0] = '\0';
        assert_int_equal(placement_host_from_record(b, &h, &err), PIER_EINVAL);
        if (!strstr(err.msg, bad[i].want))
            fail_msg("%s: message '%s' lacks '%s'", bad[i].json, err.msg, bad[i].want);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_spread_beats_free_memory),
        cmocka_unit_test(test_free_memory_among_equals),
        cmocka_unit_test(test_tie_lowest_id),
        cmocka_unit_test(test_tags),
        cmocka_unit_test(test_memory_boundary),
        cmocka_unit_test(test_memory_message),
        cmocka_unit_test(test_down_hosts_skipped),
        cmocka_unit_test(test_empty_list),
        cmocka_unit_test(test_bad_job),
        cmocka_unit_test(test_message_bounded),
        cmocka_unit_test(test_from_record),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
