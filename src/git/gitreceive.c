/* gitreceive: `pierd gitreceive`, the daemon's entry (gitreceive.h): flags,
 * the directories, the HTTP and SSH servers, discovery, and a stop on
 * SIGTERM that lets running pushes finish. */
#include "git/gitreceive.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "git/http.h"
#include "lib/buf.h"
#include "lib/cleanup.h"
#include "lib/daemon.h"
#include "lib/discover.h"
#include "lib/fs.h"
#include "lib/log.h"
#include "lib/store.h"

#define COMP "gitreceive"
#define DEFAULT_HTTP "127.0.0.1:1700"
#define DEFAULT_SSH "127.0.0.1:2222"

struct flags {
    const char *dir, *controller, *blobstore, *http, *ssh, *ssh_key, *build_timeout;
    struct daemon_flags common;
};

/* Parses the flags (exit status 2 on a bad one, with a message); 1: --help. */
static int parse_flags(int argc, char **argv, struct flags *f)
{
    memset(f, 0, sizeof(*f));
    f->dir = getenv("PIER_GIT_DIR");
    f->controller = getenv("PIER_CONTROLLER");
    f->blobstore = getenv("PIER_BLOBSTORE");
    f->build_timeout = getenv("PIER_BUILD_TIMEOUT");
    f->ssh = DEFAULT_SSH;
    const struct daemon_opt opts[] = {
        {"dir", "DIR", "repositories, locks and the SSH host key (env PIER_GIT_DIR)", &f->dir},
        {"controller", "URL",
         "the controller (env PIER_CONTROLLER; with --store, default: discovery)", &f->controller},
        {"blobstore", "URL",
         "the blobstore, for sources and slugs (env PIER_BLOBSTORE; with --store, default: "
         "discovery)",
         &f->blobstore},
        {"http", "ADDR",
         "smart HTTP: where it listens (default --listen: " DEFAULT_HTTP ", in a job "
         "EXTERNAL_IP:PORT)",
         &f->http},
        {"ssh", "ADDR", "SSH: where it listens, or \"off\" (default " DEFAULT_SSH ")", &f->ssh},
        {"ssh-host-key", "FILE", "the SSH host key (default DIR/ssh_host_ed25519_key, made)",
         &f->ssh_key},
        {"build-timeout", "SECONDS", "the longest a build may run (env PIER_BUILD_TIMEOUT, 1800)",
         &f->build_timeout},
        {NULL, NULL, NULL, NULL},
    };
    const struct daemon_spec spec = {
        .sub = "gitreceive",
        .summary = "The git receiver: `git push` over SSH and smart HTTP into a bare repository "
                   "per app,\nwhose pre-receive hook builds and deploys main/master.",
        .default_listen = DEFAULT_HTTP,
        .opts = opts,
        .uses = DAEMON_USES_LISTEN | DAEMON_USES_STORE | DAEMON_USES_KEY,
    };
    struct pier_err err = {0};
    int rc = daemon_parse(&spec, argc, argv, &f->common, &err);
    if (rc < 0)
        fprintf(stderr, "pierd gitreceive: %s\n", err.msg);
    if (rc != 0)
        return rc;
    /* With a store, a controller or blobstore not given is found in
     * discovery at each push (peers.c). */
    bool store = f->common.store && *f->common.store;
    if (f->controller && !*f->controller)
        f->controller = NULL;
    if (f->blobstore && !*f->blobstore)
        f->blobstore = NULL;
    const char *missing = !f->dir || !*f->dir                 ? "--dir DIR (or PIER_GIT_DIR)"
                          : !f->common.key || !*f->common.key ? "--key KEY (or PIER_KEY)"
                          : !f->controller && !store ? "--controller URL (or --store URL, to find "
                                                       "it in discovery)"
                          : !f->blobstore && !store  ? "--blobstore URL (or --store URL, to find "
                                                       "it in discovery)"
                                                     : NULL;
    if (missing) {
        fprintf(stderr, "pierd gitreceive: needs %s (see pierd gitreceive --help)\n", missing);
        return PIER_EINVAL;
    }
    if (!f->http)
        f->http = f->common.listen;
    return 0;
}

