/*
 * test_cuda_device.c - the tensor engine on a real GPU (run by make
 * test-gpu): a synthetic model of each format is loaded onto cuda:0 by the
 * pipelined loader (several chunk sizes and thread counts), copied back and
 * compared byte for byte with the file; device memory returns to its
 * baseline after everything is freed. Exit 77 when there is no GPU.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "modelbuf/tensors.h"
#include "device.h"
#include "tensor/loader.h"
#include "tensor/mkmodel.h"

#define CHECK(c)                                                 \
  do {                                                           \
    if (!(c)) {                                                  \
      fprintf(stderr, "FAIL line %d: %s (%s)\n", __LINE__, #c, err); \
      exit(1);                                                   \
    }                                                            \
  } while (0)

static char err[512];

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
  char dir[] = "/var/tmp/mb_gpu_XXXXXX";
  CHECK(mkdtemp(dir) != NULL);
  const mb_tensor_format fmts[2] = {MB_TENSOR_FORMAT_SAFETENSORS, MB_TENSOR_FORMAT_GGUF};
  for (int fi = 0; fi < 2; fi++) {
    char path[300];
    snprintf(path, sizeof(path), "%s/m%d", dir, fi);
    mb__mkmodel_opts o = {.path = path, .format = fmts[fi], .size_bytes = 48u << 20, .seed = 7};
    CHECK(mb__mkmodel_write(&o, NULL, err, sizeof(err)) == 0);
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
          CHECK(memcmp(got, want, l.span_bytes[0]) == 0);
          mb__dev_free(d, arena);
        }
    free(want);
    free(got);
    mb__layout_free(&l);
    mb_tensor_file_close(f);
    unlink(path);
  }
  rmdir(dir);
  CHECK(mb__dev_mem_info(d, NULL, &free1, err, sizeof(err)) == 0);
  /* allocations are freed: free memory is back within 64 MiB of the start */
  CHECK(free1 + (64u << 20) >= free0);
  mb__dev_close(d);
  printf("PASS: cuda:0 loader, both formats, %d configurations each\n", 27);
  return 0;
}
