/*
 * sim.c - the simulator's engine: replays a trace through the real core in
 * manual mode under a virtual clock.
 *
 * The loop keeps one agenda (a min-heap by time, then insertion order) of
 * what the simulated world will do: backend jobs finishing after their
 * model's measured time, and leases released after their request's
 * duration. Each round moves the clock to the earliest of the agenda, the
 * next arrival of the trace and the core's next timer; completes the jobs
 * and releases due then, posts the arrivals due then, and steps the core
 * once (a step runs every decision that follows until nothing changes).
 * The core hands new jobs to the executor and answers requests from inside
 * the step; both only add to the agenda.
 *
 * Device memory in use is tracked here as the core charges it (from the
 * start of a load or restore to the end of an offload or unload) and
 * integrated over virtual time for the utilisation figures.
 *
 * Belady: the core asks evict_rank for each candidate; the answer is minus
 * the arrival time of the model's next request still to come (a model never
 * used again ranks lowest), so the one needed furthest in the future goes
 * first. The trace's future is known here, which is what makes it offline.
 */
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "modelbuf/modelbuf.h"
#include "agenda.h"
#include "sim.h"
#include "mb_internal.h"

/* Virtual time starts at 1 s: the core reads 0 as "never". */
#define ORIGIN_NS 1000000000ull
#define MS_NS 1000000.0

const char *sim_policy_name(sim_policy p) {
  switch (p) {
  case SIM_LRU: return "lru";
  case SIM_COST: return "cost";
  case SIM_BELADY: return "belady";
  case SIM_ORACLE: return "oracle";
  }
  return "?";
}

int sim_policy_parse(const char *s, sim_policy *out) {
  for (int p = SIM_LRU; p <= SIM_ORACLE; p++) {
    if (strcmp(s, sim_policy_name((sim_policy)p)) == 0) {
      *out = (sim_policy)p;
      return 0;
    }
  }
  return -1;
}

void sim_config_init(sim_config *c) {
  memset(c, 0, sizeof(*c));
  c->devices = 1;
  c->capacity_bytes = 80ull << 30;
  c->host_bytes = 80ull << 30;
  c->policy = SIM_LRU;
  c->keep_alive_ms = MB_DEFAULT_KEEP_ALIVE_MS;
}

/* ------------------------------------------------------------------------ */
/* State                                                                     */

typedef struct sim_m {
  const sim_model *def;
  int on_dev; /* charged on device dev */
  int dev;
  const uint64_t *uses; /* arrival times of its requests, ascending */
  size_t nuses, next;   /* next: the first not yet arrived */
} sim_m;


typedef struct req_ref {
  struct sim *s;
  size_t i;
} req_ref;

typedef struct sim {
  uint64_t now;
  mb_ctx *ctx;
  const sim_trace *trace;
  sim_m *m;
  int nm;
  int *slots; /* name hash: model index + 1 */
  size_t slot_cap;
  int *trace_model; /* trace name index -> model index */
  sim_agenda ag;
  int ndev;
  uint64_t usable;
  uint64_t used[SIM_MAX_DEVICES], last[SIM_MAX_DEVICES];
  double area[SIM_MAX_DEVICES];
  req_ref *refs;
  double *waits;
  size_t nwaits;
  size_t outstanding;
  int nomem;
  sim_result *res;
} sim;

/* ------------------------------------------------------------------------ */
/* Agenda                                                                    */


/* ------------------------------------------------------------------------ */
/* Names                                                                     */


static int find_model(const sim *s, const char *name) {
  size_t b = sim_hash_str(name) & (s->slot_cap - 1);
  while (s->slots[b]) {
    int i = s->slots[b] - 1;
    if (strcmp(s->m[i].def->name, name) == 0)
      return i;
    b = (b + 1) & (s->slot_cap - 1);
  }
  return -1;
}

/* ------------------------------------------------------------------------ */
/* The simulated world                                                       */

