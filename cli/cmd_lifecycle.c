/*
 * cmd_lifecycle.c - `modelbuf bench lifecycle MODEL --config FILE`: what a
 * model costs. Runs the model's whole life N times through the real core,
 * with the backend its configuration names, and measures each step:
 *
 *   cold load (cycle 0, its files dropped from the page cache), warm load,
 *   first and steady inference through its `probe`, offload, restore,
 *   unload; device bytes (the backend's own usage), host bytes (RSS of the
 *   process tree holding the model), and what is left after each unload by
 *   the device's own figure (free memory) and the OS's (RSS).
 *
 * lifecycle.c turns the cycles into figures, a leak verdict and advice.
 * The model is built by the daemon's own construction (model_build.h,
 * through daemon/internal/mbd_internal.h), so
 * it is exactly the model modelbufd would run: process (the worker started,
 * supervised and stopped as modelbufd does it), plugin and tensors (both in
 * this process), files: entries expanded the same way. With --url the model is
 * measured in a running modelbufd instead, through its HTTP API
 * (lifecycle_url.c); the two drivers fill the same lc_cycle records.
 */
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "modelbuf/modelbuf.h"
#include "modelbuf/plugin.h"
#include "modelbuf/tensors.h"
#include "cli.h"
#ifdef MB_CLI_CLIENT
#include "client.h"
#endif
#include "lifecycle.h"
#include "mbd_internal.h"

#define MAX_CYCLES 256
#define MAX_PROBES 100
#define MAX_RESTORES 20

typedef struct target {
  mb_ctx *ctx;
  const mbd_model_config *mc;
  mbd_probe probe;     /* the probe: the configuration's, or the flags' (not owned) */
  void *inst;          /* plugin instance */
  mbd_worker *worker;  /* process backend */
  mbd_tensors *tensors; /* tensors backend (owned by the core) */
  mbd_sup *sup;        /* starts and reaps the worker (process backend) */
  char **paths;        /* the model's files, expanded (for the page cache) */
  size_t n_paths;
  void *tbounce;       /* tensors off the host device: read back into this
                          buffer of TENSOR_BOUNCE bytes (mb_tensors_read) */
  uint64_t tsum;       /* checksum of every tensor's bytes after the first load */
  int tsum_set;
  mb_device_kind kind;
  int ordinal;
  const char *device_name;
  uint64_t rss_start; /* RSS of this process before the first load */
} target;

/*
 * RSS of this process, after handing free heap pages back to the OS: what
 * is counted is memory in use, not what the allocator keeps cached (the C
 * counterpart of the gc.collect() a Python lifecycle script calls).
 */
static uint64_t rss_self(void) {
  malloc_trim(0);
  FILE *f = fopen("/proc/self/statm", "r");
  unsigned long long size = 0, res = 0;
  if (f == NULL)
    return 0;
  if (fscanf(f, "%llu %llu", &size, &res) != 2)
    res = 0;
  fclose(f);
  return res * (uint64_t)sysconf(_SC_PAGESIZE);
}

/* Free memory of the device by its own figure (host: MemAvailable). */
static uint64_t device_free(const target *t) {
  uint64_t total = 0, free_b = 0;
  char err[128];
  if (mb_device_mem_info(t->kind, t->ordinal, &total, &free_b, err, sizeof(err)) != 0)
    return 0;
  return free_b;
}

#define TENSOR_BOUNCE (8u << 20)

/* FNV-1a over 8-byte words in four independent lanes, so that reading many
 * MiB costs the memory traffic rather than a chain of multiplications. */
static uint64_t checksum(uint64_t h, const uint8_t *p, uint64_t n) {
  const uint64_t prime = 0x100000001b3ull;
  uint64_t lane[4] = {h, h ^ 1, h ^ 2, h ^ 3};
  uint64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    uint64_t w[4];
    memcpy(w, p + i, sizeof(w));
    for (int k = 0; k < 4; k++)
      lane[k] = (lane[k] ^ w[k]) * prime;
  }
  for (; i < n; i++)
    lane[0] = (lane[0] ^ p[i]) * prime;
  for (int k = 1; k < 4; k++)
    lane[0] = (lane[0] ^ lane[k]) * prime;
  return lane[0];
}

