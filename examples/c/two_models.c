/*
 * two_models.c - libmodelbuf in a few steps, with real memory and real time.
 *
 * Two models ("speech", 64 MiB, and "vision", 96 MiB) are served by the
 * callbacks backend on the host device, whose budget (128 MiB) cannot hold
 * both at once. Their "weights" are real buffers filled with a pattern:
 * load allocates and fills them, offload copies them to a host buffer and
 * frees the "device" one, restore copies them back, unload frees everything.
 * Every state change is printed as the core makes it, with the time since
 * the start. The scenario:
 *
 *   1. lazy load on the first acquire; the lease holds the model while it
 *      "infers", longer than its keep-alive, and the idle timer does not run;
 *   2. once released, the keep-alive expires and the model moves to host RAM;
 *   3. the next use restores it (much faster than the cold load);
 *   4. the other model needs the room: the idle one is evicted;
 *   5. explicit unloads, a status table, and mb_ctx_free, after which every
 *      byte the models allocated is freed.
 *
 * It doubles as a smoke test (meson test 'example'): it exits 0 when all of
 * this happened as described and 1 with a message otherwise. Timings are
 * printed, never checked.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "modelbuf/modelbuf.h"

#define MiB ((size_t)1024 * 1024)

/* Every byte the models hold, on the "device" and in host RAM. */
static atomic_ullong live_device_bytes, live_host_bytes;

static mb_ctx *ctx;
static uint64_t start_ns;

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void die(const char *fmt, ...) {
  va_list ap;
  fflush(stdout);
  fprintf(stderr, "two_models: ");
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fprintf(stderr, "\n");
  exit(1);
}

static double since_start_s(uint64_t t_ns) {
  return t_ns > start_ns ? (double)(t_ns - start_ns) / 1e9 : 0.0;
}

static void sleep_ms(int64_t ms) {
  struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0)
    ;
}

/* ------------------------------------------------------------------------ */
/* The models: callbacks over real buffers                                   */

typedef struct model {
  const char *name;
  size_t bytes;
  uint64_t seed;
  uint64_t *device; /* the weights while READY ("device" memory) */
  uint64_t *host;   /* the offloaded copy while OFFLOADED */
} model;

