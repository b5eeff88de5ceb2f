/*
 * test_embed.c - the example embedding plugin (examples/plugins/embed.c)
 * end to end on the host device: real synthetic weight files in both
 * formats, the real plugin .so, the real core. Every row it returns is
 * compared with the table read straight from the file and converted here;
 * offload and restore keep the answers; a model of two files finds its
 * table in the second; bad requests get 400/404.
 */
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <setjmp.h>
#include <cmocka.h>

#include <jansson.h>

#include "modelbuf/modelbuf.h"
#include "modelbuf/plugin.h"
#include "modelbuf/tensors.h"
#include "mkmodel.h"

#ifndef EMBED_PLUGIN
#error EMBED_PLUGIN must name the example plugin
#endif

static char path[96];

static float f16(uint16_t h) {
  uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff;
  float f = exp == 0 ? ldexpf((float)man, -24) : ldexpf((float)(man | 0x400), (int)exp - 25);
  return (h >> 15) ? -f : f;
}

/* Row `id` of the table, read from the file. */
static void file_row(const char *name, uint64_t id, uint64_t dim, uint64_t offset, float *out) {
  FILE *f = fopen(name, "rb");
  assert_non_null(f);
  assert_int_equal(fseek(f, (long)(offset + id * dim * 2), SEEK_SET), 0);
  for (uint64_t j = 0; j < dim; j++) {
    uint16_t h;
    assert_int_equal(fread(&h, 2, 1, f), 1);
    out[j] = f16(h);
  }
  fclose(f);
}

static json_t *call(void *inst, const char *method, const char *p, const char *body, int status) {
  mb_plugin_request req = {method, p, "", NULL, 0, (const uint8_t *)body,
                           body ? strlen(body) : 0};
  mb_plugin_response resp;
  char err[256];
  assert_int_equal(mb_plugin_handle(inst, &req, &resp, err, sizeof(err)), 0);
  if (resp.status != status)
    fail_msg("%s %s: status %d, want %d: %.*s", method, p, resp.status, status,
             (int)resp.body_len, (const char *)resp.body);
  json_error_t jerr;
  json_t *doc = json_loadb(resp.body, resp.body_len, 0, &jerr);
  mb_plugin_response_free(inst, &resp);
  assert_non_null(doc);
  return doc;
}

static void check_rows(void *inst, mb_tensor_format fmt) {
  mb_tensor_file *tf;
  char err[256];
  assert_int_equal(mb_tensor_file_open(path, &tf, err, sizeof(err)), 0);
  mb_tensor_info t;
  assert_int_equal(mb_tensor_file_find(tf, fmt == MB_TENSOR_FORMAT_GGUF ? "token_embd.weight"
                                                                          : "model.embed_tokens.weight",
                                       &t, NULL),
                   0);
  uint64_t vocab = fmt == MB_TENSOR_FORMAT_GGUF ? t.shape[1] : t.shape[0];
  uint64_t dim = fmt == MB_TENSOR_FORMAT_GGUF ? t.shape[0] : t.shape[1];
  uint64_t offset = t.offset;
  mb_tensor_file_close(tf);

  json_t *info = call(inst, "GET", "/info", NULL, 200);
  assert_int_equal(json_integer_value(json_object_get(info, "vocab")), vocab);
  assert_int_equal(json_integer_value(json_object_get(info, "dim")), dim);
  assert_string_equal(json_string_value(json_object_get(info, "dtype")), "F16");
  json_decref(info);

  char body[128];
  uint64_t ids[] = {0, 5, vocab - 1};
  snprintf(body, sizeof(body), "{\"input\": [%llu, %llu, %llu]}", (unsigned long long)ids[0],
           (unsigned long long)ids[1], (unsigned long long)ids[2]);
  json_t *doc = call(inst, "POST", "/embed", body, 200);
  json_t *rows = json_object_get(doc, "embeddings");
  assert_int_equal(json_array_size(rows), 3);
  float *want = calloc(dim, sizeof(float)), *want2 = calloc(dim, sizeof(float));
  assert_non_null(want);
  assert_non_null(want2);
  for (size_t k = 0; k < 3; k++) {
    file_row(path, ids[k], dim, offset, want);
    json_t *row = json_array_get(rows, k);
    assert_int_equal(json_array_size(row), dim);
    for (uint64_t j = 0; j < dim; j++)
      assert_true((float)json_real_value(json_array_get(row, j)) == want[j]);
  }
  json_decref(doc);

  /* OpenAI shape: "ab" is the mean of the rows of 'a' and 'b'. */
  doc = call(inst, "POST", "/v1/embeddings", "{\"input\": \"ab\", \"model\": \"e\"}", 200);
  assert_string_equal(json_string_value(json_object_get(doc, "object")), "list");
  json_t *emb = json_object_get(json_array_get(json_object_get(doc, "data"), 0), "embedding");
  file_row(path, 'a' % vocab, dim, offset, want);
  file_row(path, 'b' % vocab, dim, offset, want2);
  for (uint64_t j = 0; j < dim; j++) {
    double got = json_real_value(json_array_get(emb, j));
    double exp = ((double)want[j] + (double)want2[j]) / 2.0;
    assert_true(fabs(got - exp) < 1e-6);
  }
  json_decref(doc);
  free(want);
  free(want2);

  /* Bad requests. */
  json_decref(call(inst, "POST", "/embed", "{\"input\": [", 400));
  snprintf(body, sizeof(body), "{\"input\": [%llu]}", (unsigned long long)vocab);
  json_decref(call(inst, "POST", "/embed", body, 400));
  json_decref(call(inst, "POST", "/embed", "{\"input\": \"text\"}", 400));
  json_decref(call(inst, "POST", "/v1/embeddings", "{\"input\": 7}", 400));
  json_decref(call(inst, "GET", "/embed", NULL, 405));
  json_decref(call(inst, "GET", "/nowhere", NULL, 404));
}

