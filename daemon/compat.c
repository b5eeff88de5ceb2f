/*
 * compat.c - the routes of the common Python GPU-manager APIs (DESIGN §5),
 * so that their clients call modelbufd unchanged:
 *
 *   GET  /api/gpu/status    one model's status, flat: model_location
 *                           "GPU" | "CPU" | "UNLOADED", idle_time,
 *                           timeout_seconds, gpu_memory_allocated_gb,
 *                           gpu_memory_reserved_gb, statistics{total_loads,
 *                           gpu_to_cpu, cpu_to_gpu, full_releases}; or, when
 *                           no one model is meant, {"models": {name: ...}}
 *   POST /api/gpu/offload   to host RAM; an error status when it cannot be
 *   POST /api/gpu/release   freed entirely (from the GPU or from host RAM)
 *   POST /cleanup-memory    every worker's cleanup hook, and the memory
 *
 * The model meant: ?model=NAME or the body's "model" (a name or an alias),
 * else compat.model of the configuration, else the daemon's only model;
 * with none of these (several models), status is the per-model map and the
 * actions act on every loaded model.
 *
 * Handlers run on a loop thread and never block it: the actions, which
 * wait for the core (and for a worker's hook), run on the task pool.
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "compat.h"
#include "front_int.h"
#include "tasks.h"

#define GIB (1024.0 * 1024.0 * 1024.0)
#define MIB (1024.0 * 1024.0)

/* ------------------------------------------------------------------------ */
/* Figures                                                                   */

static const char *location_upper(mb_location l) {
  switch (l) {
  case MB_LOC_GPU: return "GPU";
  case MB_LOC_CPU: return "CPU";
  default: return "UNLOADED";
  }
}

void mbd_compat_model_memory(const mb_status *st, uint64_t *allocated, uint64_t *reserved) {
  *allocated = st->vram_bytes;
  switch (st->state) {
  case MB_STATE_LOADING:
  case MB_STATE_RESTORING:
  case MB_STATE_READY:
  case MB_STATE_OFFLOADING:
    *reserved = st->footprint_bytes > st->vram_bytes ? st->footprint_bytes : st->vram_bytes;
    break;
  default:
    *reserved = st->vram_bytes;
  }
}

void mbd_compat_memory(mbd *d, uint64_t *allocated, uint64_t *reserved) {
  const mbd_models *ms = mbd_models_get(d);
  *allocated = *reserved = 0;
  for (size_t i = 0; i < ms->n; i++) {
    mb_status st;
    uint64_t a, r;
    if (mb_model_status(d->ctx, ms->m[i]->name, &st) != 0)
      continue;
    mbd_compat_model_memory(&st, &a, &r);
    *allocated += a;
    *reserved += r;
  }
}

static double secs_or_forever(int64_t ms) {
  return ms == MB_FOREVER ? -1.0 : (double)ms / 1000.0;
}

/* A JSON string of text that may hold any byte: printable ASCII kept. */
static json_t *clean_string(const char *s) {
  char out[512];
  size_t k = 0;
  for (; *s && k + 1 < sizeof(out); s++)
    out[k++] = (unsigned char)*s >= 0x20 && (unsigned char)*s < 0x7f ? *s : '?';
  out[k] = '\0';
  return json_string(out);
}