/* The value of word i of a model's weights. */
static uint64_t pattern(uint64_t seed, size_t i) {
  uint64_t z = seed + (uint64_t)i * 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/* Number of words that differ from the pattern (0 when intact). */
static size_t verify(const model *m) {
  size_t bad = 0, n = m->bytes / sizeof(uint64_t);
  for (size_t i = 0; i < n; i++)
    bad += m->device[i] != pattern(m->seed, i);
  return bad;
}

static int cb_load(void *user, int device, char *err, size_t err_len) {
  model *m = user;
  (void)device;
  m->device = malloc(m->bytes);
  if (m->device == NULL) {
    snprintf(err, err_len, "%s: cannot allocate %zu bytes", m->name, m->bytes);
    return MB_ENOMEM;
  }
  /* A cold load reads the weight files: this sleep stands for reading them
   * at about 1 GB/s, then the words are "decoded" into place. */
  sleep_ms((int64_t)(m->bytes / MiB));
  size_t n = m->bytes / sizeof(uint64_t);
  for (size_t i = 0; i < n; i++)
    m->device[i] = pattern(m->seed, i);
  atomic_fetch_add(&live_device_bytes, m->bytes);
  return 0;
}

static int cb_offload(void *user, char *err, size_t err_len) {
  model *m = user;
  m->host = malloc(m->bytes);
  if (m->host == NULL) {
    snprintf(err, err_len, "%s: no host memory for the offloaded copy", m->name);
    return MB_ENOMEM;
  }
  memcpy(m->host, m->device, m->bytes);
  free(m->device);
  m->device = NULL;
  atomic_fetch_add(&live_host_bytes, m->bytes);
  atomic_fetch_sub(&live_device_bytes, m->bytes);
  return 0;
}

static int cb_restore(void *user, int device, char *err, size_t err_len) {
  model *m = user;
  (void)device;
  m->device = malloc(m->bytes);
  if (m->device == NULL) {
    snprintf(err, err_len, "%s: cannot allocate %zu bytes", m->name, m->bytes);
    return MB_ENOMEM;
  }
  memcpy(m->device, m->host, m->bytes);
  free(m->host);
  m->host = NULL;
  atomic_fetch_add(&live_device_bytes, m->bytes);
  atomic_fetch_sub(&live_host_bytes, m->bytes);
  return 0;
}

static int cb_unload(void *user, char *err, size_t err_len) {
  model *m = user;
  (void)err;
  (void)err_len;
  if (m->device) {
    free(m->device);
    m->device = NULL;
    atomic_fetch_sub(&live_device_bytes, m->bytes);
  }
  if (m->host) {
    free(m->host);
    m->host = NULL;
    atomic_fetch_sub(&live_host_bytes, m->bytes);
  }
  return 0;
}

static void cb_footprint(void *user, uint64_t *device_bytes, uint64_t *host_bytes) {
  model *m = user;
  *device_bytes = m->device ? m->bytes : 0;
  *host_bytes = m->host ? m->bytes : 0;
}

static model speech = {"speech", 64 * MiB, 1, NULL, NULL};
static model vision = {"vision", 96 * MiB, 2, NULL, NULL};

/* ------------------------------------------------------------------------ */
/* Events: print every one, and let the main thread wait for a state        */

static pthread_mutex_t ev_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t ev_cv = PTHREAD_COND_INITIALIZER;
static mb_state seen_state[2]; /* speech, vision: the last state printed */
static int evictions_seen[2];

static int model_slot(const char *name) {
  return strcmp(name, "speech") == 0 ? 0 : 1;
}

static void on_event(const mb_event *ev, void *arg) {
  (void)arg;
  double t = since_start_s(ev->time_ns);
  switch (ev->type) {
  case MB_EVENT_STATE:
    printf("  %+.3fs %-8s %s -> %s (%s)\n", t, ev->model, mb_state_name(ev->from),
           mb_state_name(ev->to), ev->reason);
    break;
  case MB_EVENT_EVICT:
    printf("  %+.3fs %-8s chosen for eviction (%s)\n", t, ev->model, ev->reason);
    break;
  case MB_EVENT_WARNING:
    printf("  %+.3fs %-8s warning: %s\n", t, ev->model, ev->reason);
    break;
  case MB_EVENT_LOST:
    printf("  %+.3fs %-8s lost: %s\n", t, ev->model, ev->reason);
    break;
  }
  pthread_mutex_lock(&ev_mu);
  int s = model_slot(ev->model);
  if (ev->type == MB_EVENT_STATE)
    seen_state[s] = ev->to;
  if (ev->type == MB_EVENT_EVICT)
    evictions_seen[s]++;
  pthread_cond_broadcast(&ev_cv);
  pthread_mutex_unlock(&ev_mu);
}

/* Waits until the events show name in state want; dies after timeout_ms. */
static void wait_state(const char *name, mb_state want, int64_t timeout_ms) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += (time_t)(timeout_ms / 1000);
  ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
  if (ts.tv_nsec >= 1000000000L) {
    ts.tv_sec++;
    ts.tv_nsec -= 1000000000L;
  }
  pthread_mutex_lock(&ev_mu);
  int s = model_slot(name);
  while (seen_state[s] != want) {
    if (pthread_cond_timedwait(&ev_cv, &ev_mu, &ts) != 0 && seen_state[s] != want) {
      mb_state got = seen_state[s];
      pthread_mutex_unlock(&ev_mu);
      die("%s: still %s after %lld ms, expected %s", name, mb_state_name(got),
          (long long)timeout_ms, mb_state_name(want));
    }
  }
  pthread_mutex_unlock(&ev_mu);
}

/* ------------------------------------------------------------------------ */
/* Helpers                                                                   */

static mb_status status_of(const char *name) {
  mb_status st;
  if (mb_model_status(ctx, name, &st) != 0)
    die("no status for %s", name);
  return st;
}

static void expect_state(const char *name, mb_state want) {
  mb_status st = status_of(name);
  if (st.state != want)
    die("%s is %s, expected %s", name, mb_state_name(st.state), mb_state_name(want));
}

static mb_lease acquire(const char *name, int64_t keep_alive_ms) {
  mb_acquire_opts o;
  mb_lease lease;
  char err[256] = "";
  mb_acquire_opts_init(&o);
  o.keep_alive_ms = keep_alive_ms;
  o.timeout_ms = 60000; /* a bound, not a goal: a busy machine under a sanitizer is slow */
  uint64_t t0 = mb_ctx_now(ctx);
  int rc = mb_acquire(ctx, name, &o, &lease, err, sizeof(err));
  if (rc != 0)
    die("acquire %s: %s (%s)", name, mb_err_name(rc), err);
  printf("  %+.3fs %-8s lease %" PRIu64 " granted after %.1f ms\n", since_start_s(mb_ctx_now(ctx)),
         name, lease.id, (double)(mb_ctx_now(ctx) - t0) / 1e6);
  return lease;
}

