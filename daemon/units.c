/*
 * units.c - parsers and formatters for durations and sizes (see units.h).
 *
 * Both parsers work on integers only: the integer part and up to nine
 * fraction digits are multiplied out with overflow checks, so "1.5GiB" is
 * exact and a 20-digit number is refused rather than wrapped. Floating point
 * would round silently at the sizes GPUs have.
 */
#include "units.h"

#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "mb_internal.h"

#define FRAC_DIGITS_MAX 9 /* fraction digits kept; further ones only round */

/*
 * A decimal number at *p: integer part, and up to FRAC_DIGITS_MAX fraction
 * digits as frac / 10^frac_digits. frac_more is set when further non-zero
 * digits were dropped. Advances *p. Returns 0, or -1 without digits or on
 * integer overflow (*overflow set).
 */
typedef struct number {
  uint64_t whole;
  uint64_t frac;
  uint64_t frac_den; /* 10^digits kept, 1 when no fraction */
  int frac_more;
  int has_point;
} number;

static int parse_number(const char **p, number *n, int *overflow) {
  const char *s = *p;
  int digits = 0;

  memset(n, 0, sizeof(*n));
  n->frac_den = 1;
  *overflow = 0;
  while (isdigit((unsigned char)*s)) {
    uint64_t d = (uint64_t)(*s - '0');
    if (__builtin_mul_overflow(n->whole, 10, &n->whole) ||
        __builtin_add_overflow(n->whole, d, &n->whole)) {
      *overflow = 1;
      return -1;
    }
    s++;
    digits++;
  }
  if (*s == '.') {
    int kept = 0;
    n->has_point = 1;
    s++;
    while (isdigit((unsigned char)*s)) {
      if (kept < FRAC_DIGITS_MAX) {
        n->frac = n->frac * 10 + (uint64_t)(*s - '0');
        n->frac_den *= 10;
        kept++;
      } else if (*s != '0') {
        n->frac_more = 1;
      }
      s++;
      digits++;
    }
  }
  if (digits == 0)
    return -1;
  *p = s;
  return 0;
}

/* whole*mult + frac*mult/frac_den, rounding the fraction down (or up). */
static int scale(const number *n, uint64_t mult, int round_up, uint64_t *out) {
  uint64_t v, f, q = mult / n->frac_den, r = mult % n->frac_den;

  if (__builtin_mul_overflow(n->whole, mult, &v))
    return -1;
  /* frac < frac_den <= 1e9, so neither product below overflows. */
  f = q * n->frac + (r * n->frac) / n->frac_den;
  if (round_up && ((r * n->frac) % n->frac_den != 0 || n->frac_more))
    f++;
  if (__builtin_add_overflow(v, f, out))
    return -1;
  return 0;
}

static const char *skip_blanks(const char *s) {
  while (*s == ' ' || *s == '\t')
    s++;
  return s;
}

static size_t trimmed_len(const char *s) {
  size_t len = strlen(s);
  while (len > 0 && (s[len - 1] == ' ' || s[len - 1] == '\t'))
    len--;
  return len;
}

static int is_forever_word(const char *s, size_t len) {
  static const char *const words[] = {"-1", "forever", "inf", "infinite", "infinity", "never"};
  for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++)
    if (strlen(words[i]) == len && strncasecmp(s, words[i], len) == 0)
      return 1;
  return 0;
}

/* The units of durations and the other ways people write them. */
typedef struct dur_unit {
  const char *name; /* as written in a duration */
  uint64_t ms;
  const char *others; /* '|'-separated, matched ignoring case */
} dur_unit;

static const dur_unit dur_units[] = {
    {"ms", 1, "msec|msecs|millis|millisecond|milliseconds"},
    {"s", 1000, "sec|secs|second|seconds"},
    {"m", 60 * 1000, "min|mins|minute|minutes"},
    {"h", 3600 * 1000, "hr|hrs|hour|hours"},
    {"d", 24 * 3600 * 1000, "day|days"},
};

static int in_words(const char *list, const char *w, size_t wlen) {
  for (const char *p = list; *p;) {
    size_t n = strcspn(p, "|");
    if (n == wlen && strncasecmp(p, w, n) == 0)
      return 1;
    p += n + (p[n] == '|');
  }
  return 0;
}

/*
 * The text [p, end) with [at, at + cut) replaced by put, into buf: how a
 * mistyped value should have been written.
 */
static const char *rewrite(const char *p, const char *end, const char *at, size_t cut,
                           const char *put, char *buf, size_t len) {
  snprintf(buf, len, "%.*s%s%.*s", (int)(at - p), p, put, (int)(end - (at + cut)), at + cut);
  return buf;
}

