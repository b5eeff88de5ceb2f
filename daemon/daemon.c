/*
 * daemon.c - the running modelbufd: builds the core context, devices and
 * models from the configuration, keeps the event ring for GET /api/events
 * and the counters the core does not keep, and writes structured logs.
 */
#include <jansson.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include "daemon.h"
#include "device.h"
#include "expand.h"
#include "modelbuf/plugin.h"
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

void mbd_trace_add(mbd *d, const char *model, double t, double duration) {
  pthread_mutex_lock(&d->mu);
  if (d->trace == NULL)
    d->trace = calloc(MBD_TRACE_RING, sizeof(*d->trace));
  if (d->trace) {
    mbd_trace_entry *e = &d->trace[d->trace_n % MBD_TRACE_RING];
    e->t = t;
    e->duration = duration;
    snprintf(e->model, sizeof(e->model), "%s", model);
    d->trace_n++;
  }
  pthread_mutex_unlock(&d->mu);
}

void mbd_count_code(mbd *d, mbd_model *m, int code) {
  if (m == NULL || code < 100 || code > 599)
    return;
  pthread_mutex_lock(&d->mu);
  m->http_codes[code / 100]++;
  pthread_mutex_unlock(&d->mu);
}

static const char *event_type_name(mb_event_type t) {
  switch (t) {
  case MB_EVENT_STATE: return "state";
  case MB_EVENT_EVICT: return "evict";
  case MB_EVENT_WARNING: return "warning";
  case MB_EVENT_PROGRESS: return "progress";
  case MB_EVENT_LOST: return "lost";
  }
  return "event";
}

/* Every event of the core: into the ring (for SSE), the load histogram and
 * the log. Runs on the core thread, outside its lock. */
