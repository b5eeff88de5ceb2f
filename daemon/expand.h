/*
 * expand.h - ${NAME} expansion in configuration values, and the worker-time
 * substitution of the reserved ${PORT}, ${MODEL} and ${GPU}.
 *
 * Two passes, at two times:
 *   1. When the configuration is read, mbd_expand_env() replaces every
 *      ${NAME} from the environment. ${NAME:-default} gives a default used
 *      when NAME is unset or empty; an unset NAME without a default is an
 *      error. "$$" is a literal "$"; a "$" not followed by "{" or "$" is
 *      kept as it is. Expanded text is never expanded again.
 *   2. When a worker starts, mbd_subst_worker() replaces the reserved
 *      ${PORT}, ${MODEL} and ${GPU} in the values that pass 1 kept for it
 *      (MBD_EXPAND_WORKER) and turns "$$" into "$".
 *
 * So that pass 2 never misreads a "$" that came from the environment or from
 * a "$$" escape, pass 1 in worker mode writes every literal "$" as "$$".
 */
#ifndef MBD_EXPAND_H
#define MBD_EXPAND_H

#include <stddef.h>

#include "modelbuf/modelbuf.h"
#include "modelbuf/tensors.h" /* mb_tensors_paths_free */

/*
 * Where ${NAME} values come from. get returns the value or NULL when unset;
 * the string needs to stay valid only until the next call. Tests and the
 * fuzzer pass their own; a NULL mbd_env pointer means the process
 * environment (getenv).
 */
typedef struct mbd_env {
  const char *(*get)(const char *name, void *arg);
  void *arg;
} mbd_env;

/* Looks NAME up in env (NULL: getenv). */
const char *mbd_env_get(const mbd_env *env, const char *name);

/* 1 when name is one of the reserved worker variables PORT, MODEL, GPU. */
int mbd_is_reserved_var(const char *name, size_t len);

/* Flags for mbd_expand_env. */
#define MBD_EXPAND_WORKER 0x1 /* keep ${PORT}/${MODEL}/${GPU} and "$$" for pass 2 */

/*
 * Expands in into a new string (*out, caller frees with free()).
 * Errors: MB_EINVAL with the reason in err: an unset variable without a
 * default, an unterminated "${", a bad variable name, a reserved variable
 * outside worker mode or with a default; MB_ENOMEM. On error *out is NULL.
 */
int mbd_expand_env(const char *in, unsigned flags, const mbd_env *env, char **out, char *err,
                   size_t err_len) MB_WUR;

/*
 * Pass 2: substitutes ${PORT} (decimal port), ${MODEL} (model name) and
 * ${GPU} (the CUDA ordinal, or "" when gpu < 0, the host device) in tmpl,
 * turns "$$" into "$" and keeps everything else. *out is a new string the
 * caller frees. Errors: MB_EINVAL (NULL tmpl, model or out), MB_ENOMEM.
 */
int mbd_subst_worker(const char *tmpl, int port, const char *model, int gpu, char **out) MB_WUR;

/*
 * The weight files a model's `files:` entries name: ${MODEL} and "$$"
 * substituted in each (pass 2, as in a worker's values), then each entry
 * expanded by mb_tensors_expand (a file; a folder: its Hugging Face index,
 * else its .safetensors, else its .gguf files; an index.json; a glob
 * pattern), each file once. Free *paths with mb_tensors_paths_free. Errors
 * are mb_tensors_expand's, with its message in err.
 */
int mbd_files_expand(char *const *files, size_t n, const char *model, char ***paths,
                     size_t *n_paths, char *err, size_t err_len) MB_WUR;

#endif /* MBD_EXPAND_H */
