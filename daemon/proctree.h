/*
 * proctree.h - processes as /proc shows them, for the process backend:
 * a table of every process (pid, parent, group, start time, resident
 * bytes), the tree of one worker in it, the environment tag that marks
 * what a worker started, and signals to a whole tree.
 *
 * A worker's tree is: the processes of its process group, every process
 * that descends from its leader (by parent), and, in a daemon that is a
 * child subreaper, the daemon's own children that carry the worker's tag in
 * their environment (orphans that escaped with setsid and were reparented
 * to it) with their descendants. The tag is one environment entry,
 * MODELBUF_WORKER_ID=..., set for every worker and inherited by what it
 * starts unless that clears its environment.
 *
 * Everything read from /proc is hostile input: a process may exit at any
 * time, its name may hold ')' and spaces, its environment may be huge; no
 * read here crashes, and none holds more than a bounded buffer.
 *
 * No threads, no locks: a table belongs to its caller.
 */
#ifndef MBD_PROCTREE_H
#define MBD_PROCTREE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "modelbuf/modelbuf.h"

/* The environment variable that marks a worker's processes. */
#define MBD_TAG_VAR "MODELBUF_WORKER_ID"

typedef struct mbd_proc {
  pid_t pid, ppid, pgrp, sid;
  uint64_t start;     /* start time, clock ticks after boot (/proc/PID/stat field 22) */
  uint64_t rss_bytes;
  char state;         /* R, S, D, Z, ... */
} mbd_proc;

typedef struct mbd_proc_table {
  mbd_proc *p;
  size_t n, cap;
} mbd_proc_table;

/* Reads every process of /proc into t (reusing its room). 0, MB_EIO (no
 * /proc), MB_ENOMEM. */
int mbd_proc_scan(mbd_proc_table *t) MB_WUR;
void mbd_proc_table_free(mbd_proc_table *t);

/* One process: 0, or -1 when it is gone (or /proc/PID/stat is unreadable). */
int mbd_proc_stat(pid_t pid, mbd_proc *out);

/* Parses one /proc/PID/stat text (for the tests and the fuzz target). */
int mbd_proc_parse_stat(const char *text, size_t len, long page_bytes, mbd_proc *out);

/* Whether pid's environment holds exactly the entry "NAME=VALUE": 1 yes,
 * 0 no, -1 unreadable (gone, another user's, a zombie). Reads at most
 * 1 MiB of it. */
int mbd_proc_has_env(pid_t pid, const char *entry);

/* Whether buf (NUL-separated entries, len bytes) holds entry. */
int mbd_env_block_has(const char *buf, size_t len, const char *entry);

/*
 * Marks (member[i] = 1) the processes of t in the tree of the worker whose
 * leader is leader (its process group has the same id), with adopter the
 * subreaper that receives its orphans (0: none) and tag its environment
 * entry ("MODELBUF_WORKER_ID=..."; NULL: none). Only processes started at or
 * after since (clock ticks) count as tagged. Returns how many.
 */
size_t mbd_proc_tree(const mbd_proc_table *t, pid_t leader, pid_t adopter, const char *tag,
                     uint64_t since, unsigned char *member);

/*
 * Sends sig to the process p describes, if it is still that process: the
 * same pid with the same start time (through a pidfd where the kernel has
 * them, so a pid reused meanwhile is never signaled); with entry (may be
 * NULL), only if its environment holds it. 1 when signaled.
 */
int mbd_proc_signal(const mbd_proc *p, const char *entry, int sig);

/*
 * Sends sig to every process that carries tag and started at or after
 * since, anywhere in t (a deep sweep: reads the environment of each
 * candidate; each signaled through mbd_proc_signal). Returns how many.
 */
size_t mbd_proc_signal_tagged(const mbd_proc_table *t, const char *tag, uint64_t since, int sig);

/* The kernel's boot id (/proc/sys/kernel/random/boot_id) into buf: 0 or -1. */
int mbd_proc_boot_id(char *buf, size_t len);

#endif /* MBD_PROCTREE_H */
