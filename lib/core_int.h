/*
 * core_int.h - the residency core's data, private to libmodelbuf.
 *
 * Files:
 *   core.c    - the context: threads, the post queue, the loader pool, the
 *               public entry points that post requests and wait, the fast
 *               paths' locking.
 *   sched.c   - the step: every decision is made there or in the files it
 *   jobs.c      shares sched_int.h with (backend jobs and memory, admission
 *   admit.c     planning, eviction order).
 *   policy.c
 *   status.c  - snapshots for status and device info.
 *
 * Who owns the state machine: a lock, not a thread. core_lock guards
 * everything the state machine owns (models, devices, the timer heap, the
 * queues, statistics, the name table) and is held for a whole step; the
 * core thread (threaded mode) or mb_ctx_step's caller (manual mode) is the
 * one that steps, but other threads take core_lock too, each for a short
 * critical section of its own: status readers (status.c), mb_model_add and
 * mb_device_add, mb_ctx_next_deadline, and the fast paths (mb_acquire_try,
 * mb_release), which settle on the caller's thread what a step would
 * settle at once, and only with nothing posted. So "owned by the core" in
 * STYLE terms means guarded by core_lock, decided in a step; the
 * determinism comes from the step reading the clock once and taking its
 * inputs in order, not from a single thread. core_lock is never held while
 * a backend function runs, nor any user callback but evict_rank (public
 * header: quick, no calls into the library).
 *
 * Locks, what they guard, and their suffix (a function that expects its
 * caller to hold one ends in it):
 *   core_lock  _locked_core  the state machine (above); the files of the
 *                            step (sched_int.h) run under it throughout
 *                            and do not repeat the suffix;
 *   post_lock  _locked_post  the post queue (requests, released leases,
 *                            renewals, job completions), the lease table,
 *                            the wake-up flag and the core thread's sleep;
 *                            short critical sections, nothing blocks;
 *   pool_lock  (none)        the loader pool's job queue; core.c only.
 * Order: core_lock -> post_lock, core_lock -> pool_lock. Nothing takes
 * core_lock while holding post_lock or pool_lock, and post_lock and
 * pool_lock are never held together.
 */
#ifndef MB_CORE_INT_H
#define MB_CORE_INT_H

#include <pthread.h>
#include <stdint.h>

#include "modelbuf/modelbuf.h"
#include "heap.h"
#include "queue.h"

/* Timer kinds. */
enum { MB__T_MODEL = 1, MB__T_WAIT = 2, MB__T_TTL = 3 };

/* Request types posted to the core. */
typedef enum mb__req_type {
  MB__R_ACQUIRE = 1,
  MB__R_LOAD,
  MB__R_OFFLOAD,
  MB__R_UNLOAD,
  MB__R_KEEPALIVE,
  MB__R_CANCEL,
  MB__R_REMOVE,
  MB__R_SHUTDOWN,
  MB__R_LOST
} mb__req_type;

typedef struct mb__model mb__model;

/*
 * A posted request. An acquire stays alive as a waiter in its model's queue
 * until it is answered; every request is answered exactly once through done.
 */
typedef struct mb__req {
  mb__queue node;                /* post queue, then the answered list */
  mb__queue wnode;               /* a model's waiters (wq, lw or ow) */
  mb__req_type type;
  uint64_t id;
  char *name;                    /* the model's name (owned) */
  mb__model *m;                  /* resolved by the core */
  int priority;
  uint64_t seq;                  /* arrival order */
  uint64_t enq_ns;               /* when the core took it */
  int64_t timeout_ms, keep_alive_ms, ttl_ms;
  uint64_t cancel_id;            /* MB__R_CANCEL */
  mb__timer timer;               /* queue timeout */
  int has_timer_slot;
  uint64_t load_ns;              /* load/restore time this request waited for */
  int timeout_own;               /* the timeout came with the request, not the model */
  /* The queue timeout stopped while the model loads for this waiter
   * (queue_timeout_excludes_load): left_ns of it remain. */
  int paused;
  uint64_t left_ns;
  /* MB__R_LOST: the report. */
  uint64_t residency;
  int flags;
  char reason[128];
  mb_done_fn done;
  void *arg;
  /* The answer. */
  int rc;
  mb_lease lease;
  uint64_t queue_ns;
  char msg[256];
} mb__req;

