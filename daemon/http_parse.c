/*
 * http_parse.c - strict HTTP/1.1 heads and chunked bodies (http_parse.h).
 *
 * Every rule here is one a request smuggler or a header injector would
 * probe: line ends, field syntax, the two framings, the request target.
 * The functions never allocate, never read past the length they are given
 * and never recurse.
 */
#include "http_parse.h"

#include <string.h>
#include <strings.h>

/* tchar: "!#$%&'*+-.^_`|~" / DIGIT / ALPHA */
int mbd_http_tchar(unsigned char c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
    return 1;
  return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* field-vchar, SP, HTAB: everything but controls (and DEL). */
static int value_byte(unsigned char c) {
  return c == ' ' || c == '\t' || (c > 0x20 && c != 0x7f);
}

int mbd_http_value_ok(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (!value_byte((unsigned char)s[i]))
      return 0;
  return 1;
}

int mbd_http_eq(const char *s, size_t n, const char *w) {
  return strlen(w) == n && strncasecmp(s, w, n) == 0;
}

static int hexval(unsigned char c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

size_t mbd_http_head_end(const char *buf, size_t len, size_t *scan) {
  size_t i = *scan;
  /* The end is a line end followed by an empty line: "\n\r\n" or "\n\n".
   * i is where the next line end may start; resume a little before it. */
  for (; i < len; i++) {
    if (buf[i] != '\n')
      continue;
    if (i + 1 < len && buf[i + 1] == '\n') {
      *scan = i;
      return i + 2;
    }
    if (i + 2 < len && buf[i + 1] == '\r' && buf[i + 2] == '\n') {
      *scan = i;
      return i + 3;
    }
    if (i + 2 >= len) { /* "\n" or "\n\r" at the end: look again from here */
      *scan = i;
      return 0;
    }
  }
  *scan = i;
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Lines                                                                     */

/* The end of the line starting at p (the offset of its CR), or -1 when the
 * line holds a bare CR or LF or runs past end. */
static long line_end(const char *buf, size_t p, size_t end) {
  for (size_t i = p; i < end; i++) {
    if (buf[i] == '\r')
      return i + 1 < end && buf[i + 1] == '\n' ? (long)i : -1;
    if (buf[i] == '\n')
      return -1; /* bare LF */
  }
  return -1;
}

/* ------------------------------------------------------------------------ */
/* Request line                                                              */

static int target_ok(const char *t, size_t n, const char **why) {
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)t[i];
    if (c <= 0x20 || c >= 0x7f) {
      *why = "request target holds a control, space or non-ASCII byte";
      return 0;
    }
    if (c == '#') {
      *why = "request target holds a fragment ('#')";
      return 0;
    }
    if (c == '%') {
      if (i + 2 >= n || hexval((unsigned char)t[i + 1]) < 0 ||
          hexval((unsigned char)t[i + 2]) < 0) {
        *why = "request target holds a bad percent-escape";
        return 0;
      }
    }
  }
  return 1;
}

/*
 * Parses "METHOD SP target SP HTTP/x.y" in buf[0..n) (CRLF excluded) into
 * h. 0 or a status with *why.
 */
static int request_line(const char *buf, size_t n, mbd_http_head *h, const char **why) {
  size_t i = 0;
  while (i < n && mbd_http_tchar((unsigned char)buf[i]))
    i++;
  if (i == 0 || i > 32 || i >= n || buf[i] != ' ') {
    *why = "malformed request line (method)";
    return 400;
  }
  h->method.off = 0;
  h->method.len = (uint32_t)i;
  size_t t0 = ++i;
  while (i < n && buf[i] != ' ')
    i++;
  if (i == t0 || i >= n) {
    *why = "malformed request line (target)";
    return 400;
  }
  size_t t1 = i++;
  const char *v = buf + i;
  size_t vn = n - i;
  if (vn != 8 || memcmp(v, "HTTP/", 5) != 0 || v[5] < '0' || v[5] > '9' || v[6] != '.' ||
      v[7] < '0' || v[7] > '9') {
    *why = "malformed request line (version)";
    return 400;
  }
  if (v[5] != '1' || (v[7] != '0' && v[7] != '1')) {
    *why = "HTTP version not supported (HTTP/1.0 and HTTP/1.1 are)";
    return 505;
  }
  h->version = v[7] == '1' ? 11 : 10;

  const char *t = buf + t0;
  size_t tn = t1 - t0;
  if (!target_ok(t, tn, why))
    return 400;
  size_t start = t0;
  if (tn == 1 && t[0] == '*') {
    h->asterisk = 1;
  } else if (t[0] != '/') {
    /* absolute-form: scheme "://" authority path */
    size_t k = 0;
    if (tn > 7 && strncasecmp(t, "http://", 7) == 0)
      k = 7;
    else if (tn > 8 && strncasecmp(t, "https://", 8) == 0)
      k = 8;
    if (k == 0) {
      *why = "request target must start with '/'";
      return 400;
    }
    while (k < tn && t[k] != '/' && t[k] != '?')
      k++;
    if (k >= tn || t[k] != '/') {
      *why = "absolute request target without a path";
      return 400;
    }
    start = t0 + k;
  }
  h->target.off = (uint32_t)start;
  h->target.len = (uint32_t)(t1 - start);
  const char *q = memchr(buf + start, '?', t1 - start);
  h->path.off = (uint32_t)start;
  h->path.len = (uint32_t)(q ? (size_t)(q - (buf + start)) : t1 - start);
  h->has_query = q != NULL;
  h->query.off = q ? (uint32_t)(q - buf + 1) : 0;
  h->query.len = q ? (uint32_t)(t1 - (size_t)(q - buf) - 1) : 0;
  return 0;
}

int mbd_http_check_request_line(const char *buf, size_t len, size_t max_line, const char **why) {
  const char *lf = memchr(buf, '\n', len);
  if (lf == NULL) {
    if (len > max_line) {
      *why = "request line too long";
      return 414;
    }
    return 1;
  }
  size_t n = (size_t)(lf - buf);
  if (n == 0 || buf[n - 1] != '\r') {
    *why = "request line does not end with CRLF";
    return 400;
  }
  if (n + 1 > max_line) {
    *why = "request line too long";
    return 414;
  }
  if (memchr(buf, '\r', n - 1) != NULL) {
    *why = "bare CR in the request line";
    return 400;
  }
  mbd_http_head h;
  memset(&h, 0, sizeof(h));
  return request_line(buf, n - 1, &h, why);
}

/* ------------------------------------------------------------------------ */
/* Fields                                                                    */

/* Parses one comma list element by element: calls fn for each (trimmed,
 * non-empty); empty elements are an error. 0 or -1. */
typedef int (*elem_fn)(void *arg, const char *s, size_t n);

static int each_elem(const char *v, size_t n, elem_fn fn, void *arg) {
  size_t i = 0;
  for (;;) {
    size_t a = i;
    while (i < n && v[i] != ',')
      i++;
    size_t b = i;
    while (a < b && (v[a] == ' ' || v[a] == '\t'))
      a++;
    while (b > a && (v[b - 1] == ' ' || v[b - 1] == '\t'))
      b--;
    if (a == b || fn(arg, v + a, b - a) != 0)
      return -1;
    if (i >= n)
      return 0;
    i++; /* the comma */
  }
}

typedef struct fctx {
  mbd_http_head *h;
  const char *buf;
  int chunked;   /* times "chunked" was listed */
  int other_te;  /* another coding was listed */
  int expect_other;
} fctx;

static int te_elem(void *arg, const char *s, size_t n) {
  fctx *f = arg;
  if (mbd_http_eq(s, n, "chunked"))
    f->chunked++;
  else
    f->other_te = 1;
  return 0;
}

static int conn_elem(void *arg, const char *s, size_t n) {
  fctx *f = arg;
  mbd_http_head *h = f->h;
  for (size_t i = 0; i < n; i++)
    if (!mbd_http_tchar((unsigned char)s[i]))
      return -1;
  if (mbd_http_eq(s, n, "close")) {
    h->keep_alive = -1; /* resolved after the fields */
    return 0;
  }
  if (mbd_http_eq(s, n, "keep-alive")) {
    if (h->keep_alive == 0)
      h->keep_alive = 2;
    return 0;
  }
  if (h->n_conn_tokens >= (int)(sizeof(h->conn_tokens) / sizeof(h->conn_tokens[0])))
    return -1;
  h->conn_tokens[h->n_conn_tokens].off = (uint32_t)(s - f->buf);
  h->conn_tokens[h->n_conn_tokens].len = (uint32_t)n;
  h->n_conn_tokens++;
  return 0;
}

static int expect_elem(void *arg, const char *s, size_t n) {
  fctx *f = arg;
  if (mbd_http_eq(s, n, "100-continue"))
    f->h->expect_continue = 1;
  else
    f->expect_other = 1;
  return 0;
}

/* Parses a Content-Length value; 0 or -1. Duplicates are handled by the
 * caller. */
static int parse_length(const char *v, size_t n, uint64_t *out) {
  uint64_t x = 0;
  if (n == 0 || n > 19)
    return -1;
  for (size_t i = 0; i < n; i++) {
    if (v[i] < '0' || v[i] > '9')
      return -1;
    x = x * 10 + (uint64_t)(v[i] - '0');
  }
  if (x > (uint64_t)INT64_MAX)
    return -1;
  *out = x;
  return 0;
}

/*
 * Parses the field lines of buf[p..end) (each ending with CRLF, then the
 * final CRLF at end - 2) into h, with the framing fields interpreted.
 * request: the rules for a request (else a response). 0, or a status and
 * *why (responses: any error is 502).
 */
static int parse_fields(const char *buf, size_t p, size_t end, int request, mbd_http_head *h,
                        const char **why) {
  fctx f;
  memset(&f, 0, sizeof(f));
  f.h = h;
  f.buf = buf;
  int cl_count = 0, te_seen = 0;
  uint64_t cl = 0;
  while (p < end) {
    long e = line_end(buf, p, end);
    if (e < 0) {
      *why = "header line with a bare CR or LF";
      return 400;
    }
    size_t le = (size_t)e;
    if (le == p) { /* the empty line */
      if (le + 2 != end) {
        *why = "bytes after the end of the head";
        return 400;
      }
      break;
    }
    if (buf[p] == ' ' || buf[p] == '\t') {
      *why = "obsolete line folding in a header";
      return 400;
    }
    size_t k = p;
    while (k < le && mbd_http_tchar((unsigned char)buf[k]))
      k++;
    if (k == p || k >= le || buf[k] != ':') {
      *why = k < le && (buf[k] == ' ' || buf[k] == '\t') ? "whitespace before ':' in a header"
                                                           : "malformed header name";
      return 400;
    }
    size_t vs = k + 1, ve = le;
    while (vs < ve && (buf[vs] == ' ' || buf[vs] == '\t'))
      vs++;
    while (ve > vs && (buf[ve - 1] == ' ' || buf[ve - 1] == '\t'))
      ve--;
    if (!mbd_http_value_ok(buf + vs, ve - vs)) {
      *why = "control byte (NUL, CR, ...) in a header value";
      return 400;
    }
    if (h->n_fields >= MBD_HTTP_MAX_HEADERS) {
      *why = "too many header fields";
      return 431;
    }
    mbd_http_field *fl = &h->fields[h->n_fields++];
    fl->name.off = (uint32_t)p;
    fl->name.len = (uint32_t)(k - p);
    fl->value.off = (uint32_t)vs;
    fl->value.len = (uint32_t)(ve - vs);
    const char *name = buf + p, *val = buf + vs;
    size_t nn = k - p, vn = ve - vs;
    if (mbd_http_eq(name, nn, "content-length")) {
      uint64_t x;
      if (parse_length(val, vn, &x) != 0) {
        *why = "malformed Content-Length";
        return 400;
      }
      if (cl_count > 0 && (request || x != cl)) {
        *why = request ? "duplicate Content-Length" : "conflicting Content-Length";
        return 400;
      }
      cl = x;
      cl_count++;
    } else if (mbd_http_eq(name, nn, "transfer-encoding")) {
      te_seen = 1;
      if (each_elem(val, vn, te_elem, &f) != 0) {
        *why = "malformed Transfer-Encoding";
        return 400;
      }
    } else if (mbd_http_eq(name, nn, "connection")) {
      if (each_elem(val, vn, conn_elem, &f) != 0) {
        *why = "malformed Connection header";
        return 400;
      }
    } else if (request && mbd_http_eq(name, nn, "host")) {
      h->host_count++;
    } else if (request && mbd_http_eq(name, nn, "expect")) {
      if (each_elem(val, vn, expect_elem, &f) != 0)
        f.expect_other = 1;
    }
    p = le + 2;
  }

  /* Framing (RFC 9112 §6). */
  if (te_seen) {
    if (cl_count > 0) {
      *why = "both Content-Length and Transfer-Encoding";
      return 400;
    }
    if (request && h->version == 10) {
      *why = "Transfer-Encoding in an HTTP/1.0 request";
      return 400;
    }
    if (f.chunked > 1) {
      *why = "chunked listed twice in Transfer-Encoding";
      return 400;
    }
    if (f.other_te) {
      *why = "unsupported Transfer-Encoding (only chunked is)";
      return 501;
    }
    h->framing = MBD_BODY_CHUNKED;
  } else if (cl_count > 0) {
    h->framing = MBD_BODY_LENGTH;
    h->content_length = cl;
  } else {
    h->framing = request ? MBD_BODY_NONE : MBD_BODY_CLOSE;
  }
  if (request) {
    if (h->version == 11 && h->host_count != 1) {
      *why = h->host_count == 0 ? "HTTP/1.1 request without Host" : "more than one Host";
      return 400;
    }
    if (h->host_count > 1) {
      *why = "more than one Host";
      return 400;
    }
    if (h->version == 10)
      h->expect_continue = 0;
    else if (f.expect_other) {
      *why = "unsupported expectation (only 100-continue is)";
      return 417;
    }
  }
  /* keep_alive: -1 close, 2 keep-alive listed, 0 nothing said. */
  int ka = h->keep_alive;
  h->keep_alive = ka == -1 ? 0 : h->version == 11 ? 1 : ka == 2;
  return 0;
}

int mbd_http_parse_request(const char *buf, size_t head_len, mbd_http_head *h, const char **why) {
  memset(h, 0, sizeof(*h));
  *why = "";
  if (head_len < 4 || buf[head_len - 1] != '\n') {
    *why = "incomplete head";
    return 400;
  }
  long e = line_end(buf, 0, head_len);
  if (e < 0) {
    *why = "request line with a bare CR or LF";
    return 400;
  }
  int st = request_line(buf, (size_t)e, h, why);
  if (st != 0)
    return st;
  st = parse_fields(buf, (size_t)e + 2, head_len, 1, h, why);
  if (st != 0)
    return st;
  h->head_len = (uint32_t)head_len;
  return 0;
}

int mbd_http_parse_response(const char *buf, size_t head_len, int head_request,
                            mbd_http_head *h, const char **why) {
  memset(h, 0, sizeof(*h));
  *why = "";
  long e = line_end(buf, 0, head_len);
  if (head_len < 4 || buf[head_len - 1] != '\n' || e < 0) {
    *why = "malformed status line";
    return -1;
  }
  size_t n = (size_t)e;
  if (n < 12 || memcmp(buf, "HTTP/1.", 7) != 0 || (buf[7] != '0' && buf[7] != '1') ||
      buf[8] != ' ' || buf[9] < '1' || buf[9] > '5' || buf[10] < '0' || buf[10] > '9' ||
      buf[11] < '0' || buf[11] > '9' || (n > 12 && buf[12] != ' ') ||
      !mbd_http_value_ok(buf + 12, n - 12)) {
    *why = "malformed status line (or a status outside 100-599)";
    return -1;
  }
  h->version = buf[7] == '1' ? 11 : 10;
  h->status = (buf[9] - '0') * 100 + (buf[10] - '0') * 10 + (buf[11] - '0');
  if (parse_fields(buf, n + 2, head_len, 0, h, why) != 0)
    return -1;
  if (h->status < 200 || h->status == 204 || h->status == 304 || head_request) {
    h->framing = MBD_BODY_NONE;
    h->content_length = 0;
  }
  if (h->framing == MBD_BODY_CLOSE)
    h->keep_alive = 0;
  h->head_len = (uint32_t)head_len;
  return 0;
}

const char *mbd_http_field_get(const char *buf, const mbd_http_head *h, const char *name,
                               size_t *len) {
  size_t nl = strlen(name);
  for (int i = 0; i < h->n_fields; i++)
    if (h->fields[i].name.len == nl && strncasecmp(buf + h->fields[i].name.off, name, nl) == 0) {
      if (len)
        *len = h->fields[i].value.len;
      return buf + h->fields[i].value.off;
    }
  return NULL;
}

int mbd_http_field_hop(const char *buf, const mbd_http_head *h, int i) {
  static const char *const hop[] = {"connection", "keep-alive", "proxy-connection", "te",
                                    "trailer",    "transfer-encoding", "upgrade",
                                    "proxy-authorization", "proxy-authenticate"};
  const char *n = buf + h->fields[i].name.off;
  size_t nl = h->fields[i].name.len;
  for (size_t k = 0; k < sizeof(hop) / sizeof(hop[0]); k++)
    if (mbd_http_eq(n, nl, hop[k]))
      return 1;
  for (int k = 0; k < h->n_conn_tokens; k++)
    if (h->conn_tokens[k].len == nl && strncasecmp(buf + h->conn_tokens[k].off, n, nl) == 0)
      return 1;
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Chunked bodies                                                            */

enum {
  CK_SIZE = 0,   /* hex digits */
  CK_EXT,        /* after the digits: extensions up to CR */
  CK_SIZE_LF,    /* LF after the size line's CR */
  CK_DATA,
  CK_DATA_CR,
  CK_DATA_LF,
  CK_TRAILER,    /* at the start of a trailer line (or the final CRLF) */
  CK_TRAILER_LINE,
  CK_TRAILER_LF,
  CK_END_LF,     /* LF of the final CRLF */
  CK_DONE
};

/* Longest size line (digits and extensions) accepted, as nginx's limit. */
#define CK_MAX_LINE 4096

void mbd_chunked_init(mbd_chunked *c, uint64_t max_trailer) {
  memset(c, 0, sizeof(*c));
  c->max_trailer = max_trailer;
}

int mbd_chunked_feed(mbd_chunked *c, const char *in, size_t n, size_t *used, const char **data,
                     size_t *data_len, const char **why) {
  size_t i = 0;
  *data = NULL;
  *data_len = 0;
  *why = "";
  while (i < n) {
    unsigned char ch = (unsigned char)in[i];
    switch (c->state) {
    case CK_SIZE: {
      int v = hexval(ch);
      if (v >= 0) {
        if (c->digits >= 16 || c->left > (UINT64_MAX >> 4)) {
          *why = "chunk size too large";
          return -1;
        }
        c->left = (c->left << 4) | (uint64_t)v;
        c->digits++;
        i++;
        break;
      }
      if (c->digits == 0) {
        *why = "malformed chunk size";
        return -1;
      }
      if (c->left > (uint64_t)INT64_MAX) {
        *why = "chunk size too large";
        return -1;
      }
      c->state = CK_EXT;
      c->line = c->digits;
      c->ext = 0;
      break; /* the byte is looked at again as part of the extension */
    }
    case CK_EXT:
      if (ch == '\r') {
        c->state = CK_SIZE_LF;
      } else if (ch == '\n' || !value_byte(ch)) {
        *why = "malformed chunk size line";
        return -1;
      } else if (!c->ext) { /* BWS, then ';' starts the extensions */
        if (ch == ';')
          c->ext = 1;
        else if (ch != ' ' && ch != '\t') {
          *why = "malformed chunk size";
          return -1;
        }
      }
      if (++c->line > CK_MAX_LINE) {
        *why = "chunk size line too long";
        return -1;
      }
      i++;
      break;
    case CK_SIZE_LF:
      if (ch != '\n') {
        *why = "chunk size line without LF";
        return -1;
      }
      i++;
      c->digits = 0;
      c->line = 0;
      c->state = c->left > 0 ? CK_DATA : CK_TRAILER;
      break;
    case CK_DATA: {
      size_t k = n - i;
      if ((uint64_t)k > c->left)
        k = (size_t)c->left;
      *data = in + i;
      *data_len = k;
      c->left -= k;
      i += k;
      if (c->left == 0)
        c->state = CK_DATA_CR;
      *used = i;
      return 0; /* one data run per call */
    }
    case CK_DATA_CR:
      if (ch != '\r') {
        *why = "chunk data not followed by CRLF";
        return -1;
      }
      c->state = CK_DATA_LF;
      i++;
      break;
    case CK_DATA_LF:
      if (ch != '\n') {
        *why = "chunk data not followed by CRLF";
        return -1;
      }
      c->state = CK_SIZE;
      i++;
      break;
    case CK_TRAILER:
      if (ch == '\r') {
        c->state = CK_END_LF;
        i++;
        break;
      }
      if (ch == ' ' || ch == '\t' || !mbd_http_tchar(ch)) {
        *why = "malformed trailer field";
        return -1;
      }
      c->state = CK_TRAILER_LINE;
      c->line = 0;
      c->digits = 0; /* reused: 1 once the ':' was seen */
      break;
    case CK_TRAILER_LINE:
      if (ch == '\r') {
        if (!c->digits) {
          *why = "malformed trailer field";
          return -1;
        }
        c->state = CK_TRAILER_LF;
      } else if (!c->digits) {
        if (ch == ':')
          c->digits = 1;
        else if (!mbd_http_tchar(ch)) {
          *why = "malformed trailer field";
          return -1;
        }
      } else if (!value_byte(ch)) {
        *why = "control byte in a trailer field";
        return -1;
      }
      if (++c->trailer_bytes > c->max_trailer) {
        *why = "trailer too large";
        return -1;
      }
      i++;
      break;
    case CK_TRAILER_LF:
      if (ch != '\n') {
        *why = "trailer line without LF";
        return -1;
      }
      c->state = CK_TRAILER;
      i++;
      break;
    case CK_END_LF:
      if (ch != '\n') {
        *why = "chunked body without its final CRLF";
        return -1;
      }
      c->state = CK_DONE;
      *used = i + 1;
      return 1;
    default:
      *used = i;
      return 1;
    }
  }
  *used = i;
  return c->state == CK_DONE ? 1 : 0;
}
