/*
 * test_cuda_device.c - the tensor engine on a real GPU (run by make
 * test-gpu), cuda:0 throughout:
 *   - device memory and pinned host memory, synchronous copy round trip;
 *   - asynchronous copies with events: many chunks in flight on several
 *     streams through a buffer pinned in parallel (mb__dev_pinned_alloc),
 *     waited for in another order than issued;
 *   - a stable address range (cuMemAddressReserve/cuMemCreate/cuMemMap):
 *     the same address after unmap/map, the memory back while unmapped
 *     (cuMemGetInfo);
 *   - the pipelined loader: a synthetic model of each format, several chunk
 *     sizes, thread counts and I/O modes, copied back and compared byte for
 *     byte with the file;
 *   - the tensors backend through the core, with and without
 *     stable_addresses: the same tensor pointers after offload/restore and
 *     unload/load, the bytes equal to the file, device free memory back after
 *     offload and after unload (cuMemGetInfo);
 *   - NVML's total of GPU 0 against cuMemGetInfo's, where NVML loads.
 * Device memory returns to its baseline at the end. Exit 77, with the
 * reason, when there is no CUDA driver or GPU.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "modelbuf/modelbuf.h"
#include "modelbuf/tensors.h"
#include "device.h"
#include "nvml.h"
#include "tensor/loader.h"
#include "mkmodel.h"

#define MiB (1024ull * 1024ull)

#define CHECK(c)                                                      \
  do {                                                                \
    if (!(c)) {                                                       \
      fprintf(stderr, "FAIL line %d: %s (%s)\n", __LINE__, #c, err); \
      exit(1);                                                        \
    }                                                                 \
  } while (0)

static char err[512];
static char dir[] = "/var/tmp/mb_gpu_XXXXXX";
static int vmm_ok = 1; /* the GPU and driver do virtual memory management */

static uint64_t free_now(mb__dev *d) {
  uint64_t f = 0;
  CHECK(mb__dev_mem_info(d, NULL, &f, err, sizeof(err)) == 0);
  return f;
}

static void fill(unsigned char *p, size_t n, unsigned seed) {
  for (size_t i = 0; i < n; i++)
    p[i] = (unsigned char)(i * 131u + (i >> 13) + seed);
}

static void test_round_trip(mb__dev *d) {
  const size_t n = 64 * MiB + 123;
  uint64_t dp = 0;
  void *h = NULL, *back = NULL;
  CHECK(mb__dev_alloc(d, n, &dp, err, sizeof(err)) == 0 && dp != 0);
  CHECK(mb__dev_host_alloc(d, n, &h, err, sizeof(err)) == 0);
  CHECK(mb__dev_host_alloc(d, n, &back, err, sizeof(err)) == 0);
  fill(h, n, 1);
  CHECK(mb__dev_h2d(d, dp, h, n, 0, err, sizeof(err)) == 0);
  memset(back, 0, n);
  CHECK(mb__dev_d2h(d, back, dp, n, 3, err, sizeof(err)) == 0);
  CHECK(memcmp(h, back, n) == 0);
  /* pageable memory works too */
  unsigned char *pg = malloc(4096);
  CHECK(pg != NULL);
  CHECK(mb__dev_d2h(d, pg, dp + 4096, 4096, 1, err, sizeof(err)) == 0);
  CHECK(memcmp(pg, (char *)h + 4096, 4096) == 0);
  free(pg);
  mb__dev_free(d, dp);
  mb__dev_host_free(d, h);
  mb__dev_host_free(d, back);
  printf("ok: alloc and synchronous copy round trip\n");
}

