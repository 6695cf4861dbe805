/* slugrunner: `pierslug run ARG...`, the first process of every job of a
 * slug (spec6 "pierslug run", CONVENTIONS.md "Slug and process runtime").
 * The agent has unpacked the slug into /app and set the job's environment
 * (config vars, PORT, DYNO); this sets HOME=/app and becomes bash, which
 * sources the .profile.d scripts of /app (*.sh, in byte order) and /app/.profile, then
 * becomes the command: one ARG is a Procfile command line (bash -c ARG),
 * several are an argv, none is a shell. Nothing of pierslug stays. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "build/slug.h"
#include "lib/cleanup.h"

#define APP_DIR "/app"
#define PROFILE_D APP_DIR "/.profile.d"
#define MAX_PROFILE_SCRIPTS 1000

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The .profile.d scripts, sorted as bytes (not by the locale), sourced
 * with allexport on: a script that writes X=${X:-default} without export
 * still sets X for the command. */
static void add_profile_d(struct buf *script)
{
    DIR *d = opendir(PROFILE_D);
    if (!d)
        return;
    char *names[MAX_PROFILE_SCRIPTS];
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < MAX_PROFILE_SCRIPTS) {
        size_t len = strlen(e->d_name);
        if (len > 3 && strcmp(e->d_name + len - 3, ".sh") == 0)
            names[n++] = xstrdup(e->d_name);
    }
    closedir(d);
    qsort(names, n, sizeof(*names), cmp_names);
    for (size_t i = 0; i < n; i++) {
        struct buf path = BUF_INIT;
        buf_printf(&path, "%s/%s", PROFILE_D, names[i]);
        struct stat st;
        if (stat(path.p, &st) == 0 && S_ISREG(st.st_mode)) {
            buf_puts(script, ". ");
            slug_shell_quote(script, path.p);
            buf_putc(script, '\n');
        }
        buf_free(&path);
        free(names[i]);
    }
}

int slugrunner_main(int argc, char **argv)
{
    struct stat st;
    if (stat(APP_DIR, &st) < 0 || !S_ISDIR(st.st_mode)) {
        fprintf(stderr, "pierslug run: %s is not a directory: this job has no slug\n", APP_DIR);
        return 127;
    }
    if (chdir(APP_DIR) < 0) {
        fprintf(stderr, "pierslug run: %s: %s\n", APP_DIR, strerror(errno));
        return 127;
    }
    setenv("HOME", APP_DIR, 1);

    cleanup_buf struct buf script = BUF_INIT;
    buf_puts(&script, "set -a\n");
    add_profile_d(&script);
    buf_puts(&script, "if [ -f " APP_DIR "/.profile ]; then . " APP_DIR "/.profile; fi\n"
                      "set +a\n"
                      "case $# in\n"
                      "0) exec bash ;;\n"
                      "1) exec bash -c \"$1\" ;;\n"
                      "*) exec \"$@\" ;;\n"
                      "esac\n");
    char **args = xcalloc((size_t)argc + 4, sizeof(*args));
    size_t k = 0;
    args[k++] = "bash";
    args[k++] = "-c";
    args[k++] = script.p;
    args[k++] = "pierslug-run"; /* $0 */
    for (int i = 1; i < argc; i++)
        args[k++] = argv[i];
    args[k] = NULL;
    execvp("bash", args);
    fprintf(stderr, "pierslug run: cannot run bash: %s\n", strerror(errno));
    free(args);
    return 127;
}
