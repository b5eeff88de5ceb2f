/*
 * loader.c - the pipelined loader: reader threads stream the tensor data of
 * weight files through staging buffers into one device arena (loader.h).
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "alloc.h"
#include "loader.h"

#define ALIGN_UP(x, a) (((x) + (uint64_t)(a) - 1) & ~((uint64_t)(a) - 1))

int mb__layout_make(mb_tensor_file *const *files, size_t nfiles, mb__layout *out) {
  memset(out, 0, sizeof(*out));
  size_t n = nfiles > 0 ? nfiles : 1;
  out->base = mb__calloc(n, sizeof(uint64_t));
  out->span_start = mb__calloc(n, sizeof(uint64_t));
  out->span_bytes = mb__calloc(n, sizeof(uint64_t));
  if (out->base == NULL || out->span_start == NULL || out->span_bytes == NULL) {
    mb__layout_free(out);
    return MB_ENOMEM;
  }
  out->nfiles = nfiles;
  uint64_t at = 0;
  for (size_t i = 0; i < nfiles; i++) {
    uint64_t lo = UINT64_MAX, hi = 0;
    size_t cnt = mb_tensor_file_count(files[i]);
    for (size_t k = 0; k < cnt; k++) {
      mb_tensor_info ti;
      if (mb_tensor_file_info(files[i], k, &ti) != 0 || ti.size_bytes == 0)
        continue;
      if (ti.offset < lo)
        lo = ti.offset;
      if (ti.offset + ti.size_bytes > hi)
        hi = ti.offset + ti.size_bytes;
    }
    if (hi == 0)
      lo = 0;
    out->base[i] = at;
    out->span_start[i] = lo;
    out->span_bytes[i] = hi - lo;
    out->data_bytes += hi - lo;
    /* room for the span shifted by its offset in its first page (host) */
    at = ALIGN_UP(at + lo % MB_DEV_ALIGN + (hi - lo), MB_DEV_ALIGN);
  }
  out->arena_bytes = at;
  return 0;
}

uint64_t mb__layout_span_at(const mb__layout *l, size_t i, mb_device_kind k) {
  return l->base[i] + (k == MB_DEVICE_HOST ? l->span_start[i] % MB_DEV_ALIGN : 0);
}

void mb__layout_free(mb__layout *l) {
  mb__free(l->base);
  mb__free(l->span_start);
  mb__free(l->span_bytes);
  memset(l, 0, sizeof(*l));
}

double mb__cached_fraction(int fd, uint64_t off, uint64_t len) {
  long pg = sysconf(_SC_PAGESIZE);
  if (pg <= 0 || len == 0)
    return -1;
  uint64_t start = off & ~(uint64_t)(pg - 1);
  uint64_t maplen = off + len - start;
  void *m = mmap(NULL, maplen, PROT_READ, MAP_SHARED, fd, (off_t)start);
  if (m == MAP_FAILED)
    return -1;
  size_t pages = (maplen + (uint64_t)pg - 1) / (uint64_t)pg;
  double frac = -1;
  /* mincore in slices so the vector stays small for huge files */
  unsigned char vec[4096];
  size_t resident = 0;
  int ok = 1;
  for (size_t p = 0; p < pages && ok; p += sizeof(vec)) {
    size_t np = pages - p < sizeof(vec) ? pages - p : sizeof(vec);
    size_t bytes = np * (size_t)pg;
    if ((uint64_t)p * (uint64_t)pg + bytes > maplen)
      bytes = maplen - (uint64_t)p * (uint64_t)pg;
    if (mincore((char *)m + (size_t)p * (size_t)pg, bytes, vec) != 0) {
      ok = 0;
      break;
    }
    for (size_t j = 0; j < np; j++)
      resident += vec[j] & 1;
  }
  if (ok)
    frac = (double)resident / (double)pages;
  munmap(m, maplen);
  return frac;
}

/* One file being loaded. */
typedef struct lfile {
  const char *path;
  int fd;        /* buffered */
  int dfd;       /* O_DIRECT, or -1 */
  uint64_t start, bytes; /* the span in the file */
  uint64_t at;   /* arena offset of the span's first byte on this device */
  struct stat st;
} lfile;

typedef struct lstate {
  mb__dev *dev;
  lfile *files;
  size_t nfiles;
  uint64_t dptr;
  size_t chunk;
  _Atomic uint64_t next;   /* global chunk cursor over all files */
  uint64_t total_chunks;
  uint64_t *first_chunk;   /* per file: index of its first chunk */
  uint64_t done_bytes;      /* under mu */
  uint64_t total_bytes;
  int host;                /* the host device: reads land in the arena */
  const mb__load_opts *opts;
  const volatile int *cancel;
  pthread_mutex_t mu;      /* guards rc/err and serializes progress */
  int rc;
  char *err;
  size_t err_len;
} lstate;

