/*
 * test_http_parse.c - the front door's HTTP/1.1 parser (daemon/http_parse.c)
 * and the head a worker gets (daemon/forward.c): every rule a request
 * smuggler or header injector would probe, each with the status the
 * client gets, and heads fed byte by byte.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "forward.h"
#include "http_parse.h"

/* Parses a whole request head; the status (0 when valid). */
static int parse(const char *s, mbd_http_head *h) {
  const char *why;
  size_t scan = 0, n = strlen(s);
  size_t end = mbd_http_head_end(s, n, &scan);
  if (end == 0)
    return -1;
  assert_int_equal(end, n); /* the tests hold one head each */
  return mbd_http_parse_request(s, end, h, &why);
}

static int status_of(const char *s) {
  mbd_http_head h;
  return parse(s, &h);
}

static void test_valid_request(void **state) {
  (void)state;
  mbd_http_head h;
  const char *s = "POST /m/a/x%20y?q=1&r HTTP/1.1\r\nHost: h\r\nContent-Length: 12\r\n"
                  "X-Empty:\r\nX-Pad:   v a l  \r\n\r\n";
  assert_int_equal(parse(s, &h), 0);
  assert_int_equal(h.version, 11);
  assert_true(h.keep_alive);
  assert_int_equal(h.framing, MBD_BODY_LENGTH);
  assert_int_equal(h.content_length, 12);
  assert_int_equal(h.n_fields, 4);
  assert_memory_equal(s + h.method.off, "POST", 4);
  assert_int_equal(h.target.len, strlen("/m/a/x%20y?q=1&r"));
  assert_memory_equal(s + h.path.off, "/m/a/x%20y", h.path.len);
  assert_int_equal(h.path.len, 10);
  assert_true(h.has_query);
  assert_memory_equal(s + h.query.off, "q=1&r", h.query.len);
  size_t n;
  const char *v = mbd_http_field_get(s, &h, "x-pad", &n);
  assert_non_null(v);
  assert_int_equal(n, strlen("v a l"));
  assert_memory_equal(v, "v a l", n);
  v = mbd_http_field_get(s, &h, "X-Empty", &n);
  assert_non_null(v);
  assert_int_equal(n, 0);
}

static void test_request_line(void **state) {
  (void)state;
  assert_int_equal(status_of("GET / HTTP/1.0\r\n\r\n"), 0);
  assert_int_equal(status_of("GET  / HTTP/1.1\r\nHost: h\r\n\r\n"), 400);   /* two spaces */
  assert_int_equal(status_of("GET / HTTP/1.1 \r\nHost: h\r\n\r\n"), 400);   /* trailing space */
  assert_int_equal(status_of("GE(T / HTTP/1.1\r\nHost: h\r\n\r\n"), 400);   /* not a token */
  assert_int_equal(status_of("GET /\r\nHost: h\r\n\r\n"), 400);              /* no version */
  assert_int_equal(status_of("GET / HTTP/2.0\r\nHost: h\r\n\r\n"), 505);
  assert_int_equal(status_of("GET / HTTP/1.2\r\nHost: h\r\n\r\n"), 505);
  assert_int_equal(status_of("GET / HTTPS/1.1\r\nHost: h\r\n\r\n"), 400);
  assert_int_equal(status_of("GET /a#b HTTP/1.1\r\nHost: h\r\n\r\n"), 400);  /* fragment */
  assert_int_equal(status_of("GET /a%zz HTTP/1.1\r\nHost: h\r\n\r\n"), 400); /* bad escape */
  assert_int_equal(status_of("GET /a% HTTP/1.1\r\nHost: h\r\n\r\n"), 400);
  assert_int_equal(status_of("GET /\x80 HTTP/1.1\r\nHost: h\r\n\r\n"), 400); /* non-ASCII */
  assert_int_equal(status_of("GET /\x01 HTTP/1.1\r\nHost: h\r\n\r\n"), 400);
  assert_int_equal(status_of("GET a HTTP/1.1\r\nHost: h\r\n\r\n"), 400);     /* not origin-form */
  assert_int_equal(status_of("GET / HTTP/1.1\rHost: h\r\n\r\n"), 400);       /* bare CR */
  /* absolute-form is read as its path; asterisk-form is kept as such */
  mbd_http_head h;
  const char *abs = "GET http://example.com/m/a?x HTTP/1.1\r\nHost: h\r\n\r\n";
  assert_int_equal(parse(abs, &h), 0);
  assert_memory_equal(abs + h.target.off, "/m/a?x", h.target.len);
  assert_int_equal(status_of("GET http://example.com HTTP/1.1\r\nHost: h\r\n\r\n"), 400);
  assert_int_equal(parse("OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n", &h), 0);
  assert_true(h.asterisk);
}

