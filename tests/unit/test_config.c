/*
 * test_config.c - modelbufd's configuration: units, ${NAME} expansion, the
 * YAML schema with its defaults and errors, overrides, and the translation
 * into the core's option structs.
 *
 * The environment is injected (fake_env below), never setenv'd, so tests do
 * not depend on the shell that runs them. Files are written to mkstemp
 * temporaries only where the file path itself is under test.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "config.h"
#include "expand.h"
#include "modelbuf/modelbuf.h"
#include "units.h"
#include "yaml_tree.h"

/* ------------------------------------------------------------------------ */
/* Fixtures                                                                  */

static const char *const fake_vars[] = {
    "HOME_DIR", "/home/me",
    "API_KEY", "sekret",
    "EMPTY", "",
    "DOLLAR", "a$b",
    "MAXQ", "7",
    "MODELBUF_API_KEY", "from-env",
    "MODELBUF_LISTEN", "0.0.0.0:9000",
    "GPU_IDLE_TIMEOUT", "90",
    "MODELBUF_CONFIG", "/etc/modelbuf.yaml",
    NULL,
};

static const char *fake_get(const char *name, void *arg) {
  const char *const *vars = arg;
  for (size_t i = 0; vars[i] != NULL; i += 2)
    if (strcmp(vars[i], name) == 0)
      return vars[i + 1];
  return NULL;
}

static const mbd_env fake_env = {fake_get, (void *)fake_vars};

static const char *const no_vars[] = {NULL};
static const mbd_env empty_env = {fake_get, (void *)no_vars};

/* Parses text as "t.yaml" with the fake environment. */
static int parse(const char *text, mbd_config **cfg, mbd_diag *diag) {
  mbd_diag_init(diag);
  return mbd_config_parse(text, strlen(text), "t.yaml", &fake_env, cfg, diag);
}

/* Parses text that must be valid; fails the test with the messages otherwise. */
static mbd_config *parse_ok(const char *text) {
  mbd_config *cfg = NULL;
  mbd_diag diag;
  int rc = parse(text, &cfg, &diag);
  if (rc != 0) {
    mbd_diag_print(&diag, stderr);
    fail_msg("parse failed: %d", rc);
  }
  assert_non_null(cfg);
  assert_int_equal(diag.n, 0);
  mbd_diag_free(&diag);
  return cfg;
}

/* Parses text that must be invalid; returns the messages (caller frees). */
static void parse_bad(const char *text, mbd_diag *diag) {
  mbd_config *cfg = (mbd_config *)(uintptr_t)1;
  assert_int_equal(parse(text, &cfg, diag), MB_EINVAL);
  assert_null(cfg);
  assert_true(diag->n > 0);
}

static int diag_has(const mbd_diag *d, const char *needle) {
  for (size_t i = 0; i < d->n; i++)
    if (strstr(d->msgs[i], needle) != NULL)
      return 1;
  return 0;
}

#define assert_diag_has(d, needle)                                       \
  do {                                                                   \
    if (!diag_has((d), (needle))) {                                      \
      mbd_diag_print((d), stderr);                                       \
      fail_msg("no message contains \"%s\"", (needle));                  \
    }                                                                    \
  } while (0)

/* ------------------------------------------------------------------------ */
/* Durations and sizes                                                       */

typedef struct dur_case {
  const char *in;
  unsigned flags;
  int ok;
  int64_t ms;
} dur_case;

static void test_durations(void **state) {
  static const dur_case cases[] = {
      {"250ms", 0, 1, 250},
      {"30s", 0, 1, 30000},
      {"5m", 0, 1, 300000},
      {"1h", 0, 1, 3600000},
      {"2d", 0, 1, 172800000},
      {"1h30m", 0, 1, 5400000},
      {"1m30.5s", 0, 1, 90500},
      {"1.5h", 0, 1, 5400000},
      {"90", 0, 1, 90000},
      {"1.5", 0, 1, 1500},
      {"0", 0, 1, 0},
      {"0s", 0, 1, 0},
      {"  10s  ", 0, 1, 10000},
      {"+5s", 0, 1, 5000},
      {"0.0001s", 0, 1, 1}, /* a non-zero duration never rounds to 0 */
      {"1.0000000001s", 0, 1, 1001},
      {"-1", MBD_DUR_FOREVER, 1, MB_FOREVER},
      {"forever", MBD_DUR_FOREVER, 1, MB_FOREVER},
      {"inf", MBD_DUR_FOREVER, 1, MB_FOREVER},
      {"Never", MBD_DUR_FOREVER, 1, MB_FOREVER},
      {"-1", 0, 0, 0},
      {"forever", 0, 0, 0},
      {"-5s", MBD_DUR_FOREVER, 0, 0},
      {"-2", MBD_DUR_FOREVER, 0, 0},
      {"", 0, 0, 0},
      {"   ", 0, 0, 0},
      {"s", 0, 0, 0},
      {"5x", 0, 0, 0},
      {"5 m", 0, 0, 0},
      {"5m30", 0, 0, 0}, /* a bare number only on its own */
      {"1e3", 0, 0, 0},
      {".", 0, 0, 0},
      {"5M", 0, 0, 0},
      {"9223372036854775807ms", 0, 1, INT64_MAX},
      {"9223372036854775808ms", 0, 0, 0},
      {"9223372036854775807s", 0, 0, 0},
      {"106751991167d", 0, 1, 106751991167LL * 86400000LL},
      {"106751991168d", 0, 0, 0},
      {"99999999999999999999999", 0, 0, 0},
  };
  char err[128];

  (void)state;
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    int64_t ms = 12345;
    int rc = mbd_parse_duration_ms(cases[i].in, cases[i].flags, &ms, err, sizeof(err));
    if (cases[i].ok) {
      if (rc != 0)
        fail_msg("'%s': unexpected error %s", cases[i].in, err);
      if (ms != cases[i].ms)
        fail_msg("'%s': got %lld, want %lld", cases[i].in, (long long)ms,
                 (long long)cases[i].ms);
    } else {
      if (rc != MB_EINVAL)
        fail_msg("'%s': accepted as %lld", cases[i].in, (long long)ms);
      assert_int_equal(ms, 12345); /* untouched on error */
      assert_true(strlen(err) > 0);
    }
  }
  assert_int_equal(mbd_parse_duration_ms(NULL, 0, NULL, NULL, 0), MB_EINVAL);
}

typedef struct size_case {
  const char *in;
  int ok;
  uint64_t bytes;
} size_case;

static void test_sizes(void **state) {
  static const size_case cases[] = {
      {"512MiB", 1, 512ULL << 20},
      {"6GiB", 1, 6ULL << 30},
      {"1GB", 1, 1000000000ULL},
      {"1.5GiB", 1, 3ULL << 29},
      {"1KiB", 1, 1024},
      {"2TiB", 1, 2ULL << 40},
      {"1PiB", 1, 1ULL << 50},
      {"3KB", 1, 3000},
      {"4MB", 1, 4000000},
      {"5TB", 1, 5000000000000ULL},
      {"8Gi", 1, 8ULL << 30},
      {"6 GiB", 1, 6ULL << 30},
      {"6gib", 1, 6ULL << 30},
      {"1024", 1, 1024},
      {"1024B", 1, 1024},
      {"0", 1, 0},
      {"0.5KiB", 1, 512},
      {"0.3KB", 1, 300},
      {"1.0000000001KiB", 1, 1024},
      {"18446744073709551615", 1, UINT64_MAX},
      {"18446744073709551616", 0, 0},
      {"16EiB", 0, 0},
      {"16384PiB", 0, 0},
      {"16383.99PiB", 1, 16383ULL * (1ULL << 50) + (99ULL * (1ULL << 50)) / 100},
      {"1.5", 0, 0}, /* bytes are whole */
      {"-1GiB", 0, 0},
      {"1G", 0, 0}, /* ambiguous */
      {"1k", 0, 0},
      {"1XB", 0, 0},
      {"GiB", 0, 0},
      {"", 0, 0},
      {"1 2", 0, 0},
  };
  char err[128];

  (void)state;
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    uint64_t b = 777;
    int rc = mbd_parse_size(cases[i].in, &b, err, sizeof(err));
    if (cases[i].ok) {
      if (rc != 0)
        fail_msg("'%s': unexpected error %s", cases[i].in, err);
      if (b != cases[i].bytes)
        fail_msg("'%s': got %llu, want %llu", cases[i].in, (unsigned long long)b,
                 (unsigned long long)cases[i].bytes);
    } else {
      if (rc != MB_EINVAL)
        fail_msg("'%s': accepted as %llu", cases[i].in, (unsigned long long)b);
      assert_int_equal(b, 777);
    }
  }
  assert_int_equal(mbd_parse_size("1G", &(uint64_t){0}, err, sizeof(err)), MB_EINVAL);
  assert_non_null(strstr(err, "ambiguous"));
}

static void test_format_roundtrip(void **state) {
  static const int64_t durs[] = {0, 1, 250, 999, 1000, 1500, 60000, 90500, 5400000, 3600000,
                                 86400000, MB_FOREVER, INT64_MAX};
  static const uint64_t sizes[] = {0, 1, 1000, 1024, 3ULL << 29, 6ULL << 30, 1000000000ULL,
                                   UINT64_MAX, 1ULL << 50};
  char buf[32];

  (void)state;
  assert_string_equal(mbd_format_duration(300000, buf, sizeof(buf)), "5m");
  assert_string_equal(mbd_format_duration(5400000, buf, sizeof(buf)), "1h30m");
  assert_string_equal(mbd_format_duration(90500, buf, sizeof(buf)), "1m30.5s");
  assert_string_equal(mbd_format_duration(250, buf, sizeof(buf)), "250ms");
  assert_string_equal(mbd_format_duration(MB_FOREVER, buf, sizeof(buf)), "forever");
  assert_string_equal(mbd_format_size(6ULL << 30, buf, sizeof(buf)), "6GiB");
  assert_string_equal(mbd_format_size(1000000000ULL, buf, sizeof(buf)), "1000000000");
  for (size_t i = 0; i < sizeof(durs) / sizeof(durs[0]); i++) {
    int64_t back;
    mbd_format_duration(durs[i], buf, sizeof(buf));
    assert_int_equal(mbd_parse_duration_ms(buf, MBD_DUR_FOREVER, &back, NULL, 0), 0);
    assert_int_equal(back, durs[i]);
  }
  for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
    uint64_t back;
    mbd_format_size(sizes[i], buf, sizeof(buf));
    assert_int_equal(mbd_parse_size(buf, &back, NULL, 0), 0);
    assert_true(back == sizes[i]);
  }
}

/* ------------------------------------------------------------------------ */
/* Expansion                                                                 */

static void expect_expand(const char *in, unsigned flags, const char *want) {
  char *out = NULL, err[256] = "";
  int rc = mbd_expand_env(in, flags, &fake_env, &out, err, sizeof(err));
  if (rc != 0)
    fail_msg("'%s': %s", in, err);
  assert_string_equal(out, want);
  free(out);
}

static void expect_expand_error(const char *in, unsigned flags, const char *needle) {
  char *out = (char *)(uintptr_t)1, err[256] = "";
  assert_int_equal(mbd_expand_env(in, flags, &fake_env, &out, err, sizeof(err)), MB_EINVAL);
  assert_null(out);
  if (strstr(err, needle) == NULL)
    fail_msg("'%s': error '%s' lacks '%s'", in, err, needle);
}

