/* relyaml: the YAML subset of a buildpack's bin/release.
 *
 * Line by line, with one level of nesting: a top-level key at column 0
 * either has its value on its line (a scalar or a one-line flow "[...]" /
 * "{...}") or nothing there, and then the lines that follow, indented
 * alike, make its block mapping ("KEY: VALUE") or block sequence ("- V").
 * The block sequence may also sit at column 0 under its key, as Ruby's
 * YAML writer puts it ("addons:\n- heroku-postgresql").
 *
 * Where YAML would give a structure this reader does not build (nested
 * collections, multi-line scalars, anchors, tags), it refuses with the
 * line number rather than guess, so a buildpack's release never silently
 * loses a process type. One leniency: a block mapping's plain value runs
 * to the end of the line (or a " #" comment), ": " included, as in
 * "web: sh -c 'echo a: b'"; YAML would refuse it and it has one reading. */
#include "build/relyaml.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lib/cleanup.h"

#define WHERE "bin/release output line %zu: "

struct rel {
    struct pier_err *err;
    size_t lineno;
    json_t *root;  /* the document */
    char *key;     /* owned: the top-level key whose block is being read, or NULL */
    json_t *block; /* borrowed from root: that key's object or array, NULL until a line */
    size_t indent; /* the block's indentation, once block is set */
    bool started;  /* a "---" or any content was read */
    bool closed;   /* a root flow mapping or "..." ended the document */
};

static bool is_blank(char c)
{
    return c == ' ' || c == '\t';
}

/* Whether the line's rest from p is empty or a comment; after_blank says
 * whether p follows a blank (or starts the line), as a '#' then is one. */
static bool rest_empty(const char *p, const char *end, bool after_blank)
{
    while (p < end && is_blank(*p)) {
        p++;
        after_blank = true;
    }
    return p == end || (*p == '#' && after_blank);
}

/* Whether what follows an indicator at p is a blank or the line's end. */
static bool blank_or_end(const char *p, const char *end)
{
    return p == end || is_blank(*p);
}

static bool is_null_word(const char *s, size_t n)
{
    return (n == 1 && s[0] == '~') ||
           (n == 4 && (!memcmp(s, "null", 4) || !memcmp(s, "Null", 4) || !memcmp(s, "NULL", 4)));
}

static int bad(struct rel *r, const char *what)
{
    return err_set(r->err, PIER_EINVAL, WHERE "%s", r->lineno, what);
}

/* Makes *val a new string of s[0..n). */
static int string(struct rel *r, const char *s, size_t n, json_t **val)
{
    *val = json_stringn(s, n);
    return *val ? 0 : bad(r, "not valid UTF-8");
}

/* Refuses key k given twice, naming it when it is printable ASCII (the
 * message goes to the pusher line by line). */
static int twice(struct rel *r, const char *k)
{
    size_t n = strlen(k);
    for (size_t i = 0; i < n; i++)
        if (n > 64 || k[i] < 0x20 || k[i] > 0x7e)
            return bad(r, "a key given twice");
    return err_set(r->err, PIER_EINVAL, WHERE "key \"%s\" given twice", r->lineno, k);
}

/* Appends code point cp as UTF-8 to out. */
static size_t put_utf8(char *out, uint32_t cp)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* Reads 4 hex digits at p (end bounds them) into *cp. */
static bool hex4(const char *p, const char *end, uint32_t *cp)
{
    if (end - p < 4)
        return false;
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (d < 0)
            return false;
        v = v << 4 | (uint32_t)d;
    }
    *cp = v;
    return true;
}

/* Decodes the escape after the backslash at *pp into out, advancing *pp.
 * Returns the bytes written or a negative code. */
