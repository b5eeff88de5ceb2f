/*
 * proxy.h - requests to models (proxy.c): the routes /m/{name}/... and the
 * OpenAI routes, and the lease a request to a model takes (also used by
 * tensors.c).
 */
#ifndef MBD_PROXY_H
#define MBD_PROXY_H

#include "daemon.h"
#include "front.h"

/* The range of a request's priority (X-Modelbuf-Priority, "priority"),
 * as a model's configured one. */
#define MBD_PRIORITY_MIN (-1000000)
#define MBD_PRIORITY_MAX 1000000

typedef struct mbd_px mbd_px;

/* Called on the request's loop thread once its lease is granted and the
 * client is still there; x->cur is the model's current entry. The callee
 * answers r and ends the transaction with mbd_px_done (now or later). */
typedef void (*mbd_px_granted_fn)(mbd_px *x, mbd_req *r, void *arg);

/* mbd_px_lease flags: the body streams to the worker; an OpenAI route
 * (the whole target is forwarded). */
#define MBD_PX_STREAMING 0x1u
#define MBD_PX_OPENAI 0x2u

/*
 * Asks the core for a lease on m for request r (X-Modelbuf-* headers
 * honoured, range-checked). 0 when asked (fn follows, at once when the
 * lease could be granted without waiting, else later; unless the client
 * leaves first: then the wait is cancelled and nothing else happens), or
 * -1 with r answered (400, 503, ...). Either way r may be answered when
 * this returns: the caller does nothing more with r.
 */
int mbd_px_lease(mbd_req *r, mbd_model *m, unsigned flags, mbd_px_granted_fn fn, void *arg);
/* The grant (queue and load times) and the model's current entry. */
const mb_result *mbd_px_result(const mbd_px *x);
mbd_model *mbd_px_model(const mbd_px *x);
/* The client of a granted request leaves: fn instead of the default
 * (which ends the transaction). fn must end it with mbd_px_done. */
void mbd_px_set_on_gone(mbd_px *x, void (*fn)(mbd_req *r));
/* The transaction of a request that took a lease (r->ctx). */
mbd_px *mbd_px_of(mbd_req *r);
/* A pointer for the granted callee's own state. */
void mbd_px_set_user(mbd_px *x, void *user);
void *mbd_px_user(const mbd_px *x);
/* Ends the transaction: the lease is released and the request traced. */
void mbd_px_done(mbd_px *x);
/* X-Modelbuf-Queue-Ms and X-Modelbuf-Load-Ms of a grant. */
void mbd_px_timing_headers(mbd_req *r, const mb_result *g);

/* Resolves /m/{name}/..., /v1/models and the OpenAI routes: 1 when the
 * route is this file's (r->route set, or r answered), else 0. */
int mbd_proxy_resolve(mbd *d, mbd_req *r);

/* Records a request served under lease g, granted at granted_at (Unix s). */
void mbd_proxy_trace(mbd *d, const char *model, const mb_result *g, double granted_at);

#endif /* MBD_PROXY_H */
