/*
 * preload.h - the models with `preload: true`, loaded before any request
 * asks for them (preload.c).
 */
#ifndef MBD_PRELOAD_H
#define MBD_PRELOAD_H

#include <stddef.h>

typedef struct mbd mbd;
typedef struct mbd_model mbd_model;

/*
 * Queues the models of the list that have preload: true, highest priority
 * first, and starts loading them one at a time (each only when it fits
 * its device without evicting). Returns at once; the loads are logged.
 * Any thread. 0 or MB_ENOMEM.
 */
int mbd_preload_models(mbd *d, mbd_model *const *models, size_t n);

/* Frees the queue; after the core is freed (its last answer came). */
void mbd_preload_free(mbd *d);

#endif /* MBD_PRELOAD_H */
