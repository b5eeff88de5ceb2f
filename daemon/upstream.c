/*
 * upstream.c - connections to workers (upstream.h).
 *
 * An exchange: connect (or take an idle connection from the thread's
 * pool), write the head and the body, read the answer's head (skipping
 * 1xx), then its body by its framing, and hand each piece to the owner.
 * Frees are deferred to the end of the loop's turn (mbd_loop_defer), so an
 * mbd_up stays valid memory while any callback of this turn runs; a dead
 * one ignores its events.
 *
 * Loop thread only; no locks.
 */
#include "upstream.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <unistd.h>

#include "evloop.h"
#include "front_int.h"
#include "modelbuf/modelbuf.h"

#define CONNECT_TIMEOUT_MS 5000
#define IDLE_TIMEOUT_MS 30000
#define POOL_MAX_IDLE 256
#define READ_CHUNK (64 * 1024)

enum { P_HEAD = 0, P_BODY, P_DONE };

struct mbd_uppool {
  mbd_up *idle; /* idle connections, most recent first */
  int nidle;
};

struct mbd_up {
  mbd_io io;
  mbd_timer timer;
  mbd_post free_post;
  mbd_fthread *t;
  int dead;
  int port;
  uint64_t instance;
  /* Owner (NULL while idle in the pool). */
  const mbd_up_cbs *cbs;
  void *arg;
  /* In the pool. */
  mbd_up *pnext, *pprev;
  int pooled;
  /* The request. */
  int reused, retried, connecting;
  char *head;
  size_t head_len, head_off;
  mbd_spool *body;
  uint64_t body_off;
  int streamed, chunked, body_ended;
  char *sbuf;
  size_t sbuf_len, sbuf_off, sbuf_cap;
  int sent_all;
  int head_request;
  uint64_t max_head;
  /* The answer. */
  char *in;
  size_t in_len, in_cap, scan;
  int phase;
  mbd_http_head h;
  uint64_t left;
  mbd_chunked ck;
  int got_any, started, paused, write_failed;
};

static void up_progress(mbd_up *u);

/* ------------------------------------------------------------------------ */
/* Life                                                                      */

static void free_deferred(mbd_post *p) {
  mbd_up *u = (mbd_up *)((char *)p - offsetof(mbd_up, free_post));
  free(u->head);
  free(u->sbuf);
  free(u->in);
  free(u);
}

static void pool_unlink(mbd_up *u) {
  mbd_uppool *pl = u->t->pool;
  if (!u->pooled)
    return;
  if (u->pprev)
    u->pprev->pnext = u->pnext;
  else
    pl->idle = u->pnext;
  if (u->pnext)
    u->pnext->pprev = u->pprev;
  u->pnext = u->pprev = NULL;
  u->pooled = 0;
  pl->nidle--;
}

static void up_close(mbd_up *u) {
  if (u->dead)
    return;
  u->dead = 1;
  pool_unlink(u);
  mbd_io_stop(u->t->loop, &u->io);
  mbd_timer_stop(u->t->loop, &u->timer);
  if (u->io.fd >= 0)
    close(u->io.fd);
  u->io.fd = -1;
  u->cbs = NULL;
  u->free_post.fn = free_deferred;
  mbd_loop_defer(u->t->loop, &u->free_post);
}

int mbd_upstream_pool_init(mbd_fthread *t) {
  t->pool = calloc(1, sizeof(*t->pool));
  return t->pool ? 0 : MB_ENOMEM;
}

void mbd_upstream_pool_close(mbd_fthread *t) {
  if (t->pool == NULL)
    return;
  while (t->pool->idle)
    up_close(t->pool->idle);
}

void mbd_upstream_pool_free(mbd_fthread *t) {
  if (t->pool == NULL)
    return;
  mbd_upstream_pool_close(t);
  if (t->loop)
    mbd_loop_run_pending(t->loop);
  free(t->pool);
  t->pool = NULL;
}

/* ------------------------------------------------------------------------ */
/* Events                                                                    */

