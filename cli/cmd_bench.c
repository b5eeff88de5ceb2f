/*
 * cmd_bench.c - `modelbuf bench load|offload|restore FILE`: the tensor
 * engine measured against baselines taken in the same run on the same files
 * (FILE may be a folder, a Hugging Face index or a pattern: every file of
 * the model, as mb_tensors_expand names them, read one after the other)
 * (docs/TENSORS.md): direct-I/O sequential read of the uncached file (cold)
 * and buffered read of the cached file (warm), each into memory of the
 * file's size already faulted in, each also into one reused 8 MiB buffer (a
 * destination that stays in the CPU cache: no loader can land a model
 * there, and where the "disk" is the host's memory, as on a virtual
 * machine, that is faster), memcpy bandwidth of the host device or one
 * pinned host<->device copy of the whole arena per direction on a GPU, a
 * naive loader (whole file into malloc, then one pageable copy), and
 * io_uring reads of the file (cold and warm) to see whether the loader
 * should use it. modelbuf's figures are the backend's own paths: a load
 * into a fresh arena, and offload/restore with mb__dev_copy_pinned through
 * a buffer from mb__dev_pinned_alloc (chunks on several streams). Prints
 * GB/s for each and the ratios; --json prints one object with a top-level
 * "ratio".
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef MB_HAVE_LIBURING
#include <liburing.h>
#endif

#include "modelbuf/tensors.h"
#include "cli.h"
#include "mb_internal.h"

#define BLOCK (8u << 20)
#define URING_DEPTH 8u

/* The model's files. */
typedef struct files {
  char **paths;
  mb_tensor_file **f;
  size_t n;
} files;

static void drop_cache(const char *path) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return;
  fdatasync(fd);
  posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  close(fd);
}

static void drop_caches(const files *fs) {
  for (size_t i = 0; i < fs->n; i++)
    drop_cache(fs->paths[i]);
}

/* Sequential read of the whole file in BLOCK pieces, into buf again and
 * again (cap 0) or one after the other through buf[0, cap); bytes read or
 * -1. */
static long long read_file(const char *path, int direct, void *buf, size_t cap) {
  int fd = open(path, O_RDONLY | O_CLOEXEC | (direct ? O_DIRECT : 0));
  if (fd < 0 && direct)
    fd = open(path, O_RDONLY | O_CLOEXEC); /* no O_DIRECT here (tmpfs) */
  if (fd < 0)
    return -1;
  long long total = 0;
  for (;;) {
    size_t at = cap >= (size_t)total + BLOCK ? (size_t)total : 0;
    ssize_t r = read(fd, (char *)buf + at, BLOCK);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      break;
    total += r;
  }
  close(fd);
  return total;
}

/* Bytes of a file laid out in a buffer of consecutive files: its size
 * rounded up to BLOCK (direct reads stay aligned). */
static size_t slot(const mb_tensor_file *f) {
  return ((size_t)mb_tensor_file_size(f) + BLOCK - 1) / BLOCK * BLOCK;
}

/* Every file read in turn: into consecutive slots of buf[0, cap) (cap 0:
 * each into buf again and again). Bytes read or -1. */
static long long read_files(const files *fs, int direct, char *buf, size_t cap) {
  long long total = 0;
  size_t at = 0;
  for (size_t i = 0; i < fs->n; i++) {
    long long r = read_file(fs->paths[i], direct, buf + (cap ? at : 0), cap ? slot(fs->f[i]) : 0);
    if (r < 0)
      return -1;
    total += r;
    at += slot(fs->f[i]);
  }
  return total;
}

#ifdef MB_HAVE_LIBURING
/*
 * The whole file read with io_uring from one thread, depth reads of BLOCK
 * in flight, into buf[0, cap) (cap >= the file rounded up to BLOCK); bytes
 * read or -1. For the comparison with the loader's reader threads.
 */
