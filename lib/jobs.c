/*
 * jobs.c - backend jobs, as the core sees them: the memory a model is
 * charged (on its device, in the host tier), starting a load, offload,
 * restore or unload, and what its completion changes; lost models and
 * canceled loads. Part of the core's step (sched_int.h): core_lock held,
 * ctx->now the time.
 *
 * A job only *starts* here: mb__start_job hands it to a loader thread (or
 * the manual executor) through core.c, outside any decision, and its
 * completion comes back through the post queue to a later step
 * (mb__job_done). A model has one job at a time; it lives in the model.
 *
 * Invariants:
 *   - a device's used bytes are the sum of the charges of the models on it
 *     (on_dev, in its resident list), its leaving bytes those of the ones
 *     being offloaded or unloaded; the host tier's used bytes the sum of
 *     host charges;
 *   - a load or restore counts in its device's loads until it completes;
 *     the residency count grows by one at each (mb_op.residency);
 *   - a failed load leaves the model FAILED, uncharged, with a back-off of
 *     1 s doubling to 60 s; its waiters get the error, never a hang;
 *   - a loss (mb__lose) ends the model's leases and unloads it; waiters
 *     stay queued for the next, admitted, load.
 */
#include <stdio.h>
#include <string.h>

#include "modelbuf/modelbuf.h"
#include "sched_int.h"

#define BACKOFF_FIRST_NS 1000000000ull
#define BACKOFF_MAX_NS 60000000000ull

/* ------------------------------------------------------------------------ */
/* Memory accounting                                                         */

uint64_t mb__footprint(const mb__model *m) {
  return m->measured_fp ? m->measured_fp : m->opts.footprint_bytes;
}

uint64_t mb__host_need(const mb__model *m) {
  return m->measured_host ? m->measured_host : mb__footprint(m);
}

void mb__charge_dev(mb_ctx *ctx, mb__model *m, int dev, uint64_t bytes) {
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

void mb__charge_host(mb_ctx *ctx, mb__model *m, uint64_t bytes) {
  ctx->host_used = ctx->host_used - m->host_charge + bytes;
  m->host_charge = bytes;
}

/* ------------------------------------------------------------------------ */
/* Waiters of a load (queue_timeout_excludes_load)                           */

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
    pause_waiter(ctx, MB__REQ_OF(q));
  mb__queue_foreach(q, &m->lw)
    pause_waiter(ctx, MB__REQ_OF(q));
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
    resume_waiter(ctx, MB__REQ_OF(q));
  mb__queue_foreach(q, &m->lw)
    resume_waiter(ctx, MB__REQ_OF(q));
}

/* ------------------------------------------------------------------------ */
/* The host tier                                                             */

static void host_evict(mb_ctx *ctx, mb__model *m);

/* Host bytes still held by models being unloaded count as in use until
 * they are gone. */
int mb__host_make_room(mb_ctx *ctx, const mb__model *self, uint64_t bytes) {
  if (ctx->host_used + bytes <= ctx->host_budget)
    return 1;
  mb__cand *cand = ctx->cand_host;
  int n = mb__collect(ctx, -1, 1);
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

/* Starts a full release of an OFFLOADED model to make room in the host tier. */
static void host_evict(mb_ctx *ctx, mb__model *m) {
  m->stats.evictions++;
  mb__event_locked_core(ctx, MB_EVENT_EVICT, m, m->state, MB_STATE_UNLOADING, "host eviction");
  mb__heap_cancel(&ctx->heap, &m->timer);
  mb__start_job(ctx, m, MB_JOB_UNLOAD, "evict");
}

/* ------------------------------------------------------------------------ */
/* Starting jobs                                                             */

/*
 * Hands a backend operation to the executor and moves to its transitional
 * state. why becomes the event's reason: "acquire", "load", "idle", "evict",
 * "request" (an explicit offload/unload), "error", "shutdown"; a model being
 * removed always says "remove".
 */
void mb__start_job(mb_ctx *ctx, mb__model *m, mb_job_kind kind, const char *why) {
  struct mb_job *j = &m->job;
  static const mb_state next[] = {
      [MB_JOB_LOAD] = MB_STATE_LOADING,
      [MB_JOB_OFFLOAD] = MB_STATE_OFFLOADING,
      [MB_JOB_RESTORE] = MB_STATE_RESTORING,
      [MB_JOB_UNLOAD] = MB_STATE_UNLOADING,
  };
  memset(j, 0, sizeof(*j));
  mb__queue_init(&j->node);
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
  mb__set_state(ctx, m, next[kind], m->removing ? "remove" : why);
  mb__submit_job_locked_core(ctx, j);
}

void mb__go_idle(mb_ctx *ctx, mb__model *m, int allow_offload, const char *why) {
  mb__heap_cancel(&ctx->heap, &m->timer);
  if (allow_offload && mb__can_offload(m) && mb__host_make_room(ctx, m, mb__host_need(m))) {
    mb__charge_host(ctx, m, mb__host_need(m));
    mb__start_job(ctx, m, MB_JOB_OFFLOAD, why);
  } else {
    mb__start_job(ctx, m, MB_JOB_UNLOAD, why);
  }
}

void mb__evict(mb_ctx *ctx, mb__model *m) {
  m->stats.evictions++;
  mb__event_locked_core(ctx, MB_EVENT_EVICT, m, m->state, m->state, "eviction");
  mb__go_idle(ctx, m, m->opts.offload, "evict");
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
    mb__req *r = MB__REQ_OF(q);
    r->load_ns = took_ns < ctx->now - r->enq_ns ? took_ns : ctx->now - r->enq_ns;
  }
  mb__set_state(ctx, m, MB_STATE_READY, why);
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
      int n = mb__collect(ctx, m->device, 0);
      uint64_t over = d->used - d->usable, freed = 0;
      for (int i = 0; i < n && freed < over; i++) {
        if (vict[i].m == m)
          continue;
        freed += vict[i].m->dev_charge;
        mb__evict(ctx, vict[i].m);
      }
    }
  }
}

