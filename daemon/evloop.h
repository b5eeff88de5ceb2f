/*
 * evloop.h - one event loop per front-door thread (as Redis's ae.c, over
 * epoll): file descriptors watched for readiness, timers, and callbacks
 * posted from other threads.
 *
 * A loop and everything registered with it belong to the thread that runs
 * it: mbd_io_*, mbd_timer_* and mbd_loop_now are called on that thread
 * only. mbd_loop_post and mbd_loop_stop may be called from any thread.
 *
 * Nothing here allocates per event: io watchers, timers and posts are
 * fields of their owners (a connection holds its own). The timer heap
 * grows when a timer is armed for the first time (mbd_timer_start can
 * fail with MB_ENOMEM only then).
 */
#ifndef MBD_EVLOOP_H
#define MBD_EVLOOP_H

#include <stddef.h>
#include <stdint.h>

typedef struct mbd_loop mbd_loop;
typedef struct mbd_io mbd_io;
typedef struct mbd_timer mbd_timer;
typedef struct mbd_post mbd_post;

/* Readiness of a watched descriptor (epoll's bits). */
#define MBD_IO_READ 0x001u   /* EPOLLIN */
#define MBD_IO_WRITE 0x004u  /* EPOLLOUT */
#define MBD_IO_ERROR 0x008u  /* EPOLLERR */
#define MBD_IO_HUP 0x010u    /* EPOLLHUP */
#define MBD_IO_RDHUP 0x2000u /* EPOLLRDHUP: the peer shut its side */

struct mbd_io {
  int fd;
  uint32_t events;      /* registered: MBD_IO_READ | MBD_IO_WRITE | MBD_IO_RDHUP */
  int registered;
  int exclusive;        /* EPOLLEXCLUSIVE (listeners shared by every loop) */
  void (*cb)(mbd_io *io, uint32_t revents);
  void *arg;            /* the owner's, when the io is not the first field of it */
};

struct mbd_timer {
  uint64_t due_ms;
  size_t slot;          /* 1-based index in the loop's heap, 0 when not armed */
  void (*cb)(mbd_timer *t);
};

struct mbd_post {
  mbd_post *next;
  void (*fn)(mbd_post *p);
};

/* A new loop (an epoll instance and an eventfd). 0 or MB_ENOMEM / MB_EIO. */
int mbd_loop_new(mbd_loop **out);
/* Frees a loop that is not running; registered watchers are forgotten. */
void mbd_loop_free(mbd_loop *l);

/* Runs until mbd_loop_stop; posts queued at the stop are run first. */
void mbd_loop_run(mbd_loop *l);
/* Runs what was posted and deferred, on the calling thread, for a loop
 * whose thread has ended (shutdown). */
void mbd_loop_run_pending(mbd_loop *l);
/* Makes mbd_loop_run return. Thread-safe. */
void mbd_loop_stop(mbd_loop *l);

/* Monotonic milliseconds, read once per turn of the loop. */
uint64_t mbd_loop_now(mbd_loop *l);
/* The same, read now (CLOCK_MONOTONIC). */
uint64_t mbd_now_ms(void);

/*
 * Watches io->fd for events (MBD_IO_*; error and hang-up are always
 * reported): registers it, or changes what it waits for. 0 or MB_EIO.
 */
int mbd_io_set(mbd_loop *l, mbd_io *io, uint32_t events);
/* Stops watching io->fd (before it is closed). */
void mbd_io_stop(mbd_loop *l, mbd_io *io);

/* Arms (or re-arms) t to fire at due_ms of mbd_loop_now's clock. 0 or MB_ENOMEM. */
int mbd_timer_start(mbd_loop *l, mbd_timer *t, uint64_t due_ms);
void mbd_timer_stop(mbd_loop *l, mbd_timer *t);

/*
 * Runs p->fn(p) on the loop's thread, soon. Thread-safe and allocation-free:
 * p must stay valid until it runs, and must not be posted again before.
 */
void mbd_loop_post(mbd_loop *l, mbd_post *p);

/*
 * Runs p->fn(p) on the loop's thread after the events of this turn have
 * been handled: the way to free an object whose descriptor may still have
 * an event waiting in this turn (its callback must then see that it is
 * closed). Loop thread only.
 */
void mbd_loop_defer(mbd_loop *l, mbd_post *p);

#endif /* MBD_EVLOOP_H */
