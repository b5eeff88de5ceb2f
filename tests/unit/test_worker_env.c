/*
 * test_worker_env.c - the CUDA_VISIBLE_DEVICES a worker gets for the CUDA
 * ordinal the core placed it on, with and without a list in the daemon's
 * own environment (its driver numbers only the GPUs listed there).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "worker.h"

static void test_no_parent_list(void **state) {
  (void)state;
  char out[64];
  assert_int_equal(mbd_cuda_visible_for(NULL, 0, out, sizeof(out)), 0);
  assert_string_equal(out, "0");
  assert_int_equal(mbd_cuda_visible_for("", 3, out, sizeof(out)), 0);
  assert_string_equal(out, "3");
  /* the host device: no GPU */
  assert_int_equal(mbd_cuda_visible_for("2,3", -1, out, sizeof(out)), 0);
  assert_string_equal(out, "");
  assert_int_equal(mbd_cuda_visible_for(NULL, -1, out, sizeof(out)), 0);
  assert_string_equal(out, "");
}

static void test_parent_list(void **state) {
  (void)state;
  char out[64];
  assert_int_equal(mbd_cuda_visible_for("2,3", 0, out, sizeof(out)), 0);
  assert_string_equal(out, "2");
  assert_int_equal(mbd_cuda_visible_for("2,3", 1, out, sizeof(out)), 0);
  assert_string_equal(out, "3");
  /* UUIDs and MIG names pass as written, spaces around them dropped */
  assert_int_equal(mbd_cuda_visible_for("GPU-8a1b, MIG-77c9 ", 1, out, sizeof(out)), 0);
  assert_string_equal(out, "MIG-77c9");
  assert_int_equal(mbd_cuda_visible_for(" GPU-8a1b,1", 0, out, sizeof(out)), 0);
  assert_string_equal(out, "GPU-8a1b");
}

static void test_not_in_list(void **state) {
  (void)state;
  char out[8];
  assert_int_equal(mbd_cuda_visible_for("2,3", 2, out, sizeof(out)), -1);
  assert_int_equal(mbd_cuda_visible_for("2,,3", 1, out, sizeof(out)), -1);
  /* too long for out */
  assert_int_equal(mbd_cuda_visible_for("GPU-0123456789", 0, out, sizeof(out)), -1);
  assert_int_equal(mbd_cuda_visible_for(NULL, 12345678, out, sizeof(out)), -1);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_no_parent_list),
      cmocka_unit_test(test_parent_list),
      cmocka_unit_test(test_not_in_list),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
