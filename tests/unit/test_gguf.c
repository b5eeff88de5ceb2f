/*
 * test_gguf.c - the GGUF header parser: every ggml type's exact byte size,
 * every metadata value type, alignment, mb_tensor_file_open() (including a
 * header larger than its first read) and the writer's GGUF output, then
 * each malformation, checking the error code and that the message names the
 * file and the fault.
 *
 * Files are built here byte by byte with a type table written from the
 * ggml block structs independently of lib/tensor/dtype.c.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "modelbuf/tensors.h"
#include "alloc.h"
#include "mkmodel.h"

static char tmpdir[512];

static int group_setup(void **state) {
  const char *base = getenv("TMPDIR");
  snprintf(tmpdir, sizeof tmpdir, "%s/mb_gguf_XXXXXX", base && *base ? base : "/tmp");
  return mkdtemp(tmpdir) == NULL ? -1 : 0;
}

static int group_teardown(void **state) {
  return rmdir(tmpdir);
}

#define assert_fault(rc, code, err, needle)                                        \
  do {                                                                             \
    assert_int_equal((rc), (code));                                                \
    if (strstr((err), (needle)) == NULL)                                           \
      fail_msg("message \"%s\" does not contain \"%s\"", (err), (needle));        \
  } while (0)

/* ------------------------------------------------------------------------ */
/* A GGUF byte builder                                                       */

typedef struct gb {
  uint8_t *p;
  size_t len, cap;
} gb;

static void gb_bytes(gb *g, const void *b, size_t n) {
  if (g->len + n > g->cap) {
    g->cap = (g->len + n) * 2 + 64;
    g->p = realloc(g->p, g->cap);
    assert_non_null(g->p);
  }
  memcpy(g->p + g->len, b, n);
  g->len += n;
}
static void gb_u8(gb *g, uint8_t v) { gb_bytes(g, &v, 1); }
static void gb_u32(gb *g, uint32_t v) {
  uint8_t b[4];
  for (int i = 0; i < 4; i++)
    b[i] = (uint8_t)(v >> (8 * i));
  gb_bytes(g, b, 4);
}
static void gb_u64(gb *g, uint64_t v) {
  uint8_t b[8];
  for (int i = 0; i < 8; i++)
    b[i] = (uint8_t)(v >> (8 * i));
  gb_bytes(g, b, 8);
}
static void gb_str(gb *g, const char *s) {
  gb_u64(g, strlen(s));
  gb_bytes(g, s, strlen(s));
}
static void gb_header(gb *g, uint32_t version, uint64_t n_tensors, uint64_t n_kv) {
  gb_bytes(g, "GGUF", 4);
  gb_u32(g, version);
  gb_u64(g, n_tensors);
  gb_u64(g, n_kv);
}
static void gb_kv_u32(gb *g, const char *k, uint32_t v) {
  gb_str(g, k);
  gb_u32(g, 4);
  gb_u32(g, v);
}
static void gb_kv_str(gb *g, const char *k, const char *v) {
  gb_str(g, k);
  gb_u32(g, 8);
  gb_str(g, v);
}
/* A tensor info; ne in ggml order (ne[0] innermost). */
static void gb_tensor(gb *g, const char *name, uint32_t ndim, const uint64_t *ne, uint32_t type,
                      uint64_t offset) {
  gb_str(g, name);
  gb_u32(g, ndim);
  for (uint32_t i = 0; i < ndim; i++)
    gb_u64(g, ne[i]);
  gb_u32(g, type);
  gb_u64(g, offset);
}
/* Pads to align, then appends data_size bytes. */
static void gb_data(gb *g, uint32_t align, uint64_t data_size) {
  while (g->len % align != 0)
    gb_u8(g, 0);
  for (uint64_t i = 0; i < data_size; i++)
    gb_u8(g, (uint8_t)i);
}

/* Parses the built image in memory as "m.gguf". */
static int parse(gb *g, mb_tensor_file **out, char *err, size_t err_len) {
  err[0] = '\0';
  return mb_gguf_parse(g->p, g->len, g->len, "m.gguf", out, err, err_len);
}

