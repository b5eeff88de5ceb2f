/*
 * worker.c - the process backend (worker.h): start through the supervisor,
 * readiness, hooks, the numbered log, losses reported to the core (exit,
 * busy_timeout, health checks, memory_limit), footprint measurement, host
 * tier by pinned files or the CUDA checkpoint API, cancel of a start, stop.
 *
 * Threads: backend operations run on the core's loader threads, one at a
 * time per worker (the core serialises them, and w->life makes sure of it
 * together with the cleanup hook); cancel comes from the core thread; the
 * supervisor thread calls the run's hooks (output lines, exit, ticks,
 * memory samples); a health thread per running worker probes it when
 * health_interval is set; request threads call the getters and the busy
 * bracket.
 *
 * Locks:
 *   life   - one backend operation (or the cleanup hook) at a time.
 *   run_rw - the life of w->run for slow readers (a /proc walk): taken for
 *            reading around them, for writing to clear w->run.
 *   mu     - everything else that changes while the worker runs: the run,
 *            pid, port, instance, phase, exit status, residency, busy slots,
 *            samples; cv signals its changes.
 *   The log has its own lock (logring.c).
 * Order: life -> run_rw -> mu -> (the supervisor's lock). Hooks of the
 * supervisor take mu only, never life or run_rw; nothing holds mu while it
 * waits for the supervisor.
 */
#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "expand.h"
#include "gpu_checkpoint.h"
#include "logring.h"
#include "mb_internal.h"
#include "nvml.h"
#include "proctree.h"
#include "worker.h"

extern char **environ;

#define DEFAULT_LOG_BYTES (64 * 1024)
#define MAX_BUSY 256
#define POLL_MS 50
#define MAX_TREE_PIDS 256
/* A measured footprint this far over the declared one is a warning. */
#define OVERRUN_PCT 10

enum { PH_NONE = 0, PH_STARTING, PH_RUNNING, PH_STOPPING };

typedef struct pinned_file {
  void *addr;
  size_t len;
  int locked;
} pinned_file;

struct mbd_worker {
  /* Configuration, copied. */
  char *name;
  char **cmd;
  size_t n_cmd;
  char **env_names, **env_values;
  size_t n_env;
  char *cwd;
  char *health;
  int fixed_port;
  mbd_hook offload, restore, cleanup, unload;
  char **files;
  size_t n_files;
  int64_t start_timeout_ms, stop_timeout_ms, busy_timeout_ms, health_interval_ms;
  int health_failures;
  uint64_t declared_bytes, memory_limit_bytes;
  mbd_worker_line_fn on_line;
  mbd_worker_warn_fn on_warning;
  void *line_arg;
  mb_ctx *ctx;
  mbd_sup *sup;
  mbd_logring *log;

  pthread_mutex_t life;
  pthread_rwlock_t run_rw;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  /* Under mu (w->run also under run_rw, see above). */
  mbd_run *run;
  int phase;
  pid_t pid;
  int port;
  uint64_t instance;
  int gpu;               /* CUDA ordinal, -1 on the host device (set by operations) */
  int exited, exit_code, exit_sig;
  uint64_t residency;    /* the residency the running process serves */
  int resident;          /* on its device (not offloaded): health checks, overrun */
  int lost_reported;     /* this process's loss is being reported (once) */
  int loss_posted;       /* ... and the report is posted to the core */
  uint64_t cancel_res;   /* a cancel asked for the load of this residency */
  /* Starts (ms) of the requests in flight, oldest first: a ring, since a
   * request's end frees the oldest start (requests end in any order, but
   * only the oldest start matters to the watchdog, and the count stays
   * right). Beyond MAX_BUSY at once the newest are not timed. */
  uint64_t busy_start[MAX_BUSY];
  unsigned busy_head, busy_n;
  int killed_busy;
  uint64_t sample_bytes; /* last device footprint measured */
  uint64_t peak_bytes;   /* highest device footprint measured */
  int overrun;           /* over the declared footprint in this residency */
  uint64_t run_first_seq;/* the first log line of the current process */
  int health_stop;
  /* Owned by operations (under life). */
  pthread_t health_thread;
  int health_on;
  /* Host tier without hooks: the files kept in RAM while stopped. */
  pinned_file *pins;
  size_t n_pins;
  int offloaded_by_stop; /* offloaded by stopping it (no hooks) */
  int offloaded_by_hook; /* its offload hook moved it to host memory */
  /* Without hooks, on a GPU: the driver's checkpoint API moves the
   * worker's GPU state to host memory and back (gpu_checkpoint.c). */
  int ckpt;              /* the driver has the API (checked at creation) */
  int offloaded_by_ckpt; /* suspended by a checkpoint, still running */
};

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Waits on w->cv (mu held) up to ms. */
static void cv_wait_ms(mbd_worker *w, int64_t ms) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  ts.tv_sec += ms / 1000;
  ts.tv_nsec += (ms % 1000) * 1000000L;
  if (ts.tv_nsec >= 1000000000L) {
    ts.tv_sec++;
    ts.tv_nsec -= 1000000000L;
  }
  pthread_cond_timedwait(&w->cv, &w->mu, &ts);
}

/* A line of the daemon's own into the worker's log (kind 'n' or 'r'), and
 * on to the line callback. */
static void note(mbd_worker *w, char kind, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void note(mbd_worker *w, char kind, const char *fmt, ...) {
  char line[600];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof(line), fmt, ap);
  va_end(ap);
  mbd_logring_add(w->log, kind, line, strlen(line));
  if (w->on_line)
    w->on_line(w->line_arg, w->name, line);
}

static const char *sig_name(int sig) {
  static const struct {
    int sig;
    const char *name;
  } names[] = {{SIGHUP, "SIGHUP"},   {SIGINT, "SIGINT"},   {SIGQUIT, "SIGQUIT"},
               {SIGILL, "SIGILL"},   {SIGTRAP, "SIGTRAP"}, {SIGABRT, "SIGABRT"},
               {SIGBUS, "SIGBUS"},   {SIGFPE, "SIGFPE"},   {SIGKILL, "SIGKILL"},
               {SIGUSR1, "SIGUSR1"}, {SIGSEGV, "SIGSEGV"}, {SIGUSR2, "SIGUSR2"},
               {SIGPIPE, "SIGPIPE"}, {SIGALRM, "SIGALRM"}, {SIGTERM, "SIGTERM"},
               {SIGXCPU, "SIGXCPU"}, {SIGXFSZ, "SIGXFSZ"}, {SIGSYS, "SIGSYS"}};
  for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
    if (names[i].sig == sig)
      return names[i].name;
  return NULL;
}

/* "exited: status 3" or "killed: SIGKILL" (signal 0: by code). */
static void exit_reason(int code, int sig, char *out, size_t len) {
  const char *n = sig > 0 ? sig_name(sig) : NULL;
  if (sig > 0 && n)
    snprintf(out, len, "killed: %s", n);
  else if (sig > 0)
    snprintf(out, len, "killed: signal %d", sig);
  else
    snprintf(out, len, "exited: status %d", code);
}

