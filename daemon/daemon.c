/*
 * daemon.c - the running modelbufd: builds the process supervisor, the core
 * context, devices and models from the configuration, keeps the event ring
 * for GET /api/events and the counters the core does not keep, wakes log
 * followers, and writes structured logs.
 *
 * Locks (daemon.h has the whole order): ev_mu guards the event ring and
 * the load histograms, trace_mu the request trace; both are leaves. The
 * HTTP counters are atomics. A model's worker, plugin and tensors pointers
 * are set once, before the model is published, and what they point to
 * lives until stop (mbd_model), so readers need no lock. Event and log
 * callbacks run on the core and supervisor threads.
 */
#include <errno.h>
#include <jansson.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "daemon.h"
#include "expand.h"
#include "front.h"
#include "front_int.h"
#include "leases.h"
#include "model_build.h"
#include "preload.h"
#include "modelbuf/plugin.h"
#include "tasks.h"
#include "tensors.h"

const double mbd_load_bucket_s[MBD_LOAD_BUCKETS - 1] = {0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};

static int64_t wall_ms(void) {
  struct timeval tv;
  gettimeofday(&tv, NULL);
  return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

void mbd_log(mbd *d, mbd_log_level level, const char *msg, const char *fmt, ...) {
  if (d && level < d->log_level)
    return;
  char ts[40];
  time_t now = time(NULL);
  struct tm tm;
  gmtime_r(&now, &tm);
  strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%SZ", &tm);
  char extra[1024] = "";
  if (fmt) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(extra, sizeof(extra), fmt, ap);
    va_end(ap);
  }
  fprintf(stderr, "time=%s level=%s msg=\"%s\"%s%s\n", ts, mbd_log_level_name(level), msg,
          extra[0] ? " " : "", extra);
}

const mbd_models *mbd_models_get(mbd *d) {
  return atomic_load_explicit(&d->models, memory_order_acquire);
}

static mbd_model *find_in(const mbd_models *ms, const char *name) {
  for (size_t i = 0; i < ms->n; i++)
    if (strcmp(ms->m[i]->name, name) == 0)
      return ms->m[i];
  return NULL;
}

mbd_model *mbd_find_name(mbd *d, const char *name) { return find_in(mbd_models_get(d), name); }

mbd_model *mbd_current(mbd *d, mbd_model *m) { return find_in(mbd_models_get(d), m->name); }

mbd_model *mbd_find(mbd *d, const char *name) {
  const mbd_models *ms = mbd_models_get(d);
  mbd_model *m = find_in(ms, name);
  for (size_t i = 0; m == NULL && i < ms->n; i++)
    for (size_t k = 0; k < ms->m[i]->mc->n_aliases; k++)
      if (strcmp(ms->m[i]->mc->aliases[k], name) == 0)
        return ms->m[i];
  return m;
}

/* Appends p to a kept-until-stop list; 0 or MB_ENOMEM. */
static int keep(void ***list, size_t *n, void *p) {
  void **nl = realloc(*list, (*n + 1) * sizeof(*nl));
  if (nl == NULL)
    return MB_ENOMEM;
  nl[(*n)++] = p;
  *list = nl;
  return 0;
}

static mbd_model *model_new(mbd *d, mbd_model_config *mc) {
  mbd_model *m = calloc(1, sizeof(*m));
  if (m == NULL)
    return NULL;
  m->mc = mc;
  m->name = mc->name;
  m->kind = mc->backend;
  if (keep((void ***)&d->all_models, &d->n_all_models, m) != 0) {
    free(m);
    return NULL;
  }
  return m;
}

static mbd_models *set_new(mbd *d, size_t cap) {
  mbd_models *ms = calloc(1, sizeof(*ms));
  if (ms == NULL)
    return NULL;
  ms->m = calloc(cap ? cap : 1, sizeof(*ms->m));
  if (ms->m == NULL || keep((void ***)&d->old_sets, &d->n_old_sets, ms) != 0) {
    free(ms->m);
    free(ms);
    return NULL;
  }
  return ms;
}

