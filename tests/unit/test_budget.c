/*
 * test_budget.c - device capacity, reserve and budget; admission; eviction
 * by LRU and by cost; leases that block eviction; max_loaded; auto
 * placement; the host tier's budget. Manual clock, scripted completions.
 */
#include "harness.h"

static harness H;

static int setup(void **state) {
  (void)state;
  return 0;
}

static int teardown(void **state) {
  (void)state;
  if (H.ctx)
    h_free(&H);
  return 0;
}

static void start(mb_eviction policy, uint64_t host_budget) {
  mb_ctx_opts o;
  h_init_opts(&H, &o);
  o.eviction = policy;
  if (host_budget)
    o.host_budget_bytes = host_budget;
  h_start(&H, &o);
}

/* Uses a model once: acquire, complete its load/restore if any, release. */
static void use(const char *name, uint64_t took_ms) {
  h_answer a;
  h_acquire(&H, name, NULL, &a);
  if (!a.done)
    h_complete_after(&H, name, 0, took_ms, NULL);
  assert_int_equal(a.rc, 0);
  h_release(&H, &a);
}

static void assert_within_budget(int dev) {
  mb_device_info di;
  assert_int_equal(mb_device_info_get(H.ctx, dev, &di), 0);
  assert_true(di.used_bytes <= di.usable_bytes);
}

/* LRU: the least recently used idle model goes first. */
static void test_lru_order(void **state) {
  start(MB_EVICT_LRU, 0);
  h_device(&H, 300);
  h_model_fp(&H, "a", 100, MB_FOREVER);
  h_model_fp(&H, "b", 100, MB_FOREVER);
  h_model_fp(&H, "c", 100, MB_FOREVER);
  h_model_fp(&H, "d", 100, MB_FOREVER);
  use("a", 10);
  h_advance(&H, MS);
  use("b", 10);
  h_advance(&H, MS);
  use("c", 10);
  h_advance(&H, MS);
  use("a", 0); /* a is now the most recent */
  h_advance(&H, MS);
  h_answer d;
  h_acquire(&H, "d", NULL, &d);
  assert_false(d.done);
  /* b is evicted (offloaded: it may and the host tier has room). */
  assert_int_equal(h_state(&H, "b"), MB_STATE_OFFLOADING);
  assert_int_equal(h_state(&H, "a"), MB_STATE_READY);
  assert_int_equal(h_state(&H, "c"), MB_STATE_READY);
  assert_int_equal(h_state(&H, "d"), MB_STATE_UNLOADED); /* waits for the memory */
  assert_within_budget(0);
  h_complete(&H, "b", 0);
  assert_int_equal(h_state(&H, "d"), MB_STATE_LOADING);
  assert_within_budget(0);
  h_complete(&H, "d", 0);
  assert_int_equal(d.rc, 0);
  assert_int_equal(h_status(&H, "b").stats.evictions, 1);
  assert_int_equal(h_state(&H, "b"), MB_STATE_OFFLOADED);
  h_release(&H, &d);
}

/* Cost: the cheap-to-reload model goes first even if used more recently. */
static void test_cost_order(void **state) {
  start(MB_EVICT_COST, 0);
  h_device(&H, 200);
  mb_model_opts o;
  mb_model_opts_init(&o);
  o.footprint_bytes = 100;
  o.keep_alive_ms = MB_FOREVER;
  o.offload = 0;
  h_model(&H, "slow", &o);
  h_model(&H, "cheap", &o);
  h_model(&H, "new", &o);
  use("slow", 2000);  /* 2 s to load */
  h_advance(&H, MS);
  use("cheap", 100);  /* 0.1 s to load, and used last */
  h_advance(&H, MS);
  h_answer n;
  h_acquire(&H, "new", NULL, &n);
  assert_int_equal(h_state(&H, "cheap"), MB_STATE_UNLOADING);
  assert_int_equal(h_state(&H, "slow"), MB_STATE_READY);
  h_complete_all(&H);
  assert_int_equal(n.rc, 0);
  h_release(&H, &n);
}

/* The same scenario under LRU evicts the least recent, the slow one. */
static void test_lru_ignores_cost(void **state) {
  start(MB_EVICT_LRU, 0);
  h_device(&H, 200);
  mb_model_opts o;
  mb_model_opts_init(&o);
  o.footprint_bytes = 100;
  o.keep_alive_ms = MB_FOREVER;
  o.offload = 0;
  h_model(&H, "slow", &o);
  h_model(&H, "cheap", &o);
  h_model(&H, "new", &o);
  use("slow", 2000);
  h_advance(&H, MS);
  use("cheap", 100);
  h_advance(&H, MS);
  h_answer n;
  h_acquire(&H, "new", NULL, &n);
  assert_int_equal(h_state(&H, "slow"), MB_STATE_UNLOADING);
  assert_int_equal(h_state(&H, "cheap"), MB_STATE_READY);
  h_complete_all(&H);
  h_release(&H, &n);
}

