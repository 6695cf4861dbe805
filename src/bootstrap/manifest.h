/* manifest: the bootstrap manifest (docs/bootstrap.md), read, filled in
 * and checked before anything starts.
 *
 * The file is JSON: {"version":1,"apps":[APP,...]}, each APP
 * {"name","meta","env","processes","formation","tags","routes"}. Every string
 * value may hold placeholders {{NAME}}, replaced by the value of NAME in
 * vars; an unknown placeholder, a field the manifest format does not have
 * or a value of the wrong shape is refused with a message naming where it
 * is ("apps[2] (blobstore): processes.web.mountz: unknown field"). */
#ifndef PIER_BOOTSTRAP_MANIFEST_H
#define PIER_BOOTSTRAP_MANIFEST_H

#include <jansson.h>

#include "lib/err.h"

/* The largest manifest file read. */
#define MANIFEST_MAX_BYTES (1024 * 1024)

/* Reads the manifest at path, replaces its placeholders with vars (an
 * object NAME -> string value) and checks it. On success *out is a new
 * reference to the filled-in manifest: "apps" is a non-empty array of apps
 * with unique names, each with "name", "env" (object of strings, maybe
 * empty), "processes" (object), "formation" (object of counts 0-100 of
 * types in processes), "routes" (array, maybe empty), "meta" (object of
 * strings, maybe empty) and, when the manifest has it, "tags" (an object
 * {type: {key: string}} of types in processes). PIER_EINVAL naming the file and the problem;
 * -errno when the file cannot be read. */
int manifest_load(const char *path, const json_t *vars, json_t **out, struct pier_err *err);

/* Like manifest_load on the len bytes of text (a file's content, not
 * necessarily NUL-terminated), with messages that do not name a file. */
int manifest_parse(const char *text, size_t len, const json_t *vars, json_t **out,
                   struct pier_err *err);

/* Replaces every {{NAME}} in s by vars[NAME]. On success *out is a new
 * string (free()). PIER_EINVAL naming the placeholder when NAME is not in
 * vars, or when a "{{" is not closed by "}}" around a name of
 * [A-Za-z0-9_]. */
int manifest_fill(const char *s, const json_t *vars, char **out, struct pier_err *err);

#endif
