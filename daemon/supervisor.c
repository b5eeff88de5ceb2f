/*
 * supervisor.c - modelbufd's process supervisor (supervisor.h): the one
 * thread that forks every worker, reaps every child, reads every worker's
 * output and watches exits, ticks and memory; the state file; the cleanup
 * of what a killed daemon left.
 *
 * Threads: the supervisor thread runs loop(); callers post commands
 * (spawn, finish, stop) and wait for them on s->cv. Hooks run on the
 * supervisor thread with no lock held.
 *
 * Locks: s->mu guards the command queue, the runs list (only the
 * supervisor thread adds or removes runs, under s->mu; it reads the list
 * without it), each run's exited/code/sig/finished, and s->stopping.
 * Nothing else is locked here; callers' locks come before s->mu.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cgroup.h"
#include "logring.h"
#include "mb_internal.h"
#include "proctree.h"
#include "supervisor.h"

#define TICK_MS 100
#define SAMPLE_MS 1000
#define READS_PER_WAKE 16 /* pipe reads per run per wake-up: one chatty worker cannot starve the rest */
#define STATE_MAGIC "modelbufd-state 1"

enum { CMD_SPAWN = 1, CMD_FINISH, CMD_STOP };

struct mbd_run {
  mbd_sup *s;
  /* Set before it is started, then read-only. */
  pid_t pid;
  uint64_t start;       /* its first process's start time (clock ticks after boot) */
  uint64_t instance;
  char tag[80];         /* "MODELBUF_WORKER_ID=<prefix>-<instance>" */
  char cgroup[PATH_MAX];/* "" when none */
  char name[96];
  mbd_run_hooks hooks;
  /* Supervisor thread only. */
  int out_fd, pidfd;
  int out_open;         /* out_fd is in the epoll set */
  char line[MBD_LOG_LINE_MAX];
  size_t ll;
  /* Under s->mu. */
  int exited, code, sig;
  int finished;
  mbd_run *next;
};

typedef struct cmd {
  int type;
  /* CMD_SPAWN */
  const mbd_spawn *sp;
  char **envp;
  int cg_fd;
  /* CMD_SPAWN (the new run), CMD_FINISH */
  mbd_run *run;
  int done, rc;
  char err[256];
  struct cmd *next;
} cmd;

struct mbd_sup {
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t cv; /* a command done, a run exited */
  int epfd, evfd, sigfd;
  cmd *cmd_head, *cmd_tail;
  mbd_run *runs;
  uint64_t next_instance;
  char prefix[17]; /* random: this daemon's tag prefix */
  int subreaper;
  pid_t self;
  char cgbase[PATH_MAX];
  int cg_memory;
  int state_fd;
  char *state_path;
  char boot_id[64];
  uint64_t self_start;
  mbd_sup_log_fn log;
  void *log_arg;
  int stopping; /* under mu */
  mbd_proc_table table;
};

/* One supervisor per process; a child made by fork has none (its
 * supervisor thread stayed in the parent), so it may start its own. */
static atomic_int sup_exists;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void atfork_child(void) { atomic_store(&sup_exists, 0); }
static void atfork_register(void) { pthread_atfork(NULL, NULL, atfork_child); }

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
    ;
}

static void slog(mbd_sup *s, int level, const char *msg, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void slog(mbd_sup *s, int level, const char *msg, const char *fmt, ...) {
  if (s->log == NULL)
    return;
  char detail[1024] = "";
  if (fmt) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
  }
  s->log(s->log_arg, level, msg, detail);
}

static void wake(mbd_sup *s) {
  uint64_t one = 1;
  (void)!write(s->evfd, &one, sizeof(one));
}

/* ------------------------------------------------------------------------ */
/* The state file                                                            */

/* Rewrites the state file with the runs alive (supervisor thread, or before
 * it starts / after it stopped). */
static void state_write(mbd_sup *s) {
  if (s->state_fd < 0)
    return;
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  if (f == NULL)
    return;
  fprintf(f, "%s\nboot %s\ndaemon %d %" PRIu64 "\n", STATE_MAGIC, s->boot_id, (int)s->self,
          s->self_start);
  pthread_mutex_lock(&s->mu);
  for (mbd_run *r = s->runs; r; r = r->next)
    if (!r->finished)
      fprintf(f, "run %d %" PRIu64 " %" PRIu64 " %s %s %s\n", (int)r->pid, r->start,
              r->instance, r->tag + strlen(MBD_TAG_VAR) + 1, r->cgroup[0] ? r->cgroup : "-",
              r->name);
  pthread_mutex_unlock(&s->mu);
  fprintf(f, "end\n");
  if (fclose(f) != 0) {
    free(buf);
    return;
  }
  if (ftruncate(s->state_fd, 0) != 0 || pwrite(s->state_fd, buf, len, 0) != (ssize_t)len)
    slog(s, 2, "state file not written", "why=\"%s\"", strerror(errno));
  free(buf);
}

/* Whether s is a tag value this daemon writes: hex, '-', digits. */
static int valid_tag(const char *t) {
  size_t n = strlen(t);
  if (n < 3 || n > 40)
    return 0;
  for (const char *p = t; *p; p++)
    if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f') || *p == '-'))
      return 0;
  return strchr(t, '-') != NULL;
}

