/*
 * test_stress.c - many threads against one threaded context.
 *
 * 8 worker threads acquire and release 12 models at random (random
 * priorities, timeouts and keep-alives, now and then an async acquire that
 * is cancelled at once) while a controller thread offloads, unloads, loads
 * and changes keep-alives, and samples the device figures. The models use
 * the callbacks backend over real buffers and a device budget where only
 * about four of them fit; loads and restores fail now and then.
 *
 * What must hold, checked inside the callbacks with atomics and at the end:
 *   - the bytes the backend holds on the device never exceed the device's
 *     usable bytes (the core charges a load before it starts it);
 *   - no offload or unload (or any other operation) of a model runs while a
 *     lease on it is out, and no two operations of one model run at once;
 *   - a lease always finds the model's weights in place and intact;
 *   - every acquire is answered, with 0 or an expected error;
 *   - after mb_ctx_free every byte is freed.
 *
 * Nothing sleeps. Iterations: MB_STRESS_ITERS per thread (default 4000,
 * half that under TSan), times MB_STRESS_SCALE when set; a wall-clock cap
 * stops the workers early on a slow machine, so the test stays bounded.
 */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <setjmp.h>
#include <cmocka.h>

#include "modelbuf/modelbuf.h"

#if defined(__SANITIZE_THREAD__)
#define UNDER_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define UNDER_TSAN 1
#endif
#endif
#ifndef UNDER_TSAN
#define UNDER_TSAN 0
#endif

#define NMODELS 12
#define NTHREADS 8
#define KiB 1024u

/* ------------------------------------------------------------------------ */
/* The backend                                                               */

typedef struct smodel {
  char name[16];
  size_t bytes;
  unsigned char fill;
  int can_offload;
  unsigned char *dev;  /* touched by callbacks, read by lease holders */
  unsigned char *host;
  atomic_int leases;   /* leases the test holds on it */
  atomic_int busy;     /* a callback of this model is running */
  atomic_int loads, restores, ops;
} smodel;

static smodel models[NMODELS];
static uint64_t usable_bytes;

static atomic_ullong dev_bytes, host_bytes, max_dev_bytes;
static atomic_int live_buffers;
/* Invariant violations, counted where they happen and asserted at the end. */
static atomic_int over_budget, op_with_lease, concurrent_ops, bad_weights, bad_rc;
static atomic_int last_bad_rc;

static void op_enter(smodel *m) {
  if (atomic_exchange(&m->busy, 1) != 0)
    atomic_fetch_add(&concurrent_ops, 1);
  if (atomic_load(&m->leases) != 0)
    atomic_fetch_add(&op_with_lease, 1);
  atomic_fetch_add(&m->ops, 1);
}

static void op_leave(smodel *m) {
  if (atomic_load(&m->leases) != 0)
    atomic_fetch_add(&op_with_lease, 1);
  atomic_store(&m->busy, 0);
}

static unsigned char *buf_new(size_t n) {
  unsigned char *p = malloc(n);
  if (p)
    atomic_fetch_add(&live_buffers, 1);
  return p;
}

static void buf_free(unsigned char *p) {
  if (p) {
    free(p);
    atomic_fetch_sub(&live_buffers, 1);
  }
}

static void dev_add(size_t n) {
  unsigned long long now = atomic_fetch_add(&dev_bytes, n) + n;
  if (now > usable_bytes)
    atomic_fetch_add(&over_budget, 1);
  unsigned long long max = atomic_load(&max_dev_bytes);
  while (now > max && !atomic_compare_exchange_weak(&max_dev_bytes, &max, now))
    ;
}

static int s_load(void *user, int device, char *err, size_t err_len) {
  smodel *m = user;
  (void)device;
  op_enter(m);
  int n = atomic_fetch_add(&m->loads, 1);
  if (n % 199 == 17) { /* now and then a load fails, leaving nothing behind */
    snprintf(err, err_len, "%s: injected load failure %d", m->name, n);
    op_leave(m);
    return MB_EIO;
  }
  dev_add(m->bytes);
  m->dev = buf_new(m->bytes);
  memset(m->dev, m->fill, m->bytes);
  op_leave(m);
  return 0;
}

