/*
 * device_host.c - the host device: host memory standing in for a GPU, so
 * that the core, the tensor engine and the daemon run every path on a
 * machine without one. Its capacity is the machine's RAM unless a capacity
 * or budget is configured.
 *
 * It is also the one entry point of the device interface (device.h): a
 * handle opened on a CUDA device dispatches each call to device_cuda.c, and
 * mb__dev_open_fallback gives the host device where CUDA is asked for but
 * no driver or GPU is there.
 *
 * Locks: shared_mu guards the process-wide handles of mb__dev_shared (held
 * while one is opened, which is rare and short; mb__dev_open_fallback may
 * take notice_mu inside it). notice_mu guards the once-per-process fallback
 * line. The pinning threads share only their pin_job's atomics.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/sysinfo.h>
#include <unistd.h>

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

int mb__device_pci_bus_id(int ordinal, char *buf, size_t len) {
#ifdef MB_HAVE_CUDA_H
  return mb__cuda_pci_bus_id(ordinal, buf, len);
#else
  (void)ordinal, (void)buf, (void)len;
  return MB_ENOTSUP;
#endif
}

int mb_device_mem_info(mb_device_kind kind, int ordinal, uint64_t *total, uint64_t *free_bytes,
                       char *err, size_t err_len) {
  if (kind == MB_DEVICE_HOST) {
    int rc = mb__host_mem_info(total, free_bytes);
    if (rc != 0)
      mb__set_err(err, err_len, "cannot read host memory size");
    return rc;
  }
#ifdef MB_HAVE_CUDA_H
  /* The total alone needs no context: retaining the primary context only
   * to read it would create one on the GPU (time and device memory, and a
   * refusal on an exclusive-process GPU that a worker holds) and destroy
   * it again when nothing else holds it. */
  if (free_bytes == NULL) {
    int rc = mb__cuda_total_mem(ordinal, total, err, err_len);
    if (rc != MB_ENOTSUP)
      return rc;
  }
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
#define CUDA_OR(d, call) (void)(d)
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

/* ---- the host device in place of a missing GPU -------------------------- */

static atomic_uint fallbacks;

int mb__dev_open_fallback(mb_device_kind kind, int ordinal, mb__dev **out, char *err,
                          size_t err_len) {
  char why[256] = "";
  int rc = mb__dev_open(kind, ordinal, out, why, sizeof(why));
  if (rc == 0 || rc != MB_ENODEV || kind != MB_DEVICE_CUDA) {
    if (rc != 0)
      mb__set_err(err, err_len, "%s", why);
    return rc;
  }
#ifdef MB_HAVE_CUDA_H
  /* A machine with GPUs but not this ordinal: a configuration error. */
  if (mb__cuda_usable(NULL, 0))
    goto no_fallback;
#endif
  rc = mb__dev_open(MB_DEVICE_HOST, 0, out, err, err_len);
  if (rc != 0)
    return rc;
  atomic_fetch_add(&fallbacks, 1);
  /* Said to the caller, who decides who hears it: the library prints
   * nothing. */
  mb__set_err(err, err_len, "%s; using the host device (host memory) instead", why);
  return 0;
#ifdef MB_HAVE_CUDA_H
no_fallback:
  mb__set_err(err, err_len, "%s", why);
  return rc;
#endif
}

unsigned mb__dev_fallback_count(void) { return atomic_load(&fallbacks); }

#define SHARED_MAX 16 /* CUDA ordinals 0..15, plus the host device */

static pthread_mutex_t shared_mu = PTHREAD_MUTEX_INITIALIZER;
static mb__dev *shared_host;
static mb__dev *shared_cuda[SHARED_MAX];

int mb__dev_shared(mb_device_kind kind, int ordinal, mb__dev **out, char *err, size_t err_len) {
  *out = NULL;
  if (kind == MB_DEVICE_CUDA && (ordinal < 0 || ordinal >= SHARED_MAX)) {
    mb__set_err(err, err_len, "cuda:%d: no such device", ordinal);
    return MB_ENODEV;
  }
  mb__dev **slot = kind == MB_DEVICE_CUDA ? &shared_cuda[ordinal] : &shared_host;
  int rc = 0;
  pthread_mutex_lock(&shared_mu);
  if (*slot == NULL)
    rc = mb__dev_open_fallback(kind, kind == MB_DEVICE_CUDA ? ordinal : 0, slot, err, err_len);
  *out = *slot;
  pthread_mutex_unlock(&shared_mu);
  return rc;
}

