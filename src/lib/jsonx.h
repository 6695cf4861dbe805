/* jsonx: helpers over jansson for reading outside input strictly and
 * writing compact output. Getters borrow; they never steal references.
 *
 * Field getters return 0 when the field is absent (leaving *out as the
 * caller's default), 1 when it was present and read, and PIER_EINVAL with a
 * message naming the field when it has the wrong type. */
#ifndef PIER_JSONX_H
#define PIER_JSONX_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "lib/buf.h"
#include "lib/err.h"

/* Parses len bytes of JSON text; on success *out is a new reference.
 * Duplicate keys and trailing garbage are refused. */
int jsonx_parse(const char *text, size_t len, json_t **out, struct pier_err *err);

/* Like jsonx_parse, and the top level must be an object. */
int jsonx_parse_object(const char *text, size_t len, json_t **out, struct pier_err *err);

/* An int64 given as a JSON integer or, as etcd and protobuf JSON write them,
 * as a decimal string ("42"). */
int jsonx_get_int64(const json_t *obj, const char *field, int64_t *out, struct pier_err *err);
/* A borrowed string, valid while obj lives. */
int jsonx_get_str(const json_t *obj, const char *field, const char **out, struct pier_err *err);
int jsonx_get_bool(const json_t *obj, const char *field, bool *out, struct pier_err *err);
/* A borrowed object (jsonx_get_obj) or array (jsonx_get_array); the wrong
 * type is PIER_EINVAL. */
int jsonx_get_obj(const json_t *obj, const char *field, json_t **out, struct pier_err *err);
int jsonx_get_array(const json_t *obj, const char *field, json_t **out, struct pier_err *err);
/* A base64 field decoded into out (appended). */
int jsonx_get_b64(const json_t *obj, const char *field, struct buf *out, struct pier_err *err);

/* Appends the compact encoding of j to out. */
void jsonx_dump(struct buf *out, const json_t *j);
/* Sets field to the decimal string of v (steals nothing). */
void jsonx_set_int64_str(json_t *obj, const char *field, int64_t v);
/* Sets field to the base64 of data. */
void jsonx_set_b64(json_t *obj, const char *field, const void *data, size_t len);

#endif
