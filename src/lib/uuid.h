/* uuid: random (version 4) UUIDs, the ids of apps, releases, artifacts,
 * deployments and the uuid part of job ids, as Flynn writes them:
 * "6ba7b810-9dad-41d1-80b4-00c04fd430c8". */
#ifndef PIER_UUID_H
#define PIER_UUID_H

#include <stdbool.h>

#define UUID_LEN 37 /* 36 characters and the NUL */

/* Writes a new random UUID. Aborts if the kernel has no randomness to give
 * (getrandom never fails once the pool is initialized). */
void uuid_new(char out[UUID_LEN]);

/* Whether s is a UUID in that form (lower or upper case hex). */
bool uuid_ok(const char *s);

#endif
