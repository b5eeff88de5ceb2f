/*
 * device.h - the device interface, private to libmodelbuf.
 *
 * A device is where models live while READY: a CUDA GPU, or the host device
 * (the same interface over host memory) so every path of the library runs
 * on a machine without a GPU. The core only needs memory figures; the
 * tensor engine also allocates and copies through these functions.
 */
#ifndef MB_DEVICE_H
#define MB_DEVICE_H

#include <stddef.h>
#include <stdint.h>

#include "modelbuf/modelbuf.h"

/*
 * Memory of a device: total and free bytes (free may be NULL). The host
 * device reports the machine's RAM (MemTotal / MemAvailable). Errors:
 * MB_ENODEV with a message when the device does not exist or no driver is
 * available.
 */
int mb__device_mem_info(mb_device_kind kind, int ordinal, uint64_t *total, uint64_t *free_bytes,
                        char *err, size_t err_len);

/* Host device: memory from /proc/meminfo (sysinfo as a fallback). */
int mb__host_mem_info(uint64_t *total, uint64_t *free_bytes);

#endif /* MB_DEVICE_H */
