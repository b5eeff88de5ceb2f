/*
 * admit.c - admission planning: which model waiting for memory goes on
 * which device now, and which idle models are evicted to make room for it.
 * Part of the core's step (sched_int.h): core_lock held, ctx->now the time.
 *
 * Owns: the admission lists (ctx->adm, oldest first; ctx->adm1, the models
 * bound to one device), the per-generation plans of the devices (each
 * device's eviction candidates in eviction order with running sums of the
 * bytes they free and what evicting them costs), and the per-generation
 * figures of the shortcuts below.
 *
 * The full planning (plan_admission) looks at every device a model may
 * use: where it fits now, the device with the least free memory that
 * holds it (best fit: the largest holes stay whole for larger models);
 * else where it fits once models being offloaded or unloaded are gone
 * (that costs nothing); else the device where evicting makes room at the
 * least expected cost; else it waits; and if no device can ever hold it,
 * its waiters fail. The victims on a device are the fewest candidates
 * first in eviction order; under the cost policy, a single candidate that
 * makes room alone is taken instead when that is expected to cost less
 * (plan_one). Costs are what the policy expects evicting to cost: under
 * cost, use rate x time to bring the model back (its rank x its size);
 * under the others, the time to load it again.
 *
 * A pass over thousands of waiting models would plan every device for
 * each, so four shortcuts answer from figures kept per generation (a
 * generation lasts while the pass changes nothing; any action starts a
 * new one, and after a load or restore starts, what stays true carries
 * over: plans_started):
 *   - auto_blocked: a model that may go on any device does nothing now;
 *   - any_blocked: no such model can do anything now, so a pass visits
 *     only the models bound to one device until one of them acts;
 *   - a device's fail cache (fail_gen, fail_need) and the context's
 *     (auto_fail_*): a model no smaller than one that found no room fits
 *     nowhere either;
 *   - bound_wait: every model bound to a device (its adm1) waits, so a
 *     pass does not visit them (restores waiting on a busy device).
 * Each is meant to decide exactly what the full planning decides. With
 * the admission check on (mb__admission_check, or the build option
 * admission_check), every decision a shortcut makes is planned again in
 * full, without the shortcuts, and the two compared;
 * tests/unit/test_admission.c runs the simulator's standard suite and
 * random traces that way and requires no difference.
 *
 * Invariants: a model is in ctx->adm while admit_pending (and in ctx->adm1
 * too when adm_single); ctx->adm_any counts the others, adm_any_min/max
 * bound their footprints; planning changes nothing but caches (plans,
 * fail caches), and only acting (evicting, starting a load, failing)
 * starts a new generation.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "modelbuf/modelbuf.h"
#include "sched_int.h"

/* ------------------------------------------------------------------------ */
/* The admission lists                                                       */

/* Whether an offloaded m may be restored on any device: its backend can
 * (restore_any_device), it may go on any device, and every device is of
 * one kind (so the backend's host copy fits each). */
static int restores_anywhere(const mb_ctx *ctx, const mb__model *m) {
  return m->opts.restore_any_device && m->opts.device == MB_DEVICE_AUTO && !ctx->mixed_kinds;
}

/* Whether m, offloaded, goes back where it was. */
static int restores_home(const mb_ctx *ctx, const mb__model *m) {
  return m->state == MB_STATE_OFFLOADED && m->device >= 0 && !restores_anywhere(ctx, m);
}

/* Whether a waiting model can only go on one device: a restore goes back
 * where it was (unless it restores anywhere), and a model may name its
 * device. */
static int single_device(const mb_ctx *ctx, const mb__model *m) {
  return restores_home(ctx, m) || m->opts.device != MB_DEVICE_AUTO;
}

/* The device a model bound to one device is bound to. */
static int bound_device(const mb_ctx *ctx, const mb__model *m) {
  return restores_home(ctx, m) ? m->device : m->opts.device;
}

void mb__adm_remove(mb_ctx *ctx, mb__model *m) {
  if (!m->admit_pending)
    return;
  mb__queue_remove(&m->adm_node);
  if (m->adm_single)
    mb__queue_remove(&m->adm1_node);
  else
    ctx->adm_any--;
  m->admit_pending = 0;
}

/* A waiting model bound to device m->adm1_dev that is no longer (its
 * offloaded copy was lost: a load now, on any device) goes to adm_loose,
 * which every pass that visits the bound models walks. It keeps its place
 * among the bound models (adm_single), as it always did. */