static void set_interest(mbd_up *u) {
  uint32_t ev = 0;
  if (u->connecting) {
    ev = MBD_IO_WRITE;
  } else if (u->pooled) {
    ev = MBD_IO_READ | MBD_IO_RDHUP; /* anything from an idle worker ends it */
  } else {
    int writing = !u->sent_all && !u->write_failed &&
                  (u->head_off < u->head_len || (u->body && u->body_off < u->body->total) ||
                   u->sbuf_off < u->sbuf_len);
    if (writing)
      ev |= MBD_IO_WRITE;
    if (!u->paused && u->phase != P_DONE)
      ev |= MBD_IO_READ | MBD_IO_RDHUP;
  }
  if (mbd_io_set(u->t->loop, &u->io, ev) != 0 && !u->dead) {
    const mbd_up_cbs *cbs = u->cbs;
    void *arg = u->arg;
    int started = u->started;
    up_close(u);
    if (cbs)
      cbs->on_error(arg, started, "cannot watch the worker connection");
  }
}

/* Opens a new connection for u's exchange. 0 or -1 (errno). */
static int up_connect(mbd_up *u) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -1;
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  struct sockaddr_in a;
  memset(&a, 0, sizeof(a));
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)u->port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  u->io.fd = fd;
  u->connecting = 0;
  if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
    if (errno != EINPROGRESS) {
      int e = errno;
      close(fd);
      u->io.fd = -1;
      errno = e;
      return -1;
    }
    u->connecting = 1;
  }
  mbd_timer_start(u->t->loop, &u->timer, mbd_loop_now(u->t->loop) + CONNECT_TIMEOUT_MS);
  return 0;
}

/* The exchange failed: sent again once when it can be, else the owner is
 * told and the connection closed. */
static void up_fail(mbd_up *u, const char *why) {
  if (u->dead)
    return;
  if (u->reused && !u->retried && !u->got_any && !u->streamed && u->cbs) {
    /* The worker closed an idle connection as it was reused: once more on
     * a new one, from the start. */
    u->retried = 1;
    u->reused = 0;
    mbd_io_stop(u->t->loop, &u->io);
    close(u->io.fd);
    u->io.fd = -1;
    u->head_off = 0;
    u->body_off = 0;
    u->in_len = u->scan = 0;
    u->phase = P_HEAD;
    if (up_connect(u) == 0) {
      up_progress(u);
      return;
    }
    why = strerror(errno);
  }
  const mbd_up_cbs *cbs = u->cbs;
  void *arg = u->arg;
  int started = u->started;
  up_close(u);
  if (cbs)
    cbs->on_error(arg, started, why);
}

/* The answer is whole: the connection goes back to the pool if it can
 * carry another exchange, then the owner is told. */
static void up_done(mbd_up *u) {
  const mbd_up_cbs *cbs = u->cbs;
  void *arg = u->arg;
  u->phase = P_DONE;
  u->cbs = NULL;
  mbd_uppool *pl = u->t->pool;
  int reusable = u->h.keep_alive && u->sent_all && !u->write_failed &&
                 u->h.framing != MBD_BODY_CLOSE && u->in_len == 0 &&
                 pl->nidle < POOL_MAX_IDLE;
  if (reusable) {
    mbd_timer_stop(u->t->loop, &u->timer);
    u->pooled = 1;
    u->pprev = NULL;
    u->pnext = pl->idle;
    if (pl->idle)
      pl->idle->pprev = u;
    pl->idle = u;
    pl->nidle++;
    free(u->head);
    u->head = NULL;
    free(u->sbuf);
    u->sbuf = NULL;
    u->sbuf_cap = 0;
    if (u->in_cap > READ_CHUNK) {
      free(u->in);
      u->in = NULL;
      u->in_cap = 0;
    }
    u->body = NULL;
    set_interest(u);
    mbd_timer_start(u->t->loop, &u->timer, mbd_loop_now(u->t->loop) + IDLE_TIMEOUT_MS);
  } else {
    up_close(u);
  }
  if (cbs)
    cbs->on_end(arg);
}

