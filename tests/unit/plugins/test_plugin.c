/*
 * test_plugin.c - a plugin for the plugin backend's tests, built as a real
 * shared object. Its "weights" are its files, read whole into memory on
 * load (with progress), moved to a host copy on offload and back on
 * restore. Requests:
 *   GET  /info  -> {"model":..., "bytes":N, "sum":S, "loads":L}
 *   POST /echo  -> the body back, as application/octet-stream
 *   GET  /fail  -> an error from the handler
 *   POST /lose  -> reports the model lost through host->lost (as a plugin
 *                  whose device failed would): {"reported": rc}
 *   else        -> 404 with a JSON error
 * It counts the cancels it gets (GET /cancels) and remembers the residency
 * of its last load or restore for its reports.
 * Fault mode: with MB_TEST_PLUGIN_LEAK_MB=N in the environment, every load
 * and restore keeps N MiB more (touched, so it counts in RSS) until the
 * instance is destroyed: the leak `modelbuf bench lifecycle` must catch.
 * Built also with -DBAD_ABI (wrong ABI number), -DNO_PAIR (offload without
 * restore) and -DNO_ENTRY (no mb_plugin_v1) for the loader's error paths,
 * and with -DABI1 as a plugin built for ABI 1 (its table in that layout:
 * mb_backend without cancel), which still loads.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "modelbuf/plugin.h"

typedef struct inst {
  char *model;
  char **files;
  size_t n_files;
  const mb_plugin_host *host;
  unsigned char *dev, *host_copy; /* dev: memory of the model's device */
  mb_device_kind kind;
  int ordinal;
  size_t bytes;
  unsigned long long sum;
  int loads;
  void *leaked[256]; /* the fault mode's blocks, freed with the instance */
  int n_leaked;
  uint64_t residency; /* of the last load or restore */
  int cancels;
} inst;

/* Fault mode: keep MB_TEST_PLUGIN_LEAK_MB more MiB. */
static void leak(inst *in) {
  const char *mb = getenv("MB_TEST_PLUGIN_LEAK_MB");
  size_t n = mb ? (size_t)strtoul(mb, NULL, 10) << 20 : 0;
  if (n == 0 || in->n_leaked >= 256)
    return;
  char *p = malloc(n);
  if (p == NULL)
    return;
  memset(p, 1, n);
  in->leaked[in->n_leaked++] = p;
}

static int t_create(const mb_plugin_args *a, void **out, char *err, size_t len) {
  if (a->n_files == 0) {
    snprintf(err, len, "needs at least one file");
    return MB_EINVAL;
  }
  inst *in = calloc(1, sizeof(*in));
  if (in == NULL || (in->files = calloc(a->n_files, sizeof(char *))) == NULL) {
    free(in);
    return MB_ENOMEM;
  }
  in->model = strdup(a->model);
  for (size_t i = 0; i < a->n_files; i++)
    in->files[i] = strdup(a->files[i]);
  in->n_files = a->n_files;
  in->host = a->host;
  *out = in;
  return 0;
}

static void t_destroy(void *p) {
  inst *in = p;
  for (size_t i = 0; i < in->n_files; i++)
    free(in->files[i]);
  for (int i = 0; i < in->n_leaked; i++)
    free(in->leaked[i]);
  free(in->files);
  free(in->model);
  free(in->host_copy);
  free(in);
}

