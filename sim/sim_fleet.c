/*
 * sim_fleet.c - the fleet simulator (sim_fleet.h): N residency cores, one
 * per node, driven in lockstep under one virtual clock, and a balancer in
 * front that routes each arrival by hash, least load or hash with spill.
 *
 * The loop is sim.c's, widened to nodes: one agenda (a min-heap by time,
 * then insertion order) of backend jobs finishing and leases released,
 * each tagged with its node; each round moves the clock to the earliest of
 * the agenda, the next arrival and every core's next timer, completes and
 * releases what is due, routes and posts the arrivals due, and steps every
 * core once, in node order. A request is "in flight" at its node from its
 * arrival until its release (or its error): what HAProxy counts as a
 * server's connections, for least and spill.
 *
 * The ring is HAProxy 2.6's (src/lb_chash.c, src/backend.c): server i
 * (1-based, the order of the list) has weight x 16 points at
 * full_hash(i x 4096 + j); a key is full_hash(sdbm(name)) (the avalanche
 * modifier); its server is the point closest to the key on either side,
 * and with a balance factor the walk goes on to the next points while the
 * server holds its share of the requests in flight (bounded loads).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "modelbuf/modelbuf.h"
#include "agenda.h"
#include "sim_fleet.h"
#include "mb_internal.h"

#define ORIGIN_NS 1000000000ull /* virtual time starts at 1 s: 0 is "never" to the core */
#define MS_NS 1000000.0
#define WEIGHT_SCALE 16         /* HAProxy's BE_WEIGHT_SCALE */
#define EWGHT_RANGE (256 * 16)  /* HAProxy's SRV_EWGHT_RANGE */

const char *sim_routing_name(sim_routing r) {
  switch (r) {
  case SIM_ROUTE_HASH: return "hash";
  case SIM_ROUTE_LEAST: return "least";
  case SIM_ROUTE_SPILL: return "spill";
  }
  return "?";
}

int sim_routing_parse(const char *s, sim_routing *out) {
  for (int r = SIM_ROUTE_HASH; r <= SIM_ROUTE_SPILL; r++)
    if (strcmp(s, sim_routing_name((sim_routing)r)) == 0) {
      *out = (sim_routing)r;
      return 0;
    }
  return -1;
}

void sim_fleet_config_init(sim_fleet_config *c) {
  memset(c, 0, sizeof(*c));
  sim_config_init(&c->node);
  c->node.policy = SIM_COST;
  c->nodes = 3;
  c->routing = SIM_ROUTE_HASH;
  c->balance_factor = 150;
  c->weight = 100;
}

/* ------------------------------------------------------------------------ */
/* HAProxy's consistent-hash ring                                            */

/* Bob Jenkins' full avalanche integer hash, spread by a large prime. */
static uint32_t full_hash(uint32_t a) {
  a = (a + 0x7ed55d16u) + (a << 12);
  a = (a ^ 0xc761c23cu) ^ (a >> 19);
  a = (a + 0x165667b1u) + (a << 5);
  a = (a + 0xd3a2646cu) ^ (a << 9);
  a = (a + 0xfd7046c5u) + (a << 3);
  a = (a ^ 0xb55a4f09u) ^ (a >> 16);
  return a * 3221225473u;
}

static uint32_t sdbm(const char *s) {
  uint32_t h = 0;
  for (const unsigned char *p = (const unsigned char *)s; *p; p++)
    h = *p + (h << 6) + (h << 16) - h;
  return h;
}

typedef struct point {
  uint32_t key;
  int node;
  int j;
} point;

typedef struct ring {
  point *p;
  size_t n;
  int nodes;
  uint32_t w;        /* points per node (its eweight) */
} ring;

static int point_cmp(const void *a, const void *b) {
  const point *x = a, *y = b;
  if (x->key != y->key)
    return x->key < y->key ? -1 : 1;
  if (x->node != y->node)
    return x->node - y->node;
  return x->j - y->j;
}

