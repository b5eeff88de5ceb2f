/*
 * proxy.c - requests to models: ANY /m/{name}/{path} and the OpenAI routes
 * (/v1/..., routed by the body's "model"), forwarded to the model's worker
 * under a lease, or served in process by its plugin (or, for a tensors
 * model, by tensors.c).
 *
 * A forwarded request runs on its own thread with libcurl (connections to
 * workers are shared and reused); the response streams back through a
 * bounded buffer: the client gets each chunk as soon as the worker sends
 * it (server-sent token streams arrive token by token), and a slow client
 * holds the worker back instead of filling memory. When the client goes
 * away, the transfer is aborted and the lease released.
 */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "api_body.h"
#include "http.h"
#include "modelbuf/plugin.h"
#include "tensors.h"
#include "units.h"

#define PROXY_BUF (256 * 1024)

static double wall_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Records a request served under a lease granted at granted_at (Unix
 * seconds): it arrived queue + load time earlier. */
void mbd_proxy_trace(mbd *d, const char *model, const mb_result *g, double granted_at) {
  double arrived = granted_at - (double)(g->queue_ns + g->load_ns) / 1e9;
  double held = wall_s() - granted_at;
  mbd_trace_add(d, model, arrived, held > 0 ? held : 0);
}

/* ------------------------------------------------------------------------ */
/* Connection sharing                                                        */

static void share_lock(CURL *h, curl_lock_data data, curl_lock_access a, void *arg) {
  mbd *d = arg;
  (void)h;
  (void)a;
  pthread_mutex_lock(&d->share_mu[(unsigned)data % 4]);
}

static void share_unlock(CURL *h, curl_lock_data data, void *arg) {
  mbd *d = arg;
  (void)h;
  pthread_mutex_unlock(&d->share_mu[(unsigned)data % 4]);
}

