/*
 * test_lost.c - what the core does when a backend reports a resident model
 * lost (mb_model_lost), when an unload cancels a load (backend cancel), and
 * how a waiter's queue timeout stands still while its model loads for it
 * (queue_timeout_excludes_load). Manual clock, scripted completions; nothing
 * sleeps.
 */
#include "harness.h"

static harness H;

static int setup(void **state) {
  mb_ctx_opts o;
  (void)state;
  h_init_opts(&H, &o);
  h_start(&H, &o);
  h_device(&H, 1000);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  if (H.ctx)
    h_free(&H);
  return 0;
}

/* Cancels the backend saw: how many, and the residency of the last. */
static int cancels;
static uint64_t cancel_residency;
static char cancel_model[64];

static int cancel_rec(mb_op *op) {
  cancels++;
  cancel_residency = op->residency;
  snprintf(cancel_model, sizeof(cancel_model), "%s", op->model);
  return 0;
}

static const mb_backend with_cancel = {"scripted", h_nop, h_nop, h_nop, h_nop,
                                       NULL,       NULL,  NULL,  cancel_rec};

/* An async answer's rc into an int (-99 until answered). */
static void rc_done(const mb_result *res, void *arg) {
  *(int *)arg = res->rc;
}

static void model_opts(mb_model_opts *o) {
  mb_model_opts_init(o);
  o->footprint_bytes = 100;
  o->keep_alive_ms = MB_FOREVER;
}

/* Acquires a, completes its load and keeps the lease in *l. */
static void ready_with_lease(const char *name, h_answer *l) {
  h_acquire(&H, name, NULL, l);
  h_complete(&H, name, 0);
  assert_int_equal(l->rc, 0);
  assert_int_equal(h_state(&H, name), MB_STATE_READY);
}

static void lost(const char *name, uint64_t residency, int flags, const char *why) {
  assert_int_equal(mb_model_lost(H.ctx, name, residency, flags, why), 0);
  h_settle(&H);
}

static int count_type(mb_event_type t, const char *model) {
  int n = 0;
  for (int i = 0; i < H.nevents; i++)
    if (H.events[i].type == t && strcmp(H.events[i].model, model) == 0)
      n++;
  return n;
}

static const h_event *last_of(mb_event_type t, const char *model) {
  for (int i = H.nevents - 1; i >= 0; i--)
    if (H.events[i].type == t && strcmp(H.events[i].model, model) == 0)
      return &H.events[i];
  return NULL;
}

/* A READY model lost under a lease: the event, the count, UNLOADING through
 * the backend's unload, the lease ends with MB_ELOST. */
static void test_lost_ready_model(void **state) {
  mb_model_opts o;
  model_opts(&o);
  h_model(&H, "a", &o);
  h_answer l;
  ready_with_lease("a", &l);
  assert_int_equal(h_status(&H, "a").residency, 1);
  assert_int_equal(h_dev_used(&H, 0), 100);

  lost("a", 1, 0, "exited: status 3");
  assert_int_equal(count_type(MB_EVENT_LOST, "a"), 1);
  assert_string_equal(last_of(MB_EVENT_LOST, "a")->reason, "exited: status 3");
  const h_event *st = last_of(MB_EVENT_STATE, "a");
  assert_int_equal(st->from, MB_STATE_READY);
  assert_int_equal(st->to, MB_STATE_UNLOADING);
  assert_string_equal(st->reason, "lost");
  assert_int_equal(h_job_kind(&H, "a"), MB_JOB_UNLOAD);
  mb_status s = h_status(&H, "a");
  assert_int_equal(s.stats.crashes, 1);
  assert_int_equal(s.inflight, 0);
  assert_string_equal(s.lost_reason, "exited: status 3");
  assert_int_equal(s.lost_at, H.now);
  mb_device_info di;
  assert_int_equal(mb_device_info_get(H.ctx, 0, &di), 0);
  assert_int_equal(di.leases, 0);

  h_complete(&H, "a", 0);
  s = h_status(&H, "a");
  assert_int_equal(s.state, MB_STATE_UNLOADED);
  assert_string_equal(s.error, ""); /* one loss is not a failure */
  assert_int_equal(h_dev_used(&H, 0), 0);
  /* The lease ended with the model: its holder learns it once. */
  assert_int_equal(mb_release(H.ctx, l.lease), MB_ELOST);
  assert_int_equal(mb_release(H.ctx, l.lease), MB_EINVAL);
  h_settle(&H);
}

