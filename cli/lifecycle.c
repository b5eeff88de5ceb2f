/*
 * lifecycle.c - figures, leak verdict and advice of `modelbuf bench
 * lifecycle`, and its three outputs (table, JSON, chart).
 *
 * The advice follows a few plain rules, each stated with the figures that
 * triggered it (docs/LIFECYCLE.md explains them):
 *  - lazy load or pre-warm, by the cached load time: < 2 s, 2-5 s, 5-10 s, > 10 s;
 *  - offload or unload when idle: offload when a restore is faster than a
 *    load and the host copy fits the host budget;
 *  - the break-even keep-alive: holding a model that uses a share s of the
 *    device idle for t costs s * t of device time; a reload costs the
 *    device's (serialised) load slot for the reload time r. They are equal
 *    at t = r / s;
 *  - isolation: when less than 70% of the memory comes back after an
 *    unload in place, run the model as a worker process;
 *  - a memory reservation of 1.5x the peak.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli.h"
#include "lifecycle.h"

double lc_slope(const double *y, int n) {
  if (n < 2)
    return 0.0;
  double mx = (n - 1) / 2.0, my = 0.0;
  for (int i = 0; i < n; i++)
    my += y[i];
  my /= n;
  double sxy = 0.0, sxx = 0.0;
  for (int i = 0; i < n; i++) {
    sxy += (i - mx) * (y[i] - my);
    sxx += (i - mx) * (i - mx);
  }
  return sxx > 0.0 ? sxy / sxx : 0.0;
}

double lc_restore_growth(const double *y, int n) {
  return n >= 3 ? lc_slope(y + 1, n - 1) : lc_slope(y, n);
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

double lc_median(double *v, int n) {
  if (n <= 0)
    return LC_NONE;
  qsort(v, (size_t)n, sizeof(v[0]), cmp_double);
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2.0;
}

int lc_drop_page_cache(const char *const *files, size_t n, char *msg, size_t len) {
  int dropped = 0;
  for (size_t i = 0; i < n; i++) {
    int fd = open(files[i], O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      snprintf(msg, len, "%s: %s", files[i], strerror(errno));
      return -1;
    }
    if (posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) == 0)
      dropped++;
    close(fd);
  }
  return dropped;
}

/* Median of the measured values of one field over cycles [from, n). */
static double median_of(const lc_input *in, size_t off, int from) {
  double v[256];
  int k = 0;
  for (int i = from; i < in->n && k < 256; i++) {
    double x = *(const double *)((const char *)&in->cycles[i] + off);
    if (x >= 0.0)
      v[k++] = x;
  }
  return lc_median(v, k);
}

#define MEDIAN(in, field, from) median_of(in, offsetof(lc_cycle, field), from)

static double pct_back(uint64_t footprint, int64_t residue) {
  if (footprint == 0)
    return 100.0;
  double kept = residue > 0 ? (double)residue : 0.0;
  double p = 100.0 * (1.0 - kept / (double)footprint);
  return p < 0.0 ? 0.0 : p > 100.0 ? 100.0 : p;
}

