/*
 * modelbuf.h - the whole public API of libmodelbuf.
 *
 * libmodelbuf keeps machine-learning models in device memory only while they
 * earn it: a model is loaded on first use (mb_acquire), kept while leases are
 * out, moved to host RAM (offloaded) when it has been idle for its keep-alive,
 * freed when it stays idle for its host keep-alive, and evicted (cheapest to
 * bring back first) when another model needs its room.
 *
 * The residency core is one deterministic state machine. It is driven by
 * three kinds of event: posted requests (acquire, release, load, offload,
 * unload, keep-alive), timer expiries and backend completions. Given the same
 * events and the same clock it makes the same decisions.
 *
 * Two ways to run it:
 *   - Threaded (the default): mb_ctx_new() starts a core thread and a pool of
 *     loader threads. Every function below may be called from any thread;
 *     the blocking ones (mb_acquire, mb_load, ...) post a request and wait.
 *   - Manual (opts.manual = 1): no threads at all. The caller steps the core
 *     with mb_ctx_step() and runs backend jobs itself through an executor
 *     (mb_executor), under a clock it controls. Unit tests and the trace
 *     simulator run this way. Only the *_async functions may be used, since
 *     nothing would answer a blocking call.
 *
 * Errors: every fallible function returns 0 or a negative MB_E* code; human
 * detail goes into an optional caller buffer (err, err_len) or into the
 * model's status.error. The library never aborts on bad input or allocation
 * failure.
 *
 * Times are nanoseconds of the context's clock (monotonic). Durations given
 * to the API are in milliseconds; keep-alive values use MB_FOREVER (-1) for
 * "never expire" and MB_DEFAULT (-2) for "use the model's setting".
 *
 * Option structs (mb_ctx_opts, mb_model_opts, mb_device_opts,
 * mb_acquire_opts; mb_tensors_opts in tensors.h) start with a size field:
 * fill each with its *_init function, which sets size and the defaults,
 * then change the fields you want. Fields are only ever added at the end,
 * so a program built against an older header keeps working with a newer
 * library (the fields it does not know keep their defaults); a struct not
 * filled by its *_init (size 0), or from a newer header than the library,
 * is refused with MB_EINVAL. docs/LIBRARY.md has the rule.
 */
#ifndef MODELBUF_H
#define MODELBUF_H

#include <stddef.h>
#include <stdint.h>

#include "modelbuf/version.h"

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__) || defined(__clang__)
#define MB_EXTERN __attribute__((visibility("default")))
#define MB_WUR __attribute__((warn_unused_result))
#else
#define MB_EXTERN
#define MB_WUR
#endif

/* ------------------------------------------------------------------------ */
/* Errors                                                                    */

/*
 * One list gives the codes, their names and their text. Codes are only ever
 * appended, never renumbered: MB_EINVAL is -1 for ever.
 */
#define MB_ERR_MAP(XX)                                                        \
  XX(EINVAL, -1, "invalid argument")                                          \
  XX(ENOENT, -2, "no such model")                                             \
  XX(ENOMEM, -3, "out of memory")                                             \
  XX(EBUSY, -4, "resource busy")                                              \
  XX(EQUEUEFULL, -5, "queue full")                                            \
  XX(ETIMEDOUT, -6, "timed out")                                              \
  XX(ENOSPC, -7, "model does not fit on any device")                          \
  XX(ELOAD, -8, "model failed to load")                                       \
  XX(EBACKEND, -9, "backend operation failed")                                \
  XX(ENOTSUP, -10, "operation not supported by the backend")                  \
  XX(ESTATE, -11, "operation not possible in the model's state")              \
  XX(ECANCELED, -12, "canceled")                                              \
  XX(EEXIST, -13, "model already exists")                                     \
  XX(EIO, -14, "input/output error")                                          \
  XX(EFORMAT, -15, "malformed file")                                          \
  XX(ENODEV, -16, "no such device")                                           \
  XX(ESHUTDOWN, -17, "context is shutting down")                             \
  XX(ELOST, -18, "model lost")

typedef enum mb_err {
#define MB__ERR_ENUM(name, val, text) MB_##name = (val),
  MB_ERR_MAP(MB__ERR_ENUM)
#undef MB__ERR_ENUM
  MB_OK = 0
} mb_err;

/* Text for an error code ("queue full"); never NULL, "unknown error" if unknown. */
MB_EXTERN const char *mb_strerror(int err);
/* Name of an error code ("MB_EQUEUEFULL"); never NULL. */
MB_EXTERN const char *mb_err_name(int err);

/* The library's version string, e.g. "0.1.0" (same as MB_VERSION_STRING). */
MB_EXTERN const char *mb_version(void);

/* ------------------------------------------------------------------------ */
/* Allocator                                                                 */

/*
 * Replaces the allocator used by every later allocation of the library
 * (like uv_replace_allocator). Call before any context exists. All four must
 * be given; calloc_fn may return NULL to signal failure, which the library
 * handles by returning MB_ENOMEM. Returns MB_EINVAL if any is NULL.
 * Not thread-safe against concurrent library use.
 */
