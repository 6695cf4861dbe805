/* slugbuilder: `pierslug build`, run as a one-off job on the stack (spec6
 * "pierslug build", docs/build.md). It turns the pushed tree into a slug:
 *
 *   source (SOURCE_URL) -> /app, .slugignore applied
 *   cache (CACHE_URL) -> /tmp/cache; config vars -> /tmp/env, one file each
 *   buildpacks: BUILDPACK_URL, else /app/.buildpacks, else the first of the
 *     shipped ones (/.pier/buildpacks/order) whose bin/detect says yes;
 *     each one's bin/detect, then bin/compile under the export files of
 *     the ones before it
 *   bin/release of the last one; the Procfile over its default types
 *   tar of /app -> SLUG_URL (counted and hashed on the way); /tmp/cache ->
 *     CACHE_PUT_URL
 *   the last line: "pier-build-result: {...}" for the git receiver.
 *
 * Every step says what it does in the buildpack output style; the first
 * that fails says why on a " !     " line and the exit status is 1. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "build/procfile.h"
#include "build/slug.h"
#include "build/slugignore.h"
#include "lib/cleanup.h"

/* Where things are in the build container. PIER_SLUG_ROOT, when set and
 * pierslug is not the container's PID 1, is put before each (for tests
 * that run pierslug outside a container). */
#define APP_DIR "/app"
#define ENV_DIR "/tmp/env"
#define CACHE_DIR "/tmp/cache"
#define WORK_DIR "/tmp/buildpacks"
#define SHIPPED_DIR "/.pier/buildpacks"
#define TOOL_HOME "/tmp/.pierslug"
#define DEFAULT_STACK "pier-bookworm"
#define COMPILE_TIMEOUT_S (15 * 60)
#define SLUG_MAX_BYTES (500LL * 1000 * 1000)
#define MAX_BUILDPACKS 16
#define SMALL_FILE_MAX (64 * 1024)
#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#define N_PATHS 6

/* What the job's environment asks for; the variables are taken out of the
 * environment the buildpacks see. */
struct build_env {
    char *source_url, *slug_url, *cache_url, *cache_put_url, *buildpack_url;
    char *config_names; /* PIER_CONFIG_VARS */
    int compile_timeout;
    long long slug_max;
};

struct build {
    struct build_ctx ctx;
    struct build_env env;
    struct buildpack bps[MAX_BUILDPACKS];
    size_t n_bps;
    json_t *release;       /* the last bin/release's output */
    json_t *process_types; /* release defaults + Procfile */
    struct slug_upload slug;
    char *paths[N_PATHS]; /* owns the ctx's directories and the tools' home */
};

/* ---- the environment ----
 *
 * The secrets the build job gets (the signed upload URLs, the config vars)
 * must not reach the buildpacks, which run as the same user as pierslug.
 * They leave environ before any buildpack runs; but /proc/PID/environ
 * shows the block the kernel set up at exec, whatever environ says later,
 * so their text there is overwritten too (and pierslug makes itself
 * non-dumpable, which closes its /proc files to that user: see
 * slugbuilder_main). */

/* The block of the environment strings as the kernel gave them. */
static uintptr_t env_lo, env_hi;

static void note_env_block(void)
{
    for (char **e = environ; *e; e++) {
        uintptr_t start = (uintptr_t)*e, end = start + strlen(*e) + 1;
        if (!env_lo || start < env_lo)
            env_lo = start;
        if (end > env_hi)
            env_hi = end;
    }
}

/* Removes name from the environment and overwrites its text in the
 * original block. */
static void wipe_env(const char *name)
{
    size_t nlen = strlen(name);
    char *found[8];
    size_t n = 0;
    for (char **e = environ; *e && n < 8; e++)
        if (strncmp(*e, name, nlen) == 0 && (*e)[nlen] == '=' && (uintptr_t)*e >= env_lo &&
            (uintptr_t)*e < env_hi)
            found[n++] = *e;
    unsetenv(name);
    for (size_t i = 0; i < n; i++)
        explicit_bzero(found[i], strlen(found[i]));
}

/* name's value (a new string; NULL when unset or empty), out of the
 * environment. */
static char *take_env(const char *name)
{
    const char *v = getenv(name);
    char *copy = v && *v ? xstrdup(v) : NULL;
    wipe_env(name);
    return copy;
}

/* Whether name is in PIER_CONFIG_VARS: then it is the app's config var,
 * never a setting of pierslug's. */
