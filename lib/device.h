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

/* The memory of a device without a handle: mb_device_mem_info, public
 * (modelbuf.h). */

/* The PCI bus id ("0000:65:00.0") of CUDA ordinal as this process's driver
 * numbers GPUs (after CUDA_VISIBLE_DEVICES), into buf (16 to 256 bytes):
 * how NVML finds the same GPU. MB_ENOTSUP when it cannot be had here (no
 * CUDA build, no driver or GPU, a driver without the call); MB_ENODEV when
 * the driver has no such GPU or fails to answer for it (a lost GPU). */
int mb__device_pci_bus_id(int ordinal, char *buf, size_t len);

/* Host device: memory from /proc/meminfo (sysinfo as a fallback). */
int mb__host_mem_info(uint64_t *total, uint64_t *free_bytes);


/*
 * Device handles for the tensor engine: allocate device memory and pinned
 * host memory, copy between them. Device addresses are uint64_t (a CUdeviceptr
 * on CUDA; the host address on the host device). A CUDA device is served by
 * device_cuda.c when the build had cuda.h and the driver is present at run
 * time; mb__dev_open_fallback() gives the host device where it is not.
 *
 * Thread-safety: a mb__dev may be used from several threads at once
 * (allocations, copies on distinct streams). Close it only when no call is
 * in flight.
 */
typedef struct mb__dev mb__dev;

/* Opens device kind:ordinal. MB_ENODEV with a message, MB_ENOMEM. */
int mb__dev_open(mb_device_kind kind, int ordinal, mb__dev **out, char *err, size_t err_len);

/*
 * As mb__dev_open, but where a CUDA device is asked for and the machine has
 * no CUDA driver or no usable GPU (or the build has no CUDA support), opens
 * the host device instead (DESIGN §2, §4): it returns 0 and writes the
 * reason into err ("cuda:0: ...; using the host device (host memory)
 * instead") for the caller to report (the library prints nothing); err is
 * left as it was when no fallback happened. A CUDA ordinal that does not
 * exist on a machine that does have GPUs is a configuration error:
 * MB_ENODEV as mb__dev_open. mb__dev_kind() tells which device was opened.
 */
int mb__dev_open_fallback(mb_device_kind kind, int ordinal, mb__dev **out, char *err,
                          size_t err_len);

/* Number of times mb__dev_open_fallback gave the host device in place of a
 * CUDA device in this process (for tests and status lines). */
unsigned mb__dev_fallback_count(void);

/*
 * A process-wide handle of kind:ordinal (with the fallback above), opened on
 * first use and kept until the process exits; for callers that name a
 * device but hold no handle (the plugin host's device memory services).
 * Thread-safe. Never close it.
 */
int mb__dev_shared(mb_device_kind kind, int ordinal, mb__dev **out, char *err, size_t err_len);

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

/* Faults in [dptr, dptr + bytes) of a host-device allocation (page-aligned)
 * ahead of its use, as writable memory; pages already present are left as
 * they are, so it may run while other threads write to the range.
 * MB_ENOTSUP on CUDA and where the kernel lacks MADV_POPULATE_WRITE. */
int mb__dev_populate(mb__dev *d, uint64_t dptr, size_t bytes);

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

/*
 * Asynchronous copies. Each starts a copy of n bytes on stream and returns
 * without waiting; *ev is the copy's completion event. Copies on several
 * streams run concurrently; the caller overlaps them and waits for each
 * event with mb__dev_event_wait, exactly once, before it reuses or frees
 * either buffer (also on its error paths). On the host device the copy is
 * done before the call returns and *ev is NULL (an event already complete).
 * On failure nothing is in flight, *ev is NULL and the result is MB_EIO.
 * Host buffers from mb__dev_host_alloc / mb__dev_pinned_alloc make the copy
 * truly asynchronous on CUDA; pageable memory works but serializes.
 */
typedef struct mb__dev_event mb__dev_event;
int mb__dev_h2d_async(mb__dev *d, uint64_t dst, const void *src, size_t n, int stream,
                      mb__dev_event **ev, char *err, size_t err_len);
int mb__dev_d2h_async(mb__dev *d, void *dst, uint64_t src, size_t n, int stream,
                      mb__dev_event **ev, char *err, size_t err_len);
/* Waits until ev's copy is complete and frees ev (NULL: 0 at once).
 * MB_EIO with a message when the copy failed. */