/* With shard, the model's first file holds only a norm (no 2-D tensor) and
 * the table is found in its second file, as in a sharded checkpoint. */
static void run_format(mb_tensor_format fmt, int shard) {
  char err[256], first[96] = "";
  snprintf(path, sizeof(path), "/tmp/mb-embed-XXXXXX");
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  close(fd);
  cli_mkmodel_opts mo = {path, fmt, 2u << 20, 0, 7};
  assert_int_equal(cli_mkmodel_write(&mo, NULL, err, sizeof(err)), 0);

  mb_plugin_lib *lib;
  assert_int_equal(mb_plugin_open(EMBED_PLUGIN, &lib, err, sizeof(err)), 0);
  mb_ctx *ctx;
  mb_ctx_opts co;
  mb_ctx_opts_init(&co);
  co.keep_alive_ms = MB_FOREVER;
  assert_int_equal(mb_ctx_new(&co, &ctx, err, sizeof(err)), 0);
  assert_int_equal(mb_device_add(ctx, NULL, NULL, err, sizeof(err)), 0);
  if (shard) {
    snprintf(first, sizeof(first), "/tmp/mb-embed-XXXXXX");
    fd = mkstemp(first);
    assert_true(fd >= 0);
    close(fd);
    cli_mk_tensor t = {"model.norm.weight", MB_DTYPE_F32, 1, {64, 0, 0, 0}};
    assert_int_equal(cli_mkmodel_write_tensors(first, fmt, &t, 1, 1, NULL, err, sizeof(err)), 0);
  }
  const char *files[] = {shard ? first : path, path};
  void *inst;
  assert_int_equal(mb_model_add_plugin(ctx, "e", lib, files, shard ? 2 : 1, NULL, NULL, &inst,
                                       err, sizeof(err)),
                   0);
  mb_plugin_close(lib);

  mb_lease l;
  assert_int_equal(mb_acquire(ctx, "e", NULL, &l, err, sizeof(err)), 0);
  check_rows(inst, fmt);
  assert_int_equal(mb_release(ctx, l), 0);
  assert_int_equal(mb_offload(ctx, "e", err, sizeof(err)), 0);
  mb_status st;
  assert_int_equal(mb_model_status(ctx, "e", &st), 0);
  assert_true(st.host_bytes > 0);
  assert_int_equal(st.vram_bytes, 0);
  assert_int_equal(mb_acquire(ctx, "e", NULL, &l, err, sizeof(err)), 0);
  check_rows(inst, fmt); /* restored: the same answers */
  assert_int_equal(mb_release(ctx, l), 0);
  assert_int_equal(mb_ctx_free(ctx), 0);
  unlink(path);
  if (shard)
    unlink(first);
}

static void test_safetensors(void **state) {
  (void)state;
  run_format(MB_TENSOR_FORMAT_SAFETENSORS, 0);
}

static void test_gguf(void **state) {
  (void)state;
  run_format(MB_TENSOR_FORMAT_GGUF, 0);
}

static void test_sharded(void **state) {
  (void)state;
  run_format(MB_TENSOR_FORMAT_SAFETENSORS, 1);
  run_format(MB_TENSOR_FORMAT_GGUF, 1);
}

/* A file with no embedding table: the load fails naming the file. */
static void test_no_table(void **state) {
  (void)state;
  char err[256];
  snprintf(path, sizeof(path), "/tmp/mb-embed-XXXXXX");
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  close(fd);
  cli_mk_tensor t = {"norm.weight", MB_DTYPE_F32, 1, {64, 0, 0, 0}};
  assert_int_equal(cli_mkmodel_write_tensors(path, MB_TENSOR_FORMAT_SAFETENSORS, &t, 1, 1, NULL,
                                             err, sizeof(err)),
                   0);
  mb_plugin_lib *lib;
  assert_int_equal(mb_plugin_open(EMBED_PLUGIN, &lib, err, sizeof(err)), 0);
  mb_ctx *ctx;
  assert_int_equal(mb_ctx_new(NULL, &ctx, err, sizeof(err)), 0);
  assert_int_equal(mb_device_add(ctx, NULL, NULL, err, sizeof(err)), 0);
  const char *files[] = {path};
  assert_int_equal(
      mb_model_add_plugin(ctx, "e", lib, files, 1, NULL, NULL, NULL, err, sizeof(err)), 0);
  mb_plugin_close(lib);
  mb_lease l;
  assert_int_equal(mb_acquire(ctx, "e", NULL, &l, err, sizeof(err)), MB_ELOAD);
  assert_non_null(strstr(err, "no embedding table"));
  assert_non_null(strstr(err, path));
  assert_int_equal(mb_ctx_free(ctx), 0);
  unlink(path);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_safetensors),
      cmocka_unit_test(test_gguf),
      cmocka_unit_test(test_sharded),
      cmocka_unit_test(test_no_table),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
