/*
 * core.c - the context: its threads, the post queue, the loader pool, and
 * the public entry points. The decisions themselves are made in a step
 * (sched.c and the files of sched_int.h).
 *
 * Threads (threaded mode):
 *   - callers post requests (mb_acquire_async and friends) onto the post
 *     queue and wake the core thread; blocking calls wait on their own
 *     condition until the core answers them;
 *   - the core thread takes everything posted, steps the state machine with
 *     core_lock held, then (unlocked) delivers events and answers, and
 *     sleeps until the next timer or the next post;
 *   - loader threads run backend jobs with no core lock held and post their
 *     completion back.
 * In manual mode there are no threads: mb_ctx_step() does one round of the
 * core thread's loop on the caller's thread, and jobs go to the executor.
 *
 * Locks and what they guard:
 *   core_lock - all state-machine data (models, devices, heap, queues,
 *               statistics, the name table). Never held while a backend
 *               function or a user callback runs (evict_rank aside). Held
 *               for a whole step, and briefly by status readers, model and
 *               device registration and the fast paths (core_int.h says
 *               why a lock, not a thread, owns the state machine).
 *   post_lock - the post queue, released leases, job completions, the lease
 *               table, the wake flag. Never held while anything blocks.
 *   pool_lock - the loader pool's queue.
 * Lock order: core_lock -> post_lock; core_lock -> pool_lock. A function
 * that expects a lock held ends in _locked_core or _locked_post.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/sysinfo.h>
#include <time.h>

#include "modelbuf/modelbuf.h"
#include "alloc.h"
#include "backend.h"
#include "core_int.h"
#include "device.h"
#include "mb_internal.h"
#include "opts.h"

const double mb_wait_bucket_ms[MB_WAIT_BUCKETS - 1] = {1,   5,    10,   50,    100,   250,
                                                       500, 1000, 5000, 10000, 60000};

uint64_t mb_clock_monotonic(void *arg) {
  struct timespec ts;
  (void)arg;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ------------------------------------------------------------------------ */
/* Options                                                                   */

void mb_ctx_opts_init(mb_ctx_opts *o) {
  memset(o, 0, sizeof(*o));
  o->size = sizeof(*o);
  o->eviction = MB_EVICT_LRU;
  o->keep_alive_ms = MB_DEFAULT; /* resolved by mb_ctx_new */
}

void mb_model_opts_init(mb_model_opts *o) {
  memset(o, 0, sizeof(*o));
  o->size = sizeof(*o);
  o->keep_alive_ms = MB_DEFAULT;      /* the context's, resolved by mb_model_add */
  o->offload = 1;
  o->host_keep_alive_ms = MB_DEFAULT; /* MB_DEFAULT_HOST_KEEP_ALIVE_MS */
  o->device = 0;
  o->max_concurrency = MB_DEFAULT_MAX_CONCURRENCY;
  o->max_queue = MB_DEFAULT_MAX_QUEUE;
  o->queue_timeout_ms = MB_DEFAULT_QUEUE_TIMEOUT_MS;
  o->crash_limit = MB_DEFAULT_CRASH_LIMIT;
  o->crash_window_ms = MB_DEFAULT_CRASH_WINDOW_MS;
  o->queue_timeout_excludes_load = 0;
}

void mb_acquire_opts_init(mb_acquire_opts *o) {
  memset(o, 0, sizeof(*o));
  o->size = sizeof(*o);
  o->priority = MB_PRIORITY_DEFAULT;
  o->timeout_ms = MB_DEFAULT;
  o->keep_alive_ms = MB_DEFAULT;
  o->ttl_ms = 0;
}

void mb_device_opts_init(mb_device_opts *o) {
  memset(o, 0, sizeof(*o));
  o->size = sizeof(*o);
  o->kind = MB_DEVICE_HOST;
}

/* ------------------------------------------------------------------------ */
/* Name table (core_lock) and lease table (post_lock)                        */

static size_t hash_name(const char *s) {
  size_t h = 5381;
  while (*s)
    h = h * 33 + (unsigned char)*s++;
  return h;
}

mb__model *mb__model_find_locked_core(mb_ctx *ctx, const char *name) {
  if (ctx->name_tab_cap == 0 || name == NULL)
    return NULL;
  mb__model *m = ctx->name_tab[hash_name(name) & (ctx->name_tab_cap - 1)];
  while (m && strcmp(m->name, name) != 0)
    m = m->hnext;
  return m;
}

void mb__model_unlink_locked_core(mb_ctx *ctx, mb__model *m) {
  mb__model **pp = &ctx->name_tab[hash_name(m->name) & (ctx->name_tab_cap - 1)];
  while (*pp && *pp != m)
    pp = &(*pp)->hnext;
  if (*pp)
    *pp = m->hnext;
  for (int i = m->index; i < ctx->nmodels - 1; i++) {
    ctx->models[i] = ctx->models[i + 1];
    ctx->models[i]->index = i;
  }
  ctx->nmodels--;
}

/* Grows the name table to keep chains short. */
static int name_tab_grow_locked_core(mb_ctx *ctx) {
  if ((size_t)ctx->nmodels + 1 <= ctx->name_tab_cap / 2)
    return 0;
  size_t cap = ctx->name_tab_cap ? ctx->name_tab_cap * 2 : 64;
  mb__model **tab = mb__calloc(cap, sizeof(*tab));
  if (tab == NULL)
    return MB_ENOMEM;
  for (size_t i = 0; i < ctx->name_tab_cap; i++) {
    mb__model *m = ctx->name_tab[i];
    while (m) {
      mb__model *next = m->hnext;
      size_t b = hash_name(m->name) & (cap - 1);
      m->hnext = tab[b];
      tab[b] = m;
      m = next;
    }
  }
  mb__free(ctx->name_tab);
  ctx->name_tab = tab;
  ctx->name_tab_cap = cap;
  return 0;
}

int mb__lease_insert_locked_post(mb_ctx *ctx, mb__lease *l) {
  if (ctx->lease_count + 1 > ctx->lease_tab_cap / 2) {
    size_t cap = ctx->lease_tab_cap ? ctx->lease_tab_cap * 2 : 64;
    mb__lease **tab = mb__calloc(cap, sizeof(*tab));
    if (tab == NULL)
      return MB_ENOMEM;
    for (size_t i = 0; i < ctx->lease_tab_cap; i++) {
      mb__lease *p = ctx->lease_tab[i];
      while (p) {
        mb__lease *next = p->hnext;
        p->hnext = tab[p->id & (cap - 1)];
        tab[p->id & (cap - 1)] = p;
        p = next;
      }
    }
    mb__free(ctx->lease_tab);
    ctx->lease_tab = tab;
    ctx->lease_tab_cap = cap;
  }
  mb__lease **b = &ctx->lease_tab[l->id & (ctx->lease_tab_cap - 1)];
  l->hnext = *b;
  *b = l;
  ctx->lease_count++;
  return 0;
}

/* The lease with that id in the table, or NULL (post_lock held). */
static mb__lease *lease_find_locked_post(mb_ctx *ctx, uint64_t id) {
  if (ctx->lease_tab_cap == 0)
    return NULL;
  mb__lease *l = ctx->lease_tab[id & (ctx->lease_tab_cap - 1)];
  while (l && l->id != id)
    l = l->hnext;
  return l;
}

