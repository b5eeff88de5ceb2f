/*
 * proctree.c - processes as /proc shows them (proctree.h): the table of
 * every process, a worker's tree, its environment tag, signals to all of
 * it. Callers own their tables; nothing here is shared.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "proctree.h"

#define ENV_MAX (1u << 20) /* the most of an environment read */

/* Reads a small /proc file whole into buf (NUL-terminated): its length, or
 * -1. */
static ssize_t read_small(const char *path, char *buf, size_t len) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return -1;
  size_t got = 0;
  while (got + 1 < len) {
    ssize_t n = read(fd, buf + got, len - 1 - got);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      break;
    got += (size_t)n;
  }
  close(fd);
  buf[got] = '\0';
  return (ssize_t)got;
}

int mbd_proc_parse_stat(const char *text, size_t len, long page_bytes, mbd_proc *out) {
  char buf[1024];
  if (len >= sizeof(buf))
    len = sizeof(buf) - 1;
  memcpy(buf, text, len);
  buf[len] = '\0';
  memset(out, 0, sizeof(*out));
  char *end;
  long pid = strtol(buf, &end, 10);
  if (end == buf || pid <= 0)
    return -1;
  /* The name sits in parentheses and may hold anything, ')' included: the
   * fields start after the last one. */
  char *p = strrchr(buf, ')');
  if (p == NULL)
    return -1;
  p++;
  while (*p == ' ')
    p++;
  if (*p == '\0')
    return -1;
  out->pid = (pid_t)pid;
  out->state = *p++;
  unsigned long long f[22];
  /* Fields 4 (ppid) .. 24 (rss): 21 numbers. */
  for (int i = 0; i < 21; i++) {
    while (*p == ' ')
      p++;
    if (*p == '\0')
      return -1;
    /* Signed fields (priority, nice) may be negative: keep their bits. */
    if (*p == '-')
      f[i] = (unsigned long long)strtoll(p, &end, 10);
    else
      f[i] = strtoull(p, &end, 10);
    if (end == p)
      return -1;
    p = end;
  }
  out->ppid = (pid_t)f[0];
  out->pgrp = (pid_t)f[1];
  out->sid = (pid_t)f[2];
  out->start = f[18];
  out->rss_bytes = f[20] * (unsigned long long)(page_bytes > 0 ? page_bytes : 4096);
  return 0;
}

int mbd_proc_stat(pid_t pid, mbd_proc *out) {
  char path[64], buf[1024];
  snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
  ssize_t n = read_small(path, buf, sizeof(buf));
  if (n <= 0)
    return -1;
  return mbd_proc_parse_stat(buf, (size_t)n, sysconf(_SC_PAGESIZE), out);
}

int mbd_proc_scan(mbd_proc_table *t) {
  t->n = 0;
  DIR *d = opendir("/proc");
  if (d == NULL)
    return MB_EIO;
  long page = sysconf(_SC_PAGESIZE);
  struct dirent *e;
  int rc = 0;
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] < '1' || e->d_name[0] > '9')
      continue;
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%.20s/stat", e->d_name);
    ssize_t n = read_small(path, buf, sizeof(buf));
    mbd_proc pr;
    if (n <= 0 || mbd_proc_parse_stat(buf, (size_t)n, page, &pr) != 0)
      continue; /* gone meanwhile */
    if (t->n == t->cap) {
      size_t cap = t->cap ? t->cap * 2 : 256;
      mbd_proc *np = realloc(t->p, cap * sizeof(*np));
      if (np == NULL) {
        rc = MB_ENOMEM;
        break;
      }
      t->p = np;
      t->cap = cap;
    }
    t->p[t->n++] = pr;
  }
  closedir(d);
  return rc;
}

void mbd_proc_table_free(mbd_proc_table *t) {
  free(t->p);
  t->p = NULL;
  t->n = t->cap = 0;
}

int mbd_env_block_has(const char *buf, size_t len, const char *entry) {
  size_t el = strlen(entry);
  size_t i = 0;
  while (i < len) {
    const char *s = buf + i;
    const char *z = memchr(s, '\0', len - i);
    size_t sl = z ? (size_t)(z - s) : len - i;
    if (sl == el && memcmp(s, entry, el) == 0)
      return 1;
    i += sl + 1;
  }
  return 0;
}

