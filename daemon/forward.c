/*
 * forward.c - the request head a worker gets (forward.h).
 */
#include "forward.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "modelbuf/modelbuf.h"

int mbd_forward_field(const mbd_fwd *f, int i) {
  const mbd_http_field *fl = &f->h->fields[i];
  const char *n = f->buf + fl->name.off;
  size_t nl = fl->name.len;
  if (mbd_http_field_hop(f->buf, f->h, i))
    return 0;
  if (mbd_http_eq(n, nl, "content-length") || mbd_http_eq(n, nl, "host") ||
      mbd_http_eq(n, nl, "expect"))
    return 0;
  if (nl >= 11 && strncasecmp(n, "x-modelbuf-", 11) == 0)
    return 0;
  if (f->drop_keys && (mbd_http_eq(n, nl, "authorization") || mbd_http_eq(n, nl, "x-api-key")))
    return 0; /* the daemon's key is not the worker's business */
  return 1;
}

typedef struct wbuf {
  char *p;
  size_t len, cap;
  int oom;
} wbuf;

static void put(wbuf *w, const char *s, size_t n) {
  if (w->oom)
    return;
  if (w->len + n > w->cap) {
    size_t cap = w->cap ? w->cap : 1024;
    while (cap < w->len + n)
      cap *= 2;
    char *b = realloc(w->p, cap);
    if (b == NULL) {
      w->oom = 1;
      return;
    }
    w->p = b;
    w->cap = cap;
  }
  memcpy(w->p + w->len, s, n);
  w->len += n;
}

static void puts_(wbuf *w, const char *s) { put(w, s, strlen(s)); }

int mbd_forward_head(const mbd_fwd *f, char **out, size_t *len) {
  const mbd_http_head *h = f->h;
  wbuf w = {NULL, 0, 0, 0};
  char line[64];
  const char *target = f->buf + h->target.off + f->target_skip;
  size_t tlen = h->target.len > f->target_skip ? h->target.len - f->target_skip : 0;
  put(&w, f->buf + h->method.off, h->method.len);
  put(&w, " ", 1);
  if (tlen == 0 || target[0] != '/')
    put(&w, "/", 1); /* "/m/x" -> "/", "/m/x?q" -> "/?q" */
  put(&w, target, tlen);
  puts_(&w, " HTTP/1.1\r\n");
  snprintf(line, sizeof(line), "Host: 127.0.0.1:%d\r\n", f->port);
  puts_(&w, line);
  for (int i = 0; i < h->n_fields; i++) {
    if (!mbd_forward_field(f, i))
      continue;
    const mbd_http_field *fl = &h->fields[i];
    put(&w, f->buf + fl->name.off, fl->name.len);
    put(&w, ": ", 2);
    put(&w, f->buf + fl->value.off, fl->value.len);
    put(&w, "\r\n", 2);
  }
  const char *m = f->buf + h->method.off;
  size_t ml = h->method.len;
  int post_like = mbd_http_eq(m, ml, "post") || mbd_http_eq(m, ml, "put") ||
                  mbd_http_eq(m, ml, "patch");
  if (f->body == MBD_FWD_CHUNKED) {
    puts_(&w, "Transfer-Encoding: chunked\r\n");
  } else if (f->body == MBD_FWD_LENGTH || post_like) {
    snprintf(line, sizeof(line), "Content-Length: %llu\r\n",
             (unsigned long long)(f->body == MBD_FWD_LENGTH ? f->body_len : 0));
    puts_(&w, line);
  }
  put(&w, "\r\n", 2);
  if (w.oom) {
    free(w.p);
    return MB_ENOMEM;
  }
  *out = w.p;
  *len = w.len;
  return 0;
}
