/*
 * tensor_file.c - the mb_tensor_file handle: building it (shared by the
 * safetensors and GGUF parsers), the checks common to both formats (unique
 * names, no overlapping data), lookups, and mb_tensor_file_open(), which
 * detects the format and reads just the header from disk.
 *
 * The handle is immutable after mb__tf_finish(), hence safe to read from
 * any number of threads without a lock.
 */
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "alloc.h"
#include "tensor_file.h"
#include "tensor_parse.h"

/* ------------------------------------------------------------------------ */
/* Messages                                                                  */

int mb__tf_fail(const mb__perr *pe, int code, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  mb__set_err(pe->err, pe->err_len, "%s: %s", pe->name, msg);
  return code;
}

const char *mb__quote(const char *s, size_t n, char out[MB__QUOTE_LEN]) {
  size_t max = MB__QUOTE_LEN - 4, o = 0;
  for (size_t i = 0; i < n && o < max; i++) {
    unsigned char c = (unsigned char)s[i];
    out[o++] = (c >= 0x20 && c < 0x7f && c != '\'') || c >= 0x80 ? (char)c : '?';
  }
  if (n > max) {
    /* Do not cut a UTF-8 sequence in half. */
    while (o > 0 && ((unsigned char)out[o - 1] & 0xC0) == 0x80)
      o--;
    if (o > 0 && (unsigned char)out[o - 1] >= 0xC0)
      o--;
    memcpy(out + o, "...", 3);
    o += 3;
  }
  out[o] = '\0';
  return out;
}

void mb__fmt_shape(int ndim, const uint64_t *shape, char *buf, size_t len) {
  size_t o = 0;
  int n;
  if (len < 8) {
    if (len > 0)
      buf[0] = '\0';
    return;
  }
  buf[o++] = '[';
  for (int i = 0; i < ndim; i++) {
    n = snprintf(buf + o, len - o, "%s%llu", i ? ", " : "", (unsigned long long)shape[i]);
    if (n < 0 || (size_t)n >= len - o - 1) {
      memcpy(buf + len - 5, "...]", 5);
      return;
    }
    o += (size_t)n;
  }
  buf[o++] = ']';
  buf[o] = '\0';
}

/* ------------------------------------------------------------------------ */
/* Building                                                                  */

static char *dup_n(const char *s, size_t n) {
  char *p = mb__malloc(n + 1);
  if (p != NULL) {
    if (n > 0)
      memcpy(p, s, n);
    p[n] = '\0';
  }
  return p;
}

mb_tensor_file *mb__tf_new(const char *name, mb_tensor_format format) {
  mb_tensor_file *f = mb__calloc(1, sizeof *f);
  if (f == NULL)
    return NULL;
  f->path = mb__strdup(name);
  if (f->path == NULL) {
    mb__free(f);
    return NULL;
  }
  f->format = format;
  f->alignment = 1;
  return f;
}

int mb__tf_add_tensor(mb_tensor_file *f, const char *name, size_t name_len, mb_dtype dtype,
                      int ndim, const uint64_t *shape, uint64_t rel_offset, uint64_t size_bytes) {
  if (f->count == f->cap) {
    size_t cap = f->cap ? f->cap * 2 : 16;
    mb__tensor *t = mb__realloc(f->tensors, cap * sizeof *t);
    if (t == NULL)
      return MB_ENOMEM;
    f->tensors = t;
    f->cap = cap;
  }
  mb__tensor *t = &f->tensors[f->count];
  memset(t, 0, sizeof *t);
  t->name = dup_n(name, name_len);
  if (t->name == NULL)
    return MB_ENOMEM;
  t->dtype = dtype;
  t->ndim = ndim;
  for (int i = 0; i < ndim; i++)
    t->shape[i] = shape[i];
  t->rel_offset = rel_offset;
  t->size_bytes = size_bytes;
  f->count++;
  return 0;
}

int mb__tf_add_meta(mb_tensor_file *f, const char *key, size_t key_len, const mb__meta *val,
                    const char *str, size_t str_len) {
  if (f->meta_count == f->meta_cap) {
    size_t cap = f->meta_cap ? f->meta_cap * 2 : 16;
    mb__meta *m = mb__realloc(f->meta, cap * sizeof *m);
    if (m == NULL)
      return MB_ENOMEM;
    f->meta = m;
    f->meta_cap = cap;
  }
  mb__meta *m = &f->meta[f->meta_count];
  *m = *val;
  m->key = dup_n(key, key_len);
  m->str = NULL;
  if (m->key == NULL)
    return MB_ENOMEM;
  if (str != NULL) {
    m->str = dup_n(str, str_len);
    if (m->str == NULL) {
      mb__free(m->key);
      return MB_ENOMEM;
    }
  }
  f->meta_count++;
  return 0;
}

