/*
 * nvml.c - NVML through dlopen; see nvml.h. The few NVML types used are
 * declared here (nvml.h is not part of the CUDA toolkit headers installed
 * everywhere); their layout is NVML's stable ABI.
 */
#include "nvml.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "modelbuf/modelbuf.h"
#include "mb_internal.h"

typedef int nvml_ret;       /* nvmlReturn_t: 0 = NVML_SUCCESS */
typedef void *nvml_device;  /* nvmlDevice_t */
#define NVML_ERROR_INSUFFICIENT_SIZE 7

typedef struct nvml_memory { /* nvmlMemory_t */
  unsigned long long total, free, used;
} nvml_memory;

/*
 * nvmlProcessInfo_v2_t: the 24-byte entries nvmlDeviceGetComputeRunningProcesses_v2
 * writes. The _v3 call is only a fallback for a driver without _v2: its
 * entry changed under the same name (the 535 drivers from 535.43 to 535.86
 * write 32-byte nvmlProcessInfo_v3_t entries, with usedGpuCcProtectedMemory;
 * those before and after, 24-byte ones): 32-byte entries would be read at
 * the wrong offsets (wrong pids and byte counts), and with more than 48
 * processes listed they would be written past the end of the array.
 */
typedef struct nvml_proc {
  unsigned int pid;
  unsigned long long used_gpu_memory;
  unsigned int gpu_instance_id, compute_instance_id;
} nvml_proc;

static struct {
  pthread_once_t once;
  int ok;
  char why[160];
  nvml_ret (*device_by_index)(unsigned int, nvml_device *);
  nvml_ret (*device_by_pci)(const char *, nvml_device *); /* optional */
  nvml_ret (*memory_info)(nvml_device, nvml_memory *);
  nvml_ret (*procs)(nvml_device, unsigned int *, nvml_proc *);
  const char *(*error_string)(nvml_ret);
} nv = {PTHREAD_ONCE_INIT, 0, "", NULL, NULL, NULL, NULL, NULL};

static void load_nvml(void) {
  void *dl = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
  if (dl == NULL) {
    snprintf(nv.why, sizeof(nv.why), "no NVML: cannot load libnvidia-ml.so.1");
    return;
  }
  nvml_ret (*init)(void) = (nvml_ret(*)(void))dlsym(dl, "nvmlInit_v2");
  nv.device_by_index = (nvml_ret(*)(unsigned int, nvml_device *))dlsym(
      dl, "nvmlDeviceGetHandleByIndex_v2");
  nv.device_by_pci = (nvml_ret(*)(const char *, nvml_device *))dlsym(
      dl, "nvmlDeviceGetHandleByPciBusId_v2");
  nv.memory_info = (nvml_ret(*)(nvml_device, nvml_memory *))dlsym(dl, "nvmlDeviceGetMemoryInfo");
  nv.procs = (nvml_ret(*)(nvml_device, unsigned int *, nvml_proc *))dlsym(
      dl, "nvmlDeviceGetComputeRunningProcesses_v2");
  if (nv.procs == NULL)
    nv.procs = (nvml_ret(*)(nvml_device, unsigned int *, nvml_proc *))dlsym(
        dl, "nvmlDeviceGetComputeRunningProcesses_v3");
  nv.error_string = (const char *(*)(nvml_ret))dlsym(dl, "nvmlErrorString");
  if (init == NULL || nv.device_by_index == NULL || nv.memory_info == NULL || nv.procs == NULL) {
    snprintf(nv.why, sizeof(nv.why), "no NVML: libnvidia-ml.so.1 lacks the calls needed");
    dlclose(dl);
    return;
  }
  nvml_ret r = init();
  if (r != 0) {
    snprintf(nv.why, sizeof(nv.why), "no NVML: nvmlInit failed (%s)",
             nv.error_string ? nv.error_string(r) : "error");
    dlclose(dl);
    return;
  }
  nv.ok = 1; /* stays loaded and initialised for the life of the process */
}

int mbd_nvml_available(char *why, size_t why_len) {
  pthread_once(&nv.once, load_nvml);
  if (!nv.ok)
    mb__set_err(why, why_len, "%s", nv.why);
  return nv.ok;
}

/*
 * The NVML handle of CUDA ordinal. NVML numbers every GPU of the machine in
 * PCI order, while the driver numbers those CUDA_VISIBLE_DEVICES lets it
 * see, fastest first: the two agree only on a machine of identical GPUs
 * with nothing hidden. So the GPU is found by its PCI bus id, which the
 * driver gives; by index only where that cannot be had (no driver, or one
 * or an NVML without the call). A bus id that NVML does not find, or that
 * the driver fails to give (a lost GPU), is an error: NVML's GPU of the
 * same index may be another one.
 */
