#include "host/bundle.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <linux/openat2.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lib/buf.h"
#include "lib/cleanup.h"
#include "lib/fs.h"
#include "lib/hex.h"

#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#define MAX_RESOLV_CONF 65536
#define TAR_STDERR_MAX 4096
#define SHA256_HEX 64

/* The host directories a "host" stack binds read-only, in mount order. */
static const char *const host_dirs[] = {"usr", "bin", "sbin", "lib", "lib64", "etc"};

/* ---- files ---- */

/* Writes dir/name atomically (fs.h). No fsync: crun reads the file
 * moments later, and after a crash the agent writes the bundle again
 * before it starts anything. */
static int write_atomic(const char *dir, const char *name, const char *data, size_t len,
                        mode_t mode, struct pier_err *err)
{
    cleanup_buf struct buf path = BUF_INIT;
    buf_printf(&path, "%s/%s", dir, name);
    return fs_write_atomic(path.p, data, len, mode, false, err);
}

/* mkdir that accepts an existing directory (but not a file or a symlink). */
static int make_dir(const char *path, mode_t mode, struct pier_err *err)
{
    if (mkdir(path, mode) == 0)
        return 0;
    int e = errno;
    struct stat st;
    if (e == EEXIST && lstat(path, &st) == 0 && S_ISDIR(st.st_mode))
        return 0;
    return err_set(err, e == EEXIST ? -ENOTDIR : -e, "%s: %s", path,
                   strerror(e == EEXIST ? ENOTDIR : e));
}

/* Makes path a directory of mode 0755 owned by uid/gid (it may exist; a
 * symlink in its place is refused). Returns an open fd on it, or < 0. */
static int make_app_dir(const char *path, uid_t uid, gid_t gid, struct pier_err *err)
{
    int rc = make_dir(path, 0755, err);
    if (rc < 0)
        return rc;
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return err_set(err, -errno, "%s: %s", path, strerror(errno));
    if (fchown(fd, uid, gid) < 0 || fchmod(fd, 0755) < 0) {
        int e = errno;
        close(fd);
        return err_set(err, -e, "%s: %s", path, strerror(e));
    }
    return fd;
}

/* app/pierd: the empty regular file the host's pierd is bound over,
 * owned like app/ (a symlink or a directory in its place is refused). */
static int make_pierd_point(int app_fd, const char *app_dir, uid_t uid, gid_t gid,
                            struct pier_err *err)
{
    cleanup_close int fd =
        openat(app_fd, "pierd", O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK, 0644);
    if (fd < 0)
        return err_set(err, -errno, "%s/pierd: %s", app_dir, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0)
        return err_set(err, -errno, "%s/pierd: %s", app_dir, strerror(errno));
    if (!S_ISREG(st.st_mode))
        return err_set(err, PIER_EINVAL, "%s/pierd: not a regular file", app_dir);
    if (fchown(fd, uid, gid) < 0 || fchmod(fd, 0644) < 0)
        return err_set(err, -errno, "%s/pierd: %s", app_dir, strerror(errno));
    return 0;
}

static int read_small_file(const char *path, size_t max, struct buf *out)
{
    cleanup_close int fd = open(path, O_RDONLY | O_CLOEXEC);
    return fd < 0 ? -errno : fs_read_fd(fd, out, max);
}

/* ---- config.json pieces ---- */

static json_t *str_array(const char *first, ...)
{
    json_t *a = json_array();
    va_list ap;
    va_start(ap, first);
    for (const char *s = first; s; s = va_arg(ap, const char *))
        json_array_append_new(a, json_string(s)); /* steals */
    va_end(ap);
    return a;
}

/* Appends one mount; options (an array, or NULL for none) is stolen. */
static void add_mount(json_t *mounts, const char *dest, const char *type, const char *source,
                      json_t *options)
{
    json_t *m = json_pack("{s:s, s:s, s:s}", "destination", dest, "type", type, "source", source);
    if (options)
        json_object_set_new(m, "options", options); /* steals options */
    json_array_append_new(mounts, m);               /* steals m */
}

/* Whether env (NAME=value strings) sets name. */
static bool env_has(const json_t *env, const char *name)
{
    size_t nl = strlen(name), i;
    json_t *v;
    json_array_foreach(env, i, v)
    {
        const char *e = json_string_value(v);
        if (strncmp(e, name, nl) == 0 && e[nl] == '=')
            return true;
    }
    return false;
}

/* Whether the agent sets the variable of entry ("NAME=value") itself: its
 * value then wins over the spec's. */
static bool agent_var(const char *entry, size_t n_ports, bool host_ip)
{
    char name[32], port[32];
    size_t nl = strcspn(entry, "=");
    if (nl >= sizeof(name))
        return false;
    memcpy(name, entry, nl);
    name[nl] = '\0';
    if (strcmp(name, "PIER_JOB_ID") == 0 || strcmp(name, "PIER_HOST_ID") == 0)
        return true;
    if (host_ip && strcmp(name, "EXTERNAL_IP") == 0)
        return true;
    if (n_ports > 0 && strcmp(name, "PORT") == 0)
        return true;
    for (size_t i = 0; i < n_ports; i++) {
        snprintf(port, sizeof(port), "PORT_%zu", i);
        if (strcmp(name, port) == 0)
            return true;
    }
    return false;
}

