/*
 * api.c - modelbufd's management routes (DESIGN §5): health, model status,
 * load/offload/unload/keep-alive, leases over HTTP, devices, cleanup, logs,
 * the event stream, Prometheus metrics, the request trace, and the routes
 * of the common Python GPU-manager APIs.
 *
 * Handlers run on a loop thread of the front door and never block it: the
 * core's operations are asked for with its async calls and answered when
 * their done is posted back (op), and what must block (a worker's cleanup
 * hook, several models offloaded in a row) runs on the task pool. Every
 * value a client sends is range-checked (400 naming the field).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "daemon.h"
#include "expand.h"
#include "fit.h"
#include "front.h"
#include "front_int.h"
#include "leases.h"
#include "proxy.h"
#include "tasks.h"
#include "tensors.h"
#include "units.h"
#include "api.h"
#include "compat.h"

/* The TTL of a lease taken over HTTP without one. */
#define DEFAULT_LEASE_TTL_MS 60000

/* ------------------------------------------------------------------------ */
/* Status documents                                                          */

json_t *mbd_time_json(mbd *d, uint64_t clock_ns) {
  if (clock_ns == 0)
    return json_null();
  int64_t ms = mb_ctx_wall_ms(d->ctx, clock_ns);
  time_t s = (time_t)(ms / 1000);
  struct tm tm;
  gmtime_r(&s, &tm);
  char buf[40];
  snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
           tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ms % 1000));
  return json_string(buf);
}

static json_t *device_name(mbd *d, int dev) {
  mb_device_info di;
  if (dev < 0 || mb_device_info_get(d->ctx, dev, &di) != 0)
    return json_null();
  return json_string(di.name);
}

/* The weight files of m: a tensors model's as last opened; else its
 * files: entries expanded now (folders, indexes, patterns), or as written
 * when they cannot be. */
static json_t *files_json(mbd *d, mbd_model *m) {
  json_t *files = NULL;
  if (m->tensors != NULL)
    files = mbd_tensors_files(m->tensors);
  if (files != NULL)
    return files;
  files = json_array();
  char **paths = NULL, err[256];
  size_t n = 0;
  if (m->mc->n_files > 0 &&
      mbd_files_expand(m->mc->files, m->mc->n_files, m->name, &paths, &n, err, sizeof(err)) == 0) {
    for (size_t i = 0; i < n; i++)
      json_array_append_new(files, json_string(paths[i]));
    mb_tensors_paths_free(paths, n);
  } else {
    for (size_t i = 0; i < m->mc->n_files; i++)
      json_array_append_new(files, json_string(m->mc->files[i]));
  }
  return files;
}

static json_t *secs_or_forever(int64_t ms) {
  return ms == MB_FOREVER ? json_integer(-1) : json_real((double)ms / 1000.0);
}

json_t *mbd_model_json(mbd *d, mbd_model *m) {
  mb_status st;
  if (mb_model_status(d->ctx, m->name, &st) != 0)
    return NULL;
  json_t *warn = json_array();
  if (st.warnings & MB_WARN_SLOW_LOAD)
    json_array_append_new(warn, json_string("slow_load"));
  if (st.warnings & MB_WARN_MEMORY_GROWTH)
    json_array_append_new(warn, json_string("memory_growth"));
  /* A worker's own figures: its footprint as last measured, against what it
   * declared (worker.h). */
  uint64_t measured = 0, declared = 0;
  int overrun = 0;
  int worker = m->worker != NULL;
  if (worker)
    mbd_worker_footprint(m->worker, &measured, &declared, &overrun);
  if (overrun)
    json_array_append_new(warn, json_string("footprint_overrun"));
  json_t *buckets = json_object();
  uint64_t cum = 0;
  for (int i = 0; i < MB_WAIT_BUCKETS; i++) {
    char k[32];
    if (i < MB_WAIT_BUCKETS - 1)
      snprintf(k, sizeof(k), "%g", mb_wait_bucket_ms[i]);
    else
      snprintf(k, sizeof(k), "+Inf");
    cum += st.stats.wait_buckets[i];
    json_object_set_new(buckets, k, json_integer((json_int_t)cum));
  }
  json_t *stats = json_pack(
      "{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:f,s:f,s:f,s:f,s:o}", "loads",
      (json_int_t)st.stats.loads, "load_failures", (json_int_t)st.stats.load_failures, "unloads",
      (json_int_t)st.stats.unloads, "offloads", (json_int_t)st.stats.offloads, "restores",
      (json_int_t)st.stats.restores, "full_releases", (json_int_t)st.stats.full_releases,
      "evictions", (json_int_t)st.stats.evictions, "requests", (json_int_t)st.stats.requests,
      "rejected", (json_int_t)st.stats.rejected, "timeouts", (json_int_t)st.stats.timeouts,
      "last_load_ms", st.stats.last_load_ms, "avg_load_ms", st.stats.avg_load_ms,
      "last_restore_ms", st.stats.last_restore_ms, "last_offload_ms", st.stats.last_offload_ms,
      "queue_wait_ms_buckets", buckets);
  json_object_set_new(stats, "crashes", json_integer((json_int_t)st.stats.crashes));
  pid_t pid = m->worker ? mbd_worker_pid(m->worker) : 0;
  json_t *aliases = json_array();
  for (size_t i = 0; i < m->mc->n_aliases; i++)
    json_array_append_new(aliases, json_string(m->mc->aliases[i]));
  json_t *o = json_object();
  json_object_set_new(o, "name", json_string(m->name));
  json_object_set_new(o, "node", json_string(d->node));
  json_object_set_new(o, "backend", json_string(st.backend));
  json_object_set_new(o, "state", json_string(mb_state_name(st.state)));
  json_object_set_new(o, "location", json_string(mb_location_name(st.location)));
  json_object_set_new(o, "device", device_name(d, st.device));
  json_object_set_new(o, "is_loaded", json_boolean(st.is_loaded));
  json_object_set_new(o, "loaded_at", mbd_time_json(d, st.loaded_at));
  json_object_set_new(o, "last_accessed", mbd_time_json(d, st.last_accessed));
  json_object_set_new(o, "idle_s", json_real((double)st.idle_ns / 1e9));
  json_object_set_new(o, "keep_alive_s", secs_or_forever(st.keep_alive_ms));
  /* The same under the name of the Python ModelBuffer class's field. */
  json_object_set_new(o, "timeout_seconds", secs_or_forever(st.keep_alive_ms));
  json_object_set_new(o, "expires_at", mbd_time_json(d, st.expires_at));
  json_object_set_new(o, "timer_active", json_boolean(st.timer_active));
  json_object_set_new(o, "inflight", json_integer(st.inflight));
  json_object_set_new(o, "queued", json_integer(st.queued));
  json_object_set_new(o, "vram_bytes", json_integer((json_int_t)st.vram_bytes));
  json_object_set_new(o, "host_bytes", json_integer((json_int_t)st.host_bytes));
  json_object_set_new(o, "footprint_bytes", json_integer((json_int_t)st.footprint_bytes));
  json_object_set_new(o, "pid", pid > 0 ? json_integer(pid) : json_null());
  json_object_set_new(o, "error", st.error[0] ? json_string(st.error) : json_null());
  json_object_set_new(o, "warnings", warn);
  if (worker) {
    json_object_set_new(o, "measured_bytes", json_integer((json_int_t)measured));
    json_object_set_new(o, "declared_bytes", json_integer((json_int_t)declared));
  }
  json_object_set_new(o, "last_crash",
                      st.lost_at ? json_pack("{s:o,s:s}", "time", mbd_time_json(d, st.lost_at),
                                             "reason", st.lost_reason)
                                 : json_null());
  json_object_set_new(o, "pinned", json_boolean(st.pinned));
  json_object_set_new(o, "aliases", aliases);
  json_object_set_new(o, "files", files_json(d, m));
  if (st.state == MB_STATE_LOADING || st.state == MB_STATE_RESTORING)
    json_object_set_new(o, "progress",
                        json_pack("{s:I,s:I}", "done_bytes", (json_int_t)st.progress_done,
                                  "total_bytes", (json_int_t)st.progress_total));
  json_object_set_new(o, "stats", stats);
  return o;
}