/* What a failed job says: the backend's message, else the code's text. */
static const char *job_error(const struct mb_job *j) {
  return j->msg[0] ? j->msg : mb_strerror(j->rc);
}

/* FAILED with the back-off of a failed load: 1 s doubling to 60 s with
 * each failure in a row. */
static void fail_with_backoff(mb_ctx *ctx, mb__model *m) {
  m->fail_count++;
  uint64_t back = BACKOFF_FIRST_NS << (m->fail_count - 1 < 6 ? m->fail_count - 1 : 6);
  if (back > BACKOFF_MAX_NS)
    back = BACKOFF_MAX_NS;
  m->retry_at = ctx->now + back;
}

/* The model's error, as the reason of an event: "error: <message>". */
static void error_event(mb_ctx *ctx, mb__model *m, mb_state to) {
  char why[300];
  snprintf(why, sizeof(why), "error: %s", m->error);
  if (to == m->state)
    mb__event_locked_core(ctx, MB_EVENT_WARNING, m, m->state, m->state, why);
  else
    mb__set_state(ctx, m, to, why);
}

/* Answers the offload requests waiting on m with rc and msg; the unload
 * and remove requests stay, oldest first from then on (the list held them
 * newest first). */
static void fail_offload_waiters(mb_ctx *ctx, mb__model *m, int rc, const char *msg) {
  mb__queue keep;
  mb__req *r;
  mb__queue_init(&keep);
  while ((r = mb__first_req(&m->ow)) != NULL) {
    mb__queue_remove(&r->wnode);
    if (r->type == MB__R_OFFLOAD)
      mb__answer(ctx, r, rc, "%s", msg);
    else
      mb__queue_insert_head(&keep, &r->wnode);
  }
  mb__queue_move(&keep, &m->ow);
}

static void load_done(mb_ctx *ctx, struct mb_job *j, uint64_t took, int canceled) {
  mb__model *m = j->m;
  double ms = (double)took / 1e6;
  char why[300];
  if (j->rc != 0 && canceled) {
    /* Canceled by an unload: back to UNLOADED, no back-off. Its waiters
     * had their answer when the cancel was asked for; later ones load
     * it again. */
    uncharge_dev(ctx, m);
    m->device = -1;
    m->unload_pending = m->offload_pending = 0;
    mb__set_state(ctx, m, MB_STATE_UNLOADED, "canceled");
    mb__answer_op_waiters(ctx, m, 0, NULL);
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
    snprintf(m->error, sizeof(m->error), "%s", job_error(j));
    fail_with_backoff(ctx, m);
    uncharge_dev(ctx, m);
    m->device = -1;
    error_event(ctx, m, MB_STATE_FAILED);
    snprintf(why, sizeof(why), "load of '%s' failed: %s", m->name, m->error);
    /* A load the backend gave up as timed out (its own limit, named in
     * the message) is a timeout for the waiters too. */
    mb__fail_waiters(ctx, m, j->rc == MB_ETIMEDOUT ? MB_ETIMEDOUT : MB_ELOAD, why);
    m->unload_pending = m->offload_pending = 0;
    mb__answer_op_waiters(ctx, m, 0, NULL);
  }
}

static void restore_done(mb_ctx *ctx, struct mb_job *j, uint64_t took) {
  mb__model *m = j->m;
  if (j->rc == 0) {
    note_usage(m, j);
    m->stats.restores++;
    m->stats.last_restore_ms = (double)took / 1e6;
    mb__charge_host(ctx, m, 0);
    become_ready(ctx, m, took, "restored");
    if (j->note[0])
      mb__event_locked_core(ctx, MB_EVENT_WARNING, m, m->state, m->state, j->note);
  } else {
    /* The host copy is of no use: free it and load cold for the waiters. */
    snprintf(m->error, sizeof(m->error), "restore failed: %s", job_error(j));
    error_event(ctx, m, m->state);
    mb__start_job(ctx, m, MB_JOB_UNLOAD, "error");
  }
}