static json_t *build_env(const struct jobspec *spec, const struct bundle_opts *opts)
{
    json_t *env = json_array();
    char s[64];
    for (size_t i = 0; i < spec->n_env; i++)
        if (!agent_var(spec->env[i], spec->n_ports, opts->host_ip != NULL))
            json_array_append_new(env, json_string(spec->env[i]));
    if (spec->n_ports > 0) {
        snprintf(s, sizeof(s), "PORT=%d", opts->ports[0]);
        json_array_append_new(env, json_string(s));
    }
    for (size_t i = 0; i < spec->n_ports; i++) {
        snprintf(s, sizeof(s), "PORT_%zu=%d", i, opts->ports[i]);
        json_array_append_new(env, json_string(s));
    }
    cleanup_buf struct buf b = BUF_INIT;
    buf_printf(&b, "PIER_JOB_ID=%s", spec->id);
    json_array_append_new(env, json_string(b.p));
    buf_reset(&b);
    buf_printf(&b, "PIER_HOST_ID=%s", opts->host_id ? opts->host_id : spec->host_id);
    json_array_append_new(env, json_string(b.p));
    if (opts->host_ip) { /* Flynn's name: the address the job's ports are reached at */
        buf_reset(&b);
        buf_printf(&b, "EXTERNAL_IP=%s", opts->host_ip);
        json_array_append_new(env, json_string(b.p));
    }
    if (!env_has(env, "HOME"))
        json_array_append_new(env, json_string("HOME=/app"));
    if (!env_has(env, "PATH"))
        json_array_append_new(env, json_string("PATH=" DEFAULT_PATH));
    if (spec->tty && !env_has(env, "TERM"))
        json_array_append_new(env, json_string("TERM=xterm"));
    return env;
}

/* Whether the array of strings a holds s. */
static bool has_str(const json_t *a, const char *s)
{
    size_t i;
    json_t *v;
    json_array_foreach(a, i, v)
    {
        if (strcmp(json_string_value(v), s) == 0)
            return true;
    }
    return false;
}

/* The three capabilities Docker and `crun spec` keep for a plain
 * container, plus the spec's linux_capabilities. A non-root user loses
 * its effective and permitted capabilities at exec unless they are
 * ambient (and an ambient one must be inheritable too): so the spec's are
 * in every set, while the three kept ones only bound what a setuid-free
 * job could ever get. */
static json_t *build_caps(const struct jobspec *spec)
{
    cleanup_json json_t *kept =
        str_array("CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE", NULL);
    json_t *extra = json_array();
    for (size_t i = 0; i < spec->n_caps; i++) {
        if (!has_str(kept, spec->caps[i]))
            json_array_append_new(kept, json_string(spec->caps[i]));
        json_array_append_new(extra, json_string(spec->caps[i]));
    }
    json_t *caps = json_object();
    const char *sets[] = {"bounding", "effective", "permitted"};
    for (size_t i = 0; i < sizeof(sets) / sizeof(*sets); i++)
        json_object_set_new(caps, sets[i], json_deep_copy(kept));
    if (spec->n_caps > 0)
        json_object_set_new(caps, "ambient", json_deep_copy(extra));
    json_object_set_new(caps, "inheritable", extra); /* steals extra */
    return caps;
}

static json_t *build_process(const struct jobspec *spec, const struct bundle_opts *opts)
{
    json_t *args = json_array();
    if (spec->init) {
        json_array_append_new(args, json_string("/dev/init"));
        json_array_append_new(args, json_string("-g")); /* signals to the job's process group */
        json_array_append_new(args, json_string("--"));
    }
    for (size_t i = 0; i < spec->n_args; i++)
        json_array_append_new(args, json_string(spec->args[i]));
    json_t *p =
        json_pack("{s:b, s:{s:I, s:I}, s:o, s:o, s:s, s:o, s:[{s:s, s:I, s:I}], s:b}", "terminal",
                  spec->tty, "user", "uid", (json_int_t)opts->uid, "gid", (json_int_t)opts->gid,
                  "args", args, "env", build_env(spec, opts), "cwd", spec->working_dir,
                  "capabilities", build_caps(spec), "rlimits", "type", "RLIMIT_NOFILE", "hard",
                  (json_int_t)spec->max_fd, "soft", (json_int_t)spec->max_fd, "noNewPrivileges", 1);
    if (spec->tty)
        json_object_set_new(
            p, "consoleSize",
            json_pack("{s:i, s:i}", "height", spec->tty_lines, "width", spec->tty_columns));
    return p;
}

/* The kernel file systems every container gets, as `crun spec` has them. */
static void add_kernel_mounts(json_t *m)
{
    add_mount(m, "/proc", "proc", "proc", NULL);
    add_mount(m, "/dev", "tmpfs", "tmpfs",
              str_array("nosuid", "strictatime", "mode=755", "size=65536k", NULL));
    add_mount(
        m, "/dev/pts", "devpts", "devpts",
        str_array("nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5", NULL));
    add_mount(m, "/dev/shm", "tmpfs", "shm",
              str_array("nosuid", "noexec", "nodev", "mode=1777", "size=65536k", NULL));
    add_mount(m, "/dev/mqueue", "mqueue", "mqueue", str_array("nosuid", "noexec", "nodev", NULL));
    add_mount(m, "/sys", "sysfs", "sysfs", str_array("nosuid", "noexec", "nodev", "ro", NULL));
    /* The job's own cgroups, read-only, so runtimes that size themselves
     * from memory.limit_in_bytes (the JVM, Node) see the limit. */
    add_mount(m, "/sys/fs/cgroup", "cgroup", "cgroup",
              str_array("nosuid", "noexec", "nodev", "relatime", "ro", NULL));
}