static void expect_fault(gb *g, int code, const char *needle) {
  char err[512];
  mb_tensor_file *f = (mb_tensor_file *)0x1;
  int rc = parse(g, &f, err, sizeof err);
  assert_null(f);
  assert_fault(rc, code, err, needle);
  if (strncmp(err, "m.gguf: ", 8) != 0)
    fail_msg("message \"%s\" does not name the file", err);
  free(g->p);
  memset(g, 0, sizeof *g);
}

static void write_file(const char *path, const void *data, size_t len) {
  FILE *fp = fopen(path, "wb");
  assert_non_null(fp);
  assert_int_equal(fwrite(data, 1, len, fp), len);
  assert_int_equal(fclose(fp), 0);
}

/* ------------------------------------------------------------------------ */

/* ggml type id, name, elements per block, bytes per block (ggml-common.h). */
static const struct {
  uint32_t id;
  const char *name;
  uint32_t blk, size;
} ggml_types[] = {
  {0, "F32", 1, 4},         {1, "F16", 1, 2},          {2, "Q4_0", 32, 18},
  {3, "Q4_1", 32, 20},      {6, "Q5_0", 32, 22},       {7, "Q5_1", 32, 24},
  {8, "Q8_0", 32, 34},      {9, "Q8_1", 32, 36},       {10, "Q2_K", 256, 84},
  {11, "Q3_K", 256, 110},   {12, "Q4_K", 256, 144},    {13, "Q5_K", 256, 176},
  {14, "Q6_K", 256, 210},   {15, "Q8_K", 256, 292},    {16, "IQ2_XXS", 256, 66},
  {17, "IQ2_XS", 256, 74},  {18, "IQ3_XXS", 256, 98},  {19, "IQ1_S", 256, 50},
  {20, "IQ4_NL", 32, 18},   {21, "IQ3_S", 256, 110},   {22, "IQ2_S", 256, 82},
  {23, "IQ4_XS", 256, 136}, {24, "I8", 1, 1},          {25, "I16", 1, 2},
  {26, "I32", 1, 4},        {27, "I64", 1, 8},         {28, "F64", 1, 8},
  {29, "IQ1_M", 256, 56},   {30, "BF16", 1, 2},        {34, "TQ1_0", 256, 54},
  {35, "TQ2_0", 256, 66},   {39, "MXFP4", 32, 17},
};
#define N_TYPES (sizeof ggml_types / sizeof ggml_types[0])

static void test_every_type(void **state) {
  gb g = {0};
  uint64_t off = 0, offs[N_TYPES], sizes[N_TYPES];
  char path[600], err[512], name[32];

  gb_header(&g, 3, N_TYPES, 1);
  gb_kv_str(&g, "general.architecture", "test");
  for (size_t i = 0; i < N_TYPES; i++) {
    uint64_t ne[3] = {2 * ggml_types[i].blk, 3, 1};
    snprintf(name, sizeof name, "t.%s", ggml_types[i].name);
    offs[i] = off;
    sizes[i] = 6ull * ggml_types[i].size;
    gb_tensor(&g, name, 3, ne, ggml_types[i].id, off);
    off += (sizes[i] + 31) / 32 * 32;
  }
  size_t header = g.len;
  gb_data(&g, 32, off);
  snprintf(path, sizeof path, "%s/every.gguf", tmpdir);
  write_file(path, g.p, g.len);

  mb_tensor_file *f;
  assert_int_equal(mb_tensor_file_open(path, &f, err, sizeof err), 0);
  assert_int_equal(mb_tensor_file_format(f), MB_TENSOR_FORMAT_GGUF);
  assert_int_equal(mb_tensor_file_version(f), 3);
  assert_int_equal(mb_tensor_file_alignment(f), 32);
  assert_int_equal(mb_tensor_file_count(f), N_TYPES);
  assert_int_equal(mb_tensor_file_data_offset(f), (header + 31) / 32 * 32);
  assert_int_equal(mb_tensor_file_size(f), g.len);
  uint64_t total = 0;
  for (size_t i = 0; i < N_TYPES; i++) {
    mb_tensor_info t;
    uint32_t be, bb;
    assert_int_equal(mb_tensor_file_info(f, i, &t), 0);
    assert_string_equal(t.dtype_name, ggml_types[i].name);
    assert_int_equal(mb_dtype_block(t.dtype, &be, &bb), 0);
    assert_int_equal(be, ggml_types[i].blk);
    assert_int_equal(bb, ggml_types[i].size);
    assert_int_equal(t.ndim, 3);
    assert_int_equal(t.shape[0], 2 * ggml_types[i].blk);
    assert_int_equal(t.shape[1], 3);
    assert_int_equal(t.size_bytes, sizes[i]);
    assert_int_equal(t.offset, mb_tensor_file_data_offset(f) + offs[i]);
    total += sizes[i];
  }
  assert_int_equal(mb_tensor_file_data_bytes(f), total);
  mb_tensor_info t;
  assert_int_equal(mb_tensor_file_find(f, "t.Q6_K", &t, NULL), 0);
  assert_int_equal(t.dtype, MB_DTYPE_Q6_K);
  assert_int_equal(t.size_bytes, 6 * 210);
  mb_tensor_file_close(f);
  unlink(path);
  free(g.p);
}

