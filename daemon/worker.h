/*
 * worker.h - the process backend of modelbufd: one worker process per
 * model (DESIGN §2, docs/WORKERS.md).
 *
 * A worker is started without a shell from the model's `cmd` (with
 * ${PORT}, ${MODEL} and ${GPU} substituted), by the supervisor's thread
 * (supervisor.h): its own process group, PDEATHSIG SIGKILL, its own cgroup
 * where the daemon has a writable cgroup v2 tree, the model's `env` and
 * `cwd`, CUDA_VISIBLE_DEVICES from the core's placement, and the tag
 * MODELBUF_WORKER_ID in its environment. It is ready when its health path
 * answers 200 within start_timeout; an early exit fails the load with the
 * last lines it printed. Its stdout and stderr go to a log of numbered
 * lines (mbd_worker_logs_since). Unload calls the `unload` hook, sends
 * SIGTERM to its tree, SIGKILL to everything left after stop_timeout
 * (group, cgroup, orphans it left), and reaps.
 *
 * Nothing restarts a worker behind the core's back: when a running worker
 * exits or is killed (busy_timeout, memory_limit), or fails health_failures
 * health checks in a row, the backend reports the model lost to the core
 * (mb_model_lost) with the residency it serves, and the core unloads it
 * (the unload cleans up what is left) and loads it again for the next
 * request.
 *
 * Offload: through the worker's `offload`/`restore` HTTP hooks when it has
 * them; else on a GPU by the CUDA checkpoint API; else, with weight `files`,
 * by stopping it and keeping its files mapped and locked in RAM.
 *
 * The backend argument of each model is its mbd_worker. Functions marked
 * thread-safe may be called from any thread while the core runs backend
 * operations on its loader threads.
 */
#ifndef MBD_WORKER_H
#define MBD_WORKER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "config.h"
#include "modelbuf/modelbuf.h"
#include "supervisor.h"

typedef struct mbd_worker mbd_worker;

/* A new line in a worker's log (what it printed, or the daemon's marker at
 * a start, or its note about the worker's end), for followers and the
 * daemon's log. Called from the supervisor thread (or the thread of a
 * backend operation for markers); must not block. */
typedef void (*mbd_worker_line_fn)(void *arg, const char *model, const char *line);

/* A warning about a worker (kind "footprint_overrun"), with its text. Called
 * from the supervisor thread; must not block. */
typedef void (*mbd_worker_warn_fn)(void *arg, const char *model, const char *kind,
                                   const char *text);

typedef struct mbd_worker_opts {
  const mbd_model_config *mc;   /* copied: the worker keeps what it needs */
  size_t log_bytes;             /* size of the log; 0 = 64 KiB */
  mbd_worker_line_fn on_line;   /* optional */
  void *line_arg;
  mb_ctx *ctx;                  /* where losses are reported (required to report) */
  mbd_sup *sup;                 /* the process supervisor (required) */
  mbd_worker_warn_fn on_warning;/* optional; arg: line_arg */
} mbd_worker_opts;

/* Creates the worker state of one model; starts nothing. MB_EINVAL, MB_ENOMEM. */
int mbd_worker_new(const mbd_worker_opts *o, mbd_worker **out, char *err,
                   size_t err_len) MB_WUR;

/* Frees a worker that is stopped (the core unloads it first). */
void mbd_worker_free(mbd_worker *w);

/* The backend for this worker: with offload/restore when it has hooks or
 * files (or the CUDA checkpoint API), else without; with cancel. destroy
 * frees the worker. */
const mb_backend *mbd_worker_backend(const mbd_worker *w);

/*
 * The running worker's port and the number of its process (1, 2, ... over
 * the daemon's life; a new process always has a new one: pooled upstream
 * connections are keyed by it). MB_ESTATE when no process is running and
 * ready (not started yet, starting, stopping, exited). Thread-safe and
 * cheap: one mutex, no system call.
 */
int mbd_worker_endpoint(mbd_worker *w, int *port, uint64_t *instance);

/* "http://127.0.0.1:PORT" of the running worker into buf; MB_ESTATE
 * otherwise (as mbd_worker_endpoint). Thread-safe. */
int mbd_worker_url(mbd_worker *w, char *buf, size_t len);

