/*
 * http.c - modelbufd's HTTP server on libmicrohttpd: one thread per
 * connection (a proxied request may wait in a model's queue and stream for
 * minutes without holding up others), API keys, body limits, JSON errors,
 * and the dispatch to the management routes (api.c) and the proxy
 * (proxy.c).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <sched.h>
#include <stdarg.h>
#include <strings.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "http.h"

MHD_RESULT mbd_reply_text(struct MHD_Connection *c, int status, const char *type,
                          const char *text, size_t len) {
  struct MHD_Response *resp =
      MHD_create_response_from_buffer(len, (void *)text, MHD_RESPMEM_MUST_COPY);
  if (resp == NULL)
    return MHD_NO;
  MHD_add_response_header(resp, "Content-Type", type);
  MHD_RESULT r = MHD_queue_response(c, (unsigned)status, resp);
  MHD_destroy_response(resp);
  return r;
}

/* A JSON document (taken over) with one more header (none when NULL). */
static MHD_RESULT reply_doc(struct MHD_Connection *c, int status, json_t *doc,
                            const char *header, const char *value) {
  char *s = doc ? json_dumps(doc, MBD_JSON_FLAGS) : NULL;
  json_decref(doc);
  if (s == NULL)
    return mbd_reply_text(c, 500, "application/json",
                          "{\"error\":{\"code\":\"internal\",\"message\":\"out of memory\"}}",
                          60);
  struct MHD_Response *resp =
      MHD_create_response_from_buffer(strlen(s), s, MHD_RESPMEM_MUST_FREE);
  if (resp == NULL) {
    free(s);
    return MHD_NO;
  }
  MHD_add_response_header(resp, "Content-Type", "application/json");
  if (header != NULL)
    MHD_add_response_header(resp, header, value);
  MHD_RESULT r = MHD_queue_response(c, (unsigned)status, resp);
  MHD_destroy_response(resp);
  return r;
}

MHD_RESULT mbd_reply_json(struct MHD_Connection *c, int status, json_t *doc) {
  return reply_doc(c, status, doc, NULL, NULL);
}

MHD_RESULT mbd_reply_error_hdr(struct MHD_Connection *c, int status, const char *code,
                               const char *message, const char *header, const char *value) {
  json_t *doc = json_pack("{s:{s:s,s:s}}", "error", "code", code, "message", message);
  return reply_doc(c, status, doc, header, value);
}

MHD_RESULT mbd_reply_error(struct MHD_Connection *c, int status, const char *code,
                           const char *message, int retry_s) {
  char v[16];
  snprintf(v, sizeof(v), "%d", retry_s);
  return mbd_reply_error_hdr(c, status, code, message, retry_s > 0 ? "Retry-After" : NULL, v);
}