static bool is_config_var(const struct build_env *e, const char *name)
{
    size_t nlen = strlen(name);
    for (const char *p = e->config_names; p && *p;) {
        p += strspn(p, ", \n");
        size_t len = strcspn(p, ", \n");
        if (len == nlen && strncmp(p, name, len) == 0)
            return true;
        p += len;
    }
    return false;
}

/* A setting (PIER_...) that is not a config var: taken out, new string. */
static char *take_setting(const struct build_env *e, const char *name)
{
    return is_config_var(e, name) ? NULL : take_env(name);
}

/* Every PIER_ variable left but those every job has (docs/host.md) leaves
 * the environment: buildpacks get none of pierslug's settings. */
static void drop_pier_vars(void)
{
    static const char *const keep[] = {"PIER_JOB_ID", "PIER_HOST_ID"};
    for (;;) {
        cleanup_free char *name = NULL;
        for (char **e = environ; *e && !name; e++) {
            if (strncmp(*e, "PIER_", 5) != 0 || !strchr(*e, '='))
                continue; /* (unsetenv would not remove one without '=') */
            struct buf b = BUF_INIT;
            buf_append(&b, *e, strcspn(*e, "="));
            name = buf_detach(&b);
            for (size_t i = 0; i < sizeof(keep) / sizeof(*keep) && name; i++)
                if (strcmp(name, keep[i]) == 0) {
                    free(name);
                    name = NULL;
                }
        }
        if (!name)
            return;
        wipe_env(name);
    }
}

static void set_paths(struct build *b)
{
    cleanup_free char *root = take_setting(&b->env, "PIER_SLUG_ROOT");
    /* In a build job (PID 1 of its container) the paths are fixed: a
     * variable of the job's must not move them. */
    if (getpid() == 1) {
        free(root);
        root = NULL;
    }
    const char *dirs[N_PATHS] = {APP_DIR, ENV_DIR, CACHE_DIR, WORK_DIR, SHIPPED_DIR, TOOL_HOME};
    for (size_t i = 0; i < N_PATHS; i++) {
        struct buf p = BUF_INIT;
        buf_printf(&p, "%s%s", root ? root : "", dirs[i]);
        b->paths[i] = buf_detach(&p);
    }
    b->ctx = (struct build_ctx){.app_dir = b->paths[0],
                                .env_dir = b->paths[1],
                                .cache_dir = b->paths[2],
                                .work_dir = b->paths[3],
                                .shipped_dir = b->paths[4]};
}

static int write_file(const char *path, const char *data, size_t len, mode_t mode,
                      struct pier_err *err)
{
    cleanup_close int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode);
    if (fd < 0)
        return err_set(err, -errno, "%s: %s", path, strerror(errno));
    int rc = fs_write_all(fd, data, len);
    if (rc < 0)
        return err_set(err, rc, "%s: %s", path, strerror(-rc));
    return 0;
}

/* PIER_CONFIG_VARS names the config vars: each becomes ENV_DIR/NAME and
 * leaves the environment, so that buildpacks see them only as files. */
static int config_vars_to_env_dir(const struct build_env *e, const char *env_dir,
                                  struct pier_err *err)
{
    if (!e->config_names)
        return 0;
    cleanup_free char *names = xstrdup(e->config_names);
    char *save = NULL;
    for (char *n = strtok_r(names, ", \n", &save); n; n = strtok_r(NULL, ", \n", &save)) {
        if (!slug_valid_env_name(n, strlen(n)))
            return err_set(err, PIER_EINVAL, "PIER_CONFIG_VARS: \"%.100s\" is not a name", n);
        cleanup_free char *v = getenv(n) ? xstrdup(getenv(n)) : NULL;
        if (!v)
            continue;
        wipe_env(n);
        cleanup_buf struct buf path = BUF_INIT;
        buf_printf(&path, "%s/%s", env_dir, n);
        int rc = write_file(path.p, v, strlen(v), 0600, err);
        explicit_bzero(v, strlen(v));
        if (rc < 0)
            return rc;
    }
    /* A config var named PATH or HOME is the app's, not the build's. */
    setenv("PATH", DEFAULT_PATH, 0);
    setenv("HOME", "/app", 0);
    return 0;
}

static int parse_positive(const struct build_env *e, const char *name, long long def,
                          long long *out, struct pier_err *err)
{
    cleanup_free char *s = take_setting(e, name);
    *out = def;
    if (!s)
        return 0;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (end == s || *end || errno || v <= 0)
        return err_set(err, PIER_EINVAL, "%s: \"%.50s\" is not a positive number", name, s);
    *out = v;
    return 0;
}

