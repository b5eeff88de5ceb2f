/*
 * test_lifecycle.c - the verdict and the advice of `modelbuf bench
 * lifecycle` on measurements whose answer is known: a clean model, one
 * that keeps 8 MiB more each cycle, one whose memory does not come back,
 * load times on each side of the 2/5/10 s lines, offload that pays and
 * offload that does not, and the break-even keep-alive.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <setjmp.h>
#include <cmocka.h>

#include "lifecycle.h"

#define MiB (1024ull * 1024ull)
#define GiB (1024ull * MiB)

static lc_cycle cyc[16];

/* n cycles of a model of `bytes` that grows by `grow` bytes each cycle. */
static lc_input make(int n, uint64_t bytes, uint64_t grow, double load_ms, double restore_ms) {
  memset(cyc, 0, sizeof(cyc));
  for (int i = 0; i < n; i++) {
    lc_cycle *c = &cyc[i];
    c->load_ms = i == 0 ? load_ms * 3 : load_ms + (i % 2); /* cold first */
    c->first_ms = 40;
    c->steady_ms = 10;
    c->offload_ms = restore_ms < 0 ? LC_NONE : restore_ms;
    c->restore_ms = restore_ms;
    c->unload_ms = 5;
    c->dev_peak = bytes + grow * (uint64_t)i + 64 * MiB;
    c->dev_steady = bytes + grow * (uint64_t)i;
    c->host_peak = 300 * MiB;
    c->host_steady = 290 * MiB + (uint64_t)(i % 3) * 100000; /* RSS noise */
    c->host_offloaded = restore_ms < 0 ? 0 : bytes;
    c->dev_residue = (int64_t)(i % 2 ? 200000 : -100000); /* noise, no trend */
    c->os_residue = 0;
  }
  lc_input in = {"m", "cuda:0", 1, 80 * GiB, 32 * GiB, cyc, n, NULL, NULL, "process"};
  return in;
}

static int has_advice(const lc_report *r, const char *words) {
  for (int i = 0; i < r->n_advice; i++)
    if (strstr(r->advice[i], words))
      return 1;
  return 0;
}

static void test_slope(void **state) {
  (void)state;
  double flat[] = {5, 5, 5, 5};
  double line[] = {1, 3, 5, 7, 9};
  double noisy[] = {10, 12, 9, 11, 10, 12};
  assert_true(lc_slope(flat, 4) == 0.0);
  assert_true(lc_slope(line, 5) > 1.999 && lc_slope(line, 5) < 2.001);
  assert_true(lc_slope(noisy, 6) < 0.5);
  assert_true(lc_slope(line, 1) == 0.0);
}

static void test_restore_growth(void **state) {
  (void)state;
  /* A host copy allocated at the first offload and kept: one step from the
   * load to the first restore, then flat. Not growth. */
  double step[] = {64, 128, 128, 128};
  assert_true(lc_restore_growth(step, 4) == 0.0);
  /* 16 more at every restore: the slope from restore to restore. */
  double leak[] = {64, 80, 96, 112};
  assert_true(lc_restore_growth(leak, 4) > 15.999 && lc_restore_growth(leak, 4) < 16.001);
  /* One restore: the load to the restore is all there is. */
  double one[] = {64, 80};
  assert_true(lc_restore_growth(one, 2) > 15.999 && lc_restore_growth(one, 2) < 16.001);
  assert_true(lc_restore_growth(one, 1) == 0.0);
}

/* On the host device, a model in process whose RSS holds its host copy as
 * well as its arena: the footprint is the device figure, not the RSS. */