static int s_offload(void *user, char *err, size_t err_len) {
  smodel *m = user;
  (void)err;
  (void)err_len;
  op_enter(m);
  m->host = buf_new(m->bytes);
  memcpy(m->host, m->dev, m->bytes);
  buf_free(m->dev); /* a stale reader would be a use-after-free (ASan) */
  m->dev = NULL;
  atomic_fetch_add(&host_bytes, m->bytes);
  atomic_fetch_sub(&dev_bytes, m->bytes);
  op_leave(m);
  return 0;
}

static int s_restore(void *user, int device, char *err, size_t err_len) {
  smodel *m = user;
  (void)device;
  op_enter(m);
  int n = atomic_fetch_add(&m->restores, 1);
  if (n % 97 == 29) { /* a failed restore leaves nothing on the device */
    snprintf(err, err_len, "%s: injected restore failure %d", m->name, n);
    op_leave(m);
    return MB_EIO;
  }
  dev_add(m->bytes);
  m->dev = buf_new(m->bytes);
  memcpy(m->dev, m->host, m->bytes);
  buf_free(m->host);
  m->host = NULL;
  atomic_fetch_sub(&host_bytes, m->bytes);
  op_leave(m);
  return 0;
}

static int s_unload(void *user, char *err, size_t err_len) {
  smodel *m = user;
  (void)err;
  (void)err_len;
  op_enter(m);
  if (m->dev) {
    buf_free(m->dev);
    m->dev = NULL;
    atomic_fetch_sub(&dev_bytes, m->bytes);
  }
  if (m->host) {
    buf_free(m->host);
    m->host = NULL;
    atomic_fetch_sub(&host_bytes, m->bytes);
  }
  op_leave(m);
  return 0;
}

static void s_footprint(void *user, uint64_t *device_bytes, uint64_t *host) {
  smodel *m = user;
  *device_bytes = m->dev ? m->bytes : 0;
  *host = m->host ? m->bytes : 0;
}

/* ------------------------------------------------------------------------ */
/* Workers                                                                   */

static mb_ctx *ctx;
static atomic_int workers_done;
static atomic_ullong acquires_total;
static uint64_t deadline_ns;

typedef struct wstats {
  long attempts, ok, timedout, queuefull, loadfail, canceled, other;
} wstats;

static uint64_t xorshift(uint64_t *s) {
  uint64_t x = *s;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return *s = x;
}

/* Holds the lease a moment: the weights must be there and intact. */
static void use(smodel *m, const mb_lease *l) {
  atomic_fetch_add(&m->leases, 1);
  if (l->device != 0 || m->dev == NULL) {
    atomic_fetch_add(&bad_weights, 1);
  } else {
    for (size_t i = 0; i < m->bytes; i += 997)
      if (m->dev[i] != m->fill) {
        atomic_fetch_add(&bad_weights, 1);
        break;
      }
    if (m->dev[m->bytes - 1] != m->fill)
      atomic_fetch_add(&bad_weights, 1);
  }
  sched_yield();
  atomic_fetch_sub(&m->leases, 1);
}

static void count(wstats *ws, int rc) {
  switch (rc) {
  case 0: ws->ok++; break;
  case MB_ETIMEDOUT: ws->timedout++; break;
  case MB_EQUEUEFULL: ws->queuefull++; break;
  case MB_ELOAD: ws->loadfail++; break;
  case MB_ECANCELED: ws->canceled++; break;
  default:
    ws->other++;
    atomic_fetch_add(&bad_rc, 1);
    atomic_store(&last_bad_rc, rc);
    break;
  }
}

typedef struct async_wait {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int done, rc;
  mb_lease lease;
} async_wait;

static void async_done(const mb_result *res, void *arg) {
  async_wait *w = arg;
  pthread_mutex_lock(&w->mu);
  w->rc = res->rc;
  w->lease = res->lease;
  w->done = 1;
  pthread_cond_signal(&w->cv);
  pthread_mutex_unlock(&w->mu);
}