/* Waiters stay queued through the loss and are served by the next load,
 * which is admitted and counted as any load. */
static void test_waiters_served_by_next_load(void **state) {
  mb_model_opts o;
  model_opts(&o);
  h_model(&H, "a", &o);
  h_answer l, w;
  ready_with_lease("a", &l);
  h_acquire(&H, "a", NULL, &w);
  assert_false(w.done);
  lost("a", 0, 0, "killed: SIGKILL"); /* 0: the current residency */
  assert_false(w.done);
  assert_int_equal(h_status(&H, "a").queued, 1);
  h_complete(&H, "a", 0); /* the unload */
  /* The waiter brings a new load, through admission, like any acquire. */
  assert_int_equal(h_state(&H, "a"), MB_STATE_LOADING);
  assert_int_equal(h_job_kind(&H, "a"), MB_JOB_LOAD);
  assert_string_equal(last_of(MB_EVENT_STATE, "a")->reason, "acquire");
  h_complete_after(&H, "a", 0, 40, NULL);
  assert_true(w.done);
  assert_int_equal(w.rc, 0);
  assert_int_equal(w.load_ns, 40 * MS);
  mb_status s = h_status(&H, "a");
  assert_int_equal(s.stats.loads, 2);
  assert_int_equal(s.stats.crashes, 1);
  assert_int_equal(s.residency, 2);
  assert_int_equal(mb_release(H.ctx, l.lease), MB_ELOST);
  h_release(&H, &w);
}

/* Reports of another residency, or of a model not resident, change nothing. */
static void test_stale_reports_ignored(void **state) {
  mb_model_opts o;
  model_opts(&o);
  h_model(&H, "a", &o);
  lost("a", 0, 0, "exited: status 1"); /* UNLOADED */
  h_answer l;
  ready_with_lease("a", &l);
  h_release(&H, &l);
  int r = -99;
  assert_int_equal(mb_unload_async(H.ctx, "a", rc_done, &r), 0);
  h_settle(&H);
  h_complete(&H, "a", 0);
  ready_with_lease("a", &l); /* residency 2 now */
  lost("a", 1, 0, "exited: status 1"); /* about the first process */
  assert_int_equal(h_state(&H, "a"), MB_STATE_READY);
  assert_int_equal(h_status(&H, "a").stats.crashes, 0);
  assert_int_equal(count_type(MB_EVENT_LOST, "a"), 0);
  lost("nosuch", 0, 0, "exited"); /* an unknown model: nothing */
  h_release(&H, &l);
  /* Bad arguments are refused without posting. */
  assert_int_equal(mb_model_lost(NULL, "a", 0, 0, "x"), MB_EINVAL);
  assert_int_equal(mb_model_lost(H.ctx, NULL, 0, 0, "x"), MB_EINVAL);
  assert_int_equal(mb_model_lost(H.ctx, "a", 0, 0, NULL), MB_EINVAL);
}

/* A backend that records the residency each operation carries. */
static uint64_t seen_res[8];
static int nseen;
static int rec_op(mb_op *op) {
  if (nseen < 8)
    seen_res[nseen++] = op->residency;
  return 0;
}
static const mb_backend recorder = {"rec", rec_op, rec_op, rec_op, rec_op, NULL, NULL, NULL,
                                    NULL};

/* op->residency: +1 at each load and restore; offload and unload carry the
 * count of the residency they end. */
