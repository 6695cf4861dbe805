/* pier git-remote, pier git-credentials, and the git remote of pier create. */
#include "cli/git.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli/api.h"
#include "cli/cli.h"
#include "cli/ui.h"
#include "lib/buf.h"
#include "lib/cleanup.h"
#include "lib/fs.h"

extern char **environ;

#define GIT_OUT_MAX (64 * 1024)
#define CRED_LINE_MAX 4096
#define CRED_LINES_MAX 256
/* The user git asks the helper for; the receiver accepts any. */
#define GIT_USER "pier"
/* The remote helper (git-remote-pier, this very binary) and the prefix of
 * a remote URL that makes git run it. */
#define GIT_HELPER "git-remote-pier"
#define GIT_HELPER_PREFIX "pier::"

static bool has_prefix(const char *s, const char *p)
{
    return strncmp(s, p, strlen(p)) == 0;
}

/* "http", "https", "ssh" from a URL (the scheme's length), 0 when none. */
static size_t scheme_len(const char *url)
{
    static const char *const schemes[] = {"http://", "https://", "ssh://"};
    for (size_t i = 0; i < sizeof(schemes) / sizeof(schemes[0]); i++)
        if (has_prefix(url, schemes[i]))
            return strlen(schemes[i]) - 3;
    return 0;
}

int git_url_check(const char *url, char **out, struct pier_err *err)
{
    size_t sl = scheme_len(url);
    if (!sl)
        return err_set(err, PIER_EINVAL,
                       "git URL \"%s\" must start with http://, https:// or ssh://", url);
    for (const unsigned char *p = (const unsigned char *)url; *p; p++)
        if (*p <= ' ' || *p == 0x7f || *p == '?' || *p == '#' || *p == '\'' || *p == '"' ||
            *p == '\\')
            return err_set(err, PIER_EINVAL,
                           "git URL \"%s\" may not hold spaces, quotes, '?' or '#'", url);
    const char *host = url + sl + 3;
    const char *at = strchr(host, '@');
    const char *slash = strchr(host, '/');
    if (at && (!slash || at < slash))
        host = at + 1;
    if (*host == '\0' || *host == '/' || *host == ':')
        return err_set(err, PIER_EINVAL, "git URL \"%s\" has no host", url);
    size_t n = strlen(url);
    while (n > sl + 3 && url[n - 1] == '/')
        n--;
    *out = xmalloc(n + 1);
    memcpy(*out, url, n);
    (*out)[n] = '\0';
    return 0;
}

static bool url_is_http(const char *url)
{
    return has_prefix(url, "http://") || has_prefix(url, "https://");
}

bool git_remote_name_ok(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > 63 || name[0] == '-' || name[0] == '.')
        return false;
    for (const char *p = name; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '.' && *p != '_' && *p != '-')
            return false;
    return true;
}

/* ---- running git ---- */

/* Runs `git ARGS...` (args[0] is "git", NULL-terminated) with stdin from
 * /dev/null; its stdout, and its stderr too when merge_err (else stderr is
 * dropped), is appended to out (at most GIT_OUT_MAX bytes kept). Returns
 * git's exit status, or -errno when it could not be started. */