static void release(const char *name, mb_lease lease) {
  int rc = mb_release(ctx, lease);
  if (rc != 0)
    die("release %s: %s", name, mb_err_name(rc));
  printf("  %+.3fs %-8s lease %" PRIu64 " released\n", since_start_s(mb_ctx_now(ctx)), name,
         lease.id);
}

/* Uses the weights: every word must be what the load wrote. */
static void infer(model *m) {
  size_t bad = verify(m);
  if (bad != 0)
    die("%s: %zu words of the weights are wrong", m->name, bad);
}

static void step(int n, const char *what) {
  printf("\n[%d] %s\n", n, what);
}

static void add_model(model *m, int64_t keep_alive_ms) {
  mb_callbacks cb = {cb_load, cb_offload, cb_restore, cb_unload, cb_footprint, m};
  mb_model_opts o;
  char err[256] = "";
  mb_model_opts_init(&o);
  o.footprint_bytes = m->bytes;
  o.keep_alive_ms = keep_alive_ms;
  o.offload = 1;
  o.host_keep_alive_ms = 60000;
  int rc = mb_model_add_callbacks(ctx, m->name, &cb, &o, err, sizeof(err));
  if (rc != 0)
    die("add %s: %s", m->name, err);
}

/* ------------------------------------------------------------------------ */