static int unescape(struct rel *r, const char **pp, const char *end, char *out)
{
    const char *p = *pp;
    if (p == end)
        return bad(r, "a backslash ends the line (multi-line scalars are not supported)");
    char c = *p++;
    static const char from[] = "\"\\/ntr", to[] = "\"\\/\n\t\r";
    const char *f = c ? strchr(from, c) : NULL;
    if (f) {
        out[0] = to[f - from];
        *pp = p;
        return 1;
    }
    uint32_t cp;
    switch (c) {
    case '0': return bad(r, "a NUL character (\\0) in a scalar");
    case 'u':
        if (!hex4(p, end, &cp))
            return bad(r, "\\u needs 4 hex digits");
        p += 4;
        if (cp >= 0xdc00 && cp <= 0xdfff)
            return bad(r, "a lone low surrogate in a \\u escape");
        if (cp >= 0xd800 && cp <= 0xdbff) {
            uint32_t lo;
            if (end - p < 6 || p[0] != '\\' || p[1] != 'u' || !hex4(p + 2, end, &lo) ||
                lo < 0xdc00 || lo > 0xdfff)
                return bad(r, "a high surrogate \\u escape without its low half");
            p += 6;
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
        }
        if (cp == 0)
            return bad(r, "a NUL character (\\u0000) in a scalar");
        *pp = p;
        return (int)put_utf8(out, cp);
    default:
        return err_set(r->err, PIER_EINVAL,
                       WHERE "unknown escape \\%c in a double-quoted scalar (known: \\\" \\\\ \\/ "
                             "\\n \\t \\r \\uXXXX)",
                       r->lineno, c >= 0x20 && c < 0x7f ? c : '?');
    }
}

/* Reads the quoted scalar starting at the quote *s into *val (a new
 * string) and sets *after past its closing quote. */
static int quoted(struct rel *r, const char *s, const char *end, json_t **val, const char **after)
{
    char q = *s;
    /* Unescaping never lengthens: "\uXXXX" is 6 bytes for at most 3. */
    cleanup_free char *out = malloc((size_t)(end - s) + 1);
    if (!out)
        return err_set(r->err, PIER_EINTERNAL, WHERE "out of memory", r->lineno);
    size_t n = 0;
    const char *p = s + 1;
    for (;;) {
        if (p == end)
            return bad(r, "a quoted scalar is not closed on its line (multi-line scalars are "
                          "not supported)");
        char c = *p++;
        if (c == q) {
            if (q == '\'' && p < end && *p == '\'') { /* '' is a quote */
                out[n++] = '\'';
                p++;
                continue;
            }
            break;
        }
        if (c == '\\' && q == '"') {
            int k = unescape(r, &p, end, out + n);
            if (k < 0)
                return k;
            n += (size_t)k;
            continue;
        }
        out[n++] = c;
    }
    *after = p;
    return string(r, out, n, val);
}

/* Refuses a plain scalar that starts with a YAML indicator at s. */
static int plain_start(struct rel *r, const char *s, const char *end)
{
    switch (*s) {
    case '&': return bad(r, "anchors (&) are not supported");
    case '*': return bad(r, "aliases (*) are not supported");
    case '!': return bad(r, "tags (!) are not supported");
    case '|':
    case '>': return bad(r, "block scalars (| and >) are not supported");
    case '%':
    case '@':
    case '`':
    case ',':
    case ']':
    case '}':
        return err_set(r->err, PIER_EINVAL, WHERE "a scalar cannot start with '%c'", r->lineno, *s);
    case '-':
        if (blank_or_end(s + 1, end))
            return bad(r, "a sequence here is a nested collection (not supported)");
        return 0;
    case '?':
        if (blank_or_end(s + 1, end))
            return bad(r, "complex keys (?) are not supported");
        return 0;
    case ':':
        if (blank_or_end(s + 1, end))
            return bad(r, "a key is missing before ':'");
        return 0;
    default: return 0;
    }
}

/* The end of a block plain scalar starting at s: the line's end or a
 * " #" comment, trailing blanks dropped. */
static const char *plain_end(const char *s, const char *end)
{
    const char *p = s;
    while (p < end && !(*p == '#' && is_blank(p[-1])))
        p++;
    while (p > s && is_blank(p[-1]))
        p--;
    return p;
}

/* Reads a scalar of a flow collection at *pp (blanks skipped), stopping at
 * ',', a bracket, or a ':' that ends a key. *val is a new string or NULL
 * when the entry is empty. */
