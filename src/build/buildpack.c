/* buildpack: fetching a buildpack and running its three programs the way
 * Heroku's classic buildpack API runs them (CONVENTIONS.md "Buildpack
 * API"). */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "build/procfile.h"
#include "build/relyaml.h"
#include "build/slug.h"
#include "lib/cleanup.h"

/* detect, release and fetching a buildpack get this long; compile gets
 * ctx->compile_timeout. */
#define STEP_TIMEOUT_S 300
#define DETECT_OUTPUT_MAX 65536

static bool is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static bool is_dir_in(const char *dir, const char *name)
{
    cleanup_free char *p = slug_path(dir, name);
    return is_dir(p);
}

void buildpack_clear(struct buildpack *bp)
{
    free(bp->url);
    free(bp->dir);
    free(bp->name);
    *bp = (struct buildpack){0};
}

size_t buildpack_shipped_names(const struct build_ctx *ctx, struct buf *text, char **names,
                               size_t max)
{
    cleanup_free char *path = slug_path(ctx->shipped_dir, "order");
    cleanup_close int fd = open(path, O_RDONLY | O_CLOEXEC);
    buf_reset(text);
    if (fd < 0 || proc_read_all(fd, text, 64 * 1024) < 0 || !text->p) {
        buf_reset(text);
        return 0;
    }
    size_t n = 0;
    char *save = NULL;
    for (char *s = strtok_r(text->p, "\n", &save); s && n < max; s = strtok_r(NULL, "\n", &save)) {
        s[strcspn(s, " \t\r#")] = '\0';
        if (*s && !strchr(s, '/') && strcmp(s, ".") != 0 && strcmp(s, "..") != 0)
            names[n++] = s;
    }
    return n;
}

/* "https://x/y/heroku-buildpack-nodejs.git#v1" -> "heroku-buildpack-nodejs". */
static char *short_name(const char *url)
{
    size_t len = strcspn(url, "?#");
    while (len > 1 && url[len - 1] == '/')
        len--;
    const char *start = url;
    for (size_t i = 0; i < len; i++)
        if (url[i] == '/')
            start = url + i + 1;
    len -= (size_t)(start - url);
    static const char *const suffixes[] = {".git", ".tgz", ".tar.gz"};
    for (size_t i = 0; i < 3; i++) {
        size_t sl = strlen(suffixes[i]);
        if (len > sl && strncmp(start + len - sl, suffixes[i], sl) == 0) {
            len -= sl;
            break;
        }
    }
    struct buf b = BUF_INIT;
    buf_append(&b, start, len);
    return buf_detach(&b);
}

static bool has_scheme(const char *url, const char *const *schemes)
{
    for (; *schemes; schemes++) {
        size_t n = strlen(*schemes);
        if (strncmp(url, *schemes, n) == 0 && strncmp(url + n, "://", 3) == 0)
            return true;
    }
    return false;
}

static const char *const tarball_schemes[] = {"http", "https", "file", NULL};
static const char *const git_schemes[] = {"http", "https", "git", "ssh", "file", NULL};

static bool is_tarball_url(const char *url)
{
    if (!has_scheme(url, tarball_schemes))
        return false;
    size_t len = strcspn(url, "?#");
    return (len > 4 && strncmp(url + len - 4, ".tgz", 4) == 0) ||
           (len > 7 && strncmp(url + len - 7, ".tar.gz", 7) == 0);
}

/* A name as the order file and BUILDPACK_URL=nodejs give it. */
static bool is_plain_name(const char *s)
{
    if (!*s || *s == '.' || strlen(s) > 100)
        return false;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && *s != '.' && *s != '_' && *s != '-')
            return false;
    return true;
}

/* A bare git repository (and not a buildpack directory that has one's
 * files): HEAD, objects/ and refs/, and no bin/. */
static bool is_bare_repo(const char *dir)
{
    cleanup_free char *head = slug_path(dir, "HEAD");
    return access(head, F_OK) == 0 && is_dir_in(dir, "objects") && is_dir_in(dir, "refs") &&
           !is_dir_in(dir, "bin");
}

/* Runs one of pierslug's helpers (cp, rm, git) with its output streamed. */
static int run_tool(const char *const *argv, const char *what, struct pier_err *err)
{
    struct proc_run r = {.argv = argv, .timeout_s = STEP_TIMEOUT_S, .tool = true};
    int rc = proc_run(&r, err);
    if (rc < 0)
        return err_wrap(err, rc, "%s", what);
    char st[64];
    if (r.timed_out)
        return err_set(err, PIER_ETIMEOUT, "%s: timed out after %d s", what, STEP_TIMEOUT_S);
    if (r.status != 0)
        return err_set(err, PIER_EUNAVAIL, "%s: %s failed (%s)", what, argv[0],
                       proc_status_str(r.status, st, sizeof(st)));
    return 0;
}