/* The worker's pid while running, else 0. Thread-safe. */
pid_t mbd_worker_pid(mbd_worker *w);

/* Copies the last (at most len - 1) bytes of its log as text, whole lines,
 * NUL-terminated; returns the byte count. Thread-safe. */
size_t mbd_worker_logs(mbd_worker *w, char *out, size_t len);

/*
 * Its log lines numbered from_seq on, whole lines as fit in len - 1 bytes,
 * each "SEQ KIND TEXT\n" (KIND 'o' a line it printed, 'r' the marker
 * written at each start of a new process, 'n' the daemon's note about it:
 * its exit, a kill), NUL-terminated; *next_seq gets the number to ask for
 * next. Lines are numbered 1, 2, ... over the worker's whole life; when
 * from_seq is older than the oldest kept, copying starts there. Returns the
 * bytes written (0: nothing new). Every new line is also passed to the
 * on_line callback. Thread-safe.
 */
size_t mbd_worker_logs_since(mbd_worker *w, uint64_t from_seq, char *out, size_t len,
                             uint64_t *next_seq);

/* Resident memory of the worker's whole tree (its group, descendants and
 * orphans; memory.current of its cgroup when there is one), bytes; 0 when
 * it is not running. Measured now (a /proc walk). Thread-safe. */
uint64_t mbd_worker_rss(mbd_worker *w);

/* The highest device footprint measured (bytes), over the worker's life.
 * Thread-safe. */
uint64_t mbd_worker_peak_bytes(mbd_worker *w);

/*
 * Its footprint as last measured (every second while it runs: the RSS of
 * its tree on the host device, its GPU memory through NVML on a GPU),
 * against what it declared (`vram`, 0 when it declared nothing); *overrun
 * is 1 when the measured footprint went more than 10 % over the declared
 * one during the current residency. Thread-safe.
 */
void mbd_worker_footprint(mbd_worker *w, uint64_t *measured, uint64_t *declared, int *overrun);

/* After a worker on a GPU stops, how long unload waits at most for NVML to
 * stop listing its processes (the driver frees their memory then). */
#define MBD_WORKER_RELEASE_WAIT_MS 5000

/* Calls the cleanup hook when it has one and is running: 0, MB_ENOTSUP (no
 * hook), MB_ESTATE (not running), MB_EBACKEND with a message. Thread-safe. */
int mbd_worker_cleanup(mbd_worker *w, char *err, size_t err_len);

/*
 * busy_timeout watchdog: the proxy brackets each forwarded request. A
 * request in flight longer than the model's busy_timeout gets the worker
 * killed (its whole tree, SIGKILL) and the model reported lost
 * ("busy_timeout"); busy_end then returns 1, so the proxy answers 504.
 * Thread-safe.
 */
void mbd_worker_busy_begin(mbd_worker *w);
int mbd_worker_busy_end(mbd_worker *w);

/*
 * The proxy saw a transfer to the worker fail (no answer): returns once the
 * supervisor has seen the end of the worker's process and its loss is
 * posted to the core, when the process is gone; at once when it lives on;
 * at most after 1 s. Called before the client is answered, so that a
 * client that asks again after its 502 finds the core past the loss and is
 * served by a new process. Thread-safe.
 */
void mbd_worker_failed(mbd_worker *w);

/*
 * CUDA_VISIBLE_DEVICES for a worker placed on the daemon's CUDA ordinal
 * (-1: the host device, ""). The daemon's driver numbers only the GPUs its
 * own CUDA_VISIBLE_DEVICES lists, in that order, so with a list (parent,
 * NULL or "" when unset) ordinal k is its k-th entry (an index, a UUID or a
 * MIG name, passed on as written); without one, k itself. Writes out;
 * -1 when it does not fit or k is not in the list.
 */
int mbd_cuda_visible_for(const char *parent, int ordinal, char *out, size_t len);

/* Sends an HTTP request to 127.0.0.1:port (method, path, optional body),
 * waiting at most timeout_ms; *status gets the HTTP status (0 when none).
 * For health checks and hooks. 0 or MB_EBACKEND with a message. */
int mbd_http_call(int port, const char *method, const char *path, const char *body,
                  int64_t timeout_ms, long *status, char *err, size_t err_len);

#endif /* MBD_WORKER_H */
