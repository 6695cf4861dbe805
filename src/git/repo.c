/* repo: the apps' bare repositories, the environment git runs in, and the
 * questions the receiver asks the controller (gitreceive.h).
 *
 * A repository is made in DIR/tmp and renamed into DIR/repos in one step,
 * so a half-made one is never seen: when several pushes of a new app race,
 * every one builds its own and the first rename wins; the others find the
 * name taken (rename(2) of a directory onto a non-empty one fails) and
 * throw theirs away. */
#include "git/gitreceive.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lib/base64.h"
#include "lib/buf.h"
#include "lib/cleanup.h"
#include "lib/fs.h"
#include "lib/httpc.h"
#include "lib/log.h"

extern char **environ;

#define APP_NAME_MAX 100
/* How much of a failed git command's output goes into the error. */
#define CMD_OUTPUT_MAX 2048
#define CONTROLLER_TIMEOUT_MS 15000

bool gitrecv_app_name_ok(const char *s)
{
    /* The controller's (and Flynn's) rule: ^[a-z\d]+(-[a-z\d]+)*$, 1 to 100. */
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > APP_NAME_MAX || s[0] == '-' || s[n - 1] == '-')
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        bool alnum = (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9');
        if (!alnum && !(ch == '-' && s[i + 1] != '-'))
            return false;
    }
    return true;
}

/* ---- the controller ---- */

static struct httpc *client;
static pthread_once_t client_once = PTHREAD_ONCE_INIT;

static void client_init(void)
{
    client = httpc_new();
}

/* GET CONTROLLER<path> with the cluster key; fills *status. */
static int controller_get(const struct gitrecv *g, const char *path, long *status,
                          struct pier_err *err)
{
    pthread_once(&client_once, client_init);
    cleanup_buf struct buf url = BUF_INIT;
    cleanup_buf struct buf auth = BUF_INIT;
    cleanup_buf struct buf cred = BUF_INIT;
    buf_printf(&url, "%s%s", g->controller, path);
    buf_printf(&cred, ":%s", g->key);
    buf_puts(&auth, "Authorization: Basic ");
    base64_encode(&auth, cred.p, cred.len);
    const char *headers[] = {auth.p, "Accept: application/json", NULL};
    cleanup_buf struct buf name = BUF_INIT;
    buf_printf(&name, "controller at %s", g->controller);
    struct httpc_req req = {
        .url = url.p,
        .name = name.p,
        .headers = headers,
        .timeout_ms = CONTROLLER_TIMEOUT_MS,
        .max_body = 1 << 20,
    };
    struct httpc_resp resp = {0};
    int rc = httpc_do(client, &req, &resp, err);
    if (rc < 0) {
        /* Whatever broke on the way (its message says what), the
         * controller could not be asked: try again later. */
        if (err)
            err->code = PIER_EUNAVAIL;
        return PIER_EUNAVAIL;
    }
    *status = resp.status;
    httpc_resp_release(&resp);
    if (*status == 401 || *status == 403)
        return err_set(err, PIER_EUNAVAIL, "controller at %s refused the cluster key (HTTP %ld)",
                       g->controller, *status);
    if (*status != 200 && *status != 404)
        return err_set(err, PIER_EUNAVAIL, "controller at %s answered HTTP %ld", g->controller,
                       *status);
    return 0;
}

int gitrecv_key_allowed(const struct gitrecv *g, const char *fingerprint, struct pier_err *err)
{
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
    int rc = controller_get(g, path.p, &status, err);
    if (rc < 0)
        return rc;
    if (status == 404)
        return err_set(err, PIER_ENOTFOUND, "key %s is not known: add it with 'pier keys add'",
                       fingerprint);
    return 0;
}

static int app_exists(const struct gitrecv *g, const char *app, struct pier_err *err)
{
    cleanup_buf struct buf path = BUF_INIT;
    buf_printf(&path, "/apps/%s", app);
    long status = 0;
    int rc = controller_get(g, path.p, &status, err);
    if (rc < 0)
        return rc;
    if (status == 404)
        return err_set(err, PIER_ENOTFOUND,
                       "app %s does not exist: create it with 'pier create %s'", app, app);
    return 0;
}

/* ---- the environment ---- */

static const char *const pier_vars[] = {
    "PIER_APP",     "PIER_CONTROLLER",    "PIER_KEY", "PIER_BLOBSTORE",
    "PIER_GIT_DIR", "PIER_BUILD_TIMEOUT", NULL,
};

