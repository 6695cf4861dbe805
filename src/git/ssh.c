/* ssh: git over SSH for `pierd gitreceive` (gitreceive.h, docs/gitreceive.md).
 *
 * One thread accepts; each connection gets a thread of its own, so a slow
 * client or a long build only ever holds its own thread. A connection goes
 * through three stages:
 *   1. key exchange and public-key authentication, which must end with an
 *      exec (or another channel request) within the auth timeout;
 *   2. the request: `git-receive-pack '<app>.git'` / `git-upload-pack ...`
 *      runs git in the app's repository; anything else gets a message on
 *      stderr and exit status 1;
 *   3. the relay between the channel and git's pipes (ssh_relay.h), which
 *      also takes a client that stopped reading or answering for gone.
 * Before authentication a connection is cheap to open and costs a thread
 * and controller questions: one address may hold only so many of them,
 * each may offer only a few keys, and the controller's answers are kept
 * for a few seconds (gitrecv_key_allowed).
 * gitrecv_ssh_stop() wakes the acceptor through a pipe and every connection
 * by shutting its socket down: each thread then kills its git (process
 * group) and returns, and stop joins them all. */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <libssh/callbacks.h>
#include <libssh/libssh.h>
#include <libssh/server.h>

#include "git/gitreceive.h"
#include "git/ssh_relay.h"
#include "lib/base64.h"
#include "lib/buf.h"
#include "lib/cleanup.h"
#include "lib/clock.h"
#include "lib/fs.h"
#include "lib/log.h"

#define COMP "gitreceive"
/* Connections at once, and of those not yet authenticated (as sshd's
 * MaxStartups); more are closed at accept. */
#define MAX_CONNS 512
#define MAX_UNAUTHED 128
/* Of those not yet authenticated, how many one address may hold: a single
 * host cannot lock everyone else out. */
#define MAX_UNAUTHED_PER_HOST 16
/* Keys a connection may offer (as sshd's MaxAuthTries). */
#define MAX_AUTH_TRIES 6
/* Unknown keys a connection is told about by name. */
#define MAX_KEY_BANNERS 3
/* From connect to the exec request; PIER_SSH_AUTH_TIMEOUT overrides. */
#define AUTH_TIMEOUT_S 30
/* After our close, how long the client may take to hang up. */
#define LINGER_MS 30000

struct gitrecv_ssh {
    const struct gitrecv *g;
    ssh_bind bind;
    int listen_fd;
    int wake[2]; /* stop writes to wake[1]; the acceptor polls wake[0] */
    int auth_timeout_s;
    int stall_s; /* RELAY_STALL_S or PIER_SSH_STALL_TIMEOUT */
    pthread_t acceptor;
    bool acceptor_started;
    atomic_bool stopping; /* no new connections; only pushes under way go on */
    atomic_bool killing;  /* nothing goes on */
    pthread_mutex_t lock; /* guards conns, nconns, nunauthed and every conn's fd, done,
                             counted_unauthed */
    struct conn *conns;
    int nconns, nunauthed;
};

enum request { REQ_NONE, REQ_GIT, REQ_REFUSE };

struct conn {
    struct gitrecv_ssh *srv;
    struct conn *next;
    pthread_t thread;
    int fd;    /* the socket until libssh closes it, then -1 (srv->lock) */
    bool done; /* the thread has finished (srv->lock) */
    bool counted_unauthed;
    atomic_bool pushing; /* git-receive-pack runs: a stop lets it finish */
    char host[64];       /* the peer's address, numeric */
    char peer[80];       /* and its port: host:port */
    ssh_session session;
    ssh_channel channel;
    ssh_event event;
    struct ssh_server_callbacks_struct server_cb;
    struct ssh_channel_callbacks_struct channel_cb;
    /* authentication */
    bool authed;
    int auth_tries; /* keys offered */
    int auth_calls; /* public-key callbacks */
    int banners;    /* unknown keys named to the client */
    char user[64];
    char fp[64];      /* the authenticated key's fingerprint */
    char last_fp[64]; /* the controller's last answer, for the signature phase */
    bool last_ok;
    bool banner_sent; /* the controller-down banner */
    /* the request */
    enum request req;
    bool pty;
    char what[256];   /* a refused request, for the message */
    char service[16]; /* "receive-pack" or "upload-pack" */
    char app[128];
    char protocol[64]; /* GIT_PROTOCOL from an env request */
};

