/*
 * test_safetensors.c - the safetensors header parser, its strict JSON, the
 * shared index (lookup, overlaps, duplicates), mb_tensor_file_open() and
 * the synthetic-model writer's safetensors output.
 *
 * Every malformation test checks the error code and that the message names
 * both the file and the fault. Files go to a fresh directory under $TMPDIR
 * (or /tmp) that the group teardown removes.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "modelbuf/tensors.h"
#include "alloc.h"
#include "mkmodel.h"

static char tmpdir[512];

static int group_setup(void **state) {
  const char *base = getenv("TMPDIR");
  snprintf(tmpdir, sizeof tmpdir, "%s/mb_st_XXXXXX", base && *base ? base : "/tmp");
  return mkdtemp(tmpdir) == NULL ? -1 : 0;
}

static int group_teardown(void **state) {
  return rmdir(tmpdir);
}

static void tmp_path(char *buf, size_t len, const char *name) {
  snprintf(buf, len, "%s/%s", tmpdir, name);
}

#define assert_fault(rc, code, err, needle)                                        \
  do {                                                                             \
    assert_int_equal((rc), (code));                                                \
    if (strstr((err), (needle)) == NULL)                                           \
      fail_msg("message \"%s\" does not contain \"%s\"", (err), (needle));        \
  } while (0)

/* A safetensors image: 8-byte length, the header text, data_size zero bytes. */
static uint8_t *image(const char *header, uint64_t data_size, size_t *len) {
  size_t n = strlen(header);
  uint8_t *b = calloc(1, 8 + n + data_size);
  assert_non_null(b);
  for (int i = 0; i < 8; i++)
    b[i] = (uint8_t)((uint64_t)n >> (8 * i));
  memcpy(b + 8, header, n);
  *len = 8 + n + (size_t)data_size;
  return b;
}

/* Parses header + data_size bytes of data in memory as "t.safetensors". */
static int parse(const char *header, uint64_t data_size, mb_tensor_file **out, char *err,
                 size_t err_len) {
  size_t len;
  uint8_t *b = image(header, data_size, &len);
  err[0] = '\0';
  int rc = mb_safetensors_parse(b, len, len, "t.safetensors", out, err, err_len);
  free(b);
  return rc;
}

/* Expects a fault: the code and a message "t.safetensors: ...needle...". */
static void expect_fault(const char *header, uint64_t data_size, int code, const char *needle) {
  char err[512];
  mb_tensor_file *f = (mb_tensor_file *)0x1;
  int rc = parse(header, data_size, &f, err, sizeof err);
  assert_null(f);
  assert_fault(rc, code, err, needle);
  if (strncmp(err, "t.safetensors: ", 15) != 0)
    fail_msg("message \"%s\" does not name the file", err);
}

/* ------------------------------------------------------------------------ */

static const struct {
  const char *name;
  mb_dtype dtype;
  unsigned size;
} st_dtypes[] = {
  {"BOOL", MB_DTYPE_BOOL, 1}, {"U8", MB_DTYPE_U8, 1}, {"I8", MB_DTYPE_I8, 1},
  {"F8_E5M2", MB_DTYPE_F8_E5M2, 1}, {"F8_E4M3", MB_DTYPE_F8_E4M3, 1},
  {"I16", MB_DTYPE_I16, 2}, {"U16", MB_DTYPE_U16, 2}, {"F16", MB_DTYPE_F16, 2},
  {"BF16", MB_DTYPE_BF16, 2}, {"I32", MB_DTYPE_I32, 4}, {"U32", MB_DTYPE_U32, 4},
  {"F32", MB_DTYPE_F32, 4}, {"F64", MB_DTYPE_F64, 8}, {"I64", MB_DTYPE_I64, 8},
  {"U64", MB_DTYPE_U64, 8},
};
#define N_DTYPES (sizeof st_dtypes / sizeof st_dtypes[0])

