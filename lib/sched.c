/*
 * sched.c - the residency state machine's step (DESIGN §1). Every decision
 * of the core is made in a step, with core_lock held: the requests posted
 * since the last step, the leases released, the jobs completed, the timers
 * due, then every model touched is "advanced" (the dirty list) and pending
 * admissions retried until nothing changes. Backend work is only *started*
 * in a step (jobs.c) and its completion comes back as an input of a later
 * one. The clock is read once per step into ctx->now, so the same inputs
 * give the same decisions.
 *
 * This file: the step itself; requests (acquire, load, offload, unload,
 * keep-alive, cancel, remove, lost); grants of leases, also the fast paths
 * that grant and release on the caller's thread (core.c); releases and the
 * timers (idle expiry, host keep-alive, queue timeouts, lease TTLs);
 * answers and events. The other files of the step: jobs.c (backend jobs
 * and memory), admit.c (admission planning), policy.c (eviction order);
 * sched_int.h says what they share.
 *
 * Invariants (checked by the tests):
 *   - a model with inflight > 0 is READY and is never offloaded, unloaded or
 *     evicted; its idle timer is not armed;
 *   - per device, used <= usable at admission (a measured footprint larger
 *     than declared may exceed it; idle models are then evicted);
 *   - every request is answered exactly once;
 *   - a fast path does exactly what a step would do in its case, or
 *     nothing (then the step does it).
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "modelbuf/modelbuf.h"
#include "alloc.h"
#include "sched_int.h"

static void advance(mb_ctx *ctx, mb__model *m);

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

void mb__answer(mb_ctx *ctx, mb__req *r, int rc, const char *fmt, ...) {
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

void mb__mark_dirty(mb_ctx *ctx, mb__model *m) {
  if (m->dirty)
    return;
  m->dirty = 1;
  mb__queue_insert_tail(&ctx->dirty, &m->dirty_node);
}

void mb__device_slots_freed(mb_ctx *ctx, int dev) {
  if (ctx->devs[dev].opts.concurrency <= 0)
    return;
  for (int i = 0; i < ctx->nmodels; i++)
    if (ctx->models[i]->device == dev && !mb__queue_empty(&ctx->models[i]->wq))
      mb__mark_dirty(ctx, ctx->models[i]);
}

void mb__set_state(mb_ctx *ctx, mb__model *m, mb_state to, const char *reason) {
  mb_state from = m->state;
  if (from == to)
    return;
  m->state = to;
  mb__event_locked_core(ctx, MB_EVENT_STATE, m, from, to, reason);
  mb__mark_dirty(ctx, m);
}

/* ------------------------------------------------------------------------ */
/* Waiter queues                                                             */

static void wq_insert(mb__model *m, mb__req *r) {
  mb__queue *p = m->wq.prev;
  /* Higher priority first; equal priority in arrival order. */
  while (p != &m->wq && MB__REQ_OF(p)->priority < r->priority)
    p = p->prev;
  mb__queue_insert_after(p, &r->wnode);
  m->nwait++;
}

static void wq_remove(mb__model *m, mb__req *r) {
  mb__queue_remove(&r->wnode);
  m->nwait--;
}

void mb__fail_waiters(mb_ctx *ctx, mb__model *m, int rc, const char *msg) {
  mb__req *r;
  while ((r = mb__first_req(&m->wq)) != NULL) {
    wq_remove(m, r);
    if (rc == MB_ENOSPC)
      m->stats.rejected++;
    mb__answer(ctx, r, rc, "%s", msg);
  }
  while ((r = mb__first_req(&m->lw)) != NULL) {
    mb__queue_remove(&r->wnode);
    mb__answer(ctx, r, rc, "%s", msg);
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
    mb__answer(ctx, r, MB_ENOMEM, "out of memory granting a lease");
    return;
  }
  uint64_t waited = ctx->now - r->enq_ns;
  lease_granted(ctx, m, r->keep_alive_ms, waited);
  r->queue_ns = waited > r->load_ns ? waited - r->load_ns : 0;
  r->lease.id = l->id;
  r->lease.device = l->device;
  mb__answer(ctx, r, 0, NULL);
}

