#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "host/bundle.h"
#include "host/jobspec.h"
#include "lib/buf.h"
#include "lib/cleanup.h"
#include "lib/httpd.h"
#include "lib/log.h"

/* These tests run crun for real (as root, as the agent does): a missing
 * crun or a host that cannot run containers fails them. */
#define CRUN "/usr/bin/crun"
#define TINI "/usr/bin/tini-static"
#define NOBODY 65534

static char base[64]; /* the test's scratch directory */

static int setup(void **state)
{
    (void)state;
    log_set_level(LOG_ERROR);
    snprintf(base, sizeof(base), "/tmp/pier-test-bundle.XXXXXX");
    if (!mkdtemp(base))
        return -1;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", base);
    return system(cmd) == 0 ? 0 : -1;
}

/* Runs a shell command built from fmt; fails the test when it fails. */
static void sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void sh(const char *fmt, ...)
{
    struct buf cmd = BUF_INIT;
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    assert_true(vasprintf(&s, fmt, ap) >= 0);
    va_end(ap);
    buf_puts(&cmd, s);
    free(s);
    int rc = system(cmd.p);
    if (rc != 0)
        fprintf(stderr, "command failed (%d): %s\n", rc, cmd.p);
    buf_free(&cmd);
    assert_int_equal(rc, 0);
}

static char *path_of(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *path_of(const char *fmt, ...)
{
    struct buf b = BUF_INIT;
    buf_printf(&b, "%s/", base);
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    assert_true(vasprintf(&s, fmt, ap) >= 0);
    va_end(ap);
    buf_puts(&b, s);
    free(s);
    return buf_detach(&b);
}

static struct jobspec *spec_of(const char *text)
{
    cleanup_json json_t *j = json_loads(text, 0, NULL);
    assert_non_null(j);
    struct jobspec *s = NULL;
    struct pier_err err = {0};
    if (jobspec_parse(j, &s, &err) != 0) {
        fprintf(stderr, "spec refused: %s\n", err.msg);
        fail();
    }
    return s;
}

static json_t *load_json(const char *path)
{
    json_error_t je;
    json_t *j = json_load_file(path, 0, &je);
    if (!j)
        fprintf(stderr, "%s: %s\n", path, je.text);
    assert_non_null(j);
    return j;
}

static bool has_string(const json_t *arr, const char *s)
{
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v) if (json_is_string(v) &&
                                      strcmp(json_string_value(v), s) == 0) return true;
    return false;
}

static json_t *find_mount(const json_t *cfg, const char *dest)
{
    size_t i;
    json_t *m;
    json_array_foreach(json_object_get(cfg, "mounts"), i, m)
    {
        if (strcmp(json_string_value(json_object_get(m, "destination")), dest) == 0)
            return m;
    }
    return NULL;
}

static void assert_file_is(const char *path, const char *want)
{
    cleanup_free char *got = NULL;
    size_t n = 0;
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    assert_true(getdelim(&got, &n, '\0', f) >= 0 || feof(f));
    fclose(f);
    assert_string_equal(got ? got : "", want);
}

/* ---- roots ---- */

static void test_host_root(void **state)
{
    (void)state;
    struct pier_err err = {0};
    cleanup_free char *root = path_of("hostroot");
    assert_int_equal(bundle_host_root(root, &err), 0);
    assert_int_equal(bundle_host_root(root, &err), 0); /* idempotent */
    const char *points[] = {"usr", "bin",  "sbin", "lib",   "lib64",           "etc", "app", "tmp",
                            "dev", "proc", "sys",  ".pier", ".pier/buildpacks"};
    for (size_t i = 0; i < sizeof(points) / sizeof(*points); i++) {
        cleanup_free char *p = path_of("hostroot/%s", points[i]);
        struct stat st;
        assert_int_equal(lstat(p, &st), 0);
        assert_true(S_ISDIR(st.st_mode));
    }
    /* The file pierslug is bound onto, so crun never makes it in the root. */
    cleanup_free char *slug = path_of("hostroot/.pier/pierslug");
    struct stat st;
    assert_int_equal(lstat(slug, &st), 0);
    assert_true(S_ISREG(st.st_mode));
    assert_int_equal(bundle_stack_points(root), BUNDLE_HAS_PIERSLUG | BUNDLE_HAS_BUILDPACKS);
    /* A symlink where it belongs is refused, not followed. */
    cleanup_free char *linked = path_of("linkroot");
    sh("mkdir -p %s/.pier && ln -s /etc/passwd %s/.pier/pierslug", linked, linked);
    assert_true(bundle_host_root(linked, &err) < 0);
    assert_non_null(strstr(err.msg, "linkroot/.pier/pierslug"));
    /* A file where a mount point belongs is refused, with its name. */
    cleanup_free char *bad = path_of("badroot");
    sh("mkdir %s && touch %s/etc", bad, bad);
    assert_true(bundle_host_root(bad, &err) < 0);
    assert_non_null(strstr(err.msg, "badroot/etc"));
    cleanup_free char *nested = path_of("no/such/root");
    assert_true(bundle_host_root(nested, &err) < 0);
}

static void test_check_stack(void **state)
{
    (void)state;
    struct pier_err err = {0};
    /* plain files */
    cleanup_free char *a = path_of("stack-a");
    sh("mkdir -p %s/bin %s/etc && touch %s/bin/sh %s/etc/os-release", a, a, a, a);
    assert_int_equal(bundle_check_stack(a, &err), 0);
    /* debootstrap's shape: bin -> usr/bin, os-release -> ../usr/lib/os-release */
    cleanup_free char *b = path_of("stack-b");
    sh("mkdir -p %s/usr/bin %s/usr/lib %s/etc && touch %s/usr/bin/sh %s/usr/lib/os-release && "
       "ln -s usr/bin %s/bin && ln -s ../usr/lib/os-release %s/etc/os-release",
       b, b, b, b, b, b, b);
    assert_int_equal(bundle_check_stack(b, &err), 0);
    /* absolute links resolve inside the stack, not on the host */
    cleanup_free char *c = path_of("stack-c");
    sh("mkdir -p %s/usr/bin %s/etc && touch %s/usr/bin/sh && ln -s /usr/bin %s/bin && "
       "ln -s /etc/os-release %s/etc/os-release",
       c, c, c, c, c);
    assert_int_equal(bundle_check_stack(c, &err), PIER_ENOTFOUND); /* the host has one */
    assert_non_null(strstr(err.msg, "no etc/os-release"));
    sh("touch %s/etc/os-release.real && ln -sf /etc/os-release.real %s/etc/os-release", c, c);
    assert_int_equal(bundle_check_stack(c, &err), 0);
    /* missing pieces */
    cleanup_free char *d = path_of("stack-d");
    sh("mkdir -p %s/bin/sh %s/etc && touch %s/etc/os-release", d, d, d);
    assert_int_equal(bundle_check_stack(d, &err), PIER_ENOTFOUND);
    assert_non_null(strstr(err.msg, "bin/sh is not a file"));
    sh("rmdir %s/bin/sh", d);
    assert_int_equal(bundle_check_stack(d, &err), PIER_ENOTFOUND);
    assert_non_null(strstr(err.msg, "stack-d: no bin/sh"));
    cleanup_free char *e = path_of("stack-none");
    assert_int_equal(bundle_check_stack(e, &err), PIER_ENOTFOUND);
    assert_non_null(strstr(err.msg, "stack-none"));
}