mb__lease *mb__lease_take_locked_post(mb_ctx *ctx, uint64_t id) {
  if (ctx->lease_tab_cap == 0 || id == 0)
    return NULL;
  mb__lease **pp = &ctx->lease_tab[id & (ctx->lease_tab_cap - 1)];
  while (*pp && (*pp)->id != id)
    pp = &(*pp)->hnext;
  mb__lease *l = *pp;
  if (l) {
    *pp = l->hnext;
    ctx->lease_count--;
  }
  return l;
}

int mb__leases_lose_locked_post(mb_ctx *ctx, mb__model *m) {
  int n = 0;
  for (size_t i = 0; i < ctx->lease_tab_cap; i++)
    for (mb__lease *l = ctx->lease_tab[i]; l; l = l->hnext)
      if (l->m == m && !l->lost) {
        l->lost = 1;
        n++;
      }
  /* Released but not dropped yet: counted out now, freed when dropped. */
  mb__queue *q;
  mb__queue_foreach(q, &ctx->released) {
    mb__lease *l = mb__queue_data(q, mb__lease, rel_node);
    if (l->m == m && !l->lost) {
      l->lost = 1;
      n++;
    }
  }
  return n;
}

/* ------------------------------------------------------------------------ */
/* Posting and waking                                                        */

static void wake_locked_post(mb_ctx *ctx) {
  ctx->wake = 1;
  pthread_cond_signal(&ctx->post_cond);
}

static void post(mb_ctx *ctx, mb__req *r) {
  pthread_mutex_lock(&ctx->post_lock);
  mb__queue_insert_tail(&ctx->posted, &r->node);
  wake_locked_post(ctx);
  pthread_mutex_unlock(&ctx->post_lock);
}

void mb__post_job_done(mb_ctx *ctx, struct mb_job *job) {
  pthread_mutex_lock(&ctx->post_lock);
  mb__queue_insert_tail(&ctx->done, &job->node);
  wake_locked_post(ctx);
  pthread_mutex_unlock(&ctx->post_lock);
}

/* ------------------------------------------------------------------------ */
/* Jobs                                                                      */

mb_job_kind mb_job_get_kind(const mb_job *job) { return job->kind; }
const char *mb_job_model(const mb_job *job) { return job->m->name; }
int mb_job_device(const mb_job *job) { return job->device; }

void mb_op_progress(mb_op *op, uint64_t done_bytes, uint64_t total_bytes) {
  struct mb_job *j = op->priv;
  if (j == NULL)
    return;
  __atomic_store_n(&j->progress_total, total_bytes, __ATOMIC_RELAXED);
  __atomic_store_n(&j->progress_done, done_bytes, __ATOMIC_RELAXED);
}

void mb__op_note(mb_op *op, const char *note) {
  struct mb_job *j = op->priv;
  if (j != NULL)
    snprintf(j->note, sizeof(j->note), "%s", note);
}

void mb__job_op(const struct mb_job *j, mb_op *op) {
  memset(op, 0, sizeof(*op));
  op->model = j->m->name;
  op->user = j->m->user;
  op->device = j->device;
  op->device_kind = j->device_kind;
  op->device_ordinal = j->device_ordinal;
  op->budget_bytes = j->budget_bytes;
  op->residency = j->residency;
}

/* Runs the backend function of a job; no core lock is held. */
static void run_backend(struct mb_job *j) {
  mb__model *m = j->m;
  mb_op op;
  mb__job_op(j, &op);
  op.err = j->msg;
  op.err_len = sizeof(j->msg);
  op.priv = j;
  j->msg[0] = '\0';
  switch (j->kind) {
  case MB_JOB_LOAD: j->rc = m->be->load(&op); break;
  case MB_JOB_OFFLOAD: j->rc = m->be->offload(&op); break;
  case MB_JOB_RESTORE: j->rc = m->be->restore(&op); break;
  case MB_JOB_UNLOAD: j->rc = m->be->unload(&op); break;
  }
  if (j->rc > 0)
    j->rc = MB_EBACKEND;
  if (j->rc == 0 && j->kind != MB_JOB_UNLOAD && m->be->usage != NULL) {
    mb_usage u = {0, 0};
    if (m->be->usage(&op, &u) == 0) {
      j->usage = u;
      j->have_usage = 1;
    }
  }
}

void mb_job_run(mb_job *job) {
  run_backend(job);
  mb__post_job_done(job->ctx, job);
}

void mb_job_complete(mb_job *job, int rc, const char *msg, const mb_usage *usage) {
  job->rc = rc > 0 ? MB_EBACKEND : rc;
  snprintf(job->msg, sizeof(job->msg), "%s", msg ? msg : "");
  if (usage) {
    job->usage = *usage;
    job->have_usage = 1;
  }
  mb__post_job_done(job->ctx, job);
}

/* Called by a step (jobs.c) with core_lock held. */
void mb__submit_job_locked_core(mb_ctx *ctx, struct mb_job *job) {
  if (ctx->opts.manual) {
    /* Handed to the executor after the step, outside core_lock. */
    mb__queue_insert_tail(&ctx->manual_jobs, &job->node);
    return;
  }
  pthread_mutex_lock(&ctx->pool_lock);
  mb__queue_insert_tail(&ctx->pool, &job->node);
  pthread_cond_signal(&ctx->pool_cond);
  pthread_mutex_unlock(&ctx->pool_lock);
}

static void *loader_main(void *arg) {
  mb_ctx *ctx = arg;
  pthread_mutex_lock(&ctx->pool_lock);
  for (;;) {
    while (mb__queue_empty(&ctx->pool) && !ctx->pool_stop)
      pthread_cond_wait(&ctx->pool_cond, &ctx->pool_lock);
    mb__queue *q = mb__queue_first(&ctx->pool);
    if (q == NULL)
      break;
    mb__queue_remove(q);
    struct mb_job *j = mb__queue_data(q, struct mb_job, node);
    pthread_mutex_unlock(&ctx->pool_lock);
    mb_job_run(j);
    pthread_mutex_lock(&ctx->pool_lock);
  }
  pthread_mutex_unlock(&ctx->pool_lock);
  return NULL;
}

/* ------------------------------------------------------------------------ */
/* Stepping                                                                  */

/* Everything a step left for after core_lock, in this order; each list is
 * emptied (the models in graveyard freed). */