int mbd_proxy_init(mbd *d) {
  for (int i = 0; i < 4; i++)
    pthread_mutex_init(&d->share_mu[i], NULL);
  CURLSH *sh = curl_share_init();
  if (sh == NULL)
    return -1;
  curl_share_setopt(sh, CURLSHOPT_LOCKFUNC, share_lock);
  curl_share_setopt(sh, CURLSHOPT_UNLOCKFUNC, share_unlock);
  curl_share_setopt(sh, CURLSHOPT_USERDATA, d);
  curl_share_setopt(sh, CURLSHOPT_SHARE, CURL_LOCK_DATA_CONNECT);
  curl_share_setopt(sh, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
  d->curl_share = sh;
  return 0;
}

void mbd_proxy_fini(mbd *d) {
  if (d->curl_share) {
    curl_share_cleanup(d->curl_share);
    d->curl_share = NULL;
    for (int i = 0; i < 4; i++)
      pthread_mutex_destroy(&d->share_mu[i]);
  }
}

/* ------------------------------------------------------------------------ */
/* Leases with their queue and load times                                    */

typedef struct waiter {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int done;
  mb_result res;
  char msg[256];
} waiter;

static void waiter_done(const mb_result *res, void *arg) {
  waiter *w = arg;
  pthread_mutex_lock(&w->mu);
  w->res = *res;
  snprintf(w->msg, sizeof(w->msg), "%s", res->message ? res->message : "");
  w->res.message = w->msg;
  w->done = 1;
  pthread_cond_signal(&w->cv);
  pthread_mutex_unlock(&w->mu);
}

/* Reads X-Modelbuf-Priority / -Keep-Alive / -Queue-Timeout. */
static int acquire_opts(struct MHD_Connection *c, mb_acquire_opts *o, char *err, size_t len) {
  mb_acquire_opts_init(o);
  const char *v = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Modelbuf-Priority");
  if (v) {
    char *end;
    long p = strtol(v, &end, 10);
    if (*end || end == v) {
      snprintf(err, len, "X-Modelbuf-Priority must be an integer");
      return MB_EINVAL;
    }
    o->priority = (int)p;
  }
  v = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Modelbuf-Keep-Alive");
  if (v && mbd_parse_duration_ms(v, MBD_DUR_FOREVER, &o->keep_alive_ms, err, len) != 0)
    return MB_EINVAL;
  v = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Modelbuf-Queue-Timeout");
  if (v && mbd_parse_duration_ms(v, MBD_DUR_FOREVER, &o->timeout_ms, err, len) != 0)
    return MB_EINVAL;
  return 0;
}

static int acquire(mbd *d, const char *name, const mb_acquire_opts *o, mb_result *out,
                   char *err, size_t len) {
  waiter w;
  memset(&w, 0, sizeof(w));
  pthread_mutex_init(&w.mu, NULL);
  pthread_cond_init(&w.cv, NULL);
  int rc = mb_acquire_async(d->ctx, name, o, waiter_done, &w, NULL);
  if (rc == 0) {
    pthread_mutex_lock(&w.mu);
    while (!w.done)
      pthread_cond_wait(&w.cv, &w.mu);
    pthread_mutex_unlock(&w.mu);
    rc = w.res.rc;
    *out = w.res;
    snprintf(err, len, "%s", w.msg);
  }
  pthread_mutex_destroy(&w.mu);
  pthread_cond_destroy(&w.cv);
  return rc;
}

/* ------------------------------------------------------------------------ */
/* Forwarding to a worker                                                    */

typedef struct pxy {
  mbd *d;
  mbd_model *m;
  mb_lease lease;
  CURL *curl;
  struct curl_slist *req_headers;
  char *body;           /* request body, owned */
  size_t body_len;
  pthread_t th;
  int th_on;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  long status;
  int headers_done, done, aborted;
  CURLcode cres;
  char errbuf[CURL_ERROR_SIZE];
  struct curl_slist *resp_headers;
  char *buf;
  size_t len, off;
  /* A request body streamed to the worker as it arrives (see
   * mbd_proxy_stream_begin): filled by the connection, drained by curl. */
  int streaming;
  char *in;
  size_t in_len, in_off;
  int in_eof;
  mb_result granted;
  double granted_at; /* Unix seconds, for the request trace */
} pxy;

static int hop_by_hop(const char *name, size_t n) {
  static const char *const h[] = {"connection", "keep-alive",        "proxy-authenticate",
                                  "proxy-authorization", "te",       "trailer",
                                  "transfer-encoding", "upgrade",    "content-length",
                                  "host",       "expect"};
  for (size_t i = 0; i < sizeof(h) / sizeof(h[0]); i++)
    if (strlen(h[i]) == n && strncasecmp(name, h[i], n) == 0)
      return 1;
  return 0;
}

static size_t on_header(char *p, size_t size, size_t n, void *arg) {
  pxy *x = arg;
  size_t len = size * n;
  pthread_mutex_lock(&x->mu);
  if (len >= 5 && strncmp(p, "HTTP/", 5) == 0) {
    /* A new response (after a 100 Continue, say): start over. */
    curl_slist_free_all(x->resp_headers);
    x->resp_headers = NULL;
    const char *sp = memchr(p, ' ', len);
    x->status = sp ? strtol(sp + 1, NULL, 10) : 0;
  } else if (len <= 2) {
    if (x->status >= 200)
      x->headers_done = 1;
    pthread_cond_broadcast(&x->cv);
  } else {
    const char *colon = memchr(p, ':', len);
    if (colon && !hop_by_hop(p, (size_t)(colon - p))) {
      char line[1024];
      size_t k = len < sizeof(line) ? len : sizeof(line) - 1;
      memcpy(line, p, k);
      while (k > 0 && (line[k - 1] == '\r' || line[k - 1] == '\n'))
        k--;
      line[k] = '\0';
      x->resp_headers = curl_slist_append(x->resp_headers, line);
    }
  }
  pthread_mutex_unlock(&x->mu);
  return len;
}

static size_t on_data(char *p, size_t size, size_t n, void *arg) {
  pxy *x = arg;
  size_t len = size * n;
  pthread_mutex_lock(&x->mu);
  x->headers_done = 1;
  pthread_cond_broadcast(&x->cv);
  while (!x->aborted && x->len + len > PROXY_BUF && x->len > 0)
    pthread_cond_wait(&x->cv, &x->mu);
  if (x->aborted) {
    pthread_mutex_unlock(&x->mu);
    return 0; /* aborts the transfer */
  }
  if (x->len + len > PROXY_BUF) { /* one chunk larger than the buffer */
    char *b = realloc(x->buf, x->len + len);
    if (b == NULL) {
      pthread_mutex_unlock(&x->mu);
      return 0;
    }
    x->buf = b;
  }
  memcpy(x->buf + x->len, p, len);
  x->len += len;
  pthread_cond_broadcast(&x->cv);
  pthread_mutex_unlock(&x->mu);
  return len;
}

/* curl asks for request body: give what the client has sent so far, wait
 * for more, 0 at its end. */
static size_t on_read(char *out, size_t size, size_t n, void *arg) {
  pxy *x = arg;
  size_t max = size * n;
  pthread_mutex_lock(&x->mu);
  while (x->in_off == x->in_len && !x->in_eof && !x->aborted)
    pthread_cond_wait(&x->cv, &x->mu);
  if (x->aborted) {
    pthread_mutex_unlock(&x->mu);
    return CURL_READFUNC_ABORT;
  }
  size_t k = x->in_len - x->in_off;
  if (k > max)
    k = max;
  memcpy(out, x->in + x->in_off, k);
  x->in_off += k;
  if (x->in_off == x->in_len)
    x->in_off = x->in_len = 0;
  pthread_cond_broadcast(&x->cv);
  pthread_mutex_unlock(&x->mu);
  return k;
}

static int on_progress(void *arg, curl_off_t a, curl_off_t b, curl_off_t c, curl_off_t e) {
  pxy *x = arg;
  (void)a, (void)b, (void)c, (void)e;
  pthread_mutex_lock(&x->mu);
  int stop = x->aborted;
  pthread_mutex_unlock(&x->mu);
  return stop;
}

static void *transfer(void *arg) {
  pxy *x = arg;
  CURLcode rc = curl_easy_perform(x->curl);
  pthread_mutex_lock(&x->mu);
  x->cres = rc;
  x->done = 1;
  x->headers_done = 1;
  pthread_cond_broadcast(&x->cv);
  pthread_mutex_unlock(&x->mu);
  return NULL;
}

static ssize_t pxy_read(void *cls, uint64_t pos, char *out, size_t max) {
  pxy *x = cls;
  (void)pos;
  pthread_mutex_lock(&x->mu);
  while (x->off == x->len && !x->done) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 1;
    pthread_cond_timedwait(&x->cv, &x->mu, &ts);
    if (__atomic_load_n(&x->d->stopping, __ATOMIC_ACQUIRE) && x->off == x->len && !x->done) {
      pthread_mutex_unlock(&x->mu);
      return MHD_CONTENT_READER_END_WITH_ERROR; /* the daemon is stopping */
    }
  }
  if (x->off < x->len) {
    size_t n = x->len - x->off;
    if (n > max)
      n = max;
    memcpy(out, x->buf + x->off, n);
    x->off += n;
    if (x->off == x->len)
      x->off = x->len = 0;
    pthread_cond_broadcast(&x->cv);
    pthread_mutex_unlock(&x->mu);
    return (ssize_t)n;
  }
  CURLcode rc = x->cres;
  pthread_mutex_unlock(&x->mu);
  return rc == CURLE_OK ? MHD_CONTENT_READER_END_OF_STREAM : MHD_CONTENT_READER_END_WITH_ERROR;
}

