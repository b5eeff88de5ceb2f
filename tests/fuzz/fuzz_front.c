/*
 * fuzz_front.c - libFuzzer target for the whole request path in process:
 * arbitrary bytes, as a client would send them, reach a real modelbufd
 * front door (its loop threads, parser, router, routes, header filter,
 * leases and answers) through a socketpair; the daemon serves a tensors
 * model (a tiny safetensors file) so that model routes take real leases.
 *
 * Each input is one client: it sends the bytes, ends its side, and reads
 * until the daemon closes. Checked (abort on violation): the daemon
 * closes within 10 s; every answer it sent starts with a status line
 * "HTTP/1.1 NNN " with NNN from 100 to 599. Any crash, sanitizer report
 * or hang is a bug.
 *
 * Seeds: tests/fuzz/corpus/front/ (and the dictionary front.dict).
 */
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "daemon.h"
#include "front.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static mbd *D;

static void write_model(const char *path) {
  static const char hdr[] = "{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}";
  uint64_t n = sizeof(hdr) - 1;
  unsigned char len[8];
  for (int i = 0; i < 8; i++)
    len[i] = (unsigned char)(n >> (8 * i));
  FILE *f = fopen(path, "wb");
  if (f == NULL)
    abort();
  fwrite(len, 1, 8, f);
  fwrite(hdr, 1, n, f);
  fwrite("0123456789abcdef", 1, 16, f);
  fclose(f);
}

static void start(void) {
  char model[128], sock[128], text[1024], err[512];
  snprintf(model, sizeof(model), "/tmp/mb-fuzz-front-%d.safetensors", (int)getpid());
  snprintf(sock, sizeof(sock), "/tmp/mb-fuzz-front-%d.sock", (int)getpid());
  write_model(model);
  snprintf(text, sizeof(text),
           "listen: unix:%s\n"
           "devices: [{host: true, budget: 64MiB}]\n"
           "log_level: error\n"
           "http_threads: 2\n"
           "limits: {max_body_size: 64KiB, max_header_size: 8KiB, header_timeout: 2s,\n"
           "         idle_timeout: 2s, body_timeout: 2s}\n"
           "openai_routes: [/v1/extra]\n"
           "compat: {model: tt}\n"
           "models:\n"
           "  t: {backend: tensors, files: [%s], aliases: [tt, org/t]}\n",
           sock, model);
  mbd_config *cfg;
  mbd_diag diag;
  mbd_diag_init(&diag);
  if (mbd_config_parse(text, strlen(text), "fuzz.yaml", NULL, &cfg, &diag) != 0) {
    mbd_diag_print(&diag, stderr);
    abort();
  }
  mbd_diag_free(&diag);
  if (mbd_start(cfg, &D, err, sizeof(err)) != 0 || mbd_serve_start(D, err, sizeof(err)) != 0) {
    fprintf(stderr, "fuzz_front: %s\n", err);
    abort();
  }
}

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Every answer in buf[0..n) starts with a valid status line (only the
 * first is checked when the rest cannot be told apart from bodies). */
static void check_answer(const char *buf, size_t n) {
  if (n == 0)
    return; /* closed without an answer (a client that left) */
  if (n < 13 || memcmp(buf, "HTTP/1.1 ", 9) != 0 || buf[9] < '1' || buf[9] > '5' ||
      buf[10] < '0' || buf[10] > '9' || buf[11] < '0' || buf[11] > '9' || buf[12] != ' ') {
    fprintf(stderr, "fuzz_front: not a status line: %.40s\n", buf);
    abort();
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (D == NULL)
    start();
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
    return 0;
  if (mbd_front_adopt(D, sv[0]) != 0) {
    close(sv[1]);
    return 0;
  }
  size_t off = 0, got = 0, cap = 1 << 16;
  char *buf = malloc(cap);
  uint64_t deadline = now_ms() + 10000;
  int wr_done = 0;
  for (;;) {
    if (!wr_done && off == size) {
      shutdown(sv[1], SHUT_WR);
      wr_done = 1;
    }
    struct pollfd p = {sv[1], (short)(POLLIN | (wr_done ? 0 : POLLOUT)), 0};
    uint64_t now = now_ms();
    if (now >= deadline) {
      fprintf(stderr, "fuzz_front: the daemon did not close a connection whose client ended\n");
      abort();
    }
    if (poll(&p, 1, (int)(deadline - now)) < 0 && errno != EINTR)
      break;
    if (!wr_done && (p.revents & POLLOUT)) {
      ssize_t w = send(sv[1], data + off, size - off, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (w > 0)
        off += (size_t)w;
      else if (w < 0 && errno != EAGAIN && errno != EINTR)
        wr_done = 1; /* the daemon closed: nothing more to send */
    }
    if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
      if (got == cap && buf) {
        /* only the beginning is checked; the rest is drained */
        char junk[4096];
        ssize_t r = recv(sv[1], junk, sizeof(junk), MSG_DONTWAIT);
        if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR))
          break;
        continue;
      }
      ssize_t r = recv(sv[1], buf + got, cap - got, MSG_DONTWAIT);
      if (r > 0)
        got += (size_t)r;
      else if (r == 0 || (errno != EAGAIN && errno != EINTR))
        break;
    }
  }
  check_answer(buf, got);
  free(buf);
  close(sv[1]);
  return 0;
}