/* ---- small helpers ---- */

/* "SHA256:" + unpadded base64 of the key blob's SHA-256, as OpenSSH prints. */
static int key_fingerprint(ssh_key key, char *out, size_t size)
{
    unsigned char *hash = NULL;
    size_t hlen = 0;
    if (ssh_get_publickey_hash(key, SSH_PUBLICKEY_HASH_SHA256, &hash, &hlen) != SSH_OK)
        return -1;
    cleanup_buf struct buf b = BUF_INIT;
    buf_puts(&b, "SHA256:");
    base64_encode(&b, hash, hlen);
    ssh_clean_pubkey_hash(&hash);
    while (b.len > 0 && b.p[b.len - 1] == '=')
        b.p[--b.len] = '\0';
    if (b.len >= size)
        return -1;
    memcpy(out, b.p, b.len + 1);
    return 0;
}

/* Outside text made safe to echo back and to log: printable ASCII without
 * quotes or backslashes (each becomes ?), cut at size. */
static void printable(char *out, size_t size, const char *in)
{
    size_t n = 0;
    for (; in && *in && n + 4 < size; in++)
        out[n++] = (*in >= 0x20 && *in < 0x7f && *in != '"' && *in != '\\') ? *in : '?';
    if (in && *in)
        out[n++] = '.', out[n++] = '.', out[n++] = '.';
    out[n] = '\0';
}

/* Parses `git-receive-pack 'app.git'` (also `git receive-pack`, upload-pack,
 * a leading '/', no quotes, no ".git"). Returns 0 with service and app set,
 * -1 when cmd is not a git command we serve, -2 when it is one but its path
 * names no app. */
static int parse_git_command(const char *cmd, char service[16], char app[128])
{
    static const char *const names[] = {"receive-pack", "upload-pack"};
    const char *rest = NULL;
    for (size_t i = 0; i < 2 && !rest; i++) {
        size_t n = strlen(names[i]);
        if ((strncmp(cmd, "git-", 4) == 0 || strncmp(cmd, "git ", 4) == 0) &&
            strncmp(cmd + 4, names[i], n) == 0 && cmd[4 + n] == ' ') {
            snprintf(service, 16, "%s", names[i]);
            rest = cmd + 4 + n;
        }
    }
    if (!rest)
        return -1;
    while (*rest == ' ')
        rest++;
    size_t len = strlen(rest);
    while (len > 0 && (rest[len - 1] == ' ' || rest[len - 1] == '\n'))
        len--;
    if (len >= 2 && rest[0] == '\'' && rest[len - 1] == '\'')
        rest++, len -= 2;
    if (len > 0 && rest[0] == '/')
        rest++, len--;
    if (len > 0 && rest[len - 1] == '/')
        len--;
    if (len > 4 && memcmp(rest + len - 4, ".git", 4) == 0)
        len -= 4;
    if (len == 0 || len >= 128)
        return -2;
    memcpy(app, rest, len);
    app[len] = '\0';
    return gitrecv_app_name_ok(app) ? 0 : -2;
}

/* ---- the host key ---- */

/* Loads key_file, or makes an ed25519 key there (mode 0600, written to a
 * temporary file and renamed) when there is none. */
static int host_key_load(const char *key_file, ssh_key *out, struct pier_err *err)
{
    struct stat st;
    if (stat(key_file, &st) == 0) {
        if (ssh_pki_import_privkey_file(key_file, NULL, NULL, NULL, out) != SSH_OK)
            return err_set(err, PIER_EINVAL, "ssh host key %s: not a private key libssh can read",
                           key_file);
        if (st.st_mode & 077)
            log_warn(COMP, "ssh host key readable by others", "file=%s mode=%o", key_file,
                     (unsigned)(st.st_mode & 0777));
        return 0;
    }
    if (errno != ENOENT)
        return err_set(err, -errno, "ssh host key %s: %s", key_file, strerror(errno));
    ssh_key key = NULL;
    char *pem = NULL;
    if (ssh_pki_generate(SSH_KEYTYPE_ED25519, 0, &key) != SSH_OK ||
        ssh_pki_export_privkey_base64(key, NULL, NULL, NULL, &pem) != SSH_OK) {
        ssh_key_free(key);
        return err_set(err, PIER_EINTERNAL, "ssh host key %s: could not make an ed25519 key",
                       key_file);
    }
    int rc = fs_write_atomic(key_file, pem, strlen(pem), 0600, true, err);
    ssh_string_free_char(pem);
    if (rc < 0) {
        ssh_key_free(key);
        return err_wrap(err, rc, "ssh host key");
    }
    log_info(COMP, "ssh host key made", "file=%s type=ed25519", key_file);
    *out = key;
    return 0;
}