static int git_run(const char *const *args, bool merge_err, struct buf *out)
{
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) < 0)
        return -errno;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
    if (merge_err)
        posix_spawn_file_actions_adddup2(&fa, fds[1], 2);
    else
        posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    pid_t pid;
    int rc = posix_spawnp(&pid, "git", &fa, NULL, (char *const *)args, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(fds[1]);
    if (rc != 0) {
        close(fds[0]);
        return -rc;
    }
    fs_read_fd(fds[0], out, GIT_OUT_MAX);
    close(fds[0]);
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            return -errno;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* Drops trailing newlines and spaces of git's output. */
static void chomp(struct buf *b)
{
    while (b->len > 0 && isspace((unsigned char)b->p[b->len - 1]))
        b->p[--b->len] = '\0';
}

/* Runs a git command that changes the repository; prints git's own words
 * when it fails. Returns 0 or 1 (printed). */
static int git_change(const char *const *args, const char *what)
{
    cleanup_buf struct buf out = BUF_INIT;
    int rc = git_run(args, true, &out);
    if (rc == 0)
        return 0;
    chomp(&out);
    if (rc < 0)
        return ui_fail("install git, or put it on PATH", "cannot run git to %s: %s", what,
                       strerror(-rc));
    return ui_fail(NULL, "git could not %s (exit %d): %s", what, rc,
                   out.len ? out.p : "no message");
}

/* ---- the remote and the credential helper ---- */

/* Appends s quoted for sh: 'it'\''s'. */
static void sh_quote(struct buf *out, const char *s)
{
    buf_putc(out, '\'');
    for (; *s; s++) {
        if (*s == '\'')
            buf_puts(out, "'\\''");
        else
            buf_putc(out, *s);
    }
    buf_putc(out, '\'');
}

/* Sets credential.<git_url>.helper to this very pier (so the helper and
 * the CLI read the same config) and .username to pier. A helper line an
 * earlier pier wrote (another path) is replaced; helpers of the user's
 * own are kept. Returns 0 or 1 (printed). */
static int set_helper(const char *git_url)
{
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n <= 0)
        return ui_fail(NULL, "cannot find pier's own path (/proc/self/exe): %s",
                       n < 0 ? strerror(errno) : "empty");
    self[n] = '\0';
    cleanup_buf struct buf helper = BUF_INIT, key = BUF_INIT, ukey = BUF_INIT;
    buf_putc(&helper, '!');
    sh_quote(&helper, self);
    buf_puts(&helper, " git-credentials");
    buf_printf(&key, "credential.%s.helper", git_url);
    buf_printf(&ukey, "credential.%s.username", git_url);
    const char *set_helper[] = {
        "git", "config", "--replace-all", key.p, helper.p, " git-credentials$", NULL};
    const char *set_user[] = {"git", "config", ukey.p, GIT_USER, NULL};
    if (git_change(set_helper, "set the credential helper") != 0 ||
        git_change(set_user, "set the credential user") != 0)
        return 1;
    return 0;
}

/* For an https git URL of a cluster with a CA of its own: writes that CA
 * to its file (config_ca_file) and points git's http.<git_url>/.sslCAInfo
 * at it, for a plain https remote the user keeps (the pier:: remote goes
 * through git-remote-pier, which needs no config). Returns 0 or 1
 * (printed). */
static int set_ca(const struct config *cfg, const char *cluster, const char *git_url)
{
    if (!has_prefix(git_url, "https://"))
        return 0;
    cleanup_buf struct buf path = BUF_INIT, key = BUF_INIT;
    struct pier_err err = {0};
    if (config_ca_file(cfg, cluster, &path, &err) < 0)
        return ui_fail(NULL, "cannot write the cluster's CA for git: %s", err.msg);
    if (path.len == 0)
        return 0;
    buf_printf(&key, "http.%s/.sslCAInfo", git_url);
    const char *set[] = {"git", "config", key.p, path.p, NULL};
    return git_change(set, "set the CA git verifies the cluster with");
}

/* Whether the remote for git_url goes through git-remote-pier: an https
 * git URL of a cluster with a CA of its own. (An unreadable CA is
 * reported by set_ca.) */
static bool via_helper(const struct config *cfg, const char *cluster, const char *git_url)
{
    if (!has_prefix(git_url, "https://"))
        return false;
    cleanup_free char *pem = NULL;
    struct pier_err err = {0};
    return config_ca(cfg, cluster, &pem, &err) == 0 && pem != NULL;
}

/* Whether an executable file called name is in a directory of $PATH. */
static bool on_path(const char *name)
{
    const char *p = getenv("PATH");
    if (!p || !*p)
        return false;
    cleanup_buf struct buf f = BUF_INIT;
    for (;;) {
        size_t n = strcspn(p, ":");
        buf_reset(&f);
        buf_printf(&f, "%.*s/%s", (int)n, n ? p : ".", name);
        if (access(f.p, X_OK) == 0)
            return true;
        if (!p[n])
            return false;
        p += n + 1;
    }
}

