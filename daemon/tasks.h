/*
 * tasks.h - a small fixed pool of threads for work that blocks (a plugin
 * model's inference, a worker's cleanup hook, the compatibility routes'
 * offload and release of several models), so that no loop thread of the
 * front door ever blocks. A task runs on a pool thread, then its done
 * runs on the loop thread it came from.
 */
#ifndef MBD_TASKS_H
#define MBD_TASKS_H

#include "evloop.h"

typedef struct mbd mbd;
typedef struct mbd_task mbd_task;

/* Threads of the pool. */
#define MBD_TASK_THREADS 4

struct mbd_task {
  mbd_post post;               /* carries done back to the loop */
  mbd_loop *loop;              /* where done runs */
  void (*run)(mbd_task *t);    /* on a pool thread */
  void (*done)(mbd_task *t);   /* on the loop thread, after run */
  mbd_task *next;
};

/* Starts the pool (d->tasks). 0 or MB_ENOMEM / MB_EIO. */
int mbd_tasks_start(mbd *d, int threads);
/* Queues t (owned by the caller until its done runs). Any thread. */
void mbd_tasks_submit(mbd *d, mbd_task *t);
/* Runs what is queued, then stops the threads (their dones are posted to
 * their loops). */
void mbd_tasks_stop(mbd *d);
void mbd_tasks_free(mbd *d);

#endif /* MBD_TASKS_H */
