/*
 * config_int.h - private to the daemon's configuration files (config.c,
 * config_parse.c, config_apply.c): helpers they share.
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

#define UNIX_PATH_MAX_LEN 107 /* sizeof(sun_path) - 1 on Linux */

/* A configuration holding every default, errors reported against name. NULL: no memory. */
mbd_config *mbd__config_alloc(const char *name);

/* Sets every field to MBD_UNSET. */
void mbd__tuning_unset(mbd_tuning *t);

/* Frees n strings and the array (NULL is fine). */
void mbd__strv_free(char **v, size_t n);

#endif /* MBD_CONFIG_INT_H */