/* The end of a forwarded request, whoever ends it (done, or the client). */
static void pxy_free(void *cls) {
  pxy *x = cls;
  pthread_mutex_lock(&x->mu);
  x->aborted = 1;
  pthread_cond_broadcast(&x->cv);
  pthread_mutex_unlock(&x->mu);
  if (x->th_on)
    pthread_join(x->th, NULL);
  if (x->curl)
    curl_easy_cleanup(x->curl);
  curl_slist_free_all(x->req_headers);
  curl_slist_free_all(x->resp_headers);
  if (x->m && x->m->worker)
    mbd_worker_busy_end(x->m->worker);
  if (x->m && x->granted_at > 0)
    mbd_proxy_trace(x->d, x->m->name, &x->granted, x->granted_at);
  if (x->lease.id && mb_release(x->d->ctx, x->lease) != 0)
    mbd_log(x->d, MBD_LOG_WARN, "lease already released", "model=%s", x->m->name);
  free(x->buf);
  free(x->body);
  free(x->in);
  pthread_mutex_destroy(&x->mu);
  pthread_cond_destroy(&x->cv);
  free(x);
}

typedef struct hdr_ctx {
  struct curl_slist *list;
} hdr_ctx;

static MHD_RESULT copy_header(void *cls, enum MHD_ValueKind kind, const char *key,
                              const char *value) {
  hdr_ctx *h = cls;
  (void)kind;
  size_t n = strlen(key);
  if (hop_by_hop(key, n) || strcasecmp(key, "Authorization") == 0 ||
      strncasecmp(key, "X-Modelbuf-", 11) == 0)
    return MHD_YES;
  size_t len = n + strlen(value ? value : "") + 3;
  char *line = malloc(len);
  if (line) {
    snprintf(line, len, "%s: %s", key, value ? value : "");
    h->list = curl_slist_append(h->list, line);
    free(line);
  }
  return MHD_YES;
}

