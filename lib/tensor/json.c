/*
 * json.c - strict JSON for safetensors headers (see json.h).
 *
 * Recursive descent with an explicit depth bound, so hostile nesting cannot
 * exhaust the stack. Strict means: no trailing commas, no comments, no
 * leading zeros, no control characters in strings, valid UTF-8 only (no
 * overlong forms, no surrogates), paired \u surrogates, only JSON
 * whitespace, and nothing but whitespace after the root value.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "modelbuf/modelbuf.h"
#include "alloc.h"
#include "json.h"

typedef struct parser {
  mb__json *doc;
  const unsigned char *s;
  size_t len, pos;
  char *msg;
  size_t msg_len;
  int rc; /* first error, sticky */
} parser;

__attribute__((format(printf, 2, 3))) static int fail(parser *p, const char *fmt, ...) {
  char why[160];
  va_list ap;
  if (p->rc != 0)
    return p->rc;
  va_start(ap, fmt);
  vsnprintf(why, sizeof why, fmt, ap);
  va_end(ap);
  mb__set_err(p->msg, p->msg_len, "byte %zu: %s", p->pos, why);
  p->rc = MB_EFORMAT;
  return p->rc;
}

static int oom(parser *p) {
  mb__set_err(p->msg, p->msg_len, "out of memory");
  p->rc = MB_ENOMEM;
  return p->rc;
}

static void skip_ws(parser *p) {
  while (p->pos < p->len) {
    unsigned char c = p->s[p->pos];
    if (c != ' ' && c != '\t' && c != '\n' && c != '\r')
      break;
    p->pos++;
  }
}

/* A new node; its index, or 0 on failure (0 is the root, never a new child). */
static uint32_t new_node(parser *p, uint32_t type, int *ok) {
  mb__json *d = p->doc;
  if (d->n == d->cap) {
    size_t cap = d->cap ? d->cap * 2 : 64;
    if (cap > UINT32_MAX) {
      if (d->n >= UINT32_MAX) {
        *ok = 0;
        fail(p, "too many values");
        return 0;
      }
      cap = UINT32_MAX;
    }
    mb__json_node *n = mb__realloc(d->nodes, cap * sizeof *n);
    if (n == NULL) {
      *ok = 0;
      oom(p);
      return 0;
    }
    d->nodes = n;
    d->cap = cap;
  }
  memset(&d->nodes[d->n], 0, sizeof d->nodes[0]);
  d->nodes[d->n].type = type;
  *ok = 1;
  return (uint32_t)d->n++;
}

static int put_bytes(parser *p, const void *b, size_t n) {
  mb__json *d = p->doc;
  if (d->slen + n + 1 > d->scap) {
    size_t cap = d->scap ? d->scap : 256;
    while (cap < d->slen + n + 1)
      cap *= 2;
    char *s = mb__realloc(d->strs, cap);
    if (s == NULL)
      return oom(p);
    d->strs = s;
    d->scap = cap;
  }
  memcpy(d->strs + d->slen, b, n);
  d->slen += n;
  return 0;
}

static int put_utf8(parser *p, uint32_t cp) {
  unsigned char b[4];
  size_t n;
  if (cp < 0x80) {
    b[0] = (unsigned char)cp;
    n = 1;
  } else if (cp < 0x800) {
    b[0] = (unsigned char)(0xC0 | cp >> 6);
    b[1] = (unsigned char)(0x80 | (cp & 0x3F));
    n = 2;
  } else if (cp < 0x10000) {
    b[0] = (unsigned char)(0xE0 | cp >> 12);
    b[1] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
    b[2] = (unsigned char)(0x80 | (cp & 0x3F));
    n = 3;
  } else {
    b[0] = (unsigned char)(0xF0 | cp >> 18);
    b[1] = (unsigned char)(0x80 | (cp >> 12 & 0x3F));
    b[2] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
    b[3] = (unsigned char)(0x80 | (cp & 0x3F));
    n = 4;
  }
  return put_bytes(p, b, n);
}

static int hex4(parser *p, uint32_t *out) {
  uint32_t v = 0;
  if (p->len - p->pos < 4)
    return fail(p, "truncated \\u escape");
  for (int i = 0; i < 4; i++) {
    unsigned char c = p->s[p->pos + (size_t)i];
    v <<= 4;
    if (c >= '0' && c <= '9')
      v |= (uint32_t)(c - '0');
    else if (c >= 'a' && c <= 'f')
      v |= (uint32_t)(c - 'a' + 10);
    else if (c >= 'A' && c <= 'F')
      v |= (uint32_t)(c - 'A' + 10);
    else
      return fail(p, "bad hex digit in \\u escape");
  }
  p->pos += 4;
  *out = v;
  return 0;
}