int main(void) {
  char err[256] = "";
  const int64_t keep_alive_ms = 200;

  setvbuf(stdout, NULL, _IOLBF, 0);
  start_ns = mb_clock_monotonic(NULL);

  mb_ctx_opts co;
  mb_ctx_opts_init(&co);
  co.on_event = on_event;
  co.host_budget_bytes = 512 * MiB;
  co.loader_threads = 2;
  if (mb_ctx_new(&co, &ctx, err, sizeof(err)) != 0)
    die("mb_ctx_new: %s", err);

  /* The host device stands in for a GPU; its budget holds one model of the
   * two at a time (64 + 96 > 128 MiB). */
  mb_device_opts d;
  mb_device_opts_init(&d);
  d.kind = MB_DEVICE_HOST;
  d.budget_bytes = 128 * MiB;
  int dev = -1;
  if (mb_device_add(ctx, &d, &dev, err, sizeof(err)) != 0)
    die("mb_device_add: %s", err);
  mb_device_info di;
  if (mb_device_info_get(ctx, dev, &di) != 0)
    die("no device info");
  printf("modelbuf %s: device %s, %llu MiB of %llu MiB usable; speech %zu MiB, vision %zu MiB; "
         "keep-alive %lld ms\n",
         mb_version(), di.name, (unsigned long long)(di.usable_bytes / MiB),
         (unsigned long long)(di.capacity_bytes / MiB), speech.bytes / MiB, vision.bytes / MiB,
         (long long)keep_alive_ms);

  add_model(&speech, keep_alive_ms);
  add_model(&vision, keep_alive_ms);
  expect_state("speech", MB_STATE_UNLOADED);
  if (atomic_load(&live_device_bytes) != 0)
    die("something was loaded before it was used");

  step(1, "lazy load: the first acquire loads speech; the lease holds it while it infers");
  mb_lease l = acquire("speech", MB_DEFAULT);
  expect_state("speech", MB_STATE_READY);
  infer(&speech);
  sleep_ms(2 * keep_alive_ms); /* a long inference, longer than the keep-alive */
  mb_status st = status_of("speech");
  if (st.state != MB_STATE_READY || st.timer_active)
    die("speech left READY or its idle timer ran while a lease was out");
  printf("  %+.3fs %-8s still %s after %lld ms of inference, idle timer %s\n",
         since_start_s(mb_ctx_now(ctx)), "speech", mb_state_name(st.state),
         (long long)(2 * keep_alive_ms), st.timer_active ? "armed" : "not running");
  release("speech", l);

  step(2, "idle: after its keep-alive speech moves to host RAM");
  wait_state("speech", MB_STATE_OFFLOADED, 60000);
  st = status_of("speech");
  if (st.location != MB_LOC_CPU || st.vram_bytes != 0 || st.host_bytes != speech.bytes)
    die("speech offloaded but holds %llu device / %llu host bytes",
        (unsigned long long)st.vram_bytes, (unsigned long long)st.host_bytes);
  printf("  speech is in %s memory: %llu MiB in host RAM, none on the device\n",
         mb_location_name(st.location), (unsigned long long)(st.host_bytes / MiB));

  step(3, "restore: the next use brings speech back from host RAM");
  l = acquire("speech", MB_FOREVER); /* stays READY when released, until evicted */
  infer(&speech);
  st = status_of("speech");
  if (st.stats.restores != 1 || st.stats.loads != 1)
    die("speech: %llu loads, %llu restores; expected 1 and 1",
        (unsigned long long)st.stats.loads, (unsigned long long)st.stats.restores);
  printf("  speech weights verified after the restore: cold load %.1f ms, restore %.1f ms "
         "(%.1fx faster)\n",
         st.stats.last_load_ms, st.stats.last_restore_ms,
         st.stats.last_restore_ms > 0 ? st.stats.last_load_ms / st.stats.last_restore_ms : 0.0);
  release("speech", l);

  step(4, "eviction: vision needs 96 MiB; idle speech makes room under the 128 MiB budget");
  expect_state("speech", MB_STATE_READY);
  l = acquire("vision", MB_FOREVER);
  infer(&vision);
  expect_state("speech", MB_STATE_OFFLOADED);
  st = status_of("speech");
  if (st.stats.evictions != 1)
    die("speech: %llu evictions, expected 1", (unsigned long long)st.stats.evictions);
  if (mb_device_info_get(ctx, dev, &di) != 0 || di.used_bytes > di.usable_bytes)
    die("device over its budget");
  printf("  device: %llu of %llu MiB used, %d resident\n",
         (unsigned long long)(di.used_bytes / MiB), (unsigned long long)(di.usable_bytes / MiB),
         di.resident);
  release("vision", l);

  step(5, "explicit unload of both (vision from the device, speech from host RAM)");
  if (mb_unload(ctx, "vision", err, sizeof(err)) != 0)
    die("unload vision: %s", err);
  if (mb_unload(ctx, "speech", err, sizeof(err)) != 0)
    die("unload speech: %s", err);
  expect_state("vision", MB_STATE_UNLOADED);
  expect_state("speech", MB_STATE_UNLOADED);
  if (atomic_load(&live_device_bytes) != 0 || atomic_load(&live_host_bytes) != 0)
    die("memory left after the unloads: %llu device, %llu host bytes",
        (unsigned long long)atomic_load(&live_device_bytes),
        (unsigned long long)atomic_load(&live_host_bytes));

  printf("\n%-8s %-10s %-5s %5s %8s %8s %9s %6s %9s %9s\n", "model", "state", "loc", "loads",
         "offloads", "restores", "evictions", "unload", "load ms", "restore ms");
  for (int i = 0; i < mb_model_count(ctx); i++) {
    char name[128];
    if (mb_model_name(ctx, i, name, sizeof(name)) != 0)
      die("no model %d", i);
    st = status_of(name);
    printf("%-8s %-10s %-5s %5llu %8llu %8llu %9llu %6llu %9.1f %9.1f\n", st.name,
           mb_state_name(st.state), mb_location_name(st.location),
           (unsigned long long)st.stats.loads, (unsigned long long)st.stats.offloads,
           (unsigned long long)st.stats.restores, (unsigned long long)st.stats.evictions,
           (unsigned long long)st.stats.unloads, st.stats.last_load_ms,
           st.stats.last_restore_ms);
  }

  int rc = mb_ctx_free(ctx);
  if (rc != 0)
    die("mb_ctx_free: %s", mb_err_name(rc));
  if (atomic_load(&live_device_bytes) != 0 || atomic_load(&live_host_bytes) != 0)
    die("memory left after mb_ctx_free");
  pthread_mutex_lock(&ev_mu);
  int evicted = evictions_seen[0];
  pthread_mutex_unlock(&ev_mu);
  if (evicted != 1)
    die("saw %d eviction events of speech, expected 1", evicted);
  printf("\ndone in %.2f s: every byte the models allocated is freed\n",
         since_start_s(mb_clock_monotonic(NULL)));
  return 0;
}