/*
 * The "inference" of a tensors model, which has no request handler: every
 * tensor of every file looked up by name (mb_tensors_find, as user code
 * does) and all its bytes read into a checksum -- on the host device
 * straight from the arena, on another device copied back through a bounce
 * buffer (mb_tensors_read, as user code would). It measures what a first pass over the weights costs after
 * a load or a restore (lookups, page faults of a fresh arena, memory
 * bandwidth), and the checksum must stay the one of the first load: a
 * restore that brought back other bytes fails the probe.
 */
static double probe_tensors(target *t, char *err, size_t len) {
  double t0 = cli_now_ms();
  uint64_t h = 0xcbf29ce484222325ull;
  mb_tensors_model *tm = mbd_tensors_model_of(t->tensors);
  if (tm == NULL) {
    snprintf(err, len, "the model's files were never read");
    return -2.0;
  }
  for (size_t f = 0; f < mb_tensors_file_count(tm); f++) {
    const mb_tensor_file *file = mb_tensors_file(tm, f);
    size_t n = mb_tensor_file_count(file);
    for (size_t k = 0; k < n; k++) {
      mb_tensor_info ti;
      mb_tensor_ref ref;
      int rc = mb_tensor_file_info(file, k, &ti);
      if (rc == 0)
        rc = mb_tensors_find(tm, ti.name, &ref);
      if (rc != 0) {
        snprintf(err, len, "tensor %zu of %s: %s", k, mb_tensor_file_path(file),
                 mb_strerror(rc));
        return -2.0;
      }
      if (t->kind == MB_DEVICE_HOST) {
        h = checksum(h, (const uint8_t *)(uintptr_t)ref.device_ptr, ref.size_bytes);
        continue;
      }
      if (t->tbounce == NULL && (t->tbounce = malloc(TENSOR_BOUNCE)) == NULL) {
        snprintf(err, len, "out of memory");
        return -2.0;
      }
      for (uint64_t off = 0; off < ref.size_bytes; off += TENSOR_BOUNCE) {
        size_t part = ref.size_bytes - off < TENSOR_BOUNCE ? (size_t)(ref.size_bytes - off)
                                                           : TENSOR_BOUNCE;
        if (mb_tensors_read(tm, ti.name, off, t->tbounce, part, err, len) != 0)
          return -2.0;
        h = checksum(h, t->tbounce, part);
      }
    }
  }
  double took = cli_now_ms() - t0;
  if (!t->tsum_set) {
    t->tsum = h;
    t->tsum_set = 1;
  } else if (h != t->tsum) {
    snprintf(err, len, "the tensors' bytes differ from those of the first load "
                       "(checksum %016llx, was %016llx)",
             (unsigned long long)h, (unsigned long long)t->tsum);
    return -2.0;
  }
  return took;
}

/* One probe request; its time in ms, or LC_NONE without a probe. */
static double probe(target *t, char *err, size_t len) {
  const mbd_probe *p = &t->probe;
  if (t->tensors)
    return probe_tensors(t, err, len);
  if (p->path == NULL)
    return LC_NONE;
  mb_plugin_request req = {p->method ? p->method : (p->body ? "POST" : "GET"),
                           p->path,
                           "",
                           NULL,
                           0,
                           (const uint8_t *)p->body,
                           p->body ? strlen(p->body) : 0};
  if (t->worker) {
    char url[128];
    long status = 0;
    if (mbd_worker_url(t->worker, url, sizeof(url)) != 0) {
      snprintf(err, len, "the worker is not running");
      return -2.0;
    }
    const char *colon = strrchr(url, ':');
    int port = colon ? atoi(colon + 1) : 0;
    double t0 = cli_now_ms();
    int rc = mbd_http_call(port, req.method, p->path, p->body, 60000, &status, err, len);
    double took = cli_now_ms() - t0;
    if (rc != 0)
      return -2.0;
    if (status >= 400) {
      snprintf(err, len, "probe %s %s answered %ld", req.method, p->path, status);
      return -2.0;
    }
    return took;
  }
  mb_plugin_response resp;
  double t0 = cli_now_ms();
  int rc = mb_plugin_handle(t->inst, &req, &resp, err, len);
  double took = cli_now_ms() - t0;
  if (rc != 0)
    return -2.0;
  int status = resp.status;
  mb_plugin_response_free(t->inst, &resp);
  if (status >= 400) {
    snprintf(err, len, "probe %s %s answered %d", req.method, req.path, status);
    return -2.0;
  }
  return took;
}

