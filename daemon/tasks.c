/*
 * tasks.c - the blocking-work pool (tasks.h).
 *
 * Locks: p->mu guards the queue and the stop flag; run and done are called
 * without it.
 */
#include "tasks.h"

#include <pthread.h>
#include <stdlib.h>

#include "daemon.h"

struct mbd_tasks {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  mbd_task *head, *tail;
  int stop;
  pthread_t *threads;
  int n;
};

static void post_done(mbd_post *p) {
  mbd_task *t = (mbd_task *)p;
  t->done(t);
}

static void *pool_main(void *arg) {
  struct mbd_tasks *p = arg;
  pthread_mutex_lock(&p->mu);
  for (;;) {
    while (p->head == NULL && !p->stop)
      pthread_cond_wait(&p->cv, &p->mu);
    mbd_task *t = p->head;
    if (t == NULL)
      break; /* stopping, and nothing left */
    p->head = t->next;
    if (p->head == NULL)
      p->tail = NULL;
    pthread_mutex_unlock(&p->mu);
    t->run(t);
    t->post.fn = post_done;
    mbd_loop_post(t->loop, &t->post);
    pthread_mutex_lock(&p->mu);
  }
  pthread_mutex_unlock(&p->mu);
  return NULL;
}

int mbd_tasks_start(mbd *d, int threads) {
  struct mbd_tasks *p = calloc(1, sizeof(*p));
  if (p == NULL)
    return MB_ENOMEM;
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->cv, NULL);
  p->threads = calloc((size_t)threads, sizeof(*p->threads));
  d->tasks = p;
  if (p->threads == NULL)
    return MB_ENOMEM;
  for (int i = 0; i < threads; i++) {
    if (pthread_create(&p->threads[i], NULL, pool_main, p) != 0)
      return MB_EIO;
    p->n++;
  }
  return 0;
}

void mbd_tasks_submit(mbd *d, mbd_task *t) {
  struct mbd_tasks *p = d->tasks;
  t->next = NULL;
  pthread_mutex_lock(&p->mu);
  if (p->tail)
    p->tail->next = t;
  else
    p->head = t;
  p->tail = t;
  pthread_cond_signal(&p->cv);
  pthread_mutex_unlock(&p->mu);
}

void mbd_tasks_stop(mbd *d) {
  struct mbd_tasks *p = d->tasks;
  if (p == NULL)
    return;
  pthread_mutex_lock(&p->mu);
  p->stop = 1;
  pthread_cond_broadcast(&p->cv);
  pthread_mutex_unlock(&p->mu);
  for (int i = 0; i < p->n; i++)
    pthread_join(p->threads[i], NULL);
  p->n = 0;
}

void mbd_tasks_free(mbd *d) {
  struct mbd_tasks *p = d->tasks;
  if (p == NULL)
    return;
  mbd_tasks_stop(d);
  pthread_mutex_destroy(&p->mu);
  pthread_cond_destroy(&p->cv);
  free(p->threads);
  free(p);
  d->tasks = NULL;
}
