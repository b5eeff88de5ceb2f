/*
 * nvml.c - a stand-in libnvidia-ml.so.1 for modelbuf's tests (README.md):
 * the NVML calls modelbuf makes, over the stand-in machine (machine.h), so
 * that the memory a process allocated through the stand-in libcuda.so.1
 * shows in every other process's query, as a driver's does.
 *
 * NVML numbers the machine's GPUs in their table order (PCI order), and
 * ignores CUDA_VISIBLE_DEVICES. A process is listed on a GPU while it holds
 * a context or memory there and is not checkpointed; a process that ended
 * stays listed for MB_STANDIN_RELEASE_MS.
 *
 * Faults: MB_STANDIN_NVML_FAIL, rules as in machine.h with the names below
 * (nvmlInit, nvmlDeviceGetHandleByIndex, nvmlDeviceGetHandleByPciBusId,
 * nvmlDeviceGetMemoryInfo, nvmlDeviceGetComputeRunningProcesses).
 * Built as the full library, and with -DMBSI_NVML_OLD (no _v2 process list
 * and no lookup by PCI bus id: only _v3) and -DMBSI_MINIMAL (no process
 * list at all).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "machine.h"

#define API __attribute__((visibility("default")))

typedef int nvmlReturn_t;
enum {
  NVML_SUCCESS = 0,
  NVML_ERROR_UNINITIALIZED = 1,
  NVML_ERROR_INVALID_ARGUMENT = 2,
  NVML_ERROR_NOT_FOUND = 6,
  NVML_ERROR_INSUFFICIENT_SIZE = 7,
  NVML_ERROR_GPU_IS_LOST = 15,
  NVML_ERROR_UNKNOWN = 999,
};

typedef struct nvmlDevice_st *nvmlDevice_t;
typedef struct nvmlMemory_st {
  unsigned long long total, free, used;
} nvmlMemory_t;
/* nvmlProcessInfo_v2_t, which both the _v2 and (on drivers other than
 * 535.43 to 535.86) the _v3 call write. */
typedef struct nvmlProcessInfo_st {
  unsigned int pid;
  unsigned long long usedGpuMemory;
  unsigned int gpuInstanceId, computeInstanceId;
} nvmlProcessInfo_t;

/* For the tests (dlsym): replaces the fault rules, as MB_STANDIN_NVML_FAIL. */
API int mbsi_nvml_fail(const char *spec);
API nvmlReturn_t nvmlInit_v2(void);
API nvmlReturn_t nvmlShutdown(void);
API const char *nvmlErrorString(nvmlReturn_t result);
API nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count);
API nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device);
API nvmlReturn_t nvmlDeviceGetHandleByPciBusId_v2(const char *pciBusId, nvmlDevice_t *device);
API nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length);
API nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory);
API nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v2(nvmlDevice_t device,
                                                         unsigned int *infoCount,
                                                         nvmlProcessInfo_t *infos);
API nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t device,
                                                         unsigned int *infoCount,
                                                         nvmlProcessInfo_t *infos);

static struct {
  pthread_mutex_t mu; /* guards the fields below */
  int inits;
  mbsi_rules rules;
  int parsed;
} n = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* Handles are 1 + the GPU's index, as pointers (never dereferenced). */
static nvmlDevice_t handle_of(int gpu) { return (nvmlDevice_t)(uintptr_t)(gpu + 1); }

static int gpu_of(nvmlDevice_t d) {
  uintptr_t v = (uintptr_t)d;
  return v >= 1 && v <= (uintptr_t)mbsi_machine_get()->n_gpus ? (int)v - 1 : -1;
}

static nvmlReturn_t fault(const char *name) {
  pthread_mutex_lock(&n.mu);
  if (!n.parsed) {
    const char *spec = getenv("MB_STANDIN_NVML_FAIL");
    if (mbsi_rules_parse(&n.rules, spec) != 0)
      fprintf(stderr, "mb-standin: bad MB_STANDIN_NVML_FAIL '%s'\n", spec);
    n.parsed = 1;
  }
  nvmlReturn_t r = mbsi_rules_hit(&n.rules, name, NULL, NVML_ERROR_UNKNOWN, NULL);
  pthread_mutex_unlock(&n.mu);
  return r;
}

int mbsi_nvml_fail(const char *spec) {
  pthread_mutex_lock(&n.mu);
  n.parsed = 1;
  int rc = mbsi_rules_parse(&n.rules, spec);
  pthread_mutex_unlock(&n.mu);
  return rc;
}

static int inited(void) {
  pthread_mutex_lock(&n.mu);
  int i = n.inits > 0;
  pthread_mutex_unlock(&n.mu);
  return i;
}

nvmlReturn_t nvmlInit_v2(void) {
  nvmlReturn_t r = fault("nvmlInit");
  if (r != NVML_SUCCESS)
    return r;
  mbsi_machine_get();
  pthread_mutex_lock(&n.mu);
  n.inits++;
  pthread_mutex_unlock(&n.mu);
  return NVML_SUCCESS;
}

nvmlReturn_t nvmlShutdown(void) {
  pthread_mutex_lock(&n.mu);
  nvmlReturn_t r = n.inits > 0 ? NVML_SUCCESS : NVML_ERROR_UNINITIALIZED;
  if (n.inits > 0)
    n.inits--;
  pthread_mutex_unlock(&n.mu);
  return r;
}

