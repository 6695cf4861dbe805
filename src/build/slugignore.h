/* slugignore: the .slugignore file (CONVENTIONS.md "Buildpack API"), read
 * the way .gitignore is: one pattern a line; blank lines and lines starting
 * with '#' are skipped, and so are negations ('!'), which Heroku does not
 * honour either; a trailing '\r' and trailing blanks are dropped. In a
 * pattern '*' matches anything but '/', '?' one character but '/', [...] a
 * class, and a double star anything, '/' included; a double star between
 * slashes (or before the first) also stands for no directory at all, as in
 * gitignore.
 * A pattern with a '/' at its start or in its middle is anchored at the
 * build directory and matched against the path from there; one without
 * matches an entry's name at any depth. A trailing '/' matches directories
 * only. A matching directory is deleted with all it holds. A backslash
 * makes the next character literal.
 *
 * Matching takes time proportional to the pattern's length times the
 * path's, whatever the pattern (no backtracking). At most
 * SLUGIGNORE_MAX_PATTERNS patterns of at most SLUGIGNORE_MAX_PATTERN_BYTES
 * bytes are used; the lines past those limits are skipped and counted. */
#ifndef PIER_BUILD_SLUGIGNORE_H
#define PIER_BUILD_SLUGIGNORE_H

#include <stdbool.h>
#include <stddef.h>

#include "lib/err.h"

struct slugignore;

/* The patterns of len bytes of .slugignore text. Never NULL; free with
 * slugignore_free. */
struct slugignore *slugignore_parse(const char *text, size_t len);
void slugignore_free(struct slugignore *si);

#define SLUGIGNORE_MAX_PATTERNS 1000
#define SLUGIGNORE_MAX_PATTERN_BYTES 512

/* How many pattern lines were skipped for the limits above. */
size_t slugignore_skipped(const struct slugignore *si);

/* Whether path (relative to the build directory, '/'-separated, no leading
 * "./" or '/') is matched by a pattern. */
bool slugignore_match(const struct slugignore *si, const char *path, bool is_dir);

/* Deletes every entry under root that a pattern matches (symlinks are not
 * followed: a matching link is deleted, not its target). Adds to *removed
 * the number of matched entries. A negative errno with a message when an
 * entry cannot be read or deleted. */
int slugignore_apply(const struct slugignore *si, const char *root, size_t *removed,
                     struct pier_err *err);

#endif