/* Every value type, nested arrays, a custom alignment, version 2. */
static void test_metadata_and_alignment(void **state) {
  gb g = {0};
  char err[512];
  mb_tensor_file *f;
  mb_tensor_meta m;

  gb_header(&g, 2, 1, 15);
  gb_kv_u32(&g, "general.alignment", 64);
  gb_str(&g, "u8"); gb_u32(&g, 0); gb_u8(&g, 200);
  gb_str(&g, "i8"); gb_u32(&g, 1); gb_u8(&g, 0xFE);
  gb_str(&g, "u16"); gb_u32(&g, 2); gb_u8(&g, 0x34); gb_u8(&g, 0x12);
  gb_str(&g, "i16"); gb_u32(&g, 3); gb_u8(&g, 0xFF); gb_u8(&g, 0xFF);
  gb_str(&g, "i32"); gb_u32(&g, 5); gb_u32(&g, (uint32_t)-7);
  gb_str(&g, "f32"); gb_u32(&g, 6); gb_u32(&g, 0x3FC00000); /* 1.5 */
  gb_str(&g, "bool"); gb_u32(&g, 7); gb_u8(&g, 1);
  gb_kv_str(&g, "str", "hello");
  gb_str(&g, "u64"); gb_u32(&g, 10); gb_u64(&g, 1ull << 40);
  gb_str(&g, "i64"); gb_u32(&g, 11); gb_u64(&g, (uint64_t)-5);
  gb_str(&g, "f64"); gb_u32(&g, 12); gb_u64(&g, 0x4004000000000000ull); /* 2.5 */
  gb_str(&g, "strs"); gb_u32(&g, 9); gb_u32(&g, 8); gb_u64(&g, 3);
  gb_str(&g, "a"); gb_str(&g, ""); gb_str(&g, "ccc");
  gb_str(&g, "nested"); gb_u32(&g, 9); gb_u32(&g, 9); gb_u64(&g, 2);
  gb_u32(&g, 0); gb_u64(&g, 3); gb_u8(&g, 1); gb_u8(&g, 2); gb_u8(&g, 3);
  gb_u32(&g, 7); gb_u64(&g, 1); gb_u8(&g, 0);
  gb_str(&g, "empty"); gb_u32(&g, 9); gb_u32(&g, 4); gb_u64(&g, 0);
  uint64_t ne[2] = {4, 2};
  gb_tensor(&g, "w", 2, ne, 0, 0);
  gb_data(&g, 64, 32);

  assert_int_equal(parse(&g, &f, err, sizeof err), 0);
  assert_int_equal(mb_tensor_file_version(f), 2);
  assert_int_equal(mb_tensor_file_alignment(f), 64);
  assert_int_equal(mb_tensor_file_data_offset(f) % 64, 0);
  assert_int_equal(mb_tensor_file_metadata_count(f), 15);
  assert_int_equal(mb_tensor_file_metadata(f, 1, &m), 0);
  assert_string_equal(m.key, "u8");
  assert_int_equal(m.type, MB_META_UINT);
  assert_int_equal(m.u, 200);
  assert_int_equal(mb_tensor_file_metadata(f, 2, &m), 0);
  assert_int_equal(m.type, MB_META_INT);
  assert_int_equal(m.i, -2);
  assert_int_equal(mb_tensor_file_metadata(f, 3, &m), 0);
  assert_int_equal(m.u, 0x1234);
  assert_int_equal(mb_tensor_file_metadata(f, 4, &m), 0);
  assert_int_equal(m.i, -1);
  assert_int_equal(mb_tensor_file_metadata(f, 5, &m), 0);
  assert_int_equal(m.i, -7);
  assert_int_equal(mb_tensor_file_metadata(f, 6, &m), 0);
  assert_int_equal(m.type, MB_META_FLOAT);
  assert_true(m.f == 1.5);
  assert_int_equal(mb_tensor_file_metadata(f, 7, &m), 0);
  assert_int_equal(m.type, MB_META_BOOL);
  assert_int_equal(m.u, 1);
  assert_int_equal(mb_tensor_file_metadata(f, 8, &m), 0);
  assert_int_equal(m.type, MB_META_STRING);
  assert_string_equal(m.str, "hello");
  assert_int_equal(mb_tensor_file_metadata(f, 9, &m), 0);
  assert_int_equal(m.u, 1ull << 40);
  assert_int_equal(mb_tensor_file_metadata(f, 10, &m), 0);
  assert_int_equal(m.i, -5);
  assert_int_equal(mb_tensor_file_metadata(f, 11, &m), 0);
  assert_true(m.f == 2.5);
  assert_int_equal(mb_tensor_file_metadata(f, 12, &m), 0);
  assert_int_equal(m.type, MB_META_ARRAY);
  assert_int_equal(m.array_len, 3);
  assert_int_equal(mb_tensor_file_metadata(f, 13, &m), 0);
  assert_int_equal(m.array_len, 2);
  assert_int_equal(mb_tensor_file_metadata(f, 15, &m), MB_EINVAL);
  mb_tensor_info t;
  assert_int_equal(mb_tensor_file_info(f, 0, &t), 0);
  assert_int_equal(t.size_bytes, 32);
  mb_tensor_file_close(f);
  free(g.p);

  /* no tensors, no metadata: valid */
  memset(&g, 0, sizeof g);
  gb_header(&g, 3, 0, 0);
  assert_int_equal(parse(&g, &f, err, sizeof err), 0);
  assert_int_equal(mb_tensor_file_count(f), 0);
  mb_tensor_file_close(f);
  free(g.p);
}

