/* git: what the CLI does in the user's git repository so that a plain
 * `git push pier main` deploys: the remote `pier create` adds
 * ("<git_url>/<app>.git"), and for an http(s) git URL the credential
 * helper (`pier git-credentials`, in the repository's config) that answers
 * git with the cluster key. git itself runs as a child process; nothing
 * here parses a repository. */
#ifndef PIER_CLI_GIT_H
#define PIER_CLI_GIT_H

#include <stdbool.h>

#include "cli/config.h"
#include "lib/err.h"

/* Checks a git URL from the user: http://, https:// or ssh://, a host, no
 * spaces, query or fragment. *out gets a copy without trailing '/' (the
 * caller frees it). PIER_EINVAL with a message naming url otherwise. */
int git_url_check(const char *url, char **out, struct pier_err *err);

/* Whether name is a remote name pier passes to git: letters, digits, '.',
 * '_' and '-', not starting with '-' or '.', at most 63 characters. */
bool git_remote_name_ok(const char *name);

/* Points the git remote named remote of the repository around the current
 * directory at app's repository on the cluster cfg picks for cluster (its
 * git URL from config_git_url), and for an http(s) git URL sets the
 * credential helper there. For an https git URL of a cluster with a CA of
 * its own the remote is pier::<git url>/<app>.git, which git hands to
 * git-remote-pier (git_remote_helper), and http.<git url>/.sslCAInfo is set
 * too (config_ca_file). A remote of that name for the same repository with
 * or without pier:: is updated. Everything it says goes to stderr: the
 * remote it added, or why it added none (no repository, no git URL
 * configured, a remote of that name pointing elsewhere, which it leaves
 * alone) with the command that fixes it. Returns 0, or 1 when git failed
 * (printed). */
int git_remote_setup(const struct config *cfg, const char *cluster, const char *remote,
                     const char *app);

/* git-remote-pier REMOTE URL (this binary under that name): git runs it
 * for a remote URL pier::https://...; URL is the https one. Finds the
 * cluster whose git URL URL is under, writes its CA file
 * (config_ca_file), points GIT_SSL_CAINFO at it (which git lets win over
 * any http.*.sslCAInfo, so a GIT_SSL_CAINFO of the user's would defeat
 * the config) and unsets GIT_SSL_CAPATH, then execs git's own
 * `git remote-https REMOTE URL`. No cluster found: a warning, and git's
 * helper with the environment as it is. Returns only on failure (exit
 * status). */
int git_remote_helper(int argc, char **argv);

#endif