static void test_footprint_on_the_host_device(void **state) {
  (void)state;
  lc_input in = make(4, 64 * MiB, 0, 100, 200);
  in.device = "host";
  for (int i = 0; i < 4; i++) {
    cyc[i].dev_peak = cyc[i].dev_steady = 64 * MiB;
    cyc[i].host_peak = cyc[i].host_steady = 128 * MiB + 300 * 1024;
    cyc[i].os_residue = cyc[i].dev_residue = 0;
  }
  lc_report r;
  lc_analyse(&in, &r);
  assert_int_equal(r.footprint, 64 * MiB);
  assert_int_equal(r.reserve_bytes, 96 * MiB);
  assert_true(r.reclaimed_os_pct == 100.0);
  /* Without a device figure, the RSS is the footprint. */
  for (int i = 0; i < 4; i++)
    cyc[i].dev_peak = cyc[i].dev_steady = 0;
  lc_analyse(&in, &r);
  assert_int_equal(r.footprint, 128 * MiB + 300 * 1024);
}

static void test_clean_model_passes(void **state) {
  (void)state;
  lc_input in = make(8, 4 * GiB, 0, 3000, 600);
  lc_report r;
  lc_analyse(&in, &r);
  assert_int_equal(r.leaks, 0);
  assert_non_null(strstr(r.verdict, "pass"));
  assert_true(r.cold_load_ms == 9000);
  assert_true(r.warm_load_ms >= 3000 && r.warm_load_ms <= 3001);
  assert_true(r.reclaimed_dev_pct > 99.0);
  assert_int_equal(r.dev_peak, 4 * GiB + 64 * MiB);
  assert_int_equal(r.reserve_bytes, (4 * GiB + 64 * MiB) * 3 / 2);
}

static void test_leak_is_flagged(void **state) {
  (void)state;
  lc_input in = make(8, 4 * GiB, 8 * MiB, 3000, 600);
  /* Below the limit for a 4 GiB model (0.5% = 20 MiB/cycle): passes. */
  lc_report r;
  lc_analyse(&in, &r);
  assert_int_equal(r.leaks, 0);
  /* A 1 GiB model keeping 8 MiB a cycle: over both limits, fails. */
  in = make(8, 1 * GiB, 8 * MiB, 3000, 600);
  lc_analyse(&in, &r);
  assert_int_equal(r.leaks, 1);
  assert_non_null(strstr(r.verdict, "FAIL"));
  assert_true(r.slope_bytes > 7.9 * MiB && r.slope_bytes < 8.1 * MiB);
  assert_true(has_advice(&r, "It leaks"));
  /* What stays behind after each unload growing is a leak too. */
  in = make(6, 1 * GiB, 0, 3000, 600);
  for (int i = 0; i < 6; i++)
    cyc[i].os_residue = (int64_t)(i * 16 * MiB);
  lc_analyse(&in, &r);
  assert_int_equal(r.leaks, 1);
  /* A worker that keeps 16 MiB per restore, restarted every cycle: the
   * footprint at the end of each residency is flat, the growth per restore
   * is not. */
  in = make(6, 1 * GiB, 0, 3000, 600);
  for (int i = 0; i < 6; i++)
    cyc[i].restore_growth = 16.0 * MiB;
  lc_analyse(&in, &r);
  assert_int_equal(r.leaks, 1);
  assert_non_null(strstr(r.verdict, "per restore"));
  assert_true(r.growth_restore == 16.0 * MiB);
  /* Two cycles are too few to say. */
  in = make(2, 1 * GiB, 64 * MiB, 3000, 600);
  lc_analyse(&in, &r);
  assert_int_equal(r.leaks, -1);
}

