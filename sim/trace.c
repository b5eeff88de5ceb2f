/*
 * trace.c - request traces for the simulator: the PRNG, the CSV reader and
 * writer, and the synthetic generators (zipf, diurnal, burst).
 *
 * A trace interns its model names: requests carry an index into names, so
 * a million requests over a few thousand models cost 24 bytes each.
 */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "agenda.h"
#include "sim.h"
#include "mb_internal.h"

#define NS_PER_S 1e9
/* Bounds that keep t and duration in nanoseconds far from overflow. */
#define MAX_T_S 1e9
#define MAX_DUR_S 1e7

/* ------------------------------------------------------------------------ */
/* PRNG                                                                      */

static uint64_t splitmix64(uint64_t *x) {
  uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

void sim_rng_seed(sim_rng *r, uint64_t seed) {
  uint64_t x = seed;
  for (int i = 0; i < 4; i++)
    r->s[i] = splitmix64(&x);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t sim_rng_next(sim_rng *r) {
  uint64_t *s = r->s;
  uint64_t result = rotl(s[1] * 5, 7) * 9;
  uint64_t t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl(s[3], 45);
  return result;
}

double sim_rng_unit(sim_rng *r) { return (double)(sim_rng_next(r) >> 11) * 0x1.0p-53; }

static double rng_exp(sim_rng *r, double mean) { return -log(1.0 - sim_rng_unit(r)) * mean; }

/* ------------------------------------------------------------------------ */
/* Traces and their name index                                               */

typedef struct name_index {
  int *slots; /* name index + 1; 0 empty */
  size_t cap;
} name_index;


static int index_grow(sim_trace *t) {
  name_index *ix = t->index;
  size_t cap = ix->cap ? ix->cap * 2 : 64;
  int *slots = calloc(cap, sizeof(*slots));
  if (slots == NULL)
    return -1;
  for (int i = 0; i < t->nnames; i++) {
    size_t b = sim_hash_str(t->names[i]) & (cap - 1);
    while (slots[b])
      b = (b + 1) & (cap - 1);
    slots[b] = i + 1;
  }
  free(ix->slots);
  ix->slots = slots;
  ix->cap = cap;
  return 0;
}

/* Index of name in t->names, adding it if new; -1 on no memory. */
static int intern(sim_trace *t, const char *name) {
  if (t->index == NULL) {
    t->index = calloc(1, sizeof(name_index));
    if (t->index == NULL)
      return -1;
  }
  name_index *ix = t->index;
  if ((size_t)(t->nnames + 1) * 2 > ix->cap && index_grow(t) != 0)
    return -1;
  size_t b = sim_hash_str(name) & (ix->cap - 1);
  while (ix->slots[b]) {
    if (strcmp(t->names[ix->slots[b] - 1], name) == 0)
      return ix->slots[b] - 1;
    b = (b + 1) & (ix->cap - 1);
  }
  if (t->nnames == t->names_cap) {
    int cap = t->names_cap ? t->names_cap * 2 : 16;
    char **names = realloc(t->names, (size_t)cap * sizeof(*names));
    if (names == NULL)
      return -1;
    t->names = names;
    t->names_cap = cap;
  }
  char *copy = strdup(name);
  if (copy == NULL)
    return -1;
  t->names[t->nnames] = copy;
  ix->slots[b] = ++t->nnames;
  return t->nnames - 1;
}

void sim_trace_free(sim_trace *t) {
  if (t == NULL)
    return;
  for (int i = 0; i < t->nnames; i++)
    free(t->names[i]);
  free(t->names);
  free(t->v);
  if (t->index)
    free(((name_index *)t->index)->slots);
  free(t->index);
  memset(t, 0, sizeof(*t));
}

int sim_trace_add(sim_trace *t, uint64_t t_ns, const char *model, uint64_t dur_ns,
                  uint32_t line) {
  int name = intern(t, model);
  if (name < 0)
    return -1;
  if (t->n == t->cap) {
    size_t cap = t->cap ? t->cap * 2 : 1024;
    sim_req *v = realloc(t->v, cap * sizeof(*v));
    if (v == NULL)
      return -1;
    t->v = v;
    t->cap = cap;
  }
  sim_req *r = &t->v[t->n++];
  r->t_ns = t_ns;
  r->dur_ns = dur_ns;
  r->name = name;
  r->line = line;
  return 0;
}

/* Stable merge sort by t_ns (qsort is not stable, and equal times keep
 * their order in the file). */
static void merge_sort(sim_req *v, sim_req *tmp, size_t n) {
  if (n < 2)
    return;
  size_t h = n / 2;
  merge_sort(v, tmp, h);
  merge_sort(v + h, tmp, n - h);
  if (v[h - 1].t_ns <= v[h].t_ns)
    return;
  size_t i = 0, j = h, k = 0;
  while (i < h && j < n)
    tmp[k++] = v[j].t_ns < v[i].t_ns ? v[j++] : v[i++];
  while (i < h)
    tmp[k++] = v[i++];
  while (j < n)
    tmp[k++] = v[j++];
  memcpy(v, tmp, n * sizeof(*v));
}

void sim_trace_sort(sim_trace *t) {
  size_t i = 1;
  while (i < t->n && t->v[i - 1].t_ns <= t->v[i].t_ns)
    i++;
  if (i >= t->n)
    return;
  sim_req *tmp = malloc(t->n * sizeof(*tmp));
  if (tmp != NULL) {
    merge_sort(t->v, tmp, t->n);
    free(tmp);
    return;
  }
  /* No memory for the merge: insertion sort (slow, still correct). */
  for (size_t a = 1; a < t->n; a++) {
    sim_req x = t->v[a];
    size_t b = a;
    while (b > 0 && t->v[b - 1].t_ns > x.t_ns) {
      t->v[b] = t->v[b - 1];
      b--;
    }
    t->v[b] = x;
  }
}

/* ------------------------------------------------------------------------ */
/* CSV                                                                       */

static int valid_model_name(const char *s, size_t n) {
  if (n == 0 || n > 127)
    return 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c <= ' ' || c == '/' || c == 0x7f || c == ',')
      return 0;
  }
  return 1;
}