void mb__adm_rebind(mb_ctx *ctx, mb__model *m) {
  if (!m->admit_pending || !m->adm_single || m->adm1_dev < 0 ||
      (single_device(ctx, m) && bound_device(ctx, m) == m->adm1_dev))
    return;
  mb__queue_remove(&m->adm1_node);
  mb__queue *at = ctx->adm_loose.prev;
  while (at != &ctx->adm_loose &&
         mb__queue_data(at, mb__model, adm1_node)->admit_seq > m->admit_seq)
    at = at->prev;
  mb__queue_insert_after(at, &m->adm1_node);
  m->adm1_dev = -1;
}

static void adm_add(mb_ctx *ctx, mb__model *m) {
  if (m->admit_pending)
    return;
  m->admit_pending = 1;
  m->admit_seq = ++ctx->adm_seq;
  mb__queue_insert_tail(&ctx->adm, &m->adm_node);
  m->adm_single = single_device(ctx, m);
  if (m->adm_single) {
    mb__device *d = &ctx->devs[bound_device(ctx, m)];
    uint64_t need = mb__footprint(m);
    if (mb__queue_empty(&d->adm1) || need < d->adm1_min)
      d->adm1_min = need;
    if (mb__queue_empty(&d->adm1) || need > d->adm1_max)
      d->adm1_max = need;
    mb__queue_insert_tail(&d->adm1, &m->adm1_node);
    m->adm1_dev = d->index;
  } else {
    uint64_t need = mb__footprint(m);
    if (ctx->adm_any == 0 || need < ctx->adm_any_min)
      ctx->adm_any_min = need;
    if (ctx->adm_any == 0 || need > ctx->adm_any_max)
      ctx->adm_any_max = need;
    ctx->adm_any++;
  }
}

/* ------------------------------------------------------------------------ */
/* Plans                                                                     */

/* Starts a new generation of admission plans: every device's plan is
 * stale. Called before an admission pass and after any admission acts. */
static void plans_reset(mb_ctx *ctx) {
  ctx->plan_gen++;
  ctx->plan_used = 0;
}

/*
 * A new generation after a load or restore started: it takes memory and
 * evicts nobody, so what was found in the last generation stays true of
 * every device: their candidates and plans (the model started is none of
 * them), that a need found no room (fail caches: there is only less now),
 * that every eviction costs more than 0. Those carry over; what fits now
 * (auto_blocked's figures) is found again. An admission pass that starts
 * a load on each of many devices thus plans each device once, not once
 * per load.
 */
static void plans_started(mb_ctx *ctx) {
  uint64_t old = ctx->plan_gen++;
  for (int i = 0; i < ctx->ndev; i++) {
    mb__device *d = &ctx->devs[i];
    if (d->plan_gen == old)
      d->plan_gen = ctx->plan_gen;
    if (d->one_gen == old)
      d->one_gen = ctx->plan_gen;
    if (d->fail_gen == old)
      d->fail_gen = ctx->plan_gen;
  }
  if (ctx->auto_fail_gen == old)
    ctx->auto_fail_gen = ctx->plan_gen;
  if (ctx->auto_cost_gen == old)
    ctx->auto_cost_gen = ctx->plan_gen;
}

/*
 * The admission plan of device dev: its eviction candidates in eviction
 * order, each with the bytes and the cost of evicting it and every one
 * before it. Built once per generation, so an admission pass over many
 * waiting models sorts each device once, not once per model. The pool
 * holds every model, and a model is a candidate on one device only, so the
 * plans of one generation always fit.
 */
static const mb__plan_ent *plan_get(mb_ctx *ctx, int dev, int *n) {
  mb__device *d = &ctx->devs[dev];
  if (d->plan_gen != ctx->plan_gen) {
    int k = mb__collect(ctx, dev, 0);
    mb__plan_ent *p = ctx->plan + ctx->plan_used;
    uint64_t charge = 0;
    double cost = 0;
    for (int i = 0; i < k; i++) {
      const mb__cand *c = &ctx->cand_dev[i];
      charge += c->m->dev_charge;
      /* What evicting it is expected to cost: the cost policy's rank is
       * that per GiB. */
      cost += ctx->opts.eviction == MB_EVICT_COST ? c->rank * mb__rank_gib(c->m)
                                                  : mb__reload_cost_ms(c->m, 0);
      p[i] = (mb__plan_ent){c->m, c->rank, charge, cost};
    }
    d->plan_gen = ctx->plan_gen;
    d->plan_off = ctx->plan_used;
    d->plan_n = k;
    ctx->plan_used += k;
  }
  *n = d->plan_n;
  return ctx->plan + d->plan_off;
}

static int one_cmp(const void *pa, const void *pb) {
  const mb__plan_ent *a = pa, *b = pb;
  if (a->charge_sum != b->charge_sum)
    return a->charge_sum < b->charge_sum ? -1 : 1;
  return (a->m->index > b->m->index) - (a->m->index < b->m->index);
}