int mbd_path_model(const char *p, char name[MBD_MODEL_NAME_MAX + 1], const char **rest) {
  const char *slash = strchr(p, '/');
  size_t n = slash ? (size_t)(slash - p) : strlen(p);
  if (n == 0 || n > MBD_MODEL_NAME_MAX)
    return -1;
  memcpy(name, p, n);
  name[n] = '\0';
  *rest = slash;
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

/* ------------------------------------------------------------------------ */
/* Leases over HTTP                                                          */

#define MAX_HTTP_LEASES 4096
static uint64_t http_leases[MAX_HTTP_LEASES];

void mbd_leases_track(mbd *d, uint64_t id) {
  pthread_mutex_lock(&d->mu);
  for (int i = 0; i < MAX_HTTP_LEASES; i++)
    if (http_leases[i] == 0) {
      http_leases[i] = id;
      break;
    }
  pthread_mutex_unlock(&d->mu);
}

void mbd_leases_forget(mbd *d, uint64_t id) {
  pthread_mutex_lock(&d->mu);
  for (int i = 0; i < MAX_HTTP_LEASES; i++)
    if (http_leases[i] == id)
      http_leases[i] = 0;
  pthread_mutex_unlock(&d->mu);
}

void mbd_leases_release_all(mbd *d) {
  pthread_mutex_lock(&d->mu);
  for (int i = 0; i < MAX_HTTP_LEASES; i++)
    if (http_leases[i]) {
      mb_lease l = {http_leases[i], 0};
      http_leases[i] = 0;
      if (mb_release(d->ctx, l) != 0) {
        /* expired by its TTL already */
      }
    }
  pthread_mutex_unlock(&d->mu);
}

/* ------------------------------------------------------------------------ */
/* The access handler                                                        */

/* Constant-time comparison of a presented key with a configured one. */
static int key_equal(const char *a, const char *b) {
  size_t la = strlen(a), lb = strlen(b);
  unsigned char diff = (unsigned char)(la != lb);
  for (size_t i = 0; i < lb; i++)
    diff |= (unsigned char)((i < la ? a[i] : 0) ^ b[i]);
  return diff == 0;
}

static int authorized(mbd *d, struct MHD_Connection *c) {
  if (d->cfg->n_api_keys == 0)
    return 1;
  const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
  if (h == NULL || strncasecmp(h, "Bearer ", 7) != 0)
    return 0;
  const char *key = h + 7;
  int ok = 0;
  for (size_t i = 0; i < d->cfg->n_api_keys; i++)
    ok |= key_equal(key, d->cfg->api_keys[i]);
  return ok;
}

/*
 * Puts the calling connection thread in SCHED_BATCH, once: woken up (its
 * lease granted, its worker's answer in), it waits for the running thread's
 * time slice instead of preempting it. Otherwise the core thread, which
 * answers a batch of leases in a row, is preempted by the first request it
 * wakes, and every request costs two extra context switches under load.
 */
static void batch_thread(void) {
#if defined(SCHED_BATCH) && defined(SCHED_RESET_ON_FORK)
  static _Thread_local int done;
  if (!done) {
    struct sched_param sp = {0};
    done = 1;
    /* Processes it starts (a worker restarted by a request) do not inherit it. */
    if (sched_setscheduler(0, SCHED_BATCH | SCHED_RESET_ON_FORK, &sp) != 0) {
      /* not allowed here: the default policy is only slower */
    }
  }
#endif
}

static MHD_RESULT handler(void *cls, struct MHD_Connection *c, const char *url,
                          const char *method, const char *version, const char *upload,
                          size_t *upload_size, void **con_cls) {
  mbd *d = cls;
  (void)version;
  mbd_req *r = *con_cls;
  if (r == NULL) {
    batch_thread();
    r = calloc(1, sizeof(*r));
    if (r == NULL)
      return MHD_NO;
    *con_cls = r;
    __atomic_add_fetch(&d->active, 1, __ATOMIC_RELAXED);
    r->counted = 1;
    /* A body for a worker streams to it as it arrives: take the lease and
     * start the transfer now, before any of the body is read. */
    if (strncmp(url, "/m/", 3) == 0) {
      if (!authorized(d, c)) {
        r->answered = 1;
        return mbd_reply_error(c, 401, "unauthorized",
                               "missing or wrong API key (Authorization: Bearer KEY)", 0);
      }
      MHD_RESULT res;
      int st = mbd_proxy_stream_begin(d, c, method, url, r, &res);
      if (st < 0) {
        r->answered = 1;
        return res;
      }
    }
    return MHD_YES;
  }
  if (r->answered) {
    *upload_size = 0; /* answered already: the rest of the body is dropped */
    return MHD_YES;
  }
  if (r->px) {
    size_t n = *upload_size;
    *upload_size = 0;
    if (n > 0) {
      r->streamed += n;
      if (r->streamed > d->cfg->max_body_bytes) {
        mbd_proxy_stream_abort(r);
        r->too_big = 1;
      } else {
        mbd_proxy_stream_feed(r, upload, n);
      }
      return MHD_YES;
    }
    return mbd_proxy_stream_end(d, c, r);
  }
  if (*upload_size > 0) {
    size_t n = *upload_size;
    *upload_size = 0;
    if (r->too_big)
      return MHD_YES;
    if (r->len + n > d->cfg->max_body_bytes) {
      r->too_big = 1;
      free(r->body);
      r->body = NULL;
      r->len = r->cap = 0;
      return MHD_YES;
    }
    if (r->len + n + 1 > r->cap) {
      size_t cap = r->cap ? r->cap : 4096;
      while (cap < r->len + n + 1)
        cap *= 2;
      char *b = realloc(r->body, cap);
      if (b == NULL)
        return MHD_NO;
      r->body = b;
      r->cap = cap;
    }
    memcpy(r->body + r->len, upload, n);
    r->len += n;
    r->body[r->len] = '\0';
    return MHD_YES;
  }
  if (r->too_big) {
    char msg[128];
    snprintf(msg, sizeof(msg), "request body over the limit of %llu bytes",
             (unsigned long long)d->cfg->max_body_bytes);
    return mbd_reply_error(c, 413, "too_large", msg, 0);
  }
  if (strcmp(url, "/health") != 0 && !authorized(d, c))
    return mbd_reply_error(c, 401, "unauthorized",
                           "missing or wrong API key (Authorization: Bearer KEY)", 0);
  MHD_RESULT res;
  if (mbd_api_route(d, c, method, url, r, &res))
    return res;
  if (mbd_proxy_route(d, c, method, url, r, &res))
    return res;
  char msg[300];
  snprintf(msg, sizeof(msg), "no route %s %.200s", method, url);
  return mbd_reply_error(c, 404, "not_found", msg, 0);
}

static void completed(void *cls, struct MHD_Connection *c, void **con_cls,
                      enum MHD_RequestTerminationCode toe) {
  mbd *d = cls;
  (void)c;
  (void)toe;
  mbd_req *r = *con_cls;
  if (r == NULL)
    return;
  mbd_proxy_stream_abort(r); /* a client gone before the body ended */
  if (r->counted)
    __atomic_sub_fetch(&d->active, 1, __ATOMIC_RELEASE);
  free(r->body);
  free(r);
  *con_cls = NULL;
}

static void log_mhd(void *arg, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));

