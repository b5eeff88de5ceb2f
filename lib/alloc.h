/*
 * alloc.h - the library's allocator, private to libmodelbuf.
 *
 * Every allocation of the library goes through these, so mb_set_allocator()
 * can replace them (tests use that to fail the Nth allocation and prove the
 * library returns MB_ENOMEM and leaks nothing).
 */
#ifndef MB_ALLOC_H
#define MB_ALLOC_H

#include <stddef.h>

void *mb__malloc(size_t size);
void *mb__calloc(size_t count, size_t size);
void *mb__realloc(void *ptr, size_t size);
void mb__free(void *ptr);
/* strdup through the library allocator; NULL on failure. */
char *mb__strdup(const char *s);

/* snprintf into an error buffer that may be NULL or empty. */
void mb__set_err(char *err, size_t err_len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* The same, then returns rc: `return mb__fail(MB_EINVAL, err, err_len, ...);`. */
int mb__fail(int rc, char *err, size_t err_len, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif /* MB_ALLOC_H */