/* A tarball made by a code host holds one top directory: the buildpack is
 * that directory. */
static void descend_single_dir(struct buildpack *bp)
{
    if (is_dir_in(bp->dir, "bin"))
        return;
    char only[4096] = "";
    int n = 0;
    DIR *d = opendir(bp->dir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        n++;
        snprintf(only, sizeof(only), "%s/%s", bp->dir, e->d_name);
    }
    closedir(d);
    if (n == 1 && is_dir_in(only, "bin")) {
        free(bp->dir);
        bp->dir = xstrdup(only);
    }
}

/* git clone of repo (a URL) at ref (NULL: the default branch) into dest. */
static int fetch_git(const char *repo, const char *ref, const char *dest, struct pier_err *err)
{
    char shown[512];
    slug_url_shown(repo, shown, sizeof(shown));
    cleanup_buf struct buf what = BUF_INIT;
    buf_printf(&what, "cloning buildpack %s%s%s", shown, ref ? "#" : "", ref ? ref : "");
    const char *shallow[12];
    size_t k = 0;
    shallow[k++] = "git";
    shallow[k++] = "clone";
    shallow[k++] = "--quiet";
    shallow[k++] = "--depth";
    shallow[k++] = "1";
    if (ref) {
        shallow[k++] = "--branch";
        shallow[k++] = ref;
    }
    shallow[k++] = "--";
    shallow[k++] = repo;
    shallow[k++] = dest;
    shallow[k] = NULL;
    struct pier_err first = {0};
    if (run_tool(shallow, what.p, &first) == 0)
        return 0;
    if (!ref)
        return err_set(err, first.code, "%s", first.msg);
    /* --branch takes branches and tags; a commit needs the whole history. */
    const char *rm[] = {"rm", "-rf", "--", dest, NULL};
    const char *full[] = {"git", "clone", "--quiet", "--", repo, dest, NULL};
    const char *checkout[] = {"git", "-C", dest, "checkout", "--quiet", ref, "--", NULL};
    int rc = run_tool(rm, what.p, err);
    if (rc == 0)
        rc = run_tool(full, what.p, err);
    if (rc == 0)
        rc = run_tool(checkout, what.p, err);
    return rc;
}

/* A URL with an optional "#ref": a git URL. */
static int fetch_git_url(const char *url, const char *dest, struct pier_err *err)
{
    cleanup_free char *repo = xstrdup(url);
    char *hash = strchr(repo, '#');
    const char *ref = NULL;
    if (hash) {
        *hash = '\0';
        ref = hash[1] ? hash + 1 : NULL;
    }
    return fetch_git(repo, ref, dest, err);
}

/* An absolute path: a buildpack directory (used in place, or copied when
 * pierslug may not write it), or a git repository with an optional #ref. */
static int fetch_path(const char *path, const char *dest, struct buildpack *bp,
                      struct pier_err *err)
{
    if (is_dir(path) && !is_bare_repo(path)) {
        /* A buildpack may write into its own directory (its export file):
         * a read-only one is copied. */
        if (access(path, W_OK) == 0) {
            bp->dir = xstrdup(path);
            return 0;
        }
        bp->dir = xstrdup(dest);
        const char *cp[] = {"cp", "-R", "--", path, dest, NULL};
        return run_tool(cp, "copying the buildpack", err);
    }
    cleanup_free char *repo = xstrdup(path);
    char *hash = strchr(repo, '#');
    if (hash)
        *hash = '\0';
    if (!is_bare_repo(repo) && !is_dir_in(repo, ".git"))
        return err_set(err, PIER_ENOTFOUND, "buildpack %s: not a directory%s", path,
                       hash ? " or a git repository" : "");
    out_head("Fetching buildpack %s", path);
    bp->dir = xstrdup(dest);
    cleanup_buf struct buf url = BUF_INIT;
    buf_printf(&url, "file://%s", repo); /* a local clone would ignore --depth */
    return fetch_git(url.p, hash && hash[1] ? hash + 1 : NULL, dest, err);
}

