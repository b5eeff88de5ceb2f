/*
 * test_tensors_backend.c - the tensors backend through the real core in
 * threaded mode on the host device: load / offload / restore / unload over
 * several cycles with every tensor byte checked against the files, exact
 * usage per tier, lookups refused while offloaded, memory back at baseline
 * (the library's allocations, and the process's resident memory);
 * failing each allocation of a load in turn leaves nothing allocated;
 * duplicate names, missing and truncated files fail with clear messages.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <setjmp.h>
#include <unistd.h>
#include <cmocka.h>

#include "alloc_count.h"
#include "rss.h"
#include "files.h"

#include "modelbuf/modelbuf.h"
#include "modelbuf/tensors.h"
#include "mkmodel.h"

#define MiB (1024ull * 1024ull)

static char g_dir[256];
static char g_paths[2][512];

/* Every tensor of every file, found by name and compared byte for byte. */
static void check_all(mb_tensors_model *m) {
  size_t seen = 0;
  for (int i = 0; i < 2; i++) {
    size_t len;
    unsigned char *want = slurp(g_paths[i], &len);
    mb_tensor_file *f = NULL;
    char err[256];
    assert_int_equal(mb_tensor_file_open(g_paths[i], &f, err, sizeof(err)), 0);
    for (size_t k = 0; k < mb_tensor_file_count(f); k++) {
      mb_tensor_info ti;
      mb_tensor_ref r;
      assert_int_equal(mb_tensor_file_info(f, k, &ti), 0);
      assert_int_equal(mb_tensors_find(m, ti.name, &r), 0);
      assert_string_equal(r.name, ti.name);
      assert_int_equal(r.dtype, ti.dtype);
      assert_int_equal(r.ndim, ti.ndim);
      assert_int_equal(r.size_bytes, ti.size_bytes);
      assert_memory_equal((const void *)(uintptr_t)r.device_ptr, want + ti.offset,
                          ti.size_bytes);
      seen++;
    }
    mb_tensor_file_close(f);
    free(want);
  }
  assert_int_equal(seen, mb_tensors_count(m));
}

static mb_ctx *new_ctx(void) {
  mb_ctx_opts o;
  char err[256] = "";
  mb_ctx_opts_init(&o);
  o.loader_threads = 2;
  o.host_budget_bytes = 256 * MiB;
  mb_ctx *ctx = NULL;
  if (mb_ctx_new(&o, &ctx, err, sizeof(err)) != 0)
    fail_msg("mb_ctx_new: %s", err);
  mb_device_opts d;
  mb_device_opts_init(&d);
  d.capacity_bytes = 64 * MiB;
  int idx = -1;
  if (mb_device_add(ctx, &d, &idx, err, sizeof(err)) != 0)
    fail_msg("mb_device_add: %s", err);
  return ctx;
}

static mb_tensors_model *new_model(void) {
  const char *paths[2] = {g_paths[0], g_paths[1]};
  mb_tensors_opts to;
  mb_tensors_opts_init(&to);
  to.chunk_bytes = 256 * 1024;
  to.threads = 3;
  mb_tensors_model *m = NULL;
  char err[256] = "";
  int rc = mb_tensors_model_new(paths, 2, &to, &m, err, sizeof(err));
  if (rc != 0)
    fail_msg("mb_tensors_model_new: %s", err);
  return m;
}

static void test_cycles(void **state) {
  (void)state;
  mb_ctx *ctx = new_ctx();
  mb_tensors_model *m = new_model();
  uint64_t bytes = mb_tensors_model_bytes(m);
  assert_true(bytes >= 5 * MiB);
  mb_model_opts mo;
  mb_model_opts_init(&mo);
  mo.footprint_bytes = bytes;
  mo.keep_alive_ms = 60000;
  char err[256] = "";
  assert_int_equal(mb_model_add(ctx, "m", mb_tensors_backend(), m, &mo, err, sizeof(err)), 0);
  /* The core's own small allocations come and go on its threads; the
   * tensor engine's buffers (ac_big) must all be gone after each unload. */
  for (int cycle = 0; cycle < 6; cycle++) {
    mb_lease l;
    int rc = mb_acquire(ctx, "m", NULL, &l, err, sizeof(err));
    if (rc != 0)
      fail_msg("acquire: %s: %s", mb_err_name(rc), err);
    check_all(m);
    mb_status st;
    assert_int_equal(mb_model_status(ctx, "m", &st), 0);
    assert_int_equal(st.vram_bytes, bytes);
    assert_int_equal(mb_release(ctx, l), 0);

    assert_int_equal(mb_offload(ctx, "m", err, sizeof(err)), 0);
    assert_int_equal(mb_model_status(ctx, "m", &st), 0);
    assert_int_equal(st.state, MB_STATE_OFFLOADED);
    assert_int_equal(st.vram_bytes, 0);
    assert_int_equal(st.host_bytes, bytes);
    assert_int_equal(atomic_load(&ac_big), 1); /* the host copy only */
    mb_tensor_ref r;
    assert_int_equal(mb_tensors_find(m, "no such tensor", &r), MB_ENOENT);

    rc = mb_acquire(ctx, "m", NULL, &l, err, sizeof(err)); /* restore */
    if (rc != 0)
      fail_msg("acquire after offload: %s: %s", mb_err_name(rc), err);
    check_all(m);
    assert_int_equal(mb_release(ctx, l), 0);

    if (cycle % 2 == 1) {
      assert_int_equal(mb_unload(ctx, "m", err, sizeof(err)), 0);
      assert_int_equal(mb_model_status(ctx, "m", &st), 0);
      assert_int_equal(st.vram_bytes, 0);
      assert_int_equal(st.host_bytes, 0);
      assert_int_equal(atomic_load(&ac_big), 0); /* arena and host copy freed */
      mb_tensor_ref r2;
      assert_int_equal(mb_tensors_find(m, "model.norm.weight", &r2), MB_ESTATE);
    }
  }
  assert_int_equal(mb_ctx_free(ctx), 0); /* frees the model (destroy) */
}

