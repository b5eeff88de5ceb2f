/*
 * tensors.c - tensors models in modelbufd: weight files kept in device
 * memory by libmodelbuf's tensors backend, served over HTTP.
 *
 * The backend here is a thin layer over mb_tensors_backend(): it keeps the
 * configured `files:` entries and loader knobs, and before a load (from
 * UNLOADED or FAILED) it expands the entries again (a folder, a Hugging
 * Face index, a glob pattern: mbd_files_expand) and reads the files'
 * headers again when the list of files differs, a file changed on disk or
 * could not be read before. So a daemon whose weight file is missing or
 * broken at start still starts, the model fails each load with the file's
 * fault (and the core's back-off), and a repaired or replaced file, or a
 * snapshot folder whose shards changed, is picked up by the next cold load
 * without a restart. Every other operation (load, offload, restore,
 * unload, usage) is the library's, on the same mb_op.
 *
 * Requests: GET /m/{name}/tensors lists the tensors; GET
 * /m/{name}/tensors/{tensor} streams one tensor's bytes, copied from the
 * device chunk by chunk (mb_tensors_read) while the request holds a lease,
 * with Range support. Routes and methods are checked before the lease, so
 * a typo never loads a model.
 *
 * Locking: mbd_tensors.mu guards tm, ids, paths and n. They are replaced
 * only by a load (on a loader thread, which reads them without the lock),
 * which the core never runs while a lease is out; so a request holding a
 * lease may use the tm it read under mu without holding mu. Requests that
 * read a model's tensors pointer without a lease (the route pre-check) hold
 * d->reload_rw for reading, as reload frees removed models under it.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "modelbuf/tensors.h"
#include "tensors.h"

/* Bytes copied from the device per read of a streamed answer. */
#define TENSOR_BLOCK (256 * 1024)

/* What identifies a file's contents between two loads. */
typedef struct file_id {
  int ok; /* stat succeeded */
  dev_t dev;
  ino_t ino;
  off_t size;
  struct timespec mtime;
} file_id;

struct mbd_tensors {
  char *name;           /* the model's (for ${MODEL} in files) */
  char **specs;         /* the configured files: entries */
  size_t n_specs;
  mb_tensors_opts opts;
  pthread_mutex_t mu;   /* guards tm, ids, paths and n */
  char **paths;         /* the files of tm (mb_tensors_paths_free) */
  size_t n;
  mb_tensors_model *tm; /* NULL until the headers could be read */
  file_id *ids;         /* each file as it was when tm was opened */
};

/* ------------------------------------------------------------------------ */
/* The model and its backend                                                 */

static void ids_take(char *const *paths, size_t n, file_id *ids) {
  for (size_t i = 0; i < n; i++) {
    struct stat st;
    memset(&ids[i], 0, sizeof(ids[i]));
    if (stat(paths[i], &st) != 0)
      continue;
    ids[i].ok = 1;
    ids[i].dev = st.st_dev;
    ids[i].ino = st.st_ino;
    ids[i].size = st.st_size;
    ids[i].mtime = st.st_mtim;
  }
}

/* 1 when a file is not what it was when tm was opened. Called on a loader
 * thread: tm and ids change only there, so no lock is needed to read them. */
static int files_changed(mbd_tensors *t) {
  for (size_t i = 0; i < t->n; i++) {
    struct stat st;
    const file_id *f = &t->ids[i];
    if (stat(t->paths[i], &st) != 0 || !f->ok || st.st_dev != f->dev || st.st_ino != f->ino ||
        st.st_size != f->size || st.st_mtim.tv_sec != f->mtime.tv_sec ||
        st.st_mtim.tv_nsec != f->mtime.tv_nsec)
      return 1;
  }
  return 0;
}

/* The files the configured entries name now (mbd_files_expand). */
static int expand(mbd_tensors *t, char ***paths, size_t *n, char *err, size_t err_len) {
  return mbd_files_expand(t->specs, t->n_specs, t->name, paths, n, err, err_len);
}

/* 1 when paths (n) is not the list tm was opened from. */
static int list_differs(const mbd_tensors *t, char *const *paths, size_t n) {
  if (n != t->n)
    return 1;
  for (size_t i = 0; i < n; i++)
    if (strcmp(paths[i], t->paths[i]) != 0)
      return 1;
  return 0;
}

