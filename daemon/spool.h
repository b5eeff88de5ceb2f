/*
 * spool.h - a request body as it is received: in memory up to a limit, then
 * in an unnamed temporary file (as nginx's client_body_buffer_size and
 * client_body_temp_path), so that a large upload costs disk, not memory.
 * One owner, one thread; nothing shared.
 */
#ifndef MBD_SPOOL_H
#define MBD_SPOOL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct mbd_spool {
  char *mem;          /* in memory (NULL once in a file) */
  size_t len, cap;
  int fd;             /* the temporary file, -1 while in memory */
  uint64_t total;     /* bytes appended */
  size_t mem_limit;   /* bytes kept in memory before switching to a file */
  const char *dir;    /* where the file goes (not owned) */
  void *map;          /* mbd_spool_view's mapping of the file */
  size_t map_len;
} mbd_spool;

/* An empty spool (no allocation yet). */
void mbd_spool_init(mbd_spool *s, size_t mem_limit, const char *dir);
/* Appends n bytes. 0, MB_ENOMEM or MB_EIO (the file could not be made or written). */
int mbd_spool_append(mbd_spool *s, const void *p, size_t n);
/* The whole content as one piece (mapping the file when there is one);
 * valid until the next append or free. 0 or MB_EIO. */
int mbd_spool_view(mbd_spool *s, const char **p, size_t *n);
/* Copies up to cap bytes from offset off into out; returns the count, or
 * -1 on a read error. */
ssize_t mbd_spool_read(mbd_spool *s, uint64_t off, char *out, size_t cap);
/* Frees memory, mapping and file; the spool is empty again. */
void mbd_spool_free(mbd_spool *s);

#endif /* MBD_SPOOL_H */
