/*
 * proxy.c - requests to models: ANY /m/{name}/{path} and the OpenAI routes
 * (/v1/..., routed by the body's "model"), forwarded to the model's worker
 * under a lease, or served in process by its plugin (or, for a tensors
 * model, by tensors.c).
 *
 * A forwarded request runs on its client connection's own thread (the
 * server has one per connection, http.c): it takes a session - a curl multi
 * handle with one easy handle and the multi's cache of open connections to
 * workers - from a pool, and drives the transfer itself with
 * curl_multi_perform/curl_multi_poll whenever libmicrohttpd asks for more:
 * the request body is handed on piece by piece as the client sends it, and
 * each piece of the worker's answer goes to the client as soon as it comes
 * (server-sent token streams arrive token by token). Only what one step of
 * curl delivers is buffered: a slow worker holds the client back and a slow
 * client holds the worker back (curl's pause), instead of filling memory.
 * When the client goes away, the handle leaves its multi (which aborts the
 * transfer), the lease is released and the session goes back to the pool.
 *
 * No thread is started and, once the pool is warm, nothing is allocated per
 * request but curl's header lists; connections to a worker stay open in the
 * sessions' caches and are reused by later requests.
 *
 * Locks: pool.mu guards the pool's free list only. A session is used by one
 * thread at a time (whoever took it from the pool), so its fields need no
 * lock.
 */
#include <curl/curl.h>
#include <semaphore.h>
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

/* How much of a worker's answer waits for a slow client before curl is
 * paused; one step of curl hands over at most about this much. */
#define PROXY_BUF (256 * 1024)
/* Idle sessions kept for later requests; more are closed when they end. */
#define POOL_MAX 256
/* Idle connections each session keeps open (to several workers, say). */
#define SESSION_MAXCONNECTS 4L

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
/* Leases with their queue and load times                                    */

/* A request waiting for its lease. A semaphore, not a mutex and a
 * condition: the core thread posts without taking a lock that the woken
 * request would then wait for. */
typedef struct waiter {
  sem_t sem;
  mb_result res;
  char msg[256];
} waiter;

