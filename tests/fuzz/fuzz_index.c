/*
 * fuzz_index.c - libFuzzer target for the Hugging Face index reader
 * (mb_tensors_index_parse: the strict JSON parser, then the weight_map's
 * shard names). A successful parse must give distinct, sorted, plain file
 * names.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "modelbuf/tensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char err[256];
  char **shards = NULL;
  size_t n = 0;
  if (mb_tensors_index_parse(data, size, "fuzz.index.json", &shards, &n, err, sizeof err) != 0)
    return 0;
  for (size_t i = 0; i < n; i++) {
    if (shards[i][0] == '\0' || strchr(shards[i], '/') != NULL ||
        (i > 0 && strcmp(shards[i - 1], shards[i]) >= 0))
      abort();
  }
  mb_tensors_paths_free(shards, n);
  return 0;
}