/*
 * The process's resident memory (the host device's own figure) after each
 * unload is back where it was before the first load, over load / offload /
 * restore / unload cycles of a 48 MiB model, and while the model is held it
 * is up by the arena and the host copy (so the figure does see them). Not
 * under a sanitizer, which keeps freed memory.
 */
static void test_rss_back_at_baseline(void **state) {
  (void)state;
  if (RSS_SANITIZED)
    skip();
  char path[600], err[256] = "";
  snprintf(path, sizeof(path), "%s/rss.safetensors", g_dir);
  cli_mkmodel_opts o = {.path = path, .format = MB_TENSOR_FORMAT_SAFETENSORS,
                        .size_bytes = 48 * MiB, .seed = 11};
  assert_int_equal(cli_mkmodel_write(&o, NULL, err, sizeof(err)), 0);
  const char *one[1] = {path};
  mb_tensors_model *m = NULL;
  assert_int_equal(mb_tensors_model_new(one, 1, NULL, &m, err, sizeof(err)), 0);
  uint64_t bytes = mb_tensors_model_bytes(m);
  mb_ctx *ctx = new_ctx();
  mb_model_opts mo;
  mb_model_opts_init(&mo);
  mo.footprint_bytes = bytes;
  mo.keep_alive_ms = 60000;
  assert_int_equal(mb_model_add(ctx, "r", mb_tensors_backend(), m, &mo, err, sizeof(err)), 0);
  uint64_t base = rss_bytes(), high = 0, worst = 0;
  assert_true(base > 0);
  for (int cycle = 0; cycle < 4; cycle++) {
    mb_lease l;
    assert_int_equal(mb_acquire(ctx, "r", NULL, &l, err, sizeof(err)), 0);
    assert_int_equal(mb_release(ctx, l), 0);
    assert_int_equal(mb_offload(ctx, "r", err, sizeof(err)), 0);
    assert_int_equal(mb_acquire(ctx, "r", NULL, &l, err, sizeof(err)), 0); /* restore */
    uint64_t held = rss_bytes();
    high = held > high ? held : high;
    assert_int_equal(mb_release(ctx, l), 0);
    assert_int_equal(mb_unload(ctx, "r", err, sizeof(err)), 0);
    uint64_t after = rss_bytes();
    worst = after > worst ? after : worst;
  }
  print_message("rss: baseline %.1f MiB, held (arena + host copy) %.1f MiB, highest after an "
                "unload %.1f MiB\n",
                (double)base / MiB, (double)high / MiB, (double)worst / MiB);
  assert_true(high >= base + 2 * bytes - 8 * MiB);
  assert_true(worst <= base + 8 * MiB);
  assert_int_equal(mb_ctx_free(ctx), 0);
  unlink(path);
}

/* Fails allocation n, n = 1, 2, ... of a load until one succeeds: each
 * failure returns an error with a message and leaves nothing allocated. */
static void test_allocfail(void **state) {
  (void)state;
  const mb_backend *b = mb_tensors_backend();
  int failures = 0;
  for (long n = 1; n < 200; n++) {
    mb_tensors_model *m = new_model();
    long before = atomic_load(&ac_live);
    char err[256] = "";
    mb_op op;
    memset(&op, 0, sizeof(op));
    op.model = "m";
    op.user = m;
    op.device_kind = MB_DEVICE_HOST;
    op.err = err;
    op.err_len = sizeof(err);
    ac_fail(n);
    int rc = b->load(&op);
    ac_fail(0);
    if (rc == 0) {
      mb_usage u;
      uint64_t bytes = mb_tensors_model_bytes(m);
      assert_int_equal(b->usage(&op, &u), 0);
      assert_int_equal(u.device_bytes, bytes);
      assert_int_equal(u.host_bytes, 0);
      assert_int_equal(b->offload(&op), 0);
      assert_int_equal(b->usage(&op, &u), 0);
      assert_int_equal(u.device_bytes, 0);
      assert_int_equal(u.host_bytes, bytes);
      assert_int_equal(b->restore(&op), 0);
      assert_int_equal(b->usage(&op, &u), 0);
      assert_int_equal(u.device_bytes, bytes);
      assert_int_equal(u.host_bytes, bytes); /* the host buffer is kept for the next offload */
      check_all(m);
      assert_int_equal(b->unload(&op), 0);
      assert_int_equal(atomic_load(&ac_live), before);
      mb_tensors_model_free(m);
      break;
    }
    failures++;
    assert_int_equal(rc, MB_ENOMEM);
    assert_true(err[0] != '\0');
    assert_int_equal(atomic_load(&ac_live), before);
    mb_tensors_model_free(m);
  }
  assert_true(failures >= 3); /* layout, device arena, staging, ... */
}

