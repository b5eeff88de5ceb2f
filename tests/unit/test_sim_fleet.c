/*
 * test_sim_fleet.c - the fleet simulator (sim/sim_fleet.c): its ring
 * against the nodes HAProxy 2.6 chose in tests/e2e/test_haproxy.py, hash,
 * least and spill routing hand-checked on small traces, determinism, the
 * admission check on every node, and the options it refuses. The real core
 * on a virtual clock: no sleeps.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "sim_fleet.h"

static void add_model(sim_models *t, const char *name, uint64_t bytes, double load_ms) {
  sim_model m;
  sim_model_init(&m);
  snprintf(m.name, sizeof(m.name), "%s", name);
  m.footprint_bytes = bytes;
  m.load_ms = load_ms;
  m.unload_ms = 1;
  char err[256];
  assert_int_equal(sim_models_add(t, &m, err, sizeof(err)), 0);
}

static void parse_trace(const char *csv, sim_trace *t) {
  char err[256] = "";
  if (sim_trace_parse(csv, strlen(csv), t, err, sizeof(err)) != 0)
    fail_msg("trace: %s", err);
}

static sim_fleet_result run(const sim_models *m, const sim_trace *t, sim_fleet_config *c,
                            sim_routing r) {
  sim_fleet_result out;
  char err[256] = "";
  c->routing = r;
  if (sim_fleet_run(m, t, c, &out, err, sizeof(err)) != 0)
    fail_msg("sim_fleet_run %s: %s", sim_routing_name(r), err);
  return out;
}

/* The nodes HAProxy 2.6.12 gave these names behind examples/haproxy's
 * recipe with three servers of weight 100 (tests/e2e/test_haproxy.py
 * checks the same against the live balancer). */
static void test_ring_is_haproxys(void **state) {
  (void)state;
  static const struct {
    const char *name;
    int node;
  } seen[] = {{"m00", 0}, {"m01", 0}, {"m02", 2}, {"m03", 1}, {"m04", 2},
              {"m05", 0}, {"m06", 0}, {"m07", 1}, {"m08", 0}, {"m09", 0},
              {"m10", 1}, {"m11", 1}, {"org/m", 0}};
  for (size_t i = 0; i < sizeof(seen) / sizeof(seen[0]); i++)
    assert_int_equal(sim_fleet_home(seen[i].name, 3, 100), seen[i].node);
  /* One node takes everything; a lost node's names go elsewhere and only
   * those move (the ring of 2 is the ring of 3 without server 3). */
  assert_int_equal(sim_fleet_home("m02", 1, 100), 0);
  int moved = 0;
  char name[16];
  for (int i = 0; i < 300; i++) {
    snprintf(name, sizeof(name), "model-%d", i);
    int h3 = sim_fleet_home(name, 3, 100), h2 = sim_fleet_home(name, 2, 100);
    if (h3 != 2)
      assert_int_equal(h2, h3);
    else
      moved++;
  }
  assert_true(moved > 70 && moved < 130); /* about a third */
  assert_int_equal(sim_fleet_home("x", 0, 100), -1);
}

/*
 * Three nodes, one model a (1 s to load, kept forever): three requests at
 * once go to the three nodes in turn under least (each loads a), the
 * fourth, when all are idle again, to the first; under hash all four go
 * to a's node, which loads it once and serves the others warm, queued
 * behind each other (max_concurrency 1).
 */
static void test_hand_checked_least_and_hash(void **state) {
  (void)state;
  sim_models m;
  sim_trace t;
  memset(&m, 0, sizeof(m));
  memset(&t, 0, sizeof(t));
  add_model(&m, "a", 10, 1000);
  parse_trace("t,model,duration\n0,a,5\n1,a,5\n2,a,5\n20,a,1\n", &t);
  sim_fleet_config c;
  sim_fleet_config_init(&c);
  c.nodes = 3;
  c.node.capacity_bytes = 100;
  c.node.host_bytes = 0;
  c.node.keep_alive_ms = -1;
  int route[4];
  c.route = route;
  sim_fleet_result r = run(&m, &t, &c, SIM_ROUTE_LEAST);
  assert_int_equal(route[0], 0);
  assert_int_equal(route[1], 1);
  assert_int_equal(route[2], 2);
  assert_int_equal(route[3], 0);
  assert_int_equal(r.all.loads, 3);
  assert_int_equal(r.all.warm, 1);
  assert_true(r.copies == 3.0);
  assert_int_equal(r.node_requests[0], 2);
  assert_int_equal(r.node_loads[1], 1);
  assert_true(r.all.wait_p50_ms == 1000.0);
  int home = sim_fleet_home("a", 3, 100);
  r = run(&m, &t, &c, SIM_ROUTE_HASH);
  for (int i = 0; i < 4; i++)
    assert_int_equal(route[i], home);
  assert_int_equal(r.all.loads, 1);
  assert_int_equal(r.all.warm, 3);
  assert_true(r.copies == 1.0);
  assert_int_equal(r.node_requests[home], 4);
  assert_true(r.balance == 3.0);
  /* Granted at 1 s (after the load), 6 s and 11 s (each behind the one
   * before, held 5 s), and at once at 20 s: waits 1, 5, 9 and 0 s. */
  assert_true(r.all.wait_max_ms == 9000.0);
  assert_true(r.all.wait_p50_ms == 1000.0);
  assert_int_equal(r.spilled, 0);
  sim_trace_free(&t);
  sim_models_free(&m);
}

