/*
 * test_callbacks.c - the callbacks backend and the host device end to end,
 * in threaded mode with real memory: a model's load allocates and fills a
 * buffer, offload moves it to a host buffer, restore copies it back (every
 * byte checked), unload frees it all. Footprints are measured, failures
 * carry the callback's message, and mb_ctx_free unloads what is left.
 *
 * Threaded mode with the real clock, but nothing waits for a timer: every
 * transition is triggered by a blocking call (mb_acquire, mb_offload, ...)
 * or by keep-alive 0, and then observed through a blocking call that
 * answers only once it is done.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <setjmp.h>
#include <cmocka.h>

#include "modelbuf/modelbuf.h"

#define KiB 1024ull
#define MiB (1024ull * 1024ull)

/* Buffers the test backend holds right now, on any tier. */
static atomic_int live_buffers;

typedef struct tmodel {
  size_t bytes;
  unsigned seed;
  uint8_t *dev;
  uint8_t *host;
  int fail_load;        /* load returns this with fail_msg when non-zero */
  const char *fail_msg;
  atomic_int loads, offloads, restores, unloads, footprints;
} tmodel;

static uint8_t byte_at(unsigned seed, size_t i) {
  return (uint8_t)(seed * 131u + i * 31u + (i >> 9));
}

static void *buf_alloc(size_t n) {
  void *p = malloc(n);
  if (p)
    atomic_fetch_add(&live_buffers, 1);
  return p;
}

static void buf_free(void *p) {
  if (p) {
    free(p);
    atomic_fetch_sub(&live_buffers, 1);
  }
}

static int t_load(void *user, int device, char *err, size_t err_len) {
  tmodel *m = user;
  (void)device;
  atomic_fetch_add(&m->loads, 1);
  if (m->fail_load) {
    snprintf(err, err_len, "%s", m->fail_msg);
    return m->fail_load;
  }
  m->dev = buf_alloc(m->bytes);
  if (m->dev == NULL)
    return MB_ENOMEM;
  for (size_t i = 0; i < m->bytes; i++)
    m->dev[i] = byte_at(m->seed, i);
  return 0;
}

static int t_offload(void *user, char *err, size_t err_len) {
  tmodel *m = user;
  (void)err;
  (void)err_len;
  atomic_fetch_add(&m->offloads, 1);
  m->host = buf_alloc(m->bytes);
  if (m->host == NULL)
    return MB_ENOMEM;
  memcpy(m->host, m->dev, m->bytes);
  buf_free(m->dev);
  m->dev = NULL;
  return 0;
}

static int t_restore(void *user, int device, char *err, size_t err_len) {
  tmodel *m = user;
  (void)device;
  (void)err;
  (void)err_len;
  atomic_fetch_add(&m->restores, 1);
  m->dev = buf_alloc(m->bytes);
  if (m->dev == NULL)
    return MB_ENOMEM;
  memcpy(m->dev, m->host, m->bytes);
  buf_free(m->host);
  m->host = NULL;
  return 0;
}

static int t_unload(void *user, char *err, size_t err_len) {
  tmodel *m = user;
  (void)err;
  (void)err_len;
  atomic_fetch_add(&m->unloads, 1);
  buf_free(m->dev);
  buf_free(m->host);
  m->dev = m->host = NULL;
  return 0;
}

static void t_footprint(void *user, uint64_t *device_bytes, uint64_t *host_bytes) {
  tmodel *m = user;
  atomic_fetch_add(&m->footprints, 1);
  *device_bytes = m->dev ? m->bytes : 0;
  *host_bytes = m->host ? m->bytes : 0;
}

/* Number of bytes of the model's device buffer that differ from its pattern. */
static size_t bad_bytes(const tmodel *m) {
  size_t bad = 0;
  if (m->dev == NULL)
    return m->bytes;
  for (size_t i = 0; i < m->bytes; i++)
    bad += m->dev[i] != byte_at(m->seed, i);
  return bad;
}

