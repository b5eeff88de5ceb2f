/*
 * test_loader.c - the pipelined loader on the host device: every loaded byte
 * is compared with the file, over several chunk sizes, thread counts, I/O
 * modes, multiple files and both formats; truncated and changed files fail
 * with a clear error; a failed allocation leaves nothing behind.
 */
#include <fcntl.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "files.h"

#include "modelbuf/tensors.h"
#include "alloc.h"
#include "device.h"
#include "tensor/loader.h"
#include "mkmodel.h"

static char g_dir[256];

static void mkfile(const char *name, mb_tensor_format fmt, uint64_t bytes, uint64_t seed,
                   char *path, size_t plen) {
  snprintf(path, plen, "%s/%s", g_dir, name);
  cli_mkmodel_opts o = {.path = path, .format = fmt, .size_bytes = bytes, .seed = seed};
  char err[256] = "";
  int rc = cli_mkmodel_write(&o, NULL, err, sizeof(err));
  if (rc != 0)
    fail_msg("mkmodel %s: %s", path, err);
}

typedef struct prog {
  uint64_t last, total;
  int calls;
  int bad;
} prog;

static void on_progress(void *user, uint64_t done, uint64_t total) {
  prog *p = user; /* called on reader threads: no cmocka asserts here */
  if (done <= p->last || done > total)
    p->bad++;
  p->last = done;
  p->total = total;
  p->calls++;
}

/* Loads files, then checks every tensor byte in the arena against the file. */
static void load_and_compare(char paths[][512], size_t n, size_t chunk, int threads,
                             mb__io_mode io) {
  mb__dev *d = NULL;
  char err[256] = "";
  assert_int_equal(mb__dev_open(MB_DEVICE_HOST, 0, &d, err, sizeof(err)), 0);
  mb_tensor_file *files[4];
  for (size_t i = 0; i < n; i++)
    assert_int_equal(mb_tensor_file_open(paths[i], &files[i], err, sizeof(err)), 0);
  mb__layout l;
  assert_int_equal(mb__layout_make(files, n, &l), 0);
  uint64_t arena = 0;
  assert_int_equal(mb__dev_alloc(d, l.arena_bytes, &arena, err, sizeof(err)), 0);
  assert_int_equal(arena % MB_DEV_ALIGN, 0);
  prog p = {0};
  mb__load_opts o = {.chunk_bytes = chunk, .threads = threads, .io = io,
                     .progress = on_progress, .progress_user = &p};
  int rc = mb__load_files(d, files, &l, arena, &o, NULL, err, sizeof(err));
  if (rc != 0)
    fail_msg("load: %s", err);
  assert_int_equal(p.bad, 0);
  assert_int_equal(p.last, l.data_bytes);
  assert_int_equal(p.total, l.data_bytes);
  for (size_t i = 0; i < n; i++) {
    size_t len;
    unsigned char *want = slurp(paths[i], &len);
    size_t cnt = mb_tensor_file_count(files[i]);
    assert_true(cnt > 0);
    uint64_t sum = 0;
    for (size_t k = 0; k < cnt; k++) {
      mb_tensor_info ti;
      assert_int_equal(mb_tensor_file_info(files[i], k, &ti), 0);
      const unsigned char *got =
          (const unsigned char *)(uintptr_t)(arena +
                                             mb__layout_at(&l, i, MB_DEVICE_HOST, ti.offset));
      assert_true(ti.offset + ti.size_bytes <= len);
      /* on the host device a tensor keeps its offset in its page, so a
       * direct read of the file's pages lands in the arena's */
      assert_int_equal((uintptr_t)got % MB_DEV_ALIGN, ti.offset % MB_DEV_ALIGN);
      assert_true((uint64_t)(uintptr_t)got + ti.size_bytes <= arena + l.arena_bytes);
      assert_memory_equal(got, want + ti.offset, ti.size_bytes);
      sum += ti.size_bytes;
    }
    assert_true(sum > 0 && sum <= l.span_bytes[i]);
    free(want);
    mb_tensor_file_close(files[i]);
  }
  mb__dev_free(d, arena);
  mb__layout_free(&l);
  mb__dev_close(d);
}

static void test_every_byte(void **state) {
  (void)state;
  char paths[3][512];
  mkfile("a.safetensors", MB_TENSOR_FORMAT_SAFETENSORS, 3u << 20, 1, paths[0], sizeof(paths[0]));
  mkfile("b.gguf", MB_TENSOR_FORMAT_GGUF, 2u << 20, 2, paths[1], sizeof(paths[1]));
  mkfile("c.safetensors", MB_TENSOR_FORMAT_SAFETENSORS, 700u << 10, 3, paths[2],
         sizeof(paths[2]));
  const size_t chunks[] = {4096, 65536 + 4096, 1u << 20, 64u << 20};
  const int threads[] = {1, 3, 8};
  const mb__io_mode modes[] = {MB_IO_BUFFERED, MB_IO_DIRECT, MB_IO_AUTO};
  for (size_t c = 0; c < sizeof(chunks) / sizeof(chunks[0]); c++)
    for (size_t t = 0; t < sizeof(threads) / sizeof(threads[0]); t++)
      for (size_t m = 0; m < sizeof(modes) / sizeof(modes[0]); m++) {
        load_and_compare(paths, 3, chunks[c], threads[t], modes[m]);
        load_and_compare(paths + 1, 1, chunks[c], threads[t], modes[m]);
      }
  for (int i = 0; i < 3; i++)
    unlink(paths[i]);
}

