/* repo: the apps' bare repositories, the environment git runs in, and the
 * questions the receiver asks the controller (gitreceive.h).
 *
 * A repository is named by the app's id, not its name: an app deleted and
 * made again under the same name is another app with an empty history,
 * and a push to <name>.git and one to <id>.git reach the same repository.
 *
 * A repository is made in DIR/tmp and renamed into DIR/repos in one step,
 * so a half-made one is never seen: when several pushes of a new app race,
 * every one builds its own and the first rename wins; the others find the
 * name taken (rename(2) of a directory onto a non-empty one fails) and
 * throw theirs away. "Made" is restored from the blobstore when it holds
 * the app's archive (the post-receive hook keeps it there), so an app's
 * history follows it to a new receiver. */
#include "git/gitreceive.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lib/buf.h"
#include "lib/cleanup.h"
#include "lib/clock.h"
#include "lib/discover.h"
#include "lib/fs.h"
#include "lib/httpc.h"
#include "lib/jsonx.h"
#include "lib/keys.h"
#include "lib/log.h"
#include "lib/store.h"
#include "lib/subproc.h"

extern char **environ;

/* How much of a failed git command's output goes into the error. */
#define CMD_OUTPUT_MAX 2048
#define CONTROLLER_TIMEOUT_MS 15000
#define BLOBSTORE_TIMEOUT_MS 15000
/* How long the controller's answer about a key is kept, and for how many
 * keys at most. */
#define KEY_CACHE_MS 5000
#define KEY_CACHE_SIZE 256

bool gitrecv_app_name_ok(const char *s)
{
    return keys_app_name_ok(s);
}

int gitrecv_parse_timeout(const char *s, int *out)
{
    if (!s || !*s) {
        *out = GITRECV_DEFAULT_BUILD_TIMEOUT;
        return 0;
    }
    char *end = NULL;
    errno = 0;
    long n = strtol(s, &end, 10);
    if (errno || end == s || *end || n < 1 || n > GITRECV_MAX_BUILD_TIMEOUT)
        return PIER_EINVAL;
    *out = (int)n;
    return 0;
}

/* ---- the controller ---- */

static struct httpc *client;
static pthread_once_t client_once = PTHREAD_ONCE_INIT;

static void client_init(void)
{
    client = httpc_new();
}

static struct httpc *http_client(void)
{
    pthread_once(&client_once, client_init);
    return client;
}

/* GET CONTROLLER<path> with the cluster key; fills *status, and *body (a
 * new reference, may be NULL) with the answer of a 200. The controller is
 * gitrecv_controller's: when discovery has none, that is the error. */
static int controller_get(const struct gitrecv *g, const char *path, long *status, json_t **body,
                          struct pier_err *err)
{
    cleanup_free char *base = NULL;
    int rc = gitrecv_controller(g, &base, err);
    if (rc < 0)
        return rc;
    cleanup_buf struct buf url = BUF_INIT;
    cleanup_buf struct buf auth = BUF_INIT;
    buf_printf(&url, "%s%s", base, path);
    httpc_basic_auth(&auth, g->key);
    const char *headers[] = {auth.p, "Accept: application/json", NULL};
    cleanup_buf struct buf name = BUF_INIT;
    buf_printf(&name, "controller at %s", base);
    struct httpc_req req = {
        .url = url.p,
        .name = name.p,
        .headers = headers,
        .timeout_ms = CONTROLLER_TIMEOUT_MS,
        .max_body = 1 << 20,
    };
    struct httpc_resp resp = {0};
    rc = httpc_do(http_client(), &req, &resp, err);
    if (rc < 0) {
        /* Whatever broke on the way (its message says what), the
         * controller could not be asked: try again later. */
        if (err)
            err->code = PIER_EUNAVAIL;
        return PIER_EUNAVAIL;
    }
    *status = resp.status;
    if (*status == 200 && body)
        rc = jsonx_parse_object(resp.body.p ? resp.body.p : "", resp.body.len, body, NULL);
    httpc_resp_release(&resp);
    if (*status == 401 || *status == 403)
        return err_set(err, PIER_EUNAVAIL, "controller at %s refused the cluster key (HTTP %ld)",
                       base, *status);
    if (*status != 200 && *status != 404)
        return err_set(err, PIER_EUNAVAIL, "controller at %s answered HTTP %ld", base, *status);
    if (rc < 0)
        return err_set(err, PIER_EUNAVAIL, "controller at %s: GET %s: not a JSON object", base,
                       path);
    return 0;
}

