/*
 * supervisor.h - the process supervisor of modelbufd: one long-lived
 * thread that starts every worker process, reaps every child, reads every
 * worker's output and sees a worker's exit the moment it happens.
 *
 * Why one thread:
 *   - PR_SET_PDEATHSIG follows the parent *thread*: a worker forked from a
 *     request or loader thread is killed when that thread exits. Workers are
 *     forked here, from a thread that lives as long as the daemon, with
 *     PDEATHSIG = SIGKILL, so a daemon killed by SIGKILL takes its workers
 *     with it.
 *   - The daemon is a child subreaper (PR_SET_CHILD_SUBREAPER): processes a
 *     worker started and left behind (`setsid cmd &`) are reparented to it
 *     instead of init. They must be reaped, and by one reaper only: this
 *     thread reaps every child of the process; nothing else calls waitpid.
 *   - One event loop (epoll) watches every worker's exit (a pidfd per
 *     worker, and SIGCHLD through a signalfd), every worker's output pipe
 *     (so no reader thread waits on a pipe that a grandchild holds open),
 *     and the timers of the busy watchdog and memory sampling.
 *
 * A run is one started process and everything it starts: its process
 * group, its descendants, the orphans it left (found by the environment
 * tag MODELBUF_WORKER_ID, proctree.h), and its cgroup when the daemon has a
 * writable cgroup v2 tree (cgroup.h). Killing a run kills all of that.
 *
 * The state file lists the runs alive (pids, groups, start times, tags,
 * cgroups). After the daemon was killed with SIGKILL, its next start reads
 * it and stops what the previous run left before it serves; a process is
 * killed only if its start time matches and it carries the recorded tag, so
 * a reused pid is never killed. The file is locked (flock) while a daemon
 * uses it: two daemons never share one.
 *
 * Threads and locks: s->mu guards the command queue, the run list's
 * membership as other threads see it, and every run's exit status. Hooks
 * are called on the supervisor thread with no supervisor lock held; a hook
 * may call mbd_run_signal/kill/tree_bytes but not the blocking
 * mbd_sup_spawn or mbd_run_finish. Lock order: a caller's own lock ->
 * s->mu; never the other way.
 */
#ifndef MBD_SUPERVISOR_H
#define MBD_SUPERVISOR_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "modelbuf/modelbuf.h"

typedef struct mbd_sup mbd_sup;
typedef struct mbd_run mbd_run;

/* A line for the daemon's log: level as mbd_log_level (0 debug .. 3
 * error), msg, then logfmt key=value pairs (may be ""). */
typedef void (*mbd_sup_log_fn)(void *arg, int level, const char *msg, const char *detail);

typedef struct mbd_sup_opts {
  int subreaper;          /* 1: become a child subreaper and reap every child */
  const char *state_file; /* runs kept here for the next start; NULL: none */
  const char *cgroup;     /* NULL or "off", "auto", or a cgroup v2 folder (cgroup.h) */
  mbd_sup_log_fn log;     /* optional */
  void *log_arg;
} mbd_sup_opts;

/*
 * Starts the supervisor: takes the state file (refusing one that another
 * running daemon holds), stops what a previous daemon left in it, sets up
 * cgroups, becomes a subreaper, and starts the thread. One per process.
 * Errors: MB_EBUSY (state file in use, or a supervisor exists), MB_EINVAL
 * (a configured cgroup folder that cannot be used), MB_EIO, MB_ENOMEM;
 * message in err.
 */
int mbd_sup_start(const mbd_sup_opts *o, mbd_sup **out, char *err, size_t err_len) MB_WUR;

/* Kills every run still alive, reaps, stops the thread, releases the state
 * file (emptied) and frees s. NULL is a no-op. */
void mbd_sup_stop(mbd_sup *s);

/* Whether worker cgroups are in use, and where ("" when not). */
const char *mbd_sup_cgroup_base(const mbd_sup *s);