/* The /.pier mount points: a stack built before `pier stack build` made
 * them has none, and its jobs get neither bind. */
static void test_stack_points(void **state)
{
    (void)state;
    cleanup_free char *a = path_of("points-a");
    sh("mkdir -p %s/bin %s/etc && touch %s/bin/sh %s/etc/os-release", a, a, a, a);
    assert_int_equal(bundle_stack_points(a), 0);
    sh("mkdir -p %s/.pier/buildpacks", a);
    assert_int_equal(bundle_stack_points(a), BUNDLE_HAS_BUILDPACKS);
    sh("mkdir %s/.pier/pierslug", a); /* a directory where a file belongs */
    assert_int_equal(bundle_stack_points(a), BUNDLE_HAS_BUILDPACKS);
    sh("rmdir %s/.pier/pierslug && touch %s/.pier/pierslug", a, a);
    assert_int_equal(bundle_stack_points(a), BUNDLE_HAS_PIERSLUG | BUNDLE_HAS_BUILDPACKS);
    /* An absolute symlink resolves inside the stack, not on the host. */
    cleanup_free char *b = path_of("points-b");
    cleanup_free char *host_pier = path_of("points-hostpier");
    sh("mkdir -p %s/buildpacks %s/real/buildpacks && touch %s/pierslug %s/real/pierslug && "
       "ln -s %s %s/.pier",
       host_pier, b, host_pier, b, host_pier, b);
    assert_int_equal(bundle_stack_points(b), 0);
    sh("rm %s/.pier && ln -s /real %s/.pier", b, b);
    assert_int_equal(bundle_stack_points(b), BUNDLE_HAS_PIERSLUG | BUNDLE_HAS_BUILDPACKS);
    cleanup_free char *none = path_of("points-none");
    assert_int_equal(bundle_stack_points(none), 0);
}

/* ---- config.json ---- */

