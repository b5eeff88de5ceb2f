/*
 * front.h - modelbufd's front door: the listening sockets, every client
 * connection, and the request in progress on each (DESIGN §5).
 *
 * A small fixed set of event-loop threads (http_threads, one per CPU by
 * default) serves every client connection and every connection to a
 * worker; a connection belongs to the thread that accepted it for its whole
 * life. Nothing blocks a loop thread: the core answers through callbacks
 * posted back to the loop (mb_*_async), and work that must block (a
 * plugin's inference, a worker's cleanup hook) runs on the task pool
 * (tasks.h) and posts its result back.
 *
 * A request goes through:
 *   head    read up to limits.max_header_size within header_timeout, parsed
 *           strictly (http_parse.h); answered 4xx/5xx and closed on error.
 *   auth    the API key, checked as soon as the head is in: a keyless
 *           request gets 401 before any body byte is read or 100 Continue.
 *   route   the routes of api.c, proxy.c and tensors.c resolve it (404, 405
 *           before the body); the body's size is checked (413).
 *   body    buffered whole (memory up to body_buffer_size, then a temporary
 *           file, up to max_body_size) before the handler runs, under
 *           body_timeout and min_body_rate; or streamed to the handler
 *           (a worker model with request_buffering: false).
 *   handle  the handler answers now or later (after the core, a worker or
 *           the task pool answered), on the loop's thread.
 *   answer  written with backpressure (send_timeout); keep-alive, or a
 *           lingering close when the body was not read.
 *
 * Handlers use only the mbd_req API below. A handler that answers later
 * sets r->on_gone, which the front door calls if the client goes away
 * first (the handler then cancels its work and never touches r again).
 */
#ifndef MBD_FRONT_H
#define MBD_FRONT_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "evloop.h"
#include "http_parse.h"
#include "spool.h"

typedef struct mbd mbd;
typedef struct mbd_model mbd_model;
typedef struct mbd_front mbd_front;
typedef struct mbd_fthread mbd_fthread;
typedef struct mbd_conn mbd_conn;
typedef struct mbd_req mbd_req;

/* How a route takes the request body. */
typedef enum mbd_body_mode {
  MBD_BODY_BUFFER = 0, /* received whole before the handler runs */
  MBD_BODY_STREAM      /* the handler runs at once; the body comes through on_body */
} mbd_body_mode;

/* What a route resolver decided for a request. */
typedef struct mbd_route {
  void (*handle)(mbd_req *r);  /* NULL: not this resolver's route */
  mbd_body_mode body;
  mbd_model *m;                /* the model the route is for, if any */
  const char *arg;             /* a route's argument (an action name), static */
  size_t arg_off, arg_len;     /* a span of the path (a lease id, a tensor name) */
} mbd_route;

/* The request in progress on a connection. Valid from its head until its
 * answer is complete (or the client goes away: on_gone). */
struct mbd_req {
  mbd *d;
  mbd_conn *c;
  mbd_fthread *t;            /* the loop thread that owns the connection */
  char method[33];
  int is_head;               /* HEAD: the answer carries no body */
  const char *buf;           /* the head's bytes; the spans below point into it */
  mbd_http_head h;
  const char *target, *path, *query;
  size_t target_len, path_len, query_len;
  mbd_route route;
  uint64_t started_ms;       /* when its head was complete */
  /* The body (MBD_BODY_BUFFER): complete when the handler runs. */
  mbd_spool body;
  int has_body;              /* a body was announced (length > 0 or chunked) */
  /* Set by a handler that answers later or streams. */
  void *ctx;
  void (*on_gone)(mbd_req *r);              /* the client went away first */
  void (*on_drain)(mbd_req *r);             /* room in the output again */
  /* MBD_BODY_STREAM: each piece of the body, then its end (or an error:
   * the front door answers the client itself then). */
  void (*on_body)(mbd_req *r, const char *data, size_t n);
  void (*on_body_end)(mbd_req *r);
  int status;                /* the status answered (0 until then) */
  /* A long answer fed by its producer (mbd_req_subscribe): in its thread's
   * list of streams woken by mbd_front_wake_streams. */
  mbd_req *sub_prev, *sub_next;
  int subscribed;
  mbd_post free_post;
};

/* ------------------------------------------------------------------------ */
/* The server                                                                */

/* Starts the listeners and loop threads as d->cfg says. 0 or MB_E* with err. */
int mbd_front_start(mbd *d, char *err, size_t err_len);
/* Stops accepting and closes idle connections and event streams; requests
 * in flight go on (drain). */
void mbd_front_quiesce(mbd *d);
/* Requests in flight (being read, waiting or answered). */
int mbd_front_active(mbd *d);
/* Client connections open. */
int mbd_front_connections(mbd *d);
/* Stops every thread and closes every connection. */
void mbd_front_stop(mbd *d);
/* Serves a connected socket (taken over) as a client connection, as if it
 * had been accepted: for tests and the fuzz target, which feed the front
 * door through a socketpair. 0 or MB_ENOMEM. Any thread. */
