/*
 * lifecycle.h - private to the modelbuf tool: what `modelbuf bench
 * lifecycle` makes of its measurements. The driver (cmd_lifecycle.c) runs
 * the cycles and fills one lc_cycle per cycle; this module turns them into
 * figures, a leak verdict and advice in plain words, and writes them as a
 * table, as JSON, and as a chart. Pure functions apart from the output, so
 * the verdict and the advice are unit-tested on known inputs.
 */
#ifndef MB_CLI_LIFECYCLE_H
#define MB_CLI_LIFECYCLE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define LC_NONE (-1.0) /* a time that was not measured */

/* One cycle: load, probe, (offload, restore, probe), unload. */
typedef struct lc_cycle {
  double load_ms;        /* the load (cold on cycle 0 when the page cache was dropped) */
  double first_ms;       /* first probe after the load, LC_NONE without a probe */
  double steady_ms;      /* median of the later probes, LC_NONE without a probe */
  double offload_ms;     /* LC_NONE when the model cannot offload */
  double restore_ms;     /* LC_NONE when the model cannot offload */
  double unload_ms;
  uint64_t dev_peak;     /* device bytes, highest sample while resident */
  uint64_t dev_steady;   /* device bytes after the probes */
  uint64_t host_peak;    /* host bytes (RSS of the worker tree), highest while resident */
  uint64_t host_steady;  /* host bytes after the probes */
  uint64_t host_offloaded; /* host bytes while OFFLOADED (0 when not offloaded) */
  /* After the unload, by the device's own and the OS's own figures: used
   * memory now minus used memory before the load (negative: less). */
  int64_t dev_residue;
  int64_t os_residue;
  /* Growth of the steady footprint per restore within this residency
   * (lc_restore_growth of the samples after the load and each restore). */
  double restore_growth;
  int restores;          /* offload/restore rounds done in this cycle */
} lc_cycle;

typedef struct lc_input {
  const char *model;
  const char *device;      /* "host", "cuda:0" */
  int cold;                /* cycle 0 started with the files out of the page cache */
  uint64_t device_usable;  /* what models may use on the device (for the break-even) */
  uint64_t host_budget;    /* host tier budget, 0 unknown */
  const lc_cycle *cycles;
  int n;
  /* Where it was measured: NULL in this process, else e.g. "modelbufd at
   * http://127.0.0.1:8686" (the header of the report and "source" in JSON). */
  const char *source;
  /* Why the first load is not cold, when cold is 0 (NULL: --no-cold). */
  const char *cold_note;
  const char *backend;     /* "process", "plugin", "tensors"; NULL unknown */
} lc_input;

#define LC_MAX_ADVICE 6

typedef struct lc_report {
  double cold_load_ms;     /* cycle 0 when cold, else LC_NONE */
  double warm_load_ms;     /* median of the loads of the cache-warm cycles */
  double first_ms, steady_ms;
  double offload_ms, restore_ms, unload_ms; /* medians; LC_NONE when not measured */
  uint64_t dev_peak, dev_steady, host_peak, host_steady;
  uint64_t footprint;      /* device bytes at the peak (host device without one: the RSS) */
  double reclaimed_dev_pct;  /* of the device footprint, after the last unload */
  double reclaimed_os_pct;   /* of the host footprint, by the OS's figure */
  double slope_bytes;      /* growth of the steady footprint per cycle (least squares) */
  double slope_residue;    /* growth of what stays after each unload, per cycle */
  double growth_restore;   /* growth per restore within a residency (median of cycles) */
  int leaks;               /* the verdict: 1 = grows, 0 = clean, -1 = too few cycles */
  char verdict[200];
  /* The leak over the whole run, in the tiers of the usual Python
   * lifecycle scripts: the larger of the steady footprint's growth from
   * the first measured cycle to the last, what stayed after the unloads
   * (summed), and one residency's growth across its restores. */
  double growth_run_bytes;
  const char *tier;        /* "PASS", "CAUTION" or "FAIL" (LC_TIER_*) */
  int64_t keep_alive_ms;   /* the break-even keep-alive */
  uint64_t reserve_bytes;  /* the memory reservation: 1.5x the peak */
  int offload_wins;        /* offload rather than unload when idle */
  int n_advice;
  char advice[LC_MAX_ADVICE][320];
} lc_report;

/* Growth per cycle above both of these is a leak. */
#define LC_LEAK_MIN_SLOPE (1024.0 * 1024.0) /* 1 MiB per cycle */
#define LC_LEAK_MIN_FRACTION 0.005          /* 0.5% of the footprint per cycle */