/*
 * The cost policy's single victims on dev (its plan p of n candidates
 * built): the candidates by charge, smallest first, each entry holding in
 * m and cost_sum the cheapest candidate charged at least as much as it
 * (charge_sum: its own charge). So the cheapest single victim that frees
 * a given number of bytes is a binary search. Built once per generation,
 * when a plan first needs more than one victim.
 */
static const mb__plan_ent *plan_one(mb_ctx *ctx, int dev, const mb__plan_ent *p, int n) {
  mb__device *d = &ctx->devs[dev];
  if (d->one_gen != ctx->plan_gen) {
    mb__plan_ent *o = ctx->plan + ctx->plan_used;
    for (int i = 0; i < n; i++)
      o[i] = (mb__plan_ent){p[i].m, p[i].rank, p[i].m->dev_charge,
                            p[i].cost_sum - (i > 0 ? p[i - 1].cost_sum : 0)};
    if (n > 1)
      qsort(o, (size_t)n, sizeof(*o), one_cmp);
    /* Equal costs: the larger charge (later) is kept. */
    for (int i = n - 2; i >= 0; i--)
      if (!(o[i].cost_sum < o[i + 1].cost_sum)) {
        o[i].m = o[i + 1].m;
        o[i].cost_sum = o[i + 1].cost_sum;
      }
    d->one_gen = ctx->plan_gen;
    d->one_off = ctx->plan_used;
    ctx->plan_used += n;
  }
  return ctx->plan + d->one_off;
}

/*
 * Plans room for need bytes on dev: returns 0 if it fits now, 1 if it will
 * fit once leaving models are gone or planned victims are evicted (*nvict
 * victims first in the device's plan, or the single victim *one when not
 * NULL; *cost their summed eviction cost), -1 if not now. full: without
 * the device's fail cache (neither read nor written), for the admission
 * check.
 */
static int plan_room(mb_ctx *ctx, int dev, uint64_t need, int full, int *nvict, double *cost,
                     mb__model **one) {
  mb__device *d = &ctx->devs[dev];
  int max_loaded = d->opts.max_loaded;
  *nvict = 0;
  *one = NULL;
  *cost = 0;
  if (d->used + need <= d->usable && (max_loaded == 0 || d->resident < max_loaded))
    return 0;
  uint64_t leaving_bytes = d->leaving_bytes;
  int leaving = d->leaving;
  if (d->used - leaving_bytes + need <= d->usable &&
      (max_loaded == 0 || d->resident - leaving < max_loaded))
    return 1;
  if (!full && d->fail_gen == ctx->plan_gen && need >= d->fail_need)
    return -1;
  int n;
  const mb__plan_ent *p = plan_get(ctx, dev, &n);
  /* The fewest victims (a prefix of the plan) that make room: the bytes
   * freed grow with their number, so a binary search finds it. */
#define ROOM_AFTER(k) \
  (d->used - leaving_bytes - ((k) > 0 ? p[(k) - 1].charge_sum : 0) + need <= d->usable && \
   (max_loaded == 0 || d->resident - leaving - (k) < max_loaded))
  if (n == 0 || !ROOM_AFTER(n)) {
    if (!full && (d->fail_gen != ctx->plan_gen || need < d->fail_need)) {
      d->fail_gen = ctx->plan_gen;
      d->fail_need = need;
    }
    return -1;
  }
  int lo = 1, hi = n;
  while (lo < hi) {
    int mid = lo + (hi - lo) / 2;
    if (ROOM_AFTER(mid))
      hi = mid;
    else
      lo = mid + 1;
  }
#undef ROOM_AFTER
  *nvict = lo;
  *cost = p[lo - 1].cost_sum;
  /* Several victims in rank order (rank is per byte) may free far more
   * than needed at a higher cost than one larger candidate alone: under
   * the cost policy the cheaper of the two is taken. */
  if (lo > 1 && ctx->opts.eviction == MB_EVICT_COST &&
      (max_loaded == 0 || d->resident - leaving - 1 < max_loaded)) {
    uint64_t short_by = d->used - leaving_bytes + need - d->usable;
    const mb__plan_ent *o = plan_one(ctx, dev, p, n);
    int a = 0, b = n;
    while (a < b) {
      int mid = a + (b - a) / 2;
      if (o[mid].charge_sum >= short_by)
        b = mid;
      else
        a = mid + 1;
    }
    if (a < n && o[a].cost_sum < *cost) {
      *one = o[a].m;
      *nvict = 1;
      *cost = o[a].cost_sum;
    }
  }
  return 1;
}