/* A header bigger than the first read of mb_tensor_file_open (4 MiB). */
static void test_open_large_header(void **state) {
  gb g = {0};
  char path[600], err[512];
  mb_tensor_file *f;
  size_t big = 5u << 20;
  char *s = malloc(big + 1);
  assert_non_null(s);
  memset(s, 'x', big);
  s[big] = '\0';
  gb_header(&g, 3, 1, 1);
  gb_kv_str(&g, "big", s);
  free(s);
  uint64_t ne[1] = {8};
  gb_tensor(&g, "w", 1, ne, 1, 0);
  gb_data(&g, 32, 16);
  snprintf(path, sizeof path, "%s/big.gguf", tmpdir);
  write_file(path, g.p, g.len);
  assert_int_equal(mb_tensor_file_open(path, &f, err, sizeof err), 0);
  assert_int_equal(mb_tensor_file_count(f), 1);
  mb_tensor_meta m;
  assert_int_equal(mb_tensor_file_metadata(f, 0, &m), 0);
  assert_int_equal(strlen(m.str), big);
  mb_tensor_file_close(f);

  /* the same header in memory, cut short of the buffer but not the file */
  assert_fault(mb_gguf_parse(g.p, 1u << 20, g.len, "m.gguf", &f, err, sizeof err), MB_EFORMAT,
               err, "m.gguf: header continues past the 1048576 bytes given");

  /* the file cut in the middle of its header: truncated */
  write_file(path, g.p, (3u << 20) + 5);
  assert_fault(mb_tensor_file_open(path, &f, err, sizeof err), MB_EFORMAT, err,
               "big.gguf: string value of key 'big' length 5242880");
  assert_non_null(strstr(err, "runs past the end of the file"));
  unlink(path);
  free(g.p);
}

