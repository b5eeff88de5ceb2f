/*
 * test_fit.c - the time until a model fits (daemon/fit.c's
 * mbd_fit_wait_ms), the Retry-After of a 503 cannot_fit: room now, room
 * as items come free in their order whatever order they are given in, the
 * item that completes the room decides, never, and sums that would
 * overflow.
 */
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdarg.h>
#include <cmocka.h>

#include "fit.h"

static void test_room_now(void **state) {
  (void)state;
  assert_int_equal(mbd_fit_wait_ms(100, 100, NULL, 0), 0);
  assert_int_equal(mbd_fit_wait_ms(100, 0, NULL, 0), 0);
  mbd_fit_item it[] = {{50, 0}};
  assert_int_equal(mbd_fit_wait_ms(60, 100, it, 1), 0); /* evictable now */
}

static void test_items_in_time_order(void **state) {
  (void)state;
  /* Given out of order: 30 at 9 s, 20 at 2 s, 40 at 5 s; 10 free, 60 needed:
   * 10 + 20 (2 s) + 40 (5 s) = 70 >= 60 at 5 s. */
  mbd_fit_item it[] = {{30, 9000}, {20, 2000}, {40, 5000}};
  assert_int_equal(mbd_fit_wait_ms(10, 60, it, 3), 5000);
  assert_int_equal(it[0].in_ms, 2000); /* sorted in place */
  mbd_fit_item it2[] = {{30, 9000}, {20, 2000}, {40, 5000}};
  assert_int_equal(mbd_fit_wait_ms(10, 30, it2, 3), 2000);
  mbd_fit_item it3[] = {{30, 9000}, {20, 2000}, {40, 5000}};
  assert_int_equal(mbd_fit_wait_ms(10, 100, it3, 3), 9000);
}

static void test_never(void **state) {
  (void)state;
  mbd_fit_item it[] = {{30, 9000}, {20, 2000}};
  assert_int_equal(mbd_fit_wait_ms(10, 61, it, 2), -1);
  assert_int_equal(mbd_fit_wait_ms(0, 1, NULL, 0), -1);
}

static void test_no_overflow(void **state) {
  (void)state;
  mbd_fit_item it[] = {{UINT64_MAX, 1000}, {UINT64_MAX, 2000}};
  assert_int_equal(mbd_fit_wait_ms(UINT64_MAX - 1, UINT64_MAX, it, 2), 1000);
  mbd_fit_item it2[] = {{1, 1000}};
  assert_int_equal(mbd_fit_wait_ms(UINT64_MAX - 1, UINT64_MAX, it2, 1), 1000);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_room_now),
      cmocka_unit_test(test_items_in_time_order),
      cmocka_unit_test(test_never),
      cmocka_unit_test(test_no_overflow),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
