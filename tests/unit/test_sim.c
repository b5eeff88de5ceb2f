/*
 * test_sim.c - the trace simulator (sim/) and the core hooks it needs:
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

/* ------------------------------------------------------------------------ */
/* Simulator                                                                 */

#include "sim.h"

static sim_model model_of(const char *name, uint64_t bytes, double load_ms) {
  sim_model m;
  sim_model_init(&m);
  snprintf(m.name, sizeof(m.name), "%s", name);
  m.footprint_bytes = bytes;
  m.load_ms = load_ms;
  m.unload_ms = 1;
  return m;
}

static void add_model(sim_models *t, const char *name, uint64_t bytes, double load_ms) {
  sim_model m = model_of(name, bytes, load_ms);
  char err[256];
  assert_int_equal(sim_models_add(t, &m, err, sizeof(err)), 0);
}

static void parse_trace(const char *csv, sim_trace *t) {
  char err[256] = "";
  if (sim_trace_parse(csv, strlen(csv), t, err, sizeof(err)) != 0)
    fail_msg("trace: %s", err);
}

static sim_result run(const sim_models *m, const sim_trace *t, sim_config *c, sim_policy p) {
  sim_result r;
  char err[256] = "";
  c->policy = p;
  if (sim_run(m, t, c, &r, err, sizeof(err)) != 0)
    fail_msg("sim_run %s: %s", sim_policy_name(p), err);
  return r;
}

/*
 * Three models of one size, room for two, no host tier. At t=30 c needs a
 * place: LRU (and cost, which counts a's two uses) evict b, whose next use
 * is at t=40; Belady evicts a, never used again. So LRU loads b twice.
 */
static void test_hand_checked_belady(void **state) {
  (void)state;
  sim_models m;
  sim_trace t;
  sim_config c;
  memset(&m, 0, sizeof(m));
  memset(&t, 0, sizeof(t));
  add_model(&m, "a", 10, 1000);
  add_model(&m, "b", 10, 1000);
  add_model(&m, "c", 10, 1000);
  parse_trace("t,model,duration\n0,a,1\n10,b,1\n20,a,1\n30,c,1\n40,b,1\n", &t);
  sim_config_init(&c);
  c.capacity_bytes = 20;
  c.host_bytes = 0;
  c.keep_alive_ms = -1;
  sim_result lru = run(&m, &t, &c, SIM_LRU);
  sim_result cost = run(&m, &t, &c, SIM_COST);
  sim_result bel = run(&m, &t, &c, SIM_BELADY);
  assert_int_equal(lru.requests, 5);
  assert_int_equal(lru.served, 5);
  assert_int_equal(lru.loads, 4);
  assert_int_equal(lru.warm, 1);
  assert_int_equal(lru.evictions, 2);
  assert_int_equal(lru.restores, 0);
  assert_int_equal(cost.loads, 4);
  assert_int_equal(cost.evictions, 2);
  assert_int_equal(bel.loads, 3);
  assert_int_equal(bel.warm, 2);
  assert_int_equal(bel.evictions, 1);
  /* c waited for b's unload (1 ms) and its own load (1 s). */
  assert_true(lru.wait_max_ms == 1001.0);
  /* Waits: lru 1000, 1000, 0, 1001, 1001; belady 1000, 1000, 0, 1001, 0. */
  assert_true(lru.wait_p50_ms == 1000.0 && bel.wait_p50_ms == 1000.0);
  assert_true(lru.wait_p99_ms == 1001.0);
  assert_true(bel.load_s == 3.0 && lru.load_s == 4.0);
  assert_int_equal(lru.failed, 0);
  /* Memory: 10 of 20 bytes for 0-10 s, then 20 until c's eviction... */
  assert_true(lru.util_mean > 0.5 && lru.util_mean <= 1.0);
  sim_trace_free(&t);
  sim_models_free(&m);
}

/*
 * The oracle: cost with the trace's true rates. Three models of one size,
 * room for two, no host tier. At t=30 c needs a place: cost has seen a
 * once and b twice, and evicts a, which then comes back three times (one
 * more load); the oracle knows a is asked for four times in all and b
 * twice, and evicts b.
 */