static void test_mkmodel_round_trip(void **state) {
  char path[600], err[512];
  cli_mkmodel_opts o = {0};
  cli_mkmodel_result res;
  mb_tensor_file *f;
  mb_tensor_info t;
  mb_tensor_meta m;

  snprintf(path, sizeof path, "%s/mk.gguf", tmpdir);
  o.path = path;
  o.format = MB_TENSOR_FORMAT_GGUF;
  o.size_bytes = 5u << 20;
  o.n_tensors = 30;
  o.seed = 1;
  assert_int_equal(cli_mkmodel_write(&o, &res, err, sizeof err), 0);
  assert_int_equal(res.tensors, 30);
  assert_true(res.data_bytes <= o.size_bytes);
  assert_true(res.data_bytes > o.size_bytes - (64u << 10));
  assert_int_equal(mb_tensor_file_open(path, &f, err, sizeof err), 0);
  assert_int_equal(mb_tensor_file_count(f), 30);
  assert_int_equal(mb_tensor_file_data_bytes(f), res.data_bytes);
  assert_int_equal(mb_tensor_file_size(f), res.file_bytes);
  assert_int_equal(mb_tensor_file_data_offset(f) % 32, 0);
  assert_int_equal(mb_tensor_file_metadata(f, 0, &m), 0);
  assert_string_equal(m.key, "general.architecture");
  assert_string_equal(m.str, "llama");
  assert_int_equal(mb_tensor_file_find(f, "token_embd.weight", &t, NULL), 0);
  assert_int_equal(t.dtype, MB_DTYPE_F16);
  assert_int_equal(mb_tensor_file_find(f, "blk.2.ffn_down.weight", &t, NULL), 0);
  /* ggml order: ne[0] is the row; down is [d, 4d] row-major, so ne = [4d, d] */
  assert_int_equal(t.shape[0], 4 * t.shape[1]);
  assert_int_equal(t.offset % 32, 0);
  assert_int_equal(mb_tensor_file_find(f, "blk.3.attn_q.weight", &t, NULL), MB_ENOENT);
  mb_tensor_file_close(f);

  /* explicit tensor lists: quantized types the safetensors writer refuses */
  cli_mk_tensor q[2] = {{"q", MB_DTYPE_Q4_K, 2, {4, 512}}, {"b", MB_DTYPE_BF16, 1, {3}}};
  assert_int_equal(cli_mkmodel_write_tensors(path, MB_TENSOR_FORMAT_GGUF, q, 2, 9, &res, err,
                                             sizeof err),
                   0);
  assert_int_equal(mb_tensor_file_open(path, &f, err, sizeof err), 0);
  assert_int_equal(mb_tensor_file_find(f, "q", &t, NULL), 0);
  assert_int_equal(t.size_bytes, 4 * 2 * 144);
  mb_tensor_file_close(f);
  assert_int_equal(cli_mkmodel_write_tensors(path, MB_TENSOR_FORMAT_SAFETENSORS, q, 2, 9, &res,
                                             err, sizeof err),
                   MB_EINVAL);
  unlink(path);
}

/* ------------------------------------------------------------------------ */
/* Malformations                                                             */

static void test_bad_magic_version(void **state) {
  gb g = {0};
  gb_bytes(&g, "GGUX", 4);
  gb_u32(&g, 3);
  gb_u64(&g, 0);
  gb_u64(&g, 0);
  expect_fault(&g, MB_EFORMAT, "bad magic 47 47 55 58");
  gb_header(&g, 1, 0, 0);
  expect_fault(&g, MB_EFORMAT, "unsupported GGUF version 1 (only 2 and 3)");
  gb_header(&g, 4, 0, 0);
  expect_fault(&g, MB_EFORMAT, "unsupported GGUF version 4");
  gb_header(&g, 0x03000000, 0, 0);
  expect_fault(&g, MB_EFORMAT, "big-endian GGUF files are not supported");
  gb_bytes(&g, "GGUF\3\0\0", 7);
  expect_fault(&g, MB_EFORMAT, "too short for a GGUF header");
}

