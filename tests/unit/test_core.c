/*
 * test_core.c - the residency core's states and transitions, keep-alive,
 * offload chain, failure back-off, explicit operations, events, statistics
 * and bad input. Manual clock, scripted completions; nothing sleeps.
 */
#include "harness.h"

static harness H;

static int setup(void **state) {
  mb_ctx_opts o;
  h_init_opts(&H, &o);
  h_start(&H, &o);
  h_device(&H, 1000);
  *state = &H;
  return 0;
}

static int teardown(void **state) {
  (void)state;
  if (H.ctx)
    h_free(&H);
  return 0;
}

/* Lazy load: nothing happens until the first acquire; then load, then lease. */
static void test_lazy_load(void **state) {
  h_model_fp(&H, "a", 100, 60000);
  h_settle(&H);
  assert_int_equal(H.njobs, 0);
  assert_int_equal(h_state(&H, "a"), MB_STATE_UNLOADED);

  h_answer a;
  h_acquire(&H, "a", NULL, &a);
  assert_false(a.done);
  assert_int_equal(h_state(&H, "a"), MB_STATE_LOADING);
  assert_int_equal(h_job_kind(&H, "a"), MB_JOB_LOAD);
  assert_int_equal(h_dev_used(&H, 0), 100); /* in-flight loads count */

  h_complete_after(&H, "a", 0, 250, NULL);
  assert_true(a.done);
  assert_int_equal(a.rc, 0);
  assert_true(a.lease.id != 0);
  assert_int_equal(a.load_ns, 250 * MS);
  mb_status st = h_status(&H, "a");
  assert_int_equal(st.state, MB_STATE_READY);
  assert_int_equal(st.location, MB_LOC_GPU);
  assert_int_equal(st.inflight, 1);
  assert_int_equal(st.is_loaded, 1);
  assert_int_equal(st.stats.loads, 1);
  assert_int_equal(st.stats.requests, 1);
  assert_true(st.stats.last_load_ms > 249 && st.stats.last_load_ms < 251);
  assert_false(st.timer_active); /* in use: the idle clock does not run */
  h_release(&H, &a);
}

/* keep-alive expires -> offload -> host keep-alive expires -> full release. */
static void test_offload_chain(void **state) {
  mb_model_opts o;
  mb_model_opts_init(&o);
  o.footprint_bytes = 100;
  o.keep_alive_ms = 5000;
  o.host_keep_alive_ms = 20000;
  h_model(&H, "a", &o);
  h_answer a;
  h_acquire(&H, "a", NULL, &a);
  h_complete(&H, "a", 0);
  h_advance(&H, 10000 * MS); /* a long inference: the lease holds it */
  assert_int_equal(h_state(&H, "a"), MB_STATE_READY);
  assert_int_equal(H.njobs, 0);
  h_release(&H, &a);
  mb_status st = h_status(&H, "a");
  assert_true(st.timer_active);
  assert_int_equal(st.expires_at, H.now + 5000 * MS);

  h_advance(&H, 4999 * MS);
  assert_int_equal(h_state(&H, "a"), MB_STATE_READY);
  h_advance(&H, 1 * MS);
  assert_int_equal(h_state(&H, "a"), MB_STATE_OFFLOADING);
  assert_int_equal(h_job_kind(&H, "a"), MB_JOB_OFFLOAD);
  h_complete(&H, "a", 0);
  st = h_status(&H, "a");
  assert_int_equal(st.state, MB_STATE_OFFLOADED);
  assert_int_equal(st.location, MB_LOC_CPU);
  assert_int_equal(st.vram_bytes, 0);
  assert_int_equal(st.host_bytes, 100);
  assert_int_equal(h_dev_used(&H, 0), 0);
  uint64_t hb, hu;
  mb_host_tier(H.ctx, &hb, &hu);
  assert_int_equal(hu, 100);

  h_advance(&H, 19999 * MS);
  assert_int_equal(h_state(&H, "a"), MB_STATE_OFFLOADED);
  h_advance(&H, 1 * MS);
  assert_int_equal(h_state(&H, "a"), MB_STATE_UNLOADING);
  h_complete(&H, "a", 0);
  st = h_status(&H, "a");
  assert_int_equal(st.state, MB_STATE_UNLOADED);
  assert_int_equal(st.stats.offloads, 1);
  assert_int_equal(st.stats.full_releases, 1);
  assert_int_equal(st.stats.unloads, 1);
  mb_host_tier(H.ctx, &hb, &hu);
  assert_int_equal(hu, 0);
}

