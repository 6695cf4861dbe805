/* transfer: the network side of pierslug, through the stack's curl and
 * tar, with nothing held in memory: downloads pipe curl into tar, uploads
 * pipe tar through pierslug (which counts and hashes the bytes) into curl.
 * curl's and tar's messages go to memfds and come back in pierslug's. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "build/sha256.h"
#include "build/slug.h"
#include "lib/cleanup.h"

/* curl's common flags, right after "curl": no .curlrc (-q must come
 * first), quiet but for errors, and give up on a peer that does not
 * answer or stalls (under 1 KiB/s for 60 s). Each use adds how it fails on
 * an HTTP error status. */
#define CURL_FLAGS                                                                                 \
    "-q", "-sS", "--connect-timeout", "10", "--speed-limit", "1024", "--speed-time", "60"

const char *slug_url_shown(const char *url, char *buf, size_t size)
{
    const char *start = url;
    const char *scheme = strstr(url, "://");
    size_t lead = 0;
    if (scheme) {
        lead = (size_t)(scheme + 3 - url);
        size_t alen = strcspn(scheme + 3, "/?#");
        const char *at = memchr(scheme + 3, '@', alen);
        if (at)
            start = at + 1;
        else
            start = url + lead;
    }
    /* A query may hold a signature; a fragment is a buildpack's ref. */
    size_t rest = strcspn(start, "?#");
    const char *frag = strchr(start + rest, '#');
    snprintf(buf, size, "%.*s%.*s%.100s", (int)lead, url, (int)(rest > 400 ? 400 : rest), start,
             frag ? frag : "");
    return buf;
}

static void close_pair(int p[2])
{
    for (int i = 0; i < 2; i++)
        if (p[i] >= 0)
            close(p[i]);
    p[0] = p[1] = -1;
}

/* What an error body says: the message of Flynn's error JSON, else its
 * first line (printable ASCII only), up to 300 bytes; "" when empty. */
static void body_message(int body_fd, char *out, size_t size)
{
    struct buf body = BUF_INIT;
    out[0] = '\0';
    if (body_fd >= 0 && proc_read_all(body_fd, &body, 65536) == 0 && body.p) {
        json_t *j = json_loads(body.p, 0, NULL);
        const char *msg = json_string_value(json_object_get(j, "message"));
        if (msg)
            snprintf(out, size, "%.300s", msg);
        else
            snprintf(out, size, "%.*s", (int)strcspn(body.p, "\r\n"), body.p);
        json_decref(j);
    }
    buf_free(&body);
    for (char *c = out; *c; c++)
        if ((unsigned char)*c < ' ' || (unsigned char)*c > '~')
            *c = '?';
}

/* The error of a curl that exited non-zero: 404 is PIER_ENOTFOUND. The
 * body of an error answer (body_fd, when curl kept it) adds its message. */
static int curl_error(int status, int err_fd, int body_fd, const char *what, const char *shown,
                      struct pier_err *err)
{
    char line[400], st[64], msg[301];
    proc_last_line(err_fd, line, sizeof(line));
    if (strstr(line, "error: 404"))
        return err_set(err, PIER_ENOTFOUND, "%s %s: not found (404)", what, shown);
    const char *why = line;
    if (strncmp(why, "curl: ", 6) == 0)
        why += 6;
    if (strncmp(why, "(22) ", 5) == 0) /* curl's code for an HTTP error status */
        why += 5;
    if (!*why)
        why = proc_status_str(status, st, sizeof(st));
    body_message(body_fd, msg, sizeof(msg));
    return err_set(err, PIER_EUNAVAIL, "%s %s: %s%s%s", what, shown, why, msg[0] ? ": " : "", msg);
}

int slug_fetch_tar(const char *url, const char *dir, bool gzip, struct pier_err *err)
{
    char shown[512];
    slug_url_shown(url, shown, sizeof(shown));
    cleanup_close int curl_err = proc_memfd("curl", err);
    cleanup_close int tar_err = curl_err >= 0 ? proc_memfd("tar", err) : -1;
    if (tar_err < 0)
        return err->code;
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0)
        return err_set(err, -errno, "pipe: %s", strerror(errno));
    const char *curl_argv[] = {"curl", CURL_FLAGS, "-f", "-L", "--max-redirs", "5", url, NULL};
    const char *tar_argv[] = {"tar", gzip ? "-xzf" : "-xf", "-", "-C",
                              dir,   "--no-same-owner",     NULL};
    struct proc_opts co = {.argv = curl_argv, .in = -1, .out = p[1], .err = curl_err, .tool = true};
    struct proc_opts to = {
        .argv = tar_argv, .in = p[0], .out = tar_err, .err = tar_err, .tool = true};
    pid_t curl_pid = -1, tar_pid = -1;
    int rc = proc_spawn(&co, &curl_pid, err);
    if (rc == 0)
        rc = proc_spawn(&to, &tar_pid, err);
    close_pair(p);
    if (rc < 0) {
        if (curl_pid > 0) {
            kill(curl_pid, SIGKILL);
            proc_wait(curl_pid);
        }
        return rc;
    }
    int cs = proc_wait(curl_pid), ts = proc_wait(tar_pid);
    /* A tar that gave up makes curl fail to write (its exit 23): then
     * tar's reason is the one. */
    bool curl_lost_tar = WIFEXITED(cs) && WEXITSTATUS(cs) == 23;
    if (cs != 0 && !(ts != 0 && curl_lost_tar))
        return curl_error(cs, curl_err, -1, "fetching", shown, err);
    if (ts != 0) {
        char line[400], st[64];
        proc_last_line(tar_err, line, sizeof(line));
        return err_set(err, PIER_EINVAL, "%s: cannot unpack it: %s", shown,
                       line[0] ? line : proc_status_str(ts, st, sizeof(st)));
    }
    return 0;
}

