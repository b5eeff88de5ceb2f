/*
 * api.c - modelbufd's management routes (DESIGN §5): health, model status,
 * load/offload/unload/keep-alive, leases over HTTP, devices, cleanup, logs,
 * the event stream, Prometheus metrics, and the routes of the common Python
 * GPU-manager APIs.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "expand.h"
#include "http.h"
#include "tensors.h"
#include "units.h"

/* ------------------------------------------------------------------------ */
/* Status documents                                                          */

static json_t *time_or_null(mbd *d, uint64_t clock_ns) {
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
  pthread_rwlock_rdlock(&d->reload_rw);
  if (m->tensors != NULL)
    files = mbd_tensors_files(m->tensors);
  pthread_rwlock_unlock(&d->reload_rw);
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
  pthread_rwlock_rdlock(&d->reload_rw);
  int worker = m->worker != NULL;
  if (worker)
    mbd_worker_footprint(m->worker, &measured, &declared, &overrun);
  pthread_rwlock_unlock(&d->reload_rw);
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
  pthread_rwlock_rdlock(&d->reload_rw);
  pid_t pid = m->worker ? mbd_worker_pid(m->worker) : 0;
  pthread_rwlock_unlock(&d->reload_rw);
  json_t *aliases = json_array();
  for (size_t i = 0; i < m->mc->n_aliases; i++)
    json_array_append_new(aliases, json_string(m->mc->aliases[i]));
  json_t *o = json_object();
  json_object_set_new(o, "name", json_string(m->name));
  json_object_set_new(o, "backend", json_string(st.backend));
  json_object_set_new(o, "state", json_string(mb_state_name(st.state)));
  json_object_set_new(o, "location", json_string(mb_location_name(st.location)));
  json_object_set_new(o, "device", device_name(d, st.device));
  json_object_set_new(o, "is_loaded", json_boolean(st.is_loaded));
  json_object_set_new(o, "loaded_at", time_or_null(d, st.loaded_at));
  json_object_set_new(o, "last_accessed", time_or_null(d, st.last_accessed));
  json_object_set_new(o, "idle_s", json_real((double)st.idle_ns / 1e9));
  json_object_set_new(o, "keep_alive_s", secs_or_forever(st.keep_alive_ms));
  json_object_set_new(o, "expires_at", time_or_null(d, st.expires_at));
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
                      st.lost_at ? json_pack("{s:o,s:s}", "time", time_or_null(d, st.lost_at),
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

static json_t *devices_json(mbd *d) {
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
static json_t *body_json(mbd_req *r, char *err, size_t len) {
  if (r->len == 0)
    return json_object();
  json_error_t je;
  json_t *doc = json_loadb(r->body, r->len, 0, &je);
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

/* A keep-alive value: "10m", 600, 0, -1, "forever". */
static int keep_alive_of(json_t *v, int64_t *ms, char *err, size_t len) {
  if (json_is_integer(v)) {
    json_int_t s = json_integer_value(v);
    *ms = s < 0 ? MB_FOREVER : (int64_t)s * 1000;
    return 0;
  }
  if (json_is_real(v)) {
    double s = json_real_value(v);
    *ms = s < 0 ? MB_FOREVER : (int64_t)(s * 1000.0);
    return 0;
  }
  if (json_is_string(v))
    return mbd_parse_duration_ms(json_string_value(v), MBD_DUR_FOREVER, ms, err, len);
  snprintf(err, len, "keep_alive must be a duration (\"10m\"), seconds, 0 or -1");
  return MB_EINVAL;
}

static MHD_RESULT lib_error(struct MHD_Connection *c, mbd *d, mbd_model *m, int rc,
                            const char *msg) {
  const char *code;
  int status = mbd_http_status(rc, &code);
  mbd_count_code(d, m, status);
  return mbd_reply_error(c, status, code, msg && msg[0] ? msg : mb_strerror(rc),
                         status == 503 ? 1 : 0);
}

/*
 * One model's status, with what the list leaves out because it costs a walk
 * of /proc per model: rss_bytes, the resident memory of the worker's
 * process group measured now (vram_bytes and host_bytes are measured when
 * a load, offload or restore completes).
 */
static MHD_RESULT model_status(struct MHD_Connection *c, mbd *d, mbd_model *m, int status) {
  json_t *o = mbd_model_json(d, m);
  if (o == NULL)
    return mbd_reply_error(c, 404, "not_found", "unknown model", 0);
  pthread_rwlock_rdlock(&d->reload_rw);
  pid_t pid = m->worker ? mbd_worker_pid(m->worker) : 0;
  uint64_t rss = pid > 0 ? mbd_worker_rss(m->worker) : 0;
  pthread_rwlock_unlock(&d->reload_rw);
  json_object_set_new(o, "rss_bytes", pid > 0 ? json_integer((json_int_t)rss) : json_null());
  return mbd_reply_json(c, status, o);
}

static void ignore_done(const mb_result *res, void *arg) {
  (void)res;
  (void)arg;
}

/* ------------------------------------------------------------------------ */
/* /api/models/{name}/...                                                    */

static MHD_RESULT model_action(mbd *d, struct MHD_Connection *c, mbd_model *m,
                               const char *action, mbd_req *r) {
  char err[512] = "";
  json_t *body = body_json(r, err, sizeof(err));
  if (body == NULL)
    return mbd_reply_error(c, 400, "bad_request", err, 0);
  int rc = 0;
  if (strcmp(action, "load") == 0) {
    int64_t ka = MB_DEFAULT;
    json_t *v = json_object_get(body, "keep_alive");
    if (v && keep_alive_of(v, &ka, err, sizeof(err)) != 0) {
      json_decref(body);
      return mbd_reply_error(c, 400, "bad_request", err, 0);
    }
    json_t *wait = json_object_get(body, "wait");
    if (wait && json_is_false(wait)) {
      rc = mb_load_async(d->ctx, m->name, ka, ignore_done, NULL);
      json_decref(body);
      if (rc != 0)
        return lib_error(c, d, m, rc, NULL);
      return model_status(c, d, m, 202);
    }
    rc = mb_load(d->ctx, m->name, ka, err, sizeof(err));
  } else if (strcmp(action, "offload") == 0) {
    rc = mb_offload(d->ctx, m->name, err, sizeof(err));
  } else if (strcmp(action, "unload") == 0) {
    rc = mb_unload(d->ctx, m->name, err, sizeof(err));
  } else if (strcmp(action, "keep-alive") == 0) {
    json_t *v = json_object_get(body, "keep_alive");
    int64_t ka;
    if (v == NULL || keep_alive_of(v, &ka, err, sizeof(err)) != 0) {
      json_decref(body);
      return mbd_reply_error(c, 400, "bad_request",
                             err[0] ? err : "missing keep_alive (\"10m\", seconds, 0 or -1)", 0);
    }
    rc = mb_keep_alive(d->ctx, m->name, ka);
  } else if (strcmp(action, "acquire") == 0) {
    mb_acquire_opts ao;
    mb_acquire_opts_init(&ao);
    int64_t ttl = 60000;
    json_t *v;
    if ((v = json_object_get(body, "ttl")) && keep_alive_of(v, &ttl, err, sizeof(err)) != 0) {
      json_decref(body);
      return mbd_reply_error(c, 400, "bad_request", err, 0);
    }
    if ((v = json_object_get(body, "priority")) && json_is_integer(v))
      ao.priority = (int)json_integer_value(v);
    if ((v = json_object_get(body, "timeout")) &&
        keep_alive_of(v, &ao.timeout_ms, err, sizeof(err)) != 0) {
      json_decref(body);
      return mbd_reply_error(c, 400, "bad_request", err, 0);
    }
    if ((v = json_object_get(body, "keep_alive")) &&
        keep_alive_of(v, &ao.keep_alive_ms, err, sizeof(err)) != 0) {
      json_decref(body);
      return mbd_reply_error(c, 400, "bad_request", err, 0);
    }
    ao.ttl_ms = ttl == MB_FOREVER ? 0 : ttl;
    mb_lease l;
    rc = mb_acquire(d->ctx, m->name, &ao, &l, err, sizeof(err));
    json_decref(body);
    if (rc != 0)
      return lib_error(c, d, m, rc, err);
    mbd_leases_track(d, l.id);
    char url[128] = "";
    char lease[32];
    snprintf(lease, sizeof(lease), "%llu", (unsigned long long)l.id);
    mbd_model *cur = mbd_current(d, m); /* the lease keeps it from a reload */
    if (cur != NULL && cur->worker && mbd_worker_url(cur->worker, url, sizeof(url)) != 0)
      url[0] = '\0';
    json_t *o = json_pack("{s:s,s:s,s:s}", "lease", lease, "model", m->name, "url",
                          url[0] ? url : "");
    if (ao.ttl_ms > 0)
      json_object_set_new(o, "expires_at",
                          time_or_null(d, mb_ctx_now(d->ctx) + (uint64_t)ao.ttl_ms * 1000000u));
    else
      json_object_set_new(o, "expires_at", json_null());
    mbd_count_code(d, m, 200);
    return mbd_reply_json(c, 200, o);
  } else {
    json_decref(body);
    return mbd_reply_error(c, 404, "not_found", "no such action", 0);
  }
  json_decref(body);
  if (rc != 0)
    return lib_error(c, d, m, rc, err);
  mbd_count_code(d, m, 200);
  return model_status(c, d, m, 200);
}

/* GET /api/models/{name}/logs?follow=1: the worker's log as server-sent
 * events, one per line: "id: SEQ\ndata: LINE\n\n", the marker of a new
 * process as "event: restart"; resumes after Last-Event-ID or ?since=SEQ,
 * else starts with the last ?tail=N lines (default 10). */
typedef struct follow {
  mbd *d;
  mbd_model *m;
  uint64_t next;  /* the number of the next line to send */
  char *pending;
  size_t pending_len, pending_off;
} follow;

#define FOLLOW_CHUNK (64 * 1024)

static ssize_t follow_read(void *cls, uint64_t pos, char *buf, size_t max) {
  follow *f = cls;
  mbd *d = f->d;
  (void)pos;
  while (f->pending == NULL) {
    pthread_mutex_lock(&d->mu);
    uint64_t gen = d->log_gen;
    int stopping = d->stopping;
    pthread_mutex_unlock(&d->mu);
    if (stopping)
      return MHD_CONTENT_READER_END_OF_STREAM;
    char *lines = malloc(FOLLOW_CHUNK);
    if (lines == NULL)
      return MHD_CONTENT_READER_END_WITH_ERROR;
    size_t n = 0;
    int gone = 0;
    pthread_rwlock_rdlock(&d->reload_rw);
    if (f->m->worker)
      n = mbd_worker_logs_since(f->m->worker, f->next, lines, FOLLOW_CHUNK, &f->next);
    else
      gone = 1; /* removed by a reload */
    pthread_rwlock_unlock(&d->reload_rw);
    if (gone) {
      free(lines);
      return MHD_CONTENT_READER_END_OF_STREAM;
    }
    if (n > 0) {
      /* "SEQ KIND TEXT\n" each: one event per line. */
      size_t cap = n * 2 + 64, w = 0;
      f->pending = malloc(cap);
      for (char *p = lines; f->pending && p < lines + n;) {
        char *nl = memchr(p, '\n', (size_t)(lines + n - p));
        if (nl == NULL)
          break;
        char *sp = strchr(p, ' ');
        if (sp == NULL || sp + 2 >= nl)
          break;
        int restart = sp[1] == 'r';
        w += (size_t)snprintf(f->pending + w, cap - w, "%s%.*s\ndata: %.*s\n\n",
                              restart ? "event: restart\nid: " : "id: ", (int)(sp - p), p,
                              (int)(nl - sp - 3), sp + 3);
        p = nl + 1;
      }
      f->pending_len = w;
      f->pending_off = 0;
      free(lines);
      if (f->pending == NULL)
        return MHD_CONTENT_READER_END_WITH_ERROR;
      break;
    }
    free(lines);
    /* Nothing new: wait for a line of any worker, a comment every 15 s. */
    pthread_mutex_lock(&d->mu);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 15;
    int timed_out = 0;
    while (!d->stopping && d->log_gen == gen && !timed_out)
      timed_out = pthread_cond_timedwait(&d->log_cv, &d->mu, &ts) != 0;
    pthread_mutex_unlock(&d->mu);
    if (timed_out) {
      f->pending = strdup(": keep-alive\n\n");
      if (f->pending == NULL)
        return MHD_CONTENT_READER_END_WITH_ERROR;
      f->pending_len = strlen(f->pending);
      f->pending_off = 0;
    }
  }
  size_t n = f->pending_len - f->pending_off;
  if (n > max)
    n = max;
  memcpy(buf, f->pending + f->pending_off, n);
  f->pending_off += n;
  if (f->pending_off == f->pending_len) {
    free(f->pending);
    f->pending = NULL;
  }
  return (ssize_t)n;
}

static void follow_free(void *cls) {
  follow *f = cls;
  free(f->pending);
  free(f);
}

static MHD_RESULT logs_follow(mbd *d, struct MHD_Connection *c, mbd_model *m) {
  const char *last = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Last-Event-ID");
  const char *since = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "since");
  const char *tail = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "tail");
  const char *from = last ? last : since;
  char *end = NULL;
  unsigned long long after = 0, want = 10;
  if (from && ((after = strtoull(from, &end, 10)), end == from || *end != '\0'))
    return mbd_reply_error(c, 400, "bad_request", "since / Last-Event-ID must be a line number", 0);
  if (tail && ((want = strtoull(tail, &end, 10)), end == tail || *end != '\0' || want > 100000))
    return mbd_reply_error(c, 400, "bad_request", "tail must be a number of lines (0..100000)", 0);
  follow *f = calloc(1, sizeof(*f));
  if (f == NULL)
    return MHD_NO;
  f->d = d;
  f->m = m;
  if (from) {
    f->next = after + 1;
  } else {
    uint64_t next = 1;
    char one[1];
    pthread_rwlock_rdlock(&d->reload_rw);
    if (m->worker) /* asks past the end: learns the next number */
      (void)mbd_worker_logs_since(m->worker, UINT64_MAX, one, sizeof(one), &next);
    pthread_rwlock_unlock(&d->reload_rw);
    f->next = next > want ? next - want : 1;
  }
  struct MHD_Response *resp =
      MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, follow_read, f, follow_free);
  if (resp == NULL) {
    free(f);
    return MHD_NO;
  }
  MHD_add_response_header(resp, "Content-Type", "text/event-stream");
  MHD_add_response_header(resp, "Cache-Control", "no-cache");
  MHD_RESULT r = MHD_queue_response(c, 200, resp);
  MHD_destroy_response(resp);
  return r;
}

static MHD_RESULT logs(mbd *d, struct MHD_Connection *c, mbd_model *m) {
  const char *fl = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "follow");
  if (fl && strcmp(fl, "0") != 0 && strcmp(fl, "false") != 0)
    return logs_follow(d, c, m);
  size_t cap = 256 * 1024, n = 0;
  char *buf = malloc(cap);
  if (buf == NULL)
    return MHD_NO;
  pthread_rwlock_rdlock(&d->reload_rw);
  if (m->worker != NULL)
    n = mbd_worker_logs(m->worker, buf, cap);
  pthread_rwlock_unlock(&d->reload_rw);
  if (n == 0) {
    free(buf);
    return mbd_reply_text(c, 200, "text/plain; charset=utf-8", "", 0);
  }
  const char *tail = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "tail");
  char *start = buf;
  if (tail) {
    long want = strtol(tail, NULL, 10);
    long lines = 0;
    for (char *p = buf + n; p > buf && want > 0; p--)
      if (p[-1] == '\n' && p != buf + n && ++lines >= want) {
        start = p;
        break;
      }
  }
  MHD_RESULT r = mbd_reply_text(c, 200, "text/plain; charset=utf-8", start,
                                n - (size_t)(start - buf));
  free(buf);
  return r;
}

