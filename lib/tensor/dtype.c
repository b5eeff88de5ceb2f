/*
 * dtype.c - the element types of safetensors and GGUF files: names, block
 * geometry, the mapping to and from ggml type ids, and the exact byte size
 * of a tensor computed without overflow.
 *
 * Block sizes are those of ggml's block structs (ggml-common.h): a Q4_0
 * block is 32 elements in 18 bytes (an F16 scale and 16 bytes of nibbles),
 * a K-quant block is 256 elements. Removed ggml ids (4, 5, 31-33, 36-38)
 * are unknown, as they are to llama.cpp.
 */
#include <stdio.h>
#include <string.h>

#include "dtype.h"

typedef struct dtype_desc {
  const char *name;
  uint32_t block_elems;
  uint32_t block_bytes;
  int safetensors; /* a safetensors dtype */
  int ggml;        /* ggml type id, -1 none */
} dtype_desc;

static const dtype_desc dtypes[MB_DTYPE_COUNT_] = {
  [MB_DTYPE_UNKNOWN] = {"UNKNOWN", 0, 0, 0, -1},
  [MB_DTYPE_BOOL] = {"BOOL", 1, 1, 1, -1},
  [MB_DTYPE_U8] = {"U8", 1, 1, 1, -1},
  [MB_DTYPE_I8] = {"I8", 1, 1, 1, 24},
  [MB_DTYPE_F8_E5M2] = {"F8_E5M2", 1, 1, 1, -1},
  [MB_DTYPE_F8_E4M3] = {"F8_E4M3", 1, 1, 1, -1},
  [MB_DTYPE_I16] = {"I16", 1, 2, 1, 25},
  [MB_DTYPE_U16] = {"U16", 1, 2, 1, -1},
  [MB_DTYPE_F16] = {"F16", 1, 2, 1, 1},
  [MB_DTYPE_BF16] = {"BF16", 1, 2, 1, 30},
  [MB_DTYPE_I32] = {"I32", 1, 4, 1, 26},
  [MB_DTYPE_U32] = {"U32", 1, 4, 1, -1},
  [MB_DTYPE_F32] = {"F32", 1, 4, 1, 0},
  [MB_DTYPE_F64] = {"F64", 1, 8, 1, 28},
  [MB_DTYPE_I64] = {"I64", 1, 8, 1, 27},
  [MB_DTYPE_U64] = {"U64", 1, 8, 1, -1},
  [MB_DTYPE_Q4_0] = {"Q4_0", 32, 18, 0, 2},
  [MB_DTYPE_Q4_1] = {"Q4_1", 32, 20, 0, 3},
  [MB_DTYPE_Q5_0] = {"Q5_0", 32, 22, 0, 6},
  [MB_DTYPE_Q5_1] = {"Q5_1", 32, 24, 0, 7},
  [MB_DTYPE_Q8_0] = {"Q8_0", 32, 34, 0, 8},
  [MB_DTYPE_Q8_1] = {"Q8_1", 32, 36, 0, 9},
  [MB_DTYPE_Q2_K] = {"Q2_K", 256, 84, 0, 10},
  [MB_DTYPE_Q3_K] = {"Q3_K", 256, 110, 0, 11},
  [MB_DTYPE_Q4_K] = {"Q4_K", 256, 144, 0, 12},
  [MB_DTYPE_Q5_K] = {"Q5_K", 256, 176, 0, 13},
  [MB_DTYPE_Q6_K] = {"Q6_K", 256, 210, 0, 14},
  [MB_DTYPE_Q8_K] = {"Q8_K", 256, 292, 0, 15},
  [MB_DTYPE_IQ2_XXS] = {"IQ2_XXS", 256, 66, 0, 16},
  [MB_DTYPE_IQ2_XS] = {"IQ2_XS", 256, 74, 0, 17},
  [MB_DTYPE_IQ3_XXS] = {"IQ3_XXS", 256, 98, 0, 18},
  [MB_DTYPE_IQ1_S] = {"IQ1_S", 256, 50, 0, 19},
  [MB_DTYPE_IQ4_NL] = {"IQ4_NL", 32, 18, 0, 20},
  [MB_DTYPE_IQ3_S] = {"IQ3_S", 256, 110, 0, 21},
  [MB_DTYPE_IQ2_S] = {"IQ2_S", 256, 82, 0, 22},
  [MB_DTYPE_IQ4_XS] = {"IQ4_XS", 256, 136, 0, 23},
  [MB_DTYPE_IQ1_M] = {"IQ1_M", 256, 56, 0, 29},
  [MB_DTYPE_TQ1_0] = {"TQ1_0", 256, 54, 0, 34},
  [MB_DTYPE_TQ2_0] = {"TQ2_0", 256, 66, 0, 35},
  [MB_DTYPE_MXFP4] = {"MXFP4", 32, 17, 0, 39},
};