int mbd_state_parse(const char *text, size_t len, const char *boot_id, mbd_leftover **out,
                    size_t *n_out, int *prev_pid) {
  *out = NULL;
  *n_out = 0;
  if (prev_pid)
    *prev_pid = 0;
  mbd_leftover *lo = NULL;
  size_t n = 0, cap = 0;
  int same_boot = 0, first = 1;
  const char *p = text, *end = text + len;
  while (p < end) {
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    size_t ll = nl ? (size_t)(nl - p) : (size_t)(end - p);
    char line[PATH_MAX + 256];
    if (ll >= sizeof(line) || memchr(p, '\0', ll) != NULL) {
      if (first)
        break; /* not a state file */
      p += ll + 1;
      continue; /* a line no daemon writes */
    }
    memcpy(line, p, ll);
    line[ll] = '\0';
    p += ll + 1;
    if (first) {
      first = 0;
      if (strcmp(line, STATE_MAGIC) != 0)
        break;
      continue;
    }
    if (strncmp(line, "boot ", 5) == 0) {
      same_boot = boot_id != NULL && strcmp(line + 5, boot_id) == 0;
      continue;
    }
    if (strncmp(line, "daemon ", 7) == 0) {
      if (prev_pid)
        *prev_pid = atoi(line + 7);
      continue;
    }
    if (strncmp(line, "run ", 4) != 0)
      continue;
    int pid;
    unsigned long long start, inst;
    char tag[64], cg[PATH_MAX], name[96];
    if (sscanf(line + 4, "%d %llu %llu %63s %4095s %95s", &pid, &start, &inst, tag, cg, name) !=
            6 ||
        pid <= 1 || !valid_tag(tag))
      continue;
    if (n == cap) {
      size_t ncap = cap ? cap * 2 : 8;
      mbd_leftover *nlo = realloc(lo, ncap * sizeof(*nlo));
      if (nlo == NULL) {
        free(lo);
        return MB_ENOMEM;
      }
      lo = nlo;
      cap = ncap;
    }
    mbd_leftover *l = &lo[n++];
    memset(l, 0, sizeof(*l));
    l->pid = pid;
    l->start = start;
    snprintf(l->entry, sizeof(l->entry), "%s=%s", MBD_TAG_VAR, tag);
    snprintf(l->name, sizeof(l->name), "%s", name);
    /* Only a cgroup this daemon would have made for that run. */
    char want[128];
    snprintf(want, sizeof(want), "/mbd-%s-", tag);
    const char *slash = strrchr(cg, '/');
    if (cg[0] == '/' && slash && strncmp(slash, want, strlen(want)) == 0 &&
        strstr(cg, "/../") == NULL)
      snprintf(l->cgroup, sizeof(l->cgroup), "%s", cg);
  }
  if (!same_boot) { /* a reboot ended every process it knew */
    free(lo);
    return 0;
  }
  *out = lo;
  *n_out = n;
  return 0;
}

/*
 * Stops what the previous daemon (killed before it could stop its workers)
 * left: for each run of its state file, the cgroup it made, the group of a
 * first process still there with the same start time and tag, and every
 * process anywhere that carries the tag and started after it. A pid that
 * was reused has another start time and no tag: it is never touched.
 */
static void cleanup_previous(mbd_sup *s, const char *text, size_t len) {
  mbd_leftover *lo = NULL;
  size_t n = 0;
  int prev_pid = 0;
  if (mbd_state_parse(text, len, s->boot_id, &lo, &n, &prev_pid) != 0 || n == 0)
    return;
  size_t killed = 0;
  for (size_t i = 0; i < n; i++) {
    if (lo[i].cgroup[0] && !mbd_cgroup_is_v2(lo[i].cgroup))
      lo[i].cgroup[0] = '\0';
    if (lo[i].cgroup[0]) {
      killed += mbd_cgroup_signal(lo[i].cgroup, 0);
      mbd_cgroup_kill(lo[i].cgroup);
    }
    /* The first process, if it is still it (start time and tag): its group
     * (whose id is taken while it lives) first, then it. */
    mbd_proc p;
    if (mbd_proc_stat(lo[i].pid, &p) == 0 && p.start == lo[i].start && p.state != 'Z' &&
        mbd_proc_has_env(lo[i].pid, lo[i].entry) == 1) {
      if (p.pgrp == lo[i].pid)
        kill(-lo[i].pid, SIGKILL);
      (void)mbd_proc_signal(&p, lo[i].entry, SIGKILL);
      killed++;
    }
  }
  /* Whatever carries a tag, wherever it went; again until none is left. */
  for (int round = 0; round < 50; round++) {
    size_t hit = 0;
    if (mbd_proc_scan(&s->table) != 0)
      break;
    for (size_t i = 0; i < n; i++)
      hit += mbd_proc_signal_tagged(&s->table, lo[i].entry, lo[i].start, SIGKILL);
    killed += hit;
    if (hit == 0)
      break;
    sleep_ms(20);
  }
  for (size_t i = 0; i < n; i++)
    if (lo[i].cgroup[0])
      (void)mbd_cgroup_remove(lo[i].cgroup, 2000);
  char names[512] = "";
  size_t k = 0;
  for (size_t i = 0; i < n && k + 100 < sizeof(names); i++)
    k += (size_t)snprintf(names + k, sizeof(names) - k, "%s%s", i ? "," : "", lo[i].name);
  slog(s, killed > 0 ? 2 : 1, "stopped what the previous daemon left",
       "previous_pid=%d runs=%zu processes_killed=%zu models=%s", prev_pid, n, killed, names);
  free(lo);
}

