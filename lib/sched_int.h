/*
 * sched_int.h - private to the files of the core's step: what they share.
 *
 * A step (mb__step_locked_core, sched.c) is the only place the core decides
 * anything. Its work is split by job:
 *   sched.c  - the step itself: requests, lease releases, timers, advancing
 *              each touched model, grants of leases, the fast paths;
 *   jobs.c   - backend jobs: memory charged per device and in the host
 *              tier, starting a load/offload/restore/unload, their
 *              completions, lost models, canceled loads;
 *   admit.c  - admission planning: which waiting model goes on which
 *              device, and which idle models are evicted to make room;
 *   policy.c - eviction order: how each policy ranks a candidate.
 *
 * Every function declared here runs in a step, with core_lock held (so none
 * repeats _locked_core in its name: the whole of this header is the core's);
 * none allocates except where it says so, none blocks, none calls a backend
 * or a user callback (the core's own evict_rank callback aside), and every
 * one reads the time from ctx->now.
 */
#ifndef MB_SCHED_INT_H
#define MB_SCHED_INT_H

#include <stdint.h>

#include "core_int.h"

/* ---- sched.c: answers, state, waiters ------------------------------------ */

/* Queues req's answer; done runs after the step, outside core_lock. */
void mb__answer(mb_ctx *ctx, mb__req *r, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* m is advanced again before the step ends. */
void mb__mark_dirty(mb_ctx *ctx, mb__model *m);
/* A state change, with its event; the model is marked dirty. */
void mb__set_state(mb_ctx *ctx, mb__model *m, mb_state to, const char *reason);
/* Leases on device dev ended: with a device-wide concurrency limit, every
 * model there with waiters may use the freed slots. */
void mb__device_slots_freed(mb_ctx *ctx, int dev);
/* Answers every acquire and load waiting on m with rc and msg. */
void mb__fail_waiters(mb_ctx *ctx, mb__model *m, int rc, const char *msg);
/* Answers every offload/unload/remove request waiting on m. */
void mb__answer_op_waiters(mb_ctx *ctx, mb__model *m, int rc, const char *msg);

#define MB__REQ_OF(q) mb__queue_data(q, mb__req, wnode)

/* The first request of a waiter list (wq, lw or ow), or NULL. */
static inline mb__req *mb__first_req(const mb__queue *h) {
  mb__queue *q = mb__queue_first(h);
  return q ? MB__REQ_OF(q) : NULL;
}

/* Whether requests wait for m to be READY (acquires or loads). */
static inline int mb__wants_resident(const mb__model *m) {
  return !mb__queue_empty(&m->wq) || !mb__queue_empty(&m->lw);
}

/* Whether a new waiter of m joins a load in progress: its queue timeout
 * starts paused (queue_timeout_excludes_load). */
static inline int mb__joins_load(const mb__model *m) {
  return m->opts.queue_timeout_excludes_load &&
         (m->state == MB_STATE_LOADING || m->state == MB_STATE_RESTORING);
}

static inline int mb__can_offload(const mb__model *m) {
  return m->be->offload != NULL && m->be->restore != NULL;
}

/* ---- jobs.c: memory, backend jobs and their completions ------------------- */

/* Bytes m takes in the host tier when offloaded (measured, else its
 * footprint). */
uint64_t mb__host_need(const mb__model *m);
/* m is placed on dev and charged bytes there (it joins the device's
 * resident list). */
void mb__charge_dev(mb_ctx *ctx, mb__model *m, int dev, uint64_t bytes);
/* m's charge in the host tier becomes bytes (0: none). */
void mb__charge_host(mb_ctx *ctx, mb__model *m, uint64_t bytes);
/* Whether bytes fit in the host tier for self, evicting offloaded models if
 * that makes them fit (only then). */
int mb__host_make_room(mb_ctx *ctx, const mb__model *self, uint64_t bytes);
/* Hands a backend operation to the executor and moves m to its
 * transitional state; why is the event's reason ("remove" for a model
 * being removed). */
void mb__start_job(mb_ctx *ctx, mb__model *m, mb_job_kind kind, const char *why);
/* Moves an idle READY model off its device: offload when allow_offload, the
 * backend can and the host tier has room, else unload. */
void mb__go_idle(mb_ctx *ctx, mb__model *m, int allow_offload, const char *why);
/* Evicts an idle READY model (its event, then mb__go_idle by its policy). */
void mb__evict(mb_ctx *ctx, mb__model *m);
/* A backend job came back (its result in j). */
void mb__job_done(mb_ctx *ctx, struct mb_job *j);
/* A resident model with no job running is gone (mb_model_lost). */
void mb__lose(mb_ctx *ctx, mb__model *m, int flags, const char *reason);
/* Cancels a LOADING model's load through its backend, if it can. */
void mb__cancel_load(mb_ctx *ctx, mb__model *m, const char *why);

/* ---- admit.c: admission planning ------------------------------------------ */

/* m starts waiting for memory: it joins the admission list and is tried at
 * once. */
void mb__admit_new(mb_ctx *ctx, mb__model *m);
/* m waits for memory no more (no-op when it did not). */
void mb__adm_remove(mb_ctx *ctx, mb__model *m);
/* m's state changed: if it waits bound to a device it no longer is bound
 * to (a restore became a load), it is filed again (no-op otherwise). */
void mb__adm_rebind(mb_ctx *ctx, mb__model *m);
/* Tries every waiting model, oldest first (ctx->devs_dirty asked for it). */
void mb__pump_admissions(mb_ctx *ctx);

/* ---- policy.c: eviction order --------------------------------------------- */

/* Time to bring m back if evicted now, in ms (measured, else estimated):
 * a restore from the host tier (to_host), else a load. */
double mb__reload_cost_ms(const mb__model *m, int to_host);
/* An acquire of m counts into its use rate (the cost policy's). */
void mb__note_use(mb_ctx *ctx, mb__model *m);
/* The size in GiB (at least 1 MiB) that the cost policy's rank divides
 * by: rank x this is the candidate's expected reload time per unit time. */
double mb__rank_gib(const mb__model *m);
/* A candidate's rank under the context's policy: lower goes first. dev is
 * -1 in the host tier. */
double mb__evict_rank(const mb_ctx *ctx, const mb__model *m, int dev);
/* Whether mb__evict_rank(ctx, m, dev) > 0, without exp() where it can
 * tell. */
int mb__evict_rank_positive(const mb_ctx *ctx, const mb__model *m, int dev);
/* Whether m may be evicted from device dev now (READY, idle, unpinned, no
 * one waiting, nothing pending). */
int mb__evictable(const mb__model *m, int dev);
/* Every eviction candidate of device dev (host: of the host tier) into
 * ctx->cand_dev (cand_host), sorted in eviction order; how many. */
int mb__collect(mb_ctx *ctx, int dev, int host);

#endif /* MB_SCHED_INT_H */
