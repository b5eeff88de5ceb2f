/*
 * nvml.h - private to modelbufd: GPU memory figures from NVML, loaded at run
 * time with dlopen("libnvidia-ml.so.1"), so that nothing links against the
 * driver and a machine without one runs unchanged.
 *
 * Used by modelbufd's process backend: the device memory a worker's
 * processes hold (nvmlDeviceGetComputeRunningProcesses), and after a worker
 * stops, a bounded wait until the driver no longer lists any of them.
 *
 * Without the library (or when nvmlInit fails) every call returns MB_ENODEV
 * with "no NVML: ..." in err and changes nothing. Thread-safe: NVML is loaded
 * and initialised once, on first use, and stays loaded.
 */
#ifndef MBD_NVML_H
#define MBD_NVML_H

#include <stddef.h>
#include <stdint.h>

/* 1 when NVML is usable, else 0 with the reason in why (may be NULL). */
int mbd_nvml_available(char *why, size_t why_len);

/* Total and used memory of CUDA ordinal (the GPU with its PCI bus id; NVML's
 * index where the driver cannot tell it). 0, MB_ENODEV,
 * MB_EBACKEND with a message. */
int mbd_nvml_device_memory(int ordinal, uint64_t *total, uint64_t *used, char *err,
                           size_t err_len);

/*
 * Device memory on GPU ordinal used by the processes of process group pgid
 * (the sum of NVML's usedGpuMemory of every compute process whose group is
 * pgid), into *bytes; *n_procs (may be NULL) gets how many were listed.
 * 0, MB_ENODEV, MB_EBACKEND, MB_ENOMEM with a message.
 */
int mbd_nvml_group_bytes(int ordinal, int pgid, uint64_t *bytes, int *n_procs, char *err,
                         size_t err_len);

/*
 * After a group stopped: waits at most timeout_ms until NVML lists none of
 * pids on GPU ordinal (stopped processes have no group any more, hence the
 * list). 0 when none is listed, and at once without NVML (nothing to wait
 * for); MB_ETIMEDOUT when one still is.
 */
int mbd_nvml_wait_released(int ordinal, const int *pids, size_t n_pids, int64_t timeout_ms);

#endif /* MBD_NVML_H */