/* Trims spaces and tabs around [*b, *e). */
static void trim(const char **b, const char **e) {
  while (*b < *e && (**b == ' ' || **b == '\t'))
    (*b)++;
  while (*e > *b && ((*e)[-1] == ' ' || (*e)[-1] == '\t'))
    (*e)--;
}

/* Parses a decimal number of seconds in [0, max]; 0 or -1. */
static int parse_seconds(const char *b, const char *e, double max, double *out) {
  char buf[64];
  size_t n = (size_t)(e - b);
  if (n == 0 || n >= sizeof(buf))
    return -1;
  memcpy(buf, b, n);
  buf[n] = '\0';
  /* Plain decimal only: no hex, no inf/nan, no sign but digits and one dot
   * with an optional exponent. */
  for (size_t i = 0; i < n; i++) {
    char c = buf[i];
    if (!isdigit((unsigned char)c) && c != '.' && c != 'e' && c != 'E' && c != '-' && c != '+')
      return -1;
  }
  if (!isdigit((unsigned char)buf[0]) && buf[0] != '.')
    return -1;
  char *end;
  errno = 0;
  double v = strtod(buf, &end);
  if (*end != '\0' || errno != 0 || !(v >= 0) || v > max)
    return -1;
  *out = v;
  return 0;
}

static void show(const char *b, const char *e, char *buf, size_t len) {
  size_t n = (size_t)(e - b), o = 0;
  for (size_t i = 0; i < n && o + 4 < len; i++) {
    unsigned char c = (unsigned char)b[i];
    buf[o++] = (c < 0x20 || c >= 0x7f) ? '?' : (char)c;
    if (i == 40 && n > 44) {
      memcpy(buf + o, "...", 3);
      o += 3;
      break;
    }
  }
  buf[o] = '\0';
}

