/*
 * cgroup.h - a cgroup v2 per worker, where the daemon may make them: under
 * the cgroup systemd delegated to it (Delegate=yes), or under a writable
 * cgroup v2 folder the configuration names. A worker's cgroup holds every
 * process it starts, whatever session or group they move to: it is killed
 * as a whole (cgroup.kill) and measured from memory.current when the memory
 * controller is on.
 *
 * No threads, no locks; paths are plain strings owned by the callers.
 */
#ifndef MBD_CGROUP_H
#define MBD_CGROUP_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "modelbuf/modelbuf.h"

/*
 * Decides where worker cgroups go. mode: NULL or "off" (none: MB_ENOTSUP,
 * why says so), "auto" (the daemon's own cgroup when it is delegated:
 * the trusted.delegate or user.delegate attribute systemd sets, and
 * writable; the daemon then moves itself into a leaf "modelbufd" below it,
 * alone there, so the memory controller can be enabled for its workers), or
 * a folder on a cgroup v2 file system that the daemon can write. On success
 * base gets the folder and *memory whether memory.current will be there.
 * Errors: MB_ENOTSUP (not usable here; why names the reason), MB_EINVAL (a
 * configured folder that is not a writable cgroup v2 folder).
 */
int mbd_cgroup_setup(const char *mode, char *base, size_t len, int *memory, char *why,
                     size_t why_len) MB_WUR;

/* Whether path is a folder of a cgroup v2 file system. */
int mbd_cgroup_is_v2(const char *path);

/* Makes base/name (name: letters, digits, '.', '_', '-', ':'): 0 with the
 * path in out, or MB_EIO (message in why). */
int mbd_cgroup_create(const char *base, const char *name, char *out, size_t len, char *why,
                      size_t why_len) MB_WUR;

/* Opens cg/cgroup.procs for writing (close-on-exec): a child writes "0" to
 * it to join before it runs the worker. -1 on error. */
int mbd_cgroup_open_procs(const char *cg);

/* Sends sig to every process of cg. Returns how many. */
size_t mbd_cgroup_signal(const char *cg, int sig);

/* Kills every process of cg (cgroup.kill, else SIGKILL to each, again
 * while new ones appear). */
void mbd_cgroup_kill(const char *cg);

/* 1 while cg holds a live process, 0 when it is empty, -1 when unreadable
 * (gone). */
int mbd_cgroup_populated(const char *cg);

/* memory.current of cg, 0 when there is none. */
uint64_t mbd_cgroup_memory(const char *cg);

/* Removes cg once empty, waiting up to wait_ms for its processes to go:
 * 0, or -1 (it stays; the next start of the daemon removes it). */
int mbd_cgroup_remove(const char *cg, int wait_ms);

#endif /* MBD_CGROUP_H */