void mbd_log_limited(mbd *d, mbd_ratelimit *rl, int level, const char *msg, const char *fmt, ...) {
  if (d && level < (int)d->log_level)
    return;
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  uint64_t now = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
  uint64_t last = __atomic_load_n(&rl->last_ms, __ATOMIC_ACQUIRE);
  if (last != 0 && now < last + 10000) {
    __atomic_add_fetch(&rl->suppressed, 1, __ATOMIC_RELAXED);
    return;
  }
  if (!__atomic_compare_exchange_n(&rl->last_ms, &last, now ? now : 1, 0, __ATOMIC_ACQ_REL,
                                   __ATOMIC_ACQUIRE)) {
    __atomic_add_fetch(&rl->suppressed, 1, __ATOMIC_RELAXED);
    return;
  }
  uint64_t left_out = __atomic_exchange_n(&rl->suppressed, 0, __ATOMIC_ACQ_REL);
  char extra[900] = "";
  if (fmt) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(extra, sizeof(extra), fmt, ap);
    va_end(ap);
  }
  if (left_out > 0)
    mbd_log(d, (mbd_log_level)level, msg, "%s%ssuppressed=%llu", extra, extra[0] ? " " : "",
            (unsigned long long)left_out);
  else
    mbd_log(d, (mbd_log_level)level, msg, "%s", extra);
}

void mbd_trace_add(mbd *d, const char *model, double t, double duration) {
  pthread_mutex_lock(&d->trace_mu);
  if (d->trace == NULL)
    d->trace = calloc(MBD_TRACE_RING, sizeof(*d->trace));
  if (d->trace) {
    mbd_trace_entry *e = &d->trace[d->trace_n % MBD_TRACE_RING];
    e->t = t;
    e->duration = duration;
    snprintf(e->model, sizeof(e->model), "%s", model);
    d->trace_n++;
  }
  pthread_mutex_unlock(&d->trace_mu);
}

void mbd_count_code(mbd *d, mbd_model *m, int code) {
  (void)d;
  if (m == NULL || code < 100 || code > 599)
    return;
  __atomic_add_fetch(&m->http_codes[code / 100], 1, __ATOMIC_RELAXED);
}

size_t mbd_events_since(mbd *d, uint64_t from, char **out, size_t max, uint64_t *next,
                        uint64_t *oldest) {
  size_t n = 0;
  pthread_mutex_lock(&d->ev_mu);
  uint64_t first = d->ev_next > MBD_EVENT_RING ? d->ev_next - MBD_EVENT_RING : 1;
  *oldest = first;
  if (from > d->ev_next)
    from = d->ev_next;
  if (from < first)
    from = first;
  while (from < d->ev_next && n < max) {
    const mbd_event_entry *e = &d->ring[from % MBD_EVENT_RING];
    if (e->json == NULL || e->seq != from)
      break;
    out[n] = strdup(e->json);
    if (out[n] == NULL)
      break;
    n++;
    from++;
  }
  pthread_mutex_unlock(&d->ev_mu);
  *next = from;
  return n;
}

static const char *event_type_name(mb_event_type t) {
  switch (t) {
  case MB_EVENT_STATE: return "state";
  case MB_EVENT_EVICT: return "evict";
  case MB_EVENT_WARNING: return "warning";
  case MB_EVENT_LOST: return "lost";
  }
  return "event";
}

/* Puts an event (taken over) into the ring, numbered: its "seq" is its
 * id in the stream. ev_mu held. */
static void ring_push_locked(mbd *d, json_t *o) {
  uint64_t seq = d->ev_next;
  json_object_set_new(o, "seq", json_integer((json_int_t)seq));
  char *s = json_dumps(o, MBD_JSON_FLAGS);
  json_decref(o);
  if (s == NULL)
    return;
  mbd_event_entry *e = &d->ring[seq % MBD_EVENT_RING];
  free(e->json);
  e->json = s;
  e->seq = seq;
  d->ev_next++;
}