static void test_residency_in_ops(void **state) {
  mb_model_opts o;
  model_opts(&o);
  o.keep_alive_ms = 1000;
  char err[128];
  assert_int_equal(mb_model_add(H.ctx, "a", &recorder, NULL, &o, err, sizeof(err)), 0);
  nseen = 0;
  h_answer l;
  h_acquire(&H, "a", NULL, &l);
  mb_job *j = h_job(&H, "a");
  h_take(&H, j);
  mb_job_run(j); /* load */
  h_settle(&H);
  h_release(&H, &l);
  h_advance(&H, 1000 * MS); /* idle: offload */
  j = h_job(&H, "a");
  h_take(&H, j);
  mb_job_run(j);
  h_settle(&H);
  assert_int_equal(h_state(&H, "a"), MB_STATE_OFFLOADED);
  h_acquire(&H, "a", NULL, &l); /* restore */
  j = h_job(&H, "a");
  h_take(&H, j);
  mb_job_run(j);
  h_settle(&H);
  h_release(&H, &l);
  assert_int_equal(nseen, 3);
  assert_int_equal(seen_res[0], 1);
  assert_int_equal(seen_res[1], 1);
  assert_int_equal(seen_res[2], 2);
  assert_int_equal(h_status(&H, "a").residency, 2);
  /* A loss of the first residency is stale now. */
  lost("a", 1, 0, "exited: status 0");
  assert_int_equal(h_state(&H, "a"), MB_STATE_READY);
  lost("a", 2, 0, "exited: status 0");
  assert_int_equal(h_state(&H, "a"), MB_STATE_UNLOADING);
  j = h_job(&H, "a");
  h_take(&H, j);
  mb_job_run(j);
  h_settle(&H);
  assert_int_equal(nseen, 4);
  assert_int_equal(seen_res[3], 2); /* the unload of residency 2 */
}

/* crash_limit losses within crash_window: FAILED with back-off, waiters get
 * the error, the next acquire within the back-off too; after it, a load. */
static void test_crash_loop_fails_with_backoff(void **state) {
  mb_model_opts o;
  model_opts(&o);
  o.crash_limit = 3;
  o.crash_window_ms = 60000;
  h_model(&H, "a", &o);
  h_answer l, w;
  for (int i = 1; i <= 2; i++) {
    ready_with_lease("a", &l);
    h_advance(&H, 1000 * MS);
    lost("a", 0, 0, "exited: status 3");
    h_complete(&H, "a", 0);
    assert_int_equal(h_state(&H, "a"), MB_STATE_UNLOADED);
    assert_int_equal(mb_release(H.ctx, l.lease), MB_ELOST);
  }
  ready_with_lease("a", &l);
  h_acquire(&H, "a", NULL, &w); /* waits for the slot */
  lost("a", 0, 0, "exited: status 3");
  h_complete(&H, "a", 0);
  mb_status s = h_status(&H, "a");
  assert_int_equal(s.state, MB_STATE_FAILED);
  assert_int_equal(s.stats.crashes, 3);
  assert_non_null(strstr(s.error, "lost 3 times within 60 s"));
  assert_non_null(strstr(s.error, "exited: status 3"));
  assert_true(w.done);
  assert_int_equal(w.rc, MB_ELOAD);
  assert_non_null(strstr(w.msg, "lost 3 times"));
  assert_non_null(strstr(last_of(MB_EVENT_STATE, "a")->reason, "error: lost 3 times"));
  assert_int_equal(mb_release(H.ctx, l.lease), MB_ELOST);
  /* Within the back-off: the error at once. */
  h_acquire(&H, "a", NULL, &w);
  assert_true(w.done);
  assert_int_equal(w.rc, MB_ELOAD);
  assert_non_null(strstr(w.msg, "next retry"));
  assert_int_equal(H.njobs, 0);
  /* After it (1 s): a new load. */
  h_advance(&H, 1000 * MS);
  h_acquire(&H, "a", NULL, &w);
  assert_int_equal(h_state(&H, "a"), MB_STATE_LOADING);
  h_complete(&H, "a", 0);
  assert_int_equal(w.rc, 0);
  h_release(&H, &w);
}

