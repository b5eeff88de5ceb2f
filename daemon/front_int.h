/*
 * front_int.h - private to the front door (front.c, routes.c, upstream.c):
 * the server and its loop threads.
 */
#ifndef MBD_FRONT_INT_H
#define MBD_FRONT_INT_H

#include <pthread.h>
#include <time.h>

#include "front.h"

typedef struct mbd_uppool mbd_uppool;

/* Connection buffers kept per thread for reuse: 1 KiB << k, k < CLASSES,
 * at most KEEP of each (front.c). */
#define MBD_BUF_CLASSES 7
#define MBD_BUF_KEEP 32

/* One loop thread and what it owns. */
struct mbd_fthread {
  mbd_front *f;
  mbd *d;
  int index;
  mbd_loop *loop;
  pthread_t tid;
  int started;
  mbd_io listen_io[2];
  mbd_timer accept_timer;    /* accepting again after running out of descriptors */
  int accept_paused;
  mbd_conn *conns;           /* every client connection of this thread */
  int nconns;
  mbd_req *subs;             /* subscribed streams (mbd_req_subscribe) */
  int nsubs;                 /* atomic: read by mbd_front_wake_streams */
  int wake_pending;          /* atomic: wake_post is queued */
  mbd_post wake_post, quiesce_post, stop_post;
  mbd_uppool *pool;          /* connections to workers (upstream.c) */
  char *bufs[MBD_BUF_CLASSES][MBD_BUF_KEEP]; /* buffers given back, for reuse */
  int nbufs[MBD_BUF_CLASSES];
  char date[40];             /* the Date header, for date_s */
  time_t date_s;
};

/* Log lines that a client can cause, at most one per 10 s each. */
typedef struct mbd_ratelimit {
  uint64_t last_ms;          /* atomic */
  uint64_t suppressed;       /* atomic */
} mbd_ratelimit;

struct mbd_front {
  mbd *d;
  mbd_fthread *threads;
  int nthreads;
  int listen_fd[2];
  int nlisten;
  int reserve_fd;            /* a spare descriptor for refusing when out of them */
  pthread_mutex_t reserve_mu;
  int conns;                 /* atomic: client connections open */
  int active;                /* atomic: requests in flight */
  unsigned adopted;          /* atomic: connections handed in (mbd_front_adopt) */
  int quiescing;             /* atomic */
  pthread_mutex_t ack_mu;    /* threads acknowledging the quiesce */
  pthread_cond_t ack_cv;
  int acks;
  char refusal[512];         /* the 503 written at max_connections */
  size_t refusal_len;
  mbd_ratelimit rl_auth, rl_maxconn, rl_emfile, rl_accept, rl_timeout, rl_spool;
};

/* Decides the route of r (api.c, proxy.c): fills r->route, or answers it
 * (404, 405, 400) when no route takes it. routes.c. */
void mbd_route_resolve(mbd *d, mbd_req *r);

/*
 * The model named at the start of p[0..n) ("NAME", "NAME/rest",
 * "NAME?query"; matched as sent, never decoded: names have no escapes), by
 * name or (with aliases) alias: the model, with *rest the offset of what
 * follows its name, and r->route.m set; or NULL with r answered 404.
 * routes.c.
 */
mbd_model *mbd_route_model(mbd *d, mbd_req *r, const char *p, size_t n, int aliases,
                           size_t *rest);

/* A log line at most once per 10 s for rl; the next one says how many
 * were left out. */
void mbd_log_limited(mbd *d, mbd_ratelimit *rl, int level, const char *msg, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* Runs what loop threads left posted after they stopped (shutdown). */
void mbd_front_drain(mbd *d);
/* Stops (if needed) and frees the front door. */
void mbd_front_free(mbd *d);

#endif /* MBD_FRONT_INT_H */
