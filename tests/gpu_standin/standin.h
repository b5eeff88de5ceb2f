/*
 * standin.h - what the stand-in libcuda.so.1 offers the tests besides the
 * driver API (README.md). A test reaches these with dlsym on the library
 * modelbuf already loaded (dlopen("libcuda.so.1", RTLD_NOLOAD)), never by
 * linking it: modelbuf must find the stand-in exactly as it finds a driver.
 */
#ifndef MBSI_STANDIN_H
#define MBSI_STANDIN_H

#include <stddef.h>

/* Live handles of this process: kind "ctx" (primary context retains),
 * "stream", "event", "alloc" (cuMemAlloc), "host" (cuMemHostAlloc),
 * "register" (cuMemHostRegister), "reserve" (cuMemAddressReserve), "vmem"
 * (cuMemCreate handles not released), "map" (cuMemMap), or "all". */
int mbsi_live(const char *kind);
/* The same as JSON members ("ctx": 0, ...), plus reclaimed and misuses. */
void mbsi_live_text(char *buf, size_t len);
/* Calls of an entry point so far (its name without _v2). */
unsigned mbsi_calls(const char *name);
/* Misuses of the driver API seen (and the last one's text into last). */
int mbsi_misuses(char *last, size_t len);
/* Handles a destroyed context still held, freed by the stand-in for it. */
int mbsi_reclaimed(void);
/* Replaces the fault rules (machine.h) and zeroes the count of faults
 * fired. -1 on a malformed spec. */
int mbsi_fail(const char *spec);
/* Faults fired since the last mbsi_fail. */
unsigned mbsi_fired(void);
/* Marks machine GPU gpu lost (1) or back (0), for every process. */
void mbsi_lose(int gpu, int lost);
/* The most a stream waits before each operation (microseconds, random). */
void mbsi_set_copy_delay_us(unsigned us);

#endif /* MBSI_STANDIN_H */
