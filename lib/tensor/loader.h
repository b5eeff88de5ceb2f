/*
 * loader.h - private to the tensor engine: the pipelined loader that streams
 * the tensor data of weight files into one device arena.
 *
 * Each file's data span (from its first to the end of its last tensor) gets
 * a region of the arena that starts at an offset aligned to MB_DEV_ALIGN. On
 * a GPU the span starts at the region's start; on the host device it starts
 * at the span's own offset modulo MB_DEV_ALIGN in the file (as in a mapping
 * of the file), so every page of the file falls on a page of the arena and
 * direct reads land in the arena without a copy. Regions are sized for the
 * second, so both fit.
 *
 * The span is cut into chunks at multiples of the chunk size in the file
 * (the first and last chunk are shorter), so no two chunks share a page;
 * `threads` reader threads each own a staging buffer (pinned memory on
 * CUDA) and repeatedly take the next chunk, read it from the file and copy
 * it to the device, so reads of one thread overlap copies of the others.
 * When the file is mostly not in the page cache (mincore on a mapping),
 * reads use O_DIRECT with aligned offsets; otherwise buffered pread. On the
 * host device every read goes straight into the arena, and while direct
 * reads run one more thread faults the arena's pages in ahead of them
 * (MADV_POPULATE_WRITE), so zeroing fresh memory overlaps the disk's work.
 */
#ifndef MB_TENSOR_LOADER_H
#define MB_TENSOR_LOADER_H

#include <stddef.h>
#include <stdint.h>

#include "modelbuf/tensors.h"
#include "../device.h"

#define MB_LOAD_DEFAULT_CHUNK (8u << 20)
#define MB_LOAD_DEFAULT_THREADS 4
#define MB_LOAD_MAX_THREADS 64

typedef enum mb__io_mode {
  MB_IO_AUTO = 0,  /* direct when under half of the span is cached */
  MB_IO_BUFFERED,
  MB_IO_DIRECT
} mb__io_mode;

typedef struct mb__load_opts {
  size_t chunk_bytes;   /* 0: MB_LOAD_DEFAULT_CHUNK; rounded up to MB_DEV_ALIGN */
  int threads;          /* 0: MB_LOAD_DEFAULT_THREADS; at most MB_LOAD_MAX_THREADS */
  mb__io_mode io;
  /* Called after each chunk with the bytes done so far and the total; calls
   * are serialized (never concurrent) but come from the reader threads. */
  void (*progress)(void *user, uint64_t done, uint64_t total);
  void *progress_user;
} mb__load_opts;

/* The arena layout of a list of files. */
typedef struct mb__layout {
  size_t nfiles;
  uint64_t *base;        /* arena offset of file i's region (MB_DEV_ALIGN-aligned) */
  uint64_t *span_start;  /* absolute file offset where file i's span starts */
  uint64_t *span_bytes;
  uint64_t arena_bytes;  /* total, aligned */
  uint64_t data_bytes;   /* sum of span_bytes: what is read */
} mb__layout;

/* Computes the layout. MB_ENOMEM. Free with mb__layout_free. */
int mb__layout_make(mb_tensor_file *const *files, size_t nfiles, mb__layout *out);
void mb__layout_free(mb__layout *l);

/* Arena offset of the first byte of file i's span on a device of kind k
 * (see above: the region's start, plus on the host device the span's offset
 * modulo MB_DEV_ALIGN in the file). */
uint64_t mb__layout_span_at(const mb__layout *l, size_t i, mb_device_kind k);

/* Arena offset of the tensor data at absolute offset file_off of file i. */
static inline uint64_t mb__layout_at(const mb__layout *l, size_t i, mb_device_kind k,
                                     uint64_t file_off) {
  return mb__layout_span_at(l, i, k) + (file_off - l->span_start[i]);
}

/*
 * Reads every file's span into the arena at dptr (arena_bytes long) on d.
 * Checks that each file still has the size its header was parsed for and
 * that neither size nor mtime changed during the load. Errors (with a message
 * naming the file): MB_EIO (read error, truncated or changed file), MB_ENOMEM,
 * MB_ECANCELED when *cancel became nonzero. Nothing stays allocated on error.
 */
int mb__load_files(mb__dev *d, mb_tensor_file *const *files, const mb__layout *l, uint64_t dptr,
                   const mb__load_opts *opts, const volatile int *cancel, char *err,
                   size_t err_len);

/* Fraction (0..1) of [off, off+len) of the open file fd in the page cache;
 * -1 when it cannot be told. */
double mb__cached_fraction(int fd, uint64_t off, uint64_t len);

#endif /* MB_TENSOR_LOADER_H */