/*
 * Two nodes, spill. The second request comes while the first is in
 * flight: 2 in flight with it; at a balance factor of 150 that is
 * ceil(2 x 1.5) = 3 slots, split 1 and 2 between servers 1 and 2 (HAProxy
 * rounds the share of each by its place in the list). A model whose node
 * is server 1 holds 1 already: the request spills to server 2. At 300 %
 * there are 6 slots, 3 each: it stays.
 */
static void test_hand_checked_spill(void **state) {
  (void)state;
  const char *name = NULL;
  static const char *const names[] = {"a", "b", "c", "d", "e", "f", "g", "h"};
  for (size_t i = 0; i < sizeof(names) / sizeof(names[0]) && name == NULL; i++)
    if (sim_fleet_home(names[i], 2, 100) == 0)
      name = names[i];
  assert_non_null(name);
  sim_models m;
  sim_trace t;
  memset(&m, 0, sizeof(m));
  memset(&t, 0, sizeof(t));
  add_model(&m, name, 10, 1000);
  char csv[128];
  snprintf(csv, sizeof(csv), "0,%s,10\n1,%s,10\n", name, name);
  parse_trace(csv, &t);
  sim_fleet_config c;
  sim_fleet_config_init(&c);
  c.nodes = 2;
  c.node.capacity_bytes = 100;
  c.node.host_bytes = 0;
  int route[2];
  c.route = route;
  c.balance_factor = 150;
  sim_fleet_result r = run(&m, &t, &c, SIM_ROUTE_SPILL);
  assert_int_equal(route[0], 0);
  assert_int_equal(route[1], 1);
  assert_int_equal(r.spilled, 1);
  assert_int_equal(r.all.loads, 2);
  c.balance_factor = 300;
  r = run(&m, &t, &c, SIM_ROUTE_SPILL);
  assert_int_equal(route[0], 0);
  assert_int_equal(route[1], 0);
  assert_int_equal(r.spilled, 0);
  assert_int_equal(r.all.loads, 1);
  sim_trace_free(&t);
  sim_models_free(&m);
}

static void assert_same(const sim_fleet_result *a, const sim_fleet_result *b) {
  sim_fleet_result x = *a, y = *b;
  x.all.wall_s = y.all.wall_s = 0;
  x.all.events_per_s = y.all.events_per_s = 0;
  assert_memory_equal(&x, &y, sizeof(x));
}

static void test_deterministic(void **state) {
  (void)state;
  sim_models m;
  sim_trace t;
  sim_gen g;
  char err[256];
  assert_int_equal(sim_models_generate(&m, 24, 1ull << 30, 24ull << 30, 5, err, sizeof(err)), 0);
  assert_int_equal(sim_gen_parse("burst:n=2000,rate=2,s=1.0,dur=2,every=200", &g, err,
                                 sizeof(err)), 0);
  assert_int_equal(sim_gen_run(&g, &m, 9, &t, err, sizeof(err)), 0);
  sim_fleet_config c;
  sim_fleet_config_init(&c);
  c.nodes = 4;
  c.node.devices = 2;
  c.node.capacity_bytes = 40ull << 30;
  c.node.host_bytes = 32ull << 30;
  int *r1 = calloc(t.n, sizeof(*r1)), *r2 = calloc(t.n, sizeof(*r2));
  int *home = calloc((size_t)t.nnames, sizeof(*home));
  assert_non_null(r1);
  assert_non_null(r2);
  assert_non_null(home);
  for (int p = SIM_LRU; p <= SIM_COST; p++)
    for (int k = SIM_ROUTE_HASH; k <= SIM_ROUTE_SPILL; k++) {
      c.node.policy = (sim_policy)p;
      c.route = r1;
      sim_fleet_result a = run(&m, &t, &c, (sim_routing)k);
      c.route = r2;
      sim_fleet_result b = run(&m, &t, &c, (sim_routing)k);
      assert_same(&a, &b);
      assert_memory_equal(r1, r2, t.n * sizeof(*r1));
      assert_int_equal(a.all.requests, t.n);
      assert_int_equal(a.all.served + a.all.failed, a.all.requests);
      uint64_t sum = 0;
      for (int n = 0; n < c.nodes; n++) {
        sum += a.node_requests[n];
        assert_true(a.all.util[n] > 0 && a.all.util[n] <= 1.0);
      }
      assert_int_equal(sum, t.n);
      if (k == SIM_ROUTE_HASH) {
        assert_true(a.copies == 1.0);
        for (int i = 0; i < t.nnames; i++)
          home[i] = sim_fleet_home(t.names[i], 4, 100);
        for (size_t i = 0; i < t.n; i++)
          assert_int_equal(r1[i], home[t.v[i].name]);
      } else {
        assert_true(a.copies >= 1.0);
      }
      if (k == SIM_ROUTE_SPILL)
        assert_true(a.spilled > 0);
    }
  free(r1);
  free(r2);
  free(home);
  sim_trace_free(&t);
  sim_models_free(&m);
}

