/*
 * modelbuf/plugin.h - in-process native models as shared objects.
 *
 * A plugin is a shared object that exports one function,
 *
 *     const mb_plugin *mb_plugin_v1(void);
 *
 * returning a table: how to create an instance for a model (its weight
 * files), the backend operations that move the instance between tiers
 * (the mb_backend contract of modelbuf.h), and a request handler that
 * serves one HTTP-shaped request while the model is READY. modelbufd loads
 * plugins for models configured with `backend: plugin` and serves them at
 * /m/{name}/...; any program may load them with the functions below.
 *
 * The services tied to the host that loaded it (load progress, logging,
 * device memory) come in mb_plugin_host, handed to create(): a plugin never
 * reaches into its host's copy of the library. It may link libmodelbuf for
 * stateless helpers such as the weight-file parsers of tensors.h.
 *
 * Thread-safety: create/destroy and the backend operations of one instance
 * are never called concurrently (the core serialises them). handle() is
 * called only while the caller holds a lease on the model, possibly from
 * several threads at once up to the model's max_concurrency.
 */
#ifndef MODELBUF_PLUGIN_H
#define MODELBUF_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#include "modelbuf/modelbuf.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The plugin interface version this header describes. 2: mb_backend gained
 * cancel (and the table's later fields moved); plugins built for 1 still
 * load (read with the old layout, no cancel). */
#define MB_PLUGIN_ABI 2
/* The symbol every plugin exports. */
#define MB_PLUGIN_SYMBOL "mb_plugin_v1"

/* Services of the host, valid for the instance's lifetime. */
typedef struct mb_plugin_host {
  size_t size; /* sizeof(mb_plugin_host) of the host: fields may be added at the end */
  /* Reports load or restore progress; same as mb_op_progress. */
  void (*progress)(mb_op *op, uint64_t done_bytes, uint64_t total_bytes);
  /* A line for the host's log; level 0 debug, 1 info, 2 warning, 3 error.
   * A host that gives none drops the lines (the library prints nothing;
   * modelbufd passes its own log). */
  void (*log)(void *log_arg, int level, const char *model, const char *msg);
  void *log_arg;
  /*
   * Memory of a device (the kind and ordinal of op->device_kind and
   * op->device_ordinal): the host device's is host RAM, a CUDA device's is
   * GPU memory. A plugin keeps its weights there while READY and reads them
   * back with copy_from_device. Each returns 0 or MB_E* (message in err).
   */
  int (*device_alloc)(mb_device_kind kind, int ordinal, size_t bytes, void **ptr, char *err,
                      size_t err_len);
  void (*device_free)(mb_device_kind kind, int ordinal, void *ptr, size_t bytes);
  int (*copy_to_device)(mb_device_kind kind, int ordinal, void *dst, const void *src,
                        size_t bytes, char *err, size_t err_len);
  int (*copy_from_device)(mb_device_kind kind, int ordinal, void *dst, const void *src,
                          size_t bytes, char *err, size_t err_len);
  /*
   * Reports that the model, resident, is gone (its device failed, a helper
   * it needs died): as mb_model_lost of the host's context, for this
   * model. residency is op->residency of the load or restore that made it
   * resident. Any thread, never blocks; 0 or MB_E*. Present when
   * MB_PLUGIN_HOST_HAS(host, lost).
   */
  int (*lost)(void *lost_arg, const char *model, uint64_t residency, int flags,
              const char *reason);
  void *lost_arg;
} mb_plugin_host;

/* Whether host (of a host possibly older than the plugin) has field. */
#define MB_PLUGIN_HOST_HAS(host, field)                                                    \
  ((host)->size >= offsetof(mb_plugin_host, field) + sizeof((host)->field) &&               \
   (host)->field != NULL)

/* What create() receives. Strings are valid only during the call: copy them. */
typedef struct mb_plugin_args {
  const char *model;             /* the model's name */
  const char *const *files;      /* its weight files (config `files:`) */
  size_t n_files;
  const mb_plugin_host *host;
} mb_plugin_args;

typedef struct mb_plugin_header {
  const char *name;
  const char *value;
} mb_plugin_header;

/* One request. Valid only during handle(). */
typedef struct mb_plugin_request {
  const char *method;            /* "GET", "POST", ... */
  const char *path;              /* below /m/{name}: "/embed"; at least "/" */
  const char *query;             /* after '?', without it; "" when none */
  const mb_plugin_header *headers;
  size_t n_headers;
  const uint8_t *body;           /* may be NULL when body_len is 0 */
  size_t body_len;
} mb_plugin_request;

/*
 * The answer. The host sets status 200 and content_type "application/json"
 * before the call. A body is allocated by the plugin and freed by the host
 * through the plugin's free_body once it has been sent.
 */
typedef struct mb_plugin_response {
  int status;
  char content_type[96];
  void *body;
  size_t body_len;
} mb_plugin_response;

typedef struct mb_plugin {
  uint32_t abi;                  /* MB_PLUGIN_ABI */
  const char *name;              /* short name, for logs and status ("embed") */
  /* Makes an instance for one model; loads nothing yet. 0 or MB_E* with a
   * message in err. */
  int (*create)(const mb_plugin_args *args, void **instance, char *err, size_t err_len);
  /* Frees an instance that is unloaded. */
  void (*destroy)(void *instance);
  /* Residency: op->user is the instance. load and unload required; offload
   * and restore optional but a pair; usage, health and cancel optional. The
   * backend's name and destroy fields are ignored. */
  mb_backend backend;
  /* Serves one request; returns 0 (the response is sent, whatever its
   * status) or MB_E* with a message in err (the host answers 500). */
  int (*handle)(void *instance, const mb_plugin_request *req, mb_plugin_response *resp,
                char *err, size_t err_len);
  /* Frees a response body made by handle. Required when handle sets bodies. */
  void (*free_body)(void *instance, void *body);
} mb_plugin;

typedef const mb_plugin *(*mb_plugin_entry_fn)(void);

/* ------------------------------------------------------------------------ */
/* Loading plugins                                                           */

typedef struct mb_plugin_lib mb_plugin_lib;

/*
 * Opens a plugin: dlopen(path) with its symbols kept local, looks up
 * mb_plugin_v1, checks the table (ABI version, required functions, offload
 * and restore as a pair). Errors: MB_ENOENT (no such file), MB_EFORMAT (not
 * a shared object, no mb_plugin_v1, wrong ABI, bad table), MB_ENOMEM; the
 * message in err names the file and the fault. Thread-safe.
 */
MB_EXTERN int mb_plugin_open(const char *path, mb_plugin_lib **out, char *err,
                             size_t err_len) MB_WUR;

/* The plugin's table. */
MB_EXTERN const mb_plugin *mb_plugin_table(const mb_plugin_lib *lib);

/*
 * Closes a plugin once no model uses it any more: the library stays mapped
 * while instances made from it exist (each holds a reference) and is
 * dlclosed with the last. NULL is a no-op.
 */
MB_EXTERN void mb_plugin_close(mb_plugin_lib *lib);

/*
 * Registers a model served by a plugin: creates an instance with the model's
 * name, files and host services (host may be NULL, and any of its
 * functions may be NULL: progress goes to the core, log lines nowhere (the
 * library prints nothing),
 * device memory to the library's device layer: host RAM, or GPU memory on
 * cuda:N, or host RAM where no CUDA driver or GPU is found), and adds it to
 * ctx like mb_model_add. The instance is destroyed with the model. On
 * success *instance (if not NULL) gets the instance for mb_plugin_handle. Errors: those of the plugin's
 * create (its message in err) and of mb_model_add.
 */
MB_EXTERN int mb_model_add_plugin(mb_ctx *ctx, const char *name, mb_plugin_lib *lib,
                                  const char *const *files, size_t n_files,
                                  const mb_plugin_host *host, const mb_model_opts *opts,
                                  void **instance, char *err, size_t err_len) MB_WUR;

/*
 * Serves one request through the plugin of an instance. The caller must
 * hold a lease on the model (the instance is READY). Sets resp to 200,
 * "application/json", no body, then calls the plugin's handle. Returns its
 * result; on an error with no message, err gets the error's text.
 * Release the body with mb_plugin_response_free.
 */
MB_EXTERN int mb_plugin_handle(void *instance, const mb_plugin_request *req,
                               mb_plugin_response *resp, char *err, size_t err_len);

/* Frees the body of a response made by mb_plugin_handle and clears it. */
MB_EXTERN void mb_plugin_response_free(void *instance, mb_plugin_response *resp);

#ifdef __cplusplus
}
#endif

#endif /* MODELBUF_PLUGIN_H */