/* A lease granted by the core; in the lease table until the core drops it. */
typedef struct mb__lease {
  uint64_t id;
  mb__model *m;
  int device;
  int released;         /* set under post_lock by mb_release or TTL expiry */
  int lost;             /* under post_lock: its model was lost; the core dropped it */
  uint64_t ttl_deadline;/* under post_lock; 0 = no TTL */
  mb__timer timer;      /* TTL check, core-owned */
  struct mb__lease *hnext;  /* lease table chain */
  mb__queue rel_node;       /* the released leases (post_lock) */
  /* In the list of leases renewed to an earlier deadline than the armed
   * timer's (under post_lock): the core re-arms their timers. */
  int renewed;
  mb__queue renew_node;
} mb__lease;

/* A backend job; one per model at most, so it lives inside the model. */
struct mb_job {
  mb_job_kind kind;
  mb__model *m;
  mb_ctx *ctx;
  int device;
  mb_device_kind device_kind; /* copied at start: devs may move meanwhile */
  int device_ordinal;
  uint64_t start_ns;
  uint64_t budget_bytes;
  uint64_t residency;    /* the model's residency count for this operation */
  int busy;              /* handed out, not yet completed */
  int rc;
  char msg[256];
  mb_usage usage;
  int have_usage;
  uint64_t progress_done, progress_total; /* atomics */
  char note[192];        /* mb__op_note: a warning event if the job succeeds */
  mb__queue node;        /* completion list / pool queue / manual list */
};

typedef struct mb__device {
  mb_device_opts opts;
  int index;
  char name[32];
  uint64_t capacity, usable;
  uint64_t used;       /* sum of dev_charge of models placed here */
  int resident;        /* models charged here */
  int leaving;         /* of which OFFLOADING or UNLOADING */
  uint64_t leaving_bytes;
  int loads;           /* LOADING + RESTORING */
  int leases;
  mb__queue res_list;  /* models charged here (on_dev), newest first, via dev_node */
  /* Admission plan (admit.c): this device's eviction candidates, sorted,
   * at ctx->plan[plan_off .. plan_off + plan_n), valid while plan_gen ==
   * ctx->plan_gen. */
  uint64_t plan_gen;
  int plan_off, plan_n;
  /* The cost policy's single victims (admit.c, plan_one): the same
   * candidates by charge, each with the cheapest one of at least its
   * charge, at ctx->plan[one_off .. one_off + plan_n), valid while
   * one_gen == ctx->plan_gen. */
  uint64_t one_gen;
  int one_off;
  /* The smallest need found not to fit now in generation fail_gen: no
   * larger one fits either. */
  uint64_t fail_gen, fail_need;
  /* The waiting models bound to this device (admit.c: a restore, or a
   * fixed device), in admission order (adm1_node), and bounds of their
   * footprints (never narrower than the footprints). */
  mb__queue adm1;
  uint64_t adm1_min, adm1_max;
} mb__device;

/* An eviction candidate and its rank under the policy (policy.c). */
typedef struct mb__cand {
  mb__model *m;
  double rank;
} mb__cand;

/* A device's candidate in an admission plan, with the sums over the
 * candidates before it and itself: the bytes evicting them frees and their
 * summed eviction cost. */
typedef struct mb__plan_ent {
  mb__model *m;
  double rank;
  uint64_t charge_sum;
  double cost_sum;
} mb__plan_ent;