static int t_load(mb_op *op) {
  inst *in = op->user;
  size_t total = 0, done = 0;
  FILE *f[16];
  size_t n = in->n_files < 16 ? in->n_files : 16;
  for (size_t i = 0; i < n; i++) {
    if ((f[i] = fopen(in->files[i], "rb")) == NULL) {
      snprintf(op->err, op->err_len, "%s: %s", in->files[i], strerror(errno));
      while (i-- > 0)
        fclose(f[i]);
      return MB_ELOAD;
    }
    fseek(f[i], 0, SEEK_END);
    total += (size_t)ftell(f[i]);
    rewind(f[i]);
  }
  /* Read into host memory, then copy to the device, as a real loader would. */
  unsigned char *staging = malloc(total ? total : 1);
  int rc = staging ? 0 : MB_ENOMEM;
  for (size_t i = 0; i < n; i++) {
    size_t got;
    while (rc == 0 && (got = fread(staging + done, 1, 1 << 16, f[i])) > 0) {
      done += got;
      in->host->progress(op, done, total);
    }
    fclose(f[i]);
  }
  in->kind = op->device_kind;
  in->ordinal = op->device_ordinal;
  void *dev = NULL;
  if (rc == 0)
    rc = in->host->device_alloc(in->kind, in->ordinal, total, &dev, op->err, op->err_len);
  if (rc == 0) {
    rc = in->host->copy_to_device(in->kind, in->ordinal, dev, staging, total, op->err,
                                  op->err_len);
    if (rc != 0)
      in->host->device_free(in->kind, in->ordinal, dev, total);
  }
  if (rc != 0) {
    free(staging);
    return rc;
  }
  in->dev = dev;
  in->bytes = total;
  in->sum = 0;
  for (size_t i = 0; i < total; i++)
    in->sum += staging[i];
  free(staging);
  in->loads++;
  in->residency = op->residency;
  leak(in);
  in->host->log(in->host->log_arg, 1, in->model, "loaded");
  return 0;
}

static int t_offload(mb_op *op) {
  inst *in = op->user;
  if ((in->host_copy = malloc(in->bytes ? in->bytes : 1)) == NULL)
    return MB_ENOMEM;
  int rc = in->host->copy_from_device(in->kind, in->ordinal, in->host_copy, in->dev, in->bytes,
                                      op->err, op->err_len);
  if (rc != 0) {
    free(in->host_copy);
    in->host_copy = NULL;
    return rc;
  }
  in->host->device_free(in->kind, in->ordinal, in->dev, in->bytes);
  in->dev = NULL;
  return 0;
}

__attribute__((unused)) static int t_restore(mb_op *op) {
  inst *in = op->user;
  void *dev;
  int rc = in->host->device_alloc(op->device_kind, op->device_ordinal, in->bytes, &dev, op->err,
                                  op->err_len);
  if (rc != 0)
    return rc;
  in->kind = op->device_kind;
  in->ordinal = op->device_ordinal;
  rc = in->host->copy_to_device(in->kind, in->ordinal, dev, in->host_copy, in->bytes, op->err,
                                op->err_len);
  if (rc != 0) {
    in->host->device_free(in->kind, in->ordinal, dev, in->bytes);
    return rc;
  }
  in->dev = dev;
  free(in->host_copy);
  in->host_copy = NULL;
  in->residency = op->residency;
  leak(in);
  return 0;
}

__attribute__((unused)) static int t_cancel(mb_op *op) {
  inst *in = op->user;
  __atomic_add_fetch(&in->cancels, 1, __ATOMIC_RELAXED);
  return 0;
}

static int t_unload(mb_op *op) {
  inst *in = op->user;
  if (in->dev)
    in->host->device_free(in->kind, in->ordinal, in->dev, in->bytes);
  free(in->host_copy);
  in->dev = in->host_copy = NULL;
  return 0;
}

static int t_usage(mb_op *op, mb_usage *u) {
  inst *in = op->user;
  u->device_bytes = in->dev ? in->bytes : 0;
  u->host_bytes = in->host_copy ? in->bytes : 0;
  return 0;
}

static int reply(mb_plugin_response *r, int status, const char *type, const void *body,
                 size_t len) {
  r->status = status;
  snprintf(r->content_type, sizeof(r->content_type), "%s", type);
  if ((r->body = malloc(len ? len : 1)) == NULL)
    return MB_ENOMEM;
  memcpy(r->body, body, len);
  r->body_len = len;
  return 0;
}