static void test_config(void **state)
{
    (void)state;
    struct pier_err err = {0};
    cleanup_free char *root = path_of("hostroot");
    cleanup_free char *job = path_of("t1-cfg");
    assert_int_equal(bundle_host_root(root, &err), 0);
    sh("mkdir -p %s", job);
    struct jobspec *spec =
        spec_of("{\"id\":\"t1-cfg\",\"host_id\":\"t1\",\"args\":[\"/bin/app\",\"--x\"],"
                "\"env\":{\"FOO\":\"1\",\"PORT\":\"1\",\"PORT_1\":\"x\",\"PORT_2\":\"kept\","
                "\"PIER_JOB_ID\":\"fake\",\"HOME\":\"/home/x\"},\"working_dir\":\"/app/web\","
                "\"resources\":{\"memory\":{\"limit\":67108864},\"cpu\":{\"limit\":1},"
                "\"max_fd\":{\"limit\":77},\"max_procs\":{\"limit\":33}},"
                "\"ports\":[{\"port\":0},{\"port\":0}],\"init\":true,\"tty\":true,"
                "\"tty_columns\":100,\"tty_lines\":30}");
    int ports[] = {20001, 20002};
    struct bundle_opts o = {.job_dir = job,
                            .host_root = root,
                            .ports = ports,
                            .uid = NOBODY,
                            .gid = NOBODY,
                            .init_path = TINI,
                            .host_id = "t1"};
    assert_int_equal(bundle_write(spec, &o, &err), 0);
    assert_int_equal(bundle_write(spec, &o, &err), 0); /* replaces */

    cleanup_free char *cfg_path = path_of("t1-cfg/bundle/config.json");
    cleanup_json json_t *cfg = load_json(cfg_path);
    struct stat st;
    assert_int_equal(stat(cfg_path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_string_equal(json_string_value(json_object_get(cfg, "ociVersion")), "1.0.2");
    assert_string_equal(json_string_value(json_object_get(cfg, "hostname")), "t1-cfg");
    json_t *r = json_object_get(cfg, "root");
    assert_string_equal(json_string_value(json_object_get(r, "path")), root);
    assert_true(json_is_true(json_object_get(r, "readonly")));

    json_t *p = json_object_get(cfg, "process");
    assert_true(json_is_true(json_object_get(p, "terminal")));
    json_t *cs = json_object_get(p, "consoleSize");
    assert_int_equal(json_integer_value(json_object_get(cs, "width")), 100);
    assert_int_equal(json_integer_value(json_object_get(cs, "height")), 30);
    json_t *user = json_object_get(p, "user");
    assert_int_equal(json_integer_value(json_object_get(user, "uid")), NOBODY);
    assert_int_equal(json_integer_value(json_object_get(user, "gid")), NOBODY);
    assert_null(json_object_get(user, "additionalGids"));
    json_t *args = json_object_get(p, "args");
    assert_int_equal(json_array_size(args), 5);
    assert_string_equal(json_string_value(json_array_get(args, 0)), "/dev/init");
    assert_string_equal(json_string_value(json_array_get(args, 1)), "-g");
    assert_string_equal(json_string_value(json_array_get(args, 2)), "--");
    assert_string_equal(json_string_value(json_array_get(args, 3)), "/bin/app");
    assert_string_equal(json_string_value(json_object_get(p, "cwd")), "/app/web");
    assert_true(json_is_true(json_object_get(p, "noNewPrivileges")));
    json_t *env = json_object_get(p, "env");
    const char *want_env[] = {"FOO=1",
                              "PORT_2=kept",
                              "HOME=/home/x",
                              "PORT=20001",
                              "PORT_0=20001",
                              "PORT_1=20002",
                              "PIER_JOB_ID=t1-cfg",
                              "PIER_HOST_ID=t1",
                              "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                              "TERM=xterm"};
    for (size_t i = 0; i < sizeof(want_env) / sizeof(*want_env); i++) {
        if (!has_string(env, want_env[i]))
            fprintf(stderr, "env lacks %s\n", want_env[i]);
        assert_true(has_string(env, want_env[i]));
    }
    assert_int_equal(json_array_size(env), sizeof(want_env) / sizeof(*want_env));
    json_t *caps = json_object_get(p, "capabilities");
    assert_int_equal(json_array_size(json_object_get(caps, "bounding")), 3);
    assert_true(has_string(json_object_get(caps, "bounding"), "CAP_NET_BIND_SERVICE"));
    assert_null(json_object_get(caps, "ambient"));
    json_t *rl = json_array_get(json_object_get(p, "rlimits"), 0);
    assert_string_equal(json_string_value(json_object_get(rl, "type")), "RLIMIT_NOFILE");
    assert_int_equal(json_integer_value(json_object_get(rl, "soft")), 77);
    assert_int_equal(json_integer_value(json_object_get(rl, "hard")), 77);

    json_t *lx = json_object_get(cfg, "linux");
    assert_string_equal(json_string_value(json_object_get(lx, "cgroupsPath")), "/pier/t1-cfg");
    json_t *res = json_object_get(lx, "resources");
    json_t *mem = json_object_get(res, "memory");
    assert_int_equal(json_integer_value(json_object_get(mem, "limit")), 67108864);
    assert_int_equal(json_integer_value(json_object_get(mem, "swap")), 67108864);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(res, "cpu"), "shares")), 2);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(res, "pids"), "limit")),
                     33);
    json_t *ns = json_object_get(lx, "namespaces");
    assert_int_equal(json_array_size(ns), 4);
    size_t i;
    json_t *n;
    json_array_foreach(ns, i, n)
    {
        assert_string_not_equal(json_string_value(json_object_get(n, "type")), "network");
    }
    json_t *sc = json_object_get(lx, "seccomp");
    assert_string_equal(json_string_value(json_object_get(sc, "defaultAction")), "SCMP_ACT_ALLOW");
    json_t *names = json_object_get(json_array_get(json_object_get(sc, "syscalls"), 0), "names");
    assert_true(has_string(names, "mount"));
    assert_true(has_string(names, "keyctl"));
    assert_false(has_string(names, "personality"));
    assert_true(has_string(json_object_get(lx, "maskedPaths"), "/proc/kcore"));
    assert_true(has_string(json_object_get(lx, "readonlyPaths"), "/proc/sys"));

    json_t *m = find_mount(cfg, "/app");
    assert_non_null(m);
    cleanup_free char *app = path_of("t1-cfg/app");
    assert_string_equal(json_string_value(json_object_get(m, "source")), app);
    assert_true(has_string(json_object_get(m, "options"), "rw"));
    m = find_mount(cfg, "/dev/init");
    assert_non_null(m);
    assert_string_equal(json_string_value(json_object_get(m, "source")), TINI);
    assert_true(has_string(json_object_get(m, "options"), "ro"));
    assert_non_null(find_mount(cfg, "/etc/hosts"));
    assert_non_null(find_mount(cfg, "/etc/resolv.conf"));
    m = find_mount(cfg, "/tmp");
    assert_string_equal(json_string_value(json_object_get(m, "type")), "tmpfs");
    assert_true(has_string(json_object_get(m, "options"), "mode=1777"));
    assert_null(find_mount(cfg, "/.pier/pierslug"));
    assert_null(find_mount(cfg, "/.pier/buildpacks"));
    m = find_mount(cfg, "/usr");
    assert_non_null(m);
    assert_string_equal(json_string_value(json_object_get(m, "source")), "/usr");
    assert_true(has_string(json_object_get(m, "options"), "ro"));
    /* merged-usr: /bin is bound from where it really is */
    m = find_mount(cfg, "/bin");
    assert_non_null(m);
    char real[4096];
    assert_non_null(realpath("/bin", real));
    assert_string_equal(json_string_value(json_object_get(m, "source")), real);

    cleanup_free char *hosts = path_of("t1-cfg/bundle/hosts");
    assert_file_is(hosts, "127.0.0.1 localhost t1-cfg\n::1 localhost ip6-localhost\n");
    cleanup_free char *resolv = path_of("t1-cfg/bundle/resolv.conf");
    cleanup_buf struct buf host_resolv = BUF_INIT;
    FILE *f = fopen("/etc/resolv.conf", "r");
    if (f) {
        char chunk[4096];
        size_t got;
        while ((got = fread(chunk, 1, sizeof(chunk), f)) > 0)
            buf_append(&host_resolv, chunk, got);
        fclose(f);
    }
    assert_file_is(resolv, host_resolv.p ? host_resolv.p : "");
    assert_int_equal(stat(app, &st), 0);
    assert_int_equal(st.st_uid, NOBODY);
    assert_int_equal(st.st_gid, NOBODY);
    assert_int_equal(st.st_mode & 07777, 0755);

    /* Nothing but the three files is left in bundle/. */
    cleanup_free char *bdir = path_of("t1-cfg/bundle");
    DIR *d = opendir(bdir);
    assert_non_null(d);
    int count = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        if (de->d_name[0] != '.')
            count++;
        else
            assert_true(strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0);
    closedir(d);
    assert_int_equal(count, 3);
    jobspec_free(spec);

    /* A stack root: no host binds; no ports: no PORT; no tty: no TERM. */
    cleanup_free char *stack = path_of("stack-a");
    sh("mkdir -p %s", stack);
    spec = spec_of("{\"id\":\"t1-cfg\",\"host_id\":\"t1\",\"args\":[\"x\"],\"ports\":[],"
                   "\"resources\":{\"cpu\":{\"limit\":2500}}}");
    o.root = stack;
    o.ports = NULL;
    assert_int_equal(bundle_write(spec, &o, &err), 0);
    json_decref(cfg);
    cfg = load_json(cfg_path);
    assert_null(find_mount(cfg, "/usr"));
    assert_null(find_mount(cfg, "/dev/init"));
    assert_string_equal(json_string_value(json_object_get(json_object_get(cfg, "root"), "path")),
                        stack);
    p = json_object_get(cfg, "process");
    env = json_object_get(p, "env");
    assert_true(has_string(env, "HOME=/app"));
    assert_true(has_string(env, "PIER_HOST_ID=t1"));
    for (i = 0; i < json_array_size(env); i++) {
        const char *e = json_string_value(json_array_get(env, i));
        assert_false(strncmp(e, "PORT", 4) == 0 || strncmp(e, "TERM=", 5) == 0);
    }
    assert_true(json_is_false(json_object_get(p, "terminal")));
    assert_null(json_object_get(p, "consoleSize"));
    res = json_object_get(json_object_get(cfg, "linux"), "resources");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(res, "cpu"), "shares")),
                     2560);
    jobspec_free(spec);
}

/* A build job's /tmp is a directory of the job's on disk; the /.pier binds
 * are plain read-only binds ("rro" would need Linux 5.12). */
