/* pier up: a single-host cluster on this machine from a state directory.
 *
 * The store and the host agent run as daemons of the state dir
 * (daemons.h); everything else (controller, discoverd, blobstore, router,
 * git receiver, scheduler) runs as jobs on the agent, started and recorded
 * as system apps by `pierd bootstrap`. Run again, every step finds its work
 * done; after `pier down` (or a crash of everything) it brings the same
 * cluster back. With --store URLS the store is an external one (no `pierd
 * store`); with --join the state dir is one more host of a running cluster
 * (join.c). The CLI config gets the https URLs and the cluster CA the
 * bootstrap made (STATE/ca/ca.crt), pinned. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "cli/cli.h"
#include "cli/config.h"
#include "cli/daemons.h"
#include "cli/ui.h"
#include "cli/up.h"
#include "lib/base64.h"
#include "lib/buf.h"
#include "lib/cleanup.h"
#include "lib/fs.h"
#include "lib/hex.h"
#include "lib/subproc.h"

extern char **environ;

static int parse_up_flags(int argc, char **argv, struct up_flags *f)
{
    static const char *names[] = {"--state-dir", "--name", "--domain", "--port-base", "--listen-ip",
                                  "--stack",     "--join", "--key",    "--ca",        "--store"};
    const char **vals[] = {&f->state, &f->name, &f->domain, &f->port_base, &f->listen_ip,
                           &f->stack, &f->join, &f->key,    &f->ca,        &f->store};
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--no-config") == 0) {
            f->no_config = true;
            continue;
        }
        int got = 0;
        for (size_t k = 0; k < sizeof(names) / sizeof(names[0]) && !got; k++) {
            got = ui_flag_value(argc, argv, &i, names[k], vals[k]);
            if (got < 0)
                return ui_usage("up", "%s needs a value", names[k]);
        }
        if (!got)
            return ui_usage("up", "unknown flag \"%s\"", argv[i]);
    }
    if (!f->join && (f->key || f->ca))
        return ui_usage("up", "%s goes with --join URL", f->key ? "--key" : "--ca");
    if (f->join && (f->domain || f->store || f->name || f->no_config))
        return ui_usage("up", "--join takes the cluster's domain and store from it: drop --domain, "
                              "--store, --name and --no-config");
    if (f->join && strncmp(f->join, "http://", 7) != 0 && strncmp(f->join, "https://", 8) != 0)
        return ui_usage("up", "--join \"%s\": want the controller's URL, https://controller.DOMAIN",
                        f->join);
    if (f->join && !f->key && getenv("PIER_KEY") && *getenv("PIER_KEY"))
        f->key = getenv("PIER_KEY"); /* out of sight of ps, unlike --key */
    if (f->join && !f->key)
        return ui_usage("up", "--join needs the cluster key (STATE/key on its first host): "
                              "PIER_KEY in the environment, or --key KEY");
    /* The key goes to the controller as Basic auth: never in the clear
     * off this machine. */
    if (f->join && strncmp(f->join, "http://", 7) == 0 &&
        strncmp(f->join, "http://127.", 11) != 0 && strncmp(f->join, "http://localhost", 16) != 0 &&
        !strstr(f->join, ".localhost"))
        return ui_usage("up",
                        "--join %s: the key would cross the network in the clear; use "
                        "https://controller.DOMAIN with --ca FILE",
                        f->join);
    if (f->key && (!up_key_ok(f->key) || strlen(f->key) >= 256))
        return ui_usage("up", "--key: one word of letters, digits, '.', '_' or '-'");
    return 0;
}

/* Whether s is a list of http:// or https:// URLs separated by commas. */
static bool store_urls_ok(const char *s)
{
    while (*s) {
        size_t n = strcspn(s, ",");
        bool http = strncmp(s, "http://", 7) == 0 && n > 7;
        bool https = strncmp(s, "https://", 8) == 0 && n > 8;
        if ((!http && !https) || memchr(s, ' ', n))
            return false;
        s += n;
        if (*s == ',' && !*++s)
            return false;
    }
    return true;
}

static bool domain_ok(const char *d)
{
    if (!*d || strlen(d) > 200 || *d == '.' || *d == '-' || d[strlen(d) - 1] == '.')
        return false;
    for (const char *p = d; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-' ||
              (*p == '.' && p[1] != '.')))
            return false;
    return true;
}