/* ---- authentication and requests (libssh callbacks, in the conn's thread) ---- */

/* Shows the client a message before it is refused (an SSH banner: ssh
 * prints it on the terminal, git passes it on). */
static void banner(ssh_session session, const char *msg)
{
    ssh_string s = ssh_string_from_char(msg);
    if (s) {
        ssh_send_issue_banner(session, s);
        ssh_string_free(s);
    }
}

static int on_auth_pubkey(ssh_session session, const char *user, struct ssh_key_struct *pubkey,
                          char state, void *userdata)
{
    struct conn *c = userdata;
    char fp[64];
    if (state != SSH_PUBLICKEY_STATE_NONE && state != SSH_PUBLICKEY_STATE_VALID)
        return SSH_AUTH_DENIED;
    /* A key is asked about, then signed with: two calls per key. */
    if (++c->auth_calls > 2 * MAX_AUTH_TRIES || key_fingerprint(pubkey, fp, sizeof fp) < 0)
        return SSH_AUTH_DENIED;
    if (strcmp(fp, c->last_fp) != 0) {
        if (++c->auth_tries > MAX_AUTH_TRIES)
            return SSH_AUTH_DENIED;
        struct pier_err err = {0};
        int rc = gitrecv_key_allowed(c->srv->g, fp, &err);
        snprintf(c->last_fp, sizeof c->last_fp, "%s", fp);
        c->last_ok = rc == 0;
        if (rc == PIER_ENOTFOUND && c->banners < MAX_KEY_BANNERS) {
            char msg[200];
            snprintf(msg, sizeof msg,
                     "pier: key %s is not registered: add it with 'pier keys add'\r\n", fp);
            banner(session, msg);
            c->banners++;
        } else if (rc < 0 && rc != PIER_ENOTFOUND) {
            log_error(COMP, "ssh key check failed", "peer=%s fingerprint=%s reason=\"%s\"", c->peer,
                      fp, err.msg);
            if (!c->banner_sent) {
                char msg[600];
                snprintf(msg, sizeof msg, "pier: cannot check SSH keys now: %s; try again\r\n",
                         err.msg);
                banner(session, msg);
            }
            c->banner_sent = true;
        }
    }
    if (!c->last_ok)
        return SSH_AUTH_DENIED;
    if (state == SSH_PUBLICKEY_STATE_VALID) {
        c->authed = true;
        printable(c->user, sizeof c->user, user);
        snprintf(c->fp, sizeof c->fp, "%s", fp);
    }
    return SSH_AUTH_SUCCESS;
}

static int refuse(struct conn *c, const char *what)
{
    if (c->req != REQ_NONE)
        return 1;
    c->req = REQ_REFUSE;
    printable(c->what, sizeof c->what, what);
    return 0;
}

static int on_exec(ssh_session s, ssh_channel ch, const char *command, void *userdata)
{
    (void)s, (void)ch;
    struct conn *c = userdata;
    if (c->req != REQ_NONE)
        return 1;
    int rc = parse_git_command(command, c->service, c->app);
    if (rc == 0 && c->pty)
        return refuse(c, "a terminal (pty)");
    if (rc == -1)
        return refuse(c, command);
    c->req = REQ_GIT;
    if (rc == -2)
        c->app[0] = '\0', printable(c->what, sizeof c->what, command);
    return 0;
}

static int on_shell(ssh_session s, ssh_channel ch, void *userdata)
{
    (void)s, (void)ch;
    return refuse(userdata, "a shell");
}

static int on_subsystem(ssh_session s, ssh_channel ch, const char *name, void *userdata)
{
    (void)s, (void)ch;
    char what[200];
    snprintf(what, sizeof what, "the subsystem %.100s", name);
    return refuse(userdata, what);
}

