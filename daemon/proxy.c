/*
 * proxy.c - requests to models: ANY /m/{name}/{path} and the OpenAI routes
 * (POST /v1/..., routed by the body's "model"), forwarded to the model's
 * worker under a lease, or served in process by its plugin (a tensors
 * model's routes are tensors.c's, through the same lease).
 *
 * A request here is a transaction (px) that outlives its client if it
 * must: the lease is asked for once the body is whole (request_buffering,
 * the default: a slow client never holds a model), the core answers on its
 * own thread and the answer is posted back to the request's loop thread;
 * if the client left meanwhile, the wait is cancelled (mb_cancel) and a
 * lease granted anyway is released at once, and nothing reaches the
 * worker. Granted, the request goes to the worker on a connection of the
 * thread's pool (upstream.c): the path and query exactly as the client
 * sent them, the client's headers but the hop-by-hop ones and the
 * daemon's own, and a body the daemon frames itself from what it
 * received. The worker's answer streams back as it comes, under the
 * client's pace (the worker's connection is paused while the client is
 * slower). A failure before the answer started is a 502 (504 when
 * busy_timeout killed the worker); after, the client's connection is cut
 * so that no cut answer looks whole.
 *
 * Loop threads only, but for lease_done (the core's thread) and the
 * plugin task's run (the task pool), which touch only their px fields.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "api_body.h"
#include "daemon.h"
#include "forward.h"
#include "front.h"
#include "front_int.h"
#include "modelbuf/plugin.h"
#include "proxy.h"
#include "tasks.h"
#include "tensors.h"
#include "units.h"
#include "upstream.h"

/* Client output above which the worker's connection is paused. */
#define PROXY_HIGH (256 * 1024)
/* Streamed request body waiting for the worker above which the client's
 * body stops being read. */
#define STREAM_HIGH (256 * 1024)
/* A worker's answer kept for a slow client: in memory up to RESP_MEM,
 * then in a temporary file, up to RESP_MAX; beyond, the worker waits. */
#define RESP_MEM (1 << 20)
#define RESP_MAX (1ULL << 30)

static double wall_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

void mbd_proxy_trace(mbd *d, const char *model, const mb_result *g, double granted_at) {
  double arrived = granted_at - (double)(g->queue_ns + g->load_ns) / 1e9;
  double held = wall_s() - granted_at;
  mbd_trace_add(d, model, arrived, held > 0 ? held : 0);
}

/* ------------------------------------------------------------------------ */
/* Leases for requests                                                       */

/*
 * A request's transaction. Owned by the request while the client is there
 * (r->ctx), by itself once it left: then it lives until the core's answer
 * comes (to release a lease granted anyway) and frees itself.
 */
struct mbd_px {
  mbd_post post;          /* the core's answer, and the plugin task's end */
  mbd_task task;
  mbd *d;
  mbd_req *r;             /* NULL once the client left */
  mbd_loop *loop;
  mbd_fthread *t;
  mbd_model *m;           /* as resolved; cur: its entry when granted */
  mbd_model *cur;
  mbd_px_granted_fn granted_fn;
  void *granted_arg;
  void *user;
  uint64_t req_id;
  mb_acquire_opts ao;     /* as asked (asked again once when the worker died meanwhile) */
  int asked_again;
  int waiting;            /* asked, not answered yet */
  mb_result res;
  char msg[256];
  int held;               /* the lease is ours */
  double granted_at;
  /* Forwarding to a worker. */
  mbd_up *up;
  /* The worker's answer that the client has not taken yet (as nginx's
   * proxy_buffering): memory, then a temporary file, so that a slow
   * client does not hold the worker or the lease; rsp_off is what went
   * to the client. up_ended: the worker's answer is whole. */
  mbd_spool rsp;
  uint64_t rsp_off;
  int up_ended;
  int busy;               /* bracketed by mbd_worker_busy_begin */
  int clean_after;        /* sent to a worker with cleanup: after_request */
  int streaming;          /* the body streams to the worker */
  int body_ended;
  char *fwd;              /* the request head for the worker */
  size_t fwd_len;
  int is_openai;
  /* A plugin's request and answer, made on the task pool: everything it
   * reads is the transaction's own, so the client may leave meanwhile. */
  mb_plugin_response presp;
  int prc;
  char perr[400];
  int fail_killed;
  mb_plugin_header *phdrs;
  size_t n_phdrs;
  char *phbuf;
  char *ppath, *pquery;
  char pmethod[33];
  mbd_spool pbody;
};

