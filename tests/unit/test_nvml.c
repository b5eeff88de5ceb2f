/*
 * test_nvml.c - daemon/nvml.c as this machine has it: without libnvidia-ml
 * every call says "no NVML" and changes nothing, and the wait for released
 * memory returns at once; with it, the figures of GPU 0 are consistent and
 * a group with no GPU process holds nothing.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <setjmp.h>
#include <cmocka.h>

#include "modelbuf/modelbuf.h"
#include "nvml.h"

static void test_figures_or_a_clear_error(void **state) {
  (void)state;
  char why[160] = "", err[160] = "";
  int avail = mbd_nvml_available(why, sizeof(why));
  uint64_t total = 7, used = 7, bytes = 7;
  int n = -1;
  int rc = mbd_nvml_device_memory(0, &total, &used, err, sizeof(err));
  if (!avail) {
    assert_non_null(strstr(why, "no NVML"));
    assert_int_equal(rc, MB_ENODEV);
    assert_non_null(strstr(err, "no NVML"));
    assert_true(total == 7 && used == 7); /* untouched */
    err[0] = '\0';
    assert_int_equal(mbd_nvml_group_bytes(0, getpgid(0), &bytes, &n, err, sizeof(err)),
                     MB_ENODEV);
    assert_non_null(strstr(err, "no NVML"));
    assert_true(bytes == 7 && n == -1);
  } else {
    assert_int_equal(rc, 0);
    assert_true(total > 0 && used <= total);
    /* This test process runs no CUDA work. */
    assert_int_equal(mbd_nvml_group_bytes(0, getpgid(0), &bytes, &n, err, sizeof(err)), 0);
    assert_true(bytes == 0 && n == 0);
  }
  /* A negative ordinal is no GPU, with or without NVML. */
  assert_int_equal(mbd_nvml_device_memory(-1, &total, &used, err, sizeof(err)), MB_ENODEV);
}

static void test_wait_released_returns_when_nothing_is_listed(void **state) {
  (void)state;
  int pids[1] = {getpid()}; /* no GPU work here: never listed */
  assert_int_equal(mbd_nvml_wait_released(0, pids, 1, 1000), 0);
  assert_int_equal(mbd_nvml_wait_released(0, NULL, 0, 1000), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_figures_or_a_clear_error),
      cmocka_unit_test(test_wait_released_returns_when_nothing_is_listed),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