/* A copy of url without trailing slashes. */
static char *trim_url(const char *url)
{
    char *s = xstrdup(url);
    size_t n = strlen(s);
    while (n > 0 && s[n - 1] == '/')
        s[--n] = '\0';
    return s;
}

static int mkdir_one(const char *path, mode_t mode, struct pier_err *err)
{
    if (mkdir(path, mode) < 0 && errno != EEXIST)
        return err_set(err, -errno, "cannot make %s: %s", path, strerror(errno));
    return 0;
}

/* Makes DIR and its parts; *abs gets DIR's absolute path. Leftovers of a
 * previous run in DIR/tmp (half-made repositories) are removed. */
static int prepare_dir(const char *dir, char **abs, struct pier_err *err)
{
    int rc = mkdir_one(dir, 0700, err);
    if (rc < 0)
        return rc;
    char *real = realpath(dir, NULL);
    if (!real)
        return err_set(err, -errno, "%s: %s", dir, strerror(errno));
    const char *parts[] = {"repos", "locks", "tmp"};
    for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]) && rc == 0; i++) {
        cleanup_buf struct buf p = BUF_INIT;
        buf_printf(&p, "%s/%s", real, parts[i]);
        if (i == 2)
            fs_rm_tree(p.p);
        rc = mkdir_one(p.p, 0700, err);
    }
    if (rc < 0) {
        free(real);
        return rc;
    }
    *abs = real;
    return 0;
}