static void test_async(mb__dev *d) {
  /* spans three pinned slices; chunks never cross a slice */
  const size_t n = 2 * (size_t)MB_DEV_PIN_SLICE + 8 * MiB, ch = 8 * MiB;
  const size_t nch = (n + ch - 1) / ch;
  uint64_t dp = 0;
  void *src = NULL, *dst = NULL;
  CHECK(mb__dev_alloc(d, n, &dp, err, sizeof(err)) == 0);
  CHECK(mb__dev_pinned_alloc(d, n, 3, &src, err, sizeof(err)) == 0);
  CHECK(mb__dev_pinned_alloc(d, n, 8, &dst, err, sizeof(err)) == 0);
  fill(src, n, 2);
  memset(dst, 0, n);
  mb__dev_event **ev = calloc(nch, sizeof(*ev));
  CHECK(ev != NULL);
  for (size_t c = 0; c < nch; c++) {
    size_t len = n - c * ch < ch ? n - c * ch : ch;
    CHECK(mb__dev_h2d_async(d, dp + c * ch, (char *)src + c * ch, len, (int)(c % 4), &ev[c], err,
                            sizeof(err)) == 0);
    CHECK(ev[c] != NULL);
  }
  for (size_t c = nch; c-- > 0;) /* waited for in reverse */
    CHECK(mb__dev_event_wait(d, ev[c], err, sizeof(err)) == 0);
  for (size_t c = 0; c < nch; c++) {
    size_t len = n - c * ch < ch ? n - c * ch : ch;
    CHECK(mb__dev_d2h_async(d, (char *)dst + c * ch, dp + c * ch, len, (int)(c % 3), &ev[c], err,
                            sizeof(err)) == 0);
  }
  for (size_t c = 0; c < nch; c++)
    CHECK(mb__dev_event_wait(d, ev[c], err, sizeof(err)) == 0);
  CHECK(memcmp(src, dst, n) == 0);
  /* events are reused from the device's free list: many more rounds */
  for (int round = 0; round < 50; round++) {
    mb__dev_event *e = NULL;
    CHECK(mb__dev_d2h_async(d, dst, dp, 4096, round, &e, err, sizeof(err)) == 0);
    CHECK(mb__dev_event_wait(d, e, err, sizeof(err)) == 0);
  }
  free(ev);
  mb__dev_pinned_free(d, src, n);
  mb__dev_pinned_free(d, dst, n);
  mb__dev_free(d, dp);
  printf("ok: %zu async chunks each way on several streams, events waited out of order\n", nch);
}

static void test_vrange(mb__dev *d) {
  const size_t want = 300 * MiB + 1;
  uint64_t f0 = free_now(d);
  mb__dev_vrange *r = NULL;
  int rc = mb__dev_vrange_new(d, want, &r, err, sizeof(err));
  if (rc == MB_ENOTSUP) {
    printf("skip: stable addresses: %s\n", err);
    vmm_ok = 0;
    return;
  }
  CHECK(rc == 0);
  uint64_t a = mb__dev_vrange_addr(r);
  size_t n = mb__dev_vrange_bytes(r);
  CHECK(a != 0 && n >= want);
  void *h = NULL, *back = NULL;
  CHECK(mb__dev_host_alloc(d, 4 * MiB, &h, err, sizeof(err)) == 0);
  CHECK(mb__dev_host_alloc(d, 4 * MiB, &back, err, sizeof(err)) == 0);
  for (int round = 0; round < 3; round++) {
    CHECK(mb__dev_vrange_map(d, r, err, sizeof(err)) == 0);
    CHECK(mb__dev_vrange_addr(r) == a);
    uint64_t f1 = free_now(d);
    CHECK(f1 + n * 9 / 10 <= f0); /* the memory is taken */
    fill(h, 4 * MiB, (unsigned)round);
    CHECK(mb__dev_h2d(d, a + n - 4 * MiB, h, 4 * MiB, 0, err, sizeof(err)) == 0);
    CHECK(mb__dev_h2d(d, a, h, 4 * MiB, 1, err, sizeof(err)) == 0);
    CHECK(mb__dev_d2h(d, back, a + n - 4 * MiB, 4 * MiB, 2, err, sizeof(err)) == 0);
    CHECK(memcmp(h, back, 4 * MiB) == 0);
    mb__dev_vrange_unmap(d, r);
    CHECK(free_now(d) >= f1 + n * 9 / 10); /* and given back */
  }
  mb__dev_vrange_free(d, r);
  mb__dev_host_free(d, h);
  mb__dev_host_free(d, back);
  CHECK(free_now(d) + 64 * MiB >= f0);
  printf("ok: stable range of %zu bytes at the same address over 3 map/unmap rounds\n", n);
}

