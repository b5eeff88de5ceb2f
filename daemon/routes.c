/*
 * routes.c - which handler takes a request: the dashboard's files
 * (dashboard.c), the management routes (api.c), the compatibility routes
 * (compat.c), then the model routes (proxy.c, tensors.c), else 404.
 * Decided from the head alone, before any body byte is read. Paths are
 * matched as the client sent them, never decoded or normalised: a "%2e%2e"
 * or ".." segment is just bytes, so it can never lead to another route. Only a
 * model's name segment (/m/{name}, /api/models/{name}, /v1/models/{id})
 * is percent-decoded, to be looked up among the names, never routed.
 */
#include <stdio.h>
#include <string.h>

#include "api.h"
#include "compat.h"
#include "daemon.h"
#include "dashboard.h"
#include "front_int.h"
#include "proxy.h"

mbd_model *mbd_route_model(mbd *d, mbd_req *r, const char *p, size_t n, int aliases,
                           size_t *rest) {
  char name[MBD_MODEL_NAME_MAX + 1];
  if (mbd_path_model(p, n, name, rest) != 0) {
    mbd_reply_error(r, 404, "not_found", "unknown model (a model's name is 1 to 64 of "
                    "A-Z a-z 0-9 . _ : - and '/', sent as %2F)", 0);
    return NULL;
  }
  mbd_model *m = aliases ? mbd_find(d, name) : mbd_find_name(d, name);
  if (m == NULL) {
    char msg[160];
    snprintf(msg, sizeof(msg), "unknown model '%s'", name);
    mbd_reply_error(r, 404, "not_found", msg, 0);
    return NULL;
  }
  r->route.m = m;
  return m;
}

void mbd_route_resolve(mbd *d, mbd_req *r) {
  if (mbd_dashboard_resolve(d, r) || mbd_api_resolve(d, r) || mbd_compat_resolve(d, r) || mbd_proxy_resolve(d, r))
    return;
  char msg[300];
  snprintf(msg, sizeof(msg), "no route %s %.*s", r->method,
           (int)(r->path_len > 200 ? 200 : r->path_len), r->path);
  mbd_reply_error(r, 404, "not_found", msg, 0);
}
