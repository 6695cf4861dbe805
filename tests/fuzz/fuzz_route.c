// fuzz-sources: src/controller/check.c src/controller/check_route.c src/scheduler/jobbuild.c
// fuzz-sources: src/host/jobspec.c
// fuzz-sources: src/lib/discover.c src/lib/store.c src/lib/store_watch.c src/lib/store_lease.c
// fuzz-sources: src/lib/httpc.c src/lib/clock.c src/lib/jsonx.c src/lib/buf.c src/lib/err.c
// fuzz-sources: src/lib/log.c src/lib/base64.c src/lib/uuid.c
// fuzz-flags: -ljansson -lcurl -lcrypto -lpthread
/* fuzz_route: route bodies (POST /apps/:app/routes, PUT
 * /apps/:app/routes/:type/:id), fed to check_route. The input is JSON: an
 * object is a creation body; an array is a creation body and then update
 * bodies, each applied to the route the one before made (as a client
 * creating a route and then changing it).
 *
 * Beyond crashes and sanitizer reports (OpenSSL reads the certificates)
 * it checks what the route record and its index key need: a refusal is
 * PIER_EINVAL with a message and hands nothing out; an accepted route has
 * its type, id, parent_ref, app, service, created_at and updated_at, the
 * three flags the router reads as booleans; an http route a lower-case
 * domain without blanks and a path from '/' to '/', and a certificate
 * either in both of its forms or not at all; a tcp route a port and no
 * domain. An update keeps what identifies the route. */
#include <ctype.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "controller/check.h"
#include "lib/jsonx.h"
#include "lib/log.h"
#include "lib/uuid.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_route: check failed: %s (line %d)\n", #cond, __LINE__);          \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define APP_ID "0b7a0e38-3c1f-4f6e-9f56-2f6f4e1c8a11"
#define MAX_UPDATES 4

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    log_set_level(LOG_ERROR);
    return 0;
}

static const char *str(const json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

static void check_http(const json_t *rt)
{
    const char *d = str(rt, "domain"), *p = str(rt, "path");
    CHECK(d && p);
    size_t dl = strlen(d), pl = strlen(p);
    CHECK(dl >= 1 && dl <= 253);
    for (const char *c = d; *c; c++)
        CHECK((unsigned char)*c > ' ' && *c != 0x7f && !isupper((unsigned char)*c));
    CHECK(pl >= 1 && p[0] == '/' && p[pl - 1] == '/' && !strpbrk(p, " \t\r\n?#"));
    const json_t *cert = json_object_get(rt, "certificate");
    if (cert) {
        CHECK(json_is_object(cert));
        CHECK(str(cert, "cert") && *str(cert, "cert") && str(cert, "key") && *str(cert, "key"));
        CHECK(json_equal(json_object_get(cert, "cert"), json_object_get(rt, "tls_cert")));
        CHECK(json_equal(json_object_get(cert, "key"), json_object_get(rt, "tls_key")));
    } else {
        CHECK(!json_object_get(rt, "tls_cert") && !json_object_get(rt, "tls_key"));
    }
    const json_t *port = json_object_get(rt, "port");
    CHECK(!port || (json_is_integer(port) && json_integer_value(port) > 0 &&
                    json_integer_value(port) <= 65535));
}

static void check_tcp(const json_t *rt)
{
    const json_t *port = json_object_get(rt, "port");
    CHECK(json_is_integer(port) && json_integer_value(port) >= 0 &&
          json_integer_value(port) <= 65535);
    CHECK(!json_object_get(rt, "domain") && !json_object_get(rt, "certificate"));
}

static void check_route_rec(const json_t *rt)
{
    CHECK(json_is_object(rt));
    const char *type = str(rt, "type");
    CHECK(type && (strcmp(type, "http") == 0 || strcmp(type, "tcp") == 0));
    CHECK(str(rt, "id") && uuid_ok(str(rt, "id")));
    CHECK(str(rt, "app") && strcmp(str(rt, "app"), APP_ID) == 0);
    CHECK(str(rt, "parent_ref") && strcmp(str(rt, "parent_ref"), "controller/apps/" APP_ID) == 0);
    CHECK(str(rt, "service") && *str(rt, "service"));
    CHECK(str(rt, "created_at") && str(rt, "updated_at"));
    static const char *const flags[] = {"leader", "drain_backends", "disable_keep_alives"};
    for (size_t i = 0; i < sizeof(flags) / sizeof(*flags); i++)
        CHECK(json_is_boolean(json_object_get(rt, flags[i])));
    if (strcmp(type, "http") == 0) {
        CHECK(json_is_boolean(json_object_get(rt, "sticky")));
        check_http(rt);
    } else {
        check_tcp(rt);
    }
}

/* What an update may not change. */
static void check_same(const json_t *old, const json_t *rt)
{
    static const char *const kept[] = {"type",       "id",     "app", "parent_ref",
                                       "created_at", "domain", "path"};
    for (size_t i = 0; i < sizeof(kept) / sizeof(*kept); i++)
        CHECK(json_equal(json_object_get(old, kept[i]), json_object_get(rt, kept[i])) ||
              (!json_object_get(old, kept[i]) && !json_object_get(rt, kept[i])));
    if (strcmp(str(rt, "type"), "tcp") == 0)
        CHECK(json_equal(json_object_get(old, "port"), json_object_get(rt, "port")));
}

/* Applies body to old (NULL: creates); returns the new route or NULL. */
static json_t *step(const json_t *app, const json_t *body, const json_t *old)
{
    if (!json_is_object(body)) /* the handler reads only objects */
        return NULL;
    json_t *rt = (json_t *)&app; /* must stay untouched on a refusal */
    struct pier_err err = {0};
    int rc = check_route(body, app, old, &rt, &err);
    if (rc < 0) {
        CHECK(rc == PIER_EINVAL && err.code == rc && err.msg[0] && rt == (json_t *)&app);
        return NULL;
    }
    check_route_rec(rt);
    if (old)
        check_same(old, rt);
    return rt;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_t *in = NULL;
    if (jsonx_parse((const char *)data, size, &in, NULL) < 0)
        return 0;
    json_t *app = json_pack("{s:s,s:s}", "id", APP_ID, "name", "my-app");
    json_t *rt = NULL;
    if (json_is_object(in)) {
        rt = step(app, in, NULL);
    } else if (json_is_array(in) && json_array_size(in) > 0) {
        rt = step(app, json_array_get(in, 0), NULL);
        for (size_t i = 1; rt && i < json_array_size(in) && i <= MAX_UPDATES; i++) {
            json_t *next = step(app, json_array_get(in, i), rt);
            if (next) {
                json_decref(rt);
                rt = next;
            }
        }
    }
    json_decref(rt);
    json_decref(app);
    json_decref(in);
    return 0;
}
