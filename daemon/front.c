/*
 * front.c - the front door (front.h): listeners, loop threads, client
 * connections, the life of a request on a connection, and the answer.
 *
 * Threads: http_threads loop threads, each with its own epoll (evloop.c),
 * its connections and its pool of worker connections (upstream.c). Every
 * thread watches the listening sockets (EPOLLEXCLUSIVE: one is woken per
 * new connection). A connection is touched only by its thread; other
 * threads (the core's, the task pool's) reach a request only by posting to
 * its loop.
 *
 * Locks: none of this file's own. The counters (connections, requests in
 * flight) are atomics; reserve_mu serialises the descriptor-exhaustion
 * trick of the accept path (one spare descriptor for the whole process).
 *
 * A connection's life: HEAD (reading a request head) -> BODY (reading a
 * buffered body) -> HANDLE (the handler owns the request; a streamed body
 * is read meanwhile) -> back to HEAD for the next request, or LINGER
 * (answer sent, output shut, the rest of the input read and dropped for a
 * while so that the answer is not destroyed by a reset) -> closed.
 * conn_progress is the one place that moves it on; every event ends there.
 */
#include "front.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "daemon.h"
#include "dashboard.h"
#include "front_int.h"
#include "tasks.h"
#include "upstream.h"

/* Bytes read from a socket at a time, and kept free after a head. */
#define READ_CHUNK (16 * 1024)
/* Output above which a producer waits (on_drain) and the body of a
 * streamed request stops being read. */
#define OUT_HIGH (256 * 1024)
/* Requests served on one connection before it is closed (nginx's
 * keepalive_requests). */
#define MAX_REQUESTS_PER_CONN 1000
/* Lingering close: wait at most this long for the client's end after the
 * last bytes it sent, and this long in all. */
#define LINGER_TIMEOUT_MS 5000
#define LINGER_TIME_MS 30000
/* The body's receive rate is checked over windows of this length. */
#define RATE_WINDOW_MS 10000
/* Keep-alive comments on a subscribed stream this often. */
#define STREAM_PING_MS 30000

enum { C_HEAD = 0, C_BODY, C_HANDLE, C_LINGER };
enum { R_NONE = 0, R_HEAD, R_BODY, R_DONE }; /* the answer's progress */

struct mbd_conn {
  mbd_io io;
  mbd_timer timer;
  mbd_post free_post;
  mbd_post kick_post;      /* a deferred conn_progress */
  int kick_pending;
  mbd_fthread *t;
  mbd_conn *prev, *next;   /* the thread's connections */
  int dead;
  int state;
  int running, again;      /* conn_progress re-entry */
  /* Input: [0, head_len) the current head, then unread bytes. */
  char *in;
  size_t in_len, in_cap, scan, head_len;
  int line_checked;
  /* Output. */
  char *out;
  size_t out_len, out_off, out_cap;
  /* Timing. */
  uint64_t head_started_ms; /* first byte of the current head, 0 none */
  uint64_t idle_since_ms;
  uint64_t last_read_ms, win_start_ms, win_bytes;
  uint64_t last_write_ms;
  uint64_t linger_start_ms;
  uint64_t ping_ms;
  /* The request in progress. */
  int has_req;
  int handled;             /* its handler was called */
  int resp;                /* R_* */
  int resp_chunked, resp_close_delim;
  uint64_t resp_left;      /* Content-Length bytes still to write */
  int resp_has_length;
  int close_after;         /* close once this answer is out */
  int must_linger;         /* input may still come: linger before closing */
  int expect_sent;
  /* Its body. */
  int body_reading, body_done, body_paused, body_error;
  uint64_t body_left;      /* MBD_BODY_LENGTH */
  uint64_t body_got;
  mbd_chunked ck;
  unsigned requests;
  mbd_req *req;            /* while has_req: allocated per request */
  mbd_post req_free_post;
  char peer[64];
};

/* ------------------------------------------------------------------------ */
/* Small helpers                                                             */

/*
 * Connection buffers (1 KiB times a power of two) come from and go back to
 * a small per-thread cache, so that a busy keep-alive connection reuses
 * buffers request after request without malloc, while an idle one holds
 * none (next_request gives them back).
 */
static int buf_class(size_t cap) {
  for (int k = 0; k < MBD_BUF_CLASSES; k++)
    if (cap == (size_t)1024 << k)
      return k;
  return -1;
}

static void buf_put(mbd_fthread *t, char *b, size_t cap) {
  if (b == NULL)
    return;
  int k = buf_class(cap);
  if (k >= 0 && t->nbufs[k] < MBD_BUF_KEEP) {
    t->bufs[k][t->nbufs[k]++] = b;
    return;
  }
  free(b);
}

static void *xrealloc_buf(mbd_fthread *t, char **buf, size_t *cap, size_t need) {
  if (need <= *cap)
    return *buf;
  size_t c = *cap ? *cap : 1024;
  while (c < need)
    c *= 2;
  if (*buf == NULL) {
    int k = buf_class(c);
    if (k >= 0 && t->nbufs[k] > 0) {
      *buf = t->bufs[k][--t->nbufs[k]];
      *cap = c;
      return *buf;
    }
  }
  char *b = realloc(*buf, c);
  if (b == NULL)
    return NULL;
  *buf = b;
  *cap = c;
  return b;
}

int mbd_pct_decode(const char *s, size_t n, char *out, size_t cap) {
  size_t k = 0;
  for (size_t i = 0; i < n; i++) {
    int c = (unsigned char)s[i];
    if (c == '%') {
      int hi, lo;
      if (i + 2 >= n)
        return -1;
      hi = s[i + 1], lo = s[i + 2];
      hi = hi >= '0' && hi <= '9' ? hi - '0' : (hi | 32) >= 'a' && (hi | 32) <= 'f' ? (hi | 32) - 'a' + 10 : -1;
      lo = lo >= '0' && lo <= '9' ? lo - '0' : (lo | 32) >= 'a' && (lo | 32) <= 'f' ? (lo | 32) - 'a' + 10 : -1;
      if (hi < 0 || lo < 0)
        return -1;
      c = hi * 16 + lo;
      i += 2;
    } else if (c == '+') {
      c = '+'; /* query arguments: '+' stays '+' (only %20 is a space) */
    }
    if (c == 0 || k + 1 >= cap)
      return -1;
    out[k++] = (char)c;
  }
  if (cap == 0)
    return -1;
  out[k] = '\0';
  return 0;
}

int mbd_path_model(const char *p, size_t n, char *name, size_t *rest) {
  size_t k = 0;
  while (k < n && p[k] != '/' && p[k] != '?')
    k++;
  /* The segment percent-decoded (a name with '/' comes as %2F), then held
   * to the rule of names: no other byte reaches the lookup. */
  if (k == 0 || k > 3 * MBD_MODEL_NAME_MAX ||
      mbd_pct_decode(p, k, name, MBD_MODEL_NAME_MAX + 1) != 0 || !mbd_model_name_valid(name))
    return -1;
  *rest = k;
  return 0;
}

int mbd_http_status(int err, const char **code) {
  switch (err) {
  case 0: *code = "ok"; return 200;
  case MB_ENOENT: *code = "not_found"; return 404;
  case MB_EINVAL: *code = "bad_request"; return 400;
  case MB_EQUEUEFULL: *code = "queue_full"; return 503;
  case MB_ENOSPC: *code = "cannot_fit"; return 503;
  case MB_ETIMEDOUT: *code = "timeout"; return 504;
  case MB_ESTATE: *code = "state_conflict"; return 409;
  case MB_ENOTSUP: *code = "not_supported"; return 409;
  case MB_EBUSY: *code = "busy"; return 409;
  case MB_ELOAD: *code = "load_failed"; return 502;
  case MB_EBACKEND: *code = "worker_failed"; return 502;
  case MB_ESHUTDOWN: *code = "shutting_down"; return 503;
  case MB_ECANCELED: *code = "canceled"; return 499;
  case MB_ELOST: *code = "model_lost"; return 502;
  default: *code = "internal"; return 500;
  }
}

static const char *reason_phrase(int status) {
  switch (status) {
  case 100: return "Continue";
  case 200: return "OK";
  case 201: return "Created";
  case 202: return "Accepted";
  case 204: return "No Content";
  case 206: return "Partial Content";
  case 301: return "Moved Permanently";
  case 302: return "Found";
  case 304: return "Not Modified";
  case 400: return "Bad Request";
  case 401: return "Unauthorized";
  case 403: return "Forbidden";
  case 404: return "Not Found";
  case 405: return "Method Not Allowed";
  case 408: return "Request Timeout";
  case 409: return "Conflict";
  case 410: return "Gone";
  case 411: return "Length Required";
  case 413: return "Content Too Large";
  case 414: return "URI Too Long";
  case 416: return "Range Not Satisfiable";
  case 417: return "Expectation Failed";
  case 422: return "Unprocessable Content";
  case 429: return "Too Many Requests";
  case 431: return "Request Header Fields Too Large";
  case 499: return "Client Closed Request";
  case 500: return "Internal Server Error";
  case 501: return "Not Implemented";
  case 502: return "Bad Gateway";
  case 503: return "Service Unavailable";
  case 504: return "Gateway Timeout";
  case 505: return "HTTP Version Not Supported";
  default: return "";
  }
}