static int flow_scalar(struct rel *r, const char **pp, const char *end, json_t **val)
{
    const char *p = *pp;
    *val = NULL;
    if (p < end && (*p == '"' || *p == '\'')) {
        int rc = quoted(r, p, end, val, pp);
        if (rc < 0)
            return rc;
        return 0;
    }
    if (p < end && (*p == '[' || *p == '{'))
        return bad(r, "nested collections are not supported");
    if (p < end && *p == '#')
        return bad(r, "a flow collection is not closed on its line");
    if (p == end || *p == ',' || *p == ']' || *p == '}')
        return 0;
    int rc = plain_start(r, p, end);
    if (rc < 0)
        return rc;
    const char *s = p;
    while (p < end && !strchr(",[]{}", *p) &&
           !(*p == ':' && (p + 1 == end || strchr(" \t,]}", p[1]))) &&
           !(*p == '#' && is_blank(p[-1])))
        p++;
    const char *e = p;
    while (e > s && is_blank(e[-1]))
        e--;
    *pp = p;
    return string(r, s, (size_t)(e - s), val);
}

static const char *skip_blanks(const char *p, const char *end)
{
    while (p < end && is_blank(*p))
        p++;
    return p;
}

/* Reads the one-line flow collection at the bracket *s into *val (a new
 * array or object of strings); the rest of the line must be empty. */
static int flow(struct rel *r, const char *s, const char *end, json_t **val)
{
    bool map = *s == '{';
    char close = map ? '}' : ']';
    cleanup_json json_t *coll = map ? json_object() : json_array();
    const char *p = s + 1;
    for (;;) {
        p = skip_blanks(p, end);
        if (p < end && *p == close)
            break;
        cleanup_json json_t *k = NULL, *v = NULL;
        int rc = flow_scalar(r, &p, end, &k);
        if (rc < 0)
            return rc;
        p = skip_blanks(p, end);
        if (!k)
            return bad(r, p < end && *p != '#' ? "an empty entry in a flow collection"
                                               : "a flow collection is not closed on its line");
        if (p < end && *p == ':') {
            if (!map)
                return bad(r,
                           "a mapping in a flow sequence is a nested collection (not supported)");
            p = skip_blanks(p + 1, end);
            rc = flow_scalar(r, &p, end, &v);
            if (rc < 0)
                return rc;
            p = skip_blanks(p, end);
        } else if (map) {
            return bad(r, "a flow mapping entry without ': VALUE'");
        }
        if (map) {
            if (!v || is_null_word(json_string_value(v), json_string_length(v)))
                return bad(r, "a null value in a collection is not supported");
            if (!json_string_length(k))
                return bad(r, "an empty key");
            if (json_object_get(coll, json_string_value(k)))
                return twice(r, json_string_value(k));
            json_object_set(coll, json_string_value(k), v);
        } else {
            if (is_null_word(json_string_value(k), json_string_length(k)))
                return bad(r, "a null value in a collection is not supported");
            json_array_append(coll, k);
        }
        if (p < end && *p == ',') {
            p++;
            continue;
        }
        if (p < end && *p == close)
            break;
        return bad(r, p == end || *p == '#' ? "a flow collection is not closed on its line"
                                            : "expected ',' or the closing bracket");
    }
    if (!rest_empty(p + 1, end, false))
        return bad(r, "unexpected text after a flow collection");
    *val = steal_pointer(&coll);
    return 0;
}

/* Reads the value at s (after "KEY:" or "- " and blanks) into *val: a new
 * string, array or object, or NULL for a null. nested: the value sits in a
 * block collection, where only non-null scalars are read. */
static int value(struct rel *r, const char *s, const char *end, bool nested, bool seq_item,
                 json_t **val)
{
    *val = NULL;
    if (rest_empty(s, end, true)) {
        if (nested)
            return bad(r, "a null value in a collection is not supported");
        return 0;
    }
    if (*s == '[' || *s == '{') {
        if (nested)
            return bad(r, "nested collections are not supported");
        return flow(r, s, end, val);
    }
    if (*s == '"' || *s == '\'') {
        const char *after;
        int rc = quoted(r, s, end, val, &after);
        if (rc < 0)
            return rc;
        if (!rest_empty(after, end, false)) {
            json_decref(*val);
            *val = NULL;
            return bad(r, seq_item && *skip_blanks(after, end) == ':'
                              ? "a mapping in a sequence is a nested collection (not supported)"
                              : "unexpected text after a quoted scalar");
        }
        return 0;
    }
    int rc = plain_start(r, s, end);
    if (rc < 0)
        return rc;
    const char *e = plain_end(s, end);
    if (seq_item) /* "- a: b" is a mapping in the sequence */
        for (const char *p = s; p < e; p++)
            if (*p == ':' && (p + 1 == e || is_blank(p[1])))
                return bad(r, "a mapping in a sequence is a nested collection (not supported)");
    if (is_null_word(s, (size_t)(e - s))) {
        if (nested)
            return bad(r, "a null value in a collection is not supported");
        return 0;
    }
    return string(r, s, (size_t)(e - s), val);
}

