#include "lib/daemon.h"

#include <pthread.h>
#include <signal.h>
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
            snprintf(right, sizeof(right), "%s (default %s)", common[i].help, spec->default_listen);
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
