/*
 * dtype.h - private to libmodelbuf: the element types of safetensors and
 * GGUF files as the formats code them (dtype.c). The parsers use them, and
 * so does `modelbuf mkmodel`, which writes both formats (through
 * mb_internal.h).
 */
#ifndef MB_TENSOR_DTYPE_H
#define MB_TENSOR_DTYPE_H

#include <stddef.h>
#include <stdint.h>

#include "modelbuf/tensors.h"

/* Exact byte size of a tensor of type t and shape: 0, or -1 with a reason
 * in why ("overflows 64 bits", "row of 33 elements is not a multiple of
 * the block size 32"). shape[0] is the row for block types (GGUF order). */
int mb__dtype_bytes(mb_dtype t, int ndim, const uint64_t *shape, uint64_t *bytes, char *why,
                    size_t why_len);

/* The safetensors dtype named by s (e.g. "BF16"); MB_DTYPE_UNKNOWN if none. */
mb_dtype mb__dtype_from_safetensors(const char *s);
/* Is t a safetensors dtype? (mkmodel and the tests use it.) */
int mb__dtype_is_safetensors(mb_dtype t);
/* The dtype of ggml type id; MB_DTYPE_UNKNOWN for unknown or removed ids. */
mb_dtype mb__dtype_from_ggml(uint32_t id);
/* The ggml type id of t; -1 when GGUF has no such type. */
int mb__dtype_to_ggml(mb_dtype t);

#endif /* MB_TENSOR_DTYPE_H */