/* The controller's recent answers about keys, shared by every connection
 * (cache_lock): an entry is good until its expiry. */
struct key_answer {
    char fp[64];
    bool known;
    int64_t expires_ms;
};
static struct key_answer key_cache[KEY_CACHE_SIZE];
static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;

/* 1: known, 0: not known, -1: not in the cache. */
static int cache_get(const char *fp)
{
    int64_t now = clock_now_ms();
    int found = -1;
    pthread_mutex_lock(&cache_lock);
    for (size_t i = 0; i < KEY_CACHE_SIZE && found < 0; i++)
        if (key_cache[i].expires_ms > now && strcmp(key_cache[i].fp, fp) == 0)
            found = key_cache[i].known;
    pthread_mutex_unlock(&cache_lock);
    return found;
}

static void cache_put(const char *fp, bool known)
{
    if (strlen(fp) >= sizeof(key_cache[0].fp))
        return;
    pthread_mutex_lock(&cache_lock);
    /* The entry of that key, else the one that expires first (an expired
     * one, when there is one). */
    size_t slot = 0;
    for (size_t i = 0; i < KEY_CACHE_SIZE; i++) {
        if (strcmp(key_cache[i].fp, fp) == 0) {
            slot = i;
            break;
        }
        if (key_cache[i].expires_ms < key_cache[slot].expires_ms)
            slot = i;
    }
    snprintf(key_cache[slot].fp, sizeof(key_cache[slot].fp), "%s", fp);
    key_cache[slot].known = known;
    key_cache[slot].expires_ms = clock_now_ms() + KEY_CACHE_MS;
    pthread_mutex_unlock(&cache_lock);
}

int gitrecv_key_allowed(const struct gitrecv *g, const char *fingerprint, struct pier_err *err)
{
    int cached = cache_get(fingerprint);
    if (cached == 1)
        return 0;
    if (cached == 0)
        return err_set(err, PIER_ENOTFOUND, "key %s is not known: add it with 'pier keys add'",
                       fingerprint);
    /* The controller takes '_' and '-' for the '/' and '+' of the base64
     * (controller/keys.c), which keeps the path a plain one. */
    cleanup_buf struct buf path = BUF_INIT;
    buf_puts(&path, "/keys/");
    for (const char *s = fingerprint; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '/')
            buf_putc(&path, '_');
        else if (ch == '+')
            buf_putc(&path, '-');
        else if ((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
                 ch == ':' || ch == '=' || ch == '-' || ch == '_')
            buf_putc(&path, (char)ch);
        else
            buf_printf(&path, "%%%02X", ch);
    }
    long status = 0;
    int rc = controller_get(g, path.p, &status, NULL, err);
    if (rc < 0)
        return rc;
    cache_put(fingerprint, status != 404);
    if (status == 404)
        return err_set(err, PIER_ENOTFOUND, "key %s is not known: add it with 'pier keys add'",
                       fingerprint);
    return 0;
}

/* An id fit to name a file: letters, digits and dashes (a UUID). */
static bool id_ok(const char *s)
{
    size_t n = strlen(s);
    return n > 0 && n < sizeof(((struct gitrecv_app *)0)->id) &&
           strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-") == n &&
           s[0] != '-';
}