/* Says how to get a remote later, from a repository. */
static void later_hint(const char *remote, const char *app, const char *url)
{
    fprintf(stderr, "  hint: in the app's git repository, run 'pier git-remote -a %s%s%s'", app,
            strcmp(remote, "pier") == 0 ? "" : " -r ", strcmp(remote, "pier") == 0 ? "" : remote);
    if (url)
        fprintf(stderr, " (or 'git remote add %s %s')", remote, url);
    fputc('\n', stderr);
}

/* The hint for a cluster with no git URL: how to give it one. */
static void no_git_url(const struct config *cfg, const char *cluster, const char *remote,
                       const char *app)
{
    const char *env_url = getenv("PIER_CONTROLLER_URL");
    fprintf(stderr, "pier: no git URL is configured for this cluster, so no git remote was "
                    "added\n");
    if (!cluster && env_url && *env_url) {
        fprintf(stderr, "  hint: set PIER_GIT_URL (such as http://127.0.0.1:1700) next to "
                        "PIER_CONTROLLER_URL\n");
    } else {
        const char *name = cluster ? cluster : getenv("PIER_CLUSTER");
        if (!name || !*name)
            name = config_default(cfg);
        fprintf(stderr, "  hint: set it with 'pier cluster git-url %s GIT_URL' (or PIER_GIT_URL)\n",
                name ? name : "CLUSTER");
    }
    later_hint(remote, app, NULL);
}

int git_remote_setup(const struct config *cfg, const char *cluster, const char *remote,
                     const char *app)
{
    const char *configured = config_git_url(cfg, cluster);
    if (!configured) {
        no_git_url(cfg, cluster, remote, app);
        return 0;
    }
    cleanup_free char *git_url = NULL;
    struct pier_err err = {0};
    if (git_url_check(configured, &git_url, &err) < 0)
        return ui_fail("fix it with 'pier cluster git-url NAME URL' (or PIER_GIT_URL)", "%s",
                       err.msg);
    /* plain: the repository's URL; url: what the remote gets, plain or
     * through git-remote-pier (pier::plain). */
    cleanup_buf struct buf plain = BUF_INIT, url = BUF_INIT, out = BUF_INIT, key = BUF_INIT;
    buf_printf(&plain, "%s/%s.git", git_url, app);
    bool helper = via_helper(cfg, cluster, git_url);
    buf_printf(&url, "%s%s", helper ? GIT_HELPER_PREFIX : "", plain.p);

    const char *in_tree[] = {"git", "rev-parse", "--is-inside-work-tree", NULL};
    int rc = git_run(in_tree, false, &out);
    chomp(&out);
    if (rc < 0 || rc == 127) {
        fprintf(stderr, "pier: git is not installed, so no git remote was added\n");
        later_hint(remote, app, url.p);
        return 0;
    }
    if (rc != 0 || strcmp(out.p ? out.p : "", "true") != 0) {
        fprintf(stderr, "pier: not inside a git repository, so no git remote was added\n");
        later_hint(remote, app, url.p);
        return 0;
    }

    /* The helper is keyed by the git URL, not the remote: set it even next
     * to a remote left alone, so that `git remote set-url` is all it takes. */
    if (url_is_http(git_url) && (set_helper(git_url) != 0 || set_ca(cfg, cluster, git_url) != 0))
        return 1;

    buf_reset(&out);
    buf_printf(&key, "remote.%s.url", remote);
    const char *get_url[] = {"git", "config", "--get", key.p, NULL};
    rc = git_run(get_url, false, &out);
    chomp(&out);
    const char *had = rc == 0 && out.p ? out.p : NULL;
    bool same = had && strcmp(had, url.p) == 0;
    /* The same repository, with or without the helper: a remote an earlier
     * pier (or a cluster with another CA setting) made, brought up to date. */
    bool stale = had && !same &&
                 strcmp(has_prefix(had, GIT_HELPER_PREFIX) ? had + strlen(GIT_HELPER_PREFIX) : had,
                        plain.p) == 0;
    bool other = had && !same && !stale;
    if (!had) {
        const char *add[] = {"git", "remote", "add", remote, url.p, NULL};
        if (git_change(add, "add the remote") != 0)
            return 1;
    } else if (stale) {
        const char *set[] = {"git", "remote", "set-url", remote, url.p, NULL};
        if (git_change(set, "update the remote") != 0)
            return 1;
    }
    if (other) {
        cleanup_buf struct buf shown = BUF_INIT;
        api_put_clean(&shown, had);
        fprintf(stderr,
                "pier: warning: git remote %s already points at %s; left unchanged\n"
                "  hint: to push to %s with it: git remote set-url %s %s\n",
                remote, shown.p, app, remote, url.p);
    } else if (same) {
        fprintf(stderr, "Git remote %s already points at %s\n", remote, url.p);
    } else if (stale) {
        fprintf(stderr, "Updated git remote %s: %s\n", remote, url.p);
    } else {
        fprintf(stderr, "Added git remote %s: %s\n", remote, url.p);
    }
    if (helper && !on_path(GIT_HELPER)) {
        fprintf(stderr,
                "pier: warning: %s is not on PATH, and git needs it for the remote %s\n"
                "  hint: put the directory of pier (which holds %s) on PATH\n",
                GIT_HELPER, remote, GIT_HELPER);
    }
    return 0;
}