static void add_advice(lc_report *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void add_advice(lc_report *r, const char *fmt, ...) {
  if (r->n_advice >= LC_MAX_ADVICE)
    return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(r->advice[r->n_advice++], sizeof(r->advice[0]), fmt, ap);
  va_end(ap);
}

static const char *secs(double ms, char *buf, size_t len) {
  if (ms < 0)
    snprintf(buf, len, "-");
  else if (ms < 1000)
    snprintf(buf, len, "%.0f ms", ms);
  else
    snprintf(buf, len, "%.1f s", ms / 1000.0);
  return buf;
}

static const char *dur(int64_t ms, char *buf, size_t len) {
  if (ms >= 3600000)
    snprintf(buf, len, "%.0fh", ms / 3600000.0);
  else if (ms >= 60000)
    snprintf(buf, len, "%.0fm", ms / 60000.0);
  else
    snprintf(buf, len, "%.0fs", ms / 1000.0);
  return buf;
}

static void advise(const lc_input *in, lc_report *r) {
  char a[32], b[32], c[32], d[32];
  double load = r->warm_load_ms >= 0 ? r->warm_load_ms : r->cold_load_ms;
  if (load < 0)
    load = 0;

  /* Lazy load or pre-warm. */
  secs(load, a, sizeof(a));
  if (load < 2000)
    add_advice(r, "Load lazily: a cached load takes %s, so the first request hardly notices.", a);
  else if (load < 5000)
    add_advice(r, "Load lazily, but keep it resident through busy hours: the first request "
                  "after a load waits %s.", a);
  else if (load < 10000)
    add_advice(r, "Pre-warm it (POST /api/models/%s/load before traffic): a first request "
                  "would wait %s for the load.", in->model, a);
  else
    add_advice(r, "Pre-warm it and consider `pinned: true` while it is busy: every load "
                  "costs %s.", a);

  /* Offload or unload when idle. */
  uint64_t host_copy = 0;
  for (int i = 0; i < in->n; i++)
    if (in->cycles[i].host_offloaded > host_copy)
      host_copy = in->cycles[i].host_offloaded;
  r->offload_wins = 0;
  if (r->restore_ms < 0) {
    add_advice(r, "Unload when idle: it cannot offload (no offload hook). List its weight "
                  "`files:` so they stay in the page cache while it is stopped.");
  } else if (r->restore_ms >= load) {
    add_advice(r, "Unload when idle (`offload: false`): a restore (%s) is no faster than "
                  "a load (%s).", secs(r->restore_ms, a, sizeof(a)), secs(load, b, sizeof(b)));
  } else if (in->host_budget > 0 && host_copy > in->host_budget) {
    add_advice(r, "Unload when idle: its host copy (%s) does not fit the host budget (%s).",
               cli_fmt_bytes(host_copy, a, sizeof(a)),
               cli_fmt_bytes(in->host_budget, b, sizeof(b)));
  } else {
    r->offload_wins = 1;
    add_advice(r, "Offload when idle (`offload: true`): a restore takes %s against %s for a "
                  "load (%.1fx faster), holding %s of host RAM.",
               secs(r->restore_ms, a, sizeof(a)), secs(load, b, sizeof(b)),
               r->restore_ms > 0 ? load / r->restore_ms : 0.0,
               cli_fmt_bytes(host_copy, c, sizeof(c)));
  }

  /* Break-even keep-alive: reload cost over the share of the device held. */
  double reload = r->offload_wins ? r->restore_ms : load;
  double share = in->device_usable > 0 && r->dev_peak > 0
                     ? (double)r->dev_peak / (double)in->device_usable
                     : 1.0;
  if (share > 1.0)
    share = 1.0;
  double ka = reload / share;
  if (ka < 1000)
    ka = 1000;
  if (ka > 3600000)
    ka = 3600000;
  r->keep_alive_ms = (int64_t)ka;
  add_advice(r, "Keep-alive about %s: holding its %s (%.0f%% of the device) idle that long "
                "costs as much device time as one %s (%s).",
             dur(r->keep_alive_ms, a, sizeof(a)), cli_fmt_bytes(r->dev_peak, b, sizeof(b)),
             share * 100.0, r->offload_wins ? "restore" : "load", secs(reload, d, sizeof(d)));

  /* Isolation. */
  double back = r->reclaimed_dev_pct < r->reclaimed_os_pct ? r->reclaimed_dev_pct
                                                           : r->reclaimed_os_pct;
  if (back < 70.0)
    add_advice(r, "Run it as a worker process: only %.0f%% of its memory came back after an "
                  "unload in place; a worker's memory returns when its process exits.", back);
  else
    add_advice(r, "In-process or worker both work: %.0f%% of its memory came back after "
                  "each unload.", back);

  /* Reservation. */
  r->reserve_bytes = r->footprint + r->footprint / 2;
  add_advice(r, "Reserve %s for it (1.5x its peak of %s): `vram: %s` in its section.",
             cli_fmt_bytes(r->reserve_bytes, a, sizeof(a)),
             cli_fmt_bytes(r->footprint, b, sizeof(b)), cli_fmt_bytes(r->reserve_bytes, c,
                                                                       sizeof(c)));
}

void lc_analyse(const lc_input *in, lc_report *r) {
  memset(r, 0, sizeof(*r));
  r->cold_load_ms = in->cold && in->n > 0 ? in->cycles[0].load_ms : LC_NONE;
  r->warm_load_ms = MEDIAN(in, load_ms, in->cold ? 1 : 0);
  r->first_ms = MEDIAN(in, first_ms, 0);
  r->steady_ms = MEDIAN(in, steady_ms, 0);
  r->offload_ms = MEDIAN(in, offload_ms, 0);
  r->restore_ms = MEDIAN(in, restore_ms, 0);
  r->unload_ms = MEDIAN(in, unload_ms, 0);

  double steady[256] = {0}, residue[256] = {0};
  int n = in->n < 256 ? in->n : 256;
  /* On the host device the device bytes are host RAM: one figure, not two. */
  int host_dev = in->device && strcmp(in->device, "host") == 0;
  for (int i = 0; i < n; i++) {
    const lc_cycle *c = &in->cycles[i];
    if (c->dev_peak > r->dev_peak)
      r->dev_peak = c->dev_peak;
    if (c->host_peak > r->host_peak)
      r->host_peak = c->host_peak;
    /* On the host device the device bytes are host RAM: one figure. */
    steady[i] = host_dev ? (double)(c->dev_steady > c->host_steady ? c->dev_steady
                                                                    : c->host_steady)
                         : (double)(c->dev_steady + c->host_steady);
    residue[i] = (double)(host_dev ? c->os_residue : c->dev_residue + c->os_residue);
  }
  if (n > 0) {
    r->dev_steady = in->cycles[n - 1].dev_steady;
    r->host_steady = in->cycles[n - 1].host_steady;
  }
  /* What the model holds on its device, by the backend's own measure; on
   * the host device, when the backend measures nothing, the RSS. Not the
   * RSS when there is a device figure: in a process that holds both tiers
   * in host RAM (a tensors model keeps its offload copy while resident) the
   * RSS counts the host tier as well. */
  r->footprint = r->dev_peak > 0 || !host_dev ? r->dev_peak : r->host_peak;
  if (n > 0) {
    const lc_cycle *last = &in->cycles[n - 1];
    r->reclaimed_dev_pct = pct_back(r->dev_peak, last->dev_residue);
    r->reclaimed_os_pct =
        pct_back(host_dev ? r->footprint : r->host_peak, last->os_residue);
  } else {
    r->reclaimed_dev_pct = r->reclaimed_os_pct = 100.0;
  }

  /* The first cycle warms the allocator, thread stacks and caches up; with
   * four cycles or more the slope is taken from the second one on. */
  int skip = n >= 4 ? 1 : 0;
  r->slope_bytes = lc_slope(steady + skip, n - skip);
  r->slope_residue = lc_slope(residue + skip, n - skip);
  double per[256] = {0};
  for (int i = 0; i < n; i++)
    per[i] = in->cycles[i].restore_growth;
  qsort(per, (size_t)n, sizeof(per[0]), cmp_double);
  r->growth_restore = n > 0 ? per[n / 2] : 0.0;
  double limit = LC_LEAK_MIN_FRACTION * (double)(r->dev_peak + r->host_peak);
  if (limit < LC_LEAK_MIN_SLOPE)
    limit = LC_LEAK_MIN_SLOPE;
  char a[32], b[32];
  if (n < 3) {
    r->leaks = -1;
    snprintf(r->verdict, sizeof(r->verdict), "unknown: %d cycle%s, a slope needs 3 or more", n,
             n == 1 ? "" : "s");
  } else {
    double worst = r->slope_bytes > r->slope_residue ? r->slope_bytes : r->slope_residue;
    int per_restore = r->growth_restore > limit && r->growth_restore > worst;
    if (per_restore)
      worst = r->growth_restore;
    r->leaks = worst > limit;
    snprintf(r->verdict, sizeof(r->verdict), "%s: %s per %s over %d cycles (limit %s)",
             r->leaks ? "FAIL, memory grows" : "pass",
             cli_fmt_bytes(worst > 0 ? (uint64_t)worst : 0, a, sizeof(a)),
             per_restore ? "restore" : "cycle", n, cli_fmt_bytes((uint64_t)limit, b, sizeof(b)));
  }
  /* The run's growth, for the tiers. */
  double g_steady = n - skip >= 2 ? steady[n - 1] - steady[skip] : 0.0;
  double g_residue = 0.0;
  int restores = 0;
  for (int i = 0; i < n; i++) {
    g_residue += residue[i];
    if (in->cycles[i].restores > restores)
      restores = in->cycles[i].restores;
  }
  double g_restore = r->growth_restore * restores;
  double run = g_steady > g_residue ? g_steady : g_residue;
  if (g_restore > run)
    run = g_restore;
  r->growth_run_bytes = run > 0.0 ? run : 0.0;
  r->tier = r->growth_run_bytes < LC_TIER_CAUTION_BYTES ? "PASS"
            : r->growth_run_bytes <= LC_TIER_FAIL_BYTES ? "CAUTION"
                                                        : "FAIL";
  advise(in, r);
  if (r->leaks == 1)
    add_advice(r, "It leaks: fix it before it shares a GPU, or have it unloaded rather than "
                  "offloaded when idle so every residency starts from a fresh process.");
}

void lc_print(FILE *f, const lc_input *in, const lc_report *r) {
  char a[32], b[32], c[32], d[32];
  fprintf(f, "model %s on %s%s%s, %d cycle%s", in->model, in->device ? in->device : "?",
          in->source ? " through " : "", in->source ? in->source : "", in->n,
          in->n == 1 ? "" : "s");
  if (in->cold)
    fprintf(f, " (first load cold: files dropped from the page cache)");
  else if (in->cold_note)
    fprintf(f, " (first load not cold: %s)", in->cold_note);
  fprintf(f, "\n\n");
  fprintf(f, "  %-22s %s\n", "cold load", secs(r->cold_load_ms, a, sizeof(a)));
  fprintf(f, "  %-22s %s\n", "warm load", secs(r->warm_load_ms, a, sizeof(a)));
  fprintf(f, "  %-22s %s\n", "first inference", secs(r->first_ms, a, sizeof(a)));
  fprintf(f, "  %-22s %s\n", "steady inference", secs(r->steady_ms, a, sizeof(a)));
  fprintf(f, "  %-22s %s\n", "offload", secs(r->offload_ms, a, sizeof(a)));
  fprintf(f, "  %-22s %s\n", "restore", secs(r->restore_ms, a, sizeof(a)));
  fprintf(f, "  %-22s %s\n", "unload", secs(r->unload_ms, a, sizeof(a)));
  fprintf(f, "  %-22s peak %s, steady %s\n", "device memory",
          cli_fmt_bytes(r->dev_peak, a, sizeof(a)), cli_fmt_bytes(r->dev_steady, b, sizeof(b)));
  /* Through a daemon the host figure is its host_bytes (the host tier). */
  fprintf(f, "  %-22s peak %s, steady %s\n", in->source ? "host memory" : "host memory (RSS)",
          cli_fmt_bytes(r->host_peak, c, sizeof(c)), cli_fmt_bytes(r->host_steady, d, sizeof(d)));
  fprintf(f, "  %-22s device %.0f%%, OS %.0f%%\n", "reclaimed by unload", r->reclaimed_dev_pct,
          r->reclaimed_os_pct);
  fprintf(f, "  %-22s %s\n", "leak check", r->verdict);
  fprintf(f, "  %-22s %s: %s over the run (PASS < 10 MiB, CAUTION 10-50 MiB, FAIL > 50 MiB)\n\n",
          "leak over the run", r->tier,
          cli_fmt_bytes((uint64_t)r->growth_run_bytes, a, sizeof(a)));
  fprintf(f, "cycle   load ms  first ms  offload ms  restore ms  unload ms  device peak  host peak"
             "  device left  RSS left\n");
  for (int i = 0; i < in->n; i++) {
    const lc_cycle *cy = &in->cycles[i];
    char e[32];
    fprintf(f, "%5d %9.1f %9.1f %11.1f %11.1f %10.1f %12s %10s %s%12s %s%9s\n", i, cy->load_ms,
            cy->first_ms, cy->offload_ms, cy->restore_ms, cy->unload_ms,
            cli_fmt_bytes(cy->dev_peak, a, sizeof(a)), cli_fmt_bytes(cy->host_peak, b, sizeof(b)),
            cy->dev_residue < 0 ? "-" : " ",
            cli_fmt_bytes((uint64_t)llabs(cy->dev_residue), c, sizeof(c)),
            cy->os_residue < 0 ? "-" : " ",
            cli_fmt_bytes((uint64_t)llabs(cy->os_residue), e, sizeof(e)));
  }
  fprintf(f, "\nadvice:\n");
  for (int i = 0; i < r->n_advice; i++)
    fprintf(f, "  - %s\n", r->advice[i]);
}

/* A JSON string literal of s. */
static void json_str(FILE *f, const char *s) {
  fputc('"', f);
  for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++) {
    if (*p == '"' || *p == '\\')
      fprintf(f, "\\%c", *p);
    else if (*p < 0x20)
      fprintf(f, "\\u%04x", *p);
    else
      fputc(*p, f);
  }
  fputc('"', f);
}