/* Reads X-Modelbuf-Priority / -Keep-Alive / -Queue-Timeout, range-checked. */
static int acquire_opts(mbd_req *r, mb_acquire_opts *o, char *err, size_t len) {
  char v[64];
  mb_acquire_opts_init(o);
  if (mbd_req_header(r, "X-Modelbuf-Priority", v, sizeof(v))) {
    char *end;
    long long p = strtoll(v, &end, 10);
    if (end == v || *end || p < MBD_PRIORITY_MIN || p > MBD_PRIORITY_MAX) {
      snprintf(err, len, "X-Modelbuf-Priority must be an integer from %d to %d", MBD_PRIORITY_MIN,
               MBD_PRIORITY_MAX);
      return MB_EINVAL;
    }
    o->priority = (int)p;
  }
  if (mbd_req_header(r, "X-Modelbuf-Keep-Alive", v, sizeof(v)) &&
      mbd_client_duration_ms("X-Modelbuf-Keep-Alive", v, MBD_CD_ZERO | MBD_CD_FOREVER,
                             &o->keep_alive_ms, err, len) != 0)
    return MB_EINVAL;
  if (mbd_req_header(r, "X-Modelbuf-Queue-Timeout", v, sizeof(v)) &&
      mbd_client_duration_ms("X-Modelbuf-Queue-Timeout", v, MBD_CD_FOREVER, &o->timeout_ms, err,
                             len) != 0)
    return MB_EINVAL;
  return 0;
}

static void px_free(mbd_px *x) {
  if (x->up)
    mbd_up_abort(x->up);
  if (x->busy && x->cur && x->cur->worker)
    mbd_worker_busy_end(x->cur->worker);
  mb_plugin_response_free(x->cur ? x->cur->plugin : NULL, &x->presp);
  mbd_spool_free(&x->rsp);
  free(x->phdrs);
  free(x->phbuf);
  mbd_spool_free(&x->pbody);
  free(x->ppath);
  free(x->pquery);
  free(x->fwd);
  free(x);
}

/*
 * cleanup: after_request. The worker's cleanup hook runs on the task pool
 * once the worker is done with a request (its answer may still be on its
 * way to a slow client: the client never waits for it), under the
 * request's lease, which is released when the hook returns: the slot
 * stays taken until the worker is clean, so with max_concurrency 1 the
 * next request is sent to it only after its cleanup. A hook that fails or
 * times out (its timeout) is logged; the lease is released all the same.
 */
typedef struct after_req {
  mbd_task task;
  mbd *d;
  mbd_model *m;
  mb_lease lease;
} after_req;

static mbd_ratelimit rl_cleanup;

static void after_run(mbd_task *t) {
  after_req *a = (after_req *)t;
  char err[300] = "";
  int rc = mbd_worker_cleanup(a->m->worker, err, sizeof(err));
  if (rc != 0 && rc != MB_ESTATE) /* not running any more: nothing to clean */
    mbd_log_limited(a->d, &rl_cleanup, MBD_LOG_WARN, "cleanup after a request failed",
                    "model=%s why=\"%s\"", a->m->name, err);
  rc = mb_release(a->d->ctx, a->lease);
  if (rc != 0 && rc != MB_EINVAL && rc != MB_ELOST)
    mbd_log(a->d, MBD_LOG_WARN, "lease not released", "model=%s why=\"%s\"", a->m->name,
            mb_strerror(rc));
}

static void after_done(mbd_task *t) { free(t); }

/* Hands x's lease to a cleanup on the task pool. 0, or -1 (no memory:
 * the caller releases the lease itself). */
static int cleanup_after(mbd_px *x) {
  after_req *a = calloc(1, sizeof(*a));
  if (a == NULL)
    return -1;
  a->d = x->d;
  a->m = x->cur;
  a->lease = x->res.lease;
  a->task.loop = x->loop;
  a->task.run = after_run;
  a->task.done = after_done;
  mbd_tasks_submit(x->d, &a->task);
  return 0;
}

/* The worker is done with the request: its connection, its busy slot
 * and the lease go back (the client may still be taking the answer);
 * with cleanup: after_request the lease goes back after the cleanup. */
static void px_release(mbd_px *x) {
  mbd *d = x->d;
  if (x->up) {
    mbd_up_abort(x->up);
    x->up = NULL;
  }
  if (x->busy && x->cur && x->cur->worker)
    mbd_worker_busy_end(x->cur->worker);
  x->busy = 0;
  if (x->held) {
    mbd_proxy_trace(d, x->cur ? x->cur->name : x->m->name, &x->res, x->granted_at);
    if (x->clean_after && !__atomic_load_n(&d->stopping, __ATOMIC_ACQUIRE) &&
        cleanup_after(x) == 0) {
      x->held = 0;
      x->clean_after = 0;
      return;
    }
    int rc = mb_release(d->ctx, x->res.lease);
    /* MB_ELOST: the worker was lost meanwhile; the lease ended with it. */
    if (rc != 0 && rc != MB_EINVAL && rc != MB_ELOST)
      mbd_log(d, MBD_LOG_WARN, "lease not released", "model=%s why=\"%s\"", x->m->name,
              mb_strerror(rc));
    x->held = 0;
  }
}