/* pier git-remote [-a APP] [-r NAME] */
int cli_git_remote(struct cli *c)
{
    const char *app = NULL, *remote = "pier";
    for (int i = 0; i < c->argc; i++) {
        const char *s = c->argv[i];
        int r = api_opt_app(c->argc, c->argv, &i, &app);
        if (r < 0)
            return ui_usage("git-remote", "-a needs an app name");
        if (r > 0)
            continue;
        if (strcmp(s, "-r") == 0 || strcmp(s, "--remote") == 0) {
            if (i + 1 >= c->argc)
                return ui_usage("git-remote", "%s needs a remote name", s);
            remote = c->argv[++i];
        } else if (has_prefix(s, "--remote=")) {
            remote = s + 9;
        } else {
            return ui_usage("git-remote", "unknown argument \"%s\" for git-remote", s);
        }
    }
    if (!git_remote_name_ok(remote))
        return ui_usage("git-remote",
                        "remote name \"%s\" may hold only letters, digits, '.', '_' and '-'",
                        remote);
    struct api a;
    int rc = api_start(&a, c, app, true);
    if (rc == 0) {
        cleanup_json json_t *got = NULL;
        struct pier_err err = {0};
        if (api_app_get(&a, &got, &err) < 0) {
            rc = api_fail(&a, &err);
        } else {
            cleanup_buf struct buf name = BUF_INIT;
            api_put_clean(&name, json_string_value(json_object_get(got, "name")));
            rc = git_remote_setup(&a.cfg, c->cluster, remote, name.p);
        }
    }
    api_close(&a);
    return rc;
}

/* ---- pier git-credentials: git's credential helper protocol ---- */

/* What git asks about: the attributes of one request. */
struct cred_req {
    struct buf protocol, host, path;
};

/* Reads key=value lines up to a blank line or the end of stdin, keeping
 * protocol, host and path; anything else (username, wwwauth[], ...) is
 * ignored, as are lines too long to be real. */