/* One file holding a [2, 3] tensor of every dtype, written and opened. */
static void test_every_dtype(void **state) {
  char header[4096], path[600], err[512];
  size_t o = 0, len;
  uint64_t off = 0;
  o += (size_t)snprintf(header + o, sizeof header - o, "{");
  for (size_t i = 0; i < N_DTYPES; i++) {
    uint64_t n = 6ull * st_dtypes[i].size;
    o += (size_t)snprintf(header + o, sizeof header - o,
                          "%s\"t_%s\": {\"dtype\": \"%s\", \"shape\": [2, 3], "
                          "\"data_offsets\": [%llu, %llu]}",
                          i ? ", " : "", st_dtypes[i].name, st_dtypes[i].name,
                          (unsigned long long)off, (unsigned long long)(off + n));
    off += n;
  }
  snprintf(header + o, sizeof header - o, "}");
  uint8_t *b = image(header, off, &len);
  tmp_path(path, sizeof path, "every.safetensors");
  FILE *fp = fopen(path, "wb");
  assert_non_null(fp);
  assert_int_equal(fwrite(b, 1, len, fp), len);
  assert_int_equal(fclose(fp), 0);
  free(b);

  mb_tensor_file *f;
  assert_int_equal(mb_tensor_file_open(path, &f, err, sizeof err), 0);
  assert_int_equal(mb_tensor_file_format(f), MB_TENSOR_FORMAT_SAFETENSORS);
  assert_int_equal(mb_tensor_file_count(f), N_DTYPES);
  assert_int_equal(mb_tensor_file_data_offset(f), 8 + strlen(header));
  assert_int_equal(mb_tensor_file_data_bytes(f), off);
  assert_int_equal(mb_tensor_file_size(f), len);
  assert_string_equal(mb_tensor_file_path(f), path);
  off = 0;
  for (size_t i = 0; i < N_DTYPES; i++) {
    mb_tensor_info t;
    char name[32];
    assert_int_equal(mb_tensor_file_info(f, i, &t), 0);
    snprintf(name, sizeof name, "t_%s", st_dtypes[i].name);
    assert_string_equal(t.name, name);
    assert_int_equal(t.dtype, st_dtypes[i].dtype);
    assert_string_equal(t.dtype_name, st_dtypes[i].name);
    assert_int_equal(t.ndim, 2);
    assert_int_equal(t.shape[0], 2);
    assert_int_equal(t.shape[1], 3);
    assert_int_equal(t.size_bytes, 6ull * st_dtypes[i].size);
    assert_int_equal(t.offset, mb_tensor_file_data_offset(f) + off);
    off += t.size_bytes;
    /* lookup by name finds the same tensor */
    mb_tensor_info u;
    size_t idx;
    assert_int_equal(mb_tensor_file_find(f, name, &u, &idx), 0);
    assert_int_equal(idx, i);
    assert_int_equal(u.offset, t.offset);
  }
  mb_tensor_info t;
  assert_int_equal(mb_tensor_file_find(f, "nope", &t, NULL), MB_ENOENT);
  assert_int_equal(mb_tensor_file_info(f, N_DTYPES, &t), MB_EINVAL);
  mb_tensor_file_close(f);
  unlink(path);
}

static void test_metadata_scalar_empty_gaps(void **state) {
  char err[512];
  mb_tensor_file *f;
  mb_tensor_meta m;
  mb_tensor_info t;
  /* A scalar, a zero-size tensor, a gap before 'b', unicode escapes, and
   * whitespace padding after the object (allowed by the spec). */
  const char *h = "{\"__metadata__\": {\"format\": \"pt\", \"note\": \"caf\\u00e9 \\ud83d\\ude00\"},"
                  " \"s\": {\"dtype\": \"F64\", \"shape\": [], \"data_offsets\": [0, 8]},"
                  " \"e\": {\"dtype\": \"F32\", \"shape\": [0, 4], \"data_offsets\": [8, 8]},"
                  " \"b\": {\"shape\": [3], \"data_offsets\": [16, 19], \"dtype\": \"U8\"}}   ";
  assert_int_equal(parse(h, 19, &f, err, sizeof err), 0);
  assert_int_equal(mb_tensor_file_count(f), 3);
  assert_int_equal(mb_tensor_file_metadata_count(f), 2);
  assert_int_equal(mb_tensor_file_metadata(f, 1, &m), 0);
  assert_string_equal(m.key, "note");
  assert_int_equal(m.type, MB_META_STRING);
  assert_string_equal(m.str, "caf\xc3\xa9 \xf0\x9f\x98\x80");
  assert_int_equal(mb_tensor_file_find(f, "s", &t, NULL), 0);
  assert_int_equal(t.ndim, 0);
  assert_int_equal(t.size_bytes, 8);
  assert_int_equal(mb_tensor_file_find(f, "e", &t, NULL), 0);
  assert_int_equal(t.size_bytes, 0);
  assert_int_equal(mb_tensor_file_data_bytes(f), 11);
  assert_int_equal(mb_tensor_file_version(f), 0);
  assert_int_equal(mb_tensor_file_alignment(f), 1);
  mb_tensor_file_close(f);

  /* An empty header object is a valid file with no tensors. */
  assert_int_equal(parse("{}", 0, &f, err, sizeof err), 0);
  assert_int_equal(mb_tensor_file_count(f), 0);
  assert_int_equal(mb_tensor_file_find(f, "x", &t, NULL), MB_ENOENT);
  mb_tensor_file_close(f);
}