static void test_config_build(void **state)
{
    (void)state;
    struct pier_err err = {0};
    cleanup_free char *root = path_of("hostroot");
    cleanup_free char *job = path_of("t1-build");
    cleanup_free char *bp = path_of("bp");
    cleanup_free char *slug = path_of("pierslug-bin");
    assert_int_equal(bundle_host_root(root, &err), 0);
    sh("mkdir -p %s %s && touch %s", job, bp, slug);
    struct jobspec *spec = spec_of("{\"id\":\"t1-build\",\"host_id\":\"t1\",\"args\":[\"x\"],"
                                   "\"ports\":[]}");
    struct bundle_opts o = {.job_dir = job,
                            .host_root = root,
                            .uid = NOBODY,
                            .gid = NOBODY,
                            .host_id = "t1",
                            .pierslug = slug,
                            .buildpacks = bp,
                            .build_tmp = true};
    assert_int_equal(bundle_write(spec, &o, &err), 0);
    cleanup_free char *cfg_path = path_of("t1-build/bundle/config.json");
    cleanup_json json_t *cfg = load_json(cfg_path);
    json_t *m = find_mount(cfg, "/tmp");
    assert_non_null(m);
    assert_string_equal(json_string_value(json_object_get(m, "type")), "bind");
    cleanup_free char *tmp = path_of("t1-build/tmp");
    assert_string_equal(json_string_value(json_object_get(m, "source")), tmp);
    struct stat st;
    assert_int_equal(lstat(tmp, &st), 0);
    assert_true(S_ISDIR(st.st_mode));
    assert_int_equal(st.st_mode & 07777, 01777);
    assert_int_equal(st.st_uid, 0);
    const char *binds[][2] = {{"/.pier/pierslug", slug}, {"/.pier/buildpacks", bp}};
    for (size_t i = 0; i < 2; i++) {
        m = find_mount(cfg, binds[i][0]);
        assert_non_null(m);
        assert_string_equal(json_string_value(json_object_get(m, "source")), binds[i][1]);
        json_t *opts = json_object_get(m, "options");
        assert_true(has_string(opts, "ro"));
        assert_false(has_string(opts, "rro"));
        assert_false(has_string(opts, "rbind"));
    }
    /* A symlink planted where tmp/ goes is refused. */
    sh("rm -rf %s && ln -s /etc %s", tmp, tmp);
    assert_true(bundle_write(spec, &o, &err) < 0);
    assert_non_null(strstr(err.msg, "t1-build/tmp"));
    assert_int_equal(stat("/etc", &st), 0);
    assert_int_equal(st.st_mode & 01000, 0);
    jobspec_free(spec);
}

/* The spec's mounts, capabilities and EXTERNAL_IP in config.json. */
static void test_config_mounts_caps(void **state)
{
    (void)state;
    struct pier_err err = {0};
    cleanup_free char *root = path_of("hostroot");
    cleanup_free char *job = path_of("t1-mnt");
    cleanup_free char *data = path_of("data-dir");
    cleanup_free char *file = path_of("data-file");
    assert_int_equal(bundle_host_root(root, &err), 0);
    sh("mkdir -p %s %s && touch %s", job, data, file);
    cleanup_buf struct buf text = BUF_INIT;
    buf_printf(&text,
               "{\"id\":\"t1-mnt\",\"host_id\":\"t1\",\"args\":[\"x\"],\"ports\":[],"
               "\"env\":{\"EXTERNAL_IP\":\"6.6.6.6\"},"
               "\"mounts\":[{\"location\":\"%s\",\"target\":\"/srv/data\",\"writeable\":true},"
               "{\"location\":\"%s\",\"target\":\"/var/lib/f\"},"
               "{\"location\":\"/usr/share\",\"target\":\"/usr/share\"}],"
               "\"linux_capabilities\":[\"CAP_NET_BIND_SERVICE\",\"CAP_CHOWN\"]}",
               data, data);
    struct jobspec *spec = spec_of(text.p);
    struct bundle_opts o = {.job_dir = job,
                            .host_root = root,
                            .uid = NOBODY,
                            .gid = NOBODY,
                            .host_id = "t1",
                            .host_ip = "10.1.2.3"};
    assert_int_equal(bundle_write(spec, &o, &err), 0);
    cleanup_free char *cfg_path = path_of("t1-mnt/bundle/config.json");
    cleanup_json json_t *cfg = load_json(cfg_path);
    json_t *m = find_mount(cfg, "/srv/data");
    assert_non_null(m);
    assert_string_equal(json_string_value(json_object_get(m, "type")), "bind");
    assert_string_equal(json_string_value(json_object_get(m, "source")), data);
    json_t *opts = json_object_get(m, "options");
    assert_true(has_string(opts, "rbind") && has_string(opts, "rw"));
    assert_true(has_string(opts, "nosuid") && has_string(opts, "nodev"));
    assert_false(has_string(opts, "ro"));
    m = find_mount(cfg, "/var/lib/f");
    assert_string_equal(json_string_value(json_object_get(m, "source")), data);
    opts = json_object_get(m, "options");
    assert_true(has_string(opts, "ro") && has_string(opts, "rbind"));
    assert_false(has_string(opts, "rw"));
    assert_non_null(find_mount(cfg, "/usr/share"));
    /* The mount points are in the host root; none under the host's /usr. */
    struct stat st;
    cleanup_free char *pt = path_of("hostroot/srv/data");
    assert_int_equal(lstat(pt, &st), 0);
    assert_true(S_ISDIR(st.st_mode));
    cleanup_free char *pt2 = path_of("hostroot/usr/share");
    assert_int_equal(lstat(pt2, &st), -1);

    json_t *p = json_object_get(cfg, "process");
    json_t *env = json_object_get(p, "env");
    assert_true(has_string(env, "EXTERNAL_IP=10.1.2.3"));
    assert_false(has_string(env, "EXTERNAL_IP=6.6.6.6"));
    json_t *caps = json_object_get(p, "capabilities");
    const char *sets[] = {"bounding", "effective", "permitted"};
    for (size_t i = 0; i < 3; i++) {
        json_t *set = json_object_get(caps, sets[i]);
        assert_int_equal(json_array_size(set), 4); /* the three kept + CAP_CHOWN */
        assert_true(has_string(set, "CAP_CHOWN") && has_string(set, "CAP_KILL"));
    }
    const char *amb[] = {"ambient", "inheritable"};
    for (size_t i = 0; i < 2; i++) {
        json_t *set = json_object_get(caps, amb[i]);
        assert_int_equal(json_array_size(set), 2);
        assert_true(has_string(set, "CAP_CHOWN") && has_string(set, "CAP_NET_BIND_SERVICE"));
    }
    jobspec_free(spec);

    /* A file location gets a file mount point. */
    buf_reset(&text);
    buf_printf(&text,
               "{\"id\":\"t1-mnt\",\"host_id\":\"t1\",\"args\":[\"x\"],\"ports\":[],"
               "\"mounts\":[{\"location\":\"%s\",\"target\":\"/etc2/conf\"}]}",
               file);
    spec = spec_of(text.p);
    assert_int_equal(bundle_write(spec, &o, &err), 0);
    cleanup_free char *pt3 = path_of("hostroot/etc2/conf");
    assert_int_equal(lstat(pt3, &st), 0);
    assert_true(S_ISREG(st.st_mode));
    jobspec_free(spec);

    /* A missing location is named. */
    spec = spec_of("{\"id\":\"t1-mnt\",\"host_id\":\"t1\",\"args\":[\"x\"],\"ports\":[],"
                   "\"mounts\":[{\"location\":\"/nonexistent/pier\",\"target\":\"/data\"}]}");
    assert_int_equal(bundle_write(spec, &o, &err), PIER_ENOTFOUND);
    assert_non_null(strstr(err.msg, "mounts[0].location /nonexistent/pier"));
    jobspec_free(spec);

    /* Under a bound host directory, the mount point must be there already:
     * the agent never makes one in the host's /usr. */
    spec = spec_of("{\"id\":\"t1-mnt\",\"host_id\":\"t1\",\"args\":[\"x\"],\"ports\":[],"
                   "\"mounts\":[{\"location\":\"/usr\",\"target\":\"/usr/pier-nothing\"}]}");
    assert_int_equal(bundle_write(spec, &o, &err), PIER_ENOTFOUND);
    assert_non_null(strstr(err.msg, "mounts[0].target /usr/pier-nothing"));
    assert_int_equal(lstat("/usr/pier-nothing", &st), -1);
    jobspec_free(spec);

    /* On a stack: the target must exist, of the location's kind; nothing is
     * made in it. */
    cleanup_free char *stack = path_of("mstack");
    sh("mkdir -p %s/data %s/etc && touch %s/etc/f", stack, stack, stack);
    o.root = stack;
    buf_reset(&text);
    buf_printf(&text,
               "{\"id\":\"t1-mnt\",\"host_id\":\"t1\",\"args\":[\"x\"],\"ports\":[],"
               "\"mounts\":[{\"location\":\"%s\",\"target\":\"/data\"},"
               "{\"location\":\"%s\",\"target\":\"/etc/f\"}]}",
               data, file);
    spec = spec_of(text.p);
    assert_int_equal(bundle_write(spec, &o, &err), 0);
    jobspec_free(spec);
    const char *bad[][2] = {{"/srv/x", "not in the stack"}, {"/etc/f", "not a directory"}};
    for (size_t i = 0; i < 2; i++) {
        buf_reset(&text);
        buf_printf(&text,
                   "{\"id\":\"t1-mnt\",\"host_id\":\"t1\",\"args\":[\"x\"],\"ports\":[],"
                   "\"mounts\":[{\"location\":\"%s\",\"target\":\"%s\"}]}",
                   data, bad[i][0]);
        spec = spec_of(text.p);
        assert_true(bundle_write(spec, &o, &err) < 0);
        if (!strstr(err.msg, bad[i][1]) || !strstr(err.msg, "mounts[0].target"))
            fprintf(stderr, "message: %s\n", err.msg), fail();
        jobspec_free(spec);
    }
    cleanup_free char *made = path_of("mstack/srv");
    assert_int_equal(lstat(made, &st), -1);
}

