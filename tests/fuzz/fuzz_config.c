/*
 * fuzz_config.c - libFuzzer target for modelbufd's configuration parser.
 *
 * Feeds the input to mbd_config_parse with a fixed, injected environment
 * (so runs are reproducible), then, when it parses, exercises what the
 * daemon does next: overrides, translation into core options, worker
 * substitution of every template, and the formatters. The same bytes also
 * go to the duration and size parsers and to the ${NAME} expander directly.
 * Any crash, leak or sanitizer report is a bug.
 *
 * Seeds: tests/fuzz/corpus/config/. Run:
 *   cp -r tests/fuzz/corpus/config /tmp/cc && build-fuzz/tests/fuzz/fuzz_config /tmp/cc
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "expand.h"
#include "units.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const vars[] = {
    "HOME_DIR", "/home/fuzz", "API_KEY", "k$y", "EMPTY", "", "N", "3",
    "MODELBUF_LISTEN", "127.0.0.1:9", "MODELBUF_API_KEY", "envkey", "GPU_IDLE_TIMEOUT", "1m",
    NULL,
};

static const char *get(const char *name, void *arg) {
  (void)arg;
  for (size_t i = 0; vars[i] != NULL; i += 2)
    if (strcmp(vars[i], name) == 0)
      return vars[i + 1];
  return NULL;
}

static const mbd_env env = {get, NULL};

static void subst(const char *tmpl, const char *model) {
  char *out = NULL;
  if (tmpl != NULL && mbd_subst_worker(tmpl, 8000, model, 0, &out) == 0)
    free(out);
}

static void use_config(mbd_config *cfg) {
  mbd_diag diag;
  mbd_flags flags = {0};
  mb_ctx_opts co;
  char err[256];

  flags.keep_alive = "30s";
  mbd_diag_init(&diag);
  (void)mbd_config_apply_overrides(cfg, &env, &flags, &diag);
  mbd_diag_free(&diag);

  memset(&co, 0, sizeof(co));
  mbd_config_ctx_opts(cfg, &co);
  for (size_t i = 0; i < cfg->n_devices; i++) {
    mb_device_opts d;
    (void)mbd_config_device_opts(cfg, i, &d);
  }
  for (size_t i = 0; i < cfg->n_models; i++) {
    const mbd_model_config *m = &cfg->models[i];
    mb_model_opts mo;
    char buf[32];

    (void)mbd_config_model_opts(cfg, m, &mo, err, sizeof(err));
    for (size_t j = 0; j < m->n_cmd; j++)
      subst(m->cmd[j], m->name);
    for (size_t j = 0; j < m->n_files; j++)
      subst(m->files[j], m->name);
    for (size_t j = 0; j < m->n_env; j++)
      subst(m->env[j].value, m->name);
    subst(m->cwd, m->name);
    subst(m->health, m->name);
    subst(m->hook_offload.path, m->name);
    subst(m->probe.body, m->name);
    for (size_t j = 0; j < m->n_aliases; j++)
      if (mbd_config_find_model(cfg, m->aliases[j]) != m)
        abort(); /* aliases are unique and resolve to their model */
    if (mbd_config_find_model(cfg, m->name) != m)
      abort();
    mbd_format_duration(m->tuning.keep_alive_ms, buf, sizeof(buf));
    mbd_format_size(m->vram_bytes, buf, sizeof(buf));
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  mbd_config *cfg = NULL;
  mbd_diag diag;
  char *str, *out = NULL, err[256];
  int64_t ms;
  uint64_t bytes;

  mbd_diag_init(&diag);
  if (mbd_config_parse((const char *)data, size, "fuzz.yaml", &env, &cfg, &diag) == 0) {
    if (diag.n != 0)
      abort(); /* success never comes with errors */
    use_config(cfg);
    mbd_config_free(cfg);
  } else if (cfg != NULL) {
    abort(); /* failure never leaves a configuration */
  }
  mbd_diag_free(&diag);

  /* The scalar parsers, on the input as one string. */
  str = malloc(size + 1);
  if (str == NULL)
    return 0;
  memcpy(str, data, size);
  str[size] = '\0';
  if (mbd_parse_duration_ms(str, MBD_DUR_FOREVER, &ms, err, sizeof(err)) == 0) {
    char buf[32];
    int64_t back;
    mbd_format_duration(ms, buf, sizeof(buf));
    if (mbd_parse_duration_ms(buf, MBD_DUR_FOREVER, &back, err, sizeof(err)) != 0 || back != ms)
      abort(); /* formatting round-trips */
  }
  if (mbd_parse_size(str, &bytes, err, sizeof(err)) == 0) {
    char buf[32];
    uint64_t back;
    mbd_format_size(bytes, buf, sizeof(buf));
    if (mbd_parse_size(buf, &back, err, sizeof(err)) != 0 || back != bytes)
      abort();
  }
  if (mbd_expand_env(str, MBD_EXPAND_WORKER, &env, &out, err, sizeof(err)) == 0) {
    char *w = NULL;
    if (mbd_subst_worker(out, 1, "m", -1, &w) == 0)
      free(w);
    free(out);
  }
  free(str);
  return 0;
}