/* Opens and locks the state file, cleans up after its previous owner and
 * writes this daemon's header. */
static int state_open(mbd_sup *s, const char *path, char *err, size_t err_len) {
  int fd = -1;
  /* A clean stop removes the file while it holds the lock: a file that is
   * no longer the one at path after the lock is taken is opened again. */
  for (int attempt = 0; fd < 0 && attempt < 5; attempt++) {
    fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
      mb__set_err(err, err_len, "state file %s: %s", path, strerror(errno));
      return MB_EIO;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
      mb__set_err(err, err_len,
                  "state file %s is held by another running modelbufd (set state_file to "
                  "another path, or stop that daemon)",
                  path);
      close(fd);
      return MB_EBUSY;
    }
    struct stat a, b;
    if (fstat(fd, &a) != 0 || stat(path, &b) != 0 || a.st_dev != b.st_dev || a.st_ino != b.st_ino) {
      close(fd);
      fd = -1;
    }
  }
  if (fd < 0) {
    mb__set_err(err, err_len, "state file %s keeps changing", path);
    return MB_EIO;
  }
  s->state_path = strdup(path);
  struct stat st;
  int trusted = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == geteuid() &&
                (st.st_mode & 022) == 0;
  if (!trusted) {
    slog(s, 2, "state file not trusted: not the daemon's own, or writable by others; ignored",
         "file=\"%s\"", path);
  } else if (st.st_size > 0 && st.st_size < (1 << 20)) {
    char *text = malloc((size_t)st.st_size + 1);
    if (text != NULL) {
      ssize_t got = pread(fd, text, (size_t)st.st_size, 0);
      if (got > 0)
        cleanup_previous(s, text, (size_t)got);
      free(text);
    }
  }
  s->state_fd = fd;
  state_write(s);
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Output, exits, reaping (supervisor thread)                                */

static void emit_line(mbd_run *r) {
  if (r->ll == 0)
    return;
  if (r->hooks.on_line)
    r->hooks.on_line(r->hooks.arg, r->line, r->ll);
  r->ll = 0;
}

static void out_close(mbd_sup *s, mbd_run *r) {
  if (!r->out_open)
    return;
  epoll_ctl(s->epfd, EPOLL_CTL_DEL, r->out_fd, NULL);
  r->out_open = 0;
}

