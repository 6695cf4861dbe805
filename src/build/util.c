/* util: small helpers the other files of pierslug share. */
#include <errno.h>
#include <unistd.h>

#include "build/slug.h"
#include "build/slugignore.h"

char *slug_path(const char *dir, const char *name)
{
    struct buf p = BUF_INIT;
    buf_printf(&p, "%s/%s", dir, name);
    return buf_detach(&p);
}

void slug_shell_quote(struct buf *b, const char *s)
{
    buf_putc(b, '\'');
    for (; *s; s++) {
        if (*s == '\'')
            buf_puts(b, "'\\''");
        else
            buf_putc(b, *s);
    }
    buf_putc(b, '\'');
}

bool slug_valid_env_name(const char *s, size_t len)
{
    if (len == 0 || (s[0] >= '0' && s[0] <= '9'))
        return false;
    for (size_t i = 0; i < len; i++)
        if (!(s[i] == '_' || (s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
              (s[i] >= '0' && s[i] <= '9')))
            return false;
    return true;
}

int slug_empty_dir(const char *dir, struct pier_err *err)
{
    struct slugignore *all = slugignore_parse("*", 1);
    size_t removed = 0;
    int rc = slugignore_apply(all, dir, &removed, err);
    slugignore_free(all);
    return rc;
}
