/* hook: `pierd gitreceive hook`, the pre-receive hook of every app's
 * repository, and `pierd gitreceive hook post-receive`, its post-receive
 * hook (docs/gitreceive.md; the build and deploy: pipeline.h).
 *
 * pre-receive: git gives it one "OLD NEW REF" line per pushed ref on stdin
 * and relays its output to the pusher as "remote: ..." lines; a non-zero
 * exit refuses the push (no ref is updated). A push to main or master
 * builds and deploys (pipeline.h); other refs are accepted as they are.
 * Pushes to one app wait for each other, so two builds of one app never
 * race to release: on DIR/locks/<app id>.lock (flock) between pushes to
 * this receiver, and, with a store, on a key held under a lease between
 * receivers (/pier/v1/gitreceive/locks/<app id>).
 *
 * post-receive: once git moved the refs, the bare repository is archived
 * to the blobstore (repos/<app id>.tar), so it outlives this host. The
 * push has happened by then: a failure is a warning, never an error. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "git/gitreceive.h"
#include "git/pipeline.h"
#include "lib/buf.h"
#include "lib/cleanup.h"
#include "lib/discover.h"
#include "lib/httpc.h"
#include "lib/jsonx.h"
#include "lib/keys.h"
#include "lib/subproc.h"

/* How long a push waits for the one before it to move its ref. */
#define PREVIOUS_WAIT_MS 10000
#define ZEROS "0000000000000000000000000000000000000000"
/* The app's lock in the store: a key under a lease the hook keeps alive
 * while it runs, so a hook that dies lets go within the TTL. */
#define LOCK_TTL_S 10
/* Store failures in a row (about a second apart) a waiting push bears. */
#define STORE_TRIES 30
/* The most of git rev-parse's output kept. */
#define GIT_OUT_MAX 4096

static bool deploys(const char *ref)
{
    return strcmp(ref, "refs/heads/main") == 0 || strcmp(ref, "refs/heads/master") == 0;
}

static bool all_zeros(const char *rev)
{
    return strspn(rev, "0") == strlen(rev);
}

/* ---- the settings ---- */

