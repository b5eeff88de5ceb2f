/*
 * test_queue.c - per-model queues (priority then arrival, max_queue,
 * queue_timeout), concurrency slots, the device-wide limit,
 * max_parallel_loads, cancel, and leases with a TTL. Manual clock.
 */
#include "harness.h"

static harness H;

static int setup(void **state) {
  mb_ctx_opts o;
  (void)state;
  h_init_opts(&H, &o);
  h_start(&H, &o);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  if (H.ctx)
    h_free(&H);
  return 0;
}

static void ready_model(const char *name, int max_conc, int max_queue, int64_t qt_ms) {
  mb_model_opts o;
  mb_model_opts_init(&o);
  o.footprint_bytes = 10;
  o.keep_alive_ms = MB_FOREVER;
  o.max_concurrency = max_conc;
  o.max_queue = max_queue;
  o.queue_timeout_ms = qt_ms;
  h_model(&H, name, &o);
}

/* Waiters are released by priority, then arrival. */
static void test_priority_order(void **state) {
  h_device(&H, 1000);
  ready_model("a", 1, 64, 60000);
  h_answer first, w[5];
  h_acquire(&H, "a", NULL, &first);
  h_complete(&H, "a", 0);
  int prio[5] = {0, 5, 0, 5, 9};
  for (int i = 0; i < 5; i++)
    h_acquire_prio(&H, "a", prio[i], &w[i]);
  for (int i = 0; i < 5; i++)
    assert_false(w[i].done);
  assert_int_equal(h_status(&H, "a").queued, 5);
  int want[5] = {4, 1, 3, 0, 2};
  h_answer *cur = &first;
  for (int k = 0; k < 5; k++) {
    h_release(&H, cur);
    cur = &w[want[k]];
    assert_true(cur->done);
    assert_int_equal(cur->rc, 0);
    for (int j = k + 1; j < 5; j++)
      assert_false(w[want[j]].done);
  }
  h_release(&H, cur);
}

/* max_queue: beyond it, acquire fails at once with MB_EQUEUEFULL. */
static void test_queue_full(void **state) {
  h_device(&H, 1000);
  ready_model("a", 1, 2, 60000);
  h_answer l, w1, w2, w3;
  h_acquire(&H, "a", NULL, &l);
  h_complete(&H, "a", 0);
  h_acquire(&H, "a", NULL, &w1);
  h_acquire(&H, "a", NULL, &w2);
  h_acquire(&H, "a", NULL, &w3);
  assert_false(w1.done);
  assert_false(w2.done);
  assert_true(w3.done);
  assert_int_equal(w3.rc, MB_EQUEUEFULL);
  assert_non_null(strstr(w3.msg, "max_queue 2"));
  mb_status st = h_status(&H, "a");
  assert_int_equal(st.stats.rejected, 1);
  assert_int_equal(st.stats.requests, 4);
  h_release(&H, &l);
  h_release(&H, &w1);
  h_release(&H, &w2);
}

/* max_queue 0: no waiting at all, but a free slot is still granted. */
static void test_queue_zero(void **state) {
  h_device(&H, 1000);
  ready_model("a", 1, 0, 60000);
  h_answer l, w;
  h_acquire(&H, "a", NULL, &l);
  assert_int_equal(l.rc, MB_EQUEUEFULL); /* it would have to wait for the load */
  memset(&w, 0, sizeof(w));
  assert_int_equal(mb_load_async(H.ctx, "a", MB_DEFAULT, h_done, &w), 0);
  h_settle(&H);
  h_complete(&H, "a", 0);
  h_acquire(&H, "a", NULL, &l);
  assert_int_equal(l.rc, 0);
  h_acquire(&H, "a", NULL, &w);
  assert_int_equal(w.rc, MB_EQUEUEFULL);
  h_release(&H, &l);
}