static int on_pty(ssh_session s, ssh_channel ch, const char *term, int w, int h, int pw, int ph,
                  void *userdata)
{
    (void)s, (void)ch, (void)term, (void)w, (void)h, (void)pw, (void)ph;
    ((struct conn *)userdata)->pty = true;
    return 0; /* the shell or exec that follows is refused */
}

/* Only GIT_PROTOCOL is taken (git asks for protocol v2 with it). */
static int on_env(ssh_session s, ssh_channel ch, const char *name, const char *value,
                  void *userdata)
{
    (void)s, (void)ch;
    struct conn *c = userdata;
    if (strcmp(name, "GIT_PROTOCOL") != 0 || strlen(value) >= sizeof c->protocol ||
        value[strspn(value, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                            "=:._,-")] != '\0')
        return 1;
    snprintf(c->protocol, sizeof c->protocol, "%s", value);
    return 0;
}

static ssh_channel on_channel_open(ssh_session session, void *userdata)
{
    struct conn *c = userdata;
    if (!c->authed || c->channel)
        return NULL;
    c->channel = ssh_channel_new(session);
    if (!c->channel)
        return NULL;
    memset(&c->channel_cb, 0, sizeof c->channel_cb);
    c->channel_cb.userdata = c;
    c->channel_cb.channel_exec_request_function = on_exec;
    c->channel_cb.channel_shell_request_function = on_shell;
    c->channel_cb.channel_subsystem_request_function = on_subsystem;
    c->channel_cb.channel_pty_request_function = on_pty;
    c->channel_cb.channel_env_request_function = on_env;
    ssh_callbacks_init(&c->channel_cb);
    ssh_set_channel_callbacks(c->channel, &c->channel_cb);
    return c->channel;
}

/* The relay goes on while the server does not stop (or stops, but lets
 * this push finish). */
static bool server_lets(void *ud)
{
    struct conn *c = ud;
    struct gitrecv_ssh *s = c->srv;
    return !atomic_load(&s->killing) && !(atomic_load(&s->stopping) && !atomic_load(&c->pushing));
}

/* Whether the connection goes on: the client is there, and the server
 * lets it. */
static bool conn_alive(struct conn *c)
{
    return server_lets(c) && ssh_is_connected(c->session);
}

/* Stage 1: key exchange, authentication, and a channel with a request, all
 * within the auth timeout. Returns 0 when c->req is set. */
static int conn_handshake(struct conn *c)
{
    int64_t deadline = clock_now_ms() + (int64_t)c->srv->auth_timeout_s * 1000;
    long timeout = c->srv->auth_timeout_s;
    ssh_options_set(c->session, SSH_OPTIONS_TIMEOUT, &timeout);
    ssh_set_auth_methods(c->session, SSH_AUTH_METHOD_PUBLICKEY);
    memset(&c->server_cb, 0, sizeof c->server_cb);
    c->server_cb.userdata = c;
    c->server_cb.auth_pubkey_function = on_auth_pubkey;
    c->server_cb.channel_open_request_session_function = on_channel_open;
    ssh_callbacks_init(&c->server_cb);
    ssh_set_server_callbacks(c->session, &c->server_cb);
    if (ssh_handle_key_exchange(c->session) != SSH_OK) {
        log_info(COMP, "ssh handshake failed", "peer=%s reason=\"%s\"", c->peer,
                 ssh_get_error(c->session));
        return -1;
    }
    ssh_set_blocking(c->session, 0);
    c->event = ssh_event_new();
    if (!c->event || ssh_event_add_session(c->event, c->session) != SSH_OK)
        return -1;
    while (c->req == REQ_NONE) {
        int64_t left = deadline - clock_now_ms();
        if (c->auth_tries > MAX_AUTH_TRIES || c->auth_calls > 2 * MAX_AUTH_TRIES) {
            log_info(COMP, "ssh too many keys offered", "peer=%s limit=%d", c->peer,
                     MAX_AUTH_TRIES);
            return -1;
        }
        if (left <= 0) {
            log_info(COMP, "ssh client too slow", "peer=%s authenticated=%s", c->peer,
                     c->authed ? "yes" : "no");
            return -1;
        }
        if (ssh_event_dopoll(c->event, left > 1000 ? 1000 : (int)left) == SSH_ERROR ||
            !conn_alive(c))
            return -1;
        if (c->authed && c->counted_unauthed) {
            pthread_mutex_lock(&c->srv->lock);
            c->srv->nunauthed--;
            c->counted_unauthed = false;
            pthread_mutex_unlock(&c->srv->lock);
        }
    }
    return 0;
}

