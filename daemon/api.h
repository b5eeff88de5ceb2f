/*
 * api.h - the management routes (api.c).
 */
#ifndef MBD_API_H
#define MBD_API_H

#include <jansson.h>

#include "daemon.h"
#include "front.h"
#include "tasks.h"

/* Resolves the management routes: 1 when the route is api.c's (r->route
 * set, or r answered: 404, 405), else 0. */
int mbd_api_resolve(mbd *d, mbd_req *r);

/* A model's status as the JSON of DESIGN §5 (NULL when unknown). */
json_t *mbd_model_json(mbd *d, mbd_model *m);

/* Helpers of the routes (api.c), shared with compat.c. */

/*
 * Work of a route that blocks (a worker's hook, the core's blocking calls),
 * run on the task pool, then answered on the request's loop: run fills
 * status and doc (NULL doc: 500). A client that leaves meanwhile gets
 * nothing; the job is freed after its done either way.
 */
typedef struct mbd_api_job {
  mbd_task task;
  mbd *d;
  mbd_req *r;       /* NULL once the client left */
  int status;
  json_t *doc;      /* the answer (taken over) */
} mbd_api_job;

/* A job of size bytes (at least sizeof(mbd_api_job), which it starts
 * with: room for the route's own fields after it), zeroed, for r; submit
 * it with mbd_tasks_submit(d, &j->task). NULL with r answered (500). */
mbd_api_job *mbd_api_job_new(mbd_req *r, size_t size, void (*run)(mbd_task *t));

/* The request body as a JSON object (an empty body is {}); NULL with the
 * reason in err (not JSON, not an object). */
json_t *mbd_api_body(mbd_req *r, char *err, size_t len);
/* 0 when body has only fields of names (NULL-terminated), else -1 with a
 * message naming the field and the route's fields. */
int mbd_api_fields(json_t *body, const char *const *names, char *err, size_t len);
/* The devices as GET /api/devices lists them. */
json_t *mbd_devices_json(mbd *d);
/* A time of the core's clock as RFC 3339 UTC, null for 0. */
json_t *mbd_time_json(mbd *d, uint64_t clock_ns);
/* Calls every running worker's cleanup hook (blocks: the task pool only):
 * *cleaned gets the names cleaned, *failed {name: why} of the hooks that
 * failed (workers without the hook, or not running, are neither). Returns
 * the number that failed. */
int mbd_cleanup_workers(mbd *d, json_t **cleaned, json_t **failed);

#endif /* MBD_API_H */