/* queue_timeout bounds the wait; the answer is MB_ETIMEDOUT. */
static void test_queue_timeout(void **state) {
  h_device(&H, 1000);
  ready_model("a", 1, 64, 500);
  h_answer l, w;
  h_acquire(&H, "a", NULL, &l);
  h_complete(&H, "a", 0);
  h_acquire(&H, "a", NULL, &w);
  h_advance(&H, 499 * MS);
  assert_false(w.done);
  h_advance(&H, 1 * MS);
  assert_true(w.done);
  assert_int_equal(w.rc, MB_ETIMEDOUT);
  assert_int_equal(h_status(&H, "a").stats.timeouts, 1);
  assert_int_equal(h_status(&H, "a").queued, 0);
  /* A per-acquire timeout overrides the model's. */
  mb_acquire_opts o;
  mb_acquire_opts_init(&o);
  o.timeout_ms = 50;
  h_acquire(&H, "a", &o, &w);
  h_advance(&H, 50 * MS);
  assert_int_equal(w.rc, MB_ETIMEDOUT);
  h_release(&H, &l);
}

/* max_concurrency slots; queue_ns reports the wait. */
static void test_concurrency_slots(void **state) {
  h_device(&H, 1000);
  ready_model("a", 2, 64, 60000);
  h_answer x, y, z;
  h_acquire(&H, "a", NULL, &x);
  h_acquire(&H, "a", NULL, &y);
  h_acquire(&H, "a", NULL, &z);
  h_complete_after(&H, "a", 0, 100, NULL);
  assert_int_equal(x.rc, 0);
  assert_int_equal(y.rc, 0);
  assert_false(z.done);
  assert_int_equal(x.load_ns, 100 * MS);
  assert_int_equal(x.queue_ns, 0);
  h_advance(&H, 40 * MS);
  h_release(&H, &x);
  assert_int_equal(z.rc, 0);
  assert_int_equal(z.queue_ns, 40 * MS); /* 140 ms waited, 100 of them loading */
  h_release(&H, &y);
  h_release(&H, &z);
}

/* A device-wide limit serialises work across its models, best waiter first. */
static void test_device_concurrency(void **state) {
  mb_device_opts d;
  mb_device_opts_init(&d);
  d.capacity_bytes = 1000;
  d.concurrency = 1;
  char err[128];
  assert_int_equal(mb_device_add(H.ctx, &d, NULL, err, sizeof(err)), 0);
  ready_model("a", 4, 64, 60000);
  ready_model("b", 4, 64, 60000);
  h_answer la, lb;
  memset(&la, 0, sizeof(la));
  memset(&lb, 0, sizeof(lb));
  assert_int_equal(mb_load_async(H.ctx, "a", MB_DEFAULT, h_done, &la), 0);
  assert_int_equal(mb_load_async(H.ctx, "b", MB_DEFAULT, h_done, &lb), 0);
  h_settle(&H);
  h_complete_all(&H);
  assert_int_equal(la.rc, 0);
  assert_int_equal(lb.rc, 0);
  h_answer a1, b1, a2;
  h_acquire(&H, "a", NULL, &a1);
  assert_int_equal(a1.rc, 0);
  h_acquire_prio(&H, "b", 0, &b1);
  h_acquire_prio(&H, "a", 9, &a2);
  assert_false(b1.done);
  assert_false(a2.done);
  h_release(&H, &a1);
  assert_true(a2.done); /* higher priority, though it came later */
  assert_false(b1.done);
  h_release(&H, &a2);
  assert_true(b1.done);
  h_release(&H, &b1);
}

/* Loads are serialised per device by default; max_parallel_loads raises it. */
static void test_parallel_loads(void **state) {
  h_device(&H, 1000);
  mb_device_opts d;
  mb_device_opts_init(&d);
  d.capacity_bytes = 1000;
  d.max_parallel_loads = 2;
  char err[128];
  assert_int_equal(mb_device_add(H.ctx, &d, NULL, err, sizeof(err)), 0);
  ready_model("a", 1, 64, 60000);
  ready_model("b", 1, 64, 60000);
  mb_model_opts o;
  mb_model_opts_init(&o);
  o.device = 1;
  o.footprint_bytes = 10;
  h_model(&H, "c", &o);
  h_model(&H, "e", &o);
  h_answer a, b, c, e;
  h_acquire(&H, "a", NULL, &a);
  h_acquire(&H, "b", NULL, &b);
  h_acquire(&H, "c", NULL, &c);
  h_acquire(&H, "e", NULL, &e);
  assert_true(h_has_job(&H, "a"));
  assert_false(h_has_job(&H, "b")); /* device 0: one load at a time */
  assert_true(h_has_job(&H, "c"));
  assert_true(h_has_job(&H, "e")); /* device 1: two at once */
  h_complete(&H, "a", 0);
  assert_true(h_has_job(&H, "b"));
  h_complete_all(&H);
  h_release(&H, &a);
  h_release(&H, &b);
  h_release(&H, &c);
  h_release(&H, &e);
}