/* Reads what the run printed (at most max reads), line by line. */
static void read_output(mbd_sup *s, mbd_run *r, int max) {
  char buf[4096];
  for (int k = 0; r->out_open && (max < 0 || k < max); k++) {
    ssize_t n = read(r->out_fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
      return;
    if (n <= 0) {
      emit_line(r); /* a last line without its newline */
      out_close(s, r);
      return;
    }
    for (ssize_t i = 0; i < n; i++) {
      if (buf[i] == '\n') {
        emit_line(r);
        continue;
      }
      r->line[r->ll++] = buf[i];
      if (r->ll == sizeof(r->line))
        emit_line(r);
    }
  }
}

/* Reaps a run's first process (once its tree is dealt with). */
static void reap_leader(mbd_run *r) {
  siginfo_t si;
  memset(&si, 0, sizeof(si));
  (void)waitid(P_PID, (id_t)r->pid, &si, WEXITED | WNOHANG);
}

static void run_unlink_free(mbd_sup *s, mbd_run *r) {
  pthread_mutex_lock(&s->mu);
  mbd_run **pp = &s->runs;
  while (*pp && *pp != r)
    pp = &(*pp)->next;
  if (*pp)
    *pp = r->next;
  pthread_mutex_unlock(&s->mu);
  out_close(s, r);
  if (r->out_fd >= 0)
    close(r->out_fd);
  if (r->pidfd >= 0) {
    epoll_ctl(s->epfd, EPOLL_CTL_DEL, r->pidfd, NULL);
    close(r->pidfd);
  }
  free(r);
}

/*
 * A run's first process exited (seen with WNOWAIT: it stays a zombie). It
 * is reaped only when the run is finished: until then its pid and its
 * process group id cannot be given to another process, so every signal to
 * them reaches this run and nothing else.
 */
static void run_exited(mbd_sup *s, mbd_run *r, const siginfo_t *si) {
  int code = 0, sig = 0;
  if (si->si_code == CLD_EXITED)
    code = si->si_status;
  else
    sig = si->si_status;
  if (r->pidfd >= 0) { /* readable from now on: out of the set */
    epoll_ctl(s->epfd, EPOLL_CTL_DEL, r->pidfd, NULL);
    close(r->pidfd);
    r->pidfd = -1;
  }
  pthread_mutex_lock(&s->mu);
  int finished = r->finished;
  pthread_mutex_unlock(&s->mu);
  if (!finished) {
    /* What it printed before it went comes first. */
    read_output(s, r, 64);
    if (r->ll > 0)
      emit_line(r);
  }
  pthread_mutex_lock(&s->mu);
  r->exited = 1;
  r->code = code;
  r->sig = sig;
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
  if (finished) {
    reap_leader(r);
    run_unlink_free(s, r);
  } else if (r->hooks.on_exit) {
    r->hooks.on_exit(r->hooks.arg, code, sig);
  }
}

/*
 * The one reaper. A run's first process is watched without being reaped
 * (above); in a subreaper, every other child (an orphan a worker left,
 * reparented here) is reaped as soon as it is a zombie. orphans: look for
 * those now (after a SIGCHLD, or once a second).
 */
static void reap(mbd_sup *s, int orphans) {
  for (mbd_run *r = s->runs, *next; r; r = next) {
    next = r->next;
    if (r->exited)
      continue;
    siginfo_t si;
    memset(&si, 0, sizeof(si));
    if (waitid(P_PID, (id_t)r->pid, &si, WEXITED | WNOHANG | WNOWAIT) == 0 && si.si_pid == r->pid)
      run_exited(s, r, &si);
  }
  if (!s->subreaper || !orphans || mbd_proc_scan(&s->table) != 0)
    return;
  for (size_t i = 0; i < s->table.n; i++) {
    const mbd_proc *p = &s->table.p[i];
    if (p->ppid != s->self || p->state != 'Z')
      continue;
    int leader = 0;
    for (mbd_run *r = s->runs; r && !leader; r = r->next)
      leader = r->pid == p->pid;
    if (!leader) {
      siginfo_t si;
      memset(&si, 0, sizeof(si));
      (void)waitid(P_PID, (id_t)p->pid, &si, WEXITED | WNOHANG);
    }
  }
}

/* ------------------------------------------------------------------------ */
/* Spawning (supervisor thread)                                              */

/* The child, between fork and exec: async-signal-safe calls only. */
static void child(const cmd *c, int out_w, pid_t parent) {
  setpgid(0, 0);
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != parent) /* the daemon died before the line above */
    _exit(127);
  if (c->cg_fd >= 0) {
    if (write(c->cg_fd, "0", 1) != 1) {
      static const char m[] = "modelbufd: cannot join the worker's cgroup\n";
      (void)!write(out_w, m, sizeof(m) - 1);
      _exit(126);
    }
  }
  int devnull = open("/dev/null", O_RDONLY);
  if (devnull < 0 || dup2(devnull, 0) < 0 || dup2(out_w, 1) < 0 || dup2(out_w, 2) < 0)
    _exit(126);
  /* Nothing of the daemon's leaks into the worker: no listening socket,
   * no connection, no state file lock. */
#ifdef SYS_close_range
  if (syscall(SYS_close_range, 3, ~0U, 0) != 0)
#endif
  {
    for (int fd = 3; fd < 1024; fd++)
      close(fd);
  }
  if (c->sp->cwd && chdir(c->sp->cwd) != 0) {
    static const char m[] = "modelbufd: cannot enter the worker's cwd\n";
    (void)!write(2, m, sizeof(m) - 1);
    _exit(127);
  }
  /* Signals as a fresh process has them: none blocked, none ignored. */
  struct sigaction dfl;
  memset(&dfl, 0, sizeof(dfl));
  dfl.sa_handler = SIG_DFL;
  for (int sig = 1; sig < NSIG; sig++)
    if (sig != SIGKILL && sig != SIGSTOP)
      sigaction(sig, &dfl, NULL);
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL);
  execvpe(c->sp->argv[0], c->sp->argv, c->envp);
  static const char m[] = "modelbufd: cannot run the worker's command: ";
  (void)!write(2, m, sizeof(m) - 1);
  const char *e = strerror(errno);
  (void)!write(2, e, strlen(e));
  (void)!write(2, "\n", 1);
  _exit(127);
}

static int pidfd_of(pid_t pid) {
#ifdef SYS_pidfd_open
  long fd = syscall(SYS_pidfd_open, pid, 0);
  return fd < 0 ? -1 : (int)fd;
#else
  (void)pid;
  return -1;
#endif
}

