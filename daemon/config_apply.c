/*
 * config_apply.c - what happens to a configuration after it is read: the
 * environment and command-line overrides, and the translation into the
 * core's mb_ctx_opts, mb_device_opts and mb_model_opts (see config.h).
 *
 * Precedence, lowest first: built-in defaults, the file, the environment,
 * the flags. A bad override is reported and skipped; the value below it
 * stays.
 */
#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config_int.h"
#include "units.h"

/* Replaces the listen address; origin names the variable or flag. */
static int set_listen(mbd_config *cfg, const char *value, const char *origin, mbd_diag *diag,
                      int *bad) {
  mbd_listen l;
  char err[256], *s;
  int rc = mbd_listen_parse(value, &l, err, sizeof(err));

  if (rc == MB_ENOMEM)
    return rc;
  if (rc != 0) {
    *bad = 1;
    return mbd__diag_add(diag, "%s: %s", origin, err);
  }
  s = strdup(value);
  if (s == NULL) {
    mbd_listen_clear(&l);
    return MB_ENOMEM;
  }
  mbd_listen_clear(&cfg->listen);
  cfg->listen = l;
  free(cfg->listen_str);
  cfg->listen_str = s;
  return 0;
}

static int set_keep_alive(mbd_config *cfg, const char *value, const char *origin,
                          mbd_diag *diag, int *bad) {
  char err[256];
  int64_t ms;

  if (mbd_parse_duration_ms(value, MBD_DUR_FOREVER, &ms, err, sizeof(err)) != 0) {
    *bad = 1;
    return mbd__diag_add(diag, "%s: %s", origin, err);
  }
  cfg->defaults.keep_alive_ms = ms;
  return 0;
}

/* Replaces the node name; origin names the variable or flag. */
static int set_node(mbd_config *cfg, const char *value, const char *origin, mbd_diag *diag,
                    int *bad) {
  if (!mbd_node_name_valid(value)) {
    *bad = 1;
    return mbd__diag_add(diag, "%s: a node name is 1 to %d visible ASCII characters, without "
                         "'\"' or '\\'", origin, MBD_NODE_NAME_MAX);
  }
  char *s = strdup(value);
  if (s == NULL)
    return MB_ENOMEM;
  free(cfg->node);
  cfg->node = s;
  return 0;
}

int mbd_config_apply_overrides(mbd_config *cfg, const mbd_env *env, const mbd_flags *flags,
                               mbd_diag *diag) {
  const char *v;
  int bad = 0, rc = 0;

  if (cfg == NULL)
    return MB_EINVAL;

  /* The environment first ... */
  v = mbd_env_get(env, "MODELBUF_LISTEN");
  if (rc == 0 && v != NULL && *v != '\0')
    rc = set_listen(cfg, v, "MODELBUF_LISTEN", diag, &bad);
  v = mbd_env_get(env, "MODELBUF_API_KEY");
  if (rc == 0 && v != NULL)
    rc = mbd__config_add_api_key(cfg, v); /* empty: nothing added */
  v = mbd_env_get(env, "GPU_IDLE_TIMEOUT");
  if (rc == 0 && v != NULL && *v != '\0')
    rc = set_keep_alive(cfg, v, "GPU_IDLE_TIMEOUT", diag, &bad);
  v = mbd_env_get(env, "MODELBUF_NODE");
  if (rc == 0 && v != NULL && *v != '\0')
    rc = set_node(cfg, v, "MODELBUF_NODE", diag, &bad);

  /* ... then the flags, which win. */
  if (flags != NULL) {
    if (rc == 0 && flags->listen != NULL)
      rc = set_listen(cfg, flags->listen, "--listen", diag, &bad);
    if (rc == 0 && flags->log_level != NULL &&
        mbd_log_level_parse(flags->log_level, &cfg->log_level) != 0) {
      bad = 1;
      rc = mbd__diag_add(diag, "--log-level: unknown log level '%s' (debug, info, warn or error)",
                  flags->log_level);
    }
    if (rc == 0 && flags->keep_alive != NULL)
      rc = set_keep_alive(cfg, flags->keep_alive, "--keep-alive", diag, &bad);
    if (rc == 0 && flags->node != NULL)
      rc = set_node(cfg, flags->node, "--node", diag, &bad);
    for (size_t i = 0; rc == 0 && i < flags->n_api_keys; i++)
      rc = mbd__config_add_api_key(cfg, flags->api_keys[i]);
  }
  mbd__config_resolve(cfg);
  if (rc != 0)
    return rc;
  return bad ? MB_EINVAL : 0;
}

void mbd_config_ctx_opts(const mbd_config *cfg, mb_ctx_opts *out) {
  out->eviction = cfg->eviction;
  out->host_budget_bytes = cfg->host_memory_bytes;
  out->keep_alive_ms = cfg->defaults.keep_alive_ms;
}

int mbd_config_device_opts(const mbd_config *cfg, size_t i, mb_device_opts *out) {
  const mbd_device_config *d;

  if (cfg == NULL || out == NULL || !cfg->devices_set || i >= cfg->n_devices)
    return MB_EINVAL;
  d = &cfg->devices[i];
  mb_device_opts_init(out);
  out->kind = d->host ? MB_DEVICE_HOST : MB_DEVICE_CUDA;
  out->ordinal = d->host ? 0 : d->gpu;
  out->capacity_bytes = d->capacity_bytes;
  out->reserve_bytes = d->reserve_bytes;
  out->budget_bytes = d->budget_bytes;
  out->max_loaded = d->max_loaded;
  out->max_parallel_loads = d->max_parallel_loads;
  out->concurrency = d->concurrency;
  return 0;
}

int mbd_config_model_opts(const mbd_config *cfg, const mbd_model_config *m, mb_model_opts *out,
                          char *err, size_t err_len) {
  int device = MB_DEVICE_AUTO;

  if (cfg == NULL || m == NULL || out == NULL)
    return MB_EINVAL;
  if (m->device != MB_DEVICE_AUTO) {
    if (cfg->devices_set) {
      size_t i;
      for (i = 0; i < cfg->n_devices; i++)
        if (!cfg->devices[i].host && cfg->devices[i].gpu == m->device)
          break;
      if (i == cfg->n_devices) {
        if (err != NULL && err_len > 0)
          snprintf(err, err_len, "model '%s': device %d is not among the configured devices",
                   m->name, m->device);
        return MB_ENODEV;
      }
      device = (int)i;
    } else {
      device = m->device;
    }
  }
  mb_model_opts_init(out); /* every field set below; the size is the init's */
  out->keep_alive_ms = m->tuning.keep_alive_ms;
  out->offload = m->tuning.offload;
  out->host_keep_alive_ms = m->tuning.host_keep_alive_ms;
  out->footprint_bytes = m->vram_bytes;
  out->device = device;
  out->pinned = m->pinned;
  out->priority = m->priority;
  out->max_concurrency = m->tuning.max_concurrency;
  out->max_queue = m->tuning.max_queue;
  out->queue_timeout_ms = m->tuning.queue_timeout_ms;
  out->crash_limit = m->tuning.crash_limit;
  out->crash_window_ms = m->tuning.crash_window_ms;
  /* A worker's start is bounded by its start_timeout: the queue timeout
   * counts only the wait for a slot or for memory. */
  out->queue_timeout_excludes_load = m->backend == MBD_BACKEND_PROCESS;
  /* The tensor engine restores its host copy onto any GPU; a worker
   * process (its GPU fixed when it started) and a plugin go back. */
  out->restore_any_device = m->backend == MBD_BACKEND_TENSORS;
  return 0;
}