static uint64_t sim_clock(void *arg) { return ((sim *)arg)->now; }

static void dev_change(sim *s, int dev, uint64_t bytes, int add) {
  sim_mem_change(&s->area[dev], &s->used[dev], &s->last[dev], s->now, bytes, add);
}

/* The executor: a job finishes after its model's time for that operation. */
static void sim_submit(void *arg, mb_job *job) {
  sim *s = arg;
  int i = find_model(s, mb_job_model(job));
  if (i < 0) { /* cannot happen: the core only knows our models */
    s->nomem = 1;
    mb_job_complete(job, MB_EBACKEND, "unknown model", NULL);
    return;
  }
  sim_m *m = &s->m[i];
  mb_job_kind k = mb_job_get_kind(job);
  if ((k == MB_JOB_LOAD || k == MB_JOB_RESTORE) && !m->on_dev) {
    m->dev = mb_job_device(job);
    m->on_dev = 1;
    dev_change(s, m->dev, m->def->footprint_bytes, 1);
  }
  double ms = sim_job_ms(m->def, k);
  agenda_item it;
  memset(&it, 0, sizeof(it));
  it.t = s->now + (uint64_t)llround(ms * MS_NS);
  it.kind = AG_JOB;
  it.job = job;
  if (sim_agenda_push(&s->ag, it) != 0)
    s->nomem = 1; /* reported after the run; the item is lost */
}

static void finish_job(sim *s, mb_job *job) {
  int i = find_model(s, mb_job_model(job));
  sim_m *m = &s->m[i];
  mb_job_kind k = mb_job_get_kind(job);
  if (k == MB_JOB_LOAD)
    s->res->load_s += m->def->load_ms / 1e3;
  else if (k == MB_JOB_RESTORE)
    s->res->restore_s += m->def->restore_ms / 1e3;
  else if (m->on_dev) {
    dev_change(s, m->dev, m->def->footprint_bytes, 0);
    m->on_dev = 0;
  }
  mb_job_complete(job, 0, NULL, NULL);
}

static void on_answer(const mb_result *r, void *arg) {
  req_ref *ref = arg;
  sim *s = ref->s;
  const sim_req *q = &s->trace->v[ref->i];
  s->outstanding--;
  if (r->rc != 0) {
    s->res->failed++;
    if (r->rc == MB_ETIMEDOUT)
      s->res->timeouts++;
    else
      s->res->rejected++;
    return;
  }
  s->res->served++;
  if (r->load_ns == 0)
    s->res->warm++;
  s->waits[s->nwaits++] = (double)(s->now - (ORIGIN_NS + q->t_ns)) / MS_NS;
  agenda_item it;
  memset(&it, 0, sizeof(it));
  it.t = s->now + q->dur_ns;
  it.kind = AG_RELEASE;
  it.lease = r->lease;
  if (sim_agenda_push(&s->ag, it) != 0)
    s->nomem = 1; /* reported after the run; the item is lost */
}

static double belady_rank(void *arg, const char *model, void *user, int device) {
  (void)arg;
  (void)model;
  (void)device;
  const sim_m *m = user;
  if (m->next >= m->nuses)
    return -HUGE_VAL; /* never used again: the best victim */
  return -(double)m->uses[m->next];
}

/* The oracle's rate of a model: its requests in the whole trace (the
 * trace's length is the same for every model, and only ratios count). */
static double oracle_rate(void *arg, void *user) {
  (void)arg;
  return (double)((const sim_m *)user)->nuses;
}

/* ------------------------------------------------------------------------ */
/* Setup                                                                     */

static void sim_free(sim *s) {
  free(s->m);
  free(s->slots);
  free(s->trace_model);
  free(s->ag.v);
  free(s->refs);
  free(s->waits);
}