/* An offloaded model comes back through RESTORING, not a cold load. */
static void test_restore(void **state) {
  h_model_fp(&H, "a", 100, 1000);
  h_answer a, b;
  h_acquire(&H, "a", NULL, &a);
  h_complete(&H, "a", 0);
  h_release(&H, &a);
  h_advance(&H, 1000 * MS);
  h_complete(&H, "a", 0);
  assert_int_equal(h_state(&H, "a"), MB_STATE_OFFLOADED);
  h_acquire(&H, "a", NULL, &b);
  assert_int_equal(h_state(&H, "a"), MB_STATE_RESTORING);
  assert_int_equal(h_job_kind(&H, "a"), MB_JOB_RESTORE);
  h_complete_after(&H, "a", 0, 30, NULL);
  assert_int_equal(b.rc, 0);
  mb_status st = h_status(&H, "a");
  assert_int_equal(st.state, MB_STATE_READY);
  assert_int_equal(st.stats.restores, 1);
  assert_int_equal(st.stats.loads, 1);
  assert_true(st.stats.last_restore_ms > 29 && st.stats.last_restore_ms < 31);
  assert_int_equal(st.host_bytes, 0);
  h_release(&H, &b);
}

/* offload: false (or a backend that cannot) -> idle expiry unloads. */
static void test_idle_unload_when_no_offload(void **state) {
  mb_model_opts o;
  mb_model_opts_init(&o);
  o.footprint_bytes = 100;
  o.keep_alive_ms = 1000;
  o.offload = 0;
  h_model(&H, "a", &o);
  char err[128];
  assert_int_equal(mb_model_add(H.ctx, "b", &h_backend_no_offload, NULL, &o, err, sizeof(err)), 0);
  h_answer a, b;
  h_acquire(&H, "a", NULL, &a);
  h_acquire(&H, "b", NULL, &b);
  h_complete_all(&H);
  h_release(&H, &a);
  h_release(&H, &b);
  h_advance(&H, 1000 * MS);
  assert_int_equal(h_state(&H, "a"), MB_STATE_UNLOADING);
  assert_int_equal(h_state(&H, "b"), MB_STATE_UNLOADING);
  h_complete_all(&H);
  assert_int_equal(h_state(&H, "a"), MB_STATE_UNLOADED);
  assert_int_equal(h_status(&H, "a").stats.offloads, 0);
}

/* keep_alive 0: act as soon as idle. -1: never. */
static void test_keep_alive_zero_and_forever(void **state) {
  h_model_fp(&H, "zero", 10, 0);
  h_model_fp(&H, "ever", 10, MB_FOREVER);
  h_answer a, b;
  h_acquire(&H, "zero", NULL, &a);
  h_acquire(&H, "ever", NULL, &b);
  h_complete_all(&H);
  h_release(&H, &a);
  assert_int_equal(h_state(&H, "zero"), MB_STATE_OFFLOADING);
  h_release(&H, &b);
  assert_false(h_status(&H, "ever").timer_active);
  h_complete_all(&H);
  h_advance(&H, 1000000ull * MS);
  assert_int_equal(h_state(&H, "ever"), MB_STATE_READY);
  assert_int_equal(mb_ctx_next_deadline(H.ctx) == UINT64_MAX ||
                       h_state(&H, "zero") == MB_STATE_OFFLOADED,
                   1);
}

/* A per-acquire keep-alive overrides the model's for that use. */
static void h_simple_done(const mb_result *res, void *arg);

static void test_keep_alive_override(void **state) {
  h_model_fp(&H, "a", 10, 60000);
  mb_acquire_opts o;
  mb_acquire_opts_init(&o);
  o.keep_alive_ms = 2000;
  h_answer a;
  h_acquire(&H, "a", &o, &a);
  h_complete(&H, "a", 0);
  h_release(&H, &a);
  mb_status st = h_status(&H, "a");
  assert_int_equal(st.keep_alive_ms, 2000);
  assert_int_equal(st.expires_at, H.now + 2000 * MS);
  /* The next plain acquire goes back to the model's keep-alive. */
  h_acquire(&H, "a", NULL, &a);
  h_release(&H, &a);
  assert_int_equal(h_status(&H, "a").keep_alive_ms, 60000);

  /* So does a plain load, and a keep-alive asked for lasts one residency. */
  int r = 0;
  assert_int_equal(mb_load_async(H.ctx, "a", MB_FOREVER, h_simple_done, &r), 0);
  h_settle(&H);
  assert_int_equal(r, 1000);
  assert_int_equal(h_status(&H, "a").keep_alive_ms, MB_FOREVER);
  assert_int_equal(mb_load_async(H.ctx, "a", MB_DEFAULT, h_simple_done, &r), 0);
  h_settle(&H);
  assert_int_equal(h_status(&H, "a").keep_alive_ms, 60000);
  assert_int_equal(mb_load_async(H.ctx, "a", MB_FOREVER, h_simple_done, &r), 0);
  h_settle(&H);
  assert_int_equal(mb_unload_async(H.ctx, "a", h_simple_done, &r), 0);
  h_settle(&H);
  h_complete(&H, "a", 0);
  assert_int_equal(h_state(&H, "a"), MB_STATE_UNLOADED);
  assert_int_equal(h_status(&H, "a").keep_alive_ms, 60000);
  assert_int_equal(mb_load_async(H.ctx, "a", MB_DEFAULT, h_simple_done, &r), 0);
  h_settle(&H);
  h_complete(&H, "a", 0);
  assert_int_equal(r, 1000);
  assert_int_equal(h_status(&H, "a").keep_alive_ms, 60000);
  assert_true(h_status(&H, "a").timer_active);
}