static void test_oracle_knows_rates(void **state) {
  (void)state;
  sim_models m;
  sim_trace t;
  sim_config c;
  memset(&m, 0, sizeof(m));
  memset(&t, 0, sizeof(t));
  add_model(&m, "a", 10, 1000);
  add_model(&m, "b", 10, 1000);
  add_model(&m, "c", 10, 1000);
  parse_trace("t,model,duration\n0,a,1\n10,b,1\n20,b,1\n30,c,1\n40,a,1\n50,a,1\n60,a,1\n",
              &t);
  sim_config_init(&c);
  c.capacity_bytes = 20;
  c.host_bytes = 0;
  c.keep_alive_ms = -1;
  sim_result cost = run(&m, &t, &c, SIM_COST);
  sim_result oracle = run(&m, &t, &c, SIM_ORACLE);
  assert_int_equal(cost.loads, 4);
  assert_int_equal(oracle.loads, 3);
  assert_int_equal(oracle.served, 7);
  assert_int_equal(oracle.warm, 4); /* b at 20, a at 40, 50, 60 */
  sim_policy p;
  assert_int_equal(sim_policy_parse("oracle", &p), 0);
  assert_int_equal(p, SIM_ORACLE);
  assert_string_equal(sim_policy_name(SIM_ORACLE), "oracle");
  sim_trace_free(&t);
  sim_models_free(&m);
}

/* With a host tier, an evicted model is offloaded and comes back by restore. */
static void test_offload_restore(void **state) {
  (void)state;
  sim_models m;
  sim_trace t;
  sim_config c;
  memset(&m, 0, sizeof(m));
  memset(&t, 0, sizeof(t));
  for (int i = 0; i < 2; i++) {
    sim_model x = model_of(i ? "b" : "a", 10, 1000);
    x.restore_ms = 100;
    x.offload_ms = 50;
    x.can_offload = 1;
    char err[256];
    assert_int_equal(sim_models_add(&m, &x, err, sizeof(err)), 0);
  }
  parse_trace("0,a,1\n10,b,1\n20,a,1\n", &t);
  sim_config_init(&c);
  c.capacity_bytes = 10;
  c.host_bytes = 100;
  c.keep_alive_ms = -1;
  sim_result r = run(&m, &t, &c, SIM_LRU);
  assert_int_equal(r.loads, 2);
  assert_int_equal(r.restores, 1);
  assert_int_equal(r.offloads, 2);
  assert_true(r.restore_s == 0.1);
  /* b waited for a's offload (50 ms) and its own load (1 s); later a
   * waited 50 + 100 ms for b's offload and its restore. */
  assert_true(r.wait_max_ms == 1050.0);
  sim_trace_free(&t);
  sim_models_free(&m);
}

/* Keep-alive 0 unloads after each use; forever keeps the model. */
static void test_keep_alive(void **state) {
  (void)state;
  sim_models m;
  sim_trace t;
  sim_config c;
  memset(&m, 0, sizeof(m));
  memset(&t, 0, sizeof(t));
  add_model(&m, "a", 10, 500);
  parse_trace("0,a,1\n10,a,1\n20,a,1\n", &t);
  sim_config_init(&c);
  c.capacity_bytes = 100;
  c.host_bytes = 0;
  c.keep_alive_ms = 0;
  sim_result r0 = run(&m, &t, &c, SIM_LRU);
  c.keep_alive_ms = -1;
  sim_result rf = run(&m, &t, &c, SIM_LRU);
  assert_int_equal(r0.loads, 3);
  assert_int_equal(r0.warm, 0);
  assert_int_equal(rf.loads, 1);
  assert_int_equal(rf.warm, 2);
  assert_int_equal(rf.evictions, 0);
  sim_trace_free(&t);
  sim_models_free(&m);
}

static void assert_same(const sim_result *a, const sim_result *b) {
  sim_result x = *a, y = *b;
  x.wall_s = y.wall_s = 0;
  x.events_per_s = y.events_per_s = 0;
  assert_memory_equal(&x, &y, sizeof(x));
}