/* ------------------------------------------------------------------------ */
/* Fixture                                                                   */

static mb_ctx *ctx;

static int setup(void **state) {
  (void)state;
  mb_ctx_opts o;
  char err[256] = "";
  mb_ctx_opts_init(&o);
  o.loader_threads = 2;
  o.host_budget_bytes = 256 * MiB;
  atomic_store(&live_buffers, 0);
  if (mb_ctx_new(&o, &ctx, err, sizeof(err)) != 0)
    fail_msg("mb_ctx_new: %s", err);
  mb_device_opts d;
  mb_device_opts_init(&d);
  d.capacity_bytes = 64 * MiB;
  int idx = -1;
  if (mb_device_add(ctx, &d, &idx, err, sizeof(err)) != 0)
    fail_msg("mb_device_add: %s", err);
  assert_int_equal(idx, 0);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  if (ctx) {
    assert_int_equal(mb_ctx_free(ctx), 0);
    ctx = NULL;
  }
  assert_int_equal(atomic_load(&live_buffers), 0);
  return 0;
}

static void add_model(const char *name, tmodel *m, int with_offload, uint64_t declared,
                      int64_t keep_alive_ms) {
  mb_callbacks cb = {t_load, NULL, NULL, t_unload, t_footprint, m};
  if (with_offload) {
    cb.offload = t_offload;
    cb.restore = t_restore;
  }
  mb_model_opts o;
  char err[256] = "";
  mb_model_opts_init(&o);
  o.footprint_bytes = declared;
  o.keep_alive_ms = keep_alive_ms;
  int rc = mb_model_add_callbacks(ctx, name, &cb, &o, err, sizeof(err));
  if (rc != 0)
    fail_msg("add %s: %s", name, err);
}

static mb_status status(const char *name) {
  mb_status st;
  assert_int_equal(mb_model_status(ctx, name, &st), 0);
  return st;
}

static mb_lease acquire_ok(const char *name) {
  mb_lease l;
  char err[256] = "";
  int rc = mb_acquire(ctx, name, NULL, &l, err, sizeof(err));
  if (rc != 0)
    fail_msg("acquire %s: %s: %s", name, mb_err_name(rc), err);
  assert_true(l.id != 0);
  return l;
}

/* ------------------------------------------------------------------------ */
/* Tests                                                                     */

/* Load fills real memory; offload moves it; restore brings every byte back;
 * the measured footprint replaces the declared one. */
