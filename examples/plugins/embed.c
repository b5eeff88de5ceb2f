/*
 * embed.c - an example modelbuf plugin: an embedding server over the
 * token-embedding table of a safetensors or GGUF file.
 *
 * The table is the tensor named by the environment variable EMBED_TENSOR,
 * else the first of "model.embed_tokens.weight", "token_embd.weight",
 * "embed.weight", else the first 2-D tensor, looked for in each of the
 * model's files in turn (a sharded model's folder gives several); F32,
 * F16 or BF16, shape
 * [vocab, dim]. Load reads it from the file into the model's device memory
 * (GPU memory on a CUDA device, host RAM on the host device), offload keeps
 * a host copy, restore puts it back.
 *
 * Requests (below /m/{name}):
 *   POST /embed        {"input": [3, 17, 42]}   one row per token id
 *   POST /v1/embeddings {"input": "text" | ["a", "b"]}  OpenAI-shaped: each
 *                      text's bytes are its token ids (modulo vocab) and
 *                      its embedding is the mean of their rows
 *   GET  /info         {"tensor", "dtype", "vocab", "dim", "bytes"}
 *
 * Built with the project (build/examples/plugins/libmodelbuf_embed.so) and
 * served by modelbufd with `backend: plugin`, `plugin: FILE`, `files: [...]`.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "modelbuf/plugin.h"
#include "modelbuf/tensors.h"

#define MAX_IDS 4096

typedef struct embed {
  char *model;
  char **files;    /* the model's weight files */
  size_t n_files;
  const char *path; /* the one holding the table (found at load) */
  const mb_plugin_host *host;
  char tensor[128];
  mb_dtype dtype;
  uint64_t vocab, dim, offset, bytes;
  void *dev;       /* the table in the device's memory */
  void *host_copy; /* the table while offloaded */
  mb_device_kind kind;
  int ordinal;
} embed;

static void e_destroy(void *p) {
  embed *e = p;
  free(e->host_copy);
  for (size_t i = 0; e->files != NULL && i < e->n_files; i++)
    free(e->files[i]);
  free(e->files);
  free(e->model);
  free(e);
}

static int e_create(const mb_plugin_args *a, void **out, char *err, size_t len) {
  if (a->n_files == 0) {
    snprintf(err, len, "the embed plugin needs a weight file (files: [...])");
    return MB_EINVAL;
  }
  embed *e = calloc(1, sizeof(*e));
  if (e == NULL || (e->model = strdup(a->model)) == NULL ||
      (e->files = calloc(a->n_files, sizeof(*e->files))) == NULL) {
    if (e)
      e_destroy(e);
    return MB_ENOMEM;
  }
  for (; e->n_files < a->n_files; e->n_files++)
    if ((e->files[e->n_files] = strdup(a->files[e->n_files])) == NULL) {
      e_destroy(e);
      return MB_ENOMEM;
    }
  e->host = a->host;
  *out = e;
  return 0;
}

/* Looks for tensor name (NULL: the first 2-D one) in each file in turn;
 * 1 with the file open in *f and the tensor in *t, 0 when no file has it,
 * or an error. */
static int lookup(embed *e, const char *name, mb_tensor_file **f, mb_tensor_info *t, char *err,
                  size_t len) {
  for (size_t k = 0; k < e->n_files; k++) {
    int rc = mb_tensor_file_open(e->files[k], f, err, len);
    if (rc != 0)
      return rc;
    if (name != NULL && mb_tensor_file_find(*f, name, t, NULL) == 0) {
      e->path = e->files[k];
      return 1;
    }
    for (size_t i = 0; name == NULL && i < mb_tensor_file_count(*f); i++)
      if (mb_tensor_file_info(*f, i, t) == 0 && t->ndim == 2) {
        e->path = e->files[k];
        return 1;
      }
    mb_tensor_file_close(*f);
    *f = NULL;
  }
  return 0;
}

/* Finds the table in the files' headers; fills path, tensor, dtype, shape,
 * range. */