static void offload_done(mb_ctx *ctx, struct mb_job *j, uint64_t took) {
  mb__model *m = j->m;
  if (j->rc == 0) {
    note_usage(m, j);
    end_residency(ctx, m);
    m->stats.offloads++;
    m->stats.last_offload_ms = (double)took / 1e6;
    if (j->have_usage && j->usage.host_bytes) {
      m->measured_host = j->usage.host_bytes;
      mb__charge_host(ctx, m, j->usage.host_bytes);
    }
    uncharge_dev(ctx, m);
    m->idle_since = ctx->now;
    m->offload_pending = 0;
    mb__set_state(ctx, m, MB_STATE_OFFLOADED, "offloaded");
    mb__answer_op_waiters(ctx, m, 0, NULL);
  } else {
    snprintf(m->error, sizeof(m->error), "offload failed: %s", job_error(j));
    mb__charge_host(ctx, m, 0);
    /* Undo the leaving mark; the unload job sets it again. */
    set_leaving(ctx, m, 0);
    error_event(ctx, m, m->state);
    /* Offload requests fail; unload requests wait for the unload. */
    fail_offload_waiters(ctx, m, MB_EBACKEND, m->error);
    m->offload_pending = 0;
    mb__start_job(ctx, m, MB_JOB_UNLOAD, "error");
  }
}

static void unload_done(mb_ctx *ctx, struct mb_job *j) {
  mb__model *m = j->m;
  char why[300];
  int from_host = !m->on_dev;
  if (!from_host)
    end_residency(ctx, m);
  uncharge_dev(ctx, m);
  mb__charge_host(ctx, m, 0);
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
    fail_with_backoff(ctx, m);
    error_event(ctx, m, MB_STATE_FAILED);
    snprintf(why, sizeof(why), "model '%s' failed: %s", m->name, m->error);
    mb__fail_waiters(ctx, m, MB_ELOAD, why);
    mb__answer_op_waiters(ctx, m, 0, NULL);
  } else if (j->rc == 0) {
    m->stats.unloads++;
    if (from_host)
      m->stats.full_releases++;
    mb__set_state(ctx, m, MB_STATE_UNLOADED, from_host ? "released" : "unloaded");
    mb__answer_op_waiters(ctx, m, 0, NULL);
  } else {
    m->lost_fail = 0;
    snprintf(m->error, sizeof(m->error), "unload failed: %s", job_error(j));
    m->retry_at = ctx->now;
    error_event(ctx, m, MB_STATE_FAILED);
    mb__answer_op_waiters(ctx, m, MB_EBACKEND, m->error);
  }
}

void mb__job_done(mb_ctx *ctx, struct mb_job *j) {
  mb__model *m = j->m;
  uint64_t took = ctx->now - j->start_ns;
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
  case MB_JOB_LOAD: load_done(ctx, j, took, canceled); break;
  case MB_JOB_RESTORE: restore_done(ctx, j, took); break;
  case MB_JOB_OFFLOAD: offload_done(ctx, j, took); break;
  case MB_JOB_UNLOAD: unload_done(ctx, j); break;
  }
  /* A loss reported while the job ran: the model is gone if it is still
   * resident in that residency (else the report is stale). */
  if (m->lost_pending) {
    m->lost_pending = 0;
    if (!m->job.busy && m->lost_pending_res == m->residency &&
        (m->state == MB_STATE_READY || m->state == MB_STATE_OFFLOADED))
      mb__lose(ctx, m, m->lost_pending_flags, m->lost_pending_reason);
    m->lost_pending_flags = 0;
  }
  mb__mark_dirty(ctx, m);
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
void mb__lose(mb_ctx *ctx, mb__model *m, int flags, const char *reason) {
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
    mb__device_slots_freed(ctx, m->device);
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
  mb__start_job(ctx, m, MB_JOB_UNLOAD, "lost");
}

/*
 * Cancels a LOADING model's load through its backend (when it can): the
 * waiters of the load get MB_ECANCELED now, the backend's cancel is called
 * after the step (outside core_lock), and the load's completion brings the
 * model back to UNLOADED (load_done).
 */
void mb__cancel_load(mb_ctx *ctx, mb__model *m, const char *why) {
  if (m->be->cancel == NULL || m->cancel_pending || !m->job.busy ||
      m->job.kind != MB_JOB_LOAD)
    return;
  m->cancel_pending = 1;
  char msg[256];
  snprintf(msg, sizeof(msg), "load of '%s' canceled: %s", m->name, why);
  mb__fail_waiters(ctx, m, MB_ECANCELED, msg);
  mb__job_op(&m->job, &m->cancel_op);
  if (!m->cancel_queued) {
    m->cancel_queued = 1;
    mb__queue_insert_head(&ctx->cancels, &m->cancel_node);
  }
}
