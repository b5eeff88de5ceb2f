/*
 * test_logring.c - a worker's numbered log (daemon/logring.c): numbers over
 * the ring's life, whole lines only, resuming at a number, the oldest lines
 * going when the bytes or slots run out, hostile bytes, and a reader
 * following a writer on another thread (each line exactly once, in order).
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <setjmp.h>
#include <cmocka.h>

#include "logring.h"

static void add(mbd_logring *r, char kind, const char *s) {
  mbd_logring_add(r, kind, s, strlen(s));
}

static void test_numbers_and_format(void **state) {
  (void)state;
  mbd_logring *r;
  assert_int_equal(mbd_logring_new(4096, &r), 0);
  assert_int_equal(mbd_logring_next(r), 1);
  add(r, MBD_LOG_RESTART, "modelbufd: starting m on port 1");
  add(r, MBD_LOG_OUTPUT, "hello\r\n");
  add(r, MBD_LOG_NOTE, "modelbufd: worker pid 3 exited: status 0");
  char out[512];
  uint64_t next = 0;
  size_t n = mbd_logring_since(r, 1, out, sizeof(out), &next);
  assert_string_equal(out, "1 r modelbufd: starting m on port 1\n"
                           "2 o hello\n"
                           "3 n modelbufd: worker pid 3 exited: status 0\n");
  assert_int_equal(n, strlen(out));
  assert_int_equal(next, 4);
  /* Nothing new: 0 bytes, the same number. */
  assert_int_equal(mbd_logring_since(r, next, out, sizeof(out), &next), 0);
  assert_int_equal(next, 4);
  /* From the middle, and past the end (clamped to the next number). */
  mbd_logring_since(r, 2, out, sizeof(out), &next);
  assert_string_equal(out, "2 o hello\n3 n modelbufd: worker pid 3 exited: status 0\n");
  assert_int_equal(mbd_logring_since(r, UINT64_MAX, out, sizeof(out), &next), 0);
  assert_int_equal(next, 4);
  /* The tail: text, the daemon's lines marked. */
  mbd_logring_tail(r, 0, out, sizeof(out));
  assert_string_equal(out, "-- modelbufd: starting m on port 1 --\nhello\n"
                           "-- modelbufd: worker pid 3 exited: status 0 --\n");
  mbd_logring_tail(r, 2, out, sizeof(out));
  assert_string_equal(out, "hello\n-- modelbufd: worker pid 3 exited: status 0 --\n");
  mbd_logring_free(r);
}

/* Whole lines only: a buffer that holds two lines gets two, and the next
 * call goes on from the third. */
static void test_whole_lines_and_resume(void **state) {
  (void)state;
  mbd_logring *r;
  assert_int_equal(mbd_logring_new(4096, &r), 0);
  for (int i = 0; i < 10; i++) {
    char line[32];
    snprintf(line, sizeof(line), "line %d", i);
    add(r, MBD_LOG_OUTPUT, line);
  }
  char out[24]; /* "1 o line 0\n" is 11 bytes: two fit in 23 */
  uint64_t next = 1;
  int seen = 0;
  for (int calls = 0; calls < 20 && next <= 10; calls++) {
    size_t n = mbd_logring_since(r, next, out, sizeof(out), &next);
    assert_true(n > 0);
    assert_int_equal(out[n - 1], '\n');
    for (char *p = out; *p; p = strchr(p, '\n') + 1)
      seen++;
  }
  assert_int_equal(seen, 10);
  assert_int_equal(next, 11);
  /* A buffer too small for one line gives nothing and does not move. */
  char tiny[4];
  assert_int_equal(mbd_logring_since(r, 1, tiny, sizeof(tiny), &next), 0);
  assert_int_equal(next, 1);
  mbd_logring_free(r);
}

/* The oldest lines go when the bytes run out; numbers go on; a reader
 * asking for a line gone starts at the oldest kept. */