static void test_loader(mb__dev *d) {
  const mb_tensor_format fmts[2] = {MB_TENSOR_FORMAT_SAFETENSORS, MB_TENSOR_FORMAT_GGUF};
  for (int fi = 0; fi < 2; fi++) {
    char path[300];
    snprintf(path, sizeof(path), "%s/m%d", dir, fi);
    cli_mkmodel_opts o = {.path = path, .format = fmts[fi], .size_bytes = 48u << 20, .seed = 7};
    CHECK(cli_mkmodel_write(&o, NULL, err, sizeof(err)) == 0);
    mb_tensor_file *f = NULL;
    CHECK(mb_tensor_file_open(path, &f, err, sizeof(err)) == 0);
    mb__layout l;
    CHECK(mb__layout_make(&f, 1, &l) == 0);
    FILE *fp = fopen(path, "rb");
    CHECK(fp != NULL);
    unsigned char *want = malloc(l.span_bytes[0]), *got = malloc(l.arena_bytes);
    CHECK(want != NULL && got != NULL);
    CHECK(fseek(fp, (long)l.span_start[0], SEEK_SET) == 0);
    CHECK(fread(want, 1, l.span_bytes[0], fp) == l.span_bytes[0]);
    fclose(fp);
    const size_t chunks[3] = {4096, 1u << 20, 8u << 20};
    const int threads[3] = {1, 4, 8};
    for (int c = 0; c < 3; c++)
      for (int t = 0; t < 3; t++)
        for (int io = 0; io < 3; io++) {
          uint64_t arena = 0;
          CHECK(mb__dev_alloc(d, l.arena_bytes, &arena, err, sizeof(err)) == 0);
          mb__load_opts lo = {.chunk_bytes = chunks[c], .threads = threads[t],
                              .io = (mb__io_mode)io};
          CHECK(mb__load_files(d, &f, &l, arena, &lo, NULL, err, sizeof(err)) == 0);
          memset(got, 0, l.arena_bytes);
          CHECK(mb__dev_d2h(d, got, arena, l.arena_bytes, 1, err, sizeof(err)) == 0);
          CHECK(memcmp(got + mb__layout_span_at(&l, 0, mb__dev_kind(d)), want,
                       l.span_bytes[0]) == 0);
          mb__dev_free(d, arena);
        }
    free(want);
    free(got);
    mb__layout_free(&l);
    mb_tensor_file_close(f);
    unlink(path);
  }
  printf("ok: loader, both formats, 27 configurations each\n");
}

/* ---- the tensors backend through the core ------------------------------- */

#define MAX_TENSORS 8192

/* Every tensor read back from the GPU and compared with the file; pointers
 * recorded into ptrs (or compared with them when check_ptrs). */