/* ------------------------------------------------------------------------ */
/* Creation                                                                  */

static char *dup_or_null(const char *s) {
  return s ? strdup(s) : NULL;
}

static char **dup_list(char *const *v, size_t n) {
  char **out = calloc(n + 1, sizeof(char *));
  for (size_t i = 0; out && i < n; i++)
    if ((out[i] = strdup(v[i])) == NULL) {
      while (i-- > 0)
        free(out[i]);
      free(out);
      return NULL;
    }
  return out;
}

static void free_list(char **v, size_t n) {
  if (v == NULL)
    return;
  for (size_t i = 0; i < n; i++)
    free(v[i]);
  free(v);
}

static void copy_hook(mbd_hook *dst, const mbd_hook *src) {
  dst->method = dup_or_null(src->method ? src->method : (src->path ? "POST" : NULL));
  dst->path = dup_or_null(src->path);
  dst->timeout_ms = src->timeout_ms > 0 ? src->timeout_ms : MBD_DEFAULT_HOOK_TIMEOUT_MS;
}

static int hook_ok(const mbd_hook *dst, const mbd_hook *src) {
  return (src->path == NULL || dst->path != NULL) &&
         ((src->method == NULL && src->path == NULL) || dst->method != NULL);
}

static void free_hook(mbd_hook *h) {
  free(h->method);
  free(h->path);
}

int mbd_worker_new(const mbd_worker_opts *o, mbd_worker **out, char *err, size_t err_len) {
  const mbd_model_config *mc = o ? o->mc : NULL;
  if (mc == NULL || out == NULL || mc->n_cmd == 0) {
    mb__set_err(err, err_len, "a process model needs a cmd");
    return MB_EINVAL;
  }
  if (o->sup == NULL) {
    mb__set_err(err, err_len, "a process model needs the process supervisor");
    return MB_EINVAL;
  }
  mbd_worker *w = calloc(1, sizeof(*w));
  if (w == NULL)
    return MB_ENOMEM;
  pthread_mutex_init(&w->mu, NULL);
  pthread_mutex_init(&w->life, NULL);
  pthread_rwlock_init(&w->run_rw, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&w->cv, &ca);
  pthread_condattr_destroy(&ca);
  w->name = strdup(mc->name);
  w->cmd = dup_list(mc->cmd, mc->n_cmd);
  w->n_cmd = mc->n_cmd;
  w->files = dup_list(mc->files, mc->n_files);
  w->n_files = mc->n_files;
  w->env_names = calloc(mc->n_env + 1, sizeof(char *));
  w->env_values = calloc(mc->n_env + 1, sizeof(char *));
  w->n_env = mc->n_env;
  for (size_t i = 0; w->env_names && w->env_values && i < mc->n_env; i++) {
    w->env_names[i] = strdup(mc->env[i].name);
    w->env_values[i] = strdup(mc->env[i].value);
  }
  w->cwd = dup_or_null(mc->cwd);
  w->health = strdup(mc->health ? mc->health : MBD_DEFAULT_HEALTH);
  w->fixed_port = mc->port;
  copy_hook(&w->offload, &mc->hook_offload);
  copy_hook(&w->restore, &mc->hook_restore);
  copy_hook(&w->cleanup, &mc->hook_cleanup);
  copy_hook(&w->unload, &mc->hook_unload);
  w->start_timeout_ms = mc->tuning.start_timeout_ms > 0 ? mc->tuning.start_timeout_ms
                                                         : MBD_DEFAULT_START_TIMEOUT_MS;
  w->stop_timeout_ms = mc->tuning.stop_timeout_ms >= 0 ? mc->tuning.stop_timeout_ms
                                                        : MBD_DEFAULT_STOP_TIMEOUT_MS;
  w->busy_timeout_ms = mc->tuning.busy_timeout_ms > 0 ? mc->tuning.busy_timeout_ms : 0;
  w->health_interval_ms = mc->tuning.health_interval_ms > 0 ? mc->tuning.health_interval_ms : 0;
  w->health_failures = mc->tuning.health_failures > 0 ? mc->tuning.health_failures
                                                       : MBD_DEFAULT_HEALTH_FAILURES;
  w->declared_bytes = mc->vram_bytes;
  w->memory_limit_bytes = mc->memory_limit_bytes;
  w->on_line = o->on_line;
  w->on_warning = o->on_warning;
  w->line_arg = o->line_arg;
  w->ctx = o->ctx;
  w->sup = o->sup;
  w->gpu = -1;
  int lrc = mbd_logring_new(o->log_bytes ? o->log_bytes : DEFAULT_LOG_BYTES, &w->log);
  char why[200];
  w->ckpt = !(w->offload.path && w->restore.path) && mbd_ckpt_available(why, sizeof(why));
  int ok = lrc == 0 && w->name && w->cmd && w->health && w->env_names && w->env_values &&
           (mc->n_files == 0 || w->files) && hook_ok(&w->offload, &mc->hook_offload) &&
           hook_ok(&w->restore, &mc->hook_restore) && hook_ok(&w->cleanup, &mc->hook_cleanup) &&
           hook_ok(&w->unload, &mc->hook_unload);
  for (size_t i = 0; ok && i < mc->n_env; i++)
    ok = w->env_names[i] && w->env_values[i];
  if (!ok) {
    mbd_worker_free(w);
    mb__set_err(err, err_len, "out of memory");
    return MB_ENOMEM;
  }
  *out = w;
  return 0;
}

static void unpin_files(mbd_worker *w);

void mbd_worker_free(mbd_worker *w) {
  if (w == NULL)
    return;
  unpin_files(w);
  free(w->name);
  free_list(w->cmd, w->n_cmd);
  free_list(w->files, w->n_files);
  free_list(w->env_names, w->n_env);
  free_list(w->env_values, w->n_env);
  free(w->cwd);
  free(w->health);
  free_hook(&w->offload);
  free_hook(&w->restore);
  free_hook(&w->cleanup);
  free_hook(&w->unload);
  mbd_logring_free(w->log);
  pthread_mutex_destroy(&w->mu);
  pthread_mutex_destroy(&w->life);
  pthread_rwlock_destroy(&w->run_rw);
  pthread_cond_destroy(&w->cv);
  free(w);
}

/* ------------------------------------------------------------------------ */
/* HTTP calls into workers                                                   */

static size_t discard(char *p, size_t size, size_t n, void *arg) {
  (void)p;
  (void)arg;
  return size * n;
}