int mb__dev_event_wait(mb__dev *d, mb__dev_event *ev, char *err, size_t err_len);

/*
 * Long-lived pinned host memory (a model's offload copy): bytes, aligned to
 * MB_DEV_ALIGN. On CUDA it is allocated, then page-locked with
 * cuMemHostRegister one slice of MB_DEV_PIN_SLICE bytes at a time by up to
 * `threads` threads in parallel, each touching its slice first. On the host
 * device it is aligned memory whose pages are touched in parallel the same
 * way and mlock()ed when RLIMIT_MEMLOCK allows it (a refusal is not an
 * error: the buffer is then simply not locked). A copy to or from it should
 * not cross a multiple of MB_DEV_PIN_SLICE from its start (each slice is
 * its own registration). The buffer takes whole pages of its own (bytes
 * rounded up), so no registration or lock shares a page with other memory.
 * MB_ENOMEM with a message. Free with
 * mb__dev_pinned_free and the same bytes.
 */
#define MB_DEV_PIN_SLICE (64u << 20)
int mb__dev_pinned_alloc(mb__dev *d, size_t bytes, int threads, void **out, char *err,
                         size_t err_len);
void mb__dev_pinned_free(mb__dev *d, void *p, size_t bytes);

/*
 * Copies bytes between device memory at dptr and a buffer from
 * mb__dev_pinned_alloc (host, the same bytes), to the device when
 * to_device, in chunks of MB_DEV_COPY_CHUNK (each inside one pinned slice)
 * on MB_DEV_COPY_STREAMS streams, up to MB_DEV_COPY_IN_FLIGHT in flight:
 * the offload and restore of a model. Returns only once every copy it
 * started is complete, also on error (the caller frees one of the two
 * buffers next). progress (may be NULL) gets (user, bytes done, bytes) as
 * chunks complete, in order. MB_EIO with a message.
 */
#define MB_DEV_COPY_CHUNK (MB_DEV_PIN_SLICE / 4)
#define MB_DEV_COPY_IN_FLIGHT 8
#define MB_DEV_COPY_STREAMS 4
int mb__dev_copy_pinned(mb__dev *d, int to_device, uint64_t dptr, void *host, size_t bytes,
                        void (*progress)(void *user, uint64_t done, uint64_t total), void *user,
                        char *err, size_t err_len);

/*
 * A stable device address range (the tensors backend's stable_addresses
 * option): a virtual range reserved once, backed by device memory while
 * mapped and released while not, so the address stays the same across
 * unmap/map. On CUDA: cuMemAddressReserve (size rounded up to the
 * allocation granularity), cuMemCreate + cuMemMap + cuMemSetAccess to map,
 * cuMemUnmap + cuMemRelease to unmap, cuMemAddressFree at free. On the host
 * device: mmap(PROT_NONE) reserves, an anonymous MAP_FIXED read-write
 * mapping backs it (zero pages), a MAP_FIXED PROT_NONE mapping releases the
 * pages. Contents do not survive an unmap. Errors: MB_ENOMEM, MB_ENOTSUP
 * (a driver or GPU without virtual memory management), with a message.
 * Not thread-safe per range: its owner serializes map/unmap/free.
 */
typedef struct mb__dev_vrange mb__dev_vrange;
int mb__dev_vrange_new(mb__dev *d, size_t bytes, mb__dev_vrange **out, char *err,
                       size_t err_len);
uint64_t mb__dev_vrange_addr(const mb__dev_vrange *r);
/* Bytes reserved (bytes rounded up to the granularity). */
size_t mb__dev_vrange_bytes(const mb__dev_vrange *r);
int mb__dev_vrange_mapped(const mb__dev_vrange *r);
/* Backs the range with device memory (a no-op when mapped). */
int mb__dev_vrange_map(mb__dev *d, mb__dev_vrange *r, char *err, size_t err_len);
/* Releases the memory; the range stays reserved (a no-op when unmapped). */
void mb__dev_vrange_unmap(mb__dev *d, mb__dev_vrange *r);
/* Unmaps if mapped and frees the reservation. NULL is ignored. */
void mb__dev_vrange_free(mb__dev *d, mb__dev_vrange *r);

/* Aligned allocation through the library allocator (so mb_set_allocator
 * sees it); free with mb__aligned_free. NULL on failure. */
void *mb__aligned_alloc(size_t align, size_t bytes);
void mb__aligned_free(void *p);

#endif /* MB_DEVICE_H */