static int read_env(struct build_env *e, struct pier_err *err)
{
    e->source_url = take_env("SOURCE_URL");
    e->slug_url = take_env("SLUG_URL");
    e->cache_url = take_env("CACHE_URL");
    e->cache_put_url = take_env("CACHE_PUT_URL");
    e->buildpack_url = take_env("BUILDPACK_URL");
    if (!e->source_url || !e->slug_url)
        return err_set(err, PIER_EINVAL,
                       "%s is not set (pierslug build runs as the build job "
                       "the git receiver starts; docs/build.md)",
                       e->source_url ? "SLUG_URL" : "SOURCE_URL");
    long long t;
    int rc = parse_positive(e, "PIER_COMPILE_TIMEOUT", COMPILE_TIMEOUT_S, &t, err);
    if (rc == 0)
        rc = parse_positive(e, "PIER_SLUG_MAX_BYTES", SLUG_MAX_BYTES, &e->slug_max, err);
    e->compile_timeout = t > 86400 ? 86400 : (int)t;
    if (rc < 0)
        return rc;
    /* The buildpacks' environment: STACK and SOURCE_VERSION (Heroku's). */
    if (!getenv("STACK"))
        setenv("STACK", DEFAULT_STACK, 1);
    setenv("GIT_TERMINAL_PROMPT", "0", 1);
    return 0;
}

static void free_env(struct build_env *e)
{
    free(e->source_url);
    free(e->slug_url);
    free(e->cache_url);
    free(e->cache_put_url);
    free(e->buildpack_url);
    free(e->config_names);
}

static int make_dir(const char *path, struct pier_err *err)
{
    if (mkdir(path, 0700) < 0 && errno != EEXIST)
        return err_set(err, -errno, "%s: %s", path, strerror(errno));
    return 0;
}

/* /app starts empty (a build job of an app that has a release gets its
 * slug there too), and so do the build's own directories. */
static int prepare_dirs(const struct build *b, struct pier_err *err)
{
    const struct build_ctx *c = &b->ctx;
    struct stat st;
    if (stat(c->app_dir, &st) < 0 || !S_ISDIR(st.st_mode))
        return err_set(err, PIER_ENOTFOUND, "%s is not a directory: is this a job container?",
                       c->app_dir);
    int rc = slug_empty_dir(c->app_dir, err);
    if (rc < 0)
        return err_wrap(err, rc, "emptying %s", c->app_dir);
    cleanup_free char *tmp = xstrdup(c->env_dir);
    *strrchr(tmp, '/') = '\0'; /* the env, cache and work dirs' parent: /tmp */
    if ((rc = make_dir(tmp, err)) < 0 || (rc = make_dir(c->env_dir, err)) < 0 ||
        (rc = make_dir(c->cache_dir, err)) < 0 || (rc = make_dir(c->work_dir, err)) < 0 ||
        (rc = proc_set_tool_home(b->paths[5], err)) < 0)
        return rc;
    return 0;
}

static int read_small(const char *path, struct buf *b, size_t max)
{
    cleanup_close int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    return proc_read_all(fd, b, max);
}

static int fetch_source(const struct build *b, struct pier_err *err)
{
    out_head("Fetching the source%s%.12s", getenv("SOURCE_VERSION") ? " of " : "",
             getenv("SOURCE_VERSION") ? getenv("SOURCE_VERSION") : "");
    int rc = slug_fetch_tar(b->env.source_url, b->ctx.app_dir, false, err);
    if (rc < 0)
        return err_wrap(err, rc, "the source");
    cleanup_buf struct buf text = BUF_INIT;
    cleanup_free char *path = slug_path(b->ctx.app_dir, ".slugignore");
    rc = read_small(path, &text, 1024 * 1024);
    if (rc == -ENOENT)
        return 0;
    if (rc < 0)
        return err_set(err, rc, ".slugignore: %s", strerror(-rc));
    struct slugignore *si = slugignore_parse(text.p ? text.p : "", text.len);
    size_t removed = 0, skipped = slugignore_skipped(si);
    rc = slugignore_apply(si, b->ctx.app_dir, &removed, err);
    slugignore_free(si);
    if (skipped)
        out_error("warning: .slugignore: %zu line%s skipped (at most %d patterns of %d bytes)",
                  skipped, skipped == 1 ? "" : "s", SLUGIGNORE_MAX_PATTERNS,
                  SLUGIGNORE_MAX_PATTERN_BYTES);
    if (rc < 0)
        return err_wrap(err, rc, ".slugignore");
    if (removed)
        out_head("Deleting %zu file%s matching .slugignore patterns", removed,
                 removed == 1 ? "" : "s");
    return 0;
}