int mbd_http_call(int port, const char *method, const char *path, const char *body,
                  int64_t timeout_ms, long *status, char *err, size_t err_len) {
  char url[512];
  snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", port, path);
  *status = 0;
  CURL *c = curl_easy_init();
  if (c == NULL) {
    mb__set_err(err, err_len, "cannot start an HTTP call");
    return MB_ENOMEM;
  }
  curl_easy_setopt(c, CURLOPT_URL, url);
  curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)(timeout_ms > 0 ? timeout_ms : 30000));
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, 2000L);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard);
  curl_easy_setopt(c, CURLOPT_PROXY, "");
  if (body != NULL || strcmp(method, "POST") == 0) {
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body ? body : "");
  }
  if (strcmp(method, "GET") == 0)
    curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
  CURLcode rc = curl_easy_perform(c);
  if (rc == CURLE_OK)
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, status);
  curl_easy_cleanup(c);
  if (rc != CURLE_OK) {
    mb__set_err(err, err_len, "%s %s: %s", method, url, curl_easy_strerror(rc));
    return MB_EBACKEND;
  }
  return 0;
}

/* Calls a hook of the running worker on port; a status other than 2xx
 * fails. */
static int call_hook(mbd_worker *w, int port, const mbd_hook *h, const char *what, char *err,
                     size_t err_len) {
  char *path = NULL;
  if (mbd_subst_worker(h->path, port, w->name, w->gpu, &path) != 0)
    return MB_ENOMEM;
  long status = 0;
  char why[300] = "";
  int rc = mbd_http_call(port, h->method, path, NULL, h->timeout_ms, &status, why, sizeof(why));
  if (rc != 0) {
    /* The hook named, and its timeout when that is what ended it. */
    mb__set_err(err, err_len, "%s hook %s %s failed (timeout %lld ms): %s", what, h->method, path,
                (long long)h->timeout_ms, why);
  } else if (status < 200 || status > 299) {
    mb__set_err(err, err_len, "%s hook %s %s answered %ld", what, h->method, path, status);
    rc = MB_EBACKEND;
  }
  free(path);
  return rc;
}

/* The port of the running worker, 0 when none. */
static int running_port(mbd_worker *w) {
  pthread_mutex_lock(&w->mu);
  int port = w->run && !w->exited ? w->port : 0;
  pthread_mutex_unlock(&w->mu);
  return port;
}

/* ------------------------------------------------------------------------ */
/* The log                                                                   */

size_t mbd_worker_logs(mbd_worker *w, char *out, size_t len) {
  return mbd_logring_tail(w->log, 0, out, len);
}

size_t mbd_worker_logs_since(mbd_worker *w, uint64_t from_seq, char *out, size_t len,
                             uint64_t *next_seq) {
  return mbd_logring_since(w->log, from_seq, out, len, next_seq);
}

/* The last lines the current process printed, for an error message:
 * "a | b | c" (its end, about 180 bytes). */
static void log_tail(mbd_worker *w, char *out, size_t len) {
  char buf[600];
  pthread_mutex_lock(&w->mu);
  uint64_t from = w->run_first_seq;
  pthread_mutex_unlock(&w->mu);
  size_t n = mbd_logring_tail(w->log, from, buf, sizeof(buf));
  while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
    buf[--n] = '\0';
  char *p = buf;
  if (n > 180) { /* keep the end, from a line start when there is one */
    p = buf + n - 180;
    char *nl = strchr(p, '\n');
    if (nl && nl[1])
      p = nl + 1;
  }
  size_t k = 0;
  for (; *p && k + 4 < len; p++)
    if (*p == '\n') {
      out[k++] = ' ';
      out[k++] = '|';
      out[k++] = ' ';
    } else {
      out[k++] = *p;
    }
  out[k] = '\0';
}

/* ------------------------------------------------------------------------ */
/* What the supervisor tells (its thread, no lock of it held)                */

static void on_run_line(void *arg, const char *line, size_t len) {
  mbd_worker *w = arg;
  mbd_logring_add(w->log, MBD_LOG_OUTPUT, line, len);
  if (w->on_line) {
    char copy[MBD_LOG_LINE_MAX + 1];
    size_t n = len < MBD_LOG_LINE_MAX ? len : MBD_LOG_LINE_MAX;
    memcpy(copy, line, n);
    copy[n] = '\0';
    w->on_line(w->line_arg, w->name, copy);
  }
}

/* Reports this process lost to the core (once per process: the caller
 * set lost_reported under mu). */
static void report_lost(mbd_worker *w, uint64_t residency, int flags, const char *reason) {
  note(w, MBD_LOG_NOTE, "modelbufd: model lost: %s", reason);
  if (w->ctx != NULL) {
    int rc = mb_model_lost(w->ctx, w->name, residency, flags, reason);
    if (rc != 0)
      note(w, MBD_LOG_NOTE, "modelbufd: the loss could not be reported: %s", mb_strerror(rc));
  }
  pthread_mutex_lock(&w->mu);
  w->loss_posted = 1;
  pthread_cond_broadcast(&w->cv);
  pthread_mutex_unlock(&w->mu);
}

static void on_run_exit(void *arg, int code, int sig) {
  mbd_worker *w = arg;
  char reason[96];
  exit_reason(code, sig, reason, sizeof(reason));
  pthread_mutex_lock(&w->mu);
  pid_t pid = w->pid;
  int report = w->phase == PH_RUNNING && !w->lost_reported;
  if (report)
    w->lost_reported = 1;
  uint64_t res = w->residency;
  pthread_mutex_unlock(&w->mu);
  note(w, MBD_LOG_NOTE, "modelbufd: worker pid %d %s", (int)pid, reason);
  /* The report first: whoever sees the exit (mbd_worker_failed) sees a
   * core that knows of it. */
  if (report)
    report_lost(w, res, 0, reason);
  pthread_mutex_lock(&w->mu);
  w->exited = 1;
  w->exit_code = code;
  w->exit_sig = sig;
  pthread_cond_broadcast(&w->cv);
  pthread_mutex_unlock(&w->mu);
}

/* The busy watchdog: a request in flight longer than busy_timeout gets the
 * worker's tree killed and the model reported lost. */
static void on_run_tick(void *arg) {
  mbd_worker *w = arg;
  if (w->busy_timeout_ms <= 0)
    return;
  uint64_t now = now_ms();
  pthread_mutex_lock(&w->mu);
  int kill_it = 0;
  if (w->phase == PH_RUNNING && !w->exited && !w->killed_busy && w->run && w->busy_n > 0)
    kill_it = now - w->busy_start[w->busy_head] > (uint64_t)w->busy_timeout_ms;
  mbd_run *run = kill_it ? w->run : NULL;
  uint64_t res = w->residency;
  int report = kill_it && !w->lost_reported;
  if (kill_it) {
    w->killed_busy = 1;
    w->lost_reported = 1;
  }
  pthread_mutex_unlock(&w->mu);
  if (run == NULL)
    return;
  /* The run cannot end meanwhile: ending it needs this thread. The loss is
   * posted before the kill, so that whoever sees the kill's effects (the
   * request's 504) and asks again finds the core past the loss. */
  note(w, MBD_LOG_NOTE, "modelbufd: a request ran longer than busy_timeout (%lld ms): killing the worker",
       (long long)w->busy_timeout_ms);
  if (report)
    report_lost(w, res, 0, "busy_timeout");
  mbd_run_kill(run);
}