/* The last lines a model's worker printed, " | "-joined, quotes replaced
 * (for a logfmt value). */
static void last_output(mbd_model *m, char *out, size_t len) {
  out[0] = '\0';
  if (m == NULL || m->worker == NULL || len == 0)
    return;
  char buf[2048];
  size_t n = mbd_worker_logs(m->worker, buf, sizeof(buf));
  /* The worker's own lines: the daemon's notes ("-- ... --") left out. */
  const char *lines[3];
  size_t lens[3], k = 0;
  for (size_t end = n; end > 0 && k < 3;) {
    size_t start = end - 1;
    while (start > 0 && buf[start - 1] != '\n')
      start--;
    size_t l = end - start;
    if (l > 0 && buf[start + l - 1] == '\n')
      l--;
    if (l > 0 && strncmp(buf + start, "-- ", 3) != 0) {
      lines[k] = buf + start;
      lens[k++] = l;
    }
    end = start;
  }
  size_t w = 0;
  while (k-- > 0 && w + 4 < len) {
    if (w > 0) {
      memcpy(out + w, " | ", 3);
      w += 3;
    }
    for (size_t i = 0; i < lens[k] && w + 1 < len; i++)
      out[w++] = lines[k][i] == '"' ? '\'' : lines[k][i];
  }
  out[w] = '\0';
}

/* Every event of the core: into the ring (for SSE), the load histogram and
 * the log. Runs on the core thread, outside its lock. */
static void on_event(const mb_event *ev, void *arg) {
  mbd *d = arg;
  json_t *o = json_pack("{s:I,s:s,s:s,s:s}", "time",
                        (json_int_t)mb_ctx_wall_ms(d->ctx, ev->time_ns), "type",
                        event_type_name(ev->type), "model", ev->model, "reason", ev->reason);
  if (o == NULL)
    return;
  if (ev->type == MB_EVENT_STATE) {
    json_object_set_new(o, "from", json_string(mb_state_name(ev->from)));
    json_object_set_new(o, "to", json_string(mb_state_name(ev->to)));
    json_object_set_new(o, "location", json_string(mb_location_name(mb_state_location(ev->to))));
  }
  if (ev->device >= 0)
    json_object_set_new(o, "device", json_integer(ev->device));
  char last[700] = "";
  mbd_model *m = mbd_find_name(d, ev->model);
  if (ev->type == MB_EVENT_LOST) {
    last_output(m, last, sizeof(last));
    if (last[0])
      json_object_set_new(o, "last_output", json_string(last));
  }

  pthread_mutex_lock(&d->ev_mu);
  if (m && ev->type == MB_EVENT_STATE) {
    if (ev->to == MB_STATE_LOADING || ev->to == MB_STATE_RESTORING) {
      m->load_started_ns = ev->time_ns;
    } else if (ev->to == MB_STATE_READY && m->load_started_ns) {
      double sec = (double)(ev->time_ns - m->load_started_ns) / 1e9;
      int b = 0;
      while (b < MBD_LOAD_BUCKETS - 1 && sec > mbd_load_bucket_s[b])
        b++;
      m->load_buckets[b]++;
      m->load_count++;
      m->load_sum_s += sec;
      m->load_started_ns = 0;
    }
  }
  ring_push_locked(d, o);
  pthread_mutex_unlock(&d->ev_mu);
  mbd_front_wake_streams(d);

  if (ev->type == MB_EVENT_STATE)
    mbd_log(d, MBD_LOG_INFO, "state", "model=%s from=%s to=%s reason=\"%s\"", ev->model,
            mb_state_name(ev->from), mb_state_name(ev->to), ev->reason);
  else if (ev->type == MB_EVENT_LOST)
    mbd_log(d, MBD_LOG_WARN, "model lost", "model=%s reason=\"%s\" last_output=\"%s\"",
            ev->model, ev->reason, last);
  else
    mbd_log(d, ev->type == MB_EVENT_WARNING ? MBD_LOG_WARN : MBD_LOG_INFO,
            event_type_name(ev->type), "model=%s reason=\"%s\"", ev->model, ev->reason);
}

