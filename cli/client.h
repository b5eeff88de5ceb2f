/*
 * client.h - private to the modelbuf tool: talking to modelbufd over HTTP
 * (libcurl, jansson). The daemon's address comes from --url, else
 * MODELBUF_URL, else http://127.0.0.1:8686 ("unix:/path" for a Unix
 * socket); the API key from --api-key, else MODELBUF_API_KEY.
 */
#ifndef MB_CLI_CLIENT_H
#define MB_CLI_CLIENT_H

#include <jansson.h>
#include <stddef.h>

/* Exit status when the daemon cannot be reached. */
#define CLI_EXIT_DOWN 3

typedef struct cli_client {
  char url[512];      /* base URL, no trailing slash */
  char unix_path[256];
  char auth[512];     /* "Authorization: Bearer KEY" or "" */
} cli_client;

/*
 * Takes --url URL and --api-key KEY out of argv (compacting it; *argc
 * updated) and fills c from them or the environment.
 */
void cli_client_init(cli_client *c, int *argc, char **argv);

/*
 * One request; body may be NULL. On success (any HTTP status) *status gets
 * it and *doc the parsed JSON (NULL for a non-JSON body, whose text goes to
 * *text when text is not NULL; free it). Returns 0, or CLI_EXIT_DOWN after
 * printing why the daemon cannot be reached.
 */
int cli_request(const cli_client *c, const char *method, const char *path, const char *body,
                long *status, json_t **doc, char **text);

/*
 * A request whose answer is not the daemon's own (a model's, through the
 * proxy): headers is a NULL-terminated list of extra "Name: value" lines
 * (may be NULL), the body is read and dropped, *status gets the HTTP
 * status. Returns 0, or CLI_EXIT_DOWN after printing why.
 */
int cli_call(const cli_client *c, const char *method, const char *path, const char *body,
             const char *const *headers, long *status);

/*
 * Streams a response: each chunk of the body goes to on_data (return 0 to
 * stop). Returns 0, or CLI_EXIT_DOWN after printing why.
 */
int cli_stream(const cli_client *c, const char *path,
               int (*on_data)(const char *p, size_t n, void *arg), void *arg);

/* The same, and on_tick (may be NULL) is called at least once a second
 * while the stream is open, data or not (return 0 to stop). */
int cli_stream_tick(const cli_client *c, const char *path,
                    int (*on_data)(const char *p, size_t n, void *arg),
                    int (*on_tick)(void *arg), void *arg);

/* A model's name (or alias) as one URL path segment, percent-encoded
 * ("Qwen/Qwen2.5" -> "Qwen%2FQwen2.5"), into out; returns out. */
const char *cli_name_seg(const char *name, char *out, size_t len);

/* Prints the daemon's error ("modelbuf: CODE: message") and returns 1. */
int cli_print_error(const char *what, long status, json_t *doc);

#endif /* MB_CLI_CLIENT_H */