/* ------------------------------------------------------------------------ */
/* Output                                                                    */

static void conn_progress(mbd_conn *c);

static void on_kick(mbd_post *p) {
  mbd_conn *c = (mbd_conn *)((char *)p - offsetof(mbd_conn, kick_post));
  c->kick_pending = 0;
  conn_progress(c);
}

/* Moves c on soon: after the current callback returns (a handler that
 * answered goes on using its request until then), or at once when
 * conn_progress is already running. */
static void conn_kick(mbd_conn *c) {
  if (c->dead)
    return;
  if (c->running) {
    c->again = 1;
    return;
  }
  if (!c->kick_pending) {
    c->kick_pending = 1;
    c->kick_post.fn = on_kick;
    mbd_loop_defer(c->t->loop, &c->kick_post);
  }
}

/* Appends to the output; on allocation failure the connection ends. */
static void out_put(mbd_conn *c, const void *p, size_t n) {
  if (c->dead || n == 0)
    return;
  if (c->out_off > 0 && c->out_off == c->out_len)
    c->out_off = c->out_len = 0;
  if (xrealloc_buf(c->t, &c->out, &c->out_cap, c->out_len + n) == NULL) {
    c->close_after = 1;
    c->body_error = 1;
    mbd_log(c->t->d, MBD_LOG_ERROR, "http: out of memory for an answer", "peer=%s", c->peer);
    return;
  }
  memcpy(c->out + c->out_len, p, n);
  c->out_len += n;
}