static void test_load_offload_restore(void **state) {
  (void)state;
  static tmodel m = {.bytes = 3 * MiB + 123, .seed = 7};
  add_model("m", &m, 1, 8 * MiB, MB_FOREVER);

  mb_status st = status("m");
  assert_int_equal(st.state, MB_STATE_UNLOADED);
  assert_string_equal(st.backend, "callbacks");
  assert_int_equal(st.footprint_bytes, 8 * MiB);
  assert_int_equal(atomic_load(&m.loads), 0); /* lazy: nothing yet */

  mb_lease l = acquire_ok("m");
  assert_int_equal(l.device, 0);
  assert_int_equal(atomic_load(&m.loads), 1);
  assert_int_equal(bad_bytes(&m), 0);
  st = status("m");
  assert_int_equal(st.state, MB_STATE_READY);
  assert_int_equal(st.location, MB_LOC_GPU);
  assert_int_equal(st.inflight, 1);
  assert_int_equal(st.vram_bytes, m.bytes); /* measured, not the declared 8 MiB */
  assert_true(atomic_load(&m.footprints) >= 1);
  mb_device_info di;
  assert_int_equal(mb_device_info_get(ctx, 0, &di), 0);
  assert_int_equal(di.used_bytes, m.bytes); /* the charge follows the measurement */
  assert_int_equal(di.resident, 1);
  assert_int_equal(di.leases, 1);

  /* An explicit offload waits for the lease; then the device buffer is gone. */
  assert_int_equal(mb_release(ctx, l), 0);
  assert_int_equal(mb_release(ctx, l), MB_EINVAL); /* exactly once */
  char err[256] = "";
  assert_int_equal(mb_offload(ctx, "m", err, sizeof(err)), 0);
  st = status("m");
  assert_int_equal(st.state, MB_STATE_OFFLOADED);
  assert_int_equal(st.location, MB_LOC_CPU);
  assert_int_equal(st.vram_bytes, 0);
  assert_int_equal(st.host_bytes, m.bytes);
  assert_int_equal(st.footprint_bytes, m.bytes); /* the residency's peak, measured */
  assert_null(m.dev);
  assert_non_null(m.host);
  assert_int_equal(atomic_load(&live_buffers), 1);
  assert_int_equal(mb_device_info_get(ctx, 0, &di), 0);
  assert_int_equal(di.used_bytes, 0);
  uint64_t hb = 0, hu = 0;
  mb_host_tier(ctx, &hb, &hu);
  assert_int_equal(hb, 256 * MiB);
  assert_int_equal(hu, m.bytes);
  /* Offloading an offloaded model is a no-op. */
  assert_int_equal(mb_offload(ctx, "m", err, sizeof(err)), 0);
  assert_int_equal(atomic_load(&m.offloads), 1);

  /* The next use restores: every byte comes back. */
  l = acquire_ok("m");
  assert_int_equal(atomic_load(&m.restores), 1);
  assert_int_equal(atomic_load(&m.loads), 1);
  assert_int_equal(bad_bytes(&m), 0);
  assert_null(m.host);
  st = status("m");
  assert_int_equal(st.state, MB_STATE_READY);
  assert_int_equal(st.vram_bytes, m.bytes);
  assert_int_equal(st.host_bytes, 0);
  assert_int_equal(st.stats.loads, 1);
  assert_int_equal(st.stats.offloads, 1);
  assert_int_equal(st.stats.restores, 1);
  assert_int_equal(st.stats.requests, 2);
  mb_host_tier(ctx, &hb, &hu);
  assert_int_equal(hu, 0);
  assert_int_equal(mb_release(ctx, l), 0);

  /* Unload frees every tier. */
  assert_int_equal(mb_unload(ctx, "m", err, sizeof(err)), 0);
  assert_int_equal(status("m").state, MB_STATE_UNLOADED);
  assert_int_equal(atomic_load(&m.unloads), 1);
  assert_int_equal(atomic_load(&live_buffers), 0);
  assert_int_equal(mb_unload(ctx, "m", err, sizeof(err)), 0); /* already: 0 */
  assert_int_equal(atomic_load(&m.unloads), 1);
}

/* keep_alive 0: the last release offloads at once; mb_offload waits for it. */
static void test_keep_alive_zero(void **state) {
  (void)state;
  static tmodel m = {.bytes = 256 * KiB, .seed = 3};
  add_model("z", &m, 1, 256 * KiB, 0);
  for (int round = 0; round < 3; round++) {
    mb_lease l = acquire_ok("z");
    assert_int_equal(bad_bytes(&m), 0);
    assert_int_equal(mb_release(ctx, l), 0);
    /* Answered once the idle offload (already started or not) is done. */
    assert_int_equal(mb_offload(ctx, "z", NULL, 0), 0);
    assert_int_equal(status("z").state, MB_STATE_OFFLOADED);
  }
  mb_status st = status("z");
  assert_int_equal(st.stats.loads, 1);
  assert_int_equal(st.stats.restores, 2);
  assert_int_equal(st.stats.offloads, 3);
  /* mb_load brings it back without a lease; keep-alive 0 sends it away again. */
  assert_int_equal(mb_load(ctx, "z", MB_FOREVER, NULL, 0), 0);
  assert_int_equal(status("z").state, MB_STATE_READY);
  assert_int_equal(bad_bytes(&m), 0);
  assert_int_equal(mb_keep_alive(ctx, "z", 0), 0);
  assert_int_equal(mb_offload(ctx, "z", NULL, 0), 0);
  assert_int_equal(status("z").state, MB_STATE_OFFLOADED);
}