/* ------------------------------------------------------------------------ */
/* Malformations                                                             */

static void test_header_length(void **state) {
  char err[512];
  mb_tensor_file *f;
  uint8_t b[16] = {0};

  /* shorter than the length field */
  assert_fault(mb_safetensors_parse(b, 5, 5, "t.safetensors", &f, err, sizeof err),
               MB_EFORMAT, err, "t.safetensors: file is 5 bytes, too short");
  /* length 0 */
  assert_fault(mb_safetensors_parse(b, 16, 16, "t.safetensors", &f, err, sizeof err),
               MB_EFORMAT, err, "header length is 0");
  /* length past the end of the file: a truncated header */
  b[0] = 100;
  assert_fault(mb_safetensors_parse(b, 16, 16, "t.safetensors", &f, err, sizeof err),
               MB_EFORMAT, err, "header length 100 runs past the end of the file (16 bytes");
  /* length over the 100 MB limit */
  uint64_t big = 200000000;
  for (int i = 0; i < 8; i++)
    b[i] = (uint8_t)(big >> (8 * i));
  assert_fault(mb_safetensors_parse(b, 16, 1ull << 40, "t.safetensors", &f, err, sizeof err),
               MB_EFORMAT, err, "header length 200000000 exceeds the limit of 100000000 bytes");
  memset(b, 0xff, 8);
  assert_fault(mb_safetensors_parse(b, 16, 16, "t.safetensors", &f, err, sizeof err),
               MB_EFORMAT, err, "exceeds the limit");
  /* a header that continues past the buffer given (but not the file) */
  b[0] = 100;
  memset(b + 1, 0, 7);
  assert_fault(mb_safetensors_parse(b, 16, 4096, "t.safetensors", &f, err, sizeof err),
               MB_EFORMAT, err, "header continues past the 16 bytes given");
  /* bad arguments */
  assert_int_equal(mb_safetensors_parse(b, 16, 8, "x", &f, err, sizeof err), MB_EINVAL);
  assert_int_equal(mb_safetensors_parse(NULL, 16, 16, "x", &f, err, sizeof err), MB_EINVAL);
  assert_int_equal(mb_safetensors_parse(b, 16, 16, "x", NULL, err, sizeof err), MB_EINVAL);
}

