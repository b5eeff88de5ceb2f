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

/* The ps table: its header, and one model's row; with node_width > 0 a
 * NODE column of that width comes first. */
void ctl_ps_header(FILE *f, int node_width);
void ctl_ps_row(FILE *f, int node_width, const char *node, json_t *m);

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
