/*
 * test_fastpath.c - the fast paths of threaded mode: mb_acquire_try grants
 * on the caller's thread exactly what the core would grant at once, and
 * refuses (changing nothing) whenever the core would make the request
 * wait; mb_release settles a release on the caller's thread when nothing
 * else needs the core, and the idle timer it arms still fires (the core
 * thread is woken when it sleeps past it). Threaded mode with the real
 * clock; the waits are bounded polls of the model's status.
 */
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <setjmp.h>
#include <cmocka.h>

#include "modelbuf/modelbuf.h"

static int loads, unloads;

static int t_load(void *user, int device, char *err, size_t err_len) {
  (void)user, (void)device, (void)err, (void)err_len;
  __atomic_add_fetch(&loads, 1, __ATOMIC_RELAXED);
  return 0;
}

static int t_unload(void *user, char *err, size_t err_len) {
  (void)user, (void)err, (void)err_len;
  __atomic_add_fetch(&unloads, 1, __ATOMIC_RELAXED);
  return 0;
}

static mb_ctx *new_ctx(int64_t keep_alive_ms, int max_concurrency) {
  mb_ctx *ctx;
  char err[256];
  assert_int_equal(mb_ctx_new(NULL, &ctx, err, sizeof(err)), 0);
  assert_int_equal(mb_device_add(ctx, NULL, NULL, err, sizeof(err)), 0);
  mb_callbacks cb = {t_load, NULL, NULL, t_unload, NULL, NULL};
  mb_model_opts mo;
  mb_model_opts_init(&mo);
  mo.keep_alive_ms = keep_alive_ms;
  mo.max_concurrency = max_concurrency;
  mo.offload = 0;
  assert_int_equal(mb_model_add_callbacks(ctx, "m", &cb, &mo, err, sizeof(err)), 0);
  return ctx;
}

static mb_status status(mb_ctx *ctx) {
  mb_status st;
  assert_int_equal(mb_model_status(ctx, "m", &st), 0);
  return st;
}

static void sleep_ms(int ms) {
  struct timespec ts = {0, ms * 1000000L};
  nanosleep(&ts, NULL);
}

/* Polls until the model is in state s, at most 5 s. */
static mb_status wait_state(mb_ctx *ctx, mb_state s) {
  for (int i = 0; i < 500; i++) {
    mb_status st = status(ctx);
    if (st.state == s)
      return st;
    sleep_ms(10);
  }
  fail_msg("model never reached %s (is %s)", mb_state_name(s), mb_state_name(status(ctx).state));
  return status(ctx);
}

/* Tries until the core is not stepping (a try gives way to a running step). */
static int try_acquire(mb_ctx *ctx, const mb_acquire_opts *o, mb_result *res) {
  int rc = 0;
  for (int i = 0; i < 200 && rc == 0; i++) {
    rc = mb_acquire_try(ctx, "m", o, res);
    if (rc == 0)
      sleep_ms(1);
  }
  return rc;
}

static void test_try_needs_a_ready_model(void **state) {
  (void)state;
  mb_ctx *ctx = new_ctx(MB_FOREVER, 2);
  mb_result res;
  /* Unloaded: only the core can load it. Nothing changes. */
  assert_int_equal(mb_acquire_try(ctx, "m", NULL, &res), 0);
  mb_status st = status(ctx);
  assert_int_equal(st.state, MB_STATE_UNLOADED);
  assert_int_equal(st.stats.requests, 0);
  assert_int_equal(mb_acquire_try(ctx, "nope", NULL, &res), 0);
  assert_int_equal(mb_acquire_try(ctx, NULL, NULL, &res), MB_EINVAL);
  mb_acquire_opts bad;
  mb_acquire_opts_init(&bad);
  bad.keep_alive_ms = -7;
  assert_int_equal(mb_acquire_try(ctx, "m", &bad, &res), MB_EINVAL);
  char err[256];
  assert_int_equal(mb_load(ctx, "m", MB_DEFAULT, err, sizeof(err)), 0);
  /* READY with free slots: granted here, counted as the core counts. */
  mb_result a, b, c;
  assert_int_equal(try_acquire(ctx, NULL, &a), 1);
  assert_int_equal(try_acquire(ctx, NULL, &b), 1);
  assert_true(a.lease.id != 0 && b.lease.id != 0 && a.lease.id != b.lease.id);
  assert_int_equal(a.queue_ns, 0);
  assert_int_equal(a.load_ns, 0);
  st = status(ctx);
  assert_int_equal(st.inflight, 2);
  assert_int_equal(st.stats.requests, 2);
  assert_int_equal(st.stats.wait_count, 2);
  assert_int_equal(st.stats.wait_buckets[0], 2);
  /* No slot left: the core makes it wait, so the try refuses. */
  assert_int_equal(mb_acquire_try(ctx, "m", NULL, &c), 0);
  assert_int_equal(status(ctx).stats.requests, 2);
  /* A TTL needs a timer of the core: refused too. */
  assert_int_equal(mb_release(ctx, b.lease), 0);
  mb_acquire_opts ttl;
  mb_acquire_opts_init(&ttl);
  ttl.ttl_ms = 1000;
  assert_int_equal(mb_acquire_try(ctx, "m", &ttl, &c), 0);
  assert_int_equal(mb_release(ctx, a.lease), 0);
  assert_int_equal(mb_release(ctx, a.lease), MB_EINVAL); /* twice */
  assert_int_equal(status(ctx).inflight, 0);
  assert_int_equal(mb_ctx_free(ctx), 0);
}