/* Length of the valid UTF-8 sequence at s[0..n), 0 if invalid. */
static size_t utf8_len(const unsigned char *s, size_t n) {
  unsigned char c = s[0];
  if (c >= 0xC2 && c <= 0xDF)
    return n >= 2 && (s[1] & 0xC0) == 0x80 ? 2 : 0;
  if (c >= 0xE0 && c <= 0xEF) {
    if (n < 3 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80)
      return 0;
    if (c == 0xE0 && s[1] < 0xA0)
      return 0; /* overlong */
    if (c == 0xED && s[1] >= 0xA0)
      return 0; /* surrogate */
    return 3;
  }
  if (c >= 0xF0 && c <= 0xF4) {
    if (n < 4 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80 || (s[3] & 0xC0) != 0x80)
      return 0;
    if (c == 0xF0 && s[1] < 0x90)
      return 0; /* overlong */
    if (c == 0xF4 && s[1] >= 0x90)
      return 0; /* beyond U+10FFFF */
    return 4;
  }
  return 0;
}

static int parse_string(parser *p, uint32_t node) {
  size_t start = p->doc->slen;
  p->pos++; /* the opening quote */
  for (;;) {
    size_t run = p->pos;
    /* Copy runs of plain bytes at once. */
    while (p->pos < p->len && p->s[p->pos] != '"' && p->s[p->pos] != '\\' &&
           p->s[p->pos] >= 0x20 && p->s[p->pos] < 0x80)
      p->pos++;
    if (p->pos > run && put_bytes(p, p->s + run, p->pos - run) != 0)
      return p->rc;
    if (p->pos >= p->len)
      return fail(p, "unterminated string");
    unsigned char c = p->s[p->pos];
    if (c == '"') {
      p->pos++;
      break;
    }
    if (c < 0x20)
      return fail(p, "control character 0x%02x in string", c);
    if (c >= 0x80) {
      size_t n = utf8_len(p->s + p->pos, p->len - p->pos);
      if (n == 0)
        return fail(p, "invalid UTF-8 in string");
      if (put_bytes(p, p->s + p->pos, n) != 0)
        return p->rc;
      p->pos += n;
      continue;
    }
    /* a backslash */
    if (p->len - p->pos < 2)
      return fail(p, "unterminated escape");
    char e = (char)p->s[p->pos + 1];
    const char *from = "\"\\/bfnrt", *to = "\"\\/\b\f\n\r\t";
    const char *k = e != '\0' ? strchr(from, e) : NULL;
    if (k != NULL) {
      p->pos += 2;
      if (put_bytes(p, &to[k - from], 1) != 0)
        return p->rc;
      continue;
    }
    if (e != 'u')
      return fail(p, "bad escape \\%c", e >= 0x20 && e < 0x7f ? e : '?');
    p->pos += 2;
    uint32_t cp, lo;
    if (hex4(p, &cp) != 0)
      return p->rc;
    if (cp >= 0xDC00 && cp <= 0xDFFF)
      return fail(p, "unpaired low surrogate \\u%04x", cp);
    if (cp >= 0xD800 && cp <= 0xDBFF) {
      if (p->len - p->pos < 2 || p->s[p->pos] != '\\' || p->s[p->pos + 1] != 'u')
        return fail(p, "unpaired high surrogate \\u%04x", cp);
      p->pos += 2;
      if (hex4(p, &lo) != 0)
        return p->rc;
      if (lo < 0xDC00 || lo > 0xDFFF)
        return fail(p, "bad low surrogate \\u%04x", lo);
      cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
    }
    if (put_utf8(p, cp) != 0)
      return p->rc;
  }
  size_t n = p->doc->slen - start;
  if (put_bytes(p, "", 1) != 0) /* the terminating NUL */
    return p->rc;
  p->doc->nodes[node].off = (uint32_t)start;
  p->doc->nodes[node].len = (uint32_t)n;
  return 0;
}

static int is_digit(parser *p) {
  return p->pos < p->len && p->s[p->pos] >= '0' && p->s[p->pos] <= '9';
}

static int parse_number(parser *p, uint32_t node) {
  size_t start = p->pos;
  if (p->s[p->pos] == '-')
    p->pos++;
  if (!is_digit(p))
    return fail(p, "bad number");
  if (p->s[p->pos] == '0') {
    p->pos++;
    if (is_digit(p))
      return fail(p, "leading zero in number");
  } else {
    while (is_digit(p))
      p->pos++;
  }
  if (p->pos < p->len && p->s[p->pos] == '.') {
    p->pos++;
    if (!is_digit(p))
      return fail(p, "bad fraction in number");
    while (is_digit(p))
      p->pos++;
  }
  if (p->pos < p->len && (p->s[p->pos] == 'e' || p->s[p->pos] == 'E')) {
    p->pos++;
    if (p->pos < p->len && (p->s[p->pos] == '+' || p->s[p->pos] == '-'))
      p->pos++;
    if (!is_digit(p))
      return fail(p, "bad exponent in number");
    while (is_digit(p))
      p->pos++;
  }
  p->doc->nodes[node].off = (uint32_t)start;
  p->doc->nodes[node].len = (uint32_t)(p->pos - start);
  return 0;
}