/* ------------------------------------------------------------------------ */
/* Shortcuts                                                                 */

/* Whether every eviction planned now would cost more than 0 (so a plan
 * that only waits for leaving models, at cost 0, beats it). */
static int evictions_cost(mb_ctx *ctx) {
  /* Other policies sum reload times, which are never 0. */
  if (ctx->opts.eviction != MB_EVICT_COST)
    return 1;
  if (ctx->auto_cost_gen != ctx->plan_gen) {
    /* Every candidate costing more than 0 is enough (a plan sums them);
     * the candidates need not be sorted for that. */
    ctx->auto_cost_gen = ctx->plan_gen;
    ctx->auto_cost_positive = 1;
    for (int i = 0; i < ctx->ndev && ctx->auto_cost_positive; i++) {
      mb__queue *q;
      mb__queue_foreach(q, &ctx->devs[i].res_list) {
        const mb__model *m = mb__queue_data(q, mb__model, dev_node);
        /* mb__evict_rank() is what plan_get() sums for it. */
        if (mb__evictable(m, i) && !mb__evict_rank_positive(ctx, m, i)) {
          ctx->auto_cost_positive = 0;
          break;
        }
      }
    }
  }
  return ctx->auto_cost_positive;
}

/*
 * Whether try_admit() of a model of need bytes that may go on any device
 * would do nothing now; 0 when it may act or it is not known cheaply. An
 * admission pass asks this of every waiting model, so it answers from
 * per-generation figures instead of planning every device for each:
 *   - fits now somewhere: try_admit takes the device with the least free
 *     memory that holds it among those that may start a load, and does
 *     nothing if every one that holds it is busy with max_parallel_loads;
 *   - fits once leaving models are gone on some device: that plan costs 0
 *     and evicts nobody, so it wins unless evicting could also cost <= 0;
 *   - a smaller model already found no room anywhere in this generation.
 * The answers are meant to be exactly what the full planning decides
 * (the admission check compares them).
 */
static int device_busy(const mb__device *d) {
  int maxp = d->opts.max_parallel_loads > 0 ? d->opts.max_parallel_loads : 1;
  return d->loads >= maxp;
}

static int auto_blocked(mb_ctx *ctx, uint64_t need) {
  if (ctx->auto_gen != ctx->plan_gen) {
    ctx->auto_gen = ctx->plan_gen;
    ctx->auto_usable = ctx->auto_t0 = ctx->auto_t1 = ctx->auto_idle = 0;
    ctx->auto_dev0 = -1;
    ctx->auto_has_t1 = ctx->auto_has_idle = 0;
    for (int i = 0; i < ctx->ndev; i++) {
      const mb__device *d = &ctx->devs[i];
      int ml = d->opts.max_loaded;
      if (d->usable > ctx->auto_usable)
        ctx->auto_usable = d->usable;
      if (d->used < d->usable && (ml == 0 || d->resident < ml)) {
        if (ctx->auto_dev0 < 0 || d->usable - d->used > ctx->auto_t0) {
          ctx->auto_dev0 = i;
          ctx->auto_t0 = d->usable - d->used;
        }
        if (!device_busy(d) && (!ctx->auto_has_idle || d->usable - d->used > ctx->auto_idle)) {
          ctx->auto_has_idle = 1;
          ctx->auto_idle = d->usable - d->used;
        }
      }
      uint64_t staying = d->used - d->leaving_bytes;
      if (staying < d->usable && (ml == 0 || d->resident - d->leaving < ml) &&
          (!ctx->auto_has_t1 || d->usable - staying > ctx->auto_t1)) {
        ctx->auto_has_t1 = 1;
        ctx->auto_t1 = d->usable - staying;
      }
    }
  }
  if (need == 0 || need > ctx->auto_usable)
    return 0;
  if (ctx->auto_dev0 >= 0 && need <= ctx->auto_t0)
    return !ctx->auto_has_idle || need > ctx->auto_idle;
  if (ctx->auto_has_t1 && need <= ctx->auto_t1)
    return evictions_cost(ctx);
  return ctx->auto_fail_gen == ctx->plan_gen && need >= ctx->auto_fail_need &&
         need <= ctx->auto_fail_largest;
}

/*
 * Whether no model that may go on any device can act in this generation,
 * whatever its footprint within the waiting ones' bounds: the intervals of
 * footprints that would load (fits now on an idle device), evict (fits
 * nowhere without evicting, somewhere with), or fail (fits no device ever)
 * miss those bounds. Then an admission pass visits only the models bound
 * to one device. See auto_blocked() for the decisions it mirrors.
 */