/* A leased model is never evicted; the request waits for a release. */
static void test_leased_never_evicted(void **state) {
  start(MB_EVICT_LRU, 0);
  h_device(&H, 200);
  h_model_fp(&H, "a", 100, MB_FOREVER);
  h_model_fp(&H, "b", 100, MB_FOREVER);
  h_model_fp(&H, "c", 100, MB_FOREVER);
  h_answer a, b, c;
  h_acquire(&H, "a", NULL, &a);
  h_complete(&H, "a", 0);
  h_acquire(&H, "b", NULL, &b);
  h_complete(&H, "b", 0);
  h_acquire(&H, "c", NULL, &c);
  assert_false(c.done);
  assert_int_equal(H.njobs, 0); /* nothing to evict */
  assert_int_equal(h_state(&H, "c"), MB_STATE_UNLOADED);
  assert_int_equal(h_status(&H, "c").queued, 1);
  h_advance(&H, 10000 * MS);
  assert_int_equal(h_state(&H, "a"), MB_STATE_READY);
  assert_int_equal(h_state(&H, "b"), MB_STATE_READY);
  assert_within_budget(0);
  h_release(&H, &b);
  /* b is idle now: it is the victim, a keeps its lease. */
  assert_int_equal(h_state(&H, "b"), MB_STATE_OFFLOADING);
  assert_int_equal(h_state(&H, "a"), MB_STATE_READY);
  h_complete(&H, "b", 0);
  h_complete(&H, "c", 0);
  assert_int_equal(c.rc, 0);
  assert_within_budget(0);
  h_release(&H, &a);
  h_release(&H, &c);
}

/* A waiter for memory that never frees times out; nothing was loaded. */
static void test_wait_for_memory_times_out(void **state) {
  start(MB_EVICT_LRU, 0);
  h_device(&H, 100);
  h_model_fp(&H, "a", 100, MB_FOREVER);
  h_model_fp(&H, "b", 100, MB_FOREVER);
  h_answer a, b;
  h_acquire(&H, "a", NULL, &a);
  h_complete(&H, "a", 0);
  mb_acquire_opts o;
  mb_acquire_opts_init(&o);
  o.timeout_ms = 1000;
  h_acquire(&H, "b", &o, &b);
  h_advance(&H, 999 * MS);
  assert_false(b.done);
  h_advance(&H, 1 * MS);
  assert_int_equal(b.rc, MB_ETIMEDOUT);
  assert_int_equal(h_state(&H, "b"), MB_STATE_UNLOADED);
  assert_int_equal(h_status(&H, "b").stats.loads, 0);
  h_release(&H, &a);
}

/* Larger than capacity - reserve (or the budget): fails at once. */
static void test_too_large_fails_at_once(void **state) {
  start(MB_EVICT_LRU, 0);
  mb_device_opts d;
  mb_device_opts_init(&d);
  d.capacity_bytes = 1000;
  d.reserve_bytes = 300;
  d.budget_bytes = 800; /* above capacity - reserve: no effect */
  char err[256];
  int idx;
  assert_int_equal(mb_device_add(H.ctx, &d, &idx, err, sizeof(err)), 0);
  mb_device_info di;
  assert_int_equal(mb_device_info_get(H.ctx, idx, &di), 0);
  assert_int_equal(di.usable_bytes, 700);
  h_model_fp(&H, "big", 701, MB_FOREVER);
  h_model_fp(&H, "fits", 700, 0);
  h_answer a;
  h_acquire(&H, "big", NULL, &a);
  assert_true(a.done);
  assert_int_equal(a.rc, MB_ENOSPC);
  assert_non_null(strstr(a.msg, "701"));
  assert_int_equal(H.njobs, 0);
  assert_int_equal(h_status(&H, "big").stats.rejected, 1);
  h_acquire(&H, "fits", NULL, &a);
  assert_false(a.done);
  h_complete(&H, "fits", 0);
  assert_int_equal(a.rc, 0);
  h_release(&H, &a);

  /* A budget below capacity - reserve caps what models may use. */
  d.capacity_bytes = 1000;
  d.reserve_bytes = 0;
  d.budget_bytes = 200;
  assert_int_equal(mb_device_add(H.ctx, &d, &idx, err, sizeof(err)), 0);
  mb_model_opts o;
  mb_model_opts_init(&o);
  o.device = idx;
  o.footprint_bytes = 201;
  h_model(&H, "over", &o);
  h_acquire(&H, "over", NULL, &a);
  assert_int_equal(a.rc, MB_ENOSPC);
}