int up_cluster_from_flags(const struct up_flags *f, struct cluster_state *cs)
{
    memset(cs, 0, sizeof(*cs));
    const char *name = f->name ? f->name : "default";
    if (!config_name_ok(name))
        return ui_usage("up",
                        "--name \"%s\" may hold only letters, digits, '-', '_' and '.' "
                        "(at most 63)",
                        name);
    cleanup_buf struct buf dom = BUF_INIT;
    if (f->domain)
        buf_puts(&dom, f->domain);
    else if (strcmp(name, "default") == 0)
        buf_puts(&dom, "pier.localhost");
    else
        buf_printf(&dom, "%s.localhost", name);
    if (!domain_ok(dom.p))
        return ui_usage("up",
                        "--domain \"%s\" is not a domain name (lower-case letters, "
                        "digits, '-' and '.')",
                        dom.p);
    const char *ip = f->listen_ip ? f->listen_ip : "127.0.0.1";
    struct in_addr a;
    if (inet_pton(AF_INET, ip, &a) != 1)
        return ui_usage("up", "--listen-ip \"%s\" is not an IPv4 address", ip);
    cs->store = 7001, cs->host = 1113, cs->http = 80, cs->https = 443, cs->ssh = 2222;
    cs->jobs_lo = 20000, cs->jobs_hi = 20999;
    if (f->port_base) {
        char *end;
        errno = 0;
        long b = strtol(f->port_base, &end, 10);
        if (errno || end == f->port_base || *end || b < 1 || b > 65535 - 999)
            return ui_usage("up", "--port-base \"%s\" must be a number from 1 to 64536",
                            f->port_base);
        int n = (int)b;
        cs->store = n, cs->host = n + 1, cs->http = n + 2, cs->https = n + 3, cs->ssh = n + 4;
        cs->jobs_lo = n + 100, cs->jobs_hi = n + 999;
    }
    if (f->stack) {
        char real[PATH_MAX];
        struct stat st;
        if (!realpath(f->stack, real) || stat(real, &st) < 0 || !S_ISDIR(st.st_mode))
            return ui_usage("up",
                            "--stack \"%s\" is not a directory (make one with 'pier stack "
                            "build DIR')",
                            f->stack);
        cs->stack = xstrdup(real);
    }
    if (f->store) {
        if (!store_urls_ok(f->store))
            return ui_usage("up", "--store \"%s\" is not a list of http:// URLs separated by ','",
                            f->store);
        cs->store_urls = xstrdup(f->store);
    }
    cs->name = xstrdup(name);
    cs->domain = buf_detach(&dom);
    cs->listen_ip = xstrdup(ip);
    return 0;
}

/* Refuses a flag that disagrees with the recorded cluster, naming both. */
static int check_same(const struct up *u, const struct up_flags *f, const struct cluster_state *w)
{
    const struct cluster_state *c = &u->cs;
    struct {
        const char *flag, *what;
        bool given, differs;
        char want[160], have[160];
    } d[6] = {{"--name", "name", f->name != NULL, false, "", ""},
              {"--domain", "domain", f->domain != NULL, false, "", ""},
              {"--listen-ip", "listen IP", f->listen_ip != NULL, false, "", ""},
              {"--stack", "stack", f->stack != NULL, false, "", ""},
              {"--store", "store", f->store != NULL, false, "", ""},
              {"--port-base", "ports", f->port_base != NULL, false, "", ""}};
    const char *pairs[5][2] = {{w->name, c->name},
                               {w->domain, c->domain},
                               {w->listen_ip, c->listen_ip},
                               {w->stack, c->stack},
                               {w->store_urls, c->store_urls}};
    for (int i = 0; i < 5; i++) {
        d[i].differs = !pairs[i][1] || !pairs[i][0] || strcmp(pairs[i][0], pairs[i][1]) != 0;
        snprintf(d[i].want, sizeof(d[i].want), "%s", pairs[i][0] ? pairs[i][0] : "(none)");
        snprintf(d[i].have, sizeof(d[i].have), "%s", pairs[i][1] ? pairs[i][1] : "(none)");
    }
    d[5].differs = w->store != c->store || w->host != c->host || w->http != c->http ||
                   w->https != c->https || w->ssh != c->ssh || w->jobs_lo != c->jobs_lo ||
                   w->jobs_hi != c->jobs_hi;
    snprintf(d[5].want, sizeof(d[5].want), "%s", f->port_base ? f->port_base : "");
    snprintf(d[5].have, sizeof(d[5].have),
             "store %d, host %d, http %d, https %d, ssh %d, jobs %d-%d", c->store, c->host, c->http,
             c->https, c->ssh, c->jobs_lo, c->jobs_hi);
    for (int i = 0; i < 6; i++) {
        if (!d[i].given || !d[i].differs)
            continue;
        return ui_fail("drop the flag to use the cluster as it is, or 'pier down' and remove the "
                       "state dir to make a new one (or use another --state-dir)",
                       "%s %s: the cluster in %s has %s %s (%s/cluster.json)", d[i].flag, d[i].want,
                       u->state, d[i].what, d[i].have, u->state);
    }
    return 0;
}