static int any_blocked(mb_ctx *ctx) {
  if (ctx->adm_any == 0)
    return 1;
  uint64_t lo = ctx->adm_any_min, hi = ctx->adm_any_max;
  if (lo == 0)
    return 0;
  (void)auto_blocked(ctx, lo); /* computes the generation's figures */
  if (hi > ctx->auto_usable)
    return 0;
  /* A footprint that fits now on a device that may start a load acts. */
  if (ctx->auto_has_idle && lo <= ctx->auto_idle)
    return 0;
  /* Up to t0 a model fits now only on busy devices, and waits; up to t1 it
   * waits for leaving models, unless an eviction could cost <= 0. */
  uint64_t t0 = ctx->auto_dev0 >= 0 ? ctx->auto_t0 : 0, waits = t0;
  if (ctx->auto_has_t1 && ctx->auto_t1 > t0) {
    if (lo <= ctx->auto_t1 && hi > t0 && !evictions_cost(ctx))
      return 0;
    waits = ctx->auto_t1;
  }
  /* Footprints above waits fit nowhere without evicting: does one of the
   * waiting ones fit somewhere once every candidate there is gone? */
  uint64_t from = waits + 1 > lo ? waits + 1 : lo;
  if (from > hi)
    return 1;
  for (int i = 0; i < ctx->ndev; i++) {
    const mb__device *d = &ctx->devs[i];
    if (d->usable < from)
      continue;
    uint64_t cand = 0;
    int ncand = 0;
    mb__queue *q;
    mb__queue_foreach(q, &d->res_list) {
      const mb__model *m = mb__queue_data(q, mb__model, dev_node);
      if (mb__evictable(m, i)) {
        cand += m->dev_charge;
        ncand++;
      }
    }
    uint64_t staying = d->used - d->leaving_bytes - cand;
    int ml = d->opts.max_loaded;
    if (staying < d->usable && (ml == 0 || d->resident - d->leaving - ncand < ml) &&
        d->usable - staying >= from)
      return 0;
  }
  return 1;
}

/*
 * Whether every model bound to device d (its adm1, footprints within
 * adm1_min..adm1_max) would wait now, so a pass need not visit them: the
 * planning of a model bound to one device starts its load only if it fits
 * now and the device may start one, evicts only if it fits neither now nor
 * once leaving models are gone, and fails only if it is larger than the
 * device. A footprint that fits now on a busy device, or once leaving
 * models are gone, waits; a larger one waits when the device's fail cache
 * says no room can be made for it in this generation. Most passes of a
 * large fleet find their restores bound to devices busy loading. See
 * plan_admission() for the decisions it mirrors.
 */
static int bound_wait(const mb_ctx *ctx, const mb__device *d) {
  uint64_t lo = d->adm1_min, hi = d->adm1_max;
  if (lo == 0 || hi > d->usable)
    return 0;
  int ml = d->opts.max_loaded;
  if (d->used < d->usable && (ml == 0 || d->resident < ml) && lo <= d->usable - d->used &&
      !device_busy(d))
    return 0;
  uint64_t staying = d->used - d->leaving_bytes, from = lo;
  if (staying < d->usable && (ml == 0 || d->resident - d->leaving < ml)) {
    if (hi <= d->usable - staying)
      return 1;
    if (d->usable - staying + 1 > from)
      from = d->usable - staying + 1;
  }
  return d->fail_gen == ctx->plan_gen && from >= d->fail_need;
}

/* ------------------------------------------------------------------------ */
/* Planning and acting                                                       */

/* The devices m may go on: [*lo, *hi). A restore goes back where it was
 * (unless it restores anywhere); a model may name its device; else any. */
static void device_range(const mb_ctx *ctx, const mb__model *m, int *lo, int *hi) {
  *lo = 0;
  *hi = ctx->ndev;
  if (restores_home(ctx, m)) {
    *lo = m->device;
    *hi = *lo + 1;
  } else if (m->opts.device != MB_DEVICE_AUTO) {
    *lo = m->opts.device;
    *hi = *lo + 1;
  }
}

/* What the planning decides for a waiting model. */
enum { ADMIT_WAIT, ADMIT_FAIL, ADMIT_EVICT, ADMIT_START };

typedef struct admit_plan {
  int act;          /* ADMIT_* */
  int dev;          /* EVICT, START: the device; WAIT: -1 when no device has room */
  int nvict;        /* EVICT: that many candidates first in dev's plan */
  mb__model *one;   /* EVICT: or this one alone (the cost policy's single victim) */
  uint64_t largest; /* the largest usable size of the devices it may use */
} admit_plan;

