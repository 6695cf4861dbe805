// fuzz-sources: src/controller/check.c src/scheduler/jobbuild.c src/host/jobspec.c
// fuzz-sources: src/lib/discover.c src/lib/store.c src/lib/store_watch.c src/lib/store_lease.c
// fuzz-sources: src/lib/httpc.c src/lib/clock.c src/lib/jsonx.c src/lib/buf.c src/lib/err.c
// fuzz-sources: src/lib/log.c src/lib/base64.c src/lib/uuid.c
// fuzz-flags: -ljansson -lcurl -lcrypto -lpthread
/* fuzz_newjob: Flynn NewJob bodies (POST /apps/:app/jobs), fed through
 * what the controller does with them before placing the job: check_newjob,
 * then jobbuild_spec with a stored app, release and artifact, then
 * check_job_runnable. The first byte says how: bit 0 an attached job
 * (Upgrade: flynn-attach/0), bit 1 a release with an env of its own; the
 * rest is the body.
 *
 * Beyond crashes and sanitizer reports it checks: every refusal, at each
 * step, is PIER_EINVAL with a message (and check_newjob leaves nothing to
 * free); what check_newjob accepts has a release id and a command with a
 * non-empty first word; and a job that passes all three is one the host
 * agent takes (jobspec_parse, with the id and host the placement adds),
 * keeping the tty, stdin and log choices the body made. */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "controller/check.h"
#include "host/jobspec.h"
#include "lib/jsonx.h"
#include "lib/log.h"
#include "lib/uuid.h"
#include "scheduler/jobbuild.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_newjob: check failed: %s (line %d)\n", #cond, __LINE__);         \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define APP_ID "0b7a0e38-3c1f-4f6e-9f56-2f6f4e1c8a11"
#define ART_ID "c1889f55-c244-43ce-af70-ead357daa6ec"
#define HOST_ID "h1"
#define JOB_ID HOST_ID "-77e9e956-ecf9-427f-a031-222c2f394fb8"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    log_set_level(LOG_ERROR);
    return 0;
}

static void refused(int rc, const struct pier_err *err)
{
    CHECK(rc == PIER_EINVAL && err->code == rc && err->msg[0]);
}

/* The job as the agent reads it, against what the body asked for. */
static void check_agent_takes(const json_t *job, const json_t *body, bool attach)
{
    json_t *rec = json_deep_copy(job);
    json_object_set_new(rec, "host_id", json_string(HOST_ID));
    json_object_set_new(rec, "id", json_string(JOB_ID));
    struct jobspec *s = NULL;
    struct pier_err err = {0};
    int rc = jobspec_parse(rec, &s, &err);
    if (rc != 0)
        fprintf(stderr, "fuzz_newjob: the agent refuses the job: %s\n", err.msg);
    CHECK(rc == 0);
    bool tty = json_is_true(json_object_get(body, "tty"));
    bool nolog = json_is_true(json_object_get(body, "disable_log"));
    CHECK(s->tty == tty);
    CHECK(s->stdin_open == (tty || attach));
    CHECK(s->disable_log == (nolog && !attach));
    CHECK(s->slug && strcmp(s->slug, "https://blobs.example/slug.tgz") == 0);
    jobspec_free(s);
    json_decref(rec);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    bool attach = data[0] & 1, rel_env = data[0] & 2;
    json_t *body = NULL;
    if (jsonx_parse_object((const char *)data + 1, size - 1, &body, NULL) < 0)
        return 0;
    struct check_newjob nj;
    struct pier_err err = {0};
    int rc = check_newjob(body, attach, &nj, &err);
    if (rc < 0) {
        refused(rc, &err);
        CHECK(!nj.args);
        json_decref(body);
        return 0;
    }
    CHECK(nj.release && uuid_ok(nj.release));
    CHECK(json_array_size(nj.args) >= 1 && json_string_length(json_array_get(nj.args, 0)) > 0);
    CHECK(nj.oneoff.args == nj.args);
    CHECK(nj.log_hidden == (attach && json_is_true(json_object_get(body, "disable_log"))));

    /* What the handler reads from the store, then jobbuild. */
    json_t *app = json_pack("{s:s,s:s}", "id", APP_ID, "name", "my-app");
    json_t *rel = json_pack("{s:s,s:[s],s:{s:{s:[s]}}}", "id", nj.release, "artifacts", ART_ID,
                            "processes", "web", "args", "web");
    if (rel_env && nj.release_env)
        json_object_set_new(rel, "env",
                            json_pack("{s:s,s:s}", "DATABASE_URL", "postgres://x", "PORT", "5000"));
    json_t *arts = json_pack("[{s:s,s:s,s:s}]", "id", ART_ID, "type", "file", "uri",
                             "https://blobs.example/slug.tgz");
    json_t *job = NULL;
    rc = jobbuild_spec(app, rel, arts, NULL, &nj.oneoff, &job, &err);
    if (rc == 0)
        rc = check_job_runnable(job, &err);
    if (rc < 0)
        refused(rc, &err);
    else
        check_agent_takes(job, body, attach);
    json_decref(job);
    json_decref(arts);
    json_decref(rel);
    json_decref(app);
    check_newjob_clear(&nj);
    json_decref(body);
    return 0;
}