json_t *mbd_devices_json(mbd *d) {
  const mbd_models *ms = mbd_models_get(d);
  json_t *a = json_array();
  int n = mb_device_count(d->ctx);
  for (int i = 0; i < n; i++) {
    mb_device_info di;
    if (mb_device_info_get(d->ctx, i, &di) != 0)
      continue;
    json_t *resident = json_array();
    for (size_t k = 0; k < ms->n; k++) {
      mb_status st;
      if (mb_model_status(d->ctx, ms->m[k]->name, &st) == 0 && st.device == i &&
          st.vram_bytes > 0)
        json_array_append_new(resident, json_string(ms->m[k]->name));
    }
    json_array_append_new(
        a, json_pack("{s:s,s:i,s:I,s:I,s:I,s:I,s:I,s:I,s:i,s:i,s:o}", "name", di.name, "index",
                     di.index, "capacity_bytes", (json_int_t)di.capacity_bytes, "reserve_bytes",
                     (json_int_t)di.reserve_bytes, "budget_bytes", (json_int_t)di.budget_bytes,
                     "usable_bytes", (json_int_t)di.usable_bytes, "used_bytes",
                     (json_int_t)di.used_bytes, "free_bytes", (json_int_t)di.free_bytes,
                     "loads_in_flight", di.loads_in_flight, "leases", di.leases, "models",
                     resident));
  }
  return a;
}

/* ------------------------------------------------------------------------ */
/* Helpers                                                                   */

/* The body as a JSON object; an empty body is {}. NULL with a message. */
json_t *mbd_api_body(mbd_req *r, char *err, size_t len) {
  const char *b;
  size_t n;
  if (mbd_req_body(r, &b, &n) != 0) {
    snprintf(err, len, "cannot read the request body");
    return NULL;
  }
  if (n == 0)
    return json_object();
  json_error_t je;
  json_t *doc = json_loadb(b, n, JSON_REJECT_DUPLICATES, &je);
  if (doc == NULL) {
    snprintf(err, len, "malformed JSON: %s (line %d, column %d)", je.text, je.line, je.column);
    return NULL;
  }
  if (!json_is_object(doc)) {
    json_decref(doc);
    snprintf(err, len, "the body must be a JSON object");
    return NULL;
  }
  return doc;
}

/* Refuses fields a route does not know (a misspelt key must not act on
 * something else). 0, or -1 with the message. */
int mbd_api_fields(json_t *body, const char *const *names, char *err, size_t len) {
  const char *k;
  json_t *v;
  json_object_foreach(body, k, v) {
    int ok = 0;
    for (const char *const *n = names; *n; n++)
      ok |= strcmp(*n, k) == 0;
    if (!ok) {
      char list[200] = "";
      for (const char *const *n = names; *n; n++)
        snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s%s",
                 n == names ? "" : ", ", *n);
      snprintf(err, len, "unknown field '%.60s' (this route takes: %s)", k, list);
      return -1;
    }
  }
  return 0;
}

/* A duration field: "10m", seconds (a number), -1 / "forever" where
 * allowed. */
static int duration_of(const char *name, json_t *v, unsigned flags, int64_t *ms, char *err,
                       size_t len) {
  if (json_is_integer(v) || json_is_real(v))
    return mbd_client_seconds_ms(name, json_number_value(v), flags, ms, err, len);
  if (json_is_string(v))
    return mbd_client_duration_ms(name, json_string_value(v), flags, ms, err, len);
  snprintf(err, len, "%s must be a duration (\"10m\") or a number of seconds", name);
  return MB_EINVAL;
}

/* host_tier: the request was an offload (a 503 cannot_fit is the host tier's). */
static void lib_error(mbd_req *r, mbd_model *m, int rc, const char *msg, int host_tier) {
  (void)mbd_reply_lib_error(r, m, rc, msg, host_tier);
}

/*
 * One model's status, with what the list leaves out because it costs a walk
 * of /proc per model: rss_bytes, the resident memory of the worker's
 * process group measured now (vram_bytes and host_bytes are measured when
 * a load, offload or restore completes).
 */
static void model_status(mbd_req *r, mbd_model *m, int status) {
  json_t *o = mbd_model_json(r->d, m);
  if (o == NULL) {
    mbd_reply_error(r, 404, "not_found", "unknown model", 0);
    return;
  }
  pid_t pid = m->worker ? mbd_worker_pid(m->worker) : 0;
  uint64_t rss = pid > 0 ? mbd_worker_rss(m->worker) : 0;
  json_object_set_new(o, "rss_bytes", pid > 0 ? json_integer((json_int_t)rss) : json_null());
  mbd_reply_json(r, status, o);
}

/* ------------------------------------------------------------------------ */
/* The core's operations, answered on the loop                               */

/*
 * An operation asked of the core for a request (load, offload, unload,
 * keep-alive, acquire). The core answers on its thread; the answer is
 * posted to the request's loop. If the client left meanwhile, op frees
 * itself there (an acquire's lease granted anyway is released).
 */
typedef struct op {
  mbd_post post;
  mbd *d;
  mbd_req *r;          /* NULL once the client left */
  mbd_loop *loop;
  mbd_model *m;
  int kind;            /* OP_* */
  uint64_t req_id;     /* acquire: for mb_cancel */
  int64_t ttl_ms;      /* acquire */
  mb_result res;
  char msg[256];
} op;

enum { OP_LOAD, OP_OFFLOAD, OP_UNLOAD, OP_KEEPALIVE, OP_ACQUIRE };

static void op_gone(mbd_req *r) {
  op *o = r->ctx;
  o->r = NULL;
  if (o->kind == OP_ACQUIRE && mb_cancel(o->d->ctx, o->req_id) != 0) {
    /* answered already: the post frees o */
  }
}