static int find_table(embed *e, char *err, size_t len) {
  mb_tensor_file *f = NULL;
  static const char *names[] = {"model.embed_tokens.weight", "token_embd.weight",
                                "embed.weight"};
  mb_tensor_info t;
  int found = 0;
  const char *want = getenv("EMBED_TENSOR");
  if (want)
    found = lookup(e, want, &f, &t, err, len);
  for (size_t i = 0; !want && found == 0 && i < sizeof(names) / sizeof(names[0]); i++)
    found = lookup(e, names[i], &f, &t, err, len);
  if (!want && found == 0)
    found = lookup(e, NULL, &f, &t, err, len);
  if (found < 0)
    return found;
  if (!found) {
    snprintf(err, len, "%s%s: no embedding table (%s)", e->files[0],
             e->n_files > 1 ? " and the model's other files" : "",
             want ? want : "no 2-D tensor");
    return MB_EFORMAT;
  }
  if (t.ndim != 2 || (t.dtype != MB_DTYPE_F32 && t.dtype != MB_DTYPE_F16 &&
                      t.dtype != MB_DTYPE_BF16)) {
    snprintf(err, len, "%s: %s is %s with %d dimensions; the table must be 2-D F32, F16 or BF16",
             e->path, t.name, t.dtype_name, t.ndim);
    mb_tensor_file_close(f);
    return MB_EFORMAT;
  }
  snprintf(e->tensor, sizeof(e->tensor), "%s", t.name);
  e->dtype = t.dtype;
  /* safetensors stores [vocab, dim]; GGUF stores ggml order [dim, vocab]. */
  int gguf = mb_tensor_file_format(f) == MB_TENSOR_FORMAT_GGUF;
  e->vocab = gguf ? t.shape[1] : t.shape[0];
  e->dim = gguf ? t.shape[0] : t.shape[1];
  e->offset = t.offset;
  e->bytes = t.size_bytes;
  mb_tensor_file_close(f);
  return 0;
}

static int e_load(mb_op *op) {
  embed *e = op->user;
  int rc = find_table(e, op->err, op->err_len);
  if (rc != 0)
    return rc;
  int fd = open(e->path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    snprintf(op->err, op->err_len, "%s: %s", e->path, strerror(errno));
    return MB_ELOAD;
  }
  char *staging = malloc(e->bytes ? e->bytes : 1);
  if (staging == NULL) {
    close(fd);
    return MB_ENOMEM;
  }
  uint64_t done = 0;
  while (done < e->bytes) {
    size_t want = e->bytes - done > (8u << 20) ? (8u << 20) : (size_t)(e->bytes - done);
    ssize_t n = pread(fd, staging + done, want, (off_t)(e->offset + done));
    if (n <= 0) {
      snprintf(op->err, op->err_len, "%s: %s", e->path,
               n == 0 ? "file ends inside the embedding table" : strerror(errno));
      free(staging);
      close(fd);
      return MB_ELOAD;
    }
    done += (uint64_t)n;
    e->host->progress(op, done, e->bytes);
  }
  close(fd);
  e->kind = op->device_kind;
  e->ordinal = op->device_ordinal;
  void *dev;
  rc = e->host->device_alloc(e->kind, e->ordinal, e->bytes, &dev, op->err, op->err_len);
  if (rc == 0) {
    rc = e->host->copy_to_device(e->kind, e->ordinal, dev, staging, e->bytes, op->err,
                                 op->err_len);
    if (rc != 0)
      e->host->device_free(e->kind, e->ordinal, dev, e->bytes);
    else
      e->dev = dev;
  }
  free(staging);
  return rc;
}

static int e_offload(mb_op *op) {
  embed *e = op->user;
  if ((e->host_copy = malloc(e->bytes ? e->bytes : 1)) == NULL)
    return MB_ENOMEM;
  int rc = e->host->copy_from_device(e->kind, e->ordinal, e->host_copy, e->dev, e->bytes,
                                     op->err, op->err_len);
  if (rc != 0) {
    free(e->host_copy);
    e->host_copy = NULL;
    return rc;
  }
  e->host->device_free(e->kind, e->ordinal, e->dev, e->bytes);
  e->dev = NULL;
  return 0;
}