static void waiter_done(const mb_result *res, void *arg) {
  waiter *w = arg;
  w->res = *res;
  snprintf(w->msg, sizeof(w->msg), "%s", res->message ? res->message : "");
  w->res.message = w->msg;
  sem_post(&w->sem);
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

/*
 * A lease in two steps, so that a request can get its transfer ready while
 * the core thread decides: lease_post asks (0, or -1 with the answer queued
 * in *res), lease_wait waits for the grant and the model's current entry
 * (0 with *got and *cur, or -1 with the answer queued). Every successful
 * lease_post is followed by one lease_wait.
 */
static int lease_post(mbd *d, struct MHD_Connection *c, mbd_model *m, waiter *w,
                      MHD_RESULT *res) {
  char err[256] = "";
  mb_acquire_opts ao;
  if (acquire_opts(c, &ao, err, sizeof(err)) != 0) {
    *res = mbd_reply_error(c, 400, "bad_request", err, 0);
    return -1;
  }
  if (sem_init(&w->sem, 0, 0) != 0) {
    *res = mbd_reply_error(c, 500, "internal", "out of memory", 0);
    return -1;
  }
  int rc = mb_acquire_async(d->ctx, m->name, &ao, waiter_done, w, NULL);
  if (rc != 0) { /* answered now, as the core would have */
    w->res.rc = rc;
    w->msg[0] = '\0';
    sem_post(&w->sem);
  }
  return 0;
}

static int lease_wait(mbd *d, struct MHD_Connection *c, mbd_model *m, waiter *w,
                      mb_result *got, mbd_model **cur, MHD_RESULT *res) {
  while (sem_wait(&w->sem) != 0) /* EINTR */
    ;
  sem_destroy(&w->sem);
  int rc = w->res.rc;
  if (rc != 0) {
    const char *code;
    int status = mbd_http_status(rc, &code);
    mbd_count_code(d, m, status);
    *res = mbd_reply_error(c, status, code, w->msg[0] ? w->msg : mb_strerror(rc),
                           status == 503 ? 1 : 0);
    return -1;
  }
  *got = w->res;
  got->message = NULL; /* w->msg does not outlive w */
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
/* Sessions: a curl multi and easy handle pair, pooled                       */

/*
 * A session, and while it is taken, the one forwarded request it carries.
 * The handles live as long as the session, and so do the buffers unless
 * one grew large; the fields under "per request" are set up again by
 * forward_prepare and forward_launch.
 */
typedef struct pxy {
  struct pxy *next;  /* in the pool's free list */
  CURLM *multi;      /* its connection cache keeps workers' connections open */
  CURL *curl;
  char *spill;       /* the worker's answer not yet taken by the client */
  size_t spill_len, spill_off, spill_cap;
  char *hdrs;        /* the worker's response headers, "Name: value\0"... */
  size_t hdrs_len, hdrs_cap;
  char *url;
  size_t url_cap;

  /* per request */
  mbd *d;
  mbd_model *m;
  mb_lease lease;
  mb_result granted;
  double granted_at; /* Unix seconds, for the request trace */
  struct curl_slist *req_headers;
  char *body;        /* a buffered request body, owned */
  size_t body_len;
  int added;         /* curl is in multi */
  int head;          /* a HEAD request: no body, whatever the length says */
  int streaming;     /* the request body streams (mbd_proxy_stream_feed) */
  int post_like;     /* POST, PUT or PATCH: sends a body, if empty */
  int streamed;      /* the answer streams from the session (pxy_read) */
  int busy;          /* counted by mbd_worker_busy_begin */
  int headers_done;  /* the final status and headers have come */
  int done;          /* the transfer ended, with cres */
  int write_paused, read_paused;
  int oom;           /* a buffer could not grow: the transfer is aborted */
  long status;
  CURLcode cres;
  char errbuf[CURL_ERROR_SIZE];
  /* A request body streamed to the worker as it arrives: the piece the
   * client has just sent (libmicrohttpd's buffer, valid during feed). */
  const char *in;
  size_t in_len, in_off;
  int in_eof;
} pxy;

static struct {
  pthread_mutex_t mu;
  pxy *free;
  size_t n_free;
} pool = {PTHREAD_MUTEX_INITIALIZER, NULL, 0};

static void session_destroy(pxy *x) {
  if (x->multi)
    curl_multi_cleanup(x->multi); /* closes its connections */
  if (x->curl)
    curl_easy_cleanup(x->curl);
  free(x->spill);
  free(x->hdrs);
  free(x->url);
  free(x);
}

/* A session from the pool, or a new one; NULL when out of memory. */
static pxy *session_take(void) {
  pthread_mutex_lock(&pool.mu);
  pxy *x = pool.free;
  if (x) {
    pool.free = x->next;
    pool.n_free--;
  }
  pthread_mutex_unlock(&pool.mu);
  if (x)
    return x;
  x = calloc(1, sizeof(*x));
  if (x == NULL)
    return NULL;
  x->multi = curl_multi_init();
  x->curl = curl_easy_init();
  if (x->multi == NULL || x->curl == NULL) {
    session_destroy(x);
    return NULL;
  }
  curl_multi_setopt(x->multi, CURLMOPT_MAXCONNECTS, SESSION_MAXCONNECTS);
  return x;
}

/* Frees *buf when it grew over max bytes: an idle session keeps little. */
static void trim(char **buf, size_t *cap, size_t max) {
  if (*cap > max) {
    free(*buf);
    *buf = NULL;
    *cap = 0;
  }
}

static void session_give_back(pxy *x) {
  trim(&x->spill, &x->spill_cap, 64 * 1024);
  trim(&x->hdrs, &x->hdrs_cap, 16 * 1024);
  trim(&x->url, &x->url_cap, 16 * 1024);
  pthread_mutex_lock(&pool.mu);
  if (pool.n_free < POOL_MAX) {
    x->next = pool.free;
    pool.free = x;
    pool.n_free++;
    x = NULL;
  }
  pthread_mutex_unlock(&pool.mu);
  if (x)
    session_destroy(x);
}

/* The session pool needs no set-up. */
int mbd_proxy_init(mbd *d) {
  (void)d;
  return 0;
}

void mbd_proxy_fini(mbd *d) {
  (void)d;
  pthread_mutex_lock(&pool.mu);
  pxy *x = pool.free;
  pool.free = NULL;
  pool.n_free = 0;
  pthread_mutex_unlock(&pool.mu);
  while (x) {
    pxy *next = x->next;
    session_destroy(x);
    x = next;
  }
}

/* Makes room for n more bytes in *buf (len used of *cap); 0 or -1. */
static int grow(char **buf, size_t *cap, size_t len, size_t n) {
  if (len + n <= *cap)
    return 0;
  size_t c = *cap ? *cap : 4096;
  while (c < len + n)
    c *= 2;
  char *b = realloc(*buf, c);
  if (b == NULL)
    return -1;
  *buf = b;
  *cap = c;
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Forwarding to a worker                                                    */

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
  if (len >= 5 && strncmp(p, "HTTP/", 5) == 0) {
    /* A new response (after a 100 Continue, say): start over. */
    x->hdrs_len = 0;
    const char *sp = memchr(p, ' ', len);
    x->status = sp ? strtol(sp + 1, NULL, 10) : 0;
  } else if (len <= 2) {
    if (x->status >= 200)
      x->headers_done = 1;
  } else {
    const char *colon = memchr(p, ':', len);
    if (colon && !hop_by_hop(p, (size_t)(colon - p))) {
      size_t k = len;
      while (k > 0 && (p[k - 1] == '\r' || p[k - 1] == '\n'))
        k--;
      if (grow(&x->hdrs, &x->hdrs_cap, x->hdrs_len, k + 1) != 0) {
        x->oom = 1;
        return 0; /* aborts the transfer */
      }
      memcpy(x->hdrs + x->hdrs_len, p, k);
      x->hdrs[x->hdrs_len + k] = '\0';
      x->hdrs_len += k + 1;
    }
  }
  return len;
}

static size_t on_data(char *p, size_t size, size_t n, void *arg) {
  pxy *x = arg;
  size_t len = size * n;
  size_t held = x->spill_len - x->spill_off;
  x->headers_done = 1;
  if (held > 0 && held + len > PROXY_BUF) {
    x->write_paused = 1; /* the client is slower: curl keeps this piece */
    return CURL_WRITEFUNC_PAUSE;
  }
  if (held == 0)
    x->spill_off = x->spill_len = 0;
  if (grow(&x->spill, &x->spill_cap, x->spill_len, len) != 0) {
    x->oom = 1;
    return 0; /* aborts the transfer */
  }
  memcpy(x->spill + x->spill_len, p, len);
  x->spill_len += len;
  return len;
}

/* curl asks for request body: what the client has sent so far, a pause
 * when that is all taken, 0 at its end. */
static size_t on_read(char *out, size_t size, size_t n, void *arg) {
  pxy *x = arg;
  size_t max = size * n;
  if (x->in_off == x->in_len) {
    if (x->in_eof)
      return 0;
    x->read_paused = 1;
    return CURL_READFUNC_PAUSE;
  }
  size_t k = x->in_len - x->in_off;
  if (k > max)
    k = max;
  memcpy(out, x->in + x->in_off, k);
  x->in_off += k;
  return k;
}

/* Tells curl which directions are paused now. */
static void set_pause(pxy *x) {
  curl_easy_pause(x->curl, (x->write_paused ? CURLPAUSE_RECV : 0) |
                               (x->read_paused ? CURLPAUSE_SEND : 0));
}

/* Goals of drive(). */
enum { UNTIL_HEADERS, UNTIL_DATA, UNTIL_SENT };

static int reached(const pxy *x, int until) {
  switch (until) {
  case UNTIL_HEADERS: return x->headers_done;
  case UNTIL_DATA: return x->spill_len > x->spill_off;
  default: return x->in_off == x->in_len;
  }
}

/*
 * Runs the transfer on this thread until the goal is reached or it ends.
 * 0, or -1 when stop_on_shutdown is set and the daemon began to stop.
 */
static int drive(pxy *x, int until, int stop_on_shutdown) {
  if (x->write_paused && until == UNTIL_DATA && !reached(x, until)) {
    x->write_paused = 0;
    set_pause(x); /* may hand over the kept piece at once */
  }
  if (x->read_paused && (x->in_off < x->in_len || x->in_eof)) {
    x->read_paused = 0;
    set_pause(x);
  }
  while (!x->done && !reached(x, until)) {
    int running;
    CURLMcode mc = curl_multi_perform(x->multi, &running);
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(x->multi, &left)) != NULL)
      if (msg->msg == CURLMSG_DONE && msg->easy_handle == x->curl) {
        x->done = 1;
        x->cres = msg->data.result;
      }
    if (mc != CURLM_OK && !x->done) {
      x->done = 1;
      x->cres = CURLE_FAILED_INIT;
      snprintf(x->errbuf, sizeof(x->errbuf), "%s", curl_multi_strerror(mc));
    }
    if (x->done || reached(x, until))
      break;
    if (x->write_paused && until != UNTIL_DATA)
      break; /* an answer bigger than PROXY_BUF came before the request body
              * was all sent: it waits for the client, and the rest of the
              * body is dropped (the worker has answered already) */
    int nfds;
    curl_multi_poll(x->multi, NULL, 0, 1000, &nfds);
    if (stop_on_shutdown && __atomic_load_n(&x->d->stopping, __ATOMIC_ACQUIRE))
      return -1;
  }
  if (x->done) {
    x->headers_done = 1;
    if (x->oom && x->cres == CURLE_OK)
      x->cres = CURLE_OUT_OF_MEMORY;
  }
  return 0;
}

