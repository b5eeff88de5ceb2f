/*
 * standin_ctl.c - the stand-in GPU machine from outside (tests only):
 *
 *   standin_ctl show            the GPUs and processes as JSON (after
 *                               forgetting processes whose release is over)
 *   standin_ctl lose GPU [0|1]  marks a GPU lost (1, default) or back (0)
 *   standin_ctl fail PID SPEC   fault rules for process PID (0: every
 *                               process), read at its next driver call
 *
 * The machine is MB_STANDIN_MACHINE's (machine.h), as for the libraries.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "machine.h"

static const char *state_name(int s) {
  switch (s) {
  case MBSI_RUNNING: return "running";
  case MBSI_LOCKED: return "locked";
  case MBSI_CHECKPOINTED: return "checkpointed";
  default: return "failed";
  }
}

static int show(mbsi_machine *m) {
  mbsi_lock();
  mbsi_reap_locked(m);
  printf("{\"gpus\": [");
  for (int i = 0; i < m->n_gpus; i++)
    printf("%s{\"index\": %d, \"name\": \"%s\", \"bus\": \"%s\", \"total\": %llu, \"used\": %llu, "
           "\"lost\": %d}",
           i ? ", " : "", i, m->gpu[i].name, m->gpu[i].bus, (unsigned long long)m->gpu[i].total,
           (unsigned long long)mbsi_used_locked(m, i), atomic_load(&m->gpu[i].lost));
  printf("], \"ctx_bytes\": %llu, \"procs\": [", (unsigned long long)m->ctx_bytes);
  int first = 1;
  for (int i = 0; i < MBSI_MAX_PROCS; i++) {
    const mbsi_proc *p = &m->proc[i];
    if (p->pid == 0)
      continue;
    printf("%s{\"pid\": %d, \"state\": \"%s\", \"gone\": %s, \"dev\": [", first ? "" : ", ",
           p->pid, state_name(atomic_load(&p->state)), p->gone_ms ? "true" : "false");
    for (int k = 0; k < m->n_gpus; k++)
      printf("%s%llu", k ? ", " : "", (unsigned long long)p->dev[k]);
    printf("], \"saved\": [");
    for (int k = 0; k < m->n_gpus; k++)
      printf("%s%llu", k ? ", " : "", (unsigned long long)p->saved[k]);
    printf("], \"ctx\": [");
    for (int k = 0; k < m->n_gpus; k++)
      printf("%s%d", k ? ", " : "", p->ctx[k]);
    printf("]}");
    first = 0;
  }
  printf("]}\n");
  mbsi_unlock();
  return 0;
}

int main(int argc, char **argv) {
  mbsi_machine *m = mbsi_machine_get();
  if (argc >= 2 && strcmp(argv[1], "show") == 0)
    return show(m);
  if (argc >= 3 && strcmp(argv[1], "lose") == 0) {
    int g = atoi(argv[2]);
    if (g < 0 || g >= m->n_gpus)
      return 2;
    atomic_store(&m->gpu[g].lost, argc >= 4 ? atoi(argv[3]) : 1);
    return 0;
  }
  if (argc >= 4 && strcmp(argv[1], "fail") == 0) {
    mbsi_rules rs;
    if (mbsi_rules_parse(&rs, argv[3]) != 0) {
      fprintf(stderr, "standin_ctl: bad rules '%s'\n", argv[3]);
      return 2;
    }
    int pid = atoi(argv[2]);
    mbsi_lock();
    int slot = -1;
    for (int i = 0; i < MBSI_MAX_FAULTS; i++)
      if (m->faults[i].pid == pid || (slot < 0 && m->faults[i].spec[0] == '\0'))
        slot = i;
    if (slot >= 0) {
      m->faults[slot].pid = pid;
      snprintf(m->faults[slot].spec, sizeof(m->faults[slot].spec), "%s", argv[3]);
      atomic_fetch_add(&m->fault_gen, 1);
    }
    mbsi_unlock();
    return slot >= 0 ? 0 : 1;
  }
  fprintf(stderr, "usage: standin_ctl show | lose GPU [0|1] | fail PID SPEC\n");
  return 2;
}