/* max_loaded caps resident models even when memory would allow more. */
static void test_max_loaded(void **state) {
  start(MB_EVICT_LRU, 0);
  mb_device_opts d;
  mb_device_opts_init(&d);
  d.capacity_bytes = 1000;
  d.max_loaded = 1;
  char err[128];
  assert_int_equal(mb_device_add(H.ctx, &d, NULL, err, sizeof(err)), 0);
  h_model_fp(&H, "a", 10, MB_FOREVER);
  h_model_fp(&H, "b", 10, MB_FOREVER);
  use("a", 1);
  h_answer b;
  h_acquire(&H, "b", NULL, &b);
  assert_int_equal(h_state(&H, "a"), MB_STATE_OFFLOADING);
  assert_int_equal(h_state(&H, "b"), MB_STATE_UNLOADED);
  h_complete(&H, "a", 0);
  assert_int_equal(h_state(&H, "b"), MB_STATE_LOADING);
  h_complete(&H, "b", 0);
  assert_int_equal(b.rc, 0);
  mb_device_info di;
  assert_int_equal(mb_device_info_get(H.ctx, 0, &di), 0);
  assert_int_equal(di.resident, 1);
  h_release(&H, &b);
}

/* Auto placement: where it fits without eviction, else least eviction cost. */
static void test_auto_placement(void **state) {
  start(MB_EVICT_LRU, 0);
  h_device(&H, 300);
  h_device(&H, 300);
  h_model_fp(&H, "a", 250, MB_FOREVER); /* device 0 */
  mb_model_opts o;
  mb_model_opts_init(&o);
  o.device = MB_DEVICE_AUTO;
  o.footprint_bytes = 200;
  o.keep_alive_ms = MB_FOREVER;
  h_model(&H, "x", &o);
  use("a", 1);
  h_answer x;
  h_acquire(&H, "x", NULL, &x);
  assert_int_equal(mb_job_device(h_job(&H, "x")), 1);
  h_complete(&H, "x", 0);
  assert_int_equal(x.lease.device, 1);
  assert_int_equal(h_status(&H, "x").device, 1);
  assert_int_equal(h_state(&H, "a"), MB_STATE_READY); /* nothing evicted */
  h_release(&H, &x);
}

/*
 * Best fit: a model that fits on several devices goes on the one with the
 * least free memory that holds it, so the largest hole stays whole for a
 * larger model (on the device with the most free memory, b would leave
 * 150 bytes on each, and c would not fit without evicting).
 */
static void test_best_fit(void **state) {
  start(MB_EVICT_LRU, 0);
  h_device(&H, 300);
  h_device(&H, 300);
  mb_model_opts o;
  mb_model_opts_init(&o);
  o.device = MB_DEVICE_AUTO;
  o.keep_alive_ms = MB_FOREVER;
  o.footprint_bytes = 100;
  h_model(&H, "a", &o);
  o.footprint_bytes = 150;
  h_model(&H, "b", &o);
  o.footprint_bytes = 250;
  h_model(&H, "c", &o);
  const char *names[] = {"a", "b", "c"};
  const int devs[] = {0, 0, 1}; /* a: the lowest index among equals */
  for (int i = 0; i < 3; i++) {
    h_answer x;
    h_acquire(&H, names[i], NULL, &x);
    assert_int_equal(mb_job_device(h_job(&H, names[i])), devs[i]);
    h_complete(&H, names[i], 0);
    assert_int_equal(x.rc, 0);
    h_release(&H, &x);
  }
  for (int i = 0; i < 3; i++)
    assert_int_equal(h_state(&H, names[i]), MB_STATE_READY); /* nothing evicted */
}

/*
 * Cost: when the fewest candidates in rank order (rank is per byte) would
 * free more than needed at a higher expected cost than one larger
 * candidate alone, that one goes. s1 and s2 rank first (10 ms/MiB against
 * big's 12.5) but making room for 110 MiB takes both (2 s to load back),
 * where big alone frees 120 MiB for 1.5 s. LRU evicts the fewest
 * candidates in its order, the least recently used: s1 and s2.
 */