/* Host memory held by the model: the RSS of its worker's process group,
 * or for a model in this process what this process grew by since the start. */
static uint64_t host_bytes(const target *t) {
  if (t->worker)
    return mbd_worker_rss(t->worker);
  uint64_t rss = rss_self();
  return rss > t->rss_start ? rss - t->rss_start : 0;
}

/* Keeps the highest memory figures seen while resident. */
static void sample(const target *t, lc_cycle *c) {
  mb_status st;
  if (mb_model_status(t->ctx, t->mc->name, &st) != 0)
    return;
  if (st.vram_bytes > c->dev_peak)
    c->dev_peak = st.vram_bytes;
  uint64_t host = host_bytes(t);
  if (host > c->host_peak)
    c->host_peak = host;
}

/* The steady footprint now: device bytes, and host bytes. */
static int steady(const target *t, uint64_t *dev, uint64_t *host) {
  mb_status st;
  int rc = mb_model_status(t->ctx, t->mc->name, &st);
  *dev = rc == 0 ? st.vram_bytes : 0;
  *host = host_bytes(t);
  return rc;
}

#define STEP(call, what)                                                                       \
  do {                                                                                         \
    int rc_ = (call);                                                                          \
    if (rc_ != 0) {                                                                            \
      fprintf(stderr, "modelbuf: bench lifecycle: %s %s: %s: %s\n", what, t->mc->name,        \
              mb_err_name(rc_), err);                                                          \
      return -1;                                                                               \
    }                                                                                          \
  } while (0)

/* Sends the probes under one lease; the first time into *first, the median
 * of the others into *steady_ms (either may stay LC_NONE). */
static int probes_once(target *t, int probes, double *first, double *steady_ms, lc_cycle *c) {
  char err[512] = "";
  const char *name = t->mc->name;
  mb_lease lease;
  STEP(mb_acquire(t->ctx, name, NULL, &lease, err, sizeof(err)), "acquire");
  double times[MAX_PROBES];
  int n = 0;
  for (int k = 0; k < probes; k++) {
    double ms = probe(t, err, sizeof(err));
    if (ms == LC_NONE)
      break;
    if (ms < 0) {
      fprintf(stderr, "modelbuf: bench lifecycle: probe of %s failed: %s\n", name, err);
      if (mb_release(t->ctx, lease) != 0)
        fprintf(stderr, "modelbuf: bench lifecycle: the lease of %s was refused\n", name);
      return -1;
    }
    if (k == 0 && first)
      *first = ms;
    else
      times[n++] = ms;
    sample(t, c);
  }
  if (mb_release(t->ctx, lease) != 0)
    return -1;
  if (n > 0 && steady_ms)
    *steady_ms = lc_median(times, n);
  return 0;
}

/*
 * One residency: load, probes, then `restores` rounds of offload, restore
 * and probes, then unload. The steady footprint is sampled after the load
 * and after every restore: its slope within the residency is the growth per
 * restore (a worker that keeps memory on each wake-up); the footprint at the
 * end of the residency, cycle after cycle, gives the growth per reload.
 */
