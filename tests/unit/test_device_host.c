/*
 * test_device_host.c - the host device: its memory figures, a measured
 * capacity, and the errors of mb_device_add (reserve not below capacity, a
 * CUDA device this build cannot measure); the device interface on it
 * (asynchronous copies and their events, pinned buffers, stable address
 * ranges that really release their pages); the fallback from a CUDA device
 * to the host device on this machine without a driver (one stderr line,
 * tensors backend and shared handles); and the tensors backend's
 * stable_addresses option through the real core: the same device pointers
 * after offload/restore and unload/load, the memory released while
 * offloaded, every byte equal to the file after restore.
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <setjmp.h>
#include <cmocka.h>

#include "files.h"

#include "modelbuf/modelbuf.h"
#include "modelbuf/tensors.h"
#include "device.h"
#include "mkmodel.h"

#define MiB (1024ull * 1024ull)

static void nop_submit(void *arg, mb_job *job) {
  (void)arg;
  (void)job;
}

static mb_ctx *new_ctx(void) {
  mb_ctx_opts o;
  mb_ctx *ctx = NULL;
  char err[256] = "";
  mb_ctx_opts_init(&o);
  o.manual = 1;
  o.executor.submit = nop_submit;
  if (mb_ctx_new(&o, &ctx, err, sizeof(err)) != 0)
    fail_msg("mb_ctx_new: %s", err);
  return ctx;
}

/* Total and free host memory: non-zero, free within total. */
static void test_mem_info(void **state) {
  (void)state;
  uint64_t total = 0, avail = 0;
  assert_int_equal(mb__host_mem_info(&total, &avail), 0);
  assert_true(total > 0);
  assert_true(avail > 0);
  assert_true(avail <= total);
  /* Either out-parameter may be omitted. */
  uint64_t t2 = 0;
  assert_int_equal(mb__host_mem_info(&t2, NULL), 0);
  assert_int_equal(t2, total);
  assert_int_equal(mb__host_mem_info(NULL, NULL), 0);
  /* Through the device interface too. */
  char err[128] = "";
  uint64_t t3 = 0, f3 = 0;
  assert_int_equal(mb_device_mem_info(MB_DEVICE_HOST, 0, &t3, &f3, err, sizeof(err)), 0);
  assert_int_equal(t3, total);
  assert_true(f3 <= t3);
}

/* capacity 0: the device takes the machine's RAM. */
static void test_measured_capacity(void **state) {
  (void)state;
  mb_ctx *ctx = new_ctx();
  mb_device_opts d;
  mb_device_info di;
  char err[256] = "";
  int idx = -1;
  uint64_t total = 0;
  assert_int_equal(mb__host_mem_info(&total, NULL), 0);
  mb_device_opts_init(&d);
  assert_int_equal(d.kind, MB_DEVICE_HOST);
  assert_int_equal(mb_device_add(ctx, &d, &idx, err, sizeof(err)), 0);
  assert_int_equal(idx, 0);
  assert_int_equal(mb_device_info_get(ctx, 0, &di), 0);
  assert_string_equal(di.name, "host");
  assert_int_equal(di.kind, MB_DEVICE_HOST);
  assert_int_equal(di.capacity_bytes, total);
  assert_int_equal(di.usable_bytes, total);
  assert_int_equal(di.used_bytes, 0);
  assert_int_equal(di.resident, 0);
  /* NULL options: the defaults, i.e. the host device, measured. */
  assert_int_equal(mb_device_add(ctx, NULL, &idx, err, sizeof(err)), 0);
  assert_int_equal(idx, 1);
  assert_int_equal(mb_device_info_get(ctx, 1, &di), 0);
  assert_int_equal(di.capacity_bytes, total);
  /* A given capacity is taken as is. */
  d.capacity_bytes = 12345;
  assert_int_equal(mb_device_add(ctx, &d, &idx, err, sizeof(err)), 0);
  assert_int_equal(mb_device_info_get(ctx, idx, &di), 0);
  assert_int_equal(di.capacity_bytes, 12345);
  assert_int_equal(mb_device_count(ctx), 3);
  assert_int_equal(mb_ctx_free(ctx), 0);
}