/* Reads the headers of paths (taken over) into a new library model, which
 * replaces tm (not loaded). */
static int reopen(mbd_tensors *t, char **paths, size_t n, char *err, size_t err_len) {
  file_id *ids = calloc(n ? n : 1, sizeof(*ids));
  if (ids == NULL) {
    mb_tensors_paths_free(paths, n);
    snprintf(err, err_len, "out of memory");
    return MB_ENOMEM;
  }
  ids_take(paths, n, ids); /* before the open: a change in between shows next time */
  mb_tensors_model *tm;
  int rc = mb_tensors_model_new((const char *const *)paths, n, &t->opts, &tm, err, err_len);
  if (rc != 0) {
    free(ids);
    mb_tensors_paths_free(paths, n);
    return rc;
  }
  pthread_mutex_lock(&t->mu);
  mb_tensors_model *old = t->tm;
  file_id *old_ids = t->ids;
  char **old_paths = t->paths;
  size_t old_n = t->n;
  t->tm = tm;
  t->ids = ids;
  t->paths = paths;
  t->n = n;
  pthread_mutex_unlock(&t->mu);
  mb_tensors_model_free(old); /* holds nothing: the model was unloaded */
  free(old_ids);
  mb_tensors_paths_free(old_paths, old_n);
  return 0;
}

static void tensors_free(mbd_tensors *t) {
  if (t == NULL)
    return;
  mb_tensors_model_free(t->tm);
  mb_tensors_paths_free(t->paths, t->n);
  for (size_t i = 0; i < t->n_specs; i++)
    free(t->specs[i]);
  free(t->specs);
  free(t->name);
  free(t->ids);
  pthread_mutex_destroy(&t->mu);
  free(t);
}

int mbd_tensors_new(const mbd_model_config *mc, mbd_tensors **out, uint64_t *footprint_bytes,
                    char *warn, size_t warn_len) {
  *out = NULL;
  warn[0] = '\0';
  if (mc->n_files == 0)
    return MB_EINVAL;
  mbd_tensors *t = calloc(1, sizeof(*t));
  if (t == NULL)
    return MB_ENOMEM;
  pthread_mutex_init(&t->mu, NULL);
  t->opts.chunk_bytes = (size_t)mc->loader.chunk_bytes;
  t->opts.threads = mc->loader.threads;
  t->opts.io = mc->loader.io;
  t->name = strdup(mc->name);
  t->specs = calloc(mc->n_files, sizeof(*t->specs));
  if (t->name == NULL || t->specs == NULL) {
    tensors_free(t);
    return MB_ENOMEM;
  }
  for (; t->n_specs < mc->n_files; t->n_specs++)
    if ((t->specs[t->n_specs] = strdup(mc->files[t->n_specs])) == NULL) {
      tensors_free(t);
      return MB_ENOMEM;
    }
  char **paths = NULL;
  size_t n = 0;
  int rc = expand(t, &paths, &n, warn, warn_len);
  uint64_t sum = 0; /* the files' sizes, while their headers cannot be read */
  for (size_t i = 0; rc == 0 && i < n; i++) {
    struct stat st;
    if (stat(paths[i], &st) == 0 && st.st_size > 0)
      sum += (uint64_t)st.st_size;
  }
  if (rc == 0)
    rc = reopen(t, paths, n, warn, warn_len);
  if (rc == MB_ENOMEM) {
    tensors_free(t);
    return rc;
  }
  if (rc == 0)
    *footprint_bytes = mb_tensors_model_bytes(t->tm);
  else if (mc->vram_bytes == 0)
    *footprint_bytes = sum;
  if (rc == 0)
    warn[0] = '\0';
  *out = t;
  return 0;
}

mb_tensors_model *mbd_tensors_model_of(mbd_tensors *t) {
  pthread_mutex_lock(&t->mu);
  mb_tensors_model *tm = t->tm;
  pthread_mutex_unlock(&t->mu);
  return tm;
}

