/* pier stack build DIR: the root file system jobs run on.
 *
 * debootstrap --variant=minbase SUITE DIR MIRROR makes a small Debian in
 * DIR; --packages are then installed with apt-get inside it (chroot); DIR/app
 * is made for the slug, and DIR/etc/pier-stack is written last:
 *   {"suite","mirror","packages":[...],"built_at","pier_version"}
 * That file is what tells a finished stack from a half-built one, so it is
 * written atomically and only once everything else has worked. A folder
 * without it that is not empty is never built into: it may be a stack whose
 * build was cut short, or something else altogether. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/ui.h"
#include "lib/buf.h"
#include "lib/cleanup.h"
#include "lib/fs.h"
#include "lib/jsonx.h"

#define MARKER "/etc/pier-stack"
#define DEFAULT_SUITE "bookworm"
#define DEFAULT_MIRROR "http://deb.debian.org/debian"
#define MAX_PACKAGES 256
/* What the shipped buildpacks and the slug builder need (docs/buildpacks.md):
 * installed when --packages is not given. */
#define DEFAULT_PACKAGES "ca-certificates,curl,git,gcc,make,libc6-dev,nodejs,npm,nginx-light"

struct stack_args {
    const char *dir;
    const char *suite;  /* NULL: DEFAULT_SUITE */
    const char *mirror; /* NULL: the host's Debian mirror */
    const char *packages;
};

/* --- arguments -------------------------------------------------------- */

static int parse_args(int argc, char **argv, struct stack_args *a)
{
    memset(a, 0, sizeof(*a));
    for (int i = 0; i < argc; i++) {
        int r;
        if ((r = ui_flag_value(argc, argv, &i, "--suite", &a->suite)) ||
            (r = ui_flag_value(argc, argv, &i, "--mirror", &a->mirror)) ||
            (r = ui_flag_value(argc, argv, &i, "--packages", &a->packages))) {
            if (r < 0)
                return ui_usage("stack", "%s needs a value", argv[i]);
            continue;
        }
        if (argv[i][0] == '-' && argv[i][1])
            return ui_usage("stack", "unknown option \"%s\" for stack build", argv[i]);
        if (a->dir)
            return ui_usage("stack", "stack build takes one DIR");
        a->dir = argv[i];
    }
    if (!a->dir || !*a->dir)
        return ui_usage("stack", "stack build needs DIR (where the stack goes)");
    return 0;
}

static bool charset_ok(const char *s, const char *extra, size_t max)
{
    size_t n = strlen(s);
    if (n == 0 || n > max || !((s[0] >= 'a' && s[0] <= 'z') || (s[0] >= '0' && s[0] <= '9')))
        return false;
    for (const char *p = s; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || strchr(extra, *p)))
            return false;
    return true;
}

/* Splits --packages into a new array of names (Debian's rule: lowercase
 * letters, digits, '+', '-', '.'). Returns the count, or -1 after saying
 * which name is wrong. */
static int split_packages(const char *list, json_t *out)
{
    cleanup_free char *copy = xstrdup(list ? list : "");
    char *save = NULL;
    for (char *p = strtok_r(copy, ",", &save); p; p = strtok_r(NULL, ",", &save)) {
        if (!charset_ok(p, "+-.", 128)) {
            ui_usage("stack",
                     "package name \"%s\" is not valid: lowercase letters, digits, '+', '-' "
                     "and '.', comma-separated",
                     p);
            return -1;
        }
        if (json_array_size(out) >= MAX_PACKAGES) {
            ui_usage("stack", "more than %d packages", MAX_PACKAGES);
            return -1;
        }
        json_array_append_new(out, json_string(p));
    }
    return (int)json_array_size(out);
}

static bool mirror_ok(const char *m)
{
    if (strncmp(m, "http://", 7) != 0 && strncmp(m, "https://", 8) != 0 &&
        strncmp(m, "file:///", 8) != 0)
        return false;
    for (const char *p = m; *p; p++)
        if ((unsigned char)*p <= 0x20 || *p == 0x7f)
            return false;
    return true;
}