/*
 * The full planning of model m: the devices it may use (a fixed one, the
 * one it was offloaded from, or any), where it fits now (of the devices
 * that may start a load, the one with the least free memory that holds it,
 * the lowest index among equals; if it fits now only on devices busy with
 * max_parallel_loads, it waits for one of them), else
 * where it fits once leaving models are gone or after the cheapest
 * evictions, else nowhere now (WAIT), or never (FAIL).
 * A device busy with max_parallel_loads makes it WAIT. full: without the
 * devices' fail caches (the admission check); it changes nothing but the
 * generation's plans, and with !full the fail caches.
 */
static int plan_admission(mb_ctx *ctx, const mb__model *m, int full, admit_plan *p) {
  uint64_t need = mb__footprint(m);
  int lo, hi;
  device_range(ctx, m, &lo, &hi);
  int best = -1, best_kind = 2, best_nv = 0;
  mb__model *best_one = NULL;
  int best_busy = 0;
  double best_cost = 0;
  uint64_t best_free = 0;
  int ever = 0;
  p->largest = 0;
  for (int dev = lo; dev < hi; dev++) {
    const mb__device *d = &ctx->devs[dev];
    if (d->usable > p->largest)
      p->largest = d->usable;
    if (need > d->usable)
      continue;
    ever = 1;
    int nv;
    double cost;
    mb__model *one;
    int kind = plan_room(ctx, dev, need, full, &nv, &cost, &one);
    if (kind < 0)
      continue;
    uint64_t freeb = d->usable - (d->used < d->usable ? d->used : d->usable);
    int busy = kind == 0 && device_busy(d);
    if (best < 0 || kind < best_kind ||
        (kind == best_kind && kind == 0 &&
         (busy < best_busy || (busy == best_busy && freeb < best_free))) ||
        (kind == best_kind && kind == 1 && cost < best_cost)) {
      best = dev;
      best_kind = kind;
      best_cost = cost;
      best_free = freeb;
      best_nv = nv;
      best_one = one;
      best_busy = busy;
    }
  }
  p->dev = best;
  p->nvict = 0;
  p->one = NULL;
  if (!ever)
    p->act = ADMIT_FAIL;
  else if (best < 0)
    p->act = ADMIT_WAIT; /* wait for leases to be released */
  else if (best_kind == 1) {
    /* Room once the victims are gone (none: once leaving models are). */
    p->nvict = best_nv;
    p->one = best_one;
    p->act = best_nv > 0 ? ADMIT_EVICT : ADMIT_WAIT;
  } else {
    p->act = best_busy ? ADMIT_WAIT : ADMIT_START;
  }
  return p->act;
}

/* The shortcuts the admission check names (ctx->admit_checked). */
enum { CHECK_AUTO_BLOCKED, CHECK_ANY_BLOCKED, CHECK_PLANNED, CHECK_BOUND_WAIT };
static const char *const check_name[] = {"auto_blocked", "any_blocked", "fail caches",
                                         "bound_wait"};

/*
 * The admission check: a decision taken with a shortcut (which; got: what
 * it decided) is planned again in full and compared. Counts every check
 * and every difference (the first one described); with the build option
 * admission_check a difference stops the process, as a failed assertion
 * would.
 */
static void admit_check(mb_ctx *ctx, const mb__model *m, int shortcut, const admit_plan *got) {
  admit_plan full;
  plan_admission(ctx, m, 1, &full);
  ctx->admit_checked[shortcut]++;
  if (full.act == got->act && (got->act == ADMIT_WAIT || got->act == ADMIT_FAIL ||
                               (full.dev == got->dev && full.nvict == got->nvict && full.one == got->one)))
    return;
  if (ctx->admit_differ++ == 0)
    snprintf(ctx->admit_first, sizeof(ctx->admit_first),
             "%s: model '%s' (%llu bytes) at %llu ns: shortcut act %d dev %d evict %d, "
             "full planning act %d dev %d evict %d",
             check_name[shortcut], m->name, (unsigned long long)mb__footprint(m),
             (unsigned long long)ctx->now, got->act, got->dev, got->nvict, full.act, full.dev,
             full.nvict);
  if (ctx->admit_check > 1)
    abort();
}

/*
 * What try_admit() does for m now, into *p (its act returned): the
 * shortcuts, else the full planning. Changes nothing but the generation's
 * caches (plans, fail caches), so the models of one generation may be
 * decided in any order.
 */
