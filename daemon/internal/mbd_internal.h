/*
 * mbd_internal.h - the part of modelbufd that another room of this
 * repository may use, and the only header of daemon/ it includes:
 * `modelbuf bench lifecycle` (cli/cmd_lifecycle.c) measures a model exactly
 * as modelbufd would run it, so it reads the daemon's configuration and
 * builds the model with the daemon's own construction. It links the
 * daemon's static library for that (mbd_internal_dep in
 * daemon/meson.build); nothing here is installed.
 *
 * What, and why:
 *   config.h       the configuration file, its diagnostics and the core's
 *                  options it gives (mbd_config_*, mbd_diag_*),
 *                  and mbd__edit_distance, the "did you mean" of its keys,
 *                  which the CLI's commands and model names use too;
 *   expand.h       a model's files: entries expanded as the daemon does;
 *   model_build.h  one construction of a model from its section (which
 *                  brings the supervisor, the process worker and the
 *                  tensors model: mbd_sup_*, mbd_worker_*, mbd_http_call,
 *                  mbd_tensors_model_of).
 * A new user adds what it needs here, with its reason.
 */
#ifndef MBD_INTERNAL_H
#define MBD_INTERNAL_H

#include "../config.h"
#include "../expand.h"
#include "../model_build.h"

#endif /* MBD_INTERNAL_H */
