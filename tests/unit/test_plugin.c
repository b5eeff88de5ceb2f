/*
 * test_plugin.c - the plugin backend with real shared objects (built from
 * tests/unit/plugins/test_plugin.c), real files and real memory, through
 * the real core in threaded mode: open, register, load on acquire, serve
 * requests under a lease, offload and restore (the weights' checksum
 * survives), unload; losses the plugin reports through its host, cancel of
 * a load, a plugin built for ABI 1; and every way a plugin can be refused.
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

#include "modelbuf/modelbuf.h"
#include "modelbuf/plugin.h"

#ifndef PLUGIN_DIR
#error PLUGIN_DIR must name the folder of the test plugins
#endif

#define MiB (1024u * 1024u)

static char dir[64];
static char file_a[96], file_b[96];
static unsigned long long expect_sum;
static size_t expect_bytes;
static int log_lines;

static void write_file(const char *path, size_t n, unsigned seed) {
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)((i * 2654435761u + seed) >> 13);
    expect_sum += c;
    fputc(c, f);
  }
  expect_bytes += n;
  assert_int_equal(fclose(f), 0);
}

static int setup(void **state) {
  (void)state;
  snprintf(dir, sizeof(dir), "/tmp/mb-plugin-XXXXXX");
  if (mkdtemp(dir) == NULL)
    return -1;
  snprintf(file_a, sizeof(file_a), "%s/a.bin", dir);
  snprintf(file_b, sizeof(file_b), "%s/b.bin", dir);
  expect_sum = 0;
  expect_bytes = 0;
  write_file(file_a, 3 * MiB + 17, 1);
  write_file(file_b, 1 * MiB, 2);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  unlink(file_a);
  unlink(file_b);
  rmdir(dir);
  return 0;
}

static void count_log(void *arg, int level, const char *model, const char *msg) {
  (void)arg;
  (void)level;
  if (strcmp(model, "p") == 0 && strcmp(msg, "loaded") == 0)
    log_lines++;
}

static mb_ctx *new_ctx(void) {
  char err[256];
  mb_ctx *ctx;
  mb_ctx_opts co;
  mb_ctx_opts_init(&co);
  co.keep_alive_ms = MB_FOREVER;
  assert_int_equal(mb_ctx_new(&co, &ctx, err, sizeof(err)), 0);
  assert_int_equal(mb_device_add(ctx, NULL, NULL, err, sizeof(err)), 0);
  return ctx;
}

static void get_info(void *inst, unsigned long long *sum, size_t *bytes) {
  mb_plugin_request req = {"GET", "/info", "", NULL, 0, NULL, 0};
  mb_plugin_response resp;
  char err[256];
  assert_int_equal(mb_plugin_handle(inst, &req, &resp, err, sizeof(err)), 0);
  assert_int_equal(resp.status, 200);
  assert_string_equal(resp.content_type, "application/json");
  char *s = strndup(resp.body, resp.body_len);
  assert_non_null(s);
  const char *b = strstr(s, "\"bytes\":"), *u = strstr(s, "\"sum\":");
  assert_non_null(b);
  assert_non_null(u);
  *bytes = (size_t)strtoull(b + 8, NULL, 10);
  *sum = strtoull(u + 6, NULL, 10);
  assert_non_null(strstr(s, "\"model\":\"p\""));
  free(s);
  mb_plugin_response_free(inst, &resp);
  assert_null(resp.body);
}

static void test_serve_offload_restore(void **state) {
  (void)state;
  char err[256];
  mb_plugin_lib *lib;
  assert_int_equal(mb_plugin_open(PLUGIN_DIR "/libplugin_test.so", &lib, err, sizeof(err)), 0);
  assert_string_equal(mb_plugin_table(lib)->name, "test");
  mb_ctx *ctx = new_ctx();
  const char *files[] = {file_a, file_b};
  mb_plugin_host host = {.size = sizeof(host), .log = count_log};
  void *inst = NULL;
  assert_int_equal(
      mb_model_add_plugin(ctx, "p", lib, files, 2, &host, NULL, &inst, err, sizeof(err)), 0);
  assert_non_null(inst);
  mb_plugin_close(lib); /* the model keeps the library */

  mb_lease l;
  assert_int_equal(mb_acquire(ctx, "p", NULL, &l, err, sizeof(err)), 0);
  unsigned long long sum;
  size_t bytes;
  get_info(inst, &sum, &bytes);
  assert_int_equal(bytes, expect_bytes);
  assert_true(sum == expect_sum);
  assert_int_equal(log_lines, 1);

  /* A binary body comes back byte for byte. */
  uint8_t body[1000];
  for (size_t i = 0; i < sizeof(body); i++)
    body[i] = (uint8_t)(i * 7);
  mb_plugin_request echo = {"POST", "/echo", "", NULL, 0, body, sizeof(body)};
  mb_plugin_response resp;
  assert_int_equal(mb_plugin_handle(inst, &echo, &resp, err, sizeof(err)), 0);
  assert_string_equal(resp.content_type, "application/octet-stream");
  assert_int_equal(resp.body_len, sizeof(body));
  assert_memory_equal(resp.body, body, sizeof(body));
  mb_plugin_response_free(inst, &resp);

  /* Unknown path: the plugin's own 404; a handler error: its message. */
  mb_plugin_request nf = {"GET", "/nope", "", NULL, 0, NULL, 0};
  assert_int_equal(mb_plugin_handle(inst, &nf, &resp, err, sizeof(err)), 0);
  assert_int_equal(resp.status, 404);
  mb_plugin_response_free(inst, &resp);
  mb_plugin_request fail = {"GET", "/fail", "", NULL, 0, NULL, 0};
  assert_int_equal(mb_plugin_handle(inst, &fail, &resp, err, sizeof(err)), MB_EBACKEND);
  assert_string_equal(err, "asked to fail");
  assert_null(resp.body);
  assert_int_equal(mb_release(ctx, l), 0);

  /* Offload: the bytes move to the host tier, measured by the plugin. */
  assert_int_equal(mb_offload(ctx, "p", err, sizeof(err)), 0);
  mb_status st;
  assert_int_equal(mb_model_status(ctx, "p", &st), 0);
  assert_int_equal(st.state, MB_STATE_OFFLOADED);
  assert_string_equal(st.backend, "plugin");
  assert_int_equal(st.host_bytes, expect_bytes);
  assert_int_equal(st.vram_bytes, 0);

  /* Restore on the next acquire; the weights are intact; no second load. */
  assert_int_equal(mb_acquire(ctx, "p", NULL, &l, err, sizeof(err)), 0);
  get_info(inst, &sum, &bytes);
  assert_true(sum == expect_sum);
  assert_int_equal(log_lines, 1);
  assert_int_equal(mb_release(ctx, l), 0);
  assert_int_equal(mb_model_status(ctx, "p", &st), 0);
  assert_int_equal(st.stats.loads, 1);
  assert_int_equal(st.stats.restores, 1);
  assert_int_equal(st.vram_bytes, expect_bytes);

  assert_int_equal(mb_unload(ctx, "p", err, sizeof(err)), 0);
  assert_int_equal(mb_ctx_free(ctx), 0); /* destroys the instance, closes the library */
}