typedef struct query_ctx {
  char *q;
  size_t len;
  CURL *curl;
} query_ctx;

static MHD_RESULT add_arg(void *cls, enum MHD_ValueKind kind, const char *key, const char *value) {
  query_ctx *q = cls;
  (void)kind;
  char *k = curl_easy_escape(q->curl, key, 0);
  char *v = value ? curl_easy_escape(q->curl, value, 0) : NULL;
  size_t add = strlen(k ? k : "") + (v ? strlen(v) + 1 : 0) + 2;
  char *nq = realloc(q->q, q->len + add + 1);
  if (nq) {
    q->q = nq;
    q->len += (size_t)snprintf(q->q + q->len, add + 1, "%s%s%s%s", q->len ? "&" : "?",
                               k ? k : "", v ? "=" : "", v ? v : "");
  }
  curl_free(k);
  curl_free(v);
  return MHD_YES;
}

/*
 * Sets up and starts the transfer to the worker. With streaming, the body
 * comes later through mbd_proxy_stream_feed; else it is r's buffered body.
 * 0 and *out, or an answer already queued in *res (the lease released).
 */
static int forward_start(mbd *d, struct MHD_Connection *c, mbd_model *m, const char *method,
                         const char *path, mbd_req *r, const mb_result *granted, int streaming,
                         pxy **out, MHD_RESULT *res) {
  char base[128];
  pxy *x = calloc(1, sizeof(*x));
  if (x == NULL) {
    if (mb_release(d->ctx, granted->lease) != 0)
      mbd_log(d, MBD_LOG_WARN, "lease already released", "model=%s", m->name);
    *res = mbd_reply_error(c, 500, "internal", "out of memory", 0);
    return -1;
  }
  x->d = d;
  x->m = m;
  x->lease = granted->lease;
  pthread_mutex_init(&x->mu, NULL);
  pthread_cond_init(&x->cv, NULL);
  x->buf = malloc(PROXY_BUF);
  x->curl = curl_easy_init();
  if (x->buf == NULL || x->curl == NULL || mbd_worker_url(m->worker, base, sizeof(base)) != 0) {
    pxy_free(x);
    mbd_count_code(d, m, 502);
    *res = mbd_reply_error(c, 502, "worker_failed", "the worker is not running", 0);
    return -1;
  }
  mbd_worker_busy_begin(m->worker);
  query_ctx q = {NULL, 0, x->curl};
  MHD_get_connection_values(c, MHD_GET_ARGUMENT_KIND, add_arg, &q);
  size_t ulen = strlen(base) + strlen(path) + q.len + 1;
  char *url = malloc(ulen);
  if (url == NULL) {
    free(q.q);
    pxy_free(x);
    *res = mbd_reply_error(c, 500, "internal", "out of memory", 0);
    return -1;
  }
  snprintf(url, ulen, "%s%s%s", base, path, q.q ? q.q : "");
  free(q.q);
  hdr_ctx h = {NULL};
  MHD_get_connection_values(c, MHD_HEADER_KIND, copy_header, &h);
  h.list = curl_slist_append(h.list, "Expect:");
  x->req_headers = h.list;
  x->body = r->body;
  x->body_len = r->len;
  r->body = NULL; /* the transfer owns it now */
  r->len = r->cap = 0;

  CURL *cu = x->curl;
  curl_easy_setopt(cu, CURLOPT_URL, url);
  curl_easy_setopt(cu, CURLOPT_SHARE, (CURLSH *)d->curl_share);
  curl_easy_setopt(cu, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(cu, CURLOPT_PROXY, "");
  curl_easy_setopt(cu, CURLOPT_CUSTOMREQUEST, method);
  curl_easy_setopt(cu, CURLOPT_HTTPHEADER, x->req_headers);
  curl_easy_setopt(cu, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(cu, CURLOPT_HEADERDATA, x);
  curl_easy_setopt(cu, CURLOPT_WRITEFUNCTION, on_data);
  curl_easy_setopt(cu, CURLOPT_WRITEDATA, x);
  curl_easy_setopt(cu, CURLOPT_NOPROGRESS, 0L);
  curl_easy_setopt(cu, CURLOPT_XFERINFOFUNCTION, on_progress);
  curl_easy_setopt(cu, CURLOPT_XFERINFODATA, x);
  curl_easy_setopt(cu, CURLOPT_ERRORBUFFER, x->errbuf);
  curl_easy_setopt(cu, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
  curl_easy_setopt(cu, CURLOPT_TCP_NODELAY, 1L);
  if (strcmp(method, "HEAD") == 0)
    curl_easy_setopt(cu, CURLOPT_NOBODY, 1L);
  x->granted = *granted;
  x->granted_at = wall_s();
  x->streaming = streaming;
  if (streaming) {
    const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
    x->in = malloc(PROXY_BUF);
    if (x->in == NULL) {
      free(url);
      pxy_free(x);
      *res = mbd_reply_error(c, 500, "internal", "out of memory", 0);
      return -1;
    }
    curl_easy_setopt(cu, CURLOPT_POST, 1L);
    curl_easy_setopt(cu, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(cu, CURLOPT_READFUNCTION, on_read);
    curl_easy_setopt(cu, CURLOPT_READDATA, x);
    if (cl)
      curl_easy_setopt(cu, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strtoll(cl, NULL, 10));
    else
      x->req_headers = curl_slist_append(x->req_headers, "Transfer-Encoding: chunked");
    curl_easy_setopt(cu, CURLOPT_HTTPHEADER, x->req_headers);
  } else if (x->body_len > 0 || strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0 ||
             strcmp(method, "PATCH") == 0) {
    curl_easy_setopt(cu, CURLOPT_POSTFIELDS, x->body ? x->body : "");
    curl_easy_setopt(cu, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)x->body_len);
  }
  free(url);
  if (pthread_create(&x->th, NULL, transfer, x) != 0) {
    pxy_free(x);
    *res = mbd_reply_error(c, 500, "internal", "cannot start the transfer", 0);
    return -1;
  }
  x->th_on = 1;
  *out = x;
  return 0;
}

/* Waits for the worker's status and headers and answers with its stream. */
static MHD_RESULT forward_finish(mbd *d, struct MHD_Connection *c, mbd_model *m, pxy *x) {
  const mb_result *granted = &x->granted;

  /* The status and headers come first. */
  pthread_mutex_lock(&x->mu);
  while (!x->headers_done)
    pthread_cond_wait(&x->cv, &x->mu);
  int failed = x->done && x->cres != CURLE_OK && x->status == 0;
  char why[CURL_ERROR_SIZE + 64];
  snprintf(why, sizeof(why), "worker failed: %s",
           x->errbuf[0] ? x->errbuf : curl_easy_strerror(x->cres));
  long status = x->status;
  pthread_mutex_unlock(&x->mu);
  if (failed) {
    int killed = mbd_worker_busy_end(m->worker);
    mbd_worker_busy_begin(m->worker); /* pxy_free ends it again */
    pxy_free(x);
    int code = killed ? 504 : 502;
    mbd_count_code(d, m, code);
    return mbd_reply_error(c, code, killed ? "timeout" : "worker_failed",
                           killed ? "the worker was busy longer than busy_timeout and was "
                                    "stopped"
                                  : why,
                           0);
  }
  struct MHD_Response *resp =
      MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024, pxy_read, x, pxy_free);
  if (resp == NULL) {
    pxy_free(x);
    return MHD_NO;
  }
  pthread_mutex_lock(&x->mu);
  for (struct curl_slist *s = x->resp_headers; s; s = s->next) {
    char *colon = strchr(s->data, ':');
    if (colon == NULL)
      continue;
    *colon = '\0';
    const char *v = colon + 1;
    while (*v == ' ')
      v++;
    MHD_add_response_header(resp, s->data, v);
    *colon = ':';
  }
  pthread_mutex_unlock(&x->mu);
  char ms[32];
  snprintf(ms, sizeof(ms), "%.1f", (double)granted->queue_ns / 1e6);
  MHD_add_response_header(resp, "X-Modelbuf-Queue-Ms", ms);
  snprintf(ms, sizeof(ms), "%.1f", (double)granted->load_ns / 1e6);
  MHD_add_response_header(resp, "X-Modelbuf-Load-Ms", ms);
  mbd_count_code(d, m, (int)status);
  MHD_RESULT res = MHD_queue_response(c, (unsigned)status, resp);
  MHD_destroy_response(resp);
  return res;
}


static MHD_RESULT forward(mbd *d, struct MHD_Connection *c, mbd_model *m, const char *method,
                          const char *path, mbd_req *r, const mb_result *granted) {
  pxy *x;
  MHD_RESULT res;
  if (forward_start(d, c, m, method, path, r, granted, 0, &x, &res) != 0)
    return res;
  return forward_finish(d, c, m, x);
}

/* ------------------------------------------------------------------------ */
/* Serving a plugin model in process                                         */

typedef struct hdr_list {
  mb_plugin_header h[64];
  size_t n;
} hdr_list;

static MHD_RESULT collect_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                 const char *value) {
  hdr_list *l = cls;
  (void)kind;
  if (l->n < 64) {
    l->h[l->n].name = key;
    l->h[l->n].value = value ? value : "";
    l->n++;
  }
  return MHD_YES;
}

static MHD_RESULT serve_plugin(mbd *d, struct MHD_Connection *c, mbd_model *m,
                               const char *method, const char *path, mbd_req *r,
                               const mb_result *granted) {
  hdr_list hl;
  hl.n = 0;
  MHD_get_connection_values(c, MHD_HEADER_KIND, collect_header, &hl);
  mb_plugin_request req = {method, path, "", hl.h, hl.n, (const uint8_t *)r->body, r->len};
  mb_plugin_response resp;
  char err[256] = "";
  double t0 = wall_s();
  int rc = mb_plugin_handle(m->plugin, &req, &resp, err, sizeof(err));
  mbd_proxy_trace(d, m->name, granted, t0);
  if (mb_release(d->ctx, granted->lease) != 0)
    mbd_log(d, MBD_LOG_WARN, "lease already released", "model=%s", m->name);
  if (rc != 0) {
    mbd_count_code(d, m, 500);
    return mbd_reply_error(c, 500, "plugin_failed", err, 0);
  }
  struct MHD_Response *mr = MHD_create_response_from_buffer(
      resp.body_len, resp.body ? resp.body : (void *)"", MHD_RESPMEM_MUST_COPY);
  mb_plugin_response_free(m->plugin, &resp);
  if (mr == NULL)
    return MHD_NO;
  MHD_add_response_header(mr, "Content-Type", resp.content_type);
  char ms[32];
  snprintf(ms, sizeof(ms), "%.1f", (double)granted->queue_ns / 1e6);
  MHD_add_response_header(mr, "X-Modelbuf-Queue-Ms", ms);
  snprintf(ms, sizeof(ms), "%.1f", (double)granted->load_ns / 1e6);
  MHD_add_response_header(mr, "X-Modelbuf-Load-Ms", ms);
  mbd_count_code(d, m, resp.status);
  MHD_RESULT res = MHD_queue_response(c, (unsigned)resp.status, mr);
  MHD_destroy_response(mr);
  return res;
}


int mbd_proxy_lease(mbd *d, struct MHD_Connection *c, mbd_model *m, mb_result *got,
                    mbd_model **cur, MHD_RESULT *res) {
  char err[256] = "";
  mb_acquire_opts ao;
  if (acquire_opts(c, &ao, err, sizeof(err)) != 0) {
    *res = mbd_reply_error(c, 400, "bad_request", err, 0);
    return -1;
  }
  int rc = acquire(d, m->name, &ao, got, err, sizeof(err));
  if (rc != 0) {
    const char *code;
    int status = mbd_http_status(rc, &code);
    mbd_count_code(d, m, status);
    *res = mbd_reply_error(c, status, code, err[0] ? err : mb_strerror(rc),
                           status == 503 ? 1 : 0);
    return -1;
  }
  /* The lease keeps the model from a reload; use its current entry. */
  *cur = mbd_current(d, m);
  if (*cur == NULL) {
    if (mb_release(d->ctx, got->lease) != 0)
      mbd_log(d, MBD_LOG_WARN, "lease already released", "model=%s", m->name);
    *res = mbd_reply_error(c, 404, "not_found", "the model was removed by a reload", 0);
    return -1;
  }
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Request bodies streamed to the worker                                     */

/* Whether a request to url will bring a body worth streaming. */
static int has_body(struct MHD_Connection *c) {
  const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
  const char *te = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Transfer-Encoding");
  return (cl && strtoll(cl, NULL, 10) > 0) || (te && strcasestr(te, "chunked"));
}

int mbd_proxy_stream_begin(mbd *d, struct MHD_Connection *c, const char *method,
                           const char *url, mbd_req *r, MHD_RESULT *res) {
  if (strncmp(url, "/m/", 3) != 0 || !has_body(c))
    return 0;
  char name[MBD_MODEL_NAME_MAX + 1];
  const char *slash;
  if (mbd_path_model(url + 3, name, &slash) != 0)
    return 0; /* the ordinary route answers 404 */
  mbd_model *m = mbd_find(d, name);
  if (m == NULL || m->worker == NULL)
    return 0; /* unknown (404 later) or a plugin: buffered */
  mb_result got;
  mbd_model *cur;
  if (mbd_proxy_lease(d, c, m, &got, &cur, res) != 0)
    return -1;
  if (cur->worker == NULL) { /* a reload gave it another backend: serve it buffered */
    if (mb_release(d->ctx, got.lease) != 0)
      mbd_log(d, MBD_LOG_WARN, "lease already released", "model=%s", cur->name);
    *res = mbd_reply_error(c, 409, "state_conflict",
                           "the model changed backend during a reload; send it again", 0);
    return -1;
  }
  pxy *x;
  if (forward_start(d, c, cur, method, slash ? slash : "/", r, &got, 1, &x, res) != 0)
    return -1;
  r->px = x;
  r->pm = cur;
  return 1;
}

void mbd_proxy_stream_feed(mbd_req *r, const char *data, size_t n) {
  pxy *x = r->px;
  pthread_mutex_lock(&x->mu);
  while (n > 0 && !x->done && !x->aborted) {
    if (x->in_len == PROXY_BUF) {
      pthread_cond_wait(&x->cv, &x->mu); /* the worker is slower than the client */
      continue;
    }
    size_t k = PROXY_BUF - x->in_len;
    if (k > n)
      k = n;
    memcpy(x->in + x->in_len, data, k);
    x->in_len += k;
    data += k;
    n -= k;
    pthread_cond_broadcast(&x->cv);
  }
  pthread_mutex_unlock(&x->mu); /* a finished transfer takes no more: the rest is dropped */
}

MHD_RESULT mbd_proxy_stream_end(mbd *d, struct MHD_Connection *c, mbd_req *r) {
  pxy *x = r->px;
  r->px = NULL;
  pthread_mutex_lock(&x->mu);
  x->in_eof = 1;
  pthread_cond_broadcast(&x->cv);
  pthread_mutex_unlock(&x->mu);
  return forward_finish(d, c, r->pm, x);
}

void mbd_proxy_stream_abort(mbd_req *r) {
  if (r->px) {
    pxy_free(r->px); /* aborts the transfer, releases the lease */
    r->px = NULL;
  }
}

/* ------------------------------------------------------------------------ */
/* Routing                                                                   */

static MHD_RESULT to_model(mbd *d, struct MHD_Connection *c, mbd_model *m, const char *method,
                           const char *path, mbd_req *r) {
  mb_result got;
  MHD_RESULT res;
  if (m->kind == MBD_BACKEND_TENSORS) /* routes checked before the lease */
    return mbd_tensors_serve(d, c, m, method, path);
  if (mbd_proxy_lease(d, c, m, &got, &m, &res) != 0)
    return res;
  if (m->kind == MBD_BACKEND_TENSORS) { /* a reload gave it another backend */
    if (mb_release(d->ctx, got.lease) != 0)
      mbd_log(d, MBD_LOG_WARN, "lease already released", "model=%s", m->name);
    return mbd_reply_error(c, 409, "state_conflict",
                           "the model changed backend during a reload; send it again", 0);
  }
  if (m->plugin)
    return serve_plugin(d, c, m, method, path, r, &got);
  return forward(d, c, m, method, path, r, &got);
}

/* The "model" of an OpenAI request: JSON body field, or multipart field. */
static int model_of(struct MHD_Connection *c, mbd_req *r, char *out, size_t len) {
  const char *ct = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Type");
  char err[256];
  return r->len > 0 && mbd_body_model(ct, r->body, r->len, out, len, err, sizeof(err)) == 0;
}

static MHD_RESULT v1_models(mbd *d, struct MHD_Connection *c) {
  const mbd_models *ms = mbd_models_get(d);
  json_t *a = json_array();
  for (size_t i = 0; i < ms->n; i++) {
    mbd_model *m = ms->m[i];
    json_array_append_new(a, json_pack("{s:s,s:s,s:I,s:s}", "id", m->name, "object", "model",
                                       "created", (json_int_t)(d->started_ms / 1000), "owned_by",
                                       "modelbuf"));
    for (size_t k = 0; k < m->mc->n_aliases; k++)
      json_array_append_new(a, json_pack("{s:s,s:s,s:I,s:s}", "id", m->mc->aliases[k], "object",
                                         "model", "created", (json_int_t)(d->started_ms / 1000),
                                         "owned_by", "modelbuf"));
  }
  return mbd_reply_json(c, 200, json_pack("{s:s,s:o}", "object", "list", "data", a));
}

int mbd_proxy_route(mbd *d, struct MHD_Connection *c, const char *method, const char *url,
                    mbd_req *r, MHD_RESULT *res) {
  if (strncmp(url, "/m/", 3) == 0) {
    char name[MBD_MODEL_NAME_MAX + 1];
    const char *slash;
    if (mbd_path_model(url + 3, name, &slash) != 0) {
      *res = mbd_reply_error(c, 404, "not_found", "unknown model", 0);
      return 1;
    }
    mbd_model *m = mbd_find(d, name);
    if (m == NULL) {
      char msg[160];
      snprintf(msg, sizeof(msg), "unknown model '%s'", name);
      *res = mbd_reply_error(c, 404, "not_found", msg, 0);
      return 1;
    }
    *res = to_model(d, c, m, method, slash ? slash : "/", r);
    return 1;
  }
  if (strcmp(url, "/v1/models") == 0 && strcmp(method, "GET") == 0) {
    *res = v1_models(d, c);
    return 1;
  }
  if (strncmp(url, "/v1/", 4) == 0 && strcmp(method, "POST") == 0) {
    char name[MBD_MODEL_NAME_MAX + 64];
    if (!model_of(c, r, name, sizeof(name))) {
      *res = mbd_reply_error(c, 400, "bad_request",
                             "the request names no \"model\" (JSON body, or multipart field)", 0);
      return 1;
    }
    mbd_model *m = mbd_find(d, name);
    if (m == NULL) {
      char msg[200];
      snprintf(msg, sizeof(msg), "unknown model '%s' (GET /v1/models lists them)", name);
      *res = mbd_reply_error(c, 404, "not_found", msg, 0);
      return 1;
    }
    *res = to_model(d, c, m, method, url, r);
    return 1;
  }
  return 0;
}