/* Decimal digits of v into buf (20 bytes at least); returns the length. */
static size_t utoa(uint64_t v, char *buf) {
  char tmp[24];
  size_t n = 0;
  do {
    tmp[n++] = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  for (size_t i = 0; i < n; i++)
    buf[i] = tmp[n - 1 - i];
  return n;
}

/* "Name: <decimal>\r\n" (no printf on the hot path). */
static void out_header_u64(mbd_conn *c, const char *name, size_t nl, uint64_t v) {
  char line[96];
  memcpy(line, name, nl);
  size_t k = nl + utoa(v, line + nl);
  line[k++] = '\r';
  line[k++] = '\n';
  out_put(c, line, k);
}

size_t mbd_resp_pending(const mbd_req *r) {
  const mbd_conn *c = r->c;
  return c ? c->out_len - c->out_off : 0;
}

/* The Date header's value, formatted once a second per thread. */
static const char *date_now(mbd_fthread *t) {
  time_t now = time(NULL);
  if (now != t->date_s) {
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(t->date, sizeof(t->date), "%a, %d %b %Y %H:%M:%S GMT", &tm);
    t->date_s = now;
  }
  return t->date;
}

void mbd_resp_start(mbd_req *r, int status) {
  mbd_conn *c = r->c;
  if (c == NULL || c->resp != R_NONE)
    return;
  c->resp = R_HEAD;
  r->status = status;
  /* A body not read to its end makes the connection unusable afterwards. */
  if (!c->body_done || c->body_error)
    c->close_after = 1;
  if (c->requests >= MAX_REQUESTS_PER_CONN || !r->h.keep_alive ||
      __atomic_load_n(&c->t->f->quiescing, __ATOMIC_ACQUIRE))
    c->close_after = 1;
  char line[128];
  size_t k = 9;
  memcpy(line, "HTTP/1.1 ", 9);
  k += utoa((uint64_t)(status >= 100 && status <= 999 ? status : 500), line + k);
  line[k++] = ' ';
  const char *reason = reason_phrase(status);
  size_t rl = strlen(reason);
  memcpy(line + k, reason, rl);
  k += rl;
  memcpy(line + k, "\r\nDate: ", 8);
  k += 8;
  const char *date = date_now(c->t);
  size_t dl = strlen(date);
  memcpy(line + k, date, dl);
  k += dl;
  line[k++] = '\r';
  line[k++] = '\n';
  out_put(c, line, k);
  /* Which node answered, on every answer: a balancer's client (or its
   * logs) tells the nodes of a fleet apart by it. The name is visible
   * ASCII (mbd_node_name_valid), safe in a header as it is. */
  const char *node = r->d->node;
  out_put(c, "X-Modelbuf-Node: ", 17);
  out_put(c, node, strlen(node));
  out_put(c, "\r\n", 2);
}

static int header_ok(const char *name, size_t nn, const char *value, size_t vn) {
  if (nn == 0)
    return 0;
  for (size_t i = 0; i < nn; i++)
    if (!mbd_http_tchar((unsigned char)name[i]))
      return 0;
  return mbd_http_value_ok(value, vn);
}

void mbd_resp_header_n(mbd_req *r, const char *name, size_t nn, const char *value, size_t vn) {
  mbd_conn *c = r->c;
  if (c == NULL || c->resp != R_HEAD)
    return;
  if (!header_ok(name, nn, value, vn)) {
    mbd_log(r->d, MBD_LOG_WARN, "http: header with bytes it cannot hold not sent", "name=\"%.*s\"",
            (int)(nn > 64 ? 64 : nn), name);
    return;
  }
  out_put(c, name, nn);
  out_put(c, ": ", 2);
  out_put(c, value, vn);
  out_put(c, "\r\n", 2);
}

void mbd_resp_header(mbd_req *r, const char *name, const char *value) {
  mbd_resp_header_n(r, name, strlen(name), value, strlen(value));
}

/* Ends the head: framing and connection headers, the empty line. */
static void end_head(mbd_conn *c, const char *type, int64_t length) {
  mbd_req *r = c->req;
  if (type != NULL) {
    out_put(c, "Content-Type: ", 14);
    out_put(c, type, strlen(type));
    out_put(c, "\r\n", 2);
  }
  int no_body = r->status == 204 || r->status == 304 || r->status < 200;
  c->resp_chunked = c->resp_close_delim = c->resp_has_length = 0;
  if (length >= 0) {
    if (!no_body)
      out_header_u64(c, "Content-Length: ", 16, (uint64_t)length);
    c->resp_has_length = 1;
    c->resp_left = (uint64_t)length;
  } else if (!no_body) {
    if (r->h.version == 11) {
      out_put(c, "Transfer-Encoding: chunked\r\n", 28);
      c->resp_chunked = !r->is_head;
    } else {
      c->resp_close_delim = 1;
      c->close_after = 1;
    }
  }
  if (c->close_after)
    out_put(c, "Connection: close\r\n\r\n", 21);
  else if (r->h.version == 10)
    out_put(c, "Connection: keep-alive\r\n\r\n", 26);
  else
    out_put(c, "\r\n", 2);
  if (no_body || r->is_head) {
    c->resp_left = 0;
    c->resp_chunked = 0;
  }
}

static void resp_done(mbd_conn *c) {
  c->resp = R_DONE;
  conn_kick(c);
}

void mbd_resp_body(mbd_req *r, const char *type, const void *body, size_t len) {
  mbd_conn *c = r->c;
  if (c == NULL || c->resp != R_HEAD)
    return;
  end_head(c, type, (int64_t)len);
  if (!r->is_head && r->status >= 200 && r->status != 204 && r->status != 304)
    out_put(c, body, len);
  c->resp_left = 0;
  resp_done(c);
}

void mbd_resp_stream(mbd_req *r, const char *type, int64_t length) {
  mbd_conn *c = r->c;
  if (c == NULL || c->resp != R_HEAD)
    return;
  end_head(c, type, length);
  c->resp = R_BODY;
  conn_kick(c); /* starts sending the head */
}

void mbd_resp_write(mbd_req *r, const void *p, size_t n) {
  mbd_conn *c = r->c;
  if (c == NULL || c->resp != R_BODY || n == 0 || r->is_head)
    return;
  if (c->resp_chunked) {
    char size[24];
    size_t k = 0;
    for (int sh = 60; sh >= 0; sh -= 4) {
      unsigned d = (unsigned)((n >> sh) & 0xf);
      if (d || k || sh == 0)
        size[k++] = "0123456789abcdef"[d];
    }
    size[k++] = '\r';
    size[k++] = '\n';
    out_put(c, size, k);
    out_put(c, p, n);
    out_put(c, "\r\n", 2);
  } else if (c->resp_has_length) {
    if (n > c->resp_left)
      n = (size_t)c->resp_left; /* never more than announced */
    out_put(c, p, n);
    c->resp_left -= n;
  } else {
    out_put(c, p, n);
  }
  conn_kick(c);
}

void mbd_resp_end(mbd_req *r) {
  mbd_conn *c = r->c;
  if (c == NULL || c->resp != R_BODY)
    return;
  if (c->resp_has_length && c->resp_left > 0 && !r->is_head) {
    mbd_resp_abort(r); /* fewer bytes than announced: the client must see it */
    return;
  }
  if (c->resp_chunked)
    out_put(c, "0\r\n\r\n", 5);
  resp_done(c);
}

static void conn_close(mbd_conn *c);

static void resp_reset(mbd_conn *c);

void mbd_resp_abort(mbd_req *r) {
  mbd_conn *c = r->c;
  if (c == NULL)
    return;
  r->on_gone = NULL; /* the handler ends it itself */
  r->on_drain = NULL;
  if (c->resp == R_BODY && !c->resp_close_delim && !(c->body_reading && !c->body_done)) {
    /* The framing (a length, or chunks) already tells the client the
     * answer is cut when the connection ends before its end: what was
     * written still goes out, then the connection closes as after any
     * answer, with no end chunk. A reset instead could drop, in the
     * client's kernel, a head it had not read yet (as nginx: close). */
    c->close_after = 1;
    resp_done(c);
    return;
  }
  resp_reset(c);
}

/* Ends the connection at once: a reset, after what the socket takes now. */
static void resp_reset(mbd_conn *c) {
  /* What is buffered goes out if the socket takes it now; then the
   * connection ends without the answer's end. */
  if (c->out_len > c->out_off) {
    ssize_t w = send(c->io.fd, c->out + c->out_off, c->out_len - c->out_off,
                     MSG_NOSIGNAL | MSG_DONTWAIT);
    (void)w;
  }
  c->out_off = c->out_len = 0;
  if (c->req)
    c->req->on_gone = NULL;
  /* A reset, not a close: a client reading until the close (HTTP/1.0,
   * no length) must not take the cut answer for a whole one. */
  struct linger lg = {1, 0};
  setsockopt(c->io.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
  conn_close(c);
}

void mbd_reply_text(mbd_req *r, int status, const char *type, const char *text, size_t len) {
  mbd_resp_start(r, status);
  mbd_resp_body(r, type, text, len);
}

static void reply_doc(mbd_req *r, int status, json_t *doc, const char *header,
                      const char *value) {
  char *s = doc ? json_dumps(doc, MBD_JSON_FLAGS) : NULL;
  json_decref(doc);
  if (s == NULL) {
    static const char oom[] = "{\"error\":{\"code\":\"internal\",\"message\":\"out of memory\"}}";
    mbd_reply_text(r, 500, "application/json", oom, sizeof(oom) - 1);
    return;
  }
  mbd_resp_start(r, status);
  if (header != NULL)
    mbd_resp_header(r, header, value);
  mbd_resp_body(r, "application/json", s, strlen(s));
  free(s);
}

void mbd_reply_json(mbd_req *r, int status, json_t *doc) { reply_doc(r, status, doc, NULL, NULL); }

void mbd_reply_error_hdr(mbd_req *r, int status, const char *code, const char *message,
                         const char *header, const char *value) {
  /* Messages may quote what a client sent: only printable ASCII goes into
   * the JSON (which must be UTF-8). */
  char clean[1024];
  size_t k = 0;
  for (const char *p = message; *p && k + 1 < sizeof(clean); p++)
    clean[k++] = (unsigned char)*p >= 0x20 && (unsigned char)*p < 0x7f ? *p : '?';
  clean[k] = '\0';
  json_t *doc = json_pack("{s:{s:s,s:s}}", "error", "code", code, "message", clean);
  reply_doc(r, status, doc, header, value);
}

void mbd_reply_error(mbd_req *r, int status, const char *code, const char *message, int retry_s) {
  char v[16];
  snprintf(v, sizeof(v), "%d", retry_s);
  mbd_reply_error_hdr(r, status, code, message, retry_s > 0 ? "Retry-After" : NULL, v);
}

/* ------------------------------------------------------------------------ */
/* Reading a request                                                         */

const char *mbd_req_header_raw(const mbd_req *r, const char *name, size_t *len) {
  return mbd_http_field_get(r->buf, &r->h, name, len);
}

int mbd_req_header(const mbd_req *r, const char *name, char *out, size_t cap) {
  size_t n;
  const char *v = mbd_req_header_raw(r, name, &n);
  if (v == NULL) {
    if (cap)
      out[0] = '\0';
    return 0;
  }
  if (cap == 0)
    return 1;
  if (n >= cap)
    n = cap - 1;
  memcpy(out, v, n);
  out[n] = '\0';
  return 1;
}

int mbd_req_query(const mbd_req *r, const char *key, char *out, size_t cap) {
  size_t kl = strlen(key);
  const char *q = r->query, *end = r->query + r->query_len;
  while (q < end) {
    const char *amp = memchr(q, '&', (size_t)(end - q));
    const char *e = amp ? amp : end;
    const char *eq = memchr(q, '=', (size_t)(e - q));
    const char *kend = eq ? eq : e;
    if ((size_t)(kend - q) == kl && memcmp(q, key, kl) == 0) {
      if (eq == NULL) {
        if (cap)
          out[0] = '\0';
        return 1;
      }
      return mbd_pct_decode(eq + 1, (size_t)(e - eq - 1), out, cap) == 0 ? 1 : -1;
    }
    q = e + (amp ? 1 : 0);
  }
  return 0;
}

int mbd_req_body(mbd_req *r, const char **p, size_t *n) {
  return mbd_spool_view(&r->body, p, n);
}

const char *mbd_req_peer(const mbd_req *r) { return r->c ? r->c->peer : "-"; }

mbd_loop *mbd_req_loop(mbd_req *r) { return r->t->loop; }

uint64_t mbd_req_body_received(const mbd_req *r) { return r->c ? r->c->body_got : 0; }

void mbd_req_pause_body(mbd_req *r) {
  if (r->c)
    r->c->body_paused = 1;
}

void mbd_req_resume_body(mbd_req *r) {
  mbd_conn *c = r->c;
  if (c && c->body_paused) {
    c->body_paused = 0;
    c->last_read_ms = mbd_loop_now(c->t->loop); /* the pause was ours, not the client's */
    c->win_start_ms = c->last_read_ms;
    c->win_bytes = 0;
    conn_kick(c);
  }
}

/* ------------------------------------------------------------------------ */
/* Streams woken by events                                                   */

void mbd_req_subscribe(mbd_req *r) {
  mbd_fthread *t = r->t;
  if (r->subscribed || r->c == NULL)
    return;
  r->subscribed = 1;
  r->sub_prev = NULL;
  r->sub_next = t->subs;
  if (t->subs)
    t->subs->sub_prev = r;
  t->subs = r;
  __atomic_add_fetch(&t->nsubs, 1, __ATOMIC_RELAXED);
  r->c->ping_ms = mbd_loop_now(t->loop) + STREAM_PING_MS;
}

static void unsubscribe(mbd_req *r) {
  if (!r->subscribed)
    return;
  if (r->sub_prev)
    r->sub_prev->sub_next = r->sub_next;
  else
    r->t->subs = r->sub_next;
  if (r->sub_next)
    r->sub_next->sub_prev = r->sub_prev;
  r->subscribed = 0;
  r->sub_prev = r->sub_next = NULL;
  __atomic_sub_fetch(&r->t->nsubs, 1, __ATOMIC_RELAXED);
}

static void on_streams_wake(mbd_post *p) {
  mbd_fthread *t = (mbd_fthread *)((char *)p - offsetof(mbd_fthread, wake_post));
  __atomic_store_n(&t->wake_pending, 0, __ATOMIC_RELEASE);
  for (mbd_req *r = t->subs, *next; r != NULL; r = next) {
    next = r->sub_next;
    if (r->on_drain && r->c && mbd_resp_pending(r) < OUT_HIGH)
      r->on_drain(r);
  }
}

void mbd_front_wake_streams(mbd *d) {
  mbd_front *f = d->front;
  if (f == NULL)
    return;
  for (int i = 0; i < f->nthreads; i++) {
    mbd_fthread *t = &f->threads[i];
    if (__atomic_load_n(&t->nsubs, __ATOMIC_RELAXED) == 0)
      continue;
    if (__atomic_exchange_n(&t->wake_pending, 1, __ATOMIC_ACQ_REL) == 0)
      mbd_loop_post(t->loop, &t->wake_post);
  }
}

/* ------------------------------------------------------------------------ */
/* Connections                                                               */

static void conn_free_deferred(mbd_post *p) {
  mbd_conn *c = (mbd_conn *)((char *)p - offsetof(mbd_conn, free_post));
  buf_put(c->t, c->in, c->in_cap);
  buf_put(c->t, c->out, c->out_cap);
  free(c);
}

static void req_free_deferred(mbd_post *p) {
  free((char *)p - offsetof(mbd_req, free_post));
}

/* A new request on c (zeroed). 0, or -1 when out of memory. */
static int req_new(mbd_conn *c) {
  mbd_req *r = calloc(1, sizeof(*r));
  if (r == NULL)
    return -1;
  r->d = c->t->d;
  r->t = c->t;
  r->c = c;
  mbd_spool_init(&r->body, 0, NULL);
  c->req = r;
  c->has_req = 1;
  c->resp = R_NONE;
  __atomic_add_fetch(&c->t->f->active, 1, __ATOMIC_RELAXED);
  return 0;
}

/* Ends the request in progress (its answer is complete, or the client
 * left): the handler is told if it still owns it. */
static void req_end(mbd_conn *c, int gone) {
  mbd_req *r = c->req;
  if (!c->has_req)
    return;
  unsubscribe(r);
  if (gone && r->on_gone) {
    void (*fn)(mbd_req *) = r->on_gone;
    r->on_gone = NULL;
    fn(r);
  }
  r->on_drain = NULL;
  r->on_body = NULL;
  r->on_body_end = NULL;
  r->c = NULL;
  mbd_spool_free(&r->body);
  c->has_req = 0;
  c->req = NULL;
  /* Freed after this turn: whoever called into the end of the request
   * (a handler that cut its answer) may still read it until it returns. */
  r->free_post.fn = req_free_deferred;
  mbd_loop_defer(c->t->loop, &r->free_post);
  __atomic_sub_fetch(&c->t->f->active, 1, __ATOMIC_RELEASE);
}

static void conn_close(mbd_conn *c) {
  if (c->dead)
    return;
  mbd_fthread *t = c->t;
  c->dead = 1;
  req_end(c, 1);
  mbd_io_stop(t->loop, &c->io);
  mbd_timer_stop(t->loop, &c->timer);
  close(c->io.fd);
  if (c->prev)
    c->prev->next = c->next;
  else
    t->conns = c->next;
  if (c->next)
    c->next->prev = c->prev;
  t->nconns--;
  __atomic_sub_fetch(&t->f->conns, 1, __ATOMIC_RELEASE);
  c->free_post.fn = conn_free_deferred;
  mbd_loop_defer(t->loop, &c->free_post);
}

/* Answers an error that ends the connection (a malformed request, a
 * timeout, a body over the limit). A handler that owned the request is
 * told first (on_gone) and forgets it; an answer already started is cut. */
static void conn_fail(mbd_conn *c, int status, const char *code, const char *msg) {
  if (!c->has_req) {
    if (req_new(c) != 0) {
      conn_close(c);
      return;
    }
    c->req->buf = c->in ? c->in : "";
    c->req->h.version = 11;
    c->body_done = 1;
  }
  mbd_req *r = c->req;
  unsubscribe(r);
  if (r->on_gone) {
    void (*fn)(mbd_req *) = r->on_gone;
    r->on_gone = NULL;
    fn(r);
  }
  r->on_drain = NULL;
  r->on_body = NULL;
  r->on_body_end = NULL;
  if (c->dead)
    return;
  if (c->resp != R_NONE) { /* an answer had started: cut it */
    resp_reset(c);
    return;
  }
  c->close_after = 1;
  c->must_linger = 1;
  c->body_error = 1;
  c->body_reading = 0;
  c->state = C_HANDLE;
  c->handled = 1;
  mbd_reply_error_hdr(r, status, code, msg, status == 503 ? "Retry-After" : NULL, "1");
}

/* Lets the handler of a request whose client went away clean up, then
 * closes. */
static void conn_gone(mbd_conn *c) { conn_close(c); }

/* ------------------------------------------------------------------------ */
/* Heads                                                                     */

static int authorized(mbd *d, const mbd_req *r) {
  const mbd_config *cfg = d->cfg;
  if (cfg->n_api_keys == 0)
    return 1;
  size_t n;
  const char *v = mbd_req_header_raw(r, "Authorization", &n);
  const char *key = NULL;
  size_t kn = 0;
  if (v != NULL && n > 7 && strncasecmp(v, "Bearer ", 7) == 0) {
    key = v + 7;
    kn = n - 7;
    while (kn > 0 && *key == ' ')
      key++, kn--;
  } else if ((v = mbd_req_header_raw(r, "X-API-Key", &n)) != NULL) {
    key = v;
    kn = n;
  }
  if (key == NULL)
    return 0;
  int ok = 0;
  for (size_t i = 0; i < cfg->n_api_keys; i++) {
    /* Constant time in the presented key. */
    const char *k = cfg->api_keys[i];
    size_t kl = strlen(k);
    unsigned char diff = (unsigned char)(kl != kn);
    for (size_t j = 0; j < kl; j++)
      diff |= (unsigned char)((j < kn ? key[j] : 0) ^ k[j]);
    ok |= diff == 0;
  }
  return ok;
}

/* Open without a key: GET /health, and the dashboard's files (they hold
 * no data; the page asks the user for the key the API needs). */
static int public_route(mbd *d, const mbd_req *r) {
  return ((strcmp(r->method, "GET") == 0 || strcmp(r->method, "HEAD") == 0) &&
          r->path_len == 7 && memcmp(r->path, "/health", 7) == 0) ||
         mbd_dashboard_public(d, r);
}

/* The bytes after the head: body of this request, or the next ones. */
static void start_body(mbd_conn *c);
static void feed_body(mbd_conn *c);

static void call_handler(mbd_conn *c) {
  mbd_req *r = c->req;
  c->handled = 1;
  r->route.handle(r);
}

/* The head of c->in[0..head_len) is complete. */
static void head_complete(mbd_conn *c) {
  mbd_fthread *t = c->t;
  mbd *d = t->d;
  const mbd_config *cfg = d->cfg;
  if (req_new(c) != 0) {
    conn_close(c);
    return;
  }
  mbd_req *r = c->req;
  r->buf = c->in; /* set again once the buffer has its final room */
  r->started_ms = mbd_loop_now(t->loop);
  mbd_spool_init(&r->body, (size_t)cfg->body_buffer_bytes, cfg->temp_dir);
  c->handled = 0;
  c->close_after = 0;
  c->must_linger = 0;
  c->expect_sent = 0;
  c->body_reading = c->body_done = c->body_paused = c->body_error = 0;
  c->body_left = c->body_got = 0;
  c->requests++;

  const char *why;
  int st = mbd_http_parse_request(c->in, c->head_len, &r->h, &why);
  if (st != 0) {
    const char *code = st == 431 ? "header_too_large" : st == 414 ? "uri_too_long"
                       : st == 501 ? "not_implemented" : st == 505 ? "version_not_supported"
                       : st == 417 ? "expectation_failed" : "bad_request";
    conn_fail(c, st, code, why);
    return;
  }
  r->has_body = r->h.framing == MBD_BODY_CHUNKED ||
                (r->h.framing == MBD_BODY_LENGTH && r->h.content_length > 0);
  /* Room after the head for body bytes (or a pipelined request); the head
   * never moves from here on, so the spans below stay valid. */
  if (xrealloc_buf(c->t, &c->in, &c->in_cap, c->head_len + (r->has_body ? READ_CHUNK : 1024)) ==
      NULL) {
    conn_fail(c, 500, "internal", "out of memory");
    return;
  }
  r->buf = c->in;
  snprintf(r->method, sizeof(r->method), "%.*s", (int)r->h.method.len, c->in + r->h.method.off);
  r->is_head = strcmp(r->method, "HEAD") == 0;
  r->target = c->in + r->h.target.off;
  r->target_len = r->h.target.len;
  r->path = c->in + r->h.path.off;
  r->path_len = r->h.path.len;
  r->query = c->in + r->h.query.off;
  r->query_len = r->h.query.len;
  c->body_done = !r->has_body;

  if (!public_route(d, r) && !authorized(d, r)) {
    mbd_log_limited(d, &t->f->rl_auth, MBD_LOG_INFO, "http: request without a valid API key",
                    "peer=%s", c->peer);
    c->close_after = 1;
    c->must_linger = r->has_body;
    c->state = C_HANDLE;
    c->handled = 1;
    mbd_reply_error_hdr(r, 401, "unauthorized",
                        "missing or wrong API key: send Authorization: Bearer KEY or X-API-Key: "
                        "KEY (the key is MODELBUF_API_KEY or api_keys in the configuration)",
                        "WWW-Authenticate", "Bearer");
    return;
  }
  if (r->h.asterisk) {
    c->state = C_HANDLE;
    c->handled = 1;
    c->must_linger = r->has_body;
    mbd_resp_start(r, strcmp(r->method, "OPTIONS") == 0 ? 204 : 400);
    mbd_resp_header(r, "Allow", "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS");
    mbd_resp_body(r, NULL, "", 0);
    return;
  }
  mbd_route_resolve(d, r);
  if (c->resp == R_NONE && r->route.handle == NULL)
    mbd_reply_error(r, 500, "internal", "no handler for the route", 0);
  if (c->resp != R_NONE) { /* the resolver answered (404, 405, ...) */
    c->state = C_HANDLE;
    c->handled = 1;
    c->must_linger = r->has_body;
    return;
  }
  if (r->h.framing == MBD_BODY_LENGTH && r->h.content_length > cfg->max_body_bytes) {
    char msg[160];
    snprintf(msg, sizeof(msg), "request body of %llu bytes is over the limit of %llu bytes "
             "(limits.max_body_size)", (unsigned long long)r->h.content_length,
             (unsigned long long)cfg->max_body_bytes);
    conn_fail(c, 413, "too_large", msg);
    return;
  }
  if (r->h.expect_continue && r->has_body && c->in_len == c->head_len) {
    out_put(c, "HTTP/1.1 100 Continue\r\n\r\n", 25);
    c->expect_sent = 1;
  }
  start_body(c);
  if (r->route.body == MBD_BODY_STREAM || !r->has_body) {
    c->state = C_HANDLE;
    call_handler(c);
    if (r->has_body && !c->dead)
      feed_body(c);
  } else {
    c->state = C_BODY;
    feed_body(c);
  }
}

/* ------------------------------------------------------------------------ */
/* Bodies                                                                    */

static void start_body(mbd_conn *c) {
  mbd_req *r = c->req;
  if (!r->has_body)
    return;
  c->body_reading = 1;
  c->body_left = r->h.framing == MBD_BODY_LENGTH ? r->h.content_length : 0;
  if (r->h.framing == MBD_BODY_CHUNKED)
    mbd_chunked_init(&c->ck, c->t->d->cfg->max_header_bytes);
  uint64_t now = mbd_loop_now(c->t->loop);
  c->last_read_ms = c->win_start_ms = now;
  c->win_bytes = 0;
}

/* The body is whole: buffered routes run their handler now. */
static void body_complete(mbd_conn *c) {
  mbd_req *r = c->req;
  c->body_reading = 0;
  c->body_done = 1;
  if (c->state == C_BODY) {
    c->state = C_HANDLE;
    call_handler(c);
  } else if (r->on_body_end) {
    r->on_body_end(r);
  }
}

/* One piece of decoded body. 0, or -1 when the request ended on it. */
static int body_data(mbd_conn *c, const char *p, size_t n) {
  mbd_req *r = c->req;
  const mbd_config *cfg = c->t->d->cfg;
  if (n == 0)
    return 0;
  c->body_got += n;
  if (c->body_got > cfg->max_body_bytes) {
    char msg[128];
    snprintf(msg, sizeof(msg), "request body over the limit of %llu bytes (limits.max_body_size)",
             (unsigned long long)cfg->max_body_bytes);
    conn_fail(c, 413, "too_large", msg);
    return -1;
  }
  if (c->state == C_BODY) {
    int rc = mbd_spool_append(&r->body, p, n);
    if (rc != 0) {
      mbd_log_limited(c->t->d, &c->t->f->rl_spool, MBD_LOG_ERROR,
                      "http: cannot keep a request body", "why=\"%s\" temp_dir=\"%s\"",
                      mb_strerror(rc), cfg->temp_dir ? cfg->temp_dir : "/tmp");
      conn_fail(c, 500, "internal", "cannot keep the request body (temp_dir)");
      return -1;
    }
  } else if (r->on_body) {
    r->on_body(r, p, n);
    if (c->dead || !c->has_req)
      return -1;
  }
  return 0;
}

/* Takes body bytes from c->in[head_len..in_len) while the body reads. */
static void feed_body(mbd_conn *c) {
  mbd_req *r = c->req;
  size_t off = c->head_len;
  while (c->body_reading && !c->body_paused && off < c->in_len && !c->dead) {
    const char *p = c->in + off;
    size_t avail = c->in_len - off;
    if (r->h.framing == MBD_BODY_LENGTH) {
      size_t k = avail < c->body_left ? avail : (size_t)c->body_left;
      c->body_left -= k;
      off += k;
      if (body_data(c, p, k) != 0)
        return;
      if (c->body_left == 0) {
        memmove(c->in + c->head_len, c->in + off, c->in_len - off);
        c->in_len -= off - c->head_len;
        body_complete(c);
        return;
      }
    } else {
      size_t used;
      const char *data, *why;
      size_t dn;
      int st = mbd_chunked_feed(&c->ck, p, avail, &used, &data, &dn, &why);
      off += used;
      if (st < 0) {
        conn_fail(c, 400, "bad_request", why);
        return;
      }
      if (body_data(c, data, dn) != 0)
        return;
      if (st == 1) {
        memmove(c->in + c->head_len, c->in + off, c->in_len - off);
        c->in_len -= off - c->head_len;
        body_complete(c);
        return;
      }
    }
  }
  if (!c->dead && c->has_req) {
    memmove(c->in + c->head_len, c->in + off, c->in_len - off);
    c->in_len -= off - c->head_len;
  }
}

/* ------------------------------------------------------------------------ */
/* Progress                                                                  */

/* Writes what the socket takes. 0, or -1 when the client is gone. */
static int flush_out(mbd_conn *c) {
  while (c->out_off < c->out_len) {
    ssize_t w = send(c->io.fd, c->out + c->out_off, c->out_len - c->out_off,
                     MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w < 0) {
      if (errno == EINTR)
        continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK)
        return 0;
      return -1;
    }
    c->out_off += (size_t)w;
    c->last_write_ms = mbd_loop_now(c->t->loop);
  }
  c->out_off = c->out_len = 0;
  if (c->out_cap > 64 * 1024) { /* an idle connection keeps little */
    free(c->out);
    c->out = NULL;
    c->out_cap = 0;
  }
  return 0;
}

/* Reads what the socket has into c->in (up to max_total bytes in all).
 * 1 when bytes came, 0 when none now, -1 at the client's end or an error. */
static int read_in(mbd_conn *c, size_t max_total) {
  if (c->in_len >= max_total)
    return 0;
  size_t want = max_total - c->in_len;
  if (want > READ_CHUNK)
    want = READ_CHUNK;
  if (c->state == C_HEAD) {
    if (xrealloc_buf(c->t, &c->in, &c->in_cap, c->in_len + want) == NULL)
      return -1;
  } else if (c->in_cap - c->in_len < want) {
    want = c->in_cap - c->in_len; /* the head stays where it is */
    if (want == 0)
      return 0;
  }
  ssize_t n = recv(c->io.fd, c->in + c->in_len, want, MSG_DONTWAIT);
  if (n < 0)
    return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? 0 : -1;
  if (n == 0)
    return -1;
  c->in_len += (size_t)n;
  return 1;
}

/* Lingering: reads and drops what the client still sends. 0, or -1 at
 * its end. */
static int drop_input(mbd_conn *c) {
  char junk[4096];
  for (int i = 0; i < 16; i++) {
    ssize_t n = recv(c->io.fd, junk, sizeof(junk), MSG_DONTWAIT);
    if (n > 0) {
      c->last_read_ms = mbd_loop_now(c->t->loop);
      continue;
    }
    if (n == 0)
      return -1;
    return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? 0 : -1;
  }
  return 0;
}

/* The next request's head: done with the last, keep-alive. */
static void next_request(mbd_conn *c) {
  size_t rest = c->in_len - c->head_len;
  memmove(c->in, c->in + c->head_len, rest);
  c->in_len = rest;
  c->head_len = 0;
  c->scan = 0;
  c->line_checked = 0;
  c->state = C_HEAD;
  c->head_started_ms = 0;
  c->idle_since_ms = mbd_loop_now(c->t->loop);
  if (c->in_len == 0 && c->in_cap > 0) {
    buf_put(c->t, c->in, c->in_cap); /* an idle connection keeps no buffer */
    c->in = NULL;
    c->in_cap = 0;
  }
  if (c->out_len == c->out_off && c->out_cap > 0) {
    buf_put(c->t, c->out, c->out_cap);
    c->out = NULL;
    c->out_cap = c->out_len = c->out_off = 0;
  }
}

/* Looks for a complete head in c->in; handles it. */
static void try_head(mbd_conn *c) {
  const mbd_config *cfg = c->t->d->cfg;
  size_t max = (size_t)cfg->max_header_bytes;
  /* Empty lines before a request are ignored (RFC 9112 §2.2). */
  size_t skip = 0;
  while (skip + 1 < c->in_len && c->in[skip] == '\r' && c->in[skip + 1] == '\n')
    skip += 2;
  if (skip > 0) {
    memmove(c->in, c->in + skip, c->in_len - skip);
    c->in_len -= skip;
  }
  if (c->in_len == 0)
    return;
  if (c->head_started_ms == 0)
    c->head_started_ms = mbd_loop_now(c->t->loop);
  const char *why;
  if (!c->line_checked) {
    int st = mbd_http_check_request_line(c->in, c->in_len, max, &why);
    if (st > 1) {
      conn_fail(c, st, st == 414 ? "uri_too_long" : st == 505 ? "version_not_supported"
                                                            : "bad_request", why);
      return;
    }
    c->line_checked = st == 0;
  }
  size_t end = mbd_http_head_end(c->in, c->in_len, &c->scan);
  if (end == 0 || end > max) {
    if (c->in_len > max || end > max)
      conn_fail(c, 431, "header_too_large", "request head over limits.max_header_size");
    return;
  }
  c->head_len = end;
  head_complete(c);
}

/* Whether the connection reads its socket now. */
static int wants_read(const mbd_conn *c) {
  switch (c->state) {
  case C_HEAD:
    return c->in_len <= c->t->d->cfg->max_header_bytes;
  case C_BODY:
    return 1;
  case C_HANDLE:
    if (c->body_reading)
      return !c->body_paused && mbd_resp_pending(c->req) < OUT_HIGH;
    /* The next pipelined request may come meanwhile: it is read into the
     * room after the head (the interest stays as it is, one system call
     * less per request) until that is full. */
    return c->in_len < c->in_cap;
  default:
    return 1; /* C_LINGER */
  }
}

static void update_interest(mbd_conn *c) {
  /* RDHUP always: a client that leaves is seen even when not read. */
  uint32_t ev = MBD_IO_RDHUP;
  if (wants_read(c))
    ev |= MBD_IO_READ;
  if (c->out_len > c->out_off)
    ev |= MBD_IO_WRITE;
  if (mbd_io_set(c->t->loop, &c->io, ev) != 0)
    conn_close(c);
}

static void arm_timer(mbd_conn *c) {
  const mbd_config *cfg = c->t->d->cfg;
  uint64_t due = UINT64_MAX;
  switch (c->state) {
  case C_HEAD:
    due = c->head_started_ms ? c->head_started_ms + (uint64_t)cfg->header_timeout_ms
                             : c->idle_since_ms + (uint64_t)cfg->idle_timeout_ms;
    break;
  case C_BODY:
  case C_HANDLE:
    if (c->body_reading && !c->body_paused) {
      due = c->last_read_ms + (uint64_t)cfg->body_timeout_ms;
      if (cfg->min_body_rate > 0 && c->win_start_ms + RATE_WINDOW_MS < due)
        due = c->win_start_ms + RATE_WINDOW_MS;
    }
    if (c->req && c->req->subscribed && c->ping_ms < due)
      due = c->ping_ms;
    break;
  case C_LINGER: {
    uint64_t a = c->last_read_ms + LINGER_TIMEOUT_MS, b = c->linger_start_ms + LINGER_TIME_MS;
    due = a < b ? a : b;
    break;
  }
  }
  if (c->out_len > c->out_off && c->last_write_ms + (uint64_t)cfg->send_timeout_ms < due)
    due = c->last_write_ms + (uint64_t)cfg->send_timeout_ms;
  if (due == UINT64_MAX)
    mbd_timer_stop(c->t->loop, &c->timer);
  else if (c->timer.slot == 0 || c->timer.due_ms != due)
    mbd_timer_start(c->t->loop, &c->timer, due);
}

/* The answer is out: the next request, or the end of the connection. */
static void answer_sent(mbd_conn *c) {
  int close_now = c->close_after;
  int linger = c->must_linger || (c->body_reading && !c->body_done);
  req_end(c, 0);
  if (!close_now) {
    next_request(c);
    return;
  }
  int unread = 0;
  if (!linger && c->in_len > c->head_len)
    linger = 1;
  if (!linger && ioctl(c->io.fd, FIONREAD, &unread) == 0 && unread > 0)
    linger = 1;
  if (!linger) {
    conn_close(c);
    return;
  }
  /* Lingering close (as nginx): our side is shut, what the client still
   * sends is read and dropped for a while, so that its unread bytes do
   * not make the kernel reset the connection before the answer is read. */
  shutdown(c->io.fd, SHUT_WR);
  c->state = C_LINGER;
  c->linger_start_ms = c->last_read_ms = mbd_loop_now(c->t->loop);
  buf_put(c->t, c->in, c->in_cap);
  c->in = NULL;
  c->in_len = c->in_cap = c->head_len = 0;
}

static void step(mbd_conn *c) {
  mbd_req *r = c->req;
  switch (c->state) {
  case C_HEAD:
    try_head(c);
    break;
  case C_BODY:
    feed_body(c);
    break;
  case C_HANDLE:
    if (c->body_reading && !c->body_paused)
      feed_body(c);
    if (c->dead || c->state != C_HANDLE)
      return;
    if (c->resp == R_DONE && c->out_len == c->out_off) {
      answer_sent(c);
      return;
    }
    if (c->resp == R_BODY && r->on_drain && mbd_resp_pending(r) < OUT_HIGH / 4)
      r->on_drain(r);
    break;
  default:
    break;
  }
}

/* Moves the connection on as far as it can go now: writes, parses,
 * handles, answers, the next pipelined request. The one place every event
 * ends in. */
static void conn_progress(mbd_conn *c) {
  if (c->dead)
    return;
  if (c->running) {
    c->again = 1;
    return;
  }
  c->running = 1;
  do {
    c->again = 0;
    if (c->out_len > c->out_off && flush_out(c) != 0) {
      c->running = 0;
      conn_gone(c);
      return;
    }
    size_t in_before = c->in_len;
    int state_before = c->state, resp_before = c->resp;
    step(c);
    if (c->dead)
      break;
    if (c->state != state_before || c->resp != resp_before || c->in_len != in_before)
      c->again = 1;
  } while (c->again && !c->dead);
  c->running = 0;
  if (c->dead)
    return;
  update_interest(c);
  if (!c->dead)
    arm_timer(c);
}

static void on_conn_io(mbd_io *io, uint32_t ev) {
  mbd_conn *c = io->arg;
  if (c->dead)
    return;
  if (ev & MBD_IO_ERROR) {
    conn_gone(c);
    return;
  }
  if ((ev & MBD_IO_WRITE) && flush_out(c) != 0) {
    conn_gone(c);
    return;
  }
  if (ev & (MBD_IO_READ | MBD_IO_RDHUP | MBD_IO_HUP)) {
    if (c->state == C_LINGER) {
      if (drop_input(c) != 0) {
        conn_close(c);
        return;
      }
    } else if (wants_read(c)) {
      const mbd_config *cfg = c->t->d->cfg;
      size_t max = c->state == C_HEAD ? (size_t)cfg->max_header_bytes + 1 : c->in_cap;
      size_t before = c->in_len;
      int rd = read_in(c, max);
      if (rd < 0) {
        /* The client's end: between requests (a normal close), or with a
         * request cut short or still being handled (it left). */
        conn_gone(c);
        return;
      }
      if (rd > 0 && c->body_reading) {
        c->last_read_ms = mbd_loop_now(c->t->loop);
        c->win_bytes += c->in_len - before;
      }
    } else if (ev & (MBD_IO_RDHUP | MBD_IO_HUP)) {
      /* The client shut its side while its request is handled: it left
       * (as nginx sees it), and its work is cancelled. */
      conn_gone(c);
      return;
    }
  }
  conn_progress(c);
}

static void on_conn_timer(mbd_timer *tm) {
  mbd_conn *c = (mbd_conn *)((char *)tm - offsetof(mbd_conn, timer));
  const mbd_config *cfg = c->t->d->cfg;
  uint64_t now = mbd_loop_now(c->t->loop);
  if (c->dead)
    return;
  if (c->out_len > c->out_off && now >= c->last_write_ms + (uint64_t)cfg->send_timeout_ms) {
    mbd_log_limited(c->t->d, &c->t->f->rl_timeout, MBD_LOG_INFO,
                    "http: client took nothing for send_timeout; closed", "peer=%s", c->peer);
    conn_gone(c);
    return;
  }
  switch (c->state) {
  case C_HEAD:
    if (c->head_started_ms == 0) {
      if (now >= c->idle_since_ms + (uint64_t)cfg->idle_timeout_ms) {
        conn_close(c);
        return;
      }
    } else if (now >= c->head_started_ms + (uint64_t)cfg->header_timeout_ms) {
      conn_fail(c, 408, "request_timeout",
                "the request head did not come within limits.header_timeout");
      conn_progress(c);
      return;
    }
    break;
  case C_BODY:
  case C_HANDLE:
    if (c->body_reading && !c->body_paused) {
      if (now >= c->last_read_ms + (uint64_t)cfg->body_timeout_ms) {
        conn_fail(c, 408, "request_timeout",
                  "no request body byte came within limits.body_timeout");
        conn_progress(c);
        return;
      }
      if (cfg->min_body_rate > 0 && now >= c->win_start_ms + RATE_WINDOW_MS) {
        uint64_t need = cfg->min_body_rate * (now - c->win_start_ms) / 1000;
        if (c->win_bytes < need) {
          conn_fail(c, 408, "request_timeout",
                    "the request body came slower than limits.min_body_rate");
          conn_progress(c);
          return;
        }
        c->win_start_ms = now;
        c->win_bytes = 0;
      }
    }
    if (c->req && c->req->subscribed && now >= c->ping_ms) {
      c->ping_ms = now + STREAM_PING_MS;
      mbd_resp_write(c->req, ": keep-alive\n\n", 14);
    }
    break;
  case C_LINGER:
    if (now >= c->last_read_ms + LINGER_TIMEOUT_MS || now >= c->linger_start_ms + LINGER_TIME_MS) {
      conn_close(c);
      return;
    }
    break;
  }
  conn_progress(c);
}

/* ------------------------------------------------------------------------ */
/* Accepting                                                                 */

static void make_refusal(mbd_front *f) {
  static const char body[] = "{\"error\":{\"code\":\"too_many_connections\",\"message\":"
                             "\"the daemon is at limits.max_connections; try again\"}}";
  int n = snprintf(f->refusal, sizeof(f->refusal),
                   "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                   "Content-Length: %zu\r\nRetry-After: 1\r\nX-Modelbuf-Node: %s\r\n"
                   "Connection: close\r\n\r\n%s",
                   sizeof(body) - 1, f->d->node, body);
  f->refusal_len = n > 0 && (size_t)n < sizeof(f->refusal) ? (size_t)n : 0;
}

static void refuse(mbd_fthread *t, int fd) {
  ssize_t w = send(fd, t->f->refusal, t->f->refusal_len, MSG_NOSIGNAL | MSG_DONTWAIT);
  (void)w;
  close(fd);
  mbd_log_limited(t->d, &t->f->rl_maxconn, MBD_LOG_WARN,
                  "http: connection refused at limits.max_connections", "max=%d",
                  t->d->cfg->max_connections);
}

static void conn_new(mbd_fthread *t, int fd, const struct sockaddr_storage *sa) {
  mbd_conn *c = calloc(1, sizeof(*c));
  if (c == NULL) {
    close(fd);
    return;
  }
  c->t = t;
  c->io.fd = fd;
  c->io.cb = on_conn_io;
  c->io.arg = c;
  c->timer.cb = on_conn_timer;
  c->state = C_HEAD;
  c->idle_since_ms = mbd_loop_now(t->loop);
  if (sa->ss_family == AF_INET) {
    const struct sockaddr_in *a = (const struct sockaddr_in *)sa;
    char ip[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &a->sin_addr, ip, sizeof(ip));
    snprintf(c->peer, sizeof(c->peer), "%s:%u", ip, ntohs(a->sin_port));
  } else if (sa->ss_family == AF_INET6) {
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)sa;
    char ip[INET6_ADDRSTRLEN];
    inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof(ip));
    snprintf(c->peer, sizeof(c->peer), "[%s]:%u", ip, ntohs(a->sin6_port));
  } else {
    snprintf(c->peer, sizeof(c->peer), "unix");
  }
  if (sa->ss_family != AF_UNIX) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  }
  c->next = t->conns;
  if (t->conns)
    t->conns->prev = c;
  t->conns = c;
  t->nconns++;
  if (mbd_io_set(t->loop, &c->io, MBD_IO_READ | MBD_IO_RDHUP) != 0) {
    __atomic_add_fetch(&t->f->conns, 1, __ATOMIC_RELAXED);
    conn_close(c);
    return;
  }
  __atomic_add_fetch(&t->f->conns, 1, __ATOMIC_RELAXED);
  arm_timer(c);
}

