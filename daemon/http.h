/*
 * http.h - private to modelbufd's HTTP server (http.c, api.c, proxy.c):
 * the per-request state and the helpers that answer.
 */
#ifndef MBD_HTTP_H
#define MBD_HTTP_H

#include <jansson.h>
#include <microhttpd.h>
#include <stddef.h>

#include "daemon.h"

#if MHD_VERSION < 0x00097002
typedef int MHD_RESULT;
#else
typedef enum MHD_Result MHD_RESULT;
#endif

/* One request, from its first call to its answer. */
typedef struct mbd_req {
  char *body;
  size_t len, cap;
  int too_big;
  int counted;  /* d->active was raised for it */
  int answered; /* a response was queued before the body came */
  void *px;     /* a transfer its body streams into (proxy.c) */
  mbd_model *pm;
  uint64_t streamed; /* body bytes streamed so far */
} mbd_req;

/* Answers with a JSON document (taken over). */
MHD_RESULT mbd_reply_json(struct MHD_Connection *c, int status, json_t *doc);
/* Answers {"error": {"code", "message"}}; Retry-After when retry_s > 0. */
MHD_RESULT mbd_reply_error(struct MHD_Connection *c, int status, const char *code,
                           const char *message, int retry_s);
/* The same with one more header (none when header is NULL). */
MHD_RESULT mbd_reply_error_hdr(struct MHD_Connection *c, int status, const char *code,
                               const char *message, const char *header, const char *value);
/* Answers with text of a content type (copied). */
MHD_RESULT mbd_reply_text(struct MHD_Connection *c, int status, const char *type,
                          const char *text, size_t len);

/*
 * The model name at the start of path p ("NAME" or "NAME/rest..."): copies
 * it into name (MBD_MODEL_NAME_MAX + 1 bytes) and points *rest at "/rest"
 * or NULL. 0, or -1 for an empty or over-long name.
 */
int mbd_path_model(const char *p, char name[MBD_MODEL_NAME_MAX + 1], const char **rest);

/* The HTTP status and error code for a library error of a model request. */
int mbd_http_status(int err, const char **code);

/* The management routes (api.c): 1 when the path was theirs. */
int mbd_api_route(mbd *d, struct MHD_Connection *c, const char *method, const char *url,
                  mbd_req *r, MHD_RESULT *res);

/* The proxied routes (proxy.c): /m/{name}/..., /v1/... */
int mbd_proxy_route(mbd *d, struct MHD_Connection *c, const char *method, const char *url,
                    mbd_req *r, MHD_RESULT *res);

/*
 * Request bodies for /m/{name}/... of a worker model stream to it as they
 * arrive. begin (at the request's first call, headers only): 0 = not
 * streamed (buffered as usual), 1 = the lease is held and the transfer has
 * started (r->px), -1 = an answer is queued in *res (queue full, ...).
 * feed passes each piece of body on (waiting while the worker is slower);
 * end answers with the worker's response; abort drops a transfer whose
 * client went away.
 */
int mbd_proxy_stream_begin(mbd *d, struct MHD_Connection *c, const char *method,
                           const char *url, mbd_req *r, MHD_RESULT *res);
void mbd_proxy_stream_feed(mbd_req *r, const char *data, size_t n);
MHD_RESULT mbd_proxy_stream_end(mbd *d, struct MHD_Connection *c, mbd_req *r);
void mbd_proxy_stream_abort(mbd_req *r);

/*
 * Takes a lease on m for a request to it (X-Modelbuf-* headers honoured)
 * and the model's current entry (a reload may have replaced it meanwhile).
 * 0 with *got and *cur, or -1 with the answer queued in *res.
 */
int mbd_proxy_lease(mbd *d, struct MHD_Connection *c, mbd_model *m, mb_result *got,
                    mbd_model **cur, MHD_RESULT *res);

/* Records a request served under lease g, granted at granted_at (Unix s). */
void mbd_proxy_trace(mbd *d, const char *model, const mb_result *g, double granted_at);

/* A model's status as the JSON of DESIGN §5 (NULL when unknown). */
json_t *mbd_model_json(mbd *d, mbd_model *m);

/* Proxy setup and teardown (connection sharing). */
int mbd_proxy_init(mbd *d);
void mbd_proxy_fini(mbd *d);

/* Leases taken over HTTP, released at shutdown if their clients did not. */
void mbd_leases_track(mbd *d, uint64_t id);
void mbd_leases_forget(mbd *d, uint64_t id);
void mbd_leases_release_all(mbd *d);

#endif /* MBD_HTTP_H */
