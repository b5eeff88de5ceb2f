/*
 * evloop.c - the front door's event loop (evloop.h): epoll, a binary heap
 * of timers, and an eventfd that wakes the loop for posted callbacks.
 *
 * Locks: post_mu guards the posted list only; everything else belongs to
 * the loop's thread.
 */
#include "evloop.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "modelbuf/modelbuf.h"

#define MAX_EVENTS 256

struct mbd_loop {
  int epfd;
  int wakefd;
  mbd_io wake_io;
  uint64_t now;
  int stop;                 /* atomic */
  mbd_timer **heap;         /* 1-based: heap[1] is the earliest */
  size_t n, cap;
  pthread_mutex_t post_mu;
  mbd_post *post_head, *post_tail;
  int wake_pending;         /* under post_mu: the eventfd was written */
  mbd_post *defer_head, *defer_tail; /* loop thread only */
};

uint64_t mbd_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

uint64_t mbd_loop_now(mbd_loop *l) { return l->now; }

/* ------------------------------------------------------------------------ */
/* Timers: a binary min-heap on due_ms                                       */

static void heap_set(mbd_loop *l, size_t i, mbd_timer *t) {
  l->heap[i] = t;
  t->slot = i;
}

static void sift_up(mbd_loop *l, size_t i) {
  mbd_timer *t = l->heap[i];
  while (i > 1 && l->heap[i / 2]->due_ms > t->due_ms) {
    heap_set(l, i, l->heap[i / 2]);
    i /= 2;
  }
  heap_set(l, i, t);
}

static void sift_down(mbd_loop *l, size_t i) {
  mbd_timer *t = l->heap[i];
  for (;;) {
    size_t c = 2 * i;
    if (c > l->n)
      break;
    if (c + 1 <= l->n && l->heap[c + 1]->due_ms < l->heap[c]->due_ms)
      c++;
    if (l->heap[c]->due_ms >= t->due_ms)
      break;
    heap_set(l, i, l->heap[c]);
    i = c;
  }
  heap_set(l, i, t);
}

int mbd_timer_start(mbd_loop *l, mbd_timer *t, uint64_t due_ms) {
  if (t->slot != 0) {
    uint64_t old = t->due_ms;
    t->due_ms = due_ms;
    if (due_ms < old)
      sift_up(l, t->slot);
    else
      sift_down(l, t->slot);
    return 0;
  }
  if (l->n + 1 >= l->cap) {
    size_t cap = l->cap ? l->cap * 2 : 256;
    mbd_timer **h = realloc(l->heap, cap * sizeof(*h));
    if (h == NULL)
      return MB_ENOMEM;
    l->heap = h;
    l->cap = cap;
  }
  t->due_ms = due_ms;
  l->n++;
  heap_set(l, l->n, t);
  sift_up(l, l->n);
  return 0;
}

void mbd_timer_stop(mbd_loop *l, mbd_timer *t) {
  size_t i = t->slot;
  if (i == 0)
    return;
  t->slot = 0;
  mbd_timer *last = l->heap[l->n--];
  if (i <= l->n) {
    heap_set(l, i, last);
    sift_up(l, i);
    sift_down(l, last->slot);
  }
}

/* ------------------------------------------------------------------------ */
/* Descriptors                                                               */

int mbd_io_set(mbd_loop *l, mbd_io *io, uint32_t events) {
  struct epoll_event ev;
  memset(&ev, 0, sizeof(ev));
  ev.events = events;
  if (io->exclusive)
    ev.events |= EPOLLEXCLUSIVE;
  ev.data.ptr = io;
  if (io->registered && events == io->events)
    return 0;
  /* EPOLLEXCLUSIVE cannot be modified: listeners are set once. */
  int op = io->registered ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
  if (epoll_ctl(l->epfd, op, io->fd, &ev) != 0)
    return MB_EIO;
  io->registered = 1;
  io->events = events;
  return 0;
}

void mbd_io_stop(mbd_loop *l, mbd_io *io) {
  if (!io->registered)
    return;
  struct epoll_event ev;
  memset(&ev, 0, sizeof(ev));
  epoll_ctl(l->epfd, EPOLL_CTL_DEL, io->fd, &ev);
  io->registered = 0;
  io->events = 0;
}

/* ------------------------------------------------------------------------ */
/* Posts                                                                     */