static int parse_literal(parser *p, const char *word) {
  size_t n = strlen(word);
  if (p->len - p->pos < n || memcmp(p->s + p->pos, word, n) != 0)
    return fail(p, "unexpected character");
  p->pos += n;
  return 0;
}

static int parse_value(parser *p, int depth, uint32_t *out);

/* Links child after *last (or as first child of parent). */
static void link_child(parser *p, uint32_t parent, uint32_t *last, uint32_t child) {
  if (*last == 0)
    p->doc->nodes[parent].child = child;
  else
    p->doc->nodes[*last].next = child;
  *last = child;
}

static int parse_container(parser *p, int depth, uint32_t node, int object) {
  char close = object ? '}' : ']';
  uint32_t last = 0, count = 0, child;
  int ok;
  if (depth >= MB__JSON_MAX_DEPTH)
    return fail(p, "nesting deeper than %d", MB__JSON_MAX_DEPTH);
  p->pos++; /* the opening bracket */
  skip_ws(p);
  if (p->pos < p->len && p->s[p->pos] == close) {
    p->pos++;
    return 0;
  }
  for (;;) {
    skip_ws(p);
    if (object) {
      if (p->pos >= p->len || p->s[p->pos] != '"')
        return fail(p, "expected a string key");
      child = new_node(p, MB__JSON_STRING, &ok);
      if (!ok || parse_string(p, child) != 0)
        return p->rc;
      link_child(p, node, &last, child);
      skip_ws(p);
      if (p->pos >= p->len || p->s[p->pos] != ':')
        return fail(p, "expected ':'");
      p->pos++;
      skip_ws(p);
    }
    if (parse_value(p, depth + 1, &child) != 0)
      return p->rc;
    link_child(p, node, &last, child);
    count++;
    skip_ws(p);
    if (p->pos >= p->len)
      return fail(p, "unterminated %s", object ? "object" : "array");
    if (p->s[p->pos] == ',') {
      p->pos++;
      continue;
    }
    if (p->s[p->pos] == close) {
      p->pos++;
      break;
    }
    return fail(p, "expected ',' or '%c'", close);
  }
  p->doc->nodes[node].count = count;
  return 0;
}

static int parse_value(parser *p, int depth, uint32_t *out) {
  int ok;
  uint32_t node = 0;
  skip_ws(p);
  if (p->pos >= p->len)
    return fail(p, "unexpected end of input");
  switch (p->s[p->pos]) {
  case '{':
    node = new_node(p, MB__JSON_OBJECT, &ok);
    if (ok)
      parse_container(p, depth, node, 1);
    break;
  case '[':
    node = new_node(p, MB__JSON_ARRAY, &ok);
    if (ok)
      parse_container(p, depth, node, 0);
    break;
  case '"':
    node = new_node(p, MB__JSON_STRING, &ok);
    if (ok)
      parse_string(p, node);
    break;
  case 't':
    node = new_node(p, MB__JSON_TRUE, &ok);
    if (ok)
      parse_literal(p, "true");
    break;
  case 'f':
    node = new_node(p, MB__JSON_FALSE, &ok);
    if (ok)
      parse_literal(p, "false");
    break;
  case 'n':
    node = new_node(p, MB__JSON_NULL, &ok);
    if (ok)
      parse_literal(p, "null");
    break;
  default:
    if (p->s[p->pos] == '-' || (p->s[p->pos] >= '0' && p->s[p->pos] <= '9')) {
      node = new_node(p, MB__JSON_NUMBER, &ok);
      if (ok)
        parse_number(p, node);
    } else {
      return fail(p, "unexpected character");
    }
  }
  *out = node;
  return p->rc;
}

int mb__json_parse(mb__json *doc, const char *src, size_t len, char *msg, size_t msg_len) {
  parser p = {doc, (const unsigned char *)src, len, 0, msg, msg_len, 0};
  uint32_t root;
  doc->src = src;
  if (len >= UINT32_MAX) {
    mb__set_err(msg, msg_len, "document too large");
    return MB_EFORMAT;
  }
  if (parse_value(&p, 0, &root) != 0)
    return p.rc;
  skip_ws(&p);
  if (p.pos != len)
    return fail(&p, "unexpected data after the JSON value");
  return 0;
}

void mb__json_free(mb__json *doc) {
  mb__free(doc->nodes);
  mb__free(doc->strs);
  memset(doc, 0, sizeof *doc);
}

const char *mb__json_str(const mb__json *doc, uint32_t node) {
  return doc->strs + doc->nodes[node].off;
}

int mb__json_u64(const mb__json *doc, uint32_t node, uint64_t *out) {
  const mb__json_node *n = &doc->nodes[node];
  uint64_t v = 0;
  if (n->type != MB__JSON_NUMBER)
    return -1;
  const char *s = doc->src + n->off;
  for (uint32_t i = 0; i < n->len; i++) {
    if (s[i] < '0' || s[i] > '9')
      return -1;
    unsigned d = (unsigned)(s[i] - '0');
    if (v > (UINT64_MAX - d) / 10)
      return -1;
    v = v * 10 + d;
  }
  *out = v;
  return 0;
}