int mbd_front_adopt(mbd *d, int fd);
/* Wakes every subscribed stream (a new event, a worker's new output line):
 * their on_drain runs soon on their loop threads. Any thread. */
void mbd_front_wake_streams(mbd *d);
/* Subscribes r (whose answer is streaming) to those wake-ups; it leaves
 * the list when its answer ends or its client goes. At quiesce the front
 * door ends subscribed answers itself. */
void mbd_req_subscribe(mbd_req *r);
/* The loop thread a task should post back to. */
mbd_loop *mbd_req_loop(mbd_req *r);

/* ------------------------------------------------------------------------ */
/* Reading a request                                                         */

/* The value of the first header called name, copied NUL-terminated into
 * out (cut to cap - 1). 1 when present, 0 when not. */
int mbd_req_header(const mbd_req *r, const char *name, char *out, size_t cap);
/* The raw value of a header (not NUL-terminated), or NULL. */
const char *mbd_req_header_raw(const mbd_req *r, const char *name, size_t *len);
/* The query argument key, percent-decoded, into out. 1 when present
 * (value may be empty), 0 when not, -1 when it does not fit or decodes to
 * a NUL byte. */
int mbd_req_query(const mbd_req *r, const char *key, char *out, size_t cap);
/* The whole buffered body as one piece (a temporary file is mapped);
 * empty: *p = "" and *n = 0. 0 or MB_EIO. */
int mbd_req_body(mbd_req *r, const char **p, size_t *n);
/* The client's address, for logs ("127.0.0.1:5432"). */
const char *mbd_req_peer(const mbd_req *r);

/* MBD_BODY_STREAM: stop / resume reading the body (backpressure). */
void mbd_req_pause_body(mbd_req *r);
void mbd_req_resume_body(mbd_req *r);
/* MBD_BODY_STREAM: body bytes received so far. */
uint64_t mbd_req_body_received(const mbd_req *r);

/* ------------------------------------------------------------------------ */
/* Answering                                                                 */

/*
 * An answer is a status, headers, then a body. mbd_resp_start writes the
 * status line; mbd_resp_header adds headers; then either mbd_resp_body
 * (a whole body, which ends the answer) or mbd_resp_stream (the head ends;
 * mbd_resp_write adds body bytes, chunked when length is -1 and the client
 * speaks HTTP/1.1, and mbd_resp_end ends it). mbd_resp_abort cuts the
 * answer so that a client never takes it for a whole one: the connection
 * closes after what was written, with no end chunk (or short of its
 * length), or is reset where only the close would end the answer. All on the request's loop thread.
 */
void mbd_resp_start(mbd_req *r, int status);
void mbd_resp_header(mbd_req *r, const char *name, const char *value);
void mbd_resp_header_n(mbd_req *r, const char *name, size_t nn, const char *value, size_t vn);
void mbd_resp_body(mbd_req *r, const char *type, const void *body, size_t len);
void mbd_resp_stream(mbd_req *r, const char *type, int64_t length);
void mbd_resp_write(mbd_req *r, const void *p, size_t n);
void mbd_resp_end(mbd_req *r);
void mbd_resp_abort(mbd_req *r);
/* Bytes written but not yet taken by the client. */
size_t mbd_resp_pending(const mbd_req *r);

/* A JSON document (taken over). */
void mbd_reply_json(mbd_req *r, int status, json_t *doc);
/* {"error": {"code", "message"}}, with Retry-After when retry_s > 0. */
void mbd_reply_error(mbd_req *r, int status, const char *code, const char *message, int retry_s);
/* The same with one more header (none when NULL). */
void mbd_reply_error_hdr(mbd_req *r, int status, const char *code, const char *message,
                         const char *header, const char *value);
/* Text of a content type. */
void mbd_reply_text(mbd_req *r, int status, const char *type, const char *text, size_t len);

/* The HTTP status and error code for a library error of a model request. */
int mbd_http_status(int err, const char **code);

/* ------------------------------------------------------------------------ */
/* Path helpers                                                              */

/*
 * The model name at the start of p[0..n) ("NAME" or "NAME/rest" or
 * "NAME?query"), percent-decoded (a name with '/' is sent as
 * "Qwen%2FQwen2.5"): copies it into name (MBD_MODEL_NAME_MAX + 1 bytes)
 * and sets *rest to the offset of what follows it in p. 0, or -1 for an
 * empty or over-long name, a bad escape, or one that breaks the rule of
 * names (mbd_model_name_valid).
 */
int mbd_path_model(const char *p, size_t n, char *name, size_t *rest);

/* Percent-decodes s[0..n) into out (cap bytes, NUL-terminated). 0, or -1
 * when it does not fit, an escape is bad or it decodes to a NUL. */
int mbd_pct_decode(const char *s, size_t n, char *out, size_t cap);

#endif /* MBD_FRONT_H */
