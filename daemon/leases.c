/*
 * leases.c - HTTP lease tokens (leases.h): a hash table of entries keyed by
 * their random tokens, swept for expired entries as it is used.
 *
 * Locks: l->mu guards the table.
 */
#include "leases.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "config.h"

typedef struct entry {
  struct entry *next;
  char token[MBD_LEASE_TOKEN_LEN + 1];
  mb_lease lease;
  char model[MBD_MODEL_NAME_MAX + 1];
  uint64_t expires_ms;
} entry;

struct mbd_leases {
  pthread_mutex_t mu;
  entry **tab;
  size_t cap, n;
  uint64_t swept_ms;
};

int mbd_leases_new(mbd_leases **out) {
  mbd_leases *l = calloc(1, sizeof(*l));
  if (l == NULL)
    return MB_ENOMEM;
  l->cap = 64;
  l->tab = calloc(l->cap, sizeof(*l->tab));
  if (l->tab == NULL) {
    free(l);
    return MB_ENOMEM;
  }
  pthread_mutex_init(&l->mu, NULL);
  *out = l;
  return 0;
}

void mbd_leases_free(mbd_leases *l) {
  if (l == NULL)
    return;
  for (size_t i = 0; i < l->cap; i++)
    for (entry *e = l->tab[i], *next; e; e = next) {
      next = e->next;
      free(e);
    }
  free(l->tab);
  pthread_mutex_destroy(&l->mu);
  free(l);
}

/* FNV-1a of the token: tokens are random, any spread will do. */
static size_t slot(const mbd_leases *l, const char *token) {
  uint64_t h = 1469598103934665603ull;
  for (const char *p = token; *p; p++)
    h = (h ^ (unsigned char)*p) * 1099511628211ull;
  return (size_t)(h & (l->cap - 1));
}

/* Drops entries whose TTL has passed (the core released their leases). */
static void sweep_locked(mbd_leases *l, uint64_t now_ms) {
  if (now_ms < l->swept_ms + 1000 && l->n < l->cap)
    return;
  l->swept_ms = now_ms;
  for (size_t i = 0; i < l->cap; i++)
    for (entry **pp = &l->tab[i]; *pp;) {
      entry *e = *pp;
      if (e->expires_ms <= now_ms) {
        *pp = e->next;
        free(e);
        l->n--;
      } else {
        pp = &e->next;
      }
    }
}

static int grow_locked(mbd_leases *l) {
  size_t cap = l->cap * 2;
  entry **tab = calloc(cap, sizeof(*tab));
  if (tab == NULL)
    return MB_ENOMEM;
  entry **old = l->tab;
  size_t ocap = l->cap;
  l->tab = tab;
  l->cap = cap;
  for (size_t i = 0; i < ocap; i++)
    for (entry *e = old[i], *next; e; e = next) {
      next = e->next;
      size_t s = slot(l, e->token);
      e->next = tab[s];
      tab[s] = e;
    }
  free(old);
  return 0;
}

static entry *find_locked(mbd_leases *l, const char *token, entry ***where) {
  if (strlen(token) != MBD_LEASE_TOKEN_LEN)
    return NULL;
  for (entry **pp = &l->tab[slot(l, token)]; *pp; pp = &(*pp)->next)
    if (strcmp((*pp)->token, token) == 0) {
      if (where)
        *where = pp;
      return *pp;
    }
  return NULL;
}

int mbd_leases_add(mbd_leases *l, mb_lease lease, const char *model, int64_t ttl_ms,
                   uint64_t now_ms, char *token) {
  unsigned char raw[16];
  size_t got = 0;
  while (got < sizeof(raw)) {
    ssize_t r = getrandom(raw + got, sizeof(raw) - got, 0);
    if (r < 0) {
      if (errno == EINTR)
        continue;
      return MB_EIO;
    }
    got += (size_t)r;
  }
  entry *e = calloc(1, sizeof(*e));
  if (e == NULL)
    return MB_ENOMEM;
  for (size_t i = 0; i < sizeof(raw); i++)
    snprintf(e->token + 2 * i, 3, "%02x", raw[i]);
  e->lease = lease;
  snprintf(e->model, sizeof(e->model), "%s", model);
  e->expires_ms = now_ms + (uint64_t)ttl_ms;
  pthread_mutex_lock(&l->mu);
  sweep_locked(l, now_ms);
  if (l->n + 1 > l->cap / 2 && grow_locked(l) != 0) {
    pthread_mutex_unlock(&l->mu);
    free(e);
    return MB_ENOMEM;
  }
  size_t s = slot(l, e->token);
  e->next = l->tab[s];
  l->tab[s] = e;
  l->n++;
  pthread_mutex_unlock(&l->mu);
  memcpy(token, e->token, MBD_LEASE_TOKEN_LEN + 1);
  return 0;
}

int mbd_leases_renew(mbd_leases *l, mb_ctx *ctx, const char *token, int64_t ttl_ms,
                     uint64_t now_ms, char *model, uint64_t *expires_ms) {
  pthread_mutex_lock(&l->mu);
  entry *e = find_locked(l, token, NULL);
  if (e == NULL || e->expires_ms <= now_ms) {
    pthread_mutex_unlock(&l->mu);
    return MB_ENOENT;
  }
  int rc = mb_lease_renew(ctx, e->lease, ttl_ms);
  if (rc == 0) {
    e->expires_ms = now_ms + (uint64_t)ttl_ms;
    *expires_ms = e->expires_ms;
  }
  snprintf(model, MBD_MODEL_NAME_MAX + 1, "%s", e->model);
  pthread_mutex_unlock(&l->mu);
  return rc == MB_EINVAL ? MB_ENOENT : rc;
}

int mbd_leases_take(mbd_leases *l, const char *token, uint64_t now_ms, mb_lease *out,
                    char *model) {
  entry **where = NULL;
  pthread_mutex_lock(&l->mu);
  entry *e = find_locked(l, token, &where);
  if (e == NULL) {
    pthread_mutex_unlock(&l->mu);
    return MB_ENOENT;
  }
  *where = e->next;
  l->n--;
  int expired = e->expires_ms <= now_ms;
  pthread_mutex_unlock(&l->mu);
  *out = e->lease;
  snprintf(model, MBD_MODEL_NAME_MAX + 1, "%s", e->model);
  free(e);
  return expired ? MB_ENOENT : 0;
}

size_t mbd_leases_count(mbd_leases *l, uint64_t now_ms) {
  pthread_mutex_lock(&l->mu);
  l->swept_ms = 0;
  sweep_locked(l, now_ms);
  size_t n = l->n;
  pthread_mutex_unlock(&l->mu);
  return n;
}

void mbd_leases_release_all(mbd_leases *l, mb_ctx *ctx) {
  pthread_mutex_lock(&l->mu);
  for (size_t i = 0; i < l->cap; i++)
    for (entry *e = l->tab[i], *next; e; e = next) {
      next = e->next;
      if (mb_release(ctx, e->lease) != 0) {
        /* expired by its TTL already */
      }
      free(e);
    }
  memset(l->tab, 0, l->cap * sizeof(*l->tab));
  l->n = 0;
  pthread_mutex_unlock(&l->mu);
}
