/*
 * test_device_cuda.c - the GPU code (libmodelbuf's lib/device_cuda.c and the
 * tensor engine above it; modelbufd's daemon/nvml.c and
 * daemon/gpu_checkpoint.c) run against the
 * stand-in driver (README.md), one process per driver, as MB_TEST_STANDIN
 * says (meson.build sets LD_LIBRARY_PATH to match):
 *
 *   drv    the full stand-in, two GPUs in CUDA order 1,0 (so CUDA ordinal 0
 *          is the machine's second GPU and NVML must find it by PCI bus id):
 *          the device layer call by call; the tensors backend on cuda:0
 *          through the core, every byte read back and compared with the
 *          file over load/offload/restore/unload cycles, the device's free
 *          memory back at its start and no handle left; stable addresses;
 *          pinned host buffers reused across restores; every fault the
 *          stand-in can inject at every step of load, offload and restore
 *          leaving nothing allocated and a clear error; a device that
 *          disappears; NVML per process, across processes (a worker that
 *          allocates through the stand-in) and the wait for released
 *          memory; the checkpoint API on a real worker process, with every
 *          failure it can answer
 *   old    a driver without the checkpoint API on GPUs without virtual
 *          memory management; NVML with only the _v3 process list
 *   min    a driver with only the calls modelbuf needs; NVML without a
 *          process list
 *   nogpu  a driver that sees no GPU (cuInit fails): the host device
 *          instead; NVML whose init fails
 *   none   no driver at all
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <time.h>
#include <unistd.h>
#include <setjmp.h>
#include <cmocka.h>

#include "modelbuf/modelbuf.h"
#include "modelbuf/tensors.h"
#include "device.h"
#include "device_cuda.h"
#include "gpu_checkpoint.h"
#include "nvml.h"
#include "mkmodel.h"
#include "standin.h"
#include "tensor/loader.h"

#define MiB (1024ull * 1024ull)

static char g_dir[] = "/tmp/mb_standin_test_XXXXXX";
static char g_st[512], g_gguf[512];
static char err[512];
static int g_misuse_base; /* misuses made on purpose */

/* Loader options on the CUDA device only (no fallback to the host); a
 * chunk size or thread count of 0 keeps the default. */
static mb_tensors_opts tensors_opts(int stable, size_t chunk_bytes, int threads) {
  mb_tensors_opts o;
  mb_tensors_opts_init(&o);
  o.stable_addresses = stable;
  o.no_fallback = 1;
  if (chunk_bytes > 0)
    o.chunk_bytes = chunk_bytes;
  if (threads > 0)
    o.threads = threads;
  return o;
}

/* ---- the stand-in's own side (standin.h), through dlsym ------------------ */

static struct {
  __typeof__(&mbsi_live) live;
  __typeof__(&mbsi_live_text) live_text;
  __typeof__(&mbsi_calls) calls;
  __typeof__(&mbsi_misuses) misuses;
  __typeof__(&mbsi_reclaimed) reclaimed;
  __typeof__(&mbsi_fail) set_fail;
  __typeof__(&mbsi_fired) fired;
  __typeof__(&mbsi_lose) lose;
  int (*nvml_fail)(const char *);
} si;

#define SYM(dl, field, name)                                  \
  do {                                                        \
    void *p_ = dlsym(dl, name);                               \
    assert_non_null(p_);                                      \
    memcpy(&si.field, &p_, sizeof(p_));                       \
  } while (0)

/* After modelbuf loaded the stand-in: its control functions. */
static void standin_bind(void) {
  if (si.live != NULL)
    return;
  assert_true(mb__cuda_usable(err, sizeof(err)));
  void *dl = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
  assert_non_null(dl);
  SYM(dl, live, "mbsi_live");
  SYM(dl, live_text, "mbsi_live_text");
  SYM(dl, calls, "mbsi_calls");
  SYM(dl, misuses, "mbsi_misuses");
  SYM(dl, reclaimed, "mbsi_reclaimed");
  SYM(dl, set_fail, "mbsi_fail");
  SYM(dl, fired, "mbsi_fired");
  SYM(dl, lose, "mbsi_lose");
  if (mbd_nvml_available(NULL, 0)) {
    void *nv = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_NOLOAD);
    assert_non_null(nv);
    SYM(nv, nvml_fail, "mbsi_nvml_fail");
  }
}

/* Nothing of the driver held, nothing misused, nothing left for a context's
 * end to reclaim. */
static void assert_nothing_left(void) {
  char text[512], last[256] = "";
  si.live_text(text, sizeof(text));
  int mis = si.misuses(last, sizeof(last)) - g_misuse_base;
  if (si.live("all") != 0 || mis != 0 || si.reclaimed() != 0)
    fail_msg("the stand-in holds: %s (last misuse: %s)", text, last);
}

static void assert_no_misuse(void) {
  char last[256] = "";
  if (si.misuses(last, sizeof(last)) != g_misuse_base)
    fail_msg("misuse of the driver API: %s", last);
}

static uint64_t free_of(int ordinal) {
  uint64_t t = 0, f = 0;
  mb__dev *d = NULL;
  assert_int_equal(mb__dev_open(MB_DEVICE_CUDA, ordinal, &d, err, sizeof(err)), 0);
  assert_int_equal(mb__dev_mem_info(d, &t, &f, err, sizeof(err)), 0);
  mb__dev_close(d);
  return f;
}

static void fill(unsigned char *p, size_t n, unsigned seed) {
  for (size_t i = 0; i < n; i++)
    p[i] = (unsigned char)(i * 131u + (i >> 13) + seed);
}

static unsigned char *slurp(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  assert_non_null(f);
  fseek(f, 0, SEEK_END);
  *len = (size_t)ftell(f);
  fseek(f, 0, SEEK_SET);
  unsigned char *b = malloc(*len);
  assert_non_null(b);
  assert_int_equal(fread(b, 1, *len, f), *len);
  fclose(f);
  return b;
}

/* ---- the device layer, call by call -------------------------------------- */

static void progress_cb(void *user, uint64_t done, uint64_t total) {
  uint64_t *last = user;
  assert_true(done >= *last && done <= total);
  *last = done;
}