static void op_answer(mbd_post *p) {
  op *o = (op *)p;
  mbd *d = o->d;
  mbd_req *r = o->r;
  if (r == NULL) {
    if (o->kind == OP_ACQUIRE && o->res.rc == 0 && mb_release(d->ctx, o->res.lease) != 0) {
      /* expired already */
    }
    free(o);
    return;
  }
  r->ctx = NULL;
  r->on_gone = NULL;
  if (o->res.rc != 0) {
    lib_error(r, o->m, o->res.rc, o->msg, o->kind == OP_OFFLOAD);
    free(o);
    return;
  }
  if (o->kind != OP_ACQUIRE) {
    mbd_count_code(d, o->m, 200);
    model_status(r, o->m, 200);
    free(o);
    return;
  }
  char token[MBD_LEASE_TOKEN_LEN + 1];
  int rc = mbd_leases_add(d->leases, o->res.lease, o->m->name, o->ttl_ms, mbd_now_ms(), token);
  if (rc != 0) {
    if (mb_release(d->ctx, o->res.lease) != 0) {
      /* expired already */
    }
    mbd_reply_error(r, 500, "internal", mb_strerror(rc), 0);
    free(o);
    return;
  }
  char url[128] = "";
  mbd_model *cur = mbd_current(d, o->m); /* the lease keeps it from a reload */
  if (cur != NULL && cur->worker && mbd_worker_url(cur->worker, url, sizeof(url)) != 0)
    url[0] = '\0';
  json_t *doc = json_pack("{s:s,s:s,s:s,s:o,s:f}", "lease", token, "model", o->m->name, "url", url,
                          "expires_at",
                          mbd_time_json(d, mb_ctx_now(d->ctx) + (uint64_t)o->ttl_ms * 1000000u),
                          "ttl_s", (double)o->ttl_ms / 1000.0);
  mbd_count_code(d, o->m, 200);
  mbd_reply_json(r, 200, doc);
  free(o);
}

static void op_done(const mb_result *res, void *arg) {
  op *o = arg;
  o->res = *res;
  snprintf(o->msg, sizeof(o->msg), "%s", res->message ? res->message : "");
  o->res.message = o->msg;
  o->post.fn = op_answer;
  mbd_loop_post(o->loop, &o->post);
}

static op *op_new(mbd_req *r, mbd_model *m, int kind) {
  op *o = calloc(1, sizeof(*o));
  if (o == NULL) {
    mbd_reply_error(r, 500, "internal", "out of memory", 0);
    return NULL;
  }
  o->d = r->d;
  o->r = r;
  o->loop = mbd_req_loop(r);
  o->m = m;
  o->kind = kind;
  r->ctx = o;
  r->on_gone = op_gone;
  return o;
}

/* Asked or failed to ask: on failure the request is answered and o freed. */
static void op_asked(mbd_req *r, op *o, int rc) {
  if (rc == 0)
    return;
  r->ctx = NULL;
  r->on_gone = NULL;
  lib_error(r, o->m, rc, NULL, o->kind == OP_OFFLOAD);
  free(o);
}

static void ignore_done(const mb_result *res, void *arg) {
  (void)res;
  (void)arg;
}

/* ------------------------------------------------------------------------ */
/* /api/models/{name}/...                                                    */

static const char *const no_fields[] = {NULL};
static const char *const load_fields[] = {"keep_alive", "wait", NULL};
static const char *const ka_fields[] = {"keep_alive", NULL};
static const char *const acquire_fields[] = {"ttl", "priority", "timeout", "keep_alive", NULL};

static void model_action(mbd_req *r) {
  mbd *d = r->d;
  mbd_model *m = r->route.m;
  const char *action = r->route.arg;
  char err[512] = "";
  json_t *body = mbd_api_body(r, err, sizeof(err));
  if (body == NULL) {
    mbd_reply_error(r, 400, "bad_request", err, 0);
    return;
  }
  const char *const *fields = strcmp(action, "load") == 0         ? load_fields
                              : strcmp(action, "keep-alive") == 0 ? ka_fields
                              : strcmp(action, "acquire") == 0    ? acquire_fields
                                                                  : no_fields;
  if (mbd_api_fields(body, fields, err, sizeof(err)) != 0) {
    json_decref(body);
    mbd_reply_error(r, 400, "bad_request", err, 0);
    return;
  }
  json_t *v;
  op *o;
  if (strcmp(action, "load") == 0) {
    int64_t ka = MB_DEFAULT;
    if ((v = json_object_get(body, "keep_alive")) &&
        duration_of("keep_alive", v, MBD_CD_ZERO | MBD_CD_FOREVER, &ka, err, sizeof(err)) != 0)
      goto bad;
    json_t *wait = json_object_get(body, "wait");
    if (wait && !json_is_boolean(wait)) {
      snprintf(err, sizeof(err), "wait must be true or false");
      goto bad;
    }
    json_decref(body);
    if (wait && json_is_false(wait)) {
      int rc = mb_load_async(d->ctx, m->name, ka, ignore_done, NULL);
      if (rc != 0)
        lib_error(r, m, rc, NULL, 0);
      else
        model_status(r, m, 202);
      return;
    }
    if ((o = op_new(r, m, OP_LOAD)) != NULL)
      op_asked(r, o, mb_load_async(d->ctx, m->name, ka, op_done, o));
    return;
  }
  if (strcmp(action, "offload") == 0 || strcmp(action, "unload") == 0) {
    int off = action[0] == 'o';
    json_decref(body);
    if ((o = op_new(r, m, off ? OP_OFFLOAD : OP_UNLOAD)) != NULL)
      op_asked(r, o, off ? mb_offload_async(d->ctx, m->name, op_done, o)
                         : mb_unload_async(d->ctx, m->name, op_done, o));
    return;
  }
  if (strcmp(action, "keep-alive") == 0) {
    int64_t ka;
    v = json_object_get(body, "keep_alive");
    if (v == NULL) {
      snprintf(err, sizeof(err), "missing keep_alive (\"10m\", seconds, 0 or -1)");
      goto bad;
    }
    if (duration_of("keep_alive", v, MBD_CD_ZERO | MBD_CD_FOREVER, &ka, err, sizeof(err)) != 0)
      goto bad;
    json_decref(body);
    if ((o = op_new(r, m, OP_KEEPALIVE)) != NULL)
      op_asked(r, o, mb_keep_alive_async(d->ctx, m->name, ka, op_done, o));
    return;
  }
  /* acquire */
  mb_acquire_opts ao;
  mb_acquire_opts_init(&ao);
  int64_t ttl = DEFAULT_LEASE_TTL_MS;
  if ((v = json_object_get(body, "ttl")) &&
      duration_of("ttl", v, 0, &ttl, err, sizeof(err)) != 0)
    goto bad;
  if ((v = json_object_get(body, "priority")) != NULL) {
    if (!json_is_integer(v) || json_integer_value(v) < MBD_PRIORITY_MIN ||
        json_integer_value(v) > MBD_PRIORITY_MAX) {
      snprintf(err, sizeof(err), "priority must be an integer from %d to %d", MBD_PRIORITY_MIN,
               MBD_PRIORITY_MAX);
      goto bad;
    }
    ao.priority = (int)json_integer_value(v);
  }
  if ((v = json_object_get(body, "timeout")) &&
      duration_of("timeout", v, MBD_CD_FOREVER, &ao.timeout_ms, err, sizeof(err)) != 0)
    goto bad;
  if ((v = json_object_get(body, "keep_alive")) &&
      duration_of("keep_alive", v, MBD_CD_ZERO | MBD_CD_FOREVER, &ao.keep_alive_ms, err,
                  sizeof(err)) != 0)
    goto bad;
  json_decref(body);
  ao.ttl_ms = ttl;
  if ((o = op_new(r, m, OP_ACQUIRE)) != NULL) {
    o->ttl_ms = ttl;
    op_asked(r, o, mb_acquire_async(d->ctx, m->name, &ao, op_done, o, &o->req_id));
  }
  return;
bad:
  json_decref(body);
  mbd_reply_error(r, 400, "bad_request", err, 0);
}

static void model_get(mbd_req *r) { model_status(r, r->route.m, 200); }