/* The host's directories for the "host" stack. Debian 12 merges /bin,
 * /sbin, /lib and /lib64 into /usr (they are symlinks there): the source
 * is resolved, so /bin becomes a bind of /usr/bin onto the root's own /bin
 * directory, which is what a program looking up /bin/sh or
 * /lib64/ld-linux-x86-64.so.2 needs. Directories the host lacks are left
 * out. "rro" keeps mounts below them (Docker binds /etc/hosts) read-only
 * too. */
static void add_host_mounts(json_t *m)
{
    for (size_t i = 0; i < sizeof(host_dirs) / sizeof(*host_dirs); i++) {
        char dir[16], real[PATH_MAX];
        snprintf(dir, sizeof(dir), "/%s", host_dirs[i]);
        struct stat st;
        if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode) || !realpath(dir, real))
            continue;
        add_mount(m, dir, "bind", real, str_array("rbind", "ro", "rro", "nosuid", "nodev", NULL));
    }
}

static json_t *build_mounts(const struct jobspec *spec, const struct bundle_opts *opts,
                            const char *job_dir)
{
    json_t *m = json_array();
    cleanup_buf struct buf src = BUF_INIT;
    add_kernel_mounts(m);
    if (!opts->root)
        add_host_mounts(m);
    if (opts->build_tmp) {
        /* A build's npm cache and work trees do not fit 256 MB, and a
         * tmpfs would count against the job's memory: the disk instead. */
        buf_printf(&src, "%s/tmp", job_dir);
        add_mount(m, "/tmp", "bind", src.p, str_array("rbind", "rw", "nosuid", "nodev", NULL));
        buf_reset(&src);
    } else {
        add_mount(m, "/tmp", "tmpfs", "tmpfs",
                  str_array("nosuid", "nodev", "mode=1777", "size=256m", NULL));
    }
    buf_printf(&src, "%s/app", job_dir);
    add_mount(m, "/app", "bind", src.p, str_array("rbind", "rw", "nosuid", "nodev", NULL));
    buf_reset(&src);
    /* After /app, so that it lands on app/pierd inside it. */
    if (spec->pierd)
        add_mount(m, "/app/pierd", "bind", opts->pierd,
                  str_array("bind", "ro", "nosuid", "nodev", NULL));
    buf_printf(&src, "%s/bundle/hosts", job_dir);
    add_mount(m, "/etc/hosts", "bind", src.p,
              str_array("bind", "ro", "nosuid", "nodev", "noexec", NULL));
    buf_reset(&src);
    buf_printf(&src, "%s/bundle/resolv.conf", job_dir);
    add_mount(m, "/etc/resolv.conf", "bind", src.p,
              str_array("bind", "ro", "nosuid", "nodev", "noexec", NULL));
    if (spec->init)
        add_mount(m, "/dev/init", "bind", opts->init_path,
                  str_array("bind", "ro", "nosuid", "nodev", NULL));
    /* The slug builder and runner (docs/build.md), for any stack. Plain
     * binds with nothing mounted below them: "ro" is enough ("rro" would
     * need Linux 5.12). */
    if (opts->pierslug)
        add_mount(m, "/.pier/pierslug", "bind", opts->pierslug,
                  str_array("bind", "ro", "nosuid", "nodev", NULL));
    if (opts->buildpacks)
        add_mount(m, "/.pier/buildpacks", "bind", opts->buildpacks,
                  str_array("bind", "ro", "nosuid", "nodev", NULL));
    return m;
}

/* System calls a job has no business with: mounting and namespaces,
 * modules and kexec, BPF and perf, keyrings, clocks, swap, reboot, raw I/O
 * ports, ptrace and peeking into other processes, and old or obscure
 * calls. Each name is known to libseccomp 2.5 on x86_64 (a few only exist
 * there, not on x86 or x32: libseccomp skips those per architecture).
 * crun ignores names it cannot resolve, so a typo would silently allow the
 * call: test_bundle checks a few of them from inside a container. */
static const char *const denied_syscalls[] = {"mount",
                                              "umount2",
                                              "pivot_root",
                                              "swapon",
                                              "swapoff",
                                              "reboot",
                                              "kexec_load",
                                              "kexec_file_load",
                                              "init_module",
                                              "finit_module",
                                              "delete_module",
                                              "bpf",
                                              "perf_event_open",
                                              "add_key",
                                              "request_key",
                                              "keyctl",
                                              "acct",
                                              "settimeofday",
                                              "clock_settime",
                                              "clock_adjtime",
                                              "adjtimex",
                                              "open_by_handle_at",
                                              "name_to_handle_at",
                                              "userfaultfd",
                                              "lookup_dcookie",
                                              "quotactl",
                                              "setns",
                                              "unshare",
                                              "iopl",
                                              "ioperm",
                                              "syslog",
                                              "ptrace",
                                              "process_vm_readv",
                                              "process_vm_writev",
                                              "nfsservctl",
                                              "vhangup",
                                              "fanotify_init",
                                              "create_module",
                                              "get_kernel_syms",
                                              "query_module",
                                              "uselib",
                                              "ustat",
                                              "sysfs",
                                              "_sysctl"};

/* clone flags that make namespaces: denying unshare alone would leave
 * clone(CLONE_NEWUSER) open. */
static const json_int_t clone_ns_flags[] = {
    0x00020000, /* CLONE_NEWNS */
    0x02000000, /* CLONE_NEWCGROUP */
    0x04000000, /* CLONE_NEWUTS */
    0x08000000, /* CLONE_NEWIPC */
    0x10000000, /* CLONE_NEWUSER */
    0x20000000, /* CLONE_NEWPID */
    0x40000000, /* CLONE_NEWNET */
};

