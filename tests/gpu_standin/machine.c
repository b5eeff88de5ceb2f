/*
 * machine.c - the stand-in GPU machine: the shared table of GPUs and
 * processes (machine.h), and the fault rules. Compiled into each stand-in
 * library and into standin_ctl, each with its own mapping of the file.
 */
#include "machine.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MBSI_MAGIC 0x6d627369u

static pthread_once_t once = PTHREAD_ONCE_INIT;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static mbsi_machine *machine;
static int machine_fd = -1;

long long mbsi_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

uint64_t mbsi_parse_size(const char *s) {
  char *end = NULL;
  errno = 0;
  double v = strtod(s, &end);
  if (errno != 0 || end == s || v < 0)
    return 0;
  while (*end == ' ')
    end++;
  double mul = 1;
  if (strncasecmp(end, "KiB", 3) == 0 || strncasecmp(end, "K", 1) == 0)
    mul = 1024.0;
  else if (strncasecmp(end, "MiB", 3) == 0 || strncasecmp(end, "M", 1) == 0)
    mul = 1024.0 * 1024;
  else if (strncasecmp(end, "GiB", 3) == 0 || strncasecmp(end, "G", 1) == 0)
    mul = 1024.0 * 1024 * 1024;
  else if (*end != '\0')
    return 0;
  return (uint64_t)(v * mul);
}

/* Item i of a comma-separated list into out ("" when absent). */
static void list_item(const char *list, int i, char *out, size_t len) {
  out[0] = '\0';
  if (list == NULL)
    return;
  const char *p = list;
  for (int k = 0; k < i; k++) {
    p = strchr(p, ',');
    if (p == NULL)
      return;
    p++;
  }
  size_t n = strcspn(p, ",");
  if (n >= len)
    n = len - 1;
  memcpy(out, p, n);
  out[n] = '\0';
}

static void configure(mbsi_machine *m) {
  memset(m, 0, sizeof(*m));
  const char *v = getenv("MB_STANDIN_GPUS");
  int n = v ? atoi(v) : 1;
  if (n < 0)
    n = 0;
  if (n > MBSI_MAX_GPUS)
    n = MBSI_MAX_GPUS;
  m->n_gpus = n;
  v = getenv("MB_STANDIN_CTX_MB");
  m->ctx_bytes = (uint64_t)(v ? atoi(v) : 8) << 20;
  v = getenv("MB_STANDIN_RELEASE_MS");
  m->release_ms = v ? atoi(v) : 0;
  const char *mem = getenv("MB_STANDIN_GPU_MEM");
  const char *names = getenv("MB_STANDIN_GPU_NAMES");
  const char *bus = getenv("MB_STANDIN_GPU_BUS");
  const char *novmm = getenv("MB_STANDIN_NO_VMM");
  uint64_t last = 1ull << 30;
  for (int i = 0; i < n; i++) {
    mbsi_gpu *g = &m->gpu[i];
    char item[96];
    list_item(mem, i, item, sizeof(item));
    if (item[0] != '\0' && mbsi_parse_size(item) > 0)
      last = mbsi_parse_size(item);
    g->total = last;
    list_item(names, i, item, sizeof(item));
    if (item[0] != '\0')
      snprintf(g->name, sizeof(g->name), "%s", item);
    else
      snprintf(g->name, sizeof(g->name), "modelbuf stand-in GPU %d", i);
    list_item(bus, i, item, sizeof(item));
    if (item[0] != '\0')
      snprintf(g->bus, sizeof(g->bus), "%s", item);
    else
      snprintf(g->bus, sizeof(g->bus), "0000:%02x:00.0", 0x10 + i);
    g->vmm = !(novmm && novmm[0] == '1');
    atomic_init(&g->lost, 0);
  }
  m->size = sizeof(*m);
  m->magic = MBSI_MAGIC;
}

static void open_machine(void) {
  const char *path = getenv("MB_STANDIN_MACHINE");
  if (path != NULL && path[0] != '\0') {
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd >= 0 && flock(fd, LOCK_EX) == 0) {
      struct stat st;
      int fresh = fstat(fd, &st) == 0 && st.st_size == 0;
      if ((fresh && ftruncate(fd, sizeof(mbsi_machine)) == 0) ||
          (!fresh && st.st_size == (off_t)sizeof(mbsi_machine))) {
        void *p = mmap(NULL, sizeof(mbsi_machine), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (p != MAP_FAILED) {
          mbsi_machine *m = p;
          if (fresh)
            configure(m);
          if (m->magic == MBSI_MAGIC && m->size == sizeof(*m)) {
            machine = m;
            machine_fd = fd;
            flock(fd, LOCK_UN);
            return;
          }
          munmap(p, sizeof(mbsi_machine));
        }
      }
      fprintf(stderr, "mb-standin: %s is not a stand-in machine; using a private one\n", path);
    }
    if (fd >= 0)
      close(fd);
  }
  /* A private machine: this process alone. */
  void *p = mmap(NULL, sizeof(mbsi_machine), PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    fprintf(stderr, "mb-standin: cannot map the machine table\n");
    abort(); /* a test helper: nothing sensible can go on */
  }
  machine = p;
  configure(machine);
}

mbsi_machine *mbsi_machine_get(void) {
  pthread_once(&once, open_machine);
  return machine;
}

void mbsi_lock(void) {
  mbsi_machine_get();
  pthread_mutex_lock(&mu);
  if (machine_fd >= 0)
    while (flock(machine_fd, LOCK_EX) != 0 && errno == EINTR)
      ;
}