int mbd_proc_has_env(pid_t pid, const char *entry) {
  char path[64];
  snprintf(path, sizeof(path), "/proc/%d/environ", (int)pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return -1;
  size_t cap = 16384, len = 0;
  char *buf = malloc(cap);
  int rc = -1;
  if (buf == NULL)
    goto out;
  for (;;) {
    if (len == cap) {
      if (cap >= ENV_MAX)
        break; /* an environment that large: what was read decides */
      char *nb = realloc(buf, cap * 2);
      if (nb == NULL)
        break;
      buf = nb;
      cap *= 2;
    }
    ssize_t n = read(fd, buf + len, cap - len);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      goto out;
    if (n == 0)
      break;
    len += (size_t)n;
  }
  /* A zombie or a kernel thread has no environment: unreadable as such. */
  rc = len == 0 ? -1 : mbd_env_block_has(buf, len, entry);
out:
  free(buf);
  close(fd);
  return rc;
}

size_t mbd_proc_tree(const mbd_proc_table *t, pid_t leader, pid_t adopter, const char *tag,
                     uint64_t since, unsigned char *member) {
  size_t count = 0;
  memset(member, 0, t->n);
  for (size_t i = 0; i < t->n; i++) {
    const mbd_proc *p = &t->p[i];
    int in = p->pid == leader || p->pgrp == leader || p->ppid == leader;
    /* An orphan reparented to the daemon: its tag tells whose it was. */
    if (!in && adopter > 0 && tag != NULL && p->ppid == adopter && p->start >= since &&
        p->state != 'Z')
      in = mbd_proc_has_env(p->pid, tag) == 1;
    if (in) {
      member[i] = 1;
      count++;
    }
  }
  /* Descendants of members, to any depth (a bounded number of passes: a
   * chain deeper than that is cut, not looped on). */
  for (int pass = 0; pass < 64; pass++) {
    size_t added = 0;
    for (size_t i = 0; i < t->n; i++) {
      if (member[i])
        continue;
      for (size_t k = 0; k < t->n; k++)
        if (member[k] && t->p[k].pid == t->p[i].ppid) {
          member[i] = 1;
          added++;
          break;
        }
    }
    count += added;
    if (added == 0)
      break;
  }
  return count;
}

int mbd_proc_signal(const mbd_proc *p, const char *entry, int sig) {
  int fd = -1;
#ifdef SYS_pidfd_open
  /* A pidfd pins the process: checked through /proc, then signaled through
   * the pidfd, it cannot have been replaced in between. */
  long f = syscall(SYS_pidfd_open, p->pid, 0);
  fd = f < 0 ? -1 : (int)f;
#endif
  mbd_proc now;
  int same = mbd_proc_stat(p->pid, &now) == 0 && now.start == p->start && now.state != 'Z' &&
             (entry == NULL || mbd_proc_has_env(p->pid, entry) == 1);
  int ok = 0;
  if (same) {
#ifdef SYS_pidfd_send_signal
    if (fd >= 0)
      ok = syscall(SYS_pidfd_send_signal, fd, sig, NULL, 0) == 0;
    else
#endif
      ok = kill(p->pid, sig) == 0;
  }
  if (fd >= 0)
    close(fd);
  return ok;
}

size_t mbd_proc_signal_tagged(const mbd_proc_table *t, const char *tag, uint64_t since, int sig) {
  size_t n = 0;
  pid_t self = getpid();
  for (size_t i = 0; i < t->n; i++) {
    const mbd_proc *p = &t->p[i];
    if (p->pid == self || p->start < since || p->state == 'Z')
      continue;
    if (mbd_proc_has_env(p->pid, tag) == 1 && mbd_proc_signal(p, tag, sig))
      n++;
  }
  return n;
}

int mbd_proc_boot_id(char *buf, size_t len) {
  ssize_t n = read_small("/proc/sys/kernel/random/boot_id", buf, len);
  if (n <= 0)
    return -1;
  while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' '))
    buf[--n] = '\0';
  return n > 0 ? 0 : -1;
}