/* GET /apps/<ref> (a name or an id): fills *app. */
static int app_lookup(const struct gitrecv *g, const char *ref, struct gitrecv_app *app,
                      struct pier_err *err)
{
    cleanup_buf struct buf path = BUF_INIT;
    buf_printf(&path, "/apps/%s", ref);
    long status = 0;
    cleanup_json json_t *body = NULL;
    int rc = controller_get(g, path.p, &status, &body, err);
    if (rc < 0)
        return rc;
    if (status == 404)
        return err_set(err, PIER_ENOTFOUND,
                       "app %s does not exist: create it with 'pier create %s'", ref, ref);
    const char *id = json_string_value(json_object_get(body, "id"));
    const char *name = json_string_value(json_object_get(body, "name"));
    if (!id || !id_ok(id) || !name || !gitrecv_app_name_ok(name))
        return err_set(err, PIER_EPROTO, "the controller: GET /apps/%s: no usable id and name",
                       ref);
    snprintf(app->id, sizeof(app->id), "%s", id);
    snprintf(app->name, sizeof(app->name), "%s", name);
    return 0;
}

/* ---- the environment ---- */

static const char *const pier_vars[] = {
    "PIER_APP",     "PIER_APP_ID",        "PIER_CONTROLLER", "PIER_KEY", "PIER_BLOBSTORE",
    "PIER_GIT_DIR", "PIER_BUILD_TIMEOUT", "PIER_STORE",      NULL,
};

/* Whether the daemon's own environment entry stays out of git's: one of
 * the variables it sets itself, or one that steers git (GIT_DIR,
 * GIT_CONFIG_*, GIT_INDEX_FILE, ...), which git must take from us only. */
static bool left_out(const char *entry)
{
    if (strncmp(entry, "GIT_", 4) == 0)
        return true;
    for (const char *const *v = pier_vars; *v; v++) {
        size_t n = strlen(*v);
        if (strncmp(entry, *v, n) == 0 && entry[n] == '=')
            return true;
    }
    return false;
}

static char *env_entry(const char *name, const char *value)
{
    struct buf b = BUF_INIT;
    buf_printf(&b, "%s=%s", name, value ? value : "");
    return buf_detach(&b);
}

/* This process's environment without what left_out() names, with room
 * for extra more entries; *n gets its length. */
static char **env_base(size_t extra, size_t *n)
{
    size_t total = 0, k = 0;
    while (environ[total])
        total++;
    char **env = xcalloc(total + extra + 1, sizeof(*env));
    for (size_t i = 0; i < total; i++)
        if (!left_out(environ[i]))
            env[k++] = xstrdup(environ[i]);
    *n = k;
    return env;
}

char **gitrecv_env(const struct gitrecv *g, const struct gitrecv_app *app)
{
    size_t k = 0;
    char **env = env_base(7, &k);
    char timeout[32];
    snprintf(timeout, sizeof(timeout), "%d", g->build_timeout);
    env[k++] = env_entry("PIER_APP", app->name);
    env[k++] = env_entry("PIER_APP_ID", app->id);
    env[k++] = env_entry("PIER_CONTROLLER", g->controller);
    env[k++] = env_entry("PIER_KEY", g->key);
    env[k++] = env_entry("PIER_BLOBSTORE", g->blobstore);
    env[k++] = env_entry("PIER_GIT_DIR", g->dir);
    env[k++] = env_entry("PIER_BUILD_TIMEOUT", timeout);
    if (g->store)
        env[k++] = env_entry("PIER_STORE", g->store);
    env[k] = NULL;
    return env;
}

void gitrecv_env_free(char **env)
{
    if (!env)
        return;
    for (char **e = env; *e; e++)
        free(*e);
    free(env);
}

/* ---- git ---- */

/* Runs argv (git, tar) to its end, its stdout and stderr gathered for the
 * error message. */