static void test_write_refused(void **state)
{
    (void)state;
    struct pier_err err = {0};
    cleanup_free char *root = path_of("hostroot");
    cleanup_free char *job = path_of("t1-bad");
    assert_int_equal(bundle_host_root(root, &err), 0);
    sh("mkdir -p %s", job);
    struct jobspec *spec =
        spec_of("{\"id\":\"t1-bad\",\"host_id\":\"t1\",\"args\":[\"x\"],\"init\":true}");
    int port = 20000;
    struct bundle_opts o = {
        .job_dir = job, .host_root = root, .ports = &port, .uid = NOBODY, .gid = NOBODY};
    assert_int_equal(bundle_write(spec, &o, &err), PIER_EINVAL);
    assert_non_null(strstr(err.msg, "no init binary"));
    o.init_path = "/nonexistent/tini";
    assert_int_equal(bundle_write(spec, &o, &err), PIER_ENOTFOUND);
    assert_non_null(strstr(err.msg, "/nonexistent/tini"));
    o.init_path = TINI;
    o.ports = NULL;
    assert_int_equal(bundle_write(spec, &o, &err), PIER_EINVAL);
    assert_non_null(strstr(err.msg, "no ports"));
    port = 0;
    o.ports = &port;
    assert_int_equal(bundle_write(spec, &o, &err), PIER_EINVAL);
    port = 20000;
    o.root = "/nonexistent/stack";
    assert_int_equal(bundle_write(spec, &o, &err), PIER_ENOTFOUND);
    assert_non_null(strstr(err.msg, "stack /nonexistent/stack: not a directory"));
    o.root = NULL;
    o.job_dir = "/nonexistent/job";
    assert_true(bundle_write(spec, &o, &err) < 0);
    assert_non_null(strstr(err.msg, "/nonexistent/job"));
    /* app/ must not be a symlink the job could have planted. */
    o.job_dir = job;
    sh("rm -rf %s/app && ln -s /etc %s/app", job, job);
    assert_true(bundle_write(spec, &o, &err) < 0);
    assert_non_null(strstr(err.msg, "t1-bad/app"));
    struct stat st;
    assert_int_equal(stat("/etc", &st), 0);
    assert_int_equal(st.st_uid, 0);
    jobspec_free(spec);
}

/* ---- running it ---- */

/* Runs `crun run` on the job's bundle; returns its exit status and what it
 * printed (stdout and stderr together). Fails the test after 60 s. */
static int crun_run(const char *job_dir, const char *id, struct buf *out)
{
    cleanup_free char *state_dir = path_of("crun");
    cleanup_buf struct buf bundle = BUF_INIT;
    buf_printf(&bundle, "%s/bundle", job_dir);
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int null_fd = open("/dev/null", O_RDONLY);
        dup2(null_fd, 0);
        dup2(fds[1], 1);
        dup2(fds[1], 2);
        close(fds[0]);
        close(fds[1]);
        execl(CRUN, "crun", "--root", state_dir, "run", "--bundle", bundle.p, id, (char *)NULL);
        dprintf(2, "cannot run %s: %s\n", CRUN, strerror(errno));
        _exit(127);
    }
    close(fds[1]);
    time_t deadline = time(NULL) + 60;
    for (;;) {
        struct pollfd pfd = {.fd = fds[0], .events = POLLIN};
        int n = poll(&pfd, 1, 1000);
        if (time(NULL) > deadline) {
            kill(pid, SIGKILL);
            fprintf(stderr, "crun run %s: no end after 60 s: %s\n", id, out->p);
            fail();
        }
        if (n <= 0)
            continue;
        char chunk[4096];
        ssize_t got = read(fds[0], chunk, sizeof(chunk));
        if (got <= 0)
            break;
        buf_append(out, chunk, (size_t)got);
    }
    close(fds[0]);
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    return WEXITSTATUS(status);
}

static void expect_line(const struct buf *out, const char *line)
{
    cleanup_buf struct buf want = BUF_INIT;
    buf_printf(&want, "\n%s\n", line);
    cleanup_buf struct buf got = BUF_INIT;
    buf_putc(&got, '\n');
    buf_append(&got, out->p, out->len);
    if (!strstr(got.p, want.p)) {
        fprintf(stderr, "container output lacks \"%s\":\n%s\n", line, out->p);
        fail();
    }
}

/* What the container says about itself, one fact per line. The perl lines
 * call the system calls directly (util-linux's mount refuses non-root
 * users before it asks the kernel): errno 1 is EPERM. */