/* A file that vanished before the load: FAILED with the plugin's message. */
static void test_load_failure(void **state) {
  (void)state;
  char err[256];
  mb_plugin_lib *lib;
  assert_int_equal(mb_plugin_open(PLUGIN_DIR "/libplugin_test.so", &lib, err, sizeof(err)), 0);
  mb_ctx *ctx = new_ctx();
  char gone[128];
  snprintf(gone, sizeof(gone), "%s/gone.bin", dir);
  const char *files[] = {gone};
  assert_int_equal(
      mb_model_add_plugin(ctx, "p", lib, files, 1, NULL, NULL, NULL, err, sizeof(err)), 0);
  mb_lease l;
  assert_int_equal(mb_acquire(ctx, "p", NULL, &l, err, sizeof(err)), MB_ELOAD);
  assert_non_null(strstr(err, "gone.bin"));
  mb_status st;
  assert_int_equal(mb_model_status(ctx, "p", &st), 0);
  assert_int_equal(st.state, MB_STATE_FAILED);
  assert_int_equal(mb_ctx_free(ctx), 0);
  mb_plugin_close(lib);
}

/* create() refusing: its message, nothing registered. */
static void test_create_refused(void **state) {
  (void)state;
  char err[256];
  mb_plugin_lib *lib;
  assert_int_equal(mb_plugin_open(PLUGIN_DIR "/libplugin_test.so", &lib, err, sizeof(err)), 0);
  mb_ctx *ctx = new_ctx();
  assert_int_equal(mb_model_add_plugin(ctx, "p", lib, NULL, 0, NULL, NULL, NULL, err, sizeof(err)),
                   MB_EINVAL);
  assert_non_null(strstr(err, "needs at least one file"));
  assert_int_equal(mb_model_count(ctx), 0);
  /* A name the core refuses: the instance is destroyed, the library kept. */
  const char *files[] = {file_a};
  assert_int_equal(
      mb_model_add_plugin(ctx, "", lib, files, 1, NULL, NULL, NULL, err, sizeof(err)), MB_EINVAL);
  assert_int_equal(mb_ctx_free(ctx), 0);
  mb_plugin_close(lib);
}