static void test_deterministic(void **state) {
  (void)state;
  sim_models m;
  sim_trace t1, t2;
  sim_gen g;
  sim_config c;
  char err[256];
  assert_int_equal(sim_models_generate(&m, 12, 1ull << 30, 16ull << 30, 7, err, sizeof(err)), 0);
  for (int i = 0; i < m.n; i++)
    m.v[i].device = SIM_DEVICE_AUTO;
  assert_int_equal(sim_gen_parse("burst:n=3000,rate=0.5,s=1.1,every=300", &g, err, sizeof(err)), 0);
  assert_int_equal(sim_gen_run(&g, &m, 42, &t1, err, sizeof(err)), 0);
  assert_int_equal(sim_gen_run(&g, &m, 42, &t2, err, sizeof(err)), 0);
  assert_int_equal(t1.n, t2.n);
  assert_memory_equal(t1.v, t2.v, t1.n * sizeof(*t1.v));
  sim_config_init(&c);
  c.devices = 2;
  c.capacity_bytes = 24ull << 30;
  c.host_bytes = 32ull << 30;
  for (int p = SIM_LRU; p <= SIM_BELADY; p++) {
    sim_result a = run(&m, &t1, &c, (sim_policy)p);
    sim_result b = run(&m, &t2, &c, (sim_policy)p);
    assert_same(&a, &b);
    assert_true(a.loads > 0 && a.evictions > 0);
    assert_true(a.core_events > 0);
    assert_int_equal(a.requests, t1.n);
    assert_int_equal(a.served + a.failed, a.requests);
    for (int d = 0; d < c.devices; d++)
      assert_true(a.util[d] > 0 && a.util[d] <= 1.0);
  }
  /* Another seed gives another trace. */
  sim_trace t3;
  assert_int_equal(sim_gen_run(&g, &m, 43, &t3, err, sizeof(err)), 0);
  assert_true(t3.n != t1.n || memcmp(t3.v, t1.v, t1.n * sizeof(*t1.v)) != 0);
  sim_trace_free(&t1);
  sim_trace_free(&t2);
  sim_trace_free(&t3);
  sim_models_free(&m);
}

/* Equal sizes and load times, requests that rarely overlap: Belady's
 * choice is optimal, so it never loads more than lru or cost. */
static void test_belady_never_worse(void **state) {
  (void)state;
  for (uint64_t seed = 1; seed <= 6; seed++) {
    sim_models m;
    sim_trace t;
    sim_gen g;
    sim_config c;
    char err[256], name[16];
    memset(&m, 0, sizeof(m));
    for (int i = 0; i < 10; i++) {
      snprintf(name, sizeof(name), "e%d", i);
      add_model(&m, name, 100, 10);
    }
    assert_int_equal(sim_gen_parse("zipf:n=2000,rate=1,dur=0.01,s=0.9", &g, err, sizeof(err)), 0);
    assert_int_equal(sim_gen_run(&g, &m, seed, &t, err, sizeof(err)), 0);
    sim_config_init(&c);
    c.capacity_bytes = 100 * (2 + seed % 4);
    c.host_bytes = 0;
    c.keep_alive_ms = -1;
    sim_result lru = run(&m, &t, &c, SIM_LRU);
    sim_result cost = run(&m, &t, &c, SIM_COST);
    sim_result bel = run(&m, &t, &c, SIM_BELADY);
    assert_true(bel.loads <= lru.loads);
    assert_true(bel.loads <= cost.loads);
    assert_true(bel.loads < lru.loads); /* and it matters on these traces */
    sim_trace_free(&t);
    sim_models_free(&m);
  }
}

static void expect_trace_error(const char *csv, const char *needle) {
  sim_trace t;
  char err[256] = "";
  memset(&t, 0, sizeof(t));
  assert_int_equal(sim_trace_parse(csv, strlen(csv), &t, err, sizeof(err)), -1);
  if (strstr(err, needle) == NULL)
    fail_msg("error '%s' lacks '%s'", err, needle);
  assert_int_equal(t.n, 0);
}

static void test_csv_errors(void **state) {
  (void)state;
  expect_trace_error("t,model,duration\n0,a,1\n1,b\n", "line 3: expected 3 fields");
  expect_trace_error("0,a,1,4\n", "line 1: expected 3 fields");
  expect_trace_error("0,a,1\nx,a,1\n", "line 2: time 'x'");
  expect_trace_error("-1,a,1\n", "line 1: time '-1'");
  expect_trace_error("nan,a,1\n", "line 1: time 'nan'");
  expect_trace_error("1e400,a,1\n", "line 1: time");
  expect_trace_error("0,a,1\n\n# note\n2,a b,1\n", "line 4: model name 'a b'");
  expect_trace_error("0,,1\n", "line 1: model name ''");
  expect_trace_error("0,a/b,1\n", "line 1: model name");
  expect_trace_error("0,a,\n", "line 1: duration ''");
  expect_trace_error("0,a,0x10\n", "line 1: duration '0x10'");
  expect_trace_error("t,model,duration\n", "no requests");
  expect_trace_error("", "no requests");
  expect_trace_error("0,a,1\n1,a\0,1\n", "line 2");
}