static void h_simple_done(const mb_result *res, void *arg) {
  *(int *)arg = res->rc + 1000; /* 1000 = answered with 0 */
}

/* mb_keep_alive re-arms from now, and -1 cancels the timer. */
static void test_keep_alive_rearm_and_cancel(void **state) {
  h_model_fp(&H, "a", 10, 5000);
  h_answer a;
  h_acquire(&H, "a", NULL, &a);
  h_complete(&H, "a", 0);
  h_release(&H, &a);
  h_advance(&H, 4000 * MS);
  int r = 0;
  assert_int_equal(mb_keep_alive_async(H.ctx, "a", 3000, h_simple_done, &r), 0);
  h_settle(&H);
  assert_int_equal(r, 1000);
  mb_status st = h_status(&H, "a");
  assert_int_equal(st.expires_at, H.now + 3000 * MS);
  h_advance(&H, 2000 * MS);
  assert_int_equal(h_state(&H, "a"), MB_STATE_READY);
  assert_int_equal(mb_keep_alive_async(H.ctx, "a", MB_FOREVER, h_simple_done, &r), 0);
  h_settle(&H);
  assert_false(h_status(&H, "a").timer_active);
  h_advance(&H, 100000 * MS);
  assert_int_equal(h_state(&H, "a"), MB_STATE_READY);
  assert_int_equal(mb_keep_alive_async(H.ctx, "a", -5, h_simple_done, &r), MB_EINVAL);
}

/* FAILED: every waiter gets the error; back-off 1 s doubling; retry works. */
static void test_failed_backoff(void **state) {
  h_model_fp(&H, "a", 10, 1000);
  h_answer a, b, c, d;
  h_acquire(&H, "a", NULL, &a);
  h_acquire(&H, "a", NULL, &b);
  h_complete(&H, "a", MB_EBACKEND);
  assert_int_equal(a.rc, MB_ELOAD);
  assert_int_equal(b.rc, MB_ELOAD);
  assert_non_null(strstr(a.msg, "scripted failure"));
  mb_status st = h_status(&H, "a");
  assert_int_equal(st.state, MB_STATE_FAILED);
  assert_string_equal(st.error, "scripted failure");
  assert_int_equal(st.stats.load_failures, 1);
  assert_int_equal(h_dev_used(&H, 0), 0);

  /* Within the back-off: the error at once, no new load. */
  h_advance(&H, 500 * MS);
  h_acquire(&H, "a", NULL, &c);
  assert_true(c.done);
  assert_int_equal(c.rc, MB_ELOAD);
  assert_non_null(strstr(c.msg, "next retry"));
  assert_int_equal(H.njobs, 0);

  /* After 1 s: the next acquire retries; a second failure doubles it. */
  h_advance(&H, 500 * MS);
  h_acquire(&H, "a", NULL, &c);
  assert_int_equal(h_state(&H, "a"), MB_STATE_LOADING);
  h_complete(&H, "a", MB_EBACKEND);
  assert_int_equal(c.rc, MB_ELOAD);
  h_advance(&H, 1500 * MS);
  h_acquire(&H, "a", NULL, &d);
  assert_int_equal(d.rc, MB_ELOAD); /* 1.5 s < 2 s */
  h_advance(&H, 500 * MS);
  h_acquire(&H, "a", NULL, &d);
  h_complete(&H, "a", 0);
  assert_int_equal(d.rc, 0);
  st = h_status(&H, "a");
  assert_int_equal(st.state, MB_STATE_READY);
  assert_string_equal(st.error, "");
  h_release(&H, &d);
}

/* A caller that stops waiting does not abort the load. */
static void test_timeout_does_not_abort_load(void **state) {
  h_model_fp(&H, "a", 10, 60000);
  mb_acquire_opts o;
  mb_acquire_opts_init(&o);
  o.timeout_ms = 100;
  h_answer a;
  h_acquire(&H, "a", &o, &a);
  h_advance(&H, 100 * MS);
  assert_int_equal(a.rc, MB_ETIMEDOUT);
  assert_int_equal(h_state(&H, "a"), MB_STATE_LOADING);
  h_complete(&H, "a", 0);
  assert_int_equal(h_state(&H, "a"), MB_STATE_READY);
  assert_int_equal(h_status(&H, "a").stats.timeouts, 1);
}