static void test_expand(void **state) {
  (void)state;
  expect_expand("plain", 0, "plain");
  expect_expand("", 0, "");
  expect_expand("${HOME_DIR}/models", 0, "/home/me/models");
  expect_expand("${API_KEY}${API_KEY}", 0, "sekretsekret");
  expect_expand("${NOT_SET:-fallback}", 0, "fallback");
  expect_expand("${EMPTY:-fallback}", 0, "fallback");
  expect_expand("${API_KEY:-fallback}", 0, "sekret");
  expect_expand("${NOT_SET:-}", 0, "");
  expect_expand("${EMPTY}", 0, "");
  expect_expand("cost $$5", 0, "cost $5");
  expect_expand("$$${API_KEY}", 0, "$sekret");
  expect_expand("$HOME and $", 0, "$HOME and $");
  expect_expand("${DOLLAR}", 0, "a$b");
  /* Expanded text is not expanded again. */
  expect_expand("${NOT_SET:-${API_KEY}", 0, "${API_KEY");
  /* Worker mode keeps the reserved variables and doubles every literal $. */
  expect_expand("--port=${PORT}", MBD_EXPAND_WORKER, "--port=${PORT}");
  expect_expand("${MODEL}@${GPU}:${API_KEY}", MBD_EXPAND_WORKER, "${MODEL}@${GPU}:sekret");
  expect_expand("${DOLLAR}", MBD_EXPAND_WORKER, "a$$b");
  expect_expand("$$", MBD_EXPAND_WORKER, "$$");
  expect_expand("$x", MBD_EXPAND_WORKER, "$$x");

  expect_expand_error("${NOT_SET}", 0, "'NOT_SET' is not set");
  expect_expand_error("${PORT}", 0, "reserved");
  expect_expand_error("${PORT:-80}", MBD_EXPAND_WORKER, "takes no default");
  expect_expand_error("${API_KEY", 0, "unterminated");
  expect_expand_error("${}", 0, "bad variable name");
  expect_expand_error("${1X}", 0, "bad variable name");
  expect_expand_error("${A B}", 0, "bad variable reference");
  expect_expand_error("${A:B}", 0, "bad variable reference");
}

static void test_subst_worker(void **state) {
  char *out = NULL, *tmpl = NULL;

  (void)state;
  assert_int_equal(mbd_subst_worker("--port=${PORT} --name ${MODEL} cuda:${GPU}", 8123,
                                    "whisper", 1, &out), 0);
  assert_string_equal(out, "--port=8123 --name whisper cuda:1");
  free(out);
  assert_int_equal(mbd_subst_worker("gpu=${GPU}.", 1, "m", -1, &out), 0);
  assert_string_equal(out, "gpu=.");
  free(out);
  assert_int_equal(mbd_subst_worker("$${PORT} ${OTHER} $", 1, "m", 0, &out), 0);
  assert_string_equal(out, "${PORT} ${OTHER} $");
  free(out);
  /* The two passes together: a "$" from the environment survives both. */
  assert_int_equal(mbd_expand_env("${DOLLAR}:${PORT}:$${PORT}", MBD_EXPAND_WORKER, &fake_env,
                                  &tmpl, NULL, 0), 0);
  assert_int_equal(mbd_subst_worker(tmpl, 42, "m", 0, &out), 0);
  assert_string_equal(out, "a$b:42:${PORT}");
  free(out);
  free(tmpl);
  assert_int_equal(mbd_subst_worker(NULL, 1, "m", 0, &out), MB_EINVAL);
  assert_int_equal(mbd_subst_worker("x", 1, NULL, 0, &out), MB_EINVAL);
}

/* ------------------------------------------------------------------------ */
/* Defaults and every key                                                    */

static void test_defaults(void **state) {
  mbd_config *cfg;

  (void)state;
  cfg = parse_ok("");
  assert_string_equal(cfg->listen_str, "127.0.0.1:8686");
  assert_string_equal(cfg->listen.host, "127.0.0.1");
  assert_int_equal(cfg->listen.port, 8686);
  assert_null(cfg->listen.unix_path);
  assert_null(cfg->unix_socket);
  assert_int_equal(cfg->n_api_keys, 0);
  assert_int_equal(cfg->devices_set, 0);
  assert_int_equal(cfg->n_devices, 0);
  assert_int_equal(cfg->host_memory_bytes, 0);
  assert_int_equal(cfg->eviction, MB_EVICT_LRU);
  assert_int_equal(cfg->log_level, MBD_LOG_INFO);
  assert_int_equal(cfg->dashboard, 1);
  assert_int_equal(cfg->defaults.keep_alive_ms, 5 * 60 * 1000);
  assert_int_equal(cfg->defaults.offload, 1);
  assert_int_equal(cfg->defaults.host_keep_alive_ms, 30 * 60 * 1000);
  assert_int_equal(cfg->defaults.max_concurrency, 1);
  assert_int_equal(cfg->defaults.max_queue, 64);
  assert_int_equal(cfg->defaults.queue_timeout_ms, 60000);
  assert_int_equal(cfg->defaults.start_timeout_ms, 120000);
  assert_int_equal(cfg->defaults.stop_timeout_ms, 10000);
  assert_int_equal(cfg->defaults.busy_timeout_ms, 0);
  assert_int_equal(cfg->max_body_bytes, 64ULL << 20);
  assert_int_equal(cfg->max_header_bytes, 64ULL << 10);
  assert_int_equal(cfg->n_models, 0);
  mbd_config_free(cfg);

  /* Comments only, an explicit empty document, and nulls everywhere. */
  cfg = parse_ok("# nothing\n");
  mbd_config_free(cfg);
  cfg = parse_ok("---\n...\n");
  mbd_config_free(cfg);
  cfg = parse_ok("models:\ndefaults: ~\napi_keys: null\n");
  assert_int_equal(cfg->n_models, 0);
  mbd_config_free(cfg);

  assert_int_equal(mbd_config_new_default(&cfg), 0);
  assert_int_equal(cfg->listen.port, 8686);
  mbd_config_free(cfg);
}

static const char every_key_yaml[] =
    "listen: \"[::1]:9090\"\n"
    "unix_socket: /run/modelbuf.sock\n"
    "api_keys: [\"${API_KEY}\", other, \"\", \"${NOT_SET:-}\", sekret]\n"
    "devices:\n"
    "  - {gpu: 1, reserve: 1GiB, budget: 20GiB, max_loaded: 3, concurrency: 2,\n"
    "     max_parallel_loads: 2, capacity: 24GiB}\n"
    "  - gpu: 0\n"
    "  - {host: true, budget: 2GiB}\n"
    "host_memory: 32GiB\n"
    "eviction: cost\n"
    "log_level: debug\n"
    "defaults: {keep_alive: 10m, offload: false, host_keep_alive: forever, max_concurrency: 2,\n"
    "           max_queue: 0, queue_timeout: -1, start_timeout: 3m, stop_timeout: 0,\n"
    "           busy_timeout: 10m}\n"
    "limits: {max_body_size: 1MiB, max_header_size: 16KiB}\n"
    "models:\n"
    "  whisper:\n"
    "    cmd: [python3, serve.py, --port, \"${PORT}\", --home, \"${HOME_DIR}\", 8]\n"
    "    files: [/models/w.bin, \"/models/${MODEL}.gguf\"]\n"
    "    env: {HF_HOME: \"${HOME_DIR}/hf\", WORKER_GPU: \"${GPU}\", EMPTYVAL: }\n"
    "    cwd: /srv/whisper\n"
    "    health: /ready\n"
    "    port: 8001\n"
    "    vram: 6GiB\n"
    "    device: 1\n"
    "    pinned: yes\n"
    "    priority: -3\n"
    "    aliases: [whisper-1, \"whisper:large-v3\"]\n"
    "    keep_alive: 0\n"
    "    offload: true\n"
    "    host_keep_alive: 1h\n"
    "    max_concurrency: 4\n"
    "    max_queue: ${MAXQ}\n"
    "    queue_timeout: 250ms\n"
    "    start_timeout: 5m\n"
    "    stop_timeout: 2s\n"
    "    busy_timeout: 30s\n"
    "    hooks:\n"
    "      offload: {method: post, path: /sleep?level=1}\n"
    "      restore: {path: /wake_up, timeout: 5s}\n"
    "      cleanup: {method: PUT, path: /cleanup}\n"
    "    probe: {path: /v1/audio/transcriptions, body: '{\"x\": 1}'}\n"
    "  plug:\n"
    "    backend: plugin\n"
    "    plugin: /usr/lib/modelbuf/plug.so\n"
    "    device: auto\n"
    "    probe: {path: /ping}\n"
    "  weights:\n"
    "    backend: tensors\n"
    "    files: [/w/a.safetensors]\n"
    "    device: 0\n";