static int run(char *const argv[], struct pier_err *err)
{
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) < 0)
        return err_set(err, -errno, "pipe: %s", strerror(errno));
    size_t n_env = 0;
    char **env = env_base(0, &n_env);
    const struct subproc sp = {
        .argv = argv, .env = env, .in = SUBPROC_DEVNULL, .out = fds[1], .err = fds[1]};
    pid_t pid;
    int rc = subproc_start(&sp, &pid, err);
    gitrecv_env_free(env);
    close(fds[1]);
    if (rc < 0) {
        close(fds[0]);
        return rc;
    }
    cleanup_buf struct buf out = BUF_INIT;
    fs_read_fd(fds[0], &out, CMD_OUTPUT_MAX);
    close(fds[0]);
    int st = subproc_wait(pid);
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
        return 0;
    while (out.len && (out.p[out.len - 1] == '\n' || out.p[out.len - 1] == ' '))
        out.p[--out.len] = '\0';
    return err_set(err, PIER_EINTERNAL, "%s %s failed (status %d): %s", argv[0],
                   argv[1] ? argv[1] : "", WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st),
                   out.len ? out.p : "no output");
}

/* A hook: hands the push to `pierd gitreceive hook [MODE]`. */
static void hook_text(const struct gitrecv *g, const char *mode, struct buf *b)
{
    buf_puts(b, "#!/bin/sh\nexec '");
    for (const char *s = g->pierd; *s; s++) {
        if (*s == '\'')
            buf_puts(b, "'\\''");
        else
            buf_putc(b, *s);
    }
    buf_printf(b, "' gitreceive hook%s%s\n", mode ? " " : "", mode ? mode : "");
}

/* Writes hook NAME into repo unless it is there already as it should be
 * (a repository made by an older pierd at another path, or restored from
 * another receiver, gets the new one). */