static void json_ms(FILE *f, const char *key, double ms, int comma) {
  if (ms < 0)
    fprintf(f, "\"%s\":null", key);
  else
    fprintf(f, "\"%s\":%.3f", key, ms);
  if (comma)
    fputc(',', f);
}

char *lc_json(const lc_input *in, const lc_report *r) {
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  if (f == NULL)
    return NULL;
  fputs("{\"model\":", f);
  json_str(f, in->model);
  fputs(",\"device\":", f);
  json_str(f, in->device);
  fputs(",\"source\":", f);
  if (in->source)
    json_str(f, in->source);
  else
    fputs("null", f);
  fprintf(f, ",\"cycles\":%d,\"cold\":%s,\"cold_note\":", in->n, in->cold ? "true" : "false");
  if (!in->cold && in->cold_note)
    json_str(f, in->cold_note);
  else
    fputs("null", f);
  fputc(',', f);
  json_ms(f, "cold_load_ms", r->cold_load_ms, 1);
  json_ms(f, "load_ms", r->warm_load_ms, 1);
  json_ms(f, "first_inference_ms", r->first_ms, 1);
  json_ms(f, "steady_inference_ms", r->steady_ms, 1);
  json_ms(f, "offload_ms", r->offload_ms, 1);
  json_ms(f, "restore_ms", r->restore_ms, 1);
  json_ms(f, "unload_ms", r->unload_ms, 1);
  fprintf(f,
          "\"footprint_bytes\":%llu,\"device_peak_bytes\":%llu,\"device_steady_bytes\":%llu,"
          "\"host_peak_bytes\":%llu,\"host_steady_bytes\":%llu,"
          "\"reclaimed_device_pct\":%.1f,\"reclaimed_os_pct\":%.1f,"
          "\"growth_bytes_per_cycle\":%.0f,\"residue_growth_bytes_per_cycle\":%.0f,"
          "\"growth_bytes_per_restore\":%.0f,",
          (unsigned long long)r->footprint, (unsigned long long)r->dev_peak,
          (unsigned long long)r->dev_steady, (unsigned long long)r->host_peak,
          (unsigned long long)r->host_steady, r->reclaimed_dev_pct, r->reclaimed_os_pct,
          r->slope_bytes, r->slope_residue, r->growth_restore);
  fprintf(f, "\"leak\":%s,\"verdict\":", r->leaks == 1 ? "true" : r->leaks == 0 ? "false" : "null");
  json_str(f, r->verdict);
  fprintf(f, ",\"leak_tier\":\"%s\",\"growth_run_bytes\":%.0f,\"backend\":", r->tier,
          r->growth_run_bytes);
  if (in->backend)
    json_str(f, in->backend);
  else
    fputs("null", f);
  fprintf(f, ",\"keep_alive_ms\":%lld,\"reserve_bytes\":%llu,\"offload_when_idle\":%s,",
          (long long)r->keep_alive_ms, (unsigned long long)r->reserve_bytes,
          r->offload_wins ? "true" : "false");
  fputs("\"advice\":[", f);
  for (int i = 0; i < r->n_advice; i++) {
    if (i)
      fputc(',', f);
    json_str(f, r->advice[i]);
  }
  fputs("],\"per_cycle\":[", f);
  for (int i = 0; i < in->n; i++) {
    const lc_cycle *c = &in->cycles[i];
    fputs(i ? ",{" : "{", f);
    json_ms(f, "load_ms", c->load_ms, 1);
    json_ms(f, "first_inference_ms", c->first_ms, 1);
    json_ms(f, "offload_ms", c->offload_ms, 1);
    json_ms(f, "restore_ms", c->restore_ms, 1);
    json_ms(f, "unload_ms", c->unload_ms, 1);
    fprintf(f,
            "\"device_peak_bytes\":%llu,\"device_steady_bytes\":%llu,\"host_peak_bytes\":%llu,"
            "\"host_steady_bytes\":%llu,\"host_offloaded_bytes\":%llu,"
            "\"device_residue_bytes\":%lld,\"os_residue_bytes\":%lld}",
            (unsigned long long)c->dev_peak, (unsigned long long)c->dev_steady,
            (unsigned long long)c->host_peak, (unsigned long long)c->host_steady,
            (unsigned long long)c->host_offloaded, (long long)c->dev_residue,
            (long long)c->os_residue);
  }
  fputs("]}", f);
  if (fclose(f) != 0) {
    free(buf);
    return NULL;
  }
  return buf;
}