static void test_every_key(void **state) {
  mbd_config *cfg;
  const mbd_model_config *w, *p, *t;

  (void)state;
  cfg = parse_ok(every_key_yaml);
  assert_string_equal(cfg->listen.host, "::1");
  assert_int_equal(cfg->listen.port, 9090);
  assert_string_equal(cfg->unix_socket, "/run/modelbuf.sock");
  assert_int_equal(cfg->n_api_keys, 2); /* empties dropped, duplicates once */
  assert_string_equal(cfg->api_keys[0], "sekret");
  assert_string_equal(cfg->api_keys[1], "other");

  assert_int_equal(cfg->devices_set, 1);
  assert_int_equal(cfg->n_devices, 3);
  assert_int_equal(cfg->devices[0].host, 0);
  assert_int_equal(cfg->devices[0].gpu, 1);
  assert_true(cfg->devices[0].reserve_bytes == 1ULL << 30);
  assert_true(cfg->devices[0].budget_bytes == 20ULL << 30);
  assert_true(cfg->devices[0].capacity_bytes == 24ULL << 30);
  assert_int_equal(cfg->devices[0].max_loaded, 3);
  assert_int_equal(cfg->devices[0].concurrency, 2);
  assert_int_equal(cfg->devices[0].max_parallel_loads, 2);
  assert_int_equal(cfg->devices[1].gpu, 0);
  assert_int_equal(cfg->devices[1].max_parallel_loads, 1);
  assert_int_equal(cfg->devices[1].reserve_bytes, 0);
  assert_int_equal(cfg->devices[2].host, 1);
  assert_int_equal(cfg->devices[2].gpu, -1);
  assert_true(cfg->devices[2].budget_bytes == 2ULL << 30);

  assert_true(cfg->host_memory_bytes == 32ULL << 30);
  assert_int_equal(cfg->eviction, MB_EVICT_COST);
  assert_int_equal(cfg->log_level, MBD_LOG_DEBUG);
  assert_int_equal(cfg->defaults.keep_alive_ms, 600000);
  assert_int_equal(cfg->defaults.offload, 0);
  assert_int_equal(cfg->defaults.host_keep_alive_ms, MB_FOREVER);
  assert_int_equal(cfg->defaults.max_concurrency, 2);
  assert_int_equal(cfg->defaults.max_queue, 0);
  assert_int_equal(cfg->defaults.queue_timeout_ms, MB_FOREVER);
  assert_int_equal(cfg->defaults.start_timeout_ms, 180000);
  assert_int_equal(cfg->defaults.stop_timeout_ms, 0);
  assert_int_equal(cfg->defaults.busy_timeout_ms, 600000);
  assert_true(cfg->max_body_bytes == 1ULL << 20);
  assert_true(cfg->max_header_bytes == 16ULL << 10);

  assert_int_equal(cfg->n_models, 3);
  w = &cfg->models[0];
  assert_string_equal(w->name, "whisper");
  assert_int_equal(w->line, 17);
  assert_int_equal(w->col, 3);
  assert_int_equal(w->backend, MBD_BACKEND_PROCESS);
  assert_int_equal(w->n_cmd, 7);
  assert_string_equal(w->cmd[0], "python3");
  assert_string_equal(w->cmd[3], "${PORT}");
  assert_string_equal(w->cmd[5], "/home/me");
  assert_string_equal(w->cmd[6], "8");
  assert_null(w->cmd[7]); /* argv-ready */
  assert_int_equal(w->n_files, 2);
  assert_string_equal(w->files[1], "/models/${MODEL}.gguf");
  assert_int_equal(w->n_env, 3);
  assert_string_equal(w->env[0].name, "HF_HOME");
  assert_string_equal(w->env[0].value, "/home/me/hf");
  assert_string_equal(w->env[1].value, "${GPU}");
  assert_string_equal(w->env[2].name, "EMPTYVAL");
  assert_string_equal(w->env[2].value, "");
  assert_string_equal(w->cwd, "/srv/whisper");
  assert_string_equal(w->health, "/ready");
  assert_int_equal(w->port, 8001);
  assert_true(w->vram_bytes == 6ULL << 30);
  assert_int_equal(w->device, 1);
  assert_int_equal(w->pinned, 1);
  assert_int_equal(w->priority, -3);
  assert_int_equal(w->n_aliases, 2);
  assert_string_equal(w->aliases[1], "whisper:large-v3");
  assert_int_equal(w->tuning.keep_alive_ms, 0);
  assert_int_equal(w->tuning.offload, 1);
  assert_int_equal(w->tuning.host_keep_alive_ms, 3600000);
  assert_int_equal(w->tuning.max_concurrency, 4);
  assert_int_equal(w->tuning.max_queue, 7);
  assert_int_equal(w->tuning.queue_timeout_ms, 250);
  assert_int_equal(w->tuning.start_timeout_ms, 300000);
  assert_int_equal(w->tuning.stop_timeout_ms, 2000);
  assert_int_equal(w->tuning.busy_timeout_ms, 30000);
  assert_string_equal(w->hook_offload.method, "POST");
  assert_string_equal(w->hook_offload.path, "/sleep?level=1");
  assert_int_equal(w->hook_offload.timeout_ms, 30000);
  assert_string_equal(w->hook_restore.method, "POST");
  assert_int_equal(w->hook_restore.timeout_ms, 5000);
  assert_string_equal(w->hook_cleanup.method, "PUT");
  assert_string_equal(w->probe.method, "POST");
  assert_string_equal(w->probe.path, "/v1/audio/transcriptions");
  assert_string_equal(w->probe.body, "{\"x\": 1}");

  p = &cfg->models[1];
  assert_int_equal(p->backend, MBD_BACKEND_PLUGIN);
  assert_string_equal(p->plugin, "/usr/lib/modelbuf/plug.so");
  assert_int_equal(p->device, MB_DEVICE_AUTO);
  assert_null(p->cmd);
  assert_string_equal(p->probe.method, "GET");
  assert_null(p->probe.body);
  assert_null(p->hook_offload.path);
  /* Inherited from defaults. */
  assert_int_equal(p->tuning.keep_alive_ms, 600000);
  assert_int_equal(p->tuning.offload, 0);
  assert_int_equal(p->tuning.max_queue, 0);
  assert_int_equal(p->tuning.busy_timeout_ms, 600000);
  assert_int_equal(p->set.keep_alive_ms, MBD_UNSET);

  t = &cfg->models[2];
  assert_int_equal(t->backend, MBD_BACKEND_TENSORS);
  assert_string_equal(t->health, "/health");
  mbd_config_free(cfg);
}

static void test_model_defaults(void **state) {
  mbd_config *cfg;
  const mbd_model_config *m;

  (void)state;
  cfg = parse_ok("models:\n  a:\n    cmd: [x]\n");
  m = &cfg->models[0];
  assert_string_equal(m->name, "a");
  assert_int_equal(m->backend, MBD_BACKEND_PROCESS);
  assert_string_equal(m->health, "/health");
  assert_int_equal(m->port, 0);
  assert_int_equal(m->vram_bytes, 0);
  assert_int_equal(m->device, MB_DEVICE_AUTO);
  assert_int_equal(m->pinned, 0);
  assert_int_equal(m->priority, 0);
  assert_int_equal(m->n_aliases, 0);
  assert_int_equal(m->n_env, 0);
  assert_null(m->cwd);
  assert_int_equal(m->tuning.keep_alive_ms, 300000);
  assert_int_equal(m->tuning.offload, 1);
  assert_int_equal(m->tuning.host_keep_alive_ms, 1800000);
  assert_int_equal(m->tuning.max_concurrency, 1);
  assert_int_equal(m->tuning.max_queue, 64);
  assert_int_equal(m->tuning.queue_timeout_ms, 60000);
  assert_int_equal(m->tuning.start_timeout_ms, 120000);
  assert_int_equal(m->tuning.stop_timeout_ms, 10000);
  assert_int_equal(m->tuning.busy_timeout_ms, 0);
  assert_null(m->hook_offload.path);
  assert_null(m->hook_restore.path);
  assert_null(m->hook_cleanup.path);
  assert_null(m->probe.path);
  mbd_config_free(cfg);
}

static void test_design_example(void **state) {
  /* The example of DESIGN §6, with the key variable set. */
  static const char yaml[] =
      "listen: 127.0.0.1:8686\n"
      "api_keys: [\"${MODELBUF_API_KEY}\"]\n"
      "devices: [{gpu: 0, reserve: 1GiB}]\n"
      "host_memory: 32GiB\n"
      "eviction: cost\n"
      "defaults: {keep_alive: 5m, offload: true, host_keep_alive: 30m, max_concurrency: 1, "
      "max_queue: 64, queue_timeout: 60s}\n"
      "models:\n"
      "  whisper:\n"
      "    cmd: [python3, serve_whisper.py, --port, \"${PORT}\"]\n"
      "    health: /health\n"
      "    vram: 6GiB\n"
      "    hooks:\n"
      "      offload: {method: POST, path: /offload}\n"
      "      restore: {method: POST, path: /restore}\n"
      "      cleanup: {method: POST, path: /cleanup}\n"
      "  llama:\n"
      "    cmd: [llama-server, -m, /models/llama.gguf, --port, \"${PORT}\"]\n"
      "    files: [/models/llama.gguf]\n"
      "    aliases: [gpt-4o-mini]\n"
      "    keep_alive: 30m\n";
  mbd_config *cfg = parse_ok(yaml);

  (void)state;
  assert_int_equal(cfg->n_models, 2);
  assert_int_equal(cfg->n_api_keys, 1);
  assert_string_equal(cfg->api_keys[0], "from-env");
  assert_ptr_equal(mbd_config_find_model(cfg, "gpt-4o-mini"), &cfg->models[1]);
  assert_ptr_equal(mbd_config_find_model(cfg, "whisper"), &cfg->models[0]);
  assert_null(mbd_config_find_model(cfg, "nope"));
  assert_null(mbd_config_find_model(cfg, NULL));
  mbd_config_free(cfg);
}

/* ------------------------------------------------------------------------ */
/* Errors                                                                    */

static void test_unknown_key(void **state) {
  mbd_diag diag;

  (void)state;
  parse_bad("models:\n"
            "  whisper:\n"
            "    cmd: [x]\n"
            "    health: /h\n"
            "    vramm: 6GiB\n",
            &diag);
  assert_int_equal(diag.n, 1);
  assert_string_equal(diag.msgs[0],
                      "t.yaml:5:5: models.whisper.vramm: unknown key (did you mean 'vram'?)");
  mbd_diag_free(&diag);

  parse_bad("listne: 1.2.3.4:5\nzzzzzz: 1\ndefaults: {keepalive: 1s}\n", &diag);
  assert_int_equal(diag.n, 3);
  assert_string_equal(diag.msgs[0], "t.yaml:1:1: listne: unknown key (did you mean 'listen'?)");
  assert_string_equal(diag.msgs[1], "t.yaml:2:1: zzzzzz: unknown key");
  assert_string_equal(diag.msgs[2], "t.yaml:3:12: defaults.keepalive: unknown key (did you mean "
                                    "'keep_alive'?)");
  mbd_diag_free(&diag);
}

static void test_many_errors(void **state) {
  static const char yaml[] =
      "listen: nowhere\n"                          /* 1 */
      "eviction: fifo\n"                           /* 2 */
      "defaults:\n"                                /* 3 */
      "  keep_alive: 5x\n"                         /* 4 */
      "  max_concurrency: 0\n"                     /* 5 */
      "  max_queue: -1\n"                          /* 6 */
      "  offload: maybe\n"                         /* 7 */
      "host_memory: -1GiB\n"                       /* 8 */
      "models:\n"                                  /* 9 */
      "  a:\n"                                     /* 10 */
      "    cmd: [x]\n"                             /* 11 */
      "    vram: lots\n"                           /* 12 */
      "    queue_timeout: -3s\n"                   /* 13 */
      "    start_timeout: 0\n"                     /* 14 */
      "    health: health\n"                       /* 15 */
      "    hooks: {offload: {method: FETCH}}\n"    /* 16 */
      "  b//c:\n"                                  /* 17 */
      "    cmd: [y]\n"                             /* 18 */
      "  d:\n"                                     /* 19 */
      "    env: {A: \"${NOPE}\"}\n";               /* 20 */
  mbd_diag diag;

  (void)state;
  parse_bad(yaml, &diag);
  assert_diag_has(&diag, "t.yaml:1:9: listen: bad listen address 'nowhere'");
  assert_diag_has(&diag, "t.yaml:2:11: eviction: unknown eviction policy 'fifo'");
  assert_diag_has(&diag, "t.yaml:4:15: defaults.keep_alive: bad duration '5x'");
  assert_diag_has(&diag, "t.yaml:5:20: defaults.max_concurrency: must be at least 1, got 0");
  assert_diag_has(&diag, "t.yaml:6:14: defaults.max_queue: must not be negative");
  assert_diag_has(&diag, "t.yaml:7:12: defaults.offload: expected true or false");
  assert_diag_has(&diag, "t.yaml:8:14: host_memory: negative size");
  assert_diag_has(&diag, "t.yaml:12:11: models.a.vram: bad size 'lots'");
  assert_diag_has(&diag, "t.yaml:13:20: models.a.queue_timeout: negative duration");
  assert_diag_has(&diag, "t.yaml:14:20: models.a.start_timeout: must be more than 0");
  assert_diag_has(&diag, "t.yaml:15:13: models.a.health: must be a path starting with '/'");
  assert_diag_has(&diag, "models.a.hooks.offload.method: unknown HTTP method 'FETCH'");
  assert_diag_has(&diag, "models.a.hooks.offload: a hook needs a path");
  assert_diag_has(&diag, "t.yaml:17:3: models.b//c: bad model name");
  assert_diag_has(&diag, "t.yaml:19:3: models.d: missing cmd");
  assert_diag_has(&diag, "t.yaml:20:14: models.d.env.A: environment variable 'NOPE' is not set");
  assert_int_equal(diag.n, 16);
  /* In file order. */
  for (size_t i = 1; i < diag.n; i++) {
    long l1 = strtol(diag.msgs[i - 1] + 7, NULL, 10), l2 = strtol(diag.msgs[i] + 7, NULL, 10);
    assert_true(l1 <= l2);
  }
  mbd_diag_free(&diag);
}

