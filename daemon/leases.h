/*
 * leases.h - leases taken over HTTP (POST /api/models/{name}/acquire) and
 * the tokens that stand for them: 128 random bits from getrandom, written
 * as 32 hex digits, so that no client can guess another's. Only leases
 * made here can be renewed or released over HTTP; the leases the proxy
 * takes for requests are never in this table. An entry leaves when its
 * lease is released, or once its TTL has passed (the core released the
 * lease then); the table grows as needed.
 *
 * Thread-safe (one mutex, a leaf: nothing is called under it but the
 * core's non-blocking mb_lease_renew).
 */
#ifndef MBD_LEASES_H
#define MBD_LEASES_H

#include <stdint.h>

#include "modelbuf/modelbuf.h"

typedef struct mbd_leases mbd_leases;

#define MBD_LEASE_TOKEN_LEN 32

int mbd_leases_new(mbd_leases **out) MB_WUR;
void mbd_leases_free(mbd_leases *l);

/* Adds a granted lease with its TTL (ms, > 0) from now_ms; writes its
 * token (MBD_LEASE_TOKEN_LEN + 1 bytes). 0, MB_ENOMEM or MB_EIO (no
 * random bytes). */
int mbd_leases_add(mbd_leases *l, mb_lease lease, const char *model, int64_t ttl_ms,
                   uint64_t now_ms, char *token) MB_WUR;

/* Renews the lease of token to now + ttl_ms (through the core).
 * 0, MB_ENOENT (no such lease, or expired), or the core's error. *model
 * gets its model's name (64 + 1 bytes). */
int mbd_leases_renew(mbd_leases *l, mb_ctx *ctx, const char *token, int64_t ttl_ms,
                     uint64_t now_ms, char *model, uint64_t *expires_ms);

/* Removes the lease of token and gives it back (0), or MB_ENOENT. */
int mbd_leases_take(mbd_leases *l, const char *token, uint64_t now_ms, mb_lease *out,
                    char *model);

/* Leases in the table now (expired ones dropped first). */
size_t mbd_leases_count(mbd_leases *l, uint64_t now_ms);

/* Releases every lease still held (shutdown). */
void mbd_leases_release_all(mbd_leases *l, mb_ctx *ctx);

#endif /* MBD_LEASES_H */