static void test_device_layer(void **state) {
  (void)state;
  standin_bind();
  uint64_t total = 0, f0 = 0;
  /* the total alone opens no context (cuDeviceTotalMem) */
  assert_int_equal(mb_device_mem_info(MB_DEVICE_CUDA, 0, &total, NULL, err, sizeof(err)), 0);
  assert_int_equal(total, 768 * MiB); /* CUDA order 1,0: ordinal 0 is the 768 MiB GPU */
  assert_int_equal(si.calls("cuDevicePrimaryCtxRetain"), 0);
  assert_int_equal(mb_device_mem_info(MB_DEVICE_CUDA, 1, &total, &f0, err, sizeof(err)), 0);
  assert_int_equal(total, 1024 * MiB);
  assert_int_equal(f0, 1016 * MiB); /* less the context the question opened */
  char bus[64];
  assert_int_equal(mb__device_pci_bus_id(0, bus, sizeof(bus)), 0);
  assert_string_equal(bus, "0000:b3:00.0");
  assert_int_equal(mb__device_pci_bus_id(1, bus, sizeof(bus)), 0);
  assert_string_equal(bus, "0000:65:00.0");
  assert_int_equal(mb__device_pci_bus_id(2, bus, sizeof(bus)), MB_ENODEV);
  assert_int_equal(mb__device_pci_bus_id(0, bus, 8), MB_ENODEV);
  /* an ordinal the machine lacks: an error, never the host device */
  mb__dev *d = NULL;
  assert_int_equal(mb__cuda_total_mem(5, &total, err, sizeof(err)), MB_ENODEV);
  assert_non_null(strstr(err, "no such GPU (the driver sees 2)"));
  assert_int_equal(mb__dev_open_fallback(MB_DEVICE_CUDA, 5, &d, err, sizeof(err)), MB_ENODEV);
  assert_non_null(strstr(err, "cuda:5: no such GPU"));
  assert_null(d);

  assert_int_equal(mb__dev_open_fallback(MB_DEVICE_CUDA, 0, &d, err, sizeof(err)), 0);
  assert_int_equal(mb__dev_kind(d), MB_DEVICE_CUDA);
  assert_int_equal(si.live("stream"), 4);
  uint64_t f1 = 0;
  assert_int_equal(mb__dev_mem_info(d, &total, &f1, err, sizeof(err)), 0);
  assert_int_equal(f1, 760 * MiB); /* the context's 8 MiB */
  assert_int_equal(mb__dev_populate(d, 0, 4096), MB_ENOTSUP);

  /* synchronous copies, pinned and pageable */
  const size_t n = 3 * MiB + 123;
  uint64_t dp = 0;
  unsigned char *h = NULL, *back = NULL;
  assert_int_equal(mb__dev_alloc(d, n, &dp, err, sizeof(err)), 0);
  assert_int_equal(mb__dev_host_alloc(d, n, (void **)&h, err, sizeof(err)), 0);
  back = malloc(n);
  fill(h, n, 1);
  assert_int_equal(mb__dev_h2d(d, dp, h, n, 0, err, sizeof(err)), 0);
  assert_int_equal(mb__dev_d2h(d, back, dp, n, 7, err, sizeof(err)), 0);
  assert_memory_equal(h, back, n);
  memset(back, 0, n);
  assert_int_equal(mb__dev_h2d(d, dp + 4096, back, 4096, -3, err, sizeof(err)), 0);
  assert_int_equal(mb__dev_d2h(d, h, dp, 8192, 2, err, sizeof(err)), 0);
  assert_true(h[4096] == 0 && h[8191] == 0);
  /* a copy past the allocation is the driver's error, with its text */
  assert_int_equal(mb__dev_d2h(d, back, dp + n - 10, 20, 0, err, sizeof(err)), MB_EIO);
  assert_non_null(strstr(err, "cuda: copy from device: invalid argument (error 1)"));
  assert_int_equal(si.misuses(NULL, 0), 1); /* that one, on purpose */
  g_misuse_base = 1;
  /* the driver failing where it rarely does, each with its message */
  assert_int_equal(si.set_fail("cuMemGetInfo:1"), 0);
  assert_int_equal(mb__dev_mem_info(d, &total, &f1, err, sizeof(err)), MB_EIO);
  assert_non_null(strstr(err, "cuda: cuMemGetInfo: unknown error (error 999)"));
  assert_int_equal(si.set_fail("cuDeviceGet:1"), 0);
  assert_int_equal(mb__cuda_total_mem(0, &total, err, sizeof(err)), MB_ENODEV);
  assert_non_null(strstr(err, "cuda: cuDeviceGet:"));
  assert_int_equal(si.set_fail("cuDeviceTotalMem:1"), 0);
  assert_int_equal(mb__cuda_total_mem(0, &total, err, sizeof(err)), MB_EIO);
  assert_int_equal(si.set_fail("cuMemAlloc:1:12345"), 0); /* a code the driver has no text for */
  uint64_t none = 0;
  assert_int_equal(mb__dev_alloc(d, 4096, &none, err, sizeof(err)), MB_ENOMEM);
  assert_non_null(strstr(err, "cuda: cuMemAlloc: unknown error (error 12345)"));
  assert_int_equal(none, 0);
  si.set_fail("");

  /* asynchronous copies: more in flight than the spare events, waited for
   * in reverse */
  enum { K = 40 };
  mb__dev_event *ev[K];
  for (int k = 0; k < K; k++) {
    fill(back + k * 4096, 4096, (unsigned)k);
    assert_int_equal(mb__dev_h2d_async(d, dp + (uint64_t)k * 4096, back + k * 4096, 4096, k, &ev[k],
                                       err, sizeof(err)), 0);
    assert_non_null(ev[k]);
  }
  for (int k = K; k-- > 0;)
    assert_int_equal(mb__dev_event_wait(d, ev[k], err, sizeof(err)), 0);
  memset(h, 0, n);
  for (int k = 0; k < K; k++)
    assert_int_equal(mb__dev_d2h_async(d, h + k * 4096, dp + (uint64_t)k * 4096, 4096, k, &ev[k],
                                       err, sizeof(err)), 0);
  for (int k = 0; k < K; k++)
    assert_int_equal(mb__dev_event_wait(d, ev[k], err, sizeof(err)), 0);
  assert_memory_equal(h, back, K * 4096);
  assert_int_equal(mb__dev_event_wait(d, NULL, err, sizeof(err)), 0);

  /* pinned buffers, several slices, copied both ways with progress */
  const size_t pn = 2 * (size_t)MB_DEV_PIN_SLICE + 5 * MiB;
  uint64_t big = 0;
  unsigned char *pin = NULL;
  assert_int_equal(mb__dev_alloc(d, pn, &big, err, sizeof(err)), 0);
  assert_int_equal(mb__dev_pinned_alloc(d, pn, 3, (void **)&pin, err, sizeof(err)), 0);
  assert_int_equal(si.live("register"), 3);
  fill(pin, pn, 9);
  uint64_t last = 0;
  assert_int_equal(mb__dev_copy_pinned(d, 1, big, pin, pn, progress_cb, &last, err, sizeof(err)), 0);
  assert_int_equal(last, pn);
  memset(pin, 0, pn);
  assert_int_equal(mb__dev_copy_pinned(d, 0, big, pin, pn, NULL, NULL, err, sizeof(err)), 0);
  for (size_t i = 0; i < pn; i += 4099)
    assert_int_equal(pin[i], (unsigned char)(i * 131u + (i >> 13) + 9));
  mb__dev_pinned_free(d, pin, pn);
  mb__dev_free(d, big);
  mb__dev_free(d, 0); /* ignored */

  /* a stable range: the same address over map/unmap, memory back between */
  mb__dev_vrange *r = NULL;
  assert_int_equal(mb__dev_vrange_new(d, SIZE_MAX - 100, &r, err, sizeof(err)), MB_ENOMEM);
  assert_int_equal(mb__dev_vrange_new(d, 5 * MiB, &r, err, sizeof(err)), 0);
  assert_int_equal(mb__dev_vrange_bytes(r), 6 * MiB);
  uint64_t a = mb__dev_vrange_addr(r);
  uint64_t before = 0, now = 0;
  assert_int_equal(mb__dev_mem_info(d, NULL, &before, err, sizeof(err)), 0);
  for (int round = 0; round < 3; round++) {
    assert_int_equal(mb__dev_vrange_map(d, r, err, sizeof(err)), 0);
    assert_int_equal(mb__dev_vrange_map(d, r, err, sizeof(err)), 0); /* a no-op */
    assert_true(mb__dev_vrange_mapped(r));
    assert_int_equal(mb__dev_vrange_addr(r), a);
    assert_int_equal(mb__dev_mem_info(d, NULL, &now, err, sizeof(err)), 0);
    assert_int_equal(before - now, 6 * MiB);
    assert_int_equal(mb__dev_h2d(d, a + 6 * MiB - 4096, back, 4096, round, err, sizeof(err)), 0);
    assert_int_equal(mb__dev_d2h(d, h, a + 6 * MiB - 4096, 4096, round + 1, err, sizeof(err)), 0);
    assert_memory_equal(h, back, 4096);
    mb__dev_vrange_unmap(d, r);
    mb__dev_vrange_unmap(d, r); /* a no-op */
  }
  assert_int_equal(mb__dev_mem_info(d, NULL, &now, err, sizeof(err)), 0);
  assert_int_equal(now, before);
  mb__dev_vrange_free(d, r);
  mb__dev_vrange_free(d, NULL);

  mb__dev_host_free(d, h);
  mb__dev_host_free(d, NULL);
  mb__dev_free(d, dp);
  free(back);
  mb__dev_close(d);
  assert_int_equal(si.misuses(NULL, 0), 1);
  assert_int_equal(si.live("all"), 0);
  assert_int_equal(free_of(1), 1016 * MiB); /* the context of the question only */
}