static void test_wrong_types(void **state) {
  mbd_diag diag;

  (void)state;
  parse_bad("[1, 2]\n", &diag);
  assert_diag_has(&diag, "t.yaml:1:1: the configuration must be a mapping");
  mbd_diag_free(&diag);

  parse_bad("models: [a, b]\n"
            "api_keys: key\n"
            "devices: {gpu: 0}\n"
            "defaults: 5m\n"
            "listen: [a]\n",
            &diag);
  assert_diag_has(&diag, "t.yaml:1:9: models: expected a mapping of model name");
  assert_diag_has(&diag, "t.yaml:2:11: api_keys: expected a list of keys, got a scalar");
  assert_diag_has(&diag, "t.yaml:3:10: devices: expected a list");
  assert_diag_has(&diag, "t.yaml:4:11: defaults: expected a mapping, got a scalar");
  assert_diag_has(&diag, "t.yaml:5:9: listen: expected a single value, got a list");
  mbd_diag_free(&diag);

  parse_bad("models:\n"
            "  a:\n"
            "    cmd: python3 serve.py\n"
            "    aliases: x\n"
            "    env: [A]\n"
            "    files: /x\n"
            "    port: eighty\n"
            "    device: gpu0\n"
            "    priority: 1.5\n"
            "    max_concurrency: 99999999999999\n"
            "  b: [x]\n"
            "  c:\n",
            &diag);
  assert_diag_has(&diag, "t.yaml:3:10: models.a.cmd: must be a list of arguments");
  assert_diag_has(&diag, "t.yaml:4:14: models.a.aliases: expected a list of names");
  assert_diag_has(&diag, "t.yaml:5:10: models.a.env: expected a mapping of NAME: value");
  assert_diag_has(&diag, "t.yaml:6:12: models.a.files: expected a list, got a scalar");
  assert_diag_has(&diag, "t.yaml:7:11: models.a.port: expected an integer, got 'eighty'");
  assert_diag_has(&diag, "t.yaml:8:13: models.a.device: expected a GPU number or auto");
  assert_diag_has(&diag, "t.yaml:9:15: models.a.priority: expected an integer, got '1.5'");
  assert_diag_has(&diag, "models.a.max_concurrency: must be at most 100000");
  assert_diag_has(&diag, "t.yaml:11:6: models.b: expected a mapping, got a list");
  assert_diag_has(&diag, "t.yaml:12:3: models.c: missing settings");
  assert_false(diag_has(&diag, "models.a: missing cmd")); /* a bad cmd is not also missing */
  mbd_diag_free(&diag);
}

static void test_duplicates(void **state) {
  mbd_diag diag;

  (void)state;
  parse_bad("models:\n"
            "  a: {cmd: [x], aliases: [one, two, one]}\n"
            "  b: {cmd: [y], aliases: [two, a, b]}\n"
            "  a: {cmd: [z]}\n"
            "  c: {cmd: [w], aliases: [d]}\n"
            "  d: {cmd: [v]}\n",
            &diag);
  assert_diag_has(&diag, "t.yaml:2:37: models.a.aliases[2]: duplicate alias 'one'");
  assert_diag_has(&diag, "t.yaml:3:27: models.b.aliases[0]: duplicate alias 'two' (already an "
                         "alias of model 'a')");
  assert_diag_has(&diag, "models.b.aliases[1]: alias 'a' is the name of model 'a'");
  assert_diag_has(&diag, "models.b.aliases[2]: alias 'b' is the name of model 'b'");
  assert_diag_has(&diag, "t.yaml:4:3: models.a: duplicate model name (first at line 2)");
  assert_diag_has(&diag, "t.yaml:5:27: models.c.aliases[0]: alias 'd' is the name of model 'd'");
  assert_int_equal(diag.n, 6);
  mbd_diag_free(&diag);

  parse_bad("listen: a:8686\nlisten: b:2\nmodels:\n  m: {cmd: [x], cmd: [y], port: 9000}\n"
            "  n: {cmd: [x], port: 9000}\n  o: {cmd: [x], port: 8686}\n",
            &diag);
  assert_diag_has(&diag, "t.yaml:2:1: listen: duplicate key (first at line 1)");
  assert_diag_has(&diag, "t.yaml:4:17: models.m.cmd: duplicate key");
  assert_diag_has(&diag, "t.yaml:5:3: models.n: port 9000 is also the port of model 'm'");
  assert_diag_has(&diag, "t.yaml:6:3: models.o: port 8686 is the daemon's own listen port");
  mbd_diag_free(&diag);
}

static void test_model_names(void **state) {
  char yaml[512];
  char name65[66];
  mbd_config *cfg;
  mbd_diag diag;

  (void)state;
  cfg = parse_ok("models:\n  \"Llama-3.1:8b_q4\": {cmd: [x]}\n  a.b: {cmd: [x]}\n");
  assert_string_equal(cfg->models[0].name, "Llama-3.1:8b_q4");
  mbd_config_free(cfg);

  memset(name65, 'n', 65);
  name65[65] = '\0';
  snprintf(yaml, sizeof(yaml), "models:\n  %.64s: {cmd: [x]}\n", name65);
  cfg = parse_ok(yaml);
  mbd_config_free(cfg);
  snprintf(yaml, sizeof(yaml), "models:\n  %s: {cmd: [x]}\n", name65);
  parse_bad(yaml, &diag);
  assert_diag_has(&diag, "bad model name");
  mbd_diag_free(&diag);

  parse_bad("models:\n  \"..\": {cmd: [x]}\n  \"\": {cmd: [x]}\n  \"a b\": {cmd: [x]}\n"
            "  \"é\": {cmd: [x]}\n  x: {cmd: [x], aliases: [\"../etc\"]}\n",
            &diag);
  assert_int_equal(diag.n, 5);
  mbd_diag_free(&diag);
}

/* Names as Hugging Face and vLLM clients send them: "org/model". */
static void test_names_with_slash(void **state) {
  mbd_config *cfg;
  mbd_diag diag;

  (void)state;
  cfg = parse_ok("models:\n  Qwen/Qwen2.5-7B-Instruct:\n    cmd: [x]\n"
                 "    aliases: [meta-llama/Llama-3.1-8B, gpt-4o-mini]\n");
  assert_string_equal(cfg->models[0].name, "Qwen/Qwen2.5-7B-Instruct");
  assert_string_equal(cfg->models[0].aliases[0], "meta-llama/Llama-3.1-8B");
  assert_non_null(mbd_config_find_model(cfg, "meta-llama/Llama-3.1-8B"));
  mbd_config_free(cfg);

  static const char *const good[] = {"a/b", "org/model.v2", "a/b/c", "a:1/b_2", "x/...a",
                                     "..a/b"};
  static const char *const bad[] = {"/a",   "a/",  "a//b",  "a/../b", "a/./b", "./a",
                                    "a/..", "..",  "/",     "a b/c",  "a/b%2F", ""};
  for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
    assert_true(mbd_model_name_valid(good[i]));
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    if (mbd_model_name_valid(bad[i]))
      fail_msg("'%s' passed as a name", bad[i]);
  }
  parse_bad("models:\n  \"a/../b\": {cmd: [x]}\n  c: {cmd: [x], aliases: [\"x//y\"]}\n", &diag);
  assert_diag_has(&diag, "models.a/../b: bad model name");
  assert_diag_has(&diag, "models.c.aliases[0]: bad alias 'x//y'");
  mbd_diag_free(&diag);
}

/* preload, cleanup, openai, compat. */
static void test_python_api_keys(void **state) {
  mbd_config *cfg;
  mbd_diag diag;

  (void)state;
  cfg = parse_ok("compat: {model: gpt}\n"
                 "models:\n"
                 "  a: {cmd: [x], preload: true, priority: 5, cleanup: after_request,\n"
                 "      hooks: {cleanup: {path: /cleanup}}}\n"
                 "  b: {cmd: [x], aliases: [gpt]}\n"
                 "  c: {cmd: [x], openai: true, cleanup: manual}\n"
                 "  d: {cmd: [x], aliases: [e], openai: false}\n");
  assert_string_equal(cfg->compat_model, "gpt");
  assert_int_equal(cfg->models[0].preload, 1);
  assert_int_equal(cfg->models[0].cleanup, MBD_CLEANUP_AFTER_REQUEST);
  assert_int_equal(cfg->models[0].openai, 0); /* no aliases, not asked */
  assert_int_equal(cfg->models[1].preload, 0);
  assert_int_equal(cfg->models[1].cleanup, MBD_CLEANUP_MANUAL);
  assert_int_equal(cfg->models[1].openai, 1); /* an alias: it speaks OpenAI */
  assert_int_equal(cfg->models[2].openai, 1);
  assert_int_equal(cfg->models[3].openai, 0);
  mbd_config_free(cfg);

  parse_bad("compat: {model: nope, other: 1}\n"
            "models:\n"
            "  a: {cmd: [x], cleanup: after_request}\n"
            "  t: {backend: tensors, files: [/x.gguf], cleanup: after_request}\n"
            "  u: {cmd: [x], cleanup: always, preload: maybe, openai: 2}\n",
            &diag);
  assert_diag_has(&diag, "t.yaml:1:17: compat.model: no model or alias is called 'nope'");
  assert_diag_has(&diag, "compat.other: unknown key");
  assert_diag_has(&diag, "models.a: cleanup: after_request needs hooks.cleanup");
  assert_diag_has(&diag, "models.t: cleanup: after_request is only for backend process");
  assert_diag_has(&diag, "models.u.cleanup: unknown cleanup 'always' (manual or after_request)");
  assert_diag_has(&diag, "models.u.preload: expected true or false");
  assert_diag_has(&diag, "models.u.openai: expected true or false");
  mbd_diag_free(&diag);
}