static const char probe[] =
    "echo pid=$$\n"
    "echo host=$(hostname)\n"
    "if touch /x 2>/dev/null; then echo root=rw; else echo root=ro; fi\n"
    "echo uid=$(id -u) gid=$(id -g) groups=$(id -G)\n"
    "echo port=$PORT port0=$PORT_0 port1=$PORT_1 job=$PIER_JOB_ID host_id=$PIER_HOST_ID\n"
    "echo home=$HOME foo=$FOO cwd=$(pwd)\n"
    "touch /app/f && echo app=rw\n"
    "touch /tmp/f && echo tmp=rw\n"
    "echo mem=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes)\n"
    "echo memsw=$(cat /sys/fs/cgroup/memory/memory.memsw.limit_in_bytes 2>/dev/null || echo "
    "none)\n"
    "echo pids=$(cat /sys/fs/cgroup/pids/pids.max)\n"
    "echo nofile=$(ulimit -n)\n"
    "grep -E '^(Seccomp|CapBnd|CapEff|NoNewPrivs):' /proc/self/status | tr -d ' \\t'\n"
    "head -n 1 /etc/hosts\n"
    "echo init=$(head -c 11 /proc/1/cmdline | tr '\\0' ' ')\n"
    "perl -e 'my ($s, $t, $f) = (\"none\", \"/tmp\", \"tmpfs\"); print \"mount=\", "
    "(syscall(165, $s, $t, $f, 0, 0) < 0 ? $!+0 : \"ok\"), \"\\n\"'\n"
    "perl -e 'print \"unshare=\", (syscall(272, 0x10000000) < 0 ? $!+0 : \"ok\"), \"\\n\"'\n"
    "perl -e '$r = syscall(56, 0x10000011, 0, 0, 0, 0); exit 0 if $r == 0; "
    "print \"clone_newuser=\", ($r < 0 ? $!+0 : \"ok\"), \"\\n\"; wait'\n"
    "perl -e '$r = syscall(56, 17, 0, 0, 0, 0); exit 0 if $r == 0; "
    "print \"clone=\", ($r < 0 ? $!+0 : \"ok\"), \"\\n\"; wait'\n"
    "perl -e 'print \"keyctl=\", (syscall(250, 0, 0, 0, 0, 0) < 0 ? $!+0 : \"ok\"), \"\\n\"'\n"
    "echo end\n"
    "exit 7\n";

static struct jobspec *probe_spec(const char *id, bool init)
{
    cleanup_json json_t *j = json_pack(
        "{s:s, s:s, s:[s,s,s], s:{s:s}, s:{s:{s:i}, s:{s:i}, s:{s:i}}, s:[{s:i},{s:i}], s:b}", "id",
        id, "host_id", "t1", "args", "/bin/sh", "-c", probe, "env", "FOO", "bar baz", "resources",
        "memory", "limit", 256 << 20, "max_procs", "limit", 64, "max_fd", "limit", 512, "ports",
        "port", 0, "port", 0, "init", init);
    struct jobspec *s = NULL;
    struct pier_err err = {0};
    if (jobspec_parse(j, &s, &err) != 0) {
        fprintf(stderr, "probe spec: %s\n", err.msg);
        fail();
    }
    return s;
}

static void run_probe(bool init)
{
    struct pier_err err = {0};
    cleanup_free char *root = path_of("hostroot");
    char id[32];
    snprintf(id, sizeof(id), "t1-probe%s-%d", init ? "i" : "", (int)getpid());
    cleanup_free char *job = path_of("%s", id);
    assert_int_equal(bundle_host_root(root, &err), 0);
    sh("mkdir -p %s", job);
    struct jobspec *spec = probe_spec(id, init);
    int ports[] = {20101, 20102};
    struct bundle_opts o = {.job_dir = job,
                            .host_root = root,
                            .ports = ports,
                            .uid = NOBODY,
                            .gid = NOBODY,
                            .init_path = TINI,
                            .host_id = "t1"};
    if (bundle_write(spec, &o, &err) != 0) {
        fprintf(stderr, "bundle_write: %s\n", err.msg);
        fail();
    }
    cleanup_buf struct buf out = BUF_INIT;
    int status = crun_run(job, id, &out);
    if (status != 7)
        fprintf(stderr, "crun run exited %d:\n%s\n", status, out.p);
    assert_int_equal(status, 7);
    cleanup_buf struct buf line = BUF_INIT;
    if (init) {
        assert_null(strstr(out.p, "\npid=1\n"));
        expect_line(&out, "init=/dev/init -");
    } else {
        assert_true(strncmp(out.p, "pid=1\n", 6) == 0);
        expect_line(&out, "init=/bin/sh -c");
    }
    buf_printf(&line, "host=%s", id);
    expect_line(&out, line.p);
    expect_line(&out, "root=ro");
    expect_line(&out, "uid=65534 gid=65534 groups=65534");
    buf_reset(&line);
    buf_printf(&line, "port=20101 port0=20101 port1=20102 job=%s host_id=t1", id);
    expect_line(&out, line.p);
    expect_line(&out, "home=/app foo=bar baz cwd=/app");
    expect_line(&out, "app=rw");
    expect_line(&out, "tmp=rw");
    expect_line(&out, "mem=268435456");
    expect_line(&out, "pids=64");
    expect_line(&out, "nofile=512");
    expect_line(&out, "Seccomp:2");
    expect_line(&out, "CapBnd:0000000020000420"); /* KILL, NET_BIND_SERVICE, AUDIT_WRITE */
    expect_line(&out, "CapEff:0000000000000000");
    expect_line(&out, "NoNewPrivs:1");
    buf_reset(&line);
    buf_printf(&line, "127.0.0.1 localhost %s", id);
    expect_line(&out, line.p);
    expect_line(&out, "mount=1");
    expect_line(&out, "unshare=1");
    expect_line(&out, "clone_newuser=1");
    expect_line(&out, "clone=ok");
    expect_line(&out, "keyctl=1");
    expect_line(&out, "end");
    /* The job's files stay behind in app/, owned by the job's user. */
    cleanup_free char *f = path_of("%s/app/f", id);
    struct stat st;
    assert_int_equal(stat(f, &st), 0);
    assert_int_equal(st.st_uid, NOBODY);
    jobspec_free(spec);
}

static void test_crun_run(void **state)
{
    (void)state;
    run_probe(false);
}

static void test_crun_run_init(void **state)
{
    (void)state;
    run_probe(true);
}

/* A stack root shaped like debootstrap's (merged /usr: bin, sbin, lib and
 * lib64 are symlinks into usr), holding just a shell and its libraries, with
 * none of the mount points: crun makes them. tini runs as pid 1. */
static void test_crun_stack(void **state)
{
    (void)state;
    struct pier_err err = {0};
    cleanup_free char *stack = path_of("ministack");
    sh("mkdir -p %s/usr/bin %s/usr/lib/x86_64-linux-gnu %s/usr/lib64 %s/etc && cd %s && "
       "ln -s usr/bin bin && ln -s usr/bin sbin && ln -s usr/lib lib && ln -s usr/lib64 lib64 && "
       "cp /usr/bin/dash usr/bin/sh && cp -L /lib/x86_64-linux-gnu/libc.so.6 "
       "usr/lib/x86_64-linux-gnu/ && cp -L /lib64/ld-linux-x86-64.so.2 usr/lib64/ && "
       "echo ID=mini > usr/lib/os-release && ln -s ../usr/lib/os-release etc/os-release",
       stack, stack, stack, stack, stack);
    assert_int_equal(bundle_check_stack(stack, &err), 0);
    cleanup_free char *job = path_of("t1-stack");
    sh("mkdir -p %s", job);
    struct jobspec *spec = spec_of(
        "{\"id\":\"t1-stack\",\"host_id\":\"t1\",\"init\":true,\"args\":[\"/bin/sh\",\"-c\","
        "\"echo pid=$$; (true > /x) 2>/dev/null || echo root=ro; true > /app/f && echo app=rw; "
        "true > /tmp/f && echo tmp=rw; read l </etc/hosts; echo \\\"$l\\\"; echo port=$PORT; "
        "exit 3\"]}");
    int port = 20201;
    struct bundle_opts o = {.job_dir = job,
                            .root = stack,
                            .ports = &port,
                            .uid = NOBODY,
                            .gid = NOBODY,
                            .init_path = TINI,
                            .host_id = "t1"};
    assert_int_equal(bundle_write(spec, &o, &err), 0);
    cleanup_buf struct buf out = BUF_INIT;
    int status = crun_run(job, "t1-stack", &out);
    if (status != 3)
        fprintf(stderr, "crun run exited %d:\n%s\n", status, out.p);
    assert_int_equal(status, 3);
    expect_line(&out, "pid=2");
    expect_line(&out, "root=ro");
    expect_line(&out, "app=rw");
    expect_line(&out, "tmp=rw");
    expect_line(&out, "127.0.0.1 localhost t1-stack");
    expect_line(&out, "port=20201");
    jobspec_free(spec);
}