void mbsi_unlock(void) {
  if (machine_fd >= 0)
    flock(machine_fd, LOCK_UN);
  pthread_mutex_unlock(&mu);
}

/* Start time of pid (field 22 of /proc/PID/stat); 0 when it has ended or is
 * a zombie (a zombie holds no GPU memory: the driver let go at exit). */
static unsigned long long proc_start(int pid) {
  char path[64], buf[1024];
  snprintf(path, sizeof(path), "/proc/%d/stat", pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return 0;
  ssize_t n = read(fd, buf, sizeof(buf) - 1);
  close(fd);
  if (n <= 0)
    return 0;
  buf[n] = '\0';
  char *p = strrchr(buf, ')');
  if (p == NULL || p[1] == '\0')
    return 0;
  p += 2;
  if (*p == 'Z' || *p == 'X')
    return 0;
  /* fields after the command: state is field 3; start time is field 22 */
  for (int f = 3; f < 22 && p != NULL; f++) {
    p = strchr(p, ' ');
    if (p != NULL)
      p++;
  }
  return p ? strtoull(p, NULL, 10) : 0;
}

void mbsi_reap_locked(mbsi_machine *m) {
  long long now = mbsi_now_ms();
  for (int i = 0; i < MBSI_MAX_PROCS; i++) {
    mbsi_proc *p = &m->proc[i];
    if (p->pid == 0)
      continue;
    if (p->gone_ms == 0) {
      unsigned long long st = proc_start(p->pid);
      if (st != 0 && st == p->start)
        continue;
      p->gone_ms = now;
    }
    if (now - p->gone_ms >= m->release_ms)
      memset(p, 0, sizeof(*p));
  }
}

mbsi_proc *mbsi_proc_find_locked(mbsi_machine *m, int pid, int create) {
  mbsi_proc *free_slot = NULL;
  for (int i = 0; i < MBSI_MAX_PROCS; i++) {
    mbsi_proc *p = &m->proc[i];
    if (p->pid == pid && p->gone_ms == 0)
      return p;
    if (p->pid == 0 && free_slot == NULL)
      free_slot = p;
  }
  if (!create)
    return NULL;
  if (free_slot == NULL) {
    mbsi_reap_locked(m);
    for (int i = 0; i < MBSI_MAX_PROCS && free_slot == NULL; i++)
      if (m->proc[i].pid == 0)
        free_slot = &m->proc[i];
    if (free_slot == NULL)
      return NULL;
  }
  memset(free_slot, 0, sizeof(*free_slot));
  free_slot->pid = pid;
  free_slot->start = proc_start(pid);
  return free_slot;
}

uint64_t mbsi_used_locked(const mbsi_machine *m, int g) {
  uint64_t used = 0;
  for (int i = 0; i < MBSI_MAX_PROCS; i++)
    if (m->proc[i].pid != 0)
      used += m->proc[i].dev[g];
  return used;
}

/* ---- fault rules -------------------------------------------------------- */

int mbsi_rules_parse(mbsi_rules *rs, const char *spec) {
  memset(rs, 0, sizeof(*rs));
  if (spec == NULL)
    return 0;
  const char *p = spec;
  while (*p != '\0') {
    size_t n = strcspn(p, ",");
    char item[128];
    if (n == 0 || n >= sizeof(item) || rs->n == MBSI_MAX_RULES)
      return -1;
    memcpy(item, p, n);
    item[n] = '\0';
    p += n;
    if (*p == ',')
      p++;
    mbsi_rule *r = &rs->r[rs->n];
    memset(r, 0, sizeof(*r));
    char *save = NULL;
    char *what = strtok_r(item, ":", &save);
    char *nth = strtok_r(NULL, ":", &save);
    if (what == NULL || nth == NULL || strlen(what) >= sizeof(r->what) || !isdigit((unsigned char)nth[0]))
      return -1;
    snprintf(r->what, sizeof(r->what), "%s", what);
    char *end = NULL;
    r->nth = (unsigned)strtoul(nth, &end, 10);
    r->plus = *end == '+';
    for (char *t = strtok_r(NULL, ":", &save); t != NULL; t = strtok_r(NULL, ":", &save)) {
      if (strcmp(t, "async") == 0)
        r->async = 1;
      else if (isdigit((unsigned char)t[0]))
        r->code = atoi(t);
      else
        return -1;
    }
    if (r->nth == 0)
      return -1;
    rs->n++;
  }
  return 0;
}

/* 1 when word is one of the space-separated words of list. */
static int in_list(const char *list, const char *word) {
  size_t n = strlen(word);
  for (const char *p = list; p != NULL && *p != '\0';) {
    size_t k = strcspn(p, " ");
    if (k == n && strncmp(p, word, n) == 0)
      return 1;
    p += k;
    while (*p == ' ')
      p++;
  }
  return 0;
}

int mbsi_rules_hit(mbsi_rules *rs, const char *name, const char *cls, int def, int *async) {
  int code = 0;
  for (int i = 0; i < rs->n; i++) {
    mbsi_rule *r = &rs->r[i];
    if (strcmp(r->what, name) != 0 && !in_list(cls, r->what))
      continue;
    r->seen++;
    if (code == 0 && (r->seen == r->nth || (r->plus && r->seen > r->nth))) {
      code = r->code ? r->code : def;
      if (async)
        *async = r->async;
    }
  }
  return code;
}
