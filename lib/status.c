/*
 * status.c - snapshots of models and devices for status, the daemon's API
 * and the CLI. Readers take core_lock briefly; nothing here decides.
 */
#include <stdio.h>
#include <string.h>

#include "modelbuf/modelbuf.h"
#include "alloc.h"
#include "core_int.h"

static void fill_status_locked_core(mb_ctx *ctx, const mb__model *m, mb_status *st) {
  uint64_t now = ctx->opts.clock(ctx->opts.clock_arg);
  memset(st, 0, sizeof(*st));
  snprintf(st->name, sizeof(st->name), "%s", m->name);
  snprintf(st->backend, sizeof(st->backend), "%s", m->be->name ? m->be->name : "");
  st->state = m->state;
  st->location = mb_state_location(m->state);
  st->device = m->device;
  if (m->state == MB_STATE_UNLOADED || m->state == MB_STATE_FAILED)
    st->device = -1;
  st->is_loaded = m->state == MB_STATE_READY;
  st->loaded_at = m->loaded_at;
  st->last_accessed = m->last_accessed;
  if (m->inflight == 0 && (m->state == MB_STATE_READY || m->state == MB_STATE_OFFLOADED) &&
      now > m->idle_since)
    st->idle_ns = now - m->idle_since;
  st->keep_alive_ms = m->ka_current;
  st->host_keep_alive_ms = m->opts.host_keep_alive_ms;
  st->timer_active = mb__timer_armed(&m->timer);
  st->expires_at = st->timer_active ? m->timer.deadline : 0;
  st->inflight = m->inflight;
  st->queued = m->nwait;
  st->vram_bytes = m->on_dev ? (m->usage.device_bytes ? m->usage.device_bytes : m->dev_charge) : 0;
  st->host_bytes = m->host_charge;
  st->footprint_bytes = mb__footprint(m);
  if (m->job.busy) {
    st->progress_done = __atomic_load_n(&m->job.progress_done, __ATOMIC_RELAXED);
    st->progress_total = __atomic_load_n(&m->job.progress_total, __ATOMIC_RELAXED);
  }
  st->pinned = m->opts.pinned;
  st->offload = m->opts.offload;
  snprintf(st->error, sizeof(st->error), "%s", m->error);
  st->warnings = m->warnings;
  snprintf(st->warning_text, sizeof(st->warning_text), "%s", m->warning_text);
  st->stats = m->stats;
  st->residency = m->residency;
  st->lost_at = m->lost_at;
  snprintf(st->lost_reason, sizeof(st->lost_reason), "%s", m->lost_reason);
}

int mb_model_status(mb_ctx *ctx, const char *name, mb_status *out) {
  if (ctx == NULL || name == NULL || out == NULL)
    return MB_EINVAL;
  pthread_mutex_lock(&ctx->core_lock);
  const mb__model *m = mb__model_find_locked_core(ctx, name);
  if (m == NULL || m->removing) {
    pthread_mutex_unlock(&ctx->core_lock);
    return MB_ENOENT;
  }
  fill_status_locked_core(ctx, m, out);
  pthread_mutex_unlock(&ctx->core_lock);
  return 0;
}

int mb_model_count(mb_ctx *ctx) {
  pthread_mutex_lock(&ctx->core_lock);
  int n = ctx->nmodels;
  pthread_mutex_unlock(&ctx->core_lock);
  return n;
}

int mb_model_name(mb_ctx *ctx, int index, char *buf, size_t len) {
  int rc = MB_ENOENT;
  pthread_mutex_lock(&ctx->core_lock);
  if (index >= 0 && index < ctx->nmodels && buf != NULL && len > 0) {
    snprintf(buf, len, "%s", ctx->models[index]->name);
    rc = 0;
  }
  pthread_mutex_unlock(&ctx->core_lock);
  return rc;
}

int mb_device_info_get(mb_ctx *ctx, int index, mb_device_info *out) {
  if (ctx == NULL || out == NULL)
    return MB_EINVAL;
  pthread_mutex_lock(&ctx->core_lock);
  if (index < 0 || index >= ctx->ndev) {
    pthread_mutex_unlock(&ctx->core_lock);
    return MB_ENODEV;
  }
  const mb__device *d = &ctx->devs[index];
  memset(out, 0, sizeof(*out));
  out->index = index;
  out->kind = d->opts.kind;
  out->ordinal = d->opts.ordinal;
  snprintf(out->name, sizeof(out->name), "%s", d->name);
  out->capacity_bytes = d->capacity;
  out->reserve_bytes = d->opts.reserve_bytes;
  out->budget_bytes = d->opts.budget_bytes;
  out->usable_bytes = d->usable;
  out->used_bytes = d->used;
  out->free_bytes = d->used < d->usable ? d->usable - d->used : 0;
  out->resident = d->resident;
  out->loads_in_flight = d->loads;
  out->leases = d->leases;
  pthread_mutex_unlock(&ctx->core_lock);
  return 0;
}

void mb_host_tier(mb_ctx *ctx, uint64_t *budget_bytes, uint64_t *used_bytes) {
  pthread_mutex_lock(&ctx->core_lock);
  if (budget_bytes)
    *budget_bytes = ctx->host_budget;
  if (used_bytes)
    *used_bytes = ctx->host_used;
  pthread_mutex_unlock(&ctx->core_lock);
}
