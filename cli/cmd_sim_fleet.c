/*
 * cmd_sim_fleet.c - `modelbuf sim --nodes N`: a trace routed across a
 * fleet of nodes (sim/sim_fleet.h) by consistent hash (as the
 * HAProxy recipe does), least load, and hash with spill, and what each
 * routing cost: requests served warm, cold loads and restores, time
 * spent loading, queue wait, how evenly the nodes were used and on how
 * many nodes each model had to be loaded. See docs/SIMULATOR.md.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "cmd_sim_fleet.h"
#include "sim_fleet.h"

static int parse_int(const char *s, long lo, long hi, long *out) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (*s == '\0' || *end != '\0' || errno != 0 || v < lo || v > hi)
    return -1;
  *out = v;
  return 0;
}

int sim_fleet_option(sim_fleet_opts *o, const char *a, const char *v, int *bad) {
  long n;
  *bad = 0;
  if (strcmp(a, "--nodes") == 0) {
    if (parse_int(v, 1, SIM_MAX_NODES, &n) != 0) {
      fprintf(stderr, "modelbuf sim: --nodes '%s': expected 1 to %d\n", v, SIM_MAX_NODES);
      *bad = 1;
    }
    o->nodes = (int)n;
    return 1;
  }
  if (strcmp(a, "--routing") == 0) {
    sim_routing r;
    if (strcmp(v, "all") != 0 && sim_routing_parse(v, &r) != 0) {
      fprintf(stderr, "modelbuf sim: --routing '%s': expected hash, least, spill or all\n", v);
      *bad = 1;
    }
    o->routing = v;
    return 1;
  }
  if (strcmp(a, "--balance-factor") == 0) {
    if (parse_int(v, 101, 100000, &n) != 0) {
      fprintf(stderr, "modelbuf sim: --balance-factor '%s': expected a percentage over 100\n", v);
      *bad = 1;
    }
    o->balance_factor = (int)n;
    return 1;
  }
  if (strcmp(a, "--route") == 0) {
    o->route = v;
    return 1;
  }
  return 0;
}

int sim_fleet_print_route(const sim_fleet_opts *o) {
  if (o->nodes < 1) {
    fprintf(stderr, "modelbuf sim: --route needs --nodes N\n");
    return CLI_EXIT_USAGE;
  }
  const char *p = o->route;
  for (;;) {
    const char *e = strchr(p, ',');
    size_t n = e ? (size_t)(e - p) : strlen(p);
    char name[256];
    if (n == 0 || n >= sizeof(name)) {
      fprintf(stderr, "modelbuf sim: --route: names are 1 to %zu bytes, comma-separated\n",
              sizeof(name) - 1);
      return CLI_EXIT_USAGE;
    }
    memcpy(name, p, n);
    name[n] = '\0';
    printf("%s %d\n", name, sim_fleet_home(name, o->nodes, 100) + 1);
    if (e == NULL)
      break;
    p = e + 1;
  }
  return CLI_EXIT_OK;
}

static void print_table(const sim_fleet_result *r, int n) {
  printf("%-7s %9s %6s %7s %8s %12s %11s %11s %7s %6s %7s %8s %6s\n", "routing", "requests",
         "warm%", "loads", "restores", "load+rest_s", "wait_p50ms", "wait_p99ms", "failed",
         "util%", "copies", "balance", "spill%");
  for (int i = 0; i < n; i++) {
    const sim_fleet_result *x = &r[i];
    const sim_result *a = &x->all;
    printf("%-7s %9llu %6.1f %7llu %8llu %12.1f %11.1f %11.1f %7llu %6.1f %7.2f %8.2f %6.1f\n",
           sim_routing_name(x->routing), (unsigned long long)a->requests,
           a->requests ? 100.0 * (double)a->warm / (double)a->requests : 0,
           (unsigned long long)a->loads, (unsigned long long)a->restores,
           a->load_s + a->restore_s, a->wait_p50_ms, a->wait_p99_ms,
           (unsigned long long)a->failed, 100.0 * a->util_mean, x->copies, x->balance,
           a->requests ? 100.0 * (double)x->spilled / (double)a->requests : 0);
  }
  for (int i = 0; i < n; i++) {
    printf("%s: requests per node", sim_routing_name(r[i].routing));
    for (int k = 0; k < r[i].nodes; k++)
      printf(" %llu", (unsigned long long)r[i].node_requests[k]);
    printf("; loads per node");
    for (int k = 0; k < r[i].nodes; k++)
      printf(" %llu", (unsigned long long)r[i].node_loads[k]);
    printf("\n");
  }
}

static void print_u64s(const char *key, const uint64_t *v, int n) {
  printf(", \"%s\": [", key);
  for (int k = 0; k < n; k++)
    printf("%s%llu", k ? ", " : "", (unsigned long long)v[k]);
  printf("]");
}

static void print_json(const sim_fleet_result *r, int n, const sim_models *m,
                       const sim_trace *t, const sim_fleet_config *c, uint64_t seed) {
  printf("{\"nodes\": %d, \"models\": %d, \"requests\": %zu, \"devices_per_node\": %d, "
         "\"capacity_bytes\": %llu, \"host_bytes\": %llu, \"keep_alive_ms\": %lld, "
         "\"policy\": \"%s\", \"balance_factor\": %d, \"seed\": %llu, \"results\": [",
         c->nodes, m->n, t->n, c->node.devices, (unsigned long long)c->node.capacity_bytes,
         (unsigned long long)c->node.host_bytes, (long long)c->node.keep_alive_ms,
         sim_policy_name(c->node.policy), c->balance_factor, (unsigned long long)seed);
  for (int i = 0; i < n; i++) {
    const sim_fleet_result *x = &r[i];
    const sim_result *a = &x->all;
    printf("%s\n  {\"routing\": \"%s\", \"requests\": %llu, \"served\": %llu, \"warm\": %llu, "
           "\"warm_rate\": %.4f, \"failed\": %llu, \"timeouts\": %llu, \"rejected\": %llu, "
           "\"loads\": %llu, \"restores\": %llu, \"offloads\": %llu, \"unloads\": %llu, "
           "\"evictions\": %llu, \"load_s\": %.3f, \"restore_s\": %.3f, "
           "\"load_restore_s\": %.3f, \"wait_p50_ms\": %.3f, \"wait_p99_ms\": %.3f, "
           "\"wait_max_ms\": %.3f, \"sim_s\": %.3f, \"util_mean\": %.4f, \"copies\": %.4f, "
           "\"balance\": %.4f, \"spilled\": %llu",
           i ? "," : "", sim_routing_name(x->routing), (unsigned long long)a->requests,
           (unsigned long long)a->served, (unsigned long long)a->warm,
           a->requests ? (double)a->warm / (double)a->requests : 0,
           (unsigned long long)a->failed, (unsigned long long)a->timeouts,
           (unsigned long long)a->rejected, (unsigned long long)a->loads,
           (unsigned long long)a->restores, (unsigned long long)a->offloads,
           (unsigned long long)a->unloads, (unsigned long long)a->evictions, a->load_s,
           a->restore_s, a->load_s + a->restore_s, a->wait_p50_ms, a->wait_p99_ms,
           a->wait_max_ms, a->sim_s, a->util_mean, x->copies, x->balance,
           (unsigned long long)x->spilled);
    print_u64s("node_requests", x->node_requests, x->nodes);
    print_u64s("node_loads", x->node_loads, x->nodes);
    printf(", \"node_util\": [");
    for (int k = 0; k < x->nodes; k++)
      printf("%s%.4f", k ? ", " : "", a->util[k]);
    printf("], \"core_events\": %llu, \"wall_s\": %.4f", (unsigned long long)a->core_events,
           a->wall_s);
    if (c->node.check_admission) {
      printf(", \"admission_check\": {\"auto_blocked\": %llu, \"any_blocked\": %llu, "
             "\"planned\": %llu, \"bound_wait\": %llu, \"differ\": %llu, \"first\": \"",
             (unsigned long long)a->admit_auto, (unsigned long long)a->admit_any,
             (unsigned long long)a->admit_planned, (unsigned long long)a->admit_bound,
             (unsigned long long)a->admit_differ);
      for (const char *p = a->admit_first; *p; p++) /* a model name may hold a quote */
        printf(*p == '"' || *p == '\\' ? "\\%c" : "%c", *p);
      printf("\"}");
    }
    printf("}");
  }
  printf("\n]}\n");
}

