/* bootstrap: `pierd bootstrap`, which starts the platform's own daemons
 * (controller, discoverd, blobstore, router, git receiver, scheduler) as
 * jobs of the local host agent and records each as a protected system app
 * in its own controller, from the manifest (docs/bootstrap.md). */
#ifndef PIER_BOOTSTRAP_H
#define PIER_BOOTSTRAP_H

/* The subcommand: exit status 0 when every system app runs, 1 when a step
 * failed (said on stderr), 2 for bad flags. */
int bootstrap_main(int argc, char **argv);

#endif