/* --check-admission on a fleet: every node's core checks its admission
 * shortcuts, the counts add up over the nodes, nothing differs, and the
 * decisions (every figure but the check's) are those of a run without it. */
static void test_admission_check(void **state) {
  (void)state;
  sim_models m;
  sim_trace t;
  sim_gen g;
  char err[256];
  assert_int_equal(sim_models_generate(&m, 24, 1ull << 30, 24ull << 30, 5, err, sizeof(err)), 0);
  assert_int_equal(sim_gen_parse("zipf:n=1500,rate=1,s=1.0,dur=2", &g, err, sizeof(err)), 0);
  assert_int_equal(sim_gen_run(&g, &m, 3, &t, err, sizeof(err)), 0);
  sim_fleet_config c;
  sim_fleet_config_init(&c);
  c.nodes = 3;
  c.node.capacity_bytes = 40ull << 30;
  c.node.host_bytes = 16ull << 30;
  for (int k = SIM_ROUTE_HASH; k <= SIM_ROUTE_SPILL; k++) {
    c.node.check_admission = 0;
    sim_fleet_result plain = run(&m, &t, &c, (sim_routing)k);
    c.node.check_admission = 1;
    sim_fleet_result checked = run(&m, &t, &c, (sim_routing)k);
    assert_true(checked.all.admit_auto + checked.all.admit_any + checked.all.admit_planned > 0);
    assert_int_equal(checked.all.admit_differ, 0);
    assert_string_equal(checked.all.admit_first, "");
    checked.all.admit_auto = checked.all.admit_any = checked.all.admit_planned = 0;
    checked.all.admit_bound = 0;
    assert_same(&plain, &checked);
  }
  sim_trace_free(&t);
  sim_models_free(&m);
}

static void test_refused(void **state) {
  (void)state;
  sim_models m;
  sim_trace t;
  memset(&m, 0, sizeof(m));
  memset(&t, 0, sizeof(t));
  add_model(&m, "a", 10, 1000);
  parse_trace("0,a,1\n", &t);
  sim_fleet_config c;
  sim_fleet_result r;
  char err[256];
  sim_fleet_config_init(&c);
  c.node.policy = SIM_BELADY;
  assert_int_equal(sim_fleet_run(&m, &t, &c, &r, err, sizeof(err)), -1);
  assert_non_null(strstr(err, "belady"));
  sim_fleet_config_init(&c);
  c.nodes = 0;
  assert_int_equal(sim_fleet_run(&m, &t, &c, &r, err, sizeof(err)), -1);
  sim_fleet_config_init(&c);
  c.balance_factor = 100;
  assert_int_equal(sim_fleet_run(&m, &t, &c, &r, err, sizeof(err)), -1);
  sim_trace t2;
  memset(&t2, 0, sizeof(t2));
  parse_trace("0,zz,1\n", &t2);
  sim_fleet_config_init(&c);
  assert_int_equal(sim_fleet_run(&m, &t2, &c, &r, err, sizeof(err)), -1);
  assert_non_null(strstr(err, "zz"));
  sim_routing k;
  assert_int_equal(sim_routing_parse("spill", &k), 0);
  assert_int_equal(k, SIM_ROUTE_SPILL);
  assert_int_equal(sim_routing_parse("random", &k), -1);
  sim_trace_free(&t);
  sim_trace_free(&t2);
  sim_models_free(&m);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_ring_is_haproxys),
      cmocka_unit_test(test_hand_checked_least_and_hash),
      cmocka_unit_test(test_hand_checked_spill),
      cmocka_unit_test(test_deterministic),
      cmocka_unit_test(test_admission_check),
      cmocka_unit_test(test_refused),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
