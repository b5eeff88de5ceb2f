/*
 * test_gpu_checkpoint.c - the CUDA checkpoint API on a machine where it
 * may be missing: without a driver every call says why and changes
 * nothing; with one (a GPU machine) the state of a process that never used
 * CUDA is read without error or refused with the driver's own error name.
 * The suspend/resume of a real CUDA worker runs in tests/gpu.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>
#include <setjmp.h>
#include <cmocka.h>

#include "modelbuf/modelbuf.h"
#include "gpu_checkpoint.h"

static void test_state_names(void **state) {
  (void)state;
  assert_string_equal(mbd_ckpt_state_name(MBD_CKPT_RUNNING), "running");
  assert_string_equal(mbd_ckpt_state_name(MBD_CKPT_LOCKED), "locked");
  assert_string_equal(mbd_ckpt_state_name(MBD_CKPT_CHECKPOINTED), "checkpointed");
  assert_string_equal(mbd_ckpt_state_name(MBD_CKPT_FAILED), "failed");
  assert_string_equal(mbd_ckpt_state_name(42), "unknown");
}

static void test_without_or_with_driver(void **state) {
  (void)state;
  char why[256] = "";
  int avail = mbd_ckpt_available(why, sizeof(why));
  char err[256] = "";
  int st = -1;
  if (!avail) {
    /* No driver here: a clear reason, and every call refuses the same way. */
    assert_true(strstr(why, "CUDA") != NULL || strstr(why, "cuInit") != NULL);
    assert_int_equal(mbd_ckpt_get_state(getpid(), &st, err, sizeof(err)), MB_ENODEV);
    assert_string_equal(err, why);
    assert_int_equal(mbd_ckpt_suspend(getpid(), 100, err, sizeof(err)), MB_ENODEV);
    assert_int_equal(mbd_ckpt_resume(getpid(), err, sizeof(err)), MB_ENODEV);
    assert_int_equal(st, -1);
  } else {
    /* A driver: resuming a process that was never suspended is refused
     * with the driver's error name, and leaves it running. */
    int rc = mbd_ckpt_resume(getpid(), err, sizeof(err));
    assert_true(rc == MB_EBACKEND || rc == MB_ETIMEDOUT);
    assert_non_null(strstr(err, "CUDA_ERROR"));
  }
  /* Asking twice gives the same answer (the driver is probed once). */
  char why2[256] = "";
  assert_int_equal(mbd_ckpt_available(why2, sizeof(why2)), avail);
  assert_string_equal(why2, why);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_state_names),
      cmocka_unit_test(test_without_or_with_driver),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
