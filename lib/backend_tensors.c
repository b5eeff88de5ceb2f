/*
 * backend_tensors.c - the tensors backend: weight files loaded into one
 * device arena by the pipelined loader; offload to a pinned host buffer
 * kept for the model's lifetime (allocated at the first offload, reused by
 * every later one, freed at unload); restore copies back
 * (include/modelbuf/tensors.h).
 *
 * Offload and restore copy the arena in chunks on several streams with
 * several chunks in flight (mb__dev_copy_pinned), and wait for every one
 * before the device memory is freed or the model declared READY.
 *
 * With stable_addresses the arena is a reserved address range (device.h,
 * mb__dev_vrange) mapped at load/restore and unmapped at offload/unload;
 * the range and the device handle are then kept after unload, until the
 * model is freed or placed on another device.
 *
 * The core runs one operation of a model at a time; mu only guards what
 * mb_tensors_find and usage read from other threads.
 */
#include <pthread.h>
#include <string.h>

#include "modelbuf/tensors.h"
#include "alloc.h"
#include "backend.h"
#include "device.h"
#include "opts.h"
#include "tensor/loader.h"

struct mb_tensors_model {
  mb_tensor_file **files;
  size_t nfiles;
  mb__layout layout;
  mb_tensors_opts opts;
  pthread_mutex_t mu; /* guards the fields below against lookups */
  mb__dev *dev;       /* open while the arena or the host copy exists (and,
                         with stable_addresses, while the range does) */
  mb_device_kind dev_kind; /* the placement dev was opened for (a CUDA */
  int dev_ordinal;         /* placement may have fallen back to the host) */
  uint64_t arena;     /* device arena; 0 when not on the device */
  void *host;         /* host copy (allocated on first offload, kept) */
  int host_valid;     /* host holds the arena's contents (OFFLOADED) */
  mb__dev_vrange *vr; /* stable_addresses: the arena's reserved range */
};

/* Bytes of the arena as allocated (a model without tensor data still gets
 * one page, so that a loaded model has a non-zero arena). */
static size_t arena_alloc_bytes(const mb_tensors_model *m) {
  return (size_t)(m->layout.arena_bytes > 0 ? m->layout.arena_bytes : MB_DEV_ALIGN);
}

void mb_tensors_model_free(mb_tensors_model *m) {
  if (m == NULL)
    return;
  if (m->dev != NULL) {
    if (m->vr != NULL)
      mb__dev_vrange_free(m->dev, m->vr); /* unmaps the arena too */
    else
      mb__dev_free(m->dev, m->arena);
    mb__dev_pinned_free(m->dev, m->host, (size_t)m->layout.arena_bytes);
    mb__dev_close(m->dev);
  }
  for (size_t i = 0; i < m->nfiles; i++)
    mb_tensor_file_close(m->files[i]);
  mb__free(m->files);
  mb__layout_free(&m->layout);
  pthread_mutex_destroy(&m->mu);
  mb__free(m);
}

void mb_tensors_opts_init(mb_tensors_opts *opts) {
  memset(opts, 0, sizeof(*opts));
  opts->size = sizeof(*opts);
}

int mb_tensors_model_new(const char *const *paths, size_t npaths, const mb_tensors_opts *opts,
                         mb_tensors_model **out, char *err, size_t err_len) {
  mb_tensors_opts o;
  *out = NULL;
  if (paths == NULL || npaths == 0) {
    mb__set_err(err, err_len, "tensors: no weight files given");
    return MB_EINVAL;
  }
  mb_tensors_opts_init(&o);
  if (opts != NULL && MB__OPTS_TAKE(&o, opts, mb_tensors_opts, no_fallback, err, err_len) != 0)
    return MB_EINVAL;
  mb_tensors_model *m = mb__calloc(1, sizeof(*m));
  if (m == NULL || (m->files = mb__calloc(npaths, sizeof(*m->files))) == NULL) {
    mb__free(m);
    mb__set_err(err, err_len, "out of memory");
    return MB_ENOMEM;
  }
  pthread_mutex_init(&m->mu, NULL);
  m->opts = o;
  int rc = 0;
  for (size_t i = 0; i < npaths && rc == 0; i++) {
    rc = mb_tensor_file_open(paths[i], &m->files[i], err, err_len);
    if (rc == 0)
      m->nfiles++;
  }
  /* tensor names are unique across the files */
  for (size_t i = 0; i < m->nfiles && rc == 0; i++) {
    size_t cnt = mb_tensor_file_count(m->files[i]);
    for (size_t k = 0; k < cnt && rc == 0; k++) {
      mb_tensor_info ti;
      if (mb_tensor_file_info(m->files[i], k, &ti) != 0)
        continue;
      for (size_t j = 0; j < i && rc == 0; j++) {
        mb_tensor_info other;
        if (mb_tensor_file_find(m->files[j], ti.name, &other, NULL) == 0) {
          mb__set_err(err, err_len, "tensors: tensor '%s' is in both %s and %s", ti.name,
                      mb_tensor_file_path(m->files[j]), mb_tensor_file_path(m->files[i]));
          rc = MB_EINVAL;
        }
      }
    }
  }
  if (rc == 0 && mb__layout_make(m->files, m->nfiles, &m->layout) != 0) {
    mb__set_err(err, err_len, "out of memory");
    rc = MB_ENOMEM;
  }
  if (rc != 0) {
    mb_tensors_model_free(m);
    return rc;
  }
  *out = m;
  return 0;
}