/* ---- the tensors backend through the core -------------------------------- */

/* Every tensor of path read back from the device and compared with the
 * file; pointers recorded into ptrs, or compared with them. */
static void check_tensors(mb_tensors_model *m, const char *path, uint64_t *ptrs, int same) {
  size_t len;
  unsigned char *file = slurp(path, &len);
  mb_tensor_file *f = NULL;
  assert_int_equal(mb_tensor_file_open(path, &f, err, sizeof(err)), 0);
  size_t cnt = mb_tensor_file_count(f);
  assert_true(cnt < 4096);
  unsigned char *buf = malloc(len);
  for (size_t k = 0; k < cnt; k++) {
    mb_tensor_info ti;
    mb_tensor_ref r;
    assert_int_equal(mb_tensor_file_info(f, k, &ti), 0);
    assert_int_equal(mb_tensors_find(m, ti.name, &r), 0);
    if (same)
      assert_int_equal(r.device_ptr, ptrs[k]);
    ptrs[k] = r.device_ptr;
    assert_int_equal(mb_tensors_read(m, ti.name, 0, buf, (size_t)ti.size_bytes, err, sizeof(err)),
                     0);
    assert_memory_equal(buf, file + ti.offset, (size_t)ti.size_bytes);
  }
  free(buf);
  mb_tensor_file_close(f);
  free(file);
}

static mb_ctx *gpu_ctx(void) {
  mb_ctx_opts co;
  mb_ctx_opts_init(&co);
  co.loader_threads = 2;
  mb_ctx *ctx = NULL;
  assert_int_equal(mb_ctx_new(&co, &ctx, err, sizeof(err)), 0);
  mb_device_opts o;
  mb_device_opts_init(&o);
  o.kind = MB_DEVICE_CUDA;
  o.ordinal = 0;
  assert_int_equal(mb_device_add(ctx, &o, NULL, err, sizeof(err)), 0);
  return ctx;
}

static void cycles(const char *path, int stable) {
  standin_bind();
  uint64_t f0 = free_of(0);
  mb_ctx *ctx = gpu_ctx();
  mb_device_info di;
  assert_int_equal(mb_device_info_get(ctx, 0, &di), 0);
  assert_int_equal(di.capacity_bytes, 768 * MiB); /* measured: the stand-in's */
  const char *paths[1] = {path};
  mb_tensors_opts to = tensors_opts(stable, 1 << 20, 3);
  mb_tensors_model *m = NULL;
  assert_int_equal(mb_tensors_model_new(paths, 1, &to, &m, err, sizeof(err)), 0);
  uint64_t bytes = mb_tensors_model_bytes(m);
  mb_model_opts mo;
  mb_model_opts_init(&mo);
  mo.footprint_bytes = bytes;
  mo.keep_alive_ms = -1;
  assert_int_equal(mb_model_add(ctx, "m", mb_tensors_backend(), m, &mo, err, sizeof(err)), 0);
  uint64_t *ptrs = calloc(4096, sizeof(*ptrs));
  unsigned regs = 0;
  for (int round = 0; round < 2; round++) { /* load, 3 offload/restore cycles, unload; twice */
    mb_lease l;
    assert_int_equal(mb_acquire(ctx, "m", NULL, &l, err, sizeof(err)), 0);
    check_tensors(m, path, ptrs, stable && round > 0);
    assert_int_equal(mb_release(ctx, l), 0);
    uint64_t f_ready = free_of(0);
    assert_true(f_ready + bytes <= f0);
    for (int c = 0; c < 3; c++) {
      assert_int_equal(mb_offload(ctx, "m", err, sizeof(err)), 0);
      mb_status st;
      assert_int_equal(mb_model_status(ctx, "m", &st), 0);
      assert_int_equal(st.state, MB_STATE_OFFLOADED);
      assert_int_equal(st.vram_bytes, 0);
      assert_int_equal(st.host_bytes, bytes);
      assert_true(free_of(0) >= f_ready + bytes); /* the arena is off the device */
      assert_int_equal(si.live("alloc") + si.live("map"), 0);
      /* the pinned copy is registered once, then reused */
      if (c == 0)
        regs = si.calls("cuMemHostRegister");
      assert_int_equal(si.calls("cuMemHostRegister"), regs);
      assert_true(si.live("register") >= 1);
      assert_int_equal(mb_acquire(ctx, "m", NULL, &l, err, sizeof(err)), 0); /* restore */
      check_tensors(m, path, ptrs, stable);
      assert_int_equal(mb_release(ctx, l), 0);
      assert_int_equal(free_of(0), f_ready);
    }
    assert_int_equal(mb_unload(ctx, "m", err, sizeof(err)), 0);
    assert_int_equal(si.live("alloc") + si.live("map") + si.live("vmem") + si.live("host") +
                     si.live("register"), 0);
    if (stable) { /* the range and its device (context, streams, spare events) stay */
      assert_int_equal(si.live("reserve"), 1);
      assert_int_equal(si.live("ctx"), 1);
      assert_int_equal(free_of(0), f0); /* (free_of shares the context it keeps) */
    } else {
      assert_nothing_left();
      assert_int_equal(free_of(0), f0);
    }
  }
  assert_int_equal(mb_model_remove(ctx, "m"), 0);
  assert_int_equal(mb_ctx_free(ctx), 0);
  free(ptrs);
  assert_nothing_left();
  assert_int_equal(free_of(0), f0);
}

