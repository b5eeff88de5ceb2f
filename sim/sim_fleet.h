/*
 * sim_fleet.h - the simulator over a fleet (docs/SIMULATOR.md, "Several
 * nodes"): a trace routed across N nodes, each node a whole residency core
 * with its own devices and host tier, all under one virtual clock, to
 * compare how a balancer in front of them should route:
 *
 *   hash    each model always to one node: a consistent hash of its name,
 *           HAProxy's own ring (balance hdr + hash-type consistent sdbm
 *           avalanche, servers of equal weight, numbered 1..N as listed:
 *           the recipe of examples/haproxy), so a model is loaded on one
 *           node only;
 *   least   each request to the node with the fewest requests in flight
 *           (HAProxy's leastconn; ties in turn), blind to models;
 *   spill   the model's node on the ring unless it holds more than its
 *           share of the requests in flight (factor % of the mean), then
 *           the next node on the ring that does not: consistent hashing
 *           with bounded loads, HAProxy's hash-balance-factor.
 *
 * As sim.h: deterministic (the same inputs give the same numbers; only
 * wall_s measures the machine), nothing prints, errors in err.
 */
#ifndef MB_SIM_FLEET_H
#define MB_SIM_FLEET_H

#include "sim.h"

#define SIM_MAX_NODES 256

typedef enum sim_routing { SIM_ROUTE_HASH = 0, SIM_ROUTE_LEAST, SIM_ROUTE_SPILL } sim_routing;

const char *sim_routing_name(sim_routing r);
/* "hash", "least", "spill" -> 0 and *out; -1 otherwise. */
int sim_routing_parse(const char *s, sim_routing *out);

typedef struct sim_fleet_config {
  sim_config node;     /* every node: devices, capacity, host tier, eviction (lru or cost),
                          keep-alive; with check_admission every node's core checks its
                          admission decisions, all.admit_* adding them up */
  int nodes;           /* 1..SIM_MAX_NODES */
  sim_routing routing;
  int balance_factor;  /* spill: percent of the mean load a node may take (> 100; 150) */
  int weight;          /* each server's HAProxy weight (1..256; 100 as in the recipe):
                          weight x 16 points of the ring per node */
  int *route;          /* optional, trace->n entries: the node each request went to */
} sim_fleet_config;

void sim_fleet_config_init(sim_fleet_config *c);

typedef struct sim_fleet_result {
  sim_routing routing;
  sim_result all;      /* over the whole fleet: requests, warm, loads, waits, ... (util:
                          per node, the mean over its devices) */
  int nodes;
  uint64_t node_requests[SIM_MAX_NODES];
  uint64_t node_loads[SIM_MAX_NODES];
  uint64_t spilled;    /* spill: requests sent to another node than their model's */
  double balance;      /* the busiest node's requests over the mean */
  double copies;       /* nodes each model was loaded on, on average over the models
                          loaded at all (1.0: every model on one node only) */
} sim_fleet_result;

/*
 * Replays trace across cfg->nodes nodes, routed by cfg->routing. Every
 * model the trace names must be in models; belady is refused (its future
 * depends on where the balancer will send each request).
 */
int sim_fleet_run(const sim_models *models, const sim_trace *trace, const sim_fleet_config *cfg,
                  sim_fleet_result *out, char *err, size_t err_len);

/*
 * The node (0-based: server node+1 of the list) that HAProxy's consistent
 * hash gives the name when all nodes are up, each with the given weight.
 * -1 for nodes < 1.
 */
int sim_fleet_home(const char *name, int nodes, int weight);

#endif /* MB_SIM_FLEET_H */