bool up_key_ok(const char *k)
{
    if (!*k)
        return false;
    for (const char *p = k; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '.' || *p == '_' || *p == '-'))
            return false;
    return true;
}

int up_read_key(struct up *u, const char *path)
{
    cleanup_close int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0 && errno == ENOENT)
        return 1;
    cleanup_buf struct buf b = BUF_INIT;
    if (fd < 0 || fs_read_fd(fd, &b, 4096) < 0) {
        ui_fail(NULL, "%s: cannot read it: %s", path, strerror(errno));
        return -1;
    }
    buf_putc(&b, '\0');
    char *nl = strchr(b.p, '\n');
    if (nl && nl[1] == '\0')
        *nl = '\0';
    if (!up_key_ok(b.p) || strlen(b.p) >= sizeof(u->key)) {
        ui_fail(NULL,
                "%s holds no key (one line of letters, digits, '.', '_' or '-'); remove it to "
                "make a new one",
                path);
        return -1;
    }
    snprintf(u->key, sizeof(u->key), "%s", b.p);
    return 0;
}

/* The cluster key, made once: 16 random bytes in hex, mode 0600. A
 * concurrent `pier up` that made one first wins (link never replaces). */
static int make_key(struct up *u)
{
    cleanup_buf struct buf path = BUF_INIT, tmp = BUF_INIT;
    buf_printf(&path, "%s/key", u->state);
    int rc = up_read_key(u, path.p);
    if (rc <= 0) {
        if (rc == 0 && chmod(path.p, 0600) < 0)
            return ui_fail(NULL, "%s: %s", path.p, strerror(errno));
        return rc;
    }
    unsigned char rnd[16];
    if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd))
        return ui_fail(NULL, "no random bytes for the cluster key: %s", strerror(errno));
    char hex[33];
    hex_encode(rnd, sizeof(rnd), hex);
    buf_printf(&tmp, "%s/key.XXXXXX", u->state);
    cleanup_close int fd = mkostemp(tmp.p, O_CLOEXEC);
    if (fd < 0)
        return ui_fail(NULL, "%s: %s", tmp.p, strerror(errno));
    rc = dprintf(fd, "%s\n", hex) < 0 || fsync(fd) < 0 ? -errno : 0;
    if (rc == 0 && link(tmp.p, path.p) < 0 && errno != EEXIST)
        rc = -errno;
    unlink(tmp.p);
    if (rc < 0)
        return ui_fail(NULL, "%s: %s", path.p, strerror(-rc));
    rc = up_read_key(u, path.p);
    return rc == 1 ? ui_fail(NULL, "%s vanished", path.p) : rc;
}

/* The directory of this executable, and pierd next to it (else $PIER_PIERD). */
static int find_pierd(struct up *u)
{
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n <= 0)
        return ui_fail(NULL, "cannot read /proc/self/exe: %s", strerror(errno));
    self[n] = '\0';
    char *slash = strrchr(self, '/');
    *slash = '\0';
    u->bin_dir = xstrdup(self);
    struct buf p = BUF_INIT;
    buf_printf(&p, "%s/pierd", self);
    if (access(p.p, X_OK) == 0) {
        u->pierd = buf_detach(&p);
        return 0;
    }
    const char *env = getenv("PIER_PIERD");
    if (env && *env && access(env, X_OK) == 0) {
        buf_free(&p);
        u->pierd = xstrdup(env);
        return 0;
    }
    int rc =
        ui_fail("install pierd next to pier, or set PIER_PIERD to its path", "no pierd at %s%s%s",
                p.p, env && *env ? " nor at " : "", env && *env ? env : "");
    buf_free(&p);
    return rc;
}