/* Writes what can be written. 0, or -1 after a failure was handled. */
static int up_write(mbd_up *u) {
  while (!u->write_failed) {
    ssize_t w;
    if (u->head_off < u->head_len) {
      w = send(u->io.fd, u->head + u->head_off, u->head_len - u->head_off,
               MSG_NOSIGNAL | MSG_DONTWAIT | (u->body || u->streamed ? MSG_MORE : 0));
      if (w > 0)
        u->head_off += (size_t)w;
    } else if (u->body && u->body_off < u->body->total) {
      size_t left = (size_t)(u->body->total - u->body_off);
      if (u->body->fd >= 0) {
        off_t off = (off_t)u->body_off;
        w = sendfile(u->io.fd, u->body->fd, &off, left > (1 << 20) ? (1 << 20) : left);
      } else {
        w = send(u->io.fd, u->body->mem + u->body_off, left, MSG_NOSIGNAL | MSG_DONTWAIT);
      }
      if (w > 0)
        u->body_off += (uint64_t)w;
    } else if (u->sbuf_off < u->sbuf_len) {
      w = send(u->io.fd, u->sbuf + u->sbuf_off, u->sbuf_len - u->sbuf_off,
               MSG_NOSIGNAL | MSG_DONTWAIT);
      if (w > 0)
        u->sbuf_off += (size_t)w;
      if (u->sbuf_off == u->sbuf_len) {
        u->sbuf_off = u->sbuf_len = 0;
        if (!u->body_ended && u->cbs && u->cbs->on_writable) {
          u->cbs->on_writable(u->arg);
          if (u->dead)
            return -1;
        }
      }
    } else {
      if (!u->streamed || u->body_ended)
        u->sent_all = 1;
      return 0;
    }
    if (w < 0) {
      if (errno == EINTR)
        continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK)
        return 0;
      if (u->got_any) { /* the worker answered already and stopped reading */
        u->write_failed = 1;
        return 0;
      }
      up_fail(u, strerror(errno));
      return -1;
    }
    if (w == 0) {
      up_fail(u, "the worker closed the connection");
      return -1;
    }
  }
  return 0;
}

/* Delivers the body bytes in u->in. 0, or -1 when the exchange ended. */
static int deliver(mbd_up *u) {
  while (u->phase == P_BODY && !u->paused && u->in_len > 0) {
    size_t used = 0;
    const char *data = NULL;
    size_t dn = 0;
    int end = 0;
    if (u->h.framing == MBD_BODY_LENGTH) {
      dn = u->in_len < u->left ? u->in_len : (size_t)u->left;
      data = u->in;
      used = dn;
      u->left -= dn;
      end = u->left == 0;
    } else if (u->h.framing == MBD_BODY_CHUNKED) {
      const char *why;
      int st = mbd_chunked_feed(&u->ck, u->in, u->in_len, &used, &data, &dn, &why);
      if (st < 0) {
        up_fail(u, why);
        return -1;
      }
      end = st == 1;
    } else { /* MBD_BODY_CLOSE: until the worker closes */
      dn = used = u->in_len;
      data = u->in;
    }
    if (dn > 0 && u->cbs) {
      /* The bytes are handed over before the buffer moves. */
      u->cbs->on_data(u->arg, data, dn);
      if (u->dead)
        return -1;
    }
    memmove(u->in, u->in + used, u->in_len - used);
    u->in_len -= used;
    if (end) {
      up_done(u);
      return -1;
    }
  }
  return 0;
}