static long long uring_read_file(const char *path, int direct, void *buf, size_t cap,
                                 unsigned depth) {
  int fd = open(path, O_RDONLY | O_CLOEXEC | (direct ? O_DIRECT : 0));
  if (fd < 0 && direct)
    fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return -1;
  struct io_uring ring;
  if (io_uring_queue_init(depth, &ring, 0) < 0) {
    close(fd);
    return -1;
  }
  off_t size = lseek(fd, 0, SEEK_END);
  long long total = 0;
  off_t next = 0;
  unsigned inflight = 0;
  int bad = 0;
  /* After an error no more reads start, but those in flight are waited
   * for: the kernel may still be writing into buf. */
  while ((!bad && next < size) || inflight > 0) {
    while (!bad && next < size && inflight < depth && (size_t)next + BLOCK <= cap) {
      struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
      if (sqe == NULL)
        break;
      io_uring_prep_read(sqe, fd, (char *)buf + next, BLOCK, (uint64_t)next);
      next += BLOCK;
      inflight++;
    }
    if (inflight == 0)
      break; /* nothing could start (the buffer is full) */
    int w = io_uring_submit_and_wait(&ring, 1);
    if (w == -EINTR)
      continue;
    if (w < 0) {
      bad = 1;
      break; /* the ring itself failed */
    }
    struct io_uring_cqe *cqe;
    unsigned head, seen = 0;
    io_uring_for_each_cqe(&ring, head, cqe) {
      if (cqe->res < 0)
        bad = 1;
      else
        total += cqe->res;
      seen++;
    }
    io_uring_cq_advance(&ring, seen);
    inflight -= seen;
  }
  io_uring_queue_exit(&ring);
  close(fd);
  return bad || next < size ? -1 : total;
}
#endif

/* A load as the backend does it: a fresh arena (the last one freed), then
 * the loader. */
static int fresh_load(mb__dev *d, const files *fs, const mb__layout *l, uint64_t *arena,
                      const mb__load_opts *lo, char *err, size_t err_len) {
  mb__dev_free(d, *arena);
  *arena = 0;
  int rc = mb__dev_alloc(d, (size_t)l->arena_bytes, arena, err, err_len);
  return rc != 0 ? rc : mb__load_files(d, fs->f, l, *arena, lo, NULL, err, err_len);
}

/* The naive loader: each file read whole into malloc'd memory, then one
 * pageable copy of its tensor data to the device. 0, or -1 (errno). */
static int naive_load(mb__dev *d, const files *fs, const mb__layout *l, uint64_t arena,
                      char *mem, mb_device_kind dk, char *err, size_t err_len) {
  for (size_t i = 0; i < fs->n; i++) {
    int fd = open(fs->paths[i], O_RDONLY | O_CLOEXEC);
    if (fd < 0)
      return -1;
    size_t got = 0, want = (size_t)mb_tensor_file_size(fs->f[i]);
    while (got < want) {
      ssize_t r = read(fd, mem + got, want - got);
      if (r <= 0)
        break;
      got += (size_t)r;
    }
    close(fd);
    if (mb__dev_h2d(d, arena + mb__layout_span_at(l, i, dk), mem + l->span_start[i],
                    (size_t)l->span_bytes[i], 0, err, err_len) != 0)
      return -1;
  }
  return 0;
}

static double gbps(double bytes, double secs) { return secs > 0 ? bytes / secs / 1e9 : 0; }

static const char *bench_kind; /* "load", "offload" or "restore" */

static int usage_err(void) {
  char name[32];
  snprintf(name, sizeof(name), "bench %s", bench_kind);
  cli_command_usage(stderr, name);
  return CLI_EXIT_USAGE;
}

