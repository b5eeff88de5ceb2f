/*
 * gpu_checkpoint.c - the CUDA driver's process checkpoint API, loaded at
 * run time. The few types it needs are declared here with the driver's
 * layout (checked against cuda.h of CUDA 13.0; the API exists since 12.8),
 * so the file builds without CUDA headers.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "modelbuf/modelbuf.h"
#include "mb_internal.h"
#include "gpu_checkpoint.h"

typedef int cu_result; /* CUresult: 0 is CUDA_SUCCESS */
#define CU_SUCCESS 0
#define CU_ERROR_NOT_READY 600
#define CU_ERROR_TIMEOUT 909 /* CUDA_ERROR_TIMEOUT */

typedef struct cu_lock_args {
  unsigned int timeout_ms;
  unsigned int reserved0;
  unsigned long long reserved1[7];
} cu_lock_args;

typedef struct cu_ckpt_args {
  unsigned long long reserved[8];
} cu_ckpt_args;

typedef struct cu_restore_args {
  void *gpu_pairs;
  unsigned int gpu_pairs_count;
  char reserved[52 - sizeof(void *)];
  unsigned long long reserved1;
} cu_restore_args;

typedef struct cu_unlock_args {
  unsigned long long reserved[8];
} cu_unlock_args;

static struct {
  pthread_once_t once;
  int ok;
  char why[200];
  cu_result (*init)(unsigned int);
  cu_result (*get_error_name)(cu_result, const char **);
  cu_result (*get_state)(int, int *);
  cu_result (*lock)(int, cu_lock_args *);
  cu_result (*checkpoint)(int, cu_ckpt_args *);
  cu_result (*restore)(int, cu_restore_args *);
  cu_result (*unlock)(int, cu_unlock_args *);
} drv = {.once = PTHREAD_ONCE_INIT};

static void *sym(void *dl, const char *name) {
  return dl ? dlsym(dl, name) : NULL;
}

static void load_driver(void) {
  void *dl = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (dl == NULL) {
    const char *e = dlerror();
    snprintf(drv.why, sizeof(drv.why), "no CUDA driver: %s", e ? e : "libcuda.so.1 not found");
    return;
  }
  void *p[7] = {sym(dl, "cuInit"),
                sym(dl, "cuGetErrorName"),
                sym(dl, "cuCheckpointProcessGetState"),
                sym(dl, "cuCheckpointProcessLock"),
                sym(dl, "cuCheckpointProcessCheckpoint"),
                sym(dl, "cuCheckpointProcessRestore"),
                sym(dl, "cuCheckpointProcessUnlock")};
  for (int i = 0; i < 7; i++) {
    if (p[i] == NULL) {
      snprintf(drv.why, sizeof(drv.why),
               "the CUDA driver has no checkpoint API (CUDA 12.8, driver 570 or later, needed)");
      dlclose(dl);
      return;
    }
  }
  memcpy(&drv.init, &p[0], sizeof(p[0]));
  memcpy(&drv.get_error_name, &p[1], sizeof(p[1]));
  memcpy(&drv.get_state, &p[2], sizeof(p[2]));
  memcpy(&drv.lock, &p[3], sizeof(p[3]));
  memcpy(&drv.checkpoint, &p[4], sizeof(p[4]));
  memcpy(&drv.restore, &p[5], sizeof(p[5]));
  memcpy(&drv.unlock, &p[6], sizeof(p[6]));
  cu_result r = drv.init(0);
  if (r != CU_SUCCESS) {
    snprintf(drv.why, sizeof(drv.why), "cuInit failed (CUDA error %d): no usable GPU", r);
    return; /* the library stays loaded: cuInit ran in it (as device_cuda.c) */
  }
  drv.ok = 1; /* the library stays loaded for the life of the process */
}

static int ready(char *err, size_t err_len) {
  pthread_once(&drv.once, load_driver);
  if (!drv.ok) {
    mb__set_err(err, err_len, "%s", drv.why);
    return 0;
  }
  return 1;
}

static int fail(cu_result r, const char *what, int pid, char *err, size_t err_len) {
  const char *name = NULL;
  if (drv.get_error_name == NULL || drv.get_error_name(r, &name) != CU_SUCCESS || name == NULL)
    name = "unknown error";
  mb__set_err(err, err_len, "%s of process %d failed: %s (%d)", what, pid, name, r);
  /* A lock that ran out of its timeout answers NOT_READY (cuda.h) */
  return r == CU_ERROR_TIMEOUT || r == CU_ERROR_NOT_READY ? MB_ETIMEDOUT : MB_EBACKEND;
}

const char *mbd_ckpt_state_name(int state) {
  switch (state) {
  case MBD_CKPT_RUNNING: return "running";
  case MBD_CKPT_LOCKED: return "locked";
  case MBD_CKPT_CHECKPOINTED: return "checkpointed";
  case MBD_CKPT_FAILED: return "failed";
  default: return "unknown";
  }
}

int mbd_ckpt_available(char *why, size_t why_len) {
  return ready(why, why_len);
}

int mbd_ckpt_get_state(int pid, int *state, char *err, size_t err_len) {
  if (!ready(err, err_len))
    return MB_ENODEV;
  cu_result r = drv.get_state(pid, state);
  return r == CU_SUCCESS ? 0 : fail(r, "reading the CUDA state", pid, err, err_len);
}

int mbd_ckpt_suspend(int pid, unsigned lock_timeout_ms, char *err, size_t err_len) {
  if (!ready(err, err_len))
    return MB_ENODEV;
  cu_lock_args la;
  memset(&la, 0, sizeof(la));
  la.timeout_ms = lock_timeout_ms;
  cu_result r = drv.lock(pid, &la);
  if (r != CU_SUCCESS)
    return fail(r, "locking the CUDA calls", pid, err, err_len);
  cu_ckpt_args ca;
  memset(&ca, 0, sizeof(ca));
  r = drv.checkpoint(pid, &ca);
  if (r != CU_SUCCESS) {
    int rc = fail(r, "checkpointing the GPU memory", pid, err, err_len);
    cu_unlock_args ua;
    memset(&ua, 0, sizeof(ua));
    drv.unlock(pid, &ua);
    return rc;
  }
  return 0;
}

int mbd_ckpt_resume(int pid, char *err, size_t err_len) {
  if (!ready(err, err_len))
    return MB_ENODEV;
  cu_restore_args ra;
  memset(&ra, 0, sizeof(ra));
  cu_result r = drv.restore(pid, &ra);
  if (r != CU_SUCCESS)
    return fail(r, "restoring the GPU memory", pid, err, err_len);
  cu_unlock_args ua;
  memset(&ua, 0, sizeof(ua));
  r = drv.unlock(pid, &ua);
  if (r != CU_SUCCESS)
    return fail(r, "unlocking the CUDA calls", pid, err, err_len);
  return 0;
}
