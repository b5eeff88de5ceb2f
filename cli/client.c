/*
 * client.c - the modelbuf tool's HTTP client of modelbufd.
 */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cli.h"
#include "client.h"

#define DEFAULT_URL "http://127.0.0.1:8686"

/* The longest address taken, and its check: visible ASCII, no space. */
#define URL_MAX 400

static int url_ok(const char *u, size_t n) {
  if (n == 0 || n > URL_MAX)
    return 0;
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)u[i] <= 0x20 || (unsigned char)u[i] >= 0x7f)
      return 0;
  if (n >= 5 && strncmp(u, "unix:", 5) == 0)
    return n > 5 && n - 5 < sizeof(((cli_client *)0)->unix_path);
  const char *sep = strstr(u, "://");
  if (sep != NULL && (size_t)(sep - u) < n)
    return strncmp(u, "http://", 7) == 0 || strncmp(u, "https://", 8) == 0;
  return 1;
}

/* Fills c for the address u[0..n) (checked) and the key. */
static void client_set(cli_client *c, const char *u, size_t n, const char *key) {
  memset(c, 0, sizeof(*c));
  if (n >= 5 && strncmp(u, "unix:", 5) == 0) {
    snprintf(c->unix_path, sizeof(c->unix_path), "%.*s", (int)(n - 5), u + 5);
    snprintf(c->url, sizeof(c->url), "http://localhost");
  } else if (strstr(u, "://") == NULL || (size_t)(strstr(u, "://") - u) >= n) {
    snprintf(c->url, sizeof(c->url), "http://%.*s", (int)n, u);
  } else {
    snprintf(c->url, sizeof(c->url), "%.*s", (int)n, u);
  }
  size_t k = strlen(c->url);
  while (k > 0 && c->url[k - 1] == '/')
    c->url[--k] = '\0';
  if (key && key[0])
    snprintf(c->auth, sizeof(c->auth), "Authorization: Bearer %s", key);
}

/* Takes --url and --api-key out of argv; the values, or NULL. */
static void take_flags(int *argc, char **argv, const char **url, const char **key) {
  int k = 0;
  *url = *key = NULL;
  for (int i = 0; i < *argc; i++) {
    if (strcmp(argv[i], "--url") == 0 && i + 1 < *argc) {
      *url = argv[++i];
    } else if (strcmp(argv[i], "--api-key") == 0 && i + 1 < *argc) {
      *key = argv[++i];
    } else {
      argv[k++] = argv[i];
    }
  }
  *argc = k;
  argv[k] = NULL;
}

void cli_client_init(cli_client *c, int *argc, char **argv) {
  const char *url, *key;
  take_flags(argc, argv, &url, &key);
  if (url == NULL)
    url = getenv("MODELBUF_URL");
  if (key == NULL)
    key = getenv("MODELBUF_API_KEY");
  if (url == NULL || url[0] == '\0')
    url = DEFAULT_URL;
  size_t n = strlen(url);
  if (strchr(url, ',') != NULL) {
    client_set(c, DEFAULT_URL, strlen(DEFAULT_URL), key);
    snprintf(c->bad, sizeof(c->bad), "this command talks to one daemon; a list of them "
             "(--url A,B) is for ps, status and top");
  } else if (!url_ok(url, n)) {
    client_set(c, DEFAULT_URL, strlen(DEFAULT_URL), key);
    snprintf(c->bad, sizeof(c->bad), "bad daemon address (http://HOST:PORT, https://..., "
             "unix:/path or HOST:PORT, at most %d visible characters)", URL_MAX);
  } else {
    client_set(c, url, n, key);
  }
}

int cli_fleet_init(cli_fleet *f, int *argc, char **argv) {
  const char *url, *key;
  memset(f, 0, sizeof(*f));
  take_flags(argc, argv, &url, &key);
  if (key == NULL)
    key = getenv("MODELBUF_API_KEY");
  const char *from = "--url";
  if (url != NULL) {
    f->list = strchr(url, ',') != NULL;
  } else if ((url = getenv("MODELBUF_URLS")) != NULL && url[0] != '\0') {
    f->list = 1;
    from = "MODELBUF_URLS";
  } else if ((url = getenv("MODELBUF_URL")) != NULL && url[0] != '\0') {
    from = "MODELBUF_URL";
  } else {
    url = DEFAULT_URL;
  }
  size_t count = 1;
  for (const char *p = url; *p; p++)
    count += *p == ',';
  if (count > CLI_MAX_NODES) {
    fprintf(stderr, "modelbuf: %s: more than %d daemons\n", from, CLI_MAX_NODES);
    return CLI_EXIT_USAGE;
  }
  f->c = calloc(count, sizeof(*f->c));
  if (f->c == NULL) {
    fprintf(stderr, "modelbuf: out of memory\n");
    return CLI_EXIT_USAGE;
  }
  for (const char *p = url;; ) {
    const char *e = strchr(p, ',');
    size_t n = e ? (size_t)(e - p) : strlen(p);
    if (!url_ok(p, n)) {
      fprintf(stderr, "modelbuf: %s: daemon %zu of the list is not an address "
              "(http://HOST:PORT, https://..., unix:/path or HOST:PORT, at most %d visible "
              "characters)\n", from, f->n + 1, URL_MAX);
      cli_fleet_free(f);
      return CLI_EXIT_USAGE;
    }
    client_set(&f->c[f->n++], p, n, key);
    if (e == NULL)
      break;
    p = e + 1;
  }
  return 0;
}

