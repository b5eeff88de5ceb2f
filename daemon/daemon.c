/*
 * daemon.c - the running modelbufd: builds the core context, devices and
 * models from the configuration, keeps the event ring for GET /api/events
 * and the counters the core does not keep, and writes structured logs.
 */
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include "daemon.h"
#include "device.h"
#include "modelbuf/plugin.h"

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

mbd_model *mbd_find_name(mbd *d, const char *name) {
  for (size_t i = 0; i < d->n_models; i++)
    if (strcmp(d->models[i].name, name) == 0)
      return &d->models[i];
  return NULL;
}

mbd_model *mbd_find(mbd *d, const char *name) {
  mbd_model *m = mbd_find_name(d, name);
  for (size_t i = 0; m == NULL && i < d->n_models; i++)
    for (size_t k = 0; k < d->models[i].mc->n_aliases; k++)
      if (strcmp(d->models[i].mc->aliases[k], name) == 0)
        return &d->models[i];
  return m;
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
  char *s = json_dumps(o, JSON_COMPACT);
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

static int add_model(mbd *d, mbd_model *m, char *err, size_t err_len) {
  mb_model_opts mo;
  int rc = mbd_config_model_opts(d->cfg, m->mc, &mo, err, err_len);
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
    rc = mb_model_add_plugin(d->ctx, m->name, lib, (const char *const *)m->mc->files,
                             m->mc->n_files, NULL, &mo, &m->plugin, err, err_len);
    mb_plugin_close(lib);
    return rc;
  }
  case MBD_BACKEND_TENSORS:
    snprintf(err, err_len, "model %s: the tensors backend is not in this build of modelbufd",
             m->name);
    return MB_ENOTSUP;
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
  pthread_cond_init(&d->ev_cv, NULL);
  d->ev_next = 1;

  mb_ctx_opts co;
  mb_ctx_opts_init(&co);
  mbd_config_ctx_opts(cfg, &co);
  co.on_event = on_event;
  co.event_arg = d;
  /* Models are registered before the context runs events through on_event,
   * which looks them up: fill the table first. */
  d->models = calloc(cfg->n_models ? cfg->n_models : 1, sizeof(mbd_model));
  if (d->models == NULL) {
    mbd_stop(d);
    return MB_ENOMEM;
  }
  for (size_t i = 0; i < cfg->n_models; i++) {
    d->models[i].mc = &cfg->models[i];
    d->models[i].name = cfg->models[i].name;
    d->models[i].kind = cfg->models[i].backend;
  }
  d->n_models = cfg->n_models;
  int rc = mb_ctx_new(&co, &d->ctx, err, err_len);
  if (rc == 0)
    rc = add_devices(d, err, err_len);
  for (size_t i = 0; rc == 0 && i < d->n_models; i++)
    rc = add_model(d, &d->models[i], err, err_len);
  if (rc != 0) {
    mbd_stop(d);
    return rc;
  }
  *out = d;
  return 0;
}

void mbd_stop(mbd *d) {
  if (d == NULL)
    return;
  pthread_mutex_lock(&d->mu);
  d->stopping = 1;
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
  free(d->models);
  mbd_config_free(d->cfg);
  pthread_mutex_destroy(&d->mu);
  pthread_cond_destroy(&d->ev_cv);
  free(d);
}