static void test_env_errors_in_config(void **state) {
  mbd_config *cfg;
  mbd_diag diag;

  (void)state;
  parse_bad("api_keys: [\"${UNSET_KEY}\"]\nlisten: \"${UNSET_LISTEN}\"\n"
            "models:\n  m:\n    cmd: [x, \"${UNSET_ARG}\"]\n    health: \"/${PORT:-1}\"\n",
            &diag);
  assert_diag_has(&diag, "t.yaml:1:12: api_keys[0]: environment variable 'UNSET_KEY' is not set");
  assert_diag_has(&diag, "t.yaml:2:9: listen: environment variable 'UNSET_LISTEN' is not set");
  assert_diag_has(&diag, "t.yaml:5:14: models.m.cmd[1]: environment variable 'UNSET_ARG'");
  assert_diag_has(&diag, "models.m.health: reserved variable ${PORT} takes no default");
  mbd_diag_free(&diag);

  /* Reserved variables only where a worker starts. */
  parse_bad("listen: \"127.0.0.1:${PORT}\"\nmodels:\n  m: {cmd: [x], plugin: \"${MODEL}\"}\n",
            &diag);
  assert_diag_has(&diag, "listen: ${PORT} is reserved for worker start");
  assert_diag_has(&diag, "models.m.plugin: ${MODEL} is reserved");
  mbd_diag_free(&diag);

  /* Reserved kept verbatim in every worker field; environment used everywhere. */
  cfg = parse_ok("listen: \"${MODELBUF_LISTEN}\"\n"
                 "defaults: {max_queue: \"${MAXQ}\", keep_alive: \"${NOT_SET:-2m}\"}\n"
                 "models:\n"
                 "  m:\n"
                 "    cmd: [\"${MODEL}\", \"--port=${PORT}\", \"--gpu=${GPU}\", \"$$PORT\"]\n"
                 "    cwd: /srv/${MODEL}\n"
                 "    health: /health/${MODEL}\n"
                 "    env: {P: \"${PORT}\"}\n"
                 "    hooks: {offload: {path: \"/off/${MODEL}\"}}\n"
                 "    probe: {path: /p, body: \"${MODEL}\"}\n");
  assert_int_equal(cfg->listen.port, 9000);
  assert_int_equal(cfg->defaults.max_queue, 7);
  assert_int_equal(cfg->defaults.keep_alive_ms, 120000);
  assert_string_equal(cfg->models[0].cmd[0], "${MODEL}");
  assert_string_equal(cfg->models[0].cmd[1], "--port=${PORT}");
  assert_string_equal(cfg->models[0].cmd[2], "--gpu=${GPU}");
  assert_string_equal(cfg->models[0].cmd[3], "$$PORT"); /* escape kept for worker start */
  assert_string_equal(cfg->models[0].cwd, "/srv/${MODEL}");
  assert_string_equal(cfg->models[0].health, "/health/${MODEL}");
  assert_string_equal(cfg->models[0].env[0].value, "${PORT}");
  assert_string_equal(cfg->models[0].hook_offload.path, "/off/${MODEL}");
  assert_string_equal(cfg->models[0].probe.body, "${MODEL}");
  mbd_config_free(cfg);
}

static void test_bad_yaml(void **state) {
  mbd_diag diag;
  mbd_config *cfg = NULL;

  (void)state;
  parse_bad("listen: 1.2.3.4:5\nmodels:\n  a:\n    cmd: [x\n  b:\n    cmd: [y]\n", &diag);
  assert_int_equal(diag.n, 1);
  assert_non_null(strstr(diag.msgs[0], "YAML syntax error"));
  assert_non_null(strstr(diag.msgs[0], "starts at line 4"));
  assert_int_equal(strncmp(diag.msgs[0], "t.yaml:", 7), 0);
  mbd_diag_free(&diag);

  parse_bad("a: 1\n b: 2\n", &diag);
  assert_int_equal(strncmp(diag.msgs[0], "t.yaml:2:", 9), 0);
  mbd_diag_free(&diag);

  parse_bad("models:\n\tm: {}\n", &diag); /* tabs are not indentation */
  assert_int_equal(strncmp(diag.msgs[0], "t.yaml:2:", 9), 0);
  mbd_diag_free(&diag);

  parse_bad("a: 1\n---\nb: 2\n", &diag);
  assert_diag_has(&diag, "t.yaml:2:1: only one YAML document");
  mbd_diag_free(&diag);

  parse_bad("? [a, b]\n: 1\n", &diag);
  assert_diag_has(&diag, "mapping keys must be plain scalars");
  mbd_diag_free(&diag);

  parse_bad("listen: \"a\\0b\"\n", &diag);
  assert_diag_has(&diag, "NUL character");
  mbd_diag_free(&diag);

  /* Binary garbage fails cleanly. */
  mbd_diag_init(&diag);
  assert_int_equal(mbd_config_parse("\xff\xfe\x00\x01", 4, "t.yaml", &fake_env, &cfg, &diag),
                   MB_EINVAL);
  assert_null(cfg);
  mbd_diag_free(&diag);
}

/* A billion laughs: every level holds nine aliases of the one before. */
static void test_yaml_billion_laughs(void **state) {
  static const char laughs[] =
      "a: &a [\"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\"]\n"
      "b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
      "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
      "d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
      "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\n"
      "f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n"
      "g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\n"
      "h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]\n"
      "i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]\n";
  /* The same through merge keys: each level merges nine copies. */
  static const char merges[] =
      "x-a: &a {k1: 1, k2: 2, k3: 3, k4: 4, k5: 5, k6: 6, k7: 7, k8: 8, k9: 9}\n"
      "x-b: &b {a1: *a, a2: *a, a3: *a, a4: *a, a5: *a, a6: *a, a7: *a, a8: *a, a9: *a}\n"
      "x-c: &c {b1: *b, b2: *b, b3: *b, b4: *b, b5: *b, b6: *b, b7: *b, b8: *b, b9: *b}\n"
      "x-d: &d {c1: *c, c2: *c, c3: *c, c4: *c, c5: *c, c6: *c, c7: *c, c8: *c, c9: *c}\n"
      "x-e: &e {d1: *d, d2: *d, d3: *d, d4: *d, d5: *d, d6: *d, d7: *d, d8: *d, d9: *d}\n"
      "x-f: &f {<<: [*e, *e, *e, *e], e1: *e, e2: *e, e3: *e, e4: *e, e5: *e}\n";
  mbd_diag diag;

  (void)state;
  parse_bad(laughs, &diag);
  assert_int_equal(diag.n, 1);
  assert_diag_has(&diag, "aliases expand to more than 100000 nodes");
  assert_diag_has(&diag, "billion laughs");
  mbd_diag_free(&diag);

  parse_bad(merges, &diag);
  assert_int_equal(diag.n, 1);
  assert_diag_has(&diag, "aliases expand to more than");
  mbd_diag_free(&diag);
}

static void test_yaml_anchors_and_merges(void **state) {
  mbd_config *cfg;
  const mbd_model_config *a, *b, *c, *d;

  (void)state;
  cfg = parse_ok("x-base: &base\n"
                 "  cmd: [/bin/worker, --port, \"${PORT}\"]\n"
                 "  keep_alive: 1m\n"
                 "  max_queue: 3\n"
                 "x-gpu: &gpu {pinned: true, max_queue: 9, priority: 1}\n"
                 "defaults:\n"
                 "  host_keep_alive: &hka 90s\n"
                 "  queue_timeout: *hka\n"
                 "models:\n"
                 "  a:\n"
                 "    keep_alive: 2m\n" /* its own key wins, before or after << */
                 "    <<: *base\n"
                 "  b:\n"
                 "    <<: [*gpu, *base]\n" /* earlier mappings win: max_queue 9 */
                 "    priority: 3\n"
                 "  c: *base\n"
                 "  d:\n"
                 "    <<: {cmd: [/bin/other], aliases: [dee]}\n"
                 "    <<: *base\n" /* a second merge key: cmd was merged already */
                 "    device: auto\n");
  assert_int_equal(cfg->n_models, 4);
  a = mbd_config_find_model(cfg, "a");
  b = mbd_config_find_model(cfg, "b");
  c = mbd_config_find_model(cfg, "c");
  d = mbd_config_find_model(cfg, "dee");
  assert_non_null(a);
  assert_non_null(b);
  assert_non_null(c);
  assert_non_null(d);
  assert_int_equal(a->tuning.keep_alive_ms, 120000);
  assert_int_equal(a->tuning.max_queue, 3);
  assert_int_equal(a->n_cmd, 3);
  assert_string_equal(a->cmd[2], "${PORT}");
  assert_int_equal(b->pinned, 1);
  assert_int_equal(b->priority, 3);
  assert_int_equal(b->tuning.max_queue, 9);
  assert_int_equal(b->tuning.keep_alive_ms, 60000);
  assert_string_equal(b->cmd[0], "/bin/worker");
  assert_int_equal(c->tuning.max_queue, 3);
  assert_string_equal(d->name, "d");
  assert_int_equal(d->n_cmd, 1);
  assert_string_equal(d->cmd[0], "/bin/other");
  assert_int_equal(d->tuning.max_queue, 3);
  assert_int_equal(cfg->defaults.host_keep_alive_ms, 90000);
  assert_int_equal(cfg->defaults.queue_timeout_ms, 90000);
  mbd_config_free(cfg);

  /* An anchor inside a merged pair that the mapping overrides, or inside
   * the merge key's own value, stays usable by later aliases. */
  cfg = parse_ok("defaults:\n"
                 "  max_queue: 4\n"
                 "  <<: {max_queue: &q 5, keep_alive: &k 7s}\n"
                 "models:\n"
                 "  m: {cmd: [x], max_queue: *q, stop_timeout: *k}\n");
  assert_int_equal(cfg->defaults.max_queue, 4);
  assert_int_equal(cfg->defaults.keep_alive_ms, 7000);
  assert_int_equal(cfg->models[0].tuning.max_queue, 5);
  assert_int_equal(cfg->models[0].tuning.stop_timeout_ms, 7000);
  mbd_config_free(cfg);

  /* A whole models mapping merged, with a model of its own after it. */
  cfg = parse_ok("x-fleet: &fleet\n"
                 "  one: {cmd: [a]}\n"
                 "  two: {cmd: [b]}\n"
                 "models: {<<: *fleet, three: {cmd: [c]}}\n");
  assert_int_equal(cfg->n_models, 3);
  assert_string_equal(cfg->models[0].name, "one");
  assert_string_equal(cfg->models[2].name, "three");
  mbd_config_free(cfg);

  /* An alias of a scalar as a key; "<<" quoted is an ordinary (unknown) key. */
  cfg = parse_ok("defaults: {&k max_queue: 2}\nmodels: {m: {cmd: [x], *k : 6}}\n");
  assert_int_equal(cfg->models[0].tuning.max_queue, 6);
  mbd_config_free(cfg);
}

