/*
 * fuzz_gguf.c - libFuzzer target for the GGUF header parser
 * (v2, v3). The input is a whole file; a second parse
 * treats it as the head of a much larger file, which exercises the range
 * checks against a file size the data does not reach. Every accessor is
 * called on a successful parse.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "modelbuf/tensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void walk(mb_tensor_file *f) {
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

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char err[256];
  mb_tensor_file *f;
  if (mb_gguf_parse(data, size, size, "fuzz.gguf", &f, err, sizeof err) == 0)
    walk(f);
  if (mb_gguf_parse(data, size, (uint64_t)size + (1u << 20), "fuzz.gguf", &f, err,
                           sizeof err) == 0)
    walk(f);
  return 0;
}