typedef struct adopt {
  mbd_post post;
  mbd_fthread *t;
  int fd;
} adopt;

static void on_adopt(mbd_post *p) {
  adopt *a = (adopt *)p;
  struct sockaddr_storage sa;
  memset(&sa, 0, sizeof(sa));
  sa.ss_family = AF_UNIX;
  int fl = fcntl(a->fd, F_GETFL);
  fcntl(a->fd, F_SETFL, fl | O_NONBLOCK);
  conn_new(a->t, a->fd, &sa);
  free(a);
}

int mbd_front_adopt(mbd *d, int fd) {
  mbd_front *f = d->front;
  adopt *a = calloc(1, sizeof(*a));
  if (a == NULL || f == NULL || f->nthreads == 0) {
    free(a);
    close(fd);
    return MB_ENOMEM;
  }
  unsigned k = __atomic_fetch_add(&f->adopted, 1, __ATOMIC_RELAXED);
  a->t = &f->threads[k % (unsigned)f->nthreads];
  a->fd = fd;
  a->post.fn = on_adopt;
  mbd_loop_post(a->t->loop, &a->post);
  return 0;
}

static void on_accept_resume(mbd_timer *tm) {
  mbd_fthread *t = (mbd_fthread *)((char *)tm - offsetof(mbd_fthread, accept_timer));
  if (t->accept_paused && !__atomic_load_n(&t->f->quiescing, __ATOMIC_ACQUIRE)) {
    t->accept_paused = 0;
    for (int i = 0; i < t->f->nlisten; i++)
      if (mbd_io_set(t->loop, &t->listen_io[i], MBD_IO_READ) != 0)
        mbd_log(t->d, MBD_LOG_ERROR, "http: cannot watch a listening socket again", NULL);
  }
}