static void single_victim(mb_eviction policy, const char *gone1, const char *gone2) {
  start(policy, 0);
  h_device(&H, 320ull << 20);
  mb_model_opts o;
  mb_model_opts_init(&o);
  o.keep_alive_ms = MB_FOREVER;
  o.offload = 0;
  o.footprint_bytes = 100ull << 20;
  h_model(&H, "s1", &o);
  h_model(&H, "s2", &o);
  o.footprint_bytes = 120ull << 20;
  h_model(&H, "big", &o);
  o.footprint_bytes = 110ull << 20;
  h_model(&H, "new", &o);
  use("s1", 1000);
  h_advance(&H, MS);
  use("s2", 1000);
  h_advance(&H, MS);
  use("big", 1500);
  h_advance(&H, MS);
  h_answer n;
  h_acquire(&H, "new", NULL, &n);
  const char *names[] = {"s1", "s2", "big"};
  for (int i = 0; i < 3; i++) {
    int gone = strcmp(names[i], gone1) == 0 || (gone2 && strcmp(names[i], gone2) == 0);
    assert_int_equal(h_state(&H, names[i]), gone ? MB_STATE_UNLOADING : MB_STATE_READY);
  }
  h_complete_all(&H);
  assert_int_equal(n.rc, 0);
  h_release(&H, &n);
}

static void test_cost_single_victim(void **state) { single_victim(MB_EVICT_COST, "big", NULL); }

static void test_lru_fewest_victims(void **state) { single_victim(MB_EVICT_LRU, "s1", "s2"); }

/*
 * Admission across devices, oldest first: a model that may go on any
 * device and fits on none waits; a model bound to one device behind it
 * starts as soon as its device can take it; the first one gets its turn
 * (evicting) once a resident model is no longer in use.
 */
static void test_admission_many_devices(void **state) {
  start(MB_EVICT_LRU, 0);
  h_device(&H, 300);
  h_device(&H, 300);
  mb_model_opts o;
  mb_model_opts_init(&o);
  o.device = MB_DEVICE_AUTO;
  o.footprint_bytes = 200;
  o.keep_alive_ms = MB_FOREVER;
  h_model(&H, "x1", &o);
  h_model(&H, "x2", &o);
  h_model(&H, "x3", &o);
  o.device = 1;
  o.footprint_bytes = 50;
  h_model(&H, "p", &o);

  h_answer x1, x2, x3, p;
  h_acquire(&H, "x1", NULL, &x1);
  assert_int_equal(mb_job_device(h_job(&H, "x1")), 0);
  h_acquire(&H, "x2", NULL, &x2); /* device 0 is busy loading: the other */
  assert_int_equal(mb_job_device(h_job(&H, "x2")), 1);
  h_acquire(&H, "x3", NULL, &x3); /* 100 bytes free on each: waits */
  h_acquire(&H, "p", NULL, &p);   /* fits on device 1, which is loading */
  assert_int_equal(h_state(&H, "x3"), MB_STATE_UNLOADED);
  assert_int_equal(h_state(&H, "p"), MB_STATE_UNLOADED);

  h_complete(&H, "x2", 0); /* device 1 can load again: p, not x3 */
  assert_true(x2.done);
  assert_int_equal(h_state(&H, "p"), MB_STATE_LOADING);
  assert_int_equal(mb_job_device(h_job(&H, "p")), 1);
  assert_int_equal(h_state(&H, "x3"), MB_STATE_UNLOADED);
  h_complete(&H, "p", 0);
  h_complete(&H, "x1", 0);
  assert_true(x1.done && p.done);
  assert_false(x3.done); /* everything resident is in use */
  assert_int_equal(h_state(&H, "x3"), MB_STATE_UNLOADED);

  h_release(&H, &x1); /* x1 may go: x3 takes its place on device 0 */
  mb_state s = h_state(&H, "x1");
  assert_true(s == MB_STATE_OFFLOADING || s == MB_STATE_UNLOADING);
  assert_int_equal(h_state(&H, "x2"), MB_STATE_READY);
  assert_int_equal(h_state(&H, "p"), MB_STATE_READY);
  h_complete(&H, "x1", 0);
  assert_int_equal(h_state(&H, "x3"), MB_STATE_LOADING);
  assert_int_equal(mb_job_device(h_job(&H, "x3")), 0);
  h_complete(&H, "x3", 0);
  assert_true(x3.done);
  assert_int_equal(x3.rc, 0);
  assert_within_budget(0);
  assert_within_budget(1);
  h_release(&H, &x2);
  h_release(&H, &x3);
  h_release(&H, &p);
}