/* Losses further apart than the window never add up to a failure; an
 * operator's unload of a FAILED model clears the history. */
static void test_crash_window_slides(void **state) {
  mb_model_opts o;
  model_opts(&o);
  o.crash_limit = 2;
  o.crash_window_ms = 10000;
  h_model(&H, "a", &o);
  h_answer l;
  for (int i = 0; i < 4; i++) {
    ready_with_lease("a", &l);
    lost("a", 0, 0, "killed: SIGSEGV");
    h_complete(&H, "a", 0);
    assert_int_equal(h_state(&H, "a"), MB_STATE_UNLOADED);
    assert_int_equal(mb_release(H.ctx, l.lease), MB_ELOST);
    h_advance(&H, 10001 * MS);
  }
  assert_int_equal(h_status(&H, "a").stats.crashes, 4);
  ready_with_lease("a", &l);
  lost("a", 0, 0, "killed: SIGSEGV");
  h_complete(&H, "a", 0);
  assert_int_equal(mb_release(H.ctx, l.lease), MB_ELOST);
  ready_with_lease("a", &l);
  lost("a", 0, 0, "killed: SIGSEGV");
  h_complete(&H, "a", 0);
  assert_int_equal(mb_release(H.ctx, l.lease), MB_ELOST);
  assert_int_equal(h_state(&H, "a"), MB_STATE_FAILED);
  int r = -99;
  assert_int_equal(mb_unload_async(H.ctx, "a", rc_done, &r), 0);
  h_settle(&H);
  assert_int_equal(r, 0);
  assert_int_equal(h_state(&H, "a"), MB_STATE_UNLOADED);
  ready_with_lease("a", &l);
  lost("a", 0, 0, "killed: SIGSEGV");
  h_complete(&H, "a", 0);
  assert_int_equal(h_state(&H, "a"), MB_STATE_UNLOADED); /* history cleared */
  assert_int_equal(mb_release(H.ctx, l.lease), MB_ELOST);
}

/* MB_LOST_FAIL: FAILED at the first loss, the reason as the error. */
static void test_lost_fail_flag(void **state) {
  mb_model_opts o;
  model_opts(&o);
  h_model(&H, "a", &o);
  h_answer l;
  ready_with_lease("a", &l);
  h_release(&H, &l);
  lost("a", 0, MB_LOST_FAIL, "memory_limit: 300 MiB measured, limit 128 MiB");
  h_complete(&H, "a", 0);
  mb_status s = h_status(&H, "a");
  assert_int_equal(s.state, MB_STATE_FAILED);
  assert_string_equal(s.error, "memory_limit: 300 MiB measured, limit 128 MiB");
  assert_int_equal(s.stats.crashes, 1);
  h_answer w;
  h_acquire(&H, "a", NULL, &w);
  assert_int_equal(w.rc, MB_ELOAD);
  assert_non_null(strstr(w.msg, "memory_limit"));
}

/* An OFFLOADED model can be lost too (a worker kept in host memory): its
 * host bytes go when the unload completes. Offload requests pending on a
 * lost model are answered MB_ELOST. */