/* An async acquire cancelled at once: answered exactly once either way. */
static int acquire_and_cancel(smodel *m, const mb_acquire_opts *o) {
  async_wait w;
  uint64_t id = 0;
  memset(&w, 0, sizeof(w));
  pthread_mutex_init(&w.mu, NULL);
  pthread_cond_init(&w.cv, NULL);
  int rc = mb_acquire_async(ctx, m->name, o, async_done, &w, &id);
  if (rc == 0) {
    if (mb_cancel(ctx, id) != 0)
      atomic_fetch_add(&bad_rc, 1);
    pthread_mutex_lock(&w.mu);
    while (!w.done)
      pthread_cond_wait(&w.cv, &w.mu);
    pthread_mutex_unlock(&w.mu);
    rc = w.rc;
    if (rc == 0) {
      use(m, &w.lease);
      if (mb_release(ctx, w.lease) != 0)
        atomic_fetch_add(&bad_rc, 1);
    }
  }
  pthread_cond_destroy(&w.cv);
  pthread_mutex_destroy(&w.mu);
  return rc;
}

typedef struct worker {
  pthread_t tid;
  int index;
  long iters;
  wstats ws;
} worker;

static void *worker_main(void *arg) {
  worker *w = arg;
  uint64_t rnd = 0x9e3779b97f4a7c15ull * (uint64_t)(w->index + 1);
  static const int64_t timeouts[] = {5, 50, 200, 1000};
  static const int64_t keep_alives[] = {MB_DEFAULT, 0, 1, 5};
  for (long i = 0; i < w->iters; i++) {
    if ((i & 15) == 0 && mb_clock_monotonic(NULL) > deadline_ns)
      break;
    smodel *m = &models[xorshift(&rnd) % NMODELS];
    mb_acquire_opts o;
    mb_acquire_opts_init(&o);
    o.priority = (int)(xorshift(&rnd) % 5) - 2;
    o.timeout_ms = timeouts[xorshift(&rnd) % 4];
    o.keep_alive_ms = keep_alives[xorshift(&rnd) % 4];
    int rc;
    w->ws.attempts++;
    if (xorshift(&rnd) % 16 == 0) {
      rc = acquire_and_cancel(m, &o);
    } else {
      mb_lease l;
      char err[256] = "";
      rc = mb_acquire(ctx, m->name, &o, &l, err, sizeof(err));
      if (rc == 0) {
        use(m, &l);
        if (mb_release(ctx, l) != 0)
          atomic_fetch_add(&bad_rc, 1);
      } else if (err[0] == '\0') {
        atomic_fetch_add(&bad_rc, 1); /* every error comes with a message */
      }
    }
    count(&w->ws, rc);
    atomic_fetch_add(&acquires_total, 1);
  }
  atomic_fetch_add(&workers_done, 1);
  return NULL;
}

/* ------------------------------------------------------------------------ */
/* The controller: explicit operations and sampling while workers run        */

typedef struct cstats {
  long offloads, unloads, loads, keep_alives, samples, errors;
} cstats;

static int expected_op_rc(int rc) {
  return rc == 0 || rc == MB_ENOTSUP || rc == MB_ESTATE || rc == MB_ENOSPC || rc == MB_ELOAD ||
         rc == MB_ETIMEDOUT;
}