static void test_early_line_check(void **state) {
  (void)state;
  const char *why;
  /* Incomplete: wait; garbage: answered at once; over the limit: 414. */
  assert_int_equal(mbd_http_check_request_line("GET /abc", 8, 100, &why), 1);
  assert_int_equal(mbd_http_check_request_line("\x16\x03\x01\x02\x00\n", 6, 100, &why), 400);
  assert_int_equal(mbd_http_check_request_line("GET /abcdefgh", 13, 8, &why), 414);
  assert_int_equal(mbd_http_check_request_line("GET / HTTP/1.1\r\n", 16, 100, &why), 0);
  assert_int_equal(mbd_http_check_request_line("GET / HTTP/1.1\n", 15, 100, &why), 400);
  assert_int_equal(mbd_http_check_request_line("GET / HTTP/3.0\r\n", 16, 100, &why), 505);
}

static void test_fields(void **state) {
  (void)state;
  assert_int_equal(status_of("GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n"), 400); /* bare CR */
  assert_int_equal(status_of("GET / HTTP/1.1\r\nHost: h\nX: a\r\n\r\n"), 400);     /* bare LF */
  assert_int_equal(status_of("GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n"), 400); /* fold */
  assert_int_equal(status_of("GET / HTTP/1.1\r\nHost: h\r\nX : a\r\n\r\n"), 400);  /* space */
  assert_int_equal(status_of("GET / HTTP/1.1\r\nHost: h\r\n: a\r\n\r\n"), 400);    /* no name */
  assert_int_equal(status_of("GET / HTTP/1.1\r\nHost: h\r\nX(: a\r\n\r\n"), 400);
  assert_int_equal(status_of("GET / HTTP/1.1\r\nHost: h\r\nNoColon\r\n\r\n"), 400);
  char nul[] = "GET / HTTP/1.1\r\nHost: h\r\nX: a_b\r\n\r\n";
  nul[strlen("GET / HTTP/1.1\r\nHost: h\r\nX: a")] = '\0';
  mbd_http_head h;
  const char *why;
  assert_int_equal(mbd_http_parse_request(nul, sizeof(nul) - 1, &h, &why), 400);
  assert_int_equal(status_of("GET / HTTP/1.1\r\nHost: h\r\nX: a\x7f\r\n\r\n"), 400);  /* DEL */
  assert_int_equal(status_of("GET / HTTP/1.1\r\nHost: h\r\nX: caf\xc3\xa9\r\n\r\n"), 0); /* obs-text */
  /* Host: exactly one in HTTP/1.1 */
  assert_int_equal(status_of("GET / HTTP/1.1\r\n\r\n"), 400);
  assert_int_equal(status_of("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), 400);
  assert_int_equal(status_of("GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n"), 400);
  /* 100 fields at most */
  char many[8192];
  size_t k = (size_t)snprintf(many, sizeof(many), "GET / HTTP/1.1\r\nHost: h\r\n");
  for (int i = 0; i < 99; i++)
    k += (size_t)snprintf(many + k, sizeof(many) - k, "X%d: v\r\n", i);
  snprintf(many + k, sizeof(many) - k, "\r\n");
  assert_int_equal(status_of(many), 0);
  snprintf(many + k, sizeof(many) - k, "Y: v\r\n\r\n");
  assert_int_equal(status_of(many), 431);
}

static void test_framing(void **state) {
  (void)state;
  mbd_http_head h;
  /* Content-Length with Transfer-Encoding, either order */
  assert_int_equal(status_of("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n"
                             "Transfer-Encoding: chunked\r\n\r\n"), 400);
  assert_int_equal(status_of("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
                             "Content-Length: 3\r\n\r\n"), 400);
  /* codings */
  assert_int_equal(status_of("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n"), 501);
  assert_int_equal(status_of("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
                   501);
  assert_int_equal(status_of("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: identity\r\n\r\n"),
                   501);
  assert_int_equal(status_of("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, chunked\r\n"
                             "\r\n"), 400);
  assert_int_equal(status_of("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
                             "Transfer-Encoding: chunked\r\n\r\n"), 400);
  assert_int_equal(status_of("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked,\r\n\r\n"), 400);
  assert_int_equal(status_of("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"), 400);
  assert_int_equal(parse("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: ChUnKeD\r\n\r\n", &h), 0);
  assert_int_equal(h.framing, MBD_BODY_CHUNKED);
  /* lengths */
  static const char *const bad_cl[] = {"+5", "-5", "5 5", "0x5", "", "5,5", "5, 5", " 5a",
                                       "99999999999999999999", "9223372036854775808"};
  for (size_t i = 0; i < sizeof(bad_cl) / sizeof(bad_cl[0]); i++) {
    char s[256];
    snprintf(s, sizeof(s), "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: %s\r\n\r\n", bad_cl[i]);
    assert_int_equal(status_of(s), 400);
  }
  assert_int_equal(status_of("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n"
                             "Content-Length: 5\r\n\r\n"), 400);
  assert_int_equal(parse("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 9223372036854775807\r\n\r\n",
                         &h), 0);
  assert_int_equal(h.content_length, INT64_MAX);
  assert_int_equal(parse("POST / HTTP/1.1\r\nHost: h\r\n\r\n", &h), 0);
  assert_int_equal(h.framing, MBD_BODY_NONE);
  /* keep-alive and Connection tokens */
  assert_int_equal(parse("GET / HTTP/1.0\r\n\r\n", &h), 0);
  assert_false(h.keep_alive);
  assert_int_equal(parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", &h), 0);
  assert_true(h.keep_alive);
  assert_int_equal(parse("GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", &h), 0);
  assert_false(h.keep_alive);
  /* expectations */
  assert_int_equal(parse("POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\n\r\n", &h), 0);
  assert_true(h.expect_continue);
  assert_int_equal(status_of("POST / HTTP/1.1\r\nHost: h\r\nExpect: 200-ok\r\n\r\n"), 417);
  assert_int_equal(parse("POST / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n", &h), 0);
  assert_false(h.expect_continue);
}

static void test_head_end_byte_by_byte(void **state) {
  (void)state;
  const char *s = "GET / HTTP/1.1\r\nHost: h\r\nX: y\r\n\r\nNEXT";
  size_t head = strlen(s) - 4, scan = 0;
  for (size_t n = 1; n <= strlen(s); n++) {
    size_t end = mbd_http_head_end(s, n, &scan);
    assert_int_equal(end, n >= head ? head : 0);
  }
  /* bare LF heads end too (and are refused by the parse) */
  scan = 0;
  assert_int_equal(mbd_http_head_end("GET / HTTP/1.1\nHost: h\n\n", 24, &scan), 24);
  mbd_http_head h;
  const char *why;
  assert_int_equal(mbd_http_parse_request("GET / HTTP/1.1\nHost: h\n\n", 24, &h, &why), 400);
}

/* Decodes a whole chunked body fed in pieces of step bytes. The status
 * (1 ended, 0 more wanted, -1 error); the data into out. */
static int dechunk(const char *in, size_t n, size_t step, char *out, size_t *out_len,
                   size_t *used_total) {
  mbd_chunked c;
  mbd_chunked_init(&c, 64);
  size_t off = 0;
  *out_len = 0;
  while (off < n) {
    size_t avail = n - off < step ? n - off : step;
    size_t used;
    const char *data, *why;
    size_t dn;
    int st = mbd_chunked_feed(&c, in + off, avail, &used, &data, &dn, &why);
    if (st < 0)
      return -1;
    if (dn > 0)
      memcpy(out + *out_len, data, dn);
    *out_len += dn;
    off += used;
    if (st == 1) {
      *used_total = off;
      return 1;
    }
    if (used == 0 && avail == n - off)
      break;
  }
  *used_total = off;
  return 0;
}

static void test_chunked(void **state) {
  (void)state;
  const char *body = "5\r\nhello\r\n6;ext=1;q=\"a b\"\r\n world\r\n0\r\nTrailer: x\r\n\r\nNEXT";
  size_t n = strlen(body);
  char out[64];
  size_t len, used;
  for (size_t step = 1; step <= n; step++) {
    assert_int_equal(dechunk(body, n, step, out, &len, &used), 1);
    assert_int_equal(len, 11);
    assert_memory_equal(out, "hello world", 11);
    assert_int_equal(used, n - 4); /* NEXT is the next request */
  }
  static const char *const bad[] = {
      "x\r\n",                          /* not hex */
      "\r\n",                           /* no digits */
      "-1\r\n",
      "1\r\nab\r\n",                    /* data not followed by CRLF */
      "1\nab",                          /* bare LF */
      "1 x\r\n",                        /* junk after the size */
      "10000000000000000\r\n",          /* 17 digits */
      "ffffffffffffffff\r\n",           /* over 2^63 */
      "0\r\n x: y\r\n\r\n",             /* folded trailer */
      "0\r\nX\x01: y\r\n\r\n",
      "0\r\nX: \x01\r\n\r\n",
      "0\r\nX: yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy\r\n\r\n",
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
    assert_int_equal(dechunk(bad[i], strlen(bad[i]), 3, out, &len, &used), -1);
  /* leading zeros within 16 digits are fine */
  assert_int_equal(dechunk("0003\r\nabc\r\n0\r\n\r\n", 16, 1, out, &len, &used), 1);
  assert_int_equal(len, 3);
}

static void test_response(void **state) {
  (void)state;
  mbd_http_head h;
  const char *why;
#define RESP(s, head) mbd_http_parse_response(s, strlen(s), head, &h, &why)
  assert_int_equal(RESP("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", 0), 0);
  assert_int_equal(h.status, 200);
  assert_int_equal(h.framing, MBD_BODY_LENGTH);
  assert_true(h.keep_alive);
  assert_int_equal(RESP("HTTP/1.1 200\r\n\r\n", 0), 0); /* no reason phrase */
  assert_int_equal(h.framing, MBD_BODY_CLOSE);
  assert_false(h.keep_alive);
  assert_int_equal(RESP("HTTP/1.1 204 No Content\r\n\r\n", 0), 0);
  assert_int_equal(h.framing, MBD_BODY_NONE);
  assert_int_equal(RESP("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", 1), 0);
  assert_int_equal(h.framing, MBD_BODY_NONE); /* HEAD */
  assert_int_equal(RESP("HTTP/1.1 100 Continue\r\n\r\n", 0), 0);
  assert_int_equal(h.status, 100);
  assert_int_equal(RESP("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", 0), 0);
  assert_int_equal(RESP("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 0), -1);
  assert_int_equal(RESP("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                        0), -1);
  assert_int_equal(RESP("HTTP/1.1 999 Nope\r\n\r\n", 0), -1);
  assert_int_equal(RESP("HTTP/1.1 099 Nope\r\n\r\n", 0), -1);
  assert_int_equal(RESP("HTTP/1.1 20 OK\r\n\r\n", 0), -1);
  assert_int_equal(RESP("HTTP/2 200 OK\r\n\r\n", 0), -1);
  assert_int_equal(RESP("HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n", 0), -1);
  assert_int_equal(RESP("HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", 0), -1);
  assert_int_equal(RESP("garbage\r\n\r\n", 0), -1);
#undef RESP
}

static void test_forward_head(void **state) {
  (void)state;
  const char *s = "POST /m/a/x%23y?q=1 HTTP/1.1\r\nHost: client\r\nContent-Length: 7\r\n"
                  "Connection: X-Secret, keep-alive\r\nX-Secret: s\r\nKeep-Alive: 5\r\n"
                  "TE: trailers\r\nUpgrade: h2c\r\nProxy-Authorization: p\r\n"
                  "Authorization: Bearer k\r\nX-API-Key: k\r\nX-Modelbuf-Priority: 5\r\n"
                  "Expect: 100-continue\r\nAccept: */*\r\nX-Custom: keep me\r\n\r\n";
  mbd_http_head h;
  assert_int_equal(parse(s, &h), 0);
  mbd_fwd f;
  memset(&f, 0, sizeof(f));
  f.buf = s;
  f.h = &h;
  f.target_skip = 4; /* "/m/a" */
  f.port = 4242;
  f.drop_keys = 1;
  f.body = MBD_FWD_LENGTH;
  f.body_len = 7;
  char *out;
  size_t len;
  assert_int_equal(mbd_forward_head(&f, &out, &len), 0);
  const char *want = "POST /x%23y?q=1 HTTP/1.1\r\nHost: 127.0.0.1:4242\r\nAccept: */*\r\n"
                     "X-Custom: keep me\r\nContent-Length: 7\r\n\r\n";
  assert_int_equal(len, strlen(want));
  assert_memory_equal(out, want, len);
  free(out);
  /* Without keys the credentials go on; a streamed body is chunked; the
   * model route's bare name becomes "/". */
  const char *s2 = "PUT /m/a?z HTTP/1.1\r\nHost: c\r\nTransfer-Encoding: chunked\r\n"
                   "Authorization: Bearer k\r\n\r\n";
  assert_int_equal(parse(s2, &h), 0);
  f.buf = s2;
  f.drop_keys = 0;
  f.body = MBD_FWD_CHUNKED;
  assert_int_equal(mbd_forward_head(&f, &out, &len), 0);
  const char *want2 = "PUT /?z HTTP/1.1\r\nHost: 127.0.0.1:4242\r\nAuthorization: Bearer k\r\n"
                      "Transfer-Encoding: chunked\r\n\r\n";
  assert_int_equal(len, strlen(want2));
  assert_memory_equal(out, want2, len);
  free(out);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_valid_request),      cmocka_unit_test(test_request_line),
      cmocka_unit_test(test_early_line_check),   cmocka_unit_test(test_fields),
      cmocka_unit_test(test_framing),            cmocka_unit_test(test_head_end_byte_by_byte),
      cmocka_unit_test(test_chunked),            cmocka_unit_test(test_response),
      cmocka_unit_test(test_forward_head),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
