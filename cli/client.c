/*
 * client.c - the modelbuf tool's HTTP client of modelbufd.
 */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client.h"

#define DEFAULT_URL "http://127.0.0.1:8686"

void cli_client_init(cli_client *c, int *argc, char **argv) {
  const char *url = getenv("MODELBUF_URL"), *key = getenv("MODELBUF_API_KEY");
  int k = 0;
  for (int i = 0; i < *argc; i++) {
    if (strcmp(argv[i], "--url") == 0 && i + 1 < *argc) {
      url = argv[++i];
    } else if (strcmp(argv[i], "--api-key") == 0 && i + 1 < *argc) {
      key = argv[++i];
    } else {
      argv[k++] = argv[i];
    }
  }
  *argc = k;
  argv[k] = NULL;
  memset(c, 0, sizeof(*c));
  if (url == NULL || url[0] == '\0')
    url = DEFAULT_URL;
  if (strncmp(url, "unix:", 5) == 0) {
    snprintf(c->unix_path, sizeof(c->unix_path), "%s", url + 5);
    snprintf(c->url, sizeof(c->url), "http://localhost");
  } else if (strstr(url, "://") == NULL) {
    snprintf(c->url, sizeof(c->url), "http://%s", url);
  } else {
    snprintf(c->url, sizeof(c->url), "%s", url);
  }
  size_t n = strlen(c->url);
  while (n > 0 && c->url[n - 1] == '/')
    c->url[--n] = '\0';
  if (key && key[0])
    snprintf(c->auth, sizeof(c->auth), "Authorization: Bearer %s", key);
}

typedef struct buf {
  char *p;
  size_t n;
} buf;

static size_t collect(char *p, size_t size, size_t n, void *arg) {
  buf *b = arg;
  size_t len = size * n;
  char *q = realloc(b->p, b->n + len + 1);
  if (q == NULL)
    return 0;
  memcpy(q + b->n, p, len);
  b->p = q;
  b->n += len;
  b->p[b->n] = '\0';
  return len;
}

static CURL *prepare(const cli_client *c, const char *path, struct curl_slist **hdrs) {
  CURL *h = curl_easy_init();
  if (h == NULL)
    return NULL;
  char url[1024];
  snprintf(url, sizeof(url), "%s%s", c->url, path);
  curl_easy_setopt(h, CURLOPT_URL, url);
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h, CURLOPT_PROXY, "");
  curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, 3000L);
  if (c->unix_path[0])
    curl_easy_setopt(h, CURLOPT_UNIX_SOCKET_PATH, c->unix_path);
  *hdrs = curl_slist_append(NULL, "Content-Type: application/json");
  if (c->auth[0])
    *hdrs = curl_slist_append(*hdrs, c->auth);
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, *hdrs);
  return h;
}

static void down(const cli_client *c, CURLcode rc) {
  fprintf(stderr,
          "modelbuf: cannot reach modelbufd at %s%s%s: %s -- is it running? Start it with "
          "`modelbufd --config FILE`, or point --url / MODELBUF_URL at it.\n",
          c->unix_path[0] ? "unix:" : c->url, c->unix_path, "", curl_easy_strerror(rc));
}

/*
 * Sends method with body (an empty_body for a POST or PUT without one),
 * the answer going to write(data); frees h and hdrs. 0 with *status, or
 * CLI_EXIT_DOWN after printing why.
 */
static int perform(const cli_client *c, CURL *h, struct curl_slist *hdrs, const char *method,
                   const char *body, const char *empty_body, curl_write_callback write,
                   void *data, long *status) {
  curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, write);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, data);
  curl_easy_setopt(h, CURLOPT_TIMEOUT, 600L);
  if (body || strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0)
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body ? body : empty_body);
  CURLcode rc = curl_easy_perform(h);
  if (rc == CURLE_OK)
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, status);
  curl_easy_cleanup(h);
  curl_slist_free_all(hdrs);
  if (rc != CURLE_OK) {
    down(c, rc);
    return CLI_EXIT_DOWN;
  }
  return 0;
}

