#include "lib/jsonx.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>

#include "lib/base64.h"

int jsonx_parse(const char *text, size_t len, json_t **out, struct pier_err *err)
{
    json_error_t je;
    json_t *j = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (!j)
        return err_set(err, PIER_EINVAL, "malformed JSON at line %d column %d: %s", je.line,
                       je.column, je.text);
    *out = j;
    return 0;
}

int jsonx_parse_object(const char *text, size_t len, json_t **out, struct pier_err *err)
{
    int r = jsonx_parse(text, len, out, err);
    if (r < 0)
        return r;
    if (!json_is_object(*out)) {
        json_decref(*out);
        *out = NULL;
        return err_set(err, PIER_EINVAL, "the request body must be a JSON object");
    }
    return 0;
}

int jsonx_get_int64(const json_t *obj, const char *field, int64_t *out, struct pier_err *err)
{
    json_t *v = json_object_get(obj, field); /* borrowed */
    if (!v || json_is_null(v))
        return 0;
    if (json_is_integer(v)) {
        *out = (int64_t)json_integer_value(v);
        return 1;
    }
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        char *end;
        errno = 0;
        long long n = strtoll(s, &end, 10);
        if (*s && !*end && errno == 0) {
            *out = n;
            return 1;
        }
    }
    return err_set(err, PIER_EINVAL,
                   "field \"%s\" must be an integer (a number or a decimal string)", field);
}

int jsonx_get_str(const json_t *obj, const char *field, const char **out, struct pier_err *err)
{
    json_t *v = json_object_get(obj, field);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_string(v))
        return err_set(err, PIER_EINVAL, "field \"%s\" must be a string", field);
    *out = json_string_value(v);
    return 1;
}

int jsonx_get_bool(const json_t *obj, const char *field, bool *out, struct pier_err *err)
{
    json_t *v = json_object_get(obj, field);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_boolean(v))
        return err_set(err, PIER_EINVAL, "field \"%s\" must be true or false", field);
    *out = json_is_true(v);
    return 1;
}

int jsonx_get_obj(const json_t *obj, const char *field, json_t **out, struct pier_err *err)
{
    json_t *v = json_object_get(obj, field);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_object(v))
        return err_set(err, PIER_EINVAL, "field \"%s\" must be an object", field);
    *out = v;
    return 1;
}

int jsonx_get_array(const json_t *obj, const char *field, json_t **out, struct pier_err *err)
{
    json_t *v = json_object_get(obj, field);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_array(v))
        return err_set(err, PIER_EINVAL, "field \"%s\" must be an array", field);
    *out = v;
    return 1;
}

int jsonx_get_b64(const json_t *obj, const char *field, struct buf *out, struct pier_err *err)
{
    const char *s = NULL;
    int r = jsonx_get_str(obj, field, &s, err);
    if (r <= 0)
        return r;
    if (base64_decode(out, s, json_string_length(json_object_get(obj, field))) < 0)
        return err_set(err, PIER_EINVAL, "field \"%s\" is not valid base64", field);
    return 1;
}

static int dump_cb(const char *data, size_t size, void *ud)
{
    buf_append(ud, data, size);
    return 0;
}

void jsonx_dump(struct buf *out, const json_t *j)
{
    json_dump_callback(j, dump_cb, out, JSON_COMPACT | JSON_ENCODE_ANY);
}

void jsonx_set_int64_str(json_t *obj, const char *field, int64_t v)
{
    char s[24];
    snprintf(s, sizeof(s), "%" PRId64, v);
    json_object_set_new(obj, field, json_string(s)); /* steals the new string */
}

void jsonx_set_b64(json_t *obj, const char *field, const void *data, size_t len)
{
    struct buf b = BUF_INIT;
    base64_encode(&b, data, len);
    json_object_set_new(obj, field, json_stringn(b.p ? b.p : "", b.len));
    buf_free(&b);
}
