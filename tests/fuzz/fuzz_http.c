/*
 * fuzz_http.c - libFuzzer target for the request-body parsing of modelbufd's
 * OpenAI-compatible routes: the "model" field of a JSON body, or of a
 * multipart/form-data body given its Content-Type (daemon/api_body.c).
 *
 * Input layout: bytes up to the first NUL are the Content-Type (empty: JSON),
 * the rest is the body (binary, NULs allowed). A name that comes back must be
 * non-empty, NUL-free and fit the buffer. Any crash, leak or sanitizer report
 * is a bug.
 *
 * Seeds: tests/fuzz/corpus/http/. Run:
 *   cp -r tests/fuzz/corpus/http /tmp/hc && build-fuzz/tests/fuzz/fuzz_http /tmp/hc
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "api_body.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const uint8_t *nul = memchr(data, 0, size);
  size_t ctl = nul != NULL ? (size_t)(nul - data) : 0;
  const char *body = nul != NULL ? (const char *)nul + 1 : (const char *)data;
  size_t blen = nul != NULL ? size - ctl - 1 : size;
  char *ct = malloc(ctl + 1), name[65], err[256];

  if (ct == NULL)
    return 0;
  memcpy(ct, data, ctl);
  ct[ctl] = '\0';
  /* The body is copied so that reads past its end are caught. */
  char *b = malloc(blen ? blen : 1);
  if (b != NULL) {
    memcpy(b, body, blen);
    if (mbd_body_model(ctl ? ct : NULL, b, blen, name, sizeof(name), err, sizeof(err)) == 0) {
      size_t n = strlen(name);
      if (n == 0 || n >= sizeof(name))
        abort();
    } else if (err[0] == '\0') {
      abort();
    }
    free(b);
  }
  free(ct);
  return 0;
}
