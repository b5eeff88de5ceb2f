/*
 * cuda.c - a stand-in libcuda.so.1 for modelbuf's tests (README.md): every
 * driver entry point modelbuf opens with dlsym, with cuda.h's prototypes,
 * _v2 names and CUresult codes, on host memory.
 *
 * Device memory lives in a private address range reserved PROT_NONE, so a
 * device pointer used as a host pointer faults; each allocation is backed
 * by its own host mapping that copies read and write. Each stream is a
 * thread running its queue of copies and event markers in order, a little
 * late (MB_STANDIN_COPY_DELAY_US), so that reading a buffer before waiting
 * for its copy shows. Copies from pageable memory behave as the driver's:
 * host to device stages the source before returning, device to host
 * returns once done.
 *
 * Checked as the driver would (and counted as a misuse, printed to stderr
 * as "mb-standin: misuse: ..."): calls without a current context, handles
 * that are not live, frees of addresses that are not allocations, copies
 * outside an allocation or into an unmapped or inaccessible range, host
 * ranges registered twice, unregistered or freed while a copy from them is
 * in flight, streams of another context, VMM sizes off the granularity,
 * address ranges freed while mapped.
 *
 * Built three ways (meson.build): the full driver; -DMBSI_NO_CHECKPOINT, a
 * driver older than the checkpoint API; -DMBSI_MINIMAL, one with only the
 * calls modelbuf cannot do without.
 *
 * Locks: g.mu guards every in-process object and counter; mbsi_lock()
 * (the machine table, machine.h) is taken inside it, never the other way,
 * and nobody waits on g.cv holding it. Stream threads take g.mu only to
 * take work and to report it done; copies run unlocked.
 */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#pragma GCC visibility push(default)
#include <cuda.h>
#include "standin.h"
#pragma GCC visibility pop

#include "machine.h"

#define GRAN ((size_t)2 << 20)         /* VMM granularity, and large-allocation alignment */
#define VA_PER_REGION ((uint64_t)64 << 30)
#define N_REGIONS (MBSI_MAX_GPUS + 1)  /* one per GPU, one for VMM reservations */
#define LOST_CODE CUDA_ERROR_UNKNOWN

/* ---- objects ------------------------------------------------------------- */

struct CUctx_st {
  int gpu;   /* machine GPU */
  int refs;  /* primary context retains */
  int alive;
  struct CUctx_st *next;
};

typedef struct vhandle { /* cuMemCreate */
  size_t size;
  char *back;
  int gpu, maps, released;
  struct vhandle *next;
} vhandle;

typedef struct vmapping {
  uint64_t addr;
  size_t size;
  vhandle *h;
  int access;
  struct vmapping *next;
} vmapping;

typedef struct dmem { /* a device allocation or a VMM reservation */
  uint64_t addr;
  size_t size;
  char *back;           /* allocation: its host backing */
  int gpu;              /* allocation: machine GPU; reservation: -1 */
  struct CUctx_st *ctx; /* allocation: its context */
  vmapping *maps;       /* reservation: its mappings */
  struct dmem *next;
} dmem;

typedef struct hmem { /* cuMemHostAlloc block or cuMemHostRegister range */
  char *p;
  size_t n;
  int registered;
  struct hmem *next;
} hmem;

enum { OP_H2D, OP_D2H, OP_MARK };

typedef struct op {
  int kind;
  char *dev, *host; /* where the copy goes and comes from */
  const char *src;  /* host to device: the source (stage or user memory) */
  size_t n;
  char *stage;      /* owned copy of a pageable source */
  struct CUevent_st *ev;
  unsigned ev_gen;
  int fail;         /* an asynchronous fault */
  int waited;       /* a pageable D2H whose caller waits and frees it */
  int done;         /* set when run */
  struct op *next;
} op;

struct CUstream_st {
  struct CUctx_st *ctx;
  pthread_t th;
  pthread_cond_t cv;
  op *head, *tail, *running;
  int closing, err, alive;
  unsigned seed;
  struct CUstream_st *next;
};

struct CUevent_st {
  struct CUctx_st *ctx;
  unsigned rec_gen, done_gen;
  int err, pending, destroyed;
  struct CUevent_st *next;
};

/* Entry points, for call counts. */
#define FNS(X)                                                                          \
  X(cuInit) X(cuGetErrorString) X(cuGetErrorName) X(cuDeviceGet) X(cuDeviceGetCount)    \
  X(cuDeviceGetAttribute) X(cuDeviceTotalMem) X(cuDeviceGetPCIBusId)                    \
  X(cuDevicePrimaryCtxRetain) X(cuDevicePrimaryCtxRelease) X(cuCtxSetCurrent)           \
  X(cuMemGetInfo) X(cuMemAlloc) X(cuMemFree) X(cuMemHostAlloc) X(cuMemFreeHost)         \
  X(cuMemHostRegister) X(cuMemHostUnregister) X(cuMemcpyHtoDAsync) X(cuMemcpyDtoHAsync) \
  X(cuStreamCreate) X(cuStreamDestroy) X(cuStreamSynchronize) X(cuEventCreate)          \
  X(cuEventRecord) X(cuEventSynchronize) X(cuEventDestroy)                              \
  X(cuMemGetAllocationGranularity) X(cuMemAddressReserve) X(cuMemAddressFree)           \
  X(cuMemCreate) X(cuMemRelease) X(cuMemMap) X(cuMemUnmap) X(cuMemSetAccess)            \
  X(cuCheckpointProcessGetState) X(cuCheckpointProcessLock)                             \
  X(cuCheckpointProcessCheckpoint) X(cuCheckpointProcessRestore)                        \
  X(cuCheckpointProcessUnlock)
#define ENUM(n) FN_##n,
enum { FNS(ENUM) N_FNS };
#define NAME(n) #n,
static const char *const fn_names[N_FNS] = {FNS(NAME)};

static struct {
  pthread_mutex_t mu;
  pthread_cond_t cv; /* an op finished, a stream drained */
  int inited;
  int n_dev, map[MBSI_MAX_GPUS]; /* CUDA ordinal -> machine GPU */
  struct CUctx_st *prim[MBSI_MAX_GPUS], *ctxs;
  struct CUstream_st *streams;
  struct CUevent_st *events;
  dmem *dmems;
  hmem *hmems;
  vhandle *vhandles;
  char *va;          /* N_REGIONS * VA_PER_REGION, PROT_NONE */
  uint64_t va_next[N_REGIONS];
  mbsi_rules rules;
  unsigned fault_gen, fired;
  unsigned calls[N_FNS];
  int live_ctx, live_stream, live_event, live_alloc, live_host, live_reg, live_reserve,
      live_vmem, live_map;
  int misuses, reclaimed;
  char last_misuse[256];
  unsigned delay_us;
  int self_pid;
} g = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER, .delay_us = 20};

static __thread struct CUctx_st *cur;

/* ---- helpers (g.mu held unless said) ------------------------------------ */

