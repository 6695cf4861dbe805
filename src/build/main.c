/* pierslug: the slug builder and runner that run inside job containers
 * (docs/build.md). The host agent binds this binary into every container
 * at /.pier/pierslug. */
#include <stdio.h>
#include <string.h>

#include "build/slug.h"

#if defined(__SANITIZE_ADDRESS__)
/* In the sanitizer build: LeakSanitizer stops the world with ptrace, which
 * a job container's seccomp profile refuses, and would turn every build
 * into a failure. Its check is off by default here; ASAN_OPTIONS set to
 * detect_leaks=1 turns it on outside a container (tests/e2e/test_slug.py). */
const char *__asan_default_options(void);
__attribute__((used)) const char *__asan_default_options(void)
{
    return "detect_leaks=0";
}
#endif

static void usage(FILE *f)
{
    fprintf(f, "usage: pierslug build          build a slug (settings from the environment)\n"
               "       pierslug run [ARG...]   run a process of the slug in /app\n"
               "docs/build.md says more.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (strcmp(argv[1], "build") == 0)
        return slugbuilder_main(argc - 1, argv + 1);
    if (strcmp(argv[1], "run") == 0)
        return slugrunner_main(argc - 1, argv + 1);
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("pierslug %s\n", PIER_VERSION);
        return 0;
    }
    fprintf(stderr, "pierslug: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