static int cycle(target *t, int i, int cold, int probes, int restores, lc_cycle *c) {
  char err[512] = "";
  const char *name = t->mc->name;
  memset(c, 0, sizeof(*c));
  c->first_ms = c->steady_ms = c->offload_ms = c->restore_ms = LC_NONE;
  uint64_t free_before = device_free(t), rss_before = rss_self();
  if (i == 0 && t->rss_start == 0)
    t->rss_start = rss_before;
  if (cold && lc_drop_page_cache((const char *const *)t->paths, t->n_paths, err,
                                 sizeof(err)) < 0) {
    fprintf(stderr, "modelbuf: bench lifecycle: %s\n", err);
    return -1;
  }

  double t0 = cli_now_ms();
  STEP(mb_load(t->ctx, name, MB_FOREVER, err, sizeof(err)), "load");
  c->load_ms = cli_now_ms() - t0;
  sample(t, c);
  if (probes_once(t, probes, &c->first_ms, &c->steady_ms, c) != 0)
    return -1;
  double series[MAX_RESTORES + 1];
  int ns = 0;
  uint64_t dev, host;
  STEP(steady(t, &dev, &host), "status");
  series[ns++] = (double)(t->kind == MB_DEVICE_HOST && dev > host ? dev : host) +
                 (t->kind == MB_DEVICE_HOST ? 0.0 : (double)dev);

  double off[MAX_RESTORES], res[MAX_RESTORES];
  int nr = 0;
  for (int r = 0; r < restores; r++) {
    t0 = cli_now_ms();
    int rc = mb_offload(t->ctx, name, err, sizeof(err));
    if (rc == MB_ENOTSUP)
      break;
    if (rc != 0) {
      fprintf(stderr, "modelbuf: bench lifecycle: offload %s: %s\n", name, err);
      return -1;
    }
    off[nr] = cli_now_ms() - t0;
    mb_status st;
    STEP(mb_model_status(t->ctx, name, &st), "status");
    if (st.host_bytes > c->host_offloaded)
      c->host_offloaded = st.host_bytes;
    t0 = cli_now_ms();
    STEP(mb_load(t->ctx, name, MB_FOREVER, err, sizeof(err)), "restore");
    res[nr++] = cli_now_ms() - t0;
    sample(t, c);
    if (probes_once(t, probes > 1 ? 1 : probes, NULL, NULL, c) != 0)
      return -1;
    STEP(steady(t, &dev, &host), "status");
    series[ns++] = (double)(t->kind == MB_DEVICE_HOST && dev > host ? dev : host) +
                   (t->kind == MB_DEVICE_HOST ? 0.0 : (double)dev);
  }
  if (nr > 0) {
    c->offload_ms = lc_median(off, nr);
    c->restore_ms = lc_median(res, nr);
  }
  c->restore_growth = lc_restore_growth(series, ns);
  c->restores = nr;
  STEP(steady(t, &c->dev_steady, &c->host_steady), "status");
  sample(t, c);

  t0 = cli_now_ms();
  STEP(mb_unload(t->ctx, name, err, sizeof(err)), "unload");
  c->unload_ms = cli_now_ms() - t0;
  uint64_t free_after = device_free(t), rss_after = rss_self();
  if (t->worker) {
    /* A worker's memory is back when none of its processes is left. */
    c->os_residue = (int64_t)mbd_worker_rss(t->worker);
  } else {
    c->os_residue = (int64_t)rss_after - (int64_t)rss_before;
  }
  /* The host device is host memory: its own figure is the OS's (the
   * machine's free memory moves with every other process). */
  c->dev_residue = t->kind == MB_DEVICE_HOST ? c->os_residue
                                             : (int64_t)free_before - (int64_t)free_after;
  return 0;
}

static void usage(void) {
  cli_command_usage(stderr, "bench lifecycle");
}

static void build_warning(void *arg, const char *model, const char *msg, const char *why) {
  (void)arg;
  fprintf(stderr, "modelbuf: bench lifecycle: %s: %s: %s\n", model, msg, why);
}

/* A plugin model's log lines, on stderr (the library prints nothing). */
static void plugin_log(void *arg, int level, const char *model, const char *msg) {
  static const char *names[] = {"debug", "info", "warn", "error"};
  (void)arg;
  fprintf(stderr, "level=%s model=%s msg=\"%s\"\n", names[level < 0 ? 0 : level > 3 ? 3 : level],
          model ? model : "", msg ? msg : "");
}

/* Builds the context and registers the model as modelbufd would (one
 * construction, model_build.h), then makes it the benchmark's: on device
 * 0, never idle, never evicted. */