static void test_tensors_safetensors(void **state) {
  (void)state;
  cycles(g_st, 0);
}

static void test_tensors_gguf(void **state) {
  (void)state;
  cycles(g_gguf, 0);
}

static void test_tensors_stable_addresses(void **state) {
  (void)state;
  cycles(g_st, 1);
}

/* ---- a restore onto another GPU ---------------------------------------- */

static int cb_nop(void *user, int device, char *e, size_t n) {
  (void)user, (void)device, (void)e, (void)n;
  return 0;
}
static int cb_nop2(void *user, char *e, size_t n) {
  (void)user, (void)e, (void)n;
  return 0;
}

/* A tensors model of device auto (restore_any_device) is offloaded from
 * cuda:0; a model held there leaves no room, so the core restores it on
 * cuda:1: every byte equal, cuda:0 back to its start figure, and nothing
 * left once unloaded (with stable addresses, a new range on cuda:1). */
static void moved_restore(int stable) {
  standin_bind();
  uint64_t f0 = free_of(0), f1 = free_of(1);
  mb_ctx *ctx = gpu_ctx();
  mb_device_opts o;
  mb_device_opts_init(&o);
  o.kind = MB_DEVICE_CUDA;
  o.ordinal = 1;
  assert_int_equal(mb_device_add(ctx, &o, NULL, err, sizeof(err)), 0);
  const char *paths[1] = {g_st};
  mb_tensors_opts to = tensors_opts(stable, 1 << 20, 3);
  mb_tensors_model *m = NULL;
  assert_int_equal(mb_tensors_model_new(paths, 1, &to, &m, err, sizeof(err)), 0);
  uint64_t bytes = mb_tensors_model_bytes(m);
  mb_model_opts mo;
  mb_model_opts_init(&mo);
  mo.device = MB_DEVICE_AUTO;
  mo.restore_any_device = 1;
  mo.footprint_bytes = bytes;
  mo.keep_alive_ms = -1;
  assert_int_equal(mb_model_add(ctx, "m", mb_tensors_backend(), m, &mo, err, sizeof(err)), 0);
  mb_lease l;
  assert_int_equal(mb_acquire(ctx, "m", NULL, &l, err, sizeof(err)), 0);
  assert_int_equal(l.device, 0); /* best fit: the smaller GPU */
  uint64_t *ptrs = calloc(4096, sizeof(*ptrs));
  check_tensors(m, g_st, ptrs, 0);
  assert_int_equal(mb_release(ctx, l), 0);
  assert_int_equal(mb_offload(ctx, "m", err, sizeof(err)), 0);
  /* Another model takes cuda:0 but for less than m needs, and is held. */
  mb_device_info di;
  assert_int_equal(mb_device_info_get(ctx, 0, &di), 0);
  mb_callbacks cb = {cb_nop, cb_nop2, cb_nop, cb_nop2, NULL, NULL};
  mb_model_opts_init(&mo);
  mo.device = 0;
  mo.footprint_bytes = di.usable_bytes - bytes / 2;
  mo.keep_alive_ms = -1;
  assert_int_equal(mb_model_add_callbacks(ctx, "blocker", &cb, &mo, err, sizeof(err)), 0);
  mb_lease lb;
  assert_int_equal(mb_acquire(ctx, "blocker", NULL, &lb, err, sizeof(err)), 0);
  assert_int_equal(mb_acquire(ctx, "m", NULL, &l, err, sizeof(err)), 0); /* restore */
  assert_int_equal(l.device, 1);
  mb_status st;
  assert_int_equal(mb_model_status(ctx, "m", &st), 0);
  assert_int_equal(st.device, 1);
  assert_int_equal(st.stats.restores, 1);
  check_tensors(m, g_st, ptrs, 0);
  assert_int_equal(free_of(0), f0); /* nothing of m on cuda:0 */
  assert_true(free_of(1) + bytes <= f1);
  assert_no_misuse();
  assert_int_equal(mb_release(ctx, l), 0);
  assert_int_equal(mb_release(ctx, lb), 0);
  assert_int_equal(mb_unload(ctx, "m", err, sizeof(err)), 0);
  assert_int_equal(si.live("alloc") + si.live("map") + si.live("vmem") + si.live("host") +
                   si.live("register"), 0);
  assert_int_equal(mb_model_remove(ctx, "m"), 0);
  assert_int_equal(mb_ctx_free(ctx), 0);
  free(ptrs);
  assert_nothing_left();
  assert_int_equal(free_of(0), f0);
  assert_int_equal(free_of(1), f1);
}

static void test_tensors_restore_elsewhere(void **state) {
  (void)state;
  moved_restore(0);
  moved_restore(1);
}

/* ---- every fault at every step ------------------------------------------- */

typedef struct step_env {
  mb_tensors_model *m;
  mb_op op;
  char err[512];
} step_env;

static void op_init(step_env *e, mb_tensors_model *m) {
  memset(&e->op, 0, sizeof(e->op));
  e->op.model = "m";
  e->op.user = m;
  e->op.device_kind = MB_DEVICE_CUDA;
  e->op.device_ordinal = 0;
  e->op.err = e->err;
  e->op.err_len = sizeof(e->err);
  e->err[0] = '\0';
  e->m = m;
}

static int run_step(step_env *e, int step) {
  const mb_backend *be = mb_tensors_backend();
  e->err[0] = '\0';
  switch (step) {
  case 0: return be->load(&e->op);
  case 1: return be->offload(&e->op);
  default: return be->restore(&e->op);
  }
}

static const char *const step_names[3] = {"load", "offload", "restore"};

/* Faults at every call of what, in turn, during step (0 load, 1 offload, 2
 * restore), until the step runs past the last one: each must fail the step
 * with a clear error, leave the model where it was, and unloading must
 * then leave nothing. */
static int fault_sweep(int step, const char *what, const char *tail, int stable, unsigned last) {
  const char *paths[1] = {g_st};
  mb_tensors_opts to = tensors_opts(stable, 1 << 20, 2);
  uint64_t f0 = free_of(0);
  int faults = 0;
  for (unsigned nth = 1; nth <= last; nth++) {
    mb_tensors_model *m = NULL;
    assert_int_equal(mb_tensors_model_new(paths, 1, &to, &m, err, sizeof(err)), 0);
    step_env e;
    op_init(&e, m);
    for (int s = 0; s < step; s++)
      if (run_step(&e, s) != 0)
        fail_msg("%s before the fault: %s", step_names[s], e.err);
    char spec[128];
    snprintf(spec, sizeof(spec), "%s:%u%s", what, nth, tail);
    assert_int_equal(si.set_fail(spec), 0);
    int rc = run_step(&e, step);
    unsigned fired = si.fired();
    si.set_fail("");
    if (fired == 0) {
      if (rc != 0)
        fail_msg("%s with %s (not fired) failed: %s", step_names[step], spec, e.err);
      mb_tensors_backend()->unload(&e.op);
      mb_tensors_model_free(m);
      break;
    }
    faults++;
    if (rc == 0)
      fail_msg("%s with %s succeeded", step_names[step], spec);
    /* a clear message: what failed, in the driver's words */
    if (strstr(e.err, "cuda") == NULL && strstr(e.err, "CUDA") == NULL && strstr(e.err, "pin") == NULL)
      fail_msg("%s with %s: unclear error '%s'", step_names[step], spec, e.err);
    assert_no_misuse();
    mb_usage u;
    memset(&u, 0, sizeof(u));
    mb_tensors_backend()->usage(&e.op, &u);
    if (step == 0) { /* nothing allocated: not on the device, no host copy (with
                        stable addresses the range and its device handle stay) */
      assert_int_equal(u.device_bytes, 0);
      assert_int_equal(u.host_bytes, 0);
      assert_int_equal(si.live("alloc") + si.live("map") + si.live("vmem") + si.live("host") +
                       si.live("register"), 0);
      if (!stable)
        assert_int_equal(si.live("all"), 0);
    } else if (step == 1) { /* still on the device, intact */
      assert_int_equal(u.device_bytes, mb_tensors_model_bytes(m));
      uint64_t ptrs[4096];
      check_tensors(m, g_st, ptrs, 0);
    } else { /* still offloaded: nothing on the device */
      assert_int_equal(u.device_bytes, 0);
      assert_int_equal(si.live("alloc") + si.live("map") + si.live("vmem"), 0);
    }
    assert_int_equal(mb_tensors_backend()->unload(&e.op), 0);
    mb_tensors_model_free(m);
    assert_nothing_left();
    assert_int_equal(free_of(0), f0);
  }
  return faults;
}

