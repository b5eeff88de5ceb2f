/*
 * mkmodel.c - synthetic weight files (see mkmodel.h).
 *
 * The writer streams: header, then each tensor's contents generated straight
 * into one large output buffer, flushed with plain write(2) calls of
 * WRITE_BUF bytes, so a multi-GiB file is written at disk speed. Contents
 * come from splitmix64 seeded per tensor (seed, index), so a tensor's bytes
 * do not depend on the tensors before it.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mb_internal.h"
#include "mkmodel.h"

#define WRITE_BUF (8u << 20)
#define GGUF_ALIGN 32u

/* ------------------------------------------------------------------------ */
/* Planning                                                                  */

/* Appends a tensor named prefix + suffix (prefix "" for top-level tensors). */
static void add(cli_mk_tensor *t, size_t *n, mb_dtype dt, uint64_t d0, uint64_t d1,
                const char *prefix, const char *suffix) {
  cli_mk_tensor *x = &t[(*n)++];
  memset(x, 0, sizeof *x);
  snprintf(x->name, sizeof x->name, "%s%s", prefix, suffix);
  x->dtype = dt;
  x->ndim = d1 ? 2 : 1;
  x->shape[0] = d0;
  x->shape[1] = d1;
}

static uint64_t bytes_of(const cli_mk_tensor *t) {
  uint64_t b = 0;
  char why[8];
  if (mb__dtype_bytes(t->dtype, t->ndim, t->shape, &b, why, sizeof why) != 0)
    return UINT64_MAX;
  return b;
}