static void test_csv_parse_and_write(void **state) {
  (void)state;
  sim_trace t, u;
  /* Header, comments, blank lines, CRLF, spaces, unsorted times. */
  parse_trace("t,model,duration\r\n# from the daemon\r\n\r\n 2.5 , b , 0.25 \r\n"
              "1,a,1.5\r\n2.5,a,0\r\n",
              &t);
  assert_int_equal(t.n, 3);
  assert_int_equal(t.nnames, 2);
  assert_string_equal(t.names[t.v[0].name], "a");
  assert_true(t.v[0].t_ns == 1000000000ull && t.v[0].dur_ns == 1500000000ull);
  /* Equal times keep the file's order. */
  assert_string_equal(t.names[t.v[1].name], "b");
  assert_int_equal(t.v[1].line, 4);
  assert_string_equal(t.names[t.v[2].name], "a");
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  assert_non_null(f);
  sim_trace_write(f, &t);
  fclose(f);
  parse_trace(buf, &u);
  free(buf);
  assert_int_equal(u.n, t.n);
  for (size_t i = 0; i < t.n; i++) {
    assert_true(u.v[i].t_ns == t.v[i].t_ns && u.v[i].dur_ns == t.v[i].dur_ns);
    assert_string_equal(u.names[u.v[i].name], t.names[t.v[i].name]);
  }
  sim_trace_free(&t);
  sim_trace_free(&u);
}

/* A trace naming a model the table lacks fails with its line. */
static void test_unknown_model(void **state) {
  (void)state;
  sim_models m;
  sim_trace t;
  sim_config c;
  sim_result r;
  char err[256] = "";
  memset(&m, 0, sizeof(m));
  add_model(&m, "a", 10, 1);
  parse_trace("0,a,1\n1,ghost,1\n", &t);
  sim_config_init(&c);
  assert_int_equal(sim_run(&m, &t, &c, &r, err, sizeof(err)), -1);
  assert_non_null(strstr(err, "line 2: model 'ghost'"));
  sim_trace_free(&t);
  sim_models_free(&m);
}

static void test_zipf_properties(void **state) {
  (void)state;
  sim_models m;
  sim_trace t;
  sim_gen g;
  char err[256];
  assert_int_equal(sim_models_generate(&m, 8, 1 << 20, 1 << 30, 1, err, sizeof(err)), 0);
  assert_int_equal(sim_gen_parse("zipf:n=5000,s=1.2,rate=3", &g, err, sizeof(err)), 0);
  assert_int_equal(sim_gen_run(&g, &m, 9, &t, err, sizeof(err)), 0);
  assert_int_equal(t.n, 5000);
  size_t count[8] = {0};
  for (size_t i = 0; i < t.n; i++) {
    if (i > 0)
      assert_true(t.v[i - 1].t_ns <= t.v[i].t_ns);
    count[sim_models_find(&m, t.names[t.v[i].name])]++;
  }
  for (int k = 1; k < 8; k++)
    assert_true(count[0] > count[k]);
  assert_true(count[0] > count[1] && count[1] > count[7]);
  /* 5000 requests at 3/s last about 1667 s. */
  double span = (double)t.v[t.n - 1].t_ns / 1e9;
  assert_true(span > 1400 && span < 1900);
  sim_trace_free(&t);
  sim_models_free(&m);
}

static void test_diurnal_rotates(void **state) {
  (void)state;
  sim_models m;
  sim_trace t;
  sim_gen g;
  char err[256];
  assert_int_equal(sim_models_generate(&m, 4, 1 << 20, 1 << 30, 1, err, sizeof(err)), 0);
  assert_int_equal(
      sim_gen_parse("diurnal:n=8000,s=1.5,rate=0.1,period=40000", &g, err, sizeof(err)), 0);
  assert_int_equal(sim_gen_run(&g, &m, 3, &t, err, sizeof(err)), 0);
  assert_int_equal(t.n, 8000);
  /* Quarter q of each period: the hot model is (0 + q) mod 4. */
  size_t count[4][4];
  memset(count, 0, sizeof(count));
  for (size_t i = 0; i < t.n; i++) {
    if (i > 0)
      assert_true(t.v[i - 1].t_ns <= t.v[i].t_ns);
    double ts = (double)t.v[i].t_ns / 1e9;
    int q = (int)(ts / 10000) % 4;
    count[q][sim_models_find(&m, t.names[t.v[i].name])]++;
  }
  for (int q = 0; q < 4; q++)
    for (int k = 0; k < 4; k++)
      if (k != q)
        assert_true(count[q][q] > count[q][k]);
  sim_trace_free(&t);
  sim_models_free(&m);
}

