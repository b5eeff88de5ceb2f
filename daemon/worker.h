/*
 * worker.h - the process backend of modelbufd: one worker process per
 * model (DESIGN §2).
 *
 * A worker is started without a shell from the model's `cmd` (with
 * ${PORT}, ${MODEL} and ${GPU} substituted), in its own process group, with
 * the model's `env` and `cwd`, CUDA_VISIBLE_DEVICES from the core's
 * placement, and PR_SET_PDEATHSIG so it dies with the daemon. It is ready
 * when its health path answers 200 within start_timeout; an early exit
 * fails the load with the last lines it printed. Its stdout and stderr go
 * to a per-model ring (mbd_worker_logs). Unload sends SIGTERM to the group,
 * SIGKILL after stop_timeout, and reaps.
 *
 * Offload: through the worker's `offload`/`restore` HTTP hooks when it has
 * them. A worker without hooks but with weight `files` still gets a host
 * tier: offload stops it and keeps its files mapped and locked in RAM (when
 * the host budget allows), so the next start reads them from memory.
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

typedef struct mbd_worker mbd_worker;

/* A line a worker printed, for the daemon's log. Called from the worker's
 * reader thread. */
typedef void (*mbd_worker_line_fn)(void *arg, const char *model, const char *line);

typedef struct mbd_worker_opts {
  const mbd_model_config *mc;   /* copied: the worker keeps what it needs */
  size_t log_bytes;             /* size of the output ring; 0 = 64 KiB */
  mbd_worker_line_fn on_line;   /* optional */
  void *line_arg;
} mbd_worker_opts;

/* Creates the worker state of one model; starts nothing. MB_EINVAL, MB_ENOMEM. */
int mbd_worker_new(const mbd_worker_opts *o, mbd_worker **out, char *err,
                   size_t err_len) MB_WUR;

/* Frees a worker that is stopped (the core unloads it first). */
void mbd_worker_free(mbd_worker *w);

/* The backend for this worker: with offload/restore when it has hooks or
 * files, else without. destroy frees the worker. */
const mb_backend *mbd_worker_backend(const mbd_worker *w);

/* While running: "http://127.0.0.1:PORT" into buf; MB_ESTATE otherwise.
 * A worker that died while serving (it crashed, or the busy watchdog killed
 * it) is started again here first, on the device it was placed on, so the
 * proxy calls this before each forwarded request. Thread-safe. */
int mbd_worker_url(mbd_worker *w, char *buf, size_t len);

/* The worker's pid while running, else 0. Thread-safe. */
pid_t mbd_worker_pid(mbd_worker *w);

/* Copies the last (at most len - 1) bytes of its output, NUL-terminated;
 * returns the byte count. Thread-safe. */
size_t mbd_worker_logs(mbd_worker *w, char *out, size_t len);

/* Resident memory of its process group (every process of it), bytes.
 * Thread-safe. The backend's usage reports it as the device footprint on the
 * host device; on a GPU with NVML, the device footprint is the group's
 * per-process GPU memory and RSS is host memory. */
uint64_t mbd_worker_rss(mbd_worker *w);

/* The highest device footprint measured by the backend's usage (bytes),
 * over the worker's life. Thread-safe. */
uint64_t mbd_worker_peak_bytes(mbd_worker *w);

/* After a worker on a GPU stops, how long unload waits at most for NVML to
 * stop listing its processes (the driver frees their memory then). */
#define MBD_WORKER_RELEASE_WAIT_MS 5000

/* Calls the cleanup hook when it has one and is running: 0, MB_ENOTSUP (no
 * hook), MB_ESTATE (not running), MB_EBACKEND with a message. Thread-safe. */
int mbd_worker_cleanup(mbd_worker *w, char *err, size_t err_len);

/*
 * busy_timeout watchdog: the proxy brackets each forwarded request. A
 * request in flight longer than the model's busy_timeout gets the worker
 * killed (its group, SIGKILL); busy_end then returns 1, so the proxy answers
 * 504, and the worker's next use starts a new process. Thread-safe.
 */
void mbd_worker_busy_begin(mbd_worker *w);
int mbd_worker_busy_end(mbd_worker *w);

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