int cli_request(const cli_client *c, const char *method, const char *path, const char *body,
                long *status, json_t **doc, char **text) {
  struct curl_slist *hdrs = NULL;
  CURL *h = prepare(c, path, &hdrs);
  buf b = {NULL, 0};
  *status = 0;
  *doc = NULL;
  if (text)
    *text = NULL;
  if (h == NULL)
    return 1;
  int rc = perform(c, h, hdrs, method, body, "{}", collect, &b, status);
  if (rc != 0) {
    free(b.p);
    return rc;
  }
  if (b.p) {
    *doc = json_loadb(b.p, b.n, 0, NULL);
    if (*doc == NULL && text) {
      *text = b.p;
      b.p = NULL;
    }
  }
  free(b.p);
  return 0;
}

static size_t drop(char *p, size_t size, size_t n, void *arg) {
  (void)p;
  (void)arg;
  return size * n;
}

int cli_call(const cli_client *c, const char *method, const char *path, const char *body,
             const char *const *headers, long *status) {
  struct curl_slist *hdrs = NULL;
  CURL *h = prepare(c, path, &hdrs);
  *status = 0;
  if (h == NULL)
    return 1;
  for (size_t i = 0; headers && headers[i]; i++) {
    struct curl_slist *more = curl_slist_append(hdrs, headers[i]);
    if (more == NULL) {
      curl_easy_cleanup(h);
      curl_slist_free_all(hdrs);
      return 1;
    }
    hdrs = more;
  }
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
  return perform(c, h, hdrs, method, body, "", drop, NULL, status);
}

typedef struct stream_ctx {
  int (*on_data)(const char *p, size_t n, void *arg);
  int (*on_tick)(void *arg);
  void *arg;
} stream_ctx;

static size_t stream_cb(char *p, size_t size, size_t n, void *arg) {
  stream_ctx *s = arg;
  return s->on_data(p, size * n, s->arg) ? size * n : 0;
}

static int tick_cb(void *arg, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un) {
  (void)dt, (void)dn, (void)ut, (void)un;
  stream_ctx *s = arg;
  return s->on_tick(s->arg) ? 0 : 1; /* non-zero aborts the transfer */
}

int cli_stream_tick(const cli_client *c, const char *path,
                    int (*on_data)(const char *p, size_t n, void *arg),
                    int (*on_tick)(void *arg), void *arg) {
  struct curl_slist *hdrs = NULL;
  CURL *h = prepare(c, path, &hdrs);
  if (h == NULL)
    return 1;
  stream_ctx s = {on_data, on_tick, arg};
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, stream_cb);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, &s);
  if (on_tick != NULL) {
    curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, tick_cb);
    curl_easy_setopt(h, CURLOPT_XFERINFODATA, &s);
    curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
  }
  CURLcode rc = curl_easy_perform(h);
  curl_easy_cleanup(h);
  curl_slist_free_all(hdrs);
  if (rc != CURLE_OK && rc != CURLE_WRITE_ERROR && rc != CURLE_ABORTED_BY_CALLBACK) {
    down(c, rc);
    return CLI_EXIT_DOWN;
  }
  return 0;
}

int cli_stream(const cli_client *c, const char *path,
               int (*on_data)(const char *p, size_t n, void *arg), void *arg) {
  return cli_stream_tick(c, path, on_data, NULL, arg);
}

int cli_print_error(const char *what, long status, json_t *doc) {
  json_t *e = json_object_get(doc, "error");
  const char *code = json_string_value(json_object_get(e, "code"));
  const char *msg = json_string_value(json_object_get(e, "message"));
  fprintf(stderr, "modelbuf: %s: %s (HTTP %ld): %s\n", what, code ? code : "error", status,
          msg ? msg : "no message");
  return 1;
}

const char *cli_name_seg(const char *name, char *out, size_t len) {
  static const char hex[] = "0123456789ABCDEF";
  size_t k = 0;
  for (const unsigned char *p = (const unsigned char *)name; *p && k + 4 < len; p++) {
    if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
        *p == '.' || *p == '_' || *p == '-' || *p == ':' || *p == '~') {
      out[k++] = (char)*p;
    } else {
      out[k++] = '%';
      out[k++] = hex[*p >> 4];
      out[k++] = hex[*p & 15];
    }
  }
  if (len > 0)
    out[k] = '\0';
  return out;
}
