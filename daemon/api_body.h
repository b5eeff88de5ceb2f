/*
 * api_body.h - the "model" of an OpenAI-compatible request, from its body:
 * the JSON field, or the multipart/form-data field named "model" (audio
 * routes), found by the body's boundary and by length, so binary parts
 * holding NUL bytes before it do not hide it. Pure; fuzzed by
 * tests/fuzz/fuzz_http.c.
 */
#ifndef MBD_API_BODY_H
#define MBD_API_BODY_H

#include <stddef.h>

/*
 * content_type may be NULL (JSON). 0 with the name in out (NUL-free,
 * non-empty, shorter than out_len); MB_EINVAL with the reason in err.
 */
int mbd_body_model(const char *content_type, const char *body, size_t len, char *out,
                   size_t out_len, char *err, size_t err_len);

#endif /* MBD_API_BODY_H */
