/*
 * dashboard.c - serves the web dashboard's files (dashboard.h): GET / is
 * index.html, GET /dashboard/NAME one of the other files, HEAD of either
 * the same without the body, any other method 405.
 *
 * The files are compiled in (no file system access, so no path can reach
 * anything else: a name is looked up byte for byte among the embedded ones,
 * never decoded). Every answer says how to treat it: Cache-Control:
 * no-cache with a strong ETag (If-None-Match gives 304, so a reload costs
 * a round trip, not the files), nosniff, a Content-Security-Policy that
 * allows only the daemon's own script, style and connections (no inline
 * script anywhere: the page's code is app.js), no framing, no referrer.
 */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "daemon.h"
#include "dashboard.h"

#define PREFIX "/dashboard/"
#define PREFIX_LEN (sizeof(PREFIX) - 1)

/* What the page may load and where it may connect: nothing but the daemon
 * itself; no plugins, no <base>, no forms, never inside a frame. */
static const char csp[] =
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const mbd_asset *mbd_dashboard_asset(const char *path, size_t len) {
  const char *name;
  size_t n;
  if (len == 1 && path[0] == '/') {
    name = "index.html";
    n = 10;
  } else if (len > PREFIX_LEN && memcmp(path, PREFIX, PREFIX_LEN) == 0) {
    name = path + PREFIX_LEN;
    n = len - PREFIX_LEN;
    /* The page lives at / only: its links are relative to where it is, so
     * that it works behind a proxy that serves the daemon under a prefix. */
    if (n == 10 && memcmp(name, "index.html", 10) == 0)
      return NULL;
  } else {
    return NULL;
  }
  for (size_t i = 0; i < mbd_dashboard_n_assets; i++) {
    const mbd_asset *a = &mbd_dashboard_assets[i];
    if (strlen(a->name) == n && memcmp(a->name, name, n) == 0)
      return a;
  }
  return NULL;
}

static int is_dashboard_path(const char *path, size_t len) {
  return (len == 1 && path[0] == '/') ||
         (len >= PREFIX_LEN && memcmp(path, PREFIX, PREFIX_LEN) == 0);
}

int mbd_dashboard_public(mbd *d, const mbd_req *r) {
  return d->cfg->dashboard && (strcmp(r->method, "GET") == 0 || r->is_head) &&
         mbd_dashboard_asset(r->path, r->path_len) != NULL;
}

/* Whether an If-None-Match value (a list of entity tags, or "*") matches
 * etag, by the weak comparison RFC 9110 §13.1.2 asks for. */
static int none_match(const char *v, size_t n, const char *etag) {
  size_t el = strlen(etag);
  size_t i = 0;
  while (i < n) {
    while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
      i++;
    size_t start = i;
    if (i < n && v[i] == '*')
      return 1;
    if (n - i >= 2 && v[i] == 'W' && v[i + 1] == '/')
      i += 2, start = i;
    if (i < n && v[i] == '"') { /* a quoted tag: up to its closing quote */
      i++;
      while (i < n && v[i] != '"')
        i++;
      if (i < n)
        i++;
    } else { /* not a tag: skip to the next comma */
      while (i < n && v[i] != ',')
        i++;
      continue;
    }
    if (i - start == el && memcmp(v + start, etag, el) == 0)
      return 1;
  }
  return 0;
}

static void serve(mbd_req *r) {
  const mbd_asset *a = mbd_dashboard_asset(r->path, r->path_len);
  if (a == NULL) { /* resolved as one: cannot happen */
    mbd_reply_error(r, 404, "not_found", "no such dashboard file", 0);
    return;
  }
  size_t n;
  const char *inm = mbd_req_header_raw(r, "If-None-Match", &n);
  int fresh = inm != NULL && none_match(inm, n, a->etag);
  mbd_resp_start(r, fresh ? 304 : 200);
  mbd_resp_header(r, "ETag", a->etag);
  mbd_resp_header(r, "Cache-Control", "no-cache");
  mbd_resp_header(r, "X-Content-Type-Options", "nosniff");
  mbd_resp_header(r, "Content-Security-Policy", csp);
  mbd_resp_header(r, "Referrer-Policy", "no-referrer");
  mbd_resp_header(r, "X-Frame-Options", "DENY");
  /* A 304 has no body; its Content-Type would describe none. */
  mbd_resp_body(r, fresh ? NULL : a->type, a->data, fresh ? 0 : a->len);
}

int mbd_dashboard_resolve(mbd *d, mbd_req *r) {
  if (!is_dashboard_path(r->path, r->path_len))
    return 0;
  if (!d->cfg->dashboard) {
    if (r->path_len != 1)
      return 0; /* /dashboard/... is then an unknown route like any other */
    mbd_reply_error(r, 404, "not_found",
                    "the dashboard is off (dashboard: false in the configuration); "
                    "the API is under /api/", 0);
    return 1;
  }
  if (mbd_dashboard_asset(r->path, r->path_len) == NULL) {
    char msg[200];
    snprintf(msg, sizeof(msg), "no dashboard file %.*s",
             (int)(r->path_len > 120 ? 120 : r->path_len), r->path);
    mbd_reply_error(r, 404, "not_found", msg, 0);
    return 1;
  }
  if (strcmp(r->method, "GET") != 0 && !r->is_head) {
    char msg[128];
    snprintf(msg, sizeof(msg), "%s is not allowed here (GET, HEAD)", r->method);
    mbd_reply_error_hdr(r, 405, "method_not_allowed", msg, "Allow", "GET, HEAD");
    return 1;
  }
  r->route.handle = serve;
  r->route.body = MBD_BODY_BUFFER;
  return 1;
}
