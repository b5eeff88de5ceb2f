/*
 * test_cycles.c - load / use / offload / restore / unload, many times over,
 * with real memory: after every cycle the process is back where it started.
 *
 * Two figures are checked after each cycle against the ones taken after a
 * first warm-up cycle:
 *  - the library's own live allocations, counted through mb_set_allocator
 *    (so a leak of even one small block per cycle fails);
 *  - the resident set size of the process (/proc/self/statm), with the
 *    model's 48 MiB of weights mapped with mmap and returned with munmap, so
 *    a backend buffer left behind shows up as 48 MiB.
 * After mb_ctx_free the library holds no allocation at all (exactly).
 *
 * Threaded mode with the real clock; every transition is triggered by a
 * blocking call, so nothing sleeps.
 */
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <setjmp.h>
#include <cmocka.h>

#include "modelbuf/modelbuf.h"
#include "alloc_count.h"
#include "rss.h"

#define MiB (1024ull * 1024ull)
#define WEIGHTS (48 * MiB)
#define CYCLES 12
/* RSS may wander by allocator caches and thread stacks; 48 MiB may not. */
#define RSS_SLACK (12 * MiB)

#if defined(__SANITIZE_THREAD__)
#define TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define TSAN 1
#endif
#endif

/* ------------------------------------------------------------------------ */
/* A backend whose weights are real, touched, mapped memory                  */

typedef struct weights {
  uint8_t *dev;
  uint8_t *host;
  atomic_int maps; /* regions mapped now */
} weights;

static uint8_t *map_fill(weights *w, const uint8_t *from) {
  void *p = mmap(NULL, WEIGHTS, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED)
    return NULL;
  if (from)
    memcpy(p, from, WEIGHTS);
  else
    for (size_t i = 0; i < WEIGHTS; i += 64)
      ((uint8_t *)p)[i] = (uint8_t)(i >> 6);
  atomic_fetch_add(&w->maps, 1);
  return p;
}

static void unmap(weights *w, uint8_t **p) {
  if (*p) {
    munmap(*p, WEIGHTS);
    *p = NULL;
    atomic_fetch_sub(&w->maps, 1);
  }
}

static int w_load(void *user, int device, char *err, size_t err_len) {
  weights *w = user;
  (void)device;
  if ((w->dev = map_fill(w, NULL)) == NULL) {
    snprintf(err, err_len, "mmap failed");
    return MB_ENOMEM;
  }
  return 0;
}

static int w_offload(void *user, char *err, size_t err_len) {
  weights *w = user;
  if ((w->host = map_fill(w, w->dev)) == NULL) {
    snprintf(err, err_len, "mmap failed");
    return MB_ENOMEM;
  }
  unmap(w, &w->dev);
  return 0;
}

static int w_restore(void *user, int device, char *err, size_t err_len) {
  weights *w = user;
  (void)device;
  if ((w->dev = map_fill(w, w->host)) == NULL) {
    snprintf(err, err_len, "mmap failed");
    return MB_ENOMEM;
  }
  unmap(w, &w->host);
  return 0;
}

static int w_unload(void *user, char *err, size_t err_len) {
  weights *w = user;
  (void)err;
  (void)err_len;
  unmap(w, &w->dev);
  unmap(w, &w->host);
  return 0;
}

static void w_footprint(void *user, uint64_t *device_bytes, uint64_t *host_bytes) {
  weights *w = user;
  *device_bytes = w->dev ? WEIGHTS : 0;
  *host_bytes = w->host ? WEIGHTS : 0;
}

/* One whole residency: lease (load), release, offload, lease (restore),
 * release, unload. Checks the state and the bytes on each tier. */