/* Out of descriptors: refuse one waiting client with the spare descriptor,
 * and stop accepting on this thread for a moment instead of spinning. */
static void out_of_fds(mbd_fthread *t, mbd_io *io) {
  mbd_front *f = t->f;
  pthread_mutex_lock(&f->reserve_mu);
  if (f->reserve_fd >= 0) {
    close(f->reserve_fd);
    int fd = accept4(io->fd, NULL, NULL, SOCK_CLOEXEC);
    if (fd >= 0) {
      ssize_t w = send(fd, f->refusal, f->refusal_len, MSG_NOSIGNAL | MSG_DONTWAIT);
      (void)w;
      close(fd);
    }
    f->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  }
  pthread_mutex_unlock(&f->reserve_mu);
  mbd_log_limited(t->d, &f->rl_emfile, MBD_LOG_ERROR,
                  "http: out of file descriptors; refusing connections for a moment",
                  "errno=\"%s\"", strerror(errno));
  t->accept_paused = 1;
  for (int i = 0; i < f->nlisten; i++)
    mbd_io_stop(t->loop, &t->listen_io[i]);
  mbd_timer_start(t->loop, &t->accept_timer, mbd_loop_now(t->loop) + 100);
}

static void on_accept(mbd_io *io, uint32_t ev) {
  mbd_fthread *t = NULL;
  (void)ev;
  /* Which thread: the io is one of its listen_io entries. */
  t = io->arg;
  mbd_front *f = t->f;
  for (int i = 0; i < 64; i++) {
    struct sockaddr_storage sa;
    socklen_t len = sizeof(sa);
    int fd = accept4(io->fd, (struct sockaddr *)&sa, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED)
        continue;
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        out_of_fds(t, io);
        return;
      }
      if (errno != EAGAIN && errno != EWOULDBLOCK)
        mbd_log_limited(t->d, &f->rl_accept, MBD_LOG_WARN, "http: accept failed", "errno=\"%s\"",
                        strerror(errno));
      return;
    }
    if (__atomic_load_n(&f->quiescing, __ATOMIC_ACQUIRE)) {
      close(fd);
      continue;
    }
    if (__atomic_load_n(&f->conns, __ATOMIC_ACQUIRE) >= t->d->cfg->max_connections) {
      refuse(t, fd);
      continue;
    }
    if (len == 0 || sa.ss_family == 0)
      sa.ss_family = AF_UNIX;
    conn_new(t, fd, &sa);
  }
}