static int ring_build(ring *r, int nodes, int weight) {
  r->nodes = nodes;
  r->w = (uint32_t)weight * WEIGHT_SCALE;
  r->n = (size_t)nodes * r->w;
  r->p = malloc(r->n * sizeof(*r->p));
  if (r->p == NULL)
    return -1;
  size_t k = 0;
  for (int s = 0; s < nodes; s++)
    for (uint32_t j = 0; j < r->w; j++) {
      r->p[k].key = full_hash((uint32_t)(s + 1) * EWGHT_RANGE + j);
      r->p[k].node = s;
      r->p[k].j = (int)j;
      k++;
    }
  qsort(r->p, r->n, sizeof(*r->p), point_cmp);
  return 0;
}

/* The point HAProxy starts from for hash: the closest on either side. */
static size_t ring_start(const ring *r, uint32_t hash) {
  size_t lo = 0, hi = r->n;
  while (lo < hi) { /* first point with key >= hash */
    size_t mid = lo + (hi - lo) / 2;
    if (r->p[mid].key < hash)
      lo = mid + 1;
    else
      hi = mid;
  }
  size_t next = lo == r->n ? 0 : lo;
  size_t prev = next == 0 ? r->n - 1 : next - 1;
  uint32_t dp = hash - r->p[prev].key, dn = r->p[next].key - hash;
  return dp <= dn ? prev : next;
}

static uint32_t name_hash(const char *name) { return full_hash(sdbm(name)); }

int sim_fleet_home(const char *name, int nodes, int weight) {
  ring r;
  if (nodes < 1 || weight < 1 || weight > 256 || ring_build(&r, nodes, weight) != 0)
    return -1;
  int node = r.p[ring_start(&r, name_hash(name))].node;
  free(r.p);
  return node;
}

/* ------------------------------------------------------------------------ */
/* State                                                                     */


typedef struct fleet fleet;

typedef struct fnode {
  fleet *f;
  int idx;
  mb_ctx *ctx;
  int64_t inflight;        /* requests routed here and not yet released or failed */
  uint64_t *used, *last;   /* per device */
  double *area;
} fnode;

typedef struct req_ref {
  fleet *f;
  size_t i;
  int node;
} req_ref;

struct fleet {
  uint64_t now;
  const sim_trace *trace;
  const sim_models *models;
  const sim_fleet_config *cfg;
  int nn, nm, ndev;
  fnode *nodes;
  int *trace_model;        /* trace name index -> model index */
  int *home;               /* model index -> its node on the ring */
  size_t *home_point;      /* model index -> its starting point on the ring */
  int *slots;              /* model name hash table: model index + 1 */
  size_t slot_cap;
  unsigned char *on_dev;   /* [node * nm + model] charged on a device */
  int *dev;                /* [node * nm + model] that device */
  unsigned char *loaded;   /* [node * nm + model] loaded or restored there at least once */
  ring ring;
  int64_t served_total;    /* requests in flight over the fleet */
  int cursor;              /* least: where the turn of ties starts */
  sim_agenda ag;
  req_ref *refs;
  double *waits;
  size_t nwaits, outstanding;
  int nomem;
  sim_fleet_result *res;
};



static int find_model(const fleet *f, const char *name) {
  size_t b = sim_hash_str(name) & (f->slot_cap - 1);
  while (f->slots[b]) {
    int i = f->slots[b] - 1;
    if (strcmp(f->models->v[i].name, name) == 0)
      return i;
    b = (b + 1) & (f->slot_cap - 1);
  }
  return -1;
}

/* ------------------------------------------------------------------------ */
/* Routing                                                                   */

/* HAProxy's chash_server_is_eligible for servers of equal weight, listed
 * in node order. */
