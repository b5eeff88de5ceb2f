/*
 * compat.h - the routes of the common Python GPU-manager APIs (compat.c):
 * GET /api/gpu/status, POST /api/gpu/offload, POST /api/gpu/release and
 * POST /cleanup-memory, in the shapes their clients read (docs/API.md).
 */
#ifndef MBD_COMPAT_H
#define MBD_COMPAT_H

#include <stdint.h>

#include "daemon.h"
#include "front.h"

/* Resolves the compatibility routes: 1 when the route is compat.c's
 * (r->route set, or r answered: 405), else 0. */
int mbd_compat_resolve(mbd *d, mbd_req *r);

/*
 * A model's GPU memory as those APIs report it: *allocated what it holds
 * on its device now (measured), *reserved what the daemon holds for it
 * there (its admitted footprint while it loads, restores or is resident,
 * at least what it holds; 0 when it is not on its device).
 */
void mbd_compat_model_memory(const mb_status *st, uint64_t *allocated, uint64_t *reserved);

/* The same summed over every model. */
void mbd_compat_memory(mbd *d, uint64_t *allocated, uint64_t *reserved);

#endif /* MBD_COMPAT_H */