static void test_every_fault_at_every_step(void **state) {
  (void)state;
  standin_bind();
  /* last: the calls after it are not checked by device_cuda.c (every
   * cuCtxSetCurrent after the one that opens the device; the query of the
   * recommended granularity, which may fail), so only those
   * up to it must fail the step */
  static const struct {
    const char *what, *tail;
    int stable;
    unsigned last;
  } faults[] = {
      {"cuDevicePrimaryCtxRetain", "", 0, 0},
      {"cuCtxSetCurrent", "", 0, 1},
      {"cuDeviceGet", "", 0, 0},
      {"cuStreamCreate", "", 0, 0},
      {"cuMemAlloc", "", 0, 0},
      {"cuMemHostAlloc", "", 0, 0},
      {"cuMemHostRegister", "", 0, 0},
      {"cuEventCreate", "", 0, 0},
      {"cuEventRecord", "", 0, 0},
      {"cuMemcpyHtoDAsync", "", 0, 0},
      {"cuMemcpyHtoDAsync", ":700:async", 0, 0},
      {"cuMemcpyDtoHAsync", "", 0, 0},
      {"cuMemcpyDtoHAsync", ":700:async", 0, 0},
      {"cuMemGetAllocationGranularity", "", 1, 1},
      {"cuMemAddressReserve", "", 1, 0},
      {"cuMemCreate", ":2", 1, 0},
      {"cuMemMap", "", 1, 0},
      {"cuMemSetAccess", "", 1, 0},
      {"cuMemcpyHtoDAsync", ":700:async", 1, 0},
  };
  int total = 0;
  for (size_t i = 0; i < sizeof(faults) / sizeof(faults[0]); i++)
    for (int step = 0; step < (faults[i].last ? 1 : 3); step++) {
      int n = fault_sweep(step, faults[i].what, faults[i].tail, faults[i].stable,
                          faults[i].last ? faults[i].last : 500);
      total += n;
      print_message("%-30s %-11s %-8s %2d faults, each a clean failure\n", faults[i].what,
                    faults[i].tail, step_names[step], n);
    }
  assert_true(total > 50);
}

/* A GPU that falls off the bus: a load fails with the driver's error and
 * leaves nothing; the model loads again once it is back. */
static void test_device_lost(void **state) {
  (void)state;
  standin_bind();
  const char *paths[1] = {g_st};
  mb_tensors_opts to = tensors_opts(0, 0, 0);
  mb_tensors_model *m = NULL;
  assert_int_equal(mb_tensors_model_new(paths, 1, &to, &m, err, sizeof(err)), 0);
  step_env e;
  op_init(&e, m);
  si.lose(1, 1); /* CUDA ordinal 0 is the machine's GPU 1 */
  assert_int_not_equal(run_step(&e, 0), 0);
  assert_non_null(strstr(e.err, "unknown error"));
  uint64_t t;
  assert_int_equal(mb_device_mem_info(MB_DEVICE_CUDA, 0, &t, NULL, err, sizeof(err)), MB_EIO);
  assert_int_equal(mbd_nvml_device_memory(0, &t, NULL, err, sizeof(err)), MB_ENODEV);
  si.lose(1, 0);
  assert_nothing_left();
  assert_int_equal(run_step(&e, 0), 0);
  /* lost while loaded: offload fails and keeps the model; unload frees */
  si.lose(1, 1);
  assert_int_not_equal(run_step(&e, 1), 0);
  si.lose(1, 0);
  assert_int_equal(mb_tensors_backend()->unload(&e.op), 0);
  mb_tensors_model_free(m);
  assert_nothing_left();
}

/* ---- NVML ---------------------------------------------------------------- */

/* Starts the stand-in's C worker (its own process group) holding mb MiB on
 * CUDA ordinal 0 of its own view. */
static pid_t start_worker(int mb, int *port_out) {
  const char *exe = getenv("MB_GPU_WORKER");
  assert_non_null(exe);
  int s = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a;
  memset(&a, 0, sizeof(a));
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t al = sizeof(a);
  assert_int_equal(bind(s, (struct sockaddr *)&a, sizeof(a)), 0);
  assert_int_equal(getsockname(s, (struct sockaddr *)&a, &al), 0);
  close(s);
  int port = ntohs(a.sin_port);
  char ps[16], ms[16];
  snprintf(ps, sizeof(ps), "%d", port);
  snprintf(ms, sizeof(ms), "%d", mb);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    setpgid(0, 0);
    execl(exe, exe, "--port", ps, "--vram-mb", ms, (char *)NULL);
    _exit(127);
  }
  setpgid(pid, pid);
  if (port_out)
    *port_out = port;
  return pid;
}

/* A GET on 127.0.0.1:port; the body into out. */
static int http_get(int port, const char *path, char *out, size_t len) {
  int s = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a;
  memset(&a, 0, sizeof(a));
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(s, (struct sockaddr *)&a, sizeof(a)) != 0) {
    close(s);
    return -1;
  }
  char req[256];
  int n = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", path);
  if (write(s, req, (size_t)n) != n) {
    close(s);
    return -1;
  }
  char buf[2048];
  size_t have = 0;
  ssize_t r;
  while (have < sizeof(buf) - 1 && (r = read(s, buf + have, sizeof(buf) - 1 - have)) > 0) {
    have += (size_t)r;
    buf[have] = '\0';
    char *body = strstr(buf, "\r\n\r\n");
    char *cl = strstr(buf, "Content-Length: ");
    if (body && cl && (size_t)(buf + have - (body + 4)) >= strtoul(cl + 16, NULL, 10))
      break;
  }
  close(s);
  buf[have] = '\0';
  char *body = strstr(buf, "\r\n\r\n");
  snprintf(out, len, "%s", body ? body + 4 : "");
  return strncmp(buf, "HTTP/1.1 200", 12) == 0 ? 0 : -1;
}