/* Where the bootstrap manifest is (a new string), or NULL after saying so. */
static char *find_manifest(const struct up *u)
{
    const char *env = getenv("PIER_MANIFEST");
    if (env && *env)
        return xstrdup(env);
    /* A build folder in the source tree, then an installed pier (meson
     * installs it to DATADIR/pier/bootstrap), then Debian's prefix. */
    const char *rel[] = {"..", "../share/pier"};
    struct buf p = BUF_INIT;
    for (size_t i = 0; i < sizeof(rel) / sizeof(*rel); i++) {
        buf_reset(&p);
        buf_printf(&p, "%s/%s/bootstrap/manifest.json", u->bin_dir, rel[i]);
        if (access(p.p, R_OK) == 0)
            return buf_detach(&p);
    }
    buf_free(&p);
    if (access("/usr/share/pier/bootstrap/manifest.json", R_OK) == 0)
        return xstrdup("/usr/share/pier/bootstrap/manifest.json");
    ui_fail("set PIER_MANIFEST to the bootstrap manifest (bootstrap/manifest.json in pier's "
            "source)",
            "no bootstrap manifest next to %s (../bootstrap/ or ../share/pier/bootstrap/) nor "
            "in /usr/share/pier/bootstrap/",
            u->bin_dir);
    return NULL;
}

/* This process's environment without PIER_KEY, plus PIER_KEY=key: the
 * key never goes on a command line, which every local user can read. */
char **up_env_with_key(const char *key, struct buf *keyvar)
{
    size_t n = 0;
    for (char **e = environ; *e; e++)
        n++;
    char **env = xcalloc(n + 2, sizeof(char *));
    size_t k = 0;
    for (char **e = environ; *e; e++)
        if (strncmp(*e, "PIER_KEY=", 9) != 0)
            env[k++] = *e;
    buf_printf(keyvar, "PIER_KEY=%s", key);
    env[k++] = keyvar->p;
    return env;
}

static void print_log_tail(const char *state, const char *name)
{
    cleanup_buf struct buf path = BUF_INIT, text = BUF_INIT;
    buf_printf(&path, "%s/%s.log", state, name);
    cleanup_close int fd = open(path.p, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fs_read_fd(fd, &text, 8 << 20) < 0 || text.len == 0)
        return;
    size_t at = text.len, lines = 0;
    while (at > 0 && lines <= 20)
        if (text.p[--at] == '\n')
            lines++;
    fprintf(stderr, "  the end of %s says:\n", path.p);
    fwrite(text.p + (at ? at + 1 : 0), 1, text.len - (at ? at + 1 : 0), stderr);
}

/* Starts pierd NAME ARGS... unless it runs; says which. */
static int ensure_daemon(struct up *u, const char *name, const char *data_dir, const char *url,
                         char *const *argv, char **env, bool *was_running)
{
    struct pierd_daemon d = {.name = name, .state = u->state, .data_dir = data_dir, .url = url};
    pid_t pid = pierd_daemon_running(&d);
    if (pid) {
        printf("%s: running, pid %d, %s\n", name, (int)pid, url);
        fflush(stdout);
        return 0;
    }
    *was_running = false;
    if (status_answers(url, 1000))
        return ui_fail("stop it, or give this cluster other ports with --port-base N in a new "
                       "--state-dir",
                       "%s: something else already answers on %s", name, url);
    struct pier_err err = {0};
    if (pierd_daemon_start(&d, u->pierd, argv, env, 30, &pid, &err) < 0) {
        ui_fail(NULL, "%s", err.msg);
        print_log_tail(u->state, name);
        return 1;
    }
    printf("%s: started, pid %d, %s\n", name, (int)pid, url);
    fflush(stdout);
    return 0;
}

static int start_store(struct up *u, char **env, bool *all_running)
{
    char listen[64];
    struct cluster_state *c = &u->cs;
    if (c->store_urls) {
        printf("store: external, %s\n", c->store_urls);
        return 0;
    }
    snprintf(listen, sizeof(listen), "%s:%d", c->listen_ip, c->store);
    char *argv[] = {"pierd", "store", "--listen", listen, "--data-dir", u->store_dir.p, NULL};
    return ensure_daemon(u, "store", u->store_dir.p, u->store_url.p, argv, env, all_running);
}

/* Whether the running pid was given "--tags" tags (its command line). */
static bool has_tags(pid_t pid, const char *tags)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/cmdline", (int)pid);
    cleanup_close int fd = open(path, O_RDONLY | O_CLOEXEC);
    cleanup_buf struct buf text = BUF_INIT;
    if (fd < 0 || fs_read_fd(fd, &text, 64 * 1024) < 0)
        return true; /* unknown: left alone */
    buf_putc(&text, '\0');
    for (size_t at = 0; at + 1 < text.len; at += strlen(text.p + at) + 1) {
        size_t next = at + strlen(text.p + at) + 1;
        if (strcmp(text.p + at, "--tags") == 0 && next < text.len)
            return strcmp(text.p + next, tags) == 0;
        if (strncmp(text.p + at, "--tags=", 7) == 0)
            return strcmp(text.p + at + 7, tags) == 0;
    }
    return false;
}