/* ---- stage 3: git as a child, relayed (ssh_relay.c) ---- */

/* git's environment: gitrecv_env()'s plus the client's GIT_PROTOCOL. The
 * array borrows env's strings and *proto; free the array alone. */
static char **git_envp(struct conn *c, char **env, char **proto)
{
    size_t n = 0, k = 0;
    while (env[n])
        n++;
    char **envp = xcalloc(n + 2, sizeof *envp);
    for (size_t i = 0; i < n; i++)
        if (strncmp(env[i], "GIT_PROTOCOL=", 13) != 0)
            envp[k++] = env[i];
    if (c->protocol[0]) {
        struct buf b = BUF_INIT;
        buf_printf(&b, "GIT_PROTOCOL=%s", c->protocol);
        envp[k++] = *proto = buf_detach(&b);
    }
    return envp;
}

/* Our side of the end: EOF, exit status, close; then lets the client hang up. */
static void finish_channel(struct conn *c, int status)
{
    ssh_channel_send_eof(c->channel);
    if (WIFSIGNALED(status)) {
        const char *name = sigabbrev_np(WTERMSIG(status));
        ssh_channel_request_send_exit_signal(c->channel, name ? name : "KILL",
                                             WCOREDUMP(status) ? 1 : 0, "", "");
    } else {
        ssh_channel_request_send_exit_status(c->channel, WEXITSTATUS(status));
    }
    ssh_channel_close(c->channel);
    for (int64_t end = clock_now_ms() + LINGER_MS; conn_alive(c) && clock_now_ms() < end;)
        if (ssh_event_dopoll(c->event, 200) == SSH_ERROR)
            break;
}

static void say_refused(struct conn *c, const char *fmt, const char *arg)
{
    char msg[700];
    int n = snprintf(msg, sizeof msg, fmt, arg);
    if (n > (int)sizeof msg - 1)
        n = (int)sizeof msg - 1;
    ssh_channel_write_stderr(c->channel, msg, (uint32_t)n);
    finish_channel(c, 1 << 8); /* exit status 1 */
}

/* Stage 2 and 3 for a git request. */
static void serve_git(struct conn *c)
{
    struct pier_err err = {0};
    if (!c->app[0]) {
        say_refused(c, "pier: '%s' names no app's repository: use ssh://git@HOST/<app>.git\n",
                    c->what);
        return;
    }
    cleanup_free char *repo = NULL;
    struct gitrecv_app app = {0};
    if (gitrecv_repo_prepare(c->srv->g, c->app, &app, &repo, &err) < 0) {
        log_info(COMP, "ssh request refused", "peer=%s fingerprint=%s app=%s reason=\"%s\"",
                 c->peer, c->fp, c->app, err.msg);
        say_refused(c, "pier: %s\n", err.msg);
        return;
    }
    int64_t start = clock_now_ms();
    log_info(COMP, "ssh git started",
             "peer=%s user=%s fingerprint=%s app=%s service=%s protocol=%s app_id=%s", c->peer,
             c->user, c->fp, app.name, c->service, c->protocol[0] ? c->protocol : "v0", app.id);
    atomic_store(&c->pushing, strcmp(c->service, "receive-pack") == 0);
    char **env = gitrecv_env(c->srv->g, &app);
    cleanup_free char *proto = NULL;
    cleanup_free char **envp = git_envp(c, env, &proto);
    char *argv[] = {"git", c->service, repo, NULL};
    const struct relay_io io = {
        .session = c->session,
        .channel = c->channel,
        .event = c->event,
        .go_on = server_lets,
        .ud = c,
        .stall_ms = c->srv->stall_s * 1000,
    };
    int status = 0;
    enum relay_end end = RELAY_EXITED;
    int rc = relay_git(&io, argv, envp, repo, &status, &end, &err);
    gitrecv_env_free(env);
    if (rc < 0) {
        log_error(COMP, "ssh git failed to start", "app=%s reason=\"%s\"", app.name, err.msg);
        say_refused(c, "pier: %s\n", "the server could not run git");
        return;
    }
    static const char *const why[] = {
        [RELAY_EXITED] = "",
        [RELAY_CLIENT_GONE] = " client=gone",
        [RELAY_STALLED] = " client=stalled",
        [RELAY_CUT] = " cut=stopping",
    };
    log_info(COMP, "ssh git ended", "peer=%s fingerprint=%s app=%s service=%s %s=%d ms=%lld%s",
             c->peer, c->fp, app.name, c->service, WIFSIGNALED(status) ? "signal" : "status",
             WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status),
             (long long)(clock_now_ms() - start), why[end]);
    if (end == RELAY_EXITED)
        finish_channel(c, status);
}

