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
  char bad[160];      /* why the address cannot be used ("" when it can): every
                         request fails with it (CLI_EXIT_USAGE) */
} cli_client;

/*
 * Takes --url URL and --api-key KEY out of argv (compacting it; *argc
 * updated) and fills c from them or the environment (MODELBUF_URL,
 * MODELBUF_API_KEY). A list of daemons (A,B) is for ps, status and top
 * only: here it makes every request fail with a usage error.
 */
void cli_client_init(cli_client *c, int *argc, char **argv);

/* ------------------------------------------------------------------------ */
/* Several daemons (the fleet view of ps, status, top)                       */

/* Daemons in one list at most. */
#define CLI_MAX_NODES 128

typedef struct cli_fleet {
  cli_client *c;      /* n clients, in the order given */
  size_t n;
  int list;           /* the address was a list (--url A,B or MODELBUF_URLS): show nodes */
} cli_fleet;

/*
 * Takes --url and --api-key out of argv as cli_client_init does, and
 * reads the daemons: --url A[,B...], else MODELBUF_URLS (A,B,...), else
 * MODELBUF_URL, else the default; one key for all. Each address is 1 to
 * 400 visible ASCII characters (http://, https://, unix:/path or
 * HOST:PORT), at most CLI_MAX_NODES of them, none empty. 0, or
 * CLI_EXIT_USAGE after printing why (nothing to free then).
 */
int cli_fleet_init(cli_fleet *f, int *argc, char **argv);
void cli_fleet_free(cli_fleet *f);

/* One daemon's answer to cli_get_all. */
typedef struct cli_answer {
  int down;           /* it could not be reached: why */
  char why[256];
  long status;        /* else its HTTP status and JSON (NULL if not JSON) */
  json_t *doc;
  char node[256];     /* its X-Modelbuf-Node header ("" when none), as sent */
} cli_answer;

/* GET path from n daemons at once (a slow or dead one delays the others
 * by at most its timeouts: 3 s to connect, 20 s in all). out[i] is c[i]'s;
 * free each doc. */
void cli_get_all(const cli_client *c, size_t n, const char *path, cli_answer *out);

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