struct mb__model {
  char *name;
  const mb_backend *be;
  void *user;
  mb_model_opts opts;
  int index;                 /* registration order */
  mb_state state;
  int device;                /* placement, -1 none */
  int64_t ka_current;        /* effective keep-alive (ms) */
  uint64_t idle_since;       /* when the idle clock started */
  mb__timer timer;           /* idle expiry (READY) or host keep-alive (OFFLOADED) */
  /* Waiters (their wnode). */
  mb__queue wq;              /* acquires, by priority then arrival */
  int nwait;
  mb__queue lw;              /* explicit loads waiting for READY, newest first */
  mb__queue ow;              /* offload/unload requests waiting, newest first */
  int offload_pending, unload_pending, removing;
  /* Admission. */
  int admit_pending;
  uint64_t admit_seq;
  mb__queue adm_node;
  /* Also in the list of admissions bound to one device (its device's
   * adm1, or the context's adm_loose once it no longer is bound there). */
  int adm_single;
  int adm1_dev;               /* the device whose adm1 it is in; -1: adm_loose */
  mb__queue adm1_node;
  /* Dirty list. */
  int dirty;
  mb__queue dirty_node;
  /* Memory. */
  uint64_t dev_charge, host_charge;
  int on_dev;                 /* counted in its device's used/resident */
  mb__queue dev_node;         /* its device's resident list while on_dev */
  int leaving;                /* counted in its device's leaving */
  uint64_t measured_fp;       /* peak device bytes of the last residency (0 unknown) */
  uint64_t measured_host;     /* host bytes of the last offload (0 unknown) */
  uint64_t resid_peak;        /* peak in the current residency */
  int growth_streak;
  mb_usage usage;             /* last measured */
  /* Use. */
  int inflight;
  uint64_t loaded_at, last_accessed, last_load_ns;
  double hits;                /* acquires, decayed (cost policy) */
  uint64_t hits_t;            /* the last counted acquire, when hits was brought up to date */
  /* Failure. */
  char error[256];
  int fail_count;
  uint64_t retry_at;
  /* Residencies and losses (mb_model_lost). */
  uint64_t residency;         /* loads + restores started */
  uint64_t lost_times[MB_CRASH_LIMIT_MAX]; /* ring of the last losses' times */
  int lost_n, lost_next;
  int lost_fail;              /* the unload after the loss ends in FAILED */
  int lost_pending;           /* a loss reported while a job ran */
  int lost_pending_flags;
  uint64_t lost_pending_res;
  char lost_pending_reason[128];
  uint64_t lost_at;
  char lost_reason[128];
  /* Cancel of a running load (backend cancel): asked for, and the call
   * queued for delivery outside core_lock with its op. */
  int cancel_pending;
  int cancel_queued;
  mb_op cancel_op;
  mb__queue cancel_node;
  unsigned warnings;
  char warning_text[256];
  mb_stats stats;
  uint64_t load_count_for_avg;
  struct mb_job job;
  mb__model *hnext;          /* name table chain */
  mb__queue grave_node;      /* the graveyard */
};

typedef struct mb__event_buf {
  mb_event *items;
  char **reasons; /* owned copies */
  char **models;
  size_t len, cap;
} mb__event_buf;

struct mb_ctx {
  mb_ctx_opts opts;
  uint64_t now;
  int64_t wall_offset_ms;     /* wall ms = clock ms + offset */

  pthread_mutex_t core_lock;
  pthread_mutex_t post_lock;
  pthread_cond_t post_cond;   /* wakes the core thread */
  pthread_mutex_t pool_lock;
  pthread_cond_t pool_cond;

  /* Under post_lock. */
  mb__queue posted;           /* requests (node), in order */
  mb__queue released;         /* released leases (rel_node), in order */
  mb__queue renewed;          /* leases whose deadline moved earlier, newest first */
  mb__queue done;             /* completed jobs (node), in order */
  mb__lease **lease_tab;
  size_t lease_tab_cap, lease_count;
  uint64_t next_lease_id;
  uint64_t next_req_id;
  int wake;
  /* The core thread's sleep (threaded mode): sleeping until sleep_until
   * (UINT64_MAX: until a post). A fast path that arms an earlier timer
   * outside a step wakes it; timers_moved (atomic, bumped by such a fast
   * path under core_lock) tells a core thread about to sleep that the
   * deadline it computed may be stale. */
  int sleeping;
  uint64_t sleep_until;
  uint64_t timers_moved;

  /* Under pool_lock. */
  mb__queue pool;             /* jobs for the loader threads (node) */
  int pool_stop;
  pthread_t *loaders;
  int nloaders;
  pthread_t core_thread;
  int core_started;
  int stop;                   /* core thread exits */

