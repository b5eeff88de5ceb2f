/*
 * device_cuda.h - private to libmodelbuf: the CUDA device of the tensor
 * engine (driver API loaded with dlopen; built when cuda.h is present).
 * device_host.c dispatches mb__dev_* calls here for a CUDA device.
 */
#ifndef MB_DEVICE_CUDA_H
#define MB_DEVICE_CUDA_H

#include <stddef.h>
#include <stdint.h>

typedef struct mb__cuda mb__cuda;

/* Opens CUDA device ordinal (primary context, copy streams). MB_ENODEV with
 * a message when there is no driver or no such device. */
int mb__cuda_open(int ordinal, mb__cuda **out, char *err, size_t err_len);
void mb__cuda_close(mb__cuda *c);
/* Total memory of CUDA ordinal (cuDeviceTotalMem: no context is created).
 * MB_ENODEV as mb__cuda_open; MB_ENOTSUP when the driver lacks the call. */
int mb__cuda_total_mem(int ordinal, uint64_t *total, char *err, size_t err_len);
int mb__cuda_mem_info(mb__cuda *c, uint64_t *total, uint64_t *free_bytes, char *err,
                      size_t err_len);
int mb__cuda_alloc(mb__cuda *c, size_t bytes, uint64_t *dptr, char *err, size_t err_len);
void mb__cuda_free(mb__cuda *c, uint64_t dptr);
int mb__cuda_host_alloc(mb__cuda *c, size_t bytes, void **out, char *err, size_t err_len);
void mb__cuda_host_free(mb__cuda *c, void *p);
int mb__cuda_copy(mb__cuda *c, int to_device, uint64_t dptr, void *host, size_t n, int stream,
                  char *err, size_t err_len);

/* 1 when the driver is loaded and at least one GPU is visible; else 0 with
 * the reason in why (may be NULL). */
int mb__cuda_usable(char *why, size_t why_len);

/* The PCI bus id ("0000:65:00.0") of CUDA ordinal, into buf (16 to 256
 * bytes). MB_ENOTSUP without a usable driver, or when the driver lacks the
 * call; MB_ENODEV when the driver has no such GPU or fails to answer. */
int mb__cuda_pci_bus_id(int ordinal, char *buf, size_t len);

/* The copy started on a stream, then an event recorded after it into *ev
 * (a CUevent); mb__cuda_event_wait synchronizes it and gives it back. */
int mb__cuda_copy_async(mb__cuda *c, int to_device, uint64_t dptr, void *host, size_t n,
                        int stream, void **ev, char *err, size_t err_len);
int mb__cuda_event_wait(mb__cuda *c, void *ev, char *err, size_t err_len);

/* Page-locks [p, p+bytes) (cuMemHostRegister, portable) from any thread;
 * unregister with the same p. */
int mb__cuda_host_register(mb__cuda *c, void *p, size_t bytes, char *err, size_t err_len);
void mb__cuda_host_unregister(mb__cuda *c, void *p);

/* Virtual memory management (device.h, mb__dev_vrange): *bytes is rounded
 * up to the allocation granularity by reserve; map creates and maps one
 * physical allocation over the whole range (its handle into *handle). */
int mb__cuda_va_reserve(mb__cuda *c, size_t *bytes, uint64_t *addr, char *err, size_t err_len);
int mb__cuda_va_map(mb__cuda *c, uint64_t addr, size_t bytes, uint64_t *handle, char *err,
                    size_t err_len);
void mb__cuda_va_unmap(mb__cuda *c, uint64_t addr, size_t bytes, uint64_t handle);
void mb__cuda_va_free(mb__cuda *c, uint64_t addr, size_t bytes);

#endif /* MB_DEVICE_CUDA_H */