static void misuse_locked(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void misuse_locked(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(g.last_misuse, sizeof(g.last_misuse), fmt, ap);
  va_end(ap);
  g.misuses++;
  fprintf(stderr, "mb-standin: misuse: %s\n", g.last_misuse);
  const char *a = getenv("MB_STANDIN_ABORT_ON_MISUSE");
  if (a != NULL && a[0] == '1')
    abort();
}

/* This process's row of the machine (NULL before its first context). */
static mbsi_proc *self_locked(int create) {
  mbsi_machine *m = mbsi_machine_get();
  mbsi_lock();
  mbsi_proc *p = mbsi_proc_find_locked(m, getpid(), create);
  mbsi_unlock();
  if (p != NULL)
    g.self_pid = getpid();
  return p;
}

static mbsi_proc *self_row(void) {
  if (g.self_pid != getpid())
    return NULL;
  mbsi_machine *m = mbsi_machine_get();
  for (int i = 0; i < MBSI_MAX_PROCS; i++)
    if (m->proc[i].pid == g.self_pid && m->proc[i].gone_ms == 0)
      return &m->proc[i];
  return NULL;
}

/*
 * Every entry point starts with enter() and ends with leave(): while the
 * process is locked or checkpointed (the checkpoint API, called from
 * another process) new calls wait, as the driver's do, and a lock waits for
 * the calls in progress. Unlocked (g.mu is not held).
 */
static mbsi_proc *enter(int fn) {
  __atomic_fetch_add(&g.calls[fn], 1, __ATOMIC_RELAXED);
  pthread_mutex_lock(&g.mu);
  mbsi_proc *p = self_row();
  pthread_mutex_unlock(&g.mu);
  if (p == NULL)
    return NULL;
  for (;;) {
    atomic_fetch_add(&p->in_call, 1);
    if (!atomic_load(&p->lock_req) && atomic_load(&p->state) == MBSI_RUNNING)
      return p;
    atomic_fetch_sub(&p->in_call, 1);
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
  }
}

static CUresult leave(mbsi_proc *p, CUresult r) {
  if (p != NULL)
    atomic_fetch_sub(&p->in_call, 1);
  return r;
}

#define ENTER(fn) mbsi_proc *self_ = enter(FN_##fn)
#define RETURN(r) return leave(self_, (r))

/* The fault rules: the machine's for this process when they changed, else
 * those of MB_STANDIN_FAIL or mbsi_fail. */
static int fault_locked(const char *name, const char *cls, int def, int *async) {
  mbsi_machine *m = mbsi_machine_get();
  unsigned gen = atomic_load(&m->fault_gen);
  if (gen != g.fault_gen) {
    g.fault_gen = gen;
    char spec[sizeof(m->faults[0].spec)] = "";
    mbsi_lock();
    for (int i = 0; i < MBSI_MAX_FAULTS; i++)
      if (m->faults[i].spec[0] != '\0' && (m->faults[i].pid == 0 || m->faults[i].pid == getpid()))
        snprintf(spec, sizeof(spec), "%s", m->faults[i].spec);
    mbsi_unlock();
    if (mbsi_rules_parse(&g.rules, spec) != 0)
      fprintf(stderr, "mb-standin: bad fault rules '%s'\n", spec);
  }
  int a = 0;
  int code = mbsi_rules_hit(&g.rules, name, cls, def, &a);
  if (code != 0)
    g.fired++;
  if (async)
    *async = code != 0 && a;
  return code;
}

static int gpu_lost(int gpu) {
  return gpu >= 0 && atomic_load(&mbsi_machine_get()->gpu[gpu].lost);
}

static CUresult need_ctx_locked(const char *what) {
  if (!g.inited)
    return CUDA_ERROR_NOT_INITIALIZED;
  if (cur == NULL) {
    misuse_locked("%s without a current context", what);
    return CUDA_ERROR_INVALID_CONTEXT;
  }
  if (!cur->alive) {
    misuse_locked("%s in a destroyed context", what);
    return CUDA_ERROR_CONTEXT_IS_DESTROYED;
  }
  if (gpu_lost(cur->gpu))
    return LOST_CODE;
  return CUDA_SUCCESS;
}

/* Charges (delta > 0) or credits this process's bytes on gpu; refuses a
 * charge that does not fit with CUDA_ERROR_OUT_OF_MEMORY. */
static CUresult account_locked(int gpu, int64_t delta) {
  mbsi_machine *m = mbsi_machine_get();
  mbsi_proc *p = self_locked(1);
  if (p == NULL)
    return CUDA_ERROR_OUT_OF_MEMORY;
  mbsi_lock();
  CUresult r = CUDA_SUCCESS;
  if (delta > 0) {
    mbsi_reap_locked(m);
    if (mbsi_used_locked(m, gpu) + (uint64_t)delta > m->gpu[gpu].total)
      r = CUDA_ERROR_OUT_OF_MEMORY;
    else
      p->dev[gpu] += (uint64_t)delta;
  } else {
    p->dev[gpu] -= (uint64_t)-delta;
  }
  mbsi_unlock();
  return r;
}

static int valid_ctx_locked(struct CUctx_st *c) {
  for (struct CUctx_st *x = g.ctxs; x; x = x->next)
    if (x == c)
      return 1;
  return 0;
}

static int valid_stream_locked(struct CUstream_st *s) {
  for (struct CUstream_st *x = g.streams; x; x = x->next)
    if (x == s && x->alive)
      return 1;
  return 0;
}

static int valid_event_locked(struct CUevent_st *e) {
  for (struct CUevent_st *x = g.events; x; x = x->next)
    if (x == e && !x->destroyed)
      return 1;
  return 0;
}

static size_t round_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

static char *backing(size_t n) {
  void *p = mmap(NULL, round_up(n, 4096), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                 -1, 0);
  return p == MAP_FAILED ? NULL : p;
}

static void unbacking(char *p, size_t n) {
  if (p != NULL)
    munmap(p, round_up(n, 4096));
}

/* Device addresses: a reserved range that faults when touched. */
static int va_ready_locked(void) {
  if (g.va != NULL)
    return 1;
  void *p = mmap(NULL, N_REGIONS * VA_PER_REGION, PROT_NONE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED)
    return 0;
  g.va = p;
  for (int r = 0; r < N_REGIONS; r++)
    g.va_next[r] = 0;
  return 1;
}

/* A free address range of n bytes aligned to align in region r (first fit
 * after the last one handed out, then from the start). 0 when none. */
static uint64_t va_take_locked(int r, size_t n, size_t align) {
  if (!va_ready_locked())
    return 0;
  uint64_t base = (uint64_t)(uintptr_t)g.va + (uint64_t)r * VA_PER_REGION;
  for (int pass = 0; pass < 2; pass++) {
    uint64_t at = pass == 0 ? g.va_next[r] : 0;
    for (;;) {
      at = round_up(at, align);
      if (at + n > VA_PER_REGION)
        break;
      uint64_t a = base + at;
      dmem *hit = NULL;
      for (dmem *d = g.dmems; d; d = d->next)
        if (a < d->addr + d->size && d->addr < a + n)
          hit = d;
      if (hit == NULL) {
        g.va_next[r] = at + n;
        return a;
      }
      at = hit->addr + hit->size - base;
    }
  }
  return 0;
}

static dmem *dmem_at_locked(uint64_t addr) {
  for (dmem *d = g.dmems; d; d = d->next)
    if (addr >= d->addr && addr < d->addr + d->size)
      return d;
  return NULL;
}

/* Host memory of device range [addr, addr+n) for a copy; NULL with *rc. */
static char *xlate_locked(uint64_t addr, size_t n, int *gpu, CUresult *rc) {
  dmem *d = dmem_at_locked(addr);
  if (d == NULL || addr + n > d->addr + d->size) {
    misuse_locked("copy of %zu bytes at device address 0x%llx outside any allocation", n,
                  (unsigned long long)addr);
    *rc = CUDA_ERROR_INVALID_VALUE;
    return NULL;
  }
  if (d->back != NULL) {
    *gpu = d->gpu;
    return d->back + (addr - d->addr);
  }
  for (vmapping *v = d->maps; v; v = v->next)
    if (addr >= v->addr && addr + n <= v->addr + v->size) {
      if (!v->access) {
        misuse_locked("copy at 0x%llx into a mapping without access (cuMemSetAccess)",
                      (unsigned long long)addr);
        *rc = CUDA_ERROR_ILLEGAL_ADDRESS;
        return NULL;
      }
      *gpu = v->h->gpu;
      return v->h->back + (addr - v->addr);
    }
  misuse_locked("copy of %zu bytes at 0x%llx into a reserved range that is not mapped there", n,
                (unsigned long long)addr);
  *rc = CUDA_ERROR_INVALID_VALUE;
  return NULL;
}

/* The pinned block holding [p, p+n), if any. */
static hmem *pinned_locked(const char *p, size_t n) {
  for (hmem *h = g.hmems; h; h = h->next)
    if (p >= h->p && p + n <= h->p + h->n)
      return h;
  return NULL;
}

/* 1 when a queued or running copy touches host [p, p+n) (host) or the
 * device backing [p, p+n) (dev). */
static int touches(const op *o, const char *p, size_t n, int dev) {
  const char *q = dev ? o->dev : o->host;
  return o->kind != OP_MARK && q != NULL && q < p + n && p < q + o->n;
}

static int in_flight_locked(const char *p, size_t n, int dev) {
  for (struct CUstream_st *s = g.streams; s; s = s->next) {
    if (s->running != NULL && touches(s->running, p, n, dev))
      return 1;
    for (op *o = s->head; o; o = o->next)
      if (touches(o, p, n, dev))
        return 1;
  }
  return 0;
}

static void wait_idle_locked(const char *p, size_t n, int dev) {
  while (in_flight_locked(p, n, dev))
    pthread_cond_wait(&g.cv, &g.mu);
}

/* ---- streams ------------------------------------------------------------- */

static void *stream_main(void *arg) {
  struct CUstream_st *s = arg;
  pthread_mutex_lock(&g.mu);
  for (;;) {
    while (s->head == NULL && !s->closing)
      pthread_cond_wait(&s->cv, &g.mu);
    if (s->head == NULL)
      break;
    op *o = s->head;
    s->head = o->next;
    if (s->head == NULL)
      s->tail = NULL;
    s->running = o;
    unsigned delay = g.delay_us ? (unsigned)rand_r(&s->seed) % (g.delay_us + 1) : 0;
    int lost = gpu_lost(s->ctx->gpu);
    pthread_mutex_unlock(&g.mu);
    if (delay)
      usleep(delay);
    if (o->kind != OP_MARK && o->fail == 0 && !lost) {
      if (o->kind == OP_H2D)
        memcpy(o->dev, o->src, o->n);
      else
        memcpy(o->host, o->dev, o->n);
    }
    pthread_mutex_lock(&g.mu);
    s->running = NULL;
    if (o->fail != 0 && s->err == 0)
      s->err = o->fail;
    if (lost && s->err == 0)
      s->err = LOST_CODE;
    if (o->kind == OP_MARK) {
      struct CUevent_st *e = o->ev;
      if (o->ev_gen > e->done_gen) {
        e->done_gen = o->ev_gen;
        e->err = s->err; /* reported once: by this event */
        s->err = 0;
      }
      e->pending--;
    }
    mbsi_proc *p = self_row();
    if (p != NULL)
      atomic_fetch_sub(&p->in_call, 1);
    free(o->stage);
    o->done = 1;
    if (!o->waited)
      free(o);
    pthread_cond_broadcast(&g.cv);
  }
  pthread_mutex_unlock(&g.mu);
  return NULL;
}

static void enqueue_locked(struct CUstream_st *s, op *o) {
  o->next = NULL;
  if (s->tail)
    s->tail->next = o;
  else
    s->head = o;
  s->tail = o;
  mbsi_proc *p = self_row();
  if (p != NULL)
    atomic_fetch_add(&p->in_call, 1); /* a lock waits for queued work too */
  pthread_cond_signal(&s->cv);
}

static void stream_drain_locked(struct CUstream_st *s) {
  while (s->head != NULL || s->running != NULL)
    pthread_cond_wait(&g.cv, &g.mu);
}

/* Ends s: its queue runs out, its thread is joined. g.mu held; released
 * while joining. */
static void stream_end_locked(struct CUstream_st *s) {
  s->alive = 0;
  s->closing = 1;
  pthread_cond_signal(&s->cv);
  pthread_mutex_unlock(&g.mu);
  pthread_join(s->th, NULL);
  pthread_mutex_lock(&g.mu);
  for (struct CUstream_st **pp = &g.streams; *pp; pp = &(*pp)->next)
    if (*pp == s) {
      *pp = s->next;
      break;
    }
  pthread_cond_destroy(&s->cv);
  free(s);
}

/* ---- initialisation and devices ----------------------------------------- */

static int parse_order(int n, int *order) {
  for (int i = 0; i < n; i++)
    order[i] = i;
  const char *v = getenv("MB_STANDIN_CUDA_ORDER");
  if (v == NULL || *v == '\0')
    return n;
  int k = 0;
  for (const char *p = v; *p && k < n; k++) {
    order[k] = atoi(p);
    if (order[k] < 0 || order[k] >= n)
      return k;
    p += strcspn(p, ",");
    if (*p == ',')
      p++;
  }
  return k;
}

CUresult cuInit(unsigned int flags) {
  ENTER(cuInit);
  if (flags != 0)
    RETURN(CUDA_ERROR_INVALID_VALUE);
  pthread_mutex_lock(&g.mu);
  const char *d = getenv("MB_STANDIN_COPY_DELAY_US");
  if (d != NULL)
    g.delay_us = (unsigned)atoi(d);
  if (!g.inited) {
    const char *spec = getenv("MB_STANDIN_FAIL");
    if (mbsi_rules_parse(&g.rules, spec) != 0)
      fprintf(stderr, "mb-standin: bad MB_STANDIN_FAIL '%s'\n", spec);
    g.fault_gen = atomic_load(&mbsi_machine_get()->fault_gen);
  }
  int code = fault_locked("cuInit", NULL, CUDA_ERROR_UNKNOWN, NULL);
  if (code != 0) {
    pthread_mutex_unlock(&g.mu);
    RETURN((CUresult)code);
  }
  mbsi_machine *m = mbsi_machine_get();
  int order[MBSI_MAX_GPUS];
  int n_order = parse_order(m->n_gpus, order);
  const char *cvd = getenv("CUDA_VISIBLE_DEVICES");
  int n = 0;
  if (cvd == NULL) {
    for (int i = 0; i < n_order; i++)
      g.map[n++] = order[i];
  } else {
    /* as the driver: the list ends at its first invalid or repeated entry */
    for (const char *p = cvd; *p && n < n_order;) {
      while (*p == ' ')
        p++;
      char *end = NULL;
      long idx = strtol(p, &end, 10);
      if (end == p || idx < 0 || idx >= n_order)
        break;
      int dup = 0;
      for (int k = 0; k < n; k++)
        dup |= g.map[k] == order[idx];
      if (dup)
        break;
      g.map[n++] = order[idx];
      p = end;
      while (*p == ' ')
        p++;
      if (*p != ',')
        break;
      p++;
    }
  }
  g.n_dev = n;
  if (n == 0) {
    pthread_mutex_unlock(&g.mu);
    RETURN(CUDA_ERROR_NO_DEVICE);
  }
  g.inited = 1;
  pthread_mutex_unlock(&g.mu);
  RETURN(CUDA_SUCCESS);
}

static const struct {
  CUresult code;
  const char *name, *text;
} errors[] = {
    {CUDA_SUCCESS, "CUDA_SUCCESS", "no error"},
    {CUDA_ERROR_INVALID_VALUE, "CUDA_ERROR_INVALID_VALUE", "invalid argument"},
    {CUDA_ERROR_OUT_OF_MEMORY, "CUDA_ERROR_OUT_OF_MEMORY", "out of memory"},
    {CUDA_ERROR_NOT_INITIALIZED, "CUDA_ERROR_NOT_INITIALIZED", "initialization error"},
    {CUDA_ERROR_DEINITIALIZED, "CUDA_ERROR_DEINITIALIZED", "driver shutting down"},
    {CUDA_ERROR_DEVICE_UNAVAILABLE, "CUDA_ERROR_DEVICE_UNAVAILABLE", "CUDA-capable device(s) is/are busy or unavailable"},
    {CUDA_ERROR_NO_DEVICE, "CUDA_ERROR_NO_DEVICE", "no CUDA-capable device is detected"},
    {CUDA_ERROR_INVALID_DEVICE, "CUDA_ERROR_INVALID_DEVICE", "invalid device ordinal"},
    {CUDA_ERROR_INVALID_CONTEXT, "CUDA_ERROR_INVALID_CONTEXT", "invalid device context"},
    {CUDA_ERROR_INVALID_HANDLE, "CUDA_ERROR_INVALID_HANDLE", "invalid resource handle"},
    {CUDA_ERROR_ILLEGAL_STATE, "CUDA_ERROR_ILLEGAL_STATE", "the operation cannot be performed in the present state"},
    {CUDA_ERROR_NOT_FOUND, "CUDA_ERROR_NOT_FOUND", "named symbol not found"},
    {CUDA_ERROR_NOT_READY, "CUDA_ERROR_NOT_READY", "device not ready"},
    {CUDA_ERROR_ILLEGAL_ADDRESS, "CUDA_ERROR_ILLEGAL_ADDRESS", "an illegal memory access was encountered"},
    {CUDA_ERROR_CONTEXT_IS_DESTROYED, "CUDA_ERROR_CONTEXT_IS_DESTROYED", "context is destroyed"},
    {CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED, "CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED", "part or all of the requested memory range is already mapped"},
    {CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED, "CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED", "pointer does not correspond to a registered memory region"},
    {CUDA_ERROR_LAUNCH_FAILED, "CUDA_ERROR_LAUNCH_FAILED", "unspecified launch failure"},
    {CUDA_ERROR_NOT_PERMITTED, "CUDA_ERROR_NOT_PERMITTED", "operation not permitted"},
    {CUDA_ERROR_NOT_SUPPORTED, "CUDA_ERROR_NOT_SUPPORTED", "operation not supported"},
    {CUDA_ERROR_TIMEOUT, "CUDA_ERROR_TIMEOUT", "timeout occurred"},
    {CUDA_ERROR_UNKNOWN, "CUDA_ERROR_UNKNOWN", "unknown error"},
};

static CUresult error_text(CUresult e, const char **out, int name) {
  for (size_t i = 0; i < sizeof(errors) / sizeof(errors[0]); i++)
    if (errors[i].code == e) {
      *out = name ? errors[i].name : errors[i].text;
      return CUDA_SUCCESS;
    }
  *out = NULL;
  return CUDA_ERROR_INVALID_VALUE;
}

CUresult cuGetErrorString(CUresult error, const char **pStr) {
  ENTER(cuGetErrorString);
  if (pStr == NULL)
    RETURN(CUDA_ERROR_INVALID_VALUE);
  RETURN(error_text(error, pStr, 0));
}

CUresult cuGetErrorName(CUresult error, const char **pStr) {
  ENTER(cuGetErrorName);
  if (pStr == NULL)
    RETURN(CUDA_ERROR_INVALID_VALUE);
  RETURN(error_text(error, pStr, 1));
}

/* The machine GPU of CUDA device dev, or -1 with *rc. g.mu held. */
static int dev_gpu_locked(CUdevice dev, CUresult *rc) {
  if (!g.inited) {
    *rc = CUDA_ERROR_NOT_INITIALIZED;
    return -1;
  }
  if (dev < 0 || dev >= g.n_dev) {
    *rc = CUDA_ERROR_INVALID_DEVICE;
    return -1;
  }
  if (gpu_lost(g.map[dev])) {
    *rc = LOST_CODE;
    return -1;
  }
  return g.map[dev];
}

CUresult cuDeviceGetCount(int *count) {
  ENTER(cuDeviceGetCount);
  pthread_mutex_lock(&g.mu);
  CUresult r = !g.inited ? CUDA_ERROR_NOT_INITIALIZED
               : count == NULL ? CUDA_ERROR_INVALID_VALUE
                               : CUDA_SUCCESS;
  if (r == CUDA_SUCCESS)
    *count = g.n_dev;
  pthread_mutex_unlock(&g.mu);
  RETURN(r);
}

CUresult cuDeviceGet(CUdevice *device, int ordinal) {
  ENTER(cuDeviceGet);
  pthread_mutex_lock(&g.mu);
  CUresult r = CUDA_SUCCESS;
  if (!g.inited)
    r = CUDA_ERROR_NOT_INITIALIZED;
  else if (device == NULL)
    r = CUDA_ERROR_INVALID_VALUE;
  else if (ordinal < 0 || ordinal >= g.n_dev)
    r = CUDA_ERROR_INVALID_DEVICE;
  else if ((r = (CUresult)fault_locked("cuDeviceGet", "device", CUDA_ERROR_UNKNOWN, NULL)) == 0)
    *device = ordinal;
  pthread_mutex_unlock(&g.mu);
  RETURN(r);
}

CUresult cuDeviceGetAttribute(int *pi, CUdevice_attribute attrib, CUdevice dev) {
  ENTER(cuDeviceGetAttribute);
  pthread_mutex_lock(&g.mu);
  CUresult r = CUDA_SUCCESS;
  int gpu = dev_gpu_locked(dev, &r);
  if (gpu >= 0 && pi == NULL)
    r = CUDA_ERROR_INVALID_VALUE;
  if (gpu >= 0 && pi != NULL &&
      (r = (CUresult)fault_locked("cuDeviceGetAttribute", "device", CUDA_ERROR_UNKNOWN, NULL)) != 0)
    gpu = -1;
  if (gpu >= 0 && pi != NULL) {
    switch (attrib) {
    case CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED:
      *pi = mbsi_machine_get()->gpu[gpu].vmm;
      break;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: *pi = 9; break;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: *pi = 0; break;
    case CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING: *pi = 1; break;
    default: *pi = 0; break;
    }
  }
  pthread_mutex_unlock(&g.mu);
  RETURN(r);
}

#ifndef MBSI_MINIMAL
CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice dev) {
  ENTER(cuDeviceTotalMem);
  pthread_mutex_lock(&g.mu);
  CUresult r = CUDA_SUCCESS;
  int gpu = dev_gpu_locked(dev, &r);
  if (gpu >= 0 && bytes == NULL)
    r = CUDA_ERROR_INVALID_VALUE;
  else if (gpu >= 0 &&
           (r = (CUresult)fault_locked("cuDeviceTotalMem", "device", CUDA_ERROR_UNKNOWN, NULL)) != 0)
    ;
  else if (gpu >= 0)
    *bytes = (size_t)mbsi_machine_get()->gpu[gpu].total;
  pthread_mutex_unlock(&g.mu);
  RETURN(r);
}