static ssize_t pxy_read(void *cls, uint64_t pos, char *out, size_t max) {
  pxy *x = cls;
  (void)pos;
  if (x->spill_len == x->spill_off && !x->done && drive(x, UNTIL_DATA, 1) != 0)
    return MHD_CONTENT_READER_END_WITH_ERROR; /* the daemon is stopping */
  if (x->spill_len > x->spill_off) {
    size_t n = x->spill_len - x->spill_off;
    if (n > max)
      n = max;
    memcpy(out, x->spill + x->spill_off, n);
    x->spill_off += n;
    return (ssize_t)n;
  }
  return x->cres == CURLE_OK ? MHD_CONTENT_READER_END_OF_STREAM
                             : MHD_CONTENT_READER_END_WITH_ERROR;
}

/* The end of a forwarded request, whoever ends it (done, or the client):
 * the transfer aborted if still running, the lease released, the session
 * back to the pool. */
static void pxy_free(void *cls) {
  pxy *x = cls;
  if (x->added)
    curl_multi_remove_handle(x->multi, x->curl);
  curl_slist_free_all(x->req_headers);
  x->req_headers = NULL;
  if (x->busy)
    mbd_worker_busy_end(x->m->worker);
  if (x->granted_at > 0)
    mbd_proxy_trace(x->d, x->m->name, &x->granted, x->granted_at);
  int rel = x->lease.id ? mb_release(x->d->ctx, x->lease) : 0;
  if (rel != 0 && rel != MB_ELOST) /* ELOST: the worker was lost; the lease ended with it */
    mbd_log(x->d, MBD_LOG_WARN, "lease already released", "model=%s", x->m->name);
  free(x->body);
  x->body = NULL;
  /* A transfer that failed leaves state in its easy handle that a reset
   * keeps (curl 7.88: a rewind pending before the next send, after a
   * reused connection died): such a session is not used again. */
  if (x->added && (!x->done || x->cres != CURLE_OK))
    session_destroy(x);
  else
    session_give_back(x);
}

