/*
 * fuzz_trace.c - libFuzzer target for the simulator's CSV trace parser
 * (sim/trace.c) and, on the same bytes, its model-table parser.
 *
 * A trace that parses is written back and parsed again (the two must be
 * equal to the microsecond), and a small one is replayed through the core
 * with one model per name it uses, so the engine sees odd traces too (equal
 * times, zero durations, huge gaps). Any crash, leak or sanitizer report,
 * or a failed round trip, is a bug.
 *
 * Seeds: tests/fuzz/corpus/trace/. Run:
 *   cp -r tests/fuzz/corpus/trace /tmp/tc && build-fuzz/tests/fuzz/fuzz_trace /tmp/tc
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sim.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void replay(const sim_trace *t) {
  sim_models m;
  sim_config c;
  sim_result r;
  char err[256];
  memset(&m, 0, sizeof(m));
  for (int i = 0; i < t->nnames; i++) {
    sim_model x;
    sim_model_init(&x);
    snprintf(x.name, sizeof(x.name), "%s", t->names[i]);
    x.footprint_bytes = 10 + (uint64_t)(i % 3) * 10;
    x.load_ms = 100 * (i % 4);
    x.restore_ms = 10;
    x.offload_ms = 5;
    x.can_offload = i % 2;
    if (sim_models_add(&m, &x, err, sizeof(err)) != 0)
      abort();
  }
  sim_config_init(&c);
  c.capacity_bytes = 40;
  c.host_bytes = 30;
  c.keep_alive_ms = 1000;
  for (int p = SIM_LRU; p <= SIM_BELADY; p++) {
    c.policy = (sim_policy)p;
    if (sim_run(&m, t, &c, &r, err, sizeof(err)) != 0)
      abort();
    if (r.served + r.failed != r.requests)
      abort();
  }
  sim_models_free(&m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  sim_trace t, u;
  sim_models models;
  char err[256];
  if (sim_models_parse((const char *)data, size, &models, err, sizeof(err)) == 0)
    sim_models_free(&models);
  if (sim_trace_parse((const char *)data, size, &t, err, sizeof(err)) != 0)
    return 0;
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  if (f == NULL)
    abort();
  sim_trace_write(f, &t);
  fclose(f);
  if (sim_trace_parse(buf, len, &u, err, sizeof(err)) != 0 || u.n != t.n)
    abort();
  for (size_t i = 0; i < t.n; i++) {
    /* The writer keeps microseconds. */
    if (u.v[i].t_ns / 1000 != t.v[i].t_ns / 1000 || u.v[i].dur_ns / 1000 != t.v[i].dur_ns / 1000 ||
        strcmp(u.names[u.v[i].name], t.names[t.v[i].name]) != 0)
      abort();
  }
  free(buf);
  sim_trace_free(&u);
  if (t.n <= 64)
    replay(&t);
  sim_trace_free(&t);
  return 0;
}