CUresult cuDeviceGetPCIBusId(char *pciBusId, int len, CUdevice dev) {
  ENTER(cuDeviceGetPCIBusId);
  pthread_mutex_lock(&g.mu);
  CUresult r = CUDA_SUCCESS;
  int gpu = dev_gpu_locked(dev, &r);
  const char *bus = gpu >= 0 ? mbsi_machine_get()->gpu[gpu].bus : "";
  if (gpu >= 0 && (pciBusId == NULL || len < (int)strlen(bus) + 1))
    r = CUDA_ERROR_INVALID_VALUE;
  else if (gpu >= 0 &&
           (r = (CUresult)fault_locked("cuDeviceGetPCIBusId", "device", CUDA_ERROR_UNKNOWN, NULL)) != 0)
    ;
  else if (gpu >= 0)
    snprintf(pciBusId, (size_t)len, "%s", bus);
  pthread_mutex_unlock(&g.mu);
  RETURN(r);
}
#endif

/* ---- contexts ------------------------------------------------------------ */

/* Frees what a destroyed context still held (the driver does): each counts
 * as reclaimed, which modelbuf's tests expect to stay 0. */
static void ctx_reclaim_locked(struct CUctx_st *c) {
  for (struct CUstream_st *s = g.streams; s;) {
    struct CUstream_st *next = s->next;
    if (s->ctx == c && s->alive) {
      g.reclaimed++;
      g.live_stream--;
      stream_end_locked(s);
      next = g.streams; /* the list changed while unlocked */
    }
    s = next;
  }
  for (struct CUevent_st *e = g.events; e; e = e->next)
    if (e->ctx == c && !e->destroyed) {
      e->destroyed = 1;
      g.reclaimed++;
      g.live_event--;
    }
  for (dmem **pp = &g.dmems; *pp;) {
    dmem *d = *pp;
    if (d->ctx == c && d->back != NULL) {
      *pp = d->next;
      account_locked(d->gpu, -(int64_t)round_up(d->size, 4096));
      unbacking(d->back, d->size);
      free(d);
      g.reclaimed++;
      g.live_alloc--;
    } else {
      pp = &d->next;
    }
  }
}