typedef struct mb_allocator {
  void *(*malloc_fn)(size_t size);
  void *(*realloc_fn)(void *ptr, size_t size);
  void *(*calloc_fn)(size_t count, size_t size);
  void (*free_fn)(void *ptr);
} mb_allocator;

MB_EXTERN int mb_set_allocator(const mb_allocator *a) MB_WUR;

/* ------------------------------------------------------------------------ */
/* States and locations                                                      */

typedef enum mb_state {
  MB_STATE_UNLOADED = 0,
  MB_STATE_LOADING,
  MB_STATE_READY,
  MB_STATE_OFFLOADING,
  MB_STATE_OFFLOADED,
  MB_STATE_RESTORING,
  MB_STATE_UNLOADING,
  MB_STATE_FAILED
} mb_state;

typedef enum mb_location {
  MB_LOC_NONE = 0, /* UNLOADED, LOADING, UNLOADING, FAILED */
  MB_LOC_GPU,      /* READY, OFFLOADING: on its device */
  MB_LOC_CPU       /* OFFLOADED, RESTORING: in host RAM */
} mb_location;

/* "unloaded", "loading", "ready", ... (lower case, as the HTTP API shows). */
MB_EXTERN const char *mb_state_name(mb_state s);
/* "none", "gpu", "cpu". */
MB_EXTERN const char *mb_location_name(mb_location l);
/* The location a state implies (DESIGN §1). */
MB_EXTERN mb_location mb_state_location(mb_state s);

/* Special durations. */
#define MB_FOREVER (-1) /* keep-alive that never expires; queue wait without bound */
#define MB_DEFAULT (-2) /* "use the model's (or context's) setting" */

/* Special device index for mb_model_opts.device: place where it fits best. */
#define MB_DEVICE_AUTO (-1)

/*
 * The defaults: what mb_ctx_opts_init and mb_model_opts_init fill in, what
 * MB_DEFAULT resolves to, and what modelbufd's configuration starts from.
 * One list, so a default is changed in one place.
 */
#define MB_DEFAULT_KEEP_ALIVE_MS (5 * 60 * 1000)       /* READY after the last release */
#define MB_DEFAULT_HOST_KEEP_ALIVE_MS (30 * 60 * 1000) /* OFFLOADED before a full release */
#define MB_DEFAULT_MAX_CONCURRENCY 1                   /* leases at once per model */
#define MB_DEFAULT_MAX_QUEUE 64                        /* waiters per model */
#define MB_DEFAULT_QUEUE_TIMEOUT_MS (60 * 1000)        /* bound on a waiter's wait */
#define MB_DEFAULT_CRASH_LIMIT 3                       /* losses within the window that FAIL */
#define MB_DEFAULT_CRASH_WINDOW_MS (5 * 60 * 1000)
#define MB_DEFAULT_LOADER_THREADS 4                    /* threaded mode's loader pool */

/* ------------------------------------------------------------------------ */
/* Clock                                                                     */

/*
 * A clock returns monotonic nanoseconds. The core reads it once per step.
 * Tests and the simulator pass a manual clock: a function returning a
 * variable they advance.
 */
typedef uint64_t (*mb_clock_fn)(void *arg);

/* CLOCK_MONOTONIC in nanoseconds; the default clock (arg unused). */
MB_EXTERN uint64_t mb_clock_monotonic(void *arg);

/* ------------------------------------------------------------------------ */
/* Backends                                                                  */

/* Bytes a model holds on each tier, as measured by its backend. */
typedef struct mb_usage {
  uint64_t device_bytes; /* on its device (GPU memory, or host for the host device) */
  uint64_t host_bytes;   /* in the host tier (offloaded copy, pinned buffers) */
} mb_usage;

/* Kinds of device. */
typedef enum mb_device_kind {
  MB_DEVICE_HOST = 0, /* host memory standing in for a GPU */
  MB_DEVICE_CUDA = 1
} mb_device_kind;

/*
 * One backend operation in progress. Passed to every backend function; valid
 * only during that call. Backend functions run on loader threads (or on the
 * thread that runs a manual executor's jobs), never under a core lock and
 * never on the thread that called mb_acquire.
 */
typedef struct mb_op {
  const char *model;      /* the model's name */
  void *user;             /* the model's backend argument (mb_model_add) */
  int device;             /* index of the device the model is placed on */
  mb_device_kind device_kind;
  int device_ordinal;     /* e.g. the CUDA ordinal for MB_DEVICE_CUDA */
  uint64_t budget_bytes;  /* footprint the core admitted for this model */
  char *err;              /* write a message here on failure (NUL-terminated) */
  size_t err_len;
  void *priv;             /* private to the core */
  /* The residency this operation belongs to: the core counts 1, 2, ... at
   * every load and every restore of the model, and passes the current
   * count to every operation (an offload or unload gets the count of the
   * residency it ends). A backend that watches a model between operations
   * remembers it to report a loss (mb_model_lost) of exactly that
   * residency, and to tell which load a cancel is for. */
  uint64_t residency;
} mb_op;

/*
 * Reports progress of a long operation (load or restore): done of total
 * bytes (total 0 when unknown). Cheap; callable from the backend function as
 * often as it likes. Readers see it in mb_status.progress_done and
 * progress_total while the operation runs (no event is sent for it).
 */