static int admit_decide(mb_ctx *ctx, const mb__model *m, admit_plan *p) {
  uint64_t need = mb__footprint(m);
  int lo, hi;
  device_range(ctx, m, &lo, &hi);
  /* Every device (also a model bound to the only one): the shortcuts for a
   * model that may go on any device apply. */
  int any = lo == 0 && hi == ctx->ndev;
  if (any && auto_blocked(ctx, need)) {
    *p = (admit_plan){ADMIT_WAIT, -1, 0, NULL, 0};
    if (ctx->admit_check)
      admit_check(ctx, m, CHECK_AUTO_BLOCKED, p);
    return ADMIT_WAIT;
  }
  if (m->adm_single && m->adm1_dev == lo && hi == lo + 1 &&
      bound_wait(ctx, &ctx->devs[lo])) {
    *p = (admit_plan){ADMIT_WAIT, -1, 0, NULL, 0};
    if (ctx->admit_check)
      admit_check(ctx, m, CHECK_BOUND_WAIT, p);
    return ADMIT_WAIT;
  }
  plan_admission(ctx, m, 0, p);
  if (ctx->admit_check)
    admit_check(ctx, m, CHECK_PLANNED, p);
  if (p->act == ADMIT_WAIT && p->dev < 0 && any &&
      (ctx->auto_fail_gen != ctx->plan_gen || need < ctx->auto_fail_need)) {
    ctx->auto_fail_gen = ctx->plan_gen;
    ctx->auto_fail_need = need;
    ctx->auto_fail_largest = p->largest;
  }
  return p->act;
}

/*
 * Acts on m's plan p (admit_decide, in this generation): fails its
 * waiters (no device can ever hold it), evicts the planned victims (it is
 * admitted once their memory is back), or charges it to its device and
 * starts its load or restore. Whatever it does starts a new plan
 * generation (plans_reset), which is how a caller tells that it acted.
 */
static void admit_act(mb_ctx *ctx, mb__model *m, const admit_plan *pp) {
  uint64_t need = mb__footprint(m);
  admit_plan p = *pp;
  switch (p.act) {
  case ADMIT_FAIL: {
    char msg[256];
    snprintf(msg, sizeof(msg),
             "model '%s' needs %llu bytes but no device can ever hold it "
             "(largest usable: capacity - reserve = %llu bytes)",
             m->name, (unsigned long long)need, (unsigned long long)p.largest);
    mb__adm_remove(ctx, m);
    mb__fail_waiters(ctx, m, MB_ENOSPC, msg);
    plans_reset(ctx);
    return;
  }
  case ADMIT_WAIT:
    return;
  case ADMIT_EVICT: {
    /* mb__evict() changes nothing in the plan pool (host evictions use
     * their own buffer); the plans are stale once it has acted. */
    int n;
    const mb__plan_ent *plan = plan_get(ctx, p.dev, &n);
    if (p.one != NULL)
      mb__evict(ctx, p.one);
    else
      for (int i = 0; i < p.nvict; i++)
        mb__evict(ctx, plan[i].m);
    plans_reset(ctx);
    return; /* admitted when the memory is back */
  }
  default: {
    int restore = m->state == MB_STATE_OFFLOADED;
    mb__adm_remove(ctx, m);
    mb__charge_dev(ctx, m, p.dev, need);
    if (!restore)
      m->resid_peak = 0;
    mb__start_job(ctx, m, restore ? MB_JOB_RESTORE : MB_JOB_LOAD,
                  mb__queue_empty(&m->wq) ? "load" : "acquire");
    plans_started(ctx);
    return;
  }
  }
}

/* Tries to admit a model that wants to become resident: decides, then
 * acts. */
static void try_admit(mb_ctx *ctx, mb__model *m) {
  admit_plan p;
  if (admit_decide(ctx, m, &p) != ADMIT_WAIT)
    admit_act(ctx, m, &p);
}

/* The others need another pass only if the try acted (evicted, started a
 * load, failed): a model joining the list changes nothing for the models
 * before it. */
void mb__admit_new(mb_ctx *ctx, mb__model *m) {
  adm_add(ctx, m);
  plans_reset(ctx);
  uint64_t gen = ctx->plan_gen;
  try_admit(ctx, m);
  if (ctx->plan_gen != gen)
    ctx->devs_dirty = 1;
}

/* any_blocked() said no model that may go on any device can act: each of
 * them from q on in the admission list is planned in full, and must
 * wait. */
static void check_any_blocked(mb_ctx *ctx, mb__queue *q) {
  admit_plan wait = {ADMIT_WAIT, -1, 0, NULL, 0};
  for (; q != &ctx->adm; q = q->next) {
    const mb__model *m = mb__queue_data(q, mb__model, adm_node);
    if (!m->adm_single && mb__wants_resident(m) && !m->unload_pending)
      admit_check(ctx, m, CHECK_ANY_BLOCKED, &wait);
  }
}

/* bound_wait() said every model in h (a device's adm1) waits: each of
 * them is planned in full, and must wait. */