CUresult cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice dev) {
  ENTER(cuDevicePrimaryCtxRetain);
  pthread_mutex_lock(&g.mu);
  CUresult r = CUDA_SUCCESS;
  int gpu = dev_gpu_locked(dev, &r);
  if (gpu >= 0 && pctx == NULL)
    r = CUDA_ERROR_INVALID_VALUE;
  if (r == CUDA_SUCCESS) {
    int code = fault_locked("cuDevicePrimaryCtxRetain", "ctx", CUDA_ERROR_OUT_OF_MEMORY, NULL);
    if (code != 0)
      r = (CUresult)code;
  }
  if (r == CUDA_SUCCESS && (g.prim[gpu] == NULL || !g.prim[gpu]->alive)) {
    struct CUctx_st *c = calloc(1, sizeof(*c));
    if (c == NULL || (r = account_locked(gpu, (int64_t)mbsi_machine_get()->ctx_bytes)) != 0) {
      free(c);
      if (r == CUDA_SUCCESS)
        r = CUDA_ERROR_OUT_OF_MEMORY;
    } else {
      c->gpu = gpu;
      c->alive = 1;
      c->next = g.ctxs; /* kept after destruction: stale handles stay checkable */
      g.ctxs = c;
      g.prim[gpu] = c;
      mbsi_lock();
      mbsi_proc *p = mbsi_proc_find_locked(mbsi_machine_get(), getpid(), 1);
      if (p != NULL)
        p->ctx[gpu]++;
      mbsi_unlock();
    }
  }
  if (r == CUDA_SUCCESS) {
    g.prim[gpu]->refs++;
    g.live_ctx++;
    *pctx = g.prim[gpu];
  }
  pthread_mutex_unlock(&g.mu);
  RETURN(r);
}

CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev) {
  ENTER(cuDevicePrimaryCtxRelease);
  pthread_mutex_lock(&g.mu);
  CUresult r = CUDA_SUCCESS;
  if (!g.inited)
    r = CUDA_ERROR_NOT_INITIALIZED;
  else if (dev < 0 || dev >= g.n_dev)
    r = CUDA_ERROR_INVALID_DEVICE;
  int gpu = r == CUDA_SUCCESS ? g.map[dev] : -1;
  struct CUctx_st *c = gpu >= 0 ? g.prim[gpu] : NULL;
  if (r == CUDA_SUCCESS && (c == NULL || !c->alive || c->refs == 0)) {
    misuse_locked("cuDevicePrimaryCtxRelease of device %d, whose primary context is not retained",
                  (int)dev);
    r = CUDA_ERROR_INVALID_CONTEXT;
  }
  if (r == CUDA_SUCCESS) {
    c->refs--;
    g.live_ctx--;
    if (c->refs == 0) {
      ctx_reclaim_locked(c);
      c->alive = 0;
      account_locked(gpu, -(int64_t)mbsi_machine_get()->ctx_bytes);
      mbsi_lock();
      mbsi_proc *p = mbsi_proc_find_locked(mbsi_machine_get(), getpid(), 0);
      if (p != NULL && p->ctx[gpu] > 0)
        p->ctx[gpu]--;
      mbsi_unlock();
    }
  }
  pthread_mutex_unlock(&g.mu);
  RETURN(r);
}

CUresult cuCtxSetCurrent(CUcontext ctx) {
  ENTER(cuCtxSetCurrent);
  pthread_mutex_lock(&g.mu);
  CUresult r = CUDA_SUCCESS;
  if (!g.inited)
    r = CUDA_ERROR_NOT_INITIALIZED;
  else if (ctx != NULL && !valid_ctx_locked(ctx))
    r = CUDA_ERROR_INVALID_CONTEXT;
  else if (ctx != NULL && !ctx->alive) {
    misuse_locked("cuCtxSetCurrent of a destroyed context");
    r = CUDA_ERROR_CONTEXT_IS_DESTROYED;
  }
  if (r == CUDA_SUCCESS)
    r = (CUresult)fault_locked("cuCtxSetCurrent", "ctx", CUDA_ERROR_INVALID_CONTEXT, NULL);
  if (r == CUDA_SUCCESS)
    cur = ctx;
  pthread_mutex_unlock(&g.mu);
  RETURN(r);
}

CUresult cuMemGetInfo_v2(size_t *free_bytes, size_t *total) {
  ENTER(cuMemGetInfo);
  pthread_mutex_lock(&g.mu);
  CUresult r = need_ctx_locked("cuMemGetInfo");
  if (r == CUDA_SUCCESS && (free_bytes == NULL || total == NULL))
    r = CUDA_ERROR_INVALID_VALUE;
  if (r == CUDA_SUCCESS)
    r = (CUresult)fault_locked("cuMemGetInfo", NULL, CUDA_ERROR_UNKNOWN, NULL);
  if (r == CUDA_SUCCESS) {
    mbsi_machine *m = mbsi_machine_get();
    mbsi_lock();
    mbsi_reap_locked(m);
    uint64_t used = mbsi_used_locked(m, cur->gpu), t = m->gpu[cur->gpu].total;
    mbsi_unlock();
    *total = (size_t)t;
    *free_bytes = (size_t)(used < t ? t - used : 0);
  }
  pthread_mutex_unlock(&g.mu);
  RETURN(r);
}

/* ---- device and pinned memory ------------------------------------------- */

CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytesize) {
  ENTER(cuMemAlloc);
  pthread_mutex_lock(&g.mu);
  CUresult r = need_ctx_locked("cuMemAlloc");
  if (r == CUDA_SUCCESS && (dptr == NULL || bytesize == 0))
    r = CUDA_ERROR_INVALID_VALUE;
  if (r == CUDA_SUCCESS) {
    int code = fault_locked("cuMemAlloc", "alloc", CUDA_ERROR_OUT_OF_MEMORY, NULL);
    if (code != 0)
      r = (CUresult)code;
  }
  dmem *d = NULL;
  if (r == CUDA_SUCCESS) {
    size_t acct = round_up(bytesize, 4096);
    d = calloc(1, sizeof(*d));
    uint64_t a = d ? va_take_locked(cur->gpu, bytesize, bytesize >= GRAN ? GRAN : 512) : 0;
    if (a == 0 || (r = account_locked(cur->gpu, (int64_t)acct)) != CUDA_SUCCESS) {
      free(d);
      d = NULL;
      if (r == CUDA_SUCCESS)
        r = CUDA_ERROR_OUT_OF_MEMORY;
    } else if ((d->back = backing(bytesize)) == NULL) {
      account_locked(cur->gpu, -(int64_t)acct);
      free(d);
      d = NULL;
      r = CUDA_ERROR_OUT_OF_MEMORY;
    } else {
      d->addr = a;
      d->size = bytesize;
      d->gpu = cur->gpu;
      d->ctx = cur;
      d->next = g.dmems;
      g.dmems = d;
      g.live_alloc++;
      *dptr = (CUdeviceptr)a;
    }
  }
  pthread_mutex_unlock(&g.mu);
  RETURN(r);
}

CUresult cuMemFree_v2(CUdeviceptr dptr) {
  ENTER(cuMemFree);
  pthread_mutex_lock(&g.mu);
  CUresult r = need_ctx_locked("cuMemFree");
  dmem **pp = &g.dmems;
  while (*pp && !((*pp)->addr == dptr && (*pp)->back != NULL))
    pp = &(*pp)->next;
  if (r == CUDA_SUCCESS && *pp == NULL) {
    misuse_locked("cuMemFree of 0x%llx, which is not an allocation (freed twice?)",
                  (unsigned long long)dptr);
    r = CUDA_ERROR_INVALID_VALUE;
  }
  if (r == CUDA_SUCCESS) {
    dmem *d = *pp;
    wait_idle_locked(d->back, d->size, 1); /* cuMemFree synchronizes */
    for (pp = &g.dmems; *pp != d; pp = &(*pp)->next)
      ;
    *pp = d->next;
    account_locked(d->gpu, -(int64_t)round_up(d->size, 4096));
    unbacking(d->back, d->size);
    free(d);
    g.live_alloc--;
  }
  pthread_mutex_unlock(&g.mu);
  RETURN(r);
}

