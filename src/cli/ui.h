/* ui: how pier talks to the person at the terminal. Errors name what was
 * wrong and say what to do next; long waits say what they wait for. */
#ifndef PIER_CLI_UI_H
#define PIER_CLI_UI_H

/* Prints "pier: MESSAGE" to stderr, and "  hint: HINT" when hint is set.
 * Returns 1, the exit status for a failed command. */
int ui_fail(const char *hint, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Like ui_fail for wrong usage: adds "see 'pier help CMD'" and returns 2. */
int ui_usage(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Reads a flag with a value at argv[*i], as "--name VALUE" or
 * "--name=VALUE": 1 with *out set (and *i past the value), 0 when argv[*i]
 * is not this flag, -1 when it lacks its value. */
int ui_flag_value(int argc, char **argv, int *i, const char *name, const char **out);
/* Starts a waiting line on stderr: "==> waiting for the controller...". */
void ui_wait_start(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Ticks the waiting line (a dot on a terminal, nothing otherwise). */
void ui_wait_tick(void);
/* Ends the waiting line with "done" or the given word. */
void ui_wait_end(const char *word);

#endif