int sim_trace_parse(const char *buf, size_t len, sim_trace *out, char *err, size_t err_len) {
  sim_trace t;
  memset(&t, 0, sizeof(t));
  const char *p = buf, *end = buf + len;
  uint32_t line = 0;
  int seen_data = 0;
  char shown[64];
  while (p < end) {
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    const char *le = nl ? nl : end;
    const char *lb = p;
    p = nl ? nl + 1 : end;
    line++;
    if (line == UINT32_MAX) {
      mb__set_err(err, err_len, "line %u: trace too long", line);
      goto fail;
    }
    if (le > lb && le[-1] == '\r')
      le--;
    trim(&lb, &le);
    if (lb == le || *lb == '#')
      continue;
    if (memchr(lb, '\0', (size_t)(le - lb)) != NULL) {
      mb__set_err(err, err_len, "line %u: NUL byte in the line", line);
      goto fail;
    }
    const char *f[3][2];
    int nf = 0;
    const char *fb = lb;
    for (const char *q = lb;; q++) {
      if (q == le || *q == ',') {
        if (nf < 3) {
          f[nf][0] = fb;
          f[nf][1] = q;
        }
        nf++;
        fb = q + 1;
        if (q == le)
          break;
      }
    }
    if (nf != 3) {
      mb__set_err(err, err_len, "line %u: expected 3 fields t,model,duration, found %d", line, nf);
      goto fail;
    }
    for (int i = 0; i < 3; i++)
      trim(&f[i][0], &f[i][1]);
    if (!seen_data && (size_t)(f[0][1] - f[0][0]) == 1 && f[0][0][0] == 't' &&
        (size_t)(f[1][1] - f[1][0]) == 5 && memcmp(f[1][0], "model", 5) == 0 &&
        (size_t)(f[2][1] - f[2][0]) == 8 && memcmp(f[2][0], "duration", 8) == 0) {
      seen_data = 1; /* the header */
      continue;
    }
    seen_data = 1;
    double ts, dur;
    if (parse_seconds(f[0][0], f[0][1], MAX_T_S, &ts) != 0) {
      show(f[0][0], f[0][1], shown, sizeof(shown));
      mb__set_err(err, err_len,
              "line %u: time '%s' is not a number of seconds between 0 and %.0f", line, shown,
              MAX_T_S);
      goto fail;
    }
    if (!valid_model_name(f[1][0], (size_t)(f[1][1] - f[1][0]))) {
      show(f[1][0], f[1][1], shown, sizeof(shown));
      mb__set_err(err, err_len,
              "line %u: model name '%s' is invalid (1-127 bytes, no spaces, ',' or '/')", line,
              shown);
      goto fail;
    }
    if (parse_seconds(f[2][0], f[2][1], MAX_DUR_S, &dur) != 0) {
      show(f[2][0], f[2][1], shown, sizeof(shown));
      mb__set_err(err, err_len,
              "line %u: duration '%s' is not a number of seconds between 0 and %.0f", line,
              shown, MAX_DUR_S);
      goto fail;
    }
    char name[128];
    memcpy(name, f[1][0], (size_t)(f[1][1] - f[1][0]));
    name[f[1][1] - f[1][0]] = '\0';
    if (sim_trace_add(&t, (uint64_t)llround(ts * NS_PER_S), name,
                      (uint64_t)llround(dur * NS_PER_S), line) != 0) {
      mb__set_err(err, err_len, "line %u: out of memory", line);
      goto fail;
    }
  }
  if (t.n == 0) {
    mb__set_err(err, err_len, "the trace has no requests");
    goto fail;
  }
  sim_trace_sort(&t);
  *out = t;
  return 0;
fail:
  sim_trace_free(&t);
  return -1;
}

char *sim__read_file(const char *path, size_t *len, char *err, size_t err_len) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) {
    mb__set_err(err, err_len, "%s: %s", path, strerror(errno));
    return NULL;
  }
  size_t cap = 1 << 16, n = 0;
  char *buf = malloc(cap);
  while (buf != NULL) {
    size_t got = fread(buf + n, 1, cap - n, f);
    n += got;
    if (n < cap) {
      if (ferror(f)) {
        fclose(f);
        free(buf);
        mb__set_err(err, err_len, "%s: read error", path);
        return NULL;
      }
      break;
    }
    char *nb = realloc(buf, cap * 2);
    if (nb == NULL)
      free(buf);
    buf = nb;
    cap *= 2;
  }
  fclose(f);
  if (buf == NULL)
    mb__set_err(err, err_len, "%s: out of memory", path);
  *len = n;
  return buf;
}

