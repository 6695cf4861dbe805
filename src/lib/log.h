/* log: the one logger. One line per event, logfmt, on stderr:
 *   ts=2026-11-25T14:00:00.123456Z level=info comp=store msg="listening" addr=127.0.0.1:7001
 * The fields argument is itself logfmt ("k=%s n=%d"); values with spaces
 * should be quoted by the caller (reason=\"%s\"). Control characters in msg
 * and fields are escaped (\n, \x01), so outside text can never start a
 * line of its own; quotes and backslashes in msg are escaped too. Lines
 * are cut at 2 KiB. Thread-safe. */
#ifndef PIER_LOG_H
#define PIER_LOG_H

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };

/* Sets the lowest level printed. */
void log_set_level(enum log_level level);
/* Parses "debug", "info", "warn", "error"; returns 0 or -1 for an unknown name. */
int log_parse_level(const char *name, enum log_level *out);

void log_emit(enum log_level level, const char *comp, const char *msg, const char *fields, ...)
    __attribute__((format(printf, 4, 5)));

#define log_debug(comp, msg, ...) log_emit(LOG_DEBUG, comp, msg, __VA_ARGS__)
#define log_info(comp, msg, ...) log_emit(LOG_INFO, comp, msg, __VA_ARGS__)
#define log_warn(comp, msg, ...) log_emit(LOG_WARN, comp, msg, __VA_ARGS__)
#define log_error(comp, msg, ...) log_emit(LOG_ERROR, comp, msg, __VA_ARGS__)

#endif
