/*
 * lifecycle_url.c - `modelbuf bench lifecycle MODEL --url URL`: a model as
 * a running modelbufd serves it, measured through the daemon's HTTP API
 * only (nothing of the daemon is reloaded or reconfigured):
 *
 *   load, offload, unload   POST /api/models/NAME/{load,offload,unload},
 *                           timed by this client (each answers when done);
 *   probes                  through the proxy, /m/NAME/PATH, under the
 *                           daemon's own leases;
 *   memory                  the model's status (vram_bytes and host_bytes,
 *                           as the daemon measures them when a load or
 *                           restore completes; rss_bytes of a running
 *                           worker, measured at the request) and
 *                           /api/devices (used and free per device);
 *   host budget             modelbuf_host_tier_bytes{kind="budget"} of /metrics.
 *
 * Each cycle fills the lc_cycle that lifecycle.c analyses, as the in-process
 * driver (cmd_lifecycle.c) does, so the verdict, the advice, the table, the
 * JSON and the chart are the same. The model is unloaded first and put back
 * in its state at the end (ready or offloaded, with the keep-alive it had);
 * loads and probes carry keep_alive -1 so the daemon's idle timer cannot
 * move it in the middle of a cycle. The model's configured keep-alive is
 * never changed (the keep-alive route, which would change it, is not used).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "client.h"
#include "lifecycle.h"

#define MAX_RESTORES 20
#define MAX_PROBES 100
#define MAX_DEVICES 64
#define FOREVER "{\"keep_alive\": -1}"

typedef struct run {
  const lc_opts *o;
  const cli_client *c;
  char model_path[320]; /* /api/models/NAME */
  char probe_path[1024]; /* /m/NAME/PATH */
  char device[64];      /* the model's device while resident ("" until known) */
  uint64_t usable;      /* that device's usable bytes */
  uint64_t free_before; /* its free bytes before the current load */
} run;

static uint64_t ju64(json_t *o, const char *k) {
  json_t *v = json_object_get(o, k);
  if (json_is_integer(v))
    return json_integer_value(v) > 0 ? (uint64_t)json_integer_value(v) : 0;
  return json_is_number(v) && json_number_value(v) > 0 ? (uint64_t)json_number_value(v) : 0;
}

static const char *jstr(json_t *o, const char *k) {
  const char *s = json_string_value(json_object_get(o, k));
  return s ? s : "";
}

/*
 * One API call that must succeed: 0 with *doc (the caller frees it; doc may
 * be NULL to drop it), else the exit status after printing why. *ms gets
 * the time the call took when ms is not NULL.
 */
static int api(run *r, const char *method, const char *path, const char *body, json_t **doc,
               double *ms) {
  long status;
  json_t *d = NULL;
  double t0 = cli_now_ms();
  int rc = cli_request(r->c, method, path, body, &status, &d, NULL);
  if (ms)
    *ms = cli_now_ms() - t0;
  if (rc != 0)
    return rc;
  if (status >= 400) {
    char what[400];
    snprintf(what, sizeof(what), "bench lifecycle: %s %s", method, path);
    cli_print_error(what, status, d);
    json_decref(d);
    return CLI_EXIT_FAIL;
  }
  if (doc)
    *doc = d;
  else
    json_decref(d);
  return 0;
}

/* POST /api/models/NAME/ACTION. */
static int action(run *r, const char *act, const char *body, json_t **doc, double *ms) {
  char path[400];
  snprintf(path, sizeof(path), "%s/%s", r->model_path, act);
  return api(r, "POST", path, body, doc, ms);
}

static int status_of(run *r, json_t **doc) {
  return api(r, "GET", r->model_path, NULL, doc, NULL);
}

/* One device in /api/devices. */
typedef struct devmem {
  char name[64];
  uint64_t used, free_b, usable;
} devmem;

/* Every device's memory now into d[MAX_DEVICES]; *n of them. */
static int devices(run *r, devmem *d, int *n) {
  json_t *doc;
  *n = 0;
  int rc = api(r, "GET", "/api/devices", NULL, &doc, NULL);
  if (rc != 0)
    return rc;
  size_t i;
  json_t *e;
  json_array_foreach(json_object_get(doc, "devices"), i, e) {
    if (*n == MAX_DEVICES)
      break;
    devmem *m = &d[(*n)++];
    snprintf(m->name, sizeof(m->name), "%s", jstr(e, "name"));
    m->used = ju64(e, "used_bytes");
    m->free_b = ju64(e, "free_bytes");
    m->usable = ju64(e, "usable_bytes");
  }
  json_decref(doc);
  return 0;
}

/* The entry of the model's device, or NULL while it is not known. */
static const devmem *model_device(const run *r, const devmem *d, int n) {
  for (int i = 0; i < n; i++)
    if (r->device[0] && strcmp(d[i].name, r->device) == 0)
      return &d[i];
  return NULL;
}