int up_start_host(struct up *u, char **env, bool *all_running)
{
    char listen[64], ports[32];
    struct cluster_state *c = &u->cs;
    snprintf(listen, sizeof(listen), "%s:%d", c->listen_ip, c->host);
    snprintf(ports, sizeof(ports), "%d-%d", c->jobs_lo, c->jobs_hi);
    char *host_argv[16] = {"pierd",        "host",       "--listen",    listen,    "--store",
                           u->store_url.p, "--data-dir", u->host_dir.p, "--ports", ports};
    size_t n = 10;
    if (c->stack) {
        host_argv[n++] = "--stack";
        host_argv[n++] = c->stack;
    }
    if (u->host_tags[0]) {
        host_argv[n++] = "--tags";
        host_argv[n++] = u->host_tags;
        struct pierd_daemon d = {
            .name = "host", .state = u->state, .data_dir = u->host_dir.p, .url = u->host_url};
        pid_t pid = pierd_daemon_running(&d);
        if (pid && !has_tags(pid, u->host_tags)) {
            /* An agent of before the tag: its jobs outlive it. */
            printf("host: restarting it with --tags %s (its jobs keep running)\n", u->host_tags);
            fflush(stdout);
            pierd_daemon_stop(&d, 10, &pid);
        }
    }
    return ensure_daemon(u, "host", u->host_dir.p, u->host_url, host_argv, env, all_running);
}

/* Runs `pierd bootstrap`, its output streaming to ours. */
static int run_bootstrap(struct up *u, char **env)
{
    cleanup_free char *manifest = find_manifest(u);
    if (!manifest)
        return 1;
    struct cluster_state *c = &u->cs;
    char v_domain[300], v_http[80], v_https[80], v_ssh[80], v_cluster[120];
    cleanup_buf struct buf v_store = BUF_INIT;
    snprintf(v_domain, sizeof(v_domain), "DOMAIN=%s", c->domain);
    buf_printf(&v_store, "STORE=%s", u->store_url.p);
    snprintf(v_http, sizeof(v_http), "HTTP_ADDR=%s:%d", c->listen_ip, c->http);
    snprintf(v_https, sizeof(v_https), "HTTPS_ADDR=%s:%d", c->listen_ip, c->https);
    snprintf(v_ssh, sizeof(v_ssh), "SSH_ADDR=%s:%d", c->listen_ip, c->ssh);
    snprintf(v_cluster, sizeof(v_cluster), "CLUSTER=%s", c->name);
    char *argv[] = {u->pierd,     "bootstrap", "--manifest", manifest,  "--store", u->store_url.p,
                    "--host-url", u->host_url, "--data-dir", u->state,  "--var",   v_domain,
                    "--var",      v_store.p,   "--var",      v_http,    "--var",   v_https,
                    "--var",      v_ssh,       "--var",      v_cluster, NULL};
    fflush(stdout);
    struct subproc s = {.argv = argv,
                        .env = env,
                        .in = SUBPROC_DEVNULL,
                        .out = SUBPROC_INHERIT,
                        .err = SUBPROC_INHERIT};
    pid_t pid;
    struct pier_err err = {0};
    if (subproc_start(&s, &pid, &err) < 0)
        return ui_fail(NULL, "%s", err.msg);
    int st = subproc_wait(pid);
    if (st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0)
        return 0;
    return ui_fail("the lines above say which step failed; the agent's log is in the state dir "
                   "(host.log) and each job's under host/jobs/; 'pier up' again retries",
                   "the bootstrap of the system apps failed");
}

/* The base64 of the SHA-256 of the DER of the first certificate in pem
 * (Flynn's `cluster add -p` pin) into out; -1 when pem holds none. */
static int tls_pin(const char *pem, struct buf *out)
{
    static const char begin[] = "-----BEGIN CERTIFICATE-----", end[] = "-----END CERTIFICATE-----";
    const char *b = strstr(pem, begin), *e = b ? strstr(b, end) : NULL;
    if (!e)
        return -1;
    cleanup_buf struct buf armour = BUF_INIT, der = BUF_INIT;
    for (const char *p = b + strlen(begin); p < e; p++)
        if (*p != '\n' && *p != '\r' && *p != ' ' && *p != '\t')
            buf_putc(&armour, *p);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (!armour.len || base64_decode(&der, armour.p, armour.len) < 0 || !der.len ||
        !EVP_Digest(der.p, der.len, md, &n, EVP_sha256(), NULL))
        return -1;
    base64_encode(out, md, n);
    return 0;
}

