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
 * Backends: plugin (in this process). Process workers and the tensors
 * backend join as the daemon's and the tensor engine's backends do.
 */
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "modelbuf/modelbuf.h"
#include "modelbuf/plugin.h"
#include "cli.h"
#include "config.h"
#include "device.h"
#include "lifecycle.h"
#include "worker.h"

#define MAX_CYCLES 256
#define MAX_PROBES 100
#define MAX_RESTORES 20

typedef struct target {
  mb_ctx *ctx;
  const mbd_model_config *mc;
  void *inst;          /* plugin instance */
  mbd_worker *worker;  /* process backend */
  mb_device_kind kind;
  int ordinal;
  const char *device_name;
  uint64_t rss_start; /* RSS of this process before the first load */
} target;

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

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
  if (mb__device_mem_info(t->kind, t->ordinal, &total, &free_b, err, sizeof(err)) != 0)
    return 0;
  return free_b;
}

/* Drops the model's files from the page cache (clean pages; no root needed). */
static int drop_cache(const mbd_model_config *mc, char *msg, size_t len) {
  int dropped = 0;
  for (size_t i = 0; i < mc->n_files; i++) {
    int fd = open(mc->files[i], O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      snprintf(msg, len, "%s: %s", mc->files[i], strerror(errno));
      return -1;
    }
    if (posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) == 0)
      dropped++;
    close(fd);
  }
  return dropped;
}

/* One probe request; its time in ms, or LC_NONE without a probe. */
static double probe(const target *t, char *err, size_t len) {
  const mbd_probe *p = &t->mc->probe;
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
    double t0 = now_ms();
    int rc = mbd_http_call(port, req.method, p->path, p->body, 60000, &status, err, len);
    double took = now_ms() - t0;
    if (rc != 0)
      return -2.0;
    if (status >= 400) {
      snprintf(err, len, "probe %s %s answered %ld", req.method, p->path, status);
      return -2.0;
    }
    return took;
  }
  mb_plugin_response resp;
  double t0 = now_ms();
  int rc = mb_plugin_handle(t->inst, &req, &resp, err, len);
  double took = now_ms() - t0;
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

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
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
  if (n > 0 && steady_ms) {
    qsort(times, (size_t)n, sizeof(times[0]), cmp_d);
    *steady_ms = n % 2 ? times[n / 2] : (times[n / 2 - 1] + times[n / 2]) / 2;
  }
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
  if (cold && drop_cache(t->mc, err, sizeof(err)) < 0) {
    fprintf(stderr, "modelbuf: bench lifecycle: %s\n", err);
    return -1;
  }

  double t0 = now_ms();
  STEP(mb_load(t->ctx, name, MB_FOREVER, err, sizeof(err)), "load");
  c->load_ms = now_ms() - t0;
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
    t0 = now_ms();
    int rc = mb_offload(t->ctx, name, err, sizeof(err));
    if (rc == MB_ENOTSUP)
      break;
    if (rc != 0) {
      fprintf(stderr, "modelbuf: bench lifecycle: offload %s: %s\n", name, err);
      return -1;
    }
    off[nr] = now_ms() - t0;
    mb_status st;
    STEP(mb_model_status(t->ctx, name, &st), "status");
    if (st.host_bytes > c->host_offloaded)
      c->host_offloaded = st.host_bytes;
    t0 = now_ms();
    STEP(mb_load(t->ctx, name, MB_FOREVER, err, sizeof(err)), "restore");
    res[nr++] = now_ms() - t0;
    sample(t, c);
    if (probes_once(t, probes > 1 ? 1 : probes, NULL, NULL, c) != 0)
      return -1;
    STEP(steady(t, &dev, &host), "status");
    series[ns++] = (double)(t->kind == MB_DEVICE_HOST && dev > host ? dev : host) +
                   (t->kind == MB_DEVICE_HOST ? 0.0 : (double)dev);
  }
  if (nr > 0) {
    qsort(off, (size_t)nr, sizeof(off[0]), cmp_d);
    qsort(res, (size_t)nr, sizeof(res[0]), cmp_d);
    c->offload_ms = off[nr / 2];
    c->restore_ms = res[nr / 2];
  }
  c->restore_growth = lc_slope(series, ns);
  STEP(steady(t, &c->dev_steady, &c->host_steady), "status");
  sample(t, c);

  t0 = now_ms();
  STEP(mb_unload(t->ctx, name, err, sizeof(err)), "unload");
  c->unload_ms = now_ms() - t0;
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
  cli_command_usage(stderr, "bench");
  fprintf(stderr,
          "lifecycle options:\n"
          "  --config FILE   the daemon configuration naming MODEL (default: $MODELBUF_CONFIG,\n"
          "                  else ./modelbuf.yaml)\n"
          "  --cycles N      load/offload/restore/unload cycles (default 5)\n"
          "  --probes K      probe requests after each load (default 5)\n"
          "  --restores R    offload/restore rounds per cycle (default 2)\n"
          "  --no-cold       keep the files in the page cache for the first load\n"
          "  --json          one JSON object instead of the report\n"
          "  --chart FILE    also draw memory per tier across the cycles (PNG, gnuplot)\n");
}