typedef struct hdr_ctx {
  struct curl_slist *list;
  int oom;
} hdr_ctx;

/* Appends a header line (copied); 1, or 0 when out of memory. */
static int add_line(hdr_ctx *h, const char *line) {
  struct curl_slist *l = curl_slist_append(h->list, line);
  if (l == NULL)
    return 0;
  h->list = l;
  return 1;
}

static MHD_RESULT copy_header(void *cls, enum MHD_ValueKind kind, const char *key,
                              const char *value) {
  hdr_ctx *h = cls;
  (void)kind;
  size_t n = strlen(key);
  if (hop_by_hop(key, n) || strcasecmp(key, "Authorization") == 0 ||
      strncasecmp(key, "X-Modelbuf-", 11) == 0)
    return MHD_YES;
  char small[512];
  size_t len = n + strlen(value ? value : "") + 3;
  char *line = len <= sizeof(small) ? small : malloc(len);
  if (line == NULL) {
    h->oom = 1;
    return MHD_NO;
  }
  snprintf(line, len, "%s: %s", key, value ? value : "");
  int ok = add_line(h, line);
  if (line != small)
    free(line);
  if (!ok)
    h->oom = 1;
  return ok ? MHD_YES : MHD_NO;
}

typedef struct url_ctx {
  pxy *x;
  size_t len;
  int oom;
} url_ctx;

