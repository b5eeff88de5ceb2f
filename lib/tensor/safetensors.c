/*
 * safetensors.c - the safetensors header parser.
 *
 * A safetensors file is an 8-byte little-endian header length N, N bytes of
 * JSON, then the data section. The JSON is an object mapping each tensor
 * name to {"dtype", "shape", "data_offsets": [begin, end)} (offsets
 * relative to the data section), plus an optional "__metadata__" object of
 * string to string. Checks, in order: the length (non-zero, at most
 * MB_SAFETENSORS_MAX_HEADER, within the file), the JSON (strict), each
 * entry (known fields only, known dtype, at most MB_TENSOR_MAX_DIMS
 * integer dimensions, dtype size x shape == end - begin without overflow,
 * end within the data section), then mb__tf_finish (duplicate names,
 * overlapping data). Gaps between tensors are allowed.
 */
#include <string.h>

#include "alloc.h"
#include "json.h"
#include "tensor_file.h"
#include "tensor_parse.h"

typedef struct st_parser {
  const mb__perr *pe;
  mb__json doc;
  mb_tensor_file *f;
  uint64_t data_size; /* bytes after the header */
} st_parser;

static int parse_metadata(st_parser *sp, uint32_t obj) {
  const mb__json *d = &sp->doc;
  if (d->nodes[obj].type != MB__JSON_OBJECT)
    return mb__tf_fail(sp->pe, MB_EFORMAT, "__metadata__ is not an object");
  uint32_t k = d->nodes[obj].child;
  while (k != 0) {
    uint32_t v = d->nodes[k].next;
    char q[MB__QUOTE_LEN];
    const char *key = mb__json_str(d, k);
    if (d->nodes[v].type != MB__JSON_STRING)
      return mb__tf_fail(sp->pe, MB_EFORMAT, "__metadata__ value of '%s' is not a string",
                         mb__quote(key, d->nodes[k].len, q));
    mb__meta m = {0};
    m.type = MB_META_STRING;
    if (mb__tf_add_meta(sp->f, key, d->nodes[k].len, &m, mb__json_str(d, v), d->nodes[v].len))
      return MB_ENOMEM;
    k = d->nodes[v].next;
  }
  return 0;
}

/* A JSON array of non-negative integers into out[0..max); its length in *n. */
static int int_array(const mb__json *d, uint32_t arr, uint64_t *out, size_t max, size_t *n,
                     size_t *bad) {
  uint32_t e = d->nodes[arr].child;
  *n = 0;
  *bad = SIZE_MAX;
  if (d->nodes[arr].count > max)
    return -1;
  for (; e != 0; e = d->nodes[e].next) {
    if (mb__json_u64(d, e, &out[*n]) != 0) {
      *bad = *n;
      return -1;
    }
    (*n)++;
  }
  return 0;
}

/* Does STRING node k hold exactly lit (no embedded NUL tricks)? */
static int key_is(const mb__json *d, uint32_t k, const char *lit) {
  return d->nodes[k].len == strlen(lit) && strcmp(mb__json_str(d, k), lit) == 0;
}

