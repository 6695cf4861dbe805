/* pier keys: the SSH public keys allowed to git push over SSH. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/api.h"
#include "cli/cli.h"
#include "cli/ui.h"
#include "lib/cleanup.h"

#define KEY_FILE_MAX (64 * 1024)
#define FP_PREFIX "SHA256:"
#define KEYGEN_HINT "make a key pair with 'ssh-keygen -t ed25519', then 'pier keys add'"

static const char *const default_files[] = {"id_ed25519.pub", "id_rsa.pub", "id_ecdsa.pub"};

/* The key types the controller accepts (docs/controller.md, POST /keys). */
static bool known_type(const char *t, size_t n)
{
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
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++)
        if (strlen(types[i]) == n && memcmp(types[i], t, n) == 0)
            return true;
    return false;
}

/* Reads the one public key line of path into line. Returns 0, or 1 after
 * printing what is wrong with the file and how to get a good one. */
static int read_key_file(const char *path, struct buf *line)
{
    cleanup_close int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return ui_fail(errno == ENOENT ? KEYGEN_HINT : NULL, "cannot read the key file %s: %s",
                       path, strerror(errno));
    cleanup_buf struct buf text = BUF_INIT;
    char chunk[4096];
    ssize_t n;
    while ((n = read(fd, chunk, sizeof(chunk))) != 0) {
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return ui_fail(NULL, "cannot read the key file %s: %s", path, strerror(errno));
        if (text.len + (size_t)n > KEY_FILE_MAX)
            return ui_fail(KEYGEN_HINT, "%s is too big to be an SSH public key", path);
        buf_append(&text, chunk, (size_t)n);
    }
    if (text.p && strstr(text.p, "PRIVATE KEY"))
        return ui_fail("give the public half, which ssh-keygen writes next to it as FILE.pub",
                       "%s is a private key; pier only needs (and only takes) the public key",
                       path);
    int found = 0;
    for (char *p = text.p, *next; p && *p; p = next) {
        next = p + strcspn(p, "\n");
        if (*next)
            *next++ = '\0';
        p[strcspn(p, "\r")] = '\0';
        p += strspn(p, " \t");
        if (*p == '\0' || *p == '#')
            continue;
        if (found++ == 0)
            buf_puts(line, p);
    }
    if (found > 1)
        return ui_fail("give a file with one key, such as ~/.ssh/id_ed25519.pub",
                       "%s holds %d keys; add them one at a time", path, found);
    const char *l = line->p ? line->p : "";
    size_t tl = strcspn(l, " \t");
    const char *blob = l + tl + strspn(l + tl, " \t");
    if (!found || !known_type(l, tl) || *blob == '\0') {
        cleanup_buf struct buf shown = BUF_INIT;
        cleanup_free char *start = strndup(l, tl > 40 ? 40 : tl);
        api_put_clean(&shown, start);
        if (!found)
            return ui_fail(KEYGEN_HINT, "%s is not an SSH public key (it holds no key line)", path);
        return ui_fail(KEYGEN_HINT,
                       "%s is not an SSH public key (it starts with \"%s\", not a key type such "
                       "as ssh-ed25519)",
                       path, shown.p);
    }
    return 0;
}

/* The first of ~/.ssh/id_ed25519.pub, id_rsa.pub, id_ecdsa.pub there is
 * (new string), or NULL after printing where it looked. */
static char *default_key_file(void)
{
    const char *home = getenv("HOME");
    if (!home || !*home) {
        ui_fail("name the file: pier keys add FILE", "HOME is not set, so there is no ~/.ssh");
        return NULL;
    }
    for (size_t i = 0; i < sizeof(default_files) / sizeof(default_files[0]); i++) {
        struct buf b = BUF_INIT;
        buf_printf(&b, "%s/.ssh/%s", home, default_files[i]);
        struct stat st;
        if (stat(b.p, &st) == 0)
            return buf_detach(&b);
        buf_free(&b);
    }
    ui_fail("make one with 'ssh-keygen -t ed25519', or name the file: pier keys add FILE",
            "no SSH public key found: looked for %s/.ssh/id_ed25519.pub, id_rsa.pub and "
            "id_ecdsa.pub",
            home);
    return NULL;
}

/* Prints "SHA256:... (comment)" of a key record. */
static void put_key(struct buf *out, const json_t *k)
{
    api_put_clean(out, json_string_value(json_object_get(k, "id")));
    const char *comment = json_string_value(json_object_get(k, "comment"));
    if (comment && *comment) {
        buf_puts(out, " (");
        api_put_clean(out, comment);
        buf_putc(out, ')');
    }
}

/* After a 409: which of the cluster's keys is the one in line ("TYPE
 * BASE64" is the record's "key"). */
static void say_duplicate(struct api *a, const char *line, const char *path)
{
    cleanup_json json_t *keys = NULL;
    struct pier_err err = {0};
    size_t tl = strcspn(line, " \t");
    size_t bs = tl + strspn(line + tl, " \t");
    size_t bl = strcspn(line + bs, " \t");
    cleanup_buf struct buf want = BUF_INIT, shown = BUF_INIT;
    buf_append(&want, line, tl);
    buf_putc(&want, ' ');
    buf_append(&want, line + bs, bl);
    size_t i;
    json_t *k;
    if (api_get(a, "/keys", &keys, &err) == 0)
        json_array_foreach(keys, i, k)
        {
            const char *have = json_string_value(json_object_get(k, "key"));
            if (have && strcmp(have, want.p) == 0)
                put_key(&shown, k);
        }
    ui_fail("'pier keys' lists the keys", "key already added: %s is %s", path,
            shown.len ? shown.p : "already one of the cluster's keys");
}