static void mib(uint64_t bytes, char *out, size_t len) {
  snprintf(out, len, "%.1f MiB", (double)bytes / (1024.0 * 1024.0));
}

/* Every second: the footprint, against memory_limit and the declared one. */
static void on_run_sample(void *arg, uint64_t tree_bytes) {
  mbd_worker *w = arg;
  pthread_mutex_lock(&w->mu);
  int gpu = w->gpu;
  pid_t pid = w->pid;
  int running = w->phase == PH_RUNNING && !w->exited;
  pthread_mutex_unlock(&w->mu);
  if (!running)
    return;
  uint64_t dev = tree_bytes;
  uint64_t vram = 0;
  /* On a GPU with NVML: the group's GPU memory is its device footprint. */
  if (gpu >= 0 && pid > 0 && mbd_nvml_group_bytes(gpu, pid, &vram, NULL, NULL, 0) == 0)
    dev = vram;
  char m1[32], m2[32], text[256];
  pthread_mutex_lock(&w->mu);
  if (w->phase != PH_RUNNING || w->exited) {
    pthread_mutex_unlock(&w->mu);
    return;
  }
  w->sample_bytes = dev;
  if (dev > w->peak_bytes)
    w->peak_bytes = dev;
  mbd_run *run = NULL;
  int warn = 0;
  uint64_t res = w->residency;
  if (w->memory_limit_bytes > 0 && dev > w->memory_limit_bytes && !w->lost_reported) {
    w->lost_reported = 1;
    run = w->run;
  } else if (w->resident && w->declared_bytes > 0 && !w->overrun &&
             dev > w->declared_bytes + w->declared_bytes * OVERRUN_PCT / 100) {
    w->overrun = 1;
    warn = 1;
  }
  pthread_mutex_unlock(&w->mu);
  if (run != NULL) {
    mib(dev, m1, sizeof(m1));
    mib(w->memory_limit_bytes, m2, sizeof(m2));
    snprintf(text, sizeof(text), "memory_limit: %s measured, over the limit of %s (memory_limit)",
             m1, m2);
    note(w, MBD_LOG_NOTE, "modelbufd: %s: killing the worker", text);
    report_lost(w, res, MB_LOST_FAIL, text); /* first, as for busy_timeout */
    mbd_run_kill(run);
  } else if (warn) {
    mib(dev, m1, sizeof(m1));
    mib(w->declared_bytes, m2, sizeof(m2));
    snprintf(text, sizeof(text),
             "footprint_overrun: %s measured, more than %d%% over the declared %s (vram)", m1,
             OVERRUN_PCT, m2);
    note(w, MBD_LOG_NOTE, "modelbufd: %s", text);
    if (w->on_warning)
      w->on_warning(w->line_arg, w->name, "footprint_overrun", text);
  }
}

/* ------------------------------------------------------------------------ */
/* Health checks while READY                                                 */

static void *health_main(void *arg) {
  mbd_worker *w = arg;
  int fails = 0;
  char why[256] = "";
  /* Each probe waits up to the interval, bounded to 1..5 s. */
  int64_t probe_ms = w->health_interval_ms < 1000   ? 1000
                     : w->health_interval_ms > 5000 ? 5000
                                                    : w->health_interval_ms;
  pthread_mutex_lock(&w->mu);
  while (!w->health_stop) {
    cv_wait_ms(w, w->health_interval_ms);
    if (w->health_stop)
      break;
    int busy = w->busy_n > 0;
    /* Only a READY worker, and only while no request is in flight: a
     * request that hangs is busy_timeout's to catch. */
    if (w->phase != PH_RUNNING || !w->resident || w->lost_reported || w->exited || busy) {
      fails = 0;
      continue;
    }
    int port = w->port;
    pthread_mutex_unlock(&w->mu);
    long code = 0;
    why[0] = '\0';
    int rc = mbd_http_call(port, "GET", w->health, NULL, probe_ms, &code, why, sizeof(why));
    if (rc == 0 && code != 200)
      snprintf(why, sizeof(why), "GET %s answered %ld", w->health, code);
    pthread_mutex_lock(&w->mu);
    if (rc == 0 && code == 200) {
      fails = 0;
      continue;
    }
    fails++;
    if (fails < w->health_failures || w->phase != PH_RUNNING || !w->resident ||
        w->lost_reported || w->exited || w->health_stop)
      continue;
    w->lost_reported = 1;
    uint64_t res = w->residency;
    pthread_mutex_unlock(&w->mu);
    char reason[400];
    snprintf(reason, sizeof(reason), "unhealthy: %d failed health checks in a row (last: %.300s)",
             fails, why);
    report_lost(w, res, 0, reason);
    pthread_mutex_lock(&w->mu);
  }
  pthread_mutex_unlock(&w->mu);
  return NULL;
}

/* Starts the health thread of a running worker (under life). */
static void health_start(mbd_worker *w) {
  if (w->health_interval_ms <= 0 || w->health_on)
    return;
  pthread_mutex_lock(&w->mu);
  w->health_stop = 0;
  pthread_mutex_unlock(&w->mu);
  w->health_on = pthread_create(&w->health_thread, NULL, health_main, w) == 0;
}

static void health_join(mbd_worker *w) {
  if (!w->health_on)
    return;
  pthread_mutex_lock(&w->mu);
  w->health_stop = 1;
  pthread_cond_broadcast(&w->cv);
  pthread_mutex_unlock(&w->mu);
  pthread_join(w->health_thread, NULL);
  w->health_on = 0;
}

/* ------------------------------------------------------------------------ */
/* Start and stop                                                            */

/* A free TCP port on 127.0.0.1 (bound and released: a worker binds it next). */
static int free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -1;
  struct sockaddr_in a;
  memset(&a, 0, sizeof(a));
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  int port = -1;
  if (bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
      getsockname(fd, (struct sockaddr *)&a, &len) == 0)
    port = ntohs(a.sin_port);
  close(fd);
  return port;
}

int mbd_cuda_visible_for(const char *parent, int ordinal, char *out, size_t len) {
  if (len == 0)
    return -1;
  out[0] = '\0';
  if (ordinal < 0)
    return 0;
  if (parent == NULL || *parent == '\0')
    return snprintf(out, len, "%d", ordinal) < (int)len ? 0 : -1;
  const char *p = parent;
  for (int k = 0; k < ordinal; k++) {
    p = strchr(p, ',');
    if (p == NULL)
      return -1;
    p++;
  }
  size_t n = strcspn(p, ",");
  while (n > 0 && p[n - 1] == ' ')
    n--;
  while (n > 0 && *p == ' ')
    p++, n--;
  if (n == 0 || n >= len)
    return -1;
  memcpy(out, p, n);
  out[n] = '\0';
  return 0;
}