MB_EXTERN void mb_op_progress(mb_op *op, uint64_t done_bytes, uint64_t total_bytes);

/*
 * The backend vtable (DESIGN §2). load and unload are required; offload and
 * restore come as a pair (both or neither). Each returns 0 or a negative
 * MB_E* code and writes a message into op->err on failure.
 *
 * Contract: a failed load or restore leaves nothing allocated on the device.
 * unload must free everything on every tier, from READY and from OFFLOADED,
 * and also after the model was lost (mb_model_lost): then it cleans up
 * whatever is left. usage, when present, is called on a loader thread after
 * each successful load, restore and offload; its figures replace the
 * declared footprint. destroy, when present, frees the backend argument when
 * the model is removed.
 *
 * cancel, optional (appended last, so positional initialisers of the older
 * fields keep working), makes a load in progress give up: the core calls it
 * when an unload (or removal, or the context's end) is asked for while the
 * model is LOADING, from the core thread (or mb_ctx_step's caller), outside
 * any core lock, with an op naming the model, its backend argument and the
 * residency of the load. It must not block: it sets a flag, kills a starting
 * process, and returns. The load then returns soon, MB_ECANCELED (or
 * whatever it returns: the model goes back to UNLOADED either way, without
 * back-off; if the load succeeded first, the model is unloaded). A cancel
 * may come after the load already returned, or before the load function
 * started: match op->residency. Without cancel, an unload of a LOADING
 * model waits for the load to end.
 */
typedef struct mb_backend {
  const char *name;
  int (*load)(mb_op *op);
  int (*offload)(mb_op *op);
  int (*restore)(mb_op *op);
  int (*unload)(mb_op *op);
  int (*usage)(mb_op *op, mb_usage *out);
  int (*health)(mb_op *op);
  void (*destroy)(void *user);
  int (*cancel)(mb_op *op);
} mb_backend;

/*
 * The callbacks backend: plain functions and one context pointer, the C
 * equivalent of subclassing a Python "model buffer" class. load and unload are
 * required; offload and restore are optional but come as a pair. footprint,
 * when given, reports the bytes the model holds now on its device and in host
 * memory. Each returns 0 or a negative MB_E* code and may write a message into
 * err. Used with mb_model_add_callbacks().
 */
typedef struct mb_callbacks {
  int (*load)(void *user, int device, char *err, size_t err_len);
  int (*offload)(void *user, char *err, size_t err_len);
  int (*restore)(void *user, int device, char *err, size_t err_len);
  int (*unload)(void *user, char *err, size_t err_len);
  void (*footprint)(void *user, uint64_t *device_bytes, uint64_t *host_bytes);
  void *user;
} mb_callbacks;

/* ------------------------------------------------------------------------ */
/* Manual executor (manual mode only)                                        */

/* A backend job handed to a manual executor. Opaque. */
typedef struct mb_job mb_job;

typedef enum mb_job_kind {
  MB_JOB_LOAD = 0,
  MB_JOB_OFFLOAD,
  MB_JOB_RESTORE,
  MB_JOB_UNLOAD
} mb_job_kind;

/*
 * In manual mode the core hands each backend job to submit() instead of a
 * loader thread. The executor then either runs it (mb_job_run: calls the real
 * backend on the calling thread) or scripts its outcome (mb_job_complete),
 * now or later. Either way the completion is seen by the next mb_ctx_step().
 * submit runs inside mb_ctx_step and must not call back into the context
 * except through mb_job_* functions.
 */
typedef struct mb_executor {
  void (*submit)(void *arg, mb_job *job);
  void *arg;
} mb_executor;

/* What a job is for. Valid until it is completed. */
MB_EXTERN mb_job_kind mb_job_get_kind(const mb_job *job);
MB_EXTERN const char *mb_job_model(const mb_job *job);
MB_EXTERN int mb_job_device(const mb_job *job);

/* Runs the job's backend operation now on this thread and completes it. */
MB_EXTERN void mb_job_run(mb_job *job);

/*
 * Completes a job without calling the backend: rc 0 for success or a
 * negative MB_E* code with message msg (may be NULL); usage, when not NULL,
 * is what the backend would have measured. The job belongs to its model:
 * do not use the pointer after this call.
 */
MB_EXTERN void mb_job_complete(mb_job *job, int rc, const char *msg, const mb_usage *usage);

/* ------------------------------------------------------------------------ */
/* Events                                                                    */

typedef enum mb_event_type {
  MB_EVENT_STATE = 0, /* a state change: from -> to */
  MB_EVENT_EVICT,     /* the core chose this model as an eviction victim */
  MB_EVENT_WARNING,   /* a new warning (slow load, memory growth), or a note of a
                         backend whose operation succeeded anyway (the tensors
                         backend on the host device for want of a GPU) */
  /* 3 is not used: progress of a load or restore is read from the status
   * (mb_status.progress_done / progress_total), never sent as an event. */
  MB_EVENT_LOST = 4   /* a resident model was lost (mb_model_lost); reason says why */
} mb_event_type;

