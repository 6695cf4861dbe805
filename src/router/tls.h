/* tls: TLS for the router with OpenSSL, as an engine over memory buffers
 * (no sockets here: stream.c moves the ciphertext over libuv).
 *
 * Contexts: TLS 1.2 and 1.3 only, the server's cipher preference, session
 * resumption by tickets and by a server-side session cache, ALPN
 * "http/1.1". Every context this process makes shares one ticket key, so a
 * session resumes even when SNI picked a route's context. */
#ifndef PIER_ROUTER_TLS_H
#define PIER_ROUTER_TLS_H

#include <openssl/ssl.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "lib/err.h"

/* A server context from PEM text: the certificate (chain: leaf first) and
 * its private key, which must match. NULL with a message in err. */
SSL_CTX *tls_ctx_from_pem(const char *cert_pem, const char *key_pem, struct pier_err *err);
/* The same from files. */
SSL_CTX *tls_ctx_from_files(const char *cert_path, const char *key_path, struct pier_err *err);
/* A context with a self-signed certificate for common_name made in memory
 * (ECDSA P-256, valid a year), for --https without a certificate. */
SSL_CTX *tls_ctx_self_signed(const char *common_name, struct pier_err *err);
/* SSL_CTX_free, with the signature rtable_builder_new takes. */
void tls_ctx_free(void *ctx);
/* tls_ctx_from_pem with the signature rtable_builder_new takes. */
void *tls_ctx_make(const char *cert_pem, const char *key_pem, struct pier_err *err);

/* Chooses the context for a client's SNI name: returns the SSL_CTX * to
 * switch to, or NULL to keep the default. ud is tls_conn_new's. */
typedef SSL_CTX *(*tls_sni_fn)(void *ud, const char *servername);

struct tls_conn;

/* A server-side connection on ctx (the default context), calling sni (may
 * be NULL) with ud during the handshake. */
struct tls_conn *tls_conn_new(SSL_CTX *ctx, tls_sni_fn sni, void *ud);
void tls_conn_free(struct tls_conn *c);

/* Results of the calls below besides byte counts. */
enum {
    TLS_WANT = -1,   /* nothing (more) until more ciphertext is fed */
    TLS_CLOSED = -2, /* the peer sent close_notify: plaintext ended cleanly */
    TLS_ERROR = -3,  /* handshake or record failure: drop the connection */
};

/* Feeds n bytes of ciphertext read from the network. Never fails (the
 * bytes are buffered; errors come out of tls_conn_read). */
void tls_conn_feed(struct tls_conn *c, const char *in, size_t n);

/* Runs the handshake as far as it goes and decrypts into out[0..cap):
 * the number of plaintext bytes (> 0), TLS_WANT, TLS_CLOSED or TLS_ERROR.
 * Call until it returns TLS_WANT after every feed; after any call, send
 * what tls_conn_take() gives (a handshake makes output while reading). */
ssize_t tls_conn_read(struct tls_conn *c, char *out, size_t cap);

/* Encrypts n bytes of plaintext (all of them, buffering as needed; before
 * the handshake finished they are kept and sent after it). Returns 0 or
 * TLS_ERROR. */
int tls_conn_write(struct tls_conn *c, const char *p, size_t n);

/* Queues close_notify. */
void tls_conn_close_notify(struct tls_conn *c);

/* Moves up to cap bytes of ciphertext to send into out; returns the count
 * (0 when there is none). */
size_t tls_conn_take(struct tls_conn *c, char *out, size_t cap);
/* Ciphertext bytes waiting to be taken. */
size_t tls_conn_pending(const struct tls_conn *c);

bool tls_conn_handshake_done(const struct tls_conn *c);
/* The SNI name the client sent (borrowed), or NULL. */
const char *tls_conn_servername(const struct tls_conn *c);
/* Whether the handshake resumed a session. */
bool tls_conn_resumed(const struct tls_conn *c);

#endif
