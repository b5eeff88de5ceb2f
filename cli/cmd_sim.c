/*
 * cmd_sim.c - `modelbuf sim`: replays a request trace (a CSV file or a
 * generator) through the real residency core with a virtual clock, once
 * per eviction policy, and prints what each policy cost: requests served
 * warm, cold loads, restores, time spent loading, queue wait, evictions,
 * memory utilisation. See docs/SIMULATOR.md.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sim.h"
#include "cli.h"
#include "cmd_sim_fleet.h"

static void usage_sim(FILE *out) {
  cli_command_usage(out, "sim");
}

/* "250ms", "30s", "5m", "1h", seconds, or -1 / "forever". */
static int parse_duration_ms(const char *s, int64_t *out) {
  if (strcmp(s, "-1") == 0 || strcmp(s, "forever") == 0) {
    *out = -1;
    return 0;
  }
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (end == s || errno != 0 || !(v >= 0) || v > 1e9)
    return -1;
  double mult;
  if (*end == '\0' || strcmp(end, "s") == 0)
    mult = 1000;
  else if (strcmp(end, "ms") == 0)
    mult = 1;
  else if (strcmp(end, "m") == 0)
    mult = 60000;
  else if (strcmp(end, "h") == 0)
    mult = 3600000;
  else
    return -1;
  *out = (int64_t)(v * mult);
  return 0;
}

static int parse_u64(const char *s, uint64_t *out) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (*s == '\0' || *s == '-' || *end != '\0' || errno != 0)
    return -1;
  *out = v;
  return 0;
}

/* "N[,min=SIZE,max=SIZE]" */
static int gen_models(const char *spec, uint64_t seed, sim_models *out, char *err, size_t len) {
  char buf[128];
  uint64_t n, min = 512ull << 20, max = 16ull << 30;
  snprintf(buf, sizeof(buf), "%s", spec);
  char *save = NULL;
  char *tok = strtok_r(buf, ",", &save);
  if (tok == NULL || parse_u64(tok, &n) != 0 || n < 1 || n > 1000000) {
    snprintf(err, len, "--gen-models: '%s': expected N[,min=SIZE,max=SIZE] with 1 <= N <= 1e6",
             spec);
    return -1;
  }
  while ((tok = strtok_r(NULL, ",", &save)) != NULL) {
    uint64_t *slot = strncmp(tok, "min=", 4) == 0 ? &min : strncmp(tok, "max=", 4) == 0 ? &max
                                                                                          : NULL;
    if (slot == NULL || cli_parse_size(tok + 4, slot) != 0) {
      snprintf(err, len, "--gen-models: '%s' is not min=SIZE or max=SIZE", tok);
      return -1;
    }
  }
  return sim_models_generate(out, (int)n, min, max, seed, err, len);
}

static void print_table(const sim_result *r, int n) {
  printf("%-7s %9s %6s %8s %8s %9s %12s %11s %11s %7s %6s %10s %7s\n", "policy", "requests",
         "warm%", "loads", "restores", "evictions", "load+rest_s", "wait_p50ms", "wait_p99ms",
         "failed", "util%", "events", "Mev/s");
  for (int i = 0; i < n; i++) {
    const sim_result *x = &r[i];
    printf("%-7s %9llu %6.1f %8llu %8llu %9llu %12.1f %11.1f %11.1f %7llu %6.1f %10llu %7.2f\n",
           sim_policy_name(x->policy), (unsigned long long)x->requests,
           x->requests ? 100.0 * (double)x->warm / (double)x->requests : 0,
           (unsigned long long)x->loads, (unsigned long long)x->restores,
           (unsigned long long)x->evictions, x->load_s + x->restore_s, x->wait_p50_ms,
           x->wait_p99_ms, (unsigned long long)x->failed, 100.0 * x->util_mean,
           (unsigned long long)x->core_events, x->events_per_s / 1e6);
  }
}