static int e_restore(mb_op *op) {
  embed *e = op->user;
  void *dev;
  int rc = e->host->device_alloc(op->device_kind, op->device_ordinal, e->bytes, &dev, op->err,
                                 op->err_len);
  if (rc != 0)
    return rc;
  rc = e->host->copy_to_device(op->device_kind, op->device_ordinal, dev, e->host_copy, e->bytes,
                               op->err, op->err_len);
  if (rc != 0) {
    e->host->device_free(op->device_kind, op->device_ordinal, dev, e->bytes);
    return rc;
  }
  e->kind = op->device_kind;
  e->ordinal = op->device_ordinal;
  e->dev = dev;
  free(e->host_copy);
  e->host_copy = NULL;
  return 0;
}

static int e_unload(mb_op *op) {
  embed *e = op->user;
  if (e->dev)
    e->host->device_free(e->kind, e->ordinal, e->dev, e->bytes);
  free(e->host_copy);
  e->dev = e->host_copy = NULL;
  return 0;
}

static int e_usage(mb_op *op, mb_usage *u) {
  embed *e = op->user;
  u->device_bytes = e->dev ? e->bytes : 0;
  u->host_bytes = e->host_copy ? e->bytes : 0;
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Requests                                                                  */

static float half_to_float(uint16_t h) {
  uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
  float f;
  if (exp == 0)
    f = ldexpf((float)man, -24);
  else if (exp == 31)
    f = man ? NAN : INFINITY;
  else
    f = ldexpf((float)(man | 0x400), (int)exp - 25);
  return sign ? -f : f;
}

static float bf16_to_float(uint16_t b) {
  uint32_t u = (uint32_t)b << 16;
  float f;
  memcpy(&f, &u, sizeof(f));
  return f;
}

/* Adds row `id` of the table (read from the device) into acc[dim]. */
static int add_row(embed *e, uint64_t id, float *acc, void *scratch, char *err, size_t len) {
  size_t esz = e->dtype == MB_DTYPE_F32 ? 4 : 2;
  size_t row = (size_t)e->dim * esz;
  int rc = e->host->copy_from_device(e->kind, e->ordinal, scratch,
                                     (const char *)e->dev + id * row, row, err, len);
  if (rc != 0)
    return rc;
  for (uint64_t j = 0; j < e->dim; j++) {
    float v;
    if (e->dtype == MB_DTYPE_F32) {
      memcpy(&v, (const char *)scratch + j * 4, 4);
    } else {
      uint16_t h;
      memcpy(&h, (const char *)scratch + j * 2, 2);
      v = e->dtype == MB_DTYPE_F16 ? half_to_float(h) : bf16_to_float(h);
    }
    acc[j] += v;
  }
  return 0;
}

static json_t *vector(const float *v, uint64_t dim, float scale) {
  json_t *a = json_array();
  for (uint64_t j = 0; a && j < dim; j++)
    json_array_append_new(a, json_real((double)(v[j] * scale)));
  return a;
}

static int reply_json(mb_plugin_response *r, int status, json_t *doc) {
  char *s = json_dumps(doc, JSON_COMPACT);
  json_decref(doc);
  if (s == NULL)
    return MB_ENOMEM;
  r->status = status;
  r->body = s;
  r->body_len = strlen(s);
  return 0;
}

static int bad_request(mb_plugin_response *r, const char *msg) {
  return reply_json(r, 400, json_pack("{s:{s:s,s:s}}", "error", "code", "bad_request",
                                      "message", msg));
}

/* Embeds one text: the mean of the rows of its bytes. */
static json_t *embed_text(embed *e, const char *text, float *acc, void *scratch, char *err,
                          size_t len) {
  size_t n = strlen(text);
  memset(acc, 0, e->dim * sizeof(float));
  for (size_t i = 0; i < n; i++)
    if (add_row(e, (unsigned char)text[i] % e->vocab, acc, scratch, err, len) != 0)
      return NULL;
  return vector(acc, e->dim, n ? 1.0f / (float)n : 0.0f);
}

static int e_handle(void *p, const mb_plugin_request *req, mb_plugin_response *r, char *err,
                    size_t len) {
  embed *e = p;
  if (strcmp(req->path, "/info") == 0)
    return reply_json(r, 200, json_pack("{s:s,s:s,s:I,s:I,s:I}", "tensor", e->tensor, "dtype",
                                        mb_dtype_name(e->dtype), "vocab", (json_int_t)e->vocab,
                                        "dim", (json_int_t)e->dim, "bytes",
                                        (json_int_t)e->bytes));
  int openai = strcmp(req->path, "/v1/embeddings") == 0;
  if (!openai && strcmp(req->path, "/embed") != 0)
    return reply_json(r, 404, json_pack("{s:{s:s,s:s}}", "error", "code", "not_found", "message",
                                        "routes: POST /embed, POST /v1/embeddings, GET /info"));
  if (strcmp(req->method, "POST") != 0)
    return reply_json(r, 405, json_pack("{s:{s:s,s:s}}", "error", "code", "method_not_allowed",
                                        "message", "use POST"));
  json_error_t jerr;
  json_t *doc = json_loadb((const char *)req->body, req->body_len, 0, &jerr);
  if (doc == NULL) {
    char msg[200];
    snprintf(msg, sizeof(msg), "malformed JSON: %s (line %d)", jerr.text, jerr.line);
    return bad_request(r, msg);
  }
  json_t *input = json_object_get(doc, "input");
  float *acc = calloc(e->dim ? e->dim : 1, sizeof(float));
  void *scratch = malloc(e->dim * 4 + 1);
  json_t *data = json_array();
  int rc = 0;
  const char *bad = NULL;
  if (acc == NULL || scratch == NULL || data == NULL) {
    rc = MB_ENOMEM;
  } else if (!openai) {
    if (!json_is_array(input) || json_array_size(input) == 0 ||
        json_array_size(input) > MAX_IDS)
      bad = "\"input\" must be an array of 1 to 4096 token ids";
    for (size_t i = 0; !bad && rc == 0 && i < json_array_size(input); i++) {
      json_t *v = json_array_get(input, i);
      if (!json_is_integer(v) || json_integer_value(v) < 0 ||
          (uint64_t)json_integer_value(v) >= e->vocab) {
        bad = "token ids must be integers in [0, vocab)";
        break;
      }
      memset(acc, 0, e->dim * sizeof(float));
      rc = add_row(e, (uint64_t)json_integer_value(v), acc, scratch, err, len);
      if (rc == 0)
        json_array_append_new(data, vector(acc, e->dim, 1.0f));
    }
  } else {
    size_t n = json_is_string(input) ? 1 : json_is_array(input) ? json_array_size(input) : 0;
    if (n == 0 || n > MAX_IDS)
      bad = "\"input\" must be a string or an array of strings";
    for (size_t i = 0; !bad && rc == 0 && i < n; i++) {
      json_t *s = json_is_string(input) ? input : json_array_get(input, i);
      if (!json_is_string(s)) {
        bad = "\"input\" must be a string or an array of strings";
        break;
      }
      json_t *vec = embed_text(e, json_string_value(s), acc, scratch, err, len);
      if (vec == NULL) {
        rc = MB_EBACKEND;
        break;
      }
      json_array_append_new(data, json_pack("{s:s,s:I,s:o}", "object", "embedding", "index",
                                            (json_int_t)i, "embedding", vec));
    }
  }
  free(acc);
  free(scratch);
  json_decref(doc);
  if (rc != 0 || bad) {
    json_decref(data);
    return rc != 0 ? rc : bad_request(r, bad);
  }
  if (!openai)
    return reply_json(r, 200, json_pack("{s:o,s:I}", "embeddings", data, "dim",
                                        (json_int_t)e->dim));
  return reply_json(r, 200, json_pack("{s:s,s:o,s:s}", "object", "list", "data", data, "model",
                                      e->model));
}

static void e_free_body(void *p, void *body) {
  (void)p;
  free(body);
}

static const mb_plugin table = {
    .abi = MB_PLUGIN_ABI,
    .name = "embed",
    .create = e_create,
    .destroy = e_destroy,
    .backend = {.load = e_load,
                .offload = e_offload,
                .restore = e_restore,
                .unload = e_unload,
                .usage = e_usage},
    .handle = e_handle,
    .free_body = e_free_body,
};

__attribute__((visibility("default"))) const mb_plugin *mb_plugin_v1(void);
__attribute__((visibility("default"))) const mb_plugin *mb_plugin_v1(void) { return &table; }