/* A build job: /tmp is the job's tmp/ on the host's disk, and /.pier has
 * pierslug and the buildpacks, read-only. */
static void test_crun_build_tmp(void **state)
{
    (void)state;
    struct pier_err err = {0};
    cleanup_free char *root = path_of("hostroot");
    cleanup_free char *job = path_of("t1-btmp");
    cleanup_free char *bp = path_of("bp-run");
    cleanup_free char *slug = path_of("pierslug-echo");
    assert_int_equal(bundle_host_root(root, &err), 0);
    sh("mkdir -p %s %s/nodejs && echo nodejs > %s/order && cp /bin/echo %s", job, bp, bp, slug);
    struct jobspec *spec =
        spec_of("{\"id\":\"t1-btmp\",\"host_id\":\"t1\",\"ports\":[],\"args\":[\"/bin/sh\",\"-c\","
                "\"echo big > /tmp/work && echo tmp=$(cat /tmp/work); /.pier/pierslug slug=ok; "
                "echo order=$(cat /.pier/buildpacks/order); "
                "(true > /.pier/buildpacks/x) 2>/dev/null || echo bp=ro\"]}");
    struct bundle_opts o = {.job_dir = job,
                            .host_root = root,
                            .uid = NOBODY,
                            .gid = NOBODY,
                            .host_id = "t1",
                            .pierslug = slug,
                            .buildpacks = bp,
                            .build_tmp = true};
    assert_int_equal(bundle_write(spec, &o, &err), 0);
    cleanup_buf struct buf out = BUF_INIT;
    int status = crun_run(job, "t1-btmp", &out);
    if (status != 0)
        fprintf(stderr, "crun run exited %d:\n%s\n", status, out.p);
    assert_int_equal(status, 0);
    expect_line(&out, "tmp=big");
    expect_line(&out, "slug=ok");
    expect_line(&out, "order=nodejs");
    expect_line(&out, "bp=ro");
    /* What the build wrote in /tmp is on the host, in the job's tmp/. */
    cleanup_free char *work = path_of("t1-btmp/tmp/work");
    struct stat st;
    assert_int_equal(stat(work, &st), 0);
    assert_int_equal(st.st_uid, NOBODY);
    jobspec_free(spec);
}

/* ---- slugs ---- */

static struct buf slug_bytes;

static void serve_slug(struct httpd_req *r, void *ud)
{
    (void)ud;
    httpd_reply(r, 200, "application/gzip", slug_bytes.p, slug_bytes.len);
}

static void serve_missing(struct httpd_req *r, void *ud)
{
    (void)ud;
    httpd_reply_not_found(r);
}

static void read_all(const char *path, struct buf *out)
{
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
        buf_append(out, chunk, n);
    fclose(f);
}

/* Makes slug.tgz (a file and a directory, as /app looks after a build) and
 * returns its path. */
static char *make_slug(void)
{
    cleanup_free char *src = path_of("slugsrc");
    char *tgz = path_of("slug.tgz");
    sh("mkdir -p %s/bin && echo hello > %s/Procfile && printf '#!/bin/sh\\n' > %s/bin/run && "
       "chmod 755 %s/bin/run && tar -czf %s -C %s .",
       src, src, src, src, tgz, src);
    return tgz;
}

static void assert_unpacked(const char *app)
{
    cleanup_buf struct buf p = BUF_INIT;
    buf_printf(&p, "%s/Procfile", app);
    assert_file_is(p.p, "hello\n");
    struct stat st;
    assert_int_equal(stat(p.p, &st), 0);
    assert_int_equal(st.st_uid, NOBODY);
    buf_reset(&p);
    buf_printf(&p, "%s/bin/run", app);
    assert_int_equal(stat(p.p, &st), 0);
    assert_int_equal(st.st_uid, NOBODY);
    assert_true(st.st_mode & S_IXUSR);
    assert_int_equal(stat(app, &st), 0);
    assert_int_equal(st.st_uid, NOBODY);
    assert_int_equal(st.st_mode & 07777, 0755);
}

static void test_slug_file(void **state)
{
    (void)state;
    struct pier_err err = {0};
    cleanup_free char *tgz = make_slug();
    /* The job directory is root's alone: tar, as nobody, still gets in. */
    cleanup_free char *job = path_of("t1-slug");
    sh("mkdir -m 700 %s", job);
    cleanup_free char *app = path_of("t1-slug/app");
    cleanup_buf struct buf url = BUF_INIT;
    buf_printf(&url, "file://%s", tgz);
    if (bundle_fetch_slug(url.p, app, NOBODY, NOBODY, 1 << 20, NULL, &err) != 0) {
        fprintf(stderr, "fetch: %s\n", err.msg);
        fail();
    }
    assert_unpacked(app);
    /* nothing left next to app/ */
    cleanup_buf struct buf ls = BUF_INIT;
    DIR *d = opendir(job);
    struct dirent *de;
    while ((de = readdir(d)))
        if (de->d_name[0] != '.' || strlen(de->d_name) > 2)
            buf_printf(&ls, "%s ", de->d_name);
    closedir(d);
    assert_string_equal(ls.p, "app ");

    /* The hash the release's artifact gives: either case. */
    cleanup_buf struct buf sha = BUF_INIT;
    cleanup_buf struct buf cmd = BUF_INIT;
    buf_printf(&cmd, "sha256sum < '%s'", tgz);
    FILE *p = popen(cmd.p, "r");
    assert_non_null(p);
    char line[128] = "";
    assert_non_null(fgets(line, sizeof(line), p));
    pclose(p);
    buf_append(&sha, line, 64);
    sh("rm -rf %s", app);
    assert_int_equal(bundle_fetch_slug(url.p, app, NOBODY, NOBODY, 1 << 20, sha.p, &err), 0);
    assert_unpacked(app);
    for (size_t i = 0; i < sha.len; i++)
        sha.p[i] = (char)toupper((unsigned char)sha.p[i]);
    sh("rm -rf %s", app);
    assert_int_equal(bundle_fetch_slug(url.p, app, NOBODY, NOBODY, 1 << 20, sha.p, &err), 0);
    assert_unpacked(app);
    /* Another hash: refused, nothing unpacked, both hashes named. */
    const char *wrong = "0000000000000000000000000000000000000000000000000000000000000000";
    sh("rm -rf %s", app);
    assert_int_equal(bundle_fetch_slug(url.p, app, NOBODY, NOBODY, 1 << 20, wrong, &err),
                     PIER_EINVAL);
    assert_non_null(strstr(err.msg, "SHA-256"));
    assert_non_null(strstr(err.msg, wrong));
    assert_non_null(strstr(err.msg, url.p));
    cleanup_free char *procfile = path_of("t1-slug/app/Procfile");
    assert_int_equal(access(procfile, F_OK), -1);
    assert_int_equal(bundle_fetch_slug(url.p, app, NOBODY, NOBODY, 1 << 20, "abc", &err),
                     PIER_EINVAL);
    assert_non_null(strstr(err.msg, "64 hex digits"));

    /* too big */
    assert_int_equal(bundle_fetch_slug(url.p, app, NOBODY, NOBODY, 10, NULL, &err), PIER_EINVAL);
    assert_non_null(strstr(err.msg, url.p));
    assert_non_null(strstr(err.msg, "larger than 10 bytes"));
    /* missing */
    buf_puts(&url, ".missing");
    assert_int_equal(bundle_fetch_slug(url.p, app, NOBODY, NOBODY, 1 << 20, NULL, &err),
                     PIER_EUNAVAIL);
    assert_non_null(strstr(err.msg, url.p));
}

