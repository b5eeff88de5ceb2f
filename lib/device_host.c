/*
 * device_host.c - the host device: host memory standing in for a GPU, so
 * that the core, the tensor engine and the daemon run every path on a
 * machine without one. Its capacity is the machine's RAM unless a capacity
 * or budget is configured.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/sysinfo.h>

#include "modelbuf/modelbuf.h"
#include "alloc.h"
#include "device.h"
#ifdef MB_HAVE_CUDA_H
#include "device_cuda.h"
#endif

int mb__host_mem_info(uint64_t *total, uint64_t *free_bytes) {
  uint64_t t = 0, avail = 0;
  int have_avail = 0;
  FILE *f = fopen("/proc/meminfo", "re");
  if (f != NULL) {
    char line[256];
    unsigned long long kb;
    while (fgets(line, sizeof(line), f)) {
      if (sscanf(line, "MemTotal: %llu kB", &kb) == 1)
        t = (uint64_t)kb * 1024;
      else if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) {
        avail = (uint64_t)kb * 1024;
        have_avail = 1;
      }
    }
    fclose(f);
  }
  if (t == 0 || !have_avail) {
    struct sysinfo si;
    if (sysinfo(&si) != 0)
      return MB_EIO;
    if (t == 0)
      t = (uint64_t)si.totalram * si.mem_unit;
    if (!have_avail)
      avail = ((uint64_t)si.freeram + si.bufferram) * si.mem_unit;
  }
  if (total)
    *total = t;
  if (free_bytes)
    *free_bytes = avail;
  return 0;
}

int mb__device_mem_info(mb_device_kind kind, int ordinal, uint64_t *total, uint64_t *free_bytes,
                        char *err, size_t err_len) {
  if (kind == MB_DEVICE_HOST) {
    int rc = mb__host_mem_info(total, free_bytes);
    if (rc != 0)
      mb__set_err(err, err_len, "cannot read host memory size");
    return rc;
  }
#ifdef MB_HAVE_CUDA_H
  mb__cuda *c = NULL;
  int rc = mb__cuda_open(ordinal, &c, err, err_len);
  if (rc != 0)
    return rc;
  rc = mb__cuda_mem_info(c, total, free_bytes, err, err_len);
  mb__cuda_close(c);
  return rc;
#else
  mb__set_err(err, err_len,
              "cuda:%d: CUDA devices are not measured by this build; give capacity_bytes", ordinal);
  return MB_ENODEV;
#endif
}

/* ---- device handles ---------------------------------------------------- */

struct mb__dev {
  mb_device_kind kind;
  int ordinal;
#ifdef MB_HAVE_CUDA_H
  mb__cuda *cuda; /* kind MB_DEVICE_CUDA */
#endif
};

#ifdef MB_HAVE_CUDA_H
#define CUDA_OR(d, call) \
  if ((d)->cuda != NULL) \
  return call
#else
#define CUDA_OR(d, call) (void)0
#endif

void *mb__aligned_alloc(size_t align, size_t bytes) {
  if (bytes > SIZE_MAX - align - sizeof(void *))
    return NULL;
  char *raw = mb__malloc(bytes + align + sizeof(void *));
  if (raw == NULL)
    return NULL;
  uintptr_t a = ((uintptr_t)raw + sizeof(void *) + align - 1) & ~(uintptr_t)(align - 1);
  ((void **)a)[-1] = raw;
  return (void *)a;
}

void mb__aligned_free(void *p) {
  if (p != NULL)
    mb__free(((void **)p)[-1]);
}

