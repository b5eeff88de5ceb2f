/*
 * sched.c - the residency state machine (DESIGN §1). Every decision of the
 * core is made here, during a step, with core_lock held and nothing else
 * running under it: backend work is only *started* here (handed to loader
 * threads or the manual executor) and its completion comes back as an event
 * of a later step.
 *
 * A step takes posted requests, lease releases and job completions, fires
 * the timers that are due, and then "advances" every model touched (the
 * dirty list) and retries pending admissions until nothing changes. The
 * clock is read once per step into ctx->now, so the same inputs give the
 * same decisions.
 *
 * Invariants (checked by the tests):
 *   - a model with inflight > 0 is READY and is never offloaded, unloaded or
 *     evicted; its idle timer is not armed;
 *   - per device, used <= usable at admission (a measured footprint larger
 *     than declared may exceed it; idle models are then evicted);
 *   - every request is answered exactly once.
 */
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "modelbuf/modelbuf.h"
#include "alloc.h"
#include "core_int.h"

#define BACKOFF_FIRST_NS 1000000000ull
#define BACKOFF_MAX_NS 60000000000ull
/* Reload estimates for models never measured: disk-ish and PCIe-ish speeds. */
#define EST_LOAD_BPS 1.0e9
#define EST_RESTORE_BPS 10.0e9

static void advance(mb_ctx *ctx, mb__model *m);
static void set_state(mb_ctx *ctx, mb__model *m, mb_state to, const char *reason);
static void lose(mb_ctx *ctx, mb__model *m, int flags, const char *reason);

/* ------------------------------------------------------------------------ */
/* Events and answers                                                        */

void mb__event_locked_core(mb_ctx *ctx, mb_event_type type, mb__model *m, mb_state from,
                      mb_state to, const char *reason) {
  mb__event_buf *b = &ctx->events;
  if (ctx->opts.on_event == NULL)
    return;
  if (b->len == b->cap) {
    size_t cap = b->cap ? b->cap * 2 : 32;
    mb_event *items = mb__realloc(b->items, cap * sizeof(*items));
    if (items == NULL)
      goto drop;
    b->items = items;
    char **reasons = mb__realloc(b->reasons, cap * sizeof(*reasons));
    if (reasons == NULL)
      goto drop;
    b->reasons = reasons;
    char **models = mb__realloc(b->models, cap * sizeof(*models));
    if (models == NULL)
      goto drop;
    b->models = models;
    b->cap = cap;
  }
  char *r = mb__strdup(reason ? reason : "");
  char *name = mb__strdup(m->name);
  if (r == NULL || name == NULL) {
    mb__free(r);
    mb__free(name);
    goto drop;
  }
  mb_event *ev = &b->items[b->len];
  memset(ev, 0, sizeof(*ev));
  ev->seq = ++ctx->event_seq;
  ev->time_ns = ctx->now;
  ev->type = type;
  ev->from = from;
  ev->to = to;
  ev->device = m->device;
  b->reasons[b->len] = r;
  b->models[b->len] = name;
  b->len++;
  return;
drop:
  /* Under memory pressure an event is lost, never the state: count it. */
  ctx->events_dropped++;
}

/* Queues req's answer; done runs after the step, outside core_lock. */
static void answer(mb_ctx *ctx, mb__req *r, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void answer(mb_ctx *ctx, mb__req *r, int rc, const char *fmt, ...) {
  r->rc = rc;
  r->msg[0] = '\0';
  if (fmt != NULL) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->msg, sizeof(r->msg), fmt, ap);
    va_end(ap);
  } else if (rc != 0) {
    snprintf(r->msg, sizeof(r->msg), "%s", mb_strerror(rc));
  }
  if (r->has_timer_slot) {
    mb__heap_cancel(&ctx->heap, &r->timer);
    mb__heap_unreserve(&ctx->heap);
    r->has_timer_slot = 0;
  }
  mb__queue_insert_tail(&ctx->answered, &r->node);
}

static void mark_dirty(mb_ctx *ctx, mb__model *m) {
  if (m->dirty)
    return;
  m->dirty = 1;
  mb__queue_insert_tail(&ctx->dirty, &m->dirty_node);
}

/* Leases on device dev ended: with a device-wide concurrency limit, every
 * model there with waiters may use the freed slots. */
static void device_slots_freed(mb_ctx *ctx, int dev) {
  if (ctx->devs[dev].opts.concurrency <= 0)
    return;
  for (int i = 0; i < ctx->nmodels; i++)
    if (ctx->models[i]->device == dev && !mb__queue_empty(&ctx->models[i]->wq))
      mark_dirty(ctx, ctx->models[i]);
}

static void set_state(mb_ctx *ctx, mb__model *m, mb_state to, const char *reason) {
  mb_state from = m->state;
  if (from == to)
    return;
  m->state = to;
  mb__event_locked_core(ctx, MB_EVENT_STATE, m, from, to, reason);
  mark_dirty(ctx, m);
}

/* ------------------------------------------------------------------------ */
/* Waiter queues                                                             */

#define REQ_OF(q) mb__queue_data(q, mb__req, wnode)

/* The first request of a waiter list (wq, lw or ow), or NULL. */
static mb__req *first_req(const mb__queue *h) {
  mb__queue *q = mb__queue_first(h);
  return q ? REQ_OF(q) : NULL;
}

static void wq_insert(mb__model *m, mb__req *r) {
  mb__queue *p = m->wq.prev;
  /* Higher priority first; equal priority in arrival order. */
  while (p != &m->wq && REQ_OF(p)->priority < r->priority)
    p = p->prev;
  mb__queue_insert_after(p, &r->wnode);
  m->nwait++;
}

static void wq_remove(mb__model *m, mb__req *r) {
  mb__queue_remove(&r->wnode);
  m->nwait--;
}

static int wants_resident(const mb__model *m) {
  return !mb__queue_empty(&m->wq) || !mb__queue_empty(&m->lw);
}

/* ------------------------------------------------------------------------ */
/* Memory accounting                                                         */

uint64_t mb__footprint(const mb__model *m) {
  return m->measured_fp ? m->measured_fp : m->opts.footprint_bytes;
}

static uint64_t host_need(const mb__model *m) {
  return m->measured_host ? m->measured_host : mb__footprint(m);
}

static void charge_dev(mb_ctx *ctx, mb__model *m, int dev, uint64_t bytes) {
  mb__device *d = &ctx->devs[dev];
  m->device = dev;
  m->dev_charge = bytes;
  m->on_dev = 1;
  m->leaving = 0;
  d->used += bytes;
  d->resident++;
  /* The device's resident list: eviction candidates are looked for there,
   * not among every model of the context. */
  mb__queue_insert_head(&d->res_list, &m->dev_node);
}

static void set_dev_charge(mb_ctx *ctx, mb__model *m, uint64_t bytes) {
  mb__device *d = &ctx->devs[m->device];
  d->used = d->used - m->dev_charge + bytes;
  if (m->leaving)
    d->leaving_bytes = d->leaving_bytes - m->dev_charge + bytes;
  m->dev_charge = bytes;
}

/* Marks the model's device bytes as leaving (OFFLOADING/UNLOADING): they
 * will be free soon, so admission waits for them instead of evicting more. */
static void set_leaving(mb_ctx *ctx, mb__model *m, int leaving) {
  if (!m->on_dev || m->leaving == leaving)
    return;
  mb__device *d = &ctx->devs[m->device];
  if (leaving) {
    d->leaving++;
    d->leaving_bytes += m->dev_charge;
  } else {
    d->leaving--;
    d->leaving_bytes -= m->dev_charge;
  }
  m->leaving = leaving;
}

/* The model's device memory is gone. m->device is kept (an offloaded model
 * goes back where it was). */
static void uncharge_dev(mb_ctx *ctx, mb__model *m) {
  if (!m->on_dev)
    return;
  set_leaving(ctx, m, 0);
  mb__device *d = &ctx->devs[m->device];
  d->used -= m->dev_charge;
  d->resident--;
  mb__queue_remove(&m->dev_node);
  m->dev_charge = 0;
  m->on_dev = 0;
  ctx->devs_dirty = 1;
}

static void charge_host(mb_ctx *ctx, mb__model *m, uint64_t bytes) {
  ctx->host_used = ctx->host_used - m->host_charge + bytes;
  m->host_charge = bytes;
}

/* ------------------------------------------------------------------------ */
/* Eviction order                                                            */

/* Time to bring m back if evicted now, in ms (measured, else estimated). */
static double reload_cost_ms(const mb__model *m, int to_host) {
  double bytes = (double)mb__footprint(m);
  if (to_host)
    return m->stats.last_restore_ms > 0 ? m->stats.last_restore_ms
                                        : bytes / EST_RESTORE_BPS * 1e3 + 1;
  return m->stats.avg_load_ms > 0 ? m->stats.avg_load_ms : bytes / EST_LOAD_BPS * 1e3 + 1;
}

static int can_offload(const mb__model *m) {
  return m->be->offload != NULL && m->be->restore != NULL;
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
  return m->hits * exp(-(double)(ctx->now - m->hits_t) / COST_TAU_NS);
}