typedef struct mb_event {
  uint64_t seq;        /* 1, 2, 3, ... in the order the core made them */
  uint64_t time_ns;    /* the core's clock */
  mb_event_type type;
  const char *model;
  mb_state from, to;   /* MB_EVENT_STATE */
  int device;          /* the model's device, -1 if none */
  /* Why, never NULL. Entering LOADING/RESTORING: "acquire" or "load";
   * OFFLOADING/UNLOADING: "idle" (keep-alive expired), "evict", "request"
   * (mb_offload/mb_unload), "error" (a failed restore or offload),
   * "shutdown", "remove", "lost" (the model was lost: its MB_EVENT_LOST
   * came just before); completions: "loaded", "restored", "offloaded",
   * "unloaded", "released" (from the host tier), "reset", "canceled" (a
   * canceled load); FAILED: "error: <message>". MB_EVENT_EVICT /
   * MB_EVENT_WARNING carry a text; MB_EVENT_LOST the backend's reason
   * ("exited: status 3", "killed: SIGKILL", "busy_timeout", "unhealthy",
   * "memory_limit: ..."). */
  const char *reason;
} mb_event;

/*
 * Called for every event, in order, from the core thread (or the thread
 * calling mb_ctx_step), outside any core lock. May call any non-blocking
 * function of the library (mb_*_async, mb_release, status). The event and its
 * strings are valid only during the call.
 */
typedef void (*mb_event_fn)(const mb_event *ev, void *arg);

/* ------------------------------------------------------------------------ */
/* Context                                                                   */

typedef struct mb_ctx mb_ctx;

typedef enum mb_eviction {
  MB_EVICT_LRU = 0,   /* least recently used first */
  MB_EVICT_COST = 1,  /* cheapest to bring back (reload time x use frequency / size) first */
  MB_EVICT_CUSTOM = 2 /* ranked by mb_ctx_opts.evict_rank (the simulator's offline policies) */
} mb_eviction;

/*
 * MB_EVICT_CUSTOM: ranks one eviction candidate. model is its name, user its
 * backend argument (as given to mb_model_add), device the device it would
 * leave, or -1 for a model in the host tier (a host eviction). Lower ranks
 * are evicted first; ties go to the least recently used, then to the model
 * registered first. Called during a step with core_lock held (from the core
 * thread, or from mb_ctx_step's caller in manual mode): it must be quick and
 * must not call into the library. The trace simulator uses it for Belady's
 * offline policy (rank = minus the time of the model's next use).
 */
typedef double (*mb_evict_rank_fn)(void *arg, const char *model, void *user, int device);

typedef struct mb_ctx_opts {
  size_t size;                /* sizeof(mb_ctx_opts): set by mb_ctx_opts_init */
  mb_clock_fn clock;          /* NULL: mb_clock_monotonic */
  void *clock_arg;
  int manual;                 /* 1: no threads; see mb_ctx_step and executor */
  mb_executor executor;       /* manual mode: where backend jobs go (required) */
  int loader_threads;         /* threaded mode: 0 = 4 */
  mb_eviction eviction;       /* default MB_EVICT_LRU */
  uint64_t host_budget_bytes; /* host tier for offloaded models; 0 = half of RAM */
  int64_t keep_alive_ms;      /* default per-model keep-alive; 0 means 0, MB_DEFAULT = 5 min */
  mb_event_fn on_event;       /* optional */
  void *event_arg;
  mb_evict_rank_fn evict_rank; /* MB_EVICT_CUSTOM only (required there) */
  void *evict_arg;
} mb_ctx_opts;

/* Fills opts with the defaults (threaded, monotonic clock, LRU, 5 min keep-alive). */
MB_EXTERN void mb_ctx_opts_init(mb_ctx_opts *opts);

/*
 * Creates a context. opts may be NULL for the defaults. In threaded mode it
 * starts the core thread and the loader pool. The context has no devices
 * until mb_device_add. Errors: MB_EINVAL (bad options, message in err),
 * MB_ENOMEM.
 */
MB_EXTERN int mb_ctx_new(const mb_ctx_opts *opts, mb_ctx **out, char *err, size_t err_len) MB_WUR;

/*
 * Frees the context: fails every waiting request with MB_ESHUTDOWN, unloads
 * every loaded or offloaded model through its backend, stops the threads and
 * frees everything. Refuses with MB_EBUSY, changing nothing, while any lease
 * is out (as uv_loop_close does) or, in manual mode, while a job handed to
 * the executor is not completed. NULL is a no-op returning 0.
 */
MB_EXTERN int mb_ctx_free(mb_ctx *ctx) MB_WUR;

/*
 * Manual mode: one step of the core. Reads the clock once, takes every
 * posted request and every job completion, fires the timers that are due,
 * makes every decision that follows (admissions, evictions, grants), hands
 * new jobs to the executor and delivers events and callbacks. Returns the
 * number of things it processed (0 when there was nothing to do).
 * In threaded mode it returns MB_EINVAL.
 */
MB_EXTERN int mb_ctx_step(mb_ctx *ctx);

/*
 * Manual mode: the clock time of the next timer (an idle expiry, a queue
 * timeout, a lease TTL, a host keep-alive), or UINT64_MAX when none is armed.
 */