int mb__dev_mem_info(mb__dev *d, uint64_t *total, uint64_t *free_bytes, char *err,
                     size_t err_len) {
  /* An open CUDA handle asks its own context (no second open of the device,
   * with its streams, for each figure). */
  CUDA_OR(d, mb__cuda_mem_info(d->cuda, total, free_bytes, err, err_len));
  return mb_device_mem_info(d->kind, d->ordinal, total, free_bytes, err, err_len);
}

/*
 * Host memory for a model's bytes. Large ones are aligned to 2 MiB and
 * marked for transparent huge pages: a fresh arena is filled by the loader
 * page by page, and one fault per 2 MiB instead of per 4 KiB is most of the
 * difference between a load of the page cache at a few GB/s and one at
 * memory speed (docs/PERFORMANCE.md). A kernel without THP ignores it.
 */
#define HUGE_ALIGN ((size_t)2 << 20)

static void *host_big_alloc(size_t bytes) {
  if (bytes < 2 * HUGE_ALIGN)
    return mb__aligned_alloc(MB_DEV_ALIGN, bytes);
  void *p = mb__aligned_alloc(HUGE_ALIGN, bytes);
#ifdef MADV_HUGEPAGE
  if (p != NULL)
    (void)madvise(p, bytes & ~(HUGE_ALIGN - 1), MADV_HUGEPAGE);
#endif
  return p;
}

int mb__dev_alloc(mb__dev *d, size_t bytes, uint64_t *dptr, char *err, size_t err_len) {
  CUDA_OR(d, mb__cuda_alloc(d->cuda, bytes, dptr, err, err_len));
  *dptr = 0;
  void *p = bytes > 0 ? host_big_alloc(bytes) : NULL;
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
  (void)d;
  mb__aligned_free((void *)(uintptr_t)dptr);
}

int mb__dev_populate(mb__dev *d, uint64_t dptr, size_t bytes) {
#ifdef MB_HAVE_CUDA_H
  if (d->cuda != NULL)
    return MB_ENOTSUP;
#endif
  (void)d;
#ifdef MADV_POPULATE_WRITE
  return madvise((void *)(uintptr_t)dptr, bytes, MADV_POPULATE_WRITE) == 0 ? 0 : MB_ENOTSUP;
#else
  (void)dptr, (void)bytes;
  return MB_ENOTSUP;
#endif
}