static void *controller_main(void *arg) {
  cstats *cs = arg;
  uint64_t rnd = 12345;
  unsigned long long seen = 0;
  static const int64_t keep_alives[] = {0, 1, 5, 20, MB_FOREVER};
  while (atomic_load(&workers_done) < NTHREADS) {
    /* One operation per ~40 acquires, so the workers keep the CPUs. */
    unsigned long long now = atomic_load(&acquires_total);
    if (now < seen + 40) {
      sched_yield();
      continue;
    }
    seen = now;
    smodel *m = &models[xorshift(&rnd) % NMODELS];
    char err[256] = "";
    int rc = 0;
    switch (xorshift(&rnd) % 4) {
    case 0:
      rc = mb_offload(ctx, m->name, err, sizeof(err));
      if (rc == MB_ENOTSUP && m->can_offload)
        rc = MB_EINVAL; /* unexpected */
      cs->offloads++;
      break;
    case 1:
      rc = mb_unload(ctx, m->name, err, sizeof(err));
      cs->unloads++;
      break;
    case 2:
      rc = mb_load(ctx, m->name, keep_alives[xorshift(&rnd) % 5], err, sizeof(err));
      cs->loads++;
      break;
    default:
      rc = mb_keep_alive(ctx, m->name, keep_alives[xorshift(&rnd) % 5]);
      cs->keep_alives++;
      break;
    }
    if (!expected_op_rc(rc)) {
      cs->errors++;
      atomic_store(&last_bad_rc, rc);
    }
    /* The core's own figures stay within the budget. */
    mb_device_info di;
    if (mb_device_info_get(ctx, 0, &di) != 0 || di.used_bytes > di.usable_bytes)
      atomic_fetch_add(&over_budget, 1);
    mb_status st;
    if (mb_model_status(ctx, m->name, &st) != 0 ||
        (st.inflight > 0 && st.state != MB_STATE_READY))
      cs->errors++;
    cs->samples++;
  }
  return NULL;
}

/* ------------------------------------------------------------------------ */

static long iterations(void) {
  long iters = UNDER_TSAN ? 2000 : 4000;
  const char *s = getenv("MB_STRESS_ITERS");
  if (s && atol(s) > 0)
    iters = atol(s);
  s = getenv("MB_STRESS_SCALE");
  if (s && atof(s) > 0) {
    iters = (long)((double)iters * atof(s));
    if (iters < 1)
      iters = 1;
  }
  return iters;
}