/* Builds the context and registers the model as its configuration says. */
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
  mb_model_opts mo;
  if (mbd_config_model_opts(cfg, mc, &mo, err, sizeof(err)) != 0)
    goto fail;
  mo.device = 0;
  mo.keep_alive_ms = MB_FOREVER;
  mo.pinned = 1;
  switch (mc->backend) {
  case MBD_BACKEND_PLUGIN: {
    mb_plugin_lib *lib;
    if (mb_plugin_open(mc->plugin, &lib, err, sizeof(err)) != 0)
      goto fail;
    int rc = mb_model_add_plugin(t->ctx, mc->name, lib, (const char *const *)mc->files,
                                 mc->n_files, NULL, &mo, &t->inst, err, sizeof(err));
    mb_plugin_close(lib);
    if (rc != 0)
      goto fail;
    break;
  }
  case MBD_BACKEND_PROCESS: {
    mbd_worker_opts wo = {mc, 0, NULL, NULL};
    if (mbd_worker_new(&wo, &t->worker, err, sizeof(err)) != 0)
      goto fail;
    if (mb_model_add(t->ctx, mc->name, mbd_worker_backend(t->worker), t->worker, &mo, err,
                     sizeof(err)) != 0) {
      t->worker = NULL; /* freed by the core */
      goto fail;
    }
    break;
  }
  default:
    snprintf(err, sizeof(err), "model '%s' uses the %s backend, which this build cannot run",
             mc->name, mbd_backend_name(mc->backend));
    goto fail;
  }
  t->mc = mc;
  return 0;
fail:
  fprintf(stderr, "modelbuf: bench lifecycle: %s\n", err);
  return -1;
}