/* "1,5h": a fraction written with a comma at q, just after a number of
 * [p, end). Returns MB_EINVAL with a message, or 0 when q is not one. */
static int comma_slip(const char *what, const char *p, const char *end, const char *q, char *err,
                      size_t err_len) {
  char fix[96];
  if (*q != ',' || !isdigit((unsigned char)q[1]))
    return 0;
  return mb__fail(MB_EINVAL, err, err_len,
                  "bad %s '%.*s': a fraction takes '.', not ',' (write '%s')", what, (int)(end - p),
                  p, rewrite(p, end, q, 1, ".", fix, sizeof(fix)));
}

/* The unit a duration's unit word [u, u + len) means ("ms" for "msec",
 * "m" for "Minutes"), or NULL. */
static const dur_unit *dur_unit_of(const char *u, size_t len, int exact) {
  for (size_t i = 0; i < sizeof(dur_units) / sizeof(dur_units[0]); i++) {
    const dur_unit *du = &dur_units[i];
    if (strlen(du->name) == len && strncmp(u, du->name, len) == 0)
      return du;
    if (!exact && ((strlen(du->name) == len && strncasecmp(u, du->name, len) == 0) ||
                   in_words(du->others, u, len)))
      return du;
  }
  return NULL;
}

int mbd_parse_duration_ms(const char *s, unsigned flags, int64_t *out_ms, char *err,
                          size_t err_len) {
  const char *p, *end;
  uint64_t total = 0;
  int components = 0;

  if (s == NULL || out_ms == NULL)
    return mb__fail(MB_EINVAL, err, err_len, "no duration");
  p = skip_blanks(s);
  end = p + trimmed_len(p);
  if (p == end)
    return mb__fail(MB_EINVAL, err, err_len, "empty duration");
  if (is_forever_word(p, (size_t)(end - p))) {
    if (!(flags & MBD_DUR_FOREVER))
      return mb__fail(MB_EINVAL, err, err_len, "'%.*s' (forever) is not allowed here",
                      (int)(end - p), p);
    *out_ms = MB_FOREVER;
    return 0;
  }
  if (*p == '-')
    return mb__fail(MB_EINVAL, err, err_len, "negative duration '%.*s'%s", (int)(end - p), p,
                    (flags & MBD_DUR_FOREVER) ? " (use -1 or forever for no limit)" : "");
  if (*p == '+')
    p++;

  const char *start = p;
  while (p < end) {
    number n;
    int overflow;
    uint64_t unit_ms = 0, v;
    const char *u;
    size_t ulen;

    if (*p == ' ' || *p == '\t') { /* "1h 30m" */
      char fix[96];
      size_t k = 0;
      for (const char *q = start; q < end && k + 1 < sizeof(fix); q++)
        if (*q != ' ' && *q != '\t')
          fix[k++] = *q;
      fix[k] = '\0';
      return mb__fail(MB_EINVAL, err, err_len,
                      "bad duration '%.*s': no spaces inside a duration (write '%s')",
                      (int)(end - start), start, fix);
    }
    if (parse_number(&p, &n, &overflow) != 0)
      return overflow ? mb__fail(MB_EINVAL, err, err_len, "duration '%s' is too large", s)
                      : mb__fail(MB_EINVAL, err, err_len,
                                 "bad duration '%s' (expected e.g. 250ms, 30s, 5m, 1h)", s);
    if (p < end && comma_slip("duration", start, end, p, err, err_len) != 0)
      return MB_EINVAL;
    if (p < end && (*p == ' ' || *p == '\t')) { /* "5 m", "2 hours" */
      const char *w = skip_blanks(p), *we = w;
      const dur_unit *du;
      char fix[96];
      while (we < end && isalpha((unsigned char)*we))
        we++;
      du = dur_unit_of(w, (size_t)(we - w), 0);
      if (we > w)
        return mb__fail(
            MB_EINVAL, err, err_len,
            "bad duration '%.*s': no space between a number and its unit (write '%s')",
            (int)(end - start), start,
            rewrite(start, end, p, (size_t)(we - p), du != NULL ? du->name : "", fix, sizeof(fix)));
    }
    u = p;
    while (p < end && isalpha((unsigned char)*p))
      p++;
    ulen = (size_t)(p - u);
    if (ulen == 0) {
      /* A bare number is seconds, and only on its own. */
      if (components > 0 || p != end)
        return mb__fail(MB_EINVAL, err, err_len, "bad duration '%s': missing unit after a number",
                        s);
      unit_ms = 1000;
    }
    if (ulen > 0) {
      const dur_unit *du = dur_unit_of(u, ulen, 1);
      char fix[96];
      if (du != NULL)
        unit_ms = du->ms;
      else if ((du = dur_unit_of(u, ulen, 0)) != NULL)
        return mb__fail(MB_EINVAL, err, err_len,
                        "bad duration '%.*s': write '%s' (units are ms, s, m, h and d, "
                        "in lower case)",
                        (int)(end - start), start,
                        rewrite(start, end, u, ulen, du->name, fix, sizeof(fix)));
    }
    if (unit_ms == 0)
      return mb__fail(MB_EINVAL, err, err_len,
                      "bad duration '%s': unknown unit '%.*s' (use ms, s, m, h or d)", s, (int)ulen,
                      u);
    if (scale(&n, unit_ms, 1, &v) != 0 || __builtin_add_overflow(total, v, &total) ||
        total > (uint64_t)INT64_MAX)
      return mb__fail(MB_EINVAL, err, err_len, "duration '%s' is too large", s);
    components++;
  }
  *out_ms = (int64_t)total;
  return 0;
}

