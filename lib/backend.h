/*
 * backend.h - private to libmodelbuf: what the library's own backends
 * (tensors, plugin, callbacks) may ask of the core beyond the public mb_op
 * functions.
 */
#ifndef MB_BACKEND_H
#define MB_BACKEND_H

#include "modelbuf/modelbuf.h"

/*
 * A note about an operation that succeeds anyway (the tensors backend runs
 * on the host device because the machine has no GPU): when the operation
 * returns 0, the core sends it as an MB_EVENT_WARNING of the model after
 * the operation's state change. The library prints nothing itself; this is
 * how such a note reaches whoever listens to events. Copied (cut to 191
 * bytes); the last note of an operation wins; ignored when the operation
 * fails (op->err says why) or when op is not the core's.
 */
void mb__op_note(mb_op *op, const char *note);

#endif /* MB_BACKEND_H */
