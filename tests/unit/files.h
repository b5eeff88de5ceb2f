/*
 * files.h - for the unit tests that compare what was loaded with the file:
 * the whole file read into memory. Include after cmocka.h.
 */
#ifndef MB_TEST_FILES_H
#define MB_TEST_FILES_H

#include <stdio.h>
#include <stdlib.h>

/* The bytes of path (one more allocated, for a terminating 0); *len gets
 * the size. Fails the test when the file cannot be read. */
static inline unsigned char *slurp(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  assert_non_null(f);
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  unsigned char *buf = malloc((size_t)n + 1);
  assert_non_null(buf);
  assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
  fclose(f);
  *len = (size_t)n;
  return buf;
}

#endif /* MB_TEST_FILES_H */