static int post_json_int(void *inst, const char *method, const char *path, const char *key) {
  mb_plugin_request req = {method, path, "", NULL, 0, NULL, 0};
  mb_plugin_response resp;
  char err[256];
  assert_int_equal(mb_plugin_handle(inst, &req, &resp, err, sizeof(err)), 0);
  assert_int_equal(resp.status, 200);
  char *s = strndup(resp.body, resp.body_len);
  assert_non_null(s);
  const char *v = strstr(s, key);
  assert_non_null(v);
  int n = atoi(v + strlen(key) + 1); /* past the ':' */
  free(s);
  mb_plugin_response_free(inst, &resp);
  return n;
}

/* A plugin reports its model lost through its host (the default host
 * service posts it to the context, also for a host older than the field):
 * the lease ends, the plugin's unload cleans up, the next acquire loads. */
static void test_plugin_reports_loss(void **state) {
  (void)state;
  char err[256];
  mb_plugin_lib *lib;
  assert_int_equal(mb_plugin_open(PLUGIN_DIR "/libplugin_test.so", &lib, err, sizeof(err)), 0);
  mb_ctx *ctx = new_ctx();
  const char *files[] = {file_a};
  /* A host as one built before `lost` existed passes it. */
  mb_plugin_host host = {.size = offsetof(mb_plugin_host, lost), .log = count_log};
  void *inst = NULL;
  assert_int_equal(
      mb_model_add_plugin(ctx, "p", lib, files, 1, &host, NULL, &inst, err, sizeof(err)), 0);
  mb_plugin_close(lib);
  mb_lease l;
  assert_int_equal(mb_acquire(ctx, "p", NULL, &l, err, sizeof(err)), 0);
  assert_int_equal(post_json_int(inst, "POST", "/lose", "\"reported\""), 0);
  /* Posted after the report: answered once the lost model is unloaded. */
  assert_int_equal(mb_unload(ctx, "p", err, sizeof(err)), 0);
  mb_status st;
  assert_int_equal(mb_model_status(ctx, "p", &st), 0);
  assert_int_equal(st.state, MB_STATE_UNLOADED);
  assert_int_equal(st.stats.crashes, 1);
  assert_string_equal(st.lost_reason, "device error (test plugin)");
  assert_int_equal(st.vram_bytes, 0);
  assert_int_equal(mb_release(ctx, l), MB_ELOST);
  assert_int_equal(mb_acquire(ctx, "p", NULL, &l, err, sizeof(err)), 0);
  unsigned long long sum;
  size_t bytes;
  get_info(inst, &sum, &bytes);
  assert_int_equal(bytes, 3 * MiB + 17);
  assert_int_equal(mb_model_status(ctx, "p", &st), 0);
  assert_int_equal(st.stats.loads, 2);
  assert_int_equal(mb_release(ctx, l), 0);
  assert_int_equal(mb_ctx_free(ctx), 0);
}

/* A manual executor that keeps jobs for the test to run. */
static mb_job *kept[8];
static int nkept;
static void keep_job(void *arg, mb_job *job) {
  (void)arg;
  assert_true(nkept < 8);
  kept[nkept++] = job;
}
static void run_kept(mb_ctx *ctx) {
  while (nkept > 0) {
    mb_job *j = kept[0];
    memmove(kept, kept + 1, (size_t)(--nkept) * sizeof(*kept));
    mb_job_run(j);
    for (int i = 0; i < 10 && mb_ctx_step(ctx) > 0; i++)
      ;
  }
}
static void step_all(mb_ctx *ctx) {
  for (int i = 0; i < 10 && mb_ctx_step(ctx) > 0; i++)
    ;
}
static void rc_done(const mb_result *res, void *arg) { *(int *)arg = res->rc; }

/* An unload of a LOADING plugin model reaches the plugin's cancel (ABI 2);
 * a plugin built for ABI 1 has none, and the unload waits for its load. */
