/*
 * policy.c - eviction order: how the context's policy ranks an eviction
 * candidate, and the sorted list of candidates of a device or of the host
 * tier. Part of the core's step (sched_int.h): core_lock held, ctx->now
 * the time.
 *
 * Owns: the cost policy's use rate of a model (hits, hits_t: a decayed
 * count of its acquires) and the reload estimates of models never
 * measured. Policies: lru ranks every candidate alike, so the tie-breakers
 * decide (least recently used, then registration order); cost ranks by
 * expected reload time saved per byte kept; custom asks the context's
 * evict_rank callback (the simulator's Belady).
 *
 * Invariants: the order is total (rank, last use, registration index), so
 * the same candidates always sort the same way whatever order they are
 * collected in; a candidate list holds every candidate (the buffers have
 * room for every model, grown by mb_model_add), never a truncated one.
 */
#include <math.h>
#include <stdlib.h>

#include "modelbuf/modelbuf.h"
#include "sched_int.h"

/* Reload estimates for models never measured: disk-ish and PCIe-ish speeds. */
#define EST_LOAD_BPS 1.0e9
#define EST_RESTORE_BPS 10.0e9

double mb__reload_cost_ms(const mb__model *m, int to_host) {
  double bytes = (double)mb__footprint(m);
  if (to_host)
    return m->stats.last_restore_ms > 0 ? m->stats.last_restore_ms
                                        : bytes / EST_RESTORE_BPS * 1e3 + 1;
  return m->stats.avg_load_ms > 0 ? m->stats.avg_load_ms : bytes / EST_LOAD_BPS * 1e3 + 1;
}

/*
 * Cost policy: the use rate of a model is estimated from its acquires,
 * counted with an exponential decay of time constant COST_TAU_NS (hits,
 * brought up to date at hits_t, the last counted acquire). Long, because
 * a model used a few times an hour needs hours of history for a rate that
 * is not mostly noise; the two rules below keep the long memory from going
 * stale (docs/PERFORMANCE.md has what else was measured):
 *   - a drop: an acquire that comes after a gap of more than COST_DROP
 *     times the mean gap the count implies shows the model is no longer
 *     used at that rate, so the count restarts from the rate this gap
 *     implies (1 / gap);
 *   - a burst: an acquire that finds others of the same model already
 *     waiting is not counted. It adds no residency of its own, and a burst
 *     of them would make a rarely used model look hot for hours.
 */
#define COST_TAU_NS 1.44e13
#define COST_DROP 10.0
/* Share of a full reload charged to a device candidate that would be
 * offloaded: pushing it to the host tier may push another one out. */
#define COST_HOST_SPILL 0.15

static double use_rate(const mb_ctx *ctx, const mb__model *m) {
  if (ctx->rate_oracle != NULL)
    return ctx->rate_oracle(ctx->rate_oracle_arg, m->user);
  return m->hits * exp(-(double)(ctx->now - m->hits_t) / COST_TAU_NS);
}

/* The rules above. */
void mb__note_use(mb_ctx *ctx, mb__model *m) {
  if (m->nwait > 0)
    return;
  double hits = use_rate(ctx, m);
  double gap_ns = (double)(ctx->now - m->hits_t);
  if (m->hits_t != 0 && gap_ns > 0 && hits / COST_TAU_NS * gap_ns > COST_DROP)
    hits = COST_TAU_NS / gap_ns;
  m->hits = hits + 1;
  m->hits_t = ctx->now;
}

/*
 * Cost rank: decayed use count x time to bring the model back / GiB, the
 * expected reload time saved per byte kept. A host candidate (dev -1), or
 * one that cannot be offloaded, costs a full load; a device candidate that
 * would be offloaded costs its restore plus COST_HOST_SPILL of a load.
 * Measured in the simulator against the earlier per-residency GDSF form:
 * docs/PERFORMANCE.md.
 */
