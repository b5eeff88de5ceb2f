/*
 * fuzz_http_parse.c - libFuzzer target for the front door's request path
 * in process: the head's end found byte by byte, the early request-line
 * check, the strict parse, the head a worker gets (forward.c), and the
 * chunked decoder fed in pieces; and the worker's answer side (status line,
 * fields, framing).
 *
 * Properties checked (abort on violation):
 *   - the head's end found feeding in steps equals the one found at once;
 *   - a request the parse accepts is one whose early line check accepts;
 *   - the head written for the worker parses back (status 0) as one
 *     request with the same method, the forwarded target, no field the
 *     filter drops (hop-by-hop, Connection-named, X-Modelbuf-*), and the
 *     framing the daemon chose; nothing of the body can be read as a head;
 *   - a chunked body decodes to the same bytes whatever the piece size,
 *     and never to more bytes than it holds.
 *
 * Input: byte 0 picks the mode and piece size, the rest is the stream.
 * Seeds: tests/fuzz/corpus/http_parse/.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "forward.h"
#include "http_parse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Decodes body[0..n) in pieces of step; the status and the decoded bytes. */
static int dechunk(const char *body, size_t n, size_t step, char *out, size_t *out_len) {
  mbd_chunked c;
  mbd_chunked_init(&c, 1024);
  size_t off = 0;
  *out_len = 0;
  while (off < n) {
    size_t avail = n - off < step ? n - off : step, used;
    const char *d, *why;
    size_t dn;
    int st = mbd_chunked_feed(&c, body + off, avail, &used, &d, &dn, &why);
    if (st < 0)
      return -1;
    if (used > avail || (dn > 0 && (d < body + off || d + dn > body + off + used)))
      abort();
    if (dn > 0)
      memcpy(out + *out_len, d, dn);
    *out_len += dn;
    off += used;
    if (st == 1)
      return 1;
    if (used == 0)
      abort(); /* no progress on non-empty input */
  }
  return 0;
}

static void check_chunked(const char *body, size_t n, size_t step) {
  char *a = malloc(n + 1), *b = malloc(n + 1);
  size_t la, lb;
  if (a == NULL || b == NULL) {
    free(a);
    free(b);
    return;
  }
  int sa = dechunk(body, n, n ? n : 1, a, &la);
  int sb = dechunk(body, n, step, b, &lb);
  if (sa != sb || (sa >= 0 && (la != lb || memcmp(a, b, la) != 0)) || la > n)
    abort();
  free(a);
  free(b);
}

static void check_forward(const char *buf, const mbd_http_head *h, unsigned opts) {
  mbd_fwd f;
  memset(&f, 0, sizeof(f));
  f.buf = buf;
  f.h = h;
  f.target_skip = (opts & 1) && h->target.len >= 3 ? 3 : 0;
  f.port = 1234;
  f.drop_keys = (opts >> 1) & 1;
  f.body = (mbd_fwd_body)((opts >> 2) % 3);
  f.body_len = 42;
  char *out;
  size_t len;
  if (mbd_forward_head(&f, &out, &len) != 0)
    return;
  mbd_http_head g;
  size_t scan = 0;
  const char *why;
  if (mbd_http_head_end(out, len, &scan) != len || mbd_http_parse_request(out, len, &g, &why) != 0)
    abort();
  if (g.method.len != h->method.len || memcmp(out + g.method.off, buf + h->method.off,
                                              g.method.len) != 0)
    abort();
  size_t tl = h->target.len - f.target_skip;
  const char *t = buf + h->target.off + f.target_skip;
  size_t lead = tl == 0 || t[0] != '/';
  if (g.target.len != tl + lead || memcmp(out + g.target.off + lead, t, tl) != 0)
    abort();
  for (int i = 0; i < g.n_fields; i++) {
    const char *n = out + g.fields[i].name.off;
    size_t nl = g.fields[i].name.len;
    if (mbd_http_eq(n, nl, "transfer-encoding")) /* the daemon's own framing */
      continue;
    if (mbd_http_field_hop(out, &g, i) || (nl >= 11 && strncasecmp(n, "x-modelbuf-", 11) == 0) ||
        mbd_http_eq(n, nl, "expect"))
      abort();
  }
  mbd_http_framing want = f.body == MBD_FWD_CHUNKED ? MBD_BODY_CHUNKED
                          : f.body == MBD_FWD_LENGTH ? MBD_BODY_LENGTH
                                                     : g.framing;
  if (g.framing != want || (want == MBD_BODY_LENGTH && f.body == MBD_FWD_LENGTH &&
                            g.content_length != 42))
    abort();
  free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1)
    return 0;
  unsigned ctl = data[0];
  size_t step = (ctl >> 2) + 1;
  size_t n = size - 1;
  char *buf = malloc(n ? n : 1); /* a copy, so reads past the end are caught */
  if (buf == NULL)
    return 0;
  memcpy(buf, data + 1, n);

  /* The head's end, at once and in steps of `step` bytes. */
  size_t scan = 0, end = mbd_http_head_end(buf, n, &scan);
  size_t scan2 = 0, end2 = 0;
  for (size_t k = step < n ? step : n; ; k = k + step < n ? k + step : n) {
    end2 = mbd_http_head_end(buf, k, &scan2);
    if (end2 != 0 || k == n)
      break;
  }
  if (end != end2)
    abort();
  const char *why;
  mbd_http_head h;
  if ((ctl & 3) == 0) { /* a client's request */
    if (end != 0 && mbd_http_parse_request(buf, end, &h, &why) == 0) {
      if (mbd_http_check_request_line(buf, end, end, &why) != 0)
        abort();
      check_forward(buf, &h, ctl);
      if (h.framing == MBD_BODY_CHUNKED)
        check_chunked(buf + end, n - end, step);
    }
  } else if ((ctl & 3) == 1) { /* a worker's answer */
    if (end != 0 && mbd_http_parse_response(buf, end, (ctl >> 2) & 1, &h, &why) == 0) {
      if (h.status < 100 || h.status > 599)
        abort();
      if (h.framing == MBD_BODY_CHUNKED)
        check_chunked(buf + end, n - end, step);
    }
  } else { /* a chunked body alone */
    check_chunked(buf, n, step);
  }
  free(buf);
  return 0;
}