/* Builds the per-model state and its future uses (for belady). */
static int setup(sim *s, const sim_models *models, const sim_trace *trace, uint64_t **uses_out,
                 char *err, size_t err_len) {
  s->nm = models->n;
  s->m = calloc((size_t)models->n, sizeof(*s->m));
  s->slot_cap = 64;
  while (s->slot_cap < (size_t)models->n * 2)
    s->slot_cap *= 2;
  s->slots = calloc(s->slot_cap, sizeof(*s->slots));
  s->trace_model = calloc((size_t)trace->nnames + 1, sizeof(*s->trace_model));
  s->refs = calloc(trace->n, sizeof(*s->refs));
  s->waits = calloc(trace->n + 1, sizeof(*s->waits));
  uint64_t *uses = calloc(trace->n + 1, sizeof(*uses));
  size_t *count = calloc((size_t)models->n + 1, sizeof(*count));
  if (!s->m || !s->slots || !s->trace_model || !s->refs || !s->waits || !uses || !count) {
    free(uses);
    free(count);
    mb__set_err(err, err_len, "out of memory");
    return -1;
  }
  for (int i = 0; i < models->n; i++) {
    s->m[i].def = &models->v[i];
    size_t b = sim_hash_str(models->v[i].name) & (s->slot_cap - 1);
    while (s->slots[b])
      b = (b + 1) & (s->slot_cap - 1);
    s->slots[b] = i + 1;
  }
  for (int i = 0; i < trace->nnames; i++) {
    s->trace_model[i] = find_model(s, trace->names[i]);
    if (s->trace_model[i] < 0) {
      uint32_t line = 0;
      for (size_t k = 0; k < trace->n && line == 0; k++)
        if (trace->v[k].name == i)
          line = trace->v[k].line;
      if (line)
        mb__set_err(err, err_len, "trace line %u: model '%s' is not in the model table", line,
                trace->names[i]);
      else
        mb__set_err(err, err_len, "trace: model '%s' is not in the model table", trace->names[i]);
      free(uses);
      free(count);
      return -1;
    }
  }
  for (size_t k = 0; k < trace->n; k++)
    count[s->trace_model[trace->v[k].name]]++;
  size_t off = 0;
  for (int i = 0; i < models->n; i++) {
    s->m[i].uses = uses + off;
    off += count[i];
  }
  for (size_t k = 0; k < trace->n; k++) {
    sim_m *m = &s->m[s->trace_model[trace->v[k].name]];
    ((uint64_t *)m->uses)[m->nuses++] = ORIGIN_NS + trace->v[k].t_ns;
  }
  free(count);
  *uses_out = uses;
  return 0;
}

static int add_models(sim *s, const sim_config *cfg, char *err, size_t err_len) {
  for (int i = 0; i < s->nm; i++) {
    const sim_model *d = s->m[i].def;
    mb_model_opts o;
    mb_model_opts_init(&o);
    o.footprint_bytes = d->footprint_bytes;
    if (d->device != SIM_DEVICE_AUTO && d->device >= cfg->devices) {
      mb__set_err(err, err_len, "model '%s' is on device %d, but the run has %d device(s)",
              d->name, d->device, cfg->devices);
      return -1;
    }
    o.device = d->device == SIM_DEVICE_AUTO ? MB_DEVICE_AUTO : d->device;
    o.restore_any_device = cfg->restore_anywhere;
    o.keep_alive_ms = d->keep_alive_ms == SIM_KA_DEFAULT ? cfg->keep_alive_ms : d->keep_alive_ms;
    if (d->host_keep_alive_ms != SIM_KA_DEFAULT)
      o.host_keep_alive_ms = d->host_keep_alive_ms;
    o.offload = d->can_offload;
    o.pinned = d->pinned;
    o.max_concurrency = d->max_concurrency;
    o.max_queue = d->max_queue;
    o.queue_timeout_ms = d->queue_timeout_ms;
    char e[256] = "";
    int rc = mb_model_add(s->ctx, d->name, sim_backend(d->can_offload), &s->m[i],
                          &o, e, sizeof(e));
    if (rc != 0) {
      mb__set_err(err, err_len, "model '%s': %s", d->name, e);
      return -1;
    }
  }
  return 0;
}