static void test_bad_json(void **state) {
  static const char *const bad[] = {
    "{\"a\": {",                 /* unterminated */
    "{\"a\": 1,}",               /* trailing comma */
    "{'a': 1}",                  /* single quotes */
    "{\"a\": 01}",               /* leading zero */
    "{\"a\": 1} x",              /* trailing garbage */
    "{\"a\": tru}",              /* bad literal */
    "{\"a\": \"\x01\"}",         /* raw control character */
    "{\"a\": \"\xc0\xaf\"}",     /* overlong UTF-8 */
    "{\"a\": \"\xed\xa0\x80\"}", /* UTF-8 surrogate */
    "{\"a\": \"\\ud800\"}",      /* unpaired surrogate escape */
    "{\"a\": \"\\x\"}",          /* bad escape */
    "{/* c */}",                 /* comments */
    "{\"a\" 1}",                 /* missing colon */
    "{\"a\": 1.}",               /* bad fraction */
    "{\"a\": -}",                /* bad number */
    "\xef\xbb\xbf{}",            /* byte-order mark */
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    expect_fault(bad[i], 0, MB_EFORMAT, "header is not valid JSON: byte ");
  expect_fault("[]", 0, MB_EFORMAT, "header is not a JSON object");
  expect_fault("\"x\"", 0, MB_EFORMAT, "header is not a JSON object");

  /* nesting is bounded */
  char deep[400];
  size_t o = (size_t)snprintf(deep, sizeof deep, "{\"a\": ");
  for (int i = 0; i < 100; i++)
    deep[o++] = '[';
  deep[o] = '\0';
  expect_fault(deep, 0, MB_EFORMAT, "nesting deeper than 64");
}

static void test_wrong_dtype(void **state) {
  expect_fault("{\"w\": {\"dtype\": \"F17\", \"shape\": [1], \"data_offsets\": [0, 4]}}", 4,
               MB_EFORMAT, "tensor 'w' has unknown dtype 'F17'");
  /* ggml types are GGUF only */
  expect_fault("{\"w\": {\"dtype\": \"Q4_0\", \"shape\": [32], \"data_offsets\": [0, 18]}}", 18,
               MB_EFORMAT, "tensor 'w' has unknown dtype 'Q4_0'");
  expect_fault("{\"w\": {\"dtype\": 4, \"shape\": [1], \"data_offsets\": [0, 4]}}", 4,
               MB_EFORMAT, "tensor 'w' dtype is not a string");
}

static void test_size_mismatch(void **state) {
  expect_fault("{\"w\": {\"dtype\": \"F32\", \"shape\": [5, 6], \"data_offsets\": [0, 100]}}",
               100, MB_EFORMAT,
               "t.safetensors: tensor 'w' data_offsets [0, 100) do not match dtype F32 x "
               "shape [5, 6] = 120 bytes");
  expect_fault("{\"w\": {\"dtype\": \"BF16\", \"shape\": [], \"data_offsets\": [0, 4]}}", 4,
               MB_EFORMAT, "do not match dtype BF16 x shape [] = 2 bytes");
}

static void test_offsets_past_end(void **state) {
  expect_fault("{\"w\": {\"dtype\": \"F32\", \"shape\": [5, 6], \"data_offsets\": [0, 120]}}",
               50, MB_EFORMAT,
               "tensor 'w' data_offsets [0, 120) run past the end of the data section (50 bytes");
  expect_fault("{\"w\": {\"dtype\": \"U8\", \"shape\": [2], \"data_offsets\": [8, 6]}}", 50,
               MB_EFORMAT, "tensor 'w' data_offsets [8, 6) end before they begin");
  expect_fault("{\"w\": {\"dtype\": \"U8\", \"shape\": [2], \"data_offsets\": [0]}}", 50,
               MB_EFORMAT, "data_offsets is not a pair of non-negative 64-bit integers");
  expect_fault("{\"w\": {\"dtype\": \"U8\", \"shape\": [2], \"data_offsets\": [0, -2]}}", 50,
               MB_EFORMAT, "data_offsets is not a pair");
  expect_fault("{\"w\": {\"dtype\": \"U8\", \"shape\": [1], "
               "\"data_offsets\": [18446744073709551615, 18446744073709551616]}}",
               50, MB_EFORMAT, "data_offsets is not a pair");
}

static void test_overlap(void **state) {
  expect_fault("{\"a\": {\"dtype\": \"F32\", \"shape\": [30], \"data_offsets\": [0, 120]},"
               " \"b\": {\"dtype\": \"F32\", \"shape\": [25], \"data_offsets\": [100, 200]}}",
               200, MB_EFORMAT, "tensors 'a' [0, 120) and 'b' [100, 200) overlap");
  /* the same range twice, listed in reverse order */
  expect_fault("{\"b\": {\"dtype\": \"U8\", \"shape\": [4], \"data_offsets\": [4, 8]},"
               " \"a\": {\"dtype\": \"U8\", \"shape\": [8], \"data_offsets\": [0, 8]}}",
               8, MB_EFORMAT, "tensors 'a' [0, 8) and 'b' [4, 8) overlap");
}

static void test_duplicate_names(void **state) {
  expect_fault("{\"w\": {\"dtype\": \"U8\", \"shape\": [4], \"data_offsets\": [0, 4]},"
               " \"w\": {\"dtype\": \"U8\", \"shape\": [4], \"data_offsets\": [4, 8]}}",
               8, MB_EFORMAT, "duplicate tensor name 'w'");
  expect_fault("{\"__metadata__\": {\"k\": \"1\", \"k\": \"2\"}}", 0, MB_EFORMAT,
               "duplicate metadata key 'k'");
  expect_fault("{\"__metadata__\": {}, \"__metadata__\": {}}", 0, MB_EFORMAT,
               "__metadata__ appears twice");
  expect_fault("{\"w\": {\"dtype\": \"U8\", \"dtype\": \"U8\", \"shape\": [4], "
               "\"data_offsets\": [0, 4]}}",
               8, MB_EFORMAT, "tensor 'w' has field 'dtype' twice");
}

static void test_shape_overflow(void **state) {
  expect_fault("{\"w\": {\"dtype\": \"F32\", \"shape\": [4294967296, 4294967296, 16], "
               "\"data_offsets\": [0, 0]}}",
               0, MB_EFORMAT,
               "tensor 'w' dtype F32 x shape [4294967296, 4294967296, 16]: byte size overflows "
               "64 bits");
  /* a product that fits, times the element size that does not */
  expect_fault("{\"w\": {\"dtype\": \"F64\", \"shape\": [4611686018427387904], "
               "\"data_offsets\": [0, 0]}}",
               0, MB_EFORMAT, "overflows 64 bits");
  expect_fault("{\"w\": {\"dtype\": \"U8\", \"shape\": [18446744073709551616], "
               "\"data_offsets\": [0, 0]}}",
               0, MB_EFORMAT, "shape element 0 is not a non-negative 64-bit integer");
}

static void test_bad_entries(void **state) {
  expect_fault("{\"w\": {\"dtype\": \"U8\", \"shape\": [2, -1], \"data_offsets\": [0, 0]}}", 0,
               MB_EFORMAT, "tensor 'w' shape element 1 is not a non-negative");
  expect_fault("{\"w\": {\"dtype\": \"U8\", \"shape\": [1.5], \"data_offsets\": [0, 0]}}", 0,
               MB_EFORMAT, "shape element 0 is not a non-negative");
  expect_fault("{\"w\": {\"dtype\": \"U8\", \"shape\": [1e3], \"data_offsets\": [0, 0]}}", 0,
               MB_EFORMAT, "shape element 0 is not a non-negative");
  expect_fault("{\"w\": {\"dtype\": \"U8\", \"shape\": 3, \"data_offsets\": [0, 3]}}", 3,
               MB_EFORMAT, "tensor 'w' shape is not an array");
  expect_fault("{\"w\": {\"dtype\": \"U8\", \"shape\": [1,1,1,1,1,1,1,1,1], "
               "\"data_offsets\": [0, 1]}}",
               1, MB_EFORMAT, "tensor 'w' has 9 dimensions (at most 8 supported)");
  expect_fault("{\"w\": {\"dtype\": \"U8\", \"shape\": [1]}}", 1, MB_EFORMAT,
               "tensor 'w' has no data_offsets");
  expect_fault("{\"w\": {\"shape\": [1], \"data_offsets\": [0, 1]}}", 1, MB_EFORMAT,
               "tensor 'w' has no dtype");
  expect_fault("{\"w\": {\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": [0, 1], "
               "\"extra\": 1}}",
               1, MB_EFORMAT, "tensor 'w' has unknown field 'extra'");
  expect_fault("{\"w\": [1]}", 1, MB_EFORMAT, "tensor 'w' is not an object");
  expect_fault("{\"\": {\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": [0, 1]}}", 1,
               MB_EFORMAT, "empty tensor name");
  expect_fault("{\"a\\u0000b\": {\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": [0, 1]}}",
               1, MB_EFORMAT, "tensor name 'a?b' contains a NUL character");
  expect_fault("{\"__metadata__\": {\"k\": 1}}", 0, MB_EFORMAT,
               "__metadata__ value of 'k' is not a string");
  expect_fault("{\"__metadata__\": [\"k\"]}", 0, MB_EFORMAT, "__metadata__ is not an object");
}