/* The tiers of the leak over the run, next to the slope. */
static void test_leak_tiers(void **state) {
  (void)state;
  lc_report r;
  lc_input in = make(8, 4 * GiB, 0, 3000, 600);
  lc_analyse(&in, &r);
  assert_string_equal(r.tier, "PASS");
  assert_true(r.growth_run_bytes < 1 * MiB);
  /* 8 MiB a cycle, counted from the second cycle: 48 MiB over the run. */
  in = make(8, 1 * GiB, 8 * MiB, 3000, 600);
  lc_analyse(&in, &r);
  assert_string_equal(r.tier, "CAUTION");
  assert_true(r.growth_run_bytes == 48.0 * MiB);
  in = make(8, 1 * GiB, 9 * MiB, 3000, 600);
  lc_analyse(&in, &r);
  assert_string_equal(r.tier, "FAIL"); /* 54 MiB */
  /* What stays after the unloads adds up over the run. */
  in = make(6, 1 * GiB, 0, 3000, 600);
  for (int i = 0; i < 6; i++)
    cyc[i].os_residue = cyc[i].dev_residue = (int64_t)(i < 5 ? 2 * MiB : 0);
  lc_analyse(&in, &r);
  assert_true(r.growth_run_bytes == 20.0 * MiB); /* device and OS: 2 + 2 a cycle */
  assert_string_equal(r.tier, "CAUTION");
  /* A worker restarted every cycle that keeps 16 MiB per restore, three
   * restores a residency: 48 MiB within each run of it. */
  in = make(6, 1 * GiB, 0, 3000, 600);
  for (int i = 0; i < 6; i++) {
    cyc[i].restore_growth = 16.0 * MiB;
    cyc[i].restores = 3;
  }
  lc_analyse(&in, &r);
  assert_true(r.growth_run_bytes == 48.0 * MiB);
  assert_string_equal(r.tier, "CAUTION");
  /* The lines: under 10 MiB PASS, 10 to 50 CAUTION, above FAIL. */
  in = make(4, 1 * GiB, 0, 3000, 600);
  for (int i = 0; i < 4; i++)
    cyc[i].os_residue = cyc[i].dev_residue = 0;
  cyc[0].dev_residue = (int64_t)(10 * MiB - 1);
  lc_analyse(&in, &r);
  assert_string_equal(r.tier, "PASS");
  cyc[0].dev_residue = (int64_t)(10 * MiB);
  lc_analyse(&in, &r);
  assert_string_equal(r.tier, "CAUTION");
  cyc[0].dev_residue = (int64_t)(50 * MiB);
  lc_analyse(&in, &r);
  assert_string_equal(r.tier, "CAUTION");
  cyc[0].dev_residue = (int64_t)(50 * MiB + 1);
  lc_analyse(&in, &r);
  assert_string_equal(r.tier, "FAIL");
  char *j = lc_json(&in, &r);
  assert_non_null(strstr(j, "\"leak_tier\":\"FAIL\""));
  assert_non_null(strstr(j, "\"backend\":\"process\""));
  free(j);
}