static void deliver(mb_ctx *ctx, mb__event_buf *ev, mb__queue *answered, mb__queue *jobs,
                    mb__queue *cancels, mb__queue *graveyard) {
  mb__queue *q;
  /* Loads to cancel first: the sooner a backend hears, the sooner it stops. */
  while ((q = mb__queue_first(cancels)) != NULL) {
    mb__queue_remove(q);
    mb__model *m = mb__queue_data(q, mb__model, cancel_node);
    m->cancel_queued = 0;
    mb_op op = m->cancel_op;
    m->be->cancel(&op);
  }
  for (size_t i = 0; i < ev->len; i++) {
    ev->items[i].reason = ev->reasons[i];
    ev->items[i].model = ev->models[i];
    ctx->opts.on_event(&ev->items[i], ctx->opts.event_arg);
    mb__free(ev->reasons[i]);
    mb__free(ev->models[i]);
  }
  mb__free(ev->items);
  mb__free(ev->reasons);
  mb__free(ev->models);
  while ((q = mb__queue_first(answered)) != NULL) {
    mb__queue_remove(q);
    mb__req *r = mb__queue_data(q, mb__req, node);
    mb_result res;
    memset(&res, 0, sizeof(res));
    res.rc = r->rc;
    res.lease = r->lease;
    res.queue_ns = r->queue_ns;
    res.load_ns = r->load_ns;
    res.message = r->msg;
    if (r->done)
      r->done(&res, r->arg);
    mb__free(r->name);
    mb__free(r);
  }
  /* Manual executor: jobs in the order the core started them. */
  while ((q = mb__queue_first(jobs)) != NULL) {
    mb__queue_remove(q);
    ctx->opts.executor.submit(ctx->opts.executor.arg, mb__queue_data(q, struct mb_job, node));
  }
  while ((q = mb__queue_first(graveyard)) != NULL) {
    mb__queue_remove(q);
    mb__model_destroy(mb__queue_data(q, mb__model, grave_node));
  }
}

/* One round: take what was posted, step, then deliver outside the lock. */
static int step(mb_ctx *ctx) {
  pthread_mutex_lock(&ctx->core_lock);
  ctx->now = ctx->opts.clock(ctx->opts.clock_arg);
  pthread_mutex_lock(&ctx->post_lock);
  mb__queue reqs, rels, done;
  mb__queue_move(&ctx->posted, &reqs);
  mb__queue_move(&ctx->released, &rels);
  mb__queue_move(&ctx->done, &done);
  /* Leases renewed to an earlier deadline: their timers move now (a lease
   * is freed only by this thread, after this, so each is still here). */
  mb__queue *rq;
  while ((rq = mb__queue_first(&ctx->renewed)) != NULL) {
    mb__queue_remove(rq);
    mb__lease *l = mb__queue_data(rq, mb__lease, renew_node);
    l->renewed = 0;
    if (!l->released)
      mb__heap_arm(&ctx->heap, &l->timer, l->ttl_deadline);
  }
  ctx->wake = 0;
  pthread_mutex_unlock(&ctx->post_lock);
  int n = mb__step_locked_core(ctx, &reqs, &rels, &done);
  mb__event_buf ev = ctx->events;
  memset(&ctx->events, 0, sizeof(ctx->events));
  mb__queue answered, jobs, graveyard, cancels;
  mb__queue_move(&ctx->answered, &answered);
  mb__queue_move(&ctx->manual_jobs, &jobs);
  mb__queue_move(&ctx->graveyard, &graveyard);
  mb__queue_move(&ctx->cancels, &cancels);
  pthread_mutex_unlock(&ctx->core_lock);
  deliver(ctx, &ev, &answered, &jobs, &cancels, &graveyard);
  return n;
}

void mb__admission_check(mb_ctx *ctx, int on) {
  pthread_mutex_lock(&ctx->core_lock);
  if (!on)
    ctx->admit_check = 0;
  else if (ctx->admit_check == 0)
    ctx->admit_check = 1;
  pthread_mutex_unlock(&ctx->core_lock);
}

void mb__cost_rate_oracle(mb_ctx *ctx, double (*rate)(void *arg, void *user), void *arg) {
  pthread_mutex_lock(&ctx->core_lock);
  ctx->rate_oracle = rate;
  ctx->rate_oracle_arg = arg;
  pthread_mutex_unlock(&ctx->core_lock);
}

void mb__admission_check_result(mb_ctx *ctx, mb__admit_stats *out) {
  pthread_mutex_lock(&ctx->core_lock);
  out->auto_blocked = ctx->admit_checked[0];
  out->any_blocked = ctx->admit_checked[1];
  out->planned = ctx->admit_checked[2];
  out->bound_wait = ctx->admit_checked[3];
  out->differ = ctx->admit_differ;
  snprintf(out->first, sizeof(out->first), "%s", ctx->admit_first);
  pthread_mutex_unlock(&ctx->core_lock);
}

int mb_ctx_step(mb_ctx *ctx) {
  if (ctx == NULL || !ctx->opts.manual)
    return MB_EINVAL;
  return step(ctx);
}

uint64_t mb_ctx_next_deadline(mb_ctx *ctx) {
  pthread_mutex_lock(&ctx->core_lock);
  mb__timer *t = mb__heap_top(&ctx->heap);
  uint64_t d = t ? t->deadline : UINT64_MAX;
  pthread_mutex_unlock(&ctx->core_lock);
  return d;
}

uint64_t mb_ctx_now(mb_ctx *ctx) { return ctx->opts.clock(ctx->opts.clock_arg); }

int64_t mb_ctx_wall_ms(mb_ctx *ctx, uint64_t clock_ns) {
  return (int64_t)(clock_ns / 1000000) + ctx->wall_offset_ms;
}

static void *core_main(void *arg) {
  mb_ctx *ctx = arg;
  for (;;) {
    step(ctx);
    uint64_t moved = __atomic_load_n(&ctx->timers_moved, __ATOMIC_ACQUIRE);
    uint64_t deadline = mb_ctx_next_deadline(ctx);
    pthread_mutex_lock(&ctx->post_lock);
    if (ctx->stop) {
      pthread_mutex_unlock(&ctx->post_lock);
      break;
    }
    /* A fast path that armed a timer since the deadline was read: read it
     * again rather than sleep past it. */
    if (!ctx->wake && __atomic_load_n(&ctx->timers_moved, __ATOMIC_ACQUIRE) == moved) {
      ctx->sleeping = 1;
      ctx->sleep_until = deadline;
      if (deadline == UINT64_MAX) {
        pthread_cond_wait(&ctx->post_cond, &ctx->post_lock);
      } else {
        uint64_t now = ctx->opts.clock(ctx->opts.clock_arg);
        if (deadline > now) {
          uint64_t wait_ns = deadline - now;
          struct timespec ts;
          clock_gettime(CLOCK_MONOTONIC, &ts);
          uint64_t abs_ns = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec + wait_ns;
          ts.tv_sec = (time_t)(abs_ns / 1000000000ull);
          ts.tv_nsec = (long)(abs_ns % 1000000000ull);
          pthread_cond_timedwait(&ctx->post_cond, &ctx->post_lock, &ts);
        }
      }
      ctx->sleeping = 0;
    }
    pthread_mutex_unlock(&ctx->post_lock);
  }
  return NULL;
}

/* ------------------------------------------------------------------------ */
/* Context                                                                   */