/* One model, flat, as those APIs show it. NULL when it is gone. */
static json_t *flat_status(mbd *d, mbd_model *m) {
  mb_status st;
  if (mb_model_status(d->ctx, m->name, &st) != 0)
    return NULL;
  /* Seconds since its last use (not since its last move: an offload does
   * not make it fresh), 0 while in use or never used. */
  double idle = 0.0;
  uint64_t now = mb_ctx_now(d->ctx);
  if (st.inflight == 0 && st.last_accessed != 0 && now > st.last_accessed)
    idle = (double)(now - st.last_accessed) / 1e9;
  uint64_t alloc, reserved;
  mbd_compat_model_memory(&st, &alloc, &reserved);
  json_t *o = json_object();
  json_object_set_new(o, "model", json_string(m->name));
  json_object_set_new(o, "model_location", json_string(location_upper(st.location)));
  json_object_set_new(o, "state", json_string(mb_state_name(st.state)));
  json_object_set_new(o, "is_loaded", json_boolean(st.is_loaded));
  json_object_set_new(o, "idle_time", json_real(idle));
  json_object_set_new(o, "timeout_seconds", json_real(secs_or_forever(st.keep_alive_ms)));
  json_object_set_new(o, "keep_alive", json_real(secs_or_forever(st.keep_alive_ms)));
  json_object_set_new(o, "cpu_timeout_seconds", json_real(secs_or_forever(st.host_keep_alive_ms)));
  json_object_set_new(o, "timer_active", json_boolean(st.timer_active));
  json_object_set_new(o, "loaded_at", mbd_time_json(d, st.loaded_at));
  json_object_set_new(o, "last_accessed", mbd_time_json(d, st.last_accessed));
  json_object_set_new(o, "active_requests", json_integer(st.inflight));
  json_object_set_new(o, "gpu_memory_allocated_gb", json_real((double)alloc / GIB));
  json_object_set_new(o, "gpu_memory_reserved_gb", json_real((double)reserved / GIB));
  json_object_set_new(o, "cpu_memory_gb", json_real((double)st.host_bytes / GIB));
  /* full_releases: every release to nothing, from the GPU as from host RAM. */
  json_object_set_new(o, "statistics",
                      json_pack("{s:I,s:I,s:I,s:I}", "total_loads", (json_int_t)st.stats.loads,
                                "gpu_to_cpu", (json_int_t)st.stats.offloads, "cpu_to_gpu",
                                (json_int_t)st.stats.restores, "full_releases",
                                (json_int_t)st.stats.unloads));
  return o;
}

/* ------------------------------------------------------------------------ */
/* The model a request means                                                 */

/*
 * *out gets the model meant: ?model= or the body's "model" (body may be
 * NULL), else compat.model, else the only model; NULL when several and
 * none named. 0, or -1 with r answered (400 a bad value, 404 unknown).
 */
static int target(mbd_req *r, json_t *body, mbd_model **out) {
  mbd *d = r->d;
  char q[MBD_MODEL_NAME_MAX + 1], msg[200];
  const char *name = NULL;
  *out = NULL;
  int hq = mbd_req_query(r, "model", q, sizeof(q));
  if (hq < 0) {
    mbd_reply_error(r, 400, "bad_request", "model (query) must be a model's name", 0);
    return -1;
  }
  if (hq > 0)
    name = q;
  json_t *v = body ? json_object_get(body, "model") : NULL;
  if (v != NULL) {
    if (!json_is_string(v)) {
      mbd_reply_error(r, 400, "bad_request", "model must be a model's name (a string)", 0);
      return -1;
    }
    if (name != NULL && strcmp(name, json_string_value(v)) != 0) {
      mbd_reply_error(r, 400, "bad_request", "model is named twice (query and body) differently",
                      0);
      return -1;
    }
    name = json_string_value(v);
  }
  if (name != NULL) {
    if ((*out = mbd_find(d, name)) == NULL) {
      snprintf(msg, sizeof(msg), "unknown model '%.100s'", name);
      mbd_reply_error(r, 404, "not_found", msg, 0);
      return -1;
    }
    return 0;
  }
  const char *cm = atomic_load(&d->compat_model);
  const mbd_models *ms = mbd_models_get(d);
  if (cm != NULL)
    *out = mbd_find(d, cm);
  else if (ms->n == 1)
    *out = ms->m[0];
  return 0;
}

/* ------------------------------------------------------------------------ */
/* GET /api/gpu/status                                                       */

static void gpu_status(mbd_req *r) {
  mbd *d = r->d;
  mbd_model *m;
  if (target(r, NULL, &m) != 0)
    return;
  if (m != NULL) {
    json_t *o = flat_status(d, m);
    if (o == NULL)
      mbd_reply_error(r, 404, "not_found", "the model was removed by a reload", 0);
    else
      mbd_reply_json(r, 200, o);
    return;
  }
  const mbd_models *ms = mbd_models_get(d);
  json_t *models = json_object();
  for (size_t i = 0; i < ms->n; i++) {
    json_t *o = flat_status(d, ms->m[i]);
    if (o != NULL)
      json_object_set_new(models, ms->m[i]->name, o);
  }
  uint64_t alloc, reserved;
  mbd_compat_memory(d, &alloc, &reserved);
  mbd_reply_json(r, 200,
                 json_pack("{s:s,s:o,s:f,s:f,s:o}", "status", "ok", "models", models,
                           "gpu_memory_allocated_gb", (double)alloc / GIB,
                           "gpu_memory_reserved_gb", (double)reserved / GIB, "devices",
                           mbd_devices_json(d)));
}