/* The cache is a help, never a reason to fail: trouble is a warning. */
static void restore_cache(const struct build *b)
{
    if (!b->env.cache_url)
        return;
    struct pier_err err = {0};
    int rc = slug_fetch_tar(b->env.cache_url, b->ctx.cache_dir, true, &err);
    if (rc == 0) {
        out_head("Restored the build cache");
        return;
    }
    if (rc != PIER_ENOTFOUND)
        out_error("warning: the build cache was not restored: %s", err.msg);
    slug_empty_dir(b->ctx.cache_dir, &err);
}

static void save_cache(const struct build *b)
{
    if (!b->env.cache_put_url)
        return;
    out_head("Saving the build cache");
    struct slug_upload up;
    struct pier_err err = {0};
    if (slug_upload_dir(b->ctx.cache_dir, b->env.cache_put_url, 0, &up, &err) < 0)
        out_error("warning: the build cache was not saved: %s", err.msg);
}

/* One buildpack URL a line (or comma-separated); '#' starts a comment line. */
static int split_urls(const char *text, char **urls, size_t *n, struct pier_err *err)
{
    cleanup_free char *copy = xstrdup(text);
    char *save = NULL;
    for (char *u = strtok_r(copy, ",\n", &save); u; u = strtok_r(NULL, ",\n", &save)) {
        while (*u == ' ' || *u == '\t')
            u++;
        size_t len = strlen(u);
        while (len > 0 && (u[len - 1] == ' ' || u[len - 1] == '\t' || u[len - 1] == '\r'))
            u[--len] = '\0';
        if (len == 0 || u[0] == '#')
            continue;
        if (*n == MAX_BUILDPACKS)
            return err_set(err, PIER_EINVAL, "more than %d buildpacks", MAX_BUILDPACKS);
        urls[(*n)++] = xstrdup(u);
    }
    return 0;
}

/* The buildpacks given: BUILDPACK_URL, else .buildpacks. 0 of them means
 * detection. */
static int given_buildpacks(struct build *b, char **urls, size_t *n, struct pier_err *err)
{
    if (b->env.buildpack_url)
        return split_urls(b->env.buildpack_url, urls, n, err);
    cleanup_buf struct buf text = BUF_INIT;
    cleanup_free char *path = slug_path(b->ctx.app_dir, ".buildpacks");
    int rc = read_small(path, &text, SMALL_FILE_MAX);
    if (rc == -ENOENT)
        return 0;
    if (rc < 0)
        return err_set(err, rc, ".buildpacks: %s", strerror(-rc));
    return split_urls(text.p ? text.p : "", urls, n, err);
}

/* Each given buildpack must apply: detect, then compile. */
static int run_given(struct build *b, char **urls, size_t n, struct pier_err *err)
{
    char shown[MAX_BUILDPACKS][512];
    for (size_t i = 0; i < n; i++)
        slug_url_shown(urls[i], shown[i], sizeof(shown[i]));
    if (n > 1) {
        out_head("Using %zu buildpacks:", n);
        for (size_t i = 0; i < n; i++)
            out_detail("%zu. %s", i + 1, shown[i]);
    }
    const char *exports[MAX_BUILDPACKS];
    size_t n_exports = 0;
    char *owned[MAX_BUILDPACKS] = {0};
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        struct buildpack *bp = &b->bps[b->n_bps++];
        if ((rc = buildpack_fetch(&b->ctx, urls[i], (int)i, bp, err)) < 0)
            break;
        struct pier_err why = {0};
        rc = buildpack_detect(&b->ctx, bp, &why);
        if (rc < 0) {
            rc = err_set(err, why.code, "buildpack %s: %s", shown[i], why.msg);
            break;
        }
        if (rc == 0) {
            rc = err_set(err, PIER_EINVAL, "app not compatible with buildpack %s (%s)", shown[i],
                         why.msg);
            break;
        }
        out_head("%s app detected", bp->name);
        if ((rc = buildpack_compile(&b->ctx, bp, exports, n_exports, err)) < 0)
            break;
        char *p = slug_path(bp->dir, "export");
        if (access(p, R_OK) == 0) {
            owned[n_exports] = p;
            exports[n_exports] = p;
            n_exports++;
        } else {
            free(p);
        }
    }
    for (size_t i = 0; i < n_exports; i++)
        free(owned[i]);
    return rc < 0 ? rc : 0;
}

