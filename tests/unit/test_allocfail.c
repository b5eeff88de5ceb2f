/*
 * test_allocfail.c - allocation failure everywhere (curl's memdebug idea):
 * a whole scenario (context, device, two models, acquire, eviction, release,
 * offload, restore, keep-alive, idle expiry, unload, a loss, free) runs again and
 * again in manual mode with the library's Nth allocation failing, N = 1, 2,
 * 3, ... until a run goes through with no failure injected.
 *
 * In every run each call either succeeds or says MB_ENOMEM (directly, or in
 * the answer of an async request). After a failure the context must still
 * be consistent: status queries work and the same call, retried (the one
 * injected failure is spent), succeeds. At the end mb_ctx_free succeeds and
 * every allocation the library made has been freed (ASan would also report
 * a leak), as has every buffer of the test's backend.
 */
#include "alloc_count.h"
#include "harness.h"

/* ------------------------------------------------------------------------ */
/* The failing allocator                                                     */

static int cur_n;

#define CHECK(cond)                                                                   \
  do {                                                                                \
    if (!(cond))                                                                      \
      fail_msg("failing allocation %d: %s (line %d)", cur_n, #cond, __LINE__);        \
  } while (0)

/* ------------------------------------------------------------------------ */
/* The test's backend: real (libc) buffers, counted                          */

typedef struct tmodel {
  size_t bytes;
  unsigned char *dev, *host;
} tmodel;

static int backend_live; /* buffers the backend holds */

static int t_load(void *user, int device, char *err, size_t err_len) {
  tmodel *m = user;
  (void)device;
  m->dev = malloc(m->bytes);
  if (m->dev == NULL) {
    snprintf(err, err_len, "no memory");
    return MB_ENOMEM;
  }
  memset(m->dev, 0x5a, m->bytes);
  backend_live++;
  return 0;
}

static int t_offload(void *user, char *err, size_t err_len) {
  tmodel *m = user;
  (void)err;
  (void)err_len;
  m->host = m->dev;
  m->dev = NULL;
  return 0;
}

static int t_restore(void *user, int device, char *err, size_t err_len) {
  tmodel *m = user;
  (void)device;
  (void)err;
  (void)err_len;
  m->dev = m->host;
  m->host = NULL;
  return 0;
}

static int t_unload(void *user, char *err, size_t err_len) {
  tmodel *m = user;
  (void)err;
  (void)err_len;
  if (m->dev || m->host)
    backend_live--;
  free(m->dev);
  free(m->host);
  m->dev = m->host = NULL;
  return 0;
}

static void t_footprint(void *user, uint64_t *device_bytes, uint64_t *host_bytes) {
  tmodel *m = user;
  *device_bytes = m->dev ? m->bytes : 0;
  *host_bytes = m->host ? m->bytes : 0;
}

/* ------------------------------------------------------------------------ */
/* Scenario helpers                                                          */

static harness H;
static tmodel ma, mb_;
static int nomem_direct, nomem_async;

/* Steps the core and runs the jobs it hands out until nothing moves. */
static void run(void) {
  for (int guard = 0; guard < 1000; guard++) {
    int n = mb_ctx_step(H.ctx);
    CHECK(n >= 0);
    int jobs = H.njobs;
    while (H.njobs > 0) {
      mb_job *j = H.jobs[0];
      h_take(&H, j);
      mb_job_run(j);
    }
    if (n == 0 && jobs == 0)
      return;
  }
  fail_msg("failing allocation %d: the core never settled", cur_n);
}

/* After a failure: status and device queries still answer. */
static void check_consistent(void) {
  mb_status st;
  mb_device_info di;
  if (H.ctx == NULL)
    return;
  int n = mb_model_count(H.ctx);
  CHECK(n >= 0 && n <= 2);
  for (int i = 0; i < n; i++) {
    char name[128];
    CHECK(mb_model_name(H.ctx, i, name, sizeof(name)) == 0);
    CHECK(mb_model_status(H.ctx, name, &st) == 0);
  }
  for (int d = 0; d < mb_device_count(H.ctx); d++) {
    CHECK(mb_device_info_get(H.ctx, d, &di) == 0);
    CHECK(di.used_bytes <= di.usable_bytes);
  }
}

/* Runs call; on MB_ENOMEM checks the context and runs it once more, which
 * must then succeed (the injected failure is spent). */
#define RETRY(call)                                                                   \
  do {                                                                                \
    int rc_ = (call);                                                                 \
    if (rc_ == MB_ENOMEM) {                                                           \
      nomem_direct++;                                                                 \
      check_consistent();                                                             \
      rc_ = (call);                                                                   \
    }                                                                                 \
    if (rc_ != 0)                                                                     \
      fail_msg("failing allocation %d: %s gave %s (line %d)", cur_n, #call,            \
               mb_err_name(rc_), __LINE__);                                           \
  } while (0)

static mb_state state_of(const char *name) {
  mb_status st;
  CHECK(mb_model_status(H.ctx, name, &st) == 0);
  return st.state;
}

/* Posts an acquire (retrying a refused post). */
static void post_acquire(const char *name, h_answer *a) {
  memset(a, 0, sizeof(*a));
  RETRY(mb_acquire_async(H.ctx, name, NULL, h_done, a, NULL));
}

/* Runs the core; an acquire answered MB_ENOMEM is posted again. */
static void settle_acquire(const char *name, h_answer *a) {
  run();
  if (a->done && a->rc == MB_ENOMEM) {
    nomem_async++;
    CHECK(a->msg[0] != '\0');
    check_consistent();
    post_acquire(name, a);
    run();
  }
}

static void acquire(const char *name, h_answer *a) {
  post_acquire(name, a);
  settle_acquire(name, a);
  CHECK(a->done);
  if (a->rc != 0)
    fail_msg("failing allocation %d: acquire %s: %s %s", cur_n, name, mb_err_name(a->rc), a->msg);
}

static void release(h_answer *a) {
  CHECK(a->done && a->rc == 0);
  CHECK(mb_release(H.ctx, a->lease) == 0);
  run();
}

/* An async request other than acquire: post (retrying), run, and if it was
 * answered MB_ENOMEM, do it again. */
typedef int (*post_fn)(const char *name, int64_t arg, h_answer *a);

static int p_offload(const char *name, int64_t arg, h_answer *a) {
  (void)arg;
  return mb_offload_async(H.ctx, name, h_done, a);
}
static int p_unload(const char *name, int64_t arg, h_answer *a) {
  (void)arg;
  return mb_unload_async(H.ctx, name, h_done, a);
}
static int p_keep_alive(const char *name, int64_t arg, h_answer *a) {
  return mb_keep_alive_async(H.ctx, name, arg, h_done, a);
}
static int p_load(const char *name, int64_t arg, h_answer *a) {
  return mb_load_async(H.ctx, name, arg, h_done, a);
}

static void request(post_fn fn, const char *name, int64_t arg) {
  h_answer a;
  for (int attempt = 0; attempt < 2; attempt++) {
    memset(&a, 0, sizeof(a));
    RETRY(fn(name, arg, &a));
    run();
    CHECK(a.done);
    if (a.rc != MB_ENOMEM)
      break;
    nomem_async++;
    check_consistent();
  }
  if (a.rc != 0)
    fail_msg("failing allocation %d: request on %s: %s %s", cur_n, name, mb_err_name(a.rc),
             a.msg);
}

static void add_model(const char *name, tmodel *m) {
  mb_callbacks cb = {t_load, t_offload, t_restore, t_unload, t_footprint, m};
  mb_model_opts o;
  char err[256] = "";
  mb_model_opts_init(&o);
  o.footprint_bytes = m->bytes;
  o.keep_alive_ms = 5000;
  int rc = mb_model_add_callbacks(H.ctx, name, &cb, &o, err, sizeof(err));
  if (rc == MB_ENOMEM) {
    nomem_direct++;
    CHECK(strstr(err, "out of memory") != NULL);
    mb_status st;
    CHECK(mb_model_status(H.ctx, name, &st) == MB_ENOENT); /* not half added */
    check_consistent();
    rc = mb_model_add_callbacks(H.ctx, name, &cb, &o, err, sizeof(err));
  }
  if (rc != 0)
    fail_msg("failing allocation %d: add %s: %s", cur_n, name, err);
}

/* ------------------------------------------------------------------------ */
/* The scenario                                                              */

static void scenario(void) {
  mb_ctx_opts o;
  char err[256] = "";
  h_init_opts(&H, &o);
  ma.bytes = 600;
  mb_.bytes = 600;

  int rc = mb_ctx_new(&o, &H.ctx, err, sizeof(err));
  if (rc == MB_ENOMEM) {
    nomem_direct++;
    CHECK(H.ctx == NULL);
    CHECK(err[0] != '\0');
    rc = mb_ctx_new(&o, &H.ctx, err, sizeof(err));
  }
  if (rc != 0)
    fail_msg("failing allocation %d: mb_ctx_new: %s", cur_n, err);

  mb_device_opts d;
  mb_device_opts_init(&d);
  d.capacity_bytes = 1000;
  RETRY(mb_device_add(H.ctx, &d, NULL, err, sizeof(err)));
  CHECK(mb_device_count(H.ctx) == 1);

  add_model("a", &ma);
  add_model("b", &mb_);
  CHECK(mb_model_count(H.ctx) == 2);

  /* a loads on first use. */
  h_answer la, lb;
  acquire("a", &la);
  CHECK(state_of("a") == MB_STATE_READY);

  /* b does not fit beside a: it waits for a's lease, then a is evicted. */
  post_acquire("b", &lb);
  settle_acquire("b", &lb);
  CHECK(!lb.done);
  CHECK(state_of("b") == MB_STATE_UNLOADED);
  release(&la);
  settle_acquire("b", &lb);
  CHECK(lb.done && lb.rc == 0);
  CHECK(state_of("a") == MB_STATE_OFFLOADED);
  CHECK(state_of("b") == MB_STATE_READY);

  /* Explicit offload of b once released. */
  release(&lb);
  request(p_offload, "b", 0);
  CHECK(state_of("b") == MB_STATE_OFFLOADED);

  /* Keep-alive, restore on use, idle expiry offloads again. */
  request(p_keep_alive, "a", 1000);
  acquire("a", &la);
  CHECK(state_of("a") == MB_STATE_READY);
  release(&la);
  H.now += 1000 * MS;
  run();
  CHECK(state_of("a") == MB_STATE_OFFLOADED);

  /* Explicit load and unload. */
  request(p_load, "b", MB_FOREVER);
  CHECK(state_of("b") == MB_STATE_READY);
  request(p_unload, "a", 0);
  CHECK(state_of("a") == MB_STATE_UNLOADED);

  /* b is lost under a lease: the lease ends, the backend's unload cleans
   * up, and the next acquire loads it again. */
  acquire("b", &lb);
  RETRY(mb_model_lost(H.ctx, "b", 0, 0, "exited: status 3"));
  run();
  CHECK(state_of("b") == MB_STATE_UNLOADED);
  CHECK(mb_release(H.ctx, lb.lease) == MB_ELOST);
  run();
  acquire("b", &lb);
  release(&lb);

  /* Free refuses with a lease out, then unloads what is left. */
  acquire("b", &lb);
  CHECK(mb_ctx_free(H.ctx) == MB_EBUSY);
  check_consistent();
  release(&lb);
  CHECK(state_of("b") == MB_STATE_READY);
  CHECK(H.njobs == 0);
  CHECK(mb_ctx_free(H.ctx) == 0);
  H.ctx = NULL;
}

static void test_fail_every_allocation(void **state) {
  (void)state;
  assert_int_equal(mb_set_allocator(&ac_allocator), 0);
  long clean_allocs = 0;
  int runs = 0;
  for (cur_n = 1; cur_n < 100000; cur_n++) {
    ac_fail(cur_n);
    atomic_store(&ac_live, 0);
    backend_live = 0;
    scenario();
    runs++;
    if (atomic_load(&ac_live) != 0)
      fail_msg("failing allocation %d: %ld allocations not freed", cur_n, atomic_load(&ac_live));
    CHECK(backend_live == 0);
    CHECK(ma.dev == NULL && ma.host == NULL && mb_.dev == NULL && mb_.host == NULL);
    if (!atomic_load(&ac_injected)) {
      clean_allocs = atomic_load(&ac_calls);
      break;
    }
  }
  assert_true(!atomic_load(&ac_injected));
  assert_true(clean_allocs > 10);
  assert_int_equal(runs, clean_allocs + 1);
  /* Every failure was seen by someone. */
  assert_true(nomem_direct + nomem_async > 0);
  print_message("%d runs, %ld allocations in a clean run; MB_ENOMEM returned %d times, "
                "answered %d times\n",
                runs, clean_allocs, nomem_direct, nomem_async);
  static const mb_allocator libc = {malloc, realloc, calloc, free};
  assert_int_equal(mb_set_allocator(&libc), 0);
}

/* mb_set_allocator checks its argument. */
static void test_set_allocator_bad(void **state) {
  (void)state;
  assert_int_equal(mb_set_allocator(NULL), MB_EINVAL);
  mb_allocator a = {malloc, realloc, NULL, free};
  assert_int_equal(mb_set_allocator(&a), MB_EINVAL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_set_allocator_bad),
      cmocka_unit_test(test_fail_every_allocation),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
