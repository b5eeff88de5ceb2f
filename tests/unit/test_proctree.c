/*
 * test_proctree.c - /proc as the process backend reads it
 * (daemon/proctree.c): /proc/PID/stat texts of every odd shape, environment
 * blocks, the tree of a worker in a table, and the scan of this very
 * process and a child of it. Also the state file's parser
 * (mbd_state_parse), which reads what a killed daemon left.
 */
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <setjmp.h>
#include <cmocka.h>

#include "proctree.h"
#include "supervisor.h"

static void test_parse_stat(void **state) {
  (void)state;
  mbd_proc p;
  /* A name with ')' and spaces in it; negative priority and nice. */
  const char *s = "4242 (a) b (c d)) S 17 4242 4242 0 -1 4194560 100 0 0 0 3 4 0 0 -20 -5 "
                  "1 0 987654 12345678 300 18446744073709551615";
  assert_int_equal(mbd_proc_parse_stat(s, strlen(s), 4096, &p), 0);
  assert_int_equal(p.pid, 4242);
  assert_int_equal(p.state, 'S');
  assert_int_equal(p.ppid, 17);
  assert_int_equal(p.pgrp, 4242);
  assert_int_equal(p.sid, 4242);
  assert_int_equal(p.start, 987654);
  assert_int_equal(p.rss_bytes, 300 * 4096);
  /* Cut short, no name, no pid, garbage: refused, never a crash. */
  const char *bad[] = {"", "12", "12 (x", "12 (x) S 1 2", "x (y) S 1 1 1 0 0 0 0 0 0 0 0 0 0 0",
                       "-3 (y) S", "12 (x) S a b c d e f g h i j k l m n o p q r s t u"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
    assert_int_equal(mbd_proc_parse_stat(bad[i], strlen(bad[i]), 4096, &p), -1);
  /* Longer than a stat line may be: read up to its buffer, still parsed. */
  char big[4000];
  memset(big, ' ', sizeof(big));
  memcpy(big, s, strlen(s));
  assert_int_equal(mbd_proc_parse_stat(big, sizeof(big), 4096, &p), 0);
}

static void test_env_block(void **state) {
  (void)state;
  const char env[] = "A=1\0MODELBUF_WORKER_ID=ab-12\0B=2";
  size_t n = sizeof(env) - 1;
  assert_true(mbd_env_block_has(env, n, "MODELBUF_WORKER_ID=ab-12"));
  assert_true(mbd_env_block_has(env, n, "B=2")); /* the last, without its NUL */
  assert_false(mbd_env_block_has(env, n, "MODELBUF_WORKER_ID=ab-1"));
  assert_false(mbd_env_block_has(env, n, "MODELBUF_WORKER_ID=ab-123"));
  assert_false(mbd_env_block_has(env, n, "A="));
  assert_false(mbd_env_block_has("", 0, "A=1"));
}

static mbd_proc P(pid_t pid, pid_t ppid, pid_t pgrp, uint64_t start) {
  mbd_proc p = {pid, ppid, pgrp, pgrp, start, 4096, 'S'};
  return p;
}

/* The tree: group members, descendants at any depth (a setsid'd one
 * too), not its parent, siblings or strangers. */
static void test_tree(void **state) {
  (void)state;
  mbd_proc ps[] = {
      P(1, 0, 1, 1),       P(50, 1, 50, 10),   /* the daemon */
      P(100, 50, 100, 20),                     /* the worker */
      P(101, 100, 100, 21),                    /* its child */
      P(102, 101, 102, 22),                    /* a grandchild that setsid'd */
      P(103, 102, 102, 23),                    /* and its own child */
      P(104, 1, 100, 24),                      /* an orphan still in the group */
      P(200, 50, 200, 30),                     /* another worker */
      P(201, 200, 200, 31),                    /* its child */
      P(300, 1, 300, 5),                       /* a stranger */
  };
  mbd_proc_table t = {ps, sizeof(ps) / sizeof(ps[0]), sizeof(ps) / sizeof(ps[0])};
  unsigned char member[16];
  size_t n = mbd_proc_tree(&t, 100, 0, NULL, 20, member);
  assert_int_equal(n, 5);
  int want[] = {0, 0, 1, 1, 1, 1, 1, 0, 0, 0};
  for (size_t i = 0; i < t.n; i++)
    assert_int_equal(member[i], want[i]);
}

/* A real scan: this process, and a child of it (a zombie until reaped). */
static void test_scan_self_and_child(void **state) {
  (void)state;
  pid_t child = fork();
  if (child == 0) {
    setpgid(0, 0);
    _exit(0);
  }
  assert_true(child > 0);
  mbd_proc_table t = {0};
  mbd_proc me;
  assert_int_equal(mbd_proc_stat(getpid(), &me), 0);
  assert_int_equal(me.ppid, getppid());
  /* Until the child has exited, left unreaped (WNOWAIT): a zombie now. */
  siginfo_t si;
  memset(&si, 0, sizeof(si));
  assert_int_equal(waitid(P_PID, (id_t)child, &si, WEXITED | WNOWAIT), 0);
  assert_int_equal(si.si_pid, child);
  int found = 0;
  assert_int_equal(mbd_proc_scan(&t), 0);
  for (size_t i = 0; i < t.n; i++)
    if (t.p[i].pid == child && t.p[i].state == 'Z') {
      assert_int_equal(t.p[i].ppid, getpid());
      found = 1;
    }
  assert_true(found);
  /* A zombie has no environment to read. */
  assert_int_equal(mbd_proc_has_env(child, "A=1"), -1);
  waitpid(child, NULL, 0);
  assert_int_equal(mbd_proc_stat(child, &me), -1);
  mbd_proc_table_free(&t);
  /* Our own environment can be read: its first entry is there, a made-up
   * one is not (/proc/PID/environ is the environment as it was at exec). */
  FILE *f = fopen("/proc/self/environ", "r");
  assert_non_null(f);
  char first[4096] = "";
  size_t k = 0;
  int c;
  while ((c = fgetc(f)) != EOF && c != 0 && k + 1 < sizeof(first))
    first[k++] = (char)c;
  fclose(f);
  if (k > 0)
    assert_int_equal(mbd_proc_has_env(getpid(), first), 1);
  assert_int_equal(mbd_proc_has_env(getpid(), "MB_NO_SUCH_ENTRY_ANYWHERE=1"), 0);
  char boot[64];
  assert_int_equal(mbd_proc_boot_id(boot, sizeof(boot)), 0);
  assert_int_equal(strlen(boot), 36);
}

/* The state file: runs of this boot, lines no daemon writes skipped. */
static void test_state_parse(void **state) {
  (void)state;
  const char *text = "modelbufd-state 1\n"
                     "boot 1234-boot\n"
                     "daemon 777 99\n"
                     "run 4000 555 1 0123456789abcdef-1 - echo\n"
                     "run 4001 556 2 0123456789abcdef-2 /sys/fs/cgroup/x/mbd-0123456789abcdef-2-big big\n"
                     "run 4002 557 3 0123456789abcdef-3 /etc/passwd evil\n"
                     "run 1 557 3 0123456789abcdef-4 - init\n"
                     "run 4003 557 3 NOT-A-TAG - bad\n"
                     "run 4004 x\n"
                     "garbage\n"
                     "end\n";
  mbd_leftover *lo = NULL;
  size_t n = 0;
  int prev = 0;
  assert_int_equal(mbd_state_parse(text, strlen(text), "1234-boot", &lo, &n, &prev), 0);
  assert_int_equal(prev, 777);
  assert_int_equal(n, 3);
  assert_int_equal(lo[0].pid, 4000);
  assert_int_equal(lo[0].start, 555);
  assert_string_equal(lo[0].entry, "MODELBUF_WORKER_ID=0123456789abcdef-1");
  assert_string_equal(lo[0].cgroup, "");
  assert_string_equal(lo[0].name, "echo");
  assert_string_equal(lo[1].cgroup, "/sys/fs/cgroup/x/mbd-0123456789abcdef-2-big");
  /* A cgroup not named as this daemon names its workers' is never killed. */
  assert_int_equal(lo[2].pid, 4002);
  assert_string_equal(lo[2].cgroup, "");
  free(lo);
  /* Another boot: nothing of it is alive. */
  assert_int_equal(mbd_state_parse(text, strlen(text), "other-boot", &lo, &n, &prev), 0);
  assert_int_equal(n, 0);
  assert_null(lo);
  /* Not a state file at all, an empty one, NUL bytes. */
  const char junk[] = "run 4000 555 1 0123456789abcdef-1 - echo\n";
  assert_int_equal(mbd_state_parse(junk, sizeof(junk) - 1, "x", &lo, &n, &prev), 0);
  assert_int_equal(n, 0);
  assert_int_equal(mbd_state_parse("", 0, "x", &lo, &n, &prev), 0);
  assert_int_equal(n, 0);
  const char nul[] = "modelbufd-state 1\nboot b\nrun 4000 5\0 1 0123456789abcdef-1 - e\n";
  assert_int_equal(mbd_state_parse(nul, sizeof(nul) - 1, "b", &lo, &n, &prev), 0);
  assert_int_equal(n, 0);
  free(lo);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_parse_stat),
      cmocka_unit_test(test_env_block),
      cmocka_unit_test(test_tree),
      cmocka_unit_test(test_scan_self_and_child),
      cmocka_unit_test(test_state_parse),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
