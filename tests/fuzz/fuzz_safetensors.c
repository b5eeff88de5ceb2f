/*
 * fuzz_safetensors.c - libFuzzer target for the safetensors header parser
 * (and its strict JSON parser). The input is a whole file; a second parse
 * treats it as the head of a much larger file, which exercises the range
 * checks against a file size the data does not reach. Every accessor is
 * called on a successful parse.
 */
#include <stddef.h>
#include <stdint.h>

#include "modelbuf/tensors.h"
#include "tensor_walk.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char err[256];
  mb_tensor_file *f;
  if (mb_safetensors_parse(data, size, size, "fuzz.safetensors", &f, err, sizeof err) == 0)
    fuzz_tensor_walk(f);
  if (mb_safetensors_parse(data, size, (uint64_t)size + (1u << 20), "fuzz.safetensors", &f, err,
                           sizeof err) == 0)
    fuzz_tensor_walk(f);
  return 0;
}