int mb_ctx_new(const mb_ctx_opts *opts, mb_ctx **out, char *err, size_t err_len) {
  mb_ctx_opts o;
  pthread_condattr_t ca;
  int rc = MB_ENOMEM;
  if (out == NULL)
    return MB_EINVAL;
  *out = NULL;
  mb_ctx_opts_init(&o);
  if (opts != NULL && MB__OPTS_TAKE(&o, opts, mb_ctx_opts, evict_arg, err, err_len) != 0)
    return MB_EINVAL;
  if (o.clock == NULL)
    o.clock = mb_clock_monotonic;
  if (o.manual && o.executor.submit == NULL) {
    mb__set_err(err, err_len, "manual mode needs an executor (opts.executor.submit)");
    return MB_EINVAL;
  }
  if (o.loader_threads < 0 || o.loader_threads > 256) {
    mb__set_err(err, err_len, "loader_threads must be between 0 and 256");
    return MB_EINVAL;
  }
  if (o.eviction != MB_EVICT_LRU && o.eviction != MB_EVICT_COST &&
      o.eviction != MB_EVICT_CUSTOM) {
    mb__set_err(err, err_len, "unknown eviction policy %d", (int)o.eviction);
    return MB_EINVAL;
  }
  if (o.eviction == MB_EVICT_CUSTOM && o.evict_rank == NULL) {
    mb__set_err(err, err_len, "eviction MB_EVICT_CUSTOM needs opts.evict_rank");
    return MB_EINVAL;
  }
  if (o.keep_alive_ms < MB_DEFAULT) {
    mb__set_err(err, err_len, "keep_alive_ms must be >= 0, MB_FOREVER or MB_DEFAULT");
    return MB_EINVAL;
  }
  if (o.keep_alive_ms == MB_DEFAULT)
    o.keep_alive_ms = MB_DEFAULT_KEEP_ALIVE_MS;
  if (o.loader_threads == 0)
    o.loader_threads = MB_DEFAULT_LOADER_THREADS;

  mb_ctx *ctx = mb__calloc(1, sizeof(*ctx));
  if (ctx == NULL)
    goto fail_alloc;
  ctx->opts = o;
  mb__queue *const lists[] = {&ctx->posted,   &ctx->released, &ctx->renewed,     &ctx->done,
                              &ctx->pool,     &ctx->adm,      &ctx->adm_loose,   &ctx->dirty,
                              &ctx->answered, &ctx->graveyard, &ctx->manual_jobs, &ctx->cancels};
  for (size_t i = 0; i < sizeof(lists) / sizeof(lists[0]); i++)
    mb__queue_init(lists[i]);
#ifdef MB_ADMISSION_CHECK
  ctx->admit_check = 2; /* the build option: every context checks (admit.c) */
#endif
  if (o.host_budget_bytes == 0) {
    struct sysinfo si;
    uint64_t total = 0;
    if (sysinfo(&si) == 0)
      total = (uint64_t)si.totalram * si.mem_unit;
    ctx->host_budget = total / 2;
  } else {
    ctx->host_budget = o.host_budget_bytes;
  }
  {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t wall_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    ctx->wall_offset_ms = wall_ms - (int64_t)(o.clock(o.clock_arg) / 1000000);
  }
  if (pthread_mutex_init(&ctx->core_lock, NULL) != 0)
    goto fail_core_lock;
  if (pthread_mutex_init(&ctx->post_lock, NULL) != 0)
    goto fail_post_lock;
  if (pthread_mutex_init(&ctx->pool_lock, NULL) != 0)
    goto fail_pool_lock;
  if (pthread_condattr_init(&ca) != 0)
    goto fail_condattr;
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  if (pthread_cond_init(&ctx->post_cond, &ca) != 0)
    goto fail_post_cond;
  if (pthread_cond_init(&ctx->pool_cond, NULL) != 0)
    goto fail_pool_cond;
  pthread_condattr_destroy(&ca);

  if (!o.manual) {
    ctx->loaders = mb__calloc((size_t)o.loader_threads, sizeof(pthread_t));
    if (ctx->loaders == NULL)
      goto fail_loaders;
    for (int i = 0; i < o.loader_threads; i++) {
      if (pthread_create(&ctx->loaders[i], NULL, loader_main, ctx) != 0) {
        rc = MB_ENOMEM;
        goto fail_threads;
      }
      ctx->nloaders++;
    }
    if (pthread_create(&ctx->core_thread, NULL, core_main, ctx) != 0)
      goto fail_threads;
    ctx->core_started = 1;
  }
  *out = ctx;
  return 0;

fail_threads:
  pthread_mutex_lock(&ctx->pool_lock);
  ctx->pool_stop = 1;
  pthread_cond_broadcast(&ctx->pool_cond);
  pthread_mutex_unlock(&ctx->pool_lock);
  for (int i = 0; i < ctx->nloaders; i++)
    pthread_join(ctx->loaders[i], NULL);
  mb__free(ctx->loaders);
fail_loaders:
  pthread_cond_destroy(&ctx->pool_cond);
  goto fail_pool_cond_done;
fail_pool_cond:
  pthread_condattr_destroy(&ca);
fail_pool_cond_done:
  pthread_cond_destroy(&ctx->post_cond);
  goto fail_condattr;
fail_post_cond:
  pthread_condattr_destroy(&ca);
fail_condattr:
  pthread_mutex_destroy(&ctx->pool_lock);
fail_pool_lock:
  pthread_mutex_destroy(&ctx->post_lock);
fail_post_lock:
  pthread_mutex_destroy(&ctx->core_lock);
fail_core_lock:
  mb__free(ctx);
fail_alloc:
  mb__set_err(err, err_len, "%s", mb_strerror(rc));
  return rc;
}

void mb__model_destroy(mb__model *m) {
  if (m->be && m->be->destroy)
    m->be->destroy(m->user);
  mb__free(m->name);
  mb__free(m);
}

/* Unloads what is still loaded, directly through the backends (the core is
 * stopped and no job is in flight). */
static void unload_all_direct(mb_ctx *ctx) {
  for (int i = 0; i < ctx->nmodels; i++) {
    mb__model *m = ctx->models[i];
    if (m->state == MB_STATE_UNLOADED || m->state == MB_STATE_FAILED)
      continue;
    m->job.kind = MB_JOB_UNLOAD;
    m->job.m = m;
    m->job.ctx = ctx;
    m->job.device = m->device;
    if (m->device >= 0) {
      m->job.device_kind = ctx->devs[m->device].opts.kind;
      m->job.device_ordinal = ctx->devs[m->device].opts.ordinal;
    }
    run_backend(&m->job);
    m->state = MB_STATE_UNLOADED;
  }
}