/* The CA of STATE/ca/ca.crt (made by the bootstrap) into ca and its pin:
 * 1 when there is none (a tree whose bootstrap makes no CA: plain http),
 * 0, or -1 after saying what failed. */
static int read_ca(const struct up *u, struct buf *ca, struct buf *pin)
{
    cleanup_buf struct buf path = BUF_INIT;
    buf_printf(&path, "%s/ca/ca.crt", u->state);
    cleanup_close int fd = open(path.p, O_RDONLY | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT)
        return 1;
    int rc = fd < 0 ? -errno : fs_read_fd(fd, ca, 1 << 20);
    if (rc < 0)
        return -ui_fail(NULL, "%s: cannot read it: %s", path.p, strerror(-rc));
    buf_putc(ca, '\0');
    ca->len--;
    if (tls_pin(ca->p, pin) < 0)
        return -ui_fail("remove STATE/ca and STATE/tls and run 'pier up' again to make a new CA",
                        "%s holds no PEM certificate", path.p);
    return 0;
}

/* The controller's and git's URLs: https at the router's https port once
 * the cluster has a CA, else http. */
static void set_urls(struct up *u, bool tls)
{
    const struct cluster_state *cs = &u->cs;
    int p = tls ? cs->https : cs->http;
    char port[16] = "";
    if (p != (tls ? 443 : 80))
        snprintf(port, sizeof(port), ":%d", p);
    const char *scheme = tls ? "https" : "http";
    snprintf(u->ctl_url, sizeof(u->ctl_url), "%s://controller.%s%s", scheme, cs->domain, port);
    snprintf(u->git_url, sizeof(u->git_url), "%s://git.%s%s", scheme, cs->domain, port);
}

static bool same_field(json_t *cl, const char *f, const char *want)
{
    const char *v = json_string_value(json_object_get(cl, f));
    return want ? v && strcmp(v, want) == 0 : !json_object_get(cl, f);
}

/* Adds or updates the cluster in the CLI config (ca and pin NULL: http). */
static int update_config(struct up *u, const char *ca, const char *pin)
{
    struct config cfg;
    struct pier_err err = {0};
    if (config_load(&cfg, &err) < 0) {
        config_free(&cfg);
        return ui_fail(NULL, "%s", err.msg);
    }
    const char *name = u->cs.name;
    json_t *cl = config_cluster(&cfg, name);
    const char *what = "added to";
    if (cl) {
        bool same = same_field(cl, "url", u->ctl_url) && same_field(cl, "key", u->key) &&
                    same_field(cl, "git_url", u->git_url) && same_field(cl, "ca_cert", ca) &&
                    same_field(cl, "tls_pin", pin);
        what = same ? NULL : "updated in";
    } else {
        cl = json_object();
        json_object_set_new(cl, "name", json_string(name));
        json_array_append_new(config_clusters(&cfg), cl); /* cl borrowed from now on */
    }
    bool made_default = false;
    if (!config_default(&cfg)) {
        json_object_set_new(cfg.root, "default", json_string(name));
        made_default = true;
    }
    int rc = 0;
    if (what || made_default) {
        json_object_set_new(cl, "url", json_string(u->ctl_url));
        json_object_set_new(cl, "key", json_string(u->key));
        json_object_set_new(cl, "git_url", json_string(u->git_url));
        if (ca) {
            json_object_set_new(cl, "ca_cert", json_string(ca));
            json_object_set_new(cl, "tls_pin", json_string(pin));
        } else {
            json_object_del(cl, "ca_cert");
            json_object_del(cl, "tls_pin");
        }
        if (config_save(&cfg, &err) < 0)
            rc = ui_fail(NULL, "%s", err.msg);
        else
            printf("cluster \"%s\" %s the CLI config (%s)%s\n", name, what ? what : "made",
                   cfg.path, made_default ? ", the default" : "");
    } else {
        printf("cluster \"%s\" in the CLI config (%s) is up to date\n", name, cfg.path);
    }
    config_free(&cfg);
    return rc;
}

static bool in_path(const char *dir)
{
    const char *p = getenv("PATH");
    size_t n = strlen(dir);
    while (p && *p) {
        const char *e = strchr(p, ':');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == n && strncmp(p, dir, n) == 0)
            return true;
        p = e ? e + 1 : NULL;
    }
    return false;
}

