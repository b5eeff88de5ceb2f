/*
 * plugin.c - the plugin backend: models served by a shared object that
 * exports mb_plugin_v1 (modelbuf/plugin.h).
 *
 * A plugin library is opened once and reference counted: every instance
 * made from it holds a reference, so the code stays mapped until the last
 * model using it is gone. Each model's backend argument is a small wrapper
 * (the instance, its library, the host services); the backend functions
 * hand the plugin a copy of the operation with the plugin's own instance as
 * op->user.
 */
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include "modelbuf/plugin.h"
#include "alloc.h"
#include "device.h"

struct mb_plugin_lib {
  void *dl;
  const mb_plugin *p;
  mb_plugin v1;  /* an ABI 1 table read into today's layout (p points here then) */
  char *path;
  int refs; /* the opener's plus one per instance; atomic */
};

/* The table of ABI 1: mb_backend had no cancel, so the fields after it sat
 * one pointer earlier. */
typedef struct plugin_backend_v1 {
  const char *name;
  int (*load)(mb_op *op);
  int (*offload)(mb_op *op);
  int (*restore)(mb_op *op);
  int (*unload)(mb_op *op);
  int (*usage)(mb_op *op, mb_usage *out);
  int (*health)(mb_op *op);
  void (*destroy)(void *user);
} plugin_backend_v1;

typedef struct plugin_table_v1 {
  uint32_t abi;
  const char *name;
  int (*create)(const mb_plugin_args *args, void **instance, char *err, size_t err_len);
  void (*destroy)(void *instance);
  plugin_backend_v1 backend;
  int (*handle)(void *instance, const mb_plugin_request *req, mb_plugin_response *resp,
                char *err, size_t err_len);
  void (*free_body)(void *instance, void *body);
} plugin_table_v1;

static void table_from_v1(const plugin_table_v1 *t, mb_plugin *out) {
  memset(out, 0, sizeof(*out));
  out->abi = MB_PLUGIN_ABI;
  out->name = t->name;
  out->create = t->create;
  out->destroy = t->destroy;
  out->backend.name = t->backend.name;
  out->backend.load = t->backend.load;
  out->backend.offload = t->backend.offload;
  out->backend.restore = t->backend.restore;
  out->backend.unload = t->backend.unload;
  out->backend.usage = t->backend.usage;
  out->backend.health = t->backend.health;
  out->backend.destroy = t->backend.destroy;
  out->handle = t->handle;
  out->free_body = t->free_body;
}

typedef struct plugin_inst {
  mb_plugin_lib *lib;
  void *inst;
  mb_plugin_host host;
  mb_ctx *ctx;    /* where the default host->lost reports */
  char *name;     /* the model's name */
} plugin_inst;

static void lib_unref(mb_plugin_lib *lib) {
  if (__atomic_sub_fetch(&lib->refs, 1, __ATOMIC_ACQ_REL) > 0)
    return;
  dlclose(lib->dl);
  mb__free(lib->path);
  mb__free(lib);
}

/* Checks a plugin's table; a message naming the fault when it is bad. */
static int check_table(const mb_plugin *p, char *why, size_t len) {
  if (p == NULL) {
    snprintf(why, len, "mb_plugin_v1 returned NULL");
    return 0;
  }
  if (p->abi != MB_PLUGIN_ABI) {
    snprintf(why, len, "plugin ABI %u, this build takes 1 to %d", p->abi, MB_PLUGIN_ABI);
    return 0;
  }
  if (p->create == NULL || p->destroy == NULL || p->handle == NULL ||
      p->backend.load == NULL || p->backend.unload == NULL) {
    snprintf(why, len, "create, destroy, handle, backend.load and backend.unload are required");
    return 0;
  }
  if ((p->backend.offload == NULL) != (p->backend.restore == NULL)) {
    snprintf(why, len, "backend.offload and backend.restore come as a pair");
    return 0;
  }
  return 1;
}