int mb__dev_host_alloc(mb__dev *d, size_t bytes, void **out, char *err, size_t err_len) {
  CUDA_OR(d, mb__cuda_host_alloc(d->cuda, bytes, out, err, err_len));
  *out = bytes > 0 ? host_big_alloc(bytes) : NULL;
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
  (void)d;
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

/* ---- asynchronous copies ------------------------------------------------ */

int mb__dev_h2d_async(mb__dev *d, uint64_t dst, const void *src, size_t n, int stream,
                      mb__dev_event **ev, char *err, size_t err_len) {
  *ev = NULL;
#ifdef MB_HAVE_CUDA_H
  if (d->cuda != NULL) {
    void *e = NULL;
    int rc = mb__cuda_copy_async(d->cuda, 1, dst, (void *)(uintptr_t)src, n, stream, &e, err,
                                 err_len);
    *ev = e;
    return rc;
  }
#endif
  return mb__dev_h2d(d, dst, src, n, stream, err, err_len);
}

int mb__dev_d2h_async(mb__dev *d, void *dst, uint64_t src, size_t n, int stream,
                      mb__dev_event **ev, char *err, size_t err_len) {
  *ev = NULL;
#ifdef MB_HAVE_CUDA_H
  if (d->cuda != NULL) {
    void *e = NULL;
    int rc = mb__cuda_copy_async(d->cuda, 0, src, dst, n, stream, &e, err, err_len);
    *ev = e;
    return rc;
  }
#endif
  return mb__dev_d2h(d, dst, src, n, stream, err, err_len);
}

int mb__dev_event_wait(mb__dev *d, mb__dev_event *ev, char *err, size_t err_len) {
  if (ev == NULL)
    return 0;
#ifdef MB_HAVE_CUDA_H
  if (d->cuda != NULL)
    return mb__cuda_event_wait(d->cuda, ev, err, err_len);
#endif
  (void)d, (void)err, (void)err_len;
  return 0;
}

/* ---- pinned host memory, pinned in parallel ----------------------------- */

#define PIN_MAX_THREADS 16

typedef struct pin_job {
  mb__dev *d;
  char *base;
  size_t bytes;
  size_t nslices;
  _Atomic size_t next;    /* next slice to take */
  int lock;               /* host device: mlock each slice */
  unsigned char *done;    /* per slice: 1 when registered / locked */
  atomic_int failed;
  char err[256];          /* first failure, written by the thread that set failed */
} pin_job;

static size_t slice_len(const pin_job *j, size_t i) {
  size_t off = i * (size_t)MB_DEV_PIN_SLICE;
  return j->bytes - off < MB_DEV_PIN_SLICE ? j->bytes - off : MB_DEV_PIN_SLICE;
}

/* Each worker takes slices from a shared cursor: touches every page of its
 * slice (the page faults, the slow part, happen in parallel), then pins it. */
static void *pin_worker(void *arg) {
  pin_job *j = arg;
  long pg = sysconf(_SC_PAGESIZE);
  size_t page = pg > 0 ? (size_t)pg : 4096;
  for (;;) {
    size_t i = atomic_fetch_add(&j->next, 1);
    if (i >= j->nslices || atomic_load(&j->failed))
      break;
    char *p = j->base + i * (size_t)MB_DEV_PIN_SLICE;
    size_t n = slice_len(j, i);
    for (size_t off = 0; off < n; off += page)
      ((volatile char *)p)[off] = 0;
#ifdef MB_HAVE_CUDA_H
    if (j->d->cuda != NULL) {
      char e[256];
      if (mb__cuda_host_register(j->d->cuda, p, n, e, sizeof(e)) != 0) {
        if (atomic_exchange(&j->failed, 1) == 0)
          snprintf(j->err, sizeof(j->err), "%s", e);
        break;
      }
      j->done[i] = 1;
      continue;
    }
#endif
    if (j->lock && mlock(p, n) == 0)
      j->done[i] = 1;
  }
  return NULL;
}

/* Host device: lock only what RLIMIT_MEMLOCK allows outright; a limit too
 * small (the common default of 8 MiB) means the buffer is not locked. */
static int may_mlock(size_t bytes) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_MEMLOCK, &rl) != 0)
    return 0;
  return rl.rlim_cur == RLIM_INFINITY || (uint64_t)rl.rlim_cur >= (uint64_t)bytes * 2;
}

/* Undoes the pinning of the slices marked in done (NULL: all of them). */
static void unpin(mb__dev *d, char *base, size_t bytes, const unsigned char *done) {
  size_t nslices = (bytes + MB_DEV_PIN_SLICE - 1) / MB_DEV_PIN_SLICE;
  for (size_t i = 0; i < nslices; i++) {
    if (done != NULL && !done[i])
      continue;
    char *p = base + i * (size_t)MB_DEV_PIN_SLICE;
#ifdef MB_HAVE_CUDA_H
    if (d->cuda != NULL) {
      mb__cuda_host_unregister(d->cuda, p);
      continue;
    }
#endif
    (void)d;
    size_t off = i * (size_t)MB_DEV_PIN_SLICE;
    munlock(p, bytes - off < MB_DEV_PIN_SLICE ? bytes - off : MB_DEV_PIN_SLICE);
  }
}

/* A pinned buffer takes whole pages, so that no page is shared with other
 * memory (two registrations or mlocks must never meet in one page). */
static size_t pin_page(void) {
  long pg = sysconf(_SC_PAGESIZE);
  return pg > (long)MB_DEV_ALIGN ? (size_t)pg : MB_DEV_ALIGN;
}

static size_t pin_bytes(size_t bytes) {
  size_t page = pin_page();
  return bytes > SIZE_MAX - page ? 0 : (bytes + page - 1) / page * page;
}