static void test_lost_offloaded_and_pending_offload(void **state) {
  mb_model_opts o;
  model_opts(&o);
  h_model(&H, "a", &o);
  h_answer l;
  ready_with_lease("a", &l);
  int off = -99;
  assert_int_equal(mb_offload_async(H.ctx, "a", rc_done, &off), 0);
  h_settle(&H);
  assert_int_equal(off, -99); /* waits for the lease */
  lost("a", 0, 0, "killed: SIGKILL");
  assert_int_equal(off, MB_ELOST);
  h_complete(&H, "a", 0);
  assert_int_equal(mb_release(H.ctx, l.lease), MB_ELOST);
  ready_with_lease("a", &l);
  h_release(&H, &l);
  assert_int_equal(mb_offload_async(H.ctx, "a", rc_done, &off), 0);
  h_settle(&H);
  h_complete(&H, "a", 0);
  assert_int_equal(h_state(&H, "a"), MB_STATE_OFFLOADED);
  uint64_t hb, hu;
  mb_host_tier(H.ctx, &hb, &hu);
  assert_int_equal(hu, 100);
  lost("a", 0, 0, "exited: status 0");
  assert_int_equal(h_state(&H, "a"), MB_STATE_UNLOADING);
  h_complete(&H, "a", 0);
  assert_int_equal(h_state(&H, "a"), MB_STATE_UNLOADED);
  mb_host_tier(H.ctx, &hb, &hu);
  assert_int_equal(hu, 0);
  assert_int_equal(h_status(&H, "a").stats.crashes, 2);
}

/* A report that comes while an operation runs is applied when it ends, if
 * the model is then resident in that residency. */
static void test_loss_during_a_job(void **state) {
  mb_model_opts o;
  model_opts(&o);
  h_model(&H, "a", &o);
  h_answer l;
  h_acquire(&H, "a", NULL, &l);
  assert_int_equal(h_state(&H, "a"), MB_STATE_LOADING);
  lost("a", 1, 0, "exited: status 9"); /* the new process died right after its start */
  assert_int_equal(h_state(&H, "a"), MB_STATE_LOADING);
  h_complete(&H, "a", 0);
  /* The lease was granted? No: the loss came first in the same step. */
  assert_int_equal(h_state(&H, "a"), MB_STATE_UNLOADING);
  assert_false(l.done);
  h_complete(&H, "a", 0); /* unload; the waiter loads it again */
  assert_int_equal(h_state(&H, "a"), MB_STATE_LOADING);
  h_complete(&H, "a", 0);
  assert_int_equal(l.rc, 0);
  assert_int_equal(h_status(&H, "a").stats.crashes, 1);
  h_release(&H, &l);
  /* A loss during an offload that fails: the unload that follows makes
   * the report moot. */
  int off = -99;
  assert_int_equal(mb_offload_async(H.ctx, "a", rc_done, &off), 0);
  h_settle(&H);
  lost("a", 0, 0, "exited: status 9");
  h_complete(&H, "a", MB_EBACKEND);
  assert_int_equal(h_state(&H, "a"), MB_STATE_UNLOADING);
  h_complete(&H, "a", 0);
  assert_int_equal(h_state(&H, "a"), MB_STATE_UNLOADED);
  assert_int_equal(h_status(&H, "a").stats.crashes, 1);
}

/* Leases on a lost model: renew gives MB_ELOST, and a TTL's expiry frees
 * one without counting it out again. */
static void test_lost_lease_renew_and_ttl(void **state) {
  mb_model_opts o;
  model_opts(&o);
  o.max_concurrency = 2;
  h_model(&H, "a", &o);
  mb_acquire_opts ao;
  mb_acquire_opts_init(&ao);
  ao.ttl_ms = 5000;
  h_answer l1, l2;
  h_acquire(&H, "a", NULL, &l1); /* no TTL: its holder releases it */
  h_acquire(&H, "a", &ao, &l2);
  h_complete(&H, "a", 0);
  assert_int_equal(h_status(&H, "a").inflight, 2);
  lost("a", 0, 0, "unhealthy");
  assert_int_equal(mb_lease_renew(H.ctx, l1.lease, 1000), MB_ELOST);
  assert_int_equal(mb_lease_renew(H.ctx, l2.lease, 1000), MB_ELOST);
  h_complete(&H, "a", 0);
  h_advance(&H, 6000 * MS); /* l2's TTL passes: it is dropped */
  assert_int_equal(mb_release(H.ctx, l2.lease), MB_EINVAL);
  assert_int_equal(mb_release(H.ctx, l1.lease), MB_ELOST);
  h_settle(&H);
  mb_status s = h_status(&H, "a");
  assert_int_equal(s.inflight, 0);
  assert_int_equal(s.state, MB_STATE_UNLOADED);
}