/* A worker's warning (footprint_overrun): an event and a log line. On the
 * supervisor thread. */
static void on_worker_warning(void *arg, const char *model, const char *kind, const char *text) {
  mbd *d = arg;
  json_t *o = json_pack("{s:I,s:s,s:s,s:s,s:s}", "time", (json_int_t)wall_ms(), "type", "warning",
                        "model", model, "warning", kind, "reason", text);
  if (o != NULL) {
    pthread_mutex_lock(&d->ev_mu);
    ring_push_locked(d, o);
    pthread_mutex_unlock(&d->ev_mu);
    mbd_front_wake_streams(d);
  }
  mbd_log(d, MBD_LOG_WARN, "warning", "model=%s warning=%s reason=\"%s\"", model, kind, text);
}

/* A new line in a worker's log: followers wake; at debug level, the
 * daemon's log has it too. On the supervisor thread (or an operation's). */
static void on_worker_line(void *arg, const char *model, const char *line) {
  mbd *d = arg;
  mbd_front_wake_streams(d); /* followers of the worker's log */
  if (d->log_level > MBD_LOG_DEBUG)
    return;
  char clean[600];
  size_t k = 0;
  for (const char *p = line; *p && k + 2 < sizeof(clean); p++)
    clean[k++] = *p == '"' ? '\'' : *p;
  clean[k] = '\0';
  mbd_log(d, MBD_LOG_DEBUG, "worker output", "model=%s line=\"%s\"", model, clean);
}

/* Devices as configured; omitted: every GPU the driver shows, else host. */
static int add_devices(mbd *d, char *err, size_t err_len) {
  const mbd_config *cfg = d->cfg;
  mb_device_opts o;
  if (cfg->devices_set) {
    for (size_t i = 0; i < cfg->n_devices; i++) {
      if (mbd_config_device_opts(cfg, i, &o) != 0) {
        snprintf(err, err_len, "device %zu of the configuration is not usable", i);
        return MB_EINVAL;
      }
      int rc = mb_device_add(d->ctx, &o, NULL, err, err_len);
      if (rc != 0)
        return rc;
    }
    return 0;
  }
  int gpus = 0;
  for (int ord = 0; ord < 16; ord++) {
    uint64_t total = 0;
    char why[200];
    if (mb_device_mem_info(MB_DEVICE_CUDA, ord, &total, NULL, why, sizeof(why)) != 0) {
      if (ord == 0)
        mbd_log(d, MBD_LOG_INFO, "no GPU: models run on the host device", "why=\"%s\"", why);
      break;
    }
    mb_device_opts_init(&o);
    o.kind = MB_DEVICE_CUDA;
    o.ordinal = ord;
    if (mb_device_add(d->ctx, &o, NULL, err, err_len) == 0)
      gpus++;
  }
  if (gpus > 0)
    return 0;
  mb_device_opts_init(&o);
  return mb_device_add(d->ctx, &o, NULL, err, err_len);
}

/* A model that cannot load yet (its weight files): logged, the daemon
 * starts. */
static void on_build_warning(void *arg, const char *model, const char *msg, const char *why) {
  mbd_log(arg, MBD_LOG_WARN, msg, "model=%s why=\"%s\"", model, why);
}

/* A plugin's log line, in the daemon's log (the library prints nothing). */
static void on_plugin_log(void *arg, int level, const char *model, const char *msg) {
  mbd_log(arg, (mbd_log_level)(level < 0 ? 0 : level > 3 ? 3 : level), msg ? msg : "",
          "model=%s", model ? model : "");
}