/* User code finds its model gone (say its device reported an error) and
 * says so from another thread: the lease ends (MB_ELOST), the unload
 * callback frees what is left, and the next acquire loads it again. */
typedef struct lost_arg {
  const char *model;
  int rc;
} lost_arg;

static void *report_lost(void *arg) {
  lost_arg *a = arg;
  a->rc = mb_model_lost(ctx, a->model, 0, 0, "device error: uncorrectable ECC");
  return NULL;
}

static void test_lost_from_another_thread(void **state) {
  (void)state;
  static tmodel m = {.bytes = 128 * KiB, .seed = 7};
  add_model("dev", &m, 1, 128 * KiB, MB_FOREVER);
  mb_lease l = acquire_ok("dev");
  assert_int_equal(status("dev").residency, 1);
  pthread_t t;
  lost_arg a = {"dev", -99};
  assert_int_equal(pthread_create(&t, NULL, report_lost, &a), 0);
  pthread_join(t, NULL);
  assert_int_equal(a.rc, 0);
  /* Posted after the report: answers once the lost model is unloaded. */
  assert_int_equal(mb_unload(ctx, "dev", NULL, 0), 0);
  mb_status st = status("dev");
  assert_int_equal(st.state, MB_STATE_UNLOADED);
  assert_int_equal(st.stats.crashes, 1);
  assert_string_equal(st.lost_reason, "device error: uncorrectable ECC");
  assert_int_equal(atomic_load(&m.unloads), 1);
  assert_null(m.dev);
  assert_int_equal(mb_release(ctx, l), MB_ELOST);
  l = acquire_ok("dev");
  assert_int_equal(bad_bytes(&m), 0);
  assert_int_equal(atomic_load(&m.loads), 2);
  assert_int_equal(status("dev").residency, 2);
  assert_int_equal(mb_release(ctx, l), 0);
}

/* A failing load: FAILED with the callback's message; acquire gets MB_ELOAD
 * with it; the back-off answers at once; unload resets. */
static void test_load_failure(void **state) {
  (void)state;
  static tmodel m = {.bytes = 64 * KiB, .seed = 9, .fail_load = MB_EIO,
                     .fail_msg = "weights.bin: checksum mismatch at byte 4096"};
  add_model("bad", &m, 1, 64 * KiB, MB_FOREVER);
  mb_lease l = {0, 0};
  char err[256] = "";
  int rc = mb_acquire(ctx, "bad", NULL, &l, err, sizeof(err));
  assert_int_equal(rc, MB_ELOAD);
  assert_non_null(strstr(err, "checksum mismatch at byte 4096"));
  assert_non_null(strstr(err, "bad"));
  assert_int_equal(l.id, 0);
  mb_status st = status("bad");
  assert_int_equal(st.state, MB_STATE_FAILED);
  assert_int_equal(st.location, MB_LOC_NONE);
  assert_string_equal(st.error, "weights.bin: checksum mismatch at byte 4096");
  assert_int_equal(st.stats.load_failures, 1);
  assert_int_equal(st.vram_bytes, 0);
  assert_int_equal(atomic_load(&live_buffers), 0);
  mb_device_info di;
  assert_int_equal(mb_device_info_get(ctx, 0, &di), 0);
  assert_int_equal(di.used_bytes, 0);

  /* In the back-off (1 s): answered at once, no new load. */
  err[0] = '\0';
  assert_int_equal(mb_acquire(ctx, "bad", NULL, &l, err, sizeof(err)), MB_ELOAD);
  assert_non_null(strstr(err, "checksum mismatch"));
  assert_non_null(strstr(err, "next retry"));
  assert_int_equal(atomic_load(&m.loads), 1);
  assert_int_equal(mb_load(ctx, "bad", MB_DEFAULT, err, sizeof(err)), MB_ELOAD);
  assert_int_equal(atomic_load(&m.loads), 1);
  /* Offload of a failed model: not loaded. */
  assert_int_equal(mb_offload(ctx, "bad", err, sizeof(err)), MB_ESTATE);

  /* Unload resets it; the next acquire loads again, and now succeeds. */
  assert_int_equal(mb_unload(ctx, "bad", err, sizeof(err)), 0);
  st = status("bad");
  assert_int_equal(st.state, MB_STATE_UNLOADED);
  assert_string_equal(st.error, "");
  m.fail_load = 0; /* ordered before the next load by the acquire's post */
  l = acquire_ok("bad");
  assert_int_equal(atomic_load(&m.loads), 2);
  assert_int_equal(bad_bytes(&m), 0);
  assert_int_equal(mb_release(ctx, l), 0);
}

