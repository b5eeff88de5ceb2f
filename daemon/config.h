/*
 * config.h - modelbufd's configuration: the YAML file of DESIGN §6 read into
 * plain structs, validated as a whole, with the environment and command-line
 * overrides applied on top, and translated into the core's option structs.
 *
 * Life of a configuration:
 *   mbd_config_load_file() or mbd_config_parse()   file -> mbd_config, or every error
 *   mbd_config_apply_overrides()                    MODELBUF_* env, then flags
 *   mbd_config_ctx_opts() / _device_opts() / _model_opts()   -> mb_*_opts
 *   mbd_config_free()
 *
 * The structs are plain and read-only for the daemon once loaded: every
 * string is owned by the configuration and freed by mbd_config_free. Sizes
 * are bytes, durations are milliseconds with MB_FOREVER (-1) for "never".
 *
 * Errors are collected, not stopped at: a file with five mistakes gives five
 * messages in an mbd_diag, each "FILE:LINE:COL: key.path: what is wrong"
 * (e.g. "modelbuf.yaml:12:5: models.whisper.vramm: unknown key (did you
 * mean 'vram'?)"). Nothing is printed by this module.
 *
 * Not thread-safe by itself: load and override on one thread, then share the
 * result read-only.
 */
#ifndef MBD_CONFIG_H
#define MBD_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "expand.h"
#include "modelbuf/modelbuf.h"

/* Defaults (DESIGN §1, §2, §5). The core's own (keep-alive, queues,
 * crash limits) are the library's MB_DEFAULT_* (modelbuf.h), used as they
 * are in MBD_TUNING_MAP below. */
#define MBD_DEFAULT_CONFIG_FILE "./modelbuf.yaml"
#define MBD_DEFAULT_LISTEN "127.0.0.1:8686"
#define MBD_DEFAULT_START_TIMEOUT_MS (120 * 1000)
#define MBD_DEFAULT_STOP_TIMEOUT_MS (10 * 1000)
#define MBD_DEFAULT_BUSY_TIMEOUT_MS 0 /* off */
#define MBD_DEFAULT_HOOK_TIMEOUT_MS (30 * 1000)
#define MBD_DEFAULT_MAX_BODY_BYTES (64ULL << 20)
#define MBD_DEFAULT_MAX_HEADER_BYTES (64ULL << 10)
#define MBD_DEFAULT_HEALTH "/health"
#define MBD_DEFAULT_HEALTH_INTERVAL_MS 0 /* off */
#define MBD_DEFAULT_HEALTH_FAILURES 3
/* The front door (limits:, DESIGN §5), in the spirit of nginx's defaults. */
#define MBD_DEFAULT_MAX_CONNECTIONS 10000
#define MBD_DEFAULT_HEADER_TIMEOUT_MS (30 * 1000)
#define MBD_DEFAULT_IDLE_TIMEOUT_MS (75 * 1000)
#define MBD_DEFAULT_BODY_TIMEOUT_MS (60 * 1000)
#define MBD_DEFAULT_SEND_TIMEOUT_MS (60 * 1000)
#define MBD_DEFAULT_MIN_BODY_RATE 1024 /* bytes per second, over 10 s windows */
#define MBD_DEFAULT_BODY_BUFFER_BYTES (1ULL << 20)
#define MBD_MODEL_NAME_MAX 64
/* A node's name (node:, --node, MODELBUF_NODE): at most a DNS name's length,
 * as Kubernetes node names are. */
#define MBD_NODE_NAME_MAX 253
/* Retry-After of a 503 cannot_fit when nothing known frees room (limits.retry_after). */
#define MBD_DEFAULT_RETRY_AFTER_MS (30 * 1000)

/* A per-model value not set in the model's section: take it from defaults. */
#define MBD_UNSET MB_DEFAULT

/* ------------------------------------------------------------------------ */
/* Diagnostics                                                               */

/* Collected error messages. Zero-initialise (or mbd_diag_init) before use. */
typedef struct mbd_diag {
  char **msgs;    /* "FILE:LINE:COL: key.path: message", in file order */
  size_t n, cap;
  size_t dropped; /* messages beyond MBD_DIAG_MAX, counted but not kept */
} mbd_diag;

#define MBD_DIAG_MAX 100

void mbd_diag_init(mbd_diag *d);
void mbd_diag_free(mbd_diag *d);
/* Writes every message, one a line, and a count of dropped ones. */
void mbd_diag_print(const mbd_diag *d, FILE *f);

/* ------------------------------------------------------------------------ */
/* The configuration                                                         */

