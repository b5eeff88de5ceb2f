/*
 * heap.h - an intrusive binary min-heap of timers, private to libmodelbuf.
 *
 * Each timer lives inside the object it belongs to (a model, a waiting
 * request, a lease) and knows its slot, so cancelling is O(log n) and the
 * heap never allocates while the core steps: room is reserved when an object
 * that may own a timer is created (mb__heap_reserve), which is where an
 * allocation failure can still be reported to the caller.
 *
 * Ties on the deadline are broken by arming order (seq), so the core fires
 * timers in a deterministic order.
 */
#ifndef MB_HEAP_H
#define MB_HEAP_H

#include <stddef.h>
#include <stdint.h>

#define MB__TIMER_IDLE UINT32_MAX

typedef struct mb__timer {
  uint64_t deadline;
  uint64_t seq;  /* arming order, the tie-breaker */
  uint32_t slot; /* index in the heap, MB__TIMER_IDLE when not armed */
  uint8_t kind;  /* what the owner is (MB__T_*, core_int.h) */
} mb__timer;

typedef struct mb__heap {
  mb__timer **items;
  size_t len, cap;
  size_t reserved; /* slots promised to timer owners */
  uint64_t seq;
} mb__heap;

void mb__timer_init(mb__timer *t, uint8_t kind);
static inline int mb__timer_armed(const mb__timer *t) {
  return t->slot != MB__TIMER_IDLE;
}

/* Promises room for one more timer owner; MB_ENOMEM if it cannot. */
int mb__heap_reserve(mb__heap *h);
/* Gives a promise back (the owner is freed). */
void mb__heap_unreserve(mb__heap *h);
/* Arms (or re-arms) t at deadline; never fails thanks to the reservation. */
void mb__heap_arm(mb__heap *h, mb__timer *t, uint64_t deadline);
void mb__heap_cancel(mb__heap *h, mb__timer *t);
/* The earliest timer, or NULL. */
mb__timer *mb__heap_top(const mb__heap *h);
void mb__heap_free(mb__heap *h);

#endif /* MB_HEAP_H */
