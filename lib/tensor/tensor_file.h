/*
 * tensor_file.h - private to the tensor engine: the body of mb_tensor_file,
 * the dtype table and the helpers the safetensors and GGUF parsers share.
 *
 * A parser creates a handle with mb__tf_new(), validates each tensor of its
 * header (range checks are format-specific, so they are the parser's), adds
 * it with mb__tf_add_tensor() and ends with mb__tf_finish(), which checks
 * the things common to both formats: unique names and no overlapping data.
 * Any failure frees the handle with mb_tensor_file_close().
 */
#ifndef MB_TENSOR_FILE_H
#define MB_TENSOR_FILE_H

#include <stddef.h>
#include <stdint.h>

#include "modelbuf/tensors.h"
#include "dtype.h"

typedef struct mb__tensor {
  char *name;
  mb_dtype dtype;
  int ndim;
  uint64_t shape[MB_TENSOR_MAX_DIMS];
  uint64_t rel_offset; /* from the start of the data section */
  uint64_t size_bytes;
} mb__tensor;

typedef struct mb__meta {
  char *key;
  mb_meta_type type;
  char *str;
  uint64_t u;
  int64_t i;
  double f;
  uint64_t array_len;
} mb__meta;

struct mb_tensor_file {
  char *path;
  mb_tensor_format format;
  uint32_t version;
  uint32_t alignment;
  uint64_t file_size;
  uint64_t data_offset;
  uint64_t data_bytes;
  mb__tensor *tensors;
  size_t count, cap;
  mb__meta *meta;
  size_t meta_count, meta_cap;
  /* Open-addressing table of tensor index + 1 (0 = empty); hash_cap is a
   * power of two at least twice count, so lookups always terminate. */
  uint32_t *hash;
  size_t hash_cap;
};

/* Where a parser reports faults: every message is "name: fault". */
typedef struct mb__perr {
  const char *name;
  char *err;
  size_t err_len;
} mb__perr;

/* Writes "name: <fmt>" into pe->err and returns code. */
int mb__tf_fail(const mb__perr *pe, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* A printable, quoted-safe, bounded copy of s[0..n) for messages (non-printable
 * bytes become '?', long names end in "..."). */
#define MB__QUOTE_LEN 80
const char *mb__quote(const char *s, size_t n, char out[MB__QUOTE_LEN]);

/* "[5, 6]" (bounded; ends in "...]" if it does not fit). */
void mb__fmt_shape(int ndim, const uint64_t *shape, char *buf, size_t len);

mb_tensor_file *mb__tf_new(const char *name, mb_tensor_format format);

/* Adds a tensor (name copied from name[0..name_len)). MB_ENOMEM. */
int mb__tf_add_tensor(mb_tensor_file *f, const char *name, size_t name_len, mb_dtype dtype,
                      int ndim, const uint64_t *shape, uint64_t rel_offset, uint64_t size_bytes);

/* Adds a metadata entry; key and str are copied (str may be NULL). MB_ENOMEM. */
int mb__tf_add_meta(mb_tensor_file *f, const char *key, size_t key_len, const mb__meta *val,
                    const char *str, size_t str_len);

/* Checks duplicate tensor names and metadata keys and overlapping data,
 * builds the lookup table and the totals. 0, MB_EFORMAT or MB_ENOMEM. */
int mb__tf_finish(mb_tensor_file *f, const mb__perr *pe);

#endif /* MB_TENSOR_FILE_H */