CUresult cuMemHostAlloc(void **pp, size_t bytesize, unsigned int Flags) {
  ENTER(cuMemHostAlloc);
  pthread_mutex_lock(&g.mu);
  CUresult r = need_ctx_locked("cuMemHostAlloc");
  if (r == CUDA_SUCCESS && (pp == NULL || bytesize == 0))
    r = CUDA_ERROR_INVALID_VALUE;
  if (r == CUDA_SUCCESS) {
    int code = fault_locked("cuMemHostAlloc", "alloc host", CUDA_ERROR_OUT_OF_MEMORY, NULL);
    if (code != 0)
      r = (CUresult)code;
  }
  if (r == CUDA_SUCCESS) {
    hmem *h = calloc(1, sizeof(*h));
    char *p = h ? backing(bytesize) : NULL;
    if (p == NULL) {
      free(h);
      r = CUDA_ERROR_OUT_OF_MEMORY;
    } else {
      h->p = p;
      h->n = bytesize;
      h->next = g.hmems;
      g.hmems = h;
      g.live_host++;
      *pp = p;
    }
  }
  pthread_mutex_unlock(&g.mu);
  RETURN(r);
}

CUresult cuMemFreeHost(void *p) {
  ENTER(cuMemFreeHost);
  pthread_mutex_lock(&g.mu);
  CUresult r = g.inited ? CUDA_SUCCESS : CUDA_ERROR_NOT_INITIALIZED;
  hmem **pp = &g.hmems;
  while (*pp && !((*pp)->p == p && !(*pp)->registered))
    pp = &(*pp)->next;
  if (r == CUDA_SUCCESS && *pp == NULL) {
    misuse_locked("cuMemFreeHost of %p, which cuMemHostAlloc did not give", p);
    r = CUDA_ERROR_INVALID_VALUE;
  }
  if (r == CUDA_SUCCESS) {
    hmem *h = *pp;
    wait_idle_locked(h->p, h->n, 0); /* as cuMemFreeHost synchronizes */
    for (pp = &g.hmems; *pp != h; pp = &(*pp)->next)
      ;
    *pp = h->next;
    unbacking(h->p, h->n);
    free(h);
    g.live_host--;
  }
  pthread_mutex_unlock(&g.mu);
  RETURN(r);
}

CUresult cuMemHostRegister_v2(void *p, size_t bytesize, unsigned int Flags) {
  ENTER(cuMemHostRegister);
  pthread_mutex_lock(&g.mu);
  CUresult r = need_ctx_locked("cuMemHostRegister");
  if (r == CUDA_SUCCESS && (p == NULL || bytesize == 0))
    r = CUDA_ERROR_INVALID_VALUE;
  if (r == CUDA_SUCCESS) {
    /* registrations are of whole pages: two may not share one */
    uintptr_t lo = (uintptr_t)p & ~(uintptr_t)4095, hi = round_up((uintptr_t)p + bytesize, 4096);
    for (hmem *h = g.hmems; h; h = h->next) {
      uintptr_t hlo = (uintptr_t)h->p & ~(uintptr_t)4095, hhi = round_up((uintptr_t)h->p + h->n, 4096);
      if (lo < hhi && hlo < hi) {
        misuse_locked("cuMemHostRegister of [%p, +%zu), whose pages are already %s", p, bytesize,
                      h->registered ? "registered" : "pinned by cuMemHostAlloc");
        r = CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED;
        break;
      }
    }
  }
  if (r == CUDA_SUCCESS) {
    int code = fault_locked("cuMemHostRegister", "register", CUDA_ERROR_OUT_OF_MEMORY, NULL);
    if (code != 0)
      r = (CUresult)code;
  }
  if (r == CUDA_SUCCESS) {
    hmem *h = calloc(1, sizeof(*h));
    if (h == NULL) {
      r = CUDA_ERROR_OUT_OF_MEMORY;
    } else {
      h->p = p;
      h->n = bytesize;
      h->registered = 1;
      h->next = g.hmems;
      g.hmems = h;
      g.live_reg++;
    }
  }
  pthread_mutex_unlock(&g.mu);
  RETURN(r);
}

CUresult cuMemHostUnregister(void *p) {
  ENTER(cuMemHostUnregister);
  pthread_mutex_lock(&g.mu);
  CUresult r = need_ctx_locked("cuMemHostUnregister");
  hmem **pp = &g.hmems;
  while (*pp && !((*pp)->p == p && (*pp)->registered))
    pp = &(*pp)->next;
  if (r == CUDA_SUCCESS && *pp == NULL) {
    misuse_locked("cuMemHostUnregister of %p, which is not registered", p);
    r = CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED;
  }
  if (r == CUDA_SUCCESS) {
    hmem *h = *pp;
    if (in_flight_locked(h->p, h->n, 0))
      misuse_locked("cuMemHostUnregister of %p while a copy from or to it is in flight", p);
    *pp = h->next;
    free(h);
    g.live_reg--;
  }
  pthread_mutex_unlock(&g.mu);
  RETURN(r);
}

/* ---- copies -------------------------------------------------------------- */

static CUresult copy(int fn, int to_device, uint64_t dptr, void *host, size_t n, CUstream hs) {
  const char *name = fn_names[fn];
  pthread_mutex_lock(&g.mu);
  CUresult r = need_ctx_locked(name);
  struct CUstream_st *s = hs;
  if (r == CUDA_SUCCESS && host == NULL)
    r = CUDA_ERROR_INVALID_VALUE;
  if (r == CUDA_SUCCESS && s != NULL && !valid_stream_locked(s)) {
    misuse_locked("%s on a stream that is not live", name);
    r = CUDA_ERROR_INVALID_HANDLE;
  }
  if (r == CUDA_SUCCESS && s != NULL && s->ctx != cur) {
    misuse_locked("%s on a stream of another context", name);
    r = CUDA_ERROR_INVALID_CONTEXT;
  }
  if (r != CUDA_SUCCESS || n == 0) {
    pthread_mutex_unlock(&g.mu);
    return r;
  }
  int async = 0;
  int code = fault_locked(name, "copy", CUDA_ERROR_INVALID_VALUE, &async);
  if (code != 0 && !async) {
    pthread_mutex_unlock(&g.mu);
    return (CUresult)code;
  }
  int gpu = -1;
  char *dev = xlate_locked(dptr, n, &gpu, &r);
  if (dev == NULL) {
    pthread_mutex_unlock(&g.mu);
    return r;
  }
  if (gpu != cur->gpu) {
    misuse_locked("%s to device memory of another GPU than the current context's", name);
    pthread_mutex_unlock(&g.mu);
    return CUDA_ERROR_INVALID_VALUE;
  }
  int pinned = pinned_locked(host, n) != NULL;
  op *o = calloc(1, sizeof(*o));
  if (o == NULL) {
    pthread_mutex_unlock(&g.mu);
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  o->kind = to_device ? OP_H2D : OP_D2H;
  o->dev = dev;
  o->host = host;
  o->n = n;
  o->fail = async ? code : 0;
  o->src = host;
  if (to_device && !pinned) {
    /* pageable: the driver stages the source before it returns */
    o->stage = malloc(n);
    if (o->stage == NULL) {
      free(o);
      pthread_mutex_unlock(&g.mu);
      return CUDA_ERROR_OUT_OF_MEMORY;
    }
    memcpy(o->stage, host, n);
    o->src = o->stage;
    o->host = NULL; /* the user's memory is free to change at once */
  }
  if (s == NULL) {
    /* the legacy default stream: done here, in order */
    if (!o->fail) {
      if (to_device)
        memcpy(o->dev, o->src, n);
      else
        memcpy(host, o->dev, n);
    }
    r = (CUresult)o->fail;
    free(o->stage);
    free(o);
    pthread_mutex_unlock(&g.mu);
    return r;
  }
  int wait = !to_device && !pinned; /* pageable: returns once done */
  o->waited = wait;
  enqueue_locked(s, o);
  if (wait) {
    while (!o->done)
      pthread_cond_wait(&g.cv, &g.mu);
    free(o);
  }
  pthread_mutex_unlock(&g.mu);
  return CUDA_SUCCESS;
}

CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dstDevice, const void *srcHost, size_t ByteCount,
                              CUstream hStream) {
  ENTER(cuMemcpyHtoDAsync);
  RETURN(copy(FN_cuMemcpyHtoDAsync, 1, dstDevice, (void *)(uintptr_t)srcHost, ByteCount,
              hStream));
}

CUresult cuMemcpyDtoHAsync_v2(void *dstHost, CUdeviceptr srcDevice, size_t ByteCount,
                              CUstream hStream) {
  ENTER(cuMemcpyDtoHAsync);
  RETURN(copy(FN_cuMemcpyDtoHAsync, 0, srcDevice, dstHost, ByteCount, hStream));
}

/* ---- streams and events -------------------------------------------------- */

CUresult cuStreamCreate(CUstream *phStream, unsigned int Flags) {
  ENTER(cuStreamCreate);
  pthread_mutex_lock(&g.mu);
  CUresult r = need_ctx_locked("cuStreamCreate");
  if (r == CUDA_SUCCESS && phStream == NULL)
    r = CUDA_ERROR_INVALID_VALUE;
  if (r == CUDA_SUCCESS) {
    int code = fault_locked("cuStreamCreate", "stream", CUDA_ERROR_OUT_OF_MEMORY, NULL);
    if (code != 0)
      r = (CUresult)code;
  }
  if (r == CUDA_SUCCESS) {
    struct CUstream_st *s = calloc(1, sizeof(*s));
    if (s == NULL) {
      r = CUDA_ERROR_OUT_OF_MEMORY;
    } else {
      s->ctx = cur;
      s->alive = 1;
      s->seed = (unsigned)(uintptr_t)s;
      pthread_cond_init(&s->cv, NULL);
      if (pthread_create(&s->th, NULL, stream_main, s) != 0) {
        pthread_cond_destroy(&s->cv);
        free(s);
        r = CUDA_ERROR_OUT_OF_MEMORY;
      } else {
        s->next = g.streams;
        g.streams = s;
        g.live_stream++;
        *phStream = s;
      }
    }
  }
  pthread_mutex_unlock(&g.mu);
  RETURN(r);
}