/* ------------------------------------------------------------------------ */
/* Leases                                                                    */

static MHD_RESULT lease_route(mbd *d, struct MHD_Connection *c, const char *method,
                              const char *rest, mbd_req *r) {
  char *end;
  unsigned long long id = strtoull(rest, &end, 10);
  if (id == 0 || (*end != '\0' && strcmp(end, "/renew") != 0))
    return mbd_reply_error(c, 404, "not_found", "no such lease route", 0);
  mb_lease l = {id, 0};
  if (strcmp(end, "/renew") == 0 && strcmp(method, "POST") == 0) {
    char err[256] = "";
    json_t *body = body_json(r, err, sizeof(err));
    if (body == NULL)
      return mbd_reply_error(c, 400, "bad_request", err, 0);
    int64_t ttl = 60000;
    json_t *v = json_object_get(body, "ttl");
    int bad = v && keep_alive_of(v, &ttl, err, sizeof(err)) != 0;
    json_decref(body);
    if (bad || ttl <= 0)
      return mbd_reply_error(c, 400, "bad_request", err[0] ? err : "ttl must be positive", 0);
    int rc = mb_lease_renew(d->ctx, l, ttl);
    if (rc == MB_ELOST)
      return mbd_reply_error(c, 410, "lease_lost",
                             "the model was lost while the lease was held; release it", 0);
    if (rc != 0)
      return mbd_reply_error(c, 404, "not_found", "no such lease (released or expired)", 0);
    json_t *o = json_pack("{s:s,s:o}", "lease", rest, "expires_at",
                          time_or_null(d, mb_ctx_now(d->ctx) + (uint64_t)ttl * 1000000u));
    return mbd_reply_json(c, 200, o);
  }
  if (*end == '\0' && strcmp(method, "DELETE") == 0) {
    int rc = mb_release(d->ctx, l);
    if (rc == MB_ELOST) { /* released; its holder learns its work ran on a lost model */
      mbd_leases_forget(d, id);
      return mbd_reply_error(c, 410, "lease_lost",
                             "the model was lost while the lease was held; the lease ended", 0);
    }
    if (rc != 0)
      return mbd_reply_error(c, 404, "not_found", "no such lease (released or expired)", 0);
    mbd_leases_forget(d, id);
    return mbd_reply_json(c, 200, json_pack("{s:s,s:b}", "lease", rest, "released", 1));
  }
  return mbd_reply_error(c, 405, "method_not_allowed", "POST .../renew or DELETE a lease", 0);
}