typedef struct size_unit {
  const char *name;
  uint64_t mult;
} size_unit;

static const size_unit size_units[] = {
    {"b", 1ULL},
    {"kb", 1000ULL},
    {"mb", 1000ULL * 1000},
    {"gb", 1000ULL * 1000 * 1000},
    {"tb", 1000ULL * 1000 * 1000 * 1000},
    {"pb", 1000ULL * 1000 * 1000 * 1000 * 1000},
    {"kib", 1ULL << 10},
    {"mib", 1ULL << 20},
    {"gib", 1ULL << 30},
    {"tib", 1ULL << 40},
    {"pib", 1ULL << 50},
    {"ki", 1ULL << 10},
    {"mi", 1ULL << 20},
    {"gi", 1ULL << 30},
    {"ti", 1ULL << 40},
    {"pi", 1ULL << 50},
};

int mbd_parse_size(const char *s, uint64_t *out_bytes, char *err, size_t err_len) {
  const char *p, *end, *u;
  number n;
  int overflow;
  uint64_t mult = 1, v;
  size_t ulen;

  if (s == NULL || out_bytes == NULL)
    return mb__fail(MB_EINVAL, err, err_len, "no size");
  p = skip_blanks(s);
  end = p + trimmed_len(p);
  if (p == end)
    return mb__fail(MB_EINVAL, err, err_len, "empty size");
  if (*p == '-')
    return mb__fail(MB_EINVAL, err, err_len, "negative size '%s'", s);
  if (*p == '+')
    p++;
  const char *start = p;
  if (parse_number(&p, &n, &overflow) != 0)
    return overflow ? mb__fail(MB_EINVAL, err, err_len, "size '%s' is too large", s)
                    : mb__fail(MB_EINVAL, err, err_len,
                               "bad size '%s' (expected e.g. 512MiB, 6GiB, 1GB or bytes)", s);
  if (comma_slip("size", start, end, p, err, err_len) != 0)
    return MB_EINVAL;
  p = skip_blanks(p);
  u = p;
  while (p < end && isalpha((unsigned char)*p))
    p++;
  ulen = (size_t)(p - u);
  if (p != end)
    return mb__fail(MB_EINVAL, err, err_len,
                    "bad size '%s' (expected e.g. 512MiB, 6GiB, 1GB or bytes)", s);
  if (ulen > 0) {
    size_t i;
    for (i = 0; i < sizeof(size_units) / sizeof(size_units[0]); i++)
      if (strlen(size_units[i].name) == ulen && strncasecmp(u, size_units[i].name, ulen) == 0)
        break;
    if (i == sizeof(size_units) / sizeof(size_units[0])) {
      if (ulen == 1 && strchr("kmgtpKMGTP", *u) != NULL)
        return mb__fail(MB_EINVAL, err, err_len,
                        "ambiguous size unit '%c' in '%s' (write %ciB or %cB)", *u, s,
                        toupper((unsigned char)*u), toupper((unsigned char)*u));
      return mb__fail(MB_EINVAL, err, err_len,
                      "bad size '%s': unknown unit '%.*s' (use KiB, MiB, GiB, TiB, KB, MB, GB, TB "
                      "or B)",
                      s, (int)ulen, u);
    }
    mult = size_units[i].mult;
  }
  if (mult == 1 && n.has_point)
    return mb__fail(MB_EINVAL, err, err_len, "bad size '%s': a number of bytes must be whole", s);
  if (scale(&n, mult, 0, &v) != 0)
    return mb__fail(MB_EINVAL, err, err_len, "size '%s' is too large", s);
  *out_bytes = v;
  return 0;
}