static void test_absurd_counts(void **state) {
  gb g = {0};
  gb_header(&g, 3, 1ull << 40, 0);
  gb_data(&g, 1, 100);
  expect_fault(&g, MB_EFORMAT, "tensor count 1099511627776 is more than a 124-byte file can hold");
  gb_header(&g, 3, 0, UINT64_MAX);
  expect_fault(&g, MB_EFORMAT, "metadata count 18446744073709551615 is more than");
  /* an array longer than the file */
  gb_header(&g, 3, 0, 1);
  gb_str(&g, "a");
  gb_u32(&g, 9);
  gb_u32(&g, 4);
  gb_u64(&g, 1ull << 60);
  expect_fault(&g, MB_EFORMAT, "key 'a': array of 1152921504606846976 uint32 elements runs past");
  gb_header(&g, 3, 0, 1);
  gb_str(&g, "a");
  gb_u32(&g, 9);
  gb_u32(&g, 8);
  gb_u64(&g, 1000);
  expect_fault(&g, MB_EFORMAT, "array of 1000 string elements runs past the end of the file");
}

static void test_truncated(void **state) {
  gb g = {0};
  uint64_t ne[1] = {8};
  gb_header(&g, 3, 2, 0);
  gb_tensor(&g, "a", 1, ne, 0, 0);
  gb_tensor(&g, "b", 1, ne, 0, 32);
  g.len -= 6; /* inside b's offset */
  expect_fault(&g, MB_EFORMAT, "truncated: tensor offset at offset");
  /* string length past the end */
  gb_header(&g, 3, 0, 1);
  gb_u64(&g, 1ull << 40);
  gb_bytes(&g, "general.name", 12);
  expect_fault(&g, MB_EFORMAT, "metadata key length 1099511627776 at offset 24 runs past the end");
  gb_header(&g, 3, 1, 0);
  gb_u64(&g, 1000);
  gb_bytes(&g, "w", 1);
  gb_data(&g, 1, 30);
  expect_fault(&g, MB_EFORMAT, "tensor name length 1000 at offset 24 runs past the end");
  gb_header(&g, 3, 0, 1);
  gb_str(&g, "k");
  gb_u32(&g, 8);
  gb_u64(&g, UINT64_MAX);
  expect_fault(&g, MB_EFORMAT, "string value of key 'k' length 18446744073709551615");
  /* data past the end of the file */
  gb_header(&g, 3, 1, 0);
  gb_tensor(&g, "w", 1, ne, 0, 0);
  gb_data(&g, 32, 31);
  expect_fault(&g, MB_EFORMAT, "tensor 'w' data [0, 32) runs past the end of the data section (31 bytes");
  /* an empty tensor, but the file ends before the data section begins */
  uint64_t ne0[1] = {0};
  gb_header(&g, 3, 1, 0);
  gb_tensor(&g, "w", 1, ne0, 0, 0);
  expect_fault(&g, MB_EFORMAT, "data section at offset 64 starts past the end of the file (57 bytes");
  gb_header(&g, 3, 1, 0);
  gb_tensor(&g, "w", 1, ne, 0, UINT64_MAX - 31);
  gb_data(&g, 32, 64);
  expect_fault(&g, MB_EFORMAT, "runs past the end of the data section");
}