uint64_t mb_tensors_model_bytes(const mb_tensors_model *m) { return m->layout.arena_bytes; }

size_t mb_tensors_count(const mb_tensors_model *m) {
  size_t n = 0;
  for (size_t i = 0; i < m->nfiles; i++)
    n += mb_tensor_file_count(m->files[i]);
  return n;
}

int mb_tensors_find(mb_tensors_model *m, const char *name, mb_tensor_ref *out) {
  for (size_t i = 0; i < m->nfiles; i++) {
    mb_tensor_info ti;
    if (mb_tensor_file_find(m->files[i], name, &ti, NULL) != 0)
      continue;
    pthread_mutex_lock(&m->mu);
    uint64_t arena = m->arena;
    mb_device_kind kind = m->dev != NULL ? mb__dev_kind(m->dev) : MB_DEVICE_HOST;
    pthread_mutex_unlock(&m->mu);
    if (arena == 0)
      return MB_ESTATE;
    memset(out, 0, sizeof(*out));
    out->name = ti.name;
    out->dtype = ti.dtype;
    out->ndim = ti.ndim;
    memcpy(out->shape, ti.shape, sizeof(out->shape));
    out->device_ptr = arena + mb__layout_at(&m->layout, i, kind, ti.offset);
    out->size_bytes = ti.size_bytes;
    return 0;
  }
  return MB_ENOENT;
}

size_t mb_tensors_file_count(const mb_tensors_model *m) { return m->nfiles; }

const mb_tensor_file *mb_tensors_file(const mb_tensors_model *m, size_t i) {
  return i < m->nfiles ? m->files[i] : NULL;
}

int mb_tensors_read(mb_tensors_model *m, const char *name, uint64_t offset, void *dst, size_t n,
                    char *err, size_t err_len) {
  if (m == NULL || name == NULL || (dst == NULL && n > 0)) {
    mb__set_err(err, err_len, "tensors: bad arguments");
    return MB_EINVAL;
  }
  for (size_t i = 0; i < m->nfiles; i++) {
    mb_tensor_info ti;
    if (mb_tensor_file_find(m->files[i], name, &ti, NULL) != 0)
      continue;
    if (offset > ti.size_bytes || n > ti.size_bytes - offset) {
      mb__set_err(err, err_len, "tensors: bytes [%llu, +%zu) are outside tensor '%s' (%llu bytes)",
                  (unsigned long long)offset, n, name, (unsigned long long)ti.size_bytes);
      return MB_EINVAL;
    }
    /* The caller's lease keeps the arena and the device open while we copy. */
    pthread_mutex_lock(&m->mu);
    mb__dev *d = m->dev;
    uint64_t arena = m->arena;
    pthread_mutex_unlock(&m->mu);
    if (arena == 0 || d == NULL) {
      mb__set_err(err, err_len, "tensors: the model is not on its device");
      return MB_ESTATE;
    }
    if (n == 0)
      return 0;
    uint64_t src = arena + mb__layout_at(&m->layout, i, mb__dev_kind(d), ti.offset) + offset;
    return mb__dev_d2h(d, dst, src, n, 0, err, err_len);
  }
  mb__set_err(err, err_len, "tensors: no tensor '%s'", name);
  return MB_ENOENT;
}

static void on_progress(void *user, uint64_t done, uint64_t total) {
  mb_op_progress(user, done, total);
}

/* Frees the reserved range and closes the device (nothing else may be
 * allocated on it). */
