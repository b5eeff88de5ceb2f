/*
 * httpload.c - a small closed-loop HTTP load generator for bench/proxy.sh:
 * C connections (one thread each, keep-alive through libcurl) send GET URL
 * for S seconds; prints requests/s and p50/p99 latency in microseconds as
 * "rps=... p50_us=... p99_us=... errors=...".
 *
 * usage: httpload URL CONNECTIONS SECONDS
 */
#include <curl/curl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct worker {
  const char *url;
  double secs;
  double *lat;
  size_t n, cap;
  unsigned long errors;
  pthread_t th;
} worker;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static size_t sink(char *p, size_t s, size_t n, void *u) {
  (void)p;
  (void)u;
  return s * n;
}

static void *run(void *arg) {
  worker *w = arg;
  CURL *c = curl_easy_init();
  double end = now_s() + w->secs;

  curl_easy_setopt(c, CURLOPT_URL, w->url);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, sink);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_TCP_NODELAY, 1L);
  while (now_s() < end) {
    double t0 = now_s();
    long code = 0;
    if (curl_easy_perform(c) != CURLE_OK ||
        (curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code), code != 200)) {
      w->errors++;
      continue;
    }
    if (w->n == w->cap) {
      size_t nc = w->cap ? w->cap * 2 : 4096;
      double *nl = realloc(w->lat, nc * sizeof(*nl));
      if (nl == NULL)
        break;
      w->lat = nl;
      w->cap = nc;
    }
    w->lat[w->n++] = (now_s() - t0) * 1e6;
  }
  curl_easy_cleanup(c);
  return NULL;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  int conns;
  double secs;
  worker *ws;
  size_t total = 0, k = 0;
  unsigned long errors = 0;
  double *all;

  if (argc != 4) {
    fprintf(stderr, "usage: httpload URL CONNECTIONS SECONDS\n");
    return 2;
  }
  conns = atoi(argv[2]);
  secs = atof(argv[3]);
  if (conns < 1 || secs <= 0)
    return 2;
  curl_global_init(CURL_GLOBAL_DEFAULT);
  ws = calloc((size_t)conns, sizeof(*ws));
  if (ws == NULL)
    return 1;
  for (int i = 0; i < conns; i++) {
    ws[i].url = argv[1];
    ws[i].secs = secs;
    pthread_create(&ws[i].th, NULL, run, &ws[i]);
  }
  for (int i = 0; i < conns; i++) {
    pthread_join(ws[i].th, NULL);
    total += ws[i].n;
    errors += ws[i].errors;
  }
  all = malloc((total ? total : 1) * sizeof(*all));
  if (all == NULL)
    return 1;
  for (int i = 0; i < conns; i++) {
    memcpy(all + k, ws[i].lat, ws[i].n * sizeof(*all));
    k += ws[i].n;
    free(ws[i].lat);
  }
  qsort(all, total, sizeof(*all), cmp);
  printf("rps=%.0f p50_us=%.0f p99_us=%.0f errors=%lu\n", (double)total / secs,
         total ? all[total / 2] : 0.0, total ? all[(size_t)((double)total * 0.99)] : 0.0, errors);
  free(all);
  free(ws);
  curl_global_cleanup();
  return 0;
}