static void test_unaligned_and_alignment(void **state) {
  gb g = {0};
  uint64_t ne[1] = {4};
  gb_header(&g, 3, 1, 0);
  gb_tensor(&g, "w", 1, ne, 0, 16);
  gb_data(&g, 32, 64);
  expect_fault(&g, MB_EFORMAT, "tensor 'w' offset 16 is not a multiple of the alignment 32");
  gb_header(&g, 3, 1, 1);
  gb_kv_u32(&g, "general.alignment", 8);
  gb_tensor(&g, "w", 1, ne, 0, 4);
  gb_data(&g, 8, 64);
  expect_fault(&g, MB_EFORMAT, "tensor 'w' offset 4 is not a multiple of the alignment 8");
  gb_header(&g, 3, 0, 1);
  gb_kv_u32(&g, "general.alignment", 48);
  expect_fault(&g, MB_EFORMAT, "general.alignment 48 is not a power of two");
  gb_header(&g, 3, 0, 1);
  gb_kv_u32(&g, "general.alignment", 0);
  expect_fault(&g, MB_EFORMAT, "general.alignment 0 is not a power of two");
  gb_header(&g, 3, 0, 1);
  gb_kv_str(&g, "general.alignment", "32");
  expect_fault(&g, MB_EFORMAT, "general.alignment is string, not uint32");
}

static void test_unknown_type(void **state) {
  gb g = {0};
  uint64_t ne[1] = {32};
  static const uint32_t bad[] = {4, 5, 31, 36, 40, 1000, UINT32_MAX};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char needle[64];
    gb_header(&g, 3, 1, 0);
    gb_tensor(&g, "w", 1, ne, bad[i], 0);
    gb_data(&g, 32, 256);
    snprintf(needle, sizeof needle, "tensor 'w' has unknown ggml type %u", bad[i]);
    expect_fault(&g, MB_EFORMAT, needle);
  }
  /* unknown metadata value types */
  gb_header(&g, 3, 0, 1);
  gb_str(&g, "k");
  gb_u32(&g, 13);
  gb_u32(&g, 0);
  expect_fault(&g, MB_EFORMAT, "key 'k' has unknown value type 13");
  gb_header(&g, 3, 0, 1);
  gb_str(&g, "k");
  gb_u32(&g, 9);
  gb_u32(&g, 77);
  gb_u64(&g, 0);
  expect_fault(&g, MB_EFORMAT, "key 'k': unknown array element type 77");
}

static void test_bad_shapes(void **state) {
  gb g = {0};
  uint64_t ne33[1] = {33}, ne5[5] = {1, 1, 1, 1, 1};
  uint64_t big[2] = {1ull << 62, 1ull << 62}, neg[1] = {1ull << 63};
  gb_header(&g, 3, 1, 0);
  gb_tensor(&g, "w", 1, ne33, 2, 0);
  gb_data(&g, 32, 64);
  expect_fault(&g, MB_EFORMAT,
               "tensor 'w' type Q4_0 x shape [33]: row of 33 elements is not a multiple of the "
               "Q4_0 block size 32");
  gb_header(&g, 3, 1, 0);
  gb_tensor(&g, "w", 5, ne5, 0, 0);
  gb_data(&g, 32, 64);
  expect_fault(&g, MB_EFORMAT, "tensor 'w' has 5 dimensions (GGUF allows at most 4)");
  gb_header(&g, 3, 1, 0);
  gb_tensor(&g, "w", 2, big, 0, 0);
  gb_data(&g, 32, 64);
  expect_fault(&g, MB_EFORMAT, "tensor 'w' type F32 x shape [4611686018427387904, "
                               "4611686018427387904]: byte size overflows 64 bits");
  gb_header(&g, 3, 1, 0);
  gb_tensor(&g, "w", 1, neg, 0, 0);
  gb_data(&g, 32, 64);
  expect_fault(&g, MB_EFORMAT, "tensor 'w' dimension 0 is 9223372036854775808");
}

