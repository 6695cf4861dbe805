#include "lib/daemon.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/log.h"

static void usage(const struct daemon_spec *spec)
{
    printf("usage: pierd %s [flags]\n\n%s\n\ncommon flags:\n", spec->sub, spec->summary);
    printf("  --listen HOST:PORT   where the HTTP API listens (default %s)\n",
           spec->default_listen ? spec->default_listen : "none");
    printf("  --store URL[,URL]    the cluster store (env PIER_STORE)\n");
    printf("  --data-dir DIR       where files are kept (env PIER_DATA_DIR)\n");
    printf("  --key KEY            the cluster key for API auth (env PIER_KEY)\n");
    printf("  --log-level LEVEL    debug, info, warn or error (env PIER_LOG_LEVEL)\n");
    if (spec->opts && spec->opts[0].name) {
        printf("\n%s flags:\n", spec->sub);
        for (const struct daemon_opt *o = spec->opts; o->name; o++) {
            char left[64];
            snprintf(left, sizeof(left), "--%s %s", o->name, o->metavar ? o->metavar : "VALUE");
            printf("  %-20s %s\n", left, o->help);
        }
    }
}

static const char **common_slot(struct daemon_flags *f, const char *name)
{
    if (strcmp(name, "listen") == 0)
        return &f->listen;
    if (strcmp(name, "store") == 0)
        return &f->store;
    if (strcmp(name, "data-dir") == 0)
        return &f->data_dir;
    if (strcmp(name, "key") == 0)
        return &f->key;
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
    f->listen = spec->default_listen;
    f->store = getenv("PIER_STORE");
    f->data_dir = getenv("PIER_DATA_DIR");
    f->key = getenv("PIER_KEY");
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
        const char **slot = common_slot(f, key);
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