static json_t *build_seccomp(void)
{
    json_t *names = json_array();
    for (size_t i = 0; i < sizeof(denied_syscalls) / sizeof(*denied_syscalls); i++)
        json_array_append_new(names, json_string(denied_syscalls[i]));
    json_t *rules = json_array();
    json_array_append_new(rules, json_pack("{s:o, s:s, s:i}", "names", names, "action",
                                           "SCMP_ACT_ERRNO", "errnoRet", EPERM));
    /* One rule per flag: conditions within a rule are ANDed, rules ORed. */
    for (size_t i = 0; i < sizeof(clone_ns_flags) / sizeof(*clone_ns_flags); i++)
        json_array_append_new(rules,
                              json_pack("{s:[s], s:s, s:i, s:[{s:i, s:I, s:I, s:s}]}", "names",
                                        "clone", "action", "SCMP_ACT_ERRNO", "errnoRet", EPERM,
                                        "args", "index", 0, "value", clone_ns_flags[i], "valueTwo",
                                        clone_ns_flags[i], "op", "SCMP_CMP_MASKED_EQ"));
    /* clone3 passes its flags in memory a filter cannot read: ENOSYS makes
     * glibc fall back to clone, which the rules above see (Docker does the
     * same). */
    json_array_append_new(rules, json_pack("{s:[s], s:s, s:i}", "names", "clone3", "action",
                                           "SCMP_ACT_ERRNO", "errnoRet", ENOSYS));
    return json_pack("{s:s, s:[s, s, s], s:o}", "defaultAction", "SCMP_ACT_ALLOW", "architectures",
                     "SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32", "syscalls", rules);
}

static json_t *build_linux(const struct jobspec *spec)
{
    cleanup_buf struct buf cg = BUF_INIT;
    buf_printf(&cg, "/pier/%s", spec->id);
    int64_t shares = spec->cpu * 1024 / 1000;
    json_t *res =
        json_pack("{s:[{s:b, s:s}], s:{s:I, s:I}, s:{s:I}, s:{s:I}}", "devices", "allow", 0,
                  "access", "rwm", "memory", "limit", (json_int_t)spec->memory, "swap",
                  (json_int_t)spec->memory, "cpu", "shares", (json_int_t)(shares < 2 ? 2 : shares),
                  "pids", "limit", (json_int_t)spec->max_procs);
    return json_pack(
        "{s:s, s:o, s:[{s:s}, {s:s}, {s:s}, {s:s}], s:[s,s,s,s,s,s,s,s,s,s], s:[s,s,s,s,s], s:o}",
        "cgroupsPath", cg.p, "resources", res, "namespaces", "type", "pid", "type", "mount", "type",
        "ipc", "type", "uts", "maskedPaths", "/proc/acpi", "/proc/asound", "/proc/kcore",
        "/proc/keys", "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
        "/proc/sched_debug", "/sys/firmware", "/proc/scsi", "readonlyPaths", "/proc/bus",
        "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger", "seccomp", build_seccomp());
}

/* ---- bundle_write ---- */

static int add_user_mounts(const struct jobspec *spec, const struct bundle_opts *opts,
                           const char *root, json_t *mounts, struct pier_err *err);

static int check_opts(const struct jobspec *spec, const struct bundle_opts *opts,
                      struct pier_err *err)
{
    if (!opts->job_dir)
        return err_set(err, PIER_EINVAL, "job %s: no job directory", spec->id);
    if (!opts->root && !opts->host_root)
        return err_set(err, PIER_EINVAL, "job %s: neither a stack nor a host root", spec->id);
    if (spec->n_ports > 0 && !opts->ports)
        return err_set(err, PIER_EINVAL, "job %s: no ports allocated", spec->id);
    for (size_t i = 0; i < spec->n_ports; i++)
        if (opts->ports[i] < 1 || opts->ports[i] > 65535)
            return err_set(err, PIER_EINVAL, "job %s: allocated port %d is out of range", spec->id,
                           opts->ports[i]);
    struct stat st;
    if (spec->init) {
        if (!opts->init_path)
            return err_set(err, PIER_EINVAL, "job %s: init asked for, but no init binary",
                           spec->id);
        if (stat(opts->init_path, &st) < 0 || !S_ISREG(st.st_mode))
            return err_set(err, PIER_ENOTFOUND, "init %s: not a file", opts->init_path);
    }
    if (spec->pierd) {
        if (!opts->pierd)
            return err_set(err, PIER_EINVAL, "job %s: artifact.pierd, but no pierd to bind",
                           spec->id);
        if (stat(opts->pierd, &st) < 0 || !S_ISREG(st.st_mode))
            return err_set(err, PIER_ENOTFOUND, "pierd %s: not a file", opts->pierd);
    }
    const char *root = opts->root ? opts->root : opts->host_root;
    if (stat(root, &st) < 0 || !S_ISDIR(st.st_mode))
        return err_set(err, PIER_ENOTFOUND, "%s %s: not a directory",
                       opts->root ? "stack" : "host root", root);
    return 0;
}

/* job_dir/tmp, the build job's /tmp: root's, world-writable and sticky as
 * a /tmp is (the job's user writes, nobody removes another's files); a
 * symlink in its place is refused. */
