/*
 * device_cuda.c - the CUDA device of the tensor engine through the driver
 * API, loaded at run time with dlopen("libcuda.so.1"); cuda.h gives only
 * the types and prototypes (the library never links libcuda). Copies run on
 * a few streams of the device's primary context, each waited for before the
 * call returns, so callers on different threads (the loader's readers) copy
 * concurrently.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include <cuda.h>

#include "modelbuf/modelbuf.h"
#include "alloc.h"
#include "device_cuda.h"

#define N_STREAMS 4

static struct {
  pthread_once_t once;
  char why[200];
  int ok;
  __typeof__(&cuInit) init;
  __typeof__(&cuGetErrorString) err_string;
  __typeof__(&cuDeviceGet) device_get;
  __typeof__(&cuDevicePrimaryCtxRetain) ctx_retain;
  __typeof__(&cuDevicePrimaryCtxRelease) ctx_release;
  __typeof__(&cuCtxSetCurrent) ctx_set;
  __typeof__(&cuMemAlloc) mem_alloc;
  __typeof__(&cuMemFree) mem_free;
  __typeof__(&cuMemHostAlloc) host_alloc;
  __typeof__(&cuMemFreeHost) host_free;
  __typeof__(&cuMemcpyHtoDAsync) h2d;
  __typeof__(&cuMemcpyDtoHAsync) d2h;
  __typeof__(&cuStreamCreate) stream_create;
  __typeof__(&cuStreamDestroy) stream_destroy;
  __typeof__(&cuStreamSynchronize) stream_sync;
  __typeof__(&cuMemGetInfo) mem_info;
} drv = {.once = PTHREAD_ONCE_INIT};

struct mb__cuda {
  int ordinal;
  CUdevice dev;
  CUcontext ctx;
  CUstream streams[N_STREAMS];
};

/* dlsym into a function pointer without a cast between object and function
 * pointers. */
#define LOAD(field, name)                                   \
  do {                                                      \
    void *p_ = dlsym(dl, name);                             \
    if (p_ == NULL) {                                       \
      snprintf(drv.why, sizeof(drv.why), "the CUDA driver lacks %s", name); \
      dlclose(dl);                                          \
      return;                                               \
    }                                                       \
    memcpy(&drv.field, &p_, sizeof(p_));                    \
  } while (0)

static void load_driver(void) {
  void *dl = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (dl == NULL) {
    snprintf(drv.why, sizeof(drv.why), "no CUDA driver (libcuda.so.1 not found)");
    return;
  }
  LOAD(init, "cuInit");
  LOAD(err_string, "cuGetErrorString");
  LOAD(device_get, "cuDeviceGet");
  LOAD(ctx_retain, "cuDevicePrimaryCtxRetain");
  LOAD(ctx_release, "cuDevicePrimaryCtxRelease_v2");
  LOAD(ctx_set, "cuCtxSetCurrent");
  LOAD(mem_alloc, "cuMemAlloc_v2");
  LOAD(mem_free, "cuMemFree_v2");
  LOAD(host_alloc, "cuMemHostAlloc");
  LOAD(host_free, "cuMemFreeHost");
  LOAD(h2d, "cuMemcpyHtoDAsync_v2");
  LOAD(d2h, "cuMemcpyDtoHAsync_v2");
  LOAD(stream_create, "cuStreamCreate");
  LOAD(stream_destroy, "cuStreamDestroy_v2");
  LOAD(stream_sync, "cuStreamSynchronize");
  LOAD(mem_info, "cuMemGetInfo_v2");
  CUresult r = drv.init(0);
  if (r != CUDA_SUCCESS) {
    snprintf(drv.why, sizeof(drv.why), "cuInit failed (CUDA error %d): no usable GPU", (int)r);
    return; /* the library stays loaded: the process may hold its symbols */
  }
  drv.ok = 1;
}

static int cu_fail(CUresult r, const char *what, int code, char *err, size_t err_len) {
  const char *s = NULL;
  if (drv.err_string == NULL || drv.err_string(r, &s) != CUDA_SUCCESS || s == NULL)
    s = "unknown error";
  mb__set_err(err, err_len, "cuda: %s: %s (error %d)", what, s, (int)r);
  return code;
}