/* ------------------------------------------------------------------------ */
/* Events (server-sent)                                                      */

typedef struct sse {
  mbd *d;
  uint64_t next; /* seq of the next event to send */
  char *pending;
  size_t pending_len, pending_off;
} sse;

static ssize_t sse_read(void *cls, uint64_t pos, char *buf, size_t max) {
  sse *s = cls;
  mbd *d = s->d;
  (void)pos;
  if (s->pending == NULL) {
    pthread_mutex_lock(&d->mu);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 15;
    while (!d->stopping && s->next >= d->ev_next)
      if (pthread_cond_timedwait(&d->ev_cv, &d->mu, &ts) != 0)
        break;
    if (d->stopping) {
      pthread_mutex_unlock(&d->mu);
      return MHD_CONTENT_READER_END_OF_STREAM;
    }
    if (s->next < d->ev_next) {
      /* A client that fell more than the ring behind skips ahead, told so. */
      if (d->ev_next - s->next > MBD_EVENT_RING) {
        uint64_t lost = d->ev_next - MBD_EVENT_RING - s->next;
        s->next = d->ev_next - MBD_EVENT_RING;
        size_t n = (size_t)snprintf(NULL, 0, "event: dropped\ndata: {\"dropped\":%llu}\n\n",
                                    (unsigned long long)lost);
        s->pending = malloc(n + 1);
        if (s->pending)
          snprintf(s->pending, n + 1, "event: dropped\ndata: {\"dropped\":%llu}\n\n",
                   (unsigned long long)lost);
        s->pending_len = n;
      } else {
        const mbd_event_entry *e = &d->ring[s->next % MBD_EVENT_RING];
        size_t n = strlen(e->json) + 32;
        s->pending = malloc(n);
        if (s->pending)
          s->pending_len = (size_t)snprintf(s->pending, n, "id: %llu\ndata: %s\n\n",
                                            (unsigned long long)e->seq, e->json);
        s->next++;
      }
    } else {
      s->pending = strdup(": keep-alive\n\n");
      s->pending_len = s->pending ? strlen(s->pending) : 0;
    }
    s->pending_off = 0;
    pthread_mutex_unlock(&d->mu);
    if (s->pending == NULL)
      return MHD_CONTENT_READER_END_WITH_ERROR;
  }
  size_t n = s->pending_len - s->pending_off;
  if (n > max)
    n = max;
  memcpy(buf, s->pending + s->pending_off, n);
  s->pending_off += n;
  if (s->pending_off == s->pending_len) {
    free(s->pending);
    s->pending = NULL;
  }
  return (ssize_t)n;
}