static int eligible(const fleet *f, int node) {
  uint64_t w = f->ring.w, tot = w * (uint64_t)f->nn;
  uint64_t tot_slots = ((uint64_t)(f->served_total + 1) * (uint64_t)f->cfg->balance_factor + 99) / 100;
  uint64_t per = tot_slots / tot, rem = tot_slots % tot, cum = w * (uint64_t)node;
  uint64_t slots = w * per + ((cum + w) * rem) / tot - (cum * rem) / tot;
  if (slots == 0)
    slots = 1;
  return (uint64_t)f->nodes[node].inflight < slots;
}

static int route(fleet *f, int model) {
  if (f->cfg->routing == SIM_ROUTE_HASH)
    return f->home[model];
  if (f->cfg->routing == SIM_ROUTE_SPILL) {
    size_t k = f->home_point[model];
    for (size_t step = 0; step < f->ring.n; step++) {
      int node = f->ring.p[k].node;
      if (eligible(f, node)) {
        if (node != f->home[model])
          f->res->spilled++;
        return node;
      }
      k = k + 1 == f->ring.n ? 0 : k + 1;
    }
    return f->home[model]; /* none eligible (cannot happen with a factor > 100) */
  }
  /* least: the fewest in flight; ties in turn from the cursor. */
  int best = -1;
  for (int k = 0; k < f->nn; k++) {
    int node = (f->cursor + k) % f->nn;
    if (best < 0 || f->nodes[node].inflight < f->nodes[best].inflight)
      best = node;
  }
  f->cursor = (best + 1) % f->nn;
  return best;
}

/* ------------------------------------------------------------------------ */
/* The simulated world                                                       */

static uint64_t fleet_clock(void *arg) { return ((fnode *)arg)->f->now; }

static void dev_change(fleet *f, fnode *n, int dev, uint64_t bytes, int add) {
  sim_mem_change(&n->area[dev], &n->used[dev], &n->last[dev], f->now, bytes, add);
}

static void fleet_submit(void *arg, mb_job *job) {
  fnode *n = arg;
  fleet *f = n->f;
  int i = find_model(f, mb_job_model(job));
  if (i < 0) {
    f->nomem = 1;
    mb_job_complete(job, MB_EBACKEND, "unknown model", NULL);
    return;
  }
  size_t at = (size_t)n->idx * (size_t)f->nm + (size_t)i;
  mb_job_kind k = mb_job_get_kind(job);
  if ((k == MB_JOB_LOAD || k == MB_JOB_RESTORE) && !f->on_dev[at]) {
    f->dev[at] = mb_job_device(job);
    f->on_dev[at] = 1;
    f->loaded[at] = 1;
    dev_change(f, n, f->dev[at], f->models->v[i].footprint_bytes, 1);
  }
  agenda_item it;
  memset(&it, 0, sizeof(it));
  it.t = f->now + (uint64_t)llround(sim_job_ms(&f->models->v[i], k) * MS_NS);
  it.kind = AG_JOB;
  it.node = n->idx;
  it.job = job;
  if (sim_agenda_push(&f->ag, it) != 0)
    f->nomem = 1; /* reported after the run; the item is lost */
}

static void finish_job(fleet *f, fnode *n, mb_job *job) {
  int i = find_model(f, mb_job_model(job));
  size_t at = (size_t)n->idx * (size_t)f->nm + (size_t)i;
  const sim_model *d = &f->models->v[i];
  mb_job_kind k = mb_job_get_kind(job);
  if (k == MB_JOB_LOAD) {
    f->res->all.load_s += d->load_ms / 1e3;
    f->res->node_loads[n->idx]++;
  } else if (k == MB_JOB_RESTORE) {
    f->res->all.restore_s += d->restore_ms / 1e3;
  } else if (f->on_dev[at]) {
    dev_change(f, n, f->dev[at], d->footprint_bytes, 0);
    f->on_dev[at] = 0;
  }
  mb_job_complete(job, 0, NULL, NULL);
}