static char *self_path(void)
{
    char buf[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
    if (n <= 0)
        return NULL;
    buf[n] = '\0';
    return xstrdup(buf);
}

/* Where SSH is reached, for discovery: the host it listens on, or, when
 * that is every address (0.0.0.0, ::), the host HTTP is reached at (which
 * httpd_reach_addr chose the same way); and the port it is bound to. */
static char *ssh_reach_addr(const struct gitrecv_ssh *ssh, const char *http_addr)
{
    char host[256];
    int port = gitrecv_ssh_local(ssh, host, sizeof(host));
    bool any = !host[0] || strcmp(host, "0.0.0.0") == 0 || strcmp(host, "::") == 0;
    struct buf b = BUF_INIT;
    if (any) {
        const char *colon = strrchr(http_addr, ':');
        buf_printf(&b, "%.*s:%d", colon ? (int)(colon - http_addr) : 0, http_addr, port);
    } else if (strchr(host, ':')) {
        buf_printf(&b, "[%s]:%d", host, port);
    } else {
        buf_printf(&b, "%s:%d", host, port);
    }
    return buf_detach(&b);
}

struct drain {
    struct gitrecv_http *http;
    int timeout_ms;
    bool ok;
};

static void *drain_thread(void *arg)
{
    struct drain *d = arg;
    d->ok = gitrecv_http_drain(d->http, d->timeout_ms);
    return NULL;
}

/* SIGTERM: no new connections on either side; running pushes may end. */
static void shut_down(struct gitrecv_http *http, struct gitrecv_ssh *ssh, int timeout_ms)
{
    struct drain d = {http, timeout_ms, false};
    pthread_t t;
    bool threaded = pthread_create(&t, NULL, drain_thread, &d) == 0;
    if (!threaded)
        drain_thread(&d);
    gitrecv_ssh_stop(ssh);
    if (threaded)
        pthread_join(t, NULL);
    if (!d.ok)
        log_warn(COMP, "requests still running at the drain timeout, cut", "timeout_ms=%d",
                 timeout_ms);
    gitrecv_http_stop(http);
}

static int serve(struct flags *f, struct gitrecv *g)
{
    struct pier_err err = {0};
    struct gitrecv_http *http = NULL;
    struct gitrecv_ssh *ssh = NULL;
    struct discover_reg *reg = NULL;
    cleanup_buf struct buf key_file = BUF_INIT;
    if (f->ssh_key)
        buf_puts(&key_file, f->ssh_key);
    else
        buf_printf(&key_file, "%s/ssh_host_ed25519_key", g->dir);
    bool ssh_on = strcmp(f->ssh, "off") != 0;
    /* SSH first: an HTTP answer is what tells the caller it is ready. */
    int rc = ssh_on ? gitrecv_ssh_start(g, f->ssh, key_file.p, &ssh, &err) : 0;
    if (rc == 0)
        rc = gitrecv_http_start(g, f->http, &http, &err);
    cleanup_free char *ssh_addr = ssh && http ? ssh_reach_addr(ssh, gitrecv_http_addr(http)) : NULL;
    if (rc == 0 && g->discovery) {
        json_t *meta = json_pack("{s:s}", "ssh", ssh_addr ? ssh_addr : "off");
        const struct discover_reg_opts ro = {.proto = "http", .meta = meta};
        rc =
            discover_register(g->discovery, "gitreceive", gitrecv_http_addr(http), &ro, &reg, &err);
        json_decref(meta);
    }
    if (rc < 0) {
        fprintf(stderr, "pierd gitreceive: %s\n", err.msg);
        discover_unregister(reg);
        gitrecv_ssh_stop(ssh);
        gitrecv_http_stop(http);
        return 1;
    }
    log_info(COMP, "listening", "http=%s ssh=%s dir=%s controller=%s blobstore=%s",
             gitrecv_http_addr(http), ssh_addr ? ssh_addr : "off", g->dir,
             g->controller ? g->controller : "discovery",
             g->blobstore ? g->blobstore : "discovery");
    int sig = daemon_wait();
    int timeout_ms = (g->build_timeout + GITRECV_DRAIN_EXTRA_S) * 1000;
    log_info(COMP, "stopping: running pushes may finish", "signal=%d timeout_ms=%d", sig,
             timeout_ms);
    discover_unregister(reg);
    shut_down(http, ssh, timeout_ms);
    log_info(COMP, "stopped", "signal=%d", sig);
    return 0;
}

int gitreceive_main(int argc, char **argv)
{
    if (argc >= 1 && strcmp(argv[0], "hook") == 0)
        return gitrecv_hook_main(argc - 1, argv + 1);
    struct flags f;
    int rc = parse_flags(argc, argv, &f);
    if (rc != 0)
        return rc < 0 ? 2 : 0;
    int timeout = 0;
    if (gitrecv_parse_timeout(f.build_timeout, &timeout) < 0) {
        fprintf(stderr, "pierd gitreceive: build timeout \"%s\" is not 1 to %d seconds\n",
                f.build_timeout, GITRECV_MAX_BUILD_TIMEOUT);
        return 2;
    }
    struct pier_err err = {0};
    cleanup_free char *dir = NULL;
    cleanup_free char *pierd = self_path();
    cleanup_free char *controller = f.controller ? trim_url(f.controller) : NULL;
    cleanup_free char *blobstore = f.blobstore ? trim_url(f.blobstore) : NULL;
    if (!pierd) {
        fprintf(stderr, "pierd gitreceive: cannot read /proc/self/exe: %s\n", strerror(errno));
        return 1;
    }
    if (prepare_dir(f.dir, &dir, &err) < 0) {
        fprintf(stderr, "pierd gitreceive: %s\n", err.msg);
        return 1;
    }
    struct gitrecv g = {
        .dir = dir,
        .controller = controller,
        .key = f.common.key,
        .blobstore = blobstore,
        .store = f.common.store && *f.common.store ? f.common.store : NULL,
        .pierd = pierd,
        .build_timeout = timeout,
    };
    if (g.store && store_open(g.store, &g.discovery, &err) < 0) {
        fprintf(stderr, "pierd gitreceive: %s\n", err.msg);
        return 1;
    }
    rc = serve(&f, &g);
    store_close(g.discovery);
    gitrecv_peers_cleanup();
    return rc;
}
