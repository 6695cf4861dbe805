/* daemons: the state dir, STATE/cluster.json, and pid-file daemons. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli/daemons.h"
#include "cli/ui.h"
#include "lib/buf.h"
#include "lib/cleanup.h"
#include "lib/fs.h"
#include "lib/httpc.h"
#include "lib/jsonx.h"

char *state_dir_resolve(const char *flag)
{
    if (flag && *flag)
        return xstrdup(flag);
    const char *home = getenv("PIER_HOME");
    if (home && *home)
        return xstrdup(home);
    if (geteuid() == 0)
        return xstrdup("/var/lib/pier");
    struct buf b = BUF_INIT;
    const char *h = getenv("HOME");
    buf_printf(&b, "%s/.local/share/pier", h && *h ? h : ".");
    return buf_detach(&b);
}

void cluster_state_free(struct cluster_state *cs)
{
    free(cs->name);
    free(cs->domain);
    free(cs->listen_ip);
    free(cs->stack);
    free(cs->host_id);
    free(cs->store_urls);
    free(cs->joined);
    memset(cs, 0, sizeof(*cs));
}

static char *dup_field(json_t *o, const char *f)
{
    const char *s = json_string_value(json_object_get(o, f));
    return s ? xstrdup(s) : NULL;
}

static int port_field(json_t *ports, const char *f)
{
    json_t *v = json_object_get(ports, f);
    return json_is_integer(v) ? (int)json_integer_value(v) : -1;
}

int cluster_state_load(const char *state, struct cluster_state *cs, struct pier_err *err)
{
    memset(cs, 0, sizeof(*cs));
    cleanup_buf struct buf path = BUF_INIT, text = BUF_INIT;
    buf_printf(&path, "%s/cluster.json", state);
    cleanup_close int fd = open(path.p, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? err_set(err, PIER_ENOTFOUND, "%s does not exist", path.p)
                               : err_set(err, -errno, "%s: %s", path.p, strerror(errno));
    int rc = fs_read_fd(fd, &text, 1 << 16);
    if (rc < 0)
        return err_set(err, PIER_EINVAL, "%s: cannot read it: %s", path.p, strerror(-rc));
    cleanup_json json_t *root = NULL;
    if (jsonx_parse_object(text.p ? text.p : "", text.len, &root, err) < 0)
        return err_wrap(err, PIER_EINVAL, "%s", path.p);
    json_t *ports = json_object_get(root, "ports");
    const char *jobs = json_string_value(json_object_get(ports, "jobs"));
    cs->name = dup_field(root, "name");
    cs->domain = dup_field(root, "domain");
    cs->listen_ip = dup_field(root, "listen_ip");
    cs->stack = dup_field(root, "stack");
    cs->host_id = dup_field(root, "host_id");
    cs->store = port_field(ports, "store");
    cs->host = port_field(ports, "host");
    cs->http = port_field(ports, "http");
    cs->ssh = port_field(ports, "ssh");
    cs->https = port_field(ports, "https");
    if (cs->https < 0)
        cs->https = 0; /* written before TLS: `pier up` adds it */
    cs->store_urls = dup_field(json_object_get(root, "store"), "urls");
    cs->joined = dup_field(root, "joined");
    if (!cs->name || !cs->domain || !cs->listen_ip || cs->store <= 0 || cs->host <= 0 ||
        cs->http <= 0 || cs->ssh <= 0 || !jobs ||
        sscanf(jobs, "%d-%d", &cs->jobs_lo, &cs->jobs_hi) != 2) {
        cluster_state_free(cs);
        return err_set(err, PIER_EINVAL,
                       "%s lacks name, domain, listen_ip or ports; remove it (and the state "
                       "dir) to make a new cluster",
                       path.p);
    }
    return 0;
}