/* Unload of a LOADING model whose backend can cancel: the cancel is called
 * with the load's residency, the load's waiters get MB_ECANCELED at once,
 * the unload answers when the load returns, and the model is UNLOADED
 * without back-off. */
static void test_unload_cancels_load(void **state) {
  mb_model_opts o;
  model_opts(&o);
  char err[128];
  assert_int_equal(mb_model_add(H.ctx, "a", &with_cancel, NULL, &o, err, sizeof(err)), 0);
  cancels = 0;
  h_answer w1, w2;
  h_acquire(&H, "a", NULL, &w1);
  h_acquire(&H, "a", NULL, &w2);
  int lr = -99;
  assert_int_equal(mb_load_async(H.ctx, "a", MB_DEFAULT, rc_done, &lr), 0);
  h_settle(&H);
  assert_int_equal(h_state(&H, "a"), MB_STATE_LOADING);
  int un = -99;
  assert_int_equal(mb_unload_async(H.ctx, "a", rc_done, &un), 0);
  h_settle(&H);
  assert_int_equal(cancels, 1);
  assert_int_equal(cancel_residency, 1);
  assert_string_equal(cancel_model, "a");
  assert_true(w1.done && w2.done);
  assert_int_equal(w1.rc, MB_ECANCELED);
  assert_int_equal(w2.rc, MB_ECANCELED);
  assert_non_null(strstr(w1.msg, "canceled"));
  assert_non_null(strstr(w1.msg, "unloaded while it loaded"));
  assert_int_equal(lr, MB_ECANCELED);
  assert_int_equal(un, -99); /* answers when the load has returned */
  /* A second unload meanwhile does not call cancel again. */
  int un2 = -99;
  assert_int_equal(mb_unload_async(H.ctx, "a", rc_done, &un2), 0);
  h_settle(&H);
  assert_int_equal(cancels, 1);
  h_complete(&H, "a", MB_ECANCELED);
  assert_int_equal(un, 0);
  assert_int_equal(un2, 0);
  mb_status s = h_status(&H, "a");
  assert_int_equal(s.state, MB_STATE_UNLOADED);
  assert_string_equal(s.error, "");
  assert_int_equal(s.stats.load_failures, 0);
  assert_string_equal(last_of(MB_EVENT_STATE, "a")->reason, "canceled");
  assert_int_equal(h_dev_used(&H, 0), 0);
  /* No back-off: the next acquire loads at once. */
  h_answer w3;
  h_acquire(&H, "a", NULL, &w3);
  assert_int_equal(h_state(&H, "a"), MB_STATE_LOADING);
  h_complete(&H, "a", 0);
  assert_int_equal(w3.rc, 0);
  h_release(&H, &w3);
}

/* The load wins the race with its cancel: READY, then unloaded for the
 * unload that asked; a waiter that came after the cancel loads it again. */
static void test_cancel_race_load_succeeds(void **state) {
  mb_model_opts o;
  model_opts(&o);
  char err[128];
  assert_int_equal(mb_model_add(H.ctx, "a", &with_cancel, NULL, &o, err, sizeof(err)), 0);
  h_answer w1, w2;
  h_acquire(&H, "a", NULL, &w1);
  int un = -99;
  assert_int_equal(mb_unload_async(H.ctx, "a", rc_done, &un), 0);
  h_settle(&H);
  assert_int_equal(w1.rc, MB_ECANCELED);
  h_acquire(&H, "a", NULL, &w2); /* after the unload was asked for */
  assert_false(w2.done);
  h_complete(&H, "a", 0); /* the load returned 0 anyway */
  assert_int_equal(h_state(&H, "a"), MB_STATE_UNLOADING);
  assert_false(w2.done);
  h_complete(&H, "a", 0);
  assert_int_equal(un, 0);
  assert_int_equal(h_state(&H, "a"), MB_STATE_LOADING); /* w2's load */
  h_complete(&H, "a", 0);
  assert_int_equal(w2.rc, 0);
  h_release(&H, &w2);
}

