/*
 * fit.c - the advice of a 503 cannot_fit (fit.h): why the model does not
 * fit on this node and when room is expected, from the core's status of
 * every model and device at the time of the answer.
 *
 * What frees room on a device, as the core would use it: an idle model
 * that is not pinned can be evicted now; one leaving (offloading,
 * unloading) frees its memory shortly; a pinned idle model frees it when
 * its keep-alive expires; a model in use, loading, or kept forever frees
 * nothing anyone can foresee. In the host tier, an offloaded model frees
 * its copy when its host_keep_alive expires. Retry-After is the time until
 * enough has come free on the best device, else limits.retry_after.
 *
 * Loop threads only (it answers requests); it reads the core through its
 * thread-safe status calls and keeps no state.
 */
#include "fit.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon.h"
#include "front.h"

static int item_cmp(const void *a, const void *b) {
  const mbd_fit_item *x = a, *y = b;
  return x->in_ms < y->in_ms ? -1 : x->in_ms > y->in_ms;
}

int64_t mbd_fit_wait_ms(uint64_t free_bytes, uint64_t need_bytes, mbd_fit_item *items,
                        size_t n) {
  if (free_bytes >= need_bytes)
    return 0;
  if (n > 1)
    qsort(items, n, sizeof(*items), item_cmp);
  uint64_t have = free_bytes;
  for (size_t i = 0; i < n; i++) {
    have += items[i].bytes < UINT64_MAX - have ? items[i].bytes : UINT64_MAX - have;
    if (have >= need_bytes)
      return items[i].in_ms > 0 ? items[i].in_ms : 0;
  }
  return -1;
}

/* Milliseconds from now (clock ns) to at, at least 0. */
static int64_t ms_until(uint64_t now, uint64_t at) {
  return at > now ? (int64_t)((at - now + 999999) / 1000000) : 0;
}

/* What frees room on device dev, per model (the one asking left out). */
static size_t device_items(mbd *d, const mbd_models *ms, const mbd_model *self, int dev,
                           uint64_t now, mbd_fit_item *items) {
  size_t n = 0;
  for (size_t i = 0; i < ms->n; i++) {
    mb_status st;
    if (ms->m[i] == self || mb_model_status(d->ctx, ms->m[i]->name, &st) != 0 ||
        st.device != dev)
      continue;
    uint64_t bytes = st.footprint_bytes > st.vram_bytes ? st.footprint_bytes : st.vram_bytes;
    int64_t in_ms;
    if (st.state == MB_STATE_OFFLOADING || st.state == MB_STATE_UNLOADING)
      in_ms = 0; /* leaving now */
    else if (st.state != MB_STATE_READY || st.inflight > 0)
      continue; /* in use or loading: nothing to foresee */
    else if (!st.pinned)
      in_ms = 0; /* evictable now */
    else if (st.timer_active && st.expires_at > 0)
      in_ms = ms_until(now, st.expires_at);
    else
      continue; /* pinned and kept forever */
    items[n].bytes = bytes;
    items[n].in_ms = in_ms;
    n++;
  }
  return n;
}

/* What frees room in the host tier: offloaded models whose host keep-alive runs. */
static size_t host_items(mbd *d, const mbd_models *ms, const mbd_model *self, uint64_t now,
                         mbd_fit_item *items) {
  size_t n = 0;
  for (size_t i = 0; i < ms->n; i++) {
    mb_status st;
    if (ms->m[i] == self || mb_model_status(d->ctx, ms->m[i]->name, &st) != 0 ||
        st.state != MB_STATE_OFFLOADED || st.inflight > 0 || st.host_bytes == 0)
      continue;
    if (!st.timer_active || st.expires_at == 0)
      continue;
    items[n].bytes = st.host_bytes;
    items[n].in_ms = ms_until(now, st.expires_at);
    n++;
  }
  return n;
}

static int seconds_up(int64_t ms) {
  int64_t s = (ms + 999) / 1000;
  if (s < 1)
    s = 1;
  if (s > 86400)
    s = 86400;
  return (int)s;
}