/* Several models in one table, the average reclamation and the plan. */
static void test_compare(void **state) {
  (void)state;
  lc_run runs[3];
  memset(runs, 0, sizeof(runs));
  lc_input in = make(4, 1 * GiB, 0, 3000, 600); /* 1 GiB + 64 MiB peak */
  in.model = "small";
  assert_int_equal(lc_collect(&in, &runs[0]), 0);
  in = make(4, 3 * GiB, 0, 9000, 600); /* 3 GiB + 64 MiB: the largest */
  in.model = "large";
  in.backend = "tensors";
  for (int i = 0; i < 4; i++)
    cyc[i].dev_residue = (int64_t)(i == 3 ? (3 * GiB + 64 * MiB) / 10 : 0); /* 90% back */
  assert_int_equal(lc_collect(&in, &runs[1]), 0);
  snprintf(runs[2].model, sizeof(runs[2].model), "broken");
  runs[2].status = 1;
  assert_string_equal(runs[1].in.model, "large"); /* copied, not borrowed */

  char *text = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&text, &len);
  assert_int_equal(lc_compare_output(f, runs, 3, 0), 1); /* one failed */
  fclose(f);
  assert_non_null(strstr(text, "small"));
  assert_non_null(strstr(text, "tensors"));
  assert_non_null(strstr(text, "broken                   failed (exit status 1)"));
  /* (100 + 90) / 2 */
  assert_non_null(strstr(text, "average reclamation: 95.0%"));
  /* 1.5 x (3 GiB + 64 MiB) = 4.59 GiB per model: 17 fit in 80 GiB. */
  assert_non_null(strstr(text, "memory plan on cuda:0 (usable 80.00 GiB)"));
  assert_non_null(strstr(text, "(large, 3.06 GiB): 4.59 GiB per model, 17 fit at once"));
  assert_non_null(strstr(text, "small                    1.5x 1.06 GiB = 1.59 GiB: 50 fit"));
  assert_non_null(strstr(text, "all of them at once: 6.19 GiB, fits"));
  free(text);

  text = NULL;
  f = open_memstream(&text, &len);
  /* What large keeps after its unloads (307 MiB) is a FAIL over the run. */
  assert_int_equal(lc_compare_output(f, runs, 2, 1), 4);
  fclose(f);
  assert_non_null(strstr(text, "\"average_reclaimed_pct\":95.0"));
  assert_non_null(strstr(text, "\"largest_model\":\"large\""));
  assert_non_null(strstr(text, "\"fit_at_reserve\":17"));
  assert_non_null(strstr(text, "\"failed\":[]"));
  assert_non_null(strstr(text, "\"leak_tier\":\"FAIL\""));
  free(text);
  /* Clean models: status 0. */
  f = fopen("/dev/null", "w");
  assert_int_equal(lc_compare_output(f, runs, 1, 0), 0);
  fclose(f);
  lc_run_free(&runs[0]);
  lc_run_free(&runs[1]);
}

static void test_load_time_lines(void **state) {
  (void)state;
  struct {
    double ms;
    const char *words;
  } cases[] = {{1500, "Load lazily: a cached load"},
               {2500, "keep it resident through busy hours"},
               {7000, "Pre-warm it (POST /api/models/m/load"},
               {12000, "consider `pinned: true`"}};
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    lc_input in = make(4, 1 * GiB, 0, cases[i].ms, 100);
    lc_report r;
    lc_analyse(&in, &r);
    if (!has_advice(&r, cases[i].words))
      fail_msg("load %.0f ms: no advice with \"%s\"", cases[i].ms, cases[i].words);
  }
}

static void test_offload_or_unload(void **state) {
  (void)state;
  lc_report r;
  lc_input in = make(4, 8 * GiB, 0, 6000, 900);
  lc_analyse(&in, &r);
  assert_int_equal(r.offload_wins, 1);
  assert_true(has_advice(&r, "Offload when idle"));
  /* Restore no faster than a load. */
  in = make(4, 8 * GiB, 0, 6000, 7000);
  lc_analyse(&in, &r);
  assert_int_equal(r.offload_wins, 0);
  assert_true(has_advice(&r, "no faster than"));
  /* Cannot offload at all. */
  in = make(4, 8 * GiB, 0, 6000, LC_NONE);
  lc_analyse(&in, &r);
  assert_int_equal(r.offload_wins, 0);
  assert_true(has_advice(&r, "cannot offload"));
  /* The host copy does not fit the host budget. */
  in = make(4, 8 * GiB, 0, 6000, 900);
  in.host_budget = 4 * GiB;
  lc_analyse(&in, &r);
  assert_int_equal(r.offload_wins, 0);
  assert_true(has_advice(&r, "does not fit the host budget"));
}

static void test_break_even_keep_alive(void **state) {
  (void)state;
  lc_report r;
  /* A model holding a quarter of the device, restore 900 ms: 3.6 s. */
  lc_input in = make(4, 20 * GiB - 64 * MiB, 0, 6000, 900);
  lc_analyse(&in, &r);
  assert_int_equal(r.offload_wins, 1);
  assert_int_equal(r.keep_alive_ms, 3600);
  /* Unloaded (no offload), load 6 s, a tenth of the device: a minute. */
  in = make(4, 8 * GiB - 64 * MiB, 0, 6000, LC_NONE);
  lc_analyse(&in, &r);
  assert_true(r.keep_alive_ms >= 60000 && r.keep_alive_ms <= 60010);
  assert_true(has_advice(&r, "Keep-alive about 1m"));
}