static void px_finish(mbd_px *x) {
  px_release(x);
  if (x->r) {
    x->r->ctx = NULL;
    x->r->on_gone = NULL;
    x->r->on_drain = NULL;
    x->r->on_body = NULL;
    x->r->on_body_end = NULL;
    x->r = NULL;
  }
  px_free(x);
}

/* The client left. */
static void px_gone(mbd_req *r) {
  mbd_px *x = r->ctx;
  x->r = NULL;
  if (x->waiting) {
    /* Out of the queue at once; the answer still comes (done is called
     * exactly once) and frees x, releasing a lease granted meanwhile. */
    if (mb_cancel(x->d->ctx, x->req_id) != 0) {
      /* answered already: the post on its way frees x */
    }
    return;
  }
  px_finish(x);
}

static void on_answer(mbd_post *p);

/* The core's answer to the acquire (the core's thread). */
static void lease_done(const mb_result *res, void *arg) {
  mbd_px *x = arg;
  x->res = *res;
  snprintf(x->msg, sizeof(x->msg), "%s", res->message ? res->message : "");
  x->res.message = x->msg;
  x->post.fn = on_answer;
  mbd_loop_post(x->loop, &x->post);
}

static void answered(mbd_px *x);

static void on_answer(mbd_post *p) { answered((mbd_px *)p); }

/* The core answered (or granted at once): on the request's loop thread. */
static void answered(mbd_px *x) {
  mbd *d = x->d;
  x->waiting = 0;
  if (x->res.rc == 0) {
    x->held = 1;
    x->granted_at = wall_s();
  }
  if (x->r == NULL) { /* the client left while it waited */
    px_finish(x);
    return;
  }
  if (x->res.rc != 0) {
    const char *code;
    int status = mbd_http_status(x->res.rc, &code);
    mbd_count_code(d, x->m, status);
    mbd_reply_error(x->r, status, code, x->msg[0] ? x->msg : mb_strerror(x->res.rc),
                    status == 503 ? 1 : 0);
    px_finish(x);
    return;
  }
  /* The lease keeps the model from a reload; use its current entry. */
  x->cur = mbd_current(d, x->m);
  if (x->cur == NULL) {
    mbd_reply_error(x->r, 404, "not_found", "the model was removed by a reload", 0);
    px_finish(x);
    return;
  }
  x->granted_fn(x, x->r, x->granted_arg);
}

int mbd_px_lease(mbd_req *r, mbd_model *m, unsigned flags, mbd_px_granted_fn fn, void *arg) {
  mbd *d = r->d;
  char err[256] = "";
  mb_acquire_opts ao;
  if (acquire_opts(r, &ao, err, sizeof(err)) != 0) {
    mbd_reply_error(r, 400, "bad_request", err, 0);
    return -1;
  }
  mbd_px *x = calloc(1, sizeof(*x));
  if (x == NULL) {
    mbd_reply_error(r, 500, "internal", "out of memory", 0);
    return -1;
  }
  x->d = d;
  x->r = r;
  x->t = r->t;
  mbd_spool_init(&x->pbody, 0, NULL);
  mbd_spool_init(&x->rsp, RESP_MEM, d->cfg->temp_dir);
  x->loop = mbd_req_loop(r);
  x->m = m;
  x->granted_fn = fn;
  x->granted_arg = arg;
  x->streaming = (flags & MBD_PX_STREAMING) != 0;
  x->is_openai = (flags & MBD_PX_OPENAI) != 0;
  r->ctx = x;
  r->on_gone = px_gone;
  if (x->streaming)
    mbd_req_pause_body(r); /* until the worker's connection is there */
  x->ao = ao;
  /* Granted at once when nothing has to wait: no trip through the core's
   * thread (mb_acquire_try). */
  int rc = mb_acquire_try(d->ctx, m->name, &ao, &x->res);
  if (rc == 1) {
    x->msg[0] = '\0';
    x->res.message = x->msg;
    answered(x);
    return 0;
  }
  x->waiting = 1;
  rc = rc < 0 ? rc : mb_acquire_async(d->ctx, m->name, &ao, lease_done, x, &x->req_id);
  if (rc != 0) {
    x->waiting = 0;
    r->ctx = NULL;
    r->on_gone = NULL;
    free(x);
    const char *code;
    int status = mbd_http_status(rc, &code);
    mbd_count_code(d, m, status);
    mbd_reply_error(r, status, code, mb_strerror(rc), status == 503 ? 1 : 0);
    return -1;
  }
  return 0;
}