CUresult cuStreamDestroy_v2(CUstream hStream) {
  ENTER(cuStreamDestroy);
  pthread_mutex_lock(&g.mu);
  CUresult r = g.inited ? CUDA_SUCCESS : CUDA_ERROR_NOT_INITIALIZED;
  if (r == CUDA_SUCCESS && !valid_stream_locked(hStream)) {
    misuse_locked("cuStreamDestroy of a stream that is not live");
    r = CUDA_ERROR_INVALID_HANDLE;
  }
  if (r == CUDA_SUCCESS) {
    g.live_stream--;
    stream_end_locked(hStream); /* its work runs out first, as the driver's */
  }
  pthread_mutex_unlock(&g.mu);
  RETURN(r);
}

CUresult cuStreamSynchronize(CUstream hStream) {
  ENTER(cuStreamSynchronize);
  pthread_mutex_lock(&g.mu);
  CUresult r = g.inited ? CUDA_SUCCESS : CUDA_ERROR_NOT_INITIALIZED;
  struct CUstream_st *s = hStream;
  if (r == CUDA_SUCCESS && s != NULL && !valid_stream_locked(s)) {
    misuse_locked("cuStreamSynchronize of a stream that is not live");
    r = CUDA_ERROR_INVALID_HANDLE;
  }
  if (r == CUDA_SUCCESS && s != NULL) {
    stream_drain_locked(s);
    r = (CUresult)s->err;
    s->err = 0;
  }
  pthread_mutex_unlock(&g.mu);
  RETURN(r);
}

CUresult cuEventCreate(CUevent *phEvent, unsigned int Flags) {
  ENTER(cuEventCreate);
  pthread_mutex_lock(&g.mu);
  CUresult r = need_ctx_locked("cuEventCreate");
  if (r == CUDA_SUCCESS && phEvent == NULL)
    r = CUDA_ERROR_INVALID_VALUE;
  if (r == CUDA_SUCCESS) {
    int code = fault_locked("cuEventCreate", "event", CUDA_ERROR_OUT_OF_MEMORY, NULL);
    if (code != 0)
      r = (CUresult)code;
  }
  if (r == CUDA_SUCCESS) {
    struct CUevent_st *e = calloc(1, sizeof(*e));
    if (e == NULL) {
      r = CUDA_ERROR_OUT_OF_MEMORY;
    } else {
      e->ctx = cur;
      e->next = g.events;
      g.events = e;
      g.live_event++;
      *phEvent = e;
    }
  }
  pthread_mutex_unlock(&g.mu);
  RETURN(r);
}

CUresult cuEventRecord(CUevent hEvent, CUstream hStream) {
  ENTER(cuEventRecord);
  pthread_mutex_lock(&g.mu);
  CUresult r = g.inited ? CUDA_SUCCESS : CUDA_ERROR_NOT_INITIALIZED;
  struct CUevent_st *e = hEvent;
  struct CUstream_st *s = hStream;
  if (r == CUDA_SUCCESS && !valid_event_locked(e)) {
    misuse_locked("cuEventRecord of an event that is not live");
    r = CUDA_ERROR_INVALID_HANDLE;
  }
  if (r == CUDA_SUCCESS && s != NULL && !valid_stream_locked(s)) {
    misuse_locked("cuEventRecord on a stream that is not live");
    r = CUDA_ERROR_INVALID_HANDLE;
  }
  if (r == CUDA_SUCCESS && s != NULL && s->ctx != e->ctx) {
    misuse_locked("cuEventRecord of an event on a stream of another context");
    r = CUDA_ERROR_INVALID_HANDLE;
  }
  if (r == CUDA_SUCCESS) {
    int code = fault_locked("cuEventRecord", "event", CUDA_ERROR_INVALID_VALUE, NULL);
    if (code != 0)
      r = (CUresult)code;
  }
  if (r == CUDA_SUCCESS && s == NULL) {
    e->done_gen = ++e->rec_gen; /* the legacy stream: everything is done */
  } else if (r == CUDA_SUCCESS) {
    op *o = calloc(1, sizeof(*o));
    if (o == NULL) {
      r = CUDA_ERROR_OUT_OF_MEMORY;
    } else {
      o->kind = OP_MARK;
      o->ev = e;
      o->ev_gen = ++e->rec_gen;
      e->pending++;
      enqueue_locked(s, o);
    }
  }
  pthread_mutex_unlock(&g.mu);
  RETURN(r);
}

CUresult cuEventSynchronize(CUevent hEvent) {
  ENTER(cuEventSynchronize);
  pthread_mutex_lock(&g.mu);
  CUresult r = g.inited ? CUDA_SUCCESS : CUDA_ERROR_NOT_INITIALIZED;
  struct CUevent_st *e = hEvent;
  if (r == CUDA_SUCCESS && !valid_event_locked(e)) {
    misuse_locked("cuEventSynchronize of an event that is not live");
    r = CUDA_ERROR_INVALID_HANDLE;
  }
  if (r == CUDA_SUCCESS) {
    while (e->done_gen < e->rec_gen)
      pthread_cond_wait(&g.cv, &g.mu);
    r = (CUresult)e->err;
    e->err = 0;
  }
  pthread_mutex_unlock(&g.mu);
  RETURN(r);
}

CUresult cuEventDestroy_v2(CUevent hEvent) {
  ENTER(cuEventDestroy);
  pthread_mutex_lock(&g.mu);
  CUresult r = g.inited ? CUDA_SUCCESS : CUDA_ERROR_NOT_INITIALIZED;
  struct CUevent_st *e = hEvent;
  if (r == CUDA_SUCCESS && !valid_event_locked(e)) {
    misuse_locked("cuEventDestroy of an event that is not live (destroyed twice?)");
    r = CUDA_ERROR_INVALID_HANDLE;
  }
  if (r == CUDA_SUCCESS) {
    e->destroyed = 1; /* kept: a marker may still be queued, and stale handles stay checkable */
    g.live_event--;
  }
  pthread_mutex_unlock(&g.mu);
  RETURN(r);
}

/* ---- virtual memory management ------------------------------------------ */

#ifndef MBSI_MINIMAL
/* The machine GPU of an allocation property; -1 when it is not one the
 * stand-in serves (pinned device memory of a visible GPU). */
static int prop_gpu_locked(const CUmemAllocationProp *prop) {
  if (prop == NULL || prop->type != CU_MEM_ALLOCATION_TYPE_PINNED ||
      prop->location.type != CU_MEM_LOCATION_TYPE_DEVICE || prop->location.id < 0 ||
      prop->location.id >= g.n_dev)
    return -1;
  return g.map[prop->location.id];
}

CUresult cuMemGetAllocationGranularity(size_t *granularity, const CUmemAllocationProp *prop,
                                       CUmemAllocationGranularity_flags option) {
  ENTER(cuMemGetAllocationGranularity);
  pthread_mutex_lock(&g.mu);
  CUresult r = g.inited ? CUDA_SUCCESS : CUDA_ERROR_NOT_INITIALIZED;
  if (r == CUDA_SUCCESS && (granularity == NULL || prop_gpu_locked(prop) < 0))
    r = CUDA_ERROR_INVALID_VALUE;
  if (r == CUDA_SUCCESS)
    r = (CUresult)fault_locked("cuMemGetAllocationGranularity", "vmm", CUDA_ERROR_NOT_SUPPORTED,
                               NULL);
  if (r == CUDA_SUCCESS)
    *granularity = GRAN;
  pthread_mutex_unlock(&g.mu);
  RETURN(r);
}

CUresult cuMemAddressReserve(CUdeviceptr *ptr, size_t size, size_t alignment, CUdeviceptr addr,
                             unsigned long long flags) {
  ENTER(cuMemAddressReserve);
  pthread_mutex_lock(&g.mu);
  CUresult r = g.inited ? CUDA_SUCCESS : CUDA_ERROR_NOT_INITIALIZED;
  if (r == CUDA_SUCCESS && (ptr == NULL || size == 0 || size % GRAN != 0)) {
    misuse_locked("cuMemAddressReserve of %zu bytes, not a multiple of the granularity", size);
    r = CUDA_ERROR_INVALID_VALUE;
  }
  if (r == CUDA_SUCCESS) {
    int code = fault_locked("cuMemAddressReserve", "vmm", CUDA_ERROR_OUT_OF_MEMORY, NULL);
    if (code != 0)
      r = (CUresult)code;
  }
  if (r == CUDA_SUCCESS) {
    dmem *d = calloc(1, sizeof(*d));
    uint64_t a = d ? va_take_locked(MBSI_MAX_GPUS, size, alignment > GRAN ? alignment : GRAN) : 0;
    if (a == 0) {
      free(d);
      r = CUDA_ERROR_OUT_OF_MEMORY;
    } else {
      d->addr = a;
      d->size = size;
      d->gpu = -1;
      d->next = g.dmems;
      g.dmems = d;
      g.live_reserve++;
      *ptr = (CUdeviceptr)a;
    }
  }
  pthread_mutex_unlock(&g.mu);
  RETURN(r);
}

CUresult cuMemAddressFree(CUdeviceptr ptr, size_t size) {
  ENTER(cuMemAddressFree);
  pthread_mutex_lock(&g.mu);
  CUresult r = g.inited ? CUDA_SUCCESS : CUDA_ERROR_NOT_INITIALIZED;
  dmem **pp = &g.dmems;
  while (*pp && !((*pp)->addr == ptr && (*pp)->back == NULL))
    pp = &(*pp)->next;
  if (r == CUDA_SUCCESS && (*pp == NULL || (*pp)->size != size)) {
    misuse_locked("cuMemAddressFree of [0x%llx, +%zu), which is not a reservation",
                  (unsigned long long)ptr, size);
    r = CUDA_ERROR_INVALID_VALUE;
  } else if (r == CUDA_SUCCESS && (*pp)->maps != NULL) {
    misuse_locked("cuMemAddressFree of a range that is still mapped");
    r = CUDA_ERROR_INVALID_VALUE;
  }
  if (r == CUDA_SUCCESS) {
    dmem *d = *pp;
    *pp = d->next;
    free(d);
    g.live_reserve--;
  }
  pthread_mutex_unlock(&g.mu);
  RETURN(r);
}

