/* pierd-shim: one job's container keeper (shim.h), started by pierd host. */
#include "host/shim.h"

int main(int argc, char **argv)
{
    return shim_main(argc - 1, argv + 1);
}