/* GET /api/models/{name}/logs?follow=1: the worker's log as server-sent
 * events, one per line: "id: SEQ\ndata: LINE\n\n", the marker of a new
 * process as "event: restart"; resumes after Last-Event-ID or ?since=SEQ,
 * else starts with the last ?tail=N lines (default 10). Woken by every new
 * line of any worker (mbd_front_wake_streams). */
static void sse_start(mbd_req *r, void *ctx, void (*fill)(mbd_req *r));

typedef struct follow {
  mbd_model *m;
  uint64_t next; /* the number of the next line to send */
} follow;

#define FOLLOW_CHUNK (64 * 1024)

static void follow_fill(mbd_req *r) {
  follow *f = r->ctx;
  char *lines = malloc(FOLLOW_CHUNK);
  if (lines == NULL)
    return;
  while (f->m->worker && mbd_resp_pending(r) < 64 * 1024) {
    size_t n = mbd_worker_logs_since(f->m->worker, f->next, lines, FOLLOW_CHUNK, &f->next);
    if (n == 0)
      break;
    /* "SEQ KIND TEXT\n" each: one event per line. */
    for (char *p = lines; p < lines + n;) {
      char *nl = memchr(p, '\n', (size_t)(lines + n - p));
      if (nl == NULL)
        break;
      char *sp = memchr(p, ' ', (size_t)(nl - p));
      if (sp == NULL || sp + 2 >= nl)
        break;
      int restart = sp[1] == 'r';
      size_t len = (size_t)(nl - p) + 48;
      char *ev = malloc(len);
      if (ev != NULL) { /* one line, one write (one chunk) */
        int k = snprintf(ev, len, "%s%.*s\ndata: %.*s\n\n", restart ? "event: restart\nid: " : "id: ",
                         (int)(sp - p), p, (int)(nl - sp - 3), sp + 3);
        mbd_resp_write(r, ev, (size_t)k);
        free(ev);
      }
      p = nl + 1;
    }
  }
  free(lines);
}

static void logs_follow(mbd_req *r, mbd_model *m) {
  char last[32], since[32], tail[32];
  int hl = mbd_req_header(r, "Last-Event-ID", last, sizeof(last));
  int hs = mbd_req_query(r, "since", since, sizeof(since));
  int ht = mbd_req_query(r, "tail", tail, sizeof(tail));
  const char *from = hl ? last : hs > 0 ? since : NULL;
  char *end = NULL;
  unsigned long long after = 0, want = 10;
  if (hs < 0 || (from && (from[0] < '0' || from[0] > '9' ||
                          ((after = strtoull(from, &end, 10)), *end != '\0')))) {
    mbd_reply_error(r, 400, "bad_request", "since / Last-Event-ID must be a line number", 0);
    return;
  }
  if (ht < 0 || (ht > 0 && (tail[0] < '0' || tail[0] > '9' ||
                            ((want = strtoull(tail, &end, 10)), *end != '\0') || want > 100000))) {
    mbd_reply_error(r, 400, "bad_request", "tail must be a number of lines (0..100000)", 0);
    return;
  }
  follow *f = calloc(1, sizeof(*f));
  if (f == NULL) {
    mbd_reply_error(r, 500, "internal", "out of memory", 0);
    return;
  }
  f->m = m;
  if (from) {
    f->next = after < UINT64_MAX ? after + 1 : after;
  } else {
    uint64_t next = 1;
    char one[1];
    if (m->worker) /* asks past the end: learns the next number */
      (void)mbd_worker_logs_since(m->worker, UINT64_MAX, one, sizeof(one), &next);
    f->next = next > want ? next - want : 1;
  }
  sse_start(r, f, follow_fill);
}

static void logs(mbd_req *r) {
  mbd_model *m = r->route.m;
  char fl[16];
  if (mbd_req_query(r, "follow", fl, sizeof(fl)) != 0 && strcmp(fl, "0") != 0 &&
      strcmp(fl, "false") != 0) {
    logs_follow(r, m);
    return;
  }
  char tail[32];
  long want = -1;
  int q = mbd_req_query(r, "tail", tail, sizeof(tail));
  if (q != 0) {
    char *end;
    want = q > 0 ? strtol(tail, &end, 10) : -1;
    if (q < 0 || end == tail || *end || want < 0 || want > 1000000) {
      mbd_reply_error(r, 400, "bad_request", "tail must be a number of lines (0 to 1000000)", 0);
      return;
    }
  }
  size_t cap = 256 * 1024, n = 0;
  char *buf = malloc(cap);
  if (buf == NULL) {
    mbd_reply_error(r, 500, "internal", "out of memory", 0);
    return;
  }
  if (m->worker != NULL)
    n = mbd_worker_logs(m->worker, buf, cap);
  char *start = buf;
  if (want >= 0) { /* the last `want` lines */
    size_t i = n;
    long lines = 0;
    if (i > 0 && buf[i - 1] == '\n')
      i--;
    while (i > 0 && (buf[i - 1] != '\n' || ++lines < want))
      i--;
    start = want == 0 ? buf + n : buf + i;
  }
  mbd_reply_text(r, 200, "text/plain; charset=utf-8", start, n - (size_t)(start - buf));
  free(buf);
}

/* ------------------------------------------------------------------------ */
/* Leases                                                                    */

static void lease_renew(mbd_req *r) {
  mbd *d = r->d;
  char token[MBD_LEASE_TOKEN_LEN + 2], err[256] = "", model[MBD_MODEL_NAME_MAX + 1];
  snprintf(token, sizeof(token), "%.*s", (int)r->route.arg_len, r->path + r->route.arg_off);
  json_t *body = mbd_api_body(r, err, sizeof(err));
  if (body == NULL) {
    mbd_reply_error(r, 400, "bad_request", err, 0);
    return;
  }
  static const char *const fields[] = {"ttl", NULL};
  int64_t ttl = DEFAULT_LEASE_TTL_MS;
  json_t *v = json_object_get(body, "ttl");
  int bad = mbd_api_fields(body, fields, err, sizeof(err)) != 0 ||
            (v && duration_of("ttl", v, 0, &ttl, err, sizeof(err)) != 0);
  json_decref(body);
  if (bad) {
    mbd_reply_error(r, 400, "bad_request", err, 0);
    return;
  }
  uint64_t expires;
  int rc = mbd_leases_renew(d->leases, d->ctx, token, ttl, mbd_now_ms(), model, &expires);
  if (rc == MB_ELOST) {
    mbd_reply_error(r, 410, "lease_lost",
                    "the model was lost while the lease was held; release it", 0);
    return;
  }
  if (rc != 0) {
    mbd_reply_error(r, 404, "not_found", "no such lease (released, expired or never made)", 0);
    return;
  }
  mbd_reply_json(r, 200,
                 json_pack("{s:s,s:s,s:o,s:f}", "lease", token, "model", model, "expires_at",
                           mbd_time_json(d, mb_ctx_now(d->ctx) + (uint64_t)ttl * 1000000u),
                           "ttl_s", (double)ttl / 1000.0));
}