static void drop_dev(mb_tensors_model *m) {
  pthread_mutex_lock(&m->mu);
  mb__dev *d = m->dev;
  mb__dev_vrange *vr = m->vr;
  m->dev = NULL;
  m->vr = NULL;
  pthread_mutex_unlock(&m->mu);
  if (d != NULL) {
    mb__dev_vrange_free(d, vr);
    mb__dev_close(d);
  }
}

/* Opens the device of op. A CUDA placement without a driver or
 * GPU gets the host device unless the model asked for no fallback; the
 * reason becomes a warning event of the model (mb__op_note). */
static int open_dev(const mb_tensors_model *m, mb_op *op, mb__dev **d) {
  char note[256] = "";
  *d = NULL;
  int rc = m->opts.no_fallback
               ? mb__dev_open(op->device_kind, op->device_ordinal, d, note, sizeof(note))
               : mb__dev_open_fallback(op->device_kind, op->device_ordinal, d, note,
                                       sizeof(note));
  if (rc != 0)
    mb__set_err(op->err, op->err_len, "%s", note);
  else if (note[0])
    mb__op_note(op, note);
  return rc;
}

/* Makes d (open) the model's device, the one op names. */
static void set_dev(mb_tensors_model *m, mb_op *op, mb__dev *d) {
  pthread_mutex_lock(&m->mu);
  m->dev = d;
  m->dev_kind = op->device_kind;
  m->dev_ordinal = op->device_ordinal;
  pthread_mutex_unlock(&m->mu);
}

static int same_dev(const mb_tensors_model *m, const mb_op *op) {
  return m->dev_kind == op->device_kind && m->dev_ordinal == op->device_ordinal;
}

/* Makes the device of op the model's, opened unless it already is. */
static int ensure_dev(mb_tensors_model *m, mb_op *op) {
  if (m->dev != NULL) {
    if (same_dev(m, op))
      return 0;
    drop_dev(m); /* kept from an earlier placement (stable_addresses) */
  }
  mb__dev *d;
  int rc = open_dev(m, op, &d);
  if (rc == 0)
    set_dev(m, op, d);
  return rc;
}

static void set_arena(mb_tensors_model *m, uint64_t arena) {
  pthread_mutex_lock(&m->mu);
  m->arena = arena;
  pthread_mutex_unlock(&m->mu);
}

/* Device memory for the arena: a fresh allocation, or the model's reserved
 * range (reserved on first use) backed again. */
static int alloc_arena(mb_tensors_model *m, mb_op *op, uint64_t *arena) {
  *arena = 0;
  if (!m->opts.stable_addresses)
    return mb__dev_alloc(m->dev, arena_alloc_bytes(m), arena, op->err, op->err_len);
  if (m->vr == NULL) {
    mb__dev_vrange *vr = NULL;
    int rc = mb__dev_vrange_new(m->dev, arena_alloc_bytes(m), &vr, op->err, op->err_len);
    if (rc != 0)
      return rc;
    pthread_mutex_lock(&m->mu);
    m->vr = vr;
    pthread_mutex_unlock(&m->mu);
  }
  int rc = mb__dev_vrange_map(m->dev, m->vr, op->err, op->err_len);
  if (rc == 0)
    *arena = mb__dev_vrange_addr(m->vr);
  return rc;
}

static void free_arena(mb_tensors_model *m, uint64_t arena) {
  if (m->vr != NULL)
    mb__dev_vrange_unmap(m->dev, m->vr);
  else
    mb__dev_free(m->dev, arena);
}

/* Frees everything but, with stable_addresses, the reserved range and the
 * device; the model can be loaded again. */
static void release_all(mb_tensors_model *m) {
  pthread_mutex_lock(&m->mu);
  mb__dev *d = m->dev;
  uint64_t arena = m->arena;
  void *host = m->host;
  m->arena = 0;
  m->host = NULL;
  m->host_valid = 0;
  pthread_mutex_unlock(&m->mu);
  if (d == NULL)
    return;
  if (arena != 0)
    free_arena(m, arena);
  else if (m->vr != NULL)
    mb__dev_vrange_unmap(d, m->vr); /* a load that failed after mapping */
  mb__dev_pinned_free(d, host, (size_t)m->layout.arena_bytes);
  if (!m->opts.stable_addresses)
    drop_dev(m);
}

/* Offload (to_device 0) or restore (1) of the whole arena through the
 * model's pinned host buffer; restore reports progress as chunks complete. */