MB_EXTERN uint64_t mb_ctx_next_deadline(mb_ctx *ctx);

/* Converts a time of the context's clock to Unix epoch milliseconds. */
MB_EXTERN int64_t mb_ctx_wall_ms(mb_ctx *ctx, uint64_t clock_ns);

/* The context's clock, read now. */
MB_EXTERN uint64_t mb_ctx_now(mb_ctx *ctx);

/* ------------------------------------------------------------------------ */
/* Devices                                                                   */

typedef struct mb_device_opts {
  size_t size;                 /* sizeof(mb_device_opts): set by mb_device_opts_init */
  mb_device_kind kind;         /* MB_DEVICE_HOST or MB_DEVICE_CUDA */
  int ordinal;                 /* CUDA ordinal; ignored for the host device */
  uint64_t capacity_bytes;     /* 0: measured (host: RAM total; cuda: cuMemGetInfo) */
  uint64_t reserve_bytes;      /* kept free for others */
  uint64_t budget_bytes;       /* optional cap on what models may use (0: none) */
  int max_loaded;              /* cap on resident models (0: none) */
  int max_parallel_loads;      /* loads/restores at once (0: 1) */
  int concurrency;             /* leases at once across all its models (0: none) */
} mb_device_opts;

/* Fills opts with the defaults above (and its size): the host device, no
 * limits. */
MB_EXTERN void mb_device_opts_init(mb_device_opts *opts);

/*
 * Adds a device; its index (0, 1, ...) goes to *index. Devices are added
 * before models are used and never removed. Errors: MB_EINVAL (reserve not
 * below capacity, negative limits; message in err), MB_ENODEV (CUDA device
 * that does not exist), MB_ENOMEM.
 */
MB_EXTERN int mb_device_add(mb_ctx *ctx, const mb_device_opts *opts, int *index, char *err,
                            size_t err_len) MB_WUR;

/*
 * The memory of device kind:ordinal as its driver reports it now, with no
 * context: total bytes into *total, free bytes into *free_bytes (may be
 * NULL; a CUDA device's total alone is read without creating a context on
 * the GPU). The host device reports the machine's RAM (MemTotal and
 * MemAvailable). This is what mb_device_add measures when no capacity is
 * given; modelbufd finds its GPUs with it. Thread-safe. Errors: MB_ENODEV
 * with a message (no such device, no CUDA driver or build), MB_EIO.
 */
MB_EXTERN int mb_device_mem_info(mb_device_kind kind, int ordinal, uint64_t *total,
                                 uint64_t *free_bytes, char *err, size_t err_len) MB_WUR;

typedef struct mb_device_info {
  int index;
  mb_device_kind kind;
  int ordinal;
  char name[32];             /* "host", "cuda:0" */
  uint64_t capacity_bytes;   /* measured or configured */
  uint64_t reserve_bytes;
  uint64_t budget_bytes;
  uint64_t usable_bytes;     /* min(capacity - reserve, budget) */
  uint64_t used_bytes;       /* charged to resident and loading models */
  uint64_t free_bytes;       /* usable - used */
  int resident;              /* models holding memory on it */
  int loads_in_flight;
  int leases;                /* leases out on its models */
} mb_device_info;

MB_EXTERN int mb_device_count(mb_ctx *ctx);
/* Fills *out with device index's figures. Errors: MB_ENODEV for a bad
 * index, MB_EINVAL (no context or no out). Thread-safe. */
MB_EXTERN int mb_device_info_get(mb_ctx *ctx, int index, mb_device_info *out) MB_WUR;

/* Host tier: the budget for offloaded models and what they use now. */
MB_EXTERN void mb_host_tier(mb_ctx *ctx, uint64_t *budget_bytes, uint64_t *used_bytes);

/* ------------------------------------------------------------------------ */
/* Models                                                                    */

typedef struct mb_model_opts {
  size_t size;                /* sizeof(mb_model_opts): set by mb_model_opts_init */
  int64_t keep_alive_ms;      /* READY after last release; 0 = act at once, MB_FOREVER, MB_DEFAULT = ctx */
  int offload;                /* 1: idle expiry offloads to host RAM when possible (default 1) */
  int64_t host_keep_alive_ms; /* OFFLOADED before a full release; MB_FOREVER; MB_DEFAULT = 30 min */
  uint64_t footprint_bytes;   /* declared device footprint until one is measured */
  int device;                 /* device index or MB_DEVICE_AUTO (default 0) */
  int pinned;                 /* 1: never evicted (idle timers still apply) */
  int priority;               /* default request priority (higher first) */
  int max_concurrency;        /* leases at once (default 1; must be >= 1) */
  int max_queue;              /* waiters beyond which acquire fails (default 64; >= 0) */
  int64_t queue_timeout_ms;   /* bound on a waiter's wait (default 60 s; MB_FOREVER) */
  /* Losses (mb_model_lost): the model FAILS, with the back-off of a failed
   * load, at its crash_limit-th loss within crash_window_ms (default 3
   * within 5 min); 0 = never for that reason. At most MB_CRASH_LIMIT_MAX. */
  int crash_limit;
  int64_t crash_window_ms;
  /* 1: a waiter's queue timeout stops while its model is loading or
   * restoring for it (the wait for the load is bounded by the backend, e.g.
   * modelbufd's start_timeout) and counts only the wait for a slot or for
   * memory; 0 (the default): queue_timeout_ms bounds the whole wait. */
  int queue_timeout_excludes_load;
  /* 1: the backend can restore the model onto another device than the one
   * it was offloaded from (its restore honours op->device; the tensors
   * backend can). A restore of such a model with device MB_DEVICE_AUTO then
   * goes wherever a load would (the device with room that fits it best, or
   * the one where room costs least), when every device of the context is
   * of one kind; else (0, the default) back to the device it left. */
  int restore_any_device;
} mb_model_opts;