/* ------------------------------------------------------------------------ */
/* The actions, on the task pool                                             */

enum { ACT_OFFLOAD, ACT_RELEASE, ACT_CLEANUP };

typedef struct cjob {
  mbd_api_job job;   /* first: the job machinery of api.c */
  int act;
  mbd_model *only;   /* the model meant; NULL: every loaded one */
} cjob;

/* An answer that is an error and carries the fields those clients read. */
static void set_error(json_t *doc, int rc, const char *why) {
  const char *code;
  (void)mbd_http_status(rc, &code);
  json_object_set_new(doc, "status", json_string("error"));
  json_object_set_new(doc, "message", clean_string(why));
  json_object_set_new(doc, "error", json_pack("{s:s,s:o}", "code", code, "message",
                                              clean_string(why)));
}

/* The action on one model: 0 or the core's error (why in err). */
static int act_on(mbd *d, mbd_model *m, int act, char *err, size_t len) {
  return act == ACT_RELEASE ? mb_unload(d->ctx, m->name, err, len)
                            : mb_offload(d->ctx, m->name, err, len);
}

static void act_one(cjob *j) {
  mbd *d = j->job.d;
  mbd_model *m = j->only;
  char err[256] = "";
  mb_status before;
  if (mb_model_status(d->ctx, m->name, &before) != 0)
    before.state = MB_STATE_UNLOADED;
  int rc = act_on(d, m, j->act, err, sizeof(err));
  json_t *doc = flat_status(d, m);
  if (doc == NULL)
    doc = json_pack("{s:s}", "model", m->name);
  if (rc != 0) {
    const char *code;
    j->job.status = mbd_http_status(rc, &code);
    char why[300];
    snprintf(why, sizeof(why), "%s", err[0] ? err : mb_strerror(rc));
    set_error(doc, rc, why);
  } else {
    const char *msg;
    if (j->act == ACT_RELEASE)
      msg = before.state == MB_STATE_UNLOADED ? "the model was not loaded"
                                              : "the model was released from memory";
    else
      msg = before.location == MB_LOC_CPU ? "the model is on the CPU already"
                                               : "the model was offloaded to the CPU";
    j->job.status = 200;
    json_object_set_new(doc, "status", json_string("success"));
    json_object_set_new(doc, "message", json_string(msg));
  }
  mbd_count_code(d, m, j->job.status);
  j->job.doc = doc;
}

/* No model meant: every loaded model (for offload, every one on its
 * device), one after another; an error status when any could not. */
static void act_all(cjob *j) {
  mbd *d = j->job.d;
  const mbd_models *ms = mbd_models_get(d);
  json_t *out = json_object();
  int failed = 0, done = 0, worst = 0;
  const char *worst_code = "state_conflict";
  for (size_t i = 0; i < ms->n; i++) {
    mbd_model *m = ms->m[i];
    mb_status st;
    if (mb_model_status(d->ctx, m->name, &st) != 0 || st.state == MB_STATE_UNLOADED ||
        (j->act == ACT_OFFLOAD && st.location == MB_LOC_CPU))
      continue;
    char err[256] = "";
    int rc = act_on(d, m, j->act, err, sizeof(err));
    done++;
    if (rc != 0) {
      const char *code;
      int s = mbd_http_status(rc, &code);
      failed++;
      if (s > worst) {
        worst = s;
        worst_code = code;
      }
    }
    json_object_set_new(out, m->name,
                        rc == 0 ? json_string("ok") : clean_string(err[0] ? err : mb_strerror(rc)));
  }
  char msg[160];
  snprintf(msg, sizeof(msg), "%d model%s %s, %d failed", done - failed,
           done - failed == 1 ? "" : "s", j->act == ACT_RELEASE ? "released" : "offloaded",
           failed);
  j->job.status = failed ? worst : 200;
  j->job.doc = json_pack("{s:s,s:s,s:o}", "status", failed ? "error" : "success", "message", msg,
                     "models", out);
  if (failed)
    json_object_set_new(j->job.doc, "error",
                        json_pack("{s:s,s:s}", "code", worst_code, "message", msg));
}

