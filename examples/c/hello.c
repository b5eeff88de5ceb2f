/*
 * hello.c - the smallest useful libmodelbuf program (the README's example).
 *
 * One model whose "weights" are a 32 MiB buffer. The first acquire loads it;
 * the lease keeps it while it is used; a keep-alive of 100 ms then moves it
 * to host RAM, and the next acquire brings it back.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "modelbuf/modelbuf.h"

typedef struct model {
  size_t bytes;
  char *gpu;  /* where the weights live while READY */
  char *host; /* their copy while OFFLOADED */
} model;

static int load(void *user, int device, char *err, size_t err_len) {
  model *m = user;
  (void)device;
  if ((m->gpu = malloc(m->bytes)) == NULL) {
    snprintf(err, err_len, "out of memory");
    return MB_ENOMEM;
  }
  memset(m->gpu, 7, m->bytes); /* "read the weights" */
  return 0;
}

static int offload(void *user, char *err, size_t err_len) {
  model *m = user;
  (void)err, (void)err_len;
  m->host = m->gpu; /* a real backend copies device -> host here */
  m->gpu = NULL;
  return 0;
}

static int restore(void *user, int device, char *err, size_t err_len) {
  model *m = user;
  (void)device, (void)err, (void)err_len;
  m->gpu = m->host;
  m->host = NULL;
  return 0;
}

static int unload(void *user, char *err, size_t err_len) {
  model *m = user;
  (void)err, (void)err_len;
  free(m->gpu);
  free(m->host);
  m->gpu = m->host = NULL;
  return 0;
}

static void on_event(const mb_event *ev, void *arg) {
  (void)arg;
  if (ev->type == MB_EVENT_STATE)
    printf("%-6s %s -> %s (%s)\n", ev->model, mb_state_name(ev->from), mb_state_name(ev->to),
           ev->reason);
}

int main(void) {
  char err[256];
  mb_ctx_opts co;
  mb_ctx_opts_init(&co);
  co.on_event = on_event;
  mb_ctx *ctx;
  if (mb_ctx_new(&co, &ctx, err, sizeof(err)) != 0 ||
      mb_device_add(ctx, NULL, NULL, err, sizeof(err)) != 0) { /* the host device */
    fprintf(stderr, "hello: %s\n", err);
    return 1;
  }

  model weights = {32u << 20, NULL, NULL};
  mb_callbacks cb = {load, offload, restore, unload, NULL, &weights};
  mb_model_opts mo;
  mb_model_opts_init(&mo);
  mo.keep_alive_ms = 100;
  mo.footprint_bytes = weights.bytes;
  if (mb_model_add_callbacks(ctx, "embed", &cb, &mo, err, sizeof(err)) != 0) {
    fprintf(stderr, "hello: %s\n", err);
    return 1;
  }

  for (int i = 0; i < 2; i++) {
    mb_lease lease;
    int rc = mb_acquire(ctx, "embed", NULL, &lease, err, sizeof(err));
    if (rc != 0) {
      fprintf(stderr, "hello: acquire: %s: %s\n", mb_err_name(rc), err);
      return 1;
    }
    printf("embed  in use: weights[0] = %d\n", weights.gpu[0]); /* inference here */
    if (mb_release(ctx, lease) != 0)
      return 1;
    nanosleep(&(struct timespec){0, 300 * 1000 * 1000}, NULL); /* idle: offloaded */
  }

  mb_status st;
  if (mb_model_status(ctx, "embed", &st) == 0)
    printf("embed  %s in %s: %llu loads, %llu offloads, %llu restores\n",
           mb_state_name(st.state), mb_location_name(st.location),
           (unsigned long long)st.stats.loads, (unsigned long long)st.stats.offloads,
           (unsigned long long)st.stats.restores);
  return mb_ctx_free(ctx) == 0 ? 0 : 1; /* unloads what is left */
}