/* The host tier's budget from /metrics (0 when it is not there). */
static uint64_t host_budget(run *r) {
  long status;
  json_t *doc = NULL;
  char *text = NULL;
  uint64_t budget = 0;
  if (cli_request(r->c, "GET", "/metrics", NULL, &status, &doc, &text) == 0 && status == 200 &&
      text) {
    /* modelbuf_host_tier_bytes{kind="budget"} N, with more labels after
     * kind (node="...") from daemons that run in a fleet. */
    const char *key = "\nmodelbuf_host_tier_bytes{kind=\"budget\"";
    const char *p = strstr(text, key);
    p = p ? strpbrk(p + 1, " \n") : NULL; /* label values hold no space: the value is next */
    if (p && *p == ' ')
      budget = strtoull(p + 1, NULL, 10);
  }
  json_decref(doc);
  free(text);
  return budget;
}

/* One probe through the proxy: its time, or -1 after printing why. */
static double probe(run *r) {
  const lc_opts *o = r->o;
  static const char *const headers[] = {"X-Modelbuf-Keep-Alive: -1", NULL};
  long status;
  double t0 = cli_now_ms();
  int rc = cli_call(r->c, o->probe_method, r->probe_path, o->probe_body, headers, &status);
  double took = cli_now_ms() - t0;
  if (rc != 0)
    return -1.0;
  if (status >= 400) {
    fprintf(stderr, "modelbuf: bench lifecycle: probe %s %s answered %ld\n", o->probe_method,
            r->probe_path, status);
    return -1.0;
  }
  return took;
}

/* k probes: the first into *first, the median of the others into *steady
 * (NULL: not kept). 0 or -1. */
static int probes(run *r, int k, double *first, double *steady) {
  double times[MAX_PROBES];
  int n = 0;
  if (r->o->probe_path == NULL)
    return 0;
  for (int i = 0; i < k; i++) {
    double ms = probe(r);
    if (ms < 0)
      return -1;
    if (i == 0 && first)
      *first = ms;
    else
      times[n++] = ms;
  }
  if (n > 0 && steady)
    *steady = lc_median(times, n);
  return 0;
}

/*
 * Memory of the model now, from a status: device bytes (vram_bytes; when
 * the daemon reports none for a resident model, what its device's free
 * memory went down by since the load) and host bytes (host_bytes).
 */
static void memory(run *r, json_t *st, uint64_t *dev, uint64_t *host) {
  *dev = ju64(st, "vram_bytes");
  *host = ju64(st, "host_bytes");
  const char *device = json_string_value(json_object_get(st, "device"));
  if (device && !r->device[0])
    snprintf(r->device, sizeof(r->device), "%s", device);
  /* A running worker's resident memory measured now (vram_bytes and
   * host_bytes date from the last load or restore): on the host device it
   * is the model's while resident; elsewhere, or offloaded by its hooks,
   * it is host memory. */
  json_t *rss = json_object_get(st, "rss_bytes");
  if (json_is_integer(rss)) {
    uint64_t now = (uint64_t)json_integer_value(rss);
    const char *loc = jstr(st, "location");
    if (strcmp(loc, "gpu") == 0 && strcmp(r->device, "host") == 0)
      *dev = now;
    else if (strcmp(loc, "gpu") == 0 || strcmp(loc, "cpu") == 0)
      *host = now;
  }
  if (*dev == 0 && strcmp(jstr(st, "location"), "gpu") == 0) {
    devmem d[MAX_DEVICES];
    int n;
    const devmem *m = devices(r, d, &n) == 0 ? model_device(r, d, n) : NULL;
    if (m && m->free_b < r->free_before)
      *dev = r->free_before - m->free_b;
  }
}

/* Keeps the highest figures; returns the steady footprint of the sample
 * (the two tiers are one on the host device). */
static double sample(run *r, json_t *st, lc_cycle *c) {
  uint64_t dev, host;
  memory(r, st, &dev, &host);
  if (dev > c->dev_peak)
    c->dev_peak = dev;
  if (host > c->host_peak)
    c->host_peak = host;
  c->dev_steady = dev;
  c->host_steady = host;
  if (strcmp(r->device, "host") == 0)
    return (double)(dev > host ? dev : host);
  return (double)dev + (double)host;
}

#define CHECK(call)                                                                            \
  do {                                                                                         \
    int rc_ = (call);                                                                          \
    if (rc_ != 0) {                                                                            \
      json_decref(st);                                                                         \
      return rc_;                                                                              \
    }                                                                                          \
  } while (0)

/* The status after GET into st (the previous one dropped). */
#define REFRESH()                                                                              \
  do {                                                                                         \
    json_decref(st);                                                                           \
    st = NULL;                                                                                 \
    CHECK(status_of(r, &st));                                                                  \
  } while (0)