int mb__dev_pinned_alloc(mb__dev *d, size_t bytes, int threads, void **out, char *err,
                         size_t err_len) {
  *out = NULL;
  size_t want = bytes;
  bytes = pin_bytes(bytes);
  char *base = bytes >= 2 * HUGE_ALIGN ? host_big_alloc(bytes)
               : bytes > 0            ? mb__aligned_alloc(pin_page(), bytes)
                                      : NULL;
  if (base == NULL) {
    mb__set_err(err, err_len, "cannot allocate %zu bytes of host memory", want);
    return MB_ENOMEM;
  }
  pin_job j;
  memset(&j, 0, sizeof(j));
  atomic_init(&j.next, 0);
  atomic_init(&j.failed, 0);
  j.d = d;
  j.base = base;
  j.bytes = bytes;
  j.nslices = (bytes + MB_DEV_PIN_SLICE - 1) / MB_DEV_PIN_SLICE;
  j.lock = d->kind == MB_DEVICE_HOST && may_mlock(bytes);
  j.done = mb__calloc(j.nslices, 1);
  if (j.done == NULL) {
    mb__aligned_free(base);
    mb__set_err(err, err_len, "out of memory");
    return MB_ENOMEM;
  }
  int nt = threads > 0 ? threads : 4;
  if (nt > PIN_MAX_THREADS)
    nt = PIN_MAX_THREADS;
  if ((size_t)nt > j.nslices)
    nt = (int)j.nslices;
  pthread_t tid[PIN_MAX_THREADS];
  int started = 0;
  for (int i = 1; i < nt; i++) /* the calling thread is worker 0 */
    if (pthread_create(&tid[started], NULL, pin_worker, &j) == 0)
      started++;
  pin_worker(&j);
  for (int i = 0; i < started; i++)
    pthread_join(tid[i], NULL);
  if (atomic_load(&j.failed)) {
    unpin(d, base, bytes, j.done);
    mb__free(j.done);
    mb__aligned_free(base);
    mb__set_err(err, err_len, "cannot pin %zu bytes of host memory: %s", want, j.err);
    return MB_ENOMEM;
  }
  /* Host device: partly locked is not worth keeping half-done; either every
   * slice is locked or none is (a refusal is not an error). */
  if (j.lock && memchr(j.done, 0, j.nslices) != NULL)
    unpin(d, base, bytes, j.done);
  mb__free(j.done);
  *out = base;
  return 0;
}

void mb__dev_pinned_free(mb__dev *d, void *p, size_t bytes) {
  if (p == NULL)
    return;
  /* munlock of unlocked pages is harmless, so the host device need not
   * remember whether the buffer was locked. */
  unpin(d, p, pin_bytes(bytes), NULL);
  mb__aligned_free(p);
}

int mb__dev_copy_pinned(mb__dev *d, int to_device, uint64_t dptr, void *host, size_t bytes,
                        void (*progress)(void *user, uint64_t done, uint64_t total), void *user,
                        char *err, size_t err_len) {
  mb__dev_event *ev[MB_DEV_COPY_IN_FLIGHT];
  size_t end[MB_DEV_COPY_IN_FLIGHT]; /* where each chunk in flight ends */
  size_t issued = 0, waited = 0, off = 0;
  char *h = host;
  int rc = 0;
  while (off < bytes && rc == 0) {
    if (issued - waited == MB_DEV_COPY_IN_FLIGHT) {
      size_t w = waited++ % MB_DEV_COPY_IN_FLIGHT;
      rc = mb__dev_event_wait(d, ev[w], err, err_len);
      if (rc == 0 && progress != NULL)
        progress(user, end[w], bytes);
      continue;
    }
    size_t n = bytes - off < MB_DEV_COPY_CHUNK ? bytes - off : MB_DEV_COPY_CHUNK;
    size_t k = issued % MB_DEV_COPY_IN_FLIGHT;
    int stream = (int)(issued % MB_DEV_COPY_STREAMS);
    rc = to_device ? mb__dev_h2d_async(d, dptr + off, h + off, n, stream, &ev[k], err, err_len)
                   : mb__dev_d2h_async(d, h + off, dptr + off, n, stream, &ev[k], err, err_len);
    if (rc != 0)
      break;
    off += n;
    end[k] = off;
    issued++;
  }
  /* Every copy started is waited for, whatever failed. */
  while (waited < issued) {
    size_t w = waited++ % MB_DEV_COPY_IN_FLIGHT;
    char e2[256];
    int r = mb__dev_event_wait(d, ev[w], e2, sizeof(e2));
    if (r != 0 && rc == 0) {
      rc = r;
      mb__set_err(err, err_len, "%s", e2);
    }
    if (rc == 0 && progress != NULL)
      progress(user, end[w], bytes);
  }
  return rc;
}

/* ---- stable address ranges ---------------------------------------------- */

struct mb__dev_vrange {
  uint64_t addr;
  size_t bytes;    /* reserved, rounded up */
  int mapped;
  uint64_t handle; /* CUDA: the physical allocation while mapped */
};