/* Explicit load, offload and unload; unload waits for leases to drain. */
static void test_explicit_ops(void **state) {
  h_model_fp(&H, "a", 10, 60000);
  int r = 0;
  assert_int_equal(mb_offload_async(H.ctx, "a", h_simple_done, &r), 0);
  h_settle(&H);
  assert_int_equal(r, 1000 + MB_ESTATE);

  assert_int_equal(mb_load_async(H.ctx, "a", 7000, h_simple_done, &r), 0);
  h_settle(&H);
  assert_int_equal(h_state(&H, "a"), MB_STATE_LOADING);
  h_complete(&H, "a", 0);
  assert_int_equal(r, 1000);
  mb_status st = h_status(&H, "a");
  assert_int_equal(st.state, MB_STATE_READY);
  assert_int_equal(st.expires_at, H.now + 7000 * MS);

  h_answer a;
  h_acquire(&H, "a", NULL, &a);
  r = 0;
  assert_int_equal(mb_unload_async(H.ctx, "a", h_simple_done, &r), 0);
  h_settle(&H);
  assert_int_equal(r, 0); /* waits for the lease */
  assert_int_equal(h_state(&H, "a"), MB_STATE_READY);
  /* New acquires wait while the unload is pending. */
  h_answer b;
  h_acquire(&H, "a", NULL, &b);
  assert_false(b.done);
  h_release(&H, &a);
  assert_int_equal(h_state(&H, "a"), MB_STATE_UNLOADING);
  h_complete(&H, "a", 0);
  assert_int_equal(r, 1000);
  /* The waiter loads it again. */
  assert_int_equal(h_state(&H, "a"), MB_STATE_LOADING);
  h_complete(&H, "a", 0);
  assert_int_equal(b.rc, 0);
  h_release(&H, &b);

  /* Explicit offload whatever the policy says, after which it is OFFLOADED. */
  r = 0;
  assert_int_equal(mb_offload_async(H.ctx, "a", h_simple_done, &r), 0);
  h_settle(&H);
  h_complete(&H, "a", 0);
  assert_int_equal(r, 1000);
  assert_int_equal(h_state(&H, "a"), MB_STATE_OFFLOADED);
  r = 0;
  assert_int_equal(mb_unload_async(H.ctx, "a", h_simple_done, &r), 0);
  h_settle(&H);
  h_complete(&H, "a", 0);
  assert_int_equal(r, 1000);
  assert_int_equal(h_state(&H, "a"), MB_STATE_UNLOADED);
}

static void test_offload_not_supported(void **state) {
  char err[128];
  assert_int_equal(mb_model_add(H.ctx, "b", &h_backend_no_offload, NULL, NULL, err, sizeof(err)),
                   0);
  int r = 0;
  assert_int_equal(mb_offload_async(H.ctx, "b", h_simple_done, &r), 0);
  h_settle(&H);
  assert_int_equal(r, 1000 + MB_ENOTSUP);
}

/* Unload of a FAILED model resets it. */
static void test_unload_resets_failed(void **state) {
  h_model_fp(&H, "a", 10, 1000);
  h_answer a;
  h_acquire(&H, "a", NULL, &a);
  h_complete(&H, "a", MB_EBACKEND);
  int r = 0;
  assert_int_equal(mb_unload_async(H.ctx, "a", h_simple_done, &r), 0);
  h_settle(&H);
  assert_int_equal(r, 1000);
  assert_int_equal(h_state(&H, "a"), MB_STATE_UNLOADED);
  h_acquire(&H, "a", NULL, &a); /* no back-off any more */
  assert_int_equal(h_state(&H, "a"), MB_STATE_LOADING);
  h_complete(&H, "a", 0);
  h_release(&H, &a);
}

/* Nested leases of one model are reference counted. */
static void test_nested_leases(void **state) {
  mb_model_opts o;
  mb_model_opts_init(&o);
  o.footprint_bytes = 10;
  o.keep_alive_ms = 1000;
  o.max_concurrency = 2;
  h_model(&H, "a", &o);
  h_answer a, b;
  h_acquire(&H, "a", NULL, &a);
  h_acquire(&H, "a", NULL, &b);
  h_complete(&H, "a", 0);
  assert_int_equal(a.rc, 0);
  assert_int_equal(b.rc, 0);
  assert_true(a.lease.id != b.lease.id);
  assert_int_equal(h_status(&H, "a").inflight, 2);
  h_release(&H, &a);
  h_advance(&H, 5000 * MS);
  assert_int_equal(h_state(&H, "a"), MB_STATE_READY); /* still leased */
  h_release(&H, &b);
  assert_true(h_status(&H, "a").timer_active);
}