/* ------------------------------------------------------------------------ */
/* Files                                                                     */

static void write_file(const char *path, const void *data, size_t len) {
  FILE *fp = fopen(path, "wb");
  assert_non_null(fp);
  assert_int_equal(fwrite(data, 1, len, fp), len);
  assert_int_equal(fclose(fp), 0);
}

static void test_open_errors(void **state) {
  char path[600], err[512];
  mb_tensor_file *f = (mb_tensor_file *)0x1;

  tmp_path(path, sizeof path, "missing.safetensors");
  assert_fault(mb_tensor_file_open(path, &f, err, sizeof err), MB_EIO, err, "cannot open");
  assert_null(f);
  assert_non_null(strstr(err, path));
  assert_fault(mb_tensor_file_open(tmpdir, &f, err, sizeof err), MB_EIO, err,
               "not a regular file");
  assert_int_equal(mb_tensor_file_open(NULL, &f, err, sizeof err), MB_EINVAL);

  /* neither magic nor extension */
  tmp_path(path, sizeof path, "notes.bin");
  write_file(path, "hello, world\n", 13);
  assert_fault(mb_tensor_file_open(path, &f, err, sizeof err), MB_EFORMAT, err,
               "notes.bin: unrecognised format");
  unlink(path);

  /* a truncated file: the header length promises more than is there */
  size_t len;
  uint8_t *b = image("{\"w\": {\"dtype\": \"U8\", \"shape\": [4], \"data_offsets\": [0, 4]}}",
                     4, &len);
  tmp_path(path, sizeof path, "cut.safetensors");
  write_file(path, b, 20);
  assert_fault(mb_tensor_file_open(path, &f, err, sizeof err), MB_EFORMAT, err,
               "runs past the end of the file (20 bytes; truncated header?)");
  assert_non_null(strstr(err, "cut.safetensors: header length"));
  /* the data cut short */
  write_file(path, b, len - 1);
  assert_fault(mb_tensor_file_open(path, &f, err, sizeof err), MB_EFORMAT, err,
               "run past the end of the data section (3 bytes");
  free(b);
  /* a tiny file */
  write_file(path, "{}", 2);
  assert_fault(mb_tensor_file_open(path, &f, err, sizeof err), MB_EFORMAT, err,
               "too short for the 8-byte header length");
  unlink(path);
}