static void test_cached_fraction(void **state) {
  (void)state;
  char path[512];
  mkfile("cache.gguf", MB_TENSOR_FORMAT_GGUF, 1u << 20, 4, path, sizeof(path));
  size_t len;
  free(slurp(path, &len)); /* now cached */
  int fd = open(path, O_RDONLY);
  assert_true(fd >= 0);
  double f = mb__cached_fraction(fd, 0, len);
  assert_true(f > 0.99);
  close(fd);
  unlink(path);
}

static int expect_load_error(const char *path, int change_after_open, const char *want) {
  mb__dev *d = NULL;
  char err[256] = "";
  assert_int_equal(mb__dev_open(MB_DEVICE_HOST, 0, &d, err, sizeof(err)), 0);
  mb_tensor_file *f = NULL;
  assert_int_equal(mb_tensor_file_open(path, &f, err, sizeof(err)), 0);
  if (change_after_open == 1)
    assert_int_equal(truncate(path, (off_t)(mb_tensor_file_size(f) / 2)), 0);
  else if (change_after_open == 2)
    assert_int_equal(truncate(path, (off_t)(mb_tensor_file_size(f) + 10)), 0);
  mb__layout l;
  assert_int_equal(mb__layout_make(&f, 1, &l), 0);
  uint64_t arena = 0;
  assert_int_equal(mb__dev_alloc(d, l.arena_bytes, &arena, err, sizeof(err)), 0);
  mb__load_opts o = {.chunk_bytes = 65536, .threads = 2};
  int rc = mb__load_files(d, &f, &l, arena, &o, NULL, err, sizeof(err));
  assert_int_equal(rc, MB_EIO);
  assert_non_null(strstr(err, path));
  assert_non_null(strstr(err, want));
  mb__dev_free(d, arena);
  mb__layout_free(&l);
  mb_tensor_file_close(f);
  mb__dev_close(d);
  return rc;
}

static void test_truncated_and_changed(void **state) {
  (void)state;
  char path[512];
  mkfile("t.safetensors", MB_TENSOR_FORMAT_SAFETENSORS, 1u << 20, 5, path, sizeof(path));
  expect_load_error(path, 1, "changed");
  unlink(path);
  mkfile("t2.gguf", MB_TENSOR_FORMAT_GGUF, 1u << 20, 6, path, sizeof(path));
  expect_load_error(path, 2, "changed");
  unlink(path);
}

/* Rewrites one byte of the file while it loads (from the first progress
 * callback, on a reader thread). */
typedef struct scribble {
  const char *path;
  int done;
} scribble;

static void scribble_once(void *user, uint64_t done, uint64_t total) {
  scribble *s = user;
  (void)done;
  (void)total;
  if (__atomic_exchange_n(&s->done, 1, __ATOMIC_ACQ_REL))
    return;
  int fd = open(s->path, O_WRONLY);
  if (fd >= 0) {
    /* a later mtime even on a coarse clock */
    struct timespec ts[2] = {{0, UTIME_OMIT}, {time(NULL) + 10, 0}};
    if (pwrite(fd, "x", 1, 9) == 1)
      futimens(fd, ts);
    close(fd);
  }
}

/* A file written to while it loads: the load fails (MB_EIO, "changed while
 * it was loaded", naming the file), with either I/O mode. */
static void test_changed_during_load(void **state) {
  (void)state;
  for (int io = MB_IO_BUFFERED; io <= MB_IO_DIRECT; io++) {
    char path[512], err[256] = "";
    mkfile("during.safetensors", MB_TENSOR_FORMAT_SAFETENSORS, 4u << 20, 8, path, sizeof(path));
    mb__dev *d = NULL;
    assert_int_equal(mb__dev_open(MB_DEVICE_HOST, 0, &d, err, sizeof(err)), 0);
    mb_tensor_file *f = NULL;
    assert_int_equal(mb_tensor_file_open(path, &f, err, sizeof(err)), 0);
    mb__layout l;
    assert_int_equal(mb__layout_make(&f, 1, &l), 0);
    uint64_t arena = 0;
    assert_int_equal(mb__dev_alloc(d, l.arena_bytes, &arena, err, sizeof(err)), 0);
    scribble sc = {path, 0};
    mb__load_opts o = {.chunk_bytes = 65536, .threads = 2, .io = (mb__io_mode)io,
                       .progress = scribble_once, .progress_user = &sc};
    int rc = mb__load_files(d, &f, &l, arena, &o, NULL, err, sizeof(err));
    assert_int_equal(sc.done, 1);
    assert_int_equal(rc, MB_EIO);
    assert_non_null(strstr(err, path));
    assert_non_null(strstr(err, "changed while it was loaded"));
    mb__dev_free(d, arena);
    mb__layout_free(&l);
    mb_tensor_file_close(f);
    mb__dev_close(d);
    unlink(path);
  }
}

int main(void) {
  const char *base = access("/var/tmp", W_OK) == 0 ? "/var/tmp" : "/tmp";
  snprintf(g_dir, sizeof(g_dir), "%s/mb_loader_XXXXXX", base);
  if (mkdtemp(g_dir) == NULL)
    return 1;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_every_byte),
      cmocka_unit_test(test_cached_fraction),
      cmocka_unit_test(test_truncated_and_changed),
      cmocka_unit_test(test_changed_during_load),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  rmdir(g_dir);
  return rc;
}
