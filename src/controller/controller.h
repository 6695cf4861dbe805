/* controller: `pierd controller`, the Flynn-compatible API over the store
 * (docs/controller.md). */
#ifndef PIER_CONTROLLER_CONTROLLER_H
#define PIER_CONTROLLER_CONTROLLER_H

int controller_main(int argc, char **argv);

#endif
