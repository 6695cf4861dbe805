/* buildpack: fetching a buildpack and running its three programs the way
 * Heroku's classic buildpack API runs them (CONVENTIONS.md "Buildpack
 * API"). */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

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

static char *path_join(const char *a, const char *b)
{
    struct buf p = BUF_INIT;
    buf_printf(&p, "%s/%s", a, b);
    return buf_detach(&p);
}

void buildpack_clear(struct buildpack *bp)
{
    free(bp->url);
    free(bp->dir);
    free(bp->name);
    *bp = (struct buildpack){0};
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

static bool is_tarball_url(const char *url)
{
    if (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0)
        return false;
    size_t len = strcspn(url, "?#");
    return (len > 4 && strncmp(url + len - 4, ".tgz", 4) == 0) ||
           (len > 7 && strncmp(url + len - 7, ".tar.gz", 7) == 0);
}

/* Runs a helper command (cp, rm, git) with its output streamed. */
static int run_quiet(const char *const *argv, const char *what, struct pier_err *err)
{
    int status;
    bool timed_out;
    int rc = proc_run(argv, NULL, STEP_TIMEOUT_S, NULL, 0, &status, &timed_out, err);
    if (rc < 0)
        return err_wrap(err, rc, "%s", what);
    char st[64];
    if (timed_out)
        return err_set(err, PIER_ETIMEOUT, "%s: timed out after %d s", what, STEP_TIMEOUT_S);
    if (status != 0)
        return err_set(err, PIER_EUNAVAIL, "%s: %s failed (%s)", what, argv[0],
                       proc_status_str(status, st, sizeof(st)));
    return 0;
}

/* A tarball made by a code host holds one top directory: the buildpack is
 * that directory. */
static void descend_single_dir(struct buildpack *bp)
{
    cleanup_free char *bin = path_join(bp->dir, "bin");
    if (is_dir(bin))
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
    cleanup_free char *inner = n == 1 ? path_join(only, "bin") : NULL;
    if (inner && is_dir(inner)) {
        free(bp->dir);
        bp->dir = xstrdup(only);
    }
}

static int fetch_git(const char *url, const char *dest, struct pier_err *err)
{
    cleanup_free char *repo = xstrdup(url);
    char *hash = strchr(repo, '#');
    const char *ref = NULL;
    if (hash) {
        *hash = '\0';
        ref = hash[1] ? hash + 1 : NULL;
    }
    char shown[512];
    slug_url_shown(repo, shown, sizeof(shown));
    cleanup_buf struct buf what = BUF_INIT;
    buf_printf(&what, "cloning buildpack %s%s%s", shown, ref ? "#" : "", ref ? ref : "");
    /* Without a ref: the remote's default branch. */
    const char *shallow[] = {
        "git",     "-c", "advice.detachedHead=false", "clone",          "--quiet",
        "--depth", "1",  ref ? "--branch" : repo,     ref ? ref : dest, ref ? repo : NULL,
        dest,      NULL};
    struct pier_err first = {0};
    if (run_quiet(shallow, what.p, &first) == 0)
        return 0;
    if (!ref)
        return err_set(err, first.code, "%s", first.msg);
    /* --branch takes branches and tags; a commit needs the whole history. */
    const char *rm[] = {"rm", "-rf", dest, NULL};
    const char *full[] = {"git", "clone", "--quiet", repo, dest, NULL};
    const char *checkout[] = {
        "git", "-c", "advice.detachedHead=false", "-C", dest, "checkout", "--quiet", ref, NULL};
    int rc = run_quiet(rm, what.p, err);
    if (rc == 0)
        rc = run_quiet(full, what.p, err);
    if (rc == 0)
        rc = run_quiet(checkout, what.p, err);
    return rc;
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
    if (url[0] == '-') /* would be an option to git */
        return err_set(err, PIER_EINVAL, "buildpack %s: not a URL or a path", shown);
    if (url[0] == '/') {
        if (!is_dir(url))
            return err_set(err, PIER_ENOTFOUND, "buildpack %s: not a directory", url);
        /* A buildpack may write into its own directory (its export file):
         * a read-only one is copied. */
        if (access(url, W_OK) == 0) {
            bp->dir = xstrdup(url);
        } else {
            const char *cp[] = {"cp", "-R", url, dest.p, NULL};
            rc = run_quiet(cp, "copying the buildpack", err);
            bp->dir = xstrdup(dest.p);
        }
    } else {
        out_head("Fetching buildpack %s", shown);
        bp->dir = xstrdup(dest.p);
        if (is_tarball_url(url)) {
            if (mkdir(dest.p, 0700) < 0)
                return err_set(err, -errno, "%s: %s", dest.p, strerror(errno));
            rc = slug_fetch_tar(url, dest.p, true, err);
            if (rc == PIER_ENOTFOUND)
                rc = err_set(err, PIER_ENOTFOUND, "buildpack %s: not found (404)", shown);
            if (rc == 0)
                descend_single_dir(bp);
        } else {
            rc = fetch_git(url, dest.p, err);
        }
    }
    if (rc < 0)
        return rc;
    cleanup_free char *compile = path_join(bp->dir, "bin/compile");
    if (access(compile, X_OK) < 0)
        return err_set(err, PIER_EINVAL, "buildpack %s has no bin/compile that can be run", shown);
    return 0;
}

int buildpack_detect(const struct build_ctx *ctx, struct buildpack *bp, struct pier_err *err)
{
    cleanup_free char *detect = path_join(bp->dir, "bin/detect");
    if (access(detect, X_OK) < 0) {
        err_set(err, PIER_EINVAL, "it has no bin/detect");
        return 0;
    }
    cleanup_buf struct buf said = BUF_INIT;
    const char *argv[] = {detect, ctx->app_dir, NULL};
    int status;
    bool timed_out;
    int rc = proc_run(argv, ctx->app_dir, STEP_TIMEOUT_S, &said, DETECT_OUTPUT_MAX, &status,
                      &timed_out, err);
    if (rc < 0)
        return err_wrap(err, rc, "bin/detect");
    char st[64];
    if (timed_out)
        return err_set(err, PIER_ETIMEOUT, "bin/detect timed out after %d s", STEP_TIMEOUT_S);
    if (status != 0) {
        err_set(err, PIER_EINVAL, "bin/detect: %s", proc_status_str(status, st, sizeof(st)));
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

/* s in single quotes for bash. */
static void shell_quote(struct buf *b, const char *s)
{
    buf_putc(b, '\'');
    for (; *s; s++) {
        if (*s == '\'')
            buf_puts(b, "'\\''");
        else
            buf_putc(b, *s);
    }
    buf_putc(b, '\'');
}

int buildpack_compile(const struct build_ctx *ctx, const struct buildpack *bp,
                      const char *const *exports, size_t n_exports, struct pier_err *err)
{
    cleanup_free char *compile = path_join(bp->dir, "bin/compile");
    cleanup_buf struct buf script = BUF_INIT;
    const char *direct[] = {compile, ctx->app_dir, ctx->cache_dir, ctx->env_dir, NULL};
    const char *sourced[] = {"bash",       "-c",           NULL,         "compile", compile,
                             ctx->app_dir, ctx->cache_dir, ctx->env_dir, NULL};
    const char *const *argv = direct;
    if (n_exports > 0) {
        /* The export files of the buildpacks before, in their order, in
         * the shell that then becomes the compile. */
        for (size_t i = 0; i < n_exports; i++) {
            buf_puts(&script, ". ");
            shell_quote(&script, exports[i]);
            buf_puts(&script, " || exit 1\n");
        }
        buf_puts(&script, "exec \"$@\"\n");
        sourced[2] = script.p;
        argv = sourced;
    }
    int status;
    bool timed_out;
    int rc = proc_run(argv, ctx->app_dir, ctx->compile_timeout, NULL, 0, &status, &timed_out, err);
    if (rc < 0)
        return err_wrap(err, rc, "%s: bin/compile", bp->name);
    char st[64];
    if (timed_out)
        return err_set(err, PIER_ETIMEOUT, "%s: compile timed out after %d s and was stopped",
                       bp->name, ctx->compile_timeout);
    if (status != 0)
        return err_set(err, PIER_EINVAL, "%s: compile failed (%s)", bp->name,
                       proc_status_str(status, st, sizeof(st)));
    return 0;
}

int buildpack_release(const struct build_ctx *ctx, const struct buildpack *bp, json_t **out,
                      struct pier_err *err)
{
    *out = NULL;
    cleanup_free char *release = path_join(bp->dir, "bin/release");
    if (access(release, F_OK) < 0) {
        *out = json_object();
        return 0;
    }
    cleanup_buf struct buf yaml = BUF_INIT;
    const char *argv[] = {release, ctx->app_dir, NULL};
    int status;
    bool timed_out;
    int rc = proc_run(argv, ctx->app_dir, STEP_TIMEOUT_S, &yaml, RELYAML_MAX_BYTES, &status,
                      &timed_out, err);
    if (rc == -EFBIG)
        return err_set(err, PIER_ETOOBIG, "%s: bin/release wrote more than %d bytes", bp->name,
                       RELYAML_MAX_BYTES);
    if (rc < 0)
        return err_wrap(err, rc, "%s: bin/release", bp->name);
    char st[64];
    if (timed_out)
        return err_set(err, PIER_ETIMEOUT, "%s: bin/release timed out after %d s", bp->name,
                       STEP_TIMEOUT_S);
    if (status != 0)
        return err_set(err, PIER_EINVAL, "%s: bin/release failed (%s)", bp->name,
                       proc_status_str(status, st, sizeof(st)));
    rc = relyaml_parse(yaml.p ? yaml.p : "", yaml.len, out, err);
    if (rc < 0)
        return err_wrap(err, rc, "%s", bp->name);
    return 0;
}
