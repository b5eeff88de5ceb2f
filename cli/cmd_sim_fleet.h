/*
 * cmd_sim_fleet.h - private to the modelbuf tool: `modelbuf sim --nodes N`,
 * the simulator over a fleet of nodes behind a balancer
 * (sim/sim_fleet.h; docs/SIMULATOR.md, "Several nodes"). cmd_sim.c
 * hands it the options it does not know and, once the models and the
 * trace are read, the run.
 */
#ifndef MB_CLI_SIM_FLEET_H
#define MB_CLI_SIM_FLEET_H

#include "sim.h"

typedef struct sim_fleet_opts {
  int nodes;              /* 0: not a fleet run */
  const char *routing;    /* hash, least, spill or all (default) */
  int balance_factor;     /* spill's, percent (default 150) */
  const char *route;      /* --route NAME,...: print each name's node and stop */
} sim_fleet_opts;

/* Takes option a (with value v) if it is one of the fleet's: 1 when taken
 * (*bad = 1 after printing why when its value is wrong), 0 when not. */
int sim_fleet_option(sim_fleet_opts *o, const char *a, const char *v, int *bad);

/* --route: each name of the list and the node (1-based, the balancer's
 * server order) it hashes to. The exit status. */
int sim_fleet_print_route(const sim_fleet_opts *o);

/* Runs the trace across the nodes with each routing asked for; policy is
 * --policy as given (all: cost). Prints the table or JSON. The exit status. */
int sim_fleet_main(const sim_fleet_opts *o, const sim_models *models, const sim_trace *trace,
                   const sim_config *node, const char *policy, uint64_t seed, int json);

#endif /* MB_CLI_SIM_FLEET_H */