int cli_mkmodel_plan(const cli_mkmodel_opts *o, cli_mk_tensor **out, size_t *n_out) {
  int gguf = o->format == MB_TENSOR_FORMAT_GGUF;
  uint64_t S = o->size_bytes, L, d;
  size_t n = 0, want;

  *out = NULL;
  *n_out = 0;
  if (o->format != MB_TENSOR_FORMAT_GGUF && o->format != MB_TENSOR_FORMAT_SAFETENSORS)
    return MB_EINVAL;
  if (o->n_tensors > 0) {
    L = o->n_tensors > 3 ? (o->n_tensors - 3 + 8) / 9 : 0;
  } else {
    L = S <= (64ull << 20) ? 2 : S <= (1ull << 30) ? 8 : S <= (8ull << 30) ? 24 : 32;
  }
  if (L > 100000)
    return MB_EINVAL;
  /* A layer holds 4 d x d and 3 d x 4d F16 matrices (32 d^2 bytes); the
   * embedding and the head are 8d x d each: about 32 d^2 (L + 1) in all. */
  d = (uint64_t)sqrt((double)S / (32.0 * (double)(L + 1)));
  d = d >= 64 ? d / 32 * 32 : d / 4 * 4;
  if (d < 4)
    d = 4;
  if (d > (1u << 20))
    d = 1u << 20;

  size_t total = 3 + 9 * (size_t)L;
  cli_mk_tensor *t = calloc(total, sizeof *t);
  if (t == NULL)
    return MB_ENOMEM;
  add(t, &n, MB_DTYPE_F16, 8 * d, d, "", gguf ? "token_embd.weight" : "model.embed_tokens.weight");
  for (int l = 0; l < (int)L; l++) {
    char p[48];
    snprintf(p, sizeof p, gguf ? "blk.%d." : "model.layers.%d.", l);
    if (gguf) {
      add(t, &n, MB_DTYPE_F32, d, 0, p, "attn_norm.weight");
      add(t, &n, MB_DTYPE_F16, d, d, p, "attn_q.weight");
      add(t, &n, MB_DTYPE_F16, d, d, p, "attn_k.weight");
      add(t, &n, MB_DTYPE_F16, d, d, p, "attn_v.weight");
      add(t, &n, MB_DTYPE_F16, d, d, p, "attn_output.weight");
      add(t, &n, MB_DTYPE_F32, d, 0, p, "ffn_norm.weight");
      add(t, &n, MB_DTYPE_F16, 4 * d, d, p, "ffn_gate.weight");
      add(t, &n, MB_DTYPE_F16, 4 * d, d, p, "ffn_up.weight");
      add(t, &n, MB_DTYPE_F16, d, 4 * d, p, "ffn_down.weight");
    } else {
      add(t, &n, MB_DTYPE_F32, d, 0, p, "input_layernorm.weight");
      add(t, &n, MB_DTYPE_F16, d, d, p, "self_attn.q_proj.weight");
      add(t, &n, MB_DTYPE_F16, d, d, p, "self_attn.k_proj.weight");
      add(t, &n, MB_DTYPE_F16, d, d, p, "self_attn.v_proj.weight");
      add(t, &n, MB_DTYPE_F16, d, d, p, "self_attn.o_proj.weight");
      add(t, &n, MB_DTYPE_F32, d, 0, p, "post_attention_layernorm.weight");
      add(t, &n, MB_DTYPE_F16, 4 * d, d, p, "mlp.gate_proj.weight");
      add(t, &n, MB_DTYPE_F16, 4 * d, d, p, "mlp.up_proj.weight");
      add(t, &n, MB_DTYPE_F16, d, 4 * d, p, "mlp.down_proj.weight");
    }
  }
  add(t, &n, MB_DTYPE_F32, d, 0, "", gguf ? "output_norm.weight" : "model.norm.weight");
  add(t, &n, MB_DTYPE_F16, 8 * d, d, "", gguf ? "output.weight" : "lm_head.weight");

  want = o->n_tensors > 0 ? o->n_tensors : n;
  if (want < n)
    n = want; /* the tail (head, norms) goes first; the embedding stays */

  /* The embedding absorbs the difference to the target size. */
  uint64_t rest = 0, row = 2 * d;
  for (size_t i = 1; i < n; i++)
    rest += bytes_of(&t[i]);
  uint64_t rows = S > rest ? (S - rest) / row : 1;
  t[0].shape[0] = rows ? rows : 1;

  *out = t;
  *n_out = n;
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Writing                                                                   */

typedef struct writer {
  int fd;
  const char *path;
  uint8_t *buf;
  size_t used;
  uint64_t written;
  char *err;
  size_t err_len;
} writer;

static int flush(writer *w) {
  size_t done = 0;
  while (done < w->used) {
    ssize_t n = write(w->fd, w->buf + done, w->used - done);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      mb__set_err(w->err, w->err_len, "%s: write failed: %s", w->path, strerror(errno));
      return MB_EIO;
    }
    done += (size_t)n;
  }
  w->written += w->used;
  w->used = 0;
  return 0;
}

static int put(writer *w, const void *p, size_t n) {
  const uint8_t *s = p;
  while (n > 0) {
    size_t k = WRITE_BUF - w->used < n ? WRITE_BUF - w->used : n;
    memcpy(w->buf + w->used, s, k);
    w->used += k;
    s += k;
    n -= k;
    if (w->used == WRITE_BUF && flush(w) != 0)
      return MB_EIO;
  }
  return 0;
}

static int put_u32(writer *w, uint32_t v) {
  uint8_t b[4];
  for (int i = 0; i < 4; i++)
    b[i] = (uint8_t)(v >> (8 * i));
  return put(w, b, 4);
}

static int put_u64(writer *w, uint64_t v) {
  uint8_t b[8];
  for (int i = 0; i < 8; i++)
    b[i] = (uint8_t)(v >> (8 * i));
  return put(w, b, 8);
}

static int put_zeros(writer *w, uint64_t n) {
  static const uint8_t z[64];
  while (n > 0) {
    size_t k = n < sizeof z ? (size_t)n : sizeof z;
    if (put(w, z, k) != 0)
      return MB_EIO;
    n -= k;
  }
  return 0;
}

