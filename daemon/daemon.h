/*
 * daemon.h - the running modelbufd: the core context built from the
 * configuration, the models and their backends (worker processes,
 * plugins, tensors), aliases, the event ring behind GET /api/events,
 * counters for /metrics, structured logs, and the parts that serve HTTP:
 * the front door (front.h), the task pool (tasks.h), the leases taken over
 * HTTP (leases.h), and the process supervisor of its workers
 * (supervisor.h).
 *
 * Threads: the signal thread (main.c: start, SIGHUP reload, stop), the
 * core's threads (its step thread calls on_event and every done callback),
 * the front door's loop threads, the task pool, the supervisor's thread
 * (supervisor.c: it forks, watches and reaps every worker).
 *
 * Every lock of the daemon, in the only order they may nest (a thread
 * holding one may take only those after it; each file's opening comment
 * says what its locks guard):
 *
 *   worker life -> worker run_rw -> worker mu -> supervisor mu   (worker.c, supervisor.c)
 *   -> the core's core_lock -> post_lock / pool_lock              (lib/core.c)
 *   ev_mu, trace_mu, preload_mu, leases mu, tasks mu, a loop's post_mu,
 *   a worker's log lock, the front door's reserve_mu / ack_mu    (leaves: nothing is
 *                                                                 taken under them)
 *
 * ev_mu guards the event ring and the load histograms; trace_mu the
 * request trace; leases mu the HTTP lease table (leases.c); tasks mu the
 * task queue (tasks.c); post_mu a loop's posted callbacks (evloop.c). The
 * HTTP counters are atomics; the models snapshot is an atomic pointer
 * published by the signal thread; a model's backend pointers are set before
 * the model is published and what they point to lives until stop. The
 * front door's loop threads own their connections outright (no lock): other
 * threads reach a request only by posting to its loop. Nothing of the
 * daemon is held while calling a backend or waiting on a worker, and a
 * loop thread never waits on a lock that a slow operation holds (the core's
 * fast paths use trylock).
 *
 * Names: a function that expects its caller to hold a lock ends in
 * _locked when the lock is its file's own (ring_push_locked: ev_mu);
 * otherwise its comment names the lock.
 */
#ifndef MBD_DAEMON_H
#define MBD_DAEMON_H

#include <pthread.h>
#include <stdint.h>

#include "config.h"
#include "modelbuf/modelbuf.h"
#include "supervisor.h"
#include "worker.h"

typedef struct mbd_front mbd_front;
typedef struct mbd_tasks mbd_tasks;
typedef struct mbd_leases mbd_leases;
typedef struct mbd_preload mbd_preload;

#define MBD_EVENT_RING 1024
/* How every JSON answer and event is written: compact, and reals with 12
 * significant digits (0.25, not 0.25000000000000001). Needs jansson.h. */
#define MBD_JSON_FLAGS (JSON_COMPACT | JSON_REAL_PRECISION(12))
#define MBD_LOAD_BUCKETS 10

typedef struct mbd_model {
  char *name;
  mbd_model_config *mc;     /* a copy owned by the daemon's current config */
  mbd_backend_kind kind;
  /* The backend argument is the daemon's until it stops, not the core's:
   * the core gets a copy of the vtable without destroy (be), and the
   * daemon frees user with destroy at stop. So a model that a reload
   * removed keeps a valid (stopped) worker for whoever still reads it. */
  mbd_worker *worker;       /* process backend */
  void *plugin;             /* plugin instance; owned by the core */
  void *tensors;            /* tensors model (mbd_tensors) */
  mb_backend be;
  void *user;
  void (*destroy)(void *user);
  /* Counters the core does not keep. */
  uint64_t http_codes[6];   /* atomics: requests answered 1xx..5xx, index code/100 */
  uint64_t load_buckets[MBD_LOAD_BUCKETS]; /* ev_mu: load/restore durations, see mbd_load_bucket_s */
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
  /* Kept until stop (signal thread only): every snapshot, model and
   * configuration ever served. */
  mbd_models **old_sets;
  size_t n_old_sets;
  mbd_model **all_models;
  size_t n_all_models;
  mbd_config **old_cfgs;
  size_t n_old_cfgs;
  int64_t started_ms;       /* wall clock */
  mbd_log_level log_level;
  int stopping;             /* atomic */

  pthread_mutex_t trace_mu;
  mbd_trace_entry *trace;   /* ring of MBD_TRACE_RING served requests */
  uint64_t trace_n;         /* requests recorded so far */

  pthread_mutex_t ev_mu;
  mbd_event_entry ring[MBD_EVENT_RING];
  uint64_t ev_next;         /* seq of the next event */

  mbd_front *front;
  mbd_tasks *tasks;
  mbd_leases *leases;

  pthread_mutex_t preload_mu;
  mbd_preload *preload;     /* preload.c: the models waiting to preload */
  /* compat.model of the configuration served now (start, then each
   * reload): a string of a configuration kept until stop, or NULL. */
  const char *_Atomic compat_model;
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

/* Copies the events with seq >= from (at most max) into out as JSON texts
 * (caller frees each); *next gets the seq after the last copied, and
 * *oldest the oldest still in the ring. Returns the count. */
size_t mbd_events_since(mbd *d, uint64_t from, char **out, size_t max, uint64_t *next,
                        uint64_t *oldest);

/* The HTTP side (front.c, tasks.c, leases.c): started after the models,
 * stopped before them. */
int mbd_serve_start(mbd *d, char *err, size_t err_len) MB_WUR;
/* Stops accepting; requests in flight go on. */
void mbd_serve_quiesce(mbd *d);
/* Requests in flight. */
int mbd_serve_active(mbd *d);

#endif /* MBD_DAEMON_H */
