/*
 * test_supervisor.c - the process supervisor (daemon/supervisor.c) with
 * real processes (/bin/sh, sleep): output line by line, exits and signals
 * seen as they happen (the first process kept a zombie until the run is
 * finished, so its pid is never reused under it), a command that cannot
 * run, the environment tag,
 * closed file descriptors, a whole tree killed (a child in the group and
 * one that escaped with setsid), and a state file: what a supervisor in a
 * process that was killed left is stopped by the next one, a process that
 * does not carry the tag is never touched, and a state file in use is
 * refused. Waits are bounded polls.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <setjmp.h>
#include <cmocka.h>

#include "proctree.h"
#include "supervisor.h"

extern char **environ;

/* What the hooks saw. */
typedef struct seen {
  pthread_mutex_t mu;
  char lines[64][256];
  int n;
  int exited, code, sig;
  int ticks;
} seen;

static void on_line(void *arg, const char *line, size_t len) {
  seen *s = arg;
  pthread_mutex_lock(&s->mu);
  if (s->n < 64)
    snprintf(s->lines[s->n++], sizeof(s->lines[0]), "%.*s", (int)len, line);
  pthread_mutex_unlock(&s->mu);
}

static void on_exit_(void *arg, int code, int sig) {
  seen *s = arg;
  pthread_mutex_lock(&s->mu);
  s->exited = 1;
  s->code = code;
  s->sig = sig;
  pthread_mutex_unlock(&s->mu);
}