/* A name that is none of the accepted forms. */
static int refuse(const struct build_ctx *ctx, const char *shown, struct pier_err *err)
{
    cleanup_buf struct buf text = BUF_INIT;
    cleanup_buf struct buf list = BUF_INIT;
    char *names[64];
    size_t n = buildpack_shipped_names(ctx, &text, names, 64);
    for (size_t i = 0; i < n; i++)
        buf_printf(&list, "%s%s", i ? ", " : "", names[i]);
    return err_set(err, PIER_EINVAL,
                   "buildpack \"%s\" is not a URL or a path: give an http(s), git, ssh or file "
                   "URL (of a git repository, with an optional #ref, or of a .tgz), an absolute "
                   "path in the build container, or the name of a shipped buildpack (%s)",
                   shown, n ? list.p : "none are installed");
}

int buildpack_fetch(const struct build_ctx *ctx, const char *url, int n, struct buildpack *bp,
                    struct pier_err *err)
{
    *bp = (struct buildpack){.url = xstrdup(url)};
    char shown[512];
    slug_url_shown(url, shown, sizeof(shown));
    cleanup_buf struct buf dest = BUF_INIT;
    buf_printf(&dest, "%s/%d", ctx->work_dir, n);
    int rc = 0;
    if (url[0] == '/') {
        rc = fetch_path(url, dest.p, bp, err);
    } else if (is_tarball_url(url)) {
        out_head("Fetching buildpack %s", shown);
        bp->dir = xstrdup(dest.p);
        if (mkdir(dest.p, 0700) < 0)
            return err_set(err, -errno, "%s: %s", dest.p, strerror(errno));
        rc = slug_fetch_tar(url, dest.p, true, err);
        if (rc == PIER_ENOTFOUND)
            rc = err_set(err, PIER_ENOTFOUND, "buildpack %s: not found (404)", shown);
        if (rc == 0)
            descend_single_dir(bp);
    } else if (has_scheme(url, git_schemes)) {
        out_head("Fetching buildpack %s", shown);
        bp->dir = xstrdup(dest.p);
        rc = fetch_git_url(url, dest.p, err);
    } else if (is_plain_name(url) && is_dir_in(ctx->shipped_dir, url)) {
        cleanup_free char *path = slug_path(ctx->shipped_dir, url);
        rc = fetch_path(path, dest.p, bp, err);
    } else {
        return refuse(ctx, shown, err);
    }
    if (rc < 0)
        return rc;
    cleanup_free char *compile = slug_path(bp->dir, "bin/compile");
    if (access(compile, X_OK) < 0)
        return err_set(err, PIER_EINVAL, "buildpack %s has no bin/compile that can be run", shown);
    return 0;
}

int buildpack_detect(const struct build_ctx *ctx, struct buildpack *bp, struct pier_err *err)
{
    cleanup_free char *detect = slug_path(bp->dir, "bin/detect");
    if (access(detect, X_OK) < 0) {
        err_set(err, PIER_EINVAL, "it has no bin/detect");
        return 0;
    }
    cleanup_buf struct buf said = BUF_INIT;
    const char *argv[] = {detect, ctx->app_dir, NULL};
    struct proc_run r = {.argv = argv,
                         .cwd = ctx->app_dir,
                         .timeout_s = STEP_TIMEOUT_S,
                         .capture = &said,
                         .capture_max = DETECT_OUTPUT_MAX};
    int rc = proc_run(&r, err);
    if (rc < 0)
        return err_wrap(err, rc, "bin/detect");
    char st[64];
    if (r.timed_out)
        return err_set(err, PIER_ETIMEOUT, "bin/detect timed out after %d s", STEP_TIMEOUT_S);
    if (r.status != 0) {
        err_set(err, PIER_EINVAL, "bin/detect: %s", proc_status_str(r.status, st, sizeof(st)));
        return 0;
    }
    size_t len = said.p ? strcspn(said.p, "\r\n") : 0;
    while (len > 0 && (said.p[len - 1] == ' ' || said.p[len - 1] == '\t'))
        len--;
    free(bp->name);
    if (len > 0) {
        struct buf b = BUF_INIT;
        buf_append(&b, said.p, len > 200 ? 200 : len);
        bp->name = buf_detach(&b);
    } else {
        bp->name = short_name(bp->url);
    }
    return 1;
}