/* Pinned models are never evicted. */
static void test_pinned(void **state) {
  start(MB_EVICT_LRU, 0);
  h_device(&H, 100);
  mb_model_opts o;
  mb_model_opts_init(&o);
  o.footprint_bytes = 100;
  o.keep_alive_ms = MB_FOREVER;
  o.pinned = 1;
  h_model(&H, "pin", &o);
  h_model_fp(&H, "other", 100, MB_FOREVER);
  use("pin", 1);
  mb_acquire_opts ao;
  mb_acquire_opts_init(&ao);
  ao.timeout_ms = 100;
  h_answer a;
  h_acquire(&H, "other", &ao, &a);
  assert_int_equal(H.njobs, 0);
  h_advance(&H, 100 * MS);
  assert_int_equal(a.rc, MB_ETIMEDOUT);
  assert_int_equal(h_state(&H, "pin"), MB_STATE_READY);
}

/* Host tier: offload only while the host budget allows; then host eviction,
 * then plain unload when even that cannot make room. */
static void test_host_budget(void **state) {
  start(MB_EVICT_LRU, 150);
  h_device(&H, 1000);
  h_model_fp(&H, "a", 100, 0);
  h_model_fp(&H, "b", 100, 0);
  h_model_fp(&H, "huge", 200, 0);
  use("a", 1);
  assert_int_equal(h_state(&H, "a"), MB_STATE_OFFLOADING);
  h_complete(&H, "a", 0);
  assert_int_equal(h_state(&H, "a"), MB_STATE_OFFLOADED);
  h_advance(&H, MS);
  /* b needs the host room a holds: a is released (host eviction). */
  use("b", 1);
  assert_int_equal(h_state(&H, "a"), MB_STATE_UNLOADING);
  assert_int_equal(h_state(&H, "b"), MB_STATE_OFFLOADING);
  h_complete_all(&H);
  assert_int_equal(h_state(&H, "a"), MB_STATE_UNLOADED);
  assert_int_equal(h_state(&H, "b"), MB_STATE_OFFLOADED);
  mb_status st = h_status(&H, "a");
  assert_int_equal(st.stats.full_releases, 1);
  assert_int_equal(st.stats.evictions, 1);
  uint64_t budget, used;
  mb_host_tier(H.ctx, &budget, &used);
  assert_int_equal(budget, 150);
  assert_int_equal(used, 100);
  /* huge can never fit the host tier: idle means unload. */
  use("huge", 1);
  assert_int_equal(h_state(&H, "huge"), MB_STATE_UNLOADING);
  assert_int_equal(h_state(&H, "b"), MB_STATE_OFFLOADED);
  h_complete_all(&H);
  /* An explicit offload that the host cannot hold is refused. */
  mb_model_opts o;
  mb_model_opts_init(&o);
  o.footprint_bytes = 200;
  o.keep_alive_ms = MB_FOREVER;
  h_model(&H, "huge2", &o);
  use("huge2", 1);
  h_answer r;
  memset(&r, 0, sizeof(r));
  assert_int_equal(mb_offload_async(H.ctx, "huge2", h_done, &r), 0);
  h_settle(&H);
  assert_int_equal(r.rc, MB_ENOSPC);
  assert_non_null(strstr(r.msg, "host"));
  assert_int_equal(h_state(&H, "huge2"), MB_STATE_READY);
}

/*
 * Restores: x (device auto) is offloaded from device 0, then y, named on
 * device 0, takes most of it and is held. A backend that can restore
 * anywhere (restore_any_device) gets x's restore on device 1, where it
 * fits; otherwise x goes back where it was and waits for y. With devices
 * of two kinds it goes back too (the host copy is laid out for its kind).
 */