#define MB_CRASH_LIMIT_MAX 32

/* Fills opts with the defaults above. */
MB_EXTERN void mb_model_opts_init(mb_model_opts *opts);

/*
 * Registers a model. name (1-127 bytes, no space or control byte; "/" is
 * allowed, as in "org/model") is copied; backend must outlive the model; user is
 * the backend's argument (passed as op->user) and is freed with
 * backend->destroy, if set, when the model is removed or the context freed
 * (also when this call fails). opts may be NULL for the defaults. The model
 * starts UNLOADED; nothing is loaded until it is used. Thread-safe.
 * Errors: MB_EEXIST, MB_EINVAL (bad name or options, message in err),
 * MB_ENODEV (device index out of range), MB_ENOMEM.
 */
MB_EXTERN int mb_model_add(mb_ctx *ctx, const char *name, const mb_backend *backend, void *user,
                           const mb_model_opts *opts, char *err, size_t err_len) MB_WUR;

/* Registers a model served by the callbacks backend; cb is copied. */
MB_EXTERN int mb_model_add_callbacks(mb_ctx *ctx, const char *name, const mb_callbacks *cb,
                                     const mb_model_opts *opts, char *err, size_t err_len) MB_WUR;

/*
 * Removes a model: unloads it if needed (after which it is gone). Refuses
 * with MB_EBUSY while leases are out or requests wait. Blocking (threaded
 * mode). Errors: MB_ENOENT, MB_EBUSY, MB_ESHUTDOWN, MB_ENOMEM, MB_EINVAL
 * (manual mode).
 */
MB_EXTERN int mb_model_remove(mb_ctx *ctx, const char *name) MB_WUR;

/* ------------------------------------------------------------------------ */
/* Leases                                                                    */

/* A lease on a READY model. Plain value; release it exactly once. */
typedef struct mb_lease {
  uint64_t id;    /* unique within the context, never 0 */
  int device;     /* where the model is */
} mb_lease;

/* mb_acquire_opts.priority: the model's own (every int is a priority, so
 * this sentinel is not MB_DEFAULT, which is -2). */
#define MB_PRIORITY_DEFAULT (-2147483647 - 1)

typedef struct mb_acquire_opts {
  size_t size;            /* sizeof(mb_acquire_opts): set by mb_acquire_opts_init */
  int priority;           /* MB_PRIORITY_DEFAULT: the model's */
  int64_t timeout_ms;     /* bound on the wait; MB_DEFAULT: the model's queue_timeout */
  int64_t keep_alive_ms;  /* keep-alive after this use; MB_DEFAULT: the model's */
  int64_t ttl_ms;         /* lease expires unless renewed (0 or MB_DEFAULT: never) */
} mb_acquire_opts;

/* Fills opts with the defaults above (and its size). */
MB_EXTERN void mb_acquire_opts_init(mb_acquire_opts *opts);

/* What a finished request tells: rc, and for an acquire the lease. */
typedef struct mb_result {
  int rc;                 /* 0 or MB_E* */
  mb_lease lease;         /* acquire: the lease when rc == 0 */
  uint64_t queue_ns;      /* time spent waiting (acquire) */
  uint64_t load_ns;       /* time spent loading or restoring for this request, 0 if warm */
  const char *message;    /* detail when rc != 0 ("" otherwise); valid during the callback */
} mb_result;

/*
 * Called once per async request when it is answered, from the core thread
 * (or mb_ctx_step's caller), outside any core lock.
 */
typedef void (*mb_done_fn)(const mb_result *res, void *arg);

/*
 * Acquires a lease: loads or restores the model as needed (on a loader
 * thread) and waits for a concurrency slot. Blocks until the lease is
 * granted or the request fails. opts may be NULL. The lease holds the model
 * READY: it is never offloaded, unloaded or evicted and its idle clock does
 * not run while any lease is out. Threaded mode only.
 * Errors: MB_ENOENT, MB_EQUEUEFULL (at once), MB_ETIMEDOUT (the queue
 * timeout, or a load that the backend gave up as timed out; the message
 * names the limit), MB_ENOSPC (can never fit), MB_ELOAD (load failed or
 * model in back-off; message in err), MB_ECANCELED (the load it waited for
 * was canceled by an unload), MB_ESHUTDOWN, MB_ENOMEM, MB_EINVAL (manual
 * mode).
 */
MB_EXTERN int mb_acquire(mb_ctx *ctx, const char *name, const mb_acquire_opts *opts,
                         mb_lease *lease, char *err, size_t err_len) MB_WUR;