static void vhandle_free_locked(vhandle *h) {
  for (vhandle **pp = &g.vhandles; *pp; pp = &(*pp)->next)
    if (*pp == h) {
      *pp = h->next;
      break;
    }
  account_locked(h->gpu, -(int64_t)h->size);
  unbacking(h->back, h->size);
  free(h);
}

static vhandle *vhandle_find_locked(CUmemGenericAllocationHandle handle) {
  for (vhandle *h = g.vhandles; h; h = h->next)
    if ((CUmemGenericAllocationHandle)(uintptr_t)h == handle && !h->released)
      return h;
  return NULL;
}

CUresult cuMemCreate(CUmemGenericAllocationHandle *handle, size_t size,
                     const CUmemAllocationProp *prop, unsigned long long flags) {
  ENTER(cuMemCreate);
  pthread_mutex_lock(&g.mu);
  CUresult r = g.inited ? CUDA_SUCCESS : CUDA_ERROR_NOT_INITIALIZED;
  int gpu = r == CUDA_SUCCESS ? prop_gpu_locked(prop) : -1;
  if (r == CUDA_SUCCESS && (handle == NULL || gpu < 0 || size == 0 || size % GRAN != 0)) {
    misuse_locked("cuMemCreate of %zu bytes with a bad property or size", size);
    r = CUDA_ERROR_INVALID_VALUE;
  }
  if (r == CUDA_SUCCESS && gpu_lost(gpu))
    r = LOST_CODE;
  if (r == CUDA_SUCCESS) {
    int code = fault_locked("cuMemCreate", "alloc vmm", CUDA_ERROR_OUT_OF_MEMORY, NULL);
    if (code != 0)
      r = (CUresult)code;
  }
  if (r == CUDA_SUCCESS) {
    vhandle *h = calloc(1, sizeof(*h));
    if (h == NULL || (r = account_locked(gpu, (int64_t)size)) != CUDA_SUCCESS) {
      free(h);
      if (r == CUDA_SUCCESS)
        r = CUDA_ERROR_OUT_OF_MEMORY;
    } else if ((h->back = backing(size)) == NULL) {
      account_locked(gpu, -(int64_t)size);
      free(h);
      r = CUDA_ERROR_OUT_OF_MEMORY;
    } else {
      h->size = size;
      h->gpu = gpu;
      h->next = g.vhandles;
      g.vhandles = h;
      g.live_vmem++;
      *handle = (CUmemGenericAllocationHandle)(uintptr_t)h;
    }
  }
  pthread_mutex_unlock(&g.mu);
  RETURN(r);
}

CUresult cuMemRelease(CUmemGenericAllocationHandle handle) {
  ENTER(cuMemRelease);
  pthread_mutex_lock(&g.mu);
  CUresult r = g.inited ? CUDA_SUCCESS : CUDA_ERROR_NOT_INITIALIZED;
  vhandle *h = vhandle_find_locked(handle);
  if (r == CUDA_SUCCESS && h == NULL) {
    misuse_locked("cuMemRelease of a handle that is not live (released twice?)");
    r = CUDA_ERROR_INVALID_VALUE;
  }
  if (r == CUDA_SUCCESS) {
    h->released = 1;
    g.live_vmem--;
    if (h->maps == 0)
      vhandle_free_locked(h); /* else once unmapped */
  }
  pthread_mutex_unlock(&g.mu);
  RETURN(r);
}

CUresult cuMemMap(CUdeviceptr ptr, size_t size, size_t offset, CUmemGenericAllocationHandle handle,
                  unsigned long long flags) {
  ENTER(cuMemMap);
  pthread_mutex_lock(&g.mu);
  CUresult r = g.inited ? CUDA_SUCCESS : CUDA_ERROR_NOT_INITIALIZED;
  dmem *d = dmem_at_locked(ptr);
  vhandle *h = vhandle_find_locked(handle);
  if (r == CUDA_SUCCESS &&
      (d == NULL || d->back != NULL || ptr + size > d->addr + d->size || h == NULL ||
       size == 0 || size % GRAN != 0 || (ptr - d->addr) % GRAN != 0 || offset != 0 ||
       size > h->size)) {
    misuse_locked("cuMemMap of [0x%llx, +%zu) offset %zu: not inside a reservation, a bad "
                  "handle, or sizes off the granularity",
                  (unsigned long long)ptr, size, offset);
    r = CUDA_ERROR_INVALID_VALUE;
  }
  if (r == CUDA_SUCCESS)
    for (vmapping *v = d->maps; v; v = v->next)
      if (ptr < v->addr + v->size && v->addr < ptr + size) {
        misuse_locked("cuMemMap over a range already mapped");
        r = CUDA_ERROR_INVALID_VALUE;
        break;
      }
  if (r == CUDA_SUCCESS) {
    int code = fault_locked("cuMemMap", "vmm", CUDA_ERROR_OUT_OF_MEMORY, NULL);
    if (code != 0)
      r = (CUresult)code;
  }
  if (r == CUDA_SUCCESS) {
    vmapping *v = calloc(1, sizeof(*v));
    if (v == NULL) {
      r = CUDA_ERROR_OUT_OF_MEMORY;
    } else {
      v->addr = ptr;
      v->size = size;
      v->h = h;
      v->next = d->maps;
      d->maps = v;
      h->maps++;
      g.live_map++;
    }
  }
  pthread_mutex_unlock(&g.mu);
  RETURN(r);
}

CUresult cuMemUnmap(CUdeviceptr ptr, size_t size) {
  ENTER(cuMemUnmap);
  pthread_mutex_lock(&g.mu);
  CUresult r = g.inited ? CUDA_SUCCESS : CUDA_ERROR_NOT_INITIALIZED;
  dmem *d = dmem_at_locked(ptr);
  vmapping **pp = d != NULL && d->back == NULL ? &d->maps : NULL;
  while (pp != NULL && *pp != NULL && !((*pp)->addr == ptr && (*pp)->size == size))
    pp = &(*pp)->next;
  if (r == CUDA_SUCCESS && (pp == NULL || *pp == NULL)) {
    misuse_locked("cuMemUnmap of [0x%llx, +%zu), which is not a mapping",
                  (unsigned long long)ptr, size);
    r = CUDA_ERROR_INVALID_VALUE;
  }
  if (r == CUDA_SUCCESS) {
    vmapping *v = *pp;
    wait_idle_locked(v->h->back, v->size, 1); /* synchronizes, as cuMemFree */
    for (pp = &d->maps; *pp != v; pp = &(*pp)->next)
      ;
    *pp = v->next;
    vhandle *h = v->h;
    free(v);
    g.live_map--;
    if (--h->maps == 0 && h->released)
      vhandle_free_locked(h);
  }
  pthread_mutex_unlock(&g.mu);
  RETURN(r);
}

CUresult cuMemSetAccess(CUdeviceptr ptr, size_t size, const CUmemAccessDesc *desc, size_t count) {
  ENTER(cuMemSetAccess);
  pthread_mutex_lock(&g.mu);
  CUresult r = g.inited ? CUDA_SUCCESS : CUDA_ERROR_NOT_INITIALIZED;
  dmem *d = dmem_at_locked(ptr);
  if (r == CUDA_SUCCESS &&
      (desc == NULL || count != 1 || desc->location.type != CU_MEM_LOCATION_TYPE_DEVICE ||
       desc->location.id < 0 || desc->location.id >= g.n_dev ||
       desc->flags != CU_MEM_ACCESS_FLAGS_PROT_READWRITE)) {
    misuse_locked("cuMemSetAccess with a descriptor the stand-in does not serve");
    r = CUDA_ERROR_INVALID_VALUE;
  }
  /* the range must be mapped, every byte */
  size_t covered = 0;
  if (r == CUDA_SUCCESS && d != NULL && d->back == NULL)
    for (vmapping *v = d->maps; v; v = v->next)
      if (v->addr >= ptr && v->addr + v->size <= ptr + size)
        covered += v->size;
  if (r == CUDA_SUCCESS && covered != size) {
    misuse_locked("cuMemSetAccess of [0x%llx, +%zu), which is not all mapped",
                  (unsigned long long)ptr, size);
    r = CUDA_ERROR_INVALID_VALUE;
  }
  if (r == CUDA_SUCCESS) {
    int code = fault_locked("cuMemSetAccess", "vmm", CUDA_ERROR_OUT_OF_MEMORY, NULL);
    if (code != 0)
      r = (CUresult)code;
  }
  if (r == CUDA_SUCCESS)
    for (vmapping *v = d->maps; v; v = v->next)
      if (v->addr >= ptr && v->addr + v->size <= ptr + size)
        v->access = 1;
  pthread_mutex_unlock(&g.mu);
  RETURN(r);
}
#endif /* !MBSI_MINIMAL */

/* ---- the checkpoint API -------------------------------------------------- */

#if !defined(MBSI_MINIMAL) && !defined(MBSI_NO_CHECKPOINT)
/* The row of pid for a checkpoint call from this process; NULL with *rc. */
static mbsi_proc *ckpt_target(int pid, CUresult *rc) {
  pthread_mutex_lock(&g.mu);
  int inited = g.inited;
  pthread_mutex_unlock(&g.mu);
  if (!inited) {
    *rc = CUDA_ERROR_NOT_INITIALIZED;
    return NULL;
  }
  mbsi_machine *m = mbsi_machine_get();
  mbsi_lock();
  mbsi_reap_locked(m);
  mbsi_proc *p = pid > 0 ? mbsi_proc_find_locked(m, pid, 0) : NULL;
  mbsi_unlock();
  if (p == NULL)
    *rc = CUDA_ERROR_INVALID_VALUE; /* no process of that pid uses CUDA */
  return p;
}

static int ckpt_fault(const char *name) {
  pthread_mutex_lock(&g.mu);
  int code = fault_locked(name, "checkpoint", CUDA_ERROR_UNKNOWN, NULL);
  pthread_mutex_unlock(&g.mu);
  return code;
}

static int zeroed(const void *p, size_t n) {
  const unsigned char *b = p;
  for (size_t i = 0; i < n; i++)
    if (b[i] != 0)
      return 0;
  return 1;
}

