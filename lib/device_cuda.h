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
int mb__cuda_mem_info(mb__cuda *c, uint64_t *total, uint64_t *free_bytes, char *err,
                      size_t err_len);
int mb__cuda_alloc(mb__cuda *c, size_t bytes, uint64_t *dptr, char *err, size_t err_len);
void mb__cuda_free(mb__cuda *c, uint64_t dptr);
int mb__cuda_host_alloc(mb__cuda *c, size_t bytes, void **out, char *err, size_t err_len);
void mb__cuda_host_free(mb__cuda *c, void *p);
int mb__cuda_copy(mb__cuda *c, int to_device, uint64_t dptr, void *host, size_t n, int stream,
                  char *err, size_t err_len);

#endif /* MB_DEVICE_CUDA_H */