static void restore_placement(int any, int mixed, int want_dev) {
  start(MB_EVICT_LRU, 0);
  h_device(&H, 300);
  if (mixed) {
    mb_device_opts d;
    mb_device_opts_init(&d);
    d.kind = MB_DEVICE_CUDA;
    d.ordinal = 0;
    d.capacity_bytes = 300; /* given: no driver is asked */
    char err[256] = "";
    assert_int_equal(mb_device_add(H.ctx, &d, NULL, err, sizeof(err)), 0);
  } else {
    h_device(&H, 300);
  }
  mb_model_opts o;
  mb_model_opts_init(&o);
  o.device = MB_DEVICE_AUTO;
  o.footprint_bytes = 200;
  o.keep_alive_ms = 0; /* offloaded once idle */
  o.restore_any_device = any;
  h_model(&H, "x", &o);
  h_model_fp(&H, "y", 250, MB_FOREVER); /* device 0 */
  use("x", 1);
  assert_int_equal(h_state(&H, "x"), MB_STATE_OFFLOADING);
  h_complete(&H, "x", 0);
  assert_int_equal(h_state(&H, "x"), MB_STATE_OFFLOADED);
  assert_int_equal(h_status(&H, "x").device, 0);
  h_answer y, x;
  h_acquire(&H, "y", NULL, &y);
  h_complete(&H, "y", 0);
  assert_int_equal(y.rc, 0);
  h_acquire(&H, "x", NULL, &x);
  if (want_dev < 0) {
    assert_false(h_has_job(&H, "x")); /* bound to device 0, held by y */
    assert_false(x.done);
    h_release(&H, &y); /* y idle: evicted for x's restore at home */
    h_complete(&H, "y", 0);
    want_dev = 0;
  }
  assert_int_equal(h_job_kind(&H, "x"), MB_JOB_RESTORE);
  assert_int_equal(mb_job_device(h_job(&H, "x")), want_dev);
  h_complete(&H, "x", 0);
  assert_int_equal(x.rc, 0);
  assert_int_equal(x.lease.device, want_dev);
  assert_int_equal(h_status(&H, "x").device, want_dev);
  assert_int_equal(h_dev_used(&H, want_dev), 200);
  assert_within_budget(0);
  assert_within_budget(1);
  h_release(&H, &x);
  if (want_dev == 1) {
    assert_int_equal(h_state(&H, "y"), MB_STATE_READY); /* nothing evicted */
    h_release(&H, &y);
  }
}

static void test_restore_any_device(void **state) { restore_placement(1, 0, 1); }
static void test_restore_home(void **state) { restore_placement(0, 0, -1); }
static void test_restore_home_mixed_kinds(void **state) { restore_placement(1, 1, -1); }

/* A measured footprint above the declared one evicts idle models. */
static void test_measured_over_budget_evicts(void **state) {
  start(MB_EVICT_LRU, 0);
  h_device(&H, 300);
  h_model_fp(&H, "a", 100, MB_FOREVER);
  h_model_fp(&H, "b", 100, MB_FOREVER);
  use("a", 1);
  h_answer b;
  h_acquire(&H, "b", NULL, &b);
  mb_usage u = {250, 0};
  h_complete_after(&H, "b", 0, 1, &u);
  assert_int_equal(b.rc, 0);
  assert_int_equal(h_state(&H, "a"), MB_STATE_OFFLOADING);
  h_complete(&H, "a", 0);
  assert_within_budget(0);
  assert_int_equal(h_status(&H, "b").footprint_bytes, 100); /* until the residency ends */
  h_release(&H, &b);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_lru_order, setup, teardown),
      cmocka_unit_test_setup_teardown(test_cost_order, setup, teardown),
      cmocka_unit_test_setup_teardown(test_lru_ignores_cost, setup, teardown),
      cmocka_unit_test_setup_teardown(test_leased_never_evicted, setup, teardown),
      cmocka_unit_test_setup_teardown(test_wait_for_memory_times_out, setup, teardown),
      cmocka_unit_test_setup_teardown(test_too_large_fails_at_once, setup, teardown),
      cmocka_unit_test_setup_teardown(test_max_loaded, setup, teardown),
      cmocka_unit_test_setup_teardown(test_auto_placement, setup, teardown),
      cmocka_unit_test_setup_teardown(test_best_fit, setup, teardown),
      cmocka_unit_test_setup_teardown(test_cost_single_victim, setup, teardown),
      cmocka_unit_test_setup_teardown(test_lru_fewest_victims, setup, teardown),
      cmocka_unit_test_setup_teardown(test_admission_many_devices, setup, teardown),
      cmocka_unit_test_setup_teardown(test_pinned, setup, teardown),
      cmocka_unit_test_setup_teardown(test_host_budget, setup, teardown),
      cmocka_unit_test_setup_teardown(test_measured_over_budget_evicts, setup, teardown),
      cmocka_unit_test_setup_teardown(test_restore_any_device, setup, teardown),
      cmocka_unit_test_setup_teardown(test_restore_home, setup, teardown),
      cmocka_unit_test_setup_teardown(test_restore_home_mixed_kinds, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