void cli_fleet_free(cli_fleet *f) {
  free(f->c);
  memset(f, 0, sizeof(*f));
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
  if (c->bad[0]) {
    curl_easy_cleanup(h);
    curl_slist_free_all(hdrs);
    fprintf(stderr, "modelbuf: %s\n", c->bad);
    return CLI_EXIT_USAGE;
  }
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
  if (c->bad[0]) {
    curl_easy_cleanup(h);
    curl_slist_free_all(hdrs);
    fprintf(stderr, "modelbuf: %s\n", c->bad);
    return CLI_EXIT_USAGE;
  }
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

/* Keeps the X-Modelbuf-Node header of an answer (cli_answer.node). */
static size_t node_header(char *p, size_t size, size_t n, void *arg) {
  cli_answer *a = arg;
  size_t len = size * n;
  static const char name[] = "x-modelbuf-node:";
  if (len > sizeof(name) - 1 && strncasecmp(p, name, sizeof(name) - 1) == 0) {
    const char *v = p + sizeof(name) - 1;
    size_t vl = len - (sizeof(name) - 1);
    while (vl > 0 && (*v == ' ' || *v == '\t'))
      v++, vl--;
    while (vl > 0 && (v[vl - 1] == '\r' || v[vl - 1] == '\n' || v[vl - 1] == ' '))
      vl--;
    snprintf(a->node, sizeof(a->node), "%.*s", (int)vl, v);
  }
  return len;
}

void cli_get_all(const cli_client *c, size_t n, const char *path, cli_answer *out) {
  CURLM *multi = curl_multi_init();
  CURL **h = calloc(n ? n : 1, sizeof(*h));
  struct curl_slist **hdrs = calloc(n ? n : 1, sizeof(*hdrs));
  buf *b = calloc(n ? n : 1, sizeof(*b));
  memset(out, 0, n * sizeof(*out));
  for (size_t i = 0; i < n; i++) {
    out[i].down = 1;
    snprintf(out[i].why, sizeof(out[i].why), "out of memory");
  }
  if (multi == NULL || h == NULL || hdrs == NULL || b == NULL)
    goto done;
  for (size_t i = 0; i < n; i++) {
    h[i] = prepare(&c[i], path, &hdrs[i]);
    if (h[i] == NULL)
      continue;
    curl_easy_setopt(h[i], CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(h[i], CURLOPT_WRITEDATA, &b[i]);
    curl_easy_setopt(h[i], CURLOPT_TIMEOUT, 20L);
    curl_easy_setopt(h[i], CURLOPT_HEADERFUNCTION, node_header);
    curl_easy_setopt(h[i], CURLOPT_HEADERDATA, &out[i]);
    if (curl_multi_add_handle(multi, h[i]) != CURLM_OK) {
      curl_easy_cleanup(h[i]);
      h[i] = NULL;
    }
  }
  for (int running = 1; running > 0;) {
    if (curl_multi_perform(multi, &running) != CURLM_OK)
      break;
    if (running > 0 && curl_multi_poll(multi, NULL, 0, 1000, NULL) != CURLM_OK)
      break;
  }
  CURLMsg *msg;
  int left;
  while ((msg = curl_multi_info_read(multi, &left)) != NULL) {
    if (msg->msg != CURLMSG_DONE)
      continue;
    size_t i = 0;
    while (i < n && h[i] != msg->easy_handle)
      i++;
    if (i == n)
      continue;
    if (msg->data.result != CURLE_OK) {
      snprintf(out[i].why, sizeof(out[i].why), "%s", curl_easy_strerror(msg->data.result));
      continue;
    }
    out[i].down = 0;
    out[i].why[0] = '\0';
    curl_easy_getinfo(h[i], CURLINFO_RESPONSE_CODE, &out[i].status);
    if (b[i].p)
      out[i].doc = json_loadb(b[i].p, b[i].n, 0, NULL);
  }
done:
  for (size_t i = 0; h && i < n; i++) {
    if (h[i]) {
      curl_multi_remove_handle(multi, h[i]);
      curl_easy_cleanup(h[i]);
    }
    if (hdrs)
      curl_slist_free_all(hdrs[i]);
    if (b)
      free(b[i].p);
  }
  if (multi)
    curl_multi_cleanup(multi);
  free(h);
  free(hdrs);
  free(b);
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