static void print_next_steps(const struct up *u, const struct up_flags *f, const char *pin)
{
    const struct cluster_state *c = &u->cs;
    char port[16] = "";
    if (c->http != 80)
        snprintf(port, sizeof(port), ":%d", c->http);
    printf("\npier runs on this host: cluster \"%s\", state in %s\n", c->name, u->state);
    printf("  store       %s   (%sexport PIER_STORE=%s for 'pier host list')\n", u->store_url.p,
           c->store_urls ? "external; " : "", u->store_url.p);
    printf("  host        %s   (host agent %s; docs/host.md)\n", u->host_url,
           c->host_id ? c->host_id : "?");
    printf("  controller  %s   (through the router; 'pier status')\n", u->ctl_url);
    printf("  git         %s   (git push over HTTP%s)\n", u->git_url, pin ? "S" : "");
    if (pin) {
        printf("  CA          %s/ca/ca.crt   (the CLI config pins it)\n", u->state);
        printf("  TLS pin     %s\n", pin);
    }
    printf("              ssh://git@%s:%d   (git push over SSH)\n", c->listen_ip, c->ssh);
    printf("  apps        http://APP.%s%s\n", c->domain, port);
    printf("  cluster key in %s/key; logs in %s; stop with 'pier down'\n", u->state, u->state);
    if (f->no_config)
        printf("\nPoint the CLI at the cluster (its config was left alone: --no-config):\n");
    else
        printf("\nPoint the CLI at the cluster (its config has it as \"%s\"; these lines do "
               "without):\n",
               c->name);
    if (!in_path(u->bin_dir))
        printf("  export PATH=\"%s:$PATH\"\n", u->bin_dir);
    printf("  export PIER_CONTROLLER_URL=%s PIER_CONTROLLER_KEY=$(cat %s/key) PIER_GIT_URL=%s",
           u->ctl_url, u->state, u->git_url);
    if (pin)
        printf(" PIER_CONTROLLER_CA=%s/ca/ca.crt", u->state);
    printf("\n");
    printf("Another host joins with (its store must reach %s):\n", u->store_url.p);
    /* The key in the environment, not on pier's command line (ps). */
    printf("  PIER_KEY=$(cat %s/key) pier up --join %s", u->state, u->ctl_url);
    if (pin)
        printf(" --ca %s/ca/ca.crt", u->state);
    printf(" --state-dir DIR --port-base N\n");
    printf("\nDeploy an app with git push, then reach it, scale it, read its log:\n");
    cleanup_buf struct buf sample = BUF_INIT;
    buf_printf(&sample, "%s/../tests/apps/nodejs", u->bin_dir);
    char real[PATH_MAX];
    if (realpath(sample.p, real))
        printf("  cp -r %s hello && cd hello && git init -q -b main && git add -A && git commit "
               "-qm init\n",
               real);
    printf("  pier create hello   # adds the git remote pier\n");
    printf("  git push pier main   # builds, deploys, scales web to 1\n");
    printf("  curl -s http://hello.%s%s/   # through the router\n", c->domain, port);
    printf("  pier -a hello ps\n");
    printf("  pier -a hello log\n");
    printf("  pier -a hello scale web=2\n");
    printf("  pier apps   # the system apps are there too\n");
}

static void up_free(struct up *u)
{
    free(u->state);
    free(u->bin_dir);
    free(u->pierd);
    cluster_state_free(&u->cs);
    buf_free(&u->store_dir);
    buf_free(&u->host_dir);
    buf_free(&u->store_url);
}

/* The state dir made (0700) and absolute in u->state; its cluster.json
 * into u->cs when it has one (*have). */
static int open_state(struct up *u, const struct up_flags *f, bool *have)
{
    cleanup_free char *state = state_dir_resolve(f->state);
    if (mkdir(state, 0700) < 0 && errno != EEXIST) {
        char *p = state; /* its parents first, as mkdir -p */
        for (char *s = strchr(p + 1, '/'); s; s = strchr(s + 1, '/')) {
            *s = '\0';
            mkdir(p, 0755);
            *s = '/';
        }
        if (mkdir(state, 0700) < 0 && errno != EEXIST)
            return ui_fail(NULL, "cannot make the state dir %s: %s", state, strerror(errno));
    }
    char real[PATH_MAX];
    if (!realpath(state, real))
        return ui_fail(NULL, "%s: %s", state, strerror(errno));
    u->state = xstrdup(real);
    struct pier_err err = {0};
    int rc = cluster_state_load(u->state, &u->cs, &err);
    *have = rc == 0;
    return rc < 0 && rc != PIER_ENOTFOUND ? ui_fail(NULL, "%s", err.msg) : 0;
}