static void test_yaml_alias_errors(void **state) {
  char deep[1024];
  size_t off = 0;
  mbd_diag diag;

  (void)state;
  parse_bad("models:\n  a: *nothing\n", &diag);
  assert_int_equal(diag.n, 1);
  assert_diag_has(&diag, "t.yaml:2:6: unknown alias *nothing");
  mbd_diag_free(&diag);

  /* An alias inside its own anchor's node. */
  parse_bad("a: &a [1, *a]\n", &diag);
  assert_diag_has(&diag, "unknown alias *a");
  mbd_diag_free(&diag);

  parse_bad("defaults:\n  <<: 3\n", &diag);
  assert_diag_has(&diag, "t.yaml:2:7: the merge key '<<' takes a mapping or a list of mappings");
  assert_diag_has(&diag, "got a scalar");
  mbd_diag_free(&diag);

  parse_bad("x-a: &a {max_queue: 1}\ndefaults:\n  <<: [*a, [1]]\n", &diag);
  assert_diag_has(&diag, "got a list");
  mbd_diag_free(&diag);

  parse_bad("x-a: &a [1]\nmodels: {m: {cmd: [x], *a : 1}}\n", &diag);
  assert_diag_has(&diag, "mapping keys must be plain scalars");
  mbd_diag_free(&diag);

  /* "<<" quoted is a key like any other. */
  parse_bad("defaults: {\"<<\": {max_queue: 1}}\n", &diag);
  assert_diag_has(&diag, "defaults.<<: unknown key");
  mbd_diag_free(&diag);

  /* x- keys hold anchors at the top level only. */
  parse_bad("models:\n  m:\n    cmd: [x]\n    x-note: 1\n", &diag);
  assert_diag_has(&diag, "models.m.x-note: unknown key");
  mbd_diag_free(&diag);

  /* Nesting through an alias counts as much as nesting written out. */
  off += (size_t)snprintf(deep + off, sizeof(deep) - off, "x-deep: &d ");
  for (int i = 0; i < 20; i++)
    deep[off++] = '[';
  for (int i = 0; i < 20; i++)
    deep[off++] = ']';
  off += (size_t)snprintf(deep + off, sizeof(deep) - off, "\nx-use: ");
  for (int i = 0; i < 15; i++)
    deep[off++] = '[';
  off += (size_t)snprintf(deep + off, sizeof(deep) - off, "*d");
  for (int i = 0; i < 15; i++)
    deep[off++] = ']';
  deep[off++] = '\n';
  deep[off] = '\0';
  parse_bad(deep, &diag);
  assert_diag_has(&diag, "nesting deeper than 32 levels (with alias *d)");
  mbd_diag_free(&diag);

  off = (size_t)snprintf(deep, sizeof(deep), "x: ");
  for (int i = 0; i < 100; i++)
    deep[off++] = '[';
  for (int i = 0; i < 100; i++)
    deep[off++] = ']';
  deep[off++] = '\n';
  deep[off] = '\0';
  parse_bad(deep, &diag);
  assert_diag_has(&diag, "nesting deeper than");
  mbd_diag_free(&diag);
}

/* Anchors and merges change nothing about the rest: every error is still
 * reported, each under the key path where the walker met it. */
static void test_yaml_merges_keep_every_error(void **state) {
  mbd_diag diag;

  (void)state;
  parse_bad("x-base: &base\n"           /* 1 */
            "  cmd: [x]\n"              /* 2 */
            "  keep_alive: 5 m\n"       /* 3: an error in every model that merges it */
            "models:\n"                 /* 4 */
            "  a:\n"                    /* 5 */
            "    <<: *base\n"           /* 6 */
            "    vramm: 1GiB\n"         /* 7 */
            "  b:\n"                    /* 8 */
            "    <<: *base\n"           /* 9 */
            "    max_concurrency: 0\n"  /* 10 */
            "eviction: fifo\n",         /* 11 */
            &diag);
  assert_int_equal(diag.n, 5);
  assert_diag_has(&diag, "t.yaml:3:15: models.a.keep_alive: bad duration '5 m'");
  assert_diag_has(&diag, "t.yaml:3:15: models.b.keep_alive: bad duration '5 m'");
  assert_diag_has(&diag, "t.yaml:7:5: models.a.vramm: unknown key (did you mean 'vram'?)");
  assert_diag_has(&diag, "t.yaml:10:22: models.b.max_concurrency: must be at least 1");
  assert_diag_has(&diag, "t.yaml:11:11: eviction: unknown eviction policy 'fifo'");
  mbd_diag_free(&diag);
}

/* Unknown keys: names from other tools, keys in the wrong place, typos of
 * keys here or elsewhere. */
static void test_unknown_key_hints(void **state) {
  static const struct {
    const char *yaml, *want;
  } cases[] = {
      {"models: {m: {cmd: [x], ttl: 60}}",
       "models.m.ttl: unknown key (did you mean 'keep_alive'? llama-swap's ttl"},
      {"defaults: {ttl: 60}", "defaults.ttl: unknown key (did you mean 'keep_alive'?"},
      {"ttl: 60", "ttl: unknown key (did you mean defaults: {keep_alive: ...}?"},
      {"models: {m: {command: x}}", "models.m.command: unknown key (did you mean 'cmd'?"},
      {"models: {m: {cmd: [x], proxy: 'http://127.0.0.1:9000'}}",
       "models.m.proxy: unknown key (not needed: modelbufd proxies to the worker itself"},
      {"models: {m: {cmd: [x], checkEndpoint: /h}}",
       "models.m.checkEndpoint: unknown key (did you mean 'health'?"},
      {"models: {m: {cmd: [x], check-endpoint: /h}}",
       "models.m.check-endpoint: unknown key (did you mean 'health'?"},
      {"models: {m: {cmd: [x], concurrencyLimit: 2}}",
       "unknown key (did you mean 'max_concurrency'?"},
      {"models: {m: {cmd: [x], unlisted: true}}", "(did you mean openai: false?"},
      {"models: {m: {cmd: [x], gpu: 1}}", "models.m.gpu: unknown key (did you mean 'device'?"},
      {"models: {m: {cmd: [x], timeout: 1s}}", "(which one: queue_timeout"},
      {"host: 0.0.0.0", "host: unknown key (did you mean 'listen'?"},
      {"macros: {a: b}", "macros: unknown key (no macros here"},
      {"groups: {}", "groups: unknown key (no groups"},
      {"healthCheckTimeout: 60", "(did you mean 'start_timeout'?"},
      {"models: {m: {cmd: [x], max_loaded: 2}}",
       "models.m.max_loaded: unknown key ('max_loaded' is a key of each devices entry, not of a "
       "model)"},
      {"defaults: {cmd: [x]}", "defaults.cmd: unknown key ('cmd' is a key of a model, not of "
                               "defaults)"},
      {"devices: [{gpu: 0, keep_alive: 1m}]",
       "devices[0].keep_alive: unknown key ('keep_alive' is a key of defaults and of a model, not "
       "of each devices entry)"},
      {"models: {m: {cmd: [x], budgt: 1GiB}}",
       "models.m.budgt: unknown key (did you mean 'budget', a key of each devices entry?)"},
      {"models: {m: {cmd: [x], keep_alve: 1m}}", "(did you mean 'keep_alive'?)"},
      {"models: {m: {cmd: [x], dashboard: false}}",
       "models.m.dashboard: unknown key ('dashboard' is a key of the top level, not of a model)"},
      {"preload: true", "preload: unknown key ('preload' is a key of a model, not of the top "
                        "level)"},
      {"models: {m: {cmd: [x], cleanp: after_request}}", "(did you mean 'cleanup'?)"},
      {"compat: {modle: m}", "compat.modle: unknown key (did you mean 'model'?)"},
      {"openia_routes: [/x]", "(did you mean 'openai_routes'?)"},
      {"web_ui: false", "web_ui: unknown key (did you mean 'dashboard'?"},
      {"models: {m: {cmd: [x], qqqqqqq: 1}}", "models.m.qqqqqqq: unknown key\n"},
  };
  (void)state;
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    mbd_diag diag;
    char text[256], want[256];
    snprintf(text, sizeof(text), "%s\n", cases[i].yaml);
    parse_bad(text, &diag);
    snprintf(want, sizeof(want), "%s", cases[i].want);
    if (want[strlen(want) - 1] == '\n') { /* the whole message's end: no hint */
      want[strlen(want) - 1] = '\0';
      size_t n = strlen(diag.msgs[0]), w = strlen(want);
      if (n < w || strcmp(diag.msgs[0] + n - w, want) != 0)
        fail_msg("'%s': got '%s'", cases[i].yaml, diag.msgs[0]);
    } else {
      assert_diag_has(&diag, want);
    }
    mbd_diag_free(&diag);
  }
}

static void test_unit_slips(void **state) {
  static const struct {
    const char *in, *want;
  } durs[] = {
      {"5 m", "no space between a number and its unit (write '5m')"},
      {"2 hours", "no space between a number and its unit (write '2h')"},
      {"1h 30m", "no spaces inside a duration (write '1h30m')"},
      {"1,5h", "a fraction takes '.', not ',' (write '1.5h')"},
      {"5min", "write '5m' (units are ms, s, m, h and d, in lower case)"},
      {"10S", "write '10s'"},
      {"3 Days", "(write '3d')"},
      {"250msec", "write '250ms'"},
      {"5x", "unknown unit 'x'"},
  };
  char err[200];
  int64_t ms;
  uint64_t b;

  (void)state;
  for (size_t i = 0; i < sizeof(durs) / sizeof(durs[0]); i++) {
    assert_int_equal(mbd_parse_duration_ms(durs[i].in, 0, &ms, err, sizeof(err)), MB_EINVAL);
    if (strstr(err, durs[i].want) == NULL)
      fail_msg("'%s': got '%s'", durs[i].in, err);
  }
  assert_int_equal(mbd_parse_size("1,5GiB", &b, err, sizeof(err)), MB_EINVAL);
  assert_non_null(strstr(err, "(write '1.5GiB')"));
  assert_int_equal(mbd_parse_size("6 GiB", &b, err, sizeof(err)), 0); /* a space is fine here */
  assert_int_equal(b, 6ULL << 30);
}

/* The JSON Schema names every table and every key the parser takes. */
static void test_schema(void **state) {
  static const char *const keys[] = {
      "\"listen\"", "\"models\"", "\"keep_alive\"", "\"crash_window\"", "\"max_parallel_loads\"",
      "\"body_buffer_size\"", "\"chunk_size\"", "\"cleanup\"", "\"openai\"", "\"^x-\"",
      "\"definitions\"", "\"duration_forever\"", "\"required\": [\"path\"]",
  };
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);

  (void)state;
  assert_non_null(f);
  assert_int_equal(mbd_config_write_schema(f), 0);
  fclose(f);
  for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
    if (strstr(buf, keys[i]) == NULL)
      fail_msg("the schema has no %s", keys[i]);
  assert_true(len > 2 && strcmp(buf + len - 2, "}\n") == 0);
  free(buf);
}

static void test_api_keys(void **state) {
  mbd_config *cfg;

  (void)state;
  cfg = parse_ok("api_keys: [\"\", \"${EMPTY}\", \"${NOT_SET:-}\", ~]\n");
  assert_int_equal(cfg->n_api_keys, 0);
  assert_null(cfg->api_keys);
  mbd_config_free(cfg);

  cfg = parse_ok("api_keys:\n  - one\n  -\n  - \"${API_KEY}\"\n  - one\n");
  assert_int_equal(cfg->n_api_keys, 2);
  assert_string_equal(cfg->api_keys[0], "one");
  assert_string_equal(cfg->api_keys[1], "sekret");
  assert_null(cfg->api_keys[2]);
  mbd_config_free(cfg);
}

