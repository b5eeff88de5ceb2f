/*
 * mb_internal.h - the part of libmodelbuf's private interface that the
 * other rooms of this repository may use, and the only header of lib/
 * they include (as curl's tool uses curlx.h and nothing else of lib/).
 * Everything else they need is public API (include/modelbuf/). It comes
 * with the static library (mb_internal_dep in lib/meson.build);
 * libmodelbuf.so exports none of it, and nothing here is installed.
 *
 * What, and who uses it:
 *   mb__set_err, mb__fail      the error-buffer helpers: the daemon, the
 *   (alloc.h)                  simulator, `modelbuf mkmodel`. (The
 *                              allocator there is the library's own: the
 *                              others use malloc.)
 *   device handles (device.h)  `modelbuf bench load|offload|restore`
 *                              measures the library's own copy paths; the
 *                              daemon's NVML finds a GPU by its PCI bus id
 *                              (mb__device_pci_bus_id).
 *   the loader (tensor/loader.h)  `modelbuf bench load` measures it
 *                              against plain reads.
 *   dtype codes (tensor/dtype.h)  `modelbuf mkmodel` writes both formats.
 *   the admission check        the simulator runs it for
 *                              tests/unit/test_admission.c (admit.c).
 * A new user of an internal function adds it here, with its reason, or
 * makes it public API with docs.
 */
#ifndef MB_INTERNAL_H
#define MB_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "modelbuf/modelbuf.h"
#include "../alloc.h"
#include "../device.h"
#include "../tensor/dtype.h"
#include "../tensor/loader.h"

/*
 * The admission check (lib/admit.c) of ctx: on, every decision an
 * admission shortcut makes is planned again in full and compared (the
 * build option admission_check turns it on for every context, and aborts
 * on a difference). Thread-safe.
 */
void mb__admission_check(mb_ctx *ctx, int on);

/* What the check saw so far. */
typedef struct mb__admit_stats {
  uint64_t auto_blocked; /* decisions checked: "nothing to do" of auto_blocked */
  uint64_t any_blocked;  /* models skipped by an any_blocked pass */
  uint64_t planned;      /* decisions of the planning itself (its fail caches) */
  uint64_t bound_wait;   /* models bound to a device skipped as bound_wait said */
  uint64_t differ;       /* of them, different from the full planning */
  char first[512];       /* the first difference, described */
} mb__admit_stats;

void mb__admission_check_result(mb_ctx *ctx, mb__admit_stats *out);

/*
 * The cost policy with each model's use rate given instead of measured:
 * rate(arg, user) for the model's backend argument (any unit: the ranks
 * only compare). The simulator's oracle policy, the true rates of a whole
 * trace, which no online policy knows. NULL: measured again. Thread-safe.
 */
void mb__cost_rate_oracle(mb_ctx *ctx, double (*rate)(void *arg, void *user), void *arg);

#endif /* MB_INTERNAL_H */