static int setup(const mbd_config *cfg, const mbd_model_config *mc, target *t) {
  char err[512] = "";
  mb_ctx_opts co;
  mb_ctx_opts_init(&co);
  mbd_config_ctx_opts(cfg, &co);
  co.keep_alive_ms = MB_FOREVER; /* the benchmark moves the model itself */
  if (mb_ctx_new(&co, &t->ctx, err, sizeof(err)) != 0)
    goto fail;
  mb_device_opts d;
  if (cfg->n_devices > 0) {
    if (mbd_config_device_opts(cfg, 0, &d) != 0) {
      snprintf(err, sizeof(err), "device 0 of the configuration is not usable");
      goto fail;
    }
  } else {
    mb_device_opts_init(&d); /* the host device */
  }
  if (mb_device_add(t->ctx, &d, NULL, err, sizeof(err)) != 0)
    goto fail;
  mb_device_info di;
  if (mb_device_info_get(t->ctx, 0, &di) == 0) {
    t->kind = di.kind;
    t->ordinal = di.ordinal;
  }
  if (mc->backend == MBD_BACKEND_PROCESS) {
    /* Workers are started and reaped as in the daemon, by a supervisor of
     * this process (not a subreaper: the tool is short-lived). */
    mbd_sup_opts so;
    memset(&so, 0, sizeof(so));
    so.cgroup = "off";
    if (mbd_sup_start(&so, &t->sup, err, sizeof(err)) != 0)
      goto fail;
  }
  mb_model_opts mo;
  if (mbd_model_options(cfg, mc, t->ctx, &mo, err, sizeof(err)) != 0)
    goto fail;
  mo.device = 0;
  mo.keep_alive_ms = MB_FOREVER;
  mo.pinned = 1;
  mb_plugin_host host;
  memset(&host, 0, sizeof(host));
  host.size = sizeof(host);
  host.log = plugin_log;
  mbd_build_env env;
  memset(&env, 0, sizeof(env));
  env.ctx = t->ctx;
  env.sup = t->sup;
  env.plugin_host = &host;
  env.warn = build_warning;
  mbd_built b;
  if (mbd_model_build(&env, mc, &mo, &b, err, sizeof(err)) != 0)
    goto fail;
  t->worker = b.worker;
  t->inst = b.plugin;
  t->tensors = b.tensors;
  /* The files as the model reads them, for the cold first load. */
  if (mc->n_files > 0 && mbd_files_expand(mc->files, mc->n_files, mc->name, &t->paths,
                                          &t->n_paths, err, sizeof(err)) != 0) {
    t->paths = NULL;
    t->n_paths = 0;
  }
  t->mc = mc;
  return 0;
fail:
  fprintf(stderr, "modelbuf: bench lifecycle: %s\n", err);
  return -1;
}

/* Runs the cycles in this process and reports them. */
static int bench_here(const mbd_config *cfg, const mbd_model_config *mc, const lc_opts *o) {
  target t;
  memset(&t, 0, sizeof(t));
  int status = CLI_EXIT_FAIL;
  if (setup(cfg, mc, &t) != 0)
    goto done;
  t.probe.method = (char *)o->probe_method;
  t.probe.path = (char *)o->probe_path;
  t.probe.body = (char *)o->probe_body;
  lc_cycle *cy = calloc((size_t)o->cycles, sizeof(*cy));
  int rc = cy ? 0 : -1;
  for (int i = 0; rc == 0 && i < o->cycles; i++) {
    rc = cycle(&t, i, o->cold && i == 0, o->probes, o->restores, &cy[i]);
    if (rc == 0 && !o->json)
      fprintf(stderr, "cycle %d: load %.1f ms, unload %.1f ms\n", i, cy[i].load_ms,
              cy[i].unload_ms);
  }
  if (rc == 0) {
    mb_device_info di;
    uint64_t host_budget = 0, host_used = 0;
    mb_host_tier(t.ctx, &host_budget, &host_used);
    lc_input in = {mc->name, "host", o->cold, 0, host_budget, cy, o->cycles, NULL,
                   o->cold ? NULL : "--no-cold", mbd_backend_name(mc->backend)};
    if (mb_device_info_get(t.ctx, 0, &di) == 0) {
      in.device_usable = di.usable_bytes;
      in.device = di.name;
    }
    status = o->report ? o->report(&in, o->report_arg) : lc_output(&in, o->json, o->chart);
  }
  free(cy);
done:
  if (t.ctx && mb_ctx_free(t.ctx) != 0)
    fprintf(stderr, "modelbuf: bench lifecycle: context still busy\n");
  free(t.tbounce);
  mbd_sup_stop(t.sup); /* after the context: the worker is stopped by then */
  mb_tensors_paths_free(t.paths, t.n_paths);
  return status;
}