/* Reads "KEY:" at s into *key (a new string) and sets *after past the ':'. */
static int key(struct rel *r, const char *s, const char *end, json_t **k, const char **after)
{
    const char *p;
    if (*s == '"' || *s == '\'') {
        int rc = quoted(r, s, end, k, &p);
        if (rc < 0)
            return rc;
        p = skip_blanks(p, end);
        if (p == end || *p != ':' || !blank_or_end(p + 1, end)) {
            json_decref(*k);
            *k = NULL;
            return bad(r, "expected ':' after a quoted key");
        }
    } else {
        if (*s == '{' || *s == '[' || *s == '#')
            return bad(r, "expected \"KEY: VALUE\"");
        int rc = plain_start(r, s, end);
        if (rc < 0)
            return rc;
        p = s;
        while (p < end && !(*p == ':' && blank_or_end(p + 1, end))) {
            if (p > s && *p == '#' && is_blank(p[-1]))
                p = end; /* a comment: no ':' on the line */
            else
                p++;
        }
        if (p == end)
            return bad(r, "expected \"KEY: VALUE\" (no ': ' on the line)");
        const char *e = p;
        while (e > s && is_blank(e[-1]))
            e--;
        rc = string(r, s, (size_t)(e - s), k);
        if (rc < 0)
            return rc;
    }
    if (!json_string_length(*k)) {
        json_decref(*k);
        *k = NULL;
        return bad(r, "an empty key");
    }
    *after = skip_blanks(p + 1, end);
    return 0;
}

/* Puts val (stolen, NULL for null) under k in obj, refusing a repeat. */
static int put(struct rel *r, json_t *obj, json_t *k, json_t *val)
{
    const char *name = json_string_value(k);
    if (json_object_get(obj, name)) {
        json_decref(val);
        return twice(r, name);
    }
    json_object_set_new(obj, name, val ? val : json_null());
    return 0;
}

/* A flow mapping at s that is the whole document. */
static int root_flow(struct rel *r, const char *s, const char *end)
{
    json_t *doc;
    int rc = flow(r, s, end, &doc);
    if (rc < 0)
        return rc;
    json_decref(r->root);
    r->root = doc;
    r->closed = true;
    return 0;
}

/* "---" (with an optional flow mapping for the whole document). */
static int doc_start(struct rel *r, const char *l, const char *end)
{
    if (r->started)
        return bad(r, "a second document ('---') is not supported");
    r->started = true;
    const char *p = skip_blanks(l + 3, end);
    if (rest_empty(p, end, true))
        return 0;
    if (*p != '{')
        return bad(r, "the document is not a mapping");
    return root_flow(r, p, end);
}

/* "KEY: VALUE" or "KEY:" at column 0. */
static int top_line(struct rel *r, const char *l, const char *end)
{
    r->started = true;
    free(r->key);
    r->key = NULL;
    r->block = NULL;
    cleanup_json json_t *k = NULL;
    const char *after;
    int rc = key(r, l, end, &k, &after);
    if (rc < 0)
        return rc;
    json_t *val;
    rc = value(r, after, end, false, false, &val);
    if (rc < 0)
        return rc;
    rc = put(r, r->root, k, val);
    if (rc < 0 || !rest_empty(after, end, true))
        return rc;
    /* Nothing after the ':': a block may follow. */
    r->key = strdup(json_string_value(k));
    if (!r->key)
        return err_set(r->err, PIER_EINTERNAL, WHERE "out of memory", r->lineno);
    return 0;
}

