/*
 * json.h - private to the tensor engine: a small strict JSON (RFC 8259)
 * parser for safetensors headers, so the library needs no JSON dependency.
 *
 * The document is a flat array of nodes linked by index (node 0 is the
 * root). An object's children alternate key (a STRING node) and value, in
 * file order; duplicate keys are left for the caller to judge. Strings are
 * decoded (escapes, surrogate pairs) into one NUL-terminated buffer and may
 * contain NUL bytes (from \u0000): compare str_len with strlen() to tell.
 * Numbers keep their source text. Nesting is limited to MB__JSON_MAX_DEPTH.
 */
#ifndef MB_JSON_H
#define MB_JSON_H

#include <stddef.h>
#include <stdint.h>

#define MB__JSON_MAX_DEPTH 64

typedef enum mb__json_type {
  MB__JSON_NULL = 0,
  MB__JSON_FALSE,
  MB__JSON_TRUE,
  MB__JSON_NUMBER,
  MB__JSON_STRING,
  MB__JSON_ARRAY,
  MB__JSON_OBJECT
} mb__json_type;

typedef struct mb__json_node {
  uint32_t type;
  uint32_t count; /* ARRAY: elements; OBJECT: members (children = 2 x count) */
  uint32_t child; /* first child; 0 = none */
  uint32_t next;  /* next sibling; 0 = none */
  uint32_t off;   /* STRING: offset in strs; NUMBER: offset in the source */
  uint32_t len;   /* STRING: decoded length; NUMBER: text length */
} mb__json_node;

typedef struct mb__json {
  mb__json_node *nodes;
  size_t n, cap;
  char *strs;
  size_t slen, scap;
  const char *src;
} mb__json;

/*
 * Parses src[0..len) (len < 4 GiB) into doc, which the caller zeroes first
 * and frees with mb__json_free() whatever the result. Returns 0, MB_EFORMAT
 * with "byte N: reason" in msg, or MB_ENOMEM.
 */
int mb__json_parse(mb__json *doc, const char *src, size_t len, char *msg, size_t msg_len);
void mb__json_free(mb__json *doc);

/* The decoded text of a STRING node (NUL-terminated). */
const char *mb__json_str(const mb__json *doc, uint32_t node);

/* A NUMBER node written as a plain non-negative integer that fits in
 * 64 bits ("12", not "1.2e1", "-0" or "1e3"): 0 and *out, else -1. */
int mb__json_u64(const mb__json *doc, uint32_t node, uint64_t *out);

#endif /* MB_JSON_H */