/* Parses the answer's head from u->in. 0, or -1 when the exchange ended. */
static int parse_head(mbd_up *u) {
  while (u->phase == P_HEAD) {
    size_t end = mbd_http_head_end(u->in, u->in_len, &u->scan);
    if (end == 0) {
      if (u->in_len > u->max_head) {
        up_fail(u, "the worker's answer head is too large");
        return -1;
      }
      return 0;
    }
    const char *why;
    if (mbd_http_parse_response(u->in, end, u->head_request, &u->h, &why) != 0) {
      up_fail(u, why);
      return -1;
    }
    if (u->h.status == 101) {
      up_fail(u, "the worker switched protocols (101), which the daemon does not forward");
      return -1;
    }
    if (u->h.status < 200) { /* interim: 100 Continue, 103 Early Hints */
      memmove(u->in, u->in + end, u->in_len - end);
      u->in_len -= end;
      u->scan = 0;
      continue;
    }
    u->started = 1;
    u->phase = P_BODY;
    u->left = u->h.content_length;
    if (u->h.framing == MBD_BODY_CHUNKED)
      mbd_chunked_init(&u->ck, u->max_head);
    if (u->cbs) {
      u->cbs->on_head(u->arg, u->in, &u->h);
      if (u->dead)
        return -1;
    }
    memmove(u->in, u->in + end, u->in_len - end);
    u->in_len -= end;
    if (u->h.framing == MBD_BODY_NONE ||
        (u->h.framing == MBD_BODY_LENGTH && u->h.content_length == 0)) {
      up_done(u);
      return -1;
    }
  }
  return 0;
}

/* Reads and handles what the worker sent. 0, or -1 when it ended. */
static int up_read(mbd_up *u) {
  for (int i = 0; i < 8 && !u->paused; i++) {
    size_t want = READ_CHUNK;
    if (u->in_len + want > u->in_cap) {
      size_t cap = u->in_cap ? u->in_cap : READ_CHUNK;
      while (cap < u->in_len + want)
        cap *= 2;
      char *b = realloc(u->in, cap);
      if (b == NULL) {
        up_fail(u, "out of memory");
        return -1;
      }
      u->in = b;
      u->in_cap = cap;
    }
    ssize_t n = recv(u->io.fd, u->in + u->in_len, want, MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK)
        return 0;
      up_fail(u, strerror(errno));
      return -1;
    }
    if (n == 0) {
      if (u->phase == P_BODY && u->h.framing == MBD_BODY_CLOSE) {
        u->h.keep_alive = 0;
        if (deliver(u) != 0)
          return -1;
        up_done(u);
        return -1;
      }
      up_fail(u, u->got_any ? "the worker closed the connection before its answer ended"
                            : "the worker closed the connection without answering");
      return -1;
    }
    u->got_any = 1;
    u->in_len += (size_t)n;
    if (u->phase == P_HEAD && parse_head(u) != 0)
      return -1;
    if (u->phase == P_BODY && deliver(u) != 0)
      return -1;
    if ((size_t)n < want)
      return 0;
  }
  return 0;
}

static void up_progress(mbd_up *u) {
  if (u->dead || u->pooled || u->connecting)
    return;
  if (up_write(u) != 0)
    return;
  if (u->phase == P_BODY && u->in_len > 0 && !u->paused && deliver(u) != 0)
    return;
  if (!u->dead)
    set_interest(u);
}