/* Without offload/restore: explicit offload is MB_ENOTSUP; idle unloads. */
static void test_no_offload(void **state) {
  (void)state;
  static tmodel m = {.bytes = 128 * KiB, .seed = 5};
  add_model("plain", &m, 0, 128 * KiB, MB_FOREVER);
  char err[256] = "";
  assert_int_equal(mb_offload(ctx, "plain", err, sizeof(err)), MB_ENOTSUP);
  assert_non_null(strstr(err, "cannot offload"));
  mb_lease l = acquire_ok("plain");
  assert_int_equal(bad_bytes(&m), 0);
  err[0] = '\0';
  assert_int_equal(mb_offload(ctx, "plain", err, sizeof(err)), MB_ENOTSUP);
  assert_non_null(strstr(err, "plain"));
  assert_int_equal(status("plain").state, MB_STATE_READY); /* unchanged */
  assert_int_equal(mb_release(ctx, l), 0);

  /* keep-alive 0 with no offload: idle means unload. */
  assert_int_equal(mb_keep_alive(ctx, "plain", 0), 0);
  assert_int_equal(mb_unload(ctx, "plain", err, sizeof(err)), 0);
  mb_status st = status("plain");
  assert_int_equal(st.state, MB_STATE_UNLOADED);
  assert_int_equal(st.stats.offloads, 0);
  assert_int_equal(st.stats.unloads, 1);
  assert_int_equal(atomic_load(&m.offloads), 0);
  assert_int_equal(atomic_load(&m.unloads), 1);
  assert_int_equal(atomic_load(&live_buffers), 0);

  /* Bad callback sets are refused, and nothing is registered. */
  mb_callbacks half = {t_load, t_offload, NULL, t_unload, NULL, &m};
  err[0] = '\0';
  assert_int_equal(mb_model_add_callbacks(ctx, "half", &half, NULL, err, sizeof(err)), MB_EINVAL);
  assert_true(err[0] != '\0');
  mb_callbacks noload = {NULL, NULL, NULL, t_unload, NULL, &m};
  assert_int_equal(mb_model_add_callbacks(ctx, "noload", &noload, NULL, err, sizeof(err)),
                   MB_EINVAL);
  assert_int_equal(mb_model_add_callbacks(ctx, "nocb", NULL, NULL, err, sizeof(err)), MB_EINVAL);
  mb_status dummy;
  assert_int_equal(mb_model_status(ctx, "half", &dummy), MB_ENOENT);
  /* A duplicate name is refused; the copy of the callbacks is freed (ASan). */
  mb_callbacks ok = {t_load, NULL, NULL, t_unload, NULL, &m};
  assert_int_equal(mb_model_add_callbacks(ctx, "plain", &ok, NULL, err, sizeof(err)), MB_EEXIST);
}