const mb_result *mbd_px_result(const mbd_px *x) { return &x->res; }
mbd_model *mbd_px_model(const mbd_px *x) { return x->cur; }
void mbd_px_done(mbd_px *x) { px_finish(x); }
mbd_px *mbd_px_of(mbd_req *r) { return r->ctx; }
void mbd_px_set_user(mbd_px *x, void *user) { x->user = user; }
void *mbd_px_user(const mbd_px *x) { return x->user; }
void mbd_px_set_on_gone(mbd_px *x, void (*fn)(mbd_req *r)) {
  if (x->r)
    x->r->on_gone = fn;
}

/* Milliseconds with one decimal ("12.3") from nanoseconds, rounded. */
static size_t ms_text(uint64_t ns, char *out) {
  uint64_t tenths = (ns + 50000) / 100000;
  char tmp[24];
  size_t n = 0;
  uint64_t whole = tenths / 10;
  do {
    tmp[n++] = (char)('0' + whole % 10);
    whole /= 10;
  } while (whole);
  for (size_t i = 0; i < n; i++)
    out[i] = tmp[n - 1 - i];
  out[n++] = '.';
  out[n++] = (char)('0' + tenths % 10);
  return n;
}

void mbd_px_timing_headers(mbd_req *r, const mb_result *g) {
  char ms[32];
  size_t n = ms_text(g->queue_ns, ms);
  mbd_resp_header_n(r, "X-Modelbuf-Queue-Ms", 19, ms, n);
  n = ms_text(g->load_ns, ms);
  mbd_resp_header_n(r, "X-Modelbuf-Load-Ms", 18, ms, n);
}

/* ------------------------------------------------------------------------ */
/* Forwarding to a worker                                                    */

/* The request head for the worker at port (forward.h). 0 or -1. */
static int build_head(mbd_px *x, mbd_req *r, int port) {
  mbd_fwd f;
  memset(&f, 0, sizeof(f));
  f.buf = r->buf;
  f.h = &r->h;
  f.target_skip = x->is_openai ? 0 : r->route.arg_off;
  f.port = port;
  f.drop_keys = r->d->cfg->n_api_keys > 0;
  if (x->streaming) {
    f.body = r->h.framing == MBD_BODY_LENGTH ? MBD_FWD_LENGTH : MBD_FWD_CHUNKED;
    f.body_len = r->h.content_length;
  } else if (r->body.total > 0) {
    f.body = MBD_FWD_LENGTH;
    f.body_len = r->body.total;
  }
  free(x->fwd);
  x->fwd = NULL;
  return mbd_forward_head(&f, &x->fwd, &x->fwd_len) == 0 ? 0 : -1;
}

static void up_head(void *arg, const char *buf, const mbd_http_head *h) {
  mbd_px *x = arg;
  mbd_req *r = x->r;
  mbd_count_code(x->d, x->cur, h->status);
  if (r == NULL)
    return;
  mbd_resp_start(r, h->status);
  int64_t length = -1;
  for (int i = 0; i < h->n_fields; i++) {
    const mbd_http_field *f = &h->fields[i];
    const char *n = buf + f->name.off;
    size_t nl = f->name.len;
    if (mbd_http_eq(n, nl, "content-length")) {
      char v[24];
      size_t vl = f->value.len < sizeof(v) - 1 ? f->value.len : sizeof(v) - 1;
      memcpy(v, buf + f->value.off, vl);
      v[vl] = '\0';
      length = strtoll(v, NULL, 10);
      continue;
    }
    if (mbd_http_field_hop(buf, h, i) || mbd_http_eq(n, nl, "date"))
      continue;
    mbd_resp_header_n(r, n, nl, buf + f->value.off, f->value.len);
  }
  mbd_px_timing_headers(r, &x->res);
  if (h->framing == MBD_BODY_CHUNKED || h->framing == MBD_BODY_CLOSE)
    length = -1;
  else if (h->framing == MBD_BODY_NONE && !r->is_head)
    length = h->status == 204 || h->status == 304 || h->status < 200 ? -1 : 0;
  mbd_resp_stream(r, NULL, length);
  if (h->framing == MBD_BODY_NONE ||
      (h->framing == MBD_BODY_LENGTH && h->content_length == 0))
    return; /* on_end comes next */
}

