#include "lib/daemon.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/log.h"

/* The common flags, in the order --help lists them. */
static const struct {
    const char *name, *metavar, *env, *help;
    unsigned bit;
} common[] = {
    {"listen", "HOST:PORT", NULL, "where the HTTP API listens", DAEMON_USES_LISTEN},
    {"store", "URL[,URL]", "PIER_STORE", "the cluster store", DAEMON_USES_STORE},
    {"data-dir", "DIR", "PIER_DATA_DIR", "where files are kept", DAEMON_USES_DATA_DIR},
    {"key", "KEY", "PIER_KEY", "the cluster key for API auth", DAEMON_USES_KEY},
};
#define N_COMMON (sizeof(common) / sizeof(common[0]))

static void usage(const struct daemon_spec *spec)
{
    printf("usage: pierd %s [flags]\n\n%s\n\nflags:\n", spec->sub, spec->summary);
    for (size_t i = 0; i < N_COMMON; i++) {
        if (!(spec->uses & common[i].bit))
            continue;
        char left[64], right[160];
        snprintf(left, sizeof(left), "--%s %s", common[i].name, common[i].metavar);
        snprintf(right, sizeof(right), "%s%s%s%s", common[i].help, common[i].env ? " (env " : "",
                 common[i].env ? common[i].env : "", common[i].env ? ")" : "");
        if (common[i].bit == DAEMON_USES_LISTEN && spec->default_listen)
            snprintf(right, sizeof(right), "%s (default %s; in a job, EXTERNAL_IP:PORT)",
                     common[i].help, spec->default_listen);
        printf("  %-22s %s\n", left, right);
    }
    printf("  %-22s %s\n", "--log-level LEVEL", "debug, info, warn or error (env PIER_LOG_LEVEL)");
    for (const struct daemon_opt *o = spec->opts; o && o->name; o++) {
        char left[64];
        snprintf(left, sizeof(left), "--%s %s", o->name, o->metavar ? o->metavar : "VALUE");
        printf("  %-22s %s\n", left, o->help);
    }
}

/* The field of f for a common flag, or NULL when name is not one. */
static const char **common_slot(struct daemon_flags *f, const char *name, unsigned *bit)
{
    const char **slots[] = {&f->listen, &f->store, &f->data_dir, &f->key};
    for (size_t i = 0; i < N_COMMON; i++) {
        if (strcmp(name, common[i].name) == 0) {
            *bit = common[i].bit;
            return slots[i];
        }
    }
    *bit = 0;
    if (strcmp(name, "log-level") == 0)
        return &f->log_level;
    return NULL;
}

/* A job's address (lib/daemon.h): ${EXTERNAL_IP:-127.0.0.1}:$PORT. One
 * process parses its flags once, so one buffer holds it for its life. */
static char job_listen[300];

static int listen_from_job(const char *port, struct daemon_flags *f, struct pier_err *err)
{
    char *end = NULL;
    errno = 0;
    long n = strtol(port, &end, 10);
    if (errno || end == port || *end || port[0] < '0' || port[0] > '9' || n < 1 || n > 65535)
        return err_set(err, PIER_EINVAL,
                       "PORT \"%.40s\" in the environment is not a port (1-65535); "
                       "give --listen HOST:PORT or unset PORT",
                       port);
    const char *ip = getenv("EXTERNAL_IP");
    if (!ip || !*ip)
        ip = "127.0.0.1";
    if (strlen(ip) > 255 ||
        strspn(ip, "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.:-[]%") !=
            strlen(ip))
        return err_set(err, PIER_EINVAL,
                       "EXTERNAL_IP \"%.80s\" in the environment is not an "
                       "address; give --listen HOST:PORT",
                       ip);
    bool v6 = strchr(ip, ':') && ip[0] != '[';
    snprintf(job_listen, sizeof(job_listen), "%s%s%s:%ld", v6 ? "[" : "", ip, v6 ? "]" : "", n);
    f->listen = job_listen;
    return 0;
}

int daemon_parse(const struct daemon_spec *spec, int argc, char **argv, struct daemon_flags *f,
                 struct pier_err *err)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    memset(f, 0, sizeof(*f));
    f->listen = spec->uses & DAEMON_USES_LISTEN ? spec->default_listen : NULL;
    f->store = spec->uses & DAEMON_USES_STORE ? getenv("PIER_STORE") : NULL;
    f->data_dir = spec->uses & DAEMON_USES_DATA_DIR ? getenv("PIER_DATA_DIR") : NULL;
    f->key = spec->uses & DAEMON_USES_KEY ? getenv("PIER_KEY") : NULL;
    f->log_level = getenv("PIER_LOG_LEVEL");
    const char *listen_given = NULL;

    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(spec);
            return 1;
        }
        if (strncmp(a, "--", 2) != 0)
            return err_set(err, PIER_EINVAL, "unexpected argument \"%s\" (see pierd %s --help)", a,
                           spec->sub);
        const char *name = a + 2;
        const char *eq = strchr(name, '=');
        char key[64];
        size_t klen = eq ? (size_t)(eq - name) : strlen(name);
        if (klen >= sizeof(key))
            return err_set(err, PIER_EINVAL, "unknown flag \"%s\"", a);
        memcpy(key, name, klen);
        key[klen] = '\0';
        unsigned bit;
        const char **slot = common_slot(f, key, &bit);
        if (slot && bit && !(spec->uses & bit))
            return err_set(err, PIER_EINVAL, "pierd %s does not use --%s (see pierd %s --help)",
                           spec->sub, key, spec->sub);
        for (const struct daemon_opt *o = spec->opts; !slot && o && o->name; o++)
            if (strcmp(o->name, key) == 0)
                slot = o->value;
        if (!slot)
            return err_set(err, PIER_EINVAL, "unknown flag \"--%s\" (see pierd %s --help)", key,
                           spec->sub);
        if (eq) {
            *slot = eq + 1;
        } else if (i + 1 < argc) {
            *slot = argv[++i];
        } else {
            return err_set(err, PIER_EINVAL, "flag \"--%s\" needs a value", key);
        }
        if (slot == &f->listen)
            listen_given = *slot;
    }
    const char *port = getenv("PORT");
    if ((spec->uses & DAEMON_USES_LISTEN) && !listen_given && port && *port) {
        int rc = listen_from_job(port, f, err);
        if (rc < 0)
            return rc;
    }
    if (f->log_level) {
        enum log_level lvl;
        if (log_parse_level(f->log_level, &lvl) < 0)
            return err_set(err, PIER_EINVAL,
                           "log level \"%s\" is not one of debug, info, warn, error", f->log_level);
        log_set_level(lvl);
    }
    return 0;
}

int daemon_wait(void)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    int sig = 0;
    sigwait(&set, &sig);
    /* A second signal during a slow shutdown ends the process at once. */
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);
    return sig;
}