/* Appends the string s to the session's URL. */
static int url_add(url_ctx *u, const char *s) {
  size_t n = strlen(s);
  if (grow(&u->x->url, &u->x->url_cap, u->len, n + 1) != 0) {
    u->oom = 1;
    return -1;
  }
  memcpy(u->x->url + u->len, s, n + 1);
  u->len += n;
  return 0;
}

static MHD_RESULT add_arg(void *cls, enum MHD_ValueKind kind, const char *key, const char *value) {
  url_ctx *u = cls;
  (void)kind;
  char *k = curl_easy_escape(u->x->curl, key, 0);
  char *v = value ? curl_easy_escape(u->x->curl, value, 0) : NULL;
  int ok = k && (value == NULL || v) && url_add(u, u->x->url[u->len - 1] == '?' ? "" : "&") == 0 &&
           url_add(u, k) == 0 && (v == NULL || (url_add(u, "=") == 0 && url_add(u, v) == 0));
  if (!ok)
    u->oom = 1;
  curl_free(k);
  curl_free(v);
  return ok ? MHD_YES : MHD_NO;
}

/* Room left in front of the path in x->url for the worker's base URL
 * ("http://127.0.0.1:PORT"), which is known only once the lease is held. */
#define URL_BASE_ROOM 128

/* The path and the client's query string into x->url at URL_BASE_ROOM. */
static int build_path(pxy *x, struct MHD_Connection *c, const char *path) {
  if (grow(&x->url, &x->url_cap, 0, URL_BASE_ROOM + 1) != 0)
    return -1;
  url_ctx u = {x, URL_BASE_ROOM, 0};
  if (url_add(&u, path) != 0)
    return -1;
  size_t before = u.len;
  if (url_add(&u, "?") != 0)
    return -1;
  MHD_get_connection_values(c, MHD_GET_ARGUMENT_KIND, add_arg, &u);
  if (u.oom)
    return -1;
  if (u.len == before + 1) /* no arguments */
    x->url[before] = '\0';
  return 0;
}

