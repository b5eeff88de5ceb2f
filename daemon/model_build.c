/*
 * model_build.c - one construction of a model from its configuration
 * section (model_build.h), shared by modelbufd and `modelbuf bench
 * lifecycle`. No threads, no locks of its own.
 */
#include <stdio.h>
#include <string.h>

#include "expand.h"
#include "model_build.h"
#include "modelbuf/plugin.h"

int mbd_model_options(const mbd_config *cfg, const mbd_model_config *mc, mb_ctx *ctx,
                      mb_model_opts *out, char *err, size_t err_len) {
  int rc = mbd_config_model_opts(cfg, mc, out, err, err_len);
  if (rc != 0)
    return rc;
  if (out->device >= mb_device_count(ctx))
    out->device = MB_DEVICE_AUTO;
  return 0;
}

static void warn(const mbd_build_env *env, const char *model, const char *msg, const char *why) {
  if (env->warn)
    env->warn(env->warn_arg, model, msg, why);
}

/* Registers backend be with argument user: the core owns user (its
 * destroy frees it), or with env->keep_be the caller does (the core gets a
 * copy of be without destroy, in *env->keep_be, and out gets what frees
 * user). Either way user is freed when the add fails. */
static int add(const mbd_build_env *env, const mbd_model_config *mc, const mb_backend *be,
               void *user, const mb_model_opts *mo, mbd_built *out, char *err, size_t err_len) {
  if (env->keep_be == NULL)
    return mb_model_add(env->ctx, mc->name, be, user, mo, err, err_len);
  *env->keep_be = *be;
  env->keep_be->destroy = NULL;
  int rc = mb_model_add(env->ctx, mc->name, env->keep_be, user, mo, err, err_len);
  if (rc != 0) {
    if (be->destroy)
      be->destroy(user);
    return rc;
  }
  out->user = user;
  out->destroy = be->destroy;
  return 0;
}

int mbd_model_build(const mbd_build_env *env, const mbd_model_config *mc,
                    const mb_model_opts *mo_in, mbd_built *out, char *err, size_t err_len) {
  mb_model_opts mo = *mo_in;
  int rc;
  memset(out, 0, sizeof(*out));
  switch (mc->backend) {
  case MBD_BACKEND_PROCESS: {
    mbd_worker_opts wo;
    memset(&wo, 0, sizeof(wo));
    wo.mc = mc;
    wo.on_line = env->on_line;
    wo.on_warning = env->on_warning;
    wo.line_arg = env->cb_arg;
    wo.ctx = env->ctx;
    wo.sup = env->sup;
    mbd_worker *w;
    rc = mbd_worker_new(&wo, &w, err, err_len);
    if (rc != 0)
      return rc;
    /* Owned by the core or the caller from here, also when the add fails. */
    rc = add(env, mc, mbd_worker_backend(w), w, &mo, out, err, err_len);
    if (rc == 0)
      out->worker = w;
    return rc;
  }
  case MBD_BACKEND_PLUGIN: {
    mb_plugin_lib *lib;
    rc = mb_plugin_open(mc->plugin, &lib, err, err_len);
    if (rc != 0)
      return rc;
    /* Its files: entries as a tensors model's (folders, indexes, patterns).
     * Entries that name no file yet do not stop the model from being made:
     * the plugin gets them as written, and its loads fail on them until
     * they are fixed. */
    char **paths = NULL, why[512] = "";
    size_t n = 0;
    if (mc->n_files > 0 &&
        mbd_files_expand(mc->files, mc->n_files, mc->name, &paths, &n, why, sizeof(why)) != 0)
      warn(env, mc->name, "plugin: weight files not usable; loads will fail until they are", why);
    rc = mb_model_add_plugin(env->ctx, mc->name, lib,
                             (const char *const *)(paths ? paths : mc->files),
                             paths ? n : mc->n_files, env->plugin_host, &mo, &out->plugin, err,
                             err_len);
    mb_tensors_paths_free(paths, n);
    mb_plugin_close(lib);
    return rc;
  }
  case MBD_BACKEND_TENSORS: {
    mbd_tensors *t;
    char why[512];
    rc = mbd_tensors_new(mc, &t, &mo.footprint_bytes, why, sizeof(why));
    if (rc != 0) {
      snprintf(err, err_len, "model %s: %s", mc->name, mb_strerror(rc));
      return rc;
    }
    if (why[0])
      warn(env, mc->name, "tensors: weight file not usable; loads will fail until it is", why);
    /* Owned by the core or the caller from here, also when the add fails. */
    rc = add(env, mc, mbd_tensors_backend(), t, &mo, out, err, err_len);
    if (rc == 0)
      out->tensors = t;
    return rc;
  }
  }
  snprintf(err, err_len, "model '%s': unknown backend", mc->name);
  return MB_EINVAL;
}