static int add_model(mbd *d, const mbd_config *cfg, mbd_model *m, char *err, size_t err_len) {
  mb_model_opts mo;
  int rc = mbd_model_options(cfg, m->mc, d->ctx, &mo, err, err_len);
  if (rc != 0)
    return rc;
  mb_plugin_host host;
  memset(&host, 0, sizeof(host));
  host.size = sizeof(host);
  host.log = on_plugin_log;
  host.log_arg = d;
  mbd_build_env env;
  memset(&env, 0, sizeof(env));
  env.ctx = d->ctx;
  env.sup = d->sup;
  env.plugin_host = &host;
  env.on_line = on_worker_line;
  env.on_warning = on_worker_warning;
  env.cb_arg = d;
  env.warn = on_build_warning;
  env.warn_arg = d;
  env.keep_be = &m->be; /* the backend stays the daemon's until stop (mbd_model) */
  mbd_built b;
  rc = mbd_model_build(&env, m->mc, &mo, &b, err, err_len);
  if (rc != 0)
    return rc;
  /* Set before the model is published in a snapshot. */
  m->worker = b.worker;
  m->plugin = b.plugin;
  m->tensors = b.tensors;
  m->user = b.user;
  m->destroy = b.destroy;
  return 0;
}

/* Makes dir (0700) if needed; 0 when it is a folder of this user that no
 * one else can write. */
static int private_dir(const char *dir) {
  if (mkdir(dir, 0700) != 0 && errno != EEXIST)
    return -1;
  struct stat st;
  return lstat(dir, &st) == 0 && S_ISDIR(st.st_mode) && st.st_uid == geteuid() &&
                 (st.st_mode & 022) == 0
             ? 0
             : -1;
}

int mbd_default_state_file(const mbd_config *cfg, char *out, size_t len) {
  char dir[512];
  const char *rt = getenv("RUNTIME_DIRECTORY"), *xdg = getenv("XDG_RUNTIME_DIR");
  if (rt && rt[0] == '/')
    snprintf(dir, sizeof(dir), "%.*s", (int)strcspn(rt, ":"), rt);
  else if (xdg && xdg[0] == '/')
    snprintf(dir, sizeof(dir), "%s/modelbuf", xdg);
  else
    snprintf(dir, sizeof(dir), "/tmp/modelbufd-%u", (unsigned)geteuid());
  if (private_dir(dir) != 0)
    return -1;
  /* The listen address, as a file name. */
  char name[128];
  const char *l = cfg->listen_str ? cfg->listen_str : MBD_DEFAULT_LISTEN;
  size_t k = 0;
  for (const char *p = l; *p && k + 1 < sizeof(name); p++)
    name[k++] = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
                        *p == '.' || *p == '-'
                    ? *p
                    : '_';
  name[k] = '\0';
  return (size_t)snprintf(out, len, "%s/modelbufd-%s.state", dir, name) < len ? 0 : -1;
}

static void sup_log(void *arg, int level, const char *msg, const char *detail) {
  mbd_log(arg, (mbd_log_level)level, msg, "%s", detail);
}

/* The supervisor: the configured state file, else the default one (without
 * one when no private folder can hold it). */
static int start_supervisor(mbd *d, char *err, size_t err_len) {
  mbd_sup_opts so;
  memset(&so, 0, sizeof(so));
  so.subreaper = 1;
  so.cgroup = d->cfg->cgroup ? d->cfg->cgroup : "auto";
  so.log = sup_log;
  so.log_arg = d;
  char path[600];
  if (d->cfg->state_file) {
    so.state_file = d->cfg->state_file;
  } else if (mbd_default_state_file(d->cfg, path, sizeof(path)) == 0) {
    so.state_file = path;
  } else {
    mbd_log(d, MBD_LOG_WARN,
            "no state file: no private folder for it (set state_file); workers left by a "
            "killed daemon are not stopped at the next start",
            NULL);
  }
  int rc = mbd_sup_start(&so, &d->sup, err, err_len);
  if (rc == MB_EIO && d->cfg->state_file == NULL && so.state_file != NULL) {
    mbd_log(d, MBD_LOG_WARN, "no state file", "why=\"%s\"", err);
    so.state_file = NULL;
    rc = mbd_sup_start(&so, &d->sup, err, err_len);
  }
  if (rc == 0 && so.state_file)
    mbd_log(d, MBD_LOG_DEBUG, "state file", "file=\"%s\"", so.state_file);
  return rc;
}