static int known(mb_dtype t) {
  return (int)t > 0 && (int)t < MB_DTYPE_COUNT_;
}

const char *mb_dtype_name(mb_dtype t) {
  return known(t) ? dtypes[t].name : "UNKNOWN";
}

int mb_dtype_block(mb_dtype t, uint32_t *block_elems, uint32_t *block_bytes) {
  if (!known(t))
    return MB_EINVAL;
  if (block_elems != NULL)
    *block_elems = dtypes[t].block_elems;
  if (block_bytes != NULL)
    *block_bytes = dtypes[t].block_bytes;
  return 0;
}

const char *mb_tensor_format_name(mb_tensor_format f) {
  switch (f) {
  case MB_TENSOR_FORMAT_SAFETENSORS:
    return "safetensors";
  case MB_TENSOR_FORMAT_GGUF:
    return "gguf";
  default:
    return "unknown";
  }
}

mb_dtype mb__dtype_from_safetensors(const char *s) {
  for (int t = 1; t < MB_DTYPE_COUNT_; t++)
    if (dtypes[t].safetensors && strcmp(dtypes[t].name, s) == 0)
      return (mb_dtype)t;
  return MB_DTYPE_UNKNOWN;
}

int mb__dtype_is_safetensors(mb_dtype t) {
  return known(t) && dtypes[t].safetensors;
}

mb_dtype mb__dtype_from_ggml(uint32_t id) {
  for (int t = 1; t < MB_DTYPE_COUNT_; t++)
    if (dtypes[t].ggml >= 0 && (uint32_t)dtypes[t].ggml == id)
      return (mb_dtype)t;
  return MB_DTYPE_UNKNOWN;
}

int mb__dtype_to_ggml(mb_dtype t) {
  return known(t) ? dtypes[t].ggml : -1;
}

int mb__dtype_bytes(mb_dtype t, int ndim, const uint64_t *shape, uint64_t *bytes, char *why,
                    size_t why_len) {
  if (!known(t)) {
    snprintf(why, why_len, "unknown dtype");
    return -1;
  }
  const dtype_desc *d = &dtypes[t];
  uint64_t row = ndim > 0 ? shape[0] : 1;
  if (row % d->block_elems != 0) {
    snprintf(why, why_len,
             "row of %llu elements is not a multiple of the %s block size %u",
             (unsigned long long)row, d->name, d->block_elems);
    return -1;
  }
  /* Blocks, then bytes; a zero dimension makes the product 0 whatever the
   * other dimensions are, but each step is still checked. */
  uint64_t blocks = row / d->block_elems;
  for (int i = 1; i < ndim; i++) {
    if (shape[i] != 0 && blocks > UINT64_MAX / shape[i]) {
      snprintf(why, why_len, "byte size overflows 64 bits");
      return -1;
    }
    blocks *= shape[i];
  }
  if (blocks > UINT64_MAX / d->block_bytes) {
    snprintf(why, why_len, "byte size overflows 64 bits");
    return -1;
  }
  *bytes = blocks * d->block_bytes;
  return 0;
}