static void on_up_io(mbd_io *io, uint32_t ev) {
  mbd_up *u = io->arg;
  if (u->dead)
    return;
  if (u->pooled) { /* the worker closed an idle connection, or sent junk */
    up_close(u);
    return;
  }
  if (u->connecting) {
    int err = 0;
    socklen_t len = sizeof(err);
    if (getsockopt(io->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
      err = errno;
    if (err != 0) {
      up_fail(u, strerror(err));
      return;
    }
    u->connecting = 0;
    mbd_timer_stop(u->t->loop, &u->timer);
  }
  if ((ev & MBD_IO_WRITE) && up_write(u) != 0)
    return;
  if ((ev & (MBD_IO_READ | MBD_IO_RDHUP | MBD_IO_HUP | MBD_IO_ERROR)) && !u->paused &&
      up_read(u) != 0)
    return;
  if ((ev & MBD_IO_ERROR) && u->paused && !u->dead) {
    up_fail(u, "connection error");
    return;
  }
  if (!u->dead)
    set_interest(u);
}

static void on_up_timer(mbd_timer *tm) {
  mbd_up *u = (mbd_up *)((char *)tm - offsetof(mbd_up, timer));
  if (u->dead)
    return;
  if (u->pooled) {
    up_close(u); /* idle too long */
    return;
  }
  if (u->connecting)
    up_fail(u, "connecting to the worker timed out");
}

/* ------------------------------------------------------------------------ */
/* The owner's side                                                          */

int mbd_up_start(mbd_fthread *t, const mbd_up_req *req, const mbd_up_cbs *cbs, void *arg,
                 mbd_up **out) {
  mbd_uppool *pl = t->pool;
  mbd_up *u = NULL;
  if (!req->streamed)
    for (mbd_up *p = pl->idle; p; p = p->pnext)
      if (p->port == req->port && p->instance == req->instance) {
        u = p;
        break;
      }
  char *head = malloc(req->head_len);
  if (head == NULL)
    return MB_ENOMEM;
  memcpy(head, req->head, req->head_len);
  if (u != NULL) {
    pool_unlink(u);
    mbd_timer_stop(t->loop, &u->timer);
    u->reused = 1;
  } else {
    u = calloc(1, sizeof(*u));
    if (u == NULL) {
      free(head);
      return MB_ENOMEM;
    }
    u->t = t;
    u->io.cb = on_up_io;
    u->io.arg = u;
    u->io.fd = -1;
    u->timer.cb = on_up_timer;
    u->port = req->port;
    u->instance = req->instance;
    if (up_connect(u) != 0) {
      int e = errno;
      free(head);
      free(u);
      return e == EMFILE || e == ENFILE ? MB_ENOMEM : MB_EIO;
    }
  }
  u->cbs = cbs;
  u->arg = arg;
  u->head = head;
  u->head_len = req->head_len;
  u->head_off = 0;
  u->body = req->body;
  u->body_off = 0;
  u->streamed = req->streamed;
  u->chunked = req->chunked;
  u->body_ended = 0;
  u->sbuf_len = u->sbuf_off = 0;
  u->sent_all = 0;
  u->head_request = req->head_request;
  u->max_head = req->max_head_bytes ? req->max_head_bytes : 64 * 1024;
  u->in_len = u->scan = 0;
  u->phase = P_HEAD;
  u->got_any = u->started = u->paused = u->write_failed = 0;
  u->retried = 0;
  *out = u;
  if (u->connecting)
    set_interest(u);
  else
    up_progress(u);
  return 0;
}

static void sbuf_put(mbd_up *u, const char *p, size_t n) {
  if (u->sbuf_off > 0 && u->sbuf_off == u->sbuf_len)
    u->sbuf_off = u->sbuf_len = 0;
  if (u->sbuf_len + n > u->sbuf_cap) {
    size_t cap = u->sbuf_cap ? u->sbuf_cap : 16 * 1024;
    while (cap < u->sbuf_len + n)
      cap *= 2;
    char *b = realloc(u->sbuf, cap);
    if (b == NULL) {
      up_fail(u, "out of memory");
      return;
    }
    u->sbuf = b;
    u->sbuf_cap = cap;
  }
  memcpy(u->sbuf + u->sbuf_len, p, n);
  u->sbuf_len += n;
}

void mbd_up_body(mbd_up *u, const char *p, size_t n) {
  if (u->dead || n == 0 || u->body_ended)
    return;
  if (u->chunked) {
    char size[24];
    int k = snprintf(size, sizeof(size), "%zx\r\n", n);
    sbuf_put(u, size, (size_t)k);
    sbuf_put(u, p, n);
    sbuf_put(u, "\r\n", 2);
  } else {
    sbuf_put(u, p, n);
  }
  up_progress(u);
}

void mbd_up_body_end(mbd_up *u) {
  if (u->dead || u->body_ended)
    return;
  if (u->chunked)
    sbuf_put(u, "0\r\n\r\n", 5);
  u->body_ended = 1;
  up_progress(u);
}

size_t mbd_up_body_pending(const mbd_up *u) {
  return u->dead ? 0 : u->sbuf_len - u->sbuf_off;
}

void mbd_up_pause(mbd_up *u, int paused) {
  if (u->dead || u->paused == paused)
    return;
  u->paused = paused;
  if (!paused)
    up_progress(u);
  else
    set_interest(u);
}

void mbd_up_abort(mbd_up *u) {
  if (u == NULL || u->dead)
    return;
  u->cbs = NULL;
  up_close(u);
}
