/*
 * logring.h - a worker's log: the last lines it printed, each numbered
 * (1, 2, 3, ... over the worker's whole life, across restarts), in a fixed
 * amount of memory. The daemon writes a marker line at each start of a new
 * process, so a reader sees where one process ended and the next began.
 *
 * Thread-safe: one mutex per ring, held for copies only. A line is at most
 * MBD_LOG_LINE_MAX bytes (longer ones arrive split); the oldest lines go
 * when the ring's bytes or line slots are used up.
 */
#ifndef MBD_LOGRING_H
#define MBD_LOGRING_H

#include <stddef.h>
#include <stdint.h>

#include "modelbuf/modelbuf.h"

#define MBD_LOG_LINE_MAX 4096

/* Kinds of line. */
#define MBD_LOG_OUTPUT 'o'  /* printed by the worker */
#define MBD_LOG_RESTART 'r' /* the daemon's marker: a new process started */
#define MBD_LOG_NOTE 'n'    /* the daemon's note about the worker (its exit, a kill) */

typedef struct mbd_logring mbd_logring;

/* A ring of (about) bytes of text. MB_ENOMEM. */
int mbd_logring_new(size_t bytes, mbd_logring **out) MB_WUR;
void mbd_logring_free(mbd_logring *r);

/* Appends a line (without its newline; a '\r' at its end and NUL bytes are
 * dropped or replaced) and returns its number. */
uint64_t mbd_logring_add(mbd_logring *r, char kind, const char *line, size_t len);

/* The number the next line will get (1 for an empty ring). */
uint64_t mbd_logring_next(mbd_logring *r);

/*
 * Copies whole lines numbered from_seq on (or from the oldest kept, when
 * those are gone), as many as fit in len - 1 bytes, each as
 * "SEQ KIND TEXT\n", NUL-terminated. *next_seq gets the number to ask for
 * next time. Returns the bytes written (0: nothing new).
 */
size_t mbd_logring_since(mbd_logring *r, uint64_t from_seq, char *out, size_t len,
                         uint64_t *next_seq);

/* The text of the last lines (whole lines, "TEXT\n" each, markers as
 * "-- TEXT --") that fit in len - 1 bytes, NUL-terminated; only lines
 * numbered from_seq on (0: all). Returns the bytes written. */
size_t mbd_logring_tail(mbd_logring *r, uint64_t from_seq, char *out, size_t len);

/* Lines dropped so far for want of room. */
uint64_t mbd_logring_dropped(mbd_logring *r);

#endif /* MBD_LOGRING_H */