static void on_answer(const mb_result *r, void *arg) {
  req_ref *ref = arg;
  fleet *f = ref->f;
  sim_result *all = &f->res->all;
  const sim_req *q = &f->trace->v[ref->i];
  f->outstanding--;
  if (r->rc != 0) {
    f->nodes[ref->node].inflight--;
    f->served_total--;
    all->failed++;
    if (r->rc == MB_ETIMEDOUT)
      all->timeouts++;
    else
      all->rejected++;
    return;
  }
  all->served++;
  if (r->load_ns == 0)
    all->warm++;
  f->waits[f->nwaits++] = (double)(f->now - (ORIGIN_NS + q->t_ns)) / MS_NS;
  agenda_item it;
  memset(&it, 0, sizeof(it));
  it.t = f->now + q->dur_ns;
  it.kind = AG_RELEASE;
  it.node = ref->node;
  it.lease = r->lease;
  if (sim_agenda_push(&f->ag, it) != 0)
    f->nomem = 1; /* reported after the run; the item is lost */
}

/* ------------------------------------------------------------------------ */
/* Setup                                                                     */

static int setup(fleet *f, char *err, size_t err_len) {
  const sim_models *models = f->models;
  const sim_trace *trace = f->trace;
  size_t cells = (size_t)f->nn * (size_t)f->nm;
  f->slot_cap = 64;
  while (f->slot_cap < (size_t)f->nm * 2)
    f->slot_cap *= 2;
  f->slots = calloc(f->slot_cap, sizeof(*f->slots));
  f->trace_model = calloc((size_t)trace->nnames + 1, sizeof(*f->trace_model));
  f->home = calloc((size_t)f->nm, sizeof(*f->home));
  f->home_point = calloc((size_t)f->nm, sizeof(*f->home_point));
  f->on_dev = calloc(cells, 1);
  f->loaded = calloc(cells, 1);
  f->dev = calloc(cells, sizeof(*f->dev));
  f->refs = calloc(trace->n, sizeof(*f->refs));
  f->waits = calloc(trace->n + 1, sizeof(*f->waits));
  f->nodes = calloc((size_t)f->nn, sizeof(*f->nodes));
  if (!f->slots || !f->trace_model || !f->home || !f->home_point || !f->on_dev || !f->loaded ||
      !f->dev || !f->refs || !f->waits || !f->nodes ||
      ring_build(&f->ring, f->nn, f->cfg->weight) != 0) {
    mb__set_err(err, err_len, "out of memory");
    return -1;
  }
  for (int i = 0; i < f->nm; i++) {
    size_t b = sim_hash_str(models->v[i].name) & (f->slot_cap - 1);
    while (f->slots[b])
      b = (b + 1) & (f->slot_cap - 1);
    f->slots[b] = i + 1;
    f->home_point[i] = ring_start(&f->ring, name_hash(models->v[i].name));
    f->home[i] = f->ring.p[f->home_point[i]].node;
  }
  for (int i = 0; i < trace->nnames; i++) {
    f->trace_model[i] = find_model(f, trace->names[i]);
    if (f->trace_model[i] < 0) {
      mb__set_err(err, err_len, "trace: model '%s' is not in the model table", trace->names[i]);
      return -1;
    }
  }
  for (int k = 0; k < f->nn; k++) {
    fnode *n = &f->nodes[k];
    n->f = f;
    n->idx = k;
    n->used = calloc((size_t)f->ndev, sizeof(*n->used));
    n->last = calloc((size_t)f->ndev, sizeof(*n->last));
    n->area = calloc((size_t)f->ndev, sizeof(*n->area));
    if (!n->used || !n->last || !n->area) {
      mb__set_err(err, err_len, "out of memory");
      return -1;
    }
  }
  return 0;
}