static void conn_serve(struct conn *c)
{
    if (conn_handshake(c) < 0)
        return;
    if (c->req == REQ_REFUSE) {
        log_info(COMP, "ssh request refused", "peer=%s fingerprint=%s request=\"%s\"", c->peer,
                 c->fp, c->what);
        say_refused(c, "pier: only git push and git fetch are served here; got: %s\n", c->what);
        return;
    }
    serve_git(c);
}

static void *conn_main(void *arg)
{
    struct conn *c = arg;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL); /* SIGPIPE becomes EPIPE; the main thread gets
                                               SIGTERM */
    conn_serve(c);
    if (c->event)
        ssh_event_free(c->event);
    if (c->channel)
        ssh_channel_free(c->channel);
    pthread_mutex_lock(&c->srv->lock);
    c->fd = -1; /* from here on libssh closes it: stop must not shut a reused number down */
    pthread_mutex_unlock(&c->srv->lock);
    ssh_disconnect(c->session);
    ssh_free(c->session);
    c->session = NULL;
    pthread_mutex_lock(&c->srv->lock);
    if (c->counted_unauthed)
        c->srv->nunauthed--;
    c->srv->nconns--;
    c->done = true;
    pthread_mutex_unlock(&c->srv->lock);
    return NULL;
}

/* ---- accepting ---- */

/* Joins and frees the finished connections (all of them when all is set,
 * waiting for each). Returns whether none is left. */
static bool reap(struct gitrecv_ssh *s, bool all)
{
    for (;;) {
        struct conn *found = NULL;
        pthread_mutex_lock(&s->lock);
        for (struct conn **pp = &s->conns; *pp; pp = &(*pp)->next)
            if ((*pp)->done || all) {
                found = *pp;
                *pp = found->next;
                break;
            }
        bool empty = !s->conns;
        pthread_mutex_unlock(&s->lock);
        if (!found)
            return empty;
        pthread_join(found->thread, NULL);
        free(found);
    }
}

/* Shuts the sockets down (all, or those of connections not pushing): their
 * threads wake up, see they must end, and kill their git. */
static void cut(struct gitrecv_ssh *s, bool all)
{
    pthread_mutex_lock(&s->lock);
    for (struct conn *c = s->conns; c; c = c->next)
        if (c->fd >= 0 && (all || !atomic_load(&c->pushing)))
            shutdown(c->fd, SHUT_RDWR);
    pthread_mutex_unlock(&s->lock);
}