/* ------------------------------------------------------------------------ */
/* Writer round trip                                                         */

static void test_mkmodel_round_trip(void **state) {
  char path[600], err[512];
  cli_mkmodel_opts o = {0};
  cli_mkmodel_result res;
  mb_tensor_file *f;
  mb_tensor_info t;

  tmp_path(path, sizeof path, "mk.safetensors");
  o.path = path;
  o.format = MB_TENSOR_FORMAT_SAFETENSORS;
  o.size_bytes = 3u << 20;
  o.seed = 42;
  assert_int_equal(cli_mkmodel_write(&o, &res, err, sizeof err), 0);
  assert_int_equal(res.tensors, 21); /* 2 layers of 9, embedding, norm, head */
  assert_true(res.data_bytes <= o.size_bytes);
  assert_true(res.data_bytes > o.size_bytes - (64u << 10));
  assert_int_equal(mb_tensor_file_open(path, &f, err, sizeof err), 0);
  assert_int_equal(mb_tensor_file_count(f), res.tensors);
  assert_int_equal(mb_tensor_file_data_bytes(f), res.data_bytes);
  assert_int_equal(mb_tensor_file_size(f), res.file_bytes);
  assert_int_equal(mb_tensor_file_data_offset(f) % 8, 0);
  assert_int_equal(mb_tensor_file_data_offset(f) + res.data_bytes, res.file_bytes);
  assert_int_equal(mb_tensor_file_find(f, "model.embed_tokens.weight", &t, NULL), 0);
  assert_int_equal(t.dtype, MB_DTYPE_F16);
  assert_int_equal(mb_tensor_file_find(f, "model.layers.1.mlp.down_proj.weight", &t, NULL), 0);
  assert_int_equal(t.ndim, 2);
  assert_int_equal(t.shape[1], 4 * t.shape[0]);
  assert_int_equal(mb_tensor_file_find(f, "model.layers.0.input_layernorm.weight", &t, NULL), 0);
  assert_int_equal(t.dtype, MB_DTYPE_F32);
  assert_int_equal(mb_tensor_file_find(f, "lm_head.weight", &t, NULL), 0);
  mb_tensor_file_close(f);

  /* deterministic contents: the same seed gives the same file */
  char path2[600];
  tmp_path(path2, sizeof path2, "mk2.safetensors");
  o.path = path2;
  o.size_bytes = 64u << 10;
  o.n_tensors = 7;
  assert_int_equal(cli_mkmodel_write(&o, &res, err, sizeof err), 0);
  assert_int_equal(res.tensors, 7);
  o.path = path;
  assert_int_equal(cli_mkmodel_write(&o, &res, err, sizeof err), 0);
  FILE *a = fopen(path, "rb"), *b = fopen(path2, "rb");
  assert_non_null(a);
  assert_non_null(b);
  static uint8_t ba[1 << 17], bb[1 << 17];
  size_t na = fread(ba, 1, sizeof ba, a), nb = fread(bb, 1, sizeof bb, b);
  fclose(a);
  fclose(b);
  assert_int_equal(na, nb);
  assert_memory_equal(ba, bb, na);
  /* another seed changes the data */
  o.seed = 43;
  assert_int_equal(cli_mkmodel_write(&o, &res, err, sizeof err), 0);
  a = fopen(path, "rb");
  assert_non_null(a);
  na = fread(ba, 1, sizeof ba, a);
  fclose(a);
  assert_int_equal(na, nb);
  assert_memory_not_equal(ba, bb, na);
  unlink(path);
  unlink(path2);

  /* an unwritable path fails with MB_EIO naming it */
  tmp_path(path, sizeof path, "no/such/dir.safetensors");
  o.path = path;
  assert_fault(cli_mkmodel_write(&o, &res, err, sizeof err), MB_EIO, err, "cannot create");
}