/* Bounded: until the worker answers its health check (or 30 s). */
static void wait_http(int port) {
  char body[256];
  for (int i = 0; i < 3000 && http_get(port, "/health", body, sizeof(body)) != 0; i++)
    usleep(10000);
}

/* Bounded: until NVML lists the group's bytes as want (or 30 s). */
static uint64_t wait_group_bytes(pid_t pg, uint64_t want) {
  uint64_t b = 0;
  for (int i = 0; i < 3000; i++) {
    int n = 0;
    if (mbd_nvml_group_bytes(0, pg, &b, &n, err, sizeof(err)) == 0 && b == want)
      break;
    usleep(10000);
  }
  return b;
}

static void stop_worker(pid_t pid) {
  kill(pid, SIGKILL);
  waitpid(pid, NULL, 0);
}

static void test_nvml(void **state) {
  (void)state;
  standin_bind();
  char why[200];
  assert_true(mbd_nvml_available(why, sizeof(why)));
  uint64_t total = 0, used = 0;
  /* NVML finds CUDA ordinal 0 by its PCI bus id: the machine's GPU 1 */
  assert_int_equal(mbd_nvml_device_memory(0, &total, &used, err, sizeof(err)), 0);
  assert_int_equal(total, 768 * MiB);
  assert_int_equal(used, 0);
  assert_int_equal(mbd_nvml_device_memory(1, &total, NULL, err, sizeof(err)), 0);
  assert_int_equal(total, 1024 * MiB);
  assert_int_equal(mbd_nvml_device_memory(7, &total, NULL, err, sizeof(err)), MB_ENODEV);
  assert_non_null(strstr(err, "NVML: no GPU 7: the CUDA driver"));

  /* this process's allocation: listed under its group */
  mb__dev *d = NULL;
  uint64_t dp = 0, b = 0;
  int n = 0;
  assert_int_equal(mb__dev_open(MB_DEVICE_CUDA, 0, &d, err, sizeof(err)), 0);
  assert_int_equal(mb__dev_alloc(d, 64 * MiB, &dp, err, sizeof(err)), 0);
  assert_int_equal(mbd_nvml_group_bytes(0, getpgid(0), &b, &n, err, sizeof(err)), 0);
  assert_int_equal(b, 72 * MiB);
  assert_int_equal(n, 1);
  assert_int_equal(mbd_nvml_device_memory(0, NULL, &used, err, sizeof(err)), 0);
  assert_int_equal(used, 72 * MiB);
  assert_int_equal(mbd_nvml_group_bytes(1, getpgid(0), &b, &n, err, sizeof(err)), 0);
  assert_true(b == 0 && n == 0);

  /* NVML's faults: the list grew once (retried), grew for good, failed */
  assert_int_equal(si.nvml_fail("nvmlDeviceGetComputeRunningProcesses:1:7"), 0);
  assert_int_equal(mbd_nvml_group_bytes(0, getpgid(0), &b, &n, err, sizeof(err)), 0);
  assert_int_equal(b, 72 * MiB);
  assert_int_equal(si.nvml_fail("nvmlDeviceGetComputeRunningProcesses:1+:7"), 0);
  assert_int_equal(mbd_nvml_group_bytes(0, getpgid(0), &b, &n, err, sizeof(err)), MB_EBACKEND);
  assert_non_null(strstr(err, "the list keeps growing"));
  assert_int_equal(si.nvml_fail("nvmlDeviceGetComputeRunningProcesses:1:999"), 0);
  assert_int_equal(mbd_nvml_group_bytes(0, getpgid(0), &b, &n, err, sizeof(err)), MB_EBACKEND);
  assert_non_null(strstr(err, "processes of GPU 0: Unknown Error"));
  assert_int_equal(si.nvml_fail("nvmlDeviceGetMemoryInfo:1:999"), 0);
  assert_int_equal(mbd_nvml_device_memory(0, &total, &used, err, sizeof(err)), MB_EBACKEND);
  assert_non_null(strstr(err, "memory of GPU 0"));
  /* a GPU that NVML cannot find by its bus id is an error, never the GPU
   * that NVML happens to number as the CUDA ordinal (here a 1 GiB one) */
  assert_int_equal(si.nvml_fail("nvmlDeviceGetHandleByPciBusId:1:6"), 0);
  total = 0;
  assert_int_equal(mbd_nvml_device_memory(0, &total, NULL, err, sizeof(err)), MB_ENODEV);
  assert_int_equal(total, 0);
  assert_non_null(strstr(err, "0000:b3:00.0"));
  assert_int_equal(si.nvml_fail(""), 0);
  mb__dev_free(d, dp);
  mb__dev_close(d);

  /* another process: its memory shows under its group, and after it is
   * killed the wait lasts until the driver lets go (release_ms 3000) */
  int port = 0;
  pid_t w = start_worker(48, &port);
  assert_int_equal(wait_group_bytes(w, 56 * MiB), 56 * MiB);
  int pids[2] = {w, 999999};
  assert_int_equal(mbd_nvml_wait_released(0, pids, 2, 100), MB_ETIMEDOUT);
  stop_worker(w);
  assert_int_equal(mbd_nvml_wait_released(0, pids, 2, 50), MB_ETIMEDOUT); /* still listed */
  assert_int_equal(mbd_nvml_wait_released(0, pids, 2, 20000), 0);
  assert_int_equal(mbd_nvml_device_memory(0, NULL, &used, err, sizeof(err)), 0);
  assert_int_equal(used, 0);
  /* NVML failing while waiting: nothing more to learn, no wait */
  w = start_worker(8, &port);
  assert_int_equal(wait_group_bytes(w, 16 * MiB), 16 * MiB);
  pids[0] = w;
  assert_int_equal(si.nvml_fail("nvmlDeviceGetComputeRunningProcesses:1+:999"), 0);
  assert_int_equal(mbd_nvml_wait_released(0, pids, 1, 20000), 0);
  assert_int_equal(si.nvml_fail(""), 0);
  stop_worker(w);
  assert_int_equal(mbd_nvml_wait_released(0, pids, 1, 20000), 0);
  assert_nothing_left();
}

/* ---- the checkpoint API on a real process -------------------------------- */

static int state_of(pid_t pid) {
  int st = -1;
  assert_int_equal(mbd_ckpt_get_state(pid, &st, err, sizeof(err)), 0);
  return st;
}