static void test_burst_and_gen_errors(void **state) {
  (void)state;
  sim_models m;
  sim_trace t;
  sim_gen g;
  char err[256];
  assert_int_equal(sim_models_generate(&m, 5, 1 << 20, 1 << 30, 1, err, sizeof(err)), 0);
  assert_int_equal(
      sim_gen_parse("burst:n=1000,rate=1,every=100,size=30,spread=5", &g, err, sizeof(err)), 0);
  assert_int_equal(sim_gen_run(&g, &m, 5, &t, err, sizeof(err)), 0);
  /* About 10 bursts of 30 on top of 1000. */
  assert_true(t.n >= 1000 + 30 * 3);
  for (size_t i = 1; i < t.n; i++)
    assert_true(t.v[i - 1].t_ns <= t.v[i].t_ns);
  sim_trace_free(&t);
  assert_int_equal(sim_gen_parse("pareto:n=1", &g, err, sizeof(err)), -1);
  assert_non_null(strstr(err, "unknown kind"));
  assert_int_equal(sim_gen_parse("zipf:q=1", &g, err, sizeof(err)), -1);
  assert_non_null(strstr(err, "unknown key 'q'"));
  assert_int_equal(sim_gen_parse("zipf:n=abc", &g, err, sizeof(err)), -1);
  assert_int_equal(sim_gen_parse("zipf:rate=0", &g, err, sizeof(err)), -1);
  assert_int_equal(sim_gen_parse("zipf:n", &g, err, sizeof(err)), -1);
  sim_models_free(&m);
}