/* ------------------------------------------------------------------------ */
/* Allocation failures                                                       */

static long alloc_budget; /* allocations left before failing; -1 = never fail */

static void *fail_malloc(size_t n) {
  if (alloc_budget == 0)
    return NULL;
  if (alloc_budget > 0)
    alloc_budget--;
  return malloc(n);
}
static void *fail_realloc(void *p, size_t n) {
  if (alloc_budget == 0)
    return NULL;
  if (alloc_budget > 0)
    alloc_budget--;
  return realloc(p, n);
}
static void *fail_calloc(size_t c, size_t n) {
  if (alloc_budget == 0)
    return NULL;
  if (alloc_budget > 0)
    alloc_budget--;
  return calloc(c, n);
}

/* Fails the 1st, 2nd, ... allocation until the parse succeeds: each
 * failure must be MB_ENOMEM with nothing leaked (ASan checks). */
static void test_alloc_failures(void **state) {
  const mb_allocator failing = {fail_malloc, fail_realloc, fail_calloc, free};
  const mb_allocator plain = {malloc, realloc, calloc, free};
  const char *h = "{\"__metadata__\": {\"a\": \"1\", \"b\": \"2\"},"
                  " \"x\": {\"dtype\": \"U8\", \"shape\": [4], \"data_offsets\": [0, 4]},"
                  " \"y\": {\"dtype\": \"U8\", \"shape\": [4], \"data_offsets\": [4, 8]}}";
  char err[512];
  mb_tensor_file *f;
  int rc = MB_ENOMEM;
  long n;
  assert_int_equal(mb_set_allocator(&failing), 0);
  for (n = 0; n < 1000 && rc == MB_ENOMEM; n++) {
    alloc_budget = n;
    rc = parse(h, 8, &f, err, sizeof err);
    if (rc == MB_ENOMEM)
      assert_null(f);
  }
  alloc_budget = -1;
  assert_int_equal(mb_set_allocator(&plain), 0);
  assert_int_equal(rc, 0);
  assert_true(n > 3);
  assert_int_equal(mb_tensor_file_count(f), 2);
  mb_tensor_file_close(f);
}

static void test_dtype_api(void **state) {
  uint32_t be, bb;
  assert_string_equal(mb_dtype_name(MB_DTYPE_Q4_K), "Q4_K");
  assert_string_equal(mb_dtype_name((mb_dtype)9999), "UNKNOWN");
  assert_int_equal(mb_dtype_block(MB_DTYPE_Q4_0, &be, &bb), 0);
  assert_int_equal(be, 32);
  assert_int_equal(bb, 18);
  assert_int_equal(mb_dtype_block(MB_DTYPE_UNKNOWN, &be, &bb), MB_EINVAL);
  assert_string_equal(mb_tensor_format_name(MB_TENSOR_FORMAT_SAFETENSORS), "safetensors");
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_every_dtype),
    cmocka_unit_test(test_metadata_scalar_empty_gaps),
    cmocka_unit_test(test_header_length),
    cmocka_unit_test(test_bad_json),
    cmocka_unit_test(test_wrong_dtype),
    cmocka_unit_test(test_size_mismatch),
    cmocka_unit_test(test_offsets_past_end),
    cmocka_unit_test(test_overlap),
    cmocka_unit_test(test_duplicate_names),
    cmocka_unit_test(test_shape_overflow),
    cmocka_unit_test(test_bad_entries),
    cmocka_unit_test(test_open_errors),
    cmocka_unit_test(test_mkmodel_round_trip),
    cmocka_unit_test(test_alloc_failures),
    cmocka_unit_test(test_dtype_api),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