int sim_trace_load(const char *path, sim_trace *out, char *err, size_t err_len) {
  size_t len;
  char *buf = sim__read_file(path, &len, err, err_len);
  if (buf == NULL)
    return -1;
  char inner[256];
  int rc = sim_trace_parse(buf, len, out, inner, sizeof(inner));
  free(buf);
  if (rc != 0)
    mb__set_err(err, err_len, "%s: %s", path, inner);
  return rc;
}

void sim_trace_write(FILE *f, const sim_trace *t) {
  fprintf(f, "t,model,duration\n");
  for (size_t i = 0; i < t->n; i++) {
    const sim_req *r = &t->v[i];
    fprintf(f, "%llu.%06llu,%s,%llu.%06llu\n", (unsigned long long)(r->t_ns / 1000000000ull),
            (unsigned long long)(r->t_ns % 1000000000ull / 1000),
            t->names[r->name], (unsigned long long)(r->dur_ns / 1000000000ull),
            (unsigned long long)(r->dur_ns % 1000000000ull / 1000));
  }
}

/* ------------------------------------------------------------------------ */
/* Generators                                                                */

int sim_gen_parse(const char *spec, sim_gen *g, char *err, size_t err_len) {
  memset(g, 0, sizeof(*g));
  g->n = 10000;
  g->rate = 1;
  g->s = 1.0;
  g->dur = 0.5;
  g->period = 86400;
  g->amp = 0.5;
  g->every = 600;
  g->size = 20;
  g->spread = 10;
  const char *colon = strchr(spec, ':');
  size_t kl = colon ? (size_t)(colon - spec) : strlen(spec);
  if (kl >= sizeof(g->kind)) {
    mb__set_err(err, err_len, "generator '%s': unknown kind (zipf, diurnal, burst)", spec);
    return -1;
  }
  memcpy(g->kind, spec, kl);
  g->kind[kl] = '\0';
  if (strcmp(g->kind, "zipf") != 0 && strcmp(g->kind, "diurnal") != 0 &&
      strcmp(g->kind, "burst") != 0) {
    mb__set_err(err, err_len, "generator '%s': unknown kind (zipf, diurnal, burst)", g->kind);
    return -1;
  }
  const char *p = colon ? colon + 1 : "";
  while (*p) {
    const char *comma = strchr(p, ',');
    size_t len = comma ? (size_t)(comma - p) : strlen(p);
    char item[64];
    if (len >= sizeof(item)) {
      mb__set_err(err, err_len, "generator: option too long");
      return -1;
    }
    memcpy(item, p, len);
    item[len] = '\0';
    p = comma ? comma + 1 : p + len;
    char *eq = strchr(item, '=');
    if (eq == NULL) {
      mb__set_err(err, err_len, "generator: '%s' is not key=value", item);
      return -1;
    }
    *eq = '\0';
    char *end;
    errno = 0;
    double v = strtod(eq + 1, &end);
    if (eq[1] == '\0' || *end != '\0' || errno != 0 || !(v >= 0) || v > 1e12) {
      mb__set_err(err, err_len, "generator: %s=%s is not a number >= 0", item, eq + 1);
      return -1;
    }
    static const char *const keys[] = {"n",   "rate",  "s",    "dur",   "period",
                                       "amp", "every", "size", "spread"};
    double *slots[] = {NULL,      &g->rate,  &g->s,    &g->dur,   &g->period,
                       &g->amp,   &g->every, &g->size, &g->spread};
    size_t k;
    for (k = 0; k < sizeof keys / sizeof keys[0]; k++)
      if (strcmp(item, keys[k]) == 0)
        break;
    if (k == sizeof keys / sizeof keys[0]) {
      mb__set_err(err, err_len,
              "generator: unknown key '%s' (n, rate, s, dur, period, amp, every, size, spread)",
              item);
      return -1;
    }
    if (k == 0) {
      if (v < 1 || v > 1e9) {
        mb__set_err(err, err_len, "generator: n must be between 1 and 1e9");
        return -1;
      }
      g->n = (size_t)v;
    } else {
      *slots[k] = v;
    }
  }
  if (g->rate <= 0 || g->period <= 0 || g->every <= 0 || g->amp > 1) {
    mb__set_err(err, err_len, "generator: rate, period and every must be > 0, amp <= 1");
    return -1;
  }
  return 0;
}