int mb__dev_vrange_new(mb__dev *d, size_t bytes, mb__dev_vrange **out, char *err,
                       size_t err_len) {
  *out = NULL;
  mb__dev_vrange *r = mb__calloc(1, sizeof(*r));
  if (r == NULL) {
    mb__set_err(err, err_len, "out of memory");
    return MB_ENOMEM;
  }
  r->bytes = bytes > 0 ? bytes : 1;
#ifdef MB_HAVE_CUDA_H
  if (d->cuda != NULL) {
    int rc = mb__cuda_va_reserve(d->cuda, &r->bytes, &r->addr, err, err_len);
    if (rc != 0) {
      mb__free(r);
      return rc;
    }
    *out = r;
    return 0;
  }
#endif
  (void)d;
  long pg = sysconf(_SC_PAGESIZE);
  size_t page = pg > 0 ? (size_t)pg : 4096;
  if (page < MB_DEV_ALIGN)
    page = MB_DEV_ALIGN;
  if (r->bytes > SIZE_MAX - page) {
    mb__free(r);
    mb__set_err(err, err_len, "host device: cannot reserve %zu bytes", bytes);
    return MB_ENOMEM;
  }
  r->bytes = (r->bytes + page - 1) / page * page;
  void *p = mmap(NULL, r->bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    mb__set_err(err, err_len, "host device: cannot reserve %zu bytes of addresses: %s",
                r->bytes, strerror(errno));
    mb__free(r);
    return MB_ENOMEM;
  }
  r->addr = (uint64_t)(uintptr_t)p;
  *out = r;
  return 0;
}

uint64_t mb__dev_vrange_addr(const mb__dev_vrange *r) { return r->addr; }
size_t mb__dev_vrange_bytes(const mb__dev_vrange *r) { return r->bytes; }
int mb__dev_vrange_mapped(const mb__dev_vrange *r) { return r->mapped; }

int mb__dev_vrange_map(mb__dev *d, mb__dev_vrange *r, char *err, size_t err_len) {
  if (r->mapped)
    return 0;
#ifdef MB_HAVE_CUDA_H
  if (d->cuda != NULL) {
    int rc = mb__cuda_va_map(d->cuda, r->addr, r->bytes, &r->handle, err, err_len);
    if (rc == 0)
      r->mapped = 1;
    return rc;
  }
#endif
  (void)d;
  /* A fresh private anonymous mapping over the reservation: zero pages,
   * charged to the process only as they are touched. */
  void *p = mmap((void *)(uintptr_t)r->addr, r->bytes, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
  if (p == MAP_FAILED) {
    mb__set_err(err, err_len, "host device: cannot map %zu bytes: %s", r->bytes,
                strerror(errno));
    return MB_ENOMEM;
  }
#ifdef MADV_HUGEPAGE
  /* as host_big_alloc: huge pages where the range allows */
  uintptr_t lo = ((uintptr_t)p + HUGE_ALIGN - 1) & ~(uintptr_t)(HUGE_ALIGN - 1);
  uintptr_t hi = ((uintptr_t)p + r->bytes) & ~(uintptr_t)(HUGE_ALIGN - 1);
  if (hi > lo)
    (void)madvise((void *)lo, hi - lo, MADV_HUGEPAGE);
#endif
  r->mapped = 1;
  return 0;
}

void mb__dev_vrange_unmap(mb__dev *d, mb__dev_vrange *r) {
  if (!r->mapped)
    return;
#ifdef MB_HAVE_CUDA_H
  if (d->cuda != NULL) {
    mb__cuda_va_unmap(d->cuda, r->addr, r->bytes, r->handle);
    r->handle = 0;
    r->mapped = 0;
    return;
  }
#endif
  (void)d;
  void *a = (void *)(uintptr_t)r->addr;
  /* Replacing the mapping drops its pages at once and keeps the range
   * reserved. Should the kernel refuse (out of mapping slots), drop the
   * pages and the access instead: the same effect for the caller. */
  if (mmap(a, r->bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1,
           0) == MAP_FAILED) {
    madvise(a, r->bytes, MADV_DONTNEED);
    mprotect(a, r->bytes, PROT_NONE);
  }
  r->mapped = 0;
}

void mb__dev_vrange_free(mb__dev *d, mb__dev_vrange *r) {
  if (r == NULL)
    return;
  mb__dev_vrange_unmap(d, r);
#ifdef MB_HAVE_CUDA_H
  if (d->cuda != NULL)
    mb__cuda_va_free(d->cuda, r->addr, r->bytes);
  else
#endif
    munmap((void *)(uintptr_t)r->addr, r->bytes);
  mb__free(r);
}