/*
 * Async acquire: done(res, arg) is called exactly once. *req_id (if not NULL)
 * gets an id that mb_cancel accepts. Returns 0 when posted, or an error when
 * not posted (then done is never called).
 */
MB_EXTERN int mb_acquire_async(mb_ctx *ctx, const char *name, const mb_acquire_opts *opts,
                               mb_done_fn done, void *arg, uint64_t *req_id) MB_WUR;

/*
 * Acquire at once, when no wait is needed: the model is READY with a free
 * slot, no one waits for it, the core has nothing posted, and opts asks for
 * no TTL. Then the lease is granted on the calling thread, exactly as the
 * core would grant it (statistics, idle timer, keep-alive), without a round
 * trip through the core thread: returns 1 with out->lease (queue_ns and
 * load_ns 0). Otherwise returns 0 and changes nothing: use
 * mb_acquire_async. Never blocks (threaded mode; always 0 in manual mode,
 * so the simulator's decisions do not change). Errors: MB_EINVAL (bad
 * options), MB_ENOMEM.
 */
MB_EXTERN int mb_acquire_try(mb_ctx *ctx, const char *name, const mb_acquire_opts *opts,
                             mb_result *out) MB_WUR;

/*
 * Cancels a waiting acquire: its done is called with MB_ECANCELED if it was
 * still waiting; if it was already granted nothing changes (release the
 * lease). Never aborts a load: the model becomes READY for the next caller.
 * Returns 0 when the cancel is posted (whether it finds the request is
 * known only from the request's own done), MB_EINVAL (no context) or
 * MB_ENOMEM.
 */
MB_EXTERN int mb_cancel(mb_ctx *ctx, uint64_t req_id);

/*
 * Ends a use. The last release starts the model's idle clock. Thread-safe,
 * never blocks. A lease released twice, or unknown to this context, gives
 * MB_EINVAL: checked at once in threaded mode against the lease table, and
 * in manual mode too. A lease on a model that was lost while it was held
 * (mb_model_lost) already ended: releasing it gives MB_ELOST, once (so the
 * holder learns that its work ran on a model that is gone).
 */
MB_EXTERN int mb_release(mb_ctx *ctx, mb_lease lease) MB_WUR;

/* Sets the deadline of a lease with a TTL to now + ttl_ms, later or earlier
 * than before (an earlier one takes effect at once). Errors: MB_EINVAL
 * (unknown or released lease, a lease without TTL, ttl_ms <= 0), MB_ELOST
 * (its model was lost: release it). */
MB_EXTERN int mb_lease_renew(mb_ctx *ctx, mb_lease lease, int64_t ttl_ms) MB_WUR;

/* ------------------------------------------------------------------------ */
/* Explicit operations                                                       */

/*
 * Loads (or restores) the model now without taking a lease, then starts its
 * idle clock with keep_alive_ms (MB_DEFAULT: the model's). Blocks until READY
 * or failed. Errors as mb_acquire.
 */
MB_EXTERN int mb_load(mb_ctx *ctx, const char *name, int64_t keep_alive_ms, char *err,
                      size_t err_len) MB_WUR;
MB_EXTERN int mb_load_async(mb_ctx *ctx, const char *name, int64_t keep_alive_ms,
                            mb_done_fn done, void *arg) MB_WUR;

/*
 * Moves a READY model to host RAM once its leases drain (whatever the
 * model's offload policy). OFFLOADED already: 0. Errors: MB_ENOTSUP (the
 * backend cannot offload), MB_ESTATE (not loaded), MB_ENOSPC (host budget
 * cannot hold it), MB_ENOENT.
 */
MB_EXTERN int mb_offload(mb_ctx *ctx, const char *name, char *err, size_t err_len) MB_WUR;
MB_EXTERN int mb_offload_async(mb_ctx *ctx, const char *name, mb_done_fn done, void *arg) MB_WUR;

/*
 * Frees the model on every tier once its leases drain; new acquires wait and
 * load it again afterwards. UNLOADED already: 0. A FAILED model is reset to
 * UNLOADED (its back-off cleared). A LOADING model whose backend has cancel
 * is canceled: the waiters of that load get MB_ECANCELED at once, and this
 * answers (0) when the load has returned; without cancel it waits for the
 * load and unloads then. Errors: MB_ENOENT.
 */
MB_EXTERN int mb_unload(mb_ctx *ctx, const char *name, char *err, size_t err_len) MB_WUR;
MB_EXTERN int mb_unload_async(mb_ctx *ctx, const char *name, mb_done_fn done, void *arg) MB_WUR;

/*
 * Sets the model's keep-alive (ms, 0, or MB_FOREVER to cancel the timer) and
 * re-arms its idle timer from now. Later acquires without their own
 * keep-alive use it. Errors: MB_ENOENT, MB_EINVAL.
 */
MB_EXTERN int mb_keep_alive(mb_ctx *ctx, const char *name, int64_t keep_alive_ms) MB_WUR;
MB_EXTERN int mb_keep_alive_async(mb_ctx *ctx, const char *name, int64_t keep_alive_ms,
                                  mb_done_fn done, void *arg) MB_WUR;

