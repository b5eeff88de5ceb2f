/*
 * tensor_walk.h - shared by the weight-file fuzz targets: calls every
 * accessor of a parsed file, traps on an inconsistency, closes it.
 */
#ifndef FUZZ_TENSOR_WALK_H
#define FUZZ_TENSOR_WALK_H

#include <stddef.h>
#include <string.h>

#include "modelbuf/tensors.h"

static inline void fuzz_tensor_walk(mb_tensor_file *f) {
  size_t n = mb_tensor_file_count(f);
  for (size_t i = 0; i < n; i++) {
    mb_tensor_info t, u;
    if (mb_tensor_file_info(f, i, &t) != 0)
      __builtin_trap();
    if (mb_tensor_file_find(f, t.name, &u, NULL) != 0 || u.offset != t.offset)
      __builtin_trap();
    if (t.offset + t.size_bytes > mb_tensor_file_size(f))
      __builtin_trap();
  }
  for (size_t i = 0; i < mb_tensor_file_metadata_count(f); i++) {
    mb_tensor_meta m;
    if (mb_tensor_file_metadata(f, i, &m) != 0 || strlen(m.key) == (size_t)-1)
      __builtin_trap();
  }
  mb_tensor_file_close(f);
}

#endif /* FUZZ_TENSOR_WALK_H */