/* The worker's environment: the daemon's, less what the model sets, plus
 * the model's env and CUDA_VISIBLE_DEVICES. NULL on ENOMEM. */
static char **build_env(mbd_worker *w, int port, int gpu, const char *cuda_visible) {
  size_t n = 0;
  while (environ[n])
    n++;
  char **env = calloc(n + w->n_env + 2, sizeof(char *));
  if (env == NULL)
    return NULL;
  size_t k = 0;
  for (size_t i = 0; i < n; i++) {
    const char *e = environ[i];
    const char *eq = strchr(e, '=');
    size_t nl = eq ? (size_t)(eq - e) : strlen(e);
    int drop = nl == 20 && strncmp(e, "CUDA_VISIBLE_DEVICES", 20) == 0;
    for (size_t j = 0; !drop && j < w->n_env; j++)
      drop = strlen(w->env_names[j]) == nl && strncmp(e, w->env_names[j], nl) == 0;
    if (!drop)
      env[k++] = strdup(e);
  }
  for (size_t j = 0; j < w->n_env; j++) {
    char *v = NULL;
    if (mbd_subst_worker(w->env_values[j], port, w->name, gpu, &v) != 0)
      v = NULL;
    size_t len = strlen(w->env_names[j]) + (v ? strlen(v) : 0) + 2;
    char *e = malloc(len);
    if (e)
      snprintf(e, len, "%s=%s", w->env_names[j], v ? v : "");
    free(v);
    env[k++] = e;
  }
  size_t len = strlen(cuda_visible) + 22;
  char *cv = malloc(len);
  if (cv)
    snprintf(cv, len, "CUDA_VISIBLE_DEVICES=%s", cuda_visible);
  env[k++] = cv;
  for (size_t i = 0; i < k; i++)
    if (env[i] == NULL) {
      free_list(env, k);
      return NULL;
    }
  return env;
}

/*
 * Stops the running process: SIGTERM to its tree, SIGKILL to everything of
 * it left after stop_timeout (or at once with hard), reaped by the
 * supervisor; its pipe is closed without waiting for it to end. On a GPU,
 * then waits (bounded) until NVML no longer lists its processes, so the
 * next load sees the memory back. Called under life.
 */
static void stop_process(mbd_worker *w, int hard) {
  pthread_mutex_lock(&w->mu);
  mbd_run *run = w->run;
  if (run == NULL) {
    pthread_mutex_unlock(&w->mu);
    return;
  }
  w->phase = PH_STOPPING;
  w->resident = 0;
  int gpu = w->gpu;
  pthread_mutex_unlock(&w->mu);
  int pids[64];
  size_t n_pids = 0;
  if (gpu >= 0)
    (void)mbd_run_tree_bytes(run, pids, sizeof(pids) / sizeof(pids[0]), &n_pids);
  if (!hard) {
    mbd_run_signal(run, SIGTERM, 1);
    if (!mbd_run_wait(run, w->stop_timeout_ms, NULL, NULL))
      note(w, MBD_LOG_NOTE, "modelbufd: still running %lld ms after SIGTERM (stop_timeout): SIGKILL",
           (long long)w->stop_timeout_ms);
  }
  /* Whatever is left of it, wherever it went: group, cgroup, orphans. */
  mbd_run_kill(run);
  if (!mbd_run_wait(run, 10000, NULL, NULL))
    note(w, MBD_LOG_NOTE, "modelbufd: pid %d did not end 10 s after SIGKILL; left to the reaper",
         (int)mbd_run_pid(run));
  health_join(w);
  pthread_rwlock_wrlock(&w->run_rw);
  pthread_mutex_lock(&w->mu);
  w->run = NULL;
  w->pid = 0;
  w->phase = PH_NONE;
  pthread_cond_broadcast(&w->cv);
  pthread_mutex_unlock(&w->mu);
  pthread_rwlock_unlock(&w->run_rw);
  mbd_run_finish(run);
  if (n_pids > 0)
    (void)mbd_nvml_wait_released(gpu, pids, n_pids, MBD_WORKER_RELEASE_WAIT_MS);
}

/* The message of a start that ended before the worker was ready. */
static int start_failed(mbd_worker *w, mb_op *op, int code, int sig) {
  char msg[400], how[64];
  log_tail(w, msg, sizeof(msg));
  if (sig > 0) {
    const char *n = sig_name(sig);
    if (n)
      snprintf(how, sizeof(how), "killed by %s", n);
    else
      snprintf(how, sizeof(how), "killed by signal %d", sig);
  } else {
    snprintf(how, sizeof(how), "exited with status %d", code);
  }
  mb__set_err(op->err, op->err_len, "worker %s before it was ready%s%s", how,
              msg[0] ? "; last output: " : "", msg);
  return MB_ELOAD;
}

static int canceled(mbd_worker *w, mb_op *op) {
  mb__set_err(op->err, op->err_len, "load of %s canceled: an unload was asked for while it started",
              w->name);
  return MB_ECANCELED;
}