int cmd_bench_tensors(int argc, char **argv) {
  const char *kind = argv[0], *path = NULL, *device = "host";
  bench_kind = kind;
  int json = 0, cycles = 3, threads = 0;
  uint64_t chunk = 0;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--json") == 0)
      json = 1;
    else if (strcmp(argv[i], "--device") == 0 && i + 1 < argc)
      device = argv[++i];
    else if (strcmp(argv[i], "--cycles") == 0 && i + 1 < argc)
      cycles = atoi(argv[++i]);
    else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc)
      threads = atoi(argv[++i]);
    else if (strcmp(argv[i], "--chunk") == 0 && i + 1 < argc) {
      if (cli_parse_size(argv[++i], &chunk) != 0)
        return usage_err();
    } else if (argv[i][0] != '-' && path == NULL)
      path = argv[i];
    else
      return usage_err();
  }
  if (path == NULL || cycles < 1 || cycles > 1000 || threads < 0 || threads > MB_LOAD_MAX_THREADS)
    return usage_err();
  mb_device_kind dk = MB_DEVICE_HOST;
  int ordinal = 0;
  if (strncmp(device, "cuda:", 5) == 0) {
    dk = MB_DEVICE_CUDA;
    ordinal = atoi(device + 5);
  } else if (strcmp(device, "host") != 0) {
    return usage_err();
  }

  char err[512] = "";
  mb__dev *d = NULL;
  files fs = {0};
  mb__layout l = {0};
  uint64_t arena = 0;
  void *host = NULL, *pinned = NULL, *buf = NULL, *naive = NULL, *whole = NULL;
  size_t whole_len = 0, largest = 0;
  int rc = CLI_EXIT_FAIL;
  const char *specs[1] = {path};
  char note[256] = "";
  if (mb__dev_open_fallback(dk, ordinal, &d, note, sizeof(note)) != 0) {
    fprintf(stderr, "modelbuf: bench %s: %s\n", kind, note);
    goto out;
  }
  if (note[0]) /* no CUDA driver or GPU: said here, the library prints nothing */
    fprintf(stderr, "modelbuf: %s\n", note);
  if (mb_tensors_expand(specs, 1, &fs.paths, &fs.n, err, sizeof(err)) != 0 ||
      (fs.f = calloc(fs.n, sizeof(*fs.f))) == NULL) {
    fprintf(stderr, "modelbuf: bench %s: %s\n", kind, err[0] ? err : "out of memory");
    goto out;
  }
  for (size_t i = 0; i < fs.n; i++) {
    if (mb_tensor_file_open(fs.paths[i], &fs.f[i], err, sizeof(err)) != 0) {
      fprintf(stderr, "modelbuf: bench %s: %s\n", kind, err);
      goto out;
    }
    whole_len += slot(fs.f[i]);
    if ((size_t)mb_tensor_file_size(fs.f[i]) > largest)
      largest = (size_t)mb_tensor_file_size(fs.f[i]);
  }
  if (mb__dev_kind(d) != dk) { /* no CUDA driver or GPU: measured on the host */
    dk = mb__dev_kind(d);
    device = "host";
  }
  if (mb__layout_make(fs.f, fs.n, &l) != 0 || l.arena_bytes == 0 ||
      mb__dev_alloc(d, (size_t)l.arena_bytes, &arena, err, sizeof(err)) != 0 ||
      mb__dev_host_alloc(d, (size_t)l.arena_bytes, &host, err, sizeof(err)) != 0 ||
      mb__dev_pinned_alloc(d, (size_t)l.arena_bytes, threads, &pinned, err, sizeof(err)) != 0 ||
      mb__dev_host_alloc(d, BLOCK, &buf, err, sizeof(err)) != 0 ||
      mb__dev_host_alloc(d, whole_len, &whole, err, sizeof(err)) != 0 ||
      (naive = malloc(largest ? largest : 1)) == NULL) {
    fprintf(stderr, "modelbuf: bench %s: cannot allocate: %s\n", kind, err);
    goto out;
  }
  memset(whole, 0, whole_len); /* a destination already in memory, as the arena is */
  double file_bytes = 0, data = (double)l.data_bytes;
  for (size_t i = 0; i < fs.n; i++)
    file_bytes += (double)mb_tensor_file_size(fs.f[i]);
  double best_cached = 0, best_direct_cached = 0, best_uring_warm = 0, best_uring_cold = 0;
  double best_direct = 0, best_buffered = 0, best_memcpy_h2d = 0, best_memcpy_d2h = 0,
         best_naive = 0, best_cold = 0, best_warm = 0, best_off = 0, best_res = 0;
  mb__load_opts lo = {.chunk_bytes = (size_t)chunk, .threads = threads};
  for (int c = 0; c < cycles; c++) {
    double t0, t;
    /* baselines: cold direct-I/O read into memory of the file's size, and
     * into one reused 8 MiB buffer */
    drop_caches(&fs);
    t0 = cli_now_s();
    if (read_files(&fs, 1, whole, whole_len) < 0)
      goto io_fail;
    t = gbps(file_bytes, cli_now_s() - t0);
    best_direct = t > best_direct ? t : best_direct;
    drop_caches(&fs);
    t0 = cli_now_s();
    if (read_files(&fs, 1, buf, 0) < 0)
      goto io_fail;
    t = gbps(file_bytes, cli_now_s() - t0);
    best_direct_cached = t > best_direct_cached ? t : best_direct_cached;
    /* modelbuf cold load */
    drop_caches(&fs);
    t0 = cli_now_s();
    if (fresh_load(d, &fs, &l, &arena, &lo, err, sizeof(err)) != 0)
      goto load_fail;
    t = gbps(data, cli_now_s() - t0);
    best_cold = t > best_cold ? t : best_cold;
    /* baselines: buffered read of the cached file into memory of its size,
     * and into one reused 8 MiB buffer */
    read_files(&fs, 0, buf, 0);
    t0 = cli_now_s();
    if (read_files(&fs, 0, whole, whole_len) < 0)
      goto io_fail;
    t = gbps(file_bytes, cli_now_s() - t0);
    best_buffered = t > best_buffered ? t : best_buffered;
    t0 = cli_now_s();
    if (read_files(&fs, 0, buf, 0) < 0)
      goto io_fail;
    t = gbps(file_bytes, cli_now_s() - t0);
    best_cached = t > best_cached ? t : best_cached;
#ifdef MB_HAVE_LIBURING
    /* io_uring, one thread, URING_DEPTH reads in flight: warm, then cold */
    for (int direct = 0; direct < 2; direct++) {
      if (direct)
        drop_caches(&fs);
      t0 = cli_now_s();
      int ok = 1;
      for (size_t i = 0, at = 0; ok && i < fs.n; at += slot(fs.f[i]), i++)
        ok = uring_read_file(fs.paths[i], direct, (char *)whole + at, slot(fs.f[i]),
                             URING_DEPTH) >= 0;
      t = ok ? gbps(file_bytes, cli_now_s() - t0) : 0;
      double *best = direct ? &best_uring_cold : &best_uring_warm;
      *best = t > *best ? t : *best;
    }
    read_files(&fs, 0, buf, 0);
#endif
    /* modelbuf warm load */
    t0 = cli_now_s();
    if (fresh_load(d, &fs, &l, &arena, &lo, err, sizeof(err)) != 0)
      goto load_fail;
    t = gbps(data, cli_now_s() - t0);
    best_warm = t > best_warm ? t : best_warm;
    /* baseline: naive loader (each file into malloc, then one copy) */
    t0 = cli_now_s();
    if (naive_load(d, &fs, &l, arena, naive, dk, err, sizeof(err)) != 0)
      goto io_fail;
    t = gbps(data, cli_now_s() - t0);
    best_naive = t > best_naive ? t : best_naive;
    /* modelbuf offload and restore: the backend's copies, through the
     * model's kind of pinned buffer */
    t0 = cli_now_s();
    if (mb__dev_copy_pinned(d, 0, arena, pinned, (size_t)l.arena_bytes, NULL, NULL, err,
                            sizeof(err)) != 0)
      goto load_fail;
    t = gbps((double)l.arena_bytes, cli_now_s() - t0);
    best_off = t > best_off ? t : best_off;
    t0 = cli_now_s();
    if (mb__dev_copy_pinned(d, 1, arena, pinned, (size_t)l.arena_bytes, NULL, NULL, err,
                            sizeof(err)) != 0)
      goto load_fail;
    t = gbps((double)l.arena_bytes, cli_now_s() - t0);
    best_res = t > best_res ? t : best_res;
    /* baseline: plain memcpy between the same buffers (host device), or
     * one pinned host<->device copy of the whole arena per direction
     * (GPU: the bandwidth a copy can reach) */
    t0 = cli_now_s();
    if (dk == MB_DEVICE_HOST)
      memcpy(host, (void *)(uintptr_t)arena, (size_t)l.arena_bytes);
    else if (mb__dev_d2h(d, host, arena, (size_t)l.arena_bytes, 1, err, sizeof(err)) != 0)
      goto load_fail;
    t = gbps((double)l.arena_bytes, cli_now_s() - t0);
    best_memcpy_d2h = t > best_memcpy_d2h ? t : best_memcpy_d2h;
    t0 = cli_now_s();
    if (dk == MB_DEVICE_HOST)
      memcpy((void *)(uintptr_t)arena, host, (size_t)l.arena_bytes);
    else if (mb__dev_h2d(d, arena, host, (size_t)l.arena_bytes, 1, err, sizeof(err)) != 0)
      goto load_fail;
    t = gbps((double)l.arena_bytes, cli_now_s() - t0);
    best_memcpy_h2d = t > best_memcpy_h2d ? t : best_memcpy_h2d;
  }
  double r_cold = best_direct > 0 ? best_cold / best_direct : 0;
  double r_warm = best_buffered > 0 ? best_warm / best_buffered : 0;
  /* The warm load's target baseline: the buffered read on the host device;
   * on a GPU the smaller of it and a pinned host->device copy (the load
   * can be no faster than either). */
  double warm_base = dk == MB_DEVICE_HOST || best_memcpy_h2d <= 0 || best_buffered < best_memcpy_h2d
                         ? best_buffered
                         : best_memcpy_h2d;
  double r_warm_target = warm_base > 0 ? best_warm / warm_base : 0;
  double r_naive = best_naive > 0 ? best_warm / best_naive : 0;
  double r_cached = best_cached > 0 ? best_warm / best_cached : 0;
  double r_direct_cached = best_direct_cached > 0 ? best_cold / best_direct_cached : 0;
  double r_off = best_memcpy_d2h > 0 ? best_off / best_memcpy_d2h : 0;
  double r_res = best_memcpy_h2d > 0 ? best_res / best_memcpy_h2d : 0;
  double ratio = strcmp(kind, "load") == 0 ? (r_cold < r_warm_target ? r_cold : r_warm_target)
                 : strcmp(kind, "offload") == 0 ? r_off
                                                : r_res;
  if (json) {
    printf("{\"bench\":\"%s\",\"file\":\"%s\",\"files\":%zu,\"device\":\"%s\",\"bytes\":%.0f,"
           "\"cycles\":%d,"
           "\"ratio\":%.3f,\"gbps\":{\"direct_read\":%.3f,\"buffered_read\":%.3f,"
           "\"memcpy_h2d\":%.3f,\"memcpy_d2h\":%.3f,\"naive_load\":%.3f,\"load_cold\":%.3f,"
           "\"load_warm\":%.3f,\"offload\":%.3f,\"restore\":%.3f},"
           "\"ratios\":{\"load_cold_vs_direct\":%.3f,\"load_warm_vs_buffered\":%.3f,"
           "\"load_warm_vs_target\":%.3f,\"load_warm_vs_naive\":%.3f,\"offload_vs_memcpy\":%.3f,"
           "\"restore_vs_memcpy\":%.3f,\"load_warm_vs_cached_read\":%.3f,"
           "\"load_cold_vs_direct_cached_dest\":%.3f},"
           "\"extra_gbps\":{\"buffered_read_cached_dest\":%.3f,"
           "\"direct_read_cached_dest\":%.3f,\"uring_read_warm\":%.3f,"
           "\"uring_read_cold\":%.3f}}\n",
           kind, path, fs.n, device, data, cycles, ratio, best_direct, best_buffered, best_memcpy_h2d,
           best_memcpy_d2h, best_naive, best_cold, best_warm, best_off, best_res, r_cold, r_warm,
           r_warm_target, r_naive, r_off, r_res, r_cached, r_direct_cached, best_cached, best_direct_cached,
           best_uring_warm, best_uring_cold);
  } else {
    printf("bench %s: %s, %.1f MiB of tensor data", kind, path, data / 1048576.0);
    if (fs.n > 1)
      printf(" in %zu files", fs.n);
    printf(", device %s, best of %d\n", device, cycles);
    printf("  baseline direct-I/O read (cold)   %7.2f GB/s  into memory of the file's size\n",
           best_direct);
    printf("  baseline buffered read (warm)     %7.2f GB/s  into memory of the file's size\n",
           best_buffered);
    printf("  direct read, cached destination   %7.2f GB/s  one reused 8 MiB buffer\n",
           best_direct_cached);
    printf("  buffered read, cached destination %7.2f GB/s  one reused 8 MiB buffer\n",
           best_cached);
#ifdef MB_HAVE_LIBURING
    printf("  io_uring read warm / cold         %7.2f / %.2f GB/s  one thread, %u in flight\n",
           best_uring_warm, best_uring_cold, URING_DEPTH);
#endif
    printf("  baseline memcpy h2d / d2h         %7.2f / %.2f GB/s\n", best_memcpy_h2d,
           best_memcpy_d2h);
    printf("  baseline naive loader (warm)      %7.2f GB/s\n", best_naive);
    printf("  modelbuf load cold                %7.2f GB/s  ratio %.2f vs direct read, "
           "%.2f vs cached destination\n", best_cold, r_cold, r_direct_cached);
    printf("  modelbuf load warm                %7.2f GB/s  ratio %.2f vs buffered read, "
           "%.2f vs naive, %.2f vs cached destination\n", best_warm, r_warm, r_naive, r_cached);
    if (dk != MB_DEVICE_HOST)
      printf("  modelbuf load warm                %7.2f GB/s  ratio %.2f vs the smaller of buffered "
             "read and host->device\n", best_warm, r_warm_target);
    printf("  modelbuf offload                  %7.2f GB/s  ratio %.2f vs memcpy\n", best_off,
           r_off);
    printf("  modelbuf restore                  %7.2f GB/s  ratio %.2f vs memcpy\n", best_res,
           r_res);
    printf("ratio %.3f\n", ratio);
  }
  rc = CLI_EXIT_OK;
  goto out;
io_fail:
  fprintf(stderr, "modelbuf: bench %s: cannot read %s: %s\n", kind, path,
          err[0] ? err : strerror(errno));
  goto out;
load_fail:
  fprintf(stderr, "modelbuf: bench %s: %s\n", kind, err);
out:
  free(naive);
  if (d != NULL) {
    mb__dev_host_free(d, buf);
    mb__dev_host_free(d, whole);
    mb__dev_host_free(d, host);
    mb__dev_pinned_free(d, pinned, (size_t)l.arena_bytes);
    mb__dev_free(d, arena);
    mb__dev_close(d);
  }
  mb__layout_free(&l);
  for (size_t i = 0; fs.f != NULL && i < fs.n; i++)
    mb_tensor_file_close(fs.f[i]);
  free(fs.f);
  mb_tensors_paths_free(fs.paths, fs.n);
  return rc;
}
