/*
 * logring.c - a worker's numbered log lines in fixed memory (logring.h).
 *
 * Two rings under one mutex: the text of the lines in a byte ring, and a
 * slot per line (number, where its text starts, length, kind). A line's
 * number is its slot's distance from the oldest kept line plus that one's
 * number, so a reader resuming at a number finds its place at once.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "logring.h"

typedef struct slot {
  size_t off;   /* where its text starts in the byte ring */
  uint32_t len;
  char kind;
} slot;

struct mbd_logring {
  pthread_mutex_t mu;
  char *text;
  size_t cap, used, tail; /* tail: where the next text goes */
  slot *slots;
  size_t nslots, first, count; /* first: the oldest line's slot */
  uint64_t first_seq, next_seq;
  uint64_t dropped;
};

int mbd_logring_new(size_t bytes, mbd_logring **out) {
  if (bytes < 1024)
    bytes = 1024;
  mbd_logring *r = calloc(1, sizeof(*r));
  if (r == NULL)
    return MB_ENOMEM;
  r->cap = bytes;
  r->nslots = bytes / 32 > 64 ? bytes / 32 : 64;
  r->text = malloc(r->cap);
  r->slots = calloc(r->nslots, sizeof(*r->slots));
  if (r->text == NULL || r->slots == NULL || pthread_mutex_init(&r->mu, NULL) != 0) {
    free(r->text);
    free(r->slots);
    free(r);
    return MB_ENOMEM;
  }
  r->first_seq = r->next_seq = 1;
  *out = r;
  return 0;
}

void mbd_logring_free(mbd_logring *r) {
  if (r == NULL)
    return;
  pthread_mutex_destroy(&r->mu);
  free(r->text);
  free(r->slots);
  free(r);
}

static void drop_oldest(mbd_logring *r) {
  r->used -= r->slots[r->first].len;
  r->first = (r->first + 1) % r->nslots;
  r->count--;
  r->first_seq++;
  r->dropped++;
}

uint64_t mbd_logring_add(mbd_logring *r, char kind, const char *line, size_t len) {
  while (len > 0 && (line[len - 1] == '\r' || line[len - 1] == '\n'))
    len--;
  if (len > MBD_LOG_LINE_MAX)
    len = MBD_LOG_LINE_MAX;
  if (len > r->cap)
    len = r->cap;
  pthread_mutex_lock(&r->mu);
  while (r->count > 0 && (r->used + len > r->cap || r->count == r->nslots))
    drop_oldest(r);
  size_t off = r->tail;
  for (size_t i = 0; i < len; i++) {
    char c = line[i];
    /* One line of text: no line breaks or NULs inside it. */
    r->text[(off + i) % r->cap] = c == '\0' || c == '\n' || c == '\r' ? ' ' : c;
  }
  r->tail = (off + len) % r->cap;
  r->used += len;
  slot *s = &r->slots[(r->first + r->count) % r->nslots];
  s->off = off;
  s->len = (uint32_t)len;
  s->kind = kind;
  r->count++;
  uint64_t seq = r->next_seq++;
  pthread_mutex_unlock(&r->mu);
  return seq;
}

uint64_t mbd_logring_next(mbd_logring *r) {
  pthread_mutex_lock(&r->mu);
  uint64_t n = r->next_seq;
  pthread_mutex_unlock(&r->mu);
  return n;
}

uint64_t mbd_logring_dropped(mbd_logring *r) {
  pthread_mutex_lock(&r->mu);
  uint64_t n = r->dropped;
  pthread_mutex_unlock(&r->mu);
  return n;
}

/* Copies a line's text (wrapping in the ring) to out. */
static void copy_text(const mbd_logring *r, const slot *s, char *out) {
  size_t first = r->cap - s->off < s->len ? r->cap - s->off : s->len;
  memcpy(out, r->text + s->off, first);
  memcpy(out + first, r->text, s->len - first);
}

size_t mbd_logring_since(mbd_logring *r, uint64_t from_seq, char *out, size_t len,
                         uint64_t *next_seq) {
  size_t w = 0;
  if (len > 0)
    out[0] = '\0';
  pthread_mutex_lock(&r->mu);
  if (from_seq < r->first_seq)
    from_seq = r->first_seq;
  if (from_seq > r->next_seq)
    from_seq = r->next_seq;
  uint64_t seq = from_seq;
  while (len > 0 && seq < r->next_seq) {
    const slot *s = &r->slots[(r->first + (size_t)(seq - r->first_seq)) % r->nslots];
    char head[48];
    int hn = snprintf(head, sizeof(head), "%" PRIu64 " %c ", seq, s->kind);
    size_t need = (size_t)hn + s->len + 1;
    if (w + need > len - 1)
      break;
    memcpy(out + w, head, (size_t)hn);
    copy_text(r, s, out + w + hn);
    w += need;
    out[w - 1] = '\n';
    seq++;
  }
  if (len > 0)
    out[w] = '\0';
  pthread_mutex_unlock(&r->mu);
  if (next_seq)
    *next_seq = seq;
  return w;
}

size_t mbd_logring_tail(mbd_logring *r, uint64_t from_seq, char *out, size_t len) {
  if (len == 0)
    return 0;
  pthread_mutex_lock(&r->mu);
  if (from_seq < r->first_seq)
    from_seq = r->first_seq;
  /* Walk back from the newest line while the text fits. */
  uint64_t start = r->next_seq;
  size_t total = 0;
  while (start > from_seq) {
    const slot *s = &r->slots[(r->first + (size_t)(start - 1 - r->first_seq)) % r->nslots];
    size_t need = s->len + 1 + (s->kind == MBD_LOG_OUTPUT ? 0 : 6);
    if (total + need > len - 1)
      break;
    total += need;
    start--;
  }
  size_t w = 0;
  for (uint64_t seq = start; seq < r->next_seq; seq++) {
    const slot *s = &r->slots[(r->first + (size_t)(seq - r->first_seq)) % r->nslots];
    if (s->kind != MBD_LOG_OUTPUT) {
      memcpy(out + w, "-- ", 3);
      w += 3;
    }
    copy_text(r, s, out + w);
    w += s->len;
    if (s->kind != MBD_LOG_OUTPUT) {
      memcpy(out + w, " --", 3);
      w += 3;
    }
    out[w++] = '\n';
  }
  out[w] = '\0';
  pthread_mutex_unlock(&r->mu);
  return w;
}