int cluster_state_save(const char *state, const struct cluster_state *cs, struct pier_err *err)
{
    char jobs[32];
    snprintf(jobs, sizeof(jobs), "%d-%d", cs->jobs_lo, cs->jobs_hi);
    cleanup_json json_t *root =
        json_pack("{s:i,s:s,s:s,s:s,s:{s:i,s:i,s:i,s:i,s:s}}", "version", 1, "name", cs->name,
                  "domain", cs->domain, "listen_ip", cs->listen_ip, "ports", "store", cs->store,
                  "host", cs->host, "http", cs->http, "ssh", cs->ssh, "jobs", jobs);
    if (cs->stack)
        json_object_set_new(root, "stack", json_string(cs->stack));
    if (cs->host_id)
        json_object_set_new(root, "host_id", json_string(cs->host_id));
    if (cs->https > 0)
        json_object_set_new(json_object_get(root, "ports"), "https", json_integer(cs->https));
    if (cs->joined)
        json_object_set_new(root, "joined", json_string(cs->joined));
    if (cs->store_urls)
        json_object_set_new(root, "store",
                            json_pack("{s:s,s:b}", "urls", cs->store_urls, "external", 1));
    cleanup_free char *text = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    cleanup_buf struct buf path = BUF_INIT, body = BUF_INIT;
    buf_printf(&path, "%s/cluster.json", state);
    buf_printf(&body, "%s\n", text);
    return fs_write_atomic(path.p, body.p, body.len, 0600, true, err);
}

bool proc_alive(pid_t pid)
{
    char path[64], st[512];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    cleanup_close int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    ssize_t n = read(fd, st, sizeof(st) - 1);
    if (n <= 0)
        return false;
    st[n] = '\0';
    const char *p = strrchr(st, ')');
    return p && p[1] == ' ' && p[2] != 'Z' && p[2] != 'X';
}

static pid_t read_pid_file(const char *path)
{
    FILE *f = fopen(path, "re");
    if (!f)
        return 0;
    long v = 0;
    if (fscanf(f, "%ld", &v) != 1)
        v = 0;
    fclose(f);
    return v > 1 && v < (1L << 22) ? (pid_t)v : 0;
}

/* Whether pid runs pierd NAME with data_dir among its arguments. */
static bool is_our_pierd(pid_t pid, const struct pierd_daemon *d)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/cmdline", (int)pid);
    cleanup_close int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || !proc_alive(pid))
        return false;
    cleanup_buf struct buf b = BUF_INIT;
    if (fs_read_fd(fd, &b, 1 << 16) < 0 || b.len == 0)
        return false;
    buf_putc(&b, '\0');
    const char *args[4096];
    size_t n = 0;
    for (size_t off = 0; off < b.len - 1 && n < 4096; off += strlen(b.p + off) + 1)
        args[n++] = b.p + off;
    if (n < 2)
        return false;
    const char *base = strrchr(args[0], '/');
    base = base ? base + 1 : args[0];
    if (strcmp(base, "pierd") != 0 || strcmp(args[1], d->name) != 0)
        return false;
    for (size_t i = 2; i < n; i++)
        if (strcmp(args[i], d->data_dir) == 0)
            return true;
    return false;
}

static void pid_path(struct buf *out, const struct pierd_daemon *d, const char *ext)
{
    buf_printf(out, "%s/%s.%s", d->state, d->name, ext);
}

pid_t pierd_daemon_running(const struct pierd_daemon *d)
{
    cleanup_buf struct buf p = BUF_INIT;
    pid_path(&p, d, "pid");
    pid_t pid = read_pid_file(p.p);
    return pid && is_our_pierd(pid, d) ? pid : 0;
}

bool status_answers(const char *url, long timeout_ms)
{
    cleanup_buf struct buf u = BUF_INIT;
    buf_printf(&u, "%s/.well-known/status", url);
    struct httpc *h = httpc_new();
    struct httpc_req req = {.url = u.p, .timeout_ms = timeout_ms, .connect_timeout_ms = timeout_ms};
    struct httpc_resp resp = {0};
    int rc = httpc_do(h, &req, &resp, NULL);
    bool ok = rc == 0 && resp.status == 200;
    httpc_resp_release(&resp);
    httpc_free(h);
    return ok;
}

/* The grandchild: its log as stdout and stderr, a fresh signal state, then
 * pierd. Never returns. */