static void lease_release(mbd_req *r) {
  mbd *d = r->d;
  char token[MBD_LEASE_TOKEN_LEN + 2], model[MBD_MODEL_NAME_MAX + 1];
  snprintf(token, sizeof(token), "%.*s", (int)r->route.arg_len, r->path + r->route.arg_off);
  mb_lease l;
  if (mbd_leases_take(d->leases, token, mbd_now_ms(), &l, model) != 0) {
    mbd_reply_error(r, 404, "not_found", "no such lease (released, expired or never made)", 0);
    return;
  }
  int rc = mb_release(d->ctx, l);
  if (rc == MB_ELOST) { /* released; its holder learns its work ran on a lost model */
    mbd_reply_error(r, 410, "lease_lost",
                    "the model was lost while the lease was held; the lease ended", 0);
    return;
  }
  if (rc != 0 && rc != MB_EINVAL) {
    lib_error(r, NULL, rc, NULL, 0);
    return;
  }
  mbd_reply_json(r, 200,
                 json_pack("{s:s,s:s,s:b}", "lease", token, "model", model, "released", 1));
}

/* ------------------------------------------------------------------------ */
/* Events (server-sent)                                                      */

typedef struct sse {
  uint64_t next; /* seq of the next event to send */
} sse;

/* A server-sent event stream: ctx (freed when the client goes) and fill,
 * which writes what is new whenever the stream is woken or drained. */
static void sse_gone(mbd_req *r) {
  free(r->ctx);
  r->ctx = NULL;
}

static void sse_start(mbd_req *r, void *ctx, void (*fill)(mbd_req *r)) {
  r->ctx = ctx;
  r->on_gone = sse_gone;
  r->on_drain = fill;
  mbd_resp_start(r, 200);
  mbd_resp_header(r, "Cache-Control", "no-cache");
  mbd_resp_header(r, "X-Accel-Buffering", "no");
  mbd_resp_stream(r, "text/event-stream", -1);
  if (r->is_head) {
    sse_gone(r);
    r->on_gone = NULL;
    r->on_drain = NULL;
    mbd_resp_end(r);
    return;
  }
  mbd_req_subscribe(r);
  fill(r);
}

/* Writes what the ring holds from s->next on, while the client keeps up. */
static void sse_fill(mbd_req *r) {
  sse *s = r->ctx;
  mbd *d = r->d;
  char *items[64];
  while (mbd_resp_pending(r) < 64 * 1024) {
    uint64_t next, oldest;
    size_t n = mbd_events_since(d, s->next, items, 64, &next, &oldest);
    if (s->next < oldest) {
      /* The client fell more than the ring behind: it skips ahead, told so. */
      char line[96];
      int k = snprintf(line, sizeof(line), "event: dropped\ndata: {\"dropped\":%llu}\n\n",
                       (unsigned long long)(oldest - s->next));
      mbd_resp_write(r, line, (size_t)k);
    }
    for (size_t i = 0; i < n; i++) {
      /* One event, one write (one chunk): clients that read the stream
       * without decoding its chunks still see whole lines. */
      size_t len = strlen(items[i]) + 48;
      char *ev = malloc(len);
      if (ev != NULL) {
        int k = snprintf(ev, len, "id: %llu\ndata: %s\n\n", (unsigned long long)(next - n + i),
                         items[i]);
        mbd_resp_write(r, ev, (size_t)k);
        free(ev);
      }
      free(items[i]);
    }
    s->next = next;
    if (n < 64)
      break;
  }
}

static void events(mbd_req *r) {
  mbd *d = r->d;
  sse *s = calloc(1, sizeof(*s));
  if (s == NULL) {
    mbd_reply_error(r, 500, "internal", "out of memory", 0);
    return;
  }
  char *items[1];
  uint64_t next, oldest;
  mbd_events_since(d, UINT64_MAX, items, 0, &next, &oldest);
  s->next = next; /* from now on; Last-Event-ID resumes after the one it names */
  char last[32];
  if (mbd_req_header(r, "Last-Event-ID", last, sizeof(last))) {
    char *end;
    unsigned long long id = strtoull(last, &end, 10);
    if (last[0] < '0' || last[0] > '9' || *end != '\0' || strlen(last) > 20) {
      free(s);
      mbd_reply_error(r, 400, "bad_request", "Last-Event-ID must be an event id (a number)", 0);
      return;
    }
    /* An id from the past resumes after it (sse_fill tells what the ring
     * lost since); the current one, one from the future or a restarted
     * daemon's starts from now. */
    if (next > 0 && id < next - 1)
      s->next = id + 1;
  }
  sse_start(r, s, sse_fill);
}

/* ------------------------------------------------------------------------ */
/* Metrics                                                                   */