static void test_stress(void **state) {
  (void)state;
  mb_ctx_opts co;
  char err[256] = "";
  mb_ctx_opts_init(&co);
  co.loader_threads = 3;
  co.keep_alive_ms = 2;
  /* Room for about half the models offloaded, so the host tier evicts too. */
  co.host_budget_bytes = 6 * 40 * KiB;
  assert_int_equal(mb_ctx_new(&co, &ctx, err, sizeof(err)), 0);

  /* Footprints of 16-64 KiB; the budget holds about four models. */
  uint64_t rnd = 777;
  for (int i = 0; i < NMODELS; i++) {
    smodel *m = &models[i];
    snprintf(m->name, sizeof(m->name), "m%02d", i);
    m->bytes = (16 + xorshift(&rnd) % 49) * KiB;
    m->fill = (unsigned char)(i * 19 + 1);
    m->can_offload = i % 4 != 3;
  }
  usable_bytes = 4 * 40 * KiB;
  mb_device_opts d;
  mb_device_opts_init(&d);
  d.capacity_bytes = usable_bytes + 1 * KiB;
  d.reserve_bytes = 1 * KiB;
  d.max_parallel_loads = 2;
  assert_int_equal(mb_device_add(ctx, &d, NULL, err, sizeof(err)), 0);

  for (int i = 0; i < NMODELS; i++) {
    smodel *m = &models[i];
    mb_callbacks cb = {s_load, NULL, NULL, s_unload, s_footprint, m};
    if (m->can_offload) {
      cb.offload = s_offload;
      cb.restore = s_restore;
    }
    mb_model_opts o;
    mb_model_opts_init(&o);
    o.footprint_bytes = m->bytes;
    o.max_concurrency = 1 + i % 3;
    o.max_queue = 2 + i % 5;
    o.queue_timeout_ms = 2000;
    o.keep_alive_ms = i == 0 ? MB_FOREVER : (i % 3 == 1 ? 0 : MB_DEFAULT);
    o.host_keep_alive_ms = i % 2 ? 3 : MB_DEFAULT;
    o.offload = i % 5 != 2;
    o.pinned = 0;
    o.priority = i % 3;
    if (mb_model_add_callbacks(ctx, m->name, &cb, &o, err, sizeof(err)) != 0)
      fail_msg("add %s: %s", m->name, err);
  }

  long iters = iterations();
  deadline_ns = mb_clock_monotonic(NULL) + (UNDER_TSAN ? 60ull : 30ull) * 1000000000ull;
  worker workers[NTHREADS];
  cstats cs;
  memset(&cs, 0, sizeof(cs));
  pthread_t ctl;
  for (int i = 0; i < NTHREADS; i++) {
    memset(&workers[i], 0, sizeof(workers[i]));
    workers[i].index = i;
    workers[i].iters = iters;
    assert_int_equal(pthread_create(&workers[i].tid, NULL, worker_main, &workers[i]), 0);
  }
  assert_int_equal(pthread_create(&ctl, NULL, controller_main, &cs), 0);
  wstats total;
  memset(&total, 0, sizeof(total));
  for (int i = 0; i < NTHREADS; i++) {
    assert_int_equal(pthread_join(workers[i].tid, NULL), 0);
    wstats *ws = &workers[i].ws;
    total.attempts += ws->attempts;
    total.ok += ws->ok;
    total.timedout += ws->timedout;
    total.queuefull += ws->queuefull;
    total.loadfail += ws->loadfail;
    total.canceled += ws->canceled;
    total.other += ws->other;
  }
  assert_int_equal(pthread_join(ctl, NULL), 0);

  uint64_t evictions = 0, loads = 0, restores = 0, offloads = 0, failures = 0;
  for (int i = 0; i < NMODELS; i++) {
    mb_status st;
    /* (inflight may still count a lease whose release the core has not
     * taken yet: mb_release only posts it.) */
    assert_int_equal(mb_model_status(ctx, models[i].name, &st), 0);
    evictions += st.stats.evictions;
    loads += st.stats.loads;
    restores += st.stats.restores;
    offloads += st.stats.offloads;
    failures += st.stats.load_failures;
  }
  print_message("%ld acquires by %d threads (%ld per thread asked): %ld ok, %ld timed out, "
                "%ld queue full, %ld load failed, %ld cancelled, %ld other\n",
                total.attempts, NTHREADS, iters, total.ok, total.timedout, total.queuefull,
                total.loadfail, total.canceled, total.other);
  print_message("core: %llu loads, %llu restores, %llu offloads, %llu evictions, %llu load "
                "failures; controller: %ld offloads, %ld unloads, %ld loads, %ld keep-alives; "
                "device peak %llu of %llu bytes\n",
                (unsigned long long)loads, (unsigned long long)restores,
                (unsigned long long)offloads, (unsigned long long)evictions,
                (unsigned long long)failures, cs.offloads, cs.unloads, cs.loads, cs.keep_alives,
                (unsigned long long)atomic_load(&max_dev_bytes),
                (unsigned long long)usable_bytes);

  assert_int_equal(mb_ctx_free(ctx), 0);
  ctx = NULL;

  /* Every acquire was answered with 0 or an expected error. */
  assert_int_equal(total.attempts, total.ok + total.timedout + total.queuefull + total.loadfail +
                                       total.canceled + total.other);
  if (total.other != 0 || atomic_load(&bad_rc) != 0 || cs.errors != 0)
    fail_msg("unexpected answers: %ld from acquires, %d bad calls, %ld controller errors "
             "(last %s)",
             total.other, atomic_load(&bad_rc), cs.errors, mb_err_name(atomic_load(&last_bad_rc)));
  assert_true(total.ok > 0);
  assert_true(loads > 0);
  assert_true(evictions > 0);
  /* The invariants held throughout. */
  assert_int_equal(atomic_load(&over_budget), 0);
  assert_true(atomic_load(&max_dev_bytes) <= usable_bytes);
  assert_int_equal(atomic_load(&op_with_lease), 0);
  assert_int_equal(atomic_load(&concurrent_ops), 0);
  assert_int_equal(atomic_load(&bad_weights), 0);
  /* And everything is freed. */
  assert_int_equal(atomic_load(&dev_bytes), 0);
  assert_int_equal(atomic_load(&host_bytes), 0);
  assert_int_equal(atomic_load(&live_buffers), 0);
  for (int i = 0; i < NMODELS; i++) {
    assert_null(models[i].dev);
    assert_null(models[i].host);
    assert_int_equal(atomic_load(&models[i].leases), 0);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_stress),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