int mbd_start(mbd_config *cfg, mbd **out, char *err, size_t err_len) {
  mbd *d = calloc(1, sizeof(*d));
  if (d == NULL) {
    mbd_config_free(cfg);
    return MB_ENOMEM;
  }
  d->cfg = cfg;
  d->log_level = cfg->log_level;
  d->started_ms = wall_ms();
  if (cfg->node != NULL)
    snprintf(d->node, sizeof(d->node), "%s", cfg->node); /* validated: mbd_node_name_valid */
  else
    mbd_node_default(d->node);
  pthread_mutex_init(&d->ev_mu, NULL);
  pthread_mutex_init(&d->trace_mu, NULL);
  pthread_mutex_init(&d->preload_mu, NULL);
  atomic_store(&d->compat_model, cfg->compat_model);
  d->ev_next = 1;
  /* The supervisor first: it stops what a killed daemon left before this
   * one serves, and must outlive every worker it starts. */
  int src = start_supervisor(d, err, err_len);
  if (src != 0) {
    mbd_stop(d);
    return src;
  }

  mb_ctx_opts co;
  mb_ctx_opts_init(&co);
  mbd_config_ctx_opts(cfg, &co);
  co.on_event = on_event;
  co.event_arg = d;
  /* Models are registered before the context runs events through on_event,
   * which looks them up: fill the table first. */
  mbd_models *ms = set_new(d, cfg->n_models);
  if (ms == NULL) {
    mbd_stop(d);
    return MB_ENOMEM;
  }
  for (size_t i = 0; i < cfg->n_models; i++) {
    ms->m[i] = model_new(d, &cfg->models[i]);
    if (ms->m[i] == NULL) {
      atomic_store(&d->models, ms);
      mbd_stop(d);
      return MB_ENOMEM;
    }
    ms->n++;
  }
  atomic_store(&d->models, ms);
  int rc = mb_ctx_new(&co, &d->ctx, err, err_len);
  if (rc == 0)
    rc = add_devices(d, err, err_len);
  for (size_t i = 0; rc == 0 && i < ms->n; i++)
    rc = add_model(d, cfg, ms->m[i], err, err_len);
  if (rc != 0) {
    mbd_stop(d);
    return rc;
  }
  *out = d;
  return 0;
}

