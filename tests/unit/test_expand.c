/*
 * test_expand.c - which files make a model (mb_tensors_expand): a Hugging
 * Face snapshot folder with its index (and a stray consolidated file the
 * index does not name), a folder without an index, GGUF splits, an index
 * named directly, shards behind symbolic links (as in the Hugging Face
 * cache), glob patterns, files named twice, and every fault of an index
 * (mb_tensors_index_parse). A sharded model expanded from its folder loads
 * through the tensors backend with every tensor byte equal to its shard's.
 * Failing each allocation in turn gives MB_ENOMEM and leaks nothing.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <setjmp.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "alloc_count.h"
#include "files.h"

#include "modelbuf/modelbuf.h"
#include "modelbuf/tensors.h"
#include "mkmodel.h"

static char g_dir[256];

static void path_of(char *out, size_t len, const char *rel) {
  snprintf(out, len, "%s/%s", g_dir, rel);
}

static void write_text(const char *rel, const char *text) {
  char p[512];
  path_of(p, sizeof(p), rel);
  FILE *f = fopen(p, "w");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
}

/* A safetensors shard holding tensors "<prefix>.0" .. "<prefix>.<n-1>"
 * (F32, [rows, 64]). */
static void write_shard(const char *rel, const char *prefix, int n, int rows, uint64_t seed) {
  char p[512], err[256];
  path_of(p, sizeof(p), rel);
  cli_mk_tensor t[8];
  memset(t, 0, sizeof(t));
  for (int i = 0; i < n; i++) {
    snprintf(t[i].name, sizeof(t[i].name), "%s.%d", prefix, i);
    t[i].dtype = MB_DTYPE_F32;
    t[i].ndim = 2;
    t[i].shape[0] = (uint64_t)rows;
    t[i].shape[1] = 64;
  }
  if (cli_mkmodel_write_tensors(p, MB_TENSOR_FORMAT_SAFETENSORS, t, (size_t)n, seed, NULL, err,
                                sizeof(err)) != 0)
    fail_msg("write %s: %s", rel, err);
}

static void mkdir_rel(const char *rel) {
  char p[512];
  path_of(p, sizeof(p), rel);
  assert_int_equal(mkdir(p, 0755), 0);
}

/* Expands one spec relative to g_dir. */
static int expand_rel(const char *spec_rel, char ***paths, size_t *n, char *err, size_t len) {
  char spec[512];
  path_of(spec, sizeof(spec), spec_rel);
  const char *specs[1] = {spec};
  *paths = NULL;
  *n = 0;
  return mb_tensors_expand(specs, 1, paths, n, err, len);
}

/* Expands one spec (relative to g_dir) and checks the result is exactly
 * want[] (relative to g_dir), in order. */
static void expect(const char *spec_rel, const char *const *want, size_t n_want) {
  char err[256] = "";
  char **paths;
  size_t n;
  int rc = expand_rel(spec_rel, &paths, &n, err, sizeof(err));
  if (rc != 0)
    fail_msg("expand %s: %s: %s", spec_rel, mb_err_name(rc), err);
  if (n != n_want) {
    for (size_t i = 0; i < n; i++)
      print_message("got %s\n", paths[i]);
    fail_msg("expand %s: %zu files, want %zu", spec_rel, n, n_want);
  }
  for (size_t i = 0; i < n; i++) {
    char w[512];
    path_of(w, sizeof(w), want[i]);
    assert_string_equal(paths[i], w);
  }
  mb_tensors_paths_free(paths, n);
}

static void expect_error(const char *spec_rel, int want_rc, const char *needle) {
  char err[256] = "";
  char **paths;
  size_t n;
  int rc = expand_rel(spec_rel, &paths, &n, err, sizeof(err));
  assert_int_equal(rc, want_rc);
  assert_null(paths);
  assert_int_equal(n, 0);
  if (strstr(err, needle) == NULL)
    fail_msg("expand %s: message '%s' lacks '%s'", spec_rel, err, needle);
}

static const char *index_text =
    "{\"metadata\": {\"total_size\": 1}, \"weight_map\": {"
    "\"b.0\": \"model-00002-of-00003.safetensors\", "
    "\"a.0\": \"model-00001-of-00003.safetensors\", "
    "\"a.1\": \"model-00001-of-00003.safetensors\", "
    "\"c.0\": \"model-00003-of-00003.safetensors\"}}";