void mbd_loop_post(mbd_loop *l, mbd_post *p) {
  int wake;
  p->next = NULL;
  pthread_mutex_lock(&l->post_mu);
  if (l->post_tail)
    l->post_tail->next = p;
  else
    l->post_head = p;
  l->post_tail = p;
  wake = !l->wake_pending;
  l->wake_pending = 1;
  pthread_mutex_unlock(&l->post_mu);
  if (wake) {
    uint64_t one = 1;
    while (write(l->wakefd, &one, sizeof(one)) < 0 && errno == EINTR)
      ;
  }
}

static void run_posts(mbd_loop *l) {
  pthread_mutex_lock(&l->post_mu);
  mbd_post *p = l->post_head;
  l->post_head = l->post_tail = NULL;
  l->wake_pending = 0;
  pthread_mutex_unlock(&l->post_mu);
  while (p) {
    mbd_post *next = p->next;
    p->fn(p); /* may free p */
    p = next;
  }
}

void mbd_loop_defer(mbd_loop *l, mbd_post *p) {
  p->next = NULL;
  if (l->defer_tail)
    l->defer_tail->next = p;
  else
    l->defer_head = p;
  l->defer_tail = p;
}

static void run_deferred(mbd_loop *l) {
  while (l->defer_head) {
    mbd_post *p = l->defer_head;
    l->defer_head = p->next;
    if (l->defer_head == NULL)
      l->defer_tail = NULL;
    p->fn(p);
  }
}

static void on_wake(mbd_io *io, uint32_t revents) {
  uint64_t v;
  (void)revents;
  while (read(io->fd, &v, sizeof(v)) < 0 && errno == EINTR)
    ;
}

void mbd_loop_stop(mbd_loop *l) {
  __atomic_store_n(&l->stop, 1, __ATOMIC_RELEASE);
  uint64_t one = 1;
  while (write(l->wakefd, &one, sizeof(one)) < 0 && errno == EINTR)
    ;
}

/* ------------------------------------------------------------------------ */
/* The loop                                                                  */

int mbd_loop_new(mbd_loop **out) {
  mbd_loop *l = calloc(1, sizeof(*l));
  if (l == NULL)
    return MB_ENOMEM;
  l->epfd = epoll_create1(EPOLL_CLOEXEC);
  l->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  pthread_mutex_init(&l->post_mu, NULL);
  l->now = mbd_now_ms();
  l->wake_io.fd = l->wakefd;
  l->wake_io.cb = on_wake;
  if (l->epfd < 0 || l->wakefd < 0 || mbd_io_set(l, &l->wake_io, MBD_IO_READ) != 0) {
    mbd_loop_free(l);
    return MB_EIO;
  }
  *out = l;
  return 0;
}

void mbd_loop_free(mbd_loop *l) {
  if (l == NULL)
    return;
  if (l->epfd >= 0)
    close(l->epfd);
  if (l->wakefd >= 0)
    close(l->wakefd);
  pthread_mutex_destroy(&l->post_mu);
  free(l->heap);
  free(l);
}

static void run_timers(mbd_loop *l) {
  while (l->n > 0 && l->heap[1]->due_ms <= l->now) {
    mbd_timer *t = l->heap[1];
    mbd_timer_stop(l, t);
    t->cb(t); /* may re-arm t, or free its owner */
  }
}

void mbd_loop_run_pending(mbd_loop *l) {
  run_deferred(l);
  run_posts(l);
  run_deferred(l);
}

void mbd_loop_run(mbd_loop *l) {
  struct epoll_event evs[MAX_EVENTS];
  while (!__atomic_load_n(&l->stop, __ATOMIC_ACQUIRE)) {
    int timeout = -1;
    l->now = mbd_now_ms();
    if (l->n > 0) {
      uint64_t due = l->heap[1]->due_ms;
      timeout = due <= l->now ? 0 : due - l->now > 60000 ? 60000 : (int)(due - l->now);
    }
    int n = epoll_wait(l->epfd, evs, MAX_EVENTS, timeout);
    l->now = mbd_now_ms();
    for (int i = 0; i < n; i++) {
      mbd_io *io = evs[i].data.ptr;
      io->cb(io, evs[i].events);
    }
    run_deferred(l);
    run_posts(l);
    run_deferred(l);
    run_timers(l);
    run_deferred(l);
  }
  run_posts(l);
  run_deferred(l);
}