static int str_eq(const char *a, const char *b) {
  return (a == NULL && b == NULL) || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

static int strv_eq(char **a, size_t na, char **b, size_t nb) {
  if (na != nb)
    return 0;
  for (size_t i = 0; i < na; i++)
    if (!str_eq(a[i], b[i]))
      return 0;
  return 1;
}

static int hook_eq(const mbd_hook *a, const mbd_hook *b) {
  return str_eq(a->method, b->method) && str_eq(a->path, b->path) && a->timeout_ms == b->timeout_ms;
}

/* Whether a model's backend, worker or policies differ between two files. */
static int model_same(const mbd_model_config *a, const mbd_model_config *b) {
  if (a->backend != b->backend || !strv_eq(a->cmd, a->n_cmd, b->cmd, b->n_cmd) ||
      !str_eq(a->plugin, b->plugin) || !strv_eq(a->files, a->n_files, b->files, b->n_files) ||
      !str_eq(a->cwd, b->cwd) || !str_eq(a->health, b->health) || a->port != b->port ||
      a->vram_bytes != b->vram_bytes || a->device != b->device || a->pinned != b->pinned ||
      a->priority != b->priority || memcmp(&a->tuning, &b->tuning, sizeof(a->tuning)) != 0 ||
      memcmp(&a->loader, &b->loader, sizeof(a->loader)) != 0 ||
      !strv_eq(a->aliases, a->n_aliases, b->aliases, b->n_aliases) ||
      !hook_eq(&a->hook_offload, &b->hook_offload) ||
      !hook_eq(&a->hook_restore, &b->hook_restore) ||
      !hook_eq(&a->hook_cleanup, &b->hook_cleanup) || !hook_eq(&a->hook_unload, &b->hook_unload) ||
      a->memory_limit_bytes != b->memory_limit_bytes || a->n_env != b->n_env ||
      a->preload != b->preload || a->cleanup != b->cleanup || a->openai != b->openai)
    return 0;
  for (size_t i = 0; i < a->n_env; i++)
    if (!str_eq(a->env[i].name, b->env[i].name) || !str_eq(a->env[i].value, b->env[i].value))
      return 0;
  return 1;
}

void mbd_reload(mbd *d, mbd_config *cfg) {
  const mbd_models *old = mbd_models_get(d);
  size_t added = 0, removed = 0, changed = 0, kept = 0;
  char *busy = calloc(old->n ? old->n : 1, 1);
  mbd_models *ms;

  if (busy == NULL || keep((void ***)&d->old_cfgs, &d->n_old_cfgs, cfg) != 0 ||
      (ms = set_new(d, old->n + cfg->n_models)) == NULL) {
    mbd_log(d, MBD_LOG_ERROR, "reload failed: out of memory", NULL);
    free(busy);
    return;
  }
  /* Models gone or changed leave the core first (after their work drains);
   * their backends stay allocated until stop (stopped). */
  for (size_t i = 0; i < old->n; i++) {
    mbd_model *om = old->m[i];
    const mbd_model_config *nmc = NULL;
    for (size_t j = 0; j < cfg->n_models; j++)
      if (strcmp(cfg->models[j].name, om->name) == 0)
        nmc = &cfg->models[j];
    if (nmc != NULL && model_same(om->mc, nmc))
      continue;
    int rc = mb_model_remove(d->ctx, om->name);
    if (rc != 0) {
      busy[i] = 1;
      kept++;
      mbd_log(d, MBD_LOG_WARN, "reload: model kept as it was", "model=%s why=\"%s\"", om->name,
              mb_strerror(rc));
      continue;
    }
    om->plugin = NULL; /* the core freed the plugin instance */
    busy[i] = 2;       /* removed */
    if (nmc != NULL)
      changed++;
    else
      removed++;
    mbd_log(d, MBD_LOG_INFO, nmc != NULL ? "reload: model changed" : "reload: model removed",
            "model=%s", om->name);
  }
  /* The new set in the new file's order; unchanged models carry over. */
  for (size_t j = 0; j < cfg->n_models; j++) {
    mbd_model *keepm = NULL;
    for (size_t i = 0; i < old->n; i++)
      if (busy[i] != 2 && strcmp(old->m[i]->name, cfg->models[j].name) == 0)
        keepm = old->m[i];
    if (keepm != NULL) {
      ms->m[ms->n++] = keepm;
      continue;
    }
    char err[512] = "";
    mbd_model *m = model_new(d, &cfg->models[j]);
    if (m == NULL || add_model(d, cfg, m, err, sizeof(err)) != 0) {
      mbd_log(d, MBD_LOG_ERROR, "reload: model not added", "model=%s why=\"%s\"",
              cfg->models[j].name, m == NULL ? "out of memory" : err);
      continue;
    }
    ms->m[ms->n++] = m;
    added++;
  }
  /* Models the new file drops but that were busy stay until the next reload. */
  for (size_t i = 0; i < old->n; i++)
    if (busy[i] == 1 && find_in(ms, old->m[i]->name) == NULL)
      ms->m[ms->n++] = old->m[i];
  atomic_store_explicit(&d->models, ms, memory_order_release);
  atomic_store(&d->compat_model, cfg->compat_model);
  free(busy);
  /* The models this reload added or changed that preload: the new
   * entries (an unchanged model keeps its old entry, and its state). */
  mbd_model **fresh = calloc(ms->n ? ms->n : 1, sizeof(*fresh));
  size_t n_fresh = 0;
  for (size_t i = 0; fresh && i < ms->n; i++)
    if (find_in(old, ms->m[i]->name) != ms->m[i])
      fresh[n_fresh++] = ms->m[i];
  if (fresh && mbd_preload_models(d, fresh, n_fresh) != 0)
    mbd_log(d, MBD_LOG_ERROR, "reload: preload failed: out of memory", NULL);
  free(fresh);
  mbd_log(d, MBD_LOG_INFO, "reloaded", "models=%zu added=%zu removed=%zu changed=%zu kept_busy=%zu",
          ms->n, added - changed, removed, changed, kept);
}

int mbd_serve_start(mbd *d, char *err, size_t err_len) {
  int rc = mbd_leases_new(&d->leases);
  if (rc == 0)
    rc = mbd_tasks_start(d, MBD_TASK_THREADS);
  if (rc != 0) {
    snprintf(err, err_len, "cannot start: %s", mb_strerror(rc));
    return rc;
  }
  rc = mbd_front_start(d, err, err_len);
  if (rc == 0) {
    const mbd_models *ms = mbd_models_get(d);
    if (mbd_preload_models(d, ms->m, ms->n) != 0)
      mbd_log(d, MBD_LOG_ERROR, "preload failed: out of memory", NULL);
  }
  return rc;
}

void mbd_serve_quiesce(mbd *d) { mbd_front_quiesce(d); }

int mbd_serve_active(mbd *d) { return mbd_front_active(d); }

void mbd_stop(mbd *d) {
  if (d == NULL)
    return;
  __atomic_store_n(&d->stopping, 1, __ATOMIC_RELEASE);
  /* The HTTP side first: its connections end (their work is cancelled,
   * their leases released), then what its threads left posted runs here. */
  mbd_front_stop(d);
  mbd_tasks_stop(d);
  mbd_front_drain(d);
  if (d->leases && d->ctx)
    mbd_leases_release_all(d->leases, d->ctx);
  int freed = 1;
  if (d->ctx) {
    int rc;
    for (int tries = 0; (rc = mb_ctx_free(d->ctx)) == MB_EBUSY && tries < 200; tries++) {
      struct timespec ts = {0, 25 * 1000 * 1000};
      mbd_front_drain(d); /* a lease granted to a request that is gone */
      nanosleep(&ts, NULL);
    }
    if (rc != 0) {
      mbd_log(d, MBD_LOG_ERROR, "leases still out at exit; their workers are killed", NULL);
      freed = 0;
    }
    d->ctx = NULL;
  }
  mbd_front_drain(d); /* requests the core failed at shutdown */
  mbd_preload_free(d); /* the core gave its last answer */
  mbd_front_free(d);
  mbd_tasks_free(d);
  mbd_leases_free(d->leases);
  d->leases = NULL;
  /* The backends the daemon kept (mbd_model), the core done with them. */
  for (size_t i = 0; freed && i < d->n_all_models; i++) {
    mbd_model *m = d->all_models[i];
    if (m->user && m->destroy)
      m->destroy(m->user);
    m->user = NULL;
  }
  /* Kills whatever is left (nothing, after a clean unload), reaps, and
   * empties the state file. */
  mbd_sup_stop(d->sup);
  d->sup = NULL;
  for (size_t i = 0; i < MBD_EVENT_RING; i++)
    free(d->ring[i].json);
  for (size_t i = 0; i < d->n_old_sets; i++) {
    free(d->old_sets[i]->m);
    free(d->old_sets[i]);
  }
  free(d->old_sets);
  for (size_t i = 0; i < d->n_all_models; i++)
    free(d->all_models[i]);
  free(d->all_models);
  for (size_t i = 0; i < d->n_old_cfgs; i++)
    mbd_config_free(d->old_cfgs[i]);
  free(d->old_cfgs);
  free(d->trace);
  mbd_config_free(d->cfg);
  pthread_mutex_destroy(&d->ev_mu);
  pthread_mutex_destroy(&d->trace_mu);
  pthread_mutex_destroy(&d->preload_mu);
  free(d);
}