/* What the flags say of the probe (NULL: not given). */
typedef struct probe_flags {
  const char *method, *path, *body;
} probe_flags;

/*
 * The options of one model's run: its probe (the flags, else its
 * configuration's, else against a daemon a GET of its health path) and
 * its files. cfg may be NULL (a daemon without --config); *mcp gets the
 * model's section or NULL. 0, or CLI_EXIT_FAIL when cfg has no such model
 * and nothing else will find it.
 */
static int model_opts(const mbd_config *cfg, const char *path, const char *model, int url,
                      const probe_flags *pf, lc_opts *o, const mbd_model_config **mcp) {
  const mbd_model_config *mc = cfg ? mbd_config_find_model(cfg, model) : NULL;
  *mcp = mc;
  if (cfg && mc == NULL && !url) {
    fprintf(stderr, "modelbuf: bench lifecycle: %s has no model '%s'\n", path, model);
    return CLI_EXIT_FAIL;
  }
  o->model = model;
  o->probe_path = o->probe_body = o->probe_method = NULL;
  o->probe_default = 0;
  o->files = NULL;
  o->n_files = 0;
  if (pf->path) {
    o->probe_path = pf->path;
    o->probe_body = pf->body;
    o->probe_method = pf->method ? pf->method : pf->body ? "POST" : "GET";
  } else if (mc && mc->probe.path) {
    o->probe_path = mc->probe.path;
    o->probe_body = mc->probe.body;
    o->probe_method = mc->probe.method ? mc->probe.method : mc->probe.body ? "POST" : "GET";
  } else if (url) {
    o->probe_path = mc && mc->health ? mc->health : "/health";
    o->probe_method = "GET";
    o->probe_default = 1;
  }
  if (mc) {
    o->files = (const char *const *)mc->files;
    o->n_files = mc->n_files;
  }
  return 0;
}

/* One model's run, by the driver that measures it. */
static int run_one(const mbd_config *cfg, const mbd_model_config *mc, const lc_opts *o, int url,
                   const void *client) {
#ifdef MB_CLI_CLIENT
  if (url)
    return lc_bench_daemon(o, client);
#else
  (void)client;
  (void)url;
#endif
  return bench_here(cfg, mc, o);
}

/* "chart.png" for model m: "chart-m.png" ('/' in the name as '_'). */
static void chart_for(const char *chart, const char *model, char *out, size_t len) {
  const char *dot = strrchr(chart, '.');
  size_t stem = dot && !strchr(dot, '/') ? (size_t)(dot - chart) : strlen(chart);
  char m[130];
  snprintf(m, sizeof(m), "%s", model);
  for (char *p = m; *p; p++)
    if (*p == '/')
      *p = '_';
  snprintf(out, len, "%.*s-%s%s", (int)stem, chart, m, dot && stem < strlen(chart) ? dot : "");
}

#ifdef MB_CLI_CLIENT
/* The names of the daemon's models (GET /api/models); NULL with the exit
 * status in *rc. The caller frees the array and json_decref's *doc. */
static const char **daemon_models(const cli_client *c, size_t *n, json_t **doc, int *rc) {
  long status = 0;
  *doc = NULL;
  *rc = cli_request(c, "GET", "/api/models", NULL, &status, doc, NULL);
  if (*rc != 0)
    return NULL;
  if (status >= 400) {
    *rc = cli_print_error("bench lifecycle --all", status, *doc);
    return NULL;
  }
  json_t *a = json_object_get(*doc, "models");
  *n = json_array_size(a);
  const char **names = calloc(*n ? *n : 1, sizeof(*names));
  if (names == NULL) {
    *rc = CLI_EXIT_FAIL;
    return NULL;
  }
  for (size_t i = 0; i < *n; i++)
    names[i] = json_string_value(json_object_get(json_array_get(a, i), "name"));
  return names;
}
#endif