/* What happens to a run, told on the supervisor thread. */
typedef struct mbd_run_hooks {
  /* A line the run printed (stdout and stderr, without its newline). */
  void (*on_line)(void *arg, const char *line, size_t len);
  /* Its first process was reaped: exit code, or the signal that killed it
   * (sig > 0). Its output up to then was read first. */
  void (*on_exit)(void *arg, int code, int sig);
  /* Every ~100 ms while it lives. */
  void (*on_tick)(void *arg);
  /* Every ~1 s while it lives: the bytes its tree holds (memory.current of
   * its cgroup when there is one, else the RSS of its processes). */
  void (*on_sample)(void *arg, uint64_t tree_bytes);
  void *arg;
} mbd_run_hooks;

typedef struct mbd_spawn {
  char *const *argv;      /* argv[0] looked up in PATH */
  char *const *envp;      /* the tag is added to it */
  const char *cwd;        /* NULL: the daemon's */
  const char *name;       /* the model's name (cgroup names, state file, logs) */
  mbd_run_hooks hooks;
} mbd_spawn;

/*
 * Starts a run: the supervisor thread forks it (own process group,
 * PDEATHSIG SIGKILL, its cgroup when there are, stdin /dev/null, stdout and
 * stderr to a pipe the supervisor reads, every other file descriptor
 * closed, signals as at a fresh start) and execs argv. Returns once it is
 * forked: *out is the run (valid until mbd_run_finish). A command that
 * cannot be executed shows as an exit with code 127 and a line saying why.
 * Errors: MB_ESHUTDOWN, MB_EIO (fork, pipe, cgroup), MB_ENOMEM.
 */
int mbd_sup_spawn(mbd_sup *s, const mbd_spawn *sp, mbd_run **out, char *err,
                  size_t err_len) MB_WUR;

/* Its first process (the group's leader) and its number (1, 2, ... over the
 * daemon's life; never reused). Thread-safe. */
pid_t mbd_run_pid(const mbd_run *r);
uint64_t mbd_run_instance(const mbd_run *r);

/* Sends sig to its process group, to every process of its cgroup, and
 * (tree) to the rest of its tree: descendants and adopted orphans.
 * Non-blocking apart from a /proc scan when tree is set. Thread-safe. */
void mbd_run_signal(mbd_run *r, int sig, int tree);

/* Kills everything of the run with SIGKILL: its group, cgroup, tree and
 * every process that carries its tag, again until none is left (bounded:
 * a process stuck in the kernel may outlive it). Thread-safe. */
void mbd_run_kill(mbd_run *r);

/* Waits up to ms (-1: no bound) for its first process to be reaped: 1 with
 * its exit code or signal, 0 on timeout. Thread-safe. */
int mbd_run_wait(mbd_run *r, int64_t ms, int *code, int *sig);

/* The bytes its tree holds now (see on_sample), and its pids (at most max;
 * their number in *n) for per-process device memory. Thread-safe. */
uint64_t mbd_run_tree_bytes(mbd_run *r, int *pids, size_t max, size_t *n);

/*
 * Ends a run: kills what is left of it, reads what remains of its output,
 * closes its pipe without waiting for it to end (a grandchild may hold it),
 * removes its cgroup and its line of the state file. No hook of it is
 * called after. r must not be used after. Blocks shortly (not on the
 * run's processes). Not from a hook.
 */
void mbd_run_finish(mbd_run *r);

/* ------------------------------------------------------------------------ */
/* The state file's text (for the supervisor, its tests and fuzz target)     */

/* A run a previous daemon listed. */
typedef struct mbd_leftover {
  pid_t pid;
  uint64_t start;          /* its first process's start time (clock ticks) */
  char entry[80];          /* its tag: "MODELBUF_WORKER_ID=..." */
  char cgroup[4096];       /* "" when none (or not one this daemon makes) */
  char name[96];           /* its model */
} mbd_leftover;

/*
 * Parses a state file: the runs it lists when it was written in this boot
 * (boot_id; none otherwise: a reboot ended them), and the pid of the
 * daemon that wrote it. Lines that are not as the daemon writes them are
 * skipped. *out (free) gets *n entries. 0 or MB_ENOMEM.
 */
int mbd_state_parse(const char *text, size_t len, const char *boot_id, mbd_leftover **out,
                    size_t *n, int *prev_pid) MB_WUR;

#endif /* MBD_SUPERVISOR_H */
