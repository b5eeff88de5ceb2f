/*
 * tensors.h - tensors models in modelbufd (backend: tensors): weight files
 * that libmodelbuf's tensor engine keeps in device memory, and the routes
 * that serve them, GET /m/{name}/tensors (the list) and
 * GET /m/{name}/tensors/{tensor} (one tensor's bytes, read from the device).
 */
#ifndef MBD_TENSORS_H
#define MBD_TENSORS_H

#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

#include "daemon.h"
#include "front.h"

/* One tensors model: its files, loader knobs and the library's model. */
typedef struct mbd_tensors mbd_tensors;

/*
 * A tensors model for mc (files, loader knobs). The files: entries are
 * expanded (mbd_files_expand: folders, Hugging Face indexes, patterns) and
 * the files' headers are read
 * now when they can be, and *footprint_bytes is then the exact size of the
 * device arena. A file that is missing or malformed does not stop the
 * model from being made: each load reads the headers again and fails with
 * the file's fault until it is fixed, and *footprint_bytes is mc's
 * declared vram, else the files' sizes. The fault ("PATH: what is wrong")
 * is written to warn (empty when none). Free with mbd_tensors_backend()'s
 * destroy (the core does, once the model is added). Errors: MB_ENOMEM.
 */
int mbd_tensors_new(const mbd_model_config *mc, mbd_tensors **out, uint64_t *footprint_bytes,
                    char *warn, size_t warn_len) MB_WUR;

/*
 * Reads the headers of mc's weight files as a start would, and writes one
 * warning line to f per file that is missing or malformed
 * ("warning: CFG:LINE:COL: models.NAME.files: PATH: fault ..."). Returns
 * how many. For --check-config: such a file does not stop the daemon, but
 * the model cannot load until it is fixed.
 */
size_t mbd_tensors_check_files(const mbd_model_config *mc, const char *cfg_file, FILE *f);

/* The weight files of t's model now (its files: entries expanded when it
 * was last opened), as a JSON array of paths. */
json_t *mbd_tensors_files(mbd_tensors *t);

/* The library's model of t's files as last opened (NULL when they could
 * not be read), for code that holds the model READY meanwhile (a lease, or
 * `modelbuf bench lifecycle`, which drives it alone): a cold load may
 * replace it. */
mb_tensors_model *mbd_tensors_model_of(mbd_tensors *t);

/*
 * The backend for mb_model_add (user: an mbd_tensors). It runs the
 * library's tensors backend; a load first expands the files: entries again
 * and reads the headers again when the files are not the same list, a file
 * changed on disk (size, mtime, inode) or could not be read before, so a
 * weight file replaced or repaired, or a shard added to a folder, is picked
 * up by the next cold load.
 */
const mb_backend *mbd_tensors_backend(void);

/*
 * Resolves a request to tensors model r->route.m (what follows /m/{name}
 * starts at r->route.arg_off of the path): unknown paths get 404 (naming
 * the routes), other methods than GET and HEAD 405, an unknown tensor 404,
 * all without loading the model; else the route takes a lease. Returns 1.
 */
int mbd_tensors_resolve(mbd *d, mbd_req *r);

#endif /* MBD_TENSORS_H */