/* A line of the current key's block, its content at c, indented by ind. */
static int block_line(struct rel *r, const char *c, const char *end, size_t ind)
{
    if (!r->key)
        return bad(r, "an indented line under no key (multi-line scalars and nested "
                      "collections are not supported)");
    bool item = *c == '-' && blank_or_end(c + 1, end);
    if (!r->block) {
        r->block = item ? json_array() : json_object();
        r->indent = ind;
        json_object_set_new(r->root, r->key, r->block);
    } else if (ind > r->indent) {
        return bad(r, "a deeper indentation: nested collections and multi-line scalars are "
                      "not supported");
    } else if (ind < r->indent) {
        return bad(r, "the indentation does not match the lines above");
    }
    json_t *val;
    if (json_is_array(r->block)) {
        if (!item)
            return bad(r, "a \"KEY: VALUE\" line in a sequence");
        int rc = value(r, skip_blanks(c + 1, end), end, true, true, &val);
        if (rc < 0)
            return rc;
        json_array_append_new(r->block, val);
        return 0;
    }
    if (item)
        return bad(r, "a sequence item in a mapping");
    cleanup_json json_t *k = NULL;
    const char *after;
    int rc = key(r, c, end, &k, &after);
    if (rc < 0)
        return rc;
    rc = value(r, after, end, true, false, &val);
    if (rc < 0)
        return rc;
    return put(r, r->block, k, val);
}

/* Whether l starts with the document marker m ("---" or "...") alone. */
static bool marker(const char *l, const char *end, const char *m)
{
    return end - l >= 3 && !memcmp(l, m, 3) && blank_or_end(l + 3, end);
}

/* One line l[0..n), already checked for bytes. */
static int line(struct rel *r, const char *l, size_t n)
{
    const char *end = l + n, *c = l;
    while (c < end && *c == ' ')
        c++;
    const char *t = skip_blanks(c, end);
    if (t == end || *t == '#')
        return 0; /* blank or comment */
    if (t != c)
        return bad(r, "a tab in the indentation");
    if (marker(l, end, "...")) {
        if (!rest_empty(l + 3, end, true))
            return bad(r, "unexpected text after '...'");
        r->started = r->closed = true;
        return 0;
    }
    if (r->closed)
        return bad(r, "content after the end of the document");
    if (marker(l, end, "---"))
        return doc_start(r, l, end);
    if (c > l)
        return block_line(r, c, end, (size_t)(c - l));
    if (*l == '-' && blank_or_end(l + 1, end)) { /* "KEY:\n- item", as Ruby writes */
        if (!r->key)
            return bad(r, "a sequence item under no key");
        return block_line(r, l, end, 0);
    }
    if (*l == '{' && !r->started) { /* "{...}" for the whole document */
        r->started = true;
        return root_flow(r, l, end);
    }
    return top_line(r, l, end);
}

/* Checks the bytes of line l[0..n): no NUL or control characters but tab,
 * and UTF-8 (jansson's own check, as every string is made by it). */
static int check_bytes(struct rel *r, const char *l, size_t n)
{
    bool high = false;
    for (size_t i = 0; i < n; i++) {
        unsigned char u = (unsigned char)l[i];
        if ((u < 0x20 && u != '\t') || u == 0x7f)
            return err_set(r->err, PIER_EINVAL, WHERE "control character 0x%02x", r->lineno, u);
        high |= u >= 0x80;
    }
    if (high) {
        json_t *s = json_stringn(l, n);
        if (!s)
            return bad(r, "not valid UTF-8");
        json_decref(s);
    }
    return 0;
}

int relyaml_parse(const char *data, size_t len, json_t **out, struct pier_err *err)
{
    *out = NULL;
    if (len > RELYAML_MAX_BYTES)
        return err_set(err, PIER_ETOOBIG, "bin/release output: larger than %d bytes",
                       RELYAML_MAX_BYTES);
    struct rel r = {.err = err, .root = json_object()};
    if (!r.root)
        return err_set(err, PIER_EINTERNAL, "bin/release output: out of memory");
    const char *p = data, *end = data + len;
    if (len >= 3 && memcmp(p, "\xef\xbb\xbf", 3) == 0) /* a UTF-8 byte order mark */
        p += 3;
    int rc = 0;
    for (r.lineno = 1; p < end && rc == 0; r.lineno++) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = (size_t)((nl ? nl : end) - p);
        if (n > 0 && p[n - 1] == '\r')
            n--;
        rc = check_bytes(&r, p, n);
        if (rc == 0)
            rc = line(&r, p, n);
        p = nl ? nl + 1 : end;
    }
    free(r.key);
    if (rc < 0) {
        json_decref(r.root);
        return rc;
    }
    *out = r.root;
    return 0;
}
