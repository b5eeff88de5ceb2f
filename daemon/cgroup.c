/*
 * cgroup.c - a cgroup v2 per worker (cgroup.h): where they may go, making
 * one, killing and measuring it, removing it. Plain file operations on
 * /sys/fs/cgroup; no threads, no locks.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include "cgroup.h"
#include "mb_internal.h"

#ifndef CGROUP2_SUPER_MAGIC
#define CGROUP2_SUPER_MAGIC 0x63677270
#endif

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
    ;
}

int mbd_cgroup_is_v2(const char *path) {
  struct statfs sf;
  return statfs(path, &sf) == 0 && (unsigned long)sf.f_type == CGROUP2_SUPER_MAGIC;
}

/* Reads a small file into buf; its length or -1. */
static ssize_t read_file(const char *path, char *buf, size_t len) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return -1;
  ssize_t n = read(fd, buf, len - 1);
  close(fd);
  if (n < 0)
    return -1;
  buf[n] = '\0';
  return n;
}

static int write_file(const char *path, const char *text) {
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0)
    return -1;
  ssize_t n = write(fd, text, strlen(text));
  int e = errno;
  close(fd);
  errno = e;
  return n == (ssize_t)strlen(text) ? 0 : -1;
}

/* Where the cgroup v2 hierarchy is mounted (the first cgroup2 mount). */
static int v2_mount(char *out, size_t len) {
  FILE *f = fopen("/proc/self/mountinfo", "re");
  if (f == NULL)
    return -1;
  char line[4096];
  int found = -1;
  while (found != 0 && fgets(line, sizeof(line), f)) {
    /* ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS ... - FSTYPE SOURCE SUPER */
    char *dash = strstr(line, " - ");
    if (dash == NULL || strncmp(dash + 3, "cgroup2 ", 8) != 0)
      continue;
    char root[PATH_MAX], point[PATH_MAX];
    if (sscanf(line, "%*s %*s %*s %4095s %4095s", root, point) == 2 &&
        strcmp(root, "/") == 0 && (size_t)snprintf(out, len, "%s", point) < len)
      found = 0;
  }
  fclose(f);
  return found;
}

/* The daemon's own cgroup v2 folder. */
static int own_cgroup(char *out, size_t len) {
  char mnt[PATH_MAX], line[PATH_MAX + 16];
  if (v2_mount(mnt, sizeof(mnt)) != 0)
    return -1;
  FILE *f = fopen("/proc/self/cgroup", "re");
  if (f == NULL)
    return -1;
  int rc = -1;
  while (rc != 0 && fgets(line, sizeof(line), f)) {
    if (strncmp(line, "0::", 3) != 0)
      continue;
    line[strcspn(line, "\n")] = '\0';
    const char *rel = line + 3;
    if ((size_t)snprintf(out, len, "%s%s", mnt, strcmp(rel, "/") == 0 ? "" : rel) < len)
      rc = 0;
  }
  fclose(f);
  return rc;
}

static int delegated(const char *dir) {
  char v[8];
  ssize_t n = getxattr(dir, "trusted.delegate", v, sizeof(v) - 1);
  if (n <= 0)
    n = getxattr(dir, "user.delegate", v, sizeof(v) - 1);
  return n > 0 && v[0] == '1';
}

/* Enables the memory controller for base's children when it is offered;
 * whether memory.current will be there. */
static int enable_memory(const char *base) {
  char path[PATH_MAX + 32], buf[512];
  snprintf(path, sizeof(path), "%s/cgroup.controllers", base);
  if (read_file(path, buf, sizeof(buf)) < 0 || strstr(buf, "memory") == NULL)
    return 0;
  snprintf(path, sizeof(path), "%s/cgroup.subtree_control", base);
  if (read_file(path, buf, sizeof(buf)) >= 0 && strstr(buf, "memory") != NULL)
    return 1;
  return write_file(path, "+memory") == 0;
}

