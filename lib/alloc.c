/*
 * alloc.c - the replaceable allocator (see alloc.h) and error-buffer helper.
 *
 * The table is read without a lock: mb_set_allocator() is documented as
 * "call before any context exists", as libuv's uv_replace_allocator is.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "modelbuf/modelbuf.h"
#include "alloc.h"

static mb_allocator allocator = {malloc, realloc, calloc, free};

int mb_set_allocator(const mb_allocator *a) {
  if (a == NULL || a->malloc_fn == NULL || a->realloc_fn == NULL ||
      a->calloc_fn == NULL || a->free_fn == NULL)
    return MB_EINVAL;
  allocator = *a;
  return 0;
}

void *mb__malloc(size_t size) {
  return allocator.malloc_fn(size == 0 ? 1 : size);
}

void *mb__calloc(size_t count, size_t size) {
  if (count == 0 || size == 0)
    count = size = 1;
  return allocator.calloc_fn(count, size);
}

void *mb__realloc(void *ptr, size_t size) {
  return allocator.realloc_fn(ptr, size == 0 ? 1 : size);
}

void mb__free(void *ptr) {
  if (ptr != NULL)
    allocator.free_fn(ptr);
}

char *mb__strdup(const char *s) {
  size_t n = strlen(s) + 1;
  char *p = mb__malloc(n);
  if (p != NULL)
    memcpy(p, s, n);
  return p;
}

__attribute__((format(printf, 3, 0))) static void set_err_v(char *err, size_t err_len,
                                                             const char *fmt, va_list ap) {
  if (err != NULL && err_len > 0)
    vsnprintf(err, err_len, fmt, ap);
}

void mb__set_err(char *err, size_t err_len, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  set_err_v(err, err_len, fmt, ap);
  va_end(ap);
}

int mb__fail(int rc, char *err, size_t err_len, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  set_err_v(err, err_len, fmt, ap);
  va_end(ap);
  return rc;
}