int buildpack_compile(const struct build_ctx *ctx, const struct buildpack *bp,
                      const char *const *exports, size_t n_exports, struct pier_err *err)
{
    cleanup_free char *compile = slug_path(bp->dir, "bin/compile");
    cleanup_buf struct buf script = BUF_INIT;
    const char *direct[] = {compile, ctx->app_dir, ctx->cache_dir, ctx->env_dir, NULL};
    const char *sourced[] = {"bash",       "-c",           NULL,         "compile", compile,
                             ctx->app_dir, ctx->cache_dir, ctx->env_dir, NULL};
    struct proc_run r = {.argv = direct, .cwd = ctx->app_dir, .timeout_s = ctx->compile_timeout};
    if (n_exports > 0) {
        /* The export files of the buildpacks before, in their order, in
         * the shell that then becomes the compile. */
        for (size_t i = 0; i < n_exports; i++) {
            buf_puts(&script, ". ");
            slug_shell_quote(&script, exports[i]);
            buf_puts(&script, " || exit 1\n");
        }
        buf_puts(&script, "exec \"$@\"\n");
        sourced[2] = script.p;
        r.argv = sourced;
    }
    int rc = proc_run(&r, err);
    if (rc < 0)
        return err_wrap(err, rc, "%s: bin/compile", bp->name);
    char st[64];
    if (r.timed_out)
        return err_set(err, PIER_ETIMEOUT, "%s: compile timed out after %d s and was stopped",
                       bp->name, ctx->compile_timeout);
    if (r.status != 0)
        return err_set(err, PIER_EINVAL, "%s: compile failed (%s)", bp->name,
                       proc_status_str(r.status, st, sizeof(st)));
    return 0;
}

/* The names bin/release gives must be usable: process types as in a
 * Procfile, config vars as environment variable names; each section a
 * mapping (or absent, or null). */
static int check_release(const json_t *rel, const char *who, struct pier_err *err)
{
    static const char *const sections[] = {"default_process_types", "config_vars"};
    for (size_t i = 0; i < 2; i++) {
        const json_t *m = json_object_get(rel, sections[i]);
        if (!m || json_is_null(m))
            continue;
        if (!json_is_object(m))
            return err_set(err, PIER_EINVAL, "%s: bin/release: %s is not a mapping", who,
                           sections[i]);
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)m, k, v)
        {
            bool types = i == 0;
            bool ok = types ? procfile_valid_type(k, strlen(k)) : slug_valid_env_name(k, strlen(k));
            if (!ok)
                return err_set(err, PIER_EINVAL, "%s: bin/release: %s: \"%.80s\" is not a %s", who,
                               sections[i], k,
                               types ? "process type (A-Z a-z 0-9 _ -, at most 63)"
                                     : "variable name ([A-Za-z_][A-Za-z0-9_]*)");
            if (types && (!json_is_string(v) || !json_string_length(v)))
                return err_set(err, PIER_EINVAL, "%s: bin/release: %s: %s has no command", who,
                               sections[i], k);
        }
    }
    return 0;
}

int buildpack_release(const struct build_ctx *ctx, const struct buildpack *bp, json_t **out,
                      struct pier_err *err)
{
    *out = NULL;
    cleanup_free char *release = slug_path(bp->dir, "bin/release");
    if (access(release, F_OK) < 0) {
        *out = json_object();
        return 0;
    }
    cleanup_buf struct buf yaml = BUF_INIT;
    const char *argv[] = {release, ctx->app_dir, NULL};
    struct proc_run r = {.argv = argv,
                         .cwd = ctx->app_dir,
                         .timeout_s = STEP_TIMEOUT_S,
                         .capture = &yaml,
                         .capture_max = RELYAML_MAX_BYTES};
    int rc = proc_run(&r, err);
    if (rc == -EFBIG)
        return err_set(err, PIER_ETOOBIG, "%s: bin/release wrote more than %d bytes", bp->name,
                       RELYAML_MAX_BYTES);
    if (rc < 0)
        return err_wrap(err, rc, "%s: bin/release", bp->name);
    char st[64];
    if (r.timed_out)
        return err_set(err, PIER_ETIMEOUT, "%s: bin/release timed out after %d s", bp->name,
                       STEP_TIMEOUT_S);
    if (r.status != 0)
        return err_set(err, PIER_EINVAL, "%s: bin/release failed (%s)", bp->name,
                       proc_status_str(r.status, st, sizeof(st)));
    rc = relyaml_parse(yaml.p ? yaml.p : "", yaml.len, out, err);
    if (rc < 0)
        return err_wrap(err, rc, "%s", bp->name);
    if ((rc = check_release(*out, bp->name, err)) < 0) {
        json_decref(*out);
        *out = NULL;
    }
    return rc;
}