/* Without a cancel hook the unload waits for the load, as before. */
static void test_unload_without_cancel_waits(void **state) {
  mb_model_opts o;
  model_opts(&o);
  h_model(&H, "a", &o);
  h_answer w;
  h_acquire(&H, "a", NULL, &w);
  int un = -99;
  assert_int_equal(mb_unload_async(H.ctx, "a", rc_done, &un), 0);
  h_settle(&H);
  assert_false(w.done);
  h_complete(&H, "a", 0);
  assert_int_equal(h_state(&H, "a"), MB_STATE_UNLOADING);
  h_complete(&H, "a", 0);
  assert_int_equal(un, 0);
  h_complete(&H, "a", 0); /* the waiter's new load */
  assert_int_equal(w.rc, 0);
  h_release(&H, &w);
}

/* queue_timeout_excludes_load: the queue timeout stands still while the
 * model loads for the waiter and runs on with what was left after it. */
static void test_load_time_is_not_queue_time(void **state) {
  mb_model_opts o;
  model_opts(&o);
  o.queue_timeout_ms = 100;
  o.queue_timeout_excludes_load = 1;
  h_model(&H, "a", &o);
  h_answer w1, w2;
  h_acquire(&H, "a", NULL, &w1);
  h_acquire(&H, "a", NULL, &w2); /* joins the load */
  h_advance(&H, 5000 * MS);      /* a load of 5 s, 50x the queue timeout */
  assert_false(w1.done);
  assert_false(w2.done);
  assert_int_equal(mb_ctx_next_deadline(H.ctx), UINT64_MAX);
  h_complete(&H, "a", 0);
  assert_int_equal(w1.rc, 0);
  assert_false(w2.done); /* waits for the slot now: 100 ms */
  h_advance(&H, 99 * MS);
  assert_false(w2.done);
  h_advance(&H, 1 * MS);
  assert_int_equal(w2.rc, MB_ETIMEDOUT);
  assert_non_null(strstr(w2.msg, "(queue_timeout)"));
  assert_non_null(strstr(w2.msg, "waited 100 ms"));
  h_release(&H, &w1);
}

/* What a waiter had used of its queue timeout before the load is kept. */
static void test_paused_timeout_keeps_what_was_used(void **state) {
  mb_model_opts o;
  model_opts(&o);
  o.queue_timeout_ms = 100;
  o.queue_timeout_excludes_load = 1;
  h_model(&H, "a", &o);
  h_answer l, w1, w2;
  ready_with_lease("a", &l);
  h_acquire(&H, "a", NULL, &w1);
  h_acquire(&H, "a", NULL, &w2);
  h_advance(&H, 60 * MS); /* 60 of 100 ms waited for a slot */
  lost("a", 0, 0, "exited: status 1");
  h_complete(&H, "a", 0); /* unload: the timers ran meanwhile (0 ms here) */
  assert_int_equal(h_state(&H, "a"), MB_STATE_LOADING);
  h_advance(&H, 3000 * MS);
  assert_false(w1.done);
  h_complete(&H, "a", 0);
  assert_int_equal(w1.rc, 0);
  h_advance(&H, 39 * MS);
  assert_false(w2.done);
  h_advance(&H, 1 * MS); /* 60 + 40 */
  assert_int_equal(w2.rc, MB_ETIMEDOUT);
  assert_int_equal(mb_release(H.ctx, l.lease), MB_ELOST);
  h_release(&H, &w1);
}

/* Without the option the queue timeout bounds the whole wait (the library's
 * default, and what the simulator models); a per-request timeout is named
 * as such. */