/* mb_model_remove: refused with a lease out; then unloads and forgets. */
static void test_model_remove(void **state) {
  (void)state;
  static tmodel m = {.bytes = 512 * KiB, .seed = 11};
  static tmodel m2 = {.bytes = 100 * KiB, .seed = 12};
  add_model("gone", &m, 1, 512 * KiB, MB_FOREVER);
  add_model("kept", &m2, 1, 100 * KiB, MB_FOREVER);
  assert_int_equal(mb_model_count(ctx), 2);
  mb_lease l = acquire_ok("gone");
  assert_int_equal(mb_model_remove(ctx, "gone"), MB_EBUSY);
  assert_int_equal(status("gone").state, MB_STATE_READY);
  assert_int_equal(mb_release(ctx, l), 0);
  assert_int_equal(mb_model_remove(ctx, "gone"), 0);
  assert_int_equal(atomic_load(&m.unloads), 1);
  assert_int_equal(atomic_load(&live_buffers), 0);
  mb_status st;
  assert_int_equal(mb_model_status(ctx, "gone", &st), MB_ENOENT);
  assert_int_equal(mb_acquire(ctx, "gone", NULL, &l, NULL, 0), MB_ENOENT);
  assert_int_equal(mb_model_remove(ctx, "gone"), MB_ENOENT);
  assert_int_equal(mb_model_count(ctx), 1);
  char name[128];
  assert_int_equal(mb_model_name(ctx, 0, name, sizeof(name)), 0);
  assert_string_equal(name, "kept");
  mb_device_info di;
  assert_int_equal(mb_device_info_get(ctx, 0, &di), 0);
  assert_int_equal(di.used_bytes, 0);

  /* An offloaded model is removed from host RAM. */
  l = acquire_ok("kept");
  assert_int_equal(mb_release(ctx, l), 0);
  assert_int_equal(mb_offload(ctx, "kept", NULL, 0), 0);
  assert_int_equal(atomic_load(&live_buffers), 1);
  assert_int_equal(mb_model_remove(ctx, "kept"), 0);
  assert_int_equal(atomic_load(&live_buffers), 0);
  uint64_t hu = 1;
  mb_host_tier(ctx, NULL, &hu);
  assert_int_equal(hu, 0);

  /* The name can be used again. */
  m.loads = 0;
  add_model("gone", &m, 1, 512 * KiB, MB_FOREVER);
  l = acquire_ok("gone");
  assert_int_equal(bad_bytes(&m), 0);
  assert_int_equal(mb_release(ctx, l), 0);
}

static uint64_t meminfo_total(void) {
  FILE *f = fopen("/proc/meminfo", "r");
  char line[256];
  unsigned long long kb = 0;
  assert_non_null(f);
  while (fgets(line, sizeof(line), f))
    if (sscanf(line, "MemTotal: %llu kB", &kb) == 1)
      break;
  fclose(f);
  return (uint64_t)kb * 1024;
}