static void metric_head(FILE *f, const char *name, const char *type, const char *help) {
  fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/*
 * Copies the Prometheus text in[0..n) to f with node="NAME" as the last
 * label of every sample, so that the samples of a fleet's nodes stay apart
 * wherever they are gathered. The daemon's label values hold no '}' or
 * space (model names, device names, fixed words), so a sample's labels end
 * at its last '}' and its name at its first space. The node name needs no
 * escaping: mbd_node_name_valid keeps '"', '\\' and line ends out of it.
 */
static void node_labels(FILE *f, const char *in, size_t n, const char *node) {
  const char *p = in, *end = in + n;
  while (p < end) {
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    const char *le = nl ? nl : end;
    size_t ll = (size_t)(le - p);
    const char *brace = NULL, *space = memchr(p, ' ', ll);
    for (const char *q = p; q < le; q++)
      if (*q == '}')
        brace = q;
    if (ll == 0 || p[0] == '#' || space == NULL) {
      fwrite(p, 1, ll, f);
    } else if (brace != NULL) {
      fwrite(p, 1, (size_t)(brace - p), f);
      fprintf(f, ",node=\"%s\"", node);
      fwrite(brace, 1, (size_t)(le - brace), f);
    } else {
      fwrite(p, 1, (size_t)(space - p), f);
      fprintf(f, "{node=\"%s\"}", node);
      fwrite(space, 1, (size_t)(le - space), f);
    }
    if (nl)
      fputc('\n', f);
    p = nl ? nl + 1 : end;
  }
}

static void metrics(mbd_req *r) {
  mbd *d = r->d;
  const mbd_models *ms = mbd_models_get(d);
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  if (f == NULL) {
    mbd_reply_error(r, 500, "internal", "out of memory", 0);
    return;
  }
  static const mb_state states[] = {MB_STATE_UNLOADED,  MB_STATE_LOADING,   MB_STATE_READY,
                                    MB_STATE_OFFLOADING, MB_STATE_OFFLOADED, MB_STATE_RESTORING,
                                    MB_STATE_UNLOADING, MB_STATE_FAILED};
  mb_status *st = calloc(ms->n ? ms->n : 1, sizeof(*st));
  for (size_t i = 0; st && i < ms->n; i++)
    if (mb_model_status(d->ctx, ms->m[i]->name, &st[i]) != 0)
      st[i].state = MB_STATE_UNLOADED;
  metric_head(f, "modelbuf_model_state", "gauge", "1 for the state the model is in");
  for (size_t i = 0; st && i < ms->n; i++)
    for (size_t k = 0; k < sizeof(states) / sizeof(states[0]); k++)
      fprintf(f, "modelbuf_model_state{model=\"%s\",state=\"%s\"} %d\n", ms->m[i]->name,
              mb_state_name(states[k]), st[i].state == states[k]);
  struct {
    const char *name, *help;
    size_t off;
  } counters[] = {
      {"modelbuf_loads_total", "loads from nothing", offsetof(mb_stats, loads)},
      {"modelbuf_load_failures_total", "failed loads", offsetof(mb_stats, load_failures)},
      {"modelbuf_unloads_total", "unloads", offsetof(mb_stats, unloads)},
      {"modelbuf_offloads_total", "moves to host RAM", offsetof(mb_stats, offloads)},
      {"modelbuf_restores_total", "moves back from host RAM", offsetof(mb_stats, restores)},
      {"modelbuf_evictions_total", "evictions", offsetof(mb_stats, evictions)},
      {"modelbuf_rejected_total", "requests refused (queue full)", offsetof(mb_stats, rejected)},
      {"modelbuf_timeouts_total", "requests that timed out waiting", offsetof(mb_stats, timeouts)},
      {"modelbuf_crashes_total", "losses of a resident model (worker exit, kill, failed health "
                                 "checks, memory_limit)", offsetof(mb_stats, crashes)},
  };
  for (size_t k = 0; k < sizeof(counters) / sizeof(counters[0]); k++) {
    metric_head(f, counters[k].name, "counter", counters[k].help);
    for (size_t i = 0; st && i < ms->n; i++)
      fprintf(f, "%s{model=\"%s\"} %llu\n", counters[k].name, ms->m[i]->name,
              (unsigned long long)*(const uint64_t *)((const char *)&st[i].stats +
                                                      counters[k].off));
  }
  metric_head(f, "modelbuf_requests_total", "counter", "HTTP requests answered, by status class");
  for (size_t i = 0; i < ms->n; i++)
    for (int k = 1; k <= 5; k++)
      fprintf(f, "modelbuf_requests_total{model=\"%s\",code=\"%dxx\"} %llu\n",
              ms->m[i]->name, k,
              (unsigned long long)__atomic_load_n(&ms->m[i]->http_codes[k], __ATOMIC_RELAXED));
  pthread_mutex_lock(&d->ev_mu);
  metric_head(f, "modelbuf_load_seconds", "histogram", "time to load or restore a model");
  for (size_t i = 0; i < ms->n; i++) {
    const mbd_model *m = ms->m[i];
    uint64_t cum = 0;
    for (int b = 0; b < MBD_LOAD_BUCKETS; b++) {
      cum += m->load_buckets[b];
      if (b < MBD_LOAD_BUCKETS - 1)
        fprintf(f, "modelbuf_load_seconds_bucket{model=\"%s\",le=\"%g\"} %llu\n", m->name,
                mbd_load_bucket_s[b], (unsigned long long)cum);
      else
        fprintf(f, "modelbuf_load_seconds_bucket{model=\"%s\",le=\"+Inf\"} %llu\n", m->name,
                (unsigned long long)cum);
    }
    fprintf(f, "modelbuf_load_seconds_sum{model=\"%s\"} %g\n", m->name, m->load_sum_s);
    fprintf(f, "modelbuf_load_seconds_count{model=\"%s\"} %llu\n", m->name,
            (unsigned long long)m->load_count);
  }
  pthread_mutex_unlock(&d->ev_mu);
  metric_head(f, "modelbuf_queue_wait_seconds", "histogram", "time requests waited for a lease");
  for (size_t i = 0; st && i < ms->n; i++) {
    uint64_t cum = 0;
    for (int b = 0; b < MB_WAIT_BUCKETS; b++) {
      cum += st[i].stats.wait_buckets[b];
      if (b < MB_WAIT_BUCKETS - 1)
        fprintf(f, "modelbuf_queue_wait_seconds_bucket{model=\"%s\",le=\"%g\"} %llu\n",
                ms->m[i]->name, mb_wait_bucket_ms[b] / 1000.0, (unsigned long long)cum);
      else
        fprintf(f, "modelbuf_queue_wait_seconds_bucket{model=\"%s\",le=\"+Inf\"} %llu\n",
                ms->m[i]->name, (unsigned long long)cum);
    }
    fprintf(f, "modelbuf_queue_wait_seconds_sum{model=\"%s\"} %g\n", ms->m[i]->name,
            st[i].stats.wait_sum_ms / 1000.0);
    fprintf(f, "modelbuf_queue_wait_seconds_count{model=\"%s\"} %llu\n", ms->m[i]->name,
            (unsigned long long)st[i].stats.wait_count);
  }
  metric_head(f, "modelbuf_inflight", "gauge", "leases out");
  for (size_t i = 0; st && i < ms->n; i++)
    fprintf(f, "modelbuf_inflight{model=\"%s\"} %d\n", ms->m[i]->name, st[i].inflight);
  metric_head(f, "modelbuf_queued", "gauge", "requests waiting");
  for (size_t i = 0; st && i < ms->n; i++)
    fprintf(f, "modelbuf_queued{model=\"%s\"} %d\n", ms->m[i]->name, st[i].queued);
  metric_head(f, "modelbuf_model_bytes", "gauge", "memory a model holds, by tier");
  for (size_t i = 0; st && i < ms->n; i++) {
    fprintf(f, "modelbuf_model_bytes{model=\"%s\",tier=\"device\"} %llu\n", ms->m[i]->name,
            (unsigned long long)st[i].vram_bytes);
    fprintf(f, "modelbuf_model_bytes{model=\"%s\",tier=\"host\"} %llu\n", ms->m[i]->name,
            (unsigned long long)st[i].host_bytes);
  }
  free(st);
  /* Workers: the footprint measured, and whether it overran its declaration. */
  metric_head(f, "modelbuf_worker_measured_bytes", "gauge",
              "a worker's footprint as last measured (RSS of its tree, or GPU memory by NVML)");
  for (size_t i = 0; i < ms->n; i++) {
    uint64_t meas = 0;
    if (ms->m[i]->worker) {
      mbd_worker_footprint(ms->m[i]->worker, &meas, NULL, NULL);
      fprintf(f, "modelbuf_worker_measured_bytes{model=\"%s\"} %llu\n", ms->m[i]->name,
              (unsigned long long)meas);
    }
  }
  metric_head(f, "modelbuf_footprint_overrun", "gauge",
              "1 while a worker's measured footprint is over 110% of its declared vram");
  for (size_t i = 0; i < ms->n; i++) {
    int over = 0;
    if (ms->m[i]->worker) {
      mbd_worker_footprint(ms->m[i]->worker, NULL, NULL, &over);
      fprintf(f, "modelbuf_footprint_overrun{model=\"%s\"} %d\n", ms->m[i]->name, over);
    }
  }
  int nd = mb_device_count(d->ctx);
  const char *dev_metrics[][2] = {{"modelbuf_device_total_bytes", "device capacity"},
                                  {"modelbuf_device_used_bytes", "used by models"},
                                  {"modelbuf_device_free_bytes", "usable and free"},
                                  {"modelbuf_device_budget_bytes", "usable by models"}};
  for (int k = 0; k < 4; k++) {
    metric_head(f, dev_metrics[k][0], "gauge", dev_metrics[k][1]);
    for (int i = 0; i < nd; i++) {
      mb_device_info di;
      if (mb_device_info_get(d->ctx, i, &di) != 0)
        continue;
      uint64_t v = k == 0 ? di.capacity_bytes : k == 1 ? di.used_bytes
                                              : k == 2 ? di.free_bytes
                                                       : di.usable_bytes;
      fprintf(f, "%s{device=\"%s\"} %llu\n", dev_metrics[k][0], di.name, (unsigned long long)v);
    }
  }
  uint64_t hb = 0, hu = 0;
  mb_host_tier(d->ctx, &hb, &hu);
  metric_head(f, "modelbuf_host_tier_bytes", "gauge", "host RAM of offloaded models");
  fprintf(f, "modelbuf_host_tier_bytes{kind=\"budget\"} %llu\n", (unsigned long long)hb);
  fprintf(f, "modelbuf_host_tier_bytes{kind=\"used\"} %llu\n", (unsigned long long)hu);
  fprintf(f, "# HELP modelbuf_http_connections client connections open\n"
             "# TYPE modelbuf_http_connections gauge\nmodelbuf_http_connections %d\n",
          mbd_front_connections(d));
  fclose(f);
  char *out = NULL;
  size_t out_len = 0;
  FILE *g = buf ? open_memstream(&out, &out_len) : NULL;
  if (g == NULL) {
    free(buf);
    mbd_reply_error(r, 500, "internal", "out of memory", 0);
    return;
  }
  node_labels(g, buf, len, d->node);
  fclose(g);
  free(buf);
  mbd_reply_text(r, 200, "text/plain; version=0.0.4; charset=utf-8", out, out_len);
  free(out);
}

/* ------------------------------------------------------------------------ */
/* Health, devices, cleanup, compatibility                                   */

static void health(mbd_req *r) {
  mbd *d = r->d;
  const mbd_models *ms = mbd_models_get(d);
  int active = 0, queued = 0, gpu = 0;
  uint64_t alloc = 0, reserved = 0; /* the models' memory on their devices */
  for (size_t i = 0; i < ms->n; i++) {
    mb_status st;
    uint64_t a, b;
    if (mb_model_status(d->ctx, ms->m[i]->name, &st) == 0) {
      active += st.inflight;
      queued += st.queued;
      mbd_compat_model_memory(&st, &a, &b);
      alloc += a;
      reserved += b;
    }
  }
  int nd = mb_device_count(d->ctx);
  for (int i = 0; i < nd; i++) {
    mb_device_info di;
    if (mb_device_info_get(d->ctx, i, &di) == 0 && di.kind == MB_DEVICE_CUDA)
      gpu = 1;
  }
  struct timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  int64_t up_ms = (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000 - d->started_ms;
  /* "healthy" is what the clients of the common Python model APIs check. */
  const char *state = __atomic_load_n(&d->stopping, __ATOMIC_ACQUIRE) ? "stopping" : "healthy";
  mbd_reply_json(r, 200,
                 json_pack("{s:s,s:s,s:o,s:s,s:f,s:i,s:i,s:b,s:{s:f,s:f},s:o}", "status", state,
                           "node", d->node, "timestamp", mbd_time_json(d, mb_ctx_now(d->ctx)), "version",
                           mb_version(), "uptime_s", (double)up_ms / 1000.0, "active_jobs",
                           active, "queued", queued, "gpu_available", gpu, "gpu_memory",
                           "allocated_mb", (double)alloc / (1024.0 * 1024.0), "reserved_mb",
                           (double)reserved / (1024.0 * 1024.0), "devices", mbd_devices_json(d)));
}

/* The devices, and the host tier that offloaded models share (its budget
 * and what they hold there), so that a client can draw both tiers. */
static void devices(mbd_req *r) {
  uint64_t hb, hu;
  mb_host_tier(r->d->ctx, &hb, &hu);
  mbd_reply_json(r, 200,
                 json_pack("{s:o,s:{s:I,s:I}}", "devices", mbd_devices_json(r->d), "host_tier",
                           "budget_bytes", (json_int_t)hb, "used_bytes", (json_int_t)hu));
}

/* A job on the task pool that answers with a JSON document. */
static void job_gone(mbd_req *r) {
  mbd_api_job *j = r->ctx;
  j->r = NULL; /* the task's end frees it */
}

static void job_done(mbd_task *t) {
  mbd_api_job *j = (mbd_api_job *)t;
  if (j->r != NULL) {
    j->r->ctx = NULL;
    j->r->on_gone = NULL;
    if (j->doc != NULL)
      mbd_reply_json(j->r, j->status, j->doc);
    else
      mbd_reply_error(j->r, 500, "internal", "out of memory", 0);
  } else {
    json_decref(j->doc);
  }
  free(j);
}

mbd_api_job *mbd_api_job_new(mbd_req *r, size_t size, void (*run)(mbd_task *t)) {
  mbd_api_job *j = calloc(1, size);
  if (j == NULL) {
    mbd_reply_error(r, 500, "internal", "out of memory", 0);
    return NULL;
  }
  j->d = r->d;
  j->r = r;
  j->task.loop = mbd_req_loop(r);
  j->task.run = run;
  j->task.done = job_done;
  r->ctx = j;
  r->on_gone = job_gone;
  return j;
}

int mbd_cleanup_workers(mbd *d, json_t **cleaned, json_t **failed) {
  const mbd_models *ms = mbd_models_get(d);
  *cleaned = json_array();
  *failed = json_object();
  int n_failed = 0;
  for (size_t i = 0; i < ms->n; i++) {
    char err[256] = "";
    if (ms->m[i]->worker == NULL)
      continue;
    int rc = mbd_worker_cleanup(ms->m[i]->worker, err, sizeof(err));
    if (rc == 0) {
      json_array_append_new(*cleaned, json_string(ms->m[i]->name));
    } else if (rc != MB_ENOTSUP && rc != MB_ESTATE) { /* no hook, or not running: nothing to do */
      json_object_set_new(*failed, ms->m[i]->name, json_string(err[0] ? err : mb_strerror(rc)));
      n_failed++;
    }
  }
  return n_failed;
}

static void cleanup_run(mbd_task *t) {
  mbd_api_job *j = (mbd_api_job *)t;
  json_t *done, *failed;
  (void)mbd_cleanup_workers(j->d, &done, &failed);
  j->status = 200;
  j->doc = json_pack("{s:o,s:o,s:o}", "cleaned", done, "failed", failed, "devices",
                     mbd_devices_json(j->d));
}

static void cleanup(mbd_req *r) {
  mbd_api_job *j = mbd_api_job_new(r, sizeof(*j), cleanup_run);
  if (j != NULL)
    mbd_tasks_submit(r->d, &j->task);
}

/* GET /api/trace: the requests served, as the simulator's CSV trace
 * (t,model,duration; t in seconds from the first request kept). */
static void trace(mbd_req *r) {
  mbd *d = r->d;
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  if (f == NULL) {
    mbd_reply_error(r, 500, "internal", "out of memory", 0);
    return;
  }
  fprintf(f, "t,model,duration\n");
  pthread_mutex_lock(&d->trace_mu);
  uint64_t n = d->trace_n < MBD_TRACE_RING ? d->trace_n : MBD_TRACE_RING;
  uint64_t first = d->trace_n - n;
  double t0 = -1;
  for (uint64_t i = 0; i < n; i++) {
    const mbd_trace_entry *e = &d->trace[(first + i) % MBD_TRACE_RING];
    if (t0 < 0 || e->t < t0)
      t0 = e->t;
  }
  /* Requests are recorded as they end; the trace is ordered by arrival. */
  mbd_trace_entry *sorted = n ? malloc(n * sizeof(*sorted)) : NULL;
  for (uint64_t i = 0; sorted && i < n; i++)
    sorted[i] = d->trace[(first + i) % MBD_TRACE_RING];
  pthread_mutex_unlock(&d->trace_mu);
  if (sorted) {
    for (uint64_t i = 1; i < n; i++) /* insertion sort: nearly in order already */
      for (uint64_t k = i; k > 0 && sorted[k].t < sorted[k - 1].t; k--) {
        mbd_trace_entry tmp = sorted[k];
        sorted[k] = sorted[k - 1];
        sorted[k - 1] = tmp;
      }
    for (uint64_t i = 0; i < n; i++)
      fprintf(f, "%.3f,%s,%.3f\n", sorted[i].t - t0, sorted[i].model, sorted[i].duration);
    free(sorted);
  }
  fclose(f);
  mbd_reply_text(r, 200, "text/csv", buf, len);
  free(buf);
}

static void models_list(mbd_req *r) {
  mbd *d = r->d;
  const mbd_models *ms = mbd_models_get(d);
  json_t *a = json_array();
  for (size_t i = 0; i < ms->n; i++)
    json_array_append_new(a, mbd_model_json(d, ms->m[i]));
  mbd_reply_json(r, 200, json_pack("{s:s,s:o}", "node", d->node, "models", a));
}

/* X-Modelbuf-Resident holds at most this many bytes of names (beyond, it
 * is left out rather than cut: a cut list would read as a whole one). */
#define RESIDENT_HEADER_MAX 4096

/*
 * GET /api/resident: the models that hold memory now, for balancers and
 * fleet tools that poll often: {"node", "gpu": [names on a device],
 * "cpu": [names in the host tier], "loading": [names loading or
 * restoring]}. One status read per model, no /proc walk, no worker call.
 * X-Modelbuf-Resident repeats "gpu" as a comma-separated list (names hold
 * no comma), for a HEAD.
 */
static void resident(mbd_req *r) {
  mbd *d = r->d;
  const mbd_models *ms = mbd_models_get(d);
  json_t *gpu = json_array(), *cpu = json_array(), *loading = json_array();
  char hdr[RESIDENT_HEADER_MAX + 1];
  size_t hl = 0;
  int fits = 1;
  for (size_t i = 0; i < ms->n; i++) {
    mb_status st;
    if (mb_model_status(d->ctx, ms->m[i]->name, &st) != 0)
      continue;
    const char *name = ms->m[i]->name;
    if (st.state == MB_STATE_LOADING || st.state == MB_STATE_RESTORING) {
      json_array_append_new(loading, json_string(name));
    } else if (st.location == MB_LOC_GPU) {
      json_array_append_new(gpu, json_string(name));
      size_t nl = strlen(name);
      if (hl + nl + 1 > RESIDENT_HEADER_MAX) {
        fits = 0;
      } else if (fits) {
        if (hl > 0)
          hdr[hl++] = ',';
        memcpy(hdr + hl, name, nl);
        hl += nl;
      }
    } else if (st.location == MB_LOC_CPU) {
      json_array_append_new(cpu, json_string(name));
    }
  }
  hdr[hl] = '\0';
  json_t *doc = json_pack("{s:s,s:o,s:o,s:o}", "node", d->node, "gpu", gpu, "cpu", cpu,
                          "loading", loading);
  char *s = doc ? json_dumps(doc, MBD_JSON_FLAGS) : NULL;
  json_decref(doc);
  if (s == NULL) {
    mbd_reply_error(r, 500, "internal", "out of memory", 0);
    return;
  }
  mbd_resp_start(r, 200);
  if (fits)
    mbd_resp_header_n(r, "X-Modelbuf-Resident", 19, hdr, hl);
  mbd_resp_body(r, "application/json", s, strlen(s));
  free(s);
}

/* ------------------------------------------------------------------------ */
/* Routing                                                                   */

/* The fixed routes: path, methods and handler. GET routes answer HEAD. */
typedef struct fixed_route {
  const char *path;
  const char *method; /* "GET" or "POST" */
  void (*handle)(mbd_req *r);
  const char *arg;
} fixed_route;

static const fixed_route fixed[] = {
    {"/health", "GET", health, NULL},
    {"/metrics", "GET", metrics, NULL},
    {"/api/events", "GET", events, NULL},
    {"/api/trace", "GET", trace, NULL},
    {"/api/devices", "GET", devices, NULL},
    {"/api/models", "GET", models_list, NULL},
    {"/api/resident", "GET", resident, NULL},
    {"/api/cleanup", "POST", cleanup, NULL},
};

static int path_is(const mbd_req *r, const char *p) {
  size_t n = strlen(p);
  return r->path_len == n && memcmp(r->path, p, n) == 0;
}

/* method matches want (HEAD answers GET routes); else a 405 is answered. */
static int method_ok(mbd_req *r, const char *want, const char *allow) {
  if (strcmp(r->method, want) == 0 || (strcmp(want, "GET") == 0 && r->is_head))
    return 1;
  char msg[128];
  snprintf(msg, sizeof(msg), "%s is not allowed here (%s)", r->method, allow);
  mbd_reply_error_hdr(r, 405, "method_not_allowed", msg, "Allow", allow);
  return 0;
}

static int set(mbd_req *r, void (*fn)(mbd_req *), const char *arg) {
  r->route.handle = fn;
  r->route.arg = arg;
  r->route.body = MBD_BODY_BUFFER;
  return 1;
}

int mbd_api_resolve(mbd *d, mbd_req *r) {
  for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++)
    if (path_is(r, fixed[i].path)) {
      if (method_ok(r, fixed[i].method, strcmp(fixed[i].method, "GET") == 0 ? "GET, HEAD" : "POST"))
        set(r, fixed[i].handle, fixed[i].arg);
      return 1;
    }
  const char *p = r->path;
  size_t n = r->path_len;
  if (n > 12 && memcmp(p, "/api/leases/", 12) == 0) {
    size_t id = 12, k = id;
    while (k < n && p[k] != '/')
      k++;
    r->route.arg_off = id;
    r->route.arg_len = k - id;
    if (k == n) {
      if (method_ok(r, "DELETE", "DELETE"))
        set(r, lease_release, NULL);
      return 1;
    }
    if (n - k == 6 && memcmp(p + k, "/renew", 6) == 0) {
      if (method_ok(r, "POST", "POST"))
        set(r, lease_renew, NULL);
      return 1;
    }
    mbd_reply_error(r, 404, "not_found", "no such lease route (DELETE /api/leases/ID, "
                    "POST /api/leases/ID/renew)", 0);
    return 1;
  }
  if (n > 12 && memcmp(p, "/api/models/", 12) == 0) {
    size_t rest;
    mbd_model *m = mbd_route_model(d, r, p + 12, n - 12, 1, &rest);
    if (m == NULL)
      return 1;
    const char *a = p + 12 + rest;
    size_t an = n - 12 - rest;
    if (an == 0) {
      if (method_ok(r, "GET", "GET, HEAD"))
        set(r, model_get, NULL);
      return 1;
    }
    if (an == 5 && memcmp(a, "/logs", 5) == 0) {
      if (method_ok(r, "GET", "GET, HEAD"))
        set(r, logs, NULL);
      return 1;
    }
    static const char *const actions[] = {"load", "offload", "unload", "keep-alive", "acquire"};
    for (size_t i = 0; i < sizeof(actions) / sizeof(actions[0]); i++)
      if (an == strlen(actions[i]) + 1 && a[0] == '/' && memcmp(a + 1, actions[i], an - 1) == 0) {
        if (method_ok(r, "POST", "POST"))
          set(r, model_action, actions[i]);
        return 1;
      }
    mbd_reply_error(r, 404, "not_found",
                    "no such model route (GET /api/models/NAME, .../logs; POST .../load, "
                    "offload, unload, keep-alive, acquire)", 0);
    return 1;
  }
  return 0;
}