int mb_ctx_free(mb_ctx *ctx) {
  if (ctx == NULL)
    return 0;
  pthread_mutex_lock(&ctx->core_lock);
  pthread_mutex_lock(&ctx->post_lock);
  int busy = ctx->lease_count > 0 || (ctx->opts.manual && ctx->jobs_busy > 0);
  pthread_mutex_unlock(&ctx->post_lock);
  if (busy) {
    pthread_mutex_unlock(&ctx->core_lock);
    return MB_EBUSY;
  }
  /* From here on the core grants nothing and answers new requests with
   * MB_ESHUTDOWN; waiters are failed and resident models unloaded. */
  mb__shutdown_locked_core(ctx);
  if (!ctx->opts.manual) {
    pthread_mutex_unlock(&ctx->core_lock);
    for (;;) {
      pthread_mutex_lock(&ctx->post_lock);
      wake_locked_post(ctx);
      pthread_mutex_unlock(&ctx->post_lock);
      pthread_mutex_lock(&ctx->core_lock);
      int pending = ctx->jobs_busy;
      for (int i = 0; i < ctx->nmodels && !pending; i++) {
        mb_state st = ctx->models[i]->state;
        pending = st != MB_STATE_UNLOADED && st != MB_STATE_FAILED;
      }
      pthread_mutex_unlock(&ctx->core_lock);
      if (!pending)
        break;
      /* Unloads run on loader threads; look again shortly. */
      struct timespec ts = {0, 1000000};
      nanosleep(&ts, NULL);
    }
    pthread_mutex_lock(&ctx->post_lock);
    ctx->stop = 1;
    wake_locked_post(ctx);
    pthread_mutex_unlock(&ctx->post_lock);
    pthread_join(ctx->core_thread, NULL);
    pthread_mutex_lock(&ctx->pool_lock);
    ctx->pool_stop = 1;
    pthread_cond_broadcast(&ctx->pool_cond);
    pthread_mutex_unlock(&ctx->pool_lock);
    for (int i = 0; i < ctx->nloaders; i++)
      pthread_join(ctx->loaders[i], NULL);
    mb__free(ctx->loaders);
    /* Anything the last step left undelivered. */
    step(ctx);
  } else {
    /* Manual: deliver the failed waiters' answers, then unload directly on
     * this thread (no job is out: checked above). */
    mb__event_buf ev = ctx->events;
    memset(&ctx->events, 0, sizeof(ctx->events));
    mb__queue answered, none;
    mb__queue_move(&ctx->answered, &answered);
    mb__queue_init(&none);
    pthread_mutex_unlock(&ctx->core_lock);
    deliver(ctx, &ev, &answered, &none, &none, &none);
    unload_all_direct(ctx);
  }
  /* Whatever may still be posted gets answered and freed; leases released
   * after the last step (manual mode) are freed. */
  pthread_mutex_lock(&ctx->post_lock);
  mb__queue reqs, rels, *q;
  mb__queue_move(&ctx->posted, &reqs);
  mb__queue_move(&ctx->released, &rels);
  mb__queue_init(&ctx->renewed);
  pthread_mutex_unlock(&ctx->post_lock);
  while ((q = mb__queue_first(&rels)) != NULL) {
    mb__queue_remove(q);
    mb__free(mb__queue_data(q, mb__lease, rel_node));
  }
  while ((q = mb__queue_first(&reqs)) != NULL) {
    mb__queue_remove(q);
    mb__req *r = mb__queue_data(q, mb__req, node);
    if (r->done) {
      mb_result res = {MB_ESHUTDOWN, {0, 0}, 0, 0, "context is shutting down"};
      r->done(&res, r->arg);
    }
    mb__free(r->name);
    mb__free(r);
  }
  for (int i = 0; i < ctx->nmodels; i++)
    mb__model_destroy(ctx->models[i]);
  mb__free(ctx->models);
  mb__free(ctx->cand_dev);
  mb__free(ctx->cand_host);
  mb__free(ctx->plan);
  mb__free(ctx->name_tab);
  mb__free(ctx->lease_tab);
  mb__free(ctx->devs);
  mb__heap_free(&ctx->heap);
  pthread_cond_destroy(&ctx->post_cond);
  pthread_cond_destroy(&ctx->pool_cond);
  pthread_mutex_destroy(&ctx->pool_lock);
  pthread_mutex_destroy(&ctx->post_lock);
  pthread_mutex_destroy(&ctx->core_lock);
  while ((q = mb__queue_first(&ctx->graveyard)) != NULL) {
    mb__queue_remove(q);
    mb__model_destroy(mb__queue_data(q, mb__model, grave_node));
  }
  mb__free(ctx);
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Devices and models                                                        */

int mb_device_add(mb_ctx *ctx, const mb_device_opts *opts, int *index, char *err,
                  size_t err_len) {
  mb_device_opts o;
  if (ctx == NULL)
    return MB_EINVAL;
  mb_device_opts_init(&o);
  if (opts != NULL && MB__OPTS_TAKE(&o, opts, mb_device_opts, concurrency, err, err_len) != 0)
    return MB_EINVAL;
  if (o.kind != MB_DEVICE_HOST && o.kind != MB_DEVICE_CUDA) {
    mb__set_err(err, err_len, "unknown device kind %d", (int)o.kind);
    return MB_EINVAL;
  }
  if (o.max_loaded < 0 || o.max_parallel_loads < 0 || o.concurrency < 0) {
    mb__set_err(err, err_len, "max_loaded, max_parallel_loads and concurrency must be >= 0");
    return MB_EINVAL;
  }
  uint64_t capacity = o.capacity_bytes;
  if (capacity == 0) {
    int rc = mb_device_mem_info(o.kind, o.ordinal, &capacity, NULL, err, err_len);
    if (rc != 0)
      return rc;
  }
  if (o.reserve_bytes >= capacity) {
    mb__set_err(err, err_len, "reserve (%llu bytes) must be below the capacity (%llu bytes)",
                (unsigned long long)o.reserve_bytes, (unsigned long long)capacity);
    return MB_EINVAL;
  }
  pthread_mutex_lock(&ctx->core_lock);
  /* A new array, not realloc: each device's list of resident models is
   * moved to its new head (a list's head may not move under it). */
  mb__device *devs = mb__calloc((size_t)ctx->ndev + 1, sizeof(*devs));
  if (devs == NULL) {
    pthread_mutex_unlock(&ctx->core_lock);
    mb__set_err(err, err_len, "out of memory");
    return MB_ENOMEM;
  }
  for (int i = 0; i < ctx->ndev; i++) {
    devs[i] = ctx->devs[i];
    mb__queue_move(&ctx->devs[i].res_list, &devs[i].res_list);
    mb__queue_move(&ctx->devs[i].adm1, &devs[i].adm1);
  }
  mb__free(ctx->devs);
  ctx->devs = devs;
  mb__device *d = &devs[ctx->ndev];
  mb__queue_init(&d->res_list);
  mb__queue_init(&d->adm1);
  d->opts = o;
  d->index = ctx->ndev;
  if (ctx->ndev > 0 && o.kind != devs[0].opts.kind)
    ctx->mixed_kinds = 1;
  d->capacity = capacity;
  d->usable = capacity - o.reserve_bytes;
  if (o.budget_bytes && o.budget_bytes < d->usable)
    d->usable = o.budget_bytes;
  if (o.kind == MB_DEVICE_HOST)
    snprintf(d->name, sizeof(d->name), "host");
  else
    snprintf(d->name, sizeof(d->name), "cuda:%d", o.ordinal);
  if (index)
    *index = ctx->ndev;
  ctx->ndev++;
  pthread_mutex_unlock(&ctx->core_lock);
  return 0;
}

int mb_device_count(mb_ctx *ctx) {
  pthread_mutex_lock(&ctx->core_lock);
  int n = ctx->ndev;
  pthread_mutex_unlock(&ctx->core_lock);
  return n;
}

static int valid_name(const char *name) {
  size_t n = 0;
  if (name == NULL || *name == '\0')
    return 0;
  for (const char *p = name; *p; p++, n++) {
    unsigned char c = (unsigned char)*p;
    if (c <= ' ' || c == 0x7f) /* '/' is allowed: "Qwen/Qwen2.5-7B-Instruct" */
      return 0;
  }
  return n < 128;
}

int mb_model_add(mb_ctx *ctx, const char *name, const mb_backend *be, void *user,
                 const mb_model_opts *opts, char *err, size_t err_len) {
  mb_model_opts o;
  int rc = MB_EINVAL;
  mb_model_opts_init(&o);
  if (opts != NULL &&
      MB__OPTS_TAKE(&o, opts, mb_model_opts, queue_timeout_excludes_load, err, err_len) != 0)
    goto fail_args;
  if (ctx == NULL) {
    mb__set_err(err, err_len, "no context");
    goto fail_args;
  }
  if (!valid_name(name)) {
    mb__set_err(err, err_len, "invalid model name (1-127 bytes, no spaces or control bytes)");
    goto fail_args;
  }
  if (be == NULL || be->load == NULL || be->unload == NULL ||
      (be->offload == NULL) != (be->restore == NULL)) {
    mb__set_err(err, err_len,
                "backend of '%s' needs load and unload, and offload with restore or neither",
                name);
    goto fail_args;
  }
  if (o.keep_alive_ms < MB_DEFAULT || o.host_keep_alive_ms < MB_DEFAULT ||
      o.queue_timeout_ms < MB_FOREVER || o.queue_timeout_ms == MB_DEFAULT) {
    mb__set_err(err, err_len, "model '%s': durations must be >= 0 or MB_FOREVER", name);
    goto fail_args;
  }
  if (o.max_concurrency < 1) {
    mb__set_err(err, err_len, "model '%s': max_concurrency must be >= 1", name);
    goto fail_args;
  }
  if (o.max_queue < 0) {
    mb__set_err(err, err_len, "model '%s': max_queue must be >= 0", name);
    goto fail_args;
  }
  if (o.crash_limit < 0 || o.crash_limit > MB_CRASH_LIMIT_MAX ||
      (o.crash_window_ms < 0 && o.crash_window_ms != MB_FOREVER)) {
    mb__set_err(err, err_len,
                "model '%s': crash_limit must be 0..%d and crash_window_ms >= 0 or MB_FOREVER",
                name, MB_CRASH_LIMIT_MAX);
    goto fail_args;
  }
  if (o.device < MB_DEVICE_AUTO) {
    mb__set_err(err, err_len, "model '%s': device must be an index or MB_DEVICE_AUTO", name);
    goto fail_args;
  }
  if (o.keep_alive_ms == MB_DEFAULT)
    o.keep_alive_ms = ctx->opts.keep_alive_ms;
  if (o.host_keep_alive_ms == MB_DEFAULT)
    o.host_keep_alive_ms = MB_DEFAULT_HOST_KEEP_ALIVE_MS;
  o.offload = o.offload ? 1 : 0;
  o.queue_timeout_excludes_load = o.queue_timeout_excludes_load ? 1 : 0;

  mb__model *m = mb__calloc(1, sizeof(*m));
  if (m == NULL)
    goto fail_nomem;
  m->name = mb__strdup(name);
  if (m->name == NULL) {
    rc = MB_ENOMEM;
    goto fail_name;
  }
  m->be = be;
  m->user = user;
  m->opts = o;
  m->state = MB_STATE_UNLOADED;
  m->device = -1;
  m->ka_current = o.keep_alive_ms;
  mb__timer_init(&m->timer, MB__T_MODEL);
  mb__queue *const lists[] = {&m->wq,        &m->lw,        &m->ow,          &m->adm_node,
                              &m->adm1_node, &m->dirty_node, &m->dev_node,   &m->cancel_node,
                              &m->grave_node, &m->job.node};
  for (size_t i = 0; i < sizeof(lists) / sizeof(lists[0]); i++)
    mb__queue_init(lists[i]);

  pthread_mutex_lock(&ctx->core_lock);
  if (ctx->shutting_down) {
    rc = MB_ESHUTDOWN;
    mb__set_err(err, err_len, "context is shutting down");
    goto fail_locked;
  }
  if (o.device >= ctx->ndev) {
    rc = MB_ENODEV;
    mb__set_err(err, err_len, "model '%s': device %d does not exist (%d devices)", name, o.device,
                ctx->ndev);
    goto fail_locked;
  }
  if (mb__model_find_locked_core(ctx, name) != NULL) {
    rc = MB_EEXIST;
    mb__set_err(err, err_len, "model '%s' already exists", name);
    goto fail_locked;
  }
  rc = MB_ENOMEM;
  if (name_tab_grow_locked_core(ctx) != 0)
    goto fail_locked_nomem;
  if (ctx->nmodels == ctx->models_cap) {
    int cap = ctx->models_cap ? ctx->models_cap * 2 : 16;
    mb__model **models = mb__realloc(ctx->models, (size_t)cap * sizeof(*models));
    if (models == NULL)
      goto fail_locked_nomem;
    ctx->models = models;
    /* Eviction candidates: room for every model, so a step never allocates
     * and never truncates a candidate list. */
    mb__cand *cd = mb__realloc(ctx->cand_dev, (size_t)cap * sizeof(*cd));
    if (cd == NULL)
      goto fail_locked_nomem;
    ctx->cand_dev = cd;
    mb__cand *ch = mb__realloc(ctx->cand_host, (size_t)cap * sizeof(*ch));
    if (ch == NULL)
      goto fail_locked_nomem;
    ctx->cand_host = ch;
    mb__plan_ent *pl = mb__realloc(ctx->plan, 2 * (size_t)cap * sizeof(*pl));
    if (pl == NULL)
      goto fail_locked_nomem;
    ctx->plan = pl;
    ctx->models_cap = cap;
  }
  if (mb__heap_reserve(&ctx->heap) != 0)
    goto fail_locked_nomem;
  m->index = ctx->nmodels;
  ctx->models[ctx->nmodels++] = m;
  size_t b = hash_name(name) & (ctx->name_tab_cap - 1);
  m->hnext = ctx->name_tab[b];
  ctx->name_tab[b] = m;
  pthread_mutex_unlock(&ctx->core_lock);
  return 0;

fail_locked_nomem:
  mb__set_err(err, err_len, "out of memory");
fail_locked:
  pthread_mutex_unlock(&ctx->core_lock);
  mb__free(m->name);
fail_name:
  mb__free(m);
  if (rc == MB_ENOMEM)
    mb__set_err(err, err_len, "out of memory");
  goto fail_destroy;
fail_nomem:
  rc = MB_ENOMEM;
  mb__set_err(err, err_len, "out of memory");
  goto fail_destroy;
fail_args:
fail_destroy:
  /* The backend argument is ours from the call on: free it on failure. */
  if (be && be->destroy && user)
    be->destroy(user);
  return rc;
}

/* ------------------------------------------------------------------------ */
/* Requests                                                                  */

static mb__req *req_new(mb_ctx *ctx, mb__req_type type, const char *name, mb_done_fn done,
                        void *arg) {
  mb__req *r = mb__calloc(1, sizeof(*r));
  if (r == NULL)
    return NULL;
  if (name != NULL) {
    r->name = mb__strdup(name);
    if (r->name == NULL) {
      mb__free(r);
      return NULL;
    }
  }
  r->type = type;
  r->done = done;
  r->arg = arg;
  r->priority = MB_PRIORITY_DEFAULT;
  r->timeout_ms = MB_DEFAULT;
  r->keep_alive_ms = MB_DEFAULT;
  mb__timer_init(&r->timer, MB__T_WAIT);
  mb__queue_init(&r->node);
  mb__queue_init(&r->wnode);
  pthread_mutex_lock(&ctx->post_lock);
  r->id = ++ctx->next_req_id;
  pthread_mutex_unlock(&ctx->post_lock);
  return r;
}

static int check_ka(int64_t ka) {
  return ka >= 0 || ka == MB_FOREVER || ka == MB_DEFAULT;
}

/* The caller's acquire options (NULL: the defaults) into *o, checked:
 * MB_EINVAL for a bad size or a bad duration. */
static int acquire_opts_take(mb_acquire_opts *o, const mb_acquire_opts *opts) {
  mb_acquire_opts_init(o);
  if (opts != NULL && MB__OPTS_TAKE(o, opts, mb_acquire_opts, ttl_ms, NULL, 0) != 0)
    return MB_EINVAL;
  if (!check_ka(o->keep_alive_ms) || !check_ka(o->timeout_ms) || o->ttl_ms < MB_DEFAULT)
    return MB_EINVAL;
  return 0;
}

int mb_acquire_async(mb_ctx *ctx, const char *name, const mb_acquire_opts *opts, mb_done_fn done,
                     void *arg, uint64_t *req_id) {
  mb_acquire_opts o;
  if (ctx == NULL || name == NULL || done == NULL || acquire_opts_take(&o, opts) != 0)
    return MB_EINVAL;
  mb__req *r = req_new(ctx, MB__R_ACQUIRE, name, done, arg);
  if (r == NULL)
    return MB_ENOMEM;
  r->priority = o.priority;
  r->timeout_ms = o.timeout_ms;
  r->keep_alive_ms = o.keep_alive_ms;
  r->ttl_ms = o.ttl_ms > 0 ? o.ttl_ms : 0;
  if (req_id)
    *req_id = r->id;
  post(ctx, r);
  return 0;
}

/* Wakes a sleeping core thread whose sleep ends after deadline (a fast
 * path armed a timer outside a step). core_lock held. */
static void timer_armed_locked_core(mb_ctx *ctx, uint64_t deadline) {
  __atomic_add_fetch(&ctx->timers_moved, 1, __ATOMIC_RELEASE);
  pthread_mutex_lock(&ctx->post_lock);
  if (ctx->sleeping && deadline < ctx->sleep_until)
    wake_locked_post(ctx);
  pthread_mutex_unlock(&ctx->post_lock);
}

/* Whether anything is posted to the core: then a fast path would overtake
 * it, and must not. post_lock held. */
static int posted_locked_post(const mb_ctx *ctx) {
  return !mb__queue_empty(&ctx->posted) || !mb__queue_empty(&ctx->released) ||
         !mb__queue_empty(&ctx->done) || !mb__queue_empty(&ctx->renewed);
}

/* The same, taking post_lock (core_lock held). */
static int posted(mb_ctx *ctx) {
  pthread_mutex_lock(&ctx->post_lock);
  int any = posted_locked_post(ctx);
  pthread_mutex_unlock(&ctx->post_lock);
  return any;
}

int mb_acquire_try(mb_ctx *ctx, const char *name, const mb_acquire_opts *opts, mb_result *out) {
  mb_acquire_opts o;
  if (ctx == NULL || name == NULL || out == NULL || acquire_opts_take(&o, opts) != 0)
    return MB_EINVAL;
  if (ctx->opts.manual || pthread_mutex_trylock(&ctx->core_lock) != 0)
    return 0; /* a step runs now (or manual mode): the async way */
  int rc = 0;
  if (!posted(ctx)) {
    ctx->now = ctx->opts.clock(ctx->opts.clock_arg);
    rc = mb__try_grant_locked_core(ctx, name, &o, out);
  }
  pthread_mutex_unlock(&ctx->core_lock);
  return rc;
}

int mb_model_lost(mb_ctx *ctx, const char *name, uint64_t residency, int flags,
                  const char *reason) {
  if (ctx == NULL || name == NULL || reason == NULL)
    return MB_EINVAL;
  mb__req *r = req_new(ctx, MB__R_LOST, name, NULL, NULL);
  if (r == NULL)
    return MB_ENOMEM;
  r->residency = residency;
  r->flags = flags;
  snprintf(r->reason, sizeof(r->reason), "%s", reason);
  post(ctx, r);
  return 0;
}

int mb_cancel(mb_ctx *ctx, uint64_t req_id) {
  if (ctx == NULL)
    return MB_EINVAL;
  mb__req *r = req_new(ctx, MB__R_CANCEL, NULL, NULL, NULL);
  if (r == NULL)
    return MB_ENOMEM;
  r->cancel_id = req_id;
  post(ctx, r);
  return 0;
}

/* A release settled on the caller's thread when nothing else needs the
 * core (mb__try_release_locked_core): no wake-up of the core thread. 1 when
 * done (*rc its result), 0 when the core must do it. */
static int release_fast(mb_ctx *ctx, mb_lease lease, int *rc) {
  if (ctx->opts.manual || pthread_mutex_trylock(&ctx->core_lock) != 0)
    return 0;
  int done = 0;
  uint64_t armed = 0;
  pthread_mutex_lock(&ctx->post_lock);
  mb__lease *l = NULL;
  if (!posted_locked_post(ctx)) {
    l = lease_find_locked_post(ctx, lease.id);
    if (l && (l->released || l->lost || l->ttl_deadline != 0))
      l = NULL;
  }
  pthread_mutex_unlock(&ctx->post_lock);
  if (l != NULL) {
    ctx->now = ctx->opts.clock(ctx->opts.clock_arg);
    pthread_mutex_lock(&ctx->post_lock);
    /* Out of the table first: from here it is this thread's alone. */
    mb__lease *taken = mb__lease_take_locked_post(ctx, lease.id);
    pthread_mutex_unlock(&ctx->post_lock);
    if (taken == l && mb__try_release_locked_core(ctx, l, &armed)) {
      done = 1;
      *rc = 0;
    } else if (taken != NULL) {
      /* Not settled here after all: the core's way, as mb_release does. */
      pthread_mutex_lock(&ctx->post_lock);
      taken->released = 1;
      mb__queue_insert_tail(&ctx->released, &taken->rel_node);
      wake_locked_post(ctx);
      pthread_mutex_unlock(&ctx->post_lock);
      done = 1;
      *rc = 0;
    }
  }
  if (armed)
    timer_armed_locked_core(ctx, armed);
  pthread_mutex_unlock(&ctx->core_lock);
  return done;
}

int mb_release(mb_ctx *ctx, mb_lease lease) {
  if (ctx == NULL)
    return MB_EINVAL;
  int frc;
  if (release_fast(ctx, lease, &frc))
    return frc;
  pthread_mutex_lock(&ctx->post_lock);
  mb__lease *l = mb__lease_take_locked_post(ctx, lease.id);
  if (l == NULL) {
    pthread_mutex_unlock(&ctx->post_lock);
    return MB_EINVAL;
  }
  int rc = l->lost ? MB_ELOST : 0;
  l->released = 1;
  mb__queue_insert_tail(&ctx->released, &l->rel_node);
  wake_locked_post(ctx);
  pthread_mutex_unlock(&ctx->post_lock);
  return rc;
}

int mb_lease_renew(mb_ctx *ctx, mb_lease lease, int64_t ttl_ms) {
  if (ctx == NULL || ttl_ms <= 0 || lease.id == 0)
    return MB_EINVAL;
  int rc = MB_EINVAL;
  uint64_t now = ctx->opts.clock(ctx->opts.clock_arg);
  pthread_mutex_lock(&ctx->post_lock);
  mb__lease *l = lease_find_locked_post(ctx, lease.id);
  if (l && !l->released && l->lost) {
    rc = MB_ELOST;
  } else if (l && !l->released) {
    if (l->ttl_deadline == 0) {
      rc = MB_EINVAL; /* a lease without TTL has nothing to renew */
    } else {
      uint64_t was = l->ttl_deadline;
      l->ttl_deadline = now + mb__ms_to_ns(ttl_ms);
      rc = 0;
      /* A later deadline is seen when the armed timer fires; an earlier
       * one needs the core to move the timer. */
      if (l->ttl_deadline < was && !l->renewed) {
        l->renewed = 1;
        mb__queue_insert_head(&ctx->renewed, &l->renew_node);
        wake_locked_post(ctx);
      }
    }
  }
  pthread_mutex_unlock(&ctx->post_lock);
  return rc;
}

static int post_simple(mb_ctx *ctx, mb__req_type type, const char *name, int64_t ka,
                       mb_done_fn done, void *arg) {
  if (ctx == NULL || name == NULL)
    return MB_EINVAL;
  mb__req *r = req_new(ctx, type, name, done, arg);
  if (r == NULL)
    return MB_ENOMEM;
  r->keep_alive_ms = ka;
  post(ctx, r);
  return 0;
}

int mb_load_async(mb_ctx *ctx, const char *name, int64_t ka, mb_done_fn done, void *arg) {
  if (!check_ka(ka))
    return MB_EINVAL;
  return post_simple(ctx, MB__R_LOAD, name, ka, done, arg);
}

int mb_offload_async(mb_ctx *ctx, const char *name, mb_done_fn done, void *arg) {
  return post_simple(ctx, MB__R_OFFLOAD, name, MB_DEFAULT, done, arg);
}

int mb_unload_async(mb_ctx *ctx, const char *name, mb_done_fn done, void *arg) {
  return post_simple(ctx, MB__R_UNLOAD, name, MB_DEFAULT, done, arg);
}

int mb_keep_alive_async(mb_ctx *ctx, const char *name, int64_t ka, mb_done_fn done, void *arg) {
  if (ka < 0 && ka != MB_FOREVER)
    return MB_EINVAL;
  return post_simple(ctx, MB__R_KEEPALIVE, name, ka, done, arg);
}

/* ------------------------------------------------------------------------ */
/* Blocking wrappers: post, then wait for the answer.                        */

typedef struct sync_wait {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int done;
  int rc;
  mb_lease lease;
  char msg[256];
} sync_wait;

static void sync_done(const mb_result *res, void *arg) {
  sync_wait *s = arg;
  pthread_mutex_lock(&s->mu);
  s->rc = res->rc;
  s->lease = res->lease;
  snprintf(s->msg, sizeof(s->msg), "%s", res->message ? res->message : "");
  s->done = 1;
  pthread_cond_signal(&s->cv);
  pthread_mutex_unlock(&s->mu);
}

static void sync_init(sync_wait *s) {
  memset(s, 0, sizeof(*s));
  pthread_mutex_init(&s->mu, NULL);
  pthread_cond_init(&s->cv, NULL);
}

static int sync_finish(sync_wait *s, int posted, char *err, size_t err_len) {
  if (posted == 0) {
    pthread_mutex_lock(&s->mu);
    while (!s->done)
      pthread_cond_wait(&s->cv, &s->mu);
    pthread_mutex_unlock(&s->mu);
  } else {
    s->rc = posted;
    snprintf(s->msg, sizeof(s->msg), "%s", mb_strerror(posted));
  }
  pthread_cond_destroy(&s->cv);
  pthread_mutex_destroy(&s->mu);
  if (s->rc != 0)
    mb__set_err(err, err_len, "%s", s->msg);
  return s->rc;
}

#define BLOCKING_ONLY(ctx, err, err_len)                                            \
  do {                                                                              \
    if ((ctx) == NULL || (ctx)->opts.manual) {                                      \
      mb__set_err(err, err_len, "blocking calls need a threaded context");         \
      return MB_EINVAL;                                                             \
    }                                                                               \
  } while (0)

int mb_acquire(mb_ctx *ctx, const char *name, const mb_acquire_opts *opts, mb_lease *lease,
               char *err, size_t err_len) {
  sync_wait s;
  BLOCKING_ONLY(ctx, err, err_len);
  if (lease == NULL)
    return MB_EINVAL;
  sync_init(&s);
  int rc = sync_finish(&s, mb_acquire_async(ctx, name, opts, sync_done, &s, NULL), err, err_len);
  if (rc == 0)
    *lease = s.lease;
  return rc;
}

int mb_load(mb_ctx *ctx, const char *name, int64_t ka, char *err, size_t err_len) {
  sync_wait s;
  BLOCKING_ONLY(ctx, err, err_len);
  sync_init(&s);
  return sync_finish(&s, mb_load_async(ctx, name, ka, sync_done, &s), err, err_len);
}

int mb_offload(mb_ctx *ctx, const char *name, char *err, size_t err_len) {
  sync_wait s;
  BLOCKING_ONLY(ctx, err, err_len);
  sync_init(&s);
  return sync_finish(&s, mb_offload_async(ctx, name, sync_done, &s), err, err_len);
}

int mb_unload(mb_ctx *ctx, const char *name, char *err, size_t err_len) {
  sync_wait s;
  BLOCKING_ONLY(ctx, err, err_len);
  sync_init(&s);
  return sync_finish(&s, mb_unload_async(ctx, name, sync_done, &s), err, err_len);
}

int mb_keep_alive(mb_ctx *ctx, const char *name, int64_t ka) {
  sync_wait s;
  BLOCKING_ONLY(ctx, NULL, 0);
  sync_init(&s);
  return sync_finish(&s, mb_keep_alive_async(ctx, name, ka, sync_done, &s), NULL, 0);
}

int mb_model_remove(mb_ctx *ctx, const char *name) {
  sync_wait s;
  BLOCKING_ONLY(ctx, NULL, 0);
  sync_init(&s);
  return sync_finish(&s, post_simple(ctx, MB__R_REMOVE, name, MB_DEFAULT, sync_done, &s), NULL,
                     0);
}