static int make_tmp_dir(const char *job_dir, struct pier_err *err)
{
    cleanup_buf struct buf p = BUF_INIT;
    buf_printf(&p, "%s/tmp", job_dir);
    int rc = make_dir(p.p, 0700, err);
    if (rc < 0)
        return rc;
    cleanup_close int fd = open(p.p, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0 || fchown(fd, 0, 0) < 0 || fchmod(fd, 01777) < 0)
        return err_set(err, -errno, "%s: %s", p.p, strerror(errno));
    return 0;
}

static int write_etc_files(const struct jobspec *spec, const char *bdir, struct pier_err *err)
{
    cleanup_buf struct buf hosts = BUF_INIT;
    buf_printf(&hosts, "127.0.0.1 localhost %s\n::1 localhost ip6-localhost\n", spec->id);
    int rc = write_atomic(bdir, "hosts", hosts.p, hosts.len, 0644, err);
    if (rc < 0)
        return rc;
    /* A copy, not a bind of the host's file: the host may replace its own
     * (a DHCP client renames over it), and a bind would keep the old one. */
    cleanup_buf struct buf resolv = BUF_INIT;
    rc = read_small_file("/etc/resolv.conf", MAX_RESOLV_CONF, &resolv);
    if (rc < 0 && rc != -ENOENT)
        return err_set(err, rc, "/etc/resolv.conf: %s", strerror(-rc));
    return write_atomic(bdir, "resolv.conf", resolv.p ? resolv.p : "", resolv.len, 0644, err);
}

int bundle_write(const struct jobspec *spec, const struct bundle_opts *opts, struct pier_err *err)
{
    int rc = check_opts(spec, opts, err);
    if (rc < 0)
        return rc;
    /* crun resolves bind sources as given: make every path absolute. */
    char job_dir[PATH_MAX], root[PATH_MAX];
    if (!realpath(opts->job_dir, job_dir))
        return err_set(err, -errno, "job directory %s: %s", opts->job_dir, strerror(errno));
    if (!realpath(opts->root ? opts->root : opts->host_root, root))
        return err_set(err, -errno, "root %s: %s", opts->root ? opts->root : opts->host_root,
                       strerror(errno));

    cleanup_buf struct buf path = BUF_INIT;
    buf_printf(&path, "%s/app", job_dir);
    int fd = make_app_dir(path.p, opts->uid, opts->gid, err);
    if (fd < 0)
        return fd;
    rc = spec->pierd ? make_pierd_point(fd, path.p, opts->uid, opts->gid, err) : 0;
    close(fd);
    if (rc < 0)
        return rc;
    if (opts->build_tmp && (rc = make_tmp_dir(job_dir, err)) < 0)
        return rc;
    buf_reset(&path);
    buf_printf(&path, "%s/bundle", job_dir);
    if ((rc = make_dir(path.p, 0700, err)) < 0 || (rc = write_etc_files(spec, path.p, err)) < 0)
        return rc;

    json_t *mounts = build_mounts(spec, opts, job_dir);
    if ((rc = add_user_mounts(spec, opts, root, mounts, err)) < 0) {
        json_decref(mounts);
        return rc;
    }
    cleanup_json json_t *cfg =
        json_pack("{s:s, s:o, s:{s:s, s:b}, s:s, s:o, s:o}", "ociVersion", "1.0.2", "process",
                  build_process(spec, opts), "root", "path", root, "readonly", 1, "hostname",
                  spec->id, "mounts", mounts, "linux", build_linux(spec));
    if (!cfg)
        return err_set(err, PIER_EINTERNAL, "job %s: cannot build config.json", spec->id);
    cleanup_free char *text = json_dumps(cfg, JSON_INDENT(1));
    if (!text)
        return err_set(err, PIER_EINTERNAL, "job %s: cannot encode config.json", spec->id);
    /* 0600: the environment may hold the app's secrets. */
    return write_atomic(path.p, "config.json", text, strlen(text), 0600, err);
}

/* ---- roots ---- */

/* An empty regular file at path to bind a file onto (it may exist; a
 * symlink or anything else in its place is refused). */
static int make_file(const char *path, struct pier_err *err)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) {
        int e = errno;
        if (fd >= 0)
            close(fd);
        return err_set(err, -e, "%s: %s", path, strerror(e));
    }
    close(fd);
    if (!S_ISREG(st.st_mode))
        return err_set(err, -EINVAL, "%s: not a regular file", path);
    return 0;
}

int bundle_host_root(const char *dir, struct pier_err *err)
{
    static const char *const points[] = {
        "usr", "bin",  "sbin", "lib",   "lib64",           "etc", "app", "tmp",
        "dev", "proc", "sys",  ".pier", ".pier/buildpacks"};
    int rc = make_dir(dir, 0755, err);
    if (rc < 0)
        return rc;
    cleanup_buf struct buf p = BUF_INIT;
    for (size_t i = 0; i < sizeof(points) / sizeof(*points); i++) {
        buf_reset(&p);
        buf_printf(&p, "%s/%s", dir, points[i]);
        if ((rc = make_dir(p.p, 0755, err)) < 0)
            return rc;
    }
    buf_reset(&p);
    buf_printf(&p, "%s/.pier/pierslug", dir);
    return make_file(p.p, err);
}

/* Opens name inside root as the container will see it: symlinks (a
 * debootstrap root's bin -> usr/bin, absolute ones too) resolve within
 * root, never into the host. */