/* ------------------------------------------------------------------------ */
/* Threads                                                                   */

static void *thread_main(void *arg) {
  mbd_fthread *t = arg;
  mbd_loop_run(t->loop);
  return NULL;
}

/* Closes idle connections and ends subscribed streams; stops accepting. */
static void on_quiesce(mbd_post *p) {
  mbd_fthread *t = (mbd_fthread *)((char *)p - offsetof(mbd_fthread, quiesce_post));
  for (int i = 0; i < t->f->nlisten; i++)
    mbd_io_stop(t->loop, &t->listen_io[i]);
  mbd_timer_stop(t->loop, &t->accept_timer);
  for (mbd_req *r = t->subs, *next; r != NULL; r = next) {
    next = r->sub_next;
    unsubscribe(r);
    if (r->on_gone) { /* the producer lets go of it; the answer ends here */
      void (*fn)(mbd_req *) = r->on_gone;
      r->on_gone = NULL;
      fn(r);
    }
    r->on_drain = NULL;
    mbd_resp_end(r);
  }
  for (mbd_conn *c = t->conns, *next; c != NULL; c = next) {
    next = c->next;
    if ((c->state == C_HEAD && c->in_len == 0) || c->state == C_LINGER)
      conn_close(c);
  }
  pthread_mutex_lock(&t->f->ack_mu);
  t->f->acks++;
  pthread_cond_broadcast(&t->f->ack_cv);
  pthread_mutex_unlock(&t->f->ack_mu);
}