static void test_overlap_duplicates(void **state) {
  gb g = {0};
  uint64_t ne[1] = {16};
  gb_header(&g, 3, 2, 0);
  gb_tensor(&g, "a", 1, ne, 0, 0);
  gb_tensor(&g, "b", 1, ne, 0, 32);
  gb_data(&g, 32, 128);
  expect_fault(&g, MB_EFORMAT, "tensors 'a' [0, 64) and 'b' [32, 96) overlap");
  gb_header(&g, 3, 2, 0);
  gb_tensor(&g, "a", 1, ne, 0, 0);
  gb_tensor(&g, "a", 1, ne, 0, 64);
  gb_data(&g, 32, 128);
  expect_fault(&g, MB_EFORMAT, "duplicate tensor name 'a'");
  gb_header(&g, 3, 0, 2);
  gb_kv_str(&g, "k", "1");
  gb_kv_str(&g, "k", "2");
  expect_fault(&g, MB_EFORMAT, "duplicate metadata key 'k'");
  gb_header(&g, 3, 0, 1);
  gb_kv_str(&g, "", "1");
  expect_fault(&g, MB_EFORMAT, "empty metadata key at offset 24");
  gb_header(&g, 3, 1, 0);
  gb_u64(&g, 3);
  gb_bytes(&g, "a\0b", 3);
  gb_u32(&g, 1);
  gb_u64(&g, 1);
  gb_u32(&g, 0);
  gb_u64(&g, 0);
  gb_data(&g, 32, 32);
  expect_fault(&g, MB_EFORMAT, "tensor name 'a?b' contains a NUL byte");
}

static void test_bad_values(void **state) {
  gb g = {0};
  gb_header(&g, 3, 0, 1);
  gb_str(&g, "flag");
  gb_u32(&g, 7);
  gb_u8(&g, 2);
  expect_fault(&g, MB_EFORMAT, "key 'flag': bool value 2 is not 0 or 1");
  /* arrays nested five deep */
  gb_header(&g, 3, 0, 1);
  gb_str(&g, "deep");
  gb_u32(&g, 9);
  for (int i = 0; i < 5; i++) {
    gb_u32(&g, 9);
    gb_u64(&g, 1);
  }
  gb_u32(&g, 0);
  gb_u64(&g, 0);
  gb_data(&g, 1, 64);
  expect_fault(&g, MB_EFORMAT, "key 'deep': arrays nested deeper than 4");
}

/* ------------------------------------------------------------------------ */
/* Allocation failures                                                       */

static long alloc_budget = -1;

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

static void test_alloc_failures(void **state) {
  const mb_allocator failing = {fail_malloc, fail_realloc, fail_calloc, free};
  const mb_allocator plain = {malloc, realloc, calloc, free};
  gb g = {0};
  uint64_t ne[1] = {8};
  char err[512];
  mb_tensor_file *f = NULL;
  int rc = MB_ENOMEM;
  long n;
  gb_header(&g, 3, 3, 2);
  gb_kv_str(&g, "general.name", "x");
  gb_kv_u32(&g, "general.alignment", 32);
  gb_tensor(&g, "a", 1, ne, 0, 0);
  gb_tensor(&g, "b", 1, ne, 0, 32);
  gb_tensor(&g, "c", 1, ne, 0, 64);
  gb_data(&g, 32, 96);
  assert_int_equal(mb_set_allocator(&failing), 0);
  for (n = 0; n < 1000 && rc == MB_ENOMEM; n++) {
    alloc_budget = n;
    rc = parse(&g, &f, err, sizeof err);
    if (rc == MB_ENOMEM) {
      assert_null(f);
      assert_non_null(strstr(err, "out of memory"));
    }
  }
  alloc_budget = -1;
  assert_int_equal(mb_set_allocator(&plain), 0);
  assert_int_equal(rc, 0);
  assert_true(n > 5);
  assert_int_equal(mb_tensor_file_count(f), 3);
  mb_tensor_file_close(f);
  free(g.p);
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_every_type),
    cmocka_unit_test(test_metadata_and_alignment),
    cmocka_unit_test(test_open_large_header),
    cmocka_unit_test(test_mkmodel_round_trip),
    cmocka_unit_test(test_bad_magic_version),
    cmocka_unit_test(test_absurd_counts),
    cmocka_unit_test(test_truncated),
    cmocka_unit_test(test_unaligned_and_alignment),
    cmocka_unit_test(test_unknown_type),
    cmocka_unit_test(test_bad_shapes),
    cmocka_unit_test(test_overlap_duplicates),
    cmocka_unit_test(test_bad_values),
    cmocka_unit_test(test_alloc_failures),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