/* reserve >= capacity: MB_EINVAL with a message, and no device added. */
static void test_reserve_too_big(void **state) {
  (void)state;
  mb_ctx *ctx = new_ctx();
  mb_device_opts d;
  char err[256] = "";
  int idx = -1;
  mb_device_opts_init(&d);
  d.capacity_bytes = 1000;
  d.reserve_bytes = 1000;
  assert_int_equal(mb_device_add(ctx, &d, &idx, err, sizeof(err)), MB_EINVAL);
  assert_non_null(strstr(err, "reserve"));
  assert_non_null(strstr(err, "1000"));
  assert_int_equal(idx, -1);
  d.reserve_bytes = 5000;
  err[0] = '\0';
  assert_int_equal(mb_device_add(ctx, &d, &idx, err, sizeof(err)), MB_EINVAL);
  assert_non_null(strstr(err, "reserve"));
  /* Measured capacity: a reserve of all of it is refused too. */
  uint64_t total = 0;
  assert_int_equal(mb__host_mem_info(&total, NULL), 0);
  mb_device_opts_init(&d);
  d.reserve_bytes = total;
  err[0] = '\0';
  assert_int_equal(mb_device_add(ctx, &d, &idx, err, sizeof(err)), MB_EINVAL);
  assert_true(err[0] != '\0');
  /* Negative limits. */
  mb_device_opts_init(&d);
  d.capacity_bytes = 1000;
  d.max_loaded = -1;
  err[0] = '\0';
  assert_int_equal(mb_device_add(ctx, &d, &idx, err, sizeof(err)), MB_EINVAL);
  assert_true(err[0] != '\0');
  assert_int_equal(mb_device_count(ctx), 0);
  mb_device_info di;
  assert_int_equal(mb_device_info_get(ctx, 0, &di), MB_ENODEV);
  /* Just below capacity is fine. */
  mb_device_opts_init(&d);
  d.capacity_bytes = 1000;
  d.reserve_bytes = 999;
  assert_int_equal(mb_device_add(ctx, &d, &idx, err, sizeof(err)), 0);
  assert_int_equal(mb_device_info_get(ctx, idx, &di), 0);
  assert_int_equal(di.usable_bytes, 1);
  assert_int_equal(mb_ctx_free(ctx), 0);
}

/* A CUDA device this build cannot measure: MB_ENODEV naming it. */
static void test_cuda_without_capacity(void **state) {
  (void)state;
  mb_ctx *ctx = new_ctx();
  mb_device_opts d;
  char err[256] = "";
  int idx = -1;
  mb_device_opts_init(&d);
  d.kind = MB_DEVICE_CUDA;
  d.ordinal = 99; /* no machine has this one */
  assert_int_equal(mb_device_add(ctx, &d, &idx, err, sizeof(err)), MB_ENODEV);
  assert_non_null(strstr(err, "cuda:99"));
  assert_int_equal(idx, -1);
  assert_int_equal(mb_device_count(ctx), 0);
  /* Unknown kinds are bad input. */
  d.kind = (mb_device_kind)7;
  err[0] = '\0';
  assert_int_equal(mb_device_add(ctx, &d, &idx, err, sizeof(err)), MB_EINVAL);
  assert_true(err[0] != '\0');
  /* No error buffer: still the code. */
  d.kind = MB_DEVICE_CUDA;
  assert_int_equal(mb_device_add(ctx, &d, &idx, NULL, 0), MB_ENODEV);
  assert_int_equal(mb_ctx_free(ctx), 0);
}

/* ---- the CUDA fallback ---------------------------------------------------- */

/* Runs fn with stderr going to a temporary file; returns what was written
 * (caller frees). */
