/* procfile: the Procfile parser (CONVENTIONS.md "Procfile").
 *
 * Lines are "TYPE: COMMAND". A line ends at "\n"; a "\r" before it is
 * dropped (CRLF files). Blank lines (spaces and tabs only) and lines whose
 * first non-blank character is '#' are skipped. TYPE is [A-Za-z0-9_-], 1 to
 * 63 characters, at the start of the line; after the ':' blanks are
 * skipped; COMMAND is the rest with trailing blanks removed and must not be
 * empty. Anything else (blanks before TYPE, no ':', a bad or too long
 * TYPE, an empty command, a NUL byte anywhere, a command that is not UTF-8
 * or holds a control character other than tab, a type given twice)
 * refuses the whole file, naming the first bad line: "Procfile line 3:
 * ...". A file over PROCFILE_MAX_BYTES is refused too (PIER_ETOOBIG,
 * "Procfile: ..."). A leading UTF-8 byte order mark is skipped. An empty
 * file (or only comments) is valid: no types. */
#ifndef PIER_BUILD_PROCFILE_H
#define PIER_BUILD_PROCFILE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "lib/err.h"

#define PROCFILE_MAX_BYTES (64 * 1024)
#define PROCFILE_MAX_TYPE 63

/* Whether s[0..len) is a valid process type: 1 to PROCFILE_MAX_TYPE of
 * [A-Za-z0-9_-]. */
bool procfile_valid_type(const char *s, size_t len);

/* Parses len bytes of data. On success returns 0 and sets *out to a new
 * object of type -> command (strings), in file order. On failure returns
 * a negative PIER_E* code, sets err (its message starts "Procfile line N: "
 * or "Procfile: ") and leaves *out NULL. */
int procfile_parse(const char *data, size_t len, json_t **out, struct pier_err *err);

#endif