static void test_devices(void **state) {
  mbd_diag diag;
  mbd_config *cfg;

  (void)state;
  parse_bad("devices: []\n", &diag);
  assert_diag_has(&diag, "t.yaml:1:10: devices: must list at least one device");
  mbd_diag_free(&diag);

  parse_bad("devices:\n"
            "  - {gpu: 0, host: true}\n"
            "  - {reserve: 1GiB}\n"
            "  - {gpu: 1}\n"
            "  - {gpu: 1}\n"
            "  - {host: true}\n"
            "  - {host: yes}\n"
            "  - {gpu: -1}\n"
            "  - {gpu: 2, max_parallel_loads: 0, reserve: 2GiB, capacity: 1GiB}\n"
            "  - ~\n"
            "  - {gpu: 3, reserv: 1GiB}\n"
            "models:\n"
            "  m: {cmd: [x], device: 7}\n",
            &diag);
  assert_diag_has(&diag, "t.yaml:2:5: devices[0]: a device is either {gpu: N} or {host: true}");
  assert_diag_has(&diag, "t.yaml:3:5: devices[1]: needs gpu: N or host: true");
  assert_diag_has(&diag, "t.yaml:5:5: devices[3]: gpu 1 is listed twice");
  assert_diag_has(&diag, "t.yaml:7:5: devices[5]: the host device is listed twice");
  assert_diag_has(&diag, "devices[6].gpu: must not be negative");
  assert_diag_has(&diag, "devices[7].max_parallel_loads: must be at least 1");
  assert_diag_has(&diag, "t.yaml:10:5: devices[8]: expected {gpu: N, ...}");
  assert_diag_has(&diag, "devices[9].reserv: unknown key (did you mean 'reserve'?)");
  assert_diag_has(&diag, "t.yaml:13:3: models.m: device 7 is not among the configured devices");
  mbd_diag_free(&diag);

  parse_bad("devices: [{gpu: 0, capacity: 1GiB, reserve: 1GiB}]\n", &diag);
  assert_diag_has(&diag, "reserve must be below capacity");
  mbd_diag_free(&diag);

  cfg = parse_ok("devices: [{host: true, capacity: 8GiB, budget: 2GiB}]\n"
                 "models: {m: {cmd: [x]}}\n");
  assert_int_equal(cfg->n_devices, 1);
  assert_int_equal(cfg->devices[0].host, 1);
  mbd_config_free(cfg);
}

static void test_backends(void **state) {
  mbd_diag diag;

  (void)state;
  parse_bad("models:\n"
            "  p: {backend: plugin}\n"
            "  q: {backend: plugin, plugin: /x.so, cmd: [x]}\n"
            "  t: {backend: tensors}\n"
            "  u: {backend: tensors, files: [/a], plugin: /x.so}\n"
            "  v: {cmd: [x], plugin: /x.so}\n"
            "  w: {backend: docker, cmd: [x]}\n"
            "  x: {cmd: []}\n",
            &diag);
  assert_diag_has(&diag, "t.yaml:2:3: models.p: missing plugin");
  assert_diag_has(&diag, "t.yaml:3:3: models.q: cmd is only for backend process");
  assert_diag_has(&diag, "t.yaml:4:3: models.t: missing files");
  assert_diag_has(&diag, "t.yaml:5:3: models.u: plugin is only for backend plugin");
  assert_diag_has(&diag, "t.yaml:6:3: models.v: plugin is only for backend plugin");
  assert_diag_has(&diag, "models.w.backend: unknown backend 'docker'");
  assert_diag_has(&diag, "t.yaml:8:12: models.x.cmd: must not be empty");
  assert_int_equal(diag.n, 7);
  mbd_diag_free(&diag);
}

static void test_listen_parse(void **state) {
  mbd_listen l;
  char err[128];

  (void)state;
  assert_int_equal(mbd_listen_parse("0.0.0.0:80", &l, err, sizeof(err)), 0);
  assert_string_equal(l.host, "0.0.0.0");
  assert_int_equal(l.port, 80);
  mbd_listen_clear(&l);
  assert_int_equal(mbd_listen_parse(":8686", &l, err, sizeof(err)), 0);
  assert_string_equal(l.host, "0.0.0.0");
  mbd_listen_clear(&l);
  assert_int_equal(mbd_listen_parse("localhost:65535", &l, err, sizeof(err)), 0);
  assert_string_equal(l.host, "localhost");
  mbd_listen_clear(&l);
  assert_int_equal(mbd_listen_parse("[fe80::1%eth0]:1", &l, err, sizeof(err)), 0);
  assert_string_equal(l.host, "fe80::1%eth0");
  mbd_listen_clear(&l);
  assert_int_equal(mbd_listen_parse("unix:/run/m.sock", &l, err, sizeof(err)), 0);
  assert_string_equal(l.unix_path, "/run/m.sock");
  assert_null(l.host);
  assert_int_equal(l.port, 0);
  mbd_listen_clear(&l);

  static const char *const bad[] = {"", "host", "host:", "host:0", "host:65536", "host:8x",
                                    "::1:80", "[::1]80", "unix:", "a b:80", "host:-1",
                                    "host: 80"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    if (mbd_listen_parse(bad[i], &l, err, sizeof(err)) != MB_EINVAL)
      fail_msg("'%s' accepted", bad[i]);
    assert_null(l.host);
  }
  char longpath[200];
  memset(longpath, 'p', sizeof(longpath));
  memcpy(longpath, "unix:/", 6);
  longpath[sizeof(longpath) - 1] = '\0';
  assert_int_equal(mbd_listen_parse(longpath, &l, err, sizeof(err)), MB_EINVAL);
}

/* ------------------------------------------------------------------------ */
/* Files, overrides, translation                                             */

static char *write_temp(const char *text) {
  char *path = strdup("/tmp/test_config_XXXXXX");
  int fd;
  assert_non_null(path);
  fd = mkstemp(path);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
  close(fd);
  return path;
}

static void test_load_file(void **state) {
  char *path;
  mbd_config *cfg = NULL;
  mbd_diag diag;
  char want[128];

  (void)state;
  path = write_temp("models:\n  a:\n    cmd: [x]\n    vramm: 1\n");
  mbd_diag_init(&diag);
  assert_int_equal(mbd_config_load_file(path, &fake_env, &cfg, &diag), MB_EINVAL);
  assert_null(cfg);
  assert_int_equal(diag.n, 1);
  snprintf(want, sizeof(want), "%s:4:5: models.a.vramm: unknown key", path);
  assert_int_equal(strncmp(diag.msgs[0], want, strlen(want)), 0);
  mbd_diag_free(&diag);
  unlink(path);
  free(path);

  path = write_temp("eviction: cost\nmodels: {a: {cmd: [x]}}\n");
  mbd_diag_init(&diag);
  assert_int_equal(mbd_config_load_file(path, &fake_env, &cfg, &diag), 0);
  assert_string_equal(cfg->file, path);
  assert_int_equal(cfg->eviction, MB_EVICT_COST);
  mbd_config_free(cfg);
  mbd_diag_free(&diag);
  unlink(path);
  free(path);

  mbd_diag_init(&diag);
  assert_int_equal(mbd_config_load_file("/nonexistent/modelbuf.yaml", &fake_env, &cfg, &diag),
                   MB_EIO);
  assert_null(cfg);
  assert_diag_has(&diag, "/nonexistent/modelbuf.yaml: cannot open: ");
  mbd_diag_free(&diag);
}

static void test_config_path(void **state) {
  (void)state;
  assert_string_equal(mbd_config_path("x.yaml", &fake_env), "x.yaml");
  assert_string_equal(mbd_config_path(NULL, &fake_env), "/etc/modelbuf.yaml");
  assert_string_equal(mbd_config_path("", &fake_env), "/etc/modelbuf.yaml");
  assert_string_equal(mbd_config_path(NULL, &empty_env), "./modelbuf.yaml");
}

static void test_overrides(void **state) {
  static const char yaml[] =
      "listen: 10.0.0.1:1000\n"
      "api_keys: [filekey]\n"
      "defaults: {keep_alive: 1m}\n"
      "models:\n"
      "  a: {cmd: [x]}\n"
      "  b: {cmd: [x], keep_alive: 7s}\n";
  static const char *const flag_keys[] = {"flagkey", "", "filekey"};
  mbd_config *cfg;
  mbd_diag diag;
  mbd_flags flags = {0};

  (void)state;
  /* Environment over the file. */
  cfg = parse_ok(yaml);
  mbd_diag_init(&diag);
  assert_int_equal(mbd_config_apply_overrides(cfg, &fake_env, NULL, &diag), 0);
  assert_string_equal(cfg->listen_str, "0.0.0.0:9000");
  assert_int_equal(cfg->listen.port, 9000);
  assert_int_equal(cfg->n_api_keys, 2);
  assert_string_equal(cfg->api_keys[1], "from-env");
  assert_int_equal(cfg->defaults.keep_alive_ms, 90000); /* GPU_IDLE_TIMEOUT=90 */
  assert_int_equal(cfg->models[0].tuning.keep_alive_ms, 90000);
  assert_int_equal(cfg->models[1].tuning.keep_alive_ms, 7000); /* the model's own wins */
  mbd_config_free(cfg);

  /* Flags over the environment. */
  cfg = parse_ok(yaml);
  flags.listen = "unix:/tmp/m.sock";
  flags.keep_alive = "forever";
  flags.log_level = "warn";
  flags.api_keys = flag_keys;
  flags.n_api_keys = 3;
  assert_int_equal(mbd_config_apply_overrides(cfg, &fake_env, &flags, &diag), 0);
  assert_string_equal(cfg->listen.unix_path, "/tmp/m.sock");
  assert_null(cfg->listen.host);
  assert_int_equal(cfg->defaults.keep_alive_ms, MB_FOREVER);
  assert_int_equal(cfg->models[0].tuning.keep_alive_ms, MB_FOREVER);
  assert_int_equal(cfg->log_level, MBD_LOG_WARN);
  assert_int_equal(cfg->n_api_keys, 3); /* filekey, from-env, flagkey */
  assert_string_equal(cfg->api_keys[2], "flagkey");
  assert_int_equal(diag.n, 0);
  mbd_config_free(cfg);

  /* Nothing set: the file stands. */
  cfg = parse_ok(yaml);
  assert_int_equal(mbd_config_apply_overrides(cfg, &empty_env, NULL, &diag), 0);
  assert_string_equal(cfg->listen_str, "10.0.0.1:1000");
  assert_int_equal(cfg->n_api_keys, 1);
  assert_int_equal(cfg->defaults.keep_alive_ms, 60000);
  mbd_config_free(cfg);

  /* Bad values are reported, named, and leave the value below. */
  {
    static const char *const bad_vars[] = {"MODELBUF_LISTEN", "nope", "GPU_IDLE_TIMEOUT", "soon",
                                           "MODELBUF_API_KEY", "", NULL};
    mbd_env bad_env = {fake_get, (void *)bad_vars};
    mbd_flags bad_flags = {0};
    bad_flags.log_level = "loud";
    bad_flags.keep_alive = "-3";
    cfg = parse_ok(yaml);
    assert_int_equal(mbd_config_apply_overrides(cfg, &bad_env, &bad_flags, &diag), MB_EINVAL);
    assert_diag_has(&diag, "MODELBUF_LISTEN: bad listen address 'nope'");
    assert_diag_has(&diag, "GPU_IDLE_TIMEOUT: bad duration 'soon'");
    assert_diag_has(&diag, "--log-level: unknown log level 'loud'");
    assert_diag_has(&diag, "--keep-alive: negative duration");
    assert_int_equal(diag.n, 4);
    assert_string_equal(cfg->listen_str, "10.0.0.1:1000");
    assert_int_equal(cfg->defaults.keep_alive_ms, 60000);
    assert_int_equal(cfg->n_api_keys, 1); /* an empty MODELBUF_API_KEY adds nothing */
    mbd_config_free(cfg);
  }
  mbd_diag_free(&diag);
}