static void up_data(void *arg, const char *p, size_t n) {
  mbd_px *x = arg;
  if (x->r == NULL)
    return;
  if (x->rsp.total == x->rsp_off && mbd_resp_pending(x->r) < PROXY_HIGH) {
    mbd_resp_write(x->r, p, n);
    return;
  }
  /* The client is slower than the worker: keep the rest for it. */
  if (mbd_spool_append(&x->rsp, p, n) != 0) {
    mbd_resp_write(x->r, p, n); /* no room to keep it: the worker waits instead */
    if (x->up)
      mbd_up_pause(x->up, 1);
    return;
  }
  if (x->rsp.total - x->rsp_off > RESP_MAX && x->up)
    mbd_up_pause(x->up, 1);
}

/* The client took some of its answer: more from what was kept, then the
 * worker goes on (or, its answer whole, the answer ends). */
static void px_drain(mbd_req *r) {
  mbd_px *x = r->ctx;
  if (x == NULL)
    return;
  char buf[64 * 1024];
  while (x->rsp_off < x->rsp.total && mbd_resp_pending(r) < PROXY_HIGH) {
    ssize_t k = mbd_spool_read(&x->rsp, x->rsp_off, buf, sizeof(buf));
    if (k <= 0) {
      mbd_log(x->d, MBD_LOG_ERROR, "proxy: cannot read a kept answer back", "model=%s",
              x->m->name);
      mbd_resp_abort(r);
      px_finish(x);
      return;
    }
    x->rsp_off += (uint64_t)k;
    mbd_resp_write(r, buf, (size_t)k);
  }
  if (x->rsp_off < x->rsp.total)
    return;
  if (x->rsp.total > 0) { /* all taken: start over in memory */
    mbd_spool_free(&x->rsp);
    x->rsp_off = 0;
  }
  if (x->up_ended) {
    mbd_resp_end(r);
    px_finish(x);
  } else if (x->up) {
    mbd_up_pause(x->up, 0);
  }
}

static void up_end(void *arg) {
  mbd_px *x = arg;
  x->up = NULL;
  if (x->r && x->rsp_off < x->rsp.total) {
    /* The rest waits for the client; the worker and the lease are free now. */
    x->up_ended = 1;
    px_release(x);
    return;
  }
  if (x->r)
    mbd_resp_end(x->r);
  px_finish(x);
}

/* A failed worker's loss reaches the core before its client hears of it
 * (mbd_worker_failed waits for that, so it runs on the task pool), so that
 * a client that asks again is served by a new process. */
static void failed_run(mbd_task *t) {
  mbd_px *x = (mbd_px *)((char *)t - offsetof(mbd_px, task));
  mbd_worker_failed(x->cur->worker);
}

static void failed_done(mbd_task *t) {
  mbd_px *x = (mbd_px *)((char *)t - offsetof(mbd_px, task));
  if (x->r != NULL) {
    int code = x->fail_killed ? 504 : 502;
    mbd_count_code(x->d, x->cur, code);
    mbd_reply_error(x->r, code, x->fail_killed ? "timeout" : "worker_failed", x->perr, 0);
  }
  px_finish(x);
}

static void task_gone(mbd_req *r) {
  mbd_px *x = r->ctx;
  x->r = NULL; /* the task's end frees x */
}

static void up_error(void *arg, int started, const char *why) {
  mbd_px *x = arg;
  mbd *d = x->d;
  x->up = NULL;
  x->clean_after = 0; /* the worker failed: nothing to clean up on it */
  int killed = 0;
  if (x->busy && x->cur->worker) {
    killed = mbd_worker_busy_end(x->cur->worker);
    x->busy = 0;
  }
  mbd_log(d, MBD_LOG_WARN, "proxy: worker failed", "model=%s started=%d why=\"%s\"",
          x->cur->name, started, why);
  if (x->r != NULL && started) {
    mbd_resp_abort(x->r); /* the client must not take a cut answer for a whole one */
  } else if (x->r != NULL) {
    x->fail_killed = killed;
    if (killed)
      snprintf(x->perr, sizeof(x->perr),
               "the worker was busy longer than busy_timeout and was stopped");
    else
      snprintf(x->perr, sizeof(x->perr), "worker failed: %s", why);
    px_release(x);
    x->task.loop = x->loop;
    x->task.run = failed_run;
    x->task.done = failed_done;
    x->r->on_gone = task_gone;
    mbd_tasks_submit(d, &x->task);
    return;
  }
  px_finish(x);
}

static void up_writable(void *arg) {
  mbd_px *x = arg;
  if (x->r && x->streaming && !x->body_ended)
    mbd_req_resume_body(x->r);
}

static const mbd_up_cbs up_cbs = {up_head, up_data, up_end, up_error, up_writable};

