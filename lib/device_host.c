/*
 * device_host.c - the host device: host memory standing in for a GPU, so
 * that the core, the tensor engine and the daemon run every path on a
 * machine without one. Its capacity is the machine's RAM unless a capacity
 * or budget is configured.
 */
#include <stdio.h>
#include <string.h>
#include <sys/sysinfo.h>

#include "modelbuf/modelbuf.h"
#include "alloc.h"
#include "device.h"

int mb__host_mem_info(uint64_t *total, uint64_t *free_bytes) {
  uint64_t t = 0, avail = 0;
  int have_avail = 0;
  FILE *f = fopen("/proc/meminfo", "re");
  if (f != NULL) {
    char line[256];
    unsigned long long kb;
    while (fgets(line, sizeof(line), f)) {
      if (sscanf(line, "MemTotal: %llu kB", &kb) == 1)
        t = (uint64_t)kb * 1024;
      else if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) {
        avail = (uint64_t)kb * 1024;
        have_avail = 1;
      }
    }
    fclose(f);
  }
  if (t == 0 || !have_avail) {
    struct sysinfo si;
    if (sysinfo(&si) != 0)
      return MB_EIO;
    if (t == 0)
      t = (uint64_t)si.totalram * si.mem_unit;
    if (!have_avail)
      avail = ((uint64_t)si.freeram + si.bufferram) * si.mem_unit;
  }
  if (total)
    *total = t;
  if (free_bytes)
    *free_bytes = avail;
  return 0;
}

int mb__device_mem_info(mb_device_kind kind, int ordinal, uint64_t *total, uint64_t *free_bytes,
                        char *err, size_t err_len) {
  if (kind == MB_DEVICE_HOST) {
    int rc = mb__host_mem_info(total, free_bytes);
    if (rc != 0)
      mb__set_err(err, err_len, "cannot read host memory size");
    return rc;
  }
  mb__set_err(err, err_len,
              "cuda:%d: CUDA devices are not measured by this build; give capacity_bytes", ordinal);
  return MB_ENODEV;
}