/* DIR as an absolute path without trailing slashes (new string). */
static char *absolute(const char *dir)
{
    struct buf b = BUF_INIT;
    if (dir[0] != '/') {
        char cwd[4096];
        if (getcwd(cwd, sizeof(cwd)))
            buf_printf(&b, "%s/", strcmp(cwd, "/") == 0 ? "" : cwd);
    }
    buf_puts(&b, dir);
    while (b.len > 1 && b.p[b.len - 1] == '/')
        b.p[--b.len] = '\0';
    return buf_detach(&b);
}

/* --- the host's mirror ------------------------------------------------ */

/* Whether a sources entry is Debian's main archive: a URI with "debian"
 * in it and not the security archive, for a plain suite ("bookworm", not
 * "bookworm-updates"). */
static bool main_archive(const char *uri, const char *suite)
{
    return uri && suite && mirror_ok(uri) && strstr(uri, "debian") && !strstr(uri, "security") &&
           strncmp(uri, "file:", 5) != 0 && !strchr(suite, '-') && !strchr(suite, '/');
}

/* One-line format: "deb [options] URI SUITE COMPONENTS...". */
static char *mirror_from_list(FILE *f)
{
    char line[2048];
    while (fgets(line, sizeof(line), f)) {
        char *save = NULL;
        char *w = strtok_r(line, " \t\r\n", &save);
        if (!w || strcmp(w, "deb") != 0)
            continue;
        w = strtok_r(NULL, " \t\r\n", &save);
        if (w && w[0] == '[') { /* options: "[arch=amd64 signed-by=...]" */
            while (w && !strchr(w, ']'))
                w = strtok_r(NULL, " \t\r\n", &save);
            if (w)
                w = strtok_r(NULL, " \t\r\n", &save);
        }
        char *suite = strtok_r(NULL, " \t\r\n", &save);
        if (main_archive(w, suite))
            return xstrdup(w);
    }
    return NULL;
}

static bool has_word(const char *list, const char *word)
{
    size_t n = strlen(word);
    for (const char *p = list; (p = strstr(p, word)); p += n)
        if ((p == list || p[-1] == ' ' || p[-1] == '\t') &&
            (p[n] == '\0' || p[n] == ' ' || p[n] == '\t'))
            return true;
    return false;
}

/* deb822 format: stanzas of "Field: value" lines split by blank lines. */
static char *mirror_from_sources(FILE *f)
{
    char line[2048];
    char uri[1024] = "", suites[1024] = "";
    bool deb = false, enabled = true, done = false;
    while (!done) {
        done = !fgets(line, sizeof(line), f);
        line[strcspn(line, "\r\n")] = '\0';
        if (done || line[0] == '\0') {
            char *save = NULL;
            for (char *s = strtok_r(suites, " \t", &save); deb && enabled && s;
                 s = strtok_r(NULL, " \t", &save))
                if (main_archive(uri, s))
                    return xstrdup(uri);
            uri[0] = suites[0] = '\0';
            deb = false;
            enabled = true;
            continue;
        }
        char *colon = strchr(line, ':');
        if (line[0] == '#' || line[0] == ' ' || !colon)
            continue;
        *colon = '\0';
        char *v = colon + 1 + strspn(colon + 1, " \t");
        if (strcasecmp(line, "Types") == 0)
            deb = has_word(v, "deb");
        else if (strcasecmp(line, "Enabled") == 0)
            enabled = strcasecmp(v, "no") != 0;
        else if (strcasecmp(line, "URIs") == 0)
            snprintf(uri, sizeof(uri), "%.*s", (int)strcspn(v, " \t"), v);
        else if (strcasecmp(line, "Suites") == 0)
            snprintf(suites, sizeof(suites), "%s", v);
    }
    return NULL;
}