static uint64_t splitmix64(uint64_t *s) {
  uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/* Masks that turn random bits into small finite values: keep sign and
 * mantissa, force a small exponent (F16 2^-4, BF16/F32 2^-5, F64 2^-5). */
static void value_masks(mb_dtype dt, uint64_t *and_m, uint64_t *or_m) {
  switch (dt) {
  case MB_DTYPE_F16:
    *and_m = 0x83FF83FF83FF83FFull;
    *or_m = 0x2C002C002C002C00ull;
    break;
  case MB_DTYPE_BF16:
    *and_m = 0x807F807F807F807Full;
    *or_m = 0x3D003D003D003D00ull;
    break;
  case MB_DTYPE_F32:
    *and_m = 0x807FFFFF807FFFFFull;
    *or_m = 0x3D0000003D000000ull;
    break;
  case MB_DTYPE_F64:
    *and_m = 0x800FFFFFFFFFFFFFull;
    *or_m = 0x3FA0000000000000ull;
    break;
  case MB_DTYPE_BOOL:
    *and_m = 0x0101010101010101ull;
    *or_m = 0;
    break;
  default:
    *and_m = UINT64_MAX;
    *or_m = 0;
  }
}

static int put_data(writer *w, const cli_mk_tensor *t, uint64_t bytes, uint64_t seed,
                    size_t index) {
  uint64_t s = seed ^ (0xD1B54A32D192ED03ull * (index + 1)), and_m, or_m;
  value_masks(t->dtype, &and_m, &or_m);
  while (bytes > 0) {
    size_t room = WRITE_BUF - w->used;
    size_t k = room < bytes ? room : (size_t)bytes;
    uint8_t *p = w->buf + w->used;
    size_t i = 0;
    for (; i + 8 <= k; i += 8) {
      uint64_t v = (splitmix64(&s) & and_m) | or_m;
      memcpy(p + i, &v, 8);
    }
    if (i < k) {
      uint64_t v = (splitmix64(&s) & and_m) | or_m;
      memcpy(p + i, &v, k - i);
    }
    w->used += k;
    bytes -= k;
    if (w->used == WRITE_BUF && flush(w) != 0)
      return MB_EIO;
  }
  return 0;
}

/* Appends to a growing string; MB_ENOMEM. */
typedef struct sbuf {
  char *s;
  size_t len, cap;
} sbuf;

__attribute__((format(printf, 2, 3))) static int sb_printf(sbuf *b, const char *fmt, ...);

static int sb_printf(sbuf *b, const char *fmt, ...) {
  va_list ap;
  for (;;) {
    va_start(ap, fmt);
    int n = vsnprintf(b->s ? b->s + b->len : NULL, b->s ? b->cap - b->len : 0, fmt, ap);
    va_end(ap);
    if (n < 0)
      return MB_EINVAL;
    if (b->s != NULL && (size_t)n < b->cap - b->len) {
      b->len += (size_t)n;
      return 0;
    }
    size_t cap = b->cap ? b->cap * 2 : 4096;
    while (cap < b->len + (size_t)n + 1)
      cap *= 2;
    char *s = realloc(b->s, cap);
    if (s == NULL)
      return MB_ENOMEM;
    b->s = s;
    b->cap = cap;
  }
}

static int write_safetensors(writer *w, const cli_mk_tensor *t, size_t n, const uint64_t *bytes,
                             uint64_t seed) {
  sbuf h = {0};
  uint64_t off = 0;
  int rc = sb_printf(&h, "{\"__metadata__\":{\"format\":\"pt\",\"generator\":\"modelbuf mkmodel\","
                         "\"seed\":\"%llu\"}",
                     (unsigned long long)seed);
  for (size_t i = 0; i < n && rc == 0; i++) {
    rc = sb_printf(&h, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[", t[i].name,
                   mb_dtype_name(t[i].dtype));
    for (int k = 0; k < t[i].ndim && rc == 0; k++)
      rc = sb_printf(&h, "%s%llu", k ? "," : "", (unsigned long long)t[i].shape[k]);
    if (rc == 0)
      rc = sb_printf(&h, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off,
                     (unsigned long long)(off + bytes[i]));
    off += bytes[i];
  }
  if (rc == 0)
    rc = sb_printf(&h, "}");
  /* Pad with spaces so the data section starts 8-byte aligned. */
  while (rc == 0 && h.len % 8 != 0)
    rc = sb_printf(&h, " ");
  if (rc == 0)
    rc = put_u64(w, h.len);
  if (rc == 0)
    rc = put(w, h.s, h.len);
  for (size_t i = 0; i < n && rc == 0; i++)
    rc = put_data(w, &t[i], bytes[i], seed, i);
  free(h.s);
  return rc;
}

static int gguf_str(writer *w, const char *s) {
  size_t n = strlen(s);
  int rc = put_u64(w, n);
  return rc ? rc : put(w, s, n);
}

static int gguf_kv_str(writer *w, const char *k, const char *v) {
  int rc = gguf_str(w, k);
  if (rc == 0)
    rc = put_u32(w, 8); /* string */
  return rc ? rc : gguf_str(w, v);
}

static int write_gguf(writer *w, const cli_mk_tensor *t, size_t n, const uint64_t *bytes,
                      uint64_t seed) {
  static const char *const tags[] = {"synthetic", "modelbuf"};
  uint64_t off = 0;
  int rc = put(w, "GGUF", 4);
  if (rc == 0) rc = put_u32(w, 3);
  if (rc == 0) rc = put_u64(w, n);
  if (rc == 0) rc = put_u64(w, 5);
  if (rc == 0) rc = gguf_kv_str(w, "general.architecture", "llama");
  if (rc == 0) rc = gguf_kv_str(w, "general.name", "modelbuf-synthetic");
  if (rc == 0) rc = gguf_str(w, "general.alignment");
  if (rc == 0) rc = put_u32(w, 4); /* uint32 */
  if (rc == 0) rc = put_u32(w, GGUF_ALIGN);
  if (rc == 0) rc = gguf_str(w, "general.tags");
  if (rc == 0) rc = put_u32(w, 9); /* array */
  if (rc == 0) rc = put_u32(w, 8); /* of strings */
  if (rc == 0) rc = put_u64(w, 2);
  for (int i = 0; i < 2 && rc == 0; i++)
    rc = gguf_str(w, tags[i]);
  if (rc == 0) rc = gguf_str(w, "modelbuf.seed");
  if (rc == 0) rc = put_u32(w, 10); /* uint64 */
  if (rc == 0) rc = put_u64(w, seed);
  for (size_t i = 0; i < n && rc == 0; i++) {
    rc = gguf_str(w, t[i].name);
    if (rc == 0) rc = put_u32(w, (uint32_t)t[i].ndim);
    for (int k = t[i].ndim - 1; k >= 0 && rc == 0; k--) /* ggml order: innermost first */
      rc = put_u64(w, t[i].shape[k]);
    if (rc == 0) rc = put_u32(w, (uint32_t)mb__dtype_to_ggml(t[i].dtype));
    if (rc == 0) rc = put_u64(w, off);
    off += (bytes[i] + GGUF_ALIGN - 1) / GGUF_ALIGN * GGUF_ALIGN;
  }
  /* Padding to the data section, then each tensor padded to the alignment. */
  uint64_t pos = w->written + w->used;
  if (rc == 0) rc = put_zeros(w, (GGUF_ALIGN - pos % GGUF_ALIGN) % GGUF_ALIGN);
  for (size_t i = 0; i < n && rc == 0; i++) {
    rc = put_data(w, &t[i], bytes[i], seed, i);
    if (rc == 0) rc = put_zeros(w, (GGUF_ALIGN - bytes[i] % GGUF_ALIGN) % GGUF_ALIGN);
  }
  return rc;
}

/* Checks what the format can hold and computes each tensor's size. */
static int check_tensors(mb_tensor_format format, const cli_mk_tensor *t, size_t n,
                         uint64_t *bytes, uint64_t *total, char *err, size_t err_len) {
  char why[128];
  *total = 0;
  for (size_t i = 0; i < n; i++) {
    uint64_t ggml_shape[4];
    int ok = format == MB_TENSOR_FORMAT_GGUF ? mb__dtype_to_ggml(t[i].dtype) >= 0
                                              : mb__dtype_is_safetensors(t[i].dtype);
    if (!ok || t[i].ndim < 0 || t[i].ndim > 4 || memchr(t[i].name, '\0', CLI_MK_NAME_LEN) == NULL ||
        strpbrk(t[i].name, "\"\\") != NULL) {
      mb__set_err(err, err_len, "tensor %zu: dtype %s or shape or name not writable as %s", i,
                  mb_dtype_name(t[i].dtype), mb_tensor_format_name(format));
      return MB_EINVAL;
    }
    for (int k = 0; k < t[i].ndim; k++)
      ggml_shape[k] = t[i].shape[t[i].ndim - 1 - k];
    if (mb__dtype_bytes(t[i].dtype, t[i].ndim, ggml_shape, &bytes[i], why, sizeof why) != 0 ||
        bytes[i] > UINT64_MAX / 4 - *total) {
      mb__set_err(err, err_len, "tensor '%s': %s", t[i].name, why);
      return MB_EINVAL;
    }
    *total += bytes[i];
  }
  return 0;
}

int cli_mkmodel_write_tensors(const char *path, mb_tensor_format format,
                              const cli_mk_tensor *tensors, size_t n, uint64_t seed,
                              cli_mkmodel_result *res, char *err, size_t err_len) {
  writer w = {-1, path, NULL, 0, 0, err, err_len};
  uint64_t total;
  int rc;

  if (path == NULL ||
      (format != MB_TENSOR_FORMAT_GGUF && format != MB_TENSOR_FORMAT_SAFETENSORS)) {
    mb__set_err(err, err_len, "invalid argument");
    return MB_EINVAL;
  }
  uint64_t *bytes = calloc(n ? n : 1, sizeof *bytes);
  if (bytes == NULL)
    return MB_ENOMEM;
  rc = check_tensors(format, tensors, n, bytes, &total, err, err_len);
  if (rc != 0)
    goto out_bytes;
  w.buf = malloc(WRITE_BUF);
  if (w.buf == NULL) {
    rc = MB_ENOMEM;
    goto out_bytes;
  }
  w.fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (w.fd < 0) {
    mb__set_err(err, err_len, "%s: cannot create: %s", path, strerror(errno));
    rc = MB_EIO;
    goto out_buf;
  }
  rc = format == MB_TENSOR_FORMAT_GGUF ? write_gguf(&w, tensors, n, bytes, seed)
                                       : write_safetensors(&w, tensors, n, bytes, seed);
  if (rc == 0)
    rc = flush(&w);
  if (close(w.fd) != 0 && rc == 0) {
    mb__set_err(err, err_len, "%s: close failed: %s", path, strerror(errno));
    rc = MB_EIO;
  }
  if (rc != 0) {
    if (rc == MB_ENOMEM)
      mb__set_err(err, err_len, "%s: out of memory", path);
    unlink(path);
    goto out_buf;
  }
  if (res != NULL) {
    res->tensors = n;
    res->data_bytes = total;
    res->file_bytes = w.written;
  }
out_buf:
  free(w.buf);
out_bytes:
  free(bytes);
  return rc;
}

int cli_mkmodel_write(const cli_mkmodel_opts *o, cli_mkmodel_result *res, char *err,
                      size_t err_len) {
  cli_mk_tensor *t;
  size_t n;
  int rc = cli_mkmodel_plan(o, &t, &n);
  if (rc != 0) {
    mb__set_err(err, err_len, "%s", rc == MB_ENOMEM ? "out of memory" : "invalid model options");
    return rc;
  }
  rc = cli_mkmodel_write_tensors(o->path, o->format, t, n, o->seed, res, err, err_len);
  free(t);
  return rc;
}