/*
 * One residency as the in-process driver runs it: load, probes, `restores`
 * rounds of offload, restore and a probe, unload; the footprint after the
 * load and after every restore gives the growth per restore. 0, or the
 * exit status of a failed step.
 */
static int cycle(run *r, lc_cycle *c) {
  const lc_opts *o = r->o;
  json_t *st = NULL;
  memset(c, 0, sizeof(*c));
  c->first_ms = c->steady_ms = c->offload_ms = c->restore_ms = LC_NONE;
  /* Every device before the load: the model's is known once it is loaded. */
  devmem before[MAX_DEVICES], after[MAX_DEVICES];
  int n_before, n_after;
  uint64_t dev0, host0;
  CHECK(devices(r, before, &n_before));
  REFRESH();
  memory(r, st, &dev0, &host0);

  json_decref(st);
  st = NULL;
  CHECK(action(r, "load", FOREVER, &st, &c->load_ms));
  r->device[0] = '\0';
  r->free_before = 0; /* no free-memory fallback until the device is known */
  uint64_t dev_now, host_now;
  memory(r, st, &dev_now, &host_now); /* learns the device */
  const devmem *mine = model_device(r, before, n_before);
  r->free_before = mine ? mine->free_b : 0;
  if (probes(r, o->probes, &c->first_ms, &c->steady_ms) != 0) {
    json_decref(st);
    return CLI_EXIT_FAIL;
  }
  REFRESH();
  double series[MAX_RESTORES + 1];
  int ns = 0;
  series[ns++] = sample(r, st, c);

  double off[MAX_RESTORES], res[MAX_RESTORES];
  int nr = 0;
  for (int k = 0; k < o->restores; k++) {
    char path[400];
    long status;
    json_t *doc = NULL;
    snprintf(path, sizeof(path), "%s/offload", r->model_path);
    double t0 = cli_now_ms();
    CHECK(cli_request(r->c, "POST", path, NULL, &status, &doc, NULL));
    off[nr] = cli_now_ms() - t0;
    if (status == 409 && nr == 0 && k == 0 &&
        strcmp(jstr(json_object_get(doc, "error"), "code"), "not_supported") == 0) {
      json_decref(doc); /* it cannot offload: no offload/restore figures */
      break;
    }
    if (status >= 400) {
      char what[400];
      snprintf(what, sizeof(what), "bench lifecycle: POST %s", path);
      cli_print_error(what, status, doc);
      json_decref(doc);
      json_decref(st);
      return CLI_EXIT_FAIL;
    }
    uint64_t dev, host;
    memory(r, doc, &dev, &host);
    if (host > c->host_offloaded)
      c->host_offloaded = host;
    if (host > c->host_peak) /* the host tier is this model's too */
      c->host_peak = host;
    json_decref(doc);
    CHECK(action(r, "load", FOREVER, NULL, &res[nr]));
    nr++;
    if (probes(r, o->probes > 1 ? 1 : o->probes, NULL, NULL) != 0) {
      json_decref(st);
      return CLI_EXIT_FAIL;
    }
    REFRESH();
    series[ns++] = sample(r, st, c);
  }
  if (nr > 0) {
    c->offload_ms = lc_median(off, nr);
    c->restore_ms = lc_median(res, nr);
  }
  c->restore_growth = lc_restore_growth(series, ns);
  c->restores = nr;

  json_decref(st);
  st = NULL;
  CHECK(action(r, "unload", NULL, &st, &c->unload_ms));
  /* What stayed: the daemon's figures for the model against those before
   * the load, and the device's used memory against before the load. */
  uint64_t dev1 = ju64(st, "vram_bytes"), host1 = ju64(st, "host_bytes");
  c->os_residue = (int64_t)(dev1 + host1) - (int64_t)(dev0 + host0);
  CHECK(devices(r, after, &n_after));
  const devmem *was = model_device(r, before, n_before), *is = model_device(r, after, n_after);
  c->dev_residue = was && is ? (int64_t)is->used - (int64_t)was->used : 0;
  if (is)
    r->usable = is->usable;
  json_decref(st);
  return 0;
}

/* Puts the model back as it was found: ready or offloaded with its
 * keep-alive, else unloaded (as the cycles leave it). */