static void cred_read(struct cred_req *r)
{
    char line[CRED_LINE_MAX];
    for (int n = 0; n < CRED_LINES_MAX && fgets(line, sizeof(line), stdin); n++) {
        size_t len = strlen(line);
        if (len == sizeof(line) - 1 && line[len - 1] != '\n') {
            int ch;
            while ((ch = getchar()) != EOF && ch != '\n')
                ;
            continue;
        }
        line[strcspn(line, "\r\n")] = '\0';
        if (line[0] == '\0')
            return;
        char *eq = strchr(line, '=');
        if (!eq)
            continue;
        *eq = '\0';
        struct buf *slot = strcmp(line, "protocol") == 0 ? &r->protocol
                           : strcmp(line, "host") == 0   ? &r->host
                           : strcmp(line, "path") == 0   ? &r->path
                                                         : NULL;
        if (slot) {
            buf_reset(slot);
            buf_puts(slot, eq + 1);
        }
    }
}

/* host[:port] lower case, without the scheme's default port. */
static void norm_host(struct buf *out, const char *scheme, const char *host, size_t n)
{
    const char *dflt = strcmp(scheme, "https") == 0 ? ":443" : ":80";
    size_t dl = strlen(dflt);
    if (n > dl && memcmp(host + n - dl, dflt, dl) == 0)
        n -= dl;
    for (size_t i = 0; i < n; i++)
        buf_putc(out, (char)tolower((unsigned char)host[i]));
}

/* Whether the request is for git_url: same scheme, same host and port,
 * and (when git sends a path, with credential.useHttpPath) a path under
 * git_url's. */
static bool cred_matches(const struct cred_req *r, const char *git_url)
{
    size_t sl = scheme_len(git_url);
    if (!sl || !url_is_http(git_url) || !r->protocol.p || !r->host.p)
        return false;
    if (strlen(r->protocol.p) != sl || strncmp(r->protocol.p, git_url, sl) != 0)
        return false;
    const char *auth = git_url + sl + 3;
    size_t alen = strcspn(auth, "/");
    const char *at = memchr(auth, '@', alen);
    if (at) {
        alen -= (size_t)(at + 1 - auth);
        auth = at + 1;
    }
    cleanup_buf struct buf want = BUF_INIT, got = BUF_INIT;
    norm_host(&want, r->protocol.p, auth, alen);
    norm_host(&got, r->protocol.p, r->host.p, r->host.len);
    if (strcmp(want.p ? want.p : "", got.p ? got.p : "") != 0)
        return false;
    const char *base = auth + alen;
    while (*base == '/')
        base++;
    size_t bl = strlen(base);
    while (bl > 0 && base[bl - 1] == '/')
        bl--;
    if (bl == 0 || !r->path.p)
        return true;
    const char *p = r->path.p;
    while (*p == '/')
        p++;
    return strncmp(p, base, bl) == 0 && (p[bl] == '\0' || p[bl] == '/');
}

/* Prints the answer when (git_url, key) fits the request. */
static bool cred_answer(const struct cred_req *r, const char *git_url, const char *key)
{
    if (!git_url || !key || !cred_matches(r, git_url))
        return false;
    if (strpbrk(key, "\r\n") || !*key) {
        fprintf(stderr, "pier: the cluster key for %s is %s; git gets no password from pier\n",
                git_url, *key ? "more than one line" : "empty");
        return true;
    }
    printf("username=%s\npassword=%s\n", GIT_USER, key);
    return true;
}

/* The cluster -c, the environment or the default picks comes first (with
 * $PIER_GIT_URL); then, unless -c named one, every cluster of the file by
 * its own git URL, so pushes to a cluster that is not the default work
 * too. */
static int cred_get(const struct cli *c, const struct cred_req *r)
{
    struct config cfg;
    struct pier_err err = {0};
    if (config_load(&cfg, &err) < 0) {
        config_free(&cfg);
        return ui_fail(NULL, "git-credentials: %s", err.msg);
    }
    const char *url = NULL, *key = NULL;
    bool done = false;
    if (config_pick(&cfg, c->cluster, &url, &key, NULL) == 0)
        done = cred_answer(r, config_git_url(&cfg, c->cluster), key);
    size_t i;
    json_t *cl;
    json_array_foreach(c->cluster ? NULL : config_clusters(&cfg), i, cl)
    {
        if (done)
            break;
        done = cred_answer(r, json_string_value(json_object_get(cl, "git_url")),
                           json_string_value(json_object_get(cl, "key")));
    }
    config_free(&cfg);
    return 0;
}