static char *capture_stderr(void (*fn)(void *), void *arg) {
  char path[] = "/tmp/mb_test_stderr_XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  unlink(path);
  fflush(stderr);
  int saved = dup(2);
  assert_true(saved >= 0);
  assert_true(dup2(fd, 2) >= 0);
  fn(arg);
  fflush(stderr);
  assert_true(dup2(saved, 2) >= 0);
  close(saved);
  off_t n = lseek(fd, 0, SEEK_END);
  assert_true(n >= 0);
  char *buf = calloc(1, (size_t)n + 1);
  assert_non_null(buf);
  assert_int_equal(pread(fd, buf, (size_t)n, 0), n);
  close(fd);
  return buf;
}

typedef struct fb_run {
  mb__dev *d[3];
  int rc[3];
  char err[3][256];
} fb_run;

static void open_three(void *arg) {
  fb_run *r = arg;
  r->rc[0] = mb__dev_open_fallback(MB_DEVICE_CUDA, 0, &r->d[0], r->err[0], sizeof(r->err[0]));
  r->rc[1] = mb__dev_open_fallback(MB_DEVICE_CUDA, 1, &r->d[1], r->err[1], sizeof(r->err[1]));
  r->rc[2] = mb__dev_open_fallback(MB_DEVICE_CUDA, 0, &r->d[2], r->err[2], sizeof(r->err[2]));
}

/* No driver here: cuda:N opens the host device and says why in its error
 * buffer, printing nothing (the library never writes to stderr); the
 * strict open still refuses. */
static void test_cuda_fallback(void **state) {
  (void)state;
  char err[256] = "";
  mb__dev *d = NULL;
  int rc = mb__dev_open(MB_DEVICE_CUDA, 0, &d, err, sizeof(err));
  if (rc == 0) { /* a machine with a GPU: nothing to fall back from */
    mb__dev_close(d);
    skip();
  }
  assert_int_equal(rc, MB_ENODEV);
  assert_non_null(strstr(err, "cuda:0"));
  assert_null(d);
  assert_int_equal(mb__dev_fallback_count(), 0);

  fb_run r;
  memset(&r, 0, sizeof(r));
  char *out = capture_stderr(open_three, &r);
  for (int i = 0; i < 3; i++) {
    assert_int_equal(r.rc[i], 0);
    assert_non_null(r.d[i]);
    assert_int_equal(mb__dev_kind(r.d[i]), MB_DEVICE_HOST);
    mb__dev_close(r.d[i]);
  }
  assert_int_equal(mb__dev_fallback_count(), 3);
  assert_string_equal(out, "");
  free(out);
  /* each caller told: which device, why, and what happens instead */
  assert_non_null(strstr(r.err[0], "cuda:0"));
  assert_non_null(strstr(r.err[1], "cuda:1"));
  for (int i = 0; i < 3; i++)
    assert_non_null(strstr(r.err[i], "using the host device"));

  /* The host device itself never falls back (nothing to fall back from). */
  assert_int_equal(mb__dev_open_fallback(MB_DEVICE_HOST, 0, &d, err, sizeof(err)), 0);
  assert_int_equal(mb__dev_kind(d), MB_DEVICE_HOST);
  mb__dev_close(d);
  assert_int_equal(mb__dev_fallback_count(), 3);

  /* Shared handles: one per device, the same on every call. */
  mb__dev *s1 = NULL, *s2 = NULL, *h = NULL;
  assert_int_equal(mb__dev_shared(MB_DEVICE_CUDA, 2, &s1, err, sizeof(err)), 0);
  assert_int_equal(mb__dev_shared(MB_DEVICE_CUDA, 2, &s2, err, sizeof(err)), 0);
  assert_ptr_equal(s1, s2);
  assert_int_equal(mb__dev_kind(s1), MB_DEVICE_HOST);
  assert_int_equal(mb__dev_shared(MB_DEVICE_HOST, 0, &h, err, sizeof(err)), 0);
  assert_true(h != s1);
  assert_int_equal(mb__dev_shared(MB_DEVICE_CUDA, 1000, &s2, err, sizeof(err)), MB_ENODEV);
  uint64_t dp = 0;
  unsigned char in[100], back[100];
  for (int i = 0; i < 100; i++)
    in[i] = (unsigned char)(i * 7);
  assert_int_equal(mb__dev_alloc(s1, sizeof(in), &dp, err, sizeof(err)), 0);
  assert_int_equal(mb__dev_h2d(s1, dp, in, sizeof(in), 0, err, sizeof(err)), 0);
  assert_int_equal(mb__dev_d2h(s1, back, dp, sizeof(back), 3, err, sizeof(err)), 0);
  assert_memory_equal(in, back, sizeof(in));
  mb__dev_free(s1, dp);
}