/* Host device figures: measured capacity, reserve and budget applied. */
static void test_device_info(void **state) {
  (void)state;
  mb_device_info di;
  assert_int_equal(mb_device_count(ctx), 1);
  assert_int_equal(mb_device_info_get(ctx, 0, &di), 0);
  assert_int_equal(di.index, 0);
  assert_int_equal(di.kind, MB_DEVICE_HOST);
  assert_string_equal(di.name, "host");
  assert_int_equal(di.capacity_bytes, 64 * MiB);
  assert_int_equal(di.usable_bytes, 64 * MiB);
  assert_int_equal(di.free_bytes, 64 * MiB);
  assert_int_equal(mb_device_info_get(ctx, 7, &di), MB_ENODEV);
  assert_int_equal(mb_device_info_get(ctx, -1, &di), MB_ENODEV);

  /* capacity 0: measured from /proc/meminfo; reserve comes off it. */
  mb_device_opts d;
  char err[256] = "";
  int idx = -1;
  mb_device_opts_init(&d);
  d.reserve_bytes = 100 * MiB;
  assert_int_equal(mb_device_add(ctx, &d, &idx, err, sizeof(err)), 0);
  assert_int_equal(idx, 1);
  assert_int_equal(mb_device_info_get(ctx, 1, &di), 0);
  uint64_t total = meminfo_total();
  assert_true(total > 100 * MiB);
  assert_int_equal(di.capacity_bytes, total);
  assert_int_equal(di.reserve_bytes, 100 * MiB);
  assert_int_equal(di.budget_bytes, 0);
  assert_int_equal(di.usable_bytes, total - 100 * MiB);
  assert_int_equal(di.used_bytes, 0);
  assert_int_equal(di.free_bytes, di.usable_bytes);

  /* A budget below capacity - reserve caps what models may use. */
  mb_device_opts_init(&d);
  d.reserve_bytes = 1 * MiB;
  d.budget_bytes = 5 * MiB;
  assert_int_equal(mb_device_add(ctx, &d, &idx, err, sizeof(err)), 0);
  assert_int_equal(mb_device_info_get(ctx, idx, &di), 0);
  assert_int_equal(di.capacity_bytes, total);
  assert_int_equal(di.budget_bytes, 5 * MiB);
  assert_int_equal(di.usable_bytes, 5 * MiB);
  /* A budget above capacity - reserve does not raise it. */
  mb_device_opts_init(&d);
  d.capacity_bytes = 10 * MiB;
  d.reserve_bytes = 4 * MiB;
  d.budget_bytes = 100 * MiB;
  assert_int_equal(mb_device_add(ctx, &d, &idx, err, sizeof(err)), 0);
  assert_int_equal(mb_device_info_get(ctx, idx, &di), 0);
  assert_int_equal(di.usable_bytes, 6 * MiB);
  assert_int_equal(mb_device_count(ctx), 4);

  /* A model on the budgeted device is charged there and its lease counted. */
  static tmodel m = {.bytes = 2 * MiB, .seed = 21};
  mb_callbacks cb = {t_load, t_offload, t_restore, t_unload, t_footprint, &m};
  mb_model_opts o;
  mb_model_opts_init(&o);
  o.footprint_bytes = 2 * MiB;
  o.device = 2;
  assert_int_equal(mb_model_add_callbacks(ctx, "on2", &cb, &o, err, sizeof(err)), 0);
  mb_lease l = acquire_ok("on2");
  assert_int_equal(l.device, 2);
  assert_int_equal(mb_device_info_get(ctx, 2, &di), 0);
  assert_int_equal(di.used_bytes, 2 * MiB);
  assert_int_equal(di.free_bytes, 3 * MiB);
  assert_int_equal(di.resident, 1);
  assert_int_equal(di.leases, 1);
  assert_int_equal(mb_device_info_get(ctx, 0, &di), 0);
  assert_int_equal(di.used_bytes, 0);
  assert_int_equal(mb_release(ctx, l), 0);
  /* Too big for its device's budget: refused at once, not queued. */
  o.footprint_bytes = 6 * MiB;
  assert_int_equal(mb_model_add_callbacks(ctx, "big", &cb, &o, err, sizeof(err)), 0);
  err[0] = '\0';
  assert_int_equal(mb_acquire(ctx, "big", NULL, &l, err, sizeof(err)), MB_ENOSPC);
  assert_true(err[0] != '\0');
  assert_int_equal(atomic_load(&m.loads), 1);
}

/* mb_ctx_free with a lease out: MB_EBUSY and nothing changes; after the
 * release it unloads every model (from the device and from host RAM). */