/* pier git-credentials get|store|erase */
int cli_git_credentials(struct cli *c)
{
    if (c->argc != 1)
        return ui_usage("git-credentials", "git-credentials needs one operation: get, store or "
                                           "erase (git gives it)");
    struct cred_req r = {BUF_INIT, BUF_INIT, BUF_INIT};
    cred_read(&r);
    int rc = 0;
    /* store and erase: the key lives in pier's config, nothing to keep or
     * forget; git's rule for unknown operations is to ignore them. */
    if (strcmp(c->argv[0], "get") == 0)
        rc = cred_get(c, &r);
    fflush(stdout);
    buf_free(&r.protocol);
    buf_free(&r.host);
    buf_free(&r.path);
    return rc;
}

/* ---- git-remote-pier: git's remote helper for pier::https://... ---- */

/* Whether url is git_url's or under it (git_url/...). */
static bool url_under(const char *url, const char *git_url)
{
    if (!git_url)
        return false;
    size_t n = strlen(git_url);
    while (n > 0 && git_url[n - 1] == '/')
        n--;
    return n > 0 && strncmp(url, git_url, n) == 0 && (url[n] == '/' || url[n] == '\0');
}

/* The CA file of the cluster url belongs to, written or refreshed: the
 * cluster the environment or the default picks first, then every cluster
 * of the file by its git URL. ca stays empty when the cluster has no CA,
 * or none is found (a warning then). */
static void helper_ca(const char *url, struct buf *ca)
{
    struct config cfg;
    struct pier_err err = {0};
    if (config_load(&cfg, &err) < 0) {
        fprintf(stderr, "pier: warning: %s; git verifies %s with the system's CAs\n", err.msg, url);
        config_free(&cfg);
        return;
    }
    bool found = url_under(url, config_git_url(&cfg, NULL));
    const char *name = NULL;
    size_t i;
    json_t *cl;
    json_array_foreach(found ? NULL : config_clusters(&cfg), i, cl)
    {
        if (url_under(url, json_string_value(json_object_get(cl, "git_url")))) {
            name = json_string_value(json_object_get(cl, "name"));
            found = name != NULL;
            break;
        }
    }
    if (!found)
        fprintf(stderr,
                "pier: warning: %s is under no cluster's git URL; git verifies it with the "
                "system's CAs\n"
                "  hint: 'pier git-remote' in the repository points the remote at the cluster\n",
                url);
    else if (config_ca_file(&cfg, name, ca, &err) < 0)
        fprintf(stderr, "pier: warning: cannot write the cluster's CA for git: %s\n", err.msg);
    config_free(&cfg);
}

int git_remote_helper(int argc, char **argv)
{
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: " GIT_HELPER " REMOTE [URL]\n"
                        "git runs it for a remote URL " GIT_HELPER_PREFIX "https://...\n");
        return 2;
    }
    const char *remote = argv[1];
    const char *url = argv[argc - 1];
    if (has_prefix(url, GIT_HELPER_PREFIX))
        url += strlen(GIT_HELPER_PREFIX);
    if (strncmp(url, "https://", 8) != 0) {
        fprintf(stderr, "pier: " GIT_HELPER " takes https:// URLs, not \"%s\"\n", url);
        return 128;
    }
    cleanup_buf struct buf ca = BUF_INIT;
    helper_ca(url, &ca);
    /* git lets GIT_SSL_CAINFO win over http.<url>.sslCAInfo: set it. */
    if (ca.len) {
        setenv("GIT_SSL_CAINFO", ca.p, 1);
        unsetenv("GIT_SSL_CAPATH");
    }
    fflush(stderr);
    const char *args[] = {"git", "remote-https", remote, url, NULL};
    execvp("git", (char *const *)args);
    fprintf(stderr, "pier: cannot run git remote-https: %s\n", strerror(errno));
    return 128;
}