#define MAX_MODELS 64

int cmd_bench_lifecycle(int argc, char **argv) {
  const char *models[MAX_MODELS], *config = NULL;
  size_t n_models = 0;
  int all = 0;
  probe_flags pf = {NULL, NULL, NULL};
  lc_opts o;
  memset(&o, 0, sizeof(o));
  o.cycles = 5;
  o.probes = 5;
  o.restores = 2;
  o.cold = 1;
  int url = 0;
  for (int i = 1; i < argc; i++)
    if (strcmp(argv[i], "--url") == 0)
      url = 1;
  const void *client = NULL;
#ifdef MB_CLI_CLIENT
  cli_client cc;
  cli_client_init(&cc, &argc, argv); /* takes --url and --api-key out of argv */
  client = &cc;
#endif
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--config") == 0 && i + 1 < argc) {
      config = argv[++i];
    } else if (strcmp(a, "--cycles") == 0 && i + 1 < argc) {
      o.cycles = atoi(argv[++i]);
    } else if (strcmp(a, "--probes") == 0 && i + 1 < argc) {
      o.probes = atoi(argv[++i]);
    } else if (strcmp(a, "--restores") == 0 && i + 1 < argc) {
      o.restores = atoi(argv[++i]);
    } else if (strcmp(a, "--chart") == 0 && i + 1 < argc) {
      o.chart = argv[++i];
    } else if (strcmp(a, "--probe-method") == 0 && i + 1 < argc) {
      pf.method = argv[++i];
    } else if (strcmp(a, "--probe-path") == 0 && i + 1 < argc) {
      pf.path = argv[++i];
    } else if (strcmp(a, "--probe-body") == 0 && i + 1 < argc) {
      pf.body = argv[++i];
    } else if (strcmp(a, "--no-cold") == 0) {
      o.cold = 0;
    } else if (strcmp(a, "--json") == 0) {
      o.json = 1;
    } else if (strcmp(a, "--all") == 0) {
      all = 1;
    } else if (a[0] == '-' || n_models == MAX_MODELS) {
      fprintf(stderr, "modelbuf: bench lifecycle: unexpected argument '%s'\n", a);
      usage();
      return CLI_EXIT_USAGE;
    } else {
      models[n_models++] = a;
    }
  }
  if ((n_models == 0) == !all || o.cycles < 1 || o.cycles > MAX_CYCLES || o.probes < 0 ||
      o.probes > MAX_PROBES || o.restores < 0 || o.restores > MAX_RESTORES) {
    fprintf(stderr,
            "modelbuf: bench lifecycle: one MODEL or more (or --all), 1..%d cycles, 0..%d "
            "probes, 0..%d restores\n",
            MAX_CYCLES, MAX_PROBES, MAX_RESTORES);
    usage();
    return CLI_EXIT_USAGE;
  }
  if ((pf.method || pf.body) && pf.path == NULL) {
    fprintf(stderr, "modelbuf: bench lifecycle: --probe-method and --probe-body need "
                    "--probe-path\n");
    return CLI_EXIT_USAGE;
  }
  int several = all || n_models > 1;
  if (several && pf.path) {
    fprintf(stderr, "modelbuf: bench lifecycle: --probe-* are for one model; with several, "
                    "each takes the probe of its configuration\n");
    return CLI_EXIT_USAGE;
  }
  /* The daemon's address from MODELBUF_URL only when no configuration is
   * named either way: a configuration file means "run it here". */
  const char *env_url = getenv("MODELBUF_URL");
  if (!url && config == NULL && env_url && env_url[0] && !getenv("MODELBUF_CONFIG"))
    url = 1;
#ifndef MB_CLI_CLIENT
  if (url) {
    fprintf(stderr, "modelbuf: bench lifecycle: --url needs a build with libcurl and jansson\n");
    return CLI_EXIT_USAGE;
  }