static int node_start(fleet *f, fnode *n, char *err, size_t err_len) {
  const sim_config *c = &f->cfg->node;
  mb_ctx_opts o;
  mb_ctx_opts_init(&o);
  o.manual = 1;
  o.clock = fleet_clock;
  o.clock_arg = n;
  o.executor.submit = fleet_submit;
  o.executor.arg = n;
  o.host_budget_bytes = c->host_bytes ? c->host_bytes : 1;
  o.keep_alive_ms = c->keep_alive_ms;
  o.eviction = c->policy == SIM_COST ? MB_EVICT_COST : MB_EVICT_LRU;
  char e[256] = "";
  if (mb_ctx_new(&o, &n->ctx, e, sizeof(e)) != 0) {
    mb__set_err(err, err_len, "node %d: core: %s", n->idx, e);
    return -1;
  }
  if (c->check_admission)
    mb__admission_check(n->ctx, 1);
  for (int d = 0; d < f->ndev; d++) {
    mb_device_opts dopt;
    mb_device_opts_init(&dopt);
    dopt.capacity_bytes = c->capacity_bytes;
    if (mb_device_add(n->ctx, &dopt, NULL, e, sizeof(e)) != 0) {
      mb__set_err(err, err_len, "node %d: device %d: %s", n->idx, d, e);
      return -1;
    }
    n->last[d] = f->now;
  }
  for (int i = 0; i < f->nm; i++) {
    const sim_model *d = &f->models->v[i];
    mb_model_opts mo;
    mb_model_opts_init(&mo);
    mo.footprint_bytes = d->footprint_bytes;
    if (d->device != SIM_DEVICE_AUTO && d->device >= f->ndev) {
      mb__set_err(err, err_len, "model '%s' is on device %d, but a node has %d device(s)", d->name,
              d->device, f->ndev);
      return -1;
    }
    mo.device = d->device == SIM_DEVICE_AUTO ? MB_DEVICE_AUTO : d->device;
    mo.restore_any_device = c->restore_anywhere;
    mo.keep_alive_ms = d->keep_alive_ms == SIM_KA_DEFAULT ? c->keep_alive_ms : d->keep_alive_ms;
    if (d->host_keep_alive_ms != SIM_KA_DEFAULT)
      mo.host_keep_alive_ms = d->host_keep_alive_ms;
    mo.offload = d->can_offload;
    mo.pinned = d->pinned;
    mo.max_concurrency = d->max_concurrency;
    mo.max_queue = d->max_queue;
    mo.queue_timeout_ms = d->queue_timeout_ms;
    if (mb_model_add(n->ctx, d->name, sim_backend(d->can_offload), NULL, &mo, e,
                     sizeof(e)) != 0) {
      mb__set_err(err, err_len, "model '%s': %s", d->name, e);
      return -1;
    }
  }
  return 0;
}

static void fleet_free(fleet *f) {
  for (int k = 0; f->nodes && k < f->nn; k++) {
    free(f->nodes[k].used);
    free(f->nodes[k].last);
    free(f->nodes[k].area);
  }
  free(f->nodes);
  free(f->slots);
  free(f->trace_model);
  free(f->home);
  free(f->home_point);
  free(f->on_dev);
  free(f->loaded);
  free(f->dev);
  free(f->refs);
  free(f->waits);
  free(f->ag.v);
  free(f->ring.p);
}

/* ------------------------------------------------------------------------ */
/* The run                                                                   */

/* One round's work: due jobs and releases, then due arrivals. */
static int round_inputs(fleet *f, size_t *next) {
  int did = 0;
  while (f->ag.n > 0 && f->ag.v[0].t <= f->now) {
    agenda_item it = sim_agenda_pop(&f->ag);
    fnode *n = &f->nodes[it.node];
    if (it.kind == AG_JOB) {
      finish_job(f, n, it.job);
    } else {
      if (mb_release(n->ctx, it.lease) != 0)
        f->nomem = 1; /* a lease the core does not know: a bug, reported */
      n->inflight--;
      f->served_total--;
    }
    did++;
  }
  const sim_trace *trace = f->trace;
  while (*next < trace->n && ORIGIN_NS + trace->v[*next].t_ns <= f->now) {
    size_t i = (*next)++;
    int model = f->trace_model[trace->v[i].name];
    int node = route(f, model);
    fnode *n = &f->nodes[node];
    if (f->cfg->route)
      f->cfg->route[i] = node;
    f->res->node_requests[node]++;
    f->res->all.requests++;
    f->refs[i].f = f;
    f->refs[i].i = i;
    f->refs[i].node = node;
    n->inflight++;
    f->served_total++;
    f->outstanding++;
    if (mb_acquire_async(n->ctx, f->models->v[model].name, NULL, on_answer, &f->refs[i], NULL) !=
        0) {
      f->outstanding--;
      n->inflight--;
      f->served_total--;
      f->res->all.failed++;
      f->res->all.rejected++;
    }
    did++;
  }
  return did;
}