/* The Debian mirror this host uses (new string), or DEFAULT_MIRROR. */
static char *host_mirror(void)
{
    char *m = NULL;
    FILE *f = fopen("/etc/apt/sources.list", "r");
    if (f) {
        m = mirror_from_list(f);
        fclose(f);
    }
    if (!m && (f = fopen("/etc/apt/sources.list.d/debian.sources", "r"))) {
        m = mirror_from_sources(f);
        fclose(f);
    }
    return m ? m : xstrdup(DEFAULT_MIRROR);
}

/* --- the folder ------------------------------------------------------- */

/* Reads DIR's marker: 0 with *out new, -ENOENT when there is none (or it
 * cannot be read), PIER_EINVAL when it is not a marker. */
static int marker_read(const char *dir, json_t **out)
{
    cleanup_buf struct buf path = BUF_INIT;
    buf_printf(&path, "%s" MARKER, dir);
    json_error_t je;
    *out = json_load_file(path.p, JSON_REJECT_DUPLICATES, &je);
    if (!*out) {
        struct stat st;
        return stat(path.p, &st) == 0 ? PIER_EINVAL : -ENOENT;
    }
    if (!json_is_object(*out) || !json_is_string(json_object_get(*out, "suite"))) {
        json_decref(*out);
        *out = NULL;
        return PIER_EINVAL;
    }
    return 0;
}

/* 1 when DIR holds anything, 0 when it is empty or absent, or -1 after
 * saying what is wrong. */
static int dir_in_use(const char *dir)
{
    struct stat st;
    if (lstat(dir, &st) < 0) {
        if (errno == ENOENT)
            return 0;
        ui_fail(NULL, "cannot look at %s: %s", dir, strerror(errno));
        return -1;
    }
    if (!S_ISDIR(st.st_mode)) {
        ui_fail("give a folder, or a path that does not exist yet", "%s is not a folder", dir);
        return -1;
    }
    DIR *d = opendir(dir);
    if (!d) {
        ui_fail(NULL, "cannot read %s: %s", dir, strerror(errno));
        return -1;
    }
    int used = 0;
    struct dirent *e;
    while (!used && (e = readdir(d)))
        used = strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
    closedir(d);
    return used;
}

static int mkdirs(const char *path, mode_t mode)
{
    cleanup_free char *p = xstrdup(path);
    for (char *s = p + 1;; s++) {
        if (*s != '/' && *s != '\0')
            continue;
        char c = *s;
        *s = '\0';
        if (mkdir(p, mode) < 0 && errno != EEXIST)
            return -errno;
        *s = c;
        if (!c)
            return 0;
    }
}

/* Writes data to path, replacing what is there (also a symlink, which is
 * never followed: it would point out of the stack). */
static int write_file(const char *path, const char *data, size_t len, mode_t mode)
{
    return fs_write_atomic(path, data, len, mode, true, NULL);
}

/* --- running a step --------------------------------------------------- */

/* Runs in the child before exec; returns 0 or -errno with what failed. */
typedef int (*child_setup_fn)(const void *ud, const char **what);

/* Runs argv with its stdout and stderr into one pipe and prints each line
 * of it to stderr after prefix, so the user sees the step progress.
 * Returns the exit status, 128 + the signal that ended it, or -errno when
 * it could not be started. */