/* ---- asynchronous copies, pinned buffers, address ranges ----------------- */

static void test_async_copies(void **state) {
  (void)state;
  char err[256] = "";
  mb__dev *d = NULL;
  assert_int_equal(mb__dev_open(MB_DEVICE_HOST, 0, &d, err, sizeof(err)), 0);
  enum { N = 1 << 20, CH = 64 * 1024 };
  void *src = NULL, *dst = NULL;
  uint64_t dp = 0;
  assert_int_equal(mb__dev_host_alloc(d, N, &src, err, sizeof(err)), 0);
  assert_int_equal(mb__dev_host_alloc(d, N, &dst, err, sizeof(err)), 0);
  assert_int_equal(mb__dev_alloc(d, N, &dp, err, sizeof(err)), 0);
  for (size_t i = 0; i < N; i++)
    ((unsigned char *)src)[i] = (unsigned char)(i * 31 + (i >> 12));
  /* several chunks in flight on several streams, then all waited for */
  mb__dev_event *ev[N / CH];
  for (int c = 0; c < N / CH; c++)
    assert_int_equal(mb__dev_h2d_async(d, dp + (uint64_t)c * CH, (char *)src + c * CH, CH, c % 4,
                                       &ev[c], err, sizeof(err)),
                     0);
  for (int c = 0; c < N / CH; c++)
    assert_int_equal(mb__dev_event_wait(d, ev[c], err, sizeof(err)), 0);
  assert_memory_equal((void *)(uintptr_t)dp, src, N);
  for (int c = N / CH - 1; c >= 0; c--)
    assert_int_equal(mb__dev_d2h_async(d, (char *)dst + c * CH, dp + (uint64_t)c * CH, CH, c,
                                       &ev[c], err, sizeof(err)),
                     0);
  for (int c = 0; c < N / CH; c++)
    assert_int_equal(mb__dev_event_wait(d, ev[c], err, sizeof(err)), 0);
  assert_memory_equal(dst, src, N);
  assert_int_equal(mb__dev_event_wait(d, NULL, err, sizeof(err)), 0);
  mb__dev_free(d, dp);
  mb__dev_host_free(d, src);
  mb__dev_host_free(d, dst);
  mb__dev_close(d);
}

static void test_pinned(void **state) {
  (void)state;
  char err[256] = "";
  mb__dev *d = NULL;
  assert_int_equal(mb__dev_open(MB_DEVICE_HOST, 0, &d, err, sizeof(err)), 0);
  /* one byte, one slice, and a slice and a bit (two slices) with more
   * threads than slices */
  const size_t sizes[3] = {1, MB_DEV_PIN_SLICE, MB_DEV_PIN_SLICE + 12345};
  const int threads[3] = {0, 4, 16};
  for (int i = 0; i < 3; i++) {
    void *p = NULL;
    assert_int_equal(mb__dev_pinned_alloc(d, sizes[i], threads[i], &p, err, sizeof(err)), 0);
    assert_non_null(p);
    assert_int_equal((uintptr_t)p % MB_DEV_ALIGN, 0);
    memset(p, 0xa5, sizes[i]);
    assert_int_equal(((unsigned char *)p)[sizes[i] - 1], 0xa5);
    mb__dev_pinned_free(d, p, sizes[i]);
  }
  mb__dev_pinned_free(d, NULL, 10);
  void *p = (void *)1;
  assert_int_equal(mb__dev_pinned_alloc(d, 0, 1, &p, err, sizeof(err)), MB_ENOMEM);
  assert_null(p);
  mb__dev_close(d);
}