static void on_tick(void *arg) {
  seen *s = arg;
  pthread_mutex_lock(&s->mu);
  s->ticks++;
  pthread_mutex_unlock(&s->mu);
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* Polls cond (up to 10 s). */
#define WAIT_FOR(cond)                                                                  \
  do {                                                                                  \
    int ok_ = 0;                                                                        \
    for (int i_ = 0; i_ < 2000 && !(ok_ = (cond)); i_++)                               \
      sleep_ms(5);                                                                      \
    if (!ok_)                                                                           \
      fail_msg("timed out waiting for %s", #cond);                                      \
  } while (0)

static int has_line(seen *s, const char *prefix) {
  pthread_mutex_lock(&s->mu);
  int found = 0;
  for (int i = 0; i < s->n && !found; i++)
    found = strncmp(s->lines[i], prefix, strlen(prefix)) == 0;
  pthread_mutex_unlock(&s->mu);
  return found;
}

/* The first number printed after prefix. */
static long number_after(seen *s, const char *prefix) {
  long v = -1;
  pthread_mutex_lock(&s->mu);
  for (int i = 0; i < s->n && v < 0; i++)
    if (strncmp(s->lines[i], prefix, strlen(prefix)) == 0)
      v = strtol(s->lines[i] + strlen(prefix), NULL, 10);
  pthread_mutex_unlock(&s->mu);
  return v;
}

/* Alive and not a zombie. */
static int alive(pid_t pid) {
  mbd_proc p;
  return pid > 0 && mbd_proc_stat(pid, &p) == 0 && p.state != 'Z';
}

static mbd_run *spawn_sh(mbd_sup *sup, seen *s, const char *script) {
  char *argv[] = {"/bin/sh", "-c", (char *)script, NULL};
  mbd_spawn sp;
  memset(&sp, 0, sizeof(sp));
  sp.argv = argv;
  sp.envp = environ;
  sp.cwd = "/";
  sp.name = "test";
  sp.hooks.on_line = on_line;
  sp.hooks.on_exit = on_exit_;
  sp.hooks.on_tick = on_tick;
  sp.hooks.arg = s;
  mbd_run *r = NULL;
  char err[256];
  int rc = mbd_sup_spawn(sup, &sp, &r, err, sizeof(err));
  if (rc != 0)
    fail_msg("spawn: %s", err);
  return r;
}

static mbd_sup *start(const char *state_file) {
  mbd_sup_opts o;
  memset(&o, 0, sizeof(o));
  o.state_file = state_file;
  o.cgroup = "off";
  mbd_sup *sup = NULL;
  char err[256];
  if (mbd_sup_start(&o, &sup, err, sizeof(err)) != 0)
    fail_msg("supervisor: %s", err);
  return sup;
}

static seen *new_seen(void) {
  seen *s = calloc(1, sizeof(*s));
  assert_non_null(s);
  pthread_mutex_init(&s->mu, NULL);
  return s;
}

static int exited(seen *s) {
  pthread_mutex_lock(&s->mu);
  int e = s->exited;
  pthread_mutex_unlock(&s->mu);
  return e;
}

/* Lines as printed, the exit code, the tag, the working folder, no file
 * descriptor of the parent but 0, 1 and 2, ticks while it lives. */
static void test_output_exit_and_environment(void **state) {
  (void)state;
  mbd_sup *sup = start(NULL);
  seen *s = new_seen();
  int keep = open("/dev/null", O_RDONLY); /* a descriptor the child must not get */
  assert_true(keep >= 3);
  mbd_run *r = spawn_sh(sup, s,
                        "echo hello; echo to-stderr >&2; echo \"tag=$MODELBUF_WORKER_ID\"; "
                        "echo \"cwd=$(pwd)\"; echo \"fds=$(ls /proc/self/fd | tr '\\n' ' ')\"; "
                        "sleep 0.3; printf 'no newline'; exit 3");
  pid_t pid = mbd_run_pid(r);
  assert_true(pid > 0);
  assert_true(mbd_run_instance(r) >= 1);
  int code = -1, sig = -1;
  assert_int_equal(mbd_run_wait(r, 10000, &code, &sig), 1);
  assert_int_equal(code, 3);
  assert_int_equal(sig, 0);
  WAIT_FOR(exited(s));
  assert_int_equal(s->code, 3);
  assert_true(has_line(s, "hello"));
  assert_true(has_line(s, "to-stderr"));
  assert_true(has_line(s, "tag=" /* the supervisor's prefix and the run's number */));
  assert_false(has_line(s, "tag=\n"));
  assert_true(has_line(s, "cwd=/"));
  /* ls's own directory descriptor is 3: nothing of ours beyond it. */
  assert_true(has_line(s, "fds=0 1 2 3 "));
  assert_true(has_line(s, "no newline")); /* its last line, read before the exit */
  assert_true(s->ticks >= 1);
  /* Seen, not reaped: until the run is finished its pid (and group id)
   * cannot go to another process, so no signal of the run reaches one. */
  mbd_proc zp;
  assert_int_equal(mbd_proc_stat(pid, &zp), 0);
  assert_int_equal(zp.state, 'Z');
  mbd_run_finish(r);
  WAIT_FOR(mbd_proc_stat(pid, &zp) != 0); /* reaped now */
  close(keep);
  /* A command that cannot run: exit 127 and a line that says why. */
  seen *s2 = new_seen();
  char *argv[] = {"/no/such/program", NULL};
  mbd_spawn sp;
  memset(&sp, 0, sizeof(sp));
  sp.argv = argv;
  sp.envp = environ;
  sp.name = "missing";
  sp.hooks.on_line = on_line;
  sp.hooks.on_exit = on_exit_;
  sp.hooks.arg = s2;
  char err[256];
  assert_int_equal(mbd_sup_spawn(sup, &sp, &r, err, sizeof(err)), 0);
  assert_int_equal(mbd_run_wait(r, 10000, &code, &sig), 1);
  assert_int_equal(code, 127);
  WAIT_FOR(has_line(s2, "modelbufd: cannot run the worker's command"));
  mbd_run_finish(r);
  mbd_sup_stop(sup);
  free(s);
  free(s2);
}

/* SIGTERM to the group: the exit says which signal; a second supervisor in
 * the same process is refused. */
static void test_signal_and_one_per_process(void **state) {
  (void)state;
  mbd_sup *sup = start(NULL);
  mbd_sup_opts o;
  memset(&o, 0, sizeof(o));
  mbd_sup *other = NULL;
  char err[256];
  assert_int_equal(mbd_sup_start(&o, &other, err, sizeof(err)), MB_EBUSY);
  seen *s = new_seen();
  mbd_run *r = spawn_sh(sup, s, "echo up; exec sleep 300");
  WAIT_FOR(has_line(s, "up"));
  mbd_run_signal(r, SIGTERM, 1);
  int code, sig;
  assert_int_equal(mbd_run_wait(r, 10000, &code, &sig), 1);
  assert_int_equal(sig, SIGTERM);
  WAIT_FOR(exited(s));
  mbd_run_finish(r);
  mbd_sup_stop(sup);
  free(s);
}

/* A tree killed whole: a child in the group and one that escaped with
 * setsid (found by its tag), while the first process ignores SIGTERM. */
static void test_kill_the_whole_tree(void **state) {
  (void)state;
  mbd_sup *sup = start(NULL);
  seen *s = new_seen();
  mbd_run *r = spawn_sh(sup, s,
                        "trap '' TERM; sleep 300 & echo child=$!; "
                        "setsid sleep 300 & echo escaped=$!; "
                        "while :; do sleep 1; done");
  WAIT_FOR(has_line(s, "escaped="));
  pid_t child = (pid_t)number_after(s, "child="), escaped = (pid_t)number_after(s, "escaped=");
  pid_t leader = mbd_run_pid(r);
  WAIT_FOR(alive(escaped) && getsid(escaped) == escaped);
  assert_true(alive(child) && alive(leader));
  uint64_t bytes = mbd_run_tree_bytes(r, NULL, 0, NULL);
  assert_true(bytes > 0);
  mbd_run_signal(r, SIGTERM, 0); /* ignored by the first process */
  assert_int_equal(mbd_run_wait(r, 300, NULL, NULL), 0);
  mbd_run_kill(r);
  int code, sig;
  assert_int_equal(mbd_run_wait(r, 10000, &code, &sig), 1);
  assert_int_equal(sig, SIGKILL);
  WAIT_FOR(!alive(child) && !alive(escaped));
  mbd_run_finish(r);
  mbd_sup_stop(sup);
  free(s);
}

/*
 * A process that ran a supervisor and died without stopping it (as by
 * SIGKILL): its worker dies with it (PDEATHSIG), what the worker started
 * does not; the next supervisor with the same state file stops that, and
 * leaves alone a process whose pid the file lists but that does not carry
 * the tag.
 */
static void test_state_file_after_a_kill(void **state) {
  (void)state;
  char dir[] = "/tmp/mb-sup-XXXXXX";
  assert_non_null(mkdtemp(dir));
  char path[128];
  snprintf(path, sizeof(path), "%s/state", dir);
  int pfd[2];
  assert_int_equal(pipe(pfd), 0);
  pid_t daemon = fork();
  if (daemon == 0) {
    close(pfd[0]);
    mbd_sup_opts o;
    memset(&o, 0, sizeof(o));
    o.state_file = path;
    o.cgroup = "off";
    mbd_sup *sup;
    char err[256];
    if (mbd_sup_start(&o, &sup, err, sizeof(err)) != 0)
      _exit(2);
    seen *s = new_seen();
    mbd_run *r = spawn_sh(sup, s, "setsid sleep 300 & echo left=$!; exec sleep 300");
    for (int i = 0; i < 2000 && !has_line(s, "left="); i++)
      sleep_ms(5);
    long pids[2] = {mbd_run_pid(r), number_after(s, "left=")};
    (void)!write(pfd[1], pids, sizeof(pids));
    /* Wait to be killed: the parent sends SIGKILL. */
    for (;;)
      pause();
  }
  close(pfd[1]);
  long pids[2] = {0, 0};
  assert_int_equal(read(pfd[0], pids, sizeof(pids)), (ssize_t)sizeof(pids));
  close(pfd[0]);
  assert_true(pids[0] > 0 && pids[1] > 0);
  kill(daemon, SIGKILL);
  waitpid(daemon, NULL, 0);
  WAIT_FOR(!alive((pid_t)pids[0])); /* PDEATHSIG */
  assert_true(alive((pid_t)pids[1])); /* what the next start must stop */
  /* A process the file names with its right start time but without the
   * tag: a stranger that got a reused pid. It must survive. */
  pid_t stranger = fork();
  if (stranger == 0) {
    execl("/bin/sleep", "sleep", "300", (char *)NULL);
    _exit(127);
  }
  WAIT_FOR(alive(stranger));
  mbd_proc sp;
  assert_int_equal(mbd_proc_stat(stranger, &sp), 0);
  FILE *f = fopen(path, "a");
  assert_non_null(f);
  fprintf(f, "run %d %llu 99 0000000000000000-99 - stranger\n", (int)stranger,
          (unsigned long long)sp.start);
  fclose(f);
  mbd_sup *sup = start(path);
  WAIT_FOR(!alive((pid_t)pids[1]));
  assert_true(alive(stranger));
  /* The file is ours now: another process is refused it. */
  pid_t second = fork();
  if (second == 0) {
    mbd_sup_opts o;
    memset(&o, 0, sizeof(o));
    o.state_file = path;
    mbd_sup *other;
    char err[256];
    _exit(mbd_sup_start(&o, &other, err, sizeof(err)) == MB_EBUSY &&
                  strstr(err, "held by another running modelbufd") != NULL
              ? 0
              : 1);
  }
  int st;
  waitpid(second, &st, 0);
  assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  mbd_sup_stop(sup); /* a clean stop removes the file */
  assert_int_equal(access(path, F_OK), -1);
  kill(stranger, SIGKILL);
  waitpid(stranger, NULL, 0);
  rmdir(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_output_exit_and_environment),
      cmocka_unit_test(test_signal_and_one_per_process),
      cmocka_unit_test(test_kill_the_whole_tree),
      cmocka_unit_test(test_state_file_after_a_kill),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