static void cycle(mb_ctx *ctx, weights *w) {
  char err[256];
  mb_lease l;
  mb_status st;
  assert_int_equal(mb_acquire(ctx, "m", NULL, &l, err, sizeof(err)), 0);
  assert_non_null(w->dev);
  assert_int_equal(mb_release(ctx, l), 0);
  assert_int_equal(mb_offload(ctx, "m", err, sizeof(err)), 0);
  assert_int_equal(mb_model_status(ctx, "m", &st), 0);
  assert_int_equal(st.state, MB_STATE_OFFLOADED);
  assert_int_equal(st.host_bytes, WEIGHTS);
  assert_int_equal(st.vram_bytes, 0);
  assert_int_equal(mb_acquire(ctx, "m", NULL, &l, err, sizeof(err)), 0);
  assert_int_equal(w->dev[64 * 5], 5);
  assert_int_equal(mb_release(ctx, l), 0);
  assert_int_equal(mb_unload(ctx, "m", err, sizeof(err)), 0);
  assert_int_equal(mb_model_status(ctx, "m", &st), 0);
  assert_int_equal(st.state, MB_STATE_UNLOADED);
  assert_int_equal(st.vram_bytes + st.host_bytes, 0);
  assert_int_equal(atomic_load(&w->maps), 0);
}

/*
 * A blocking call returns as soon as its request is answered, a moment
 * before the core thread frees that request (its struct and its copy of the
 * model name): up to this many blocks may still be on their way out when
 * the count is read. A leak of one block per cycle passes it by the third.
 */
#define IN_FLIGHT_BLOCKS 2

static void test_cycles_return_to_baseline(void **state) {
  (void)state;
  long before_ctx = atomic_load(&ac_live);
  char err[256];
  mb_ctx *ctx;
  mb_ctx_opts co;
  mb_ctx_opts_init(&co);
  co.keep_alive_ms = MB_FOREVER; /* only explicit calls move the model */
  assert_int_equal(mb_ctx_new(&co, &ctx, err, sizeof(err)), 0);
  mb_device_opts d;
  mb_device_opts_init(&d);
  d.budget_bytes = 256 * MiB;
  assert_int_equal(mb_device_add(ctx, &d, NULL, err, sizeof(err)), 0);
  weights w = {0};
  mb_callbacks cb = {w_load, w_offload, w_restore, w_unload, w_footprint, &w};
  mb_model_opts mo;
  mb_model_opts_init(&mo);
  mo.footprint_bytes = WEIGHTS;
  assert_int_equal(mb_model_add_callbacks(ctx, "m", &cb, &mo, err, sizeof(err)), 0);

  cycle(ctx, &w); /* warm-up: thread stacks, statistics, caches */
  long base_allocs = atomic_load(&ac_live);
  uint64_t base_rss = rss_bytes();
  assert_true(base_rss > 0);
  uint64_t max_rss = base_rss;
  for (int i = 0; i < CYCLES; i++) {
    cycle(ctx, &w);
    long now = atomic_load(&ac_live);
    assert_true(now <= base_allocs + IN_FLIGHT_BLOCKS);
    assert_true(now >= base_allocs - IN_FLIGHT_BLOCKS);
    uint64_t r = rss_bytes();
    if (r > max_rss)
      max_rss = r;
  }
  mb_status st;
  assert_int_equal(mb_model_status(ctx, "m", &st), 0);
  assert_int_equal(st.stats.loads, CYCLES + 1);
  assert_int_equal(st.stats.offloads, CYCLES + 1);
  assert_int_equal(st.stats.restores, CYCLES + 1);
  assert_int_equal(st.stats.unloads, CYCLES + 1);
  print_message("rss: baseline %.1f MiB, highest after a cycle %.1f MiB\n",
                (double)base_rss / MiB, (double)max_rss / MiB);
#ifndef TSAN
  /* TSan keeps shadow pages of unmapped memory; elsewhere RSS must return. */
  assert_true(max_rss <= base_rss + RSS_SLACK);
#endif
  assert_int_equal(mb_ctx_free(ctx), 0);
  assert_int_equal(atomic_load(&ac_live), before_ctx);
}

int main(void) {
  if (mb_set_allocator(&ac_allocator) != 0)
    return 1;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_cycles_return_to_baseline),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