static void fail(lstate *s, int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void fail(lstate *s, int rc, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  pthread_mutex_lock(&s->mu);
  if (s->rc == 0) {
    s->rc = rc;
    mb__set_err(s->err, s->err_len, "%s", msg);
  }
  pthread_mutex_unlock(&s->mu);
}

static int failed(lstate *s) {
  pthread_mutex_lock(&s->mu);
  int rc = s->rc;
  pthread_mutex_unlock(&s->mu);
  return rc != 0 || (s->cancel != NULL && *s->cancel);
}

/* Reads exactly n bytes at off into buf; returns 0, or errno, or -1 on EOF. */
static int read_full(int fd, void *buf, size_t n, uint64_t off, size_t *got) {
  size_t done = 0;
  while (done < n) {
    ssize_t r = pread(fd, (char *)buf + done, n - done, (off_t)(off + done));
    if (r < 0) {
      if (errno == EINTR)
        continue;
      return errno;
    }
    if (r == 0)
      break;
    done += (size_t)r;
  }
  if (got)
    *got = done;
  return done == n ? 0 : -1;
}

/*
 * Chunk c: its file (*fi, a hint kept between calls of one thread), the
 * file offset and length of its tensor bytes, and their arena address.
 * Chunks are cut at multiples of the chunk size in the file, so only a
 * file's first chunk starts inside a page and only its last ends inside one.
 */
static lfile *chunk_at(const lstate *s, uint64_t c, size_t *fi, uint64_t *off, size_t *n,
                       uint64_t *dst) {
  while (*fi + 1 < s->nfiles && s->first_chunk[*fi + 1] <= c)
    (*fi)++;
  while (*fi > 0 && s->first_chunk[*fi] > c)
    (*fi)--;
  lfile *f = &s->files[*fi];
  uint64_t a0 = f->start - f->start % MB_DEV_ALIGN; /* the span's first page */
  uint64_t lo = a0 + (c - s->first_chunk[*fi]) * s->chunk;
  uint64_t hi = lo + s->chunk;
  if (lo < f->start)
    lo = f->start;
  if (hi > f->start + f->bytes)
    hi = f->start + f->bytes;
  *off = lo;
  *n = (size_t)(hi - lo);
  *dst = s->dptr + f->at + (lo - f->start);
  return f;
}

/*
 * The populator (host device, direct reads): faults in the arena pages of
 * the chunks the readers have not taken yet, one chunk ahead of them and
 * further as it can, so the kernel zeroes fresh memory while the readers
 * wait for the disk. Chunks a reader has taken are skipped: their reads
 * fault their own pages. MADV_POPULATE_WRITE never changes a page that is
 * present, so it cannot disturb a read in flight. It stops at the first
 * error (a kernel without MADV_POPULATE_WRITE): the readers then fault.
 */
static void *populator(void *arg) {
  lstate *s = arg;
  size_t fi = 0;
  for (uint64_t c = 0; !failed(s); c++) {
    uint64_t taken = atomic_load(&s->next);
    if (c < taken)
      c = taken;
    if (c >= s->total_chunks)
      break;
    uint64_t off, dst;
    size_t n;
    lfile *f = chunk_at(s, c, &fi, &off, &n, &dst);
    if (f->dfd < 0)
      continue; /* a cached file: its buffered reads are faster alone */
    uint64_t lo = dst & ~(uint64_t)(MB_DEV_ALIGN - 1);
    if (mb__dev_populate(s->dev, lo, (size_t)(ALIGN_UP(dst + n, MB_DEV_ALIGN) - lo)) != 0)
      break;
  }
  return NULL;
}

/*
 * A reader thread: takes the next chunk, reads it into a staging buffer and
 * copies it to the device. On a GPU each thread has two staging buffers and
 * copies asynchronously: while one chunk's copy is in flight the next one is
 * read into the other buffer, and a buffer is reused only once its copy's
 * event has completed. On the host device every read lands in the arena
 * directly and there is no staging buffer: a direct read of chunk c covers
 * whole pages, the part before the span's first byte and after its last
 * falls in the padding of the file's region (loader.h).
 */
typedef struct rstage {
  void *buf;
  mb__dev_event *ev; /* the copy from buf still in flight, or NULL */
  size_t pending;    /* its bytes, counted as done when it completes */
} rstage;

static void add_done(lstate *s, size_t n) {
  if (n == 0)
    return;
  pthread_mutex_lock(&s->mu);
  s->done_bytes += n; /* under the lock so progress only ever grows */
  if (s->opts->progress != NULL)
    s->opts->progress(s->opts->progress_user, s->done_bytes, s->total_bytes);
  pthread_mutex_unlock(&s->mu);
}

/* Waits for the copy out of st, if any; 0 or MB_EIO (after fail()). */
static int stage_drain(lstate *s, rstage *st) {
  char e2[256];
  if (st->ev == NULL)
    return 0;
  int rc = mb__dev_event_wait(s->dev, st->ev, e2, sizeof(e2));
  st->ev = NULL;
  if (rc != 0) {
    fail(s, MB_EIO, "loader: copy to the device failed: %s", e2);
    st->pending = 0;
    return MB_EIO;
  }
  add_done(s, st->pending);
  st->pending = 0;
  return 0;
}

static void *reader(void *arg) {
  lstate *s = arg;
  char e2[256];
  size_t stage_len = s->chunk + 2 * MB_DEV_ALIGN;
  rstage st[2];
  int nst = s->host ? 0 : 2;
  memset(st, 0, sizeof(st));
  for (int k = 0; k < nst; k++)
    if (mb__dev_host_alloc(s->dev, stage_len, &st[k].buf, e2, sizeof(e2)) != 0) {
      fail(s, MB_ENOMEM, "loader: cannot allocate a %zu-byte staging buffer: %s", stage_len, e2);
      goto out;
    }
  size_t fi = 0;
  for (unsigned it = 0;; it++) {
    if (failed(s))
      break;
    uint64_t c = atomic_fetch_add(&s->next, 1);
    if (c >= s->total_chunks)
      break;
    uint64_t off, dst;
    size_t n;
    lfile *f = chunk_at(s, c, &fi, &off, &n, &dst);
    rstage *b = s->host ? NULL : &st[it % (unsigned)nst];
    if (b != NULL && stage_drain(s, b) != 0)
      break;
    int r;
    const char *from = NULL; /* what to copy to the device, if anything */
    if (f->dfd >= 0) {
      uint64_t a_off = off & ~(uint64_t)(MB_DEV_ALIGN - 1);
      size_t lead = (size_t)(off - a_off);
      size_t a_len = (size_t)ALIGN_UP(lead + n, MB_DEV_ALIGN);
      size_t got = 0;
      /* host: dst - lead is page-aligned, as the file offset a_off is */
      char *into = s->host ? (char *)(uintptr_t)(dst - lead) : b->buf;
      r = read_full(f->dfd, into, a_len, a_off, &got);
      if (r == -1 && got >= lead + n)
        r = 0; /* the aligned read ran into the end of the file */
      if (!s->host)
        from = (const char *)b->buf + lead;
    } else if (s->host) {
      r = read_full(f->fd, (void *)(uintptr_t)dst, n, off, NULL);
    } else {
      r = read_full(f->fd, b->buf, n, off, NULL);
      from = b->buf;
    }
    if (r == -1) {
      fail(s, MB_EIO, "%s: file is shorter than its header says (truncated or changed)", f->path);
      break;
    }
    if (r != 0) {
      fail(s, MB_EIO, "%s: read failed: %s", f->path, strerror(r));
      break;
    }
    if (from == NULL) {
      add_done(s, n);
      continue;
    }
    if (mb__dev_h2d_async(s->dev, dst, from, n, (int)(c % 4), &b->ev, e2, sizeof(e2)) != 0) {
      fail(s, MB_EIO, "loader: copy to the device failed: %s", e2);
      break;
    }
    if (b->ev != NULL)
      b->pending = n;
    else
      add_done(s, n); /* done already (host device) */
  }
out:
  /* Every copy in flight completes before its buffer is freed, also after
   * a failure. */
  for (int k = 0; k < nst; k++) {
    (void)stage_drain(s, &st[k]);
    if (st[k].buf != NULL)
      mb__dev_host_free(s->dev, st[k].buf);
  }
  return NULL;
}

static int same_stat(const struct stat *a, const struct stat *b) {
  return a->st_size == b->st_size && a->st_mtim.tv_sec == b->st_mtim.tv_sec &&
         a->st_mtim.tv_nsec == b->st_mtim.tv_nsec && a->st_ino == b->st_ino;
}

int mb__load_files(mb__dev *d, mb_tensor_file *const *files, const mb__layout *l, uint64_t dptr,
                   const mb__load_opts *opts, const volatile int *cancel, char *err,
                   size_t err_len) {
  mb__load_opts def = {0};
  if (opts == NULL)
    opts = &def;
  size_t chunk = opts->chunk_bytes ? opts->chunk_bytes : MB_LOAD_DEFAULT_CHUNK;
  chunk = (size_t)ALIGN_UP(chunk, MB_DEV_ALIGN);
  int threads = opts->threads > 0 ? opts->threads : MB_LOAD_DEFAULT_THREADS;
  if (threads > MB_LOAD_MAX_THREADS)
    threads = MB_LOAD_MAX_THREADS;

  lstate s;
  memset(&s, 0, sizeof(s));
  s.dev = d;
  s.host = mb__dev_kind(d) == MB_DEVICE_HOST;
  s.nfiles = l->nfiles;
  s.dptr = dptr;
  s.chunk = chunk;
  s.opts = opts;
  s.cancel = cancel;
  s.err = err;
  s.err_len = err_len;
  s.total_bytes = l->data_bytes;
  pthread_mutex_init(&s.mu, NULL);
  int rc = 0;
  s.files = mb__calloc(l->nfiles ? l->nfiles : 1, sizeof(lfile));
  s.first_chunk = mb__calloc(l->nfiles ? l->nfiles : 1, sizeof(uint64_t));
  if (s.files == NULL || s.first_chunk == NULL) {
    mb__set_err(err, err_len, "out of memory");
    rc = MB_ENOMEM;
    goto out;
  }
  for (size_t i = 0; i < l->nfiles; i++)
    s.files[i].fd = s.files[i].dfd = -1;
  for (size_t i = 0; i < l->nfiles; i++) {
    lfile *f = &s.files[i];
    f->path = mb_tensor_file_path(files[i]);
    f->start = l->span_start[i];
    f->bytes = l->span_bytes[i];
    f->at = mb__layout_span_at(l, i, mb__dev_kind(d));
    s.first_chunk[i] = s.total_chunks;
    if (f->bytes > 0)
      s.total_chunks += (f->start % MB_DEV_ALIGN + f->bytes + chunk - 1) / chunk;
    f->fd = open(f->path, O_RDONLY | O_CLOEXEC);
    if (f->fd < 0) {
      mb__set_err(err, err_len, "%s: cannot open: %s", f->path, strerror(errno));
      rc = MB_EIO;
      goto out;
    }
    if (fstat(f->fd, &f->st) != 0 ||
        (uint64_t)f->st.st_size != mb_tensor_file_size(files[i])) {
      mb__set_err(err, err_len, "%s: file changed since its header was read (size %lld, was %llu)",
                  f->path, (long long)f->st.st_size,
                  (unsigned long long)mb_tensor_file_size(files[i]));
      rc = MB_EIO;
      goto out;
    }
    int direct = opts->io == MB_IO_DIRECT;
    if (opts->io == MB_IO_AUTO && f->bytes > 0) {
      double frac = mb__cached_fraction(f->fd, f->start, f->bytes);
      direct = frac >= 0 && frac < 0.5;
    }
    if (direct && f->bytes > 0) {
      f->dfd = open(f->path, O_RDONLY | O_CLOEXEC | O_DIRECT);
      /* file systems without O_DIRECT (tmpfs): buffered reads */
    }
  }
  pthread_t tids[MB_LOAD_MAX_THREADS + 1];
  int started = 0;
  if ((uint64_t)threads > s.total_chunks)
    threads = (int)(s.total_chunks > 0 ? s.total_chunks : 0);
  for (int t = 0; t < threads; t++) {
    if (pthread_create(&tids[t], NULL, reader, &s) != 0) {
      fail(&s, MB_ENOMEM, "loader: cannot start a reader thread");
      break;
    }
    started++;
  }
  int direct = 0;
  for (size_t i = 0; i < l->nfiles; i++)
    direct |= s.files[i].dfd >= 0;
  /* No populator is not an error: the readers fault their own pages. */
  if (s.host && direct && started == threads && s.total_chunks > (uint64_t)threads &&
      pthread_create(&tids[started], NULL, populator, &s) == 0)
    started++;
  for (int t = 0; t < started; t++)
    pthread_join(tids[t], NULL);
  rc = s.rc;
  if (rc == 0 && cancel != NULL && *cancel) {
    mb__set_err(err, err_len, "load canceled");
    rc = MB_ECANCELED;
  }
  for (size_t i = 0; rc == 0 && i < l->nfiles; i++) {
    struct stat now;
    if (fstat(s.files[i].fd, &now) != 0 || !same_stat(&now, &s.files[i].st)) {
      mb__set_err(err, err_len, "%s: file changed while it was loaded", s.files[i].path);
      rc = MB_EIO;
    }
  }
out:
  if (s.files != NULL) {
    for (size_t i = 0; i < l->nfiles; i++) {
      if (s.files[i].fd >= 0)
        close(s.files[i].fd);
      if (s.files[i].dfd >= 0)
        close(s.files[i].dfd);
    }
  }
  mb__free(s.files);
  mb__free(s.first_chunk);
  pthread_mutex_destroy(&s.mu);
  return rc;
}