static void cleanup_all(cjob *j) {
  mbd *d = j->job.d;
  json_t *cleaned, *failed;
  int n_failed = mbd_cleanup_workers(d, &cleaned, &failed);
  uint64_t alloc, reserved;
  mbd_compat_memory(d, &alloc, &reserved);
  char msg[200];
  snprintf(msg, sizeof(msg), "cleanup hooks called: %zu worker%s cleaned, %d failed",
           json_array_size(cleaned), json_array_size(cleaned) == 1 ? "" : "s", n_failed);
  j->job.doc = json_pack("{s:s,s:s,s:f,s:f,s:o,s:o,s:o}", "status", n_failed ? "error" : "success",
                     "message", msg, "gpu_memory_allocated_mb", (double)alloc / MIB,
                     "gpu_memory_reserved_mb", (double)reserved / MIB, "cleaned", cleaned,
                     "failed", failed, "devices", mbd_devices_json(d));
  j->job.status = n_failed ? 502 : 200;
  if (n_failed)
    json_object_set_new(j->job.doc, "error",
                        json_pack("{s:s,s:s}", "code", "worker_failed", "message", msg));
}

static void cjob_run(mbd_task *t) {
  cjob *j = (cjob *)t;
  if (j->act == ACT_CLEANUP)
    cleanup_all(j);
  else if (j->only != NULL)
    act_one(j);
  else
    act_all(j);
}

static void start(mbd_req *r, int act, mbd_model *only) {
  cjob *j = (cjob *)mbd_api_job_new(r, sizeof(*j), cjob_run);
  if (j == NULL)
    return;
  j->act = act;
  j->only = only;
  mbd_tasks_submit(r->d, &j->job.task);
}

/* POST /api/gpu/offload | /api/gpu/release: body {} or {"model": NAME}. */
static void gpu_action(mbd_req *r) {
  char err[256] = "";
  json_t *body = mbd_api_body(r, err, sizeof(err));
  static const char *const fields[] = {"model", NULL};
  if (body == NULL || mbd_api_fields(body, fields, err, sizeof(err)) != 0) {
    json_decref(body);
    mbd_reply_error(r, 400, "bad_request", err, 0);
    return;
  }
  mbd_model *m;
  int rc = target(r, body, &m);
  json_decref(body);
  if (rc != 0)
    return;
  start(r, strcmp(r->route.arg, "release") == 0 ? ACT_RELEASE : ACT_OFFLOAD, m);
}

static void cleanup_memory(mbd_req *r) { start(r, ACT_CLEANUP, NULL); }

/* ------------------------------------------------------------------------ */
/* Routing                                                                   */

static const struct {
  const char *path;
  const char *method; /* GET routes answer HEAD too */
  void (*handle)(mbd_req *r);
  const char *arg;
} routes[] = {
    {"/api/gpu/status", "GET", gpu_status, NULL},
    {"/api/gpu/offload", "POST", gpu_action, "offload"},
    {"/api/gpu/release", "POST", gpu_action, "release"},
    {"/cleanup-memory", "POST", cleanup_memory, NULL},
};

int mbd_compat_resolve(mbd *d, mbd_req *r) {
  (void)d;
  for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
    size_t n = strlen(routes[i].path);
    if (r->path_len != n || memcmp(r->path, routes[i].path, n) != 0)
      continue;
    int get = strcmp(routes[i].method, "GET") == 0;
    if (strcmp(r->method, routes[i].method) != 0 && !(get && r->is_head)) {
      char msg[128];
      snprintf(msg, sizeof(msg), "%s is not allowed here (%s)", r->method,
               get ? "GET, HEAD" : "POST");
      mbd_reply_error_hdr(r, 405, "method_not_allowed", msg, "Allow", get ? "GET, HEAD" : "POST");
      return 1;
    }
    r->route.handle = routes[i].handle;
    r->route.arg = routes[i].arg;
    r->route.body = MBD_BODY_BUFFER;
    return 1;
  }
  return 0;
}