int mb_plugin_open(const char *path, mb_plugin_lib **out, char *err, size_t err_len) {
  struct stat st;
  char why[256];
  if (path == NULL || out == NULL) {
    mb__set_err(err, err_len, "plugin path missing");
    return MB_EINVAL;
  }
  *out = NULL;
  if (stat(path, &st) != 0) {
    mb__set_err(err, err_len, "%s: %s", path, strerror(errno));
    return errno == ENOENT ? MB_ENOENT : MB_EIO;
  }
  /* A bare name would make dlopen search the library path, not this file. */
  char *full;
  if (strchr(path, '/')) {
    full = mb__strdup(path);
  } else {
    size_t n = strlen(path) + 3;
    if ((full = mb__malloc(n)) != NULL)
      snprintf(full, n, "./%s", path);
  }
  if (full == NULL)
    return MB_ENOMEM;
  dlerror();
  void *dl = dlopen(full, RTLD_NOW | RTLD_LOCAL);
  if (dl == NULL) {
    const char *e = dlerror();
    mb__set_err(err, err_len, "%s: not a loadable plugin: %s", path, e ? e : "dlopen failed");
    mb__free(full);
    return MB_EFORMAT;
  }
  mb_plugin_entry_fn entry;
  void *sym = dlsym(dl, MB_PLUGIN_SYMBOL);
  memcpy(&entry, &sym, sizeof(entry)); /* object pointer to function pointer */
  if (sym == NULL) {
    mb__set_err(err, err_len, "%s: exports no %s function", path, MB_PLUGIN_SYMBOL);
    dlclose(dl);
    mb__free(full);
    return MB_EFORMAT;
  }
  const mb_plugin *p = entry();
  mb_plugin_lib *lib = mb__calloc(1, sizeof(*lib));
  if (lib == NULL) {
    dlclose(dl);
    mb__free(full);
    return MB_ENOMEM;
  }
  /* Every ABI starts with abi: read the rest in the layout it names. */
  if (p != NULL && p->abi == 1) {
    table_from_v1((const plugin_table_v1 *)(const void *)p, &lib->v1);
    p = &lib->v1;
  }
  if (!check_table(p, why, sizeof(why))) {
    mb__set_err(err, err_len, "%s: %s", path, why);
    mb__free(lib);
    dlclose(dl);
    mb__free(full);
    return MB_EFORMAT;
  }
  lib->dl = dl;
  lib->p = p;
  lib->path = full;
  lib->refs = 1;
  *out = lib;
  return 0;
}

const mb_plugin *mb_plugin_table(const mb_plugin_lib *lib) {
  return lib ? lib->p : NULL;
}

void mb_plugin_close(mb_plugin_lib *lib) {
  if (lib)
    lib_unref(lib);
}

/* ------------------------------------------------------------------------ */
/* The backend over a plugin instance                                        */

/* The operation as the plugin sees it: its own instance as op->user. */
#define PLUGIN_OP(op, pi, o)                                                                   \
  plugin_inst *pi = (op)->user;                                                                \
  mb_op o = *(op);                                                                             \
  o.user = pi->inst

static int pl_load(mb_op *op) {
  PLUGIN_OP(op, pi, o);
  return pi->lib->p->backend.load(&o);
}

static int pl_offload(mb_op *op) {
  PLUGIN_OP(op, pi, o);
  return pi->lib->p->backend.offload(&o);
}

static int pl_restore(mb_op *op) {
  PLUGIN_OP(op, pi, o);
  return pi->lib->p->backend.restore(&o);
}

static int pl_unload(mb_op *op) {
  PLUGIN_OP(op, pi, o);
  return pi->lib->p->backend.unload(&o);
}

static int pl_usage(mb_op *op, mb_usage *out) {
  PLUGIN_OP(op, pi, o);
  if (pi->lib->p->backend.usage == NULL)
    return MB_ENOTSUP;
  return pi->lib->p->backend.usage(&o, out);
}

static int pl_health(mb_op *op) {
  PLUGIN_OP(op, pi, o);
  if (pi->lib->p->backend.health == NULL)
    return 0;
  return pi->lib->p->backend.health(&o);
}

static int pl_cancel(mb_op *op) {
  PLUGIN_OP(op, pi, o);
  return pi->lib->p->backend.cancel(&o);
}

static void pl_destroy(void *user) {
  plugin_inst *pi = user;
  pi->lib->p->destroy(pi->inst);
  lib_unref(pi->lib);
  mb__free(pi->name);
  mb__free(pi);
}