static bool id_ok(const char *id)
{
    size_t n = strlen(id);
    return n > 0 && n <= PIPE_ID_MAX &&
           strspn(id, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_") == n;
}

/* The settings from the environment gitrecv_env() made. PIER_CONTROLLER
 * and PIER_BLOBSTORE may be empty when PIER_STORE is set: discovery has
 * them (setup). */
static int settings(struct pipeline *p)
{
    static const char *const names[] = {"PIER_APP", "PIER_CONTROLLER", "PIER_KEY", "PIER_BLOBSTORE",
                                        "PIER_GIT_DIR"};
    const char *store = getenv("PIER_STORE");
    p->store_url = store && *store ? store : NULL;
    const char *v[5];
    for (int i = 0; i < 5; i++) {
        v[i] = getenv(names[i]);
        if (v[i] && !*v[i])
            v[i] = NULL;
        bool discovered = (i == 1 || i == 3) && p->store_url;
        if (!v[i] && !discovered)
            return pipe_fail("pierd gitreceive hook: %s is not set (pierd gitreceive runs "
                             "this hook with it)",
                             names[i]);
    }
    if (!gitrecv_app_name_ok(v[0]))
        return pipe_fail("pierd gitreceive hook: PIER_APP \"%s\" is not an app name", v[0]);
    p->app = v[0];
    p->controller = v[1];
    p->key = v[2];
    p->flag_blobstore = v[3];
    p->dir = v[4];
    const char *id = getenv("PIER_APP_ID");
    if (id && *id) {
        if (!id_ok(id))
            return pipe_fail("pierd gitreceive hook: PIER_APP_ID \"%.80s\" is not an app id", id);
        snprintf(p->app_id, sizeof(p->app_id), "%s", id);
    }
    const char *t = getenv("PIER_BUILD_TIMEOUT");
    if (gitrecv_parse_timeout(t, &p->build_timeout) < 0)
        return pipe_fail("PIER_BUILD_TIMEOUT \"%.80s\" is not a number of seconds (1-%d)", t,
                         GITRECV_MAX_BUILD_TIMEOUT);
    return 0;
}

/* The app's id, from the controller when git did not give it. */
static int find_app_id(struct pipeline *p)
{
    if (*p->app_id)
        return 0;
    struct pier_err err = {0};
    cleanup_buf struct buf path = BUF_INIT;
    cleanup_json json_t *app = NULL;
    buf_printf(&path, "/apps/%s", p->app);
    int rc = pipe_ctl_status(p, "GET", path.p, NULL, &app, NULL, &err);
    if (rc == PIER_ENOTFOUND)
        return pipe_fail("app %s does not exist: create it with 'pier create %s'", p->app, p->app);
    if (rc < 0)
        return pipe_fail("Cannot read the app: %s", err.msg);
    const char *id = json_string_value(json_object_get(app, "id"));
    if (!id || !id_ok(id))
        return pipe_fail("The controller at %s sent app %s without a usable id", p->controller,
                         p->app);
    snprintf(p->app_id, sizeof(p->app_id), "%s", id);
    return 0;
}

/* The controller, when the receiver was given none: discovery's, looked
 * up now, at the start of the push, so a controller redeployed since the
 * last push is found where it is. Nothing has changed when it fails. */
static int find_controller(struct pipeline *p)
{
    if (p->controller)
        return 0;
    struct pier_err err = {0};
    if (gitrecv_discover(p->store, "controller", &p->found_controller, &err) < 0)
        return pipe_fail("%s", err.msg);
    p->controller = p->found_controller;
    return 0;
}

/* The blobstore: discovery's when there is a store, else the receiver's. */
static int find_blobstore(struct pipeline *p)
{
    struct pier_err err = {0};
    p->found = gitrecv_blobstore(p->store, p->flag_blobstore, &p->blobstore_from, &err);
    if (!p->found)
        return pipe_fail("%s", err.msg);
    p->blobstore = p->found;
    /* Without a flag the blobstore can only have come from discovery. */
    p->slug_base = p->flag_blobstore ? p->blobstore : "http://blobstore" DISCOVER_URL_DOMAIN;
    return 0;
}

/* The settings, the store, the controller (when needed: a pre-receive
 * hook always asks it), the app's id, the blobstore: 0, or 1 (printed). */
static int setup(struct pipeline *p, bool need_controller)
{
    p->h = httpc_new();
    if (settings(p) != 0)
        return 1;
    httpc_basic_auth(&p->auth, p->key);
    struct pier_err err = {0};
    if (p->store_url && store_open(p->store_url, &p->store, &err) < 0)
        return pipe_fail("PIER_STORE: %s", err.msg);
    if ((need_controller || !*p->app_id) && find_controller(p) != 0)
        return 1;
    if (find_app_id(p) != 0)
        return 1;
    return find_blobstore(p);
}

static void setup_free(struct pipeline *p)
{
    store_keeper_stop(p->lock, true); /* the lease's key goes with it */
    store_close(p->store);
    httpc_free(p->h);
    buf_free(&p->auth);
    free(p->found);
    free(p->found_controller);
}

/* ---- git ---- */

/* The commit ref (refs/heads/main or master) points at in the repository
 * git runs the hook in: 0 with out set ("" when the ref does not exist),
 * or < 0 with git's own words in why. */
static int ref_now(const char *ref, char out[64], struct buf *why)
{
    out[0] = '\0';
    cleanup_buf struct buf spec = BUF_INIT, text = BUF_INIT;
    buf_printf(&spec, "%s^{commit}", ref);
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) < 0) {
        buf_printf(why, "pipe: %s", strerror(errno));
        return -1;
    }
    char *argv[] = {"git", "rev-parse", "--verify", "-q", spec.p, NULL};
    const struct subproc sp = {.argv = argv, .in = SUBPROC_DEVNULL, .out = fds[1], .err = fds[1]};
    struct pier_err err = {0};
    pid_t pid;
    int rc = subproc_start(&sp, &pid, &err);
    close(fds[1]);
    if (rc < 0) {
        close(fds[0]);
        buf_puts(why, err.msg);
        return -1;
    }
    char chunk[512];
    ssize_t n;
    while ((n = read(fds[0], chunk, sizeof(chunk))) != 0) {
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            break;
        if (text.len < GIT_OUT_MAX)
            buf_append(&text, chunk, (size_t)n);
    }
    close(fds[0]);
    int status = subproc_wait(pid);
    while (text.len > 0 && (text.p[text.len - 1] == '\n' || text.p[text.len - 1] == ' '))
        text.p[--text.len] = '\0';
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    if (code == 0 && text.len > 0 && text.len < 64 && !strchr(text.p, '\n')) {
        memcpy(out, text.p, text.len + 1);
        return 0;
    }
    if (code == 1 && text.len == 0) /* --verify -q: no such ref */
        return 0;
    if (text.len)
        buf_printf(why, "git rev-parse %s: %s", spec.p, text.p);
    else
        buf_printf(why, "git rev-parse %s ended with status %d", spec.p, status);
    return -1;
}