/* A streamed body: each piece goes on as it comes. */
static void px_body(mbd_req *r, const char *p, size_t n) {
  mbd_px *x = r->ctx;
  if (x->up == NULL)
    return;
  mbd_up_body(x->up, p, n);
  if (x->up && mbd_up_body_pending(x->up) > STREAM_HIGH)
    mbd_req_pause_body(r);
}

static void px_body_end(mbd_req *r) {
  mbd_px *x = r->ctx;
  x->body_ended = 1;
  if (x->up)
    mbd_up_body_end(x->up);
}

static void to_worker(mbd_px *x, mbd_req *r) {
  mbd *d = x->d;
  mbd_model *m = x->cur;
  int port;
  uint64_t instance;
  if (mbd_worker_endpoint(m->worker, &port, &instance) != 0 && !x->asked_again) {
    /* The worker died between the grant and now (its loss not yet with the
     * core): nothing was sent, so the request asks again and is served by
     * the next load. */
    x->asked_again = 1;
    px_release(x);
    x->waiting = 1;
    if (mb_acquire_async(d->ctx, x->m->name, &x->ao, lease_done, x, &x->req_id) == 0)
      return;
    x->waiting = 0;
  }
  if (mbd_worker_endpoint(m->worker, &port, &instance) != 0) {
    mbd_count_code(d, m, 502);
    mbd_reply_error(r, 502, "worker_failed", "the worker is not running", 0);
    px_finish(x);
    return;
  }
  if (build_head(x, r, port) != 0) {
    mbd_reply_error(r, 500, "internal", "out of memory", 0);
    px_finish(x);
    return;
  }
  mbd_up_req ur;
  memset(&ur, 0, sizeof(ur));
  ur.head = x->fwd;
  ur.head_len = x->fwd_len;
  ur.body = x->streaming || r->body.total == 0 ? NULL : &r->body;
  ur.streamed = x->streaming;
  ur.chunked = x->streaming && r->h.framing == MBD_BODY_CHUNKED;
  ur.head_request = r->is_head;
  ur.port = port;
  ur.instance = instance;
  ur.max_head_bytes = d->cfg->max_header_bytes;
  mbd_worker_busy_begin(m->worker);
  x->busy = 1;
  r->on_drain = px_drain;
  int rc = mbd_up_start(x->t, &ur, &up_cbs, x, &x->up);
  x->clean_after = rc == 0 && m->mc->cleanup == MBD_CLEANUP_AFTER_REQUEST;
  if (rc != 0) {
    x->up = NULL;
    mbd_count_code(d, m, 502);
    mbd_reply_error(r, 502, "worker_failed", "cannot connect to the worker", 0);
    px_finish(x);
    return;
  }
  if (x->streaming) {
    r->on_body = px_body;
    r->on_body_end = px_body_end;
    mbd_req_resume_body(r);
  }
}

/* ------------------------------------------------------------------------ */
/* Serving a plugin model in process (on the task pool)                      */

static void plugin_run(mbd_task *t) {
  mbd_px *x = (mbd_px *)((char *)t - offsetof(mbd_px, task));
  const char *body = "";
  size_t len = 0;
  if (mbd_spool_view(&x->pbody, &body, &len) != 0) {
    x->prc = MB_EIO;
    snprintf(x->perr, sizeof(x->perr), "cannot read the request body");
    return;
  }
  mb_plugin_request req = {x->pmethod, x->ppath, x->pquery, x->phdrs, x->n_phdrs,
                           (const uint8_t *)body, len};
  x->prc = mb_plugin_handle(x->cur->plugin, &req, &x->presp, x->perr, sizeof(x->perr));
}

static void plugin_done(mbd_task *t) {
  mbd_px *x = (mbd_px *)((char *)t - offsetof(mbd_px, task));
  mbd *d = x->d;
  mbd_req *r = x->r;
  if (r == NULL) {
    px_finish(x);
    return;
  }
  if (x->prc != 0) {
    mbd_count_code(d, x->cur, 500);
    mbd_reply_error(r, 500, "plugin_failed", x->perr, 0);
  } else {
    mbd_count_code(d, x->cur, x->presp.status);
    mbd_resp_start(r, x->presp.status);
    mbd_px_timing_headers(r, &x->res);
    mbd_resp_body(r, x->presp.content_type, x->presp.body ? x->presp.body : "",
                  x->presp.body_len);
  }
  px_finish(x);
}

