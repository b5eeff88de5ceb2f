/*
 * gpu_checkpoint.h - private to modelbufd: moving the whole GPU state of
 * another process to host memory and back, through the CUDA driver's
 * checkpoint API (cuCheckpointProcessLock / Checkpoint / Restore / Unlock,
 * CUDA 12.8: driver 570 and later), loaded at run time with dlopen("libcuda.so.1").
 *
 * This is how modelbufd offloads a worker that has no offload hook of its
 * own (llama-server, a plain PyTorch API): the worker keeps running, its
 * device memory is copied to host memory by the driver and released, and a
 * restore brings it back at the same addresses. Without a driver, or with
 * one that lacks the API, every call says so and changes nothing.
 *
 * Thread-safe: the driver is loaded once; the calls themselves may run on
 * any thread (modelbufd runs them on loader threads).
 */
#ifndef MBD_GPU_CHECKPOINT_H
#define MBD_GPU_CHECKPOINT_H

#include <stddef.h>

typedef enum mbd_ckpt_state {
  MBD_CKPT_RUNNING = 0,      /* normal */
  MBD_CKPT_LOCKED = 1,       /* CUDA calls of the process block */
  MBD_CKPT_CHECKPOINTED = 2, /* device memory in host memory, device released */
  MBD_CKPT_FAILED = 3        /* the driver could not finish; the process is lost */
} mbd_ckpt_state;

/* "running", "locked", "checkpointed", "failed". */
const char *mbd_ckpt_state_name(int state);

/*
 * 1 when the driver offers the checkpoint API, else 0 with the reason in
 * why (no libcuda.so.1, a driver without cuCheckpointProcessLock, cuInit
 * failed).
 */
int mbd_ckpt_available(char *why, size_t why_len);

/* The state of process pid. 0, or MB_ENODEV / MB_EBACKEND with a message. */
int mbd_ckpt_get_state(int pid, int *state, char *err, size_t err_len);

/*
 * Suspends the GPU state of pid: locks it (waiting up to lock_timeout_ms
 * for its CUDA work in flight; 0 waits without bound), then checkpoints it.
 * If the checkpoint fails the process is unlocked again. 0, or MB_ENODEV (no
 * API), MB_ETIMEDOUT (the lock timed out), MB_EBACKEND, with a message.
 */
int mbd_ckpt_suspend(int pid, unsigned lock_timeout_ms, char *err, size_t err_len);

/* Restores and unlocks a process suspended by mbd_ckpt_suspend. */
int mbd_ckpt_resume(int pid, char *err, size_t err_len);

#endif /* MBD_GPU_CHECKPOINT_H */