static int open_in_root(int root_fd, const char *name)
{
    struct open_how how = {.flags = O_PATH | O_CLOEXEC, .resolve = RESOLVE_IN_ROOT};
    int fd = (int)syscall(SYS_openat2, root_fd, name, &how, sizeof(how));
    if (fd < 0 && errno == ENOSYS)
        fd = openat(root_fd, name, O_PATH | O_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

/* Whether name inside root (as the container sees it) is of the type
 * (S_IFREG, S_IFDIR) that mode says. */
static bool has_in_root(int root_fd, const char *name, mode_t type)
{
    cleanup_close int fd = open_in_root(root_fd, name);
    struct stat st;
    return fd >= 0 && fstat(fd, &st) == 0 && (st.st_mode & S_IFMT) == type;
}

int bundle_check_stack(const char *dir, struct pier_err *err)
{
    cleanup_close int root = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (root < 0)
        return err_set(err, PIER_ENOTFOUND, "stack %s: %s", dir, strerror(errno));
    const char *need[] = {"bin/sh", "etc/os-release"};
    for (size_t i = 0; i < 2; i++) {
        cleanup_close int fd = open_in_root(root, need[i]);
        struct stat st;
        if (fd < 0)
            return err_set(err, PIER_ENOTFOUND, "stack %s: no %s (%s)", dir, need[i],
                           strerror(-fd));
        if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
            return err_set(err, PIER_ENOTFOUND, "stack %s: %s is not a file", dir, need[i]);
    }
    return 0;
}

unsigned bundle_stack_points(const char *dir)
{
    cleanup_close int root = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    unsigned points = 0;
    if (root >= 0 && has_in_root(root, ".pier/pierslug", S_IFREG))
        points |= BUNDLE_HAS_PIERSLUG;
    if (root >= 0 && has_in_root(root, ".pier/buildpacks", S_IFDIR))
        points |= BUNDLE_HAS_BUILDPACKS;
    return points;
}

/* ---- the spec's mounts ---- */

/* Whether target lies under one of the host directories the host binds
 * put in the root (/usr/..., /etc/...): its mount point is then in the
 * host's own directory, seen through that bind, and must already exist. */
static bool under_host_dir(const char *target)
{
    for (size_t i = 0; i < sizeof(host_dirs) / sizeof(*host_dirs); i++) {
        size_t n = strlen(host_dirs[i]);
        if (strncmp(target + 1, host_dirs[i], n) == 0 && target[1 + n] == '/')
            return true;
    }
    return false;
}

/* Makes the mount point of target (a directory, or a file when !dir) in
 * the agent's host root: every missing component a directory of mode
 * 0755. The host root is the agent's own, so this writes nowhere jobs
 * could. */
static int make_point(const char *host_root, const char *target, bool dir, struct pier_err *err)
{
    cleanup_buf struct buf p = BUF_INIT;
    buf_puts(&p, host_root);
    for (const char *c = target + 1;;) {
        size_t n = strcspn(c, "/");
        buf_putc(&p, '/');
        buf_append(&p, c, n);
        if (c[n] == '\0')
            return dir ? make_dir(p.p, 0755, err) : make_file(p.p, err);
        int rc = make_dir(p.p, 0755, err);
        if (rc < 0)
            return rc;
        c += n + 1;
    }
}

/* Checks that target exists in the stack at root_fd as the container will
 * see it, of the kind the location is. */
static int check_point(int root_fd, const char *root, const char *target, bool dir, size_t i,
                       struct pier_err *err)
{
    cleanup_close int fd = open_in_root(root_fd, target + 1);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0)
        return err_set(err, PIER_ENOTFOUND,
                       "mounts[%zu].target %s: not in the stack %s, and the agent never writes "
                       "into a stack jobs share: add the %s to the stack (%s %s%s)",
                       i, target, root, dir ? "directory" : "file", dir ? "mkdir -p" : "touch",
                       root, target);
    if (dir != S_ISDIR(st.st_mode))
        return err_set(err, PIER_EINVAL, "mounts[%zu].target %s: in the stack %s it is %s", i,
                       target, root,
                       dir ? "not a directory, but the location is one"
                           : "a directory, but the location is not");
    return 0;
}

/* Appends the spec's mounts to mounts, after checking that each location
 * exists and making (host root) or checking (stack) its mount point. */
static int add_user_mounts(const struct jobspec *spec, const struct bundle_opts *opts,
                           const char *root, json_t *mounts, struct pier_err *err)
{
    if (spec->n_mounts == 0)
        return 0;
    cleanup_close int root_fd = -1;
    if (opts->root && (root_fd = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC)) < 0)
        return err_set(err, -errno, "stack %s: %s", root, strerror(errno));
    for (size_t i = 0; i < spec->n_mounts; i++) {
        const struct jobspec_mount *m = &spec->mounts[i];
        char src[PATH_MAX];
        struct stat st;
        if (!realpath(m->location, src) || stat(src, &st) < 0)
            return err_set(err, PIER_ENOTFOUND, "mounts[%zu].location %s: %s on this host", i,
                           m->location, strerror(errno));
        bool dir = S_ISDIR(st.st_mode);
        int rc;
        if (opts->root)
            rc = check_point(root_fd, root, m->target, dir, i, err);
        else if (under_host_dir(m->target))
            rc = stat(m->target, &st) == 0 && dir == S_ISDIR(st.st_mode)
                     ? 0
                     : err_set(err, PIER_ENOTFOUND,
                               "mounts[%zu].target %s: under a directory of the host's bound "
                               "read-only into the job, and not a %s there",
                               i, m->target, dir ? "directory" : "file");
        else
            rc = make_point(root, m->target, dir, err);
        if (rc < 0)
            return rc == PIER_ENOTFOUND || rc == PIER_EINVAL
                       ? rc
                       : err_wrap(err, rc, "mounts[%zu].target %s", i, m->target);
        json_t *opt = m->writeable ? str_array("rbind", "rw", "nosuid", "nodev", NULL)
                                   : str_array("rbind", "ro", "rro", "nosuid", "nodev", NULL);
        add_mount(mounts, m->target, "bind", src, opt);
    }
    return 0;
}