typedef enum mbd_log_level {
  MBD_LOG_DEBUG = 0,
  MBD_LOG_INFO,
  MBD_LOG_WARN,
  MBD_LOG_ERROR
} mbd_log_level;

/* "debug", "info", "warn", "error". */
const char *mbd_log_level_name(mbd_log_level l);
/* Parses the names above (also "warning"); MB_EINVAL otherwise. */
int mbd_log_level_parse(const char *s, mbd_log_level *out) MB_WUR;

/* Where the daemon listens: a TCP host and port, or a Unix socket path. */
typedef struct mbd_listen {
  char *host;      /* "127.0.0.1", "::1", "0.0.0.0", "localhost"; NULL for unix */
  int port;        /* 1..65535; 0 for unix */
  char *unix_path; /* "unix:/run/modelbuf.sock" gives "/run/modelbuf.sock"; else NULL */
} mbd_listen;

/*
 * Parses "HOST:PORT", "[V6ADDR]:PORT", ":PORT" (all interfaces, host
 * "0.0.0.0") or "unix:PATH" into out (strings malloc'd; free with
 * mbd_listen_clear). Errors: MB_EINVAL (reason in err), MB_ENOMEM.
 */
int mbd_listen_parse(const char *s, mbd_listen *out, char *err, size_t err_len) MB_WUR;
void mbd_listen_clear(mbd_listen *l);

/*
 * Policy values a model inherits from the defaults section unless it sets
 * them. One list gives the struct, the schema of `defaults:` and of each
 * model (and its JSON Schema, with doc as the description), the built-in
 * defaults and the resolution (config.c, config_parse.c, config_keys.c):
 * XX(field, key, kind, default, min, max, doc), kind DUR (int64_t ms; min
 * -1 allows "forever", max 0 means none), INT (int within [min, max]) or
 * BOOL (int 0/1).
 */
#define MBD_TUNING_MAP(XX)                                                                    \
  XX(keep_alive_ms, "keep_alive", DUR, MB_DEFAULT_KEEP_ALIVE_MS, -1, 0,                      \
     "time a model stays loaded after its last request; 0 acts at once, -1 never (default 5m)") \
  XX(offload, "offload", BOOL, 1, 0, 1,                                                       \
     "when keep_alive expires, move the model to host RAM if it can, instead of unloading it " \
     "(default true)")                                                                        \
  XX(host_keep_alive_ms, "host_keep_alive", DUR, MB_DEFAULT_HOST_KEEP_ALIVE_MS, -1, 0,       \
     "time offloaded in host RAM before a full release (default 30m)")                        \
  XX(max_concurrency, "max_concurrency", INT, MB_DEFAULT_MAX_CONCURRENCY, 1, 100000,         \
     "requests the worker serves at once (default 1)")                                        \
  XX(max_queue, "max_queue", INT, MB_DEFAULT_MAX_QUEUE, 0, 10000000,                         \
     "waiting requests beyond which the answer is 503 queue_full (default 64)")               \
  XX(queue_timeout_ms, "queue_timeout", DUR, MB_DEFAULT_QUEUE_TIMEOUT_MS, -1, 0,             \
     "how long a request waits for a slot or for memory, then 504 (default 60s)")             \
  XX(start_timeout_ms, "start_timeout", DUR, MBD_DEFAULT_START_TIMEOUT_MS, 1, 0,              \
     "the worker must answer its health check within this (default 120s)")                   \
  XX(stop_timeout_ms, "stop_timeout", DUR, MBD_DEFAULT_STOP_TIMEOUT_MS, 0, 0,                 \
     "SIGTERM to the worker's tree, SIGKILL after this (default 10s)")                        \
  XX(busy_timeout_ms, "busy_timeout", DUR, MBD_DEFAULT_BUSY_TIMEOUT_MS, 0, 0,                 \
     "a request in flight longer than this kills the worker (504); 0 is off (default)")       \
  XX(request_buffering, "request_buffering", BOOL, 1, 0, 1,                                   \
     "receive a request body whole before asking for the model; false streams it "            \
     "(default true)")                                                                        \
  XX(health_interval_ms, "health_interval", DUR, MBD_DEFAULT_HEALTH_INTERVAL_MS, 0, 0,        \
     "check a ready worker's health path this often; 0 is off (default)")                    \
  XX(health_failures, "health_failures", INT, MBD_DEFAULT_HEALTH_FAILURES, 1, 1000,           \
     "failed health checks in a row after which the worker is lost (default 3)")              \
  XX(crash_limit, "crash_limit", INT, MB_DEFAULT_CRASH_LIMIT, 0, MB_CRASH_LIMIT_MAX,         \
     "losses within crash_window after which the model fails, with back-off; 0 never "        \
     "(default 3)")                                                                           \
  XX(crash_window_ms, "crash_window", DUR, MB_DEFAULT_CRASH_WINDOW_MS, -1, 0,                \
     "the window of crash_limit (default 5m)")

