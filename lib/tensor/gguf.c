/*
 * gguf.c - the GGUF (v2, v3; little-endian) header parser.
 *
 * Layout: "GGUF", u32 version, u64 tensor_count, u64 kv_count, the
 * key/values (u64-length string key, u32 type, value), the tensor infos
 * (name, u32 n_dims, u64 ne[n_dims], u32 ggml type, u64 offset relative to
 * the data section), padding to general.alignment (default 32), the data.
 *
 * Every read goes through need(), which bounds it by the bytes given and
 * the file size, so no length field, however large, can make the parser
 * read out of bounds or allocate more than the header itself justifies:
 * counts are checked against the smallest encoding of what they count
 * before any loop, arrays are walked without being stored, and nested
 * arrays are limited to GGUF_MAX_ARRAY_DEPTH.
 */
#include <stdio.h>
#include <string.h>

#include "alloc.h"
#include "tensor_file.h"
#include "tensor_parse.h"

#define GGUF_DEFAULT_ALIGNMENT 32u
#define GGUF_MAX_DIMS 4
#define GGUF_MAX_ARRAY_DEPTH 4

/* Smallest encodings: a key/value (u64 key length, 1-byte key, u32 type,
 * 1-byte value) and a tensor info (u64 name length, 1-byte name, u32
 * n_dims, u32 type, u64 offset). */
#define GGUF_MIN_KV 14u
#define GGUF_MIN_TENSOR 25u

enum gguf_type {
  GGUF_UINT8 = 0,
  GGUF_INT8,
  GGUF_UINT16,
  GGUF_INT16,
  GGUF_UINT32,
  GGUF_INT32,
  GGUF_FLOAT32,
  GGUF_BOOL,
  GGUF_STRING,
  GGUF_ARRAY,
  GGUF_UINT64,
  GGUF_INT64,
  GGUF_FLOAT64,
  GGUF_TYPE_COUNT
};

static const char *const type_names[GGUF_TYPE_COUNT] = {
  "uint8", "int8", "uint16", "int16", "uint32", "int32", "float32",
  "bool", "string", "array", "uint64", "int64", "float64",
};

/* Byte size of a fixed-size value type; 0 for string and array. */
static uint64_t fixed_size(uint32_t t) {
  switch (t) {
  case GGUF_UINT8: case GGUF_INT8: case GGUF_BOOL: return 1;
  case GGUF_UINT16: case GGUF_INT16: return 2;
  case GGUF_UINT32: case GGUF_INT32: case GGUF_FLOAT32: return 4;
  case GGUF_UINT64: case GGUF_INT64: case GGUF_FLOAT64: return 8;
  default: return 0;
  }
}

typedef struct gg {
  const uint8_t *buf;
  size_t len;
  uint64_t file_size;
  size_t pos;
  const mb__perr *pe;
  int *need_more;
  mb_tensor_file *f;
} gg;

/* Are n more bytes at pos available? Otherwise fails, saying whether the
 * file or only the buffer is too short. */
static int need(gg *g, uint64_t n, const char *what) {
  if (n <= g->len - g->pos)
    return 0;
  if (n <= g->file_size - g->pos && g->len < g->file_size) {
    if (g->need_more != NULL)
      *g->need_more = 1;
    return mb__tf_fail(g->pe, MB_EFORMAT, "header continues past the %zu bytes given", g->len);
  }
  return mb__tf_fail(g->pe, MB_EFORMAT,
                     "truncated: %s at offset %zu needs %llu bytes, the file has %llu left",
                     what, g->pos, (unsigned long long)n,
                     (unsigned long long)(g->file_size - g->pos));
}

static uint64_t le(const uint8_t *p, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; i--)
    v = v << 8 | p[i];
  return v;
}

static int rd_u32(gg *g, uint32_t *v, const char *what) {
  if (need(g, 4, what) != 0)
    return MB_EFORMAT;
  *v = (uint32_t)le(g->buf + g->pos, 4);
  g->pos += 4;
  return 0;
}

static int rd_u64(gg *g, uint64_t *v, const char *what) {
  if (need(g, 8, what) != 0)
    return MB_EFORMAT;
  *v = le(g->buf + g->pos, 8);
  g->pos += 8;
  return 0;
}

/* A u64-length string; *s points into the buffer (not NUL-terminated). */
static int rd_str(gg *g, const char **s, uint64_t *n, const char *what) {
  uint64_t len;
  if (rd_u64(g, &len, what) != 0)
    return MB_EFORMAT;
  if (len > g->file_size - g->pos)
    return mb__tf_fail(g->pe, MB_EFORMAT,
                       "%s length %llu at offset %zu runs past the end of the file", what,
                       (unsigned long long)len, g->pos - 8);
  if (need(g, len, what) != 0)
    return MB_EFORMAT;
  *s = (const char *)g->buf + g->pos;
  *n = len;
  g->pos += (size_t)len;
  return 0;
}

