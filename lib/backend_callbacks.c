/*
 * backend_callbacks.c - the callbacks backend: a model served by plain user
 * functions and one context pointer (mb_callbacks), the C form of
 * subclassing a Python "model buffer" class. Adapts them to the backend
 * vtable; the copy of mb_callbacks is the model's backend argument.
 */
#include <string.h>

#include "modelbuf/modelbuf.h"
#include "alloc.h"

static int cb_load(mb_op *op) {
  const mb_callbacks *cb = op->user;
  return cb->load(cb->user, op->device, op->err, op->err_len);
}

static int cb_offload(mb_op *op) {
  const mb_callbacks *cb = op->user;
  return cb->offload(cb->user, op->err, op->err_len);
}

static int cb_restore(mb_op *op) {
  const mb_callbacks *cb = op->user;
  return cb->restore(cb->user, op->device, op->err, op->err_len);
}

static int cb_unload(mb_op *op) {
  const mb_callbacks *cb = op->user;
  return cb->unload(cb->user, op->err, op->err_len);
}

static int cb_usage(mb_op *op, mb_usage *out) {
  const mb_callbacks *cb = op->user;
  if (cb->footprint == NULL)
    return MB_ENOTSUP;
  cb->footprint(cb->user, &out->device_bytes, &out->host_bytes);
  return 0;
}

static void cb_destroy(void *user) {
  mb__free(user);
}

static const mb_backend callbacks_full = {
    "callbacks", cb_load, cb_offload, cb_restore, cb_unload, cb_usage, NULL, cb_destroy, NULL,
};

static const mb_backend callbacks_no_offload = {
    "callbacks", cb_load, NULL, NULL, cb_unload, cb_usage, NULL, cb_destroy, NULL,
};

int mb_model_add_callbacks(mb_ctx *ctx, const char *name, const mb_callbacks *cb,
                           const mb_model_opts *opts, char *err, size_t err_len) {
  if (cb == NULL || cb->load == NULL || cb->unload == NULL ||
      (cb->offload == NULL) != (cb->restore == NULL)) {
    mb__set_err(err, err_len,
                "callbacks need load and unload, and offload with restore or neither");
    return MB_EINVAL;
  }
  mb_callbacks *copy = mb__malloc(sizeof(*copy));
  if (copy == NULL) {
    mb__set_err(err, err_len, "out of memory");
    return MB_ENOMEM;
  }
  *copy = *cb;
  /* mb_model_add owns copy from here on, and frees it on failure. */
  return mb_model_add(ctx, name, cb->offload ? &callbacks_full : &callbacks_no_offload, copy,
                      opts, err, err_len);
}