static void do_spawn(mbd_sup *s, cmd *c) {
  mbd_run *r = c->run;
  int pfd[2];
  if (pipe2(pfd, O_CLOEXEC) != 0) {
    c->rc = MB_EIO;
    snprintf(c->err, sizeof(c->err), "cannot prepare the worker: %s", strerror(errno));
    return;
  }
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid == 0)
    child(c, pfd[1], parent);
  int fork_errno = errno;
  close(pfd[1]);
  if (pid < 0) {
    close(pfd[0]);
    c->rc = MB_EIO;
    snprintf(c->err, sizeof(c->err), "cannot start the worker: %s", strerror(fork_errno));
    return;
  }
  setpgid(pid, pid); /* also from here: no race with a kill of the group */
  fcntl(pfd[0], F_SETFL, fcntl(pfd[0], F_GETFL) | O_NONBLOCK);
  r->pid = pid;
  r->out_fd = pfd[0];
  r->pidfd = pidfd_of(pid);
  mbd_proc p;
  if (mbd_proc_stat(pid, &p) == 0) /* a zombie still has its stat */
    r->start = p.start;
  struct epoll_event ev;
  memset(&ev, 0, sizeof(ev));
  ev.events = EPOLLIN;
  ev.data.u64 = (uint64_t)(uintptr_t)r | 1u;
  r->out_open = epoll_ctl(s->epfd, EPOLL_CTL_ADD, r->out_fd, &ev) == 0;
  if (r->pidfd >= 0) {
    ev.data.u64 = (uint64_t)(uintptr_t)r | 2u;
    if (epoll_ctl(s->epfd, EPOLL_CTL_ADD, r->pidfd, &ev) != 0) {
      close(r->pidfd);
      r->pidfd = -1;
    }
  }
  pthread_mutex_lock(&s->mu);
  r->next = s->runs;
  s->runs = r;
  pthread_mutex_unlock(&s->mu);
  state_write(s);
  c->rc = 0;
}

static void do_finish(mbd_sup *s, mbd_run *r) {
  read_output(s, r, 64); /* what is there now; no wait for the pipe's end */
  if (r->ll > 0)
    emit_line(r);
  out_close(s, r);
  pthread_mutex_lock(&s->mu);
  r->finished = 1;
  int exited = r->exited;
  pthread_mutex_unlock(&s->mu);
  state_write(s);
  if (exited) {
    reap_leader(r);
    run_unlink_free(s, r);
  }
  /* else reaped and freed when it exits */
}

/* ------------------------------------------------------------------------ */
/* The loop                                                                  */

static void sample_runs(mbd_sup *s) {
  int need = 0;
  for (mbd_run *r = s->runs; r && !need; r = r->next)
    need = !r->finished && !r->exited && r->hooks.on_sample;
  if (!need || mbd_proc_scan(&s->table) != 0)
    return;
  unsigned char *member = malloc(s->table.n ? s->table.n : 1);
  if (member == NULL)
    return;
  pid_t adopter = s->subreaper ? s->self : 0;
  for (mbd_run *r = s->runs; r; r = r->next) {
    if (r->finished || r->exited || r->hooks.on_sample == NULL)
      continue;
    uint64_t bytes = 0;
    if (r->cgroup[0] && s->cg_memory) {
      bytes = mbd_cgroup_memory(r->cgroup);
    } else {
      mbd_proc_tree(&s->table, r->pid, adopter, r->tag, r->start, member);
      for (size_t i = 0; i < s->table.n; i++)
        if (member[i])
          bytes += s->table.p[i].rss_bytes;
    }
    r->hooks.on_sample(r->hooks.arg, bytes);
  }
  free(member);
}

static void kill_all_runs(mbd_sup *s) {
  for (mbd_run *r = s->runs; r; r = r->next) {
    pthread_mutex_lock(&s->mu);
    int live = !r->exited || !r->finished;
    r->finished = 1;
    pthread_mutex_unlock(&s->mu);
    if (live)
      mbd_run_kill(r);
  }
}

static void *loop(void *arg) {
  mbd_sup *s = arg;
  sigset_t chld;
  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  pthread_sigmask(SIG_BLOCK, &chld, NULL);
  uint64_t next_tick = now_ms() + TICK_MS, next_sample = now_ms() + SAMPLE_MS;
  uint64_t stop_deadline = 0, next_orphans = now_ms() + SAMPLE_MS;
  for (;;) {
    int orphans = 0;
    uint64_t now = now_ms();
    uint64_t due = next_tick < next_sample ? next_tick : next_sample;
    int timeout = due > now ? (int)(due - now) : 0;
    struct epoll_event evs[32];
    int n = epoll_wait(s->epfd, evs, 32, timeout);
    for (int i = 0; i < n; i++) {
      uint64_t d = evs[i].data.u64;
      if (d == 0) {
        uint64_t v;
        (void)!read(s->evfd, &v, sizeof(v));
      } else if (d == 1) {
        struct signalfd_siginfo si[8];
        (void)!read(s->sigfd, si, sizeof(si));
        orphans = 1;
      } else if ((d & 3u) == 1u) {
        mbd_run *r = (mbd_run *)(uintptr_t)(d & ~(uint64_t)3u);
        read_output(s, r, READS_PER_WAKE);
      }
      /* (d & 3) == 2: a pidfd: its process exited; reap() below sees it */
    }
    if (now_ms() >= next_orphans) {
      orphans = 1;
      next_orphans = now_ms() + SAMPLE_MS;
    }
    reap(s, orphans);
    /* Commands. */
    pthread_mutex_lock(&s->mu);
    cmd *c = s->cmd_head;
    s->cmd_head = s->cmd_tail = NULL;
    pthread_mutex_unlock(&s->mu);
    while (c) {
      cmd *next = c->next;
      if (c->type == CMD_SPAWN)
        do_spawn(s, c);
      else if (c->type == CMD_FINISH)
        do_finish(s, c->run);
      else if (c->type == CMD_STOP && stop_deadline == 0) {
        kill_all_runs(s);
        stop_deadline = now_ms() + 5000;
      }
      pthread_mutex_lock(&s->mu);
      c->done = 1;
      pthread_cond_broadcast(&s->cv);
      pthread_mutex_unlock(&s->mu);
      c = next;
    }
    now = now_ms();
    if (now >= next_tick) {
      next_tick = now + TICK_MS;
      for (mbd_run *r = s->runs; r; r = r->next)
        if (!r->finished && !r->exited && r->hooks.on_tick)
          r->hooks.on_tick(r->hooks.arg);
    }
    if (now >= next_sample) {
      next_sample = now + SAMPLE_MS;
      sample_runs(s);
    }
    if (stop_deadline) {
      reap(s, 1);
      int left = 0;
      for (mbd_run *r = s->runs; r; r = r->next)
        left += !r->exited;
      if (left == 0 || now_ms() >= stop_deadline)
        break;
      sleep_ms(5);
    }
  }
  /* Runs whose first process never ended (stuck in the kernel) are left to
   * the process's end; the others are reaped. */
  while (s->runs) {
    mbd_run *r = s->runs;
    s->runs = r->next;
    if (r->exited)
      reap_leader(r);
    if (r->out_fd >= 0)
      close(r->out_fd);
    if (r->pidfd >= 0)
      close(r->pidfd);
    free(r);
  }
  return NULL;
}