size_t mbd_tensors_check_files(const mbd_model_config *mc, const char *cfg_file, FILE *f) {
  char **paths = NULL, err[512] = "";
  size_t n = 0, bad = 0;
  static const char tail[] =
      "(modelbufd starts, but the model cannot load until the file is fixed)";
  if (mbd_files_expand(mc->files, mc->n_files, mc->name, &paths, &n, err, sizeof(err)) != 0) {
    fprintf(f, "warning: %s:%d:%d: models.%s.files: %s %s\n", cfg_file, mc->line, mc->col,
            mc->name, err, tail);
    return 1;
  }
  for (size_t i = 0; i < n; i++) {
    mb_tensor_file *tf = NULL;
    if (mb_tensor_file_open(paths[i], &tf, err, sizeof(err)) != 0) {
      fprintf(f, "warning: %s:%d:%d: models.%s.files: %s %s\n", cfg_file, mc->line, mc->col,
              mc->name, err, tail);
      bad++;
    }
    mb_tensor_file_close(tf);
  }
  mb_tensors_paths_free(paths, n);
  return bad;
}

json_t *mbd_tensors_files(mbd_tensors *t) {
  json_t *a = json_array();
  pthread_mutex_lock(&t->mu);
  for (size_t i = 0; a != NULL && i < t->n; i++)
    json_array_append_new(a, json_string(t->paths[i]));
  pthread_mutex_unlock(&t->mu);
  return a;
}

/* Runs the library's operation fn on op with the library's model. */
static int call(int (*fn)(mb_op *), mbd_tensors *t, mb_op *op) {
  void *self = op->user;
  op->user = t->tm;
  int rc = fn(op);
  op->user = self;
  return rc;
}

static int w_load(mb_op *op) {
  mbd_tensors *t = op->user;
  char **paths = NULL;
  size_t n = 0;
  int rc = expand(t, &paths, &n, op->err, op->err_len);
  if (rc != 0)
    return rc;
  if (t->tm == NULL || list_differs(t, paths, n) || files_changed(t)) {
    rc = reopen(t, paths, n, op->err, op->err_len);
    if (rc != 0)
      return rc;
  } else {
    mb_tensors_paths_free(paths, n);
  }
  return call(mb_tensors_backend()->load, t, op);
}

static int w_offload(mb_op *op) { return call(mb_tensors_backend()->offload, op->user, op); }

static int w_restore(mb_op *op) { return call(mb_tensors_backend()->restore, op->user, op); }

static int w_unload(mb_op *op) {
  mbd_tensors *t = op->user;
  return t->tm != NULL ? call(mb_tensors_backend()->unload, t, op) : 0;
}

static int w_usage(mb_op *op, mb_usage *out) {
  mbd_tensors *t = op->user;
  if (t->tm == NULL) {
    out->device_bytes = out->host_bytes = 0;
    return 0;
  }
  void *self = op->user;
  op->user = t->tm;
  int rc = mb_tensors_backend()->usage(op, out);
  op->user = self;
  return rc;
}

static void w_destroy(void *user) { tensors_free(user); }

static const mb_backend backend = {
    .name = "tensors",
    .load = w_load,
    .offload = w_offload,
    .restore = w_restore,
    .unload = w_unload,
    .usage = w_usage,
    .health = NULL,
    .destroy = w_destroy,
};

const mb_backend *mbd_tensors_backend(void) { return &backend; }

/* ------------------------------------------------------------------------ */
/* Requests                                                                  */

static double wall_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* A tensor of tm by name: its info and the path of its file. */
static int find_tensor(const mb_tensors_model *tm, const char *name, mb_tensor_info *ti,
                       const char **path) {
  for (size_t i = 0; i < mb_tensors_file_count(tm); i++) {
    const mb_tensor_file *f = mb_tensors_file(tm, i);
    if (mb_tensor_file_find(f, name, ti, NULL) == 0) {
      *path = mb_tensor_file_path(f);
      return 0;
    }
  }
  return MB_ENOENT;
}

/* "[4096, 32000]" (the file's order; GGUF: innermost first). */
static void shape_text(const mb_tensor_info *ti, char *buf, size_t len) {
  size_t k = (size_t)snprintf(buf, len, "[");
  for (int i = 0; i < ti->ndim && k < len; i++)
    k += (size_t)snprintf(buf + k, len - k, "%s%" PRIu64, i ? ", " : "", ti->shape[i]);
  if (k < len)
    snprintf(buf + k, len - k, "]");
}