static int run_streamed(char *const argv[], const char *prefix, child_setup_fn setup,
                        const void *ud)
{
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) < 0)
        return -errno;
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        close(fds[0]);
        close(fds[1]);
        return -e;
    }
    if (pid == 0) {
        int null = open("/dev/null", O_RDONLY);
        if (null < 0 || dup2(null, 0) < 0 || dup2(fds[1], 1) < 0 || dup2(fds[1], 2) < 0)
            _exit(127);
        setenv("DEBIAN_FRONTEND", "noninteractive", 1);
        setenv("LC_ALL", "C", 1);
        setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", 1);
        const char *what = "";
        int r = setup ? setup(ud, &what) : 0;
        if (r < 0) {
            dprintf(2, "pier: %s: %s\n", what, strerror(-r));
            _exit(127);
        }
        execv(argv[0], argv);
        dprintf(2, "pier: cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    close(fds[1]);
    cleanup_buf struct buf pending = BUF_INIT;
    char chunk[4096];
    for (;;) {
        ssize_t n = read(fds[0], chunk, sizeof(chunk));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        buf_append(&pending, chunk, (size_t)n);
        char *nl;
        while (pending.len && (nl = memchr(pending.p, '\n', pending.len))) {
            size_t len = (size_t)(nl - pending.p);
            fprintf(stderr, "%s%.*s\n", prefix, (int)len, pending.p);
            buf_consume(&pending, len + 1);
        }
        fflush(stderr);
    }
    if (pending.len)
        fprintf(stderr, "%s%.*s\n", prefix, (int)pending.len, pending.p);
    close(fds[0]);
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            return -errno;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* The install runs in a mount namespace of its own, with a fresh /proc
 * mounted over DIR/proc in it: that mount is gone when the namespace ends
 * with the install, however it ends (also when pier is killed), and the
 * host never sees it, so no failure can leave DIR with something mounted
 * in it. */
static int chroot_setup(const void *ud, const char **what)
{
    const char *dir = ud;
    cleanup_buf struct buf proc = BUF_INIT;
    buf_printf(&proc, "%s/proc", dir);
    *what = "cannot make a mount namespace for the install";
    if (unshare(CLONE_NEWNS) < 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
        return -errno;
    *what = "cannot mount /proc in the stack";
    if (mount("proc", proc.p, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
        return -errno;
    *what = "cannot chroot into the stack";
    if (chroot(dir) < 0 || chdir("/") < 0)
        return -errno;
    return 0;
}

/* Copies the file src to dst (at most 1 MiB), mode 0644. A missing src
 * copies nothing. */
static int copy_small_file(const char *src, const char *dst)
{
    FILE *f = fopen(src, "r");
    if (!f)
        return errno == ENOENT ? 0 : -errno;
    cleanup_buf struct buf text = BUF_INIT;
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0 && text.len < (1 << 20))
        buf_append(&text, chunk, n);
    fclose(f);
    return write_file(dst, text.p ? text.p : "", text.len, 0644);
}

/* Copies the host's resolv.conf in, so apt can resolve the mirror. */
static int copy_resolv_conf(const char *dir)
{
    cleanup_buf struct buf path = BUF_INIT;
    buf_printf(&path, "%s/etc/resolv.conf", dir);
    return copy_small_file("/etc/resolv.conf", path.p);
}

/* The certificate authorities the host's administrator added
 * (the .crt files of /usr/local/share/ca-certificates, e.g. a company's proxy CA) go
 * into the stack too, so that builds reach what the host reaches (npm's
 * registry through such a proxy). Needs the ca-certificates package in the
 * stack; without it nothing is copied. */
static int add_local_cas(const char *dir)
{
    static const char local[] = "/usr/local/share/ca-certificates";
    cleanup_buf struct buf p = BUF_INIT;
    buf_printf(&p, "%s/usr/sbin/update-ca-certificates", dir);
    DIR *d = opendir(local);
    if (!d || access(p.p, X_OK) < 0) {
        if (d)
            closedir(d);
        return 0;
    }
    buf_reset(&p);
    buf_printf(&p, "%s%s", dir, local);
    int copied = 0, r = mkdirs(p.p, 0755);
    struct dirent *e;
    while (r == 0 && (e = readdir(d))) {
        size_t len = strlen(e->d_name);
        if (e->d_name[0] == '.' || len < 5 || strcmp(e->d_name + len - 4, ".crt") != 0)
            continue;
        cleanup_buf struct buf src = BUF_INIT, dst = BUF_INIT;
        buf_printf(&src, "%s/%s", local, e->d_name);
        buf_printf(&dst, "%s/%s", p.p, e->d_name);
        r = copy_small_file(src.p, dst.p);
        copied += r == 0;
    }
    closedir(d);
    if (r < 0)
        return ui_fail(NULL, "cannot copy the host's CA certificates into %s: %s", dir,
                       strerror(-r));
    if (copied == 0)
        return 0;
    fprintf(stderr, "==> adding the host's %d local CA certificate%s to the stack\n", copied,
            copied == 1 ? "" : "s");
    char *argv[] = {"/usr/sbin/update-ca-certificates", NULL};
    int status = run_streamed(argv, "    ", chroot_setup, dir);
    if (status != 0)
        return ui_fail("see its output above", "update-ca-certificates failed in %s (%d)", dir,
                       status);
    return 0;
}

static int install_packages(const char *dir, json_t *packages)
{
    int r = copy_resolv_conf(dir);
    if (r < 0)
        return ui_fail(NULL, "cannot copy /etc/resolv.conf into %s/etc: %s", dir, strerror(-r));
    /* Debian's way to keep packages' scripts from starting services in a
     * chroot: policy-rc.d answering 101 ("not allowed"). */
    cleanup_buf struct buf policy = BUF_INIT;
    buf_printf(&policy, "%s/usr/sbin/policy-rc.d", dir);
    bool own_policy = access(policy.p, F_OK) < 0;
    static const char deny[] =
        "#!/bin/sh\n# written by pier stack build while installing\nexit 101\n";
    if (own_policy && (r = write_file(policy.p, deny, sizeof(deny) - 1, 0755)) < 0)
        return ui_fail(NULL, "cannot write %s: %s", policy.p, strerror(-r));

    size_t n = json_array_size(packages);
    char **argv = xcalloc(n + 5, sizeof(*argv));
    argv[0] = "/bin/sh";
    argv[1] = "-c";
    argv[2] = "apt-get update && apt-get install -y --no-install-recommends \"$@\" && "
              "apt-get clean && rm -rf /var/lib/apt/lists/*";
    argv[3] = "sh";
    for (size_t i = 0; i < n; i++)
        argv[4 + i] = (char *)json_string_value(json_array_get(packages, i));
    fprintf(stderr, "==> installing %zu package%s in the stack\n", n, n == 1 ? "" : "s");
    int status = run_streamed(argv, "    apt: ", chroot_setup, dir);
    free(argv);
    if (own_policy)
        unlink(policy.p);
    if (status < 0)
        return ui_fail(NULL, "cannot run apt-get in %s: %s", dir, strerror(-status));
    if (status != 0) {
        cleanup_buf struct buf hint = BUF_INIT;
        buf_printf(&hint,
                   "see apt's output above; %s is not finished: remove it with 'rm -rf %s' "
                   "before building again",
                   dir, dir);
        return ui_fail(hint.p, "installing the packages failed (exit %d)", status);
    }
    return 0;
}

/* --- the marker and the result ---------------------------------------- */

static int write_marker(const char *dir, const char *suite, const char *mirror, json_t *packages)
{
    char when[32];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
    cleanup_json json_t *m =
        json_pack("{s:s,s:s,s:O,s:s,s:s}", "suite", suite, "mirror", mirror, "packages", packages,
                  "built_at", when, "pier_version", PIER_VERSION);
    cleanup_buf struct buf text = BUF_INIT, path = BUF_INIT;
    jsonx_dump(&text, m);
    buf_putc(&text, '\n');
    buf_printf(&path, "%s" MARKER, dir);
    return write_file(path.p, text.p, text.len, 0644);
}

static int64_t tree_bytes;

static int add_size(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)path;
    (void)flag;
    (void)ftw;
    tree_bytes += (int64_t)st->st_blocks * 512;
    return 0;
}

static void print_use(const char *dir)
{
    printf("run jobs on it with:\n  pierd host --stack %s --store URL --data-dir DIR\n", dir);
}

/* A finished stack: says so and what it holds. Packages asked for that it
 * was not built with, or another suite, are a different stack: refused. */
static int already_built(const char *dir, json_t *marker, const char *suite, json_t *want)
{
    const char *has = json_string_value(json_object_get(marker, "suite"));
    json_t *pkgs = json_object_get(marker, "packages");
    if (suite && strcmp(suite, has) != 0)
        return ui_fail("build it in another folder, or remove this one first",
                       "%s is already a %s stack, not %s", dir, has, suite);
    cleanup_buf struct buf list = BUF_INIT, missing = BUF_INIT;
    size_t i, j;
    json_t *p, *q;
    json_array_foreach(pkgs, i, p)
        buf_printf(&list, "%s%s", i ? "," : "", json_is_string(p) ? json_string_value(p) : "?");
    json_array_foreach(want, i, p)
    {
        bool found = false;
        json_array_foreach(pkgs, j, q) found = found || json_equal(p, q);
        if (!found)
            buf_printf(&missing, "%s%s", missing.len ? "," : "", json_string_value(p));
    }
    if (missing.len)
        return ui_fail("build it in another folder, or remove this one first",
                       "%s is already a stack, built without %s", dir, missing.p);
    const char *when = json_string_value(json_object_get(marker, "built_at"));
    printf("%s is already built (%s, built %s%s%s)\n", dir, has, when ? when : "at an unknown time",
           list.len ? ", packages " : "", list.len ? list.p : "");
    print_use(dir);
    return 0;
}

/* Finds debootstrap on PATH or in /usr/sbin and /sbin, where Debian puts it
 * (often not on a user's PATH). *out is a new string. */
static bool find_debootstrap(char **out)
{
    const char *env = getenv("PATH");
    cleanup_buf struct buf dirs = BUF_INIT;
    buf_printf(&dirs, "%s:/usr/sbin:/sbin", env ? env : "");
    char *save = NULL;
    for (char *d = strtok_r(dirs.p, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
        cleanup_buf struct buf p = BUF_INIT;
        buf_printf(&p, "%s/debootstrap", d);
        struct stat st;
        if (*d == '/' && stat(p.p, &st) == 0 && S_ISREG(st.st_mode) && access(p.p, X_OK) == 0) {
            *out = buf_detach(&p);
            return true;
        }
    }
    return false;
}

/* Every mount point a job's container needs, made now, so that crun never
 * has to create one inside the shared stack (DESIGN.md §4). Also run on a
 * finished stack (as root), so that one built before a mount point was
 * added gets it. */
static int make_mount_points(const char *dir)
{
    static const char *const dirs[] = {
        "app", "tmp", "dev", "proc", "sys", ".pier", ".pier/buildpacks", NULL};
    static const char *const files[] = {"etc/hosts", "etc/resolv.conf", ".pier/pierslug", NULL};
    cleanup_buf struct buf p = BUF_INIT;
    for (int i = 0; dirs[i]; i++) {
        buf_reset(&p);
        buf_printf(&p, "%s/%s", dir, dirs[i]);
        if (mkdir(p.p, 0755) < 0 && errno != EEXIST)
            return ui_fail(NULL, "cannot make %s: %s", p.p, strerror(errno));
    }
    for (int i = 0; files[i]; i++) {
        struct stat st;
        buf_reset(&p);
        buf_printf(&p, "%s/%s", dir, files[i]);
        if (lstat(p.p, &st) == 0 && S_ISREG(st.st_mode))
            continue;
        unlink(p.p); /* a symlink would lead crun outside the file */
        int fd = open(p.p, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (fd < 0)
            return ui_fail(NULL, "cannot make %s: %s", p.p, strerror(errno));
        close(fd);
    }
    return 0;
}

static int build(const char *dir, const char *suite, const char *mirror, json_t *packages)
{
    cleanup_free char *debootstrap = NULL;
    if (!find_debootstrap(&debootstrap))
        return ui_fail("install it with 'apt-get install debootstrap'",
                       "debootstrap is not installed (Debian package \"debootstrap\")");
    int r = mkdirs(dir, 0755);
    if (r < 0)
        return ui_fail(NULL, "cannot make %s: %s", dir, strerror(-r));
    fprintf(stderr, "==> building a %s stack in %s from %s (debootstrap, about 200 MB)\n", suite,
            dir, mirror);
    char *argv[] = {debootstrap, "--variant=minbase", (char *)suite,
                    (char *)dir, (char *)mirror,      NULL};
    int status = run_streamed(argv, "    debootstrap: ", NULL, NULL);
    if (status != 0) {
        cleanup_buf struct buf hint = BUF_INIT;
        buf_printf(&hint,
                   "see debootstrap's output above (and %s/debootstrap/debootstrap.log); "
                   "remove the half-built %s with 'rm -rf %s' before building again",
                   dir, dir, dir);
        if (status < 0)
            return ui_fail(hint.p, "cannot run %s: %s", debootstrap, strerror(-status));
        return ui_fail(hint.p, "debootstrap failed (exit %d)", status);
    }
    if (json_array_size(packages) > 0 && (r = install_packages(dir, packages)) != 0)
        return r;
    if ((r = add_local_cas(dir)) != 0)
        return r;

    if ((r = make_mount_points(dir)) != 0)
        return r;
    if ((r = write_marker(dir, suite, mirror, packages)) < 0)
        return ui_fail(NULL, "cannot write %s" MARKER ": %s", dir, strerror(-r));
    tree_bytes = 0;
    nftw(dir, add_size, 64, FTW_PHYS | FTW_MOUNT);
    printf("stack ready: %s (%s, %lld MB)\n", dir, suite, (long long)(tree_bytes / 1000000));
    print_use(dir);
    return 0;
}

static int stack_build(int argc, char **argv)
{
    struct stack_args a;
    int rc = parse_args(argc, argv, &a);
    if (rc)
        return rc;
    if (a.suite && !charset_ok(a.suite, "-.", 32))
        return ui_usage("stack", "suite \"%s\" is not valid (like bookworm or trixie)", a.suite);
    if (a.mirror && !mirror_ok(a.mirror))
        return ui_usage("stack", "mirror \"%s\" must be an http://, https:// or file:/// URL",
                        a.mirror);
    cleanup_json json_t *packages = json_array();
    if (split_packages(a.packages ? a.packages : DEFAULT_PACKAGES, packages) < 0)
        return 2;
    cleanup_free char *dir = absolute(a.dir);

    /* A finished stack needs nothing, not even root, to say so. */
    cleanup_json json_t *marker = NULL;
    int m = marker_read(dir, &marker);
    if (m == 0) {
        if (geteuid() == 0 && (rc = make_mount_points(dir)) != 0)
            return rc;
        /* Without --packages, a finished stack is what was asked for,
         * whatever it holds: only named packages are checked. */
        if (!a.packages)
            json_array_clear(packages);
        return already_built(dir, marker, a.suite, packages);
    }
    if (m == PIER_EINVAL) {
        cleanup_buf struct buf hint = BUF_INIT;
        buf_printf(&hint, "remove it with 'rm -rf %s' and build again", dir);
        return ui_fail(hint.p, "%s" MARKER " is not a pier stack marker", dir);
    }
    if (geteuid() != 0)
        return ui_fail("run it as root, e.g. 'sudo pier stack build DIR'",
                       "stack build must run as root (debootstrap and chroot need it)");
    int used = dir_in_use(dir);
    if (used < 0)
        return 1;
    if (used) {
        cleanup_buf struct buf hint = BUF_INIT;
        buf_printf(&hint,
                   "if it is a stack whose build was cut short, remove it with 'rm -rf %s' "
                   "and build again; otherwise pick another DIR",
                   dir);
        return ui_fail(hint.p, "%s is not empty and not a finished stack (no %s" MARKER ")", dir,
                       dir);
    }
    cleanup_free char *mirror = a.mirror ? xstrdup(a.mirror) : host_mirror();
    return build(dir, a.suite ? a.suite : DEFAULT_SUITE, mirror, packages);
}

int cli_stack(struct cli *c)
{
    if (c->argc == 0)
        return ui_usage("stack", "stack needs a subcommand: build");
    if (strcmp(c->argv[0], "build") == 0)
        return stack_build(c->argc - 1, c->argv + 1);
    return ui_usage("stack", "unknown stack subcommand \"%s\"", c->argv[0]);
}
