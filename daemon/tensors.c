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
 * lease may use the tm it read under mu without holding mu. An mbd_tensors
 * lives until the daemon stops (daemon.h), so the route pre-check may read
 * it without a lease.
 *
 * Requests run on the front door's loop threads: the lease is asked with
 * mbd_px_lease, and a tensor's bytes are copied from the device one block
 * at a time as the client takes them (on_drain).
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "front.h"
#include "modelbuf/tensors.h"
#include "proxy.h"
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
  mb_tensors_opts_init(&t->opts);
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

/* GET /m/{name}/tensors, under the lease of x. */
static void list(mbd_px *x, mbd_req *r, mbd_model *m, mb_tensors_model *tm) {
  mbd *d = r->d;
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
  char *s = doc ? json_dumps(doc, MBD_JSON_FLAGS) : NULL;
  json_decref(doc);
  if (s == NULL) {
    mbd_reply_error(r, 500, "internal", "out of memory", 0);
  } else {
    mbd_count_code(d, m, 200);
    mbd_resp_start(r, 200);
    mbd_px_timing_headers(r, mbd_px_result(x));
    mbd_resp_body(r, "application/json", s, strlen(s));
    free(s);
  }
  mbd_px_done(x);
}

/* One tensor's bytes streamed to a client; the lease is held until the
 * answer ends. */
typedef struct tx {
  mbd_px *x;
  mbd_model *m;
  mb_tensors_model *tm;
  char *name;
  uint64_t start, len, sent; /* the range sent, and how much of it so far */
} tx;

static void tx_end(mbd_req *r, tx *t) {
  mbd_px *x = t->x;
  free(t->name);
  free(t);
  r->on_drain = NULL;
  mbd_px_done(x); /* releases the lease */
}

static void tx_gone(mbd_req *r) { tx_end(r, mbd_px_user(mbd_px_of(r))); }