static int device(int ordinal, nvml_device *d, char *err, size_t err_len) {
  if (!mbd_nvml_available(err, err_len))
    return MB_ENODEV;
  char bus[32];
  int brc = ordinal >= 0 ? mb__device_pci_bus_id(ordinal, bus, sizeof(bus)) : MB_ENODEV;
  if (brc == 0 && nv.device_by_pci != NULL) {
    nvml_ret r = nv.device_by_pci(bus, d);
    if (r == 0)
      return 0;
    mb__set_err(err, err_len, "NVML: no GPU %d at PCI bus id %s (%s)", ordinal, bus,
                nv.error_string ? nv.error_string(r) : "error");
    return MB_ENODEV;
  }
  if (brc != 0 && brc != MB_ENOTSUP) {
    mb__set_err(err, err_len,
                "NVML: no GPU %d: the CUDA driver has no such GPU or cannot give its PCI bus id",
                ordinal);
    return MB_ENODEV;
  }
  nvml_ret r = ordinal < 0 ? 1 : nv.device_by_index((unsigned)ordinal, d);
  if (r != 0) {
    mb__set_err(err, err_len, "NVML: no GPU %d (%s)", ordinal,
            nv.error_string ? nv.error_string(r) : "error");
    return MB_ENODEV;
  }
  return 0;
}

int mbd_nvml_device_memory(int ordinal, uint64_t *total, uint64_t *used, char *err,
                           size_t err_len) {
  nvml_device d;
  int rc = device(ordinal, &d, err, err_len);
  if (rc != 0)
    return rc;
  nvml_memory m;
  nvml_ret r = nv.memory_info(d, &m);
  if (r != 0) {
    mb__set_err(err, err_len, "NVML: memory of GPU %d: %s", ordinal,
            nv.error_string ? nv.error_string(r) : "error");
    return MB_EBACKEND;
  }
  if (total)
    *total = m.total;
  if (used)
    *used = m.used;
  return 0;
}

/* The compute processes on d into a malloc'd array (*out, *n). */
static int list_procs(int ordinal, nvml_proc **out, unsigned *n, char *err, size_t err_len) {
  nvml_device d;
  int rc = device(ordinal, &d, err, err_len);
  if (rc != 0)
    return rc;
  unsigned cap = 64;
  for (int tries = 0; tries < 4; tries++) {
    nvml_proc *p = calloc(cap, sizeof(*p));
    if (p == NULL)
      return MB_ENOMEM;
    unsigned cnt = cap;
    nvml_ret r = nv.procs(d, &cnt, p);
    if (r == 0) {
      *out = p;
      *n = cnt;
      return 0;
    }
    free(p);
    if (r != NVML_ERROR_INSUFFICIENT_SIZE) {
      mb__set_err(err, err_len, "NVML: processes of GPU %d: %s", ordinal,
              nv.error_string ? nv.error_string(r) : "error");
      return MB_EBACKEND;
    }
    cap = cnt > cap ? cnt + 16 : cap * 2;
  }
  mb__set_err(err, err_len, "NVML: processes of GPU %d: the list keeps growing", ordinal);
  return MB_EBACKEND;
}

int mbd_nvml_group_bytes(int ordinal, int pgid, uint64_t *bytes, int *n_procs, char *err,
                         size_t err_len) {
  nvml_proc *p = NULL;
  unsigned n = 0;
  int rc = list_procs(ordinal, &p, &n, err, err_len);
  if (rc != 0)
    return rc;
  uint64_t sum = 0;
  int cnt = 0;
  for (unsigned i = 0; i < n; i++)
    if (getpgid((pid_t)p[i].pid) == pgid) {
      /* NVML reports "not available" as ~0ULL (e.g. without permission). */
      if (p[i].used_gpu_memory != ~0ULL)
        sum += p[i].used_gpu_memory;
      cnt++;
    }
  free(p);
  *bytes = sum;
  if (n_procs)
    *n_procs = cnt;
  return 0;
}

int mbd_nvml_wait_released(int ordinal, const int *pids, size_t n_pids, int64_t timeout_ms) {
  if (!mbd_nvml_available(NULL, 0) || n_pids == 0)
    return 0;
  struct timespec t0, now;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (;;) {
    nvml_proc *p = NULL;
    unsigned n = 0;
    if (list_procs(ordinal, &p, &n, NULL, 0) != 0)
      return 0; /* nothing more can be learned */
    int listed = 0;
    for (unsigned i = 0; i < n && !listed; i++)
      for (size_t k = 0; k < n_pids; k++)
        if ((int)p[i].pid == pids[k])
          listed = 1;
    free(p);
    if (!listed)
      return 0;
    clock_gettime(CLOCK_MONOTONIC, &now);
    int64_t ms = (now.tv_sec - t0.tv_sec) * 1000 + (now.tv_nsec - t0.tv_nsec) / 1000000;
    if (ms >= timeout_ms)
      return MB_ETIMEDOUT;
    struct timespec ts = {0, 20 * 1000000L};
    nanosleep(&ts, NULL);
  }
}
