/*
 * test_heap.c - the timer heap (lib/heap.h), the core's tie-breaker: timers
 * fire by deadline, equal deadlines in the order they were armed; cancel
 * and re-arm from any slot keep the heap ordered; room is reserved ahead so
 * arming never allocates, and a failed reservation is reported.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "modelbuf/modelbuf.h"
#include "heap.h"

#define N 512

/* Pops every armed timer, checking the order: deadline, then arming order. */
static int drain(mb__heap *h, mb__timer **order, int max) {
  int n = 0;
  mb__timer *t, *prev = NULL;
  while ((t = mb__heap_top(h)) != NULL) {
    if (prev != NULL) {
      assert_true(prev->deadline < t->deadline ||
                  (prev->deadline == t->deadline && prev->seq < t->seq));
    }
    mb__heap_cancel(h, t);
    assert_false(mb__timer_armed(t));
    assert_true(n < max);
    order[n++] = t;
    prev = t;
  }
  return n;
}

/* An empty heap with room reserved for n timers of kind, initialised. */
static void heap_with(mb__heap *h, mb__timer *t, int n, uint8_t kind) {
  memset(h, 0, sizeof(*h));
  for (int i = 0; i < n; i++) {
    mb__timer_init(&t[i], kind);
    assert_int_equal(mb__heap_reserve(h), 0);
  }
  assert_true(h->cap >= (size_t)n);
}

static void test_empty_and_idle(void **state) {
  (void)state;
  mb__heap h;
  memset(&h, 0, sizeof(h));
  mb__timer t;
  mb__timer_init(&t, 7);
  assert_int_equal(t.kind, 7);
  assert_false(mb__timer_armed(&t));
  assert_null(mb__heap_top(&h));
  mb__heap_cancel(&h, &t); /* an idle timer: nothing to do */
  assert_int_equal(h.len, 0);
  mb__heap_unreserve(&h);  /* nothing promised: stays at 0 */
  assert_int_equal(h.reserved, 0);
  mb__heap_free(&h);
}

/* Equal deadlines come out in arming order; a re-arm counts as a new arming. */
static void test_ties_in_arming_order(void **state) {
  (void)state;
  mb__heap h;
  mb__timer t[8];
  heap_with(&h, t, 8, 1);
  for (int i = 7; i >= 0; i--)
    mb__heap_arm(&h, &t[i], 100);
  mb__heap_arm(&h, &t[7], 100); /* re-armed: now the last of its deadline */
  mb__heap_arm(&h, &t[3], 50);
  mb__timer *order[8];
  assert_int_equal(drain(&h, order, 8), 8);
  mb__timer *want[8] = {&t[3], &t[6], &t[5], &t[4], &t[2], &t[1], &t[0], &t[7]};
  for (int i = 0; i < 8; i++)
    assert_ptr_equal(order[i], want[i]);
  mb__heap_free(&h);
}

/* Random arms, re-arms and cancels against a plain array: the top is always
 * the earliest (then first armed), and draining gives the full order. */
static void test_random_against_reference(void **state) {
  (void)state;
  mb__heap h;
  static mb__timer t[N];
  heap_with(&h, t, N, 2);
  srand(12345);
  for (int round = 0; round < 20000; round++) {
    mb__timer *x = &t[rand() % N];
    if (rand() % 3 == 0)
      mb__heap_cancel(&h, x);
    else
      mb__heap_arm(&h, x, (uint64_t)(rand() % 64)); /* many ties */
    /* The reference: the armed timer with the least (deadline, seq). */
    const mb__timer *best = NULL;
    size_t armed = 0;
    for (int i = 0; i < N; i++) {
      if (!mb__timer_armed(&t[i]))
        continue;
      armed++;
      assert_ptr_equal(h.items[t[i].slot], &t[i]);
      if (best == NULL || t[i].deadline < best->deadline ||
          (t[i].deadline == best->deadline && t[i].seq < best->seq))
        best = &t[i];
    }
    assert_int_equal(h.len, armed);
    assert_ptr_equal(mb__heap_top(&h), best);
  }
  mb__timer *order[N];
  drain(&h, order, N);
  assert_int_equal(h.len, 0);
  mb__heap_free(&h);
}

/* Reservations: arming within them never grows the array. */
static void test_reserve_bounds_arming(void **state) {
  (void)state;
  mb__heap h;
  static mb__timer t[100];
  heap_with(&h, t, 100, 3);
  assert_int_equal(h.reserved, 100);
  mb__timer **items = h.items;
  size_t cap = h.cap;
  for (int i = 0; i < 100; i++)
    mb__heap_arm(&h, &t[i], (uint64_t)(i * 7 % 13));
  assert_ptr_equal(h.items, items);
  assert_int_equal(h.cap, cap);
  for (int i = 0; i < 100; i++) {
    mb__heap_cancel(&h, &t[i]);
    mb__heap_unreserve(&h);
  }
  assert_int_equal(h.reserved, 0);
  assert_int_equal(h.len, 0);
  mb__heap_free(&h);
  assert_null(h.items);
}

static int fail_allocs;
static void *fail_malloc(size_t n) { return fail_allocs ? NULL : malloc(n); }
static void *fail_realloc(void *p, size_t n) { return fail_allocs ? NULL : realloc(p, n); }
static void *fail_calloc(size_t c, size_t n) { return fail_allocs ? NULL : calloc(c, n); }

/* A reservation that cannot grow the array says MB_ENOMEM and changes
 * nothing; the next one succeeds once memory is back. */
static void test_reserve_out_of_memory(void **state) {
  (void)state;
  mb_allocator a = {fail_malloc, fail_realloc, fail_calloc, free};
  mb_allocator libc = {malloc, realloc, calloc, free};
  assert_int_equal(mb_set_allocator(&a), 0);
  mb__heap h;
  memset(&h, 0, sizeof(h));
  fail_allocs = 1;
  assert_int_equal(mb__heap_reserve(&h), MB_ENOMEM);
  assert_int_equal(h.reserved, 0);
  assert_int_equal(h.cap, 0);
  fail_allocs = 0;
  assert_int_equal(mb__heap_reserve(&h), 0);
  assert_int_equal(h.reserved, 1);
  mb__heap_free(&h);
  assert_int_equal(mb_set_allocator(&libc), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_empty_and_idle),
      cmocka_unit_test(test_ties_in_arming_order),
      cmocka_unit_test(test_random_against_reference),
      cmocka_unit_test(test_reserve_bounds_arming),
      cmocka_unit_test(test_reserve_out_of_memory),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
