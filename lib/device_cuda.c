/*
 * device_cuda.c - the CUDA device of the tensor engine through the driver
 * API, loaded at run time with dlopen("libcuda.so.1"); cuda.h gives only
 * the types and prototypes (the library never links libcuda).
 *
 * Copies run on a few streams of the device's primary context. The
 * synchronous copy waits for its stream before it returns, so callers on
 * different threads (the loader's readers) copy concurrently; the
 * asynchronous copy records an event after the copy on its stream and
 * returns it, so one caller keeps several copies in flight and waits for
 * each event (cuEventSynchronize). Events come from a small per-device free
 * list so a copy does not create and destroy one each time.
 *
 * Stable address ranges use the virtual memory management calls
 * (cuMemAddressReserve / cuMemCreate / cuMemMap / cuMemSetAccess), loaded
 * only if the driver has them: an older driver still serves everything else.
 *
 * Locks: drv is written once under pthread_once and read-only after; each
 * device's ev_mu guards its event free list only (never held across a
 * driver call that may block).
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
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
  __typeof__(&cuDeviceGetCount) device_count;
  __typeof__(&cuDeviceGetAttribute) device_attr;
  __typeof__(&cuDeviceTotalMem) total_mem;     /* optional */
  __typeof__(&cuDeviceGetPCIBusId) pci_bus_id; /* optional */
  __typeof__(&cuEventCreate) event_create;
  __typeof__(&cuEventRecord) event_record;
  __typeof__(&cuEventSynchronize) event_sync;
  __typeof__(&cuEventDestroy) event_destroy;
  __typeof__(&cuMemHostRegister) host_register;
  __typeof__(&cuMemHostUnregister) host_unregister;
  /* virtual memory management: NULL when the driver lacks it */
  __typeof__(&cuMemGetAllocationGranularity) va_granularity;
  __typeof__(&cuMemAddressReserve) va_reserve;
  __typeof__(&cuMemAddressFree) va_free;
  __typeof__(&cuMemCreate) va_create;
  __typeof__(&cuMemRelease) va_release;
  __typeof__(&cuMemMap) va_map;
  __typeof__(&cuMemUnmap) va_unmap;
  __typeof__(&cuMemSetAccess) va_access;
  int n_gpus;
} drv = {.once = PTHREAD_ONCE_INIT};

#define N_SPARE_EVENTS 32