const char *mbd_format_duration(int64_t ms, char *buf, size_t len) {
  size_t off = 0;
  int64_t h, m, sec, rest;

  if (len == 0)
    return buf;
  if (ms == MB_FOREVER) {
    snprintf(buf, len, "forever");
    return buf;
  }
  if (ms < 0) {
    snprintf(buf, len, "%" PRId64 "ms", ms);
    return buf;
  }
  if (ms == 0) {
    snprintf(buf, len, "0");
    return buf;
  }
  if (ms < 1000) {
    snprintf(buf, len, "%" PRId64 "ms", ms);
    return buf;
  }
  h = ms / 3600000;
  m = ms / 60000 % 60;
  sec = ms / 1000 % 60;
  rest = ms % 1000;
  buf[0] = '\0';
  if (h > 0)
    off += (size_t)snprintf(buf + off, len - off, "%" PRId64 "h", h);
  if (m > 0 && off < len)
    off += (size_t)snprintf(buf + off, len - off, "%" PRId64 "m", m);
  if ((sec > 0 || rest > 0) && off < len) {
    if (rest == 0) {
      snprintf(buf + off, len - off, "%" PRId64 "s", sec);
    } else {
      char frac[8];
      size_t fl;
      snprintf(frac, sizeof(frac), "%03" PRId64, rest);
      fl = strlen(frac);
      while (fl > 0 && frac[fl - 1] == '0')
        frac[--fl] = '\0';
      snprintf(buf + off, len - off, "%" PRId64 ".%ss", sec, frac);
    }
  }
  return buf;
}

const char *mbd_format_size(uint64_t bytes, char *buf, size_t len) {
  static const char *const names[] = {"PiB", "TiB", "GiB", "MiB", "KiB"};
  static const unsigned shifts[] = {50, 40, 30, 20, 10};

  if (len == 0)
    return buf;
  if (bytes != 0) {
    for (size_t i = 0; i < sizeof(shifts) / sizeof(shifts[0]); i++) {
      uint64_t unit = 1ULL << shifts[i];
      if (bytes % unit == 0) {
        snprintf(buf, len, "%" PRIu64 "%s", bytes / unit, names[i]);
        return buf;
      }
    }
  }
  snprintf(buf, len, "%" PRIu64, bytes);
  return buf;
}

static int client_range(const char *name, int64_t ms, unsigned flags, int64_t *out_ms, char *err,
                        size_t err_len) {
  if (ms == MB_FOREVER) {
    if (!(flags & MBD_CD_FOREVER)) {
      snprintf(err, err_len, "%s cannot be forever (-1)", name);
      return MB_EINVAL;
    }
  } else if (ms < 0) {
    snprintf(err, err_len, "%s must not be negative%s", name,
             flags & MBD_CD_FOREVER ? " (-1 means forever)" : "");
    return MB_EINVAL;
  } else if (ms == 0 && !(flags & MBD_CD_ZERO)) {
    snprintf(err, err_len, "%s must be more than 0", name);
    return MB_EINVAL;
  } else if (ms > MBD_CLIENT_DURATION_MAX_MS) {
    snprintf(err, err_len, "%s must be at most a year", name);
    return MB_EINVAL;
  }
  *out_ms = ms;
  return 0;
}

int mbd_client_duration_ms(const char *name, const char *s, unsigned flags, int64_t *out_ms,
                           char *err, size_t err_len) {
  char why[200];
  int64_t ms;
  if (mbd_parse_duration_ms(s, MBD_DUR_FOREVER, &ms, why, sizeof(why)) != 0) {
    snprintf(err, err_len, "%s: %s", name, why);
    return MB_EINVAL;
  }
  return client_range(name, ms, flags, out_ms, err, err_len);
}

int mbd_client_seconds_ms(const char *name, double seconds, unsigned flags, int64_t *out_ms,
                          char *err, size_t err_len) {
  if (seconds != seconds) { /* NaN */
    snprintf(err, err_len, "%s must be a number of seconds", name);
    return MB_EINVAL;
  }
  if (seconds == -1.0)
    return client_range(name, MB_FOREVER, flags, out_ms, err, err_len);
  if (seconds < 0)
    return client_range(name, -2, flags, out_ms, err, err_len);
  if (seconds > (double)MBD_CLIENT_DURATION_MAX_MS / 1000.0)
    return client_range(name, MBD_CLIENT_DURATION_MAX_MS + 1, flags, out_ms, err, err_len);
  double ms = seconds * 1000.0;
  if (seconds > 0 && ms < 1.0) {
    snprintf(err, err_len, "%s must be at least 1 ms", name);
    return MB_EINVAL;
  }
  return client_range(name, (int64_t)(ms + 0.5), flags, out_ms, err, err_len);
}