static void to_plugin(mbd_px *x, mbd_req *r) {
  size_t rest = r->route.arg_off;
  const char *p = r->path + rest;
  size_t pn = r->path_len > rest ? r->path_len - rest : 0;
  x->ppath = malloc(pn + 2);
  x->pquery = strndup(r->query, r->query_len);
  x->phdrs = calloc((size_t)r->h.n_fields + 1, sizeof(*x->phdrs));
  char *hbuf = NULL;
  size_t hlen = 0;
  for (int i = 0; i < r->h.n_fields; i++)
    hlen += r->h.fields[i].name.len + r->h.fields[i].value.len + 2;
  hbuf = malloc(hlen + 1);
  mbd_spool_init(&x->pbody, 0, NULL);
  if (x->ppath == NULL || x->pquery == NULL || x->phdrs == NULL || hbuf == NULL) {
    free(hbuf);
    mbd_reply_error(r, 500, "internal", "out of memory", 0);
    px_finish(x);
    return;
  }
  if (pn == 0) {
    strcpy(x->ppath, "/");
  } else {
    memcpy(x->ppath, p, pn);
    x->ppath[pn] = '\0';
  }
  char *q = hbuf;
  for (int i = 0; i < r->h.n_fields; i++) {
    const mbd_http_field *f = &r->h.fields[i];
    memcpy(q, r->buf + f->name.off, f->name.len);
    q[f->name.len] = '\0';
    x->phdrs[i].name = q;
    q += f->name.len + 1;
    memcpy(q, r->buf + f->value.off, f->value.len);
    q[f->value.len] = '\0';
    x->phdrs[i].value = q;
    q += f->value.len + 1;
  }
  x->n_phdrs = (size_t)r->h.n_fields;
  x->phbuf = hbuf;
  snprintf(x->pmethod, sizeof(x->pmethod), "%s", r->method);
  x->pbody = r->body; /* the transaction's now */
  mbd_spool_init(&r->body, 0, NULL);
  x->task.loop = mbd_req_loop(r);
  x->task.run = plugin_run;
  x->task.done = plugin_done;
  x->prc = 1; /* running */
  r->on_gone = task_gone;
  mbd_tasks_submit(x->d, &x->task);
}

/* ------------------------------------------------------------------------ */
/* Routing                                                                   */

static void on_granted(mbd_px *x, mbd_req *r, void *arg) {
  (void)arg;
  mbd_model *m = x->cur;
  if (m->worker != NULL && m->kind == MBD_BACKEND_PROCESS) {
    to_worker(x, r);
  } else if (m->plugin != NULL && m->kind == MBD_BACKEND_PLUGIN && !x->streaming) {
    to_plugin(x, r);
  } else { /* a reload gave it another backend meanwhile */
    mbd_reply_error(r, 409, "state_conflict",
                    "the model changed backend during a reload; send it again", 0);
    px_finish(x);
  }
}

/* ANY /m/{name}/... of a worker or plugin model. */
static void handle_model(mbd_req *r) {
  mbd_model *m = r->route.m;
  mbd_px_lease(r, m, r->route.body == MBD_BODY_STREAM ? MBD_PX_STREAMING : 0, on_granted, NULL);
}

/* The OpenAI routes: routed by the body's "model". */
static void handle_openai(mbd_req *r) {
  mbd *d = r->d;
  char name[MBD_MODEL_NAME_MAX + 64], ct[256], err[256];
  const char *body;
  size_t len;
  if (mbd_req_body(r, &body, &len) != 0) {
    mbd_reply_error(r, 500, "internal", "cannot read the request body", 0);
    return;
  }
  mbd_req_header(r, "Content-Type", ct, sizeof(ct));
  if (len == 0 || mbd_body_model(ct[0] ? ct : NULL, body, len, name, sizeof(name), err,
                                 sizeof(err)) != 0) {
    char msg[400];
    snprintf(msg, sizeof(msg), "the request names no \"model\" (JSON body, or multipart field)%s%s",
             len ? ": " : "", len ? err : "");
    mbd_reply_error(r, 400, "bad_request", msg, 0);
    return;
  }
  mbd_model *m = mbd_find(d, name);
  if (m == NULL || m->kind == MBD_BACKEND_TENSORS) {
    char msg[256];
    snprintf(msg, sizeof(msg), "unknown model '%.100s' (GET /v1/models lists them)", name);
    mbd_reply_error(r, 404, "not_found", msg, 0);
    return;
  }
  mbd_px_lease(r, m, MBD_PX_OPENAI, on_granted, NULL);
}

/* One entry of GET /v1/models. */
static json_t *v1_model(mbd *d, const char *id, const mbd_model *m) {
  return json_pack("{s:s,s:s,s:I,s:s,s:s}", "id", id, "object", "model", "created",
                   (json_int_t)(d->started_ms / 1000), "owned_by", "modelbuf", "root", m->name);
}

/* The models that speak OpenAI (openai: true, or any alias): the name and
 * each alias, each its own id. */