static void on_stop(mbd_post *p) {
  mbd_fthread *t = (mbd_fthread *)((char *)p - offsetof(mbd_fthread, stop_post));
  while (t->conns)
    conn_close(t->conns);
  mbd_upstream_pool_close(t);
  mbd_loop_stop(t->loop);
}

static int listen_tcp(const char *host, int port, char *err, size_t err_len) {
  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof(ss));
  socklen_t len;
  int family;
  struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
  struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
  if (host == NULL || strcmp(host, "localhost") == 0)
    host = "127.0.0.1";
  if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
    family = AF_INET;
    a4->sin_family = AF_INET;
    a4->sin_port = htons((uint16_t)port);
    len = sizeof(*a4);
  } else if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
    family = AF_INET6;
    a6->sin6_family = AF_INET6;
    a6->sin6_port = htons((uint16_t)port);
    len = sizeof(*a6);
  } else {
    snprintf(err, err_len, "listen: '%s' is not a numeric address", host);
    return -1;
  }
  int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  int one = 1;
  if (fd >= 0)
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (fd >= 0 && family == AF_INET6)
    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
  if (fd < 0 || bind(fd, (struct sockaddr *)&ss, len) != 0 || listen(fd, 4096) != 0) {
    snprintf(err, err_len, "cannot listen on %s:%d: %s", host, port, strerror(errno));
    if (fd >= 0)
      close(fd);
    return -1;
  }
  return fd;
}

