/*
 * alloc_count.h - a counting allocator for the unit tests, installed with
 * mb_set_allocator(&ac_allocator): ac_live is the number of the library's
 * allocations not yet freed, ac_big those of at least AC_BIG bytes (the
 * tensor engine's arenas, host copies and staging buffers), ac_calls the
 * attempts so far; setting ac_fail_at to N makes attempt N fail (0: none)
 * and sets ac_injected when it does. Safe from the library's threads.
 * Include once per test, after the C headers.
 */
#ifndef MB_TEST_ALLOC_COUNT_H
#define MB_TEST_ALLOC_COUNT_H

#include <malloc.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "modelbuf/modelbuf.h"

#define AC_BIG (64 * 1024)

static atomic_long ac_live, ac_big, ac_calls, ac_fail_at, ac_injected;

static int ac_should_fail(void) {
  long n = atomic_fetch_add(&ac_calls, 1) + 1;
  if (n != atomic_load(&ac_fail_at))
    return 0;
  atomic_store(&ac_injected, 1);
  return 1;
}

/* Counts a new block p (may be NULL) and returns it. */
static void *ac_counted(void *p) {
  if (p != NULL) {
    atomic_fetch_add(&ac_live, 1);
    if (malloc_usable_size(p) >= AC_BIG)
      atomic_fetch_add(&ac_big, 1);
  }
  return p;
}

static void ac_uncount(void *p) {
  atomic_fetch_sub(&ac_live, 1);
  if (malloc_usable_size(p) >= AC_BIG)
    atomic_fetch_sub(&ac_big, 1);
}

static void *ac_malloc(size_t n) { return ac_should_fail() ? NULL : ac_counted(malloc(n)); }

static void *ac_calloc(size_t c, size_t n) {
  return ac_should_fail() ? NULL : ac_counted(calloc(c, n));
}

static void *ac_realloc(void *p, size_t n) {
  if (ac_should_fail())
    return NULL;
  size_t was = p != NULL ? malloc_usable_size(p) : 0;
  void *q = realloc(p, n);
  if (q == NULL)
    return NULL; /* p is still there, still counted */
  if (p == NULL)
    return ac_counted(q);
  if (was >= AC_BIG)
    atomic_fetch_sub(&ac_big, 1);
  if (malloc_usable_size(q) >= AC_BIG)
    atomic_fetch_add(&ac_big, 1);
  return q;
}

static void ac_free(void *p) {
  if (p != NULL) {
    ac_uncount(p);
    free(p);
  }
}

static const mb_allocator ac_allocator = {ac_malloc, ac_realloc, ac_calloc, ac_free};

/* Arms the Nth next allocation attempt to fail (0: none). */
static inline void ac_fail(long n) {
  atomic_store(&ac_calls, 0);
  atomic_store(&ac_injected, 0);
  atomic_store(&ac_fail_at, n);
}

#endif /* MB_TEST_ALLOC_COUNT_H */