static void test_slug_http(void **state)
{
    (void)state;
    struct pier_err err = {0};
    cleanup_free char *tgz = make_slug();
    buf_reset(&slug_bytes);
    read_all(tgz, &slug_bytes);
    struct httpd_options ho = {.listen = "127.0.0.1:0", .comp = "test-bundle"};
    struct httpd *h = httpd_new(&ho);
    httpd_route(h, "GET", "/slug.tgz", serve_slug, NULL, true);
    httpd_route(h, "GET", "/missing.tgz", serve_missing, NULL, true);
    assert_int_equal(httpd_start(h, &err), 0);
    cleanup_free char *app = path_of("t1-http/app");
    cleanup_free char *job = path_of("t1-http");
    sh("mkdir -m 700 %s", job);
    char url[128];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/slug.tgz", httpd_port(h));
    if (bundle_fetch_slug(url, app, NOBODY, NOBODY, 1 << 20, NULL, &err) != 0) {
        fprintf(stderr, "fetch: %s\n", err.msg);
        fail();
    }
    assert_unpacked(app);
    assert_int_equal(bundle_fetch_slug(url, app, NOBODY, NOBODY, 100, NULL, &err), PIER_EINVAL);
    assert_non_null(strstr(err.msg, "larger than 100 bytes"));
    snprintf(url, sizeof(url), "http://user:secret@127.0.0.1:%d/missing.tgz", httpd_port(h));
    assert_int_equal(bundle_fetch_slug(url, app, NOBODY, NOBODY, 1 << 20, NULL, &err),
                     PIER_EUNAVAIL);
    assert_non_null(strstr(err.msg, "HTTP status 404"));
    assert_non_null(strstr(err.msg, "/missing.tgz"));
    assert_null(strstr(err.msg, "secret"));
    httpd_free(h);
    /* nobody listening any more */
    assert_int_equal(bundle_fetch_slug(url, app, NOBODY, NOBODY, 1 << 20, NULL, &err),
                     PIER_EUNAVAIL);
    buf_free(&slug_bytes);
}

static void test_slug_bad(void **state)
{
    (void)state;
    struct pier_err err = {0};
    cleanup_free char *job = path_of("t1-evil");
    cleanup_free char *app = path_of("t1-evil/app");
    sh("mkdir -p %s/e/sub && echo evil > %s/e/x", job, job);
    assert_int_equal(bundle_fetch_slug("ftp://x/s.tgz", app, NOBODY, NOBODY, 100, NULL, &err),
                     PIER_EINVAL);
    assert_non_null(strstr(err.msg, "ftp://x/s.tgz"));
    assert_int_equal(
        bundle_fetch_slug("file:///etc/hostname", app, NOBODY, NOBODY, 1 << 20, NULL, &err),
        PIER_EINVAL);
    assert_non_null(strstr(err.msg, "tar exited with status 2"));
    assert_non_null(strstr(err.msg, "gzip"));

    /* A member named ../x must not land next to app/. */
    cleanup_buf struct buf url = BUF_INIT;
    buf_printf(&url, "file://%s/evil.tgz", job);
    sh("tar -czPf %s/evil.tgz -C %s/e/sub ../x", job, job);
    assert_int_equal(bundle_fetch_slug(url.p, app, NOBODY, NOBODY, 1 << 20, NULL, &err),
                     PIER_EINVAL);
    assert_non_null(strstr(err.msg, "contains '..'"));
    cleanup_free char *outside = path_of("t1-evil/x");
    assert_int_equal(access(outside, F_OK), -1);

    /* An absolute member lands inside app/. */
    buf_reset(&url);
    buf_printf(&url, "file://%s/abs.tgz", job);
    sh("tar -czPf %s/abs.tgz %s/e/x", job, job);
    assert_int_equal(bundle_fetch_slug(url.p, app, NOBODY, NOBODY, 1 << 20, NULL, &err), 0);
    cleanup_free char *inside = path_of("t1-evil/app/%s/t1-evil/e/x", base + 1);
    assert_int_equal(access(inside, F_OK), 0);

    /* A symlink out of app/ and then a write through it, to a directory
     * anyone may write to: GNU tar does not follow it. */
    cleanup_free char *target = path_of("t1-evil/target");
    sh("mkdir -p %s/s && mkdir -m 1777 %s && ln -s %s %s/s/link && mkdir -p %s/s2/link && "
       "echo bad > %s/s2/link/pwned && tar -czf %s/link.tgz -C %s/s link -C %s/s2 link/pwned",
       job, target, target, job, job, job, job, job, job);
    buf_reset(&url);
    buf_printf(&url, "file://%s/link.tgz", job);
    assert_int_equal(bundle_fetch_slug(url.p, app, NOBODY, NOBODY, 1 << 20, NULL, &err),
                     PIER_EINVAL);
    assert_non_null(strstr(err.msg, "link/pwned"));
    cleanup_free char *pwned = path_of("t1-evil/target/pwned");
    assert_int_equal(access(pwned, F_OK), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_host_root),      cmocka_unit_test(test_check_stack),
        cmocka_unit_test(test_stack_points),   cmocka_unit_test(test_config),
        cmocka_unit_test(test_config_build),   cmocka_unit_test(test_config_mounts_caps),
        cmocka_unit_test(test_write_refused),  cmocka_unit_test(test_crun_run),
        cmocka_unit_test(test_crun_run_init),  cmocka_unit_test(test_crun_stack),
        cmocka_unit_test(test_crun_build_tmp), cmocka_unit_test(test_slug_file),
        cmocka_unit_test(test_slug_http),      cmocka_unit_test(test_slug_bad),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