/* Walks one value of type t (depth counts enclosing arrays). When m is not
 * NULL, the scalar (or string, or array length) is stored there. */
static int rd_value(gg *g, uint32_t t, int depth, const char *key, mb__meta *m, const char **str,
                    uint64_t *str_len) {
  uint64_t sz = fixed_size(t);
  if (sz != 0) {
    if (need(g, sz, key) != 0)
      return MB_EFORMAT;
    uint64_t v = le(g->buf + g->pos, (int)sz);
    if (t == GGUF_BOOL && v > 1)
      return mb__tf_fail(g->pe, MB_EFORMAT, "key '%s': bool value %llu is not 0 or 1", key,
                         (unsigned long long)v);
    if (m != NULL) {
      switch (t) {
      case GGUF_UINT8: case GGUF_UINT16: case GGUF_UINT32: case GGUF_UINT64:
        m->type = MB_META_UINT;
        m->u = v;
        break;
      case GGUF_INT8: m->type = MB_META_INT; m->i = (int8_t)v; break;
      case GGUF_INT16: m->type = MB_META_INT; m->i = (int16_t)v; break;
      case GGUF_INT32: m->type = MB_META_INT; m->i = (int32_t)v; break;
      case GGUF_INT64: m->type = MB_META_INT; m->i = (int64_t)v; break;
      case GGUF_FLOAT32: {
        uint32_t b = (uint32_t)v;
        float fl;
        memcpy(&fl, &b, sizeof fl);
        m->type = MB_META_FLOAT;
        m->f = fl;
        break;
      }
      case GGUF_FLOAT64:
        m->type = MB_META_FLOAT;
        memcpy(&m->f, &v, sizeof m->f);
        break;
      default: /* GGUF_BOOL */
        m->type = MB_META_BOOL;
        m->u = v;
      }
    }
    g->pos += (size_t)sz;
    return 0;
  }
  if (t == GGUF_STRING) {
    const char *s;
    uint64_t n;
    char what[MB__QUOTE_LEN + 32];
    snprintf(what, sizeof what, "string value of key '%s'", key);
    if (rd_str(g, &s, &n, what) != 0)
      return MB_EFORMAT;
    if (m != NULL) {
      m->type = MB_META_STRING;
      *str = s;
      *str_len = n;
    }
    return 0;
  }
  if (t != GGUF_ARRAY)
    return mb__tf_fail(g->pe, MB_EFORMAT, "key '%s': unknown value type %u", key, t);

  uint32_t et;
  uint64_t count;
  if (depth >= GGUF_MAX_ARRAY_DEPTH)
    return mb__tf_fail(g->pe, MB_EFORMAT, "key '%s': arrays nested deeper than %d", key,
                       GGUF_MAX_ARRAY_DEPTH);
  if (rd_u32(g, &et, "array type") != 0 || rd_u64(g, &count, "array length") != 0)
    return MB_EFORMAT;
  if (et >= GGUF_TYPE_COUNT)
    return mb__tf_fail(g->pe, MB_EFORMAT, "key '%s': unknown array element type %u", key, et);
  /* The smallest element: its fixed size, a string's length, an array's
   * type and length. */
  uint64_t min = fixed_size(et) ? fixed_size(et) : et == GGUF_STRING ? 8 : 12;
  if (count > (g->file_size - g->pos) / min)
    return mb__tf_fail(g->pe, MB_EFORMAT,
                       "key '%s': array of %llu %s elements runs past the end of the file", key,
                       (unsigned long long)count, type_names[et]);
  if (m != NULL) {
    m->type = MB_META_ARRAY;
    m->array_len = count;
  }
  if (fixed_size(et) != 0 && et != GGUF_BOOL) {
    if (need(g, count * min, key) != 0)
      return MB_EFORMAT;
    g->pos += (size_t)(count * min);
    return 0;
  }
  for (uint64_t i = 0; i < count; i++)
    if (rd_value(g, et, depth + 1, key, NULL, NULL, NULL) != 0)
      return MB_EFORMAT;
  return 0;
}