/* FNV-1a: short keys, no adversary gains much from collisions here since
 * the table is sized for the count and probing is linear over it. */
static uint64_t hash_str(const char *s) {
  uint64_t h = 1469598103934665603ull;
  for (; *s; s++) {
    h ^= (unsigned char)*s;
    h *= 1099511628211ull;
  }
  return h;
}

static size_t table_cap(size_t n) {
  size_t cap = 16;
  while (cap < n * 2)
    cap *= 2;
  return cap;
}

_Static_assert(offsetof(mb__tensor, name) == 0, "build_table reads the name first");
_Static_assert(offsetof(mb__meta, key) == 0, "build_table reads the key first");

/* The name field of element i of an array of structs. */
static const char *name_at(const void *base, size_t stride, size_t i) {
  return *(char *const *)((const char *)base + i * stride);
}

/* Inserts the name of every element into a fresh table (the name is the
 * first field of the struct: mb__tensor and mb__meta); reports the first
 * duplicate through *dup (index of the second occurrence). */
static int build_table(const void *base, size_t stride, size_t n, uint32_t **out,
                       size_t *out_cap, size_t *dup) {
  size_t cap = table_cap(n);
  uint32_t *tab = mb__calloc(cap, sizeof *tab);
  if (tab == NULL)
    return MB_ENOMEM;
  *dup = SIZE_MAX;
  for (size_t i = 0; i < n && *dup == SIZE_MAX; i++) {
    const char *name = name_at(base, stride, i);
    size_t h = (size_t)hash_str(name) & (cap - 1);
    for (;;) {
      if (tab[h] == 0) {
        tab[h] = (uint32_t)(i + 1);
        break;
      }
      if (strcmp(name_at(base, stride, tab[h] - 1), name) == 0) {
        *dup = i;
        break;
      }
      h = (h + 1) & (cap - 1);
    }
  }
  *out = tab;
  *out_cap = cap;
  return 0;
}

typedef struct span {
  uint64_t begin, end;
  size_t index;
} span;

static int cmp_span(const void *a, const void *b) {
  const span *x = a, *y = b;
  if (x->begin != y->begin)
    return x->begin < y->begin ? -1 : 1;
  if (x->end != y->end)
    return x->end < y->end ? -1 : 1;
  return x->index < y->index ? -1 : x->index > y->index;
}

static int check_overlaps(mb_tensor_file *f, const mb__perr *pe) {
  span *s = mb__malloc((f->count ? f->count : 1) * sizeof *s);
  size_t n = 0;
  int rc = 0;
  if (s == NULL)
    return MB_ENOMEM;
  for (size_t i = 0; i < f->count; i++) {
    if (f->tensors[i].size_bytes == 0)
      continue; /* an empty tensor occupies no bytes */
    s[n].begin = f->tensors[i].rel_offset;
    s[n].end = f->tensors[i].rel_offset + f->tensors[i].size_bytes;
    s[n].index = i;
    n++;
  }
  qsort(s, n, sizeof *s, cmp_span);
  for (size_t i = 1; i < n; i++) {
    if (s[i].begin < s[i - 1].end) {
      char qa[MB__QUOTE_LEN], qb[MB__QUOTE_LEN];
      const mb__tensor *a = &f->tensors[s[i - 1].index], *b = &f->tensors[s[i].index];
      rc = mb__tf_fail(pe, MB_EFORMAT,
                       "tensors '%s' [%llu, %llu) and '%s' [%llu, %llu) overlap in the data "
                       "section",
                       mb__quote(a->name, strlen(a->name), qa),
                       (unsigned long long)s[i - 1].begin, (unsigned long long)s[i - 1].end,
                       mb__quote(b->name, strlen(b->name), qb),
                       (unsigned long long)s[i].begin, (unsigned long long)s[i].end);
      break;
    }
  }
  mb__free(s);
  return rc;
}