void mbd_fit_advise(mbd *d, mbd_model *m, int host_tier, mbd_fit *out) {
  const mbd_models *ms = mbd_models_get(d);
  uint64_t now = mb_ctx_now(d->ctx);
  mb_status st;
  memset(out, 0, sizeof(*out));
  out->retry_after_s = seconds_up(d->cfg->retry_after_ms);
  if (mb_model_status(d->ctx, m->name, &st) != 0)
    memset(&st, 0, sizeof(st));
  out->need_bytes = st.footprint_bytes > st.vram_bytes ? st.footprint_bytes : st.vram_bytes;
  mbd_fit_item *items = calloc(ms->n ? ms->n : 1, sizeof(*items));
  if (host_tier) {
    uint64_t budget = 0, used = 0;
    mb_host_tier(d->ctx, &budget, &used);
    out->reason = "host_tier_full";
    out->usable_bytes = budget;
    if (items != NULL && out->need_bytes <= budget) {
      size_t n = host_items(d, ms, m, now, items);
      int64_t w = mbd_fit_wait_ms(budget - (used < budget ? used : budget), out->need_bytes,
                                  items, n);
      if (w >= 0)
        out->retry_after_s = seconds_up(w);
    }
    free(items);
    return;
  }
  /* The devices the model may go on: its own, or every one (device: auto). */
  int only = MB_DEVICE_AUTO;
  mb_model_opts mo;
  if (mbd_config_model_opts(d->cfg, m->mc, &mo, NULL, 0) == 0)
    only = mo.device;
  int nd = mb_device_count(d->ctx), fits_somewhere = 0;
  int64_t best = -1;
  for (int dev = 0; dev < nd; dev++) {
    mb_device_info di;
    if ((only != MB_DEVICE_AUTO && dev != only) || mb_device_info_get(d->ctx, dev, &di) != 0)
      continue;
    if (di.usable_bytes > out->usable_bytes)
      out->usable_bytes = di.usable_bytes;
    if (out->need_bytes > di.usable_bytes)
      continue;
    fits_somewhere = 1;
    if (items == NULL)
      continue;
    size_t n = device_items(d, ms, m, dev, now, items);
    int64_t w = mbd_fit_wait_ms(di.free_bytes, out->need_bytes, items, n);
    if (w >= 0 && (best < 0 || w < best))
      best = w;
  }
  free(items);
  if (!fits_somewhere) {
    out->reason = "too_large";
  } else if (best >= 0) {
    out->reason = "keep_alive";
    out->retry_after_s = seconds_up(best);
  } else {
    out->reason = "busy";
  }
}

int mbd_reply_lib_error(mbd_req *r, mbd_model *m, int rc, const char *msg, int host_tier) {
  const char *code;
  int status = mbd_http_status(rc, &code);
  const char *text = msg && msg[0] ? msg : mb_strerror(rc);
  mbd_count_code(r->d, m, status);
  if (rc != MB_ENOSPC || m == NULL) {
    mbd_reply_error(r, status, code, text, status == 503 ? 1 : 0);
    return status;
  }
  mbd_fit fit;
  mbd_fit_advise(r->d, m, host_tier, &fit);
  /* The message may quote a name: printable ASCII only, as every error. */
  char clean[512];
  size_t k = 0;
  for (const char *p = text; *p && k + 1 < sizeof(clean); p++)
    clean[k++] = (unsigned char)*p >= 0x20 && (unsigned char)*p < 0x7f ? *p : '?';
  clean[k] = '\0';
  json_t *doc = json_pack("{s:{s:s,s:s,s:s,s:s,s:i,s:I,s:I}}", "error", "code", code, "message",
                          clean, "reason", fit.reason, "node", r->d->node, "retry_after_s",
                          fit.retry_after_s, "need_bytes", (json_int_t)fit.need_bytes,
                          "usable_bytes", (json_int_t)fit.usable_bytes);
  char *s = doc ? json_dumps(doc, MBD_JSON_FLAGS) : NULL;
  json_decref(doc);
  if (s == NULL) {
    mbd_reply_error(r, status, code, clean, fit.retry_after_s);
    return status;
  }
  char v[16];
  snprintf(v, sizeof(v), "%d", fit.retry_after_s);
  mbd_resp_start(r, status);
  mbd_resp_header(r, "Retry-After", v);
  mbd_resp_header(r, "X-Modelbuf-Reason", fit.reason);
  mbd_resp_body(r, "application/json", s, strlen(s));
  free(s);
  return status;
}
