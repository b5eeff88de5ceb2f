/*
 * harness.h - what the core's unit tests share: a manual clock, an executor
 * that keeps the jobs the core starts so a test completes them when it
 * chooses (the one allowed stand-in: scripted backend completions), a
 * recorder of events, and answers of async requests.
 *
 * Nothing here sleeps: time moves only when a test calls h_advance().
 */
#ifndef MB_TEST_HARNESS_H
#define MB_TEST_HARNESS_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <setjmp.h>
#include <cmocka.h>

#include "modelbuf/modelbuf.h"

#define H_MAX_JOBS 256
#define H_MAX_EVENTS 4096
#define MS 1000000ull

typedef struct h_event {
  mb_event_type type;
  char model[64];
  mb_state from, to;
  char reason[128];
  uint64_t time_ns;
  uint64_t seq;
} h_event;

typedef struct h_answer {
  int done;
  int rc;
  mb_lease lease;
  uint64_t queue_ns, load_ns;
  char msg[256];
  int order; /* 1, 2, ... in the order answers arrived */
} h_answer;

typedef struct harness {
  uint64_t now;
  mb_ctx *ctx;
  mb_job *jobs[H_MAX_JOBS];
  int njobs;
  h_event events[H_MAX_EVENTS];
  int nevents;
  int answers;
} harness;

static inline uint64_t h_clock(void *arg) {
  return ((harness *)arg)->now;
}

static inline void h_submit(void *arg, mb_job *job) {
  harness *h = arg;
  assert_true(h->njobs < H_MAX_JOBS);
  h->jobs[h->njobs++] = job;
}

static inline void h_on_event(const mb_event *ev, void *arg) {
  harness *h = arg;
  if (h->nevents >= H_MAX_EVENTS)
    return;
  h_event *e = &h->events[h->nevents++];
  e->type = ev->type;
  snprintf(e->model, sizeof(e->model), "%s", ev->model);
  e->from = ev->from;
  e->to = ev->to;
  snprintf(e->reason, sizeof(e->reason), "%s", ev->reason);
  e->time_ns = ev->time_ns;
  e->seq = ev->seq;
}

/* A manual context: clock at 1 s, executor kept by the harness. */
static inline void h_init_opts(harness *h, mb_ctx_opts *o) {
  memset(h, 0, sizeof(*h));
  h->now = 1000 * MS;
  mb_ctx_opts_init(o);
  o->manual = 1;
  o->clock = h_clock;
  o->clock_arg = h;
  o->executor.submit = h_submit;
  o->executor.arg = h;
  o->on_event = h_on_event;
  o->event_arg = h;
  o->host_budget_bytes = 1ull << 40;
}

static inline void h_start(harness *h, mb_ctx_opts *o) {
  char err[256] = "";
  int rc = mb_ctx_new(o, &h->ctx, err, sizeof(err));
  if (rc != 0)
    fail_msg("mb_ctx_new: %s", err);
}

/* One device with the given usable bytes (capacity = bytes, no reserve). */
static inline int h_device(harness *h, uint64_t bytes) {
  mb_device_opts d;
  int idx = -1;
  char err[256] = "";
  mb_device_opts_init(&d);
  d.capacity_bytes = bytes;
  int rc = mb_device_add(h->ctx, &d, &idx, err, sizeof(err));
  if (rc != 0)
    fail_msg("mb_device_add: %s", err);
  return idx;
}

/* A backend whose functions are never called: the tests script completions. */
static inline int h_nop(mb_op *op) { (void)op; return 0; }
static const mb_backend h_backend = {"scripted", h_nop, h_nop, h_nop, h_nop, NULL, NULL, NULL,
                                     NULL};
static const mb_backend h_backend_no_offload = {"scripted", h_nop, NULL, NULL, h_nop,
                                                NULL,       NULL,  NULL, NULL};

static inline void h_model(harness *h, const char *name, const mb_model_opts *o) {
  char err[256] = "";
  int rc = mb_model_add(h->ctx, name, &h_backend, NULL, o, err, sizeof(err));
  if (rc != 0)
    fail_msg("mb_model_add %s: %s", name, err);
}

/* Model with a footprint, keep-alive, and the rest default. */
static inline void h_model_fp(harness *h, const char *name, uint64_t bytes, int64_t ka_ms) {
  mb_model_opts o;
  mb_model_opts_init(&o);
  o.footprint_bytes = bytes;
  o.keep_alive_ms = ka_ms;
  h_model(h, name, &o);
}

static inline int h_step(harness *h) {
  int n = mb_ctx_step(h->ctx);
  assert_true(n >= 0);
  return n;
}

