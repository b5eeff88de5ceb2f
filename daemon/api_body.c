/*
 * api_body.c - the "model" field of an OpenAI-compatible request body.
 */
#include "api_body.h"

#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "modelbuf/modelbuf.h"

static const char *find_mem(const char *h, size_t hl, const char *n, size_t nl) {
  if (nl == 0 || hl < nl)
    return NULL;
  for (size_t i = 0; i + nl <= hl; i++)
    if (memcmp(h + i, n, nl) == 0)
      return h + i;
  return NULL;
}

/* 1 when the part headers hdr[0..n) say Content-Disposition: form-data
 * with the parameter name="model" (not filename="model", not name="models"). */
static int part_is_model(const char *hdr, size_t n) {
  const char *end = hdr + n, *line = hdr;
  while (line < end) {
    const char *le = find_mem(line, (size_t)(end - line), "\r\n", 2);
    if (le == NULL)
      le = end;
    if ((size_t)(le - line) > 20 && strncasecmp(line, "content-disposition:", 20) == 0) {
      const char *p = line + 20;
      /* disposition type, then ; key=value parameters */
      while (p < le && *p != ';')
        p++;
      while (p < le) {
        p++; /* the ';' */
        while (p < le && (*p == ' ' || *p == '\t'))
          p++;
        const char *k = p;
        while (p < le && *p != '=' && *p != ';')
          p++;
        const char *ke = p;
        while (ke > k && (ke[-1] == ' ' || ke[-1] == '\t'))
          ke--;
        const char *v = NULL, *ve = NULL;
        if (p < le && *p == '=') {
          p++;
          while (p < le && (*p == ' ' || *p == '\t'))
            p++;
          if (p < le && *p == '"') {
            v = ++p;
            while (p < le && *p != '"')
              p += *p == '\\' && p + 1 < le ? 2 : 1;
            ve = p < le ? p : le;
            if (p < le)
              p++;
          } else {
            v = p;
            while (p < le && *p != ';' && *p != ' ' && *p != '\t')
              p++;
            ve = p;
          }
          while (p < le && *p != ';')
            p++;
        }
        if (ke - k == 4 && strncasecmp(k, "name", 4) == 0 && v != NULL && ve - v == 5 &&
            memcmp(v, "model", 5) == 0)
          return 1;
      }
    }
    line = le + 2;
  }
  return 0;
}

static int multipart_model(const char *ct, const char *body, size_t len, char *out, size_t out_len,
                           char *err, size_t err_len) {
  const char *b = strcasestr(ct, "boundary=");
  char delim[128];
  size_t bl, dl;
  const char *p, *end = body + len;

  if (b == NULL) {
    snprintf(err, err_len, "multipart body without a boundary");
    return MB_EINVAL;
  }
  b += 9;
  if (*b == '"')
    b++;
  bl = strcspn(b, "\";, ");
  if (bl == 0 || bl > 70) {
    snprintf(err, err_len, "bad multipart boundary");
    return MB_EINVAL;
  }
  /* A delimiter is "--boundary" at the start of the body or of a line. */
  dl = (size_t)snprintf(delim, sizeof(delim), "\r\n--%.*s", (int)bl, b);
  if (len >= dl - 2 && memcmp(body, delim + 2, dl - 2) == 0)
    p = body + dl - 2;
  else if ((p = find_mem(body, len, delim, dl)) != NULL)
    p += dl;
  while (p != NULL && p < end) {
    /* p: just after a delimiter; "--" ends the body, else CRLF, headers. */
    if (end - p >= 2 && p[0] == '-' && p[1] == '-')
      break;
    const char *hdr = find_mem(p, (size_t)(end - p), "\r\n", 2);
    if (hdr == NULL)
      break;
    hdr += 2;
    const char *hend = find_mem(hdr, (size_t)(end - hdr), "\r\n\r\n", 4);
    if (hend == NULL)
      break;
    const char *v = hend + 4;
    const char *next = find_mem(v, (size_t)(end - v), delim, dl);
    if (part_is_model(hdr, (size_t)(hend - hdr) + 2)) {
      const char *vend = next ? next : end;
      size_t vl = (size_t)(vend - v);
      if (vl == 0 || vl >= out_len || memchr(v, '\0', vl) != NULL || memchr(v, '\r', vl) ||
          memchr(v, '\n', vl)) {
        snprintf(err, err_len, "bad \"model\" field");
        return MB_EINVAL;
      }
      memcpy(out, v, vl);
      out[vl] = '\0';
      return 0;
    }
    p = next ? next + dl : NULL;
  }
  snprintf(err, err_len, "multipart body has no \"model\" field");
  return MB_EINVAL;
}

int mbd_body_model(const char *ct, const char *body, size_t len, char *out, size_t out_len,
                   char *err, size_t err_len) {
  json_error_t je;
  json_t *root, *m;
  int rc = 0;

  if (ct != NULL && strncasecmp(ct, "multipart/form-data", 19) == 0)
    return multipart_model(ct, body, len, out, out_len, err, err_len);
  root = json_loadb(body != NULL ? body : "", len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &je);
  if (root == NULL) {
    snprintf(err, err_len, "malformed JSON: %s (line %d, column %d)", je.text, je.line, je.column);
    return MB_EINVAL;
  }
  m = json_is_object(root) ? json_object_get(root, "model") : NULL;
  if (!json_is_string(m) || json_string_length(m) == 0 || json_string_length(m) >= out_len ||
      strlen(json_string_value(m)) != json_string_length(m)) {
    snprintf(err, err_len, "the body needs a \"model\" string");
    rc = MB_EINVAL;
  } else {
    snprintf(out, out_len, "%s", json_string_value(m));
  }
  json_decref(root);
  return rc;
}
