/*
 * model_build.h - one construction of a model from its configuration
 * section, for modelbufd and for everything else that turns a section into
 * a model (`modelbuf bench lifecycle`): the same core options, the same
 * backend, the same weight files (folders, Hugging Face indexes and
 * patterns expanded the same way), so whatever `modelbufd --check-config`
 * accepts, both run the same.
 */
#ifndef MBD_MODEL_BUILD_H
#define MBD_MODEL_BUILD_H

#include <stddef.h>

#include "config.h"
#include "modelbuf/modelbuf.h"
#include "modelbuf/plugin.h"
#include "supervisor.h"
#include "tensors.h"
#include "worker.h"

/* What a model is built with. */
typedef struct mbd_build_env {
  mb_ctx *ctx;
  mbd_sup *sup;                   /* process models (required for them) */
  mbd_worker_line_fn on_line;     /* process models, optional */
  mbd_worker_warn_fn on_warning;  /* process models, optional */
  void *cb_arg;                   /* their argument */
  /* A model that is built but cannot load yet (its weight files are not
   * usable): the daemon logs it and starts; loads fail until they are.
   * Optional. */
  void (*warn)(void *arg, const char *model, const char *msg, const char *why);
  void *warn_arg;
  /* Optional: the caller keeps a process or tensors model's backend
   * argument (modelbufd frees them at stop, so that a model removed by a
   * reload stays readable): the vtable is copied here without destroy,
   * and must live as long as the model. */
  mb_backend *keep_be;
  /* Plugin models: the host services they get (its log above all: the
   * library drops a plugin's lines when the host gives no log). Optional;
   * copied by the library. */
  const mb_plugin_host *plugin_host;
} mbd_build_env;

/* What a model was built into (one of them set); the core owns each,
 * but with env->keep_be, where user and destroy say what the caller frees
 * once the model is removed. */
typedef struct mbd_built {
  mbd_worker *worker; /* process */
  void *plugin;       /* plugin instance (mb_plugin_handle) */
  mbd_tensors *tensors;
  void *user;
  void (*destroy)(void *user);
} mbd_built;

/*
 * The core's options of model mc (mbd_config_model_opts), with a device
 * index beyond the context's devices placed automatically. The caller may
 * change them before mbd_model_build. Errors: those of
 * mbd_config_model_opts (message in err).
 */
int mbd_model_options(const mbd_config *cfg, const mbd_model_config *mc, mb_ctx *ctx,
                      mb_model_opts *out, char *err, size_t err_len) MB_WUR;

/*
 * Adds model mc to env->ctx with options mo: a worker (process), a plugin
 * instance (its files: expanded), or a tensors model (its files: expanded
 * at each cold load; the declared footprint the files' arena when they can
 * be read). On success *out says what it became. Errors: those of
 * mb_model_add and of the backend's construction (message in err).
 */
int mbd_model_build(const mbd_build_env *env, const mbd_model_config *mc,
                    const mb_model_opts *mo, mbd_built *out, char *err, size_t err_len) MB_WUR;

#endif /* MBD_MODEL_BUILD_H */