int sim_fleet_run(const sim_models *models, const sim_trace *trace, const sim_fleet_config *cfg,
                  sim_fleet_result *out, char *err, size_t err_len) {
  fleet f;
  int rc = -1;
  memset(&f, 0, sizeof(f));
  memset(out, 0, sizeof(*out));
  out->routing = cfg->routing;
  out->nodes = cfg->nodes;
  out->all.policy = cfg->node.policy;
  if (cfg->nodes < 1 || cfg->nodes > SIM_MAX_NODES) {
    mb__set_err(err, err_len, "need 1 to %d nodes", SIM_MAX_NODES);
    return -1;
  }
  if (cfg->node.devices < 1 || cfg->node.devices > SIM_MAX_DEVICES ||
      cfg->node.capacity_bytes == 0) {
    mb__set_err(err, err_len, "need 1 to %d devices per node with a capacity > 0", SIM_MAX_DEVICES);
    return -1;
  }
  if (cfg->node.policy == SIM_BELADY || cfg->node.policy == SIM_ORACLE) {
    mb__set_err(err, err_len, "belady and oracle need each node's future, which the routing decides as it "
                          "goes: use lru or cost with several nodes");
    return -1;
  }
  if (cfg->weight < 1 || cfg->weight > 256 || cfg->balance_factor <= 100 ||
      cfg->balance_factor > 100000) {
    mb__set_err(err, err_len, "weight must be 1 to 256 and the balance factor more than 100 (%%)");
    return -1;
  }
  if (models->n < 1 || trace->n < 1) {
    mb__set_err(err, err_len, "need at least one model and one request");
    return -1;
  }
  f.trace = trace;
  f.models = models;
  f.cfg = cfg;
  f.nn = cfg->nodes;
  f.nm = models->n;
  f.ndev = cfg->node.devices;
  f.res = out;
  f.now = ORIGIN_NS + trace->v[0].t_ns;
  if (setup(&f, err, err_len) != 0)
    goto done;
  for (int k = 0; k < f.nn; k++)
    if (node_start(&f, &f.nodes[k], err, err_len) != 0)
      goto done_ctx;

  uint64_t w0 = mb_clock_monotonic(NULL); /* the machine's time, for wall_s */
  uint64_t start = f.now;
  size_t next = 0;
  int idle_rounds = 0;
  for (;;) {
    int did = round_inputs(&f, &next);
    for (int k = 0; k < f.nn; k++) {
      int n = mb_ctx_step(f.nodes[k].ctx);
      if (n > 0) {
        out->all.core_events += (uint64_t)n;
        did++;
      }
      out->all.core_steps++;
    }
    if (next >= trace->n && f.ag.n == 0 && f.outstanding == 0)
      break;
    uint64_t t = UINT64_MAX;
    if (f.ag.n > 0)
      t = f.ag.v[0].t;
    if (next < trace->n && ORIGIN_NS + trace->v[next].t_ns < t)
      t = ORIGIN_NS + trace->v[next].t_ns;
    for (int k = 0; k < f.nn; k++) {
      uint64_t dl = mb_ctx_next_deadline(f.nodes[k].ctx);
      if (dl < t)
        t = dl;
    }
    if (t == UINT64_MAX || (t <= f.now && !did && ++idle_rounds > 3)) {
      mb__set_err(err, err_len, "simulation stalled at t=%.3f s with %zu requests unanswered",
              (double)(f.now - ORIGIN_NS) / 1e9, f.outstanding);
      goto done_ctx;
    }
    if (t > f.now) {
      f.now = t;
      idle_rounds = 0;
    }
  }
  out->all.wall_s = (double)(mb_clock_monotonic(NULL) - w0) / 1e9;
  out->all.events_per_s = out->all.wall_s > 0 ? (double)out->all.core_events / out->all.wall_s : 0;
  if (f.nomem) {
    mb__set_err(err, err_len, "out of memory during the run");
    goto done_ctx;
  }

  out->all.sim_s = (double)(f.now - start) / 1e9;
  double span = (double)(f.now - start), sum = 0;
  out->all.ndev = f.nn;
  for (int k = 0; k < f.nn; k++) {
    fnode *n = &f.nodes[k];
    double u = 0;
    for (int d = 0; d < f.ndev; d++) {
      dev_change(&f, n, d, 0, 1);
      u += span > 0 ? n->area[d] / span / (double)cfg->node.capacity_bytes : 0;
    }
    if (k < SIM_MAX_DEVICES)
      out->all.util[k] = u / f.ndev;
    sum += u / f.ndev;
    if (cfg->node.check_admission) {
      mb__admit_stats ast;
      mb__admission_check_result(n->ctx, &ast);
      out->all.admit_auto += ast.auto_blocked;
      out->all.admit_any += ast.any_blocked;
      out->all.admit_planned += ast.planned;
      out->all.admit_bound += ast.bound_wait;
      if (ast.differ > 0 && out->all.admit_differ == 0)
        snprintf(out->all.admit_first, sizeof(out->all.admit_first), "node %d: %s", k,
                 ast.first);
      out->all.admit_differ += ast.differ;
    }
    for (int i = 0; i < f.nm; i++) {
      mb_status st;
      if (mb_model_status(n->ctx, models->v[i].name, &st) != 0)
        continue;
      out->all.loads += st.stats.loads;
      out->all.restores += st.stats.restores;
      out->all.offloads += st.stats.offloads;
      out->all.unloads += st.stats.unloads;
      out->all.evictions += st.stats.evictions;
    }
  }
  out->all.util_mean = sum / f.nn;
  uint64_t most = 0;
  for (int k = 0; k < f.nn; k++)
    if (out->node_requests[k] > most)
      most = out->node_requests[k];
  out->balance = out->all.requests ? (double)most * f.nn / (double)out->all.requests : 0;
  size_t models_loaded = 0, copies = 0;
  for (int i = 0; i < f.nm; i++) {
    size_t c = 0;
    for (int k = 0; k < f.nn; k++)
      c += f.loaded[(size_t)k * (size_t)f.nm + (size_t)i];
    copies += c;
    models_loaded += c > 0;
  }
  out->copies = models_loaded ? (double)copies / (double)models_loaded : 0;
  sim_wait_pcts(f.waits, f.nwaits, &out->all.wait_p50_ms, &out->all.wait_p99_ms);
  out->all.wait_max_ms = f.nwaits ? f.waits[f.nwaits - 1] : 0;
  rc = 0;

done_ctx:
  /* Anything still out (after an error) is completed so the contexts can go. */
  while (f.ag.n > 0) {
    agenda_item it = sim_agenda_pop(&f.ag);
    fnode *n = &f.nodes[it.node];
    if (it.kind == AG_JOB)
      mb_job_complete(it.job, 0, NULL, NULL);
    else if (mb_release(n->ctx, it.lease) != 0)
      continue;
    mb_ctx_step(n->ctx);
  }
  for (int k = 0; k < f.nn; k++)
    if (f.nodes[k].ctx && mb_ctx_free(f.nodes[k].ctx) != 0 && rc == 0) {
      mb__set_err(err, err_len, "core: node %d still busy at the end of the run", k);
      rc = -1;
    }
done:
  fleet_free(&f);
  return rc;
}