static json_t *shape_json(const mb_tensor_info *ti) {
  json_t *a = json_array();
  for (int i = 0; i < ti->ndim; i++)
    json_array_append_new(a, json_integer((json_int_t)ti->shape[i]));
  return a;
}

static void timing_headers(struct MHD_Response *resp, const mb_result *g) {
  char ms[32];
  snprintf(ms, sizeof(ms), "%.1f", (double)g->queue_ns / 1e6);
  MHD_add_response_header(resp, "X-Modelbuf-Queue-Ms", ms);
  snprintf(ms, sizeof(ms), "%.1f", (double)g->load_ns / 1e6);
  MHD_add_response_header(resp, "X-Modelbuf-Load-Ms", ms);
}

static void release(mbd *d, mbd_model *m, const mb_result *g, double granted_at) {
  mbd_proxy_trace(d, m->name, g, granted_at);
  if (mb_release(d->ctx, g->lease) != 0)
    mbd_log(d, MBD_LOG_WARN, "lease already released", "model=%s", m->name);
}

/* GET /m/{name}/tensors, under the lease g. */
static MHD_RESULT list(mbd *d, struct MHD_Connection *c, mbd_model *m, mb_tensors_model *tm,
                       const mb_result *g, double granted_at) {
  json_t *files = json_array(), *tensors = json_array();
  uint64_t total = 0;
  for (size_t i = 0; i < mb_tensors_file_count(tm); i++) {
    const mb_tensor_file *f = mb_tensors_file(tm, i);
    size_t n = mb_tensor_file_count(f);
    json_array_append_new(
        files, json_pack("{s:s,s:s,s:I,s:I}", "path", mb_tensor_file_path(f), "format",
                         mb_tensor_format_name(mb_tensor_file_format(f)), "size_bytes",
                         (json_int_t)mb_tensor_file_size(f), "tensors", (json_int_t)n));
    for (size_t k = 0; k < n; k++) {
      mb_tensor_info ti;
      if (mb_tensor_file_info(f, k, &ti) != 0)
        continue;
      total += ti.size_bytes;
      json_array_append_new(tensors,
                            json_pack("{s:s,s:s,s:o,s:I,s:s,s:I}", "name", ti.name, "dtype",
                                      ti.dtype_name, "shape", shape_json(&ti), "bytes",
                                      (json_int_t)ti.size_bytes, "file", mb_tensor_file_path(f),
                                      "offset", (json_int_t)ti.offset));
    }
  }
  json_t *doc = json_pack("{s:s,s:I,s:I,s:I,s:o,s:o}", "model", m->name, "count",
                          (json_int_t)json_array_size(tensors), "bytes", (json_int_t)total,
                          "arena_bytes", (json_int_t)mb_tensors_model_bytes(tm), "files", files,
                          "tensors", tensors);
  release(d, m, g, granted_at);
  char *s = doc ? json_dumps(doc, MBD_JSON_FLAGS) : NULL;
  json_decref(doc);
  struct MHD_Response *resp =
      s ? MHD_create_response_from_buffer(strlen(s), s, MHD_RESPMEM_MUST_FREE) : NULL;
  if (resp == NULL) {
    free(s);
    return mbd_reply_error(c, 500, "internal", "out of memory", 0);
  }
  MHD_add_response_header(resp, "Content-Type", "application/json");
  timing_headers(resp, g);
  mbd_count_code(d, m, 200);
  MHD_RESULT r = MHD_queue_response(c, 200, resp);
  MHD_destroy_response(resp);
  return r;
}

/* One tensor's bytes streamed to a client; the lease is held until the
 * answer ends (tx_free). */
typedef struct tx {
  mbd *d;
  mbd_model *m;
  mb_tensors_model *tm;
  char *name;
  uint64_t start, len; /* the range sent */
  mb_result granted;
  double granted_at;
} tx;