int lc_output(const lc_input *in, int json, const char *chart) {
  lc_report r;
  lc_analyse(in, &r);
  if (json) {
    char *j = lc_json(in, &r);
    if (j) {
      printf("%s\n", j);
      free(j);
    }
  } else {
    lc_print(stdout, in, &r);
  }
  int status = CLI_EXIT_OK;
  if (chart) {
    char err[256];
    if (lc_chart(chart, in, err, sizeof(err)) != 0) {
      fprintf(stderr, "modelbuf: bench lifecycle: chart: %s\n", err);
      status = CLI_EXIT_FAIL;
    } else if (!json) {
      printf("\nchart: %s\n", chart);
    }
  }
  fflush(stdout);
  if ((r.leaks == 1 || strcmp(r.tier, "FAIL") == 0) && status == CLI_EXIT_OK)
    status = 4; /* a leak is a failing verdict: scripts can tell it apart */
  return status;
}

int lc_chart(const char *png, const lc_input *in, char *err, size_t err_len) {
  char data[] = "/tmp/modelbuf-lifecycle-XXXXXX";
  int fd = mkstemp(data);
  if (fd < 0) {
    snprintf(err, err_len, "cannot make a temporary file for the chart");
    return -1;
  }
  FILE *f = fdopen(fd, "w");
  if (f == NULL) {
    close(fd);
    unlink(data);
    snprintf(err, err_len, "cannot write the chart's data");
    return -1;
  }
  const double mib = 1024.0 * 1024.0;
  for (int i = 0; i < in->n; i++) {
    const lc_cycle *c = &in->cycles[i];
    double left = (double)c->os_residue;
    fprintf(f, "%d %.3f %.3f %.3f %.3f %.3f %.3f\n", i, c->dev_peak / mib, c->dev_steady / mib,
            c->host_peak / mib, c->host_steady / mib, c->host_offloaded / mib,
            (left > 0 ? left : 0) / mib);
  }
  fclose(f);
  char script[] = "/tmp/modelbuf-lifecycle-gp-XXXXXX";
  int sfd = mkstemp(script);
  FILE *s = sfd >= 0 ? fdopen(sfd, "w") : NULL;
  if (s == NULL) {
    if (sfd >= 0)
      close(sfd);
    unlink(data);
    snprintf(err, err_len, "cannot write the chart's script");
    return -1;
  }
  fprintf(s,
          "set terminal png size 960,540\n"
          "set output '%s'\n"
          "set title 'modelbuf bench lifecycle: %s on %s, memory per tier across cycles'\n"
          "set xlabel 'cycle'\nset ylabel 'MiB'\nset key outside right\nset grid\n"
          "set xrange [-0.5:%d.5]\nset yrange [0:*]\n"
          "plot '%s' using 1:2 with linespoints title 'device peak', "
          "'' using 1:3 with linespoints title 'device steady', "
          "'' using 1:4 with linespoints title 'host peak (RSS)', "
          "'' using 1:5 with linespoints title 'host steady', "
          "'' using 1:6 with linespoints title 'host tier (offloaded)', "
          "'' using 1:7 with linespoints title 'RSS left after unload'\n",
          png, in->model, in->device ? in->device : "?", in->n > 0 ? in->n - 1 : 0, data);
  fclose(s);
  pid_t pid = fork();
  if (pid == 0) {
    int devnull = open("/dev/null", O_WRONLY);
    if (devnull >= 0)
      dup2(devnull, 1);
    execlp("gnuplot", "gnuplot", script, (char *)NULL);
    _exit(127);
  }
  int status = 0;
  if (pid > 0)
    waitpid(pid, &status, 0);
  unlink(data);
  unlink(script);
  if (pid < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    snprintf(err, err_len, "%s",
             pid > 0 && WIFEXITED(status) && WEXITSTATUS(status) == 127
                 ? "gnuplot is not installed (Debian: gnuplot-nox; scripts/deps.sh)"
                 : "gnuplot failed to draw the chart");
    return -1;
  }
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Several models compared                                                   */

static void copy_str(char *dst, size_t len, const char *src) {
  snprintf(dst, len, "%s", src ? src : "");
}

int lc_collect(const lc_input *in, void *arg) {
  lc_run *r = arg;
  copy_str(r->model, sizeof(r->model), in->model);
  copy_str(r->device, sizeof(r->device), in->device);
  copy_str(r->backend, sizeof(r->backend), in->backend);
  copy_str(r->source, sizeof(r->source), in->source);
  copy_str(r->note, sizeof(r->note), in->cold_note);
  r->cycles = in->n > 0 ? malloc((size_t)in->n * sizeof(*r->cycles)) : NULL;
  if (in->n > 0 && r->cycles == NULL)
    return CLI_EXIT_FAIL;
  if (in->n > 0)
    memcpy(r->cycles, in->cycles, (size_t)in->n * sizeof(*r->cycles));
  r->in = *in;
  r->in.model = r->model;
  r->in.device = r->device;
  r->in.backend = in->backend ? r->backend : NULL;
  r->in.source = in->source ? r->source : NULL;
  r->in.cold_note = in->cold_note ? r->note : NULL;
  r->in.cycles = r->cycles;
  lc_analyse(&r->in, &r->rep);
  r->status = 0;
  return CLI_EXIT_OK;
}

void lc_run_free(lc_run *r) {
  free(r->cycles);
  r->cycles = NULL;
}

/* What came back after the unloads: the lower of the device's and the OS's
 * figures. */
static double reclaimed(const lc_report *r) {
  return r->reclaimed_dev_pct < r->reclaimed_os_pct ? r->reclaimed_dev_pct : r->reclaimed_os_pct;
}

/* The memory plan of one device: models[] are the indexes of its runs. */
typedef struct plan {
  const char *device;
  uint64_t usable;
  int largest;            /* index into runs */
  uint64_t reserve;       /* 1.5x the largest footprint */
  uint64_t all_reserve;   /* 1.5x the sum of the footprints */
} plan;

static uint64_t times15(uint64_t b) { return b + b / 2; }

static int make_plans(const lc_run *runs, int n, plan *plans) {
  int np = 0;
  for (int i = 0; i < n; i++) {
    if (runs[i].status != 0)
      continue;
    int k = 0;
    while (k < np && strcmp(plans[k].device, runs[i].device) != 0)
      k++;
    if (k == np) {
      plans[np] = (plan){runs[i].device, runs[i].in.device_usable, i, 0, 0};
      np++;
    }
    plan *p = &plans[k];
    if (runs[i].in.device_usable > p->usable)
      p->usable = runs[i].in.device_usable;
    if (runs[i].rep.footprint > runs[p->largest].rep.footprint)
      p->largest = i;
    p->all_reserve += times15(runs[i].rep.footprint);
  }
  for (int k = 0; k < np; k++)
    plans[k].reserve = times15(runs[plans[k].largest].rep.footprint);
  return np;
}

static uint64_t fit(uint64_t usable, uint64_t each) { return each ? usable / each : 0; }

static void compare_print(FILE *f, const lc_run *runs, int n) {
  char a[32], b[32], c[32], d[32], e[32];
  const lc_run *first = NULL;
  for (int i = 0; i < n && first == NULL; i++)
    if (runs[i].status == 0)
      first = &runs[i];
  fprintf(f, "%d models compared%s%s\n\n", n, first && first->in.source ? " through " : "",
          first && first->in.source ? first->source : "");
  fprintf(f, "%-24s %-8s %10s %10s %10s %12s %9s  %-16s %s\n", "model", "backend", "cold load",
          "warm load", "first inf", "footprint", "reclaimed", "leak (slope)", "leak (run)");
  double sum = 0.0;
  int counted = 0;
  for (int i = 0; i < n; i++) {
    const lc_run *r = &runs[i];
    if (r->status != 0) {
      fprintf(f, "%-24s failed (exit status %d): see the messages above\n", r->model, r->status);
      continue;
    }
    const lc_report *p = &r->rep;
    char slope[32];
    snprintf(slope, sizeof(slope), "%s", p->leaks == 1 ? "FAIL" : p->leaks == 0 ? "pass" : "-");
    fprintf(f, "%-24s %-8s %10s %10s %10s %12s %8.0f%%  %-16s %s %s\n", r->model,
            r->backend[0] ? r->backend : "-", secs(p->cold_load_ms, a, sizeof(a)),
            secs(p->warm_load_ms, b, sizeof(b)), secs(p->first_ms, c, sizeof(c)),
            cli_fmt_bytes(p->footprint, d, sizeof(d)), reclaimed(p), slope, p->tier,
            cli_fmt_bytes((uint64_t)p->growth_run_bytes, e, sizeof(e)));
    sum += reclaimed(p);
    counted++;
  }
  if (counted > 0)
    fprintf(f, "\naverage reclamation: %.1f%% of the footprint came back after unload "
               "(the lower of the device's and the OS's figure, over %d model%s)\n",
            sum / counted, counted, counted == 1 ? "" : "s");
  plan plans[64];
  int np = make_plans(runs, n < 64 ? n : 64, plans);
  for (int k = 0; k < np; k++) {
    const plan *p = &plans[k];
    const lc_run *big = &runs[p->largest];
    fprintf(f, "\nmemory plan on %s (usable %s):\n", p->device,
            cli_fmt_bytes(p->usable, a, sizeof(a)));
    fprintf(f, "  reserve 1.5x the largest footprint (%s, %s): %s per model, %llu fit at once\n",
            big->model, cli_fmt_bytes(big->rep.footprint, b, sizeof(b)),
            cli_fmt_bytes(p->reserve, c, sizeof(c)),
            (unsigned long long)fit(p->usable, p->reserve));
    for (int i = 0; i < n; i++) {
      if (runs[i].status != 0 || strcmp(runs[i].device, p->device) != 0)
        continue;
      uint64_t each = times15(runs[i].rep.footprint);
      fprintf(f, "  %-24s 1.5x %s = %s: %llu fit\n", runs[i].model,
              cli_fmt_bytes(runs[i].rep.footprint, a, sizeof(a)), cli_fmt_bytes(each, b, sizeof(b)),
              (unsigned long long)fit(p->usable, each));
    }
    fprintf(f, "  all of them at once: %s, %s\n", cli_fmt_bytes(p->all_reserve, a, sizeof(a)),
            p->all_reserve <= p->usable ? "fits" : "does NOT fit: some will be evicted in turn");
  }
}

static int compare_json(FILE *f, const lc_run *runs, int n) {
  fputs("{\"models\":[", f);
  int k = 0;
  double sum = 0.0;
  for (int i = 0; i < n; i++) {
    if (runs[i].status != 0)
      continue;
    char *j = lc_json(&runs[i].in, &runs[i].rep);
    if (j == NULL)
      return -1;
    fprintf(f, "%s%s", k++ ? "," : "", j);
    free(j);
    sum += reclaimed(&runs[i].rep);
  }
  fputs("],\"failed\":[", f);
  for (int i = 0, m = 0; i < n; i++) {
    if (runs[i].status == 0)
      continue;
    fprintf(f, "%s{\"model\":", m++ ? "," : "");
    json_str(f, runs[i].model);
    fprintf(f, ",\"status\":%d}", runs[i].status);
  }
  fputs("],\"average_reclaimed_pct\":", f);
  if (k > 0)
    fprintf(f, "%.1f", sum / k);
  else
    fputs("null", f);
  fputs(",\"plans\":[", f);
  plan plans[64];
  int np = make_plans(runs, n < 64 ? n : 64, plans);
  for (int p = 0; p < np; p++) {
    const plan *pl = &plans[p];
    fputs(p ? ",{\"device\":" : "{\"device\":", f);
    json_str(f, pl->device);
    fprintf(f, ",\"usable_bytes\":%llu,\"largest_model\":", (unsigned long long)pl->usable);
    json_str(f, runs[pl->largest].model);
    fprintf(f,
            ",\"largest_footprint_bytes\":%llu,\"reserve_bytes\":%llu,\"fit_at_reserve\":%llu,"
            "\"all_reserve_bytes\":%llu,\"all_fit\":%s,\"per_model\":[",
            (unsigned long long)runs[pl->largest].rep.footprint, (unsigned long long)pl->reserve,
            (unsigned long long)fit(pl->usable, pl->reserve), (unsigned long long)pl->all_reserve,
            pl->all_reserve <= pl->usable ? "true" : "false");
    for (int i = 0, m = 0; i < n; i++) {
      if (runs[i].status != 0 || strcmp(runs[i].device, pl->device) != 0)
        continue;
      uint64_t each = times15(runs[i].rep.footprint);
      fprintf(f, "%s{\"model\":", m++ ? "," : "");
      json_str(f, runs[i].model);
      fprintf(f, ",\"footprint_bytes\":%llu,\"reserve_bytes\":%llu,\"fit\":%llu}",
              (unsigned long long)runs[i].rep.footprint, (unsigned long long)each,
              (unsigned long long)fit(pl->usable, each));
    }
    fputs("]}", f);
  }
  fputs("]}\n", f);
  return 0;
}

int lc_compare_output(FILE *f, const lc_run *runs, int n, int json) {
  if (json) {
    if (compare_json(f, runs, n) != 0) {
      fprintf(stderr, "modelbuf: bench lifecycle: out of memory\n");
      return CLI_EXIT_FAIL;
    }
  } else {
    compare_print(f, runs, n);
  }
  fflush(f);
  int status = CLI_EXIT_OK;
  for (int i = 0; i < n; i++) {
    if (runs[i].status != 0)
      status = CLI_EXIT_FAIL;
    else if (status == CLI_EXIT_OK &&
             (runs[i].rep.leaks == 1 || strcmp(runs[i].rep.tier, "FAIL") == 0))
      status = 4;
  }
  return status;
}