static void check_tensors(mb__dev *d, mb_tensors_model *m, const char *path,
                          const unsigned char *file, uint64_t *ptrs, int check_ptrs) {
  mb_tensor_file *f = NULL;
  CHECK(mb_tensor_file_open(path, &f, err, sizeof(err)) == 0);
  size_t n = mb_tensor_file_count(f);
  CHECK(n <= MAX_TENSORS);
  unsigned char *buf = NULL;
  size_t cap = 0;
  for (size_t k = 0; k < n; k++) {
    mb_tensor_info ti;
    mb_tensor_ref r;
    CHECK(mb_tensor_file_info(f, k, &ti) == 0);
    CHECK(mb_tensors_find(m, ti.name, &r) == 0);
    if (check_ptrs)
      CHECK(r.device_ptr == ptrs[k]);
    ptrs[k] = r.device_ptr;
    if (ti.size_bytes == 0)
      continue;
    if (ti.size_bytes > cap) {
      free(buf);
      cap = (size_t)ti.size_bytes;
      buf = malloc(cap);
      CHECK(buf != NULL);
    }
    CHECK(mb__dev_d2h(d, buf, r.device_ptr, (size_t)ti.size_bytes, (int)k, err, sizeof(err)) ==
          0);
    CHECK(memcmp(buf, file + ti.offset, (size_t)ti.size_bytes) == 0);
  }
  free(buf);
  mb_tensor_file_close(f);
}

static void acquire_check(mb_ctx *ctx, mb__dev *d, mb_tensors_model *m, const char *path,
                          const unsigned char *file, uint64_t *ptrs, int check_ptrs) {
  mb_lease l;
  CHECK(mb_acquire(ctx, "m", NULL, &l, err, sizeof(err)) == 0);
  check_tensors(d, m, path, file, ptrs, check_ptrs);
  CHECK(mb_release(ctx, l) == 0);
}

static void test_backend(mb__dev *d, int stable) {
  char path[300];
  snprintf(path, sizeof(path), "%s/b.safetensors", dir);
  cli_mkmodel_opts o = {.path = path, .format = MB_TENSOR_FORMAT_SAFETENSORS,
                        .size_bytes = 256 * MiB, .seed = 3};
  CHECK(cli_mkmodel_write(&o, NULL, err, sizeof(err)) == 0);
  FILE *fp = fopen(path, "rb");
  CHECK(fp != NULL);
  fseek(fp, 0, SEEK_END);
  size_t flen = (size_t)ftell(fp);
  fseek(fp, 0, SEEK_SET);
  unsigned char *file = malloc(flen);
  CHECK(file != NULL && fread(file, 1, flen, fp) == flen);
  fclose(fp);

  uint64_t f0 = free_now(d);
  mb_ctx_opts co;
  mb_ctx_opts_init(&co);
  co.loader_threads = 2;
  mb_ctx *ctx = NULL;
  CHECK(mb_ctx_new(&co, &ctx, err, sizeof(err)) == 0);
  mb_device_opts dopt;
  mb_device_opts_init(&dopt);
  dopt.kind = MB_DEVICE_CUDA;
  dopt.ordinal = 0;
  CHECK(mb_device_add(ctx, &dopt, NULL, err, sizeof(err)) == 0);
  const char *paths[1] = {path};
  mb_tensors_opts to;
  mb_tensors_opts_init(&to);
  to.stable_addresses = stable;
  to.no_fallback = 1;
  mb_tensors_model *m = NULL;
  CHECK(mb_tensors_model_new(paths, 1, &to, &m, err, sizeof(err)) == 0);
  uint64_t bytes = mb_tensors_model_bytes(m);
  mb_model_opts mo;
  mb_model_opts_init(&mo);
  mo.footprint_bytes = bytes;
  mo.keep_alive_ms = 600000;
  CHECK(mb_model_add(ctx, "m", mb_tensors_backend(), m, &mo, err, sizeof(err)) == 0);
  uint64_t *ptrs = calloc(MAX_TENSORS, sizeof(*ptrs));
  CHECK(ptrs != NULL);

  acquire_check(ctx, d, m, path, file, ptrs, 0);
  for (int cycle = 0; cycle < 3; cycle++) {
    uint64_t f_ready = free_now(d);
    CHECK(f_ready + bytes * 9 / 10 <= f0); /* the arena is on the GPU */
    CHECK(mb_offload(ctx, "m", err, sizeof(err)) == 0);
    mb_status st;
    CHECK(mb_model_status(ctx, "m", &st) == 0);
    CHECK(st.state == MB_STATE_OFFLOADED && st.vram_bytes == 0 && st.host_bytes == bytes);
    CHECK(free_now(d) >= f_ready + bytes * 9 / 10); /* device memory back */
    acquire_check(ctx, d, m, path, file, ptrs, stable); /* restore */
  }
  CHECK(mb_unload(ctx, "m", err, sizeof(err)) == 0);
  CHECK(free_now(d) + 64 * MiB >= f0); /* back at the baseline after unload */
  acquire_check(ctx, d, m, path, file, ptrs, stable); /* load again */
  CHECK(mb_unload(ctx, "m", err, sizeof(err)) == 0);
  CHECK(mb_model_remove(ctx, "m") == 0);
  CHECK(mb_ctx_free(ctx) == 0);
  CHECK(free_now(d) + 64 * MiB >= f0);
  free(ptrs);
  free(file);
  unlink(path);
  printf("ok: tensors backend%s, %.0f MiB arena: 3 offload/restore cycles and a reload, "
         "memory back after offload and unload%s\n",
         stable ? " with stable_addresses" : "", (double)bytes / MiB,
         stable ? ", same tensor pointers throughout" : "");
}

