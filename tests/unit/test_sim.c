/*
 * test_sim.c - the trace simulator (bench/sim) and the core hooks it needs:
 * the MB_EVICT_CUSTOM ranking callback and eviction candidate lists that
 * are never cut short. The simulator itself runs the real core on a manual
 * clock, so these tests are deterministic and never sleep.
 */
#include "harness.h"

static harness H;

static int teardown(void **state) {
  (void)state;
  if (H.ctx)
    h_free(&H);
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Core: MB_EVICT_CUSTOM and long candidate lists                            */

typedef struct rank_log {
  int calls;
  int bad_device;
  int bad_user;
} rank_log;

static rank_log RL;

/* Ranks a < b < c backwards: c (the most recently used) goes first. */
static double rank_by_name(void *arg, const char *model, void *user, int device) {
  rank_log *l = arg;
  l->calls++;
  if (device != 0)
    l->bad_device++;
  if (user != NULL)
    l->bad_user++;
  return -(double)(model[0] - 'a');
}

static void use(const char *name) {
  h_answer a;
  h_acquire(&H, name, NULL, &a);
  if (!a.done)
    h_complete_after(&H, name, 0, 10, NULL);
  assert_int_equal(a.rc, 0);
  h_release(&H, &a);
  h_advance(&H, MS);
}

static void test_custom_rank_order(void **state) {
  (void)state;
  mb_ctx_opts o;
  h_init_opts(&H, &o);
  o.eviction = MB_EVICT_CUSTOM;
  o.evict_rank = rank_by_name;
  o.evict_arg = &RL;
  memset(&RL, 0, sizeof(RL));
  h_start(&H, &o);
  h_device(&H, 300);
  h_model_fp(&H, "a", 100, MB_FOREVER);
  h_model_fp(&H, "b", 100, MB_FOREVER);
  h_model_fp(&H, "c", 100, MB_FOREVER);
  h_model_fp(&H, "d", 100, MB_FOREVER);
  use("a");
  use("b");
  use("c");
  h_answer d;
  h_acquire(&H, "d", NULL, &d);
  /* LRU would take a; the ranking takes c. */
  assert_int_equal(h_state(&H, "c"), MB_STATE_OFFLOADING);
  assert_int_equal(h_state(&H, "a"), MB_STATE_READY);
  assert_int_equal(h_state(&H, "b"), MB_STATE_READY);
  assert_true(RL.calls >= 3);
  assert_int_equal(RL.bad_device, 0);
  assert_int_equal(RL.bad_user, 0);
  h_complete(&H, "c", 0);
  h_complete(&H, "d", 0);
  assert_int_equal(d.rc, 0);
  h_release(&H, &d);
}

static void test_custom_needs_callback(void **state) {
  (void)state;
  mb_ctx_opts o;
  mb_ctx *ctx = NULL;
  char err[256] = "";
  h_init_opts(&H, &o);
  o.eviction = MB_EVICT_CUSTOM;
  assert_int_equal(mb_ctx_new(&o, &ctx, err, sizeof(err)), MB_EINVAL);
  assert_non_null(strstr(err, "evict_rank"));
  assert_null(ctx);
}

/*
 * 300 idle models on one device; the least recently used one was registered
 * last. Its eviction proves the candidate list holds every resident model
 * (a list cut at a fixed length would pick an early-registered one).
 */
static void test_many_candidates(void **state) {
  (void)state;
  enum { N = 300 };
  mb_ctx_opts o;
  char name[16];
  h_init_opts(&H, &o);
  o.eviction = MB_EVICT_LRU;
  h_start(&H, &o);
  h_device(&H, N * 10);
  for (int i = 0; i < N; i++) {
    snprintf(name, sizeof(name), "m%03d", i);
    h_model_fp(&H, name, 10, MB_FOREVER);
  }
  h_model_fp(&H, "new", 10, MB_FOREVER);
  use("m299");
  for (int i = 0; i < N - 1; i++) {
    snprintf(name, sizeof(name), "m%03d", i);
    use(name);
  }
  assert_int_equal(h_dev_used(&H, 0), N * 10);
  h_answer a;
  h_acquire(&H, "new", NULL, &a);
  assert_int_equal(h_state(&H, "m299"), MB_STATE_OFFLOADING);
  assert_int_equal(h_state(&H, "m000"), MB_STATE_READY);
  h_complete(&H, "m299", 0);
  h_complete(&H, "new", 0);
  assert_int_equal(a.rc, 0);
  h_release(&H, &a);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_teardown(test_custom_rank_order, teardown),
      cmocka_unit_test_teardown(test_custom_needs_callback, teardown),
      cmocka_unit_test_teardown(test_many_candidates, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