/* Cancel answers the waiter with MB_ECANCELED and never aborts the load. */
static void test_cancel(void **state) {
  h_device(&H, 1000);
  ready_model("a", 1, 64, 60000);
  h_answer w;
  memset(&w, 0, sizeof(w));
  uint64_t id = 0;
  assert_int_equal(mb_acquire_async(H.ctx, "a", NULL, h_done, &w, &id), 0);
  h_settle(&H);
  assert_int_equal(mb_cancel(H.ctx, id), 0);
  h_settle(&H);
  assert_int_equal(w.rc, MB_ECANCELED);
  assert_int_equal(h_state(&H, "a"), MB_STATE_LOADING);
  h_complete(&H, "a", 0);
  assert_int_equal(h_state(&H, "a"), MB_STATE_READY);
  assert_int_equal(h_status(&H, "a").inflight, 0);
}

/* A lease with a TTL is released by the core unless renewed. */
static void test_lease_ttl(void **state) {
  h_device(&H, 1000);
  ready_model("a", 1, 64, 60000);
  mb_acquire_opts o;
  mb_acquire_opts_init(&o);
  o.ttl_ms = 1000;
  h_answer l;
  h_acquire(&H, "a", &o, &l);
  h_complete(&H, "a", 0);
  assert_int_equal(l.rc, 0);
  h_advance(&H, 800 * MS);
  assert_int_equal(mb_lease_renew(H.ctx, l.lease, 1000), 0);
  h_advance(&H, 700 * MS); /* 1500 ms: renewed until 1800 */
  assert_int_equal(h_status(&H, "a").inflight, 1);
  h_advance(&H, 300 * MS);
  assert_int_equal(h_status(&H, "a").inflight, 0);
  assert_int_equal(mb_release(H.ctx, l.lease), MB_EINVAL); /* already expired */
  assert_int_equal(mb_lease_renew(H.ctx, l.lease, 1000), MB_EINVAL);
  /* A lease without TTL never expires and has nothing to renew. */
  h_acquire(&H, "a", NULL, &l);
  assert_int_equal(mb_lease_renew(H.ctx, l.lease, 1000), MB_EINVAL);
  h_advance(&H, 100000 * MS);
  assert_int_equal(h_status(&H, "a").inflight, 1);
  h_release(&H, &l);

  /* Renewed to a shorter TTL: it expires at the new deadline, not when
   * the first one would have. */
  o.ttl_ms = 10000;
  h_acquire(&H, "a", &o, &l);
  assert_int_equal(l.rc, 0);
  h_advance(&H, 100 * MS);
  assert_int_equal(mb_lease_renew(H.ctx, l.lease, 500), 0);
  h_advance(&H, 499 * MS);
  assert_int_equal(h_status(&H, "a").inflight, 1);
  h_advance(&H, 1 * MS);
  assert_int_equal(h_status(&H, "a").inflight, 0);
  assert_int_equal(mb_release(H.ctx, l.lease), MB_EINVAL);
  /* Renewed shorter, then longer again before the core ran: the later
   * deadline holds. */
  h_acquire(&H, "a", &o, &l);
  assert_int_equal(mb_lease_renew(H.ctx, l.lease, 200), 0);
  assert_int_equal(mb_lease_renew(H.ctx, l.lease, 3000), 0);
  h_advance(&H, 2999 * MS);
  assert_int_equal(h_status(&H, "a").inflight, 1);
  h_advance(&H, 1 * MS);
  assert_int_equal(h_status(&H, "a").inflight, 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_priority_order, setup, teardown),
      cmocka_unit_test_setup_teardown(test_queue_full, setup, teardown),
      cmocka_unit_test_setup_teardown(test_queue_zero, setup, teardown),
      cmocka_unit_test_setup_teardown(test_queue_timeout, setup, teardown),
      cmocka_unit_test_setup_teardown(test_concurrency_slots, setup, teardown),
      cmocka_unit_test_setup_teardown(test_device_concurrency, setup, teardown),
      cmocka_unit_test_setup_teardown(test_parallel_loads, setup, teardown),
      cmocka_unit_test_setup_teardown(test_cancel, setup, teardown),
      cmocka_unit_test_setup_teardown(test_lease_ttl, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