int sim_fleet_main(const sim_fleet_opts *o, const sim_models *models, const sim_trace *trace,
                   const sim_config *node, const char *policy, uint64_t seed, int json) {
  sim_fleet_config c;
  sim_fleet_config_init(&c);
  c.node = *node;
  c.nodes = o->nodes;
  if (o->balance_factor)
    c.balance_factor = o->balance_factor;
  if (strcmp(policy, "all") == 0) {
    c.node.policy = SIM_COST;
  } else if (sim_policy_parse(policy, &c.node.policy) != 0 || c.node.policy == SIM_BELADY ||
             c.node.policy == SIM_ORACLE) {
    fprintf(stderr, "modelbuf sim: --policy '%s' with --nodes: expected lru or cost (belady "
            "and oracle need each node's future, which the routing decides as it goes)\n", policy);
    return CLI_EXIT_USAGE;
  }
  sim_routing rs[3];
  int nr = 0;
  if (o->routing == NULL || strcmp(o->routing, "all") == 0) {
    rs[0] = SIM_ROUTE_HASH;
    rs[1] = SIM_ROUTE_LEAST;
    rs[2] = SIM_ROUTE_SPILL;
    nr = 3;
  } else if (sim_routing_parse(o->routing, &rs[0]) == 0) {
    nr = 1;
  }
  sim_fleet_result *res = calloc((size_t)nr, sizeof(*res));
  if (res == NULL) {
    fprintf(stderr, "modelbuf sim: out of memory\n");
    return CLI_EXIT_FAIL;
  }
  char err[512] = "";
  for (int i = 0; i < nr; i++) {
    c.routing = rs[i];
    if (sim_fleet_run(models, trace, &c, &res[i], err, sizeof(err)) != 0) {
      fprintf(stderr, "modelbuf sim: %s: %s\n", sim_routing_name(rs[i]), err);
      free(res);
      return CLI_EXIT_FAIL;
    }
  }
  if (json) {
    print_json(res, nr, models, trace, &c, seed);
  } else {
    char cap[32], host[32];
    printf("%d nodes of %d device(s) of %s, host tier %s each, eviction %s, keep-alive %lld ms; "
           "%d models, %zu requests\n",
           c.nodes, c.node.devices, cli_fmt_bytes(c.node.capacity_bytes, cap, sizeof(cap)),
           cli_fmt_bytes(c.node.host_bytes, host, sizeof(host)), sim_policy_name(c.node.policy),
           (long long)c.node.keep_alive_ms, models->n, trace->n);
    print_table(res, nr);
    for (int i = 0; i < nr && c.node.check_admission; i++)
      printf("admission check (%s): decisions checked %llu of auto_blocked, %llu of "
             "any_blocked, %llu planned, %llu of bound_wait; %llu differ%s%s\n",
             sim_routing_name(res[i].routing), (unsigned long long)res[i].all.admit_auto,
             (unsigned long long)res[i].all.admit_any,
             (unsigned long long)res[i].all.admit_planned,
             (unsigned long long)res[i].all.admit_bound,
             (unsigned long long)res[i].all.admit_differ,
             res[i].all.admit_differ ? "; first: " : "", res[i].all.admit_first);
  }
  int rc = CLI_EXIT_OK;
  for (int i = 0; i < nr; i++)
    if (res[i].all.admit_differ > 0)
      rc = CLI_EXIT_FAIL; /* --check-admission found a difference */
  free(res);
  return rc;
}
