/*
 * upstream.h - connections from a loop thread to workers (127.0.0.1:PORT):
 * each thread keeps its own pool of idle keep-alive connections, keyed by
 * the worker's port and instance (a restarted worker never gets the
 * connections of the one before); a request is written whole by the daemon
 * (its head, then a body it frames itself: from a spool, or streamed as
 * the client sends it); the answer is parsed strictly (http_parse.h) and
 * handed to the owner piece by piece.
 *
 * A request whose body is replayable (no body, or a spool) that fails on a
 * reused connection before any byte of the answer came (the worker closed
 * it meanwhile) is sent again once on a new connection, so that the pool
 * never fails a request.
 *
 * Loop thread only. After on_end or on_error, or mbd_up_abort, the mbd_up
 * is gone for its owner.
 */
#ifndef MBD_UPSTREAM_H
#define MBD_UPSTREAM_H

#include <stddef.h>
#include <stdint.h>

#include "http_parse.h"
#include "spool.h"

typedef struct mbd_fthread mbd_fthread;
typedef struct mbd_up mbd_up;

typedef struct mbd_up_cbs {
  /* The final answer's head (interim 1xx answers are skipped); buf holds
   * the head's bytes during the call. */
  void (*on_head)(void *arg, const char *buf, const mbd_http_head *h);
  /* A piece of the answer's body (decoded when it was chunked). */
  void (*on_data)(void *arg, const char *p, size_t n);
  /* The answer is whole. */
  void (*on_end)(void *arg);
  /* The exchange failed; started: on_head had been called. */
  void (*on_error)(void *arg, int started, const char *why);
  /* Room again for streamed body bytes (mbd_up_body). */
  void (*on_writable)(void *arg);
} mbd_up_cbs;

/* The request to send. head: the whole request head, CRLF CRLF included
 * (copied). body: a complete spool (not copied: it must live until the
 * answer ends), or NULL; streamed: the body comes through mbd_up_body
 * (chunked: the daemon frames each piece as a chunk). */
typedef struct mbd_up_req {
  const char *head;
  size_t head_len;
  mbd_spool *body;
  int streamed;
  int chunked;
  int head_request;        /* HEAD: the answer has no body */
  int port;
  uint64_t instance;
  uint64_t max_head_bytes; /* an answer's head larger than this fails */
} mbd_up_req;

int mbd_upstream_pool_init(mbd_fthread *t);
/* Closes the idle connections of the pool (loop thread). */
void mbd_upstream_pool_close(mbd_fthread *t);
void mbd_upstream_pool_free(mbd_fthread *t);

/* Starts an exchange. 0 with *out, or MB_ENOMEM / MB_EIO (no callback
 * then). */
int mbd_up_start(mbd_fthread *t, const mbd_up_req *req, const mbd_up_cbs *cbs, void *arg,
                 mbd_up **out);
/* Streamed body: a piece, then the end. */
void mbd_up_body(mbd_up *u, const char *p, size_t n);
void mbd_up_body_end(mbd_up *u);
/* Streamed body bytes not yet sent. */
size_t mbd_up_body_pending(const mbd_up *u);
/* Stops (1) or resumes (0) reading the answer: the client is slower. */
void mbd_up_pause(mbd_up *u, int paused);
/* The owner is done (its client left): the connection closes, no more
 * callbacks. */
void mbd_up_abort(mbd_up *u);

#endif /* MBD_UPSTREAM_H */