static void test_core_opts(void **state) {
  mbd_config *cfg;
  mb_model_opts mo;
  mb_device_opts dopts;
  mb_ctx_opts co;
  char err[256];

  (void)state;
  cfg = parse_ok(every_key_yaml);
  memset(&co, 0, sizeof(co));
  mbd_config_ctx_opts(cfg, &co);
  assert_int_equal(co.eviction, MB_EVICT_COST);
  assert_true(co.host_budget_bytes == 32ULL << 30);
  assert_int_equal(co.keep_alive_ms, 600000);

  assert_int_equal(mbd_config_device_opts(cfg, 0, &dopts), 0);
  assert_int_equal(dopts.kind, MB_DEVICE_CUDA);
  assert_int_equal(dopts.ordinal, 1);
  assert_true(dopts.capacity_bytes == 24ULL << 30);
  assert_true(dopts.reserve_bytes == 1ULL << 30);
  assert_true(dopts.budget_bytes == 20ULL << 30);
  assert_int_equal(dopts.max_loaded, 3);
  assert_int_equal(dopts.max_parallel_loads, 2);
  assert_int_equal(dopts.concurrency, 2);
  assert_int_equal(mbd_config_device_opts(cfg, 2, &dopts), 0);
  assert_int_equal(dopts.kind, MB_DEVICE_HOST);
  assert_int_equal(mbd_config_device_opts(cfg, 3, &dopts), MB_EINVAL);

  /* whisper: device 1 is the first listed device, index 0. */
  assert_int_equal(mbd_config_model_opts(cfg, &cfg->models[0], &mo, err, sizeof(err)), 0);
  assert_int_equal(mo.device, 0);
  assert_int_equal(mo.keep_alive_ms, 0);
  assert_int_equal(mo.offload, 1);
  assert_int_equal(mo.host_keep_alive_ms, 3600000);
  assert_true(mo.footprint_bytes == 6ULL << 30);
  assert_int_equal(mo.pinned, 1);
  assert_int_equal(mo.priority, -3);
  assert_int_equal(mo.max_concurrency, 4);
  assert_int_equal(mo.max_queue, 7);
  assert_int_equal(mo.queue_timeout_ms, 250);
  assert_int_equal(mo.restore_any_device, 0); /* a worker process goes back */
  /* plug: auto, and the defaults' forever values pass through. */
  assert_int_equal(mbd_config_model_opts(cfg, &cfg->models[1], &mo, err, sizeof(err)), 0);
  assert_int_equal(mo.device, MB_DEVICE_AUTO);
  assert_int_equal(mo.host_keep_alive_ms, MB_FOREVER);
  assert_int_equal(mo.queue_timeout_ms, MB_FOREVER);
  assert_int_equal(mo.offload, 0);
  assert_int_equal(mo.restore_any_device, 0); /* a plugin's restore is its own */
  /* weights: gpu 0 is the second listed device. */
  assert_int_equal(mbd_config_model_opts(cfg, &cfg->models[2], &mo, err, sizeof(err)), 0);
  assert_int_equal(mo.device, 1);
  assert_int_equal(mo.restore_any_device, 1); /* the tensor engine can (used with auto) */
  mbd_config_free(cfg);

  /* Devices omitted: the ordinal is the index; device_opts refuses. */
  cfg = parse_ok("models: {m: {cmd: [x], device: 2}}\n");
  assert_int_equal(mbd_config_model_opts(cfg, &cfg->models[0], &mo, err, sizeof(err)), 0);
  assert_int_equal(mo.device, 2);
  assert_int_equal(mbd_config_device_opts(cfg, 0, &dopts), MB_EINVAL);
  /* A model edited to name a device the list lacks. */
  mbd_config_free(cfg);
  cfg = parse_ok("devices: [{host: true}]\nmodels: {m: {cmd: [x]}}\n");
  cfg->models[0].device = 3;
  assert_int_equal(mbd_config_model_opts(cfg, &cfg->models[0], &mo, err, sizeof(err)),
                   MB_ENODEV);
  assert_non_null(strstr(err, "device 3"));
  mbd_config_free(cfg);
}

/* The keys of worker supervision: health checks, crash limits, memory
 * limit, the unload hook, cgroups, the state file; and what the core gets. */
static void test_supervision_keys(void **state) {
  mbd_config *cfg;
  mb_model_opts mo;
  char err[256];
  mbd_diag diag;

  (void)state;
  cfg = parse_ok("cgroup: /sys/fs/cgroup/modelbuf\n"
                 "state_file: /run/modelbuf/state\n"
                 "defaults: {crash_limit: 5, crash_window: 10m}\n"
                 "models:\n"
                 "  w:\n"
                 "    cmd: [x]\n"
                 "    health_interval: 2s\n"
                 "    health_failures: 4\n"
                 "    crash_limit: 0\n"
                 "    crash_window: forever\n"
                 "    memory_limit: 3GiB\n"
                 "    hooks: {unload: {path: /bye, timeout: 3s}}\n"
                 "  p: {backend: plugin, plugin: /x.so}\n");
  assert_string_equal(cfg->cgroup, "/sys/fs/cgroup/modelbuf");
  assert_string_equal(cfg->state_file, "/run/modelbuf/state");
  assert_int_equal(cfg->defaults.crash_limit, 5);
  assert_int_equal(cfg->defaults.crash_window_ms, 600000);
  const mbd_model_config *w = &cfg->models[0];
  assert_int_equal(w->tuning.health_interval_ms, 2000);
  assert_int_equal(w->tuning.health_failures, 4);
  assert_int_equal(w->tuning.crash_limit, 0);
  assert_int_equal(w->tuning.crash_window_ms, MB_FOREVER);
  assert_true(w->memory_limit_bytes == 3ULL << 30);
  assert_string_equal(w->hook_unload.path, "/bye");
  assert_int_equal(w->hook_unload.timeout_ms, 3000);
  assert_int_equal(mbd_config_model_opts(cfg, w, &mo, err, sizeof(err)), 0);
  assert_int_equal(mo.crash_limit, 0);
  assert_int_equal(mo.crash_window_ms, MB_FOREVER);
  assert_int_equal(mo.queue_timeout_excludes_load, 1); /* start_timeout bounds a worker's start */
  assert_int_equal(mbd_config_model_opts(cfg, &cfg->models[1], &mo, err, sizeof(err)), 0);
  assert_int_equal(mo.crash_limit, 5);
  assert_int_equal(mo.crash_window_ms, 600000);
  assert_int_equal(mo.queue_timeout_excludes_load, 0);
  mbd_config_free(cfg);
  /* Built-in defaults. */
  cfg = parse_ok("models: {w: {cmd: [x]}}\n");
  assert_null(cfg->cgroup);
  assert_null(cfg->state_file);
  assert_int_equal(cfg->models[0].tuning.crash_limit, 3);
  assert_int_equal(cfg->models[0].tuning.crash_window_ms, 300000);
  assert_int_equal(cfg->models[0].tuning.health_interval_ms, 0);
  assert_int_equal(cfg->models[0].tuning.health_failures, 3);
  mbd_config_free(cfg);
  cfg = parse_ok("cgroup: auto\nmodels: {}\n");
  assert_string_equal(cfg->cgroup, "auto");
  mbd_config_free(cfg);
  parse_bad("cgroup: sys/fs/cgroup\n"
            "models:\n"
            "  w: {cmd: [x], crash_limit: 33, crash_window: -3s}\n",
            &diag);
  assert_diag_has(&diag, "t.yaml:1:9: cgroup: 'sys/fs/cgroup' is not auto, off or an absolute folder");
  assert_diag_has(&diag, "models.w.crash_limit: must be at most 32");
  assert_diag_has(&diag, "models.w.crash_window: negative duration");
  mbd_diag_free(&diag);
}

static void test_diag_limit(void **state) {
  char *yaml = malloc(64 * 300 + 16);
  size_t off = 0;
  mbd_diag diag;

  (void)state;
  assert_non_null(yaml);
  for (int i = 0; i < 300; i++)
    off += (size_t)sprintf(yaml + off, "k%d: 1\n", i);
  parse_bad(yaml, &diag);
  assert_int_equal(diag.n, MBD_DIAG_MAX);
  assert_int_equal(diag.dropped, 300 - MBD_DIAG_MAX);
  mbd_diag_free(&diag);
  free(yaml);
}

/* dashboard: on by default, off with false, a boolean only. */
static void test_dashboard(void **state) {
  mbd_config *cfg;
  mbd_diag diag;

  (void)state;
  cfg = parse_ok("dashboard: false\n");
  assert_int_equal(cfg->dashboard, 0);
  mbd_config_free(cfg);
  cfg = parse_ok("dashboard: true\n");
  assert_int_equal(cfg->dashboard, 1);
  mbd_config_free(cfg);
  parse_bad("dashboard: sometimes\ndashbord: true\n", &diag);
  assert_diag_has(&diag, "t.yaml:1:12: dashboard: expected true or false");
  assert_diag_has(&diag, "dashbord: unknown key (did you mean 'dashboard'?)");
  mbd_diag_free(&diag);
}

static void test_misc_names(void **state) {
  mbd_log_level l;

  (void)state;
  assert_string_equal(mbd_backend_name(MBD_BACKEND_TENSORS), "tensors");
  assert_string_equal(mbd_log_level_name(MBD_LOG_WARN), "warn");
  assert_int_equal(mbd_log_level_parse("WARNING", &l), 0);
  assert_int_equal(l, MBD_LOG_WARN);
  assert_int_equal(mbd_log_level_parse("trace", &l), MB_EINVAL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_durations),
      cmocka_unit_test(test_sizes),
      cmocka_unit_test(test_format_roundtrip),
      cmocka_unit_test(test_expand),
      cmocka_unit_test(test_subst_worker),
      cmocka_unit_test(test_defaults),
      cmocka_unit_test(test_every_key),
      cmocka_unit_test(test_model_defaults),
      cmocka_unit_test(test_design_example),
      cmocka_unit_test(test_unknown_key),
      cmocka_unit_test(test_many_errors),
      cmocka_unit_test(test_wrong_types),
      cmocka_unit_test(test_duplicates),
      cmocka_unit_test(test_model_names),
      cmocka_unit_test(test_names_with_slash),
      cmocka_unit_test(test_python_api_keys),
      cmocka_unit_test(test_env_errors_in_config),
      cmocka_unit_test(test_bad_yaml),
      cmocka_unit_test(test_yaml_billion_laughs),
      cmocka_unit_test(test_yaml_anchors_and_merges),
      cmocka_unit_test(test_yaml_alias_errors),
      cmocka_unit_test(test_yaml_merges_keep_every_error),
      cmocka_unit_test(test_unknown_key_hints),
      cmocka_unit_test(test_unit_slips),
      cmocka_unit_test(test_schema),
      cmocka_unit_test(test_api_keys),
      cmocka_unit_test(test_devices),
      cmocka_unit_test(test_backends),
      cmocka_unit_test(test_listen_parse),
      cmocka_unit_test(test_load_file),
      cmocka_unit_test(test_config_path),
      cmocka_unit_test(test_overrides),
      cmocka_unit_test(test_core_opts),
      cmocka_unit_test(test_supervision_keys),
      cmocka_unit_test(test_diag_limit),
      cmocka_unit_test(test_dashboard),
      cmocka_unit_test(test_misc_names),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