/* cluster.json made from the flags, or checked against them (and given
 * the https port a cluster.json of before TLS lacks). */
static int prepare_state(struct up *u, const struct up_flags *f, bool have)
{
    struct cluster_state want;
    int rc = up_cluster_from_flags(f, &want);
    struct pier_err err = {0};
    if (rc) {
        cluster_state_free(&want);
        return rc;
    }
    if (!have) {
        u->cs = want;
        if (cluster_state_save(u->state, &u->cs, &err) < 0)
            return ui_fail(NULL, "%s", err.msg);
        return 0;
    }
    if (u->cs.https <= 0) { /* the rule of --port-base: N+3 after store N */
        u->cs.https = u->cs.store == 7001 && u->cs.http == 80 ? 443 : u->cs.store + 3;
        if (cluster_state_save(u->state, &u->cs, &err) < 0)
            rc = ui_fail(NULL, "%s", err.msg);
    }
    if (!rc)
        rc = check_same(u, f, &want);
    cluster_state_free(&want);
    return rc;
}

int up_record_host_id(struct up *u)
{
    cleanup_buf struct buf path = BUF_INIT, text = BUF_INIT;
    buf_printf(&path, "%s/host-id", u->host_dir.p);
    cleanup_close int fd = open(path.p, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fs_read_fd(fd, &text, 256) < 0 || text.len == 0)
        return ui_fail(NULL, "the host agent wrote no id to %s", path.p);
    buf_putc(&text, '\0');
    text.p[strcspn(text.p, "\r\n")] = '\0';
    if (u->cs.host_id && strcmp(u->cs.host_id, text.p) == 0)
        return 0;
    free(u->cs.host_id);
    u->cs.host_id = xstrdup(text.p);
    struct pier_err err = {0};
    if (cluster_state_save(u->state, &u->cs, &err) < 0)
        return ui_fail(NULL, "%s", err.msg);
    return 0;
}

int cli_up(struct cli *c)
{
    struct up_flags f = {0};
    int rc = parse_up_flags(c->argc, c->argv, &f);
    if (rc)
        return rc;
    struct up u = {0};
    cleanup_free char **env = NULL;
    cleanup_buf struct buf keyvar = BUF_INIT, ca = BUF_INIT, pin = BUF_INIT;
    bool have = false;
    struct cluster_state want; /* the flags checked before the state dir is made */
    rc = up_cluster_from_flags(&f, &want);
    cluster_state_free(&want);
    if (rc || (rc = find_pierd(&u)) || (rc = open_state(&u, &f, &have)))
        goto out;
    if (f.join || (have && u.cs.joined)) {
        rc = up_join(&u, &f, have);
        goto out;
    }
    if ((rc = prepare_state(&u, &f, have)) || (rc = make_key(&u) ? 1 : 0))
        goto out;
    struct cluster_state *cs = &u.cs;
    if (cs->store_urls)
        buf_puts(&u.store_url, cs->store_urls);
    else
        buf_printf(&u.store_url, "http://%s:%d", cs->listen_ip, cs->store);
    snprintf(u.host_url, sizeof(u.host_url), "http://%s:%d", cs->listen_ip, cs->host);
    buf_printf(&u.store_dir, "%s/store", u.state);
    buf_printf(&u.host_dir, "%s/host", u.state);
    env = up_env_with_key(u.key, &keyvar);
    snprintf(u.host_tags, sizeof(u.host_tags), "%s=%s", STATE_TAG, cs->name);
    bool all_running = true;
    if ((rc = start_store(&u, env, &all_running)) || (rc = up_start_host(&u, env, &all_running)) ||
        (rc = up_record_host_id(&u)))
        goto out;
    if (all_running)
        printf("found the cluster \"%s\" running in %s\n", cs->name, u.state);
    fflush(stdout);
    if ((rc = run_bootstrap(&u, env)))
        goto out;
    int no_ca = read_ca(&u, &ca, &pin); /* the bootstrap makes it */
    if (no_ca < 0) {
        rc = 1;
        goto out;
    }
    set_urls(&u, no_ca == 0);
    if (!f.no_config && (rc = update_config(&u, no_ca ? NULL : ca.p, no_ca ? NULL : pin.p)))
        goto out;
    print_next_steps(&u, &f, no_ca ? NULL : pin.p);
out:
    up_free(&u);
    return rc;
}
