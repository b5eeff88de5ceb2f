/*
 * opts.h - private to libmodelbuf: how the library takes an option struct
 * a caller filled (the rule in docs/LIBRARY.md, "Option structs").
 *
 * Every public option struct starts with `size_t size`, which its *_init
 * function sets to sizeof the struct of the caller's header. The library
 * starts from its own defaults and copies the caller's first size bytes
 * over them: a caller built against an older header (a smaller size) gets
 * the defaults for the fields it did not know. A size below the struct's
 * first version (0: not filled by *_init) or above what this library knows
 * (a newer header than the library) is refused.
 */
#ifndef MB_OPTS_H
#define MB_OPTS_H

#include <stddef.h>
#include <string.h>

#include "modelbuf/modelbuf.h"
#include "alloc.h"

/* The bytes of type up to and including field last: the size of a
 * struct's first version, whose last field was last. */
#define MB__OPTS_END(type, last) (offsetof(type, last) + sizeof(((type *)0)->last))

/*
 * Copies the caller's src over dst (already its defaults, dst_size bytes),
 * as above; dst->size becomes dst_size. 0, or MB_EINVAL (src's size out
 * of [v1_size, dst_size]) with dst unchanged.
 */
static inline int mb__opts_take(void *dst, size_t dst_size, const void *src, size_t v1_size) {
  size_t size;
  memcpy(&size, src, sizeof(size));
  if (size < v1_size || size > dst_size)
    return MB_EINVAL;
  memcpy(dst, src, size);
  memcpy(dst, &dst_size, sizeof(dst_size));
  return 0;
}

/* mb__opts_take of *src, a type whose first version ended with field last,
 * over *dst; else MB_EINVAL with why in err. */
#define MB__OPTS_TAKE(dst, src, type, last, err, err_len)                                  \
  (mb__opts_take((dst), sizeof(type), (src), MB__OPTS_END(type, last)) == 0                \
       ? 0                                                                                \
       : mb__fail(MB_EINVAL, (err), (err_len),                                            \
                  #type ": size %zu is not one this library takes (%zu at most; fill "    \
                  "the struct with " #type "_init)",                                      \
                  (src)->size, sizeof(type)))

#endif /* MB_OPTS_H */
