/* hook: `pierd gitreceive hook`, the pre-receive hook of every app's
 * repository (docs/gitreceive.md; the build and deploy: pipeline.h).
 *
 * git gives it one "OLD NEW REF" line per pushed ref on stdin and relays
 * its output to the pusher as "remote: ..." lines; a non-zero exit refuses
 * the push (no ref is updated). A push to main or master builds and
 * deploys (pipeline.h); other refs are accepted as they are. Pushes to one
 * app wait for each other on DIR/locks/<app>.lock, so two builds of one
 * app never race to release. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "git/gitreceive.h"
#include "git/pipeline.h"
#include "lib/buf.h"
#include "lib/cleanup.h"

#define DEFAULT_BUILD_TIMEOUT 900
/* How long a push waits for the one before it to move its ref. */
#define PREVIOUS_WAIT_MS 10000
#define ZEROS "0000000000000000000000000000000000000000"

static bool deploys(const char *ref)
{
    return strcmp(ref, "refs/heads/main") == 0 || strcmp(ref, "refs/heads/master") == 0;
}

static bool all_zeros(const char *rev)
{
    return strspn(rev, "0") == strlen(rev);
}

/* The settings from the environment gitrecv_env() made. */
static int settings(struct pipeline *p)
{
    static const char *const names[] = {"PIER_APP", "PIER_CONTROLLER", "PIER_KEY", "PIER_BLOBSTORE",
                                        "PIER_GIT_DIR"};
    const char *v[5];
    for (int i = 0; i < 5; i++) {
        v[i] = getenv(names[i]);
        if (!v[i] || !*v[i])
            return pipe_fail("pierd gitreceive hook: %s is not set (pierd gitreceive runs "
                             "this hook with it)",
                             names[i]);
    }
    if (!gitrecv_app_name_ok(v[0]))
        return pipe_fail("pierd gitreceive hook: PIER_APP \"%s\" is not an app name", v[0]);
    *p = (struct pipeline){.app = v[0],
                           .controller = v[1],
                           .key = v[2],
                           .blobstore = v[3],
                           .dir = v[4],
                           .build_timeout = DEFAULT_BUILD_TIMEOUT};
    const char *t = getenv("PIER_BUILD_TIMEOUT");
    if (t && *t) {
        char *end = NULL;
        long n = strtol(t, &end, 10);
        if (*end || n < 1 || n > 86400)
            return pipe_fail("PIER_BUILD_TIMEOUT \"%s\" is not a number of seconds (1-86400)", t);
        p->build_timeout = (int)n;
    }
    return 0;
}

/* The commit ref (refs/heads/main or master) points at in the repository
 * git runs the hook in, or "" when it does not exist. */
static void ref_now(const char *ref, char out[64])
{
    out[0] = '\0';
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "git rev-parse --verify -q '%s^{commit}'", ref);
    FILE *f = popen(cmd, "r");
    if (!f)
        return;
    if (fgets(out, 64, f))
        out[strcspn(out, "\n")] = '\0';
    pclose(f);
}

/* The lock file says "REF NEW" after a push deployed NEW: git moves REF
 * only after the hook exited (and so let go of the lock), so the next push
 * waits for that before it looks at REF. Then the lock file is emptied. */
static void wait_previous(int fd)
{
    char text[256] = "", ref[200], rev[64], now[64];
    ssize_t n = pread(fd, text, sizeof(text) - 1, 0);
    if (n > 0 && sscanf(text, "%199s %63s", ref, rev) == 2 && deploys(ref)) {
        for (int i = 0; i < PREVIOUS_WAIT_MS / 100 && !pipeline_stopped(); i++) {
            ref_now(ref, now);
            if (strcmp(now, rev) == 0)
                break;
            usleep(100 * 1000);
        }
    }
    if (ftruncate(fd, 0) < 0) { /* a stale note costs the next push a wait only */
    }
}

/* Takes the app's lock (held until the process exits); -1 on failure or
 * when a signal ended the wait (printed). *lock_fd gets the lock file. */
static int lock_app(const struct pipeline *p, int *lock_fd)
{
    cleanup_buf struct buf path = BUF_INIT;
    buf_printf(&path, "%s/locks", p->dir);
    if (mkdir(path.p, 0700) < 0 && errno != EEXIST)
        return -pipe_fail("Cannot make %s: %s", path.p, strerror(errno));
    buf_printf(&path, "/%s.lock", p->app);
    int fd = open(path.p, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return -pipe_fail("Cannot open %s: %s", path.p, strerror(errno));
    *lock_fd = fd;
    if (flock(fd, LOCK_EX | LOCK_NB) == 0)
        return 0;
    if (errno != EWOULDBLOCK)
        return -pipe_fail("Cannot lock %s: %s", path.p, strerror(errno));
    pipe_say("Waiting for another push to %s to finish", p->app);
    while (flock(fd, LOCK_EX) < 0) {
        if (errno != EINTR || pipeline_stopped())
            return -pipe_fail("The push was cancelled while it waited");
    }
    return 0;
}

/* Builds and deploys NEW for ref, whose value the pusher saw was old. */
static int deploy(const struct pipeline *p, const char *ref, const char *old, const char *new)
{
    int fd = -1;
    if (lock_app(p, &fd) < 0)
        return 1;
    wait_previous(fd);
    /* Another push may have moved ref while this one waited: git would
     * refuse this one's update after the build, so refuse it now. */
    char now[64];
    ref_now(ref, now);
    if (strcmp(now, all_zeros(old) ? "" : old) != 0) {
        pipe_fail("%s changed while this push waited (another push to %s came first)", ref, p->app);
        return pipe_fail("Fetch it, merge or rebase, and push again");
    }
    int rc = pipeline_run(p, new);
    if (rc == 0) {
        char note[600];
        int n = snprintf(note, sizeof(note), "%s %s\n", ref, new);
        if (pwrite(fd, note, (size_t)n, 0) < 0) { /* the next push only waits less */
        }
    }
    return rc;
}

int gitrecv_hook_main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    setvbuf(stdout, NULL, _IOLBF, 0);
    char line[1024];
    char rev[64] = "", old_rev[64] = "", deploy_ref[512] = "";
    while (fgets(line, sizeof(line), stdin)) {
        char old[64], new[64], ref[512];
        if (sscanf(line, "%63s %63s %511s", old, new, ref) != 3)
            continue;
        if (!deploys(ref))
            pipe_say("Not deploying %s: only main or master deploys", ref);
        else if (all_zeros(new))
            pipe_say("Not deploying %s: it is being deleted", ref);
        else if (*deploy_ref)
            pipe_say("Not deploying %s: %s deploys in this push", ref, deploy_ref);
        else if (strlen(new) != strlen(ZEROS) || strspn(new, "0123456789abcdef") != strlen(new))
            return pipe_fail("%s: \"%s\" is not a commit id", ref, new);
        else {
            snprintf(rev, sizeof(rev), "%s", new);
            snprintf(old_rev, sizeof(old_rev), "%s", old);
            snprintf(deploy_ref, sizeof(deploy_ref), "%s", ref);
        }
    }
    if (!*rev)
        return 0;
    struct pipeline p;
    if (settings(&p) != 0)
        return 1;
    pipeline_signals();
    return deploy(&p, deploy_ref, old_rev, rev);
}