static int parse_tensor(st_parser *sp, uint32_t key, uint32_t obj) {
  const mb__json *d = &sp->doc;
  const mb__perr *pe = sp->pe;
  const char *name = mb__json_str(d, key);
  size_t name_len = d->nodes[key].len;
  char q[MB__QUOTE_LEN], q2[MB__QUOTE_LEN], shape_s[160];
  uint32_t dtype_n = 0, shape_n = 0, offs_n = 0;
  uint64_t shape[MB_TENSOR_MAX_DIMS], offs[2], bytes;
  size_t ndim, n, bad;
  char why[128];

  mb__quote(name, name_len, q);
  if (name_len == 0)
    return mb__tf_fail(pe, MB_EFORMAT, "empty tensor name");
  if (strlen(name) != name_len)
    return mb__tf_fail(pe, MB_EFORMAT, "tensor name '%s' contains a NUL character", q);
  if (d->nodes[obj].type != MB__JSON_OBJECT)
    return mb__tf_fail(pe, MB_EFORMAT, "tensor '%s' is not an object", q);

  for (uint32_t k = d->nodes[obj].child; k != 0; k = d->nodes[d->nodes[k].next].next) {
    const char *field = mb__json_str(d, k);
    uint32_t v = d->nodes[k].next, *slot;
    if (key_is(d, k, "dtype"))
      slot = &dtype_n;
    else if (key_is(d, k, "shape"))
      slot = &shape_n;
    else if (key_is(d, k, "data_offsets"))
      slot = &offs_n;
    else
      return mb__tf_fail(pe, MB_EFORMAT, "tensor '%s' has unknown field '%s'", q,
                         mb__quote(field, d->nodes[k].len, q2));
    if (*slot != 0)
      return mb__tf_fail(pe, MB_EFORMAT, "tensor '%s' has field '%s' twice", q, field);
    *slot = v;
  }
  if (dtype_n == 0 || shape_n == 0 || offs_n == 0)
    return mb__tf_fail(pe, MB_EFORMAT, "tensor '%s' has no %s", q,
                       dtype_n == 0 ? "dtype" : shape_n == 0 ? "shape" : "data_offsets");

  if (d->nodes[dtype_n].type != MB__JSON_STRING)
    return mb__tf_fail(pe, MB_EFORMAT, "tensor '%s' dtype is not a string", q);
  mb_dtype dt = mb__dtype_from_safetensors(mb__json_str(d, dtype_n));
  if (dt == MB_DTYPE_UNKNOWN)
    return mb__tf_fail(pe, MB_EFORMAT, "tensor '%s' has unknown dtype '%s'", q,
                       mb__quote(mb__json_str(d, dtype_n), d->nodes[dtype_n].len, q2));

  if (d->nodes[shape_n].type != MB__JSON_ARRAY)
    return mb__tf_fail(pe, MB_EFORMAT, "tensor '%s' shape is not an array", q);
  if (d->nodes[shape_n].count > MB_TENSOR_MAX_DIMS)
    return mb__tf_fail(pe, MB_EFORMAT, "tensor '%s' has %u dimensions (at most %d supported)",
                       q, d->nodes[shape_n].count, MB_TENSOR_MAX_DIMS);
  if (int_array(d, shape_n, shape, MB_TENSOR_MAX_DIMS, &ndim, &bad) != 0)
    return mb__tf_fail(pe, MB_EFORMAT,
                       "tensor '%s' shape element %zu is not a non-negative 64-bit integer", q,
                       bad);

  if (d->nodes[offs_n].type != MB__JSON_ARRAY || d->nodes[offs_n].count != 2 ||
      int_array(d, offs_n, offs, 2, &n, &bad) != 0)
    return mb__tf_fail(pe, MB_EFORMAT,
                       "tensor '%s' data_offsets is not a pair of non-negative 64-bit integers",
                       q);
  if (offs[1] < offs[0])
    return mb__tf_fail(pe, MB_EFORMAT, "tensor '%s' data_offsets [%llu, %llu) end before they begin",
                       q, (unsigned long long)offs[0], (unsigned long long)offs[1]);

  /* Safetensors shapes are row-major: the product of all dimensions times
   * the element size, so the shape order does not matter here. */
  mb__fmt_shape((int)ndim, shape, shape_s, sizeof shape_s);
  if (mb__dtype_bytes(dt, (int)ndim, shape, &bytes, why, sizeof why) != 0)
    return mb__tf_fail(pe, MB_EFORMAT, "tensor '%s' dtype %s x shape %s: %s", q,
                       mb_dtype_name(dt), shape_s, why);
  if (offs[1] - offs[0] != bytes)
    return mb__tf_fail(pe, MB_EFORMAT,
                       "tensor '%s' data_offsets [%llu, %llu) do not match dtype %s x shape %s = "
                       "%llu bytes",
                       q, (unsigned long long)offs[0], (unsigned long long)offs[1],
                       mb_dtype_name(dt), shape_s, (unsigned long long)bytes);
  if (offs[1] > sp->data_size)
    return mb__tf_fail(pe, MB_EFORMAT,
                       "tensor '%s' data_offsets [%llu, %llu) run past the end of the data "
                       "section (%llu bytes; file truncated?)",
                       q, (unsigned long long)offs[0], (unsigned long long)offs[1],
                       (unsigned long long)sp->data_size);
  if (mb__tf_add_tensor(sp->f, name, name_len, dt, (int)ndim, shape, offs[0], bytes) != 0)
    return MB_ENOMEM;
  return 0;
}