static int keys_add(struct api *a, const char *file)
{
    cleanup_free char *dflt = NULL;
    if (!file && !(file = dflt = default_key_file()))
        return 1;
    cleanup_buf struct buf line = BUF_INIT;
    if (read_key_file(file, &line) != 0 || !line.p) /* a line when it returns 0 */
        return 1;
    cleanup_json json_t *body = json_pack("{s:s}", "key", line.p);
    cleanup_json json_t *got = NULL;
    struct pier_err err = {0};
    if (api_send(a, "POST", "/keys", body, &got, &err) < 0) {
        if (err.code == PIER_EEXISTS) {
            say_duplicate(a, line.p, file);
            return 1;
        }
        return api_fail(a, &err);
    }
    cleanup_buf struct buf shown = BUF_INIT;
    put_key(&shown, got);
    printf("Added key %s from %s\n", shown.p, file);
    return 0;
}

/* The fingerprint as the controller's path takes it: without "SHA256:",
 * '/' and '+' spelled '_' and '-' (no escaping needed), no padding.
 * Returns false when fp cannot be a fingerprint. */
static bool fp_path(struct buf *out, const char *fp)
{
    if (strncmp(fp, FP_PREFIX, strlen(FP_PREFIX)) == 0)
        fp += strlen(FP_PREFIX);
    size_t n = strlen(fp);
    while (n > 0 && fp[n - 1] == '=')
        n--;
    if (n == 0 || n > 128)
        return false;
    buf_puts(out, "/keys/");
    for (size_t i = 0; i < n; i++) {
        char ch = fp[i];
        if (ch == '/' || ch == '+')
            ch = ch == '/' ? '_' : '-';
        else if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                   (ch >= '0' && ch <= '9') || ch == '_' || ch == '-'))
            return false;
        buf_putc(out, ch);
    }
    return true;
}

static int keys_remove(struct api *a, const char *fp)
{
    cleanup_buf struct buf path = BUF_INIT, shown = BUF_INIT;
    api_put_clean(&shown, fp);
    fp_path(&path, fp); /* checked by cli_keys */
    cleanup_json json_t *got = NULL;
    struct pier_err err = {0};
    if (api_send(a, "DELETE", path.p, NULL, &got, &err) < 0) {
        if (err.code == PIER_ENOTFOUND)
            return ui_fail("'pier keys' lists the keys", "no key %s on this cluster", shown.p);
        return api_fail(a, &err);
    }
    buf_reset(&shown);
    put_key(&shown, got);
    printf("Removed key %s\n", shown.len ? shown.p : fp);
    return 0;
}

static int keys_list(struct api *a, bool json)
{
    cleanup_json json_t *keys = NULL;
    struct pier_err err = {0};
    if (api_get(a, "/keys", &keys, &err) < 0)
        return api_fail(a, &err);
    if (!json_is_array(keys))
        return ui_fail(NULL, "GET /keys: the controller sent something other than a list");
    api_sort_by(keys, "created_at", false);
    if (json) {
        json_dumpf(keys, stdout, JSON_INDENT(2));
        putchar('\n');
        return 0;
    }
    if (json_array_size(keys) == 0) {
        fprintf(stderr, "no SSH keys yet; add yours with 'pier keys add [FILE]'\n");
        return 0;
    }
    printf("%-50s %-24s %s\n", "FINGERPRINT", "COMMENT", "CREATED");
    size_t i;
    json_t *k;
    json_array_foreach(keys, i, k)
    {
        cleanup_buf struct buf id = BUF_INIT, comment = BUF_INIT, created = BUF_INIT;
        api_put_clean(&id, json_string_value(json_object_get(k, "id")));
        const char *c = json_string_value(json_object_get(k, "comment"));
        api_put_clean(&comment, c && *c ? c : "-");
        api_ago(&created, json_string_value(json_object_get(k, "created_at")));
        printf("%-50s %-24s %s\n", id.p, comment.p, created.p);
    }
    return 0;
}

int cli_keys(struct cli *c)
{
    const char *sub = c->argc > 0 ? c->argv[0] : "list";
    int rc;
    bool json = false;
    if (strcmp(sub, "list") == 0 || strcmp(sub, "--json") == 0) {
        for (int i = strcmp(sub, "list") == 0 && c->argc > 0 ? 1 : 0; i < c->argc; i++) {
            if (strcmp(c->argv[i], "--json") != 0)
                return ui_usage("keys", "keys takes only --json, not \"%s\"", c->argv[i]);
            json = true;
        }
    } else if (strcmp(sub, "add") == 0) {
        if (c->argc > 2)
            return ui_usage("keys", "keys add takes at most one FILE");
    } else if (strcmp(sub, "remove") == 0) {
        if (c->argc != 2)
            return ui_usage("keys", "keys remove needs one FINGERPRINT");
        cleanup_buf struct buf path = BUF_INIT, shown = BUF_INIT;
        if (!fp_path(&path, c->argv[1])) {
            api_put_clean(&shown, c->argv[1]);
            return ui_usage("keys",
                            "\"%s\" is not a key fingerprint (SHA256:... as 'pier keys' shows it)",
                            shown.p);
        }
    } else {
        return ui_usage("keys", "unknown keys subcommand \"%s\"", sub);
    }
    struct api a;
    rc = api_start(&a, c, NULL, false);
    if (rc == 0) {
        if (strcmp(sub, "add") == 0)
            rc = keys_add(&a, c->argc > 1 ? c->argv[1] : NULL);
        else if (strcmp(sub, "remove") == 0)
            rc = keys_remove(&a, c->argv[1]);
        else
            rc = keys_list(&a, json);
    }
    api_close(&a);
    return rc;
}