typedef struct waiter {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int done;
  mb_result res;
} waiter;

static void on_done(const mb_result *res, void *arg) {
  waiter *w = arg;
  pthread_mutex_lock(&w->mu);
  w->res = *res;
  w->done = 1;
  pthread_cond_signal(&w->cv);
  pthread_mutex_unlock(&w->mu);
}

static void wait_done(waiter *w) {
  pthread_mutex_lock(&w->mu);
  while (!w->done)
    pthread_cond_wait(&w->cv, &w->mu);
  pthread_mutex_unlock(&w->mu);
}

static void test_waiter_is_served_before_a_try(void **state) {
  (void)state;
  mb_ctx *ctx = new_ctx(MB_FOREVER, 1);
  char err[256];
  assert_int_equal(mb_load(ctx, "m", MB_DEFAULT, err, sizeof(err)), 0);
  mb_result a;
  assert_int_equal(try_acquire(ctx, NULL, &a), 1);
  /* An async acquire queues behind the one slot. */
  waiter w = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, {0}};
  assert_int_equal(mb_acquire_async(ctx, "m", NULL, on_done, &w, NULL), 0);
  for (int i = 0; i < 500 && status(ctx).queued == 0; i++)
    sleep_ms(1);
  assert_int_equal(status(ctx).queued, 1);
  /* Someone waits: the try must not jump the queue. */
  mb_result b;
  assert_int_equal(mb_acquire_try(ctx, "m", NULL, &b), 0);
  /* The release hands the slot to the waiter (the core's way). */
  assert_int_equal(mb_release(ctx, a.lease), 0);
  wait_done(&w);
  assert_int_equal(w.res.rc, 0);
  assert_int_equal(status(ctx).inflight, 1);
  assert_int_equal(mb_release(ctx, w.res.lease), 0);
  for (int i = 0; i < 500 && status(ctx).inflight != 0; i++)
    sleep_ms(1);
  assert_int_equal(status(ctx).inflight, 0);
  assert_int_equal(mb_ctx_free(ctx), 0);
}

static void test_fast_release_arms_the_idle_timer(void **state) {
  (void)state;
  /* keep_alive 200 ms: the core thread sleeps with no timer armed while
   * the lease is out; the release settled on this thread arms the idle
   * timer and must wake it, or the model would stay loaded for ever. */
  mb_ctx *ctx = new_ctx(200, 1);
  char err[256];
  int before = __atomic_load_n(&unloads, __ATOMIC_RELAXED);
  assert_int_equal(mb_load(ctx, "m", MB_FOREVER, err, sizeof(err)), 0);
  mb_acquire_opts o;
  mb_acquire_opts_init(&o);
  o.keep_alive_ms = 200;
  for (int round = 0; round < 3; round++) {
    mb_result a;
    assert_int_equal(try_acquire(ctx, &o, &a), 1);
    mb_status st = status(ctx);
    assert_int_equal(st.inflight, 1);
    assert_false(st.timer_active);
    sleep_ms(50); /* let the core thread go to sleep */
    assert_int_equal(mb_release(ctx, a.lease), 0);
    st = status(ctx);
    assert_int_equal(st.inflight, 0);
    assert_true(st.timer_active);
  }
  wait_state(ctx, MB_STATE_UNLOADED);
  assert_int_equal(__atomic_load_n(&unloads, __ATOMIC_RELAXED), before + 1);
  /* Loaded again by an acquire (the core's way), then the try's. */
  mb_lease l;
  assert_int_equal(mb_acquire(ctx, "m", &o, &l, err, sizeof(err)), 0);
  assert_int_equal(mb_release(ctx, l), 0);
  assert_int_equal(mb_ctx_free(ctx), 0);
}

static void *hammer(void *arg) {
  mb_ctx *ctx = arg;
  for (int i = 0; i < 2000; i++) {
    mb_result r;
    int rc = mb_acquire_try(ctx, "m", NULL, &r);
    if (rc == 1) {
      if (mb_release(ctx, r.lease) != 0)
        return (void *)1;
    } else {
      mb_lease l;
      char err[128];
      if (mb_acquire(ctx, "m", NULL, &l, err, sizeof(err)) != 0 || mb_release(ctx, l) != 0)
        return (void *)1;
    }
  }
  return NULL;
}

static void test_tries_and_steps_together(void **state) {
  (void)state;
  /* Four threads mixing tries and blocking acquires on a model with two
   * slots: every lease granted once and released once, the counts add up. */
  mb_ctx *ctx = new_ctx(MB_FOREVER, 2);
  pthread_t t[4];
  for (int i = 0; i < 4; i++)
    assert_int_equal(pthread_create(&t[i], NULL, hammer, ctx), 0);
  for (int i = 0; i < 4; i++) {
    void *ret;
    pthread_join(t[i], &ret);
    assert_null(ret);
  }
  for (int i = 0; i < 500 && status(ctx).inflight != 0; i++)
    sleep_ms(1);
  mb_status st = status(ctx);
  assert_int_equal(st.inflight, 0);
  assert_int_equal(st.queued, 0);
  assert_int_equal(st.stats.requests, 8000);
  assert_int_equal(st.stats.wait_count, 8000);
  assert_int_equal(mb_ctx_free(ctx), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_try_needs_a_ready_model),
      cmocka_unit_test(test_waiter_is_served_before_a_try),
      cmocka_unit_test(test_fast_release_arms_the_idle_timer),
      cmocka_unit_test(test_tries_and_steps_together),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
