/*
 * util.c - helpers shared by the CLI's subcommands: size parsing,
 * human-readable byte counts, the clock.
 */
#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "modelbuf/modelbuf.h"
#include "cli.h"

double cli_now_s(void) {
  return (double)mb_clock_monotonic(NULL) / 1e9;
}

double cli_now_ms(void) {
  return (double)mb_clock_monotonic(NULL) / 1e6;
}

int cli_parse_size(const char *s, uint64_t *out) {
  uint64_t whole = 0, frac_num = 0, frac_den = 1, mult = 1;
  const char *p = s;
  if (!isdigit((unsigned char)*p))
    return -1;
  for (; isdigit((unsigned char)*p); p++) {
    if (whole > (UINT64_MAX - 9) / 10)
      return -1;
    whole = whole * 10 + (uint64_t)(*p - '0');
  }
  if (*p == '.') {
    p++;
    if (!isdigit((unsigned char)*p))
      return -1;
    for (; isdigit((unsigned char)*p); p++) {
      if (frac_den < 1000000000ull) {
        frac_num = frac_num * 10 + (uint64_t)(*p - '0');
        frac_den *= 10;
      }
    }
  }
  static const struct {
    const char *suffix;
    uint64_t mult;
  } units[] = {
    {"", 1}, {"B", 1},
    {"K", 1ull << 10}, {"KiB", 1ull << 10}, {"KB", 1000ull},
    {"M", 1ull << 20}, {"MiB", 1ull << 20}, {"MB", 1000000ull},
    {"G", 1ull << 30}, {"GiB", 1ull << 30}, {"GB", 1000000000ull},
    {"T", 1ull << 40}, {"TiB", 1ull << 40}, {"TB", 1000000000000ull},
  };
  size_t i;
  for (i = 0; i < sizeof units / sizeof units[0]; i++)
    if (strcasecmp(p, units[i].suffix) == 0 && (units[i].suffix[0] || *p == '\0'))
      break;
  if (i == sizeof units / sizeof units[0])
    return -1;
  mult = units[i].mult;
  if (whole > UINT64_MAX / mult)
    return -1;
  uint64_t v = whole * mult;
  /* frac_num / frac_den of mult, rounded down; frac_den <= 1e9, so split
   * mult to avoid overflow. */
  uint64_t frac = mult / frac_den * frac_num + mult % frac_den * frac_num / frac_den;
  if (v > UINT64_MAX - frac)
    return -1;
  *out = v + frac;
  return 0;
}

static const char *const binary_unit[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};

/* n in the largest binary unit that leaves at least 1: its index. */
static int binary_scale(uint64_t n, double *v) {
  int u = 0;
  *v = (double)n;
  while (*v >= 1024.0 && u < 6) {
    *v /= 1024.0;
    u++;
  }
  return u;
}

const char *cli_fmt_size(uint64_t n, char *buf, size_t len) {
  double v;
  int u = binary_scale(n, &v);
  if (u == 0)
    snprintf(buf, len, "%llu B", (unsigned long long)n);
  else if (v < 9.995)
    snprintf(buf, len, "%.2f %s", v, binary_unit[u]);
  else if (v < 99.95)
    snprintf(buf, len, "%.1f %s", v, binary_unit[u]);
  else
    snprintf(buf, len, "%.0f %s", v, binary_unit[u]);
  return buf;
}

const char *cli_fmt_bytes(uint64_t n, char *buf, size_t len) {
  double v;
  int u = binary_scale(n, &v);
  if (u == 0)
    snprintf(buf, len, "%llu B", (unsigned long long)n);
  else
    snprintf(buf, len, "%.2f %s", v, binary_unit[u]);
  return buf;
}