/* Bad input: unknown models, double release, foreign leases, bad options. */
static void test_bad_input(void **state) {
  char err[256];
  h_answer a;
  h_acquire(&H, "nope", NULL, &a);
  assert_int_equal(a.rc, MB_ENOENT);
  assert_non_null(strstr(a.msg, "nope"));
  mb_status st;
  assert_int_equal(mb_model_status(H.ctx, "nope", &st), MB_ENOENT);

  h_model_fp(&H, "a", 10, 1000);
  assert_int_equal(mb_model_add(H.ctx, "a", &h_backend, NULL, NULL, err, sizeof(err)), MB_EEXIST);
  mb_model_opts o;
  mb_model_opts_init(&o);
  o.max_concurrency = 0;
  assert_int_equal(mb_model_add(H.ctx, "z", &h_backend, NULL, &o, err, sizeof(err)), MB_EINVAL);
  assert_non_null(strstr(err, "max_concurrency"));
  mb_model_opts_init(&o);
  o.max_queue = -1;
  assert_int_equal(mb_model_add(H.ctx, "z", &h_backend, NULL, &o, err, sizeof(err)), MB_EINVAL);
  mb_model_opts_init(&o);
  o.keep_alive_ms = -7;
  assert_int_equal(mb_model_add(H.ctx, "z", &h_backend, NULL, &o, err, sizeof(err)), MB_EINVAL);
  mb_model_opts_init(&o);
  o.device = 5;
  assert_int_equal(mb_model_add(H.ctx, "z", &h_backend, NULL, &o, err, sizeof(err)), MB_ENODEV);
  assert_int_equal(mb_model_add(H.ctx, "", &h_backend, NULL, NULL, err, sizeof(err)), MB_EINVAL);
  assert_int_equal(mb_model_add(H.ctx, "a b", &h_backend, NULL, NULL, err, sizeof(err)),
                   MB_EINVAL);
  assert_int_equal(mb_model_add(H.ctx, "a\tb", &h_backend, NULL, NULL, err, sizeof(err)),
                   MB_EINVAL);
  /* A name as Hugging Face and vLLM write them is a name. */
  assert_int_equal(mb_model_add(H.ctx, "org/model-7B", &h_backend, NULL, NULL, err, sizeof(err)),
                   0);
  mb_backend half = h_backend;
  half.restore = NULL;
  assert_int_equal(mb_model_add(H.ctx, "z", &half, NULL, NULL, err, sizeof(err)), MB_EINVAL);
  mb_device_opts d;
  mb_device_opts_init(&d);
  d.capacity_bytes = 100;
  d.reserve_bytes = 100;
  assert_int_equal(mb_device_add(H.ctx, &d, NULL, err, sizeof(err)), MB_EINVAL);
  assert_non_null(strstr(err, "reserve"));

  h_acquire(&H, "a", NULL, &a);
  h_complete(&H, "a", 0);
  mb_lease foreign = {a.lease.id + 1000, 0};
  assert_int_equal(mb_release(H.ctx, foreign), MB_EINVAL);
  /* Freeing the context with a lease out is refused and changes nothing. */
  assert_int_equal(mb_ctx_free(H.ctx), MB_EBUSY);
  assert_int_equal(h_state(&H, "a"), MB_STATE_READY);
  assert_int_equal(mb_release(H.ctx, a.lease), 0);
  assert_int_equal(mb_release(H.ctx, a.lease), MB_EINVAL); /* double release */
  h_settle(&H);
  assert_int_equal(h_status(&H, "a").inflight, 0);
  /* Blocking calls need a threaded context. */
  mb_lease l;
  assert_int_equal(mb_acquire(H.ctx, "a", NULL, &l, err, sizeof(err)), MB_EINVAL);
}

/* Every state change is an event, in order, with increasing seq. */
static void test_events_in_order(void **state) {
  h_model_fp(&H, "a", 10, 1000);
  h_answer a;
  h_acquire(&H, "a", NULL, &a);
  h_complete(&H, "a", 0);
  h_release(&H, &a);
  h_to_next_timer(&H);
  h_complete(&H, "a", 0);
  h_to_next_timer(&H);
  h_complete(&H, "a", 0);
  static const mb_state want[][2] = {
      {MB_STATE_UNLOADED, MB_STATE_LOADING},     {MB_STATE_LOADING, MB_STATE_READY},
      {MB_STATE_READY, MB_STATE_OFFLOADING},     {MB_STATE_OFFLOADING, MB_STATE_OFFLOADED},
      {MB_STATE_OFFLOADED, MB_STATE_UNLOADING},  {MB_STATE_UNLOADING, MB_STATE_UNLOADED},
  };
  static const char *want_reason[] = {"acquire", "loaded", "idle", "offloaded", "idle", "released"};
  int k = 0;
  uint64_t last_seq = 0;
  for (int i = 0; i < H.nevents; i++) {
    assert_true(H.events[i].seq > last_seq);
    last_seq = H.events[i].seq;
    if (H.events[i].type != MB_EVENT_STATE)
      continue;
    assert_true(k < 6);
    assert_int_equal(H.events[i].from, want[k][0]);
    assert_int_equal(H.events[i].to, want[k][1]);
    assert_string_equal(H.events[i].reason, want_reason[k]);
    k++;
  }
  assert_int_equal(k, 6);
}