double mb__rank_gib(const mb__model *m) {
  double gib = (double)mb__footprint(m) / (1024.0 * 1024 * 1024);
  return gib < 1.0 / 1024 ? 1.0 / 1024 : gib;
}

static double cost_rank(const mb_ctx *ctx, const mb__model *m, int dev) {
  double gib = mb__rank_gib(m);
  double load = mb__reload_cost_ms(m, 0);
  double cost = load;
  if (dev >= 0 && m->opts.offload && mb__can_offload(m))
    cost = mb__reload_cost_ms(m, 1) + load * COST_HOST_SPILL;
  return use_rate(ctx, m) * cost / gib;
}

/* A candidate's rank under the context's policy: lower goes first. LRU
 * ranks all alike (the tie-breakers below decide). dev is -1 in the host tier. */
double mb__evict_rank(const mb_ctx *ctx, const mb__model *m, int dev) {
  switch (ctx->opts.eviction) {
  case MB_EVICT_COST: return cost_rank(ctx, m, dev);
  case MB_EVICT_CUSTOM: return ctx->opts.evict_rank(ctx->opts.evict_arg, m->name, m->user, dev);
  default: return 0;
  }
}

int mb__evict_rank_positive(const mb_ctx *ctx, const mb__model *m, int dev) {
  /* cost_rank() = use rate x a positive cost: surely above 0 while the
   * decayed count is not vanishing (no exp() needed). */
  if (ctx->opts.eviction == MB_EVICT_COST && ctx->rate_oracle == NULL && m->hits >= 1e-6 &&
      (double)(ctx->now - m->hits_t) < 600 * COST_TAU_NS)
    return 1;
  return mb__evict_rank(ctx, m, dev) > 0;
}

/* Eviction order: rank, then least recently used, then registration order
 * (a total order, so the sort is deterministic). */
static int cand_cmp(const void *pa, const void *pb) {
  const mb__cand *a = pa, *b = pb;
  if (a->rank != b->rank)
    return a->rank < b->rank ? -1 : 1;
  if (a->m->last_accessed != b->m->last_accessed)
    return a->m->last_accessed < b->m->last_accessed ? -1 : 1;
  return (a->m->index > b->m->index) - (a->m->index < b->m->index);
}

int mb__evictable(const mb__model *m, int dev) {
  return m->device == dev && m->state == MB_STATE_READY && m->inflight == 0 &&
         !m->opts.pinned && !mb__wants_resident(m) &&
         !m->offload_pending && !m->unload_pending;
}

static int host_evictable(const mb__model *m) {
  return m->state == MB_STATE_OFFLOADED && !m->opts.pinned && !mb__wants_resident(m) &&
         !m->unload_pending;
}

/*
 * Collects every eviction candidate of device dev (host: of the host tier)
 * into ctx->cand_dev (cand_host), sorted by eviction order, and returns how
 * many. Device candidates come from the device's resident list, so the cost
 * follows what is resident there, not the number of models. The buffers
 * hold one entry per model: a list is never cut short.
 */
int mb__collect(mb_ctx *ctx, int dev, int host) {
  mb__cand *out = host ? ctx->cand_host : ctx->cand_dev;
  int n = 0;
  if (host) {
    for (int i = 0; i < ctx->nmodels; i++) {
      mb__model *m = ctx->models[i];
      if (!host_evictable(m))
        continue;
      out[n].m = m;
      out[n].rank = mb__evict_rank(ctx, m, -1);
      n++;
    }
  } else {
    mb__queue *q;
    mb__queue_foreach(q, &ctx->devs[dev].res_list) {
      mb__model *m = mb__queue_data(q, mb__model, dev_node);
      if (!mb__evictable(m, dev))
        continue;
      out[n].m = m;
      out[n].rank = mb__evict_rank(ctx, m, dev);
      n++;
    }
  }
  if (n > 1)
    qsort(out, (size_t)n, sizeof(*out), cand_cmp);
  return n;
}