#define MBD__TUNING_CTYPE_DUR int64_t
#define MBD__TUNING_CTYPE_INT int
#define MBD__TUNING_CTYPE_BOOL int
#define MBD__TUNING_FIELD(field, key, kind, def, min, max, doc) MBD__TUNING_CTYPE_##kind field;

/* In mbd_config.defaults every field holds a value; in mbd_model_config.set
 * a field is MBD_UNSET when the model left it out. */
typedef struct mbd_tuning {
  MBD_TUNING_MAP(MBD__TUNING_FIELD)
} mbd_tuning;

typedef enum mbd_backend_kind {
  MBD_BACKEND_PROCESS = 0, /* a worker process per model (cmd) */
  MBD_BACKEND_PLUGIN,      /* a shared object exporting the backend vtable (plugin) */
  MBD_BACKEND_TENSORS      /* weight files loaded by libmodelbuf's tensor engine (files) */
} mbd_backend_kind;

/* "process", "plugin", "tensors". */
const char *mbd_backend_name(mbd_backend_kind k);

/* An HTTP call into a worker. Configured when path != NULL. */
typedef struct mbd_hook {
  char *method;       /* upper case, default "POST" */
  char *path;         /* starts with "/"; may hold ${PORT}/${MODEL}/${GPU} */
  int64_t timeout_ms; /* default MBD_DEFAULT_HOOK_TIMEOUT_MS */
} mbd_hook;

/* A request a benchmark sends to measure a model. Configured when path != NULL. */
typedef struct mbd_probe {
  char *method; /* upper case; default "POST" with a body, else "GET" */
  char *path;
  char *body;   /* NULL for none */
} mbd_probe;

/* Loader knobs of a tensors model (mb_tensors_opts); 0 = the library's default. */
typedef struct mbd_loader {
  uint64_t chunk_bytes; /* bytes per read (default 8 MiB, rounded up to 4096) */
  int threads;          /* reader threads, 1..64 (default 4) */
  int io;               /* 0 auto, 1 buffered, 2 direct (as mb_tensors_opts.io) */
} mbd_loader;

typedef struct mbd_env_var {
  char *name;
  char *value; /* may hold ${PORT}/${MODEL}/${GPU}: pass through mbd_subst_worker */
} mbd_env_var;

/* When a model's worker is asked to clean up (its cleanup hook). */
typedef enum mbd_cleanup_mode {
  MBD_CLEANUP_MANUAL = 0,    /* POST /api/cleanup and /cleanup-memory only */
  MBD_CLEANUP_AFTER_REQUEST  /* also after each proxied request, before the next is sent */
} mbd_cleanup_mode;

typedef struct mbd_model_config {
  char *name;                /* mbd_model_name_valid: [A-Za-z0-9._:/-]{1,64} */
  int line, col;             /* where its section starts, for later messages */
  mbd_backend_kind backend;
  char **cmd;                /* process: argv, n_cmd entries + NULL; worker templates */
  size_t n_cmd;
  char *plugin;              /* plugin: path of the shared object */
  char **files;              /* weight files (tensors: loaded; process: kept in page cache) */
  size_t n_files;
  mbd_env_var *env;          /* extra environment of the worker, in file order */
  size_t n_env;
  char *cwd;                 /* worker's working directory, NULL = the daemon's */
  char *health;              /* health path, default "/health" */
  int port;                  /* fixed worker port, 0 = the daemon picks a free one */
  uint64_t vram_bytes;       /* declared footprint until measured, 0 = unknown */
  int device;                /* GPU ordinal, or MB_DEVICE_AUTO (the default) */
  int pinned;                /* never evicted */
  int priority;              /* default request priority (higher first) */
  char **aliases;            /* other names that route to it (OpenAI "model") */
  size_t n_aliases;
  mbd_tuning set;            /* as written in the model's section (MBD_UNSET: not) */
  mbd_tuning tuning;         /* effective: set, else the configuration's defaults */
  mbd_hook hook_offload, hook_restore, hook_cleanup;
  mbd_hook hook_unload;      /* called before the worker is stopped (custom cleanup) */
  uint64_t memory_limit_bytes; /* the worker is stopped and FAILS past it; 0 = none */
  mbd_probe probe;
  mbd_loader loader;         /* tensors: how its files are read */
  int preload;               /* loaded when the daemon starts (and when a reload adds it) */
  mbd_cleanup_mode cleanup;  /* when its cleanup hook is called */
  int openai;                /* listed by GET /v1/models (default: when it has aliases) */
} mbd_model_config;