/* The reason of the last state event of a model into state `to`. */
static const char *reason_into(const char *model, mb_state to) {
  for (int i = H.nevents - 1; i >= 0; i--)
    if (H.events[i].type == MB_EVENT_STATE && strcmp(H.events[i].model, model) == 0 &&
        H.events[i].to == to)
      return H.events[i].reason;
  return "(none)";
}

/* Every transition says why it happened: load, request, evict, error. */
static void test_event_reasons(void **state) {
  (void)state;
  h_model_fp(&H, "a", 600, 60000);
  h_model_fp(&H, "b", 600, 60000);
  int r = 0;
  assert_int_equal(mb_load_async(H.ctx, "a", MB_DEFAULT, h_simple_done, &r), 0);
  h_settle(&H);
  assert_string_equal(reason_into("a", MB_STATE_LOADING), "load");
  h_complete(&H, "a", 0);
  assert_int_equal(mb_offload_async(H.ctx, "a", h_simple_done, &r), 0);
  h_settle(&H);
  assert_string_equal(reason_into("a", MB_STATE_OFFLOADING), "request");
  h_complete(&H, "a", 0);
  assert_int_equal(mb_unload_async(H.ctx, "a", h_simple_done, &r), 0);
  h_settle(&H);
  assert_string_equal(reason_into("a", MB_STATE_UNLOADING), "request");
  h_complete(&H, "a", 0);

  /* a is READY and idle; b does not fit beside it: a is evicted. */
  h_answer x;
  h_acquire(&H, "a", NULL, &x);
  h_complete(&H, "a", 0);
  h_release(&H, &x);
  h_answer y;
  h_acquire(&H, "b", NULL, &y);
  assert_int_equal(h_state(&H, "a"), MB_STATE_OFFLOADING);
  assert_string_equal(reason_into("a", MB_STATE_OFFLOADING), "evict");
  h_complete(&H, "a", 0);
  assert_string_equal(reason_into("b", MB_STATE_LOADING), "acquire");
  /* A failed load says so. */
  h_complete(&H, "b", MB_ELOAD);
  assert_int_equal(h_state(&H, "b"), MB_STATE_FAILED);
  assert_true(strncmp(reason_into("b", MB_STATE_FAILED), "error", 5) == 0);
  assert_true(y.done);
}

/* Statistics: load average, slow-load warning, wait histogram. */
static void test_stats_and_slow_load(void **state) {
  h_model_fp(&H, "a", 10, 0);
  mb_model_opts o;
  mb_model_opts_init(&o);
  o.offload = 0;
  o.keep_alive_ms = 0;
  o.footprint_bytes = 10;
  h_model(&H, "b", &o);
  h_answer a;
  uint64_t took[] = {100, 100, 100, 500};
  for (int i = 0; i < 4; i++) {
    h_acquire(&H, "b", NULL, &a);
    h_complete_after(&H, "b", 0, took[i], NULL);
    assert_int_equal(a.rc, 0);
    h_release(&H, &a);
    assert_int_equal(h_state(&H, "b"), MB_STATE_UNLOADING);
    h_complete(&H, "b", 0);
  }
  mb_status st = h_status(&H, "b");
  assert_int_equal(st.stats.loads, 4);
  assert_int_equal(st.stats.unloads, 4);
  assert_true(st.stats.last_load_ms > 499 && st.stats.last_load_ms < 501);
  assert_true(st.stats.avg_load_ms > 199 && st.stats.avg_load_ms < 201);
  assert_true(st.warnings & MB_WARN_SLOW_LOAD);
  assert_non_null(strstr(st.warning_text, "average"));
  assert_int_equal(st.stats.wait_count, 4);
  /* Waits of 100, 100, 100 and 500 ms. */
  uint64_t total = 0;
  for (int i = 0; i < MB_WAIT_BUCKETS; i++)
    total += st.stats.wait_buckets[i];
  assert_int_equal(total, 4);
  assert_true(st.stats.wait_sum_ms > 799 && st.stats.wait_sum_ms < 801);
  /* A normal load clears the warning. */
  h_acquire(&H, "b", NULL, &a);
  h_complete_after(&H, "b", 0, 100, NULL);
  h_release(&H, &a);
  assert_false(h_status(&H, "b").warnings & MB_WARN_SLOW_LOAD);
}

