/*
 * queue.h - an intrusive, circular, doubly linked list, private to
 * libmodelbuf (libuv's queue.h, in our names). One shape for every list of
 * the core: the post queue, job completions, the loader pool's queue, the
 * answered requests, the dirty models, the admission lists, a device's
 * resident models, a model's waiters.
 *
 * A list is a head node (an mb__queue of its own); an element holds an
 * mb__queue node and is found from it with mb__queue_data (container_of).
 * Nothing allocates, so no operation can fail, and removal is O(1) from
 * anywhere in the list. A removed node is reset to point at itself, so
 * mb__queue_linked() tells whether an element is in a list. An element in
 * two lists at once has a node for each.
 */
#ifndef MB_QUEUE_H
#define MB_QUEUE_H

#include <stddef.h>

typedef struct mb__queue {
  struct mb__queue *next;
  struct mb__queue *prev;
} mb__queue;

/* The object of type holding field at ptr (the timers of heap.h use it too). */
#define mb__container_of(ptr, type, field) ((type *)((char *)(ptr)-offsetof(type, field)))
#define mb__queue_data(ptr, type, field) mb__container_of(ptr, type, field)

/* Every element of h, first to last; the body must not remove q (take the
 * first one at a time to empty a list). */
#define mb__queue_foreach(q, h) for ((q) = (h)->next; (q) != (h); (q) = (q)->next)

static inline void mb__queue_init(mb__queue *q) {
  q->next = q;
  q->prev = q;
}

static inline int mb__queue_empty(const mb__queue *h) {
  return h == h->next;
}

/* Whether node q is in a list (it was initialised, and removed since). */
static inline int mb__queue_linked(const mb__queue *q) {
  return q != q->next;
}

/* The first element of h, or NULL when h is empty. */
static inline mb__queue *mb__queue_first(const mb__queue *h) {
  return h->next == h ? NULL : h->next;
}

/* The last element of h, or NULL when h is empty. */
static inline mb__queue *mb__queue_last(const mb__queue *h) {
  return h->prev == h ? NULL : h->prev;
}

/* Inserts q after node at (at may be the head: q becomes the first). */
static inline void mb__queue_insert_after(mb__queue *at, mb__queue *q) {
  q->next = at->next;
  q->prev = at;
  at->next->prev = q;
  at->next = q;
}

static inline void mb__queue_insert_head(mb__queue *h, mb__queue *q) {
  mb__queue_insert_after(h, q);
}

static inline void mb__queue_insert_tail(mb__queue *h, mb__queue *q) {
  mb__queue_insert_after(h->prev, q);
}

/* Takes q out of its list; q is left linked to itself. */
static inline void mb__queue_remove(mb__queue *q) {
  q->prev->next = q->next;
  q->next->prev = q->prev;
  mb__queue_init(q);
}

/* n gets every element of h, in order; h is left empty. */
static inline void mb__queue_move(mb__queue *h, mb__queue *n) {
  if (mb__queue_empty(h)) {
    mb__queue_init(n);
    return;
  }
  n->next = h->next;
  n->prev = h->prev;
  n->next->prev = n;
  n->prev->next = n;
  mb__queue_init(h);
}

#endif /* MB_QUEUE_H */