/*
 * Gets a transfer ready while its lease is being decided: a session, the
 * request's headers, path and query, curl's options. Nothing in it depends
 * on the model (a reload may change which entry the lease is for). With
 * streaming, the body comes later through mbd_proxy_stream_feed; else it is
 * r's buffered body, taken at launch. NULL when out of memory.
 */
static pxy *forward_prepare(mbd *d, struct MHD_Connection *c, const char *method,
                            const char *path, int streaming) {
  pxy *x = session_take();
  if (x == NULL)
    return NULL;
  x->d = d;
  x->m = NULL;
  x->busy = 0;
  x->lease.id = 0;
  x->granted_at = 0;
  x->req_headers = NULL;
  x->body = NULL;
  x->body_len = 0;
  x->head = strcmp(method, "HEAD") == 0;
  x->streaming = streaming;
  x->post_like = strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0 ||
                 strcmp(method, "PATCH") == 0;
  x->streamed = 0;
  x->added = x->headers_done = x->done = x->write_paused = x->read_paused = x->oom = 0;
  x->status = 0;
  x->cres = CURLE_OK;
  x->errbuf[0] = '\0';
  x->spill_len = x->spill_off = x->hdrs_len = 0;
  x->in = NULL;
  x->in_len = x->in_off = 0;
  x->in_eof = 0;
  hdr_ctx h = {NULL, 0};
  MHD_get_connection_values(c, MHD_HEADER_KIND, copy_header, &h);
  if (!h.oom && !add_line(&h, "Expect:"))
    h.oom = 1;
  if (!h.oom && streaming &&
      MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length") == NULL &&
      !add_line(&h, "Transfer-Encoding: chunked"))
    h.oom = 1;
  x->req_headers = h.list;
  if (h.oom || build_path(x, c, path) != 0) {
    pxy_free(x);
    return NULL;
  }

  CURL *cu = x->curl;
  curl_easy_reset(cu); /* the connections stay in the session's multi */
  curl_easy_setopt(cu, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(cu, CURLOPT_PROXY, "");
  curl_easy_setopt(cu, CURLOPT_CUSTOMREQUEST, method);
  curl_easy_setopt(cu, CURLOPT_HTTPHEADER, x->req_headers);
  curl_easy_setopt(cu, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(cu, CURLOPT_HEADERDATA, x);
  curl_easy_setopt(cu, CURLOPT_WRITEFUNCTION, on_data);
  curl_easy_setopt(cu, CURLOPT_WRITEDATA, x);
  curl_easy_setopt(cu, CURLOPT_ERRORBUFFER, x->errbuf);
  curl_easy_setopt(cu, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
  curl_easy_setopt(cu, CURLOPT_TCP_NODELAY, 1L);
  if (x->head)
    curl_easy_setopt(cu, CURLOPT_NOBODY, 1L);
  if (streaming) {
    const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
    curl_easy_setopt(cu, CURLOPT_POST, 1L);
    curl_easy_setopt(cu, CURLOPT_READFUNCTION, on_read);
    curl_easy_setopt(cu, CURLOPT_READDATA, x);
    if (cl)
      curl_easy_setopt(cu, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strtoll(cl, NULL, 10));
  }
  return x;
}

/*
 * Starts a prepared transfer (taken over) to m's worker under the lease
 * granted (taken over too): 0, or -1 with the answer queued in *res, the
 * lease released and x freed.
 */
static int forward_launch(pxy *x, struct MHD_Connection *c, mbd_model *m, mbd_req *r,
                          const mb_result *granted, MHD_RESULT *res) {
  mbd *d = x->d;
  char base[URL_BASE_ROOM];
  x->m = m;
  x->lease = granted->lease;
  x->granted = *granted;
  if (mbd_worker_url(m->worker, base, sizeof(base)) != 0) {
    pxy_free(x);
    mbd_count_code(d, m, 502);
    *res = mbd_reply_error(c, 502, "worker_failed", "the worker is not running", 0);
    return -1;
  }
  mbd_worker_busy_begin(m->worker);
  x->busy = 1;
  x->granted_at = wall_s();
  size_t n = strlen(base); /* < URL_BASE_ROOM: it ends where the path starts */
  memcpy(x->url + URL_BASE_ROOM - n, base, n);
  CURL *cu = x->curl;
  curl_easy_setopt(cu, CURLOPT_URL, x->url + URL_BASE_ROOM - n);
  if (!x->streaming) {
    x->body = r->body;
    x->body_len = r->len;
    r->body = NULL; /* the transfer owns it now */
    r->len = r->cap = 0;
    if (x->body_len > 0 || x->post_like) {
      curl_easy_setopt(cu, CURLOPT_POSTFIELDS, x->body ? x->body : "");
      curl_easy_setopt(cu, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)x->body_len);
    }
  }
  if (curl_multi_add_handle(x->multi, cu) != CURLM_OK) {
    pxy_free(x);
    *res = mbd_reply_error(c, 500, "internal", "cannot start the transfer", 0);
    return -1;
  }
  x->added = 1;
  return 0;
}

/* Waits for the worker's status and headers and answers with its stream. */
static MHD_RESULT forward_finish(mbd *d, struct MHD_Connection *c, mbd_model *m, pxy *x) {
  const mb_result *granted = &x->granted;

  /* The status and headers come first. */
  drive(x, UNTIL_HEADERS, 0);
  if (x->done && x->cres != CURLE_OK && x->status == 0) {
    char why[CURL_ERROR_SIZE + 64];
    snprintf(why, sizeof(why), "worker failed: %s",
             x->errbuf[0] ? x->errbuf : curl_easy_strerror(x->cres));
    mbd_worker_failed(m->worker); /* its loss reaches the core before the client hears */
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
  long status = x->status;
  int sized = status >= 200 && status != 204 && status != 304; /* may have a length */
  int plain = sized && !x->head;
  struct MHD_Response *resp;
  if (plain && x->done && x->cres == CURLE_OK) {
    /* The whole answer is here already: answer from a copy, which
     * libmicrohttpd sends with the headers in one write, and end the
     * transfer (lease, session) now. */
    resp = MHD_create_response_from_buffer(x->spill_len - x->spill_off, x->spill + x->spill_off,
                                           MHD_RESPMEM_MUST_COPY);
  } else {
    /* The worker's Content-Length goes on to the client (no chunked
     * framing) when the answer has one. */
    curl_off_t cl = -1;
    if (!sized || curl_easy_getinfo(x->curl, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl) != CURLE_OK)
      cl = -1;
    resp = MHD_create_response_from_callback(cl >= 0 ? (uint64_t)cl : MHD_SIZE_UNKNOWN,
                                             16 * 1024, pxy_read, x, pxy_free);
    x->streamed = resp != NULL;
  }
  if (resp == NULL) {
    pxy_free(x);
    return MHD_NO;
  }
  for (size_t off = 0; off < x->hdrs_len;) {
    char *line = x->hdrs + off;
    size_t n = strlen(line);
    off += n + 1;
    char *colon = strchr(line, ':');
    if (colon == NULL)
      continue;
    *colon = '\0';
    const char *v = colon + 1;
    while (*v == ' ')
      v++;
    MHD_add_response_header(resp, line, v);
    *colon = ':';
  }
  char ms[32];
  snprintf(ms, sizeof(ms), "%.1f", (double)granted->queue_ns / 1e6);
  MHD_add_response_header(resp, "X-Modelbuf-Queue-Ms", ms);
  snprintf(ms, sizeof(ms), "%.1f", (double)granted->load_ns / 1e6);
  MHD_add_response_header(resp, "X-Modelbuf-Load-Ms", ms);
  mbd_count_code(d, m, (int)status);
  if (!x->streamed)
    pxy_free(x); /* after its headers were copied; granted is gone with it */
  MHD_RESULT res = MHD_queue_response(c, (unsigned)status, resp);
  MHD_destroy_response(resp);
  return res;
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
  int rel = mb_release(d->ctx, granted->lease);
  if (rel != 0 && rel != MB_ELOST) /* ELOST: the plugin reported its model lost meanwhile */
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
  waiter w;
  if (lease_post(d, c, m, &w, res) != 0)
    return -1;
  return lease_wait(d, c, m, &w, got, cur, res);
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
  waiter w;
  if (lease_post(d, c, m, &w, res) != 0)
    return -1;
  /* The transfer gets ready while the core decides on the lease. */
  pxy *x = forward_prepare(d, c, method, slash ? slash : "/", 1);
  if (lease_wait(d, c, m, &w, &got, &cur, res) != 0) {
    if (x)
      pxy_free(x);
    return -1;
  }
  if (x == NULL || cur->worker == NULL) { /* out of memory, or a reload changed the backend */
    int oom = x == NULL;
    if (x)
      pxy_free(x);
    if (mb_release(d->ctx, got.lease) != 0)
      mbd_log(d, MBD_LOG_WARN, "lease already released", "model=%s", cur->name);
    *res = oom ? mbd_reply_error(c, 500, "internal", "out of memory", 0)
               : mbd_reply_error(c, 409, "state_conflict",
                                 "the model changed backend during a reload; send it again", 0);
    return -1;
  }
  if (forward_launch(x, c, cur, r, &got, res) != 0)
    return -1;
  r->px = x;
  r->pm = cur;
  return 1;
}

void mbd_proxy_stream_feed(mbd_req *r, const char *data, size_t n) {
  pxy *x = r->px;
  if (x->done)
    return; /* a finished transfer takes no more: the rest is dropped */
  x->in = data;
  x->in_len = n;
  x->in_off = 0;
  drive(x, UNTIL_SENT, 0); /* waits while the worker is slower than the client */
  x->in = NULL;
  x->in_len = x->in_off = 0;
}

MHD_RESULT mbd_proxy_stream_end(mbd *d, struct MHD_Connection *c, mbd_req *r) {
  pxy *x = r->px;
  r->px = NULL;
  x->in_eof = 1; /* drive() lets curl ask for the end */
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
  waiter w;
  if (lease_post(d, c, m, &w, &res) != 0)
    return res;
  /* A worker's transfer gets ready while the core decides on the lease. */
  pxy *x = m->worker ? forward_prepare(d, c, method, path, 0) : NULL;
  if (lease_wait(d, c, m, &w, &got, &m, &res) != 0) {
    if (x)
      pxy_free(x);
    return res;
  }
  if (m->kind == MBD_BACKEND_TENSORS || (m->plugin == NULL && m->worker == NULL)) {
    /* a reload gave it another backend */
    if (x)
      pxy_free(x);
    if (mb_release(d->ctx, got.lease) != 0)
      mbd_log(d, MBD_LOG_WARN, "lease already released", "model=%s", m->name);
    return mbd_reply_error(c, 409, "state_conflict",
                           "the model changed backend during a reload; send it again", 0);
  }
  if (m->plugin) {
    if (x)
      pxy_free(x);
    return serve_plugin(d, c, m, method, path, r, &got);
  }
  if (x == NULL)
    x = forward_prepare(d, c, method, path, 0);
  if (x == NULL) {
    if (mb_release(d->ctx, got.lease) != 0)
      mbd_log(d, MBD_LOG_WARN, "lease already released", "model=%s", m->name);
    return mbd_reply_error(c, 500, "internal", "out of memory", 0);
  }
  if (forward_launch(x, c, m, r, &got, &res) != 0)
    return res;
  return forward_finish(d, c, m, x);
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