/* The tiers of the leak over the run: PASS under 10 MiB, CAUTION up to
 * 50 MiB, FAIL above. */
#define LC_TIER_CAUTION_BYTES (10.0 * 1024.0 * 1024.0)
#define LC_TIER_FAIL_BYTES (50.0 * 1024.0 * 1024.0)

/* Least-squares slope of y over 0..n-1; 0 when n < 2. */
double lc_slope(const double *y, int n);

/*
 * Growth per restore within one residency from the steady footprint after
 * the load and after each restore (y[0], y[1..n)): the least-squares slope
 * from restore to restore when there are two restores or more, else from
 * the load to the restore. The step from the load to the first restore is
 * left out when it can be: a backend that allocates its host copy at the
 * first offload and reuses it (the tensors backend) holds more from then
 * on, once, which is not growth.
 */
double lc_restore_growth(const double *y, int n);

/* Fills out from the cycles. */
void lc_analyse(const lc_input *in, lc_report *out);

/* A human report: the figures, the verdict and the advice. */
void lc_print(FILE *f, const lc_input *in, const lc_report *r);

/* The same as one JSON object (malloc'd, NUL-terminated), NULL on ENOMEM. */
char *lc_json(const lc_input *in, const lc_report *r);

/*
 * The report of one run: analyses in, prints the table (or the JSON with
 * json), draws the chart when chart is not NULL, and returns the exit
 * status: 0 clean, 4 the leak check failed, 1 the chart failed.
 */
int lc_output(const lc_input *in, int json, const char *chart);

/* Median of v[0..n) (sorts v); LC_NONE when n is 0. */
double lc_median(double *v, int n);

/*
 * Drops files from the page cache (posix_fadvise DONTNEED: clean pages, no
 * root needed). The number of files dropped, or -1 with "PATH: reason" in
 * msg when one cannot be opened.
 */
int lc_drop_page_cache(const char *const *files, size_t n, char *msg, size_t len);

/* What both drivers of `bench lifecycle` are asked to do. */
typedef struct lc_opts {
  const char *model;
  int cycles, probes, restores;
  int cold;                 /* drop the files from the page cache before cycle 0 */
  int json;
  const char *chart;        /* PNG to draw, or NULL */
  /* The probe request; no probe when path is NULL. */
  const char *probe_method, *probe_path, *probe_body;
  int probe_default;        /* the probe was not asked for: the driver may pick */
  /* The model's weight files from the configuration (may be none). */
  const char *const *files;
  size_t n_files;
  /* When set, the driver hands its finished run to report (which copies
   * what it keeps) instead of writing it out; the driver returns what
   * report returns. For the comparison of several models. */
  int (*report)(const lc_input *in, void *arg);
  void *report_arg;
} lc_opts;

/* One model of a comparison (`bench lifecycle --all`, or several names):
 * its run, copied from its driver, and its analysis. */
typedef struct lc_run {
  char model[128], device[64], backend[16], source[600], note[400];
  lc_input in;            /* its strings point at the fields above */
  lc_cycle *cycles;       /* owned */
  lc_report rep;
  int status;             /* its driver's exit status when it failed, else 0 */
} lc_run;

/* An lc_opts.report that copies the run into arg (an lc_run) and analyses
 * it. 0, or 1 when out of memory. */
int lc_collect(const lc_input *in, void *arg);

/*
 * The comparison of n runs, written to f: one table (cold and warm load,
 * first inference, footprint, reclaimed, both leak verdicts), the average
 * reclamation, and the memory plan per device (1.5x the largest footprint
 * per model, how many of each fit the device's usable memory, and all of
 * them at once); or all of it as one JSON object. Returns the exit status:
 * 1 when a run failed, 4 when a model leaks (its slope, or FAIL over the
 * run), else 0.
 */
int lc_compare_output(FILE *f, const lc_run *runs, int n, int json);

/* Frees what lc_collect took. */
void lc_run_free(lc_run *r);

struct cli_client;

/*
 * `bench lifecycle MODEL --url URL`: the model served by a running
 * modelbufd, measured through its HTTP API only (lifecycle_url.c). Returns
 * the exit status (as lc_output, or 1 when a step fails, 3 when the daemon
 * cannot be reached).
 */
int lc_bench_daemon(const lc_opts *o, const struct cli_client *c);

/*
 * Writes a PNG chart of memory per tier across the cycles with gnuplot
 * (Debian: gnuplot-nox). 0, or -1 with a message (gnuplot missing or failed).
 */
int lc_chart(const char *png, const lc_input *in, char *err, size_t err_len);

#endif /* MB_CLI_LIFECYCLE_H */