static int rd_kv(gg *g) {
  const char *key, *str = NULL;
  uint64_t key_len, str_len = 0;
  uint32_t t;
  char q[MB__QUOTE_LEN];
  mb__meta m = {0};

  if (rd_str(g, &key, &key_len, "metadata key") != 0)
    return MB_EFORMAT;
  mb__quote(key, (size_t)key_len, q);
  if (key_len == 0)
    return mb__tf_fail(g->pe, MB_EFORMAT, "empty metadata key at offset %zu", g->pos - 8);
  if (memchr(key, '\0', (size_t)key_len) != NULL)
    return mb__tf_fail(g->pe, MB_EFORMAT, "metadata key '%s' contains a NUL byte", q);
  if (rd_u32(g, &t, "value type") != 0)
    return MB_EFORMAT;
  if (t >= GGUF_TYPE_COUNT)
    return mb__tf_fail(g->pe, MB_EFORMAT, "key '%s' has unknown value type %u", q, t);
  if (rd_value(g, t, 0, q, &m, &str, &str_len) != 0)
    return MB_EFORMAT;
  if (key_len == 17 && memcmp(key, "general.alignment", 17) == 0) {
    if (t != GGUF_UINT32)
      return mb__tf_fail(g->pe, MB_EFORMAT, "general.alignment is %s, not uint32",
                         type_names[t]);
    if (m.u == 0 || (m.u & (m.u - 1)) != 0)
      return mb__tf_fail(g->pe, MB_EFORMAT, "general.alignment %llu is not a power of two",
                         (unsigned long long)m.u);
    g->f->alignment = (uint32_t)m.u;
  }
  if (str != NULL && memchr(str, '\0', (size_t)str_len) != NULL)
    str_len = strlen(str); /* kept as a C string: cut at the first NUL */
  return mb__tf_add_meta(g->f, key, (size_t)key_len, &m, str, (size_t)str_len);
}

static int rd_tensor(gg *g) {
  const char *name;
  uint64_t name_len, offset, shape[MB_TENSOR_MAX_DIMS] = {0}, bytes;
  uint32_t ndim, type;
  char q[MB__QUOTE_LEN], shape_s[160], why[128];

  if (rd_str(g, &name, &name_len, "tensor name") != 0)
    return MB_EFORMAT;
  mb__quote(name, (size_t)name_len, q);
  if (name_len == 0)
    return mb__tf_fail(g->pe, MB_EFORMAT, "empty tensor name at offset %zu", g->pos - 8);
  if (memchr(name, '\0', (size_t)name_len) != NULL)
    return mb__tf_fail(g->pe, MB_EFORMAT, "tensor name '%s' contains a NUL byte", q);
  if (rd_u32(g, &ndim, "n_dims") != 0)
    return MB_EFORMAT;
  if (ndim > GGUF_MAX_DIMS)
    return mb__tf_fail(g->pe, MB_EFORMAT, "tensor '%s' has %u dimensions (GGUF allows at most %d)",
                       q, ndim, GGUF_MAX_DIMS);
  for (uint32_t i = 0; i < ndim; i++) {
    if (rd_u64(g, &shape[i], "dimension") != 0)
      return MB_EFORMAT;
    if (shape[i] > (uint64_t)INT64_MAX)
      return mb__tf_fail(g->pe, MB_EFORMAT, "tensor '%s' dimension %u is %llu (negative as int64)",
                         q, i, (unsigned long long)shape[i]);
  }
  if (rd_u32(g, &type, "tensor type") != 0 || rd_u64(g, &offset, "tensor offset") != 0)
    return MB_EFORMAT;
  mb_dtype dt = mb__dtype_from_ggml(type);
  if (dt == MB_DTYPE_UNKNOWN)
    return mb__tf_fail(g->pe, MB_EFORMAT, "tensor '%s' has unknown ggml type %u", q, type);
  mb__fmt_shape((int)ndim, shape, shape_s, sizeof shape_s);
  if (mb__dtype_bytes(dt, (int)ndim, shape, &bytes, why, sizeof why) != 0)
    return mb__tf_fail(g->pe, MB_EFORMAT, "tensor '%s' type %s x shape %s: %s", q,
                       mb_dtype_name(dt), shape_s, why);
  if (offset % g->f->alignment != 0)
    return mb__tf_fail(g->pe, MB_EFORMAT,
                       "tensor '%s' offset %llu is not a multiple of the alignment %u", q,
                       (unsigned long long)offset, g->f->alignment);
  return mb__tf_add_tensor(g->f, name, (size_t)name_len, dt, (int)ndim, shape, offset, bytes);
}