/* ------------------------------------------------------------------------ */
/* Public                                                                    */

static int post_wait(mbd_sup *s, cmd *c) {
  pthread_mutex_lock(&s->mu);
  if (s->stopping && c->type != CMD_STOP) {
    pthread_mutex_unlock(&s->mu);
    return MB_ESHUTDOWN;
  }
  if (c->type == CMD_STOP)
    s->stopping = 1;
  c->next = NULL;
  if (s->cmd_tail)
    s->cmd_tail->next = c;
  else
    s->cmd_head = c;
  s->cmd_tail = c;
  wake(s);
  while (!c->done)
    pthread_cond_wait(&s->cv, &s->mu);
  pthread_mutex_unlock(&s->mu);
  return 0;
}

int mbd_sup_start(const mbd_sup_opts *o, mbd_sup **out, char *err, size_t err_len) {
  pthread_once(&atfork_once, atfork_register);
  int expected = 0;
  if (!atomic_compare_exchange_strong(&sup_exists, &expected, 1)) {
    mb__set_err(err, err_len, "a process supervisor runs already in this process");
    return MB_EBUSY;
  }
  mbd_sup *s = calloc(1, sizeof(*s));
  if (s == NULL) {
    atomic_store(&sup_exists, 0);
    return MB_ENOMEM;
  }
  int rc = MB_EIO;
  s->epfd = s->evfd = s->sigfd = s->state_fd = -1;
  s->self = getpid();
  s->subreaper = o->subreaper;
  s->log = o->log;
  s->log_arg = o->log_arg;
  pthread_mutex_init(&s->mu, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&s->cv, &ca);
  pthread_condattr_destroy(&ca);
  unsigned char rnd[8];
  if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd)) {
    uint64_t x = now_ms() ^ ((uint64_t)s->self << 32);
    memcpy(rnd, &x, sizeof(rnd));
  }
  for (int i = 0; i < 8; i++)
    snprintf(s->prefix + 2 * i, 3, "%02x", rnd[i]);
  if (mbd_proc_boot_id(s->boot_id, sizeof(s->boot_id)) != 0)
    snprintf(s->boot_id, sizeof(s->boot_id), "unknown");
  mbd_proc me;
  if (mbd_proc_stat(s->self, &me) == 0)
    s->self_start = me.start;

  if (o->state_file != NULL) {
    rc = state_open(s, o->state_file, err, err_len);
    if (rc != 0)
      goto fail;
  }
  char why[512];
  int cgrc = mbd_cgroup_setup(o->cgroup, s->cgbase, sizeof(s->cgbase), &s->cg_memory, why,
                              sizeof(why));
  if (cgrc == MB_EINVAL) {
    mb__set_err(err, err_len, "%s", why);
    rc = MB_EINVAL;
    goto fail;
  }
  if (cgrc == 0)
    slog(s, 1, "workers get their own cgroups", "base=\"%s\" memory=%s", s->cgbase,
         s->cg_memory ? "memory.current" : "rss");
  else if (o->cgroup && strcmp(o->cgroup, "off") != 0)
    slog(s, 0, "no worker cgroups: process groups and the subreaper", "why=\"%s\"", why);
  if (s->subreaper && prctl(PR_SET_CHILD_SUBREAPER, 1) != 0) {
    slog(s, 2, "cannot become a child subreaper", "why=\"%s\"", strerror(errno));
    s->subreaper = 0;
  }
  rc = MB_EIO;
  s->epfd = epoll_create1(EPOLL_CLOEXEC);
  s->evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (s->epfd < 0 || s->evfd < 0) {
    mb__set_err(err, err_len, "cannot start the supervisor: %s", strerror(errno));
    goto fail;
  }
  struct epoll_event ev;
  memset(&ev, 0, sizeof(ev));
  ev.events = EPOLLIN;
  ev.data.u64 = 0;
  epoll_ctl(s->epfd, EPOLL_CTL_ADD, s->evfd, &ev);
  if (s->subreaper) {
    /* SIGCHLD tells of orphans' ends at once (the daemon blocks it in every
     * thread); without it they are reaped at the next tick. */
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    s->sigfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
    if (s->sigfd >= 0) {
      ev.data.u64 = 1;
      epoll_ctl(s->epfd, EPOLL_CTL_ADD, s->sigfd, &ev);
    }
  }
  if (pthread_create(&s->thread, NULL, loop, s) != 0) {
    mb__set_err(err, err_len, "cannot start the supervisor thread");
    rc = MB_ENOMEM;
    goto fail;
  }
  *out = s;
  return 0;