static int start_once(mbd_worker *w, mb_op *op) {
  int gpu_ord = op->device_kind == MB_DEVICE_CUDA ? op->device_ordinal : -1;
  int port = w->fixed_port > 0 ? w->fixed_port : free_port();
  if (port <= 0) {
    mb__set_err(op->err, op->err_len, "no free TCP port for the worker");
    return MB_ELOAD;
  }
  pthread_mutex_lock(&w->mu);
  w->gpu = gpu_ord;
  pthread_mutex_unlock(&w->mu);
  char **argv = calloc(w->n_cmd + 1, sizeof(char *));
  if (argv == NULL)
    return MB_ENOMEM;
  for (size_t i = 0; i < w->n_cmd; i++)
    if (mbd_subst_worker(w->cmd[i], port, w->name, gpu_ord, &argv[i]) != 0) {
      free_list(argv, i);
      return MB_ENOMEM;
    }
  char gpu[256];
  if (mbd_cuda_visible_for(getenv("CUDA_VISIBLE_DEVICES"), gpu_ord, gpu, sizeof(gpu)) != 0)
    snprintf(gpu, sizeof(gpu), "%d", gpu_ord); /* not in the daemon's list: as is */
  char **envp = build_env(w, port, gpu_ord, gpu);
  if (envp == NULL) {
    free_list(argv, w->n_cmd);
    return MB_ENOMEM;
  }
  mbd_spawn sp;
  memset(&sp, 0, sizeof(sp));
  sp.argv = argv;
  sp.envp = envp;
  sp.cwd = w->cwd;
  sp.name = w->name;
  sp.hooks.on_line = on_run_line;
  sp.hooks.on_exit = on_run_exit;
  sp.hooks.on_tick = on_run_tick;
  sp.hooks.on_sample = on_run_sample;
  sp.hooks.arg = w;
  /* The marker first, so that what the new process prints follows it. */
  uint64_t seq = mbd_logring_next(w->log);
  pthread_mutex_lock(&w->mu);
  w->run_first_seq = seq + 1;
  w->exited = w->exit_code = w->exit_sig = 0;
  w->killed_busy = 0;
  w->lost_reported = 0;
  w->loss_posted = 0;
  w->resident = 0;
  w->overrun = 0;
  w->sample_bytes = 0;
  w->busy_head = w->busy_n = 0;
  w->phase = PH_STARTING;
  pthread_mutex_unlock(&w->mu);
  note(w, MBD_LOG_RESTART, "modelbufd: starting %s on port %d (residency %" PRIu64 ")", w->name,
       port, op->residency);
  mbd_run *run = NULL;
  char why[256];
  int rc = mbd_sup_spawn(w->sup, &sp, &run, why, sizeof(why));
  free_list(argv, w->n_cmd);
  size_t ne = 0;
  while (envp[ne])
    ne++;
  free_list(envp, ne);
  if (rc != 0) {
    pthread_mutex_lock(&w->mu);
    w->phase = PH_NONE;
    pthread_mutex_unlock(&w->mu);
    mb__set_err(op->err, op->err_len, "cannot start the worker: %s", why);
    return rc == MB_ENOMEM ? MB_ENOMEM : MB_ELOAD;
  }
  pthread_rwlock_wrlock(&w->run_rw);
  pthread_mutex_lock(&w->mu);
  w->run = run;
  w->pid = mbd_run_pid(run);
  w->port = port;
  w->instance = mbd_run_instance(run);
  pthread_mutex_unlock(&w->mu);
  pthread_rwlock_unlock(&w->run_rw);
  note(w, MBD_LOG_NOTE, "modelbufd: worker pid %d started", (int)mbd_run_pid(run));

  /* Ready when the health path answers 200 within start_timeout. */
  uint64_t end = now_ms() + (uint64_t)w->start_timeout_ms;
  for (;;) {
    pthread_mutex_lock(&w->mu);
    int exited = w->exited, code = w->exit_code, sig = w->exit_sig;
    int cancel = w->cancel_res == op->residency;
    pthread_mutex_unlock(&w->mu);
    if (cancel) {
      stop_process(w, 1);
      return canceled(w, op);
    }
    if (exited) {
      stop_process(w, 1); /* what it left, its pipe, its cgroup */
      return start_failed(w, op, code, sig);
    }
    uint64_t now = now_ms();
    if (now >= end) {
      stop_process(w, 0);
      char msg[400];
      log_tail(w, msg, sizeof(msg));
      mb__set_err(op->err, op->err_len,
                  "worker not healthy (GET %s) within %lld ms (start_timeout)%s%s", w->health,
                  (long long)w->start_timeout_ms, msg[0] ? "; last output: " : "", msg);
      return MB_ETIMEDOUT;
    }
    long code200 = 0;
    char herr[200];
    int64_t left = (int64_t)(end - now);
    if (mbd_http_call(port, "GET", w->health, NULL, left < 1000 ? left : 1000, &code200, herr,
                      sizeof(herr)) == 0 &&
        code200 == 200)
      break;
    pthread_mutex_lock(&w->mu);
    if (!w->exited && w->cancel_res != op->residency)
      cv_wait_ms(w, POLL_MS); /* an exit or a cancel wakes it at once */
    pthread_mutex_unlock(&w->mu);
  }
  pthread_mutex_lock(&w->mu);
  int exited = w->exited;
  if (!exited) {
    w->phase = PH_RUNNING;
    w->residency = op->residency;
  }
  int code = w->exit_code, sig = w->exit_sig;
  pthread_mutex_unlock(&w->mu);
  if (exited) { /* it answered, then went at once */
    stop_process(w, 1);
    return start_failed(w, op, code, sig);
  }
  health_start(w);
  return 0;
}

/* Starts the worker. A port the daemon picked can be taken by someone else
 * between the check and the worker's bind: when the worker then exits
 * saying the address is in use, it is started again on a new port. */
static int start_process(mbd_worker *w, mb_op *op) {
  for (int attempt = 0;; attempt++) {
    int rc = start_once(w, op);
    if (rc != MB_ELOAD || w->fixed_port > 0 || attempt >= 3 || op->err == NULL ||
        strcasestr(op->err, "before it was ready") == NULL ||
        (strcasestr(op->err, "address already in use") == NULL &&
         strcasestr(op->err, "address in use") == NULL))
      return rc;
    note(w, MBD_LOG_NOTE, "modelbufd: the worker's port was taken; trying another");
  }
}

/* ------------------------------------------------------------------------ */
/* Host tier without hooks: files kept in RAM                                */

static void unpin_files(mbd_worker *w) {
  for (size_t i = 0; i < w->n_pins; i++) {
    if (w->pins[i].addr == NULL)
      continue;
    if (w->pins[i].locked)
      munlock(w->pins[i].addr, w->pins[i].len);
    munmap(w->pins[i].addr, w->pins[i].len);
  }
  free(w->pins);
  w->pins = NULL;
  w->n_pins = 0;
}

/* Maps every weight file (the files: entries expanded now: folders,
 * indexes, patterns), populated, and locks it when RLIMIT_MEMLOCK allows;
 * returns the bytes held. */
static uint64_t pin_files(mbd_worker *w) {
  uint64_t held = 0;
  char **paths = NULL, err[256];
  size_t n = 0;
  if (mbd_files_expand(w->files, w->n_files, w->name, &paths, &n, err, sizeof(err)) != 0) {
    note(w, MBD_LOG_NOTE, "modelbufd: files not kept in RAM: %.300s", err);
    return 0;
  }
  w->pins = calloc(n ? n : 1, sizeof(*w->pins));
  if (w->pins == NULL) {
    mb_tensors_paths_free(paths, n);
    return 0;
  }
  w->n_pins = n;
  for (size_t i = 0; i < n; i++) {
    int fd = open(paths[i], O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0)
      continue;
    if (fstat(fd, &st) == 0 && st.st_size > 0) {
      void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED | MAP_POPULATE, fd, 0);
      if (p != MAP_FAILED) {
        w->pins[i].addr = p;
        w->pins[i].len = (size_t)st.st_size;
        w->pins[i].locked = mlock(p, (size_t)st.st_size) == 0;
        held += (uint64_t)st.st_size;
      }
    }
    close(fd);
  }
  mb_tensors_paths_free(paths, n);
  return held;
}

/* ------------------------------------------------------------------------ */
/* Busy bracket                                                              */

void mbd_worker_busy_begin(mbd_worker *w) {
  pthread_mutex_lock(&w->mu);
  if (w->busy_n < MAX_BUSY)
    w->busy_start[(w->busy_head + w->busy_n++) % MAX_BUSY] = now_ms();
  pthread_mutex_unlock(&w->mu);
}

int mbd_worker_busy_end(mbd_worker *w) {
  pthread_mutex_lock(&w->mu);
  if (w->busy_n > 0) { /* the oldest start goes */
    w->busy_head = (w->busy_head + 1) % MAX_BUSY;
    w->busy_n--;
  }
  int killed = w->killed_busy;
  pthread_mutex_unlock(&w->mu);
  return killed;
}