/* Steps until nothing more happens. */
static inline void h_settle(harness *h) {
  for (int i = 0; i < 100 && h_step(h) > 0; i++)
    ;
}

static inline void h_advance(harness *h, uint64_t ns) {
  h->now += ns;
  h_settle(h);
}

/* Moves the clock to the next armed timer and steps. */
static inline void h_to_next_timer(harness *h) {
  uint64_t d = mb_ctx_next_deadline(h->ctx);
  assert_true(d != UINT64_MAX);
  if (d > h->now)
    h->now = d;
  h_settle(h);
}

static inline void h_done(const mb_result *res, void *arg) {
  h_answer *a = arg;
  assert_false(a->done); /* answered exactly once */
  a->done = 1;
  a->rc = res->rc;
  a->lease = res->lease;
  a->queue_ns = res->queue_ns;
  a->load_ns = res->load_ns;
  snprintf(a->msg, sizeof(a->msg), "%s", res->message ? res->message : "");
  static int counter;
  a->order = ++counter;
}

static inline void h_acquire(harness *h, const char *name, const mb_acquire_opts *o, h_answer *a) {
  memset(a, 0, sizeof(*a));
  assert_int_equal(mb_acquire_async(h->ctx, name, o, h_done, a, NULL), 0);
  h_settle(h);
}

static inline void h_acquire_prio(harness *h, const char *name, int prio, h_answer *a) {
  mb_acquire_opts o;
  mb_acquire_opts_init(&o);
  o.priority = prio;
  h_acquire(h, name, &o, a);
}

static inline void h_release(harness *h, h_answer *a) {
  assert_int_equal(a->rc, 0);
  assert_int_equal(mb_release(h->ctx, a->lease), 0);
  h_settle(h);
}

/* Finds the pending job of a model; fails the test if there is none. */
static inline mb_job *h_job(harness *h, const char *model) {
  for (int i = 0; i < h->njobs; i++)
    if (strcmp(mb_job_model(h->jobs[i]), model) == 0)
      return h->jobs[i];
  fail_msg("no pending job for %s", model);
  return NULL;
}

static inline int h_has_job(harness *h, const char *model) {
  for (int i = 0; i < h->njobs; i++)
    if (strcmp(mb_job_model(h->jobs[i]), model) == 0)
      return 1;
  return 0;
}

static inline void h_take(harness *h, mb_job *j) {
  for (int i = 0; i < h->njobs; i++) {
    if (h->jobs[i] == j) {
      h->jobs[i] = h->jobs[--h->njobs];
      return;
    }
  }
}

/* Completes the model's pending job with rc after took_ms of clock time. */
static inline void h_complete_after(harness *h, const char *model, int rc, uint64_t took_ms,
                             const mb_usage *u) {
  mb_job *j = h_job(h, model);
  h_take(h, j);
  h->now += took_ms * MS;
  mb_job_complete(j, rc, rc ? "scripted failure" : NULL, u);
  h_settle(h);
}

static inline void h_complete(harness *h, const char *model, int rc) {
  h_complete_after(h, model, rc, 0, NULL);
}

static inline mb_job_kind h_job_kind(harness *h, const char *model) {
  return mb_job_get_kind(h_job(h, model));
}

static inline mb_state h_state(harness *h, const char *model) {
  mb_status st;
  assert_int_equal(mb_model_status(h->ctx, model, &st), 0);
  return st.state;
}

static inline mb_status h_status(harness *h, const char *model) {
  mb_status st;
  assert_int_equal(mb_model_status(h->ctx, model, &st), 0);
  return st;
}

static inline uint64_t h_dev_used(harness *h, int dev) {
  mb_device_info di;
  assert_int_equal(mb_device_info_get(h->ctx, dev, &di), 0);
  return di.used_bytes;
}

/* Completes every pending job successfully, in order, until none is left. */
static inline void h_complete_all(harness *h) {
  for (int guard = 0; h->njobs > 0 && guard < 1000; guard++) {
    mb_job *j = h->jobs[0];
    h_take(h, j);
    mb_job_complete(j, 0, NULL, NULL);
    h_settle(h);
  }
}

static inline void h_free(harness *h) {
  h_complete_all(h);
  int rc = mb_ctx_free(h->ctx);
  assert_int_equal(rc, 0);
  h->ctx = NULL;
}

/* Counts state events of a model into state `to`. */
static inline int h_count_to(harness *h, const char *model, mb_state to) {
  int n = 0;
  for (int i = 0; i < h->nevents; i++)
    if (h->events[i].type == MB_EVENT_STATE && strcmp(h->events[i].model, model) == 0 &&
        h->events[i].to == to)
      n++;
  return n;
}

#endif /* MB_TEST_HARNESS_H */