static bool is_pier_var(const char *entry)
{
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

char **gitrecv_env(const struct gitrecv *g, const char *app)
{
    size_t n = 0;
    while (environ[n])
        n++;
    char **env = xcalloc(n + 7, sizeof(*env));
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (!is_pier_var(environ[i]))
            env[k++] = xstrdup(environ[i]);
    char timeout[32];
    snprintf(timeout, sizeof(timeout), "%d", g->build_timeout);
    env[k++] = env_entry("PIER_APP", app);
    env[k++] = env_entry("PIER_CONTROLLER", g->controller);
    env[k++] = env_entry("PIER_KEY", g->key);
    env[k++] = env_entry("PIER_BLOBSTORE", g->blobstore);
    env[k++] = env_entry("PIER_GIT_DIR", g->dir);
    env[k++] = env_entry("PIER_BUILD_TIMEOUT", timeout);
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

/* Runs argv (a git command) to its end, its stdout and stderr gathered for
 * the error message. The daemon blocks SIGTERM and ignores SIGPIPE, both
 * of which a child would inherit: it gets them back to normal. */
static int run(char *const argv[], struct pier_err *err)
{
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) < 0)
        return err_set(err, -errno, "pipe: %s", strerror(errno));
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t at;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
    posix_spawn_file_actions_adddup2(&fa, fds[1], 2);
    posix_spawn_file_actions_addclosefrom_np(&fa, 3);
    posix_spawnattr_init(&at);
    sigset_t none, def;
    sigemptyset(&none);
    sigemptyset(&def);
    sigaddset(&def, SIGPIPE);
    sigaddset(&def, SIGTERM);
    sigaddset(&def, SIGINT);
    posix_spawnattr_setsigmask(&at, &none);
    posix_spawnattr_setsigdefault(&at, &def);
    posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    pid_t pid;
    int rc = posix_spawnp(&pid, argv[0], &fa, &at, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&at);
    close(fds[1]);
    if (rc != 0) {
        close(fds[0]);
        return err_set(err, -rc, "cannot run %s: %s", argv[0], strerror(rc));
    }
    cleanup_buf struct buf out = BUF_INIT;
    char chunk[1024];
    for (;;) {
        ssize_t n = read(fds[0], chunk, sizeof(chunk));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        if (out.len < CMD_OUTPUT_MAX)
            buf_append(&out, chunk, (size_t)n);
    }
    close(fds[0]);
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
        return 0;
    while (out.len && (out.p[out.len - 1] == '\n' || out.p[out.len - 1] == ' '))
        out.p[--out.len] = '\0';
    return err_set(err, PIER_EINTERNAL, "%s %s failed (status %d): %s", argv[0],
                   argv[1] ? argv[1] : "", WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st),
                   out.len ? out.p : "no output");
}

/* The pre-receive hook: hands the push to `pierd gitreceive hook`. */
static void hook_text(const struct gitrecv *g, struct buf *b)
{
    buf_puts(b, "#!/bin/sh\nexec '");
    for (const char *s = g->pierd; *s; s++) {
        if (*s == '\'')
            buf_puts(b, "'\\''");
        else
            buf_putc(b, *s);
    }
    buf_puts(b, "' gitreceive hook\n");
}

/* Writes the hook into repo unless it is there already as it should be
 * (a repository made by an older pierd at another path gets the new one). */
static int ensure_hook(const struct gitrecv *g, const char *repo, struct pier_err *err)
{
    cleanup_buf struct buf want = BUF_INIT;
    cleanup_buf struct buf path = BUF_INIT;
    hook_text(g, &want);
    buf_printf(&path, "%s/hooks/pre-receive", repo);
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

static bool is_repo(const char *path)
{
    cleanup_buf struct buf head = BUF_INIT;
    buf_printf(&head, "%s/HEAD", path);
    struct stat st;
    return stat(head.p, &st) == 0 && S_ISREG(st.st_mode);
}

/* Makes a new bare repository for app in DIR/tmp; *tmp gets its path. */
static int repo_make(const struct gitrecv *g, const char *app, char **tmp, struct pier_err *err)
{
    struct buf t = BUF_INIT;
    buf_printf(&t, "%s/tmp/repo-%s-XXXXXX", g->dir, app);
    if (!mkdtemp(t.p)) {
        int e = errno;
        buf_free(&t);
        return err_set(err, -e, "cannot make a repository in %s/tmp: %s", g->dir, strerror(e));
    }
    char *argv[] = {"git", "init", "--bare", "--quiet", "--initial-branch=main", t.p, NULL};
    int rc = run(argv, err);
    /* Smart HTTP pushes need http.receivepack (git http-backend allows them
     * for an authenticated user only otherwise, which ours always is, but
     * saying so keeps it independent of REMOTE_USER); a reflog of every
     * branch lets an overwritten push be found again. */
    static const char conf[] = "[http]\n\treceivepack = true\n"
                               "[core]\n\tlogAllRefUpdates = true\n";
    cleanup_buf struct buf cpath = BUF_INIT;
    buf_printf(&cpath, "%s/config", t.p);
    if (rc == 0) {
        int fd = open(cpath.p, O_WRONLY | O_APPEND | O_CLOEXEC);
        if (fd < 0 || write(fd, conf, sizeof(conf) - 1) != (ssize_t)(sizeof(conf) - 1))
            rc = err_set(err, -EIO, "cannot write %s: %s", cpath.p, strerror(errno));
        if (fd >= 0)
            close(fd);
    }
    if (rc == 0)
        rc = ensure_hook(g, t.p, err);
    if (rc < 0) {
        fs_rm_tree(t.p);
        buf_free(&t);
        return rc;
    }
    *tmp = buf_detach(&t);
    return 0;
}

int gitrecv_repo_prepare(const struct gitrecv *g, const char *app, char **path,
                         struct pier_err *err)
{
    *path = NULL;
    if (!gitrecv_app_name_ok(app))
        return err_set(err, PIER_EINVAL,
                       "\"%s\" is not an app name (lower-case letters, digits and dashes)", app);
    int rc = app_exists(g, app, err);
    if (rc < 0)
        return rc;
    struct buf final = BUF_INIT;
    buf_printf(&final, "%s/repos/%s.git", g->dir, app);
    if (is_repo(final.p)) {
        rc = ensure_hook(g, final.p, err);
    } else {
        cleanup_free char *tmp = NULL;
        rc = repo_make(g, app, &tmp, err);
        if (rc == 0 && rename(tmp, final.p) < 0) {
            int e = errno;
            fs_rm_tree(tmp);
            /* Another push of the same new app made it first. */
            if ((e != EEXIST && e != ENOTEMPTY) || !is_repo(final.p))
                rc = err_set(err, -e, "cannot move the new repository to %s: %s", final.p,
                             strerror(e));
        } else if (rc == 0) {
            log_info("gitreceive", "repository made", "app=%s path=%s", app, final.p);
        }
    }
    if (rc < 0) {
        buf_free(&final);
        return rc;
    }
    *path = buf_detach(&final);
    return 0;
}