/* Pages of [p, p+n) resident now (mincore; works on PROT_NONE too). */
static size_t resident_pages(uint64_t p, size_t n) {
  size_t page = (size_t)sysconf(_SC_PAGESIZE);
  size_t np = (n + page - 1) / page, cnt = 0;
  unsigned char *vec = malloc(np);
  assert_non_null(vec);
  assert_int_equal(mincore((void *)(uintptr_t)p, n, vec), 0);
  for (size_t i = 0; i < np; i++)
    cnt += vec[i] & 1;
  free(vec);
  return cnt;
}

static void test_vrange(void **state) {
  (void)state;
  char err[256] = "";
  mb__dev *d = NULL;
  assert_int_equal(mb__dev_open(MB_DEVICE_HOST, 0, &d, err, sizeof(err)), 0);
  mb__dev_vrange *r = NULL;
  const size_t want = 10 * MiB + 1;
  assert_int_equal(mb__dev_vrange_new(d, want, &r, err, sizeof(err)), 0);
  uint64_t a = mb__dev_vrange_addr(r);
  size_t n = mb__dev_vrange_bytes(r);
  assert_true(a != 0);
  assert_int_equal(a % MB_DEV_ALIGN, 0);
  assert_true(n >= want && n < want + MB_DEV_ALIGN);
  assert_false(mb__dev_vrange_mapped(r));
  assert_int_equal(resident_pages(a, n), 0);
  for (int round = 0; round < 3; round++) {
    assert_int_equal(mb__dev_vrange_map(d, r, err, sizeof(err)), 0);
    assert_int_equal(mb__dev_vrange_map(d, r, err, sizeof(err)), 0); /* no-op */
    assert_true(mb__dev_vrange_mapped(r));
    assert_int_equal(mb__dev_vrange_addr(r), a);
    unsigned char *p = (unsigned char *)(uintptr_t)a;
    /* fresh memory after every map: the old contents are gone */
    assert_int_equal(p[0], 0);
    assert_int_equal(p[n - 1], 0);
    unsigned char pat[4096];
    memset(pat, 0x5a + round, sizeof(pat));
    assert_int_equal(mb__dev_h2d(d, a + n - sizeof(pat), pat, sizeof(pat), 0, err, sizeof(err)),
                     0);
    memset(p, 0x11, n - sizeof(pat));
    assert_true(resident_pages(a, n) >= n / 4096 - 1);
    unsigned char back[4096];
    assert_int_equal(mb__dev_d2h(d, back, a + n - sizeof(pat), sizeof(back), 1, err,
                                 sizeof(err)),
                     0);
    assert_memory_equal(back, pat, sizeof(pat));
    mb__dev_vrange_unmap(d, r);
    mb__dev_vrange_unmap(d, r); /* no-op */
    assert_false(mb__dev_vrange_mapped(r));
    assert_int_equal(resident_pages(a, n), 0); /* the pages went back */
  }
  assert_int_equal(mb__dev_vrange_map(d, r, err, sizeof(err)), 0);
  mb__dev_vrange_free(d, r); /* unmaps too */
  mb__dev_vrange_free(d, NULL);
  /* the range is gone from the address space */
  unsigned char v;
  assert_int_equal(mincore((void *)(uintptr_t)a, 4096, &v), -1);
  mb__dev_close(d);
}

/* ---- the tensors backend: stable addresses, fallback ---------------------- */

static char g_dir[256];
static char g_path[512];

static int make_files(void **state) {
  (void)state;
  snprintf(g_dir, sizeof(g_dir), "/tmp/mb_devhost_XXXXXX");
  if (mkdtemp(g_dir) == NULL)
    return -1;
  snprintf(g_path, sizeof(g_path), "%s/m.safetensors", g_dir);
  cli_mkmodel_opts o = {.path = g_path, .format = MB_TENSOR_FORMAT_SAFETENSORS,
                        .size_bytes = 24 * MiB, .seed = 11};
  char err[256];
  return cli_mkmodel_write(&o, NULL, err, sizeof(err)) == 0 ? 0 : -1;
}