static void test_model_table(void **state) {
  (void)state;
  sim_models m;
  char err[256] = "";
  const char *ok =
      "{\"format\": \"modelbuf-models/1\", \"models\": ["
      "{\"name\": \"llama\", \"footprint_bytes\": 17179869184, \"load_ms\": 9000,"
      " \"restore_ms\": 900, \"offload_ms\": 800, \"unload_ms\": 100, \"device\": 1,"
      " \"keep_alive_ms\": -1, \"cold_load_ms\": 12000},"
      "{\"name\": \"whisper\", \"footprint_bytes\": 6e9, \"load_ms\": 3000.5,"
      " \"device\": \"auto\", \"pinned\": true, \"max_concurrency\": 2}]}";
  assert_int_equal(sim_models_parse(ok, strlen(ok), &m, err, sizeof(err)), 0);
  assert_int_equal(m.n, 2);
  assert_true(m.v[0].can_offload && m.v[0].device == 1 && m.v[0].keep_alive_ms == -1);
  assert_true(m.v[0].footprint_bytes == 17179869184ull && m.v[0].restore_ms == 900);
  assert_false(m.v[1].can_offload);
  assert_true(m.v[1].device == SIM_DEVICE_AUTO && m.v[1].pinned && m.v[1].max_concurrency == 2);
  assert_true(m.v[1].keep_alive_ms == SIM_KA_DEFAULT);
  /* Round trip through the writer. */
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  sim_models_write(f, &m);
  fclose(f);
  sim_models n;
  assert_int_equal(sim_models_parse(buf, len, &n, err, sizeof(err)), 0);
  free(buf);
  assert_int_equal(n.n, 2);
  assert_true(n.v[0].footprint_bytes == m.v[0].footprint_bytes && n.v[1].pinned);
  assert_true(n.v[1].load_ms == 3000.5 && n.v[0].keep_alive_ms == -1);
  sim_models_free(&n);
  sim_models_free(&m);

  static const struct {
    const char *json, *needle;
  } bad[] = {
      {"{\"models\": [{\"name\": \"a\", \"load_ms\": 1}]}", "'a': \"footprint_bytes\" is required"},
      {"{\"models\": [{\"name\": \"a\", \"footprint_bytes\": 1}]}", "\"load_ms\" is required"},
      {"{\"models\": [{\"name\": \"a\", \"footprint_bytes\": -5, \"load_ms\": 1}]}",
       "footprint_bytes"},
      {"{\"models\": [{\"name\": \"a b\", \"footprint_bytes\": 1, \"load_ms\": 1}]}",
       "models[0]: \"name\""},
      {"[{\"name\": \"a\", \"footprint_bytes\": 1, \"load_ms\": 1},"
       " {\"name\": \"a\", \"footprint_bytes\": 1, \"load_ms\": 1}]",
       "'a' appears twice"},
      {"{\"models\": [{\"name\": \"a\", \"footprint_bytes\": 1, \"load_ms\": 1, \"offload\": "
       "true}]}",
       "needs restore_ms and offload_ms"},
      {"{\"models\": [{\"name\": \"a\", \"footprint_bytes\": 1, \"load_ms\": 1, \"device\": "
       "\"gpu\"}]}",
       "\"device\""},
      {"{\"models\": []}", "empty"},
      {"{\"models\": 3}", "expected"},
      {"{\"models\": [", "line 1"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    err[0] = '\0';
    assert_int_equal(sim_models_parse(bad[i].json, strlen(bad[i].json), &m, err, sizeof(err)), -1);
    if (strstr(err, bad[i].needle) == NULL)
      fail_msg("case %zu: error '%s' lacks '%s'", i, err, bad[i].needle);
  }
}

/*
 * The admission check through the simulator (check_admission): on several
 * GPUs, with models placed anywhere and some bound to one device, each
 * shortcut of the admission planning is checked against the full planning
 * and none differs; the decisions, and so the results, are those of a run
 * without the check. tests/e2e/test_admission_check.py runs the standard
 * suite and random configurations the same way.
 */
static void test_admission_check(void **state) {
  (void)state;
  sim_models m;
  sim_trace t;
  sim_config c;
  sim_gen g;
  char err[256] = "";
  memset(&m, 0, sizeof(m));
  memset(&t, 0, sizeof(t));
  assert_int_equal(sim_models_generate(&m, 40, 256ull << 20, 24ull << 30, 7, err, sizeof(err)), 0);
  for (int i = 0; i < m.n; i += 5)
    m.v[i].device = i % 3; /* some bound to one device */
  assert_int_equal(sim_gen_parse("burst:n=4000,rate=2,s=0.9,dur=3", &g, err, sizeof(err)), 0);
  assert_int_equal(sim_gen_run(&g, &m, 3, &t, err, sizeof(err)), 0);
  sim_config_init(&c);
  c.devices = 3;
  c.capacity_bytes = 40ull << 30;
  c.host_bytes = 32ull << 30;
  c.keep_alive_ms = 60000;
  for (int p = SIM_LRU; p <= SIM_BELADY; p++) {
    c.check_admission = 0;
    sim_result plain = run(&m, &t, &c, (sim_policy)p);
    c.check_admission = 1;
    sim_result checked = run(&m, &t, &c, (sim_policy)p);
    if (checked.admit_differ != 0)
      fail_msg("%s: %s", sim_policy_name((sim_policy)p), checked.admit_first);
    assert_true(checked.admit_auto > 0);
    assert_true(checked.admit_any > 0);
    assert_true(checked.admit_planned > 0);
    assert_int_equal(checked.loads, plain.loads);
    assert_int_equal(checked.restores, plain.restores);
    assert_int_equal(checked.evictions, plain.evictions);
    assert_int_equal(checked.served, plain.served);
    assert_int_equal(checked.core_events, plain.core_events);
    assert_true(checked.load_s == plain.load_s);
  }
  sim_trace_free(&t);
  sim_models_free(&m);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_teardown(test_custom_rank_order, teardown),
      cmocka_unit_test_teardown(test_custom_needs_callback, teardown),
      cmocka_unit_test_teardown(test_many_candidates, teardown),
      cmocka_unit_test(test_hand_checked_belady),
      cmocka_unit_test(test_oracle_knows_rates),
      cmocka_unit_test(test_offload_restore),
      cmocka_unit_test(test_keep_alive),
      cmocka_unit_test(test_deterministic),
      cmocka_unit_test(test_belady_never_worse),
      cmocka_unit_test(test_csv_errors),
      cmocka_unit_test(test_csv_parse_and_write),
      cmocka_unit_test(test_unknown_model),
      cmocka_unit_test(test_zipf_properties),
      cmocka_unit_test(test_diurnal_rotates),
      cmocka_unit_test(test_burst_and_gen_errors),
      cmocka_unit_test(test_model_table),
      cmocka_unit_test(test_admission_check),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
