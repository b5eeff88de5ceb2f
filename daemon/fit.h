/*
 * fit.h - why a model cannot fit on this node now, and when it may: the
 * machine-readable reason and the Retry-After of a 503 cannot_fit, so that
 * a client or a balancer in front of several nodes (docs/SCALE-OUT.md)
 * knows whether waiting helps here or another node should take the model.
 *
 * The advice is read from the core's public status (each model's memory,
 * timers and leases; each device's room) when the answer is written; it
 * decides nothing and holds no lock of its own.
 */
#ifndef MBD_FIT_H
#define MBD_FIT_H

#include <stddef.h>
#include <stdint.h>

typedef struct mbd mbd;
typedef struct mbd_model mbd_model;
typedef struct mbd_req mbd_req;

/* Bytes that come free in_ms milliseconds from now. */
typedef struct mbd_fit_item {
  uint64_t bytes;
  int64_t in_ms;
} mbd_fit_item;

/*
 * The milliseconds until free_bytes plus the items that have come free
 * reach need_bytes: 0 when they do already, -1 when all of them never do.
 * Sorts items by in_ms (in place). Pure: no daemon needed.
 */
int64_t mbd_fit_wait_ms(uint64_t free_bytes, uint64_t need_bytes, mbd_fit_item *items,
                        size_t n);

/* Why a model cannot fit, and when to ask again. */
typedef struct mbd_fit {
  /* "too_large"      more than any of its devices can ever hold here (capacity
   *                  - reserve, budget): only another node (or configuration) helps;
   * "keep_alive"     room comes as other models' keep-alives expire;
   * "busy"           the room is held by models in use, loading or kept forever;
   * "host_tier_full" (an offload) the host tier cannot take it now. */
  const char *reason;
  int retry_after_s;     /* >= 1: when the room is expected, else limits.retry_after */
  uint64_t need_bytes;   /* the model's footprint */
  uint64_t usable_bytes; /* the most one of its devices (or the host tier) may hold */
} mbd_fit;

/* The advice for model m: on its devices, or (host_tier) in the host tier. */
void mbd_fit_advise(mbd *d, mbd_model *m, int host_tier, mbd_fit *out);

/*
 * Answers a library error of a request about model m: MB_ENOSPC as 503
 * cannot_fit with Retry-After, X-Modelbuf-Reason and the advice in the
 * error object ({"code", "message", "reason", "node", "retry_after_s",
 * "need_bytes", "usable_bytes"}); any other error as mbd_http_status says
 * (Retry-After: 1 on a 503). host_tier: the request was an offload.
 * Counts the answer's status for m. Returns the status.
 */
int mbd_reply_lib_error(mbd_req *r, mbd_model *m, int rc, const char *msg, int host_tier);

#endif /* MBD_FIT_H */
