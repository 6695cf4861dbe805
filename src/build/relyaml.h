/* relyaml: the output of a buildpack's bin/release (CONVENTIONS.md
 * "Buildpack API"), a small YAML document:
 *
 *   ---
 *   addons: []
 *   config_vars:
 *     PATH: /app/bin:/usr/bin
 *   default_process_types:
 *     web: node server.js
 *
 * Only what buildpacks write is read: an optional "---" line (or "--- {...}"
 * for the whole document), an optional "..." end line, comments ('#' at the
 * start of a line or after a blank), top-level keys whose value is a block
 * mapping of scalars (indented lines "KEY: VALUE"), a block sequence of
 * scalars (indented "- VALUE", or at the key's column as Ruby writes it), a
 * one-line flow "{...}" or "[...]" of scalars, or a scalar. Scalars are
 * plain (trailing blanks dropped; a block mapping's plain value runs to the
 * end of the line or a " #" comment, ': ' included), 'single quoted' (''
 * is a quote) or "double quoted" (with \" \\ \n \t \r \/ \uXXXX escapes).
 * Keys may be quoted too. Tabs for indentation, anchors, aliases, tags,
 * multi-line scalars, nested collections, a null inside a collection, a
 * NUL (\0, \u0000) or other control character but tab, bytes that are not
 * UTF-8, a key given twice and a second document are refused with the
 * line number. Unknown top-level keys are kept as they are read; plain
 * scalars stay strings ("2", "true"). CRLF is accepted and a UTF-8 byte
 * order mark skipped. Empty input is an empty document. */
#ifndef PIER_BUILD_RELYAML_H
#define PIER_BUILD_RELYAML_H

#include <jansson.h>
#include <stddef.h>

#include "lib/err.h"

#define RELYAML_MAX_BYTES (1024 * 1024)

/* Parses len bytes of data. On success returns 0 and sets *out to a new
 * object: each top-level key to a string, an array of strings or an object
 * of strings ("addons", "config_vars" and "default_process_types" among
 * them when present; a null value, "~" or nothing after the ':', is JSON
 * null). On failure returns a negative PIER_E* code, sets err (its message
 * starts "bin/release output line N: ", or "bin/release output: " with
 * PIER_ETOOBIG over RELYAML_MAX_BYTES) and leaves *out NULL. */
int relyaml_parse(const char *data, size_t len, json_t **out, struct pier_err *err);

#endif
