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

static int multipart_model(const char *ct, const char *body, size_t len, char *out, size_t out_len,
                           char *err, size_t err_len) {
  const char *b = strstr(ct, "boundary=");
  char delim[128];
  size_t bl;
  const char *p, *end = body + len;

  if (b == NULL) {
    snprintf(err, err_len, "multipart body without a boundary");
    return MB_EINVAL;
  }
  b += 9;
  if (*b == '"')
    b++;
  bl = strcspn(b, "\";, ");
  if (bl == 0 || bl > 100) {
    snprintf(err, err_len, "bad multipart boundary");
    return MB_EINVAL;
  }
  snprintf(delim, sizeof(delim), "--%.*s", (int)bl, b);
  p = body;
  while ((p = find_mem(p, (size_t)(end - p), delim, strlen(delim))) != NULL) {
    const char *hdr = p + strlen(delim), *hend, *vend;
    hend = find_mem(hdr, (size_t)(end - hdr), "\r\n\r\n", 4);
    if (hend == NULL)
      break;
    const char *nm = find_mem(hdr, (size_t)(hend - hdr), "name=\"model\"", 12);
    if (nm != NULL) {
      const char *v = hend + 4;
      vend = find_mem(v, (size_t)(end - v), "\r\n", 2);
      if (vend == NULL)
        vend = end;
      size_t vl = (size_t)(vend - v);
      if (vl == 0 || vl >= out_len || memchr(v, '\0', vl) != NULL) {
        snprintf(err, err_len, "bad \"model\" field");
        return MB_EINVAL;
      }
      memcpy(out, v, vl);
      out[vl] = '\0';
      return 0;
    }
    p = hend;
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