int mb__tf_finish(mb_tensor_file *f, const mb__perr *pe) {
  size_t dup;
  char q[MB__QUOTE_LEN];
  int rc;

  if (f->count >= UINT32_MAX)
    return mb__tf_fail(pe, MB_EFORMAT, "too many tensors (%zu)", f->count);
  rc = build_table(f->tensors, sizeof(mb__tensor), f->count, &f->hash, &f->hash_cap, &dup);
  if (rc != 0)
    return rc;
  if (dup != SIZE_MAX) {
    const char *n = f->tensors[dup].name;
    return mb__tf_fail(pe, MB_EFORMAT, "duplicate tensor name '%s'", mb__quote(n, strlen(n), q));
  }
  if (f->meta_count > 0) {
    uint32_t *tab;
    size_t cap;
    rc = build_table(f->meta, sizeof(mb__meta), f->meta_count, &tab, &cap, &dup);
    if (rc != 0)
      return rc;
    mb__free(tab);
    if (dup != SIZE_MAX) {
      const char *k = f->meta[dup].key;
      return mb__tf_fail(pe, MB_EFORMAT, "duplicate metadata key '%s'",
                         mb__quote(k, strlen(k), q));
    }
  }
  rc = check_overlaps(f, pe);
  if (rc != 0)
    return rc;
  f->data_bytes = 0;
  for (size_t i = 0; i < f->count; i++)
    f->data_bytes += f->tensors[i].size_bytes; /* bounded by the file size: no overflow */
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Accessors                                                                 */

void mb_tensor_file_close(mb_tensor_file *f) {
  if (f == NULL)
    return;
  for (size_t i = 0; i < f->count; i++)
    mb__free(f->tensors[i].name);
  for (size_t i = 0; i < f->meta_count; i++) {
    mb__free(f->meta[i].key);
    mb__free(f->meta[i].str);
  }
  mb__free(f->tensors);
  mb__free(f->meta);
  mb__free(f->hash);
  mb__free(f->path);
  mb__free(f);
}

const char *mb_tensor_file_path(const mb_tensor_file *f) {
  return f->path;
}
mb_tensor_format mb_tensor_file_format(const mb_tensor_file *f) {
  return f->format;
}
uint32_t mb_tensor_file_version(const mb_tensor_file *f) {
  return f->version;
}
uint64_t mb_tensor_file_size(const mb_tensor_file *f) {
  return f->file_size;
}
uint64_t mb_tensor_file_data_offset(const mb_tensor_file *f) {
  return f->data_offset;
}
uint64_t mb_tensor_file_data_bytes(const mb_tensor_file *f) {
  return f->data_bytes;
}
uint32_t mb_tensor_file_alignment(const mb_tensor_file *f) {
  return f->alignment;
}
size_t mb_tensor_file_count(const mb_tensor_file *f) {
  return f->count;
}
size_t mb_tensor_file_metadata_count(const mb_tensor_file *f) {
  return f->meta_count;
}

int mb_tensor_file_info(const mb_tensor_file *f, size_t index, mb_tensor_info *out) {
  if (f == NULL || out == NULL || index >= f->count)
    return MB_EINVAL;
  const mb__tensor *t = &f->tensors[index];
  memset(out, 0, sizeof *out);
  out->name = t->name;
  out->dtype = t->dtype;
  out->dtype_name = mb_dtype_name(t->dtype);
  out->ndim = t->ndim;
  for (int i = 0; i < t->ndim; i++)
    out->shape[i] = t->shape[i];
  out->offset = f->data_offset + t->rel_offset;
  out->size_bytes = t->size_bytes;
  return 0;
}

int mb_tensor_file_find(const mb_tensor_file *f, const char *name, mb_tensor_info *out,
                        size_t *index) {
  if (f == NULL || name == NULL || out == NULL)
    return MB_EINVAL;
  if (f->hash == NULL)
    return MB_ENOENT;
  size_t h = (size_t)hash_str(name) & (f->hash_cap - 1);
  while (f->hash[h] != 0) {
    size_t i = f->hash[h] - 1;
    if (strcmp(f->tensors[i].name, name) == 0) {
      if (index != NULL)
        *index = i;
      return mb_tensor_file_info(f, i, out);
    }
    h = (h + 1) & (f->hash_cap - 1);
  }
  return MB_ENOENT;
}

int mb_tensor_file_metadata(const mb_tensor_file *f, size_t index, mb_tensor_meta *out) {
  if (f == NULL || out == NULL || index >= f->meta_count)
    return MB_EINVAL;
  const mb__meta *m = &f->meta[index];
  out->key = m->key;
  out->type = m->type;
  out->str = m->str;
  out->u = m->u;
  out->i = m->i;
  out->f = m->f;
  out->array_len = m->array_len;
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Opening a file                                                            */

/* Reads exactly len bytes at off; MB_EIO with a message on error or EOF. */
static int read_at(int fd, void *buf, size_t len, uint64_t off, const mb__perr *pe) {
  size_t done = 0;
  while (done < len) {
    ssize_t n = pread(fd, (char *)buf + done, len - done, (off_t)(off + done));
    if (n < 0) {
      if (errno == EINTR)
        continue;
      return mb__tf_fail(pe, MB_EIO, "read failed: %s", strerror(errno));
    }
    if (n == 0)
      return mb__tf_fail(pe, MB_EIO, "file shrank while being read");
    done += (size_t)n;
  }
  return 0;
}

static int has_suffix(const char *s, const char *suffix) {
  size_t n = strlen(s), m = strlen(suffix);
  return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* First bytes of the GGUF header read on open; doubled until the header fits. */
#define GGUF_FIRST_READ (4u << 20)

static int open_gguf(int fd, uint64_t size, const mb__perr *pe, mb_tensor_file **out) {
  size_t want = size < GGUF_FIRST_READ ? (size_t)size : GGUF_FIRST_READ;
  int rc;
  for (;;) {
    uint8_t *buf = mb__malloc(want);
    int need_more = 0;
    if (buf == NULL)
      return MB_ENOMEM;
    rc = read_at(fd, buf, want, 0, pe);
    if (rc == 0)
      rc = mb__gguf_parse(buf, want, size, pe, out, &need_more);
    mb__free(buf);
    if (rc == 0 || !need_more || want == size)
      return rc;
    want = (uint64_t)want * 2 > size || want > SIZE_MAX / 2 ? (size_t)size : want * 2;
  }
}

static int open_safetensors(int fd, uint64_t size, const mb__perr *pe, mb_tensor_file **out) {
  uint8_t head[8];
  if (size < 8)
    return mb__safetensors_parse(NULL, 0, size, pe, out); /* reports the short file */
  int rc = read_at(fd, head, 8, 0, pe);
  if (rc != 0)
    return rc;
  uint64_t n = 0;
  for (int i = 7; i >= 0; i--)
    n = n << 8 | head[i];
  if (n > MB_SAFETENSORS_MAX_HEADER || n > size - 8)
    return mb__safetensors_parse(head, 8, size, pe, out); /* reports the bad length */
  uint8_t *buf = mb__malloc((size_t)n + 8);
  if (buf == NULL)
    return MB_ENOMEM;
  rc = read_at(fd, buf, (size_t)n + 8, 0, pe);
  if (rc == 0)
    rc = mb__safetensors_parse(buf, (size_t)n + 8, size, pe, out);
  mb__free(buf);
  return rc;
}

int mb_tensor_file_open(const char *path, mb_tensor_file **out, char *err, size_t err_len) {
  mb__perr pe = {path, err, err_len};
  struct stat st;
  int fd, rc;

  if (out != NULL)
    *out = NULL;
  if (path == NULL || out == NULL) {
    mb__set_err(err, err_len, "invalid argument");
    return MB_EINVAL;
  }
  fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return mb__tf_fail(&pe, MB_EIO, "cannot open: %s", strerror(errno));
  if (fstat(fd, &st) != 0) {
    rc = mb__tf_fail(&pe, MB_EIO, "cannot stat: %s", strerror(errno));
    goto out_close;
  }
  if (!S_ISREG(st.st_mode)) {
    rc = mb__tf_fail(&pe, MB_EIO, "not a regular file");
    goto out_close;
  }
  uint64_t size = (uint64_t)st.st_size;
  uint8_t head[9] = {0};
  size_t got = size < sizeof head ? (size_t)size : sizeof head;
  rc = read_at(fd, head, got, 0, &pe);
  if (rc != 0)
    goto out_close;
  /* The magic decides; the extension picks the parser that explains why a
   * file is neither; a safetensors header starts with '{' after its length. */
  if (got >= 4 && memcmp(head, "GGUF", 4) == 0)
    rc = open_gguf(fd, size, &pe, out);
  else if (has_suffix(path, ".gguf"))
    rc = open_gguf(fd, size, &pe, out);
  else if (has_suffix(path, ".safetensors") || (got == 9 && head[8] == '{'))
    rc = open_safetensors(fd, size, &pe, out);
  else
    rc = mb__tf_fail(&pe, MB_EFORMAT,
                     "unrecognised format: no GGUF magic and no safetensors header");
out_close:
  close(fd);
  return rc;
}
