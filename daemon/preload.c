/*
 * preload.c - `preload: true` (docs/CONFIG.md): the models that load when
 * the daemon starts, and when a reload adds or changes them, before any
 * request asks for them.
 *
 * They load one at a time, highest `priority` first (the file's order
 * among equals), each only when it fits its device without evicting
 * anything: its footprint (measured on an earlier residency, else its
 * declared `vram`, else what its files imply; unknown is 0 and always
 * fits) against the device's free memory at that moment, so that a
 * preload never pushes out a model that is already there, preloaded or
 * asked for. One that does not fit is skipped with a log line; it loads
 * on its first request as any model.
 *
 * No thread of its own: each load is asked with mb_load_async and its
 * answer (on the core's thread) starts the next. The daemon serves while
 * models preload. A model that a reload removed meanwhile is skipped; at
 * stop the queue is dropped (the answer of a load in flight comes with
 * the core's shutdown and asks for nothing more).
 *
 * Lock: preload_mu (daemon.h) guards the queue; a leaf, never held while
 * calling the core.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "daemon.h"
#include "preload.h"

typedef struct pl_item {
  char *name;
  int priority;
  size_t order;
} pl_item;

struct mbd_preload {
  pl_item *q;           /* waiting, in the order they load */
  size_t n, cap;
  int busy;             /* a load is asked and not answered yet */
  struct timespec t0;   /* when the load in flight was asked */
  char current[MBD_MODEL_NAME_MAX + 1];
};

static double since_ms(const struct timespec *t0) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return (double)(now.tv_sec - t0->tv_sec) * 1e3 + (double)(now.tv_nsec - t0->tv_nsec) / 1e6;
}

/* Whether m fits a device it may go to, without evicting: its footprint
 * against the device's free memory (both as the core counts them). */
static int fits(mbd *d, const mbd_model *m, uint64_t *need, uint64_t *room) {
  mb_status st;
  *need = *room = 0;
  if (mb_model_status(d->ctx, m->name, &st) != 0)
    return 0;
  *need = st.footprint_bytes;
  if (st.state != MB_STATE_UNLOADED)
    return 1; /* loaded or loading already: the load asked below only waits for it */
  mb_model_opts mo;
  char err[128];
  int only = -1; /* the core's device index it is bound to, -1 any */
  if (m->mc->device != MB_DEVICE_AUTO &&
      mbd_config_model_opts(d->cfg, m->mc, &mo, err, sizeof(err)) == 0)
    only = mo.device;
  int n = mb_device_count(d->ctx);
  for (int i = 0; i < n; i++) {
    mb_device_info di;
    if ((only >= 0 && i != only) || mb_device_info_get(d->ctx, i, &di) != 0)
      continue;
    if (di.free_bytes > *room)
      *room = di.free_bytes;
    if (st.footprint_bytes <= di.free_bytes)
      return 1;
  }
  return 0;
}

static void next(mbd *d);

static void loaded(const mb_result *res, void *arg) {
  mbd *d = arg;
  mbd_preload *p = d->preload;
  char name[MBD_MODEL_NAME_MAX + 1];
  pthread_mutex_lock(&d->preload_mu);
  snprintf(name, sizeof(name), "%s", p->current);
  double ms = since_ms(&p->t0);
  p->busy = 0;
  pthread_mutex_unlock(&d->preload_mu);
  if (res->rc == 0)
    mbd_log(d, MBD_LOG_INFO, "preloaded", "model=%s ms=%.0f", name, ms);
  else if (!__atomic_load_n(&d->stopping, __ATOMIC_ACQUIRE))
    mbd_log(d, MBD_LOG_WARN, "preload failed", "model=%s why=\"%s\"", name,
            res->message && res->message[0] ? res->message : mb_strerror(res->rc));
  next(d);
}

/* Asks for the next model that fits; the ones that do not are skipped. */
static void next(mbd *d) {
  mbd_preload *p = d->preload;
  for (;;) {
    pl_item it;
    pthread_mutex_lock(&d->preload_mu);
    if (p->busy || p->n == 0 || __atomic_load_n(&d->stopping, __ATOMIC_ACQUIRE)) {
      pthread_mutex_unlock(&d->preload_mu);
      return;
    }
    it = p->q[0];
    memmove(p->q, p->q + 1, (p->n - 1) * sizeof(*p->q));
    p->n--;
    p->busy = 1; /* claimed: one load at a time */
    snprintf(p->current, sizeof(p->current), "%s", it.name);
    clock_gettime(CLOCK_MONOTONIC, &p->t0);
    pthread_mutex_unlock(&d->preload_mu);

    mbd_model *m = mbd_find_name(d, it.name);
    uint64_t need, room;
    int rc = -1;
    if (m == NULL) {
      mbd_log(d, MBD_LOG_INFO, "preload skipped: the model is gone", "model=%s", it.name);
    } else if (!fits(d, m, &need, &room)) {
      mbd_log(d, MBD_LOG_WARN, "preload skipped: it does not fit without evicting",
              "model=%s footprint_bytes=%llu free_bytes=%llu", it.name, (unsigned long long)need,
              (unsigned long long)room);
    } else {
      mbd_log(d, MBD_LOG_INFO, "preload", "model=%s priority=%d", it.name, it.priority);
      rc = mb_load_async(d->ctx, it.name, MB_DEFAULT, loaded, d);
      if (rc != 0)
        mbd_log(d, MBD_LOG_WARN, "preload failed", "model=%s why=\"%s\"", it.name,
                mb_strerror(rc));
    }
    free(it.name);
    if (rc == 0)
      return; /* loaded() goes on */
    pthread_mutex_lock(&d->preload_mu);
    p->busy = 0;
    pthread_mutex_unlock(&d->preload_mu);
  }
}

static int by_priority(const void *a, const void *b) {
  const pl_item *x = a, *y = b;
  if (x->priority != y->priority)
    return x->priority > y->priority ? -1 : 1;
  return x->order < y->order ? -1 : x->order > y->order;
}

int mbd_preload_models(mbd *d, mbd_model *const *models, size_t n) {
  size_t want = 0;
  for (size_t i = 0; i < n; i++)
    want += models[i]->mc->preload != 0;
  if (want == 0)
    return 0;
  pthread_mutex_lock(&d->preload_mu);
  if (d->preload == NULL && (d->preload = calloc(1, sizeof(*d->preload))) == NULL) {
    pthread_mutex_unlock(&d->preload_mu);
    return MB_ENOMEM;
  }
  mbd_preload *p = d->preload;
  if (p->n + want > p->cap) {
    size_t cap = p->n + want;
    pl_item *q = realloc(p->q, cap * sizeof(*q));
    if (q == NULL) {
      pthread_mutex_unlock(&d->preload_mu);
      return MB_ENOMEM;
    }
    p->q = q;
    p->cap = cap;
  }
  size_t first = p->n;
  for (size_t i = 0; i < n; i++) {
    if (!models[i]->mc->preload)
      continue;
    char *name = strdup(models[i]->name);
    if (name == NULL)
      break;
    p->q[p->n++] = (pl_item){name, models[i]->mc->priority, i};
  }
  /* The new ones in priority order, after those already waiting. */
  qsort(p->q + first, p->n - first, sizeof(*p->q), by_priority);
  pthread_mutex_unlock(&d->preload_mu);
  next(d);
  return 0;
}

void mbd_preload_free(mbd *d) {
  mbd_preload *p = d->preload;
  if (p == NULL)
    return;
  for (size_t i = 0; i < p->n; i++)
    free(p->q[i].name);
  free(p->q);
  free(p);
  d->preload = NULL;
}