/* ------------------------------------------------------------------------ */
/* The backend                                                               */

static void set_resident(mbd_worker *w, int resident, uint64_t residency) {
  pthread_mutex_lock(&w->mu);
  w->resident = resident;
  if (resident) {
    w->residency = residency;
    w->overrun = 0; /* a new residency is measured afresh */
  }
  pthread_mutex_unlock(&w->mu);
}

static int w_load_locked(mbd_worker *w, mb_op *op) {
  pthread_mutex_lock(&w->mu);
  int cancel = w->cancel_res == op->residency;
  pthread_mutex_unlock(&w->mu);
  if (cancel) /* canceled before it began */
    return canceled(w, op);
  /* A process of an earlier residency (lost, never unloaded) goes first. */
  stop_process(w, 1);
  unpin_files(w);
  w->offloaded_by_stop = w->offloaded_by_hook = w->offloaded_by_ckpt = 0;
  int rc = start_process(w, op);
  if (rc == 0)
    set_resident(w, 1, op->residency);
  return rc;
}

static int w_load(mb_op *op) {
  mbd_worker *w = op->user;
  pthread_mutex_lock(&w->life);
  int rc = w_load_locked(w, op);
  pthread_mutex_unlock(&w->life);
  return rc;
}

/* Called by the core thread, outside its lock: never blocks. The starting
 * process is killed; the load sees it and returns MB_ECANCELED. */
static int w_cancel(mb_op *op) {
  mbd_worker *w = op->user;
  pthread_mutex_lock(&w->mu);
  w->cancel_res = op->residency;
  if (w->phase == PH_STARTING && w->run != NULL)
    mbd_run_signal(w->run, SIGKILL, 0);
  pthread_cond_broadcast(&w->cv);
  pthread_mutex_unlock(&w->mu);
  return 0;
}

static int w_unload_locked(mbd_worker *w, mb_op *op) {
  (void)op;
  set_resident(w, 0, 0);
  /* The unload hook first, while it still runs (a lost worker has no one
   * to answer it). */
  int port = running_port(w);
  if (w->unload.path && port > 0 && !w->offloaded_by_ckpt) {
    char err[300];
    if (call_hook(w, port, &w->unload, "unload", err, sizeof(err)) != 0)
      note(w, MBD_LOG_NOTE, "modelbufd: %s", err);
  }
  stop_process(w, 0); /* a suspended worker too: SIGKILL after stop_timeout */
  unpin_files(w);
  w->offloaded_by_stop = w->offloaded_by_hook = w->offloaded_by_ckpt = 0;
  return 0;
}

static int w_unload(mb_op *op) {
  mbd_worker *w = op->user;
  pthread_mutex_lock(&w->life);
  int rc = w_unload_locked(w, op);
  pthread_mutex_unlock(&w->life);
  return rc;
}

static int w_offload_locked(mbd_worker *w, mb_op *op) {
  int port = running_port(w);
  if (port == 0) {
    mb__set_err(op->err, op->err_len, "model %s: its worker is not running", w->name);
    return MB_EBACKEND;
  }
  set_resident(w, 0, 0);
  if (w->offload.path) {
    int rc = call_hook(w, port, &w->offload, "offload", op->err, op->err_len);
    w->offloaded_by_hook = rc == 0;
    if (rc != 0)
      set_resident(w, 1, op->residency);
    return rc;
  }
  /* No hook, on a GPU whose driver can checkpoint a process: the driver
   * copies the worker's device memory to host memory and releases the
   * device; the worker stays, suspended, and resumes at the same addresses. */
  pid_t pid = mbd_worker_pid(w);
  if (w->ckpt && w->gpu >= 0 && pid > 0) {
    char why[300];
    unsigned lock_ms = w->stop_timeout_ms > 0 ? (unsigned)w->stop_timeout_ms : 10000;
    if (mbd_ckpt_suspend((int)pid, lock_ms, why, sizeof(why)) == 0) {
      w->offloaded_by_ckpt = 1;
      return 0;
    }
    note(w, MBD_LOG_NOTE, "modelbufd: CUDA checkpoint failed (%.300s); %s", why,
         w->n_files > 0 ? "stopping the worker, its files kept in RAM" : "unloading");
  }
  if (w->n_files == 0) {
    set_resident(w, 1, op->residency);
    mb__set_err(op->err, op->err_len,
                "model %s has no offload hook, no files to keep in RAM, and no CUDA "
                "checkpoint on its device",
                w->name);
    return MB_ENOTSUP;
  }
  /* Else: stop it and keep its files in RAM for the next start. */
  stop_process(w, 0);
  pin_files(w);
  w->offloaded_by_stop = 1;
  return 0;
}

static int w_offload(mb_op *op) {
  mbd_worker *w = op->user;
  pthread_mutex_lock(&w->life);
  int rc = w_offload_locked(w, op);
  pthread_mutex_unlock(&w->life);
  return rc;
}

static int w_restore_locked(mbd_worker *w, mb_op *op) {
  if (w->offloaded_by_ckpt) {
    char why[300];
    w->offloaded_by_ckpt = 0;
    if (mbd_ckpt_resume((int)mbd_worker_pid(w), why, sizeof(why)) == 0) {
      set_resident(w, 1, op->residency);
      return 0;
    }
    /* The driver could not bring it back: a fresh start loads it again. */
    note(w, MBD_LOG_NOTE, "modelbufd: CUDA checkpoint restore failed (%.300s); restarting", why);
    stop_process(w, 0);
    int rc = start_process(w, op);
    if (rc == 0)
      set_resident(w, 1, op->residency);
    return rc;
  }
  if (!w->offloaded_by_stop) {
    int port = running_port(w);
    int rc = port > 0 ? call_hook(w, port, &w->restore, "restore", op->err, op->err_len)
                      : MB_EBACKEND;
    if (port == 0)
      mb__set_err(op->err, op->err_len, "model %s: its worker is not running", w->name);
    if (rc == 0) {
      w->offloaded_by_hook = 0;
      set_resident(w, 1, op->residency);
    }
    return rc == 0 ? 0 : MB_ELOAD;
  }
  int rc = start_process(w, op);
  if (rc == 0) {
    unpin_files(w);
    w->offloaded_by_stop = 0;
    set_resident(w, 1, op->residency);
  }
  return rc;
}

static int w_restore(mb_op *op) {
  mbd_worker *w = op->user;
  pthread_mutex_lock(&w->life);
  int rc = w_restore_locked(w, op);
  pthread_mutex_unlock(&w->life);
  return rc;
}