static void test_checkpoint(void **state) {
  (void)state;
  standin_bind();
  char why[256];
  assert_true(mbd_ckpt_available(why, sizeof(why)));
  int port = 0;
  pid_t w = start_worker(40, &port);
  assert_int_equal(wait_group_bytes(w, 48 * MiB), 48 * MiB);
  wait_http(port);
  char sum1[256], sum2[256];
  assert_int_equal(http_get(port, "/infer", sum1, sizeof(sum1)), 0);
  assert_int_equal(state_of(w), MBD_CKPT_RUNNING);

  /* suspend: the device memory goes to the host; resume brings it back */
  uint64_t used = 0;
  assert_int_equal(mbd_ckpt_suspend(w, 5000, err, sizeof(err)), 0);
  assert_int_equal(state_of(w), MBD_CKPT_CHECKPOINTED);
  assert_int_equal(wait_group_bytes(w, 0), 0);
  assert_int_equal(mbd_nvml_device_memory(0, NULL, &used, err, sizeof(err)), 0);
  assert_int_equal(used, 0);
  assert_int_equal(mbd_ckpt_suspend(w, 5000, err, sizeof(err)), MB_EBACKEND); /* twice */
  assert_non_null(strstr(err, "CUDA_ERROR_ILLEGAL_STATE"));
  assert_int_equal(mbd_ckpt_resume(w, err, sizeof(err)), 0);
  assert_int_equal(state_of(w), MBD_CKPT_RUNNING);
  assert_int_equal(wait_group_bytes(w, 48 * MiB), 48 * MiB);
  assert_int_equal(http_get(port, "/infer", sum2, sizeof(sum2)), 0);
  assert_string_equal(sum1, sum2); /* same process, same answer */

  /* the driver's refusals, each leaving the process as the driver says */
  assert_int_equal(mbd_ckpt_resume(w, err, sizeof(err)), MB_EBACKEND);
  assert_non_null(strstr(err, "restoring the GPU memory of process"));
  assert_int_equal(si.set_fail("cuCheckpointProcessLock:1:600"), 0); /* the lock timed out */
  assert_int_equal(mbd_ckpt_suspend(w, 10, err, sizeof(err)), MB_ETIMEDOUT);
  assert_non_null(strstr(err, "CUDA_ERROR_NOT_READY"));
  assert_int_equal(si.set_fail("cuCheckpointProcessCheckpoint:1:999"), 0);
  assert_int_equal(mbd_ckpt_suspend(w, 1000, err, sizeof(err)), MB_EBACKEND);
  assert_non_null(strstr(err, "checkpointing the GPU memory"));
  assert_int_equal(state_of(w), MBD_CKPT_RUNNING); /* unlocked again */
  assert_int_equal(si.set_fail("cuCheckpointProcessRestore:1:2"), 0);
  assert_int_equal(mbd_ckpt_suspend(w, 1000, err, sizeof(err)), 0);
  assert_int_equal(mbd_ckpt_resume(w, err, sizeof(err)), MB_EBACKEND);
  assert_non_null(strstr(err, "CUDA_ERROR_OUT_OF_MEMORY"));
  assert_int_equal(state_of(w), MBD_CKPT_CHECKPOINTED);
  assert_int_equal(si.set_fail("cuCheckpointProcessUnlock:1:999"), 0);
  assert_int_equal(mbd_ckpt_resume(w, err, sizeof(err)), MB_EBACKEND);
  assert_non_null(strstr(err, "unlocking the CUDA calls"));
  assert_int_equal(state_of(w), MBD_CKPT_LOCKED);
  assert_int_equal(si.set_fail("cuCheckpointProcessGetState:1:999"), 0);
  int st = 0;
  assert_int_equal(mbd_ckpt_get_state(w, &st, err, sizeof(err)), MB_EBACKEND);
  assert_int_equal(si.set_fail("cuCheckpointProcessLock:1:12345"), 0); /* no name for it */
  assert_int_equal(mbd_ckpt_suspend(getpid(), 10, err, sizeof(err)), MB_EBACKEND);
  si.set_fail("");
  assert_non_null(strstr(err, "unknown error"));
  stop_worker(w);
  /* a process that does not use CUDA */
  assert_int_equal(mbd_ckpt_get_state(1, &st, err, sizeof(err)), MB_EBACKEND);
  assert_non_null(strstr(err, "CUDA_ERROR_INVALID_VALUE"));
  int pids[1] = {w};
  assert_int_equal(mbd_nvml_wait_released(0, pids, 1, 20000), 0);
  assert_no_misuse();
}

/* The process-wide handle stays open: last, once the rest is checked. */
static void test_shared_handle(void **state) {
  (void)state;
  standin_bind();
  mb__dev *a = NULL, *b = NULL;
  assert_int_equal(mb__dev_shared(MB_DEVICE_CUDA, 1, &a, err, sizeof(err)), 0);
  assert_int_equal(mb__dev_shared(MB_DEVICE_CUDA, 1, &b, err, sizeof(err)), 0);
  assert_ptr_equal(a, b);
  assert_int_equal(mb__dev_kind(a), MB_DEVICE_CUDA);
  assert_int_equal(mb__dev_shared(MB_DEVICE_CUDA, 99, &a, err, sizeof(err)), MB_ENODEV);
  assert_int_equal(si.live("ctx"), 1);
  assert_no_misuse();
}

/* ---- the other drivers --------------------------------------------------- */

/* A driver older than the checkpoint API, on GPUs without VMM; NVML with
 * only the _v3 process list and no lookup by bus id. */
static void test_old_driver(void **state) {
  (void)state;
  char why[256] = "";
  assert_false(mbd_ckpt_available(why, sizeof(why)));
  assert_non_null(strstr(why, "has no checkpoint API"));
  assert_int_equal(mbd_ckpt_suspend(getpid(), 10, err, sizeof(err)), MB_ENODEV);
  assert_int_equal(mbd_ckpt_resume(getpid(), err, sizeof(err)), MB_ENODEV);
  int st;
  assert_int_equal(mbd_ckpt_get_state(getpid(), &st, err, sizeof(err)), MB_ENODEV);
  standin_bind();
  mb__dev *d = NULL;
  assert_int_equal(mb__dev_open(MB_DEVICE_CUDA, 0, &d, err, sizeof(err)), 0);
  mb__dev_vrange *r = NULL;
  assert_int_equal(mb__dev_vrange_new(d, MiB, &r, err, sizeof(err)), MB_ENOTSUP);
  assert_non_null(strstr(err, "does not support virtual memory management"));
  uint64_t dp = 0, b = 0;
  int n = 0;
  assert_int_equal(mb__dev_alloc(d, 16 * MiB, &dp, err, sizeof(err)), 0);
  assert_true(mbd_nvml_available(NULL, 0));
  assert_int_equal(mbd_nvml_group_bytes(0, getpgid(0), &b, &n, err, sizeof(err)), 0);
  assert_int_equal(b, 24 * MiB);
  /* no lookup by bus id here: by index, and an index NVML refuses */
  void *nv = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_NOLOAD);
  int (*nvml_fail)(const char *) = NULL;
  void *f = dlsym(nv, "mbsi_nvml_fail");
  memcpy(&nvml_fail, &f, sizeof(f));
  assert_non_null(nvml_fail);
  assert_int_equal(nvml_fail("nvmlDeviceGetHandleByIndex:1:2"), 0);
  assert_int_equal(mbd_nvml_group_bytes(0, getpgid(0), &b, &n, err, sizeof(err)), MB_ENODEV);
  assert_non_null(strstr(err, "NVML: no GPU 0 (Invalid Argument)"));
  mb__dev_free(d, dp);
  mb__dev_close(d);
  /* the stable-address option cannot load here, and says why */
  const char *paths[1] = {g_st};
  mb_tensors_opts to = tensors_opts(1, 0, 0);
  mb_tensors_model *m = NULL;
  assert_int_equal(mb_tensors_model_new(paths, 1, &to, &m, err, sizeof(err)), 0);
  step_env e;
  op_init(&e, m);
  assert_int_equal(run_step(&e, 0), MB_ENOTSUP);
  mb_tensors_backend()->unload(&e.op);
  mb_tensors_model_free(m);
  assert_nothing_left();
}