/* Counts an acquire of m into its use rate (the rules above). */
static void note_use(mb_ctx *ctx, mb__model *m) {
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
static double cost_rank(const mb_ctx *ctx, const mb__model *m, int dev) {
  double gib = (double)mb__footprint(m) / (1024.0 * 1024 * 1024);
  if (gib < 1.0 / 1024)
    gib = 1.0 / 1024;
  double load = reload_cost_ms(m, 0);
  double cost = load;
  if (dev >= 0 && m->opts.offload && can_offload(m))
    cost = reload_cost_ms(m, 1) + load * COST_HOST_SPILL;
  return use_rate(ctx, m) * cost / gib;
}

/* A candidate's rank under the context's policy: lower goes first. LRU
 * ranks all alike (the tie-breakers below decide). dev is -1 in the host tier. */
static double evict_rank(const mb_ctx *ctx, const mb__model *m, int dev) {
  switch (ctx->opts.eviction) {
  case MB_EVICT_COST: return cost_rank(ctx, m, dev);
  case MB_EVICT_CUSTOM: return ctx->opts.evict_rank(ctx->opts.evict_arg, m->name, m->user, dev);
  default: return 0;
  }
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

static int evictable(const mb__model *m, int dev) {
  return m->device == dev && m->state == MB_STATE_READY && m->inflight == 0 &&
         !m->opts.pinned && !wants_resident(m) &&
         !m->offload_pending && !m->unload_pending;
}

static int host_evictable(const mb__model *m) {
  return m->state == MB_STATE_OFFLOADED && !m->opts.pinned && !wants_resident(m) &&
         !m->unload_pending;
}

/*
 * Collects every eviction candidate of device dev (host: of the host tier)
 * into ctx->cand_dev (cand_host), sorted by eviction order, and returns how
 * many. Device candidates come from the device's resident list, so the cost
 * follows what is resident there, not the number of models. The buffers
 * hold one entry per model: a list is never cut short.
 */
static int collect(mb_ctx *ctx, int dev, int host) {
  mb__cand *out = host ? ctx->cand_host : ctx->cand_dev;
  int n = 0;
  if (host) {
    for (int i = 0; i < ctx->nmodels; i++) {
      mb__model *m = ctx->models[i];
      if (!host_evictable(m))
        continue;
      out[n].m = m;
      out[n].rank = evict_rank(ctx, m, -1);
      n++;
    }
  } else {
    mb__queue *q;
    mb__queue_foreach(q, &ctx->devs[dev].res_list) {
      mb__model *m = mb__queue_data(q, mb__model, dev_node);
      if (!evictable(m, dev))
        continue;
      out[n].m = m;
      out[n].rank = evict_rank(ctx, m, dev);
      n++;
    }
  }
  if (n > 1)
    qsort(out, (size_t)n, sizeof(*out), cand_cmp);
  return n;
}

static void start_job(mb_ctx *ctx, mb__model *m, mb_job_kind kind, const char *why);

/*
 * queue_timeout_excludes_load: while a model loads or restores for its
 * waiters, their queue timeouts stand still (the backend bounds the load),
 * and run on with what was left once it ends, whatever its outcome.
 */
static void pause_waiter(mb_ctx *ctx, mb__req *r) {
  if (r->paused || !r->has_timer_slot)
    return;
  r->left_ns = 0;
  if (mb__timer_armed(&r->timer)) {
    if (r->timer.deadline > ctx->now)
      r->left_ns = r->timer.deadline - ctx->now;
    mb__heap_cancel(&ctx->heap, &r->timer);
  }
  r->paused = 1;
}

static void pause_waiters(mb_ctx *ctx, mb__model *m) {
  mb__queue *q;
  if (!m->opts.queue_timeout_excludes_load)
    return;
  mb__queue_foreach(q, &m->wq)
    pause_waiter(ctx, REQ_OF(q));
  mb__queue_foreach(q, &m->lw)
    pause_waiter(ctx, REQ_OF(q));
}

static void resume_waiter(mb_ctx *ctx, mb__req *r) {
  if (!r->paused)
    return;
  r->paused = 0;
  mb__heap_arm(&ctx->heap, &r->timer, ctx->now + r->left_ns);
}

static void resume_waiters(mb_ctx *ctx, mb__model *m) {
  mb__queue *q;
  mb__queue_foreach(q, &m->wq)
    resume_waiter(ctx, REQ_OF(q));
  mb__queue_foreach(q, &m->lw)
    resume_waiter(ctx, REQ_OF(q));
}

/* Whether a new waiter of m joins a load in progress: its timeout starts
 * paused. */
static int joins_load(const mb__model *m) {
  return m->opts.queue_timeout_excludes_load &&
         (m->state == MB_STATE_LOADING || m->state == MB_STATE_RESTORING);
}

/* Starts a full release of an OFFLOADED model to make room in the host tier. */
static void host_evict(mb_ctx *ctx, mb__model *m) {
  m->stats.evictions++;
  mb__event_locked_core(ctx, MB_EVENT_EVICT, m, m->state, MB_STATE_UNLOADING, "host eviction");
  mb__heap_cancel(&ctx->heap, &m->timer);
  start_job(ctx, m, MB_JOB_UNLOAD, "evict");
}

/*
 * Whether bytes fit in the host tier, evicting offloaded models if that
 * makes them fit (only then). Host bytes still held by models being unloaded
 * count as in use until they are gone.
 */
static int host_make_room(mb_ctx *ctx, const mb__model *self, uint64_t bytes) {
  if (ctx->host_used + bytes <= ctx->host_budget)
    return 1;
  mb__cand *cand = ctx->cand_host;
  int n = collect(ctx, -1, 1);
  uint64_t freed = 0;
  int k = 0;
  while (k < n && ctx->host_used - freed + bytes > ctx->host_budget) {
    if (cand[k].m != self)
      freed += cand[k].m->host_charge;
    k++;
  }
  if (ctx->host_used - freed + bytes > ctx->host_budget)
    return 0;
  for (int i = 0; i < k; i++)
    if (cand[i].m != self)
      host_evict(ctx, cand[i].m);
  /* The evicted bytes are still charged until their unload completes, but
   * they are promised: the offload may go ahead. */
  return 1;
}

/* ------------------------------------------------------------------------ */
/* Jobs                                                                      */

/*
 * Hands a backend operation to the executor and moves to its transitional
 * state. why becomes the event's reason: "acquire", "load", "idle", "evict",
 * "request" (an explicit offload/unload), "error", "shutdown"; a model being
 * removed always says "remove".
 */
static void start_job(mb_ctx *ctx, mb__model *m, mb_job_kind kind, const char *why) {
  struct mb_job *j = &m->job;
  static const mb_state next[] = {
      [MB_JOB_LOAD] = MB_STATE_LOADING,
      [MB_JOB_OFFLOAD] = MB_STATE_OFFLOADING,
      [MB_JOB_RESTORE] = MB_STATE_RESTORING,
      [MB_JOB_UNLOAD] = MB_STATE_UNLOADING,
  };
  memset(j, 0, sizeof(*j));
  j->kind = kind;
  j->m = m;
  j->ctx = ctx;
  j->device = m->device;
  if (m->device >= 0) {
    j->device_kind = ctx->devs[m->device].opts.kind;
    j->device_ordinal = ctx->devs[m->device].opts.ordinal;
  }
  j->start_ns = ctx->now;
  j->budget_bytes = m->dev_charge;
  j->busy = 1;
  ctx->jobs_busy++;
  if (kind == MB_JOB_LOAD || kind == MB_JOB_RESTORE) {
    ctx->devs[m->device].loads++;
    m->residency++;
    pause_waiters(ctx, m);
  }
  j->residency = m->residency;
  if (kind == MB_JOB_OFFLOAD || kind == MB_JOB_UNLOAD)
    set_leaving(ctx, m, 1);
  set_state(ctx, m, next[kind], m->removing ? "remove" : why);
  mb__submit_job_locked_core(ctx, j);
}

/* Moves an idle READY model off its device: offload if allowed and it fits
 * in the host tier, else unload. explicit: an offload request (policy aside). */
static void go_idle(mb_ctx *ctx, mb__model *m, int allow_offload, const char *why) {
  mb__heap_cancel(&ctx->heap, &m->timer);
  if (allow_offload && can_offload(m) && host_make_room(ctx, m, host_need(m))) {
    charge_host(ctx, m, host_need(m));
    start_job(ctx, m, MB_JOB_OFFLOAD, why);
  } else {
    start_job(ctx, m, MB_JOB_UNLOAD, why);
  }
}

static void evict(mb_ctx *ctx, mb__model *m) {
  m->stats.evictions++;
  mb__event_locked_core(ctx, MB_EVENT_EVICT, m, m->state, m->state, "eviction");
  go_idle(ctx, m, m->opts.offload, "evict");
}

/* ------------------------------------------------------------------------ */
/* Admission                                                                 */

/* Whether a waiting model can only go on one device: a restore goes back
 * where it was, and a model may name its device. */
static int single_device(const mb__model *m) {
  return (m->state == MB_STATE_OFFLOADED && m->device >= 0) ||
         m->opts.device != MB_DEVICE_AUTO;
}

static void adm_remove(mb_ctx *ctx, mb__model *m) {
  if (!m->admit_pending)
    return;
  mb__queue_remove(&m->adm_node);
  if (m->adm_single)
    mb__queue_remove(&m->adm1_node);
  else
    ctx->adm_any--;
  m->admit_pending = 0;
}

static void adm_add(mb_ctx *ctx, mb__model *m) {
  if (m->admit_pending)
    return;
  m->admit_pending = 1;
  m->admit_seq = ++ctx->adm_seq;
  mb__queue_insert_tail(&ctx->adm, &m->adm_node);
  m->adm_single = single_device(m);
  if (m->adm_single) {
    mb__queue_insert_tail(&ctx->adm1, &m->adm1_node);
  } else {
    uint64_t need = mb__footprint(m);
    if (ctx->adm_any == 0 || need < ctx->adm_any_min)
      ctx->adm_any_min = need;
    if (ctx->adm_any == 0 || need > ctx->adm_any_max)
      ctx->adm_any_max = need;
    ctx->adm_any++;
  }
}

static void fail_waiters(mb_ctx *ctx, mb__model *m, int rc, const char *msg) {
  mb__req *r;
  while ((r = first_req(&m->wq)) != NULL) {
    wq_remove(m, r);
    if (rc == MB_ENOSPC)
      m->stats.rejected++;
    answer(ctx, r, rc, "%s", msg);
  }
  while ((r = first_req(&m->lw)) != NULL) {
    mb__queue_remove(&r->wnode);
    answer(ctx, r, rc, "%s", msg);
  }
}

static uint64_t usable_on(const mb_ctx *ctx, int dev) {
  return ctx->devs[dev].usable;
}

/* Starts a new generation of admission plans: every device's plan is
 * stale. Called before an admission pass and after any admission acts. */
static void plans_reset(mb_ctx *ctx) {
  ctx->plan_gen++;
  ctx->plan_used = 0;
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
    int k = collect(ctx, dev, 0);
    mb__plan_ent *p = ctx->plan + ctx->plan_used;
    uint64_t charge = 0;
    double cost = 0;
    for (int i = 0; i < k; i++) {
      const mb__cand *c = &ctx->cand_dev[i];
      charge += c->m->dev_charge;
      cost += ctx->opts.eviction == MB_EVICT_COST ? c->rank : reload_cost_ms(c->m, 0);
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

/*
 * Plans room for need bytes on dev: returns 0 if it fits now, 1 if it will
 * fit once leaving models are gone or planned victims are evicted (*nvict
 * victims first in the device's plan, *cost their summed eviction cost),
 * -1 if not now.
 */
static int plan_room(mb_ctx *ctx, int dev, uint64_t need, int *nvict, double *cost) {
  mb__device *d = &ctx->devs[dev];
  int max_loaded = d->opts.max_loaded;
  *nvict = 0;
  *cost = 0;
  if (d->used + need <= d->usable && (max_loaded == 0 || d->resident < max_loaded))
    return 0;
  uint64_t leaving_bytes = d->leaving_bytes;
  int leaving = d->leaving;
  if (d->used - leaving_bytes + need <= d->usable &&
      (max_loaded == 0 || d->resident - leaving < max_loaded))
    return 1;
  if (d->fail_gen == ctx->plan_gen && need >= d->fail_need)
    return -1;
  int n;
  const mb__plan_ent *p = plan_get(ctx, dev, &n);
  /* The fewest victims (a prefix of the plan) that make room: the bytes
   * freed grow with their number, so a binary search finds it. */
#define ROOM_AFTER(k) \
  (d->used - leaving_bytes - ((k) > 0 ? p[(k) - 1].charge_sum : 0) + need <= d->usable && \
   (max_loaded == 0 || d->resident - leaving - (k) < max_loaded))
  if (n == 0 || !ROOM_AFTER(n)) {
    if (d->fail_gen != ctx->plan_gen || need < d->fail_need) {
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
  return 1;
}

/* Whether every eviction planned now would cost more than 0 (so a plan
 * that only waits for leaving models, at cost 0, beats it). */
static int evictions_cost(mb_ctx *ctx);

/*
 * Whether try_admit() of a model of need bytes that may go on any device
 * would do nothing now; 0 when it may act or it is not known cheaply. An
 * admission pass asks this of every waiting model, so it answers from
 * per-generation figures instead of planning every device for each:
 *   - fits now somewhere: try_admit takes the device with the most free
 *     memory, and does nothing if that one is busy with max_parallel_loads;
 *   - fits once leaving models are gone on some device: that plan costs 0
 *     and evicts nobody, so it wins unless evicting could also cost <= 0;
 *   - a smaller model already found no room anywhere in this generation.
 * The answers are exactly what the full planning would decide.
 */
static int evictions_cost(mb_ctx *ctx) {
  /* Other policies sum reload times, which are never 0. */
  if (ctx->opts.eviction != MB_EVICT_COST)
    return 1;
  if (ctx->auto_cost_gen != ctx->plan_gen) {
    /* Every candidate costing more than 0 is enough (a plan sums them);
     * the candidates need not be sorted for that. */
    ctx->auto_cost_gen = ctx->plan_gen;
    ctx->auto_min_cost = 1;
    for (int i = 0; i < ctx->ndev && ctx->auto_min_cost > 0; i++) {
      mb__queue *q;
      mb__queue_foreach(q, &ctx->devs[i].res_list) {
        const mb__model *m = mb__queue_data(q, mb__model, dev_node);
        if (!evictable(m, i))
          continue;
        /* cost_rank() = use rate x a positive cost: surely above 0 while
         * the decayed count is not vanishing (no exp() needed). */
        if (m->hits >= 1e-6 && (double)(ctx->now - m->hits_t) < 600 * COST_TAU_NS)
          continue;
        double c = evict_rank(ctx, m, i); /* what plan_get() sums for it */
        if (c <= 0) {
          ctx->auto_min_cost = c;
          break;
        }
      }
    }
  }
  return ctx->auto_min_cost > 0;
}

static int auto_blocked(mb_ctx *ctx, uint64_t need) {
  if (ctx->auto_gen != ctx->plan_gen) {
    ctx->auto_gen = ctx->plan_gen;
    ctx->auto_usable = ctx->auto_t0 = ctx->auto_t1 = 0;
    ctx->auto_dev0 = -1;
    ctx->auto_has_t1 = 0;
    for (int i = 0; i < ctx->ndev; i++) {
      const mb__device *d = &ctx->devs[i];
      int ml = d->opts.max_loaded;
      if (d->usable > ctx->auto_usable)
        ctx->auto_usable = d->usable;
      if (d->used < d->usable && (ml == 0 || d->resident < ml) &&
          (ctx->auto_dev0 < 0 || d->usable - d->used > ctx->auto_t0)) {
        ctx->auto_dev0 = i;
        ctx->auto_t0 = d->usable - d->used;
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
  if (ctx->auto_dev0 >= 0 && need <= ctx->auto_t0) {
    const mb__device *d = &ctx->devs[ctx->auto_dev0];
    int maxp = d->opts.max_parallel_loads > 0 ? d->opts.max_parallel_loads : 1;
    return d->loads >= maxp;
  }
  if (ctx->auto_has_t1 && need <= ctx->auto_t1)
    return evictions_cost(ctx);
  return ctx->auto_fail_gen == ctx->plan_gen && need >= ctx->auto_fail_need &&
         need <= ctx->auto_fail_largest;
}

/*
 * Tries to admit a model that wants to become resident: picks a device
 * (fixed, or for MB_DEVICE_AUTO the one where it fits with the least
 * eviction cost), evicts if that makes room, and starts the load or restore
 * once the memory is there. Whatever it does starts a new plan generation
 * (plans_reset), which is how a caller tells that it acted.
 */
static void try_admit(mb_ctx *ctx, mb__model *m) {
  uint64_t need = mb__footprint(m);
  int restore = m->state == MB_STATE_OFFLOADED;
  int lo = 0, hi = ctx->ndev;
  if (restore && m->device >= 0) {
    lo = m->device;
    hi = lo + 1;
  } else if (m->opts.device != MB_DEVICE_AUTO) {
    lo = m->opts.device;
    hi = lo + 1;
  }
  int any = lo == 0 && hi == ctx->ndev;
  if (any && auto_blocked(ctx, need))
    return;
  int best = -1, best_kind = 2;
  double best_cost = 0;
  uint64_t best_free = 0;
  int ever = 0;
  uint64_t largest = 0;
  for (int dev = lo; dev < hi; dev++) {
    if (usable_on(ctx, dev) > largest)
      largest = usable_on(ctx, dev);
    if (need > usable_on(ctx, dev))
      continue;
    ever = 1;
    int nv;
    double cost;
    int kind = plan_room(ctx, dev, need, &nv, &cost);
    if (kind < 0)
      continue;
    uint64_t freeb = ctx->devs[dev].usable - (ctx->devs[dev].used < ctx->devs[dev].usable
                                                  ? ctx->devs[dev].used
                                                  : ctx->devs[dev].usable);
    if (best < 0 || kind < best_kind || (kind == best_kind && kind == 0 && freeb > best_free) ||
        (kind == best_kind && kind == 1 && cost < best_cost)) {
      best = dev;
      best_kind = kind;
      best_cost = cost;
      best_free = freeb;
    }
  }
  if (!ever) {
    char msg[256];
    snprintf(msg, sizeof(msg),
             "model '%s' needs %llu bytes but no device can ever hold it "
             "(largest usable: capacity - reserve = %llu bytes)",
             m->name, (unsigned long long)need, (unsigned long long)largest);
    adm_remove(ctx, m);
    fail_waiters(ctx, m, MB_ENOSPC, msg);
    plans_reset(ctx);
    return;
  }
  if (best < 0) {
    if (any && (ctx->auto_fail_gen != ctx->plan_gen || need < ctx->auto_fail_need)) {
      ctx->auto_fail_gen = ctx->plan_gen;
      ctx->auto_fail_need = need;
      ctx->auto_fail_largest = largest;
    }
    return; /* wait for leases to be released */
  }
  if (best_kind == 1) {
    int nv, n;
    double cost;
    plan_room(ctx, best, need, &nv, &cost);
    /* evict() changes nothing in the plan pool (host evictions use their
     * own buffer); the plans are stale once it has acted. */
    const mb__plan_ent *p = plan_get(ctx, best, &n);
    for (int i = 0; i < nv; i++)
      evict(ctx, p[i].m);
    if (nv > 0)
      plans_reset(ctx);
    return; /* admitted when the memory is back */
  }
  mb__device *d = &ctx->devs[best];
  int maxp = d->opts.max_parallel_loads > 0 ? d->opts.max_parallel_loads : 1;
  if (d->loads >= maxp)
    return;
  adm_remove(ctx, m);
  charge_dev(ctx, m, best, need);
  if (!restore)
    m->resid_peak = 0;
  start_job(ctx, m, restore ? MB_JOB_RESTORE : MB_JOB_LOAD,
            mb__queue_empty(&m->wq) ? "load" : "acquire");
  plans_reset(ctx);
}

/*
 * A model starts waiting for memory: it joins the admission list and is
 * tried at once. The others need another pass only if that acted (evicted,
 * started a load, failed): a model joining the list changes nothing for
 * the models before it.
 */
static void admit_new(mb_ctx *ctx, mb__model *m) {
  adm_add(ctx, m);
  plans_reset(ctx);
  uint64_t gen = ctx->plan_gen;
  try_admit(ctx, m);
  if (ctx->plan_gen != gen)
    ctx->devs_dirty = 1;
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
  if (ctx->auto_dev0 >= 0 && lo <= ctx->auto_t0) {
    const mb__device *d = &ctx->devs[ctx->auto_dev0];
    int maxp = d->opts.max_parallel_loads > 0 ? d->opts.max_parallel_loads : 1;
    if (d->loads < maxp)
      return 0;
  }
  /* Up to t0 a model takes the busy device with the most free memory; up to
   * t1 it waits for leaving models, unless an eviction could cost <= 0. */
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
      if (evictable(m, i)) {
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
 * Tries every waiting model, oldest first. When no model that may go on any
 * device can act (any_blocked), only the models bound to one device are
 * tried, until one acts: from there on every model is tried, as the state
 * changed.
 */
static void pump_admissions(mb_ctx *ctx) {
  ctx->devs_dirty = 0;
  plans_reset(ctx);
  /* q walks the admission list (adm_node); next is taken before a try,
   * which may take the model out of the list. */
  mb__queue *q = ctx->adm.next;
  if (any_blocked(ctx)) {
    q = &ctx->adm;
    for (mb__queue *q1 = ctx->adm1.next; q1 != &ctx->adm1;) {
      mb__model *m = mb__queue_data(q1, mb__model, adm1_node);
      mb__queue *next = q1->next, *after = m->adm_node.next;
      uint64_t gen = ctx->plan_gen;
      if (!wants_resident(m) || m->unload_pending)
        adm_remove(ctx, m);
      else
        try_admit(ctx, m);
      if (ctx->plan_gen != gen) {
        q = after;
        break;
      }
      q1 = next;
    }
  }
  while (q != &ctx->adm) {
    mb__model *m = mb__queue_data(q, mb__model, adm_node);
    q = q->next;
    if (!wants_resident(m) || m->unload_pending)
      adm_remove(ctx, m);
    else
      try_admit(ctx, m);
  }
}

/* ------------------------------------------------------------------------ */
/* Grants                                                                    */

static int device_slot_free(const mb_ctx *ctx, const mb__model *m) {
  const mb__device *d = &ctx->devs[m->device];
  return d->opts.concurrency <= 0 || d->leases < d->opts.concurrency;
}

static int can_grant(const mb_ctx *ctx, const mb__model *m) {
  return m->state == MB_STATE_READY && !m->offload_pending && !m->unload_pending &&
         m->inflight < m->opts.max_concurrency && !ctx->shutting_down;
}

static int wait_bucket(double ms) {
  int i = 0;
  while (i < MB_WAIT_BUCKETS - 1 && ms > mb_wait_bucket_ms[i])
    i++;
  return i;
}

/*
 * A new lease on m: in the lease table, with room in the timer heap for
 * its TTL check, the TTL (ttl_ms > 0) armed from now. NULL when out of
 * memory, with nothing changed.
 */
static mb__lease *lease_new(mb_ctx *ctx, mb__model *m, int64_t ttl_ms) {
  mb__lease *l = mb__calloc(1, sizeof(*l));
  if (l == NULL || mb__heap_reserve(&ctx->heap) != 0) {
    mb__free(l);
    return NULL;
  }
  l->m = m;
  l->device = m->device;
  mb__timer_init(&l->timer, MB__T_TTL);
  mb__queue_init(&l->rel_node);
  mb__queue_init(&l->renew_node);
  pthread_mutex_lock(&ctx->post_lock);
  l->id = ++ctx->next_lease_id;
  if (ttl_ms > 0)
    l->ttl_deadline = ctx->now + mb__ms_to_ns(ttl_ms);
  int rc = mb__lease_insert_locked_post(ctx, l);
  pthread_mutex_unlock(&ctx->post_lock);
  if (rc != 0) {
    mb__heap_unreserve(&ctx->heap);
    mb__free(l);
    return NULL;
  }
  if (l->ttl_deadline)
    mb__heap_arm(&ctx->heap, &l->timer, l->ttl_deadline);
  return l;
}

/* A lease on m was granted after waited_ns: the model is in use (its idle
 * timer stops), with the keep-alive asked for, and the wait is counted. */
static void lease_granted(mb_ctx *ctx, mb__model *m, int64_t keep_alive_ms, uint64_t waited_ns) {
  m->inflight++;
  ctx->devs[m->device].leases++;
  mb__heap_cancel(&ctx->heap, &m->timer);
  m->ka_current = keep_alive_ms != MB_DEFAULT ? keep_alive_ms : m->opts.keep_alive_ms;
  m->last_accessed = ctx->now;
  double ms = (double)waited_ns / 1e6;
  m->stats.wait_buckets[wait_bucket(ms)]++;
  m->stats.wait_count++;
  m->stats.wait_sum_ms += ms;
}

static void grant(mb_ctx *ctx, mb__model *m, mb__req *r) {
  wq_remove(m, r);
  mb__lease *l = lease_new(ctx, m, r->ttl_ms);
  if (l == NULL) {
    answer(ctx, r, MB_ENOMEM, "out of memory granting a lease");
    return;
  }
  uint64_t waited = ctx->now - r->enq_ns;
  lease_granted(ctx, m, r->keep_alive_ms, waited);
  r->queue_ns = waited > r->load_ns ? waited - r->load_ns : 0;
  r->lease.id = l->id;
  r->lease.device = l->device;
  answer(ctx, r, 0, NULL);
}

/* Grants waiting acquires of m while slots allow. */
static void grant_model(mb_ctx *ctx, mb__model *m) {
  mb__req *r;
  while ((r = first_req(&m->wq)) != NULL && can_grant(ctx, m) && device_slot_free(ctx, m))
    grant(ctx, m, r);
}

/*
 * With a device-wide concurrency limit, a freed slot goes to the best
 * waiter among all the device's models: highest priority, then earliest.
 */
static void grant_device(mb_ctx *ctx, int dev) {
  for (;;) {
    mb__model *best = NULL;
    mb__req *best_r = NULL;
    for (int i = 0; i < ctx->nmodels; i++) {
      mb__model *m = ctx->models[i];
      mb__req *r = first_req(&m->wq);
      if (m->device != dev || r == NULL || !can_grant(ctx, m))
        continue;
      if (best == NULL || r->priority > best_r->priority ||
          (r->priority == best_r->priority && r->seq < best_r->seq)) {
        best = m;
        best_r = r;
      }
    }
    if (best == NULL || !device_slot_free(ctx, best))
      return;
    grant(ctx, best, best_r);
  }
}

/* ------------------------------------------------------------------------ */
/* Advancing a model                                                         */

static void answer_op_waiters(mb_ctx *ctx, mb__model *m, int rc, const char *msg) {
  mb__req *r;
  while ((r = first_req(&m->ow)) != NULL) {
    mb__queue_remove(&r->wnode);
    answer(ctx, r, rc, "%s", msg ? msg : "");
  }
}

/* Answers the offload requests waiting on m with rc and msg; the unload
 * and remove requests stay, oldest first from then on (the list held them
 * newest first). */
static void fail_offload_waiters(mb_ctx *ctx, mb__model *m, int rc, const char *msg) {
  mb__queue keep;
  mb__req *r;
  mb__queue_init(&keep);
  while ((r = first_req(&m->ow)) != NULL) {
    mb__queue_remove(&r->wnode);
    if (r->type == MB__R_OFFLOAD)
      answer(ctx, r, rc, "%s", msg);
    else
      mb__queue_insert_head(&keep, &r->wnode);
  }
  mb__queue_move(&keep, &m->ow);
}

static void answer_load_waiters(mb_ctx *ctx, mb__model *m) {
  mb__req *r;
  if (!mb__queue_empty(&m->lw)) /* the model's keep-alive, unless a load asked for one */
    m->ka_current = m->opts.keep_alive_ms;
  while ((r = first_req(&m->lw)) != NULL) {
    mb__queue_remove(&r->wnode);
    if (r->keep_alive_ms != MB_DEFAULT)
      m->ka_current = r->keep_alive_ms;
    r->load_ns = m->last_load_ns;
    answer(ctx, r, 0, NULL);
  }
}

static void arm_idle(mb_ctx *ctx, mb__model *m) {
  if (mb__timer_armed(&m->timer))
    return;
  if (m->ka_current == MB_FOREVER)
    return;
  if (m->ka_current == 0) {
    go_idle(ctx, m, m->opts.offload, "idle");
    return;
  }
  mb__heap_arm(&ctx->heap, &m->timer, m->idle_since + mb__ms_to_ns(m->ka_current));
}

static void advance(mb_ctx *ctx, mb__model *m) {
  /* No longer waiting (its requests timed out or were canceled): out of
   * the admission list now, as a pass may not visit it. */
  if (m->admit_pending && (!wants_resident(m) || m->unload_pending))
    adm_remove(ctx, m);
  switch (m->state) {
  case MB_STATE_UNLOADED:
  case MB_STATE_FAILED:
    if (m->removing || ctx->shutting_down)
      break;
    if (wants_resident(m) && !m->admit_pending) {
      admit_new(ctx, m);
    }
    break;
  case MB_STATE_OFFLOADED:
    if (m->unload_pending || ctx->shutting_down) {
      mb__heap_cancel(&ctx->heap, &m->timer);
      start_job(ctx, m, MB_JOB_UNLOAD, ctx->shutting_down ? "shutdown" : "request");
    } else if (wants_resident(m)) {
      mb__heap_cancel(&ctx->heap, &m->timer);
      if (!m->admit_pending) {
        admit_new(ctx, m);
      }
    } else if (m->offload_pending) {
      m->offload_pending = 0;
      answer_op_waiters(ctx, m, 0, NULL);
    } else if (!mb__timer_armed(&m->timer) && m->opts.host_keep_alive_ms != MB_FOREVER) {
      mb__heap_arm(&ctx->heap, &m->timer,
                   m->idle_since + mb__ms_to_ns(m->opts.host_keep_alive_ms));
    }
    break;
  case MB_STATE_READY:
    if (m->inflight == 0 && (m->unload_pending || ctx->shutting_down)) {
      mb__heap_cancel(&ctx->heap, &m->timer);
      start_job(ctx, m, MB_JOB_UNLOAD, ctx->shutting_down ? "shutdown" : "request");
      break;
    }
    if (m->inflight == 0 && m->offload_pending) {
      mb__heap_cancel(&ctx->heap, &m->timer);
      if (!host_make_room(ctx, m, host_need(m))) {
        m->offload_pending = 0;
        char msg[200];
        snprintf(msg, sizeof(msg),
                 "host tier cannot hold '%s' (%llu bytes needed, %llu of %llu used)", m->name,
                 (unsigned long long)host_need(m), (unsigned long long)ctx->host_used,
                 (unsigned long long)ctx->host_budget);
        mb__req *r;
        while ((r = first_req(&m->ow)) != NULL) {
          mb__queue_remove(&r->wnode);
          answer(ctx, r, r->type == MB__R_OFFLOAD ? MB_ENOSPC : 0, "%s", msg);
        }
        mark_dirty(ctx, m);
        break;
      }
      charge_host(ctx, m, host_need(m));
      start_job(ctx, m, MB_JOB_OFFLOAD, "request");
      break;
    }
    answer_load_waiters(ctx, m);
    if (ctx->devs[m->device].opts.concurrency > 0)
      grant_device(ctx, m->device);
    else
      grant_model(ctx, m);
    if (m->inflight == 0 && mb__queue_empty(&m->wq) && !m->offload_pending && !m->unload_pending)
      arm_idle(ctx, m);
    break;
  default:
    break; /* a job is running; its completion advances the model */
  }
}

/* ------------------------------------------------------------------------ */
/* Job completions                                                           */

static void note_usage(mb__model *m, const struct mb_job *j) {
  if (!j->have_usage)
    return;
  m->usage = j->usage;
  if (j->usage.device_bytes > m->resid_peak)
    m->resid_peak = j->usage.device_bytes;
}

/* End of a residency: remember its peak and watch for growth. */
static void end_residency(mb_ctx *ctx, mb__model *m) {
  if (m->resid_peak == 0)
    return;
  uint64_t prev = m->measured_fp;
  if (prev && m->resid_peak > prev + prev / 100 + (1u << 20))
    m->growth_streak++;
  else
    m->growth_streak = 0;
  m->measured_fp = m->resid_peak;
  if (m->growth_streak >= 3 && !(m->warnings & MB_WARN_MEMORY_GROWTH)) {
    m->warnings |= MB_WARN_MEMORY_GROWTH;
    snprintf(m->warning_text, sizeof(m->warning_text),
             "memory grew across %d residencies in a row (now %llu bytes)", m->growth_streak + 1,
             (unsigned long long)m->resid_peak);
    mb__event_locked_core(ctx, MB_EVENT_WARNING, m, m->state, m->state, m->warning_text);
  }
  m->resid_peak = 0;
}

static void become_ready(mb_ctx *ctx, mb__model *m, uint64_t took_ns, const char *why) {
  m->loaded_at = ctx->now;
  m->last_load_ns = took_ns;
  m->idle_since = ctx->now;
  /* Waiters that were here while it loaded waited for this load. */
  mb__queue *q;
  mb__queue_foreach(q, &m->wq) {
    mb__req *r = REQ_OF(q);
    r->load_ns = took_ns < ctx->now - r->enq_ns ? took_ns : ctx->now - r->enq_ns;
  }
  set_state(ctx, m, MB_STATE_READY, why);
  /* The charge becomes what was measured. Above what was admitted it may
   * push the device over its budget: then make room by evicting idle models. */
  if (m->usage.device_bytes && m->usage.device_bytes < m->dev_charge) {
    set_dev_charge(ctx, m, m->usage.device_bytes);
    ctx->devs_dirty = 1;
  } else if (m->usage.device_bytes > m->dev_charge) {
    set_dev_charge(ctx, m, m->usage.device_bytes);
    mb__device *d = &ctx->devs[m->device];
    if (d->used > d->usable) {
      mb__cand *vict = ctx->cand_dev;
      int n = collect(ctx, m->device, 0);
      uint64_t over = d->used - d->usable, freed = 0;
      for (int i = 0; i < n && freed < over; i++) {
        if (vict[i].m == m)
          continue;
        freed += vict[i].m->dev_charge;
        evict(ctx, vict[i].m);
      }
    }
  }
}

static void job_done(mb_ctx *ctx, struct mb_job *j) {
  mb__model *m = j->m;
  uint64_t took = ctx->now - j->start_ns;
  double ms = (double)took / 1e6;
  char why[300];
  j->busy = 0;
  ctx->jobs_busy--;
  if (j->kind == MB_JOB_LOAD || j->kind == MB_JOB_RESTORE)
    ctx->devs[j->device].loads--;
  ctx->devs_dirty = 1;

  int canceled = m->cancel_pending;
  m->cancel_pending = 0;
  if (j->kind == MB_JOB_LOAD || j->kind == MB_JOB_RESTORE)
    resume_waiters(ctx, m);

  switch (j->kind) {
  case MB_JOB_LOAD:
    if (j->rc != 0 && canceled) {
      /* Canceled by an unload: back to UNLOADED, no back-off. Its waiters
       * had their answer when the cancel was asked for; later ones load
       * it again. */
      uncharge_dev(ctx, m);
      m->device = -1;
      m->unload_pending = m->offload_pending = 0;
      set_state(ctx, m, MB_STATE_UNLOADED, "canceled");
      answer_op_waiters(ctx, m, 0, NULL);
    } else if (j->rc == 0) {
      note_usage(m, j);
      m->stats.loads++;
      m->stats.last_load_ms = ms;
      double prev_avg = m->stats.avg_load_ms;
      m->load_count_for_avg++;
      m->stats.avg_load_ms += (ms - m->stats.avg_load_ms) / (double)m->load_count_for_avg;
      m->fail_count = 0;
      m->error[0] = '\0';
      if (m->load_count_for_avg > 1 && ms > 2.0 * prev_avg) {
        m->warnings |= MB_WARN_SLOW_LOAD;
        snprintf(m->warning_text, sizeof(m->warning_text),
                 "load took %.0f ms, over twice its average of %.0f ms", ms, prev_avg);
        mb__event_locked_core(ctx, MB_EVENT_WARNING, m, m->state, m->state, m->warning_text);
      } else {
        m->warnings &= ~MB_WARN_SLOW_LOAD;
      }
      become_ready(ctx, m, took, "loaded");
      if (j->note[0])
        mb__event_locked_core(ctx, MB_EVENT_WARNING, m, m->state, m->state, j->note);
    } else {
      m->stats.load_failures++;
      snprintf(m->error, sizeof(m->error), "%s", j->msg[0] ? j->msg : mb_strerror(j->rc));
      m->fail_count++;
      uint64_t back = BACKOFF_FIRST_NS << (m->fail_count - 1 < 6 ? m->fail_count - 1 : 6);
      if (back > BACKOFF_MAX_NS)
        back = BACKOFF_MAX_NS;
      m->retry_at = ctx->now + back;
      uncharge_dev(ctx, m);
      m->device = -1;
      snprintf(why, sizeof(why), "error: %s", m->error);
      set_state(ctx, m, MB_STATE_FAILED, why);
      snprintf(why, sizeof(why), "load of '%s' failed: %s", m->name, m->error);
      /* A load the backend gave up as timed out (its own limit, named in
       * the message) is a timeout for the waiters too. */
      fail_waiters(ctx, m, j->rc == MB_ETIMEDOUT ? MB_ETIMEDOUT : MB_ELOAD, why);
      m->unload_pending = m->offload_pending = 0;
      answer_op_waiters(ctx, m, 0, NULL);
    }
    break;
  case MB_JOB_RESTORE:
    if (j->rc == 0) {
      note_usage(m, j);
      m->stats.restores++;
      m->stats.last_restore_ms = ms;
      charge_host(ctx, m, 0);
      become_ready(ctx, m, took, "restored");
      if (j->note[0])
        mb__event_locked_core(ctx, MB_EVENT_WARNING, m, m->state, m->state, j->note);
    } else {
      /* The host copy is of no use: free it and load cold for the waiters. */
      snprintf(m->error, sizeof(m->error), "restore failed: %s",
               j->msg[0] ? j->msg : mb_strerror(j->rc));
      snprintf(why, sizeof(why), "error: %s", m->error);
      mb__event_locked_core(ctx, MB_EVENT_WARNING, m, m->state, m->state, why);
      start_job(ctx, m, MB_JOB_UNLOAD, "error");
    }
    break;
  case MB_JOB_OFFLOAD:
    if (j->rc == 0) {
      note_usage(m, j);
      end_residency(ctx, m);
      m->stats.offloads++;
      m->stats.last_offload_ms = ms;
      if (j->have_usage && j->usage.host_bytes) {
        m->measured_host = j->usage.host_bytes;
        charge_host(ctx, m, j->usage.host_bytes);
      }
      uncharge_dev(ctx, m);
      m->idle_since = ctx->now;
      m->offload_pending = 0;
      set_state(ctx, m, MB_STATE_OFFLOADED, "offloaded");
      answer_op_waiters(ctx, m, 0, NULL);
    } else {
      snprintf(m->error, sizeof(m->error), "offload failed: %s",
               j->msg[0] ? j->msg : mb_strerror(j->rc));
      charge_host(ctx, m, 0);
      /* Undo the leaving mark; the unload job sets it again. */
      set_leaving(ctx, m, 0);
      snprintf(why, sizeof(why), "error: %s", m->error);
      mb__event_locked_core(ctx, MB_EVENT_WARNING, m, m->state, m->state, why);
      /* Offload requests fail; unload requests wait for the unload. */
      fail_offload_waiters(ctx, m, MB_EBACKEND, m->error);
      m->offload_pending = 0;
      start_job(ctx, m, MB_JOB_UNLOAD, "error");
    }
    break;
  case MB_JOB_UNLOAD: {
    int from_host = !m->on_dev;
    if (!from_host)
      end_residency(ctx, m);
    uncharge_dev(ctx, m);
    charge_host(ctx, m, 0);
    m->device = -1;
    m->usage.device_bytes = m->usage.host_bytes = 0;
    m->unload_pending = 0;
    m->offload_pending = 0;
    /* A keep-alive asked for by a request lasts while the model is in
     * memory; the next residency starts from the model's own. */
    m->ka_current = m->opts.keep_alive_ms;
    if (j->rc == 0 && m->lost_fail) {
      /* Lost too often (or for good): FAILED with the back-off of a
       * failed load; its waiters get the error. */
      m->lost_fail = 0;
      m->stats.unloads++;
      m->fail_count++;
      uint64_t back = BACKOFF_FIRST_NS << (m->fail_count - 1 < 6 ? m->fail_count - 1 : 6);
      if (back > BACKOFF_MAX_NS)
        back = BACKOFF_MAX_NS;
      m->retry_at = ctx->now + back;
      snprintf(why, sizeof(why), "error: %s", m->error);
      set_state(ctx, m, MB_STATE_FAILED, why);
      snprintf(why, sizeof(why), "model '%s' failed: %s", m->name, m->error);
      fail_waiters(ctx, m, MB_ELOAD, why);
      answer_op_waiters(ctx, m, 0, NULL);
    } else if (j->rc == 0) {
      m->stats.unloads++;
      if (from_host)
        m->stats.full_releases++;
      set_state(ctx, m, MB_STATE_UNLOADED, from_host ? "released" : "unloaded");
      answer_op_waiters(ctx, m, 0, NULL);
    } else {
      m->lost_fail = 0;
      snprintf(m->error, sizeof(m->error), "unload failed: %s",
               j->msg[0] ? j->msg : mb_strerror(j->rc));
      snprintf(why, sizeof(why), "error: %s", m->error);
      m->retry_at = ctx->now;
      set_state(ctx, m, MB_STATE_FAILED, why);
      answer_op_waiters(ctx, m, MB_EBACKEND, m->error);
    }
    break;
  }
  }
  /* A loss reported while the job ran: the model is gone if it is still
   * resident in that residency (else the report is stale). */
  if (m->lost_pending) {
    m->lost_pending = 0;
    if (!m->job.busy && m->lost_pending_res == m->residency &&
        (m->state == MB_STATE_READY || m->state == MB_STATE_OFFLOADED))
      lose(ctx, m, m->lost_pending_flags, m->lost_pending_reason);
    m->lost_pending_flags = 0;
  }
  mark_dirty(ctx, m);
}

/* ------------------------------------------------------------------------ */
/* Lost models and canceled loads                                            */

/* How many of m's losses fall within its crash window now (this one too). */
static int losses_in_window(const mb_ctx *ctx, const mb__model *m) {
  uint64_t win = mb__ms_to_ns(m->opts.crash_window_ms);
  int n = 0;
  for (int i = 0; i < m->lost_n; i++) {
    int k = (m->lost_next - 1 - i + MB_CRASH_LIMIT_MAX) % MB_CRASH_LIMIT_MAX;
    if (ctx->now - m->lost_times[k] <= win)
      n++;
  }
  return n;
}

/*
 * A resident model (READY or OFFLOADED, no job running) is gone: the event,
 * the count, its leases end, and the backend's unload cleans up what is
 * left; the unload's completion makes it UNLOADED, or FAILED when it was
 * lost too often or for good (lost_fail).
 */
static void lose(mb_ctx *ctx, mb__model *m, int flags, const char *reason) {
  m->stats.crashes++;
  m->lost_at = ctx->now;
  snprintf(m->lost_reason, sizeof(m->lost_reason), "%s", reason);
  mb__event_locked_core(ctx, MB_EVENT_LOST, m, m->state, m->state, reason);
  m->lost_times[m->lost_next] = ctx->now;
  m->lost_next = (m->lost_next + 1) % MB_CRASH_LIMIT_MAX;
  if (m->lost_n < MB_CRASH_LIMIT_MAX)
    m->lost_n++;
  int n = losses_in_window(ctx, m);
  if (flags & MB_LOST_FAIL) {
    m->lost_fail = 1;
    snprintf(m->error, sizeof(m->error), "%s", reason);
  } else if (m->opts.crash_limit > 0 && n >= m->opts.crash_limit) {
    m->lost_fail = 1;
    if (m->opts.crash_window_ms == MB_FOREVER)
      snprintf(m->error, sizeof(m->error), "lost %d times (crash_limit %d); last: %s", n,
               m->opts.crash_limit, reason);
    else
      snprintf(m->error, sizeof(m->error), "lost %d times within %lld s (crash_limit %d); last: %s",
               n, (long long)(m->opts.crash_window_ms / 1000), m->opts.crash_limit, reason);
  }
  /* Its leases end: their holders learn it from mb_release (MB_ELOST). */
  pthread_mutex_lock(&ctx->post_lock);
  (void)mb__leases_lose_locked_post(ctx, m);
  pthread_mutex_unlock(&ctx->post_lock);
  if (m->inflight > 0 && m->device >= 0) {
    ctx->devs[m->device].leases -= m->inflight;
    device_slots_freed(ctx, m->device);
  }
  m->inflight = 0;
  m->idle_since = ctx->now;
  ctx->devs_dirty = 1;
  /* An offload asked for is moot; unload and remove requests are answered
   * when the unload below ends. */
  char msg[300];
  snprintf(msg, sizeof(msg), "model '%s' was lost: %s", m->name, reason);
  fail_offload_waiters(ctx, m, MB_ELOST, msg);
  m->offload_pending = 0;
  mb__heap_cancel(&ctx->heap, &m->timer);
  start_job(ctx, m, MB_JOB_UNLOAD, "lost");
}

static void req_lost(mb_ctx *ctx, mb__model *m, mb__req *r) {
  uint64_t res = r->residency ? r->residency : m->residency;
  if (res != m->residency) {
    answer(ctx, r, MB_ESTATE, "stale report for '%s' (residency %llu, now %llu)", m->name,
           (unsigned long long)res, (unsigned long long)m->residency);
    return;
  }
  if (m->job.busy) {
    /* Applied when the job ends, if the model is resident then. */
    m->lost_pending = 1;
    m->lost_pending_res = res;
    m->lost_pending_flags |= r->flags;
    snprintf(m->lost_pending_reason, sizeof(m->lost_pending_reason), "%s", r->reason);
    answer(ctx, r, 0, NULL);
    return;
  }
  if (m->state != MB_STATE_READY && m->state != MB_STATE_OFFLOADED) {
    answer(ctx, r, MB_ESTATE, "model '%s' is %s, not resident", m->name,
           mb_state_name(m->state));
    return;
  }
  lose(ctx, m, r->flags, r->reason);
  answer(ctx, r, 0, NULL);
}

/*
 * Cancels a LOADING model's load through its backend (when it can): the
 * waiters of the load get MB_ECANCELED now, the backend's cancel is called
 * after the step (outside core_lock), and the load's completion brings the
 * model back to UNLOADED (job_done).
 */
static void cancel_load(mb_ctx *ctx, mb__model *m, const char *why) {
  if (m->be->cancel == NULL || m->cancel_pending || !m->job.busy ||
      m->job.kind != MB_JOB_LOAD)
    return;
  m->cancel_pending = 1;
  char msg[256];
  snprintf(msg, sizeof(msg), "load of '%s' canceled: %s", m->name, why);
  fail_waiters(ctx, m, MB_ECANCELED, msg);
  memset(&m->cancel_op, 0, sizeof(m->cancel_op));
  m->cancel_op.model = m->name;
  m->cancel_op.user = m->user;
  m->cancel_op.device = m->job.device;
  m->cancel_op.device_kind = m->job.device_kind;
  m->cancel_op.device_ordinal = m->job.device_ordinal;
  m->cancel_op.budget_bytes = m->job.budget_bytes;
  m->cancel_op.residency = m->job.residency;
  if (!m->cancel_queued) {
    m->cancel_queued = 1;
    mb__queue_insert_head(&ctx->cancels, &m->cancel_node);
  }
}

/* ------------------------------------------------------------------------ */
/* Requests                                                                  */

/* Room in the timer heap for a waiter's timeout; answers ENOMEM if none. */
static int reserve_timer(mb_ctx *ctx, mb__req *r) {
  if (mb__heap_reserve(&ctx->heap) != 0) {
    answer(ctx, r, MB_ENOMEM, "out of memory queueing the request");
    return MB_ENOMEM;
  }
  r->has_timer_slot = 1;
  return 0;
}

/* Arms a new waiter's queue timeout, or keeps it paused when it joins a
 * load in progress (queue_timeout_excludes_load). */
static void arm_wait(mb_ctx *ctx, mb__model *m, mb__req *r) {
  if (!r->has_timer_slot || r->timeout_ms < 0)
    return;
  if (joins_load(m)) {
    r->paused = 1;
    r->left_ns = mb__ms_to_ns(r->timeout_ms);
    return;
  }
  mb__heap_arm(&ctx->heap, &r->timer, ctx->now + mb__ms_to_ns(r->timeout_ms));
}

static int check_backoff(mb_ctx *ctx, mb__model *m, mb__req *r) {
  if (m->state != MB_STATE_FAILED || ctx->now >= m->retry_at)
    return 0;
  m->stats.rejected++;
  answer(ctx, r, MB_ELOAD, "load of '%s' failed: %s (next retry in %llu ms)", m->name, m->error,
         (unsigned long long)((m->retry_at - ctx->now) / 1000000));
  return 1;
}

static int never_fits(mb_ctx *ctx, const mb__model *m) {
  if (m->state == MB_STATE_READY || m->state == MB_STATE_LOADING ||
      m->state == MB_STATE_RESTORING)
    return 0;
  uint64_t need = mb__footprint(m);
  for (int d = 0; d < ctx->ndev; d++)
    if ((m->opts.device == MB_DEVICE_AUTO || m->opts.device == d) && need <= usable_on(ctx, d))
      return 0;
  return 1;
}

static void req_acquire(mb_ctx *ctx, mb__model *m, mb__req *r) {
  m->stats.requests++;
  m->last_accessed = ctx->now;
  if (check_backoff(ctx, m, r))
    return;
  if (never_fits(ctx, m)) {
    m->stats.rejected++;
    answer(ctx, r, MB_ENOSPC,
           "model '%s' needs %llu bytes, more than any device can hold (capacity - reserve)",
           m->name, (unsigned long long)mb__footprint(m));
    return;
  }
  int immediate = can_grant(ctx, m) && mb__queue_empty(&m->wq) && device_slot_free(ctx, m);
  if (!immediate && m->nwait >= m->opts.max_queue) {
    m->stats.rejected++;
    answer(ctx, r, MB_EQUEUEFULL, "queue of '%s' is full (%d waiting, max_queue %d)", m->name,
           m->nwait, m->opts.max_queue);
    return;
  }
  if (r->priority == MB_PRIORITY_DEFAULT)
    r->priority = m->opts.priority;
  r->timeout_own = r->timeout_ms != MB_DEFAULT;
  int64_t to = r->timeout_ms == MB_DEFAULT ? m->opts.queue_timeout_ms : r->timeout_ms;
  r->timeout_ms = to;
  if (to >= 0 && reserve_timer(ctx, r) != 0)
    return;
  note_use(ctx, m);
  wq_insert(m, r);
  arm_wait(ctx, m, r);
  mark_dirty(ctx, m);
}

static void req_load(mb_ctx *ctx, mb__model *m, mb__req *r) {
  m->last_accessed = ctx->now;
  if (check_backoff(ctx, m, r))
    return;
  if (never_fits(ctx, m)) {
    answer(ctx, r, MB_ENOSPC, "model '%s' needs %llu bytes, more than any device can hold",
           m->name, (unsigned long long)mb__footprint(m));
    return;
  }
  if (m->state == MB_STATE_READY && !m->unload_pending && !m->offload_pending) {
    /* As an acquire: without a keep-alive of its own, the model's. */
    m->ka_current = r->keep_alive_ms != MB_DEFAULT ? r->keep_alive_ms : m->opts.keep_alive_ms;
    if (m->inflight == 0) {
      m->idle_since = ctx->now;
      mb__heap_cancel(&ctx->heap, &m->timer);
    }
    answer(ctx, r, 0, NULL);
    mark_dirty(ctx, m);
    return;
  }
  if (r->timeout_ms == MB_DEFAULT)
    r->timeout_ms = m->opts.queue_timeout_ms;
  if (r->timeout_ms >= 0 && reserve_timer(ctx, r) != 0)
    return;
  mb__queue_insert_head(&m->lw, &r->wnode);
  arm_wait(ctx, m, r);
  mark_dirty(ctx, m);
}

static void req_offload(mb_ctx *ctx, mb__model *m, mb__req *r) {
  if (!can_offload(m)) {
    answer(ctx, r, MB_ENOTSUP, "backend '%s' of model '%s' cannot offload", m->be->name,
           m->name);
    return;
  }
  switch (m->state) {
  case MB_STATE_OFFLOADED:
    answer(ctx, r, 0, NULL);
    return;
  case MB_STATE_UNLOADED:
  case MB_STATE_FAILED:
  case MB_STATE_UNLOADING:
    answer(ctx, r, MB_ESTATE, "model '%s' is %s, not loaded", m->name, mb_state_name(m->state));
    return;
  default:
    break;
  }
  if (m->unload_pending) {
    answer(ctx, r, MB_ESTATE, "model '%s' is being unloaded", m->name);
    return;
  }
  if (m->state != MB_STATE_OFFLOADING)
    m->offload_pending = 1;
  mb__queue_insert_head(&m->ow, &r->wnode);
  mark_dirty(ctx, m);
}

static void req_unload(mb_ctx *ctx, mb__model *m, mb__req *r) {
  switch (m->state) {
  case MB_STATE_UNLOADED:
    answer(ctx, r, 0, NULL);
    return;
  case MB_STATE_FAILED:
    m->fail_count = 0;
    m->retry_at = 0;
    m->error[0] = '\0';
    m->lost_n = 0; /* the operator's reset clears the crash history */
    set_state(ctx, m, MB_STATE_UNLOADED, "reset");
    answer(ctx, r, 0, NULL);
    return;
  case MB_STATE_LOADING:
    cancel_load(ctx, m, "the model was unloaded while it loaded");
    break;
  default:
    break;
  }
  if (m->state != MB_STATE_UNLOADING)
    m->unload_pending = 1;
  mb__queue_insert_head(&m->ow, &r->wnode);
  mark_dirty(ctx, m);
}

static void req_keep_alive(mb_ctx *ctx, mb__model *m, mb__req *r) {
  m->opts.keep_alive_ms = r->keep_alive_ms;
  m->ka_current = r->keep_alive_ms;
  if (m->state == MB_STATE_READY && m->inflight == 0) {
    mb__heap_cancel(&ctx->heap, &m->timer);
    m->idle_since = ctx->now;
  }
  answer(ctx, r, 0, NULL);
  mark_dirty(ctx, m);
}

static void req_cancel(mb_ctx *ctx, mb__req *r) {
  for (int i = 0; i < ctx->nmodels; i++) {
    mb__model *m = ctx->models[i];
    mb__queue *q;
    mb__queue_foreach(q, &m->wq) {
      mb__req *w = REQ_OF(q);
      if (w->id == r->cancel_id) {
        wq_remove(m, w);
        answer(ctx, w, MB_ECANCELED, "request canceled");
        mark_dirty(ctx, m);
        answer(ctx, r, 0, NULL);
        return;
      }
    }
  }
  answer(ctx, r, MB_ENOENT, "no waiting request with that id");
}

static void req_remove(mb_ctx *ctx, mb__model *m, mb__req *r) {
  if (m->inflight > 0 || wants_resident(m)) {
    answer(ctx, r, MB_EBUSY, "model '%s' has %d leases and %d waiters", m->name, m->inflight,
           m->nwait);
    return;
  }
  m->removing = 1;
  if (m->state == MB_STATE_LOADING)
    cancel_load(ctx, m, "the model is being removed");
  mb__queue_insert_head(&m->ow, &r->wnode);
  if (m->state != MB_STATE_UNLOADED && m->state != MB_STATE_FAILED)
    m->unload_pending = 1;
  mark_dirty(ctx, m);
}

/* Frees removed models that have nothing left on any tier. */
static void reap_removed(mb_ctx *ctx, mb__model *m) {
  if (!m->removing || m->job.busy ||
      (m->state != MB_STATE_UNLOADED && m->state != MB_STATE_FAILED))
    return;
  adm_remove(ctx, m);
  answer_op_waiters(ctx, m, 0, NULL);
  mb__model_unlink_locked_core(ctx, m);
  mb__heap_cancel(&ctx->heap, &m->timer);
  mb__heap_unreserve(&ctx->heap);
  mb__queue_insert_head(&ctx->graveyard, &m->grave_node);
}

void mb__shutdown_locked_core(mb_ctx *ctx) {
  ctx->shutting_down = 1;
  for (int i = 0; i < ctx->nmodels; i++) {
    mb__model *m = ctx->models[i];
    fail_waiters(ctx, m, MB_ESHUTDOWN, "context is shutting down");
    if (m->state == MB_STATE_LOADING)
      cancel_load(ctx, m, "the context is shutting down");
    if (ctx->opts.manual) {
      answer_op_waiters(ctx, m, MB_ESHUTDOWN, "context is shutting down");
      m->unload_pending = m->offload_pending = 0;
    }
    adm_remove(ctx, m);
    mark_dirty(ctx, m);
  }
}

static void handle_req(mb_ctx *ctx, mb__req *r) {
  r->enq_ns = ctx->now;
  r->seq = ++ctx->req_seq;
  if (r->type == MB__R_CANCEL) {
    req_cancel(ctx, r);
    return;
  }
  if (ctx->shutting_down) {
    answer(ctx, r, MB_ESHUTDOWN, "context is shutting down");
    return;
  }
  mb__model *m = mb__model_find_locked_core(ctx, r->name);
  if (m == NULL || m->removing) {
    answer(ctx, r, MB_ENOENT, "no model named '%s'", r->name);
    return;
  }
  r->m = m;
  switch (r->type) {
  case MB__R_ACQUIRE: req_acquire(ctx, m, r); break;
  case MB__R_LOAD: req_load(ctx, m, r); break;
  case MB__R_OFFLOAD: req_offload(ctx, m, r); break;
  case MB__R_UNLOAD: req_unload(ctx, m, r); break;
  case MB__R_KEEPALIVE: req_keep_alive(ctx, m, r); break;
  case MB__R_REMOVE: req_remove(ctx, m, r); break;
  case MB__R_LOST: req_lost(ctx, m, r); break;
  default: answer(ctx, r, MB_EINVAL, "unknown request"); break;
  }
}

/* ------------------------------------------------------------------------ */
/* Fast paths (threaded mode, core.c)                                        */

/*
 * An acquire that a step would grant at once, granted by the caller's
 * thread instead of a round trip through the core thread: the model READY
 * with a free slot, no one waiting for it, nothing posted to the core (so
 * no earlier request can change that), no timer due, no lease TTL (which
 * would need a timer). Exactly what req_acquire and grant do in that case.
 */
int mb__try_grant_locked_core(mb_ctx *ctx, const char *name, const mb_acquire_opts *o,
                         mb_result *out) {
  mb__model *m = mb__model_find_locked_core(ctx, name);
  mb__timer *top = mb__heap_top(&ctx->heap);
  if (m == NULL || m->removing || ctx->shutting_down || o->ttl_ms > 0 ||
      (top != NULL && top->deadline <= ctx->now) || !mb__queue_empty(&m->wq) || !can_grant(ctx, m) ||
      !device_slot_free(ctx, m))
    return 0;
  mb__lease *l = lease_new(ctx, m, 0);
  if (l == NULL)
    return MB_ENOMEM;
  /* req_acquire */
  ++ctx->req_seq;
  m->stats.requests++;
  m->last_accessed = ctx->now;
  note_use(ctx, m);
  /* grant, after no wait */
  lease_granted(ctx, m, o->keep_alive_ms, 0);
  memset(out, 0, sizeof(*out));
  out->lease.id = l->id;
  out->lease.device = l->device;
  out->message = "";
  return 1;
}

/*
 * A release a step would settle without any other decision: no waiter
 * (of the model, of a device-wide slot or of an admission) could use what
 * it frees, nothing is pending on the model, and its keep-alive does not
 * act at once. Exactly drop_lease and advance in that case. *armed gets
 * the idle timer's deadline when one was armed (else 0).
 */
int mb__try_release_locked_core(mb_ctx *ctx, mb__lease *l, uint64_t *armed) {
  mb__model *m = l->m;
  *armed = 0;
  if (l->lost || l->ttl_deadline != 0 || ctx->shutting_down || m->removing ||
      m->state != MB_STATE_READY || wants_resident(m) ||
      m->offload_pending || m->unload_pending || !mb__queue_empty(&ctx->adm) ||
      ctx->devs[l->device].opts.concurrency > 0 ||
      (m->inflight == 1 && m->ka_current == 0))
    return 0;
  mb__heap_unreserve(&ctx->heap);
  m->inflight--;
  ctx->devs[l->device].leases--;
  m->last_accessed = ctx->now;
  if (m->inflight == 0) {
    m->idle_since = ctx->now;
    if (!mb__timer_armed(&m->timer) && m->ka_current != MB_FOREVER) {
      mb__heap_arm(&ctx->heap, &m->timer, m->idle_since + mb__ms_to_ns(m->ka_current));
      *armed = m->timer.deadline;
    }
  }
  mb__free(l);
  return 1;
}

/* ------------------------------------------------------------------------ */
/* Releases and timers                                                       */

static void drop_lease(mb_ctx *ctx, mb__lease *l) {
  mb__model *m = l->m;
  mb__heap_cancel(&ctx->heap, &l->timer);
  mb__heap_unreserve(&ctx->heap);
  if (l->lost) { /* its model was lost: counted out then */
    mb__free(l);
    return;
  }
  m->inflight--;
  ctx->devs[l->device].leases--;
  m->last_accessed = ctx->now;
  if (m->inflight == 0)
    m->idle_since = ctx->now;
  mb__free(l);
  mark_dirty(ctx, m);
  ctx->devs_dirty = 1; /* it may have become evictable */
  device_slots_freed(ctx, m->device);
}

static void fire_timer(mb_ctx *ctx, mb__timer *t) {
  mb__heap_cancel(&ctx->heap, t);
  switch (t->kind) {
  case MB__T_MODEL: {
    mb__model *m = mb__container_of(t, mb__model, timer);
    if (m->state == MB_STATE_READY && m->inflight == 0 && mb__queue_empty(&m->wq)) {
      go_idle(ctx, m, m->opts.offload, "idle");
    } else if (m->state == MB_STATE_OFFLOADED && !wants_resident(m)) {
      start_job(ctx, m, MB_JOB_UNLOAD, "idle");
    }
    break;
  }
  case MB__T_WAIT: {
    mb__req *r = mb__container_of(t, mb__req, timer);
    mb__model *m = r->m;
    if (r->type == MB__R_ACQUIRE) {
      wq_remove(m, r);
      m->stats.timeouts++;
    } else if (mb__queue_linked(&r->wnode)) { /* a load waiter */
      mb__queue_remove(&r->wnode);
    }
    ctx->devs_dirty = 1;
    answer(ctx, r, MB_ETIMEDOUT, "waited %lld ms for '%s' (state %s) (%s)",
           (long long)r->timeout_ms, m->name, mb_state_name(m->state),
           r->timeout_own ? "the request's queue timeout" : "queue_timeout");
    mark_dirty(ctx, m);
    break;
  }
  case MB__T_TTL: {
    mb__lease *l = mb__container_of(t, mb__lease, timer);
    int expire = 0;
    pthread_mutex_lock(&ctx->post_lock);
    if (!l->released && l->ttl_deadline > ctx->now) {
      uint64_t d = l->ttl_deadline;
      pthread_mutex_unlock(&ctx->post_lock);
      mb__heap_arm(&ctx->heap, t, d); /* renewed meanwhile */
      break;
    }
    if (!l->released) {
      l->released = 1;
      mb__lease_take_locked_post(ctx, l->id);
      expire = 1;
      if (l->renewed) { /* renewed meanwhile to a deadline now past */
        mb__queue_remove(&l->renew_node);
        l->renewed = 0;
      }
    }
    pthread_mutex_unlock(&ctx->post_lock);
    if (expire)
      drop_lease(ctx, l);
    break;
  }
  }
}

/* ------------------------------------------------------------------------ */
/* The step                                                                  */

int mb__step_locked_core(mb_ctx *ctx, mb__queue *reqs, mb__queue *rels, mb__queue *done) {
  int n = 0;
  mb__queue *q;
  while ((q = mb__queue_first(done)) != NULL) {
    mb__queue_remove(q);
    job_done(ctx, mb__queue_data(q, struct mb_job, node));
    n++;
  }
  while ((q = mb__queue_first(rels)) != NULL) {
    mb__queue_remove(q);
    drop_lease(ctx, mb__queue_data(q, mb__lease, rel_node));
    n++;
  }
  while ((q = mb__queue_first(reqs)) != NULL) {
    mb__queue_remove(q);
    handle_req(ctx, mb__queue_data(q, mb__req, node));
    n++;
  }
  mb__timer *t;
  while ((t = mb__heap_top(&ctx->heap)) != NULL && t->deadline <= ctx->now) {
    fire_timer(ctx, t);
    n++;
  }
  while (!mb__queue_empty(&ctx->dirty) || ctx->devs_dirty) {
    while ((q = mb__queue_first(&ctx->dirty)) != NULL) {
      mb__queue_remove(q);
      mb__model *m = mb__queue_data(q, mb__model, dirty_node);
      m->dirty = 0;
      advance(ctx, m);
      reap_removed(ctx, m);
    }
    if (ctx->devs_dirty)
      pump_admissions(ctx);
  }
  return n;
}