static void check_bound_wait(mb_ctx *ctx, const mb__queue *h) {
  admit_plan wait = {ADMIT_WAIT, -1, 0, NULL, 0};
  mb__queue *q;
  mb__queue_foreach(q, h) {
    const mb__model *m = mb__queue_data(q, mb__model, adm1_node);
    if (mb__wants_resident(m) && !m->unload_pending)
      admit_check(ctx, m, CHECK_BOUND_WAIT, &wait);
  }
}

/*
 * The first of the models bound to one device, in admission order from
 * admit_seq from_seq on, that acts now (its plan in *p), or NULL: what
 * trying each of them in order until one acts would find, as deciding
 * changes nothing. Each device's
 * models are decided in order up to the first that acts or one later than
 * the first found so far; a device whose models all wait (bound_wait) is
 * not visited. Models that no longer wait leave the lists on the way. A
 * device's list decided whole gets its exact footprint bounds.
 */
static mb__model *first_bound_actor(mb_ctx *ctx, uint64_t from_seq, admit_plan *p) {
  mb__model *best = NULL;
  for (int i = 0; i <= ctx->ndev; i++) {
    mb__device *d = i < ctx->ndev ? &ctx->devs[i] : NULL;
    mb__queue *h = d != NULL ? &d->adm1 : &ctx->adm_loose;
    if (mb__queue_empty(h))
      continue;
    if (d != NULL && bound_wait(ctx, d)) {
      if (ctx->admit_check)
        check_bound_wait(ctx, h);
      continue;
    }
    int whole = 1;
    uint64_t lo = UINT64_MAX, hi = 0;
    for (mb__queue *q = h->next; q != h;) {
      mb__model *m = mb__queue_data(q, mb__model, adm1_node);
      q = q->next;
      if (m->admit_seq < from_seq) {
        whole = 0;
        continue;
      }
      if (best != NULL && m->admit_seq > best->admit_seq) {
        whole = 0;
        break;
      }
      if (!mb__wants_resident(m) || m->unload_pending) {
        mb__adm_remove(ctx, m);
        continue;
      }
      admit_plan mp;
      if (admit_decide(ctx, m, &mp) != ADMIT_WAIT) {
        best = m;
        *p = mp;
        whole = 0;
        break;
      }
      uint64_t need = mb__footprint(m);
      lo = need < lo ? need : lo;
      hi = need > hi ? need : hi;
    }
    if (d != NULL && whole && !mb__queue_empty(h)) {
      d->adm1_min = lo;
      d->adm1_max = hi;
    }
  }
  return best;
}

/*
 * Tries every waiting model, oldest first. When no model that may go on any
 * device can act (any_blocked), only the models bound to one device are
 * tried, until one acts: from there on every model is tried, as the state
 * changed, and after each that acts any_blocked is asked again, so the
 * rest of the list is walked only while a model that may go on any device
 * may still act.
 */
void mb__pump_admissions(mb_ctx *ctx) {
  ctx->devs_dirty = 0;
  plans_reset(ctx);
  /* q walks the admission list (adm_node); next is taken before a try,
   * which may take the model out of the list. */
  mb__queue *q = ctx->adm.next;
  /* A pass that tries every model finds the footprint bounds of those that
   * may go on any device again (the list only ever widens them). */
  int whole = 1;
  uint64_t lo = UINT64_MAX, hi = 0;
  uint64_t asked = 0; /* the generation any_blocked() was last asked in */
  while (q != &ctx->adm) {
    if (asked != ctx->plan_gen) {
      asked = ctx->plan_gen;
      if (any_blocked(ctx)) {
        /* The models from q on that may go on any device wait: the next
         * to act, if any, is bound to one device. */
        whole = 0;
        if (ctx->admit_check)
          check_any_blocked(ctx, q);
        admit_plan p;
        mb__model *b = first_bound_actor(
            ctx, mb__queue_data(q, mb__model, adm_node)->admit_seq, &p);
        if (b == NULL)
          break;
        q = b->adm_node.next;
        admit_act(ctx, b, &p);
        continue;
      }
    }
    mb__model *m = mb__queue_data(q, mb__model, adm_node);
    q = q->next;
    if (!mb__wants_resident(m) || m->unload_pending)
      mb__adm_remove(ctx, m);
    else
      try_admit(ctx, m);
    if (whole && m->admit_pending && !m->adm_single) {
      uint64_t need = mb__footprint(m);
      lo = need < lo ? need : lo;
      hi = need > hi ? need : hi;
    }
  }
  if (whole && ctx->adm_any > 0) {
    ctx->adm_any_min = lo;
    ctx->adm_any_max = hi;
  }
}
