/*
 * test_device_host.c - the host device: its memory figures, a measured
 * capacity, and the errors of mb_device_add (reserve not below capacity, a
 * CUDA device this build cannot measure).
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <setjmp.h>
#include <cmocka.h>

#include "modelbuf/modelbuf.h"
#include "device.h"

static void nop_submit(void *arg, mb_job *job) {
  (void)arg;
  (void)job;
}

static mb_ctx *new_ctx(void) {
  mb_ctx_opts o;
  mb_ctx *ctx = NULL;
  char err[256] = "";
  mb_ctx_opts_init(&o);
  o.manual = 1;
  o.executor.submit = nop_submit;
  if (mb_ctx_new(&o, &ctx, err, sizeof(err)) != 0)
    fail_msg("mb_ctx_new: %s", err);
  return ctx;
}

/* Total and free host memory: non-zero, free within total. */
static void test_mem_info(void **state) {
  (void)state;
  uint64_t total = 0, avail = 0;
  assert_int_equal(mb__host_mem_info(&total, &avail), 0);
  assert_true(total > 0);
  assert_true(avail > 0);
  assert_true(avail <= total);
  /* Either out-parameter may be omitted. */
  uint64_t t2 = 0;
  assert_int_equal(mb__host_mem_info(&t2, NULL), 0);
  assert_int_equal(t2, total);
  assert_int_equal(mb__host_mem_info(NULL, NULL), 0);
  /* Through the device interface too. */
  char err[128] = "";
  uint64_t t3 = 0, f3 = 0;
  assert_int_equal(mb__device_mem_info(MB_DEVICE_HOST, 0, &t3, &f3, err, sizeof(err)), 0);
  assert_int_equal(t3, total);
  assert_true(f3 <= t3);
}

/* capacity 0: the device takes the machine's RAM. */
static void test_measured_capacity(void **state) {
  (void)state;
  mb_ctx *ctx = new_ctx();
  mb_device_opts d;
  mb_device_info di;
  char err[256] = "";
  int idx = -1;
  uint64_t total = 0;
  assert_int_equal(mb__host_mem_info(&total, NULL), 0);
  mb_device_opts_init(&d);
  assert_int_equal(d.kind, MB_DEVICE_HOST);
  assert_int_equal(mb_device_add(ctx, &d, &idx, err, sizeof(err)), 0);
  assert_int_equal(idx, 0);
  assert_int_equal(mb_device_info_get(ctx, 0, &di), 0);
  assert_string_equal(di.name, "host");
  assert_int_equal(di.kind, MB_DEVICE_HOST);
  assert_int_equal(di.capacity_bytes, total);
  assert_int_equal(di.usable_bytes, total);
  assert_int_equal(di.used_bytes, 0);
  assert_int_equal(di.resident, 0);
  /* NULL options: the defaults, i.e. the host device, measured. */
  assert_int_equal(mb_device_add(ctx, NULL, &idx, err, sizeof(err)), 0);
  assert_int_equal(idx, 1);
  assert_int_equal(mb_device_info_get(ctx, 1, &di), 0);
  assert_int_equal(di.capacity_bytes, total);
  /* A given capacity is taken as is. */
  d.capacity_bytes = 12345;
  assert_int_equal(mb_device_add(ctx, &d, &idx, err, sizeof(err)), 0);
  assert_int_equal(mb_device_info_get(ctx, idx, &di), 0);
  assert_int_equal(di.capacity_bytes, 12345);
  assert_int_equal(mb_device_count(ctx), 3);
  assert_int_equal(mb_ctx_free(ctx), 0);
}

/* reserve >= capacity: MB_EINVAL with a message, and no device added. */
static void test_reserve_too_big(void **state) {
  (void)state;
  mb_ctx *ctx = new_ctx();
  mb_device_opts d;
  char err[256] = "";
  int idx = -1;
  mb_device_opts_init(&d);
  d.capacity_bytes = 1000;
  d.reserve_bytes = 1000;
  assert_int_equal(mb_device_add(ctx, &d, &idx, err, sizeof(err)), MB_EINVAL);
  assert_non_null(strstr(err, "reserve"));
  assert_non_null(strstr(err, "1000"));
  assert_int_equal(idx, -1);
  d.reserve_bytes = 5000;
  err[0] = '\0';
  assert_int_equal(mb_device_add(ctx, &d, &idx, err, sizeof(err)), MB_EINVAL);
  assert_non_null(strstr(err, "reserve"));
  /* Measured capacity: a reserve of all of it is refused too. */
  uint64_t total = 0;
  assert_int_equal(mb__host_mem_info(&total, NULL), 0);
  mb_device_opts_init(&d);
  d.reserve_bytes = total;
  err[0] = '\0';
  assert_int_equal(mb_device_add(ctx, &d, &idx, err, sizeof(err)), MB_EINVAL);
  assert_true(err[0] != '\0');
  /* Negative limits. */
  mb_device_opts_init(&d);
  d.capacity_bytes = 1000;
  d.max_loaded = -1;
  err[0] = '\0';
  assert_int_equal(mb_device_add(ctx, &d, &idx, err, sizeof(err)), MB_EINVAL);
  assert_true(err[0] != '\0');
  assert_int_equal(mb_device_count(ctx), 0);
  mb_device_info di;
  assert_int_equal(mb_device_info_get(ctx, 0, &di), MB_ENODEV);
  /* Just below capacity is fine. */
  mb_device_opts_init(&d);
  d.capacity_bytes = 1000;
  d.reserve_bytes = 999;
  assert_int_equal(mb_device_add(ctx, &d, &idx, err, sizeof(err)), 0);
  assert_int_equal(mb_device_info_get(ctx, idx, &di), 0);
  assert_int_equal(di.usable_bytes, 1);
  assert_int_equal(mb_ctx_free(ctx), 0);
}

/* A CUDA device this build cannot measure: MB_ENODEV naming it. */
static void test_cuda_without_capacity(void **state) {
  (void)state;
  mb_ctx *ctx = new_ctx();
  mb_device_opts d;
  char err[256] = "";
  int idx = -1;
  mb_device_opts_init(&d);
  d.kind = MB_DEVICE_CUDA;
  d.ordinal = 99; /* no machine has this one */
  assert_int_equal(mb_device_add(ctx, &d, &idx, err, sizeof(err)), MB_ENODEV);
  assert_non_null(strstr(err, "cuda:99"));
  assert_int_equal(idx, -1);
  assert_int_equal(mb_device_count(ctx), 0);
  /* Unknown kinds are bad input. */
  d.kind = (mb_device_kind)7;
  err[0] = '\0';
  assert_int_equal(mb_device_add(ctx, &d, &idx, err, sizeof(err)), MB_EINVAL);
  assert_true(err[0] != '\0');
  /* No error buffer: still the code. */
  d.kind = MB_DEVICE_CUDA;
  assert_int_equal(mb_device_add(ctx, &d, &idx, NULL, 0), MB_ENODEV);
  assert_int_equal(mb_ctx_free(ctx), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_mem_info),
      cmocka_unit_test(test_measured_capacity),
      cmocka_unit_test(test_reserve_too_big),
      cmocka_unit_test(test_cuda_without_capacity),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
