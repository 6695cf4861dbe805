/* deployer: runs recorded deployments on the leading controller
 * (deployer.c says how; docs/controller.md "Deployments"). */
#ifndef PIER_CONTROLLER_DEPLOYER_H
#define PIER_CONTROLLER_DEPLOYER_H

#include "controller/ctl.h"

struct ctl_deployer;

/* Starts the deployer's thread; it acts only while c->leader leads. */
int ctl_deployer_start(struct ctl *c, struct ctl_deployer **out, struct pier_err *err);
/* Stops it, waiting for deployments in progress to put their step down
 * (they are resumed by the next leader). NULL allowed. */
void ctl_deployer_stop(struct ctl_deployer *d);

#endif