/* ---- slugs ---- */

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_result;

static void curl_init_once(void)
{
    curl_init_result = curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* The URL as messages show it: user:password@ replaced, long ones cut. */
static void url_for_humans(const char *url, char *out, size_t size)
{
    const char *auth = strstr(url, "://");
    const char *at = NULL;
    if (auth) {
        auth += 3;
        size_t alen = strcspn(auth, "/?#");
        at = memchr(auth, '@', alen);
    }
    if (at)
        snprintf(out, size, "%.*s***%.200s", (int)(auth - url), url, at);
    else
        snprintf(out, size, "%.240s", url);
}

struct download {
    int fd;
    int64_t max, got;
    bool too_big;
    int write_errno;
    EVP_MD_CTX *md; /* the SHA-256 of what was written */
};

static size_t download_write(char *data, size_t size, size_t n, void *ud)
{
    struct download *d = ud;
    size_t len = size * n;
    if (d->got + (int64_t)len > d->max) {
        d->too_big = true;
        return 0;
    }
    for (size_t off = 0; off < len;) {
        ssize_t w = write(d->fd, data + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0) {
            d->write_errno = errno;
            return 0;
        }
        off += (size_t)w;
    }
    EVP_DigestUpdate(d->md, data, len);
    d->got += (int64_t)len;
    return len;
}

/* Fetches url into fd, at most max bytes, and writes the SHA-256 (hex) of
 * what it got into sha. */
static int download(const char *url, const char *shown, int fd, int64_t max,
                    char sha[SHA256_HEX + 1], struct pier_err *err)
{
    pthread_once(&curl_once, curl_init_once);
    if (curl_init_result != CURLE_OK)
        return err_set(err, PIER_EINTERNAL, "slug %s: cannot start libcurl", shown);
    CURL *c = curl_easy_init();
    if (!c)
        return err_set(err, PIER_EINTERNAL, "slug %s: cannot start libcurl", shown);
    struct download d = {.fd = fd, .max = max, .md = EVP_MD_CTX_new()};
    if (!d.md || EVP_DigestInit_ex(d.md, EVP_sha256(), NULL) != 1)
        abort();
    char ebuf[CURL_ERROR_SIZE] = "";
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https,file");
    /* A redirect never leads to the agent's own files. */
    curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(c, CURLOPT_MAXREDIRS, 5L);
    curl_easy_setopt(c, CURLOPT_FAILONERROR, 1L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 10L);
    /* A stalled transfer (under 1 KiB/s for 30 s) ends; a slow but moving
     * one of a large slug may take its time, up to 10 minutes. */
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1024L);
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, 30L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 600L);
    curl_easy_setopt(c, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)max);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, download_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &d);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, ebuf);
    CURLcode cc = curl_easy_perform(c);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(c);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    EVP_DigestFinal_ex(d.md, md, &mdlen);
    EVP_MD_CTX_free(d.md);
    hex_encode(md, SHA256_HEX / 2, sha);
    if (cc == CURLE_OK)
        return 0;
    if (d.too_big || cc == CURLE_FILESIZE_EXCEEDED)
        return err_set(err, PIER_EINVAL, "slug %s: larger than %lld bytes", shown, (long long)max);
    if (d.write_errno)
        return err_set(err, -d.write_errno, "slug %s: writing the download: %s", shown,
                       strerror(d.write_errno));
    if (cc == CURLE_HTTP_RETURNED_ERROR)
        return err_set(err, PIER_EUNAVAIL, "slug %s: HTTP status %ld", shown, status);
    int code =
        cc == CURLE_UNSUPPORTED_PROTOCOL || cc == CURLE_URL_MALFORMAT ? PIER_EINVAL : PIER_EUNAVAIL;
    return err_set(err, code, "slug %s: %s", shown, ebuf[0] ? ebuf : curl_easy_strerror(cc));
}

/* An anonymous file in dir for the download: nothing is left behind if
 * the agent dies half way. */
static int temp_file(const char *dir, struct pier_err *err)
{
    int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd >= 0)
        return fd;
    cleanup_buf struct buf p = BUF_INIT;
    buf_printf(&p, "%s/.slug.XXXXXX", dir);
    fd = mkostemp(p.p, O_CLOEXEC);
    if (fd < 0)
        return err_set(err, -errno, "%s: %s", dir, strerror(errno));
    unlink(p.p);
    return fd;
}

/* The child's side of unpack: from here only async-signal-safe calls (the
 * agent has threads). The cwd is app_dir, opened while still root, so the
 * job's user needs no access to the directories above it. */