  /* Under core_lock: the state machine. */
  mb__device *devs;
  int ndev;
  int mixed_kinds;            /* devices of more than one kind (restores stay put) */
  mb__model **models;         /* registration order */
  int nmodels, models_cap;
  mb__model **name_tab;
  size_t name_tab_cap;
  mb__heap heap;
  mb__queue adm;              /* models waiting for memory, oldest first (adm_node) */
  /* The waiting models bound to one device (a restore, or a fixed device)
   * are in their device's adm1; those that were, but whose restore became
   * a load (the host copy lost), here, in admission order (adm1_node). The
   * others may go on any device: how many, and bounds of their
   * footprints. */
  mb__queue adm_loose;
  int adm_any;
  uint64_t adm_any_min, adm_any_max;
  uint64_t adm_seq;
  mb__queue dirty;            /* models to advance, in order (dirty_node) */
  int devs_dirty;
  uint64_t req_seq;
  uint64_t host_budget, host_used;
  /* Eviction candidate buffers, models_cap entries each (grown by
   * mb_model_add): one for device evictions and one for host evictions,
   * which may be planned while a device eviction is in progress. */
  mb__cand *cand_dev, *cand_host;
  /* Admission plans of the devices, 2 x models_cap entries (a model is a
   * candidate on one device at most, and is there in eviction order and,
   * for the cost policy, once more by charge). One generation lasts while
   * the admission pass changes nothing; any action starts a new one. */
  mb__plan_ent *plan;
  int plan_used;
  uint64_t plan_gen;
  /* The same for a model that may go on any device. */
  uint64_t auto_fail_gen, auto_fail_need, auto_fail_largest;
  /* What a model that may go on any device finds, per generation
   * (admit.c, auto_blocked): the largest usable size, the device with the
   * most free memory and that memory, the most a device can take once its
   * leaving models are gone, and the cheapest planned eviction. */
  uint64_t auto_gen, auto_cost_gen;
  uint64_t auto_usable, auto_t0, auto_t1;
  int auto_dev0, auto_has_t1;
  /* The most free memory of the devices where a model may fit now and
   * that may start a load (admit.c: a model fits now best there). */
  uint64_t auto_idle;
  int auto_has_idle;
  int auto_cost_positive;     /* every eviction now costs more than 0 */
  /* The admission check (admit.c): 0 off; 1 every decision a shortcut
   * makes is planned again in full and compared, differences counted; 2
   * the same, and a difference aborts (build option admission_check). */
  int admit_check;
  double (*rate_oracle)(void *arg, void *user); /* mb__cost_rate_oracle; NULL: measured */
  void *rate_oracle_arg;
  uint64_t admit_checked[4];  /* by shortcut: auto_blocked, any_blocked, planning, bound_wait */
  uint64_t admit_differ;
  char admit_first[512];      /* the first difference, described */
  int shutting_down;
  int jobs_busy;
  mb__queue manual_jobs;      /* handed to the executor after the step, in order */
  mb__queue answered;         /* answers to deliver after the step, in order */
  mb__queue graveyard;        /* removed models to free after the step, newest first */
  mb__queue cancels;          /* backend cancels to call after the step, newest first */
  mb__event_buf events;
  uint64_t event_seq;
  uint64_t events_dropped;
};

/* core.c */
void mb__post_job_done(mb_ctx *ctx, struct mb_job *job);
/* The backend operation of job j, as its backend gets it (err, err_len and
 * priv left empty). */
void mb__job_op(const struct mb_job *j, mb_op *op);
void mb__submit_job_locked_core(mb_ctx *ctx, struct mb_job *job);
mb__model *mb__model_find_locked_core(mb_ctx *ctx, const char *name);
void mb__model_unlink_locked_core(mb_ctx *ctx, mb__model *m);
void mb__model_destroy(mb__model *m);
mb__lease *mb__lease_take_locked_post(mb_ctx *ctx, uint64_t id); /* post_lock held */
/* Marks every lease of m lost (post_lock held): in the table and released
 * but not yet dropped. Returns how many were still counted in m->inflight. */
int mb__leases_lose_locked_post(mb_ctx *ctx, mb__model *m);
int mb__lease_insert_locked_post(mb_ctx *ctx, mb__lease *l);    /* post_lock held */

/* sched.c: the fast paths of acquire and release (core.c), with core_lock
 * held and nothing posted: 1 when done now, 0 when only a step can do it
 * (nothing changed), or MB_ENOMEM. */
int mb__try_grant_locked_core(mb_ctx *ctx, const char *name, const mb_acquire_opts *o,
                              mb_result *out);
int mb__try_release_locked_core(mb_ctx *ctx, mb__lease *l, uint64_t *armed);

/* sched.c: the step, with core_lock held: the requests, released leases
 * and completed jobs taken from the post queue (each list emptied). */
int mb__step_locked_core(mb_ctx *ctx, mb__queue *reqs, mb__queue *rels, mb__queue *done);
void mb__event_locked_core(mb_ctx *ctx, mb_event_type type, mb__model *m, mb_state from,
                           mb_state to, const char *reason);
uint64_t mb__footprint(const mb__model *m);
/* Stops grants, fails every waiter with MB_ESHUTDOWN, marks every model
 * for unloading (threaded mode unloads them through the loaders). */
void mb__shutdown_locked_core(mb_ctx *ctx);

/* Milliseconds to ns, with MB_FOREVER passing through as UINT64_MAX. */
static inline uint64_t mb__ms_to_ns(int64_t ms) {
  return ms < 0 ? UINT64_MAX : (uint64_t)ms * 1000000ull;
}

#endif /* MB_CORE_INT_H */