static void exec_daemon(const char *log, const char *pierd, char *const *argv, char *const *env)
{
    int nul = open("/dev/null", O_RDWR | O_CLOEXEC);
    int out = open(log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (nul < 0 || out < 0 || dup2(nul, 0) < 0 || dup2(out, 1) < 0 || dup2(out, 2) < 0)
        _exit(126);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    for (int s = 1; s < NSIG; s++)
        if (s != SIGKILL && s != SIGSTOP)
            signal(s, SIG_DFL);
    if (chdir("/") < 0)
        _exit(126);
    execve(pierd, argv, env);
    dprintf(2, "pier up: cannot run %s: %s\n", pierd, strerror(errno));
    _exit(127);
}

/* Forks twice (the daemon in a session of its own, no child of ours);
 * returns the daemon's pid or -errno. */
static pid_t spawn_detached(const char *log, const char *pierd, char *const *argv, char *const *env)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0)
        return -errno;
    fflush(NULL);
    pid_t mid = fork();
    if (mid < 0) {
        int e = -errno;
        close(p[0]);
        close(p[1]);
        return e;
    }
    if (mid == 0) {
        close(p[0]);
        setsid();
        pid_t g = fork();
        if (g == 0) {
            close(p[1]);
            exec_daemon(log, pierd, argv, env);
        }
        ssize_t w = write(p[1], &g, sizeof(g));
        _exit(w == sizeof(g) && g > 0 ? 0 : 1);
    }
    close(p[1]);
    pid_t g = -1;
    ssize_t n;
    do
        n = read(p[0], &g, sizeof(g));
    while (n < 0 && errno == EINTR);
    close(p[0]);
    while (waitpid(mid, NULL, 0) < 0 && errno == EINTR)
        ;
    return n == sizeof(g) && g > 0 ? g : -ECHILD;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int pierd_daemon_start(const struct pierd_daemon *d, const char *pierd, char *const *argv,
                       char *const *env, int timeout_s, pid_t *pid, struct pier_err *err)
{
    cleanup_buf struct buf log = BUF_INIT, pidf = BUF_INIT, text = BUF_INIT;
    pid_path(&log, d, "log");
    pid_path(&pidf, d, "pid");
    pid_t g = spawn_detached(log.p, pierd, argv, env);
    if (g < 0)
        return err_set(err, g, "%s: cannot start %s: %s", d->name, pierd, strerror(-g));
    *pid = g;
    buf_printf(&text, "%d\n", (int)g);
    int rc = fs_write_atomic(pidf.p, text.p, text.len, 0644, false, err);
    if (rc < 0) {
        kill(g, SIGTERM);
        return rc;
    }
    ui_wait_start("%s: waiting for %s/.well-known/status (pid %d)", d->name, d->url, (int)g);
    double deadline = now_s() + timeout_s;
    bool up = false;
    while (proc_alive(g) && now_s() < deadline) {
        if (status_answers(d->url, 1000) && is_our_pierd(g, d)) {
            up = true;
            break;
        }
        ui_wait_tick();
        sleep_ms(100);
    }
    if (up) {
        ui_wait_end("up");
        return 0;
    }
    bool alive = proc_alive(g);
    ui_wait_end(alive ? "no answer" : "it ended");
    if (alive) {
        kill(g, SIGTERM);
        for (int i = 0; i < 100 && proc_alive(g); i++)
            sleep_ms(100);
        if (proc_alive(g))
            kill(g, SIGKILL);
    }
    unlink(pidf.p);
    if (alive)
        return err_set(err, PIER_ETIMEOUT,
                       "%s did not answer at %s within %d s; stopped it (pid %d); see %s", d->name,
                       d->url, timeout_s, (int)g, log.p);
    return err_set(err, PIER_EUNAVAIL, "%s did not start; see %s", d->name, log.p);
}

int pierd_daemon_stop(const struct pierd_daemon *d, int grace_s, pid_t *pid)
{
    cleanup_buf struct buf pidf = BUF_INIT;
    pid_path(&pidf, d, "pid");
    pid_t p = pierd_daemon_running(d);
    *pid = p;
    if (!p) {
        unlink(pidf.p);
        return 0;
    }
    kill(p, SIGTERM);
    for (int i = 0; i < grace_s * 10 && proc_alive(p); i++)
        sleep_ms(100);
    int rc = 1;
    if (proc_alive(p)) {
        kill(p, SIGKILL);
        for (int i = 0; i < 50 && proc_alive(p); i++)
            sleep_ms(100);
        rc = 2;
    }
    unlink(pidf.p);
    return rc;
}