static void print_json(const sim_result *r, int n, const sim_models *m, const sim_trace *t,
                       const sim_config *c, uint64_t seed, double cost_lru, double cost_bel) {
  printf("{\"models\": %d, \"requests\": %zu, \"devices\": %d, \"capacity_bytes\": %llu, "
         "\"host_bytes\": %llu, \"keep_alive_ms\": %lld, \"seed\": %llu, \"results\": [",
         m->n, t->n, c->devices, (unsigned long long)c->capacity_bytes,
         (unsigned long long)c->host_bytes, (long long)c->keep_alive_ms,
         (unsigned long long)seed);
  for (int i = 0; i < n; i++) {
    const sim_result *x = &r[i];
    printf("%s\n  {\"policy\": \"%s\", \"requests\": %llu, \"served\": %llu, \"warm\": %llu, "
           "\"failed\": %llu, \"timeouts\": %llu, \"rejected\": %llu, \"loads\": %llu, "
           "\"restores\": %llu, \"offloads\": %llu, \"unloads\": %llu, \"evictions\": %llu, "
           "\"load_s\": %.3f, \"restore_s\": %.3f, \"load_restore_s\": %.3f, "
           "\"wait_p50_ms\": %.3f, \"wait_p99_ms\": %.3f, \"wait_max_ms\": %.3f, "
           "\"sim_s\": %.3f, \"util_mean\": %.4f, \"util\": [",
           i ? "," : "", sim_policy_name(x->policy), (unsigned long long)x->requests,
           (unsigned long long)x->served, (unsigned long long)x->warm,
           (unsigned long long)x->failed, (unsigned long long)x->timeouts,
           (unsigned long long)x->rejected, (unsigned long long)x->loads,
           (unsigned long long)x->restores, (unsigned long long)x->offloads,
           (unsigned long long)x->unloads, (unsigned long long)x->evictions, x->load_s,
           x->restore_s, x->load_s + x->restore_s, x->wait_p50_ms, x->wait_p99_ms,
           x->wait_max_ms, x->sim_s, x->util_mean);
    for (int d = 0; d < x->ndev; d++)
      printf("%s%.4f", d ? ", " : "", x->util[d]);
    printf("], \"core_events\": %llu, \"core_steps\": %llu, \"wall_s\": %.4f, "
           "\"events_per_s\": %.0f",
           (unsigned long long)x->core_events, (unsigned long long)x->core_steps, x->wall_s,
           x->events_per_s);
    if (c->check_admission) {
      printf(", \"admission_check\": {\"auto_blocked\": %llu, \"any_blocked\": %llu, "
             "\"planned\": %llu, \"bound_wait\": %llu, \"differ\": %llu, \"first\": \"",
             (unsigned long long)x->admit_auto, (unsigned long long)x->admit_any,
             (unsigned long long)x->admit_planned, (unsigned long long)x->admit_bound,
             (unsigned long long)x->admit_differ);
      for (const char *p = x->admit_first; *p; p++) /* a model name may hold a quote */
        printf(*p == '"' || *p == '\\' ? "\\%c" : "%c", *p);
      printf("\"}");
    }
    printf("}");
  }
  printf("\n], \"ratios\": {");
  int any = 0;
  if (cost_lru >= 0) {
    printf("\"cost_vs_lru\": %.4f", cost_lru);
    any = 1;
  }
  if (cost_bel >= 0)
    printf("%s\"cost_vs_belady\": %.4f", any ? ", " : "", cost_bel);
  printf("}}\n");
}

static double ratio(const sim_result *a, const sim_result *b) {
  double x = a->load_s + a->restore_s, y = b->load_s + b->restore_s;
  if (y == 0)
    return x == 0 ? 1.0 : -1;
  return x / y;
}