int mb__gguf_parse(const uint8_t *buf, size_t len, uint64_t file_size, const mb__perr *pe,
                   mb_tensor_file **out, int *need_more) {
  gg g = {buf, len, file_size, 0, pe, need_more, NULL};
  uint32_t version;
  uint64_t n_tensors, n_kv;
  int rc;

  *out = NULL;
  if (need_more != NULL)
    *need_more = 0;
  if (file_size < 24)
    return mb__tf_fail(pe, MB_EFORMAT, "file is %llu bytes, too short for a GGUF header",
                       (unsigned long long)file_size);
  if (len >= 4 && memcmp(buf, "GGUF", 4) != 0) {
    const uint8_t *m = buf;
    return mb__tf_fail(pe, MB_EFORMAT,
                       "bad magic %02x %02x %02x %02x (a GGUF file starts with \"GGUF\")", m[0],
                       m[1], m[2], m[3]);
  }
  g.f = mb__tf_new(pe->name, MB_TENSOR_FORMAT_GGUF);
  if (g.f == NULL) {
    rc = MB_ENOMEM;
    goto out;
  }
  g.f->file_size = file_size;
  g.f->alignment = GGUF_DEFAULT_ALIGNMENT;
  rc = MB_EFORMAT;
  if (need(&g, 4, "magic") != 0)
    goto out;
  g.pos = 4;
  if (rd_u32(&g, &version, "version") != 0)
    goto out;
  if (version != 2 && version != 3) {
    if ((version & 0xFFFFu) == 0 && (version >> 16) != 0)
      mb__tf_fail(pe, MB_EFORMAT, "big-endian GGUF files are not supported");
    else
      mb__tf_fail(pe, MB_EFORMAT, "unsupported GGUF version %u (only 2 and 3)", version);
    goto out;
  }
  g.f->version = version;
  if (rd_u64(&g, &n_tensors, "tensor count") != 0 || rd_u64(&g, &n_kv, "metadata count") != 0)
    goto out;
  if (n_kv > (file_size - g.pos) / GGUF_MIN_KV) {
    mb__tf_fail(pe, MB_EFORMAT, "metadata count %llu is more than a %llu-byte file can hold",
                (unsigned long long)n_kv, (unsigned long long)file_size);
    goto out;
  }
  if (n_tensors > (file_size - g.pos) / GGUF_MIN_TENSOR) {
    mb__tf_fail(pe, MB_EFORMAT, "tensor count %llu is more than a %llu-byte file can hold",
                (unsigned long long)n_tensors, (unsigned long long)file_size);
    goto out;
  }
  for (uint64_t i = 0; i < n_kv; i++)
    if ((rc = rd_kv(&g)) != 0)
      goto out;
  for (uint64_t i = 0; i < n_tensors; i++)
    if ((rc = rd_tensor(&g)) != 0)
      goto out;

  /* The data section starts at the next multiple of the alignment. */
  uint64_t a = g.f->alignment;
  g.f->data_offset = ((uint64_t)g.pos + a - 1) / a * a;
  if (g.f->data_offset > file_size) {
    /* Only a file without tensors may end before its padding. */
    if (g.f->count > 0) {
      rc = mb__tf_fail(pe, MB_EFORMAT,
                       "data section at offset %llu starts past the end of the file (%llu "
                       "bytes; file truncated?)",
                       (unsigned long long)g.f->data_offset, (unsigned long long)file_size);
      goto out;
    }
    g.f->data_offset = file_size;
  }
  uint64_t avail = file_size - g.f->data_offset;
  for (size_t i = 0; i < g.f->count; i++) {
    const mb__tensor *t = &g.f->tensors[i];
    if (t->rel_offset > avail || t->size_bytes > avail - t->rel_offset) {
      char q[MB__QUOTE_LEN];
      uint64_t end = t->size_bytes > UINT64_MAX - t->rel_offset ? UINT64_MAX
                                                                  : t->rel_offset + t->size_bytes;
      rc = mb__tf_fail(pe, MB_EFORMAT,
                       "tensor '%s' data [%llu, %llu) runs past the end of the data section "
                       "(%llu bytes; file truncated?)",
                       mb__quote(t->name, strlen(t->name), q), (unsigned long long)t->rel_offset,
                       (unsigned long long)end, (unsigned long long)avail);
      goto out;
    }
  }
  rc = mb__tf_finish(g.f, pe);
  if (rc != 0)
    goto out;
  *out = g.f;
  g.f = NULL;
out:
  if (rc == MB_ENOMEM)
    mb__tf_fail(pe, MB_ENOMEM, "out of memory while parsing the header");
  mb_tensor_file_close(g.f);
  return rc;
}

int mb_gguf_parse(const void *buf, size_t len, uint64_t file_size, const char *name,
                  mb_tensor_file **out, char *err, size_t err_len) {
  mb__perr pe = {name != NULL ? name : "<memory>", err, err_len};
  if (out != NULL)
    *out = NULL;
  if (out == NULL || (buf == NULL && len > 0) || len > file_size) {
    mb__set_err(err, err_len, "invalid argument");
    return MB_EINVAL;
  }
  return mb__gguf_parse(buf, len, file_size, &pe, out, NULL);
}