static void on_event(const mb_event *ev, void *arg) {
  mbd *d = arg;
  if (ev->type == MB_EVENT_PROGRESS)
    return; /* progress is read from the status; the stream keeps state changes */
  json_t *o = json_pack("{s:I,s:I,s:s,s:s,s:s}", "seq", (json_int_t)ev->seq, "time",
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
  char *s = json_dumps(o, MBD_JSON_FLAGS);
  json_decref(o);

  pthread_mutex_lock(&d->mu);
  mbd_model *m = mbd_find_name(d, ev->model);
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
  if (s) {
    mbd_event_entry *e = &d->ring[d->ev_next % MBD_EVENT_RING];
    free(e->json);
    e->json = s;
    e->seq = d->ev_next++;
    pthread_cond_broadcast(&d->ev_cv);
  }
  pthread_mutex_unlock(&d->mu);

  if (ev->type == MB_EVENT_STATE)
    mbd_log(d, MBD_LOG_INFO, "state", "model=%s from=%s to=%s reason=\"%s\"", ev->model,
            mb_state_name(ev->from), mb_state_name(ev->to), ev->reason);
  else
    mbd_log(d, ev->type == MB_EVENT_WARNING ? MBD_LOG_WARN : MBD_LOG_INFO,
            event_type_name(ev->type), "model=%s reason=\"%s\"", ev->model, ev->reason);
}

static void on_worker_line(void *arg, const char *model, const char *line) {
  mbd *d = arg;
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
    if (mb__device_mem_info(MB_DEVICE_CUDA, ord, &total, NULL, why, sizeof(why)) != 0) {
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

static int add_model(mbd *d, const mbd_config *cfg, mbd_model *m, char *err, size_t err_len) {
  mb_model_opts mo;
  int rc = mbd_config_model_opts(cfg, m->mc, &mo, err, err_len);
  if (rc != 0)
    return rc;
  if (mo.device >= mb_device_count(d->ctx))
    mo.device = MB_DEVICE_AUTO;
  switch (m->kind) {
  case MBD_BACKEND_PROCESS: {
    mbd_worker_opts wo = {m->mc, 0, on_worker_line, d};
    rc = mbd_worker_new(&wo, &m->worker, err, err_len);
    if (rc != 0)
      return rc;
    /* The core owns the worker from here (destroy frees it). */
    return mb_model_add(d->ctx, m->name, mbd_worker_backend(m->worker), m->worker, &mo, err,
                        err_len);
  }
  case MBD_BACKEND_PLUGIN: {
    mb_plugin_lib *lib;
    rc = mb_plugin_open(m->mc->plugin, &lib, err, err_len);
    if (rc != 0)
      return rc;
    /* Its files: entries as a tensors model's (folders, indexes, patterns).
     * Entries that name no file yet do not stop the start: the plugin gets
     * them as written, and its loads fail on them until they are fixed. */
    char **paths = NULL, why[512] = "";
    size_t n = 0;
    if (m->mc->n_files > 0 &&
        mbd_files_expand(m->mc->files, m->mc->n_files, m->name, &paths, &n, why,
                         sizeof(why)) != 0)
      mbd_log(d, MBD_LOG_WARN, "plugin: weight files not usable; loads will fail until they are",
              "model=%s why=\"%s\"", m->name, why);
    rc = mb_model_add_plugin(d->ctx, m->name, lib,
                             (const char *const *)(paths ? paths : m->mc->files),
                             paths ? n : m->mc->n_files, NULL, &mo, &m->plugin, err, err_len);
    mb_tensors_paths_free(paths, n);
    mb_plugin_close(lib);
    return rc;
  }
  case MBD_BACKEND_TENSORS: {
    mbd_tensors *t;
    char warn[512];
    rc = mbd_tensors_new(m->mc, &t, &mo.footprint_bytes, warn, sizeof(warn));
    if (rc != 0) {
      snprintf(err, err_len, "model %s: %s", m->name, mb_strerror(rc));
      return rc;
    }
    if (warn[0])
      mbd_log(d, MBD_LOG_WARN, "tensors: weight file not usable; loads will fail until it is",
              "model=%s why=\"%s\"", m->name, warn);
    /* The core owns t from here (destroy frees it, also when the add fails). */
    rc = mb_model_add(d->ctx, m->name, mbd_tensors_backend(), t, &mo, err, err_len);
    if (rc == 0)
      m->tensors = t;
    return rc;
  }
  }
  return MB_EINVAL;
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
  pthread_mutex_init(&d->mu, NULL);
  pthread_rwlock_init(&d->reload_rw, NULL);
  pthread_cond_init(&d->ev_cv, NULL);
  d->ev_next = 1;

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
      !hook_eq(&a->hook_cleanup, &b->hook_cleanup) || a->n_env != b->n_env)
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
  /* Models gone or changed leave the core first (after their work drains). */
  pthread_rwlock_wrlock(&d->reload_rw);
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
    om->worker = NULL; /* the core destroyed it */
    om->plugin = NULL;
    om->tensors = NULL;
    busy[i] = 2; /* removed */
    if (nmc != NULL)
      changed++;
    else
      removed++;
    mbd_log(d, MBD_LOG_INFO, nmc != NULL ? "reload: model changed" : "reload: model removed",
            "model=%s", om->name);
  }
  pthread_rwlock_unlock(&d->reload_rw);
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
  pthread_mutex_lock(&d->mu);
  atomic_store_explicit(&d->models, ms, memory_order_release);
  pthread_mutex_unlock(&d->mu);
  free(busy);
  mbd_log(d, MBD_LOG_INFO, "reloaded", "models=%zu added=%zu removed=%zu changed=%zu kept_busy=%zu",
          ms->n, added - changed, removed, changed, kept);
}

void mbd_stop(mbd *d) {
  if (d == NULL)
    return;
  pthread_mutex_lock(&d->mu);
  __atomic_store_n(&d->stopping, 1, __ATOMIC_RELEASE); /* read without d->mu too */
  pthread_cond_broadcast(&d->ev_cv);
  pthread_mutex_unlock(&d->mu);
  if (d->ctx) {
    /* Leases over HTTP that were never released are the clients' to lose. */
    int rc;
    for (int tries = 0; (rc = mb_ctx_free(d->ctx)) == MB_EBUSY && tries < 200; tries++) {
      struct timespec ts = {0, 25 * 1000 * 1000};
      nanosleep(&ts, NULL);
    }
    if (rc != 0)
      mbd_log(d, MBD_LOG_ERROR, "leases still out at exit; workers left running", NULL);
    d->ctx = NULL;
  }
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
  pthread_mutex_destroy(&d->mu);
  pthread_rwlock_destroy(&d->reload_rw);
  pthread_cond_destroy(&d->ev_cv);
  free(d);
}