static void test_hf_folder(void **state) {
  (void)state;
  mkdir_rel("hf");
  write_shard("hf/model-00001-of-00003.safetensors", "a", 2, 8, 1);
  write_shard("hf/model-00002-of-00003.safetensors", "b", 1, 16, 2);
  write_shard("hf/model-00003-of-00003.safetensors", "c", 1, 4, 3);
  write_shard("hf/consolidated.safetensors", "x", 1, 4, 4); /* not in the index */
  write_text("hf/model.safetensors.index.json", index_text);
  write_text("hf/config.json", "{}");
  const char *want[] = {"hf/model-00001-of-00003.safetensors",
                        "hf/model-00002-of-00003.safetensors",
                        "hf/model-00003-of-00003.safetensors"};
  expect("hf", want, 3);
  expect("hf/model.safetensors.index.json", want, 3);
  /* The snapshot loads as one model: every tensor equals its shard's bytes. */
  char err[256] = "";
  char **paths;
  size_t n;
  assert_int_equal(expand_rel("hf", &paths, &n, err, sizeof(err)), 0);
  mb_tensors_model *m = NULL;
  if (mb_tensors_model_new((const char *const *)paths, n, NULL, &m, err, sizeof(err)) != 0)
    fail_msg("model: %s", err);
  assert_int_equal(mb_tensors_count(m), 4);
  mb_ctx_opts co;
  mb_ctx_opts_init(&co);
  mb_ctx *ctx = NULL;
  assert_int_equal(mb_ctx_new(&co, &ctx, err, sizeof(err)), 0);
  assert_int_equal(mb_device_add(ctx, NULL, NULL, err, sizeof(err)), 0);
  mb_model_opts mo;
  mb_model_opts_init(&mo);
  mo.footprint_bytes = mb_tensors_model_bytes(m);
  assert_int_equal(mb_model_add(ctx, "hf", mb_tensors_backend(), m, &mo, err, sizeof(err)), 0);
  mb_lease l;
  if (mb_acquire(ctx, "hf", NULL, &l, err, sizeof(err)) != 0)
    fail_msg("acquire: %s", err);
  for (size_t i = 0; i < n; i++) {
    size_t len;
    unsigned char *want_bytes = slurp(paths[i], &len);
    mb_tensor_file *f = NULL;
    assert_int_equal(mb_tensor_file_open(paths[i], &f, err, sizeof(err)), 0);
    for (size_t k = 0; k < mb_tensor_file_count(f); k++) {
      mb_tensor_info ti;
      mb_tensor_ref r;
      assert_int_equal(mb_tensor_file_info(f, k, &ti), 0);
      assert_int_equal(mb_tensors_find(m, ti.name, &r), 0);
      assert_memory_equal((const void *)(uintptr_t)r.device_ptr, want_bytes + ti.offset,
                          ti.size_bytes);
    }
    mb_tensor_file_close(f);
    free(want_bytes);
  }
  assert_int_equal(mb_release(ctx, l), 0);
  assert_int_equal(mb_ctx_free(ctx), 0);
  mb_tensors_paths_free(paths, n);
}

static void test_folders_and_patterns(void **state) {
  (void)state;
  /* no index: every .safetensors, sorted; a .gguf beside them is not taken */
  mkdir_rel("plain");
  write_shard("plain/b.safetensors", "b", 1, 4, 5);
  write_shard("plain/a.safetensors", "a", 1, 4, 6);
  write_text("plain/notes.gguf", "x");
  write_text("plain/.hidden.safetensors", "x");
  mkdir_rel("plain/sub.safetensors"); /* a folder, not a file */
  const char *plain[] = {"plain/a.safetensors", "plain/b.safetensors"};
  expect("plain", plain, 2);
  expect("plain//", plain, 2); /* trailing slashes: the same paths */
  /* GGUF splits */
  mkdir_rel("gguf");
  write_text("gguf/m-00002-of-00002.gguf", "x");
  write_text("gguf/m-00001-of-00002.gguf", "x");
  const char *gguf[] = {"gguf/m-00001-of-00002.gguf", "gguf/m-00002-of-00002.gguf"};
  expect("gguf", gguf, 2);
  /* a pattern; one that matches nothing */
  expect("plain/*.safetensors", plain, 2);
  const char *one[] = {"plain/b.safetensors"};
  expect("plain/[b].safetensors", one, 1);
  expect_error("plain/*.bin", MB_ENOENT, "matches no file");
  /* an empty folder */
  mkdir_rel("empty");
  expect_error("empty", MB_ENOENT, "no .safetensors or .gguf file");
  /* shards behind symbolic links, as in the Hugging Face cache */
  mkdir_rel("blobs");
  mkdir_rel("snap");
  write_shard("blobs/1234", "s", 1, 4, 7);
  char target[512], link[512];
  path_of(target, sizeof(target), "blobs/1234");
  path_of(link, sizeof(link), "snap/model.safetensors");
  assert_int_equal(symlink(target, link), 0);
  const char *snap[] = {"snap/model.safetensors"};
  expect("snap", snap, 1);
  /* a missing plain file goes through: opening it names the fault */
  const char *missing[] = {"nothing.safetensors"};
  expect("nothing.safetensors", missing, 1);
  /* several specs: each file once, first mention first */
  char s0[512], s1[512], s2[512], err[256];
  path_of(s0, sizeof(s0), "plain/b.safetensors");
  path_of(s1, sizeof(s1), "plain");
  path_of(s2, sizeof(s2), "snap");
  const char *specs[3] = {s0, s1, s2};
  char **paths;
  size_t n;
  assert_int_equal(mb_tensors_expand(specs, 3, &paths, &n, err, sizeof(err)), 0);
  assert_int_equal(n, 3);
  assert_string_equal(paths[0], s0);
  assert_non_null(strstr(paths[1], "plain/a.safetensors"));
  assert_non_null(strstr(paths[2], "snap/model.safetensors"));
  mb_tensors_paths_free(paths, n);
  const char *bad[1] = {""};
  assert_int_equal(mb_tensors_expand(bad, 1, &paths, &n, err, sizeof(err)), MB_EINVAL);
}

