/*
 * spool.c - request bodies in memory, then in a temporary file (spool.h).
 */
#include "spool.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "modelbuf/modelbuf.h"

void mbd_spool_init(mbd_spool *s, size_t mem_limit, const char *dir) {
  memset(s, 0, sizeof(*s));
  s->fd = -1;
  s->mem_limit = mem_limit;
  s->dir = dir;
}

/* An unnamed file in dir (gone when closed), or a named one unlinked at once. */
static int temp_file(const char *dir) {
  const char *d = dir && *dir ? dir : "/tmp";
  int fd;
#ifdef O_TMPFILE
  fd = open(d, O_TMPFILE | O_RDWR | O_EXCL | O_CLOEXEC, 0600);
  if (fd >= 0)
    return fd;
#endif
  char path[4096];
  snprintf(path, sizeof(path), "%s/modelbufd-body-XXXXXX", d);
  fd = mkostemp(path, O_CLOEXEC);
  if (fd >= 0)
    unlink(path);
  return fd;
}

static int write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR)
        continue;
      return MB_EIO;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

static void unmap(mbd_spool *s) {
  if (s->map != NULL) {
    munmap(s->map, s->map_len);
    s->map = NULL;
    s->map_len = 0;
  }
}

int mbd_spool_append(mbd_spool *s, const void *p, size_t n) {
  if (n == 0)
    return 0;
  unmap(s);
  if (s->fd < 0 && s->len + n <= s->mem_limit) {
    if (s->len + n > s->cap) {
      size_t cap = s->cap ? s->cap : 4096;
      while (cap < s->len + n)
        cap *= 2;
      if (cap > s->mem_limit)
        cap = s->mem_limit;
      char *m = realloc(s->mem, cap);
      if (m == NULL)
        return MB_ENOMEM;
      s->mem = m;
      s->cap = cap;
    }
    memcpy(s->mem + s->len, p, n);
    s->len += n;
    s->total += n;
    return 0;
  }
  if (s->fd < 0) {
    int fd = temp_file(s->dir);
    if (fd < 0)
      return MB_EIO;
    if (write_all(fd, s->mem, s->len) != 0) {
      close(fd);
      return MB_EIO;
    }
    s->fd = fd;
    free(s->mem);
    s->mem = NULL;
    s->len = s->cap = 0;
  }
  if (write_all(s->fd, p, n) != 0)
    return MB_EIO;
  s->total += n;
  return 0;
}

int mbd_spool_view(mbd_spool *s, const char **p, size_t *n) {
  if (s->fd < 0) {
    *p = s->mem ? s->mem : "";
    *n = s->len;
    return 0;
  }
  if (s->map == NULL && s->total > 0) {
    void *m = mmap(NULL, (size_t)s->total, PROT_READ, MAP_PRIVATE, s->fd, 0);
    if (m == MAP_FAILED)
      return MB_EIO;
    s->map = m;
    s->map_len = (size_t)s->total;
  }
  *p = s->map ? s->map : "";
  *n = (size_t)s->total;
  return 0;
}

ssize_t mbd_spool_read(mbd_spool *s, uint64_t off, char *out, size_t cap) {
  if (off >= s->total)
    return 0;
  size_t k = s->total - off < cap ? (size_t)(s->total - off) : cap;
  if (s->fd < 0) {
    memcpy(out, s->mem + off, k);
    return (ssize_t)k;
  }
  ssize_t r;
  while ((r = pread(s->fd, out, k, (off_t)off)) < 0 && errno == EINTR)
    ;
  return r;
}

void mbd_spool_free(mbd_spool *s) {
  unmap(s);
  free(s->mem);
  if (s->fd >= 0)
    close(s->fd);
  s->mem = NULL;
  s->len = s->cap = 0;
  s->fd = -1;
  s->total = 0;
}
