/* scheduler: `pierd scheduler`, the service scheduler daemon
 * (docs/controller.md, "Scheduler"). */
#ifndef PIER_SCHEDULER_SCHEDULER_H
#define PIER_SCHEDULER_SCHEDULER_H

/* Runs `pierd scheduler` with its flags (argv without the subcommand);
 * returns the process's exit status. */
int scheduler_main(int argc, char **argv);

#endif
