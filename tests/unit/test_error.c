/*
 * test_error.c - the error table (MB_ERR_MAP in modelbuf.h): every code has
 * its name and its text, codes are the values they were given (appended,
 * never renumbered), unknown codes have a text too; the state and location
 * names; the version string.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "modelbuf/modelbuf.h"

/* The table as written down: a renumbered or renamed code fails here. */
static const struct {
  int code;
  const char *name;
} frozen[] = {
    {MB_OK, "MB_OK"},           {-1, "MB_EINVAL"},     {-2, "MB_ENOENT"},
    {-3, "MB_ENOMEM"},          {-4, "MB_EBUSY"},      {-5, "MB_EQUEUEFULL"},
    {-6, "MB_ETIMEDOUT"},       {-7, "MB_ENOSPC"},     {-8, "MB_ELOAD"},
    {-9, "MB_EBACKEND"},        {-10, "MB_ENOTSUP"},   {-11, "MB_ESTATE"},
    {-12, "MB_ECANCELED"},      {-13, "MB_EEXIST"},    {-14, "MB_EIO"},
    {-15, "MB_EFORMAT"},        {-16, "MB_ENODEV"},    {-17, "MB_ESHUTDOWN"},
    {-18, "MB_ELOST"},
};

static void test_codes_frozen(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof frozen / sizeof frozen[0]; i++)
    assert_string_equal(mb_err_name(frozen[i].code), frozen[i].name);
  assert_int_equal(MB_EINVAL, -1);
  assert_int_equal(MB_ELOST, -18);
}

/* Every code of the map: its own name ("MB_" and the map's), a text that
 * is neither empty nor the unknown one, and no two codes share a text. */
static void test_every_code_named(void **state) {
  (void)state;
  static const struct {
    int code;
    const char *name, *text;
  } map[] = {
#define XX(name, val, text) {MB_##name, "MB_" #name, text},
      MB_ERR_MAP(XX)
#undef XX
  };
  size_t n = sizeof map / sizeof map[0];
  assert_int_equal(n, sizeof frozen / sizeof frozen[0] - 1);
  for (size_t i = 0; i < n; i++) {
    assert_true(map[i].code < 0);
    assert_string_equal(mb_err_name(map[i].code), map[i].name);
    assert_string_equal(mb_strerror(map[i].code), map[i].text);
    assert_true(strlen(map[i].text) > 0);
    assert_string_not_equal(mb_strerror(map[i].code), "unknown error");
    for (size_t j = 0; j < i; j++) {
      assert_int_not_equal(map[i].code, map[j].code);
      assert_string_not_equal(map[i].text, map[j].text);
    }
  }
}

static void test_unknown_and_success(void **state) {
  (void)state;
  assert_string_equal(mb_strerror(0), "success");
  assert_string_equal(mb_err_name(0), "MB_OK");
  assert_string_equal(mb_strerror(12345), "unknown error");
  assert_string_equal(mb_err_name(12345), "MB_EUNKNOWN");
  assert_string_equal(mb_strerror(-1000), "unknown error");
  assert_string_equal(mb_err_name(-1000), "MB_EUNKNOWN");
  assert_string_equal(mb_strerror(MB_EQUEUEFULL), "queue full");
}

static void test_state_and_location_names(void **state) {
  (void)state;
  static const char *names[] = {"unloaded",  "loading",   "ready",     "offloading",
                                "offloaded", "restoring", "unloading", "failed"};
  static const mb_location loc[] = {MB_LOC_NONE, MB_LOC_NONE, MB_LOC_GPU, MB_LOC_GPU,
                                    MB_LOC_CPU,  MB_LOC_CPU,  MB_LOC_NONE, MB_LOC_NONE};
  for (int s = MB_STATE_UNLOADED; s <= MB_STATE_FAILED; s++) {
    assert_string_equal(mb_state_name((mb_state)s), names[s]);
    assert_int_equal(mb_state_location((mb_state)s), loc[s]);
  }
  assert_string_equal(mb_state_name((mb_state)99), "unknown");
  assert_string_equal(mb_location_name(MB_LOC_NONE), "none");
  assert_string_equal(mb_location_name(MB_LOC_GPU), "gpu");
  assert_string_equal(mb_location_name(MB_LOC_CPU), "cpu");
  assert_string_equal(mb_location_name((mb_location)99), "unknown");
}

static void test_version(void **state) {
  (void)state;
  assert_string_equal(mb_version(), MB_VERSION_STRING);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_codes_frozen),
      cmocka_unit_test(test_every_code_named),
      cmocka_unit_test(test_unknown_and_success),
      cmocka_unit_test(test_state_and_location_names),
      cmocka_unit_test(test_version),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