static void test_queue_timeout_includes_load_by_default(void **state) {
  mb_model_opts o;
  model_opts(&o);
  o.queue_timeout_ms = 100;
  h_model(&H, "a", &o);
  h_answer w;
  h_acquire(&H, "a", NULL, &w);
  h_advance(&H, 100 * MS);
  assert_int_equal(w.rc, MB_ETIMEDOUT);
  assert_non_null(strstr(w.msg, "(queue_timeout)"));
  mb_acquire_opts ao;
  mb_acquire_opts_init(&ao);
  ao.timeout_ms = 10;
  h_acquire(&H, "a", &ao, &w);
  h_advance(&H, 10 * MS);
  assert_int_equal(w.rc, MB_ETIMEDOUT);
  assert_non_null(strstr(w.msg, "(the request's queue timeout)"));
  h_complete(&H, "a", 0);
}

/* A load the backend gives up as timed out (its start_timeout) is a
 * timeout for its waiters too, with the backend's message. */
static void test_load_timeout_reaches_waiters(void **state) {
  mb_model_opts o;
  model_opts(&o);
  h_model(&H, "a", &o);
  h_answer w;
  h_acquire(&H, "a", NULL, &w);
  mb_job *j = h_job(&H, "a");
  h_take(&H, j);
  mb_job_complete(j, MB_ETIMEDOUT, "not healthy within 700 ms (start_timeout)", NULL);
  h_settle(&H);
  assert_int_equal(w.rc, MB_ETIMEDOUT);
  assert_non_null(strstr(w.msg, "(start_timeout)"));
  assert_int_equal(h_state(&H, "a"), MB_STATE_FAILED);
}

/* Bad crash options are refused. */
static void test_bad_crash_options(void **state) {
  mb_model_opts o;
  model_opts(&o);
  char err[160];
  o.crash_limit = MB_CRASH_LIMIT_MAX + 1;
  assert_int_equal(mb_model_add(H.ctx, "x", &h_backend, NULL, &o, err, sizeof(err)), MB_EINVAL);
  assert_non_null(strstr(err, "crash_limit"));
  model_opts(&o);
  o.crash_window_ms = -5;
  assert_int_equal(mb_model_add(H.ctx, "x", &h_backend, NULL, &o, err, sizeof(err)), MB_EINVAL);
  assert_string_equal(mb_err_name(MB_ELOST), "MB_ELOST");
  assert_string_equal(mb_strerror(MB_ELOST), "model lost");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_lost_ready_model, setup, teardown),
      cmocka_unit_test_setup_teardown(test_waiters_served_by_next_load, setup, teardown),
      cmocka_unit_test_setup_teardown(test_stale_reports_ignored, setup, teardown),
      cmocka_unit_test_setup_teardown(test_residency_in_ops, setup, teardown),
      cmocka_unit_test_setup_teardown(test_crash_loop_fails_with_backoff, setup, teardown),
      cmocka_unit_test_setup_teardown(test_crash_window_slides, setup, teardown),
      cmocka_unit_test_setup_teardown(test_lost_fail_flag, setup, teardown),
      cmocka_unit_test_setup_teardown(test_lost_offloaded_and_pending_offload, setup, teardown),
      cmocka_unit_test_setup_teardown(test_loss_during_a_job, setup, teardown),
      cmocka_unit_test_setup_teardown(test_lost_lease_renew_and_ttl, setup, teardown),
      cmocka_unit_test_setup_teardown(test_unload_cancels_load, setup, teardown),
      cmocka_unit_test_setup_teardown(test_cancel_race_load_succeeds, setup, teardown),
      cmocka_unit_test_setup_teardown(test_unload_without_cancel_waits, setup, teardown),
      cmocka_unit_test_setup_teardown(test_load_time_is_not_queue_time, setup, teardown),
      cmocka_unit_test_setup_teardown(test_paused_timeout_keeps_what_was_used, setup, teardown),
      cmocka_unit_test_setup_teardown(test_queue_timeout_includes_load_by_default, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_load_timeout_reaches_waiters, setup, teardown),
      cmocka_unit_test_setup_teardown(test_bad_crash_options, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
