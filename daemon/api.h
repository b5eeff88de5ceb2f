/*
 * api.h - the management routes (api.c).
 */
#ifndef MBD_API_H
#define MBD_API_H

#include <jansson.h>

#include "daemon.h"
#include "front.h"

/* Resolves the management routes: 1 when the route is api.c's (r->route
 * set, or r answered: 404, 405), else 0. */
int mbd_api_resolve(mbd *d, mbd_req *r);

/* A model's status as the JSON of DESIGN §5 (NULL when unknown). */
json_t *mbd_model_json(mbd *d, mbd_model *m);

#endif /* MBD_API_H */
