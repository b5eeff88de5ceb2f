/*
 * units.h - durations and sizes as people write them, for the daemon's
 * configuration, the CLI's flags and the HTTP headers
 * (X-Modelbuf-Keep-Alive: 10m).
 *
 * Durations: "250ms", "30s", "5m", "1h", "2d", combinations such as "1h30m"
 * or "1m30.5s", a bare number of seconds ("90", "1.5"), "0", and, where the
 * caller allows it, forever: "-1", "forever", "inf", "infinite", "never".
 * The result is whole milliseconds; a fraction of a millisecond rounds up so
 * that a non-zero duration never becomes 0.
 *
 * Sizes: a number with an optional unit, with or without a space:
 * binary KiB/MiB/GiB/TiB/PiB (also Ki/Mi/Gi/Ti/Pi), decimal KB/MB/GB/TB/PB,
 * "B" or no unit for bytes. Units are case-insensitive; a decimal number
 * ("1.5GiB") is allowed with a unit and rounds down to whole bytes. A single
 * letter (K, M, G, T) is refused as ambiguous.
 *
 * Every parser checks for overflow and returns MB_EINVAL with a short reason
 * in err (never partial results).
 */
#ifndef MBD_UNITS_H
#define MBD_UNITS_H

#include <stddef.h>
#include <stdint.h>

#include "modelbuf/modelbuf.h"

/* Flags for mbd_parse_duration_ms. */
#define MBD_DUR_FOREVER 0x1 /* accept -1/forever/inf/never: result MB_FOREVER */

/*
 * Parses a duration into milliseconds. Leading and trailing blanks are
 * ignored. Errors: MB_EINVAL (bad syntax, negative, forever when not
 * allowed, too large for int64 milliseconds), reason in err.
 */
int mbd_parse_duration_ms(const char *s, unsigned flags, int64_t *out_ms, char *err,
                          size_t err_len) MB_WUR;

/*
 * Parses a size into bytes. Errors: MB_EINVAL (bad syntax, negative, unknown
 * or ambiguous unit, over UINT64_MAX bytes), reason in err.
 */
int mbd_parse_size(const char *s, uint64_t *out_bytes, char *err, size_t err_len) MB_WUR;

/*
 * Writes a duration the way the parser reads it back: "forever" for
 * MB_FOREVER, "0", "250ms", "5m", "1h30m", "1m30.5s". Returns buf.
 * A buffer of 32 bytes always suffices.
 */
const char *mbd_format_duration(int64_t ms, char *buf, size_t len);

/*
 * Writes a size: exact binary units when they fit ("6GiB", "512MiB"),
 * else bytes ("1000000000"). Returns buf. 32 bytes always suffice.
 */
const char *mbd_format_size(uint64_t bytes, char *buf, size_t len);

/* Flags for mbd_client_duration_ms. */
#define MBD_CD_ZERO 0x1    /* 0 is allowed */
#define MBD_CD_FOREVER 0x2 /* -1 / forever is allowed: MB_FOREVER */
/* The longest duration a client may ask for (a year). */
#define MBD_CLIENT_DURATION_MAX_MS (365LL * 24 * 3600 * 1000)

/*
 * A duration a client sent (a header, a JSON field called name): as
 * mbd_parse_duration_ms, then range-checked: more than 0 (or 0 with
 * MBD_CD_ZERO), at most a year, forever only with MBD_CD_FOREVER. Errors:
 * MB_EINVAL with a message that names name.
 */
int mbd_client_duration_ms(const char *name, const char *s, unsigned flags, int64_t *out_ms,
                           char *err, size_t err_len) MB_WUR;

/* The same for a number of seconds (a JSON number): a fraction of a
 * millisecond is refused rather than rounded to 0 or to forever. */
int mbd_client_seconds_ms(const char *name, double seconds, unsigned flags, int64_t *out_ms,
                          char *err, size_t err_len) MB_WUR;

#endif /* MBD_UNITS_H */