/* Copies tar's output (from) to curl (to), counting and hashing. Returns
 * 0 at tar's EOF, -EFBIG past max, or the errno of a failed write (curl
 * went away). */
static int pump_upload(int from, int to, int64_t max, struct sha256 *h, int64_t *size)
{
    char chunk[65536];
    for (;;) {
        ssize_t n = read(from, chunk, sizeof(chunk));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        if (n == 0)
            return 0;
        if (max > 0 && *size + n > max)
            return -EFBIG;
        sha256_update(h, chunk, (size_t)n);
        *size += n;
        int rc = fs_write_all(to, chunk, (size_t)n);
        if (rc < 0)
            return rc;
    }
}

/* When the blobstore answers its {"path","size","sha256"}, the hash it
 * computed must be ours: the bytes arrived as they left. */
static int check_answer(int out_fd, const char *sha, const char *shown, struct pier_err *err)
{
    struct buf b = BUF_INIT;
    int rc = proc_read_all(out_fd, &b, 65536);
    json_t *j = rc == 0 && b.p ? json_loads(b.p, 0, NULL) : NULL;
    buf_free(&b);
    const char *theirs = json_string_value(json_object_get(j, "sha256"));
    rc = 0;
    if (theirs && strcmp(theirs, sha) != 0)
        rc = err_set(err, PIER_EPROTO, "uploading %s: the server stored SHA-256 %.64s, we sent %s",
                     shown, theirs, sha);
    json_decref(j);
    return rc;
}

int slug_upload_dir(const char *dir, const char *url, int64_t max, struct slug_upload *res,
                    struct pier_err *err)
{
    char shown[512];
    slug_url_shown(url, shown, sizeof(shown));
    cleanup_close int tar_err = proc_memfd("tar", err);
    cleanup_close int curl_out = tar_err >= 0 ? proc_memfd("curl-out", err) : -1;
    cleanup_close int curl_err = curl_out >= 0 ? proc_memfd("curl-err", err) : -1;
    if (curl_err < 0)
        return err->code;
    int a[2] = {-1, -1}, b[2] = {-1, -1};
    if (pipe2(a, O_CLOEXEC) < 0 || pipe2(b, O_CLOEXEC) < 0) {
        int e = errno;
        close_pair(a);
        return err_set(err, -e, "pipe: %s", strerror(e));
    }
    const char *tar_argv[] = {"tar", "-czf", "-", "-C", dir, ".", NULL};
    /* curl sends "Expect: 100-continue" and waits for the answer before
     * the body: a refusal (an expired signature, the wrong key) comes back
     * as the blobstore's error, not as a broken pipe in the middle. */
    const char *curl_argv[] = {
        "curl", CURL_FLAGS, "--fail-with-body", "-T", "-", "-H", "Content-Type: application/gzip",
        url,    NULL};
    struct proc_opts to = {.argv = tar_argv, .in = -1, .out = a[1], .err = tar_err, .tool = true};
    struct proc_opts co = {
        .argv = curl_argv, .in = b[0], .out = curl_out, .err = curl_err, .tool = true};
    pid_t tar_pid = -1, curl_pid = -1;
    int rc = proc_spawn(&co, &curl_pid, err);
    if (rc == 0)
        rc = proc_spawn(&to, &tar_pid, err);
    close(a[1]);
    close(b[0]);
    a[1] = b[0] = -1;
    if (rc < 0) {
        if (curl_pid > 0) {
            kill(curl_pid, SIGKILL); /* before it sees the end of its input */
            proc_wait(curl_pid);
        }
        close_pair(a);
        close_pair(b);
        return rc;
    }
    struct sha256 h;
    sha256_init(&h);
    res->size = 0;
    int prc = pump_upload(a[0], b[1], max, &h, &res->size);
    if (prc < 0 && prc != -EPIPE)
        kill(tar_pid, SIGKILL);
    close_pair(a);
    int ts = proc_wait(tar_pid);
    /* tar's status 1 means a file changed while it read it: a warning. */
    bool tar_ok = WIFEXITED(ts) && WEXITSTATUS(ts) <= 1;
    if ((prc < 0 && prc != -EPIPE) || (prc == 0 && !tar_ok)) {
        /* Stop curl before its input ends, or it would finish the upload
         * of a cut slug. */
        kill(curl_pid, SIGKILL);
        proc_wait(curl_pid);
        close_pair(b);
        if (prc == -EFBIG)
            return err_set(err, PIER_ETOOBIG, "larger than %lld bytes compressed", (long long)max);
        if (prc < 0)
            return err_set(err, prc, "packing %s: reading tar's output: %s", dir, strerror(-prc));
        char line[400], st[64];
        proc_last_line(tar_err, line, sizeof(line));
        return err_set(err, PIER_EINTERNAL, "packing %s: %s", dir,
                       line[0] ? line : proc_status_str(ts, st, sizeof(st)));
    }
    close_pair(b);
    int cs = proc_wait(curl_pid);
    if (cs != 0 || prc < 0)
        return curl_error(cs, curl_err, curl_out, "uploading to", shown, err);
    sha256_final_hex(&h, res->sha256);
    if (WEXITSTATUS(ts) == 1) {
        char line[400];
        proc_last_line(tar_err, line, sizeof(line));
        out_detail("warning: %s", line);
    }
    return check_answer(curl_out, res->sha256, shown, err);
}