/* No buildpack given: the first shipped one that detects. */
static int run_detected(struct build *b, struct pier_err *err)
{
    cleanup_buf struct buf order = BUF_INIT;
    char *names[64];
    size_t n = buildpack_shipped_names(&b->ctx, &order, names, 64);
    cleanup_buf struct buf tried = BUF_INIT;
    for (size_t i = 0; i < n; i++) {
        struct buildpack cand = {.url = xstrdup(names[i]),
                                 .dir = slug_path(b->ctx.shipped_dir, names[i])};
        struct pier_err why = {0};
        int rc = buildpack_detect(&b->ctx, &cand, &why);
        buf_printf(&tried, "%s%s", tried.len ? ", " : "", names[i]);
        if (rc < 0)
            out_error("warning: buildpack %s: %s", names[i], why.msg);
        if (rc <= 0) {
            buildpack_clear(&cand);
            continue;
        }
        /* A writable copy, then as if it had been given. */
        struct buildpack *bp = &b->bps[b->n_bps++];
        rc = buildpack_fetch(&b->ctx, cand.dir, 0, bp, err);
        free(bp->url);
        bp->url = xstrdup(names[i]);
        free(bp->name);
        bp->name = steal_pointer(&cand.name);
        buildpack_clear(&cand);
        if (rc < 0)
            return err_wrap(err, rc, "buildpack %s", names[i]);
        out_head("%s app detected", bp->name);
        return buildpack_compile(&b->ctx, bp, NULL, 0, err);
    }
    return err_set(err, PIER_EINVAL,
                   "no buildpack detected: none of the shipped buildpacks (%s) "
                   "applies to this app; set BUILDPACK_URL or add a .buildpacks "
                   "file",
                   tried.len ? tried.p : "none are installed");
}

static int run_buildpacks(struct build *b, struct pier_err *err)
{
    char *urls[MAX_BUILDPACKS];
    size_t n = 0;
    int rc = given_buildpacks(b, urls, &n, err);
    if (rc == 0)
        rc = n > 0 ? run_given(b, urls, n, err) : run_detected(b, err);
    for (size_t i = 0; i < n; i++)
        free(urls[i]);
    return rc;
}

/* "web, worker" of an object's keys. */
static void list_keys(const json_t *o, struct buf *out)
{
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)o, k, v)
    {
        buf_printf(out, "%s%s", out->len ? ", " : "", k);
    }
    if (!out->len)
        buf_puts(out, "(none)");
}

/* An object of strings from the release's key (null or absent: {}). */
static json_t *string_map(const json_t *release, const char *key)
{
    json_t *out = json_object();
    json_t *m = json_object_get(release, key);
    const char *k;
    json_t *v;
    if (!json_is_object(m))
        return out;
    json_object_foreach(m, k, v)
    {
        if (json_is_string(v))
            json_object_set(out, k, v);
    }
    return out;
}

static int release_and_procfile(struct build *b, struct pier_err *err)
{
    const struct buildpack *last = &b->bps[b->n_bps - 1];
    int rc = buildpack_release(&b->ctx, last, &b->release, err);
    if (rc < 0)
        return rc;
    out_head("Discovering process types");
    cleanup_json json_t *defaults = string_map(b->release, "default_process_types");
    b->process_types = json_deep_copy(defaults);
    cleanup_buf struct buf text = BUF_INIT;
    cleanup_free char *path = slug_path(b->ctx.app_dir, "Procfile");
    rc = read_small(path, &text, PROCFILE_MAX_BYTES + 1);
    if (rc == -EFBIG)
        return err_set(err, PIER_ETOOBIG, "Procfile: larger than %d bytes", PROCFILE_MAX_BYTES);
    if (rc < 0 && rc != -ENOENT)
        return err_set(err, rc, "Procfile: %s", strerror(-rc));
    if (rc == 0) {
        cleanup_json json_t *types = NULL;
        if ((rc = procfile_parse(text.p ? text.p : "", text.len, &types, err)) < 0)
            return rc;
        cleanup_buf struct buf names = BUF_INIT;
        list_keys(types, &names);
        out_detail("Procfile declares types     -> %s", names.p);
        json_object_update(b->process_types, types);
    }
    cleanup_buf struct buf names = BUF_INIT;
    list_keys(defaults, &names);
    out_detail("Default types for buildpack -> %s", names.p);
    return 0;
}