const char *nvmlErrorString(nvmlReturn_t result) {
  switch (result) {
  case NVML_SUCCESS: return "Success";
  case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
  case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
  case NVML_ERROR_NOT_FOUND: return "Not Found";
  case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
  case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
  default: return "Unknown Error";
  }
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
  if (!inited())
    return NVML_ERROR_UNINITIALIZED;
  if (count == NULL)
    return NVML_ERROR_INVALID_ARGUMENT;
  *count = (unsigned)mbsi_machine_get()->n_gpus;
  return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
  if (!inited())
    return NVML_ERROR_UNINITIALIZED;
  nvmlReturn_t r = fault("nvmlDeviceGetHandleByIndex");
  if (r != NVML_SUCCESS)
    return r;
  mbsi_machine *m = mbsi_machine_get();
  if (device == NULL || index >= (unsigned)m->n_gpus)
    return NVML_ERROR_INVALID_ARGUMENT;
  if (atomic_load(&m->gpu[index].lost))
    return NVML_ERROR_GPU_IS_LOST;
  *device = handle_of((int)index);
  return NVML_SUCCESS;
}

#ifndef MBSI_NVML_OLD
/* "0000:65:00.0" or "00000000:65:00.0" (NVML's own form), any case: the
 * domain, bus, device and function as numbers. */
static int parse_bus(const char *s, unsigned v[4]) {
  char tail;
  return sscanf(s, "%x:%x:%x.%x%c", &v[0], &v[1], &v[2], &v[3], &tail) == 4;
}

nvmlReturn_t nvmlDeviceGetHandleByPciBusId_v2(const char *pciBusId, nvmlDevice_t *device) {
  if (!inited())
    return NVML_ERROR_UNINITIALIZED;
  nvmlReturn_t r = fault("nvmlDeviceGetHandleByPciBusId");
  if (r != NVML_SUCCESS)
    return r;
  unsigned want[4], have[4];
  if (pciBusId == NULL || device == NULL || !parse_bus(pciBusId, want))
    return NVML_ERROR_INVALID_ARGUMENT;
  mbsi_machine *m = mbsi_machine_get();
  for (int i = 0; i < m->n_gpus; i++)
    if (parse_bus(m->gpu[i].bus, have) && memcmp(want, have, sizeof(want)) == 0) {
      if (atomic_load(&m->gpu[i].lost))
        return NVML_ERROR_GPU_IS_LOST;
      *device = handle_of(i);
      return NVML_SUCCESS;
    }
  return NVML_ERROR_NOT_FOUND;
}
#endif

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
  if (!inited())
    return NVML_ERROR_UNINITIALIZED;
  int g = gpu_of(device);
  if (g < 0 || name == NULL || length == 0)
    return NVML_ERROR_INVALID_ARGUMENT;
  const char *s = mbsi_machine_get()->gpu[g].name;
  if (strlen(s) >= length)
    return NVML_ERROR_INSUFFICIENT_SIZE;
  snprintf(name, length, "%s", s);
  return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory) {
  if (!inited())
    return NVML_ERROR_UNINITIALIZED;
  nvmlReturn_t r = fault("nvmlDeviceGetMemoryInfo");
  if (r != NVML_SUCCESS)
    return r;
  int g = gpu_of(device);
  if (g < 0 || memory == NULL)
    return NVML_ERROR_INVALID_ARGUMENT;
  mbsi_machine *m = mbsi_machine_get();
  if (atomic_load(&m->gpu[g].lost))
    return NVML_ERROR_GPU_IS_LOST;
  mbsi_lock();
  mbsi_reap_locked(m);
  uint64_t used = mbsi_used_locked(m, g);
  mbsi_unlock();
  memory->total = m->gpu[g].total;
  memory->used = used;
  memory->free = used < memory->total ? memory->total - used : 0;
  return NVML_SUCCESS;
}

#ifndef MBSI_MINIMAL
static nvmlReturn_t procs(nvmlDevice_t device, unsigned int *infoCount, nvmlProcessInfo_t *infos) {
  if (!inited())
    return NVML_ERROR_UNINITIALIZED;
  nvmlReturn_t r = fault("nvmlDeviceGetComputeRunningProcesses");
  if (r == NVML_ERROR_INSUFFICIENT_SIZE && infoCount != NULL) {
    *infoCount += 1; /* as if one more process had appeared */
    return r;
  }
  if (r != NVML_SUCCESS)
    return r;
  int g = gpu_of(device);
  if (g < 0 || infoCount == NULL)
    return NVML_ERROR_INVALID_ARGUMENT;
  mbsi_machine *m = mbsi_machine_get();
  if (atomic_load(&m->gpu[g].lost))
    return NVML_ERROR_GPU_IS_LOST;
  mbsi_lock();
  mbsi_reap_locked(m);
  unsigned k = 0;
  for (int i = 0; i < MBSI_MAX_PROCS; i++) {
    const mbsi_proc *p = &m->proc[i];
    if (p->pid == 0 || atomic_load(&p->state) == MBSI_CHECKPOINTED ||
        (p->ctx[g] == 0 && p->dev[g] == 0))
      continue;
    if (infos != NULL && k < *infoCount) {
      infos[k].pid = (unsigned)p->pid;
      infos[k].usedGpuMemory = p->dev[g];
      infos[k].gpuInstanceId = infos[k].computeInstanceId = 0xFFFFFFFFu;
    }
    k++;
  }
  mbsi_unlock();
  if (k > *infoCount || (k > 0 && infos == NULL)) {
    *infoCount = k;
    return NVML_ERROR_INSUFFICIENT_SIZE;
  }
  *infoCount = k;
  return NVML_SUCCESS;
}

#ifndef MBSI_NVML_OLD
nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v2(nvmlDevice_t device,
                                                     unsigned int *infoCount,
                                                     nvmlProcessInfo_t *infos) {
  return procs(device, infoCount, infos);
}
#endif

nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t device,
                                                     unsigned int *infoCount,
                                                     nvmlProcessInfo_t *infos) {
  return procs(device, infoCount, infos);
}
#endif
