/*
 * sim.h - the trace simulator (docs/SIMULATOR.md), for the CLI's
 * `modelbuf sim`, the benchmarks that run it (bench/sim.sh) and the tests.
 *
 * It replays a trace of requests (arrival time, model, duration) through the
 * real residency core in manual mode: the clock is virtual, and backend
 * jobs are completed after the load/offload/restore/unload times of a model
 * table, as if a real backend had taken them. Each request is an acquire,
 * a lease held for its duration, and a release. Policies: lru, cost (the
 * core's own), and belady, the offline reference that evicts the idle model
 * whose next use lies furthest in the future (it reads the trace's future
 * through the core's MB_EVICT_CUSTOM hook); oracle, cost with the trace's
 * true rates (mb__cost_rate_oracle).
 *
 * Everything is deterministic: the same model table, trace and
 * configuration give the same numbers (only wall_s and events_per_s, which
 * measure the machine, differ). Generators use their own seeded PRNG.
 *
 * Functions return 0 or -1 with a message in err; nothing prints.
 */
#ifndef MB_SIM_H
#define MB_SIM_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* ------------------------------------------------------------------------ */
/* PRNG: xoshiro256** seeded through splitmix64                              */

typedef struct sim_rng {
  uint64_t s[4];
} sim_rng;

void sim_rng_seed(sim_rng *r, uint64_t seed);
uint64_t sim_rng_next(sim_rng *r);
/* Uniform in [0, 1). */
double sim_rng_unit(sim_rng *r);

/* ------------------------------------------------------------------------ */
/* Model table                                                               */

#define SIM_DEVICE_AUTO (-1)
#define SIM_KA_DEFAULT (-2) /* the run's default keep-alive */

typedef struct sim_model {
  char name[128];
  uint64_t footprint_bytes;
  double load_ms, restore_ms, offload_ms, unload_ms;
  int can_offload;          /* restore_ms and offload_ms known and "offload" not false */
  int device;               /* index or SIM_DEVICE_AUTO */
  int64_t keep_alive_ms;    /* ms, -1 forever, SIM_KA_DEFAULT */
  int64_t host_keep_alive_ms; /* ms, -1 forever, SIM_KA_DEFAULT (30 min) */
  int pinned;
  int max_concurrency;      /* default 1 */
  int max_queue;            /* default 64 */
  int64_t queue_timeout_ms; /* default 60 s; -1 forever */
} sim_model;

typedef struct sim_models {
  sim_model *v;
  int n, cap;
} sim_models;

/* A model with the defaults above (name and footprint empty). */
void sim_model_init(sim_model *m);
/* Appends a copy of m; -1 on a duplicate name or no memory. */
int sim_models_add(sim_models *t, const sim_model *m, char *err, size_t err_len);
/* Index of the model named name, or -1. */
int sim_models_find(const sim_models *t, const char *name);
void sim_models_free(sim_models *t);

/*
 * Parses a model table (JSON, format in docs/SIMULATOR.md) from buf.
 * Unknown keys are ignored (a lifecycle report carries more); missing
 * required keys and wrong types are errors naming the model and the key.
 */
int sim_models_parse(const char *buf, size_t len, sim_models *out, char *err, size_t err_len);
int sim_models_load(const char *path, sim_models *out, char *err, size_t err_len);
void sim_models_write(FILE *f, const sim_models *t);

/*
 * Generates n models named m0000, m0001, ...: footprints log-uniform in
 * [min_bytes, max_bytes], load times roughly proportional to size (1-3 GB/s
 * plus 0.2 s of start-up) but with one in six cheap to load for its size
 * (4x faster) and one in six expensive (4x slower, +2 s), restore and
 * offload at 12 GB/s, unload 50 ms. All models AUTO-placed when devices > 1.
 */
int sim_models_generate(sim_models *out, int n, uint64_t min_bytes, uint64_t max_bytes,
                        uint64_t seed, char *err, size_t err_len);

/* ------------------------------------------------------------------------ */
/* Traces                                                                    */

typedef struct sim_req {
  uint64_t t_ns;   /* arrival, from the trace's origin */
  uint64_t dur_ns; /* how long the lease is held */
  int32_t name;    /* index into the trace's names */
  uint32_t line;   /* source line (CSV), 0 if generated */
} sim_req;

typedef struct sim_trace {
  sim_req *v;
  size_t n, cap;
  char **names; /* distinct model names, in order of first appearance */
  int nnames, names_cap;
  void *index;  /* name lookup (private) */
} sim_trace;

void sim_trace_free(sim_trace *t);
/* Appends a request; the name is interned. -1 on no memory. */
int sim_trace_add(sim_trace *t, uint64_t t_ns, const char *model, uint64_t dur_ns,
                  uint32_t line);
/* Sorts by arrival time, keeping the order of equal times (stable). */
void sim_trace_sort(sim_trace *t);