typedef struct mbd_device_config {
  int host;                  /* 1: the host device (no GPU) */
  int gpu;                   /* CUDA ordinal when host == 0, else -1 */
  int line, col;
  uint64_t capacity_bytes;   /* 0: measured */
  uint64_t reserve_bytes;    /* kept free for others */
  uint64_t budget_bytes;     /* cap on what models may use, 0 = none */
  int max_loaded;            /* resident models at most, 0 = no cap */
  int concurrency;           /* requests at once across its models, 0 = no cap */
  int max_parallel_loads;    /* loads/restores at once, >= 1 (default 1) */
} mbd_device_config;

typedef struct mbd_config {
  char *file;                /* the name errors were reported against */
  char *listen_str;          /* as written (or overridden) */
  mbd_listen listen;         /* parsed listen_str */
  char *unix_socket;         /* an extra Unix socket to listen on, NULL for none */
  char **api_keys;           /* non-empty, distinct; none = no authentication */
  size_t n_api_keys;
  int devices_set;           /* 0: key omitted, the daemon uses all GPUs, else the host */
  mbd_device_config *devices;
  size_t n_devices;
  uint64_t host_memory_bytes;/* host tier for offloaded models, 0 = half of RAM */
  mb_eviction eviction;      /* default MB_EVICT_LRU */
  mbd_log_level log_level;   /* default MBD_LOG_INFO */
  mbd_tuning defaults;
  /* The front door (limits:). */
  uint64_t max_body_bytes;   /* limits.max_body_size: a request body at most */
  uint64_t max_header_bytes; /* limits.max_header_size: request line + headers at most */
  int max_connections;       /* limits.max_connections: client connections at once */
  int64_t header_timeout_ms; /* limits.header_timeout: the whole header block within */
  int64_t idle_timeout_ms;   /* limits.idle_timeout: a keep-alive connection idle at most */
  int64_t body_timeout_ms;   /* limits.body_timeout: between two reads of a body */
  int64_t send_timeout_ms;   /* limits.send_timeout: a client that takes nothing that long */
  uint64_t min_body_rate;    /* limits.min_body_rate: bytes/s over 10 s windows; 0 = off */
  uint64_t body_buffer_bytes;/* limits.body_buffer_size: in memory, then a temp file */
  int64_t retry_after_ms;    /* limits.retry_after: a 503's Retry-After when nothing
                                known frees room sooner */
  int http_threads;          /* event-loop threads; 0 = one per CPU (at most 16) */
  char *temp_dir;            /* request bodies spooled here; NULL = $TMPDIR, else /tmp */
  char *state_file;          /* worker pids kept for the next start; NULL = derived */
  char *cgroup;              /* worker cgroups: "auto" (NULL), "off", or a cgroup v2 folder */
  char **openai_routes;      /* more POST paths routed by the body's "model" */
  size_t n_openai_routes;
  char *compat_model;        /* compat.model: the model GET /api/gpu/status shows flat; NULL none */
  char *node;                /* node: this daemon's name in a fleet; NULL = the host's name
                                (mbd_node_default) */
  int dashboard;             /* 1 (default): GET / serves the dashboard (dashboard.h) */
  mbd_model_config *models;  /* in file order */
  size_t n_models;
} mbd_config;

/*
 * Writes the JSON Schema of the configuration file to f (draft-07, built
 * from the tables the parser walks: docs/modelbuf.schema.json). Editors
 * validate and complete with it; the parser checks more than it says.
 * Errors: MB_EIO when f failed.
 */
int mbd_config_write_schema(FILE *f);

/*
 * Parses a configuration from memory; name is what messages call the file.
 * env supplies ${NAME} values (NULL: the process environment).
 * On success *out is a new configuration (free with mbd_config_free) and diag
 * is untouched. On MB_EINVAL *out is NULL and diag holds every error found.
 * Errors: MB_EINVAL, MB_ENOMEM.
 */
int mbd_config_parse(const char *text, size_t len, const char *name, const mbd_env *env,
                     mbd_config **out, mbd_diag *diag) MB_WUR;

/* As mbd_config_parse, reading path. Also MB_EIO (message in diag). */
int mbd_config_load_file(const char *path, const mbd_env *env, mbd_config **out,
                         mbd_diag *diag) MB_WUR;