int mb__dev_open(mb_device_kind kind, int ordinal, mb__dev **out, char *err, size_t err_len) {
  *out = NULL;
#ifdef MB_HAVE_CUDA_H
  mb__cuda *c = NULL;
  if (kind == MB_DEVICE_CUDA) {
    int rc = mb__cuda_open(ordinal, &c, err, err_len);
    if (rc != 0)
      return rc;
  }
#else
  if (kind != MB_DEVICE_HOST) {
    mb__set_err(err, err_len, "cuda:%d: this build has no CUDA support (cuda.h was missing)",
                ordinal);
    return MB_ENODEV;
  }
#endif
  mb__dev *d = mb__calloc(1, sizeof(*d));
  if (d == NULL) {
#ifdef MB_HAVE_CUDA_H
    mb__cuda_close(c);
#endif
    mb__set_err(err, err_len, "out of memory");
    return MB_ENOMEM;
  }
  d->kind = kind;
  d->ordinal = ordinal;
#ifdef MB_HAVE_CUDA_H
  d->cuda = c;
#endif
  *out = d;
  return 0;
}

void mb__dev_close(mb__dev *d) {
#ifdef MB_HAVE_CUDA_H
  if (d != NULL)
    mb__cuda_close(d->cuda);
#endif
  mb__free(d);
}

mb_device_kind mb__dev_kind(const mb__dev *d) { return d->kind; }

int mb__dev_mem_info(mb__dev *d, uint64_t *total, uint64_t *free_bytes, char *err,
                     size_t err_len) {
  return mb__device_mem_info(d->kind, d->ordinal, total, free_bytes, err, err_len);
}

int mb__dev_alloc(mb__dev *d, size_t bytes, uint64_t *dptr, char *err, size_t err_len) {
  CUDA_OR(d, mb__cuda_alloc(d->cuda, bytes, dptr, err, err_len));
  *dptr = 0;
  void *p = bytes > 0 ? mb__aligned_alloc(MB_DEV_ALIGN, bytes) : NULL;
  if (p == NULL) {
    mb__set_err(err, err_len, "host device: cannot allocate %zu bytes", bytes);
    return MB_ENOMEM;
  }
  *dptr = (uint64_t)(uintptr_t)p;
  return 0;
}

void mb__dev_free(mb__dev *d, uint64_t dptr) {
  if (dptr == 0)
    return;
#ifdef MB_HAVE_CUDA_H
  if (d->cuda != NULL) {
    mb__cuda_free(d->cuda, dptr);
    return;
  }
#endif
  mb__aligned_free((void *)(uintptr_t)dptr);
}

int mb__dev_host_alloc(mb__dev *d, size_t bytes, void **out, char *err, size_t err_len) {
  CUDA_OR(d, mb__cuda_host_alloc(d->cuda, bytes, out, err, err_len));
  *out = bytes > 0 ? mb__aligned_alloc(MB_DEV_ALIGN, bytes) : NULL;
  if (*out == NULL) {
    mb__set_err(err, err_len, "cannot allocate %zu bytes of staging memory", bytes);
    return MB_ENOMEM;
  }
  return 0;
}

void mb__dev_host_free(mb__dev *d, void *p) {
#ifdef MB_HAVE_CUDA_H
  if (d->cuda != NULL) {
    mb__cuda_host_free(d->cuda, p);
    return;
  }
#endif
  mb__aligned_free(p);
}

int mb__dev_h2d(mb__dev *d, uint64_t dst, const void *src, size_t n, int stream, char *err,
                size_t err_len) {
  CUDA_OR(d, mb__cuda_copy(d->cuda, 1, dst, (void *)(uintptr_t)src, n, stream, err, err_len));
  (void)d, (void)stream, (void)err, (void)err_len;
  memcpy((void *)(uintptr_t)dst, src, n);
  return 0;
}

int mb__dev_d2h(mb__dev *d, void *dst, uint64_t src, size_t n, int stream, char *err,
                size_t err_len) {
  CUDA_OR(d, mb__cuda_copy(d->cuda, 0, src, dst, n, stream, err, err_len));
  (void)d, (void)stream, (void)err, (void)err_len;
  memcpy(dst, (const void *)(uintptr_t)src, n);
  return 0;
}