static void test_nvml(mb__dev *d) {
  char why[256] = "";
  if (!mbd_nvml_available(why, sizeof(why))) {
    printf("skip: NVML: %s\n", why);
    return;
  }
  uint64_t cu_total = 0, nv_total = 0, nv_used = 0;
  CHECK(mb__dev_mem_info(d, &cu_total, NULL, err, sizeof(err)) == 0);
  CHECK(mbd_nvml_device_memory(0, &nv_total, &nv_used, err, sizeof(err)) == 0);
  /* NVML counts memory the driver reserves; the two agree within 5%
   * (NVML finds cuda:0 by the PCI bus id the driver gives). */
  char bus[32] = "";
  CHECK(mb__device_pci_bus_id(0, bus, sizeof(bus)) == 0 && strchr(bus, ':') != NULL);
  CHECK(nv_total > 0 && nv_used <= nv_total);
  uint64_t diff = nv_total > cu_total ? nv_total - cu_total : cu_total - nv_total;
  CHECK(diff <= nv_total / 20);
  printf("ok: cuda:0 is %s; NVML total %.0f MiB, cuMemGetInfo total %.0f MiB, NVML used %.0f MiB\n",
         bus, (double)nv_total / MiB, (double)cu_total / MiB, (double)nv_used / MiB);
}

int main(void) {
  mb__dev *d = NULL;
  int rc = mb__dev_open(MB_DEVICE_CUDA, 0, &d, err, sizeof(err));
  if (rc == MB_ENODEV) {
    printf("SKIP: %s\n", err);
    return 77;
  }
  CHECK(rc == 0);
  uint64_t total = 0, free0 = 0, free1 = 0;
  CHECK(mb__dev_mem_info(d, &total, &free0, err, sizeof(err)) == 0 && total > 0);
  /* the total alone comes without a context (cuDeviceTotalMem): the same GPU */
  uint64_t total_nc = 0;
  CHECK(mb_device_mem_info(MB_DEVICE_CUDA, 0, &total_nc, NULL, err, sizeof(err)) == 0);
  CHECK(total_nc + total / 20 >= total && total_nc <= total + total / 20);
  CHECK(mkdtemp(dir) != NULL);
  test_round_trip(d);
  test_async(d);
  test_vrange(d);
  test_loader(d);
  test_backend(d, 0);
  if (vmm_ok)
    test_backend(d, 1);
  test_nvml(d);
  rmdir(dir);
  CHECK(mb__dev_mem_info(d, NULL, &free1, err, sizeof(err)) == 0);
  /* allocations are freed: free memory is back within 64 MiB of the start */
  CHECK(free1 + (64u << 20) >= free0);
  mb__dev_close(d);
  printf("PASS: cuda:0\n");
  return 0;
}
