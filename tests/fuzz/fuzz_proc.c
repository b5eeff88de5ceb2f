/*
 * fuzz_proc.c - libFuzzer target for what the process supervisor reads
 * from outside: a /proc/PID/stat line (mbd_proc_parse_stat), an
 * environment block (mbd_env_block_has), a state file left by a killed
 * daemon (mbd_state_parse), and a worker's output as numbered log lines
 * (logring). Every entry the state file parser returns must name a pid
 * above 1, a tag entry, and a cgroup this daemon would make or none.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "logring.h"
#include "proctree.h"
#include "supervisor.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *text = (const char *)data;
  mbd_proc p;
  if (mbd_proc_parse_stat(text, size, 4096, &p) == 0 && p.pid <= 0)
    abort();
  (void)mbd_env_block_has(text, size, "MODELBUF_WORKER_ID=0123456789abcdef-1");
  mbd_leftover *lo = NULL;
  size_t n = 0;
  int prev = 0;
  if (mbd_state_parse(text, size, "boot", &lo, &n, &prev) == 0) {
    for (size_t i = 0; i < n; i++) {
      if (lo[i].pid <= 1 || strncmp(lo[i].entry, MBD_TAG_VAR "=", strlen(MBD_TAG_VAR) + 1) != 0)
        abort();
      if (lo[i].cgroup[0] && (lo[i].cgroup[0] != '/' || strstr(lo[i].cgroup, "/mbd-") == NULL))
        abort();
    }
    free(lo);
  }
  /* The input as a worker's output, line by line, read back in pieces. */
  mbd_logring *r;
  if (mbd_logring_new(2048, &r) != 0)
    return 0;
  size_t start = 0;
  for (size_t i = 0; i <= size; i++)
    if (i == size || data[i] == '\n') {
      mbd_logring_add(r, (i & 1) ? MBD_LOG_OUTPUT : MBD_LOG_RESTART, text + start, i - start);
      start = i + 1;
    }
  char out[300];
  uint64_t next = 0, last = 0;
  while (mbd_logring_since(r, next, out, sizeof(out), &next) > 0) {
    if (next <= last || strlen(out) >= sizeof(out))
      abort();
    last = next;
  }
  mbd_logring_tail(r, 0, out, sizeof(out));
  mbd_logring_free(r);
  return 0;
}