static int remove_files(void **state) {
  (void)state;
  unlink(g_path);
  rmdir(g_dir);
  return 0;
}

/* Every tensor found and equal to the file; its pointer into ptrs[k] (or,
 * with check_ptrs, compared with ptrs[k]). Returns the count. */
static size_t check_tensors(mb_tensors_model *m, uint64_t *ptrs, size_t max, int check_ptrs) {
  size_t len;
  unsigned char *want = slurp(g_path, &len);
  mb_tensor_file *f = NULL;
  char err[256];
  assert_int_equal(mb_tensor_file_open(g_path, &f, err, sizeof(err)), 0);
  size_t n = mb_tensor_file_count(f);
  assert_true(n <= max);
  for (size_t k = 0; k < n; k++) {
    mb_tensor_info ti;
    mb_tensor_ref r;
    assert_int_equal(mb_tensor_file_info(f, k, &ti), 0);
    assert_int_equal(mb_tensors_find(m, ti.name, &r), 0);
    assert_int_equal(r.size_bytes, ti.size_bytes);
    assert_memory_equal((const void *)(uintptr_t)r.device_ptr, want + ti.offset, ti.size_bytes);
    if (check_ptrs)
      assert_int_equal(r.device_ptr, ptrs[k]);
    else
      ptrs[k] = r.device_ptr;
  }
  mb_tensor_file_close(f);
  free(want);
  return n;
}

static uint64_t rss_bytes(void) {
  FILE *f = fopen("/proc/self/statm", "re");
  assert_non_null(f);
  unsigned long long size = 0, res = 0;
  assert_int_equal(fscanf(f, "%llu %llu", &size, &res), 2);
  fclose(f);
  return res * (uint64_t)sysconf(_SC_PAGESIZE);
}

/* Warning events that say a model runs on the host device for want of a
 * GPU (the tensors backend's note); the core thread writes it. */
static int g_fallback_warnings;

static void count_fallback_warning(const mb_event *ev, void *arg) {
  (void)arg;
  if (ev->type == MB_EVENT_WARNING && strstr(ev->reason, "using the host device") != NULL)
    __atomic_add_fetch(&g_fallback_warnings, 1, __ATOMIC_RELAXED);
}

static mb_ctx *tensors_ctx(mb_device_kind kind) {
  mb_ctx_opts o;
  char err[256] = "";
  mb_ctx_opts_init(&o);
  o.on_event = count_fallback_warning;
  o.loader_threads = 2;
  o.host_budget_bytes = 256 * MiB;
  mb_ctx *ctx = NULL;
  if (mb_ctx_new(&o, &ctx, err, sizeof(err)) != 0)
    fail_msg("mb_ctx_new: %s", err);
  mb_device_opts d;
  mb_device_opts_init(&d);
  d.kind = kind;
  d.ordinal = 0;
  d.capacity_bytes = 128 * MiB; /* given: a CUDA device is not measured here */
  if (mb_device_add(ctx, &d, NULL, err, sizeof(err)) != 0)
    fail_msg("mb_device_add: %s", err);
  return ctx;
}

static mb_tensors_model *tensors_model_io(mb_ctx *ctx, int stable, int no_fallback, int io) {
  const char *paths[1] = {g_path};
  mb_tensors_opts to;
  mb_tensors_opts_init(&to);
  to.chunk_bytes = 1 * MiB;
  to.threads = 3;
  to.stable_addresses = stable;
  to.no_fallback = no_fallback;
  to.io = io;
  mb_tensors_model *m = NULL;
  char err[256] = "";
  if (mb_tensors_model_new(paths, 1, &to, &m, err, sizeof(err)) != 0)
    fail_msg("mb_tensors_model_new: %s", err);
  mb_model_opts mo;
  mb_model_opts_init(&mo);
  mo.footprint_bytes = mb_tensors_model_bytes(m);
  mo.keep_alive_ms = 60000;
  if (mb_model_add(ctx, "m", mb_tensors_backend(), m, &mo, err, sizeof(err)) != 0)
    fail_msg("mb_model_add: %s", err);
  return m;
}