static void __attribute__((noreturn))
tar_child(const char *tar, int slug_fd, int app_fd, int err_fd, uid_t uid, gid_t gid)
{
    static const char *const argv[] = {
        "tar", "-xzf", "-", "--no-same-owner", "--no-same-permissions", "--no-overwrite-dir", NULL};
    static const char *const envp[] = {"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C", NULL};
    int null_fd = open("/dev/null", O_WRONLY);
    if (fchdir(app_fd) < 0 || dup2(slug_fd, 0) < 0 || null_fd < 0 || dup2(null_fd, 1) < 0 ||
        dup2(err_fd, 2) < 0)
        _exit(126);
    close_range(3, ~0U, 0);
    sigset_t all;
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, NULL);
    struct sigaction dfl = {.sa_handler = SIG_DFL};
    sigaction(SIGPIPE, &dfl, NULL);
    umask(022);
    if (setgroups(0, NULL) < 0 || setgid(gid) < 0 || setuid(uid) < 0) {
        static const char msg[] = "cannot switch to the job's user\n";
        (void)!write(2, msg, sizeof(msg) - 1);
        _exit(126);
    }
    execve(tar, (char *const *)argv, (char *const *)envp);
    static const char msg[] = "cannot run tar\n";
    (void)!write(2, msg, sizeof(msg) - 1);
    _exit(127);
}

/* The line of what tar said that names the trouble: its notes about
 * leading '/' and '../' it removed and its closing "Exiting with failure
 * status" say nothing about the cause. Control characters become spaces. */
static void tar_reason(struct buf *b)
{
    if (!b->p)
        return;
    size_t start = 0, len = 0;
    for (size_t pos = 0; pos < b->len;) {
        size_t n = 0;
        while (pos + n < b->len && b->p[pos + n] != '\n')
            n++;
        bool noise = (n >= 21 && strncmp(b->p + pos, "tar: Removing leading", 21) == 0) ||
                     (n >= 32 && strncmp(b->p + pos, "tar: Exiting with failure status", 32) == 0);
        if (n > 0 && (len == 0 || !noise)) {
            start = pos, len = n;
            if (!noise)
                break;
        }
        pos += n + 1;
    }
    memmove(b->p, b->p + start, len);
    b->len = len;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)b->p[i] < ' ' || b->p[i] == 0x7f)
            b->p[i] = ' ';
    b->p[len] = '\0';
}

static int unpack(const char *shown, int slug_fd, int app_fd, uid_t uid, gid_t gid,
                  struct pier_err *err)
{
    const char *tar = access("/usr/bin/tar", X_OK) == 0 ? "/usr/bin/tar" : "/bin/tar";
    int pipe_fd[2];
    if (lseek(slug_fd, 0, SEEK_SET) < 0 || pipe2(pipe_fd, O_CLOEXEC) < 0)
        return err_set(err, -errno, "slug %s: %s", shown, strerror(errno));
    pid_t pid = fork();
    if (pid == 0)
        tar_child(tar, slug_fd, app_fd, pipe_fd[1], uid, gid);
    int fork_errno = errno;
    close(pipe_fd[1]);
    cleanup_buf struct buf said = BUF_INIT;
    char chunk[512];
    for (;;) { /* read all of it, keep the start */
        ssize_t n = pid > 0 ? read(pipe_fd[0], chunk, sizeof(chunk)) : 0;
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        if (said.len < TAR_STDERR_MAX)
            buf_append(&said, chunk, (size_t)n);
    }
    close(pipe_fd[0]);
    if (pid < 0)
        return err_set(err, -fork_errno, "slug %s: cannot start tar: %s", shown,
                       strerror(fork_errno));
    int status = 0;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            return err_set(err, -errno, "slug %s: waiting for tar: %s", shown, strerror(errno));
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
        return 0;
    tar_reason(&said);
    if (WIFSIGNALED(status))
        return err_set(err, PIER_EINVAL, "slug %s: cannot unpack: tar was killed by signal %d",
                       shown, WTERMSIG(status));
    return err_set(err, PIER_EINVAL, "slug %s: cannot unpack: tar exited with status %d%s%s", shown,
                   WEXITSTATUS(status), said.len ? ": " : "", said.len ? said.p : "");
}

int bundle_fetch_slug(const char *url, const char *app_dir, uid_t uid, gid_t gid, int64_t max_bytes,
                      const char *sha256, struct pier_err *err)
{
    char shown[300];
    url_for_humans(url, shown, sizeof(shown));
    if (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0 &&
        strncmp(url, "file:///", 8) != 0)
        return err_set(err, PIER_EINVAL, "slug %s: not an http://, https:// or file:/// URL",
                       shown);
    if (max_bytes <= 0)
        return err_set(err, PIER_EINVAL, "slug %s: no size allowed", shown);
    if (sha256 && !hex_ok(sha256, SHA256_HEX))
        return err_set(err, PIER_EINVAL, "slug %s: slug_sha256 \"%.80s\" is not 64 hex digits",
                       shown, sha256);
    cleanup_close int app_fd = make_app_dir(app_dir, uid, gid, err);
    if (app_fd < 0)
        return app_fd;
    cleanup_free char *dir = xstrdup(app_dir);
    char *slash = strrchr(dir, '/');
    if (slash == dir)
        slash[1] = '\0';
    else if (slash)
        *slash = '\0';
    else
        strcpy(dir, ".");
    cleanup_close int fd = temp_file(dir, err);
    if (fd < 0)
        return fd;
    char got[SHA256_HEX + 1];
    int rc = download(url, shown, fd, max_bytes, got, err);
    if (rc < 0)
        return rc;
    /* Checked before a byte is unpacked: a slug changed since its build (a
     * replaced or corrupt blob) never runs. */
    if (sha256 && strcasecmp(got, sha256) != 0)
        return err_set(err, PIER_EINVAL,
                       "slug %s: its SHA-256 is %s, not %s as the release's artifact says "
                       "(changed or corrupt since it was built): not run",
                       shown, got, sha256);
    return unpack(shown, fd, app_fd, uid, gid, err);
}