int mb__safetensors_parse(const uint8_t *buf, size_t len, uint64_t file_size,
                          const mb__perr *pe, mb_tensor_file **out) {
  st_parser sp = {pe, {0}, NULL, 0};
  char msg[200];
  int rc, seen_meta = 0;

  *out = NULL;
  if (file_size < 8)
    return mb__tf_fail(pe, MB_EFORMAT,
                       "file is %llu bytes, too short for the 8-byte header length",
                       (unsigned long long)file_size);
  if (len < 8)
    return mb__tf_fail(pe, MB_EFORMAT, "header continues past the %zu bytes given", len);
  uint64_t n = 0;
  for (int i = 7; i >= 0; i--)
    n = n << 8 | buf[i];
  if (n == 0)
    return mb__tf_fail(pe, MB_EFORMAT, "header length is 0");
  if (n > MB_SAFETENSORS_MAX_HEADER)
    return mb__tf_fail(pe, MB_EFORMAT, "header length %llu exceeds the limit of %u bytes",
                       (unsigned long long)n, MB_SAFETENSORS_MAX_HEADER);
  if (n > file_size - 8)
    return mb__tf_fail(pe, MB_EFORMAT,
                       "header length %llu runs past the end of the file (%llu bytes; "
                       "truncated header?)",
                       (unsigned long long)n, (unsigned long long)file_size);
  if (n > len - 8)
    return mb__tf_fail(pe, MB_EFORMAT, "header continues past the %zu bytes given", len);
  sp.data_size = file_size - 8 - n;

  rc = mb__json_parse(&sp.doc, (const char *)buf + 8, (size_t)n, msg, sizeof msg);
  if (rc == MB_ENOMEM)
    goto out;
  if (rc != 0) {
    rc = mb__tf_fail(pe, MB_EFORMAT, "header is not valid JSON: %s", msg);
    goto out;
  }
  if (sp.doc.nodes[0].type != MB__JSON_OBJECT) {
    rc = mb__tf_fail(pe, MB_EFORMAT, "header is not a JSON object");
    goto out;
  }
  sp.f = mb__tf_new(pe->name, MB_TENSOR_FORMAT_SAFETENSORS);
  if (sp.f == NULL) {
    rc = MB_ENOMEM;
    goto out;
  }
  sp.f->file_size = file_size;
  sp.f->data_offset = 8 + n;

  for (uint32_t k = sp.doc.nodes[0].child; k != 0; k = sp.doc.nodes[sp.doc.nodes[k].next].next) {
    uint32_t v = sp.doc.nodes[k].next;
    if (key_is(&sp.doc, k, "__metadata__")) {
      if (seen_meta++) {
        rc = mb__tf_fail(pe, MB_EFORMAT, "__metadata__ appears twice");
        goto out;
      }
      rc = parse_metadata(&sp, v);
    } else {
      rc = parse_tensor(&sp, k, v);
    }
    if (rc != 0)
      goto out;
  }
  rc = mb__tf_finish(sp.f, pe);
  if (rc != 0)
    goto out;
  *out = sp.f;
  sp.f = NULL;
out:
  if (rc == MB_ENOMEM)
    mb__tf_fail(pe, MB_ENOMEM, "out of memory while parsing the header");
  mb_tensor_file_close(sp.f);
  mb__json_free(&sp.doc);
  return rc;
}

int mb_safetensors_parse(const void *buf, size_t len, uint64_t file_size, const char *name,
                         mb_tensor_file **out, char *err, size_t err_len) {
  mb__perr pe = {name != NULL ? name : "<memory>", err, err_len};
  if (out != NULL)
    *out = NULL;
  if (out == NULL || (buf == NULL && len > 0) || len > file_size) {
    mb__set_err(err, err_len, "invalid argument");
    return MB_EINVAL;
  }
  return mb__safetensors_parse(buf, len, file_size, &pe, out);
}
