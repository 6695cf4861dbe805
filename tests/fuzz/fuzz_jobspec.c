// fuzz-sources: src/host/jobspec.c src/lib/discover.c src/lib/store.c src/lib/store_watch.c
// fuzz-sources: src/lib/store_lease.c src/lib/httpc.c src/lib/clock.c src/lib/jsonx.c
// fuzz-sources: src/lib/buf.c src/lib/err.c src/lib/log.c src/lib/base64.c
// fuzz-flags: -ljansson -lcurl -lcrypto -lpthread
/* fuzz_jobspec: job records as a store (or whoever writes one) may hold
 * them, fed to jobspec_parse. The first byte picks the mode:
 *   even: the rest is the whole record;
 *   odd:  the rest is merged over a minimal valid record (id, host_id,
 *         args), so the fuzzer reaches the deeper fields without first
 *         having to find those three.
 * Every member value is also handed to jobspec_duration_ms.
 *
 * Beyond crashes and sanitizer reports it checks the header's promises: a
 * refusal is PIER_EINVAL with a message and hands nothing out; an accepted
 * spec keeps every limit and default the header states. */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "host/jobspec.h"
#include "lib/log.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_jobspec: check failed: %s (line %d)\n", #cond, __LINE__);        \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    log_set_level(LOG_ERROR);
    return 0;
}

static bool env_entry_ok(const char *e)
{
    const char *eq = strchr(e, '=');
    if (!eq || eq == e || (e[0] >= '0' && e[0] <= '9'))
        return false;
    for (const char *c = e; c < eq; c++)
        if (!((*c >= 'A' && *c <= 'Z') || (*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') ||
              *c == '_'))
            return false;
    return strlen(e) < JOBSPEC_MAX_STRING;
}

static void check_port(const struct jobspec_port *p)
{
    CHECK(p->port >= 0 && p->port <= 65535);
    CHECK(p->proto && (strcmp(p->proto, "tcp") == 0 || strcmp(p->proto, "udp") == 0));
    const struct jobspec_check *c = &p->check;
    if (!p->service) {
        CHECK(c->type == JOBSPEC_CHECK_NONE);
        return;
    }
    CHECK(strlen(p->service) >= 1 && strlen(p->service) <= 100);
    if (c->type == JOBSPEC_CHECK_NONE) {
        CHECK(!c->path);
        return;
    }
    CHECK(strcmp(p->proto, "tcp") == 0);
    CHECK(c->interval_ms >= 100 && c->interval_ms <= 3600000);
    CHECK(c->timeout_ms >= 10 && c->timeout_ms <= 3600000);
    CHECK(c->threshold >= 1 && c->threshold <= 100);
    CHECK(c->status == 0 || (c->status >= 100 && c->status <= 599));
    if (c->type == JOBSPEC_CHECK_HTTP)
        CHECK(c->path && c->path[0] == '/');
    else
        CHECK(c->type == JOBSPEC_CHECK_TCP && !c->path);
}

static void check_spec(const struct jobspec *s)
{
    CHECK(jobspec_id_ok(s->id, s->host_id));
    CHECK(s->stop_grace_ms >= 0 && s->stop_grace_ms <= 3600000);
    CHECK(s->n_args >= 1 && s->n_args <= JOBSPEC_MAX_ARGS && !s->args[s->n_args]);
    CHECK(s->args[0][0] != '\0');
    size_t bytes = 0;
    for (size_t i = 0; i < s->n_args; i++) {
        CHECK(strlen(s->args[i]) < JOBSPEC_MAX_STRING);
        bytes += strlen(s->args[i]) + 1;
    }
    CHECK(s->n_env <= JOBSPEC_MAX_ENV && !s->env[s->n_env]);
    for (size_t i = 0; i < s->n_env; i++) {
        CHECK(env_entry_ok(s->env[i]));
        bytes += strlen(s->env[i]) + 1;
    }
    CHECK(bytes <= JOBSPEC_MAX_EXEC);
    CHECK(s->working_dir && s->working_dir[0] == '/');
    CHECK(!s->stack || strcmp(s->stack, "host") == 0 || s->stack[0] == '/');
    CHECK(!s->stack || !strstr(s->stack, "/../"));
    CHECK(!s->slug || strncmp(s->slug, "http://", 7) == 0 || strncmp(s->slug, "https://", 8) == 0 ||
          strncmp(s->slug, "file:///", 8) == 0);
    CHECK(s->memory >= JOBSPEC_MIN_MEMORY);
    CHECK(s->cpu >= 1 && s->max_fd >= 1 && s->max_procs >= 1);
    CHECK(s->n_ports <= JOBSPEC_MAX_PORTS && s->ports);
    for (size_t i = 0; i < s->n_ports; i++)
        check_port(&s->ports[i]);
    CHECK(s->tty_columns >= 1 && s->tty_columns <= 65535);
    CHECK(s->tty_lines >= 1 && s->tty_lines <= 65535);
    CHECK(!s->tty || s->stdin_open);
}

static void check_durations(const json_t *j)
{
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)j, k, v)
    {
        int64_t ms = -1;
        struct pier_err err = {0};
        int rc = jobspec_duration_ms(v, &ms, &err);
        if (rc == 0)
            CHECK(ms >= 0);
        else
            CHECK(rc == PIER_EINVAL && err.code == rc && err.msg[0] && ms == -1);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    bool merge = data[0] & 1;
    json_t *in = json_loadb((const char *)data + 1, size - 1,
                            JSON_DECODE_ANY | JSON_ALLOW_NUL | JSON_REJECT_DUPLICATES, NULL);
    if (!in)
        return 0;
    json_t *rec = in;
    if (merge && json_is_object(in)) {
        rec = json_pack("{s:s, s:s, s:[s]}", "id", "h1-a", "host_id", "h1", "args", "/bin/x");
        json_object_update(rec, in);
        json_decref(in);
    }
    struct jobspec *s = (struct jobspec *)&size; /* must be overwritten */
    struct pier_err err = {0};
    int rc = jobspec_parse(rec, &s, &err);
    if (rc == 0) {
        CHECK(s != NULL);
        check_spec(s);
        jobspec_free(s);
    } else {
        CHECK(rc == PIER_EINVAL && err.code == rc && err.msg[0] && s == NULL);
    }
    if (json_is_object(rec))
        check_durations(rec);
    json_decref(rec);
    return 0;
}