int cmd_bench_lifecycle(int argc, char **argv) {
  const char *model = NULL, *config = NULL, *chart = NULL;
  int cycles = 5, probes = 5, restores = 2, cold = 1, json = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--config") == 0 && i + 1 < argc) {
      config = argv[++i];
    } else if (strcmp(a, "--cycles") == 0 && i + 1 < argc) {
      cycles = atoi(argv[++i]);
    } else if (strcmp(a, "--probes") == 0 && i + 1 < argc) {
      probes = atoi(argv[++i]);
    } else if (strcmp(a, "--restores") == 0 && i + 1 < argc) {
      restores = atoi(argv[++i]);
    } else if (strcmp(a, "--chart") == 0 && i + 1 < argc) {
      chart = argv[++i];
    } else if (strcmp(a, "--no-cold") == 0) {
      cold = 0;
    } else if (strcmp(a, "--json") == 0) {
      json = 1;
    } else if (a[0] == '-' || model != NULL) {
      fprintf(stderr, "modelbuf: bench lifecycle: unexpected argument '%s'\n", a);
      usage();
      return CLI_EXIT_USAGE;
    } else {
      model = a;
    }
  }
  if (model == NULL || cycles < 1 || cycles > MAX_CYCLES || probes < 0 || probes > MAX_PROBES ||
      restores < 0 || restores > MAX_RESTORES) {
    fprintf(stderr,
            "modelbuf: bench lifecycle: a MODEL, 1..%d cycles, 0..%d probes, 0..%d restores\n",
            MAX_CYCLES, MAX_PROBES, MAX_RESTORES);
    usage();
    return CLI_EXIT_USAGE;
  }

  /* Large buffers straight from the OS and back on free, as in modelbufd:
   * what stays after an unload is then what the model kept, not what the
   * allocator cached. */
  mallopt(M_MMAP_THRESHOLD, 1 << 20);
  const char *path = mbd_config_path(config, NULL);
  mbd_config *cfg = NULL;
  mbd_diag diag;
  mbd_diag_init(&diag);
  if (mbd_config_load_file(path, NULL, &cfg, &diag) != 0) {
    mbd_diag_print(&diag, stderr);
    mbd_diag_free(&diag);
    return CLI_EXIT_FAIL;
  }
  mbd_diag_free(&diag);
  const mbd_model_config *mc = mbd_config_find_model(cfg, model);
  if (mc == NULL) {
    fprintf(stderr, "modelbuf: bench lifecycle: %s has no model '%s'\n", path, model);
    mbd_config_free(cfg);
    return CLI_EXIT_FAIL;
  }

  target t;
  memset(&t, 0, sizeof(t));
  if (setup(cfg, mc, &t) != 0) {
    if (t.ctx && mb_ctx_free(t.ctx) != 0)
      fprintf(stderr, "modelbuf: bench lifecycle: context still busy\n");
    mbd_config_free(cfg);
    return CLI_EXIT_FAIL;
  }
  lc_cycle *cy = calloc((size_t)cycles, sizeof(*cy));
  int rc = cy ? 0 : -1;
  for (int i = 0; rc == 0 && i < cycles; i++) {
    rc = cycle(&t, i, cold && i == 0, probes, restores, &cy[i]);
    if (rc == 0 && !json)
      fprintf(stderr, "cycle %d: load %.1f ms, unload %.1f ms\n", i, cy[i].load_ms,
              cy[i].unload_ms);
  }
  int status = CLI_EXIT_FAIL;
  if (rc == 0) {
    mb_device_info di;
    uint64_t host_budget = 0, host_used = 0;
    mb_host_tier(t.ctx, &host_budget, &host_used);
    lc_input in = {mc->name, "host", cold, 0, host_budget, cy, cycles};
    if (mb_device_info_get(t.ctx, 0, &di) == 0) {
      in.device_usable = di.usable_bytes;
      in.device = di.name;
    }
    lc_report r;
    lc_analyse(&in, &r);
    if (json) {
      char *j = lc_json(&in, &r);
      if (j) {
        printf("%s\n", j);
        free(j);
      }
    } else {
      lc_print(stdout, &in, &r);
    }
    status = CLI_EXIT_OK;
    if (chart) {
      char err[256];
      if (lc_chart(chart, &in, err, sizeof(err)) != 0) {
        fprintf(stderr, "modelbuf: bench lifecycle: chart: %s\n", err);
        status = CLI_EXIT_FAIL;
      } else if (!json) {
        printf("\nchart: %s\n", chart);
      }
    }
    if (r.leaks == 1 && status == CLI_EXIT_OK)
      status = 4; /* a leak is a failing verdict: scripts can tell it apart */
  }
  free(cy);
  if (mb_ctx_free(t.ctx) != 0)
    fprintf(stderr, "modelbuf: bench lifecycle: context still busy\n");
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
  fprintf(stderr, "modelbuf: bench: unknown benchmark '%s'\n", argc >= 2 ? argv[1] : "");
  usage();
  return CLI_EXIT_USAGE;
}