/* By what the plugin has: [offload][cancel]. */
static const mb_backend plugin_backends[2][2] = {
    {{"plugin", pl_load, NULL, NULL, pl_unload, pl_usage, pl_health, pl_destroy, NULL},
     {"plugin", pl_load, NULL, NULL, pl_unload, pl_usage, pl_health, pl_destroy, pl_cancel}},
    {{"plugin", pl_load, pl_offload, pl_restore, pl_unload, pl_usage, pl_health, pl_destroy,
      NULL},
     {"plugin", pl_load, pl_offload, pl_restore, pl_unload, pl_usage, pl_health, pl_destroy,
      pl_cancel}},
};

/* host->lost by default: the loss goes to the context the model is in. */
static int default_lost(void *arg, const char *model, uint64_t residency, int flags,
                        const char *reason) {
  plugin_inst *pi = arg;
  return mb_model_lost(pi->ctx, model ? model : pi->name, residency, flags, reason);
}

/*
 * Device memory for plugins. The host device's memory is host RAM, mapped
 * per allocation. A CUDA device's goes through the device layer: a
 * process-wide handle per ordinal (mb__dev_shared), so GPU memory and copies
 * come from the same driver layer as the tensor engine's; where the machine
 * has no CUDA driver or GPU that handle is the host device (one log line per
 * process), as for the tensors backend.
 */
static int dev_alloc(mb_device_kind kind, int ordinal, size_t bytes, void **ptr, char *err,
                     size_t err_len) {
  *ptr = NULL;
  if (kind != MB_DEVICE_HOST) {
    mb__dev *d = NULL;
    uint64_t dptr = 0;
    int rc = mb__dev_shared(kind, ordinal, &d, err, err_len);
    if (rc == 0)
      rc = mb__dev_alloc(d, bytes ? bytes : 1, &dptr, err, err_len);
    if (rc == 0)
      *ptr = (void *)(uintptr_t)dptr;
    return rc;
  }
  /* Mapped, not malloc'd: the pages go back to the OS the moment the
   * model frees them, as GPU memory would. */
  void *p = mmap(NULL, bytes ? bytes : 1, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                 -1, 0);
  if (p == MAP_FAILED) {
    mb__set_err(err, err_len, "cannot map %zu bytes of host memory: %s", bytes, strerror(errno));
    return MB_ENOMEM;
  }
  *ptr = p;
  return 0;
}

static void dev_free(mb_device_kind kind, int ordinal, void *ptr, size_t bytes) {
  if (ptr == NULL)
    return;
  if (kind != MB_DEVICE_HOST) {
    mb__dev *d = NULL;
    /* The handle exists: ptr came from dev_alloc on it. */
    if (mb__dev_shared(kind, ordinal, &d, NULL, 0) == 0)
      mb__dev_free(d, (uint64_t)(uintptr_t)ptr);
    return;
  }
  munmap(ptr, bytes ? bytes : 1);
}

static int dev_copy_to(mb_device_kind kind, int ordinal, void *dst, const void *src,
                       size_t bytes, char *err, size_t err_len) {
  if (kind != MB_DEVICE_HOST) {
    mb__dev *d = NULL;
    int rc = mb__dev_shared(kind, ordinal, &d, err, err_len);
    if (rc == 0 && bytes > 0)
      rc = mb__dev_h2d(d, (uint64_t)(uintptr_t)dst, src, bytes, 0, err, err_len);
    return rc;
  }
  memcpy(dst, src, bytes);
  return 0;
}

static int dev_copy_from(mb_device_kind kind, int ordinal, void *dst, const void *src,
                         size_t bytes, char *err, size_t err_len) {
  if (kind != MB_DEVICE_HOST) {
    mb__dev *d = NULL;
    int rc = mb__dev_shared(kind, ordinal, &d, err, err_len);
    if (rc == 0 && bytes > 0)
      rc = mb__dev_d2h(d, dst, (uint64_t)(uintptr_t)src, bytes, 0, err, err_len);
    return rc;
  }
  memcpy(dst, src, bytes);
  return 0;
}

/* A host that gives no log hears nothing: the library prints nothing. */
static void no_log(void *arg, int level, const char *model, const char *msg) {
  (void)arg;
  (void)level;
  (void)model;
  (void)msg;
}