static void accept_one(struct gitrecv_ssh *s)
{
    struct sockaddr_storage sa;
    socklen_t salen = sizeof sa;
    int fd = accept4(s->listen_fd, (struct sockaddr *)&sa, &salen, SOCK_CLOEXEC);
    if (fd < 0) {
        if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED) {
            log_warn(COMP, "ssh accept failed", "reason=\"%s\"", strerror(errno));
            poll(NULL, 0, 100); /* EMFILE and the like: do not spin */
        }
        return;
    }
    char host[64] = "?", port[16] = "?";
    getnameinfo((struct sockaddr *)&sa, salen, host, sizeof host, port, sizeof port,
                NI_NUMERICHOST | NI_NUMERICSERV);
    pthread_mutex_lock(&s->lock);
    bool full = s->nconns >= MAX_CONNS || s->nunauthed >= MAX_UNAUTHED;
    int from_host = 0;
    for (struct conn *o = s->conns; o && !full; o = o->next)
        if (o->counted_unauthed && strcmp(o->host, host) == 0)
            from_host++;
    pthread_mutex_unlock(&s->lock);
    if (full || from_host >= MAX_UNAUTHED_PER_HOST) {
        log_warn(COMP,
                 full ? "ssh connection dropped: too many at once"
                      : "ssh connection dropped: too many unauthenticated from one address",
                 "peer=%s:%s", host, port);
        close(fd);
        return;
    }
    struct conn *c = xcalloc(1, sizeof *c);
    c->srv = s;
    c->fd = fd;
    snprintf(c->host, sizeof c->host, "%s", host);
    snprintf(c->peer, sizeof c->peer, "%s:%s", host, port);
    c->session = ssh_new();
    if (!c->session || ssh_bind_accept_fd(s->bind, c->session, fd) != SSH_OK) {
        log_warn(COMP, "ssh accept failed", "peer=%s reason=\"%s\"", c->peer,
                 ssh_get_error(s->bind));
        bool owned = c->session && ssh_get_fd(c->session) == fd;
        ssh_free(c->session);
        if (!owned)
            close(fd);
        free(c);
        return;
    }
    pthread_mutex_lock(&s->lock);
    s->nconns++;
    s->nunauthed++;
    c->counted_unauthed = true;
    c->next = s->conns;
    s->conns = c;
    int rc = pthread_create(&c->thread, NULL, conn_main, c);
    if (rc != 0) {
        s->conns = c->next;
        s->nconns--, s->nunauthed--;
    }
    pthread_mutex_unlock(&s->lock);
    if (rc != 0) {
        log_error(COMP, "ssh connection dropped", "peer=%s reason=\"%s\"", c->peer, strerror(rc));
        ssh_free(c->session);
        free(c);
    }
}

static void *accept_main(void *arg)
{
    struct gitrecv_ssh *s = arg;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    struct pollfd p[2] = {{.fd = s->listen_fd, .events = POLLIN},
                          {.fd = s->wake[0], .events = POLLIN}};
    while (!atomic_load(&s->stopping)) {
        int n = poll(p, 2, 1000);
        reap(s, false);
        if (n > 0 && (p[1].revents & POLLIN))
            break;
        if (n > 0 && (p[0].revents & POLLIN))
            accept_one(s);
    }
    return NULL;
}

static int listen_on(const char *addr, struct pier_err *err)
{
    const char *colon = strrchr(addr, ':');
    if (!colon || !colon[1])
        return err_set(err, PIER_EINVAL, "--ssh %s: want HOST:PORT", addr);
    char host[256];
    size_t hlen = (size_t)(colon - addr);
    if (hlen >= 2 && addr[0] == '[' && addr[hlen - 1] == ']')
        addr++, hlen -= 2;
    if (hlen >= sizeof host)
        return err_set(err, PIER_EINVAL, "--ssh %s: host too long", addr);
    memcpy(host, addr, hlen);
    host[hlen] = '\0';
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    int grc = getaddrinfo(hlen ? host : NULL, colon + 1, &hints, &res);
    if (grc != 0)
        return err_set(err, PIER_EINVAL, "--ssh %s: %s", addr, gai_strerror(grc));
    int fd = -1, e = 0;
    for (struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        int one = 1;
        if (fd >= 0 && (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
                        bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 128) < 0)) {
            e = errno;
            close(fd);
            fd = -1;
        } else if (fd < 0) {
            e = errno;
        }
    }
    freeaddrinfo(res);
    if (fd < 0)
        return err_set(err, -e, "ssh listening on %s: %s", addr, strerror(e));
    return fd;
}

