/*
 * tensor_parse.h - private to the tensor engine: the two header parsers
 * behind mb_safetensors_parse(), mb_gguf_parse() and mb_tensor_file_open().
 *
 * Both parse buf[0..len), the first len bytes of a file of file_size bytes,
 * and report faults through pe ("name: fault"). On success *out is a new
 * handle; on failure *out is NULL and nothing is left allocated.
 */
#ifndef MB_TENSOR_PARSE_H
#define MB_TENSOR_PARSE_H

#include <stddef.h>
#include <stdint.h>

#include "tensor_file.h"

int mb__safetensors_parse(const uint8_t *buf, size_t len, uint64_t file_size,
                          const mb__perr *pe, mb_tensor_file **out);

/* *need_more is set when the header continues past len but within
 * file_size: mb_tensor_file_open() then reads more and parses again. */
int mb__gguf_parse(const uint8_t *buf, size_t len, uint64_t file_size, const mb__perr *pe,
                   mb_tensor_file **out, int *need_more);

#endif /* MB_TENSOR_PARSE_H */