static void sse_free(void *cls) {
  sse *s = cls;
  free(s->pending);
  free(s);
}

static MHD_RESULT events(mbd *d, struct MHD_Connection *c) {
  sse *s = calloc(1, sizeof(*s));
  if (s == NULL)
    return MHD_NO;
  s->d = d;
  pthread_mutex_lock(&d->mu);
  s->next = d->ev_next; /* from now on; Last-Event-ID resumes */
  const char *last = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Last-Event-ID");
  if (last) {
    unsigned long long id = strtoull(last, NULL, 10);
    if (id + 1 < d->ev_next)
      s->next = id + 1;
  }
  pthread_mutex_unlock(&d->mu);
  struct MHD_Response *resp =
      MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, sse_read, s, sse_free);
  if (resp == NULL) {
    free(s);
    return MHD_NO;
  }
  MHD_add_response_header(resp, "Content-Type", "text/event-stream");
  MHD_add_response_header(resp, "Cache-Control", "no-cache");
  MHD_RESULT r = MHD_queue_response(c, 200, resp);
  MHD_destroy_response(resp);
  return r;
}

/* ------------------------------------------------------------------------ */
/* Metrics                                                                   */

static void metric_head(FILE *f, const char *name, const char *type, const char *help) {
  fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static MHD_RESULT metrics(mbd *d, struct MHD_Connection *c) {
  const mbd_models *ms = mbd_models_get(d);
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  if (f == NULL)
    return MHD_NO;
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
  pthread_mutex_lock(&d->mu);
  for (size_t i = 0; i < ms->n; i++)
    for (int k = 1; k <= 5; k++)
      fprintf(f, "modelbuf_requests_total{model=\"%s\",code=\"%dxx\"} %llu\n",
              ms->m[i]->name, k, (unsigned long long)ms->m[i]->http_codes[k]);
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
  pthread_mutex_unlock(&d->mu);
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
  pthread_rwlock_rdlock(&d->reload_rw);
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
  pthread_rwlock_unlock(&d->reload_rw);
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
  fclose(f);
  MHD_RESULT r = mbd_reply_text(c, 200, "text/plain; version=0.0.4; charset=utf-8", buf, len);
  free(buf);
  return r;
}

/* ------------------------------------------------------------------------ */
/* Health, devices, cleanup, compatibility                                   */

static MHD_RESULT health(mbd *d, struct MHD_Connection *c) {
  const mbd_models *ms = mbd_models_get(d);
  int active = 0, queued = 0, gpu = 0;
  for (size_t i = 0; i < ms->n; i++) {
    mb_status st;
    if (mb_model_status(d->ctx, ms->m[i]->name, &st) == 0) {
      active += st.inflight;
      queued += st.queued;
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
  const char *state = __atomic_load_n(&d->stopping, __ATOMIC_ACQUIRE) ? "stopping" : "ok";
  return mbd_reply_json(
      c, 200,
      json_pack("{s:s,s:s,s:f,s:i,s:i,s:b,s:o}", "status", state,
                "version", mb_version(), "uptime_s", (double)up_ms / 1000.0, "active_jobs",
                active, "queued", queued, "gpu_available", gpu, "devices", devices_json(d)));
}

static MHD_RESULT cleanup(mbd *d, struct MHD_Connection *c) {
  const mbd_models *ms = mbd_models_get(d);
  json_t *done = json_array();
  pthread_rwlock_rdlock(&d->reload_rw);
  for (size_t i = 0; i < ms->n; i++) {
    char err[256];
    if (ms->m[i]->worker && mbd_worker_cleanup(ms->m[i]->worker, err, sizeof(err)) == 0)
      json_array_append_new(done, json_string(ms->m[i]->name));
  }
  pthread_rwlock_unlock(&d->reload_rw);
  return mbd_reply_json(c, 200,
                        json_pack("{s:o,s:o}", "cleaned", done, "devices", devices_json(d)));
}

/* The fields of the common Python GPU-manager APIs, per model. */
static json_t *compat_status(mbd *d, mbd_model *m) {
  mb_status st;
  if (mb_model_status(d->ctx, m->name, &st) != 0)
    return json_null();
  return json_pack("{s:s,s:s,s:f,s:f,s:f,s:{s:I,s:I,s:I,s:I}}", "model", m->name,
                   "model_location", mb_location_name(st.location), "idle_time",
                   (double)st.idle_ns / 1e9, "keep_alive", st.keep_alive_ms == MB_FOREVER ? -1.0
                                                        : (double)st.keep_alive_ms / 1000.0,
                   "gpu_memory_allocated_gb", (double)st.vram_bytes / 1e9, "statistics",
                   "total_loads", (json_int_t)st.stats.loads, "gpu_to_cpu",
                   (json_int_t)st.stats.offloads, "cpu_to_gpu", (json_int_t)st.stats.restores,
                   "full_releases", (json_int_t)st.stats.full_releases);
}

/* POST /api/gpu/offload | /api/gpu/release: {"model": NAME} or every model. */
static MHD_RESULT compat_action(mbd *d, struct MHD_Connection *c, mbd_req *r, int release) {
  const mbd_models *ms = mbd_models_get(d);
  char err[256] = "";
  json_t *body = body_json(r, err, sizeof(err));
  if (body == NULL)
    return mbd_reply_error(c, 400, "bad_request", err, 0);
  const char *only = json_string_value(json_object_get(body, "model"));
  if (only && mbd_find(d, only) == NULL) {
    json_decref(body);
    return mbd_reply_error(c, 404, "not_found", "unknown model", 0);
  }
  json_t *out = json_object();
  for (size_t i = 0; i < ms->n; i++) {
    mbd_model *m = ms->m[i];
    if (only && m != mbd_find(d, only))
      continue;
    mb_status st;
    if (mb_model_status(d->ctx, m->name, &st) != 0 || st.state == MB_STATE_UNLOADED)
      continue;
    int rc = release ? mb_unload(d->ctx, m->name, err, sizeof(err))
                     : mb_offload(d->ctx, m->name, err, sizeof(err));
    json_object_set_new(out, m->name, rc == 0 ? json_string("ok") : json_string(err));
  }
  json_decref(body);
  return mbd_reply_json(c, 200, json_pack("{s:s,s:o}", "status", "ok", "models", out));
}

/* ------------------------------------------------------------------------ */
/* Routing                                                                   */

/* GET /api/trace: the requests served, as the simulator's CSV trace
 * (t,model,duration; t in seconds from the first request kept). */
static MHD_RESULT trace(mbd *d, struct MHD_Connection *c) {
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  if (f == NULL)
    return MHD_NO;
  fprintf(f, "t,model,duration\n");
  pthread_mutex_lock(&d->mu);
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
  pthread_mutex_unlock(&d->mu);
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
  MHD_RESULT r = mbd_reply_text(c, 200, "text/csv", buf, len);
  free(buf);
  return r;
}

int mbd_api_route(mbd *d, struct MHD_Connection *c, const char *method, const char *url,
                  mbd_req *r, MHD_RESULT *res) {
  const mbd_models *ms = mbd_models_get(d);
  int get = strcmp(method, "GET") == 0, post = strcmp(method, "POST") == 0;
  if (strcmp(url, "/health") == 0 && get) {
    *res = health(d, c);
    return 1;
  }
  if (strcmp(url, "/metrics") == 0 && get) {
    *res = metrics(d, c);
    return 1;
  }
  if (strcmp(url, "/api/events") == 0 && get) {
    *res = events(d, c);
    return 1;
  }
  if (strcmp(url, "/api/trace") == 0 && get) {
    *res = trace(d, c);
    return 1;
  }
  if (strcmp(url, "/api/devices") == 0 && get) {
    *res = mbd_reply_json(c, 200, json_pack("{s:o}", "devices", devices_json(d)));
    return 1;
  }
  if ((strcmp(url, "/api/cleanup") == 0 || strcmp(url, "/cleanup-memory") == 0) && post) {
    *res = cleanup(d, c);
    return 1;
  }
  if (strcmp(url, "/api/models") == 0 && get) {
    json_t *a = json_array();
    for (size_t i = 0; i < ms->n; i++)
      json_array_append_new(a, mbd_model_json(d, ms->m[i]));
    *res = mbd_reply_json(c, 200, json_pack("{s:o}", "models", a));
    return 1;
  }
  if (strcmp(url, "/api/gpu/status") == 0 && get) {
    json_t *o = json_object();
    for (size_t i = 0; i < ms->n; i++)
      json_object_set_new(o, ms->m[i]->name, compat_status(d, ms->m[i]));
    *res = mbd_reply_json(c, 200, json_pack("{s:s,s:o,s:o}", "status", "ok", "models", o,
                                            "devices", devices_json(d)));
    return 1;
  }
  if ((strcmp(url, "/api/gpu/offload") == 0 || strcmp(url, "/api/gpu/release") == 0) && post) {
    *res = compat_action(d, c, r, strcmp(url, "/api/gpu/release") == 0);
    return 1;
  }
  if (strncmp(url, "/api/leases/", 12) == 0) {
    *res = lease_route(d, c, method, url + 12, r);
    return 1;
  }
  if (strncmp(url, "/api/models/", 12) == 0) {
    char name[MBD_MODEL_NAME_MAX + 1];
    const char *slash;
    if (mbd_path_model(url + 12, name, &slash) != 0) {
      *res = mbd_reply_error(c, 404, "not_found", "unknown model", 0);
      return 1;
    }
    mbd_model *m = mbd_find_name(d, name);
    if (m == NULL) {
      char msg[160];
      snprintf(msg, sizeof(msg), "unknown model '%s'", name);
      *res = mbd_reply_error(c, 404, "not_found", msg, 0);
      return 1;
    }
    if (slash == NULL && get) {
      *res = model_status(c, d, m, 200);
    } else if (slash && strcmp(slash, "/logs") == 0 && get) {
      *res = logs(d, c, m);
    } else if (slash && post) {
      *res = model_action(d, c, m, slash + 1, r);
    } else {
      *res = mbd_reply_error(c, 405, "method_not_allowed", "see GET/POST /api/models/{name}", 0);
    }
    return 1;
  }
  return 0;
}