CUresult cuCheckpointProcessGetState(int pid, CUprocessState *state) {
  ENTER(cuCheckpointProcessGetState);
  CUresult r = CUDA_SUCCESS;
  mbsi_proc *p = ckpt_target(pid, &r);
  if (p != NULL && state == NULL)
    r = CUDA_ERROR_INVALID_VALUE;
  else if (p != NULL && (r = (CUresult)ckpt_fault("cuCheckpointProcessGetState")) != 0)
    ;
  else if (p != NULL)
    *state = (CUprocessState)atomic_load(&p->state);
  RETURN(r);
}

CUresult cuCheckpointProcessLock(int pid, CUcheckpointLockArgs *args) {
  ENTER(cuCheckpointProcessLock);
  CUresult r = CUDA_SUCCESS;
  mbsi_proc *p = ckpt_target(pid, &r);
  if (p != NULL && args != NULL &&
      (args->reserved0 != 0 || !zeroed(args->reserved1, sizeof(args->reserved1))))
    r = CUDA_ERROR_INVALID_VALUE;
  if (p != NULL && r == CUDA_SUCCESS) {
    int code = ckpt_fault("cuCheckpointProcessLock");
    if (code != 0)
      r = (CUresult)code;
  }
  int expect = 0;
  if (p != NULL && r == CUDA_SUCCESS &&
      (atomic_load(&p->state) != MBSI_RUNNING ||
       !atomic_compare_exchange_strong(&p->lock_req, &expect, 1)))
    r = CUDA_ERROR_ILLEGAL_STATE;
  if (p != NULL && r == CUDA_SUCCESS) {
    /* the calls and the work in progress run out; new ones wait */
    long long limit = args && args->timeoutMs ? (long long)args->timeoutMs : 60000;
    long long t0 = mbsi_now_ms();
    while (atomic_load(&p->in_call) > 0 && mbsi_now_ms() - t0 < limit) {
      struct timespec ts = {0, 1000000};
      nanosleep(&ts, NULL);
    }
    if (atomic_load(&p->in_call) > 0) {
      atomic_store(&p->lock_req, 0); /* left RUNNING, as the driver does */
      r = CUDA_ERROR_NOT_READY;
    } else {
      atomic_store(&p->state, MBSI_LOCKED);
    }
  }
  RETURN(r);
}

CUresult cuCheckpointProcessCheckpoint(int pid, CUcheckpointCheckpointArgs *args) {
  ENTER(cuCheckpointProcessCheckpoint);
  CUresult r = CUDA_SUCCESS;
  mbsi_proc *p = ckpt_target(pid, &r);
  if (p != NULL && args != NULL && !zeroed(args->reserved, sizeof(args->reserved)))
    r = CUDA_ERROR_INVALID_VALUE;
  if (p != NULL && r == CUDA_SUCCESS && atomic_load(&p->state) != MBSI_LOCKED)
    r = CUDA_ERROR_ILLEGAL_STATE;
  if (p != NULL && r == CUDA_SUCCESS) {
    int code = ckpt_fault("cuCheckpointProcessCheckpoint");
    if (code != 0)
      r = (CUresult)code;
  }
  if (p != NULL && r == CUDA_SUCCESS) {
    mbsi_lock();
    for (int i = 0; i < MBSI_MAX_GPUS; i++) {
      p->saved[i] = p->dev[i];
      p->dev[i] = 0;
    }
    atomic_store(&p->state, MBSI_CHECKPOINTED);
    mbsi_unlock();
  }
  RETURN(r);
}

CUresult cuCheckpointProcessRestore(int pid, CUcheckpointRestoreArgs *args) {
  ENTER(cuCheckpointProcessRestore);
  CUresult r = CUDA_SUCCESS;
  mbsi_proc *p = ckpt_target(pid, &r);
  if (p != NULL && args != NULL &&
      (args->gpuPairs != NULL || args->gpuPairsCount != 0 ||
       !zeroed(args->reserved, sizeof(args->reserved)) || args->reserved1 != 0))
    r = CUDA_ERROR_INVALID_VALUE;
  if (p != NULL && r == CUDA_SUCCESS && atomic_load(&p->state) != MBSI_CHECKPOINTED)
    r = CUDA_ERROR_ILLEGAL_STATE;
  if (p != NULL && r == CUDA_SUCCESS) {
    int code = ckpt_fault("cuCheckpointProcessRestore");
    if (code != 0)
      r = (CUresult)code;
  }
  if (p != NULL && r == CUDA_SUCCESS) {
    mbsi_machine *m = mbsi_machine_get();
    mbsi_lock();
    mbsi_reap_locked(m);
    for (int i = 0; i < m->n_gpus; i++)
      if (p->saved[i] > 0 && (atomic_load(&m->gpu[i].lost) ||
                              mbsi_used_locked(m, i) + p->saved[i] > m->gpu[i].total))
        r = CUDA_ERROR_OUT_OF_MEMORY;
    if (r == CUDA_SUCCESS) {
      for (int i = 0; i < MBSI_MAX_GPUS; i++) {
        p->dev[i] = p->saved[i];
        p->saved[i] = 0;
      }
      atomic_store(&p->state, MBSI_LOCKED);
    }
    mbsi_unlock();
  }
  RETURN(r);
}

CUresult cuCheckpointProcessUnlock(int pid, CUcheckpointUnlockArgs *args) {
  ENTER(cuCheckpointProcessUnlock);
  CUresult r = CUDA_SUCCESS;
  mbsi_proc *p = ckpt_target(pid, &r);
  if (p != NULL && args != NULL && !zeroed(args->reserved, sizeof(args->reserved)))
    r = CUDA_ERROR_INVALID_VALUE;
  if (p != NULL && r == CUDA_SUCCESS && atomic_load(&p->state) != MBSI_LOCKED)
    r = CUDA_ERROR_ILLEGAL_STATE;
  if (p != NULL && r == CUDA_SUCCESS) {
    int code = ckpt_fault("cuCheckpointProcessUnlock");
    if (code != 0)
      r = (CUresult)code;
  }
  if (p != NULL && r == CUDA_SUCCESS) {
    atomic_store(&p->state, MBSI_RUNNING);
    atomic_store(&p->lock_req, 0);
  }
  RETURN(r);
}
#endif

/* ---- the tests' side (standin.h) ---------------------------------------- */

int mbsi_live(const char *kind) {
  pthread_mutex_lock(&g.mu);
  const struct {
    const char *name;
    int n;
  } k[] = {{"ctx", g.live_ctx},         {"stream", g.live_stream}, {"event", g.live_event},
           {"alloc", g.live_alloc},     {"host", g.live_host},     {"register", g.live_reg},
           {"reserve", g.live_reserve}, {"vmem", g.live_vmem},     {"map", g.live_map}};
  int n = 0;
  for (size_t i = 0; i < sizeof(k) / sizeof(k[0]); i++)
    if (kind == NULL || strcmp(kind, "all") == 0 || strcmp(kind, k[i].name) == 0)
      n += k[i].n;
  pthread_mutex_unlock(&g.mu);
  return n;
}

void mbsi_live_text(char *buf, size_t len) {
  pthread_mutex_lock(&g.mu);
  snprintf(buf, len,
           "\"ctx\": %d, \"stream\": %d, \"event\": %d, \"alloc\": %d, \"host\": %d, "
           "\"register\": %d, \"reserve\": %d, \"vmem\": %d, \"map\": %d, \"reclaimed\": %d, "
           "\"misuses\": %d",
           g.live_ctx, g.live_stream, g.live_event, g.live_alloc, g.live_host, g.live_reg,
           g.live_reserve, g.live_vmem, g.live_map, g.reclaimed, g.misuses);
  pthread_mutex_unlock(&g.mu);
}

unsigned mbsi_calls(const char *name) {
  for (int i = 0; i < N_FNS; i++)
    if (strcmp(fn_names[i], name) == 0)
      return __atomic_load_n(&g.calls[i], __ATOMIC_RELAXED);
  return 0;
}

int mbsi_misuses(char *last, size_t len) {
  pthread_mutex_lock(&g.mu);
  int n = g.misuses;
  if (last != NULL && len > 0)
    snprintf(last, len, "%s", g.last_misuse);
  pthread_mutex_unlock(&g.mu);
  return n;
}

int mbsi_reclaimed(void) {
  pthread_mutex_lock(&g.mu);
  int n = g.reclaimed;
  pthread_mutex_unlock(&g.mu);
  return n;
}

int mbsi_fail(const char *spec) {
  pthread_mutex_lock(&g.mu);
  int rc = mbsi_rules_parse(&g.rules, spec);
  g.fired = 0;
  pthread_mutex_unlock(&g.mu);
  return rc;
}

unsigned mbsi_fired(void) {
  pthread_mutex_lock(&g.mu);
  unsigned n = g.fired;
  pthread_mutex_unlock(&g.mu);
  return n;
}

void mbsi_lose(int gpu, int lost) {
  mbsi_machine *m = mbsi_machine_get();
  if (gpu >= 0 && gpu < m->n_gpus)
    atomic_store(&m->gpu[gpu].lost, lost);
}

void mbsi_set_copy_delay_us(unsigned us) {
  pthread_mutex_lock(&g.mu);
  g.delay_us = us;
  pthread_mutex_unlock(&g.mu);
}

/* At exit: the process's row is marked gone (its memory goes back after
 * release_ms, as the driver's does), and with MB_STANDIN_REPORT one line of
 * what it left is appended there. */
__attribute__((destructor)) static void at_exit(void) {
  const char *path = getenv("MB_STANDIN_REPORT");
  if (path != NULL && path[0] != '\0' && g.inited) {
    char live[512];
    mbsi_live_text(live, sizeof(live));
    FILE *f = fopen(path, "a");
    if (f != NULL) {
      fprintf(f, "{\"pid\": %d, %s}\n", (int)getpid(), live);
      fclose(f);
    }
  }
  if (g.self_pid == getpid()) {
    mbsi_machine *m = mbsi_machine_get();
    mbsi_lock();
    mbsi_proc *p = mbsi_proc_find_locked(m, g.self_pid, 0);
    if (p != NULL)
      p->gone_ms = mbsi_now_ms();
    mbsi_unlock();
  }
}