static int w_usage(mb_op *op, mb_usage *u) {
  mbd_worker *w = op->user;
  uint64_t rss = mbd_worker_rss(w);
  pid_t pgid = mbd_worker_pid(w);
  uint64_t vram = 0;
  /* On a GPU with NVML: the device memory of the group's processes is the
   * device footprint and RSS is host memory. */
  if (w->gpu >= 0 && pgid > 0 &&
      mbd_nvml_group_bytes(w->gpu, pgid, &vram, NULL, NULL, 0) == 0) {
    u->device_bytes = vram;
    u->host_bytes = rss;
  } else if (w->offloaded_by_stop) {
    uint64_t held = 0;
    for (size_t i = 0; i < w->n_pins; i++)
      held += w->pins[i].len;
    u->device_bytes = 0;
    u->host_bytes = held;
  } else if (w->offloaded_by_hook || w->offloaded_by_ckpt) {
    /* The worker keeps running with its weights in host memory. */
    u->device_bytes = 0;
    u->host_bytes = rss;
  } else {
    u->device_bytes = rss;
    u->host_bytes = 0;
  }
  pthread_mutex_lock(&w->mu);
  if (u->device_bytes > w->peak_bytes)
    w->peak_bytes = u->device_bytes;
  if (u->device_bytes > 0)
    w->sample_bytes = u->device_bytes;
  int warn = w->resident && w->declared_bytes > 0 && !w->overrun &&
             u->device_bytes > w->declared_bytes + w->declared_bytes * OVERRUN_PCT / 100;
  if (warn)
    w->overrun = 1;
  pthread_mutex_unlock(&w->mu);
  if (warn) {
    char m1[32], m2[32], text[256];
    mib(u->device_bytes, m1, sizeof(m1));
    mib(w->declared_bytes, m2, sizeof(m2));
    snprintf(text, sizeof(text),
             "footprint_overrun: %s measured, more than %d%% over the declared %s (vram)", m1,
             OVERRUN_PCT, m2);
    note(w, MBD_LOG_NOTE, "modelbufd: %s", text);
    if (w->on_warning)
      w->on_warning(w->line_arg, w->name, "footprint_overrun", text);
  }
  return 0;
}

static int w_health(mb_op *op) {
  mbd_worker *w = op->user;
  long code = 0;
  char err[128];
  int port = running_port(w);
  if (port <= 0)
    return MB_ESTATE;
  int rc = mbd_http_call(port, "GET", w->health, NULL, 2000, &code, err, sizeof(err));
  return rc == 0 && code == 200 ? 0 : MB_EBACKEND;
}

static void w_destroy(void *user) {
  mbd_worker *w = user;
  pthread_mutex_lock(&w->life);
  stop_process(w, 0);
  pthread_mutex_unlock(&w->life);
  mbd_worker_free(w);
}

static const mb_backend process_full = {
    "process", w_load, w_offload, w_restore, w_unload, w_usage, w_health, w_destroy, w_cancel,
};

static const mb_backend process_plain = {
    "process", w_load, NULL, NULL, w_unload, w_usage, w_health, w_destroy, w_cancel,
};

const mb_backend *mbd_worker_backend(const mbd_worker *w) {
  int offloadable = (w->offload.path && w->restore.path) || w->n_files > 0 || w->ckpt;
  return offloadable ? &process_full : &process_plain;
}

/* ------------------------------------------------------------------------ */
/* Getters                                                                   */

int mbd_worker_endpoint(mbd_worker *w, int *port, uint64_t *instance) {
  pthread_mutex_lock(&w->mu);
  /* A process reported lost (killed, or about to be) is no endpoint. */
  int ok = w->run != NULL && w->phase == PH_RUNNING && !w->exited && !w->lost_reported;
  if (ok) {
    if (port)
      *port = w->port;
    if (instance)
      *instance = w->instance;
  }
  pthread_mutex_unlock(&w->mu);
  return ok ? 0 : MB_ESTATE;
}

int mbd_worker_url(mbd_worker *w, char *buf, size_t len) {
  int port;
  if (mbd_worker_endpoint(w, &port, NULL) != 0)
    return MB_ESTATE;
  snprintf(buf, len, "http://127.0.0.1:%d", port);
  return 0;
}

pid_t mbd_worker_pid(mbd_worker *w) {
  pthread_mutex_lock(&w->mu);
  pid_t pid = w->run != NULL && !w->exited ? w->pid : 0;
  pthread_mutex_unlock(&w->mu);
  return pid;
}

uint64_t mbd_worker_rss(mbd_worker *w) {
  uint64_t bytes = 0;
  pthread_rwlock_rdlock(&w->run_rw);
  pthread_mutex_lock(&w->mu);
  mbd_run *run = w->exited ? NULL : w->run;
  pthread_mutex_unlock(&w->mu);
  /* run stays while run_rw is held: clearing it takes the write lock. */
  if (run != NULL)
    bytes = mbd_run_tree_bytes(run, NULL, 0, NULL);
  pthread_rwlock_unlock(&w->run_rw);
  return bytes;
}

void mbd_worker_failed(mbd_worker *w) {
  uint64_t end = now_ms() + 1000;
  int dead_seen = 0;
  pthread_mutex_lock(&w->mu);
  while (w->run != NULL && !w->exited && !w->loss_posted && now_ms() < end) {
    pid_t pid = w->pid;
    pthread_mutex_unlock(&w->mu);
    /* Its first process is this daemon's child: a zombie until reaped. */
    mbd_proc p;
    int dead = mbd_proc_stat(pid, &p) != 0 || p.state == 'Z' || p.state == 'X';
    pthread_mutex_lock(&w->mu);
    dead_seen |= dead;
    /* Alive 100 ms after the failure: it is not this process's end. */
    if (!dead_seen && now_ms() + 900 >= end)
      break;
    cv_wait_ms(w, 10);
  }
  pthread_mutex_unlock(&w->mu);
}

uint64_t mbd_worker_peak_bytes(mbd_worker *w) {
  pthread_mutex_lock(&w->mu);
  uint64_t peak = w->peak_bytes;
  pthread_mutex_unlock(&w->mu);
  return peak;
}

void mbd_worker_footprint(mbd_worker *w, uint64_t *measured, uint64_t *declared, int *overrun) {
  pthread_mutex_lock(&w->mu);
  if (measured)
    *measured = w->run != NULL ? w->sample_bytes : 0;
  if (declared)
    *declared = w->declared_bytes;
  if (overrun)
    *overrun = w->run != NULL && w->overrun;
  pthread_mutex_unlock(&w->mu);
}

int mbd_worker_cleanup(mbd_worker *w, char *err, size_t err_len) {
  if (w->cleanup.path == NULL) {
    mb__set_err(err, err_len, "model %s has no cleanup hook", w->name);
    return MB_ENOTSUP;
  }
  pthread_mutex_lock(&w->life); /* no start or stop meanwhile */
  int rc;
  int port = running_port(w);
  if (port <= 0) {
    mb__set_err(err, err_len, "model %s is not running", w->name);
    rc = MB_ESTATE;
  } else {
    rc = call_hook(w, port, &w->cleanup, "cleanup", err, err_len);
  }
  pthread_mutex_unlock(&w->life);
  return rc;
}