/* Measured footprints replace the declared one; growth raises a warning. */
static void test_measured_footprint_and_growth(void **state) {
  mb_model_opts o;
  mb_model_opts_init(&o);
  o.footprint_bytes = 100;
  o.keep_alive_ms = 0;
  o.offload = 0;
  h_model(&H, "a", &o);
  h_answer a;
  uint64_t sizes[] = {50};
  for (int i = 0; i < 1; i++) {
    mb_usage u = {sizes[i], 0};
    h_acquire(&H, "a", NULL, &a);
    h_complete_after(&H, "a", 0, 1, &u);
    assert_int_equal(h_status(&H, "a").vram_bytes, sizes[i]);
    assert_int_equal(h_dev_used(&H, 0), sizes[i]);
    h_release(&H, &a);
    h_complete(&H, "a", 0);
  }
  /* The next admission charges what was measured. */
  assert_int_equal(h_status(&H, "a").footprint_bytes, 50);
  h_acquire(&H, "a", NULL, &a);
  assert_int_equal(h_dev_used(&H, 0), 50);
  h_complete(&H, "a", 0);
  h_release(&H, &a);
  h_complete(&H, "a", 0);
}

static void test_growth_warning(void **state) {
  harness *h = &H;
  h_free(h);
  mb_ctx_opts co;
  h_init_opts(h, &co);
  h_start(h, &co);
  h_device(h, 1ull << 40);
  mb_model_opts o;
  mb_model_opts_init(&o);
  o.keep_alive_ms = 0;
  o.offload = 0;
  h_model(h, "leaky", &o);
  h_answer a;
  for (int i = 0; i < 5; i++) {
    mb_usage u = {(uint64_t)(100 + 10 * i) << 20, 0};
    h_acquire(h, "leaky", NULL, &a);
    h_complete_after(h, "leaky", 0, 1, &u);
    h_release(h, &a);
    h_complete(h, "leaky", 0);
  }
  mb_status st = h_status(h, "leaky");
  assert_true(st.warnings & MB_WARN_MEMORY_GROWTH);
  assert_non_null(strstr(st.warning_text, "grew"));
}

/* Cost policy: a context with room for two models of 100 bytes that
 * cannot offload, so every eviction is a full unload. */
static int cost_setup(void **state) {
  mb_ctx_opts o;
  h_init_opts(&H, &o);
  o.eviction = MB_EVICT_COST;
  h_start(&H, &o);
  h_device(&H, 200);
  mb_model_opts m;
  mb_model_opts_init(&m);
  m.footprint_bytes = 100;
  m.keep_alive_ms = MB_FOREVER;
  m.offload = 0;
  h_model(&H, "a", &m);
  h_model(&H, "b", &m);
  h_model(&H, "c", &m);
  *state = &H;
  return 0;
}

/* Uses a model once, each load taking 1 s, and lets 10 s pass. */
static void use_1s(const char *name) {
  h_answer a;
  h_acquire(&H, name, NULL, &a);
  if (!a.done)
    h_complete_after(&H, name, 0, 1000, NULL);
  assert_int_equal(a.rc, 0);
  h_release(&H, &a);
  h_advance(&H, 10000 * MS);
}

/* a was used 60 times, then not for 3 hours: its next use comes after a
 * gap far longer than its count implies, so the count restarts from that
 * gap, and a goes before b (10 uses, 3 hours ago too) although a is the
 * more recent. On the old count (about 28) b would have gone. */
static void test_cost_count_restarts_after_drop(void **state) {
  (void)state;
  for (int i = 0; i < 60; i++)
    use_1s("a");
  for (int i = 0; i < 10; i++)
    use_1s("b");
  h_advance(&H, 3ull * 3600 * 1000 * MS);
  use_1s("a");
  h_answer c;
  h_acquire(&H, "c", NULL, &c);
  assert_int_equal(h_state(&H, "a"), MB_STATE_UNLOADING);
  assert_int_equal(h_state(&H, "b"), MB_STATE_READY);
  h_complete_all(&H);
  assert_int_equal(c.rc, 0);
  h_release(&H, &c);
}

/* A burst: ten acquires of b while the first holds its only slot. Those
 * that find others already waiting are not counted, so b counts 2 uses
 * and goes before a (4 uses), the older. Counting all ten, a would go. */
static void test_cost_burst_counts_once(void **state) {
  (void)state;
  for (int i = 0; i < 4; i++)
    use_1s("a");
  h_answer burst[10];
  h_acquire(&H, "b", NULL, &burst[0]);
  h_complete_after(&H, "b", 0, 1000, NULL);
  assert_true(burst[0].done);
  for (int i = 1; i < 10; i++)
    h_acquire(&H, "b", NULL, &burst[i]);
  assert_int_equal(h_status(&H, "b").queued, 9);
  for (int i = 0; i < 10; i++) {
    assert_true(burst[i].done);
    h_release(&H, &burst[i]);
  }
  h_advance(&H, 10000 * MS);
  h_answer c;
  h_acquire(&H, "c", NULL, &c);
  assert_int_equal(h_state(&H, "b"), MB_STATE_UNLOADING);
  assert_int_equal(h_state(&H, "a"), MB_STATE_READY);
  h_complete_all(&H);
  assert_int_equal(c.rc, 0);
  h_release(&H, &c);
}