#endif

  /* Large buffers straight from the OS and back on free, as in modelbufd:
   * what stays after an unload is then what the model kept, not what the
   * allocator cached. */
  mallopt(M_MMAP_THRESHOLD, 1 << 20);
  mbd_config *cfg = NULL;
  const char *path = NULL;
  if (!url || config != NULL) {
    path = mbd_config_path(config, NULL);
    mbd_diag diag;
    mbd_diag_init(&diag);
    if (mbd_config_load_file(path, NULL, &cfg, &diag) != 0) {
      mbd_diag_print(&diag, stderr);
      mbd_diag_free(&diag);
      return CLI_EXIT_FAIL;
    }
    mbd_diag_free(&diag);
  }
  const mbd_model_config *mc;
  int status;
  if (!several) {
    status = model_opts(cfg, path, models[0], url, &pf, &o, &mc);
    if (status == 0)
      status = run_one(cfg, mc, &o, url, client);
    mbd_config_free(cfg);
    return status;
  }

  /* Several models, one after another, then compared. */
  const char **names = models;
#ifdef MB_CLI_CLIENT
  json_t *listed = NULL;
#endif
  size_t n = n_models;
  if (all && url) {
#ifdef MB_CLI_CLIENT
    names = daemon_models(&cc, &n, &listed, &status);
    if (names == NULL) {
      mbd_config_free(cfg);
      return status;
    }
#endif
  } else if (all) {
    n = cfg->n_models;
    names = calloc(n ? n : 1, sizeof(*names));
    if (names == NULL) {
      mbd_config_free(cfg);
      return CLI_EXIT_FAIL;
    }
    for (size_t i = 0; i < n; i++)
      names[i] = cfg->models[i].name;
  }
  lc_run *runs = calloc(n ? n : 1, sizeof(*runs));
  status = runs ? 0 : CLI_EXIT_FAIL;
  size_t done = 0;
  for (size_t i = 0; status == 0 && i < n; i++) {
    lc_opts one = o;
    one.report = lc_collect;
    one.report_arg = &runs[i];
    one.chart = NULL;
    if (!o.json)
      fprintf(stderr, "== %s (%zu of %zu)\n", names[i], i + 1, n);
    snprintf(runs[i].model, sizeof(runs[i].model), "%s", names[i]);
    int rc = model_opts(cfg, path, names[i], url, &pf, &one, &mc);
    if (rc == 0)
      rc = run_one(cfg, mc, &one, url, client);
    done++;
    if (rc == CLI_EXIT_DOWN) {
      status = rc; /* the daemon is gone: the others cannot be measured */
      break;
    }
    if (rc != 0)
      runs[i].status = rc;
  }
  if (status == 0) {
    status = lc_compare_output(stdout, runs, (int)n, o.json);
    for (size_t i = 0; o.chart && i < n; i++) {
      char png[1024], err[256];
      if (runs[i].status != 0)
        continue;
      chart_for(o.chart, runs[i].model, png, sizeof(png));
      if (lc_chart(png, &runs[i].in, err, sizeof(err)) != 0) {
        fprintf(stderr, "modelbuf: bench lifecycle: chart: %s\n", err);
        status = CLI_EXIT_FAIL;
      } else if (!o.json) {
        printf("chart of %s: %s\n", runs[i].model, png);
      }
    }
  }
  for (size_t i = 0; runs && i < done; i++)
    lc_run_free(&runs[i]);
  free(runs);
  if (names != models)
    free((void *)names);
#ifdef MB_CLI_CLIENT
  json_decref(listed);
#endif
  mbd_config_free(cfg);
  return status;
}

/* `modelbuf bench KIND ...`: the benchmarks of the tool. */
int cmd_bench(int argc, char **argv) {
  if (argc >= 2 && strcmp(argv[1], "lifecycle") == 0)
    return cmd_bench_lifecycle(argc - 1, argv + 1);
  if (argc >= 2 && (!strcmp(argv[1], "load") || !strcmp(argv[1], "offload") ||
                    !strcmp(argv[1], "restore")))
    return cmd_bench_tensors(argc - 1, argv + 1);
  if (argc >= 2)
    fprintf(stderr, "modelbuf: bench: unknown benchmark '%s' (lifecycle, load, offload or "
                    "restore)\n", argv[1]);
  cli_command_usage(stderr, "bench");
  return CLI_EXIT_USAGE;
}