static void restore_state(run *r, const char *state, json_t *keep_alive) {
  int ready = strcmp(state, "ready") == 0, offloaded = strcmp(state, "offloaded") == 0;
  json_t *st = NULL;
  if (status_of(r, &st) == 0 && strcmp(jstr(st, "state"), "unloaded") != 0 &&
      action(r, "unload", NULL, NULL, NULL) != 0)
    fprintf(stderr, "modelbuf: bench lifecycle: %s could not be unloaded\n", r->o->model);
  json_decref(st);
  if (!ready && !offloaded)
    return;
  char body[96];
  if (json_is_number(keep_alive))
    snprintf(body, sizeof(body), "{\"keep_alive\": %.3f}", json_number_value(keep_alive));
  else
    snprintf(body, sizeof(body), "{}");
  int rc = action(r, "load", body, NULL, NULL);
  if (rc == 0 && offloaded)
    rc = action(r, "offload", NULL, NULL, NULL);
  if (rc != 0)
    fprintf(stderr, "modelbuf: bench lifecycle: %s could not be put back %s\n", r->o->model,
            state);
  else if (!r->o->json)
    fprintf(stderr, "%s is %s again, as it was before the benchmark\n", r->o->model, state);
}

int lc_bench_daemon(const lc_opts *o, const cli_client *c) {
  run r;
  memset(&r, 0, sizeof(r));
  r.o = o;
  r.c = c;
  char seg[200];
  cli_name_seg(o->model, seg, sizeof(seg));
  snprintf(r.model_path, sizeof(r.model_path), "/api/models/%s", seg);
  if (o->probe_path)
    snprintf(r.probe_path, sizeof(r.probe_path), "/m/%s%s%s", seg,
             o->probe_path[0] == '/' ? "" : "/", o->probe_path);

  json_t *st0 = NULL;
  int rc = status_of(&r, &st0);
  if (rc != 0)
    return rc;
  /* A tensors model has no worker to answer a health path: its default
   * probe lists its tensors (loading them first, under a lease). */
  if (o->probe_default && strcmp(jstr(st0, "backend"), "tensors") == 0)
    snprintf(r.probe_path, sizeof(r.probe_path), "/m/%s/tensors", seg);
  char state0[32];
  snprintf(state0, sizeof(state0), "%s", jstr(st0, "state"));
  json_t *ka0 = json_incref(json_object_get(st0, "keep_alive_s"));
  if (ju64(st0, "inflight") > 0 || ju64(st0, "queued") > 0)
    fprintf(stderr, "modelbuf: bench lifecycle: %s is serving requests now: they wait for the "
                    "unload and mix into the figures\n", o->model);

  /* The files to drop: the ones the daemon reports, else the configuration's. */
  const char *files[64];
  size_t n_files = 0;
  size_t i;
  json_t *f;
  json_array_foreach(json_object_get(st0, "files"), i, f) {
    if (json_is_string(f) && n_files < 64)
      files[n_files++] = json_string_value(f);
  }
  for (i = 0; n_files == 0 && i < o->n_files && i < 64; i++)
    files[i] = o->files[i];
  if (n_files == 0)
    n_files = o->n_files < 64 ? o->n_files : 64;

  lc_cycle *cy = calloc((size_t)o->cycles, sizeof(*cy));
  int cold = 0;
  char note[400] = "";
  if (cy == NULL) {
    rc = CLI_EXIT_FAIL;
    goto done;
  }
  if (strcmp(state0, "unloaded") != 0 && (rc = action(&r, "unload", NULL, NULL, NULL)) != 0)
    goto done;
  if (!o->cold) {
    snprintf(note, sizeof(note), "--no-cold");
  } else if (n_files == 0) {
    snprintf(note, sizeof(note), "the daemon does not report the model's files; "
                                 "--config with its section names them");
  } else {
    char why[300];
    if (lc_drop_page_cache(files, n_files, why, sizeof(why)) < 0)
      snprintf(note, sizeof(note), "its files cannot be dropped from the page cache here (%s)",
               why);
    else
      cold = 1;
  }
  if (!cold && !o->json)
    fprintf(stderr, "modelbuf: bench lifecycle: the first load is not cold: %s\n", note);

  for (int k = 0; rc == 0 && k < o->cycles; k++) {
    rc = cycle(&r, &cy[k]);
    if (rc == 0 && !o->json)
      fprintf(stderr, "cycle %d: load %.1f ms, unload %.1f ms\n", k, cy[k].load_ms,
              cy[k].unload_ms);
  }
  if (rc == 0) {
    char source[600];
    snprintf(source, sizeof(source), "modelbufd at %s%s",
             c->unix_path[0] ? "unix:" : c->url, c->unix_path);
    lc_input in = {o->model, r.device[0] ? r.device : "?", cold, r.usable, host_budget(&r),
                   cy, o->cycles, source, cold ? NULL : note, jstr(st0, "backend")};
    rc = o->report ? o->report(&in, o->report_arg) : lc_output(&in, o->json, o->chart);
  }
done:
  if (rc != CLI_EXIT_DOWN)
    restore_state(&r, state0, ka0);
  json_decref(ka0);
  json_decref(st0);
  free(cy);
  return rc;
}