int mb__cuda_open(int ordinal, mb__cuda **out, char *err, size_t err_len) {
  *out = NULL;
  pthread_once(&drv.once, load_driver);
  if (!drv.ok) {
    mb__set_err(err, err_len, "cuda:%d: %s", ordinal, drv.why);
    return MB_ENODEV;
  }
  mb__cuda *c = mb__calloc(1, sizeof(*c));
  if (c == NULL) {
    mb__set_err(err, err_len, "out of memory");
    return MB_ENOMEM;
  }
  c->ordinal = ordinal;
  CUresult r = drv.device_get(&c->dev, ordinal);
  if (r != CUDA_SUCCESS) {
    mb__free(c);
    return cu_fail(r, "cuDeviceGet", MB_ENODEV, err, err_len);
  }
  r = drv.ctx_retain(&c->ctx, c->dev);
  if (r != CUDA_SUCCESS) {
    mb__free(c);
    return cu_fail(r, "cuDevicePrimaryCtxRetain", MB_ENODEV, err, err_len);
  }
  drv.ctx_set(c->ctx);
  for (int i = 0; i < N_STREAMS; i++) {
    r = drv.stream_create(&c->streams[i], CU_STREAM_NON_BLOCKING);
    if (r != CUDA_SUCCESS) {
      mb__cuda_close(c);
      return cu_fail(r, "cuStreamCreate", MB_ENODEV, err, err_len);
    }
  }
  *out = c;
  return 0;
}

void mb__cuda_close(mb__cuda *c) {
  if (c == NULL)
    return;
  drv.ctx_set(c->ctx);
  for (int i = 0; i < N_STREAMS; i++)
    if (c->streams[i] != NULL)
      drv.stream_destroy(c->streams[i]);
  drv.ctx_release(c->dev);
  mb__free(c);
}

int mb__cuda_mem_info(mb__cuda *c, uint64_t *total, uint64_t *free_bytes, char *err,
                      size_t err_len) {
  size_t f = 0, t = 0;
  drv.ctx_set(c->ctx);
  CUresult r = drv.mem_info(&f, &t);
  if (r != CUDA_SUCCESS)
    return cu_fail(r, "cuMemGetInfo", MB_EIO, err, err_len);
  if (total)
    *total = t;
  if (free_bytes)
    *free_bytes = f;
  return 0;
}

int mb__cuda_alloc(mb__cuda *c, size_t bytes, uint64_t *dptr, char *err, size_t err_len) {
  CUdeviceptr p = 0;
  *dptr = 0;
  drv.ctx_set(c->ctx);
  CUresult r = drv.mem_alloc(&p, bytes);
  if (r != CUDA_SUCCESS)
    return cu_fail(r, "cuMemAlloc", MB_ENOMEM, err, err_len);
  *dptr = (uint64_t)p;
  return 0;
}

void mb__cuda_free(mb__cuda *c, uint64_t dptr) {
  if (dptr == 0)
    return;
  drv.ctx_set(c->ctx);
  drv.mem_free((CUdeviceptr)dptr);
}

int mb__cuda_host_alloc(mb__cuda *c, size_t bytes, void **out, char *err, size_t err_len) {
  *out = NULL;
  drv.ctx_set(c->ctx);
  CUresult r = drv.host_alloc(out, bytes, CU_MEMHOSTALLOC_PORTABLE);
  if (r != CUDA_SUCCESS)
    return cu_fail(r, "cuMemHostAlloc", MB_ENOMEM, err, err_len);
  return 0;
}

void mb__cuda_host_free(mb__cuda *c, void *p) {
  if (p == NULL)
    return;
  drv.ctx_set(c->ctx);
  drv.host_free(p);
}

int mb__cuda_copy(mb__cuda *c, int to_device, uint64_t dptr, void *host, size_t n, int stream,
                  char *err, size_t err_len) {
  CUstream s = c->streams[(stream < 0 ? -stream : stream) % N_STREAMS];
  drv.ctx_set(c->ctx);
  CUresult r = to_device ? drv.h2d((CUdeviceptr)dptr, host, n, s)
                         : drv.d2h(host, (CUdeviceptr)dptr, n, s);
  if (r == CUDA_SUCCESS)
    r = drv.stream_sync(s);
  if (r != CUDA_SUCCESS)
    return cu_fail(r, to_device ? "copy to device" : "copy from device", MB_EIO, err, err_len);
  return 0;
}
