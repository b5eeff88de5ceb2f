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


/*
 * Device handles for the tensor engine: allocate device memory and pinned
 * host memory, copy between them. Device addresses are uint64_t (a CUdeviceptr
 * on CUDA; the host address on the host device). Only the host device is
 * served by this build's tensor engine; opening a CUDA device fails with
 * MB_ENODEV and a message.
 *
 * Thread-safety: a mb__dev may be used from several threads at once
 * (allocations, copies on distinct streams). Close it only when no call is
 * in flight.
 */
typedef struct mb__dev mb__dev;

/* Opens device kind:ordinal. MB_ENODEV with a message, MB_ENOMEM. */
int mb__dev_open(mb_device_kind kind, int ordinal, mb__dev **out, char *err, size_t err_len);
void mb__dev_close(mb__dev *d);
mb_device_kind mb__dev_kind(const mb__dev *d);
/* Memory of the device: total and free bytes. */
int mb__dev_mem_info(mb__dev *d, uint64_t *total, uint64_t *free_bytes, char *err, size_t err_len);

/* Alignment of every device allocation and of pinned host buffers. */
#define MB_DEV_ALIGN 4096u

/* Device memory: bytes (> 0) aligned to MB_DEV_ALIGN. MB_ENOMEM with a
 * message. Free with mb__dev_free (0 is ignored). */
int mb__dev_alloc(mb__dev *d, size_t bytes, uint64_t *dptr, char *err, size_t err_len);
void mb__dev_free(mb__dev *d, uint64_t dptr);

/* Pinned host memory (host device: aligned memory) of bytes, aligned to
 * MB_DEV_ALIGN, suitable for O_DIRECT reads and fast copies. */
int mb__dev_host_alloc(mb__dev *d, size_t bytes, void **out, char *err, size_t err_len);
void mb__dev_host_free(mb__dev *d, void *p);

/* Copies n bytes; stream picks a copy queue (any int >= 0; copies on one
 * stream are ordered). Both return when the copy is complete. MB_EIO. */
int mb__dev_h2d(mb__dev *d, uint64_t dst, const void *src, size_t n, int stream, char *err,
                size_t err_len);
int mb__dev_d2h(mb__dev *d, void *dst, uint64_t src, size_t n, int stream, char *err,
                size_t err_len);

/* Aligned allocation through the library allocator (so mb_set_allocator
 * sees it); free with mb__aligned_free. NULL on failure. */
void *mb__aligned_alloc(size_t align, size_t bytes);
void mb__aligned_free(void *p);

#endif /* MB_DEVICE_H */