static int listen_unix(const char *path, char *err, size_t err_len) {
  struct sockaddr_un a;
  memset(&a, 0, sizeof(a));
  a.sun_family = AF_UNIX;
  if (strlen(path) >= sizeof(a.sun_path)) {
    snprintf(err, err_len, "unix socket path too long: %s", path);
    return -1;
  }
  strcpy(a.sun_path, path);
  unlink(path);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(fd, 4096) != 0) {
    snprintf(err, err_len, "cannot listen on unix:%s: %s", path, strerror(errno));
    if (fd >= 0)
      close(fd);
    return -1;
  }
  return fd;
}

/* Raises the descriptor limit toward what max_connections needs (a client
 * and a worker connection each, plus the daemon's own). */
static void raise_fd_limit(mbd *d) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
    return;
  rlim_t want = (rlim_t)d->cfg->max_connections * 2 + 256;
  if (rl.rlim_cur >= want)
    return;
  rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > want ? want : rl.rlim_max;
  int ok = setrlimit(RLIMIT_NOFILE, &rl) == 0;
  if (!ok && getrlimit(RLIMIT_NOFILE, &rl) != 0)
    return;
  /* A client connection each is what must fit; worker connections are
   * per request in flight. */
  if (rl.rlim_cur < (rlim_t)d->cfg->max_connections + 256)
    mbd_log(d, MBD_LOG_WARN,
            "http: the descriptor limit is below what limits.max_connections needs; "
            "connections beyond it are refused",
            "nofile=%llu max_connections=%d", (unsigned long long)rl.rlim_cur,
            d->cfg->max_connections);
}

int mbd_front_start(mbd *d, char *err, size_t err_len) {
  mbd_front *f = calloc(1, sizeof(*f));
  if (f == NULL)
    return MB_ENOMEM;
  f->d = d;
  f->listen_fd[0] = f->listen_fd[1] = -1;
  pthread_mutex_init(&f->reserve_mu, NULL);
  pthread_mutex_init(&f->ack_mu, NULL);
  pthread_cond_init(&f->ack_cv, NULL);
  d->front = f;
  make_refusal(f);
  raise_fd_limit(d);
  f->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);

  const mbd_listen *l = &d->cfg->listen;
  int fd = l->unix_path ? listen_unix(l->unix_path, err, err_len)
                        : listen_tcp(l->host, l->port, err, err_len);
  if (fd < 0)
    return MB_EIO;
  f->listen_fd[f->nlisten++] = fd;
  if (d->cfg->unix_socket) {
    fd = listen_unix(d->cfg->unix_socket, err, err_len);
    if (fd < 0)
      return MB_EIO;
    f->listen_fd[f->nlisten++] = fd;
  }

  int n = d->cfg->http_threads;
  if (n <= 0) {
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    n = cpus < 1 ? 1 : cpus > 16 ? 16 : (int)cpus;
  }
  f->threads = calloc((size_t)n, sizeof(*f->threads));
  if (f->threads == NULL)
    return MB_ENOMEM;
  for (int i = 0; i < n; i++) {
    mbd_fthread *t = &f->threads[i];
    t->f = f;
    t->d = d;
    t->index = i;
    t->wake_post.fn = on_streams_wake;
    t->quiesce_post.fn = on_quiesce;
    t->stop_post.fn = on_stop;
    t->accept_timer.cb = on_accept_resume;
    if (mbd_loop_new(&t->loop) != 0) {
      snprintf(err, err_len, "cannot create an event loop");
      return MB_EIO;
    }
    if (mbd_upstream_pool_init(t) != 0)
      return MB_ENOMEM;
    for (int k = 0; k < f->nlisten; k++) {
      t->listen_io[k].fd = f->listen_fd[k];
      t->listen_io[k].exclusive = 1;
      t->listen_io[k].cb = on_accept;
      t->listen_io[k].arg = t;
      if (mbd_io_set(t->loop, &t->listen_io[k], MBD_IO_READ) != 0) {
        snprintf(err, err_len, "cannot watch the listening socket: %s", strerror(errno));
        return MB_EIO;
      }
    }
    f->nthreads++;
  }
  for (int i = 0; i < n; i++) {
    mbd_fthread *t = &f->threads[i];
    if (pthread_create(&t->tid, NULL, thread_main, t) != 0) {
      snprintf(err, err_len, "cannot start the HTTP threads");
      return MB_EIO;
    }
    t->started = 1;
  }
  return 0;
}

void mbd_front_quiesce(mbd *d) {
  mbd_front *f = d->front;
  if (f == NULL || __atomic_exchange_n(&f->quiescing, 1, __ATOMIC_ACQ_REL))
    return;
  int n = 0;
  for (int i = 0; i < f->nthreads; i++)
    if (f->threads[i].started) {
      mbd_loop_post(f->threads[i].loop, &f->threads[i].quiesce_post);
      n++;
    }
  pthread_mutex_lock(&f->ack_mu);
  while (f->acks < n)
    pthread_cond_wait(&f->ack_cv, &f->ack_mu);
  pthread_mutex_unlock(&f->ack_mu);
  for (int i = 0; i < f->nlisten; i++) {
    close(f->listen_fd[i]);
    f->listen_fd[i] = -1;
  }
  if (d->cfg->listen.unix_path)
    unlink(d->cfg->listen.unix_path);
  if (d->cfg->unix_socket)
    unlink(d->cfg->unix_socket);
}

int mbd_front_active(mbd *d) {
  return d->front ? __atomic_load_n(&d->front->active, __ATOMIC_ACQUIRE) : 0;
}

int mbd_front_connections(mbd *d) {
  return d->front ? __atomic_load_n(&d->front->conns, __ATOMIC_ACQUIRE) : 0;
}

void mbd_front_stop(mbd *d) {
  mbd_front *f = d->front;
  if (f == NULL)
    return;
  mbd_front_quiesce(d);
  for (int i = 0; i < f->nthreads; i++)
    if (f->threads[i].started)
      mbd_loop_post(f->threads[i].loop, &f->threads[i].stop_post);
  for (int i = 0; i < f->nthreads; i++)
    if (f->threads[i].started) {
      pthread_join(f->threads[i].tid, NULL);
      f->threads[i].started = 0;
    }
}

void mbd_front_drain(mbd *d) {
  mbd_front *f = d->front;
  if (f == NULL)
    return;
  for (int i = 0; i < f->nthreads; i++)
    if (f->threads[i].loop && !f->threads[i].started)
      mbd_loop_run_pending(f->threads[i].loop);
}

void mbd_front_free(mbd *d) {
  mbd_front *f = d->front;
  if (f == NULL)
    return;
  mbd_front_stop(d);
  mbd_front_drain(d);
  for (int i = 0; i < f->nthreads; i++) {
    mbd_fthread *t = &f->threads[i];
    mbd_upstream_pool_free(t);
    mbd_loop_free(t->loop);
    for (int k = 0; k < MBD_BUF_CLASSES; k++)
      for (int j = 0; j < t->nbufs[k]; j++)
        free(t->bufs[k][j]);
  }
  for (int i = 0; i < f->nlisten; i++)
    if (f->listen_fd[i] >= 0)
      close(f->listen_fd[i]);
  if (f->reserve_fd >= 0)
    close(f->reserve_fd);
  free(f->threads);
  pthread_mutex_destroy(&f->reserve_mu);
  pthread_mutex_destroy(&f->ack_mu);
  pthread_cond_destroy(&f->ack_cv);
  free(f);
  d->front = NULL;
}