struct mb__cuda {
  int ordinal;
  CUdevice dev;
  CUcontext ctx;
  CUstream streams[N_STREAMS];
  pthread_mutex_t ev_mu; /* guards spare and n_spare */
  CUevent spare[N_SPARE_EVENTS];
  int n_spare;
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

/* An optional symbol: the field stays NULL when the driver lacks it. */
#define LOAD_OPT(field, name)                               \
  do {                                                      \
    void *p_ = dlsym(dl, name);                             \
    if (p_ != NULL)                                         \
      memcpy(&drv.field, &p_, sizeof(p_));                  \
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
  LOAD(device_count, "cuDeviceGetCount");
  LOAD(device_attr, "cuDeviceGetAttribute");
  LOAD(event_create, "cuEventCreate");
  LOAD(event_record, "cuEventRecord");
  LOAD(event_sync, "cuEventSynchronize");
  LOAD(event_destroy, "cuEventDestroy_v2");
  LOAD(host_register, "cuMemHostRegister_v2");
  LOAD(host_unregister, "cuMemHostUnregister");
  LOAD_OPT(pci_bus_id, "cuDeviceGetPCIBusId");
  LOAD_OPT(total_mem, "cuDeviceTotalMem_v2");
  LOAD_OPT(va_granularity, "cuMemGetAllocationGranularity");
  LOAD_OPT(va_reserve, "cuMemAddressReserve");
  LOAD_OPT(va_free, "cuMemAddressFree");
  LOAD_OPT(va_create, "cuMemCreate");
  LOAD_OPT(va_release, "cuMemRelease");
  LOAD_OPT(va_map, "cuMemMap");
  LOAD_OPT(va_unmap, "cuMemUnmap");
  LOAD_OPT(va_access, "cuMemSetAccess");
  CUresult r = drv.init(0);
  if (r != CUDA_SUCCESS) {
    snprintf(drv.why, sizeof(drv.why), "cuInit failed (CUDA error %d): no usable GPU", (int)r);
    return; /* the library stays loaded: the process may hold its symbols */
  }
  int n = 0;
  r = drv.device_count(&n);
  if (r != CUDA_SUCCESS || n <= 0) {
    snprintf(drv.why, sizeof(drv.why), "the CUDA driver sees no GPU");
    return;
  }
  drv.n_gpus = n;
  drv.ok = 1;
}

static int cu_fail(CUresult r, const char *what, int code, char *err, size_t err_len) {
  const char *s = NULL;
  if (drv.err_string == NULL || drv.err_string(r, &s) != CUDA_SUCCESS || s == NULL)
    s = "unknown error";
  mb__set_err(err, err_len, "cuda: %s: %s (error %d)", what, s, (int)r);
  return code;
}

int mb__cuda_usable(char *why, size_t why_len) {
  pthread_once(&drv.once, load_driver);
  if (!drv.ok && why != NULL && why_len > 0)
    snprintf(why, why_len, "%s", drv.why);
  return drv.ok;
}

int mb__cuda_pci_bus_id(int ordinal, char *buf, size_t len) {
  pthread_once(&drv.once, load_driver);
  if (!drv.ok || drv.pci_bus_id == NULL)
    return MB_ENOTSUP;
  if (ordinal < 0 || ordinal >= drv.n_gpus || len < 16 || len > 256)
    return MB_ENODEV;
  CUdevice dev;
  if (drv.device_get(&dev, ordinal) != CUDA_SUCCESS ||
      drv.pci_bus_id(buf, (int)len, dev) != CUDA_SUCCESS)
    return MB_ENODEV;
  return 0;
}

int mb__cuda_total_mem(int ordinal, uint64_t *total, char *err, size_t err_len) {
  pthread_once(&drv.once, load_driver);
  if (!drv.ok) {
    mb__set_err(err, err_len, "cuda:%d: %s", ordinal, drv.why);
    return MB_ENODEV;
  }
  if (ordinal < 0 || ordinal >= drv.n_gpus) {
    mb__set_err(err, err_len, "cuda:%d: no such GPU (the driver sees %d)", ordinal, drv.n_gpus);
    return MB_ENODEV;
  }
  if (drv.total_mem == NULL)
    return MB_ENOTSUP;
  CUdevice dev;
  CUresult r = drv.device_get(&dev, ordinal);
  if (r != CUDA_SUCCESS)
    return cu_fail(r, "cuDeviceGet", MB_ENODEV, err, err_len);
  size_t t = 0;
  r = drv.total_mem(&t, dev);
  if (r != CUDA_SUCCESS)
    return cu_fail(r, "cuDeviceTotalMem", MB_EIO, err, err_len);
  if (total)
    *total = t;
  return 0;
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
  pthread_mutex_init(&c->ev_mu, NULL);
  if (ordinal < 0 || ordinal >= drv.n_gpus) {
    pthread_mutex_destroy(&c->ev_mu);
    mb__free(c);
    mb__set_err(err, err_len, "cuda:%d: no such GPU (the driver sees %d)", ordinal, drv.n_gpus);
    return MB_ENODEV;
  }
  CUresult r = drv.device_get(&c->dev, ordinal);
  if (r != CUDA_SUCCESS) {
    pthread_mutex_destroy(&c->ev_mu);
    mb__free(c);
    return cu_fail(r, "cuDeviceGet", MB_ENODEV, err, err_len);
  }
  r = drv.ctx_retain(&c->ctx, c->dev);
  if (r != CUDA_SUCCESS) {
    pthread_mutex_destroy(&c->ev_mu);
    mb__free(c);
    return cu_fail(r, "cuDevicePrimaryCtxRetain", MB_ENODEV, err, err_len);
  }
  r = drv.ctx_set(c->ctx);
  if (r != CUDA_SUCCESS) {
    drv.ctx_release(c->dev);
    pthread_mutex_destroy(&c->ev_mu);
    mb__free(c);
    return cu_fail(r, "cuCtxSetCurrent", MB_ENODEV, err, err_len);
  }
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
  for (int i = 0; i < c->n_spare; i++)
    drv.event_destroy(c->spare[i]);
  for (int i = 0; i < N_STREAMS; i++)
    if (c->streams[i] != NULL)
      drv.stream_destroy(c->streams[i]);
  drv.ctx_release(c->dev);
  pthread_mutex_destroy(&c->ev_mu);
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

/* The copy stream for a caller's stream number (any int; -INT_MIN is not
 * representable, so the index is taken in unsigned arithmetic). */
static CUstream pick_stream(const mb__cuda *c, int stream) {
  unsigned u = stream < 0 ? 0u - (unsigned)stream : (unsigned)stream;
  return c->streams[u % N_STREAMS];
}

int mb__cuda_copy(mb__cuda *c, int to_device, uint64_t dptr, void *host, size_t n, int stream,
                  char *err, size_t err_len) {
  CUstream s = pick_stream(c, stream);
  drv.ctx_set(c->ctx);
  CUresult r = to_device ? drv.h2d((CUdeviceptr)dptr, host, n, s)
                         : drv.d2h(host, (CUdeviceptr)dptr, n, s);
  if (r == CUDA_SUCCESS)
    r = drv.stream_sync(s);
  if (r != CUDA_SUCCESS)
    return cu_fail(r, to_device ? "copy to device" : "copy from device", MB_EIO, err, err_len);
  return 0;
}

/* ---- asynchronous copies ------------------------------------------------ */

static CUresult take_event(mb__cuda *c, CUevent *out) {
  pthread_mutex_lock(&c->ev_mu);
  if (c->n_spare > 0) {
    *out = c->spare[--c->n_spare];
    pthread_mutex_unlock(&c->ev_mu);
    return CUDA_SUCCESS;
  }
  pthread_mutex_unlock(&c->ev_mu);
  return drv.event_create(out, CU_EVENT_DISABLE_TIMING);
}

static void give_event(mb__cuda *c, CUevent e) {
  pthread_mutex_lock(&c->ev_mu);
  if (c->n_spare < N_SPARE_EVENTS) {
    c->spare[c->n_spare++] = e;
    e = NULL;
  }
  pthread_mutex_unlock(&c->ev_mu);
  if (e != NULL)
    drv.event_destroy(e);
}

int mb__cuda_copy_async(mb__cuda *c, int to_device, uint64_t dptr, void *host, size_t n,
                        int stream, void **ev, char *err, size_t err_len) {
  CUstream s = pick_stream(c, stream);
  CUevent e = NULL;
  *ev = NULL;
  drv.ctx_set(c->ctx);
  CUresult r = take_event(c, &e);
  if (r != CUDA_SUCCESS)
    return cu_fail(r, "cuEventCreate", MB_EIO, err, err_len);
  r = to_device ? drv.h2d((CUdeviceptr)dptr, host, n, s) : drv.d2h(host, (CUdeviceptr)dptr, n, s);
  if (r == CUDA_SUCCESS)
    r = drv.event_record(e, s);
  if (r != CUDA_SUCCESS) {
    /* A copy may have been queued before the record failed: nothing of it
     * may be in flight when we return. */
    drv.stream_sync(s);
    give_event(c, e);
    return cu_fail(r, to_device ? "copy to device" : "copy from device", MB_EIO, err, err_len);
  }
  *ev = e;
  return 0;
}

int mb__cuda_event_wait(mb__cuda *c, void *ev, char *err, size_t err_len) {
  CUevent e = ev;
  drv.ctx_set(c->ctx);
  CUresult r = drv.event_sync(e);
  if (r != CUDA_SUCCESS) {
    drv.event_destroy(e); /* an event in an error state is not reused */
    return cu_fail(r, "waiting for a copy", MB_EIO, err, err_len);
  }
  give_event(c, e);
  return 0;
}

/* ---- page-locking ------------------------------------------------------- */

int mb__cuda_host_register(mb__cuda *c, void *p, size_t bytes, char *err, size_t err_len) {
  drv.ctx_set(c->ctx); /* called from the pinning threads: set it on each */
  CUresult r = drv.host_register(p, bytes, CU_MEMHOSTREGISTER_PORTABLE);
  if (r != CUDA_SUCCESS)
    return cu_fail(r, "cuMemHostRegister", MB_ENOMEM, err, err_len);
  return 0;
}

void mb__cuda_host_unregister(mb__cuda *c, void *p) {
  if (p == NULL)
    return;
  drv.ctx_set(c->ctx);
  drv.host_unregister(p);
}

/* ---- virtual memory management ------------------------------------------ */

static void va_prop(const mb__cuda *c, CUmemAllocationProp *prop) {
  memset(prop, 0, sizeof(*prop));
  prop->type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop->location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  prop->location.id = (int)c->dev;
}

int mb__cuda_va_reserve(mb__cuda *c, size_t *bytes, uint64_t *addr, char *err, size_t err_len) {
  *addr = 0;
  if (drv.va_granularity == NULL || drv.va_reserve == NULL || drv.va_free == NULL ||
      drv.va_create == NULL || drv.va_release == NULL || drv.va_map == NULL ||
      drv.va_unmap == NULL || drv.va_access == NULL) {
    mb__set_err(err, err_len,
                "cuda:%d: the driver has no virtual memory management (cuMemCreate); "
                "stable addresses need CUDA 10.2 or later",
                c->ordinal);
    return MB_ENOTSUP;
  }
  drv.ctx_set(c->ctx);
  int vmm = 0;
  CUresult r =
      drv.device_attr(&vmm, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, c->dev);
  if (r != CUDA_SUCCESS || !vmm) {
    mb__set_err(err, err_len, "cuda:%d: this GPU does not support virtual memory management",
                c->ordinal);
    return MB_ENOTSUP;
  }
  CUmemAllocationProp prop;
  va_prop(c, &prop);
  /* cuMemCreate/cuMemMap sizes must be multiples of the minimum
   * granularity; the recommended one (a multiple of it) performs better. */
  size_t gran = 0, rec = 0;
  r = drv.va_granularity(&gran, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM);
  if (r != CUDA_SUCCESS)
    return cu_fail(r, "cuMemGetAllocationGranularity", MB_ENOTSUP, err, err_len);
  if (gran == 0)
    gran = 2u << 20;
  if (drv.va_granularity(&rec, &prop, CU_MEM_ALLOC_GRANULARITY_RECOMMENDED) == CUDA_SUCCESS &&
      rec > gran && rec % gran == 0)
    gran = rec;
  size_t want = *bytes > 0 ? *bytes : 1;
  if (want > SIZE_MAX - gran) {
    mb__set_err(err, err_len, "cuda:%d: cannot reserve %zu bytes", c->ordinal, want);
    return MB_ENOMEM;
  }
  size_t n = (want + gran - 1) / gran * gran;
  CUdeviceptr p = 0;
  r = drv.va_reserve(&p, n, 0, 0, 0); /* default alignment: the granularity */
  if (r != CUDA_SUCCESS)
    return cu_fail(r, "cuMemAddressReserve", MB_ENOMEM, err, err_len);
  *bytes = n;
  *addr = (uint64_t)p;
  return 0;
}

int mb__cuda_va_map(mb__cuda *c, uint64_t addr, size_t bytes, uint64_t *handle, char *err,
                    size_t err_len) {
  CUmemAllocationProp prop;
  va_prop(c, &prop);
  CUmemGenericAllocationHandle h = 0;
  drv.ctx_set(c->ctx);
  CUresult r = drv.va_create(&h, bytes, &prop, 0);
  if (r != CUDA_SUCCESS)
    return cu_fail(r, "cuMemCreate", MB_ENOMEM, err, err_len);
  r = drv.va_map((CUdeviceptr)addr, bytes, 0, h, 0);
  if (r != CUDA_SUCCESS) {
    drv.va_release(h);
    return cu_fail(r, "cuMemMap", MB_ENOMEM, err, err_len);
  }
  CUmemAccessDesc access;
  memset(&access, 0, sizeof(access));
  access.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  access.location.id = (int)c->dev;
  access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
  r = drv.va_access((CUdeviceptr)addr, bytes, &access, 1);
  if (r != CUDA_SUCCESS) {
    drv.va_unmap((CUdeviceptr)addr, bytes);
    drv.va_release(h);
    return cu_fail(r, "cuMemSetAccess", MB_ENOMEM, err, err_len);
  }
  *handle = (uint64_t)h;
  return 0;
}

void mb__cuda_va_unmap(mb__cuda *c, uint64_t addr, size_t bytes, uint64_t handle) {
  drv.ctx_set(c->ctx);
  /* The physical memory is freed once it is both unmapped and released. */
  drv.va_unmap((CUdeviceptr)addr, bytes);
  drv.va_release((CUmemGenericAllocationHandle)handle);
}

void mb__cuda_va_free(mb__cuda *c, uint64_t addr, size_t bytes) {
  drv.ctx_set(c->ctx);
  drv.va_free((CUdeviceptr)addr, bytes);
}