/* Copies the next blocks from the device while the client keeps up. */
static void tx_fill(mbd_req *r) {
  tx *t = mbd_px_user(mbd_px_of(r));
  char buf[TENSOR_BLOCK];
  while (t->sent < t->len && mbd_resp_pending(r) < 4 * TENSOR_BLOCK) {
    size_t n = t->len - t->sent < sizeof(buf) ? (size_t)(t->len - t->sent) : sizeof(buf);
    char err[256];
    if (mb_tensors_read(t->tm, t->name, t->start + t->sent, buf, n, err, sizeof(err)) != 0) {
      mbd_log(r->d, MBD_LOG_ERROR, "tensors: read failed", "model=%s tensor=\"%s\" why=\"%s\"",
              t->m->name, t->name, err);
      mbd_resp_abort(r); /* the client must see the answer is cut */
      tx_end(r, t);
      return;
    }
    t->sent += n;
    mbd_resp_write(r, buf, n);
  }
  if (t->sent == t->len) {
    mbd_resp_end(r);
    tx_end(r, t);
  }
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


/* GET /m/{name}/tensors/{tensor}, under the lease of x. */
static void fetch(mbd_px *x, mbd_req *r, mbd_model *m, mb_tensors_model *tm, const char *name) {
  mbd *d = r->d;
  mb_tensor_info ti;
  const char *path;
  if (find_tensor(tm, name, &ti, &path) != 0) {
    char msg[400];
    snprintf(msg, sizeof(msg), "no tensor '%.200s' in model '%s' (GET /m/%s/tensors lists them)",
             name, m->name, m->name);
    mbd_count_code(d, m, 404);
    mbd_reply_error(r, 404, "not_found", msg, 0);
    mbd_px_done(x);
    return;
  }
  uint64_t start = 0, len = ti.size_bytes;
  char range[128];
  int ranged = mbd_req_header(r, "Range", range, sizeof(range))
                   ? parse_range(range, ti.size_bytes, &start, &len)
                   : 0;
  char v[160];
  if (ranged < 0) {
    mbd_count_code(d, m, 416);
    snprintf(v, sizeof(v), "the range is outside tensor '%.100s' of %" PRIu64 " bytes", name,
             ti.size_bytes);
    char cr[64];
    snprintf(cr, sizeof(cr), "bytes */%" PRIu64, ti.size_bytes);
    mbd_reply_error_hdr(r, 416, "range_not_satisfiable", v, "Content-Range", cr);
    mbd_px_done(x);
    return;
  }
  tx *t = calloc(1, sizeof(*t));
  if (t == NULL || (t->name = strdup(name)) == NULL) {
    free(t);
    mbd_reply_error(r, 500, "internal", "out of memory", 0);
    mbd_px_done(x);
    return;
  }
  t->x = x;
  t->m = m;
  t->tm = tm;
  t->start = start;
  t->len = len;
  int status = ranged ? 206 : 200;
  mbd_count_code(d, m, status);
  mbd_resp_start(r, status);
  mbd_resp_header(r, "Accept-Ranges", "bytes");
  mbd_resp_header(r, "X-Modelbuf-Tensor-Dtype", ti.dtype_name);
  shape_text(&ti, v, sizeof(v));
  mbd_resp_header(r, "X-Modelbuf-Tensor-Shape", v);
  snprintf(v, sizeof(v), "%" PRIu64, ti.size_bytes);
  mbd_resp_header(r, "X-Modelbuf-Tensor-Bytes", v);
  if (ranged) {
    snprintf(v, sizeof(v), "bytes %" PRIu64 "-%" PRIu64 "/%" PRIu64, start, start + len - 1,
             ti.size_bytes);
    mbd_resp_header(r, "Content-Range", v);
  }
  mbd_px_timing_headers(r, mbd_px_result(x));
  mbd_resp_stream(r, "application/octet-stream", (int64_t)len);
  if (r->is_head) {
    t->sent = t->len;
    mbd_resp_end(r);
    free(t->name);
    free(t);
    mbd_px_done(x);
    return;
  }
  mbd_px_set_user(x, t);
  mbd_px_set_on_gone(x, tx_gone);
  r->on_drain = tx_fill;
  tx_fill(r);
}

/* 1 when the model's headers are known and have no tensor called name. */
static int surely_unknown(mbd_model *m, const char *name) {
  int unknown = 0;
  mbd_tensors *t = m->tensors;
  if (t != NULL) {
    pthread_mutex_lock(&t->mu);
    mb_tensor_info ti;
    const char *path;
    unknown = t->tm != NULL && find_tensor(t->tm, name, &ti, &path) != 0;
    pthread_mutex_unlock(&t->mu);
  }
  return unknown;
}

/* The tensor a route names (decoded), or "" for the list. 0, or -1 with r
 * answered. */
static int route_tensor(mbd_req *r, char *name, size_t cap) {
  mbd_model *m = r->route.m;
  const char *p = r->path + r->route.arg_off;
  size_t n = r->path_len - r->route.arg_off;
  if ((n == 8 && memcmp(p, "/tensors", 8) == 0) || (n == 9 && memcmp(p, "/tensors/", 9) == 0)) {
    name[0] = '\0';
    return 0;
  }
  if (n > 9 && memcmp(p, "/tensors/", 9) == 0) {
    if (mbd_pct_decode(p + 9, n - 9, name, cap) != 0) {
      mbd_reply_error(r, 400, "bad_request", "bad tensor name in the path", 0);
      return -1;
    }
    return 0;
  }
  char msg[512];
  snprintf(msg, sizeof(msg),
           "no route %.*s for tensors model '%s'; its routes: GET /m/%s/tensors (the list), "
           "GET /m/%s/tensors/{tensor} (a tensor's bytes)",
           (int)(n > 200 ? 200 : n), p, m->name, m->name, m->name);
  mbd_count_code(r->d, m, 404);
  mbd_reply_error(r, 404, "not_found", msg, 0);
  return -1;
}

static void granted(mbd_px *x, mbd_req *r, void *arg) {
  (void)arg;
  mbd_model *cur = mbd_px_model(x);
  char name[1024];
  mbd_tensors *t = cur->kind == MBD_BACKEND_TENSORS ? cur->tensors : NULL;
  mb_tensors_model *tm = NULL;
  if (t != NULL) {
    pthread_mutex_lock(&t->mu);
    tm = t->tm; /* READY under our lease: a load cannot replace it now */
    pthread_mutex_unlock(&t->mu);
  }
  if (tm == NULL) { /* a reload gave the name another backend meanwhile */
    mbd_reply_error(r, 409, "state_conflict",
                    "the model changed backend during a reload; send it again", 0);
    mbd_px_done(x);
    return;
  }
  if (route_tensor(r, name, sizeof(name)) != 0) {
    mbd_px_done(x);
    return;
  }
  if (name[0] == '\0')
    list(x, r, cur, tm);
  else
    fetch(x, r, cur, tm, name);
}

static void handle(mbd_req *r) { mbd_px_lease(r, r->route.m, 0, granted, NULL); }

int mbd_tensors_resolve(mbd *d, mbd_req *r) {
  mbd_model *m = r->route.m;
  char name[1024], msg[512];
  (void)d;
  if (route_tensor(r, name, sizeof(name)) != 0)
    return 1;
  if (strcmp(r->method, "GET") != 0 && !r->is_head) {
    snprintf(msg, sizeof(msg), "%s is not allowed on the tensors of model '%s' (GET or HEAD)",
             r->method, m->name);
    mbd_count_code(r->d, m, 405);
    mbd_reply_error_hdr(r, 405, "method_not_allowed", msg, "Allow", "GET, HEAD");
    return 1;
  }
  if (name[0] != '\0' && surely_unknown(m, name)) {
    snprintf(msg, sizeof(msg), "no tensor '%.200s' in model '%s' (GET /m/%s/tensors lists them)",
             name, m->name, m->name);
    mbd_count_code(r->d, m, 404);
    mbd_reply_error(r, 404, "not_found", msg, 0);
    return 1;
  }
  r->route.handle = handle;
  r->route.body = MBD_BODY_BUFFER;
  return 1;
}
