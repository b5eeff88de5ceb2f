/*
 * ctl.h - private to the modelbuf tool: what the daemon commands
 * (cmd_ctl.c) share with their fleet view over several daemons
 * (cmd_fleet.c).
 */
#ifndef MB_CLI_CTL_H
#define MB_CLI_CTL_H

#include <jansson.h>
#include <stdio.h>

#include "client.h"

/* s with every byte that is not printable ASCII as '?', into out ("-" for
 * NULL): what a daemon sends never reaches a terminal as control bytes. */
const char *ctl_safe(const char *s, char *out, size_t len);

/* One row of the ps table: a model of a node, or (model NULL) a line
 * about the node (note: out of reach, an error, no models). */
typedef struct ctl_ps_item {
  const char *node; /* its node's name, printable; only read with_node */
  json_t *model;    /* a model object of /api/models, or NULL */
  const char *note; /* when model is NULL */
} ctl_ps_item;

/* The ps table of n rows, each column as wide as its widest cell; with
 * with_node a NODE column comes first. */
void ctl_ps_table(FILE *f, const ctl_ps_item *rows, size_t n, int with_node);

/*
 * ps, status NAME and top over every daemon of fl (cmd_fleet.c). Each
 * daemon's models are rows under its node name (its "node", else its
 * address); one that cannot be reached, or answers an error, is a line
 * that says so. Exit status: 0 every daemon answered, 1 one answered an
 * error (and none was out of reach), 3 one could not be reached. path: the
 * status route of NAME. keys: top reads `q` from the terminal.
 */
int ctl_fleet_ps(const cli_fleet *fl, int json);
int ctl_fleet_status(const cli_fleet *fl, const char *name, const char *path, int json);
int ctl_fleet_top(const cli_fleet *fl, int keys);

#endif /* MB_CLI_CTL_H */