/*
 * Parses CSV "t,model,duration" (t and duration in seconds, decimal; one
 * request a line). Allowed: a first line "t,model,duration" (header), blank
 * lines, lines starting with '#', CRLF line ends, spaces around fields. An
 * error names the line: "line 7: duration 'x' is not a number of seconds".
 * The result is sorted by time.
 */
int sim_trace_parse(const char *buf, size_t len, sim_trace *out, char *err, size_t err_len);
int sim_trace_load(const char *path, sim_trace *out, char *err, size_t err_len);
/* Writes CSV with a header; parse(write(t)) == t to the microsecond. */
void sim_trace_write(FILE *f, const sim_trace *t);

/*
 * Trace generators, from a spec "KIND:key=value,...":
 *   zipf     Poisson arrivals at `rate` requests/s; model k (table order)
 *            drawn with probability proportional to 1/(k+1)^s.
 *   diurnal  as zipf, but the rate follows a day, rate*(1 + amp*sin(2 pi
 *            t/period)), and the hot set rotates: the popularity ranks shift
 *            by one model every period/models seconds.
 *   burst    as zipf, plus bursts every `every` s on average: `size`
 *            requests for one model drawn uniformly, within `spread` s.
 * Keys: n (requests, default 10000), rate (1), s (1.0), dur (mean lease
 * seconds, exponential, 0.5), period (86400), amp (0.5), every (600),
 * size (20), spread (10).
 */
typedef struct sim_gen {
  char kind[16];
  size_t n;
  double rate, s, dur, period, amp, every, size, spread;
} sim_gen;

int sim_gen_parse(const char *spec, sim_gen *g, char *err, size_t err_len);
/* Generates over the models of t, in table order of popularity. */
int sim_gen_run(const sim_gen *g, const sim_models *t, uint64_t seed, sim_trace *out, char *err,
                size_t err_len);

/* ------------------------------------------------------------------------ */
/* Running                                                                   */

/* SIM_ORACLE: the cost policy given each model's true request rate over
 * the whole trace instead of the rate it measures: what a policy that
 * knew the rates could do, a bound for the rate-based ones (not in
 * "all"). */
typedef enum sim_policy { SIM_LRU = 0, SIM_COST, SIM_BELADY, SIM_ORACLE } sim_policy;

const char *sim_policy_name(sim_policy p);
/* "lru", "cost", "belady", "oracle" -> 0 and *out; -1 otherwise. */
int sim_policy_parse(const char *s, sim_policy *out);

typedef struct sim_config {
  int devices;             /* >= 1 */
  uint64_t capacity_bytes; /* usable bytes per device */
  uint64_t host_bytes;     /* host tier for offloaded models; 0 = no host tier */
  sim_policy policy;
  int64_t keep_alive_ms;   /* for models without their own: ms, -1 forever (default 5 min) */
  /* 1: the core's admission check runs (lib/admit.c): every decision an
   * admission shortcut makes is planned again in full and compared; the
   * result's admit_* fields say how it went. Slower; decisions unchanged. */
  int check_admission;
  /* 1: an offloaded model of device auto may be restored on any device,
   * as a backend that can (restore_any_device, the tensors backend) is. */
  int restore_anywhere;
} sim_config;

void sim_config_init(sim_config *c);

#define SIM_MAX_DEVICES 1024

typedef struct sim_result {
  sim_policy policy;
  uint64_t requests;       /* in the trace */
  uint64_t served;         /* granted a lease */
  uint64_t warm;           /* served without waiting for a load or restore */
  uint64_t failed;         /* answered with an error */
  uint64_t timeouts, rejected; /* of which: queue timeout; full queue or never fits */
  uint64_t loads, restores, offloads, unloads, evictions;
  double load_s, restore_s; /* virtual time spent loading / restoring */
  double wait_p50_ms, wait_p99_ms, wait_max_ms; /* arrival to lease, served requests */
  double sim_s;            /* virtual time from the first arrival to the end */
  int ndev;
  double util[SIM_MAX_DEVICES]; /* time-weighted mean of used/usable per device */
  double util_mean;
  uint64_t core_events;    /* inputs the core processed: requests, releases, completions, timers */
  uint64_t core_steps;
  double wall_s;           /* machine time of the replay (not deterministic) */
  double events_per_s;
  /* check_admission: decisions checked, by the shortcut that took them
   * (auto_blocked, any_blocked, the planning's fail caches, bound_wait),
   * how many differ from the full planning, the first that did. */
  uint64_t admit_auto, admit_any, admit_planned, admit_bound, admit_differ;
  char admit_first[512];
} sim_result;

/*
 * Replays trace through a new core. Every model the trace names must be in
 * models. Returns 0 and fills out, or -1 with the reason in err.
 */
int sim_run(const sim_models *models, const sim_trace *trace, const sim_config *cfg,
            sim_result *out, char *err, size_t err_len);

/* Internal: reads a whole file (caller frees); NULL with a message. */
char *sim__read_file(const char *path, size_t *len, char *err, size_t err_len);

#endif /* MB_SIM_H */
