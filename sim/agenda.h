/*
 * agenda.h - what the simulator's single-node run (sim.c), its fleet run
 * (sim_fleet.c) and the trace index (trace.c) share, private to sim/: the
 * agenda of future completions (a binary heap in time order, ties in the
 * order they were pushed, so a run is deterministic), the name hash, the
 * simulated backend, its job times, the memory integral and the wait
 * percentiles.
 */
#ifndef MB_SIM_AGENDA_H
#define MB_SIM_AGENDA_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "modelbuf/modelbuf.h"
#include "sim.h"

enum { AG_JOB = 1, AG_RELEASE = 2 };

/* A backend job that completes, or a lease released, at virtual time t. */
typedef struct agenda_item {
  uint64_t t, seq;
  int kind;
  int node; /* the fleet's node (0 in a single-node run) */
  mb_job *job;
  mb_lease lease;
} agenda_item;

typedef struct sim_agenda {
  agenda_item *v;
  size_t n, cap;
  uint64_t seq;
} sim_agenda;

static inline int sim_agenda_less(const agenda_item *a, const agenda_item *b) {
  return a->t != b->t ? a->t < b->t : a->seq < b->seq;
}

/* 0, or -1 out of memory (the item is lost: the caller reports it). */
static inline int sim_agenda_push(sim_agenda *ag, agenda_item it) {
  if (ag->n == ag->cap) {
    size_t cap = ag->cap ? ag->cap * 2 : 256;
    agenda_item *v = realloc(ag->v, cap * sizeof(*v));
    if (v == NULL)
      return -1;
    ag->v = v;
    ag->cap = cap;
  }
  it.seq = ++ag->seq;
  size_t i = ag->n++;
  while (i > 0) {
    size_t p = (i - 1) / 2;
    if (!sim_agenda_less(&it, &ag->v[p]))
      break;
    ag->v[i] = ag->v[p];
    i = p;
  }
  ag->v[i] = it;
  return 0;
}

/* The earliest item (the agenda must not be empty). */
static inline agenda_item sim_agenda_pop(sim_agenda *ag) {
  agenda_item top = ag->v[0];
  agenda_item last = ag->v[--ag->n];
  size_t i = 0, n = ag->n;
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= n)
      break;
    if (c + 1 < n && sim_agenda_less(&ag->v[c + 1], &ag->v[c]))
      c++;
    if (!sim_agenda_less(&ag->v[c], &last))
      break;
    ag->v[i] = ag->v[c];
    i = c;
  }
  if (n > 0)
    ag->v[i] = last;
  return top;
}

/* FNV-1a of a name: the slot of the simulator's name tables. */
static inline uint64_t sim_hash_str(const char *s) {
  uint64_t h = 1469598103934665603ull;
  for (; *s; s++)
    h = (h ^ (unsigned char)*s) * 1099511628211ull;
  return h;
}

/* Backend functions run only when the context is freed with models still
 * loaded (mb_ctx_free unloads them directly): nothing to free here. */
static inline int sim_be_nop(mb_op *op) {
  (void)op;
  return 0;
}

/* The simulated backend of a model: jobs complete as the agenda says. */
static inline const mb_backend *sim_backend(int can_offload) {
  static const mb_backend offload = {"sim", sim_be_nop, sim_be_nop, sim_be_nop, sim_be_nop,
                                     NULL,  NULL,       NULL,       NULL};
  static const mb_backend plain = {"sim", sim_be_nop, NULL, NULL, sim_be_nop,
                                   NULL,  NULL,       NULL, NULL};
  return can_offload ? &offload : &plain;
}

static inline int sim_cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static inline double sim_pct(const double *v, size_t n, double p) {
  if (n == 0)
    return 0;
  size_t i = (size_t)ceil(p * (double)n);
  if (i > 0)
    i--;
  if (i >= n)
    i = n - 1;
  return v[i];
}

/* A model's time for a job of kind k, ms. */
static inline double sim_job_ms(const sim_model *d, mb_job_kind k) {
  switch (k) {
  case MB_JOB_LOAD: return d->load_ms;
  case MB_JOB_RESTORE: return d->restore_ms;
  case MB_JOB_OFFLOAD: return d->offload_ms;
  case MB_JOB_UNLOAD: return d->unload_ms;
  }
  return 0;
}

/* A device's memory changes at now by bytes (add or remove): the old
 * level is integrated up to now first (area: byte-ns, for the mean use). */
static inline void sim_mem_change(double *area, uint64_t *used, uint64_t *last, uint64_t now,
                                  uint64_t bytes, int add) {
  *area += (double)*used * (double)(now - *last);
  *last = now;
  if (add)
    *used += bytes;
  else
    *used -= bytes;
}

/* Sorts the waits (ms) and gives their median and 99th percentile. */
static inline void sim_wait_pcts(double *v, size_t n, double *p50, double *p99) {
  qsort(v, n, sizeof(*v), sim_cmp_double);
  *p50 = sim_pct(v, n, 0.50);
  *p99 = sim_pct(v, n, 0.99);
}

#endif /* MB_SIM_AGENDA_H */