int gitrecv_ssh_start(const struct gitrecv *g, const char *addr, const char *key_file,
                      struct gitrecv_ssh **out, struct pier_err *err)
{
    *out = NULL;
    int timeout = AUTH_TIMEOUT_S;
    const char *env = getenv("PIER_SSH_AUTH_TIMEOUT");
    if (env && *env) {
        char *end;
        long v = strtol(env, &end, 10);
        if (*end || v < 1 || v > 3600)
            return err_set(err, PIER_EINVAL, "PIER_SSH_AUTH_TIMEOUT=%s: want seconds, 1 to 3600",
                           env);
        timeout = (int)v;
    }
    int stall = RELAY_STALL_S;
    env = getenv("PIER_SSH_STALL_TIMEOUT");
    if (env && *env) {
        char *end;
        long v = strtol(env, &end, 10);
        if (*end || v < 1 || v > 86400)
            return err_set(err, PIER_EINVAL, "PIER_SSH_STALL_TIMEOUT=%s: want seconds, 1 to 86400",
                           env);
        stall = (int)v;
    }
    ssh_key key = NULL;
    int rc = host_key_load(key_file, &key, err);
    if (rc < 0)
        return rc;
    char fp[64] = "?";
    key_fingerprint(key, fp, sizeof fp);
    struct gitrecv_ssh *s = xcalloc(1, sizeof *s);
    s->g = g;
    s->auth_timeout_s = timeout;
    s->stall_s = stall;
    s->listen_fd = s->wake[0] = s->wake[1] = -1;
    atomic_init(&s->stopping, false);
    atomic_init(&s->killing, false);
    pthread_mutex_init(&s->lock, NULL);
    s->bind = ssh_bind_new();
    bool no_config = false;
    if (!s->bind ||
        ssh_bind_options_set(s->bind, SSH_BIND_OPTIONS_PROCESS_CONFIG, &no_config) < 0 ||
        ssh_bind_options_set(s->bind, SSH_BIND_OPTIONS_IMPORT_KEY, key) < 0) {
        ssh_key_free(key);
        gitrecv_ssh_stop(s);
        return err_set(err, PIER_EINTERNAL, "ssh: libssh refused the host key %s", key_file);
    }
    /* the bind owns the key now */
    s->listen_fd = listen_on(addr, err);
    if (s->listen_fd < 0) {
        rc = s->listen_fd;
        gitrecv_ssh_stop(s);
        return rc;
    }
    if (pipe2(s->wake, O_CLOEXEC) < 0) {
        rc = err_set(err, -errno, "pipe: %s", strerror(errno));
        gitrecv_ssh_stop(s);
        return rc;
    }
    rc = pthread_create(&s->acceptor, NULL, accept_main, s);
    if (rc != 0) {
        gitrecv_ssh_stop(s);
        return err_set(err, -rc, "ssh: starting a thread: %s", strerror(rc));
    }
    s->acceptor_started = true;
    log_info(COMP, "ssh listening",
             "addr=%s host_key=%s fingerprint=%s auth_timeout=%d stall_timeout=%d", addr, key_file,
             fp, timeout, stall);
    *out = s;
    return 0;
}

int gitrecv_ssh_local(const struct gitrecv_ssh *s, char *host, size_t size)
{
    struct sockaddr_storage sa;
    socklen_t len = sizeof sa;
    char port[16] = "0";
    host[0] = '\0';
    if (getsockname(s->listen_fd, (struct sockaddr *)&sa, &len) == 0)
        getnameinfo((struct sockaddr *)&sa, len, host, (socklen_t)size, port, sizeof port,
                    NI_NUMERICHOST | NI_NUMERICSERV);
    return atoi(port);
}

void gitrecv_ssh_stop(struct gitrecv_ssh *s)
{
    if (!s)
        return;
    atomic_store(&s->stopping, true);
    if (s->acceptor_started) {
        if (write(s->wake[1], "x", 1) < 0)
            log_warn(COMP, "ssh stop: waking the acceptor", "reason=\"%s\"", strerror(errno));
        pthread_join(s->acceptor, NULL);
    }
    if (s->listen_fd >= 0)
        close(s->listen_fd);
    /* Pushes under way may finish, as over HTTP: a push cut short might
     * leave its deploy half done. Everything else ends now. */
    cut(s, false);
    int64_t deadline =
        clock_now_ms() + ((int64_t)s->g->build_timeout + GITRECV_DRAIN_EXTRA_S) * 1000;
    bool logged = false;
    while (!reap(s, false) && clock_now_ms() < deadline) {
        if (!logged)
            log_info(COMP, "ssh stop: waiting for pushes under way", "timeout_s=%d",
                     s->g->build_timeout + GITRECV_DRAIN_EXTRA_S);
        logged = true;
        poll(NULL, 0, 100);
    }
    atomic_store(&s->killing, true);
    cut(s, true);
    reap(s, true);
    for (int i = 0; i < 2; i++)
        if (s->wake[i] >= 0)
            close(s->wake[i]);
    if (s->bind)
        ssh_bind_free(s->bind);
    pthread_mutex_destroy(&s->lock);
    free(s);
}