/* ---- the locks ---- */

/* Takes the flock on DIR/locks/<name> (held until the process exits);
 * -1 on failure or when a signal ended the wait (printed). *waited says
 * whether the waiting line was printed (wait_line false: never). */
static int lock_file(const struct pipeline *p, const char *name, bool wait_line, bool *waited,
                     int *lock_fd)
{
    cleanup_buf struct buf path = BUF_INIT;
    buf_printf(&path, "%s/locks", p->dir);
    if (mkdir(path.p, 0700) < 0 && errno != EEXIST)
        return -pipe_fail("Cannot make %s: %s", path.p, strerror(errno));
    buf_printf(&path, "/%s", name);
    int fd = open(path.p, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return -pipe_fail("Cannot open %s: %s", path.p, strerror(errno));
    *lock_fd = fd;
    if (flock(fd, LOCK_EX | LOCK_NB) == 0)
        return 0;
    if (errno != EWOULDBLOCK)
        return -pipe_fail("Cannot lock %s: %s", path.p, strerror(errno));
    if (wait_line && !*waited)
        pipe_say("Waiting for another push to %s to finish", p->app);
    *waited = *waited || wait_line;
    while (flock(fd, LOCK_EX) < 0) {
        if (errno != EINTR || pipeline_stopped())
            return -pipe_fail("The push was cancelled while it waited");
    }
    return 0;
}

/* Waits until key is deleted at or after revision from, a signal came, or
 * the store failed (then the caller tries again). */
static void wait_deleted(struct pipeline *p, const char *key, int64_t from)
{
    struct store_watch_opts o = {.start_revision = from};
    struct store_watch *w = NULL;
    if (store_watch_open(p->store, key, &o, &w, NULL) < 0) {
        sleep(1);
        return;
    }
    bool gone = false;
    while (!gone && !pipeline_stopped() && !store_keeper_lost(p->lock)) {
        struct store_events *ev = NULL;
        int rc = store_watch_next(w, 1000, &ev, NULL);
        if (rc == PIER_ETIMEOUT)
            continue;
        if (rc < 0)
            break;
        for (size_t i = 0; i < ev->n; i++)
            gone = gone || ev->ev[i].type == STORE_EVENT_DELETE;
        store_events_free(ev);
    }
    store_watch_close(w);
}

/* The holder of a lock key, for the waiting pusher. */
static void say_holder(const struct store_kv *kv)
{
    cleanup_json json_t *v = NULL;
    if (!kv || jsonx_parse_object(kv->value, kv->value_len, &v, NULL) < 0)
        return;
    const char *host = json_string_value(json_object_get(v, "host"));
    const char *rev = json_string_value(json_object_get(v, "rev"));
    if (host && rev)
        pipe_detail("(a push of %.8s on %s is building)", rev, host);
}

/* Takes the app's lock in the store: its key created, if absent, under a
 * lease kept alive until the hook ends (setup_free). Without a store
 * there is none to take. -1 on failure (printed). */
static int lock_store(struct pipeline *p, const char *rev, bool *waited)
{
    if (!p->store)
        return 0;
    struct pier_err err = {0};
    cleanup_buf struct buf key = BUF_INIT, value = BUF_INIT;
    buf_printf(&key, KEYS_GITRECEIVE_LOCKS "%s", p->app_id);
    char host[256] = "";
    gethostname(host, sizeof(host) - 1);
    cleanup_json json_t *v =
        json_pack("{s:s,s:s,s:s,s:I,s:I}", "app", p->app, "rev", rev, "host", host, "pid",
                  (json_int_t)getpid(), "since", (json_int_t)time(NULL));
    jsonx_dump(&value, v);
    int64_t lease = 0;
    if (store_lease_grant(p->store, LOCK_TTL_S, &lease, &err) < 0 ||
        store_keeper_start(p->store, lease, LOCK_TTL_S, NULL, NULL, &p->lock, &err) < 0) {
        if (lease)
            store_lease_revoke(p->store, lease, NULL);
        return -pipe_fail("Cannot take %s's push lock in the store: %s", p->app, err.msg);
    }
    for (int fails = 0;;) {
        if (pipeline_stopped())
            return -pipe_fail("The push was cancelled while it waited");
        if (store_keeper_lost(p->lock))
            return -pipe_fail("Cannot keep %s's push lock in the store: its lease was lost",
                              p->app);
        struct store_txn *t = store_txn_new();
        store_txn_cmp(t, key.p, STORE_CMP_CREATE, STORE_EQ, 0);
        store_txn_put(t, STORE_THEN, key.p, value.p, value.len, lease);
        store_txn_get(t, STORE_ELSE, key.p, false);
        struct store_txn_result *res = NULL;
        int rc = store_txn_commit(p->store, t, &res, &err);
        store_txn_free(t);
        if (rc < 0) {
            if (++fails >= STORE_TRIES)
                return -pipe_fail("Cannot take %s's push lock in the store: %s", p->app, err.msg);
            sleep(1);
            continue;
        }
        fails = 0;
        bool held = res->succeeded;
        int64_t at = res->revision;
        if (!held && !*waited) {
            pipe_say("Waiting for another push to %s to finish", p->app);
            say_holder(res->n_gets && res->gets[0].n ? &res->gets[0].kvs[0] : NULL);
            *waited = true;
        }
        store_txn_result_free(res);
        if (held)
            return 0;
        wait_deleted(p, key.p, at + 1);
    }
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
            cleanup_buf struct buf why = BUF_INIT;
            if (ref_now(ref, now, &why) < 0 || strcmp(now, rev) == 0)
                break;
            usleep(100 * 1000);
        }
    }
    if (ftruncate(fd, 0) < 0)
        pipe_detail("(cannot empty the lock file: %s; the next push may wait 10 s)",
                    strerror(errno));
}