static mb_tensors_model *tensors_model(mb_ctx *ctx, int stable, int no_fallback) {
  return tensors_model_io(ctx, stable, no_fallback, 0);
}

static void acquire_check(mb_ctx *ctx, mb_tensors_model *m, uint64_t *ptrs, size_t max,
                          int check_ptrs) {
  mb_lease l;
  char err[256] = "";
  int rc = mb_acquire(ctx, "m", NULL, &l, err, sizeof(err));
  if (rc != 0)
    fail_msg("acquire: %s: %s", mb_err_name(rc), err);
  check_tensors(m, ptrs, max, check_ptrs);
  assert_int_equal(mb_release(ctx, l), 0);
}

#define MAX_TENSORS 4096

static void test_stable_addresses(void **state) {
  (void)state;
  mb_ctx *ctx = tensors_ctx(MB_DEVICE_HOST);
  mb_tensors_model *m = tensors_model(ctx, 1, 0);
  uint64_t bytes = mb_tensors_model_bytes(m);
  uint64_t *ptrs = calloc(MAX_TENSORS, sizeof(*ptrs));
  assert_non_null(ptrs);
  char err[256] = "";
  acquire_check(ctx, m, ptrs, MAX_TENSORS, 0);
  mb_tensor_ref r0;
  assert_int_equal(mb_tensors_find(m, "model.norm.weight", &r0), 0);
  for (int cycle = 0; cycle < 3; cycle++) {
    uint64_t rss_ready = rss_bytes();
    assert_int_equal(mb_offload(ctx, "m", err, sizeof(err)), 0);
    mb_status st;
    assert_int_equal(mb_model_status(ctx, "m", &st), 0);
    assert_int_equal(st.state, MB_STATE_OFFLOADED);
    assert_int_equal(st.vram_bytes, 0);
    assert_int_equal(st.host_bytes, bytes);
    mb_tensor_ref r;
    assert_int_equal(mb_tensors_find(m, "model.norm.weight", &r), MB_ESTATE);
    /* The arena's pages are gone: none resident, and from the second
     * offload on (the host copy exists already) the process shrank by
     * about the arena. */
    assert_int_equal(resident_pages(r0.device_ptr & ~(uint64_t)4095, 4096), 0);
    assert_int_equal(resident_pages(ptrs[0] & ~(uint64_t)4095, (size_t)bytes / 2), 0);
    uint64_t rss_off = rss_bytes();
    if (cycle > 0) {
      assert_true(rss_off < rss_ready);
      assert_true(rss_ready - rss_off >= bytes * 3 / 4);
    }
    /* restore: the same pointers, the same bytes */
    acquire_check(ctx, m, ptrs, MAX_TENSORS, 1);
  }
  /* unload and load again: still the same pointers (same device) */
  assert_int_equal(mb_unload(ctx, "m", err, sizeof(err)), 0);
  mb_status st;
  assert_int_equal(mb_model_status(ctx, "m", &st), 0);
  assert_int_equal(st.vram_bytes, 0);
  assert_int_equal(st.host_bytes, 0);
  assert_int_equal(resident_pages(ptrs[0] & ~(uint64_t)4095, (size_t)bytes / 2), 0);
  acquire_check(ctx, m, ptrs, MAX_TENSORS, 1);
  assert_int_equal(mb_model_remove(ctx, "m"), 0);
  assert_int_equal(mb_ctx_free(ctx), 0);

  /* Direct reads (io 2) land in the stable mapping itself, while the
   * populator faults its pages in: the same bytes, load after load. */
  ctx = tensors_ctx(MB_DEVICE_HOST);
  m = tensors_model_io(ctx, 1, 0, 2);
  acquire_check(ctx, m, ptrs, MAX_TENSORS, 0);
  assert_int_equal(mb_unload(ctx, "m", err, sizeof(err)), 0);
  acquire_check(ctx, m, ptrs, MAX_TENSORS, 1);
  assert_int_equal(mb_model_remove(ctx, "m"), 0);
  assert_int_equal(mb_ctx_free(ctx), 0);
  free(ptrs);
}