/* Zipf sampler: cumulative weights 1/(k+1)^s over n ranks. */
static double *zipf_cdf(int n, double s) {
  double *cdf = malloc((size_t)n * sizeof(*cdf));
  if (cdf == NULL)
    return NULL;
  double sum = 0;
  for (int k = 0; k < n; k++) {
    sum += 1.0 / pow((double)k + 1, s);
    cdf[k] = sum;
  }
  for (int k = 0; k < n; k++)
    cdf[k] /= sum;
  cdf[n - 1] = 1.0;
  return cdf;
}

static int zipf_draw(const double *cdf, int n, sim_rng *r) {
  double u = sim_rng_unit(r);
  int lo = 0, hi = n - 1;
  while (lo < hi) {
    int mid = lo + (hi - lo) / 2;
    if (cdf[mid] > u)
      hi = mid;
    else
      lo = mid + 1;
  }
  return lo;
}

#define TWO_PI 6.283185307179586

int sim_gen_run(const sim_gen *g, const sim_models *t, uint64_t seed, sim_trace *out, char *err,
                size_t err_len) {
  sim_trace tr;
  sim_rng rng;
  memset(&tr, 0, sizeof(tr));
  if (t->n < 1) {
    mb__set_err(err, err_len, "generator: the model table is empty");
    return -1;
  }
  double *cdf = zipf_cdf(t->n, g->s);
  if (cdf == NULL)
    goto nomem;
  sim_rng_seed(&rng, seed);
  int diurnal = strcmp(g->kind, "diurnal") == 0;
  int burst = strcmp(g->kind, "burst") == 0;
  double now = 0;
  double peak = diurnal ? g->rate * (1 + g->amp) : g->rate;
  double next_burst = burst ? rng_exp(&rng, g->every) : 0;
  size_t made = 0;
  while (made < g->n) {
    now += rng_exp(&rng, 1.0 / peak);
    if (diurnal) {
      /* Thinning: keep an arrival with probability rate(t) / peak. */
      double r = g->rate * (1 + g->amp * sin(TWO_PI * now / g->period));
      if (sim_rng_unit(&rng) * peak > r)
        continue;
    }
    while (burst && next_burst <= now) {
      int m = (int)(sim_rng_unit(&rng) * t->n);
      for (int i = 0; i < (int)g->size; i++) {
        double at = next_burst + sim_rng_unit(&rng) * g->spread;
        if (sim_trace_add(&tr, (uint64_t)llround(at * NS_PER_S), t->v[m].name,
                          (uint64_t)llround(rng_exp(&rng, g->dur) * NS_PER_S), 0) != 0)
          goto nomem;
      }
      next_burst += rng_exp(&rng, g->every);
    }
    int rank = zipf_draw(cdf, t->n, &rng);
    int m = rank;
    if (diurnal) {
      long shift = (long)floor(now / (g->period / t->n));
      m = (int)((rank + shift) % t->n);
    }
    if (sim_trace_add(&tr, (uint64_t)llround(now * NS_PER_S), t->v[m].name,
                      (uint64_t)llround(rng_exp(&rng, g->dur) * NS_PER_S), 0) != 0)
      goto nomem;
    made++;
  }
  free(cdf);
  sim_trace_sort(&tr);
  *out = tr;
  return 0;
nomem:
  free(cdf);
  sim_trace_free(&tr);
  mb__set_err(err, err_len, "generator: out of memory");
  return -1;
}