/* Only the calls modelbuf needs: the total comes through a context, no bus
 * id (NVML by index), no VMM, no checkpoint; NVML without a process list. */
static void test_minimal_driver(void **state) {
  (void)state;
  uint64_t total = 0;
  assert_int_equal(mb_device_mem_info(MB_DEVICE_CUDA, 0, &total, NULL, err, sizeof(err)), 0);
  assert_int_equal(total, 1024 * MiB);
  standin_bind();
  assert_int_equal(si.calls("cuDevicePrimaryCtxRetain"), 1);
  char bus[32];
  assert_int_equal(mb__device_pci_bus_id(0, bus, sizeof(bus)), MB_ENOTSUP);
  mb__dev *d = NULL;
  assert_int_equal(mb__dev_open(MB_DEVICE_CUDA, 0, &d, err, sizeof(err)), 0);
  mb__dev_vrange *r = NULL;
  assert_int_equal(mb__dev_vrange_new(d, MiB, &r, err, sizeof(err)), MB_ENOTSUP);
  assert_non_null(strstr(err, "no virtual memory management"));
  mb__dev_close(d);
  char why[256] = "";
  assert_false(mbd_nvml_available(why, sizeof(why)));
  assert_non_null(strstr(why, "lacks the calls needed"));
  assert_false(mbd_ckpt_available(why, sizeof(why)));
  assert_int_equal(mbd_nvml_wait_released(0, (int[]){1}, 1, 1000), 0);
  assert_nothing_left();
}

/* A driver that sees no GPU: cuInit fails; the host device serves cuda:0. */
static void test_driver_without_gpu(void **state) {
  (void)state;
  char why[256] = "";
  assert_false(mb__cuda_usable(why, sizeof(why)));
  assert_non_null(strstr(why, "cuInit failed (CUDA error 100)"));
  assert_false(mbd_ckpt_available(why, sizeof(why)));
  assert_non_null(strstr(why, "cuInit failed (CUDA error 100)"));
  assert_false(mbd_nvml_available(why, sizeof(why)));
  assert_non_null(strstr(why, "nvmlInit failed (Unknown Error)"));
  uint64_t t = 0;
  assert_int_equal(mb__cuda_total_mem(0, &t, err, sizeof(err)), MB_ENODEV);
  assert_int_equal(mb__device_pci_bus_id(0, why, sizeof(why)), MB_ENOTSUP);
  unsigned before = mb__dev_fallback_count();
  mb__dev *d = NULL;
  assert_int_equal(mb__dev_open_fallback(MB_DEVICE_CUDA, 0, &d, err, sizeof(err)), 0);
  assert_int_equal(mb__dev_kind(d), MB_DEVICE_HOST);
  assert_int_equal(mb__dev_fallback_count(), before + 1);
  mb__dev_close(d);
}

static void test_no_driver(void **state) {
  (void)state;
  char why[256] = "";
  assert_false(mb__cuda_usable(why, sizeof(why)));
  assert_non_null(strstr(why, "no CUDA driver"));
  assert_false(mbd_ckpt_available(why, sizeof(why)));
  assert_false(mbd_nvml_available(why, sizeof(why)));
  mb__dev *d = NULL;
  assert_int_equal(mb__dev_open(MB_DEVICE_CUDA, 0, &d, err, sizeof(err)), MB_ENODEV);
  assert_int_equal(mb__cuda_total_mem(0, NULL, err, sizeof(err)), MB_ENODEV);
}

/* ---- setup --------------------------------------------------------------- */

static void write_models(void) {
  if (mkdtemp(g_dir) == NULL) {
    perror("mkdtemp");
    exit(1);
  }
  snprintf(g_st, sizeof(g_st), "%s/m.safetensors", g_dir);
  snprintf(g_gguf, sizeof(g_gguf), "%s/m.gguf", g_dir);
  cli_mkmodel_opts o = {.path = g_st, .format = MB_TENSOR_FORMAT_SAFETENSORS,
                        .size_bytes = 6 * MiB, .seed = 11};
  cli_mkmodel_opts o2 = {.path = g_gguf, .format = MB_TENSOR_FORMAT_GGUF,
                         .size_bytes = 5 * MiB, .seed = 12};
  if (cli_mkmodel_write(&o, NULL, err, sizeof(err)) != 0 ||
      cli_mkmodel_write(&o2, NULL, err, sizeof(err)) != 0) {
    fprintf(stderr, "mkmodel: %s\n", err);
    exit(1);
  }
  /* a machine of its own for this process and the workers it starts */
  char machine[600];
  snprintf(machine, sizeof(machine), "%s/machine", g_dir);
  setenv("MB_STANDIN_MACHINE", machine, 1);
}

static void remove_models(void) {
  char machine[600];
  snprintf(machine, sizeof(machine), "%s/machine", g_dir);
  unlink(g_st);
  unlink(g_gguf);
  unlink(machine);
  rmdir(g_dir);
}

int main(void) {
  const char *v = getenv("MB_TEST_STANDIN");
  v = v ? v : "none";
  /* in every process this test starts (workers too) */
  setenv("MB_STANDIN_RELEASE_MS", "3000", 1);
  /* cmocka's asserts need a test running: set up in a group setup */
  write_models();
  int rc = 0;
  if (strcmp(v, "drv") == 0) {
    setenv("MB_STANDIN_CUDA_ORDER", "1,0", 1);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_device_layer),
        cmocka_unit_test(test_tensors_safetensors),
        cmocka_unit_test(test_tensors_gguf),
        cmocka_unit_test(test_tensors_stable_addresses),
        cmocka_unit_test(test_tensors_restore_elsewhere),
        cmocka_unit_test(test_every_fault_at_every_step),
        cmocka_unit_test(test_device_lost),
        cmocka_unit_test(test_nvml),
        cmocka_unit_test(test_checkpoint),
        cmocka_unit_test(test_shared_handle),
    };
    rc = cmocka_run_group_tests_name("gpu_standin_drv", tests, NULL, NULL);
  } else if (strcmp(v, "old") == 0) {
    setenv("MB_STANDIN_NO_VMM", "1", 1);
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_old_driver)};
    rc = cmocka_run_group_tests_name("gpu_standin_old", tests, NULL, NULL);
  } else if (strcmp(v, "min") == 0) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_minimal_driver)};
    rc = cmocka_run_group_tests_name("gpu_standin_min", tests, NULL, NULL);
  } else if (strcmp(v, "nogpu") == 0) {
    setenv("MB_STANDIN_NVML_FAIL", "nvmlInit:1:999", 1);
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_driver_without_gpu)};
    rc = cmocka_run_group_tests_name("gpu_standin_nogpu", tests, NULL, NULL);
  } else {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_no_driver)};
    rc = cmocka_run_group_tests_name("gpu_standin_none", tests, NULL, NULL);
  }
  remove_models();
  return rc;
}