static void handle_v1_models(mbd_req *r) {
  mbd *d = r->d;
  const mbd_models *ms = mbd_models_get(d);
  json_t *a = json_array();
  for (size_t i = 0; i < ms->n; i++) {
    mbd_model *m = ms->m[i];
    if (m->kind == MBD_BACKEND_TENSORS || !m->mc->openai)
      continue;
    json_array_append_new(a, v1_model(d, m->name, m));
    for (size_t k = 0; k < m->mc->n_aliases; k++)
      json_array_append_new(a, v1_model(d, m->mc->aliases[k], m));
  }
  mbd_reply_json(r, 200, json_pack("{s:s,s:o}", "object", "list", "data", a));
}

/* GET /v1/models/{id}: one of those; the id is the rest of the path,
 * percent-decoded (OpenAI's clients send "Qwen/Qwen2.5-7B" as it is or as
 * "Qwen%2FQwen2.5-7B"). */
static void handle_v1_model(mbd_req *r) {
  mbd *d = r->d;
  char id[MBD_MODEL_NAME_MAX + 1], msg[200];
  mbd_model *m = NULL;
  if (mbd_pct_decode(r->path + r->route.arg_off, r->route.arg_len, id, sizeof(id)) == 0 &&
      mbd_model_name_valid(id))
    m = mbd_find(d, id);
  if (m == NULL || m->kind == MBD_BACKEND_TENSORS || !m->mc->openai) {
    snprintf(msg, sizeof(msg), "The model '%.*s' does not exist (GET /v1/models lists them)",
             (int)(r->route.arg_len > 100 ? 100 : r->route.arg_len),
             r->path + r->route.arg_off);
    mbd_reply_error(r, 404, "model_not_found", msg, 0);
    return;
  }
  mbd_reply_json(r, 200, v1_model(d, id, m));
}

/* The OpenAI routes routed by the body's "model" (DESIGN §5). */
static const char *const openai_routes[] = {
    "/v1/chat/completions",    "/v1/completions",          "/v1/embeddings",
    "/v1/responses",           "/v1/moderations",          "/v1/rerank",
    "/v1/images/generations",  "/v1/images/edits",         "/v1/images/variations",
    "/v1/audio/transcriptions", "/v1/audio/translations",  "/v1/audio/speech",
};

static int is_openai_route(const mbd *d, const char *p, size_t n) {
  for (size_t i = 0; i < sizeof(openai_routes) / sizeof(openai_routes[0]); i++)
    if (strlen(openai_routes[i]) == n && memcmp(openai_routes[i], p, n) == 0)
      return 1;
  for (size_t i = 0; i < d->cfg->n_openai_routes; i++)
    if (strlen(d->cfg->openai_routes[i]) == n && memcmp(d->cfg->openai_routes[i], p, n) == 0)
      return 1;
  return 0;
}

int mbd_proxy_resolve(mbd *d, mbd_req *r) {
  const char *p = r->path;
  size_t n = r->path_len;
  if (n >= 3 && memcmp(p, "/m/", 3) == 0) {
    size_t rest;
    mbd_model *m = mbd_route_model(d, r, r->target + 3, r->target_len - 3, 1, &rest);
    if (m == NULL)
      return 1;
    r->route.arg_off = 3 + rest; /* what follows /m/{name} in the target */
    if (m->kind == MBD_BACKEND_TENSORS)
      return mbd_tensors_resolve(d, r);
    r->route.handle = handle_model;
    r->route.body = m->kind == MBD_BACKEND_PROCESS && !m->mc->tuning.request_buffering &&
                            r->has_body
                        ? MBD_BODY_STREAM
                        : MBD_BODY_BUFFER;
    return 1;
  }
  if (n == 10 && memcmp(p, "/v1/models", 10) == 0) {
    if (strcmp(r->method, "GET") != 0 && !r->is_head) {
      mbd_reply_error_hdr(r, 405, "method_not_allowed", "GET /v1/models", "Allow", "GET, HEAD");
      return 1;
    }
    r->route.handle = handle_v1_models;
    return 1;
  }
  /* Other methods are no route here (404), as for any other /v1 path. */
  if (n > 11 && memcmp(p, "/v1/models/", 11) == 0 &&
      (strcmp(r->method, "GET") == 0 || r->is_head)) {
    r->route.arg_off = 11;
    r->route.arg_len = n - 11;
    r->route.handle = handle_v1_model;
    return 1;
  }
  if (is_openai_route(d, p, n)) {
    if (strcmp(r->method, "POST") != 0) {
      mbd_reply_error_hdr(r, 405, "method_not_allowed", "the OpenAI routes take POST", "Allow",
                          "POST");
      return 1;
    }
    r->route.handle = handle_openai;
    r->route.body = MBD_BODY_BUFFER;
    return 1;
  }
  return 0;
}