/* ------------------------------------------------------------------------ */
/* The run                                                                   */

int sim_run(const sim_models *models, const sim_trace *trace, const sim_config *cfg,
            sim_result *out, char *err, size_t err_len) {
  sim s;
  uint64_t *uses = NULL;
  int rc = -1;
  memset(&s, 0, sizeof(s));
  memset(out, 0, sizeof(*out));
  out->policy = cfg->policy;
  out->ndev = cfg->devices;
  if (cfg->devices < 1 || cfg->devices > SIM_MAX_DEVICES || cfg->capacity_bytes == 0) {
    mb__set_err(err, err_len, "need 1 to %d devices with a capacity > 0", SIM_MAX_DEVICES);
    return -1;
  }
  if (models->n < 1 || trace->n < 1) {
    mb__set_err(err, err_len, "need at least one model and one request");
    return -1;
  }
  s.trace = trace;
  s.res = out;
  s.ndev = cfg->devices;
  s.usable = cfg->capacity_bytes;
  if (setup(&s, models, trace, &uses, err, err_len) != 0)
    goto done;

  mb_ctx_opts o;
  mb_ctx_opts_init(&o);
  o.manual = 1;
  o.clock = sim_clock;
  o.clock_arg = &s;
  o.executor.submit = sim_submit;
  o.executor.arg = &s;
  /* 0 would mean "half of RAM": a host tier of one byte holds nothing. */
  o.host_budget_bytes = cfg->host_bytes ? cfg->host_bytes : 1;
  o.keep_alive_ms = cfg->keep_alive_ms;
  switch (cfg->policy) {
  case SIM_LRU: o.eviction = MB_EVICT_LRU; break;
  case SIM_COST: o.eviction = MB_EVICT_COST; break;
  case SIM_BELADY:
    o.eviction = MB_EVICT_CUSTOM;
    o.evict_rank = belady_rank;
    o.evict_arg = &s;
    break;
  case SIM_ORACLE: o.eviction = MB_EVICT_COST; break;
  }
  s.now = ORIGIN_NS + trace->v[0].t_ns;
  char e[256] = "";
  if (mb_ctx_new(&o, &s.ctx, e, sizeof(e)) != 0) {
    mb__set_err(err, err_len, "core: %s", e);
    goto done;
  }
  if (cfg->check_admission)
    mb__admission_check(s.ctx, 1);
  if (cfg->policy == SIM_ORACLE)
    mb__cost_rate_oracle(s.ctx, oracle_rate, NULL);
  for (int d = 0; d < cfg->devices; d++) {
    mb_device_opts dopt;
    mb_device_opts_init(&dopt);
    dopt.capacity_bytes = cfg->capacity_bytes;
    if (mb_device_add(s.ctx, &dopt, NULL, e, sizeof(e)) != 0) {
      mb__set_err(err, err_len, "device %d: %s", d, e);
      goto done_ctx;
    }
    s.last[d] = s.now;
  }
  if (add_models(&s, cfg, err, err_len) != 0)
    goto done_ctx;

  uint64_t w0 = mb_clock_monotonic(NULL); /* the machine's time, for wall_s */
  uint64_t start = s.now;
  size_t next = 0;
  int idle_rounds = 0;
  for (;;) {
    int did = 0;
    while (s.ag.n > 0 && s.ag.v[0].t <= s.now) {
      agenda_item it = sim_agenda_pop(&s.ag);
      if (it.kind == AG_JOB)
        finish_job(&s, it.job);
      else if (mb_release(s.ctx, it.lease) != 0)
        s.nomem = 1; /* a lease the core does not know: a bug, reported */
      did++;
    }
    while (next < trace->n && ORIGIN_NS + trace->v[next].t_ns <= s.now) {
      sim_m *m = &s.m[s.trace_model[trace->v[next].name]];
      m->next++;
      s.refs[next].s = &s;
      s.refs[next].i = next;
      out->requests++;
      if (mb_acquire_async(s.ctx, m->def->name, NULL, on_answer, &s.refs[next], NULL) != 0) {
        out->failed++;
        out->rejected++;
      } else {
        s.outstanding++;
      }
      next++;
      did++;
    }
    int n = mb_ctx_step(s.ctx);
    if (n > 0) {
      out->core_events += (uint64_t)n;
      did++;
    }
    out->core_steps++;
    if (next >= trace->n && s.ag.n == 0 && s.outstanding == 0)
      break;
    uint64_t t = UINT64_MAX;
    if (s.ag.n > 0)
      t = s.ag.v[0].t;
    if (next < trace->n && ORIGIN_NS + trace->v[next].t_ns < t)
      t = ORIGIN_NS + trace->v[next].t_ns;
    uint64_t dl = mb_ctx_next_deadline(s.ctx);
    if (dl < t)
      t = dl;
    if (t == UINT64_MAX || (t <= s.now && !did && ++idle_rounds > 3)) {
      mb__set_err(err, err_len, "simulation stalled at t=%.3f s with %zu requests unanswered",
              (double)(s.now - ORIGIN_NS) / 1e9, s.outstanding);
      goto done_ctx;
    }
    if (t > s.now) {
      s.now = t;
      idle_rounds = 0;
    }
  }
  out->wall_s = (double)(mb_clock_monotonic(NULL) - w0) / 1e9;
  out->events_per_s = out->wall_s > 0 ? (double)out->core_events / out->wall_s : 0;
  if (cfg->check_admission) {
    mb__admit_stats st;
    mb__admission_check_result(s.ctx, &st);
    out->admit_auto = st.auto_blocked;
    out->admit_any = st.any_blocked;
    out->admit_planned = st.planned;
    out->admit_bound = st.bound_wait;
    out->admit_differ = st.differ;
    snprintf(out->admit_first, sizeof(out->admit_first), "%s", st.first);
  }
  if (s.nomem) {
    mb__set_err(err, err_len, "out of memory during the run");
    goto done_ctx;
  }

  out->sim_s = (double)(s.now - start) / 1e9;
  double span = (double)(s.now - start);
  double sum = 0;
  for (int d = 0; d < s.ndev; d++) {
    dev_change(&s, d, 0, 1);
    out->util[d] = span > 0 ? s.area[d] / span / (double)s.usable : 0;
    sum += out->util[d];
  }
  out->util_mean = sum / s.ndev;
  for (int i = 0; i < s.nm; i++) {
    mb_status st;
    if (mb_model_status(s.ctx, s.m[i].def->name, &st) != 0)
      continue;
    out->loads += st.stats.loads;
    out->restores += st.stats.restores;
    out->offloads += st.stats.offloads;
    out->unloads += st.stats.unloads;
    out->evictions += st.stats.evictions;
  }
  sim_wait_pcts(s.waits, s.nwaits, &out->wait_p50_ms, &out->wait_p99_ms);
  out->wait_max_ms = s.nwaits ? s.waits[s.nwaits - 1] : 0;
  rc = 0;

done_ctx:
  /* Anything still out (after an error) is completed so the context can go. */
  while (s.ag.n > 0) {
    agenda_item it = sim_agenda_pop(&s.ag);
    if (it.kind == AG_JOB)
      mb_job_complete(it.job, 0, NULL, NULL);
    else if (mb_release(s.ctx, it.lease) != 0)
      continue;
    mb_ctx_step(s.ctx);
  }
  if (mb_ctx_free(s.ctx) != 0 && rc == 0) {
    mb__set_err(err, err_len, "core: context still busy at the end of the run");
    rc = -1;
  }
done:
  free(uses);
  sim_free(&s);
  return rc;
}