int mb_model_add_plugin(mb_ctx *ctx, const char *name, mb_plugin_lib *lib,
                        const char *const *files, size_t n_files, const mb_plugin_host *host,
                        const mb_model_opts *opts, void **instance, char *err, size_t err_len) {
  if (ctx == NULL || name == NULL || lib == NULL || (n_files > 0 && files == NULL)) {
    mb__set_err(err, err_len, "plugin model: context, name and plugin are required");
    return MB_EINVAL;
  }
  plugin_inst *pi = mb__calloc(1, sizeof(*pi));
  if (pi == NULL)
    return MB_ENOMEM;
  pi->name = mb__strdup(name);
  if (pi->name == NULL) {
    mb__free(pi);
    return MB_ENOMEM;
  }
  pi->lib = lib;
  pi->ctx = ctx;
  if (host) {
    size_t n = host->size < sizeof(pi->host) ? host->size : sizeof(pi->host);
    memcpy(&pi->host, host, n);
  }
  pi->host.size = sizeof(pi->host);
  if (pi->host.progress == NULL)
    pi->host.progress = mb_op_progress;
  if (pi->host.log == NULL)
    pi->host.log = no_log;
  if (pi->host.device_alloc == NULL || pi->host.device_free == NULL ||
      pi->host.copy_to_device == NULL || pi->host.copy_from_device == NULL) {
    pi->host.device_alloc = dev_alloc;
    pi->host.device_free = dev_free;
    pi->host.copy_to_device = dev_copy_to;
    pi->host.copy_from_device = dev_copy_from;
  }
  if (pi->host.lost == NULL) {
    pi->host.lost = default_lost;
    pi->host.lost_arg = pi;
  }
  mb_plugin_args args = {name, files, n_files, &pi->host};
  char msg[256] = "";
  int rc = lib->p->create(&args, &pi->inst, msg, sizeof(msg));
  if (rc != 0) {
    mb__set_err(err, err_len, "%s: plugin %s: %s", name, lib->p->name ? lib->p->name : "",
                msg[0] ? msg : mb_strerror(rc));
    mb__free(pi->name);
    mb__free(pi);
    return rc < 0 ? rc : MB_EBACKEND;
  }
  __atomic_add_fetch(&lib->refs, 1, __ATOMIC_ACQ_REL);
  const mb_backend *be =
      &plugin_backends[lib->p->backend.offload != NULL][lib->p->backend.cancel != NULL];
  /* On failure mb_model_add destroys pi through pl_destroy. */
  rc = mb_model_add(ctx, name, be, pi, opts, err, err_len);
  if (rc == 0 && instance)
    *instance = pi;
  return rc;
}

int mb_plugin_handle(void *instance, const mb_plugin_request *req, mb_plugin_response *resp,
                     char *err, size_t err_len) {
  plugin_inst *pi = instance;
  if (pi == NULL || req == NULL || resp == NULL) {
    mb__set_err(err, err_len, "plugin request: instance, request and response are required");
    return MB_EINVAL;
  }
  memset(resp, 0, sizeof(*resp));
  resp->status = 200;
  snprintf(resp->content_type, sizeof(resp->content_type), "application/json");
  char msg[256] = "";
  int rc = pi->lib->p->handle(pi->inst, req, resp, msg, sizeof(msg));
  if (rc != 0) {
    mb_plugin_response_free(instance, resp);
    mb__set_err(err, err_len, "%s", msg[0] ? msg : mb_strerror(rc));
    return rc < 0 ? rc : MB_EBACKEND;
  }
  if (resp->body && pi->lib->p->free_body == NULL) {
    /* A body nobody can free: refuse it rather than leak it each request. */
    resp->body = NULL;
    resp->body_len = 0;
    mb__set_err(err, err_len, "plugin %s returned a body but has no free_body", pi->lib->p->name);
    return MB_EBACKEND;
  }
  return 0;
}

void mb_plugin_response_free(void *instance, mb_plugin_response *resp) {
  plugin_inst *pi = instance;
  if (resp == NULL)
    return;
  if (resp->body && pi && pi->lib->p->free_body)
    pi->lib->p->free_body(pi->inst, resp->body);
  resp->body = NULL;
  resp->body_len = 0;
}
