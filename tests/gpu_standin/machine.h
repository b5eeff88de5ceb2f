/*
 * machine.h - the stand-in GPU machine shared by the stand-in libcuda.so.1,
 * the stand-in libnvidia-ml.so.1 and standin_ctl (tests only; see README.md).
 *
 * A "machine" is a small table of GPUs (name, PCI bus id, capacity, lost)
 * and of the processes that use them (device bytes per GPU, contexts,
 * checkpoint state). With MB_STANDIN_MACHINE=/path/to/file every process
 * maps that file (created and sized by the first one, from the environment
 * below), so a worker's allocations show in the daemon's NVML query and the
 * daemon's checkpoint calls reach the worker. Without it each library keeps
 * a private table (and NVML cannot see what libcuda allocated).
 *
 * Environment, read by the process that creates the machine:
 *   MB_STANDIN_GPUS        number of GPUs (default 1; 0: a driver with no GPU)
 *   MB_STANDIN_GPU_MEM     capacity of each, "1GiB" or "512MiB,2GiB" (default 1GiB)
 *   MB_STANDIN_GPU_NAMES   "A,B" (default "modelbuf stand-in GPU N")
 *   MB_STANDIN_GPU_BUS     PCI bus ids "0000:65:00.0,0000:b3:00.0" (default 0000:1N:00.0)
 *   MB_STANDIN_NO_VMM      "1": the GPUs do not support virtual memory management
 *   MB_STANDIN_CTX_MB      device memory a context costs (default 8)
 *   MB_STANDIN_RELEASE_MS  how long a process that ended stays listed, holding
 *                          its memory (default 0): the asynchronous release
 * and by every process:
 *   MB_STANDIN_CUDA_ORDER  CUDA's order of the machine's GPUs, "1,0" (default
 *                          the machine's); CUDA_VISIBLE_DEVICES indexes it
 *   MB_STANDIN_FAIL        fault rules (cuda.c), MB_STANDIN_NVML_FAIL (nvml.c)
 *   MB_STANDIN_REPORT      a file: at exit each process appends one JSON line
 *                          with its live handles and misuses
 *
 * Locks: the table is changed under mbsi_lock() (a process mutex, then
 * flock on the file); a few fields are atomics read without it (state,
 * lock_req, in_call of a process; lost of a GPU; fault_gen).
 */
#ifndef MBSI_MACHINE_H
#define MBSI_MACHINE_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define MBSI_MAX_GPUS 8
#define MBSI_MAX_PROCS 256
#define MBSI_MAX_FAULTS 16

typedef struct mbsi_gpu {
  char name[96];
  char bus[32]; /* "0000:65:00.0" */
  uint64_t total;
  atomic_int lost;
  int vmm;
} mbsi_gpu;

/* Process states: CUprocessState's values. */
enum { MBSI_RUNNING = 0, MBSI_LOCKED = 1, MBSI_CHECKPOINTED = 2, MBSI_FAILED = 3 };

typedef struct mbsi_proc {
  int pid; /* 0: a free slot */
  unsigned long long start; /* start time in /proc/PID/stat (pid reuse) */
  long long gone_ms;        /* CLOCK_MONOTONIC ms it was found gone; 0: alive */
  atomic_int state;
  atomic_int lock_req;      /* a lock is asked for: new calls wait */
  atomic_int in_call;       /* driver calls and stream work in progress */
  uint64_t dev[MBSI_MAX_GPUS];   /* device bytes, contexts included */
  uint64_t saved[MBSI_MAX_GPUS]; /* what a checkpoint moved to host memory */
  int ctx[MBSI_MAX_GPUS];        /* contexts it holds on each GPU */
} mbsi_proc;

typedef struct mbsi_fault {
  int pid;          /* 0: every process */
  char spec[240];
} mbsi_fault;

typedef struct mbsi_machine {
  uint32_t magic, size;
  int n_gpus;
  uint64_t ctx_bytes;
  int release_ms;
  atomic_uint fault_gen; /* bumped whenever faults[] changes */
  mbsi_fault faults[MBSI_MAX_FAULTS];
  mbsi_gpu gpu[MBSI_MAX_GPUS];
  mbsi_proc proc[MBSI_MAX_PROCS];
} mbsi_machine;

/* The machine (mapped on first use; never NULL: a private one at worst). */
mbsi_machine *mbsi_machine_get(void);
void mbsi_lock(void);
void mbsi_unlock(void);

long long mbsi_now_ms(void);

/* Under the lock: forgets processes that ended more than release_ms ago
 * (those that ended since are marked and still listed). */
void mbsi_reap_locked(mbsi_machine *m);
/* Under the lock: the slot of pid, created when create (NULL: none or full). */
mbsi_proc *mbsi_proc_find_locked(mbsi_machine *m, int pid, int create);
/* Under the lock: bytes in use on GPU g, every process together. */
uint64_t mbsi_used_locked(const mbsi_machine *m, int g);

/* "1GiB", "512MiB", "4096": bytes, 0 when malformed. */
uint64_t mbsi_parse_size(const char *s);

/* Fault rules: "what:nth[+][:code][:async]" separated by commas, where what
 * is an entry point without its _v2 (cuMemAlloc) or a class (alloc, copy,
 * stream, event, register, vmm, checkpoint), nth counts the calls of what
 * (1 the first; nth+ that one and every later), code is the result
 * (default: the class's usual failure) and async makes a copy fail when it
 * runs instead of when it is queued. */
typedef struct mbsi_rule {
  char what[48];
  unsigned nth, seen;
  int plus, code, async;
} mbsi_rule;

#define MBSI_MAX_RULES 16
typedef struct mbsi_rules {
  mbsi_rule r[MBSI_MAX_RULES];
  int n;
} mbsi_rules;

/* Parses spec into rules (replacing them). -1 on a malformed spec. */
int mbsi_rules_parse(mbsi_rules *rs, const char *spec);
/* The result for a call of name (its classes cls, space-separated, may be NULL): 0 or the code
 * (*async set when the rule says so). def: the code when the rule has none. */
int mbsi_rules_hit(mbsi_rules *rs, const char *name, const char *cls, int def, int *async);

#endif /* MBSI_MACHINE_H */