static ssize_t tx_read(void *cls, uint64_t pos, char *buf, size_t max) {
  tx *x = cls;
  if (pos >= x->len)
    return MHD_CONTENT_READER_END_OF_STREAM;
  size_t n = x->len - pos < max ? (size_t)(x->len - pos) : max;
  char err[256];
  if (mb_tensors_read(x->tm, x->name, x->start + pos, buf, n, err, sizeof(err)) != 0) {
    mbd_log(x->d, MBD_LOG_ERROR, "tensors: read failed", "model=%s tensor=\"%s\" why=\"%s\"",
            x->m->name, x->name, err);
    return MHD_CONTENT_READER_END_WITH_ERROR;
  }
  return (ssize_t)n;
}

static void tx_free(void *cls) {
  tx *x = cls;
  release(x->d, x->m, &x->granted, x->granted_at);
  free(x->name);
  free(x);
}

/*
 * A Range header against a tensor of size bytes: 0 = none or not one we
 * serve (the whole tensor), 1 = *start, *len set, -1 = not satisfiable.
 * One range of bytes only ("bytes=A-B", "bytes=A-", "bytes=-N"), as most
 * servers; anything else is ignored, as RFC 9110 allows.
 */
static int parse_range(const char *h, uint64_t size, uint64_t *start, uint64_t *len) {
  if (h == NULL || strncmp(h, "bytes=", 6) != 0 || strchr(h, ',') != NULL)
    return 0;
  const char *p = h + 6;
  char *end;
  if (*p == '-') {
    if (p[1] < '0' || p[1] > '9')
      return 0;
    unsigned long long n = strtoull(p + 1, &end, 10);
    if (*end != '\0')
      return 0;
    if (n == 0 || size == 0)
      return -1;
    *len = n < size ? n : size;
    *start = size - *len;
    return 1;
  }
  if (*p < '0' || *p > '9')
    return 0;
  unsigned long long a = strtoull(p, &end, 10), b = UINT64_MAX;
  if (*end != '-')
    return 0;
  if (end[1] != '\0') {
    const char *q = end + 1;
    if (*q < '0' || *q > '9')
      return 0;
    b = strtoull(q, &end, 10);
    if (*end != '\0' || b < a)
      return 0;
  }
  if (a >= size)
    return -1;
  if (b >= size)
    b = size - 1;
  *start = a;
  *len = b - a + 1;
  return 1;
}

/* GET /m/{name}/tensors/{tensor}, under the lease g (taken over). */
static MHD_RESULT fetch(mbd *d, struct MHD_Connection *c, mbd_model *m, mb_tensors_model *tm,
                        const char *name, const mb_result *g, double granted_at) {
  mb_tensor_info ti;
  const char *path;
  if (find_tensor(tm, name, &ti, &path) != 0) {
    release(d, m, g, granted_at);
    char msg[400];
    snprintf(msg, sizeof(msg), "no tensor '%.200s' in model '%s' (GET /m/%s/tensors lists them)",
             name, m->name, m->name);
    mbd_count_code(d, m, 404);
    return mbd_reply_error(c, 404, "not_found", msg, 0);
  }
  uint64_t start = 0, len = ti.size_bytes;
  int ranged = parse_range(MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Range"),
                           ti.size_bytes, &start, &len);
  char v[160];
  if (ranged < 0) {
    release(d, m, g, granted_at);
    mbd_count_code(d, m, 416);
    snprintf(v, sizeof(v), "the range is outside tensor '%.100s' of %" PRIu64 " bytes", name,
             ti.size_bytes);
    char range[64];
    snprintf(range, sizeof(range), "bytes */%" PRIu64, ti.size_bytes);
    return mbd_reply_error_hdr(c, 416, "range_not_satisfiable", v, "Content-Range", range);
  }
  tx *x = calloc(1, sizeof(*x));
  if (x == NULL || (x->name = strdup(name)) == NULL) {
    free(x);
    release(d, m, g, granted_at);
    return mbd_reply_error(c, 500, "internal", "out of memory", 0);
  }
  x->d = d;
  x->m = m;
  x->tm = tm;
  x->start = start;
  x->len = len;
  x->granted = *g;
  x->granted_at = granted_at;
  struct MHD_Response *resp =
      MHD_create_response_from_callback(len, TENSOR_BLOCK, tx_read, x, tx_free);
  if (resp == NULL) {
    tx_free(x);
    return MHD_NO;
  }
  MHD_add_response_header(resp, "Content-Type", "application/octet-stream");
  MHD_add_response_header(resp, "Accept-Ranges", "bytes");
  MHD_add_response_header(resp, "X-Modelbuf-Tensor-Dtype", ti.dtype_name);
  shape_text(&ti, v, sizeof(v));
  MHD_add_response_header(resp, "X-Modelbuf-Tensor-Shape", v);
  snprintf(v, sizeof(v), "%" PRIu64, ti.size_bytes);
  MHD_add_response_header(resp, "X-Modelbuf-Tensor-Bytes", v);
  if (ranged) {
    snprintf(v, sizeof(v), "bytes %" PRIu64 "-%" PRIu64 "/%" PRIu64, start, start + len - 1,
             ti.size_bytes);
    MHD_add_response_header(resp, "Content-Range", v);
  }
  timing_headers(resp, g);
  int status = ranged ? 206 : 200;
  mbd_count_code(d, m, status);
  MHD_RESULT r = MHD_queue_response(c, (unsigned)status, resp);
  MHD_destroy_response(resp);
  return r;
}