/* A configuration with every default and no models (when there is no file). */
int mbd_config_new_default(mbd_config **out) MB_WUR;

void mbd_config_free(mbd_config *cfg);

/* The model called name, or having name as an alias; NULL if none. */
const mbd_model_config *mbd_config_find_model(const mbd_config *cfg, const char *name);

/*
 * Whether s can be a model's name or alias: 1 to MBD_MODEL_NAME_MAX
 * characters of A-Z a-z 0-9 . _ : - /, not only dots; a '/' (as in
 * "Qwen/Qwen2.5-7B-Instruct") neither first nor last nor doubled, and no
 * segment between slashes "." or "..". In a URL path a name with '/' is
 * written percent-encoded ("Qwen%2FQwen2.5-7B-Instruct").
 */
int mbd_model_name_valid(const char *s);

/*
 * Whether s can be a node's name: 1 to MBD_NODE_NAME_MAX visible ASCII
 * characters (0x21-0x7e) but '"' and '\\' (it goes into HTTP headers, JSON
 * and Prometheus labels as it is).
 */
int mbd_node_name_valid(const char *s);

/*
 * The node name of a daemon whose configuration names none: the host's
 * name (gethostname), each byte a node name cannot hold replaced by '-',
 * cut to MBD_NODE_NAME_MAX; "localhost" when there is none. out holds
 * MBD_NODE_NAME_MAX + 1 bytes.
 */
void mbd_node_default(char *out);

/*
 * The configuration file to read: flag if given, else $MODELBUF_CONFIG if
 * set and non-empty, else MBD_DEFAULT_CONFIG_FILE. Never NULL; not copied.
 */
const char *mbd_config_path(const char *flag, const mbd_env *env);

/* ------------------------------------------------------------------------ */
/* Overrides                                                                 */

/* Command-line values; NULL (or 0) leaves the configuration's value. */
typedef struct mbd_flags {
  const char *listen;     /* --listen */
  const char *log_level;  /* --log-level */
  const char *keep_alive; /* --keep-alive: defaults.keep_alive */
  const char *node;       /* --node: node */
  const char *const *api_keys; /* --api-key, each added */
  size_t n_api_keys;
} mbd_flags;

/*
 * Applies, in this order so that flags win over the environment and the
 * environment over the file:
 *   MODELBUF_LISTEN    replaces listen
 *   MODELBUF_API_KEY   adds an API key (empty: nothing)
 *   GPU_IDLE_TIMEOUT   replaces defaults.keep_alive (a duration; bare = seconds)
 *   MODELBUF_NODE      replaces node (empty: nothing)
 *   flags              as above
 * then recomputes every model's effective tuning. env NULL = the process
 * environment; flags may be NULL. Errors: MB_EINVAL with a message per bad
 * value in diag (naming the variable or flag; cfg unchanged for that value),
 * MB_ENOMEM.
 */
int mbd_config_apply_overrides(mbd_config *cfg, const mbd_env *env, const mbd_flags *flags,
                               mbd_diag *diag) MB_WUR;

/* ------------------------------------------------------------------------ */
/* Translation into the core's options                                       */

/*
 * Context options: eviction, host budget, default keep-alive. Sets only those
 * fields; initialise out with mb_ctx_opts_init() (or zero it) first.
 */
void mbd_config_ctx_opts(const mbd_config *cfg, mb_ctx_opts *out);

/*
 * Options of cfg->devices[i], to be added in list order so that the core's
 * device index equals i. Fills every field of out. Errors: MB_EINVAL (i out
 * of range, or devices omitted: then the daemon enumerates GPUs itself).
 */
int mbd_config_device_opts(const mbd_config *cfg, size_t i, mb_device_opts *out) MB_WUR;

/*
 * Options of model m (its effective tuning). Fills every field of out.
 * m->device is a GPU ordinal; it becomes the core's device index: the
 * position of the devices entry with that gpu when devices are listed, else
 * the ordinal itself (the daemon adds GPUs in ordinal order). Errors:
 * MB_ENODEV (device not among the listed ones; message in err).
 */
int mbd_config_model_opts(const mbd_config *cfg, const mbd_model_config *m, mb_model_opts *out,
                          char *err, size_t err_len) MB_WUR;

/* Optimal string alignment distance of a and b, ASCII case folded (at most
 * 64 characters each; longer: SIZE_MAX): how close a mistyped name is to a
 * real one. The configuration's "did you mean" and the CLI's (commands,
 * model names) both use it. */
size_t mbd__edit_distance(const char *a, const char *b);

#endif /* MBD_CONFIG_H */