static void index_error(const char *text, const char *needle) {
  char **shards = (char **)1;
  size_t n = 7;
  char err[256] = "";
  int rc = mb_tensors_index_parse(text, strlen(text), "i.json", &shards, &n, err, sizeof(err));
  assert_int_equal(rc, MB_EFORMAT);
  assert_null(shards);
  assert_int_equal(n, 0);
  if (strstr(err, needle) == NULL || strstr(err, "i.json") == NULL)
    fail_msg("index %s: message '%s' lacks '%s'", text, err, needle);
}

static void test_index_faults(void **state) {
  (void)state;
  char **shards;
  size_t n;
  char err[256];
  assert_int_equal(mb_tensors_index_parse(index_text, strlen(index_text), "i.json", &shards, &n,
                                          err, sizeof(err)),
                   0);
  assert_int_equal(n, 3); /* distinct, sorted */
  assert_string_equal(shards[0], "model-00001-of-00003.safetensors");
  assert_string_equal(shards[2], "model-00003-of-00003.safetensors");
  mb_tensors_paths_free(shards, n);

  index_error("", "not a JSON index");
  index_error("{\"weight_map\": {\"a\": \"x\"", "not a JSON index");
  index_error("[1, 2]", "no \"weight_map\"");
  index_error("{\"metadata\": {}}", "no \"weight_map\"");
  index_error("{\"weight_map\": []}", "no \"weight_map\"");
  index_error("{\"weight_map\": {}}", "no \"weight_map\"");
  index_error("{\"weight_map\": {\"a\": 3}}", "not mapped to a file name");
  index_error("{\"weight_map\": {\"a\": \"\"}}", "not a plain file name");
  index_error("{\"weight_map\": {\"a\": \"../x.safetensors\"}}", "not a plain file name");
  index_error("{\"weight_map\": {\"a\": \"/etc/passwd\"}}", "not a plain file name");
  index_error("{\"weight_map\": {\"a\": \"..\"}}", "not a plain file name");
  index_error("{\"weight_map\": {\"a\": \"x\\u0000y\"}}", "not a plain file name");
  assert_int_equal(mb_tensors_index_parse("{}", (size_t)MB_TENSORS_INDEX_MAX + 1, "i.json",
                                          &shards, &n, err, sizeof(err)),
                   MB_EFORMAT);
  assert_non_null(strstr(err, "over the limit"));
  assert_int_equal(mb_tensors_index_parse(NULL, 0, "i.json", NULL, &n, err, sizeof(err)),
                   MB_EINVAL);
  /* a folder whose index is broken: the error names the index */
  mkdir_rel("broken");
  write_text("broken/model.safetensors.index.json", "{\"weight_map\": {\"a\": \"/x\"}}");
  expect_error("broken", MB_EFORMAT, "broken/model.safetensors.index.json");
}

/* Fails allocation n = 1, 2, ... of an expansion until one succeeds. */
static void test_allocfail(void **state) {
  (void)state;
  char spec[512], spec2[512], err[256];
  path_of(spec, sizeof(spec), "hf");
  path_of(spec2, sizeof(spec2), "plain/*.safetensors");
  const char *specs[2] = {spec, spec2};
  int failures = 0;
  for (long k = 1; k < 500; k++) {
    long before = atomic_load(&ac_live);
    char **paths = NULL;
    size_t n = 0;
    ac_fail(k);
    int rc = mb_tensors_expand(specs, 2, &paths, &n, err, sizeof(err));
    ac_fail(0);
    if (rc == 0) {
      assert_int_equal(n, 5);
      mb_tensors_paths_free(paths, n);
      assert_int_equal(atomic_load(&ac_live), before);
      break;
    }
    failures++;
    assert_int_equal(rc, MB_ENOMEM);
    assert_null(paths);
    assert_int_equal(atomic_load(&ac_live), before);
  }
  assert_true(failures >= 5);
}

static int setup(void **state) {
  (void)state;
  if (mb_set_allocator(&ac_allocator) != 0)
    return -1;
  const char *base = access("/var/tmp", W_OK) == 0 ? "/var/tmp" : "/tmp";
  snprintf(g_dir, sizeof(g_dir), "%s/mb_expand_XXXXXX", base);
  return mkdtemp(g_dir) == NULL ? -1 : 0;
}

static int teardown(void **state) {
  (void)state;
  char cmd[300];
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", g_dir);
  return system(cmd) == 0 ? 0 : -1;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_hf_folder),
      cmocka_unit_test(test_folders_and_patterns),
      cmocka_unit_test(test_index_faults),
      cmocka_unit_test(test_allocfail),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
