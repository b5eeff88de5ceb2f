/*
 * heap.c - the timer heap (see heap.h). Owned by the core; callers hold the
 * core lock.
 */
#include "modelbuf/modelbuf.h"
#include "alloc.h"
#include "heap.h"

void mb__timer_init(mb__timer *t, uint8_t kind) {
  t->deadline = 0;
  t->seq = 0;
  t->slot = MB__TIMER_IDLE;
  t->kind = kind;
}

static int less(const mb__timer *a, const mb__timer *b) {
  if (a->deadline != b->deadline)
    return a->deadline < b->deadline;
  return a->seq < b->seq;
}

static void put(mb__heap *h, size_t i, mb__timer *t) {
  h->items[i] = t;
  t->slot = (uint32_t)i;
}

static void sift_up(mb__heap *h, size_t i) {
  mb__timer *t = h->items[i];
  while (i > 0) {
    size_t parent = (i - 1) / 2;
    if (!less(t, h->items[parent]))
      break;
    put(h, i, h->items[parent]);
    i = parent;
  }
  put(h, i, t);
}

static void sift_down(mb__heap *h, size_t i) {
  mb__timer *t = h->items[i];
  for (;;) {
    size_t l = 2 * i + 1, r = l + 1, m = i;
    const mb__timer *best = t;
    if (l < h->len && less(h->items[l], best)) {
      m = l;
      best = h->items[l];
    }
    if (r < h->len && less(h->items[r], best))
      m = r;
    if (m == i)
      break;
    put(h, i, h->items[m]);
    i = m;
  }
  put(h, i, t);
}

int mb__heap_reserve(mb__heap *h) {
  if (h->reserved + 1 > h->cap) {
    size_t cap = h->cap ? h->cap * 2 : 64;
    mb__timer **items = mb__realloc(h->items, cap * sizeof(*items));
    if (items == NULL)
      return MB_ENOMEM;
    h->items = items;
    h->cap = cap;
  }
  h->reserved++;
  return 0;
}

void mb__heap_unreserve(mb__heap *h) {
  if (h->reserved > 0)
    h->reserved--;
}

void mb__heap_cancel(mb__heap *h, mb__timer *t) {
  size_t i = t->slot;
  if (i == MB__TIMER_IDLE)
    return;
  t->slot = MB__TIMER_IDLE;
  h->len--;
  if (i == h->len)
    return;
  put(h, i, h->items[h->len]);
  sift_down(h, i);
  sift_up(h, h->items[i] == NULL ? i : h->items[i]->slot);
}

void mb__heap_arm(mb__heap *h, mb__timer *t, uint64_t deadline) {
  mb__heap_cancel(h, t);
  t->deadline = deadline;
  t->seq = ++h->seq;
  put(h, h->len++, t);
  sift_up(h, t->slot);
}

mb__timer *mb__heap_top(const mb__heap *h) {
  return h->len ? h->items[0] : NULL;
}

void mb__heap_free(mb__heap *h) {
  mb__free(h->items);
  h->items = NULL;
  h->len = h->cap = h->reserved = 0;
}
