/* prepare: makes this machine ready to run containers, once per start of
 * the agent, and says what it found and did (RECIPES.md).
 *
 * crun refuses a "hybrid" cgroup layout where cgroup v1 controllers are
 * mounted and the cgroup2 tree still holds a controller (hugetlb, on the
 * machines we run on). The fix is to mount hugetlb as a v1 hierarchy at
 * /sys/fs/cgroup/hugetlb, which moves it out of cgroup2. */
#ifndef PIER_HOST_PREPARE_H
#define PIER_HOST_PREPARE_H

#include "lib/err.h"

/* Checks the cgroup layout and fixes the hybrid case. PIER_EUNAVAIL with a
 * message saying what to do when containers cannot run here. */
int prepare_cgroups(struct pier_err *err);
/* Checks that crun runs (crun is its path or name) and logs its version. */
int prepare_crun(const char *crun, struct pier_err *err);
/* Total memory of the machine in bytes (MemTotal), or 0. */
long long prepare_memory_total(void);

#endif