static void test_isolation(void **state) {
  (void)state;
  lc_report r;
  lc_input in = make(4, 4 * GiB, 0, 3000, 600);
  cyc[3].dev_residue = (int64_t)(2 * GiB); /* half of it stays */
  lc_analyse(&in, &r);
  assert_true(r.reclaimed_dev_pct < 55 && r.reclaimed_dev_pct > 45);
  assert_true(has_advice(&r, "Run it as a worker process"));
  in = make(4, 4 * GiB, 0, 3000, 600);
  lc_analyse(&in, &r);
  assert_true(has_advice(&r, "both work"));
}

static void test_json_and_chart(void **state) {
  (void)state;
  lc_input in = make(5, 1 * GiB, 8 * MiB, 3000, 600);
  in.model = "quote\"d";
  lc_report r;
  lc_analyse(&in, &r);
  char *j = lc_json(&in, &r);
  assert_non_null(j);
  assert_non_null(strstr(j, "\"model\":\"quote\\\"d\""));
  assert_non_null(strstr(j, "\"leak\":true"));
  assert_non_null(strstr(j, "\"cold_load_ms\":9000.000"));
  assert_non_null(strstr(j, "\"per_cycle\":[{"));
  assert_non_null(strstr(j, "\"source\":null"));
  assert_non_null(strstr(j, "\"cold_note\":null"));
  free(j);

  /* Measured through a daemon, first load not cold: said in both outputs. */
  lc_input via = in;
  via.source = "modelbufd at http://127.0.0.1:1";
  via.cold = 0;
  via.cold_note = "no files";
  lc_analyse(&via, &r);
  j = lc_json(&via, &r);
  assert_non_null(j);
  assert_non_null(strstr(j, "\"source\":\"modelbufd at http://127.0.0.1:1\""));
  assert_non_null(strstr(j, "\"cold\":false,\"cold_note\":\"no files\""));
  assert_non_null(strstr(j, "\"cold_load_ms\":null"));
  free(j);
  char *text = NULL;
  size_t text_len = 0;
  FILE *mf = open_memstream(&text, &text_len);
  assert_non_null(mf);
  lc_print(mf, &via, &r);
  fclose(mf);
  assert_non_null(strstr(text, "model quote\"d on cuda:0 through modelbufd at "
                               "http://127.0.0.1:1, 5 cycles (first load not cold: no files)"));
  free(text);

  char png[] = "/tmp/mb-lc-XXXXXX.png";
  int fd = mkstemps(png, 4);
  assert_true(fd >= 0);
  close(fd);
  char err[200];
  if (access("/usr/bin/gnuplot", X_OK) == 0) {
    assert_int_equal(lc_chart(png, &in, err, sizeof(err)), 0);
    FILE *f = fopen(png, "rb");
    assert_non_null(f);
    unsigned char sig[8] = {0};
    assert_int_equal(fread(sig, 1, 8, f), 8);
    fclose(f);
    assert_memory_equal(sig, "\x89PNG\r\n\x1a\n", 8);
  } else {
    assert_int_equal(lc_chart(png, &in, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "gnuplot"));
  }
  unlink(png);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_slope),
      cmocka_unit_test(test_restore_growth),
      cmocka_unit_test(test_footprint_on_the_host_device),
      cmocka_unit_test(test_clean_model_passes),
      cmocka_unit_test(test_leak_is_flagged),
      cmocka_unit_test(test_leak_tiers),
      cmocka_unit_test(test_compare),
      cmocka_unit_test(test_load_time_lines),
      cmocka_unit_test(test_offload_or_unload),
      cmocka_unit_test(test_break_even_keep_alive),
      cmocka_unit_test(test_isolation),
      cmocka_unit_test(test_json_and_chart),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