static int ensure_hook(const struct gitrecv *g, const char *repo, const char *name,
                       const char *mode, struct pier_err *err)
{
    cleanup_buf struct buf want = BUF_INIT;
    cleanup_buf struct buf path = BUF_INIT;
    hook_text(g, mode, &want);
    buf_printf(&path, "%s/hooks/%s", repo, name);
    char have[4096];
    ssize_t n = -1;
    int fd = open(path.p, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    struct stat st;
    if (fd >= 0) {
        if (fstat(fd, &st) == 0 && (st.st_mode & 0111))
            n = read(fd, have, sizeof(have));
        close(fd);
    }
    if (n >= 0 && (size_t)n == want.len && memcmp(have, want.p, want.len) == 0)
        return 0;
    cleanup_buf struct buf dir = BUF_INIT;
    buf_printf(&dir, "%s/hooks", repo);
    if (mkdir(dir.p, 0755) < 0 && errno != EEXIST)
        return err_set(err, -errno, "mkdir %s: %s", dir.p, strerror(errno));
    return fs_write_atomic(path.p, want.p, want.len, 0755, false, err);
}

/* pre-receive builds and deploys; post-receive, once the refs moved,
 * archives the repository to the blobstore. */
static int ensure_hooks(const struct gitrecv *g, const char *repo, struct pier_err *err)
{
    int rc = ensure_hook(g, repo, "pre-receive", NULL, err);
    return rc < 0 ? rc : ensure_hook(g, repo, "post-receive", "post-receive", err);
}

static bool is_repo(const char *path)
{
    cleanup_buf struct buf head = BUF_INIT;
    buf_printf(&head, "%s/HEAD", path);
    struct stat st;
    return stat(head.p, &st) == 0 && S_ISREG(st.st_mode);
}

/* ---- restoring from the blobstore ---- */

/* Where archive_fetch writes the body, and what went wrong writing. */
struct sink {
    int fd;
    int error; /* errno of a failed write, or 0 */
};

static int write_all(const char *data, size_t len, void *ud)
{
    struct sink *k = ud;
    while (len > 0) {
        ssize_t n = write(k->fd, data, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            k->error = n < 0 ? errno : EIO;
            return -1;
        }
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

/* GET BLOBSTORE/repos/<id>.tar into the file tar: 0 when it came,
 * PIER_ENOTFOUND when the blobstore has none, else an error naming it. */
static int archive_fetch(const struct gitrecv *g, const struct gitrecv_app *app, const char *tar,
                         struct pier_err *err)
{
    cleanup_close int fd = open(tar, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return err_set(err, -errno, "cannot make %s: %s", tar, strerror(errno));
    cleanup_buf struct buf url = BUF_INIT;
    cleanup_buf struct buf auth = BUF_INIT;
    cleanup_buf struct buf name = BUF_INIT;
    /* The blobstore the hook archives to: discovery's, when there is a store. */
    const char *from;
    struct pier_err e = {0};
    cleanup_free char *blobstore = gitrecv_blobstore(g->discovery, g->blobstore, &from, &e);
    if (!blobstore)
        return err_set(err, e.code < 0 ? e.code : PIER_EUNAVAIL, "%s", e.msg);
    buf_printf(&url, "%s/repos/%s.tar", blobstore, app->id);
    buf_printf(&name, "blobstore at %s", blobstore);
    httpc_basic_auth(&auth, g->key);
    const char *headers[] = {auth.p, NULL};
    struct httpc_req req = {
        .url = url.p, .name = name.p, .headers = headers, .timeout_ms = BLOBSTORE_TIMEOUT_MS};
    struct sink k = {fd, 0};
    long status = 0;
    int rc = httpc_stream_run(http_client(), &req, write_all, &k, &status, err);
    if (rc < 0 && k.error)
        return err_set(err, -k.error, "cannot write %s: %s", tar, strerror(k.error));
    if (rc < 0) {
        if (err)
            err->code = PIER_EUNAVAIL;
        return PIER_EUNAVAIL;
    }
    if (status == 404)
        return PIER_ENOTFOUND;
    if (status != 200)
        return err_set(err, PIER_EUNAVAIL, "blobstore at %s: GET %s answered HTTP %ld", blobstore,
                       url.p, status);
    return 0;
}

/* The repository in what an archive unpacked into dir: dir itself (the
 * repository's files at the archive's top), or its only directory (the
 * archive of a directory). A new string, or NULL. */
static char *archive_root(const char *dir)
{
    if (is_repo(dir))
        return xstrdup(dir);
    DIR *d = opendir(dir);
    if (!d)
        return NULL;
    char *found = NULL;
    int entries = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        entries++;
        free(found);
        struct buf p = BUF_INIT;
        buf_printf(&p, "%s/%s", dir, e->d_name);
        found = buf_detach(&p);
    }
    closedir(d);
    if (entries == 1 && is_repo(found))
        return found;
    free(found);
    return NULL;
}

/* Fills the empty directory dir with the app's archived repository; *root
 * gets the repository's path in it. PIER_ENOTFOUND: there is none. */
static int archive_restore(const struct gitrecv *g, const struct gitrecv_app *app, const char *dir,
                           char **root, struct pier_err *err)
{
    cleanup_buf struct buf tar = BUF_INIT;
    buf_printf(&tar, "%s.tar", dir);
    int rc = archive_fetch(g, app, tar.p, err);
    if (rc == 0) {
        char *argv[] = {"tar", "-x", "--no-same-owner", "-f", tar.p, "-C", (char *)dir, NULL};
        rc = run(argv, err);
    }
    unlink(tar.p);
    if (rc < 0)
        return rc;
    *root = archive_root(dir);
    if (!*root)
        return err_set(err, PIER_EPROTO, "the blobstore's repos/%s.tar holds no git repository",
                       app->id);
    return 0;
}

/* A new empty bare repository in dir. */
static int repo_init(const char *dir, struct pier_err *err)
{
    char *argv[] = {"git", "init", "--bare", "--quiet", "--initial-branch=main", (char *)dir, NULL};
    int rc = run(argv, err);
    if (rc < 0)
        return rc;
    /* Smart HTTP pushes need http.receivepack (git http-backend allows them
     * for an authenticated user only otherwise, which ours always is, but
     * saying so keeps it independent of REMOTE_USER); a reflog of every
     * branch lets an overwritten push be found again. */
    static const char conf[] = "[http]\n\treceivepack = true\n"
                               "[core]\n\tlogAllRefUpdates = true\n";
    cleanup_buf struct buf cpath = BUF_INIT;
    buf_printf(&cpath, "%s/config", dir);
    int fd = open(cpath.p, O_WRONLY | O_APPEND | O_CLOEXEC);
    if (fd < 0 || write(fd, conf, sizeof(conf) - 1) != (ssize_t)(sizeof(conf) - 1))
        rc = err_set(err, -EIO, "cannot write %s: %s", cpath.p, strerror(errno));
    if (fd >= 0)
        close(fd);
    return rc;
}

/* Makes the app's repository in DIR/tmp: restored from the blobstore, or
 * new. *tmp gets the directory to remove afterwards, *repo the
 * repository's path in it; *restored says which it was. */
static int repo_make(const struct gitrecv *g, const struct gitrecv_app *app, char **tmp,
                     char **repo, bool *restored, struct pier_err *err)
{
    struct buf t = BUF_INIT;
    buf_printf(&t, "%s/tmp/repo-%s-XXXXXX", g->dir, app->id);
    if (!mkdtemp(t.p)) {
        int e = errno;
        buf_free(&t);
        return err_set(err, -e, "cannot make a repository in %s/tmp: %s", g->dir, strerror(e));
    }
    *restored = false;
    char *root = NULL;
    int rc = archive_restore(g, app, t.p, &root, err);
    if (rc == 0) {
        *restored = true;
    } else if (rc == PIER_ENOTFOUND) {
        root = xstrdup(t.p);
        rc = repo_init(root, err);
    }
    if (rc == 0)
        rc = ensure_hooks(g, root, err);
    if (rc < 0) {
        free(root);
        fs_rm_tree(t.p);
        buf_free(&t);
        return rc;
    }
    *tmp = buf_detach(&t);
    *repo = root;
    return 0;
}

int gitrecv_repo_prepare(const struct gitrecv *g, const char *ref, struct gitrecv_app *app,
                         char **path, struct pier_err *err)
{
    *path = NULL;
    if (!gitrecv_app_name_ok(ref))
        return err_set(err, PIER_EINVAL,
                       "\"%s\" is not an app name (lower-case letters, digits and dashes)", ref);
    int rc = app_lookup(g, ref, app, err);
    if (rc < 0)
        return rc;
    struct buf final = BUF_INIT;
    buf_printf(&final, "%s/repos/%s.git", g->dir, app->id);
    if (is_repo(final.p)) {
        rc = ensure_hooks(g, final.p, err);
    } else {
        cleanup_free char *tmp = NULL;
        cleanup_free char *made = NULL;
        bool restored = false;
        rc = repo_make(g, app, &tmp, &made, &restored, err);
        if (rc == 0 && rename(made, final.p) < 0) {
            int e = errno;
            /* Another push of the same new app made it first. */
            if ((e != EEXIST && e != ENOTEMPTY) || !is_repo(final.p))
                rc = err_set(err, -e, "cannot move the new repository to %s: %s", final.p,
                             strerror(e));
        } else if (rc == 0) {
            log_info("gitreceive", restored ? "repository restored" : "repository made",
                     "app=%s app_id=%s path=%s", app->name, app->id, final.p);
        }
        if (tmp)
            fs_rm_tree(tmp);
    }
    if (rc < 0) {
        buf_free(&final);
        return rc;
    }
    *path = buf_detach(&final);
    return 0;
}