/* Without the option the arena is a fresh allocation each time: the tensors
 * still match the file after every restore. */
static void test_plain_cycles(void **state) {
  (void)state;
  mb_ctx *ctx = tensors_ctx(MB_DEVICE_HOST);
  mb_tensors_model *m = tensors_model(ctx, 0, 0);
  uint64_t *ptrs = calloc(MAX_TENSORS, sizeof(*ptrs));
  assert_non_null(ptrs);
  char err[256] = "";
  for (int cycle = 0; cycle < 2; cycle++) {
    acquire_check(ctx, m, ptrs, MAX_TENSORS, 0);
    assert_int_equal(mb_offload(ctx, "m", err, sizeof(err)), 0);
    acquire_check(ctx, m, ptrs, MAX_TENSORS, 0);
    assert_int_equal(mb_unload(ctx, "m", err, sizeof(err)), 0);
  }
  assert_int_equal(mb_model_remove(ctx, "m"), 0);
  assert_int_equal(mb_ctx_free(ctx), 0);
  free(ptrs);
}

/* A model placed on cuda:0 here (no driver) loads on the host device, with
 * and without stable addresses; with no_fallback it fails with MB_ENODEV. */
static void test_tensors_fallback(void **state) {
  (void)state;
  char err[256] = "";
  mb__dev *probe = NULL;
  if (mb__dev_open(MB_DEVICE_CUDA, 0, &probe, err, sizeof(err)) == 0) {
    mb__dev_close(probe);
    skip(); /* a GPU is here: tests/gpu covers it */
  }
  for (int stable = 0; stable < 2; stable++) {
    mb_ctx *ctx = tensors_ctx(MB_DEVICE_CUDA);
    mb_tensors_model *m = tensors_model(ctx, stable, 0);
    unsigned before = mb__dev_fallback_count();
    int warned = __atomic_load_n(&g_fallback_warnings, __ATOMIC_RELAXED);
    uint64_t *ptrs = calloc(MAX_TENSORS, sizeof(*ptrs));
    assert_non_null(ptrs);
    acquire_check(ctx, m, ptrs, MAX_TENSORS, 0);
    assert_true(mb__dev_fallback_count() > before);
    /* said as a warning event of the model, not on stderr */
    assert_true(__atomic_load_n(&g_fallback_warnings, __ATOMIC_RELAXED) > warned);
    assert_int_equal(mb_offload(ctx, "m", err, sizeof(err)), 0);
    acquire_check(ctx, m, ptrs, MAX_TENSORS, stable);
    assert_int_equal(mb_model_remove(ctx, "m"), 0);
    assert_int_equal(mb_ctx_free(ctx), 0);
    free(ptrs);
  }
  mb_ctx *ctx = tensors_ctx(MB_DEVICE_CUDA);
  tensors_model(ctx, 0, 1);
  mb_lease l;
  err[0] = '\0';
  int rc = mb_acquire(ctx, "m", NULL, &l, err, sizeof(err));
  assert_true(rc != 0);
  mb_status st;
  assert_int_equal(mb_model_status(ctx, "m", &st), 0);
  assert_int_equal(st.vram_bytes, 0);
  assert_non_null(strstr(err, "cuda:0"));
  assert_int_equal(mb_model_remove(ctx, "m"), 0);
  assert_int_equal(mb_ctx_free(ctx), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_cuda_fallback),
      cmocka_unit_test(test_async_copies),
      cmocka_unit_test(test_pinned),
      cmocka_unit_test(test_vrange),
      cmocka_unit_test_setup_teardown(test_stable_addresses, make_files, remove_files),
      cmocka_unit_test_setup_teardown(test_plain_cycles, make_files, remove_files),
      cmocka_unit_test_setup_teardown(test_tensors_fallback, make_files, remove_files),
      cmocka_unit_test(test_mem_info),
      cmocka_unit_test(test_measured_capacity),
      cmocka_unit_test(test_reserve_too_big),
      cmocka_unit_test(test_cuda_without_capacity),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
