/*
 * daemon.h - the running modelbufd: the core context built from the
 * configuration, the models and their backends (worker processes,
 * plugins), aliases, the event ring behind GET /api/events, counters for
 * /metrics, structured logs, the process supervisor of its workers
 * (supervisor.h), and the HTTP server (http.c, proxy.c).
 */
#ifndef MBD_DAEMON_H
#define MBD_DAEMON_H

#include <pthread.h>
#include <stdint.h>

#include "config.h"
#include "modelbuf/modelbuf.h"
#include "supervisor.h"
#include "worker.h"

#define MBD_EVENT_RING 1024
/* How every JSON answer and event is written: compact, and reals with 12
 * significant digits (0.25, not 0.25000000000000001). Needs jansson.h. */
#define MBD_JSON_FLAGS (JSON_COMPACT | JSON_REAL_PRECISION(12))
#define MBD_LOAD_BUCKETS 10

typedef struct mbd_model {
  char *name;
  mbd_model_config *mc;     /* a copy owned by the daemon's current config */
  mbd_backend_kind kind;
  mbd_worker *worker;       /* process backend; owned by the core (destroy) */
  void *plugin;             /* plugin instance; owned by the core */
  void *tensors;            /* tensors model (mbd_tensors); owned by the core */
  /* Counters the core does not keep. */
  uint64_t http_codes[6];   /* requests answered 1xx..5xx, index code/100 */
  uint64_t load_buckets[MBD_LOAD_BUCKETS]; /* load/restore durations, see mbd_load_bucket_s */
  uint64_t load_count;
  double load_sum_s;
  uint64_t load_started_ns; /* clock time it entered LOADING/RESTORING */
} mbd_model;

extern const double mbd_load_bucket_s[MBD_LOAD_BUCKETS - 1];

/*
 * The models being served: an immutable snapshot. SIGHUP publishes a new one
 * (mbd_reload); a snapshot and the models it points to stay valid until the
 * daemon stops, so a request may keep using the one it started with.
 */
typedef struct mbd_models {
  size_t n;
  mbd_model **m;
} mbd_models;

/* One served request, for GET /api/trace (the simulator's trace format). */
#define MBD_TRACE_RING 65536
typedef struct mbd_trace_entry {
  double t;        /* arrival, Unix seconds */
  double duration; /* seconds the lease was held */
  char model[MBD_MODEL_NAME_MAX + 1];
} mbd_trace_entry;

typedef struct mbd_event_entry {
  uint64_t seq;
  char *json;
} mbd_event_entry;

typedef struct mbd {
  mbd_config *cfg;          /* as started: listen, keys, limits (reload keeps these) */
  mb_ctx *ctx;
  mbd_sup *sup;             /* starts, watches and reaps every worker process */
  mbd_models *_Atomic models; /* read with mbd_models_get */
  /* Kept until stop: every snapshot, model and configuration ever served. */
  mbd_models **old_sets;
  size_t n_old_sets;
  mbd_model **all_models;
  size_t n_all_models;
  mbd_config **old_cfgs;
  size_t n_old_cfgs;
  int64_t started_ms;       /* wall clock */
  mbd_log_level log_level;

  /* Held for writing while a reload removes models (their workers are
   * destroyed), for reading by whoever uses a model's worker without holding
   * a lease on it. */
  pthread_rwlock_t reload_rw;
  pthread_mutex_t mu;       /* models' counters, the event ring, leases */
  mbd_trace_entry *trace;   /* ring of MBD_TRACE_RING served requests */
  uint64_t trace_n;         /* requests recorded so far */
  pthread_cond_t ev_cv;
  /* Log followers (GET .../logs?follow=1) wait on log_cv for log_gen to
   * move: it moves with every new line of any worker. Under mu. */
  pthread_cond_t log_cv;
  uint64_t log_gen;
  mbd_event_entry ring[MBD_EVENT_RING];
  uint64_t ev_next;         /* seq of the next event */
  int stopping;

  int active;               /* HTTP requests being answered */
  struct MHD_Daemon *mhd;
  struct MHD_Daemon *mhd_unix;
} mbd;

/* The state file the daemon uses when the configuration names none: in
 * $RUNTIME_DIRECTORY (systemd's RuntimeDirectory=), else
 * $XDG_RUNTIME_DIR/modelbuf, else /tmp/modelbufd-UID (made 0700, used only
 * when it is the daemon user's own and no one else can write it), named
 * after the listen address, so daemons on other addresses never share
 * one. 0, or -1 when no such folder can be used (no state file then). */
int mbd_default_state_file(const mbd_config *cfg, char *out, size_t len);

/* Builds the daemon from a validated configuration (taken over). */
int mbd_start(mbd_config *cfg, mbd **out, char *err, size_t err_len) MB_WUR;
/* Stops everything: fails waiters, unloads every model, stops workers. */
void mbd_stop(mbd *d);

/* The current models (never NULL). */
const mbd_models *mbd_models_get(mbd *d);
/*
 * The current entry of m's model after a lease on it was granted: an entry
 * from an older snapshot may belong to a model a reload replaced. NULL if
 * the model is gone.
 */
mbd_model *mbd_current(mbd *d, mbd_model *m);
mbd_model *mbd_find(mbd *d, const char *name);            /* name or alias */
mbd_model *mbd_find_name(mbd *d, const char *name);       /* name only */

/*
 * Applies a new configuration's models (taken over): models added, removed,
 * or changed (removed, then added with the new settings) without touching
 * the others. A model that cannot be removed now (leases out, requests
 * waiting) keeps its old settings, logged. listen, api_keys and limits keep
 * their values from the start. Called from the signal thread only.
 */
void mbd_reload(mbd *d, mbd_config *cfg);

/* A structured log line (logfmt): level, msg, then key=value pairs. */
void mbd_log(mbd *d, mbd_log_level level, const char *msg, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Records a served request: arrival (Unix seconds) and time held. */
void mbd_trace_add(mbd *d, const char *model, double t, double duration);

/* Counts an answered HTTP request of a model (NULL: not model-specific). */
void mbd_count_code(mbd *d, mbd_model *m, int code);

/* HTTP server (http.c): listens as the configuration says. */
int mbd_http_start(mbd *d, char *err, size_t err_len) MB_WUR;
void mbd_http_quiesce(mbd *d);
void mbd_http_stop(mbd *d);

#endif /* MBD_DAEMON_H */