static void log_mhd(void *arg, const char *fmt, va_list ap) {
  mbd *d = arg;
  char buf[512];
  vsnprintf(buf, sizeof(buf), fmt, ap);
  size_t n = strlen(buf);
  while (n > 0 && buf[n - 1] == '\n')
    buf[--n] = '\0';
  mbd_log(d, MBD_LOG_WARN, "http", "detail=\"%s\"", buf);
}

static struct MHD_Daemon *start_on(mbd *d, int fd, int port, int flags) {
  unsigned mem = (unsigned)(d->cfg->max_header_bytes > 0 ? d->cfg->max_header_bytes * 2
                                                          : 128 * 1024);
  /* The logger first: libmicrohttpd warns (on its own logger) otherwise. */
  return MHD_start_daemon(
      (unsigned)flags | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_POLL_INTERNAL_THREAD |
          MHD_USE_ITC | MHD_USE_ERROR_LOG,
      (uint16_t)port, NULL, NULL, handler, d, MHD_OPTION_EXTERNAL_LOGGER, log_mhd, d,
      MHD_OPTION_LISTEN_SOCKET, fd, MHD_OPTION_NOTIFY_COMPLETED, completed, d,
      MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)mem, MHD_OPTION_CONNECTION_TIMEOUT,
      (unsigned)0, MHD_OPTION_END);
}

/* A listening TCP socket on host:port (numeric or "localhost"). */
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
  int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  if (fd >= 0)
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (fd < 0 || bind(fd, (struct sockaddr *)&ss, len) != 0 || listen(fd, 128) != 0) {
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
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(fd, 128) != 0) {
    snprintf(err, err_len, "cannot listen on unix:%s: %s", path, strerror(errno));
    if (fd >= 0)
      close(fd);
    return -1;
  }
  return fd;
}

int mbd_http_start(mbd *d, char *err, size_t err_len) {
  if (mbd_proxy_init(d) != 0) {
    snprintf(err, err_len, "cannot set up the proxy");
    return MB_ENOMEM;
  }
  const mbd_listen *l = &d->cfg->listen;
  int fd = l->unix_path ? listen_unix(l->unix_path, err, err_len)
                        : listen_tcp(l->host, l->port, err, err_len);
  if (fd < 0)
    return MB_EIO;
  int v6 = l->host && strchr(l->host, ':') != NULL;
  d->mhd = start_on(d, fd, 0, v6 ? MHD_USE_IPv6 : 0);
  if (d->mhd == NULL) {
    close(fd);
    snprintf(err, err_len, "the HTTP server did not start");
    return MB_EIO;
  }
  if (d->cfg->unix_socket) {
    int ufd = listen_unix(d->cfg->unix_socket, err, err_len);
    if (ufd < 0)
      return MB_EIO;
    d->mhd_unix = start_on(d, ufd, 0, 0);
    if (d->mhd_unix == NULL) {
      close(ufd);
      snprintf(err, err_len, "the HTTP server on the unix socket did not start");
      return MB_EIO;
    }
  }
  return 0;
}

void mbd_http_quiesce(mbd *d) {
  if (d->mhd) {
    int fd = MHD_quiesce_daemon(d->mhd);
    if (fd >= 0)
      close(fd);
  }
  if (d->mhd_unix) {
    int fd = MHD_quiesce_daemon(d->mhd_unix);
    if (fd >= 0)
      close(fd);
  }
}

void mbd_http_stop(mbd *d) {
  if (d->mhd)
    MHD_stop_daemon(d->mhd);
  if (d->mhd_unix)
    MHD_stop_daemon(d->mhd_unix);
  d->mhd = d->mhd_unix = NULL;
  mbd_proxy_fini(d);
}