int mbd_cgroup_setup(const char *mode, char *base, size_t len, int *memory, char *why,
                     size_t why_len) {
  *memory = 0;
  base[0] = '\0';
  if (mode == NULL || strcmp(mode, "off") == 0) {
    mb__set_err(why, why_len, "cgroups are off");
    return MB_ENOTSUP;
  }
  char dir[PATH_MAX];
  if (strcmp(mode, "auto") == 0) {
    if (own_cgroup(dir, sizeof(dir)) != 0) {
      mb__set_err(why, why_len, "no cgroup v2 hierarchy");
      return MB_ENOTSUP;
    }
    if (!delegated(dir) || access(dir, W_OK) != 0) {
      mb__set_err(why, why_len, "cgroup %s is not delegated to the daemon", dir);
      return MB_ENOTSUP;
    }
    /* Processes may live only in leaves once controllers are enabled for
     * children: the daemon moves itself into one of its own. */
    char leaf[PATH_MAX + 16];
    snprintf(leaf, sizeof(leaf), "%s/modelbufd", dir);
    if ((mkdir(leaf, 0755) != 0 && errno != EEXIST)) {
      mb__set_err(why, why_len, "cannot make %s: %s", leaf, strerror(errno));
      return MB_ENOTSUP;
    }
    char leaf_procs[PATH_MAX + 32];
    snprintf(leaf_procs, sizeof(leaf_procs), "%s/cgroup.procs", leaf);
    if (write_file(leaf_procs, "0") != 0) {
      mb__set_err(why, why_len, "cannot move the daemon into %s: %s", leaf, strerror(errno));
      return MB_ENOTSUP;
    }
  } else {
    if ((size_t)snprintf(dir, sizeof(dir), "%s", mode) >= sizeof(dir) || mode[0] != '/') {
      mb__set_err(why, why_len, "cgroup: %s is not an absolute path", mode);
      return MB_EINVAL;
    }
    if (!mbd_cgroup_is_v2(dir)) {
      mb__set_err(why, why_len, "cgroup: %s is not a folder of a cgroup v2 file system", mode);
      return MB_EINVAL;
    }
    if (access(dir, W_OK) != 0) {
      mb__set_err(why, why_len, "cgroup: %s is not writable: %s", mode, strerror(errno));
      return MB_EINVAL;
    }
  }
  if ((size_t)snprintf(base, len, "%s", dir) >= len) {
    mb__set_err(why, why_len, "cgroup path too long");
    return MB_EINVAL;
  }
  *memory = enable_memory(dir);
  return 0;
}

int mbd_cgroup_create(const char *base, const char *name, char *out, size_t len, char *why,
                      size_t why_len) {
  for (const char *p = name; *p; p++)
    if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
          *p == '.' || *p == '_' || *p == '-' || *p == ':')) {
      mb__set_err(why, why_len, "cgroup name '%s' has a character it cannot have", name);
      return MB_EINVAL;
    }
  if ((size_t)snprintf(out, len, "%s/%s", base, name) >= len) {
    mb__set_err(why, why_len, "cgroup path too long");
    return MB_EINVAL;
  }
  if (mkdir(out, 0755) != 0 && errno != EEXIST) {
    mb__set_err(why, why_len, "cannot make cgroup %s: %s", out, strerror(errno));
    return MB_EIO;
  }
  return 0;
}

int mbd_cgroup_open_procs(const char *cg) {
  char path[PATH_MAX + 32];
  snprintf(path, sizeof(path), "%s/cgroup.procs", cg);
  return open(path, O_WRONLY | O_CLOEXEC);
}

size_t mbd_cgroup_signal(const char *cg, int sig) {
  char path[PATH_MAX + 32];
  snprintf(path, sizeof(path), "%s/cgroup.procs", cg);
  FILE *f = fopen(path, "re");
  if (f == NULL)
    return 0;
  size_t n = 0;
  long pid;
  while (fscanf(f, "%ld", &pid) == 1)
    if (pid > 1 && kill((pid_t)pid, sig) == 0)
      n++;
  fclose(f);
  return n;
}

void mbd_cgroup_kill(const char *cg) {
  char path[PATH_MAX + 32];
  snprintf(path, sizeof(path), "%s/cgroup.kill", cg);
  if (write_file(path, "1") == 0)
    return;
  /* A kernel before 5.14: each process, again while new ones appear. */
  for (int round = 0; round < 50 && mbd_cgroup_signal(cg, SIGKILL) > 0; round++)
    sleep_ms(2);
}

int mbd_cgroup_populated(const char *cg) {
  char path[PATH_MAX + 32], buf[256];
  snprintf(path, sizeof(path), "%s/cgroup.events", cg);
  if (read_file(path, buf, sizeof(buf)) < 0)
    return -1;
  const char *p = strstr(buf, "populated ");
  return p ? p[10] == '1' : -1;
}

uint64_t mbd_cgroup_memory(const char *cg) {
  char path[PATH_MAX + 32], buf[64];
  snprintf(path, sizeof(path), "%s/memory.current", cg);
  if (read_file(path, buf, sizeof(buf)) < 0)
    return 0;
  return strtoull(buf, NULL, 10);
}

int mbd_cgroup_remove(const char *cg, int wait_ms) {
  for (int waited = 0;; waited += 5) {
    if (rmdir(cg) == 0 || errno == ENOENT)
      return 0;
    if (errno != EBUSY || waited >= wait_ms)
      return -1;
    sleep_ms(5);
  }
}
