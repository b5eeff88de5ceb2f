/*
 * config_int.h - private to the daemon's configuration files (config.c and
 * config_apply.c): helpers both use.
 */
#ifndef MBD_CONFIG_INT_H
#define MBD_CONFIG_INT_H

#include "config.h"

/* Fills every model's effective tuning from its own values and the defaults. */
void mbd__config_resolve(mbd_config *cfg);

/* Adds an API key unless empty or already there. Errors: MB_ENOMEM. */
int mbd__config_add_api_key(mbd_config *cfg, const char *key) MB_WUR;

/* Adds a message to d (NULL: nothing). Errors: MB_ENOMEM. */
int mbd__diag_add(mbd_diag *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif /* MBD_CONFIG_INT_H */
