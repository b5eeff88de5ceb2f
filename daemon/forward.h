/*
 * forward.h - the request head a worker gets for a client's request: the
 * method and target exactly as the client sent them (below /m/{name} for
 * the model routes), Host for the worker, the client's header fields but
 * the hop-by-hop ones (and those Connection names), its framing fields,
 * Expect, the daemon's own X-Modelbuf-* and (with API keys) the key, then
 * framing the daemon chose for the body it will send. Pure; the fuzz
 * target checks that what it writes parses back as one well-framed request.
 */
#ifndef MBD_FORWARD_H
#define MBD_FORWARD_H

#include <stddef.h>
#include <stdint.h>

#include "http_parse.h"

/* How the body goes to the worker. */
typedef enum mbd_fwd_body {
  MBD_FWD_NONE = 0,   /* no body (and no framing field, but for POST/PUT/PATCH: length 0) */
  MBD_FWD_LENGTH,     /* body_len bytes (buffered, or streamed with a known length) */
  MBD_FWD_CHUNKED     /* streamed without a length: chunked */
} mbd_fwd_body;

typedef struct mbd_fwd {
  const char *buf;          /* the client's head */
  const mbd_http_head *h;   /* parsed from buf */
  size_t target_skip;       /* bytes of the target not forwarded ("/m/{name}") */
  int port;                 /* the worker's, for Host */
  int drop_keys;            /* the daemon has API keys: Authorization / X-API-Key stay */
  mbd_fwd_body body;
  uint64_t body_len;
} mbd_fwd;

/* Writes the head into *out (malloc'd, *len bytes, CRLF CRLF included).
 * 0 or MB_ENOMEM. */
int mbd_forward_head(const mbd_fwd *f, char **out, size_t *len);

/* 1 when the client's field i goes on to the worker. */
int mbd_forward_field(const mbd_fwd *f, int i);

#endif /* MBD_FORWARD_H */