static int copy_arena(mb_tensors_model *m, mb_op *op, int to_device, uint64_t arena,
                      size_t bytes) {
  return mb__dev_copy_pinned(m->dev, to_device, arena, m->host, bytes,
                             to_device ? on_progress : NULL, op, op->err, op->err_len);
}

static int t_load(mb_op *op) {
  mb_tensors_model *m = op->user;
  int rc = ensure_dev(m, op);
  if (rc != 0)
    return rc;
  uint64_t arena = 0;
  rc = alloc_arena(m, op, &arena);
  if (rc == 0) {
    mb__load_opts lo = {.chunk_bytes = m->opts.chunk_bytes,
                        .threads = m->opts.threads,
                        .io = (mb__io_mode)m->opts.io,
                        .progress = on_progress,
                        .progress_user = op};
    rc = mb__load_files(m->dev, m->files, &m->layout, arena, &lo, NULL, op->err, op->err_len);
    if (rc != 0)
      free_arena(m, arena);
    else
      set_arena(m, arena);
  }
  if (rc != 0)
    release_all(m);
  return rc;
}

static int t_offload(mb_op *op) {
  mb_tensors_model *m = op->user;
  size_t bytes = (size_t)m->layout.arena_bytes;
  if (m->host == NULL && bytes > 0) {
    void *h = NULL;
    int threads = m->opts.threads > 0 ? m->opts.threads : 4;
    int rc = mb__dev_pinned_alloc(m->dev, bytes, threads, &h, op->err, op->err_len);
    if (rc != 0)
      return rc;
    pthread_mutex_lock(&m->mu);
    m->host = h;
    pthread_mutex_unlock(&m->mu);
  }
  if (bytes > 0) {
    int rc = copy_arena(m, op, 0, m->arena, bytes);
    if (rc != 0)
      return rc;
  }
  uint64_t arena = m->arena;
  set_arena(m, 0);
  free_arena(m, arena);
  m->host_valid = 1;
  return 0;
}

/* A restore placed on another device than the one the model left: the
 * host copy (pinned portably, laid out for its device's kind) moves with
 * it when the new device is of the same kind; the old device is closed
 * (with stable_addresses, its reserved range freed: a new one is reserved
 * on the new device). */
static int move_dev(mb_tensors_model *m, mb_op *op) {
  if (m->dev == NULL || same_dev(m, op))
    return 0;
  mb__dev *d;
  int rc = open_dev(m, op, &d);
  if (rc != 0)
    return rc;
  if (mb__dev_kind(d) != mb__dev_kind(m->dev)) {
    mb__dev_close(d);
    mb__set_err(op->err, op->err_len,
                "tensors: cannot restore onto a device of another kind than the one the "
                "model was offloaded from");
    return MB_ENOTSUP;
  }
  drop_dev(m);
  set_dev(m, op, d);
  return 0;
}

static int t_restore(mb_op *op) {
  mb_tensors_model *m = op->user;
  uint64_t arena = 0;
  int rc = move_dev(m, op);
  if (rc != 0)
    return rc;
  rc = alloc_arena(m, op, &arena);
  if (rc != 0)
    return rc;
  if (m->layout.arena_bytes > 0) {
    mb_op_progress(op, 0, m->layout.arena_bytes);
    rc = copy_arena(m, op, 1, arena, (size_t)m->layout.arena_bytes);
    if (rc != 0) {
      free_arena(m, arena);
      return rc;
    }
  }
  m->host_valid = 0;
  set_arena(m, arena);
  return 0;
}

static int t_unload(mb_op *op) {
  release_all(op->user);
  return 0;
}

static int t_usage(mb_op *op, mb_usage *out) {
  mb_tensors_model *m = op->user;
  pthread_mutex_lock(&m->mu);
  out->device_bytes = m->arena != 0 ? m->layout.arena_bytes : 0;
  out->host_bytes = m->host != NULL ? m->layout.arena_bytes : 0;
  pthread_mutex_unlock(&m->mu);
  return 0;
}

static void t_destroy(void *user) { mb_tensors_model_free(user); }

static const mb_backend tensors_backend = {
    .name = "tensors",
    .load = t_load,
    .offload = t_offload,
    .restore = t_restore,
    .unload = t_unload,
    .usage = t_usage,
    .health = NULL,
    .destroy = t_destroy,
    .cancel = NULL,
};

const mb_backend *mb_tensors_backend(void) { return &tensors_backend; }