/* 1 when the model's headers are known and have no tensor called name. */
static int surely_unknown(mbd *d, mbd_model *m, const char *name) {
  int unknown = 0;
  pthread_rwlock_rdlock(&d->reload_rw);
  mbd_tensors *t = m->tensors;
  if (t != NULL) {
    pthread_mutex_lock(&t->mu);
    mb_tensor_info ti;
    const char *path;
    unknown = t->tm != NULL && find_tensor(t->tm, name, &ti, &path) != 0;
    pthread_mutex_unlock(&t->mu);
  }
  pthread_rwlock_unlock(&d->reload_rw);
  return unknown;
}

MHD_RESULT mbd_tensors_serve(mbd *d, struct MHD_Connection *c, mbd_model *m, const char *method,
                             const char *path) {
  char msg[512];
  const char *name = NULL;
  int is_list = strcmp(path, "/tensors") == 0 || strcmp(path, "/tensors/") == 0;
  if (!is_list && strncmp(path, "/tensors/", 9) == 0)
    name = path + 9;
  if (!is_list && name == NULL) {
    snprintf(msg, sizeof(msg),
             "no route %.200s for tensors model '%s'; its routes: GET /m/%s/tensors (the list), "
             "GET /m/%s/tensors/{tensor} (a tensor's bytes)",
             path, m->name, m->name, m->name);
    mbd_count_code(d, m, 404);
    return mbd_reply_error(c, 404, "not_found", msg, 0);
  }
  if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
    snprintf(msg, sizeof(msg), "%s is not allowed on %.200s of tensors model '%s' (GET or HEAD)",
             method, path, m->name);
    mbd_count_code(d, m, 405);
    return mbd_reply_error_hdr(c, 405, "method_not_allowed", msg, "Allow", "GET, HEAD");
  }
  if (name != NULL && surely_unknown(d, m, name)) {
    snprintf(msg, sizeof(msg), "no tensor '%.200s' in model '%s' (GET /m/%s/tensors lists them)",
             name, m->name, m->name);
    mbd_count_code(d, m, 404);
    return mbd_reply_error(c, 404, "not_found", msg, 0);
  }

  mb_result got;
  mbd_model *cur;
  MHD_RESULT res;
  if (mbd_proxy_lease(d, c, m, &got, &cur, &res) != 0)
    return res;
  double granted_at = wall_s();
  mbd_tensors *t = cur->tensors;
  mb_tensors_model *tm = NULL;
  if (t != NULL) {
    pthread_mutex_lock(&t->mu);
    tm = t->tm; /* READY under our lease: a load cannot replace it now */
    pthread_mutex_unlock(&t->mu);
  }
  if (tm == NULL) { /* a reload gave the name another backend meanwhile */
    release(d, cur, &got, granted_at);
    return mbd_reply_error(c, 409, "state_conflict",
                           "the model changed backend during a reload; send it again", 0);
  }
  if (is_list)
    return list(d, c, cur, tm, &got, granted_at);
  return fetch(d, c, cur, tm, name, &got, granted_at);
}