static int t_handle(void *p, const mb_plugin_request *req, mb_plugin_response *r, char *err,
                    size_t len) {
  inst *in = p;
  char buf[256];
  if (strcmp(req->method, "GET") == 0 && strcmp(req->path, "/info") == 0) {
    if (in->dev == NULL) {
      snprintf(err, len, "not loaded");
      return MB_ESTATE;
    }
    unsigned char *copy = malloc(in->bytes ? in->bytes : 1);
    if (copy == NULL)
      return MB_ENOMEM;
    int rc = in->host->copy_from_device(in->kind, in->ordinal, copy, in->dev, in->bytes, err, len);
    unsigned long long sum = 0;
    for (size_t i = 0; rc == 0 && i < in->bytes; i++)
      sum += copy[i];
    free(copy);
    if (rc != 0)
      return rc;
    int n = snprintf(buf, sizeof(buf), "{\"model\":\"%s\",\"bytes\":%zu,\"sum\":%llu,\"loads\":%d}",
                     in->model, in->bytes, sum, in->loads);
    return reply(r, 200, "application/json", buf, (size_t)n);
  }
  if (strcmp(req->method, "POST") == 0 && strcmp(req->path, "/echo") == 0)
    return reply(r, 200, "application/octet-stream", req->body, req->body_len);
  if (strcmp(req->path, "/fail") == 0) {
    snprintf(err, len, "asked to fail");
    return MB_EBACKEND;
  }
  if (strcmp(req->method, "POST") == 0 && strcmp(req->path, "/lose") == 0) {
    int rc = MB_ENOTSUP;
    if (MB_PLUGIN_HOST_HAS(in->host, lost))
      rc = in->host->lost(in->host->lost_arg, in->model, in->residency, 0,
                          "device error (test plugin)");
    int n = snprintf(buf, sizeof(buf), "{\"reported\":%d}", rc);
    return reply(r, 200, "application/json", buf, (size_t)n);
  }
  if (strcmp(req->path, "/cancels") == 0) {
    int n = snprintf(buf, sizeof(buf), "{\"cancels\":%d}",
                     __atomic_load_n(&in->cancels, __ATOMIC_RELAXED));
    return reply(r, 200, "application/json", buf, (size_t)n);
  }
  int n = snprintf(buf, sizeof(buf), "{\"error\":{\"code\":\"not_found\",\"message\":\"%s\"}}",
                   req->path);
  return reply(r, 404, "application/json", buf, (size_t)n);
}

static void t_free_body(void *p, void *body) {
  (void)p;
  free(body);
}

#ifdef ABI1
/* The table as a plugin built for ABI 1 lays it out. */
typedef struct table_v1 {
  uint32_t abi;
  const char *name;
  int (*create)(const mb_plugin_args *args, void **instance, char *err, size_t err_len);
  void (*destroy)(void *instance);
  struct {
    const char *name;
    int (*load)(mb_op *op);
    int (*offload)(mb_op *op);
    int (*restore)(mb_op *op);
    int (*unload)(mb_op *op);
    int (*usage)(mb_op *op, mb_usage *out);
    int (*health)(mb_op *op);
    void (*destroy)(void *user);
  } backend;
  int (*handle)(void *instance, const mb_plugin_request *req, mb_plugin_response *resp,
                char *err, size_t err_len);
  void (*free_body)(void *instance, void *body);
} table_v1;

static const table_v1 table1 = {
    .abi = 1,
    .name = "test-abi1",
    .create = t_create,
    .destroy = t_destroy,
    .backend = {.load = t_load,
                .offload = t_offload,
                .restore = t_restore,
                .unload = t_unload,
                .usage = t_usage},
    .handle = t_handle,
    .free_body = t_free_body,
};
#define TABLE ((const mb_plugin *)(const void *)&table1)
#else
#define TABLE (&table)
#endif

__attribute__((unused)) static const mb_plugin table = {
#ifdef BAD_ABI
    .abi = MB_PLUGIN_ABI + 7,
#else
    .abi = MB_PLUGIN_ABI,
#endif
    .name = "test",
    .create = t_create,
    .destroy = t_destroy,
    .backend = {.load = t_load,
                .offload = t_offload,
#ifndef NO_PAIR
                .restore = t_restore,
#endif
                .unload = t_unload,
                .usage = t_usage,
                .cancel = t_cancel},
    .handle = t_handle,
    .free_body = t_free_body,
};

#ifndef NO_ENTRY
__attribute__((visibility("default"))) const mb_plugin *mb_plugin_v1(void);
__attribute__((visibility("default"))) const mb_plugin *mb_plugin_v1(void) { return TABLE; }
#else
__attribute__((visibility("default"))) const mb_plugin *other_entry(void);
__attribute__((visibility("default"))) const mb_plugin *other_entry(void) { return TABLE; }
#endif