static void test_ctx_free(void **state) {
  (void)state;
  static tmodel a = {.bytes = 1 * MiB, .seed = 31};
  static tmodel b = {.bytes = 2 * MiB, .seed = 32};
  static tmodel c = {.bytes = 3 * MiB, .seed = 33};
  add_model("a", &a, 1, 1 * MiB, MB_FOREVER);
  add_model("b", &b, 1, 2 * MiB, MB_FOREVER);
  add_model("c", &c, 0, 3 * MiB, MB_FOREVER);
  mb_lease la = acquire_ok("a");
  mb_lease lb = acquire_ok("b");
  mb_lease lc = acquire_ok("c");
  assert_int_equal(mb_release(ctx, lb), 0);
  assert_int_equal(mb_offload(ctx, "b", NULL, 0), 0);
  assert_int_equal(mb_release(ctx, lc), 0);
  assert_int_equal(atomic_load(&live_buffers), 3);

  assert_int_equal(mb_ctx_free(ctx), MB_EBUSY);
  /* Still fully working. */
  assert_int_equal(status("a").state, MB_STATE_READY);
  assert_int_equal(status("a").inflight, 1);
  assert_int_equal(status("b").state, MB_STATE_OFFLOADED);
  assert_int_equal(bad_bytes(&a), 0);
  mb_lease l2;
  assert_int_equal(mb_acquire(ctx, "c", NULL, &l2, NULL, 0), 0);
  assert_int_equal(mb_release(ctx, l2), 0);
  assert_int_equal(atomic_load(&a.unloads) + atomic_load(&b.unloads) + atomic_load(&c.unloads),
                   0);

  assert_int_equal(mb_release(ctx, la), 0);
  assert_int_equal(mb_ctx_free(ctx), 0);
  ctx = NULL;
  assert_int_equal(atomic_load(&a.unloads), 1);
  assert_int_equal(atomic_load(&b.unloads), 1);
  assert_int_equal(atomic_load(&c.unloads), 1);
  assert_int_equal(atomic_load(&live_buffers), 0);
  assert_null(a.dev);
  assert_null(b.host);
  assert_null(c.dev);
  assert_int_equal(mb_ctx_free(NULL), 0);
}

/* Blocking calls are for threaded contexts; a bad name is MB_ENOENT. */
static void test_bad_calls(void **state) {
  (void)state;
  mb_lease l;
  char err[256] = "";
  assert_int_equal(mb_acquire(ctx, "nobody", NULL, &l, err, sizeof(err)), MB_ENOENT);
  assert_non_null(strstr(err, "nobody"));
  assert_int_equal(mb_load(ctx, "nobody", MB_DEFAULT, NULL, 0), MB_ENOENT);
  assert_int_equal(mb_offload(ctx, "nobody", NULL, 0), MB_ENOENT);
  assert_int_equal(mb_unload(ctx, "nobody", NULL, 0), MB_ENOENT);
  assert_int_equal(mb_keep_alive(ctx, "nobody", 10), MB_ENOENT);
  assert_int_equal(mb_keep_alive(ctx, "nobody", -7), MB_EINVAL);
  assert_int_equal(mb_ctx_step(ctx), MB_EINVAL);
  l.id = 12345;
  l.device = 0;
  assert_int_equal(mb_release(ctx, l), MB_EINVAL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_load_offload_restore, setup, teardown),
      cmocka_unit_test_setup_teardown(test_keep_alive_zero, setup, teardown),
      cmocka_unit_test_setup_teardown(test_load_failure, setup, teardown),
      cmocka_unit_test_setup_teardown(test_lost_from_another_thread, setup, teardown),
      cmocka_unit_test_setup_teardown(test_no_offload, setup, teardown),
      cmocka_unit_test_setup_teardown(test_model_remove, setup, teardown),
      cmocka_unit_test_setup_teardown(test_device_info, setup, teardown),
      cmocka_unit_test_setup_teardown(test_ctx_free, setup, teardown),
      cmocka_unit_test_setup_teardown(test_bad_calls, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