static void test_errors(void **state) {
  (void)state;
  char err[256] = "";
  mb_tensors_model *m = NULL;
  const char *dup[2] = {g_paths[0], g_paths[0]};
  assert_int_equal(mb_tensors_model_new(dup, 2, NULL, &m, err, sizeof(err)), MB_EINVAL);
  assert_null(m);
  assert_non_null(strstr(err, "is in both"));
  char missing[600];
  snprintf(missing, sizeof(missing), "%s/missing.safetensors", g_dir);
  const char *one[1] = {missing};
  assert_true(mb_tensors_model_new(one, 1, NULL, &m, err, sizeof(err)) < 0);
  assert_null(m);
  assert_non_null(strstr(err, "missing.safetensors"));
  assert_int_equal(mb_tensors_model_new(NULL, 0, NULL, &m, err, sizeof(err)), MB_EINVAL);

  /* truncated after the model was made: the load fails and frees all */
  char tpath[600];
  snprintf(tpath, sizeof(tpath), "%s/trunc.gguf", g_dir);
  cli_mkmodel_opts o = {.path = tpath, .format = MB_TENSOR_FORMAT_GGUF, .size_bytes = MiB,
                        .seed = 9};
  assert_int_equal(cli_mkmodel_write(&o, NULL, err, sizeof(err)), 0);
  const char *tp[1] = {tpath};
  assert_int_equal(mb_tensors_model_new(tp, 1, NULL, &m, err, sizeof(err)), 0);
  assert_int_equal(truncate(tpath, 4096), 0);
  long before = atomic_load(&ac_live);
  mb_op op;
  memset(&op, 0, sizeof(op));
  op.user = m;
  op.device_kind = MB_DEVICE_HOST;
  op.err = err;
  op.err_len = sizeof(err);
  assert_int_equal(mb_tensors_backend()->load(&op), MB_EIO);
  assert_non_null(strstr(err, "trunc.gguf"));
  assert_int_equal(atomic_load(&ac_live), before);
  mb_tensor_ref r;
  assert_int_equal(mb_tensors_find(m, "output.weight", &r), MB_ESTATE);
  mb_tensors_model_free(m);
  unlink(tpath);

  /* a CUDA placement loads: on the GPU, or without a driver or GPU on the
   * host device (test_device_host checks the fallback and its one line);
   * a failure can only be MB_ENODEV naming the device */
  m = new_model();
  op.user = m;
  op.device_kind = MB_DEVICE_CUDA;
  int rc = mb_tensors_backend()->load(&op);
  if (rc == 0) {
    assert_int_equal(mb_tensors_backend()->unload(&op), 0);
  } else {
    assert_int_equal(rc, MB_ENODEV);
    assert_non_null(strstr(err, "cuda:0"));
  }
  mb_tensors_model_free(m);
}

static int setup(void **state) {
  (void)state;
  if (mb_set_allocator(&ac_allocator) != 0)
    return -1;
  const char *base = access("/var/tmp", W_OK) == 0 ? "/var/tmp" : "/tmp";
  snprintf(g_dir, sizeof(g_dir), "%s/mb_tbackend_XXXXXX", base);
  if (mkdtemp(g_dir) == NULL)
    return -1;
  snprintf(g_paths[0], sizeof(g_paths[0]), "%s/a.safetensors", g_dir);
  snprintf(g_paths[1], sizeof(g_paths[1]), "%s/b.gguf", g_dir);
  cli_mkmodel_opts o0 = {.path = g_paths[0], .format = MB_TENSOR_FORMAT_SAFETENSORS,
                         .size_bytes = 3 * MiB, .seed = 1};
  cli_mkmodel_opts o1 = {.path = g_paths[1], .format = MB_TENSOR_FORMAT_GGUF,
                         .size_bytes = 2 * MiB, .seed = 2};
  char err[256];
  if (cli_mkmodel_write(&o0, NULL, err, sizeof(err)) != 0 ||
      cli_mkmodel_write(&o1, NULL, err, sizeof(err)) != 0)
    return -1;
  return 0;
}

static int teardown(void **state) {
  (void)state;
  unlink(g_paths[0]);
  unlink(g_paths[1]);
  rmdir(g_dir);
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_cycles),
      cmocka_unit_test(test_rss_back_at_baseline),
      cmocka_unit_test(test_allocfail),
      cmocka_unit_test(test_errors),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
