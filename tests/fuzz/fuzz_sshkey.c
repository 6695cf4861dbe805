// fuzz-sources: src/controller/check.c src/scheduler/jobbuild.c src/host/jobspec.c
// fuzz-sources: src/lib/discover.c src/lib/store.c src/lib/store_watch.c src/lib/store_lease.c
// fuzz-sources: src/lib/httpc.c src/lib/clock.c src/lib/jsonx.c src/lib/buf.c src/lib/err.c
// fuzz-sources: src/lib/log.c src/lib/base64.c src/lib/uuid.c
// fuzz-flags: -ljansson -lcurl -lcrypto -lpthread
/* fuzz_sshkey: SSH public key lines as POST /keys takes them, fed to
 * check_ssh_key. The first byte picks the mode:
 *   even: the rest is the whole line;
 *   odd:  the line is built as "TYPE BASE64 COMMENT": TYPE one of the known
 *         types (by the second byte), BASE64 the encoding of a blob whose
 *         first field names TYPE and whose rest is the input up to a
 *         newline, COMMENT what follows it. So the fuzzer works on the blob
 *         itself rather than on having to spell its base64.
 *
 * Beyond crashes and sanitizer reports it checks what the store record
 * needs: a refusal is PIER_EINVAL with a message and hands nothing out; an
 * accepted key has its fingerprint as id ("SHA256:" and 43 characters of
 * base64), "TYPE BASE64" as key, a comment without control characters or
 * surrounding blanks, and reading its key again gives the same id. */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "controller/check.h"
#include "lib/base64.h"
#include "lib/buf.h"
#include "lib/log.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_sshkey: check failed: %s (line %d)\n", #cond, __LINE__);         \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static const char *const types[] = {
    "ssh-ed25519",
    "ssh-rsa",
    "ssh-dss",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
};
#define N_TYPES (sizeof(types) / sizeof(*types))

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    log_set_level(LOG_ERROR);
    return 0;
}

static bool known_type(const char *s, size_t n)
{
    for (size_t i = 0; i < N_TYPES; i++)
        if (strlen(types[i]) == n && memcmp(types[i], s, n) == 0)
            return true;
    return false;
}

static bool b64_char(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' ||
           c == '/';
}

static void check_key(const json_t *k)
{
    CHECK(json_is_object(k) && json_object_size(k) == 3);
    const char *id = json_string_value(json_object_get(k, "id"));
    const char *key = json_string_value(json_object_get(k, "key"));
    const char *comment = json_string_value(json_object_get(k, "comment"));
    CHECK(id && key && comment);
    CHECK(strncmp(id, "SHA256:", 7) == 0 && strlen(id) == 7 + 43);
    for (const char *c = id + 7; *c; c++)
        CHECK(b64_char(*c));
    const char *sp = strchr(key, ' ');
    CHECK(sp && known_type(key, (size_t)(sp - key)) && sp[1] && !strchr(sp + 1, ' '));
    for (const char *c = comment; *c; c++)
        CHECK((unsigned char)*c >= ' ' || *c == '\t');
    size_t cl = strlen(comment);
    CHECK(cl == 0 || (!strchr(" \t", comment[0]) && !strchr(" \t", comment[cl - 1])));

    /* The stored key line reads back to the same fingerprint. */
    json_t *again = NULL;
    struct pier_err err = {0};
    CHECK(check_ssh_key(key, &again, &err) == 0);
    CHECK(json_equal(json_object_get(again, "id"), json_object_get(k, "id")));
    CHECK(json_equal(json_object_get(again, "key"), json_object_get(k, "key")));
    CHECK(strcmp(json_string_value(json_object_get(again, "comment")), "") == 0);
    json_decref(again);
}

/* The odd mode's line: see the comment on top. */
static char *built_line(const uint8_t *data, size_t size)
{
    const char *type = types[size > 1 ? data[1] % N_TYPES : 0];
    data += size > 1 ? 2 : size;
    size -= size > 1 ? 2 : size;
    const uint8_t *nl = memchr(data, '\n', size);
    size_t blen = nl ? (size_t)(nl - data) : size;
    struct buf blob = BUF_INIT, line = BUF_INIT;
    uint32_t tl = (uint32_t)strlen(type);
    unsigned char be[4] = {(unsigned char)(tl >> 24), (unsigned char)(tl >> 16),
                           (unsigned char)(tl >> 8), (unsigned char)tl};
    buf_append(&blob, be, 4);
    buf_puts(&blob, type);
    buf_append(&blob, data, blen);
    buf_printf(&line, "%s ", type);
    base64_encode(&line, blob.p, blob.len);
    if (nl) {
        buf_putc(&line, ' ');
        buf_append(&line, nl + 1, size - blen - 1);
    }
    buf_free(&blob);
    return buf_detach(&line);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    char *line = NULL;
    if (data[0] & 1) {
        line = built_line(data, size);
    } else {
        line = malloc(size);
        memcpy(line, data + 1, size - 1);
        line[size - 1] = '\0';
    }
    json_t *k = (json_t *)&size; /* must stay untouched on a refusal */
    struct pier_err err = {0};
    int rc = check_ssh_key(line, &k, &err);
    if (rc == 0) {
        check_key(k);
        json_decref(k);
    } else {
        CHECK(rc == PIER_EINVAL && err.code == rc && err.msg[0] && k == (json_t *)&size);
    }
    free(line);
    return 0;
}