int cmd_sim(int argc, char **argv) {
  const char *models_path = NULL, *models_gen = NULL, *trace_path = NULL, *gen_spec = NULL;
  const char *policy = "all", *write_trace = NULL, *write_models = NULL;
  int json = 0, host_given = 0, bad = 0;
  uint64_t seed = 1;
  sim_fleet_opts fleet;
  memset(&fleet, 0, sizeof(fleet));
  sim_config cfg;
  sim_config_init(&cfg);
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    int takes = 1;
    if (strcmp(a, "--json") == 0) {
      json = 1;
      takes = 0;
    } else if (strcmp(a, "--check-admission") == 0) {
      cfg.check_admission = 1;
      takes = 0;
    } else if (strcmp(a, "--restore-anywhere") == 0) {
      cfg.restore_anywhere = 1;
      takes = 0;
    } else if (v == NULL) {
      fprintf(stderr, "modelbuf sim: %s needs a value (or is unknown)\n", a);
      usage_sim(stderr);
      return CLI_EXIT_USAGE;
    } else if (strcmp(a, "--models") == 0) {
      models_path = v;
    } else if (strcmp(a, "--gen-models") == 0) {
      models_gen = v;
    } else if (strcmp(a, "--trace") == 0) {
      trace_path = v;
    } else if (strcmp(a, "--gen") == 0) {
      gen_spec = v;
    } else if (strcmp(a, "--policy") == 0) {
      policy = v;
    } else if (strcmp(a, "--write-trace") == 0) {
      write_trace = v;
    } else if (strcmp(a, "--write-models") == 0) {
      write_models = v;
    } else if (strcmp(a, "--devices") == 0) {
      uint64_t n;
      if (parse_u64(v, &n) != 0 || n < 1 || n > SIM_MAX_DEVICES) {
        fprintf(stderr, "modelbuf sim: --devices '%s': expected 1 to %d\n", v, SIM_MAX_DEVICES);
        return CLI_EXIT_USAGE;
      }
      cfg.devices = (int)n;
    } else if (strcmp(a, "--capacity") == 0) {
      if (cli_parse_size(v, &cfg.capacity_bytes) != 0 || cfg.capacity_bytes == 0) {
        fprintf(stderr, "modelbuf sim: --capacity '%s' is not a size like 80GiB\n", v);
        return CLI_EXIT_USAGE;
      }
    } else if (strcmp(a, "--host") == 0) {
      if (cli_parse_size(v, &cfg.host_bytes) != 0) {
        fprintf(stderr, "modelbuf sim: --host '%s' is not a size like 64GiB (or 0)\n", v);
        return CLI_EXIT_USAGE;
      }
      host_given = 1;
    } else if (strcmp(a, "--keep-alive") == 0) {
      if (parse_duration_ms(v, &cfg.keep_alive_ms) != 0) {
        fprintf(stderr, "modelbuf sim: --keep-alive '%s' is not a duration (30s, 5m, -1)\n", v);
        return CLI_EXIT_USAGE;
      }
    } else if (strcmp(a, "--seed") == 0) {
      if (parse_u64(v, &seed) != 0) {
        fprintf(stderr, "modelbuf sim: --seed '%s' is not a number\n", v);
        return CLI_EXIT_USAGE;
      }
    } else if (sim_fleet_option(&fleet, a, v, &bad)) {
      if (bad)
        return CLI_EXIT_USAGE;
    } else {
      fprintf(stderr, "modelbuf sim: unknown option '%s'\n", a);
      usage_sim(stderr);
      return CLI_EXIT_USAGE;
    }
    i += takes;
  }
  if (fleet.route != NULL)
    return sim_fleet_print_route(&fleet);
  if (!host_given)
    cfg.host_bytes = cfg.capacity_bytes * (uint64_t)cfg.devices;
  if ((models_path != NULL) == (models_gen != NULL)) {
    fprintf(stderr, "modelbuf sim: give one of --models or --gen-models\n");
    usage_sim(stderr);
    return CLI_EXIT_USAGE;
  }
  if ((trace_path != NULL) == (gen_spec != NULL) && write_models == NULL) {
    fprintf(stderr, "modelbuf sim: give one of --trace or --gen\n");
    usage_sim(stderr);
    return CLI_EXIT_USAGE;
  }
  sim_policy pols[3];
  int npol = 0;
  if (strcmp(policy, "all") == 0) {
    pols[0] = SIM_LRU;
    pols[1] = SIM_COST;
    pols[2] = SIM_BELADY;
    npol = 3;
  } else if (sim_policy_parse(policy, &pols[0]) == 0) {
    npol = 1;
  } else {
    fprintf(stderr, "modelbuf sim: --policy '%s': expected lru, cost, belady or all\n", policy);
    return CLI_EXIT_USAGE;
  }

  char err[512] = "";
  int rc = CLI_EXIT_FAIL;
  sim_models models;
  sim_trace trace;
  sim_gen gen;
  memset(&models, 0, sizeof(models));
  memset(&trace, 0, sizeof(trace));
  if (gen_spec && sim_gen_parse(gen_spec, &gen, err, sizeof(err)) != 0) {
    fprintf(stderr, "modelbuf sim: --gen: %s\n", err);
    return CLI_EXIT_USAGE;
  }
  if (models_path ? sim_models_load(models_path, &models, err, sizeof(err))
                  : gen_models(models_gen, seed, &models, err, sizeof(err))) {
    fprintf(stderr, "modelbuf sim: %s\n", err);
    goto out;
  }
  if (write_models) {
    FILE *f = fopen(write_models, "w");
    if (f == NULL) {
      fprintf(stderr, "modelbuf sim: %s: %s\n", write_models, strerror(errno));
      goto out;
    }
    sim_models_write(f, &models);
    if (fclose(f) != 0) {
      fprintf(stderr, "modelbuf sim: %s: write failed\n", write_models);
      goto out;
    }
    if (trace_path == NULL && gen_spec == NULL) {
      rc = CLI_EXIT_OK;
      goto out;
    }
  }
  if (trace_path ? sim_trace_load(trace_path, &trace, err, sizeof(err))
                 : sim_gen_run(&gen, &models, seed, &trace, err, sizeof(err))) {
    fprintf(stderr, "modelbuf sim: %s\n", err);
    goto out;
  }
  if (write_trace) {
    FILE *f = fopen(write_trace, "w");
    if (f == NULL) {
      fprintf(stderr, "modelbuf sim: %s: %s\n", write_trace, strerror(errno));
      goto out;
    }
    sim_trace_write(f, &trace);
    if (fclose(f) != 0) {
      fprintf(stderr, "modelbuf sim: %s: write failed\n", write_trace);
      goto out;
    }
    rc = CLI_EXIT_OK;
    goto out;
  }
  if (write_models) {
    rc = CLI_EXIT_OK;
    goto out;
  }

  if (fleet.nodes > 0) {
    rc = sim_fleet_main(&fleet, &models, &trace, &cfg, policy, seed, json);
    goto out;
  }
  sim_result *res = calloc((size_t)npol, sizeof(*res));
  if (res == NULL) {
    fprintf(stderr, "modelbuf sim: out of memory\n");
    goto out;
  }
  for (int i = 0; i < npol; i++) {
    cfg.policy = pols[i];
    if (sim_run(&models, &trace, &cfg, &res[i], err, sizeof(err)) != 0) {
      fprintf(stderr, "modelbuf sim: %s: %s\n", sim_policy_name(pols[i]), err);
      free(res);
      goto out;
    }
  }
  double cost_lru = -1, cost_bel = -1;
  if (npol == 3) {
    cost_lru = ratio(&res[1], &res[0]);
    cost_bel = ratio(&res[1], &res[2]);
  }
  if (json) {
    print_json(res, npol, &models, &trace, &cfg, seed, cost_lru, cost_bel);
  } else {
    char cap[32], host[32];
    printf("%d models, %zu requests, %d device(s) of %s, host tier %s, keep-alive %lld ms\n",
           models.n, trace.n, cfg.devices, cli_fmt_bytes(cfg.capacity_bytes, cap, sizeof(cap)),
           cli_fmt_bytes(cfg.host_bytes, host, sizeof(host)), (long long)cfg.keep_alive_ms);
    print_table(res, npol);
    if (npol == 3)
      printf("load+restore time: cost/lru %.3f, cost/belady %.3f\n", cost_lru, cost_bel);
    for (int i = 0; i < npol && cfg.check_admission; i++)
      printf("admission check (%s): decisions checked %llu of auto_blocked, %llu of "
             "any_blocked, %llu planned, %llu of bound_wait; %llu differ%s%s\n",
             sim_policy_name(res[i].policy), (unsigned long long)res[i].admit_auto,
             (unsigned long long)res[i].admit_any, (unsigned long long)res[i].admit_planned,
             (unsigned long long)res[i].admit_bound, (unsigned long long)res[i].admit_differ, res[i].admit_differ ? "; first: " : "",
             res[i].admit_first);
  }
  rc = CLI_EXIT_OK;
  for (int i = 0; i < npol; i++)
    if (res[i].admit_differ > 0)
      rc = CLI_EXIT_FAIL;
  free(res);
out:
  sim_trace_free(&trace);
  sim_models_free(&models);
  return rc;
}
