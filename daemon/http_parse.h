/*
 * http_parse.h - modelbufd's HTTP/1.1 message parser: request heads from
 * clients, response heads from workers, and chunked bodies from both.
 *
 * Strict by design (RFC 9112, and the rules nginx and HAProxy apply to a
 * message they forward): the daemon never forwards a byte it did not
 * understand, so anything two parsers could read two ways is refused.
 *   - Lines end with CRLF; a bare CR or a bare LF is an error.
 *   - A field name is a token directly followed by ':'; a value holds
 *     visible bytes, SP and HTAB only (no CR, LF, NUL or other control).
 *   - A line that starts with SP or HTAB (obs-fold) is an error.
 *   - Content-Length: digits only, at most once, below 2^63; together with
 *     Transfer-Encoding it is an error. Transfer-Encoding: exactly
 *     "chunked" (any other coding: 501 for a request), never in HTTP/1.0.
 *   - A request target is origin-form ("/..."), absolute-form
 *     ("http://host/...", read as its path) or "*" (OPTIONS); its bytes are
 *     visible ASCII, '%' followed by two hex digits, and no '#'.
 *   - HTTP/1.1 requests carry exactly one Host.
 *
 * The parser works on a buffer that holds the whole head (the caller finds
 * its end with mbd_http_head_end as bytes arrive) and records offsets into
 * it, so the buffer may move (realloc) between parse and use. Nothing is
 * allocated; every function is pure and fuzzed (tests/fuzz/fuzz_http_parse.c).
 */
#ifndef MBD_HTTP_PARSE_H
#define MBD_HTTP_PARSE_H

#include <stddef.h>
#include <stdint.h>

/* Header fields kept per message; a message with more is refused (431). */
#define MBD_HTTP_MAX_HEADERS 100

/* A span of the parsed buffer. */
typedef struct mbd_span {
  uint32_t off, len;
} mbd_span;

typedef struct mbd_http_field {
  mbd_span name, value; /* value without surrounding whitespace */
} mbd_http_field;

/* Message framing. */
typedef enum mbd_http_framing {
  MBD_BODY_NONE = 0, /* no body (no length, not chunked; or a response that has none) */
  MBD_BODY_LENGTH,   /* content_length bytes */
  MBD_BODY_CHUNKED,  /* chunked */
  MBD_BODY_CLOSE     /* a response read until the connection closes */
} mbd_http_framing;

typedef struct mbd_http_head {
  /* Request line (requests). */
  mbd_span method;
  mbd_span target;      /* as sent (absolute-form: from the path on) */
  mbd_span path;        /* the target up to '?' */
  mbd_span query;       /* after '?' (len 0 when none; has_query tells "?" alone) */
  int has_query;
  int asterisk;         /* target "*" */
  /* Status line (responses). */
  int status;
  /* Both. */
  int version;          /* 10 or 11 */
  mbd_http_field fields[MBD_HTTP_MAX_HEADERS];
  int n_fields;
  uint32_t head_len;    /* bytes of the head, final CRLF included */
  mbd_http_framing framing;
  uint64_t content_length; /* MBD_BODY_LENGTH */
  int keep_alive;       /* the connection may carry another message */
  int expect_continue;  /* Expect: 100-continue (HTTP/1.1 requests) */
  int host_count;
  /* Header names listed in Connection (besides close/keep-alive): these
   * are hop-by-hop too. Indexes into fields, or -1 for none. */
  mbd_span conn_tokens[16];
  int n_conn_tokens;
} mbd_http_head;

/*
 * Finds the end of a head in buf[0..len): the offset just past the empty
 * line that ends it, or 0 when it is not complete yet. *scan keeps where
 * the search stopped (start with 0), so that feeding a head byte by byte
 * costs linear time. A bare LF counts as a line end here; the parse
 * refuses it.
 */
size_t mbd_http_head_end(const char *buf, size_t len, size_t *scan);

/*
 * Checks the request line at the start of buf[0..len) as soon as it is
 * complete, so that a client that sends garbage is answered at once:
 * 1 when the line is not complete yet, 0 when it is valid, or an HTTP
 * status (400, 414, 505) with *why.
 */
int mbd_http_check_request_line(const char *buf, size_t len, size_t max_line, const char **why);

/*
 * Parses the request head buf[0..head_len) (head_len from
 * mbd_http_head_end). 0, or the HTTP status to answer (400, 414, 431, 501,
 * 505) with *why, a static text naming the fault.
 */
int mbd_http_parse_request(const char *buf, size_t head_len, mbd_http_head *h, const char **why);

/*
 * Parses a response head buf[0..head_len) from a worker. head_request: the
 * request was HEAD (no body whatever the length says). 0, or -1 with *why
 * (the client then gets 502). 1xx responses parse with framing NONE.
 */
int mbd_http_parse_response(const char *buf, size_t head_len, int head_request,
                            mbd_http_head *h, const char **why);

/* The value of the first field called name (case-insensitive) or NULL,
 * with its length. */
const char *mbd_http_field_get(const char *buf, const mbd_http_head *h, const char *name,
                               size_t *len);

/* 1 when field i of h is hop-by-hop: a connection-level field, or one
 * the Connection field names. */
int mbd_http_field_hop(const char *buf, const mbd_http_head *h, int i);

/* ------------------------------------------------------------------------ */
/* Chunked bodies                                                            */

typedef struct mbd_chunked {
  int state;
  uint64_t left;        /* data bytes left in this chunk */
  uint32_t line;        /* bytes of the current size/extension/trailer line */
  uint32_t digits;
  int ext;              /* past the ';' of the size line's extensions */
  uint64_t trailer_bytes;
  uint64_t max_trailer; /* trailer bytes allowed (the header limit) */
} mbd_chunked;

/* Starts a chunked body whose trailer may take at most max_trailer bytes. */
void mbd_chunked_init(mbd_chunked *c, uint64_t max_trailer);

/*
 * Feeds in[0..n). Consumes framing and at most one run of data: *used
 * bytes of in were consumed, of which the data run is *data (a pointer
 * into in) and *data_len (0 when none). Returns 0 (call again with the
 * rest), 1 when the body ended (after its trailer: the bytes after *used
 * belong to the next message), or -1 with *why on a malformed body.
 */
int mbd_chunked_feed(mbd_chunked *c, const char *in, size_t n, size_t *used, const char **data,
                     size_t *data_len, const char **why);

/* ------------------------------------------------------------------------ */
/* Small helpers                                                             */

/* 1 when s[0..n) equals the lower-case word w, ignoring case. */
int mbd_http_eq(const char *s, size_t n, const char *w);

/* 1 when c is a token character (RFC 9110 tchar). */
int mbd_http_tchar(unsigned char c);

/* 1 when s[0..n) is a valid field value (visible bytes, SP, HTAB). */
int mbd_http_value_ok(const char *s, size_t n);

#endif /* MBD_HTTP_PARSE_H */