static void test_eviction(void **state) {
  (void)state;
  mbd_logring *r;
  assert_int_equal(mbd_logring_new(1024, &r), 0);
  char line[100];
  memset(line, 'x', sizeof(line));
  for (int i = 0; i < 100; i++)
    mbd_logring_add(r, MBD_LOG_OUTPUT, line, sizeof(line));
  assert_int_equal(mbd_logring_next(r), 101);
  assert_true(mbd_logring_dropped(r) >= 90);
  char out[4096];
  uint64_t next;
  mbd_logring_since(r, 1, out, sizeof(out), &next);
  uint64_t first = strtoull(out, NULL, 10);
  assert_int_equal(first, mbd_logring_dropped(r) + 1);
  assert_int_equal(next, 101);
  /* At most 1024 bytes of text are kept. */
  size_t lines = 0;
  for (char *p = out; *p; p = strchr(p, '\n') + 1)
    lines++;
  assert_true(lines * sizeof(line) <= 1024);
  /* Slots run out before bytes with many short lines. */
  for (int i = 0; i < 1000; i++)
    add(r, MBD_LOG_OUTPUT, "y");
  assert_int_equal(mbd_logring_next(r), 1101);
  mbd_logring_since(r, 1, out, sizeof(out), &next);
  assert_int_equal(next, 1101);
  mbd_logring_free(r);
}

/* Hostile bytes: NULs and line breaks inside a line, a line longer than
 * allowed, an empty line. */
static void test_hostile_lines(void **state) {
  (void)state;
  mbd_logring *r;
  assert_int_equal(mbd_logring_new(64 * 1024, &r), 0);
  const char bad[] = "a\0b\nc\rd";
  mbd_logring_add(r, MBD_LOG_OUTPUT, bad, sizeof(bad) - 1);
  char *huge = malloc(MBD_LOG_LINE_MAX * 2);
  assert_non_null(huge);
  memset(huge, 'z', MBD_LOG_LINE_MAX * 2);
  mbd_logring_add(r, MBD_LOG_OUTPUT, huge, MBD_LOG_LINE_MAX * 2);
  free(huge);
  mbd_logring_add(r, MBD_LOG_OUTPUT, "", 0);
  char out[16384];
  uint64_t next;
  mbd_logring_since(r, 1, out, sizeof(out), &next);
  assert_int_equal(next, 4);
  assert_memory_equal(out, "1 o a b c d\n", 12);
  char *second = out + 12;
  assert_int_equal(strchr(second, '\n') - second, 4 + MBD_LOG_LINE_MAX);
  assert_string_equal(strchr(second, '\n') + 1, "3 o \n");
  mbd_logring_free(r);
}

/* A writer and a follower on two threads: every line exactly once, in
 * order, with nothing lost while the ring is large enough. */
typedef struct follow_arg {
  mbd_logring *r;
  int n;
  int done;
  pthread_mutex_t mu;
} follow_arg;

static void *writer(void *p) {
  follow_arg *a = p;
  for (int i = 0; i < a->n; i++) {
    char line[32];
    snprintf(line, sizeof(line), "w%d", i);
    add(a->r, MBD_LOG_OUTPUT, line);
  }
  pthread_mutex_lock(&a->mu);
  a->done = 1;
  pthread_mutex_unlock(&a->mu);
  return NULL;
}

static void test_follower_sees_each_line_once(void **state) {
  (void)state;
  follow_arg a = {NULL, 5000, 0, PTHREAD_MUTEX_INITIALIZER};
  assert_int_equal(mbd_logring_new(1 << 20, &a.r), 0);
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, writer, &a), 0);
  uint64_t next = 1;
  int expect = 0;
  char out[8192];
  for (;;) {
    pthread_mutex_lock(&a.mu);
    int done = a.done;
    pthread_mutex_unlock(&a.mu);
    size_t n = mbd_logring_since(a.r, next, out, sizeof(out), &next);
    for (char *p = out; n > 0 && *p; p = strchr(p, '\n') + 1) {
      uint64_t seq = strtoull(p, NULL, 10);
      assert_int_equal(seq, (uint64_t)expect + 1);
      char want[32];
      snprintf(want, sizeof(want), "o w%d\n", expect);
      assert_memory_equal(strchr(p, ' ') + 1, want, strlen(want));
      expect++;
    }
    if (done && n == 0)
      break;
  }
  pthread_join(t, NULL);
  assert_int_equal(expect, a.n);
  mbd_logring_free(a.r);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_numbers_and_format),
      cmocka_unit_test(test_whole_lines_and_resume),
      cmocka_unit_test(test_eviction),
      cmocka_unit_test(test_hostile_lines),
      cmocka_unit_test(test_follower_sees_each_line_once),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