fail:
  if (s->sigfd >= 0)
    close(s->sigfd);
  if (s->evfd >= 0)
    close(s->evfd);
  if (s->epfd >= 0)
    close(s->epfd);
  if (s->state_fd >= 0)
    close(s->state_fd);
  free(s->state_path);
  mbd_proc_table_free(&s->table);
  pthread_cond_destroy(&s->cv);
  pthread_mutex_destroy(&s->mu);
  free(s);
  atomic_store(&sup_exists, 0);
  return rc;
}

void mbd_sup_stop(mbd_sup *s) {
  if (s == NULL)
    return;
  cmd c;
  memset(&c, 0, sizeof(c));
  c.type = CMD_STOP;
  (void)post_wait(s, &c);
  pthread_join(s->thread, NULL);
  if (s->state_fd >= 0) {
    /* Nothing left to clean up next time: the file goes (under its lock). */
    if (s->state_path == NULL || unlink(s->state_path) != 0)
      state_write(s);
    close(s->state_fd);
  }
  free(s->state_path);
  close(s->epfd);
  close(s->evfd);
  if (s->sigfd >= 0)
    close(s->sigfd);
  mbd_proc_table_free(&s->table);
  pthread_cond_destroy(&s->cv);
  pthread_mutex_destroy(&s->mu);
  free(s);
  atomic_store(&sup_exists, 0);
}

const char *mbd_sup_cgroup_base(const mbd_sup *s) { return s->cgbase; }

int mbd_sup_spawn(mbd_sup *s, const mbd_spawn *sp, mbd_run **out, char *err, size_t err_len) {
  mbd_run *r = calloc(1, sizeof(*r));
  size_t n = 0;
  while (sp->envp && sp->envp[n])
    n++;
  char **envp = calloc(n + 2, sizeof(char *));
  if (r == NULL || envp == NULL) {
    free(r);
    free(envp);
    mb__set_err(err, err_len, "out of memory");
    return MB_ENOMEM;
  }
  r->s = s;
  r->out_fd = r->pidfd = -1;
  r->hooks = sp->hooks;
  snprintf(r->name, sizeof(r->name), "%s", sp->name ? sp->name : "worker");
  pthread_mutex_lock(&s->mu);
  r->instance = ++s->next_instance;
  pthread_mutex_unlock(&s->mu);
  snprintf(r->tag, sizeof(r->tag), "%s=%s-%" PRIu64, MBD_TAG_VAR, s->prefix, r->instance);
  /* The tag replaces one the daemon itself may have inherited. */
  size_t k = 0;
  for (size_t i = 0; i < n; i++)
    if (strncmp(sp->envp[i], MBD_TAG_VAR "=", strlen(MBD_TAG_VAR) + 1) != 0)
      envp[k++] = sp->envp[i];
  envp[k++] = r->tag;
  envp[k] = NULL;
  cmd c;
  memset(&c, 0, sizeof(c));
  c.type = CMD_SPAWN;
  c.sp = sp;
  c.envp = envp;
  c.cg_fd = -1;
  c.run = r;
  if (s->cgbase[0]) {
    char name[160], why[256];
    snprintf(name, sizeof(name), "mbd-%s-%" PRIu64 "-%s", s->prefix, r->instance, r->name);
    for (char *p = name; *p; p++) /* a model called "org/name": one folder, not two */
      if (*p == '/')
        *p = '_';
    if (mbd_cgroup_create(s->cgbase, name, r->cgroup, sizeof(r->cgroup), why, sizeof(why)) != 0 ||
        (c.cg_fd = mbd_cgroup_open_procs(r->cgroup)) < 0) {
      mb__set_err(err, err_len, "%s", why[0] ? why : "cannot open the worker's cgroup");
      if (r->cgroup[0])
        (void)mbd_cgroup_remove(r->cgroup, 0);
      free(envp);
      free(r);
      return MB_EIO;
    }
  }
  int rc = post_wait(s, &c);
  if (c.cg_fd >= 0)
    close(c.cg_fd);
  free(envp);
  if (rc == 0)
    rc = c.rc;
  if (rc != 0) {
    mb__set_err(err, err_len, "%s", c.err[0] ? c.err : mb_strerror(rc));
    if (r->cgroup[0])
      (void)mbd_cgroup_remove(r->cgroup, 0);
    free(r);
    return rc;
  }
  *out = r;
  return 0;
}