/*
 * Option structs carry their size (the ABI rule of modelbuf.h): one not
 * filled by its *_init (size 0), or from a newer header than the library
 * (a larger size), is refused with MB_EINVAL and a message; nothing is
 * registered. The exact size is the one *_init sets.
 */
static void test_opts_size(void **state) {
  (void)state;
  char err[256] = "";
  mb_model_opts mo;
  mb_model_opts_init(&mo);
  assert_int_equal(mo.size, sizeof(mo));
  mo.size = 0;
  assert_int_equal(mb_model_add(H.ctx, "s", &h_backend, NULL, &mo, err, sizeof(err)), MB_EINVAL);
  assert_non_null(strstr(err, "mb_model_opts_init"));
  mo.size = sizeof(mo) + 8;
  assert_int_equal(mb_model_add(H.ctx, "s", &h_backend, NULL, &mo, err, sizeof(err)), MB_EINVAL);
  assert_int_equal(mb_model_count(H.ctx), 0);
  mo.size = sizeof(mo);
  mo.footprint_bytes = 10;
  assert_int_equal(mb_model_add(H.ctx, "s", &h_backend, NULL, &mo, err, sizeof(err)), 0);

  mb_device_opts d;
  mb_device_opts_init(&d);
  assert_int_equal(d.size, sizeof(d));
  d.capacity_bytes = 100;
  d.size = 0;
  assert_int_equal(mb_device_add(H.ctx, &d, NULL, err, sizeof(err)), MB_EINVAL);
  assert_non_null(strstr(err, "mb_device_opts"));
  assert_int_equal(mb_device_count(H.ctx), 1);

  mb_ctx_opts co;
  mb_ctx_opts_init(&co);
  assert_int_equal(co.size, sizeof(co));
  co.size = sizeof(co) * 2;
  mb_ctx *ctx = NULL;
  assert_int_equal(mb_ctx_new(&co, &ctx, err, sizeof(err)), MB_EINVAL);
  assert_null(ctx);
  assert_non_null(strstr(err, "mb_ctx_opts"));

  mb_acquire_opts ao;
  mb_acquire_opts_init(&ao);
  assert_int_equal(ao.size, sizeof(ao));
  ao.size = 0;
  uint64_t id = 0;
  assert_int_equal(mb_acquire_async(H.ctx, "s", &ao, h_done, NULL, &id), MB_EINVAL);
  mb_result res;
  assert_int_equal(mb_acquire_try(H.ctx, "s", &ao, &res), MB_EINVAL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_lazy_load, setup, teardown),
      cmocka_unit_test_setup_teardown(test_opts_size, setup, teardown),
      cmocka_unit_test_setup_teardown(test_offload_chain, setup, teardown),
      cmocka_unit_test_setup_teardown(test_restore, setup, teardown),
      cmocka_unit_test_setup_teardown(test_idle_unload_when_no_offload, setup, teardown),
      cmocka_unit_test_setup_teardown(test_keep_alive_zero_and_forever, setup, teardown),
      cmocka_unit_test_setup_teardown(test_keep_alive_override, setup, teardown),
      cmocka_unit_test_setup_teardown(test_keep_alive_rearm_and_cancel, setup, teardown),
      cmocka_unit_test_setup_teardown(test_failed_backoff, setup, teardown),
      cmocka_unit_test_setup_teardown(test_timeout_does_not_abort_load, setup, teardown),
      cmocka_unit_test_setup_teardown(test_explicit_ops, setup, teardown),
      cmocka_unit_test_setup_teardown(test_offload_not_supported, setup, teardown),
      cmocka_unit_test_setup_teardown(test_unload_resets_failed, setup, teardown),
      cmocka_unit_test_setup_teardown(test_nested_leases, setup, teardown),
      cmocka_unit_test_setup_teardown(test_bad_input, setup, teardown),
      cmocka_unit_test_setup_teardown(test_events_in_order, setup, teardown),
      cmocka_unit_test_setup_teardown(test_event_reasons, setup, teardown),
      cmocka_unit_test_setup_teardown(test_stats_and_slow_load, setup, teardown),
      cmocka_unit_test_setup_teardown(test_measured_footprint_and_growth, setup, teardown),
      cmocka_unit_test_setup_teardown(test_growth_warning, setup, teardown),
      cmocka_unit_test_setup_teardown(test_cost_count_restarts_after_drop, cost_setup, teardown),
      cmocka_unit_test_setup_teardown(test_cost_burst_counts_once, cost_setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
