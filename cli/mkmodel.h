/*
 * mkmodel.h - the modelbuf tool's writer of synthetic but valid weight
 * files (safetensors or GGUF) with layer-like tensor names and shapes and
 * deterministic pseudo-random contents. `modelbuf mkmodel` and the tests
 * share it (they link cli/mkmodel.c), so what the tool writes is what the
 * parsers are tested against. It codes dtypes as the formats do through
 * the library's internal interface (mb_internal.h).
 */
#ifndef CLI_MKMODEL_H
#define CLI_MKMODEL_H

#include <stddef.h>
#include <stdint.h>

#include "modelbuf/tensors.h"

#define CLI_MK_NAME_LEN 96

/* One tensor to write. shape is row-major (outermost first) for both
 * formats; the GGUF writer stores it in ggml order. */
typedef struct cli_mk_tensor {
  char name[CLI_MK_NAME_LEN];
  mb_dtype dtype;
  int ndim; /* 0 .. 4 */
  uint64_t shape[4];
} cli_mk_tensor;

typedef struct cli_mkmodel_opts {
  const char *path;
  mb_tensor_format format;
  uint64_t size_bytes; /* target bytes of tensor data */
  uint32_t n_tensors;  /* exact tensor count; 0 = chosen from the size */
  uint64_t seed;
} cli_mkmodel_opts;

typedef struct cli_mkmodel_result {
  size_t tensors;
  uint64_t data_bytes; /* sum of tensor sizes */
  uint64_t file_bytes;
} cli_mkmodel_result;

/*
 * Plans a llama-like model of about o->size_bytes of data (within one
 * embedding row, unless the size is below the smallest model of that many
 * tensors): token embedding, n layers of attention (q, k, v, o) and MLP
 * (gate, up, down) in F16 with F32 norms, a final norm and the output head.
 * Names follow Hugging Face for safetensors ("model.layers.3.mlp.up_proj.weight")
 * and llama.cpp for GGUF ("blk.3.ffn_up.weight"). On success *out is an
 * array of *n tensors the caller frees with free(). MB_EINVAL, MB_ENOMEM.
 */
int cli_mkmodel_plan(const cli_mkmodel_opts *o, cli_mk_tensor **out, size_t *n);

/*
 * Writes the tensors to path in format with contents drawn from seed
 * (F16/BF16/F32/F64 values are small finite numbers; other types random
 * bytes). Large buffered writes; the file is removed on failure. res may be
 * NULL. Errors: MB_EINVAL (a dtype the format cannot hold, a shape GGUF
 * cannot store), MB_EIO ("path: reason"), MB_ENOMEM.
 */
int cli_mkmodel_write_tensors(const char *path, mb_tensor_format format,
                              const cli_mk_tensor *tensors, size_t n, uint64_t seed,
                              cli_mkmodel_result *res, char *err, size_t err_len);

/* cli_mkmodel_plan then cli_mkmodel_write_tensors. */
int cli_mkmodel_write(const cli_mkmodel_opts *o, cli_mkmodel_result *res, char *err,
                      size_t err_len);

#endif /* CLI_MKMODEL_H */