static void cancel_case(const char *path, int want_cancels, int want_waiter) {
  char err[256];
  mb_plugin_lib *lib;
  assert_int_equal(mb_plugin_open(path, &lib, err, sizeof(err)), 0);
  mb_ctx *ctx;
  mb_ctx_opts co;
  mb_ctx_opts_init(&co);
  co.manual = 1;
  co.executor.submit = keep_job;
  co.keep_alive_ms = MB_FOREVER;
  assert_int_equal(mb_ctx_new(&co, &ctx, err, sizeof(err)), 0);
  assert_int_equal(mb_device_add(ctx, NULL, NULL, err, sizeof(err)), 0);
  const char *files[] = {file_b};
  void *inst = NULL;
  assert_int_equal(
      mb_model_add_plugin(ctx, "p", lib, files, 1, NULL, NULL, &inst, err, sizeof(err)), 0);
  mb_plugin_close(lib);
  int acq = -99, un = -99;
  nkept = 0;
  assert_int_equal(mb_load_async(ctx, "p", MB_DEFAULT, rc_done, &acq), 0);
  step_all(ctx);
  assert_int_equal(nkept, 1); /* the load, not run yet */
  assert_int_equal(mb_unload_async(ctx, "p", rc_done, &un), 0);
  step_all(ctx);
  if (want_cancels)
    assert_int_equal(post_json_int(inst, "GET", "/cancels", "\"cancels\""), want_cancels);
  assert_int_equal(acq, want_waiter);
  assert_int_equal(un, -99);
  run_kept(ctx); /* the load (it ignores the cancel and succeeds), then the unload */
  assert_int_equal(un, 0);
  mb_status st;
  assert_int_equal(mb_model_status(ctx, "p", &st), 0);
  if (want_waiter == -99) {
    /* Not canceled: the explicit load still waited, and loads it again
     * after the unload. */
    assert_int_equal(acq, 0);
    assert_int_equal(st.state, MB_STATE_READY);
    assert_int_equal(st.stats.loads, 2);
  } else {
    assert_int_equal(st.state, MB_STATE_UNLOADED);
  }
  assert_int_equal(mb_ctx_free(ctx), 0);
}

static void test_plugin_cancel(void **state) {
  (void)state;
  cancel_case(PLUGIN_DIR "/libplugin_test.so", 1, MB_ECANCELED);
}

/* A plugin built for ABI 1 (its table in the old layout) loads and serves. */
static void test_abi1_plugin(void **state) {
  (void)state;
  char err[256];
  mb_plugin_lib *lib;
  assert_int_equal(mb_plugin_open(PLUGIN_DIR "/libplugin_abi1.so", &lib, err, sizeof(err)), 0);
  const mb_plugin *t = mb_plugin_table(lib);
  assert_string_equal(t->name, "test-abi1");
  assert_int_equal(t->abi, MB_PLUGIN_ABI);
  assert_null(t->backend.cancel);
  assert_non_null(t->handle);
  assert_non_null(t->free_body);
  mb_ctx *ctx = new_ctx();
  const char *files[] = {file_a, file_b};
  void *inst = NULL;
  assert_int_equal(
      mb_model_add_plugin(ctx, "p", lib, files, 2, NULL, NULL, &inst, err, sizeof(err)), 0);
  mb_plugin_close(lib);
  mb_lease l;
  assert_int_equal(mb_acquire(ctx, "p", NULL, &l, err, sizeof(err)), 0);
  unsigned long long sum;
  size_t bytes;
  get_info(inst, &sum, &bytes);
  assert_int_equal(bytes, expect_bytes);
  assert_true(sum == expect_sum);
  assert_int_equal(mb_release(ctx, l), 0);
  assert_int_equal(mb_offload(ctx, "p", err, sizeof(err)), 0);
  assert_int_equal(mb_ctx_free(ctx), 0);
  /* Without cancel, an unload of a loading model waits for the load. */
  cancel_case(PLUGIN_DIR "/libplugin_abi1.so", 0, -99);
}

static void expect_open_error(const char *path, int rc, const char *words) {
  char err[512] = "";
  mb_plugin_lib *lib = (mb_plugin_lib *)1;
  assert_int_equal(mb_plugin_open(path, &lib, err, sizeof(err)), rc);
  assert_null(lib);
  if (strstr(err, words) == NULL)
    fail_msg("%s: message \"%s\" lacks \"%s\"", path, err, words);
}

static void test_bad_plugins(void **state) {
  (void)state;
  expect_open_error(PLUGIN_DIR "/no-such-plugin.so", MB_ENOENT, "no-such-plugin.so");
  expect_open_error(file_a, MB_EFORMAT, "not a loadable plugin");
  expect_open_error(PLUGIN_DIR "/libplugin_bad_abi.so", MB_EFORMAT, "ABI");
  expect_open_error(PLUGIN_DIR "/libplugin_no_pair.so", MB_EFORMAT, "pair");
  expect_open_error(PLUGIN_DIR "/libplugin_no_entry.so", MB_EFORMAT, "mb_plugin_v1");
  char err[64];
  mb_plugin_lib *lib;
  assert_int_equal(mb_plugin_open(NULL, &lib, err, sizeof(err)), MB_EINVAL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_serve_offload_restore, setup, teardown),
      cmocka_unit_test_setup_teardown(test_load_failure, setup, teardown),
      cmocka_unit_test_setup_teardown(test_create_refused, setup, teardown),
      cmocka_unit_test_setup_teardown(test_bad_plugins, setup, teardown),
      cmocka_unit_test_setup_teardown(test_plugin_reports_loss, setup, teardown),
      cmocka_unit_test_setup_teardown(test_plugin_cancel, setup, teardown),
      cmocka_unit_test_setup_teardown(test_abi1_plugin, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