/* ------------------------------------------------------------------------ */
/* Lost models                                                               */

/* mb_model_lost flag: the model FAILS at once (with back-off), whatever its
 * crash_limit: the backend stopped it for a fault that a restart would not
 * cure (modelbufd: a worker past its memory_limit). */
#define MB_LOST_FAIL 0x1

/*
 * A backend reports that a resident model is gone: its worker process
 * exited or was killed, a watchdog killed it, its health checks failed, its
 * device failed. residency is the op->residency of the load or restore that
 * made it resident (0: whatever residency is current, for backends that do
 * not track it). reason is a short text ("exited: status 3", "killed:
 * SIGKILL", "busy_timeout", "unhealthy"), copied (at most 127 bytes kept).
 *
 * Non-blocking, callable from any thread, also from a backend's own
 * threads between operations. The core then, in order: ignores the report
 * if the residency is no longer current or the model is not resident
 * (READY or OFFLOADED; a report that comes while an operation of the model
 * runs is kept and applied when it ends, if the model is then resident in
 * that residency); emits MB_EVENT_LOST with the reason; counts it
 * (stats.crashes); ends every lease on the model (their mb_release and
 * mb_lease_renew give MB_ELOST); moves the model to UNLOADING ("lost"),
 * where the backend's unload cleans up what is left; and then to UNLOADED,
 * or to FAILED with the back-off of a failed load when this is its
 * crash_limit-th loss within crash_window_ms, or when flags has
 * MB_LOST_FAIL (the error names the reason; waiters get MB_ELOAD).
 * Waiters of an UNLOADED model stay queued and are served by the next load,
 * which is admitted and counted as any load. Nothing is restarted behind
 * the core's back.
 *
 * Returns 0 when posted; MB_EINVAL (no context, name or reason), MB_ENOMEM
 * (not posted: report again).
 */
MB_EXTERN int mb_model_lost(mb_ctx *ctx, const char *name, uint64_t residency, int flags,
                            const char *reason) MB_WUR;

/* ------------------------------------------------------------------------ */
/* Status and statistics                                                     */

/* Queue-wait histogram bucket upper bounds in ms; the last bucket is +Inf. */
#define MB_WAIT_BUCKETS 12
extern MB_EXTERN const double mb_wait_bucket_ms[MB_WAIT_BUCKETS - 1];

typedef struct mb_stats {
  uint64_t loads, load_failures, unloads, offloads, restores, full_releases, evictions;
  uint64_t requests, rejected, timeouts;
  double last_load_ms, avg_load_ms, last_restore_ms, last_offload_ms;
  uint64_t wait_buckets[MB_WAIT_BUCKETS]; /* counts per bucket (not cumulative) */
  uint64_t wait_count;
  double wait_sum_ms;
  uint64_t crashes;       /* losses reported by the backend (mb_model_lost) */
} mb_stats;

#define MB_WARN_SLOW_LOAD 0x1u     /* last load took > 2x its running average */
#define MB_WARN_MEMORY_GROWTH 0x2u /* footprint grew across 3 residencies in a row */

typedef struct mb_status {
  char name[128];
  char backend[32];
  mb_state state;
  mb_location location;
  int device;              /* placement, -1 when none */
  int is_loaded;           /* state READY */
  uint64_t loaded_at;      /* clock ns of the last READY after a load/restore; 0 never */
  uint64_t last_accessed;  /* clock ns of the last acquire or release; 0 never */
  uint64_t idle_ns;        /* since the last release (0 while in use or unloaded) */
  int64_t keep_alive_ms;   /* effective keep-alive (MB_FOREVER possible) */
  int64_t host_keep_alive_ms;
  uint64_t expires_at;     /* clock ns when the armed timer fires; 0 none */
  int timer_active;
  int inflight;            /* leases out */
  int queued;              /* waiting acquires */
  uint64_t vram_bytes;     /* held on its device now */
  uint64_t host_bytes;     /* held in the host tier now */
  uint64_t footprint_bytes;/* what the next admission will charge */
  uint64_t progress_done, progress_total; /* of the current load/restore */
  int pinned;
  int offload;
  char error[256];         /* last failure ("" if none) */
  unsigned warnings;       /* MB_WARN_* bits */
  char warning_text[256];  /* human text of the warnings */
  mb_stats stats;
  uint64_t residency;      /* loads + restores so far (mb_op.residency of the last) */
  uint64_t lost_at;        /* clock ns of the last loss; 0 never */
  char lost_reason[128];   /* its reason ("" if none) */
} mb_status;

/* Snapshot of one model. Thread-safe. Errors: MB_ENOENT. */
MB_EXTERN int mb_model_status(mb_ctx *ctx, const char *name, mb_status *out) MB_WUR;

/* Number of models; mb_model_name copies the i-th (registration order) name
 * into buf (cut to len), 0 or MB_ENOENT (no such index, no buffer). */
MB_EXTERN int mb_model_count(mb_ctx *ctx);
MB_EXTERN int mb_model_name(mb_ctx *ctx, int index, char *buf, size_t len) MB_WUR;

#ifdef __cplusplus
}
#endif

#endif /* MODELBUF_H */