static void human_size(long long n, char *buf, size_t size)
{
    if (n >= 1000 * 1000 && n % (1000 * 1000) == 0)
        snprintf(buf, size, "%lld MB", n / (1000 * 1000));
    else if (n >= 1000 && n < 1000 * 1000 && n % 1000 == 0)
        snprintf(buf, size, "%lld kB", n / 1000);
    else if (n >= 1000 * 1000)
        snprintf(buf, size, "%.1f MB", (double)n / 1e6);
    else if (n >= 1000)
        snprintf(buf, size, "%.1f kB", (double)n / 1e3);
    else
        snprintf(buf, size, "%lld bytes", n);
}

static int upload_slug(struct build *b, struct pier_err *err)
{
    out_head("Compressing and uploading the slug");
    int rc = slug_upload_dir(b->ctx.app_dir, b->env.slug_url, b->env.slug_max, &b->slug, err);
    char size[32];
    if (rc == PIER_ETOOBIG) {
        human_size(b->env.slug_max, size, sizeof(size));
        return err_set(err, rc,
                       "slug larger than %s compressed (the limit); a .slugignore "
                       "file can leave out what the app does not need at run time",
                       size);
    }
    if (rc < 0)
        return err_wrap(err, rc, "the slug");
    human_size(b->slug.size, size, sizeof(size));
    out_detail("Done: %s, sha256 %.12s", size, b->slug.sha256);
    return 0;
}

static void print_result(const struct build *b)
{
    json_t *names = json_array();
    for (size_t i = 0; i < b->n_bps; i++)
        json_array_append_new(names, json_string(b->bps[i].url));
    cleanup_json json_t *r =
        json_pack("{s:O, s:o, s:o, s:I, s:s}", "process_types", b->process_types, "config_vars",
                  string_map(b->release, "config_vars"), "buildpacks", names, "slug_size",
                  (json_int_t)b->slug.size, "slug_sha256", b->slug.sha256);
    cleanup_free char *text = json_dumps(r, JSON_COMPACT | JSON_ENSURE_ASCII);
    out_result(text ? text : "{}");
}

static int build(struct build *b, struct pier_err *err)
{
    int rc;
    if ((rc = read_env(&b->env, err)) < 0 || (rc = prepare_dirs(b, err)) < 0 ||
        (rc = config_vars_to_env_dir(&b->env, b->ctx.env_dir, err)) < 0)
        return rc;
    drop_pier_vars(); /* after the config vars, which may be named PIER_ too */
    if ((rc = fetch_source(b, err)) < 0)
        return rc;
    restore_cache(b);
    b->ctx.compile_timeout = b->env.compile_timeout;
    if ((rc = run_buildpacks(b, err)) < 0 || (rc = release_and_procfile(b, err)) < 0 ||
        (rc = upload_slug(b, err)) < 0)
        return rc;
    save_cache(b);
    print_result(b);
    return 0;
}

/* A stopped build (the job stopped, the push cancelled) ends at once with
 * what it runs. pierslug is the container's PID 1, which ignores signals
 * it has no handler for; when it ends, the kernel ends the rest. */
static void on_stop(int sig)
{
    proc_stop_running();
    static const char msg[] = "\n !     Build stopped\n";
    (void)!write(1, msg, sizeof(msg) - 1);
    _exit(128 + sig);
}

int slugbuilder_main(int argc, char **argv)
{
    (void)argv;
    if (argc > 1) {
        fprintf(stderr, "usage: pierslug build (settings come from the environment: "
                        "docs/build.md)\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_stop};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    /* First: the buildpacks run as pierslug's user, and a dumpable
     * process's /proc files (environ, mem, fd/) are open to that user. */
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    note_env_block();
    umask(022);
    struct build b = {0};
    /* Config vars first: a config var is never read as a setting. */
    b.env.config_names = take_env("PIER_CONFIG_VARS");
    set_paths(&b);
    struct pier_err err = {0};
    int rc = build(&b, &err);
    if (rc < 0)
        out_error("Build failed: %s", err.msg);
    for (size_t i = 0; i < b.n_bps; i++)
        buildpack_clear(&b.bps[i]);
    json_decref(b.release);
    json_decref(b.process_types);
    free_env(&b.env);
    for (size_t i = 0; i < N_PATHS; i++)
        free(b.paths[i]);
    return rc < 0 ? 1 : 0;
}