/* ---- pre-receive ---- */

/* Builds and deploys NEW for ref, whose value the pusher saw was old. */
static int deploy(struct pipeline *p, const char *ref, const char *old, const char *new)
{
    int fd = -1;
    bool waited = false;
    cleanup_buf struct buf name = BUF_INIT, why = BUF_INIT;
    buf_printf(&name, "%s.lock", p->app_id);
    if (lock_file(p, name.p, true, &waited, &fd) < 0 || lock_store(p, new, &waited) < 0)
        return 1;
    wait_previous(fd);
    /* Another push may have moved ref while this one waited: git would
     * refuse this one's update after the build, so refuse it now. */
    char now[64];
    if (ref_now(ref, now, &why) < 0)
        return pipe_fail("Cannot read %s: %s", ref, why.p);
    if (strcmp(now, all_zeros(old) ? "" : old) != 0) {
        pipe_fail("%s changed while this push waited (another push to %s came first)", ref, p->app);
        return pipe_fail("Fetch it, merge or rebase, and push again");
    }
    int rc = pipeline_run(p, new);
    if (rc == 0) {
        char note[600];
        int n = snprintf(note, sizeof(note), "%s %s\n", ref, new);
        if (pwrite(fd, note, (size_t)n, 0) < 0) /* the next push only waits less */
            pipe_detail("(cannot write the lock file: %s)", strerror(errno));
    }
    return rc;
}

static int pre_receive(void)
{
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
    struct pipeline p = {0};
    int rc = setup(&p, true);
    if (rc == 0) {
        pipeline_signals();
        rc = deploy(&p, deploy_ref, old_rev, rev);
    }
    setup_free(&p);
    return rc;
}

/* ---- post-receive ---- */

static int post_receive(void)
{
    /* git writes the refs it moved on stdin: read to the end, unused */
    char line[1024];
    while (fgets(line, sizeof(line), stdin))
        ;
    struct pipeline p = {0};
    struct pier_err err = {0};
    size_t size = 0;
    int fd = -1;
    bool waited = false;
    cleanup_buf struct buf name = BUF_INIT;
    int rc = setup(&p, false);
    if (rc == 0) {
        /* One archive of an app at a time, so the last one to arrive is
         * the newest: each is made after its push's refs moved. */
        buf_printf(&name, "%s.archive.lock", p.app_id);
        rc = lock_file(&p, name.p, false, &waited, &fd) < 0;
    }
    if (rc == 0 && pipeline_archive_repo(&p, &size, &err) < 0)
        rc = pipe_fail("Warning: the repository was not saved to the blobstore: %s", err.msg);
    if (rc != 0)
        pipe_fail("The push went through; the next push saves the repository again");
    setup_free(&p);
    if (fd >= 0)
        close(fd);
    return 0;
}

int gitrecv_hook_main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *mode = argc >= 1 ? argv[0] : "pre-receive";
    if (strcmp(mode, "post-receive") == 0)
        return post_receive();
    if (strcmp(mode, "pre-receive") == 0)
        return pre_receive();
    return pipe_fail("pierd gitreceive hook: unknown hook \"%.80s\" (pre-receive or post-receive)",
                     mode);
}
