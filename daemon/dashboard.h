/*
 * dashboard.h - the web dashboard's static files (DESIGN §5, GET /):
 * the files of daemon/dashboard/ compiled into the binary at build time
 * (scripts/embed_files.py writes dashboard_files.c), served by
 * dashboard.c. The files hold no data: the page reads everything through
 * the JSON API with the user's key, so they are served without one.
 */
#ifndef MBD_DASHBOARD_H
#define MBD_DASHBOARD_H

#include <stddef.h>

#include "front.h"

/* One embedded file. */
typedef struct mbd_asset {
  const char *name;          /* its base name: "app.js" */
  const char *type;          /* its Content-Type */
  const unsigned char *data;
  size_t len;
  const char *etag;          /* a strong validator, quoted: "\"3f2a...\"" */
} mbd_asset;

/* The embedded files (dashboard_files.c, generated). */
extern const mbd_asset mbd_dashboard_assets[];
extern const size_t mbd_dashboard_n_assets;

/* The file a path names as sent ("/" is index.html, "/dashboard/NAME"
 * the file NAME, matched byte for byte: no decoding, no ".."), or NULL. */
const mbd_asset *mbd_dashboard_asset(const char *path, size_t len);

/* Whether r is a GET or HEAD of a dashboard file while the dashboard is on:
 * such a request needs no API key. */
int mbd_dashboard_public(mbd *d, const mbd_req *r);

/* Resolves the dashboard's routes: 1 when the path is one of them (the
 * route set, or r answered: 404 for an unknown file, 405), else 0. With
 * the dashboard off (dashboard: false) GET / is a 404 that says so. */
int mbd_dashboard_resolve(mbd *d, mbd_req *r);

#endif /* MBD_DASHBOARD_H */
