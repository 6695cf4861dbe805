/* procfile: the Procfile parser.
 *
 * One pass over the lines; each line is cut at "\n" (a "\r" before it, or
 * at the end of the data, is dropped), classified (blank, comment, entry)
 * and an entry is split into TYPE and COMMAND. The first bad line stops
 * the parse: unlike foreman, which skips lines it cannot read, pier refuses
 * the file so that a typo does not silently lose a process type. */
#include "build/procfile.h"

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "lib/cleanup.h"

static bool is_blank(char c)
{
    return c == ' ' || c == '\t';
}

static bool is_type_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-';
}

bool procfile_valid_type(const char *s, size_t len)
{
    if (len == 0 || len > PROCFILE_MAX_TYPE)
        return false;
    for (size_t i = 0; i < len; i++)
        if (!is_type_char(s[i]))
            return false;
    return true;
}

/* Whether s[0..n) is printable ASCII, so it may be quoted in a message. */
static bool printable(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] < 0x20 || s[i] > 0x7e)
            return false;
    return true;
}

/* Checks the command c[0..n) (non-empty, trimmed) has no control
 * characters but tab (a lone "\r" of an old Mac file is one). */
static int check_command(const char *c, size_t n, size_t lineno, struct pier_err *err)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char u = (unsigned char)c[i];
        if ((u < 0x20 && u != '\t') || u == 0x7f)
            return err_set(err, PIER_EINVAL,
                           "Procfile line %zu: control character 0x%02x in the command", lineno, u);
    }
    return 0;
}

/* Parses the entry line l[0..n) (not blank, not a comment) into types and
 * lines (type -> line number, to name the first line of a duplicate). */
static int parse_entry(const char *l, size_t n, size_t lineno, json_t *types, json_t *lines,
                       struct pier_err *err)
{
    if (is_blank(l[0]))
        return err_set(
            err, PIER_EINVAL,
            "Procfile line %zu: blank before the process type (a line is \"TYPE: COMMAND\" "
            "from its first column)",
            lineno);
    const char *colon = memchr(l, ':', n);
    if (!colon)
        return err_set(err, PIER_EINVAL, "Procfile line %zu: no ':' (a line is \"TYPE: COMMAND\")",
                       lineno);
    size_t tlen = (size_t)(colon - l);
    if (tlen == 0)
        return err_set(err, PIER_EINVAL, "Procfile line %zu: no process type before ':'", lineno);
    if (tlen > PROCFILE_MAX_TYPE)
        return err_set(err, PIER_EINVAL,
                       "Procfile line %zu: process type longer than %d characters", lineno,
                       PROCFILE_MAX_TYPE);
    for (size_t i = 0; i < tlen; i++) {
        if (is_type_char(l[i]))
            continue;
        if (printable(l, tlen))
            return err_set(err, PIER_EINVAL,
                           "Procfile line %zu: process type \"%.*s\" must be A-Z a-z 0-9 _ - only",
                           lineno, (int)tlen, l);
        return err_set(err, PIER_EINVAL,
                       "Procfile line %zu: the process type must be A-Z a-z 0-9 _ - only", lineno);
    }
    char type[PROCFILE_MAX_TYPE + 1];
    memcpy(type, l, tlen);
    type[tlen] = '\0';

    const char *c = colon + 1, *end = l + n;
    while (c < end && is_blank(*c))
        c++;
    while (end > c && is_blank(end[-1]))
        end--;
    if (c == end)
        return err_set(err, PIER_EINVAL, "Procfile line %zu: no command for process type \"%s\"",
                       lineno, type);
    int rc = check_command(c, (size_t)(end - c), lineno, err);
    if (rc < 0)
        return rc;
    json_t *first = json_object_get(lines, type); /* borrowed */
    if (first)
        return err_set(err, PIER_EINVAL,
                       "Procfile line %zu: process type \"%s\" given twice (first on line %lld)",
                       lineno, type, (long long)json_integer_value(first));
    json_t *cmd = json_stringn(c, (size_t)(end - c));
    if (!cmd) /* jansson refuses what is not UTF-8 */
        return err_set(err, PIER_EINVAL, "Procfile line %zu: the command is not valid UTF-8",
                       lineno);
    if (json_object_set_new(types, type, cmd) < 0 ||
        json_object_set_new(lines, type, json_integer((json_int_t)lineno)) < 0)
        return err_set(err, PIER_EINTERNAL, "Procfile line %zu: out of memory", lineno);
    return 0;
}

int procfile_parse(const char *data, size_t len, json_t **out, struct pier_err *err)
{
    *out = NULL;
    if (len > PROCFILE_MAX_BYTES)
        return err_set(err, PIER_ETOOBIG, "Procfile: larger than %d bytes", PROCFILE_MAX_BYTES);
    cleanup_json json_t *types = json_object(), *lines = json_object();
    if (!types || !lines)
        return err_set(err, PIER_EINTERNAL, "Procfile: out of memory");
    const char *p = data, *end = data + len;
    /* A UTF-8 byte order mark (some Windows editors write one) would
     * otherwise make the first type invalid. */
    if (len >= 3 && memcmp(p, "\xef\xbb\xbf", 3) == 0)
        p += 3;
    for (size_t lineno = 1; p < end; lineno++) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *lend = nl ? nl : end;
        size_t n = (size_t)(lend - p);
        if (memchr(p, '\0', n))
            return err_set(err, PIER_EINVAL, "Procfile line %zu: NUL byte", lineno);
        if (n > 0 && p[n - 1] == '\r')
            n--;
        size_t i = 0;
        while (i < n && is_blank(p[i]))
            i++;
        if (i < n && p[i] != '#') {
            int rc = parse_entry(p, n, lineno, types, lines, err);
            if (rc < 0)
                return rc;
        }
        p = nl ? nl + 1 : end;
    }
    *out = steal_pointer(&types);
    return 0;
}