/* Grants waiting acquires of m while slots allow. */
static void grant_model(mb_ctx *ctx, mb__model *m) {
  mb__req *r;
  while ((r = mb__first_req(&m->wq)) != NULL && can_grant(ctx, m) && device_slot_free(ctx, m))
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
      mb__req *r = mb__first_req(&m->wq);
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

void mb__answer_op_waiters(mb_ctx *ctx, mb__model *m, int rc, const char *msg) {
  mb__req *r;
  while ((r = mb__first_req(&m->ow)) != NULL) {
    mb__queue_remove(&r->wnode);
    mb__answer(ctx, r, rc, "%s", msg ? msg : "");
  }
}

static void answer_load_waiters(mb_ctx *ctx, mb__model *m) {
  mb__req *r;
  if (!mb__queue_empty(&m->lw)) /* the model's keep-alive, unless a load asked for one */
    m->ka_current = m->opts.keep_alive_ms;
  while ((r = mb__first_req(&m->lw)) != NULL) {
    mb__queue_remove(&r->wnode);
    if (r->keep_alive_ms != MB_DEFAULT)
      m->ka_current = r->keep_alive_ms;
    r->load_ns = m->last_load_ns;
    mb__answer(ctx, r, 0, NULL);
  }
}

static void arm_idle(mb_ctx *ctx, mb__model *m) {
  if (mb__timer_armed(&m->timer))
    return;
  if (m->ka_current == MB_FOREVER)
    return;
  if (m->ka_current == 0) {
    mb__go_idle(ctx, m, m->opts.offload, "idle");
    return;
  }
  mb__heap_arm(&ctx->heap, &m->timer, m->idle_since + mb__ms_to_ns(m->ka_current));
}

static void advance(mb_ctx *ctx, mb__model *m) {
  /* No longer waiting (its requests timed out or were canceled): out of
   * the admission list now, as a pass may not visit it. */
  if (m->admit_pending && (!mb__wants_resident(m) || m->unload_pending))
    mb__adm_remove(ctx, m);
  mb__adm_rebind(ctx, m);
  switch (m->state) {
  case MB_STATE_UNLOADED:
  case MB_STATE_FAILED:
    if (m->removing || ctx->shutting_down)
      break;
    if (mb__wants_resident(m) && !m->admit_pending) {
      mb__admit_new(ctx, m);
    }
    break;
  case MB_STATE_OFFLOADED:
    if (m->unload_pending || ctx->shutting_down) {
      mb__heap_cancel(&ctx->heap, &m->timer);
      mb__start_job(ctx, m, MB_JOB_UNLOAD, ctx->shutting_down ? "shutdown" : "request");
    } else if (mb__wants_resident(m)) {
      mb__heap_cancel(&ctx->heap, &m->timer);
      if (!m->admit_pending) {
        mb__admit_new(ctx, m);
      }
    } else if (m->offload_pending) {
      m->offload_pending = 0;
      mb__answer_op_waiters(ctx, m, 0, NULL);
    } else if (!mb__timer_armed(&m->timer) && m->opts.host_keep_alive_ms != MB_FOREVER) {
      mb__heap_arm(&ctx->heap, &m->timer,
                   m->idle_since + mb__ms_to_ns(m->opts.host_keep_alive_ms));
    }
    break;
  case MB_STATE_READY:
    if (m->inflight == 0 && (m->unload_pending || ctx->shutting_down)) {
      mb__heap_cancel(&ctx->heap, &m->timer);
      mb__start_job(ctx, m, MB_JOB_UNLOAD, ctx->shutting_down ? "shutdown" : "request");
      break;
    }
    if (m->inflight == 0 && m->offload_pending) {
      mb__heap_cancel(&ctx->heap, &m->timer);
      if (!mb__host_make_room(ctx, m, mb__host_need(m))) {
        m->offload_pending = 0;
        char msg[200];
        snprintf(msg, sizeof(msg),
                 "host tier cannot hold '%s' (%llu bytes needed, %llu of %llu used)", m->name,
                 (unsigned long long)mb__host_need(m), (unsigned long long)ctx->host_used,
                 (unsigned long long)ctx->host_budget);
        mb__req *r;
        while ((r = mb__first_req(&m->ow)) != NULL) {
          mb__queue_remove(&r->wnode);
          mb__answer(ctx, r, r->type == MB__R_OFFLOAD ? MB_ENOSPC : 0, "%s", msg);
        }
        mb__mark_dirty(ctx, m);
        break;
      }
      mb__charge_host(ctx, m, mb__host_need(m));
      mb__start_job(ctx, m, MB_JOB_OFFLOAD, "request");
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
/* Requests                                                                  */

/* Room in the timer heap for a waiter's timeout; answers ENOMEM if none. */
static int reserve_timer(mb_ctx *ctx, mb__req *r) {
  if (mb__heap_reserve(&ctx->heap) != 0) {
    mb__answer(ctx, r, MB_ENOMEM, "out of memory queueing the request");
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
  if (mb__joins_load(m)) {
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
  mb__answer(ctx, r, MB_ELOAD, "load of '%s' failed: %s (next retry in %llu ms)", m->name, m->error,
             (unsigned long long)((m->retry_at - ctx->now) / 1000000));
  return 1;
}

static int never_fits(mb_ctx *ctx, const mb__model *m) {
  if (m->state == MB_STATE_READY || m->state == MB_STATE_LOADING ||
      m->state == MB_STATE_RESTORING)
    return 0;
  uint64_t need = mb__footprint(m);
  for (int d = 0; d < ctx->ndev; d++)
    if ((m->opts.device == MB_DEVICE_AUTO || m->opts.device == d) && need <= ctx->devs[d].usable)
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
    mb__answer(ctx, r, MB_ENOSPC,
               "model '%s' needs %llu bytes, more than any device can hold (capacity - reserve)",
               m->name, (unsigned long long)mb__footprint(m));
    return;
  }
  int immediate = can_grant(ctx, m) && mb__queue_empty(&m->wq) && device_slot_free(ctx, m);
  if (!immediate && m->nwait >= m->opts.max_queue) {
    m->stats.rejected++;
    mb__answer(ctx, r, MB_EQUEUEFULL, "queue of '%s' is full (%d waiting, max_queue %d)", m->name,
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
  mb__note_use(ctx, m);
  wq_insert(m, r);
  arm_wait(ctx, m, r);
  mb__mark_dirty(ctx, m);
}

static void req_load(mb_ctx *ctx, mb__model *m, mb__req *r) {
  m->last_accessed = ctx->now;
  if (check_backoff(ctx, m, r))
    return;
  if (never_fits(ctx, m)) {
    mb__answer(ctx, r, MB_ENOSPC, "model '%s' needs %llu bytes, more than any device can hold",
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
    mb__answer(ctx, r, 0, NULL);
    mb__mark_dirty(ctx, m);
    return;
  }
  if (r->timeout_ms == MB_DEFAULT)
    r->timeout_ms = m->opts.queue_timeout_ms;
  if (r->timeout_ms >= 0 && reserve_timer(ctx, r) != 0)
    return;
  mb__queue_insert_head(&m->lw, &r->wnode);
  arm_wait(ctx, m, r);
  mb__mark_dirty(ctx, m);
}

static void req_offload(mb_ctx *ctx, mb__model *m, mb__req *r) {
  if (!mb__can_offload(m)) {
    mb__answer(ctx, r, MB_ENOTSUP, "backend '%s' of model '%s' cannot offload", m->be->name,
               m->name);
    return;
  }
  switch (m->state) {
  case MB_STATE_OFFLOADED:
    mb__answer(ctx, r, 0, NULL);
    return;
  case MB_STATE_UNLOADED:
  case MB_STATE_FAILED:
  case MB_STATE_UNLOADING:
    mb__answer(ctx, r, MB_ESTATE, "model '%s' is %s, not loaded", m->name, mb_state_name(m->state));
    return;
  default:
    break;
  }
  if (m->unload_pending) {
    mb__answer(ctx, r, MB_ESTATE, "model '%s' is being unloaded", m->name);
    return;
  }
  if (m->state != MB_STATE_OFFLOADING)
    m->offload_pending = 1;
  mb__queue_insert_head(&m->ow, &r->wnode);
  mb__mark_dirty(ctx, m);
}

static void req_unload(mb_ctx *ctx, mb__model *m, mb__req *r) {
  switch (m->state) {
  case MB_STATE_UNLOADED:
    mb__answer(ctx, r, 0, NULL);
    return;
  case MB_STATE_FAILED:
    m->fail_count = 0;
    m->retry_at = 0;
    m->error[0] = '\0';
    m->lost_n = 0; /* the operator's reset clears the crash history */
    mb__set_state(ctx, m, MB_STATE_UNLOADED, "reset");
    mb__answer(ctx, r, 0, NULL);
    return;
  case MB_STATE_LOADING:
    mb__cancel_load(ctx, m, "the model was unloaded while it loaded");
    break;
  default:
    break;
  }
  if (m->state != MB_STATE_UNLOADING)
    m->unload_pending = 1;
  mb__queue_insert_head(&m->ow, &r->wnode);
  mb__mark_dirty(ctx, m);
}

static void req_keep_alive(mb_ctx *ctx, mb__model *m, mb__req *r) {
  m->opts.keep_alive_ms = r->keep_alive_ms;
  m->ka_current = r->keep_alive_ms;
  if (m->state == MB_STATE_READY && m->inflight == 0) {
    mb__heap_cancel(&ctx->heap, &m->timer);
    m->idle_since = ctx->now;
  }
  mb__answer(ctx, r, 0, NULL);
  mb__mark_dirty(ctx, m);
}

static void req_cancel(mb_ctx *ctx, mb__req *r) {
  for (int i = 0; i < ctx->nmodels; i++) {
    mb__model *m = ctx->models[i];
    mb__queue *q;
    mb__queue_foreach(q, &m->wq) {
      mb__req *w = MB__REQ_OF(q);
      if (w->id == r->cancel_id) {
        wq_remove(m, w);
        mb__answer(ctx, w, MB_ECANCELED, "request canceled");
        mb__mark_dirty(ctx, m);
        mb__answer(ctx, r, 0, NULL);
        return;
      }
    }
  }
  mb__answer(ctx, r, MB_ENOENT, "no waiting request with that id");
}

static void req_remove(mb_ctx *ctx, mb__model *m, mb__req *r) {
  if (m->inflight > 0 || mb__wants_resident(m)) {
    mb__answer(ctx, r, MB_EBUSY, "model '%s' has %d leases and %d waiters", m->name, m->inflight,
               m->nwait);
    return;
  }
  m->removing = 1;
  if (m->state == MB_STATE_LOADING)
    mb__cancel_load(ctx, m, "the model is being removed");
  mb__queue_insert_head(&m->ow, &r->wnode);
  if (m->state != MB_STATE_UNLOADED && m->state != MB_STATE_FAILED)
    m->unload_pending = 1;
  mb__mark_dirty(ctx, m);
}

static void req_lost(mb_ctx *ctx, mb__model *m, mb__req *r) {
  uint64_t res = r->residency ? r->residency : m->residency;
  if (res != m->residency) {
    mb__answer(ctx, r, MB_ESTATE, "stale report for '%s' (residency %llu, now %llu)", m->name,
               (unsigned long long)res, (unsigned long long)m->residency);
    return;
  }
  if (m->job.busy) {
    /* Applied when the job ends, if the model is resident then. */
    m->lost_pending = 1;
    m->lost_pending_res = res;
    m->lost_pending_flags |= r->flags;
    snprintf(m->lost_pending_reason, sizeof(m->lost_pending_reason), "%s", r->reason);
    mb__answer(ctx, r, 0, NULL);
    return;
  }
  if (m->state != MB_STATE_READY && m->state != MB_STATE_OFFLOADED) {
    mb__answer(ctx, r, MB_ESTATE, "model '%s' is %s, not resident", m->name,
               mb_state_name(m->state));
    return;
  }
  mb__lose(ctx, m, r->flags, r->reason);
  mb__answer(ctx, r, 0, NULL);
}

/* Frees removed models that have nothing left on any tier. */
static void reap_removed(mb_ctx *ctx, mb__model *m) {
  if (!m->removing || m->job.busy ||
      (m->state != MB_STATE_UNLOADED && m->state != MB_STATE_FAILED))
    return;
  mb__adm_remove(ctx, m);
  mb__answer_op_waiters(ctx, m, 0, NULL);
  mb__model_unlink_locked_core(ctx, m);
  mb__heap_cancel(&ctx->heap, &m->timer);
  mb__heap_unreserve(&ctx->heap);
  mb__queue_insert_head(&ctx->graveyard, &m->grave_node);
}

void mb__shutdown_locked_core(mb_ctx *ctx) {
  ctx->shutting_down = 1;
  for (int i = 0; i < ctx->nmodels; i++) {
    mb__model *m = ctx->models[i];
    mb__fail_waiters(ctx, m, MB_ESHUTDOWN, "context is shutting down");
    if (m->state == MB_STATE_LOADING)
      mb__cancel_load(ctx, m, "the context is shutting down");
    if (ctx->opts.manual) {
      mb__answer_op_waiters(ctx, m, MB_ESHUTDOWN, "context is shutting down");
      m->unload_pending = m->offload_pending = 0;
    }
    mb__adm_remove(ctx, m);
    mb__mark_dirty(ctx, m);
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
    mb__answer(ctx, r, MB_ESHUTDOWN, "context is shutting down");
    return;
  }
  mb__model *m = mb__model_find_locked_core(ctx, r->name);
  if (m == NULL || m->removing) {
    mb__answer(ctx, r, MB_ENOENT, "no model named '%s'", r->name);
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
  default: mb__answer(ctx, r, MB_EINVAL, "unknown request"); break;
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
      (top != NULL && top->deadline <= ctx->now) || !mb__queue_empty(&m->wq) ||
      !can_grant(ctx, m) || !device_slot_free(ctx, m))
    return 0;
  mb__lease *l = lease_new(ctx, m, 0);
  if (l == NULL)
    return MB_ENOMEM;
  /* req_acquire */
  ++ctx->req_seq;
  m->stats.requests++;
  m->last_accessed = ctx->now;
  mb__note_use(ctx, m);
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
      m->state != MB_STATE_READY || mb__wants_resident(m) ||
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
  mb__mark_dirty(ctx, m);
  ctx->devs_dirty = 1; /* it may have become evictable */
  mb__device_slots_freed(ctx, m->device);
}

static void fire_timer(mb_ctx *ctx, mb__timer *t) {
  mb__heap_cancel(&ctx->heap, t);
  switch (t->kind) {
  case MB__T_MODEL: {
    mb__model *m = mb__container_of(t, mb__model, timer);
    if (m->state == MB_STATE_READY && m->inflight == 0 && mb__queue_empty(&m->wq)) {
      mb__go_idle(ctx, m, m->opts.offload, "idle");
    } else if (m->state == MB_STATE_OFFLOADED && !mb__wants_resident(m)) {
      mb__start_job(ctx, m, MB_JOB_UNLOAD, "idle");
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
    mb__answer(ctx, r, MB_ETIMEDOUT, "waited %lld ms for '%s' (state %s) (%s)",
               (long long)r->timeout_ms, m->name, mb_state_name(m->state),
               r->timeout_own ? "the request's queue timeout" : "queue_timeout");
    mb__mark_dirty(ctx, m);
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
    mb__job_done(ctx, mb__queue_data(q, struct mb_job, node));
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
      mb__pump_admissions(ctx);
  }
  return n;
}