pid_t mbd_run_pid(const mbd_run *r) { return r->pid; }
uint64_t mbd_run_instance(const mbd_run *r) { return r->instance; }

void mbd_run_signal(mbd_run *r, int sig, int tree) {
  kill(-r->pid, sig);
  if (r->cgroup[0])
    mbd_cgroup_signal(r->cgroup, sig);
  if (!tree)
    return;
  mbd_proc_table t = {0};
  if (mbd_proc_scan(&t) == 0 && t.n > 0) {
    unsigned char *member = malloc(t.n);
    if (member) {
      mbd_proc_tree(&t, r->pid, r->s->subreaper ? r->s->self : 0, r->tag, r->start, member);
      for (size_t i = 0; i < t.n; i++)
        if (member[i] && t.p[i].pgrp != r->pid && t.p[i].state != 'Z' && t.p[i].pid != r->s->self)
          (void)mbd_proc_signal(&t.p[i], NULL, sig);
      free(member);
    }
  }
  mbd_proc_table_free(&t);
}

void mbd_run_kill(mbd_run *r) {
  mbd_sup *s = r->s;
  kill(-r->pid, SIGKILL);
  if (r->cgroup[0])
    mbd_cgroup_kill(r->cgroup);
  /* The tree and everything that carries the tag, again until nothing is
   * left to signal (a fork in flight may add one more). */
  mbd_proc_table t = {0};
  unsigned char *member = NULL;
  for (int round = 0; round < 40; round++) {
    if (mbd_proc_scan(&t) != 0)
      break;
    unsigned char *m = realloc(member, t.n ? t.n : 1);
    if (m == NULL)
      break;
    member = m;
    size_t hit = 0;
    mbd_proc_tree(&t, r->pid, s->subreaper ? s->self : 0, r->tag, r->start, member);
    for (size_t i = 0; i < t.n; i++)
      if (member[i] && t.p[i].state != 'Z' && t.p[i].pid != s->self &&
          mbd_proc_signal(&t.p[i], NULL, SIGKILL))
        hit++;
    hit += mbd_proc_signal_tagged(&t, r->tag, r->start, SIGKILL);
    if (r->cgroup[0] && mbd_cgroup_populated(r->cgroup) == 1) {
      mbd_cgroup_kill(r->cgroup);
      hit++;
    }
    if (hit == 0)
      break;
    sleep_ms(round < 5 ? 2 : 10);
  }
  free(member);
  mbd_proc_table_free(&t);
}

int mbd_run_wait(mbd_run *r, int64_t ms, int *code, int *sig) {
  mbd_sup *s = r->s;
  struct timespec until;
  clock_gettime(CLOCK_MONOTONIC, &until);
  if (ms > 0) {
    until.tv_sec += ms / 1000;
    until.tv_nsec += (ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
      until.tv_sec++;
      until.tv_nsec -= 1000000000L;
    }
  }
  pthread_mutex_lock(&s->mu);
  while (!r->exited && ms != 0) {
    if (ms < 0)
      pthread_cond_wait(&s->cv, &s->mu);
    else if (pthread_cond_timedwait(&s->cv, &s->mu, &until) == ETIMEDOUT)
      break;
  }
  int done = r->exited;
  if (done) {
    if (code)
      *code = r->code;
    if (sig)
      *sig = r->sig;
  }
  pthread_mutex_unlock(&s->mu);
  return done;
}

uint64_t mbd_run_tree_bytes(mbd_run *r, int *pids, size_t max, size_t *n) {
  mbd_sup *s = r->s;
  if (n)
    *n = 0;
  mbd_proc_table t = {0};
  uint64_t bytes = 0;
  if (mbd_proc_scan(&t) == 0 && t.n > 0) {
    unsigned char *member = malloc(t.n);
    if (member) {
      mbd_proc_tree(&t, r->pid, s->subreaper ? s->self : 0, r->tag, r->start, member);
      size_t k = 0;
      for (size_t i = 0; i < t.n; i++) {
        if (!member[i] || t.p[i].state == 'Z')
          continue;
        bytes += t.p[i].rss_bytes;
        if (pids && k < max)
          pids[k++] = t.p[i].pid;
      }
      if (n)
        *n = k;
      free(member);
    }
  }
  mbd_proc_table_free(&t);
  if (r->cgroup[0] && s->cg_memory) {
    uint64_t cg = mbd_cgroup_memory(r->cgroup);
    if (cg > 0)
      bytes = cg;
  }
  return bytes;
}

void mbd_run_finish(mbd_run *r) {
  mbd_sup *s = r->s;
  char cg[PATH_MAX];
  snprintf(cg, sizeof(cg), "%s", r->cgroup);
  mbd_run_kill(r);
  cmd c;
  memset(&c, 0, sizeof(c));
  c.type = CMD_FINISH;
  c.run = r;
  /* Refused only while the supervisor stops: the stop kills and frees it. */
  (void)post_wait(s, &c);
  if (cg[0] && mbd_cgroup_remove(cg, 2000) != 0)
    slog(s, 2, "worker cgroup not removed", "cgroup=\"%s\" why=\"%s\"", cg, strerror(errno));
}
