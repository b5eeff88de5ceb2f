/*
 * rss.h - the process's resident memory for the unit tests that check
 * memory goes back after an unload, and whether a sanitizer makes that
 * figure meaningless (TSan keeps shadow pages of unmapped memory; ASan
 * keeps freed blocks in its quarantine).
 */
#ifndef MB_TEST_RSS_H
#define MB_TEST_RSS_H

#include <stdint.h>
#include <stdio.h>
#include <unistd.h>

#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
#define RSS_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer) || __has_feature(address_sanitizer)
#define RSS_SANITIZED 1
#endif
#endif
#ifndef RSS_SANITIZED
#define RSS_SANITIZED 0
#endif

/* Resident bytes of this process (/proc/self/statm), 0 when unknown. */
static inline uint64_t rss_bytes(void) {
  FILE *f = fopen("/proc/self/statm", "r");
  unsigned long long size = 0, resident = 0;
  if (f == NULL)
    return 0;
  if (fscanf(f, "%llu %llu", &size, &resident) != 2)
    resident = 0;
  fclose(f);
  return resident * (uint64_t)sysconf(_SC_PAGESIZE);
}

#endif /* MB_TEST_RSS_H */
